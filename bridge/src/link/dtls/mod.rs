//! The DTLS device link: UDP with DTLS 1.2 ([`edge_dtls`]), one device frame per datagram.
//!
//! One socket task reads every datagram and hands it to the session of its source address.
//! A datagram from an address without a session goes through the stateless cookie exchange
//! ([`edge_dtls::cookie`], cookies keyed on the address): a ClientHello without a valid
//! cookie is answered with a HelloVerifyRequest and forgotten, so spoofed or flooding sources
//! cost a reply and no memory. Only a peer that returns its cookie gets a session, within
//! `max_sessions`, `max_half_open` handshakes in progress (`max_half_open_per_address` from
//! one host), `handshakes_per_second_per_address` from one host and `handshakes_per_second`
//! in all (the backstop): one host whose handshakes fail fast cannot use the whole budget.
//!
//! Each session runs in its own task ([`session::Session`]): the handshake with its
//! retransmission timer and a deadline (a wrong PSK makes a client go silent, not fail),
//! then a relay between the DTLS records and the byte-stream driver ([`super::stream`]),
//! which checks the device's `Hello` against the identity the handshake proved: the PSK
//! identity, or the client certificate's CN or DNS names. A session that hears nothing for
//! `idle_timeout` ends, and every ended session leaves the map. The socket task decides
//! (in [`Sessions`], plain data) and never waits on a session or a write.
//!
//! A new epoch-0 ClientHello from an address whose session is established is a device that
//! rebooted and kept its address and port, or a replay of the device's own ClientHello (its
//! cookie is valid for a minute or two). It goes through the cookie exchange again, and the
//! new handshake runs beside the established session, which goes on: it takes the session's
//! place only once it completes and proves the same identity.
//!
//! An identity holds `max_sessions_per_identity` established sessions (1 by default): a new
//! one that completes its handshake beyond it closes the identity's oldest, so a device that
//! reconnected from a new port replaces its stale session at once, and one leaked key holds
//! that many sessions rather than `max_sessions`.
//!
//! Sessions that end without proving a device (failed handshakes, no identity) and refused
//! handshakes are logged within the [`Throttle`] of remote events, with counts.

pub mod client;
pub mod session;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use edge_dtls::{Connection, PeerIdentity, ServerConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::session::{ContextError, MAX_DATAGRAM, Session, Wire};
use super::{Identity, LinkEvent, LinkId, host, stream};
use crate::throttle::Throttle;

/// The settings of one DTLS listener, from its `[[link]]` table.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Device id → key.
    pub psk: BTreeMap<String, Vec<u8>>,
    /// The bridge's chain, its key, the CA of device certificates.
    pub certificates: Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)>,
    pub ciphers: String,
    pub mtu: u16,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub max_sessions_per_identity: usize,
    pub max_half_open: usize,
    pub max_half_open_per_address: usize,
    pub handshakes_per_second: u32,
    pub handshakes_per_second_per_address: u32,
}

/// The settings of a `kind = "dtls"` link, with its PSK file read.
pub fn settings(link: &broker_config::DtlsLink) -> Result<Settings, LinkDtlsError> {
    let broker_config::DtlsLink {
        listen,
        psk,
        psk_file,
        cert_file,
        key_file,
        client_ca_file,
        ciphers,
        mtu,
        handshake_timeout,
        idle_timeout,
        max_sessions,
        max_sessions_per_identity,
        max_half_open,
        max_half_open_per_address,
        handshakes_per_second,
        handshakes_per_second_per_address,
    } = link;
    let mut keys = BTreeMap::new();
    if let Some(path) = psk_file {
        keys = broker_config::load_psk_file(path).map_err(|source| LinkDtlsError::PskFile {
            listen: *listen,
            source,
        })?;
    }
    for (id, hex) in psk {
        let key = broker_config::parse_psk(hex).map_err(|source| LinkDtlsError::Psk {
            listen: *listen,
            id: id.clone(),
            source,
        })?;
        keys.insert(id.clone(), key);
    }
    let certificates = match (cert_file, key_file, client_ca_file) {
        (Some(c), Some(k), Some(a)) => Some((c.clone(), k.clone(), a.clone())),
        _ => None,
    };
    Ok(Settings {
        listen: *listen,
        psk: keys,
        certificates,
        ciphers: ciphers.clone(),
        mtu: *mtu,
        handshake_timeout: *handshake_timeout,
        idle_timeout: *idle_timeout,
        max_sessions: *max_sessions,
        max_sessions_per_identity: *max_sessions_per_identity,
        max_half_open: *max_half_open,
        max_half_open_per_address: *max_half_open_per_address,
        handshakes_per_second: *handshakes_per_second,
        handshakes_per_second_per_address: *handshakes_per_second_per_address,
    })
}

