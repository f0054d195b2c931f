//! One DTLS session over datagrams, for either side: OpenSSL reads and writes through an
//! in-memory datagram queue ([`Datagrams`]), and [`Session`] moves datagrams between that
//! queue and a UDP socket, drives the handshake and OpenSSL's retransmission timer, and
//! relays records to and from a byte pipe that carries device frames.
//!
//! One record per datagram and one device frame per record: a frame read from the pipe (its
//! bytes up to and including the `0x00` that ends it) becomes one `SSL_write`, which OpenSSL
//! hands to the queue as one datagram; each datagram received is one `SSL_read`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openssl::error::ErrorStack;
use openssl::ssl::{ErrorCode, SslRef, SslStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ffi;

/// Largest datagram accepted (and the read buffer's size).
pub const MAX_DATAGRAM: usize = 16 * 1024 + 512;

/// The datagrams between OpenSSL and the socket: one `read` returns one whole datagram (a
/// larger datagram than the buffer is cut, as a UDP socket would), one `write` is one datagram.
#[derive(Debug, Default)]
pub struct Datagrams {
    inbound: VecDeque<Vec<u8>>,
    outbound: Vec<Vec<u8>>,
}

impl Datagrams {
    /// A queue holding one received datagram.
    pub fn with(datagram: &[u8]) -> Self {
        let mut d = Self::default();
        d.inbound.push_back(datagram.to_vec());
        d
    }

    /// Queues a received datagram for OpenSSL.
    pub fn push(&mut self, datagram: Vec<u8>) {
        self.inbound.push_back(datagram);
    }

    /// The datagrams OpenSSL wrote since the last call.
    pub fn take_outbound(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbound)
    }
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbound.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a session's datagrams go and come from.
#[derive(Debug)]
pub struct Wire {
    pub socket: Arc<UdpSocket>,
    pub peer: SocketAddr,
    /// Datagrams from `peer`, demultiplexed by whoever reads the socket.
    pub inbound: mpsc::Receiver<Vec<u8>>,
}

/// A DTLS session and its wire.
#[derive(Debug)]
pub struct Session {
    pub tls: SslStream<Datagrams>,
    pub wire: Wire,
}

/// Why a DTLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// OpenSSL ended the handshake: an alert from the peer, no shared cipher, a certificate
    /// that does not verify, a malformed record.
    #[error("{}", describe(.0))]
    Tls(#[source] openssl::ssl::Error),
    /// A new handshake from the same address took this one's place.
    #[error("replaced by a new handshake from the same address")]
    Replaced,
    /// The peer stopped answering (a wrong PSK makes a client go silent): OpenSSL gave up
    /// retransmitting its flight.
    #[error("peer silent: retransmissions exhausted")]
    PeerSilent,
    /// The handshake did not finish before its deadline.
    #[error("handshake deadline passed")]
    Deadline,
}

/// Which side of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Session {
    /// Sends what OpenSSL wrote. UDP: a failed send is a lost datagram, which DTLS (handshake)
    /// and the device session (frames) retransmit.
    pub async fn flush(&mut self) {
        for d in self.tls.get_mut().take_outbound() {
            if let Err(e) = self.wire.socket.send_to(&d, self.wire.peer).await {
                tracing::debug!(peer = %self.wire.peer, error = %e, "DTLS send failed");
            }
        }
    }

    fn timer(&self) -> Option<Instant> {
        ffi::timeout(self.tls.ssl()).map(|d| Instant::now() + d)
    }

    /// Runs the handshake to its end, retransmitting on OpenSSL's timer, until `deadline`.
    pub async fn handshake(&mut self, role: Role, deadline: Instant) -> Result<(), HandshakeError> {
        loop {
            let step = match role {
                Role::Server => self.tls.accept(),
                Role::Client => self.tls.connect(),
            };
            self.flush().await;
            match step {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => return Err(HandshakeError::Tls(e)),
            }
            let timer = self.timer();
            tokio::select! {
                d = self.wire.inbound.recv() => match d {
                    Some(d) => self.tls.get_mut().push(d),
                    None => return Err(HandshakeError::Replaced),
                },
                () = sleep_until(timer) => {
                    if !ffi::handle_timeout(self.tls.ssl()) {
                        return Err(HandshakeError::PeerSilent);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(HandshakeError::Deadline);
                }
            }
        }
    }

    /// Relays device frames between the established session and `app` until either side
    /// ends or nothing arrives for `idle`; returns why it ended. Closing `app` sends the peer
    /// a close_notify.
    pub async fn relay(mut self, app: DuplexStream, idle: Duration) -> String {
        let (mut app_rd, mut app_wr) = tokio::io::split(app);
        // Device frames are at most a few hundred bytes; a larger record is read in pieces.
        let mut plain = vec![0u8; 2048];
        let mut from_app = vec![0u8; 4096];
        // Bytes of a frame from `app` whose terminating 0x00 has not come yet.
        let mut partial: Vec<u8> = Vec::new();
        let mut last_heard = Instant::now();
        loop {
            let timer = self.timer();
            tokio::select! {
                d = self.wire.inbound.recv() => {
                    let Some(d) = d else {
                        return "replaced by a new handshake from the same address".into();
                    };
                    last_heard = Instant::now();
                    self.tls.get_mut().push(d);
                    loop {
                        match self.tls.ssl_read(&mut plain) {
                            Ok(n) => {
                                if app_wr.write_all(&plain[..n]).await.is_err() {
                                    return "link closed".into();
                                }
                            }
                            Err(e) if e.code() == ErrorCode::WANT_READ => break,
                            Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                                self.flush().await;
                                return "peer closed the session (close_notify)".into();
                            }
                            Err(e) => {
                                self.flush().await;
                                return describe(&e);
                            }
                        }
                    }
                    // Alerts, retransmitted handshake flights.
                    self.flush().await;
                }
                read = app_rd.read(&mut from_app) => {
                    let n = match read {
                        Ok(0) | Err(_) => {
                            let _ = self.tls.shutdown();
                            self.flush().await;
                            return "closed by the bridge".into();
                        }
                        Ok(n) => n,
                    };
                    let mut rest = &from_app[..n];
                    while let Some(end) = rest.iter().position(|&b| b == 0) {
                        partial.extend_from_slice(&rest[..=end]);
                        rest = &rest[end + 1..];
                        if let Err(e) = self.tls.ssl_write(&partial) {
                            return describe(&e);
                        }
                        partial.clear();
                    }
                    partial.extend_from_slice(rest);
                    if partial.len() > MAX_DATAGRAM {
                        return "a frame larger than a datagram".into();
                    }
                    self.flush().await;
                }
                () = sleep_until(timer) => {
                    // A failed retransmission leaves the timer expired: end rather than spin.
                    if !ffi::handle_timeout(self.tls.ssl()) {
                        return "DTLS retransmission failed".into();
                    }
                    self.flush().await;
                }
                () = tokio::time::sleep_until(last_heard + idle) => {
                    let _ = self.tls.shutdown();
                    self.flush().await;
                    return format!("nothing received for {idle:?}");
                }
            }
        }
    }
}

