//! An edge-dtls server behind the listener's stateless cookie exchange (as the bridge's DTLS
//! link runs it), with a real edge-dtls PSK client on the other side of a network the input
//! controls: each datagram in flight, either way, is delivered, dropped, duplicated, truncated,
//! has bytes flipped or overwritten, in any order; the server's address also gets any bytes and
//! forged records (well-formed headers and handshake fragments around any bytes); time moves
//! and timers fire; both sides send application data and close; the client starts over.
//!
//! The setup picks the suites of each side (the server's among all seven, so that the ECDHE
//! suites it holds no certificate for are offered and refused), the client's PSK identity
//! (known or not) and key (right or wrong), the MTUs and the cookie.
//!
//! After every call into a connection:
//! - Nothing panics.
//! - It queued at most `MAX_DATAGRAMS_PER_CALL` datagrams, each at most its MTU, but for the
//!   one record of a `send` (exactly the data, a header and the AEAD's overhead); a
//!   HelloVerifyRequest is the cookie and 28 bytes.
//! - Its timer, if any, is later than now after `handle_timeout(now)`, and is off once it is
//!   established or ended.
//! - `send` fails before the handshake completes (and after it ends), and for data longer than
//!   a record; it succeeds otherwise.
//! - Once established, a server's peer is the PSK identity the client used, a key the server
//!   holds for it is the client's, and the suite one the client offered; a client is
//!   established only with the right key too. No peer identity is told before the handshake
//!   completes.
//! - A datagram authenticates (`handle_datagram` returns `true`) only if the peer sent it; an
//!   established connection ends on a datagram only if it authenticated (plaintext anyone
//!   can send does not end it).
//! - Datagrams that are not the client's get the server's flight again at most every 500 ms.
//! - A server fed only datagrams that are not the client's (any bytes, forged records) never
//!   becomes established.
//! - Application data received is data the other side sent, each message at most as often as
//!   it was sent (replays and duplicates are dropped).
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use edge_dtls::crypto::KeyExchange;
use edge_dtls::record::{self, ContentType, Header, MAX_PLAINTEXT};
use edge_dtls::{ClientConfig, Connection, Error, PeerIdentity, ServerConfig, Suite, cookie};
use libfuzzer_sys::fuzz_target;

/// Steps of one input at most, so that one input never takes long.
const MAX_OPS: usize = 256;
/// Datagrams kept in flight each way; older ones are lost (as a full socket buffer loses
/// them), so that an input that never delivers does not grow without bound.
const MAX_IN_FLIGHT: usize = 32;
/// Datagrams one call may queue: a flight (one datagram for PSK at any MTU: ServerHello and
/// ServerHelloDone, or ChangeCipherSpec and Finished), a second flight when one datagram
/// completes two steps, the retransmission a repeated message asks for, and an alert.
const MAX_DATAGRAMS_PER_CALL: usize = 4;
/// How often a connection answers a repetition of its peer's flight at most (edge-dtls: half
/// the initial retransmission timeout).
const SPOOF_ANSWER_INTERVAL: Duration = Duration::from_millis(500);
/// Rounds of a `Flush` at most.
const FLUSH_ROUNDS: usize = 16;
/// The PSK identities the server knows, and their keys.
const KEYS: [(&[u8], &[u8]); 2] = [
    (b"dev-a", b"0123456789abcdef"),
    (b"dev-b", b"a longer key of thirty-two bytes"),
];
const PSK_SUITES: [Suite; 3] = [
    Suite::PskAes128Ccm8,
    Suite::PskAes128GcmSha256,
    Suite::PskAes256GcmSha384,
];

