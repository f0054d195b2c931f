//! The bridge process killed with SIGKILL during a burst of 1,000 submissions, restarted on
//! the same data directory (its embedded broker dies with it and restarts with it):
//! - every task whose `queued` event was seen reaches exactly one terminal state;
//! - no task executes twice on the device;
//! - a client resubmitting every id after the crash creates no second task.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use edge_tests::{Watcher, free_port, start_bridge, start_device_with};
use serde_json::{Value, json};

const ROOT: &str = "edge/crash";
const TASKS: usize = 1_000;

fn id(i: usize) -> String {
    format!("burst-{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exec_log = dir.path().join("executions.log");
    // The restarted bridge must come back on the same ports: chosen once, up front.
    let (mqtt_port, device_port) = (free_port(), free_port());
    let (mqtt, devices) = (
        format!("127.0.0.1:{mqtt_port}"),
        format!("127.0.0.1:{device_port}"),
    );
    let args = [
        "--bridge-id",
        "crash",
        "--mqtt-listen",
        mqtt.as_str(),
        "--device-listen",
        devices.as_str(),
    ];
    let start = || start_bridge(&data, &args);

    let mut bridge = start();
    let device_addr = bridge.devices;
    let _device = start_device_with(
        device_addr,
        "dev-1",
        &["echo"],
        &["--exec-log", exec_log.to_str().unwrap()],
    );
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;

    // The burst, from its own task so the kill lands in the middle of it.
    let client = w.client.clone();
    let burst = tokio::spawn(async move {
        for i in 0..TASKS {
            let task = json!({"id": id(i), "capability": "echo", "payload": {"i": i}}).to_string();
            if client
                .publish(
                    format!("{ROOT}/tasks/submit"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    task,
                )
                .await
                .is_err()
            {
                break;
            }
        }
    });
    w.wait_for(Duration::from_secs(60), "300 queued events", |seen| {
        seen.iter()
            .filter(|(t, v)| t.ends_with("/status") && v["state"] == "queued")
            .count()
            >= 300
    })
    .await;
    // SIGKILL: no chance to flush or say goodbye.
    bridge.proc.child.kill().expect("kill");
    bridge.proc.child.wait().expect("reap");
    let queued_before: HashSet<String> = w
        .seen
        .iter()
        .filter(|(t, v)| t.ends_with("/status") && v["state"] == "queued")
        .filter_map(|(_, v)| v["id"].as_str().map(str::to_owned))
        .collect();
    burst.abort();

    bridge = start();
    assert_eq!(bridge.mqtt.port(), mqtt_port);
    // Resubmit every id (the client cannot know which ones the bridge had taken), once the
    // watcher is back and subscribed: the restarted bridge's retained "online" arrives through
    // the new subscription. Only events after the kill count; the first "online" is stale.
    let before_restart = w.seen.len();
    w.wait_online_again(before_restart).await;
    for i in 0..TASKS {
        w.submit(
            ROOT,
            &json!({"id": id(i), "capability": "echo", "payload": {"i": i}}).to_string(),
        )
        .await;
    }
    let completed = |seen: &[(String, Value)]| -> HashSet<String> {
        seen.iter()
            .filter(|(t, v)| t.ends_with("/status") && v["state"] == "completed")
            .filter_map(|(_, v)| v["id"].as_str().map(str::to_owned))
            .collect()
    };
    let all_done = tokio::time::timeout(
        Duration::from_secs(120),
        w.wait_for(Duration::from_secs(600), "every task completed", |seen| {
            completed(seen).len() == TASKS
        }),
    )
    .await;
    if all_done.is_err() {
        let done = completed(&w.seen);
        let states = w.states();
        let missing: Vec<(String, Vec<Value>)> = (0..TASKS)
            .map(id)
            .filter(|i| !done.contains(i))
            .take(10)
            .map(|i| {
                let s = states.get(&i).cloned().unwrap_or_default();
                (i, s)
            })
            .collect();
        panic!(
            "{} of {TASKS} tasks never completed; the first: {missing:#?}",
            TASKS - done.len()
        );
    }

    // Exactly one terminal state per task: every terminal event of an id is the same event
    // (republished for duplicates), with the right result.
    let mut finals: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (t, v) in &w.seen {
        if t.ends_with("/status")
            && ["completed", "failed", "expired", "cancelled", "rejected"]
                .contains(&v["state"].as_str().unwrap_or(""))
        {
            finals
                .entry(v["id"].as_str().unwrap().to_owned())
                .or_default()
                .push(v.clone());
        }
    }
    for i in 0..TASKS {
        let events = &finals[&id(i)];
        assert!(
            events.iter().all(|e| e == &events[0]),
            "{} has different terminal events: {events:#?}",
            id(i)
        );
        assert_eq!(events[0]["state"], "completed");
        assert_eq!(events[0]["result"], json!({"i": i}));
    }
    assert!(queued_before.iter().all(|i| finals.contains_key(i)));

    // No task executed twice: one device process (one boot) throughout, so every handle
    // appears once in its execution log, and there is one execution per task.
    let log = std::fs::read_to_string(&exec_log).unwrap();
    let handles: Vec<&str> = log.lines().collect();
    let distinct: HashSet<&&str> = handles.iter().collect();
    assert_eq!(distinct.len(), handles.len(), "a handle executed twice");
    assert_eq!(handles.len(), TASKS, "one execution per task");
    println!(
        "crash test: {} tasks queued before the SIGKILL, {} after; {} executions, none twice",
        queued_before.len(),
        TASKS - queued_before.len(),
        handles.len()
    );
}
