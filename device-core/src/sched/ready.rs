//! Ready queues: one list per priority level, each kept in (deadline, admission order) order,
//! plus a bitmap of non-empty levels. Picking the next task is a `trailing_zeros` and a list
//! head: O(1). Inserting walks one level's list: O(tasks at that level).

use super::{NONE, Scheduler, Slot};
use crate::Priority;

/// Heads of the per-level lists and the bitmap of non-empty levels.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadyLists {
    /// First slot of each level's list, or `NONE`.
    heads: [u8; Priority::LEVELS],
    /// Bit `p` set iff level `p` has a ready task.
    bits: u8,
}

impl ReadyLists {
    pub(super) const EMPTY: Self = Self {
        heads: [NONE; Priority::LEVELS],
        bits: 0,
    };

    /// The most urgent level with a ready task.
    pub(super) fn highest(&self) -> Option<Priority> {
        Priority::from_level(self.bits.trailing_zeros() as u8)
    }

    /// The first task of the most urgent non-empty level.
    pub(super) fn peek(&self) -> Option<u8> {
        self.highest().map(|p| self.heads[p as usize])
    }
}

/// Whether `a` goes before `b` inside one level: earlier deadline first, then admission order
/// (both in [`Slot::order`]).
pub(super) fn goes_before(a: &Slot, b: &Slot) -> bool {
    a.order < b.order
}

impl<const N: usize, const L: usize> Scheduler<N, L> {
    /// Links slot `idx` into the list of its effective priority.
    pub(super) fn ready_insert(&mut self, idx: u8) {
        let level = self.slots[idx as usize].eff as usize;
        let mut prev = NONE;
        let mut cur = self.ready.heads[level];
        while cur != NONE && !goes_before(&self.slots[idx as usize], &self.slots[cur as usize]) {
            prev = cur;
            cur = self.slots[cur as usize].next;
        }
        self.slots[idx as usize].next = cur;
        if prev == NONE {
            self.ready.heads[level] = idx;
        } else {
            self.slots[prev as usize].next = idx;
        }
        self.ready.bits |= 1 << level;
    }

    /// Unlinks slot `idx` from the list of `level` (the level it was inserted at).
    pub(super) fn ready_remove(&mut self, idx: u8, level: Priority) {
        let level = level as usize;
        let mut prev = NONE;
        let mut cur = self.ready.heads[level];
        while cur != NONE && cur != idx {
            prev = cur;
            cur = self.slots[cur as usize].next;
        }
        if cur == NONE {
            return;
        }
        let next = self.slots[idx as usize].next;
        if prev == NONE {
            self.ready.heads[level] = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        self.slots[idx as usize].next = NONE;
        if self.ready.heads[level] == NONE {
            self.ready.bits &= !(1 << level);
        }
    }
}
