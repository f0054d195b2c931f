//! The byte-stream link driver: TCP, and later TLS and serial, through the same code.

use std::time::Instant as StdInstant;

use device_core::Instant;
use device_core::link::{BridgeSide, Config, Event, Refusal, Session, State};
use device_core::proto::Deframer;
use device_core::proto::{MAX_FRAME, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{LinkCommand, LinkEvent, LinkId};

/// Send window and reorder buffer of a bridge-side session.
pub type BridgeSession = Session<BridgeSide, 16, 16>;

/// Drives one device connection until it ends; the last event sent is [`LinkEvent::Down`].
pub async fn run<S>(
    stream: S,
    link: LinkId,
    peer: String,
    core: mpsc::Sender<LinkEvent>,
    config: Config,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let reason = match drive(stream, link, &peer, &core, config).await {
        Ok(reason) => reason,
        Err(e) => format!("i/o error: {e}"),
    };
    tracing::info!(link, %peer, %reason, "device link closed");
    let _ = core.send(LinkEvent::Down { link, reason }).await;
}

async fn drive<S>(
    stream: S,
    link: LinkId,
    peer: &str,
    core: &mpsc::Sender<LinkEvent>,
    config: Config,
) -> std::io::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = StdInstant::now();
    let now = || Instant::from_millis(epoch.elapsed().as_millis() as u64);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut session = BridgeSession::bridge(config, now());
    let mut deframer: Deframer<MAX_FRAME> = Deframer::new();
    // The link keeps a sender, so `commands` ends only on `Close`; each session gets a clone.
    let (commands_tx, mut commands) = mpsc::channel::<LinkCommand>(64);
    let mut input = vec![0u8; 4096];
    let mut out = [0u8; MAX_FRAME];
    let mut credit_sent = None;
    loop {
        while let Some(n) = session.poll_transmit(now(), &mut out) {
            wr.write_all(&out[..n]).await?;
        }
        if session.state() == State::Established && credit_sent != Some(session.credit()) {
            credit_sent = Some(session.credit());
            if core
                .send(LinkEvent::Credit {
                    link,
                    credit: session.credit(),
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
                            tracing::warn!(link, %peer, error = %e, "dropped a bad frame from the device");
                            None
                        }
                    };
                    let mut events: Vec<Event> = event.into_iter().collect();
                    while let Some(e) = session.poll_event() {
                        events.push(e);
                    }
                    for e in events {
                                                if !deliver(e, link, peer, core, &mut session, &commands_tx).await {
                            return Ok("bridge shutting down".into());
                        }
                    }
                }
            }
            cmd = commands.recv() => {
                let message = match cmd {
                    Some(LinkCommand::Assign(a)) => Message::Assign(*a),
                    Some(LinkCommand::Cancel(c)) => Message::Cancel(c),
                    Some(LinkCommand::Close) | None => return Ok("closed by the bridge".into()),
                };
                if let Err(e) = session.send(message) {
                    if let (Message::Assign(a), Refusal::NoCredit | Refusal::WindowFull | Refusal::NotEstablished) = (e.message, e.reason) {
                        let _ = core.send(LinkEvent::Refused { link, handle: a.handle }).await;
                    }
                }
            }
            () = sleep => {
                if let Some(Event::PeerLost) = session.handle_timeout(now()) {
                    return Ok("device silent past the liveness timeout".into());
                }
            }
        }
    }
}

/// Hands one session event to the core; for reports and rejects, waits until the core has
/// committed them (see the module docs). `false` when the core is gone.
async fn deliver(
    event: Event,
    link: LinkId,
    peer: &str,
    core: &mpsc::Sender<LinkEvent>,
    session: &mut BridgeSession,
    commands: &mpsc::Sender<LinkCommand>,
) -> bool {
    match event {
        Event::Connected { hello, rebooted } => {
            tracing::info!(link, %peer, device = %hello.device_id, rebooted, "device connected");
            let commands = commands.clone();
            let credit = session.credit();
            core.send(LinkEvent::Up {
                link,
                peer: peer.to_owned(),
                hello,
                rebooted,
                credit,
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
        Event::Received(Message::Reject(reject)) => {
            hand_over(core, |committed| LinkEvent::Reject {
                link,
                reject,
                committed,
            })
            .await
        }
        Event::Received(other) => {
            tracing::warn!(link, %peer, message = ?other, "unexpected message from a device, ignored");
            true
        }
        Event::Welcomed | Event::PeerLost => true,
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
