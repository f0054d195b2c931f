//! The postcard encoding of [`Frame`], written out by hand.
//!
//! Byte for byte what `postcard` with serde produces and accepts (a property test compares
//! both on generated frames and on arbitrary bytes), at a fraction of the flash: serde's
//! generic visitors cost about 10 KiB of `.text` on Cortex-M4 for these messages, these
//! functions about 2. The rules: `u8` is one byte; `u16`/`u32` and enum variant indices are
//! LEB128 varints (at most 3 and 5 bytes, the last byte limited to the bits that fit, and
//! non-canonical forms accepted, as postcard does); lengths are `usize` varints; `Option` is a
//! 0/1 byte before the value; structs are their fields in order. One exception serde cannot
//! express: a `Hello` of version 1 ends at `max_payload` (its preemption masks, appended in
//! version 2, are absent and read as 0), so the tests compare such a `Hello` against postcard
//! of a version 1 mirror struct.

use heapless::{String, Vec};

use super::message::{
    Assign, Cancel, Frame, Hello, Message, Preempt, Reject, RejectReason, Report, Reprioritize,
    Restore, Suspended, TaskReport, Welcome,
};
use crate::Priority;

/// Content that is not a valid message. The caller maps it to `DecodeError::Malformed`.
#[derive(Debug)]
pub(super) struct Invalid;

type Result<T> = core::result::Result<T, Invalid>;

pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self.buf.split_first().ok_or(Invalid)?;
        self.buf = rest;
        Ok(b)
    }

    /// A varint of at most `max_bytes`, whose last byte may not exceed `last_max`. Kept out of
    /// line: inlined, its loop is unrolled at each of the parser's many call sites (1.8 KB of
    /// a device's 8.3 KB of codec + session on Cortex-M4 at opt-level "s").
    #[inline(never)]
    fn varint(&mut self, max_bytes: u32, last_max: u8) -> Result<u64> {
        let mut out = 0u64;
        for i in 0..max_bytes {
            let b = self.byte()?;
            out |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return if i == max_bytes - 1 && b > last_max {
                    Err(Invalid)
                } else {
                    Ok(out)
                };
            }
        }
        Err(Invalid)
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        self.varint(3, 0x03).map(|v| v as u16)
    }

    // Out of line too, with `len` (together 350 bytes less on Cortex-M4 than inlined at every
    // field).
    #[inline(never)]
    pub(super) fn u32(&mut self) -> Result<u32> {
        self.varint(5, 0x0F).map(|v| v as u32)
    }

    /// A length: a `usize` varint, so its limits follow the target's pointer width.
    #[inline(never)]
    fn len(&mut self) -> Result<usize> {
        const BITS: u32 = usize::BITS;
        let v = self.varint(BITS.div_ceil(7), ((1u16 << (BITS % 7)) - 1) as u8)?;
        usize::try_from(v).map_err(|_| Invalid)
    }

    /// An enum variant index below `variants`.
    pub(super) fn tag(&mut self, variants: u32) -> Result<u32> {
        let t = self.u32()?;
        if t < variants { Ok(t) } else { Err(Invalid) }
    }

    fn option(&mut self) -> Result<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Invalid),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Invalid);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn bytes<const N: usize>(&mut self) -> Result<Vec<u8, N>> {
        let n = self.len()?;
        Vec::from_slice(self.take(n)?).map_err(|_| Invalid)
    }

    fn string<const N: usize>(&mut self) -> Result<String<N>> {
        let n = self.len()?;
        let text = core::str::from_utf8(self.take(n)?).map_err(|_| Invalid)?;
        String::try_from(text).map_err(|_| Invalid)
    }

    /// A sequence of strings, as `Vec<String<N>, M>`.
    fn strings<const N: usize, const M: usize>(&mut self) -> Result<Vec<String<N>, M>> {
        let n = self.len()?;
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.string()?).map_err(|_| Invalid)?;
        }
        Ok(out)
    }

    fn priority(&mut self) -> Result<Priority> {
        Priority::from_level(self.tag(Priority::LEVELS as u32)? as u8).ok_or(Invalid)
    }
}

