//! One named test per rule of the scheduler and its locks. Scenarios are driven the way the
//! runtime drives them: `next()` picks who runs, and only the executing task takes locks.

use super::*;
use crate::{Acquire, LockPolicy};
use Priority::*;

type S = Scheduler<8, 4>;

const A: LockId = LockId::new(0);
const B: LockId = LockId::new(1);
const C: LockId = LockId::new(2);

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn admit(s: &mut S, p: Priority) -> TaskId {
    s.admit(TaskSpec::new(p), at(0)).expect("free slot")
}

/// Asserts that `task` is the one `next()` picks.
fn runs(s: &mut S, task: TaskId) {
    assert_eq!(s.next(at(0)), Some(task), "expected {task:?} to run");
}

/// Admits a task that runs at once (P0), blocks on `lock`, then takes its real `base`.
fn waiter(s: &mut S, base: Priority, deadline: u64, lock: LockId) -> TaskId {
    let w = s
        .admit(TaskSpec::new(P0).deadline(at(deadline)), at(0))
        .unwrap();
    runs(s, w);
    assert_eq!(s.lock(w, lock, None, at(0)), Ok(Acquire::Blocked));
    s.set_base_priority(w, base).unwrap();
    w
}

fn eff(s: &S, t: TaskId) -> Priority {
    s.effective_priority(t).expect("live task")
}

/// Runs `f` and asserts it failed with `err` and left the scheduler bit-for-bit unchanged.
fn refused(s: &mut S, err: SchedError, f: impl FnOnce(&mut S) -> Result<(), SchedError>) {
    let before = format!("{s:?}");
    assert_eq!(f(s), Err(err));
    assert_eq!(
        format!("{s:?}"),
        before,
        "a refused call changed the scheduler"
    );
}

#[test]
fn slot_and_lock_fit_their_ram_goals() {
    assert!(
        core::mem::size_of::<Slot>() <= 24,
        "{}",
        core::mem::size_of::<Slot>()
    );
    assert!(
        core::mem::size_of::<LockSlot>() <= 8,
        "{}",
        core::mem::size_of::<LockSlot>()
    );
}

#[test]
fn admission_hands_the_spec_back_when_full() {
    let mut s: Scheduler<2, 1> = Scheduler::new();
    let a = s.admit(TaskSpec::new(P1), at(0)).unwrap();
    s.admit(TaskSpec::new(P1), at(0)).unwrap();
    let spec = TaskSpec::new(P0).deadline(at(9));
    assert_eq!(s.admit(spec, at(0)), Err(spec));
    // A finished task keeps its slot until removed, so its state can be reported.
    assert_eq!(s.next(at(0)), Some(a));
    s.complete(a).unwrap();
    assert_eq!(s.admit(spec, at(0)), Err(spec));
    assert_eq!(s.remove(a), Ok(TaskState::Completed));
    let c = s.admit(spec, at(0)).unwrap();
    assert_eq!(c.slot(), a.slot());
    assert_eq!(
        s.state(a),
        None,
        "stale handle must not name the new occupant"
    );
    assert_eq!(s.cancel(a), Err(SchedError::UnknownTask));
}

#[test]
fn picks_priority_then_earliest_deadline_then_fifo() {
    let mut s = S::new();
    let late = s.admit(TaskSpec::new(P2).deadline(at(50)), at(0)).unwrap();
    let none1 = s.admit(TaskSpec::new(P2), at(0)).unwrap();
    let early = s.admit(TaskSpec::new(P2).deadline(at(20)), at(0)).unwrap();
    let none2 = s.admit(TaskSpec::new(P2), at(0)).unwrap();
    let low = s.admit(TaskSpec::new(P5).deadline(at(1)), at(0)).unwrap();
    let high = s.admit(TaskSpec::new(P1), at(0)).unwrap();
    for t in [high, early, late, none1, none2, low] {
        assert_eq!(s.next(at(0)), Some(t));
        s.complete(t).unwrap();
    }
    assert_eq!(s.next(at(0)), None);
}

