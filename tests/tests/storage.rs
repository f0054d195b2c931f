//! A full disk, for real: the bridge's data directory on a small tmpfs that a filler file
//! fills. New submissions are refused with `storage_full` while work already accepted goes
//! on, the bridge starts again on the nearly full disk, and it takes new work again by itself
//! once space returns.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use broker_config::{BrokerConfig, Config, LinkConfig, StorageConfig};
use edge_tests::{
    Bridge, Tmpfs, Watcher, fill, last_state, start_bridge, start_device, write_config,
};
use serde_json::Value;

const ROOT: &str = "edge/disk";
const MIB: u64 = 1 << 20;

/// The last `{ROOT}/bridge/stats` document seen.
fn last_stats(seen: &[(String, Value)]) -> Option<&Value> {
    seen.iter()
        .rev()
        .find(|(t, _)| t.ends_with("/bridge/stats"))
        .map(|(_, v)| v)
}

fn storage_full(seen: &[(String, Value)]) -> Option<bool> {
    last_stats(seen).and_then(|s| s["storage"]["full"].as_bool())
}

fn start(dir: &Path, data: &Path) -> Bridge {
    let config = Config {
        bridge_id: "disk".into(),
        data_dir: data.to_owned(),
        stats_interval: Duration::from_millis(200),
        storage: StorageConfig {
            min_free_bytes: 8 * MIB,
            reserve_bytes: 2 * MIB,
        },
        broker: BrokerConfig::Embedded {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_packet_bytes: 1 << 16,
            max_connections: 64,
            api_log_bytes: 1 << 20,
            users_file: None,
            allow_anonymous: false,
            tls: None,
        },
        links: vec![LinkConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))],
        ..Config::default()
    };
    let file = write_config(dir, &config);
    start_bridge(data, &["--config", file.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_finishes_accepted_work_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(&dir.path().join("disk"), 32);
    let data = mnt.path().join("data");
    let filler = mnt.path().join("filler");

    let bridge = start(dir.path(), &data);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    let _dev1 = start_device(bridge.devices, "dev-1", &["echo", "sleep"]);
    // Work in flight when the disk fills: one task running on dev-1, one queued for dev-2,
    // which is not online yet.
    w.submit(
        ROOT,
        r#"{"id":"running","capability":"sleep","device":"dev-1","payload":{"ms":1500}}"#,
    )
    .await;
    w.submit(
        ROOT,
        r#"{"id":"waiting","capability":"echo","device":"dev-2"}"#,
    )
    .await;
    w.wait_for(Duration::from_secs(20), "running and waiting", |seen| {
        last_state(seen, "running").as_deref() == Some("running")
            && last_state(seen, "waiting").as_deref() == Some("queued")
    })
    .await;

    fill(&filler, 3 * MIB);
    w.submit(ROOT, r#"{"id":"refused","capability":"echo"}"#)
        .await;
    w.wait_for(Duration::from_secs(20), "the refusal", |seen| {
        last_state(seen, "refused").as_deref() == Some("rejected")
    })
    .await;
    let refused = &w.states()["refused"];
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["error"]["code"], "storage_full", "{refused:#?}");

    // Accepted work goes on: the running task finishes, the queued one runs once its device
    // comes.
    let _dev2 = start_device(bridge.devices, "dev-2", &["echo"]);
    w.wait_for(Duration::from_secs(30), "accepted work finished", |seen| {
        last_state(seen, "running").as_deref() == Some("completed")
            && last_state(seen, "waiting").as_deref() == Some("completed")
    })
    .await;
    w.wait_for(Duration::from_secs(10), "stats saying full", |seen| {
        storage_full(seen) == Some(true)
    })
    .await;

    // A restart on the nearly full disk: the bridge starts and still refuses new work.
    drop(w);
    drop(bridge);
    let bridge = start(dir.path(), &data);
    let mut w = Watcher::connect(bridge.mqtt, ROOT).await;
    w.submit(ROOT, r#"{"id":"refused-again","capability":"echo"}"#)
        .await;
    w.wait_for(Duration::from_secs(20), "the second refusal", |seen| {
        last_state(seen, "refused-again").as_deref() == Some("rejected")
    })
    .await;
    assert_eq!(
        w.states()["refused-again"][0]["error"]["code"],
        "storage_full"
    );

    // Space returns: the bridge notices by itself (no restart, no submission needed) and
    // takes new work again.
    std::fs::remove_file(&filler).unwrap();
    w.wait_for(Duration::from_secs(10), "stats saying not full", |seen| {
        storage_full(seen) == Some(false)
    })
    .await;
    let _dev1 = start_device(bridge.devices, "dev-1", &["echo"]);
    w.submit(ROOT, r#"{"id":"after","capability":"echo"}"#)
        .await;
    w.wait_for(Duration::from_secs(20), "the new task completed", |seen| {
        last_state(seen, "after").as_deref() == Some("completed")
    })
    .await;
    let stats = last_stats(&w.seen).unwrap();
    assert!(stats["outbox"]["depth"].is_u64(), "{stats}");
}
