//! The fixed-capacity scheduler.
//!
//! [`Scheduler<N, L>`] holds up to `N` tasks and `L` locks in plain arrays, with no heap.
//! It is a sans-IO state machine: the firmware's runtime calls [`Scheduler::next`] between
//! steps of its cooperative tasks, passing the current time, and gets back which task to step.
//! Timers surface through [`Scheduler::poll_timeout`], and things the runtime must report
//! (expired tasks, lock waits that timed out) through [`Scheduler::poll_event`].
//!
//! Ordering: the most urgent *effective* priority first; inside a level the earliest deadline;
//! then admission order. A task that has started is only ever preempted at a step boundary, and
//! only by a task of strictly more urgent effective priority ([`Scheduler::should_preempt`]).

mod locks;
mod ready;

pub use locks::Acquire;

use crate::{Instant, LockId, Priority, SchedError, TaskId, TaskSpec, TaskState};
use locks::LockSlot;
use ready::ReadyLists;

/// "No slot" / "no lock" in the `u8` index fields.
const NONE: u8 = u8::MAX;

/// `Slot::flags`: the task has been picked at least once, so its deadline no longer applies.
const STARTED: u8 = 1 << 0;
/// `Slot::flags`: an [`Event::Expired`] is waiting to be polled.
const EV_EXPIRED: u8 = 1 << 1;
/// `Slot::flags`: an [`Event::WaitTimedOut`] is waiting to be polled.
const EV_TIMED_OUT: u8 = 1 << 2;

/// Something the runtime has to act on, reported once by [`Scheduler::poll_event`]. Events are
/// kept as flags in the task's slot, so they can neither overflow nor be dropped; removing
/// the task discards its unpolled events.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// The task's deadline passed before it started; it is now [`TaskState::Expired`].
    Expired(TaskId),
    /// The task's wait for the lock timed out; it is `Ready` again without the lock.
    WaitTimedOut(TaskId, LockId),
}

/// `Slot::order >> 16` of a task without a deadline (and of one whose deadline is 2^48 ms,
/// some 8,900 years, or later).
const NO_DEADLINE: u64 = (1 << 48) - 1;

/// One task slot: 24 bytes (checked by a test).
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The task's place inside its priority level, one integer so that ordering is one
    /// comparison: its latest start (exclusive) in ms in the high 48 bits (`NO_DEADLINE` for
    /// none), its admission rank in the low 16 (FIFO among equal deadlines; renumbered before
    /// the counter would wrap, see [`Scheduler::renumber`]).
    order: u64,
    /// Release time while `Pending`, wait timeout while `Blocked`, in ms; `u64::MAX` = none.
    timer: u64,
    /// Bumped when the slot is freed, so stale `TaskId`s are refused.
    generation: u8,
    /// `None` while the slot is free.
    state: Option<TaskState>,
    base: Priority,
    /// Derived from `base` and the lock graph by `recompute_priorities`.
    eff: Priority,
    /// Lock this task is blocked on, or `NONE`.
    waiting_on: u8,
    /// Next slot in this task's ready list, or `NONE`.
    next: u8,
    /// `STARTED` and pending-event bits.
    flags: u8,
    /// The lock of a pending `WaitTimedOut` event.
    timed_out_on: u8,
}

impl Slot {
    const FREE: Self = Self {
        order: u64::MAX,
        timer: u64::MAX,
        generation: 0,
        state: None,
        base: Priority::P5,
        eff: Priority::P5,
        waiting_on: NONE,
        next: NONE,
        flags: 0,
        timed_out_on: NONE,
    };

    /// The latest start (exclusive) in ms; `NO_DEADLINE` = none, which as an instant is never
    /// reached (and is left out of [`Scheduler::poll_timeout`]).
    fn deadline(&self) -> u64 {
        self.order >> 16
    }

    /// The admission rank.
    fn seq(&self) -> u16 {
        self.order as u16
    }
}

/// Fixed-capacity priority scheduler with `N` task slots and `L` locks (both at most 254).
///
/// See the [module documentation](self) for the ordering rules and [`crate`] for an example.
#[derive(Clone, Debug)]
pub struct Scheduler<const N: usize, const L: usize> {
    slots: [Slot; N],
    locks: [LockSlot; L],
    ready: ReadyLists,
    /// Slot of the executing task, or `NONE`.
    current: u8,
    /// The admission rank of the next task (see [`Slot::order`]).
    next_seq: u32,
    /// No timer (release, start deadline, lock-wait timeout) is due before this instant, in ms:
    /// a lower bound lowered whenever a timer is set and recomputed by a full `advance` scan,
    /// so that `next()` at a step boundary skips the O(N) scan when nothing can be due.
    due: u64,
}

