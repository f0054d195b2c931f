//! No silent loss of submissions: a burst of 200,000 submissions published as fast as
//! `mosquitto_pub -l -q 1` can (four runs of 50,000 lines at once), for a capability nobody
//! serves (so every task stays queued), ends with every one of them in the bridge's queue —
//! through the embedded broker, and through mosquitto configured as the README says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use broker_config::{BrokerConfig, Config, LinkConfig};
use edge_tests::{
    Watcher, publish_lines, start_bridge_with_config, start_bridge_with_log, start_mosquitto,
    write_config,
};
use serde_json::Value;

const SUBMISSIONS: usize = 200_000;

/// How long the bridge may go without queuing one more submission (it publishes its stats
/// every second, but skips a document while its MQTT client is busy with a flood) before the
/// test calls the rest lost.
const STALL: Duration = Duration::from_secs(30);

/// The whole burst, from the first line published to the last submission queued, at most.
const WITHIN: Duration = Duration::from_secs(420);

/// The bridge's configuration for the burst: a queue that holds it all, stats every second,
/// and everything else as shipped.
fn config(bridge_id: &str, broker: BrokerConfig) -> Config {
    let mut config = Config {
        bridge_id: bridge_id.into(),
        stats_interval: Duration::from_secs(1),
        broker,
        links: vec![LinkConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))],
        ..Config::default()
    };
    config.queue.limit = SUBMISSIONS as u64 + 1_000;
    // The `queued` events of the whole burst wait in the outbox while it comes in.
    config.queue.outbox_limit = 2 * config.queue.limit;
    config
}

/// Submission `i`: an id (so a redelivered message cannot count twice) and a capability no
/// device offers.
fn submission(i: usize) -> String {
    format!(r#"{{"id":"b-{i}","capability":"burst.nobody"}}"#)
}

/// `live` of the newest stats document seen, if any.
fn live(seen: &[(String, Value)]) -> Option<u64> {
    seen.iter().rev().find_map(|(_, v)| v["live"].as_u64())
}

/// Publishes the burst to `broker` under `root`, then waits until the bridge's stats say
/// every submission is queued; fails with the counts when the queue stops growing short of
/// it.
async fn burst_is_queued_in_full(broker: SocketAddr, root: &str) {
    let mut stats = Watcher::subscribe(broker, &format!("{root}/bridge/stats"), false).await;
    let started = Instant::now();
    let topic = format!("{root}/tasks/submit");
    let lines: Vec<String> = (0..SUBMISSIONS).map(submission).collect();
    tokio::task::spawn_blocking(move || publish_lines(broker, &topic, &lines, WITHIN))
        .await
        .expect("publishing the burst");
    let published = started.elapsed();

    let (mut last, mut since) = (0, Instant::now());
    loop {
        let seen = stats.seen.len();
        stats
            .wait_for(2 * STALL, "the next stats document", |s| s.len() > seen)
            .await;
        let now = live(&stats.seen).unwrap_or(0);
        if now >= SUBMISSIONS as u64 {
            break;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        }
        assert!(
            since.elapsed() < STALL && started.elapsed() < WITHIN,
            "{now} of {SUBMISSIONS} submissions queued, none more for {:?} ({:?} after the \
             broker acknowledged all {SUBMISSIONS}): {} vanished",
            since.elapsed(),
            started.elapsed() - published,
            SUBMISSIONS as u64 - now,
        );
    }
    assert_eq!(
        live(&stats.seen),
        Some(SUBMISSIONS as u64),
        "more tasks than submissions"
    );
    println!(
        "{SUBMISSIONS} submissions acknowledged by the broker in {published:?}, all queued after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_000_submissions_through_the_embedded_broker_is_queued_in_full() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded broker as shipped (the harness gives it a free port).
    let broker = BrokerConfig::default();
    let bridge = start_bridge_with_config(dir.path(), &config("burst-embedded", broker));
    burst_is_queued_in_full(bridge.mqtt, "edge/burst-embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_000_submissions_through_mosquitto_is_queued_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let broker = BrokerConfig::External {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        tls: None,
        max_packet_bytes: 262_144,
    };
    let bridge = start_bridge_with_config(dir.path(), &config("burst-mosquitto", broker));
    burst_is_queued_in_full(bridge.mqtt, "edge/burst-mosquitto").await;
}

/// Beyond what the embedded broker holds for the bridge, a burst is lost — after the broker
/// acknowledged it — but not silently: the bridge reports the exact count on `{root}/errors`,
/// in its stats and in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_the_embedded_broker_drops_are_reported_with_their_count() {
    const SENT: usize = 20_000;
    const ROOT: &str = "edge/burst-lossy";
    let dir = tempfile::tempdir().unwrap();
    // The smallest buffer there is (16 KiB, some 220 of these submissions): the burst must
    // overflow it.
    let broker = BrokerConfig::Embedded {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        max_packet_bytes: 262_144,
        max_connections: 64,
        api_log_bytes: 16 * 1024,
        users_file: None,
        allow_anonymous: false,
        tls: None,
    };
    let file = write_config(dir.path(), &config("burst-lossy", broker));
    let (bridge, mut log) = start_bridge_with_log(&dir.path().join("data"), &file);
    let mut errors = Watcher::subscribe(bridge.mqtt, &format!("{ROOT}/errors"), false).await;
    let mut stats = Watcher::subscribe(bridge.mqtt, &format!("{ROOT}/bridge/stats"), false).await;

    let topic = format!("{ROOT}/tasks/submit");
    let lines: Vec<String> = (0..SENT).map(submission).collect();
    let broker_addr = bridge.mqtt;
    tokio::task::spawn_blocking(move || publish_lines(broker_addr, &topic, &lines, WITHIN))
        .await
        .expect("publishing the burst");

    // Every submission is either queued or counted lost.
    let accounted = |s: &[(String, Value)]| {
        s.last().is_some_and(|(_, v)| {
            v["live"].as_u64().unwrap_or(0) + v["submissions_lost"].as_u64().unwrap_or(0)
                == SENT as u64
        })
    };
    stats
        .wait_for(WITHIN, "every submission queued or counted lost", accounted)
        .await;
    let (_, last) = stats.seen.last().unwrap();
    let lost = last["submissions_lost"].as_u64().unwrap();
    assert!(
        lost > 0,
        "nothing lost: the test did not overflow the broker"
    );

    // The same count on {root}/errors, one event per overflow.
    let reported = |s: &[(String, Value)]| -> u64 {
        s.iter()
            .filter(|(_, v)| v["error"]["code"] == "submissions_lost")
            .map(|(_, v)| {
                let message = v["error"]["message"].as_str().unwrap_or_default();
                let count = message.split_whitespace().nth(3).unwrap_or_default();
                count
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("no count in {message:?}"))
            })
            .sum()
    };
    errors
        .wait_for(
            Duration::from_secs(30),
            "the losses on {root}/errors",
            |s| reported(s) == lost,
        )
        .await;
    log.wait_for(Duration::from_secs(10), "the loss in the log", |line| {
        line.contains("WARN") && line.contains("the broker dropped messages")
    })
    .await;
    println!(
        "{SENT} submissions through a 16 KiB broker buffer: {} queued, {lost} lost and reported",
        last["live"]
    );
}
