//! Locks: acquisition, hand-off, wait-for cycle detection and priority inheritance.
//!
//! Effective priorities are *derived* state: after any change to who holds or waits for what,
//! [`Scheduler::recompute_priorities`] rebuilds them from scratch as the least fixed point of
//!
//! ```text
//! eff(t) = most urgent of { base(t),
//!                           ceiling(l) for every ceiling lock l that t holds,
//!                           eff(w) for every w waiting on a donating lock that t holds }
//! ```
//!
//! Rebuilding instead of patching is what makes every hard case fall out for free: transitive
//! chains of any length, nested locks released out of order, a waiter that times out or is
//! cancelled in the middle of a chain (every holder down the chain drops back), hand-off to a
//! task that holds other locks, base-priority changes while boosted, and transient cycles made
//! of timed waits (the fixed point exists and the iteration is bounded). It costs
//! O(N · chain length) per lock operation, a few hundred instructions for N = 8.

use super::{NONE, Scheduler};
use crate::{LockId, LockPolicy, Priority, SchedError, TaskId, TaskState};

/// Per-lock state: two bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct LockSlot {
    /// Slot of the holder, or `NONE`.
    pub(super) owner: u8,
    pub(super) policy: LockPolicy,
}

impl LockSlot {
    pub(super) const FREE: Self = Self {
        owner: NONE,
        policy: LockPolicy::Inherit,
    };
}

/// Outcome of [`Scheduler::lock`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Acquire {
    /// The task now holds the lock and keeps executing.
    Acquired,
    /// The task is `Blocked` until the lock is handed to it (it then becomes `Ready` holding the
    /// lock) or its timeout passes (it becomes `Ready` without the lock, and
    /// [`Event::WaitTimedOut`](super::Event::WaitTimedOut) is raised).
    Blocked,
}

impl<const N: usize, const L: usize> Scheduler<N, L> {
    /// Sets a lock's policy. Only allowed while nobody holds or waits for the lock; firmware
    /// normally does it once at start-up.
    pub fn set_lock_policy(&mut self, lock: LockId, policy: LockPolicy) -> Result<(), SchedError> {
        let l = self.lock_index(lock)?;
        if self.locks[l].owner != NONE {
            return Err(SchedError::LockBusy);
        }
        self.locks[l].policy = policy;
        Ok(())
    }

    /// The lock's policy.
    pub fn lock_policy(&self, lock: LockId) -> Option<LockPolicy> {
        self.locks.get(lock.index() as usize).map(|l| l.policy)
    }

    /// The task holding `lock`, if any.
    pub fn lock_owner(&self, lock: LockId) -> Option<TaskId> {
        let owner = self.locks.get(lock.index() as usize)?.owner;
        (owner != NONE).then(|| self.id_of(owner))
    }

    /// Whether `task` holds `lock`.
    pub fn holds(&self, task: TaskId, lock: LockId) -> bool {
        self.slot_index(task).is_ok()
            && self
                .locks
                .get(lock.index() as usize)
                .is_some_and(|l| l.owner == task.slot)
    }

    /// The lock `task` is blocked on, if any.
    pub fn waiting_on(&self, task: TaskId) -> Option<LockId> {
        let i = self.slot_index(task).ok()?;
        let l = self.slots[i].waiting_on;
        (l != NONE).then_some(LockId::new(l))
    }

    /// Takes `lock` for the executing task `task`, or blocks it until the lock is handed over
    /// or `until` passes (`None`: wait without limit).
    ///
    /// Refused, changing nothing: a stale handle, a task that is not executing, an unknown lock,
    /// a lock already held by `task`, a ceiling below `task`'s base priority, a timeout that has
    /// already passed while the lock is taken ([`SchedError::WouldBlock`]), and a wait that
    /// would close a wait-for cycle in which every wait is unbounded ([`SchedError::Deadlock`]).
    /// A cycle that contains a timed wait is not a deadlock, since that wait ends by itself:
    /// the task blocks and the cycle dissolves when the timeout fires.
    pub fn lock(
        &mut self,
        task: TaskId,
        lock: LockId,
        until: Option<crate::Instant>,
        now: crate::Instant,
    ) -> Result<Acquire, SchedError> {
        let (t, l) = self.check_lock_request(task, lock)?;
        if self.locks[l].owner == NONE {
            self.take(t, l);
            return Ok(Acquire::Acquired);
        }
        if until.is_some_and(|u| u <= now) {
            return Err(SchedError::WouldBlock);
        }
        if self.closes_unbounded_cycle(t, l, until.is_some()) {
            return Err(SchedError::Deadlock);
        }
        let slot = &mut self.slots[t as usize];
        slot.state = Some(TaskState::Blocked);
        slot.waiting_on = l as u8;
        slot.timer = until.map_or(u64::MAX, crate::Instant::as_millis);
        self.due = self.due.min(slot.timer);
        self.current = NONE;
        self.recompute_priorities();
        Ok(Acquire::Blocked)
    }

    /// Takes `lock` if it is free; otherwise [`SchedError::WouldBlock`] and nothing changes.
    pub fn try_lock(&mut self, task: TaskId, lock: LockId) -> Result<(), SchedError> {
        let (t, l) = self.check_lock_request(task, lock)?;
        if self.locks[l].owner != NONE {
            return Err(SchedError::WouldBlock);
        }
        self.take(t, l);
        Ok(())
    }

