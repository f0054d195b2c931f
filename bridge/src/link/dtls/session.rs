//! One DTLS session over datagrams, for either side: [`Session`] moves datagrams between a
//! UDP socket and the sans-IO connection ([`edge_dtls::Connection`]), drives the handshake
//! and the retransmission timer, and relays records to and from a byte pipe that carries
//! device frames.
//!
//! One record per datagram and one device frame per record: a frame read from the pipe (its
//! bytes up to and including the `0x00` that ends it) becomes one record, sent as one
//! datagram; each record received goes to the pipe whole.
//!
//! The relay never waits on a write: datagrams go out with a non-blocking send (a full socket
//! buffer loses one, as the network could), and records for the pipe wait in a bounded buffer
//! written from within the same `select!` as everything else (a record that does not fit is
//! dropped, as a lost datagram would be). So a reader of the pipe that falls behind (the link
//! driver committing reports a device floods) never stops the relay from receiving, from
//! running the retransmission timer or from ending an idle session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_dtls::{Connection, PeerIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Largest datagram accepted (and the read buffer's size).
pub const MAX_DATAGRAM: usize = 16 * 1024 + 512;

/// Each direction of the pipe between a session and its link driver: a few frames (at most
/// 403 bytes each). Its buffer keeps its largest size for the session's life (tokio's pipe
/// never shrinks it), and `TO_APP_BYTES` already holds what the driver is slow to take.
pub const PIPE_BYTES: usize = 2 * 1024;

/// Bytes of received records waiting for the pipe's reader: twice a device session's window
/// of the largest frames (16 × 403 B); beyond it records are dropped (see the module docs).
pub const TO_APP_BYTES: usize = 16 * 1024;

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
    pub conn: Connection,
    pub wire: Wire,
}

