//! The embedded MQTT broker (rumqttd), for gateways with nothing else installed.
//!
//! rumqttd's router runs on a thread of its own, and its MQTT listener on another (a
//! current-thread runtime). Neither has a shutdown: they end with the process. If the listener
//! ever stops, the broker is dead (it could not bind, say) and the bridge stops with an error
//! rather than run without it.
//!
//! The bridge starts those two parts itself rather than through `rumqttd::Broker::start`,
//! which would also link in everything that function could start from a configuration: a
//! Prometheus exporter with its HTTP server, a console with a regex-based log filter, a
//! bridge to another broker, a metrics timer. The bridge starts none of them; linked, they
//! were about half a megabyte of every gateway binary.
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
//!   log events;
//! - [`nodelay`]: `TCP_NODELAY` on the broker's connections (rumqttd sets none);
//! - [`tls`]: the TLS listener in front of the broker.

pub mod loss;
pub mod nodelay;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};

use rumqttd::protocol::v4::V4;
use rumqttd::{
    ConnectionSettings, LinkType, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
};
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

/// Who may connect to the embedded broker.
#[derive(Clone)]
pub struct Access {
    /// `broker.users_file`'s users (name to password); `None`: anyone, no login asked.
    pub users: Option<BTreeMap<String, String>>,
    /// The bridge's client id: with users, reserved to the bridge's own login.
    pub bridge_client_id: String,
    /// The bridge's own login: a name no user file can hold and a password drawn at start.
    pub bridge_login: (String, String),
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("users", &self.users.as_ref().map(BTreeMap::len))
            .field("bridge_client_id", &self.bridge_client_id)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// Access for the bridge whose client id is `bridge_client_id`, with a fresh random
    /// password for its own login.
    pub fn new(users: Option<BTreeMap<String, String>>, bridge_client_id: String) -> Self {
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .expect("the system's random source");
        let password = secret.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            users,
            bridge_login: (format!("{bridge_client_id}/bridge"), password),
            bridge_client_id,
        }
    }

    /// Whether a client may connect. The bridge's client id, and its login name, go only
    /// with the bridge's login (so no one takes its session over); anyone else needs a user
    /// of the file. Passwords are compared in constant time.
    pub fn allows(&self, client_id: &str, user: &str, password: &str) -> bool {
        let Some(users) = &self.users else {
            return true;
        };
        let (bridge_user, bridge_password) = &self.bridge_login;
        if client_id == self.bridge_client_id || user == bridge_user {
            return client_id == self.bridge_client_id
                && user == bridge_user
                && same_secret(password, bridge_password);
        }
        users
            .get(user)
            .is_some_and(|expected| same_secret(password, expected))
    }
}

/// Equal strings, compared in time that depends on their lengths only.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Logins the embedded broker refused, logged within a budget (a client trying passwords
/// cannot flood the log; the lines left out are counted).
static REFUSED_LOGINS: crate::throttle::Throttle = crate::throttle::Throttle::remote_events();

/// Starts rumqttd on `listen` (port 0: a free port is chosen). Returns the address it
/// listens on and a receiver that fires if the broker stops.
pub fn start(
    listen: SocketAddr,
    max_packet_bytes: usize,
    max_connections: usize,
    api: &ApiLog,
    access: &Access,
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

    let mut server = ServerSettings {
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
    if access.users.is_some() {
        let access = access.clone();
        server
            .connections
            .set_auth_handler(move |client_id: String, user: String, password: String| {
                let allowed = access.allows(&client_id, &user, &password);
                if !allowed {
                    if let Some(suppressed) = REFUSED_LOGINS.admit(std::time::Instant::now()) {
                        tracing::warn!(%client_id, %user, suppressed, "embedded broker refused a login");
                    }
                }
                std::future::ready(allowed)
            });
    }
    let router = RouterConfig {
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
    };
    // The listener's runtime is built before the router starts, so a failure leaves no
    // thread behind.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BrokerError::Thread)?;
    let router_tx = Router::new(0, router).spawn();
    let mut server = Server::new(server, router_tx, V4);
    let (died, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let why = match runtime.block_on(server.start(LinkType::Remote)) {
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
    match nodelay::set_on_listener(addr) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(%addr, "embedded broker's listener not found: its connections keep Nagle's delay (up to 40 ms per reply)");
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot set TCP_NODELAY on the embedded broker's listener: its connections keep Nagle's delay (up to 40 ms per reply)");
        }
    }
    Ok((addr, stopped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection a client opened to the embedded broker, as rumqttd accepted it: whether
    /// it has `TCP_NODELAY` (waits, bounded, for rumqttd's thread to accept it).
    fn accepted_nodelay(client: &std::net::TcpStream) -> bool {
        let peer = client.local_addr().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let listener = client.peer_addr().unwrap();
            if let Some(nodelay) = nodelay::of_accepted(listener, peer).unwrap() {
                return nodelay;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rumqttd never accepted {peer}"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_embedded_brokers_connections_have_no_nagle_delay() {
        let api = ApiLog {
            filters: vec!["edge/+/tasks/+".into()],
            bytes: 64 * 1024,
        };
        let access = Access::new(None, "edge-bridge-x".into());
        let (addr, _stopped) =
            start("127.0.0.1:0".parse().unwrap(), 4096, 16, &api, &access).unwrap();
        for _ in 0..3 {
            let client = std::net::TcpStream::connect(addr).unwrap();
            assert!(
                accepted_nodelay(&client),
                "a connection to {addr} keeps Nagle's algorithm"
            );
        }
    }

    #[test]
    fn the_bridges_client_id_and_login_go_together_and_users_need_their_password() {
        let users = BTreeMap::from([("app".to_owned(), "pw".to_owned())]);
        let access = Access::new(Some(users), "edge-bridge-x".into());
        let (user, password) = access.bridge_login.clone();
        assert_eq!(password.len(), 32);
        assert_ne!(
            Access::new(None, "edge-bridge-x".into()).bridge_login.1,
            password
        );
        assert!(access.allows("edge-bridge-x", &user, &password));
        assert!(access.allows("app-1", "app", "pw"));
        // Takeover: the bridge's client id with a user's valid login, or its login name
        // under another client id.
        assert!(!access.allows("edge-bridge-x", "app", "pw"));
        assert!(!access.allows("other", &user, &password));
        assert!(!access.allows("app-1", "app", "pW"));
        assert!(!access.allows("app-1", "app", "pw "));
        assert!(!access.allows("app-1", "nobody", ""));
        // Without users: anyone.
        assert!(Access::new(None, "edge-bridge-x".into()).allows("edge-bridge-x", "", ""));
    }
}
