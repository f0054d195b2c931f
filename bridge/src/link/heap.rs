//! A device-core session's send window and reorder buffer on the heap ([`OnHeap`]), holding
//! room for messages only while it holds messages.
//!
//! Inline, a bridge session of 16 + 16 messages is 16.8 KiB whatever it holds, and a bridge
//! holds one per device link, most of them idle. On the heap an empty buffer is an empty
//! `VecDeque` (no allocation), one in use grows as messages arrive (4, 8, 16 of them) and is
//! given back whole when it empties. The capacities are unchanged: a buffer of `N` refuses the
//! `N + 1`-th message exactly as `heapless` does.

use std::collections::VecDeque;

use device_core::link::{Buffers, MessageBuffer, Unacked};

/// Both buffers of a session on the heap: see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct OnHeap;

impl<const W: usize, const R: usize> Buffers<W, R> for OnHeap {
    type Window = HeapBuffer<W>;
    type Reorder = HeapBuffer<R>;
}

/// At most `N` messages in a `VecDeque` whose allocation is dropped whenever it empties.
#[derive(Clone, Debug, Default)]
pub struct HeapBuffer<const N: usize>(VecDeque<Unacked>);

impl<const N: usize> HeapBuffer<N> {
    /// Gives the allocation back once nothing is held: an idle link keeps none.
    fn release_if_empty(&mut self) {
        if self.0.is_empty() && self.0.capacity() > 0 {
            self.0 = VecDeque::new();
        }
    }

