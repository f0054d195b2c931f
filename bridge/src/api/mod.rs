//! The MQTT API's JSON: task submissions in, status events out.
//!
//! Parsing is strict and every refusal carries a machine-readable [`ErrorCode`] and a message
//! for humans: an unknown key, a priority of 9 or a payload too large for any device is
//! `rejected`, never dropped and never guessed at.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use device_core::Priority;
use device_core::proto::{
    MAX_CAPABILITY_NAME, MAX_DEVICE_ID, MAX_LOCK_NAME, MAX_PAYLOAD, MAX_TASK_LOCKS, MAX_TRACE_ID,
    valid_lock_name,
};

mod discovery;
mod documents;
mod query;
pub use discovery::*;
pub use documents::*;
pub use query::*;

/// Longest task id accepted (it becomes an MQTT topic level).
pub const MAX_ID: usize = 128;

/// Why a submission or a task failed, as it appears in `error.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    MalformedJson,
    /// A key the API does not know (a typo must not be ignored).
    UnknownField,
    /// `capability` is missing or not a valid name.
    InvalidCapability,
    /// `id` is not a valid topic level.
    InvalidId,
    InvalidPriority,
    InvalidDeadline,
    /// `timeout_ms` is not a whole number of milliseconds in range.
    InvalidTimeout,
    InvalidDevice,
    /// `locks` is not an array of distinct lock names, or the device the task names does not
    /// have one of them.
    InvalidLocks,
    /// `resources` is not an array of distinct resource names, or names one the configuration
    /// does not declare.
    InvalidResources,
    InvalidTraceId,
    /// The payload's JSON text is longer than a device can take.
    PayloadTooLarge,
    /// The whole message is longer than any submission can be ([`MAX_SUBMISSION_BYTES`]).
    MessageTooLarge,
    /// A retained submission or cancel (on `{root}/errors`; the bridge clears it).
    Retained,
    /// The id is taken by a live task whose submission differs (on `{root}/errors`).
    IdConflict,
    /// The durable queue is at its configured limit.
    QueueFull,
    /// Events wait for the broker in the outbox up to its configured limit (the broker is
    /// down or slower than the work): new submissions wait until they drain.
    OutboxFull,
    /// The disk of the bridge's data directory is nearly full (below its free-space
    /// watermark): new submissions wait until space returns; accepted work goes on.
    StorageFull,
    /// The deadline passed before the task could start.
    DeadlineExpired,
    /// The device's handler failed (`message` has its code).
    DeviceFailed,
    /// Every attempt ended without a result (device lost, retryable failures).
    AttemptsExhausted,
    /// A device refused the task.
    DeviceRejected,
    /// Cancelled on request.
    Cancelled,
    /// The broker acknowledged messages on the API's topics to their publishers and dropped
    /// them before the bridge could read them (its buffer for the bridge overflowed); the
    /// message says how many. Their senders saw a PUBACK but never a `queued` event.
    SubmissionsLost,
    /// A query on `{root}/query/tasks` that cannot be answered as sent (the message says
    /// which key is wrong).
    InvalidQuery,
    /// More queries than the bridge answers in a second (each one reads the whole queue):
    /// asked again a second later, it is answered.
    TooManyQueries,
    /// A query names a task the bridge does not know (never submitted, or finished so long
    /// ago that its record was dropped).
    UnknownTask,
}

/// A refusal: code plus human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A validated task submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The client's id, or one the bridge generated.
    pub id: String,
    pub capability: String,
    /// A specific device, or any capable one.
    pub device: Option<String>,
    pub priority: Priority,
    /// Milliseconds after submission by which the task must have started.
    pub deadline_ms: Option<u64>,
    /// The execution lease: milliseconds a device may hold the task (from each dispatch)
    /// before it is cancelled there and tried again; the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The payload's compact JSON text, as sent to the device.
    pub payload: String,
    /// Device lock names the task holds while it runs (distinct, valid names): only a device
    /// advertising every one of them can take the task.
    pub locks: Vec<String>,
    /// Bridge resources (shared across devices, declared in the configuration) the task holds
    /// while it is on a device: it is dispatched only once it holds all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    pub trace_id: Option<String>,
}

/// A submission that could not be accepted, with the id to report it under when one was
/// readable (otherwise it goes to `{root}/errors`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub id: Option<String>,
    pub trace_id: Option<String>,
    pub error: ApiError,
}

/// The longest message a submission can be, in bytes: ample for every field at its limit
/// (the payload's compact JSON text is at most [`MAX_PAYLOAD`] bytes, but escapes and
/// whitespace may make what was sent longer). A longer message is refused without being
/// parsed in full (`message_too_large`).
pub const MAX_SUBMISSION_BYTES: usize = 16 * 1024;

/// Resources one task may name.
pub const MAX_TASK_RESOURCES: usize = 4;

const KEYS: [&str; 10] = [
    "id",
    "capability",
    "device",
    "priority",
    "deadline_ms",
    "timeout_ms",
    "payload",
    "locks",
    "resources",
    "trace_id",
];

