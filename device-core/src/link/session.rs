use crate::Instant;
use crate::proto::{
    DecodeError, Frame, Hello, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, Reject,
    RejectReason, Welcome,
};

use super::buffer::{Buffers, Inline, MessageBuffer};
use super::side::{BridgeSide, DeviceSide, Role, Side};

/// Timing of a session. All durations in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// First retransmission timeout; doubled after every timeout, reset by progress.
    pub initial_rto_ms: u32,
    /// Ceiling of the retransmission backoff.
    pub max_rto_ms: u32,
    /// Idle time after which a heartbeat is sent. A bridge announces its value in `Welcome`
    /// and the device adopts it.
    pub heartbeat_ms: u32,
    /// Silence after which the peer is considered gone. Also announced in `Welcome`.
    pub liveness_ms: u32,
}

impl Default for Config {
    /// 200 ms first retransmission, backing off to 5 s; heartbeat every 2 s; peer lost after
    /// 7 s of silence (three missed heartbeats and change).
    fn default() -> Self {
        Self {
            initial_rto_ms: 200,
            max_rto_ms: 5_000,
            heartbeat_ms: 2_000,
            liveness_ms: 7_000,
        }
    }
}

/// Where the session is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// Device: sending `Hello` until welcomed. Bridge: waiting for a `Hello`.
    Connecting,
    /// Reliable messages flow.
    Established,
    /// Bridge only: the peer went silent or spoke another version; the link should be closed.
    Closed,
}

/// What the application learns from the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Bridge: a device opened a fresh session. Everything sent in an earlier session that was
    /// not acknowledged is gone and must be re-sent by the application (a replayed `Assign` is
    /// harmless: the device answers it from its dedup table). `rebooted`: this session's boot id
    /// differs from the previous one's, so the device lost every task it had.
    Connected { hello: Hello, rebooted: bool },
    /// Device: the bridge accepted the `Hello`; messages can be sent.
    Welcomed,
    /// A message for the application: reliable ones in order and exactly once per session.
    Received(Message),
    /// The peer was silent for the liveness timeout. A device reconnects by itself; on a bridge
    /// the session is now [`State::Closed`].
    PeerLost,
}

/// Why [`Session::send`] refused a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Refusal {
    /// No session is established yet (or any more).
    NotEstablished,
    /// `W` messages are awaiting acknowledgement; retry after progress.
    WindowFull,
    /// An `Assign` beyond the device's advertised free slots.
    NoCredit,
    /// Only reliable messages (see [`Message::is_reliable`]) are sent this way.
    NotReliable,
    /// This side never sends this kind (a bridge sending `Report`, a device `Assign`).
    WrongSide,
    /// The peer's protocol version predates this kind ([`Message::since`]): a `Preempt` to a
    /// device that said version 1 in its `Hello`, a `Reprioritize` to one that said 1 or 2.
    Unsupported,
}

/// A refused message, handed back with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendError {
    pub reason: Refusal,
    pub message: Message,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Reliable messages sent for the first time.
    pub sent: u32,
    /// Reliable messages sent again after a timeout.
    pub retransmitted: u32,
    /// Reliable messages delivered to the application.
    pub delivered: u32,
    /// Frames that repeated an already delivered message.
    pub duplicates: u32,
    /// Frames that arrived ahead of a missing one and were kept in the reorder buffer.
    pub reordered: u32,
    /// Frames that arrived ahead of a missing one with the reorder buffer full (dropped; the
    /// sender goes back).
    pub out_of_order: u32,
    /// Byte sequences that were not valid frames.
    pub bad_frames: u32,
    /// Sessions started (handshakes completed).
    pub sessions: u32,
    /// Messages dropped unacknowledged while not accepting (see `set_accepting`).
    pub deferred: u32,
    /// Go-backs triggered by duplicate acks rather than by the timeout.
    pub fast_retransmits: u32,
}