/// Why a DTLS link's settings cannot be used; names the link and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkDtlsError {
    /// The link's PSK file cannot be read, may be read by other users, or has a bad line (the
    /// error names the file and the line).
    #[error("DTLS link {listen}: {source}")]
    PskFile {
        listen: SocketAddr,
        #[source]
        source: broker_config::ConfigError,
    },
    /// A key of the link's `psk` table is not a usable hex key.
    #[error("DTLS link {listen}: psk {id}: {source}")]
    Psk {
        listen: SocketAddr,
        /// The device id the key belongs to.
        id: String,
        #[source]
        source: broker_config::PskError,
    },
    /// A setting or a file is unusable: the cipher list, a certificate, key or CA file.
    #[error("DTLS link {listen}: {source}")]
    Context {
        listen: SocketAddr,
        #[source]
        source: ContextError,
    },
}

/// Names the credentials in logs and in the reason a link closed.
const PSK_CREDENTIAL: &str = "DTLS PSK identity";
const CERT_CREDENTIAL: &str = "DTLS client certificate";

/// Cookies: HMAC-SHA256 over a per-process secret, the current minute and the peer address;
/// a cookie from this minute or the last one is accepted.
struct Cookies {
    /// ring's HMAC key: computing a cookie allocates nothing (an OpenSSL `Signer` per cookie
    /// was 14 % of a handshake's CPU).
    key: ring::hmac::Key,
}

impl std::fmt::Debug for Cookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookies { .. }")
    }
}

impl Cookies {
    fn new() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut secret)?;
        Ok(Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        })
    }

    fn minute() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60)
    }

    /// What a cookie signs: the minute and the peer's address (IP and port).
    fn message(peer: &SocketAddr, minute: u64) -> Vec<u8> {
        let mut m = minute.to_be_bytes().to_vec();
        match peer.ip() {
            std::net::IpAddr::V4(ip) => m.extend_from_slice(&ip.octets()),
            std::net::IpAddr::V6(ip) => m.extend_from_slice(&ip.octets()),
        }
        m.extend_from_slice(&peer.port().to_be_bytes());
        m
    }

    fn cookie(&self, peer: &SocketAddr, minute: u64) -> Vec<u8> {
        ring::hmac::sign(&self.key, &Self::message(peer, minute))
            .as_ref()
            .to_vec()
    }

    /// Whether `cookie` was made for `peer` this minute or the last (compared in constant
    /// time).
    fn verify(&self, peer: &SocketAddr, cookie: &[u8]) -> bool {
        self.verify_at(peer, cookie, Self::minute())
    }

    /// Whether `cookie` is one this listener gave `peer` in minute `now` or the one before
    /// (the clock read by the caller, so a test cannot race the minute's end).
    fn verify_at(&self, peer: &SocketAddr, cookie: &[u8], now: u64) -> bool {
        [now, now.saturating_sub(1)]
            .into_iter()
            .any(|m| ring::hmac::verify(&self.key, &Self::message(peer, m), cookie).is_ok())
    }
}

/// What a listener answers handshakes with: the DTLS server's configuration and the cookie
/// secret of its stateless exchange.
#[derive(Clone, Debug)]
pub struct Context {
    pub config: Arc<ServerConfig>,
    cookies: Arc<Cookies>,
}

/// Builds a listener's context: its cipher list, the PSK lookup and/or certificates, a fresh
/// cookie secret. Errors name the file or the setting.
pub fn context(s: &Settings) -> Result<Context, LinkDtlsError> {
    let fail = |source: ContextError| LinkDtlsError::Context {
        listen: s.listen,
        source,
    };
    let mut config = ServerConfig {
        suites: session::suites(&s.ciphers).map_err(fail)?,
        psk: None,
        certificate: None,
        client_roots: None,
        mtu: s.mtu,
        clock: rustls_pki_types::UnixTime::now,
    };
    if !s.psk.is_empty() {
        let keys = s.psk.clone();
        config.psk = Some(Arc::new(move |identity: &[u8]| {
            // Unknown identity: no key, the handshake fails.
            std::str::from_utf8(identity)
                .ok()
                .and_then(|id| keys.get(id))
                .cloned()
        }));
    }
    // No session resumption (edge-dtls has none): a resumed session would prove no identity,
    // and every device does a full handshake. Certificate suites require a client
    // certificate: it is what names the device.
    if let Some((cert, key, ca)) = &s.certificates {
        config.certificate =
            Some(session::certified(cert, key, "cert_file", "key_file").map_err(fail)?);
        config.client_roots = Some(session::roots(ca, "client_ca_file").map_err(fail)?);
    }
    let cookies = Cookies::new()
        .map_err(|_| ContextError::CookieSecret)
        .map_err(fail)?;
    Ok(Context {
        config: Arc::new(config),
        cookies: Arc::new(cookies),
    })
}

/// Datagrams queued per session before more are dropped (UDP semantics: the peer
/// retransmits).
const SESSION_QUEUE: usize = 64;

/// Per-host handshake buckets kept before the full ones (hosts quiet for a second) are
/// forgotten: only hosts that returned a cookie get one, so this bounds the memory of a
/// listener facing many hosts without ever forgetting a host that is using its budget.
const HOST_BUCKETS: usize = 1024;