pub(super) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    /// Tests only: write the k-th varint as these bytes instead (to make edge cases).
    #[cfg(test)]
    pub(super) fault: Option<(usize, &'static [u8])>,
    #[cfg(test)]
    varints: usize,
    /// Tests only: write the k-th option tag as this byte instead.
    #[cfg(test)]
    pub(super) option_fault: Option<(usize, u8)>,
    #[cfg(test)]
    options: usize,
}

impl<'a> Writer<'a> {
    pub(super) fn new(buf: &'a mut [u8]) -> Self {
        #[cfg(test)]
        return Self {
            buf,
            pos: 0,
            fault: None,
            varints: 0,
            option_fault: None,
            options: 0,
        };
        #[cfg(not(test))]
        Self { buf, pos: 0 }
    }

    pub(super) fn written(&self) -> usize {
        self.pos
    }

    fn byte(&mut self, b: u8) -> Result<()> {
        *self.buf.get_mut(self.pos).ok_or(Invalid)? = b;
        self.pos += 1;
        Ok(())
    }

    fn varint(&mut self, mut v: u32) -> Result<()> {
        #[cfg(test)]
        {
            self.varints += 1;
            if let Some((_, bytes)) = self.fault.filter(|f| f.0 + 1 == self.varints) {
                return bytes.iter().try_for_each(|&b| self.byte(b));
            }
        }
        while v >= 0x80 {
            self.byte((v as u8) | 0x80)?;
            v >>= 7;
        }
        self.byte(v as u8)
    }

    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.varint(b.len() as u32)?;
        let end = self.pos + b.len();
        self.buf
            .get_mut(self.pos..end)
            .ok_or(Invalid)?
            .copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    fn option<T: Copy>(
        &mut self,
        v: Option<T>,
        f: impl FnOnce(&mut Self, T) -> Result<()>,
    ) -> Result<()> {
        #[cfg(test)]
        {
            self.options += 1;
            if let Some((_, tag)) = self.option_fault.filter(|f| f.0 + 1 == self.options) {
                self.byte(tag)?;
                return match v {
                    Some(x) => f(self, x),
                    None => Ok(()),
                };
            }
        }
        match v {
            None => self.byte(0),
            Some(x) => {
                self.byte(1)?;
                f(self, x)
            }
        }
    }
}

