//! The cooperative runtime firmware embeds: capability handlers as step functions, driven by
//! the [`Scheduler`], fed by the link.
//!
//! - [`Runtime`] turns `Assign`s into scheduled tasks, runs one step at a time of the most
//!   urgent one (so a more urgent task preempts at the next step boundary), takes the locks a
//!   task declares through the scheduler (priority inheritance applies), and produces the
//!   `Report`s: `Running` when a task starts, then exactly one of `Completed`, `Failed`,
//!   `Expired` or `Cancelled` — or, for a task given back to the bridge
//!   ([`Runtime::preempt`]: before it started, or at a step boundary if its capability was
//!   registered [`Preemption::Restart`] or [`Preemption::Resume`]), a `Suspended` instead of
//!   any terminal report. A task given back with its checkpoint is resumed (here or on
//!   another device) by a `Restore` followed by its `Assign` ([`Runtime::restore`]). A task's
//!   base priority may change while it runs ([`Runtime::reprioritize`], the bridge lending it
//!   the priority of a task waiting for a resource it holds on another device). Locks that tasks
//!   may name are declared by name ([`Runtime::declare_lock`]); the device advertises the
//!   names in `Hello`, in lock-id order, and the bridge turns a task's lock names into those
//!   ids.
//! - [`Device`] joins a runtime and a [`Session`](crate::link::Session): it is the whole
//!   device side of the protocol, with flow control and dedup.
//!
//! **At most once per boot.** A finished task keeps its slot — and its result — until the
//! bridge has acknowledged its terminal report; a replayed `Assign` for that handle gets the
//! report again instead of a second run. The bridge acknowledges a report only after it has
//! committed it, and never replays a task whose end it has committed, so after that ack the
//! handle cannot come back; a ring of recently acknowledged handles refuses it anyway
//! (`Reject` with [`RejectReason::Finished`]). Keeping the slot until the ack also makes
//! flow control push back: a device whose reports are not getting through advertises no free
//! slots, so the bridge stops sending. A `Suspended` ends a handle on the device the same way:
//! the slot is freed, and the handle remembered, once it is acknowledged (the bridge gives a
//! returned task a new handle).

mod device;
#[cfg(test)]
mod tests;

pub use device::Device;

use core::fmt;

use heapless::{Deque, Vec};

use crate::proto::{
    Assign, CapabilityName, Handle, LockName, MAX_LOCK_NAME, MAX_LOCKS, MAX_PAYLOAD, MAX_SCRATCH,
    MAX_TASK_LOCKS, Payload, Preemption, Reject, RejectReason, Report, Restore, Suspended,
    TaskReport, valid_lock_name,
};
use crate::{Acquire, Event, Instant, LockId, Priority, Scheduler, TaskId, TaskSpec};

/// Per-task bytes a handler keeps across its steps (a counter, a start time, a state byte):
/// the protocol's [`MAX_SCRATCH`], since a checkpoint carries them in `Suspended`.
pub const SCRATCH_BYTES: usize = MAX_SCRATCH;
/// Acknowledged handles remembered to refuse replays (see the module docs).
pub const RECENT_HANDLES: usize = 16;

/// Error codes the runtime itself reports in `Report::error` (handlers use codes below 0xFF00).
pub mod codes {
    /// A declared lock would have deadlocked.
    pub const LOCK_DEADLOCK: u16 = 0xFF01;
    /// A declared lock's ceiling is below the task's priority.
    pub const LOCK_CEILING: u16 = 0xFF02;
}

/// What one step of a handler returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Step {
    /// More steps to go; a more urgent task may run before the next one.
    Continue,
    /// Finished; the result is what the handler wrote into [`Ctx::result`].
    Done,
    /// Failed with a handler-defined code (below 0xFF00).
    Fail(u16),
}

/// What a handler sees during one step.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub handle: Handle,
    /// The task's input.
    pub payload: &'a [u8],
    /// The task's output, kept across steps.
    pub result: &'a mut Payload,
    /// Handler state kept across steps, zeroed when the task is admitted (or, for a task
    /// resumed from a checkpoint, the checkpoint's scratch, zero-padded).
    pub scratch: &'a mut [u8; SCRATCH_BYTES],
    /// Steps this task has already run (0 on the first; a resumed task continues from its
    /// checkpoint's count).
    pub step: u32,
    pub now: Instant,
}