/// Refused handshakes, and sessions that ended without proving a device (failed handshakes,
/// no identity, another identity than their address's session), for every DTLS listener of
/// the process: anyone can cause them.
static REFUSALS: Throttle = Throttle::remote_events();
static HANDSHAKE_FAILURES: Throttle = Throttle::remote_events();

/// A token bucket: `rate` per second, bursts of `rate`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full at `now`: forgetting it changes nothing.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.rate
    }
}

/// One session in the socket task's map.
#[derive(Debug)]
struct Slot {
    /// Where its datagrams go.
    datagrams: mpsc::Sender<Vec<u8>>,
    /// Tells the session why the listener closes it, before `datagrams` goes (see
    /// [`session::Wire::farewell`]).
    farewell: Option<oneshot::Sender<String>>,
    /// Its task's link id: a late report of a session that is gone never touches the entry
    /// of the one that took its place.
    generation: u64,
    /// What its handshake proved, once the listener accepted it; `None` while half-open.
    identity: Option<Identity>,
}

impl Slot {
    fn established(&self) -> bool {
        self.identity.is_some()
    }

    /// Ends the session: it sends its peer a close_notify and reports `why` as its end.
    fn close(mut self, why: String) {
        if let Some(farewell) = self.farewell.take() {
            let _ = farewell.send(why);
        }
    }
}

/// One peer address.
#[derive(Debug)]
struct Peer {
    current: Slot,
    /// A new handshake from the address while `current` is established: a device that
    /// restarted and kept its port, or anyone replaying the device's ClientHello (its cookie
    /// stays valid for a minute or two). It takes `current`'s place only once its handshake
    /// completes and proves the same identity; until then `current` goes on.
    successor: Option<Slot>,
}

/// From a session's task to the socket task.
#[derive(Debug)]
enum Report {
    /// The handshake completed and proved `identity`: may the session go on? The answer is
    /// `Err(why)` when it may not.
    Proved {
        from: SocketAddr,
        generation: u64,
        identity: Identity,
        verdict: oneshot::Sender<Result<(), String>>,
    },
    /// The session ended; `identity` is what it proved if it was established.
    Gone {
        from: SocketAddr,
        generation: u64,
        identity: Option<Identity>,
        reason: String,
    },
}

/// Where a datagram goes.
#[derive(Debug)]
enum Route<'a> {
    /// To this session.
    To(&'a mpsc::Sender<Vec<u8>>),
    /// To the established session and to its address's new handshake: records of epoch 1 or
    /// later are either the session's or the new handshake's Finished, and each side silently
    /// drops the records it cannot decrypt.
    Both(&'a mpsc::Sender<Vec<u8>>, &'a mpsc::Sender<Vec<u8>>),
    /// No session takes it: a ClientHello goes through the cookie exchange.
    Listen,
}

/// The socket task's state: the sessions by address and by identity, and the handshake
/// budgets. Plain data; [`serve`] moves the datagrams and runs the tasks.
#[derive(Debug)]
struct Sessions {
    peers: HashMap<SocketAddr, Peer>,
    /// Established sessions of each identity, oldest first (`max_sessions_per_identity`).
    by_identity: HashMap<Identity, VecDeque<(SocketAddr, u64)>>,
    max_per_identity: usize,
    /// `handshakes_per_second`: the backstop for the listener.
    global: Bucket,
    /// `handshakes_per_second_per_address`, per host (see [`host`]).
    per_host: HashMap<IpAddr, Bucket>,
    host_rate: u32,
}

impl Sessions {
    fn new(s: &Settings, now: Instant) -> Self {
        Self {
            peers: HashMap::new(),
            by_identity: HashMap::new(),
            max_per_identity: s.max_sessions_per_identity,
            global: Bucket::new(s.handshakes_per_second, now),
            per_host: HashMap::new(),
            host_rate: s.handshakes_per_second_per_address,
        }
    }

