//! The client commands: `edge-bridge submit`, `watch` and `tasks`, for application developers
//! and operators. They speak the bridge's MQTT API like any other client (through the broker,
//! from any host), so what they show is what an application sees.
//!
//! # Layout
//! - `mod.rs`: where the bridge is (command-line options and configuration file), the MQTT
//!   connection, and the output helpers the commands share.
//! - `submit`: submissions with a window in flight, each confirmed by its `queued` event.
//! - `watch`: status events as readable lines.
//! - `tasks`: the query "why is my task waiting?".

pub mod submit;
pub mod tasks;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use broker_config::{BrokerConfig, Config};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// Where the bridge's MQTT API is, and how to log in.
#[derive(Clone, Debug, Default)]
pub struct ConnectArgs {
    /// The bridge's configuration file: its broker address, login and topic root are used
    /// (the options below override them).
    pub config: Option<PathBuf>,
    /// The MQTT broker the bridge uses, as HOST:PORT [default: the configuration's, or
    /// 127.0.0.1:1883].
    pub broker: Option<String>,
    /// The bridge's topic root [default: the configuration's, or edge/{bridge-id}].
    pub root: Option<String>,
    /// The bridge's id, for the default topic root edge/{bridge-id}.
    pub bridge_id: Option<String>,
    /// MQTT user name; the password is read from the environment variable
    /// EDGE_BRIDGE_PASSWORD (not from the command line, where `ps` shows it).
    pub username: Option<String>,
}

/// A resolved [`ConnectArgs`].
#[derive(Clone, Debug)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub root: String,
    pub login: Option<(String, String)>,
}

impl ConnectArgs {
    /// Resolves the options against the configuration file, if one is named.
    pub fn target(&self) -> anyhow::Result<Target> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None => None,
        };
        let (mut host, mut port) = ("127.0.0.1".to_owned(), 1883);
        let mut login = None;
        if let Some(c) = &config {
            match &c.broker {
                BrokerConfig::Embedded { listen, .. } => {
                    // A wildcard listener is reached on loopback from this host.
                    let ip = if listen.ip().is_unspecified() {
                        "127.0.0.1".to_owned()
                    } else {
                        listen.ip().to_string()
                    };
                    (host, port) = (ip, listen.port());
                }
                BrokerConfig::External {
                    host: h,
                    port: p,
                    username,
                    password,
                    tls,
                    ..
                } => {
                    anyhow::ensure!(
                        tls.is_none(),
                        "the configuration's broker uses TLS, which the client commands do not \
                         speak yet; point --broker at a plain listener of the same broker"
                    );
                    (host, port) = (h.clone(), *p);
                    login = username
                        .clone()
                        .map(|u| (u, password.clone().unwrap_or_default()));
                }
            }
        }
        if let Some(b) = &self.broker {
            (host, port) = split_host_port(b)?;
        }
        if let Some(user) = &self.username {
            let password = std::env::var("EDGE_BRIDGE_PASSWORD").unwrap_or_default();
            login = Some((user.clone(), password));
        }
        let root = match (&self.root, &self.bridge_id, &config) {
            (Some(r), _, _) => r.clone(),
            (None, Some(id), _) => format!("edge/{id}"),
            (None, None, Some(c)) => c.root(),
            (None, None, None) => Config::default().root(),
        };
        anyhow::ensure!(
            !root.is_empty() && rumqttc::valid_topic(&root) && !root.ends_with('/'),
            "--root {root:?} is not a topic prefix (no +, #, or trailing /)"
        );
        Ok(Target {
            host,
            port,
            root,
            login,
        })
    }
}

/// `HOST:PORT`, `[v6]:PORT` or `HOST` (port 1883).
fn split_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            let port = port
                .parse()
                .with_context(|| format!("--broker {s:?}: the port {port:?} is not a number"))?;
            Ok((host.to_owned(), port))
        }
        _ => Ok((s.to_owned(), 1883)),
    }
}

