//! Wall-clock steps of hours, forward and back, while the bridge runs and while it is stopped,
//! as NTP makes them on a gateway without a real-time clock (DESIGN.md, "Time"): deadlines and
//! retry delays run on the timer clock, which no step moves, and a restart continues it.
//!
//! The bridge runs on a [`WallClock`] (libfaketime): its `CLOCK_REALTIME` is stepped by
//! rewriting a file, its monotonic clocks are left alone. Each test first sees the step in the
//! bridge's own `ts_ms` (its stats), so it knows the bridge lives in the stepped time.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use broker_config::{Config, QueueConfig};
use edge_tests::{
    Bridge, WallClock, Watcher, free_ports, last_state, start_bridge_with, start_device, terminate,
    write_config,
};
use serde_json::{Value, json};

const ROOT: &str = "edge/clock";
const HOUR_S: i64 = 3_600;

/// A bridge on a steppable wall clock, restarted on the same data directory and ports (so the
/// watcher and the device simulator find it again).
struct Gateway {
    _dir: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
    mqtt: String,
    devices: String,
    clock: WallClock,
}

impl Gateway {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            bridge_id: "clock".into(),
            // Stats show the bridge's wall clock (`ts_ms`) and its queue, often.
            stats_interval: Duration::from_millis(200),
            queue: QueueConfig {
                retry_initial: Duration::from_secs(2),
                retry_max: Duration::from_secs(2),
                ..QueueConfig::default()
            },
            ..Config::default()
        };
        let file = write_config(dir.path(), &config);
        let [mqtt, devices] = free_ports();
        Self {
            data: dir.path().join("data"),
            config: file,
            mqtt: format!("127.0.0.1:{mqtt}"),
            devices: format!("127.0.0.1:{devices}"),
            clock: WallClock::new(dir.path()),
            _dir: dir,
        }
    }

    fn start(&self) -> Bridge {
        let args = [
            "--config",
            self.config.to_str().unwrap(),
            "--mqtt-listen",
            &self.mqtt,
            "--device-listen",
            &self.devices,
        ];
        start_bridge_with(&self.data, &args, |cmd| self.clock.apply(cmd))
    }
}

fn real_wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The stats documents seen from `since` on.
fn stats_since(seen: &[(String, Value)], since: usize) -> Vec<&Value> {
    seen[since..]
        .iter()
        .filter(|(t, _)| t.ends_with("/bridge/stats"))
        .map(|(_, v)| v)
        .collect()
}

/// Waits until the bridge's stats say its wall clock is `offset_s` from the real one, then
/// for two more stats documents (so at least one whole turn, with its dispatch, ran in the
/// stepped time); returns the last.
async fn wait_stepped(w: &mut Watcher, offset_s: i64) -> Value {
    let since = w.seen.len();
    let stepped = |v: &Value| {
        let ts = v["ts_ms"].as_i64().unwrap_or(0);
        (ts - (real_wall_ms() + offset_s * 1_000)).abs() < 60_000
    };
    w.wait_for(
        Duration::from_secs(20),
        "stats in the stepped time",
        |seen| {
            let stats = stats_since(seen, since);
            stats
                .iter()
                .position(|v| stepped(v))
                .is_some_and(|first| stats.len() >= first + 3)
        },
    )
    .await;
    stats_since(&w.seen, since).last().copied().unwrap().clone()
}

/// The states seen for task `id`, in order.
fn states_of(w: &Watcher, id: &str) -> Vec<String> {
    w.states()
        .get(id)
        .into_iter()
        .flatten()
        .filter_map(|v| v["state"].as_str().map(str::to_owned))
        .collect()
}

async fn wait_state(w: &mut Watcher, id: &str, state: &str, within: Duration) {
    w.wait_for(within, &format!("{id} {state}"), |seen| {
        seen.iter()
            .any(|(t, v)| t.ends_with("/status") && v["id"] == id && v["state"] == state)
    })
    .await;
}

/// Resubmits `id` and waits for the bridge's answer: its current state, published again.
async fn resubmit(w: &mut Watcher, task: &Value) -> String {
    let id = task["id"].as_str().unwrap().to_owned();
    let before = states_of(w, &id).len();
    w.submit(ROOT, &task.to_string()).await;
    w.wait_for(
        Duration::from_secs(20),
        "the answer to a resubmission",
        |seen| {
            seen.iter()
                .filter(|(t, v)| t.ends_with("/status") && v["id"] == id.as_str())
                .count()
                > before
        },
    )
    .await;
    last_state(&w.seen, &id).unwrap()
}

/// A task waiting ten minutes for a capability nobody serves.
fn waiting_task() -> Value {
    json!({"id": "waits", "capability": "nobody", "deadline_ms": 600_000})
}

