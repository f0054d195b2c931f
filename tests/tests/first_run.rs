//! What a new user meets when trying the README: the simulator's own help and version, the
//! bridge's status naming the configured bridge id, logs without colour codes in a file, a
//! ready line that says what each link is, error messages that print an OS error once, and
//! JSON logs for log collectors.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broker_config::LinkConfig;
use edge_tests::{
    Watcher, binary, embedded_config, run_to_end, start_bridge, terminate, wait_ready, write_config,
};

#[test]
fn the_simulator_names_itself_in_its_version_and_help() {
    let sim = binary("edge-device-sim");
    let (status, version, _) =
        run_to_end(Command::new(&sim).arg("--version"), Duration::from_secs(10));
    assert!(status.success());
    assert!(
        version.starts_with("edge-device-sim "),
        "--version printed {version:?}"
    );
    let (status, help, _) = run_to_end(Command::new(&sim).arg("--help"), Duration::from_secs(10));
    assert!(status.success());
    assert!(
        help.contains("Usage: edge-device-sim"),
        "--help printed {help:?}"
    );
    assert!(
        !help.contains("durable task queue"),
        "--help shows the bridge's description: {help:?}"
    );
}

#[test]
fn the_simulator_long_help_documents_each_capability_payload() {
    let (status, help, _) = run_to_end(
        Command::new(binary("edge-device-sim")).arg("--help"),
        Duration::from_secs(10),
    );
    assert!(status.success());
    for needle in [
        "echo",
        "sleep",
        r#"{"ms":N}"#,
        r#"{"slept_ms":N}"#,
        "fail",
        "flaky",
        "count",
        r#"{"steps":N}"#,
        "--psk-file",
    ] {
        assert!(help.contains(needle), "no {needle:?} in --help: {help}");
    }
}

#[test]
fn the_bridge_names_itself_and_refuses_a_bad_command_line_with_status_2() {
    let bridge = binary("edge-bridge");
    let (status, version, _) = run_to_end(
        Command::new(&bridge).arg("--version"),
        Duration::from_secs(10),
    );
    assert!(status.success());
    assert!(
        version.starts_with("edge-bridge "),
        "--version printed {version:?}"
    );
    let (status, help, _) = run_to_end(
        Command::new(&bridge).args(["help", "submit"]),
        Duration::from_secs(10),
    );
    assert!(status.success());
    assert!(help.contains("Usage: edge-bridge submit"), "{help}");
    // A mistake is reported on stderr, naming the option, with status 2 (as a client
    // command that could not do its work), and nothing runs.
    let (status, out, err) = run_to_end(
        Command::new(&bridge).args(["submit", "--capability", "echo", "--windw", "5"]),
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(2), "stdout {out:?} stderr {err:?}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("no option --windw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_status_carries_the_configured_bridge_id() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(&dir.path().join("data"), &["--bridge-id", "gw1"]);
    let mut w = Watcher::subscribe(bridge.mqtt, "edge/gw1/bridge/status", false).await;
    w.wait_bridge_online().await;
    let (_, status) = w
        .seen
        .iter()
        .find(|(_, v)| v["online"] == true)
        .expect("an online status");
    assert_eq!(status["bridge_id"], "gw1", "{status}");
    assert_eq!(status["client_id"], "edge-bridge-gw1", "{status}");
}

/// Starts a bridge on `config` (written into `dir`) with stderr going to `dir/bridge.log`,
/// `env` applied, and returns it with the log's path.
fn start_logging_to_file(
    dir: &Path,
    config: &broker_config::Config,
    env: &[(&str, &str)],
    args: &[&str],
) -> (edge_tests::Bridge, std::path::PathBuf) {
    let file = write_config(dir, config);
    let log = dir.join("bridge.log");
    let mut cmd = Command::new(binary("edge-bridge"));
    cmd.arg("run")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("EDGE_BRIDGE_LOG_FORMAT")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    (wait_ready(cmd.spawn().expect("spawn edge-bridge")), log)
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, log) = start_logging_to_file(dir.path(), &embedded_config("plain"), &[], &[]);
    assert!(terminate(bridge.proc).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("queue opened"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
}

#[test]
fn the_ready_line_names_each_links_kind_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("kinds");
    // A port not plugged in yet: the bridge starts and keeps trying it.
    let port = dir.path().join("ttyUSB-not-plugged");
    config.links.push(LinkConfig::Serial {
        path: port.clone(),
        baud: 115_200,
    });
    let file = write_config(dir.path(), &config);
    let mut child = Command::new(binary("edge-bridge"))
        .arg("run")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let proc = edge_tests::Proc {
        child,
        name: "edge-bridge",
    };
    let line = edge_tests::read_line_with_deadline(stdout, Duration::from_secs(30))
        .expect("no ready line within 30 s");
    let LinkConfig::Tcp { listen, .. } = &config.links[0] else {
        unreachable!()
    };
    assert_eq!(
        line.trim_end(),
        format!(
            "edge-bridge ready: mqtt={} links=tcp:{listen},serial:{}",
            match &config.broker {
                broker_config::BrokerConfig::Embedded { listen, .. } => *listen,
                _ => unreachable!(),
            },
            port.display()
        )
    );
    drop(proc);
}

#[test]
fn a_missing_certificate_is_reported_with_its_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("nocert");
    let missing = dir.path().join("missing.pem");
    config.links.push(LinkConfig::Tls {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        cert_file: missing.clone(),
        key_file: missing.clone(),
        client_ca_file: missing.clone(),
        handshake_timeout: Duration::from_secs(10),
        max_connections: 8,
        max_connections_per_address: 8,
        max_handshakes: 8,
    });
    let file = write_config(dir.path(), &config);
    let (status, _, err) = run_to_end(
        Command::new(binary("edge-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data")),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(err.contains(&missing.display().to_string()), "{err}");
    for line in err.lines().filter(|l| l.contains("missing.pem")) {
        assert_eq!(
            line.matches("No such file or directory").count(),
            1,
            "the OS error twice in {line:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, log) = start_logging_to_file(
        dir.path(),
        &embedded_config("json"),
        &[],
        &["--log-format", "json"],
    );
    assert!(terminate(bridge.proc).success());
    let text = std::fs::read_to_string(&log).unwrap();
    let mut ready = None;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        if v["fields"]["message"] == "ready" {
            ready = Some(v);
        }
    }
    let ready = ready.unwrap_or_else(|| panic!("no ready line in {text}"));
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["fields"]["mqtt"], bridge.mqtt.to_string());
    assert_eq!(
        ready["fields"]["links"],
        format!("tcp:{}", bridge.devices),
        "{ready}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_can_be_chosen_by_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, log) = start_logging_to_file(
        dir.path(),
        &embedded_config("jsonenv"),
        &[("EDGE_BRIDGE_LOG_FORMAT", "json")],
        &[],
    );
    assert!(terminate(bridge.proc).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() > 1, "{text}");
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    }
}

