//! Shared harness of the end-to-end tests: the real binaries as child processes, a real MQTT
//! client, mosquitto when a test needs an external broker. Everything listens on loopback
//! with ports chosen by the OS, every wait has a deadline, and every child is killed when
//! its handle drops (also when a test fails).
//!
//! The binaries are the ones `cargo build --workspace --bins` put next to the test
//! executable (`tests/run.sh` builds them first); a missing one fails the test loudly.
//!
//! # Layout
//! - this file: processes (bridge, device simulators, mosquitto), the [`Watcher`] client
//!   the end-to-end tests share, and a plain HTTP client ([`http_request`]);
//! - [`bench`](mod@bench): the benchmark behind the `edge-bench` binary (and its smoke test);
//! - [`rogue`]: a rogue device on device-core's wire format and session, for tests of what
//!   the bridge does with devices that misbehave.

pub mod bench;
pub mod rogue;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

/// The directory holding the workspace's binaries (target/debug or target/release).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    // Test executables live in target/{profile}/deps, binaries (edge-bench) in
    // target/{profile} itself.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, or a panic telling how to build it.
pub fn binary(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    let release = if dir.file_name().is_some_and(|n| n == "release") {
        " --release"
    } else {
        ""
    };
    assert!(
        path.exists(),
        "{} is missing: run `cargo build{release} --workspace --bins` (tests/run.sh does)",
        path.display()
    );
    path
}

/// A child process killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running bridge.
#[derive(Debug)]
pub struct Bridge {
    pub proc: Proc,
    pub mqtt: SocketAddr,
    /// The first device listener.
    pub devices: SocketAddr,
    /// Every device listener, in the configuration's order.
    pub listeners: Vec<SocketAddr>,
    /// The metrics endpoint, when the configuration turns it on (`metrics=` in the ready line).
    pub metrics: Option<SocketAddr>,
}

/// Starts `edge-bridge run` with `args` (plus port-0 listeners unless given) and waits for
/// its ready line.
pub fn start_bridge(data_dir: &Path, extra: &[&str]) -> Bridge {
    start_bridge_with(data_dir, extra, |_| {})
}

