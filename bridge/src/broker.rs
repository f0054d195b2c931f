//! The embedded MQTT broker (rumqttd), for gateways with nothing else installed.
//!
//! rumqttd runs its own threads (one current-thread runtime per listener) and its `start`
//! blocks for the broker's whole life, so it gets a thread of its own. It has no shutdown:
//! it ends with the process. If `start` ever returns, the broker is dead (its listener could
//! not bind, say) and the bridge stops with an error rather than run without it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::sync::oneshot;

/// Errors of the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listen address could not be reserved (port 0 resolution, or in use).
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// Starts rumqttd on `listen` (port 0: a free port is chosen). Returns the address it
/// listens on and a receiver that fires if the broker stops.
pub fn start(
    listen: SocketAddr,
    max_packet_bytes: usize,
    max_connections: usize,
) -> Result<(SocketAddr, oneshot::Receiver<String>), BrokerError> {
    // rumqttd binds inside its own thread and cannot report the port it got, so port 0 is
    // resolved here. Binding first also turns "address in use" into an error now.
    let probe = TcpListener::bind(listen).map_err(|source| BrokerError::Listen {
        addr: listen,
        source,
    })?;
    let addr = probe.local_addr().map_err(|source| BrokerError::Listen {
        addr: listen,
        source,
    })?;
    drop(probe);

    let server = ServerSettings {
        name: "edge-bridge-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_packet_bytes,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 500,
            // rumqttd keeps an in-memory log of up to size x count bytes per topic filter;
            // 1 MiB x 10 bounds it for gateways (must be >= 1 KiB and >= 1, or the router
            // thread panics on first use).
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    let (died, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            let why = match broker.start() {
                Ok(()) => "the embedded broker stopped".to_owned(),
                Err(e) => format!("the embedded broker failed: {e}"),
            };
            let _ = died.send(why);
        })
        .map_err(BrokerError::Thread)?;
    // rumqttd binds on its own thread: wait (briefly) until it accepts, so the bridge's
    // first connection does not fail and log a spurious warning at every start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok((addr, stopped))
}
