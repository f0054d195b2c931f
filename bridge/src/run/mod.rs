//! `edge-bridge run`: wires the queue, the broker, the MQTT driver, the device links and the
//! engine, and runs until a stop signal or a fatal error.
//!
//! The run loop only moves messages: it takes inputs from the MQTT driver and the links, hands
//! them to the [`Engine`] with the time, commits once per turn, and delivers what the commit
//! released (acknowledgements, commands for links) and what the outbox holds (to the MQTT
//! driver). Every decision is the engine's.
//!
//! # Layout
//! - `mod.rs`: start-up and the run loop (this file).
//! - `links`: starting the configured device links, one function per kind.
//! - `pump`: which outbox entries to hand the MQTT driver next.
//! - `signals`: SIGTERM and SIGINT.
//! - `notify`: systemd's READY, WATCHDOG and STOPPING notifications.
//! - `storage`: the data directory's free space, and its reserve.

mod links;
mod notify;
mod pump;
mod signals;
mod storage;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use broker_config::{BrokerConfig, Config};
use tokio::sync::{mpsc, oneshot};

use crate::api::{BridgeStatus, OfflineReason};
use crate::broker::loss::CursorJump;
use crate::engine::{Engine, Leases, LinkInput, Released, ResourcePolicy, Retry, Ticket, Urgency};
use crate::link::commands::CommandSender;
use crate::link::{self, LinkCommand, LinkEvent, LinkId};
use crate::metrics::http::SnapshotRequest;
use crate::metrics::{LinkKind, Snapshot};
use crate::mqtt::{self, ApiInput, MqttEvent, MqttSettings, Publication};
use crate::queue::{Queue, QueueError};
use crate::time::Clock;

use notify::Notifier;
use pump::OutboxPump;
use signals::StopSignals;
use storage::Storage;

/// Outbox entries handed to the MQTT driver and not yet acknowledged, at most (below
/// `mqtt::INFLIGHT`, so the driver never blocks on its own window).
const PUBLISH_WINDOW: usize = 200;

/// Inputs of one kind taken into one turn, at most: a turn is one commit, and a flood of one
/// kind must not keep the others waiting for long.
const TURN_BATCH: usize = 512;