/// As [`start_bridge`], with `setup` applied to the command before it is spawned (its
/// environment, e.g. a [`WallClock`]).
pub fn start_bridge_with(
    data_dir: &Path,
    extra: &[&str],
    setup: impl FnOnce(&mut Command),
) -> Bridge {
    let mut cmd = Command::new(binary("edge-bridge"));
    cmd.arg("run").arg("--data-dir").arg(data_dir);
    // Port-0 listeners unless the test chose its own (or a config file names the broker).
    if !extra.contains(&"--config") && !extra.contains(&"--mqtt-listen") {
        cmd.args(["--mqtt-listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--device-listen") {
        cmd.args(["--device-listen", "127.0.0.1:0"]);
    }
    cmd.args(extra);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    setup(&mut cmd);
    wait_ready(cmd.spawn().expect("spawn edge-bridge"))
}

/// Writes `config` as `dir/bridge.toml` (a typed configuration, so a renamed field breaks the
/// build, not the run) and returns the file's path.
pub fn write_config(dir: &Path, config: &broker_config::Config) -> PathBuf {
    let file = dir.join("bridge.toml");
    let text = toml::to_string(config).expect("a configuration serialises");
    std::fs::write(&file, text).expect("write the configuration");
    file
}

/// Starts a bridge on `config`, written into `dir` (its data in `dir/data`). As with
/// [`start_bridge`], the device links are one plain TCP listener on a free port, and so is an
/// embedded broker; an external broker is used as configured.
pub fn start_bridge_with_config(dir: &Path, config: &broker_config::Config) -> Bridge {
    start_bridge_with_config_and(dir, config, |_| {})
}

/// As [`start_bridge_with_config`], with `setup` applied to the command before it is spawned.
pub fn start_bridge_with_config_and(
    dir: &Path,
    config: &broker_config::Config,
    setup: impl FnOnce(&mut Command),
) -> Bridge {
    let file = write_config(dir, config);
    let file = file.to_str().expect("a UTF-8 temporary path");
    let mut extra = vec!["--config", file];
    if matches!(config.broker, broker_config::BrokerConfig::Embedded { .. }) {
        extra.extend(["--mqtt-listen", "127.0.0.1:0"]);
    }
    start_bridge_with(&dir.join("data"), &extra, setup)
}

/// Starts `edge-bridge run --config FILE` with nothing else but `--data-dir`, so the file
/// alone chooses the broker and the device links (use port 0 for each listener), and
/// captures its log (stderr, still echoed to the test's stderr) for the test to wait on.
pub fn start_bridge_with_log(data_dir: &Path, config: &Path) -> (Bridge, LogLines) {
    start_bridge_with_log_and(data_dir, config, |_| {})
}

/// As [`start_bridge_with_log`], with `setup` applied to the command first (a [`WallClock`],
/// say).
pub fn start_bridge_with_log_and(
    data_dir: &Path,
    config: &Path,
    setup: impl FnOnce(&mut Command),
) -> (Bridge, LogLines) {
    let mut cmd = Command::new(binary("edge-bridge"));
    cmd.arg("run")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--config")
        .arg(config)
        // Plain log lines, not coloured ones, for the tests to match.
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    setup(&mut cmd);
    let mut child = cmd.spawn().expect("spawn edge-bridge");
    let log = LogLines::capture(child.stderr.take().expect("stderr"));
    (wait_ready(child), log)
}

/// Waits for a bridge's ready line (its stdout must be piped) and reads its addresses: for a
/// bridge started however the test needs (under an emulator, say).
pub fn wait_ready(mut child: Child) -> Bridge {
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc {
        child,
        name: "edge-bridge",
    };
    let line = read_line_with_deadline(stdout, Duration::from_secs(30))
        .expect("edge-bridge printed no ready line in 30 s");
    let optional = |key: &str| -> Option<Vec<SocketAddr>> {
        let v = line.split_whitespace().find_map(|w| w.strip_prefix(key))?;
        let addrs = v
            .split(',')
            .map(|a| a.parse().unwrap_or_else(|e| panic!("{key}{v}: {e}")));
        Some(addrs.collect())
    };
    let field = |key: &str| optional(key).unwrap_or_else(|| panic!("no {key} in {line:?}"));
    let listeners = listening_links(&line);
    assert!(!listeners.is_empty(), "no listening link in {line:?}");
    Bridge {
        mqtt: field("mqtt=")[0],
        devices: listeners[0],
        listeners,
        metrics: optional("metrics=").map(|m| m[0]),
        proc,
    }
}

/// The addresses of the links of a ready line (`links=tcp:127.0.0.1:7878,serial:/dev/tty…`)
/// that listen on one, in the configuration's order.
pub fn listening_links(ready: &str) -> Vec<SocketAddr> {
    let links = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("links="))
        .unwrap_or_else(|| panic!("no links= in {ready:?}"));
    links
        .split(',')
        .filter_map(|link| link.split_once(':'))
        .filter(|(kind, _)| *kind != "serial")
        .map(|(_, addr)| addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")))
        .collect()
}

/// A child's log, line by line, as it comes: read on a helper thread that also echoes each
/// line to the test's stderr and keeps reading to the end (a full pipe must never block the
/// child).
#[derive(Debug)]
pub struct LogLines {
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, in order.
    pub seen: Vec<String>,
}

impl LogLines {
    /// Starts reading `out`.
    pub fn capture(out: impl std::io::Read + Send + 'static) -> Self {
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let _ = tx.send(strip_ansi(&line));
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// Moves every line read so far into `seen`, without waiting, and returns them all.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Waits for a line for which `matches` holds (among those seen or still to come) and
    /// returns it; panics after `within`, or when the log ends first.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        if let Some(line) = self.seen.iter().find(|l| matches(l)) {
            return line.clone();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!("the log ended while waiting for {what}"),
                Err(_) => panic!("timed out after {within:?} waiting for {what} in the log"),
            }
        }
    }
}

/// `line` without ANSI colour sequences (in case a child colours its log anyway).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads the first line of `out` on a helper thread, with a deadline.
pub fn read_line_with_deadline(
    out: impl std::io::Read + Send + 'static,
    deadline: Duration,
) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(deadline).ok().filter(|l| !l.is_empty())
}

