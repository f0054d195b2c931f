//! Running a task at another base priority (`Reprioritize`): the device side of priority
//! inheritance across devices.

use super::*;
use crate::LockPolicy;
use crate::link::{BridgeSide, Config, Session};
use crate::proto::{Message, Reprioritize};

/// Room for a holder, a lock chain and a flood of medium-priority work.
type Big = Runtime<8, 3, 4>;

fn big() -> Big {
    TRACE.with(|t| t.borrow_mut().clear());
    let mut r = Big::new();
    r.register("work", work).unwrap();
    r
}

/// A `work` task of `steps` steps taking `locks` in order.
fn task(handle: Handle, priority: Priority, steps: u8, locks: &[u8]) -> Assign {
    let mut a = assign(handle, "work", priority, &[steps]);
    a.locks = Vec::from_slice(locks).unwrap();
    a
}

fn steps(r: &mut Big, n: usize) {
    for _ in 0..n {
        assert!(r.step(at(0)), "something to run");
    }
}

fn run_big(r: &mut Big) {
    for _ in 0..1000 {
        if !r.step(at(0)) {
            return;
        }
    }
    panic!("runtime never went idle");
}

/// The base and effective priority of the task holding `handle`.
fn priorities(r: &Big, handle: Handle) -> (Priority, Priority) {
    let id = r
        .tasks
        .iter()
        .flatten()
        .find(|t| t.handle == handle)
        .unwrap()
        .id;
    let base = r.sched.base_priority(id).unwrap();
    (base, r.sched.effective_priority(id).unwrap())
}

/// The handles in the order their steps ran, runs of one handle shown once.
fn order() -> std::vec::Vec<Handle> {
    let mut out: std::vec::Vec<Handle> = trace().into_iter().map(|(h, _)| h).collect();
    out.dedup();
    out
}

#[test]
fn a_raised_holder_runs_before_a_flood_of_medium_tasks_and_yields_again_once_restored() {
    let mut r = big();
    r.assign(task(1, Priority::P4, 6, &[]), at(0)).unwrap();
    steps(&mut r, 2);
    for h in 2..=6 {
        r.assign(task(h, Priority::P2, 2, &[]), at(0)).unwrap();
    }
    // Raised to the priority of a P0 task waiting for a resource it holds on another device.
    r.reprioritize(1, Priority::P0).unwrap();
    assert_eq!(priorities(&r, 1), (Priority::P0, Priority::P0));
    steps(&mut r, 2);
    assert_eq!(order(), [1], "the flood waits for the raised holder");
    // The waiter was served: the bridge sends the task's own priority back.
    r.reprioritize(1, Priority::P4).unwrap();
    assert_eq!(priorities(&r, 1), (Priority::P4, Priority::P4));
    run_big(&mut r);
    assert_eq!(order(), [1, 2, 3, 4, 5, 6, 1], "restored, it yields again");
    assert_eq!(
        trace().iter().filter(|t| t.0 == 1).count(),
        6,
        "each step ran once"
    );
}

#[test]
fn a_raised_task_blocked_on_a_device_lock_lends_the_raise_along_the_chain() {
    let mut r = big();
    // 1 holds lock 0; 2 holds lock 1 and waits for lock 0; 3 waits for lock 1.
    r.assign(task(1, Priority::P5, 3, &[0]), at(0)).unwrap();
    steps(&mut r, 2); // 1 takes lock 0 and runs step 0
    r.assign(task(2, Priority::P4, 1, &[1, 0]), at(0)).unwrap();
    steps(&mut r, 2); // 2 takes lock 1, then blocks on lock 0
    r.assign(task(3, Priority::P3, 1, &[1]), at(0)).unwrap();
    steps(&mut r, 1); // 3 blocks on lock 1
    assert_eq!(priorities(&r, 1), (Priority::P5, Priority::P3));
    for h in 4..=5 {
        r.assign(task(h, Priority::P2, 1, &[]), at(0)).unwrap();
    }
    // 3 holds a resource on another device that a P0 task waits for.
    r.reprioritize(3, Priority::P0).unwrap();
    assert_eq!(priorities(&r, 3), (Priority::P0, Priority::P0));
    assert_eq!(priorities(&r, 2), (Priority::P4, Priority::P0));
    assert_eq!(priorities(&r, 1), (Priority::P5, Priority::P0));
    // Restored, the chain drops back to what 3's own priority lends it...
    r.reprioritize(3, Priority::P3).unwrap();
    assert_eq!(priorities(&r, 1), (Priority::P5, Priority::P3));
    // ...and raised again, the whole chain runs ahead of the P2 tasks.
    r.reprioritize(3, Priority::P0).unwrap();
    run_big(&mut r);
    assert_eq!(order(), [1, 2, 3, 4, 5]);
}

