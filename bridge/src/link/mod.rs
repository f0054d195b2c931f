//! Device links: tasks that move bytes between a transport and a device-core session.
//!
//! Every link kind ends in the same place: a `Session<BridgeSide>` per device connection,
//! driven by [`stream::run`] for byte streams (plain TCP, TLS, serial) and,
//! later, a datagram driver for UDP/DTLS. A link talks to the bridge core only through
//! [`LinkEvent`]s and [`LinkCommand`]s, so the core never waits on a socket.
//!
//! # Layout
//! - [`stream`]: the byte-stream driver, generic over the stream; checks [`Identity`].
//! - [`commands`]: the queue of [`LinkCommand`]s from the core to one link.
//! - [`heap`]: where a driver's session keeps its send window and reorder buffer: on the heap,
//!   only while they hold messages.
//! - [`listener`]: the accept loop of the stream listeners: connection caps (in total and per
//!   host) and the socket options of device sockets (keepalive, user timeout).
//! - [`tcp`]: plain TCP listener: no credential, any device id.
//! - [`tls`]: TLS listener requiring client certificates: the certificate names the device.
//! - [`serial`]: a serial port (UART), one device per port: no credential (the cable is one),
//!   reopened with backoff when it fails or is not there yet.
//! - [`dtls`]: UDP + DTLS 1.2 listener ([`edge_dtls`]): PSK identity or client certificate names the
//!   device; each session feeds the byte-stream driver through a pipe, one frame per datagram.
//!
//! Identity: a link kind with a credential hands the driver the [`Identity`] it proved, and
//! the driver checks every `Hello` against it before the core hears of the device (one place
//! for every link kind; see [`Identity::admits`]).
//!
//! Acknowledgement after commit: when a device's `Report` or `Reject` arrives, the link hands
//! it to the core with a `committed` channel and sends nothing — in particular not the
//! session's ack — until the core has committed it. A device therefore forgets a finished
//! task only once the bridge can no longer lose it (device-core's at-most-once rule relies on
//! this).

pub mod commands;
pub mod dtls;
pub mod heap;
pub mod listener;
pub mod serial;
pub mod stream;
pub mod tcp;
pub mod tls;

use device_core::proto::{Assign, Cancel, Hello, Reject, Report, Restore, Suspended};

use crate::queue::Checkpoint;
use commands::CommandSender;
use tokio::sync::oneshot;

/// Identifies one connection (a device may reconnect on a new one).
pub type LinkId = u64;

/// What a link's credential proved about its peer: the device ids it may use.
///
/// The identity rule: the device id in a device's `Hello` must be one of `names`; otherwise
/// the link is closed and the attempt logged, and the core never hears of the device. Links
/// without a credential (plain TCP) have no `Identity` and accept any id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// How the names were proven, for the log ("TLS client certificate").
    pub credential: &'static str,
    /// The ids the credential allows, compared exactly (a certificate's subject CN and DNS
    /// subject alternative names).
    pub names: Vec<String>,
}

impl Identity {
    /// Whether a device that proved this identity may call itself `device_id`.
    pub fn admits(&self, device_id: &str) -> bool {
        self.names.iter().any(|n| n == device_id)
    }
}

/// From a link task to the core.
// `Up` carries the whole `Hello` (capability and lock names, ~0.5 KB) once per connection;
// the other events are small but go through a bounded channel of 1,024 slots, so the size is
// paid in that channel's buffer (~0.5 MB at worst), not per event.
#[allow(clippy::large_enum_variant)]
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
        /// What proved the device id on this link ("TLS client certificate"), if anything.
        credential: Option<&'static str>,
        commands: CommandSender,
    },
    /// The device can take `credit` more tasks (after acks, reports, slots freed), counted
    /// once the link had taken `taken` `Assign` commands (sent or refused): the engine
    /// discounts the ones it sent after those, still on their way.
    Credit {
        link: LinkId,
        credit: u8,
        taken: u64,
    },
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
    /// The device gave a task back (its slot is free). Reply on `committed` once it is durable.
    Suspended {
        link: LinkId,
        suspended: Suspended,
        committed: oneshot::Sender<()>,
    },
    /// A `Preempt` the session would not send (window full, or an older device).
    PreemptNotSent { link: LinkId, handle: u32 },
    /// The connection ended.
    Down { link: LinkId, reason: String },
}

