//! The bridge engine: one task that owns the queue and the registry of online devices.
//!
//! It turns inputs — submissions and cancels from MQTT, events from device links, timers —
//! into committed queue changes, dispatch decisions and commands to links. Everything that
//! changes a task is committed before anyone is told: the MQTT driver acknowledges a
//! submission (PUBACK) only after the commit that made it `queued`, and a link acknowledges
//! a device's report only after the commit that recorded it.
//!
//! Submissions are handled in batches (whatever arrived while the last commit ran), so the
//! queue commits in groups.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use device_core::proto::{
    Assign, Cancel, Hello, MAX_TASK_LOCKS, RejectReason, Report, TRANSIENT_ERROR, TaskReport,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::api::{self, ApiError, ErrorCode, ErrorEvent, TaskState};
use crate::dispatch::{self, Decision, DeviceView};
use crate::link::{LinkCommand, LinkEvent, LinkId};
use crate::queue::{Admission, Change, OutboxEntry, Queue, QueueError, TaskRecord};

/// Wall-clock milliseconds since the Unix epoch (timestamps in events, deadlines).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Inputs from the MQTT side.
#[derive(Debug)]
pub enum ApiInput {
    /// A message on `{root}/tasks/submit`. `accepted` is answered after the commit; only then
    /// may the MQTT message be acknowledged.
    Submit {
        payload: Vec<u8>,
        accepted: oneshot::Sender<()>,
    },
    /// A message on `{root}/tasks/{id}/cancel`.
    Cancel {
        id: String,
        done: oneshot::Sender<()>,
    },
}

/// Retry policy for tasks whose attempt ended without a result.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Retry {
    /// Delay before attempt `attempt + 1`: doubling from `initial`, capped at `max`, with up
    /// to 25 % jitter so that devices reconnecting together do not retry in lockstep.
    fn delay(&self, attempt: u32, jitter_seed: u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        let jitter = base.as_millis() as u64 / 4;
        base + Duration::from_millis(if jitter == 0 { 0 } else { jitter_seed % jitter })
    }
}

/// An online device.
#[derive(Debug)]
struct Online {
    link: LinkId,
    hello: Hello,
    credit: u32,
    commands: mpsc::Sender<LinkCommand>,
}

/// The core's state.
pub struct Engine {
    queue: Queue,
    retry: Retry,
    devices: BTreeMap<String, Online>,
    links: HashMap<LinkId, String>,

    /// Woken whenever the outbox has new entries.
    outbox_ready: tokio::sync::Notify,
    /// Held back until the next commit: answers that let MQTT messages or device reports
    /// be acknowledged, and commands to links.
    replies: Vec<oneshot::Sender<()>>,
    sends: Vec<(mpsc::Sender<LinkCommand>, LinkCommand)>,
    /// Counter for generated ids and jitter.
    counter: u64,
    /// Statistics: tasks that expired before they could start.
    pub expired: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("live", &self.queue.len())
            .field("devices", &self.devices.len())
            .finish()
    }
}

impl Engine {
    pub fn new(queue: Queue, retry: Retry) -> Self {
        Self {
            queue,
            retry,
            devices: BTreeMap::new(),
            links: HashMap::new(),

            outbox_ready: tokio::sync::Notify::new(),
            replies: Vec::new(),
            sends: Vec::new(),
            counter: wall_ms(),
            expired: 0,
        }
    }

    /// The queue (for the outbox publisher and statistics).
    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Notified when the outbox has something new.
    pub fn outbox_ready(&self) -> &tokio::sync::Notify {
        &self.outbox_ready
    }

    /// The retained `{root}/bridge/stats` document: queue depth per priority, devices with
    /// their free slots and tasks in flight, tasks that expired.
    pub fn stats_json(&self) -> String {
        let depth = self.queue.depth();
        let devices: serde_json::Map<String, Value> = self
            .devices
            .iter()
            .map(|(id, o)| {
                let in_flight = self.queue.in_flight(id);
                (id.clone(), serde_json::json!({ "free_slots": o.credit, "in_flight": in_flight, "slots": o.hello.slots }))
            })
            .collect();
        serde_json::json!({
            "queued": { "P0": depth[0], "P1": depth[1], "P2": depth[2], "P3": depth[3], "P4": depth[4], "P5": depth[5] },
            "live": self.queue.len(),
            "devices": devices,
            "expired": self.expired,
            "ts_ms": wall_ms(),
        })
        .to_string()
    }

    fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("gen-{:x}", self.counter)
    }

    /// Handles a batch of submissions; each `accepted` is answered after the next commit.
    pub fn submit_batch(
        &mut self,
        batch: Vec<(Vec<u8>, oneshot::Sender<()>)>,
    ) -> Result<(), QueueError> {
        let now = wall_ms();
        let mut subs = Vec::new();
        for (payload, accepted) in batch {
            match api::parse_submission(&payload, || self.next_id()) {
                Ok(s) => subs.push(s),
                Err(rejection) => self.queue.notify(rejection_entry(rejection, &payload, now)),
            }
            self.replies.push(accepted);
        }
        if !subs.is_empty() {
            let outcomes = self.queue.submit(subs, now)?;
            for o in outcomes {
                if let Admission::Rejected(code) = o {
                    tracing::warn!(?code, "submission rejected");
                }
            }
        }
        Ok(())
    }

    /// Cancels a task in any non-terminal state; `done` is answered after the next commit.
    /// A task on a device is cancelled there too (after the commit); if the device finishes
    /// it first, its report finds the task settled and changes nothing.
    pub fn cancel(&mut self, id: &str, done: oneshot::Sender<()>) {
        self.replies.push(done);
        let Some(task) = self.queue.get(id) else {
            tracing::info!(id, "cancel for an unknown or finished task ignored");
            return;
        };
        if task.state != TaskState::Queued {
            if let Some(online) = task.device.as_ref().and_then(|d| self.devices.get(d)) {
                let cancel = LinkCommand::Cancel(Cancel {
                    handle: task.handle(),
                });
                self.sends.push((online.commands.clone(), cancel));
            }
        }
        let change = Change::Finished {
            id: id.to_owned(),
            state: TaskState::Cancelled,
            result: None,
            error: Some(ApiError::new(ErrorCode::Cancelled, "cancelled on request")),
        };
        self.queue.apply(vec![change], wall_ms());
    }

    /// Handles a batch of link events; their `committed` channels are answered after the
    /// next commit (group commit: a device's reports wait for one fsync per batch, not one
    /// each).
    pub fn on_links(&mut self, events: Vec<LinkEvent>) {
        for event in events {
            match event {
                LinkEvent::Report {
                    link,
                    report,
                    committed,
                } => {
                    let change = self.report_change(link, report);
                    self.queue.apply(change.into_iter().collect(), wall_ms());
                    self.replies.push(committed);
                }
                LinkEvent::Reject {
                    link,
                    reject,
                    committed,
                } => {
                    let change = self.reject_change(link, reject);
                    self.queue.apply(change.into_iter().collect(), wall_ms());
                    self.replies.push(committed);
                }
                LinkEvent::Credit { link, credit } => {
                    if let Some(online) =
                        self.links.get(&link).and_then(|d| self.devices.get_mut(d))
                    {
                        online.credit = u32::from(credit);
                    }
                }
                LinkEvent::Refused { link, handle } => {
                    if let Some((id, _)) = self.task_of(link, handle) {
                        let now = wall_ms();
                        let requeue = Change::Requeue {
                            id,
                            not_before_ms: now,
                        };
                        self.queue.apply(vec![requeue], now);
                    }
                }
                LinkEvent::Up {
                    link,
                    peer,
                    hello,
                    rebooted,
                    credit,
                    commands,
                } => self.device_up(link, peer, hello, rebooted, credit, commands),
                LinkEvent::Down { link, reason } => self.device_down(link, &reason),
            }
        }
    }

    /// Commits everything staged, then lets out what waited for it: acknowledgements of
    /// MQTT messages and device reports, and commands to links.
    pub fn commit(&mut self) -> Result<(), QueueError> {
        if self.queue.has_pending() {
            self.queue.commit()?;
            self.outbox_ready.notify_one();
        }
        for reply in self.replies.drain(..) {
            let _ = reply.send(());
        }
        for (link, command) in self.sends.drain(..) {
            if let Err(e) = link.try_send(command) {
                // The link is gone or its queue is full: a lost Assign is dispatched again
                // when the link ends, a lost Cancel leaves a result nobody waits for.
                tracing::warn!(error = %e, "link command not delivered");
            }
        }
        Ok(())
    }

    /// A device opened a session on `link`.
    fn device_up(
        &mut self,
        link: LinkId,
        peer: String,
        hello: Hello,
        rebooted: bool,
        credit: u8,
        commands: mpsc::Sender<LinkCommand>,
    ) {
        let id = hello.device_id.to_string();
        // A link carries one device at a time: a session for another id on it (a serial
        // port whose device was swapped) ends the previous device's.
        if let Some(previous) = self.links.get(&link).filter(|d| **d != id).cloned() {
            tracing::info!(device = %previous, link, by = %id, "another device took over the link");
            self.device_down(link, &format!("{id} opened a session on its link"));
        }
        if let Some(old) = self.devices.remove(&id) {
            if old.link == link {
                // A new session on the same link (a device that restarted behind a serial
                // port, or handshook again after the bridge went silent): the link stays.
                tracing::info!(device = %id, link, "device started a new session on its link");
            } else {
                tracing::info!(device = %id, old_link = old.link, "device reconnected; closing its previous link");
                let _ = old.commands.try_send(LinkCommand::Close);
            }
            self.links.remove(&old.link);
        }
        tracing::info!(device = %id, %peer, rebooted, credit, caps = ?hello.capabilities, locks = ?hello.locks, "device online");
        // Whatever this device was running is dispatched again: replays are answered
        // by its dedup table within a boot, and re-run after a reboot.
        let now = wall_ms();
        let stranded: Vec<Change> = self
            .queue
            .on_device(&id)
            .map(|t| Change::Requeue {
                id: t.sub.id.clone(),
                not_before_ms: now,
            })
            .collect();
        self.queue.apply(stranded, now);
        self.queue.notify(device_document(
            &id,
            Some(&hello),
            true,
            &format!("connected from {peer}"),
            now,
        ));
        self.links.insert(link, id.clone());
        self.devices.insert(
            id,
            Online {
                link,
                hello,
                credit: u32::from(credit),
                commands,
            },
        );
    }

    /// The connection of `link` ended.
    fn device_down(&mut self, link: LinkId, reason: &str) {
        if let Some(device) = self.links.remove(&link) {
            if self.devices.get(&device).is_some_and(|o| o.link == link) {
                let old = self.devices.remove(&device);
                tracing::info!(%device, %reason, "device offline");
                let doc = device_document(
                    &device,
                    old.as_ref().map(|o| &o.hello),
                    false,
                    reason,
                    wall_ms(),
                );
                self.queue.notify(doc);
                self.requeue_from(&device);
            }
        }
    }

    /// Tasks of a device that went away start another attempt after the retry delay, or
    /// fail when attempts are exhausted.
    fn requeue_from(&mut self, device: &str) {
        let now = wall_ms();
        let mut changes = Vec::new();
        for t in self.queue.on_device(device) {
            self.counter += 1;
            changes.push(self.retry_change(t, now, self.counter, "device disconnected"));
        }
        self.queue.apply(changes, now);
    }

    fn retry_change(&self, t: &TaskRecord, now: u64, seed: u64, why: &str) -> Change {
        if t.attempt >= self.retry.max_attempts {
            Change::Finished {
                id: t.sub.id.clone(),
                state: TaskState::Failed,
                result: None,
                error: Some(ApiError::new(
                    ErrorCode::AttemptsExhausted,
                    format!("{why}; {} attempts made", t.attempt),
                )),
            }
        } else {
            let delay = self.retry.delay(t.attempt, seed);
            Change::Requeue {
                id: t.sub.id.clone(),
                not_before_ms: now + delay.as_millis() as u64,
            }
        }
    }

    /// The live task a device's message about `handle` is about: the task with that handle
    /// (unique), last dispatched to this device. Found from durable state, so reports that
    /// arrive after a bridge restart still settle their tasks.
    fn task_of(&self, link: LinkId, handle: u32) -> Option<(String, String)> {
        let device = self.links.get(&link)?;
        let task = self
            .queue
            .by_handle(handle)
            .filter(|t| t.device.as_deref() == Some(device.as_str()))?;
        Some((task.sub.id.clone(), device.clone()))
    }

    /// What a device's refusal does to its task.
    fn reject_change(
        &mut self,
        link: LinkId,
        reject: device_core::proto::Reject,
    ) -> Option<Change> {
        let (id, device) = self.task_of(link, reject.handle?)?;
        Some(match reject.reason {
            RejectReason::NoFreeSlot => Change::Requeue {
                id,
                not_before_ms: wall_ms(),
            },
            reason => Change::Finished {
                id,
                state: TaskState::Rejected,
                result: None,
                error: Some(ApiError::new(
                    ErrorCode::DeviceRejected,
                    format!("device {device}: {reason}"),
                )),
            },
        })
    }

    /// What a device's report does to its task.
    fn report_change(&mut self, link: LinkId, report: Report) -> Option<Change> {
        let Some((id, device)) = self.task_of(link, report.handle) else {
            tracing::debug!(
                link,
                handle = report.handle,
                "report for a handle already settled"
            );
            return None;
        };
        let change = match report.state {
            TaskReport::Running => Change::Running { id },
            TaskReport::Completed => {
                let text = String::from_utf8_lossy(&report.result);
                // Results are JSON when the device wrote JSON, a string otherwise.
                let result = serde_json::from_str::<Value>(&text)
                    .unwrap_or(Value::String(text.into_owned()));
                Change::Finished {
                    id,
                    state: TaskState::Completed,
                    result: Some(result),
                    error: None,
                }
            }
            TaskReport::Failed => {
                let code = report.error.unwrap_or(0);
                if code >= TRANSIENT_ERROR {
                    self.counter += 1;
                    let task = self.queue.get(&id)?;
                    let why = format!("device {device} failed with transient code {code:#06x}");
                    tracing::info!(%id, attempt = task.attempt, %why, "retrying");
                    return Some(
                        match self.retry_change(task, wall_ms(), self.counter, &why) {
                            Change::Requeue { id, not_before_ms } => {
                                Change::Retry { id, not_before_ms }
                            }
                            finished => finished,
                        },
                    );
                }
                Change::Finished {
                    id,
                    state: TaskState::Failed,
                    result: None,
                    error: Some(ApiError::new(
                        ErrorCode::DeviceFailed,
                        format!("device {device} failed with code {code}"),
                    )),
                }
            }
            TaskReport::Expired => {
                self.expired += 1;
                Change::Finished {
                    id,
                    state: TaskState::Expired,
                    result: None,
                    error: Some(ApiError::new(
                        ErrorCode::DeadlineExpired,
                        "the deadline passed before the device could start it",
                    )),
                }
            }
            TaskReport::Cancelled => Change::Finished {
                id,
                state: TaskState::Cancelled,
                result: None,
                error: Some(ApiError::new(ErrorCode::Cancelled, "cancelled")),
            },
        };
        Some(change)
    }

    /// Expires overdue tasks and dispatches what can be dispatched now (staged; the
    /// `Assign`s go out after the next commit). Returns the earliest time worth looking again
    /// (a retry delay or a deadline), if any.
    pub fn dispatch(&mut self) -> Option<u64> {
        let now = wall_ms();
        let overdue: Vec<Change> = self
            .queue
            .overdue(now)
            .map(|id| Change::Finished {
                id: id.to_owned(),
                state: TaskState::Expired,
                result: None,
                error: Some(ApiError::new(
                    ErrorCode::DeadlineExpired,
                    "the deadline passed while the task waited",
                )),
            })
            .collect();
        self.expired += overdue.len() as u64;
        self.queue.apply(overdue, now);

        if self.devices.values().any(|o| o.credit > 0) {
            let views: BTreeMap<String, DeviceView> = self
                .devices
                .iter()
                .map(|(id, o)| {
                    let view = DeviceView {
                        capabilities: o.hello.capabilities.iter().map(|c| c.to_string()).collect(),
                        credit: o.credit,
                        in_flight: self.queue.in_flight(id) as u32,
                        max_payload: usize::from(o.hello.max_payload),
                        locks: o.hello.locks.iter().map(|l| l.to_string()).collect(),
                    };
                    (id.clone(), view)
                })
                .collect();
            let decisions = dispatch::plan(self.queue.lanes(), &views, now);
            let mut changes = Vec::with_capacity(decisions.len());
            for d in decisions {
                match d {
                    Decision::TooLarge { id, device, max } => changes.push(Change::Finished {
                        id,
                        state: TaskState::Rejected,
                        result: None,
                        error: Some(ApiError::new(
                            ErrorCode::PayloadTooLarge,
                            format!("device {device} takes payloads of at most {max} bytes"),
                        )),
                    }),
                    Decision::MissingLock { id, device, lock } => {
                        let hello = self.devices.get(&device).map(|o| &o.hello);
                        changes.push(Change::Finished {
                            id,
                            state: TaskState::Rejected,
                            result: None,
                            error: Some(no_such_lock(&device, &lock, hello)),
                        });
                    }
                    Decision::Assign { id, device } => {
                        let Some(task) = self.queue.get(&id) else {
                            continue;
                        };
                        let Some(online) = self.devices.get_mut(&device) else {
                            continue;
                        };
                        match assign_for(task, &online.hello, now) {
                            Ok(assign) => {
                                online.credit = online.credit.saturating_sub(1);
                                let command = LinkCommand::Assign(Box::new(assign));
                                self.sends.push((online.commands.clone(), command));
                                changes.push(Change::Dispatched { id, device });
                            }
                            Err(error) => changes.push(Change::Finished {
                                id,
                                state: TaskState::Rejected,
                                result: None,
                                error: Some(error),
                            }),
                        }
                    }
                }
            }
            // Staged: the Assigns go out only after the commit that records the dispatch,
            // so a crash before it never sent anything and a crash after it re-dispatches
            // (harmless: the device answers replays from its dedup table).
            self.queue.apply(changes, now);
        }
        self.queue.next_timer(now)
    }
}

