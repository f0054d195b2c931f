//! device-core firmware on an emulated Cortex-M3: QEMU's `lm3s6965evb` runs
//! `device-core/firmware-qemu`, its UART0 connected to the bridge's TCP device link, and tasks
//! published over MQTT run on the target — `echo`, `crc32`, a P0 task overtaking P4 tasks
//! queued on the device, and priority inheritance between two tasks sharing the bus lock.
//!
//! The firmware's timed tasks (`work`, `bus.transfer`) report ticks of a device-wide order log
//! (`arrived`, `first` and `last` step), which is how the test sees what the device's scheduler
//! did, not just what the bridge dispatched.
//!
//! Needs `qemu-system-arm` (Debian package `qemu-system-arm`) and the `thumbv7m-none-eabi`
//! rustup target; without either the test fails, saying what to install.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::{Proc, Watcher, last_state, start_bridge};
use serde_json::{Value, json};

const ROOT: &str = "edge/qemu";
/// The id the firmware announces.
const DEVICE: &str = "qemu-m3";
const QEMU: &str = "qemu-system-arm";
/// A cold build of the firmware (dependencies included) takes about 20 s on the 2-core
/// machines; the bound leaves room for fetching the crates and for a busy machine.
const BUILD_LIMIT: Duration = Duration::from_secs(600);
/// Everything after the build: boot, then every phase.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);
/// A started P4 `work` task (declared resumable) holds one of the firmware's slots when seven
/// P0 `work` tasks take the others and a P0 `echo` finds none: the firmware stops the P4 at its
/// next step boundary and gives it back with its checkpoint (`preempted`); it resumes there
/// from that checkpoint once a slot is free. Its result's `first` step is the one it ran before
/// the P0 tasks arrived, so it did not start over.
async fn a_started_task_resumes_from_its_checkpoint(w: &mut Watcher) {
    submit(w, "victim", "work", 4, &json!(1500)).await;
    wait_state(w, "victim", "running").await;
    let fillers: Vec<String> = (0..7).map(|i| format!("fill-{i}")).collect();
    for id in &fillers {
        submit(w, id, "work", 0, &json!(1000)).await;
    }
    w.wait_for(WAIT, "the P0 tasks on the device", |seen| {
        fillers
            .iter()
            .all(|id| last_state(seen, id).is_some_and(|s| s != "queued"))
    })
    .await;
    submit(w, "urgent", "echo", 0, &json!("now")).await;
    let mut all = fillers.clone();
    all.extend(["victim".to_owned(), "urgent".to_owned()]);
    wait_terminal(w, &all).await;

    let preempted = w.states()["victim"]
        .iter()
        .any(|e| e["state"] == "preempted");
    assert!(
        preempted,
        "the P4 task was not taken back: {:?}",
        w.states()["victim"]
    );
    let victim = Timing::of(w, "victim");
    let first_filler = Timing::of(w, "fill-0");
    assert!(
        victim.first < first_filler.first && victim.last > first_filler.last,
        "resumed from its checkpoint, not started over: victim {victim:?} / fill-0 {first_filler:?}"
    );
    println!(
        "the P4 task was taken back after it started and resumed from its checkpoint: {victim:?}"
    );
}

/// Each wait for an MQTT event within the scenario.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_on_qemu_serves_tasks_from_the_bridge() {
    require_qemu();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let firmware = build_firmware(dir.path());
    println!("firmware built in {:.1?}", started.elapsed());

    let started = Instant::now();
    let bridge = start_bridge(&dir.path().join("data"), &["--bridge-id", "qemu"]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let qemu = Qemu::start(&firmware, bridge.devices, &dir.path().join("qemu.log"));
    tokio::time::timeout(SCENARIO_LIMIT, async {
        comes_online(&mut w).await;
        echo_and_crc32(&mut w).await;
        p0_overtakes_p4_tasks_queued_on_the_device(&mut w).await;
        the_bus_holder_inherits_the_priority_of_its_waiter(&mut w).await;
        a_started_task_resumes_from_its_checkpoint(&mut w).await;
    })
    .await
    .unwrap_or_else(|_| panic!("the scenario did not finish within {SCENARIO_LIMIT:?}"));
    qemu.assert_running();
    println!("scenario ran in {:.1?}", started.elapsed());
}

