//! The device side of a DTLS link, for `edge-device-sim` and tests: connects to a bridge's
//! DTLS listener with a PSK or a client certificate and hands back a byte pipe carrying
//! device frames (one frame per record per datagram underneath).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edge_dtls::{ClientConfig, Connection};
use tokio::io::DuplexStream;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::session::{self, ContextError, HandshakeError, MAX_DATAGRAM, Session, Wire};

/// How a device proves its id.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A pre-shared key; the PSK identity is the device id.
    Psk { identity: String, key: Vec<u8> },
    /// A certificate naming the device, and the CA that signed the bridge's certificate.
    Certificate {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        /// The name the bridge's certificate must carry; not checked when `None`.
        server_name: Option<String>,
    },
}

/// A client's settings.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub credential: Credential,
    pub ciphers: String,
    pub mtu: u16,
    pub handshake_timeout: Duration,
    /// Nothing received for this long ends the session (the device session's keepalives
    /// keep a live link well inside it).
    pub idle_timeout: Duration,
}

/// Builds the client's configuration; errors name the file or the setting.
pub fn context(s: &ClientSettings) -> Result<Arc<ClientConfig>, ContextError> {
    let mut config = ClientConfig {
        suites: session::suites(&s.ciphers)?,
        psk: None,
        certificate: None,
        server_roots: None,
        server_name: None,
        mtu: s.mtu,
        clock: rustls_pki_types::UnixTime::now,
    };
    match &s.credential {
        Credential::Psk { identity, key } => {
            config.psk = Some((identity.as_bytes().to_vec(), key.clone()));
        }
        Credential::Certificate {
            cert,
            key,
            ca,
            server_name,
        } => {
            config.certificate = Some(session::certified(cert, key, "certificate", "key")?);
            config.server_roots = Some(session::roots(ca, "CA")?);
            // An address is checked against the certificate's IP addresses, a name against
            // its DNS names.
            config.server_name = server_name
                .as_ref()
                .map(|name| {
                    rustls_pki_types::ServerName::try_from(name.clone())
                        .map_err(|_| ContextError::ServerName(name.clone()))
                })
                .transpose()?;
        }
    }
    Ok(Arc::new(config))
}

/// Why a device could not connect to a bridge over DTLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No local UDP port could be bound.
    #[error("UDP bind: {0}")]
    Bind(#[source] std::io::Error),
    /// The system's random generator failed.
    #[error("DTLS: {0}")]
    Dtls(#[source] edge_dtls::Error),
    /// The handshake failed or did not finish in time.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}

/// An established DTLS session to a bridge: `pipe` carries device frames; `task` relays
/// until the session ends (its output is why).
#[derive(Debug)]
pub struct Connected {
    pub pipe: DuplexStream,
    pub task: JoinHandle<String>,
}

/// Connects to `bridge` from a fresh UDP port and completes the handshake.
pub async fn connect(
    context: &Arc<ClientConfig>,
    settings: &ClientSettings,
    bridge: SocketAddr,
) -> Result<Connected, ConnectError> {
    let local: SocketAddr = if bridge.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let socket = UdpSocket::bind(local).await.map_err(ConnectError::Bind)?;
    connect_on(context, settings, bridge, socket).await
}

/// As [`connect`], from a socket the caller bound (a device that reboots keeps its port).
pub async fn connect_on(
    context: &Arc<ClientConfig>,
    settings: &ClientSettings,
    bridge: SocketAddr,
    socket: UdpSocket,
) -> Result<Connected, ConnectError> {
    let socket = Arc::new(socket);
    let conn = Connection::connect(context.clone(), Instant::now().into_std())
        .map_err(ConnectError::Dtls)?;
    let (wire, datagrams, farewell) = Wire::new(socket.clone(), bridge, 64);
    let receive = tokio::spawn(feed(socket, bridge, datagrams, farewell));
    let mut session = Session { conn, wire };
    let deadline = Instant::now() + settings.handshake_timeout;
    if let Err(why) = session.handshake(deadline).await {
        receive.abort();
        return Err(why.into());
    }
    let (pipe, app) = tokio::io::duplex(super::session::PIPE_BYTES);
    let idle = settings.idle_timeout;
    let task = tokio::spawn(async move {
        let why = session.relay(app, idle).await;
        receive.abort();
        why
    });
    Ok(Connected { pipe, task })
}

/// Receive errors in a row after which the socket is taken for broken.
const RECEIVE_FAILURES: u32 = 64;

/// Hands the datagrams that come from `bridge` to the session, until the session is gone.
///
/// A receive error on a UDP socket is mostly news about an earlier datagram, not about the
/// socket: an ICMP port unreachable (the bridge restarting) comes back as a "connection
/// refused" (Windows' WSAECONNRESET; Linux with IP_RECVERR). The next datagram may well
/// arrive, so the task keeps receiving; only [`RECEIVE_FAILURES`] errors in a row end it, and
/// then the session is told why (`farewell`).
async fn feed(
    socket: Arc<UdpSocket>,
    bridge: SocketAddr,
    datagrams: mpsc::Sender<Vec<u8>>,
    farewell: oneshot::Sender<String>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut failures = 0u32;
    let why = loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                failures = 0;
                // The session is gone: nobody to tell anything.
                if from == bridge && datagrams.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(%bridge, error = %e, failures, "DTLS client: UDP receive failed");
                if failures >= RECEIVE_FAILURES {
                    break format!("UDP receive failed {failures} times in a row: {e}");
                }
            }
        }
    };
    let _ = farewell.send(why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_connection_says_which_step_failed() {
        let bind = ConnectError::Bind(std::io::ErrorKind::AddrInUse.into());
        assert!(bind.to_string().starts_with("UDP bind: "), "{bind}");
        assert!(std::error::Error::source(&bind).is_some());
        // The handshake's reason is the whole message, as the bridge logs it.
        let handshake = ConnectError::from(HandshakeError::Deadline { stall: None });
        assert_eq!(handshake.to_string(), "handshake deadline passed");
    }
}
