//! The MQTT API's input: any bytes on the submit topic, any topic under any root.
//!
//! Checked against a reference written from the API's documentation, not from the parser:
//! - Nothing panics.
//! - **Topics**: [`api_topic`] says `Submit` exactly for the topic the submit filter matches,
//!   `Cancel(id)` exactly for the topics the cancel filter (`{root}/tasks/+/cancel`) matches,
//!   with `id` the level `+` matched, and `None` for every other topic.
//! - **Accepted submissions** are within the documented limits: the id is a topic level (its
//!   status topic is publishable and its cancel topic is matched by the cancel filter) and is
//!   the client's when it gave one (the generated one only when it gave none); the
//!   capability is 1 to 32 bytes; the device, if any, is a topic level of at most 32 bytes
//!   (a device id); a message over 16 KiB is refused whole (`message_too_large`); the deadline is
//!   positive; the lease (`timeout_ms`) is in range; the payload is the JSON text of what was
//!   sent (`null` when nothing was), at most `MAX_PAYLOAD` bytes; the locks and resources are
//!   distinct valid names, at most 4 each; the trace id is at most 32 bytes. A submission is
//!   accepted exactly when the reference finds every field valid.
//! - **Refusals** carry an error code of the parser's (not one of the queue's), naming a
//!   field the reference finds wrong, and a message. The id is echoed whenever it could be
//!   read (a valid id string), and so is the trace id (a string of at most 32 bytes), also
//!   when the other one is the field refused; neither is ever made up.
#![no_main]

use std::cell::Cell;

use arbitrary::Arbitrary;
use broker_config::MAX_RESOURCE_NAME;
use device_core::proto::{
    MAX_CAPABILITY_NAME, MAX_DEVICE_ID, MAX_LOCK_NAME, MAX_PAYLOAD, MAX_TRACE_ID,
};
use edge_bridge::api::{
    ErrorCode, MAX_ID, MAX_SUBMISSION_BYTES, MAX_TASK_RESOURCES, MAX_TIMEOUT_MS, MIN_TIMEOUT_MS,
    Rejection, Submission, parse_submission,
};
use edge_bridge::mqtt::{ApiTopic, api_filters, api_topic};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Strings near the edges of the rules, so that the fuzzer reaches them without guessing.
const NAMES: &[&str] = &[
    "echo",
    "t-1",
    "dev-1",
    "i2c0",
    "bus",
    "a.b",
    "sixteen-bytes-16",
    "seventeen-bytes-x",
    "thirty-two-bytes-long-name-32-xx",
    "thirty-three-bytes-long-name-33-xx",
    "",
    "a/b",
    "x+y",
    "#",
    "tab\t",
    "nul\0",
    "del\u{7f}",
    "ü",
    "has space",
    "P0",
    "P5",
    "P6",
    "P+3",
    "P03",
    "p1",
    "submit",
    "cancel",
];

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Small(u8),
    U64(u64),
    I64(i64),
    F64(f64),
    Name(u8),
    /// `n` copies of `c`: ids, names and payloads around their length limits.
    Repeat(char, u16),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(Key, Json)>),
}

#[derive(Arbitrary, Debug)]
enum Key {
    /// One of the API's keys.
    Known(u8),
    Other(String),
}

/// The body of a message on the submit topic.
#[derive(Arbitrary, Debug)]
enum Body {
    /// Bytes as they came.
    Raw(Vec<u8>),
    /// A JSON object made of the API's keys (and others), each with a value of any kind.
    Object(Vec<(Key, Json)>),
    /// Such an object's JSON text cut short.
    Truncated(Vec<(Key, Json)>, u16),
    /// A valid submission with every key, some of them replaced (or added): one wrong field
    /// at a time is what reaches each check.
    Patched(Vec<(Key, Json)>),
}

#[derive(Arbitrary, Debug)]
enum Prefix {
    Tasks,
    /// `{root}/task/`.
    Task,
    Root,
    None,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Suffix {
    Cancel,
    None,
    Status,
    /// `/cancel/`.
    CancelSlash,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Case {
    root: Option<String>,
    prefix: Prefix,
    level: Json,
    suffix: Suffix,
    body: Body,
}

/// A submission with every key the API knows, each valid.
static VALID: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    serde_json::json!({
        "id": "t-1",
        "capability": "echo",
        "device": "dev-1",
        "priority": "P1",
        "deadline_ms": 5000,
        "timeout_ms": 60000,
        "payload": {"ch": 3},
        "locks": ["i2c0"],
        "resources": ["r1"],
        "trace_id": "tr",
    })
});

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

