//! End to end: MQTT client -> bridge -> device simulator -> back, with the embedded broker and
//! with a real mosquitto.

use std::time::Duration;

use edge_tests::{Watcher, last_state, start_bridge, start_device, start_mosquitto};
use serde_json::json;

const ROOT: &str = "edge/e2e";

/// Submits tasks before any device is online (they wait in the queue), then starts a device:
/// every task reaches its terminal state with the right result; bad input is rejected with
/// its code; garbage goes to the errors topic.
async fn tasks_flow_through(mqtt: std::net::SocketAddr, devices: std::net::SocketAddr) {
    let mut w = Watcher::connect(mqtt, ROOT).await;
    for i in 0..5 {
        w.submit(
            ROOT,
            &json!({"id": format!("early-{i}"), "capability": "echo", "payload": {"n": i}})
                .to_string(),
        )
        .await;
    }
    w.submit(ROOT, r#"{"id":"bad","capability":"echo","priority":7}"#)
        .await;
    w.submit(ROOT, "not json").await;
    w.wait_for(Duration::from_secs(20), "early tasks queued", |seen| {
        (0..5).all(|i| last_state(seen, &format!("early-{i}")).as_deref() == Some("queued"))
    })
    .await;

    let _device = start_device(devices, "dev-1", &["echo", "sleep"]);
    w.submit(
        ROOT,
        r#"{"id":"nap","capability":"sleep","payload":{"ms":200},"priority":"P1"}"#,
    )
    .await;
    w.wait_for(Duration::from_secs(30), "every task terminal", |seen| {
        (0..5).all(|i| last_state(seen, &format!("early-{i}")).as_deref() == Some("completed"))
            && last_state(seen, "nap").as_deref() == Some("completed")
            && last_state(seen, "bad").as_deref() == Some("rejected")
            && seen.iter().any(|(t, _)| t.ends_with("/errors"))
    })
    .await;

    let states = w.states();
    for i in 0..5 {
        let events = &states[&format!("early-{i}")];
        let last = events.last().unwrap();
        assert_eq!(last["result"], json!({"n": i}), "early-{i}: {events:#?}");
        assert_eq!(last["device"], "dev-1");
        let terminal = events.iter().filter(|e| e["state"] == "completed").count();
        assert_eq!(terminal, 1, "exactly one terminal event for early-{i}");
    }
    assert_eq!(
        states["nap"].last().unwrap()["result"],
        json!({"slept_ms": 200})
    );
    assert_eq!(
        states["bad"].last().unwrap()["error"]["code"],
        "invalid_priority"
    );
    let errors: Vec<_> = w
        .seen
        .iter()
        .filter(|(t, _)| t.ends_with("/errors"))
        .collect();
    assert_eq!(errors[0].1["error"]["code"], "malformed_json");
    let device_doc = w
        .seen
        .iter()
        .rev()
        .find(|(t, _)| t.ends_with("/devices/dev-1"))
        .expect("device document");
    assert_eq!(device_doc.1["online"], true);
    assert_eq!(device_doc.1["capabilities"], json!(["echo", "sleep"]));
    assert!(
        w.seen
            .iter()
            .any(|(t, v)| t.ends_with("/bridge/status") && v["online"] == true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_with_the_embedded_broker() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = start_bridge(dir.path(), &["--bridge-id", "e2e"]);
    tasks_flow_through(bridge.mqtt, bridge.devices).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_with_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, format!("bridge_id = \"e2e\"\n[broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {port}\n")).unwrap();
    let bridge = start_bridge(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(bridge.mqtt.port(), port);
    tasks_flow_through(bridge.mqtt, bridge.devices).await;
}