/// The shortest execution lease a submission may ask for (`timeout_ms`).
pub const MIN_TIMEOUT_MS: u64 = 100;
/// The longest: 30 days.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

/// Whether `s` can be a single MQTT topic level and a task id.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && !s.contains(['/', '+', '#', '\0'])
        && !s.chars().any(char::is_control)
}

/// Parses and validates a submission. `generate_id` supplies an id when the client gave none.
pub fn parse_submission(
    bytes: &[u8],
    generate_id: impl FnOnce() -> String,
) -> Result<Submission, Rejection> {
    let refuse = |id: Option<String>, trace: Option<String>, code, message: String| Rejection {
        id,
        trace_id: trace,
        error: ApiError::new(code, message),
    };
    if bytes.len() > MAX_SUBMISSION_BYTES {
        let (id, trace) = peek_ids(bytes);
        return Err(refuse(
            id,
            trace,
            ErrorCode::MessageTooLarge,
            format!(
                "the message is {} bytes; a submission is at most {MAX_SUBMISSION_BYTES}",
                bytes.len()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        refuse(
            None,
            None,
            ErrorCode::MalformedJson,
            format!("not JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(refuse(
            None,
            None,
            ErrorCode::MalformedJson,
            "a submission is a JSON object".into(),
        ));
    };
    // The id and trace id first, so that every later refusal can be reported under them.
    let trace_id = match obj.get("trace_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.len() <= MAX_TRACE_ID => Some(t.clone()),
        Some(_) => {
            let id = obj
                .get("id")
                .and_then(Value::as_str)
                .filter(|i| valid_id(i))
                .map(str::to_owned);
            return Err(refuse(
                id,
                None,
                ErrorCode::InvalidTraceId,
                format!("trace_id: a string of at most {MAX_TRACE_ID} bytes"),
            ));
        }
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(i)) if valid_id(i) => Some(i.clone()),
        Some(_) => {
            let msg = format!(
                "id: a string of 1 to {MAX_ID} bytes without '/', '+', '#' or control characters"
            );
            return Err(refuse(None, trace_id, ErrorCode::InvalidId, msg));
        }
    };
    let fail = |code, message: String| Err(refuse(id.clone(), trace_id.clone(), code, message));
    if let Some(unknown) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return fail(
            ErrorCode::UnknownField,
            format!("unknown key {unknown:?}; known keys: {}", KEYS.join(", ")),
        );
    }
    let capability = match obj.get("capability") {
        Some(Value::String(c)) if !c.is_empty() && c.len() <= MAX_CAPABILITY_NAME => c.clone(),
        Some(_) => {
            return fail(
                ErrorCode::InvalidCapability,
                format!("capability: a name of 1 to {MAX_CAPABILITY_NAME} bytes"),
            );
        }
        None => {
            return fail(
                ErrorCode::InvalidCapability,
                "capability is required".into(),
            );
        }
    };
    let device = match obj.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if valid_id(d) && d.len() <= MAX_DEVICE_ID => Some(d.clone()),
        Some(_) => {
            return fail(
                ErrorCode::InvalidDevice,
                format!(
                    "device: a device id of 1 to {MAX_DEVICE_ID} bytes without '/', '+', '#' \
                     or control characters"
                ),
            );
        }
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => Priority::P3,
        Some(v) => match parse_priority(v) {
            Some(p) => p,
            None => {
                return fail(
                    ErrorCode::InvalidPriority,
                    format!("priority: 0 to 5 or \"P0\" to \"P5\", not {v}"),
                );
            }
        },
    };
    let deadline_ms = match obj.get("deadline_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|&d| d > 0) {
            Some(d) => Some(d),
            None => {
                return fail(
                    ErrorCode::InvalidDeadline,
                    format!("deadline_ms: a positive integer of milliseconds, not {v}"),
                );
            }
        },
    };
    let timeout_ms = match obj.get("timeout_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_u64()
            .filter(|&t| (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t))
        {
            Some(t) => Some(t),
            None => {
                return fail(
                    ErrorCode::InvalidTimeout,
                    format!(
                        "timeout_ms: an integer of milliseconds from {MIN_TIMEOUT_MS} to {MAX_TIMEOUT_MS}, not {v}"
                    ),
                );
            }
        },
    };
    let payload = obj
        .get("payload")
        .cloned()
        .unwrap_or(Value::Null)
        .to_string();
    if payload.len() > MAX_PAYLOAD {
        return fail(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload is {} bytes of JSON; devices take at most {MAX_PAYLOAD}",
                payload.len()
            ),
        );
    }
    let locks = match obj.get("locks").map(parse_locks) {
        None => Vec::new(),
        Some(Ok(locks)) => locks,
        Some(Err(message)) => return fail(ErrorCode::InvalidLocks, message),
    };
    let resources = match obj.get("resources").map(parse_resources) {
        None => Vec::new(),
        Some(Ok(resources)) => resources,
        Some(Err(message)) => return fail(ErrorCode::InvalidResources, message),
    };
    Ok(Submission {
        id: id.unwrap_or_else(generate_id),
        capability,
        device,
        priority,
        deadline_ms,
        timeout_ms,
        payload,
        locks,
        resources,
        trace_id,
    })
}

