//! The Prometheus endpoint (`[metrics] listen`): the pool view of the bridge — the queue by
//! priority, how long tasks waited for a device, each device's slots and tasks, device
//! sessions and the broker connection — as `GET /metrics` in the text exposition format.
//!
//! How fresh the figures are: a scrape asks the run loop for a [`Snapshot`], which it takes
//! between two turns (after the last commit), so every figure is from one moment, no older
//! than the scrape. The run loop only copies counters and its indexes' sizes into plain data
//! (devices and open links are counted one by one; nothing scans the queue); the text is
//! rendered in the endpoint's own task. Nothing is computed while nobody scrapes.
//! Counters count from the bridge's start (a restart resets them, as Prometheus expects).
//!
//! # Layout
//! - `mod.rs`: the snapshot, the wait histogram, the per-kind handshake failure counters
//!   (this file; plain data, no I/O).
//! - `text`: the snapshot as text exposition format 0.0.4 (a pure function).
//! - `http`: the HTTP/1.1 responder on a TCP listener: one request per connection, bounded.

pub mod http;
pub mod text;

use std::sync::atomic::{AtomicU64, Ordering};

use device_core::Priority;

use crate::api::TaskState;

/// Upper bounds of the dispatch-wait histogram's buckets, in ms: fine below a second, where
/// urgent work's targets are (P0/P1 P99 ≤ 50 ms, max ≤ 250 ms; DESIGN.md), coarse up to a
/// minute for the work that queues behind long tasks.
pub const WAIT_BUCKETS_MS: [u64; 13] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// A histogram of waits in ms over [`WAIT_BUCKETS_MS`] (plus the bucket beyond the last bound).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last is beyond every bound.
    counts: [u64; WAIT_BUCKETS_MS.len() + 1],
    /// The sum of the observations, in ms (exact; rendered in seconds).
    sum_ms: u64,
}

impl Histogram {
    /// Records one wait of `ms`.
    pub fn observe(&mut self, ms: u64) {
        let bucket = WAIT_BUCKETS_MS.partition_point(|&bound| bound < ms);
        self.counts[bucket] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_ms(&self) -> u64 {
        self.sum_ms
    }

    /// Cumulative counts: each bound (ms; `None` for `+Inf`) with the observations at or
    /// below it.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = WAIT_BUCKETS_MS.iter().copied().map(Some).chain([None]);
        bounds.zip(self.counts.iter().scan(0, |total, n| {
            *total += n;
            Some(*total)
        }))
    }
}

/// Tasks that reached a terminal state, per state, since the bridge started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Finished([u64; TERMINAL_STATES]);

/// How many terminal states there are ([`Finished::STATES`]).
const TERMINAL_STATES: usize = 5;

impl Finished {
    /// The terminal states, in the order they are rendered.
    pub const STATES: [TaskState; TERMINAL_STATES] = [
        TaskState::Completed,
        TaskState::Failed,
        TaskState::Expired,
        TaskState::Cancelled,
        TaskState::Rejected,
    ];

    /// Counts one task ending in `state` (a state that is not terminal is not counted).
    pub fn count(&mut self, state: TaskState) {
        self.count_many(state, 1);
    }

    /// Counts `n` tasks ending in `state`.
    pub fn count_many(&mut self, state: TaskState, n: u64) {
        if let Some(i) = Self::STATES.iter().position(|s| *s == state) {
            self.0[i] += n;
        }
    }

    /// The tasks that ended in `state`.
    pub fn get(&self, state: TaskState) -> u64 {
        Self::STATES
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.0[i])
    }
}

/// The kinds of device links, as the configuration names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Tcp,
    Tls,
    Dtls,
    Serial,
}

impl LinkKind {
    pub const ALL: [Self; 4] = [Self::Tcp, Self::Tls, Self::Dtls, Self::Serial];

    /// The configuration's name (`kind = "tcp"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Dtls => "dtls",
            Self::Serial => "serial",
        }
    }

    /// Whether its connections start with a handshake that can fail.
    pub fn has_handshake(self) -> bool {
        matches!(self, Self::Tls | Self::Dtls)
    }

    /// The kind of a configured link.
    pub fn of(config: &broker_config::LinkConfig) -> Self {
        match config {
            broker_config::LinkConfig::Tcp { .. } => Self::Tcp,
            broker_config::LinkConfig::Tls { .. } => Self::Tls,
            broker_config::LinkConfig::Dtls(_) => Self::Dtls,
            broker_config::LinkConfig::Serial { .. } => Self::Serial,
        }
    }
}

