//! One DTLS 1.2 connection, either side, without I/O: datagrams in through
//! [`Connection::handle_datagram`], out through [`Connection::poll_datagram`]; the
//! retransmission timer through [`Connection::poll_timeout`] / [`Connection::handle_timeout`];
//! application records through [`Connection::send`] / [`Connection::poll_app`].
//!
//! The handshake is the full one of RFC 6347 with the server's stateless cookie exchange
//! done before a connection exists ([`crate::cookie`]). No resumption and no renegotiation:
//! every device proves itself by a full handshake, and a renegotiation attempt is ignored.
//! Records that fail authentication are dropped silently, as RFC 6347 §4.1.2.7 asks (a
//! spoofed datagram must not end a session).
//!
//! Once established, the handshake's state (transcript, buffers, flights) is dropped: an
//! idle connection holds its two record keys and little more.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::agreement;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;

use crate::codec::{Malformed, Reader};
use crate::config::{self, ClientConfig, SCHEMES, ServerConfig};
use crate::crypto::{self, KeyExchange, Suite};
use crate::handshake::{self, Fragment, Message, Reassembler, Received, kind};
use crate::messages::{self as msg, ClientHello, DTLS12, ServerHello, group};
use crate::record::{self, ContentType, Header, MAX_PLAINTEXT, Protection, ReplayWindow};

/// The first retransmission timeout (RFC 6347 §4.2.4.1), doubled on each expiry up to
/// [`MAX_RETRANSMIT`].
const INITIAL_RETRANSMIT: Duration = Duration::from_secs(1);
const MAX_RETRANSMIT: Duration = Duration::from_secs(60);

/// Alert descriptions (RFC 5246 §7.2, RFC 4279 §2).
pub mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const BAD_CERTIFICATE: u8 = 42;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const DECRYPT_ERROR: u8 = 51;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const UNKNOWN_PSK_IDENTITY: u8 = 115;

    /// The alert's name, for logs.
    pub fn name(description: u8) -> &'static str {
        match description {
            CLOSE_NOTIFY => "close_notify",
            UNEXPECTED_MESSAGE => "unexpected_message",
            20 => "bad_record_mac",
            HANDSHAKE_FAILURE => "handshake_failure",
            BAD_CERTIFICATE => "bad_certificate",
            43 => "unsupported_certificate",
            44 => "certificate_revoked",
            45 => "certificate_expired",
            46 => "certificate_unknown",
            ILLEGAL_PARAMETER => "illegal_parameter",
            48 => "unknown_ca",
            49 => "access_denied",
            DECODE_ERROR => "decode_error",
            DECRYPT_ERROR => "decrypt_error",
            70 => "protocol_version",
            71 => "insufficient_security",
            INTERNAL_ERROR => "internal_error",
            90 => "user_canceled",
            100 => "no_renegotiation",
            110 => "unsupported_extension",
            UNKNOWN_PSK_IDENTITY => "unknown_psk_identity",
            _ => "unknown alert",
        }
    }
}

/// Why a connection failed or ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message could not be read.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// A message came that the handshake did not expect at this point.
    #[error("unexpected {0}")]
    Unexpected(&'static str),
    /// The peer offered no suite this side is configured for.
    #[error("no cipher suite in common")]
    NoSharedSuite,
    /// The client offered no group this side can do ECDHE with.
    #[error("no ECDHE group in common")]
    NoSharedGroup,
    /// A PSK client named an identity the server has no key for.
    #[error("unknown PSK identity {0:?}")]
    UnknownPskIdentity(String),
    /// The peer's Finished does not match the handshake: another key, or a tampered
    /// handshake.
    #[error("the peer's Finished does not match the handshake")]
    BadFinished,
    /// The server asked for a certificate and the client sent none.
    #[error("the client sent no certificate")]
    NoCertificate,
    /// The peer's certificate chain does not verify.
    #[error("peer certificate: {0}")]
    Certificate(String),
    /// A signature of the peer does not verify.
    #[error("signature: {0}")]
    Signature(&'static str),
    /// The peer's ECDHE point is not a point of the group.
    #[error("ECDHE key agreement failed")]
    KeyAgreement,
    /// This side could not sign with its key for any scheme the peer offered.
    #[error("no signature scheme in common with the peer")]
    NoSharedScheme,
    /// The peer sent a fatal alert.
    #[error("the peer sent alert {name} ({0})", name = alert::name(*.0))]
    Alert(u8),
    /// The peer closed the connection with close_notify.
    #[error("peer closed the session (close_notify)")]
    Closed,
    /// The system's random number generator failed.
    #[error("no randomness")]
    Random,
    /// Application data before the handshake completed or after the connection ended.
    #[error("the session is not established")]
    NotEstablished,
    /// Application data larger than one record.
    #[error("{0} bytes do not fit one record")]
    TooLarge(usize),
}

impl Error {
    /// The alert this side sends when it fails for this reason.
    fn alert(&self) -> Option<u8> {
        Some(match self {
            Self::Malformed(_) => alert::DECODE_ERROR,
            Self::Unexpected(_) => alert::UNEXPECTED_MESSAGE,
            Self::NoSharedSuite | Self::NoSharedGroup | Self::NoSharedScheme => {
                alert::HANDSHAKE_FAILURE
            }
            Self::NoCertificate => alert::HANDSHAKE_FAILURE,
            Self::UnknownPskIdentity(_) => alert::UNKNOWN_PSK_IDENTITY,
            Self::BadFinished | Self::Signature(_) => alert::DECRYPT_ERROR,
            Self::Certificate(_) => alert::BAD_CERTIFICATE,
            Self::KeyAgreement => alert::ILLEGAL_PARAMETER,
            Self::Random => alert::INTERNAL_ERROR,
            Self::Alert(_) | Self::Closed | Self::NotEstablished | Self::TooLarge(_) => {
                return None;
            }
        })
    }
}

/// Which side, with its settings.
#[derive(Clone, Debug)]
enum Side {
    Client(Arc<ClientConfig>),
    Server(Arc<ServerConfig>),
}

/// Where the handshake stands: the message expected next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Client: a HelloVerifyRequest or the ServerHello.
    ServerHello,
    /// Client: the server's Certificate (certificate suites).
    ServerCertificate,
    /// Client: a ServerKeyExchange (ECDHE; a PSK hint for PSK suites), a
    /// CertificateRequest or the ServerHelloDone.
    ServerKeyExchange,
    /// Client: a CertificateRequest or the ServerHelloDone.
    CertificateRequest,
    /// Client: the ServerHelloDone.
    ServerHelloDone,
    /// Server: the client's Certificate.
    ClientCertificate,
    /// Server: the ClientKeyExchange.
    ClientKeyExchange,
    /// Server: the client's CertificateVerify.
    CertificateVerify,
    /// Either side: the peer's Finished.
    Finished,
}

