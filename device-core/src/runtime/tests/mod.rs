//! Runtime rules, one test each, driving the runtime directly as `Device` does.

use super::*;
use crate::Priority;

mod checkpoint;
mod reprioritize;

type R = Runtime<3, 2, 4>;

thread_local! {
    /// (handle, step) of every handler call, to see what ran when.
    static TRACE: std::cell::RefCell<std::vec::Vec<(Handle, u32)>> =
        const { std::cell::RefCell::new(std::vec::Vec::new()) };
}

fn traced(ctx: &Ctx<'_>) {
    TRACE.with(|t| t.borrow_mut().push((ctx.handle, ctx.step)));
}

fn echo(ctx: &mut Ctx<'_>) -> Step {
    traced(ctx);
    ctx.result.extend_from_slice(ctx.payload).unwrap();
    Step::Done
}

/// Runs as many steps as the payload's first byte says, then completes.
fn work(ctx: &mut Ctx<'_>) -> Step {
    traced(ctx);
    if ctx.step + 1 >= u32::from(ctx.payload.first().copied().unwrap_or(1)) {
        Step::Done
    } else {
        Step::Continue
    }
}

fn broken(ctx: &mut Ctx<'_>) -> Step {
    traced(ctx);
    Step::Fail(42)
}

fn runtime() -> R {
    TRACE.with(|t| t.borrow_mut().clear());
    let mut r = R::new();
    r.register("echo", echo).unwrap();
    r.register("work", work).unwrap();
    r.register("broken", broken).unwrap();
    r
}

