//! The Debian package (arm64, from `tools/package/build deb aarch64-unknown-linux-musl`),
//! installed on this machine as an operator would, its bridge run under qemu-user:
//! - `dpkg -i` makes the service user, the queue directory (0700, the user's), the
//!   configuration (a conffile, 0640 root:edge-bridge) and a systemd unit that
//!   `systemd-analyze verify` accepts without a word, enabled (`multi-user.target.wants`);
//! - the bridge, started as the unit starts it (its user, its working directory, its
//!   configuration), tells the service manager READY=1 and pings the watchdog;
//! - the operator edits the configuration; tasks are queued for a device that is away;
//! - upgrading to the next revision keeps the edited configuration and the queue: after a
//!   restart the device connects and every queued task completes, once;
//! - `dpkg --remove` keeps the configuration and masks the unit; `dpkg --purge` removes the
//!   configuration and the unit's enablement and keeps the queue (it may hold accepted work),
//!   saying so.
//!
//! This machine runs no systemd (a container), so the bridge is started the way the unit
//! starts it, and the maintainer scripts' `systemctl` calls (start, restart, stop) are not
//! exercised; their enable, mask and purge of the unit are.
//!
//! It changes the machine (a package, a system user), so it runs as root, refuses to run
//! where edge-bridge is already installed, and leaves nothing behind. `cargo test` lists it as
//! ignored; `tests/run.sh` builds the packages and runs it with `--ignored`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::{
    Bridge, Watcher, binary, free_port, last_state, start_device, terminate, wait_ready,
};

