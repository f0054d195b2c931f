//! Phase 4: full DTLS 1.2 PSK handshakes per second. `--dtls-concurrency` in-process clients
//! (one identity each) make `--dtls-handshakes` handshakes between them, each from a fresh UDP
//! port (so each goes through the cookie exchange), and close every session right after its
//! handshake (close_notify) before starting the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::links::{DtlsClient, LinkedBridge};
use super::report::HandshakeFigures;
use super::stats::{CpuSnapshot, Latencies, Progress};
use super::{BenchError, Options};

/// What one client did.
#[derive(Debug, Default)]
struct Worker {
    latency: Vec<Duration>,
    failed: usize,
    failures: Vec<String>,
}

/// Failures listed at most (the count is always complete).
const FAILURES_SHOWN: usize = 5;

pub(crate) async fn run(
    lb: &LinkedBridge,
    clients: &[Arc<DtlsClient>],
    opts: &Options,
) -> Result<HandshakeFigures, BenchError> {
    const PHASE: &str = "dtls-handshakes";
    let mut progress = Progress::new(PHASE);
    let n = opts.dtls_handshakes;
    progress.say(&format!(
        "{n} handshakes ({}), {} at a time",
        super::links::CIPHER,
        clients.len()
    ));
    // Handshakes claimed by a client, and finished (either way).
    let claimed = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let cpu_start = CpuSnapshot::take(lb.pid(), &[]);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for client in clients {
        let (client, claimed, finished) = (client.clone(), claimed.clone(), finished.clone());
        let bridge = lb.udp;
        set.spawn(async move {
            let mut w = Worker::default();
            while claimed.fetch_add(1, Ordering::Relaxed) < n {
                let began = Instant::now();
                match client.connect(bridge).await {
                    Ok(session) => {
                        w.latency.push(began.elapsed());
                        // Closing the pipe makes the relay send close_notify and end.
                        drop(session.pipe);
                        let _ = session.task.await;
                    }
                    Err(why) => {
                        w.failed += 1;
                        if w.failures.len() < FAILURES_SHOWN {
                            w.failures.push(why);
                        }
                    }
                }
                finished.fetch_add(1, Ordering::Relaxed);
            }
            w
        });
    }
    let deadline = tokio::time::Instant::from_std(start + opts.phase_timeout());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut workers = Vec::new();
    while !set.is_empty() {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok(w)) => workers.push(w),
                Some(Err(e)) => return Err(BenchError::Dtls(format!("a handshake client: {e}"))),
                None => break,
            },
            _ = ticker.tick() => progress.tick(|| {
                let done = finished.load(Ordering::Relaxed);
                format!(
                    "{done}/{n} handshakes, {:.0}/s",
                    done as f64 / start.elapsed().as_secs_f64()
                )
            }),
            () = tokio::time::sleep_until(deadline) => {
                set.abort_all();
                return Err(BenchError::Timeout {
                    phase: PHASE,
                    what: format!(
                        "{} of {n} handshakes finished before the phase deadline",
                        finished.load(Ordering::Relaxed)
                    ),
                });
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    let cpu = CpuSnapshot::take(lb.pid(), &[]).since(&cpu_start);
    let mut latency = Latencies::default();
    let (mut failed, mut failures) = (0, Vec::new());
    for w in workers {
        for d in w.latency {
            latency.push(d);
        }
        failed += w.failed;
        failures.extend(w.failures);
    }
    failures.truncate(FAILURES_SHOWN);
    latency.finish();
    let figures = HandshakeFigures {
        handshakes: n,
        concurrency: clients.len(),
        completed: latency.len(),
        failed,
        failures,
        seconds,
        per_s: latency.len() as f64 / seconds,
        latency,
        cpu,
    };
    progress.say(&format!(
        "{} of {n} handshakes in {seconds:.2} s: {:.0}/s",
        figures.completed, figures.per_s
    ));
    Ok(figures)
}
