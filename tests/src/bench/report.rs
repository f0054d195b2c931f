//! The figures of a run and their printed form (plain text, pasted as is into BENCHMARKS.md).

use std::fmt;
use std::time::Duration;

use super::Options;
use super::stats::Latencies;

/// CPU used during a phase, as shares of one core (1.0 = one core busy all the time); `None`
/// where `/proc` could not be read.
#[derive(Clone, Debug)]
pub struct CpuUse {
    pub wall_s: f64,
    /// The bridge process: engine, queue, MQTT driver, device links and the embedded broker.
    pub bridge: Option<f64>,
    /// Every device simulator together.
    pub devices: Option<f64>,
    /// This process: the MQTT clients that submit, watch, request and respond.
    pub bench: Option<f64>,
}

/// Phase 1: request/response through the broker alone.
#[derive(Clone, Debug)]
pub struct RelayFigures {
    pub round_trips: usize,
    pub seconds: f64,
    pub per_s: f64,
    pub latency: Latencies,
    pub cpu: CpuUse,
    /// Connection errors of the bench's clients (0 in a clean run).
    pub reconnects: u64,
}

/// Where the time of completed tasks went, from the `ts_ms` the bridge stamps on each event
/// (wall clock, 1 ms resolution; the engine stamps a change when it takes it up, before the
/// commit that makes it durable):
/// - `accept`: submitted by the client → `queued` stamped (MQTT to the bridge, waiting for the
///   engine's previous work);
/// - `wait`: `queued` → first `dispatched` stamped (the commit of the submission, the queue,
///   a free device slot);
/// - `device`: `dispatched` → `completed` stamped (the dispatch commit, the device link both
///   ways, the device's work);
/// - `report`: `completed` stamped → the event received by the watching client (the commit,
///   the outbox, the broker).
#[derive(Clone, Debug, Default)]
pub struct Stages {
    pub accept: Latencies,
    pub wait: Latencies,
    pub device: Latencies,
    pub report: Latencies,
}

/// Phase 2: tasks through the bridge with a bounded number outstanding.
#[derive(Clone, Debug)]
pub struct ThroughputFigures {
    pub submitted: usize,
    pub completed: usize,
    /// Tasks that ended in another terminal state, and a few of them.
    pub failed: usize,
    pub failures: Vec<String>,
    /// First submission to last terminal event.
    pub seconds: f64,
    pub tasks_per_s: f64,
    /// Status events the watching client received per second (queued, dispatched, running,
    /// completed, ...): the rate at which the bridge's outbox reached clients.
    pub events_per_s: f64,
    /// Submit→completed, indexed by priority level (P0 first).
    pub per_priority: Vec<Latencies>,
    pub all: Latencies,
    pub stages: Stages,
    pub cpu: CpuUse,
    pub reconnects: u64,
}

/// Phase 3: P0 tasks while a backlog of P4 tasks drains.
#[derive(Clone, Debug)]
pub struct BacklogFigures {
    pub queued: usize,
    /// First submission to the last `queued` event, no device online.
    pub fill_seconds: f64,
    pub accepted_per_s: f64,
    /// First submission to the latest `ts_ms` of a `queued` event: when the bridge itself had
    /// taken the whole backlog.
    pub fill_bridge_seconds: f64,
    pub fill_cpu: CpuUse,
    pub p4_completed: usize,
    /// Devices started to the last P4 task's terminal event.
    pub drain_seconds: f64,
    pub drained_per_s: f64,
    /// Devices started to the latest `ts_ms` of a P4 terminal event: when the bridge itself
    /// had finished the backlog (its events reach clients later, through the outbox).
    pub drain_bridge_seconds: f64,
    /// Status events received per second while the backlog drained.
    pub drain_events_per_s: f64,
    pub drain_cpu: CpuUse,
    pub p0_submitted: usize,
    pub p0_completed: usize,
    /// Submit→completed of the P0 probes.
    pub p0: Latencies,
    pub p0_stages: Stages,
    /// P4 tasks not yet finished when the first and the last probe were submitted.
    pub backlog_at_first_probe: usize,
    pub backlog_at_last_probe: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    pub reconnects: u64,
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub options: Options,
    pub cpus: usize,
    pub arch: &'static str,
    /// 4 KiB write + fdatasync per second in the data directory.
    pub fsync_per_s: f64,
    pub relay: RelayFigures,
    pub throughput: ThroughputFigures,
    pub backlog: BacklogFigures,
}

impl Report {
    /// Bridge tasks/s as a fraction of the broker's raw round trips/s.
    pub fn ratio(&self) -> f64 {
        self.throughput.tasks_per_s / self.relay.per_s
    }
}

/// Milliseconds with one decimal, or "-" without samples.
fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1_000.0),
    )
}

fn share(s: Option<f64>) -> String {
    s.map_or_else(|| "?".to_owned(), |s| format!("{:.0} %", s * 100.0))
}

impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bridge {}, devices {}, bench clients {} (of one core, over {:.1} s)",
            share(self.bridge),
            share(self.devices),
            share(self.bench),
            self.wall_s
        )
    }
}

fn latency_line(f: &mut fmt::Formatter<'_>, name: &str, l: &Latencies) -> fmt::Result {
    writeln!(
        f,
        "  {name:<22} {:>6} {:>10} {:>10} {:>10}",
        l.len(),
        ms(l.p50()),
        ms(l.p99()),
        ms(l.max())
    )
}

fn stages(f: &mut fmt::Formatter<'_>, s: &Stages) -> fmt::Result {
    latency_line(f, " accept (-> queued)", &s.accept)?;
    latency_line(f, " wait (-> dispatched)", &s.wait)?;
    latency_line(f, " device (-> completed)", &s.device)?;
    latency_line(f, " report (-> received)", &s.report)
}

fn header(f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(
        f,
        "  {:<22} {:>6} {:>10} {:>10} {:>10}",
        "", "n", "p50", "p99", "max"
    )
}

fn failures(
    f: &mut fmt::Formatter<'_>,
    failed: usize,
    shown: &[String],
    reconnects: u64,
) -> fmt::Result {
    if failed > 0 {
        writeln!(f, "  NOT COMPLETED: {failed}, e.g. {}", shown.join("; "))?;
    }
    if reconnects > 0 {
        writeln!(
            f,
            "  WARNING: the bench's MQTT clients met {reconnects} connection errors"
        )?;
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "edge-bench: {} devices (8 slots each), {} tasks with {} outstanding, {} queued P4; \
             {} x {} CPUs",
            o.devices, o.tasks, o.concurrency, o.queued_p4, self.arch, self.cpus
        )?;
        writeln!(
            f,
            "disk: {:.0} fsync/s (4 KiB write + fdatasync, data directory)",
            self.fsync_per_s
        )?;

        let r = &self.relay;
        writeln!(f)?;
        writeln!(
            f,
            "1. broker raw relay (embedded rumqttd, QoS 1 request -> responder -> response, {} outstanding)",
            o.concurrency
        )?;
        writeln!(
            f,
            "  {} round trips in {:.2} s: {:.0} round trips/s",
            r.round_trips, r.seconds, r.per_s
        )?;
        header(f)?;
        latency_line(f, "round trip", &r.latency)?;
        writeln!(f, "  CPU: {}", r.cpu)?;
        failures(f, 0, &[], r.reconnects)?;

        let t = &self.throughput;
        writeln!(f)?;
        writeln!(
            f,
            "2. bridge throughput (echo tasks, P0..P5 in turn, {} outstanding)",
            o.concurrency
        )?;
        writeln!(
            f,
            "  {} of {} completed in {:.2} s: {:.0} tasks/s = {:.3} x the raw relay rate",
            t.completed,
            t.submitted,
            t.seconds,
            t.tasks_per_s,
            self.ratio()
        )?;
        writeln!(f, "  status events received: {:.0}/s", t.events_per_s)?;
        header(f)?;
        for (p, l) in t.per_priority.iter().enumerate() {
            latency_line(f, &format!("P{p} submit -> completed"), l)?;
        }
        latency_line(f, "all submit -> completed", &t.all)?;
        stages(f, &t.stages)?;
        writeln!(f, "  CPU: {}", t.cpu)?;
        failures(f, t.failed, &t.failures, t.reconnects)?;

        let b = &self.backlog;
        writeln!(f)?;
        writeln!(
            f,
            "3. P0 under a backlog ({} P4 echo tasks queued with no device online, then {} \
             devices drain them; a P0 echo task every {} ms)",
            b.queued, o.devices, o.p0_interval_ms
        )?;
        writeln!(
            f,
            "  fill: {} queued in {:.2} s as seen by clients ({:.0} submissions/s); the bridge \
             had stamped the last `queued` after {:.2} s",
            b.queued, b.fill_seconds, b.accepted_per_s, b.fill_bridge_seconds
        )?;
        writeln!(f, "  fill CPU: {}", b.fill_cpu)?;
        writeln!(
            f,
            "  drain: {} completed in {:.2} s as seen by clients ({:.0} tasks/s, {:.0} status \
             events/s); the bridge had stamped the last completion after {:.2} s",
            b.p4_completed,
            b.drain_seconds,
            b.drained_per_s,
            b.drain_events_per_s,
            b.drain_bridge_seconds
        )?;
        writeln!(f, "  drain CPU: {}", b.drain_cpu)?;
        writeln!(
            f,
            "  P0 probes: {} submitted, {} completed, submitted while {} -> {} P4 tasks were \
             unfinished",
            b.p0_submitted, b.p0_completed, b.backlog_at_first_probe, b.backlog_at_last_probe
        )?;
        header(f)?;
        latency_line(f, "P0 submit -> completed", &b.p0)?;
        stages(f, &b.p0_stages)?;
        failures(f, b.failed, &b.failures, b.reconnects)
    }
}