impl Key {
    fn text(&self) -> String {
        match self {
            Self::Known(k) => KEYS[usize::from(*k) % KEYS.len()].to_owned(),
            Self::Other(s) => s.clone(),
        }
    }
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Small(n) => Value::from(n % 8),
            Self::U64(n) => Value::from(*n),
            Self::I64(n) => Value::from(*n),
            Self::F64(f) => Value::from(*f),
            Self::Name(i) => Value::from(NAMES[usize::from(*i) % NAMES.len()]),
            Self::Repeat(c, n) => Value::from(c.to_string().repeat(usize::from(n % 300))),
            Self::Str(s) => Value::from(s.as_str()),
            Self::Array(items) => Value::Array(items.iter().map(Self::value).collect()),
            Self::Object(fields) => Value::Object(object(fields)),
        }
    }

    /// A topic level made of this value.
    fn level(&self) -> String {
        match self.value() {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

fn object(fields: &[(Key, Json)]) -> Map<String, Value> {
    fields.iter().map(|(k, v)| (k.text(), v.value())).collect()
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Raw(bytes) => bytes.clone(),
            Self::Object(fields) => Value::Object(object(fields)).to_string().into_bytes(),
            Self::Patched(fields) => {
                let mut obj = match VALID.clone() {
                    Value::Object(obj) => obj,
                    _ => unreachable!("VALID is an object"),
                };
                for (k, v) in fields {
                    obj.insert(k.text(), v.value());
                }
                Value::Object(obj).to_string().into_bytes()
            }
            Self::Truncated(fields, at) => {
                let mut text = Value::Object(object(fields)).to_string().into_bytes();
                text.truncate(usize::from(*at) % (text.len() + 1));
                text
            }
        }
    }
}

/// A level of an MQTT topic the bridge publishes under and clients cancel under: the rule the
/// API documents for task and device ids.
fn topic_level(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID
        && !s.contains(['/', '+', '#'])
        && !s.chars().any(char::is_control)
}