/// What the connection task hands the command.
#[derive(Debug)]
pub enum Incoming {
    /// The broker accepted the connection (again).
    Connected,
    /// A subscription was acknowledged.
    Subscribed,
    /// The broker refused a subscription (its access rules).
    Refused,
    /// A message on a subscribed topic.
    Message { topic: String, payload: Vec<u8> },
    /// The broker acknowledged a QoS 1 publish.
    Acked,
    /// The connection failed; it is retried.
    Lost(String),
}

/// An MQTT connection for a client command: a clean session under a random client id, its
/// events on a channel. `window`: QoS 1 publishes in flight at most.
pub fn connect(target: &Target, window: u16) -> (AsyncClient, mpsc::UnboundedReceiver<Incoming>) {
    let id = format!("edge-bridge-cli-{}", token());
    let mut opts = MqttOptions::new(id, &target.host, target.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    opts.set_inflight(window.max(1));
    opts.set_max_packet_size(1024 * 1024, 1024 * 1024);
    if let Some((user, pass)) = &target.login {
        opts.set_credentials(user, pass);
    }
    let (client, eventloop) = AsyncClient::new(opts, usize::from(window) + 64);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(pump(eventloop, tx));
    (client, rx)
}

/// Polls the event loop, handing on what the command needs; retries a failed connection
/// after a second (the command decides how long it waits).
async fn pump(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Incoming>) {
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    loop {
        let incoming = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Incoming::Connected,
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    Incoming::Refused
                } else {
                    Incoming::Subscribed
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => Incoming::Acked,
            Ok(Event::Incoming(Packet::Publish(p))) => Incoming::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(_) => continue,
            Err(e) => {
                if tx.send(Incoming::Lost(e.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if tx.send(incoming).is_err() {
            return;
        }
    }
}

/// Waits until the connection is up and `filters` are subscribed (QoS 1), or fails after
/// `within` naming the broker and the last error.
pub async fn subscribe(
    client: &AsyncClient,
    events: &mut mpsc::UnboundedReceiver<Incoming>,
    target: &Target,
    filters: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last_error = None;
    let mut due = 0usize;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv()).await;
        match event {
            Ok(Some(Incoming::Connected)) => {
                due = 0;
                for f in filters {
                    client.subscribe(f.clone(), QoS::AtLeastOnce).await?;
                    due += 1;
                }
            }
            Ok(Some(Incoming::Subscribed)) => {
                due = due.saturating_sub(1);
                if due == 0 {
                    return Ok(());
                }
            }
            Ok(Some(Incoming::Refused)) => anyhow::bail!(
                "the MQTT broker {}:{} refused the subscription to {}: the user may not read \
                 it (the broker's access rules)",
                target.host,
                target.port,
                filters.join(" and ")
            ),
            Ok(Some(Incoming::Lost(e))) => last_error = Some(e),
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("the MQTT connection task ended"),
            Err(_) => anyhow::bail!(
                "could not subscribe at the MQTT broker {}:{} within {within:?}{}",
                target.host,
                target.port,
                last_error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        }
    }
}

/// What [`ask`] got: the bridge's answer (parsed and as sent), and the other messages that
/// came meanwhile, in order, for the caller to handle.
#[derive(Debug)]
pub struct Asked {
    pub answer: crate::api::QueryAnswer,
    pub raw: Vec<u8>,
    pub others: Vec<(String, Vec<u8>)>,
}

/// Asks the bridge on `{root}/query/tasks` (the reply topic `{root}/query/replies/{reply}`
/// must be subscribed) and waits for its answer. The query goes again every second while no
/// answer comes (answers travel at QoS 0) or the bridge says it is busy, until `within`; an
/// answer about another task on the same reply topic is not taken.
pub async fn ask(
    client: &AsyncClient,
    events: &mut mpsc::UnboundedReceiver<Incoming>,
    target: &Target,
    reply: &str,
    id: Option<&str>,
    limit: Option<usize>,
    within: Duration,
) -> anyhow::Result<Asked> {
    let reply_topic = format!("{}/query/replies/{reply}", target.root);
    let query = serde_json::json!({"reply": reply, "id": id, "limit": limit}).to_string();
    let deadline = tokio::time::Instant::now() + within;
    let mut others = Vec::new();
    let mut busy = None;
    loop {
        client
            .publish(
                format!("{}/query/tasks", target.root),
                QoS::AtLeastOnce,
                false,
                query.clone(),
            )
            .await?;
        let again = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
        loop {
            match tokio::time::timeout_at(again, events.recv()).await {
                Ok(Some(Incoming::Message { topic, payload })) if topic == reply_topic => {
                    let Ok(answer) = serde_json::from_slice::<crate::api::QueryAnswer>(&payload)
                    else {
                        continue;
                    };
                    if answer.id.as_deref() != id {
                        continue;
                    }
                    match &answer.error {
                        Some(e) if e.code == crate::api::ErrorCode::TooManyQueries => {
                            busy = Some(e.message.clone());
                        }
                        _ => {
                            return Ok(Asked {
                                answer,
                                raw: payload,
                                others,
                            });
                        }
                    }
                }
                Ok(Some(Incoming::Message { topic, payload })) => others.push((topic, payload)),
                Ok(Some(_)) => {}
                Ok(None) => anyhow::bail!("the MQTT connection task ended"),
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            if let Some(message) = busy {
                anyhow::bail!("the bridge is busy: {message} (for {within:?})");
            }
            anyhow::bail!(
                "no answer on {reply_topic} within {within:?}: is the bridge running and \
                 connected to {}:{}, is its topic root {} (--root, --bridge-id or --config), \
                 and do the broker's access rules let this user publish to {}/query/tasks and \
                 read the answer?",
                target.host,
                target.port,
                target.root,
                target.root
            );
        }
    }
}

/// A token for a reply topic or generated ids: 16 hex digits, different at every run.
pub fn token() -> String {
    let mut bytes = [0u8; 8];
    let random = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&random, &mut bytes).is_err() {
        // Uniqueness is what matters here, not secrecy.
        bytes = crate::backoff::seed_from_clock().to_le_bytes();
    }
    format!("{:016x}", u64::from_le_bytes(bytes))
}

/// The JSON name of a unit enum value, as the API writes it (`queued`, `no_device`).
pub fn json_name(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Wall-clock ms since the epoch as `HH:MM:SS.mmm` (UTC).
pub fn clock_time(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

/// A duration in ms for people: `850ms`, `12.3s`, `4m05s`, `2h13m`.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_and_roots_resolve() {
        assert_eq!(
            split_host_port("10.0.0.1:1884").unwrap(),
            ("10.0.0.1".into(), 1884)
        );
        assert_eq!(split_host_port("[::1]:1885").unwrap(), ("::1".into(), 1885));
        assert_eq!(split_host_port("broker").unwrap(), ("broker".into(), 1883));
        assert!(split_host_port("broker:x").is_err());
        let args = ConnectArgs {
            config: None,
            broker: None,
            root: None,
            bridge_id: Some("gw1".into()),
            username: None,
        };
        let t = args.target().unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.root.as_str()),
            ("127.0.0.1", 1883, "edge/gw1")
        );
        let bad = ConnectArgs {
            root: Some("edge/#".into()),
            ..args
        };
        assert!(bad.target().unwrap_err().to_string().contains("edge/#"));
    }

    #[test]
    fn times_read_well() {
        assert_eq!(clock_time(3_723_004), "01:02:03.004");
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_340), "12.3s");
        assert_eq!(human_ms(245_000), "4m05s");
        assert_eq!(human_ms(7_980_000), "2h13m");
    }
}
