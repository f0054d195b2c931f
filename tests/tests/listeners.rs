//! Stream device listeners (plain TCP, TLS) against hostile peers (issue 15, points 4 and 9),
//! with the real bridge, real sockets on loopback, `edge-device-sim` as the legitimate device
//! and the rogue device of [`edge_tests::rogue`] as the hostile one: a deadline for the
//! `Hello`, logs of bad frames within a budget.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use broker_config::LinkConfig;
use edge_tests::rogue::{Rogue, hello};
use edge_tests::{
    Bridge, LogLines, Watcher, embedded_config, last_state, start_bridge_with_log, start_device,
    write_config,
};

const ROOT: &str = "edge/listeners";
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

/// Submits an echo task for `device` and waits until it completed with its payload back.
async fn completes(w: &mut Watcher, id: &str, device: &str) {
    let payload = format!("payload of {id}");
    w.submit(
        ROOT,
        &serde_json::json!({"id": id, "capability": "echo", "device": device, "payload": payload})
            .to_string(),
    )
    .await;
    w.wait_for(WAIT, &format!("{id} completed"), |seen| {
        last_state(seen, id).as_deref() == Some("completed")
    })
    .await;
    assert_eq!(w.states()[id].last().unwrap()["result"], payload.as_str());
}

/// Whether the watcher saw `device`'s document say it is offline.
fn went_offline(w: &Watcher, device: &str) -> bool {
    let topic = format!("/devices/{device}");
    w.seen
        .iter()
        .any(|(t, v)| t.ends_with(&topic) && v["online"] == false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_hello_is_closed_however_many_heartbeats_it_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (bridge, mut log) = start(dir.path(), vec![LinkConfig::Tcp { listen: any_port() }]);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _device = start_device(bridge.devices, "dev-1", &["echo"]);
    w.wait_device_online("dev-1").await;
    let mut rogue = Rogue::tcp(bridge.devices).await.unwrap();
    let local = rogue.local_addr();
    let started = Instant::now();
    // A valid heartbeat every second, and never a Hello: each is answered with NoSession.
    let mut closed = None;
    for _ in 0..15 {
        if rogue.heartbeat().await.is_err() {
            break;
        }
        if let Ok(c) = rogue.closed_within(Duration::from_secs(1)).await {
            closed = Some(c);
            break;
        }
    }
    let closed = closed.expect("the link was still open after 15 heartbeats");
    let after = started.elapsed();
    assert!(closed.bytes > 0, "the heartbeats were answered (NoSession)");
    // The liveness timeout (7 s) from the connection, plus a margin for a loaded machine.
    assert!(
        after >= Duration::from_millis(6_500) && after < Duration::from_secs(12),
        "closed after {after:?}"
    );
    let line = log
        .wait_for(WAIT, "the link closed for want of a Hello", |l| {
            l.contains("device link closed") && l.contains(&format!("peer={local}"))
        })
        .await;
    assert!(line.contains("no Hello within 7000 ms"), "{line}");
    // The device with a session is served all along.
    completes(&mut w, "beside-the-heartbeats", "dev-1").await;
    assert!(!went_offline(&w, "dev-1"));
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