/// A lock or resource name: 1 to `longest` bytes of ASCII letters, digits, `.`, `_`, `-`.
fn valid_name(n: &str, longest: usize) -> bool {
    !n.is_empty()
        && n.len() <= longest
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether `topic` matches `filter`, whose only wildcard is `+` (MQTT 3.1.1, 4.7).
fn matches(topic: &str, filter: &str) -> bool {
    let (t, f): (Vec<&str>, Vec<&str>) = (topic.split('/').collect(), filter.split('/').collect());
    t.len() == f.len() && t.iter().zip(&f).all(|(t, f)| *f == "+" || t == f)
}

fn check_topic(case: &Case) {
    let root = case
        .root
        .as_deref()
        .filter(|r| !r.is_empty() && !r.contains(['+', '#', '\0']))
        .unwrap_or("edge");
    let level = case.level.level();
    let prefix = match &case.prefix {
        Prefix::Tasks => format!("{root}/tasks/"),
        Prefix::Task => format!("{root}/task/"),
        Prefix::Root => root.to_owned(),
        Prefix::None => String::new(),
        Prefix::Other(p) => p.clone(),
    };
    let suffix = match &case.suffix {
        Suffix::Cancel => "/cancel",
        Suffix::None => "",
        Suffix::Status => "/status",
        Suffix::CancelSlash => "/cancel/",
        Suffix::Other(s) => s,
    };
    let topic = format!("{prefix}{level}{suffix}");
    let [submit, cancel] = api_filters(root);
    let expected = if matches(&topic, &submit) {
        Some(ApiTopic::Submit)
    } else if matches(&topic, &cancel) {
        let at = root.split('/').count() + 1;
        Some(ApiTopic::Cancel(
            topic.split('/').nth(at).expect("the `+` level"),
        ))
    } else {
        None
    };
    assert_eq!(
        api_topic(root, &topic),
        expected,
        "{topic:?} under {root:?}"
    );
}

/// What the reference says of one field of a submission object: `true` if it is valid.
fn field_ok(key: &str, v: Option<&Value>) -> bool {
    let null = matches!(v, None | Some(Value::Null));
    let name_list = |max: usize, longest: usize| match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) if items.len() <= max => {
            let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            names.len() == items.len()
                && names.iter().all(|n| valid_name(n, longest))
                && (1..names.len()).all(|i| !names[..i].contains(&names[i]))
        }
        Some(_) => false,
    };
    match key {
        "id" => null || v.and_then(Value::as_str).is_some_and(topic_level),
        // A device id is a topic level of at most MAX_DEVICE_ID bytes.
        "device" => {
            null || v
                .and_then(Value::as_str)
                .is_some_and(|d| topic_level(d) && d.len() <= MAX_DEVICE_ID)
        }
        "capability" => v
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty() && c.len() <= MAX_CAPABILITY_NAME),
        "priority" => {
            null || v.and_then(Value::as_u64).is_some_and(|p| p <= 5)
                || v.and_then(Value::as_str)
                    .is_some_and(|p| ["P0", "P1", "P2", "P3", "P4", "P5"].contains(&p))
        }
        "deadline_ms" => null || v.and_then(Value::as_u64).is_some_and(|d| d > 0),
        "timeout_ms" => {
            null || v
                .and_then(Value::as_u64)
                .is_some_and(|t| (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t))
        }
        "payload" => v.unwrap_or(&Value::Null).to_string().len() <= MAX_PAYLOAD,
        "locks" => name_list(device_core::proto::MAX_TASK_LOCKS, MAX_LOCK_NAME),
        "resources" => name_list(MAX_TASK_RESOURCES, MAX_RESOURCE_NAME),
        "trace_id" => {
            null || v
                .and_then(Value::as_str)
                .is_some_and(|t| t.len() <= MAX_TRACE_ID)
        }
        _ => false,
    }
}

/// The error code the parser gives for an invalid `key`.
fn code_of(key: &str) -> ErrorCode {
    match key {
        "id" => ErrorCode::InvalidId,
        "capability" => ErrorCode::InvalidCapability,
        "device" => ErrorCode::InvalidDevice,
        "priority" => ErrorCode::InvalidPriority,
        "deadline_ms" => ErrorCode::InvalidDeadline,
        "timeout_ms" => ErrorCode::InvalidTimeout,
        "payload" => ErrorCode::PayloadTooLarge,
        "locks" => ErrorCode::InvalidLocks,
        "resources" => ErrorCode::InvalidResources,
        "trace_id" => ErrorCode::InvalidTraceId,
        _ => ErrorCode::UnknownField,
    }
}

