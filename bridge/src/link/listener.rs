//! The accept loop of the stream listeners (plain TCP and TLS), written once: caps on the
//! connections open at once, in total and per host, and the socket options every accepted
//! device socket gets.
//!
//! A connection beyond a cap is closed as soon as it is accepted: it costs the bridge an
//! accept and a close, never a task or a file descriptor held for a handshake deadline. The
//! refusals are counted, and logged within the [`Throttle`] of remote events with the total so
//! far. Accepting goes on at full speed meanwhile (the kernel's backlog is drained, so
//! legitimate devices behind a flood are reached), and a connection's slot is given back when
//! its task ends, however it ends.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use super::{LinkId, host};
use crate::throttle::Throttle;

/// How many connections a listener keeps open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// In total.
    pub total: usize,
    /// From one host (an IPv4 address, or an IPv6 /64: see [`host`]).
    pub per_host: usize,
}

/// Idle time before TCP starts probing a silent device, the time between probes and how many
/// go unanswered before the connection is dropped: a peer that vanished (power cut, cable
/// pulled) is found in about 25 s even where nothing else is watching (a TLS handshake).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// Longest time data the bridge sent may stay unacknowledged before the kernel drops the
/// connection (`TCP_USER_TIMEOUT`): without it a peer whose TCP stack stops acknowledging keeps
/// the socket for the ~15 minutes of the default retransmission limit. Three times the device
/// session's liveness timeout (7 s), so a slow but working link is never cut by it.
const USER_TIMEOUT: Duration = Duration::from_secs(21);

/// Why a connection was refused: the name of the cap, as the configuration spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections`.
    Total,
    /// `max_connections_per_address`.
    PerAddress,
}

impl Refusal {
    /// The configuration's name of the cap.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Total => "max_connections",
            Self::PerAddress => "max_connections_per_address",
        }
    }
}

/// The connections a listener holds, per host: a plain struct, checked and counted under one
/// lock by [`Slots`].
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_host: HashMap<IpAddr, usize>,
}

impl Open {
    /// Takes a slot for a connection from `ip` within `caps`, or says which cap refuses it.
    fn take(&mut self, ip: IpAddr, caps: Caps) -> Result<IpAddr, Refusal> {
        let host = host(ip);
        if self.total >= caps.total {
            return Err(Refusal::Total);
        }
        let here = self.per_host.entry(host).or_default();
        if *here >= caps.per_host {
            return Err(Refusal::PerAddress);
        }
        *here += 1;
        self.total += 1;
        Ok(host)
    }

    fn give_back(&mut self, host: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_host.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&host);
            }
        }
    }
}

/// A listener's open connections, shared with the slots it hands out.
#[derive(Clone, Debug)]
struct Slots {
    caps: Caps,
    open: Arc<Mutex<Open>>,
}

impl Slots {
    /// No connection open yet, within `caps`.
    fn new(caps: Caps) -> Self {
        Self {
            caps,
            open: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let host = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(ip, self.caps)?;
        Ok(Slot {
            open: self.open.clone(),
            host,
        })
    }
}

/// One connection's place within the caps, given back when dropped.
#[derive(Debug)]
struct Slot {
    open: Arc<Mutex<Open>>,
    host: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .give_back(self.host);
    }
}

/// Refused connections, for every listener of the process (see the module docs).
static REFUSALS: Throttle = Throttle::remote_events();
/// Failed accepts (out of file descriptors, mostly).
static ACCEPT_ERRORS: Throttle = Throttle::remote_events();

