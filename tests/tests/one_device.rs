//! One device at a time: a task that was on a device waits for that device after a link loss
//! or a bridge restart, while another idle device could take it, and runs exactly once.
//! Real processes: the bridge, two `edge-device-sim`s, the first behind a TCP proxy that cuts
//! its connection and holds its reconnection (as a Wi-Fi blip or a NAT rebinding does).
//! On 903e31e both tests fail: the tasks of the first device also ran on the second.

use std::net::SocketAddr;
use std::time::Duration;

use broker_config::Config;
use edge_tests::{
    Bridge, Proc, Proxy, Watcher, embedded_config, executions, last_state, start_bridge_with_log,
    start_device_with, write_config,
};
use serde_json::json;

/// Long tasks on the first device (it has 8 slots, none kept for urgent work).
const TASKS: usize = 4;
const SLEEP_MS: u64 = 2_000;

struct Setup {
    dir: tempfile::TempDir,
    config: Config,
    root: String,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = embedded_config(name);
        config.urgent.reserve = 0;
        config.queue.device_grace = Duration::from_secs(30);
        let root = format!("edge/{name}");
        Self { dir, config, root }
    }

    /// The bridge, on the configured ports (the same after a restart).
    fn bridge(&self) -> Bridge {
        let file = write_config(self.dir.path(), &self.config);
        start_bridge_with_log(&self.dir.path().join("data"), &file).0
    }

    fn device(&self, to: SocketAddr, id: &str) -> Proc {
        let log = self.log(id);
        start_device_with(to, id, &["sleep"], &["--exec-log", log.to_str().unwrap()])
    }

    fn log(&self, id: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{id}.log"))
    }
}

/// Submits the long tasks and waits until all are on dev-a.
async fn fill_dev_a(w: &mut Watcher, root: &str) -> Vec<String> {
    let ids: Vec<String> = (0..TASKS).map(|i| format!("long-{i}")).collect();
    for id in &ids {
        let task = json!({"id": id, "capability": "sleep", "payload": {"ms": SLEEP_MS}});
        w.submit(root, &task.to_string()).await;
    }
    // The device runs one at a time (equal priorities, first come first served): every task
    // on it, the first running.
    w.wait_for(
        Duration::from_secs(30),
        "every task on dev-a, one running",
        |seen| {
            let states: Vec<Option<String>> = ids.iter().map(|id| last_state(seen, id)).collect();
            states
                .iter()
                .all(|s| matches!(s.as_deref(), Some("dispatched" | "running")))
                && states.iter().any(|s| s.as_deref() == Some("running"))
        },
    )
    .await;
    ids
}

/// Every task completed on dev-a, once in all: dev-b ran nothing.
async fn assert_ran_once_on_dev_a(w: &mut Watcher, s: &Setup, ids: &[String]) {
    w.wait_for(Duration::from_secs(60), "every task completed", |seen| {
        ids.iter()
            .all(|id| last_state(seen, id).as_deref() == Some("completed"))
    })
    .await;
    let states = w.states();
    for id in ids {
        let done = states[id]
            .iter()
            .rfind(|e| e["state"] == "completed")
            .unwrap();
        assert_eq!(done["device"], "dev-a", "{id}: {:#?}", states[id]);
    }
    let (a, b) = (executions(&s.log("dev-a")), executions(&s.log("dev-b")));
    println!(
        "executions: dev-a {}, dev-b {} ({TASKS} tasks)",
        a.len(),
        b.len()
    );
    assert!(b.is_empty(), "tasks of dev-a ran on dev-b too: {b:?}");
    assert_eq!(a.len(), TASKS, "each task once on dev-a: {a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_loss_does_not_send_running_tasks_to_another_device() {
    let s = Setup::new("one-device-link");
    let bridge = s.bridge();
    let proxy = Proxy::start(bridge.devices).await;
    let _a = s.device(proxy.addr, "dev-a");
    let mut w = Watcher::connect(bridge.mqtt, &s.root).await;
    let ids = fill_dev_a(&mut w, &s.root).await;
    // An idle device that could take them, then the blip: dev-a reconnects at once.
    let _b = s.device(bridge.devices, "dev-b");
    w.wait_device_online("dev-b").await;
    let before = w.seen.len();
    proxy.cut();
    w.wait_for(
        Duration::from_secs(30),
        "dev-a offline, then back",
        |seen| {
            let docs: Vec<bool> = seen[before..]
                .iter()
                .filter(|(t, _)| t.ends_with("/devices/dev-a"))
                .map(|(_, v)| v["online"] == true)
                .collect();
            docs.contains(&false) && docs.last() == Some(&true)
        },
    )
    .await;
    assert_ran_once_on_dev_a(&mut w, &s, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_bridge_crash_tasks_wait_for_their_device() {
    let s = Setup::new("one-device-crash");
    let mut bridge = s.bridge();
    let proxy = Proxy::start(bridge.devices).await;
    let _a = s.device(proxy.addr, "dev-a");
    let mut w = Watcher::connect(bridge.mqtt, &s.root).await;
    let ids = fill_dev_a(&mut w, &s.root).await;
    // The bridge dies; dev-b is there first after the restart, dev-a is kept away 3 s.
    proxy.hold();
    bridge.proc.child.kill().expect("kill");
    bridge.proc.child.wait().expect("reap");
    proxy.cut();
    let before = w.seen.len();
    let bridge = s.bridge();
    w.wait_online_again(before).await;
    let _b = s.device(bridge.devices, "dev-b");
    w.wait_device_online("dev-b").await;
    // The fault itself: dev-a stays away 3 s, long enough for a restarted bridge to dispatch
    // what it had to dev-b (it did at once before).
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.release();
    assert_ran_once_on_dev_a(&mut w, &s, &ids).await;
}