    /// Where a datagram from `from` goes. An address with a handshake in progress sends
    /// everything to it; one with an established session sends everything there but a new
    /// ClientHello (a new handshake, through the cookie exchange); while a new handshake from
    /// an established address runs, its epoch-0 records (the handshake's) go to it and later
    /// epochs to both (see [`Route::Both`]).
    fn route(&self, from: SocketAddr, datagram: &[u8]) -> Route<'_> {
        let Some(peer) = self.peers.get(&from) else {
            return Route::Listen;
        };
        match &peer.successor {
            Some(next) if edge_dtls::cookie::epoch(datagram) == Some(0) => {
                Route::To(&next.datagrams)
            }
            Some(next) => Route::Both(&peer.current.datagrams, &next.datagrams),
            None if peer.current.established() && edge_dtls::cookie::is_client_hello(datagram) => {
                Route::Listen
            }
            None => Route::To(&peer.current.datagrams),
        }
    }

    /// Handshakes in progress.
    fn half_open(&self) -> usize {
        self.peers.values().map(Peer::half_open).sum()
    }

    /// Which limit, if any, refuses a new handshake from `from` at `now` (a handshake that is
    /// not refused has taken its tokens).
    fn refusal(&mut self, from: SocketAddr, s: &Settings, now: Instant) -> Option<&'static str> {
        let here = host(from.ip());
        let (mut half_open, mut half_open_here) = (0, 0);
        for (addr, peer) in &self.peers {
            half_open += peer.half_open();
            if host(addr.ip()) == here {
                half_open_here += peer.half_open();
            }
        }
        // A new handshake from an established address takes no new address.
        if !self.peers.contains_key(&from) && self.peers.len() >= s.max_sessions {
            return Some("max_sessions");
        }
        if half_open >= s.max_half_open {
            return Some("max_half_open");
        }
        if half_open_here >= s.max_half_open_per_address {
            return Some("max_half_open_per_address");
        }
        if self.per_host.len() >= HOST_BUCKETS && !self.per_host.contains_key(&here) {
            self.per_host.retain(|_, b| !b.is_full(now));
        }
        let rate = self.host_rate;
        let bucket = self
            .per_host
            .entry(here)
            .or_insert_with(|| Bucket::new(rate, now));
        if !bucket.take(now) {
            return Some("handshakes_per_second_per_address");
        }
        if !self.global.take(now) {
            return Some("handshakes_per_second");
        }
        None
    }

    /// A new handshake from `from`: the address's session, or the successor of its
    /// established one.
    fn start(&mut self, from: SocketAddr, slot: Slot) {
        match self.peers.get_mut(&from) {
            Some(peer) => peer.successor = Some(slot),
            None => {
                self.peers.insert(
                    from,
                    Peer {
                        current: slot,
                        successor: None,
                    },
                );
            }
        }
    }

    /// The session `generation` from `from` proved `identity`: accepted, or `Err(why)`. A
    /// successor takes its address's place only if it proved the same identity as the
    /// established session; beyond `max_sessions_per_identity` the identity's oldest session
    /// is closed.
    fn proved(
        &mut self,
        from: SocketAddr,
        generation: u64,
        identity: &Identity,
    ) -> Result<(), String> {
        let gone = || "the listener had closed the session meanwhile".to_owned();
        let peer = self.peers.get_mut(&from).ok_or_else(gone)?;
        if peer.current.generation == generation {
            peer.current.identity = Some(identity.clone());
        } else {
            let mut next = match peer.successor.take() {
                Some(next) if next.generation == generation => next,
                other => {
                    peer.successor = other;
                    return Err(gone());
                }
            };
            if peer.current.identity.as_ref() != Some(identity) {
                // `next` goes here; its session learns why from the answer.
                let established = peer.current.identity.as_ref().map(|i| &i.names);
                return Err(format!(
                    "proved {:?} ({}) from an address whose established session proved {:?}: \
                     the established session is kept",
                    identity.names, identity.credential, established
                ));
            }
            next.identity = Some(identity.clone());
            let old = std::mem::replace(&mut peer.current, next);
            self.forget(identity, from, old.generation);
            tracing::info!(%from, names = ?identity.names, "a new DTLS session from an address with an established one proved the same identity: the device restarted; replacing it");
            old.close(
                "replaced by a new session from the same address proving the same identity \
                 (the device restarted)"
                    .into(),
            );
        }
        let cap = self.max_per_identity;
        let held = self.by_identity.entry(identity.clone()).or_default();
        held.push_back((from, generation));
        while held.len() > cap {
            let Some((addr, oldest)) = held.pop_front() else {
                break;
            };
            // Its address may hold a newer session by now (the identity's entry is stale).
            let peer = match self.peers.entry(addr) {
                Entry::Occupied(e) if e.get().current.generation == oldest => e.remove(),
                _ => continue,
            };
            tracing::info!(from = %addr, names = ?identity.names, cap, "a newer DTLS session of the same identity: closing the oldest");
            peer.current.close(format!(
                "a newer session of {:?} took its place (max_sessions_per_identity = {cap})",
                identity.names
            ));
            if let Some(next) = peer.successor {
                next.close("its address's established session was closed".into());
            }
        }
        Ok(())
    }

    /// The session `generation` from `from` ended (it proved `identity` if established). A
    /// successor whose established session ended goes on in its place.
    fn gone(&mut self, from: SocketAddr, generation: u64, identity: Option<&Identity>) {
        if let Some(identity) = identity {
            self.forget(identity, from, generation);
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if peer.current.generation == generation {
            match peer.successor.take() {
                Some(next) => peer.current = next,
                None => {
                    self.peers.remove(&from);
                }
            }
        } else if peer
            .successor
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            peer.successor = None;
        }
    }

    fn forget(&mut self, identity: &Identity, from: SocketAddr, generation: u64) {
        if let Some(held) = self.by_identity.get_mut(identity) {
            held.retain(|&entry| entry != (from, generation));
            if held.is_empty() {
                self.by_identity.remove(identity);
            }
        }
    }
}

