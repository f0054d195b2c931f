//! Phase 5: the bridge's memory per established session. Each measurement opens
//! `--dtls-sessions` sessions to a fresh bridge (so no session reuses memory another one freed),
//! waits until the bridge holds all of them, and reads its resident memory before and after.
//!
//! The sessions send no device `Hello`: the bench has no device protocol of its own. They are
//! what every link holds between its transport handshake and the device's `Hello`, and the
//! bridge's link session closes such a link after its liveness timeout (7 s, device-core's
//! default) — so every session is opened and measured well inside it, and the phase checks
//! that all of them are still open after reading the memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edge_bridge::link::dtls::client::Connected;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::links::{DtlsClient, LinkedBridge};
use super::report::MemoryFigures;
use super::stats::{Progress, open_fds, rss_kib};
use super::{BenchError, Options};

/// TCP connections opened before waiting for the bridge to accept them.
const TCP_BATCH: usize = 64;

/// How long the bridge may take to take up the last sessions the clients saw established.
const SETTLE: Duration = Duration::from_secs(5);

fn rss(lb: &LinkedBridge) -> Result<u64, BenchError> {
    rss_kib(lb.pid()).ok_or_else(|| BenchError::Bridge("cannot read its VmRSS in /proc".into()))
}

/// Fails unless `held` of `m` sessions are open.
fn all_open(
    phase: &'static str,
    held: usize,
    m: usize,
    oldest: Duration,
    what: &str,
) -> Result<(), BenchError> {
    if held == m {
        return Ok(());
    }
    Err(BenchError::Timeout {
        phase,
        what: format!(
            "only {held} of {m} {what} were still open when the memory was read, {:.1} s after \
             the first was opened; the bridge closes a link whose device sends no Hello within \
             7 s: try a smaller --dtls-sessions",
            oldest.as_secs_f64()
        ),
    })
}

/// `--dtls-sessions` DTLS sessions (handshake done, no `Hello`), opened by `clients` at once.
pub(crate) async fn dtls(
    lb: &LinkedBridge,
    clients: &[Arc<DtlsClient>],
    opts: &Options,
) -> Result<MemoryFigures, BenchError> {
    const PHASE: &str = "dtls-memory";
    let progress = Progress::new(PHASE);
    let m = opts.dtls_sessions;
    progress.say(&format!(
        "opening {m} DTLS sessions, {} at a time, and holding them",
        clients.len()
    ));
    let before = rss(lb)?;
    let start = Instant::now();
    let claimed = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for client in clients {
        let (client, claimed, bridge) = (client.clone(), claimed.clone(), lb.udp);
        set.spawn(async move {
            let mut held: Vec<Connected> = Vec::new();
            while claimed.fetch_add(1, Ordering::Relaxed) < m {
                held.push(client.connect(bridge).await?);
            }
            Ok::<_, String>(held)
        });
    }
    let mut sessions = Vec::with_capacity(m);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(held)) => sessions.extend(held),
            Ok(Err(why)) => return Err(BenchError::Dtls(format!("opening a session: {why}"))),
            Err(e) => return Err(BenchError::Dtls(format!("a session client: {e}"))),
        }
    }
    let open_seconds = start.elapsed().as_secs_f64();
    // The bridge logs each session once it holds it (and before it starts its link driver,
    // which follows at once).
    let settle = Instant::now() + SETTLE;
    while lb.log_lines("DTLS session established").len() < m {
        if Instant::now() > settle {
            return Err(BenchError::Bridge(format!(
                "established fewer than {m} DTLS sessions {SETTLE:?} after the clients saw \
                 them all; see {}",
                lb.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = rss(lb)?;
    let oldest = start.elapsed();
    let open = sessions.iter().filter(|s| !s.task.is_finished()).count();
    all_open(PHASE, open, m, oldest, "DTLS sessions")?;
    for s in sessions {
        drop(s.pipe);
        let _ = s.task.await;
    }
    let figures = MemoryFigures::new(m, open_seconds, before, held);
    progress.say(&format!(
        "{m} DTLS sessions held: VmRSS {before} -> {held} KiB, {:.1} KiB each",
        figures.per_session_kib()
    ));
    Ok(figures)
}

/// `--dtls-sessions` plain TCP connections to the same kind of bridge's TCP link (accepted,
/// no `Hello`), opened in batches of [`TCP_BATCH`].
pub(crate) async fn tcp(lb: &LinkedBridge, opts: &Options) -> Result<MemoryFigures, BenchError> {
    const PHASE: &str = "tcp-memory";
    let progress = Progress::new(PHASE);
    let m = opts.dtls_sessions;
    progress.say(&format!(
        "opening {m} plain TCP connections and holding them"
    ));
    let pid = lb.pid();
    let fds = || open_fds(pid).ok_or_else(|| BenchError::Bridge("cannot read /proc/PID/fd".into()));
    let fds_before = fds()?;
    let before = rss(lb)?;
    let start = Instant::now();
    let mut streams = Vec::with_capacity(m);
    // In batches the bridge accepts before the next: its listen backlog is 128 (the standard
    // library's), and a connection beyond it waits a second for its SYN to be retried.
    while streams.len() < m {
        for _ in 0..(m - streams.len()).min(TCP_BATCH) {
            let stream = TcpStream::connect(lb.bridge.devices)
                .await
                .map_err(|e| BenchError::Bridge(format!("TCP connect to the device link: {e}")))?;
            streams.push(stream);
        }
        // Accepted connections are the bridge's open sockets.
        let settle = Instant::now() + SETTLE;
        while fds()? < fds_before + streams.len() {
            if Instant::now() > settle {
                return Err(BenchError::Bridge(format!(
                    "accepted fewer than {} TCP connections within {SETTLE:?}",
                    streams.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let open_seconds = start.elapsed().as_secs_f64();
    let held = rss(lb)?;
    let oldest = start.elapsed();
    // Open: no end of stream and no error (nothing to read, or bytes the bridge sent).
    let mut probe = [0u8; 64];
    let open = streams
        .iter()
        .filter(|s| match s.try_read(&mut probe) {
            Ok(n) => n > 0,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        })
        .count();
    all_open(PHASE, open, m, oldest, "TCP connections")?;
    drop(streams);
    let figures = MemoryFigures::new(m, open_seconds, before, held);
    progress.say(&format!(
        "{m} TCP connections held: VmRSS {before} -> {held} KiB, {:.1} KiB each",
        figures.per_session_kib()
    ));
    Ok(figures)
}
