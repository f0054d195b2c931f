//! The figures of a run and their printed form (plain text, pasted as is into BENCHMARKS.md).

use std::fmt;
use std::time::Duration;

use super::Options;
use super::links::{CIPHER, DtlsLimits};
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

/// Phase 10: the queue at scale.
#[derive(Clone, Debug)]
pub struct QueueFigures {
    /// "external mosquitto" or "embedded broker".
    pub broker: &'static str,
    /// P4 tasks queued (no device online).
    pub tasks: u64,
    /// From the first submission to the last one live (accepted: committed).
    pub fill_s: f64,
    pub fill_cpu: CpuUse,
    /// The bridge's resident memory when ready and empty, then with every task queued and
    /// their `queued` events published.
    pub rss_empty_kib: u64,
    pub rss_full_kib: u64,
    /// SIGTERM to exit, with every task queued.
    pub stop_s: f64,
    /// Start to ready line, with every task queued, and its memory then.
    pub restart_s: f64,
    pub rss_restarted_kib: u64,
    /// The disk the bridge's data directory takes with every task queued (allocated blocks).
    pub disk_bytes: u64,
}

impl QueueFigures {
    /// Resident bytes per queued task: (full − empty) ÷ tasks.
    pub fn bytes_per_task(&self, rss_kib: u64) -> f64 {
        rss_kib.saturating_sub(self.rss_empty_kib) as f64 * 1024.0 / self.tasks.max(1) as f64
    }

    /// Accepted submissions per second.
    pub fn per_s(&self) -> f64 {
        self.tasks as f64 / self.fill_s.max(1e-9)
    }
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

/// Phase 2m: the raw relay, the throughput and the one-at-a-time latency with mosquitto as
/// the broker (the bridge in external mode). The bridge's CPU figures do not include the
/// broker's, which runs in its own process here.
#[derive(Clone, Debug)]
pub struct BrokerFigures {
    pub relay: RelayFigures,
    pub throughput: ThroughputFigures,
    pub sequential: ThroughputFigures,
}

impl BrokerFigures {
    /// Bridge tasks/s as a fraction of this broker's raw round trips/s.
    pub fn ratio(&self) -> f64 {
        self.throughput.tasks_per_s / self.relay.per_s
    }
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

/// Phase 4: full DTLS handshakes, each session closed right after.
#[derive(Clone, Debug)]
pub struct HandshakeFigures {
    pub handshakes: usize,
    /// Clients handshaking at once.
    pub concurrency: usize,
    pub completed: usize,
    pub failed: usize,
    pub failures: Vec<String>,
    /// From the first handshake's start to the last client's end (its close included).
    pub seconds: f64,
    pub per_s: f64,
    /// From the client's first datagram (a fresh UDP port) to its handshake's end: the cookie
    /// exchange and the full handshake, three round trips.
    pub latency: Latencies,
    pub cpu: CpuUse,
}

/// Phase 5: one kind of session held open, and the bridge's resident memory.
#[derive(Clone, Debug)]
pub struct MemoryFigures {
    pub sessions: usize,
    /// How long opening all of them took.
    pub open_seconds: f64,
    /// The bridge's `VmRSS` before the first was opened and while all were held.
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
}

impl MemoryFigures {
    pub(crate) fn new(sessions: usize, open_seconds: f64, before: u64, held: u64) -> Self {
        Self {
            sessions,
            open_seconds,
            rss_before_kib: before,
            rss_held_kib: held,
        }
    }

