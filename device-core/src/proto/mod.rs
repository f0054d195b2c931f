//! The device link protocol: messages, framing and their errors.
//!
//! Frame = COBS(postcard(frame) ‖ CRC-32 little-endian) followed by `0x00`. On datagram links
//! one frame travels per datagram; on byte streams (TCP, TLS, UART) [`Deframer`] splits on
//! `0x00`. Decoding never panics: every rejection is a [`DecodeError`].
//!
//! Versioning: `Hello` and `Welcome` carry the protocol version as their first field, and the
//! decoder reads it *before* the rest of the message, so a peer of another version gets
//! [`DecodeError::UnsupportedVersion`] even when the remaining layout differs. A device speaks
//! [`PROTOCOL_VERSION`] and accepts only a `Welcome` of that version; a bridge accepts a
//! `Hello` of any version from [`MIN_PROTOCOL_VERSION`] up and answers in the device's
//! version. A new version only appends message kinds and reasons, so every older message
//! keeps its bytes; a session never sends a kind newer than its peer's version
//! ([`Message::since`]).
//!
//! | version | adds |
//! |---|---|
//! | 1 | `Hello`, `Welcome`, `Assign`, `Cancel`, `Report`, `Heartbeat`, `Ack`, `Reject` (tags 0–7) |
//! | 2 | `Preempt` (tag 8), `Suspended` (tag 9), `Restore` (tag 10), `RejectReason::Started` (index 8) and `NotResumable` (9), `Hello::resumable`/`restartable` (two bytes after `max_payload`, only in a `Hello` of version 2 or later) |
//! | 3 | `Reprioritize` (tag 11) |

mod cobs;
mod crc;
mod message;
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use core::fmt;

pub use crc::{Crc32, crc32};
pub use message::{
    Assign, Cancel, CapabilityName, DeviceId, Frame, Handle, Hello, LockName, Message, Payload,
    Preempt, Preemption, Reject, RejectReason, Report, Reprioritize, Restore, Suspended,
    TRANSIENT_ERROR, TaskReport, Welcome, valid_lock_name,
};

/// The protocol spoken by this crate: what a device sends in `Hello`.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol a bridge still serves: it accepts a `Hello` of any version in
/// `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` and answers in that version.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Largest task payload or result, in bytes.
pub const MAX_PAYLOAD: usize = 256;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID: usize = 32;
/// Longest capability name, in bytes.
pub const MAX_CAPABILITY_NAME: usize = 32;
/// Most capabilities one device can advertise.
pub const MAX_CAPABILITIES: usize = 8;
/// Most locks one task can declare.
pub const MAX_TASK_LOCKS: usize = 4;
/// Longest lock name, in bytes (see [`valid_lock_name`]).
pub const MAX_LOCK_NAME: usize = 16;
/// Most locks one device can advertise by name: its lock ids `0..MAX_LOCKS`. Kept small
/// because it sizes `Hello`, the largest message, and with it every [`Message`] a session
/// keeps (each name costs 20 bytes of RAM in every retained message).
pub const MAX_LOCKS: usize = 4;
/// Longest trace id, in bytes.
pub const MAX_TRACE_ID: usize = 32;
/// Per-task bytes a handler keeps across its steps, and so the largest checkpoint scratch a
/// `Suspended` carries (the runtime's `SCRATCH_BYTES` is this number).
pub const MAX_SCRATCH: usize = 16;

/// Largest postcard encoding of any [`Frame`], in bytes. Varints take at most 5 bytes for a
/// `u32` and 3 for a `u16`; a length prefix takes 1 byte up to 127 and 2 up to 16383. The
/// largest message is `Hello` with every capability and lock name at full length, ahead of
/// `Assign` and `Suspended`/`Restore` (a test encodes the largest value of every message and checks
/// this is tight).
pub const MAX_MESSAGE: usize = {
    let header = 5 + 5 + 1 + 1; // seq, ack, credit, message tag
    let hello = 3 // version
        + 1 + MAX_DEVICE_ID
        + 5 // boot_id
        + 5 // session_id
        + 1 + MAX_CAPABILITIES * (1 + MAX_CAPABILITY_NAME)
        + 1 + MAX_LOCKS * (1 + MAX_LOCK_NAME)
        + 1 // slots
        + 3 // max_payload
        + 1 + 1; // resumable, restartable (version 2)
    let assign = 5 // handle
        + 1 // priority
        + 1 + 5 // deadline_ms: Option<u32>
        + 1 + MAX_CAPABILITY_NAME
        + 1 + MAX_TASK_LOCKS
        + 2 + MAX_PAYLOAD
        + 1 + MAX_TRACE_ID;
    // `Restore` has the same fields.
    let suspended = 5 // handle
        + 5 // steps
        + 1 + MAX_SCRATCH
        + 2 + MAX_PAYLOAD;
    // The one-byte length prefixes above hold for these limits.
    assert!(MAX_DEVICE_ID < 128 && MAX_CAPABILITY_NAME < 128 && MAX_LOCK_NAME < 128);
    assert!(MAX_CAPABILITIES < 128 && MAX_LOCKS < 128 && MAX_TASK_LOCKS < 128);
    assert!(MAX_TRACE_ID < 128 && MAX_PAYLOAD >= 128 && MAX_PAYLOAD < 16384);
    assert!(MAX_SCRATCH < 128);
    // Lock ids travel as `u8`.
    assert!(MAX_LOCKS <= 256);
    let mut largest = hello;
    if assign > largest {
        largest = assign;
    }
    if suspended > largest {
        largest = suspended;
    }
    header + largest
};

