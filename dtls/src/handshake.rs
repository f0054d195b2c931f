//! Handshake message framing (RFC 6347 §4.2.2): the 12-byte header, splitting a message into
//! fragments that fit a datagram, and putting received fragments back together in order.

use std::collections::BTreeMap;

use crate::codec::{Malformed, Reader, put_u24};

pub const HEADER_LEN: usize = 12;

/// Handshake message types (RFC 5246 §7.4, RFC 6347 §4.3.2).
pub mod kind {
    pub const CLIENT_HELLO: u8 = 1;
    pub const SERVER_HELLO: u8 = 2;
    pub const HELLO_VERIFY_REQUEST: u8 = 3;
    pub const CERTIFICATE: u8 = 11;
    pub const SERVER_KEY_EXCHANGE: u8 = 12;
    pub const CERTIFICATE_REQUEST: u8 = 13;
    pub const SERVER_HELLO_DONE: u8 = 14;
    pub const CERTIFICATE_VERIFY: u8 = 15;
    pub const CLIENT_KEY_EXCHANGE: u8 = 16;
    pub const FINISHED: u8 = 20;
}

/// The largest handshake message accepted: a certificate chain of a few certificates. A peer
/// announcing more is refused before anything is buffered.
pub const MAX_MESSAGE: usize = 32 * 1024;

/// Messages further ahead than this of the next expected one are dropped (the peer
/// retransmits): the largest flight (the server's) has five messages.
const MAX_AHEAD: u16 = 5;

/// The bytes of every partial message together: a few empty fragments announcing large
/// messages must not pin a large buffer each (nine announcing 32 KiB held 288 KiB).
const MAX_PENDING: usize = MAX_MESSAGE + 8 * 1024;

/// Received ranges of one message: beyond them the message is dropped and the peer's
/// retransmission starts it over. Real peers send a message in order, in at most a few pieces;
/// thousands of one-byte pieces with gaps cost memory and time for nothing.
const MAX_RANGES: usize = 32;

/// One fragment of a handshake message as it appears in a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    pub kind: u8,
    /// The whole message's length.
    pub length: u32,
    pub seq: u16,
    pub offset: u32,
    pub body: &'a [u8],
}

impl<'a> Fragment<'a> {
    /// Reads one fragment from a record's plaintext; the rest of the record follows it.
    pub fn read(r: &mut Reader<'a>) -> Result<Self, Malformed> {
        let kind = r.u8("handshake header")?;
        let length = r.u24("handshake header")?;
        let seq = r.u16("handshake header")?;
        let offset = r.u24("handshake header")?;
        let body = r.vec24("handshake fragment")?;
        if offset as usize + body.len() > length as usize {
            return Err(Malformed("handshake fragment beyond its message"));
        }
        Ok(Self {
            kind,
            length,
            seq,
            offset,
            body,
        })
    }

    /// Appends the fragment with its header.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        put_u24(out, self.length as usize);
        out.extend_from_slice(&self.seq.to_be_bytes());
        put_u24(out, self.offset as usize);
        put_u24(out, self.body.len());
        out.extend_from_slice(self.body);
    }
}

/// A whole message, as the transcript holds it: the header of an unfragmented message (offset
/// 0, fragment length = length) then the body (RFC 6347 §4.2.6).
pub fn whole(kind: u8, seq: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    Fragment {
        kind,
        length: body.len() as u32,
        seq,
        offset: 0,
        body,
    }
    .write(&mut out);
    out
}

/// A received message, whole and in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: u8,
    pub seq: u16,
    /// The epoch its fragments came in (every fragment of a message must share it).
    pub epoch: u16,
    pub body: Vec<u8>,
}

impl Message {
    /// The message as the transcript holds it.
    pub fn whole(&self) -> Vec<u8> {
        whole(self.kind, self.seq, &self.body)
    }
}

