//! The byte-stream link driver: plain TCP, TLS and serial ports through the same code,
//! generic over the stream. It also enforces the identity rule (see [`super::Identity`]).
//!
//! Writes to the device never hold up the rest: frames for the device wait in an outbox of
//! [`OUTBOX_BYTES`] written from within the same `select!` as reads, commands and timers, so a
//! device that stops reading (its TCP window shut, a DTLS relay behind) cannot stop the
//! liveness timeout from closing its link. When the outbox is full, further frames are dropped
//! whole, as a lossy link would lose them: the session retransmits what needs it.
//!
//! A connection that sends no `Hello` is closed after the session's liveness timeout, whatever
//! else it sends (device-core counts a connecting bridge session's liveness from a `Hello`
//! only). Bad frames and unexpected messages are logged within the [`Throttle`] of remote
//! events, with counts.

use std::time::Instant as StdInstant;

use device_core::Instant;
use device_core::link::{BridgeSide, Config, Event, Refusal, Session, State};
use device_core::proto::Deframer;
use device_core::proto::{MAX_FRAME, Message, Preempt, Reprioritize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::heap::OnHeap;
use super::{Identity, LinkCommand, LinkEvent, LinkId};
use crate::throttle::Throttle;

/// Bytes of frames for the device that wait in the driver, beyond what the transport buffers:
/// a full window of the largest frames (16 × 403 B) twice over, so a device that reads at all
/// never sees a frame dropped here.
pub const OUTBOX_BYTES: usize = 16 * 1024;

/// Bad frames from devices, for every link of the process: line noise on a UART, or anyone on
/// a plain TCP port, can send them as fast as they like.
static BAD_FRAMES: Throttle = Throttle::remote_events();
/// Messages a device should not send (a `Welcome`, an `Assign`).
static UNEXPECTED: Throttle = Throttle::remote_events();

/// A bridge-side session: a send window of 16 and a reorder buffer of 16 (DTLS sessions come
/// through this driver too, one datagram per frame, and datagrams may be reordered), both on
/// the heap and only while they hold messages (see [`super::heap`]): inline they were 16.8 KiB
/// of every link, idle or not.
pub type BridgeSession = Session<BridgeSide, 16, 16, OnHeap>;

/// Drives one device connection until it ends; the last event sent is [`LinkEvent::Down`].
/// `identity`: what the link's credential proved, if it has one; a `Hello` with another
/// device id closes the link before the core hears of the device.
pub async fn run<S>(
    stream: S,
    link: LinkId,
    peer: String,
    identity: Option<Identity>,
    core: mpsc::Sender<LinkEvent>,
    config: Config,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let on = Link {
        link,
        peer: &peer,
        identity: identity.as_ref(),
        core: &core,
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut outbox = Outbox::default();
    let reason = match drive(&mut rd, &mut wr, &mut outbox, &on, config).await {
        Ok(reason) => reason,
        Err(e) => format!("i/o error: {e}"),
    };
    let Outbox { bytes, dropped, .. } = outbox;
    tracing::info!(link, %peer, %reason, dropped_frames = dropped, "device link closed");
    let _ = core.send(LinkEvent::Down { link, reason }).await;
    // What the session still owed the device (the `Reject` of a `Hello` of another version),
    // then a clean close where the stream has one (TLS: close_notify), bounded: a peer that
    // reads nothing must not keep the task alive.
    let close = async {
        wr.write_all(&bytes).await?;
        wr.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

/// Frames for the device not written yet, whole frames only (see the module docs).
#[derive(Debug, Default)]
struct Outbox {
    bytes: Vec<u8>,
    /// Bytes written since the last flush (TLS keeps records until flushed).
    unflushed: bool,
    /// Frames dropped because the outbox was full.
    dropped: u64,
}

impl Outbox {
    /// Queues `frame`, or drops it whole when it does not fit.
    fn push(&mut self, frame: &[u8]) {
        if self.bytes.len() + frame.len() <= OUTBOX_BYTES {
            self.bytes.extend_from_slice(frame);
        } else {
            self.dropped += 1;
        }
    }
}

/// How long closing a stream cleanly may take before it is simply dropped.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What every step of [`drive`] needs to know about its connection.
struct Link<'a> {
    link: LinkId,
    peer: &'a str,
    identity: Option<&'a Identity>,
    core: &'a mpsc::Sender<LinkEvent>,
}

async fn drive<R, W>(
    rd: &mut R,
    wr: &mut W,
    outbox: &mut Outbox,
    on: &Link<'_>,
    config: Config,
) -> std::io::Result<String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Link {
        link, peer, core, ..
    } = *on;
    let epoch = StdInstant::now();
    let now = || Instant::from_millis(epoch.elapsed().as_millis() as u64);
    let mut session = BridgeSession::bridge(config, now());
    let mut deframer: Deframer<MAX_FRAME> = Deframer::new();
    // The link keeps a sender, so `commands` ends only on `Close`; each session gets a clone.
    let (commands_tx, mut commands) = mpsc::channel::<LinkCommand>(64);
    let mut input = vec![0u8; 4096];
    let mut out = [0u8; MAX_FRAME];
    // The credit last reported, with the `Assign`s taken when it was counted: the engine
    // discounts the ones it sent after those (see `LinkEvent::Credit`).
    let mut credit_sent = None;
    let mut assigns_taken = 0u64;
    // Replayed `Assign`s wait here for room in the session's window (a device that comes back
    // holding more tasks than the window takes at once); they need no credit.
    let mut replays: std::collections::VecDeque<Message> = std::collections::VecDeque::new();
    loop {
        while session.can_send() {
            let Some(replay) = replays.pop_front() else {
                break;
            };
            if let Err(e) = session.resend(replay) {
                tracing::debug!(link, reason = ?e.reason, "replayed Assign not sent");
                if e.reason == Refusal::WindowFull {
                    replays.push_front(e.message);
                }
                break;
            }
        }
        while let Some(n) = session.poll_transmit(now(), &mut out) {
            outbox.push(&out[..n]);
        }
        let counted = (session.credit(), assigns_taken);
        if session.state() == State::Established && credit_sent != Some(counted) {
            credit_sent = Some(counted);
            if core
                .send(LinkEvent::Credit {
                    link,
                    credit: counted.0,
                    taken: counted.1,
                })
                .await
                .is_err()
            {
                return Ok("bridge shutting down".into());
            }
        }
        if session.state() == State::Closed {
            return Ok("session closed (peer silent or wrong protocol version)".into());
        }
        let wake = session
            .poll_timeout()
            .map(|t| t.as_millis())
            .unwrap_or(u64::MAX);
        let sleep = tokio::time::sleep(std::time::Duration::from_millis(
            wake.saturating_sub(now().as_millis()).min(60_000),
        ));
        tokio::select! {
            sent = transmit(wr, &outbox.bytes), if !outbox.bytes.is_empty() || outbox.unflushed => {
                match sent? {
                    Some(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Some(n) => {
                        outbox.bytes.drain(..n);
                        outbox.unflushed = true;
                    }
                    None => outbox.unflushed = false,
                }
            }
            read = rd.read(&mut input) => {
                let n = read?;
                if n == 0 {
                    return Ok("connection closed by the device".into());
                }
                let mut rest = &input[..n];
                while !rest.is_empty() {
                    let (used, frame) = deframer.push_raw(rest);
                    rest = &rest[used..];
                    let Some(frame) = frame else { continue };
                    let event = match frame.map(|f| session.handle_bytes(f, now())) {
                        Ok(Ok(e)) => e,
                        Ok(Err(e)) | Err(e) => {
                            if let Some(suppressed) = BAD_FRAMES.admit(StdInstant::now()) {
                                let bad_frames = session.stats().bad_frames;
                                tracing::warn!(link, %peer, error = %e, bad_frames, suppressed, "dropped a bad frame from the device");
                            }
                            None
                        }
                    };
                    let mut events: Vec<Event> = event.into_iter().collect();
                    while let Some(e) = session.poll_event() {
                        events.push(e);
                    }
                    for e in events {
                        // Replays waiting for the window were for the previous session.
                        if matches!(e, Event::Connected { .. }) {
                            replays.clear();
                        }
                        // The session's answer to this input (a Welcome) is not sent yet: a
                        // link closed here has told the device nothing.
                        if let Err(reason) = deliver(e, on, &mut session, &commands_tx).await {
                            return Ok(reason);
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let message = match cmd {
                    Some(LinkCommand::Assign(a)) => {
                        assigns_taken += 1;
                        Message::Assign(*a)
                    }
                    Some(LinkCommand::Replay(a)) => {
                        assigns_taken += 1;
                        replays.push_back(Message::Assign(*a));
                        continue;
                    }
                    Some(LinkCommand::Cancel(c)) => Message::Cancel(c),
                    Some(LinkCommand::Preempt { handle }) => Message::Preempt(Preempt { handle }),
                    Some(LinkCommand::Reprioritize { handle, priority }) => {
                        Message::Reprioritize(Reprioritize { handle, priority })
                    }
                    Some(LinkCommand::Restore { handle, checkpoint }) => {
                        match super::restore_of(handle, &checkpoint) {
                            Some(restore) => Message::Restore(restore),
                            None => {
                                tracing::warn!(link, handle, "a checkpoint beyond the protocol's limits: the task starts over");
                                continue;
                            }
                        }
                    }
                    Some(LinkCommand::Close) | None => return Ok("closed by the bridge".into()),
                };
                if let Err(e) = session.send(message) {
                    match (e.message, e.reason) {
                        (Message::Assign(a), Refusal::NoCredit | Refusal::WindowFull | Refusal::NotEstablished) => {
                            let _ = core.send(LinkEvent::Refused { link, handle: a.handle }).await;
                        }
                        // Not sent (window full, or a device of an older protocol): the engine
                        // may choose another task to take back.
                        (Message::Preempt(p), reason) => {
                            tracing::debug!(link, handle = p.handle, ?reason, "take-back not sent");
                            let _ = core.send(LinkEvent::PreemptNotSent { link, handle: p.handle }).await;
                        }
                        // A device older than protocol version 3 cannot change a task's
                        // priority: its holder runs at its own, as it would without resources.
                        (Message::Reprioritize(r), Refusal::Unsupported) => {
                            tracing::debug!(link, handle = r.handle, "device predates Reprioritize: not sent");
                        }
                        // Window full or no session: the task keeps the priority it has.
                        (Message::Reprioritize(r), reason) => {
                            tracing::warn!(link, handle = r.handle, priority = ?r.priority, ?reason, "Reprioritize not sent");
                        }
                        _ => {}
                    }
                }
            }
            () = sleep => {
                let connecting = session.state() == State::Connecting;
                if let Some(Event::PeerLost) = session.handle_timeout(now()) {
                    return Ok(if connecting {
                        format!("no Hello within {} ms", config.liveness_ms)
                    } else {
                        "device silent past the liveness timeout".into()
                    });
                }
            }
        }
    }
}

/// One step of writing the outbox: `Some(n)` bytes of `bytes` written, or `None` when
/// `bytes` is empty and the stream was flushed. Cancel-safe (a `select!` branch): if it does
/// not complete, nothing was written.
async fn transmit<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
) -> std::io::Result<Option<usize>> {
    if bytes.is_empty() {
        wr.flush().await?;
        Ok(None)
    } else {
        wr.write(bytes).await.map(Some)
    }
}

/// Hands one session event to the core; for reports and rejects, waits until the core has
/// committed them (see the module docs). `Err(why)` when the link must close: the core is
/// gone, or a `Hello` claims an id the link's credential did not prove.
async fn deliver(
    event: Event,
    on: &Link<'_>,
    session: &mut BridgeSession,
    commands: &mpsc::Sender<LinkCommand>,
) -> Result<(), String> {
    let Link {
        link, peer, core, ..
    } = *on;
    let delivered = match event {
        Event::Connected { hello, rebooted } => {
            if !super::valid_device_id(&hello.device_id) {
                tracing::warn!(
                    link,
                    %peer,
                    claimed = ?hello.device_id.as_str(),
                    "device id is not a valid MQTT topic level (no '/', '+', '#' or control characters); closing the link"
                );
                return Err(format!(
                    "device id {:?} is not a valid MQTT topic level",
                    hello.device_id.as_str()
                ));
            }
            if let Some(identity) = on.identity {
                if !identity.admits(&hello.device_id) {
                    tracing::warn!(
                        link,
                        %peer,
                        claimed = %hello.device_id,
                        proven = ?identity.names,
                        credential = identity.credential,
                        "device id in Hello is not the identity its credential proved; closing the link"
                    );
                    return Err(format!(
                        "device id {:?} not proven by the {}",
                        hello.device_id.as_str(),
                        identity.credential
                    ));
                }
            }
            tracing::info!(link, %peer, device = %hello.device_id, rebooted, "device connected");
            let commands = commands.clone();
            let credit = session.credit();
            core.send(LinkEvent::Up {
                link,
                peer: peer.to_owned(),
                hello,
                rebooted,
                credit,
                credential: on.identity.map(|i| i.credential),
                commands,
            })
            .await
            .is_ok()
        }
        Event::Received(Message::Report(report)) => {
            hand_over(core, |committed| LinkEvent::Report {
                link,
                report,
                committed,
            })
            .await
        }
        Event::Received(Message::Suspended(suspended)) => {
            hand_over(core, |committed| LinkEvent::Suspended {
                link,
                suspended,
                committed,
            })
            .await
        }
        Event::Received(Message::Reject(reject)) => {
            hand_over(core, |committed| LinkEvent::Reject {
                link,
                reject,
                committed,
            })
            .await
        }
        Event::Received(other) => {
            if let Some(suppressed) = UNEXPECTED.admit(StdInstant::now()) {
                tracing::warn!(link, %peer, message = ?other, suppressed, "unexpected message from a device, ignored");
            }
            true
        }
        Event::Welcomed | Event::PeerLost => true,
    };
    if delivered {
        Ok(())
    } else {
        Err("bridge shutting down".into())
    }
}

/// Sends an event that carries a `committed` channel and waits until the core has committed
/// it; `false` when the core is gone.
async fn hand_over(
    core: &mpsc::Sender<LinkEvent>,
    event: impl FnOnce(oneshot::Sender<()>) -> LinkEvent,
) -> bool {
    let (committed, done) = oneshot::channel();
    core.send(event(committed)).await.is_ok() && done.await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use device_core::runtime::{Device, Runtime};
    use tokio::io::DuplexStream;

    use super::*;

    /// A device called `id` connecting over an in-memory stream to a link driver that was
    /// handed `identity`; returns the device's end and the core's receiver.
    async fn connect(
        id: &str,
        identity: Option<Identity>,
    ) -> (DuplexStream, mpsc::Receiver<LinkEvent>) {
        let (bridge_end, mut device_end) = tokio::io::duplex(4096);
        let (core_tx, core_rx) = mpsc::channel(16);
        tokio::spawn(run(
            bridge_end,
            7,
            "peer-7".into(),
            identity,
            core_tx,
            Config::default(),
        ));
        let at = Instant::from_millis(0);
        let mut device: Device<1, 1, 1, 4, 4> =
            Device::new(id, 1, Runtime::new(), Config::default(), at).unwrap();
        let mut out = [0u8; MAX_FRAME];
        while let Some(n) = device.poll_transmit(at, &mut out) {
            device_end.write_all(&out[..n]).await.unwrap();
        }
        (device_end, core_rx)
    }

    async fn next(core: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
        tokio::time::timeout(Duration::from_secs(10), core.recv())
            .await
            .expect("an event within 10 s")
            .expect("the link task sends Down last")
    }

    fn proving(names: &[&str]) -> Option<Identity> {
        Some(Identity {
            credential: "test credential",
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        })
    }

    #[tokio::test]
    async fn a_hello_with_an_unproven_id_closes_the_link_before_the_core_hears_of_it() {
        let (mut device_end, mut core) = connect("dev-b", proving(&["dev-a"])).await;
        match next(&mut core).await {
            LinkEvent::Down { link: 7, reason } => {
                assert!(
                    reason.contains("dev-b") && reason.contains("test credential"),
                    "{reason}"
                );
            }
            other => panic!("expected Down first, got {other:?}"),
        }
        // The device was told nothing (no Welcome) and the stream is closed.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), device_end.read_to_end(&mut rest))
            .await
            .expect("closed within 10 s")
            .unwrap();
        assert!(rest.is_empty(), "{} bytes sent to the device", rest.len());
    }

    #[tokio::test]
    async fn a_device_that_never_reads_is_still_closed_at_the_liveness_timeout() {
        // A pipe that holds 16 bytes towards the device, which never reads it: the Welcome
        // alone does not fit.
        let (bridge_end, mut device_end) = tokio::io::duplex(16);
        let (core_tx, mut core) = mpsc::channel(16);
        let config = Config {
            liveness_ms: 300,
            ..Config::default()
        };
        tokio::spawn(run(bridge_end, 7, "peer-7".into(), None, core_tx, config));
        let at = Instant::from_millis(0);
        let mut device: Device<1, 1, 1, 4, 4> =
            Device::new("stuck", 1, Runtime::new(), config, at).unwrap();
        let mut out = [0u8; MAX_FRAME];
        while let Some(n) = device.poll_transmit(at, &mut out) {
            device_end.write_all(&out[..n]).await.unwrap();
        }
        let started = std::time::Instant::now();
        loop {
            match next(&mut core).await {
                LinkEvent::Down { reason, .. } => {
                    assert_eq!(reason, "device silent past the liveness timeout");
                    break;
                }
                LinkEvent::Up { .. } | LinkEvent::Credit { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_hello_with_a_proven_id_or_on_a_link_without_credential_opens_the_session() {
        for (id, identity) in [("dev-a", proving(&["other", "dev-a"])), ("anyone", None)] {
            let (_device_end, mut core) = connect(id, identity).await;
            match next(&mut core).await {
                LinkEvent::Up { link: 7, hello, .. } => assert_eq!(hello.device_id.as_str(), id),
                other => panic!("expected Up for {id}, got {other:?}"),
            }
        }
    }
}
