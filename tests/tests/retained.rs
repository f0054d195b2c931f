//! A retained submission: the broker hands it to every new subscription, so an id-less one
//! would become a new task at every reconnect of the bridge. The bridge refuses it on
//! `{root}/errors` (`retained`), never runs it, and clears it from the broker. mosquitto,
//! with the submission retained before the bridge starts.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use edge_tests::{Watcher, external_config, last_state, start_bridge_with_config, start_mosquitto};
use serde_json::json;

const ROOT: &str = "edge/ret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_submission_is_refused_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let retained = json!({"capability": "echo", "trace_id": "retained-1", "payload": 1});
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
        .args(["-t", &format!("{ROOT}/tasks/submit")])
        .args(["-m", &retained.to_string()])
        .status()
        .expect("mosquitto_pub (package mosquitto-clients) must be installed");
    assert!(status.success());

    // Watching before the bridge starts: the refusal is not retained.
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    let mut w = Watcher::connect(broker, ROOT).await;
    let _bridge = start_bridge_with_config(dir.path(), &external_config("ret", port));
    w.wait_for(Duration::from_secs(20), "the refusal on errors", |seen| {
        seen.iter().any(|(t, v)| {
            t.ends_with("/errors")
                && v["error"]["code"] == "retained"
                && v["received"]
                    .as_str()
                    .is_some_and(|r| r.contains("retained-1"))
        })
    })
    .await;

    // Cleared: a new subscription gets no retained submission before a live one.
    let mut fresh = Watcher::connect(broker, ROOT).await;
    fresh
        .submit(
            ROOT,
            r#"{"id":"marker","capability":"echo","trace_id":"live"}"#,
        )
        .await;
    fresh
        .wait_for(Duration::from_secs(20), "the marker queued", |seen| {
            last_state(seen, "marker").is_some()
        })
        .await;
    assert!(
        !fresh
            .seen
            .iter()
            .any(|(t, v)| t.ends_with("/tasks/submit") && v["trace_id"] == "retained-1"),
        "the broker still holds the retained submission"
    );
    // And it never became a task.
    assert!(
        !w.seen
            .iter()
            .chain(&fresh.seen)
            .any(|(t, v)| t.ends_with("/status") && v["trace_id"] == "retained-1"),
        "a retained submission ran"
    );
}
