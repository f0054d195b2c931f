//! An MQTT client for the bench: its event loop runs on a task of its own and stamps every
//! message with the moment it arrived, so a latency never includes the time the bench took to
//! look at its mailbox.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::BenchError;

/// Wall-clock milliseconds since the Unix epoch, as the bridge stamps `ts_ms`.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A message received, stamped.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) at: Instant,
    /// The same moment on the wall clock, in ms since the Unix epoch (to compare with the
    /// bridge's `ts_ms`).
    pub(crate) wall_ms: u64,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
}

/// A connected, subscribed client. Its event loop stops when it is dropped.
#[derive(Debug)]
pub(crate) struct Client {
    name: String,
    mqtt: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Received>,
    /// Connection errors the event loop met: a figure measured across a reconnect is suspect,
    /// so the report says so.
    errors: Arc<AtomicU64>,
    event_loop: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

impl Client {
    /// Connects to `broker` as `name`, subscribes (QoS 1) to `filters` and returns once every
    /// subscription is acknowledged. `window` is the number of QoS 1 publishes the caller keeps
    /// outstanding at most: the client's in-flight window and request channel are sized so
    /// they never throttle below it.
    pub(crate) async fn connect(
        broker: SocketAddr,
        name: &str,
        window: usize,
        filters: &[String],
    ) -> Result<Self, BenchError> {
        let mut opts = MqttOptions::new(name, broker.ip().to_string(), broker.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_inflight(u16::try_from(window + 16).unwrap_or(u16::MAX));
        opts.set_request_channel_capacity(window + 1_024);
        let (mqtt, mut event_loop) = AsyncClient::new(opts, window + 1_024);
        // A latency-minded client: no Nagle delay on our side of the socket.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        event_loop.set_network_options(network);

        let (tx, incoming) = mpsc::unbounded_channel();
        let errors = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let mut subacks_due = filters.len();
        let subscriber = mqtt.clone();
        let to_subscribe: Vec<String> = filters.to_vec();
        let loop_errors = errors.clone();
        let event_loop = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let received = Received {
                            at: Instant::now(),
                            wall_ms: wall_ms(),
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                        };
                        if tx.send(received).is_err() {
                            return;
                        }
                    }
                    // (Re)subscribe on every connection.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if to_subscribe.is_empty() {
                            if let Some(r) = ready_tx.take() {
                                let _ = r.send(());
                            }
                        }
                        for f in &to_subscribe {
                            let _ = subscriber.try_subscribe(f.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks_due = subacks_due.saturating_sub(1);
                        if subacks_due == 0 {
                            if let Some(r) = ready_tx.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        loop_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let client = Self {
            name: name.to_owned(),
            mqtt,
            incoming,
            errors,
            event_loop,
        };
        match tokio::time::timeout(Duration::from_secs(20), ready).await {
            Ok(Ok(())) => Ok(client),
            _ => Err(BenchError::Mqtt {
                client: name.to_owned(),
                reason: format!("not connected and subscribed to {filters:?} within 20 s"),
            }),
        }
    }

    /// Publishes with QoS 1 (waits only while the request channel is full).
    pub(crate) async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), BenchError> {
        self.mqtt
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| BenchError::Mqtt {
                client: self.name.clone(),
                reason: e.to_string(),
            })
    }

    /// The next message, or `None` when none arrived by `until`.
    pub(crate) async fn next_until(&mut self, until: Instant) -> Option<Received> {
        let until = tokio::time::Instant::from_std(until);
        tokio::time::timeout_at(until, self.incoming.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message, waiting as long as it takes (`None` once the event loop ended).
    pub(crate) async fn next(&mut self) -> Option<Received> {
        self.incoming.recv().await
    }

    /// Connection errors met so far.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
