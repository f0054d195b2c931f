//! The bridge engine: the queue, the registry of online devices and every decision about a
//! task, as a deterministic state machine.
//!
//! It does no I/O of its own but through its [`Queue`], reads no clock, holds no channel and
//! spawns nothing — in the shape of quinn-proto's `Connection`:
//! - **Inputs** go in through `handle_*` with the time they are handled at ([`Now`], read by
//!   the caller): submissions and cancels from MQTT, events from device links, the broker's
//!   acknowledgements of published events.
//! - [`Engine::dispatch`] expires overdue tasks and decides which queued task goes to which
//!   device now.
//! - [`Engine::commit`] writes everything staged in one transaction, and only then hands out
//!   what waited for it ([`Released`]): the tickets of inputs that may now be acknowledged (the
//!   MQTT PUBACK of a submission, the link-level ack of a device's report) and the commands
//!   for links (`Assign`, `Cancel`, `Close`). Nothing is told before the commit that covers it,
//!   so a crash at any point loses nothing anyone was told about.
//! - [`Engine::poll_timeout`] says when the engine must be woken next (a retry delay ends or
//!   a deadline passes), on the same timer clock.
//!
//! Submissions and link events are handled in batches (whatever arrived while the last commit
//! ran), so the queue commits in groups.
//!
//! # Layout
//! - `mod.rs`: the engine's inputs, outputs and turn (this file).
//! - `devices`: the registry of online devices: sessions opening, ending, taking over links.
//! - `discovery`: the retained `{root}/capabilities/{name}` documents.
//! - `outcome`: what a device's report or refusal, a lost device or a retry does to a task.
//! - `assign`: the `Assign` message for a task on a device (lock names to lock ids).
//! - `preempt`: taking back unstarted work for urgent tasks that found no slot.
//! - `query`: answers to "why is my task waiting?".

mod absent;
mod assign;
mod devices;
mod discovery;
mod outcome;
mod preempt;
mod query;
mod resources;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use device_core::Priority;
use device_core::proto::{Cancel, Hello, Preemption, Reject, Report};

use crate::api::{
    self, ApiError, BridgeStats, ClassStats, DeviceStats, ErrorCode, ErrorEvent, OutboxStats,
    StatusEvent, StorageStats, TaskState, WaitStats,
};
use crate::backoff::{Backoff, SplitMix64};
use crate::dispatch::{self, Decision, DeviceView};
use crate::link::{LinkCommand, LinkId};
use crate::metrics::{DeviceFigures, DeviceLoad, Histogram, Snapshot};
use crate::queue::{Admission, Change, Checkpoint, OutboxEntry, Queue, QueueError};
use crate::time::Now;

pub use absent::Leases;
use absent::LeftBehind;
use devices::Registry;
use discovery::Discovery;
pub use resources::ResourcePolicy;

/// Names an input whose acknowledgement waits for the commit that covers it; handed back in
/// [`Released::tickets`]. The caller chooses the numbers (and keeps what to acknowledge).
pub type Ticket = u64;

/// What a device link reports, as the engine sees it (the link's channels stay with the
/// caller).
// `Up` carries the whole `Hello` (~0.5 KB) once per connection; the others are small.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum LinkInput {
    /// A device opened a session. `rebooted`: its boot id changed, so everything it ran is
    /// gone. `credit`: the `Assign`s it can take now.
    Up {
        peer: String,
        hello: Hello,
        rebooted: bool,
        credit: u8,
        /// What proved the device id on this link ("TLS client certificate"), if anything.
        credential: Option<&'static str>,
    },
    /// The device can take `credit` more tasks (after acks, reports, slots freed), as counted
    /// by the link once it had taken `taken` `Assign`s since it opened (sent or refused).
    Credit { credit: u8, taken: u64 },
    /// A task's state changed on the device; `ticket` is released once that is committed.
    Report { report: Report, ticket: Ticket },
    /// The device refused something; `ticket` is released once that is committed.
    Reject { reject: Reject, ticket: Ticket },
    /// An `Assign` the link's session would not take (no credit, window full).
    Refused { handle: u32 },
    /// The device gave a task back (asked to, with `Preempt`): its slot is free and it will not
    /// run that handle again; `checkpoint` is where it stopped (no steps: it had not started,
    /// or it restarts). `ticket` is released once that is committed.
    Suspended {
        handle: u32,
        checkpoint: Checkpoint,
        ticket: Ticket,
    },
    /// A `Preempt` for `handle` did not go out: its task may be chosen again.
    PreemptNotSent { handle: u32 },
    /// The connection ended.
    Down { reason: String },
}

