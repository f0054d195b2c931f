//! The serial device link, over pseudo-terminal pairs made by `socat` (tests/run.sh installs
//! it): a simulated device on one end of the pair completes tasks through the bridge on the
//! other, is served again after it restarts on the same port (also when it draws the same boot
//! id again, as firmware with a nearly constant entropy source does), and a port that is
//! missing at start, or goes away and comes back (a USB adapter unplugged and plugged in
//! again), is reopened by the bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::{Bridge, LogLines, Proc, Watcher, binary, last_state, start_bridge_with_log};
use serde_json::{Value, json};

const ROOT: &str = "edge/serial";
/// Every wait of these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(30);
/// The device id of every simulator here.
const DEVICE: &str = "dev-serial";

/// `socat` joining two pseudo-terminals, linked as `dir/{a}` and `dir/{b}`, once both links
/// lead to their terminals. Killed when dropped.
fn pty_pair(dir: &Path, a: &str, b: &str) -> Proc {
    let end = |name: &str| format!("pty,raw,echo=0,link={}", dir.join(name).display());
    let child = Command::new("socat")
        .arg(end(a))
        .arg(end(b))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run socat ({e}): is it installed? \
                 apt-get install socat (tests/run.sh installs it)"
            )
        });
    let mut socat = Proc {
        child,
        name: "socat",
    };
    let deadline = Instant::now() + WAIT;
    // `exists` follows the links: true once each leads to its terminal.
    while !(dir.join(a).exists() && dir.join(b).exists()) {
        if let Some(status) = socat.child.try_wait().expect("wait for socat") {
            panic!("socat exited ({status}) before making its pseudo-terminals");
        }
        assert!(
            Instant::now() < deadline,
            "socat made no pseudo-terminals within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    socat
}

/// A bridge whose device link is the serial port `port`, its log captured.
fn start(dir: &Path, port: &Path) -> (Bridge, LogLines) {
    let config = dir.join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"serial\"\n\
             [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\
             [[link]]\nkind = \"serial\"\npath = {:?}\nbaud = 115200\n\
             # Only for the harness, which reads a TCP device address from the ready line.\n\
             [[link]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\n",
            port.display().to_string()
        ),
    )
    .unwrap();
    start_bridge_with_log(&dir.join("data"), &config)
}

/// `edge-device-sim --serial port`, offering `echo`.
fn serial_device(port: &Path) -> Proc {
    serial_device_with(port, &[])
}

