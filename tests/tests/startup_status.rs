//! A bridge that starts says it is online and nothing else: its first connection to the
//! broker is never dropped half-made. (The MQTT driver used to drop the event loop's future
//! whenever a publication arrived while it connected; rumqttc's connection set-up is not
//! cancel-safe, so the new connection closed right after its CONNACK, and the broker
//! published the bridge's last will, `{"online":false,"reason":"connection lost"}`, at
//! some starts.) Twenty starts against mosquitto, watched from before each (the old driver
//! failed one of three runs of five starts).

use std::net::SocketAddr;
use std::time::Duration;

use edge_tests::{Watcher, external_config, start_bridge_with_config, start_mosquitto, terminate};

const ROOT: &str = "edge/startup";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_bridge_never_publishes_its_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    let mut w = Watcher::subscribe(broker, &format!("{ROOT}/bridge/status"), false).await;
    let config = external_config("startup", port);
    for start in 0..20 {
        let since = w.seen.len();
        let bridge = start_bridge_with_config(dir.path(), &config);
        w.wait_online_again(since).await;
        // Its stats go out right after it connects: the moment the old driver dropped the
        // connection being made. Stop it cleanly, and see what the broker said meanwhile.
        let status = terminate(bridge.proc);
        assert!(
            status.success(),
            "start {start}: the bridge exited with {status}"
        );
        w.wait_for(
            Duration::from_secs(20),
            "the offline status of the stop",
            |seen| {
                seen[since..]
                    .iter()
                    .any(|(_, v)| v["online"] == false && v["reason"] == "stopped")
            },
        )
        .await;
        let will: Vec<_> = w.seen[since..]
            .iter()
            .filter(|(_, v)| v["reason"] == "connection lost")
            .collect();
        assert!(
            will.is_empty(),
            "start {start}: the last will was published: {will:?}"
        );
    }
}