fn assign(handle: Handle, cap: &str, priority: Priority, payload: &[u8]) -> Assign {
    Assign {
        handle,
        priority,
        deadline_ms: None,
        capability: CapabilityName::try_from(cap).unwrap(),
        locks: Vec::new(),
        payload: Payload::from_slice(payload).unwrap(),
        trace_id: heapless::String::new(),
    }
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn run_all(r: &mut R, now: Instant) {
    for _ in 0..1000 {
        if !r.step(now) {
            return;
        }
    }
    panic!("runtime never went idle");
}

/// Every owed report, with consecutive tickets starting after `ticket`.
fn reports(r: &mut R, ticket: &mut u32) -> std::vec::Vec<(Handle, TaskReport)> {
    let mut out = vec![];
    while let Some(rep) = r.poll_report(*ticket + 1) {
        *ticket += 1;
        out.push((rep.handle, rep.state));
    }
    out
}

fn trace() -> std::vec::Vec<(Handle, u32)> {
    TRACE.with(|t| t.borrow().clone())
}

#[test]
fn a_task_reports_running_then_its_result() {
    let mut r = runtime();
    r.assign(assign(1, "echo", Priority::P3, b"hi"), at(0))
        .unwrap();
    assert_eq!(r.free_slots(), 2);
    assert!(r.step(at(0)));
    let rep = r.poll_report(1).unwrap();
    assert_eq!(
        (rep.state, &rep.result[..], rep.error),
        (TaskReport::Completed, &b"hi"[..], None)
    );
    assert_eq!(
        r.poll_report(2),
        None,
        "Running is not reported once the end is known"
    );
    assert_eq!(
        r.free_slots(),
        2,
        "the slot is held until the report is acknowledged"
    );
    r.on_acked(1);
    assert_eq!(r.free_slots(), 3);
}

#[test]
fn a_more_urgent_task_preempts_at_the_next_step_boundary() {
    let mut r = runtime();
    r.assign(assign(1, "work", Priority::P4, &[5]), at(0))
        .unwrap();
    r.step(at(0));
    r.step(at(0));
    r.assign(assign(2, "work", Priority::P0, &[2]), at(0))
        .unwrap();
    run_all(&mut r, at(0));
    assert_eq!(
        trace(),
        [(1, 0), (1, 1), (2, 0), (2, 1), (1, 2), (1, 3), (1, 4)]
    );
    let mut ticket = 0;
    let got = reports(&mut r, &mut ticket);
    assert!(got.contains(&(1, TaskReport::Completed)) && got.contains(&(2, TaskReport::Completed)));
}

#[test]
fn failures_expiry_and_cancellation_are_each_reported() {
    let mut r = runtime();
    r.assign(assign(1, "broken", Priority::P1, b""), at(0))
        .unwrap();
    let mut late = assign(2, "echo", Priority::P5, b"");
    late.deadline_ms = Some(10);
    r.assign(late, at(0)).unwrap();
    r.assign(assign(3, "work", Priority::P5, &[100]), at(0))
        .unwrap();
    r.step(at(0)); // 1 fails
    r.step(at(10)); // 2 expires (never started); 3 runs a step
    r.cancel(3).unwrap();
    let mut ticket = 0;
    let mut got = reports(&mut r, &mut ticket);
    got.sort_unstable_by_key(|g| g.0);
    assert_eq!(
        got,
        [
            (1, TaskReport::Failed),
            (2, TaskReport::Expired),
            (3, TaskReport::Cancelled)
        ]
    );
    assert_eq!(
        trace().iter().filter(|t| t.0 == 2).count(),
        0,
        "the expired task never ran"
    );
    assert_eq!(
        r.cancel(9),
        Err(Reject {
            handle: Some(9),
            reason: RejectReason::UnknownTask
        })
    );
    assert!(!r.step(at(10)));
}

#[test]
fn a_replayed_assign_is_answered_not_run_again() {
    let mut r = runtime();
    let a = assign(1, "echo", Priority::P3, b"x");
    r.assign(a.clone(), at(0)).unwrap();
    run_all(&mut r, at(0));
    assert!(r.poll_report(1).is_some());
    // Replayed before the report was acknowledged: the report is owed again.
    r.assign(a.clone(), at(1)).unwrap();
    run_all(&mut r, at(1));
    let again = r.poll_report(2).unwrap();
    assert_eq!(
        (again.state, &again.result[..]),
        (TaskReport::Completed, &b"x"[..])
    );
    r.on_acked(1);
    assert_eq!(
        r.free_slots(),
        2,
        "the re-sent report is not acknowledged yet"
    );
    r.on_acked(2);
    assert_eq!(r.free_slots(), 3);
    // Replayed after: refused.
    assert_eq!(
        r.assign(a, at(2)),
        Err(Reject {
            handle: Some(1),
            reason: RejectReason::Finished
        })
    );
    assert_eq!(trace().len(), 1, "executed exactly once");
}

#[test]
fn bad_assigns_are_rejected_with_their_reason_and_change_nothing() {
    let mut r = runtime();
    r.set_max_payload(4);
    let reason = |r: &mut R, a| r.assign(a, at(0)).unwrap_err().reason;
    assert_eq!(
        reason(&mut r, assign(1, "nope", Priority::P3, b"")),
        RejectReason::UnknownCapability
    );
    assert_eq!(
        reason(&mut r, assign(2, "echo", Priority::P3, b"12345")),
        RejectReason::PayloadTooLarge
    );
    let mut bad_lock = assign(3, "echo", Priority::P3, b"");
    bad_lock.locks.push(2).unwrap();
    assert_eq!(reason(&mut r, bad_lock), RejectReason::UnknownLock);
    assert_eq!(r.free_slots(), 3);
    for h in 10..13 {
        r.assign(assign(h, "work", Priority::P3, &[9]), at(0))
            .unwrap();
    }
    assert_eq!(
        reason(&mut r, assign(13, "echo", Priority::P3, b"")),
        RejectReason::NoFreeSlot
    );
    assert!(!r.has_reports());
}

#[test]
fn declared_locks_are_taken_before_the_first_step_with_inheritance() {
    let mut r = runtime();
    let with_lock = |h, p, n| {
        let mut a = assign(h, "work", p, &[n]);
        a.locks.push(0).unwrap();
        a
    };
    r.assign(with_lock(1, Priority::P4, 4), at(0)).unwrap();
    r.step(at(0)); // takes lock 0
    r.step(at(0)); // step 0 of 1
    r.assign(with_lock(2, Priority::P0, 1), at(0)).unwrap();
    r.assign(assign(3, "work", Priority::P2, &[3]), at(0))
        .unwrap();
    r.step(at(0)); // 2 tries the lock and blocks; 1 inherits P0
    run_all(&mut r, at(0));
    // 1 finishes its critical section before the P2 task, then 2 runs, then 3.
    assert_eq!(
        trace(),
        [
            (1, 0),
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 0),
            (3, 0),
            (3, 1),
            (3, 2)
        ]
    );
}