/// What a commit let out.
#[derive(Debug, Default)]
pub struct Released {
    /// Inputs that may be acknowledged now, in the order they were handled.
    pub tickets: Vec<Ticket>,
    /// Commands for links, in the order they were decided.
    pub commands: Vec<(LinkId, LinkCommand)>,
    /// Rejections and error reports the outbox had no room to store: to publish once, best
    /// effort ([`Queue::take_unstored`]).
    pub unstored: Vec<OutboxEntry>,
    /// The lowest outbox key the commit wrote: reading the outbox in key order must go on
    /// from there ([`Queue::take_appended`]).
    pub appended: Option<u64>,
}

impl Released {
    pub fn is_empty(&self) -> bool {
        self.tickets.is_empty() && self.commands.is_empty() && self.unstored.is_empty()
    }
}

/// Retry policy for tasks whose attempt ended without a result.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts (executions started) before a task fails with `attempts_exhausted`.
    pub max_attempts: u32,
    /// Delay before each new attempt: doubling from the first, with up to 25 % jitter so
    /// that tasks of devices lost together do not come back in lockstep.
    pub backoff: Backoff,
}

impl Retry {
    /// Doubling from `initial`, capped at `max`, with up to 25 % jitter.
    pub fn new(max_attempts: u32, initial: Duration, max: Duration) -> Self {
        Self {
            max_attempts,
            backoff: Backoff {
                initial,
                max,
                jitter_percent: 25,
            },
        }
    }
}

/// Urgent work never waits (DESIGN.md): which tasks are urgent, and the slots each device keeps
/// free for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urgency {
    /// Tasks of this priority or more urgent are urgent.
    pub urgent_at: Priority,
    /// Slots per device that only urgent tasks may take.
    pub reserve: u8,
    /// `reserve` for particular devices, by id.
    pub per_device: BTreeMap<String, u8>,
    /// Times one task may be given back for urgent work (so low-priority work always
    /// finishes); 0 turns taking back off.
    pub max_preemptions: u32,
}

impl Default for Urgency {
    /// P0 and P1 are urgent; one slot kept on every device with two or more.
    fn default() -> Self {
        Self {
            urgent_at: Priority::P1,
            reserve: 1,
            per_device: BTreeMap::new(),
            max_preemptions: 3,
        }
    }
}

impl Urgency {
    /// No slot kept and nothing taken back.
    pub fn off() -> Self {
        Self {
            reserve: 0,
            max_preemptions: 0,
            ..Self::default()
        }
    }

    /// The slots device `id` with `slots` in all keeps for urgent tasks: what it is configured
    /// with, but always leaving one slot for any task, so low-priority work is never shut out
    /// of a device that serves it (a one-slot device reserves none).
    pub fn reserve_for(&self, id: &str, slots: u8) -> u32 {
        let configured = self.per_device.get(id).copied().unwrap_or(self.reserve);
        u32::from(configured.min(slots.saturating_sub(1)))
    }
}