/// `edge-device-sim --dtls --psk-file FILE` with `args` before it, to its end: a credential it
/// refuses ends it at once.
fn sim_with_psk_file(file: &Path) -> (std::process::ExitStatus, String) {
    let (status, _, err) = run_to_end(
        Command::new(binary("edge-device-sim"))
            .args(["--dtls", "--connect", "127.0.0.1:9", "--id", "dev-1"])
            .args(["--capability", "echo", "--psk-file"])
            .arg(file),
        Duration::from_secs(10),
    );
    (status, err)
}

#[test]
fn a_psk_file_the_simulator_cannot_use_is_named_without_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.psk");
    let (status, err) = sim_with_psk_file(&missing);
    assert!(!status.success());
    assert_eq!(
        err.trim_end(),
        format!(
            "edge-device-sim: --psk-file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let bad = dir.path().join("bad.psk");
    std::fs::write(&bad, "secret-not-hex-0123456789abcdef0\n").unwrap();
    let (status, err) = sim_with_psk_file(&bad);
    assert!(!status.success());
    assert_eq!(
        err.trim_end(),
        format!(
            "edge-device-sim: --psk-file {}: a key is hex digits only",
            bad.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_device_proves_its_id_with_a_psk_file() {
    const KEY: &str = "00112233445566778899aabbccddeeff";
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("pskfile");
    config.links = vec![
        toml::from_str(&format!(
            "kind = \"dtls\"\nlisten = \"127.0.0.1:0\"\npsk = {{ \"dev-1\" = \"{KEY}\" }}\n"
        ))
        .unwrap(),
    ];
    // The file alone chooses the links (start_bridge_with_config would replace them with TCP).
    let (bridge, _log) = edge_tests::start_bridge_with_log(
        &dir.path().join("data"),
        &write_config(dir.path(), &config),
    );
    let file = dir.path().join("dev-1.psk");
    // As `cut -d: -f2 devices.psk` writes it: the key and a newline.
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    let file = file.display().to_string();
    let _device = edge_tests::start_device_with(
        bridge.devices,
        "dev-1",
        &["echo"],
        &["--dtls", "--psk-file", &file],
    );
    let mut w = Watcher::connect(bridge.mqtt, "edge/pskfile").await;
    w.wait_device_online("dev-1").await;
    w.echo_completes("edge/pskfile", "over-dtls", "dev-1").await;
}

#[test]
fn the_simulators_log_in_a_file_carries_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sim.log");
    // Nothing listens on the discard port of loopback: the simulator logs a failed
    // connection at once, and keeps trying.
    let child = Command::new(binary("edge-device-sim"))
        .args([
            "--connect",
            "127.0.0.1:9",
            "--id",
            "dev-1",
            "--capability",
            "echo",
        ])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _sim = edge_tests::Proc {
        child,
        name: "edge-device-sim",
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("cannot connect") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no failed connection logged: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
}