/// A message some of whose fragments have come.
#[derive(Debug)]
struct Partial {
    kind: u8,
    epoch: u16,
    body: Vec<u8>,
    /// Received byte ranges, merged: `start -> end`.
    have: BTreeMap<u32, u32>,
}

impl Partial {
    fn complete(&self) -> bool {
        let len = self.body.len() as u32;
        len == 0 || self.have.get(&0).is_some_and(|&end| end == len)
    }

    /// Records `[start, end)` as received, merging it with its neighbours (the ranges are
    /// disjoint, so those it touches are the last ones starting at or before `end`).
    fn mark(&mut self, start: u32, end: u32) {
        let (mut start, mut end) = (start, end);
        let touching: Vec<(u32, u32)> = self
            .have
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.have.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.have.insert(start, end);
    }
}

/// What became of a received fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Part of a message not yet delivered.
    Buffered,
    /// A message already delivered: the peer is retransmitting its last flight, so ours may
    /// have been lost.
    Old,
    /// Too far ahead to keep.
    Dropped,
}

/// Puts received fragments back together and hands out messages in `seq` order.
#[derive(Debug, Default)]
pub struct Reassembler {
    next: u16,
    pending: BTreeMap<u16, Partial>,
    /// The bytes of `pending`'s bodies.
    pending_bytes: usize,
}

impl Reassembler {
    /// A reassembler expecting message `next` first (a server that answered a cookie exchange
    /// statelessly starts at the ClientHello that carried the cookie).
    pub fn starting_at(next: u16) -> Self {
        Self {
            next,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        }
    }

    /// The `seq` of the next message to hand out.
    pub fn next_seq(&self) -> u16 {
        self.next
    }

    /// Takes a fragment received in `epoch`.
    pub fn push(&mut self, f: &Fragment<'_>, epoch: u16) -> Result<Received, Malformed> {
        if f.seq < self.next {
            return Ok(Received::Old);
        }
        if f.seq - self.next > MAX_AHEAD {
            return Ok(Received::Dropped);
        }
        let length = f.length as usize;
        if length > MAX_MESSAGE {
            return Err(Malformed("handshake message over 32 KiB"));
        }
        if !self.pending.contains_key(&f.seq) {
            if self.pending_bytes + length > MAX_PENDING {
                return Ok(Received::Dropped);
            }
            self.pending_bytes += length;
        }
        let partial = self.pending.entry(f.seq).or_insert_with(|| Partial {
            kind: f.kind,
            epoch,
            body: vec![0; length],
            have: BTreeMap::new(),
        });
        if partial.kind != f.kind || partial.body.len() != f.length as usize {
            return Err(Malformed("handshake fragments of one message disagree"));
        }
        if partial.epoch != epoch {
            return Err(Malformed(
                "handshake fragments of one message in two epochs",
            ));
        }
        let start = f.offset as usize;
        partial.body[start..start + f.body.len()].copy_from_slice(f.body);
        partial.mark(f.offset, f.offset + f.body.len() as u32);
        if partial.have.len() > MAX_RANGES {
            self.forget(f.seq);
            return Ok(Received::Dropped);
        }
        Ok(Received::Buffered)
    }

    fn forget(&mut self, seq: u16) {
        if let Some(p) = self.pending.remove(&seq) {
            self.pending_bytes -= p.body.len();
        }
    }

    /// The next message, once all of it has come.
    pub fn pop(&mut self) -> Option<Message> {
        let partial = self.pending.get(&self.next)?;
        if !partial.complete() {
            return None;
        }
        let partial = self.pending.remove(&self.next)?;
        self.pending_bytes -= partial.body.len();
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        Some(Message {
            kind: partial.kind,
            seq,
            epoch: partial.epoch,
            body: partial.body,
        })
    }

