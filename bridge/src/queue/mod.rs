//! The durable task queue, on redb.
//!
//! The database is the truth. In memory the queue keeps what dispatch needs, and no more: the
//! whole record of every task on a device (or queued again after a dispatch, or naming bridge
//! resources), which the devices' slots bound; and for each *fresh* queued task — never
//! dispatched, naming no resource, the bulk of any backlog — one entry in its lane's
//! dispatch order: a 16-byte key (priority, deadline, admission sequence) and its payload's
//! size. A fresh task's record stays on disk until it is dispatched (or asked about), so a
//! queued task costs tens of bytes of memory and a million fit a small gateway.
//!
//! Changes are staged and written by one transaction per batch ([`Queue::commit`], group
//! commit): callers collect what arrived, decide, and commit it at once, so durability does
//! not cap throughput. A commit is made durable by the write-ahead log (`wal`), and every so
//! often by a durable commit of the database itself, a checkpoint.
//!
//! Rules (DESIGN.md, "Bridge durability rules"):
//! - A submission is accepted by the transaction that stores it *and* its `queued` event in
//!   the outbox; the caller acknowledges the MQTT message only after that commit.
//! - Re-submitting an id never creates a second task: a live id has its current state
//!   published again, a finished one its final event.
//! - A task leaves the live set only in a terminal state; its final event is kept (bounded
//!   by `DONE_KEPT`) so late duplicates are answered.
//! - Status events leave the outbox only when the broker has acknowledged them.
//! - The number of live tasks is bounded; beyond it a submission is rejected (with an event).
//! - The outbox is bounded too ([`Queue::set_outbox_limit`]), and so is the disk it may use
//!   ([`Queue::set_storage_full`]): at either bound new submissions are rejected, while the
//!   events of work already accepted still go in (they are bounded by the live tasks).
//!   Answers to input that change no task (duplicates, rejections, `{root}/errors` entries)
//!   are stored only while there is room; beyond it they are shed and counted (see
//!   [`Queue::submit`]), so a flood of bad input cannot fill the disk.
//! - Events leave in priority order: the outbox key starts with a class (the task's priority,
//!   then device documents, then answers), so a P0's events are read before a P4 backlog,
//!   and one task's events, all in one class, keep their order (see [`outbox_key`]).
//!
//! # Layout of the database
//! | table | key | value |
//! |---|---|---|
//! | `tasks` | task id | live [`TaskRecord`] (JSON) |
//! | `fresh` | admission sequence | each fresh queued task's id and lane entry ([`FreshRow`]): what open rebuilds the lanes from, without reading the records, and how dispatch finds the record it picks |
//! | `active_ids` | task id | nothing (empty): the live tasks that are not fresh, which open reads whole |
//! | `done` | task id | final [`StatusEvent`] (JSON) |
//! | `done_ids` | finish sequence | task id (UTF-8), to forget the oldest beyond `DONE_KEPT` |
//! | `outbox` | class and event sequence ([`outbox_key`]) | [`OutboxEntry`] (JSON) |
//! | `meta` | name | counter (`seq`, `outbox`, `done`, `gen` for generated ids); the timer clock's [`Anchor`] (`clock_ms`, `clock_boot`, `clock_boot_ms`); `indexed`: `outbox` as of the last commit by a version that keeps `fresh` and `active_ids`; `wal`, `wal_id`, `wal_outbox`: the last write-ahead log record the database holds, the log's id, and `outbox` as of that checkpoint |
//!
//! Keys are ids (`&str`) or sequences (`u64`), values bytes (`&[u8]`), `meta`'s counters
//! aside: redb compiles its B-tree code once per key and value type pair, about 21 KB of the
//! gateway binary each. Earlier versions kept `active` (values `()`) and `done_order` (values
//! `&str`); [`Queue::open`] moves their contents to `active_ids` and `done_ids` and deletes
//! them.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use device_core::Priority;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ErrorCode, StatusEvent, Submission, TaskState};
use crate::time::{Anchor, Now};

const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");
const FRESH: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("fresh");
const ACTIVE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("active_ids");
/// An `active` row's value.
const NOTHING: &[u8] = &[];
/// `active_ids` as versions before it kept it (values `()`): present when one of them wrote
/// the database last. Only its name is used: open deletes it and rebuilds the index.
const LEGACY_ACTIVE: &str = "active";
/// Meta key: the event counter (`outbox`) as of the last commit by a version that keeps
/// `fresh` and an index of the other live tasks (`active_ids`, or `active` before it; see
/// [`Queue::open`]).
const INDEXED: &str = "indexed";
const DONE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("done");
const DONE_ORDER: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("done_ids");
/// `done_ids` as versions before it kept it (values `&str`), read once by open and deleted.
const LEGACY_DONE_ORDER: TableDefinition<'_, u64, &str> = TableDefinition::new("done_order");
const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// `meta` key: the last write-ahead log record the database holds ([`wal`]); every record
/// after it is applied again at open.
const WAL_CHECKPOINT: &str = "wal";
/// `meta` key: the write-ahead log's id, random per database, in every record's checksum.
const WAL_ID: &str = "wal_id";
/// `meta` key: the `outbox` counter as of the last checkpoint: when `outbox` has moved since,
/// another version committed after it, and the log is not applied.
const WAL_OUTBOX: &str = "wal_outbox";
/// Meta keys of device ids proven by a credential: the prefix, then the id.
const PROVEN_PREFIX: &str = "proven/";
/// Just past every key with [`PROVEN_PREFIX`] (`'0'` follows `'/'`).
const PROVEN_END: &str = "proven0";
/// Meta keys of devices offline: the prefix, then the id; the value is when they went.
const OFFLINE_PREFIX: &str = "offline/";
/// Just past every key with [`OFFLINE_PREFIX`].
const OFFLINE_END: &str = "offline0";
/// Meta keys of capabilities with a retained discovery document on the broker: the prefix,
/// then the name. Kept so that a restart clears the documents of capabilities no device
/// offers any more (their devices are offline until they come back).
const CAPABILITY_PREFIX: &str = "capability/";
/// Just past every key with [`CAPABILITY_PREFIX`].
const CAPABILITY_END: &str = "capability0";

/// Page cache of the queue database.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Final events kept to answer duplicates of finished tasks.
pub const DONE_KEPT: u64 = 100_000;

/// Outbox entries held at most before new submissions are rejected, unless configured.
pub const OUTBOX_LIMIT: u64 = 200_000;

/// Outbox classes, read in this order: the six task priorities (P0 first), then device
/// documents, then answers to input that changed no task.
const CLASSES: usize = 8;
/// Retained device documents: one class, so each device's documents keep their order.
const DEVICE_CLASS: u8 = 6;
/// Answers that changed no task (rejections, `{root}/errors` entries, repeats of final
/// events): last, and the first to be shed.
const ANSWER_CLASS: u8 = 7;
/// Bits of an outbox key below its class.
const CLASS_SHIFT: u32 = 56;

/// The outbox key of the `seq`-th entry in `class`: the class in the top byte, so reading
/// the table in key order reads every P0 event before any P4 event (an outbox written before
/// classes existed reads as class 0, and drains first). The sequence is shared by all
/// classes, so inside one class — one task's events, one device's documents — keys grow in
/// the order the entries were made.
pub fn outbox_key(class: u8, seq: u64) -> u64 {
    (u64::from(class) << CLASS_SHIFT) | (seq & ((1 << CLASS_SHIFT) - 1))
}

/// The class of an outbox key (see [`outbox_key`]).
fn class_of(key: u64) -> usize {
    ((key >> CLASS_SHIFT) as usize).min(CLASSES - 1)
}

/// How far the timer clock may run ahead of its committed [`Anchor`] while tasks wait before
/// a commit stores it again on its own: after a reboot (and a crash) deadlines and delays may
/// run late by this much at most, besides the downtime. A minute costs one small commit per
/// minute on a quiet gateway; every other commit stores the anchor anyway.
pub const KEEP_TIME_EVERY_MS: u64 = 60_000;

/// Errors of the queue layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue's directory cannot be created.
    #[error("queue database: {}: {source}", path.display())]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database file cannot be opened or created (another bridge holds it, it is damaged
    /// or of a newer format, the disk failed).
    #[error("queue database: {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// A transaction, table or storage operation on the open database failed.
    #[error("queue database: {0}")]
    Db(#[source] redb::Error),
    /// A stored record does not decode: the file was written by an incompatible version or
    /// damaged.
    #[error("queue record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A read of the database failed while the queue looked up a task (reported by the next
    /// commit, so that nothing decided on an incomplete view is let out).
    #[error("queue database: a read failed: {0}")]
    Read(String),
    /// The write-ahead log cannot be opened, read or written.
    #[error("queue write-ahead log: {}: {source}", path.display())]
    Wal {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Any of redb's transaction, table, storage or commit errors (all convert into `redb::Error`).
fn db_err(e: impl Into<redb::Error>) -> QueueError {
    QueueError::Db(e.into())
}

/// A live task: everything needed to dispatch it and report on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Admission order; also the source of the device handle.
    pub seq: u64,
    pub sub: Submission,
    /// `Queued`, `Dispatched` or `Running`.
    pub state: TaskState,
    /// The device of the current attempt.
    pub device: Option<String>,
    /// Attempts started (0 while never dispatched).
    pub attempt: u32,
    /// Wall-clock ms of acceptance (for people reading the database).
    pub submitted_ms: u64,
    /// Timer-clock ms ([`Now::ms`]) by which the task must have started.
    pub deadline_at_ms: Option<u64>,
    /// Not dispatched again before this timer-clock ms (retry backoff).
    pub not_before_ms: u64,
    /// The device handle after a retry of a failed execution (a new execution needs a new
    /// handle, or the device would answer it from its dedup table); the admission sequence
    /// number until then.
    #[serde(default)]
    pub retry_handle: Option<u32>,
    /// Times a device gave it back for more urgent work (bounded, so it always finishes).
    #[serde(default)]
    pub preemptions: u32,
    /// Where a preempted execution stopped, to resume it there on the next device that can.
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
    /// The boot id of `device` when the task was dispatched to it: a device that comes back
    /// with another one has lost the task.
    #[serde(default)]
    pub boot: Option<u32>,
    /// Timer-clock ms at which the execution lease of the task on `device` ends: then it is
    /// cancelled there and tried again.
    #[serde(default)]
    pub lease_until_ms: Option<u64>,
    /// A cancel was asked for while the task was on a device: the device's answer (cancelled,
    /// or the result it had already) ends it.
    #[serde(default)]
    pub cancelling: bool,
}

/// A task's state at a step boundary, as its device gave it back: the steps it ran, its
/// handler's scratch bytes and its partial result. Stored with the task (committed before the
/// `preempted` event), so a resumed execution continues where the first stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub steps: u32,
    pub scratch: Vec<u8>,
    pub result: Vec<u8>,
}

impl TaskRecord {
    /// The handle this task has on devices: unique among the last 2^32 tasks.
    pub fn handle(&self) -> u32 {
        self.retry_handle.unwrap_or(self.seq as u32)
    }

    /// Dispatch order: priority, then deadline, then admission.
    pub fn order_key(&self) -> (u8, u64, u64) {
        (
            self.sub.priority.level(),
            self.deadline_at_ms.unwrap_or(u64::MAX),
            self.seq,
        )
    }

    fn event(&self, state: TaskState, ts_ms: u64) -> StatusEvent {
        StatusEvent {
            id: self.sub.id.clone(),
            state,
            device: self.device.clone(),
            attempt: self.attempt,
            trace_id: self.sub.trace_id.clone(),
            ts_ms,
            result: None,
            error: None,
        }
    }
}

/// A message waiting to be published: a status event or an error report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Topic below the root, e.g. `tasks/t-1/status`.
    pub subtopic: String,
    pub payload: String,
    /// Published retained (device documents).
    #[serde(default)]
    pub retain: bool,
}