/// A message to encode, borrowed: a sender encodes what it keeps without copying it.
#[derive(Clone, Copy)]
pub(crate) enum Body<'a> {
    Message(&'a Message),
    /// A `Message::Hello` whose `Hello` is kept on its own.
    Hello(&'a Hello),
}

/// Writes a frame header and `message`: the postcard encoding of the equivalent [`Frame`].
#[cfg(test)]
pub(super) fn write_frame(
    w: &mut Writer<'_>,
    seq: u32,
    ack: u32,
    credit: u8,
    message: &Message,
) -> Result<()> {
    write_body::<ALL>(w, seq, ack, credit, Body::Message(message))
}

fn write_hello(w: &mut Writer<'_>, h: &Hello) -> Result<()> {
    w.varint(0)?;
    w.varint(u32::from(h.version))?;
    w.bytes(h.device_id.as_bytes())?;
    w.varint(h.boot_id)?;
    w.varint(h.session_id)?;
    w.varint(h.capabilities.len() as u32)?;
    for c in &h.capabilities {
        w.bytes(c.as_bytes())?;
    }
    w.varint(h.locks.len() as u32)?;
    for l in &h.locks {
        w.bytes(l.as_bytes())?;
    }
    w.byte(h.slots)?;
    w.varint(u32::from(h.max_payload))?;
    if has_masks(h.version) {
        w.byte(h.resumable)?;
        w.byte(h.restartable)?;
    }
    Ok(())
}

/// Whether a `Hello` of `version` carries the preemption masks (version 2 appended them;
/// a version 1 peer's `Hello` ends at `max_payload`).
const fn has_masks(version: u16) -> bool {
    version >= 2
}

/// The fields of a checkpoint (`Suspended` and `Restore` share the layout).
fn write_checkpoint(
    w: &mut Writer<'_>,
    handle: u32,
    steps: u32,
    scratch: &[u8],
    result: &[u8],
) -> Result<()> {
    w.varint(handle)?;
    w.varint(steps)?;
    w.bytes(scratch)?;
    w.bytes(result)
}

/// Every message kind, as a mask of `1 << tag` bits.
pub(crate) const ALL: u16 = (1 << MESSAGES) - 1;

/// The tag of a message kind.
pub(crate) const fn tag_of(m: &Message) -> u32 {
    match m {
        Message::Hello(_) => 0,
        Message::Welcome(_) => 1,
        Message::Assign(_) => 2,
        Message::Cancel(_) => 3,
        Message::Report(_) => 4,
        Message::Heartbeat => 5,
        Message::Ack => 6,
        Message::Reject(_) => 7,
        Message::Preempt(_) => 8,
        Message::Suspended(_) => 9,
        Message::Restore(_) => 10,
        Message::Reprioritize(_) => 11,
    }
}

/// Writes a frame header and a borrowed body whose kind is in the mask `KINDS` (other kinds
/// are refused; a side that never sends a kind instantiates this without its encoder).
pub(super) fn write_body<const KINDS: u16>(
    w: &mut Writer<'_>,
    seq: u32,
    ack: u32,
    credit: u8,
    body: Body<'_>,
) -> Result<()> {
    let tag = match body {
        Body::Hello(_) => 0,
        Body::Message(m) => tag_of(m),
    };
    // As in `read_frame_of`: constant guards leave out the encoders of kinds never sent.
    let has = |kind: u32| KINDS & (1 << kind) != 0;
    if !has(tag) {
        return Err(Invalid);
    }
    w.varint(seq)?;
    w.varint(ack)?;
    w.byte(credit)?;
    let message = match body {
        Body::Hello(h) if has(0) => return write_hello(w, h),
        Body::Hello(_) => return Err(Invalid),
        Body::Message(m) => m,
    };
    match message {
        Message::Hello(h) if has(0) => write_hello(w, h),
        Message::Welcome(x) if has(1) => {
            w.varint(1)?;
            w.varint(u32::from(x.version))?;
            w.varint(x.session_id)?;
            w.varint(x.heartbeat_ms)?;
            w.varint(x.liveness_ms)
        }
        Message::Assign(a) if has(2) => {
            w.varint(2)?;
            w.varint(a.handle)?;
            w.varint(u32::from(a.priority.level()))?;
            w.option(a.deadline_ms, |w, d| w.varint(d))?;
            w.bytes(a.capability.as_bytes())?;
            w.bytes(&a.locks)?;
            w.bytes(&a.payload)?;
            w.bytes(a.trace_id.as_bytes())
        }
        Message::Cancel(c) if has(3) => {
            w.varint(3)?;
            w.varint(c.handle)
        }
        Message::Report(r) if has(4) => {
            w.varint(4)?;
            w.varint(r.handle)?;
            w.varint(r.state as u32)?;
            w.bytes(&r.result)?;
            w.option(r.error, |w, e| w.varint(u32::from(e)))
        }
        Message::Heartbeat if has(5) => w.varint(5),
        Message::Ack if has(6) => w.varint(6),
        Message::Reject(r) if has(7) => {
            w.varint(7)?;
            w.option(r.handle, |w, h| w.varint(h))?;
            w.varint(r.reason as u32)
        }
        Message::Preempt(p) if has(8) => {
            w.varint(8)?;
            w.varint(p.handle)
        }
        Message::Suspended(s) if has(9) => {
            w.varint(9)?;
            write_checkpoint(w, s.handle, s.steps, &s.scratch, &s.result)
        }
        Message::Restore(s) if has(10) => {
            w.varint(10)?;
            write_checkpoint(w, s.handle, s.steps, &s.scratch, &s.result)
        }
        Message::Reprioritize(p) if has(11) => {
            w.varint(11)?;
            w.varint(p.handle)?;
            w.varint(u32::from(p.priority.level()))
        }
        // A kind this side never sends (refused above already).
        _ => Err(Invalid),
    }
}

/// Number of `Message` variants.
pub(super) const MESSAGES: u32 = 12;

/// Reads a whole frame; trailing bytes are invalid.
#[cfg(test)]
pub(super) fn read_frame(r: &mut Reader<'_>) -> Result<Frame> {
    read_frame_of::<ALL>(r)
}

/// Reads a whole frame whose kind is in the mask `KINDS` (a side that never receives a kind
/// instantiates this without its parser).
pub(super) fn read_frame_of<const KINDS: u16>(r: &mut Reader<'_>) -> Result<Frame> {
    let seq = r.u32()?;
    let ack = r.u32()?;
    let credit = r.byte()?;
    let tag = r.tag(MESSAGES)?;
    // Each arm is guarded by a constant, so a side's parser keeps only the kinds it receives
    // (a range check on `tag` alone does not let the compiler drop the others).
    let has = |kind: u32| KINDS & (1 << kind) != 0;
    let message = match tag {
        0 if has(0) => {
            let version = r.u16()?;
            let mut h = Hello {
                version,
                device_id: r.string()?,
                boot_id: r.u32()?,
                session_id: r.u32()?,
                capabilities: r.strings()?,
                locks: r.strings()?,
                slots: r.byte()?,
                max_payload: r.u16()?,
                resumable: 0,
                restartable: 0,
            };
            if has_masks(version) {
                h.resumable = r.byte()?;
                h.restartable = r.byte()?;
            }
            Message::Hello(h)
        }
        1 if has(1) => Message::Welcome(Welcome {
            version: r.u16()?,
            session_id: r.u32()?,
            heartbeat_ms: r.u32()?,
            liveness_ms: r.u32()?,
        }),
        2 if has(2) => Message::Assign(Assign {
            handle: r.u32()?,
            priority: r.priority()?,
            deadline_ms: if r.option()? { Some(r.u32()?) } else { None },
            capability: r.string()?,
            locks: r.bytes()?,
            payload: r.bytes()?,
            trace_id: r.string()?,
        }),
        3 if has(3) => Message::Cancel(Cancel { handle: r.u32()? }),
        4 if has(4) => Message::Report(Report {
            handle: r.u32()?,
            state: TaskReport::from_index(r.tag(TaskReport::COUNT)?).ok_or(Invalid)?,
            result: r.bytes()?,
            error: if r.option()? { Some(r.u16()?) } else { None },
        }),
        5 if has(5) => Message::Heartbeat,
        6 if has(6) => Message::Ack,
        7 if has(7) => Message::Reject(Reject {
            handle: if r.option()? { Some(r.u32()?) } else { None },
            reason: RejectReason::from_index(r.tag(RejectReason::COUNT)?).ok_or(Invalid)?,
        }),
        8 if has(8) => Message::Preempt(Preempt { handle: r.u32()? }),
        9 if has(9) => Message::Suspended(Suspended {
            handle: r.u32()?,
            steps: r.u32()?,
            scratch: r.bytes()?,
            result: r.bytes()?,
        }),
        10 if has(10) => Message::Restore(Restore {
            handle: r.u32()?,
            steps: r.u32()?,
            scratch: r.bytes()?,
            result: r.bytes()?,
        }),
        11 if has(11) => Message::Reprioritize(Reprioritize {
            handle: r.u32()?,
            priority: r.priority()?,
        }),
        // A kind this side never receives.
        _ => return Err(Invalid),
    };
    if r.is_empty() {
        Ok(Frame {
            seq,
            ack,
            credit,
            message,
        })
    } else {
        Err(Invalid)
    }
}
