//! A task's life beyond the happy path, end to end: cancel in every state, failover to another
//! device when one is lost mid-task, retry of transient failures, final failures.

use std::time::Duration;

use edge_tests::{
    Watcher, embedded_config, last_state, start_bridge, start_bridge_with_config, start_device,
};
use serde_json::{Value, json};

const ROOT: &str = "edge/life";
const WAIT: Duration = Duration::from_secs(30);

fn state_is(id: &'static str, state: &'static str) -> impl Fn(&[(String, Value)]) -> bool {
    move |seen| last_state(seen, id).as_deref() == Some(state)
}

/// The events of `id` whose state is `state`.
fn events_in<'a>(w: &'a Watcher, id: &str, state: &str) -> Vec<&'a Value> {
    w.seen
        .iter()
        .filter(|(t, v)| t.ends_with("/status") && v["id"] == id && v["state"] == state)
        .map(|(_, v)| v)
        .collect()
}

fn terminal_count(w: &Watcher, id: &str) -> usize {
    ["completed", "failed", "expired", "cancelled", "rejected"]
        .iter()
        .map(|s| events_in(w, id, s).len())
        .sum()
}

/// Cancel while queued, while dispatched (waiting on the device behind a higher-priority
/// task), while running, after the end, and for an unknown id. Each cancelled task ends
/// `cancelled` exactly once; the device really stops the running one (a lower-priority task
/// runs after it, which it could not while the 60 s sleep kept the device); a finished task
/// stays as it was (the late cancel is answered with its final state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_in_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(dir.path(), &["--bridge-id", "life"]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = start_device(bridge.devices, "dev-c", &["sleep", "echo"]);

    w.submit(ROOT, r#"{"id":"c-queued","capability":"nobody-has-it"}"#)
        .await;
    w.wait_for(WAIT, "c-queued queued", state_is("c-queued", "queued"))
        .await;
    w.cancel(ROOT, "c-queued").await;
    w.wait_for(
        WAIT,
        "c-queued cancelled",
        state_is("c-queued", "cancelled"),
    )
    .await;

    w.submit(
        ROOT,
        r#"{"id":"c-running","capability":"sleep","priority":2,"payload":{"ms":60000}}"#,
    )
    .await;
    w.wait_for(WAIT, "c-running running", state_is("c-running", "running"))
        .await;
    // Lower priority: dispatched to the device, which keeps running the P2 sleep.
    w.submit(
        ROOT,
        r#"{"id":"c-dispatched","capability":"sleep","priority":4,"payload":{"ms":60000}}"#,
    )
    .await;
    w.wait_for(
        WAIT,
        "c-dispatched dispatched",
        state_is("c-dispatched", "dispatched"),
    )
    .await;
    w.cancel(ROOT, "c-dispatched").await;
    w.wait_for(
        WAIT,
        "c-dispatched cancelled",
        state_is("c-dispatched", "cancelled"),
    )
    .await;
    w.cancel(ROOT, "c-running").await;
    w.wait_for(
        WAIT,
        "c-running cancelled",
        state_is("c-running", "cancelled"),
    )
    .await;

    // P5 runs only when nothing above it is ready: the device let go of the P2 sleep.
    w.submit(
        ROOT,
        r#"{"id":"after","capability":"echo","priority":5,"payload":"free"}"#,
    )
    .await;
    w.wait_for(WAIT, "after completed", state_is("after", "completed"))
        .await;

    // After the end nothing changes; an id nobody has submitted yet is recorded as cancelled
    // (the cancel may have overtaken its submission).
    w.cancel(ROOT, "after").await;
    w.cancel(ROOT, "c-queued").await;
    w.cancel(ROOT, "never-submitted").await;
    w.submit(ROOT, r#"{"id":"marker","capability":"echo","payload":1}"#)
        .await;
    w.wait_for(WAIT, "marker completed", state_is("marker", "completed"))
        .await;

    for id in ["c-dispatched", "c-running", "marker"] {
        assert_eq!(terminal_count(&w, id), 1, "{id}: {:#?}", w.states()[id]);
    }
    // A late cancel is answered with the final state again, never another one.
    for (id, end) in [("c-queued", "cancelled"), ("after", "completed")] {
        assert_eq!(
            terminal_count(&w, id),
            events_in(&w, id, end).len(),
            "{id}: {:#?}",
            w.states()[id]
        );
    }
    assert!(events_in(&w, "c-dispatched", "running").is_empty());
    assert_eq!(last_state(&w.seen, "after").as_deref(), Some("completed"));
    assert_eq!(
        last_state(&w.seen, "never-submitted").as_deref(),
        Some("cancelled")
    );
    assert_eq!(terminal_count(&w, "never-submitted"), 1);
}

/// A device lost mid-task that does not come back within the grace period (2 s here): the
/// task is dispatched again, as attempt 2, to the other capable device, and completes there
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_fails_over_to_another_device_when_its_device_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("life");
    config.queue.device_grace = Duration::from_secs(2);
    let bridge = start_bridge_with_config(dir.path(), &config);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let mut a = Some(start_device(bridge.devices, "fo-a", &["sleep"]));
    let mut b = Some(start_device(bridge.devices, "fo-b", &["sleep"]));
    w.wait_for(WAIT, "both devices online", |seen| {
        ["fo-a", "fo-b"].iter().all(|d| {
            seen.iter()
                .rev()
                .find(|(t, _)| t.ends_with(&format!("/devices/{d}")))
                .is_some_and(|(_, v)| v["online"] == true)
        })
    })
    .await;

    w.submit(
        ROOT,
        r#"{"id":"fo","capability":"sleep","payload":{"ms":1500}}"#,
    )
    .await;
    w.wait_for(WAIT, "fo running", state_is("fo", "running"))
        .await;
    let first = events_in(&w, "fo", "dispatched")[0]["device"]
        .as_str()
        .unwrap()
        .to_owned();
    // SIGKILL the device running it.
    match first.as_str() {
        "fo-a" => drop(a.take()),
        _ => drop(b.take()),
    }
    w.wait_for(WAIT, "fo completed", state_is("fo", "completed"))
        .await;

    let dispatched = events_in(&w, "fo", "dispatched");
    let last = dispatched.last().unwrap();
    assert_eq!(last["attempt"], 2, "{dispatched:#?}");
    assert_ne!(
        last["device"],
        first.as_str(),
        "failed over to the other device"
    );
    let done = &events_in(&w, "fo", "completed")[0];
    assert_eq!(done["device"], last["device"]);
    assert_eq!(done["result"], json!({"slept_ms": 1500}));
    assert_eq!(terminal_count(&w, "fo"), 1);
}

