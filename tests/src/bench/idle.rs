//! Phase 9: the bridge's memory per idle device link over plain TCP.
//!
//! `--links` devices live in this process, each a device-core session
//! (`Session<DeviceSide, …>`) on a tokio `TcpStream` — an `edge-device-sim` process each would
//! cost the machine far more than the bridge it measures. Each connects to a fresh bridge,
//! says `Hello`, is welcomed, tells its free slots, and then stays idle: it and the bridge
//! exchange heartbeats and nothing else. The bridge's resident memory is read before the first
//! device connects and once every link has been idle for `--links-idle-s` (by default longer
//! than the session's liveness timeout plus a heartbeat interval, so every link has proved
//! itself alive by heartbeats alone); then the bridge must still hold every session (by its
//! own count, on its metrics endpoint) and no device may have lost its link.
//!
//! Each process holds one file descriptor per link: the bench raises its own soft limit on
//! open files to the hard one (the bridge, its child, inherits it), or says why it cannot run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use device_core::Instant;
use device_core::link::{Config, DeviceSide, Event, Session, State};
use device_core::proto::{Deframer, MAX_FRAME, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::report::{IdleLinkFigures, MemoryFigures};
use super::stats::{CpuSnapshot, Progress, open_fds, rss_kib, sample_sum, scrape};
use super::{BenchError, Options, STALL};
use crate::Bridge;

const PHASE: &str = "idle-links";

/// Devices handshaking at once: well under the bridge's listen backlog (1,024), so no SYN
/// waits for a retry.
const HANDSHAKES_AT_ONCE: usize = 64;

/// Task slots each device announces (all free), as the simulator's default.
const SLOTS: u8 = 8;

/// File descriptors each process needs beyond one per link: the bridge's broker, queue,
/// listeners and log; the bench's runtime and clients.
const FD_MARGIN: u64 = 256;

/// A bench device's session: it sends no reliable message, so a window of one is plenty (the
/// bridge's side is what is measured).
type IdleSession = Session<DeviceSide, 1, 0>;

/// What the devices saw, shared with the phase.
#[derive(Debug, Default)]
struct Tally {
    /// Sessions the bridge welcomed.
    welcomed: AtomicUsize,
    /// Devices whose link ended before the phase stopped them (a failure).
    ended: AtomicUsize,
    /// Why the first few ended.
    reasons: Mutex<Vec<String>>,
}

impl Tally {
    fn ended(&self, why: String) {
        self.ended.fetch_add(1, Ordering::SeqCst);
        let mut reasons = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        if reasons.len() < 5 {
            reasons.push(why);
        }
    }

    fn reasons(&self) -> String {
        self.reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("; ")
    }
}

/// Raises this process's soft limit on open files to its hard limit (the bridge started next
/// inherits it) and checks that `links` links fit in it; returns the limit.
fn raise_file_limit(links: usize) -> Result<u64, BenchError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if limit.current.is_some_and(|soft| soft < hard) {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised).map_err(|e| {
            BenchError::Options(format!(
                "cannot raise the limit on open files from {:?} to {hard}: {e}",
                limit.current
            ))
        })?;
    }
    let needed = links as u64 + FD_MARGIN;
    if hard < needed {
        return Err(BenchError::Options(format!(
            "--links {links} needs {needed} open files in the bench and in the bridge, and the \
             hard limit is {hard}: raise it (ulimit -Hn as root, LimitNOFILE= in a unit) or \
             lower --links"
        )));
    }
    Ok(hard)
}

/// The bridge of phase 9: the embedded broker, one plain TCP device link whose caps are far
/// above `links`, and the metrics endpoint (for its count of sessions), in `dir`.
fn start_bridge(dir: &Path, links: usize) -> Result<(Bridge, std::path::PathBuf), BenchError> {
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = crate::embedded_config(super::tasks::BRIDGE_ID);
    // Every bench device is on 127.0.0.1: the per-address cap is the total.
    config.links = vec![broker_config::LinkConfig::Tcp {
        listen: loopback,
        max_connections: links * 2,
        max_connections_per_address: links * 2,
    }];
    config.metrics.listen = Some(loopback);
    let file = crate::write_config(dir, &config);
    super::links::spawn(dir, &file)
}

/// The bridge's count of open device sessions on its TCP links, from its metrics endpoint.
async fn tcp_sessions(metrics: SocketAddr) -> Result<u64, BenchError> {
    const SAMPLE: &str = "edge_bridge_link_sessions{kind=\"tcp\"}";
    sample_sum(&scrape(metrics).await?, SAMPLE)
        .map(|v| v as u64)
        .ok_or_else(|| {
            BenchError::Bridge(format!("metrics endpoint {metrics}: no {SAMPLE} sample"))
        })
}