/// The engine's state.
#[derive(Debug)]
pub struct Engine {
    /// `devices.forget_after` in ms; 0: device documents are kept for ever.
    forget_after_ms: u64,
    /// Devices online when the bridge last stopped were counted offline from this run's start.
    offline_resumed: bool,
    /// Queued tasks the dispatcher has looked at, since start (statistics).
    dispatch_examined: u64,
    /// Links without credentials may claim device ids a credential proved (off by default).
    unproven_claims: bool,
    /// Remote events the log tells of, counted per kind ([`Remote`]): the first and then
    /// each power of two is logged with the count, so a client or device repeating one cannot
    /// flood the log (the engine reads no clock, so its budget is by count, not by time).
    remote_events: [u64; Remote::KINDS],
    queue: Queue,
    retry: Retry,
    urgency: Urgency,
    devices: Registry,
    /// Held back until the next commit: tickets to release and commands for links.
    staged: Released,
    /// Jitter for retry delays; seeded by the caller, so a simulation replays exactly.
    rng: SplitMix64,
    /// When [`Engine::dispatch`] last found something worth waking for.
    timer: Option<u64>,
    /// Statistics: tasks that expired before they could start.
    expired: u64,
    /// Take-backs asked for and not answered yet: victim id -> the urgent task it makes room
    /// for. In memory only: after a restart every dispatched task is dispatched again anyway.
    preempting: BTreeMap<String, String>,
    /// Urgent tasks whose victim was given back, by the link that freed the slot: the slot is
    /// free on the device only once the `Suspended` is acknowledged, after this commit, so the
    /// link reports it a turn later; until that report the task takes nothing else back.
    freed_for: BTreeMap<String, LinkId>,
    /// Statistics: tasks given back for urgent work.
    preemptions: u64,
    /// Statistics: messages on the API's topics the broker dropped unread.
    submissions_lost: u64,
    /// Statistics: how long the last urgent tasks waited from acceptance to their first
    /// dispatch, in ms (wall clock), newest last.
    urgent_waits: std::collections::VecDeque<u64>,
    /// Grace periods and execution leases.
    leases: Leases,
    /// Devices that went away with tasks on them, with the timer-clock ms until which those
    /// tasks wait for them.
    away: BTreeMap<String, u64>,
    /// Whether the devices that had tasks when the bridge started have been given their
    /// grace period (at the first dispatch).
    resumed: bool,
    /// Executions devices may still be running for tasks that moved on, by device and old
    /// handle: cancelled when the device comes back. In memory only.
    left_behind: BTreeMap<String, BTreeMap<u32, LeftBehind>>,
    /// Declared bridge resources, by name.
    resources: BTreeMap<String, ResourcePolicy>,
    /// Resource holders running at a priority other than their own, as last told.
    lent: BTreeMap<String, Priority>,
    /// Resource holders whose priority on their device is not known: told again.
    unsure: std::collections::BTreeSet<String>,
    /// The share (percent) of the online slots each QoS class may hold (100: no quota).
    class_quota: [u8; 3],
    /// The capability documents, and the devices whose figures changed since the last.
    discovery: Discovery,
    /// Queries answered in the current second of the timer clock: (second, count).
    queries: (u64, u32),
    /// The longest answer to a query, in bytes.
    answer_bytes: usize,
    /// Metrics: acceptance to first dispatch, per priority (wall clock, as `urgent_waits`).
    dispatch_waits: [Histogram; Priority::LEVELS],
    /// Metrics: submissions rejected before they became tasks (unparsable, undeclared
    /// resources, refused by the queue); the queue counts the tasks that finished.
    rejected_submissions: u64,
}

/// Urgent waits the stats are computed over.
const URGENT_WAITS_KEPT: usize = 1024;

impl Engine {
    /// An engine over `queue`; `seed` drives the retry jitter.
    pub fn new(queue: Queue, retry: Retry, seed: u64) -> Self {
        Self {
            queue,
            retry,
            urgency: Urgency::default(),
            devices: Registry::default(),
            staged: Released::default(),
            rng: SplitMix64::new(seed),
            timer: None,
            expired: 0,
            preempting: BTreeMap::new(),
            freed_for: BTreeMap::new(),
            preemptions: 0,
            submissions_lost: 0,
            urgent_waits: std::collections::VecDeque::new(),
            leases: Leases::default(),
            away: BTreeMap::new(),
            resumed: false,
            left_behind: BTreeMap::new(),
            resources: BTreeMap::new(),
            lent: BTreeMap::new(),
            unsure: std::collections::BTreeSet::new(),
            class_quota: [100; 3],
            discovery: Discovery::default(),
            queries: (0, 0),
            answer_bytes: 64 * 1024,
            unproven_claims: false,
            forget_after_ms: 0,
            offline_resumed: false,
            dispatch_examined: 0,
            remote_events: [0; Remote::KINDS],
            dispatch_waits: Default::default(),
            rejected_submissions: 0,
        }
    }

    /// Sets the QoS class quotas: the percent of the online devices' slots realtime,
    /// guaranteed and besteffort tasks may hold at once (100: no quota).
    pub fn set_class_quotas(&mut self, percent: [u8; 3]) {
        self.class_quota = percent;
    }

    /// Slots of the online devices, and tasks of each QoS class on them.
    fn class_load(&self) -> (u32, [u32; 3]) {
        let mut slots = 0;
        let mut on = [0u32; 3];
        for (id, o) in self.devices.iter() {
            slots += u32::from(o.hello.slots);
            for t in self.queue.on_device(id) {
                on[dispatch::class_of(t.sub.priority)] += 1;
            }
        }
        (slots, on)
    }

    /// Declares the bridge resources submissions may name (none until then).
    pub fn set_resources(&mut self, resources: BTreeMap<String, ResourcePolicy>) {
        self.resources = resources;
    }

