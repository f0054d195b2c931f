//! What the dispatcher looks at follows the work it hands out, not the tasks that wait
//! (review M7): with 3,000 tasks queued that no device can take (they name a lock no device
//! has), 100 tasks run on a device, and the bridge's own count of tasks examined
//! (`dispatch_examined` in `{root}/bridge/stats`) stays near 100 (lanes passed over whole on their head count nothing) — not 3,000 per turn.

use std::time::Duration;

use edge_tests::{
    Watcher, embedded_config, last_state, publish_lines, start_bridge_with_config, start_device,
};

const ROOT: &str = "edge/cost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_that_fit_no_device_are_not_rescanned_at_every_turn() {
    let dir = tempfile::tempdir().unwrap();
    let config = broker_config::Config {
        stats_interval: Duration::from_millis(500),
        ..embedded_config("cost")
    };
    let bridge = start_bridge_with_config(dir.path(), &config);
    let mut stats = Watcher::subscribe(bridge.mqtt, &format!("{ROOT}/bridge/stats"), false).await;
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = start_device(bridge.devices, "dev-1", &["echo"]);
    w.wait_device_online("dev-1").await;

    let waiting: Vec<String> = (0..3_000)
        .map(|i| format!(r#"{{"id":"wait-{i}","capability":"echo","locks":["absent"]}}"#))
        .collect();
    publish_lines(
        bridge.mqtt,
        &format!("{ROOT}/tasks/submit"),
        &waiting,
        Duration::from_secs(60),
    );
    let live = |n: u64| {
        move |seen: &[(String, serde_json::Value)]| seen.last().is_some_and(|(_, v)| v["live"] == n)
    };
    stats
        .wait_for(Duration::from_secs(60), "3,000 tasks queued", live(3_000))
        .await;
    let before = stats.seen.last().unwrap().1["dispatch_examined"]
        .as_u64()
        .expect("dispatch_examined in the stats");

    for i in 0..100 {
        w.submit(ROOT, &format!(r#"{{"id":"run-{i}","capability":"echo"}}"#))
            .await;
    }
    w.wait_for(Duration::from_secs(60), "100 tasks completed", |seen| {
        (0..100).all(|i| last_state(seen, &format!("run-{i}")).as_deref() == Some("completed"))
    })
    .await;
    let from = stats.seen.len();
    stats
        .wait_for(Duration::from_secs(20), "stats after the runs", |seen| {
            seen[from..].iter().any(|(_, v)| v["live"] == 3_000)
        })
        .await;
    let after = stats.seen.last().unwrap().1["dispatch_examined"]
        .as_u64()
        .unwrap();
    let examined = after - before;
    println!("dispatch_examined: {examined} for 100 dispatches with 3,000 tasks waiting");
    assert!(
        (100..=150).contains(&examined),
        "{examined} tasks examined to dispatch 100 with 3,000 waiting"
    );
}