/// Phase 9 on a fresh bridge in `data_dir/bridge-idle-links`.
pub(crate) async fn run(opts: &Options, data_dir: &Path) -> Result<IdleLinkFigures, BenchError> {
    let n = opts.links;
    let fd_limit = raise_file_limit(n)?;
    let (bridge, log) = start_bridge(&data_dir.join("bridge-idle-links"), n)?;
    let pid = bridge.proc.child.id();
    let fail = |why: String| BenchError::Bridge(format!("{why}; its log: {}", log.display()));
    let metrics = bridge
        .metrics
        .ok_or_else(|| fail("no metrics endpoint in its ready line".into()))?;
    let rss = || rss_kib(pid).ok_or_else(|| fail("cannot read its VmRSS in /proc".into()));
    let fds = || open_fds(pid).ok_or_else(|| fail("cannot read /proc/PID/fd".into()));
    let mut progress = Progress::new(PHASE);
    progress.say(&format!(
        "bridge up, TCP devices on {}; opening {n} idle device links, {HANDSHAKES_AT_ONCE} \
         handshakes at a time (open files: {fd_limit} at most); its log: {}",
        bridge.devices,
        log.display()
    ));
    let (rss_before, fds_before) = (rss()?, fds()?);

    let start = StdInstant::now();
    let tally = Arc::new(Tally::default());
    let gate = Arc::new(Semaphore::new(HANDSHAKES_AT_ONCE));
    let (stop, stopped) = watch::channel(false);
    let mut devices = JoinSet::new();
    for i in 0..n {
        let device = Device {
            id: format!("idle-{i}"),
            bridge: bridge.devices,
            tally: tally.clone(),
        };
        let (gate, stopped) = (gate.clone(), stopped.clone());
        devices.spawn(async move {
            let result = device.run(gate, stopped).await;
            if let Err(why) = result {
                device.tally.ended(format!("{}: {why}", device.id));
            }
        });
    }
    // Every device welcomed, with none lost on the way.
    let deadline = StdInstant::now() + opts.phase_timeout();
    let (mut last, mut moved) = (0, StdInstant::now());
    loop {
        let welcomed = tally.welcomed.load(Ordering::SeqCst);
        if tally.ended.load(Ordering::SeqCst) > 0 {
            return Err(fail(format!(
                "device links ended while opening ({welcomed} of {n} welcomed): {}",
                tally.reasons()
            )));
        }
        if welcomed == n {
            break;
        }
        if welcomed != last {
            (last, moved) = (welcomed, StdInstant::now());
        }
        if moved.elapsed() > STALL || StdInstant::now() > deadline {
            return Err(BenchError::Timeout {
                phase: PHASE,
                what: format!("{welcomed} of {n} device links welcomed"),
            });
        }
        progress.tick(|| format!("{welcomed} of {n} welcomed"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open_seconds = start.elapsed().as_secs_f64();
    progress.say(&format!(
        "{n} welcomed in {open_seconds:.1} s; idle for {} s",
        opts.links_idle_s
    ));

    let cpu_before = CpuSnapshot::take(pid, &[]);
    tokio::time::sleep(Duration::from_secs(opts.links_idle_s)).await;
    let cpu = CpuSnapshot::take(pid, &[]).since(&cpu_before);
    let (rss_held, fds_held) = (rss()?, fds()?);
    let sessions = tcp_sessions(metrics).await?;
    let ended = tally.ended.load(Ordering::SeqCst);
    let _ = stop.send(true);
    while devices.join_next().await.is_some() {}
    if ended > 0 || sessions != n as u64 {
        return Err(fail(format!(
            "of {n} idle device links, {ended} ended on the device's side and the bridge held \
             {sessions} after {} s idle: {}",
            opts.links_idle_s,
            tally.reasons()
        )));
    }
    let figures = IdleLinkFigures {
        memory: MemoryFigures::new(n, open_seconds, rss_before, rss_held),
        idle_seconds: opts.links_idle_s,
        bridge_sessions: sessions,
        fds_before,
        fds_held,
        fd_limit,
        cpu,
    };
    progress.say(&format!(
        "{n} idle device links held: VmRSS {rss_before} -> {rss_held} KiB, {:.2} KiB each",
        figures.memory.per_session_kib()
    ));
    Ok(figures)
}

/// One bench device.
#[derive(Debug)]
struct Device {
    id: String,
    bridge: SocketAddr,
    tally: Arc<Tally>,
}

impl Device {
    /// Connects (holding a `gate` permit until welcomed), opens a session and keeps it,
    /// answering the bridge and heartbeating, until `stop`; `Err` when the link ends first.
    async fn run(
        &self,
        gate: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut permit = Some(gate.acquire_owned().await.map_err(|e| e.to_string())?);
        let mut stream = TcpStream::connect(self.bridge)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let started = StdInstant::now();
        let now = || Instant::from_millis(started.elapsed().as_millis() as u64);
        let hello = crate::rogue::hello(&self.id, SLOTS);
        let mut session = IdleSession::device(hello, Config::default(), now());
        session.set_credit(SLOTS);
        let mut deframer: Deframer<MAX_FRAME> = Deframer::new();
        let mut input = [0u8; 512];
        let mut out = [0u8; MAX_FRAME];
        loop {
            while let Some(len) = session.poll_transmit(now(), &mut out) {
                stream
                    .write_all(&out[..len])
                    .await
                    .map_err(|e| format!("write: {e}"))?;
            }
            if session.state() == State::Established && permit.take().is_some() {
                self.tally.welcomed.fetch_add(1, Ordering::SeqCst);
            }
            let wake = session.poll_timeout().map_or(u64::MAX, |t| t.as_millis());
            let sleep = Duration::from_millis(wake.saturating_sub(now().as_millis()));
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                read = stream.read(&mut input) => {
                    let len = match read {
                        Ok(0) => return Err("closed by the bridge".into()),
                        Ok(len) => len,
                        Err(e) => return Err(format!("read: {e}")),
                    };
                    let mut rest = &input[..len];
                    while !rest.is_empty() {
                        let (used, frame) = deframer.push_raw(rest);
                        rest = &rest[used..];
                        let Some(Ok(bytes)) = frame else { continue };
                        match session.handle_bytes(bytes, now()) {
                            Ok(Some(Event::Received(Message::Reject(r)))) => {
                                return Err(format!("rejected: {r:?}"));
                            }
                            Ok(Some(Event::Received(other))) => {
                                return Err(format!("an idle device was sent {other:?}"));
                            }
                            _ => {}
                        }
                    }
                }
                () = tokio::time::sleep(sleep) => {
                    if let Some(Event::PeerLost) = session.handle_timeout(now()) {
                        return Err("the bridge went silent past the liveness timeout".into());
                    }
                }
            }
        }
    }
}