    /// Growth of the resident memory per session, in KiB (negative if it shrank).
    pub fn per_session_kib(&self) -> f64 {
        (self.rss_held_kib as f64 - self.rss_before_kib as f64) / self.sessions.max(1) as f64
    }
}

/// Phases 4 to 6, on bridges with both a plain TCP and a DTLS device link.
#[derive(Clone, Debug)]
pub struct DtlsFigures {
    pub limits: DtlsLimits,
    /// PSK keys the DTLS link was configured with.
    pub keys: usize,
    /// Limiter refusals the bridges logged over phases 4 to 6 (0 in a valid run).
    pub refused: u64,
    /// Handshakes the bridges logged as failed.
    pub failed_logged: usize,
    pub handshakes: HandshakeFigures,
    pub memory_dtls: MemoryFigures,
    pub memory_tcp: MemoryFigures,
    /// Phase 2 again, devices over plain TCP, then over DTLS.
    pub tcp: ThroughputFigures,
    pub dtls: ThroughputFigures,
}

impl DtlsFigures {
    /// Tasks/s over DTLS as a fraction of tasks/s over plain TCP, in the same run.
    pub fn ratio(&self) -> f64 {
        self.dtls.tasks_per_s / self.tcp.tasks_per_s
    }
}

/// Phase 7: one run of the Harness incident (urgent tasks arriving while long low-priority
/// work holds every slot), with the urgent-work protocol on or off.
#[derive(Clone, Debug)]
pub struct IncidentFigures {
    /// Reservation and taking back on (the defaults), or both off.
    pub protocol: bool,
    pub devices: usize,
    /// Slots low-priority work could hold (all of them without the protocol).
    pub low_slots: usize,
    /// How long each low-priority task sleeps on its device.
    pub long_ms: u64,
    /// P4 tasks queued behind the P3s filling the slots.
    pub p4: usize,
    /// The window in which urgent tasks arrived.
    pub seconds: f64,
    pub urgent_submitted: usize,
    pub urgent_completed: usize,
    /// Submit → `running` received, P0 then P1.
    pub running: [Latencies; 2],
    /// Submit → `completed` received, P0 then P1.
    pub completed: [Latencies; 2],
    /// P3 and P4 tasks completed during the window.
    pub low_completed: usize,
    /// P3 and P4 work done during the window, in tasks (fractions of the tasks running at
    /// its ends included), and per second.
    pub low_work: f64,
    pub low_per_s: f64,
    pub failed: usize,
    pub failures: Vec<String>,
}

/// Phase 8: one bridge's rounds of Mars Pathfinder across devices (a P4 holder of `bus-x`
/// starved by a P2 flood on its device, a P0 on another device waiting for `bus-x`), with
/// inheritance on or off.
#[derive(Clone, Debug)]
pub struct PathfinderFigures {
    /// Whether `bus-x` lends a waiter's priority to its holder.
    pub inheritance: bool,
    pub rounds: usize,
    /// P2 tasks flooding the holder's device in each round.
    pub flood: usize,
    /// Steps of each `count` task, the holder's and the flood's (at most one per ms).
    pub steps: u64,
    /// Tasks of every kind (holders, flood, P0s), and how many completed.
    pub submitted: usize,
    pub completed: usize,
    pub p0_completed: usize,
    /// The P0's blocking time: submit → `running` received (its device is idle; what it
    /// waits for is `bus-x`).
    pub blocked: Latencies,
    /// The P0's submit → `completed` received.
    pub p0_done: Latencies,
    /// Per round, the holder's steps left when the P0 was submitted, at least: its steps less
    /// the milliseconds it ran before the flood did (their `running` events as received).
    pub holder_left: Vec<u64>,
    /// The holder's P0 submitted → holder `completed` received: its remaining work, done at the
    /// P0's priority with inheritance, after the flood without.
    pub holder_after: Latencies,
    /// Rounds in which the holder had ended before the P0 was submitted: nothing to block on.
    pub holder_done_first: usize,
    /// From the first round's start to the last round's end.
    pub seconds: f64,
    pub failed: usize,
    pub failures: Vec<String>,
}

/// Phase 9: idle device links over plain TCP held by one bridge.
#[derive(Clone, Debug)]
pub struct IdleLinkFigures {
    /// `sessions`: the links; `open_seconds`: until the last was welcomed; the bridge's
    /// `VmRSS` before the first connected and after all had been idle for `idle_seconds`.
    pub memory: MemoryFigures,
    pub idle_seconds: u64,
    /// Device sessions open on the bridge's TCP links by its own count (metrics endpoint),
    /// when the memory was read.
    pub bridge_sessions: u64,
    /// The bridge's open file descriptors before and while the links were held.
    pub fds_before: usize,
    pub fds_held: usize,
    /// The limit on open files the bench and the bridge ran with.
    pub fd_limit: u64,
    /// While the links were idle (heartbeats only): the bridge's and the bench's CPU.
    pub cpu: CpuUse,
}

/// Phases 0 to 3, on two bridges with the embedded broker.
#[derive(Clone, Debug)]
pub struct CoreFigures {
    /// 4 KiB write + fdatasync per second in the data directory.
    pub fsync_per_s: f64,
    pub relay: RelayFigures,
    pub throughput: ThroughputFigures,
    /// Phase 2b: phase 2 one task at a time.
    pub sequential: ThroughputFigures,
    pub backlog: BacklogFigures,
}

impl CoreFigures {
    /// Bridge tasks/s as a fraction of the broker's raw round trips/s.
    pub fn ratio(&self) -> f64 {
        self.throughput.tasks_per_s / self.relay.per_s
    }
}

/// Everything one run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub options: Options,
    pub cpus: usize,
    pub arch: &'static str,
    /// Phases 0 to 3; `None` when `--only` leaves them out.
    pub core: Option<CoreFigures>,
    /// Phase 2m; `None` with `--no-mosquitto`.
    pub mosquitto: Option<BrokerFigures>,
    /// Phases 4 to 6; `None` with `--no-dtls`.
    pub dtls: Option<DtlsFigures>,
    /// Phase 7, protocol off then on; `None` with `--no-incident`.
    pub incident: Option<[IncidentFigures; 2]>,
    /// Phase 8, inheritance off then on; `None` with `--no-pathfinder`.
    pub pathfinder: Option<[PathfinderFigures; 2]>,
    /// Phase 9; `None` with `--no-links`.
    pub links: Option<IdleLinkFigures>,
    /// Phase 10: on mosquitto (unless `--no-mosquitto`), then with the embedded broker; empty
    /// with `--no-queue`.
    pub queue: Vec<QueueFigures>,
}

impl Report {
    /// Phase 8: the P0's blocking time without inheritance as a multiple of the time with it,
    /// at the percentile `p`; `None` without phase 8 or without samples.
    pub fn pathfinder_ratio(&self, p: f64) -> Option<f64> {
        let [off, on] = self.pathfinder.as_ref()?;
        let (off, on) = (off.blocked.percentile(p)?, on.blocked.percentile(p)?);
        Some(off.as_secs_f64() / on.as_secs_f64().max(1e-9))
    }
}

/// Milliseconds with one decimal, or "-" without samples.
fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1_000.0),
    )
}