/// An unsequenced reply a bridge owes: the `Welcome` to a `Hello`, or a `Reject` of a frame
/// it cannot take.
#[derive(Clone, Copy, Debug)]
enum Control {
    Welcome(Welcome),
    Reject(Reject),
}

/// One message a session holds: reliable and awaiting acknowledgement (the send window), or
/// arrived ahead of a missing one (the reorder buffer). Opaque outside the session: a
/// [`MessageBuffer`] only stores it.
#[derive(Clone, Debug)]
pub struct Unacked {
    seq: u32,
    message: Message,
}

impl Unacked {
    /// `message` numbered `seq`: for tests of a storage (a session makes its own).
    pub fn new(seq: u32, message: Message) -> Self {
        Self { seq, message }
    }
}

/// Sequence numbers run 1..=u32::MAX and wrap to 1 (0 marks unsequenced frames); comparisons
/// are serial-number arithmetic, so a session may outlive 2^32 messages.
pub(super) const fn next_seq(seq: u32) -> u32 {
    if seq == u32::MAX { 1 } else { seq + 1 }
}

/// The sequence number before `seq` (the inverse of [`next_seq`]).
pub(super) const fn prev_seq(seq: u32) -> u32 {
    if seq <= 1 { u32::MAX } else { seq - 1 }
}

/// Whether `a` comes after `b` in serial order.
pub(super) const fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// First sequence number of `role`'s messages in the session (boot, session): scattered over
/// the sequence space, like TCP's initial sequence numbers, so that a delayed frame of an
/// earlier session (a datagram, bytes left in a UART buffer) falls outside the new session's
/// window instead of being taken for one of its messages.
pub(super) const fn initial_seq(boot_id: u32, session_id: u32, role: Role) -> u32 {
    let salt: u32 = match role {
        Role::Device => 0x0D0D_0D0D,
        Role::Bridge => 0xB0B0_B0B0,
    };
    // murmur3's 32-bit finaliser over a mix of the inputs: every input bit affects every
    // output bit, with 32-bit multiplies only (cheap on Cortex-M0).
    let mut z = boot_id ^ session_id.rotate_left(16) ^ salt;
    z = (z ^ (z >> 16)).wrapping_mul(0x85EB_CA6B);
    z = (z ^ (z >> 13)).wrapping_mul(0xC2B2_AE35);
    z ^= z >> 16;
    let seq = z.wrapping_add(session_id);
    if seq == 0 { 1 } else { seq }
}

/// The reliable link session (see the [module docs](super)). `W` is the send window; `R`
/// the reorder buffer: how many messages that arrive ahead of a missing one are kept for
/// in-order delivery instead of dropped (0 suits links that never reorder, UART and TCP; a
/// few suit UDP, each costs one [`Message`] of RAM). `B` is where both are kept: inside the
/// session by default ([`Inline`]), or wherever a host with a heap chooses (see
/// [`buffer`](super::buffer)).
#[derive(Clone, Debug)]
pub struct Session<S: Side, const W: usize, const R: usize = 0, B: Buffers<W, R> = Inline> {
    side: core::marker::PhantomData<S>,
    config: Config,
    state: State,
    /// Device: the `Hello` to (re)send. Bridge: the current peer's `Hello`.
    hello: Option<Hello>,
    /// Device: when to send the next `Hello`, and the backoff between them.
    hello_at: u64,
    hello_rto: u32,
    /// An unsequenced reply to send at the next transmit: a bridge's `Welcome` or `Reject`.
    /// Kept as its own small type, not a `Message` (whose size is the largest message's).
    control: Option<Control>,

    /// Sequence number of the next new reliable message.
    next_seq: u32,
    /// Highest sequence number transmitted in this session, to tell first sends from resends.
    highest_sent: u32,
    /// Sent or queued reliable messages not yet acknowledged, oldest first.
    window: B::Window,
    /// Index in `window` of the next message to transmit; the ones before it are in flight.
    cursor: usize,
    /// When the oldest in-flight message times out; `u64::MAX` when nothing is in flight.
    rto_at: u64,
    rto: u32,
    /// Pure acks that did not advance while messages were in flight: the receiver acks every
    /// frame that arrives ahead of a hole at once, so two of them mean the oldest message was
    /// lost, and it is resent without waiting for the timeout (fast retransmit). Reset by
    /// progress.
    dup_acks: u8,