impl<const N: usize, const L: usize> Default for Scheduler<N, L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const L: usize> Scheduler<N, L> {
    /// An empty scheduler; every lock uses [`LockPolicy::Inherit`](crate::LockPolicy::Inherit).
    pub const fn new() -> Self {
        const {
            assert!(
                N < NONE as usize && L < NONE as usize,
                "at most 254 tasks and locks"
            );
        };
        Self {
            slots: [Slot::FREE; N],
            locks: [LockSlot::FREE; L],
            ready: ReadyLists::EMPTY,
            current: NONE,
            next_seq: 0,
            due: u64::MAX,
        }
    }

    /// Admits a task. It is `Ready` at once unless `spec.release_at` is in the future
    /// (`Pending`), or `Expired` at once if its deadline is not after `now`.
    ///
    /// When every slot is taken (including by finished tasks not yet [`removed`](Self::remove))
    /// the spec is handed back.
    pub fn admit(&mut self, spec: TaskSpec, now: Instant) -> Result<TaskId, TaskSpec> {
        let Some(i) = self.slots.iter().position(|s| s.state.is_none()) else {
            return Err(spec);
        };
        if self.next_seq > u32::from(u16::MAX) {
            self.renumber();
        }
        let seq = u64::from(self.next_seq);
        self.next_seq += 1;
        let deadline = spec
            .deadline
            .map_or(NO_DEADLINE, |d| d.as_millis().min(NO_DEADLINE));
        let slot = &mut self.slots[i];
        *slot = Slot {
            order: deadline << 16 | seq,
            timer: u64::MAX,
            generation: slot.generation,
            state: Some(TaskState::Ready),
            base: spec.priority,
            eff: spec.priority,
            ..Slot::FREE
        };
        let idx = i as u8;
        self.due = self.due.min(slot.deadline());
        match spec.release_at {
            Some(at) if at > now => {
                slot.state = Some(TaskState::Pending);
                slot.timer = at.as_millis();
                self.due = self.due.min(slot.timer);
            }
            _ => self.ready_insert(idx),
        }
        self.expire_if_due(idx, now);
        Ok(self.id_of(idx))
    }

    /// Gives the tasks in their slots the admission ranks 0, 1, … in their order, so that the
    /// 16-bit ranks of [`Slot::order`] keep FIFO order however many tasks a device admits over
    /// its life. Runs once per 65,536 admissions: O(N²) comparisons, no memory but N ranks on
    /// the stack.
    fn renumber(&mut self) {
        let mut ranks = [0u16; N];
        for (rank, a) in ranks.iter_mut().zip(&self.slots) {
            let earlier = self
                .slots
                .iter()
                .filter(|b| b.state.is_some() && b.seq() < a.seq())
                .count();
            *rank = earlier as u16;
        }
        let mut live = 0;
        for (slot, rank) in self.slots.iter_mut().zip(ranks) {
            if slot.state.is_some() {
                slot.order = (slot.order & !0xFFFF) | u64::from(rank);
                live += 1;
            }
        }
        self.next_seq = live;
    }

    /// Brings the scheduler to `now` (releases pending tasks, expires tasks whose deadline
    /// passed before they started, ends timed-out lock waits) and returns the task whose next
    /// step should run: the executing task, unless a ready task strictly outranks it, in which
    /// case that task is picked and the executing one goes back to `Ready`. `None` when there
    /// is nothing to run.
    pub fn next(&mut self, now: Instant) -> Option<TaskId> {
        self.advance(now);
        if self.current != NONE {
            if !self.should_preempt() {
                return Some(self.id_of(self.current));
            }
            let cur = self.current;
            self.slots[cur as usize].state = Some(TaskState::Ready);
            self.ready_insert(cur);
            self.current = NONE;
        }
        let idx = self.ready.peek()?;
        let eff = self.slots[idx as usize].eff;
        self.ready_remove(idx, eff);
        let slot = &mut self.slots[idx as usize];
        slot.state = Some(TaskState::Executing);
        slot.flags |= STARTED;
        self.current = idx;
        Some(self.id_of(idx))
    }

