//! One DTLS session over datagrams, for either side: OpenSSL reads and writes through an
//! in-memory datagram queue ([`Datagrams`]), and [`Session`] moves datagrams between that
//! queue and a UDP socket, drives the handshake and OpenSSL's retransmission timer, and
//! relays records to and from a byte pipe that carries device frames.
//!
//! One record per datagram and one device frame per record: a frame read from the pipe (its
//! bytes up to and including the `0x00` that ends it) becomes one `SSL_write`, which OpenSSL
//! hands to the queue as one datagram; each datagram received is one `SSL_read`.
//!
//! The relay never waits on a write: datagrams go out with a non-blocking send (a full socket
//! buffer loses one, as the network could), and records for the pipe wait in a bounded buffer
//! written from within the same `select!` as everything else (a record that does not fit is
//! dropped, as a lost datagram would be). So a reader of the pipe that falls behind (the link
//! driver committing reports a device floods) never stops the relay from receiving, from
//! running OpenSSL's timer or from ending an idle session.

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
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ffi;

/// Largest datagram accepted (and the read buffer's size).
pub const MAX_DATAGRAM: usize = 16 * 1024 + 512;

/// Bytes of received records waiting for the pipe's reader: twice a device session's window
/// of the largest frames (16 × 403 B); beyond it records are dropped (see the module docs).
pub const TO_APP_BYTES: usize = 16 * 1024;

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
    /// Why `inbound` ended, told by whoever feeds it before letting go: the listener replacing
    /// or closing the session, the client's receive task giving up on its socket.
    pub farewell: oneshot::Receiver<String>,
}

impl Wire {
    /// A wire to `peer` fed by the returned sender (datagrams) and farewell.
    pub fn new(
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
        queue: usize,
    ) -> (Self, mpsc::Sender<Vec<u8>>, oneshot::Sender<String>) {
        let (datagrams, inbound) = mpsc::channel(queue);
        let (farewell_tx, farewell) = oneshot::channel();
        let wire = Self {
            socket,
            peer,
            inbound,
            farewell,
        };
        (wire, datagrams, farewell_tx)
    }

    /// Why `inbound` ended (once it has returned `None`).
    fn why_ended(&mut self) -> String {
        self.farewell
            .try_recv()
            .unwrap_or_else(|_| "the session's datagram feed ended without a reason".into())
    }
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
    /// The feed of datagrams ended: the listener closed the session, or the client's socket
    /// failed; the reason says which.
    #[error("{0}")]
    Ended(String),
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

