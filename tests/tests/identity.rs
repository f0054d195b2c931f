//! Identity per device id, not per link (review H4): once a device has proven its id with a
//! TLS client certificate, a process on a link without credentials (plain TCP here; a serial
//! cable alike) that claims the same id is closed. The real device keeps its session and its
//! tasks; the impostor runs nothing.

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::{
    Watcher, executions, free_ports, last_state, make_link_certificates, start_bridge_with_log,
    start_device_with,
};

const ROOT: &str = "edge/ident";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_without_credentials_cannot_claim_an_id_a_certificate_proved() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_link_certificates(d, "/CN=edge devices CA", &["dev-a"]);
    let [tls, tcp] = free_ports().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
    let file = |name: &str| d.join(name).display().to_string();
    let config = d.join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "bridge_id = \"ident\"\n\
             [broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\
             [[link]]\nkind = \"tls\"\nlisten = \"{tls}\"\n\
             cert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n\
             [[link]]\nkind = \"tcp\"\nlisten = \"{tcp}\"\n",
            file("bridge.pem"),
            file("bridge.key"),
            file("ca.pem"),
        ),
    )
    .unwrap();
    let (bridge, mut log) = start_bridge_with_log(&d.join("data"), &config);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;

    let real_log = d.join("real.log");
    let _real = start_device_with(
        tls,
        "dev-a",
        &["echo"],
        &[
            "--tls-ca",
            &file("ca.pem"),
            "--tls-cert",
            &file("dev-a.pem"),
            "--tls-key",
            &file("dev-a.key"),
            "--exec-log",
            &real_log.display().to_string(),
        ],
    );
    w.wait_device_online("dev-a").await;
    let documents_before = w
        .seen
        .iter()
        .filter(|(t, _)| t.ends_with("/devices/dev-a"))
        .count();

    let impostor_log = d.join("impostor.log");
    let _impostor = start_device_with(
        tcp,
        "dev-a",
        &["echo"],
        &["--exec-log", &impostor_log.display().to_string()],
    );
    log.wait_for(WAIT, "the impostor's link closed", |l| {
        l.contains("claimed a device id that a credential proved")
    })
    .await;

    for n in 0..4 {
        w.submit(
            ROOT,
            &format!(r#"{{"id":"t{n}","capability":"echo","device":"dev-a","payload":{n}}}"#),
        )
        .await;
    }
    w.wait_for(WAIT, "every task completed", |seen| {
        (0..4).all(|n| last_state(seen, &format!("t{n}")).as_deref() == Some("completed"))
    })
    .await;
    assert_eq!(executions(&real_log).len(), 4, "the real device ran them");
    assert!(
        executions(&impostor_log).is_empty(),
        "the impostor ran tasks"
    );
    let documents: Vec<_> = w
        .seen
        .iter()
        .filter(|(t, _)| t.ends_with("/devices/dev-a"))
        .skip(documents_before)
        .collect();
    assert!(
        documents.is_empty(),
        "dev-a's document changed after the impostor came: {documents:?}"
    );
}
