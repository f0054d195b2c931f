//! Events in priority order: after a broker outage, the events of an urgent task leave the
//! bridge's outbox before the backlog of low-priority events that piled up meanwhile, and
//! every task's own events keep their order.

use std::time::Duration;

use edge_tests::{
    Watcher, external_config, free_port, start_bridge_with_log, start_device, start_mosquitto_on,
    terminate, write_config,
};
use serde_json::Value;

const ROOT: &str = "edge/order";
const LOW: usize = 400;

/// Where a state comes in a task's life (`queued` first, the terminal state last).
fn rank(state: &str) -> usize {
    ["queued", "dispatched", "running", "completed"]
        .iter()
        .position(|s| *s == state)
        .unwrap_or_else(|| panic!("unexpected state {state}"))
}

fn is_status(topic: &str) -> bool {
    topic.contains("/tasks/") && topic.ends_with("/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_tasks_events_leave_before_a_low_priority_backlog_after_a_broker_outage() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("mosquitto");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let port = free_port();
    // Persistence and a persistent watcher session: the broker keeps what it accepted for
    // the watcher across its restart, so the order the watcher sees is the bridge's.
    let mosquitto = start_mosquitto_on(&broker_dir, port, true);
    let config = external_config("order", port);
    let file = write_config(dir.path(), &config);
    let (bridge, mut log) = start_bridge_with_log(&dir.path().join("data"), &file);
    let mut w = Watcher::connect_with(bridge.mqtt, ROOT, true).await;

    // Low-priority work for one device, one urgent task for another; neither is online yet.
    for i in 0..LOW {
        let task = format!(
            r#"{{"id":"low-{i}","capability":"echo","device":"dev-low","priority":4,"payload":{i}}}"#
        );
        w.submit(ROOT, &task).await;
    }
    w.submit(
        ROOT,
        r#"{"id":"urgent","capability":"echo","device":"dev-hi","priority":0}"#,
    )
    .await;
    w.wait_for(Duration::from_secs(30), "every task queued", |seen| {
        seen.iter()
            .filter(|(t, v)| is_status(t) && v["state"] == "queued")
            .count()
            == LOW + 1
    })
    .await;

    // The broker goes away. The low-priority device comes first: the turn that opens its
    // session dispatches its first tasks, so their events are older than anything the urgent
    // task will have.
    terminate(mosquitto);
    let _low = start_device(bridge.devices, "dev-low", &["echo"]);
    log.wait_for(Duration::from_secs(20), "dev-low online", |l| {
        l.contains("device online") && l.contains("dev-low")
    })
    .await;
    let _hi = start_device(bridge.devices, "dev-hi", &["echo"]);
    log.wait_for(Duration::from_secs(20), "dev-hi online", |l| {
        l.contains("device online") && l.contains("dev-hi")
    })
    .await;
    let since = w.seen.len();

    let _mosquitto = start_mosquitto_on(&broker_dir, port, true);
    w.wait_for(Duration::from_secs(60), "every task completed", |seen| {
        let done = seen
            .iter()
            .filter(|(t, v)| is_status(t) && v["state"] == "completed")
            .count();
        done > LOW
    })
    .await;

    let after: Vec<&(String, Value)> = w.seen[since..]
        .iter()
        .filter(|(t, _)| is_status(t))
        .collect();
    // The backlog is what the low-priority tasks did during the outage. Their `queued` events
    // all reached the watcher before it; one seen again now is not backlog but mosquitto
    // redelivering a message whose PUBACK from the watcher it had not processed when it
    // stopped. (This test failed once on a loaded machine with a low-priority event first
    // after the outage; such a redelivery is what fits that run's log.)
    let first_low = after
        .iter()
        .position(|(_, v)| {
            v["id"].as_str().is_some_and(|id| id.starts_with("low-")) && v["state"] != "queued"
        })
        .expect("low-priority events after the outage");
    let urgent_dispatched = after
        .iter()
        .position(|(_, v)| v["id"] == "urgent" && v["state"] == "dispatched")
        .expect("the urgent task's dispatched event");
    assert!(
        urgent_dispatched < first_low,
        "the urgent task's dispatched event came {urgent_dispatched}th after the outage, behind \
         the low-priority backlog (first at {first_low})"
    );

    // Every task's events in the order of its life (a repeat after the reconnect may come
    // again, never an earlier state after a later one).
    for (id, events) in w.states() {
        let ranks: Vec<usize> = events
            .iter()
            .map(|e| rank(e["state"].as_str().unwrap_or("")))
            .collect();
        assert!(
            ranks.windows(2).all(|p| p[0] <= p[1]),
            "{id}: events out of order: {events:#?}"
        );
    }
    println!(
        "after the outage: the urgent task's dispatched event was #{urgent_dispatched}, the first of {LOW} low-priority tasks' events #{first_low}"
    );
}