/// CPU time per item in microseconds: a share of one core over `wall_s`, spread over `n`.
fn per_item_us(share: Option<f64>, wall_s: f64, n: usize) -> Option<f64> {
    Some(share? * wall_s * 1e6 / n.max(1) as f64)
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "?".to_owned(), |v| format!("{v:.0} us"))
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

/// Everything of a throughput run after its first line.
fn throughput_table(f: &mut fmt::Formatter<'_>, t: &ThroughputFigures) -> fmt::Result {
    writeln!(f, "  status events received: {:.0}/s", t.events_per_s)?;
    header(f)?;
    for (p, l) in t.per_priority.iter().enumerate() {
        latency_line(f, &format!("P{p} submit -> completed"), l)?;
    }
    latency_line(f, "all submit -> completed", &t.all)?;
    stages(f, &t.stages)?;
    writeln!(f, "  CPU: {}", t.cpu)?;
    let bridge = per_item_us(t.cpu.bridge, t.cpu.wall_s, t.completed);
    writeln!(
        f,
        "  bridge CPU per task: {} (goal: at most {BRIDGE_CPU_GOAL_US} us)",
        us(bridge)
    )?;
    failures(f, t.failed, &t.failures, t.reconnects)
}

/// Issue 18's goal for the bridge's CPU time per echo task, end to end (microseconds).
const BRIDGE_CPU_GOAL_US: u32 = 150;

