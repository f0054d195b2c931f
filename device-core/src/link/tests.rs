//! Session rules, one test each, over an in-memory link whose losses the test chooses.

use super::*;
use crate::Instant;
use crate::proto::{
    self, Assign, Cancel, Frame, Hello, MAX_FRAME, Message, Preempt, Reject, RejectReason,
    Reprioritize, Welcome,
};

type Dev = Session<DeviceSide, 4>;
type Br = Session<BridgeSide, 4>;

fn hello(boot: u32) -> Hello {
    Hello {
        version: 0, // set by Session::device
        device_id: heapless::String::try_from("dev").unwrap(),
        boot_id: boot,
        session_id: 0,
        capabilities: heapless::Vec::new(),
        locks: heapless::Vec::new(),
        slots: 4,
        max_payload: 64,
        resumable: 0,
        restartable: 0,
    }
}

fn assign(handle: u32) -> Message {
    Message::Assign(Assign {
        handle,
        priority: crate::Priority::P3,
        deadline_ms: None,
        capability: heapless::String::try_from("echo").unwrap(),
        locks: heapless::Vec::new(),
        payload: heapless::Vec::new(),
        trace_id: heapless::String::new(),
    })
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// The bytes of an unsequenced frame carrying `message`.
fn unsequenced(message: Message, buf: &mut [u8; MAX_FRAME]) -> usize {
    proto::encode(
        &Frame {
            seq: 0,
            ack: 0,
            credit: 0,
            message,
        },
        buf,
    )
    .unwrap()
}

/// Everything `s` wants to send now, decoded.
fn drain<T: Side>(s: &mut Session<T, 4>, now: Instant) -> Vec<Frame> {
    let mut out = vec![];
    let mut buf = [0u8; MAX_FRAME];
    while let Some(n) = s.poll_transmit(now, &mut buf) {
        out.push(proto::decode(&buf[..n]).unwrap());
        assert!(out.len() < 100, "poll_transmit never returns None");
    }
    out
}

/// Delivers frames, returning the events they caused.
fn deliver<T: Side>(to: &mut Session<T, 4>, frames: Vec<Frame>, now: Instant) -> Vec<Event> {
    frames
        .into_iter()
        .filter_map(|f| to.handle_frame(f, now))
        .collect()
}

/// A connected pair with `credit` free slots on the device.
fn connected(credit: u8) -> (Dev, Br) {
    let cfg = Config::default();
    let mut dev = Dev::device(hello(7), cfg, at(0));
    dev.set_credit(credit);
    let mut br = Br::bridge(cfg, at(0));
    let ev = deliver(&mut br, drain(&mut dev, at(0)), at(0));
    assert!(matches!(
        &ev[..],
        [Event::Connected {
            rebooted: false,
            ..
        }]
    ));
    assert_eq!(
        deliver(&mut dev, drain(&mut br, at(0)), at(0)),
        [Event::Welcomed]
    );
    deliver(&mut br, drain(&mut dev, at(0)), at(0));
    (dev, br)
}

#[test]
fn handshake_establishes_both_ends_and_retries_hello_with_backoff() {
    let cfg = Config::default();
    let mut dev = Dev::device(hello(7), cfg, at(0));
    assert_eq!(dev.state(), State::Connecting);
    assert_eq!(drain(&mut dev, at(0)).len(), 1, "first Hello at once");
    assert_eq!(drain(&mut dev, at(199)).len(), 0);
    assert_eq!(dev.poll_timeout(), Some(at(200)));
    assert_eq!(
        drain(&mut dev, at(200)).len(),
        1,
        "lost: resent after 200 ms"
    );
    assert_eq!(dev.poll_timeout(), Some(at(600)), "then after 400 ms");
    let mut br = Br::bridge(cfg, at(0));
    deliver(&mut br, drain(&mut dev, at(600)), at(600));
    assert_eq!(br.state(), State::Established);
    assert_eq!(
        br.peer_hello().map(|h| h.version),
        Some(proto::PROTOCOL_VERSION)
    );
    assert_eq!(
        deliver(&mut dev, drain(&mut br, at(600)), at(600)),
        [Event::Welcomed]
    );
    assert_eq!(dev.state(), State::Established);
}

#[test]
fn lost_welcome_is_answered_again_without_resetting_the_session() {
    let cfg = Config::default();
    let mut dev = Dev::device(hello(7), cfg, at(0));
    dev.set_credit(2);
    let mut br = Br::bridge(cfg, at(0));
    deliver(&mut br, drain(&mut dev, at(0)), at(0));
    drain(&mut br, at(0)); // Welcome lost
    br.send(assign(1)).unwrap();
    let lost = drain(&mut br, at(0)); // the Assign reaches a device that is not welcomed yet
    assert!(deliver(&mut dev, lost, at(0)).is_empty());
    let events = deliver(&mut br, drain(&mut dev, at(200)), at(200)); // repeated Hello
    assert!(events.is_empty(), "no new session: {events:?}");
    assert_eq!(br.unacknowledged(), 1, "the Assign is still pending");
    assert_eq!(
        deliver(&mut dev, drain(&mut br, at(200)), at(200)),
        [Event::Welcomed]
    );
    br.handle_timeout(at(400));
    let got = deliver(&mut dev, drain(&mut br, at(400)), at(400));
    assert_eq!(got, [Event::Received(assign(1))]);
}

#[test]
fn reliable_messages_arrive_in_order_exactly_once_despite_loss() {
    let (mut dev, mut br) = connected(4);
    for h in 1..=3 {
        br.send(assign(h)).unwrap();
    }
    let mut frames = drain(&mut br, at(0));
    assert_eq!(frames.len(), 3);
    frames.remove(0); // the first is lost: the others arrive out of order and are dropped
    assert!(deliver(&mut dev, frames, at(0)).is_empty());
    assert_eq!(dev.stats().out_of_order, 2);
    deliver(&mut br, drain(&mut dev, at(0)), at(0)); // duplicate acks change nothing
    assert_eq!(br.unacknowledged(), 3);
    assert_eq!(br.poll_timeout(), Some(at(200)));
    br.handle_timeout(at(200));
    let resent = drain(&mut br, at(200));
    assert_eq!(resent.len(), 3, "go back to the oldest");
    let mut twice = resent.clone();
    twice.extend(resent);
    let got = deliver(&mut dev, twice, at(200));
    assert_eq!(
        got,
        (1..=3)
            .map(|h| Event::Received(assign(h)))
            .collect::<Vec<_>>()
    );
    assert_eq!(dev.stats().duplicates, 3);
    deliver(&mut br, drain(&mut dev, at(200)), at(200));
    assert_eq!(br.unacknowledged(), 0);
    assert_eq!(br.stats().retransmitted, 3);
}

#[test]
fn retransmission_backs_off_and_resets_on_progress() {
    let (mut dev, mut br) = connected(4);
    br.send(assign(1)).unwrap();
    drain(&mut br, at(0));
    let assigns = |frames: &[Frame]| frames.iter().filter(|f| f.seq != 0).count();
    let mut t = 0;
    let mut last = vec![];
    for rto in [200, 400, 800, 1600, 3200, 5000, 5000] {
        // Keep the link alive so that liveness does not end the session.
        let alive = Frame {
            seq: 0,
            ack: 0,
            credit: 4,
            message: Message::Heartbeat,
        };
        deliver(&mut br, vec![alive.clone()], at(t + rto - 1));
        br.handle_timeout(at(t + rto - 1));
        assert_eq!(
            assigns(&drain(&mut br, at(t + rto - 1))),
            0,
            "resent before {rto} ms"
        );
        deliver(&mut br, vec![alive], at(t + rto));
        br.handle_timeout(at(t + rto));
        last = drain(&mut br, at(t + rto));
        assert_eq!(assigns(&last), 1, "not resent after {rto} ms");
        t += rto;
    }
    // Delivered at last: the ack brings the timeout back to the initial one.
    assert_eq!(deliver(&mut dev, last, at(t)), [Event::Received(assign(1))]);
    deliver(&mut br, drain(&mut dev, at(t)), at(t));
    assert_eq!(br.unacknowledged(), 0);
    br.send(assign(2)).unwrap();
    drain(&mut br, at(t));
    assert_eq!(br.poll_timeout(), Some(at(t + 200)));
}

#[test]
fn credit_limits_assigns_exactly() {
    let (mut dev, mut br) = connected(2);
    assert_eq!(br.credit(), 2);
    br.send(assign(1)).unwrap();
    br.send(assign(2)).unwrap();
    let refused = br.send(assign(3)).unwrap_err();
    assert_eq!(
        (refused.reason, refused.message),
        (Refusal::NoCredit, assign(3))
    );
    // Cancels are not limited by task slots.
    br.send(Message::Cancel(Cancel { handle: 1 })).unwrap();
    deliver(&mut dev, drain(&mut br, at(0)), at(0));
    // The device took both: an ack without new slots still leaves no credit.
    dev.set_credit(0);
    deliver(&mut br, drain(&mut dev, at(0)), at(0));
    assert_eq!(br.credit(), 0);
    // One finishes: its report carries credit 1 for everything acknowledged.
    dev.set_credit(1);
    let report = Message::Reject(Reject {
        handle: Some(2),
        reason: RejectReason::UnknownLock,
    });
    dev.send(report).unwrap();
    deliver(&mut br, drain(&mut dev, at(1)), at(1));
    assert_eq!(br.credit(), 1);
}

#[test]
fn a_replayed_assign_needs_no_credit_and_reaches_the_device() {
    let (mut dev, mut br) = connected(0);
    assert_eq!(br.send(assign(1)).unwrap_err().reason, Refusal::NoCredit);
    br.resend(assign(1)).unwrap();
    let events = deliver(&mut dev, drain(&mut br, at(0)), at(0));
    assert_eq!(events, [Event::Received(assign(1))]);
    // Other limits still hold: a full window refuses replays too.
    let mut refused = None;
    for h in 2..100 {
        if let Err(e) = br.resend(assign(h)) {
            refused = Some(e.reason);
            break;
        }
    }
    assert_eq!(refused, Some(Refusal::WindowFull));
}

#[test]
fn reordered_older_frame_cannot_raise_the_credit() {
    let (mut dev, mut br) = connected(1);
    br.send(assign(1)).unwrap();
    deliver(&mut dev, drain(&mut br, at(0)), at(0));
    let old = Frame {
        seq: 0,
        ack: 0,
        credit: 1,
        message: Message::Heartbeat,
    };
    dev.set_credit(0);
    deliver(&mut br, drain(&mut dev, at(0)), at(0));
    assert_eq!(br.credit(), 0);
    deliver(&mut br, vec![old], at(0)); // a delayed frame from before the Assign
    assert_eq!(br.credit(), 0);
}

#[test]
fn heartbeats_when_idle_and_liveness_ends_a_silent_session() {
    let (mut dev, mut br) = connected(1);
    assert_eq!(dev.poll_timeout(), Some(at(2000)));
    let hb = drain(&mut dev, at(2000));
    assert!(matches!(
        &hb[..],
        [Frame {
            message: Message::Heartbeat,
            ..
        }]
    ));
    deliver(&mut br, hb, at(2000));
    assert_eq!(
        br.poll_timeout(),
        Some(at(2000)),
        "the bridge heartbeats too"
    );
    // Silence from the device for 7 s after its last frame.
    assert_eq!(br.handle_timeout(at(8999)), None);
    assert_eq!(br.handle_timeout(at(9000)), Some(Event::PeerLost));
    assert_eq!(br.state(), State::Closed);
    assert_eq!(br.poll_timeout(), None);
    // The device hears nothing either and starts over.
    assert_eq!(dev.handle_timeout(at(7000)), Some(Event::PeerLost));
    assert_eq!(dev.state(), State::Connecting);
    let again = drain(&mut dev, at(7000));
    assert!(matches!(&again[..], [Frame { message: Message::Hello(h), .. }] if h.session_id == 1));
}

#[test]
fn a_bridge_waiting_for_a_hello_closes_at_the_liveness_timeout_whatever_else_arrives() {
    let mut br = Br::bridge(Config::default(), at(0));
    let mut buf = [0u8; MAX_FRAME];
    // A heartbeat every second, and never a Hello: each is answered with NoSession, and none
    // keeps the session alive.
    for s in 1..7u64 {
        let n = unsequenced(Message::Heartbeat, &mut buf);
        assert_eq!(br.handle_bytes(&buf[..n], at(s * 1000)), Ok(None));
        assert!(matches!(
            &drain(&mut br, at(s * 1000))[..],
            [Frame {
                message: Message::Reject(Reject {
                    reason: RejectReason::NoSession,
                    ..
                }),
                ..
            }]
        ));
        assert_eq!(br.poll_timeout(), Some(at(7000)), "after {s} s");
    }
    assert_eq!(br.handle_timeout(at(6999)), None);
    assert_eq!(br.handle_timeout(at(7000)), Some(Event::PeerLost));
    assert_eq!(br.state(), State::Closed);

    // A Hello in time opens the session, and from then on every frame counts.
    let mut br = Br::bridge(Config::default(), at(0));
    let mut dev = Dev::device(hello(3), Config::default(), at(6000));
    let ev = deliver(&mut br, drain(&mut dev, at(6000)), at(6000));
    assert!(matches!(&ev[..], [Event::Connected { .. }]));
    assert_eq!(br.handle_timeout(at(7000)), None);
    assert_eq!(br.state(), State::Established);
}

#[test]
fn reconnect_resends_unacknowledged_messages_in_a_new_session() {
    let (mut dev, br) = connected(1);
    let report = |h| {
        Message::Reject(Reject {
            handle: Some(h),
            reason: RejectReason::UnknownLock,
        })
    };
    dev.send(report(1)).unwrap();
    dev.send(report(2)).unwrap();
    drain(&mut dev, at(0)); // both lost with the link
    dev.handle_timeout(at(7000));
    let mut br2 = Br::bridge(Config::default(), at(7000));
    let ev = deliver(&mut br2, drain(&mut dev, at(7000)), at(7000));
    assert!(matches!(&ev[..], [Event::Connected { .. }]));
    deliver(&mut dev, drain(&mut br2, at(7000)), at(7000));
    let got = deliver(&mut br2, drain(&mut dev, at(7000)), at(7000));
    assert_eq!(
        got,
        [Event::Received(report(1)), Event::Received(report(2))]
    );
    drop(br);
}

#[test]
fn new_boot_id_resets_the_session_and_is_reported() {
    let (_dev, mut br) = connected(1);
    br.send(assign(1)).unwrap();
    let mut rebooted = Dev::device(hello(8), Config::default(), at(5));
    let ev = deliver(&mut br, drain(&mut rebooted, at(5)), at(5));
    assert!(matches!(&ev[..], [Event::Connected { rebooted: true, .. }]));
    assert_eq!(
        br.unacknowledged(),
        0,
        "the old session's messages are dropped"
    );
}

#[test]
fn frames_without_a_session_get_no_session_and_the_device_reconnects() {
    let (mut dev, _br) = connected(1);
    let mut restarted = Br::bridge(Config::default(), at(10));
    dev.send(Message::Reject(Reject {
        handle: Some(1),
        reason: RejectReason::UnknownLock,
    }))
    .unwrap();
    deliver(&mut restarted, drain(&mut dev, at(10)), at(10));
    let reply = drain(&mut restarted, at(10));
    let ev = deliver(&mut dev, reply, at(10));
    assert!(matches!(
        &ev[..],
        [Event::Received(Message::Reject(Reject {
            reason: RejectReason::NoSession,
            ..
        }))]
    ));
    assert_eq!(dev.state(), State::Connecting);
    let ev = deliver(&mut restarted, drain(&mut dev, at(10)), at(10));
    assert!(matches!(&ev[..], [Event::Connected { .. }]));
}

#[test]
fn other_protocol_version_is_rejected_and_closes() {
    let mut br = Br::bridge(Config::default(), at(0));
    let mut buf = [0u8; MAX_FRAME];
    let mut h = hello(1);
    h.version = 9;
    let n = unsequenced(Message::Hello(h), &mut buf);
    assert_eq!(
        br.handle_bytes(&buf[..n], at(0)),
        Err(proto::DecodeError::UnsupportedVersion(9))
    );
    let reply = drain(&mut br, at(0));
    let reject = Reject {
        handle: None,
        reason: RejectReason::UnsupportedVersion,
    };
    assert_eq!(
        reply.iter().map(|f| &f.message).collect::<Vec<_>>(),
        [&Message::Reject(reject)]
    );
    assert_eq!(br.state(), State::Closed);
}

#[test]
fn garbage_is_counted_and_changes_nothing() {
    let (_dev, mut br) = connected(1);
    let before = format!("{br:?}");
    assert!(br.handle_bytes(&[1, 2, 3], at(1)).is_err());
    assert_eq!(br.stats().bad_frames, 1);
    assert_eq!(
        format!("{br:?}").replace("bad_frames: 1", "bad_frames: 0"),
        before
    );
}

#[test]
fn acks_for_unsent_messages_are_ignored() {
    let (_dev, mut br) = connected(1);
    br.send(assign(1)).unwrap();
    drain(&mut br, at(0));
    deliver(
        &mut br,
        vec![Frame {
            seq: 0,
            ack: 5,
            credit: 9,
            message: Message::Ack,
        }],
        at(0),
    );
    assert_eq!(br.unacknowledged(), 1);
    assert_eq!(br.credit(), 0);
}

#[test]
fn sequence_numbers_wrap_around() {
    use super::session::{after, next_seq};
    assert_eq!(
        next_seq(u32::MAX),
        1,
        "0 is reserved for unsequenced frames"
    );
    assert!(after(2, u32::MAX));
    assert!(!after(u32::MAX, 2));
}

#[test]
fn a_delayed_frame_of_the_previous_session_is_not_taken_for_a_new_one() {
    let (mut dev, mut br) = connected(2);
    br.send(assign(1)).unwrap();
    let stale = drain(&mut br, at(0)); // delayed in the network
    // The device loses the link and reconnects; a fresh bridge session answers.
    dev.handle_timeout(at(7000));
    let mut br2 = Br::bridge(Config::default(), at(7000));
    deliver(&mut br2, drain(&mut dev, at(7000)), at(7000));
    deliver(&mut dev, drain(&mut br2, at(7000)), at(7000));
    assert_eq!(dev.state(), State::Established);
    // The old Assign finally arrives: not delivered, and its header changes nothing.
    assert!(deliver(&mut dev, stale, at(7001)).is_empty());
    // And a stale ack from the device's old session does not acknowledge new messages.
    br2.send(assign(2)).unwrap();
    drain(&mut br2, at(7001));
    let old_ack = Frame {
        seq: 0,
        ack: 1,
        credit: 9,
        message: Message::Ack,
    };
    deliver(&mut br2, vec![old_ack], at(7002));
    assert_eq!((br2.unacknowledged(), br2.credit()), (1, 1));
    drop(br);
}

#[test]
fn a_side_refuses_messages_only_the_other_side_receives() {
    let (mut dev, mut br) = connected(1);
    let mut buf = [0u8; MAX_FRAME];
    // A device never receives Hello or Report; a bridge never receives Assign or Welcome.
    let mut h = hello(3);
    h.version = proto::PROTOCOL_VERSION;
    let n = unsequenced(Message::Hello(h), &mut buf);
    assert_eq!(
        dev.handle_bytes(&buf[..n], at(1)),
        Err(proto::DecodeError::Unexpected(0))
    );
    let n = proto::encode(
        &Frame {
            seq: 9,
            ack: 0,
            credit: 0,
            message: assign(9),
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(
        br.handle_bytes(&buf[..n], at(1)),
        Err(proto::DecodeError::Unexpected(2))
    );
    assert_eq!((dev.stats().bad_frames, br.stats().bad_frames), (1, 1));
    // And neither sends what only the other side sends: refused at once, nothing queued.
    let report = Message::Report(proto::Report {
        handle: 1,
        state: proto::TaskReport::Completed,
        result: heapless::Vec::new(),
        error: None,
    });
    assert_eq!(
        br.send(report).map_err(|e| e.reason),
        Err(Refusal::WrongSide)
    );
    assert_eq!(
        dev.send(assign(4)).map_err(|e| e.reason),
        Err(Refusal::WrongSide)
    );
    assert_eq!((br.unacknowledged(), dev.unacknowledged()), (0, 0));
}

#[test]
fn both_ends_know_the_version_and_a_v2_device_can_be_preempted() {
    let (dev, mut br) = connected(1);
    assert_eq!(br.peer_version(), Some(proto::PROTOCOL_VERSION));
    assert_eq!(dev.peer_version(), Some(proto::PROTOCOL_VERSION));
    assert_eq!(
        Dev::device(hello(7), Config::default(), at(0)).peer_version(),
        None
    );
    br.send(Message::Preempt(Preempt { handle: 1 })).unwrap();
    assert_eq!(br.unacknowledged(), 1);
}

#[test]
fn a_current_device_can_be_reprioritized() {
    let (mut dev, mut br) = connected(1);
    let raise = Message::Reprioritize(Reprioritize {
        handle: 1,
        priority: crate::Priority::P0,
    });
    br.send(raise.clone()).unwrap();
    assert_eq!(br.unacknowledged(), 1);
    let got = deliver(&mut dev, drain(&mut br, at(1)), at(1));
    assert_eq!(got, [Event::Received(raise)]);
    deliver(&mut br, drain(&mut dev, at(2)), at(2));
    assert_eq!(
        br.unacknowledged(),
        0,
        "acknowledged like any reliable message"
    );
}

#[test]
fn a_version_2_device_keeps_working_with_a_version_3_bridge_and_is_never_reprioritized() {
    use super::session::initial_seq;
    let mut br = Br::bridge(Config::default(), at(0));
    let mut h = hello(7);
    h.version = 2;
    let ev = br.handle_bytes(&v1_frame(0, 0, 2, Message::Hello(h.clone())), at(0));
    assert!(matches!(ev, Ok(Some(Event::Connected { hello, .. })) if hello == h));
    assert_eq!(br.peer_version(), Some(2));
    // Answered in version 2 (golden `welcome_v2` in proto).
    let welcome = drain(&mut br, at(0));
    assert!(
        matches!(&welcome[..], [Frame { message: Message::Welcome(w), .. }] if w.version == 2),
        "{welcome:?}"
    );
    // What version 2 has is sent: an Assign, a Preempt...
    br.send(assign(4)).unwrap();
    br.send(Message::Preempt(Preempt { handle: 4 })).unwrap();
    // ...but not a Reprioritize, which it would not understand: refused and handed back.
    let raise = Message::Reprioritize(Reprioritize {
        handle: 4,
        priority: crate::Priority::P0,
    });
    let refused = br.send(raise.clone()).unwrap_err();
    assert_eq!(
        (refused.reason, refused.message),
        (Refusal::Unsupported, raise)
    );
    let sent = drain(&mut br, at(1));
    let device_before = super::session::prev_seq(initial_seq(7, 0, Role::Device));
    assert!(
        matches!(&sent[..], [a, p] if a.message == assign(4)
            && matches!(p.message, Message::Preempt(_)) && a.ack == device_before),
        "{sent:?}"
    );
    assert_eq!(br.unacknowledged(), 2, "the Assign and the Preempt");
}

/// The frame a version 1 device (one that predates this crate's version 2) would send:
/// built by hand, since a device session always speaks the current version.
fn v1_frame(seq: u32, ack: u32, credit: u8, message: Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    let frame = Frame {
        seq,
        ack,
        credit,
        message,
    };
    let n = proto::encode(&frame, &mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn a_version_1_device_keeps_working_with_a_version_2_bridge() {
    use super::session::{initial_seq, prev_seq};
    let mut br = Br::bridge(Config::default(), at(0));
    let mut h = hello(7);
    h.version = 1;
    let ev = br.handle_bytes(&v1_frame(0, 0, 2, Message::Hello(h.clone())), at(0));
    assert!(matches!(ev, Ok(Some(Event::Connected { hello, .. })) if hello == h));
    assert_eq!(br.peer_version(), Some(1));
    // Answered in version 1, whose layout is unchanged (golden `welcome_v1` in proto).
    let welcome = drain(&mut br, at(0));
    assert!(
        matches!(&welcome[..], [Frame { message: Message::Welcome(w), .. }] if w.version == 1),
        "{welcome:?}"
    );
    // Its Report arrives (sequenced as a version 1 device numbers it)...
    let device_seq = initial_seq(7, 0, Role::Device);
    let bridge_before = prev_seq(initial_seq(7, 0, Role::Bridge));
    let report = Message::Report(proto::Report {
        handle: 3,
        state: proto::TaskReport::Completed,
        result: heapless::Vec::from_slice(b"ok").unwrap(),
        error: None,
    });
    let ev = br.handle_bytes(
        &v1_frame(device_seq, bridge_before, 2, report.clone()),
        at(1),
    );
    assert_eq!(ev, Ok(Some(Event::Received(report))));
    // ...an Assign goes out to it...
    br.send(assign(4)).unwrap();
    let sent = drain(&mut br, at(1));
    assert!(matches!(&sent[..], [f] if f.message == assign(4) && f.ack == device_seq));
    // ...and a Preempt, which it would not understand, is refused and handed back.
    let preempt = Message::Preempt(Preempt { handle: 4 });
    let refused = br.send(preempt.clone()).unwrap_err();
    assert_eq!(
        (refused.reason, refused.message),
        (Refusal::Unsupported, preempt)
    );
    // So is a Restore (a version 1 device cannot resume from a checkpoint).
    let restore = Message::Restore(proto::Restore {
        handle: 5,
        steps: 3,
        scratch: heapless::Vec::from_slice(&[1]).unwrap(),
        result: heapless::Vec::new(),
    });
    let refused = br.send(restore.clone()).unwrap_err();
    assert_eq!(
        (refused.reason, refused.message),
        (Refusal::Unsupported, restore)
    );
    assert_eq!(br.unacknowledged(), 1, "only the Assign is pending");
}

#[test]
fn a_device_accepts_only_a_welcome_of_its_own_version() {
    let mut dev = Dev::device(hello(7), Config::default(), at(0));
    let sent = drain(&mut dev, at(0));
    assert!(matches!(&sent[..], [Frame { message: Message::Hello(h), .. }] if h.version == 3));
    let old = Welcome {
        version: 1,
        session_id: 0,
        heartbeat_ms: 2000,
        liveness_ms: 7000,
    };
    let mut buf = [0u8; MAX_FRAME];
    let n = unsequenced(Message::Welcome(old), &mut buf);
    assert_eq!(
        dev.handle_bytes(&buf[..n], at(1)),
        Err(proto::DecodeError::UnsupportedVersion(1))
    );
    let frame = |version| Frame {
        seq: 0,
        ack: 0,
        credit: 0,
        message: Message::Welcome(Welcome { version, ..old }),
    };
    assert_eq!(dev.handle_frame(frame(1), at(1)), None);
    assert_eq!(dev.handle_frame(frame(2), at(1)), None);
    assert_eq!(dev.state(), State::Connecting);
    assert_eq!(dev.stats().bad_frames, 3);
    assert_eq!(dev.handle_frame(frame(3), at(1)), Some(Event::Welcomed));
}

#[test]
fn a_bridge_serves_versions_1_to_3_only() {
    for (version, served) in [(0, false), (1, true), (2, true), (3, true), (4, false)] {
        let mut h = hello(7);
        h.version = version;
        let mut br = Br::bridge(Config::default(), at(0));
        let by_bytes = br.handle_bytes(&v1_frame(0, 0, 1, Message::Hello(h.clone())), at(0));
        assert_eq!(by_bytes.is_ok(), served, "version {version}");
        // A frame handed over decoded gets the same verdict.
        let mut br2 = Br::bridge(Config::default(), at(0));
        let frame = Frame {
            seq: 0,
            ack: 0,
            credit: 1,
            message: Message::Hello(h),
        };
        assert_eq!(br2.handle_frame(frame, at(0)).is_some(), served);
        for b in [&mut br, &mut br2] {
            let state = if served {
                State::Established
            } else {
                State::Closed
            };
            assert_eq!(b.state(), state, "version {version}");
            let reply = drain(b, at(0));
            match &reply[..] {
                [
                    Frame {
                        message: Message::Welcome(w),
                        ..
                    },
                ] if served => {
                    assert_eq!(w.version, version);
                }
                [
                    Frame {
                        message: Message::Reject(r),
                        ..
                    },
                ] if !served => assert_eq!(r.reason, RejectReason::UnsupportedVersion),
                other => panic!("version {version}: {other:?}"),
            }
        }
    }
}

/// A device that restarts and draws the same boot id (a crystal-clocked MCU with little
/// entropy), on a link that stays up (a serial port): once it had sent something in its first
/// session, its Hello opens a new session on the bridge, of a device that rebooted (review
/// M11: it was taken for a retransmission, and the session stayed wedged).
#[test]
fn the_same_hello_after_the_device_sent_something_is_a_new_session() {
    let (mut dev, mut br) = connected(2);
    dev.send(Message::Reject(Reject {
        handle: Some(9),
        reason: RejectReason::UnknownTask,
    }))
    .unwrap();
    let got = deliver(&mut br, drain(&mut dev, at(0)), at(0));
    assert_eq!(got.len(), 1);
    // The device restarts with the very same Hello.
    let mut again = Dev::device(hello(7), Config::default(), at(10));
    again.set_credit(2);
    let events = deliver(&mut br, drain(&mut again, at(10)), at(10));
    assert!(
        matches!(&events[..], [Event::Connected { rebooted: true, .. }]),
        "a new session of a rebooted device (what it ran is gone): {events:?}"
    );
    assert_eq!(
        deliver(&mut again, drain(&mut br, at(10)), at(10)),
        [Event::Welcomed]
    );
    br.send(assign(1)).unwrap();
    let got = deliver(&mut again, drain(&mut br, at(10)), at(10));
    assert_eq!(
        got,
        [Event::Received(assign(1))],
        "the new session carries Assigns"
    );
}
