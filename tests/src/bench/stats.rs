//! Measuring: latency percentiles, CPU time of processes, the disk's fsync rate, the bridge's
//! metrics, the size of a directory, progress lines.

use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::BenchError;

/// The bridge's metrics (`GET /metrics` on its endpoint at `addr`), within 30 s.
pub(crate) async fn scrape(addr: SocketAddr) -> Result<String, BenchError> {
    let fail = |why: String| BenchError::Bridge(format!("metrics endpoint {addr}: {why}"));
    let get = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    tokio::time::timeout(Duration::from_secs(30), get)
        .await
        .map_err(|_| fail("no answer within 30 s".into()))?
        .map_err(|e| fail(e.to_string()))
}

/// The sum of the samples named `name` in the metrics `text`: every label set of a family
/// (`name` alone), or one sample (`name{labels}`). `None` when there is none.
pub(crate) fn sample_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        // `name value` or `name{labels} value`, not a longer name with this prefix.
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.trim().parse().ok()?;
        sum = Some(sum.unwrap_or(0.0) + value);
    }
    sum
}

/// The disk the files under `dir` take, however deep: their allocated blocks (as `du`
/// counts), not their apparent sizes (redb grows its file ahead of what it has written).
pub(crate) fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

/// Latency samples of one kind.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    pub(crate) fn push(&mut self, d: Duration) {
        self.samples.push(d);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `p`-th percentile (0 < p ≤ 100) by nearest rank; `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted;
        let samples = if self.sorted {
            &self.samples
        } else {
            sorted = self.samples.clone();
            sorted.sort_unstable();
            &sorted
        };
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        Some(samples[rank.clamp(1, samples.len()) - 1])
    }

    pub fn p50(&self) -> Option<Duration> {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.percentile(99.0)
    }

    pub fn max(&self) -> Option<Duration> {
        self.samples.iter().max().copied()
    }

    /// Sorts once, so later percentiles do not copy.
    pub(crate) fn finish(&mut self) {
        self.samples.sort_unstable();
        self.sorted = true;
    }
}

/// CPU seconds (user + system) a process has used, from `/proc`; `None` where there is no
/// procfs. `pid` `None` is this process.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    // Nanoseconds where the kernel keeps them: a phase of 0.1 s is 10 clock ticks, too coarse
    // for a figure per task. `/proc/{pid}/stat` counts the threads that have exited too;
    // the sum over live threads does not, so the larger of the two is taken.
    match (thread_cpu_seconds(pid), cpu_ticks_seconds(pid)) {
        (Some(fine), Some(coarse)) => Some(fine.max(coarse)),
        (fine, coarse) => coarse.or(fine),
    }
}

/// The CPU time of the live threads of `pid` (this process for `None`), in seconds, from
/// `/proc/{pid}/task/*/schedstat` (nanoseconds on a CPU); `None` without it.
fn thread_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let mut ns = 0u64;
    for task in std::fs::read_dir(dir).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that ended since the directory was read counts as nothing.
        let Ok(line) = std::fs::read_to_string(path) else {
            continue;
        };
        ns += line.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

/// utime + stime of `pid` (every thread, ended ones included) in seconds, in clock ticks.
fn cpu_ticks_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start with the state; utime
    // and stime are the 12th and 13th of them, in clock ticks (USER_HZ, 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A process's resident memory (`VmRSS` in `/proc/{pid}/status`), in KiB; `None` where there
/// is no procfs.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How many file descriptors a process has open (`/proc/{pid}/fd`); `None` where there is no
/// procfs.
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// CPU seconds of a group of processes at one moment.
#[derive(Clone, Debug)]
pub(crate) struct CpuSnapshot {
    at: Instant,
    bridge: Option<f64>,
    devices: Option<f64>,
    bench: Option<f64>,
}

impl CpuSnapshot {
    pub(crate) fn take(bridge: u32, devices: &[u32]) -> Self {
        let devices = devices
            .iter()
            .map(|&p| cpu_seconds(Some(p)))
            .sum::<Option<f64>>();
        Self {
            at: Instant::now(),
            bridge: cpu_seconds(Some(bridge)),
            devices,
            bench: cpu_seconds(None),
        }
    }

    /// CPU used since `earlier`, as a share of one core over the wall time between them.
    pub(crate) fn since(&self, earlier: &Self) -> super::CpuUse {
        let wall = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let share = |now: Option<f64>, then: Option<f64>| Some((now? - then?) / wall);
        super::CpuUse {
            wall_s: wall,
            bridge: share(self.bridge, earlier.bridge),
            devices: share(self.devices, earlier.devices),
            bench: share(self.bench, earlier.bench),
        }
    }
}

/// Durable 4 KiB overwrites per second in `dir` (write, then `fdatasync`), for `within`.
/// Every durable commit of the bridge's queue waits for at least one such flush.
pub(crate) fn fsync_rate(dir: &Path, within: Duration) -> std::io::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    file.write_all(&block)?;
    file.sync_all()?;
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < within && n < 100_000 {
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&block)?;
        file.sync_data()?;
        n += 1;
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Prints a progress line on stderr at most every few seconds.
#[derive(Debug)]
pub(crate) struct Progress {
    phase: &'static str,
    last: Instant,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(3);

    pub(crate) fn new(phase: &'static str) -> Self {
        Self {
            phase,
            last: Instant::now(),
        }
    }

    /// Prints `line()` if the last line is old enough.
    pub(crate) fn tick(&mut self, line: impl FnOnce() -> String) {
        if self.last.elapsed() >= Self::EVERY {
            self.last = Instant::now();
            eprintln!("[{}] {}", self.phase, line());
        }
    }

    /// Prints `line` now.
    pub(crate) fn say(&self, line: &str) {
        eprintln!("[{}] {line}", self.phase);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut l = Latencies::default();
        for ms in (1..=100).rev() {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.p50(), Some(Duration::from_millis(50)));
        assert_eq!(l.p99(), Some(Duration::from_millis(99)));
        l.finish();
        assert_eq!(l.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(l.percentile(0.1), Some(Duration::from_millis(1)));
        assert_eq!(Latencies::default().p50(), None);
    }
}