/// One message of a flight, kept for retransmission.
#[derive(Clone, Debug)]
enum Item {
    /// A whole handshake message (header and body) sent in `epoch`.
    Handshake {
        epoch: u16,
        whole: Vec<u8>,
    },
    ChangeCipherSpec,
}

/// The state of a handshake in progress.
struct Handshake {
    step: Step,
    reassembler: Reassembler,
    /// The message_seq of this side's next handshake message.
    send_seq: u16,
    /// Every handshake message so far, as RFC 6347 §4.2.6 hashes them.
    transcript: Vec<u8>,
    client_random: [u8; 32],
    server_random: [u8; 32],
    suite: Option<Suite>,
    extended_master_secret: bool,
    /// This side's ECDHE key (the server's, between its flight and the ClientKeyExchange).
    ecdhe: Option<(u16, agreement::EphemeralPrivateKey)>,
    /// The client's: the server's ECDHE group and point.
    server_point: Option<(u16, Vec<u8>)>,
    /// The peer's chain (end entity first).
    peer_chain: Vec<CertificateDer<'static>>,
    /// The signature schemes the peer accepts (its signature_algorithms or
    /// CertificateRequest).
    peer_schemes: Vec<u16>,
    /// Client: the server asked for a certificate.
    certificate_requested: bool,
    /// Client: its ClientHello, sent again with the server's cookie.
    hello: Option<ClientHello>,
    master: Option<[u8; 48]>,
    /// A record of epoch 1 failed authentication while the Finished was awaited: the peer's
    /// key is likely another (a wrong PSK), said when the handshake times out.
    finished_unreadable: bool,
    /// This side's write keys between their derivation and its ChangeCipherSpec.
    pending_write: Option<Protection>,
    /// The PSK identity the client named: the peer's identity once its Finished proves it
    /// holds the key.
    psk_identity: Option<Vec<u8>>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("step", &self.step)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    fn new(step: Step, next_receive: u16) -> Self {
        Self {
            step,
            reassembler: Reassembler::starting_at(next_receive),
            send_seq: 0,
            transcript: Vec::with_capacity(1024),
            client_random: [0; 32],
            server_random: [0; 32],
            suite: None,
            extended_master_secret: false,
            ecdhe: None,
            server_point: None,
            peer_chain: Vec::new(),
            peer_schemes: Vec::new(),
            certificate_requested: false,
            hello: None,
            master: None,
            finished_unreadable: false,
            pending_write: None,
            psk_identity: None,
        }
    }

    fn suite(&self) -> Result<Suite, Error> {
        self.suite
            .ok_or(Error::Unexpected("message before the ServerHello"))
    }

    fn transcript_hash(&self, suite: Suite) -> Vec<u8> {
        ring::digest::digest(suite.hash().algorithm(), &self.transcript)
            .as_ref()
            .to_vec()
    }

    /// Derives the master secret and the record keys from `pre_master` (the transcript must
    /// end with the ClientKeyExchange, for the extended master secret): returns this side's
    /// write keys and its read keys.
    fn derive(
        &mut self,
        pre_master: &[u8],
        client: bool,
    ) -> Result<(Protection, Protection), Error> {
        let suite = self.suite()?;
        let master = if self.extended_master_secret {
            crypto::extended_master_secret(suite.hash(), pre_master, &self.transcript_hash(suite))
        } else {
            crypto::master_secret(
                suite.hash(),
                pre_master,
                &self.client_random,
                &self.server_random,
            )
        };
        let keys = crypto::record_keys(suite, &master, &self.client_random, &self.server_random);
        self.master = Some(master);
        Ok(if client {
            (keys.client_write, keys.server_write)
        } else {
            (keys.server_write, keys.client_write)
        })
    }

    fn verify_data(&self, client: bool) -> Result<[u8; 12], Error> {
        let suite = self.suite()?;
        let master = self.master.as_ref().ok_or(Error::Unexpected("Finished"))?;
        Ok(crypto::verify_data(
            suite.hash(),
            master,
            client,
            &self.transcript_hash(suite),
        ))
    }
}

/// How the connection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Handshaking,
    Established,
    /// Ended: by the peer, by [`Connection::close`] or by an error.
    Ended(Option<Error>),
}

/// What the peer proved in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// The PSK identity whose key it holds.
    Psk(Vec<u8>),
    /// The end-entity certificate of its verified chain (DER).
    Certificate(Vec<u8>),
}