/// Length of the CRC trailer.
const CRC_LEN: usize = 4;

/// Largest frame on the wire, including the `0x00` delimiter. Receive buffers of this size
/// never have to drop a valid frame.
pub const MAX_FRAME: usize = cobs::max_encoded_len(MAX_MESSAGE + CRC_LEN) + 1;

/// Why a frame could not be encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is smaller than the frame (use [`MAX_FRAME`]).
    BufferTooSmall,
    /// The message body is longer than [`MAX_MESSAGE`].
    Oversize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BufferTooSmall => "output buffer too small for the frame",
            Self::Oversize => "message longer than MAX_MESSAGE",
        })
    }
}

impl core::error::Error for EncodeError {}

/// Why received bytes are not a frame. The bytes are dropped; nothing else changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum DecodeError {
    /// Longer than [`MAX_FRAME`].
    Oversize,
    /// Not valid COBS (a zero inside, or a length code past the end).
    BadCobs,
    /// Shorter than the CRC trailer.
    Truncated,
    /// The CRC does not match: corrupted on the way.
    BadCrc,
    /// A `Hello` or `Welcome` of a protocol version this side does not speak.
    UnsupportedVersion(u16),
    /// A message tag this version does not know.
    UnknownMessage(u32),
    /// A message this side never receives (a device sent `Assign`, a bridge sent `Hello`).
    Unexpected(u32),
    /// The CRC matched but the content is not a valid message (a field out of range, a string
    /// that is not UTF-8 or too long, trailing bytes).
    Malformed,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversize => write!(f, "frame longer than {MAX_FRAME} bytes"),
            Self::BadCobs => f.write_str("invalid COBS framing"),
            Self::Truncated => f.write_str("frame shorter than its CRC"),
            Self::BadCrc => f.write_str("CRC mismatch"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "protocol version {v} (devices speak {PROTOCOL_VERSION}, \
                 bridges {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
            ),
            Self::UnknownMessage(t) => write!(f, "unknown message tag {t}"),
            Self::Unexpected(t) => write!(f, "message tag {t} is never sent to this side"),
            Self::Malformed => f.write_str("malformed message"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Encodes `frame` into `out` (COBS, CRC and the trailing `0x00`); returns the length used.
pub fn encode(frame: &Frame, out: &mut [u8]) -> Result<usize, EncodeError> {
    encode_message(frame.seq, frame.ack, frame.credit, &frame.message, out)
}

/// Encodes the frame (`seq`, `ack`, `credit`, `message`) without building a [`Frame`], so a
/// sender can encode a message it keeps (a retransmission window) without copying it.
pub fn encode_message(
    seq: u32,
    ack: u32,
    credit: u8,
    message: &Message,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_body::<{ wire::ALL }>(seq, ack, credit, wire::Body::Message(message), out)
}

/// As [`encode_message`], for a body borrowed in any form, of a kind in the mask `KINDS`
/// (`1 << tag` per kind): a side instantiates it with the kinds it sends, and the encoders
/// of the others are left out of its firmware.
pub(crate) fn encode_body<const KINDS: u16>(
    seq: u32,
    ack: u32,
    credit: u8,
    body: wire::Body<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut raw = [0u8; MAX_MESSAGE];
    let mut w = wire::Writer::new(&mut raw);
    wire::write_body::<KINDS>(&mut w, seq, ack, credit, body)
        .map_err(|_| EncodeError::BufferTooSmall)?;
    let n = w.written();
    seal(&raw[..n], out)
}

/// Frames an already-encoded message body: appends the CRC, COBS-encodes and adds the `0x00`
/// delimiter. (Tests and fuzzers use it to reach the message parser behind the CRC.)
pub fn seal(body: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let n = body.len();
    if n > MAX_MESSAGE {
        return Err(EncodeError::Oversize);
    }
    let mut raw = [0u8; MAX_MESSAGE + CRC_LEN];
    raw[..n].copy_from_slice(body);
    raw[n..n + CRC_LEN].copy_from_slice(&crc32(body).to_le_bytes());
    let m = cobs::encode(&raw[..n + CRC_LEN], out).ok_or(EncodeError::BufferTooSmall)?;
    *out.get_mut(m).ok_or(EncodeError::BufferTooSmall)? = 0;
    Ok(m + 1)
}

/// Decodes one frame: `bytes` is everything between two delimiters (a trailing `0x00`, if
/// present, is ignored). Any kind, and a `Hello` or `Welcome` of any version a bridge serves
/// (`MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION`).
pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    decode_of::<{ wire::ALL }, MIN_PROTOCOL_VERSION>(bytes)
}