/// A wall clock a test can step while a child runs, as NTP steps a gateway's: libfaketime
/// (Debian package `faketime`) preloaded into the child, its offset read from a file at every
/// clock read, the monotonic clocks left alone (a step moves only `CLOCK_REALTIME`).
#[derive(Debug)]
pub struct WallClock {
    /// libfaketime's preload library.
    library: PathBuf,
    /// The offset, as libfaketime reads it ("+7200" is two hours ahead).
    file: PathBuf,
}

impl WallClock {
    /// A clock at the real time, its offset kept in `dir`. Fails loudly without libfaketime.
    pub fn new(dir: &Path) -> Self {
        let library = std::fs::read_dir("/usr/lib")
            .into_iter()
            .flatten()
            .flatten()
            .map(|arch| arch.path().join("faketime/libfaketime.so.1"))
            .chain([PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1")])
            .find(|p| p.exists())
            .expect("libfaketime is not installed: apt-get install faketime (tests/run.sh does)");
        let clock = Self {
            library,
            file: dir.join("faketime.rc"),
        };
        clock.set_offset(0);
        clock
    }

    /// Steps the wall clock to `seconds` from the real time (negative: behind it), at once.
    pub fn set_offset(&self, seconds: i64) {
        // Written aside and renamed, so a read never sees a half-written offset.
        let aside = self.file.with_extension("new");
        std::fs::write(&aside, format!("{seconds:+}\n")).expect("write the faketime offset");
        std::fs::rename(&aside, &self.file).expect("rename the faketime offset");
    }

    /// Makes `cmd`'s child run on this clock.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("LD_PRELOAD", &self.library)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            // Read the offset at every call, so a step applies at once.
            .env("FAKETIME_NO_CACHE", "1")
            // NTP steps CLOCK_REALTIME only: CLOCK_MONOTONIC and CLOCK_BOOTTIME go on.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            // File times stay real (the queue's database is the bridge's business).
            .env("NO_FAKE_STAT", "1");
    }
}

/// Starts `edge-device-sim`.
pub fn start_device(bridge: SocketAddr, id: &str, capabilities: &[&str]) -> Proc {
    start_device_with(bridge, id, capabilities, &[])
}

/// Starts `edge-device-sim` with extra arguments.
pub fn start_device_with(
    bridge: SocketAddr,
    id: &str,
    capabilities: &[&str],
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(binary("edge-device-sim"));
    cmd.args(extra);
    cmd.arg("--connect")
        .arg(bridge.to_string())
        .arg("--id")
        .arg(id);
    for c in capabilities {
        cmd.arg("--capability").arg(c);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
    Proc {
        child: cmd.spawn().expect("spawn edge-device-sim"),
        name: "edge-device-sim",
    }
}

/// The `openssl req` arguments of a new ECDSA P-256 key without a passphrase.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A self-signed ECDSA P-256 CA in `dir`: `{name}.pem` and `{name}.key`, valid two days.
pub fn make_ca(dir: &Path, name: &str, subject: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let args = [
        &["req", "-x509"][..],
        &EC_KEY,
        &[
            "-keyout", &key, "-out", &pem, "-days", "2", "-subj", subject,
        ],
    ]
    .concat();
    openssl(dir, &args);
}

/// An ECDSA P-256 certificate in `dir`, `{name}.pem` and `{name}.key`, for subject CN `cn`,
/// signed by the CA `{ca}.pem`/`{ca}.key` (see [`make_ca`]), with the X.509 v3 extensions
/// `ext` (lines of an openssl extension file, e.g. `extendedKeyUsage=clientAuth`).
pub fn issue_certificate(dir: &Path, name: &str, cn: &str, ca: &str, ext: &str) {
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).expect("write the extension file");
    let subject = format!("/CN={cn}");
    let req = [
        &["req"][..],
        &EC_KEY,
        &["-keyout", &key, "-out", &csr, "-subj", &subject],
    ]
    .concat();
    openssl(dir, &req);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
}

/// The certificates of a device link with client certificates, in `dir`: a CA `ca.pem`/`ca.key`
/// (subject `ca_subject`), the bridge's certificate `bridge.pem`/`bridge.key` for 127.0.0.1
/// (server use) and, for each id of `devices`, `{id}.pem`/`{id}.key` with CN = the id (client
/// use); all ECDSA P-256, signed by that CA.
pub fn make_link_certificates(dir: &Path, ca_subject: &str, devices: &[&str]) {
    make_ca(dir, "ca", ca_subject);
    let server = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
    issue_certificate(dir, "bridge", "bridge", "ca", server);
    for id in devices {
        issue_certificate(dir, id, id, "ca", "extendedKeyUsage=clientAuth\n");
    }
}

/// Runs `openssl` with `args` in `dir` (tests make their certificates with it); fails
/// loudly when it is missing or fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is not installed: apt-get install openssl (tests/run.sh does)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free loopback port (for programs that cannot report the port they bound).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports. Each is free when the call returns, and no two are the
/// same: their listeners are all held until every port is known (one port after another,
/// each released before the next, the kernel may hand out the same port twice, and a bridge
/// given it for two listeners refuses to start).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("free port").port())
}