/// A capability handler: one step of work per call, never blocking.
pub type Handler = fn(&mut Ctx<'_>) -> Step;

/// Why [`Runtime::declare_lock`] refused a name. Nothing was declared.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum LockNameError {
    /// Not a lock name (see [`valid_lock_name`]).
    Invalid,
    /// Every lock of the table (`L`), or as many as `Hello` can advertise
    /// ([`MAX_LOCKS`]), already has a name.
    NoRoom,
}

impl fmt::Display for LockNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid => write!(
                f,
                "not a lock name (1 to {MAX_LOCK_NAME} bytes of ASCII letters, digits, '.', '_', '-')"
            ),
            Self::NoRoom => f.write_str("every lock that can be advertised already has a name"),
        }
    }
}

impl core::error::Error for LockNameError {}

/// A task's runtime data, in the slot the scheduler gave it.
#[derive(Debug)]
pub(crate) struct Task {
    id: TaskId,
    handle: Handle,
    handler: Handler,
    /// The priority of its `Assign`: what a ceiling lock is checked against while a
    /// `Reprioritize` has raised the task above it (see [`Runtime::reprioritize`]).
    assigned: Priority,
    locks: Vec<u8, MAX_TASK_LOCKS>,
    /// Declared locks already held.
    locked: u8,
    payload: Payload,
    result: Payload,
    scratch: [u8; SCRATCH_BYTES],
    steps: u32,
    /// What a `Preempt` may do once the task has started (its capability's mode).
    preemption: Preemption,
    /// A step ran or a lock was taken on this device: from then on a `Preempt` is up to
    /// `preemption` (a resumed task has `steps > 0` before it starts here).
    started: bool,
    /// The `Running` report is owed.
    running_owed: bool,
    /// How the task ended, once it has.
    end: Option<End>,
    /// The terminal report (or `Suspended`) is owed.
    end_owed: bool,
    /// Ticket of the terminal report (or `Suspended`) handed to the session; the slot is
    /// freed once acked.
    ticket: Option<u32>,
}

/// How a task ended on this device: the last message the device owes for its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Finished: a terminal `Report` with this state and error code.
    Report(TaskReport, Option<u16>),
    /// Given back to the bridge: a `Suspended` with the task's checkpoint.
    Suspended,
}

/// A registered capability.
#[derive(Debug)]
struct Capability {
    name: CapabilityName,
    handler: Handler,
    preemption: Preemption,
}

/// The cooperative runtime: `N` task slots, `L` locks, `C` capabilities.
#[derive(Debug)]
pub struct Runtime<const N: usize, const L: usize, const C: usize> {
    sched: Scheduler<N, L>,
    handlers: Vec<Capability, C>,
    /// Names of locks `0..len`, in id order: advertised in `Hello` so that tasks can name them.
    lock_names: Vec<LockName, L>,
    tasks: [Option<Task>; N],
    recent: Deque<Handle, RECENT_HANDLES>,
    max_payload: usize,
    /// The checkpoint for the `Assign` that must come next (see [`restore`](Self::restore)).
    /// One is enough: the bridge sends each `Restore` right before its `Assign`. Costs 288
    /// bytes on 32-bit targets (a `Payload` of 260 and a scratch `Vec` of 20).
    restore: Option<Restore>,
    /// Restores dropped because their `Assign` did not come next (a bridge fault).
    dropped_restores: u32,
}

impl<const N: usize, const L: usize, const C: usize> Default for Runtime<N, L, C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const L: usize, const C: usize> Runtime<N, L, C> {
    /// A runtime with no capabilities, accepting payloads up to [`MAX_PAYLOAD`].
    pub fn new() -> Self {
        const { assert!(N <= u8::MAX as usize, "at most 255 task slots") };
        Self {
            sched: Scheduler::new(),
            handlers: Vec::new(),
            lock_names: Vec::new(),
            tasks: [const { None }; N],
            recent: Deque::new(),
            max_payload: MAX_PAYLOAD,
            restore: None,
            dropped_restores: 0,
        }
    }

