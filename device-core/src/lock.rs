//! Lock identity and policy.

/// Names one of the scheduler's `L` locks (index `0..L`). Firmware usually gives each shared
/// resource (`i2c0`, `spi1`, the radio) a fixed `LockId` constant.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LockId(u8);

impl LockId {
    /// The lock at `index`. Out-of-range indices are rejected by the scheduler with
    /// [`SchedError::UnknownLock`](crate::SchedError::UnknownLock), not here.
    pub const fn new(index: u8) -> Self {
        Self(index)
    }

    /// The index into the scheduler's lock table.
    pub const fn index(self) -> u8 {
        self.0
    }
}

/// How a lock protects its holder against priority inversion.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum LockPolicy {
    /// Priority inheritance (the default): while tasks wait for the lock, its holder runs at
    /// the priority of the most urgent waiter, transitively through chains of holders.
    #[default]
    Inherit,
    /// Immediate priority ceiling: the holder runs at the ceiling from the moment it takes the
    /// lock, so no task of priority up to the ceiling can start and then block on it. A task
    /// whose base priority outranks the ceiling may not take the lock
    /// ([`SchedError::CeilingViolated`](crate::SchedError::CeilingViolated)). Waiters, should
    /// there be any (the holder blocked elsewhere), still donate their priority.
    Ceiling(crate::Priority),
    /// No protection at all: waiters donate nothing. This is the VxWorks default that reset
    /// Mars Pathfinder; it exists to demonstrate inversion and for locks never shared across
    /// priorities. Prefer [`LockPolicy::Inherit`].
    Plain,
}

impl LockPolicy {
    /// Whether waiters raise the holder's effective priority.
    pub(crate) const fn donates(self) -> bool {
        !matches!(self, Self::Plain)
    }
}