/// The `Assign` for a task's current attempt on the device that said `hello`: its lock names
/// become that device's lock ids, in ascending order (every task takes a device's locks in
/// one global order, so declared locks never deadlock each other). Fails only for a task the
/// device cannot take, which dispatch never chooses.
fn assign_for(t: &TaskRecord, hello: &Hello, now: u64) -> Result<Assign, ApiError> {
    let mut locks = heapless::Vec::<u8, MAX_TASK_LOCKS>::new();
    for name in &t.sub.locks {
        let id = hello
            .locks
            .iter()
            .position(|l| l.as_str() == name)
            .and_then(|i| u8::try_from(i).ok())
            .ok_or_else(|| no_such_lock(&hello.device_id, name, Some(hello)))?;
        locks.push(id).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidLocks,
                format!("a task holds at most {MAX_TASK_LOCKS} locks"),
            )
        })?;
    }
    locks.sort_unstable();
    let remaining = t
        .deadline_at_ms
        .map(|d| d.saturating_sub(now).min(u64::from(u32::MAX)) as u32);
    let invalid = |code, what: &str| ApiError::new(code, format!("{what} does not fit a device"));
    Ok(Assign {
        handle: t.handle(),
        priority: t.sub.priority,
        deadline_ms: remaining,
        capability: t
            .sub
            .capability
            .as_str()
            .try_into()
            .map_err(|_| invalid(ErrorCode::InvalidCapability, "the capability name"))?,
        locks,
        payload: heapless::Vec::from_slice(t.sub.payload.as_bytes())
            .map_err(|_| invalid(ErrorCode::PayloadTooLarge, "the payload"))?,
        trace_id: t
            .sub
            .trace_id
            .as_deref()
            .unwrap_or("")
            .try_into()
            .map_err(|_| invalid(ErrorCode::InvalidTraceId, "the trace id"))?,
    })
}