/// From the core to a link task.
#[derive(Debug)]
pub enum LinkCommand {
    Assign(Box<Assign>),
    /// An `Assign` sent in an earlier session, sent again to the device that came back: it
    /// may hold the task already (it then answers from its dedup table), so no credit is
    /// needed; it waits in the link for room in the session's window, and is dropped if the
    /// device starts yet another session first (the engine decides again then).
    Replay(Box<Assign>),
    Cancel(Cancel),
    /// Give back the task with this handle (urgent work needs its slot): at once if it has not
    /// started, at its next step boundary with a checkpoint if its capability allows.
    Preempt {
        handle: u32,
    },
    /// The checkpoint the next `Assign` (of `handle`) resumes from.
    Restore {
        handle: u32,
        checkpoint: Checkpoint,
    },
    /// Run the task with this handle at `priority` from its next step on: raised while a more
    /// urgent task waits for a resource it holds, back to its own priority after. Devices of
    /// protocol version 3 and later only: to an older one it is not sent (logged at debug).
    Reprioritize {
        handle: u32,
        priority: device_core::Priority,
    },
    /// Close the connection (a newer connection of the same device took over).
    Close,
}

/// The host an address belongs to, for per-host limits: an IPv4 address (IPv4-mapped IPv6
/// included) is one host; an IPv6 address counts by its /64, which one subscriber usually
/// holds whole.
pub fn host(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.into(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => {
                let s = v6.segments();
                std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0).into()
            }
        },
    }
}

/// Whether `id` can be a device id: it is a level of the device's topics
/// (`{root}/devices/{id}`), so not empty, and no `/`, `+`, `#` or control character (NUL
/// included). Its length is bounded by the protocol.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '+', '#']) && !id.chars().any(char::is_control)
}

/// The checkpoint a device's `Suspended` carries, as the queue keeps it.
pub fn checkpoint_of(s: &Suspended) -> Checkpoint {
    Checkpoint {
        steps: s.steps,
        scratch: s.scratch.to_vec(),
        result: s.result.to_vec(),
    }
}

/// The `Restore` message for resuming `checkpoint` under `handle`; `None` if the checkpoint
/// does not fit the protocol's limits (it came from a device, so only a damaged queue could
/// make it so: the task then starts over).
pub fn restore_of(handle: u32, checkpoint: &Checkpoint) -> Option<Restore> {
    Some(Restore {
        handle,
        steps: checkpoint.steps,
        scratch: heapless::Vec::from_slice(&checkpoint.scratch).ok()?,
        result: heapless::Vec::from_slice(&checkpoint.result).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::Identity;

    #[test]
    fn device_ids_are_topic_levels() {
        for good in ["dev-1", "pump.3", "Ünïcode", "a b"] {
            assert!(super::valid_device_id(good), "{good:?}");
        }
        for bad in ["", "pump#3", "a/b", "x+y", "nul\0", "tab\t", "del\u{7f}"] {
            assert!(!super::valid_device_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn hosts_are_ipv4_addresses_and_ipv6_prefixes() {
        use super::host;
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(host(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(host(ip("192.0.2.7")), host(ip("192.0.2.8")));
        assert_eq!(host(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            host(ip("2001:db8:1:2::5")),
            host(ip("2001:db8:1:2:aaaa::9"))
        );
        assert_ne!(host(ip("2001:db8:1:2::5")), host(ip("2001:db8:1:3::5")));
    }

    #[test]
    fn an_identity_admits_exactly_its_names() {
        let id = Identity {
            credential: "test",
            names: vec!["dev-a".into(), "dev-a.example".into()],
        };
        assert!(id.admits("dev-a"));
        assert!(id.admits("dev-a.example"));
        for other in ["dev-b", "DEV-A", "dev-a ", "", "dev"] {
            assert!(!id.admits(other), "{other:?}");
        }
        let none = Identity {
            credential: "test",
            names: Vec::new(),
        };
        assert!(!none.admits(""));
    }
}
