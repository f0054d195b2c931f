//! The bridge reaches an external broker over TLS with a client certificate: mosquitto with a
//! TLS listener that requires one (certificates made by the `openssl` command for the test),
//! and a task completes through it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edge_tests::{
    Proc, Watcher, free_port, issue_certificate, last_state, make_ca, run_mosquitto, start_bridge,
    start_device,
};

const ROOT: &str = "edge/tls";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn make_certificates(dir: &Path) {
    make_ca(dir, "ca", "/CN=edge test CA");
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        issue_certificate(dir, name, name, "ca", ext);
    }
}

/// mosquitto with a plain listener (for the test's own client) and a TLS listener that
/// requires a client certificate signed by the test CA (for the bridge).
fn start_tls_mosquitto(dir: &Path, plain: u16, tls: u16) -> Proc {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nper_listener_settings false\nallow_anonymous true\nmax_queued_messages 0\n\
             listener {plain} 127.0.0.1\n\
             listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
             keyfile {d}/server.key\nrequire_certificate true\n",
            d = dir.display()
        ),
    )
    .unwrap();
    run_mosquitto(&conf, &[plain, tls])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_flow_through_a_broker_reached_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let (plain, tls) = (free_port(), free_port());
    let _mosquitto = start_tls_mosquitto(dir.path(), plain, tls);
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"tls\"\n[broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {tls}\n\
             [broker.tls]\nca_file = \"{d}/ca.pem\"\nclient_cert = \"{d}/client.pem\"\nclient_key = \"{d}/client.key\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    // The ready line comes only once the bridge's subscriptions over TLS are acknowledged.
    let bridge = start_bridge(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut w = Watcher::connect(([127, 0, 0, 1], plain).into(), ROOT).await;
    let _device = start_device(bridge.devices, "dev-t", &["echo"]);
    w.submit(
        ROOT,
        r#"{"id":"t","capability":"echo","payload":"over tls"}"#,
    )
    .await;
    w.wait_for(Duration::from_secs(30), "t completed", |seen| {
        last_state(seen, "t").as_deref() == Some("completed")
    })
    .await;
    assert_eq!(w.states()["t"].last().unwrap()["result"], "over tls");
}

/// A CA file that holds no certificate stops the bridge at start, with a message naming it
/// (not a silent retry loop).
#[test]
fn a_bad_ca_file_stops_the_bridge_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "garbage\n").unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = 1\n[broker.tls]\nca_file = \"{}/ca.pem\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(edge_tests::binary("edge-bridge"))
        .args(["run", "--config", config.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--device-listen", "127.0.0.1:0"])
        .output()
        .expect("run edge-bridge");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ca.pem") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}