    /// Replaces the grace period and execution leases ([`Leases::default`] until then).
    pub fn set_leases(&mut self, leases: Leases) {
        self.leases = leases;
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The online devices: each one's id, the link its session is on, its `Hello`, and the
    /// `Assign`s the engine counts it can take now. For checks from outside (the fuzz targets
    /// assert that no device is given more than its slots); the run loop has no use for it.
    #[doc(hidden)]
    pub fn online_devices(&self) -> impl Iterator<Item = (&str, LinkId, &Hello, u32)> {
        self.devices
            .iter()
            .map(|(id, o)| (id.as_str(), o.link, &o.hello, o.credit))
    }

    /// Replaces the urgency policy (reservation is on by default: [`Urgency::default`]). Devices
    /// online already keep their reserve until their next session.
    pub fn set_urgency(&mut self, urgency: Urgency) {
        self.urgency = urgency;
    }

    /// Tasks that expired before they could start, since the engine started.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Handles a batch of submissions (the raw MQTT payloads); each ticket is released by the
    /// next commit. Fails only when the queue cannot be read.
    pub fn handle_submissions(
        &mut self,
        batch: Vec<(Vec<u8>, Ticket)>,
        now: Now,
    ) -> Result<(), QueueError> {
        let mut subs = Vec::new();
        for (payload, ticket) in batch {
            let queue = &mut self.queue;
            match api::parse_submission(&payload, || queue.generate_id()) {
                Ok(s) => match self.undeclared(&s.resources) {
                    None => subs.push(s),
                    Some(message) => {
                        self.rejected_submissions += 1;
                        let error = ApiError::new(ErrorCode::InvalidResources, message);
                        let event = StatusEvent::rejected(s.id, s.trace_id, error, now.wall_ms);
                        self.queue.notify(OutboxEntry::status(&event));
                    }
                },
                Err(rejection) => {
                    self.rejected_submissions += 1;
                    let entry = rejection_entry(rejection, &payload, now.wall_ms);
                    self.queue.notify(entry);
                }
            }
            self.staged.tickets.push(ticket);
        }
        if !subs.is_empty() {
            for outcome in self.queue.submit(subs, now)? {
                if let Admission::Rejected(code) = outcome {
                    self.rejected_submissions += 1;
                    if let Some(so_far) = self.log_due(Remote::Rejection) {
                        tracing::warn!(?code, so_far, "submission rejected");
                    }
                }
            }
        }
        Ok(())
    }

    /// The broker dropped `lost` messages on the API's topic filter `filter` before the
    /// bridge read them: a burst overflowed what it holds for the bridge, after it had
    /// acknowledged them to their senders. Nothing can bring them back; the loss is logged,
    /// counted in the stats and published on `{root}/errors` (with the next commit), so the
    /// senders of submissions that never saw `queued` know to send them again.
    pub fn handle_broker_loss(&mut self, filter: &str, lost: u64, now: Now) {
        self.submissions_lost += lost;
        tracing::warn!(
            filter,
            lost,
            total = self.submissions_lost,
            "the broker dropped messages before the bridge read them"
        );
        let event = ErrorEvent {
            error: ApiError::new(
                ErrorCode::SubmissionsLost,
                format!(
                    "the broker dropped {lost} messages on {filter} before the bridge read \
                     them; their senders saw a PUBACK but no queued event, and should send them \
                     again (with the same id)"
                ),
            ),
            id: None,
            trace_id: None,
            received: String::new(),
            ts_ms: now.wall_ms,
        };
        self.queue
            .notify(OutboxEntry::new("errors".into(), &event, false));
    }

    /// A retained message on submit or cancel topic `topic`, which the broker hands to every new
    /// subscription (so it would act again on every reconnect): refused on `{root}/errors`, not
    /// acted on (the driver cleared it from the broker). The ticket is released by the next
    /// commit.
    pub fn handle_retained(&mut self, topic: &str, payload: &[u8], ticket: Ticket, now: Now) {
        self.staged.tickets.push(ticket);
        if let Some(so_far) = self.log_due(Remote::Retained) {
            tracing::warn!(%topic, so_far, "a retained message on an API topic refused and cleared");
        }
        let (id, trace_id) = api::peek_ids(payload);
        let event = ErrorEvent {
            error: ApiError::new(
                ErrorCode::Retained,
                format!(
                    "{topic}: retained messages are refused (the broker would deliver it again on \
                     every reconnect) and cleared; publish submissions and cancels without retain"
                ),
            ),
            id,
            trace_id,
            received: String::from_utf8_lossy(payload).chars().take(200).collect(),
            ts_ms: now.wall_ms,
        };
        self.queue
            .notify(OutboxEntry::new("errors".into(), &event, false));
    }

    /// Cancels a task that has not finished; the ticket is released by the next commit.
    /// - A queued task ends `cancelled` at once.
    /// - A task on a device is cancelled there (after the commit; when the device comes back
    ///   if it is away), and the device's answer ends it: `cancelled`, or the result it had
    ///   already (so `cancelled` is never reported for work that completed).
    /// - An id not seen yet (a cancel that overtook its submission) is recorded as cancelled,
    ///   so the submission, when it comes, is answered `cancelled` and never runs.
    pub fn handle_cancel(&mut self, id: &str, ticket: Ticket, now: Now) -> Result<(), QueueError> {
        self.staged.tickets.push(ticket);
        let Some(task) = self.queue.get(id) else {
            if self.queue.cancel_unseen(id, now)? {
                if let Some(so_far) = self.log_due(Remote::UnseenCancel) {
                    tracing::info!(
                        id,
                        so_far,
                        "cancel for a task not submitted yet: it will not run"
                    );
                }
            } else {
                // Too late: its final state is the answer.
                self.queue.answer_final(id)?;
            }
            return Ok(());
        };
        let (queued, device, handle) = (
            task.state == TaskState::Queued,
            task.device.clone(),
            task.handle(),
        );
        self.take_back_over(id);
        if queued {
            let change = Change::finished(
                id,
                TaskState::Cancelled,
                ErrorCode::Cancelled,
                "cancelled on request",
            );
            self.queue.apply(vec![change], now);
            return Ok(());
        }
        if let Some(link) = device.as_deref().and_then(|d| self.devices.link_of(d)) {
            let cancel = Cancel { handle };
            self.staged
                .commands
                .push((link, LinkCommand::Cancel(cancel)));
        }
        let change = Change::Cancelling { id: id.to_owned() };
        self.queue.apply(vec![change], now);
        Ok(())
    }

    /// Handles an event of device link `link`.
    pub fn handle_link(&mut self, link: LinkId, input: LinkInput, now: Now) {
        // Whatever a link says may change its device's free slots or tasks in flight.
        if let Some(device) = self.devices.device_on(link) {
            self.discovery.touch(device);
        }
        match input {
            LinkInput::Report { report, ticket } => {
                let change = self.report_change(link, report, now);
                if let Some(Change::Finished { id, .. }) = &change {
                    let id = id.clone();
                    self.take_back_over(&id);
                }
                self.queue.apply(change.into_iter().collect(), now);
                self.staged.tickets.push(ticket);
            }
            LinkInput::Reject { reject, ticket } => {
                let change = self.reject_change(link, reject, now);
                self.queue.apply(change.into_iter().collect(), now);
                self.staged.tickets.push(ticket);
            }
            LinkInput::Credit { credit, taken } => {
                self.devices.set_credit(link, credit, taken);
                if let Some(device) = self.devices.device_on(link).cloned() {
                    self.clamp_credit(&device);
                }
                // The slots freed by take-backs are in this report: their tasks are dispatched
                // by this turn, or may take back again.
                self.freed_for.retain(|_, l| *l != link);
            }
            LinkInput::PreemptNotSent { handle } => {
                if let Some((id, _)) = self.task_of(link, handle) {
                    self.take_back_over(&id);
                }
            }
            LinkInput::Suspended {
                handle,
                checkpoint,
                ticket,
            } => {
                if let Some((id, device)) = self.task_of(link, handle) {
                    tracing::info!(%id, %device, steps = checkpoint.steps, "task given back");
                    if let Some(waiting) = self.preempting.remove(&id) {
                        self.freed_for.insert(waiting, link);
                    }
                    self.preemptions += 1;
                    let checkpoint = (checkpoint.steps > 0).then_some(checkpoint);
                    let change = self.unless_cancelling(Change::Preempted { id, checkpoint });
                    self.queue.apply(vec![change], now);
                }
                self.staged.tickets.push(ticket);
            }
            LinkInput::Refused { handle } => {
                if let Some((id, _)) = self.task_of(link, handle) {
                    let requeue = self.unless_cancelling(Change::Requeue {
                        id,
                        not_before_ms: now.ms,
                    });
                    self.queue.apply(vec![requeue], now);
                }
            }
            LinkInput::Up {
                peer,
                hello,
                rebooted,
                credit,
                credential,
            } => {
                if self.may_claim(link, &peer, hello.device_id.as_str(), credential) {
                    self.device_up(link, &peer, hello, rebooted, credit, now);
                }
            }
            LinkInput::Down { reason } => self.device_down(link, &reason, now),
        }
    }

    /// Whether the session on `link` may claim device id `id`: an id a credential proved
    /// once, on any link, needs one from then on (unless [`Engine::set_unproven_claims`]);
    /// otherwise its link is closed and nothing changes. A proof is recorded with the next
    /// commit.
    fn may_claim(
        &mut self,
        link: LinkId,
        peer: &str,
        id: &str,
        credential: Option<&'static str>,
    ) -> bool {
        if credential.is_some() {
            self.queue.mark_proven(id);
            return true;
        }
        if self.unproven_claims || !self.queue.is_proven(id) {
            return true;
        }
        if let Some(so_far) = self.log_due(Remote::Claim) {
            tracing::warn!(device = %id, link, %peer, so_far, "a link without credentials claimed a device id that a credential proved; the link is closed (identity.unproven_claims allows it)");
        }
        self.staged.commands.push((link, LinkCommand::Close));
        false
    }

    /// How long a device may stay offline before its retained document is cleared (zero:
    /// kept for ever).
    pub fn set_forget_after(&mut self, after: Duration) {
        self.forget_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    }

    /// Counts one remote event of `kind`; `Some(count so far)` when this one is to be logged
    /// (the first, then each power of two).
    fn log_due(&mut self, kind: Remote) -> Option<u64> {
        let n = &mut self.remote_events[kind as usize];
        *n += 1;
        n.is_power_of_two().then_some(*n)
    }

    /// Whether links without credentials may claim device ids that a credential proved.
    pub fn set_unproven_claims(&mut self, allowed: bool) {
        self.unproven_claims = allowed;
    }

    /// The broker acknowledged these outbox entries: they leave the outbox with the next
    /// commit.
    pub fn handle_published(&mut self, keys: &[u64]) {
        self.queue.published(keys);
    }

    /// Expires overdue tasks and dispatches what can be dispatched now (staged: the `Assign`s
    /// go out after the next commit). Then [`Engine::poll_timeout`] says when to look again.
    pub fn dispatch(&mut self, now: Now) {
        // First what leases and grace periods that ended send back to the queue, so that those
        // whose deadline passed meanwhile expire now, not at the next wake-up.
        self.release_overdue(now);
        let overdue: Vec<Change> = self
            .queue
            .overdue(now.ms)
            .into_iter()
            .map(|id| {
                Change::finished(
                    &id,
                    TaskState::Expired,
                    ErrorCode::DeadlineExpired,
                    "the deadline passed while the task waited",
                )
            })
            .collect();
        self.expired += overdue.len() as u64;
        self.queue.apply(overdue, now);
        self.queue.release_delayed(now.ms);

        if self.devices.any_credit() {
            let urgent_at = self.urgency.urgent_at;
            let views = self.device_views();
            let may_hold = |t: &crate::queue::TaskRecord| self.may_hold(t, now);
            let id_of = |t: &crate::queue::Queued<'_>| self.queue.id_of(t.seq());
            let room = self.class_room();
            let plan = dispatch::plan(
                self.queue.lanes(),
                &views,
                urgent_at,
                now.ms,
                &may_hold,
                &id_of,
                room,
            );
            self.dispatch_examined += plan.examined;
            let mut changes = Vec::with_capacity(plan.decisions.len());
            for d in plan.decisions {
                changes.extend(self.decide(d, now));
            }
            // Staged: the Assigns go out only after the commit that records the dispatch,
            // so a crash before it never sent anything and a crash after it re-dispatches
            // (harmless: the device answers replays from its dedup table).
            self.queue.apply(changes, now);
        }
        self.take_back(now);
        self.lend_priorities();
        let forget = self.forget_devices(now);
        let discovery = self.refresh_discovery(now);
        self.timer = [
            self.queue.next_timer(now.ms),
            self.away_until(),
            forget,
            discovery,
        ]
        .into_iter()
        .flatten()
        .min();
    }

    /// What the dispatch policy sees of each online device.
    fn device_views(&self) -> BTreeMap<String, DeviceView> {
        self.devices
            .iter()
            .map(|(id, o)| {
                let view = o.view(self.queue.in_flight(id) as u32, self.reserve_left(id, o));
                (id.clone(), view)
            })
            .collect()
    }

    /// Of device `id`'s reserved slots, those urgent tasks on it do not hold (urgent work
    /// uses the reserve first).
    fn reserve_left(&self, id: &str, o: &devices::Online) -> u32 {
        let urgent_at = self.urgency.urgent_at;
        let urgent_on = self
            .queue
            .on_device(id)
            .filter(|t| !urgent_at.outranks(t.sub.priority))
            .count() as u32;
        o.reserve.saturating_sub(urgent_on)
    }

    /// How many more tasks of each QoS class may go now (`None`: no quota).
    fn class_room(&self) -> [Option<u32>; 3] {
        let (slots, on) = self.class_load();
        std::array::from_fn(|c| {
            (self.class_quota[c] < 100)
                .then(|| (slots * u32::from(self.class_quota[c]) / 100).saturating_sub(on[c]))
        })
    }

    /// The change one dispatch decision makes, staging the `Assign` it sends.
    fn decide(&mut self, decision: Decision, now: Now) -> Option<Change> {
        let rejected = |id: String, error| Change::Finished {
            id,
            state: TaskState::Rejected,
            result: None,
            error: Some(error),
        };
        match decision {
            Decision::TooLarge { id, device, max } => Some(rejected(
                id,
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("device {device} takes payloads of at most {max} bytes"),
                ),
            )),
            Decision::MissingLock { id, device, lock } => {
                let hello = self.devices.get(&device).map(|o| &o.hello);
                Some(rejected(id, assign::no_such_lock(&device, &lock, hello)))
            }
            Decision::Assign { id, device } => {
                let task = self.queue.get(&id)?;
                // A resource holder starts at its ceiling, or its most urgent waiter's priority.
                let holding = (!task.sub.resources.is_empty())
                    .then(|| self.holding_priority(&task))
                    .filter(|p| *p != task.sub.priority);
                let online = self.devices.get_mut(&device)?;
                let first_wait = (task.attempt == 0
                    && !self.urgency.urgent_at.outranks(task.sub.priority))
                .then(|| now.wall_ms.saturating_sub(task.submitted_ms));
                // Its first dispatch: not one after a refused Assign, a lost device or a
                // take-back (those wait again, but the submitter's wait was this one).
                let first_dispatch = (task.attempt == 0 && task.preemptions == 0).then(|| {
                    let wait = now.wall_ms.saturating_sub(task.submitted_ms);
                    (usize::from(task.sub.priority.level()), wait)
                });
                // A checkpoint goes just ahead of the Assign, to a device that resumes the
                // capability; elsewhere the task starts over.
                let restore = task.checkpoint.clone().filter(|_| {
                    devices::preemption(&online.hello, &task.sub.capability) == Preemption::Resume
                });
                match assign::assign_for(&task, &online.hello, now.ms) {
                    Ok(mut assign) => {
                        if let Some(p) = holding {
                            assign.priority = p;
                            self.lent.insert(id.clone(), p);
                        }
                        if let Some(checkpoint) = restore {
                            let handle = assign.handle;
                            let command = LinkCommand::Restore { handle, checkpoint };
                            self.staged.commands.push((online.link, command));
                        }
                        if let Some((level, wait)) = first_dispatch {
                            self.dispatch_waits[level].observe(wait);
                        }
                        if let Some(wait) = first_wait {
                            if self.urgent_waits.len() == URGENT_WAITS_KEPT {
                                self.urgent_waits.pop_front();
                            }
                            self.urgent_waits.push_back(wait);
                        }
                        online.credit = online.credit.saturating_sub(1);
                        self.discovery.touch(&device);
                        let boot = online.hello.boot_id;
                        let lease = self
                            .leases
                            .lease_ms(&task.sub.capability, task.sub.timeout_ms);
                        let command = LinkCommand::Assign(Box::new(assign));
                        let link = online.link;
                        self.staged.commands.push((link, command));
                        self.devices.count_assign(link);
                        Some(Change::Dispatched {
                            id,
                            device,
                            boot,
                            lease_until_ms: now.ms.saturating_add(lease),
                        })
                    }
                    Err(error) => Some(rejected(id, error)),
                }
            }
        }
    }

