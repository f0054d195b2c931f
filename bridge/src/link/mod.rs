//! Device links: tasks that move bytes between a transport and a device-core session.
//!
//! Every link kind ends in the same place: a `Session<BridgeSide>` per device connection,
//! driven by [`stream::run`] for byte streams (TCP now; TLS and serial reuse it) and, later,
//! a datagram driver for UDP/DTLS. A link talks to the bridge core only through
//! [`LinkEvent`]s and [`LinkCommand`]s, so the core never waits on a socket.
//!
//! Acknowledgement after commit: when a device's `Report` or `Reject` arrives, the link hands
//! it to the core with a `committed` channel and sends nothing — in particular not the
//! session's ack — until the core has committed it. A device therefore forgets a finished
//! task only once the bridge can no longer lose it (device-core's at-most-once rule relies on
//! this).

pub mod stream;

use device_core::proto::{Assign, Cancel, Hello, Reject, Report};
use tokio::sync::{mpsc, oneshot};

/// Identifies one connection (a device may reconnect on a new one).
pub type LinkId = u64;

/// From a link task to the core.
#[derive(Debug)]
pub enum LinkEvent {
    /// A device opened a session. `rebooted`: its boot id changed, so everything it ran is
    /// gone. `commands` reaches this link.
    Up {
        link: LinkId,
        peer: String,
        hello: Hello,
        rebooted: bool,
        credit: u8,
        commands: mpsc::Sender<LinkCommand>,
    },
    /// The device can take `credit` more tasks (after acks, reports, slots freed).
    Credit { link: LinkId, credit: u8 },
    /// A task's state changed on the device. Reply on `committed` once it is durable.
    Report {
        link: LinkId,
        report: Report,
        committed: oneshot::Sender<()>,
    },
    /// The device refused something. Reply on `committed` once handled.
    Reject {
        link: LinkId,
        reject: Reject,
        committed: oneshot::Sender<()>,
    },
    /// An `Assign` the session would not take (no credit, window full): back to the queue.
    Refused { link: LinkId, handle: u32 },
    /// The connection ended.
    Down { link: LinkId, reason: String },
}

/// From the core to a link task.
#[derive(Debug)]
pub enum LinkCommand {
    Assign(Box<Assign>),
    Cancel(Cancel),
    /// Close the connection (a newer connection of the same device took over).
    Close,
}
