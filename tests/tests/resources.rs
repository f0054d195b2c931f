//! Mars Pathfinder across devices, with real processes. A P4 task on dev-a holds the bridge
//! resource `bus-x`; a flood of P2 work arrives on dev-a (which runs the most urgent ready
//! task at every step); then a P0 on dev-b needs `bus-x`. With inheritance the bridge tells
//! dev-a to run the holder at P0, so it finishes before any of the P2 flood and the P0 gets
//! the resource; with inheritance switched off the holder waits behind the whole flood, and so
//! does the P0. Also: a bad resource name is rejected, naming it.

use std::time::Duration;

use broker_config::{Config, ResourceConfig};
use edge_tests::{Watcher, embedded_config, last_state, start_bridge_with_config, start_device};
use serde_json::{Value, json};

const FLOOD: usize = 5;
const STEPS: u64 = 600;

/// The index in `seen` of `id`'s first event in `state`.
fn when(seen: &[(String, Value)], id: &str, state: &str) -> usize {
    let topic = format!("/tasks/{id}/status");
    seen.iter()
        .position(|(t, v)| t.ends_with(&topic) && v["state"] == state)
        .unwrap_or_else(|| panic!("{id} never {state}"))
}

/// Runs the scenario; returns (holder completed, first P2 completed, last P2 completed, P0
/// dispatched) as positions in the event stream.
async fn pathfinder(inheritance: bool) -> (usize, usize, usize, usize) {
    let name = if inheritance { "inherit" } else { "no-inherit" };
    let root = format!("edge/{name}");
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = embedded_config(name);
    config.urgent.reserve = 0;
    config.urgent.max_preemptions = 0;
    config.resources = vec![ResourceConfig {
        name: "bus-x".into(),
        ceiling: None,
        inheritance,
    }];
    let bridge = start_bridge_with_config(dir.path(), &config);
    let _a = start_device(bridge.devices, "dev-a", &["count"]);
    let _b = start_device(bridge.devices, "dev-b", &["echo"]);
    let mut w = Watcher::connect(bridge.mqtt, &root).await;
    w.wait_device_online("dev-a").await;
    w.wait_device_online("dev-b").await;

    let holder = json!({"id": "holder", "capability": "count", "priority": 4,
        "resources": ["bus-x"], "payload": {"steps": STEPS}});
    w.submit(&root, &holder.to_string()).await;
    w.wait_for(Duration::from_secs(20), "the holder running", |seen| {
        last_state(seen, "holder").as_deref() == Some("running")
    })
    .await;
    let flood: Vec<String> = (0..FLOOD).map(|i| format!("p2-{i}")).collect();
    for id in &flood {
        let task = json!({"id": id, "capability": "count", "priority": 2,
            "payload": {"steps": STEPS}});
        w.submit(&root, &task.to_string()).await;
    }
    w.wait_for(Duration::from_secs(20), "the flood on dev-a", |seen| {
        flood
            .iter()
            .all(|id| last_state(seen, id).is_some_and(|s| s != "queued"))
    })
    .await;
    let urgent = json!({"id": "p0", "capability": "echo", "priority": 0,
        "resources": ["bus-x"], "payload": "now"});
    w.submit(&root, &urgent.to_string()).await;
    let all: Vec<&str> = ["holder", "p0"]
        .into_iter()
        .chain(flood.iter().map(String::as_str))
        .collect();
    w.wait_for(Duration::from_secs(60), "everything completed", |seen| {
        all.iter()
            .all(|id| last_state(seen, id).as_deref() == Some("completed"))
    })
    .await;
    let done: Vec<usize> = flood
        .iter()
        .map(|id| when(&w.seen, id, "completed"))
        .collect();
    (
        when(&w.seen, "holder", "completed"),
        *done.iter().min().unwrap(),
        *done.iter().max().unwrap(),
        when(&w.seen, "p0", "dispatched"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_inheritance_the_holder_finishes_first_and_without_it_the_p0_starves() {
    let (holder, first_p2, _, p0) = pathfinder(true).await;
    println!(
        "inheritance on: holder done at event {holder}, first P2 done at {first_p2}, P0 dispatched at {p0}"
    );
    assert!(
        holder < first_p2 && p0 < first_p2,
        "with inheritance the holder (and so the P0) goes before the P2 flood"
    );
    let (holder, _, last_p2, p0) = pathfinder(false).await;
    println!(
        "inheritance off: holder done at event {holder}, last P2 done at {last_p2}, P0 dispatched at {p0}"
    );
    assert!(
        holder > last_p2 && p0 > last_p2,
        "without inheritance the holder, and the P0, wait behind the whole flood"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_naming_an_undeclared_resource_is_rejected_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("resources-bad");
    config.resources = vec![ResourceConfig {
        name: "bus-x".into(),
        ceiling: None,
        inheritance: true,
    }];
    let root = "edge/resources-bad";
    let bridge = start_bridge_with_config(dir.path(), &config);
    let mut w = Watcher::connect(bridge.mqtt, root).await;
    for (id, resources) in [
        ("undeclared", json!(["bus-y"])),
        ("malformed", json!(["a/b"])),
    ] {
        let task = json!({"id": id, "capability": "echo", "resources": resources});
        w.submit(root, &task.to_string()).await;
    }
    w.wait_for(Duration::from_secs(20), "both rejected", |seen| {
        ["undeclared", "malformed"]
            .iter()
            .all(|id| last_state(seen, id).as_deref() == Some("rejected"))
    })
    .await;
    let states = w.states();
    let error = |id: &str| states[id].last().unwrap()["error"].clone();
    assert_eq!(error("undeclared")["code"], "invalid_resources");
    assert!(
        error("undeclared")["message"]
            .as_str()
            .unwrap()
            .contains("\"bus-y\" is not declared (declared: bus-x)")
    );
    assert_eq!(error("malformed")["code"], "invalid_resources");
}