/// One DTLS connection (see the module docs).
pub struct Connection {
    side: Side,
    state: State,
    handshake: Option<Box<Handshake>>,
    suite: Option<Suite>,
    peer: Option<PeerIdentity>,
    /// The epoch this side's records are sent in (1 from its ChangeCipherSpec on).
    write_epoch: u16,
    /// The next record sequence number of epochs 0 and 1.
    write_seq: [u64; 2],
    write_keys: Option<Protection>,
    /// The peer's write keys, from their derivation on: only the peer's Finished and later
    /// records open with them.
    read_keys: Option<Protection>,
    replay: ReplayWindow,
    /// The last flight sent, for retransmission: kept by the server after its Finished until
    /// the client is heard in epoch 1 (the client retransmits its Finished if ours was lost).
    flight: Vec<Item>,
    /// When the flight is sent again, and the timeout after that.
    retransmit: Option<(Instant, Duration)>,
    /// When the flight was last sent because the peer repeated its own.
    last_transmit: Option<Instant>,
    /// The peer's last handshake message_seq, once established: a retransmission of the
    /// client's last flight gets the server's again.
    last_peer_seq: Option<u16>,
    outbound: VecDeque<Vec<u8>>,
    inbound_app: VecDeque<Vec<u8>>,
    mtu: usize,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("suite", &self.suite)
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Error::Random)?;
    Ok(out)
}

fn agreement_algorithm(g: u16) -> Option<&'static agreement::Algorithm> {
    match g {
        group::X25519 => Some(&agreement::X25519),
        group::SECP256R1 => Some(&agreement::ECDH_P256),
        group::SECP384R1 => Some(&agreement::ECDH_P384),
        _ => None,
    }
}

/// The groups this side does ECDHE with, in its preference order.
const GROUPS: [u16; 3] = [group::X25519, group::SECP256R1, group::SECP384R1];

impl Connection {
    fn new(side: Side, handshake: Handshake, mtu: u16) -> Self {
        Self {
            side,
            state: State::Handshaking,
            handshake: Some(Box::new(handshake)),
            suite: None,
            peer: None,
            write_epoch: 0,
            write_seq: [0, 0],
            write_keys: None,
            read_keys: None,
            replay: ReplayWindow::new(),
            flight: Vec::new(),
            retransmit: None,
            last_transmit: None,
            last_peer_seq: None,
            outbound: VecDeque::new(),
            inbound_app: VecDeque::new(),
            mtu: usize::from(mtu).clamp(256, MAX_PLAINTEXT),
        }
    }

    /// A client connection: its ClientHello is ready in [`poll_datagram`](Self::poll_datagram).
    /// It offers the configured suites it has credentials for (PSK suites with a PSK, ECDHE
    /// suites with the CAs to verify the server); none is [`Error::NoSharedSuite`].
    pub fn connect(config: Arc<ClientConfig>, now: Instant) -> Result<Self, Error> {
        let mtu = config.mtu;
        let mut hs = Handshake::new(Step::ServerHello, 0);
        hs.client_random = random()?;
        // Only the suites this client has the credentials for: a server preferring a PSK
        // suite must not pick it for a client that has only a certificate.
        let usable: Vec<Suite> = config
            .suites
            .iter()
            .copied()
            .filter(|s| match s.key_exchange() {
                KeyExchange::Psk => config.psk.is_some(),
                _ => config.server_roots.is_some(),
            })
            .collect();
        if usable.is_empty() {
            return Err(Error::NoSharedSuite);
        }
        let ecdhe = usable.iter().any(|s| s.key_exchange() != KeyExchange::Psk);
        let hello = ClientHello {
            version: DTLS12,
            random: hs.client_random,
            session_id: Vec::new(),
            cookie: Vec::new(),
            suites: usable.iter().map(|s| s.id()).collect(),
            groups: ecdhe.then(|| GROUPS.to_vec()),
            signature_schemes: ecdhe.then(|| SCHEMES.to_vec()),
            extended_master_secret: true,
            secure_renegotiation: true,
            ec_point_formats: ecdhe,
        };
        hs.hello = Some(hello);
        let mut c = Self::new(Side::Client(config), hs, mtu);
        c.send_client_hello(now);
        Ok(c)
    }

    /// A server connection for the ClientHello in `datagram`, which carried a valid cookie
    /// (see [`crate::cookie`]); the server's first flight is ready in
    /// [`poll_datagram`](Self::poll_datagram), or its alert if the hello is refused.
    pub fn accept(config: Arc<ServerConfig>, datagram: &[u8], now: Instant) -> Self {
        let hello = crate::cookie::client_hello(datagram);
        let (seq, record_seq) = hello
            .as_ref()
            .map_or((0, 0), |h| (h.message_seq, h.record_seq));
        let mut hs = Handshake::new(Step::ClientKeyExchange, seq);
        hs.send_seq = seq;
        let mtu = config.mtu;
        let mut c = Self::new(Side::Server(config), hs, mtu);
        // The server's records follow the ClientHello's numbering, as its HelloVerifyRequest
        // did (RFC 6347 §4.2.1).
        c.write_seq[0] = record_seq;
        if hello.is_none() {
            c.fail(Error::Unexpected("datagram without a whole ClientHello"));
            return c;
        }
        c.handle_datagram(datagram, now);
        c
    }

