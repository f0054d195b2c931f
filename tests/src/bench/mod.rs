//! The benchmark run by `edge-bench`: the real `edge-bridge` and `N` real `edge-device-sim`
//! processes, driven over MQTT by clients in this process.
//!
//! Phases, in one run:
//! 0. the data directory's fsync rate (the bridge commits every batch with an fsync);
//! 1. the broker's raw relay rate: QoS 1 request/response round trips through the bridge's own
//!    embedded broker, with no bridge logic in the path;
//! 2. bridge throughput: echo tasks of mixed priorities P0..P5 with a bounded number
//!    outstanding, tasks/s and submit→`completed` latency per priority;
//!    then `--sequential` echo tasks one at a time: the latency at light load;
//!    2m. phases 1, 2 and 2b again through an external mosquitto (`--no-mosquitto` skips it),
//!    so each broker's throughput ratio comes from the same run;
//! 3. P0 latency under a backlog: a fresh bridge holds `--queued-p4` P4 tasks submitted while
//!    no device was online; the devices connect and drain it while P0 tasks arrive
//!    periodically;
//! 4. DTLS handshakes per second: full DTLS 1.2 PSK handshakes from clients in this process
//!    (`edge_bridge::link::dtls::client`), a bounded number at a time, each session closed
//!    after its handshake;
//! 5. memory per established session: the bridge's resident memory while `--dtls-sessions`
//!    DTLS sessions are held, then as many plain TCP connections;
//! 6. phase 2 again with the devices over plain TCP, then over DTLS (`edge-device-sim
//!    --dtls`), and the ratio of the two.
//!
//! 7. the Harness incident (`incident`): urgent P0/P1 tasks arriving while long P3 work holds
//!    every slot and P4 work waits, with the urgent-work protocol off and on, on fresh bridges
//!    (`--no-incident` skips it);
//! 8. Mars Pathfinder across devices (`pathfinder`): a P0 on one device waiting for a bridge
//!    resource that a P4 holds on another device, where a P2 flood starves the holder; the
//!    P0's blocking time with priority inheritance off and on, on fresh bridges
//!    (`--no-pathfinder` skips it);
//! 9. memory per idle device link (`idle`): `--links` devices in this process over plain TCP
//!    hold a session each (`Hello`, `Welcome`, then heartbeats only) on a fresh bridge, and the
//!    growth of its resident memory per link (`--no-links` skips it).
//!
//! 10. the queue at scale (`queue`): `--queue-tasks` P4 tasks submitted to a fresh bridge
//!     with no device online; submissions/s, resident memory per queued task, and the time a
//!     restart takes to be ready with all of them; on mosquitto (the queue alone; not with
//!     `--no-mosquitto`), then with the embedded broker (`--no-queue` skips it).
//!
//! `--only` runs some groups of phases and skips the rest: `core` (0 to 3), `mosquitto` (2m),
//! `dtls` (4 to 6), `incident` (7), `pathfinder` (8), `links` (9), `queue` (10); for example
//! `edge-bench --only links --links 10000`.
//!
//! Phases 4 to 6 run on bridges with both a plain TCP and a DTLS device link, a fresh one per
//! measurement, with the DTLS link's limits far above the load (`--no-dtls` skips them).
//!
//! Latencies are measured with local clocks in this process: from just before a submission is
//! handed to the MQTT client to the moment the client's event loop received the event. Their
//! breakdown by stage compares the `ts_ms` the bridge stamps on each event with this process's
//! wall clock (the same machine's clock, 1 ms resolution). CPU use per phase comes from
//! `/proc` (bridge, devices, this process).
//!
//! # Layout
//! - `client`: an MQTT client that stamps every message it receives;
//! - `stats`: percentiles, CPU time from `/proc`, the fsync probe;
//! - `relay`: phase 1;
//! - `tasks`: phases 2 and 3 (and 6), and the bookkeeping of submitted tasks;
//! - `links`: the bridge with a plain TCP and a DTLS link, its keys and in-process DTLS
//!   clients;
//! - `handshakes`: phase 4;
//! - `memory`: phase 5;
//! - `idle`: phase 9, and the lightweight in-process devices it holds;
//! - `incident`: phase 7;
//! - `pathfinder`: phase 8;
//! - `report`: the figures and how they are printed.