    /// Lowers the largest payload accepted (advertised in `Hello`).
    pub fn set_max_payload(&mut self, bytes: usize) {
        self.max_payload = bytes.min(MAX_PAYLOAD);
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Registers `handler` for capability `name`, whose started tasks are never preempted
    /// ([`Preemption::Never`]); see [`register_with`](Self::register_with).
    pub fn register(&mut self, name: &str, handler: Handler) -> Result<(), Handler> {
        self.register_with(name, handler, Preemption::Never)
    }

    /// Registers `handler` for capability `name`, declaring what a `Preempt` may do to its
    /// started tasks (advertised in `Hello`). Registering a name again replaces its handler
    /// and mode. The handler is handed back when `C` capabilities are registered or the name
    /// is longer than a `CapabilityName`.
    ///
    /// [`Preemption::Resume`] requires the handler to keep all its state across steps in
    /// `Ctx::scratch`, `Ctx::result` and `Ctx::step`: it is resumed from those alone.
    pub fn register_with(
        &mut self,
        name: &str,
        handler: Handler,
        preemption: Preemption,
    ) -> Result<(), Handler> {
        let name = CapabilityName::try_from(name).map_err(|_| handler)?;
        if let Some(existing) = self.handlers.iter_mut().find(|c| c.name == name) {
            existing.handler = handler;
            existing.preemption = preemption;
            return Ok(());
        }
        let capability = Capability {
            name,
            handler,
            preemption,
        };
        self.handlers.push(capability).map_err(|c| c.handler)
    }

    /// The registered capability names.
    pub fn capabilities(&self) -> impl Iterator<Item = &CapabilityName> {
        self.handlers.iter().map(|c| &c.name)
    }

    /// The preemption mode of capability `name`; `None` if not registered.
    pub fn preemption(&self, name: &str) -> Option<Preemption> {
        self.handlers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.preemption)
    }

    /// `Hello`'s `(resumable, restartable)` masks: bit `i` for the `i`-th capability (of at
    /// most 8, as `Hello` advertises).
    pub(crate) fn preemption_masks(&self) -> (u8, u8) {
        let mut masks = (0, 0);
        for (i, c) in self.handlers.iter().enumerate().take(u8::BITS as usize) {
            match c.preemption {
                Preemption::Resume => masks.0 |= 1 << i,
                Preemption::Restart => masks.1 |= 1 << i,
                Preemption::Never => {}
            }
        }
        masks
    }

    /// Restores dropped because the `Assign` of their handle did not come next.
    pub fn dropped_restores(&self) -> u32 {
        self.dropped_restores
    }

    /// Takes a `Restore`: the checkpoint for the `Assign` of the same handle, which must be
    /// the next `Assign` (or `Restore`) taken; any other drops it (counted in
    /// [`dropped_restores`](Self::dropped_restores)), as does another `Restore`. A `Restore`
    /// is never refused itself: the `Assign` it precedes is, with
    /// [`RejectReason::NotResumable`], if its capability is not [`Preemption::Resume`] (a
    /// scratch longer than [`MAX_SCRATCH`] cannot be decoded at all).
    pub fn restore(&mut self, restore: Restore) {
        if self.restore.replace(restore).is_some() {
            self.dropped_restores = self.dropped_restores.wrapping_add(1);
        }
    }

    /// Names the next lock of the table (lock 0 first) and returns its id, which the bridge
    /// puts in the `Assign` of every task naming it; declaring a name again returns the id it
    /// already has. Tasks take their declared locks through the scheduler, so policies set
    /// with [`scheduler_mut`](Self::scheduler_mut) apply. Locks beyond the named ones remain
    /// the firmware's own.
    pub fn declare_lock(&mut self, name: &str) -> Result<crate::LockId, LockNameError> {
        if !valid_lock_name(name) {
            return Err(LockNameError::Invalid);
        }
        let position = self.lock_names.iter().position(|n| n == name);
        let index = match position {
            Some(i) => i,
            None if self.lock_names.len() < MAX_LOCKS => {
                let name = LockName::try_from(name).map_err(|_| LockNameError::Invalid)?;
                self.lock_names
                    .push(name)
                    .map_err(|_| LockNameError::NoRoom)?;
                self.lock_names.len() - 1
            }
            None => return Err(LockNameError::NoRoom),
        };
        // Below `L <= 255` (the scheduler's bound) or `MAX_LOCKS`: it fits a `u8`.
        Ok(LockId::new(index as u8))
    }

    /// The declared lock names, in lock-id order.
    pub fn lock_names(&self) -> impl Iterator<Item = &LockName> {
        self.lock_names.iter()
    }

    /// The scheduler, to set lock policies at start-up.
    pub fn scheduler_mut(&mut self) -> &mut Scheduler<N, L> {
        &mut self.sched
    }

    /// Free task slots (a finished task holds its slot until its report is acknowledged).
    pub fn free_slots(&self) -> u8 {
        self.sched.free_slots().min(255) as u8
    }