/// Phase 2m, with the embedded broker's ratio beside mosquitto's.
fn mosquitto(
    f: &mut fmt::Formatter<'_>,
    m: &BrokerFigures,
    embedded_ratio: Option<f64>,
    outstanding: usize,
) -> fmt::Result {
    let (r, t, s) = (&m.relay, &m.throughput, &m.sequential);
    writeln!(f)?;
    writeln!(
        f,
        "2m. through an external mosquitto (broker-config/mosquitto.conf; the bridge in external \
         mode; CPU figures without mosquitto's own)"
    )?;
    writeln!(
        f,
        "  raw relay: {} round trips in {:.2} s: {:.0} round trips/s ({outstanding} outstanding)",
        r.round_trips, r.seconds, r.per_s
    )?;
    header(f)?;
    latency_line(f, "round trip", &r.latency)?;
    failures(f, 0, &[], r.reconnects)?;
    let embedded =
        embedded_ratio.map_or_else(|| "not run".to_owned(), |r| format!("{r:.3} x its own"));
    writeln!(
        f,
        "  throughput: {} of {} completed in {:.2} s: {:.0} tasks/s = {:.3} x mosquitto's raw \
         relay rate (embedded broker: {embedded})",
        t.completed,
        t.submitted,
        t.seconds,
        t.tasks_per_s,
        m.ratio()
    )?;
    throughput_table(f, t)?;
    one_at_a_time(f, "  one at a time: ", s)
}

/// A phase 2b run: its count, time and median, then its table.
fn one_at_a_time(f: &mut fmt::Formatter<'_>, lead: &str, t: &ThroughputFigures) -> fmt::Result {
    writeln!(
        f,
        "{lead}{} of {} completed in {:.2} s: submit -> completed P50 {}",
        t.completed,
        t.submitted,
        t.seconds,
        ms(t.all.percentile(50.0)),
    )?;
    throughput_table(f, t)
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
        writeln!(f, "edge-bench: {} x {} CPUs", self.arch, self.cpus)?;
        match &self.core {
            Some(core) => core.fmt_with(f, o, self.mosquitto.as_ref())?,
            None => {
                if let Some(m) = &self.mosquitto {
                    mosquitto(f, m, None, o.concurrency)?;
                }
            }
        }
        if let Some(d) = &self.dtls {
            d.fmt_with(f, o)?;
        }
        if let Some(runs) = &self.incident {
            incident(f, o, runs)?;
        }
        if let Some(runs) = &self.pathfinder {
            pathfinder(f, runs)?;
            let ratio = |p| {
                self.pathfinder_ratio(p)
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.2} x"))
            };
            writeln!(
                f,
                "  P0 blocked without / with inheritance: {} (P50), {} (max)",
                ratio(50.0),
                ratio(100.0)
            )?;
        }
        if let Some(links) = &self.links {
            links.fmt(f)?;
        }
        if let Some(first) = self.queue.first() {
            writeln!(f)?;
            writeln!(
                f,
                "10. The queue at scale: {} P4 tasks submitted to a fresh bridge, no device online",
                first.tasks
            )?;
        }
        for q in &self.queue {
            queue(f, q)?;
        }
        Ok(())
    }
}

