//! A rogue device: a test's own end of a device link, built on device-core's wire format
//! ([`device_core::proto::encode_message`]) and link session ([`device_core::link::Session`]),
//! that says whatever the test wants: a proper `Hello` and session, or frames no firmware
//! would send (heartbeats without a `Hello`, floods of reports, garbage), and that can stop
//! reading. It speaks over plain TCP (from any loopback address, 127.0.0.2 and up included) or
//! over DTLS (the bridge's own client, from any loopback address), and tells when and how the
//! bridge closed the link.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant as StdInstant};

use device_core::Instant;
use device_core::link::{Config, DeviceSide, Session, State};
use device_core::proto::{self, Deframer, Frame, Hello, MAX_FRAME, Message, Report, TaskReport};
use edge_bridge::link::dtls::client::{self, ClientSettings, Credential};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// The device-core session a rogue opens with [`Rogue::open`]: a window of 16, as the
/// simulator's.
pub type DeviceSession = Session<DeviceSide, 16, 0>;

/// A `Hello` of the current protocol version for `device_id` with `slots` task slots and an
/// `echo` capability; boot and session ids 1.
pub fn hello(device_id: &str, slots: u8) -> Hello {
    let mut capabilities = heapless::Vec::new();
    let _ = capabilities.push(heapless::String::try_from("echo").expect("a capability name"));
    Hello {
        version: proto::PROTOCOL_VERSION,
        device_id: heapless::String::try_from(device_id).expect("device ids have 1 to 32 bytes"),
        boot_id: 1,
        session_id: 1,
        capabilities,
        locks: heapless::Vec::new(),
        slots,
        max_payload: 256,
        resumable: 0,
        restartable: 0,
    }
}

/// The bytes of one frame (`seq` 0: unsequenced), as a device would send them.
pub fn frame(seq: u32, ack: u32, credit: u8, message: &Message) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME];
    let n = proto::encode_message(seq, ack, credit, message, &mut out)
        .expect("a message within the protocol's limits");
    out[..n].to_vec()
}

/// A `Report` of a task `handle` the bridge never assigned.
pub fn stray_report(handle: u32) -> Message {
    Message::Report(Report {
        handle,
        state: TaskReport::Completed,
        result: heapless::Vec::new(),
        error: None,
    })
}

/// How a link ended, as the rogue saw it.
#[derive(Debug)]
pub struct Closed {
    /// Since the rogue started waiting.
    pub after: Duration,
    /// Bytes the bridge sent meanwhile.
    pub bytes: usize,
}

/// One rogue connection over `S`.
#[derive(Debug)]
pub struct Rogue<S> {
    stream: S,
    /// Splits what the bridge sends into frames.
    deframer: Deframer<MAX_FRAME>,
    /// The session's clock starts with the rogue.
    started: StdInstant,
    /// Set by [`Rogue::open`].
    session: Option<Box<DeviceSession>>,
}

impl Rogue<TcpStream> {
    /// Connects to a bridge's plain TCP (or TLS: the rogue then speaks garbage to it) link
    /// from `from` (any loopback address; port chosen by the OS).
    pub async fn tcp_from(from: IpAddr, bridge: SocketAddr) -> std::io::Result<Self> {
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(from, 0))?;
        Ok(Self::new(socket.connect(bridge).await?))
    }

    /// As [`Rogue::tcp_from`], from 127.0.0.1.
    pub async fn tcp(bridge: SocketAddr) -> std::io::Result<Self> {
        Self::tcp_from(IpAddr::from([127, 0, 0, 1]), bridge).await
    }

    /// The rogue's own address.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("a connected socket")
    }
}

/// A rogue DTLS connection: the rogue, and the task relaying its records (its output is
/// why the session ended, as the client saw it).
pub type DtlsRogue = (Rogue<DuplexStream>, JoinHandle<String>);

