//! A P0 task submitted behind 1,000 queued P4 tasks for the same device is dispatched next:
//! the first `dispatched` event after its `queued` event is its own, even though the device is
//! busy and a thousand older tasks wait.

use std::time::Duration;

use edge_tests::{Watcher, last_state, start_bridge, start_device};
use serde_json::json;

const ROOT: &str = "edge/prio";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p0_overtakes_a_thousand_queued_p4_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(dir.path(), &["--bridge-id", "prio"]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    for i in 0..1_000 {
        let task = json!({"id": format!("p4-{i}"), "capability": "sleep", "device": "dev-1", "priority": 4, "payload": {"ms": 20}});
        w.submit(ROOT, &task.to_string()).await;
    }
    w.wait_for(Duration::from_secs(60), "1,000 P4 tasks queued", |seen| {
        seen.iter()
            .filter(|(t, v)| t.ends_with("/status") && v["state"] == "queued")
            .count()
            == 1_000
    })
    .await;
    let _device = start_device(bridge.devices, "dev-1", &["sleep", "echo"]);
    w.wait_for(
        Duration::from_secs(60),
        "the device busy with P4 work",
        |seen| {
            seen.iter()
                .filter(|(t, v)| t.ends_with("/status") && v["state"] == "completed")
                .count()
                >= 20
        },
    )
    .await;
    w.submit(
        ROOT,
        r#"{"id":"urgent","capability":"echo","device":"dev-1","priority":"P0","payload":"now"}"#,
    )
    .await;
    w.wait_for(Duration::from_secs(30), "the P0 task completed", |seen| {
        last_state(seen, "urgent").as_deref() == Some("completed")
    })
    .await;

    let statuses: Vec<(String, String)> = w
        .seen
        .iter()
        .filter(|(t, _)| t.ends_with("/status"))
        .map(|(_, v)| {
            (
                v["id"].as_str().unwrap_or("").to_owned(),
                v["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let queued_at = statuses
        .iter()
        .position(|(id, s)| id == "urgent" && s == "queued")
        .expect("urgent queued");
    let first_dispatch_after = statuses[queued_at..]
        .iter()
        .find(|(_, s)| s == "dispatched")
        .expect("a dispatch after");
    assert_eq!(
        first_dispatch_after.0, "urgent",
        "the next dispatch after the P0 task was queued went to {first_dispatch_after:?}"
    );
    let waiting_p4 = statuses[..queued_at]
        .iter()
        .filter(|(_, s)| s == "dispatched")
        .count();
    println!(
        "P0 dispatched next, ahead of {} P4 tasks still queued",
        1_000 - waiting_p4
    );
    assert!(
        1_000 - waiting_p4 > 500,
        "most P4 tasks were still waiting when P0 overtook them"
    );
}