    /// Messages it has room for without allocating.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<const N: usize> MessageBuffer for HeapBuffer<N> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn is_full(&self) -> bool {
        self.0.len() >= N
    }
    fn get(&self, i: usize) -> Option<&Unacked> {
        self.0.get(i)
    }
    fn iter(&self) -> impl Iterator<Item = &Unacked> {
        self.0.iter()
    }
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Unacked> {
        self.0.iter_mut()
    }
    fn push_back(&mut self, u: Unacked) -> Result<(), Unacked> {
        if self.is_full() {
            return Err(u);
        }
        self.0.push_back(u);
        Ok(())
    }
    fn pop_front(&mut self) -> Option<Unacked> {
        let u = self.0.pop_front();
        self.release_if_empty();
        u
    }
    fn take(&mut self, is: impl FnMut(&Unacked) -> bool) -> Option<Unacked> {
        let i = self.0.iter().position(is)?;
        let u = self.0.swap_remove_back(i);
        self.release_if_empty();
        u
    }
    fn clear(&mut self) {
        self.0 = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use crate::backoff::SplitMix64;
    use device_core::Instant;
    use device_core::link::{BridgeSide, Config, DeviceSide, Event, Inline, Session};
    use device_core::proto::{self, Assign, Hello, MAX_FRAME, Message, Report, TaskReport};

    use super::*;

    fn hello() -> Hello {
        Hello {
            version: 0, // set by Session::device
            device_id: heapless::String::try_from("dev").unwrap(),
            boot_id: 7,
            session_id: 0,
            capabilities: heapless::Vec::new(),
            locks: heapless::Vec::new(),
            slots: 16,
            max_payload: 64,
            resumable: 0,
            restartable: 0,
        }
    }

    fn assign(handle: u32) -> Message {
        Message::Assign(Assign {
            handle,
            priority: device_core::Priority::P3,
            deadline_ms: None,
            capability: heapless::String::try_from("echo").unwrap(),
            locks: heapless::Vec::new(),
            payload: heapless::Vec::new(),
            trace_id: heapless::String::new(),
        })
    }

    fn report(handle: u32) -> Message {
        Message::Report(Report {
            handle,
            state: TaskReport::Completed,
            result: heapless::Vec::new(),
            error: None,
        })
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn a_buffer_refuses_beyond_its_capacity_and_holds_no_allocation_once_empty() {
        let mut b: HeapBuffer<4> = HeapBuffer::default();
        assert_eq!(b.capacity(), 0, "an empty buffer allocates nothing");
        let mut items = (1..6).map(|h| Unacked::new(h, assign(h)));
        for _ in 0..4 {
            assert!(b.push_back(items.next().unwrap()).is_ok());
        }
        assert!(b.is_full());
        let fifth = items.next().unwrap();
        assert!(b.push_back(fifth).is_err(), "the fifth is handed back");
        assert_eq!(b.len(), 4);
        for _ in 0..3 {
            b.pop_front().unwrap();
        }
        assert!(b.capacity() > 0, "still in use");
        b.pop_front().unwrap();
        assert_eq!((b.len(), b.capacity()), (0, 0), "given back once empty");
        assert!(b.pop_front().is_none());
    }

    /// A lossy link that also reorders: each frame is dropped one time in eight, or put at
    /// a random place among the frames still in flight (seeded, so every run is the same).
    fn carry(rng: &mut SplitMix64, in_flight: &mut VecDeque<Vec<u8>>, frame: &[u8]) {
        let draw = rng.next_u64();
        if draw % 8 == 0 {
            return;
        }
        let at = (draw >> 8) as usize % (in_flight.len() + 1);
        in_flight.insert(at, frame.to_vec());
    }

    /// 60 `Assign`s from a bridge session kept in `B` to a device that reports each one
    /// done, over [`carry`], for 30 simulated seconds: every frame the bridge sent, every
    /// event it saw, and its counters.
    fn exchange<B: Buffers<16, 16>>() -> (Vec<Vec<u8>>, Vec<Event>, u32, u32) {
        let config = Config::default();
        let mut device: Session<DeviceSide, 16, 16, Inline> =
            Session::device(hello(), config, at(0));
        device.set_credit(16);
        let mut bridge: Session<BridgeSide, 16, 16, B> = Session::bridge(config, at(0));
        let (mut to_device, mut to_bridge) = (VecDeque::new(), VecDeque::new());
        let (mut sent, mut events, mut reports) = (Vec::new(), Vec::new(), VecDeque::new());
        let (mut rng, mut next) = (SplitMix64::new(0x2545_F491_4F6C_DD1D), 1);
        let mut buf = [0u8; MAX_FRAME];
        for step in 0..6_000 {
            let now = at(step * 5);
            while next <= 60 && bridge.can_send() && bridge.credit() > 0 {
                bridge.send(assign(next)).unwrap();
                next += 1;
            }
            while device.can_send() {
                let Some(handle) = reports.pop_front() else {
                    break;
                };
                device.send(report(handle)).unwrap();
            }
            while let Some(n) = bridge.poll_transmit(now, &mut buf) {
                sent.push(buf[..n].to_vec());
                carry(&mut rng, &mut to_device, &buf[..n]);
            }
            while let Some(n) = device.poll_transmit(now, &mut buf) {
                carry(&mut rng, &mut to_bridge, &buf[..n]);
            }
            for frame in std::mem::take(&mut to_device) {
                let first = device.handle_bytes(&frame, now).ok().flatten();
                for e in first
                    .into_iter()
                    .chain(std::iter::from_fn(|| device.poll_event()))
                {
                    if let Event::Received(Message::Assign(a)) = e {
                        reports.push_back(a.handle);
                    }
                }
            }
            for frame in std::mem::take(&mut to_bridge) {
                let first = bridge.handle_bytes(&frame, now).ok().flatten();
                events.extend(first);
                events.extend(std::iter::from_fn(|| bridge.poll_event()));
            }
            bridge.handle_timeout(now);
            device.handle_timeout(now);
        }
        assert_eq!(bridge.unacknowledged(), 0, "everything was acknowledged");
        let stats = bridge.stats();
        (sent, events, stats.reordered, stats.retransmitted)
    }

    #[test]
    fn a_session_on_the_heap_does_what_one_inline_does_over_a_lossy_reordering_link() {
        let (sent, events, reordered, retransmitted) = exchange::<OnHeap>();
        let reports: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                Event::Received(Message::Report(r)) => Some(r.handle),
                _ => None,
            })
            .collect();
        assert_eq!(
            reports,
            (1..=60).collect::<Vec<_>>(),
            "every report once, in order"
        );
        assert!(
            reordered > 0 && retransmitted > 0,
            "{reordered} {retransmitted}"
        );
        let inline = exchange::<Inline>();
        assert!(sent == inline.0, "the same frames as a session inline");
        assert_eq!(events, inline.1, "the same events as a session inline");
        // Decodable frames all along (a sanity check of the trace itself).
        assert!(sent.iter().all(|f| proto::decode(f).is_ok()));
    }
}
