//! Store and forward across a broker outage: mosquitto is restarted while results flow, and
//! no status event is lost (the bridge's outbox keeps every event until the broker's PUBACK).

use std::collections::HashSet;
use std::time::Duration;

use edge_tests::{Watcher, free_port, start_bridge, start_device, start_mosquitto_on, terminate};
use serde_json::Value;

const ROOT: &str = "edge/restart";
const TASKS: usize = 2_000;

fn completed(seen: &[(String, Value)]) -> HashSet<String> {
    seen.iter()
        .filter(|(t, v)| t.ends_with("/status") && v["state"] == "completed")
        .filter_map(|(_, v)| v["id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_status_event_is_lost_when_mosquitto_restarts_while_results_flow() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("mosquitto");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let port = free_port();
    // Persistence on, and a persistent session for the watcher: what the broker had
    // accepted for the watcher survives its restart, so every loss the test sees is the
    // bridge's.
    let mosquitto = start_mosquitto_on(&broker_dir, port, true);
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"restart\"\n[broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\n"
        ),
    )
    .unwrap();
    let bridge = start_bridge(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut w = Watcher::connect_with(bridge.mqtt, ROOT, true).await;
    // Two devices so that events stream fast: the restart catches publishes in flight.
    let _a = start_device(bridge.devices, "dev-a", &["echo"]);
    let _b = start_device(bridge.devices, "dev-b", &["echo"]);

    for i in 0..TASKS {
        w.submit(
            ROOT,
            &format!(r#"{{"id":"r-{i}","capability":"echo","payload":{i}}}"#),
        )
        .await;
    }
    w.wait_for(Duration::from_secs(60), "results flowing", |seen| {
        completed(seen).len() >= 300
    })
    .await;
    let before = completed(&w.seen).len();
    assert!(
        before < TASKS,
        "all {TASKS} tasks finished before the restart: nothing was in flight"
    );

    terminate(mosquitto);
    let _mosquitto = start_mosquitto_on(&broker_dir, port, true);

    w.wait_for(Duration::from_secs(90), "every task completed", |seen| {
        completed(seen).len() == TASKS
    })
    .await;

    let states = w.states();
    for i in 0..TASKS {
        let id = format!("r-{i}");
        let events = &states[&id];
        let seen: HashSet<&str> = events.iter().filter_map(|e| e["state"].as_str()).collect();
        // (`running` is not required: a one-step echo may finish before the device reports
        // that it started.)
        for state in ["queued", "dispatched", "completed"] {
            assert!(seen.contains(state), "{id}: no {state} event: {events:#?}");
        }
        assert!(
            events
                .iter()
                .all(|e| ["queued", "dispatched", "running", "completed"]
                    .contains(&e["state"].as_str().unwrap_or(""))),
            "{id}: {events:#?}"
        );
    }
    println!(
        "{before} of {TASKS} tasks had completed when mosquitto restarted; all {TASKS} reported every state"
    );
}
