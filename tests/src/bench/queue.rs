//! Phase 10: the queue at scale. A fresh bridge, no device online, takes `--queue-tasks` P4
//! submissions as fast as it accepts them; then its resident memory per queued task, and the
//! time a restart takes to be ready again with all of them queued, and the disk they take. Run
//! twice: on an external
//! mosquitto, so that the bridge's memory is its own (the queue's), then with the embedded
//! broker, whose memory is in the bridge's process too.
//!
//! Progress is read from the bridge's metrics endpoint (`edge_bridge_tasks_live`, which counts
//! a task once the commit that accepted it is done), not from a million `queued` events: the
//! bench's own work stays small, so the figures are the bridge's. The submitter keeps at most
//! [`WINDOW`] submissions published and not yet live.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::client::Client;
use super::report::QueueFigures;
use super::stats::{CpuSnapshot, Progress, dir_bytes, rss_kib, sample_sum, scrape};
use super::{BenchError, Options, tasks};

const PHASE: &str = "queue-at-scale";

/// Submissions published and not yet live, at most.
const WINDOW: u64 = 4_000;

/// How long the bridge may take to publish every `queued` event once all tasks are live.
const DRAIN: Duration = Duration::from_secs(600);

/// The sum of the samples of metric `name` (every label set).
async fn metric(addr: SocketAddr, name: &str) -> Result<f64, BenchError> {
    sample_sum(&scrape(addr).await?, name)
        .ok_or_else(|| BenchError::Bridge(format!("metrics endpoint {addr}: no {name}")))
}

async fn live(addr: SocketAddr) -> Result<u64, BenchError> {
    Ok(metric(addr, "edge_bridge_tasks_live").await? as u64)
}

fn rss(pid: u32) -> Result<u64, BenchError> {
    rss_kib(pid).ok_or_else(|| BenchError::Bridge("cannot read its VmRSS in /proc".into()))
}

fn config(n: u64, mosquitto: Option<u16>) -> broker_config::Config {
    let mut config = match mosquitto {
        Some(port) => crate::external_config(tasks::BRIDGE_ID, port),
        None => crate::embedded_config(tasks::BRIDGE_ID),
    };
    // Room for every task and its `queued` event, whatever the defaults.
    config.queue.limit = config.queue.limit.max(n);
    config.queue.outbox_limit = config.queue.outbox_limit.max(n);
    config.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config
}

fn started(bridge: &crate::Bridge) -> Result<SocketAddr, BenchError> {
    bridge
        .metrics
        .ok_or_else(|| BenchError::Bridge("no metrics endpoint in its ready line".into()))
}

/// Phase 10 on a fresh bridge in `dir`, on the mosquitto listening on `mosquitto` or with its
/// embedded broker.
pub(crate) async fn run(
    dir: &Path,
    opts: &Options,
    nonce: &str,
    mosquitto: Option<u16>,
) -> Result<QueueFigures, BenchError> {
    let n = opts.queue_tasks as u64;
    let mut progress = Progress::new(PHASE);
    let deadline = Instant::now() + opts.phase_timeout();
    let config = config(n, mosquitto);
    let broker = if mosquitto.is_some() {
        "external mosquitto"
    } else {
        "embedded broker"
    };
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let bridge = crate::start_bridge_with_config(dir, &config);
    let metrics = started(&bridge)?;
    let pid = bridge.proc.child.id();
    let rss_empty_kib = rss(pid)?;
    let submitter = Client::connect(
        bridge.mqtt,
        &format!("bench-queue-{nonce}"),
        WINDOW as usize,
        &[],
    )
    .await?;
    let topic = tasks::submit_topic();
    progress.say(&format!(
        "submitting {n} P4 tasks, no device online ({broker})"
    ));

    let cpu_start = CpuSnapshot::take(pid, &[]);
    let start = Instant::now();
    let mut published = 0u64;
    let mut accepted = 0u64;
    let mut last_change = Instant::now();
    while accepted < n {
        while published < n && published - accepted < WINDOW {
            let payload = format!(
                r#"{{"id":"q{nonce}-{published}","capability":"echo","priority":4,"payload":{{"i":{published}}}}}"#
            );
            submitter.publish(&topic, payload.into_bytes()).await?;
            published += 1;
        }
        let now_live = live(metrics).await?;
        if now_live != accepted {
            accepted = now_live;
            last_change = Instant::now();
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let now = Instant::now();
        if now >= deadline || now.duration_since(last_change) > super::STALL {
            return Err(BenchError::Timeout {
                phase: PHASE,
                what: format!("{accepted} of {n} tasks accepted"),
            });
        }
        progress.tick(|| format!("{accepted}/{n} tasks accepted"));
    }
    let fill_s = start.elapsed().as_secs_f64().max(1e-9);
    let fill_cpu = CpuSnapshot::take(pid, &[]).since(&cpu_start);
    progress.say(&format!(
        "{n} tasks accepted in {fill_s:.1} s ({:.0}/s); waiting for their events to leave",
        n as f64 / fill_s
    ));
    // Memory once the outbox has drained: what the queue holds, not the events in flight.
    let drained_by = Instant::now() + DRAIN;
    loop {
        let depth = metric(metrics, "edge_bridge_outbox_depth").await?;
        if depth == 0.0 {
            break;
        }
        if Instant::now() >= drained_by {
            return Err(BenchError::Timeout {
                phase: PHASE,
                what: format!("{depth} events still in the outbox"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_full_kib = rss(pid)?;
    let data = dir.join("data");
    let disk_bytes = dir_bytes(&data).map_err(|source| BenchError::Io { path: data, source })?;
    drop(submitter);

    progress.say("stopping the bridge (SIGTERM) and starting it again");
    let crate::Bridge { proc, .. } = bridge;
    let stop_started = Instant::now();
    crate::terminate(proc);
    let stop_s = stop_started.elapsed().as_secs_f64();
    let restart_started = Instant::now();
    let bridge = crate::start_bridge_with_config(dir, &config);
    let restart_s = restart_started.elapsed().as_secs_f64();
    let metrics = started(&bridge)?;
    let after = live(metrics).await?;
    if after != n {
        return Err(BenchError::Bridge(format!(
            "{after} tasks live after the restart, {n} before"
        )));
    }
    let rss_restarted_kib = rss(bridge.proc.child.id())?;
    drop(bridge);
    Ok(QueueFigures {
        broker,
        tasks: n,
        fill_s,
        fill_cpu,
        rss_empty_kib,
        rss_full_kib,
        stop_s,
        restart_s,
        rss_restarted_kib,
        disk_bytes,
    })
}