#[test]
fn admission_order_holds_across_any_number_of_admissions() {
    // Two tasks wait while 65,534 others come and go, so that the next one is the 65,537th
    // admitted: more than a slot's 16-bit admission rank counts. The two still go first, in
    // their order, before the one admitted after.
    let mut s = S::new();
    let churn = |s: &mut S, n: u32| {
        for _ in 0..n {
            let t = s.admit(TaskSpec::new(P0), at(0)).unwrap();
            assert_eq!(s.next(at(0)), Some(t));
            s.complete(t).unwrap();
            s.remove(t).unwrap();
        }
    };
    churn(&mut s, 1_000);
    let old1 = s.admit(TaskSpec::new(P3), at(0)).unwrap();
    let old2 = s.admit(TaskSpec::new(P3), at(0)).unwrap();
    churn(&mut s, 64_534);
    let young = s.admit(TaskSpec::new(P3), at(0)).unwrap();
    for t in [old1, old2, young] {
        assert_eq!(s.next(at(0)), Some(t));
        s.complete(t).unwrap();
    }
}

#[test]
fn preemption_query_needs_a_strictly_higher_ready_task() {
    let mut s = S::new();
    assert!(!s.should_preempt(), "nothing executes");
    let low = admit(&mut s, P3);
    runs(&mut s, low);
    admit(&mut s, P3);
    assert!(!s.should_preempt(), "equal priority never preempts");
    let high = admit(&mut s, P2);
    assert!(s.should_preempt());
    runs(&mut s, high);
    assert_eq!(s.state(low), Some(TaskState::Ready));
    s.complete(high).unwrap();
    // The preempted task keeps its place ahead of the later equal-priority one.
    runs(&mut s, low);
}

#[test]
fn deadline_passing_before_start_expires_but_not_after_start() {
    let mut s = S::new();
    let a = s.admit(TaskSpec::new(P2).deadline(at(10)), at(0)).unwrap();
    let b = s.admit(TaskSpec::new(P3).deadline(at(10)), at(0)).unwrap();
    assert_eq!(s.poll_timeout(), Some(at(10)));
    assert_eq!(s.next(at(9)), Some(a));
    // `a` started before its deadline: it keeps running. `b` never started: it expires.
    assert_eq!(s.next(at(10)), Some(a));
    assert_eq!(s.state(b), Some(TaskState::Expired));
    assert_eq!(s.poll_event(), Some(Event::Expired(b)));
    assert_eq!(s.poll_event(), None);
    // Admission after the deadline expires at once, and is reported.
    let c = s.admit(TaskSpec::new(P0).deadline(at(5)), at(10)).unwrap();
    assert_eq!(s.state(c), Some(TaskState::Expired));
    assert_eq!(s.poll_event(), Some(Event::Expired(c)));
}

#[test]
fn pending_task_is_released_at_its_time() {
    let mut s = S::new();
    let t = s.admit(TaskSpec::new(P0).release_at(at(5)), at(0)).unwrap();
    assert_eq!(s.state(t), Some(TaskState::Pending));
    assert_eq!(s.poll_timeout(), Some(at(5)));
    assert_eq!(s.next(at(4)), None);
    assert_eq!(s.next(at(5)), Some(t));
}

#[test]
fn chain_of_three_inherits_transitively() {
    let mut s = S::new();
    let low = admit(&mut s, P4);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    let mid = admit(&mut s, P2);
    runs(&mut s, mid);
    s.lock(mid, B, None, at(0)).unwrap();
    assert_eq!(s.lock(mid, A, None, at(0)), Ok(Acquire::Blocked));
    assert_eq!(eff(&s, low), P2);
    let high = admit(&mut s, P0);
    runs(&mut s, high);
    assert_eq!(s.lock(high, B, None, at(0)), Ok(Acquire::Blocked));
    assert_eq!((eff(&s, mid), eff(&s, low)), (P0, P0));

    runs(&mut s, low);
    s.unlock(low, A).unwrap();
    assert_eq!(eff(&s, low), P4);
    assert!(s.holds(mid, A));
    runs(&mut s, mid);
    assert_eq!(eff(&s, mid), P0, "high still waits on B");
    s.unlock(mid, B).unwrap();
    assert_eq!(eff(&s, mid), P2);
    runs(&mut s, high);
}