#[test]
fn locks_are_declared_by_name_in_id_order() {
    let mut r = runtime();
    assert_eq!(r.declare_lock("i2c0"), Ok(LockId::new(0)));
    assert_eq!(r.declare_lock("spi-1"), Ok(LockId::new(1)));
    // Declaring a name again is asking for its id.
    assert_eq!(r.declare_lock("i2c0"), Ok(LockId::new(0)));
    // R has two locks: both are named now.
    assert_eq!(r.declare_lock("radio"), Err(LockNameError::NoRoom));
    for bad in ["", "has space", "ü", "seventeen-bytes-x", "a/b"] {
        assert_eq!(r.declare_lock(bad), Err(LockNameError::Invalid), "{bad:?}");
    }
    let names: std::vec::Vec<&str> = r.lock_names().map(|n| n.as_str()).collect();
    assert_eq!(names, ["i2c0", "spi-1"]);
}

#[test]
fn a_device_advertises_its_lock_names_in_hello() {
    use crate::link::{BridgeSide, Config, Event, Session};
    let mut r = runtime();
    r.declare_lock("bus").unwrap();
    let mut device: Device<3, 2, 4, 2> =
        Device::new("dev", 1, r, Config::default(), at(0)).unwrap();
    let mut buf = [0u8; crate::proto::MAX_FRAME];
    let n = device.poll_transmit(at(0), &mut buf).unwrap();
    let mut bridge = Session::<BridgeSide, 2>::bridge(Config::default(), at(0));
    match bridge.handle_bytes(&buf[..n], at(0)) {
        Ok(Some(Event::Connected { hello, .. })) => {
            assert_eq!(hello.locks.len(), 1);
            assert_eq!(hello.locks[0], "bus");
        }
        other => panic!("expected a Hello, got {other:?}"),
    }
}

/// The `Suspended` owed with ticket `ticket`, as (handle, steps, scratch, result).
fn suspended(
    r: &mut R,
    ticket: u32,
) -> Option<(Handle, u32, std::vec::Vec<u8>, std::vec::Vec<u8>)> {
    r.poll_suspended(ticket)
        .map(|s| (s.handle, s.steps, s.scratch.to_vec(), s.result.to_vec()))
}

#[test]
fn an_unstarted_task_is_given_back_and_its_slot_freed_once_the_suspended_is_acknowledged() {
    let mut r = runtime();
    r.assign(assign(1, "work", Priority::P4, &[3]), at(0))
        .unwrap();
    r.assign(assign(2, "work", Priority::P5, &[3]), at(0))
        .unwrap();
    r.step(at(0)); // 1 starts; 2 has not
    assert_eq!(r.preempt(2), Ok(()));
    assert_eq!(
        r.free_slots(),
        1,
        "the slot is held until the Suspended is acknowledged"
    );
    assert!(r.has_reports());
    assert_eq!(suspended(&mut r, 1), Some((2, 0, vec![], vec![])));
    assert_eq!(suspended(&mut r, 2), None);
    let mut ticket = 1;
    assert_eq!(
        reports(&mut r, &mut ticket),
        [(1, TaskReport::Running)],
        "no report for the task given back"
    );
    run_all(&mut r, at(0));
    assert!(
        trace().iter().all(|t| t.0 == 1),
        "the task given back never runs: {:?}",
        trace()
    );
    r.on_acked(1);
    assert_eq!(r.free_slots(), 2, "1 still holds its slot");
    // The handle now counts as finished here: the bridge gives the task a new handle.
    assert_eq!(
        r.assign(assign(2, "work", Priority::P5, &[3]), at(1)),
        Err(Reject {
            handle: Some(2),
            reason: RejectReason::Finished
        })
    );
    assert_eq!(r.preempt(2), Ok(()), "a late Preempt of it is ignored");
    assert!(suspended(&mut r, 9).is_none());
}

