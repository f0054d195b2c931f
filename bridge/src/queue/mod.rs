//! The durable task queue, on redb.
//!
//! The database is the truth; live tasks are mirrored in memory so dispatch never reads the
//! disk. Every method is one write transaction over a whole batch (group commit): callers
//! collect what arrived and commit it at once, so durability does not cap throughput.
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
//!
//! # Layout of the database
//! | table | key | value |
//! |---|---|---|
//! | `tasks` | task id | live [`TaskRecord`] (JSON) |
//! | `done` | task id | final [`StatusEvent`] (JSON) |
//! | `done_order` | finish sequence | task id, to forget the oldest beyond `DONE_KEPT` |
//! | `outbox` | event sequence | [`OutboxEntry`] (JSON) |
//! | `meta` | name | counter |

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ErrorCode, StatusEvent, Submission, TaskState};

const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");
const DONE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("done");
const DONE_ORDER: TableDefinition<'_, u64, &str> = TableDefinition::new("done_order");
const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Page cache of the queue database.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Final events kept to answer duplicates of finished tasks.
pub const DONE_KEPT: u64 = 100_000;

/// Errors of the queue layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The database could not be opened, read or written.
    #[error("queue database: {0}")]
    Db(String),
    /// A stored record does not decode: the file was written by an incompatible version or
    /// damaged.
    #[error("queue record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

fn db_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Db(e.to_string())
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
    /// Wall-clock ms of acceptance.
    pub submitted_ms: u64,
    /// Wall-clock ms by which the task must have started.
    pub deadline_at_ms: Option<u64>,
    /// Not dispatched again before this wall-clock ms (retry backoff).
    pub not_before_ms: u64,
}

impl TaskRecord {
    /// The handle this task has on devices: unique among the last 2^32 tasks.
    pub fn handle(&self) -> u32 {
        self.seq as u32
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
    fn status(e: &StatusEvent) -> Self {
        Self {
            subtopic: format!("tasks/{}/status", e.id),
            payload: json(e),
            retain: false,
        }
    }
}

/// Appends `entry` to the outbox under key `next`, and advances `next`.
fn append(
    outbox: &mut redb::Table<'_, u64, &[u8]>,
    next: &mut u64,
    entry: &OutboxEntry,
) -> Result<(), QueueError> {
    outbox
        .insert(*next, json(entry).as_bytes())
        .map_err(db_err)?;
    *next += 1;
    Ok(())
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
    /// Refused (queue full); the `rejected` event is in the outbox.
    Rejected(ErrorCode),
}

/// A change to a live task, applied in a batch by [`Queue::apply`].
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Handed to a device (a new attempt).
    Dispatched { id: String, device: String },
    /// The device started it.
    Running { id: String },
    /// Back to the queue, not before `not_before_ms` (a lost device, a retryable failure).
    Requeue { id: String, not_before_ms: u64 },
    /// Finished: `state` is terminal.
    Finished {
        id: String,
        state: TaskState,
        result: Option<serde_json::Value>,
        error: Option<ApiError>,
    },
}

