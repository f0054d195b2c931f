//! Stopping the bridge as a service manager does.

use std::net::SocketAddr;
use std::time::Duration;

use broker_config::{BrokerConfig, Config, LinkConfig};
use edge_tests::{Watcher, start_bridge_with_config, start_mosquitto, terminate};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const ROOT: &str = "edge/stop";

/// The retained `{ROOT}/bridge/status`, read by a new client (what a dashboard connecting
/// later sees).
async fn retained_status(broker: SocketAddr) -> Value {
    let opts = MqttOptions::new("late-reader", broker.ip().to_string(), broker.port());
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    client
        .subscribe(format!("{ROOT}/bridge/status"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let read = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.expect("connected")
            {
                return serde_json::from_slice(&p.payload).expect("JSON status");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a retained status within 20 s")
}

/// SIGTERM (how systemd and init stop a service) stops the bridge cleanly: exit status 0,
/// and the retained status says it stopped — not the last will's "connection lost", which
/// the broker discards on a clean DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_bridge_cleanly_and_the_status_says_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let config = Config {
        bridge_id: "stop".into(),
        broker: BrokerConfig::External {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            tls: None,
            max_packet_bytes: 1 << 16,
        },
        links: vec![LinkConfig::Tcp {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }],
        ..Config::default()
    };
    let bridge = start_bridge_with_config(dir.path(), &config);
    let mut watcher = Watcher::connect(bridge.mqtt, ROOT).await;
    watcher
        .wait_for(Duration::from_secs(20), "the bridge online", |seen| {
            seen.iter()
                .any(|(t, v)| t.ends_with("/bridge/status") && v["online"] == true)
        })
        .await;

    let status = terminate(bridge.proc);
    assert!(status.success(), "SIGTERM: {status}");
    watcher
        .wait_for(Duration::from_secs(20), "the offline status", |seen| {
            seen.iter()
                .any(|(t, v)| t.ends_with("/bridge/status") && v["online"] == false)
        })
        .await;
    let status = retained_status(bridge.mqtt).await;
    assert_eq!(status["online"], false, "{status}");
    assert_eq!(status["reason"], "stopped", "{status}");
}
