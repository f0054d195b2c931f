//! The DTLS device link: UDP with DTLS 1.2 (OpenSSL), one device frame per datagram.
//!
//! One socket task reads every datagram and hands it to the session of its source address.
//! A datagram from an address without a session goes through OpenSSL's stateless cookie
//! exchange (`DTLSv1_listen`, cookies keyed on the address): a ClientHello without a valid
//! cookie is answered with a HelloVerifyRequest and forgotten, so spoofed or flooding sources
//! cost a reply and no memory. Only a peer that returns its cookie gets a session, within
//! `max_sessions`, `max_half_open` handshakes in progress and `handshakes_per_second`.
//!
//! Each session runs in its own task ([`session::Session`]): the handshake with OpenSSL's
//! retransmission timer and a deadline (a wrong PSK makes a client go silent, not fail),
//! then a relay between the DTLS records and the byte-stream driver ([`super::stream`]),
//! which checks the device's `Hello` against the identity the handshake proved: the PSK
//! identity, or the client certificate's CN or DNS names. A session that hears nothing for
//! `idle_timeout` ends, and every ended session leaves the map.
//!
//! A new epoch-0 ClientHello from an address whose session is established is a device that
//! rebooted and kept its address and port: it goes through the cookie exchange again, and a
//! valid one replaces the old session.

pub mod client;
pub mod ffi;
pub mod session;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslOptions, SslStream,
    SslVerifyMode,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::session::{ContextError, Datagrams, MAX_DATAGRAM, Role, Session, Wire};
use super::{Identity, LinkEvent, LinkId, host, stream};

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
    pub max_half_open: usize,
    pub max_half_open_per_address: usize,
    pub handshakes_per_second: u32,
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
        max_half_open,
        max_half_open_per_address,
        handshakes_per_second,
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
        max_half_open: *max_half_open,
        max_half_open_per_address: *max_half_open_per_address,
        handshakes_per_second: *handshakes_per_second,
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
    /// OpenSSL refused a setting or a file: the cipher list, a certificate, key or CA file.
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

/// Per-connection data the OpenSSL callbacks read and write.
struct Indexes {
    /// The source address of the datagram being answered (cookie callbacks).
    peer: openssl::ex_data::Index<Ssl, SocketAddr>,
    /// The PSK identity the handshake proved.
    psk_identity: openssl::ex_data::Index<Ssl, String>,
}

fn indexes() -> &'static Indexes {
    static INDEXES: std::sync::OnceLock<Indexes> = std::sync::OnceLock::new();
    INDEXES.get_or_init(|| Indexes {
        peer: Ssl::new_ex_index().expect("OpenSSL ex_data index"),
        psk_identity: Ssl::new_ex_index().expect("OpenSSL ex_data index"),
    })
}

/// Cookies: HMAC-SHA256 over a per-process secret, the current minute and the peer address;
/// a cookie from this minute or the last one is accepted.
struct Cookies {
    /// ring's HMAC key: computing a cookie allocates nothing (an OpenSSL `Signer` per cookie
    /// was 14 % of a handshake's CPU).
    key: ring::hmac::Key,
}

