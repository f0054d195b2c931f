//! Bad input end to end: each kind gets its rejection (on the task's status topic, or on the
//! errors topic when no id can be read) and nothing else changes — the rejected ids never
//! appear in any other state, and the accepted tasks go on to complete.

use std::time::Duration;

use edge_tests::{Watcher, last_state, start_bridge, start_device};
use serde_json::{Value, json};

const ROOT: &str = "edge/rej";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_submission_is_rejected_with_its_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    let toml = "bridge_id = \"rej\"\n[queue]\nlimit = 3\n[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(&config, toml).unwrap();
    let bridge = start_bridge(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;

    let oversize = "x".repeat(300);
    let bad = [
        (
            "bad-priority",
            json!({"id": "bad-priority", "capability": "echo", "priority": "P9"}).to_string(),
            "invalid_priority",
        ),
        (
            "no-capability",
            json!({"id": "no-capability", "payload": 1}).to_string(),
            "invalid_capability",
        ),
        (
            "too-big",
            json!({"id": "too-big", "capability": "echo", "payload": oversize}).to_string(),
            "payload_too_large",
        ),
        (
            "typo",
            json!({"id": "typo", "capabilty": "echo"}).to_string(),
            "unknown_field",
        ),
    ];
    for (_, text, _) in &bad {
        w.submit(ROOT, text).await;
    }
    w.submit(ROOT, "{\"id\": \"unterminated").await;
    // Fill the queue (limit 3, no device yet), then one more.
    for i in 0..3 {
        w.submit(
            ROOT,
            &json!({"id": format!("ok-{i}"), "capability": "echo", "payload": i}).to_string(),
        )
        .await;
    }
    w.submit(ROOT, r#"{"id":"overflow","capability":"echo"}"#)
        .await;
    w.wait_for(
        Duration::from_secs(20),
        "every rejection and the three queued tasks",
        |seen| {
            bad.iter()
                .all(|(id, _, _)| last_state(seen, id).as_deref() == Some("rejected"))
                && last_state(seen, "overflow").as_deref() == Some("rejected")
                && (0..3).all(|i| last_state(seen, &format!("ok-{i}")).as_deref() == Some("queued"))
                && seen.iter().any(|(t, _)| t.ends_with("/errors"))
        },
    )
    .await;

    let states = w.states();
    for (id, _, code) in &bad {
        assert_eq!(
            states[*id].len(),
            1,
            "{id}: one event only: {:#?}",
            states[*id]
        );
        assert_eq!(states[*id][0]["error"]["code"], *code, "{id}");
        assert!(
            states[*id][0]["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(states["overflow"].len(), 1);
    assert_eq!(states["overflow"][0]["error"]["code"], "queue_full");
    let errors: Vec<&Value> = w
        .seen
        .iter()
        .filter(|(t, _)| t.ends_with("/errors"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["error"]["code"], "malformed_json");
    assert!(
        errors[0]["received"]
            .as_str()
            .unwrap()
            .contains("unterminated")
    );

    // Nothing else changed: the accepted tasks complete once a device is there, and the
    // rejected ids stay rejected.
    let _device = start_device(bridge.devices, "dev-1", &["echo"]);
    w.wait_for(
        Duration::from_secs(30),
        "the accepted tasks completed",
        |seen| (0..3).all(|i| last_state(seen, &format!("ok-{i}")).as_deref() == Some("completed")),
    )
    .await;
    let states = w.states();
    for id in bad.iter().map(|b| b.0).chain(["overflow"]) {
        assert_eq!(
            states[id].len(),
            1,
            "{id} changed after its rejection: {:#?}",
            states[id]
        );
    }
}