const ROOT: &str = "edge/edge-bridge";
const CONFIG: &str = "/etc/edge-bridge/config.toml";
const QUEUE: &str = "/var/lib/edge-bridge";
const UNIT: &str = "/usr/lib/systemd/system/edge-bridge.service";
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/edge-bridge.service";
const MASK: &str = "/etc/systemd/system/edge-bridge.service";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "installs a package as root: tests/run.sh builds the packages and runs this"]
async fn the_debian_package_installs_runs_upgrades_keeping_the_queue_and_is_removed() {
    let [first, second] = packages();
    assert!(
        is_root(),
        "the package test installs a package: run it as root"
    );
    assert!(
        !installed(),
        "edge-bridge is installed on this machine; this test installs and removes it: \
         purge it first (dpkg --purge edge-bridge)"
    );
    let _cleanup = Cleanup;

    dpkg(&["--force-architecture", "-i"], &first);
    let service = user_ids("edge-bridge");
    let queue = std::fs::metadata(QUEUE).expect("the queue directory");
    assert!(queue.is_dir());
    assert_eq!(queue.mode() & 0o777, 0o700, "{QUEUE} mode");
    assert_eq!((queue.uid(), queue.gid()), service, "{QUEUE} owner");
    let config = std::fs::metadata(CONFIG).expect("the configuration");
    assert_eq!(config.mode() & 0o777, 0o640, "{CONFIG} mode");
    assert_eq!(
        (config.uid(), config.gid()),
        (0, service.1),
        "{CONFIG} owner"
    );
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "edge-bridge"]);
    assert!(conffiles.contains(CONFIG), "conffiles: {conffiles}");
    verify_unit();
    assert!(
        std::fs::symlink_metadata(ENABLED).is_ok(),
        "the service is enabled on installation"
    );

    // The operator's edit: listeners on free ports (this machine may run a broker on 1883).
    let (mqtt_port, device_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(CONFIG).unwrap();
    assert!(
        text.contains("data_dir = \"/var/lib/edge-bridge\""),
        "{text}"
    );
    let edited = text
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{mqtt_port}"))
        .replace("127.0.0.1:7878", &format!("127.0.0.1:{device_port}"));
    assert_ne!(edited, text);
    std::fs::write(CONFIG, &edited).unwrap();

    // First run: ready and watchdog reach the service manager; tasks wait for dev-up.
    let notify = Notify::bind();
    let bridge = start_service(Some(&notify));
    assert_eq!(bridge.mqtt.port(), mqtt_port);
    notify.until(|m| m.starts_with("READY=1\n"));
    notify.until(|m| m.starts_with("STATUS=running; MQTT API live on edge/edge-bridge"));
    notify.until(|m| m == "WATCHDOG=1\n");
    notify.until(|m| m == "WATCHDOG=1\n");
    let mut watcher = Watcher::connect(bridge.mqtt, ROOT).await;
    let ids: Vec<String> = (0..3).map(|i| format!("kept-{i}")).collect();
    for id in &ids {
        let task =
            serde_json::json!({"id": id, "capability": "echo", "device": "dev-up", "payload": id});
        watcher.submit(ROOT, &task.to_string()).await;
    }
    watcher
        .wait_for(Duration::from_secs(30), "three tasks queued", |seen| {
            ids.iter()
                .all(|id| last_state(seen, id).as_deref() == Some("queued"))
        })
        .await;
    drop(watcher);
    let status = terminate(bridge.proc);
    assert!(status.success(), "stopped with {status}");
    notify.until(|m| m.starts_with("STOPPING=1"));

    // Upgrade: same configuration (edited, so dpkg keeps it), same queue. No --force-confold:
    // an edited conffile the new package does not change is kept without a question.
    dpkg(&["--force-architecture", "-i"], &second);
    let version = run("dpkg-query", &["-W", "-f=${Version}", "edge-bridge"]);
    assert!(version.ends_with("-2"), "upgraded to {version}");
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);
    let config = std::fs::metadata(CONFIG).unwrap();
    assert_eq!(
        config.mode() & 0o777,
        0o640,
        "{CONFIG} mode after the upgrade"
    );
    assert_eq!((config.uid(), config.gid()), (0, service.1));
    assert!(std::fs::symlink_metadata(ENABLED).is_ok(), "still enabled");
    verify_unit();
    let bridge = start_service(None);
    let mut watcher = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = start_device(bridge.devices, "dev-up", &["echo"]);
    watcher
        .wait_for(
            Duration::from_secs(60),
            "the kept tasks completed",
            |seen| {
                ids.iter()
                    .all(|id| last_state(seen, id).as_deref() == Some("completed"))
            },
        )
        .await;
    let states = watcher.states();
    for id in &ids {
        let completed = states[id.as_str()]
            .iter()
            .filter(|s| s["state"] == "completed")
            .count();
        assert_eq!(completed, 1, "{id}: {:?}", states[id.as_str()]);
    }
    drop(watcher);
    assert!(terminate(bridge.proc).success());

    // Remove keeps the configuration; purge removes it and keeps the queue, saying so.
    dpkg(&["--remove"], Path::new("edge-bridge"));
    assert!(!Path::new("/usr/bin/edge-bridge").exists());
    assert!(Path::new(CONFIG).exists(), "remove keeps the configuration");
    assert_eq!(
        std::fs::read_link(MASK).ok(),
        Some(PathBuf::from("/dev/null")),
        "remove masks the unit"
    );
    let said = dpkg(&["--purge"], Path::new("edge-bridge"));
    assert!(
        !Path::new(CONFIG).exists(),
        "purge removes the configuration"
    );
    for link in [ENABLED, MASK] {
        assert!(
            std::fs::symlink_metadata(link).is_err(),
            "purge removes {link}"
        );
    }
    assert!(
        std::fs::read_dir(QUEUE).unwrap().next().is_some(),
        "purge keeps the queue"
    );
    assert!(said.contains("kept /var/lib/edge-bridge"), "{said}");
}

/// Revisions 1 and 2 of the arm64 package in target/package.
fn packages() -> [PathBuf; 2] {
    let dir = binary("edge-bridge")
        .parent()
        .and_then(Path::parent)
        .expect("target/{profile}")
        .join("package");
    let find = |revision: &str| -> PathBuf {
        let suffix = format!("-{revision}_arm64.deb");
        std::fs::read_dir(&dir)
            .ok()
            .and_then(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with(&suffix))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no edge-bridge_*{suffix} in {}: run tools/package/build deb \
                     aarch64-unknown-linux-musl {revision} (tests/run.sh does)",
                    dir.display()
                )
            })
    };
    [find("1"), find("2")]
}

fn is_root() -> bool {
    run("id", &["-u"]).trim() == "0"
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "edge-bridge"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

/// Runs `dpkg ARGS PACKAGE`, asserts success and returns what it printed (both streams).
fn dpkg(args: &[&str], package: &Path) -> String {
    let out = Command::new("dpkg")
        .args(args)
        .arg(package)
        .output()
        .expect("dpkg is not installed (a Debian system is needed)");
    let text = said(&out);
    assert!(out.status.success(), "dpkg {args:?} failed: {text}");
    text
}

/// Runs a tool, asserts success, returns its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn user_ids(name: &str) -> (u32, u32) {
    let uid = run("id", &["-u", name]).trim().parse().unwrap();
    let gid = run("id", &["-g", name]).trim().parse().unwrap();
    (uid, gid)
}

