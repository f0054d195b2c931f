//! The MQTT driver: one task owning the rumqttc event loop.
//!
//! - Subscribes (QoS 1, persistent session) to `{root}/tasks/submit` and
//!   `{root}/tasks/+/cancel`; a submission is acknowledged (manual PUBACK) only when the
//!   engine says it is committed, so a broker redelivers anything the bridge had not stored.
//! - Publishes what the engine hands it (outbox entries, QoS 1) and reports each entry's
//!   key back once the broker's PUBACK arrived, so the outbox forgets only what the broker has.
//! - Publishes the retained `{root}/bridge/status` on every connection, with a last will
//!   saying the opposite.
//! - Reconnects with exponential backoff and jitter; the event loop is polled continuously
//!   and never waits on its own request channel (requests are sent with `try_*`, or from
//!   separate tasks).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::api::{BridgeStatus, OfflineReason};
use crate::backoff::{Backoff, SplitMix64, seed_from_clock};

/// What the driver hands the run loop from the MQTT API. Each carries the answer that
/// releases the message's acknowledgement (PUBACK): sent after the commit that covers it.
#[derive(Debug)]
pub enum ApiInput {
    /// A message on `{root}/tasks/submit`.
    Submit {
        payload: Vec<u8>,
        accepted: oneshot::Sender<()>,
    },
    /// A message on `{root}/tasks/{id}/cancel`.
    Cancel {
        id: String,
        done: oneshot::Sender<()>,
    },
    /// A message on `{root}/query/tasks`: answered from memory, nothing to commit.
    Query { payload: Vec<u8> },
    /// A retained message on a submit or cancel topic, delivered by the broker on (re)subscribe:
    /// refused (it would act again on every reconnect) and cleared; `done` once the refusal is
    /// recorded.
    Retained {
        topic: String,
        payload: Vec<u8>,
        done: oneshot::Sender<()>,
    },
}

/// rumqttc's outgoing QoS 1 window: above the engine's publish window plus the status and
/// stats publishes.
pub const INFLIGHT: u16 = 512;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    /// The configured `bridge_id`, which `{root}/bridge/status` names (the client id is
    /// derived from it but is not what an operator configured).
    pub bridge_id: String,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub root: String,
    pub max_packet_bytes: usize,
    /// TLS to the broker; plain TCP without.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The broker is the bridge's own (embedded) and takes anyone: it drops the bridge's
    /// connection only for a client that connected with the bridge's client id.
    pub anonymous_own_broker: bool,
}

/// A message the engine wants published; `key` comes back in [`MqttEvent::Published`].
#[derive(Clone, Debug)]
pub struct Publication {
    pub key: u64,
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    /// Sent at QoS 0: an answer its asker asks again for if it is lost, which must hold no
    /// place in the QoS 1 window that submissions' acknowledgements and events share.
    pub at_most_once: bool,
}

/// From the driver to the engine.
#[derive(Debug)]
pub enum MqttEvent {
    /// Connected (again): everything not yet acknowledged may be offered again.
    Connected,
    /// The API subscriptions are acknowledged: submissions reach the bridge from now on.
    Subscribed,
    /// The broker acknowledged these outbox keys.
    Published(Vec<u64>),
    Disconnected(String),
}

/// The topic filters the bridge subscribes to under `root`: submissions, then cancels.
pub fn api_filters(root: &str) -> [String; 2] {
    [
        format!("{root}/tasks/submit"),
        format!("{root}/tasks/+/cancel"),
    ]
}

/// The topic of queries ("why is my task waiting?"): answered on
/// `{root}/query/replies/{reply}`. Not one of [`api_filters`]: a query lost in a burst is
/// asked again, and is no submission to account for.
pub fn query_filter(root: &str) -> String {
    format!("{root}/query/tasks")
}

/// What a message on one of the API's topics asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiTopic<'a> {
    /// `{root}/tasks/submit`.
    Submit,
    /// `{root}/tasks/{id}/cancel`: the id is the one topic level the filter's `+` matched
    /// (possibly empty; whether it is a task id is the engine's question).
    Cancel(&'a str),
}

/// What `topic` is under `root`: a submission or a cancel when it matches one of
/// [`api_filters`], `None` otherwise (a topic an older subscription of the persistent session
/// still delivers, say).
pub fn api_topic<'a>(root: &str, topic: &'a str) -> Option<ApiTopic<'a>> {
    let rest = topic.strip_prefix(root)?.strip_prefix("/tasks/")?;
    if rest == "submit" {
        return Some(ApiTopic::Submit);
    }
    let id = rest.strip_suffix("/cancel")?;
    // `+` matches exactly one level.
    (!id.contains('/')).then_some(ApiTopic::Cancel(id))
}

