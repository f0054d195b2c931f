//! Lock names end to end: devices advertise their locks (`edge-device-sim --lock`), a task's
//! `locks` send it only to a device that has every one of them, and the device takes them (a
//! P0 task waits for the P4 task holding its lock, which it would otherwise preempt). A task
//! naming a device without the lock, or naming invalid locks, is rejected with
//! `invalid_locks`; a task naming a lock no device has waits until one comes.

use std::time::Duration;

use edge_tests::{Watcher, last_state, start_bridge, start_device_with};
use serde_json::{Value, json};

const ROOT: &str = "edge/locks";
/// Advertises `i2c0` (lock 0) and `bus` (lock 1).
const WITH_BUS: &str = "with-bus";
/// Advertises no lock.
const PLAIN: &str = "plain";
const WAIT: Duration = Duration::from_secs(30);
/// How long the P4 task holding the bus sleeps: long enough for a P0 task to arrive meanwhile.
const HOLD_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_go_only_to_devices_with_their_locks_and_hold_them() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(dir.path(), &["--bridge-id", "locks"]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let caps = ["echo", "sleep"];
    let _with_bus = start_device_with(
        bridge.devices,
        WITH_BUS,
        &caps,
        &["--lock", "i2c0", "--lock", "bus"],
    );
    let _plain = start_device_with(bridge.devices, PLAIN, &caps, &[]);
    w.wait_for(WAIT, "both devices online", |seen| {
        [WITH_BUS, PLAIN].iter().all(|d| online(seen, d))
    })
    .await;
    assert_eq!(device_doc(&w, WITH_BUS)["locks"], json!(["i2c0", "bus"]));
    assert_eq!(device_doc(&w, PLAIN)["locks"], json!([]));

    // Without a device named, tasks on the bus go to the one device that has it, although
    // the other is just as idle.
    let anywhere: Vec<String> = (0..4).map(|i| format!("any-{i}")).collect();
    for (i, id) in anywhere.iter().enumerate() {
        let task = json!({"id": id, "capability": "echo", "payload": i, "locks": ["bus"]});
        w.submit(ROOT, &task.to_string()).await;
    }
    // Naming the device: with the locks it runs, without them it is rejected.
    let named = json!({"id": "named", "capability": "echo", "device": WITH_BUS,
        "payload": "named", "locks": ["bus", "i2c0"]});
    w.submit(ROOT, &named.to_string()).await;
    let lacking = json!({"id": "lacking", "capability": "echo", "device": PLAIN,
        "locks": ["bus"]});
    w.submit(ROOT, &lacking.to_string()).await;
    // A lock no device has: the task waits.
    let spi = json!({"id": "spi", "capability": "echo", "payload": "spi", "locks": ["spi"]});
    w.submit(ROOT, &spi.to_string()).await;

    let mut done: Vec<String> = anywhere.clone();
    done.push("named".into());
    w.wait_for(WAIT, "the tasks on the bus completed", |seen| {
        done.iter()
            .all(|id| last_state(seen, id).as_deref() == Some("completed"))
            && last_state(seen, "lacking").as_deref() == Some("rejected")
    })
    .await;
    for id in &done {
        let events = &w.states()[id];
        assert!(
            events
                .iter()
                .all(|e| e["device"].is_null() || e["device"] == WITH_BUS),
            "{id} went to a device without the bus: {events:#?}"
        );
    }
    assert_eq!(final_event(&w, "named")["result"], "named");
    let rejected = final_event(&w, "lacking");
    assert_eq!(rejected["error"]["code"], "invalid_locks", "{rejected}");
    let message = rejected["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(PLAIN) && message.contains("\"bus\""),
        "the rejection names the device and the lock: {rejected}"
    );
    assert!(
        !w.states()["lacking"]
            .iter()
            .any(|e| e["state"] == "dispatched"),
        "the task was never sent to {PLAIN}"
    );

    the_device_holds_the_bus_for_its_holder(&mut w).await;

    // Still waiting for a device with an `spi` lock; one comes, and takes it.
    assert_eq!(last_state(&w.seen, "spi").as_deref(), Some("queued"));
    let _with_spi = start_device_with(bridge.devices, "with-spi", &caps, &["--lock", "spi"]);
    w.wait_for(WAIT, "the spi task completed", |seen| {
        last_state(seen, "spi").as_deref() == Some("completed")
    })
    .await;
    assert_eq!(final_event(&w, "spi")["device"], "with-spi");
}

