//! The configuration checked whole before anything opens (issue 17, point 5): `edge-bridge
//! check-config` lists every problem with its key and value, `run` stops on the same list
//! before it creates the data directory, and a second bridge on a data directory in use
//! stops at once, naming it, while the first goes on.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use broker_config::{BrokerConfig, Config, LinkConfig};
use edge_tests::{
    Watcher, binary, embedded_config, run_to_end, start_bridge_with_config, start_device,
    write_config,
};

/// `edge-bridge check-config FILE`.
fn check_config(file: &Path) -> (std::process::ExitStatus, String, String) {
    run_to_end(
        Command::new(binary("edge-bridge"))
            .arg("check-config")
            .arg(file),
        Duration::from_secs(20),
    )
}

/// A TLS device link on `listen` whose three files are `cert`, `key` and `ca`.
fn tls_link(listen: SocketAddr, cert: &Path, key: &Path, ca: &Path) -> LinkConfig {
    LinkConfig::Tls {
        listen,
        cert_file: cert.to_owned(),
        key_file: key.to_owned(),
        client_ca_file: ca.to_owned(),
        handshake_timeout: Duration::from_secs(10),
        max_connections: 8,
        max_connections_per_address: 8,
        max_handshakes: 8,
    }
}

/// A configuration of the embedded broker on `mqtt` with `links`, its data in `dir/data`.
fn config(dir: &Path, mqtt: SocketAddr, links: Vec<LinkConfig>) -> Config {
    let mut config = embedded_config("check");
    if let BrokerConfig::Embedded { listen, .. } = &mut config.broker {
        *listen = mqtt;
    }
    config.links = links;
    config.data_dir = dir.join("data");
    config
}

#[test]
fn a_valid_file_passes_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config("gw1");
    config.data_dir = dir.path().join("data");
    let file = write_config(dir.path(), &config);
    let (status, out, err) = check_config(&file);
    assert!(status.success(), "{err}");
    assert!(
        out.starts_with(&format!("{}: ok: bridge gw1, ", file.display())),
        "{out}"
    );
    assert!(out.contains("links tcp:127.0.0.1:"), "{out}");
    // Checked, not made.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_file_with_several_problems_lists_each_with_its_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let mqtt = SocketAddr::from(([127, 0, 0, 1], edge_tests::free_port()));
    let mut config = config(
        dir.path(),
        mqtt,
        vec![
            // The broker's port, on every address: the link could not listen.
            LinkConfig::tcp(SocketAddr::from(([0, 0, 0, 0], mqtt.port()))),
            tls_link(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                &missing,
                &missing,
                &missing,
            ),
            tls_link(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                &garbage,
                &garbage,
                &garbage,
            ),
        ],
    );
    config.bridge_id = "no spaces".into();
    config.queue.limit = 0;
    let file = write_config(dir.path(), &config);
    let (status, out, err) = check_config(&file);
    assert!(!status.success(), "{out}");
    let m = missing.display();
    let g = garbage.display();
    let enoent = "cannot open: No such file or directory (os error 2)";
    let expected = [
        format!(
            "edge-bridge: {}: 7 problems in the configuration:",
            file.display()
        ),
        "  bridge_id = \"no spaces\": 1 to 64 letters, digits, '-', '_' or '.'".to_owned(),
        "  queue.limit = 0: at least 1".to_owned(),
        format!("  link[1].cert_file = \"{m}\": {enoent}"),
        format!("  link[1].key_file = \"{m}\": {enoent}"),
        format!("  link[1].client_ca_file = \"{m}\": {enoent}"),
        format!(
            "  link[0].listen = \"0.0.0.0:{p}\": tcp port {p} is taken by broker.listen ({mqtt}) already",
            p = mqtt.port()
        ),
        format!("  link[2].cert_file = \"{g}\": no PEM certificate in it"),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines, expected, "{err}");
}

#[test]
fn an_unknown_cipher_suite_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let link: LinkConfig = toml::from_str(
        "kind = \"dtls\"\nlisten = \"127.0.0.1:0\"\n\
         psk = { \"dev-1\" = \"00112233445566778899aabbccddeeff\" }\n\
         ciphers = \"PSK-AES128-CCM8:PSK-AES128-CCM9\"\n",
    )
    .unwrap();
    let config = config(
        dir.path(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![link],
    );
    let (status, _, err) = check_config(&write_config(dir.path(), &config));
    assert!(!status.success());
    assert!(
        err.contains(
            "  link[0].ciphers = \"PSK-AES128-CCM8:PSK-AES128-CCM9\": no such cipher suite \"PSK-AES128-CCM9\" (known: PSK-AES128-CCM8:"
        ),
        "{err}"
    );
}

#[test]
fn run_with_a_missing_certificate_stops_before_it_opens_anything() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let config = config(
        dir.path(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
        vec![tls_link(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &missing,
            &missing,
            &missing,
        )],
    );
    let file = write_config(dir.path(), &config);
    let (status, _, err) = run_to_end(
        Command::new(binary("edge-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        err.contains(&format!(
            "  link[0].cert_file = \"{}\": cannot open: No such file or directory (os error 2)",
            missing.display()
        )),
        "{err}"
    );
    // The OS error once per line, not repeated by a cause that says it again.
    for line in err.lines() {
        assert!(line.matches("os error 2").count() <= 1, "{line}");
    }
    // Neither the data directory nor the queue was made.
    assert!(!dir.path().join("data").exists(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bridge_on_a_data_directory_in_use_stops_at_once_and_the_first_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let first_config = embedded_config("first");
    let first = start_bridge_with_config(dir.path(), &first_config);
    let data = dir.path().join("data");
    // Another bridge (its own ports) on the same directory.
    let other = tempfile::tempdir().unwrap();
    let mut second = embedded_config("second");
    second.data_dir = data.clone();
    let file = write_config(other.path(), &second);
    let started = Instant::now();
    let (status, _, err) = run_to_end(
        Command::new(binary("edge-bridge"))
            .arg("run")
            .arg("--config")
            .arg(&file),
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let expected = format!(
        "edge-bridge: data directory {} is in use by another edge-bridge, pid {} (lock held on {})",
        data.display(),
        first.proc.child.id(),
        data.join("edge-bridge.lock").display()
    );
    assert_eq!(err.trim_end(), expected);
    // The first bridge goes on: a device connects and a task completes.
    let _device = start_device(first.devices, "dev-1", &["echo"]);
    let mut w = Watcher::connect(first.mqtt, "edge/first").await;
    w.wait_device_online("dev-1").await;
    w.echo_completes("edge/first", "after-second", "dev-1")
        .await;
}