/// The id and trace id of a message that is refused as a whole (too large, retained), when
/// it is a JSON object that has them in a usable form: so the sender can match the refusal.
pub fn peek_ids(bytes: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Ids {
        id: Option<Value>,
        trace_id: Option<Value>,
    }
    let Ok(ids) = serde_json::from_slice::<Ids>(bytes) else {
        return (None, None);
    };
    let id = match ids.id {
        Some(Value::String(i)) if valid_id(&i) => Some(i),
        _ => None,
    };
    let trace = match ids.trace_id {
        Some(Value::String(t)) if t.len() <= MAX_TRACE_ID => Some(t),
        _ => None,
    };
    (id, trace)
}

/// The `locks` of a submission: `null` or an array of at most [`MAX_TASK_LOCKS`] distinct
/// lock names, each as a device can declare it ([`valid_lock_name`]); otherwise what is wrong.
fn parse_locks(v: &Value) -> Result<Vec<String>, String> {
    let kind = Names {
        field: "locks",
        what: "lock name",
        max: MAX_TASK_LOCKS,
        valid: valid_lock_name,
        longest: MAX_LOCK_NAME,
    };
    kind.parse(v)
}

/// The `resources` of a submission: `null` or an array of at most [`MAX_TASK_RESOURCES`]
/// distinct resource names (whether they are declared is checked where the configuration is
/// known).
fn parse_resources(v: &Value) -> Result<Vec<String>, String> {
    let kind = Names {
        field: "resources",
        what: "resource name",
        max: MAX_TASK_RESOURCES,
        valid: broker_config::valid_resource_name,
        longest: broker_config::MAX_RESOURCE_NAME,
    };
    kind.parse(v)
}

/// A list of distinct names in a submission.
struct Names {
    field: &'static str,
    what: &'static str,
    max: usize,
    valid: fn(&str) -> bool,
    /// The longest name, in bytes (of ASCII letters, digits, `.`, `_` or `-`).
    longest: usize,
}

impl Names {
    fn parse(&self, v: &Value) -> Result<Vec<String>, String> {
        let Self {
            field,
            what,
            max,
            valid,
            longest,
        } = self;
        let items = match v {
            Value::Null => return Ok(Vec::new()),
            Value::Array(items) if items.len() <= *max => items,
            _ => {
                return Err(format!(
                    "{field}: an array of at most {max} {what}s, not {v}"
                ));
            }
        };
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let Some(name) = item.as_str().filter(|n| valid(n)) else {
                return Err(format!(
                    "{field}: {item} is not a {what} (1 to {longest} bytes of ASCII letters, \
                     digits, '.', '_' or '-')"
                ));
            };
            if names.iter().any(|n| n == name) {
                return Err(format!("{field}: {item} is named twice"));
            }
            names.push(name.to_owned());
        }
        Ok(names)
    }
}

fn parse_priority(v: &Value) -> Option<Priority> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u8::try_from(p).ok())
            .and_then(Priority::from_level),
        // Exactly "P0" to "P5": `u8::from_str` would also take "P+3" and "P03".
        Value::String(s) => match s.as_bytes() {
            [b'P', digit @ b'0'..=b'9'] => Priority::from_level(digit - b'0'),
            _ => None,
        },
        _ => None,
    }
}

/// A task's state in status events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Dispatched,
    Running,
    /// Given back by its device (to make room for more urgent work): queued again, ahead of
    /// later tasks of its priority. Not final.
    Preempted,
    Completed,
    Failed,
    Expired,
    Cancelled,
    Rejected,
}

impl TaskState {
    /// Whether no further event follows.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Expired | Self::Cancelled | Self::Rejected
        )
    }
}

/// One event on `{root}/tasks/{id}/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub id: String,
    pub state: TaskState,
    pub device: Option<String>,
    pub attempt: u32,
    pub trace_id: Option<String>,
    /// Wall-clock milliseconds since the Unix epoch when the state was entered.
    pub ts_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl StatusEvent {
    /// The `rejected` event of a submission that never became a task.
    pub fn rejected(id: String, trace_id: Option<String>, error: ApiError, ts_ms: u64) -> Self {
        Self {
            id,
            state: TaskState::Rejected,
            device: None,
            attempt: 0,
            trace_id,
            ts_ms,
            result: None,
            error: Some(error),
        }
    }
}

/// One message on `{root}/errors`: a submission that could not be parsed into a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub error: ApiError,
    /// The id of the message refused, when it had one that could be read (one that can be a
    /// topic level would have been answered on the task's status topic instead, unless the
    /// refusal is about the id itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The trace id of the message refused, when it had one that could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The start of what was received, to find the sender.
    pub received: String,
    pub ts_ms: u64,
}

#[cfg(test)]
mod tests;
