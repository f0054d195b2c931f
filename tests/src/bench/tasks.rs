//! Phases 2 and 3: tasks through the bridge, and the bookkeeping of what was submitted.
//!
//! One client submits, another watches `{root}/tasks/+/status` and `{root}/devices/+`; every
//! task's submit time and the arrival of its `queued`, first `dispatched` and terminal events
//! are recorded.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{Client, Received, wall_ms};
use super::links::Psk;
use super::report::{BacklogFigures, Stages, ThroughputFigures};
use super::stats::{CpuSnapshot, Latencies, Progress};
use super::{BenchError, Options, STALL};
use crate::{Bridge, Proc, start_device, start_device_with};

/// The bridge id of the bench's bridges, and their topic root.
pub(crate) const BRIDGE_ID: &str = "bench";
pub(super) const ROOT: &str = "edge/bench";

/// Failures listed in the report at most (the count is always complete).
const FAILURES_SHOWN: usize = 5;

/// One submitted task.
#[derive(Clone, Debug)]
pub(super) struct Task {
    pub(super) priority: u8,
    pub(super) submitted: Instant,
    /// The submission's moment on the wall clock, to compare with the bridge's `ts_ms`.
    submitted_ms: u64,
    /// `ts_ms` of the `queued` event.
    queued: Option<u64>,
    /// `ts_ms` of the first `dispatched` event (a retry would send another).
    pub(super) dispatched: Option<u64>,
    /// When the first `running` event was received.
    pub(super) running: Option<Instant>,
    /// The first terminal event: received when, `ts_ms`, and whether it was `completed`.
    pub(super) end: Option<End>,
}

/// A task's terminal event.
#[derive(Clone, Copy, Debug)]
pub(super) struct End {
    pub(super) at: Instant,
    at_ms: u64,
    ts_ms: u64,
    pub(super) completed: bool,
}

/// Tasks of one kind, with ids `{prefix}{index}`.
#[derive(Debug)]
pub(super) struct Batch {
    prefix: String,
    pub(super) tasks: Vec<Task>,
    pub(super) queued: usize,
    pub(super) finished: usize,
    pub(super) completed: usize,
    /// Tasks that ended otherwise, as "id: state (code)".
    pub(super) failures: Vec<String>,
    pub(super) failed: usize,
    last_queued: Option<Instant>,
    last_end: Option<Instant>,
    /// The latest `ts_ms` of a `queued` event.
    last_queued_ts_ms: u64,
    /// The latest `ts_ms` of a terminal event: when the bridge, not the client, saw the end.
    last_end_ts_ms: u64,
}