    /// Messages that arrived ahead of a missing one, held for in-order delivery.
    reorder: B::Reorder,
    /// Fast retransmit is owed: resend the oldest in-flight message before anything else.
    resend_oldest: bool,
    /// Sequence number of the last message delivered in order (the one before the peer's
    /// initial sequence number: none yet): our cumulative ack.
    delivered: u32,
    /// An acknowledgement is owed to the peer.
    ack_owed: bool,
    /// Our credit, advertised in every frame (a device's free task slots).
    local_credit: u8,
    /// The peer's latest (ack, credit) pair: the credit it advertised counting our messages up
    /// to `peer_ack`. Only ever moves forward, so a reordered older frame cannot undo it.
    peer_ack: u32,
    peer_credit: u8,

    /// When the last frame was received and sent (liveness and heartbeats), in ms.
    last_rx: u64,
    last_tx: u64,
    /// Reliable messages ever accepted by `send` and ever acknowledged. The window is FIFO
    /// and survives a device's reconnects, so the k-th message sent is acknowledged exactly
    /// when `acked_total >= k`: the application's ticket for "the peer has this".
    sent_total: u32,
    acked_total: u32,
    /// Whether sequenced messages may be delivered now; while `false` they are dropped
    /// unacknowledged (the peer resends them) but acks in their headers still count.
    accepting: bool,

    stats: Stats,
}

impl<const W: usize, const R: usize, B: Buffers<W, R>> Session<DeviceSide, W, R, B> {
    /// A device session that will open with `hello` (its version is set here). It starts
    /// connecting at once: [`poll_transmit`](Self::poll_transmit) yields the first `Hello`.
    pub fn device(mut hello: Hello, config: Config, now: Instant) -> Self {
        hello.version = PROTOCOL_VERSION;
        let mut s = Self::new(config, now);
        s.hello = Some(hello);
        s.hello_at = now.as_millis();
        s
    }
}

impl<const W: usize, const R: usize, B: Buffers<W, R>> Session<BridgeSide, W, R, B> {
    /// A bridge session waiting for a device's `Hello`. It closes itself if none arrives within
    /// the liveness timeout, whatever other frames arrive meanwhile.
    pub fn bridge(config: Config, now: Instant) -> Self {
        Self::new(config, now)
    }
}

impl<S: Side, const W: usize, const R: usize, B: Buffers<W, R>> Session<S, W, R, B> {
    fn new(config: Config, now: Instant) -> Self {
        Self {
            side: core::marker::PhantomData,
            config,
            state: State::Connecting,
            hello: None,
            hello_at: u64::MAX,
            hello_rto: config.initial_rto_ms,
            control: None,
            next_seq: 1,
            highest_sent: 0,
            window: B::Window::default(),
            cursor: 0,
            rto_at: u64::MAX,
            rto: config.initial_rto_ms,
            dup_acks: 0,
            reorder: B::Reorder::default(),
            resend_oldest: false,
            delivered: 0,
            ack_owed: false,
            local_credit: 0,
            peer_ack: 0,
            peer_credit: 0,
            last_rx: now.as_millis(),
            last_tx: now.as_millis(),
            sent_total: 0,
            acked_total: 0,
            accepting: true,
            stats: Stats::default(),
        }
    }

    /// The session's state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        S::ROLE
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bridge: the connected device's `Hello`.
    pub fn peer_hello(&self) -> Option<&Hello> {
        self.hello.as_ref().filter(|_| S::ROLE == Role::Bridge)
    }

    /// The protocol version the peer speaks, once it has said: on a bridge the version of
    /// the connected device's `Hello` (the one its `Welcome` answered in); on a device, while
    /// established, its own version (it accepts a `Welcome` of no other).
    pub fn peer_version(&self) -> Option<u16> {
        let known = S::ROLE == Role::Bridge || self.state == State::Established;
        self.hello.as_ref().filter(|_| known).map(|h| h.version)
    }

