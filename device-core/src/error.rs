//! Errors of the scheduler. Every failed call leaves the scheduler exactly as it was.

use core::fmt;

/// Why a scheduler call was refused. The call changed nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum SchedError {
    /// The task handle is stale (its task was removed) or names no slot.
    UnknownTask,
    /// The lock id is not below the scheduler's lock capacity.
    UnknownLock,
    /// Only the executing task may take or release locks, or complete.
    NotExecuting,
    /// The task has already reached a terminal state.
    Finished,
    /// The task has not reached a terminal state, so its slot cannot be removed.
    NotFinished,
    /// The task already holds this lock (locks are not recursive).
    AlreadyHeld,
    /// The task does not hold this lock.
    NotOwner,
    /// The lock is held by another task (`try_lock`, or `lock` whose timeout already passed).
    WouldBlock,
    /// Waiting would close a wait-for cycle in which every wait is unbounded: a deadlock.
    Deadlock,
    /// The task's base priority outranks the lock's priority ceiling.
    CeilingViolated,
    /// The lock's policy can only change while nobody holds or waits for it.
    LockBusy,
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownTask => "unknown or stale task handle",
            Self::UnknownLock => "lock id out of range",
            Self::NotExecuting => "task is not the executing task",
            Self::Finished => "task has already finished",
            Self::NotFinished => "task has not finished yet",
            Self::AlreadyHeld => "task already holds this lock",
            Self::NotOwner => "task does not hold this lock",
            Self::WouldBlock => "lock is held by another task",
            Self::Deadlock => "waiting would deadlock (wait-for cycle without timeout)",
            Self::CeilingViolated => "task priority is above the lock's ceiling",
            Self::LockBusy => "lock is held or awaited",
        })
    }
}

impl core::error::Error for SchedError {}
