//! Where a [`Session`](super::Session) keeps the messages it holds: its send window and its
//! reorder buffer. [`Inline`], the default, keeps them inside the session, `W` and `R`
//! messages of room whether used or not and no allocation: what a device needs. A host with a
//! heap can keep them there instead (the bridge does, in `edge_bridge::link::stream`), so a
//! session that holds no message — an idle link — holds no room for any either: a bridge
//! holding thousands of idle links pays for the messages in flight, not for 2 × 16 slots of
//! the largest message per link. The capacities stay `W` and `R` whatever the storage: the
//! session refuses a message beyond them ([`MessageBuffer::is_full`]).

use heapless::Deque;

use super::session::Unacked;

/// The storage of a session's two buffers, for a send window of `W` messages and a reorder
/// buffer of `R`.
pub trait Buffers<const W: usize, const R: usize> {
    /// Reliable messages sent or queued and not acknowledged, oldest first: pushed at the
    /// back, acknowledged from the front.
    type Window: MessageBuffer;
    /// Messages that arrived ahead of a missing one, in no particular order.
    type Reorder: MessageBuffer;
}

/// One bounded buffer of messages, in the order they were pushed (except after a
/// [`take`](Self::take), which only the reorder buffer uses).
pub trait MessageBuffer: Default + Clone + core::fmt::Debug {
    /// Messages held.
    fn len(&self) -> usize;
    /// Whether it holds its capacity (`W` or `R`): a push would be refused.
    fn is_full(&self) -> bool;
    /// Whether it holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `i`-th message, the oldest first.
    fn get(&self, i: usize) -> Option<&Unacked>;
    /// The oldest message.
    fn front(&self) -> Option<&Unacked> {
        self.get(0)
    }
    fn iter(&self) -> impl Iterator<Item = &Unacked>;
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Unacked>;
    /// Appends `u`, or hands it back when full.
    #[allow(clippy::result_large_err)] // handed back as `heapless` does, not copied elsewhere
    fn push_back(&mut self, u: Unacked) -> Result<(), Unacked>;
    /// Takes the oldest message.
    fn pop_front(&mut self) -> Option<Unacked>;
    /// Takes the first message for which `is` holds, putting another in its place.
    fn take(&mut self, is: impl FnMut(&Unacked) -> bool) -> Option<Unacked>;
    fn clear(&mut self);
}

/// Both buffers inside the session: a `heapless::Deque` of `W` messages and a
/// `heapless::Vec` of `R`. No allocation; the session's size includes them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inline;

impl<const W: usize, const R: usize> Buffers<W, R> for Inline {
    type Window = Deque<Unacked, W>;
    type Reorder = heapless::Vec<Unacked, R>;
}

impl<const N: usize> MessageBuffer for Deque<Unacked, N> {
    fn len(&self) -> usize {
        Self::len(self)
    }
    fn is_full(&self) -> bool {
        Self::is_full(self)
    }
    fn is_empty(&self) -> bool {
        Self::is_empty(self)
    }
    fn get(&self, i: usize) -> Option<&Unacked> {
        Self::get(self, i)
    }
    fn front(&self) -> Option<&Unacked> {
        Self::front(self)
    }
    fn iter(&self) -> impl Iterator<Item = &Unacked> {
        Self::iter(self)
    }
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Unacked> {
        Self::iter_mut(self)
    }
    fn push_back(&mut self, u: Unacked) -> Result<(), Unacked> {
        Self::push_back(self, u)
    }
    fn pop_front(&mut self) -> Option<Unacked> {
        Self::pop_front(self)
    }
    fn take(&mut self, is: impl FnMut(&Unacked) -> bool) -> Option<Unacked> {
        let i = Self::iter(self).position(is)?;
        self.swap_remove_back(i)
    }
    fn clear(&mut self) {
        Self::clear(self);
    }
}

impl<const N: usize> MessageBuffer for heapless::Vec<Unacked, N> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn is_full(&self) -> bool {
        Self::is_full(self)
    }
    fn get(&self, i: usize) -> Option<&Unacked> {
        self.as_slice().get(i)
    }
    fn iter(&self) -> impl Iterator<Item = &Unacked> {
        self.as_slice().iter()
    }
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Unacked> {
        self.as_mut_slice().iter_mut()
    }
    fn push_back(&mut self, u: Unacked) -> Result<(), Unacked> {
        self.push(u)
    }
    fn pop_front(&mut self) -> Option<Unacked> {
        (!self.is_empty()).then(|| self.remove(0))
    }
    fn take(&mut self, is: impl FnMut(&Unacked) -> bool) -> Option<Unacked> {
        let i = self.as_slice().iter().position(is)?;
        Some(Self::swap_remove(self, i))
    }
    fn clear(&mut self) {
        Self::clear(self);
    }
}