#[derive(Arbitrary, Debug)]
struct Setup {
    /// A bit per suite of `Suite::ALL` (in its order of preference), or all of them when no
    /// bit of the seven is set.
    server_suites: u8,
    /// A bit per PSK suite, or all three when none is set.
    client_suites: u8,
    identity: Identity,
    /// Another key than the server's for the identity.
    wrong_key: Option<Vec<u8>>,
    /// Any value: edge-dtls clamps it to 256..=16384.
    server_mtu: u16,
    client_mtu: u16,
    /// The listener's cookie for the client's address (at most 255 bytes, as on the wire;
    /// empty accepts the first hello).
    cookie: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Identity {
    DevA,
    DevB,
    /// One the server has no key for (an empty one too).
    Other(Vec<u8>),
}

/// What happens to one datagram in flight.
#[derive(Arbitrary, Debug)]
enum How {
    Deliver,
    Drop,
    /// Delivered, and kept in flight to be delivered again.
    Duplicate,
    /// Delivered cut to its first `n % len` bytes.
    Truncate(u16),
    /// Delivered with the byte at `at % len` xored with `mask`.
    Flip {
        at: u16,
        mask: u8,
    },
    /// Delivered with `bytes` written from `at % len` on (the datagram grows if need be).
    Overwrite {
        at: u16,
        bytes: Vec<u8>,
    },
}

/// Application data to send.
#[derive(Arbitrary, Debug)]
enum Payload {
    Bytes(Vec<u8>),
    /// `n` bytes: from a few up to four times more than a record holds.
    Long(u16),
}

/// A record with a well-formed header (its length right unless `length` says otherwise).
#[derive(Arbitrary, Debug)]
struct Forged {
    /// 0 and 1 mostly (a value `% 4` of 0 or 1 is epoch 0, 2 is epoch 1), any epoch at times.
    epoch: u8,
    sequence: u64,
    /// DTLS 1.2, or the DTLS 1.0 of ClientHello records, or any.
    version: Option<bool>,
    /// A length field other than the fragment's.
    length: Option<u16>,
    body: Body,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Handshake(Vec<Frag>),
    Alert(u8, u8),
    ChangeCipherSpec,
    ApplicationData(Vec<u8>),
    Other { content_type: u8, bytes: Vec<u8> },
}

/// A handshake fragment, its fields as given (consistent or not).
#[derive(Arbitrary, Debug)]
struct Frag {
    kind: u8,
    length: u16,
    seq: u16,
    offset: u16,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Every datagram in flight delivered as sent, both ways, until none is left.
    Flush,
    /// One of the client's datagrams in flight (`pick % count`), to the server's address.
    ToServer {
        pick: u8,
        how: How,
    },
    /// One of the server's (or the listener's) datagrams in flight, to the client.
    ToClient {
        pick: u8,
        how: How,
    },
    /// Any bytes to the server's address.
    Garbage(Vec<u8>),
    /// Forged records, in one datagram, to the server's address.
    Forged(Vec<Forged>),
    /// Any bytes to the client.
    GarbageToClient(Vec<u8>),
    /// Time passes; each side's timer is handled if asked.
    Advance {
        ms: u16,
        server: bool,
        client: bool,
    },
    /// Time jumps by up to 18 hours (past every retransmission timeout); timers fire.
    Jump(u16),
    ServerSend(Payload),
    ClientSend(Payload),
    ServerClose,
    ClientClose,
    /// The client starts a new handshake (a device rebooting): its old datagrams stay in
    /// flight.
    Reconnect,
}

#[derive(Arbitrary, Debug)]
struct Case {
    setup: Setup,
    ops: Vec<Op>,
}

/// The server's connection and what the harness knows of it.
struct Server {
    conn: Connection,
    /// It was given at least one datagram of the client's (or a changed copy).
    fed_by_client: bool,
    /// Its handshake completed (it may have ended since).
    was_established: bool,
    /// When it last sent anything in answer to a datagram that was not the client's.
    answered_spoof: Option<Instant>,
}

/// Which side a connection is, for the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

struct Harness {
    server_config: Arc<ServerConfig>,
    client_config: Arc<ClientConfig>,
    cookie: Vec<u8>,
    client: Connection,
    /// The session at the server's address; `None` (or ended) is the listener.
    server: Option<Server>,
    now: Instant,
    to_server: VecDeque<Vec<u8>>,
    to_client: VecDeque<Vec<u8>>,
    /// Messages sent and not received yet, by the side that sent them.
    sent_by_client: HashMap<Vec<u8>, usize>,
    sent_by_server: HashMap<Vec<u8>, usize>,
    /// The client's identity has this key on the server, and the client holds it.
    right_key: bool,
}

/// The effective MTU of a configured one (what `Connection::new` does).
fn mtu(configured: u16) -> usize {
    usize::from(configured).clamp(256, MAX_PLAINTEXT)
}

/// Bytes a record's fragment carries beyond its plaintext under `suite`: the explicit nonce
/// and the tag.
fn overhead(suite: Suite) -> usize {
    8 + if suite == Suite::PskAes128Ccm8 || suite == Suite::EcdheEcdsaAes128Ccm8 {
        8
    } else {
        16
    }
}

fn pick_suites(bits: u8, from: &[Suite]) -> Vec<Suite> {
    let picked: Vec<Suite> = from
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect();
    if picked.is_empty() {
        from.to_vec()
    } else {
        picked
    }
}

fn payload(p: &Payload) -> Vec<u8> {
    match p {
        Payload::Bytes(b) => b.clone(),
        Payload::Long(n) => (0..*n).map(|i| i as u8).collect(),
    }
}

fn forge(records: &[Forged]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in records {
        let (content_type, fragment) = match &f.body {
            Body::Handshake(frags) => {
                let mut b = Vec::new();
                for fr in frags {
                    b.push(fr.kind);
                    b.extend_from_slice(&u32::from(fr.length).to_be_bytes()[1..]);
                    b.extend_from_slice(&fr.seq.to_be_bytes());
                    b.extend_from_slice(&u32::from(fr.offset).to_be_bytes()[1..]);
                    b.extend_from_slice(&(fr.body.len() as u32).to_be_bytes()[1..]);
                    b.extend_from_slice(&fr.body);
                }
                (ContentType::Handshake as u8, b)
            }
            Body::Alert(level, description) => {
                (ContentType::Alert as u8, vec![*level, *description])
            }
            Body::ChangeCipherSpec => (ContentType::ChangeCipherSpec as u8, vec![1]),
            Body::ApplicationData(b) => (ContentType::ApplicationData as u8, b.clone()),
            Body::Other {
                content_type,
                bytes,
            } => (*content_type, bytes.clone()),
        };
        let fragment = &fragment[..fragment.len().min(usize::from(u16::MAX))];
        Header {
            content_type,
            version: match f.version {
                Some(true) => record::DTLS12,
                Some(false) => record::DTLS10,
                None => (f.sequence >> 48) as u16,
            },
            epoch: match f.epoch % 4 {
                0 | 1 => 0,
                2 => 1,
                _ => u16::from(f.epoch),
            },
            sequence: f.sequence,
            length: f.length.unwrap_or(fragment.len() as u16),
        }
        .write(&mut out);
        out.extend_from_slice(fragment);
    }
    out
}

fn mutate(d: &[u8], how: &How) -> Option<Vec<u8>> {
    let at = |a: u16| {
        if d.is_empty() {
            0
        } else {
            usize::from(a) % d.len()
        }
    };
    match how {
        How::Deliver | How::Duplicate => Some(d.to_vec()),
        How::Drop => None,
        How::Truncate(n) => Some(d[..at(*n)].to_vec()),
        How::Flip { at: a, mask } => {
            let mut d = d.to_vec();
            if !d.is_empty() {
                let i = at(*a);
                d[i] ^= mask;
            }
            Some(d)
        }
        How::Overwrite { at: a, bytes } => {
            let mut d = d.to_vec();
            let start = at(*a);
            let end = start + bytes.len();
            if end > d.len() {
                d.resize(end, 0);
            }
            d[start..end].copy_from_slice(bytes);
            Some(d)
        }
    }
}

/// Takes one datagram out of `queue` (`pick % len`), unless `how` keeps it there.
fn take(queue: &mut VecDeque<Vec<u8>>, pick: u8, how: &How) -> Option<Vec<u8>> {
    if queue.is_empty() {
        return None;
    }
    let i = usize::from(pick) % queue.len();
    match how {
        How::Duplicate => queue.get(i).cloned(),
        _ => queue.remove(i),
    }
}

fn push_bounded(queue: &mut VecDeque<Vec<u8>>, d: Vec<u8>) {
    if queue.len() == MAX_IN_FLIGHT {
        queue.pop_front();
    }
    queue.push_back(d);
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let (identity, server_key) = match &setup.identity {
            Identity::DevA => (KEYS[0].0.to_vec(), Some(KEYS[0].1)),
            Identity::DevB => (KEYS[1].0.to_vec(), Some(KEYS[1].1)),
            Identity::Other(id) => {
                let id = id.clone();
                let key = KEYS.iter().find(|(known, _)| *known == id).map(|(_, k)| *k);
                (id, key)
            }
        };
        let client_key = match &setup.wrong_key {
            Some(k) => k.clone(),
            None => server_key.unwrap_or(KEYS[0].1).to_vec(),
        };
        let right_key = server_key == Some(&client_key[..]);
        let server_config = Arc::new(ServerConfig {
            suites: pick_suites(setup.server_suites, &Suite::ALL),
            psk: Some(Arc::new(|id: &[u8]| {
                KEYS.iter()
                    .find(|(known, _)| *known == id)
                    .map(|(_, k)| k.to_vec())
            })),
            certificate: None,
            client_roots: None,
            mtu: setup.server_mtu,
            clock: rustls_pki_types::UnixTime::now,
        });
        let client_config = Arc::new(ClientConfig {
            suites: pick_suites(setup.client_suites, &PSK_SUITES),
            psk: Some((identity, client_key)),
            certificate: None,
            server_roots: None,
            server_name: None,
            mtu: setup.client_mtu,
            clock: rustls_pki_types::UnixTime::now,
        });
        let now = Instant::now();
        let client = Connection::connect(client_config.clone(), now)
            .expect("a client with a PSK and a PSK suite connects");
        let mut h = Self {
            server_config,
            client_config,
            cookie: setup.cookie[..setup.cookie.len().min(255)].to_vec(),
            client,
            server: None,
            now,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            sent_by_client: HashMap::new(),
            sent_by_server: HashMap::new(),
            right_key,
        };
        h.drain_client(None);
        h
    }