/// The firmware says hello and the bridge publishes its capability document.
async fn comes_online(w: &mut Watcher) {
    let topic = format!("{ROOT}/devices/{DEVICE}");
    w.wait_for(WAIT, "the firmware online", |seen| {
        seen.iter().any(|(t, v)| *t == topic && v["online"] == true)
    })
    .await;
    let doc = &w.seen.iter().rev().find(|(t, _)| *t == topic).unwrap().1;
    assert_eq!(
        doc["capabilities"],
        json!(["echo", "crc32", "work", "bus.transfer"])
    );
    assert_eq!(doc["slots"], 8);
    assert_eq!(doc["locks"], json!(["bus"]));
}

/// Single-step capabilities, and a handler failure reported with its code.
async fn echo_and_crc32(w: &mut Watcher) {
    let echo = json!({"text": "from the Cortex-M3", "n": [1, 2, 3]});
    submit(w, "echo", "echo", 3, &echo).await;
    // The device hashes the payload's JSON text: `123456789`, whose CRC-32 is the
    // algorithm's standard check value 0xCBF43926.
    submit(w, "crc", "crc32", 3, &json!(123456789)).await;
    submit(w, "bad-ms", "work", 3, &json!("soon")).await;
    wait_terminal(w, &["echo", "crc", "bad-ms"]).await;

    assert_eq!(result(w, "echo", "completed"), echo);
    assert_eq!(
        result(w, "crc", "completed"),
        json!({"crc32": 0xCBF4_3926u32})
    );
    let failed = final_event(w, "bad-ms");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "device_failed");
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("code 1")),
        "BAD_PAYLOAD is code 1: {failed}"
    );
}

/// Four P4 tasks are on the device, one running and three queued, when a P0 task arrives: the
/// P0 task runs at the next step boundary and finishes before any queued P4 task starts.
async fn p0_overtakes_p4_tasks_queued_on_the_device(w: &mut Watcher) {
    let low: Vec<String> = (0..4).map(|i| format!("p4-{i}")).collect();
    for id in &low {
        submit(w, id, "work", 4, &json!(400)).await;
    }
    w.wait_for(WAIT, "a P4 task running on the device", |seen| {
        low.iter()
            .any(|id| last_state(seen, id).as_deref() == Some("running"))
    })
    .await;
    submit(w, "p0", "work", 0, &json!(20)).await;
    let mut all = low.clone();
    all.push("p0".into());
    wait_terminal(w, &all).await;

    let p0 = Timing::of(w, "p0");
    let mut queued = 0;
    let mut in_progress = 0;
    for id in &low {
        let t = Timing::of(w, id);
        assert!(
            t.arrived < p0.arrived,
            "{id} was on the device before p0: {t:?} / p0 {p0:?}"
        );
        if t.first > p0.arrived {
            queued += 1;
            assert!(
                t.first > p0.last,
                "{id} was queued when p0 arrived, yet started before p0 finished: {t:?} / p0 {p0:?}"
            );
        } else if t.last > p0.arrived {
            in_progress += 1;
            assert!(
                t.last > p0.last,
                "{id} was running when p0 arrived: p0 must run between its steps: {t:?} / p0 {p0:?}"
            );
        }
    }
    assert_eq!(in_progress, 1, "one P4 task was running when p0 arrived");
    assert!(
        queued >= 2,
        "P4 tasks were still queued on the device when p0 arrived (only {queued}; the host was too slow to show overtaking)"
    );
    println!("p0 overtook {queued} P4 tasks queued on the device and preempted the running one");
}