    /// Whether the handshake has completed and the connection not ended.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the connection has ended (see [`error`](Self::error)).
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended(_))
    }

    /// Why the connection ended, if it failed or the peer closed it.
    pub fn error(&self) -> Option<&Error> {
        match &self.state {
            State::Ended(e) => e.as_ref(),
            _ => None,
        }
    }

    /// Why the handshake is not moving, for the log of one that timed out: a peer whose
    /// Finished could not be read holds another key.
    pub fn stall_reason(&self) -> Option<&'static str> {
        self.handshake
            .as_ref()
            .filter(|h| h.finished_unreadable)
            .map(|_| "the peer's Finished failed authentication (another key: a wrong PSK?)")
    }

    /// The agreed suite, once the ServerHello is out or in.
    pub fn suite(&self) -> Option<Suite> {
        self.suite
    }

    /// What the peer proved, once established.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// The next datagram to send.
    pub fn poll_datagram(&mut self) -> Option<Vec<u8>> {
        self.outbound.pop_front()
    }

    /// The next application record received.
    pub fn poll_app(&mut self) -> Option<Vec<u8>> {
        self.inbound_app.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retransmit.map(|(at, _)| at)
    }

    /// Retransmits the last flight if its timer has expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((at, timeout)) = self.retransmit else {
            return;
        };
        if now < at {
            return;
        }
        let next = (timeout * 2).min(MAX_RETRANSMIT);
        self.retransmit = Some((now + next, next));
        self.transmit_flight();
    }

    /// Sends `data` as one application record.
    pub fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.state != State::Established {
            return Err(Error::NotEstablished);
        }
        if data.len() > MAX_PLAINTEXT {
            return Err(Error::TooLarge(data.len()));
        }
        let mut out = Vec::with_capacity(record::HEADER_LEN + data.len() + 24);
        self.seal(ContentType::ApplicationData, data, &mut out);
        self.outbound.push_back(out);
        Ok(())
    }

    /// Ends the connection with a close_notify to the peer.
    pub fn close(&mut self) {
        if !self.is_ended() {
            self.send_alert(1, alert::CLOSE_NOTIFY);
            self.end(None);
        }
    }

    /// Takes one received datagram; returns whether it held a record authenticated under the
    /// peer's keys (epoch 1): only those prove the peer is there (anyone can send the rest
    /// from its address). Records this side cannot use (another epoch, failed
    /// authentication, replays, plaintext once established) are dropped; an error ends the
    /// connection (see [`error`](Self::error)) after queueing an alert for the peer.
    pub fn handle_datagram(&mut self, datagram: &[u8], now: Instant) -> bool {
        if self.is_ended() {
            return false;
        }
        let mut peer_retransmitted = false;
        let mut authenticated = false;
        for (header, fragment) in record::records(datagram) {
            if header.version != DTLS12 && header.version != record::DTLS10 {
                continue;
            }
            match self.handle_record(&header, fragment, now, &mut peer_retransmitted) {
                Ok(heard) => authenticated |= heard,
                Err(e) => {
                    self.fail(e);
                    return authenticated;
                }
            }
            if self.is_ended() {
                return authenticated;
            }
        }
        // The peer repeating its last flight means ours was lost: sent again, at most once
        // per half initial timeout (a spoofer repeating it cannot make this side send its
        // flight, certificates and all, at will).
        let due = self
            .last_transmit
            .is_none_or(|at| now.saturating_duration_since(at) >= INITIAL_RETRANSMIT / 2);
        if peer_retransmitted && !self.flight.is_empty() && due {
            self.last_transmit = Some(now);
            self.transmit_flight();
        }
        authenticated
    }

    /// Takes one record; `Ok(true)` when it was authenticated under the peer's keys.
    fn handle_record(
        &mut self,
        header: &Header,
        fragment: &[u8],
        now: Instant,
        peer_retransmitted: &mut bool,
    ) -> Result<bool, Error> {
        let plain;
        let body = match header.epoch {
            0 if self.state == State::Established => {
                // Once keys are in use, plaintext records can only be the peer's
                // retransmitted handshake; anything else, malformed or not, is dropped:
                // anyone can send it from the peer's address.
                if header.content_type == ContentType::Handshake as u8 {
                    self.note_retransmission(fragment, peer_retransmitted);
                }
                return Ok(false);
            }
            0 => fragment,
            1 => {
                let Some(keys) = &self.read_keys else {
                    return Ok(false);
                };
                if !self.replay.is_fresh(header.sequence) {
                    return Ok(false);
                }
                match keys.open(header, fragment) {
                    Ok(p) => plain = p,
                    Err(_) => {
                        if let Some(hs) = self.handshake.as_mut() {
                            hs.finished_unreadable |= hs.step == Step::Finished;
                        }
                        return Ok(false);
                    }
                }
                self.replay.mark(header.sequence);
                &plain[..]
            }
            _ => return Ok(false),
        };
        let authenticated = header.epoch == 1;
        match ContentType::from_u8(header.content_type) {
            Some(ContentType::Handshake) => {
                self.handle_handshake(body, header.epoch, now, peer_retransmitted)?;
            }
            Some(ContentType::Alert) => self.handle_alert(body)?,
            // Keys change when they are derived and the peer's Finished is checked under
            // them; the ChangeCipherSpec itself carries nothing to act on.
            Some(ContentType::ChangeCipherSpec) => {}
            Some(ContentType::ApplicationData)
                if authenticated && self.state == State::Established =>
            {
                // The peer is speaking under the new keys: it has our Finished.
                self.flight = Vec::new();
                self.last_peer_seq = None;
                self.inbound_app.push_back(body.to_vec());
            }
            _ => {}
        }
        Ok(authenticated)
    }

    /// Established: whether plaintext handshake fragments repeat the client's last flight
    /// (the server's Finished was lost). Malformed ones are ignored.
    fn note_retransmission(&self, fragments: &[u8], peer_retransmitted: &mut bool) {
        let mut r = Reader::new(fragments);
        while let Ok(f) = Fragment::read(&mut r) {
            if self.last_peer_seq.is_some_and(|last| f.seq <= last) {
                *peer_retransmitted = true;
            }
        }
    }

    fn handle_alert(&mut self, body: &[u8]) -> Result<(), Error> {
        let mut r = Reader::new(body);
        let level = r.u8("alert")?;
        let description = r.u8("alert")?;
        if description == alert::CLOSE_NOTIFY {
            self.end(Some(Error::Closed));
        } else if level == 2 {
            self.end(Some(Error::Alert(description)));
        }
        Ok(())
    }

    fn handle_handshake(
        &mut self,
        body: &[u8],
        epoch: u16,
        now: Instant,
        peer_retransmitted: &mut bool,
    ) -> Result<(), Error> {
        let mut r = Reader::new(body);
        let Some(hs) = self.handshake.as_mut() else {
            // Established: a retransmission of the client's last flight (its Finished, in
            // epoch 1) means the server's Finished was lost; anything newer (renegotiation)
            // is ignored.
            self.note_retransmission(body, peer_retransmitted);
            return Ok(());
        };
        while !r.is_empty() {
            let f = Fragment::read(&mut r)?;
            if hs.reassembler.push(&f, epoch)? == Received::Old {
                *peer_retransmitted = true;
            }
        }
        while let Some(m) = self.handshake.as_mut().and_then(|hs| hs.reassembler.pop()) {
            self.handle_message(m, now)?;
            if self.is_ended() {
                break;
            }
        }
        Ok(())
    }

    fn hs(&mut self) -> Result<&mut Handshake, Error> {
        self.handshake
            .as_deref_mut()
            .ok_or(Error::Unexpected("handshake message after the handshake"))
    }

    fn handle_message(&mut self, m: Message, now: Instant) -> Result<(), Error> {
        // Only the Finished comes under the new keys; everything before it in the clear.
        if (m.kind == kind::FINISHED) != (m.epoch == 1) {
            return Err(Error::Unexpected("handshake message in the wrong epoch"));
        }
        match self.side.clone() {
            Side::Server(config) => self.server_message(&config, m, now),
            Side::Client(config) => self.client_message(&config, m, now),
        }
    }

    // ----- server -----

    fn server_message(
        &mut self,
        config: &ServerConfig,
        m: Message,
        now: Instant,
    ) -> Result<(), Error> {
        let hs = self.hs()?;
        let whole = m.whole();
        match (hs.step, m.kind) {
            // The first message: the ClientHello that carried the cookie. Later ones are
            // retransmissions and never get here (the reassembler has passed them).
            (Step::ClientKeyExchange, kind::CLIENT_HELLO) if hs.transcript.is_empty() => {
                hs.transcript.extend_from_slice(&whole);
                let hello = ClientHello::read(&m.body)?;
                self.server_hello(config, &hello, now)
            }
            (Step::ClientCertificate, kind::CERTIFICATE) => {
                let chain = msg::read_certificate(&m.body)?;
                if chain.is_empty() {
                    return Err(Error::NoCertificate);
                }
                let chain: Vec<CertificateDer<'static>> =
                    chain.into_iter().map(CertificateDer::from).collect();
                let roots = config
                    .client_roots
                    .as_ref()
                    .ok_or(Error::Unexpected("Certificate"))?;
                config::verify_chain(&chain, roots, true, None, (config.clock)())
                    .map_err(Error::Certificate)?;
                hs.peer_chain = chain;
                hs.transcript.extend_from_slice(&whole);
                hs.step = Step::ClientKeyExchange;
                Ok(())
            }
            (Step::ClientKeyExchange, kind::CLIENT_KEY_EXCHANGE) => {
                let suite = hs.suite()?;
                let pre_master = match suite.key_exchange() {
                    KeyExchange::Psk => {
                        let identity = msg::read_psk_identity(&m.body)?;
                        let lookup = config.psk.as_ref().ok_or(Error::NoSharedSuite)?;
                        let key = lookup(&identity).ok_or_else(|| {
                            Error::UnknownPskIdentity(String::from_utf8_lossy(&identity).into())
                        })?;
                        self.hs()?.psk_identity = Some(identity);
                        crypto::psk_pre_master(&key)
                    }
                    KeyExchange::EcdheEcdsa | KeyExchange::EcdheRsa => {
                        let point = msg::read_ecdhe_point(&m.body)?;
                        let hs = self.hs()?;
                        let (g, key) = hs
                            .ecdhe
                            .take()
                            .ok_or(Error::Unexpected("ClientKeyExchange"))?;
                        let alg = agreement_algorithm(g).ok_or(Error::NoSharedGroup)?;
                        agreement::agree_ephemeral(
                            key,
                            &agreement::UnparsedPublicKey::new(alg, &point),
                            |secret| secret.to_vec(),
                        )
                        .map_err(|_| Error::KeyAgreement)?
                    }
                };
                let hs = self.hs()?;
                hs.transcript.extend_from_slice(&whole);
                let (write, read) = hs.derive(&pre_master, false)?;
                hs.step = if hs.peer_chain.is_empty() {
                    Step::Finished
                } else {
                    Step::CertificateVerify
                };
                hs.pending_write = Some(write);
                self.read_keys = Some(read);
                Ok(())
            }
            (Step::CertificateVerify, kind::CERTIFICATE_VERIFY) => {
                let mut r = Reader::new(&m.body);
                let (scheme, signature) = msg::read_signed(&mut r)?;
                r.end("CertificateVerify")?;
                if !SCHEMES.contains(&scheme) {
                    return Err(Error::Signature("a scheme the server did not offer"));
                }
                config::verify_signature(&hs.peer_chain[0], scheme, &hs.transcript, &signature)
                    .map_err(Error::Signature)?;
                hs.transcript.extend_from_slice(&whole);
                hs.step = Step::Finished;
                Ok(())
            }
            (Step::Finished, kind::FINISHED) => {
                let expected = hs.verify_data(true)?;
                if !constant_time_eq(&expected, &m.body) {
                    return Err(Error::BadFinished);
                }
                hs.transcript.extend_from_slice(&whole);
                let finished = hs.verify_data(false)?;
                if let Some(ee) = hs.peer_chain.first() {
                    self.peer = Some(PeerIdentity::Certificate(ee.to_vec()));
                } else if let Some(identity) = hs.psk_identity.take() {
                    self.peer = Some(PeerIdentity::Psk(identity));
                }
                let seq = m.seq;
                self.send_finished(&finished, None);
                self.last_peer_seq = Some(seq);
                self.establish();
                Ok(())
            }
            (_, kind::CLIENT_HELLO) => Err(Error::Unexpected("ClientHello")),
            _ => Err(Error::Unexpected("handshake message")),
        }
    }

    /// Chooses the suite (the server's preference order) and sends the server's flight.
    fn server_hello(
        &mut self,
        config: &ServerConfig,
        hello: &ClientHello,
        now: Instant,
    ) -> Result<(), Error> {
        let client_groups = hello
            .groups
            .clone()
            .unwrap_or_else(|| vec![group::SECP256R1]);
        let shared_group = GROUPS.iter().copied().find(|g| client_groups.contains(g));
        let certificate = config.certificate.as_ref();
        let client_schemes = hello
            .signature_schemes
            .clone()
            .unwrap_or_else(|| vec![0x0403, 0x0401]);
        // An ECDHE suite needs a group in common and a signature the client accepts.
        let ecdhe_ok = |ecdsa: bool| {
            shared_group.is_some()
                && config.client_roots.is_some()
                && certificate.is_some_and(|c| {
                    c.is_ecdsa() == ecdsa && config::can_sign(c.key.as_ref(), &client_schemes)
                })
        };
        let can_serve = |s: &Suite| match s.key_exchange() {
            KeyExchange::Psk => config.psk.is_some(),
            KeyExchange::EcdheEcdsa => ecdhe_ok(true),
            KeyExchange::EcdheRsa => ecdhe_ok(false),
        };
        let suite = config
            .suites
            .iter()
            .copied()
            .filter(|s| hello.suites.contains(&s.id()))
            .find(can_serve)
            .ok_or(Error::NoSharedSuite)?;
        let ecdhe = suite.key_exchange() != KeyExchange::Psk;
        let hs = self.hs()?;
        hs.suite = Some(suite);
        hs.client_random = hello.random;
        hs.server_random = random()?;
        hs.extended_master_secret = hello.extended_master_secret;
        hs.peer_schemes = client_schemes;
        let server_hello = ServerHello {
            version: DTLS12,
            random: hs.server_random,
            suite: suite.id(),
            extended_master_secret: hello.extended_master_secret,
            secure_renegotiation: hello.secure_renegotiation,
            ec_point_formats: ecdhe && hello.ec_point_formats,
        };
        let mut flight = vec![self.message(kind::SERVER_HELLO, &server_hello.write())?];
        if ecdhe {
            let certified = certificate.ok_or(Error::NoSharedSuite)?;
            let g = shared_group.ok_or(Error::NoSharedGroup)?;
            flight.push(self.message(kind::CERTIFICATE, &msg::certificate(&certified.chain))?);
            let alg = agreement_algorithm(g).ok_or(Error::NoSharedGroup)?;
            let key = agreement::EphemeralPrivateKey::generate(alg, &SystemRandom::new())
                .map_err(|_| Error::Random)?;
            let public = key.compute_public_key().map_err(|_| Error::Random)?;
            let params = msg::ecdhe_params(g, public.as_ref());
            let hs = self.hs()?;
            let mut signed = Vec::with_capacity(64 + params.len());
            signed.extend_from_slice(&hs.client_random);
            signed.extend_from_slice(&hs.server_random);
            signed.extend_from_slice(&params);
            let (scheme, signature) =
                config::sign(certified.key.as_ref(), &hs.peer_schemes, &signed)
                    .ok_or(Error::NoSharedScheme)?;
            hs.ecdhe = Some((g, key));
            let mut body = params;
            body.extend_from_slice(&msg::signed(scheme, &signature));
            flight.push(self.message(kind::SERVER_KEY_EXCHANGE, &body)?);
            flight.push(self.message(
                kind::CERTIFICATE_REQUEST,
                &msg::certificate_request(&SCHEMES),
            )?);
            self.hs()?.step = Step::ClientCertificate;
        } else {
            self.hs()?.step = Step::ClientKeyExchange;
        }
        flight.push(self.message(kind::SERVER_HELLO_DONE, &[])?);
        self.suite = Some(suite);
        self.send_flight(flight, Some(now));
        Ok(())
    }

    // ----- client -----

    fn send_client_hello(&mut self, now: Instant) {
        let Some(hs) = self.handshake.as_deref_mut() else {
            return;
        };
        let Some(hello) = &hs.hello else { return };
        let body = hello.write();
        let seq = hs.send_seq;
        hs.send_seq = hs.send_seq.wrapping_add(1);
        let whole = handshake::whole(kind::CLIENT_HELLO, seq, &body);
        hs.transcript.clear();
        hs.transcript.extend_from_slice(&whole);
        self.send_flight(vec![Item::Handshake { epoch: 0, whole }], Some(now));
    }

    fn client_message(
        &mut self,
        config: &ClientConfig,
        m: Message,
        now: Instant,
    ) -> Result<(), Error> {
        let hs = self.hs()?;
        let whole = m.whole();
        match (hs.step, m.kind) {
            (Step::ServerHello, kind::HELLO_VERIFY_REQUEST) => {
                let cookie = msg::read_hello_verify_request(&m.body)?;
                if cookie.len() > 255 {
                    return Err(Malformed("HelloVerifyRequest cookie").into());
                }
                if let Some(hello) = hs.hello.as_mut() {
                    hello.cookie = cookie;
                }
                self.send_client_hello(now);
                Ok(())
            }
            (Step::ServerHello, kind::SERVER_HELLO) => {
                let hello = ServerHello::read(&m.body)?;
                let suite = Suite::from_id(hello.suite)
                    .filter(|s| config.suites.contains(s))
                    .ok_or(Error::NoSharedSuite)?;
                if hello.version != DTLS12 {
                    return Err(Error::Unexpected("a version other than DTLS 1.2"));
                }
                hs.suite = Some(suite);
                hs.server_random = hello.random;
                hs.extended_master_secret = hello.extended_master_secret;
                hs.transcript.extend_from_slice(&whole);
                hs.hello = None;
                hs.step = if suite.key_exchange() == KeyExchange::Psk {
                    Step::ServerKeyExchange
                } else {
                    Step::ServerCertificate
                };
                self.suite = Some(suite);
                Ok(())
            }
            (Step::ServerCertificate, kind::CERTIFICATE) => {
                let chain: Vec<CertificateDer<'static>> = msg::read_certificate(&m.body)?
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
                let roots = config
                    .server_roots
                    .as_ref()
                    .ok_or(Error::Certificate("no CA to verify the server with".into()))?;
                config::verify_chain(
                    &chain,
                    roots,
                    false,
                    config.server_name.as_ref(),
                    (config.clock)(),
                )
                .map_err(Error::Certificate)?;
                hs.peer_chain = chain;
                hs.transcript.extend_from_slice(&whole);
                hs.step = Step::ServerKeyExchange;
                Ok(())
            }
            (Step::ServerKeyExchange, kind::SERVER_KEY_EXCHANGE) => {
                let suite = hs.suite()?;
                if suite.key_exchange() == KeyExchange::Psk {
                    // An identity hint: this client has one identity.
                    msg::read_psk_identity(&m.body)?;
                } else {
                    let ske = msg::read_ecdhe_server_key_exchange(&m.body)?;
                    let mut signed = Vec::with_capacity(64 + ske.params.len());
                    signed.extend_from_slice(&hs.client_random);
                    signed.extend_from_slice(&hs.server_random);
                    signed.extend_from_slice(&ske.params);
                    if !SCHEMES.contains(&ske.scheme) {
                        return Err(Error::Signature("a scheme the client did not offer"));
                    }
                    let ee = hs.peer_chain.first().ok_or(Error::NoCertificate)?;
                    config::verify_signature(ee, ske.scheme, &signed, &ske.signature)
                        .map_err(Error::Signature)?;
                    if !GROUPS.contains(&ske.group) {
                        return Err(Error::NoSharedGroup);
                    }
                    hs.server_point = Some((ske.group, ske.point));
                }
                hs.transcript.extend_from_slice(&whole);
                hs.step = Step::CertificateRequest;
                Ok(())
            }
            (Step::ServerKeyExchange | Step::CertificateRequest, kind::CERTIFICATE_REQUEST) => {
                if hs.suite()?.key_exchange() != KeyExchange::Psk && hs.server_point.is_none() {
                    return Err(Error::Unexpected(
                        "CertificateRequest before ServerKeyExchange",
                    ));
                }
                hs.peer_schemes = msg::read_certificate_request(&m.body)?;
                hs.certificate_requested = true;
                hs.transcript.extend_from_slice(&whole);
                hs.step = Step::ServerHelloDone;
                Ok(())
            }
            (
                Step::ServerKeyExchange | Step::CertificateRequest | Step::ServerHelloDone,
                kind::SERVER_HELLO_DONE,
            ) => {
                if hs.suite()?.key_exchange() != KeyExchange::Psk && hs.server_point.is_none() {
                    return Err(Error::Unexpected(
                        "ServerHelloDone before ServerKeyExchange",
                    ));
                }
                hs.transcript.extend_from_slice(&whole);
                self.client_finish(config, now)
            }
            (Step::Finished, kind::FINISHED) => {
                let expected = hs.verify_data(false)?;
                if !constant_time_eq(&expected, &m.body) {
                    return Err(Error::BadFinished);
                }
                if let Some(ee) = hs.peer_chain.first() {
                    self.peer = Some(PeerIdentity::Certificate(ee.to_vec()));
                }
                self.establish();
                Ok(())
            }
            _ => Err(Error::Unexpected("handshake message")),
        }
    }

    /// The client's second flight: [Certificate], ClientKeyExchange, [CertificateVerify],
    /// ChangeCipherSpec, Finished.
    fn client_finish(&mut self, config: &ClientConfig, now: Instant) -> Result<(), Error> {
        let suite = self.hs()?.suite()?;
        let mut flight = Vec::new();
        let send_certificate = self.hs()?.certificate_requested;
        if send_certificate {
            let chain: &[CertificateDer<'static>] =
                config.certificate.as_ref().map_or(&[], |c| &c.chain);
            flight.push(self.message(kind::CERTIFICATE, &msg::certificate(chain))?);
        }
        let (body, pre_master) = match suite.key_exchange() {
            KeyExchange::Psk => {
                let (identity, key) = config.psk.as_ref().ok_or(Error::NoSharedSuite)?;
                (msg::psk_identity(identity), crypto::psk_pre_master(key))
            }
            _ => {
                let (g, point) = self
                    .hs()?
                    .server_point
                    .take()
                    .ok_or(Error::Unexpected("ServerHelloDone"))?;
                let alg = agreement_algorithm(g).ok_or(Error::NoSharedGroup)?;
                let key = agreement::EphemeralPrivateKey::generate(alg, &SystemRandom::new())
                    .map_err(|_| Error::Random)?;
                let public = key.compute_public_key().map_err(|_| Error::Random)?;
                let secret = agreement::agree_ephemeral(
                    key,
                    &agreement::UnparsedPublicKey::new(alg, &point),
                    |s| s.to_vec(),
                )
                .map_err(|_| Error::KeyAgreement)?;
                (msg::ecdhe_point(public.as_ref()), secret)
            }
        };
        flight.push(self.message(kind::CLIENT_KEY_EXCHANGE, &body)?);
        let hs = self.hs()?;
        let (write, read) = hs.derive(&pre_master, true)?;
        hs.pending_write = Some(write);
        self.read_keys = Some(read);
        if let (true, Some(certified)) = (send_certificate, &config.certificate) {
            let hs = self.hs()?;
            let (scheme, signature) =
                config::sign(certified.key.as_ref(), &hs.peer_schemes, &hs.transcript)
                    .ok_or(Error::NoSharedScheme)?;
            flight.push(self.message(kind::CERTIFICATE_VERIFY, &msg::signed(scheme, &signature))?);
        }
        let finished = self.hs()?.verify_data(true)?;
        self.hs()?.step = Step::Finished;
        self.send_finished(&finished, Some((flight, now)));
        Ok(())
    }

    // ----- both -----

    /// A handshake message of this side's: numbered, added to the transcript.
    fn message(&mut self, kind: u8, body: &[u8]) -> Result<Item, Error> {
        let hs = self.hs()?;
        let whole = handshake::whole(kind, hs.send_seq, body);
        hs.send_seq = hs.send_seq.wrapping_add(1);
        hs.transcript.extend_from_slice(&whole);
        Ok(Item::Handshake { epoch: 0, whole })
    }

    /// Sends `before` (if any), then ChangeCipherSpec and Finished, switching this side's
    /// writes to the new keys. With `before` (the client), the flight waits for an answer
    /// under the retransmission timer; without (the server's last flight), it is sent again
    /// only when the client's last flight comes again.
    fn send_finished(&mut self, verify_data: &[u8; 12], before: Option<(Vec<Item>, Instant)>) {
        let Some(hs) = self.handshake.as_deref_mut() else {
            return;
        };
        let whole = handshake::whole(kind::FINISHED, hs.send_seq, verify_data);
        hs.send_seq = hs.send_seq.wrapping_add(1);
        hs.transcript.extend_from_slice(&whole);
        self.write_keys = hs.pending_write.take();
        self.write_epoch = 1;
        let (mut flight, now) = before.map_or((Vec::new(), None), |(f, now)| (f, Some(now)));
        flight.push(Item::ChangeCipherSpec);
        flight.push(Item::Handshake { epoch: 1, whole });
        self.send_flight(flight, now);
    }

    /// Keeps `flight` for retransmission and sends it; with `now`, arms the timer.
    fn send_flight(&mut self, flight: Vec<Item>, now: Option<Instant>) {
        self.flight = flight;
        self.retransmit = now.map(|now| (now + INITIAL_RETRANSMIT, INITIAL_RETRANSMIT));
        self.transmit_flight();
    }

    /// Sends the kept flight: each message in fragments that fit the MTU, records packed
    /// into as few datagrams as fit. Each transmission takes new record sequence numbers.
    fn transmit_flight(&mut self) {
        let flight = std::mem::take(&mut self.flight);
        let mut datagram = Vec::with_capacity(self.mtu);
        for item in &flight {
            let (epoch, content, pieces) = match item {
                Item::ChangeCipherSpec => (0, ContentType::ChangeCipherSpec, vec![vec![1u8]]),
                Item::Handshake { epoch, whole } => {
                    let overhead = record::HEADER_LEN
                        + if *epoch == 1 {
                            self.write_keys.as_ref().map_or(0, Protection::overhead)
                        } else {
                            0
                        };
                    let mut pieces = Vec::new();
                    handshake::fragments(whole, self.mtu - overhead, |p| pieces.push(p));
                    (*epoch, ContentType::Handshake, pieces)
                }
            };
            for piece in pieces {
                let mut rec = Vec::with_capacity(piece.len() + 40);
                self.seal_in(epoch, content, &piece, &mut rec);
                if !datagram.is_empty() && datagram.len() + rec.len() > self.mtu {
                    self.outbound.push_back(std::mem::take(&mut datagram));
                }
                datagram.extend_from_slice(&rec);
            }
        }
        if !datagram.is_empty() {
            self.outbound.push_back(datagram);
        }
        self.flight = flight;
    }

    /// Appends one record of `content` in this side's write epoch.
    fn seal(&mut self, content: ContentType, plaintext: &[u8], out: &mut Vec<u8>) {
        self.seal_in(self.write_epoch, content, plaintext, out);
    }

    fn seal_in(&mut self, epoch: u16, content: ContentType, plaintext: &[u8], out: &mut Vec<u8>) {
        let e = usize::from(epoch.min(1));
        let seq = self.write_seq[e];
        self.write_seq[e] += 1;
        match (&self.write_keys, epoch) {
            (Some(keys), 1) => keys.seal(content, epoch, seq, plaintext, out),
            _ => {
                Header {
                    content_type: content as u8,
                    version: DTLS12,
                    epoch,
                    sequence: seq,
                    length: plaintext.len() as u16,
                }
                .write(out);
                out.extend_from_slice(plaintext);
            }
        }
    }

    fn send_alert(&mut self, level: u8, description: u8) {
        let mut out = Vec::with_capacity(48);
        self.seal(ContentType::Alert, &[level, description], &mut out);
        self.outbound.push_back(out);
    }

    /// The handshake completed: its state goes, the keys stay.
    fn establish(&mut self) {
        self.handshake = None;
        self.state = State::Established;
        if matches!(self.side, Side::Client(_)) {
            self.flight = Vec::new();
            self.retransmit = None;
        } else {
            // The server keeps its last flight (see `flight`), untimed.
            self.retransmit = None;
        }
    }

    fn fail(&mut self, e: Error) {
        if let Some(description) = e.alert() {
            self.send_alert(2, description);
        }
        self.end(Some(e));
    }

    fn end(&mut self, why: Option<Error>) {
        self.state = State::Ended(why);
        self.handshake = None;
        self.flight = Vec::new();
        self.retransmit = None;
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