/// Why a task naming `lock` cannot run on `device`, listing the locks it has (from its
/// `hello`, when known).
fn no_such_lock(device: &str, lock: &str, hello: Option<&Hello>) -> ApiError {
    let names: Vec<String> = hello
        .into_iter()
        .flat_map(|h| &h.locks)
        .map(|l| format!("{:?}", l.as_str()))
        .collect();
    let has = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    ApiError::new(
        ErrorCode::InvalidLocks,
        format!("device {device} has no lock {lock:?} (its locks: {has})"),
    )
}

/// The retained `{root}/devices/{id}` document: capabilities, lock names and online state
/// (an offline document repeats what the device last said in its `Hello`). `note` says where
/// it connected from, or why it went offline.
fn device_document(
    id: &str,
    hello: Option<&Hello>,
    online: bool,
    note: &str,
    now: u64,
) -> OutboxEntry {
    let doc = serde_json::json!({
        "device_id": id,
        "online": online,
        "capabilities": hello.map(|h| h.capabilities.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
        "locks": hello.map(|h| h.locks.iter().map(|l| l.as_str()).collect::<Vec<_>>()),
        "slots": hello.map(|h| h.slots),
        "max_payload": hello.map(|h| h.max_payload),
        "boot_id": hello.map(|h| h.boot_id),
        "protocol_version": hello.map(|h| h.version),
        "note": note,
        "ts_ms": now,
    });
    OutboxEntry {
        subtopic: format!("devices/{id}"),
        payload: doc.to_string(),
        retain: true,
    }
}

/// Where a refused submission is reported: its status topic when its id was readable, the
/// errors topic otherwise.
fn rejection_entry(r: api::Rejection, payload: &[u8], now: u64) -> OutboxEntry {
    match r.id {
        Some(id) => {
            let event = api::StatusEvent {
                id: id.clone(),
                state: TaskState::Rejected,
                device: None,
                attempt: 0,
                trace_id: r.trace_id,
                ts_ms: now,
                result: None,
                error: Some(r.error),
            };
            let payload = serde_json::to_string(&event).unwrap_or_default();
            OutboxEntry {
                subtopic: format!("tasks/{id}/status"),
                payload,
                retain: false,
            }
        }
        None => {
            let received: String = String::from_utf8_lossy(payload).chars().take(200).collect();
            let event = ErrorEvent {
                error: r.error,
                received,
                ts_ms: now,
            };
            OutboxEntry {
                subtopic: "errors".into(),
                payload: serde_json::to_string(&event).unwrap_or_default(),
                retain: false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_core::proto::{DeviceId, Payload};

    fn hello() -> Hello {
        Hello {
            version: device_core::proto::PROTOCOL_VERSION,
            device_id: DeviceId::try_from("dev-1").unwrap(),
            boot_id: 7,
            session_id: 0,
            capabilities: heapless::Vec::from_slice(&["echo".try_into().unwrap()]).unwrap(),
            locks: heapless::Vec::from_slice(&[
                "i2c0".try_into().unwrap(),
                "bus".try_into().unwrap(),
            ])
            .unwrap(),
            slots: 4,
            max_payload: 256,
        }
    }

    fn up(e: &mut Engine, link: LinkId) -> mpsc::Receiver<LinkCommand> {
        up_with(e, link, hello())
    }

    fn up_with(e: &mut Engine, link: LinkId, hello: Hello) -> mpsc::Receiver<LinkCommand> {
        let (commands, rx) = mpsc::channel(16);
        let event = LinkEvent::Up {
            link,
            peer: "test".into(),
            hello,
            rebooted: false,
            credit: 4,
            commands,
        };
        e.on_links(vec![event]);
        e.commit().unwrap();
        rx
    }

    fn retry() -> Retry {
        Retry {
            max_attempts: 3,
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }

    /// Nothing leaves the engine before the commit that covers it: the submission's
    /// acknowledgement and the Assign wait for `commit`, and a bridge that dies before it
    /// has promised nothing (the submission is not there after a restart, and was never
    /// acknowledged, so the client sends it again).
    #[test]
    fn acknowledgements_and_assigns_wait_for_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut e = Engine::new(Queue::open(dir.path(), 10).unwrap(), retry());
            let mut commands = up(&mut e, 1);
            let (accepted, mut answered) = oneshot::channel();
            let task = br#"{"id":"t","capability":"echo","payload":1}"#.to_vec();
            e.submit_batch(vec![(task, accepted)]).unwrap();
            e.dispatch();
            assert!(
                answered.try_recv().is_err(),
                "acknowledged before the commit"
            );
            assert!(commands.try_recv().is_err(), "assigned before the commit");
            assert_eq!(e.queue().get("t").unwrap().state, TaskState::Dispatched);
        } // the bridge dies here, before committing
        let mut e = Engine::new(Queue::open(dir.path(), 10).unwrap(), retry());
        assert!(
            e.queue().is_empty(),
            "an uncommitted submission left a trace"
        );
        let mut commands = up(&mut e, 1);
        let (accepted, mut answered) = oneshot::channel();
        let task = br#"{"id":"t","capability":"echo","payload":1}"#.to_vec();
        e.submit_batch(vec![(task, accepted)]).unwrap();
        e.dispatch();
        e.commit().unwrap();
        assert!(answered.try_recv().is_ok());
        assert!(matches!(commands.try_recv(), Ok(LinkCommand::Assign(_))));
    }

    /// A device that ran a task before the bridge crashed reports it to the restarted bridge
    /// before anything is dispatched again: the report settles the task from durable state
    /// (found while testing the SIGKILL scenario: an in-memory map lost it, the report was
    /// acknowledged and ignored, and the result was lost).
    #[test]
    fn a_report_after_a_restart_settles_its_task() {
        let dir = tempfile::tempdir().unwrap();
        let handle = {
            let mut e = Engine::new(Queue::open(dir.path(), 10).unwrap(), retry());
            let (accepted, _) = oneshot::channel();
            e.submit_batch(vec![(
                br#"{"id":"t","capability":"echo","payload":1}"#.to_vec(),
                accepted,
            )])
            .unwrap();
            let mut commands = up(&mut e, 1);
            e.dispatch();
            e.commit().unwrap();
            match commands.try_recv() {
                Ok(LinkCommand::Assign(a)) => a.handle,
                other => panic!("expected an Assign, got {other:?}"),
            }
        }; // the bridge dies here
        let mut e = Engine::new(Queue::open(dir.path(), 10).unwrap(), retry());
        let _commands = up(&mut e, 2);
        let (committed, done) = oneshot::channel();
        let report = Report {
            handle,
            state: TaskReport::Completed,
            result: Payload::from_slice(b"1").unwrap(),
            error: None,
        };
        e.on_links(vec![LinkEvent::Report {
            link: 2,
            report,
            committed,
        }]);
        e.commit().unwrap();
        assert!(
            done.blocking_recv().is_ok(),
            "the report is answered after its commit"
        );
        assert!(e.queue().get("t").is_none(), "the task is settled");
        let finals: Vec<String> = e
            .queue()
            .outbox(100)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o.payload)
            .collect();
        assert!(
            finals
                .iter()
                .any(|p| p.contains(r#""state":"completed""#) && p.contains(r#""result":1"#)),
            "{finals:#?}"
        );
    }

    /// Lock names become the device's lock ids, in ascending order whatever the submission's
    /// order; a named device without the lock rejects the task, saying which lock and what
    /// it has; the device document lists the locks.
    #[test]
    fn lock_names_become_the_devices_lock_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::new(Queue::open(dir.path(), 10).unwrap(), retry());
        let mut commands = up(&mut e, 1);
        let tasks = [
            r#"{"id":"bus","capability":"echo","locks":["bus"]}"#,
            r#"{"id":"both","capability":"echo","locks":["bus","i2c0"]}"#,
            r#"{"id":"spi","capability":"echo","device":"dev-1","locks":["i2c0","spi"]}"#,
        ];
        let batch = tasks
            .iter()
            .map(|t| (t.as_bytes().to_vec(), oneshot::channel().0))
            .collect();
        e.submit_batch(batch).unwrap();
        e.dispatch();
        e.commit().unwrap();
        let mut locks = vec![];
        while let Ok(LinkCommand::Assign(a)) = commands.try_recv() {
            locks.push(a.locks.to_vec());
        }
        assert_eq!(locks, [vec![1], vec![0, 1]]);
        assert!(e.queue().get("spi").is_none(), "the task is settled");
        let outbox: Vec<String> = e
            .queue()
            .outbox(100)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o.payload)
            .collect();
        let rejected = outbox
            .iter()
            .find(|p| p.contains(r#""id":"spi""#) && p.contains("rejected"))
            .unwrap_or_else(|| panic!("{outbox:#?}"));
        assert!(
            rejected.contains(r#""code":"invalid_locks""#)
                && rejected
                    .contains(r#"device dev-1 has no lock \"spi\" (its locks: \"i2c0\", \"bus\")"#),
            "{rejected}"
        );
        assert!(
            outbox
                .iter()
                .any(|p| p.contains(r#""locks":["i2c0","bus"]"#)),
            "{outbox:#?}"
        );
    }

    /// The device documents in the outbox, as (device id, online), in order.
    fn documents(e: &Engine) -> Vec<(String, bool)> {
        e.queue()
            .outbox(100)
            .unwrap()
            .into_iter()
            .filter(|(_, o)| o.subtopic.starts_with("devices/"))
            .map(|(_, o)| {
                let doc: serde_json::Value = serde_json::from_str(&o.payload).unwrap();
                (
                    o.subtopic["devices/".len()..].to_owned(),
                    doc["online"] == true,
                )
            })
            .collect()
    }

    /// A byte stream without connections of its own (a serial port) carries a device's next
    /// session on the same link: the link is not closed under it, and the device stays online.
    #[test]
    fn a_new_session_of_the_same_device_on_its_link_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::new(Queue::open(dir.path(), 10).unwrap(), retry());
        let mut first = up(&mut e, 1);
        let mut restarted = hello();
        restarted.boot_id += 1;
        let mut second = up_with(&mut e, 1, restarted);
        assert!(
            first.try_recv().is_err(),
            "the link was closed under its new session"
        );
        assert_eq!(
            documents(&e),
            [("dev-1".into(), true), ("dev-1".into(), true)]
        );
        // It is the device on the link: tasks reach it there.
        let task = br#"{"id":"t","capability":"echo"}"#.to_vec();
        e.submit_batch(vec![(task, oneshot::channel().0)]).unwrap();
        e.dispatch();
        e.commit().unwrap();
        assert!(matches!(second.try_recv(), Ok(LinkCommand::Assign(_))));
        // Elsewhere, a new session still closes the old link.
        let _third = up(&mut e, 2);
        assert!(matches!(second.try_recv(), Ok(LinkCommand::Close)));
    }

    /// Another device opening a session on a link (a serial port whose device was swapped)
    /// takes the previous one offline; its tasks go back to the queue.
    #[test]
    fn another_device_on_a_link_takes_the_previous_one_offline() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::new(Queue::open(dir.path(), 10).unwrap(), retry());
        let mut first = up(&mut e, 1);
        let task = br#"{"id":"t","capability":"echo","device":"dev-1"}"#.to_vec();
        e.submit_batch(vec![(task, oneshot::channel().0)]).unwrap();
        e.dispatch();
        e.commit().unwrap();
        assert!(matches!(first.try_recv(), Ok(LinkCommand::Assign(_))));
        let mut other = hello();
        other.device_id = DeviceId::try_from("dev-2").unwrap();
        let mut second = up_with(&mut e, 1, other);
        assert_eq!(
            documents(&e),
            [
                ("dev-1".into(), true),
                ("dev-1".into(), false),
                ("dev-2".into(), true)
            ]
        );
        assert_eq!(e.queue().get("t").unwrap().state, TaskState::Queued);
        // dev-1's task is not handed to dev-2 on the link dev-1 used.
        e.dispatch();
        e.commit().unwrap();
        assert!(second.try_recv().is_err());
    }
}