    /// As [`flush`](Self::flush), without waiting: a datagram the socket has no room for now
    /// is lost (see the module docs).
    fn send_now(&mut self) {
        for d in self.tls.get_mut().take_outbound() {
            if let Err(e) = self.wire.socket.try_send_to(&d, self.wire.peer) {
                tracing::debug!(peer = %self.wire.peer, error = %e, "DTLS send failed (datagram lost)");
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
                    None => return Err(HandshakeError::Ended(self.wire.why_ended())),
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
    /// a close_notify, and so does the end of the datagram feed (the listener closing the
    /// session).
    pub async fn relay(mut self, app: DuplexStream, idle: Duration) -> String {
        let (mut app_rd, mut app_wr) = tokio::io::split(app);
        // Device frames are at most a few hundred bytes; a larger record is read in pieces.
        let mut plain = vec![0u8; 2048];
        let mut from_app = vec![0u8; 4096];
        // Bytes of a frame from `app` whose terminating 0x00 has not come yet.
        let mut partial: Vec<u8> = Vec::new();
        // Received records not yet written to `app` (see the module docs), and how many were
        // dropped for want of room.
        let mut to_app: Vec<u8> = Vec::new();
        let mut dropped = 0u64;
        let mut last_heard = Instant::now();
        let why = loop {
            let timer = self.timer();
            tokio::select! {
                written = app_wr.write(&to_app), if !to_app.is_empty() => match written {
                    Ok(n) if n > 0 => {
                        to_app.drain(..n);
                    }
                    _ => break "link closed".to_owned(),
                },
                d = self.wire.inbound.recv() => {
                    let Some(d) = d else {
                        let why = self.wire.why_ended();
                        let _ = self.tls.shutdown();
                        self.send_now();
                        break why;
                    };
                    last_heard = Instant::now();
                    self.tls.get_mut().push(d);
                    let ended = loop {
                        match self.tls.ssl_read(&mut plain) {
                            Ok(n) if to_app.len() + n <= TO_APP_BYTES => {
                                to_app.extend_from_slice(&plain[..n]);
                            }
                            Ok(_) => dropped += 1,
                            Err(e) if e.code() == ErrorCode::WANT_READ => break None,
                            Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                                break Some("peer closed the session (close_notify)".to_owned());
                            }
                            Err(e) => break Some(describe(&e)),
                        }
                    };
                    // Alerts, retransmitted handshake flights.
                    self.send_now();
                    if let Some(why) = ended {
                        break why;
                    }
                }
                read = app_rd.read(&mut from_app) => {
                    let n = match read {
                        Ok(0) | Err(_) => {
                            let _ = self.tls.shutdown();
                            self.send_now();
                            break "closed by the bridge".to_owned();
                        }
                        Ok(n) => n,
                    };
                    let mut rest = &from_app[..n];
                    let mut failed = None;
                    while let Some(end) = rest.iter().position(|&b| b == 0) {
                        partial.extend_from_slice(&rest[..=end]);
                        rest = &rest[end + 1..];
                        if let Err(e) = self.tls.ssl_write(&partial) {
                            failed = Some(describe(&e));
                            break;
                        }
                        partial.clear();
                    }
                    if let Some(why) = failed {
                        break why;
                    }
                    partial.extend_from_slice(rest);
                    if partial.len() > MAX_DATAGRAM {
                        break "a frame larger than a datagram".to_owned();
                    }
                    self.send_now();
                }
                () = sleep_until(timer) => {
                    // A failed retransmission leaves the timer expired: end rather than spin.
                    if !ffi::handle_timeout(self.tls.ssl()) {
                        break "DTLS retransmission failed".to_owned();
                    }
                    self.send_now();
                }
                () = tokio::time::sleep_until(last_heard + idle) => {
                    let _ = self.tls.shutdown();
                    self.send_now();
                    break format!("nothing received for {idle:?}");
                }
            }
        };
        if dropped > 0 {
            tracing::debug!(peer = %self.wire.peer, dropped, "DTLS records dropped: the link driver fell behind");
        }
        why
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

/// The epoch of the first record of `datagram`; `None` if it is too short to hold a record
/// header.
pub fn epoch(datagram: &[u8]) -> Option<u16> {
    // Record: type (1), version (2), epoch (2), sequence (6), length (2).
    if datagram.len() < 13 {
        return None;
    }
    Some(u16::from_be_bytes([datagram[3], datagram[4]]))
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
            HandshakeError::Ended("closed by the listener".into()).to_string(),
            "closed by the listener"
        );
    }

    /// A server session (PSK `dev-x`, no cookies) and a client connected to it over two
    /// loopback UDP sockets.
    struct Pair {
        server: Session,
        /// The client's pipe and relay.
        client: super::super::client::Connected,
        /// The server's wire, as the socket task holds it: the farewell, and the task that
        /// feeds it datagrams (aborting it ends the feed).
        farewell: oneshot::Sender<String>,
        feeder: tokio::task::JoinHandle<()>,
    }

    async fn pair() -> Pair {
        use super::super::client::{self, ClientSettings, Credential};
        use openssl::ssl::{Ssl, SslMethod};
        let key = vec![9u8; 16];
        let mut server = builder(SslMethod::dtls_server(), "PSK-AES128-CCM8").unwrap();
        let server_key = key.clone();
        server.set_psk_server_callback(move |_, _, out| {
            out[..16].copy_from_slice(&server_key);
            Ok(16)
        });
        let server = server.build();
        let settings = ClientSettings {
            credential: Credential::Psk {
                identity: "dev-x".into(),
                key,
            },
            ciphers: "PSK-AES128-CCM8".into(),
            mtu: 1200,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let client_context = client::context(&settings).unwrap();
        let server_socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let client_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (wire, feed, farewell) = Wire::new(
            server_socket.clone(),
            client_socket.local_addr().unwrap(),
            64,
        );
        let reader = server_socket.clone();
        let feeder = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, _)) = reader.recv_from(&mut buf).await {
                let _ = feed.try_send(buf[..n].to_vec());
            }
        });
        let mut ssl = Ssl::new(&server).unwrap();
        // No MTU discovery (the datagram queue reports none): the MTU is set.
        ssl.set_mtu(1200).unwrap();
        let tls = SslStream::new(ssl, Datagrams::default()).unwrap();
        let mut session = Session { tls, wire };
        let deadline = Instant::now() + Duration::from_secs(10);
        let server_addr = server_socket.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(
            client::connect_on(&client_context, &settings, server_addr, client_socket),
            session.handshake(Role::Server, deadline)
        );
        accepted.unwrap();
        Pair {
            server: session,
            client: connected.unwrap(),
            farewell,
            feeder,
        }
    }

    #[tokio::test]
    async fn a_pipe_reader_that_falls_behind_cannot_hold_off_the_idle_timeout() {
        let Pair {
            server, mut client, ..
        } = pair().await;
        // The link driver's end of the pipe holds 64 bytes and is never read.
        let (app, _never_read) = tokio::io::duplex(64);
        let relay = tokio::spawn(server.relay(app, Duration::from_millis(500)));
        // 200 frames of 50 bytes from the device, then silence.
        let mut frame = vec![1u8; 49];
        frame.push(0);
        for _ in 0..200 {
            client.pipe.write_all(&frame).await.unwrap();
        }
        let why = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay ended by its idle timeout")
            .unwrap();
        assert_eq!(why, "nothing received for 500ms");
    }

    #[tokio::test]
    async fn a_session_whose_feed_ends_says_why_and_tells_its_peer() {
        let Pair {
            server,
            client,
            farewell,
            feeder,
        } = pair().await;
        let (app, _pipe) = tokio::io::duplex(1024);
        let relay = tokio::spawn(server.relay(app, Duration::from_secs(60)));
        // What the listener does when it closes a session.
        farewell.send("closed by the test".into()).unwrap();
        feeder.abort();
        let why = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the relay ended with its feed")
            .unwrap();
        assert_eq!(why, "closed by the test");
        // The client heard a close_notify.
        let client_why = tokio::time::timeout(Duration::from_secs(10), client.task)
            .await
            .expect("the client's session ended")
            .unwrap();
        assert_eq!(client_why, "peer closed the session (close_notify)");
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