/// As [`decode`], accepting only the message kinds in the mask `KINDS` (`1 << tag` per
/// kind), others being [`DecodeError::Unexpected`], and only a `Hello` or `Welcome` of a
/// version in `OLDEST..=PROTOCOL_VERSION`. A side instantiates it with the kinds it
/// receives, and the parsers of the others are left out of its firmware; a device with
/// `OLDEST = PROTOCOL_VERSION` (the version it sends), a bridge with `MIN_PROTOCOL_VERSION`.
pub(crate) fn decode_of<const KINDS: u16, const OLDEST: u16>(
    bytes: &[u8],
) -> Result<Frame, DecodeError> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.len() >= MAX_FRAME {
        return Err(DecodeError::Oversize);
    }
    let mut raw = [0u8; MAX_MESSAGE + CRC_LEN];
    let n = cobs::decode(bytes, &mut raw).map_err(|e| match e {
        cobs::CobsError::Malformed => DecodeError::BadCobs,
        cobs::CobsError::TooLong => DecodeError::Oversize,
    })?;
    if n < CRC_LEN {
        return Err(DecodeError::Truncated);
    }
    let (body, trailer) = raw[..n].split_at(n - CRC_LEN);
    let mut sent = [0u8; CRC_LEN];
    sent.copy_from_slice(trailer);
    if crc32(body) != u32::from_le_bytes(sent) {
        return Err(DecodeError::BadCrc);
    }
    let tag = check_header(body, OLDEST)?;
    if KINDS & (1 << tag) == 0 {
        return Err(DecodeError::Unexpected(tag));
    }
    wire::read_frame_of::<KINDS>(&mut wire::Reader::new(body)).map_err(|_| DecodeError::Malformed)
}

/// Reads the header and, for `Hello`/`Welcome`, the version (refused outside
/// `oldest..=PROTOCOL_VERSION`), before the full decode; returns the message tag.
fn check_header(body: &[u8], oldest: u16) -> Result<u32, DecodeError> {
    const HELLO: u32 = 0;
    const WELCOME: u32 = 1;
    let mut r = wire::Reader::new(body);
    let malformed = |_| DecodeError::Malformed;
    r.u32().map_err(malformed)?; // seq
    r.u32().map_err(malformed)?; // ack
    r.byte().map_err(malformed)?; // credit
    let tag = r.u32().map_err(malformed)?;
    if tag >= wire::MESSAGES {
        return Err(DecodeError::UnknownMessage(tag));
    }
    if tag == HELLO || tag == WELCOME {
        let version = r.u16().map_err(malformed)?;
        if !(oldest..=PROTOCOL_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
    }
    Ok(tag)
}

/// Splits a byte stream into frames on `0x00`, in a fixed buffer of `CAP` bytes
/// (use [`MAX_FRAME`]). A frame longer than the buffer is skipped up to the next delimiter and
/// reported once as [`DecodeError::Oversize`]; the stream then resynchronises by itself.
#[derive(Clone, Debug)]
pub struct Deframer<const CAP: usize> {
    buf: heapless::Vec<u8, CAP>,
    /// Inside an oversize frame: drop bytes until the next delimiter.
    skipping: bool,
    /// `buf` holds a complete frame handed out by `push_raw`; cleared at the next call.
    complete: bool,
}

impl<const CAP: usize> Default for Deframer<CAP> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CAP: usize> Deframer<CAP> {
    /// An empty deframer.
    pub const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            skipping: false,
            complete: false,
        }
    }

    /// Feeds bytes until a frame is complete. Returns the number of bytes consumed and, when a
    /// delimiter was reached, the decoded frame or the reason it was dropped. Call again with
    /// the rest of the input.
    pub fn push(&mut self, bytes: &[u8]) -> (usize, Option<Result<Frame, DecodeError>>) {
        let (used, raw) = self.push_raw(bytes);
        (used, raw.map(|r| r.and_then(decode)))
    }

    /// As [`push`](Self::push), but hands out the complete frame's bytes undecoded (for a
    /// decoder of the caller's choice, such as a session's), valid until the next call.
    pub fn push_raw(&mut self, bytes: &[u8]) -> (usize, Option<Result<&[u8], DecodeError>>) {
        if core::mem::take(&mut self.complete) {
            self.buf.clear();
        }
        for (i, &b) in bytes.iter().enumerate() {
            if b != 0 {
                if !self.skipping && self.buf.push(b).is_err() {
                    self.skipping = true;
                    self.buf.clear();
                    return (i + 1, Some(Err(DecodeError::Oversize)));
                }
                continue;
            }
            let was_skipping = core::mem::replace(&mut self.skipping, false);
            if was_skipping || self.buf.is_empty() {
                // End of a skipped frame, or an empty frame (a delimiter used as a wake-up or
                // line-noise separator): nothing to report.
                self.buf.clear();
                continue;
            }
            self.complete = true;
            return (i + 1, Some(Ok(&self.buf)));
        }
        (bytes.len(), None)
    }
}
