//! Who may use the embedded broker (review H3). With `broker.users_file`, every client logs in
//! and the bridge's client id is reserved to the bridge: a client with a valid login that
//! connects under it is refused, so it cannot take the bridge's session (its subscriptions and
//! the submissions queued for it) over. Without users (loopback), such a takeover cannot be
//! prevented, but it is never silent: the bridge logs it as an error.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use broker_config::BrokerConfig;
use edge_tests::{Watcher, embedded_config, last_state, start_bridge_with_log, write_config};
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
