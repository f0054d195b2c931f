//! "Why is my task waiting?": the query a client publishes on `{root}/query/tasks` and the
//! answer the bridge publishes on `{root}/query/replies/{reply}`.
//!
//! Request: `{"reply":"a-topic-level","id":"optional task id","limit":100}`. Without `id`,
//! the answer lists the live tasks (on a device first, then queued in dispatch order), at
//! most `limit` of them; with `id`, that task, live or finished. Each live task carries the
//! reason it is not running yet. Nothing is stored: a query changes nothing, and an answer
//! the client missed is asked for again.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, ErrorCode, StatusEvent, TaskState, valid_id};

/// Tasks listed when a query gives no `limit`.
pub const DEFAULT_QUERY_LIMIT: usize = 100;
/// Most tasks one answer lists: an answer stays one MQTT message of modest size.
pub const MAX_QUERY_LIMIT: usize = 1000;
/// Longest query message read.
pub const MAX_QUERY_BYTES: usize = 1024;

/// A parsed query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The last level of the topic the answer goes to.
    pub reply: String,
    /// One task, or (`None`) the list.
    pub id: Option<String>,
    pub limit: usize,
}

/// Why a query was refused: with its reply level when that could be read (the refusal is
/// then the answer), without otherwise (then it goes to `{root}/errors`).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryRefusal {
    pub reply: Option<String>,
    pub error: ApiError,
}

/// Parses a query message.
pub fn parse_query(bytes: &[u8]) -> Result<Query, QueryRefusal> {
    let refuse = |reply: Option<String>, message: String| QueryRefusal {
        reply,
        error: ApiError::new(ErrorCode::InvalidQuery, message),
    };
    if bytes.len() > MAX_QUERY_BYTES {
        return Err(refuse(
            None,
            format!(
                "a query is at most {MAX_QUERY_BYTES} bytes, this one {}",
                bytes.len()
            ),
        ));
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(refuse(None, "a query is a JSON object".into()));
    };
    let reply = match map.get("reply") {
        Some(Value::String(r)) if valid_id(r) => r.clone(),
        _ => {
            return Err(refuse(
                None,
                "`reply` must be a string that is one MQTT topic level (no /, + or #): the \
                 answer goes to {root}/query/replies/{reply}"
                    .into(),
            ));
        }
    };
    let some = Some(reply.clone());
    if let Some(key) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "reply" | "id" | "limit"))
    {
        return Err(refuse(
            some,
            format!("unknown key `{key}` (known: reply, id, limit)"),
        ));
    }
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if valid_id(id) => Some(id.clone()),
        Some(other) => return Err(refuse(some, format!("`id` {other} is not a task id"))),
    };
    let limit = match map.get("limit") {
        None | Some(Value::Null) => DEFAULT_QUERY_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_QUERY_LIMIT as u64).contains(&n) => n as usize,
            _ => {
                return Err(refuse(
                    some,
                    format!("`limit` {v} must be a whole number from 1 to {MAX_QUERY_LIMIT}"),
                ));
            }
        },
    };
    Ok(Query { reply, id, limit })
}

/// Why a live task is not running (yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub code: WaitCode,
    /// For people: names the capability, device, lock or resource concerned.
    pub message: String,
    /// Wall-clock ms until which it waits, when that is known (a retry delay, a grace
    /// period).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// The reasons a task waits, as machine-readable codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitCode {
    /// On a device now (dispatched or running): not waiting.
    OnDevice,
    /// The task names a device that is not online.
    DeviceOffline,
    /// The task names a device that is online but does not offer its capability.
    DeviceLacksCapability,
    /// No online device offers the capability.
    NoDevice,
    /// Devices offer the capability, but none has every lock the task names.
    NoLock,
    /// The payload is larger than every online capable device takes.
    PayloadTooLarge,
    /// Every capable device is full.
    DevicesBusy,
    /// The capable devices' free slots are kept for urgent tasks.
    ReservedForUrgent,
    /// Its QoS class holds its share of the slots.
    ClassQuota,
    /// A bridge resource it names is held, or goes to a more urgent waiter first.
    Resource,
    /// Waiting out a retry delay.
    RetryBackoff,
    /// Its device went away with it; the task waits for it to come back until the grace
    /// period ends, then moves on.
    DeviceAway,
    /// A cancel was sent to its device; its answer ends the task.
    Cancelling,
    /// Nothing stops it: it goes with the next dispatch.
    Ready,
}

/// One task in an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub state: TaskState,
    pub capability: String,
    /// The device it is on, or the device it names.
    pub device: Option<String>,
    pub priority: String,
    pub attempt: u32,
    /// Milliseconds since the bridge accepted it.
    pub age_ms: u64,
    pub trace_id: Option<String>,
    pub waiting: Waiting,
}

/// The answer to a query.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct QueryAnswer {
    /// The task asked about, as the query named it (so a client can tell its answer from
    /// another's on the same reply topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The live tasks asked for, or the one named when it is live.
    pub tasks: Vec<TaskView>,
    /// The list was cut to keep the answer within the MQTT packet limit.
    #[serde(default)]
    pub truncated: bool,
    /// Live tasks in the queue, listed or not.
    pub live: usize,
    /// The final event of the task named, when it has finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<StatusEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// Wall-clock ms when the answer was made.
    pub ts_ms: u64,
}

impl QueryAnswer {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("answers serialise to JSON")
    }
}

impl TaskState {
    /// Whether a task in this state is on a device.
    pub const fn is_on_device(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_refused_with_the_key() {
        let q = parse_query(br#"{"reply":"r1"}"#).unwrap();
        assert_eq!(
            q,
            Query {
                reply: "r1".into(),
                id: None,
                limit: DEFAULT_QUERY_LIMIT
            }
        );
        let q = parse_query(br#"{"reply":"r1","id":"t-7","limit":5}"#).unwrap();
        assert_eq!((q.id.as_deref(), q.limit), (Some("t-7"), 5));
        for (bad, reply, says) in [
            (&b"nope"[..], None, "JSON object"),
            (br#"{"id":"x"}"#, None, "`reply`"),
            (br#"{"reply":"a/b"}"#, None, "`reply`"),
            (br#"{"reply":"r","limit":0}"#, Some("r"), "`limit` 0"),
            (br#"{"reply":"r","limit":1001}"#, Some("r"), "`limit` 1001"),
            (br#"{"reply":"r","id":"a/#"}"#, Some("r"), "`id`"),
            (br#"{"reply":"r","ids":[]}"#, Some("r"), "unknown key `ids`"),
        ] {
            let e = parse_query(bad).unwrap_err();
            assert_eq!(
                e.reply.as_deref(),
                reply,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(e.error.code, ErrorCode::InvalidQuery);
            assert!(e.error.message.contains(says), "{}", e.error.message);
        }
        let long = format!(r#"{{"reply":"r","id":"{}"}}"#, "x".repeat(MAX_QUERY_BYTES));
        assert!(parse_query(long.as_bytes()).unwrap_err().reply.is_none());
    }
}