    /// Commits everything staged, then lets out what waited for it. On an error nothing is
    /// let out, and the engine must not be used again: its memory is ahead of the database
    /// (the next start loads the last committed state).
    pub fn commit(&mut self) -> Result<Released, QueueError> {
        // Also with nothing staged: a failed read this turn (a task looked up and not found
        // for it) must stop what the turn decided from going out.
        self.queue.commit()?;
        let mut released = std::mem::take(&mut self.staged);
        released.unstored = self.queue.take_unstored();
        released.appended = self.queue.take_appended();
        Ok(released)
    }

    /// Whether the data directory's disk is (nearly) full, as the caller measures it: while
    /// it is, new submissions are rejected with `storage_full` (see [`Queue::set_storage_full`]).
    pub fn set_storage_full(&mut self, full: bool) {
        self.queue.set_storage_full(full);
    }

    /// `Assign`s sent to `link` since it opened (what its credit reports are counted against).
    pub fn assigns_sent(&self, link: LinkId) -> u64 {
        self.devices.assigns_sent(link)
    }

    /// The timer-clock time at which the engine must be dispatched again, if any: when a
    /// queued task's retry delay ends or its deadline passes (as of the last dispatch).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timer
    }

    /// The `{root}/bridge/stats` document.
    pub fn stats(&self, now: Now) -> BridgeStats {
        let devices = self
            .devices
            .iter()
            .map(|(id, o)| {
                let stats = DeviceStats {
                    free_slots: o.credit,
                    reserved: o.reserve,
                    in_flight: self.queue.in_flight(id),
                    slots: o.hello.slots,
                };
                (id.clone(), stats)
            })
            .collect();
        let (_, on) = self.class_load();
        let queued = self.queue.depth();
        let classes = dispatch::CLASSES
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let stats = ClassStats {
                    queued: queued[2 * c] + queued[2 * c + 1],
                    in_flight: on[c],
                    max_percent: self.class_quota[c],
                };
                ((*name).to_owned(), stats)
            })
            .collect();
        BridgeStats {
            classes,
            devices,
            dispatch_examined: self.dispatch_examined,
            expired: self.expired,
            preemptions: self.preemptions,
            submissions_lost: self.submissions_lost,
            urgent_wait: WaitStats::of(self.urgent_waits.iter().copied()),
            live: self.queue.len(),
            outbox: OutboxStats {
                depth: self.queue.outbox_len(),
                limit: self.queue.outbox_limit(),
                shed: self.queue.shed(),
            },
            queued: self.queue.depth(),
            // The caller measures the disk.
            storage: StorageStats::default(),
            ts_ms: now.wall_ms,
        }
    }
}

