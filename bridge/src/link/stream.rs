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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant as StdInstant;

use device_core::Instant;
use device_core::link::{BridgeSide, Config, Event, Refusal, Session, State};
use device_core::proto::Deframer;
use device_core::proto::{MAX_FRAME, Message, Preempt, Reprioritize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::commands::CommandSender;
use super::heap::OnHeap;
use super::{Identity, LinkCommand, LinkEvent, LinkId};
use crate::throttle::Throttle;

/// The most bytes one read takes from the stream, into a buffer on the stack of the poll
/// that finds them ready ([`read_frames`]): none are held while a link waits, and 10,000
/// idle links held 40 MB of 4 KiB read buffers before. A few frames at a time.
const READ_BYTES: usize = 4096;

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
    /// Gives back the room a burst took once it is written: an idle link keeps only what a
    /// few small frames take.
    fn release_if_empty(&mut self) {
        if self.bytes.is_empty() && self.bytes.capacity() > MAX_FRAME {
            self.bytes = Vec::new();
        }
    }

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
    let Link { link, core, .. } = *on;
    let epoch = StdInstant::now();
    let now = || Instant::from_millis(epoch.elapsed().as_millis() as u64);
    let mut session = BridgeSession::bridge(config, now());
    let mut deframer: Deframer<MAX_FRAME> = Deframer::new();
    // The link keeps a sender, so `commands` ends only on `Close`; each session gets a clone.
    let (commands_tx, mut commands) = super::commands::channel(64);
    // The credit last reported, with the `Assign`s taken when it was counted: the engine
    // discounts the ones it sent after those (see `LinkEvent::Credit`).
    let mut credit_sent = None;
    let mut assigns_taken = 0u64;
    // Replayed `Assign`s wait here for room in the session's window (a device that comes back
    // holding more tasks than the window takes at once); they need no credit.
    let mut replays: VecDeque<Message> = VecDeque::new();
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
        if replays.is_empty() {
            replays.shrink_to_fit(); // an idle link keeps no room for replays
        }
        transmit_session(&mut session, outbox, now());
        let counted = (session.credit(), assigns_taken);
        if session.state() == State::Established && credit_sent != Some(counted) {
            credit_sent = Some(counted);
            let Ok(permit) = core.reserve().await else {
                return Ok("bridge shutting down".into());
            };
            permit.send(LinkEvent::Credit {
                link,
                credit: counted.0,
                taken: counted.1,
            });
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
                        outbox.release_if_empty();
                    }
                    None => outbox.unflushed = false,
                }
            }
            read = read_frames(rd, &mut deframer, &mut session, epoch, on) => {
                let Some(events) = read? else {
                    return Ok("connection closed by the device".into());
                };
                // In order; each one's permit to reach the core taken before it is taken
                // out, so that no event waits in this future (see `READ_BYTES`).
                let mut events = events.into_iter();
                while events.len() > 0 {
                    let Ok(permit) = core.reserve().await else {
                        return Ok("bridge shutting down".into());
                    };
                    let e = events.next().expect("an event left: len() > 0");
                    // Replays waiting for the window were for the previous session.
                    if matches!(e, Event::Connected { .. }) {
                        replays.clear();
                    }
                    // The session's answer to this input (a Welcome) is not sent yet: a
                    // link closed here has told the device nothing.
                    match deliver(e, permit, on, &session, &commands_tx) {
                        Ok(None) => {}
                        Ok(Some(committed)) => {
                            if committed.await.is_err() {
                                return Ok("bridge shutting down".into());
                            }
                        }
                        Err(reason) => return Ok(reason),
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
                let Some(unsent) = session.send(message).err().and_then(|e| unsent(link, e)) else {
                    continue;
                };
                if let Ok(permit) = core.reserve().await {
                    permit.send(match unsent {
                        Unsent::Assign(handle) => LinkEvent::Refused { link, handle },
                        Unsent::Preempt(handle) => LinkEvent::PreemptNotSent { link, handle },
                    });
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

/// A command the session would not send that the core must hear of (by handle).
#[derive(Clone, Copy, Debug)]
enum Unsent {
    Assign(u32),
    Preempt(u32),
}

/// What becomes of a message the session refused: what the core must hear of, if anything
/// (logged here otherwise).
fn unsent(link: LinkId, e: device_core::link::SendError) -> Option<Unsent> {
    match (e.message, e.reason) {
        (Message::Assign(a), Refusal::NoCredit | Refusal::WindowFull | Refusal::NotEstablished) => {
            Some(Unsent::Assign(a.handle))
        }
        // Not sent (window full, or a device of an older protocol): the engine may choose
        // another task to take back.
        (Message::Preempt(p), reason) => {
            tracing::debug!(link, handle = p.handle, ?reason, "take-back not sent");
            Some(Unsent::Preempt(p.handle))
        }
        // A device older than protocol version 3 cannot change a task's priority: its holder
        // runs at its own, as it would without resources.
        (Message::Reprioritize(r), Refusal::Unsupported) => {
            tracing::debug!(
                link,
                handle = r.handle,
                "device predates Reprioritize: not sent"
            );
            None
        }
        // Window full or no session: the task keeps the priority it has.
        (Message::Reprioritize(r), reason) => {
            tracing::warn!(link, handle = r.handle, priority = ?r.priority, ?reason, "Reprioritize not sent");
            None
        }
        _ => None,
    }
}

/// Whatever the session has to send, into the outbox. The frame is built on this call's
/// stack, not kept in the driver's future.
fn transmit_session(session: &mut BridgeSession, outbox: &mut Outbox, now: Instant) {
    let mut out = [0u8; MAX_FRAME];
    while let Some(n) = session.poll_transmit(now, &mut out) {
        outbox.push(&out[..n]);
    }
}

/// Reads what the device sent and hands every complete frame to the session at once,
/// returning the session's events (`None` at the end of the stream). The bytes are read into
/// a buffer on the stack of the poll that finds them ready, so a link waiting for its device
/// holds no read buffer (see [`READ_BYTES`]). Cancel-safe (a `select!` branch): bytes are
/// taken from the stream only by the poll that returns them.
fn read_frames<'a, R: AsyncRead + Unpin>(
    rd: &'a mut R,
    deframer: &'a mut Deframer<MAX_FRAME>,
    session: &'a mut BridgeSession,
    epoch: StdInstant,
    on: &'a Link<'_>,
) -> impl Future<Output = std::io::Result<Option<Vec<Event>>>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut buf = [0u8; READ_BYTES];
        let mut read = ReadBuf::new(&mut buf);
        std::task::ready!(Pin::new(&mut *rd).poll_read(cx, &mut read))?;
        if read.filled().is_empty() {
            return Poll::Ready(Ok(None));
        }
        let now = Instant::from_millis(epoch.elapsed().as_millis() as u64);
        let mut events = Vec::new();
        let mut rest = read.filled();
        while !rest.is_empty() {
            let (used, frame) = deframer.push_raw(rest);
            rest = &rest[used..];
            let Some(frame) = frame else { continue };
            match frame.map(|f| session.handle_bytes(f, now)) {
                Ok(Ok(e)) => events.extend(e),
                Ok(Err(e)) | Err(e) => {
                    if let Some(suppressed) = BAD_FRAMES.admit(StdInstant::now()) {
                        let (link, peer) = (on.link, on.peer);
                        let bad_frames = session.stats().bad_frames;
                        tracing::warn!(link, %peer, error = %e, bad_frames, suppressed, "dropped a bad frame from the device");
                    }
                }
            }
            events.extend(std::iter::from_fn(|| session.poll_event()));
        }
        Poll::Ready(Ok(Some(events)))
    })
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

/// Hands one session event to the core through `permit`. For reports, give-backs and rejects
/// it returns the channel on which the core says it has committed them: the driver waits for
/// it before anything else (see the module docs). `Err(why)` when the link must close: a
/// `Hello` claims an id that is no topic level or that the link's credential did not prove.
fn deliver(
    event: Event,
    permit: mpsc::Permit<'_, LinkEvent>,
    on: &Link<'_>,
    session: &BridgeSession,
    commands: &CommandSender,
) -> Result<Option<oneshot::Receiver<()>>, String> {
    let Link { link, peer, .. } = *on;
    let (committed, done) = oneshot::channel();
    let event = match event {
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
            permit.send(LinkEvent::Up {
                link,
                peer: peer.to_owned(),
                hello,
                rebooted,
                credit: session.credit(),
                credential: on.identity.map(|i| i.credential),
                commands: commands.clone(),
            });
            return Ok(None);
        }
        Event::Received(Message::Report(report)) => LinkEvent::Report {
            link,
            report,
            committed,
        },
        Event::Received(Message::Suspended(suspended)) => LinkEvent::Suspended {
            link,
            suspended,
            committed,
        },
        Event::Received(Message::Reject(reject)) => LinkEvent::Reject {
            link,
            reject,
            committed,
        },
        Event::Received(other) => {
            if let Some(suppressed) = UNEXPECTED.admit(StdInstant::now()) {
                tracing::warn!(link, %peer, message = ?other, suppressed, "unexpected message from a device, ignored");
            }
            return Ok(None);
        }
        Event::Welcomed | Event::PeerLost => return Ok(None),
    };
    permit.send(event);
    Ok(Some(done))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use device_core::runtime::{Device, Runtime};
    use tokio::io::{AsyncReadExt, DuplexStream};

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
    async fn a_link_driver_holds_no_room_for_messages_or_reads_while_it_waits() {
        let (bridge_end, _device_end) = tokio::io::duplex(64);
        let (core_tx, _core) = mpsc::channel(1);
        let driver = run(
            bridge_end,
            7,
            "peer-7".into(),
            None,
            core_tx,
            Config::default(),
        );
        // Its session (with the device's Hello) and a partial frame are most of it. It was
        // 22.8 KiB with the session's buffers inline, 6.7 KiB with a read buffer in it and
        // events and messages for the core held across its awaits.
        let size = std::mem::size_of_val(&driver);
        println!("a link driver's future: {size} bytes");
        assert!(size <= 3 * 1024, "the driver's future is {size} bytes");
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