impl Cookies {
    fn new() -> Result<Self, openssl::error::ErrorStack> {
        let mut secret = [0u8; 32];
        openssl::rand::rand_bytes(&mut secret)?;
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

/// Builds the OpenSSL context of a listener: DTLS 1.2 only, its cipher list, cookies, the PSK
/// callback and/or certificates. Errors name the file or the setting.
pub fn context(s: &Settings) -> Result<SslContext, LinkDtlsError> {
    let fail = |source: ContextError| LinkDtlsError::Context {
        listen: s.listen,
        source,
    };
    let mut b = session::builder(SslMethod::dtls_server(), &s.ciphers).map_err(fail)?;
    b.set_options(SslOptions::COOKIE_EXCHANGE);
    // Idle sessions give their record buffers back (most device links are idle most of the
    // time; thousands of sessions otherwise hold ~32 KiB each).
    b.set_mode(openssl::ssl::SslMode::RELEASE_BUFFERS);
    // No session resumption: a resumed PSK session never calls the PSK callback (no identity
    // proven) and a resumed certificate session has no verified peer to name the device; the
    // cache would also hold sessions beyond max_sessions. Every device does a full handshake.
    b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::OFF);
    let cookies = Arc::new(
        Cookies::new()
            .map_err(ContextError::CookieSecret)
            .map_err(fail)?,
    );
    let generate = cookies.clone();
    b.set_cookie_generate_cb(move |ssl, out| {
        let peer = ssl.ex_data(indexes().peer).copied();
        let cookie = peer
            .map(|p| generate.cookie(&p, Cookies::minute()))
            .filter(|c| c.len() <= out.len())
            .ok_or_else(openssl::error::ErrorStack::get)?;
        out[..cookie.len()].copy_from_slice(&cookie);
        Ok(cookie.len())
    });
    b.set_cookie_verify_cb(move |ssl, cookie| {
        ssl.ex_data(indexes().peer)
            .is_some_and(|p| cookies.verify(p, cookie))
    });
    if !s.psk.is_empty() {
        let keys = s.psk.clone();
        b.set_psk_server_callback(move |ssl, identity, out| {
            let Some(id) = identity.and_then(|i| std::str::from_utf8(i).ok()) else {
                return Ok(0);
            };
            match keys.get(id) {
                Some(key) if key.len() <= out.len() => {
                    out[..key.len()].copy_from_slice(key);
                    ssl.set_ex_data(indexes().psk_identity, id.to_owned());
                    Ok(key.len())
                }
                // Unknown identity: no key, the handshake fails.
                _ => Ok(0),
            }
        });
    }
    if let Some((cert, key, ca)) = &s.certificates {
        load_certificates(&mut b, cert, key, ca).map_err(fail)?;
        // PSK suites never ask for a certificate; certificate suites require one.
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(b.build())
}

fn load_certificates(
    b: &mut SslContextBuilder,
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Result<(), ContextError> {
    let file = |setting: &'static str, path: &std::path::Path| {
        let path = path.to_owned();
        move |source| ContextError::File {
            setting,
            path,
            source,
        }
    };
    b.set_certificate_chain_file(cert)
        .map_err(file("cert_file", cert))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(file("key_file", key))?;
    b.check_private_key()
        .map_err(|source| ContextError::KeyMismatch {
            key: "key_file",
            certificate: "cert_file",
            path: key.to_owned(),
            source,
        })?;
    b.set_ca_file(ca).map_err(file("client_ca_file", ca))?;
    Ok(())
}

/// One peer address in the socket task's map.
#[derive(Debug)]
struct Peer {
    datagrams: mpsc::Sender<Vec<u8>>,
    established: Arc<AtomicBool>,
    generation: u64,
}

/// Datagrams queued per session before more are dropped (UDP semantics: the peer
/// retransmits).
const SESSION_QUEUE: usize = 64;

/// A token bucket: `rate` per second, bursts of `rate`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Serves one DTLS listener forever; link ids follow `base`.
pub async fn serve(
    socket: UdpSocket,
    base: LinkId,
    core: mpsc::Sender<LinkEvent>,
    context: SslContext,
    settings: Settings,
) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().ok();
    let mut peers: HashMap<SocketAddr, Peer> = HashMap::new();
    let (gone_tx, mut gone) = mpsc::unbounded_channel::<(SocketAddr, u64, String)>();
    let mut bucket = Bucket::new(settings.handshakes_per_second);
    let mut next_link = base;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Refusals are counted and logged at most once per second, so a flood cannot flood the log.
    let mut refused = 0u64;
    let mut refusal_logged: Option<Instant> = None;
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
                if let Some(peer) = peers.get(&from) {
                    let restart = peer.established.load(Ordering::Acquire)
                        && session::is_client_hello(datagram);
                    if !restart {
                        // A full queue drops the datagram, as a busy network would.
                        let _ = peer.datagrams.try_send(datagram.to_vec());
                        continue;
                    }
                }
                // Only a ClientHello can start anything: other datagrams from unknown
                // addresses cost nothing more than this check.
                if !session::is_client_hello(datagram) {
                    continue;
                }
                match listen(&context, &settings, datagram, from) {
                    Listened::Answered(replies) => {
                        for d in replies {
                            let _ = socket.send_to(&d, from).await;
                        }
                    }
                    Listened::Ignored => {}
                    Listened::Verified(tls) => {
                        let (mut half_open, mut half_open_here) = (0, 0);
                        for (addr, p) in &peers {
                            if !p.established.load(Ordering::Acquire) {
                                half_open += 1;
                                half_open_here += usize::from(host(addr.ip()) == host(from.ip()));
                            }
                        }
                        let full = if peers.len() >= settings.max_sessions && !peers.contains_key(&from) {
                            Some("max_sessions")
                        } else if half_open >= settings.max_half_open {
                            Some("max_half_open")
                        } else if half_open_here >= settings.max_half_open_per_address {
                            Some("max_half_open_per_address")
                        } else if !bucket.take(Instant::now()) {
                            Some("handshakes_per_second")
                        } else {
                            None
                        };
                        if let Some(limit) = full {
                            refused += 1;
                            if refusal_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                                refusal_logged = Some(Instant::now());
                                tracing::warn!(?local, %from, limit, refused, sessions = peers.len(), half_open, "DTLS handshake refused: limit reached");
                            }
                            continue;
                        }
                        next_link += 1;
                        let (datagrams, inbound) = mpsc::channel(SESSION_QUEUE);
                        let established = Arc::new(AtomicBool::new(false));
                        if let Some(old) = peers.insert(from, Peer { datagrams, established: established.clone(), generation: next_link }) {
                            tracing::info!(%from, "new DTLS handshake from an address with a session: the device restarted; replacing it");
                            drop(old);
                        }
                        let session = Session {
                            tls,
                            wire: Wire { socket: socket.clone(), peer: from, inbound },
                        };
                        tokio::spawn(run_session(
                            session,
                            next_link,
                            established,
                            core.clone(),
                            Timeouts {
                                handshake: settings.handshake_timeout,
                                idle: settings.idle_timeout,
                            },
                            gone_tx.clone(),
                        ));
                    }
                }
            }
            Some((from, generation, reason)) = gone.recv() => {
                if peers.get(&from).is_some_and(|p| p.generation == generation) {
                    peers.remove(&from);
                }
                let half_open = peers.values().filter(|p| !p.established.load(Ordering::Acquire)).count();
                tracing::info!(?local, %from, %reason, sessions = peers.len(), half_open, "DTLS session ended");
            }
        }
    }
}