/// `systemd-analyze verify` on the installed unit: success and nothing said (it reports
/// unknown or misspelt settings as warnings and still exits 0).
fn verify_unit() {
    let out = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .expect("systemd-analyze is not installed: apt-get install systemd (tests/run.sh does)");
    let said = said(&out);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// What a tool printed, both streams.
fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The bridge as the unit starts it: `ExecStart=` as the unit's user, in its working
/// directory, with a watchdog when `notify` is given (under qemu-user: the package is arm64).
fn start_service(notify: Option<&Notify>) -> Bridge {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=edge-bridge",
        "--regid=edge-bridge",
        "--init-groups",
        "--",
        "qemu-aarch64-static",
    ]);
    cmd.args(exec.split_whitespace())
        .current_dir(QUEUE)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", &n.path)
            .env("WATCHDOG_USEC", "2000000");
    }
    wait_ready(cmd.spawn().expect("setpriv (util-linux) runs the bridge"))
}

/// A service manager's notification socket.
struct Notify {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl Notify {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        // The service's user sends to it, as systemd's socket lets every service do.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The first message (within 30 s) for which `wanted` holds.
    fn until(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if wanted(&message) {
                    return message;
                }
                seen.push(message);
            }
        }
        panic!("no such notification within 30 s; seen: {seen:?}");
    }
}

/// Leaves the machine as it was: the package purged, the queue and the user removed.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "edge-bridge"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(QUEUE);
        let _ = Command::new("deluser")
            .args(["--quiet", "--system", "edge-bridge"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("delgroup")
            .args(["--quiet", "--system", "edge-bridge"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The OpenHarmony tarball (armv7): the init service file's command line, with its paths
/// taken inside the unpacked tarball, starts the bridge on the packaged configuration (under
/// qemu-user; the queue and the listeners moved to a temporary directory and free ports).
#[test]
#[ignore = "needs the tarball: tests/run.sh builds it and runs this"]
fn the_openharmony_tarball_starts_the_bridge_its_init_service_names() {
    let dir = binary("edge-bridge")
        .parent()
        .and_then(Path::parent)
        .expect("target/{profile}")
        .join("package");
    let tarball = std::fs::read_dir(&dir)
        .ok()
        .and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.to_string_lossy()
                    .ends_with("-armv7-unknown-linux-musleabihf.tar.gz")
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no tarball in {}: run tools/package/build tarball \
                 armv7-unknown-linux-musleabihf (tests/run.sh does)",
                dir.display()
            )
        });
    let unpacked = tempfile::tempdir().unwrap();
    run(
        "tar",
        &[
            "-xzf",
            tarball.to_str().unwrap(),
            "-C",
            unpacked.path().to_str().unwrap(),
        ],
    );
    let top = std::fs::read_dir(unpacked.path())
        .unwrap()
        .next()
        .expect("one top directory")
        .unwrap()
        .path();
    for file in ["LICENSE-MIT", "LICENSE-APACHE", "README.md"] {
        assert!(top.join(file).exists(), "{file} in the tarball");
    }
    let cfg = std::fs::read_to_string(top.join("system/etc/init/edge_bridge.cfg")).unwrap();
    assert_eq!(cfg, broker_config::OPENHARMONY_CFG);
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    let inside = |p: &str| -> String {
        match p.strip_prefix('/') {
            Some(relative) => top.join(relative).display().to_string(),
            None => p.to_owned(),
        }
    };
    let argv: Vec<String> = cfg["services"][0]["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| inside(a.as_str().unwrap()))
        .collect();
    let config = std::fs::read_to_string(inside("/system/etc/edge-bridge/config.toml")).unwrap();
    assert!(
        config.contains(&format!(
            "data_dir = \"{}\"",
            broker_config::OPENHARMONY_DATA_DIR
        )),
        "the packaged configuration keeps the queue where the cfg makes its directory"
    );
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("qemu-arm-static");
    cmd.args(&argv)
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
        ])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let bridge = wait_ready(
        cmd.spawn()
            .expect("qemu-arm-static is not installed: apt-get install qemu-user-static"),
    );
    assert!(terminate(bridge.proc).success());
    assert!(
        data.path().read_dir().unwrap().next().is_some(),
        "the queue was made"
    );
}
