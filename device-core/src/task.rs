//! Task identity, admission parameters and lifecycle states.

use crate::{Instant, Priority};

/// Handle to a task admitted to a [`Scheduler`](crate::Scheduler).
///
/// It names a slot and that slot's generation, so a handle kept after its task was removed
/// is recognised as stale ([`SchedError::UnknownTask`](crate::SchedError::UnknownTask))
/// instead of silently naming the slot's next occupant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TaskId {
    pub(crate) slot: u8,
    pub(crate) generation: u8,
}

impl TaskId {
    /// The slot this task occupies (`0..N`), handy as an index into per-task firmware data.
    pub const fn slot(self) -> usize {
        self.slot as usize
    }
}

/// Where a task is in its life.
///
/// ```text
/// Pending ─► Ready ◄──► Executing ─► Completed | Failed
///   │          │  ▲         │
///   │          │  └─ Blocked ◄┘   (waiting for a lock; back to Ready when granted or timed out)
///   └──────────┴─► Expired          (deadline passed before the task ever started)
/// any non-terminal state ─► Cancelled
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum TaskState {
    /// Admitted with a release time still in the future.
    Pending,
    /// Runnable, waiting to be picked.
    Ready,
    /// Picked: its steps are running. At most one task executes at a time.
    Executing,
    /// Waiting for a lock.
    Blocked,
    /// Finished successfully.
    Completed,
    /// Finished with an error.
    Failed,
    /// Its deadline passed before it started.
    Expired,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskState {
    /// Whether the task is finished and will never run again.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Expired | Self::Cancelled
        )
    }
}

/// What a task asks for when it is admitted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TaskSpec {
    /// Base priority; the effective priority may be raised above it by locks.
    pub priority: Priority,
    /// The task must start strictly before this instant, or it ends `Expired`.
    pub deadline: Option<Instant>,
    /// The task stays `Pending` until this instant.
    pub release_at: Option<Instant>,
}

impl TaskSpec {
    /// A task of `priority`, runnable at once, without deadline.
    pub const fn new(priority: Priority) -> Self {
        Self {
            priority,
            deadline: None,
            release_at: None,
        }
    }

    /// Sets the latest start: the task must start before `deadline`.
    #[must_use]
    pub const fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Keeps the task `Pending` until `at`.
    #[must_use]
    pub const fn release_at(mut self, at: Instant) -> Self {
        self.release_at = Some(at);
        self
    }
}