/// Accepts connections on `listener` forever within `caps`, and runs `connection` for each in
/// a task of its own (its link id follows `base`); `kind` names the link in logs ("TCP",
/// "TLS").
pub async fn serve<F, Fut>(
    listener: TcpListener,
    base: LinkId,
    caps: Caps,
    kind: &'static str,
    mut connection: F,
) where
    F: FnMut(TcpStream, SocketAddr, LinkId) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().ok();
    let slots = Slots::new(caps);
    let mut n = base;
    let mut refused = 0u64;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(suppressed) = ACCEPT_ERRORS.admit(Instant::now()) {
                    tracing::warn!(?addr, error = %e, suppressed, "accepting a device connection failed");
                }
                // Out of file descriptors, mostly: wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                refused += 1;
                drop(tcp);
                if let Some(suppressed) = REFUSALS.admit(Instant::now()) {
                    let limit = cap.setting();
                    tracing::warn!(?addr, %peer, link = kind, limit, refused, suppressed, "device connection refused: limit reached; closed");
                }
                continue;
            }
        };
        configure(&tcp);
        n += 1;
        tokio::spawn(holding(slot, connection(tcp, peer, n)));
    }
}

/// A connection's task: `task`, then its slot given back. `task` is boxed: an async block
/// that awaits a future it captured keeps that future twice, once as the capture and once
/// as the future being awaited (rust-lang/rust#62958), and a link driver's future is most of
/// a link's memory (this doubled the bridge's memory per TCP connection, from 26.8 KiB to
/// 52.1 KiB in edge-bench phase 5).
fn holding<Fut>(slot: Slot, task: Fut) -> impl Future<Output = ()> + Send + 'static
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let task = Box::pin(task);
    async move {
        task.await;
        drop(slot);
    }
}

/// The options of an accepted device socket: no Nagle delay (frames are small and the
/// session acknowledges them), TCP keepalive, and a user timeout (see the constants). A
/// failure is logged and the connection kept: the device session's own liveness still
/// applies.
fn configure(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keepalive not set on a device socket");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set on a device socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_count_per_host_and_in_total_and_slots_come_back() {
        let slots = Slots::new(Caps {
            total: 3,
            per_host: 2,
        });
        let a1 = slots.take(ip("192.0.2.1")).unwrap();
        let _a2 = slots.take(ip("192.0.2.1")).unwrap();
        assert_eq!(
            slots.take(ip("192.0.2.1")).unwrap_err(),
            Refusal::PerAddress
        );
        // An IPv6 /64 is one host.
        let _b = slots.take(ip("2001:db8::1")).unwrap();
        assert_eq!(slots.take(ip("192.0.2.9")).unwrap_err(), Refusal::Total);
        drop(a1);
        let _c = slots.take(ip("192.0.2.9")).unwrap();
        assert_eq!(
            slots.take(ip("2001:db8::2")).unwrap_err(),
            Refusal::Total,
            "full again"
        );
        let open = slots.open.lock().unwrap();
        assert_eq!(open.total, 3);
        assert_eq!(open.per_host.len(), 3);
    }

    #[test]
    fn a_host_whose_connections_all_ended_is_forgotten() {
        let slots = Slots::new(Caps {
            total: 8,
            per_host: 8,
        });
        let held: Vec<Slot> = (0..4)
            .map(|_| slots.take(ip("198.51.100.7")).unwrap())
            .collect();
        drop(held);
        let open = slots.open.lock().unwrap();
        assert_eq!(open.total, 0);
        assert!(open.per_host.is_empty());
    }

    #[test]
    fn a_connection_task_holds_its_driver_once() {
        // A driver with 16 KiB of state across an await, as a link driver has.
        let driver = async {
            let state = [7u8; 16 * 1024];
            tokio::task::yield_now().await;
            std::hint::black_box(&state);
        };
        let size = std::mem::size_of_val(&driver);
        assert!(size >= 16 * 1024, "{size}");
        let slots = Slots::new(Caps {
            total: 1,
            per_host: 1,
        });
        let slot = slots.take(ip("192.0.2.1")).unwrap();
        let task = holding(slot, driver);
        println!(
            "a connection task for a driver of {size} bytes: {} bytes",
            std::mem::size_of_val(&task)
        );
        assert!(
            std::mem::size_of_val(&task) <= 256,
            "the spawned task's future is {} bytes for a driver of {size}",
            std::mem::size_of_val(&task)
        );
    }

    #[test]
    fn caps_are_named_as_the_configuration_names_them() {
        assert_eq!(Refusal::Total.setting(), "max_connections");
        assert_eq!(Refusal::PerAddress.setting(), "max_connections_per_address");
    }
}
