//! Preempting started tasks (per-capability `Preemption`) and resuming them from a checkpoint.

use super::*;
use crate::link::{BridgeSide, Config, Event, Session};
use crate::proto::{Message, Preempt};

/// Runs `payload[0]` steps; step `i` adds `i` to a sum kept in `scratch[0..4]` and appends
/// its last digit to the result, and the last step appends `=` and the sum. All its state is
/// in its context, so it can be resumed from a checkpoint.
fn count(ctx: &mut Ctx<'_>) -> Step {
    traced(ctx);
    let mut sum = u32::from_le_bytes(ctx.scratch[..4].try_into().unwrap());
    sum += ctx.step;
    ctx.scratch[..4].copy_from_slice(&sum.to_le_bytes());
    ctx.result.push(b'0' + (ctx.step % 10) as u8).unwrap();
    if ctx.step + 1 >= u32::from(ctx.payload.first().copied().unwrap_or(1)) {
        ctx.result.push(b'=').unwrap();
        ctx.result
            .extend_from_slice(sum.to_string().as_bytes())
            .unwrap();
        Step::Done
    } else {
        Step::Continue
    }
}

/// What `count` produces for 6 steps.
const SIX: &[u8] = b"012345=15";

fn with_count(preemption: Preemption) -> R {
    let mut r = runtime();
    r.register_with("count", count, preemption).unwrap();
    r
}

/// The same runtime without clearing the trace (for a second device in one test).
fn another(preemption: Preemption) -> R {
    let mut r = R::new();
    r.register("work", work).unwrap();
    r.register_with("count", count, preemption).unwrap();
    r
}

/// The one terminal report owed, as (handle, state, result).
fn finished(r: &mut R, ticket: u32) -> (Handle, TaskReport, std::vec::Vec<u8>) {
    let mut t = ticket;
    loop {
        let rep = r.poll_report(t).expect("a terminal report");
        t += 1;
        if rep.state.is_terminal() {
            return (rep.handle, rep.state, rep.result.to_vec());
        }
    }
}

fn restore_of(handle: Handle, s: &Suspended) -> Restore {
    Restore {
        handle,
        steps: s.steps,
        scratch: s.scratch.clone(),
        result: s.result.clone(),
    }
}

#[test]
fn capabilities_declare_their_preemption_and_register_keeps_never() {
    let mut r = with_count(Preemption::Resume);
    r.register_with("echo", echo, Preemption::Restart).unwrap();
    assert_eq!(r.preemption("count"), Some(Preemption::Resume));
    assert_eq!(r.preemption("echo"), Some(Preemption::Restart));
    assert_eq!(r.preemption("work"), Some(Preemption::Never));
    assert_eq!(r.preemption("nope"), None);
    // Capabilities in order: echo, work, broken, count.
    assert_eq!(r.preemption_masks(), (0b1000, 0b0001));
    for i in 0..8 {
        let expected = match i {
            3 => Preemption::Resume,
            0 => Preemption::Restart,
            _ => Preemption::Never,
        };
        assert_eq!(Preemption::of(i, 0b1000, 0b0001), expected);
    }
    assert_eq!(Preemption::of(8, 0xFF, 0xFF), Preemption::Never);
}