/// What the stateless cookie exchange made of one datagram.
enum Listened {
    /// HelloVerifyRequest(s) to send back; nothing kept.
    Answered(Vec<Vec<u8>>),
    /// Not a ClientHello, or malformed: dropped.
    Ignored,
    /// A ClientHello with a valid cookie: the session, ready to continue its handshake.
    Verified(SslStream<Datagrams>),
}

fn listen(context: &SslContext, s: &Settings, datagram: &[u8], from: SocketAddr) -> Listened {
    let Ok(mut ssl) = Ssl::new(context) else {
        return Listened::Ignored;
    };
    ssl.set_ex_data(indexes().peer, from);
    if ssl.set_mtu(u32::from(s.mtu)).is_err() {
        return Listened::Ignored;
    }
    let Ok(mut tls) = SslStream::new(ssl, Datagrams::with(datagram)) else {
        return Listened::Ignored;
    };
    match ffi::listen(tls.ssl()) {
        ffi::Listen::Verified => Listened::Verified(tls),
        ffi::Listen::NotYet => {
            let replies = tls.get_mut().take_outbound();
            if replies.is_empty() {
                Listened::Ignored
            } else {
                Listened::Answered(replies)
            }
        }
        ffi::Listen::Failed => Listened::Ignored,
    }
}

/// What a session needs of its listener's settings (not the keys: a session must not carry
/// a copy of every device's PSK).
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    handshake: Duration,
    idle: Duration,
}

/// One session: handshake, identity, then the device link until it ends.
async fn run_session(
    mut session: Session,
    link: LinkId,
    established: Arc<AtomicBool>,
    core: mpsc::Sender<LinkEvent>,
    timeouts: Timeouts,
    gone: mpsc::UnboundedSender<(SocketAddr, u64, String)>,
) {
    let peer = session.wire.peer;
    let deadline = Instant::now() + timeouts.handshake;
    let reason = match session.handshake(Role::Server, deadline).await {
        Err(why) => {
            tracing::warn!(%peer, reason = %why, "DTLS handshake failed");
            format!("handshake failed: {why}")
        }
        Ok(()) => match proven(session.tls.ssl()) {
            None => {
                tracing::warn!(%peer, "DTLS handshake proved no device identity; closing");
                "no identity".into()
            }
            Some(identity) => {
                established.store(true, Ordering::Release);
                tracing::info!(%peer, credential = identity.credential, names = ?identity.names, cipher = session.tls.ssl().current_cipher().map_or("?", |c| c.name()), "DTLS session established");
                let (app, driver_end) = tokio::io::duplex(16 * 1024);
                let driver = tokio::spawn(stream::run(
                    driver_end,
                    link,
                    peer.to_string(),
                    Some(identity),
                    core,
                    device_core::link::Config::default(),
                ));
                let reason = session.relay(app, timeouts.idle).await;
                // The driver sees the pipe close and reports the link down.
                let _ = driver.await;
                reason
            }
        },
    };
    let _ = gone.send((peer, link, reason));
}

