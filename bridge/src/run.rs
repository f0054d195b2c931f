//! `edge-bridge run`: wires the queue, the broker, the MQTT driver, the device links and the
//! engine, and runs until a signal or a fatal error.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use broker_config::{BrokerConfig, Config, LinkConfig};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use crate::engine::{ApiInput, Engine, Retry, wall_ms};
use crate::link::{self, LinkEvent};
use crate::mqtt::{self, MqttEvent, MqttSettings, Publication};
use crate::queue::{Queue, QueueError};

/// Outbox entries handed to the MQTT driver and not yet acknowledged, at most (below
/// `mqtt::INFLIGHT`, so the driver never blocks on its own window).
const PUBLISH_WINDOW: usize = 200;

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("device link {addr}: {source}")]
    Link {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A TLS device link's certificate, key or client CA cannot be used.
    #[error(transparent)]
    LinkTls(#[from] link::tls::LinkTlsError),
    /// A DTLS device link's keys, certificates or cipher list cannot be used.
    #[error(transparent)]
    LinkDtls(#[from] link::dtls::LinkDtlsError),
    #[error("{0}")]
    Stopped(String),
}

/// The addresses the bridge ended up listening on (port 0 resolved).
#[derive(Clone, Debug)]
pub struct Ready {
    pub mqtt: SocketAddr,
    pub devices: Vec<SocketAddr>,
}

/// Runs the bridge; `ready` is called once everything listens and the MQTT API is live
/// (subscriptions acknowledged), so a client that sees it can submit at once.
pub async fn run(config: Config, ready: impl FnOnce(&Ready)) -> Result<(), RunError> {
    let root = config.root();
    let queue = Queue::open(&config.data_dir, config.queue.limit)?;
    tracing::info!(data_dir = %config.data_dir.display(), live = queue.len(), "queue opened");
    let retry = Retry {
        max_attempts: config.queue.max_attempts,
        initial: config.queue.retry_initial,
        max: config.queue.retry_max,
    };
    let mut engine = Engine::new(queue, retry);

    let (broker_stopped, settings) = match &config.broker {
        BrokerConfig::Embedded {
            listen,
            max_packet_bytes,
            max_connections,
        } => {
            let (addr, stopped) =
                crate::broker::start(*listen, *max_packet_bytes, *max_connections)?;
            tracing::info!(%addr, "embedded MQTT broker started");
            let settings = MqttSettings {
                host: addr.ip().to_string(),
                port: addr.port(),
                client_id: format!("edge-bridge-{}", config.bridge_id),
                credentials: None,
                root: root.clone(),
                max_packet_bytes: *max_packet_bytes,
                tls: None,
            };
            (Some(stopped), settings)
        }
        BrokerConfig::External {
            host,
            port,
            username,
            password,
            tls,
            max_packet_bytes,
        } => {
            let settings = MqttSettings {
                host: host.clone(),
                port: *port,
                client_id: format!("edge-bridge-{}", config.bridge_id),
                credentials: username
                    .clone()
                    .map(|u| (u, password.clone().unwrap_or_default())),
                root: root.clone(),
                max_packet_bytes: *max_packet_bytes,
                tls: tls.as_ref().map(crate::tls::client_config).transpose()?,
            };
            (None, settings)
        }
    };
    let mqtt_addr = format!("{}:{}", settings.host, settings.port)
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], settings.port)));

    let (api_tx, mut api_rx) = mpsc::channel::<ApiInput>(1024);
    let (mqtt_ev_tx, mut mqtt_ev_rx) = mpsc::channel::<MqttEvent>(1024);
    let (pub_tx, pub_rx) = mpsc::channel::<Publication>(PUBLISH_WINDOW + 16);
    let (client, eventloop) = mqtt::connect(&settings);
    tokio::spawn(mqtt::run(
        settings,
        client.clone(),
        eventloop,
        api_tx,
        mqtt_ev_tx,
        pub_rx,
    ));

    let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(1024);
    let mut device_addrs = Vec::new();
    let mut next_link = 0u64;
    for link in &config.links {
        if let LinkConfig::Dtls { .. } = link {
            let settings = link::dtls::settings(link)?;
            let context = link::dtls::context(&settings)?;
            let socket =
                UdpSocket::bind(settings.listen)
                    .await
                    .map_err(|source| RunError::Link {
                        addr: settings.listen,
                        source,
                    })?;
            let addr = socket.local_addr().map_err(|source| RunError::Link {
                addr: settings.listen,
                source,
            })?;
            tracing::info!(%addr, psk_devices = settings.psk.len(), certificates = settings.certificates.is_some(), "DTLS device link listening");
            device_addrs.push(addr);
            let base = next_link;
            next_link += LINK_ID_SPAN;
            tokio::spawn(link::dtls::serve(
                socket,
                base,
                link_tx.clone(),
                context,
                settings,
            ));
            continue;
        }
        if let LinkConfig::Serial { path, baud } = link {
            // Opened by its task, not here: a port missing at start (a USB adapter not
            // plugged in yet) is retried, not fatal.
            tracing::info!(port = %path.display(), baud, "serial device link (no authentication: the cable is the credential)");
            let base = next_link;
            next_link += LINK_ID_SPAN;
            tokio::spawn(link::serial::serve(
                path.clone(),
                *baud,
                base,
                link_tx.clone(),
            ));
            continue;
        }
        let listen = link.listen().expect("serial links are handled above");
        // Files first: a bad one stops the bridge before anything listens.
        let acceptor = match link {
            LinkConfig::Tcp { .. } => None,
            LinkConfig::Tls {
                cert_file,
                key_file,
                client_ca_file,
                handshake_timeout,
                ..
            } => Some((
                link::tls::acceptor(listen, cert_file, key_file, client_ca_file)?,
                *handshake_timeout,
            )),
            LinkConfig::Dtls { .. } | LinkConfig::Serial { .. } => {
                unreachable!("handled above")
            }
        };
        let listener = device_listener(listen).map_err(|source| RunError::Link {
            addr: listen,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| RunError::Link {
            addr: listen,
            source,
        })?;
        device_addrs.push(addr);
        let base = next_link;
        next_link += LINK_ID_SPAN;
        match acceptor {
            None => {
                if addr.ip().is_loopback() {
                    tracing::info!(%addr, "plain TCP device link listening (no authentication)");
                } else {
                    tracing::warn!(%addr, "plain TCP device link listening beyond loopback: any host can claim any device id");
                }
                tokio::spawn(link::tcp::serve(listener, base, link_tx.clone()));
            }
            Some((acceptor, handshake_timeout)) => {
                tracing::info!(%addr, "TLS device link listening (client certificates required)");
                tokio::spawn(link::tls::serve(
                    listener,
                    base,
                    link_tx.clone(),
                    acceptor,
                    handshake_timeout,
                ));
            }
        }
    }
    let mut ready = Some((
        ready,
        Ready {
            mqtt: mqtt_addr,
            devices: device_addrs,
        },
    ));

    let mut broker_stopped = broker_stopped;
    let mut connected = false;
    // Outbox keys handed to the MQTT driver and not acknowledged yet, and where the next
    // read of the outbox starts.
    let mut offered: HashSet<u64> = HashSet::new();
    let mut next_offer = 0u64;
    let mut next_wake: Option<u64> = None;
    let mut stats = tokio::time::interval(config.stats_interval);
    loop {
        let wake_in = next_wake.map_or(Duration::from_secs(3600), |w| {
            Duration::from_millis(w.saturating_sub(wall_ms()).max(1))
        });
        tokio::select! {
            input = api_rx.recv() => {
                let Some(input) = input else { return Err(RunError::Stopped("MQTT driver stopped".into())) };
                // Everything already waiting joins the batch: one commit for all.
                let mut submits = Vec::new();
                let mut next = Some(input);
                while let Some(i) = next.take().or_else(|| api_rx.try_recv().ok()) {
                    match i {
                        ApiInput::Submit { payload, accepted } => submits.push((payload, accepted)),
                        ApiInput::Cancel { id, done } => engine.cancel(&id, done),
                    }
                    if submits.len() >= 512 {
                        break;
                    }
                }
                if !submits.is_empty() {
                    engine.submit_batch(submits)?;
                }
            }
            event = link_rx.recv() => {
                if let Some(event) = event {
                    // Everything already waiting joins the batch: one commit for all.
                    let mut batch = vec![event];
                    while batch.len() < 512 {
                        let Ok(e) = link_rx.try_recv() else { break };
                        batch.push(e);
                    }
                    engine.on_links(batch);
                }
            }
            event = mqtt_ev_rx.recv() => {
                let Some(event) = event else {
                    return Err(RunError::Stopped("MQTT driver stopped".into()));
                };
                // Everything already waiting joins the turn: the broker's acknowledgements
                // come one per event, and each turn is a commit.
                let mut next = Some(event);
                let mut taken = 0;
                while let Some(event) = next.take().or_else(|| mqtt_ev_rx.try_recv().ok()) {
                    match event {
                        MqttEvent::Connected => {
                            connected = true;
                            // A new connection starts over from the oldest unacknowledged
                            // event.
                            offered.clear();
                            next_offer = 0;
                        }
                        MqttEvent::Subscribed => {
                            if let Some((announce, addrs)) = ready.take() {
                                announce(&addrs);
                            }
                        }
                        MqttEvent::Published(keys) => {
                            engine.queue_mut().published(&keys);
                            for k in keys {
                                offered.remove(&k);
                            }
                        }
                        MqttEvent::Disconnected(why) => {
                            if connected {
                                tracing::warn!(%why, "MQTT disconnected; events wait in the outbox");
                            }
                            connected = false;
                        }
                    }
                    taken += 1;
                    if taken >= 1024 {
                        break;
                    }
                }
            }
            _ = stats.tick() => {
                let stats = engine.stats_json();
                let _ = pub_tx.try_send(Publication { key: 0, topic: format!("{root}/bridge/stats"), payload: stats, retain: true });
            }
            () = tokio::time::sleep(wake_in) => {}
            why = async { match broker_stopped.as_mut() { Some(s) => s.await.unwrap_or_default(), None => std::future::pending().await } } => {
                return Err(RunError::Stopped(why));
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping");
                let offline = serde_json::json!({ "online": false, "reason": "stopped" }).to_string();
                let _ = client.try_publish(format!("{root}/bridge/status"), rumqttc::QoS::AtLeastOnce, true, offline);
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
        }
        // One commit per turn of the loop covers the inputs above and the dispatch
        // decisions; acknowledgements and Assigns go out after it.
        next_wake = engine.dispatch();
        engine.commit()?;
        if connected && offered.len() < PUBLISH_WINDOW {
            let room = PUBLISH_WINDOW - offered.len();
            for (key, entry) in engine.queue().outbox_from(next_offer, room)? {
                let publication = Publication {
                    key,
                    topic: format!("{root}/{}", entry.subtopic),
                    payload: entry.payload,
                    retain: entry.retain,
                };
                if pub_tx.try_send(publication).is_err() {
                    break;
                }
                offered.insert(key);
                next_offer = key + 1;
            }
        }
    }
}

/// Connections a device listener queues before it accepts them. A fleet reconnecting at
/// once after a restart overflows the usual 128 (each overflow costs a device a 1 s SYN
/// retransmission).
const DEVICE_BACKLOG: u32 = 1024;

/// A TCP listener for device links with a [`DEVICE_BACKLOG`]-deep accept queue.
fn device_listener(listen: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's `bind` do on Unix: a restarted bridge can listen again at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(DEVICE_BACKLOG)
}

/// Link ids each listener may use, from its base: 2^48 connections (2^32 ran out after
/// about 248 days at 200 DTLS handshakes a second and spilled into the next listener's ids).
const LINK_ID_SPAN: u64 = 1 << 48;