    fn server_live(&mut self) -> Option<&mut Server> {
        self.server.as_mut().filter(|s| !s.conn.is_ended())
    }

    /// A datagram reaches the server's address: the session there, or the listener's cookie
    /// exchange (as `bridge/src/link/dtls/mod.rs` routes it).
    fn to_server_address(&mut self, d: &[u8], from_client: bool) {
        let now = self.now;
        if let Some(s) = self.server_live() {
            s.fed_by_client |= from_client;
            let established = s.conn.is_established();
            let authenticated = s.conn.handle_datagram(d, now);
            heard(
                Side::Server,
                &s.conn,
                established,
                authenticated,
                from_client,
            );
            let answered = s.conn.poll_datagram().map(|first| {
                // Put back (drained and checked below with the rest).
                let mut out = vec![first];
                out.extend(std::iter::from_fn(|| s.conn.poll_datagram()));
                out
            });
            if let Some(out) = answered {
                // A spoofer repeating the client's last flight gets the server's again at
                // most every 500 ms (half the initial retransmission timeout); an alert that
                // ends the connection is not a flight.
                if !from_client && !s.conn.is_ended() {
                    if let Some(at) = s.answered_spoof {
                        assert!(
                            now.duration_since(at) >= SPOOF_ANSWER_INTERVAL,
                            "the server answered datagrams that were not the client's {:?} apart",
                            now.duration_since(at)
                        );
                    }
                    s.answered_spoof = Some(now);
                }
                self.drain_server_with(out, None);
            } else {
                self.drain_server(None);
            }
            return;
        }
        if !cookie::is_client_hello(d) {
            return;
        }
        let Some(hello) = cookie::client_hello(d) else {
            return;
        };
        if hello.cookie != self.cookie {
            let reply = cookie::hello_verify_request(&hello, &self.cookie);
            assert_eq!(reply.len(), 28 + self.cookie.len(), "a HelloVerifyRequest");
            push_bounded(&mut self.to_client, reply);
            return;
        }
        self.server = Some(Server {
            conn: Connection::accept(self.server_config.clone(), d, now),
            fed_by_client: from_client,
            was_established: false,
            answered_spoof: None,
        });
        self.drain_server(None);
    }