    /// The preemption query used at step boundaries: whether a ready task's effective priority
    /// strictly outranks the executing task's. `false` when nothing executes.
    pub fn should_preempt(&self) -> bool {
        self.current != NONE
            && self
                .ready
                .highest()
                .is_some_and(|p| p.outranks(self.slots[self.current as usize].eff))
    }

    /// Applies everything due at `now` without picking a task. [`next`](Self::next) calls it.
    pub fn advance(&mut self, now: Instant) {
        if now.as_millis() < self.due {
            return;
        }
        let mut timed_out = false;
        for i in 0..N {
            let idx = i as u8;
            self.expire_if_due(idx, now);
            let slot = &mut self.slots[i];
            let due = slot.timer <= now.as_millis();
            match slot.state {
                Some(TaskState::Pending) if due => {
                    slot.timer = u64::MAX;
                    slot.state = Some(TaskState::Ready);
                    self.ready_insert(idx);
                }
                Some(TaskState::Blocked) if due => {
                    slot.timed_out_on = slot.waiting_on;
                    slot.waiting_on = NONE;
                    slot.timer = u64::MAX;
                    slot.flags |= EV_TIMED_OUT;
                    slot.state = Some(TaskState::Ready);
                    // Inserted at its boosted level; the recompute below moves it if needed.
                    self.ready_insert(idx);
                    timed_out = true;
                }
                _ => {}
            }
        }
        if timed_out {
            self.recompute_priorities();
        }
        self.due = self.poll_timeout().map_or(u64::MAX, Instant::as_millis);
    }

    /// Expires slot `idx` if it has not started and its deadline is not after `now`.
    fn expire_if_due(&mut self, idx: u8, now: Instant) {
        let slot = self.slots[idx as usize];
        let unstarted = matches!(slot.state, Some(TaskState::Pending | TaskState::Ready))
            && slot.flags & STARTED == 0;
        if unstarted && slot.deadline() <= now.as_millis() {
            if slot.state == Some(TaskState::Ready) {
                self.ready_remove(idx, slot.eff);
            }
            let slot = &mut self.slots[idx as usize];
            slot.state = Some(TaskState::Expired);
            slot.timer = u64::MAX;
            slot.flags |= EV_EXPIRED;
        }
    }

    /// The executing task marks itself completed. Its locks pass to their waiters.
    pub fn complete(&mut self, task: TaskId) -> Result<(), SchedError> {
        let t = self.executing_index(task)?;
        self.finish(t, TaskState::Completed);
        Ok(())
    }

    /// Ends a task that has not finished as `Failed`, from any non-terminal state. Its locks
    /// pass to their waiters, and a wait it was in ends (lowering the holders it boosted).
    pub fn fail(&mut self, task: TaskId) -> Result<(), SchedError> {
        let t = self.live_index(task)?;
        self.finish(t, TaskState::Failed);
        Ok(())
    }

    /// Cancels a task that has not finished, from any non-terminal state; as [`fail`](Self::fail)
    /// otherwise.
    pub fn cancel(&mut self, task: TaskId) -> Result<(), SchedError> {
        let t = self.live_index(task)?;
        self.finish(t, TaskState::Cancelled);
        Ok(())
    }

    fn finish(&mut self, t: u8, end: TaskState) {
        let slot = self.slots[t as usize];
        match slot.state {
            Some(TaskState::Ready) => self.ready_remove(t, slot.eff),
            Some(TaskState::Executing) => self.current = NONE,
            _ => {}
        }
        let slot = &mut self.slots[t as usize];
        slot.waiting_on = NONE;
        slot.timer = u64::MAX;
        slot.state = Some(end);
        // Recompute first: if `t` was waiting, the priorities it donated are gone, and the
        // hand-offs below must choose among waiters by their current priorities.
        self.recompute_priorities();
        self.release_all(t);
        self.recompute_priorities();
    }

    /// Frees the slot of a finished task and returns how it ended. Its handle becomes stale.
    pub fn remove(&mut self, task: TaskId) -> Result<TaskState, SchedError> {
        let i = self.slot_index(task)?;
        let slot = &mut self.slots[i];
        let state = slot.state.ok_or(SchedError::UnknownTask)?;
        if !state.is_terminal() {
            return Err(SchedError::NotFinished);
        }
        *slot = Slot {
            generation: slot.generation.wrapping_add(1),
            ..Slot::FREE
        };
        Ok(state)
    }