/// `edge-device-sim --serial port` offering `echo` and `sleep`, with `extra` arguments.
fn serial_device_with(port: &Path, extra: &[&str]) -> Proc {
    let child = Command::new(binary("edge-device-sim"))
        .arg("--serial")
        .arg(port)
        .args([
            "--id",
            DEVICE,
            "--capability",
            "echo",
            "--capability",
            "sleep",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn edge-device-sim");
    Proc {
        child,
        name: "edge-device-sim",
    }
}

/// Submits an `echo` of `payload` to the serial device as task `id` and checks that it
/// completes with the payload as its result.
async fn echo(w: &mut Watcher, id: &str, payload: Value) {
    let task = json!({"id": id, "capability": "echo", "device": DEVICE, "payload": payload});
    w.submit(ROOT, &task.to_string()).await;
    let done = ["completed", "failed", "rejected", "expired", "cancelled"];
    w.wait_for(WAIT, &format!("{id} finished"), |seen| {
        last_state(seen, id).is_some_and(|s| done.contains(&s.as_str()))
    })
    .await;
    let last = w.states()[id].last().unwrap().clone();
    assert_eq!(last["state"], "completed", "{last:#}");
    assert_eq!(last["result"], payload);
}

/// Waits for a line of the bridge's log holding every one of `parts`.
async fn logged(log: &mut LogLines, parts: &[&str]) -> String {
    log.wait_for(WAIT, &parts.join(" + "), |l| {
        parts.iter().all(|p| l.contains(p))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_a_serial_port_completes_tasks_and_is_served_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Declared first, dropped last: the bridge never sees the terminals vanish.
    let _pair = pty_pair(dir.path(), "bridge", "device");
    let (bridge, mut log) = start(dir.path(), &dir.path().join("bridge"));
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    logged(&mut log, &["serial port open"]).await;

    let device = serial_device(&dir.path().join("device"));
    echo(
        &mut w,
        "s1",
        json!({"over": "a serial port", "n": [1, 2, 3]}),
    )
    .await;
    let doc = w
        .seen
        .iter()
        .rev()
        .find(|(t, _)| t.ends_with(&format!("/devices/{DEVICE}")))
        .expect("the device document");
    assert_eq!(doc.1["online"], true);

    // The device restarts (a new boot) on the same port, which stays open on both sides.
    drop(device);
    let _device = serial_device(&dir.path().join("device"));
    echo(&mut w, "s2", json!("after the restart")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_missing_at_start_or_unplugged_is_opened_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    // The bridge's port is a link of the test's own, made and removed as an adapter would
    // appear and vanish, so the bridge never opens a terminal that socat gave up (and the
    // system may have handed to someone else).
    let port: PathBuf = dir.path().join("ttyUSB0");
    let (bridge, mut log) = start(dir.path(), &port);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let line = logged(&mut log, &["WARN", "does not exist (yet)"]).await;
    assert!(line.contains(&port.display().to_string()), "{line}");

    // Plugged in.
    let pair = pty_pair(dir.path(), "pty-a", "device-a");
    std::os::unix::fs::symlink(dir.path().join("pty-a"), &port).unwrap();
    logged(&mut log, &["serial port open"]).await;
    let device = serial_device(&dir.path().join("device-a"));
    echo(&mut w, "p1", json!("plugged in late")).await;

    // Unplugged: the port fails under the bridge.
    drop(device);
    std::fs::remove_file(&port).unwrap();
    drop(pair);
    let line = logged(&mut log, &["WARN", "serial port failed"]).await;
    assert!(line.contains(&port.display().to_string()), "{line}");

    // Plugged in again.
    log.seen.clear();
    let _pair = pty_pair(dir.path(), "pty-b", "device-b");
    std::os::unix::fs::symlink(dir.path().join("pty-b"), &port).unwrap();
    logged(&mut log, &["serial port open"]).await;
    let _device = serial_device(&dir.path().join("device-b"));
    echo(&mut w, "p2", json!("plugged in again")).await;
}

/// A device that restarts on its serial port (which stays open on both sides) and draws the
/// same boot id again is still a device that rebooted (review M11): the task it was running is
/// run again, and new work reaches it. Before, its Hello was taken for a retransmission of the
/// old session's and the link was wedged for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_restarts_with_the_same_boot_id_is_seen_as_rebooted() {
    let dir = tempfile::tempdir().unwrap();
    let _pair = pty_pair(dir.path(), "bridge", "device");
    let (bridge, mut log) = start(dir.path(), &dir.path().join("bridge"));
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    logged(&mut log, &["serial port open"]).await;
    let exec_log = dir.path().join("executions.log");
    let exec = exec_log.display().to_string();
    let args = ["--boot-id", "7", "--exec-log", exec.as_str()];

    let device = serial_device_with(&dir.path().join("device"), &args);
    echo(&mut w, "b1", json!("first boot")).await;
    let long =
        json!({"id": "long", "capability": "sleep", "device": DEVICE, "payload": {"ms": 1500}});
    w.submit(ROOT, &long.to_string()).await;
    w.wait_for(WAIT, "the long task running", |seen| {
        last_state(seen, "long").as_deref() == Some("running")
    })
    .await;

    // Restarted with the same boot id while the task ran.
    drop(device);
    let _device = serial_device_with(&dir.path().join("device"), &args);
    echo(&mut w, "b2", json!("same boot id, new boot")).await;
    w.wait_for(WAIT, "the long task completed", |seen| {
        last_state(seen, "long").as_deref() == Some("completed")
    })
    .await;
    let runs = w.states()["long"]
        .iter()
        .filter(|e| e["state"] == "dispatched")
        .count();
    assert_eq!(runs, 2, "the task lost in the reboot was dispatched again");
    // Three tasks ran, one of them twice (it was cut short by the restart).
    assert_eq!(edge_tests::executions(&exec_log).len(), 4);
}
