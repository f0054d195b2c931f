//! Stopping the bridge as a service manager does.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use broker_config::Config;
use edge_bridge::queue::Queue;
use edge_tests::{
    Watcher, external_config, start_bridge_with_config, start_bridge_with_log, start_device_with,
    start_mosquitto, start_mosquitto_on, terminate, write_config,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const ROOT: &str = "edge/stop";

/// A bridge on the external broker (mosquitto) at `port`, so that the broker outlives it and
/// shows what it left behind; one TCP device link on a free port.
fn on_mosquitto(port: u16) -> Config {
    external_config("stop", port)
}

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
    let bridge = start_bridge_with_config(dir.path(), &on_mosquitto(port));
    let mut watcher = Watcher::connect(bridge.mqtt, ROOT).await;
    watcher.wait_bridge_online().await;

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

/// Publishes `n` submissions of echo tasks `load-0`…, 20,000 a second (QoS 1, a wide window),
/// from a client of its own, counting them in `published`; returns when all are published.
async fn flood(broker: SocketAddr, n: usize, published: Arc<AtomicUsize>) {
    let mut opts = MqttOptions::new("flood", broker.ip().to_string(), broker.port());
    opts.set_inflight(1_000);
    let (client, mut eventloop) = AsyncClient::new(opts, 2_000);
    let polling = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for i in 0..n {
        if i % 2_000 == 0 {
            pace.tick().await;
        }
        let task = json!({"id": format!("load-{i}"), "capability": "echo", "payload": i});
        if client
            .publish(
                format!("{ROOT}/tasks/submit"),
                QoS::AtLeastOnce,
                false,
                task.to_string(),
            )
            .await
            .is_err()
        {
            break;
        }
        published.fetch_add(1, Ordering::Relaxed);
    }
    // Until the broker has them all (the window drains), then done.
    let _ = client.disconnect().await;
    let _ = polling.await;
}

/// Waits until the file at `path` has `n` lines, polling; returns how many it has.
async fn lines_within(path: &std::path::Path, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let lines = std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
        if lines >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {lines} lines after {within:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `live=N` of a log line.
fn live(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("live="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no live=N in {line:?}"))
}

/// The ids among `seen` whose status events include one in `states`.
fn ids_in(seen: &[(String, Value)], states: &[&str]) -> HashSet<String> {
    seen.iter()
        .filter(|(t, v)| {
            t.ends_with("/status") && states.contains(&v["state"].as_str().unwrap_or(""))
        })
        .filter_map(|(_, v)| v["id"].as_str().map(str::to_owned))
        .collect()
}

/// SIGTERM while tens of thousands of submissions flow in and a device runs tasks: the bridge
/// exits with status 0 within seconds, its retained status says it stopped (not the last
/// will), and it closed its queue: the restart repairs nothing and opens the live tasks the
/// stop left, among them every task seen accepted and not finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_stops_within_seconds_says_stopped_and_closes_the_queue() {
    // More than the test lasts: the flood flows until the bridge has stopped.
    const SUBMISSIONS: usize = 1_000_000;
    // Published before the SIGTERM, at least.
    const BEFORE_STOP: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let (mosquitto, port) = start_mosquitto(dir.path());
    let config = on_mosquitto(port);
    let file = write_config(dir.path(), &config);
    let data = dir.path().join("data");
    let (bridge, mut log) = start_bridge_with_log(&data, &file);
    let executions = dir.path().join("executions.log");
    let exec_log = ["--exec-log", executions.to_str().unwrap()];
    let _device = start_device_with(bridge.devices, "dev-1", &["echo"], &exec_log);
    let mut watcher = Watcher::connect(bridge.mqtt, ROOT).await;
    watcher.wait_bridge_online().await;

    let published = Arc::new(AtomicUsize::new(0));
    let flooding = tokio::spawn(flood(bridge.mqtt, SUBMISSIONS, published.clone()));
    // Under load: 30,000 submissions published and more coming, and the device runs tasks.
    let executed = lines_within(&executions, 1, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while published.load(Ordering::Relaxed) < BEFORE_STOP {
        assert!(Instant::now() < deadline, "the flood is stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let published_at_stop = published.load(Ordering::Relaxed);
    let signalled = Instant::now();
    let status = terminate(bridge.proc);
    let took = signalled.elapsed();
    assert!(status.success(), "SIGTERM under load: {status}");
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after SIGTERM"
    );
    flooding.abort();
    let status = retained_status(bridge.mqtt).await;
    assert_eq!(status["online"], false, "{status}");
    assert_eq!(status["reason"], "stopped", "not the last will: {status}");
    let stopping = log
        .wait_for(Duration::from_secs(5), "the stop's log line", |l| {
            l.contains("stop requested")
        })
        .await;

    // The restart: no repair, and the queue as the bridge left it. On a new broker: the old
    // one would first deliver the tens of thousands of submissions the stopped bridge had not
    // taken (and no device serves tasks now, so the queue stays as the restart found it).
    let accepted = ids_in(&watcher.seen, &["queued"]);
    let finished = ids_in(
        &watcher.seen,
        &["completed", "failed", "expired", "rejected"],
    );
    drop(mosquitto);
    let _mosquitto = start_mosquitto_on(dir.path(), port, false);
    let restarted = Instant::now();
    let (bridge, mut log) = start_bridge_with_log(&data, &file);
    let ready_after = restarted.elapsed();
    let opened = log
        .wait_for(Duration::from_secs(5), "the queue opened", |l| {
            l.contains("queue opened")
        })
        .await;
    assert_eq!(
        live(&opened),
        live(&stopping),
        "the restart opens the tasks the stop left"
    );

    let repaired: Vec<&String> = log
        .drain()
        .iter()
        .filter(|l| l.contains("not closed cleanly"))
        .collect();
    assert!(repaired.is_empty(), "the queue was repaired: {repaired:?}");
    assert!(terminate(bridge.proc).success());
    let queue = Queue::open(&data, config.queue.limit).unwrap();
    let lost: Vec<&String> = accepted
        .difference(&finished)
        .filter(|id| queue.get(id).is_none())
        .take(10)
        .collect();
    assert!(lost.is_empty(), "accepted, unfinished and gone: {lost:?}");
    println!(
        "stop under load: {} submissions published, {} queued and {} finished seen, {} \
         executions, before the SIGTERM; stopped in {took:?} with {} live tasks; restarted \
         (ready) in {ready_after:?}",
        published_at_stop,
        accepted.len(),
        finished.len(),
        executed,
        live(&stopping)
    );
}