    /// Changes a live task's base priority. Its effective priority stays the most urgent of the
    /// new base and whatever its locks donate; if it is ready, it moves to its new level.
    pub fn set_base_priority(
        &mut self,
        task: TaskId,
        priority: Priority,
    ) -> Result<(), SchedError> {
        let t = self.live_index(task)?;
        self.slots[t as usize].base = priority;
        self.recompute_priorities();
        Ok(())
    }

    /// The next event to report, if any (see [`Event`]).
    pub fn poll_event(&mut self) -> Option<Event> {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let id = TaskId {
                slot: i as u8,
                generation: slot.generation,
            };
            if slot.flags & EV_EXPIRED != 0 {
                slot.flags &= !EV_EXPIRED;
                return Some(Event::Expired(id));
            }
            if slot.flags & EV_TIMED_OUT != 0 {
                slot.flags &= !EV_TIMED_OUT;
                return Some(Event::WaitTimedOut(id, LockId::new(slot.timed_out_on)));
            }
        }
        None
    }

    /// The earliest instant at which [`advance`](Self::advance) has something to do: a release,
    /// a deadline of a task that has not started, or a lock-wait timeout.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state? {
                TaskState::Pending => Some(s.timer.min(s.deadline())),
                TaskState::Ready if s.flags & STARTED == 0 => Some(s.deadline()),
                TaskState::Blocked => Some(s.timer),
                _ => None,
            })
            .filter(|&t| t < NO_DEADLINE)
            .min()
            .map(Instant::from_millis)
    }

    /// The executing task.
    pub fn current(&self) -> Option<TaskId> {
        (self.current != NONE).then(|| self.id_of(self.current))
    }

    /// The task's state; `None` for a stale handle.
    pub fn state(&self, task: TaskId) -> Option<TaskState> {
        self.slots[self.slot_index(task).ok()?].state
    }

    /// The task's base priority.
    pub fn base_priority(&self, task: TaskId) -> Option<Priority> {
        self.slot_index(task).ok().map(|i| self.slots[i].base)
    }

    /// The task's effective priority: the most urgent of its base, the ceilings of the ceiling
    /// locks it holds, and the effective priorities of all tasks waiting on locks it holds.
    pub fn effective_priority(&self, task: TaskId) -> Option<Priority> {
        self.slot_index(task).ok().map(|i| self.slots[i].eff)
    }

    /// Slots not occupied (finished tasks occupy theirs until removed).
    pub fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.state.is_none()).count()
    }

    /// Every occupied slot's task, in slot order.
    pub fn tasks(&self) -> impl Iterator<Item = TaskId> + '_ {
        (0..N as u8)
            .filter(|&i| self.slots[i as usize].state.is_some())
            .map(|i| self.id_of(i))
    }

    fn id_of(&self, idx: u8) -> TaskId {
        TaskId {
            slot: idx,
            generation: self.slots[idx as usize].generation,
        }
    }

    /// Slot index of an occupied slot whose generation matches.
    fn slot_index(&self, task: TaskId) -> Result<usize, SchedError> {
        match self.slots.get(task.slot as usize) {
            Some(s) if s.state.is_some() && s.generation == task.generation => {
                Ok(task.slot as usize)
            }
            _ => Err(SchedError::UnknownTask),
        }
    }

    /// Slot of a task that has not finished.
    fn live_index(&self, task: TaskId) -> Result<u8, SchedError> {
        let i = self.slot_index(task)?;
        match self.slots[i].state {
            Some(s) if s.is_terminal() => Err(SchedError::Finished),
            _ => Ok(i as u8),
        }
    }

    /// Slot of the executing task.
    fn executing_index(&self, task: TaskId) -> Result<u8, SchedError> {
        let t = self.live_index(task)?;
        if t == self.current {
            Ok(t)
        } else {
            Err(SchedError::NotExecuting)
        }
    }

    fn lock_index(&self, lock: LockId) -> Result<usize, SchedError> {
        let l = lock.index() as usize;
        if l < L {
            Ok(l)
        } else {
            Err(SchedError::UnknownLock)
        }
    }
}

#[cfg(test)]
mod tests;