/// A P4 task holds the bus; a P0 task blocks on the bus, then a P2 task arrives. With
/// priority inheritance the holder runs at P0 until it releases the bus, so it finishes before
/// the P2 task starts, and the P0 task runs next; without it the P2 task would run first and
/// keep the P0 task waiting (priority inversion). The two bus tasks name the lock the firmware
/// advertises (`"locks":["bus"]`); the bridge sends its lock id and the device takes it.
async fn the_bus_holder_inherits_the_priority_of_its_waiter(w: &mut Watcher) {
    submit_on_bus(w, "holder", 4, &json!(1000)).await;
    // The device reports `running` from the step that takes the bus: it holds it from now.
    wait_state(w, "holder", "running").await;
    submit_on_bus(w, "waiter", 0, &json!(50)).await;
    // Picked, and blocked on the bus: the holder now runs at P0.
    wait_state(w, "waiter", "running").await;
    submit(w, "medium", "work", 2, &json!(200)).await;
    wait_terminal(w, &["holder", "waiter", "medium"]).await;

    let holder = Timing::of(w, "holder");
    let waiter = Timing::of(w, "waiter");
    let medium = Timing::of(w, "medium");
    let all = format!("holder {holder:?}, waiter {waiter:?}, medium {medium:?}");
    assert!(
        waiter.arrived < holder.last && medium.arrived < holder.last,
        "the waiter and the P2 task arrived while the holder had the bus (else the host was too slow to show anything): {all}"
    );
    assert!(
        holder.last < waiter.first,
        "the waiter ran only once the holder released the bus: {all}"
    );
    assert!(
        holder.last < medium.first,
        "priority inversion: the P2 task ran while the P4 holder kept the P0 waiter waiting: {all}"
    );
    assert!(
        waiter.last < medium.first,
        "the P0 waiter ran before the P2 task: {all}"
    );
    println!("the bus holder ran at its waiter's P0: {all}");
}

/// What a timed task (`work`, `bus.transfer`) reports: order log ticks.
#[derive(Debug, Clone, Copy)]
struct Timing {
    arrived: u64,
    first: u64,
    last: u64,
}

impl Timing {
    fn of(w: &Watcher, id: &str) -> Self {
        let r = result(w, id, "completed");
        let tick = |key: &str| {
            r[key]
                .as_u64()
                .unwrap_or_else(|| panic!("{id}: no {key} tick in {r}"))
        };
        Self {
            arrived: tick("arrived"),
            first: tick("first"),
            last: tick("last"),
        }
    }
}

async fn submit(w: &Watcher, id: &str, capability: &str, priority: u8, payload: &Value) {
    let task = json!({"id": id, "capability": capability, "device": DEVICE,
        "priority": priority, "payload": payload});
    w.submit(ROOT, &task.to_string()).await;
}

/// A `bus.transfer` task holding the firmware's bus lock.
async fn submit_on_bus(w: &Watcher, id: &str, priority: u8, payload: &Value) {
    let task = json!({"id": id, "capability": "bus.transfer", "device": DEVICE,
        "priority": priority, "payload": payload, "locks": ["bus"]});
    w.submit(ROOT, &task.to_string()).await;
}

async fn wait_state(w: &mut Watcher, id: &str, state: &str) {
    w.wait_for(WAIT, &format!("{id} {state}"), |seen| {
        last_state(seen, id).as_deref() == Some(state)
    })
    .await;
}

async fn wait_terminal(w: &mut Watcher, ids: &[impl AsRef<str>]) {
    let terminal = ["completed", "failed", "expired", "cancelled", "rejected"];
    w.wait_for(WAIT, "every task terminal", |seen| {
        ids.iter()
            .all(|id| last_state(seen, id.as_ref()).is_some_and(|s| terminal.contains(&s.as_str())))
    })
    .await;
}

/// The last status event of `id`.
fn final_event(w: &Watcher, id: &str) -> Value {
    w.states()
        .get(id)
        .and_then(|events| events.last().cloned())
        .unwrap_or_else(|| panic!("no status event for {id}"))
}