/// Starts mosquitto on a free loopback port. Fails loudly when it is not installed.
pub fn start_mosquitto(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    (start_mosquitto_on(dir, port, false), port)
}

/// Starts mosquitto on `port`; with `persistent`, it keeps sessions and queued messages in
/// `dir` across a graceful restart.
pub fn start_mosquitto_on(dir: &Path, port: u16, persistent: bool) -> Proc {
    let conf = dir.join("mosquitto.conf");
    let persistence = if persistent {
        format!(
            "persistence true\npersistence_location {}/\n",
            dir.display()
        )
    } else {
        "persistence false\n".to_owned()
    };
    std::fs::write(
        &conf,
        // The settings the README asks of mosquitto for the bridge (without them it drops
        // QoS 1 messages beyond 1,000 queued per client: submissions of a burst, and events
        // the tests' watchers must see). Started as root, it would switch to its own user,
        // which cannot write the test's private directory.
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n{persistence}{}",
            broker_config::MOSQUITTO_CONF
        ),
    )
    .expect("write mosquitto.conf");
    run_mosquitto(&conf, &[port])
}

/// Where mosquitto is installed, if it is.
pub fn mosquitto_binary() -> Option<&'static Path> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
}

/// Runs mosquitto with the configuration file `conf` and waits until it listens on every
/// port of `ports` (loopback). Fails loudly when it is not installed.
pub fn run_mosquitto(conf: &Path, ports: &[u16]) -> Proc {
    let exe = mosquitto_binary()
        .expect("mosquitto is not installed: apt-get install mosquitto (tests/run.sh does)");
    let child = Command::new(exe)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let proc = Proc {
        child,
        name: "mosquitto",
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    proc
}

/// Stops a process with SIGTERM (a graceful stop: mosquitto saves its state) and waits for
/// it, at most 10 s.
pub fn terminate(mut proc: Proc) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {} failed", proc.name);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = proc.child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not stop within 10 s of SIGTERM",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines one `mosquitto_pub -l` run publishes at most (see [`publish_lines`]).
pub const LINES_PER_PUBLISHER: usize = 50_000;

/// Publishes each of `lines` as one QoS 1 message on `topic` with `mosquitto_pub -l`, as fast
/// as the broker takes them, and returns once the broker has acknowledged every one. Panics
/// when mosquitto_pub is not installed, fails, or has not finished within `within`.
///
/// mosquitto_pub (2.0) ends a `-l` run at the first PUBACK, after stdin ends, whose packet id
/// is that of the last line; packet ids wrap at 65,535, so with more lines than that it may
/// leave early without sending the rest (measured: of 100,000 lines piped from a file, 34,475
/// were sent, and mosquitto_pub exited 0). So the lines are split into runs of at most
/// [`LINES_PER_PUBLISHER`], one mosquitto_pub each, all publishing at once: each run's exit
/// (status 0) then means the broker acknowledged all its lines.
pub fn publish_lines(broker: SocketAddr, topic: &str, lines: &[String], within: Duration) {
    use std::io::Write;

    let deadline = Instant::now() + within;
    let mut runs = Vec::new();
    for chunk in lines.chunks(LINES_PER_PUBLISHER) {
        let mut file = tempfile::tempfile().expect("a temporary file for mosquitto_pub's stdin");
        let mut out = std::io::BufWriter::new(&mut file);
        for line in chunk {
            assert!(
                !line.contains('\n'),
                "a line of mosquitto_pub -l is one message"
            );
            writeln!(out, "{line}").expect("write mosquitto_pub's stdin");
        }
        drop(out);
        std::io::Seek::rewind(&mut file).expect("rewind mosquitto_pub's stdin");
        let child = Command::new("mosquitto_pub")
            .args(["-q", "1", "-l", "-h"])
            .arg(broker.ip().to_string())
            .arg("-p")
            .arg(broker.port().to_string())
            .arg("-t")
            .arg(topic)
            .stdin(file)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "mosquitto_pub is not installed: apt-get install mosquitto-clients (tests/run.sh does)",
            );
        runs.push((
            Proc {
                child,
                name: "mosquitto_pub",
            },
            chunk.len(),
        ));
    }
    for (mut run, len) in runs {
        loop {
            if let Some(status) = run.child.try_wait().expect("wait for mosquitto_pub") {
                assert!(
                    status.success(),
                    "mosquitto_pub ({len} lines) exited with {status}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_pub ({len} lines) had not finished after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An MQTT client watching everything under a topic root.
#[allow(missing_debug_implementations)] // holds a client and a channel; nothing to show
pub struct Watcher {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    /// Every (topic, JSON payload) seen, in order.
    pub seen: Vec<(String, Value)>,
}

impl Watcher {
    /// Connects to `broker` and subscribes to `{root}/#`; returns once subscribed.
    pub async fn connect(broker: SocketAddr, root: &str) -> Self {
        Self::connect_with(broker, root, false).await
    }

    /// As [`Watcher::connect`]; with `persistent`, the broker keeps the session and queues
    /// QoS 1 messages for it while it is away (or while the broker restarts, with
    /// persistence on).
    pub async fn connect_with(broker: SocketAddr, root: &str, persistent: bool) -> Self {
        Self::subscribe(broker, &format!("{root}/#"), persistent).await
    }

    /// Connects to `broker` and subscribes to `filter` only (a test that floods the bridge
    /// need not read every event to follow one topic); returns once subscribed.
    pub async fn subscribe(broker: SocketAddr, filter: &str, persistent: bool) -> Self {
        Self::subscribe_as(broker, filter, persistent, None).await
    }

    /// As [`Watcher::connect`], logging in as `user` with `password` (a broker with users).
    pub async fn connect_as(broker: SocketAddr, root: &str, user: &str, password: &str) -> Self {
        Self::subscribe_as(broker, &format!("{root}/#"), false, Some((user, password))).await
    }

    /// As [`Watcher::subscribe`], with a login when `login` is given.
    pub async fn subscribe_as(
        broker: SocketAddr,
        filter: &str,
        persistent: bool,
        login: Option<(&str, &str)>,
    ) -> Self {
        // Unique per watcher: a second client with the same id would take over the session.
        static WATCHERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = WATCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut opts = MqttOptions::new(
            format!("watcher-{}-{n}", std::process::id()),
            broker.ip().to_string(),
            broker.port(),
        );
        opts.set_clean_session(!persistent);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 4096);
        let (tx, rx) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let resubscribe = client.clone();
        let filter = filter.to_owned();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // (Re)subscribe on every connection: a broker that restarted forgot us.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = resubscribe.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(s) = subscribed_tx.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v = serde_json::from_slice(&p.payload)
                            .unwrap_or(Value::String(String::from_utf8_lossy(&p.payload).into()));
                        if tx.send((p.topic.clone(), v)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), subscribed)
            .await
            .expect("no SUBACK within 20 s")
            .expect("event loop ended");
        Self {
            client,
            events: rx,
            seen: Vec::new(),
        }
    }

    /// Publishes a submission (QoS 1).
    pub async fn submit(&self, root: &str, json: &str) {
        self.client
            .publish(
                format!("{root}/tasks/submit"),
                QoS::AtLeastOnce,
                false,
                json.as_bytes().to_vec(),
            )
            .await
            .expect("publish");
    }

    /// Publishes a cancel for task `id` (QoS 1).
    pub async fn cancel(&self, root: &str, id: &str) {
        self.client
            .publish(
                format!("{root}/tasks/{id}/cancel"),
                QoS::AtLeastOnce,
                false,
                Vec::new(),
            )
            .await
            .expect("publish");
    }

    /// Waits until the bridge says it is online again in a message seen after the first
    /// `since` (a restarted bridge's retained status, through the watcher's new subscription).
    pub async fn wait_online_again(&mut self, since: usize) {
        self.wait_for(Duration::from_secs(30), "the bridge online again", |seen| {
            seen[since..]
                .iter()
                .any(|(t, v)| t.ends_with("/bridge/status") && v["online"] == true)
        })
        .await;
    }

    /// Waits until the bridge says it is online.
    pub async fn wait_bridge_online(&mut self) {
        self.wait_online_again(0).await;
    }

    /// Waits until device `id`'s document says it is online.
    pub async fn wait_device_online(&mut self, id: &str) {
        let topic = format!("/devices/{id}");
        self.wait_for(Duration::from_secs(20), "the device online", |seen| {
            seen.iter()
                .any(|(t, v)| t.ends_with(&topic) && v["online"] == true)
        })
        .await;
    }

    /// Waits until `done` holds for what has been seen, or panics after `within`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        done: impl Fn(&[(String, Value)]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => self.seen.push(e),
                Ok(None) => panic!("watcher stopped while waiting for {what}"),
                Err(_) => {
                    // The whole history can be thousands of events: show its tail.
                    let tail = &self.seen[self.seen.len().saturating_sub(40)..];
                    panic!(
                        "timed out after {within:?} waiting for {what}; {} events seen, the last {}: {tail:#?}",
                        self.seen.len(),
                        tail.len()
                    )
                }
            }
        }
    }

    /// Submits an `echo` task `id` for `device` under `root` and waits (30 s at most) until
    /// it completed with its payload as its result.
    pub async fn echo_completes(&mut self, root: &str, id: &str, device: &str) {
        let payload = format!("payload of {id}");
        let task = serde_json::json!({"id": id, "capability": "echo", "device": device, "payload": payload});
        self.submit(root, &task.to_string()).await;
        self.wait_for(
            Duration::from_secs(30),
            &format!("{id} completed"),
            |seen| last_state(seen, id).as_deref() == Some("completed"),
        )
        .await;
        assert_eq!(
            self.states()[id].last().unwrap()["result"],
            payload.as_str()
        );
    }

    /// Whether `device`'s document has said it is offline.
    pub fn saw_offline(&self, device: &str) -> bool {
        let topic = format!("/devices/{device}");
        self.seen
            .iter()
            .any(|(t, v)| t.ends_with(&topic) && v["online"] == false)
    }

    /// The status events seen for each task id, in order.
    pub fn states(&self) -> HashMap<String, Vec<Value>> {
        let mut out: HashMap<String, Vec<Value>> = HashMap::new();
        for (topic, v) in &self.seen {
            if topic.ends_with("/status") && topic.contains("/tasks/") {
                if let Some(id) = v.get("id").and_then(Value::as_str) {
                    out.entry(id.to_owned()).or_default().push(v.clone());
                }
            }
        }
        out
    }
}