    /// Forgets what is buffered (the handshake is over).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

/// Splits a whole message (header + body, as [`whole`] makes it) into fragments of at most
/// `room` bytes each, headers included, and hands each to `emit`.
pub fn fragments(message: &[u8], room: usize, mut emit: impl FnMut(Vec<u8>)) {
    let (header, body) = message.split_at(HEADER_LEN);
    let kind = header[0];
    let seq = u16::from_be_bytes([header[4], header[5]]);
    let per = room.saturating_sub(HEADER_LEN).max(1);
    if body.is_empty() {
        emit(message.to_vec());
        return;
    }
    for (i, chunk) in body.chunks(per).enumerate() {
        let mut out = Vec::with_capacity(HEADER_LEN + chunk.len());
        Fragment {
            kind,
            length: body.len() as u32,
            seq,
            offset: (i * per) as u32,
            body: chunk,
        }
        .write(&mut out);
        emit(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(message: &[u8], room: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        fragments(message, room, |f| out.push(f));
        out
    }

    fn push_all(r: &mut Reassembler, pieces: &[Vec<u8>]) {
        for p in pieces {
            let mut rd = Reader::new(p);
            let f = Fragment::read(&mut rd).unwrap();
            rd.end("end").unwrap();
            assert_eq!(r.push(&f, 0).unwrap(), Received::Buffered);
        }
    }

    #[test]
    fn a_whole_message_has_the_rfc_header() {
        assert_eq!(
            whole(kind::FINISHED, 5, &[0xaa, 0xbb]),
            [20, 0, 0, 2, 0, 5, 0, 0, 0, 0, 0, 2, 0xaa, 0xbb]
        );
    }

    #[test]
    fn fragments_in_any_order_give_back_the_message_once() {
        let body: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let message = whole(kind::CERTIFICATE, 2, &body);
        let mut pieces = frags(&message, 100);
        assert_eq!(pieces.len(), 12);
        assert!(pieces.iter().all(|p| p.len() <= 100));
        pieces.reverse();
        // A duplicate of a fragment changes nothing.
        pieces.push(pieces[3].clone());
        let mut r = Reassembler::starting_at(2);
        push_all(&mut r, &pieces[..pieces.len() - 2]);
        assert_eq!(r.pop(), None, "one fragment is missing");
        push_all(&mut r, &pieces[pieces.len() - 2..]);
        let m = r.pop().unwrap();
        assert_eq!((m.kind, m.seq, m.whole()), (kind::CERTIFICATE, 2, message));
        assert_eq!(r.pop(), None);
        assert_eq!(r.next_seq(), 3);
    }

    #[test]
    fn messages_come_out_in_sequence_order() {
        let mut r = Reassembler::default();
        push_all(&mut r, &frags(&whole(kind::SERVER_HELLO_DONE, 1, &[]), 100));
        assert_eq!(r.pop(), None, "message 0 has not come");
        push_all(&mut r, &frags(&whole(kind::SERVER_HELLO, 0, &[1, 2]), 100));
        assert_eq!(r.pop().unwrap().kind, kind::SERVER_HELLO);
        assert_eq!(r.pop().unwrap().kind, kind::SERVER_HELLO_DONE);
        let old = whole(kind::SERVER_HELLO, 0, &[1, 2]);
        let f = Fragment::read(&mut Reader::new(&old)).unwrap();
        assert_eq!(r.push(&f, 0).unwrap(), Received::Old);
    }

    #[test]
    fn fragments_that_disagree_or_overrun_are_malformed() {
        let mut r = Reassembler::default();
        let a = whole(kind::CERTIFICATE, 0, &[0; 10]);
        let f = Fragment::read(&mut Reader::new(&a)).unwrap();
        r.push(
            &Fragment {
                body: &f.body[..4],
                ..f.clone()
            },
            0,
        )
        .unwrap();
        let other_kind = Fragment {
            kind: kind::FINISHED,
            body: &f.body[..4],
            ..f.clone()
        };
        assert!(r.push(&other_kind, 0).is_err());
        assert!(r.push(&f, 1).is_err(), "another epoch");
        // A fragment whose end is beyond its message's length.
        let mut bad = Vec::new();
        Fragment {
            length: 4,
            offset: 2,
            body: &[1, 2, 3],
            ..f.clone()
        }
        .write(&mut bad);
        assert!(Fragment::read(&mut Reader::new(&bad)).is_err());
        // A message announcing more than the cap.
        let huge = Fragment {
            seq: 1,
            length: (MAX_MESSAGE + 1) as u32,
            offset: 0,
            body: &[],
            kind: kind::CERTIFICATE,
        };
        assert!(r.push(&huge, 0).is_err());
    }

    #[test]
    fn messages_far_ahead_are_dropped() {
        let mut r = Reassembler::default();
        let m = whole(kind::FINISHED, MAX_AHEAD + 1, &[0; 12]);
        let f = Fragment::read(&mut Reader::new(&m)).unwrap();
        assert_eq!(r.push(&f, 0).unwrap(), Received::Dropped);
    }

    #[test]
    fn every_prefix_of_a_fragment_is_malformed_not_a_panic() {
        let m = whole(kind::FINISHED, 0, &[7; 12]);
        for n in 0..m.len() {
            assert!(Fragment::read(&mut Reader::new(&m[..n])).is_err(), "{n}");
        }
    }

    fn fragment(seq: u16, length: u32, offset: u32, body: &[u8]) -> Fragment<'_> {
        Fragment {
            kind: kind::CERTIFICATE,
            length,
            seq,
            offset,
            body,
        }
    }

    #[test]
    fn empty_fragments_announcing_large_messages_pin_a_bounded_buffer() {
        let mut r = Reassembler::default();
        let big = MAX_MESSAGE as u32;
        let taken: Vec<Received> = (0..=MAX_AHEAD)
            .map(|seq| r.push(&fragment(seq, big, 0, &[]), 0).unwrap())
            .collect();
        assert!(r.pending_bytes <= MAX_PENDING, "{}", r.pending_bytes);
        let held: usize = r.pending.values().map(|p| p.body.len()).sum();
        assert_eq!(held, r.pending_bytes);
        assert_eq!(taken[0], Received::Buffered);
        assert!(taken.contains(&Received::Dropped), "{taken:?}");
        // Delivering the message frees its room for the next.
        let body = vec![1u8; MAX_MESSAGE];
        r.push(&fragment(0, big, 0, &body), 0).unwrap();
        assert_eq!(r.pop().unwrap().body.len(), MAX_MESSAGE);
        assert_eq!(
            r.push(&fragment(1, big, 0, &[]), 0).unwrap(),
            Received::Buffered
        );
    }

    #[test]
    fn a_message_in_many_pieces_with_gaps_is_dropped_and_can_start_over() {
        let mut r = Reassembler::default();
        let length = 4096u32;
        let byte = [7u8];
        let mut results = Vec::new();
        for i in 0..(length / 2) {
            results.push(r.push(&fragment(0, length, i * 2, &byte), 0).unwrap());
        }
        assert!(r.pending.get(&0).is_none_or(|p| p.have.len() <= MAX_RANGES));
        assert!(results.contains(&Received::Dropped));
        // The peer's retransmission in one piece is taken.
        let body = vec![3u8; length as usize];
        assert_eq!(
            r.push(&fragment(0, length, 0, &body), 0).unwrap(),
            Received::Buffered
        );
        assert_eq!(r.pop().unwrap().body, body);
        assert_eq!(r.pending_bytes, 0);
    }

    #[test]
    fn pieces_in_order_merge_into_one_range() {
        let mut r = Reassembler::default();
        for i in 0..1000u32 {
            r.push(&fragment(0, 2000, i, &[1]), 0).unwrap();
        }
        assert_eq!(r.pending[&0].have.len(), 1);
    }
}