/// Asserts `task` is still queued, neither expired nor anything else, after the step.
async fn assert_still_waiting(w: &mut Watcher, stats: &Value, task: &Value) {
    assert_eq!(stats["expired"], 0, "nothing expired: {stats}");
    assert_eq!(stats["live"], 1, "the task still waits: {stats}");
    assert_eq!(resubmit(w, task).await, "queued");
    let states = states_of(w, "waits");
    assert!(
        states.iter().all(|s| s == "queued"),
        "the task only ever was queued: {states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_of_two_hours_forward_while_the_bridge_runs_expires_nothing() {
    let gw = Gateway::new();
    let _bridge = gw.start();
    let mut w = Watcher::connect(gw.mqtt.parse().unwrap(), ROOT).await;
    let task = waiting_task();
    w.submit(ROOT, &task.to_string()).await;
    wait_state(&mut w, "waits", "queued", Duration::from_secs(20)).await;

    gw.clock.set_offset(2 * HOUR_S);
    let stats = wait_stepped(&mut w, 2 * HOUR_S).await;
    assert_still_waiting(&mut w, &stats, &task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_of_two_hours_forward_while_the_bridge_is_stopped_expires_nothing() {
    let gw = Gateway::new();
    let bridge = gw.start();
    let mut w = Watcher::connect(gw.mqtt.parse().unwrap(), ROOT).await;
    let task = waiting_task();
    w.submit(ROOT, &task.to_string()).await;
    wait_state(&mut w, "waits", "queued", Duration::from_secs(20)).await;

    assert!(terminate(bridge.proc).success());
    gw.clock.set_offset(2 * HOUR_S);
    let _bridge = gw.start();
    let since = w.seen.len();
    w.wait_online_again(since).await;
    let stats = wait_stepped(&mut w, 2 * HOUR_S).await;
    assert_still_waiting(&mut w, &stats, &task).await;
}

/// A 5 s deadline, the bridge down for a second in the middle with the wall clock stepped
/// back three hours: the task expires when its 5 s are up, not three hours later (nor early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_runs_on_across_a_restart_with_the_wall_clock_stepped_back_three_hours() {
    let gw = Gateway::new();
    let bridge = gw.start();
    let mut w = Watcher::connect(gw.mqtt.parse().unwrap(), ROOT).await;
    let submitted = Instant::now();
    w.submit(
        ROOT,
        &json!({"id": "soon", "capability": "nobody", "deadline_ms": 5_000}).to_string(),
    )
    .await;
    wait_state(&mut w, "soon", "queued", Duration::from_secs(5)).await;

    assert!(terminate(bridge.proc).success());
    gw.clock.set_offset(-3 * HOUR_S);
    // Down for a second: part of the deadline passes while no bridge runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _bridge = gw.start();
    wait_state(&mut w, "soon", "expired", Duration::from_secs(15)).await;
    let after = submitted.elapsed();
    assert!(
        after >= Duration::from_millis(4_500) && after < Duration::from_secs(9),
        "expired {after:?} after submission, for a 5 s deadline"
    );
    let expired = w
        .states()
        .remove("soon")
        .unwrap()
        .into_iter()
        .find(|v| v["state"] == "expired")
        .unwrap();
    // The event's `ts_ms` is the bridge's (stepped) wall clock: it lived in the stepped time.
    let ts = expired["ts_ms"].as_i64().unwrap();
    assert!(
        (ts - (real_wall_ms() - 3 * HOUR_S * 1_000)).abs() < 60_000,
        "{expired}"
    );
}

/// A task whose first execution fails transiently waits 2 s for its retry; the wall clock
/// steps back three hours during that wait (while the bridge runs, then again across a
/// restart): the retry still comes after about 2 s and the task completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_delay_is_not_stretched_by_a_step_back_of_three_hours_running_or_restarted() {
    let gw = Gateway::new();
    let mut bridge = gw.start();
    let mut w = Watcher::connect(gw.mqtt.parse().unwrap(), ROOT).await;
    // `flaky` fails every other execution with a transient code, the first one included.
    let _device = start_device(gw.devices.parse().unwrap(), "dev-1", &["flaky"]);

    for (n, restart) in [(1, false), (2, true)] {
        let id = format!("retried-{n}");
        // Two executions of `flaky` per task: each starts with a failure.
        w.submit(ROOT, &json!({"id": id, "capability": "flaky"}).to_string())
            .await;
        wait_state(&mut w, &id, "dispatched", Duration::from_secs(20)).await;
        // The failure is handled once the bridge's stats show the task queued again (waiting
        // for its retry); then the step.
        let since = w.seen.len();
        w.wait_for(
            Duration::from_secs(20),
            "the task waiting to be retried",
            |seen| {
                stats_since(seen, since)
                    .iter()
                    .any(|v| v["live"] == 1 && v["queued"]["P3"] == 1)
            },
        )
        .await;
        let offset = -3 * HOUR_S * n;
        let stepped = Instant::now();
        if restart {
            assert!(terminate(bridge.proc).success());
            gw.clock.set_offset(offset);
            bridge = gw.start();
        } else {
            gw.clock.set_offset(offset);
        }
        wait_state(&mut w, &id, "completed", Duration::from_secs(15)).await;
        assert!(
            stepped.elapsed() < Duration::from_secs(8),
            "{id} completed {:?} after the step",
            stepped.elapsed()
        );
        let attempts: Vec<i64> = w.states()[&id]
            .iter()
            .filter(|v| v["state"] == "dispatched")
            .filter_map(|v| v["attempt"].as_i64())
            .collect();
        assert_eq!(attempts.last(), Some(&2), "{id} was retried: {attempts:?}");
    }
}
