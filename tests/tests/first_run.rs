//! What a new user meets when trying the README: the bridge's status naming the configured
//! bridge id.

use edge_tests::{Watcher, start_bridge};

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
