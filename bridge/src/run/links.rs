//! Starting the configured device links: one function per link kind, each reading its files
//! and binding its socket before anything listens, then spawning the link's task.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use broker_config::LinkConfig;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use super::RunError;
use crate::link::listener::Caps;
use crate::link::{self, LinkEvent, LinkId};

/// Link ids each listener may use, from its base: 2^48 connections (2^32 ran out after
/// about 248 days at 200 DTLS handshakes a second and spilled into the next listener's ids).
const LINK_ID_SPAN: u64 = 1 << 48;

/// The index, in the configuration's list, of the link whose listener gave `link` its id.
pub(super) fn listener_of(link: LinkId) -> usize {
    usize::try_from(link / LINK_ID_SPAN).unwrap_or(usize::MAX)
}

/// Connections a device listener queues before it accepts them. A fleet reconnecting at
/// once after a restart overflows the usual 128 (each overflow costs a device a 1 s SYN
/// retransmission).
const DEVICE_BACKLOG: u32 = 1024;

/// Starts every link of `links`, each sending its events to `events`; returns the addresses
/// they listen on (port 0 resolved), in order (serial ports listen on none).
pub(super) async fn start(
    links: &[LinkConfig],
    events: &mpsc::Sender<LinkEvent>,
) -> Result<Vec<SocketAddr>, RunError> {
    let mut addrs = Vec::new();
    for (i, config) in links.iter().enumerate() {
        let base = i as LinkId * LINK_ID_SPAN;
        let events = events.clone();
        match config {
            LinkConfig::Tcp {
                listen,
                max_connections,
                max_connections_per_address,
            } => {
                let caps = Caps {
                    total: *max_connections,
                    per_host: *max_connections_per_address,
                };
                addrs.push(start_tcp(*listen, caps, base, events)?);
            }
            LinkConfig::Tls {
                listen,
                cert_file,
                key_file,
                client_ca_file,
                handshake_timeout,
                max_connections,
                max_connections_per_address,
                max_handshakes,
            } => {
                let tls = Tls {
                    cert: cert_file,
                    key: key_file,
                    client_ca: client_ca_file,
                    handshake_timeout: *handshake_timeout,
                    max_handshakes: *max_handshakes,
                    caps: Caps {
                        total: *max_connections,
                        per_host: *max_connections_per_address,
                    },
                };
                addrs.push(start_tls(*listen, &tls, base, events)?);
            }
            LinkConfig::Dtls(dtls) => addrs.push(start_dtls(dtls, base, events).await?),
            LinkConfig::Serial { path, baud } => start_serial(path, *baud, base, events),
        }
    }
    Ok(addrs)
}

fn start_tcp(
    listen: SocketAddr,
    caps: Caps,
    base: LinkId,
    events: mpsc::Sender<LinkEvent>,
) -> Result<SocketAddr, RunError> {
    let (listener, addr) = device_listener(listen)?;
    if addr.ip().is_loopback() {
        tracing::info!(%addr, "plain TCP device link listening (no authentication)");
    } else {
        tracing::warn!(%addr, "plain TCP device link listening beyond loopback: any host can claim any device id");
    }
    tokio::spawn(link::tcp::serve(listener, base, caps, events));
    Ok(addr)
}

/// The settings of a TLS device link.
struct Tls<'a> {
    cert: &'a Path,
    key: &'a Path,
    client_ca: &'a Path,
    handshake_timeout: Duration,
    max_handshakes: usize,
    caps: Caps,
}

fn start_tls(
    listen: SocketAddr,
    tls: &Tls<'_>,
    base: LinkId,
    events: mpsc::Sender<LinkEvent>,
) -> Result<SocketAddr, RunError> {
    // Files first: a bad one stops the bridge before anything listens.
    let acceptor = link::tls::acceptor(listen, tls.cert, tls.key, tls.client_ca)?;
    let (listener, addr) = device_listener(listen)?;
    tracing::info!(%addr, "TLS device link listening (client certificates required)");
    let handshakes =
        link::tls::Handshakes::new(acceptor, tls.handshake_timeout, tls.max_handshakes);
    tokio::spawn(link::tls::serve(
        listener, base, tls.caps, events, handshakes,
    ));
    Ok(addr)
}

async fn start_dtls(
    config: &broker_config::DtlsLink,
    base: LinkId,
    events: mpsc::Sender<LinkEvent>,
) -> Result<SocketAddr, RunError> {
    let settings = link::dtls::settings(config)?;
    let context = link::dtls::context(&settings)?;
    let listen = settings.listen;
    let failed = |source| RunError::Link {
        addr: listen,
        source,
    };
    let socket = UdpSocket::bind(listen).await.map_err(failed)?;
    let addr = socket.local_addr().map_err(failed)?;
    tracing::info!(%addr, psk_devices = settings.psk.len(), certificates = settings.certificates.is_some(), "DTLS device link listening");
    tokio::spawn(link::dtls::serve(socket, base, events, context, settings));
    Ok(addr)
}

fn start_serial(path: &Path, baud: u32, base: LinkId, events: mpsc::Sender<LinkEvent>) {
    // Opened by its task, not here: a port missing at start (a USB adapter not plugged in
    // yet) is retried, not fatal.
    tracing::info!(port = %path.display(), baud, "serial device link (no authentication: the cable is the credential)");
    tokio::spawn(link::serial::serve(path.to_owned(), baud, base, events));
}

/// A TCP listener for device links with a [`DEVICE_BACKLOG`]-deep accept queue, and the
/// address it got.
fn device_listener(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), RunError> {
    let failed = |source| RunError::Link {
        addr: listen,
        source,
    };
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(failed)?;
    // As std's and tokio's `bind` do on Unix: a restarted bridge can listen again at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true).map_err(failed)?;
    socket.bind(listen).map_err(failed)?;
    let listener = socket.listen(DEVICE_BACKLOG).map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}