#[test]
fn chain_of_four_inherits_transitively() {
    let mut s = S::new();
    let t4 = admit(&mut s, P5);
    runs(&mut s, t4);
    s.lock(t4, A, None, at(0)).unwrap();
    let t3 = admit(&mut s, P3);
    runs(&mut s, t3);
    s.lock(t3, B, None, at(0)).unwrap();
    s.lock(t3, A, None, at(0)).unwrap();
    let t2 = admit(&mut s, P2);
    runs(&mut s, t2);
    s.lock(t2, C, None, at(0)).unwrap();
    s.lock(t2, B, None, at(0)).unwrap();
    assert_eq!((eff(&s, t3), eff(&s, t4)), (P2, P2));
    let t1 = admit(&mut s, P0);
    runs(&mut s, t1);
    assert_eq!(s.lock(t1, C, None, at(0)), Ok(Acquire::Blocked));
    assert_eq!([eff(&s, t2), eff(&s, t3), eff(&s, t4)], [P0, P0, P0]);
    // A medium task cannot get in the way of the chain.
    let other = admit(&mut s, P1);
    runs(&mut s, t4);
    s.unlock(t4, A).unwrap();
    assert_eq!(eff(&s, t4), P5);
    runs(&mut s, t3);
    s.unlock(t3, B).unwrap();
    s.complete(t3).unwrap();
    runs(&mut s, t2);
    s.unlock(t2, C).unwrap();
    runs(&mut s, t1);
    s.complete(t1).unwrap();
    runs(&mut s, other);
}

#[test]
fn out_of_order_unlock_keeps_exactly_the_remaining_donation() {
    let mut s = S::new();
    let low = admit(&mut s, P5);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    s.lock(low, B, None, at(0)).unwrap();
    let mid = admit(&mut s, P3);
    runs(&mut s, mid);
    s.lock(mid, A, None, at(0)).unwrap();
    let high = admit(&mut s, P1);
    runs(&mut s, high);
    s.lock(high, B, None, at(0)).unwrap();
    assert_eq!(eff(&s, low), P1);
    runs(&mut s, low);
    // Release the lock taken first while still holding the other: the boost from `high`
    // (waiting on B) must stay, not drop to base and not to `mid`'s level.
    s.unlock(low, A).unwrap();
    assert_eq!(eff(&s, low), P1);
    assert!(s.holds(mid, A));

    // And the other order: release the lock taken last first.
    let mut s = S::new();
    let low = admit(&mut s, P5);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    s.lock(low, B, None, at(0)).unwrap();
    let mid = admit(&mut s, P3);
    runs(&mut s, mid);
    s.lock(mid, A, None, at(0)).unwrap();
    let high = admit(&mut s, P1);
    runs(&mut s, high);
    s.lock(high, B, None, at(0)).unwrap();
    runs(&mut s, low);
    s.unlock(low, B).unwrap();
    // FreeRTOS keeps P1 until every mutex is released; a naive restore drops to P5. Correct
    // is P3: `mid` still waits on A.
    assert_eq!(eff(&s, low), P3);
}

#[test]
fn nested_locks_return_to_the_true_base() {
    let mut s = S::new();
    let low = admit(&mut s, P4);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    s.lock(low, B, None, at(0)).unwrap();
    s.lock(low, C, None, at(0)).unwrap();
    let waiters = [(P3, A), (P1, B), (P2, C)].map(|(p, l)| waiter(&mut s, p, 100, l));
    assert_eq!(eff(&s, low), P1);
    runs(&mut s, low);
    s.unlock(low, B).unwrap();
    assert_eq!(
        eff(&s, low),
        P2,
        "the P1 task holds B now and donates nothing"
    );
    assert_eq!(s.next(at(0)), Some(waiters[1]), "and it preempts");
    s.complete(waiters[1]).unwrap();
    runs(&mut s, low);
    s.unlock(low, C).unwrap();
    assert_eq!(eff(&s, low), P3);
    s.unlock(low, A).unwrap();
    assert_eq!(eff(&s, low), P4);
    assert_eq!(s.base_priority(low), Some(P4));
}

#[test]
fn waiter_timeout_lowers_the_holders_down_the_chain() {
    let mut s = S::new();
    let low = admit(&mut s, P5);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    let mid = admit(&mut s, P3);
    runs(&mut s, mid);
    s.lock(mid, B, None, at(0)).unwrap();
    s.lock(mid, A, None, at(0)).unwrap();
    let high = admit(&mut s, P0);
    runs(&mut s, high);
    assert_eq!(s.lock(high, B, Some(at(10)), at(0)), Ok(Acquire::Blocked));
    assert_eq!((eff(&s, mid), eff(&s, low)), (P0, P0));
    assert_eq!(s.poll_timeout(), Some(at(10)));

    assert_eq!(s.next(at(9)), Some(low));
    assert_eq!(
        s.next(at(10)),
        Some(high),
        "timed out: ready again, and the most urgent"
    );
    assert_eq!(s.poll_event(), Some(Event::WaitTimedOut(high, B)));
    assert!(!s.holds(high, B));
    assert_eq!(s.waiting_on(high), None);
    assert_eq!(
        (eff(&s, mid), eff(&s, low)),
        (P3, P3),
        "both drop, not just the first holder"
    );
}