mod client;
mod handshakes;
mod idle;
mod incident;
mod links;
mod memory;
mod pathfinder;
mod queue;
mod relay;
mod report;
mod stats;
mod tasks;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use links::DtlsLimits;
pub use report::{
    BacklogFigures, BrokerFigures, CoreFigures, CpuUse, DtlsFigures, HandshakeFigures,
    IdleLinkFigures, IncidentFigures, MemoryFigures, PathfinderFigures, QueueFigures, RelayFigures,
    Report, Stages, ThroughputFigures,
};
pub use stats::Latencies;

/// What to run. Every flag has a default, so `edge-bench` alone runs the standard benchmark.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "edge-bench",
    about = "Benchmark of edge-bridge: throughput, latency per priority, P0 under a backlog, \
             relative to the broker's raw relay rate; DTLS handshakes/s, memory per session and \
             tasks/s over DTLS relative to plain TCP"
)]
pub struct Options {
    /// Simulated devices (each an `edge-device-sim` process with 8 task slots).
    #[arg(long, default_value_t = 4)]
    pub devices: usize,
    /// Echo tasks submitted in the throughput phase (priorities P0..P5 in turn).
    #[arg(long, default_value_t = 5_000)]
    pub tasks: usize,
    /// Echo tasks submitted one at a time after the throughput phase, each once the previous
    /// one completed: the latency a task sees at light load.
    #[arg(long, default_value_t = 100)]
    pub sequential: usize,
    /// P4 tasks queued before the devices connect, in the P0-under-load phase.
    #[arg(long, default_value_t = 10_000)]
    pub queued_p4: usize,
    /// Tasks (or relay requests) outstanding at most: submitted and not yet finished.
    #[arg(long, alias = "window", default_value_t = 64)]
    pub concurrency: usize,
    /// Round trips measured in the raw relay phase.
    #[arg(long, default_value_t = 20_000)]
    pub relay_messages: usize,
    /// A P0 task is submitted this often (milliseconds) while the P4 backlog drains.
    #[arg(long, default_value_t = 50)]
    pub p0_interval_ms: u64,
    /// Where the bridges keep their queues (default: a temporary directory, removed after).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Full DTLS handshakes measured in phase 4.
    #[arg(long, default_value_t = 10_000)]
    pub dtls_handshakes: usize,
    /// Sessions held open in phase 5 (DTLS, then as many plain TCP connections). They send no
    /// device Hello, so the bridge closes them 7 s after they opened: all must open well
    /// within that.
    #[arg(long, default_value_t = 1_000)]
    pub dtls_sessions: usize,
    /// PSK keys the DTLS link is configured with, as a gateway holds one per device it
    /// serves: the bench's own identities and as many more as needed to reach this number.
    #[arg(long, default_value_t = 1_000)]
    pub dtls_keys: usize,
    /// DTLS clients handshaking at once in phases 4 and 5 (one PSK identity each).
    #[arg(long, default_value_t = 16)]
    pub dtls_concurrency: usize,
    /// Skips phases 4 to 6 (the DTLS link).
    #[arg(long)]
    pub no_dtls: bool,
    /// Skips phase 2m (phases 1, 2 and 2b again through an external mosquitto).
    #[arg(long)]
    pub no_mosquitto: bool,
    /// Phase 7: devices (8 slots each) whose slots long P3 work holds.
    #[arg(long, default_value_t = 16)]
    pub incident_devices: usize,
    /// Phase 7: how long each P3 and P4 task sleeps on its device (milliseconds); with the
    /// default 500 P4 behind 128 P3, 16 devices stay busy for the whole minute.
    #[arg(long, default_value_t = 5_000)]
    pub incident_long_ms: u64,
    /// Phase 7: P4 tasks queued behind the P3s.
    #[arg(long, default_value_t = 500)]
    pub incident_p4: usize,
    /// Phase 7: how long urgent tasks arrive (seconds).
    #[arg(long, default_value_t = 60)]
    pub incident_seconds: u64,
    /// Phase 7: a P0 or P1 task (in turn) arrives this often (milliseconds).
    #[arg(long, default_value_t = 500)]
    pub incident_urgent_ms: u64,
    /// Skips phase 7.
    #[arg(long)]
    pub no_incident: bool,
    /// Phase 8: rounds of the scenario on each of its two bridges (inheritance off, then on).
    #[arg(long, default_value_t = 5)]
    pub pathfinder_rounds: usize,
    /// Phase 8: P2 tasks flooding the holder's device in each round; at most 7, as the holder
    /// and the flood must share its 8 slots.
    #[arg(long, default_value_t = 5)]
    pub pathfinder_flood: usize,
    /// Phase 8: steps of each `count` task, the holder's and each flood task's (a device counts
    /// at most one per millisecond).
    #[arg(long, default_value_t = 500)]
    pub pathfinder_steps: u64,
    /// Skips phase 8.
    #[arg(long)]
    pub no_pathfinder: bool,
    /// Phase 9: idle device links held at once over plain TCP (devices in this process, one
    /// connection and one file descriptor each, in the bench and in the bridge).
    #[arg(long, default_value_t = 10_000)]
    pub links: usize,
    /// Phase 9: how long every link stays idle before the bridge's memory is read (seconds).
    /// The default outlasts the session's liveness timeout (7 s) and a heartbeat (2 s).
    #[arg(long, default_value_t = 9)]
    pub links_idle_s: u64,
    /// Skips phase 9.
    #[arg(long)]
    pub no_links: bool,
    /// Phase 10: P4 tasks queued on a fresh bridge with no device online.
    #[arg(long, default_value_t = 1_000_000)]
    pub queue_tasks: usize,
    /// Skips phase 10.
    #[arg(long)]
    pub no_queue: bool,
    /// Runs only these groups of phases (comma-separated), e.g. `--only links`; the `--no-*`
    /// flags still skip theirs.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Phases>,
    /// Each phase fails after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_s: u64,
}

