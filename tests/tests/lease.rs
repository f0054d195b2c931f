//! The execution lease: a device that takes tasks and never finishes them (a hung firmware
//! that still answers its link) loses each one when its lease ends, and the task completes on
//! another device. On 903e31e the tasks stayed `dispatched` on the hung device for ever.

use std::time::Duration;

use edge_tests::{
    Watcher, embedded_config, executions, last_state, start_bridge_with_config, start_device_with,
};
use serde_json::json;

const ROOT: &str = "edge/lease";
const TASKS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_a_hung_device_never_reports_complete_elsewhere_when_their_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("lease");
    config.urgent.reserve = 0;
    // The capability's lease; half the tasks ask for their own, shorter one.
    config.queue.capabilities.insert(
        "echo".into(),
        broker_config::CapabilityConfig {
            execution_timeout: Duration::from_secs(3),
        },
    );
    let bridge = start_bridge_with_config(dir.path(), &config);
    let hung_log = dir.path().join("hung.log");
    let _hung = start_device_with(
        bridge.devices,
        "dev-hung",
        &["echo"],
        &["--hang", "--exec-log", hung_log.to_str().unwrap()],
    );
    let _ok = start_device_with(bridge.devices, "dev-ok", &["echo"], &[]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    w.wait_device_online("dev-hung").await;
    w.wait_device_online("dev-ok").await;
    // Spread over both (least loaded first): the hung device's share waits for its lease.
    let ids: Vec<String> = (0..TASKS).map(|i| format!("t{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut task = json!({"id": id, "capability": "echo", "payload": {"i": i}});
        if i % 2 == 0 {
            task["timeout_ms"] = json!(1_500);
        }
        w.submit(ROOT, &task.to_string()).await;
    }
    w.wait_for(Duration::from_secs(60), "every task completed", |seen| {
        ids.iter()
            .all(|id| last_state(seen, id).as_deref() == Some("completed"))
    })
    .await;
    let states = w.states();
    let mut moved = 0;
    for (i, id) in ids.iter().enumerate() {
        let events = &states[id];
        let done = events.iter().rfind(|e| e["state"] == "completed").unwrap();
        assert_eq!(done["device"], "dev-ok", "{id}: {events:#?}");
        assert_eq!(done["result"], json!({"i": i}));
        if events
            .iter()
            .any(|e| e["state"] == "dispatched" && e["device"] == "dev-hung")
        {
            moved += 1;
            assert_eq!(done["attempt"], 2, "{id}: {events:#?}");
        }
    }
    let hung = executions(&hung_log).len();
    println!(
        "{moved} tasks taken back from the hung device ({hung} executions there) and completed on dev-ok"
    );
    assert!(
        moved > 0,
        "the hung device took no task: nothing was tested"
    );
    // It starts one task at a time (one runs for ever, the others wait for its steps), and
    // never one twice.
    assert!(
        (1..=moved).contains(&hung),
        "{hung} executions for {moved} tasks"
    );
}