/// A transient failure (code 0x8000 and up) is retried as a new execution and completes;
/// a final failure ends the task at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_final_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(dir.path(), &["--bridge-id", "life"]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = start_device(bridge.devices, "dev-f", &["flaky", "fail"]);

    w.submit(
        ROOT,
        r#"{"id":"flaky","capability":"flaky","payload":"ok"}"#,
    )
    .await;
    w.submit(ROOT, r#"{"id":"broken","capability":"fail"}"#)
        .await;
    w.wait_for(WAIT, "both terminal", |seen| {
        last_state(seen, "flaky").as_deref() == Some("completed")
            && last_state(seen, "broken").as_deref() == Some("failed")
    })
    .await;

    let done = events_in(&w, "flaky", "completed")[0];
    assert_eq!(done["attempt"], 2, "{:#?}", w.states()["flaky"]);
    assert_eq!(done["result"], "ok");
    assert!(events_in(&w, "flaky", "failed").is_empty());
    let failed = events_in(&w, "broken", "failed")[0];
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["error"]["code"], "device_failed");
    assert_eq!(
        terminal_count(&w, "flaky") + terminal_count(&w, "broken"),
        2
    );
}

/// A deadline passes while the task waits (no device has its capability): it ends `expired`
/// at its deadline, by the engine's own timer (nothing else happens to wake it), and never
/// starts afterwards, even when a capable device comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_in_the_queue_expires_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(dir.path(), &["--bridge-id", "life"]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    w.submit(
        ROOT,
        r#"{"id":"late","capability":"echo","deadline_ms":300}"#,
    )
    .await;
    w.wait_for(WAIT, "late expired", state_is("late", "expired"))
        .await;
    let events = w.states()["late"].clone();
    let (queued, expired) = (&events[0], events.last().unwrap());
    let waited = expired["ts_ms"].as_u64().unwrap() - queued["ts_ms"].as_u64().unwrap();
    assert!(
        waited >= 300,
        "expired after {waited} ms, before its deadline"
    );
    assert_eq!(expired["error"]["code"], "deadline_expired");

    let _device = start_device(bridge.devices, "dev-e", &["echo"]);
    w.submit(
        ROOT,
        r#"{"id":"in-time","capability":"echo","deadline_ms":20000,"payload":2}"#,
    )
    .await;
    w.wait_for(WAIT, "in-time completed", state_is("in-time", "completed"))
        .await;
    assert!(events_in(&w, "late", "dispatched").is_empty());
    assert_eq!(terminal_count(&w, "late"), 1);
}