/// Why a DTLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The handshake failed: an alert from the peer, no shared cipher, a certificate that
    /// does not verify, a malformed message.
    #[error("DTLS error: {0}")]
    Tls(#[source] edge_dtls::Error),
    /// The feed of datagrams ended: the listener closed the session, or the client's socket
    /// failed; the reason says which.
    #[error("{0}")]
    Ended(String),
    /// The handshake did not finish before its deadline (a wrong PSK makes a client go
    /// silent, not fail: the stall says so when it is seen).
    #[error("handshake deadline passed{}", .stall.map(|s| format!(": {s}")).unwrap_or_default())]
    Deadline { stall: Option<&'static str> },
}

/// The connection's clock: tokio's (paused in tests), as std's.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Session {
    /// Sends what the connection has for the peer. UDP: a failed send is a lost datagram,
    /// which DTLS (handshake) and the device session (frames) retransmit.
    pub async fn flush(&mut self) {
        while let Some(d) = self.conn.poll_datagram() {
            if let Err(e) = self.wire.socket.send_to(&d, self.wire.peer).await {
                tracing::debug!(peer = %self.wire.peer, error = %e, "DTLS send failed");
            }
        }
    }

    /// As [`flush`](Self::flush), without waiting: a datagram the socket has no room for now
    /// is lost (see the module docs).
    fn send_now(&mut self) {
        while let Some(d) = self.conn.poll_datagram() {
            if let Err(e) = self.wire.socket.try_send_to(&d, self.wire.peer) {
                tracing::debug!(peer = %self.wire.peer, error = %e, "DTLS send failed (datagram lost)");
            }
        }
    }

    fn timer(&self) -> Option<Instant> {
        self.conn.poll_timeout().map(Instant::from_std)
    }

    /// Runs the handshake to its end, retransmitting on the connection's timer, until
    /// `deadline`.
    pub async fn handshake(&mut self, deadline: Instant) -> Result<(), HandshakeError> {
        loop {
            self.flush().await;
            if self.conn.is_established() {
                return Ok(());
            }
            if self.conn.is_ended() {
                let e = self
                    .conn
                    .error()
                    .cloned()
                    .unwrap_or(edge_dtls::Error::Closed);
                return Err(HandshakeError::Tls(e));
            }
            let timer = self.timer();
            tokio::select! {
                d = self.wire.inbound.recv() => match d {
                    Some(d) => {
                        self.conn.handle_datagram(&d, now());
                    }
                    None => return Err(HandshakeError::Ended(self.wire.why_ended())),
                },
                () = sleep_until(timer) => self.conn.handle_timeout(now()),
                () = tokio::time::sleep_until(deadline) => {
                    return Err(HandshakeError::Deadline { stall: self.conn.stall_reason() });
                }
            }
        }
    }

    /// Ends the session with a close_notify to the peer.
    fn close(&mut self) {
        self.conn.close();
        self.send_now();
    }

    /// Relays device frames between the established session and `app` until either side
    /// ends or nothing arrives for `idle`; returns why it ended. Closing `app` sends the peer
    /// a close_notify, and so does the end of the datagram feed (the listener closing the
    /// session).
    pub async fn relay(mut self, app: DuplexStream, idle: Duration) -> String {
        let (mut app_rd, mut app_wr) = tokio::io::split(app);
        // In the task's own state, not on the heap: a device frame is at most 403 bytes, so
        // one read takes a frame or more, and an idle session holds no read buffer of 4 KiB.
        let mut from_app = [0u8; 512];
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
                        // An idle session keeps no buffer from its last burst.
                        if to_app.is_empty() {
                            to_app = Vec::new();
                        }
                    }
                    _ => break "link closed".to_owned(),
                },
                d = self.wire.inbound.recv() => {
                    let Some(d) = d else {
                        let why = self.wire.why_ended();
                        self.close();
                        break why;
                    };
                    // Only records that authenticate prove the peer is there: anyone can send
                    // the rest from its address.
                    if self.conn.handle_datagram(&d, now()) {
                        last_heard = Instant::now();
                    }
                    while let Some(record) = self.conn.poll_app() {
                        if to_app.len() + record.len() <= TO_APP_BYTES {
                            to_app.extend_from_slice(&record);
                        } else {
                            dropped += 1;
                        }
                    }
                    // Alerts, retransmitted handshake flights.
                    self.send_now();
                    if self.conn.is_ended() {
                        break self.conn.error().map_or_else(|| "session ended".to_owned(), ToString::to_string);
                    }
                }
                read = app_rd.read(&mut from_app) => {
                    let n = match read {
                        Ok(0) | Err(_) => {
                            self.close();
                            break "closed by the bridge".to_owned();
                        }
                        Ok(n) => n,
                    };
                    let mut rest = &from_app[..n];
                    let mut failed = None;
                    while let Some(end) = rest.iter().position(|&b| b == 0) {
                        partial.extend_from_slice(&rest[..=end]);
                        rest = &rest[end + 1..];
                        if let Err(e) = self.conn.send(&partial) {
                            failed = Some(format!("DTLS error: {e}"));
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
                    self.conn.handle_timeout(now());
                    self.send_now();
                }
                () = tokio::time::sleep_until(last_heard + idle) => {
                    self.close();
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

/// Sleeps until `at`, or forever without a timer.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a DTLS configuration (either side's) cannot be built; names the setting or the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The cipher list names a suite this implementation does not have.
    #[error("ciphers: {0} (known: {known})", known = known_suites())]
    Ciphers(#[source] edge_dtls::crypto::UnknownSuite),
    /// A certificate, key or CA file cannot be read, holds nothing usable, or the key is not
    /// the certificate's; `setting` names it as the configuration (or the command line) does.
    #[error("{setting}: {source}")]
    File {
        setting: &'static str,
        /// Boxed: the error of a file is rare and large, the `Result`s carrying it are not.
        #[source]
        source: Box<edge_dtls::LoadError>,
    },
    /// The name the bridge's certificate must carry is not a DNS name or an address.
    #[error("server name {0:?}: not a DNS name or an IP address")]
    ServerName(String),
    /// The system's random generator could not draw the cookie secret.
    #[error("cookie secret: the system's random generator failed")]
    CookieSecret,
}

/// The suites a cipher list may name.
pub fn known_suites() -> String {
    let names: Vec<&str> = edge_dtls::Suite::ALL.iter().map(|s| s.name()).collect();
    names.join(":")
}

/// The suites of a cipher list (OpenSSL or IANA names, `:`-separated).
pub fn suites(ciphers: &str) -> Result<Vec<edge_dtls::Suite>, ContextError> {
    edge_dtls::Suite::parse_list(ciphers).map_err(ContextError::Ciphers)
}

/// Loads a certificate chain and its key; errors name `cert_setting` or `key_setting`.
pub fn certified(
    cert: &std::path::Path,
    key: &std::path::Path,
    cert_setting: &'static str,
    key_setting: &'static str,
) -> Result<edge_dtls::Certified, ContextError> {
    edge_dtls::Certified::from_pem_files(cert, key).map_err(|source| {
        let setting = match &source {
            edge_dtls::LoadError::Pem { path, .. }
            | edge_dtls::LoadError::NoCertificate { path }
            | edge_dtls::LoadError::Certificate { path, .. }
                if path == cert =>
            {
                cert_setting
            }
            _ => key_setting,
        };
        ContextError::File {
            setting,
            source: Box::new(source),
        }
    })
}

/// Loads the CA certificates of a file; errors name `setting`.
pub fn roots(
    path: &std::path::Path,
    setting: &'static str,
) -> Result<edge_dtls::Roots, ContextError> {
    edge_dtls::Roots::from_pem_file(path).map_err(|source| ContextError::File {
        setting,
        source: Box::new(source),
    })
}

/// The device ids a verified client certificate names (see [`crate::link::tls::identity`]).
pub fn peer_names(peer: &PeerIdentity) -> Option<Vec<String>> {
    match peer {
        PeerIdentity::Certificate(der) => {
            let der = rustls_pki_types::CertificateDer::from(der.as_slice());
            crate::link::tls::identity(&der).ok().map(|i| i.names)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_handshake_says_why_for_the_log() {
        assert_eq!(
            HandshakeError::Deadline { stall: None }.to_string(),
            "handshake deadline passed"
        );
        assert_eq!(
            HandshakeError::Deadline {
                stall: Some("the peer's Finished failed authentication")
            }
            .to_string(),
            "handshake deadline passed: the peer's Finished failed authentication"
        );
        assert_eq!(
            HandshakeError::Tls(edge_dtls::Error::NoSharedSuite).to_string(),
            "DTLS error: no cipher suite in common"
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
        let key = vec![9u8; 16];
        let server_key = key.clone();
        let server = Arc::new(edge_dtls::ServerConfig {
            suites: vec![edge_dtls::Suite::PskAes128Ccm8],
            psk: Some(Arc::new(move |_: &[u8]| Some(server_key.clone()))),
            certificate: None,
            client_roots: None,
            mtu: 1200,
            clock: rustls_pki_types::UnixTime::now,
        });
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
        let server_addr = server_socket.local_addr().unwrap();
        // The listener's part: the cookie exchange, then a session for the hello that
        // returned the cookie, fed the socket's datagrams.
        let accept = async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let first = loop {
                let (n, from) = server_socket.recv_from(&mut buf).await.unwrap();
                let hello = edge_dtls::cookie::client_hello(&buf[..n]).unwrap();
                if hello.cookie == b"test cookie" {
                    break buf[..n].to_vec();
                }
                let hvr = edge_dtls::cookie::hello_verify_request(&hello, b"test cookie");
                server_socket.send_to(&hvr, from).await.unwrap();
            };
            let reader = server_socket.clone();
            let feeder = tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while let Ok((n, _)) = reader.recv_from(&mut buf).await {
                    let _ = feed.try_send(buf[..n].to_vec());
                }
            });
            let conn = Connection::accept(server, &first, now());
            let mut session = Session { conn, wire };
            session
                .handshake(Instant::now() + Duration::from_secs(10))
                .await
                .unwrap();
            (session, feeder)
        };
        let (connected, (session, feeder)) = tokio::join!(
            client::connect_on(&client_context, &settings, server_addr, client_socket),
            accept
        );
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
    async fn datagrams_that_do_not_authenticate_do_not_keep_a_session_alive() {
        // The client stays (its end of the pipe open) and silent.
        let Pair {
            server,
            client: _client,
            feeder: _feeder,
            ..
        } = pair().await;
        let target = server.wire.socket.local_addr().unwrap();
        let (app, _pipe) = tokio::io::duplex(1024);
        let relay = tokio::spawn(server.relay(app, Duration::from_millis(500)));
        // Garbage and forged records every 50 ms for up to 5 s (the test's feeder takes
        // datagrams from any address, as if spoofed from the device's).
        let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        let forged: [&[u8]; 2] = [
            &[
                23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 17, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                12, 13, 14, 15, 16, 17,
            ],
            &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0xff],
        ];
        let mut n = 0;
        while !relay.is_finished() && started.elapsed() < Duration::from_secs(5) {
            spoofer.send_to(forged[n % 2], target).await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            relay.is_finished(),
            "the spoofed datagrams kept the session alive"
        );
        assert_eq!(relay.await.unwrap(), "nothing received for 500ms");
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
}