impl Engine {
    /// The engine's part of a metrics [`Snapshot`] (the caller adds what the run loop knows:
    /// sessions and the broker connection). Costs one step per device known; nothing scans
    /// the queue.
    pub fn metrics(&self, now: Now) -> Snapshot {
        let mut devices: Vec<DeviceFigures> = self
            .devices
            .iter()
            .map(|(id, o)| DeviceFigures {
                id: id.clone(),
                online: Some(DeviceLoad {
                    slots: o.hello.slots,
                    in_flight: self.queue.in_flight(id) as u64,
                    credit: o.credit,
                    reserved: o.reserve,
                }),
            })
            .collect();
        // Known devices not online (u64::MAX marks the online ones in the queue's record).
        let offline =
            self.queue.offline().iter().filter(|(id, since)| {
                **since != u64::MAX && self.devices.get(id.as_str()).is_none()
            });
        devices.extend(offline.map(|(id, _)| DeviceFigures {
            id: id.clone(),
            online: None,
        }));
        devices.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let mut finished = *self.queue.finished();
        finished.count_many(TaskState::Rejected, self.rejected_submissions);
        Snapshot {
            devices,
            queued: self.queue.depth(),
            oldest_queued_ms: self
                .queue
                .oldest_queued_ms()
                .map(|accepted| now.wall_ms.saturating_sub(accepted)),
            dispatch_waits: self.dispatch_waits.clone(),
            deadline_misses: self.expired,
            preemptions: self.preemptions,
            finished,
            live: self.queue.len() as u64,
            outbox: self.queue.outbox_len(),
            submissions_lost: self.submissions_lost,
            ..Snapshot::default()
        }
    }
}

/// Kinds of remote events the engine logs within a budget (see `Engine::log_due`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Remote {
    /// A submission refused (queue, outbox or disk full, id conflict).
    Rejection,
    /// A cancel for an id never submitted.
    UnseenCancel,
    /// A retained message on an API topic.
    Retained,
    /// A link without credentials claiming a proven device id.
    Claim,
    /// A query that names no reply topic.
    Query,
}

impl Remote {
    const KINDS: usize = 5;
}

/// Where a refused submission is reported: its status topic when its id was readable, the
/// errors topic otherwise (with the start of what was received, to find the sender).
fn rejection_entry(r: api::Rejection, payload: &[u8], wall_ms: u64) -> OutboxEntry {
    match r.id {
        Some(id) => OutboxEntry::status(&StatusEvent::rejected(id, r.trace_id, r.error, wall_ms)),
        None => {
            let received: String = String::from_utf8_lossy(payload).chars().take(200).collect();
            let event = ErrorEvent {
                error: r.error,
                id: None,
                trace_id: r.trace_id,
                received,
                ts_ms: wall_ms,
            };
            OutboxEntry::new("errors".into(), &event, false)
        }
    }
}