/// Builds the client and its event loop with the bridge's session settings.
pub fn connect(s: &MqttSettings) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(&s.client_id, &s.host, s.port);
    // 60 s, the usual MQTT default: while the engine works through a flood of submissions the
    // driver stops reading (the broker then holds them), and a PINGRESP queued behind them
    // can take longer than 15 s to be read on a busy gateway; a shorter keepalive then
    // drops a healthy connection, and its redelivered in-flight messages add to the load.
    opts.set_keep_alive(Duration::from_secs(60));
    // Persistent session + manual acks: unacknowledged submissions are redelivered.
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(s.max_packet_bytes, s.max_packet_bytes);
    // rumqttc stops taking requests (PUBACKs of submissions included) while its outgoing
    // QoS 1 window is full; the engine bounds its own publishes to PUBLISH_WINDOW, so a larger
    // window here means acknowledgements never wait behind status events.
    opts.set_inflight(INFLIGHT);
    if let Some(tls) = &s.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    if let Some((user, pass)) = &s.credentials {
        opts.set_credentials(user, pass);
    }
    let will = BridgeStatus::offline(OfflineReason::ConnectionLost).to_json();
    opts.set_last_will(LastWill::new(
        format!("{}/bridge/status", s.root),
        will,
        QoS::AtLeastOnce,
        true,
    ));
    // Room for a full outbox window plus the acknowledgements of a burst of submissions.
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    // Status events are small writes: without TCP_NODELAY each waits for the previous one's
    // TCP acknowledgement (Nagle + delayed ACK, ~40 ms on Linux).
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// A connection the broker ends sooner than this after accepting it gets a warning that
/// another client may be using the bridge's client id.
const TAKEOVER_HINT_WITHIN: Duration = Duration::from_secs(10);

/// The largest message the bridge reads to refuse it when it is above the packet limit (see
/// [`oversize`]): beyond this, reading it would take more memory than a small gateway can
/// spare, and the broker must be told to refuse such messages.
pub const MAX_OVERSIZE_READ: usize = 16 * 1024 * 1024;