#[test]
fn waiter_cancellation_lowers_the_holders_down_the_chain() {
    let mut s = S::new();
    let low = admit(&mut s, P5);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    let mid = admit(&mut s, P3);
    runs(&mut s, mid);
    s.lock(mid, B, None, at(0)).unwrap();
    s.lock(mid, A, None, at(0)).unwrap();
    let high = admit(&mut s, P0);
    runs(&mut s, high);
    s.lock(high, B, None, at(0)).unwrap();
    s.cancel(high).unwrap();
    assert_eq!(s.state(high), Some(TaskState::Cancelled));
    assert_eq!((eff(&s, mid), eff(&s, low)), (P3, P3));
    assert_eq!(s.lock_owner(B), Some(mid));
}

#[test]
fn failed_try_lock_changes_nothing() {
    let mut s = S::new();
    let low = admit(&mut s, P4);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    let high = admit(&mut s, P0);
    runs(&mut s, high);
    refused(&mut s, SchedError::WouldBlock, |s| s.try_lock(high, A));
    assert_eq!(eff(&s, low), P4, "a try_lock never donates");
    // A lock whose timeout has already passed is a try_lock too.
    refused(&mut s, SchedError::WouldBlock, |s| {
        s.lock(high, A, Some(at(0)), at(0)).map(drop)
    });
    // Successful try_lock takes the lock.
    s.try_lock(high, B).unwrap();
    assert!(s.holds(high, B));
}

#[test]
fn refused_calls_change_nothing() {
    let mut s = S::new();
    s.set_lock_policy(C, LockPolicy::Ceiling(P2)).unwrap();
    let low = admit(&mut s, P4);
    let high = admit(&mut s, P0);
    runs(&mut s, high);
    refused(&mut s, SchedError::NotExecuting, |s| s.try_lock(low, A));
    refused(&mut s, SchedError::UnknownLock, |s| {
        s.try_lock(high, LockId::new(4))
    });
    refused(&mut s, SchedError::CeilingViolated, |s| s.try_lock(high, C));
    refused(&mut s, SchedError::NotOwner, |s| s.unlock(high, A));
    refused(&mut s, SchedError::NotFinished, |s| s.remove(low).map(drop));
    s.lock(high, A, None, at(0)).unwrap();
    refused(&mut s, SchedError::AlreadyHeld, |s| {
        s.lock(high, A, None, at(0)).map(drop)
    });
    refused(&mut s, SchedError::LockBusy, |s| {
        s.set_lock_policy(A, LockPolicy::Plain)
    });
    s.complete(high).unwrap();
    refused(&mut s, SchedError::Finished, |s| s.cancel(high));
    let bogus = TaskId {
        slot: 200,
        generation: 0,
    };
    refused(&mut s, SchedError::UnknownTask, |s| {
        s.set_base_priority(bogus, P0)
    });
}

#[test]
fn unbounded_wait_for_cycle_is_reported_as_deadlock() {
    let mut s = S::new();
    let t1 = admit(&mut s, P3);
    let t2 = admit(&mut s, P2);
    let t3 = admit(&mut s, P1);
    runs(&mut s, t3);
    s.lock(t3, C, None, at(0)).unwrap();
    s.lock(t3, A, None, at(0)).unwrap(); // t3 holds C and A
    s.complete(t3).unwrap(); // releases both
    runs(&mut s, t2);
    s.lock(t2, B, None, at(0)).unwrap();
    s.set_base_priority(t2, P4).unwrap();
    runs(&mut s, t1);
    s.lock(t1, A, None, at(0)).unwrap();
    assert_eq!(s.lock(t1, B, None, at(0)), Ok(Acquire::Blocked)); // t1 → B held by t2
    runs(&mut s, t2);
    refused(&mut s, SchedError::Deadlock, |s| {
        s.lock(t2, A, None, at(0)).map(drop)
    });
    assert_eq!(s.state(t2), Some(TaskState::Executing), "told, not blocked");
}