/// Groups of phases, for `--only`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phases {
    /// 0 to 3: the disk, the broker's relay, throughput and light load, P0 under a backlog.
    Core,
    /// 2m: phases 1, 2 and 2b through mosquitto.
    Mosquitto,
    /// 4 to 6: DTLS handshakes, memory per session, tasks over DTLS.
    Dtls,
    /// 7: the Harness incident.
    Incident,
    /// 8: Mars Pathfinder.
    Pathfinder,
    /// 9: memory per idle device link.
    Links,
    /// 10: the queue at scale.
    Queue,
}

/// A phase fails when nothing at all arrives for this long while it waits for something.
const STALL: Duration = Duration::from_secs(60);

impl Options {
    fn phase_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }

    /// Whether this run includes `phases`: named by `--only` (or no `--only`), and not
    /// skipped by its `--no-*` flag.
    pub fn runs(&self, phases: Phases) -> bool {
        let skipped = match phases {
            Phases::Core => false,
            Phases::Mosquitto => self.no_mosquitto,
            Phases::Dtls => self.no_dtls,
            Phases::Incident => self.no_incident,
            Phases::Pathfinder => self.no_pathfinder,
            Phases::Links => self.no_links,
            Phases::Queue => self.no_queue,
        };
        (self.only.is_empty() || self.only.contains(&phases)) && !skipped
    }
}