/// The durable queue.
#[derive(Debug)]
pub struct Queue {
    db: Database,
    limit: u64,
    /// Live tasks, mirrored from `tasks`.
    live: HashMap<String, TaskRecord>,
    /// Queued tasks in dispatch order.
    ready: BTreeSet<((u8, u64, u64), String)>,
    /// Live tasks by device handle (unique per task), so a device's report finds its task
    /// from durable state alone, also right after a restart.
    by_handle: HashMap<u32, String>,
    next_seq: u64,
    next_outbox: u64,
    next_done: u64,
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, loading the live tasks. Tasks that were on a
    /// device when the bridge stopped go back to the queue (the device's dedup makes the
    /// replay harmless).
    pub fn open(dir: &Path, limit: u64) -> Result<Self, QueueError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| QueueError::Db(format!("{}: {e}", dir.display())))?;
        // redb's page cache may grow to 1 GiB by default; gateways have 256 MB to 2 GB of RAM.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("queue.redb"))
            .map_err(db_err)?;
        let mut q = Self {
            db,
            limit,
            live: HashMap::new(),
            ready: BTreeSet::new(),
            by_handle: HashMap::new(),
            next_seq: 1,
            next_outbox: 1,
            next_done: 1,
        };
        // Create every table, so reads never meet a missing one.
        let txn = q.db.begin_write().map_err(db_err)?;
        txn.open_table(TASKS).map_err(db_err)?;
        txn.open_table(DONE).map_err(db_err)?;
        txn.open_table(OUTBOX).map_err(db_err)?;
        txn.open_table(DONE_ORDER).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;

        let read = q.db.begin_read().map_err(db_err)?;
        let meta = read.open_table(META).map_err(db_err)?;
        let counter = |name: &str| -> Result<u64, QueueError> {
            Ok(meta.get(name).map_err(db_err)?.map_or(1, |v| v.value()))
        };
        q.next_seq = counter("seq")?;
        q.next_outbox = counter("outbox")?;
        q.next_done = counter("done")?;
        let tasks = read.open_table(TASKS).map_err(db_err)?;
        for row in tasks.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let mut rec: TaskRecord =
                serde_json::from_slice(v.value()).map_err(|e| QueueError::Corrupt {
                    key: k.value().to_owned(),
                    reason: e.to_string(),
                })?;
            if rec.state != TaskState::Queued {
                // Was on a device: dispatch again (same handle, so the device answers from
                // its dedup table if it already ran it).
                rec.state = TaskState::Queued;
            }
            q.ready.insert((rec.order_key(), rec.sub.id.clone()));
            q.by_handle.insert(rec.handle(), rec.sub.id.clone());
            q.live.insert(rec.sub.id.clone(), rec);
        }
        Ok(q)
    }

    /// Live tasks (queued or on a device).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// A live task.
    pub fn get(&self, id: &str) -> Option<&TaskRecord> {
        self.live.get(id)
    }

    /// The live task with this device handle.
    pub fn by_handle(&self, handle: u32) -> Option<&TaskRecord> {
        self.by_handle.get(&handle).and_then(|id| self.live.get(id))
    }

    /// Queued tasks in dispatch order (priority, deadline, admission).
    pub fn ready(&self) -> impl Iterator<Item = &TaskRecord> {
        self.ready.iter().filter_map(|(_, id)| self.live.get(id))
    }

    /// Live tasks on a device.
    pub fn on_device<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.live
            .values()
            .filter(move |t| t.state != TaskState::Queued && t.device.as_deref() == Some(device))
    }

    /// Stores a batch of submissions in one transaction, each with its event in the outbox.
    pub fn submit(
        &mut self,
        batch: Vec<Submission>,
        now_ms: u64,
    ) -> Result<Vec<Admission>, QueueError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut added = Vec::new();
        {
            let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
            let done = txn.open_table(DONE).map_err(db_err)?;
            let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
            let mut next_outbox = self.next_outbox;
            let mut push = |e: &OutboxEntry| append(&mut outbox, &mut next_outbox, e);
            let mut live = self.live.len() as u64;
            let mut seq = self.next_seq;
            for sub in batch {
                let known = self
                    .live
                    .get(&sub.id)
                    .or_else(|| added.iter().find(|r: &&TaskRecord| r.sub.id == sub.id));
                if let Some(rec) = known {
                    push(&OutboxEntry::status(&rec.event(rec.state, now_ms)))?;
                    outcomes.push(Admission::Duplicate(rec.state));
                    continue;
                }
                if let Some(fin) = done.get(sub.id.as_str()).map_err(db_err)? {
                    let event: StatusEvent =
                        serde_json::from_slice(fin.value()).map_err(|e| QueueError::Corrupt {
                            key: sub.id.clone(),
                            reason: e.to_string(),
                        })?;
                    push(&OutboxEntry::status(&event))?;
                    outcomes.push(Admission::Duplicate(event.state));
                    continue;
                }
                if live >= self.limit {
                    let event = StatusEvent {
                        id: sub.id.clone(),
                        state: TaskState::Rejected,
                        device: None,
                        attempt: 0,
                        trace_id: sub.trace_id.clone(),
                        ts_ms: now_ms,
                        result: None,
                        error: Some(ApiError::new(
                            ErrorCode::QueueFull,
                            format!(
                                "the queue holds its limit of {} tasks; resubmit later",
                                self.limit
                            ),
                        )),
                    };
                    push(&OutboxEntry::status(&event))?;
                    outcomes.push(Admission::Rejected(ErrorCode::QueueFull));
                    continue;
                }
                let deadline_at_ms = sub.deadline_ms.map(|d| now_ms.saturating_add(d));
                let rec = TaskRecord {
                    seq,
                    sub,
                    state: TaskState::Queued,
                    device: None,
                    attempt: 0,
                    submitted_ms: now_ms,
                    deadline_at_ms,
                    not_before_ms: 0,
                };
                seq += 1;
                live += 1;
                tasks
                    .insert(rec.sub.id.as_str(), json(&rec).as_bytes())
                    .map_err(db_err)?;
                push(&OutboxEntry::status(&rec.event(TaskState::Queued, now_ms)))?;
                outcomes.push(Admission::Queued);
                added.push(rec);
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert("seq", seq).map_err(db_err)?;
            meta.insert("outbox", next_outbox).map_err(db_err)?;
            self.next_seq = seq;
            self.next_outbox = next_outbox;
        }
        txn.commit().map_err(db_err)?;
        for rec in added {
            self.ready.insert((rec.order_key(), rec.sub.id.clone()));
            self.by_handle.insert(rec.handle(), rec.sub.id.clone());
            self.live.insert(rec.sub.id.clone(), rec);
        }
        Ok(outcomes)
    }

    /// Publishes an event that belongs to no stored task (a submission that could not be
    /// parsed, or was rejected before it had an id): it still goes through the outbox, so it
    /// survives a broker outage.
    pub fn notify(&mut self, entry: OutboxEntry) -> Result<(), QueueError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
            let mut next = self.next_outbox;
            append(&mut outbox, &mut next, &entry)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert("outbox", next).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.next_outbox += 1;
        Ok(())
    }

    /// Applies a batch of changes to live tasks in one transaction, each with its event.
    /// Changes to unknown (or already finished) ids are skipped and returned.
    pub fn apply(&mut self, batch: Vec<Change>, now_ms: u64) -> Result<Vec<Change>, QueueError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let mut skipped = Vec::new();
        // (id, new record or None when finished)
        let mut updates: Vec<(String, Option<TaskRecord>)> = Vec::new();
        {
            let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
            let mut done = txn.open_table(DONE).map_err(db_err)?;
            let mut done_order = txn.open_table(DONE_ORDER).map_err(db_err)?;
            let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
            let mut next_outbox = self.next_outbox;
            let mut next_done = self.next_done;
            for change in batch {
                let id = match &change {
                    Change::Dispatched { id, .. }
                    | Change::Running { id }
                    | Change::Requeue { id, .. }
                    | Change::Finished { id, .. } => id.clone(),
                };
                let current = updates
                    .iter()
                    .rev()
                    .find(|(i, _)| *i == id)
                    .map(|(_, r)| r.clone());
                let Some(mut rec) = current.unwrap_or_else(|| self.live.get(&id).cloned()) else {
                    skipped.push(change);
                    continue;
                };
                let event = match change {
                    Change::Dispatched { device, .. } => {
                        rec.state = TaskState::Dispatched;
                        rec.device = Some(device);
                        rec.attempt += 1;
                        Some(rec.event(TaskState::Dispatched, now_ms))
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
                    Change::Finished {
                        state,
                        result,
                        error,
                        ..
                    } => {
                        let mut e = rec.event(state, now_ms);
                        e.result = result;
                        e.error = error;
                        tasks.remove(id.as_str()).map_err(db_err)?;
                        done.insert(id.as_str(), json(&e).as_bytes())
                            .map_err(db_err)?;
                        done_order.insert(next_done, id.as_str()).map_err(db_err)?;
                        next_done += 1;
                        append(&mut outbox, &mut next_outbox, &OutboxEntry::status(&e))?;
                        updates.push((id, None));
                        continue;
                    }
                };
                tasks
                    .insert(id.as_str(), json(&rec).as_bytes())
                    .map_err(db_err)?;
                if let Some(e) = event {
                    append(&mut outbox, &mut next_outbox, &OutboxEntry::status(&e))?;
                }
                updates.push((id, Some(rec)));
            }
            // Forget the oldest final events beyond DONE_KEPT.
            let kept = done_order.len().map_err(db_err)?;
            for _ in DONE_KEPT..kept {
                let Some((_, old)) = done_order.pop_first().map_err(db_err)? else {
                    break;
                };
                let old = old.value().to_owned();
                done.remove(old.as_str()).map_err(db_err)?;
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            meta.insert("outbox", next_outbox).map_err(db_err)?;
            meta.insert("done", next_done).map_err(db_err)?;
            self.next_outbox = next_outbox;
            self.next_done = next_done;
        }
        txn.commit().map_err(db_err)?;
        for (id, rec) in updates {
            if let Some(old) = self.live.get(&id) {
                self.ready.remove(&(old.order_key(), id.clone()));
            }
            match rec {
                Some(rec) => {
                    if rec.state == TaskState::Queued {
                        self.ready.insert((rec.order_key(), id.clone()));
                    }
                    self.live.insert(id, rec);
                }
                None => {
                    if let Some(old) = self.live.remove(&id) {
                        self.by_handle.remove(&old.handle());
                    }
                }
            }
        }
        Ok(skipped)
    }

    /// Up to `max` outbox entries, oldest first, with their keys for [`Queue::published`].
    pub fn outbox(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>, QueueError> {
        let read = self.db.begin_read().map_err(db_err)?;
        let outbox = read.open_table(OUTBOX).map_err(db_err)?;
        let mut out = Vec::new();
        for row in outbox.iter().map_err(db_err)?.take(max) {
            let (k, v) = row.map_err(db_err)?;
            let entry = serde_json::from_slice(v.value()).map_err(|e| QueueError::Corrupt {
                key: format!("outbox {}", k.value()),
                reason: e.to_string(),
            })?;
            out.push((k.value(), entry));
        }
        Ok(out)
    }

    /// Removes outbox entries the broker has acknowledged. Not flushed to disk on its own
    /// (it rides on the next durable commit): losing it in a crash only publishes those
    /// events again, which at-least-once delivery allows, and it saves an fsync per event.
    pub fn published(&mut self, keys: &[u64]) -> Result<(), QueueError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(redb::Durability::None).map_err(db_err)?;
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
            for k in keys {
                outbox.remove(k).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests;