#[test]
fn a_started_task_is_not_given_back() {
    let mut r = runtime();
    r.assign(assign(1, "work", Priority::P3, &[5]), at(0))
        .unwrap();
    let mut holder = assign(2, "work", Priority::P2, &[5]);
    holder.locks.push(0).unwrap();
    r.assign(holder, at(0)).unwrap();
    r.step(at(0)); // 2 takes its lock: started, though it has run no step
    r.step(at(0)); // 2 runs a step
    r.cancel(2).unwrap(); // 1 runs next
    r.step(at(0));
    let started = |h| Reject {
        handle: Some(h),
        reason: RejectReason::Started,
    };
    assert_eq!(r.preempt(1), Err(started(1)));
    let mut locked = assign(3, "work", Priority::P0, &[5]);
    locked.locks.push(1).unwrap();
    r.assign(locked, at(0)).unwrap();
    r.step(at(0)); // 3 takes lock 1, runs no step
    assert_eq!(r.preempt(3), Err(started(3)));
    assert!(suspended(&mut r, 1).is_none());
    run_all(&mut r, at(0));
    let mut ticket = 0;
    let got = reports(&mut r, &mut ticket);
    assert!(got.contains(&(1, TaskReport::Completed)) && got.contains(&(3, TaskReport::Completed)));
}

#[test]
fn a_task_waiting_for_its_first_lock_is_given_back_and_stops_boosting_the_holder() {
    let mut r = runtime();
    let with_lock = |h, p| {
        let mut a = assign(h, "work", p, &[4]);
        a.locks.push(0).unwrap();
        a
    };
    r.assign(with_lock(1, Priority::P4), at(0)).unwrap();
    r.step(at(0)); // 1 takes lock 0
    r.assign(with_lock(2, Priority::P0), at(0)).unwrap();
    r.step(at(0)); // 2 blocks on lock 0; 1 inherits P0
    let holder = r.task_mut(1).unwrap().id;
    assert_eq!(r.sched.effective_priority(holder), Some(Priority::P0));
    assert_eq!(r.preempt(2), Ok(()));
    assert_eq!(r.sched.effective_priority(holder), Some(Priority::P4));
    assert_eq!(suspended(&mut r, 1), Some((2, 0, vec![], vec![])));
    run_all(&mut r, at(0));
    assert!(trace().iter().all(|t| t.0 == 1));
}

#[test]
fn a_replayed_preempt_gets_the_same_answer() {
    let mut r = runtime();
    r.assign(assign(1, "echo", Priority::P3, b"x"), at(0))
        .unwrap();
    r.preempt(1).unwrap();
    assert_eq!(suspended(&mut r, 1), Some((1, 0, vec![], vec![])));
    // Replayed (a new session) before the Suspended was acknowledged: owed again, unchanged.
    assert_eq!(r.preempt(1), Ok(()));
    assert_eq!(suspended(&mut r, 2), Some((1, 0, vec![], vec![])));
    // So is a replayed Assign of it; a Cancel leaves it alone.
    r.assign(assign(1, "echo", Priority::P3, b"x"), at(0))
        .unwrap();
    assert_eq!(r.cancel(1), Ok(()));
    assert_eq!(suspended(&mut r, 3), Some((1, 0, vec![], vec![])));
    let mut ticket = 3;
    assert_eq!(reports(&mut r, &mut ticket), []);
    r.on_acked(2);
    assert_eq!(
        r.free_slots(),
        2,
        "the last Suspended is not acknowledged yet"
    );
    r.on_acked(3);
    assert_eq!(r.free_slots(), 3);
    assert_eq!(r.preempt(1), Ok(()));
    assert!(!r.has_reports());
    run_all(&mut r, at(0));
    assert!(trace().is_empty(), "never ran");
}