    /// Takes an `Assign`. A replay of a handle still held answers with its current state
    /// again (the report is re-queued) and does not run it twice. Right after a
    /// [`restore`](Self::restore) of its handle, the task starts from that checkpoint.
    pub fn assign(&mut self, a: Assign, now: Instant) -> Result<(), Reject> {
        let reject = |reason| {
            Err(Reject {
                handle: Some(a.handle),
                reason,
            })
        };
        let restore = match self.restore.take() {
            Some(r) if r.handle == a.handle => Some(r),
            Some(_) => {
                self.dropped_restores = self.dropped_restores.wrapping_add(1);
                None
            }
            None => None,
        };
        if let Some(task) = self.task_mut(a.handle) {
            if task.end.is_some() {
                task.end_owed = true;
            } else if task.started {
                task.running_owed = true;
            }
            return Ok(());
        }
        if self.recent.iter().any(|&h| h == a.handle) {
            return reject(RejectReason::Finished);
        }
        let Some((handler, preemption)) = self
            .handlers
            .iter()
            .find(|c| c.name == a.capability)
            .map(|c| (c.handler, c.preemption))
        else {
            return reject(RejectReason::UnknownCapability);
        };
        if restore.is_some() && preemption != Preemption::Resume {
            return reject(RejectReason::NotResumable);
        }
        if a.payload.len() > self.max_payload {
            return reject(RejectReason::PayloadTooLarge);
        }
        if a.locks.iter().any(|&l| usize::from(l) >= L) {
            return reject(RejectReason::UnknownLock);
        }
        let mut spec = TaskSpec::new(a.priority);
        if let Some(ms) = a.deadline_ms {
            spec = spec.deadline(now.saturating_add_millis(u64::from(ms)));
        }
        let Ok(id) = self.sched.admit(spec, now) else {
            return reject(RejectReason::NoFreeSlot);
        };
        let mut scratch = [0; SCRATCH_BYTES];
        let (steps, result) = match restore {
            Some(r) => {
                scratch[..r.scratch.len()].copy_from_slice(&r.scratch);
                (r.steps, r.result)
            }
            None => (0, Payload::new()),
        };
        self.tasks[id.slot()] = Some(Task {
            id,
            handle: a.handle,
            handler,
            assigned: a.priority,
            locks: a.locks,
            locked: 0,
            payload: a.payload,
            result,
            scratch,
            steps,
            preemption,
            started: false,
            running_owed: false,
            end: None,
            end_owed: false,
            ticket: None,
        });
        // Admission may expire it at once (deadline already passed).
        self.collect_events();
        Ok(())
    }

    /// Cancels a task that has not finished; it ends `Cancelled` and is reported. A task
    /// already finished (or given back) is left alone (its report stands).
    pub fn cancel(&mut self, handle: Handle) -> Result<(), Reject> {
        let Some(task) = self.held(handle)? else {
            return Ok(());
        };
        if task.end.is_none() {
            let id = task.id;
            let _ = self.sched.cancel(id);
            self.end(id.slot(), End::Report(TaskReport::Cancelled, None));
        }
        Ok(())
    }

    /// Gives a task back to the bridge (`Preempt`). The runtime is only ever called between
    /// steps, so a task is stopped at a step boundary at once: it leaves the scheduler (a
    /// wait it was in ends, every lock it holds passes to its waiters, and the priorities it
    /// lent or borrowed are recomputed) and a `Suspended` is owed
    /// ([`poll_suspended`](Self::poll_suspended)); its slot stays taken until that is
    /// acknowledged, and its handle then counts as finished. What the `Suspended` carries:
    /// - a task that has not started here (no step run, no lock taken — a task waiting for
    ///   its first lock has not, though its `Running` may have been reported): its checkpoint
    ///   as admitted, empty unless it was resumed from one;
    /// - a started task of a [`Preemption::Resume`] capability: its checkpoint (`steps`, the
    ///   16 scratch bytes, the partial result);
    /// - a started task of a [`Preemption::Restart`] capability: an empty checkpoint.
    ///
    /// A started task of a [`Preemption::Never`] capability is refused
    /// [`RejectReason::Started`] and keeps running. As with [`cancel`](Self::cancel), a task
    /// that already ended is left alone (its report stands), and an unknown handle is
    /// refused [`RejectReason::UnknownTask`]. A replay for a task already given back owes the
    /// same `Suspended` again.
    pub fn preempt(&mut self, handle: Handle) -> Result<(), Reject> {
        let Some(task) = self.held(handle)? else {
            return Ok(());
        };
        match task.end {
            Some(End::Suspended) => task.end_owed = true,
            Some(End::Report(..)) => {}
            None if task.started && task.preemption == Preemption::Never => {
                return Err(Reject {
                    handle: Some(handle),
                    reason: RejectReason::Started,
                });
            }
            None => {
                if task.started && task.preemption == Preemption::Restart {
                    // Started over elsewhere: nothing of this run is worth keeping.
                    task.steps = 0;
                    task.scratch = [0; SCRATCH_BYTES];
                    task.result.clear();
                }
                let id = task.id;
                let _ = self.sched.cancel(id);
                self.end(id.slot(), End::Suspended);
            }
        }
        Ok(())
    }