    /// A datagram reaches the client: `from_server` if it is one the server (or the listener)
    /// sent, changed or not.
    fn to_client(&mut self, d: &[u8], from_server: bool) {
        let established = self.client.is_established();
        let authenticated = self.client.handle_datagram(d, self.now);
        heard(
            Side::Client,
            &self.client,
            established,
            authenticated,
            from_server,
        );
        self.drain_client(None);
    }

    fn drain_server(&mut self, sent: Option<usize>) {
        let Some(s) = self.server.as_mut() else {
            return;
        };
        let out = std::iter::from_fn(|| s.conn.poll_datagram()).collect();
        self.drain_server_with(out, sent);
    }

    /// Checks the server after one call, `out` being what it queued.
    fn drain_server_with(&mut self, out: Vec<Vec<u8>>, sent: Option<usize>) {
        let mtu = mtu(self.server_config.mtu);
        let Some(s) = self.server.as_mut() else {
            return;
        };
        check_datagrams(&s.conn, &out, mtu, sent);
        check(Side::Server, &s.conn, s.fed_by_client, self.right_key);
        s.was_established |= s.conn.is_established();
        // The identity is told once the client's Finished proved it, and stays.
        if let Some(peer) = s.conn.peer_identity() {
            assert!(
                s.was_established,
                "a peer identity before the handshake completed"
            );
            assert_eq!(
                peer,
                &PeerIdentity::Psk(self.client_config.psk.as_ref().expect("a PSK").0.clone()),
                "the server's peer is the identity the client used"
            );
        }
        if s.conn.is_established() {
            assert!(
                s.conn.peer_identity().is_some(),
                "established without a peer"
            );
            let suite = s.conn.suite().expect("a suite once established");
            assert!(self.client_config.suites.contains(&suite), "{suite:?}");
            assert_eq!(suite.key_exchange(), KeyExchange::Psk);
        }
        while let Some(m) = s.conn.poll_app() {
            received(&mut self.sent_by_client, m, "server");
        }
        for d in out {
            push_bounded(&mut self.to_client, d);
        }
    }