impl OutboxEntry {
    /// `document` as JSON on `{root}/{subtopic}`.
    pub fn new(subtopic: String, document: &impl Serialize, retain: bool) -> Self {
        Self {
            subtopic,
            payload: json(document),
            retain,
        }
    }

    /// A status event on `{root}/tasks/{id}/status`.
    pub fn status(e: &StatusEvent) -> Self {
        Self::new(format!("tasks/{}/status", e.id), e, false)
    }
}

/// A fresh task's row in the `fresh` table: its id, and what its lane entry is made of, in
/// postcard after a version byte.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FreshRow<'a> {
    #[serde(borrow)]
    id: &'a str,
    priority: Priority,
    deadline_at_ms: u64,
    payload_len: u32,
    submitted_ms: u64,
    #[serde(borrow)]
    capability: &'a str,
    #[serde(borrow)]
    device: Option<&'a str>,
    #[serde(borrow)]
    locks: Vec<&'a str>,
}

const FRESH_ROW_VERSION: u8 = 1;

impl<'a> FreshRow<'a> {
    fn of(rec: &'a TaskRecord) -> Self {
        Self {
            id: &rec.sub.id,
            priority: rec.sub.priority,
            deadline_at_ms: rec.deadline_at_ms.unwrap_or(u64::MAX),
            payload_len: lane_size(rec),
            submitted_ms: rec.submitted_ms,
            capability: &rec.sub.capability,
            device: rec.sub.device.as_deref(),
            locks: rec.sub.locks.iter().map(String::as_str).collect(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        // Our own type of strings and numbers always serialises.
        postcard::to_allocvec(&(FRESH_ROW_VERSION, self)).unwrap_or_default()
    }

    /// The row `raw` holds: `None` for another version, a damaged row or trailing bytes.
    fn decode(raw: &'a [u8]) -> Option<Self> {
        match postcard::take_from_bytes::<(u8, Self)>(raw) {
            Ok(((FRESH_ROW_VERSION, row), [])) => Some(row),
            _ => None,
        }
    }

    /// Its lane (as [`Lane::of`] the record), when it is not `last`'s, which is reused.
    fn lane(&self, last: Option<Lane>) -> Lane {
        let class = crate::dispatch::class_of(self.priority);
        match last {
            Some(lane)
                if lane.capability == self.capability
                    && lane.device.as_deref() == self.device
                    && lane.class == class
                    && lane
                        .locks
                        .iter()
                        .map(String::as_str)
                        .eq(self.locks.iter().copied())
                    && lane.resources.is_empty() =>
            {
                lane
            }
            _ => Lane {
                capability: self.capability.to_owned(),
                device: self.device.map(str::to_owned),
                class,
                locks: self.locks.iter().map(|l| (*l).to_owned()).collect(),
                resources: Vec::new(),
            },
        }
    }
}

/// A fresh task's lane entry value: its payload's size (below [`WHOLE`]).
fn lane_size(rec: &TaskRecord) -> u32 {
    u32::try_from(rec.sub.payload.len())
        .unwrap_or(u32::MAX)
        .min(WHOLE - 1)
}

/// A stored task record, or why it is not one.
fn decode_record(id: &str, raw: &[u8]) -> Result<TaskRecord, QueueError> {
    serde_json::from_slice(raw).map_err(|e| QueueError::Corrupt {
        key: id.to_owned(),
        reason: e.to_string(),
    })
}

fn json(v: &impl Serialize) -> String {
    // Our own types always serialise.
    serde_json::to_string(v).unwrap_or_default()
}

/// What happened to one submission of a batch.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Stored; its `queued` event is in the outbox.
    Queued,
    /// The id was known: its current or final state was published again.
    Duplicate(TaskState),
    /// Refused (queue, outbox or storage full); the `rejected` event is in the outbox, or,
    /// when that has no room for answers, among [`Queue::take_unstored`].
    Rejected(ErrorCode),
}

/// A change to a live task, applied in a batch by [`Queue::apply`].
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Handed to a device (a new attempt) whose boot id is `boot`, until `lease_until_ms` at
    /// the latest.
    Dispatched {
        id: String,
        device: String,
        boot: u32,
        lease_until_ms: u64,
    },
    /// A cancel was asked for while it is on a device, which is told; its answer ends it.
    Cancelling { id: String },
    /// The device started it.
    Running { id: String },
    /// Back to the queue, not before `not_before_ms` (a lost device: dispatched again with
    /// the same handle, so a device that ran it answers from its dedup table).
    Requeue { id: String, not_before_ms: u64 },
    /// Back to the queue for a new execution after a transient failure, with a new handle.
    Retry { id: String, not_before_ms: u64 },
    /// Given back by its device to make room for more urgent work: queued again at once with
    /// a new handle (the device will not run the old one again), the attempt not counted, its
    /// `preempted` event published. `checkpoint`: where it stopped, if it is to resume there
    /// (a task that had not started, or whose capability restarts, has none).
    Preempted {
        id: String,
        checkpoint: Option<Checkpoint>,
    },
    /// Its device would not resume it from its checkpoint: back to the queue at once, to start
    /// over (no event: it stays queued from the client's point of view).
    StartOver { id: String },
    /// Finished: `state` is terminal.
    Finished {
        id: String,
        state: TaskState,
        result: Option<serde_json::Value>,
        error: Option<ApiError>,
    },
}

impl Change {
    /// The task ended in `state` (terminal, without a result) for the reason in `message`.
    pub fn finished(
        id: &str,
        state: TaskState,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self::Finished {
            id: id.to_owned(),
            state,
            result: None,
            error: Some(ApiError::new(code, message)),
        }
    }

    /// The task this change is about.
    pub fn id(&self) -> &str {
        match self {
            Self::Dispatched { id, .. }
            | Self::Running { id }
            | Self::Cancelling { id }
            | Self::Requeue { id, .. }
            | Self::Retry { id, .. }
            | Self::Preempted { id, .. }
            | Self::StartOver { id }
            | Self::Finished { id, .. } => id,
        }
    }
}

/// What decides where, and whether, a queued task may go now, besides its payload's size:
/// its capability, the device it names, the device locks and bridge resources it needs, and
/// its QoS class (which may be at its quota). Queued tasks are indexed per lane, each in
/// dispatch order, so dispatch looks only at lanes an online device can serve, and when a
/// lane's head cannot go (no device has its locks, its resources are taken, its class is at
/// its quota), neither can any task behind it: the lane is passed over whole, however long.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lane {
    pub capability: String,
    /// The device the tasks name, if any.
    pub device: Option<String>,
    /// The QoS class ([`crate::dispatch::class_of`] of the priority).
    pub class: usize,
    /// Device lock names, as submitted.
    pub locks: Vec<String>,
    /// Bridge resource names, as submitted.
    pub resources: Vec<String>,
}

impl Lane {
    /// The lane of `rec`.
    pub fn of(rec: &TaskRecord) -> Self {
        Self {
            capability: rec.sub.capability.clone(),
            device: rec.sub.device.clone(),
            class: crate::dispatch::class_of(rec.sub.priority),
            locks: rec.sub.locks.clone(),
            resources: rec.sub.resources.clone(),
        }
    }
}

/// Dispatch order key of a queued task (see [`TaskRecord::order_key`]); its last part, the
/// admission sequence, makes it unique.
type OrderKey = (u8, u64, u64);

/// An [`OrderKey`] packed into one integer of the same order: the priority level in the top 3
/// bits, the deadline (`u64::MAX`: none) in the next 64, the admission sequence in the low 61
/// (it counts tasks accepted, far below 2^61).
type LaneKey = u128;

const SEQ_BITS: u32 = 61;

fn pack(key: OrderKey) -> LaneKey {
    (u128::from(key.0) << (64 + SEQ_BITS))
        | (u128::from(key.1) << SEQ_BITS)
        | u128::from(key.2 & ((1 << SEQ_BITS) - 1))
}

fn unpack(key: LaneKey) -> OrderKey {
    (
        (key >> (64 + SEQ_BITS)) as u8,
        (key >> SEQ_BITS) as u64,
        (key as u64) & ((1 << SEQ_BITS) - 1),
    )
}

/// The value of a lane entry: the payload's size, or this bit for a task held whole.
const WHOLE: u32 = 1 << 31;

/// Whether `rec` is fresh, kept only as its lane entry: queued, never handed to a device, and
/// naming no bridge resource (whose waiters and holders are kept whole).
fn is_fresh(rec: &TaskRecord) -> bool {
    rec.state == TaskState::Queued
        && rec.attempt == 0
        && rec.preemptions == 0
        && rec.device.is_none()
        && rec.retry_handle.is_none()
        && rec.checkpoint.is_none()
        && !rec.cancelling
        && rec.not_before_ms == 0
        && rec.sub.resources.is_empty()
}

/// A queued task as [`Queue::lanes`] yields it: whole, or what its lane entry says of a fresh
/// one.
#[derive(Clone, Copy, Debug)]
pub enum Queued<'a> {
    Whole(&'a TaskRecord),
    Fresh {
        seq: u64,
        priority: Priority,
        /// `u64::MAX`: none.
        deadline_at_ms: u64,
        payload_len: u32,
    },
}

impl Queued<'_> {
    /// Its admission sequence.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Whole(t) => t.seq,
            Self::Fresh { seq, .. } => *seq,
        }
    }

    pub fn priority(&self) -> Priority {
        match self {
            Self::Whole(t) => t.sub.priority,
            Self::Fresh { priority, .. } => *priority,
        }
    }

    pub fn deadline_at_ms(&self) -> Option<u64> {
        match self {
            Self::Whole(t) => t.deadline_at_ms,
            Self::Fresh { deadline_at_ms, .. } => Some(*deadline_at_ms).filter(|&d| d != u64::MAX),
        }
    }

    /// Not dispatched again before this timer-clock ms (0 for a fresh task).
    pub fn not_before_ms(&self) -> u64 {
        match self {
            Self::Whole(t) => t.not_before_ms,
            Self::Fresh { .. } => 0,
        }
    }

    /// The payload's size in bytes.
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Whole(t) => t.sub.payload.len(),
            Self::Fresh { payload_len, .. } => *payload_len as usize,
        }
    }

    /// The device of its last attempt (none for a fresh task).
    pub fn last_device(&self) -> Option<&str> {
        match self {
            Self::Whole(t) => t.device.as_deref(),
            Self::Fresh { .. } => None,
        }
    }

    /// The whole record, when the queue holds it in memory.
    pub fn record(&self) -> Option<&TaskRecord> {
        match self {
            Self::Whole(t) => Some(t),
            Self::Fresh { .. } => None,
        }
    }

    /// Dispatch order: priority, then deadline, then admission.
    pub fn order_key(&self) -> OrderKey {
        (
            self.priority().level(),
            self.deadline_at_ms().unwrap_or(u64::MAX),
            self.seq(),
        )
    }
}

/// The queued tasks of one lane, in dispatch order: packed order key → payload size, or
/// [`WHOLE`] for a task held whole (in `Queue::active`).
type LaneTasks = BTreeMap<LaneKey, u32>;

