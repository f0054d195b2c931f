//! The embedded broker's TLS listener. rumqttd could terminate TLS itself, but only with a
//! second, older rustls; instead the bridge takes MQTT over TLS with its own rustls (ring),
//! and passes each connection's bytes to the broker's plain listener on loopback. Users and
//! passwords (`broker.users_file`) apply to these clients as to the others.
//!
//! Each handshake has 10 s and at most `max_handshakes` run at once: a connection beyond that
//! is closed at once, so clients that open connections and send nothing cannot hold the
//! bridge's file descriptors. Refusals and failures are logged within a budget
//! ([`Throttle`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker_config::EmbeddedTls;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::throttle::Throttle;
use crate::tls::{TlsError, pem_certificates, pem_private_key};

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The acceptor for `t`, checked now so that a bad file stops the bridge at start with a
/// message naming it.
pub fn acceptor(t: &EmbeddedTls) -> Result<TlsAcceptor, TlsError> {
    let file = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| TlsError::File { path, source }
    };
    let chain = pem_certificates(&t.cert_file).map_err(file(&t.cert_file))?;
    let key = pem_private_key(&t.key_file).map_err(file(&t.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("cert_file and key_file: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Connections refused for want of a handshake place, and failed handshakes: logged within a
/// budget, the lines left out counted.
static REFUSED: Throttle = Throttle::remote_events();
static FAILED: Throttle = Throttle::remote_events();

/// Takes MQTT over TLS on `listener` for ever and passes each connection to the broker at
/// `broker`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    broker: SocketAddr,
    max_handshakes: usize,
) {
    let handshakes = Arc::new(Semaphore::new(max_handshakes));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather than spin.
                tracing::warn!(error = %e, "MQTT over TLS: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            if let Some(suppressed) = REFUSED.admit(Instant::now()) {
                tracing::warn!(%peer, max_handshakes, suppressed, "MQTT over TLS: too many handshakes in progress; connection closed");
            }
            continue;
        };
        // The client's replies (PUBACKs, deliveries) are small writes: without this each one
        // waits for the client's delayed ACK (see [`super::nodelay`]).
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    if let Some(suppressed) = FAILED.admit(Instant::now()) {
                        tracing::warn!(%peer, error = %e, suppressed, "MQTT over TLS: handshake failed");
                    }
                    return;
                }
                Err(_) => {
                    if let Some(suppressed) = FAILED.admit(Instant::now()) {
                        tracing::warn!(%peer, suppressed, "MQTT over TLS: no handshake within 10 s");
                    }
                    return;
                }
            };
            drop(permit);
            relay(tls, peer, broker).await;
        });
    }
}

/// Passes bytes both ways between a client and the broker until either side closes.
async fn relay(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    broker: SocketAddr,
) {
    let mut plain = match TcpStream::connect(broker).await {
        Ok(plain) => plain,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "MQTT over TLS: the embedded broker cannot be reached");
            return;
        }
    };
    let _ = plain.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut tls, &mut plain).await {
        tracing::debug!(%peer, error = %e, "MQTT over TLS: connection ended");
    }
}