/// How long a stopping bridge waits for the MQTT client to take its "offline" status and
/// DISCONNECT, and then for the connection to close cleanly (so the broker discards the last
/// will).
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// A device link's socket could not be opened.
    #[error("device link {addr}: {source}")]
    Link {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The embedded broker's users file cannot be used.
    #[error(transparent)]
    Config(#[from] broker_config::ConfigError),
    /// A TLS device link's certificate, key or client CA cannot be used.
    #[error(transparent)]
    LinkTls(#[from] link::tls::LinkTlsError),
    /// A DTLS device link's keys, certificates or cipher list cannot be used.
    #[error(transparent)]
    LinkDtls(#[from] link::dtls::LinkDtlsError),
    /// The stop signals could not be installed.
    #[error("installing the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The embedded broker stopped on its own.
    #[error("the embedded MQTT broker stopped: {0}")]
    BrokerStopped(String),
    /// The MQTT driver's task ended (it ends only when the bridge does).
    #[error("the MQTT driver stopped")]
    MqttStopped,
    /// The metrics endpoint's socket could not be opened.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The addresses the bridge ended up listening on (port 0 resolved).
#[derive(Clone, Debug)]
pub struct Ready {
    pub mqtt: SocketAddr,
    pub devices: Vec<SocketAddr>,
    /// The metrics endpoint, when `[metrics] listen` turns it on.
    pub metrics: Option<SocketAddr>,
}

/// Runs the bridge; `ready` is called once everything listens and the MQTT API is live
/// (subscriptions acknowledged), so a client that sees it can submit at once. `jumps` are the
/// embedded broker's cursor jumps ([`crate::broker::loss`]; none with an external broker).
/// Returns `Ok` after a stop signal, once the bridge said it is offline.
pub async fn run(
    config: Config,
    jumps: mpsc::UnboundedReceiver<CursorJump>,
    announce: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    let signals = StopSignals::listen().map_err(RunError::Signals)?;
    // Before the queue opens: on a full disk the reserve is given back, so it can.
    let mut storage = Storage::open(&config.data_dir, config.storage.clone());
    let mut queue = Queue::open(&config.data_dir, config.queue.limit)?;
    queue.set_outbox_limit(config.queue.outbox_limit);
    queue.set_storage_full(storage.poll());
    // The timer clock continues from where the queue's last commit left it, so a restart
    // neither expires nor delays what waits (DESIGN.md, "Time").
    let clock = Clock::resume(queue.stored_anchor());
    queue.set_anchor(clock.anchor(clock.now()));
    tracing::info!(
        data_dir = %config.data_dir.display(),
        live = queue.len(),
        outbox = queue.outbox_len(),
        clock_ms = clock.now().ms,
        "queue opened"
    );
    let retry = Retry::new(
        config.queue.max_attempts,
        config.queue.retry_initial,
        config.queue.retry_max,
    );
    let mut engine = Engine::new(queue, retry, crate::backoff::seed_from_clock());
    engine.set_urgency(urgency(&config.urgent));
    engine.set_leases(leases(&config.queue));
    engine.set_unproven_claims(config.identity.unproven_claims);
    engine.set_forget_after(config.devices.forget_after);
    engine.set_class_quotas([
        100,
        config.classes.guaranteed_max_percent,
        config.classes.besteffort_max_percent,
    ]);
    engine.set_resources(
        config
            .resources
            .iter()
            .map(|r| {
                let policy = ResourcePolicy {
                    ceiling: r.ceiling,
                    inheritance: r.inheritance,
                };
                (r.name.clone(), policy)
            })
            .collect(),
    );

    let (broker_stopped, settings) = start_broker(&config)?;
    // An answer to a query is one message: within the packet limit, with room for its topic.
    let reply_topic = settings.root.len() + "/query/replies/".len() + crate::api::MAX_ID;
    engine.set_answer_limit(settings.max_packet_bytes.saturating_sub(reply_topic + 16));
    let mqtt_addr = format!("{}:{}", settings.host, settings.port)
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], settings.port)));
    let root = settings.root.clone();
    let client_id = settings.client_id.clone();
    let (api_tx, api) = mpsc::channel::<ApiInput>(1024);
    let (mqtt_tx, mqtt_events) = mpsc::channel::<MqttEvent>(1024);
    let (publish, pub_rx) = mpsc::channel::<Publication>(PUBLISH_WINDOW + 16);
    let (client, eventloop) = mqtt::connect(&settings);
    tokio::spawn(mqtt::run(
        settings,
        client.clone(),
        eventloop,
        api_tx,
        mqtt_tx,
        pub_rx,
    ));

    let (link_tx, link_events) = mpsc::channel::<LinkEvent>(1024);
    let devices = links::start(&config.links, &link_tx).await?;
    drop(link_tx);
    let (metrics, scrapes) = match config.metrics.listen {
        Some(listen) => {
            let (addr, scrapes) = start_metrics(listen).await?;
            (Some(addr), Some(scrapes))
        }
        None => (None, None),
    };
    let ready = Ready {
        mqtt: mqtt_addr,
        devices,
        metrics,
    };
    let notifier = Notifier::from_env();
    let watchdog = notifier.watchdog_interval().map(|period| {
        let mut interval = tokio::time::interval(period);
        // After a slow turn, one ping, not a burst of the missed ones.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });

    let mut driver = Driver {
        engine,
        clock,
        api_filters: mqtt::api_filters(&root),
        root,
        client_id,
        tickets: Tickets::default(),
        links: HashMap::new(),
        pump: OutboxPump::new(PUBLISH_WINDOW),
        publish,
        client,
        storage,
        notifier,
        answers: Vec::new(),
        link_kinds: config.links.iter().map(LinkKind::of).collect(),
        broker_connections: 0,
    };
    let inputs = Inputs {
        api,
        links: link_events,
        mqtt: mqtt_events,
        broker_stopped,
        jumps,
        signals,
        stats: tokio::time::interval(config.stats_interval),
        watchdog,
        scrapes,
    };
    driver.run(inputs, Some((announce, ready))).await
}

/// Starts the metrics endpoint on `listen`: the address it got, and where its scrapes ask the
/// run loop for snapshots.
async fn start_metrics(
    listen: SocketAddr,
) -> Result<(SocketAddr, mpsc::Receiver<SnapshotRequest>), RunError> {
    let (addr, scrapes) = crate::metrics::http::start(listen)
        .await
        .map_err(|source| RunError::Metrics {
            addr: listen,
            source,
        })?;
    tracing::info!(%addr, "metrics endpoint listening (GET /metrics)");
    Ok((addr, scrapes))
}

/// The engine's grace period and execution leases from the `[queue]` settings.
fn leases(config: &broker_config::QueueConfig) -> Leases {
    Leases {
        grace_ms: config.device_grace.as_millis() as u64,
        per_capability: config
            .capabilities
            .iter()
            .map(|(name, c)| (name.clone(), c.execution_timeout.as_millis() as u64))
            .collect(),
        default_ms: config.execution_timeout.as_millis() as u64,
    }
}

/// The engine's urgency policy from the `[urgent]` settings.
fn urgency(config: &broker_config::UrgentConfig) -> Urgency {
    Urgency {
        urgent_at: config.urgent_at,
        reserve: config.reserve,
        per_device: config
            .devices
            .iter()
            .map(|(id, d)| (id.clone(), d.reserve))
            .collect(),
        max_preemptions: config.max_preemptions,
    }
}

/// Starts the embedded broker if the configuration asks for it; the MQTT driver's settings
/// either way.
fn start_broker(
    config: &Config,
) -> Result<(Option<oneshot::Receiver<String>>, MqttSettings), RunError> {
    let client_id = format!("edge-bridge-{}", config.bridge_id);
    let root = config.root();
    Ok(match &config.broker {
        BrokerConfig::Embedded {
            listen,
            max_packet_bytes,
            max_connections,
            api_log_bytes,
            users_file,
            allow_anonymous,
            tls,
        } => {
            let api = crate::broker::ApiLog {
                filters: mqtt::api_filters(&root).to_vec(),
                bytes: *api_log_bytes,
            };
            let users = users_file
                .as_deref()
                .map(broker_config::load_users_file)
                .transpose()?;
            if users.is_none() && *allow_anonymous && !listen.ip().is_loopback() {
                tracing::warn!(%listen, "the embedded broker takes clients without a login beyond loopback (allow_anonymous): anyone who reaches it can submit, cancel and impersonate the bridge; set broker.users_file");
            }
            let access = crate::broker::Access::new(users, client_id.clone());
            let (addr, stopped) =
                crate::broker::start(*listen, *max_packet_bytes, *max_connections, &api, &access)?;
            tracing::info!(%addr, users = access.users.as_ref().map_or(0, |u| u.len()), "embedded MQTT broker started");
            if let Some(t) = tls {
                let acceptor = crate::broker::tls::acceptor(t)?;
                let listener = std::net::TcpListener::bind(t.listen)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|source| crate::broker::BrokerError::Listen {
                        addr: t.listen,
                        source,
                    })?;
                let local = listener.local_addr().unwrap_or(t.listen);
                if access.users.is_none() && !local.ip().is_loopback() {
                    tracing::warn!(listen = %local, "MQTT over TLS beyond loopback without users (allow_anonymous): anyone who reaches it can submit, cancel and impersonate the bridge");
                }
                tracing::info!(listen = %local, "embedded MQTT broker: MQTT over TLS");
                tokio::spawn(crate::broker::tls::serve(
                    listener,
                    acceptor,
                    addr,
                    t.max_handshakes,
                ));
            }
            let settings = MqttSettings {
                host: addr.ip().to_string(),
                port: addr.port(),
                bridge_id: config.bridge_id.clone(),
                client_id,
                credentials: access.users.is_some().then(|| access.bridge_login.clone()),
                root,
                max_packet_bytes: *max_packet_bytes,
                tls: None,
                anonymous_own_broker: access.users.is_none(),
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
                bridge_id: config.bridge_id.clone(),
                client_id,
                credentials: username
                    .clone()
                    .map(|u| (u, password.clone().unwrap_or_default())),
                root,
                max_packet_bytes: *max_packet_bytes,
                tls: tls.as_ref().map(crate::tls::client_config).transpose()?,
                anonymous_own_broker: false,
            };
            (None, settings)
        }
    })
}

/// Where the run loop's inputs come from.
struct Inputs {
    api: mpsc::Receiver<ApiInput>,
    links: mpsc::Receiver<LinkEvent>,
    mqtt: mpsc::Receiver<MqttEvent>,
    /// Answered if the embedded broker dies (none with an external broker).
    broker_stopped: Option<oneshot::Receiver<String>>,
    /// The embedded broker's cursor jumps: messages it dropped before a client read them.
    jumps: mpsc::UnboundedReceiver<CursorJump>,
    signals: StopSignals,
    stats: tokio::time::Interval,
    /// Pings systemd's watchdog (`WatchdogSec=`), when it has one.
    watchdog: Option<tokio::time::Interval>,
    /// Scrapes of the metrics endpoint asking for a snapshot (none when it is off).
    scrapes: Option<mpsc::Receiver<SnapshotRequest>>,
}

/// Answers waiting for a commit, by the ticket the engine knows them by.
#[derive(Debug, Default)]
struct Tickets {
    next: Ticket,
    waiting: HashMap<Ticket, oneshot::Sender<()>>,
}

impl Tickets {
    fn issue(&mut self, answer: oneshot::Sender<()>) -> Ticket {
        self.next += 1;
        self.waiting.insert(self.next, answer);
        self.next
    }

    fn release(&mut self, ticket: Ticket) {
        if let Some(answer) = self.waiting.remove(&ticket) {
            // The receiver may be gone (its link closed): nothing left to acknowledge.
            let _ = answer.send(());
        }
    }
}

/// The run loop's state: the engine and what stands between it and the channels.
struct Driver {
    engine: Engine,
    clock: Clock,
    root: String,
    /// The bridge's MQTT client id and subscriptions: a cursor jump of theirs is a loss of
    /// submissions or cancels.
    client_id: String,
    api_filters: [String; 2],
    tickets: Tickets,
    /// Where each open link takes its commands.
    links: HashMap<LinkId, CommandSender>,
    pump: OutboxPump,
    publish: mpsc::Sender<Publication>,
    /// For the stop: the last publish and a clean disconnect.
    client: rumqttc::AsyncClient,
    /// Free space of the data directory: measured before each batch of submissions and on
    /// each stats tick, so that the bridge notices by itself when space returns.
    storage: Storage,
    /// systemd's READY, WATCHDOG and STOPPING notifications (nothing without systemd).
    notifier: Notifier,
    /// Answers to queries, published after the turn's commit (an answer never shows a task
    /// that a crash could still lose).
    answers: Vec<Publication>,
    /// The kind of each configured link, in order: a link id tells its listener
    /// ([`links::listener_of`]), so sessions are counted per kind.
    link_kinds: Vec<LinkKind>,
    /// Connections to the MQTT broker made since the start (metrics).
    broker_connections: u64,
}

impl Driver {
    async fn run(
        &mut self,
        mut inputs: Inputs,
        mut ready: Option<(impl FnOnce(&Ready), Ready)>,
    ) -> Result<(), RunError> {
        // The queue is open and every device listener bound: devices run their tasks from now
        // on, whether or not the broker is reachable yet (STATUS says which).
        self.notifier
            .ready("running; connecting to the MQTT broker");
        loop {
            let wake = self
                .engine
                .poll_timeout()
                .map(|ms| self.clock.instant_at(ms))
                .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                input = inputs.api.recv() => {
                    let first = input.ok_or(RunError::MqttStopped)?;
                    self.on_api(first, &mut inputs.api)?;
                }
                Some(event) = inputs.links.recv() => self.on_links(event, &mut inputs.links),
                event = inputs.mqtt.recv() => {
                    let first = event.ok_or(RunError::MqttStopped)?;
                    self.on_mqtt_batch(first, &mut inputs.mqtt, &mut ready);
                }
                _ = inputs.stats.tick() => {
                    let full = self.storage.poll();
                    self.engine.set_storage_full(full);
                    let mut stats = self.engine.stats(self.clock.now());
                    stats.storage = self.storage.stats();
                    let publication = Publication {
                        key: 0,
                        topic: format!("{}/bridge/stats", self.root),
                        payload: stats.to_json(),
                        retain: true,
                        at_most_once: false,
                    };
                    // Periodic and retained: a stats document that finds the channel full
                    // is replaced by the next.
                    let _ = self.publish.try_send(publication);
                }
                Some(jump) = inputs.jumps.recv() => self.on_jump(jump),
                Some(reply) = async {
                    match inputs.scrapes.as_mut() {
                        Some(scrapes) => scrapes.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Between two turns: every figure is from the last commit. Nothing
                    // changed, so no turn follows.
                    let _ = reply.send(self.metrics());
                    continue;
                }
                _ = async {
                    match inputs.watchdog.as_mut() {
                        Some(interval) => interval.tick().await,
                        None => std::future::pending().await,
                    }
                } => self.notifier.watchdog(),
                () = tokio::time::sleep_until(wake.into()) => {}
                why = async {
                    match inputs.broker_stopped.as_mut() {
                        Some(s) => s.await.unwrap_or_default(),
                        None => std::future::pending().await,
                    }
                } => return Err(RunError::BrokerStopped(why)),
                signal = inputs.signals.requested() => {
                    // Every turn ends with a commit: these tasks are the queue the next
                    // start opens.
                    let live = self.engine.queue().len();
                    tracing::info!(signal, live, "stop requested; stopping");
                    self.notifier.stopping();
                    return self.stop(&mut inputs).await;
                }
            }
            self.join_waiting(&mut inputs, &mut ready)?;
            self.turn()?;
        }
    }

    /// Inputs of the other kinds already waiting join the turn the `select!` started: one
    /// commit (one fsync) for all of them, not one per kind (under load, 0.49 fsyncs per echo
    /// task instead of 0.69: BENCHMARKS.md, "CPU per task").
    fn join_waiting(
        &mut self,
        inputs: &mut Inputs,
        ready: &mut Option<(impl FnOnce(&Ready), Ready)>,
    ) -> Result<(), RunError> {
        if let Ok(first) = inputs.api.try_recv() {
            self.on_api(first, &mut inputs.api)?;
        }
        if let Ok(first) = inputs.links.try_recv() {
            self.on_links(first, &mut inputs.links);
        }
        if let Ok(first) = inputs.mqtt.try_recv() {
            self.on_mqtt_batch(first, &mut inputs.mqtt, ready);
        }
        Ok(())
    }

    /// MQTT driver events: everything already waiting joins the turn. The first
    /// subscription acknowledged makes the bridge announce that it is ready.
    fn on_mqtt_batch(
        &mut self,
        first: MqttEvent,
        more: &mut mpsc::Receiver<MqttEvent>,
        ready: &mut Option<(impl FnOnce(&Ready), Ready)>,
    ) {
        for event in batch(first, more, 2 * TURN_BATCH) {
            if matches!(event, MqttEvent::Subscribed) {
                if let Some((announce, addrs)) = ready.take() {
                    announce(&addrs);
                }
            }
            self.on_mqtt(event);
        }
    }

    /// Submissions and cancels: everything already waiting joins the turn.
    fn on_api(
        &mut self,
        first: ApiInput,
        more: &mut mpsc::Receiver<ApiInput>,
    ) -> Result<(), RunError> {
        let now = self.clock.now();
        let mut submissions = Vec::new();
        for input in batch(first, more, TURN_BATCH) {
            match input {
                ApiInput::Submit { payload, accepted } => {
                    submissions.push((payload, self.tickets.issue(accepted)));
                }
                ApiInput::Retained {
                    topic,
                    payload,
                    done,
                } => {
                    let ticket = self.tickets.issue(done);
                    self.engine.handle_retained(&topic, &payload, ticket, now);
                }
                ApiInput::Query { payload } => {
                    // After the submissions before it, so a client that submitted and then
                    // asked sees its task.
                    if !submissions.is_empty() {
                        self.engine
                            .handle_submissions(std::mem::take(&mut submissions), now)?;
                    }
                    if let Some((subtopic, payload)) = self.engine.handle_query(&payload, now)? {
                        self.answers.push(Publication {
                            key: 0,
                            topic: format!("{}/{subtopic}", self.root),
                            payload,
                            retain: false,
                            at_most_once: true,
                        });
                    }
                }
                ApiInput::Cancel { id, done } => {
                    // In arrival order: the submissions before it first, so a cancel right
                    // behind its submission finds the task.
                    if !submissions.is_empty() {
                        self.engine
                            .handle_submissions(std::mem::take(&mut submissions), now)?;
                    }
                    let ticket = self.tickets.issue(done);
                    self.engine.handle_cancel(&id, ticket, now)?;
                }
            }
        }
        if !submissions.is_empty() {
            let full = self.storage.poll();
            self.engine.set_storage_full(full);
            self.engine.handle_submissions(submissions, now)?;
        }
        Ok(())
    }

    /// Link events: everything already waiting joins the turn. The link's channels stay
    /// here; the engine gets tickets and link ids.
    fn on_links(&mut self, first: LinkEvent, more: &mut mpsc::Receiver<LinkEvent>) {
        let now = self.clock.now();
        for event in batch(first, more, TURN_BATCH) {
            let (link, input) = match event {
                LinkEvent::Up {
                    link,
                    peer,
                    hello,
                    rebooted,
                    credit,
                    credential,
                    commands,
                } => {
                    self.links.insert(link, commands);
                    (
                        link,
                        LinkInput::Up {
                            peer,
                            hello,
                            rebooted,
                            credit,
                            credential,
                        },
                    )
                }
                LinkEvent::Credit {
                    link,
                    credit,
                    taken,
                } => (link, LinkInput::Credit { credit, taken }),
                LinkEvent::Report {
                    link,
                    report,
                    committed,
                } => {
                    let ticket = self.tickets.issue(committed);
                    (link, LinkInput::Report { report, ticket })
                }
                LinkEvent::Reject {
                    link,
                    reject,
                    committed,
                } => {
                    let ticket = self.tickets.issue(committed);
                    (link, LinkInput::Reject { reject, ticket })
                }
                LinkEvent::Refused { link, handle } => (link, LinkInput::Refused { handle }),
                LinkEvent::Suspended {
                    link,
                    suspended,
                    committed,
                } => {
                    let ticket = self.tickets.issue(committed);
                    let handle = suspended.handle;
                    let checkpoint = link::checkpoint_of(&suspended);
                    (
                        link,
                        LinkInput::Suspended {
                            handle,
                            checkpoint,
                            ticket,
                        },
                    )
                }
                LinkEvent::PreemptNotSent { link, handle } => {
                    (link, LinkInput::PreemptNotSent { handle })
                }
                LinkEvent::Down { link, reason } => {
                    self.links.remove(&link);
                    (link, LinkInput::Down { reason })
                }
            };
            self.engine.handle_link(link, input, now);
        }
    }

    /// A cursor jump in the embedded broker: the bridge's own is reported as lost
    /// submissions; another client's is logged (that client lost messages it subscribed to).
    fn on_jump(&mut self, jump: CursorJump) {
        if jump.client_id == self.client_id && self.api_filters.contains(&jump.filter) {
            self.engine
                .handle_broker_loss(&jump.filter, jump.lost, self.clock.now());
        } else {
            tracing::warn!(
                client_id = jump.client_id,
                filter = jump.filter,
                lost = jump.lost,
                "the embedded broker dropped messages before a client read them"
            );
        }
    }

    /// A metrics snapshot: the engine's figures, and the sessions and broker connection the
    /// run loop knows of.
    fn metrics(&self) -> Snapshot {
        let mut snapshot = self.engine.metrics(self.clock.now());
        for link in self.links.keys() {
            if let Some(kind) = self.link_kinds.get(links::listener_of(*link)) {
                snapshot.sessions[*kind as usize] += 1;
            }
        }
        snapshot.broker_connected = self.pump.is_connected();
        snapshot.broker_connections = self.broker_connections;
        snapshot
    }

    fn on_mqtt(&mut self, event: MqttEvent) {
        match event {
            MqttEvent::Connected => {
                self.broker_connections += 1;
                self.pump.connected();
            }
            MqttEvent::Subscribed => self
                .notifier
                .status(&format!("running; MQTT API live on {}", self.root)),
            MqttEvent::Published(keys) => {
                self.pump.published(&keys);
                self.engine.handle_published(&keys);
            }
            MqttEvent::Disconnected(why) => {
                if self.pump.disconnected() {
                    tracing::warn!(%why, "MQTT disconnected; events wait in the outbox");
                    self.notifier
                        .status("running; MQTT broker unreachable, events wait in the outbox");
                }
            }
        }
    }

    /// The end of a turn: dispatch, one commit for everything the turn handled, then what it
    /// released, then what the outbox holds.
    fn turn(&mut self) -> Result<(), RunError> {
        self.engine.dispatch(self.clock.now());
        let released = self.engine.commit()?;
        if let Some(key) = released.appended {
            self.pump.appended(key);
        }
        self.deliver(released);
        if let Some((from, max)) = self.pump.want() {
            let pump = &self.pump;
            let entries =
                (self.engine.queue()).outbox_skipping(from, max, |k| pump.is_offered(k))?;
            for (key, entry) in entries {
                let publication = Publication {
                    key,
                    topic: format!("{}/{}", self.root, entry.subtopic),
                    payload: entry.payload,
                    retain: entry.retain,
                    at_most_once: false,
                };
                if self.publish.try_send(publication).is_err() {
                    break;
                }
                self.pump.offered(key);
            }
        }
        // Last, after acknowledgements and events: best effort, like the stats (a client
        // that gets no answer asks again).
        for answer in self.answers.drain(..) {
            if self.publish.try_send(answer).is_err() {
                tracing::debug!("MQTT driver busy; a query's answer is dropped");
            }
        }
        Ok(())
    }

    fn deliver(&mut self, released: Released) {
        for ticket in released.tickets {
            self.tickets.release(ticket);
        }
        let now = self.clock.now();
        // Answers the outbox had no room for: once, best effort (key 0: no acknowledgement
        // is reported for it, and nothing waits for one).
        for entry in released.unstored {
            let publication = Publication {
                key: 0,
                topic: format!("{}/{}", self.root, entry.subtopic),
                payload: entry.payload,
                retain: entry.retain,
                at_most_once: false,
            };
            if self.publish.try_send(publication).is_err() {
                tracing::warn!(topic = %entry.subtopic, "an unstored answer could not be published");
            }
        }
        for (link, command) in released.commands {
            let Some(tx) = self.links.get(&link) else {
                // The link has ended: its tasks wait for the device (or its next link).
                tracing::debug!(link, "link command for a link that has ended");
                continue;
            };
            if let Err(e) = tx.try_send(command) {
                // The link's queue is full (a device not keeping up): an Assign goes back
                // to the queue as if its session had refused it; a take-back may pick
                // another task.
                let command = match e {
                    mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
                };
                tracing::warn!(
                    link,
                    ?command,
                    "link command not delivered: the link's queue is full"
                );
                match command {
                    LinkCommand::Assign(a) => {
                        let input = LinkInput::Refused { handle: a.handle };
                        self.engine.handle_link(link, input, now);
                    }
                    LinkCommand::Preempt { handle } => {
                        let input = LinkInput::PreemptNotSent { handle };
                        self.engine.handle_link(link, input, now);
                    }
                    _ => {}
                }
            }
        }
    }

    /// A clean stop: the retained "offline" status, then a DISCONNECT, so the broker discards
    /// the last will. Both go straight to the MQTT client, in that order on one connection, so
    /// the broker has the status before the connection ends (waiting for its PUBACK as well
    /// would add nothing). Bounded: each step waits at most `STOP_TIMEOUT`.
    ///
    /// Meanwhile the MQTT driver's inputs are drained: it waits for room in both channels,
    /// and a driver stalled on a full one would never pass the status on. Submissions still
    /// arriving are dropped unacknowledged (the broker redelivers them to the next run), and
    /// broker acknowledgements too (those events are published again: at least once).
    async fn stop(&mut self, inputs: &mut Inputs) -> Result<(), RunError> {
        if !self.pump.is_connected() {
            tracing::info!("stopped (not connected to the MQTT broker)");
            return Ok(());
        }
        let topic = format!("{}/bridge/status", self.root);
        let offline = BridgeStatus::offline(OfflineReason::Stopped).to_json();
        let client = &self.client;
        let goodbye = async {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, true, offline)
                .await?;
            client.disconnect().await
        };
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let requested = tokio::select! {
            sent = tokio::time::timeout_at(deadline, goodbye) => matches!(sent, Ok(Ok(()))),
            never = drain(&mut inputs.api) => match never {},
            never = drain(&mut inputs.mqtt) => match never {},
        };
        if !requested {
            tracing::warn!(
                "stopped; the MQTT client took no offline status in time (the broker will publish the last will)"
            );
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        let closed = tokio::select! {
            closed = tokio::time::timeout_at(deadline, async {
                while let Some(event) = inputs.mqtt.recv().await {
                    if matches!(event, MqttEvent::Disconnected(_)) {
                        return true;
                    }
                }
                false
            }) => matches!(closed, Ok(true)),
            never = drain(&mut inputs.api) => match never {},
        };
        if closed {
            tracing::info!("stopped");
        } else {
            tracing::warn!("stopped; the MQTT connection did not close cleanly in time");
        }
        Ok(())
    }
}

/// Receives and drops what `rx` brings; never returns (a closed channel has nothing more).
async fn drain<T>(rx: &mut mpsc::Receiver<T>) -> std::convert::Infallible {
    while rx.recv().await.is_some() {}
    std::future::pending().await
}

/// `first` and whatever is already waiting behind it in `more`, up to `max` in all.
fn batch<T>(first: T, more: &mut mpsc::Receiver<T>, max: usize) -> Vec<T> {
    let mut all = vec![first];
    while all.len() < max {
        let Ok(next) = more.try_recv() else { break };
        all.push(next);
    }
    all
}