/// Writes staged since the last [`Queue::commit`].
#[derive(Debug, Default)]
struct Pending {
    /// Task rows to store (`Some`) or delete (`None`); the last write of a batch wins.
    tasks: HashMap<String, Option<String>>,
    /// Rows of `fresh` to store (`Some(row)`) or delete (`None`), by admission sequence.
    fresh: HashMap<u64, Option<Vec<u8>>>,
    /// Rows of `active` to store (`true`) or delete (`false`), by task id.
    active: HashMap<String, bool>,
    /// Final events: (finish sequence, id, event JSON).
    done: Vec<(u64, String, String)>,
    /// Index into `done` by id, for duplicates submitted before the commit.
    done_by_id: HashMap<String, usize>,
    /// New outbox entries: (key, entry JSON).
    outbox: Vec<(u64, String)>,
    /// Answers not stored for want of room, to publish once after the commit (best effort).
    unstored: Vec<OutboxEntry>,
    /// The lowest outbox key the last commit wrote, until taken ([`Queue::take_appended`]).
    appended: Option<u64>,
    /// Outbox keys the broker acknowledged.
    published: Vec<u64>,
    /// The timer clock's anchor is due (the queue holds tasks and it was last committed
    /// `KEEP_TIME_EVERY_MS` ago).
    clock: bool,
    /// Device ids proven by a credential for the first time ([`Queue::mark_proven`]).
    proven: Vec<String>,
    /// Devices gone offline (`Some(ms)`) or forgotten or back (`None`), in order.
    offline: Vec<(String, Option<u64>)>,
    /// Capability documents published (`true`) or cleared (`false`), in order.
    capabilities: Vec<(String, bool)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.fresh.is_empty()
            && self.active.is_empty()
            && self.done.is_empty()
            && self.outbox.is_empty()
            && self.published.is_empty()
            && self.proven.is_empty()
            && self.offline.is_empty()
            && self.capabilities.is_empty()
            && !self.clock
    }

    /// Whether the batch holds anything that must survive a crash (everything but
    /// acknowledged outbox keys, whose loss only publishes those events again).
    fn must_sync(&self) -> bool {
        !(self.tasks.is_empty()
            && self.fresh.is_empty()
            && self.active.is_empty()
            && self.done.is_empty()
            && self.outbox.is_empty()
            && self.proven.is_empty()
            && self.offline.is_empty()
            && self.capabilities.is_empty())
            || self.clock
    }
}

