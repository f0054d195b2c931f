//! Mars Pathfinder across devices, with real processes. A P4 task on dev-a holds the bridge
//! resource `bus-x`; a flood of P2 work arrives on dev-a (which runs the most urgent ready
//! task at every step); then a P0 on dev-b needs `bus-x`. With inheritance the bridge tells
//! dev-a to run the holder at P0, so it finishes before any of the P2 flood and the P0 gets
//! the resource; with inheritance switched off the holder waits behind the whole flood, and so
//! does the P0. Also: a bad resource name is rejected, naming it.

use std::time::Duration;

use broker_config::{Ceiling, Config, ResourceConfig};
use edge_tests::{
    Watcher, embedded_config, executions, last_state, start_bridge_with_config,
    start_bridge_with_log, start_device, start_device_with, write_config,
};
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

/// Runs the scenario with `bus-x` declared as `resource`; returns (holder completed, first P2
/// completed, last P2 completed, P0 dispatched) as positions in the event stream.
async fn pathfinder(name: &str, resource: ResourceConfig) -> (usize, usize, usize, usize) {
    let root = format!("edge/{name}");
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = embedded_config(name);
    config.urgent.reserve = 0;
    config.urgent.max_preemptions = 0;
    config.resources = vec![resource];
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
    let bus = |ceiling, inheritance| ResourceConfig {
        name: "bus-x".into(),
        ceiling,
        inheritance,
    };
    let (holder, first_p2, _, p0) = pathfinder("inherit", bus(None, true)).await;
    println!(
        "inheritance on: holder done at event {holder}, first P2 done at {first_p2}, P0 dispatched at {p0}"
    );
    assert!(
        holder < first_p2 && p0 < first_p2,
        "with inheritance the holder (and so the P0) goes before the P2 flood"
    );
    let (holder, _, last_p2, p0) = pathfinder("no-inherit", bus(None, false)).await;
    println!(
        "inheritance off: holder done at event {holder}, last P2 done at {last_p2}, P0 dispatched at {p0}"
    );
    assert!(
        holder > last_p2 && p0 > last_p2,
        "without inheritance the holder, and the P0, wait behind the whole flood"
    );
    // A dynamic ceiling raises the holder for the P0 queued for the resource, inheritance off.
    let dynamic = bus(Some(Ceiling::Dynamic), false);
    let (holder, first_p2, _, p0) = pathfinder("dynamic", dynamic).await;
    println!(
        "dynamic ceiling: holder done at event {holder}, first P2 done at {first_p2}, P0 dispatched at {p0}"
    );
    assert!(
        holder < first_p2 && p0 < first_p2,
        "with a dynamic ceiling the holder goes before the P2 flood"
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

/// The bridge SIGKILLed while a P4 holds `bus-x` on dev-a, restarted: the holder still holds
/// it (a P0 that needs it, submitted after the restart, is dispatched only once the holder has
/// completed), and the holder ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_stays_held_across_a_bridge_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("resources-crash");
    config.urgent.reserve = 0;
    config.resources = vec![ResourceConfig {
        name: "bus-x".into(),
        ceiling: None,
        inheritance: true,
    }];
    let root = "edge/resources-crash";
    let file = write_config(dir.path(), &config);
    let data = dir.path().join("data");
    let (mut bridge, _log) = start_bridge_with_log(&data, &file);
    let log = dir.path().join("dev-a.log");
    let _a = start_device_with(
        bridge.devices,
        "dev-a",
        &["count"],
        &["--exec-log", log.to_str().unwrap()],
    );
    let _b = start_device(bridge.devices, "dev-b", &["echo"]);
    let mut w = Watcher::connect(bridge.mqtt, root).await;
    let holder = json!({"id": "holder", "capability": "count", "priority": 4,
        "resources": ["bus-x"], "payload": {"steps": 3 * STEPS}});
    w.submit(root, &holder.to_string()).await;
    w.wait_for(Duration::from_secs(20), "the holder running", |seen| {
        last_state(seen, "holder").as_deref() == Some("running")
    })
    .await;
    bridge.proc.child.kill().expect("kill");
    bridge.proc.child.wait().expect("reap");
    let before = w.seen.len();
    let (_bridge, _log) = start_bridge_with_log(&data, &file);
    w.wait_online_again(before).await;
    let urgent = json!({"id": "p0", "capability": "echo", "priority": 0,
        "resources": ["bus-x"], "payload": "now"});
    w.submit(root, &urgent.to_string()).await;
    w.wait_for(Duration::from_secs(60), "both completed", |seen| {
        ["holder", "p0"]
            .iter()
            .all(|id| last_state(seen, id).as_deref() == Some("completed"))
    })
    .await;
    let ts = |id: &str, state: &str| {
        w.seen[when(&w.seen, id, state)].1["ts_ms"]
            .as_u64()
            .unwrap()
    };
    assert!(
        ts("p0", "dispatched") >= ts("holder", "completed"),
        "the P0 took bus-x while the holder still held it"
    );
    assert_eq!(executions(&log).len(), 1, "the holder ran once");
}

/// With besteffort held to half the slots, 8 long P5 tasks on one 8-slot device take 4, and
/// guaranteed tasks arriving after them start at once; the stats never show more than 4
/// besteffort tasks on the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_besteffort_quota_leaves_slots_for_guaranteed_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("quota");
    config.urgent.reserve = 0;
    config.classes.besteffort_max_percent = 50;
    config.stats_interval = Duration::from_millis(200);
    let root = "edge/quota";
    let bridge = start_bridge_with_config(dir.path(), &config);
    let _a = start_device(bridge.devices, "dev-a", &["sleep"]);
    let mut w = Watcher::connect(bridge.mqtt, root).await;
    w.wait_device_online("dev-a").await;
    let low: Vec<String> = (0..8).map(|i| format!("be-{i}")).collect();
    for id in &low {
        let task =
            json!({"id": id, "capability": "sleep", "priority": 5, "payload": {"ms": 3_000}});
        w.submit(root, &task.to_string()).await;
    }
    w.wait_for(
        Duration::from_secs(20),
        "4 besteffort tasks on the device",
        |seen| {
            low.iter()
                .filter(|id| last_state(seen, id).is_some_and(|s| s != "queued"))
                .count()
                == 4
        },
    )
    .await;
    let guaranteed: Vec<String> = (0..3).map(|i| format!("g-{i}")).collect();
    for id in &guaranteed {
        let task = json!({"id": id, "capability": "sleep", "priority": 2, "payload": {"ms": 20}});
        w.submit(root, &task.to_string()).await;
    }
    w.wait_for(Duration::from_secs(60), "everything completed", |seen| {
        low.iter()
            .chain(&guaranteed)
            .all(|id| last_state(seen, id).as_deref() == Some("completed"))
    })
    .await;
    let at = |id: &str, state: &str| {
        w.seen[when(&w.seen, id, state)].1["ts_ms"]
            .as_u64()
            .unwrap()
    };
    let first_low_done = low.iter().map(|id| at(id, "completed")).min().unwrap();
    for id in &guaranteed {
        assert!(
            at(id, "dispatched") < first_low_done,
            "{id} waited for a besteffort task to end"
        );
    }
    let most = w
        .seen
        .iter()
        .filter(|(t, _)| t.ends_with("/bridge/stats"))
        .filter_map(|(_, v)| v["classes"]["besteffort"]["in_flight"].as_u64())
        .max()
        .expect("stats documents");
    assert!(most <= 4, "besteffort held {most} of 8 slots");
}