impl Batch {
    pub(super) fn new(prefix: String) -> Self {
        Self {
            prefix,
            tasks: Vec::new(),
            queued: 0,
            finished: 0,
            completed: 0,
            failures: Vec::new(),
            failed: 0,
            last_queued: None,
            last_end: None,
            last_queued_ts_ms: 0,
            last_end_ts_ms: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks submitted and not finished.
    pub(super) fn outstanding(&self) -> usize {
        self.tasks.len() - self.finished
    }

    /// Records a submission made now and returns its JSON: an echo task of `priority`.
    fn submit(&mut self, priority: u8) -> Vec<u8> {
        let i = self.tasks.len();
        self.submit_task(priority, "echo", &format!(r#"{{"i":{i}}}"#))
    }

    /// Records a submission made now and returns its JSON: a task of `capability` with the
    /// JSON `payload`.
    pub(super) fn submit_task(&mut self, priority: u8, capability: &str, payload: &str) -> Vec<u8> {
        self.submit_naming(priority, capability, payload, &[])
    }

    /// As [`Self::submit_task`], for a task that names the bridge resources `resources`.
    pub(super) fn submit_naming(
        &mut self,
        priority: u8,
        capability: &str,
        payload: &str,
        resources: &[&str],
    ) -> Vec<u8> {
        let i = self.tasks.len();
        self.tasks.push(Task {
            priority,
            submitted: Instant::now(),
            submitted_ms: wall_ms(),
            queued: None,
            dispatched: None,
            running: None,
            end: None,
        });
        // Names made of letters, digits, '-', '_' and '.' (the bridge rejects others), so
        // they need no escaping.
        let resources = if resources.is_empty() {
            String::new()
        } else {
            format!(r#","resources":["{}"]"#, resources.join(r#"",""#))
        };
        format!(
            r#"{{"id":"{}{i}","capability":"{capability}","priority":{priority}{resources},"payload":{payload}}}"#,
            self.prefix
        )
        .into_bytes()
    }

    /// Applies a status event if it is about one of this batch's tasks.
    fn observe(&mut self, event: &Status<'_>) {
        let Some(task) = event
            .id
            .strip_prefix(self.prefix.as_str())
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.tasks.get_mut(i))
        else {
            return;
        };
        match event.state {
            "queued" if task.queued.is_none() => {
                task.queued = Some(event.ts_ms);
                self.queued += 1;
                self.last_queued = Some(event.at);
                self.last_queued_ts_ms = self.last_queued_ts_ms.max(event.ts_ms);
            }
            "dispatched" if task.dispatched.is_none() => task.dispatched = Some(event.ts_ms),
            "running" if task.running.is_none() => task.running = Some(event.at),
            "completed" | "failed" | "expired" | "cancelled" | "rejected" if task.end.is_none() => {
                let completed = event.state == "completed";
                task.end = Some(End {
                    at: event.at,
                    at_ms: event.at_ms,
                    ts_ms: event.ts_ms,
                    completed,
                });
                self.finished += 1;
                self.last_end = Some(event.at);
                self.last_end_ts_ms = self.last_end_ts_ms.max(event.ts_ms);
                if completed {
                    self.completed += 1;
                } else {
                    self.failed += 1;
                    if self.failures.len() < FAILURES_SHOWN {
                        self.failures.push(format!(
                            "{}: {} ({})",
                            event.id,
                            event.state,
                            event.code.unwrap_or("no code")
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    /// Submit→completed latencies of completed tasks, for those `pick` selects.
    pub(super) fn latencies(&self, pick: impl Fn(&Task) -> bool) -> Latencies {
        let mut l = Latencies::default();
        for t in self.tasks.iter().filter(|t| pick(t)) {
            if let Some(end) = t.end.filter(|e| e.completed) {
                l.push(end.at.duration_since(t.submitted));
            }
        }
        l.finish();
        l
    }

    /// Where the time of completed tasks went, stage by stage.
    fn stages(&self) -> Stages {
        let mut s = Stages::default();
        let span = |from: u64, to: u64| Duration::from_millis(to.saturating_sub(from));
        for t in &self.tasks {
            let (Some(q), Some(d), Some(end)) = (t.queued, t.dispatched, t.end) else {
                continue;
            };
            if !end.completed {
                continue;
            }
            s.accept.push(span(t.submitted_ms, q));
            s.wait.push(span(q, d));
            s.device.push(span(d, end.ts_ms));
            s.report.push(span(end.ts_ms, end.at_ms));
        }
        s.accept.finish();
        s.wait.finish();
        s.device.finish();
        s.report.finish();
        s
    }
}

/// A status event, parsed.
#[derive(Debug)]
struct Status<'a> {
    id: &'a str,
    state: &'a str,
    code: Option<&'a str>,
    /// The bridge's stamp.
    ts_ms: u64,
    /// When it was received, on both clocks.
    at: Instant,
    at_ms: u64,
}

/// The watcher's view: the batches it feeds and which devices are online.
#[derive(Debug)]
pub(super) struct Observer {
    pub(super) watcher: Client,
    online: HashSet<String>,
    /// Status events received (each a message the bridge's outbox published).
    events: usize,
}

impl Observer {
    pub(super) async fn connect(
        bridge: &Bridge,
        name: &str,
        window: usize,
    ) -> Result<Self, BenchError> {
        let filters = [
            format!("{ROOT}/tasks/+/status"),
            format!("{ROOT}/devices/+"),
        ];
        Ok(Self {
            watcher: Client::connect(bridge.mqtt, name, window, &filters).await?,
            online: HashSet::new(),
            events: 0,
        })
    }

    /// Waits for the next message (at most until `deadline`, or [`STALL`] from now) and feeds it
    /// to `batches`.
    pub(super) async fn next(
        &mut self,
        batches: &mut [&mut Batch],
        phase: &'static str,
        deadline: Instant,
        doing: impl FnOnce() -> String,
    ) -> Result<(), BenchError> {
        let m = self.recv(phase, deadline, doing).await?;
        self.observe(&m, batches);
        Ok(())
    }

    /// The next message, at most until `deadline` or [`STALL`] from now.
    pub(super) async fn recv(
        &mut self,
        phase: &'static str,
        deadline: Instant,
        doing: impl FnOnce() -> String,
    ) -> Result<Received, BenchError> {
        let until = deadline.min(Instant::now() + STALL);
        self.watcher
            .next_until(until)
            .await
            .ok_or_else(|| BenchError::Timeout {
                phase,
                what: format!(
                    "{}: nothing arrived for {STALL:?} or the phase deadline passed",
                    doing()
                ),
            })
    }

    pub(super) fn observe(&mut self, m: &Received, batches: &mut [&mut Batch]) {
        let Some(rest) = m.topic.strip_prefix(ROOT) else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
            return;
        };
        if let Some(device) = rest.strip_prefix("/devices/") {
            if v["online"] == true {
                self.online.insert(device.to_owned());
            } else {
                self.online.remove(device);
            }
        } else if let Some(id) = rest
            .strip_prefix("/tasks/")
            .and_then(|r| r.strip_suffix("/status"))
        {
            self.events += 1;
            let event = Status {
                id,
                state: v["state"].as_str().unwrap_or(""),
                code: v["error"]["code"].as_str(),
                ts_ms: v["ts_ms"].as_u64().unwrap_or(0),
                at: m.at,
                at_ms: m.wall_ms,
            };
            for b in batches.iter_mut() {
                b.observe(&event);
            }
        }
    }

    /// Waits until every device in `ids` is online, feeding `batches` meanwhile.
    pub(super) async fn wait_online(
        &mut self,
        ids: &[String],
        batches: &mut [&mut Batch],
        phase: &'static str,
        deadline: Instant,
    ) -> Result<(), BenchError> {
        let deadline = deadline.min(Instant::now() + Duration::from_secs(60));
        while !ids.iter().all(|id| self.online.contains(id)) {
            let online = self.online.len();
            self.next(batches, phase, deadline, || {
                format!("{online} of {} devices online", ids.len())
            })
            .await?;
        }
        Ok(())
    }
}

/// How the simulated devices reach the bridge.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DeviceLink<'a> {
    /// Plain TCP to the bridge's device listener; ids `dev-1`, `dev-2`, ...
    Tcp,
    /// UDP + DTLS to `addr`, one pre-shared key per device (`--dtls --psk`); the PSK
    /// identities are the device ids.
    Dtls { addr: SocketAddr, keys: &'a [Psk] },
}

/// One run of the throughput phase: its name in progress lines, a tag that keeps its client
/// names and task ids apart from other runs on the same broker, and how its devices connect.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThroughputRun<'a> {
    pub(crate) phase: &'static str,
    pub(crate) tag: &'static str,
    pub(crate) link: DeviceLink<'a>,
    /// Tasks to submit, and at most how many outstanding (1: one at a time, each submitted
    /// once the previous one ended).
    pub(crate) tasks: usize,
    pub(crate) window: usize,
}

/// Starts `n` device simulators offering `echo` and `sleep`.
pub(super) fn start_devices(
    bridge: &Bridge,
    n: usize,
    link: DeviceLink<'_>,
) -> (Vec<Proc>, Vec<String>) {
    const CAPABILITIES: [&str; 2] = ["echo", "sleep"];
    match link {
        DeviceLink::Tcp => {
            let ids: Vec<String> = (1..=n).map(|k| format!("dev-{k}")).collect();
            let procs = ids
                .iter()
                .map(|id| start_device(bridge.devices, id, &CAPABILITIES))
                .collect();
            (procs, ids)
        }
        DeviceLink::Dtls { addr, keys } => keys
            .iter()
            .take(n)
            .map(|k| {
                let args = ["--dtls", "--psk", &k.hex()];
                let proc = start_device_with(addr, &k.identity, &CAPABILITIES, &args);
                (proc, k.identity.clone())
            })
            .unzip(),
    }
}

/// Starts a bridge on `config` (its embedded broker on a free port), written into
/// `dir/bridge.toml`; its data in `dir`.
pub(super) fn start_configured(
    dir: &Path,
    config: &broker_config::Config,
) -> Result<Bridge, BenchError> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let file = dir.join("bridge.toml");
    let text = toml::to_string(config).map_err(|e| BenchError::Bridge(e.to_string()))?;
    std::fs::write(&file, text).map_err(|source| BenchError::Io {
        path: file.clone(),
        source,
    })?;
    let file = file
        .to_str()
        .ok_or_else(|| BenchError::Bridge("a non-UTF-8 path".into()))?;
    Ok(crate::start_bridge(
        dir,
        &["--config", file, "--mqtt-listen", "127.0.0.1:0"],
    ))
}

pub(super) fn pids(devices: &[Proc]) -> Vec<u32> {
    devices.iter().map(|p| p.child.id()).collect()
}

pub(super) fn submit_topic() -> String {
    format!("{ROOT}/tasks/submit")
}

/// Phase 2 (and phase 6, once per device link): `--tasks` echo tasks, priorities P0..P5 in
/// turn, at most `--concurrency` outstanding; tasks/s from the first submission to the last
/// terminal event.
pub(crate) async fn throughput(
    bridge: &Bridge,
    opts: &Options,
    nonce: &str,
    run: ThroughputRun<'_>,
) -> Result<ThroughputFigures, BenchError> {
    let ThroughputRun {
        phase,
        tag,
        link,
        tasks: n,
        window,
    } = run;
    let mut progress = Progress::new(phase);
    let deadline = Instant::now() + opts.phase_timeout();
    let mut observer =
        Observer::connect(bridge, &format!("bench-watcher-{nonce}-{tag}"), window).await?;
    let submitter = Client::connect(
        bridge.mqtt,
        &format!("bench-submitter-{nonce}-{tag}"),
        window,
        &[],
    )
    .await?;
    let (devices, ids) = start_devices(bridge, opts.devices, link);
    let mut batch = Batch::new(format!("b{nonce}-{tag}-"));
    observer
        .wait_online(&ids, &mut [&mut batch], phase, deadline)
        .await?;
    progress.say(&format!(
        "{} devices online; {n} echo tasks, P0..P5 in turn, {window} outstanding",
        ids.len()
    ));

    let (bridge_pid, device_pids) = (bridge.proc.child.id(), pids(&devices));
    let cpu_start = CpuSnapshot::take(bridge_pid, &device_pids);
    let events_before = observer.events;
    let start = Instant::now();
    let topic = submit_topic();
    while batch.finished < n {
        while batch.len() < n && batch.outstanding() < window {
            let priority = (batch.len() % 6) as u8;
            submitter.publish(&topic, batch.submit(priority)).await?;
        }
        let finished = batch.finished;
        observer
            .next(&mut [&mut batch], phase, deadline, || {
                format!("{finished} of {n} tasks finished")
            })
            .await?;
        progress.tick(|| {
            format!(
                "{}/{n} tasks finished, {:.0} tasks/s",
                batch.finished,
                batch.finished as f64 / start.elapsed().as_secs_f64()
            )
        });
    }
    let cpu = CpuSnapshot::take(bridge_pid, &device_pids).since(&cpu_start);
    drop(devices);
    let seconds = batch
        .last_end
        .unwrap_or(start)
        .duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let figures = ThroughputFigures {
        submitted: n,
        completed: batch.completed,
        failed: batch.failed,
        failures: batch.failures.clone(),
        seconds,
        tasks_per_s: batch.completed as f64 / seconds,
        events_per_s: (observer.events - events_before) as f64 / seconds,
        per_priority: (0..6u8)
            .map(|p| batch.latencies(|t| t.priority == p))
            .collect(),
        all: batch.latencies(|_| true),
        stages: batch.stages(),
        cpu,
        reconnects: observer.watcher.errors() + submitter.errors(),
    };
    progress.say(&format!(
        "{} of {n} completed in {seconds:.2} s: {:.0} tasks/s",
        figures.completed, figures.tasks_per_s
    ));
    Ok(figures)
}

/// Phase 3: `--queued-p4` P4 echo tasks queued while no device is online; then the devices
/// connect and drain them while a P0 echo task is submitted every `--p0-interval-ms`.
pub(crate) async fn backlog(
    bridge: &Bridge,
    opts: &Options,
    nonce: &str,
) -> Result<BacklogFigures, BenchError> {
    const PHASE: &str = "p0-under-backlog";
    // Submissions not yet `queued`, at most, while the backlog fills.
    const FILL_WINDOW: usize = 1_000;
    let mut progress = Progress::new(PHASE);
    let deadline = Instant::now() + opts.phase_timeout();
    let mut observer =
        Observer::connect(bridge, &format!("bench-watcher-{nonce}-b"), FILL_WINDOW).await?;
    let submitter = Client::connect(
        bridge.mqtt,
        &format!("bench-submitter-{nonce}-b"),
        FILL_WINDOW,
        &[],
    )
    .await?;
    let total = opts.queued_p4;
    let topic = submit_topic();
    let mut p4 = Batch::new(format!("b{nonce}-q-"));
    let mut p0 = Batch::new(format!("b{nonce}-p0-"));

    progress.say(&format!("queueing {total} P4 tasks, no device online"));
    let bridge_pid = bridge.proc.child.id();
    let cpu_fill_start = CpuSnapshot::take(bridge_pid, &[]);
    let fill_start = Instant::now();
    let fill_start_ms = wall_ms();
    while p4.queued < total {
        while p4.len() < total && p4.len() - p4.queued < FILL_WINDOW {
            submitter.publish(&topic, p4.submit(4)).await?;
        }
        let queued = p4.queued;
        observer
            .next(&mut [&mut p4], PHASE, deadline, || {
                format!("{queued} of {total} P4 tasks queued")
            })
            .await?;
        progress.tick(|| format!("{}/{total} P4 tasks queued", p4.queued));
    }
    let fill_cpu = CpuSnapshot::take(bridge_pid, &[]).since(&cpu_fill_start);
    let fill_seconds = p4
        .last_queued
        .unwrap_or(fill_start)
        .duration_since(fill_start)
        .as_secs_f64()
        .max(1e-9);
    progress.say(&format!(
        "{total} P4 tasks queued in {fill_seconds:.2} s ({:.0}/s); starting {} devices",
        total as f64 / fill_seconds,
        opts.devices
    ));

    let (devices, ids) = start_devices(bridge, opts.devices, DeviceLink::Tcp);
    let device_pids = pids(&devices);
    let cpu_drain_start = CpuSnapshot::take(bridge_pid, &device_pids);
    let drain_start = Instant::now();
    let drain_start_ms = wall_ms();
    let events_before = observer.events;
    observer
        .wait_online(&ids, &mut [&mut p4], PHASE, deadline)
        .await?;
    progress.say(&format!(
        "devices online, {} P4 tasks finished so far; a P0 task every {} ms until the backlog \
         is drained",
        p4.finished, opts.p0_interval_ms
    ));
    let mut ticker = tokio::time::interval(Duration::from_millis(opts.p0_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // P4 tasks not finished when each probe was submitted.
    let mut backlog_at_probe: Vec<usize> = Vec::new();
    // At least one probe, even if the backlog drained while the devices came online.
    while p4.finished < total || p0.len() == 0 || p0.outstanding() > 0 {
        let probing = p4.finished < total || p0.len() == 0;
        tokio::select! {
            _ = ticker.tick(), if probing => {
                backlog_at_probe.push(total - p4.finished);
                submitter.publish(&topic, p0.submit(0)).await?;
            }
            m = observer.recv(PHASE, deadline, || "waiting for the backlog to drain".to_owned()) => {
                observer.observe(&m?, &mut [&mut p4, &mut p0]);
            }
        }
        progress.tick(|| {
            format!(
                "{}/{total} P4 tasks finished ({:.0}/s); {} P0 probes, {} completed",
                p4.finished,
                p4.finished as f64 / drain_start.elapsed().as_secs_f64(),
                p0.len(),
                p0.completed
            )
        });
    }
    let drain_cpu = CpuSnapshot::take(bridge_pid, &device_pids).since(&cpu_drain_start);
    drop(devices);
    let drain_seconds = p4
        .last_end
        .unwrap_or(drain_start)
        .duration_since(drain_start)
        .as_secs_f64()
        .max(1e-9);
    let mut failures = p4.failures.clone();
    failures.extend(p0.failures.iter().cloned());
    failures.truncate(FAILURES_SHOWN);
    let figures = BacklogFigures {
        queued: total,
        fill_seconds,
        accepted_per_s: total as f64 / fill_seconds,
        fill_bridge_seconds: p4.last_queued_ts_ms.saturating_sub(fill_start_ms) as f64 / 1_000.0,
        fill_cpu,
        p4_completed: p4.completed,
        drain_seconds,
        drained_per_s: p4.completed as f64 / drain_seconds,
        drain_bridge_seconds: p4.last_end_ts_ms.saturating_sub(drain_start_ms) as f64 / 1_000.0,
        drain_events_per_s: (observer.events - events_before) as f64 / drain_seconds,
        drain_cpu,
        p0_submitted: p0.len(),
        p0_completed: p0.completed,
        p0: p0.latencies(|_| true),
        p0_stages: p0.stages(),
        backlog_at_first_probe: backlog_at_probe.first().copied().unwrap_or(0),
        backlog_at_last_probe: backlog_at_probe.last().copied().unwrap_or(0),
        failed: p4.failed + p0.failed,
        failures,
        reconnects: observer.watcher.errors() + submitter.errors(),
    };
    progress.say(&format!(
        "backlog drained in {drain_seconds:.2} s; P0 p50 {:?}, p99 {:?} over {} probes",
        figures.p0.p50(),
        figures.p0.p99(),
        figures.p0.len()
    ));
    Ok(figures)
}