    /// Releases `lock`, held by the executing task `task`, handing it to the most urgent waiter
    /// (effective priority, then earliest deadline, then admission order), which becomes
    /// `Ready`. `task`'s effective priority drops to what the locks it still holds justify.
    pub fn unlock(&mut self, task: TaskId, lock: LockId) -> Result<(), SchedError> {
        let t = self.executing_index(task)?;
        let l = self.lock_index(lock)?;
        if self.locks[l].owner != t {
            return Err(SchedError::NotOwner);
        }
        // A lock nobody waited for and without a ceiling donated nothing: releasing it cannot
        // change any effective priority, so the common uncontended unlock skips the rebuild.
        let ceiling = matches!(self.locks[l].policy, LockPolicy::Ceiling(_));
        if self.hand_off(l) || ceiling {
            self.recompute_priorities();
        }
        Ok(())
    }

    /// Validation shared by `lock` and `try_lock`; returns (slot, lock index).
    fn check_lock_request(&self, task: TaskId, lock: LockId) -> Result<(u8, usize), SchedError> {
        let t = self.executing_index(task)?;
        let l = self.lock_index(lock)?;
        if self.locks[l].owner == t {
            return Err(SchedError::AlreadyHeld);
        }
        if let LockPolicy::Ceiling(ceiling) = self.locks[l].policy {
            if self.slots[t as usize].base.outranks(ceiling) {
                return Err(SchedError::CeilingViolated);
            }
        }
        Ok((t, l))
    }

    fn take(&mut self, t: u8, l: usize) {
        self.locks[l].owner = t;
        if matches!(self.locks[l].policy, LockPolicy::Ceiling(_)) {
            self.recompute_priorities();
        }
    }

    /// Follows the wait-for chain from `l`'s holder. Reaching `t` means waiting would close a
    /// cycle; it is a deadlock only if no wait on it (including the new one) has a timeout.
    /// The walk is bounded by N hops, so an existing timed cycle that does not include `t`
    /// cannot trap it.
    fn closes_unbounded_cycle(&self, t: u8, l: usize, new_wait_timed: bool) -> bool {
        let mut timed = new_wait_timed;
        let mut holder = self.locks[l].owner;
        for _ in 0..N {
            if holder == t {
                return !timed;
            }
            let slot = &self.slots[holder as usize];
            if slot.state != Some(TaskState::Blocked) {
                return false;
            }
            timed |= slot.timer != u64::MAX;
            holder = self.locks[slot.waiting_on as usize].owner;
        }
        false
    }

    /// Gives lock `l` to its most urgent waiter, or frees it; returns whether a waiter got it.
    /// Does not recompute priorities.
    pub(super) fn hand_off(&mut self, l: usize) -> bool {
        let mut best = NONE;
        for (i, s) in self.slots.iter().enumerate() {
            if s.state == Some(TaskState::Blocked)
                && s.waiting_on as usize == l
                && (best == NONE || Self::more_urgent(s, &self.slots[best as usize]))
            {
                best = i as u8;
            }
        }
        self.locks[l].owner = best;
        if best != NONE {
            let w = &mut self.slots[best as usize];
            w.waiting_on = NONE;
            w.timer = u64::MAX;
            w.state = Some(TaskState::Ready);
            self.ready_insert(best);
        }
        best != NONE
    }

    /// Hand-off order among waiters: effective priority, then deadline, then admission order.
    fn more_urgent(a: &super::Slot, b: &super::Slot) -> bool {
        a.eff.outranks(b.eff) || (a.eff == b.eff && super::ready::goes_before(a, b))
    }

    /// Releases every lock slot `t` holds (a task that ends never keeps a lock).
    pub(super) fn release_all(&mut self, t: u8) {
        for l in 0..L {
            if self.locks[l].owner == t {
                self.hand_off(l);
            }
        }
    }

    /// Rebuilds every effective priority (see the module docs) and moves ready tasks whose
    /// effective priority changed to their new level.
    pub(super) fn recompute_priorities(&mut self) {
        let mut old = [Priority::P5; N];
        for (i, s) in self.slots.iter_mut().enumerate() {
            old[i] = s.eff;
            s.eff = s.base;
        }
        for lock in &self.locks {
            if let (LockPolicy::Ceiling(c), true) = (lock.policy, lock.owner != NONE) {
                let s = &mut self.slots[lock.owner as usize];
                s.eff = s.eff.most_urgent(c);
            }
        }
        // Each pass pushes donations one hop further along the chains; a pass that changes
        // nothing proves the fixed point. Every change raises some priority by at least one
        // level, so N · LEVELS passes bound even pathological inputs.
        for _ in 0..=N * Priority::LEVELS {
            let mut changed = false;
            for w in 0..N {
                let waiter = self.slots[w];
                if waiter.state != Some(TaskState::Blocked) {
                    continue;
                }
                let lock = self.locks[waiter.waiting_on as usize];
                if !lock.policy.donates() || lock.owner == NONE {
                    continue;
                }
                let holder = &mut self.slots[lock.owner as usize];
                if waiter.eff.outranks(holder.eff) {
                    holder.eff = waiter.eff;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for (i, was) in old.into_iter().enumerate() {
            if self.slots[i].state == Some(TaskState::Ready) && self.slots[i].eff != was {
                self.ready_remove(i as u8, was);
                self.ready_insert(i as u8);
            }
        }
    }
}