/// What the handshake proved: the PSK identity, or the client certificate's names.
fn proven(ssl: &openssl::ssl::SslRef) -> Option<Identity> {
    if let Some(id) = ssl.ex_data(indexes().psk_identity) {
        return Some(Identity {
            credential: PSK_CREDENTIAL,
            names: vec![id.clone()],
        });
    }
    session::peer_names(ssl).map(|names| Identity {
        credential: CERT_CREDENTIAL,
        names,
    })
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
            max_half_open: 1,
            max_half_open_per_address: 1,
            handshakes_per_second: 1,
        }
    }

    /// OpenSSL 3.2+ rates CCM_8 below the default security level and drops it silently: a
    /// list naming it runs at level 0 (the list decides); any other list keeps the default.
    #[test]
    fn ccm8_suites_are_not_dropped_by_the_security_level() {
        let ccm8 = context(&psk_settings(broker_config::DEFAULT_DTLS_CIPHERS)).unwrap();
        assert_eq!(ccm8.security_level(), 0);
        let gcm = context(&psk_settings("PSK-AES128-GCM-SHA256")).unwrap();
        assert!(gcm.security_level() >= 1, "{}", gcm.security_level());
        let bad = context(&psk_settings("NO-SUCH-CIPHER")).unwrap_err();
        assert!(bad.to_string().contains("ciphers"), "{bad}");
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
        let mut link = dtls_link("psk = { \"dev-1\" = \"00112233\" }\n");
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
        std::fs::write(&file, "dev-1:00\ndev-2\n").unwrap();
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

    /// A self-signed certificate for `key`.
    fn self_signed(key: &openssl::pkey::PKey<openssl::pkey::Private>) -> openssl::x509::X509 {
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "bridge").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(key).unwrap();
        let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
        let later = openssl::asn1::Asn1Time::days_from_now(1).unwrap();
        b.set_not_before(&now).unwrap();
        b.set_not_after(&later).unwrap();
        b.sign(key, openssl::hash::MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn unusable_certificate_files_and_keys_of_another_certificate_are_named() {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        let dir = tempfile::tempdir().unwrap();
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key_a = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let key_b = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let cert = dir.path().join("bridge.pem");
        std::fs::write(&cert, self_signed(&key_a).to_pem().unwrap()).unwrap();
        let key = dir.path().join("bridge.key");
        std::fs::write(&key, key_a.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, key_b.private_key_to_pem_pkcs8().unwrap()).unwrap();
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
        let e = error([&missing, &key, &cert]);
        assert!(
            matches!(
                e,
                ContextError::File {
                    setting: "cert_file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("cert_file {}: ", missing.display())),
            "{e}"
        );
        let e = error([&cert, &missing, &cert]);
        assert!(
            matches!(
                e,
                ContextError::File {
                    setting: "key_file",
                    ..
                }
            ),
            "{e}"
        );
        // OpenSSL checks the key against the certificate as it loads it.
        let e = error([&cert, &other_key, &cert]);
        assert!(
            matches!(
                e,
                ContextError::File {
                    setting: "key_file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("other.key"), "{e}");
        let mismatch = ContextError::KeyMismatch {
            key: "key_file",
            certificate: "cert_file",
            path: other_key.clone(),
            source: openssl::error::ErrorStack::get(),
        };
        assert!(
            mismatch.to_string().starts_with(&format!(
                "key_file (does not match cert_file) {}: ",
                other_key.display()
            )),
            "{mismatch}"
        );
        let e = error([&cert, &key, &missing]);
        assert!(
            matches!(
                e,
                ContextError::File {
                    setting: "client_ca_file",
                    ..
                }
            ),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn the_bucket_allows_its_rate_and_refills() {
        let mut b = Bucket::new(3);
        let t = b.at;
        assert!(b.take(t) && b.take(t) && b.take(t));
        assert!(!b.take(t));
        assert!(b.take(t + Duration::from_millis(400)), "1.2 tokens back");
        assert!(!b.take(t + Duration::from_millis(400)));
    }
}