impl Peer {
    /// Handshakes in progress at this address (0 to 2).
    fn half_open(&self) -> usize {
        usize::from(!self.current.established()) + usize::from(self.successor.is_some())
    }
}

/// Serves one DTLS listener forever; link ids follow `base`.
pub async fn serve(
    socket: UdpSocket,
    base: LinkId,
    core: mpsc::Sender<LinkEvent>,
    context: Context,
    settings: Settings,
) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().ok();
    let mut sessions = Sessions::new(&settings, Instant::now());
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    let timeouts = Timeouts {
        handshake: settings.handshake_timeout,
        idle: settings.idle_timeout,
    };
    let mut next_link = base;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Refusals so far, for the log lines (themselves throttled).
    let mut refused = 0u64;
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, from) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(?local, error = %e, "DTLS socket receive failed");
                        continue;
                    }
                };
                let datagram = &buf[..n];
                // A full queue drops the datagram, as a busy network would.
                match sessions.route(from, datagram) {
                    Route::To(session) => {
                        let _ = session.try_send(datagram.to_vec());
                        continue;
                    }
                    Route::Both(current, next) => {
                        let _ = current.try_send(datagram.to_vec());
                        let _ = next.try_send(datagram.to_vec());
                        continue;
                    }
                    Route::Listen => {}
                }
                // Only a ClientHello can start anything: other datagrams from unknown
                // addresses cost nothing more than reading their first record.
                // The stateless cookie exchange: a hello without this address's cookie gets
                // one (never waiting: a reply the socket has no room for is lost, and the
                // peer asks again) and nothing is kept.
                let Some(hello) = edge_dtls::cookie::client_hello(datagram) else {
                    continue;
                };
                if !context.cookies.verify(&from, &hello.cookie) {
                    let cookie = context.cookies.cookie(&from, Cookies::minute());
                    let reply = edge_dtls::cookie::hello_verify_request(&hello, &cookie);
                    let _ = socket.try_send_to(&reply, from);
                    continue;
                }
                if let Some(limit) = sessions.refusal(from, &settings, Instant::now()) {
                    refused += 1;
                    if let Some(suppressed) = REFUSALS.admit(std::time::Instant::now()) {
                        let (count, half_open) = (sessions.peers.len(), sessions.half_open());
                        tracing::warn!(?local, %from, limit, refused, suppressed, sessions = count, half_open, "DTLS handshake refused: limit reached");
                    }
                    continue;
                }
                next_link += 1;
                let (wire, datagrams, farewell) = Wire::new(socket.clone(), from, SESSION_QUEUE);
                sessions.start(from, Slot {
                    datagrams,
                    farewell: Some(farewell),
                    generation: next_link,
                    identity: None,
                });
                // The server's first flight (its ECDHE key and signature) is made in the
                // session's task, not here.
                let hello = Hello { datagram: datagram.to_vec(), config: context.config.clone() };
                tokio::spawn(run_session(hello, wire, next_link, core.clone(), timeouts, reports_tx.clone()));
            }
            Some(report) = reports.recv() => match report {
                Report::Proved { from, generation, identity, verdict } => {
                    let _ = verdict.send(sessions.proved(from, generation, &identity));
                }
                Report::Gone { from, generation, identity, reason } => {
                    sessions.gone(from, generation, identity.as_ref());
                    let (count, half_open) = (sessions.peers.len(), sessions.half_open());
                    match identity {
                        Some(identity) => {
                            tracing::info!(?local, %from, names = ?identity.names, %reason, sessions = count, half_open, "DTLS session ended");
                        }
                        None => {
                            crate::metrics::handshake_failed(crate::metrics::LinkKind::Dtls);
                            if let Some(suppressed) = HANDSHAKE_FAILURES.admit(std::time::Instant::now()) {
                                tracing::warn!(?local, %from, %reason, suppressed, sessions = count, half_open, "DTLS session ended without proving a device");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A ClientHello that returned its cookie, and the configuration to answer it with.
struct Hello {
    datagram: Vec<u8>,
    config: Arc<ServerConfig>,
}

/// What a session needs of its listener's settings (not the keys: a session must not carry
/// a copy of every device's PSK).
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    handshake: Duration,
    idle: Duration,
}

/// One session: handshake, identity (accepted by the socket task, see
/// [`Sessions::proved`]), then the device link until it ends; its end is reported to the
/// socket task, which logs it.
async fn run_session(
    hello: Hello,
    wire: Wire,
    link: LinkId,
    core: mpsc::Sender<LinkEvent>,
    timeouts: Timeouts,
    reports: mpsc::UnboundedSender<Report>,
) {
    let peer = wire.peer;
    let deadline = Instant::now() + timeouts.handshake;
    let conn = Connection::accept(hello.config, &hello.datagram, Instant::now().into_std());
    drop(hello.datagram);
    let mut session = Session { conn, wire };
    let mut established = None;
    let reason = match session.handshake(deadline).await {
        Err(why) => format!("handshake failed: {why}"),
        Ok(()) => match proven(&session.conn) {
            None => {
                session.conn.close();
                session.flush().await;
                "handshake proved no device identity".into()
            }
            Some(identity) => {
                let (verdict_tx, verdict) = oneshot::channel();
                let _ = reports.send(Report::Proved {
                    from: peer,
                    generation: link,
                    identity: identity.clone(),
                    verdict: verdict_tx,
                });
                match verdict.await {
                    Ok(Ok(())) => {
                        tracing::info!(%peer, credential = identity.credential, names = ?identity.names, cipher = session.conn.suite().map_or("?", edge_dtls::Suite::name), "DTLS session established");
                        let (app, driver_end) = tokio::io::duplex(session::PIPE_BYTES);
                        let driver = tokio::spawn(stream::run(
                            driver_end,
                            link,
                            peer.to_string(),
                            Some(identity.clone()),
                            core,
                            device_core::link::Config::default(),
                        ));
                        established = Some(identity);
                        let reason = session.relay(app, timeouts.idle).await;
                        // The driver sees the pipe close and reports the link down.
                        let _ = driver.await;
                        reason
                    }
                    Ok(Err(why)) => {
                        session.conn.close();
                        session.flush().await;
                        why
                    }
                    Err(_) => "the listener is gone".into(),
                }
            }
        },
    };
    let _ = reports.send(Report::Gone {
        from: peer,
        generation: link,
        identity: established,
        reason,
    });
}

/// What the handshake proved: the PSK identity, or the client certificate's names.
fn proven(conn: &Connection) -> Option<Identity> {
    match conn.peer_identity()? {
        // The PSK lookup only knows UTF-8 identities.
        PeerIdentity::Psk(id) => Some(Identity {
            credential: PSK_CREDENTIAL,
            names: vec![std::str::from_utf8(id).ok()?.to_owned()],
        }),
        cert @ PeerIdentity::Certificate(_) => session::peer_names(cert).map(|names| Identity {
            credential: CERT_CREDENTIAL,
            names,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_bound_to_the_address_and_expire() {
        let cookies = Cookies::new().unwrap();
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let now = Cookies::minute();
        let c = cookies.cookie(&a, now);
        assert!(cookies.verify_at(&a, &c, now));
        assert!(!cookies.verify_at(&b, &c, now), "another port");
        let last_minute = cookies.cookie(&a, now - 1);
        assert!(cookies.verify_at(&a, &last_minute, now));
        let older = cookies.cookie(&a, now - 2);
        assert!(!cookies.verify_at(&a, &older, now), "two minutes old");
        assert!(!cookies.verify_at(&a, &c[..16], now), "truncated");
        let other_secret = Cookies::new().unwrap().cookie(&a, now);
        assert!(
            !cookies.verify_at(&a, &other_secret, now),
            "another process's secret"
        );
    }

    fn psk_settings(ciphers: &str) -> Settings {
        Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            psk: BTreeMap::from([("dev-1".to_owned(), vec![7; 16])]),
            certificates: None,
            ciphers: ciphers.to_owned(),
            mtu: 1200,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_sessions: 1,
            max_sessions_per_identity: 1,
            max_half_open: 1,
            max_half_open_per_address: 1,
            handshakes_per_second: 1,
            handshakes_per_second_per_address: 1,
        }
    }

    #[test]
    fn the_default_cipher_list_is_every_suite_and_an_unknown_name_is_named() {
        let c = context(&psk_settings(broker_config::DEFAULT_DTLS_CIPHERS)).unwrap();
        assert_eq!(c.config.suites, edge_dtls::Suite::ALL);
        let bad = context(&psk_settings("PSK-AES128-CCM8:NO-SUCH-CIPHER")).unwrap_err();
        assert!(
            bad.to_string().starts_with(
                "DTLS link 127.0.0.1:0: ciphers: unknown cipher suite \"NO-SUCH-CIPHER\""
            ),
            "{bad}"
        );
    }

    /// A DTLS link from TOML (validated), with `extra` lines added to its table.
    fn dtls_link(extra: &str) -> broker_config::DtlsLink {
        let toml = format!("[[link]]\nkind = \"dtls\"\nlisten = \"127.0.0.1:5684\"\n{extra}");
        let mut config = broker_config::Config::from_toml(&toml, "test").unwrap();
        match config.links.remove(0) {
            broker_config::LinkConfig::Dtls(link) => link,
            other => panic!("not a DTLS link: {other:?}"),
        }
    }

    #[test]
    fn a_bad_key_is_named_with_its_device_and_a_bad_psk_file_with_its_line() {
        let mut link = dtls_link("psk = { \"dev-1\" = \"00112233445566778899aabbccddeeff\" }\n");
        link.psk.insert("dev-9".into(), "0g".into());
        let e = settings(&link).unwrap_err();
        assert!(
            matches!(&e, LinkDtlsError::Psk { id, .. } if id == "dev-9"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "DTLS link 127.0.0.1:5684: psk dev-9: a key is hex digits only"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("devices.psk");
        std::fs::write(&file, "dev-1:00112233445566778899aabbccddeeff\ndev-2\n").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let link = dtls_link(&format!("psk_file = {:?}\n", file.display().to_string()));
        let e = settings(&link).unwrap_err();
        assert!(matches!(e, LinkDtlsError::PskFile { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "DTLS link 127.0.0.1:5684: link.psk_file: {}: line 2: expected device-id:hexkey",
                file.display()
            )
        );
    }

    /// A self-signed ECDSA P-256 certificate and its key in `dir`: `{name}.pem`,
    /// `{name}.key`; made with the openssl command (tests/run.sh installs it).
    fn self_signed(dir: &std::path::Path, name: &str) {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=bridge", "-keyout", &key, "-out", &pem])
            .current_dir(dir)
            .output()
            .expect("openssl is not installed: tests/run.sh installs it");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn unusable_certificate_files_and_keys_of_another_certificate_are_named() {
        let dir = tempfile::tempdir().unwrap();
        self_signed(dir.path(), "bridge");
        self_signed(dir.path(), "other");
        let (cert, key) = (dir.path().join("bridge.pem"), dir.path().join("bridge.key"));
        let other_key = dir.path().join("other.key");
        let missing = dir.path().join("missing.pem");
        let error = |files: [&std::path::Path; 3]| {
            let [c, k, a] = files.map(std::path::Path::to_owned);
            let s = Settings {
                certificates: Some((c, k, a)),
                ..psk_settings(broker_config::DEFAULT_DTLS_CIPHERS)
            };
            let Err(LinkDtlsError::Context { source, .. }) = context(&s) else {
                panic!("{files:?}: expected a context error");
            };
            source
        };
        context(&Settings {
            certificates: Some((cert.clone(), key.clone(), cert.clone())),
            ..psk_settings(broker_config::DEFAULT_DTLS_CIPHERS)
        })
        .unwrap();
        let named = |e: &ContextError, setting: &str, path: &std::path::Path| {
            assert!(
                matches!(e, ContextError::File { setting: s, .. } if *s == setting),
                "{e}"
            );
            assert!(
                e.to_string()
                    .starts_with(&format!("{setting}: {}", path.display())),
                "{e}"
            );
            assert!(std::error::Error::source(e).is_some());
        };
        named(&error([&missing, &key, &cert]), "cert_file", &missing);
        named(&error([&cert, &missing, &cert]), "key_file", &missing);
        let e = error([&cert, &other_key, &cert]);
        named(&e, "key_file", &other_key);
        assert!(
            e.to_string().contains("does not match the certificate"),
            "{e}"
        );
        named(&error([&cert, &key, &missing]), "client_ca_file", &missing);
    }

    /// A slot for session `generation`, and its farewell's receiving end.
    fn slot(generation: u64) -> (Slot, mpsc::Receiver<Vec<u8>>, oneshot::Receiver<String>) {
        let (datagrams, inbound) = mpsc::channel(4);
        let (farewell, told) = oneshot::channel();
        let slot = Slot {
            datagrams,
            farewell: Some(farewell),
            generation,
            identity: None,
        };
        (slot, inbound, told)
    }

    fn psk(id: &str) -> Identity {
        Identity {
            credential: PSK_CREDENTIAL,
            names: vec![id.to_owned()],
        }
    }

    fn sessions(per_identity: usize) -> Sessions {
        let s = Settings {
            max_sessions: 8,
            max_sessions_per_identity: per_identity,
            max_half_open: 8,
            max_half_open_per_address: 8,
            handshakes_per_second: 100,
            handshakes_per_second_per_address: 100,
            ..psk_settings(broker_config::DEFAULT_DTLS_CIPHERS)
        };
        Sessions::new(&s, Instant::now())
    }

    /// A record of `epoch` (a ClientHello in epoch 0).
    fn record(epoch: u8) -> Vec<u8> {
        let mut d = vec![22, 0xfe, 0xfd, 0, epoch, 0, 0, 0, 0, 0, 1, 0, 50, 1];
        d.extend_from_slice(&[0; 50]);
        d
    }

    #[test]
    fn a_new_handshake_from_an_established_address_takes_over_only_proving_the_same_identity() {
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut s = sessions(1);
        let (first, mut first_rx, mut first_told) = slot(1);
        s.start(a, first);
        assert!(matches!(s.route(a, &record(0)), Route::To(_)), "half-open");
        s.proved(a, 1, &psk("dev-a")).unwrap();
        assert!(matches!(s.route(a, &record(0)), Route::Listen));
        assert!(matches!(s.route(a, &record(1)), Route::To(_)));

        // A replayed ClientHello starts a successor: the session goes on meanwhile.
        let (second, _second_rx, _) = slot(2);
        s.start(a, second);
        assert_eq!(s.half_open(), 1);
        assert!(
            matches!(s.route(a, &record(0)), Route::To(t) if !t.same_channel(&s.peers[&a].current.datagrams))
        );
        assert!(matches!(s.route(a, &record(1)), Route::Both(..)));
        // Another identity: refused, the established session kept.
        let e = s.proved(a, 2, &psk("dev-b")).unwrap_err();
        assert!(e.contains("established session is kept"), "{e}");
        assert_eq!(s.peers[&a].current.generation, 1);
        assert!(s.peers[&a].successor.is_none());
        assert!(
            first_told.try_recv().is_err(),
            "the session was told to end"
        );

        // The same identity: the successor takes over and the old session is told why.
        let (third, _third_rx, _) = slot(3);
        s.start(a, third);
        s.proved(a, 3, &psk("dev-a")).unwrap();
        assert_eq!(s.peers[&a].current.generation, 3);
        let why = first_told.try_recv().unwrap();
        assert!(why.contains("replaced"), "{why}");
        assert!(first_rx.try_recv().is_err());
        // The old session's end changes nothing now.
        s.gone(a, 1, Some(&psk("dev-a")));
        assert_eq!(s.peers[&a].current.generation, 3);
        assert_eq!(s.by_identity[&psk("dev-a")], [(a, 3)]);
    }

    #[test]
    fn an_identity_beyond_its_cap_loses_its_oldest_session() {
        let (a, b, c): (SocketAddr, SocketAddr, SocketAddr) = (
            "192.0.2.1:5000".parse().unwrap(),
            "192.0.2.2:5000".parse().unwrap(),
            "192.0.2.3:5000".parse().unwrap(),
        );
        let mut s = sessions(2);
        let mut told = Vec::new();
        for (n, addr) in [a, b, c].into_iter().enumerate() {
            let (one, _rx, farewell) = slot(n as u64 + 1);
            told.push(farewell);
            s.start(addr, one);
            s.proved(addr, n as u64 + 1, &psk("dev-a")).unwrap();
        }
        assert!(
            !s.peers.contains_key(&a),
            "the oldest of three, with a cap of two"
        );
        let why = told[0].try_recv().unwrap();
        assert!(why.contains("max_sessions_per_identity = 2"), "{why}");
        assert!(told[1].try_recv().is_err() && told[2].try_recv().is_err());
        assert_eq!(s.by_identity[&psk("dev-a")], [(b, 2), (c, 3)]);
        // Another identity has a place of its own.
        let (other, _rx, _) = slot(4);
        s.start(a, other);
        s.proved(a, 4, &psk("dev-b")).unwrap();
        assert_eq!(s.peers.len(), 3);
        // Sessions that end leave the identity's list.
        s.gone(b, 2, Some(&psk("dev-a")));
        s.gone(c, 3, Some(&psk("dev-a")));
        assert!(!s.by_identity.contains_key(&psk("dev-a")));
        assert_eq!(s.peers.len(), 1);
    }

    #[test]
    fn a_successor_goes_on_when_the_established_session_ends_first() {
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut s = sessions(1);
        let (first, _rx1, _) = slot(1);
        s.start(a, first);
        s.proved(a, 1, &psk("dev-a")).unwrap();
        let (second, _rx2, _) = slot(2);
        s.start(a, second);
        s.gone(a, 1, Some(&psk("dev-a")));
        assert_eq!(s.peers[&a].current.generation, 2);
        assert!(matches!(s.route(a, &record(0)), Route::To(_)));
        s.proved(a, 2, &psk("dev-a")).unwrap();
        assert_eq!(s.half_open(), 0);
    }

    #[test]
    fn one_host_spends_its_own_handshake_budget_and_not_the_others() {
        let settings = Settings {
            handshakes_per_second: 10,
            handshakes_per_second_per_address: 2,
            max_sessions: 100,
            max_half_open: 100,
            max_half_open_per_address: 100,
            ..psk_settings(broker_config::DEFAULT_DTLS_CIPHERS)
        };
        let now = Instant::now();
        let mut s = Sessions::new(&settings, now);
        let (a, a2, b): (SocketAddr, SocketAddr, SocketAddr) = (
            "192.0.2.1:5000".parse().unwrap(),
            "192.0.2.1:5001".parse().unwrap(),
            "192.0.2.2:5000".parse().unwrap(),
        );
        assert_eq!(s.refusal(a, &settings, now), None);
        assert_eq!(s.refusal(a2, &settings, now), None);
        assert_eq!(
            s.refusal(a, &settings, now),
            Some("handshakes_per_second_per_address")
        );
        assert_eq!(s.refusal(b, &settings, now), None);
        // Half a second later the host has one more.
        let later = now + Duration::from_millis(500);
        assert_eq!(s.refusal(a, &settings, later), None);
        assert_eq!(
            s.refusal(a, &settings, later),
            Some("handshakes_per_second_per_address")
        );
    }

    #[test]
    fn the_bucket_allows_its_rate_and_refills() {
        let t = Instant::now();
        let mut b = Bucket::new(3, t);
        assert!(b.take(t) && b.take(t) && b.take(t));
        assert!(!b.take(t));
        assert!(b.take(t + Duration::from_millis(400)), "1.2 tokens back");
        assert!(!b.take(t + Duration::from_millis(400)));
    }
}
