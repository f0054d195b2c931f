//! Phase 7: the Harness incident replayed (DESIGN.md, "Urgent work never waits").
//!
//! `--incident-devices` devices of 8 slots; every slot filled with long P3 `sleep` tasks and
//! `--incident-p4` more P4 tasks queued behind them; then, for `--incident-seconds`, a P0 and a
//! P1 task (a short `sleep`, so that its `running` event is seen) every
//! `--incident-urgent-ms`, in turn. Run twice in one benchmark, on fresh bridges: with the
//! urgent-work protocol off (`[urgent] reserve = 0, max_preemptions = 0`) and on (the
//! defaults). Figures per run: urgent submit→`running` and submit→`completed` (P50, P99,
//! max) and low-priority throughput (P3 and P4 tasks completed per second while the urgent
//! tasks arrived).

use std::path::Path;
use std::time::{Duration, Instant};

use broker_config::{Config, UrgentConfig};

use super::client::Client;
use super::report::IncidentFigures;
use super::stats::Progress;
use super::tasks::{self, Batch, DeviceLink, Observer};
use super::{BenchError, Options};

/// Slots of an `edge-device-sim`.
const SLOTS: usize = 8;
/// How long each urgent task sleeps on the device.
const URGENT_MS: u64 = 20;

/// One run of the incident, with the protocol `on` or off.
pub(crate) async fn run(
    data_dir: &Path,
    opts: &Options,
    nonce: &str,
    on: bool,
) -> Result<IncidentFigures, BenchError> {
    let phase: &'static str = if on { "incident-on" } else { "incident-off" };
    let tag = if on { "on" } else { "off" };
    let mut progress = Progress::new(phase);
    let deadline = Instant::now() + opts.phase_timeout();
    let bridge = start(&data_dir.join(format!("bridge-{phase}")), on)?;
    let window = 4 * SLOTS * opts.incident_devices + opts.incident_p4;
    let mut observer =
        Observer::connect(&bridge, &format!("bench-watcher-{nonce}-{tag}"), window).await?;
    let submitter = Client::connect(
        bridge.mqtt,
        &format!("bench-submitter-{nonce}-{tag}"),
        window,
        &[],
    )
    .await?;
    let topic = tasks::submit_topic();
    let (devices, ids) = tasks::start_devices(&bridge, opts.incident_devices, DeviceLink::Tcp);
    let mut low = Batch::new(format!("i{nonce}{tag}-low-"));
    let mut urgent = Batch::new(format!("i{nonce}{tag}-urgent-"));
    observer
        .wait_online(&ids, &mut [&mut low], phase, deadline)
        .await?;

    let long = format!(r#"{{"ms":{}}}"#, opts.incident_long_ms);
    let p3 = SLOTS * opts.incident_devices;
    for _ in 0..p3 {
        submitter
            .publish(&topic, low.submit_task(3, "sleep", &long))
            .await?;
    }
    for _ in 0..opts.incident_p4 {
        submitter
            .publish(&topic, low.submit_task(4, "sleep", &long))
            .await?;
    }
    let total = low.len();
    progress.say(&format!(
        "{p3} long P3 tasks ({} ms each) for {} slots and {} P4 behind them",
        opts.incident_long_ms, p3, opts.incident_p4
    ));
    // Every slot the protocol lets low-priority work take is busy before the first urgent
    // task: one task running per device, the others dispatched.
    let busy = if on { SLOTS - 1 } else { SLOTS } * opts.incident_devices;
    while low.tasks.iter().filter(|t| t.running.is_some()).count() < opts.incident_devices
        || low.queued < total
    {
        let queued = low.queued;
        observer
            .next(&mut [&mut low], phase, deadline, || {
                format!("{queued} of {total} low-priority tasks queued")
            })
            .await?;
    }
    progress.say(&format!(
        "devices busy ({busy} slots for low-priority work); a P0 or P1 task every {} ms for {} s",
        opts.incident_urgent_ms, opts.incident_seconds
    ));

    let urgent_payload = format!(r#"{{"ms":{URGENT_MS}}}"#);
    let start = Instant::now();
    let until = start + Duration::from_secs(opts.incident_seconds);
    let low_done_at_start = low.completed;
    let mut ticker = tokio::time::interval(Duration::from_millis(opts.incident_urgent_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut low_done_at_end = None;
    while Instant::now() < until || urgent.outstanding() > 0 {
        let arriving = Instant::now() < until;
        if !arriving && low_done_at_end.is_none() {
            low_done_at_end = Some(low.completed);
        }
        tokio::select! {
            _ = ticker.tick(), if arriving => {
                let priority = (urgent.len() % 2) as u8;
                submitter.publish(&topic, urgent.submit_task(priority, "sleep", &urgent_payload)).await?;
            }
            m = observer.recv(phase, deadline, || "waiting for urgent tasks".to_owned()) => {
                observer.observe(&m?, &mut [&mut low, &mut urgent]);
            }
        }
        progress.tick(|| {
            format!(
                "{} urgent tasks, {} completed; {} low-priority completed",
                urgent.len(),
                urgent.completed,
                low.completed - low_done_at_start
            )
        });
    }
    let seconds = until.duration_since(start).as_secs_f64();
    let low_completed = low_done_at_end.unwrap_or(low.completed) - low_done_at_start;
    let long = Duration::from_millis(opts.incident_long_ms);
    let low_work = work_in(&low, start, until, long);
    drop(devices);
    drop(bridge);

    let running = |p: u8| {
        let mut l = super::stats::Latencies::default();
        for t in urgent.tasks.iter().filter(|t| t.priority == p) {
            if let Some(at) = t.running {
                l.push(at.duration_since(t.submitted));
            }
        }
        l.finish();
        l
    };
    let figures = IncidentFigures {
        protocol: on,
        devices: opts.incident_devices,
        low_slots: busy,
        long_ms: opts.incident_long_ms,
        p4: opts.incident_p4,
        seconds,
        urgent_submitted: urgent.len(),
        urgent_completed: urgent.completed,
        running: [running(0), running(1)],
        completed: [
            urgent.latencies(|t| t.priority == 0),
            urgent.latencies(|t| t.priority == 1),
        ],
        low_completed,
        low_work,
        low_per_s: low_work / seconds,
        failed: urgent.failed + low.failed,
        failures: urgent
            .failures
            .iter()
            .chain(&low.failures)
            .take(5)
            .cloned()
            .collect(),
    };
    progress.say(&format!(
        "P0 running p99 {:?}, P1 running p99 {:?}; {:.2} low-priority tasks/s",
        figures.running[0].p99(),
        figures.running[1].p99(),
        figures.low_per_s
    ));
    Ok(figures)
}

/// A bridge for one run: the urgent-work protocol on (defaults) or off.
fn start(dir: &Path, on: bool) -> Result<crate::Bridge, BenchError> {
    let urgent = if on {
        UrgentConfig::default()
    } else {
        UrgentConfig {
            reserve: 0,
            max_preemptions: 0,
            ..UrgentConfig::default()
        }
    };
    let config = Config {
        bridge_id: tasks::BRIDGE_ID.into(),
        urgent,
        ..Config::default()
    };
    tasks::start_configured(dir, &config)
}

/// Low-priority work done in the window `[from, to)`, in tasks: each task's share of its
/// execution (its `running` event to its end) that falls in the window. A device runs one task
/// at a time, so this counts the window's work to a fraction of a task, where counting
/// completions alone is off by up to one task per device. A task still running at `to` counts
/// its time in the window over its nominal length `long`.
fn work_in(batch: &Batch, from: Instant, to: Instant, long: Duration) -> f64 {
    let mut work = 0.0;
    for t in &batch.tasks {
        let Some(started) = t.running else { continue };
        let (ended, length) = match t.end {
            Some(end) if end.completed => (end.at, end.at.duration_since(started)),
            Some(_) => continue,
            None => (to, long),
        };
        let inside = ended.min(to).saturating_duration_since(started.max(from));
        if !length.is_zero() {
            work += (inside.as_secs_f64() / length.as_secs_f64()).min(1.0);
        }
    }
    work
}