/// The part of a DTLS context both sides share: DTLS 1.2 only, `ciphers` (CCM_8 allowed, see
/// [`allow_ccm8`]), no MTU probing (the datagram queue reports none; sessions set theirs) and
/// no session tickets. Errors name the setting.
pub fn builder(
    method: openssl::ssl::SslMethod,
    ciphers: &str,
) -> Result<openssl::ssl::SslContextBuilder, ContextError> {
    use openssl::ssl::{SslContext, SslOptions, SslVersion};
    let mut b = SslContext::builder(method).map_err(ContextError::OpenSsl)?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(ContextError::Version)?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(ContextError::Version)?;
    b.set_cipher_list(ciphers).map_err(ContextError::Ciphers)?;
    allow_ccm8(&mut b, ciphers);
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
    Ok(b)
}

/// Lets OpenSSL offer the cipher list's CCM_8 suites. RFC 7925 makes `*-AES128-CCM8` the
/// mandatory suites of constrained devices, but OpenSSL 3.2 and later rate their 64-bit tag as
/// 64 bits of security, below the default security level (1: 80 bits), and silently leave
/// them out ("no shared cipher"). With a CCM_8 suite listed, the context runs at level 0: the
/// explicit cipher list, not the level, then decides what is offered.
fn allow_ccm8(b: &mut openssl::ssl::SslContextBuilder, ciphers: &str) {
    if ciphers.to_ascii_uppercase().contains("CCM8") {
        b.set_security_level(0);
    }
}