/// Handshakes that failed (or proved no device), per link kind, for every listener of the
/// process: counted by the link tasks where they log the failure, read by the endpoint. In the
/// process like the log budget of the same events ([`crate::throttle`]): the links run in
/// their own tasks, and a counter is all they share with the endpoint.
static HANDSHAKE_FAILURES: [AtomicU64; LinkKind::ALL.len()] =
    [const { AtomicU64::new(0) }; LinkKind::ALL.len()];

/// Counts one failed handshake on a link of `kind`.
pub fn handshake_failed(kind: LinkKind) {
    HANDSHAKE_FAILURES[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// Failed handshakes on links of `kind` since the process started.
pub fn handshake_failures(kind: LinkKind) -> u64 {
    HANDSHAKE_FAILURES[kind as usize].load(Ordering::Relaxed)
}

/// A device, as the endpoint shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFigures {
    pub id: String,
    /// Its session's figures while it is online; `None` for a device known offline (until
    /// `devices.forget_after` forgets it).
    pub online: Option<DeviceLoad>,
}

/// An online device's slots and tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceLoad {
    /// Task slots, from its `Hello`.
    pub slots: u8,
    /// Tasks dispatched to it and not finished.
    pub in_flight: u64,
    /// `Assign`s it can take now (free slots as it last reported, less those sent since).
    pub credit: u32,
    /// Of its slots, those only urgent tasks may take.
    pub reserved: u32,
}

/// Everything the endpoint shows, taken at one moment by the run loop (see the module's doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Devices online and devices known offline, by id.
    pub devices: Vec<DeviceFigures>,
    /// Queued tasks per priority (P0 first).
    pub queued: [u64; Priority::LEVELS],
    /// How long the longest-queued task has waited since it was accepted, in ms (wall
    /// clock); `None` with nothing queued.
    pub oldest_queued_ms: Option<u64>,
    /// Acceptance to first dispatch, per priority.
    pub dispatch_waits: [Histogram; Priority::LEVELS],
    /// Tasks whose deadline passed before they could start.
    pub deadline_misses: u64,
    /// Tasks devices gave back for urgent work.
    pub preemptions: u64,
    pub finished: Finished,
    /// Tasks not finished (queued or on devices).
    pub live: u64,
    /// Events waiting for the broker's acknowledgement.
    pub outbox: u64,
    /// Messages on the API's topics the broker dropped before the bridge read them.
    pub submissions_lost: u64,
    /// Device sessions open (a `Hello` received), per link kind ([`LinkKind::ALL`] order).
    pub sessions: [u64; LinkKind::ALL.len()],
    /// Connected to the MQTT broker now.
    pub broker_connected: bool,
    /// Connections to the broker made since the start (the first included).
    pub broker_connections: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let mut h = Histogram::default();
        for ms in [0, 5, 6, 50, 60_000, 60_001, 3_600_000] {
            h.observe(ms);
        }
        let buckets: Vec<(Option<u64>, u64)> = h.cumulative().collect();
        assert_eq!(buckets.len(), WAIT_BUCKETS_MS.len() + 1);
        assert_eq!(buckets[0], (Some(5), 2)); // 0 and 5
        assert_eq!(buckets[1], (Some(10), 3)); // 6
        assert_eq!(buckets[3], (Some(50), 4)); // 50
        assert_eq!(buckets[12], (Some(60_000), 5));
        assert_eq!(buckets[13], (None, 7));
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum_ms(), 5 + 6 + 50 + 60_000 + 60_001 + 3_600_000);
    }

    #[test]
    fn finished_tasks_are_counted_by_terminal_state_only() {
        let mut f = Finished::default();
        for s in [
            TaskState::Completed,
            TaskState::Completed,
            TaskState::Rejected,
            TaskState::Queued,
            TaskState::Preempted,
        ] {
            f.count(s);
        }
        assert_eq!(f.get(TaskState::Completed), 2);
        assert_eq!(f.get(TaskState::Rejected), 1);
        assert_eq!(f.get(TaskState::Queued), 0);
        f.count_many(TaskState::Expired, 3);
        assert_eq!(
            Finished::STATES.map(|s| f.get(s)),
            [2, 0, 3, 0, 1],
            "completed, failed, expired, cancelled, rejected"
        );
    }

    #[test]
    fn handshake_failures_are_counted_per_link_kind() {
        // The counters are the process's, shared with other tests: serial links have no
        // handshake, so no other test counts this kind.
        let before = handshake_failures(LinkKind::Serial);
        handshake_failed(LinkKind::Serial);
        handshake_failed(LinkKind::Serial);
        assert_eq!(handshake_failures(LinkKind::Serial), before + 2);
    }
}