/// Section 10 of the report: the queue at scale, on one broker.
fn queue(f: &mut fmt::Formatter<'_>, q: &QueueFigures) -> fmt::Result {
    let mib = |kib: u64| kib as f64 / 1024.0;
    writeln!(f, "  {}:", q.broker)?;
    writeln!(
        f,
        "  accepted in {:.1} s: {:.0} submissions/s (goal: at least 50,000); CPU: {}",
        q.fill_s,
        q.per_s(),
        q.fill_cpu
    )?;
    if let Some(cpu) = q.fill_cpu.bridge {
        writeln!(
            f,
            "  bridge CPU per submission: {:.1} µs",
            cpu * q.fill_cpu.wall_s * 1e6 / q.tasks.max(1) as f64
        )?;
    }
    writeln!(
        f,
        "  bridge resident memory: {:.1} MiB empty, {:.1} MiB with every task queued: {:.0} bytes per queued task (goal: at most 128)",
        mib(q.rss_empty_kib),
        mib(q.rss_full_kib),
        q.bytes_per_task(q.rss_full_kib)
    )?;
    writeln!(
        f,
        "  stopped (SIGTERM) in {:.2} s; restarted to ready in {:.2} s (goal: at most 2 s), then {:.1} MiB: {:.0} bytes per queued task",
        q.stop_s,
        q.restart_s,
        mib(q.rss_restarted_kib),
        q.bytes_per_task(q.rss_restarted_kib)
    )?;
    writeln!(
        f,
        "  disk: {:.0} MB used by the data directory, {:.0} bytes per queued task",
        q.disk_bytes as f64 / 1e6,
        q.disk_bytes as f64 / q.tasks.max(1) as f64
    )
}

/// The goal of issue 18 for an idle TCP device link, in KiB of the bridge's memory.
const IDLE_LINK_GOAL_KIB: f64 = 8.0;

impl IdleLinkFigures {
    /// Section 9 of the report.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.memory;
        writeln!(f)?;
        writeln!(
            f,
            "9. memory per idle device link over plain TCP (devices in this process: Hello, \
             Welcome, then heartbeats only; a fresh bridge; growth of its VmRSS from before the \
             first connected to after all had been idle {} s, divided by their number)",
            self.idle_seconds
        )?;
        writeln!(
            f,
            "  {} links welcomed in {:.2} s, {} held by the bridge after {} s idle (its \
             metrics); its open files {} -> {} (limit {})",
            m.sessions,
            m.open_seconds,
            self.bridge_sessions,
            self.idle_seconds,
            self.fds_before,
            self.fds_held,
            self.fd_limit
        )?;
        writeln!(
            f,
            "  VmRSS {} -> {} KiB: {:.2} KiB per idle device link (goal: at most \
             {IDLE_LINK_GOAL_KIB} KiB)",
            m.rss_before_kib,
            m.rss_held_kib,
            m.per_session_kib()
        )?;
        writeln!(
            f,
            "  CPU while idle: bridge {}, bench devices {} (of one core, over {:.1} s)",
            share(self.cpu.bridge),
            share(self.cpu.bench),
            self.cpu.wall_s
        )
    }
}