/// The size of the incoming packet that ended the connection for being above the limit.
fn oversize(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

/// Publications that are not outbox entries kept waiting for room in the request channel.
const WAITING_UNSTORED_MAX: usize = 1024;

/// Runs the driver until `publish` closes.
pub async fn run(
    settings: MqttSettings,
    client: AsyncClient,
    mut eventloop: EventLoop,
    api: mpsc::Sender<ApiInput>,
    events: mpsc::Sender<MqttEvent>,
    mut publish: mpsc::Receiver<Publication>,
) {
    // Keys of our publishes in request order, waiting for their packet id.
    let mut requested: VecDeque<u64> = VecDeque::new();
    let mut by_pkid: HashMap<u16, u64> = HashMap::new();
    let mut failures = 0u32;
    // Set once the bridge sent DISCONNECT (a clean stop): the connection's end is then the
    // end of the driver, not a failure to retry.
    let mut disconnecting = false;
    // Jitter for the reconnection delays, seeded once.
    let mut random = SplitMix64::new(seed_from_clock());
    // SUBACKs still expected on this connection.
    let mut subacks_due = 0u32;
    // When the current connection was accepted (ConnAck), to explain its end.
    let mut connected_at: Option<tokio::time::Instant> = None;
    // Acknowledgements go out strictly in arrival order (MQTT requires it; rumqttd drops a
    // client that acks out of order), each after its commit, and only on the connection the
    // message came in on: packet ids are reused, so an ack sent on a later connection could
    // acknowledge a different, redelivered message.
    let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (acks, pending_acks) =
        mpsc::unbounded_channel::<(u64, rumqttc::Publish, oneshot::Receiver<()>)>();
    tokio::spawn(acker(client.clone(), generation.clone(), pending_acks));
    // Publications the request channel had no room for (during a flood of submissions their
    // acknowledgements fill it), in order: handed over as the event loop drains it. Bounded
    // by the engine's window of outbox entries, plus one stats document (a newer one
    // replaces it).
    let mut waiting: VecDeque<Publication> = VecDeque::new();
    // Clears of retained API messages published, by topic, whose echo is still to come.
    let mut clearing: HashMap<String, u32> = HashMap::new();
    loop {
        if !hand_over(
            &client,
            &mut waiting,
            &mut requested,
            &events,
            settings.max_packet_bytes,
        )
        .await
        {
            return;
        }
        // The event loop's future is never dropped before it completes: rumqttc's connection
        // set-up is not cancel-safe, and a poll dropped between CONNECT and CONNACK closed the
        // new connection (the broker then published the last will, "offline", at some starts).
        // Publications arriving meanwhile are handed over without leaving it.
        let polled = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    polled = &mut poll => break polled,
                    out = publish.recv() => {
                        let Some(out) = out else { return };
                        if out.key == 0 {
                            // Not an outbox entry (the stats, an answer published once): of a
                            // retained document only the newest matters, and beyond a bound
                            // they are dropped (best effort; outbox entries never are).
                            if out.retain {
                                waiting.retain(|w| !(w.key == 0 && w.retain && w.topic == out.topic));
                            }
                            if waiting.len() >= WAITING_UNSTORED_MAX {
                                tracing::debug!(topic = %out.topic, "MQTT request channel full; a document not kept in the outbox is dropped");
                                continue;
                            }
                        }
                        waiting.push_back(out);
                        if !hand_over(&client, &mut waiting, &mut requested, &events, settings.max_packet_bytes).await {
                            return;
                        }
                    }
                }
            }
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                connected_at = Some(tokio::time::Instant::now());
                // A limit raised to read one oversize message holds for this connection
                // only.
                eventloop
                    .mqtt_options
                    .set_max_packet_size(settings.max_packet_bytes, settings.max_packet_bytes);
                generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(host = %settings.host, port = settings.port, "connected to the MQTT broker");
                let status =
                    BridgeStatus::online(&settings.bridge_id, &settings.client_id).to_json();
                subacks_due = 0;
                // Queries at QoS 0: a broker holding the bridge's session while it is away
                // queues nothing for them (a dashboard polling during an outage would crowd
                // out queued submissions), and a lost one is asked again.
                let filters = api_filters(&settings.root)
                    .into_iter()
                    .map(|f| (f, QoS::AtLeastOnce))
                    .chain([(query_filter(&settings.root), QoS::AtMostOnce)]);
                for (filter, qos) in filters {
                    if client.try_subscribe(filter, qos).is_ok() {
                        subacks_due += 1;
                    } else {
                        tracing::warn!("request channel full while subscribing");
                    }
                }
                let _ = client.try_publish(
                    format!("{}/bridge/status", settings.root),
                    QoS::AtLeastOnce,
                    true,
                    status,
                );
                // The status publish (queued after any pending requests) takes a packet id
                // that is not an outbox entry.
                requested.push_back(0);
                let _ = events.send(MqttEvent::Connected).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == query_filter(&settings.root) => {
                // A retained query would be answered again on every reconnect: ignored. A
                // query never waits for room ahead of submissions: when the engine is behind,
                // it is dropped, and asked again.
                if !p.retain {
                    let query = ApiInput::Query {
                        payload: p.payload.to_vec(),
                    };
                    match api.try_send(query) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::debug!("engine busy; a query is dropped");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                let (done, handled) = oneshot::channel();
                let _ = done.send(());
                let _ = acks.send((
                    generation.load(std::sync::atomic::Ordering::SeqCst),
                    p,
                    handled,
                ));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.clone();
                let request = api_topic(&settings.root, &topic);
                let own_clear = request.is_some()
                    && p.payload.is_empty()
                    && clearing.get_mut(&topic).is_some_and(|n| {
                        *n -= 1;
                        true
                    });
                clearing.retain(|_, n| *n > 0);
                // What the engine is handed; `handled` answers once it has committed that
                // (at once for what it is not handed), and releases the acknowledgement.
                let (done, handled) = oneshot::channel();
                let input = if own_clear {
                    // The broker passing on our own clear of a retained message: not a
                    // submission or a cancel.
                    let _ = done.send(());
                    None
                } else if p.retain && request.is_some() {
                    // Kept by the broker and handed to every new subscription: cleared (an
                    // empty retained message), refused on `{root}/errors`, never acted on.
                    if client
                        .try_publish(topic.clone(), QoS::AtLeastOnce, true, Vec::new())
                        .is_ok()
                    {
                        requested.push_back(0);
                        *clearing.entry(topic.clone()).or_default() += 1;
                    } else {
                        tracing::warn!(%topic, "could not clear a retained message (request channel full)");
                    }
                    Some(ApiInput::Retained {
                        topic: topic.clone(),
                        payload: p.payload.to_vec(),
                        done,
                    })
                } else {
                    match request {
                        Some(ApiTopic::Submit) => Some(ApiInput::Submit {
                            payload: p.payload.to_vec(),
                            accepted: done,
                        }),
                        Some(ApiTopic::Cancel(id)) => Some(ApiInput::Cancel {
                            id: id.to_owned(),
                            done,
                        }),
                        None => {
                            let _ = done.send(());
                            None
                        }
                    }
                };
                if let Some(input) = input {
                    if api.send(input).await.is_err() {
                        return;
                    }
                }
                let _ = acks.send((
                    generation.load(std::sync::atomic::Ordering::SeqCst),
                    p,
                    handled,
                ));
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                // A new packet id belongs to the oldest request; a known one is a resend
                // after a reconnect.
                if let std::collections::hash_map::Entry::Vacant(slot) = by_pkid.entry(pkid) {
                    if let Some(key) = requested.pop_front() {
                        slot.insert(key);
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if subacks_due > 0 => {
                subacks_due -= 1;
                if subacks_due == 0 && events.send(MqttEvent::Subscribed).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(key) = by_pkid.remove(&ack.pkid) {
                    if key != 0 && events.send(MqttEvent::Published(vec![key])).await.is_err() {
                        return;
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => disconnecting = true,
            Ok(_) => {}
            Err(e) if disconnecting => {
                tracing::info!(reason = %e, "MQTT connection closed after DISCONNECT");
                let _ = events
                    .send(MqttEvent::Disconnected("disconnected on request".into()))
                    .await;
                return;
            }
            Err(e) => {
                if let Some(since) = connected_at.take().filter(|_| oversize(&e).is_none()) {
                    if settings.anonymous_own_broker {
                        // The embedded broker ends the bridge's connection for one reason: a
                        // client connected with the same client id and took its session over.
                        tracing::error!(client_id = %settings.client_id, "the embedded broker closed the bridge's connection: another client connected with the bridge's client id and took its session (subscriptions, unread submissions) over; the bridge takes it back. Set broker.users_file to reserve the client id to the bridge");
                    } else if since.elapsed() < TAKEOVER_HINT_WITHIN {
                        tracing::warn!(client_id = %settings.client_id, lasted = ?since.elapsed(), "the broker closed the bridge's connection soon after accepting it; if another client connects with the same client id, it takes the bridge's session over (see the README's broker ACL)");
                    }
                }
                if let Some(size) = oversize(&e) {
                    // A message above the packet limit waits on the broker (an external
                    // one may have none): refused, it would be delivered again on every
                    // connection and stop the session for good. The next connection reads
                    // one packet of its size, so the API refuses it (message_too_large) and
                    // acknowledges it; the limit is back to normal for the one after.
                    if size <= MAX_OVERSIZE_READ {
                        tracing::warn!(
                            size,
                            limit = settings.max_packet_bytes,
                            "a message above the MQTT packet limit waits on the broker; reading it once to refuse it"
                        );
                        eventloop
                            .mqtt_options
                            .set_max_packet_size(size, settings.max_packet_bytes);
                    } else {
                        tracing::error!(
                            size,
                            limit = MAX_OVERSIZE_READ,
                            "a message of {size} bytes waits on the broker for the bridge, more than it will read: nothing after it can be delivered. Limit the broker's message size (mosquitto: message_size_limit) to the bridge's max_packet_bytes and remove the message"
                        );
                    }
                }
                // Forget every publish in flight: after an error rumqttc may emit stale
                // `Outgoing::Publish` events and replay its pending publishes, which
                // would misalign packet ids and outbox keys. The engine offers every
                // unacknowledged entry again after the reconnect (at least once).
                eventloop.state.events.clear();
                eventloop
                    .pending
                    .retain(|r| !matches!(r, rumqttc::Request::Publish(_)));
                waiting.retain(|w| w.key == 0);
                requested.clear();
                by_pkid.clear();
                failures = failures.saturating_add(1);
                let _ = events.send(MqttEvent::Disconnected(e.to_string())).await;
                let delay = RECONNECT.delay(failures, random.next_u64());
                tracing::warn!(error = %e, retry_in = ?delay, "MQTT connection failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Hands the waiting publications to the client, in order, as far as its request channel
/// takes them. A publication whose topic can never be published is set aside (reported as
/// published, so it holds no place in the outbox). `false` when the engine is gone.
async fn hand_over(
    client: &AsyncClient,
    waiting: &mut VecDeque<Publication>,
    requested: &mut VecDeque<u64>,
    events: &mpsc::Sender<MqttEvent>,
    max_packet_bytes: usize,
) -> bool {
    while let Some(out) = waiting.pop_front() {
        // The fixed header, the topic's length and the packet id come on top.
        let size = out.topic.len() + out.payload.len() + 8;
        let too_large = size > max_packet_bytes;
        if too_large || !rumqttc::valid_topic(&out.topic) {
            // Never publishable (a topic written before device ids were checked, or a
            // message above the packet limit, which rumqttc would refuse by closing the
            // connection, at every reconnect): set aside, so it holds no place in the
            // outbox or here.
            if too_large {
                tracing::warn!(topic = %out.topic, key = out.key, size, limit = max_packet_bytes, "a message above the MQTT packet limit (broker.max_packet_bytes) is dropped");
            } else {
                tracing::warn!(topic = %out.topic, key = out.key, "not a valid MQTT topic; the event is dropped");
            }
            if out.key != 0
                && events
                    .send(MqttEvent::Published(vec![out.key]))
                    .await
                    .is_err()
            {
                return false;
            }
            continue;
        }
        let (topic, retain, payload) = (out.topic.clone(), out.retain, out.payload.clone());
        let qos = if out.at_most_once {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        if client.try_publish(topic, qos, retain, payload).is_err() {
            waiting.push_front(out);
            break;
        }
        // A QoS 0 publish takes no packet id.
        if !out.at_most_once {
            requested.push_back(out.key);
        }
    }
    true
}

/// Acknowledges received messages in order, each once the engine has committed it (never if
/// the engine dropped it, so the broker redelivers), and only on the connection it came in on.
async fn acker(
    client: AsyncClient,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    mut pending: mpsc::UnboundedReceiver<(u64, rumqttc::Publish, oneshot::Receiver<()>)>,
) {
    while let Some((born, p, committed)) = pending.recv().await {
        if committed.await.is_err() {
            continue;
        }
        if generation.load(std::sync::atomic::Ordering::SeqCst) != born {
            continue; // the broker redelivers it on the new connection
        }
        if let Err(e) = client.ack(&p).await {
            tracing::warn!(error = %e, "could not acknowledge a submission; the broker will redeliver it");
        }
    }
}

/// Delays between reconnection attempts: 200 ms after the first failure, doubling to 10 s,
/// plus up to 50 % jitter so that bridges cut off together do not return in lockstep.
const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(200),
    max: Duration::from_secs(10),
    jitter_percent: 50,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_topics_are_what_the_filters_match() {
        let root = "edge/a";
        assert_eq!(
            api_topic(root, "edge/a/tasks/submit"),
            Some(ApiTopic::Submit)
        );
        assert_eq!(
            api_topic(root, "edge/a/tasks/t-1/cancel"),
            Some(ApiTopic::Cancel("t-1"))
        );
        // `+` matches an empty level, and a level named like the submit topic.
        assert_eq!(
            api_topic(root, "edge/a/tasks//cancel"),
            Some(ApiTopic::Cancel(""))
        );
        assert_eq!(
            api_topic(root, "edge/a/tasks/submit/cancel"),
            Some(ApiTopic::Cancel("submit"))
        );
        for other in [
            "edge/a/tasks/a/b/cancel",
            "edge/a/tasks/cancel",
            "edge/a/tasks/submit/",
            "edge/ab/tasks/submit",
            "edge/a/tasks/t-1/status",
            "edge/a",
            "",
        ] {
            assert_eq!(api_topic(root, other), None, "{other:?}");
        }
    }

    #[test]
    fn reconnection_delays_are_200_ms_doubling_to_10_s_plus_up_to_half_again() {
        let base: Vec<_> = (1..=8).map(|f| RECONNECT.delay(f, 0).as_millis()).collect();
        assert_eq!(base, [200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]);
        assert_eq!(RECONNECT.delay(u32::MAX, 0), Duration::from_secs(10));
        let mut random = SplitMix64::new(9);
        for failures in 1..=8 {
            let base = RECONNECT.delay(failures, 0);
            for _ in 0..1_000 {
                let d = RECONNECT.delay(failures, random.next_u64());
                assert!(
                    d >= base && d < base + base / 2,
                    "{failures} failures: {d:?}"
                );
            }
        }
    }
}
