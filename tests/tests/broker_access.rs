//! Who may use the embedded broker (review H3). With `broker.users_file`, every client logs in
//! and the bridge's client id is reserved to the bridge: a client with a valid login that
//! connects under it is refused, so it cannot take the bridge's session (its subscriptions and
//! the submissions queued for it) over. Without users (loopback), such a takeover cannot be
//! prevented, but it is never silent: the bridge logs it as an error.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use broker_config::BrokerConfig;
use edge_tests::{
    Watcher, embedded_config, free_port, issue_certificate, last_state, make_ca,
    start_bridge_with_log, write_config,
};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet};

const ROOT_OF: fn(&str) -> String = |bridge_id| format!("edge/{bridge_id}");

/// Connects with `client_id` and an optional login; the broker's answer: accepted or not.
async fn try_connect(broker: SocketAddr, client_id: &str, login: Option<(&str, &str)>) -> bool {
    let mut opts = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    opts.set_clean_session(false);
    if let Some((user, password)) = login {
        opts.set_credentials(user, password);
    }
    let (_client, mut eventloop) = AsyncClient::new(opts, 10);
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(_)) => return false,
                // rumqttd closes the connection of a refused login without a ConnAck.
                Err(ConnectionError::Io(_) | ConnectionError::MqttState(_)) => return false,
                Err(e) => panic!("unexpected MQTT error: {e}"),
            }
        }
    })
    .await
    .expect("the broker neither accepted nor refused within 10 s");
    drop(eventloop);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_users_the_bridges_client_id_cannot_be_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("mqtt-users");
    std::fs::write(&users, "# the application\napp:app-secret\n").unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = embedded_config("auth");
    if let BrokerConfig::Embedded { users_file, .. } = &mut config.broker {
        *users_file = Some(users);
    }
    let path = write_config(dir.path(), &config);
    let (bridge, mut log) = start_bridge_with_log(dir.path(), &path);
    let root = ROOT_OF("auth");

    assert!(
        !try_connect(bridge.mqtt, "anonymous-1", None).await,
        "a client without a login was accepted"
    );
    assert!(
        !try_connect(bridge.mqtt, "app-1", Some(("app", "wrong"))).await,
        "a wrong password was accepted"
    );
    assert!(
        !try_connect(bridge.mqtt, "edge-bridge-auth", Some(("app", "app-secret"))).await,
        "a user took the bridge's client id"
    );
    assert!(try_connect(bridge.mqtt, "app-1", Some(("app", "app-secret"))).await);

    let mut w = Watcher::connect_as(bridge.mqtt, &root, "app", "app-secret").await;
    w.submit(&root, r#"{"id":"after-attempts","capability":"echo"}"#)
        .await;
    w.wait_for(Duration::from_secs(20), "the submission queued", |seen| {
        last_state(seen, "after-attempts").is_some()
    })
    .await;
    log.wait_for(Duration::from_secs(5), "the refusals logged", |l| {
        l.contains("embedded broker refused a login")
    })
    .await;
    assert!(
        !log.drain()
            .iter()
            .any(|l| l.contains("MQTT connection failed")),
        "the bridge lost its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_users_a_takeover_of_the_bridges_client_id_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config("anon");
    let path = write_config(dir.path(), &config);
    let (bridge, mut log) = start_bridge_with_log(dir.path(), &path);
    let root = ROOT_OF("anon");
    let mut w = Watcher::connect(bridge.mqtt, &root).await;
    w.wait_bridge_online().await;

    assert!(try_connect(bridge.mqtt, "edge-bridge-anon", None).await);
    log.wait_for(Duration::from_secs(20), "the takeover logged", |l| {
        l.contains("ERROR") && l.contains("took its session")
    })
    .await;
    // The bridge takes its session back.
    w.submit(&root, r#"{"id":"after-takeover","capability":"echo"}"#)
        .await;
    w.wait_for(Duration::from_secs(30), "the submission queued", |seen| {
        last_state(seen, "after-takeover").is_some()
    })
    .await;
}

/// MQTT over TLS to the embedded broker (`broker.tls`): a client that trusts the broker's CA
/// logs in and submits; the connection is refused without TLS; clients beyond the handshake
/// cap are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_takes_mqtt_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca", "/CN=edge test CA");
    issue_certificate(
        dir.path(),
        "broker",
        "localhost",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    let users = dir.path().join("mqtt-users");
    std::fs::write(&users, "app:app-secret\n").unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tls_port = free_port();
    let mut config = embedded_config("tls");
    if let BrokerConfig::Embedded {
        users_file, tls, ..
    } = &mut config.broker
    {
        *users_file = Some(users);
        *tls = Some(broker_config::EmbeddedTls {
            listen: SocketAddr::from(([127, 0, 0, 1], tls_port)),
            cert_file: dir.path().join("broker.pem"),
            key_file: dir.path().join("broker.key"),
            max_handshakes: 4,
        });
    }
    let path = write_config(dir.path(), &config);
    let (bridge, mut log) = start_bridge_with_log(dir.path(), &path);
    let root = ROOT_OF("tls");
    let mut w = Watcher::connect_as(bridge.mqtt, &root, "app", "app-secret").await;

    // Four connections that never start their handshake hold every handshake place: a fifth
    // is closed at once, and logged.
    let idle: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap())
        .collect();
    // The listener accepts in arrival order, so these four hold the places before the fifth.
    let mut fifth = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut fifth, &mut byte).expect("closed, not timed out");
    assert_eq!(n, 0, "the connection beyond the cap was not closed");
    log.wait_for(Duration::from_secs(5), "the refusal logged", |l| {
        l.contains("too many handshakes in progress")
    })
    .await;
    drop(idle);

    let mosquitto_pub = |port: u16, tls: bool, id: &str| {
        let mut cmd = std::process::Command::new("mosquitto_pub");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-u", "app", "-P", "app-secret"])
            .args(["-t", &format!("{}/tasks/submit", ROOT_OF("tls"))])
            .args(["-m", &format!(r#"{{"id":"{id}","capability":"echo"}}"#)]);
        if tls {
            cmd.arg("--cafile").arg(dir.path().join("ca.pem"));
        }
        cmd.output()
            .expect("mosquitto_pub (package mosquitto-clients) must be installed")
    };
    // Plain MQTT on the TLS port is not MQTT over TLS.
    let plain = mosquitto_pub(tls_port, false, "plain-1");
    assert!(
        !plain.status.success(),
        "plain MQTT was taken on the TLS port"
    );
    let out = mosquitto_pub(tls_port, true, "over-tls-1");
    assert!(
        out.status.success(),
        "mosquitto_pub over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.wait_for(
        Duration::from_secs(20),
        "the submission over TLS queued",
        |seen| last_state(seen, "over-tls-1").is_some(),
    )
    .await;
    assert!(last_state(&w.seen, "plain-1").is_none());
}