/// The last state of `id` among `seen`.
pub fn last_state(seen: &[(String, Value)], id: &str) -> Option<String> {
    seen.iter()
        .rev()
        .find(|(t, v)| t.ends_with("/status") && v.get("id").and_then(Value::as_str) == Some(id))
        .and_then(|(_, v)| v.get("state").and_then(Value::as_str).map(str::to_owned))
}

/// An HTTP response as [`http_request`] read it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request (`method` on `path`, no body) to `addr` over plain TCP and reads
/// the response to the end of the connection (the server closes it); 10 s at most for each
/// read and write. A client with nothing between the test and the server's bytes, so it sees
/// exactly what a scraper gets.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("read the response to its end");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of the response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("a header without ':': {l:?}"));
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A TCP proxy on loopback in front of a device link, to cut a device's connection and to
/// hold its reconnection (a Wi-Fi blip, a NAT rebinding, a device kept away for a while).
/// Connections are forwarded while the proxy is open; [`Proxy::cut`] ends every connection
/// it carries, [`Proxy::hold`] keeps new ones waiting (not forwarded) until
/// [`Proxy::release`]. It stops with its runtime.
#[derive(Debug)]
pub struct Proxy {
    /// Where devices connect.
    pub addr: SocketAddr,
    control: tokio::sync::watch::Sender<ProxyState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProxyState {
    /// Incremented by every cut: connections opened before it end.
    cuts: u64,
    held: bool,
}

impl Proxy {
    /// A proxy to `target` (the bridge's device link), listening on a free loopback port.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (control, state) = tokio::sync::watch::channel(ProxyState {
            cuts: 0,
            held: false,
        });
        tokio::spawn(async move {
            while let Ok((device, _)) = listener.accept().await {
                let mut state = state.clone();
                tokio::spawn(async move {
                    let born = state.borrow().cuts;
                    // Held: wait (bounded by the test's own deadlines) until released or cut.
                    while state.borrow().held && state.borrow().cuts == born {
                        if state.changed().await.is_err() {
                            return;
                        }
                    }
                    if state.borrow().cuts != born {
                        return;
                    }
                    let Ok(bridge) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut dr, mut dw) = device.into_split();
                    let (mut br, mut bw) = bridge.into_split();
                    let up = tokio::io::copy(&mut dr, &mut bw);
                    let down = tokio::io::copy(&mut br, &mut dw);
                    let cut = async {
                        while state.borrow().cuts == born {
                            if state.changed().await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        () = cut => {}
                    }
                });
            }
        });
        Self { addr, control }
    }

    /// Ends every connection the proxy carries now (both sides see the connection close).
    pub fn cut(&self) {
        self.control.send_modify(|s| s.cuts += 1);
    }

    /// New connections wait until [`release`](Self::release) instead of being forwarded.
    pub fn hold(&self) {
        self.control.send_modify(|s| s.held = true);
    }

    /// Forwards held connections and new ones again.
    pub fn release(&self) {
        self.control.send_modify(|s| s.held = false);
    }
}