/// The durable queue.
///
/// Changes are staged: [`Queue::submit`], [`Queue::apply`], [`Queue::notify`] and
/// [`Queue::published`] update the in-memory state at once and stage their writes, and
/// [`Queue::commit`] writes everything staged in one transaction (group commit). Callers let
/// nothing out — no MQTT acknowledgement, no link acknowledgement, no `Assign` — before the
/// commit that covers it. If a commit fails, the in-memory state is ahead of the database:
/// the caller must stop. The next start loads the last committed state, or that and the
/// failed batch when its log record was written before the failure: nothing of it was let
/// out, so either is allowed.
#[derive(Debug)]
pub struct Queue {
    db: Database,
    /// Makes commits durable between checkpoints ([`wal`]).
    wal: wal::Wal,
    /// A commit failed: the database may hold less than the log says, so the closing
    /// checkpoint is not written (the next start applies the log).
    poisoned: bool,
    limit: u64,
    /// Live tasks held whole: all but the fresh queued ones (see [`is_fresh`]).
    active: HashMap<String, TaskRecord>,
    /// The queued tasks of `active`, by admission sequence.
    active_queued: HashMap<u64, String>,
    /// Fresh queued tasks: each is an entry of its lane, its record on disk.
    fresh: usize,
    /// Queued tasks in dispatch order, per lane.
    lanes: BTreeMap<Lane, LaneTasks>,
    /// Queued tasks with a deadline, by deadline: (deadline, admission sequence).
    deadlines: BTreeSet<(u64, u64)>,
    /// Queued tasks waiting for a retry delay, by the time it ends: out of the lanes until
    /// [`Queue::release_delayed`] reaches that time. (time, admission sequence).
    delayed: BTreeSet<(u64, u64)>,
    /// The time up to which retry delays have been released (ms on the timer clock).
    released_ms: u64,
    /// Tasks on devices, by the time their execution lease ends.
    leases: BTreeSet<(u64, String)>,
    /// Queued tasks naming each bridge resource, in dispatch order: its waiters.
    waiting: BTreeMap<String, BTreeSet<(OrderKey, String)>>,
    /// The task holding each bridge resource: the one on a device that names it. Derived from
    /// the tasks' durable state, so ownership survives a restart.
    holders: BTreeMap<String, String>,
    /// Ids of the tasks on each device (dispatched or running).
    on_device: HashMap<String, BTreeSet<String>>,
    /// Queued tasks per priority level.
    depth: [u64; 6],
    /// Tasks that finished since the queue opened, per terminal state (metrics).
    finished: crate::metrics::Finished,
    /// Live tasks by device handle (unique per task), so a device's report finds its task
    /// from durable state alone, also right after a restart.
    by_handle: HashMap<u32, String>,
    next_seq: u64,
    next_outbox: u64,
    next_done: u64,
    /// The next generated task id's number: durable, so ids never repeat across restarts
    /// (an id generated before a crash was never committed, so never seen by anyone).
    next_gen: u64,
    /// Where the unguessable part of generated ids comes from.
    random: ring::rand::SystemRandom,
    /// The timer clock's anchor as the database held it at open (what the run's clock resumes
    /// from).
    stored_anchor: Option<Anchor>,
    /// This run's anchor (set by [`Queue::set_anchor`]), advanced to the latest [`Now`] the
    /// queue handled and written by every commit; none: nothing is written (unit tests).
    anchor: Option<Anchor>,
    /// `anchor.clock_ms` as last committed.
    anchor_committed_ms: u64,
    pending: Pending,
    /// Device ids a credential (certificate, PSK) has proven, ever: stored in the meta table
    /// under [`PROVEN_PREFIX`], so a restart does not open them to links without credentials.
    proven: std::collections::BTreeSet<String>,
    /// Devices offline, with the time (ms on the timer clock) they went: stored in the meta
    /// table under [`OFFLINE_PREFIX`] until they come back or are forgotten.
    offline: BTreeMap<String, u64>,
    /// The devices of `offline` that are offline (not [`u64::MAX`]), by the time they went.
    offline_by_time: BTreeSet<(u64, String)>,
    /// Capabilities with a retained discovery document on the broker (stored in the meta
    /// table).
    capability_docs: BTreeSet<String>,
    /// The newest outbox key of each retained document's topic (device and capability
    /// documents): a newer document of the topic replaces it in the outbox. A key here may
    /// have been published and removed since; removing it again changes nothing.
    retained_latest: HashMap<String, u64>,
    /// Outbox entries (stored and staged) per class: the bound is checked without reading
    /// the table.
    outbox_depth: [u64; CLASSES],
    /// Outbox entries beyond which new submissions are rejected (`outbox_full`) and answers
    /// no longer stored.
    outbox_limit: u64,
    /// The disk is (nearly) full, as the caller watches it: new submissions are rejected
    /// (`storage_full`) and answers no longer stored, so that the space left goes to the
    /// events of accepted work.
    storage_full: bool,
    /// Answers not stored for want of room, since the queue opened.
    shed: u64,
    /// Whether the last answer was shed (to log the start and end of shedding once).
    shedding: bool,
    /// A read of the database failed while looking a task up (the lookup answered as if the
    /// task did not exist): the next commit fails with it, so nothing decided on that answer
    /// is let out.
    read_error: RefCell<Option<String>>,
    /// The record [`Queue::load`] read last, until its task's row is staged again: dispatch
    /// reads a fresh task's record to decide on it, then again to apply the decision.
    last_loaded: RefCell<Option<TaskRecord>>,
    /// Tests: the next commit fails as a full disk would make it.
    #[cfg(test)]
    fail_next_commit: bool,
    /// Tests: the next logged commit fails after its log record is written.
    #[cfg(test)]
    fail_after_log: bool,
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, loading the live tasks. Tasks that were on a
    /// device when the bridge stopped stay on it: the engine waits for that device to come
    /// back before they may go elsewhere.
    pub fn open(dir: &Path, limit: u64) -> Result<Self, QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("queue.redb");
        // redb's page cache may grow to 1 GiB by default; gateways have 256 MB to 2 GB of RAM.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // A clean stop closes the database; after a crash redb repairs it on open (a walk
            // of the whole file), which an operator should be able to see.
            .set_repair_callback(|session| {
                if session.progress() == 0.0 {
                    tracing::warn!("the queue database was not closed cleanly; repairing it");
                }
            })
            .create(&path)
            .map_err(|source| QueueError::Open { path, source })?;
        // The log's records after the database's last checkpoint are applied below, before
        // anything is read.
        let wal_path = dir.join("queue.wal");
        let stored = |name: &str| stored_value(&db, name);
        let log_id = match stored(WAL_ID)? {
            Some(id) => id,
            None => {
                // A database without a log yet (new, or written by an earlier version): its
                // own log id, so no other database's log file is ever read as its own.
                let mut id = [0u8; 8];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).map_err(
                    |_| QueueError::Corrupt {
                        key: WAL_ID.into(),
                        reason: "no random number for the write-ahead log's id".into(),
                    },
                )?;
                let id = u64::from_le_bytes(id);
                let txn = db.begin_write().map_err(db_err)?;
                {
                    let mut meta = txn.open_table(META).map_err(db_err)?;
                    meta.insert(WAL_ID, id).map_err(db_err)?;
                }
                txn.commit().map_err(db_err)?;
                id
            }
        };
        let checkpoint = stored(WAL_CHECKPOINT)?.unwrap_or(0);
        // Another version's commit after the last checkpoint (a downgrade): the log's
        // records are older than the database, never applied over it.
        let current = stored(WAL_OUTBOX)? == stored("outbox")?;
        let (wal, mut replay) =
            wal::Wal::open(&wal_path, log_id, checkpoint).map_err(|source| QueueError::Wal {
                path: wal_path,
                source,
            })?;
        if !current && !replay.is_empty() {
            tracing::warn!(
                records = replay.len(),
                "the write-ahead log holds commits older than the database (another version wrote it since); not applied"
            );
            replay.clear();
        }
        let mut q = Self {
            db,
            wal,
            poisoned: false,
            limit,
            active: HashMap::new(),
            active_queued: HashMap::new(),
            fresh: 0,
            lanes: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            delayed: BTreeSet::new(),
            released_ms: 0,
            leases: BTreeSet::new(),
            waiting: BTreeMap::new(),
            holders: BTreeMap::new(),
            on_device: HashMap::new(),
            depth: [0; 6],
            finished: crate::metrics::Finished::default(),
            by_handle: HashMap::new(),
            next_seq: 1,
            next_outbox: 1,
            next_done: 1,
            next_gen: 1,
            random: ring::rand::SystemRandom::new(),
            stored_anchor: None,
            anchor: None,
            anchor_committed_ms: 0,
            pending: Pending::default(),
            proven: std::collections::BTreeSet::new(),
            offline: BTreeMap::new(),
            offline_by_time: BTreeSet::new(),
            capability_docs: BTreeSet::new(),
            retained_latest: HashMap::new(),
            outbox_depth: [0; CLASSES],
            outbox_limit: OUTBOX_LIMIT,
            storage_full: false,
            shed: 0,
            shedding: false,
            read_error: RefCell::new(None),
            last_loaded: RefCell::new(None),
            #[cfg(test)]
            fail_next_commit: false,
            #[cfg(test)]
            fail_after_log: false,
        };
        // Create every table, so reads never meet a missing one. Only when one is missing:
        // a database that has them all (and nothing in the log to apply) opens without
        // writing, also on a full disk.
        let names: BTreeSet<String> = {
            use redb::TableHandle;
            let read = q.db.begin_read().map_err(db_err)?;
            let tables = read.list_tables().map_err(db_err)?;
            tables.map(|t| t.name().to_owned()).collect()
        };
        let all = [
            "tasks",
            "fresh",
            "active_ids",
            "done",
            "outbox",
            "done_ids",
            "meta",
        ];
        // Written last by an earlier version (or by one, then this one, then it again).
        let legacy_active = names.contains(LEGACY_ACTIVE);
        let legacy_done = names.contains(LEGACY_DONE_ORDER.name());
        let legacy_done_rows: Vec<(u64, String)> = if legacy_done {
            let read = q.db.begin_read().map_err(db_err)?;
            let old = read.open_table(LEGACY_DONE_ORDER).map_err(db_err)?;
            old.iter()
                .map_err(db_err)?
                .map(|row| {
                    let (n, id) = row.map_err(db_err)?;
                    Ok((n.value(), id.value().to_owned()))
                })
                .collect::<Result<_, QueueError>>()?
        } else {
            Vec::new()
        };
        if !all.iter().all(|t| names.contains(*t)) || legacy_active || legacy_done {
            let txn = q.db.begin_write().map_err(db_err)?;
            if legacy_active {
                // Its `active_ids`, if any, is from before that version ran: emptied, it no
                // longer adds up with `fresh` unless every task is fresh, and the index is
                // rebuilt from the records below (also after a crash right after this).
                txn.delete_table(ACTIVE).map_err(db_err)?;
                txn.delete_table(TableDefinition::<&str, &[u8]>::new(LEGACY_ACTIVE))
                    .map_err(db_err)?;
            }
            if legacy_done {
                // Finish sequences come from one counter (`meta.done`) in every version:
                // the rows of both tables are one order.
                let mut order = txn.open_table(DONE_ORDER).map_err(db_err)?;
                for (n, id) in &legacy_done_rows {
                    order.insert(*n, id.as_bytes()).map_err(db_err)?;
                }
                drop(order);
                txn.delete_table(LEGACY_DONE_ORDER).map_err(db_err)?;
            }
            txn.open_table(TASKS).map_err(db_err)?;
            txn.open_table(FRESH).map_err(db_err)?;
            txn.open_table(ACTIVE).map_err(db_err)?;
            txn.open_table(DONE).map_err(db_err)?;
            txn.open_table(OUTBOX).map_err(db_err)?;
            txn.open_table(DONE_ORDER).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
            txn.commit().map_err(db_err)?;
        }

        if replay.is_empty() {
            q.resync_checkpoint()?;
        } else {
            q.replay(&replay)?;
        }

        let read = q.db.begin_read().map_err(db_err)?;
        let meta = read.open_table(META).map_err(db_err)?;
        let counter = |name: &str| -> Result<u64, QueueError> {
            Ok(meta.get(name).map_err(db_err)?.map_or(1, |v| v.value()))
        };
        q.next_seq = counter("seq")?;
        q.next_outbox = counter("outbox")?;
        q.next_done = counter("done")?;
        q.next_gen = counter("gen")?;
        for entry in meta.range(PROVEN_PREFIX..PROVEN_END).map_err(db_err)? {
            let (key, _) = entry.map_err(db_err)?;
            if let Some(id) = key.value().strip_prefix(PROVEN_PREFIX) {
                q.proven.insert(id.to_owned());
            }
        }
        for entry in meta
            .range(CAPABILITY_PREFIX..CAPABILITY_END)
            .map_err(db_err)?
        {
            let (key, _) = entry.map_err(db_err)?;
            if let Some(name) = key.value().strip_prefix(CAPABILITY_PREFIX) {
                q.capability_docs.insert(name.to_owned());
            }
        }
        for entry in meta.range(OFFLINE_PREFIX..OFFLINE_END).map_err(db_err)? {
            let (key, since) = entry.map_err(db_err)?;
            if let Some(id) = key.value().strip_prefix(OFFLINE_PREFIX) {
                q.offline.insert(id.to_owned(), since.value());
                if since.value() != u64::MAX {
                    q.offline_by_time.insert((since.value(), id.to_owned()));
                }
            }
        }
        let value = |name: &str| -> Result<Option<u64>, QueueError> {
            Ok(meta.get(name).map_err(db_err)?.map(|v| v.value()))
        };
        if let (Some(clock_ms), Some(boot), Some(boot_ms)) = (
            value("clock_ms")?,
            value("clock_boot")?,
            value("clock_boot_ms")?,
        ) {
            q.stored_anchor = Some(Anchor {
                boot,
                clock_ms,
                boot_ms,
            });
        }
        let tasks = read.open_table(TASKS).map_err(db_err)?;
        let fresh = read.open_table(FRESH).map_err(db_err)?;
        let active = read.open_table(ACTIVE).map_err(db_err)?;
        let rows = |t: &dyn ReadableTableMetadata| t.len().map_err(db_err);
        // The index is this version's: every commit writes `indexed` with the event counter,
        // which every change of a task's place moves (each has its event). A commit by a
        // version without the index (a downgrade, then an upgrade again) moves the counter and
        // not `indexed`: then the index is rebuilt from the records, the truth.
        let current = value(INDEXED)? == Some(q.next_outbox)
            && rows(&fresh)? + rows(&active)? == rows(&tasks)?;
        let loaded = if current {
            q.load_index(&tasks, &fresh, &active)
        } else {
            Err(QueueError::Corrupt {
                key: INDEXED.into(),
                reason: "written by another version".into(),
            })
        };
        if let Err(why) = loaded {
            // Every record read whole, and the index written from them, once (a new database
            // too: it gets its `indexed`).
            let tasks_stored = rows(&tasks)?;
            if tasks_stored > 0 {
                tracing::info!(tasks = tasks_stored, %why, "indexing the queued tasks from their records");
            }
            q.forget_tasks();
            let txn = q.db.begin_write().map_err(db_err)?;
            {
                let mut fresh = txn.open_table(FRESH).map_err(db_err)?;
                let mut active = txn.open_table(ACTIVE).map_err(db_err)?;
                fresh.retain(|_, _| false).map_err(db_err)?;
                active.retain(|_, _| false).map_err(db_err)?;
                for row in tasks.iter().map_err(db_err)? {
                    let (id, raw) = row.map_err(db_err)?;
                    let rec = decode_record(id.value(), raw.value())?;
                    if is_fresh(&rec) {
                        let row = FreshRow::of(&rec).encode();
                        fresh.insert(rec.seq, row.as_slice()).map_err(db_err)?;
                    } else {
                        active.insert(id.value(), NOTHING).map_err(db_err)?;
                    }
                    q.put(rec);
                }
                let mut meta = txn.open_table(META).map_err(db_err)?;
                meta.insert(INDEXED, q.next_outbox).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
        }
        let outbox = read.open_table(OUTBOX).map_err(db_err)?;
        for row in outbox.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let key = k.value();
            q.outbox_depth[class_of(key)] += 1;
            // Retained documents left from before the start: the older of a topic go with
            // the first commit (keys come in ascending order, so the last one stays).
            if class_of(key) == usize::from(DEVICE_CLASS) {
                if let Ok(entry) = serde_json::from_slice::<OutboxEntry>(v.value()) {
                    if let Some(old) = q.retained_latest.insert(entry.subtopic, key) {
                        q.pending.published.push(old);
                    }
                }
            }
        }
        Ok(q)
    }

    /// Loads the live tasks from the index: the lanes from the fresh tasks' rows, without
    /// reading their records, and the tasks listed in `active` whole. A row that does not
    /// decode, or an active task without a record, is an error (the caller rebuilds).
    fn load_index(
        &mut self,
        tasks: &redb::ReadOnlyTable<&str, &[u8]>,
        fresh: &redb::ReadOnlyTable<u64, &[u8]>,
        active: &redb::ReadOnlyTable<&str, &[u8]>,
    ) -> Result<(), QueueError> {
        let mut last: Option<Lane> = None;
        for row in fresh.iter().map_err(db_err)? {
            let (seq, raw) = row.map_err(db_err)?;
            let seq = seq.value();
            let f = FreshRow::decode(raw.value()).ok_or_else(|| QueueError::Corrupt {
                key: format!("fresh {seq}"),
                reason: "not a fresh task's row".into(),
            })?;
            let lane = f.lane(last.take());
            let key = (f.priority.level(), f.deadline_at_ms, seq);
            match self.lanes.get_mut(&lane) {
                Some(tasks) => {
                    tasks.insert(pack(key), f.payload_len);
                }
                None => self.enter_lane(lane.clone(), key, f.payload_len),
            }
            last = Some(lane);
            self.fresh += 1;
            self.depth[usize::from(key.0)] += 1;
            if f.deadline_at_ms != u64::MAX {
                self.deadlines.insert((f.deadline_at_ms, seq));
            }
        }
        for row in active.iter().map_err(db_err)? {
            let (id, _) = row.map_err(db_err)?;
            let id = id.value();
            let raw = tasks
                .get(id)
                .map_err(db_err)?
                .ok_or_else(|| QueueError::Corrupt {
                    key: id.to_owned(),
                    reason: "listed as active, without a record".into(),
                })?;
            self.put(decode_record(id, raw.value())?);
        }
        Ok(())
    }

    /// Forgets every live task in memory (before loading them again).
    fn forget_tasks(&mut self) {
        self.active.clear();
        self.active_queued.clear();
        self.fresh = 0;
        self.lanes.clear();
        self.deadlines.clear();
        self.delayed.clear();
        self.leases.clear();
        self.waiting.clear();
        self.holders.clear();
        self.on_device.clear();
        self.depth = [0; 6];
        self.by_handle.clear();
    }

    /// Bounds the outbox: at `limit` entries new submissions are rejected (`outbox_full`)
    /// and answers are no longer stored (default [`OUTBOX_LIMIT`]).
    pub fn set_outbox_limit(&mut self, limit: u64) {
        self.outbox_limit = limit.max(1);
    }

    /// Whether the disk is (nearly) full: while it is, new submissions are rejected
    /// (`storage_full`) and answers are not stored, while the changes and events of accepted
    /// work still are (they are bounded by the live tasks; the caller keeps a reserve for
    /// them).
    pub fn set_storage_full(&mut self, full: bool) {
        self.storage_full = full;
    }

    /// Outbox entries, stored and staged.
    pub fn outbox_len(&self) -> u64 {
        self.outbox_depth.iter().sum()
    }

    /// The outbox's bound ([`Queue::set_outbox_limit`]).
    pub fn outbox_limit(&self) -> u64 {
        self.outbox_limit
    }

    /// Answers not stored for want of room since the queue opened.
    pub fn shed(&self) -> u64 {
        self.shed
    }

    /// The lowest outbox key written since the last call, if any: an entry of a more urgent
    /// class lands *before* entries already read, so whoever reads the outbox in key order
    /// must read again from there.
    pub fn take_appended(&mut self) -> Option<u64> {
        self.pending.appended.take()
    }

    /// Answers the last commit did not store for want of room: to be published once, best
    /// effort (they change no task, so nothing durable depends on them).
    pub fn take_unstored(&mut self) -> Vec<OutboxEntry> {
        std::mem::take(&mut self.pending.unstored)
    }

    /// Puts a task into its lane (creating the lane).
    fn enter_lane(&mut self, lane: Lane, key: OrderKey, value: u32) {
        self.lanes.entry(lane).or_default().insert(pack(key), value);
    }

    /// Takes a task out of its lane, dropping the lane once it is empty; whether it was there.
    fn leave_lane(&mut self, lane: &Lane, key: OrderKey) -> bool {
        let Some(tasks) = self.lanes.get_mut(lane) else {
            return false;
        };
        let was = tasks.remove(&pack(key)).is_some();
        if tasks.is_empty() {
            self.lanes.remove(lane);
        }
        was
    }

    /// Stores `rec` in memory, replacing and re-indexing the previous record of its task:
    /// as its lane entry alone if it is fresh, whole otherwise.
    fn put(&mut self, rec: TaskRecord) {
        self.remove(&rec);
        let id = rec.sub.id.clone();
        if rec.state == TaskState::Queued {
            self.depth[usize::from(rec.sub.priority.level())] += 1;
            if let Some(d) = rec.deadline_at_ms {
                self.deadlines.insert((d, rec.seq));
            }
        }
        if is_fresh(&rec) {
            self.enter_lane(Lane::of(&rec), rec.order_key(), lane_size(&rec));
            self.fresh += 1;
            return;
        }
        if rec.state == TaskState::Queued {
            self.active_queued.insert(rec.seq, id.clone());
            // A task in its retry delay waits out of the lanes (dispatch never looks at it)
            // until `release_delayed` reaches its time.
            if rec.not_before_ms > self.released_ms {
                self.delayed.insert((rec.not_before_ms, rec.seq));
            } else {
                self.enter_lane(Lane::of(&rec), rec.order_key(), WHOLE);
            }
            for r in &rec.sub.resources {
                self.waiting
                    .entry(r.clone())
                    .or_default()
                    .insert((rec.order_key(), id.clone()));
            }
        } else if let Some(device) = &rec.device {
            for r in &rec.sub.resources {
                if let Some(other) = self.holders.insert(r.clone(), id.clone()) {
                    if other != id {
                        tracing::error!(resource = %r, task = %id, %other, "two tasks hold one resource");
                    }
                }
            }
            self.on_device
                .entry(device.clone())
                .or_default()
                .insert(id.clone());
            if let Some(until) = rec.lease_until_ms {
                self.leases.insert((until, id.clone()));
            }
        }
        self.by_handle.insert(rec.handle(), id.clone());
        self.active.insert(id, rec);
    }

    /// Forgets the live task of `rec` (any version of its record: a fresh task's lane and
    /// order key never change) in memory: its record or lane entry, and every index entry.
    fn remove(&mut self, rec: &TaskRecord) {
        let id = rec.sub.id.as_str();
        let Some(old) = self.active.remove(id) else {
            if self.leave_lane(&Lane::of(rec), rec.order_key()) {
                self.fresh -= 1;
                self.depth[usize::from(rec.sub.priority.level())] -= 1;
                if let Some(d) = rec.deadline_at_ms {
                    self.deadlines.remove(&(d, rec.seq));
                }
            }
            return;
        };
        self.by_handle.remove(&old.handle());
        if old.state == TaskState::Queued {
            self.active_queued.remove(&old.seq);
            if !self.delayed.remove(&(old.not_before_ms, old.seq)) {
                self.leave_lane(&Lane::of(&old), old.order_key());
            }
            self.depth[usize::from(old.sub.priority.level())] -= 1;
            if let Some(d) = old.deadline_at_ms {
                self.deadlines.remove(&(d, old.seq));
            }
            for r in &old.sub.resources {
                if let Some(set) = self.waiting.get_mut(r) {
                    set.remove(&(old.order_key(), id.to_owned()));
                    if set.is_empty() {
                        self.waiting.remove(r);
                    }
                }
            }
        } else if let Some(device) = &old.device {
            for r in &old.sub.resources {
                if self.holders.get(r).is_some_and(|h| h == id) {
                    self.holders.remove(r);
                }
            }
            if let Some(until) = old.lease_until_ms {
                self.leases.remove(&(until, id.to_owned()));
            }
            if let Some(set) = self.on_device.get_mut(device) {
                set.remove(id);
                if set.is_empty() {
                    self.on_device.remove(device);
                }
            }
        }
    }

    /// Runs `f` on a read transaction; a failure is kept for the next commit (see
    /// `read_error`) and answered as `None`.
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, QueueError>,
    ) -> Option<T> {
        let result = self.db.begin_read().map_err(db_err).and_then(|r| f(&r));
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "reading the queue database failed");
                self.read_error.borrow_mut().get_or_insert(e.to_string());
                None
            }
        }
    }

    /// The stored record of `id`, staged writes first: a live task's (or, until the commit
    /// that deletes it, a finished one's).
    fn load(&self, id: &str) -> Option<TaskRecord> {
        if let Some(t) = self
            .last_loaded
            .borrow()
            .as_ref()
            .filter(|t| t.sub.id == id)
        {
            return Some(t.clone());
        }
        let loaded = self.load_stored(id);
        if let Some(t) = &loaded {
            *self.last_loaded.borrow_mut() = Some(t.clone());
        }
        loaded
    }

    /// As [`Queue::load`], without `last_loaded`.
    fn load_stored(&self, id: &str) -> Option<TaskRecord> {
        match self.pending.tasks.get(id) {
            Some(Some(json)) => self.read(|_| decode_record(id, json.as_bytes())),
            Some(None) => None,
            None => self
                .read(|read| {
                    let tasks = read.open_table(TASKS).map_err(db_err)?;
                    let row = tasks.get(id).map_err(db_err)?;
                    row.map(|v| decode_record(id, v.value())).transpose()
                })
                .flatten(),
        }
    }

    /// The id of the queued task of admission sequence `seq`.
    pub fn id_of(&self, seq: u64) -> Option<String> {
        if let Some(id) = self.active_queued.get(&seq) {
            return Some(id.clone());
        }
        let id = |raw: &[u8]| FreshRow::decode(raw).map(|f| f.id.to_owned());
        match self.pending.fresh.get(&seq) {
            Some(row) => row.as_deref().and_then(id),
            None => self
                .read(|read| {
                    let fresh = read.open_table(FRESH).map_err(db_err)?;
                    let row = fresh.get(seq).map_err(db_err)?;
                    Ok(row.and_then(|v| id(v.value())))
                })
                .flatten(),
        }
    }

    /// The queued task of admission sequence `seq` (read from disk if it is fresh).
    pub fn queued(&self, seq: u64) -> Option<Cow<'_, TaskRecord>> {
        self.get(&self.id_of(seq)?)
    }

    /// How [`Queue::lanes`] shows a lane's entry.
    fn view(&self, key: LaneKey, value: u32) -> Option<Queued<'_>> {
        let (level, deadline_at_ms, seq) = unpack(key);
        if value == WHOLE {
            let id = self.active_queued.get(&seq)?;
            return self.active.get(id).map(Queued::Whole);
        }
        Some(Queued::Fresh {
            seq,
            priority: Priority::from_level(level)?,
            deadline_at_ms,
            payload_len: value,
        })
    }

    /// The timer clock's anchor as committed before this run (none in a new database).
    pub fn stored_anchor(&self) -> Option<Anchor> {
        self.stored_anchor
    }

    /// The run's timer clock: from now on every commit stores `anchor`, advanced to the
    /// latest [`Now`] handled, so that the next start continues the clock (see
    /// [`crate::time`]).
    pub fn set_anchor(&mut self, anchor: Anchor) {
        self.anchor = Some(anchor);
        self.pending.clock = true;
    }

    /// Advances the anchor to `now`. Only a value the clock has reached is stored, and every
    /// deadline or delay staged with it was computed from one no later; while tasks wait,
    /// the anchor is made due every `KEEP_TIME_EVERY_MS` so a quiet queue keeps it recent.
    fn advance_anchor(&mut self, now: Now) {
        let Some(anchor) = &mut self.anchor else {
            return;
        };
        *anchor = anchor.at(now.ms);
        if !(self.active.is_empty() && self.fresh == 0)
            && anchor.clock_ms >= self.anchor_committed_ms.saturating_add(KEEP_TIME_EVERY_MS)
        {
            self.pending.clock = true;
        }
    }

    /// When the task queued longest was accepted (wall-clock ms), if any task is queued.
    pub fn oldest_queued_ms(&self) -> Option<u64> {
        // The first fresh one by admission: among the staged rows, or the first stored row
        // not staged for deletion (its row carries the time).
        let accepted = |raw: &[u8]| FreshRow::decode(raw).map(|f| f.submitted_ms);
        let staged = self
            .pending
            .fresh
            .iter()
            .filter_map(|(&seq, row)| Some((seq, accepted(row.as_deref()?)?)))
            .min();
        let stored = (self.fresh > 0)
            .then(|| {
                self.read(|read| {
                    let fresh = read.open_table(FRESH).map_err(db_err)?;
                    for row in fresh.iter().map_err(db_err)? {
                        let (seq, raw) = row.map_err(db_err)?;
                        if !self.pending.fresh.contains_key(&seq.value()) {
                            return Ok(accepted(raw.value()).map(|ms| (seq.value(), ms)));
                        }
                    }
                    Ok(None)
                })
            })
            .flatten()
            .flatten();
        let fresh = staged.into_iter().chain(stored).min();
        let active = self
            .active_queued
            .values()
            .filter_map(|id| self.active.get(id))
            .map(|t| (t.seq, t.submitted_ms))
            .min();
        fresh.into_iter().chain(active).min().map(|(_, ms)| ms)
    }

    /// Tasks that finished since the queue opened, per terminal state.
    pub fn finished(&self) -> &crate::metrics::Finished {
        &self.finished
    }

    /// Live tasks (queued or on a device).
    pub fn len(&self) -> usize {
        self.active.len() + self.fresh
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty() && self.fresh == 0
    }

    /// A live task (read from disk if it is a fresh queued one).
    pub fn get(&self, id: &str) -> Option<Cow<'_, TaskRecord>> {
        if let Some(t) = self.active.get(id) {
            return Some(Cow::Borrowed(t));
        }
        // Stored and not held whole: fresh (the `tasks` table holds live tasks only).
        self.load(id).map(Cow::Owned)
    }

    /// Every live task, in no particular order (reads every fresh one from disk: for tests
    /// and tools).
    pub fn live(&self) -> Vec<Cow<'_, TaskRecord>> {
        let fresh = self
            .lanes
            .values()
            .flatten()
            .filter(|(_, v)| **v != WHOLE)
            .filter_map(|(k, _)| self.queued(unpack(*k).2));
        self.active
            .values()
            .map(Cow::Borrowed)
            .chain(fresh)
            .collect()
    }

    /// The final event of finished task `id`, if the queue still holds it.
    pub fn final_state(&self, id: &str) -> Result<Option<StatusEvent>, QueueError> {
        self.final_event(id)
    }

    /// The live task with this device handle (only a task that has been on a device has one
    /// a device knows).
    pub fn by_handle(&self, handle: u32) -> Option<&TaskRecord> {
        self.by_handle
            .get(&handle)
            .and_then(|id| self.active.get(id))
    }

    /// Queued tasks in dispatch order (priority, deadline, admission), across all lanes.
    /// Linear in the queue, and reads every fresh task from disk: for tests and tools, not
    /// for the dispatch path.
    pub fn ready(&self) -> Vec<Cow<'_, TaskRecord>> {
        let mut all: Vec<Cow<'_, TaskRecord>> = self
            .lanes
            .values()
            .flat_map(|l| l.keys().map(|k| unpack(*k).2))
            .chain(self.delayed.iter().map(|&(_, seq)| seq))
            .filter_map(|seq| self.queued(seq))
            .collect();
        all.sort_unstable_by_key(|t| t.order_key());
        all
    }

    /// The lanes with queued tasks, each with its tasks in dispatch order.
    pub fn lanes(&self) -> impl Iterator<Item = (&Lane, impl Iterator<Item = Queued<'_>> + '_)> {
        self.lanes
            .iter()
            .map(|(lane, l)| (lane, l.iter().filter_map(|(k, v)| self.view(*k, *v))))
    }

    /// The first `limit` queued tasks in dispatch order (priority, deadline, admission),
    /// those waiting out a retry delay included, without reading the others: the heads of
    /// the lanes are merged, so the cost follows `limit` and the number of lanes.
    pub fn first_queued(&self, limit: usize) -> Vec<Cow<'_, TaskRecord>> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut lanes: Vec<_> = self.lanes.values().map(|l| l.keys()).collect();
        let mut heads = BinaryHeap::new();
        for (i, lane) in lanes.iter_mut().enumerate() {
            if let Some(key) = lane.next() {
                heads.push(Reverse((unpack(*key), i)));
            }
        }
        // Tasks in a retry delay are in no lane; there are few of them (all held whole).
        let mut delayed: Vec<&TaskRecord> = self
            .delayed
            .iter()
            .filter_map(|(_, seq)| self.active_queued.get(seq))
            .filter_map(|id| self.active.get(id))
            .collect();
        delayed.sort_unstable_by_key(|t| t.order_key());
        let mut delayed = delayed.into_iter().peekable();
        let mut out = Vec::with_capacity(limit.min(self.len()));
        while out.len() < limit {
            let lane_head = heads.peek().map(|Reverse((key, _))| *key);
            let take_delayed = match (lane_head, delayed.peek()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(key), Some(t)) => t.order_key() < key,
            };
            if take_delayed {
                out.extend(delayed.next().map(Cow::Borrowed));
                continue;
            }
            let Some(Reverse((key, i))) = heads.pop() else {
                break;
            };
            out.extend(self.queued(key.2));
            if let Some(key) = lanes[i].next() {
                heads.push(Reverse((unpack(*key), i)));
            }
        }
        out
    }

    /// Puts the tasks whose retry delay ends at or before `now_ms` into their lanes, where
    /// dispatch sees them.
    pub fn release_delayed(&mut self, now_ms: u64) {
        if now_ms <= self.released_ms {
            return;
        }
        self.released_ms = now_ms;
        while let Some(&(until, seq)) = self.delayed.first() {
            if until > now_ms {
                break;
            }
            self.delayed.pop_first();
            let task = self
                .active_queued
                .get(&seq)
                .and_then(|id| self.active.get(id));
            if let Some((lane, key)) = task.map(|t| (Lane::of(t), t.order_key())) {
                self.enter_lane(lane, key, WHOLE);
            }
        }
    }

    /// Queued tasks per priority level (P0 first).
    pub fn depth(&self) -> [u64; 6] {
        self.depth
    }

    /// The ids of the queued tasks whose deadline is at or before `now_ms`.
    pub fn overdue(&self, now_ms: u64) -> Vec<String> {
        self.deadlines
            .iter()
            .take_while(move |(d, _)| *d <= now_ms)
            .filter_map(|&(_, seq)| self.id_of(seq))
            .collect()
    }

    /// Tasks on devices whose execution lease ended at or before `now_ms`.
    pub fn lease_ended(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        self.leases
            .iter()
            .take_while(move |(d, _)| *d <= now_ms)
            .map(|(_, id)| id.as_str())
    }

    /// The earliest time after `now_ms` at which a queued task's deadline passes or its retry
    /// delay ends, or a task's execution lease ends.
    pub fn next_timer(&self, now_ms: u64) -> Option<u64> {
        let after = now_ms.saturating_add(1);
        let deadline = self.deadlines.range((after, 0)..).next().map(|e| e.0);
        let delay = self.delayed.range((after, 0)..).next().map(|e| e.0);
        let lease = self
            .leases
            .range((after, String::new())..)
            .next()
            .map(|e| e.0);
        deadline.into_iter().chain(delay).chain(lease).min()
    }

    /// The task holding bridge resource `name`, if any.
    pub fn holder(&self, name: &str) -> Option<&TaskRecord> {
        self.holders.get(name).and_then(|id| self.active.get(id))
    }

    /// Held bridge resources with their holders.
    pub fn held(&self) -> impl Iterator<Item = (&str, &TaskRecord)> {
        self.holders
            .iter()
            .filter_map(|(r, id)| self.active.get(id).map(|t| (r.as_str(), t)))
    }

    /// The queued tasks naming bridge resource `name`, in dispatch order.
    pub fn waiters<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.waiting
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.active.get(id))
    }

    /// The devices that have tasks on them (online or not).
    pub fn devices_with_tasks(&self) -> impl Iterator<Item = &str> {
        self.on_device.keys().map(String::as_str)
    }

    /// Live tasks on a device.
    pub fn on_device<'a>(&'a self, device: &str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.on_device
            .get(device)
            .into_iter()
            .flatten()
            .filter_map(|id| self.active.get(id))
    }

    /// How many tasks are on a device.
    pub fn in_flight(&self, device: &str) -> usize {
        self.on_device.get(device).map_or(0, BTreeSet::len)
    }

    /// Stages `entry` for the outbox in `class`.
    fn stage_outbox(&mut self, class: u8, entry: &OutboxEntry) -> u64 {
        let key = outbox_key(class, self.next_outbox);
        self.pending.outbox.push((key, json(entry)));
        self.outbox_depth[class_of(key)] += 1;
        self.next_outbox += 1;
        key
    }

    /// Whether an answer (input that changed no task) may still be stored: the disk is not
    /// full, the outbox is below its bound, and answers hold less than a quarter of it (so
    /// bad input cannot crowd out the events of accepted work).
    fn room_for_answers(&self) -> bool {
        !self.storage_full
            && self.outbox_len() < self.outbox_limit
            && self.outbox_depth[usize::from(ANSWER_CLASS)] < (self.outbox_limit / 4).max(1)
    }

    /// Stages an answer to input that changed no task, in `class`. Without room
    /// ([`Queue::room_for_answers`]) it is shed: counted, logged when shedding starts, and,
    /// if `must_reach` (the only report a submission gets), published once after the commit
    /// without being stored.
    fn stage_answer(&mut self, class: u8, entry: OutboxEntry, must_reach: bool) {
        if self.room_for_answers() {
            if std::mem::take(&mut self.shedding) {
                tracing::info!(shed = self.shed, "answers are stored in the outbox again");
            }
            self.stage_outbox(class, &entry);
            return;
        }
        if !std::mem::replace(&mut self.shedding, true) {
            tracing::warn!(
                outbox = self.outbox_len(),
                limit = self.outbox_limit,
                storage_full = self.storage_full,
                "no room to store answers: repeats are dropped, rejections published once \
                 without storage (counted as shed in the stats)"
            );
        }
        self.shed += 1;
        if must_reach {
            self.pending.unstored.push(entry);
        }
    }

    /// The final event of a finished task, staged or stored.
    fn final_event(&self, id: &str) -> Result<Option<StatusEvent>, QueueError> {
        let read = self.db.begin_read().map_err(db_err)?;
        let done = read.open_table(DONE).map_err(db_err)?;
        self.final_event_in(&done, id)
    }

    /// As [`Queue::final_event`], reading `done` of an open read transaction.
    fn final_event_in(
        &self,
        done: &redb::ReadOnlyTable<&str, &[u8]>,
        id: &str,
    ) -> Result<Option<StatusEvent>, QueueError> {
        let raw = match self.pending.done_by_id.get(id) {
            Some(&i) => Some(self.pending.done[i].2.clone().into_bytes()),
            None => done.get(id).map_err(db_err)?.map(|v| v.value().to_vec()),
        };
        raw.map(|raw| {
            serde_json::from_slice(&raw).map_err(|e| QueueError::Corrupt {
                key: id.to_owned(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    /// A task id for a submission without one: `gen-`, a durable counter, so that it never
    /// names an earlier task whatever the clocks do (stored with the next commit), and 64
    /// random bits, so that another client cannot guess it (to cancel the task, say).
    pub fn generate_id(&mut self) -> String {
        let n = self.next_gen;
        self.next_gen += 1;
        let mut random = [0u8; 8];
        // The system's random source; should it ever fail, the counter alone keeps the id
        // unique.
        let _ = ring::rand::SecureRandom::fill(&self.random, &mut random);
        format!("gen-{n:x}-{:016x}", u64::from_le_bytes(random))
    }

    /// Admits a batch of submissions, each with its event for the outbox (staged).
    ///
    /// A new task's events go in the class of its priority. A submission that adds no task
    /// gets an answer: a duplicate's repeat of its task's state (in the task's class, so it
    /// stays in order with the task's events; a finished task's in the answers' class, after
    /// all of them), or a rejection — the disk nearly full (`storage_full`), the outbox at its
    /// bound (`outbox_full`), the queue at its limit (`queue_full`). Answers are stored only
    /// while there is room ([`Queue::room_for_answers`]); beyond it a repeat is dropped (the
    /// task's own events still come) and a rejection is published once without storage.
    pub fn submit(
        &mut self,
        batch: Vec<Submission>,
        now: Now,
    ) -> Result<Vec<Admission>, QueueError> {
        self.advance_anchor(now);
        let now_ms = now.wall_ms;
        let mut outcomes = Vec::with_capacity(batch.len());
        // One read transaction for the batch's lookups of ids already known.
        let read = self.db.begin_read().map_err(db_err)?;
        let stored_tasks = read.open_table(TASKS).map_err(db_err)?;
        let stored_done = read.open_table(DONE).map_err(db_err)?;
        for sub in batch {
            let known = match (self.active.get(&sub.id), self.pending.tasks.get(&sub.id)) {
                (Some(t), _) => Some(Cow::Borrowed(t)),
                (None, Some(row)) => row
                    .as_ref()
                    .map(|json| decode_record(&sub.id, json.as_bytes()))
                    .transpose()?
                    .map(Cow::Owned),
                (None, None) => stored_tasks
                    .get(sub.id.as_str())
                    .map_err(db_err)?
                    .map(|v| decode_record(&sub.id, v.value()))
                    .transpose()?
                    .map(Cow::Owned),
            };
            if let Some(rec) = known.as_ref().filter(|rec| rec.sub != sub) {
                // The id is taken by a task with other content: not a resubmission of it.
                let error = ApiError::new(
                    ErrorCode::IdConflict,
                    format!(
                        "id {:?} is taken by a live task with other content; it was not changed \
                         (resubmit with a new id)",
                        rec.sub.id
                    ),
                );
                let event = crate::api::ErrorEvent {
                    error,
                    id: Some(sub.id.clone()),
                    trace_id: sub.trace_id.clone(),
                    received: format!("{:?}", sub.id),
                    ts_ms: now_ms,
                };
                outcomes.push(Admission::Rejected(ErrorCode::IdConflict));
                self.stage_answer(
                    ANSWER_CLASS,
                    OutboxEntry::new("errors".into(), &event, false),
                    true,
                );
                continue;
            }
            if let Some(rec) = known {
                let event = rec.event(rec.state, now_ms);
                let class = rec.sub.priority.level();
                outcomes.push(Admission::Duplicate(rec.state));
                self.stage_answer(class, OutboxEntry::status(&event), false);
                continue;
            }
            if let Some(event) = self.final_event_in(&stored_done, &sub.id)? {
                outcomes.push(Admission::Duplicate(event.state));
                self.stage_answer(ANSWER_CLASS, OutboxEntry::status(&event), false);
                continue;
            }
            let refusal = if self.storage_full {
                Some((
                    ErrorCode::StorageFull,
                    "the bridge's disk is nearly full; resubmit later".to_owned(),
                ))
            } else if self.outbox_len() >= self.outbox_limit {
                Some((
                    ErrorCode::OutboxFull,
                    format!(
                        "{} events wait for the broker (the outbox's limit); resubmit later",
                        self.outbox_len()
                    ),
                ))
            } else if self.len() as u64 >= self.limit {
                Some((
                    ErrorCode::QueueFull,
                    format!(
                        "the queue holds its limit of {} tasks; resubmit later",
                        self.limit
                    ),
                ))
            } else {
                None
            };
            if let Some((code, message)) = refusal {
                let error = ApiError::new(code, message);
                let event =
                    StatusEvent::rejected(sub.id.clone(), sub.trace_id.clone(), error, now_ms);
                self.stage_answer(ANSWER_CLASS, OutboxEntry::status(&event), true);
                outcomes.push(Admission::Rejected(code));
                continue;
            }
            let deadline_at_ms = sub.deadline_ms.map(|d| now.ms.saturating_add(d));
            let rec = TaskRecord {
                seq: self.next_seq,
                sub,
                state: TaskState::Queued,
                device: None,
                attempt: 0,
                submitted_ms: now_ms,
                deadline_at_ms,
                not_before_ms: 0,
                retry_handle: None,
                preemptions: 0,
                checkpoint: None,
                boot: None,
                lease_until_ms: None,
                cancelling: false,
            };
            self.next_seq += 1;
            self.stage_task(rec.sub.id.clone(), Some(json(&rec)));
            self.stage_index(&rec, None);
            let queued = OutboxEntry::status(&rec.event(TaskState::Queued, now_ms));
            self.stage_outbox(rec.sub.priority.level(), &queued);
            outcomes.push(Admission::Queued);
            self.put(rec);
        }
        Ok(outcomes)
    }

    /// Stages `id`'s row of `tasks`: its record as JSON, or none (finished).
    fn stage_task(&mut self, id: String, row: Option<String>) {
        let last = self.last_loaded.get_mut();
        if last.as_ref().is_some_and(|t| t.sub.id == id) {
            *last = None;
        }
        self.pending.tasks.insert(id, row);
    }

    /// Stages the row `rec` has in `fresh` or in `active` (as it is fresh or not), and the
    /// removal of its row in the other if it had one: `was_fresh` is what it was before this
    /// change, `None` for a new task.
    fn stage_index(&mut self, rec: &TaskRecord, was_fresh: Option<bool>) {
        let now_fresh = is_fresh(rec);
        if was_fresh == Some(now_fresh) {
            return;
        }
        if now_fresh {
            let row = FreshRow::of(rec).encode();
            self.pending.fresh.insert(rec.seq, Some(row));
        } else {
            self.pending.active.insert(rec.sub.id.clone(), true);
        }
        match was_fresh {
            Some(true) => self.drop_fresh_row(rec.seq),
            Some(false) => self.drop_active_row(&rec.sub.id),
            None => {}
        }
    }

    /// Stages the deletion of a fresh task's row; one staged in this batch (a task accepted
    /// and dispatched in one turn, the usual case under load) is simply not written.
    fn drop_fresh_row(&mut self, seq: u64) {
        if matches!(self.pending.fresh.get(&seq), Some(Some(_))) {
            self.pending.fresh.remove(&seq);
        } else {
            self.pending.fresh.insert(seq, None);
        }
    }

    /// As [`Queue::drop_fresh_row`] for a row of `active` (each is written once, when its task
    /// stops being fresh, so one staged now was not stored before).
    fn drop_active_row(&mut self, id: &str) {
        if self.pending.active.get(id) == Some(&true) {
            self.pending.active.remove(id);
        } else {
            self.pending.active.insert(id.to_owned(), false);
        }
    }

    /// Publishes the final event of finished task `id` again (the answer to a cancel that came
    /// too late); `false` if `id` is not a finished task.
    pub fn answer_final(&mut self, id: &str) -> Result<bool, QueueError> {
        let Some(event) = self.final_event(id)? else {
            return Ok(false);
        };
        self.stage_answer(ANSWER_CLASS, OutboxEntry::status(&event), false);
        Ok(true)
    }

    /// A cancel for `id`, which is neither live nor finished: the submission it is for has
    /// not arrived (brokers order messages per topic only, so a cancel can overtake it). The
    /// id is recorded as finished `cancelled` (staged, with its event), so that submission
    /// is answered as a duplicate and never runs. `false` if the id had finished already.
    pub fn cancel_unseen(&mut self, id: &str, now: Now) -> Result<bool, QueueError> {
        if self.get(id).is_some() || self.final_event(id)?.is_some() {
            return Ok(false);
        }
        let error = ApiError::new(
            ErrorCode::Cancelled,
            "cancelled on request before the submission arrived",
        );
        let event = StatusEvent {
            state: TaskState::Cancelled,
            ..StatusEvent::rejected(id.to_owned(), None, error, now.wall_ms)
        };
        self.finished.count(TaskState::Cancelled);
        self.pending
            .done_by_id
            .insert(id.to_owned(), self.pending.done.len());
        self.pending
            .done
            .push((self.next_done, id.to_owned(), json(&event)));
        self.next_done += 1;
        self.stage_answer(ANSWER_CLASS, OutboxEntry::status(&event), true);
        Ok(true)
    }

    /// Stages an event that belongs to no stored task: it still goes through the outbox, so
    /// it survives a broker outage. A retained one is a device document (state, bounded by
    /// the devices): always stored, in the devices' class. Any other is an answer to a
    /// submission that could not be parsed (its rejection, or a `{root}/errors` entry): stored
    /// while there is room, else published once without storage (see [`Queue::submit`]).
    pub fn notify(&mut self, entry: OutboxEntry) {
        if entry.retain {
            let key = self.stage_outbox(DEVICE_CLASS, &entry);
            // Only the newest retained document of a topic matters: an older one still in
            // the outbox is dropped with this commit (offered already, it is published
            // before this one, which replaces it on the broker). So documents that change
            // while the broker is away do not pile up.
            if let Some(old) = self.retained_latest.insert(entry.subtopic, key) {
                self.pending.published.push(old);
            }
        } else {
            self.stage_answer(ANSWER_CLASS, entry, true);
        }
    }

    /// Applies a batch of changes to live tasks, each with its event (staged). Changes to
    /// unknown (or already finished) ids are skipped and returned.
    pub fn apply(&mut self, batch: Vec<Change>, now: Now) -> Vec<Change> {
        self.advance_anchor(now);
        let now_ms = now.wall_ms;
        let mut skipped = Vec::new();
        for change in batch {
            let id = change.id().to_owned();
            let Some(mut rec) = self.get(&id).map(Cow::into_owned) else {
                skipped.push(change);
                continue;
            };
            let was_fresh = is_fresh(&rec);
            let event = match change {
                Change::Dispatched {
                    device,
                    boot,
                    lease_until_ms,
                    ..
                } => {
                    rec.state = TaskState::Dispatched;
                    rec.device = Some(device);
                    rec.boot = Some(boot);
                    rec.lease_until_ms = Some(lease_until_ms);
                    rec.attempt += 1;
                    Some(rec.event(TaskState::Dispatched, now_ms))
                }
                Change::Cancelling { .. } => {
                    rec.cancelling = true;
                    None
                }
                Change::Running { .. } => {
                    rec.state = TaskState::Running;
                    Some(rec.event(TaskState::Running, now_ms))
                }
                Change::Requeue { not_before_ms, .. } => {
                    // Back to waiting: not a state clients see change (it stays queued
                    // from their point of view until the next `dispatched`).
                    rec.state = TaskState::Queued;
                    rec.not_before_ms = not_before_ms;
                    None
                }
                Change::StartOver { .. } => {
                    rec.state = TaskState::Queued;
                    rec.checkpoint = None;
                    rec.not_before_ms = 0;
                    None
                }
                Change::Preempted { checkpoint, .. } => {
                    let event = rec.event(TaskState::Preempted, now_ms);
                    rec.checkpoint = checkpoint;
                    rec.state = TaskState::Queued;
                    rec.not_before_ms = 0;
                    rec.attempt = rec.attempt.saturating_sub(1);
                    rec.preemptions += 1;
                    rec.retry_handle = Some(self.next_seq as u32);
                    self.next_seq += 1;
                    Some(event)
                }
                Change::Retry { not_before_ms, .. } => {
                    rec.state = TaskState::Queued;
                    rec.not_before_ms = not_before_ms;
                    // Handles come from the admission sequence, so this one is unique too.
                    rec.retry_handle = Some(self.next_seq as u32);
                    self.next_seq += 1;
                    None
                }
                Change::Finished {
                    state,
                    result,
                    error,
                    ..
                } => {
                    self.finished.count(state);
                    let mut e = rec.event(state, now_ms);
                    e.result = result;
                    e.error = error;
                    let event = json(&e);
                    self.stage_task(id.clone(), None);
                    self.pending
                        .done_by_id
                        .insert(id.clone(), self.pending.done.len());
                    self.pending.done.push((self.next_done, id.clone(), event));
                    self.next_done += 1;
                    self.stage_outbox(rec.sub.priority.level(), &OutboxEntry::status(&e));
                    if was_fresh {
                        self.drop_fresh_row(rec.seq);
                    } else {
                        self.drop_active_row(&id);
                    }
                    self.remove(&rec);
                    continue;
                }
            };
            if rec.state == TaskState::Queued {
                rec.lease_until_ms = None;
            }
            self.stage_index(&rec, Some(was_fresh));
            self.stage_task(id, Some(json(&rec)));
            if let Some(e) = event {
                self.stage_outbox(rec.sub.priority.level(), &OutboxEntry::status(&e));
            }
            self.put(rec);
        }
        skipped
    }

    /// Stages the removal of outbox entries the broker has acknowledged.
    pub fn published(&mut self, keys: &[u64]) {
        self.pending.published.extend_from_slice(keys);
    }

    /// Whether a credential has ever proven device id `id` (see [`Queue::mark_proven`]).
    pub fn is_proven(&self, id: &str) -> bool {
        self.proven.contains(id)
    }

    /// Records that a credential proved device id `id`; stored with the next commit.
    pub fn mark_proven(&mut self, id: &str) {
        if self.proven.insert(id.to_owned()) {
            self.pending.proven.push(id.to_owned());
        }
    }

    /// Device `id` went offline at `ms` (timer clock), or (`None`) came back or was
    /// forgotten; stored with the next commit.
    /// `since` is [`u64::MAX`] for a device online now (offline from a restart on if it does
    /// not come back).
    pub fn set_offline(&mut self, id: &str, since: Option<u64>) {
        let old = match since {
            Some(ms) => self.offline.insert(id.to_owned(), ms),
            None => self.offline.remove(id),
        };
        if old == since {
            return;
        }
        if let Some(old) = old {
            self.offline_by_time.remove(&(old, id.to_owned()));
        }
        if let Some(ms) = since.filter(|&ms| ms != u64::MAX) {
            self.offline_by_time.insert((ms, id.to_owned()));
        }
        self.pending.offline.push((id.to_owned(), since));
    }

    /// Devices known, with the time they went offline (timer clock ms; [`u64::MAX`]: online).
    pub fn offline(&self) -> &BTreeMap<String, u64> {
        &self.offline
    }

    /// The device offline the longest, with the time it went.
    pub fn longest_offline(&self) -> Option<(u64, &str)> {
        self.offline_by_time
            .first()
            .map(|(ms, id)| (*ms, id.as_str()))
    }

    /// Records that the retained document of capability `name` is on the broker (`true`) or
    /// was cleared (`false`); stored with the next commit.
    pub fn set_capability_doc(&mut self, name: &str, published: bool) {
        let changed = if published {
            self.capability_docs.insert(name.to_owned())
        } else {
            self.capability_docs.remove(name)
        };
        if changed {
            self.pending.capabilities.push((name.to_owned(), published));
        }
    }

    /// Forgets which outbox entries are the newest of their topic, as a queue written by a
    /// version without that record (tests of the compaction at open).
    #[cfg(test)]
    pub(crate) fn forget_retained_latest(&mut self) {
        self.retained_latest.clear();
    }

    /// Capabilities whose retained document is on the broker, as recorded.
    pub fn capability_docs(&self) -> &BTreeSet<String> {
        &self.capability_docs
    }

    /// Whether anything is staged.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes everything staged in one transaction: durable (fsync) when it holds task
    /// changes or new events, not flushed on its own when it only removes acknowledged
    /// outbox entries (those ride on the next durable commit; losing them in a crash only
    /// publishes the events again, which at-least-once delivery allows).
    pub fn commit(&mut self) -> Result<(), QueueError> {
        if let Some(reason) = self.read_error.borrow_mut().take() {
            return Err(QueueError::Read(reason));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_commit) {
            let injected = std::io::Error::other("commit failed (injected by a test)");
            return Err(QueueError::Db(redb::Error::Io(injected)));
        }
        // Any failure from here may leave the log ahead of the database.
        let result = self.write_batch();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// The body of [`Queue::commit`].
    fn write_batch(&mut self) -> Result<(), QueueError> {
        let mut p = std::mem::take(&mut self.pending);
        // Released by the caller after this commit (`take_unstored`, `take_appended`).
        self.pending.unstored = std::mem::take(&mut p.unstored);
        self.pending.appended = p.outbox.iter().map(|e| e.0).min();
        let counters = Counters {
            seq: self.next_seq,
            outbox: self.next_outbox,
            done: self.next_done,
            generated: self.next_gen,
            anchor: self.anchor.map(|a| (a.clock_ms, a.boot, a.boot_ms)),
        };
        let record = Record {
            tasks: &p.tasks,
            fresh: &p.fresh,
            active: &p.active,
            done: &p.done,
            outbox: &p.outbox,
            published: &p.published,
            proven: &p.proven,
            offline: &p.offline,
            capabilities: &p.capabilities,
            counters,
        };
        // What must survive a crash goes to the log, or, when the log is due a checkpoint, in
        // a durable commit of the database (which covers the log's records before it).
        let logged = if p.must_sync() {
            let bytes = postcard::to_allocvec(&record).map_err(|e| QueueError::Corrupt {
                key: "write-ahead log record".into(),
                reason: e.to_string(),
            })?;
            Some(bytes).filter(|b| self.wal.takes(b.len()))
        } else {
            None
        };
        let checkpoint = p.must_sync() && logged.is_none();
        let mut txn = self.db.begin_write().map_err(db_err)?;
        if !checkpoint {
            txn.set_durability(redb::Durability::None).map_err(db_err)?;
        }
        let removed = write_changes(&txn, &record)?;
        if checkpoint {
            record_checkpoint(&txn, self.wal.last())?;
        }
        // The log first: if its write fails, the transaction is dropped unapplied.
        if let Some(bytes) = &logged {
            self.wal.append(bytes).map_err(|source| QueueError::Wal {
                path: self.wal.path().to_owned(),
                source,
            })?;
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_after_log) {
            let injected = std::io::Error::other("commit failed after its log record (test)");
            return Err(QueueError::Db(redb::Error::Io(injected)));
        }
        txn.commit().map_err(db_err)?;
        if checkpoint {
            self.wal.checkpointed();
        }
        for key in removed {
            self.outbox_depth[class_of(key)] -= 1;
        }
        if let Some(anchor) = self.anchor {
            self.anchor_committed_ms = anchor.clock_ms;
        }
        Ok(())
    }

    /// A durable commit of the database covering every log record so far (nothing else
    /// staged is written): the clean stop's, so the next start replays nothing.
    pub fn checkpoint(&mut self) -> Result<(), QueueError> {
        if self.wal.unchecked() == 0 {
            return Ok(());
        }
        self.write_checkpoint()
    }

    /// A durable commit that only records the log's last record as the checkpoint.
    fn write_checkpoint(&mut self) -> Result<(), QueueError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        record_checkpoint(&txn, self.wal.last())?;
        txn.commit().map_err(db_err)?;
        self.wal.checkpointed();
        Ok(())
    }

    /// At open, when there is nothing to apply: makes the database's checkpoint the log's
    /// last record and `wal_outbox` its `outbox`, before any append. Without it, after a
    /// log was not applied (older than the database, or already in it because redb's close
    /// made the last commits durable) or on a database an earlier version wrote (no
    /// `wal_outbox`), the next records would be numbered past what `meta.wal` says, or the
    /// guard would refuse them: a crash would lose them.
    fn resync_checkpoint(&mut self) -> Result<(), QueueError> {
        let stored = |name: &str| stored_value(&self.db, name);
        if stored(WAL_CHECKPOINT)?.unwrap_or(0) == self.wal.last()
            && stored(WAL_OUTBOX)? == stored("outbox")?
        {
            return Ok(());
        }
        self.write_checkpoint()
    }

    /// Applies the log's records after the last checkpoint (a crash left them), in one
    /// durable commit that is a checkpoint.
    fn replay(&mut self, records: &[Vec<u8>]) -> Result<(), QueueError> {
        tracing::info!(
            records = records.len(),
            "applying the write-ahead log's commits after the last checkpoint"
        );
        let first = self.wal.last() - records.len() as u64 + 1;
        let txn = self.db.begin_write().map_err(db_err)?;
        for (i, bytes) in records.iter().enumerate() {
            let owned: OwnedRecord =
                postcard::from_bytes(bytes).map_err(|e| QueueError::Corrupt {
                    key: format!("write-ahead log record {}", first + i as u64),
                    reason: e.to_string(),
                })?;
            write_changes(&txn, &owned.borrowed())?;
        }
        record_checkpoint(&txn, self.wal.last())?;
        txn.commit().map_err(db_err)?;
        self.wal.checkpointed();
        Ok(())
    }

    /// Up to `max` committed outbox entries with keys of at least `from`, in key order (by
    /// class, then age: [`outbox_key`]), with their keys for [`Queue::published`].
    pub fn outbox_from(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, OutboxEntry)>, QueueError> {
        self.outbox_skipping(from, max, |_| false)
    }

    /// As [`Queue::outbox_from`], passing over the keys for which `skip` holds (those already
    /// offered to the broker) without decoding them.
    pub fn outbox_skipping(
        &self,
        from: u64,
        max: usize,
        skip: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, OutboxEntry)>, QueueError> {
        let read = self.db.begin_read().map_err(db_err)?;
        let outbox = read.open_table(OUTBOX).map_err(db_err)?;
        let mut out = Vec::new();
        for row in outbox.range(from..).map_err(db_err)? {
            if out.len() == max {
                break;
            }
            let (k, v) = row.map_err(db_err)?;
            if skip(k.value()) {
                continue;
            }
            let entry = serde_json::from_slice(v.value()).map_err(|e| QueueError::Corrupt {
                key: format!("outbox {}", k.value()),
                reason: e.to_string(),
            })?;
            out.push((k.value(), entry));
        }
        Ok(out)
    }

    /// Makes the next commit fail (tests of what a failed commit lets out).
    #[cfg(test)]
    pub(crate) fn fail_next_commit(&mut self) {
        self.fail_next_commit = true;
    }

    /// As a failed read of the database does: the lookup answers nothing, and the next commit
    /// fails with it (tests).
    #[cfg(test)]
    pub(crate) fn fail_a_read(&self) {
        *self.read_error.borrow_mut() = Some("a read failed (injected by a test)".into());
    }

    /// Up to `max` committed outbox entries, oldest first.
    pub fn outbox(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>, QueueError> {
        self.outbox_from(0, max)
    }
}

/// A `meta` value of `db` as last committed (`None` before the table exists).
fn stored_value(db: &Database, name: &str) -> Result<Option<u64>, QueueError> {
    let read = db.begin_read().map_err(db_err)?;
    match read.open_table(META) {
        Ok(meta) => Ok(meta.get(name).map_err(db_err)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// Makes `txn` a checkpoint: the database holds the log's records up to `last`, and
/// `wal_outbox` is `outbox` as `txn` leaves it (events staged and not committed have moved
/// `next_outbox`, not the table).
fn record_checkpoint(txn: &redb::WriteTransaction, last: u64) -> Result<(), QueueError> {
    let mut meta = txn.open_table(META).map_err(db_err)?;
    meta.insert(WAL_CHECKPOINT, last).map_err(db_err)?;
    let outbox = meta.get("outbox").map_err(db_err)?.map(|v| v.value());
    if let Some(outbox) = outbox {
        meta.insert(WAL_OUTBOX, outbox).map_err(db_err)?;
    }
    Ok(())
}

impl Drop for Queue {
    /// A clean stop ends with a checkpoint: the next start has no log to apply.
    fn drop(&mut self) {
        if self.poisoned {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "queue: the closing checkpoint failed; the next start applies the write-ahead log");
        }
    }
}

/// A batch of changes as the log stores it, borrowed from [`Pending`].
#[derive(Serialize)]
struct Record<'a> {
    tasks: &'a HashMap<String, Option<String>>,
    fresh: &'a HashMap<u64, Option<Vec<u8>>>,
    active: &'a HashMap<String, bool>,
    done: &'a [(u64, String, String)],
    outbox: &'a [(u64, String)],
    published: &'a [u64],
    proven: &'a [String],
    offline: &'a [(String, Option<u64>)],
    capabilities: &'a [(String, bool)],
    counters: Counters,
}

/// A [`Record`] read back from the log.
#[derive(Deserialize)]
struct OwnedRecord {
    tasks: HashMap<String, Option<String>>,
    fresh: HashMap<u64, Option<Vec<u8>>>,
    active: HashMap<String, bool>,
    done: Vec<(u64, String, String)>,
    outbox: Vec<(u64, String)>,
    published: Vec<u64>,
    proven: Vec<String>,
    offline: Vec<(String, Option<u64>)>,
    capabilities: Vec<(String, bool)>,
    counters: Counters,
}

impl OwnedRecord {
    fn borrowed(&self) -> Record<'_> {
        Record {
            tasks: &self.tasks,
            fresh: &self.fresh,
            active: &self.active,
            done: &self.done,
            outbox: &self.outbox,
            published: &self.published,
            proven: &self.proven,
            offline: &self.offline,
            capabilities: &self.capabilities,
            counters: self.counters,
        }
    }
}

/// The queue's counters and the timer clock's anchor (`clock_ms`, `boot`, `boot_ms`) as of a
/// batch, stored in `meta` with it.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Counters {
    seq: u64,
    outbox: u64,
    done: u64,
    generated: u64,
    anchor: Option<(u64, u64, u64)>,
}

/// Writes a batch into `txn`: the commit's, and the log's replay. Every write sets or deletes
/// a row (the oldest final events beyond `DONE_KEPT` aside, which are the oldest again), so
/// applying a batch the database already holds changes nothing. Returns the outbox keys it
/// deleted.
fn write_changes(txn: &redb::WriteTransaction, r: &Record<'_>) -> Result<Vec<u64>, QueueError> {
    let mut removed = Vec::new();
    let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
    for (id, row) in r.tasks {
        match row {
            Some(json) => tasks.insert(id.as_str(), json.as_bytes()).map(drop),
            None => tasks.remove(id.as_str()).map(drop),
        }
        .map_err(db_err)?;
    }
    let mut fresh = txn.open_table(FRESH).map_err(db_err)?;
    for (seq, row) in r.fresh {
        match row {
            Some(row) => fresh.insert(*seq, row.as_slice()).map(drop),
            None => fresh.remove(*seq).map(drop),
        }
        .map_err(db_err)?;
    }
    let mut active = txn.open_table(ACTIVE).map_err(db_err)?;
    for (id, is) in r.active {
        if *is {
            active.insert(id.as_str(), NOTHING).map(drop)
        } else {
            active.remove(id.as_str()).map(drop)
        }
        .map_err(db_err)?;
    }
    let mut done = txn.open_table(DONE).map_err(db_err)?;
    let mut done_order = txn.open_table(DONE_ORDER).map_err(db_err)?;
    for (n, id, event) in r.done {
        done.insert(id.as_str(), event.as_bytes()).map_err(db_err)?;
        done_order.insert(*n, id.as_bytes()).map_err(db_err)?;
    }
    // Forget the oldest final events beyond DONE_KEPT.
    if !r.done.is_empty() {
        let kept = done_order.len().map_err(db_err)?;
        for _ in DONE_KEPT..kept {
            let Some((_, old)) = done_order.pop_first().map_err(db_err)? else {
                break;
            };
            let old = String::from_utf8_lossy(old.value()).into_owned();
            done.remove(old.as_str()).map_err(db_err)?;
        }
    }
    let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
    for (key, entry) in r.outbox {
        outbox.insert(*key, entry.as_bytes()).map_err(db_err)?;
    }
    for key in r.published {
        if outbox.remove(key).map_err(db_err)?.is_some() {
            removed.push(*key);
        }
    }
    let mut meta = txn.open_table(META).map_err(db_err)?;
    meta.insert("seq", r.counters.seq).map_err(db_err)?;
    meta.insert("outbox", r.counters.outbox).map_err(db_err)?;
    meta.insert(INDEXED, r.counters.outbox).map_err(db_err)?;
    meta.insert("done", r.counters.done).map_err(db_err)?;
    meta.insert("gen", r.counters.generated).map_err(db_err)?;
    for id in r.proven {
        meta.insert(format!("{PROVEN_PREFIX}{id}").as_str(), 1)
            .map_err(db_err)?;
    }
    for (id, since) in r.offline {
        let key = format!("{OFFLINE_PREFIX}{id}");
        match since {
            Some(ms) => meta.insert(key.as_str(), ms).map(drop),
            None => meta.remove(key.as_str()).map(drop),
        }
        .map_err(db_err)?;
    }
    for (name, published) in r.capabilities {
        let key = format!("{CAPABILITY_PREFIX}{name}");
        if *published {
            meta.insert(key.as_str(), 1).map(drop)
        } else {
            meta.remove(key.as_str()).map(drop)
        }
        .map_err(db_err)?;
    }
    if let Some((clock_ms, boot, boot_ms)) = r.counters.anchor {
        meta.insert("clock_ms", clock_ms).map_err(db_err)?;
        meta.insert("clock_boot", boot).map_err(db_err)?;
        meta.insert("clock_boot_ms", boot_ms).map_err(db_err)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
mod wal;