/// The result of `id`, which must have ended in `state`.
fn result(w: &Watcher, id: &str, state: &str) -> Value {
    let event = final_event(w, id);
    assert_eq!(event["state"], state, "{id}: {event}");
    event["result"].clone()
}

/// Fails the test, saying what to install, when QEMU is missing.
fn require_qemu() {
    match Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`{QEMU} --version` failed: {}", out.status),
        Err(e) => panic!(
            "{QEMU} cannot be run ({e}): install it (Debian: apt-get install qemu-system-arm; \
             tests/run.sh does)"
        ),
    }
}

/// Builds the firmware in its own directory and target dir (it is its own workspace, for
/// `thumbv7m-none-eabi`); returns the ELF.
fn build_firmware(scratch: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-core/firmware-qemu");
    let target_dir = crate_dir.join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let log_path = scratch.join("firmware-build.log");
    let log = File::create(&log_path).expect("create the build log");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&crate_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the build log"))
        .stderr(log);
    // This process runs under `cargo test`, whose environment describes the host workspace
    // (package, target dir, maybe RUSTFLAGS for the host): none of it applies to the
    // firmware, whose own .cargo/config.toml sets target and link flags. Kept: where cargo
    // lives and how it reaches the registry.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let registry = [
            "CARGO_HOME",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTR",
            "CARGO_TERM_",
        ]
        .iter()
        .any(|keep| key.starts_with(keep));
        let flags = key.starts_with("RUST") && key.ends_with("FLAGS");
        if (key.starts_with("CARGO_") && !registry) || flags {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.spawn().expect("spawn cargo to build the firmware");
    let deadline = Instant::now() + BUILD_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the firmware build") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the firmware build took over {BUILD_LIMIT:?}:\n{}",
                tail(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "building the firmware failed ({status}; is the thumbv7m-none-eabi target installed? \
         rustup target add thumbv7m-none-eabi):\n{}",
        tail(&log_path)
    );
    let elf = target_dir.join("thumbv7m-none-eabi/release/edge-firmware-qemu");
    assert!(elf.exists(), "the build left no {}", elf.display());
    elf
}

/// QEMU running the firmware; killed on drop, and its log (the firmware's semihosting output)
/// printed when the test failed.
struct Qemu {
    proc: Proc,
    log: PathBuf,
}

impl Qemu {
    /// Boots `firmware` with UART0 connected to the bridge's device link at `devices` (QEMU
    /// connects at start; the bridge is already listening).
    fn start(firmware: &Path, devices: std::net::SocketAddr, log: &Path) -> Self {
        assert!(devices.ip().is_loopback(), "the device link is on loopback");
        let out = File::create(log).expect("create the QEMU log");
        let child = Command::new(QEMU)
            .args(["-machine", "lm3s6965evb", "-nographic", "-monitor", "none"])
            .args(["-semihosting-config", "enable=on,target=native"])
            // Without nodelay, Nagle's algorithm costs ~44 ms per round trip.
            .arg("-serial")
            .arg(format!("tcp:{devices},nodelay=on"))
            .arg("-kernel")
            .arg(firmware)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone the QEMU log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {QEMU}: {e}"));
        Self {
            proc: Proc { child, name: QEMU },
            log: log.to_path_buf(),
        }
    }

    /// Fails when QEMU has exited: the firmware exits only on a fault, with a code saying which.
    fn assert_running(mut self) {
        if let Some(status) = self.proc.child.try_wait().expect("poll QEMU") {
            let why = match status.code() {
                Some(101) => "the firmware panicked",
                Some(102) => "the firmware took a hard fault",
                Some(103) => "the firmware took an exception it has no handler for",
                _ => "QEMU ended",
            };
            panic!("{why} ({status})");
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {QEMU} log ---\n{}", tail(&self.log));
        }
    }
}

/// The last lines of a log file, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