#[test]
fn a_resume_task_preempted_after_k_steps_resumes_elsewhere_at_step_k_with_the_same_result() {
    let mut first = with_count(Preemption::Resume);
    let mut second = another(Preemption::Resume);
    let mut whole = another(Preemption::Resume);
    first
        .assign(assign(1, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    for _ in 0..3 {
        first.step(at(0));
    }
    assert_eq!(first.preempt(1), Ok(()));
    assert!(!first.step(at(0)), "it left the scheduler");
    let s = first.poll_suspended(1).unwrap();
    let mut scratch = [0u8; MAX_SCRATCH];
    scratch[..4].copy_from_slice(&3u32.to_le_bytes()); // 0 + 1 + 2
    assert_eq!(
        (s.handle, s.steps, &s.scratch[..], &s.result[..]),
        (1, 3, &scratch[..], &b"012"[..])
    );
    first.on_acked(1);
    assert_eq!(first.free_slots(), 3);

    second.restore(restore_of(2, &s));
    second
        .assign(assign(2, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    run_all(&mut second, at(0));
    let (_, _, resumed) = finished(&mut second, 1);
    whole
        .assign(assign(3, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    run_all(&mut whole, at(0));
    assert_eq!(
        finished(&mut whole, 1),
        (3, TaskReport::Completed, SIX.to_vec())
    );
    assert_eq!(resumed, SIX, "as if never interrupted");
    let steps =
        |h| -> std::vec::Vec<u32> { trace().iter().filter(|t| t.0 == h).map(|t| t.1).collect() };
    assert_eq!(steps(1), [0, 1, 2]);
    assert_eq!(steps(2), [3, 4, 5], "continues at step k");
}

#[test]
fn a_resumed_task_reports_running_when_it_starts_here() {
    let mut r = with_count(Preemption::Resume);
    r.restore(Restore {
        handle: 4,
        steps: 2,
        scratch: heapless::Vec::from_slice(&1u32.to_le_bytes()).unwrap(),
        result: Payload::from_slice(b"01").unwrap(),
    });
    r.assign(assign(4, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    r.step(at(0));
    let rep = r.poll_report(1).unwrap();
    assert_eq!((rep.handle, rep.state), (4, TaskReport::Running));
    // Given back before it ran here, it returns the checkpoint it came with, advanced.
    assert_eq!(r.preempt(4), Ok(()));
    let s = r.poll_suspended(2).unwrap();
    assert_eq!((s.steps, &s.result[..]), (3, &b"012"[..]));
    assert_eq!(&s.scratch[..4], &3u32.to_le_bytes());
}

#[test]
fn a_restart_task_is_given_back_with_an_empty_checkpoint() {
    let mut r = with_count(Preemption::Restart);
    r.assign(assign(1, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    r.step(at(0));
    r.step(at(0));
    assert_eq!(r.preempt(1), Ok(()));
    assert!(!r.step(at(0)));
    let s = r.poll_suspended(1).unwrap();
    assert_eq!(
        (s.handle, s.steps, s.scratch.len(), s.result.len()),
        (1, 0, 0, 0)
    );
    // A Restore of a Restart capability's task is refused with its Assign.
    r.restore(restore_of(2, &s));
    assert_eq!(
        r.assign(assign(2, "count", Priority::P4, &[6]), at(0)),
        Err(Reject {
            handle: Some(2),
            reason: RejectReason::NotResumable
        })
    );
    // Started over without one, it runs from step 0.
    r.assign(assign(3, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    run_all(&mut r, at(0));
    assert_eq!(
        finished(&mut r, 2),
        (3, TaskReport::Completed, SIX.to_vec())
    );
}

#[test]
fn a_started_never_task_is_refused_started_and_runs_on() {
    let mut r = with_count(Preemption::Never);
    r.assign(assign(1, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    r.step(at(0));
    assert_eq!(
        r.preempt(1),
        Err(Reject {
            handle: Some(1),
            reason: RejectReason::Started
        })
    );
    assert!(r.poll_suspended(1).is_none());
    run_all(&mut r, at(0));
    assert_eq!(
        finished(&mut r, 1),
        (1, TaskReport::Completed, SIX.to_vec())
    );
    // And a Restore for it is refused with the Assign, which is not admitted.
    r.restore(Restore {
        handle: 2,
        steps: 1,
        scratch: heapless::Vec::new(),
        result: Payload::new(),
    });
    assert_eq!(
        r.assign(assign(2, "count", Priority::P4, &[6]), at(0)),
        Err(Reject {
            handle: Some(2),
            reason: RejectReason::NotResumable
        })
    );
    assert_eq!(r.free_slots(), 2, "1's report is not acknowledged yet");
}

#[test]
fn a_preempted_task_releases_its_locks_and_ends_its_wait() {
    let mut r = with_count(Preemption::Resume);
    let with_locks = |h, cap, p, n, locks: &[u8]| {
        let mut a = assign(h, cap, p, &[n]);
        a.locks.extend_from_slice(locks).unwrap();
        a
    };
    // H (P5) holds lock 1; A (P1, resumable) takes lock 0 then waits for lock 1; W (P0)
    // waits for lock 0. H inherits P0 through A.
    r.assign(with_locks(1, "work", Priority::P5, 3, &[1]), at(0))
        .unwrap();
    r.step(at(0)); // H takes lock 1
    r.step(at(0)); // H runs step 0
    r.assign(with_locks(2, "count", Priority::P1, 6, &[0, 1]), at(0))
        .unwrap();
    r.step(at(0)); // A takes lock 0: started
    r.step(at(0)); // A blocks on lock 1
    r.assign(with_locks(3, "work", Priority::P0, 1, &[0]), at(0))
        .unwrap();
    r.step(at(0)); // W blocks on lock 0
    let id = |r: &mut R, h| r.task_mut(h).unwrap().id;
    let (h, a, w) = (id(&mut r, 1), id(&mut r, 2), id(&mut r, 3));
    assert_eq!(r.sched.effective_priority(h), Some(Priority::P0));
    assert_eq!(r.sched.effective_priority(a), Some(Priority::P0));

    assert_eq!(r.preempt(2), Ok(()));
    assert_eq!(
        r.sched.lock_owner(LockId::new(0)),
        Some(w),
        "the waiter gets it"
    );
    assert_eq!(r.sched.lock_owner(LockId::new(1)), Some(h));
    assert_eq!(
        r.sched.effective_priority(h),
        Some(Priority::P5),
        "what A lent H is gone"
    );
    assert_eq!(r.sched.effective_priority(a), Some(Priority::P1));
    let s = r.poll_suspended(1).unwrap();
    assert_eq!((s.handle, s.steps, s.result.len()), (2, 0, 0));
    run_all(&mut r, at(0));
    let order: std::vec::Vec<Handle> = trace().iter().map(|t| t.0).collect();
    assert_eq!(
        order,
        [1, 3, 1, 1],
        "W first, then H finishes; A never again"
    );
}

#[test]
fn a_restore_not_followed_by_its_assign_is_dropped() {
    let mut r = with_count(Preemption::Resume);
    let checkpoint = |handle| Restore {
        handle,
        steps: 4,
        scratch: heapless::Vec::from_slice(&6u32.to_le_bytes()).unwrap(),
        result: Payload::from_slice(b"0123").unwrap(),
    };
    // An Assign of another handle: the Restore is dropped, that task starts from scratch.
    r.restore(checkpoint(10));
    r.assign(assign(11, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    assert_eq!(r.dropped_restores(), 1);
    // Another Restore replaces it.
    r.restore(checkpoint(12));
    r.restore(checkpoint(13));
    assert_eq!(r.dropped_restores(), 2);
    r.assign(assign(13, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    // 12's Assign, late, is a plain Assign: from step 0.
    r.assign(assign(12, "count", Priority::P4, &[6]), at(0))
        .unwrap();
    assert_eq!(r.dropped_restores(), 2);
    run_all(&mut r, at(0));
    let first = |h| trace().iter().find(|t| t.0 == h).map(|t| t.1);
    assert_eq!(
        (first(11), first(13), first(12)),
        (Some(0), Some(4), Some(0))
    );
    let mut results = std::collections::BTreeMap::new();
    let mut ticket = 0;
    while let Some(rep) = r.poll_report(ticket + 1) {
        ticket += 1;
        if rep.state == TaskReport::Completed {
            results.insert(rep.handle, rep.result.to_vec());
        }
    }
    assert_eq!(results[&11], SIX);
    assert_eq!(results[&12], SIX);
    assert_eq!(results[&13], SIX, "resumed at step 4 with the sum so far");
}

type Dev = Device<3, 2, 4, 4>;
type Br = Session<BridgeSide, 4>;

/// Moves every frame both ways until both are quiet, running the device's steps; returns
/// what the bridge got.
fn pump(device: &mut Dev, bridge: &mut Br, run: bool) -> std::vec::Vec<Event> {
    let mut got = vec![];
    let mut buf = [0u8; crate::proto::MAX_FRAME];
    for _ in 0..50 {
        let mut quiet = true;
        while let Some(n) = device.poll_transmit(at(0), &mut buf) {
            quiet = false;
            if let Ok(Some(e)) = bridge.handle_bytes(&buf[..n], at(0)) {
                got.push(e);
            }
        }
        while let Some(n) = bridge.poll_transmit(at(0), &mut buf) {
            quiet = false;
            let _ = device.handle_bytes(&buf[..n], at(0));
        }
        if run {
            while device.step(at(0)) {
                quiet = false;
            }
        }
        if quiet {
            return got;
        }
    }
    panic!("the link never went quiet");
}

/// A device of `runtime` connected to a bridge, whose `Hello` had the masks `masks`.
fn connect(runtime: R, masks: (u8, u8)) -> (Dev, Br) {
    let mut device = Dev::new("dev", 1, runtime, Config::default(), at(0)).unwrap();
    let mut bridge = Br::bridge(Config::default(), at(0));
    let got = pump(&mut device, &mut bridge, false);
    let hello = got.iter().find_map(|e| match e {
        Event::Connected { hello, .. } => Some(hello.clone()),
        _ => None,
    });
    let hello = hello.expect("connected");
    assert_eq!((hello.resumable, hello.restartable), masks);
    (device, bridge)
}

#[test]
fn a_started_task_is_suspended_with_its_checkpoint_and_completes_on_another_device() {
    // Capabilities echo, work, broken, count on one; work, count on two.
    let (mut one, mut bridge_one) = connect(with_count(Preemption::Resume), (0b1000, 0));
    let (mut two, mut bridge_two) = connect(another(Preemption::Resume), (0b10, 0));
    let a = assign(5, "count", Priority::P4, &[6]);
    bridge_one.send(Message::Assign(a)).unwrap();
    pump(&mut one, &mut bridge_one, false);
    for _ in 0..2 {
        one.step(at(0));
    }
    bridge_one
        .send(Message::Preempt(Preempt { handle: 5 }))
        .unwrap();
    let got = pump(&mut one, &mut bridge_one, false);
    let suspended = got.iter().find_map(|e| match e {
        Event::Received(Message::Suspended(s)) => Some(s.clone()),
        _ => None,
    });
    let s = suspended.expect("a Suspended");
    assert_eq!((s.handle, s.steps, &s.result[..]), (5, 2, &b"01"[..]));
    assert_eq!(s.scratch.len(), MAX_SCRATCH);
    assert_eq!(one.runtime().free_slots(), 3, "freed on the ack");

    // The bridge resumes it elsewhere under a new handle: Restore, then its Assign. The
    // Restore takes no credit.
    assert_eq!(bridge_two.credit(), 3);
    bridge_two
        .send(Message::Restore(restore_of(6, &s)))
        .unwrap();
    assert_eq!(bridge_two.credit(), 3);
    bridge_two
        .send(Message::Assign(assign(6, "count", Priority::P4, &[6])))
        .unwrap();
    let got = pump(&mut two, &mut bridge_two, true);
    let reports: std::vec::Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            Event::Received(Message::Report(r)) => Some((r.handle, r.state, r.result.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(
        reports.last(),
        Some(&(6, TaskReport::Completed, SIX.to_vec()))
    );
    let resumed: std::vec::Vec<u32> = trace().iter().filter(|t| t.0 == 6).map(|t| t.1).collect();
    assert_eq!(resumed, [2, 3, 4, 5]);
    assert_eq!(two.runtime().dropped_restores(), 0);
}