/// A P4 task sleeps holding the bus; a P0 task naming the bus arrives meanwhile. Without the
/// lock the P0 task would preempt the sleeper at its next step and finish first; holding the
/// bus, the device makes it wait until the holder (running at P0 by inheritance) ends.
async fn the_device_holds_the_bus_for_its_holder(w: &mut Watcher) {
    let holder = json!({"id": "holder", "capability": "sleep", "priority": 4,
        "payload": {"ms": HOLD_MS}, "locks": ["bus"]});
    w.submit(ROOT, &holder.to_string()).await;
    // The device reports `running` from the step that takes the bus.
    w.wait_for(WAIT, "the holder running", |seen| {
        last_state(seen, "holder").as_deref() == Some("running")
    })
    .await;
    let waiter = json!({"id": "waiter", "capability": "sleep", "priority": 0,
        "payload": {"ms": 10}, "locks": ["bus"]});
    w.submit(ROOT, &waiter.to_string()).await;
    w.wait_for(WAIT, "the holder and the waiter completed", |seen| {
        ["holder", "waiter"]
            .iter()
            .all(|id| last_state(seen, id).as_deref() == Some("completed"))
    })
    .await;
    let position = |id: &str, state: &str| {
        w.seen
            .iter()
            .position(|(t, v)| t.ends_with("/status") && v["id"] == id && v["state"] == state)
            .unwrap_or_else(|| panic!("no {state} event for {id}"))
    };
    assert!(
        position("waiter", "dispatched") < position("holder", "completed"),
        "the waiter reached the device while the holder had the bus (else the host was too \
         slow to show anything)"
    );
    assert!(
        position("holder", "completed") < position("waiter", "completed"),
        "the P0 waiter finished before the P4 holder: it did not wait for the bus"
    );
    for id in ["holder", "waiter"] {
        assert_eq!(final_event(w, id)["device"], WITH_BUS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_lock_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(dir.path(), &["--bridge-id", "locks"]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let bad = [
        ("space", json!(["has space"])),
        ("long", json!(["seventeen-bytes-x"])),
        ("empty", json!([""])),
        ("number", json!([7])),
        ("twice", json!(["bus", "bus"])),
        ("five", json!(["a", "b", "c", "d", "e"])),
        ("string", json!("bus")),
    ];
    for (id, locks) in &bad {
        let task = json!({"id": id, "capability": "echo", "locks": locks});
        w.submit(ROOT, &task.to_string()).await;
    }
    w.wait_for(WAIT, "every bad submission rejected", |seen| {
        bad.iter()
            .all(|(id, _)| last_state(seen, id).as_deref() == Some("rejected"))
    })
    .await;
    for (id, locks) in &bad {
        let events = &w.states()[*id];
        assert_eq!(events.len(), 1, "{id}: only the rejection: {events:#?}");
        let error = &events[0]["error"];
        assert_eq!(error["code"], "invalid_locks", "{id} ({locks}): {error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("locks: ")),
            "{id}: {error}"
        );
    }
}

/// Whether `device`'s latest document says it is online.
fn online(seen: &[(String, Value)], device: &str) -> bool {
    let topic = format!("{ROOT}/devices/{device}");
    seen.iter()
        .rev()
        .find(|(t, _)| *t == topic)
        .is_some_and(|(_, v)| v["online"] == true)
}

/// The latest document of `device`.
fn device_doc(w: &Watcher, device: &str) -> Value {
    let topic = format!("{ROOT}/devices/{device}");
    w.seen
        .iter()
        .rev()
        .find(|(t, _)| *t == topic)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no document for {device}"))
}

/// The last status event of `id`.
fn final_event(w: &Watcher, id: &str) -> Value {
    w.states()
        .get(id)
        .and_then(|events| events.last().cloned())
        .unwrap_or_else(|| panic!("no status event for {id}"))
}