#[test]
fn a_replayed_reprioritize_is_harmless() {
    let mut r = big();
    r.assign(task(1, Priority::P4, 3, &[]), at(0)).unwrap();
    r.assign(task(2, Priority::P2, 1, &[]), at(0)).unwrap();
    r.reprioritize(1, Priority::P0).unwrap();
    r.reprioritize(1, Priority::P0).unwrap();
    assert_eq!(priorities(&r, 1), (Priority::P0, Priority::P0));
    run_big(&mut r);
    assert_eq!(trace(), [(1, 0), (1, 1), (1, 2), (2, 0)]);
    let mut ticket = 0;
    let mut got = vec![];
    while let Some(rep) = r.poll_report(ticket + 1) {
        ticket += 1;
        got.push((rep.handle, rep.state));
    }
    assert_eq!(
        got,
        [(1, TaskReport::Completed), (2, TaskReport::Completed)],
        "no report of its own"
    );
    // A late replay, once the task has ended, leaves its report alone.
    assert_eq!(r.reprioritize(1, Priority::P0), Ok(()));
    assert!(!r.has_reports());
}

#[test]
fn reprioritizing_a_finished_or_unknown_task_is_answered_as_cancel_is() {
    let mut r = big();
    r.assign(task(1, Priority::P3, 1, &[]), at(0)).unwrap();
    run_big(&mut r);
    assert_eq!(r.reprioritize(1, Priority::P0), Ok(()), "its report stands");
    let report = r.poll_report(1).unwrap();
    assert_eq!(report.state, TaskReport::Completed);
    r.on_acked(1);
    assert_eq!(
        r.reprioritize(1, Priority::P0),
        Ok(()),
        "acknowledged: nothing left to do"
    );
    let unknown = Err(Reject {
        handle: Some(7),
        reason: RejectReason::UnknownTask,
    });
    assert_eq!(r.reprioritize(7, Priority::P0), unknown);
    assert_eq!(r.cancel(7), unknown);
}

#[test]
fn a_raise_above_a_ceiling_does_not_make_the_task_fail_its_lock() {
    let mut r = big();
    r.scheduler_mut()
        .set_lock_policy(LockId::new(0), LockPolicy::Ceiling(Priority::P2))
        .unwrap();
    r.assign(task(1, Priority::P3, 2, &[0]), at(0)).unwrap();
    r.reprioritize(1, Priority::P0).unwrap();
    steps(&mut r, 1); // takes lock 0 as the P3 task it was assigned as
    assert_eq!(priorities(&r, 1), (Priority::P0, Priority::P0));
    run_big(&mut r);
    assert_eq!(trace(), [(1, 0), (1, 1)]);
    let report = r.poll_report(1).unwrap();
    assert_eq!((report.state, report.error), (TaskReport::Completed, None));
    // A task assigned above the ceiling is still refused the lock.
    r.assign(task(2, Priority::P1, 1, &[0]), at(0)).unwrap();
    run_big(&mut r);
    let report = r.poll_report(2).unwrap();
    assert_eq!(
        (report.state, report.error),
        (TaskReport::Failed, Some(codes::LOCK_CEILING))
    );
}

#[test]
fn a_device_takes_reprioritize_from_the_bridge_and_refuses_an_unknown_handle() {
    type Dev = Device<8, 3, 4, 4>;
    let mut device = Dev::new("dev", 1, big(), Config::default(), at(0)).unwrap();
    let mut bridge = Session::<BridgeSide, 4>::bridge(Config::default(), at(0));
    pump(&mut device, &mut bridge);
    bridge
        .send(Message::Assign(task(5, Priority::P4, 3, &[])))
        .unwrap();
    for (handle, priority) in [(5, Priority::P0), (6, Priority::P0)] {
        let m = Message::Reprioritize(Reprioritize { handle, priority });
        bridge.send(m).unwrap();
    }
    let got = pump(&mut device, &mut bridge);
    assert_eq!(
        got,
        [Message::Reject(Reject {
            handle: Some(6),
            reason: RejectReason::UnknownTask
        })]
    );
    assert_eq!(
        priorities(device.runtime(), 5),
        (Priority::P0, Priority::P0)
    );
}