fn check_accepted(s: &Submission, obj: &Map<String, Value>, generated: bool) {
    let given = obj.get("id").and_then(Value::as_str);
    assert_eq!(
        generated,
        given.is_none(),
        "an id is generated only when none was given"
    );
    if let Some(id) = given {
        assert_eq!(s.id, id);
    }
    // A topic level: its status topic is publishable (no wildcard, no NUL) and its cancel
    // topic is one the bridge's filter matches.
    assert!(topic_level(&s.id), "id {:?}", s.id);
    let [_, cancel] = api_filters("edge");
    let cancel_topic = format!("edge/tasks/{}/cancel", s.id);
    assert!(matches(&cancel_topic, &cancel));
    assert_eq!(
        api_topic("edge", &cancel_topic),
        Some(ApiTopic::Cancel(&s.id))
    );
    assert!(!s.capability.is_empty() && s.capability.len() <= MAX_CAPABILITY_NAME);
    assert_eq!(
        Some(s.capability.as_str()),
        obj.get("capability").and_then(Value::as_str)
    );
    if let Some(d) = &s.device {
        assert!(topic_level(d) && d.len() <= MAX_DEVICE_ID, "device {d:?}");
    }
    assert_eq!(
        s.device.as_deref(),
        obj.get("device").and_then(Value::as_str)
    );
    let level = match obj.get("priority") {
        None | Some(Value::Null) => 3,
        Some(Value::String(p)) => u64::from(p.as_bytes()[1] - b'0'),
        Some(p) => p
            .as_u64()
            .expect("a valid priority is a string or a number"),
    };
    assert_eq!(
        u64::from(s.priority.level()),
        level,
        "P3 unless another was sent"
    );
    assert_eq!(
        s.deadline_ms,
        obj.get("deadline_ms").and_then(Value::as_u64)
    );
    assert_eq!(s.timeout_ms, obj.get("timeout_ms").and_then(Value::as_u64));
    assert!(s.deadline_ms.is_none_or(|d| d > 0));
    assert!(
        s.timeout_ms
            .is_none_or(|t| (MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&t))
    );
    assert!(s.payload.len() <= MAX_PAYLOAD);
    let sent = obj.get("payload").unwrap_or(&Value::Null);
    assert_eq!(
        s.payload,
        sent.to_string(),
        "the payload is the JSON text sent"
    );
    for (names, max, longest) in [
        (&s.locks, device_core::proto::MAX_TASK_LOCKS, MAX_LOCK_NAME),
        (&s.resources, MAX_TASK_RESOURCES, MAX_RESOURCE_NAME),
    ] {
        assert!(names.len() <= max);
        assert!(names.iter().all(|n| valid_name(n, longest)), "{names:?}");
        assert!((1..names.len()).all(|i| !names[..i].contains(&names[i])));
    }
    let sent_names = |key: &str| -> Vec<String> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(s.locks, sent_names("locks"));
    assert_eq!(s.resources, sent_names("resources"));
    assert!(s.trace_id.as_ref().is_none_or(|t| t.len() <= MAX_TRACE_ID));
    assert_eq!(
        s.trace_id.as_deref(),
        obj.get("trace_id").and_then(Value::as_str)
    );
}

fn check_refused(r: &Rejection, obj: Option<&Map<String, Value>>, wrong: &[String]) {
    assert!(!r.error.message.is_empty());
    let Some(obj) = obj else {
        assert_eq!(r.error.code, ErrorCode::MalformedJson);
        assert_eq!((&r.id, &r.trace_id), (&None, &None));
        return;
    };
    assert!(
        wrong.iter().any(|k| code_of(k) == r.error.code),
        "{:?} names no wrong field of {wrong:?}",
        r.error.code
    );
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .filter(|i| topic_level(i));
    let trace = obj
        .get("trace_id")
        .and_then(Value::as_str)
        .filter(|t| t.len() <= MAX_TRACE_ID);
    assert_eq!(
        r.id.as_deref(),
        id,
        "the id is echoed when it could be read"
    );
    assert_eq!(r.trace_id.as_deref(), trace, "so is the trace id");
}

fn check_submission(bytes: &[u8]) {
    let generated = Cell::new(false);
    let parsed = parse_submission(bytes, || {
        generated.set(true);
        "generated-1".to_owned()
    });
    if bytes.len() > MAX_SUBMISSION_BYTES {
        // Refused as a whole, under the id and trace id it had when readable.
        let r = parsed.expect_err("a message longer than any submission was accepted");
        assert_eq!(r.error.code, ErrorCode::MessageTooLarge);
        return;
    }
    let value = serde_json::from_slice::<Value>(bytes).ok();
    let obj = value.as_ref().and_then(Value::as_object);
    let wrong: Vec<String> = match obj {
        Some(obj) => {
            let mut keys: Vec<String> = KEYS
                .iter()
                .filter(|k| !field_ok(k, obj.get(**k)))
                .map(|k| (*k).to_owned())
                .collect();
            keys.extend(obj.keys().filter(|k| !KEYS.contains(&k.as_str())).cloned());
            keys
        }
        None => vec!["(not an object)".to_owned()],
    };
    match &parsed {
        Ok(s) => {
            assert!(
                wrong.is_empty(),
                "accepted with wrong fields {wrong:?}: {s:?}"
            );
            check_accepted(s, obj.expect("an object"), generated.get());
        }
        Err(r) => {
            assert!(!wrong.is_empty(), "refused with nothing wrong: {r:?}");
            check_refused(r, obj, &wrong);
        }
    }
}

fuzz_target!(|case: Case| {
    check_topic(&case);
    check_submission(&case.body.bytes());
});