impl Rogue<DuplexStream> {
    /// Completes a DTLS handshake with PSK `identity`/`key` (PSK-AES128-CCM8) to a bridge's
    /// DTLS link, from a fresh UDP port on `from`; `socket` lets the test prepare it (socket
    /// options) before the handshake.
    pub async fn dtls_on(
        socket: UdpSocket,
        bridge: SocketAddr,
        identity: &str,
        key: &[u8],
    ) -> Result<DtlsRogue, String> {
        let settings = ClientSettings {
            credential: Credential::Psk {
                identity: identity.to_owned(),
                key: key.to_vec(),
            },
            ciphers: "PSK-AES128-CCM8".into(),
            mtu: 1200,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let context = client::context(&settings).map_err(|e| e.to_string())?;
        let connected = client::connect_on(&context, &settings, bridge, socket)
            .await
            .map_err(|e| e.to_string())?;
        Ok((Self::new(connected.pipe), connected.task))
    }

    /// As [`Rogue::dtls_on`], from a new UDP socket on `from`.
    pub async fn dtls(
        from: IpAddr,
        bridge: SocketAddr,
        identity: &str,
        key: &[u8],
    ) -> Result<DtlsRogue, String> {
        let socket = UdpSocket::bind(SocketAddr::new(from, 0))
            .await
            .map_err(|e| format!("UDP bind on {from}: {e}"))?;
        Self::dtls_on(socket, bridge, identity, key).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Rogue<S> {
    /// A rogue over a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            deframer: Deframer::new(),
            started: StdInstant::now(),
            session: None,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.started.elapsed().as_millis() as u64)
    }

    /// Writes `bytes` as they are: frames, pieces of frames, garbage.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends one frame carrying `message` (see [`frame`]).
    pub async fn send(
        &mut self,
        seq: u32,
        ack: u32,
        credit: u8,
        message: &Message,
    ) -> std::io::Result<()> {
        self.send_raw(&frame(seq, ack, credit, message)).await
    }

    /// Sends a heartbeat outside any session (no `Hello` before it, or none the bridge took).
    pub async fn heartbeat(&mut self) -> std::io::Result<()> {
        self.send(0, 0, 0, &Message::Heartbeat).await
    }

    /// Opens a device-core session with `hello`, as a device does (retransmitting its
    /// `Hello` with backoff), and returns once the bridge welcomed it; `Err` with what
    /// happened when it did not within `within`.
    pub async fn open(&mut self, hello: Hello, within: Duration) -> Result<(), String> {
        let mut session = Box::new(DeviceSession::device(hello, Config::default(), self.now()));
        let deadline = tokio::time::Instant::now() + within;
        let mut input = [0u8; 1024];
        let mut out = [0u8; MAX_FRAME];
        loop {
            while let Some(n) = session.poll_transmit(self.now(), &mut out) {
                self.send_raw(&out[..n])
                    .await
                    .map_err(|e| format!("writing the Hello: {e}"))?;
            }
            if session.state() == State::Established {
                self.session = Some(session);
                return Ok(());
            }
            let wake = session.poll_timeout().map_or(u64::MAX, |t| t.as_millis());
            let sleep = Duration::from_millis(wake.saturating_sub(self.now().as_millis()));
            let read = tokio::select! {
                read = self.stream.read(&mut input) => read,
                () = tokio::time::sleep(sleep.min(Duration::from_secs(1))) => {
                    session.handle_timeout(self.now());
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!("not welcomed within {within:?}"));
                }
            };
            let n = match read {
                Ok(0) => return Err("the bridge closed the link before welcoming".into()),
                Ok(n) => n,
                Err(e) => return Err(format!("the link failed before a welcome: {e}")),
            };
            let now = self.now();
            let mut rest = &input[..n];
            while !rest.is_empty() {
                let (used, got) = self.deframer.push_raw(rest);
                rest = &rest[used..];
                // A Welcome establishes the session: the next turn sends the credit and
                // returns. Anything else the bridge says before is of no interest.
                if let Some(Ok(bytes)) = got {
                    let _ = session.handle_bytes(bytes, now);
                }
            }
        }
    }

    /// After [`Rogue::open`]: `n` reports of tasks the bridge never assigned, each a new
    /// reliable message in order (as a device with a runaway loop would send them), written
    /// as fast as the link takes them and never retransmitted.
    pub async fn flood_reports(&mut self, n: u32) -> std::io::Result<()> {
        let session = self
            .session
            .as_mut()
            .expect("open the session before flooding it");
        // The session numbers the first report; the rest follow it.
        session
            .send(stray_report(0xF000_0000))
            .map_err(|e| std::io::Error::other(format!("{:?}", e.reason)))?;
        let mut out = [0u8; MAX_FRAME];
        let mut first: Option<Frame> = None;
        let now = Instant::from_millis(self.started.elapsed().as_millis() as u64);
        let mut bytes = Vec::new();
        while let Some(len) = session.poll_transmit(now, &mut out) {
            let f = proto::decode(&out[..len]).expect("the session's own frame");
            if matches!(f.message, Message::Report(_)) {
                first = Some(f);
            }
            bytes.extend_from_slice(&out[..len]);
        }
        let first = first.expect("the first report went out");
        let mut seq = first.seq;
        for i in 1..n {
            // Sequence numbers skip 0 (unsequenced frames) when they wrap.
            seq = if seq == u32::MAX { 1 } else { seq + 1 };
            bytes.extend_from_slice(&frame(
                seq,
                first.ack,
                first.credit,
                &stray_report(0xF000_0000 + i),
            ));
            if bytes.len() >= 64 * 1024 {
                self.send_raw(&bytes).await?;
                bytes.clear();
            }
        }
        self.send_raw(&bytes).await
    }

    /// Reads (and discards) what the bridge sends until it closes the link; `Err` when it is
    /// still open after `within`.
    pub async fn closed_within(&mut self, within: Duration) -> Result<Closed, String> {
        let start = StdInstant::now();
        let mut bytes = 0;
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return Ok(Closed {
                        after: start.elapsed(),
                        bytes,
                    });
                }
                Ok(Ok(n)) => bytes += n,
                Err(_) => {
                    return Err(format!(
                        "still open after {within:?} ({bytes} bytes received)"
                    ));
                }
            }
        }
    }

    /// The stream, for what the methods above do not cover.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}
