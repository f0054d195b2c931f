//! Remote input cannot flood the bridge's log (review M13, MQTT side): 2,000 submissions
//! refused because the queue is full are all answered, and the log tells of them in a
//! handful of lines that carry the count so far.

use std::time::Duration;

use edge_tests::{Watcher, embedded_config, publish_lines, start_bridge_with_log, write_config};

const ROOT: &str = "edge/logbudget";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_refusals_cost_a_handful_of_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("logbudget");
    config.queue.limit = 10;
    config.queue.outbox_limit = 10_000;
    let path = write_config(dir.path(), &config);
    let (bridge, mut log) = start_bridge_with_log(&dir.path().join("data"), &path);
    let mut w = Watcher::subscribe(bridge.mqtt, &format!("{ROOT}/tasks/+/status"), false).await;
    let lines: Vec<String> = (0..2_010)
        .map(|i| format!(r#"{{"id":"r-{i}","capability":"nowhere"}}"#))
        .collect();
    publish_lines(
        bridge.mqtt,
        &format!("{ROOT}/tasks/submit"),
        &lines,
        Duration::from_secs(60),
    );
    w.wait_for(Duration::from_secs(60), "2,000 refusals", |seen| {
        seen.iter()
            .filter(|(_, v)| v["error"]["code"] == "queue_full")
            .count()
            >= 2_000
    })
    .await;
    // The last line logged says how many so far; wait for the one at 1,024.
    log.wait_for(
        Duration::from_secs(10),
        "the refusal count in the log",
        |l| l.contains("submission rejected") && l.contains("so_far=1024"),
    )
    .await;
    let logged = log
        .drain()
        .iter()
        .filter(|l| l.contains("submission rejected"))
        .count();
    println!("log lines for 2,000 queue_full refusals: {logged}");
    assert!(
        (5..=12).contains(&logged),
        "{logged} log lines for 2,000 refusals"
    );
}
