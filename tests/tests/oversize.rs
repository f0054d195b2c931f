//! Messages on the API topics that are too large or unreadable. An external broker (mosquitto
//! with its defaults has no message size limit) delivers a submission larger than the bridge's
//! `max_packet_bytes`: the bridge reads it once, refuses it where its sender looks (with its id
//! and trace id) and goes on; its MQTT session never stalls on it. Refusals of submissions whose
//! id could not be used carry the trace id they had.

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::{Watcher, external_config, last_state, start_bridge_with_config, start_mosquitto};
use serde_json::json;

const ROOT: &str = "edge/big";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_over_the_packet_limit_is_refused_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    let mut w = Watcher::connect(broker, ROOT).await;
    let _bridge = start_bridge_with_config(dir.path(), &external_config("big", port));
    w.wait_bridge_online().await;
    // The bridge takes packets of 64 KiB (external_config); this one is 300 KiB.
    let huge = json!({
        "id": "huge-1",
        "capability": "echo",
        "trace_id": "huge-trace",
        "payload": "x".repeat(300 * 1024),
    });
    w.submit(ROOT, &huge.to_string()).await;
    w.submit(ROOT, r#"{"id":"after-1","capability":"echo"}"#)
        .await;
    let answered = format!("{ROOT}/tasks/huge-1/status");
    w.wait_for(
        Duration::from_secs(30),
        "the big submission answered and the one after it queued",
        |seen| last_state(seen, "after-1").is_some() && seen.iter().any(|(t, _)| t == &answered),
    )
    .await;
    let refusal = w
        .seen
        .iter()
        .find(|(t, _)| t == &format!("{ROOT}/tasks/huge-1/status"))
        .map(|(_, v)| v.clone())
        .expect("the big submission was answered on its status topic");
    assert_eq!(refusal["state"], "rejected", "{refusal}");
    assert_eq!(refusal["error"]["code"], "message_too_large", "{refusal}");
    assert_eq!(refusal["trace_id"], "huge-trace", "{refusal}");

    // The session goes on: a later submission is queued too, and the big one was refused once.
    w.submit(ROOT, r#"{"id":"after-2","capability":"echo"}"#)
        .await;
    w.wait_for(
        Duration::from_secs(20),
        "a later submission queued",
        |seen| last_state(seen, "after-2").is_some(),
    )
    .await;
    let answers = w
        .seen
        .iter()
        .filter(|(t, _)| t == &format!("{ROOT}/tasks/huge-1/status"))
        .count();
    assert_eq!(
        answers, 1,
        "the big submission was answered {answers} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_without_a_usable_id_carries_the_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    let mut w = Watcher::connect(broker, ROOT).await;
    let _bridge = start_bridge_with_config(dir.path(), &external_config("big", port));
    w.wait_bridge_online().await;
    // An id that cannot be a topic level: the refusal goes to {root}/errors.
    w.submit(
        ROOT,
        r#"{"id":"a/b","capability":"echo","trace_id":"t-slash"}"#,
    )
    .await;
    w.wait_for(Duration::from_secs(20), "the refusal on errors", |seen| {
        seen.iter()
            .any(|(t, v)| t.ends_with("/errors") && v["error"]["code"] == "invalid_id")
    })
    .await;
    let (_, refusal) = w
        .seen
        .iter()
        .find(|(t, v)| t.ends_with("/errors") && v["error"]["code"] == "invalid_id")
        .unwrap();
    assert_eq!(refusal["trace_id"], "t-slash", "{refusal}");
}
