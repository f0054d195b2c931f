use super::*;

fn parse(json: &str) -> Result<Submission, Rejection> {
    parse_submission(json.as_bytes(), || "generated-1".into())
}

fn code(json: &str) -> ErrorCode {
    parse(json).unwrap_err().error.code
}

#[test]
fn a_full_submission_parses() {
    let s = parse(
        r#"{"id":"t-1","capability":"sensor.read","device":"dev-1","priority":"P1",
            "deadline_ms":5000,"payload":{"ch":3},"locks":["i2c0"],"trace_id":"tr"}"#,
    )
    .unwrap();
    assert_eq!(s.id, "t-1");
    assert_eq!(s.priority, Priority::P1);
    assert_eq!(s.deadline_ms, Some(5000));
    assert_eq!(s.payload, r#"{"ch":3}"#);
    assert_eq!(s.locks, ["i2c0"]);
    assert_eq!(
        (s.device.as_deref(), s.trace_id.as_deref()),
        (Some("dev-1"), Some("tr"))
    );
}

#[test]
fn defaults_apply_and_an_id_is_generated() {
    let s = parse(r#"{"capability":"echo"}"#).unwrap();
    assert_eq!(
        (s.id.as_str(), s.priority, s.payload.as_str()),
        ("generated-1", Priority::P3, "null")
    );
    assert_eq!(
        parse(r#"{"capability":"echo","priority":0}"#)
            .unwrap()
            .priority,
        Priority::P0
    );
    assert_eq!(
        parse(r#"{"capability":"echo","priority":5}"#)
            .unwrap()
            .priority,
        Priority::P5
    );
}

#[test]
fn every_bad_field_is_rejected_with_its_code() {
    assert_eq!(code("not json"), ErrorCode::MalformedJson);
    assert_eq!(code("[1,2]"), ErrorCode::MalformedJson);
    assert_eq!(
        code(r#"{"capability":"echo","prio":1}"#),
        ErrorCode::UnknownField
    );
    assert_eq!(code(r#"{"id":"x"}"#), ErrorCode::InvalidCapability);
    assert_eq!(code(r#"{"capability":""}"#), ErrorCode::InvalidCapability);
    assert_eq!(
        code(r#"{"capability":"echo","priority":6}"#),
        ErrorCode::InvalidPriority
    );
    assert_eq!(
        code(r#"{"capability":"echo","priority":"P9"}"#),
        ErrorCode::InvalidPriority
    );
    assert_eq!(
        code(r#"{"capability":"echo","priority":-1}"#),
        ErrorCode::InvalidPriority
    );
    assert_eq!(
        code(r#"{"capability":"echo","priority":1.5}"#),
        ErrorCode::InvalidPriority
    );
    assert_eq!(
        code(r#"{"capability":"echo","deadline_ms":0}"#),
        ErrorCode::InvalidDeadline
    );
    assert_eq!(
        code(r#"{"capability":"echo","deadline_ms":"soon"}"#),
        ErrorCode::InvalidDeadline
    );
    assert_eq!(
        code(r#"{"capability":"echo","id":"a/b"}"#),
        ErrorCode::InvalidId
    );
    assert_eq!(
        code(r#"{"capability":"echo","id":"a+"}"#),
        ErrorCode::InvalidId
    );
    assert_eq!(
        code(r#"{"capability":"echo","device":7}"#),
        ErrorCode::InvalidDevice
    );
    assert_eq!(
        code(r#"{"capability":"echo","locks":"i2c0"}"#),
        ErrorCode::InvalidLocks
    );
    assert_eq!(
        code(r#"{"capability":"echo","locks":["a","b","c","d","e"]}"#),
        ErrorCode::InvalidLocks
    );
    assert_eq!(
        code(r#"{"capability":"echo","trace_id":5}"#),
        ErrorCode::InvalidTraceId
    );
    let big = format!(
        r#"{{"capability":"echo","payload":"{}"}}"#,
        "x".repeat(MAX_PAYLOAD)
    );
    assert_eq!(code(&big), ErrorCode::PayloadTooLarge);
}

/// Found by the `api_parse` fuzz target: `"P+3"` and `"P03"` were taken for P3 (Rust's
/// integer parsing allows a sign and leading zeros), though the API documents "P0" to "P5".
#[test]
fn a_priority_string_is_exactly_p0_to_p5() {
    for (text, level) in [("P0", 0), ("P3", 3), ("P5", 5)] {
        let json = format!(r#"{{"capability":"echo","priority":"{text}"}}"#);
        assert_eq!(parse(&json).unwrap().priority.level(), level, "{text}");
    }
    for bad in [
        "P+3", "P03", "P003", "P-0", "P 3", "p3", "P", "3", "P3 ", "P٣",
    ] {
        let json = format!(r#"{{"capability":"echo","priority":"{bad}"}}"#);
        assert_eq!(code(&json), ErrorCode::InvalidPriority, "{bad:?}");
    }
}

#[test]
fn lock_names_are_checked_as_a_device_declares_them() {
    let locks = |json: &str| parse(&format!(r#"{{"capability":"echo","locks":{json}}}"#));
    assert_eq!(locks("null").unwrap().locks, Vec::<String>::new());
    assert_eq!(locks("[]").unwrap().locks, Vec::<String>::new());
    assert_eq!(
        locks(r#"["i2c0","spi-1","radio_2","a.b"]"#).unwrap().locks,
        ["i2c0", "spi-1", "radio_2", "a.b"]
    );
    assert_eq!(
        locks(r#"["sixteen-bytes-16"]"#).unwrap().locks,
        ["sixteen-bytes-16"]
    );
    for (bad, says) in [
        (r#""i2c0""#, "an array of at most 4 lock names"),
        (r#"{"i2c0":1}"#, "an array"),
        (r#"["a","b","c","d","e"]"#, "at most 4"),
        (r#"[""]"#, r#""" is not a lock name"#),
        (r#"["seventeen-bytes-x"]"#, "1 to 16 bytes"),
        (r#"["has space"]"#, r#""has space" is not a lock name"#),
        (r#"["a/b"]"#, "is not a lock name"),
        (r#"["ü"]"#, "is not a lock name"),
        (r#"[5]"#, "5 is not a lock name"),
        (r#"[null]"#, "null is not a lock name"),
        (r#"["bus","bus"]"#, r#""bus" is named twice"#),
    ] {
        let r = locks(bad).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::InvalidLocks, "{bad}");
        assert!(
            r.error.message.contains(says),
            "{bad}: {:?} should say {says:?}",
            r.error.message
        );
    }
    // Refused under the task's id, so the client sees it on the task's status topic.
    let r = parse(r#"{"id":"t-3","capability":"echo","locks":["no way"]}"#).unwrap_err();
    assert_eq!(r.id.as_deref(), Some("t-3"));
}

#[test]
fn a_rejection_keeps_the_id_and_trace_id_when_readable() {
    let r = parse(r#"{"id":"t-9","trace_id":"tr","priority":9,"capability":"echo"}"#).unwrap_err();
    assert_eq!(
        (r.id.as_deref(), r.trace_id.as_deref()),
        (Some("t-9"), Some("tr"))
    );
    assert!(r.error.message.contains("priority"), "{}", r.error.message);
    // Without a readable id the rejection has nowhere to go but {root}/errors.
    assert_eq!(parse("{").unwrap_err().id, None);
    assert_eq!(
        parse(r#"{"id":"a/b","capability":"echo"}"#).unwrap_err().id,
        None
    );
}

#[test]
fn status_events_serialise_as_documented() {
    let e = StatusEvent {
        id: "t-1".into(),
        state: TaskState::Completed,
        device: Some("dev-1".into()),
        attempt: 1,
        trace_id: None,
        ts_ms: 1_700_000_000_000,
        result: Some(serde_json::json!({"v": 21.5})),
        error: None,
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"id":"t-1","state":"completed","device":"dev-1","attempt":1,"trace_id":null,"ts_ms":1700000000000,"result":{"v":21.5}}"#
    );
    let r = StatusEvent {
        state: TaskState::Rejected,
        result: None,
        error: Some(ApiError::new(
            ErrorCode::QueueFull,
            "queue holds 100000 tasks",
        )),
        ..e
    };
    let text = serde_json::to_string(&r).unwrap();
    assert!(
        text.contains(r#""error":{"code":"queue_full","message":"queue holds 100000 tasks"}"#),
        "{text}"
    );
    assert!(TaskState::Rejected.is_terminal() && !TaskState::Running.is_terminal());
}

/// A submission refused before it became a task: its `rejected` event (the id was readable)
/// and its `{root}/errors` entry (it was not), pinned byte for byte.
#[test]
fn rejections_and_error_entries_serialise_as_documented() {
    let error = ApiError::new(
        ErrorCode::InvalidPriority,
        "priority must be 0..5 or \"P0\"..\"P5\"",
    );
    let event = StatusEvent::rejected("t-9".into(), Some("tr-1".into()), error, 5);
    assert_eq!(
        serde_json::to_string(&event).unwrap(),
        r#"{"id":"t-9","state":"rejected","device":null,"attempt":0,"trace_id":"tr-1","ts_ms":5,"error":{"code":"invalid_priority","message":"priority must be 0..5 or \"P0\"..\"P5\""}}"#
    );
    let entry = ErrorEvent {
        error: ApiError::new(
            ErrorCode::MalformedJson,
            "expected value at line 1 column 1",
        ),
        id: None,
        trace_id: None,
        received: "not json".into(),
        ts_ms: 6,
    };
    assert_eq!(
        serde_json::to_string(&entry).unwrap(),
        r#"{"error":{"code":"malformed_json","message":"expected value at line 1 column 1"},"received":"not json","ts_ms":6}"#
    );
}

/// A message longer than any submission can be is refused as a whole, with the id and trace
/// id it had when they can be read (issue 15, point 8).
#[test]
fn a_message_longer_than_any_submission_is_refused_with_its_ids() {
    let big = format!(
        r#"{{"id":"big-1","capability":"echo","trace_id":"tr-big","payload":"{}"}}"#,
        "x".repeat(MAX_SUBMISSION_BYTES)
    );
    let r = parse(&big).unwrap_err();
    assert_eq!(r.error.code, ErrorCode::MessageTooLarge);
    assert_eq!(
        (r.id.as_deref(), r.trace_id.as_deref()),
        (Some("big-1"), Some("tr-big"))
    );
    // Not JSON at all, or ids that cannot be used: refused without them.
    let r = parse_submission(&vec![b'{'; MAX_SUBMISSION_BYTES + 1], || unreachable!()).unwrap_err();
    assert_eq!(
        (r.error.code, r.id, r.trace_id),
        (ErrorCode::MessageTooLarge, None, None)
    );
    assert_eq!(peek_ids(br#"{"id":"a/b","trace_id":7}"#), (None, None));
    assert_eq!(
        peek_ids(br#"{"id":"a","trace_id":"t","other":[1]}"#),
        (Some("a".into()), Some("t".into()))
    );
}

/// `device` names a device: a device id is at most 32 bytes, so a longer name could never be
/// served and is refused at once instead of waiting for ever (review L3).
#[test]
fn a_device_name_longer_than_any_device_id_is_refused() {
    let long = "d".repeat(device_core::proto::MAX_DEVICE_ID + 1);
    let json = format!(r#"{{"capability":"echo","device":"{long}"}}"#);
    assert_eq!(code(&json), ErrorCode::InvalidDevice);
    let longest = "d".repeat(device_core::proto::MAX_DEVICE_ID);
    let json = format!(r#"{{"capability":"echo","device":"{longest}"}}"#);
    assert_eq!(
        parse(&json).unwrap().device.as_deref(),
        Some(longest.as_str())
    );
}
