//! Retained device documents do not pile up (review L5): a device offline for
//! `devices.forget_after` has its document cleared from the broker, so a new subscriber no
//! longer gets it; a device that comes back is published again.

use std::time::Duration;

use edge_tests::{Watcher, embedded_config, start_bridge_with_config, start_device};

const ROOT: &str = "edge/forget";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_long_enough_leaves_no_retained_document() {
    let dir = tempfile::tempdir().unwrap();
    let config = broker_config::Config {
        devices: broker_config::DevicesConfig {
            forget_after: Duration::from_secs(1),
        },
        ..embedded_config("forget")
    };
    let bridge = start_bridge_with_config(dir.path(), &config);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let device = start_device(bridge.devices, "gone-1", &["echo"]);
    w.wait_device_online("gone-1").await;
    drop(device);
    let topic = format!("{ROOT}/devices/gone-1");
    w.wait_for(Duration::from_secs(30), "the document cleared", |seen| {
        seen.iter()
            .any(|(t, v)| t == &topic && v == &serde_json::Value::String(String::new()))
    })
    .await;
    let offline_first = w
        .seen
        .iter()
        .position(|(t, v)| t == &topic && v["online"] == false)
        .expect("the offline document came first");
    let clear = w
        .seen
        .iter()
        .position(|(t, v)| t == &topic && v == &serde_json::Value::String(String::new()))
        .unwrap();
    assert!(offline_first < clear);

    // A new subscriber gets no document for it: only a live marker after subscribing.
    let mut fresh = Watcher::subscribe(bridge.mqtt, &format!("{ROOT}/devices/#"), false).await;
    let _other = start_device(bridge.devices, "marker-1", &["echo"]);
    fresh.wait_device_online("marker-1").await;
    assert!(
        !fresh.seen.iter().any(|(t, _)| t == &topic),
        "the broker still holds gone-1's document: {:?}",
        fresh.seen
    );
}
