//! The reliable link session, the same code on the device and in the bridge.
//!
//! [`Session`] is sans-IO: bytes go in through [`Session::handle_bytes`], time through
//! [`Session::handle_timeout`]; frames to send come out of [`Session::poll_transmit`] and the
//! next instant it needs to be woken at from [`Session::poll_timeout`]. A driver (a tokio task
//! in the bridge, the firmware main loop on a device) only moves bytes and arms one timer.
//!
//! What it provides, per session:
//! - **Handshake**: the device repeats `Hello` (with backoff) until a `Welcome` for that
//!   handshake arrives. A `Hello` with a new boot id or a new session id starts a fresh
//!   session on the bridge; a repeated `Hello` (its `Welcome` was lost) is answered again.
//! - **Versions**: a bridge serves devices of every version from
//!   [`MIN_PROTOCOL_VERSION`](crate::proto::MIN_PROTOCOL_VERSION) up, answers each in its own
//!   version ([`Session::peer_version`]) and refuses to send it a kind it does not know
//!   ([`Refusal::Unsupported`]).
//! - **Reliable, in-order, exactly-once delivery** of `Assign`, `Cancel`, `Report`,
//!   `Reject`, `Preempt`, `Suspended`, `Restore` and `Reprioritize`: sequence numbers,
//!   cumulative acks piggybacked on every frame, a send window of `W` messages, go-back-N
//!   retransmission on timeout with exponential backoff, and duplicate and out-of-order frames
//!   dropped (and re-acked) by the receiver.
//! - **Liveness**: a `Heartbeat` after each idle heartbeat interval; silence for the liveness
//!   timeout ends the session ([`Event::PeerLost`]). A device then starts a new handshake and
//!   re-sends what was still unacknowledged; a bridge drops the session. A bridge waiting for
//!   a `Hello` hears only a `Hello`: other frames are answered `Reject(NoSession)` and do not
//!   count as a sign of life, so a peer that never says `Hello` is dropped at the timeout.
//! - **Flow control**: every frame's header carries the sender's credit (a device's free task
//!   slots) for the ack it carries; [`Session::send`] refuses an `Assign` beyond it.

pub mod buffer;
mod session;
mod side;
#[cfg(test)]
mod tests;

pub use buffer::{Buffers, Inline, MessageBuffer};
pub use session::{Config, Event, Refusal, SendError, Session, State, Stats, Unacked};
pub use side::{BridgeSide, DeviceSide, Role, Side};
