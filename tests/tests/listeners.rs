//! Stream device listeners (plain TCP, TLS) against hostile peers (issue 15, points 4 and 9),
//! with the real bridge, real sockets on loopback and the rogue device of
//! [`edge_tests::rogue`] as the hostile one: logs of bad frames within a budget.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use broker_config::LinkConfig;
use edge_tests::rogue::{Rogue, hello};
use edge_tests::{Bridge, LogLines, embedded_config, start_bridge_with_log, write_config};

/// Every wait of these tests is bounded by this, unless it says otherwise.
const WAIT: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A bridge whose device links are `links` (each on a free port), its log captured.
fn start(dir: &Path, links: Vec<LinkConfig>) -> (Bridge, LogLines) {
    let mut config = embedded_config("listeners");
    config.links = links;
    let file = write_config(dir, &config);
    start_bridge_with_log(&dir.join("data"), &file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_bad_frames_cost_a_handful_of_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), vec![LinkConfig::Tcp { listen: any_port() }]);
    let mut rogue = Rogue::tcp(bridge.devices).await.unwrap();
    // 5,000 bad frames ("a", then the delimiter), then a proper session: once it is welcomed,
    // the bridge has read every one of them.
    rogue.send_raw(&b"a\0".repeat(5_000)).await.unwrap();
    rogue.open(hello("noisy", 1), WAIT).await.unwrap();
    log.wait_for(WAIT, "the noisy device connected", |l| {
        l.contains("device connected") && l.contains("device=noisy")
    })
    .await;
    let bad: Vec<&String> = log
        .seen
        .iter()
        .filter(|l| l.contains("dropped a bad frame"))
        .collect();
    assert!(
        !bad.is_empty() && bad.len() <= 5,
        "{} lines about bad frames",
        bad.len()
    );
    assert!(bad[0].contains("bad_frames=1"), "{}", bad[0]);
}