#[test]
fn cycle_with_a_finite_timeout_is_not_misreported() {
    let mut s = S::new();
    let t1 = admit(&mut s, P1);
    let t2 = admit(&mut s, P3);
    runs(&mut s, t1);
    s.lock(t1, A, None, at(0)).unwrap();
    s.set_base_priority(t1, P4).unwrap();
    runs(&mut s, t2);
    s.lock(t2, B, None, at(0)).unwrap();
    // t2 → A (held by t1), bounded by a timeout.
    assert_eq!(s.lock(t2, A, Some(at(30)), at(0)), Ok(Acquire::Blocked));
    runs(&mut s, t1);
    // t1 → B (held by t2) closes the cycle, but t2's wait ends by itself: not a deadlock.
    assert_eq!(s.lock(t1, B, None, at(0)), Ok(Acquire::Blocked));
    assert_eq!(
        (eff(&s, t1), eff(&s, t2)),
        (P3, P3),
        "priorities stay finite in a cycle"
    );
    assert_eq!(s.next(at(29)), None);
    assert_eq!(s.next(at(30)), Some(t2));
    assert_eq!(s.poll_event(), Some(Event::WaitTimedOut(t2, A)));
    s.unlock(t2, B).unwrap();
    assert!(s.holds(t1, B));
    assert_eq!((eff(&s, t1), eff(&s, t2)), (P4, P3));
}

#[test]
fn unlock_hands_the_lock_to_the_most_urgent_waiter() {
    let mut s = S::new();
    let owner = admit(&mut s, P5);
    runs(&mut s, owner);
    s.lock(owner, A, None, at(0)).unwrap();
    let w = [(P3, 30), (P1, 50), (P3, 20), (P1, 10)].map(|(p, d)| waiter(&mut s, p, d, A));
    // Expected hand-off order: P1 by deadline, then P3 by deadline.
    let mut holder = owner;
    for next in [w[3], w[1], w[2], w[0]] {
        runs(&mut s, holder);
        s.unlock(holder, A).unwrap();
        assert_eq!(s.lock_owner(A), Some(next));
        s.complete(holder).unwrap();
        holder = next;
    }
}

#[test]
fn hand_off_to_a_task_already_holding_other_locks() {
    let mut s = S::new();
    let owner = admit(&mut s, P5);
    runs(&mut s, owner);
    s.lock(owner, A, None, at(0)).unwrap();
    let w = admit(&mut s, P3);
    runs(&mut s, w);
    s.lock(w, C, None, at(0)).unwrap();
    s.lock(w, A, None, at(0)).unwrap();
    let on_c = admit(&mut s, P2);
    runs(&mut s, on_c);
    s.lock(on_c, C, None, at(0)).unwrap();
    let on_a = admit(&mut s, P1);
    runs(&mut s, on_a);
    s.lock(on_a, A, None, at(0)).unwrap();
    assert_eq!((eff(&s, owner), eff(&s, w)), (P1, P2));
    runs(&mut s, owner);
    s.unlock(owner, A).unwrap();
    // P1 outranks P3's `w`, so P1 gets A; `w` keeps waiting and keeps its own donation.
    assert_eq!(s.lock_owner(A), Some(on_a));
    runs(&mut s, on_a);
    s.unlock(on_a, A).unwrap();
    assert_eq!(s.lock_owner(A), Some(w));
    assert_eq!(s.state(w), Some(TaskState::Ready));
    assert_eq!(
        eff(&s, w),
        P2,
        "new owner keeps what its other lock's waiter donates"
    );
    s.complete(on_a).unwrap();
    runs(&mut s, w);
    s.unlock(w, C).unwrap();
    assert_eq!(eff(&s, w), P3);
}

#[test]
fn base_priority_change_while_boosted_keeps_the_invariant() {
    let mut s = S::new();
    let low = admit(&mut s, P4);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    let high = admit(&mut s, P1);
    runs(&mut s, high);
    s.lock(high, A, None, at(0)).unwrap();
    assert_eq!(eff(&s, low), P1);
    s.set_base_priority(low, P5).unwrap();
    assert_eq!(
        eff(&s, low),
        P1,
        "lowering the base does not undo the boost"
    );
    s.set_base_priority(low, P0).unwrap();
    assert_eq!(eff(&s, low), P0, "raising it above the boost wins");
    s.set_base_priority(low, P3).unwrap();
    s.set_base_priority(high, P2).unwrap();
    assert_eq!(
        eff(&s, low),
        P2,
        "the waiter's new base propagates to the holder"
    );
    runs(&mut s, low);
    s.unlock(low, A).unwrap();
    assert_eq!(eff(&s, low), P3);
}

