//! The two ends of a link as types. A `Session<DeviceSide, …>` compiles only the device's half
//! of the protocol — its handshake, the encoders of what a device sends and the parsers of what
//! it receives — and a `Session<BridgeSide, …>` only the bridge's (measured: a whole
//! `Device<8, 4, 4, 4>` went from 13,228 to 12,528 bytes of `.text`).

use crate::proto::{self, DecodeError, EncodeError, Frame, Hello, Message, wire};

/// Which end of the link a session is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Opens sessions with `Hello`, runs tasks.
    Device,
    /// Answers with `Welcome`, sends tasks.
    Bridge,
}

/// Message kinds as `1 << tag` bits (tags in `Message` order).
const HELLO: u16 = 1 << 0;
const WELCOME: u16 = 1 << 1;
const ASSIGN: u16 = 1 << 2;
const CANCEL: u16 = 1 << 3;
const REPORT: u16 = 1 << 4;
const HEARTBEAT: u16 = 1 << 5;
const ACK: u16 = 1 << 6;
const REJECT: u16 = 1 << 7;
const PREEMPT: u16 = 1 << 8;
const SUSPENDED: u16 = 1 << 9;
const RESTORE: u16 = 1 << 10;
const REPRIORITIZE: u16 = 1 << 11;
/// What a device sends and a bridge receives.
const DEVICE_TO_BRIDGE: u16 = HELLO | REPORT | HEARTBEAT | ACK | REJECT | SUSPENDED;
/// What a bridge sends and a device receives.
const BRIDGE_TO_DEVICE: u16 =
    WELCOME | ASSIGN | CANCEL | HEARTBEAT | ACK | REJECT | PREEMPT | RESTORE | REPRIORITIZE;

/// One end of the link: [`DeviceSide`] or [`BridgeSide`].
pub trait Side: sealed::Codec + Copy + core::fmt::Debug {
    /// The role, a constant, so the other role's code is compiled out.
    const ROLE: Role;
}

/// The device end.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSide;

/// The bridge end.
#[derive(Clone, Copy, Debug)]
pub struct BridgeSide;

impl Side for DeviceSide {
    const ROLE: Role = Role::Device;
}

impl Side for BridgeSide {
    const ROLE: Role = Role::Bridge;
}

pub(crate) mod sealed {
    use super::*;

    /// The codec of one side: it encodes what the side sends and decodes what it receives.
    /// Sealed: only the two sides implement it.
    #[allow(unreachable_pub)] // the sealed-trait pattern: public in a private module
    pub trait Codec {
        /// The message kinds this side sends (`1 << tag` each).
        const SENDS: u16;
        fn decode(bytes: &[u8]) -> Result<Frame, DecodeError>;
        fn encode(
            seq: u32,
            ack: u32,
            credit: u8,
            m: &Message,
            out: &mut [u8],
        ) -> Result<usize, EncodeError>;
        fn encode_hello(
            ack: u32,
            credit: u8,
            h: &Hello,
            out: &mut [u8],
        ) -> Result<usize, EncodeError>;
    }

    /// A side's codec: it decodes the kinds in `$receives`, with a `Hello` or `Welcome` of
    /// a version from `$oldest` up, and encodes those in `$sends` (a bridge's `encode_hello`
    /// is refused by its mask like any kind it never sends).
    macro_rules! codec {
        ($side:ty, receives: $receives:expr, oldest: $oldest:expr, sends: $sends:expr) => {
            impl Codec for $side {
                const SENDS: u16 = $sends;
                fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
                    proto::decode_of::<{ $receives }, { $oldest }>(bytes)
                }
                fn encode(
                    seq: u32,
                    ack: u32,
                    credit: u8,
                    m: &Message,
                    out: &mut [u8],
                ) -> Result<usize, EncodeError> {
                    proto::encode_body::<{ $sends }>(seq, ack, credit, wire::Body::Message(m), out)
                }
                fn encode_hello(
                    ack: u32,
                    credit: u8,
                    h: &Hello,
                    out: &mut [u8],
                ) -> Result<usize, EncodeError> {
                    proto::encode_body::<{ $sends }>(0, ack, credit, wire::Body::Hello(h), out)
                }
            }
        };
    }

    // A device accepts only a `Welcome` of the version it sent (always `PROTOCOL_VERSION`);
    // a bridge serves every version from `MIN_PROTOCOL_VERSION` up.
    codec!(
        DeviceSide,
        receives: BRIDGE_TO_DEVICE,
        oldest: proto::PROTOCOL_VERSION,
        sends: DEVICE_TO_BRIDGE
    );
    codec!(
        BridgeSide,
        receives: DEVICE_TO_BRIDGE,
        oldest: proto::MIN_PROTOCOL_VERSION,
        sends: BRIDGE_TO_DEVICE
    );
}