#[test]
fn preempting_a_finished_or_unknown_task_is_answered_as_cancel_is() {
    let mut r = runtime();
    r.assign(assign(1, "echo", Priority::P3, b"x"), at(0))
        .unwrap();
    run_all(&mut r, at(0));
    assert_eq!(r.preempt(1), Ok(()), "finished: its report stands");
    assert!(suspended(&mut r, 1).is_none());
    let mut ticket = 0;
    assert_eq!(reports(&mut r, &mut ticket), [(1, TaskReport::Completed)]);
    assert_eq!(
        r.preempt(7),
        Err(Reject {
            handle: Some(7),
            reason: RejectReason::UnknownTask
        })
    );
}

#[test]
fn a_device_answers_preempt_with_suspended_and_frees_the_slot_on_the_ack() {
    use crate::link::{BridgeSide, Config, Session};
    use crate::proto::{Message, Preempt};
    let mut device: Device<3, 2, 4, 4> =
        Device::new("dev", 1, runtime(), Config::default(), at(0)).unwrap();
    let mut bridge = Session::<BridgeSide, 4>::bridge(Config::default(), at(0));
    pump(&mut device, &mut bridge);
    assert_eq!(bridge.peer_version(), Some(crate::proto::PROTOCOL_VERSION));
    assert_eq!(bridge.credit(), 3);
    let a = assign(5, "echo", Priority::P4, b"x");
    bridge.send(Message::Assign(a)).unwrap();
    bridge
        .send(Message::Preempt(Preempt { handle: 5 }))
        .unwrap();
    bridge
        .send(Message::Preempt(Preempt { handle: 6 }))
        .unwrap();
    let got = pump(&mut device, &mut bridge);
    assert_eq!(
        got,
        [
            Message::Reject(Reject {
                handle: Some(6),
                reason: RejectReason::UnknownTask
            }),
            Message::Suspended(crate::proto::Suspended {
                handle: 5,
                steps: 0,
                scratch: heapless::Vec::new(),
                result: Payload::new(),
            }),
        ]
    );
    assert_eq!(
        bridge.credit(),
        3,
        "the slot is free again once acknowledged"
    );
    assert_eq!(device.runtime().free_slots(), 3);
    assert!(!device.step(at(0)), "nothing left to run");
}

/// Moves every frame between `device` and `bridge` both ways until both are quiet; returns
/// what the bridge received.
pub(super) fn pump<const N: usize, const L: usize, const C: usize, const W: usize>(
    device: &mut Device<N, L, C, W>,
    bridge: &mut crate::link::Session<crate::link::BridgeSide, 4>,
) -> std::vec::Vec<crate::proto::Message> {
    let mut got = vec![];
    let mut buf = [0u8; crate::proto::MAX_FRAME];
    for _ in 0..10 {
        let mut quiet = true;
        while let Some(n) = device.poll_transmit(at(0), &mut buf) {
            quiet = false;
            if let Ok(Some(crate::link::Event::Received(m))) = bridge.handle_bytes(&buf[..n], at(0))
            {
                got.push(m);
            }
        }
        while let Some(n) = bridge.poll_transmit(at(0), &mut buf) {
            quiet = false;
            let _ = device.handle_bytes(&buf[..n], at(0));
        }
        if quiet {
            return got;
        }
    }
    panic!("the link never went quiet");
}