    fn drain_client(&mut self, sent: Option<usize>) {
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| self.client.poll_datagram()).collect();
        check_datagrams(&self.client, &out, mtu(self.client_config.mtu), sent);
        check(Side::Client, &self.client, true, self.right_key);
        if self.client.is_established() {
            let suite = self.client.suite().expect("a suite once established");
            assert!(self.client_config.suites.contains(&suite), "{suite:?}");
        }
        while let Some(m) = self.client.poll_app() {
            received(&mut self.sent_by_server, m, "client");
        }
        for d in out {
            push_bounded(&mut self.to_server, d);
        }
    }

    fn send(&mut self, side: Side, data: &[u8]) {
        let conn = match side {
            Side::Server => match self.server.as_mut() {
                Some(s) => &mut s.conn,
                None => return,
            },
            Side::Client => &mut self.client,
        };
        let established = conn.is_established();
        let r = conn.send(data);
        let sent = match r {
            Ok(()) => {
                assert!(established, "{side:?} sent before its handshake completed");
                assert!(data.len() <= MAX_PLAINTEXT);
                Some(data.len())
            }
            Err(Error::NotEstablished) => {
                assert!(!established, "{side:?} refused to send, established");
                None
            }
            Err(Error::TooLarge(n)) => {
                assert_eq!(n, data.len());
                assert!(
                    established && n > MAX_PLAINTEXT,
                    "{side:?}: {n} bytes too large"
                );
                None
            }
            Err(e) => panic!("{side:?}: send failed with {e:?}"),
        };
        if sent.is_some() {
            let sent_by = match side {
                Side::Server => &mut self.sent_by_server,
                Side::Client => &mut self.sent_by_client,
            };
            *sent_by.entry(data.to_vec()).or_default() += 1;
        }
        match side {
            Side::Server => self.drain_server(sent),
            Side::Client => self.drain_client(sent),
        }
    }

    fn flush(&mut self) {
        for _ in 0..FLUSH_ROUNDS {
            if self.to_server.is_empty() && self.to_client.is_empty() {
                return;
            }
            for d in std::mem::take(&mut self.to_server) {
                self.to_server_address(&d, true);
            }
            for d in std::mem::take(&mut self.to_client) {
                self.to_client(&d, true);
            }
        }
    }

    fn timers(&mut self, server: bool, client: bool) {
        let now = self.now;
        if server && let Some(s) = self.server.as_mut() {
            s.conn.handle_timeout(now);
            assert!(
                s.conn.poll_timeout().is_none_or(|t| t > now),
                "the server's timer"
            );
            self.drain_server(None);
        }
        if client {
            self.client.handle_timeout(now);
            assert!(
                self.client.poll_timeout().is_none_or(|t| t > now),
                "the client's timer"
            );
            self.drain_client(None);
        }
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Flush => self.flush(),
            Op::ToServer { pick, how } => {
                if let Some(d) = take(&mut self.to_server, *pick, how).and_then(|d| mutate(&d, how))
                {
                    self.to_server_address(&d, true);
                }
            }
            Op::ToClient { pick, how } => {
                if let Some(d) = take(&mut self.to_client, *pick, how).and_then(|d| mutate(&d, how))
                {
                    self.to_client(&d, true);
                }
            }
            Op::Garbage(d) => self.to_server_address(d, false),
            Op::Forged(records) => self.to_server_address(&forge(records), false),
            Op::GarbageToClient(d) => self.to_client(d, false),
            Op::Advance { ms, server, client } => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.timers(*server, *client);
            }
            Op::Jump(s) => {
                self.now += Duration::from_secs(u64::from(*s));
                self.timers(true, true);
            }
            Op::ServerSend(p) => self.send(Side::Server, &payload(p)),
            Op::ClientSend(p) => self.send(Side::Client, &payload(p)),
            Op::ServerClose => {
                if let Some(s) = self.server.as_mut() {
                    s.conn.close();
                    assert!(s.conn.is_ended());
                    self.drain_server(None);
                }
            }
            Op::ClientClose => {
                self.client.close();
                assert!(self.client.is_ended());
                self.drain_client(None);
            }
            Op::Reconnect => {
                self.client = Connection::connect(self.client_config.clone(), self.now)
                    .expect("the client connects again");
                self.drain_client(None);
            }
        }
    }
}