/// Why a benchmark run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The options cannot make a meaningful run.
    #[error("invalid option: {0}")]
    Options(String),
    /// An MQTT client of the bench could not connect, subscribe or publish.
    #[error("MQTT client {client}: {reason}")]
    Mqtt { client: String, reason: String },
    /// A phase did not finish in time, or nothing happened for too long.
    #[error("{phase}: {what}")]
    Timeout { phase: &'static str, what: String },
    /// A bridge of phases 4 to 6 did not start or did not do what the phase needs.
    #[error("bridge: {0}")]
    Bridge(String),
    /// An in-process DTLS client could not be set up or could not connect.
    #[error("DTLS client: {0}")]
    Dtls(String),
    /// The data directory could not be created or written.
    #[error("data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs every phase and returns the figures. Progress goes to stderr.
pub async fn run(opts: &Options) -> Result<Report, BenchError> {
    let counts = [
        opts.devices,
        opts.tasks,
        opts.queued_p4,
        opts.concurrency,
        opts.relay_messages,
        opts.sequential,
    ];
    if (opts.runs(Phases::Core) || opts.runs(Phases::Dtls)) && counts.contains(&0) {
        return Err(BenchError::Options(
            "--devices, --tasks, --queued-p4, --concurrency, --relay-messages and --sequential \
             must be at least 1"
                .into(),
        ));
    }
    if opts.runs(Phases::Dtls)
        && [
            opts.dtls_handshakes,
            opts.dtls_sessions,
            opts.dtls_concurrency,
        ]
        .contains(&0)
    {
        return Err(BenchError::Options(
            "--dtls-handshakes, --dtls-sessions and --dtls-concurrency must be at least 1 \
             (--no-dtls skips those phases)"
                .into(),
        ));
    }
    if opts.runs(Phases::Incident)
        && (opts.incident_devices == 0
            || opts.incident_seconds == 0
            || opts.incident_urgent_ms == 0)
    {
        return Err(BenchError::Options(
            "--incident-devices, --incident-seconds and --incident-urgent-ms must be at least 1 (--no-incident skips that phase)"
                .into(),
        ));
    }
    if opts.runs(Phases::Pathfinder)
        && (opts.pathfinder_rounds == 0
            || opts.pathfinder_steps == 0
            || !(1..pathfinder::SLOTS).contains(&opts.pathfinder_flood))
    {
        return Err(BenchError::Options(format!(
            "--pathfinder-rounds and --pathfinder-steps must be at least 1, --pathfinder-flood \
             from 1 to {} (--no-pathfinder skips that phase)",
            pathfinder::SLOTS - 1
        )));
    }
    if opts.runs(Phases::Links) && (opts.links == 0 || opts.links_idle_s == 0) {
        return Err(BenchError::Options(
            "--links and --links-idle-s must be at least 1 (--no-links skips that phase)".into(),
        ));
    }
    if opts.runs(Phases::Core) && opts.p0_interval_ms == 0 {
        return Err(BenchError::Options(
            "--p0-interval-ms must be at least 1".into(),
        ));
    }
    if opts.runs(Phases::Queue) && opts.queue_tasks == 0 {
        return Err(BenchError::Options(
            "--queue-tasks must be at least 1 (--no-queue skips that phase)".into(),
        ));
    }
    // Phases 2m and 10 need mosquitto: say so before the other phases run, not after.
    let queue_on_mosquitto = opts.runs(Phases::Queue) && !opts.no_mosquitto;
    if (opts.runs(Phases::Mosquitto) || queue_on_mosquitto) && crate::mosquitto_binary().is_none() {
        return Err(BenchError::Options(
            "phase 2m needs mosquitto (apt-get install mosquitto), or --no-mosquitto to skip it"
                .into(),
        ));
    }
    let temp;
    let data_dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().map_err(|source| BenchError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&data_dir).map_err(|source| BenchError::Io {
        path: data_dir.clone(),
        source,
    })?;
    // Ids unique per run, so a reused --data-dir never answers with old tasks' states.
    let nonce = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64 & 0xffff_ffff)
    );

    let core = if opts.runs(Phases::Core) {
        Some(core(opts, &data_dir, &nonce).await?)
    } else {
        None
    };

    let mosquitto = if opts.runs(Phases::Mosquitto) {
        Some(through_mosquitto(opts, &data_dir, &nonce).await?)
    } else {
        None
    };

    let dtls = if opts.runs(Phases::Dtls) {
        Some(dtls(opts, &data_dir, &nonce).await?)
    } else {
        None
    };

    let incident = if opts.runs(Phases::Incident) {
        let off = incident::run(&data_dir, opts, &nonce, false).await?;
        let on = incident::run(&data_dir, opts, &nonce, true).await?;
        Some([off, on])
    } else {
        None
    };

    let pathfinder = if opts.runs(Phases::Pathfinder) {
        let off = pathfinder::run(&data_dir, opts, &nonce, false).await?;
        let on = pathfinder::run(&data_dir, opts, &nonce, true).await?;
        Some([off, on])
    } else {
        None
    };

    let links = if opts.runs(Phases::Links) {
        Some(idle::run(opts, &data_dir).await?)
    } else {
        None
    };

    let mut queue = Vec::new();
    if opts.runs(Phases::Queue) {
        if queue_on_mosquitto {
            let dir = data_dir.join("queue-mosquitto");
            std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
                path: dir.clone(),
                source,
            })?;
            let (broker, port) = crate::start_mosquitto(&dir);
            queue.push(queue::run(&dir, opts, &nonce, Some(port)).await?);
            drop(broker);
        }
        let dir = data_dir.join("queue-embedded");
        queue.push(queue::run(&dir, opts, &nonce, None).await?);
    }

    Ok(Report {
        options: opts.clone(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        arch: std::env::consts::ARCH,
        core,
        mosquitto,
        dtls,
        incident,
        pathfinder,
        links,
        queue,
    })
}