    /// Runs a task at another base priority (`Reprioritize`). The runtime is only ever called
    /// between steps, so the change applies at the next step boundary: a raised task runs
    /// before every less urgent one, and a lowered one yields to the more urgent ones. Its
    /// locks pass the new priority on as inheritance does (a task blocked on a lock lends it to
    /// the holder, and onward along the chain); a priority lent to the task by its own waiters
    /// still applies on top. Setting the priority it already has changes nothing, so a replay
    /// is harmless. As with [`cancel`](Self::cancel), a task that already ended (or was given
    /// back) is left alone, and an unknown handle is refused [`RejectReason::UnknownTask`].
    ///
    /// A raise is a loan, not a new design priority: the ceiling of a ceiling lock the task
    /// takes later is checked against its `Assign`'s priority, so a task raised above the
    /// ceiling of a lock it declared still takes it (and runs at the raised priority).
    pub fn reprioritize(&mut self, handle: Handle, priority: Priority) -> Result<(), Reject> {
        let Some(task) = self.held(handle)? else {
            return Ok(());
        };
        if task.end.is_none() {
            let id = task.id;
            let _ = self.sched.set_base_priority(id, priority);
        }
        Ok(())
    }

    /// Runs one step of the most urgent runnable task. Returns `false` when there was nothing
    /// to run (the firmware may sleep until [`poll_timeout`](Self::poll_timeout) or input).
    pub fn step(&mut self, now: Instant) -> bool {
        let next = self.sched.next(now);
        self.collect_events();
        let Some(id) = next else { return false };
        let Some(task) = self.tasks[id.slot()].as_mut() else {
            // Cannot happen: every admitted task has its data. Fail it rather than spin.
            let _ = self.sched.fail(id);
            return true;
        };
        if !task.started {
            task.running_owed = true;
        }
        if let Some(&lock) = task.locks.get(usize::from(task.locked)) {
            let lock = LockId::new(lock);
            let outcome = if self.sched.holds(id, lock) {
                Ok(Acquire::Acquired)
            } else {
                // Taken as the assigned priority when a `Reprioritize` raised the task above
                // it, so that the raise never trips a ceiling (see `reprioritize`); the raised
                // base comes back at once, before anything else runs.
                let raised = self.sched.base_priority(id);
                let raised = raised.filter(|p| p.outranks(task.assigned));
                if raised.is_some() {
                    let _ = self.sched.set_base_priority(id, task.assigned);
                }
                let outcome = self.sched.lock(id, lock, None, now);
                if let Some(p) = raised {
                    let _ = self.sched.set_base_priority(id, p);
                }
                outcome
            };
            match outcome {
                Ok(Acquire::Acquired) => {
                    task.locked += 1;
                    task.started = true;
                }
                Ok(Acquire::Blocked) => {}
                Err(e) => {
                    let code = if e == crate::SchedError::Deadlock {
                        codes::LOCK_DEADLOCK
                    } else {
                        codes::LOCK_CEILING
                    };
                    let _ = self.sched.fail(id);
                    self.end(id.slot(), End::Report(TaskReport::Failed, Some(code)));
                }
            }
            return true;
        }
        let mut ctx = Ctx {
            handle: task.handle,
            payload: &task.payload,
            result: &mut task.result,
            scratch: &mut task.scratch,
            step: task.steps,
            now,
        };
        let outcome = (task.handler)(&mut ctx);
        task.steps = task.steps.saturating_add(1);
        task.started = true;
        match outcome {
            Step::Continue => {}
            Step::Done => {
                let _ = self.sched.complete(id);
                self.end(id.slot(), End::Report(TaskReport::Completed, None));
            }
            Step::Fail(code) => {
                let _ = self.sched.fail(id);
                self.end(id.slot(), End::Report(TaskReport::Failed, Some(code)));
            }
        }
        true
    }