/// The executions an `edge-device-sim --exec-log` file records: (boot id, handle) per line.
pub fn executions(path: &Path) -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l
                .split_whitespace()
                .map(|n| n.parse::<u32>().expect("a number"));
            (it.next().expect("boot id"), it.next().expect("handle"))
        })
        .collect()
}

/// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir`. The test needs it: no mount, no test (it fails,
    /// it does not skip).
    pub fn mount(dir: &Path, mib: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount is not installed (util-linux)");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and must run as root (or with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

impl Tmpfs {
    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `path` (a new file) until the disk is full, then gives `leave`
/// bytes back: less than the bridge's watermark, so it is "full" to the bridge, yet with
/// room for the work it has already accepted.
pub fn fill(path: &Path, leave: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x55u8; 256 * 1024];
    let mut written = 0u64;
    loop {
        match std::io::Write::write(&mut file, &chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    file.set_len(written.saturating_sub(leave)).unwrap();
    file.sync_all().unwrap();
}

/// A configuration for one test bridge: the embedded broker (with its defaults) and one
/// plain TCP device link, each on a free loopback port, kept across restarts.
pub fn embedded_config(bridge_id: &str) -> broker_config::Config {
    let [mqtt, devices] = free_ports();
    let mut broker = broker_config::BrokerConfig::default();
    if let broker_config::BrokerConfig::Embedded { listen, .. } = &mut broker {
        *listen = SocketAddr::from(([127, 0, 0, 1], mqtt));
    }
    broker_config::Config {
        bridge_id: bridge_id.into(),
        broker,
        links: vec![broker_config::LinkConfig::tcp(SocketAddr::from((
            [127, 0, 0, 1],
            devices,
        )))],
        ..broker_config::Config::default()
    }
}

/// A configuration for one test bridge on an external broker (mosquitto) at `port` on
/// loopback, with one plain TCP device link on a free loopback port, kept across restarts.
pub fn external_config(bridge_id: &str, port: u16) -> broker_config::Config {
    broker_config::Config {
        broker: broker_config::BrokerConfig::External {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            tls: None,
            max_packet_bytes: 1 << 16,
        },
        ..embedded_config(bridge_id)
    }
}

/// Runs `cmd` to its end (within `within`) and returns its status, stdout and stderr.
pub fn run_to_end(
    cmd: &mut Command,
    within: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Read;
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}