/// Phases 0 to 3: the disk's fsync rate, then the relay, throughput and light load on one
/// bridge, then P0 under a backlog on another.
async fn core(opts: &Options, data_dir: &Path, nonce: &str) -> Result<CoreFigures, BenchError> {
    eprintln!("[disk] measuring fsync rate in the data directory");
    let fsync_per_s =
        stats::fsync_rate(data_dir, Duration::from_secs(2)).map_err(|source| BenchError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;

    let bridge = crate::start_bridge(
        &data_dir.join("bridge-throughput"),
        &["--bridge-id", tasks::BRIDGE_ID],
    );
    eprintln!("[relay] bridge up: MQTT on {}", bridge.mqtt);
    let relay = relay::run(&bridge, opts, nonce).await?;
    let [throughput, sequential] =
        loaded_then_one_by_one(&bridge, opts, nonce, ["throughput", "sequential"]).await?;
    drop(bridge);

    let bridge = crate::start_bridge(
        &data_dir.join("bridge-backlog"),
        &["--bridge-id", tasks::BRIDGE_ID],
    );
    let backlog = tasks::backlog(&bridge, opts, nonce).await?;
    drop(bridge);
    Ok(CoreFigures {
        fsync_per_s,
        relay,
        throughput,
        sequential,
        backlog,
    })
}

/// Phases 2 and 2b on `bridge` (devices over plain TCP), named `phases`: `--tasks` with
/// `--concurrency` outstanding, then `--sequential` one at a time.
async fn loaded_then_one_by_one(
    bridge: &crate::Bridge,
    opts: &Options,
    nonce: &str,
    phases: [&'static str; 2],
) -> Result<[ThroughputFigures; 2], BenchError> {
    let [loaded, one_by_one] = phases;
    let run = |phase, tag, tasks, window| tasks::ThroughputRun {
        phase,
        tag,
        link: tasks::DeviceLink::Tcp,
        tasks,
        window,
    };
    let loaded = run(loaded, "t", opts.tasks, opts.concurrency);
    let loaded = tasks::throughput(bridge, opts, nonce, loaded).await?;
    let one_by_one = run(one_by_one, "s", opts.sequential, 1);
    let one_by_one = tasks::throughput(bridge, opts, nonce, one_by_one).await?;
    Ok([loaded, one_by_one])
}

/// Phase 2m: phases 1, 2 and 2b again with mosquitto as the broker (configured as
/// `broker-config/mosquitto.conf` says), a bridge in external mode on it.
async fn through_mosquitto(
    opts: &Options,
    data_dir: &Path,
    nonce: &str,
) -> Result<BrokerFigures, BenchError> {
    let dir = data_dir.join("mosquitto");
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
        path: dir.clone(),
        source,
    })?;
    let (broker, port) = crate::start_mosquitto(&dir);
    let bridge =
        crate::start_bridge_with_config(&dir, &crate::external_config(tasks::BRIDGE_ID, port));
    eprintln!("[mosquitto] mosquitto on 127.0.0.1:{port}, bridge up");
    let nonce = format!("{nonce}m");
    let relay = relay::run(&bridge, opts, &nonce).await?;
    let phases = ["mosquitto-throughput", "mosquitto-sequential"];
    let [throughput, sequential] = loaded_then_one_by_one(&bridge, opts, &nonce, phases).await?;
    drop(bridge);
    drop(broker);
    Ok(BrokerFigures {
        relay,
        throughput,
        sequential,
    })
}