    /// Sets the credit this side advertises (a device: its free task slots). It travels in the
    /// header of every frame from now on.
    pub fn set_credit(&mut self, credit: u8) {
        // More credit is news the peer is waiting for (it may have tasks queued for the freed
        // slot): announce it now rather than with the next heartbeat.
        if credit > self.local_credit && self.state == State::Established {
            self.ack_owed = true;
        }
        self.local_credit = credit;
    }

    /// How many more `Assign`s the peer can take now: its advertised credit minus the
    /// `Assign`s sent after the message that advertisement acknowledged (exactly the ones
    /// still in the window, since the window is trimmed to the latest ack).
    pub fn credit(&self) -> u8 {
        let assigns = self
            .window
            .iter()
            .filter(|u| matches!(u.message, Message::Assign(_)));
        self.peer_credit
            .saturating_sub(assigns.count().min(255) as u8)
    }

    /// Reliable messages queued or in flight, not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.window.len()
    }

    /// Whether [`send`](Self::send) would take a message of any kind but `Assign` now.
    pub fn can_send(&self) -> bool {
        self.state == State::Established && !self.window.is_full()
    }

    /// Number of reliable messages ever accepted by [`send`](Self::send): the ticket of the
    /// message just sent.
    pub fn sent_total(&self) -> u32 {
        self.sent_total
    }

    /// Number of reliable messages ever acknowledged by the peer, in sending order.
    pub fn acked_total(&self) -> u32 {
        self.acked_total
    }

    /// Gates delivery of the peer's reliable messages (for an application that has no room to
    /// answer one). While closed they are dropped unacknowledged and the peer resends them;
    /// acknowledgements and credit in their headers are still taken.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Queues a reliable message. Refused, and handed back, when no session is established,
    /// when the peer's version predates the kind, when the window is full, or for an
    /// `Assign` beyond the peer's credit.
    // The refused message is handed back by value (there is no heap to box it in), as
    // `heapless::Vec::push` does.
    #[allow(clippy::result_large_err)]
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        self.queue(message, true)
    }

    /// Queues a replay of an `Assign` sent in an earlier session, which the device may
    /// already hold: it is not refused for lack of credit, since a device that holds it takes
    /// no new slot (it answers from its dedup table), and one that does not and has no free
    /// slot refuses it with `NoFreeSlot`. Otherwise as [`send`](Self::send).
    #[allow(clippy::result_large_err)]
    pub fn resend(&mut self, message: Message) -> Result<(), SendError> {
        self.queue(message, false)
    }

    #[allow(clippy::result_large_err)]
    fn queue(&mut self, message: Message, needs_credit: bool) -> Result<(), SendError> {
        // A kind the peer's version predates. A device is welcomed only in its own version,
        // so only a bridge checks (and the device's firmware leaves the check out).
        let too_new =
            S::ROLE == Role::Bridge && self.peer_version().is_none_or(|v| v < message.since());
        let reason = if !message.is_reliable() {
            Some(Refusal::NotReliable)
        } else if S::SENDS & (1 << crate::proto::wire::tag_of(&message)) == 0 {
            Some(Refusal::WrongSide)
        } else if self.state != State::Established {
            Some(Refusal::NotEstablished)
        } else if too_new {
            Some(Refusal::Unsupported)
        } else if needs_credit && matches!(message, Message::Assign(_)) && self.credit() == 0 {
            Some(Refusal::NoCredit)
        } else if self.window.is_full() {
            Some(Refusal::WindowFull)
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(SendError { reason, message });
        }
        let seq = self.next_seq;
        self.next_seq = next_seq(seq);
        self.window
            .push_back(Unacked { seq, message })
            .map_err(|u| SendError {
                reason: Refusal::WindowFull,
                message: u.message,
            })?;
        self.sent_total = self.sent_total.wrapping_add(1);
        Ok(())
    }

    /// Handles one received frame's bytes (a datagram, or what a [`Deframer`] split off).
    /// Invalid bytes are counted and returned as the error and change nothing else, except
    /// that a bridge answers a `Hello` of another version with a `Reject` and closes.
    ///
    /// [`Deframer`]: crate::proto::Deframer
    pub fn handle_bytes(
        &mut self,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Option<Event>, DecodeError> {
        match S::decode(bytes) {
            Ok(frame) => Ok(self.handle_frame(frame, now)),
            Err(e) => {
                self.stats.bad_frames = self.stats.bad_frames.saturating_add(1);
                if matches!(e, DecodeError::UnsupportedVersion(_)) {
                    self.refuse_version();
                }
                Err(e)
            }
        }
    }

    /// A bridge waiting for a `Hello` got one of a version it does not serve: it answers
    /// `Reject(UnsupportedVersion)` and closes.
    fn refuse_version(&mut self) {
        if S::ROLE == Role::Bridge && self.state == State::Connecting {
            let reason = RejectReason::UnsupportedVersion;
            self.control = Some(Control::Reject(Reject {
                handle: None,
                reason,
            }));
            self.state = State::Closed;
        }
    }

    /// Handles one decoded frame. A `Hello` or `Welcome` of a version this side does not
    /// accept is dropped as [`handle_bytes`](Self::handle_bytes) drops it (counted, and a
    /// connecting bridge rejects it and closes).
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Option<Event> {
        if self.state == State::Closed {
            return None;
        }
        // As `S::decode` does for bytes (a device: only its own version; a bridge: every
        // version it serves). Only the kind this side receives is looked at.
        let unserved = match (S::ROLE, &frame.message) {
            (Role::Bridge, Message::Hello(h)) => {
                !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&h.version)
            }
            (Role::Device, Message::Welcome(w)) => w.version != PROTOCOL_VERSION,
            _ => false,
        };
        if unserved {
            self.stats.bad_frames = self.stats.bad_frames.saturating_add(1);
            self.refuse_version();
            return None;
        }
        // A bridge waiting for a `Hello` hears only a `Hello`: anything else (a device's
        // heartbeats from an older session, or a peer that never says `Hello`) is answered
        // with `Reject(NoSession)` and does not keep the session alive, so a connection that
        // never opens a session is closed at the liveness timeout.
        let awaiting_hello = S::ROLE == Role::Bridge
            && self.state == State::Connecting
            && !matches!(frame.message, Message::Hello(_));
        if !awaiting_hello {
            self.last_rx = now.as_millis();
        }
        match (S::ROLE, frame.message) {
            (Role::Bridge, Message::Hello(hello)) => self.on_hello(hello, frame.credit, now),
            (Role::Device, Message::Welcome(welcome)) => self.on_welcome(welcome, now),
            (Role::Device, Message::Reject(r)) if frame.seq == 0 => {
                if r.reason == RejectReason::NoSession {
                    // The bridge has no session for us (it restarted): handshake again now
                    // rather than after the liveness timeout.
                    self.reconnect(now);
                }
                Some(Event::Received(Message::Reject(r)))
            }
            (_, message) if self.state != State::Established => {
                if S::ROLE == Role::Bridge {
                    let reason = RejectReason::NoSession;
                    self.control = Some(Control::Reject(Reject {
                        handle: None,
                        reason,
                    }));
                }
                let _ = message;
                None
            }
            (_, message) => {
                let pure_ack = matches!(message, Message::Ack);
                self.on_ack(frame.ack, frame.credit, pure_ack, now);
                if frame.seq != 0 {
                    return self.on_sequenced(frame.seq, message);
                }
                match message {
                    Message::Heartbeat | Message::Ack => None,
                    other => Some(Event::Received(other)),
                }
            }
        }
    }

    fn on_hello(&mut self, hello: Hello, credit: u8, now: Instant) -> Option<Event> {
        let known = self.hello.as_ref().map(|h| (h.boot_id, h.session_id));
        // Answered in the device's own version (checked in range already), so that a device
        // of an older version keeps working.
        let welcome = Welcome {
            version: hello.version,
            session_id: hello.session_id,
            heartbeat_ms: self.config.heartbeat_ms,
            liveness_ms: self.config.liveness_ms,
        };
        self.control = Some(Control::Welcome(welcome));
        if known == Some((hello.boot_id, hello.session_id))
            && self.state == State::Established
            && self.nothing_delivered()
        {
            // A retransmitted Hello: our Welcome was lost (a device sends no reliable message
            // before it has one). Answer again, keep the session. Once the device has sent
            // one, the same Hello again is a device that restarted and drew the same boot id
            // (a crystal-clocked MCU with little entropy): a new session.
            return None;
        }
        // A new boot id is a reboot; so is the very Hello of an established session that had
        // delivered something (returned above otherwise): a device sends a Hello again only
        // before its first reliable message, so it restarted, and drew the same boot id.
        let rebooted = known.is_some_and(|(boot, _)| boot != hello.boot_id)
            || (known == Some((hello.boot_id, hello.session_id))
                && self.state == State::Established);
        self.hello = Some(hello.clone());
        self.reset_sequences(now);
        self.window.clear();
        self.peer_credit = credit;
        self.state = State::Established;
        self.stats.sessions += 1;
        Some(Event::Connected { hello, rebooted })
    }

    fn on_welcome(&mut self, welcome: Welcome, now: Instant) -> Option<Event> {
        let current = self.hello.as_ref().map(|h| h.session_id);
        if self.state != State::Connecting || current != Some(welcome.session_id) {
            return None; // stale, or a repeat of one already taken
        }
        self.config.heartbeat_ms = welcome.heartbeat_ms.max(1);
        self.config.liveness_ms = welcome.liveness_ms.max(welcome.heartbeat_ms);
        // Messages the previous session left unacknowledged go out again in this one, in
        // order, renumbered.
        self.reset_sequences(now);
        for u in self.window.iter_mut() {
            u.seq = self.next_seq;
            self.next_seq = next_seq(self.next_seq);
        }
        self.state = State::Established;
        self.hello_at = u64::MAX;
        self.stats.sessions += 1;
        // Tell the bridge our credit at once.
        self.ack_owed = true;
        Some(Event::Welcomed)
    }

    /// The first sequence numbers of the session (boot, session) of the current `Hello`:
    /// ours and the peer's.
    fn first_seqs(&self) -> (u32, u32) {
        let (boot, session) = self
            .hello
            .as_ref()
            .map_or((0, 0), |h| (h.boot_id, h.session_id));
        let peer = match S::ROLE {
            Role::Device => Role::Bridge,
            Role::Bridge => Role::Device,
        };
        (
            initial_seq(boot, session, S::ROLE),
            initial_seq(boot, session, peer),
        )
    }

    /// Whether no reliable message of the peer was delivered since the session's sequences
    /// were reset.
    fn nothing_delivered(&self) -> bool {
        self.delivered == prev_seq(self.first_seqs().1)
    }

    /// Fresh sequence space for the session (boot, session) of the current `Hello`.
    fn reset_sequences(&mut self, now: Instant) {
        let (ours, peers) = self.first_seqs();
        self.next_seq = ours;
        self.highest_sent = prev_seq(self.next_seq);
        self.delivered = prev_seq(peers);
        self.cursor = 0;
        self.rto = self.config.initial_rto_ms;
        self.rto_at = u64::MAX;
        self.dup_acks = 0;
        self.resend_oldest = false;
        self.reorder.clear();
        self.ack_owed = false;
        self.peer_ack = self.highest_sent;
        self.peer_credit = 0;
        self.last_rx = now.as_millis();
        self.last_tx = now.as_millis();
    }

    /// Device: the transport was lost (a TCP connection closed, a UART re-plugged). Starts a
    /// new handshake at once, keeping unacknowledged messages for the new session, instead
    /// of waiting for the liveness timeout. A bridge session simply closes.
    pub fn link_lost(&mut self, now: Instant) {
        match S::ROLE {
            Role::Device => self.reconnect(now),
            Role::Bridge => self.state = State::Closed,
        }
    }

    /// Device: abandon the session and handshake again, keeping unacknowledged messages.
    fn reconnect(&mut self, now: Instant) {
        if let Some(h) = self.hello.as_mut() {
            h.session_id = h.session_id.wrapping_add(1);
        }
        self.state = State::Connecting;
        self.hello_at = now.as_millis();
        self.hello_rto = self.config.initial_rto_ms;
        self.cursor = 0;
        self.rto_at = u64::MAX;
    }

    fn on_ack(&mut self, ack: u32, credit: u8, pure_ack: bool, now: Instant) {
        // Only an ack between the last one taken and the last message sent is believed;
        // anything else is a stale frame of another session (or garbage) and is ignored.
        if after(self.peer_ack, ack) || after(ack, prev_seq(self.next_seq)) {
            return;
        }
        if after(ack, self.peer_ack) || credit > self.peer_credit {
            self.peer_ack = ack;
            self.peer_credit = credit;
        }
        let mut progressed = false;
        while self.window.front().is_some_and(|u| !after(u.seq, ack)) {
            self.window.pop_front();
            self.acked_total = self.acked_total.wrapping_add(1);
            self.cursor = self.cursor.saturating_sub(1);
            progressed = true;
        }
        if progressed {
            self.dup_acks = 0;
            self.rto = self.config.initial_rto_ms;
            self.rto_at = if self.cursor > 0 {
                now.as_millis() + u64::from(self.rto)
            } else {
                u64::MAX
            };
        } else if pure_ack && self.cursor > 0 && ack == self.peer_ack {
            self.dup_acks = self.dup_acks.saturating_add(1);
            if self.dup_acks == 2 {
                // Resend only the hole: a peer with a reorder buffer has the rest, and one
                // without loses only an RTO before going back for them.
                self.stats.fast_retransmits += 1;
                self.resend_oldest = true;
            }
        }
    }

    fn on_sequenced(&mut self, seq: u32, message: Message) -> Option<Event> {
        self.ack_owed = true;
        if !after(seq, self.delivered) {
            self.stats.duplicates += 1;
            return None;
        }
        if seq != next_seq(self.delivered) {
            // Ahead of a hole: keep it if there is room (and it is not kept already).
            if self.reorder.iter().any(|u| u.seq == seq) {
                self.stats.duplicates += 1;
            } else if self.reorder.push_back(Unacked { seq, message }).is_ok() {
                self.stats.reordered += 1;
            } else {
                self.stats.out_of_order += 1;
            }
            return None;
        }
        if !self.accepting {
            self.stats.deferred += 1;
            return None;
        }
        self.delivered = seq;
        self.stats.delivered += 1;
        Some(Event::Received(message))
    }

    /// The next message held in the reorder buffer that is now in order. Call until `None`
    /// after every [`handle_bytes`](Self::handle_bytes) (and after reopening delivery with
    /// [`set_accepting`](Self::set_accepting)).
    pub fn poll_event(&mut self) -> Option<Event> {
        if !self.accepting || self.state != State::Established {
            return None;
        }
        let expected = next_seq(self.delivered);
        let u = self.reorder.take(|u| u.seq == expected)?;
        self.delivered = u.seq;
        self.ack_owed = true;
        self.stats.delivered += 1;
        Some(Event::Received(u.message))
    }

    /// Acts on timers due at `now`: liveness, and retransmission (go back to the oldest
    /// unacknowledged message and double the timeout).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event> {
        let now_ms = now.as_millis();
        let silent = now_ms.saturating_sub(self.last_rx) >= u64::from(self.config.liveness_ms);
        match self.state {
            State::Established | State::Connecting if silent && S::ROLE == Role::Bridge => {
                self.state = State::Closed;
                Some(Event::PeerLost)
            }
            State::Established if silent => {
                self.reconnect(now);
                Some(Event::PeerLost)
            }
            State::Established if now_ms >= self.rto_at => {
                self.cursor = 0;
                self.rto = self.rto.saturating_mul(2).min(self.config.max_rto_ms);
                self.rto_at = u64::MAX; // re-armed when the oldest goes out again
                None
            }
            _ => None,
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) or
    /// [`poll_transmit`](Self::poll_transmit) has timed work to do; `None` when closed.
    /// (Work caused by input — acks, replies, new messages — is ready at once: call
    /// `poll_transmit` after every input.)
    pub fn poll_timeout(&self) -> Option<Instant> {
        let liveness = self
            .last_rx
            .saturating_add(u64::from(self.config.liveness_ms));
        let t = match (self.state, S::ROLE) {
            (State::Closed, _) => return None,
            (State::Connecting, Role::Device) => self.hello_at,
            (State::Connecting, Role::Bridge) => liveness,
            (State::Established, _) => {
                let heartbeat = self
                    .last_tx
                    .saturating_add(u64::from(self.config.heartbeat_ms));
                liveness.min(heartbeat).min(self.rto_at)
            }
        };
        Some(Instant::from_millis(t))
    }

    /// Writes the next frame to send into `out` (at least [`MAX_FRAME`](crate::proto::MAX_FRAME)
    /// bytes) and returns its length; `None` when there is nothing to send now. Call until
    /// `None` after every input and timeout.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        let now_ms = now.as_millis();
        let (ack, credit) = (self.delivered, self.local_credit);
        // Decide what goes out and do the bookkeeping; then encode it where it is kept.
        let n = if let Some(control) = self.control.take() {
            let message = match control {
                Control::Welcome(w) => Message::Welcome(w),
                Control::Reject(r) => Message::Reject(r),
            };
            S::encode(0, ack, credit, &message, out).ok()?
        } else {
            match self.state {
                State::Closed => return None,
                State::Connecting => {
                    if S::ROLE == Role::Bridge {
                        return None;
                    }
                    let hello = self.hello.as_ref().filter(|_| now_ms >= self.hello_at)?;
                    let n = S::encode_hello(ack, credit, hello, out).ok()?;
                    self.hello_at = now_ms.saturating_add(u64::from(self.hello_rto));
                    self.hello_rto = self.hello_rto.saturating_mul(2).min(self.config.max_rto_ms);
                    n
                }
                State::Established => {
                    let index = if self.resend_oldest && self.cursor > 0 && !self.window.is_empty()
                    {
                        self.resend_oldest = false;
                        self.stats.retransmitted += 1;
                        self.rto_at = now_ms + u64::from(self.rto);
                        Some(0)
                    } else if let Some(seq) = self.window.get(self.cursor).map(|u| u.seq) {
                        if after(seq, self.highest_sent) {
                            self.highest_sent = seq;
                            self.stats.sent += 1;
                        } else {
                            self.stats.retransmitted += 1;
                        }
                        if self.rto_at == u64::MAX {
                            self.rto_at = now_ms + u64::from(self.rto);
                        }
                        self.cursor += 1;
                        Some(self.cursor - 1)
                    } else {
                        None
                    };
                    let heartbeat_due = now_ms
                        >= self
                            .last_tx
                            .saturating_add(u64::from(self.config.heartbeat_ms));
                    match index.and_then(|i| self.window.get(i)) {
                        Some(u) => S::encode(u.seq, ack, credit, &u.message, out).ok()?,
                        None if self.ack_owed => {
                            S::encode(0, ack, credit, &Message::Ack, out).ok()?
                        }
                        None if heartbeat_due => {
                            S::encode(0, ack, credit, &Message::Heartbeat, out).ok()?
                        }
                        None => return None,
                    }
                }
            }
        };
        self.ack_owed = false;
        self.last_tx = now_ms;
        Some(n)
    }
}