impl CoreFigures {
    /// The disk line and sections 1 to 3 of the report (2m among them when it ran).
    fn fmt_with(
        &self,
        f: &mut fmt::Formatter<'_>,
        o: &Options,
        mosquitto_figures: Option<&BrokerFigures>,
    ) -> fmt::Result {
        writeln!(
            f,
            "{} devices (8 slots each), {} tasks with {} outstanding, {} queued P4",
            o.devices, o.tasks, o.concurrency, o.queued_p4
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
        throughput_table(f, t)?;

        writeln!(f)?;
        writeln!(
            f,
            "2b. latency at light load (echo tasks one at a time, each submitted once the \
             previous one completed; the clients set TCP_NODELAY)"
        )?;
        one_at_a_time(f, "  ", &self.sequential)?;

        if let Some(m) = mosquitto_figures {
            mosquitto(f, m, Some(self.ratio()), o.concurrency)?;
        }

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
        failures(f, b.failed, &b.failures, b.reconnects)?;
        Ok(())
    }
}

/// Section 7 of the report: the incident without and with the protocol.
fn incident(f: &mut fmt::Formatter<'_>, o: &Options, runs: &[IncidentFigures; 2]) -> fmt::Result {
    let [off, on] = runs;
    writeln!(f)?;
    writeln!(
        f,
        "7. The Harness incident: {} devices of 8 slots, every slot low-priority work can take holding a P3 `sleep` of {} ms, {} P4 queued behind; for {} s a P0 or P1 `sleep` of 20 ms every {} ms, in turn; a fresh bridge per run",
        on.devices, on.long_ms, on.p4, o.incident_seconds, o.incident_urgent_ms
    )?;
    for r in runs {
        writeln!(f)?;
        writeln!(
            f,
            "  protocol {} ({} slots for low-priority work): {} urgent submitted, {} completed; {} P3/P4 completed in {:.1} s, {:.1} tasks of P3/P4 work ({:.3} tasks/s)",
            if r.protocol { "on " } else { "off" },
            r.low_slots,
            r.urgent_submitted,
            r.urgent_completed,
            r.low_completed,
            r.seconds,
            r.low_work,
            r.low_per_s
        )?;
        header(f)?;
        latency_line(f, "P0 submit -> running", &r.running[0])?;
        latency_line(f, "P1 submit -> running", &r.running[1])?;
        latency_line(f, "P0 submit -> completed", &r.completed[0])?;
        latency_line(f, "P1 submit -> completed", &r.completed[1])?;
        failures(f, r.failed, &r.failures, 0)?;
    }
    // Without low-priority work done in the run without the protocol there is nothing to
    // compare with: said so, not printed as "no loss".
    let loss = if off.low_per_s > 0.0 {
        format!("{:+.1} %", (1.0 - on.low_per_s / off.low_per_s) * 100.0)
    } else {
        "n/a (no low-priority work done without the protocol)".to_owned()
    };
    writeln!(
        f,
        "  low-priority throughput with the protocol: {loss} lost against without (goal: at most 5 %)"
    )
}

/// Section 8 of the report: Mars Pathfinder without and with inheritance (the ratio is
/// printed by the caller, which has the [`Report`]).
fn pathfinder(f: &mut fmt::Formatter<'_>, runs: &[PathfinderFigures; 2]) -> fmt::Result {
    let on = &runs[1];
    writeln!(f)?;
    writeln!(
        f,
        "8. Mars Pathfinder across devices: on dev-a a P4 `count` of {} steps holding bus-x, then {} P2 `count` of {} steps (dev-a runs the most urgent ready task), then a P0 `sleep` of 20 ms for dev-b naming bus-x; {} rounds on a fresh bridge per run, [urgent] reserve = 0, max_preemptions = 0",
        on.steps, on.flood, on.steps, on.rounds
    )?;
    for r in runs {
        let mut left = r.holder_left.clone();
        left.sort_unstable();
        let left = match (
            left.first(),
            left.get(left.len().saturating_sub(1) / 2),
            left.last(),
        ) {
            (Some(min), Some(median), Some(max)) => {
                format!(
                    "{min} / {median} / {max} of {} steps (min / median / max)",
                    r.steps
                )
            }
            _ => "-".to_owned(),
        };
        writeln!(f)?;
        writeln!(
            f,
            "  inheritance {}: {} of {} tasks completed ({} of {} P0) in {:.1} s; the holder's work left when the P0 arrived, at least: {left}; rounds in which the holder had ended first: {}",
            if r.inheritance { "on " } else { "off" },
            r.completed,
            r.submitted,
            r.p0_completed,
            r.rounds,
            r.seconds,
            r.holder_done_first
        )?;
        header(f)?;
        latency_line(f, "P0 submit -> running", &r.blocked)?;
        latency_line(f, "P0 submit -> completed", &r.p0_done)?;
        latency_line(f, "P0 -> holder completed", &r.holder_after)?;
        failures(f, r.failed, &r.failures, 0)?;
    }
    Ok(())
}

impl DtlsFigures {
    /// Sections 4 to 6 of the report.
    fn fmt_with(&self, f: &mut fmt::Formatter<'_>, o: &Options) -> fmt::Result {
        let l = &self.limits;
        writeln!(f)?;
        writeln!(
            f,
            "DTLS link (phases 4-6): a fresh bridge per measurement with a plain TCP and a DTLS \
             link; {CIPHER} only, {} PSK keys in its psk_file; limits far above the load so the \
             limiter is not measured (handshakes_per_second = {} (also per address), \
             max_half_open = {} (also per address), max_sessions = {} (also per identity), \
             idle_timeout = {} s): {} handshakes refused for a limit, {} failed handshakes \
             logged (within the log budget of remote events)",
            self.keys,
            l.handshakes_per_second,
            l.max_half_open,
            l.max_sessions,
            l.idle_timeout.as_secs(),
            self.refused,
            self.failed_logged
        )?;

        let h = &self.handshakes;
        writeln!(f)?;
        writeln!(
            f,
            "4. DTLS handshakes (full DTLS 1.2 PSK handshakes with the cookie exchange, each from \
             a fresh UDP port, {} clients in this process at a time; each session closed right \
             after its handshake)",
            h.concurrency
        )?;
        writeln!(
            f,
            "  {} of {} completed in {:.2} s: {:.0} handshakes/s",
            h.completed, h.handshakes, h.seconds, h.per_s
        )?;
        header(f)?;
        latency_line(f, "handshake", &h.latency)?;
        writeln!(
            f,
            "  CPU: bridge {}, bench clients {} (of one core, over {:.1} s); per handshake: \
             bridge {}, bench clients {}",
            share(h.cpu.bridge),
            share(h.cpu.bench),
            h.cpu.wall_s,
            us(per_item_us(h.cpu.bridge, h.cpu.wall_s, h.completed)),
            us(per_item_us(h.cpu.bench, h.cpu.wall_s, h.completed))
        )?;
        failures(f, h.failed, &h.failures, 0)?;

        writeln!(f)?;
        writeln!(
            f,
            "5. memory per established session (growth of the bridge's VmRSS while the sessions \
             are opened and held, divided by their number; a fresh bridge for each kind; no \
             device Hello is sent, and all were still open when VmRSS was read)"
        )?;
        for (what, m) in [
            ("DTLS sessions (handshake done)", &self.memory_dtls),
            ("plain TCP connections (accepted)", &self.memory_tcp),
        ] {
            writeln!(
                f,
                "  {} {what}, opened in {:.2} s: VmRSS {} -> {} KiB: {:.1} KiB each",
                m.sessions,
                m.open_seconds,
                m.rss_before_kib,
                m.rss_held_kib,
                m.per_session_kib()
            )?;
        }

        writeln!(f)?;
        writeln!(
            f,
            "6. tasks over DTLS vs plain TCP (phase 2 again, {} echo tasks with {} outstanding \
             and {} devices, on a fresh bridge each: devices over plain TCP, then over DTLS)",
            o.tasks, o.concurrency, o.devices
        )?;
        for (what, t) in [("plain TCP", &self.tcp), ("DTLS", &self.dtls)] {
            writeln!(
                f,
                "  {what}: {} of {} completed in {:.2} s: {:.0} tasks/s",
                t.completed, t.submitted, t.seconds, t.tasks_per_s
            )?;
            throughput_table(f, t)?;
        }
        writeln!(f, "  DTLS / plain TCP = {:.3}", self.ratio())?;
        // CPU time per task varies less with the machine's other load than tasks/s does.
        let per_task =
            |t: &ThroughputFigures, s: Option<f64>| per_item_us(s, t.cpu.wall_s, t.completed);
        for (what, tcp, dtls) in [
            (
                "bridge",
                per_task(&self.tcp, self.tcp.cpu.bridge),
                per_task(&self.dtls, self.dtls.cpu.bridge),
            ),
            (
                "devices",
                per_task(&self.tcp, self.tcp.cpu.devices),
                per_task(&self.dtls, self.dtls.cpu.devices),
            ),
        ] {
            let ratio = tcp
                .zip(dtls)
                .map_or_else(|| "?".to_owned(), |(t, d)| format!("{:.2}", d / t));
            writeln!(
                f,
                "  CPU per task, {what}: {} over plain TCP, {} over DTLS (DTLS / plain TCP = \
                 {ratio})",
                us(tcp),
                us(dtls)
            )?;
        }
        Ok(())
    }
}