/// Phases 4 to 6, each measurement on a fresh bridge with both links in `data_dir/bridge-*`.
async fn dtls(opts: &Options, data_dir: &Path, nonce: &str) -> Result<DtlsFigures, BenchError> {
    let client_keys = (0..opts.dtls_concurrency)
        .map(|w| links::Psk::random(format!("bench-client-{w}")))
        .collect::<Result<Vec<_>, _>>()?;
    let device_keys = (1..=opts.devices)
        .map(|k| links::Psk::random(format!("dtls-dev-{k}")))
        .collect::<Result<Vec<_>, _>>()?;
    let clients = client_keys
        .iter()
        .map(|k| links::DtlsClient::new(k).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    // Keys of devices that do not connect: the rest of the gateway's fleet.
    let own = client_keys.len() + device_keys.len();
    let fleet = (0..opts.dtls_keys.saturating_sub(own))
        .map(|i| links::Psk::random(format!("fleet-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<&links::Psk> = client_keys
        .iter()
        .chain(&device_keys)
        .chain(&fleet)
        .collect();
    let start = |name: &str| -> Result<links::LinkedBridge, BenchError> {
        let dir = data_dir.join(format!("bridge-{name}"));
        let lb = links::LinkedBridge::start(&dir, tasks::BRIDGE_ID, &keys)?;
        eprintln!(
            "[{name}] bridge up: MQTT on {}, TCP devices on {}, DTLS on {}; its log: {}",
            lb.bridge.mqtt,
            lb.bridge.devices,
            lb.udp,
            lb.log.display()
        );
        Ok(lb)
    };
    // What every bridge logged, read before it stops.
    let (mut refused, mut failed_logged) = (0, 0);
    let mut tally = |lb: &links::LinkedBridge| {
        refused += lb.refused();
        failed_logged += lb
            .log_lines("DTLS session ended without proving a device")
            .len();
    };

    let lb = start("dtls-handshakes")?;
    let handshakes = handshakes::run(&lb, &clients, opts).await?;
    tally(&lb);
    drop(lb);

    let lb = start("dtls-memory")?;
    let memory_dtls = memory::dtls(&lb, &clients, opts).await?;
    tally(&lb);
    drop(lb);
    let lb = start("tcp-memory")?;
    let memory_tcp = memory::tcp(&lb, opts).await?;
    tally(&lb);
    drop(lb);

    let lb = start("tcp-tasks")?;
    let run = tasks::ThroughputRun {
        phase: "tcp-tasks",
        tag: "tcp",
        link: tasks::DeviceLink::Tcp,
        tasks: opts.tasks,
        window: opts.concurrency,
    };
    let tcp = tasks::throughput(&lb.bridge, opts, nonce, run).await?;
    tally(&lb);
    drop(lb);
    let lb = start("dtls-tasks")?;
    let run = tasks::ThroughputRun {
        phase: "dtls-tasks",
        tag: "dtls",
        link: tasks::DeviceLink::Dtls {
            addr: lb.udp,
            keys: &device_keys,
        },
        tasks: opts.tasks,
        window: opts.concurrency,
    };
    let dtls = tasks::throughput(&lb.bridge, opts, nonce, run).await?;
    tally(&lb);
    drop(lb);
    Ok(DtlsFigures {
        limits: links::LIMITS,
        keys: keys.len(),
        refused,
        failed_logged,
        handshakes,
        memory_dtls,
        memory_tcp,
        tcp,
        dtls,
    })
}
