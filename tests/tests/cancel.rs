//! Cancels that race: one right behind its submission, and one for a task whose device is away.
//! On 903e31e both fail: a cancel handled in the same turn as its submission was applied first
//! and lost (the task ran and completed), and a task on a device that was away was reported
//! `cancelled` at once while the device, never told, ran it on.

use std::time::Duration;

use broker_config::Config;
use edge_tests::{
    Proxy, Watcher, embedded_config, last_state, start_bridge_with_config, start_device_with,
};
use serde_json::json;

fn config(name: &str) -> Config {
    let mut config = embedded_config(name);
    config.urgent.reserve = 0;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_right_behind_its_submission_is_never_lost() {
    const ROOT: &str = "edge/cancel-race";
    const PAIRS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge_with_config(dir.path(), &config("cancel-race"));
    let _device = start_device_with(bridge.devices, "dev-1", &["sleep"], &[]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    w.wait_device_online("dev-1").await;
    let ids: Vec<String> = (0..PAIRS).map(|i| format!("r{i}")).collect();
    for id in &ids {
        let task = json!({"id": id, "capability": "sleep", "payload": {"ms": 3_000}});
        w.submit(ROOT, &task.to_string()).await;
        w.cancel(ROOT, id).await;
    }
    w.wait_for(Duration::from_secs(60), "every task ended", |seen| {
        ids.iter().all(|id| {
            last_state(seen, id).is_some_and(|s| {
                ["completed", "cancelled", "failed", "rejected"].contains(&s.as_str())
            })
        })
    })
    .await;
    let states = w.states();
    let not_cancelled: Vec<(&String, String)> = ids
        .iter()
        .filter_map(|id| {
            let s = last_state(&w.seen, id).unwrap();
            (s != "cancelled").then(|| (id, format!("{:?}", states[id])))
        })
        .collect();
    assert!(
        not_cancelled.is_empty(),
        "{} of {PAIRS} cancels were lost; the first: {:#?}",
        not_cancelled.len(),
        &not_cancelled[..not_cancelled.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_device_that_was_away_and_it_answers_for_the_task() {
    const ROOT: &str = "edge/cancel-away";
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge_with_config(dir.path(), &config("cancel-away"));
    let proxy = Proxy::start(bridge.devices).await;
    let _device = start_device_with(proxy.addr, "dev-a", &["sleep"], &[]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let task = json!({"id": "long", "capability": "sleep", "payload": {"ms": 6_000}});
    w.submit(ROOT, &task.to_string()).await;
    w.wait_for(Duration::from_secs(20), "the task running", |seen| {
        last_state(seen, "long").as_deref() == Some("running")
    })
    .await;
    // The device goes away and stays away while the cancel arrives.
    proxy.hold();
    proxy.cut();
    w.wait_for(Duration::from_secs(20), "dev-a offline", |seen| {
        seen.iter()
            .rev()
            .find(|(t, _)| t.ends_with("/devices/dev-a"))
            .is_some_and(|(_, v)| v["online"] == false)
    })
    .await;
    w.cancel(ROOT, "long").await;
    // A submission behind the cancel: once it is queued, the bridge has handled the cancel
    // (and, before, had already reported a `cancelled` it had no answer for).
    let marker = json!({"id": "marker", "capability": "nobody"});
    w.submit(ROOT, &marker.to_string()).await;
    w.wait_for(Duration::from_secs(20), "the marker queued", |seen| {
        last_state(seen, "marker").is_some()
    })
    .await;
    let away = w.seen.len();
    proxy.release();
    w.wait_for(Duration::from_secs(30), "the task ended", |seen| {
        last_state(seen, "long").is_some_and(|s| s == "cancelled" || s == "completed")
    })
    .await;
    let ended = w
        .seen
        .iter()
        .position(|(t, v)| t.ends_with("/tasks/long/status") && v["state"] == "cancelled")
        .expect("a cancelled event");
    let online_again = w.seen[away..]
        .iter()
        .position(|(t, v)| t.ends_with("/devices/dev-a") && v["online"] == true)
        .map(|i| i + away)
        .expect("dev-a back online");
    assert!(
        ended > online_again,
        "`cancelled` was reported while the device was away, before it was told: {:#?}",
        w.states()["long"]
    );
    assert_eq!(last_state(&w.seen, "long").as_deref(), Some("cancelled"));
}