/// Checks the count and sizes of what `conn` queued in one call (`out`): `sent` is the
/// length of the data of a `send` that succeeded in that call.
fn check_datagrams(conn: &Connection, out: &[Vec<u8>], mtu: usize, sent: Option<usize>) {
    assert!(
        out.len() <= MAX_DATAGRAMS_PER_CALL,
        "{} datagrams from one call: {:?}",
        out.len(),
        out.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let mut app = None;
    if let Some(n) = sent {
        let suite = conn.suite().expect("a suite once established");
        let expected = record::HEADER_LEN + overhead(suite) + n;
        assert_eq!(out.len(), 1, "one record per send");
        assert_eq!(out[0].len(), expected, "the record of a send of {n} bytes");
        app = Some(0);
    }
    for (i, d) in out.iter().enumerate() {
        assert!(!d.is_empty(), "an empty datagram");
        if app != Some(i) {
            assert!(
                d.len() <= mtu,
                "a datagram of {} bytes over the MTU {mtu}",
                d.len()
            );
        }
    }
    if conn.is_established() || conn.is_ended() {
        assert_eq!(conn.poll_timeout(), None, "a timer after the handshake");
    }
}

/// What holds of `side` after it took a datagram: `from_peer` if the other side sent it
/// (changed or not); `established` whether it was before.
fn heard(side: Side, conn: &Connection, established: bool, authenticated: bool, from_peer: bool) {
    // Only the peer's keys authenticate a record: bytes from anyone else never do.
    assert!(
        from_peer || !authenticated,
        "{side:?} authenticated a datagram the peer never sent"
    );
    // Anyone can send plaintext from the peer's address: only an authenticated record (a
    // fatal alert, close_notify) ends an established connection.
    if established && conn.is_ended() {
        assert!(
            authenticated,
            "{side:?} ended by a datagram that did not authenticate: {:?}",
            conn.error()
        );
    }
}

/// What holds of either side after every call.
fn check(side: Side, conn: &Connection, fed_by_client: bool, right_key: bool) {
    if conn.is_established() {
        assert!(
            fed_by_client,
            "{side:?} established from datagrams the client never sent"
        );
        assert!(
            right_key,
            "{side:?} established with a key the other side does not hold"
        );
        assert!(!conn.is_ended());
    }
}

fn received(sent: &mut HashMap<Vec<u8>, usize>, m: Vec<u8>, by: &str) {
    match sent.get_mut(&m) {
        Some(n) if *n > 0 => {
            *n -= 1;
            if *n == 0 {
                sent.remove(&m);
            }
        }
        _ => panic!(
            "the {by} received {} bytes the other side did not send (or sent fewer times)",
            m.len()
        ),
    }
}

fuzz_target!(|case: Case| {
    let mut h = Harness::new(&case.setup);
    for op in case.ops.iter().take(MAX_OPS) {
        h.op(op);
    }
});