    /// When the runtime next has timed work (a release, a deadline, a lock timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sched.poll_timeout()
    }

    /// The next report owed, to be sent as the reliable message numbered `ticket` (the
    /// session's `sent_total() + 1`); the caller must send it. Terminal reports go first, and
    /// a task's `Running` report is dropped once its end is known.
    pub fn poll_report(&mut self, ticket: u32) -> Option<Report> {
        let terminal = self.tasks.iter_mut().flatten().find_map(|t| match t.end {
            Some(End::Report(state, error)) if t.end_owed => Some((t, state, error)),
            _ => None,
        });
        if let Some((t, state, error)) = terminal {
            t.end_owed = false;
            t.running_owed = false;
            t.ticket = Some(ticket);
            return Some(Report {
                handle: t.handle,
                state,
                result: t.result.clone(),
                error,
            });
        }
        let t = self
            .tasks
            .iter_mut()
            .flatten()
            .find(|t| t.running_owed && t.end.is_none())?;
        t.running_owed = false;
        let state = TaskReport::Running;
        Some(Report {
            handle: t.handle,
            state,
            result: Payload::new(),
            error: None,
        })
    }

    /// The next `Suspended` owed (a task given back by [`preempt`](Self::preempt)), to be
    /// sent as the reliable message numbered `ticket`, as for
    /// [`poll_report`](Self::poll_report); the caller must send it.
    pub fn poll_suspended(&mut self, ticket: u32) -> Option<Suspended> {
        let owed = |t: &&mut Task| t.end_owed && t.end == Some(End::Suspended);
        let t = self.tasks.iter_mut().flatten().find(owed)?;
        t.end_owed = false;
        t.ticket = Some(ticket);
        // The checkpoint at the step boundary: no scratch for a task that never ran a step
        // (or whose run was discarded, `Preemption::Restart`).
        let mut scratch = heapless::Vec::new();
        if t.steps > 0 {
            let _ = scratch.extend_from_slice(&t.scratch);
        }
        Some(Suspended {
            handle: t.handle,
            steps: t.steps,
            scratch,
            result: t.result.clone(),
        })
    }

    /// Frees the slots of tasks whose terminal report or `Suspended` the peer acknowledged
    /// (`acked_total` from the session) and remembers their handles.
    pub fn on_acked(&mut self, acked_total: u32) {
        for slot in self.tasks.iter_mut() {
            let done = slot.as_ref().is_some_and(|t| {
                t.ticket
                    .is_some_and(|k| !t.end_owed && acked_total.wrapping_sub(k) < u32::MAX / 2)
            });
            if done {
                if let Some(t) = slot.take() {
                    let _ = self.sched.remove(t.id);
                    if self.recent.is_full() {
                        self.recent.pop_front();
                    }
                    let _ = self.recent.push_back(t.handle);
                }
            }
        }
    }

    /// Whether a report or a `Suspended` is owed.
    pub fn has_reports(&self) -> bool {
        self.tasks
            .iter()
            .flatten()
            .any(|t| t.end_owed || (t.running_owed && t.end.is_none()))
    }

    /// The task holding `handle`, for a `Cancel`, `Preempt` or `Reprioritize`: `None` for a handle that ended
    /// here and whose report was acknowledged (nothing left to do), `UnknownTask` for any other.
    fn held(&mut self, handle: Handle) -> Result<Option<&mut Task>, Reject> {
        if self.recent.iter().any(|&h| h == handle) && self.task_mut(handle).is_none() {
            return Ok(None);
        }
        self.task_mut(handle).map(Some).ok_or(Reject {
            handle: Some(handle),
            reason: RejectReason::UnknownTask,
        })
    }

    fn task_mut(&mut self, handle: Handle) -> Option<&mut Task> {
        self.tasks.iter_mut().flatten().find(|t| t.handle == handle)
    }

    fn end(&mut self, slot: usize, end: End) {
        if let Some(t) = self.tasks[slot].as_mut() {
            t.end = Some(end);
            t.end_owed = true;
            t.running_owed = false;
            // A suspended task keeps its partial result: it is part of the checkpoint.
            if !matches!(end, End::Report(TaskReport::Completed, _) | End::Suspended) {
                t.result.clear();
            }
        }
    }

    /// Turns scheduler events into task ends (expiry); wait timeouts cannot happen, since
    /// declared locks are taken without timeout.
    fn collect_events(&mut self) {
        while let Some(e) = self.sched.poll_event() {
            if let Event::Expired(id) = e {
                self.end(id.slot(), End::Report(TaskReport::Expired, None));
            }
        }
    }
}
