//! The embedded MQTT broker (rumqttd), for gateways with nothing else installed.
//!
//! rumqttd runs its own threads (one current-thread runtime per listener) and its `start`
//! blocks for the broker's whole life, so it gets a thread of its own. It has no shutdown:
//! it ends with the process. If `start` ever returns, the broker is dead (its listener could
//! not bind, say) and the bridge stops with an error rather than run without it.
//!
//! rumqttd acknowledges a message as soon as it is in its in-memory log of the matching
//! subscription filter, whatever its subscribers have read, and that log is bounded: a burst
//! that outruns the bridge's commits overflows it, and the oldest unread submissions are
//! dropped after their publishers had their PUBACK. So the logs of the API's filters get a
//! size of their own ([`ApiLog`], `broker.api_log_bytes`), and [`loss`] reports whatever is
//! dropped anyway.
//!
//! # Layout
//! - this file: the broker's settings and its thread;
//! - [`loss`]: cursor jumps (messages dropped before a subscriber read them), from rumqttd's
//!   log events.

pub mod loss;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};
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

/// Segments of an API filter's log. rumqttd drops a whole segment when the log is full, so
/// the log holds at least 15/16 of its size, and a segment of at least 1 KiB (rumqttd's
/// minimum) needs `api_log_bytes` of at least 16 KiB.
pub const API_LOG_SEGMENTS: usize = 16;

/// The logs of the bridge's own subscriptions (submissions and cancels).
#[derive(Clone, Debug)]
pub struct ApiLog {
    /// The filters the bridge subscribes to.
    pub filters: Vec<String>,
    /// Bytes of each filter's log, as rumqttd counts them (per message: topic, payload and 4).
    pub bytes: usize,
}

/// Starts rumqttd on `listen` (port 0: a free port is chosen). Returns the address it
/// listens on and a receiver that fires if the broker stops.
pub fn start(
    listen: SocketAddr,
    max_packet_bytes: usize,
    max_connections: usize,
    api: &ApiLog,
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
            // The API's filters hold a burst while the bridge commits: 200,000 submissions
            // at full speed from mosquitto_pub overflowed 10 MiB (67,471 lost) while the bridge
            // (a debug build) queued 2,500 a second.
            custom_segment: Some(
                api.filters
                    .iter()
                    .map(|filter| {
                        let segment = SegmentConfig {
                            max_segment_size: (api.bytes / API_LOG_SEGMENTS).max(1024),
                            max_segment_count: API_LOG_SEGMENTS,
                        };
                        (filter.clone(), segment)
                    })
                    .collect(),
            ),
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