#[test]
fn base_priority_change_moves_a_ready_task() {
    let mut s = S::new();
    let a = admit(&mut s, P3);
    let b = admit(&mut s, P3);
    s.set_base_priority(b, P1).unwrap();
    runs(&mut s, b);
    s.complete(b).unwrap();
    s.set_base_priority(a, P5).unwrap();
    let c = admit(&mut s, P4);
    runs(&mut s, c);
}

#[test]
fn cancel_while_holding_locks_releases_them_and_wakes_waiters() {
    let mut s = S::new();
    let low = admit(&mut s, P5);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    s.lock(low, B, None, at(0)).unwrap();
    let on_a = admit(&mut s, P3);
    runs(&mut s, on_a);
    s.lock(on_a, A, None, at(0)).unwrap();
    let on_b = admit(&mut s, P2);
    runs(&mut s, on_b);
    s.lock(on_b, B, None, at(0)).unwrap();
    s.cancel(low).unwrap();
    assert_eq!(s.state(low), Some(TaskState::Cancelled));
    assert_eq!((s.lock_owner(A), s.lock_owner(B)), (Some(on_a), Some(on_b)));
    assert_eq!(s.state(on_a), Some(TaskState::Ready));
    runs(&mut s, on_b);
    s.fail(on_b).unwrap();
    assert_eq!(s.lock_owner(B), None, "failing also releases");
    runs(&mut s, on_a);
}

#[test]
fn ceiling_policy_blocks_at_most_once() {
    // Under immediate ceiling a P1 task needing two locks never blocks on a lock: it waits at
    // most for the one critical section running when it arrived. Under inheritance the same
    // script blocks it twice (chained blocking).
    fn blocks(policy: LockPolicy) -> (usize, usize) {
        let mut s = S::new();
        s.set_lock_policy(A, policy).unwrap();
        s.set_lock_policy(B, policy).unwrap();
        let (mut blocked, mut waited) = (0, 0);
        let low = admit(&mut s, P4);
        runs(&mut s, low);
        s.lock(low, A, None, at(0)).unwrap();
        let mid = admit(&mut s, P3);
        if s.next(at(0)) == Some(mid) {
            s.lock(mid, B, None, at(0)).unwrap();
        }
        let high = admit(&mut s, P1);
        // Drive every task until `high` holds both locks, counting its lock waits.
        let mut want = [A, B].into_iter().peekable();
        for _ in 0..20 {
            let Some(t) = s.next(at(0)) else { break };
            if t == high {
                let Some(&l) = want.peek() else { break };
                if s.holds(high, l) {
                    want.next();
                } else if s.lock(high, l, None, at(0)) == Ok(Acquire::Blocked) {
                    blocked += 1;
                } else {
                    want.next();
                }
            } else {
                waited += 1;
                for l in [A, B] {
                    if s.holds(t, l) {
                        s.unlock(t, l).unwrap();
                    }
                }
            }
        }
        assert!(
            s.holds(high, A) && s.holds(high, B),
            "{policy:?}: high never got both"
        );
        (blocked, waited)
    }
    let (blocked, waited) = blocks(LockPolicy::Ceiling(P1));
    assert_eq!(blocked, 0);
    assert_eq!(waited, 1, "one lower critical section at most");
    assert!(blocked <= 1);
    assert_eq!(blocks(LockPolicy::Inherit), (2, 2));
}

#[test]
fn ceiling_raises_the_holder_at_once_and_drops_on_unlock() {
    let mut s = S::new();
    s.set_lock_policy(A, LockPolicy::Ceiling(P1)).unwrap();
    let low = admit(&mut s, P4);
    runs(&mut s, low);
    s.lock(low, A, None, at(0)).unwrap();
    assert_eq!(eff(&s, low), P1);
    admit(&mut s, P1);
    assert!(!s.should_preempt());
    s.unlock(low, A).unwrap();
    assert_eq!(eff(&s, low), P4);
    assert!(s.should_preempt());
}