/// Sleeps until `at`, or forever without a timer.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// An OpenSSL error as one line: the SSL error code and OpenSSL's reasons.
pub fn describe(e: &openssl::ssl::Error) -> String {
    match e.ssl_error() {
        Some(stack) => {
            let reasons: Vec<String> = stack
                .errors()
                .iter()
                .map(|e| e.reason().unwrap_or("unknown").to_owned())
                .collect();
            format!("DTLS error: {}", reasons.join("; "))
        }
        None => format!("DTLS error: {e}"),
    }
}

/// Why a DTLS context (either side's) cannot be built; names the setting or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// OpenSSL cannot make a context (out of memory, a broken library).
    #[error("OpenSSL: {0}")]
    OpenSsl(#[source] ErrorStack),
    /// OpenSSL cannot restrict the context to DTLS 1.2 (a library built without it).
    #[error("DTLS 1.2: {0}")]
    Version(#[source] ErrorStack),
    /// The cipher list names no cipher this OpenSSL knows.
    #[error("ciphers: {0}")]
    Ciphers(#[source] ErrorStack),
    /// A certificate, key or CA file cannot be read or holds nothing usable; `setting` names
    /// it as the configuration (or the command line) does.
    #[error("{setting} {}: {source}", path.display())]
    File {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: ErrorStack,
    },
    /// The private key is not the certificate's.
    #[error("{key} (does not match {certificate}) {}: {source}", path.display())]
    KeyMismatch {
        /// The key's setting.
        key: &'static str,
        /// The certificate, as the error names it.
        certificate: &'static str,
        /// The key file.
        path: PathBuf,
        #[source]
        source: ErrorStack,
    },
    /// OpenSSL's random generator could not draw the cookie secret.
    #[error("cookie secret: {0}")]
    CookieSecret(#[source] ErrorStack),
}

/// Whether `datagram` starts with a DTLS record carrying a ClientHello in epoch 0: a peer
/// starting over (a device that rebooted keeps its address and port).
pub fn is_client_hello(datagram: &[u8]) -> bool {
    // Record: type (22 = handshake), version (2), epoch (2), sequence (6), length (2); then
    // the handshake message type (1 = ClientHello).
    datagram.len() > 13 && datagram[0] == 22 && datagram[3..5] == [0, 0] && datagram[13] == 1
}

/// The role-independent part of a session: what [`SslRef`] proves about the peer.
pub fn peer_names(ssl: &SslRef) -> Option<Vec<String>> {
    let cert = ssl.peer_certificate()?;
    let der = cert.to_der().ok()?;
    let der = rustls_pki_types::CertificateDer::from(der);
    crate::link::tls::identity(&der).ok().map(|i| i.names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_read_is_one_datagram_and_one_write_is_one_datagram() {
        let mut d = Datagrams::with(b"first");
        d.push(b"second datagram".to_vec());
        let mut buf = [0u8; 8];
        assert_eq!(d.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"first");
        // A datagram longer than the buffer is cut, not split across reads.
        assert_eq!(d.read(&mut buf).unwrap(), 8);
        assert_eq!(&buf, b"second d");
        assert_eq!(
            d.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        d.write_all(b"a").unwrap();
        d.write_all(b"bc").unwrap();
        assert_eq!(d.take_outbound(), vec![b"a".to_vec(), b"bc".to_vec()]);
        assert!(d.take_outbound().is_empty());
    }

    #[test]
    fn a_failed_handshake_says_why_for_the_log() {
        assert_eq!(
            HandshakeError::Deadline.to_string(),
            "handshake deadline passed"
        );
        assert_eq!(
            HandshakeError::PeerSilent.to_string(),
            "peer silent: retransmissions exhausted"
        );
        assert_eq!(
            HandshakeError::Replaced.to_string(),
            "replaced by a new handshake from the same address"
        );
    }

    #[test]
    fn client_hellos_are_told_from_other_records() {
        let mut hello = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 50, 1];
        hello.extend_from_slice(&[0; 50]);
        assert!(is_client_hello(&hello));
        let mut later_epoch = hello.clone();
        later_epoch[4] = 1;
        assert!(!is_client_hello(&later_epoch));
        let mut application_data = hello.clone();
        application_data[0] = 23;
        assert!(!is_client_hello(&application_data));
        let mut server_hello = hello.clone();
        server_hello[13] = 2;
        assert!(!is_client_hello(&server_hello));
        assert!(!is_client_hello(&hello[..13]));
    }
}
