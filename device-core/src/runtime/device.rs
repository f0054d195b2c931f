//! The whole device side of the protocol: a [`Runtime`] behind a [`Session`].

use heapless::Deque;

use super::Runtime;
use crate::Instant;
use crate::link::{Config, DeviceSide, Event, Session};
use crate::proto::{
    DecodeError, DeviceId, Hello, MAX_CAPABILITIES, MAX_LOCKS, Message, PROTOCOL_VERSION, Reject,
};

/// Rejects waiting for room in the session window. While it is full the session stops
/// accepting messages (the bridge resends them later), so no reject is ever dropped.
const PENDING_REJECTS: usize = 4;

/// A device: runtime (`N` slots, `L` locks, `C` capabilities) plus session (window `W`,
/// reorder buffer `R`, 0 by default: see [`Session`]).
///
/// Firmware drives it like any sans-IO state machine: feed received frames to
/// [`handle_bytes`](Self::handle_bytes), call [`step`](Self::step) while it returns `true`,
/// send what [`poll_transmit`](Self::poll_transmit) yields, and sleep until input or
/// [`poll_timeout`](Self::poll_timeout), calling [`handle_timeout`](Self::handle_timeout) then.
#[derive(Debug)]
pub struct Device<
    const N: usize,
    const L: usize,
    const C: usize,
    const W: usize,
    const R: usize = 0,
> {
    session: Session<DeviceSide, W, R>,
    runtime: Runtime<N, L, C>,
    rejects: Deque<Reject, PENDING_REJECTS>,
}

impl<const N: usize, const L: usize, const C: usize, const W: usize, const R: usize>
    Device<N, L, C, W, R>
{
    /// A device called `device_id` (at most [`MAX_DEVICE_ID`](crate::proto::MAX_DEVICE_ID)
    /// bytes; `None` if longer) that starts connecting at once. `boot_id` must differ at
    /// every boot (a random number, or a counter kept in flash).
    pub fn new(
        device_id: &str,
        boot_id: u32,
        runtime: Runtime<N, L, C>,
        config: Config,
        now: Instant,
    ) -> Option<Self> {
        const { assert!(C <= MAX_CAPABILITIES, "C exceeds what Hello can advertise") };
        let (resumable, restartable) = runtime.preemption_masks();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            device_id: DeviceId::try_from(device_id).ok()?,
            boot_id,
            session_id: 0,
            capabilities: runtime.capabilities().cloned().collect(),
            // At most `MAX_LOCKS`: `declare_lock` names no more.
            locks: runtime.lock_names().take(MAX_LOCKS).cloned().collect(),
            slots: N.min(255) as u8,
            max_payload: runtime.max_payload() as u16,
            resumable,
            restartable,
        };
        let mut session = Session::device(hello, config, now);
        session.set_credit(runtime.free_slots());
        Some(Self {
            session,
            runtime,
            rejects: Deque::new(),
        })
    }

    /// The session, for its state and counters.
    pub fn session(&self) -> &Session<DeviceSide, W, R> {
        &self.session
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime<N, L, C> {
        &self.runtime
    }

    /// Handles a received frame: `Assign`s, `Cancel`s, `Preempt`s, `Restore`s and
    /// `Reprioritize`s go to the runtime; the session event, if any, is returned for logging.
    pub fn handle_bytes(
        &mut self,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Option<Event>, DecodeError> {
        self.session.set_accepting(!self.rejects.is_full());
        let event = self.session.handle_bytes(bytes, now)?;
        if let Some(e) = &event {
            self.take(e, now);
        }
        // Messages the reorder buffer can now deliver in order.
        loop {
            self.session.set_accepting(!self.rejects.is_full());
            let Some(e) = self.session.poll_event() else {
                break;
            };
            self.take(&e, now);
        }
        self.runtime.on_acked(self.session.acked_total());
        Ok(event)
    }

    /// Hands a delivered `Assign`, `Cancel`, `Preempt`, `Restore` or `Reprioritize` to the
    /// runtime, keeping its refusal for sending.
    fn take(&mut self, event: &Event, now: Instant) {
        let refused = match event {
            Event::Received(Message::Assign(a)) => self.runtime.assign(a.clone(), now).err(),
            Event::Received(Message::Cancel(c)) => self.runtime.cancel(c.handle).err(),
            Event::Received(Message::Preempt(p)) => self.runtime.preempt(p.handle).err(),
            Event::Received(Message::Reprioritize(p)) => {
                self.runtime.reprioritize(p.handle, p.priority).err()
            }
            Event::Received(Message::Restore(r)) => {
                self.runtime.restore(r.clone());
                None
            }
            _ => None,
        };
        if let Some(r) = refused {
            // Room is guaranteed: the session only delivers while `rejects` is not full.
            let _ = self.rejects.push_back(r);
        }
    }

    /// The transport was lost: handshake again on the next one, keeping every task, result
    /// and unacknowledged report (a device keeps its state across link loss; only a reboot,
    /// with a new boot id, forgets).
    pub fn link_lost(&mut self, now: Instant) {
        self.session.link_lost(now);
    }

    /// Acts on the session's timers (retransmission, heartbeat, liveness).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event> {
        self.session.handle_timeout(now)
    }

    /// Runs one step of the most urgent task; `false` when nothing is runnable.
    pub fn step(&mut self, now: Instant) -> bool {
        self.runtime.step(now)
    }

    /// The next frame to send, as [`Session::poll_transmit`]; owed rejects, `Suspended`s and
    /// reports are handed to the session first, as far as its window allows (a `Suspended`
    /// ahead of reports: the bridge is waiting for that slot for an urgent task).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.runtime.on_acked(self.session.acked_total());
        while self.session.can_send() {
            let ticket = self.session.sent_total().wrapping_add(1);
            let message = if let Some(r) = self.rejects.pop_front() {
                Message::Reject(r)
            } else if let Some(s) = self.runtime.poll_suspended(ticket) {
                Message::Suspended(s)
            } else if let Some(r) = self.runtime.poll_report(ticket) {
                Message::Report(r)
            } else {
                break;
            };
            // Cannot fail: `can_send` was checked, no kind here needs credit, and the peer
            // speaks our version (a device is welcomed only in its own).
            let _ = self.session.send(message);
        }
        // The credit goes out with the ack of every Assign already taken.
        self.session.set_credit(self.runtime.free_slots());
        self.session.poll_transmit(now, out)
    }

    /// The earliest instant the device has timed work: the session's or the scheduler's.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.session.poll_timeout(), self.runtime.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
