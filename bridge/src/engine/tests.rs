//! The engine on a simulated clock: every timing rule tested step by step, with time moved by
//! the test (no sleeps, no wall clock).

use device_core::proto::{
    Assign, DeviceId, Payload, Reject, RejectReason, Report, TRANSIENT_ERROR, TaskReport,
};

use super::*;
use crate::api::StatusEvent;
use crate::queue::TaskRecord;

const LINK: LinkId = 1;

fn hello() -> Hello {
    hello_of("dev-1")
}

fn hello_of(id: &str) -> Hello {
    Hello {
        version: device_core::proto::PROTOCOL_VERSION,
        device_id: DeviceId::try_from(id).unwrap(),
        boot_id: 7,
        session_id: 0,
        capabilities: heapless::Vec::from_slice(&["echo".try_into().unwrap()]).unwrap(),
        locks: heapless::Vec::from_slice(&["i2c0".try_into().unwrap(), "bus".try_into().unwrap()])
            .unwrap(),
        slots: 4,
        max_payload: 256,
        resumable: 0,
        restartable: 0,
    }
}

/// `hello_of(id)` from a device that booted again (boot id `boot`; the others have 7).
fn booted(id: &str, boot: u32) -> Hello {
    Hello {
        boot_id: boot,
        ..hello_of(id)
    }
}

/// Retries: 3 attempts, 100 ms doubling to 1 s, 25 % jitter.
fn retry() -> Retry {
    Retry::new(3, Duration::from_millis(100), Duration::from_millis(1000))
}

/// An engine over a queue in a temporary directory, on a clock the test moves.
struct Sim {
    dir: tempfile::TempDir,
    e: Engine,
    now: u64,
    tickets: Ticket,
}

impl Sim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Engine::new(Queue::open(dir.path(), 100).unwrap(), retry(), 7);
        // Reservation has tests of its own; the others count every slot.
        e.set_urgency(Urgency::off());
        Self {
            dir,
            e,
            now: 1_000,
            tickets: 0,
        }
    }

    /// The bridge crashes (nothing staged survives) and starts again on the same queue file.
    fn restart(&mut self) {
        // The old engine must let go of the file first: a stand-in takes its place meanwhile.
        let stand_in = tempfile::tempdir().unwrap();
        self.e = Engine::new(Queue::open(stand_in.path(), 1).unwrap(), retry(), 0);
        self.e = Engine::new(Queue::open(self.dir.path(), 100).unwrap(), retry(), 8);
        self.e.set_urgency(Urgency::off());
    }

    fn now(&self) -> Now {
        Now::at(self.now)
    }

    fn ticket(&mut self) -> Ticket {
        self.tickets += 1;
        self.tickets
    }

    /// Stages a submission; returns its ticket.
    fn submit(&mut self, json: &str) -> Ticket {
        let ticket = self.ticket();
        let now = self.now();
        self.e
            .handle_submissions(vec![(json.as_bytes().to_vec(), ticket)], now)
            .unwrap();
        ticket
    }

    fn link(&mut self, link: LinkId, input: LinkInput) {
        let now = self.now();
        self.e.handle_link(link, input, now);
    }

    fn up(&mut self, link: LinkId, hello: Hello, credit: u8) -> Released {
        let peer = "test".into();
        self.link(
            link,
            LinkInput::Up {
                peer,
                hello,
                rebooted: false,
                credit,
                credential: None,
            },
        );
        self.turn()
    }

    /// The connection of `link` ends.
    fn down(&mut self, link: LinkId) {
        self.link(
            link,
            LinkInput::Down {
                reason: "gone".into(),
            },
        );
    }

    /// The link reports `credit` free slots, having taken every `Assign` sent to it.
    fn credit(&mut self, link: LinkId, credit: u8) {
        let taken = self.e.assigns_sent(link);
        self.link(link, LinkInput::Credit { credit, taken });
    }

    fn report(
        &mut self,
        link: LinkId,
        handle: u32,
        state: TaskReport,
        error: Option<u16>,
    ) -> Ticket {
        let ticket = self.ticket();
        let report = Report {
            handle,
            state,
            result: Payload::from_slice(b"{\"v\":1}").unwrap(),
            error,
        };
        self.link(link, LinkInput::Report { report, ticket });
        ticket
    }

    /// One turn of the run loop: dispatch, then commit.
    fn turn(&mut self) -> Released {
        let now = self.now();
        self.e.dispatch(now);
        self.e.commit().unwrap()
    }

    fn task(&self, id: &str) -> Option<crate::queue::TaskRecord> {
        self.e.queue().get(id).map(std::borrow::Cow::into_owned)
    }

    /// The committed status events so far, oldest first (and forgets them).
    fn events(&mut self) -> Vec<StatusEvent> {
        let entries = self.e.queue().outbox(10_000).unwrap();
        let keys: Vec<u64> = entries.iter().map(|(k, _)| *k).collect();
        self.e.handle_published(&keys);
        self.e.commit().unwrap();
        entries
            .into_iter()
            .filter(|(_, o)| o.subtopic.starts_with("tasks/"))
            .map(|(_, o)| serde_json::from_str(&o.payload).unwrap())
            .collect()
    }

    /// The (id, state) of the committed status events so far.
    fn states(&mut self) -> Vec<(String, TaskState)> {
        self.events().into_iter().map(|e| (e.id, e.state)).collect()
    }
}

/// What `pick` takes from each command released for `link`, in order.
fn to_link<T>(
    released: &Released,
    link: LinkId,
    pick: impl Fn(&LinkCommand) -> Option<T>,
) -> Vec<T> {
    released
        .commands
        .iter()
        .filter(|(l, _)| *l == link)
        .filter_map(|(_, c)| pick(c))
        .collect()
}

fn assigns(released: &Released, link: LinkId) -> Vec<Assign> {
    to_link(released, link, |c| match c {
        LinkCommand::Assign(a) => Some((**a).clone()),
        _ => None,
    })
}

/// The handles of the `Assign`s replayed to `link`.
fn replays(released: &Released, link: LinkId) -> Vec<u32> {
    to_link(released, link, |c| match c {
        LinkCommand::Replay(a) => Some(a.handle),
        _ => None,
    })
}

fn cancels(released: &Released, link: LinkId) -> Vec<u32> {
    to_link(released, link, |c| match c {
        LinkCommand::Cancel(c) => Some(c.handle),
        _ => None,
    })
}

fn last_error(events: &[StatusEvent], id: &str) -> (TaskState, ApiError) {
    let e = events.iter().rev().find(|e| e.id == id).expect("an event");
    (e.state, e.error.clone().expect("an error"))
}

// ----- commit, then tell -----

/// Nothing leaves the engine before the commit that covers it: the submission's ticket and
/// the Assign come out of `commit`, and a bridge that dies before it has promised nothing
/// (the submission is not there after a restart, and was never acknowledged, so the client
/// sends it again).
#[test]
fn acknowledgements_and_assigns_wait_for_the_commit() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    let ticket = s.submit(r#"{"id":"t","capability":"echo","payload":1}"#);
    s.e.dispatch(s.now());
    assert_eq!(s.task("t").unwrap().state, TaskState::Dispatched);
    s.restart(); // the bridge dies here, before committing
    assert!(
        s.e.queue().is_empty(),
        "an uncommitted submission left a trace"
    );
    s.up(LINK, hello(), 4);
    let again = s.submit(r#"{"id":"t","capability":"echo","payload":1}"#);
    let released = s.turn();
    assert_eq!(released.tickets, [again]);
    assert!(!released.tickets.contains(&ticket));
    assert_eq!(assigns(&released, LINK).len(), 1);
}

/// A failed commit lets nothing out: not the ticket of the input, not the Assign decided in
/// the same turn.
#[test]
fn a_failed_commit_releases_nothing() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    s.e.dispatch(s.now());
    s.e.queue.fail_next_commit();
    assert!(s.e.commit().is_err());
    s.restart();
    assert!(s.e.queue().is_empty());
}

/// A turn in which a read of the queue failed (a lookup answered as if the task did not
/// exist) releases nothing, even when it staged nothing to commit.
#[test]
fn a_turn_with_a_failed_read_releases_nothing() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.turn();
    assert!(!s.e.queue.has_pending());
    s.e.queue.fail_a_read();
    assert!(s.e.commit().is_err());
}

/// Every kind of input is told only after its commit, step by step: a report's ticket, a
/// cancel's ticket and the Cancel it sends, a reject's ticket. After a crash before the commit,
/// the restarted engine shows the state before the step.
#[test]
fn each_step_is_told_only_after_its_commit() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"a","capability":"echo"}"#);
    s.submit(r#"{"id":"b","capability":"echo"}"#);
    let released = s.turn();
    let handles: Vec<u32> = assigns(&released, LINK).iter().map(|a| a.handle).collect();
    assert_eq!(handles.len(), 2);

    // A report staged, then a crash: the task is still live after the restart.
    let t = s.report(LINK, handles[0], TaskReport::Completed, None);
    assert!(s.task("a").is_none(), "settled in memory at once");
    s.restart();
    assert!(
        s.task("a").is_some(),
        "the report was not committed: the task is live"
    );
    s.up(LINK, hello(), 4);
    let t2 = s.report(LINK, handles[0], TaskReport::Completed, None);
    let released = s.turn();
    assert_eq!(released.tickets, [t2]);
    assert_ne!(t, t2);
    assert!(s.task("a").is_none());

    // A cancel of a dispatched task: its ticket and the Cancel come with the commit, and
    // the device's answer ends the task.
    let c = s.ticket();
    s.e.handle_cancel("b", c, s.now()).unwrap();
    s.restart();
    assert!(
        !s.task("b").unwrap().cancelling,
        "the cancel was not committed"
    );
    s.up(LINK, hello(), 4);
    let b = s.task("b").unwrap().handle();
    let c = s.ticket();
    s.e.handle_cancel("b", c, s.now()).unwrap();
    let released = s.turn();
    assert_eq!(released.tickets, [c]);
    assert_eq!(cancels(&released, LINK), [b]);
    assert!(s.task("b").unwrap().cancelling);
    s.report(LINK, b, TaskReport::Cancelled, None);
    s.turn();
    assert!(s.task("b").is_none());
}

// ----- retries -----

/// A device that comes back rebooted has lost its task: the task waits the retry delay —
/// the initial delay plus at most 25 % jitter, doubling with each attempt — and is
/// dispatched again the moment it ends, not a millisecond before.
#[test]
fn a_task_lost_in_a_reboot_waits_the_backoff_then_runs_again() {
    for seed in 0..50 {
        let mut s = Sim::new();
        s.e.rng = SplitMix64::new(seed);
        s.up(LINK, hello(), 4);
        s.submit(r#"{"id":"t","capability":"echo"}"#);
        assert_eq!(assigns(&s.turn(), LINK).len(), 1);
        for (attempt, base) in [(1u64, 100u64), (2, 200)] {
            s.down(LINK);
            s.turn();
            assert_eq!(
                s.task("t").unwrap().state,
                TaskState::Dispatched,
                "the task waits for its device"
            );
            let lost_at = s.now;
            s.up(LINK, booted("dev-1", 100 + attempt as u32), 4);
            let t = s.task("t").unwrap();
            assert_eq!(
                (t.state, u64::from(t.attempt)),
                (TaskState::Queued, attempt)
            );
            let delay = t.not_before_ms - lost_at;
            assert!(
                (base..base + base / 4).contains(&delay),
                "seed {seed}, attempt {attempt}: delay {delay} ms outside [{base}, {})",
                base + base / 4
            );
            // The device is back, but the task waits for its delay.
            assert_eq!(s.e.poll_timeout(), Some(lost_at + delay));
            s.now = lost_at + delay - 1;
            assert!(
                assigns(&s.turn(), LINK).is_empty(),
                "dispatched before its delay ended"
            );
            s.now = lost_at + delay;
            assert_eq!(
                assigns(&s.turn(), LINK).len(),
                1,
                "not dispatched when its delay ended"
            );
            s.now += 10;
        }
    }
}

/// The jitter spreads tasks lost together: 50 tasks of one device get many different
/// delays, all within the bounds.
#[test]
fn tasks_lost_together_come_back_spread_out() {
    let mut s = Sim::new();
    s.up(
        LINK,
        Hello {
            slots: 50,
            ..hello()
        },
        50,
    );
    for i in 0..50 {
        s.submit(&format!(r#"{{"id":"t{i}","capability":"echo"}}"#));
    }
    assert_eq!(assigns(&s.turn(), LINK).len(), 50);
    s.down(LINK);
    s.turn();
    let lost_at = s.now;
    s.up(
        LINK,
        Hello {
            slots: 50,
            ..booted("dev-1", 8)
        },
        50,
    );
    let delays: std::collections::BTreeSet<u64> = (0..50)
        .map(|i| s.task(&format!("t{i}")).unwrap().not_before_ms - lost_at)
        .collect();
    assert!(delays.len() >= 10, "{delays:?}");
    assert!(delays.iter().all(|d| (100..125).contains(d)), "{delays:?}");
}

/// After `max_attempts` attempts without a result the task fails, saying why and how many
/// attempts were made; it is not dispatched again.
#[test]
fn a_task_fails_when_its_attempts_are_exhausted() {
    let mut s = Sim::new();
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    for attempt in 1..=3 {
        s.now += 10_000;
        let released = s.up(LINK, hello(), 4);
        assert_eq!(assigns(&released, LINK).len(), 1, "attempt {attempt}");
        s.down(LINK);
        s.turn();
        // The device does not come back within its grace period.
        s.now += 30_000;
        s.turn();
    }
    assert!(s.task("t").is_none());
    let events = s.events();
    let (state, error) = last_error(&events, "t");
    assert_eq!(state, TaskState::Failed);
    assert_eq!(error.code, ErrorCode::AttemptsExhausted);
    assert_eq!(
        error.message,
        "device dev-1 did not come back within 30000 ms; 3 attempts made"
    );
    s.now += 10_000;
    assert!(assigns(&s.up(LINK, hello(), 4), LINK).is_empty());
}

/// A failure code from `TRANSIENT_ERROR` up is retried as a new execution, with a new handle
/// (the device would answer the old one from its dedup table) and the attempt counted; a code
/// below it fails the task at once.
#[test]
fn transient_failures_are_retried_with_a_new_handle_and_final_ones_are_not() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"transient","capability":"echo"}"#);
    s.submit(r#"{"id":"final","capability":"echo"}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 2);
    let h_transient = s.task("transient").unwrap().handle();
    let h_final = s.task("final").unwrap().handle();
    s.report(LINK, h_transient, TaskReport::Failed, Some(TRANSIENT_ERROR));
    s.report(LINK, h_final, TaskReport::Failed, Some(7));
    s.turn();
    let t = s.task("transient").unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 1));
    assert_ne!(
        t.handle(),
        h_transient,
        "a new execution needs a new handle"
    );
    let events = s.events();
    let (state, error) = last_error(&events, "final");
    assert_eq!(
        (state, error.code),
        (TaskState::Failed, ErrorCode::DeviceFailed)
    );
    assert_eq!(error.message, "device dev-1 failed with code 7");
    // After its delay the transient one runs again, as attempt 2 with its new handle.
    s.now = s.e.poll_timeout().unwrap();
    let again = assigns(&s.turn(), LINK);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].handle, s.task("transient").unwrap().handle());
    assert_eq!(s.task("transient").unwrap().attempt, 2);
    // A transient failure on the last attempt fails it.
    let h = again[0].handle;
    s.report(LINK, h, TaskReport::Failed, Some(TRANSIENT_ERROR + 1));
    s.turn();
    s.now = s.e.poll_timeout().unwrap();
    let h = assigns(&s.turn(), LINK)[0].handle;
    s.report(LINK, h, TaskReport::Failed, Some(TRANSIENT_ERROR + 1));
    s.turn();
    let events = s.events();
    let (state, error) = last_error(&events, "transient");
    assert_eq!(
        (state, error.code),
        (TaskState::Failed, ErrorCode::AttemptsExhausted)
    );
    assert!(
        error
            .message
            .contains("transient code 0x8001; 3 attempts made"),
        "{}",
        error.message
    );
}

// ----- deadlines -----

/// A queued task whose deadline passes expires by the engine's timer: `poll_timeout` names
/// the deadline, the task is still queued a millisecond before and expired at it.
#[test]
fn a_queued_task_expires_when_its_deadline_passes() {
    let mut s = Sim::new();
    s.submit(r#"{"id":"t","capability":"echo","deadline_ms":500}"#);
    s.turn();
    assert_eq!(s.e.poll_timeout(), Some(1_500));
    s.now = 1_499;
    s.turn();
    assert_eq!(s.task("t").unwrap().state, TaskState::Queued);
    s.now = 1_500;
    s.turn();
    assert!(s.task("t").is_none());
    assert_eq!(s.e.expired(), 1);
    let events = s.events();
    let (state, error) = last_error(&events, "t");
    assert_eq!(
        (state, error.code),
        (TaskState::Expired, ErrorCode::DeadlineExpired)
    );
    assert_eq!(s.e.poll_timeout(), None);
}

/// A task whose lease ends after its deadline passed expires in the same turn that takes it
/// back, not at the next wake-up (the retry delay, up to a minute by default, later); found by
/// the `engine` fuzz target (no queued task is past its deadline after a dispatch).
#[test]
fn a_task_taken_back_after_its_deadline_expires_at_once() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 1);
    s.submit(r#"{"id":"t","capability":"echo","deadline_ms":500,"timeout_ms":1000}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 1);
    s.now += 1_000;
    let released = s.turn();
    assert!(s.task("t").is_none(), "{:?}", s.task("t"));
    assert_eq!(s.e.expired(), 1);
    let (state, error) = last_error(&s.events(), "t");
    assert_eq!(
        (state, error.code),
        (TaskState::Expired, ErrorCode::DeadlineExpired)
    );
    // The device is told to stop it.
    let cancels = to_link(&released, LINK, |c| match c {
        LinkCommand::Cancel(c) => Some(c.handle),
        _ => None,
    });
    assert_eq!(cancels.len(), 1);
}

/// A task is never started after its deadline: a device that gets a free slot just as the
/// deadline passes does not get the task; one that gets it earlier is told the time left.
#[test]
fn a_task_is_never_started_after_its_deadline() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 0);
    s.submit(r#"{"id":"late","capability":"echo","deadline_ms":500}"#);
    s.submit(r#"{"id":"early","capability":"echo","deadline_ms":900}"#);
    s.turn();
    s.now = 1_500;
    s.credit(LINK, 4);
    let released = s.turn();
    let sent = assigns(&released, LINK);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].deadline_ms,
        Some(400),
        "the time left, not the original 900 ms"
    );
    assert!(s.task("late").is_none());
    assert_eq!(s.task("early").unwrap().state, TaskState::Dispatched);
    let states = s.states();
    assert!(
        states.contains(&("late".into(), TaskState::Expired)),
        "{states:?}"
    );
    assert!(
        !states.contains(&("late".into(), TaskState::Dispatched)),
        "{states:?}"
    );
}

// ----- cancel -----

/// Cancel works in every state: a queued task ends at once with nothing sent; a dispatched or
/// running task's device is told (after the commit), and its answer ends the task — so a task
/// the device completed first ends `completed`, never `cancelled`; a finished task is left
/// alone (no second terminal event); an id not seen yet is recorded as cancelled.
#[test]
fn cancel_ends_a_task_in_every_state() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 2);
    for id in ["dispatched", "running", "queued", "done"] {
        s.submit(&format!(r#"{{"id":"{id}","capability":"echo"}}"#));
    }
    s.turn();
    let h = |s: &Sim, id: &str| s.task(id).unwrap().handle();
    let (hd, hr) = (h(&s, "dispatched"), h(&s, "running"));
    s.report(LINK, hr, TaskReport::Running, None);
    s.turn();
    assert_eq!(s.task("running").unwrap().state, TaskState::Running);
    assert_eq!(s.task("queued").unwrap().state, TaskState::Queued);
    s.events();

    for id in ["queued", "dispatched", "running", "unknown"] {
        let ticket = s.ticket();
        s.e.handle_cancel(id, ticket, s.now()).unwrap();
    }
    let released = s.turn();
    assert_eq!(released.tickets.len(), 4, "every cancel is acknowledged");
    let mut sent = cancels(&released, LINK);
    sent.sort_unstable();
    let mut expect = vec![hd, hr];
    expect.sort_unstable();
    assert_eq!(sent, expect, "only tasks on the device are cancelled there");
    let states = s.states();
    assert_eq!(
        states,
        [
            ("queued".into(), TaskState::Cancelled),
            ("unknown".into(), TaskState::Cancelled)
        ],
        "tasks on the device end with its answer"
    );
    // The device cancels one; it had finished the other: that one completed.
    s.report(LINK, hd, TaskReport::Cancelled, None);
    let t = s.report(LINK, hr, TaskReport::Completed, None);
    assert!(s.turn().tickets.contains(&t));
    assert_eq!(
        s.states(),
        [
            ("dispatched".into(), TaskState::Cancelled),
            ("running".into(), TaskState::Completed)
        ]
    );
    // A freed slot takes "done"; it finishes, then a cancel for it changes nothing.
    s.credit(LINK, 1);
    assert_eq!(assigns(&s.turn(), LINK).len(), 1);
    let hdone = h(&s, "done");
    s.report(LINK, hdone, TaskReport::Completed, None);
    s.turn();
    s.events();
    let ticket = s.ticket();
    s.e.handle_cancel("done", ticket, s.now()).unwrap();
    let released = s.turn();
    assert!(released.commands.is_empty());
    assert_eq!(
        s.states(),
        [("done".into(), TaskState::Completed)],
        "a cancel that came too late is answered with the final state, unchanged"
    );
}

// ----- refusals -----

/// A task a device refused (`NoFreeSlot`) is back in the queue: a report from that device for
/// its handle does not put it on the device again without an `Assign` (it was put there
/// `running`, with no lease, beyond the device's slots, and never dispatched elsewhere: found
/// with the `engine` fuzz target's invariants), and the task is dispatched as any other.
#[test]
fn a_report_for_a_refused_task_does_not_put_it_back_on_the_device() {
    let mut s = Sim::new();
    s.up(
        LINK,
        Hello {
            slots: 1,
            ..hello()
        },
        1,
    );
    s.submit(r#"{"id":"refused","capability":"echo"}"#);
    s.turn();
    let handle = s.task("refused").unwrap().handle();
    let ticket = s.ticket();
    let reject = Reject {
        handle: Some(handle),
        reason: RejectReason::NoFreeSlot,
    };
    s.link(LINK, LinkInput::Reject { reject, ticket });
    s.report(LINK, handle, TaskReport::Running, None);
    s.e.commit().unwrap();
    let task = s.task("refused").unwrap();
    assert_eq!(task.state, TaskState::Queued, "{task:?}");
    assert_eq!(s.e.queue().in_flight("dev-1"), 0);
    // It goes out again once the device has room, after its retry delay.
    s.now += 2_000;
    s.credit(LINK, 1);
    assert_eq!(assigns(&s.turn(), LINK).len(), 1);
    assert!(s.task("refused").unwrap().lease_until_ms.is_some());
}

/// A device's `NoFreeSlot` sends the task back to the queue after the retry delay (dispatched
/// again, same handle); any other refusal rejects it, naming the device and the reason.
#[test]
fn no_free_slot_requeues_after_the_retry_delay_and_other_refusals_reject() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 2);
    s.submit(r#"{"id":"full","capability":"echo"}"#);
    s.submit(r#"{"id":"unknown","capability":"echo"}"#);
    s.turn();
    let (hf, hu) = (
        s.task("full").unwrap().handle(),
        s.task("unknown").unwrap().handle(),
    );
    for (handle, reason) in [
        (hf, RejectReason::NoFreeSlot),
        (hu, RejectReason::UnknownCapability),
    ] {
        let ticket = s.ticket();
        let reject = Reject {
            handle: Some(handle),
            reason,
        };
        s.link(LINK, LinkInput::Reject { reject, ticket });
    }
    s.credit(LINK, 1);
    let released = s.turn();
    assert_eq!(released.tickets.len(), 2);
    assert!(
        assigns(&released, LINK).is_empty(),
        "dispatched again before the retry delay"
    );
    s.now += 2_000;
    let released = s.turn();
    let again = assigns(&released, LINK);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].handle, hf, "the same execution, the same handle");
    let events = s.events();
    let (state, error) = last_error(&events, "unknown");
    assert_eq!(
        (state, error.code),
        (TaskState::Rejected, ErrorCode::DeviceRejected)
    );
    assert!(
        error.message.starts_with("device dev-1: "),
        "{}",
        error.message
    );
}

/// An `Assign` the link's session would not take (`Refused`) goes back to the queue and out
/// again with the same handle once the device has room.
#[test]
fn a_refused_assign_goes_back_to_the_queue() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 1);
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    let h = assigns(&s.turn(), LINK)[0].handle;
    s.link(LINK, LinkInput::Refused { handle: h });
    s.credit(LINK, 0);
    assert!(assigns(&s.turn(), LINK).is_empty());
    assert_eq!(s.task("t").unwrap().state, TaskState::Queued);
    s.credit(LINK, 1);
    let again = assigns(&s.turn(), LINK);
    assert_eq!(again.iter().map(|a| a.handle).collect::<Vec<_>>(), [h]);
}

// ----- restarts -----

/// Tasks on a device when the bridge stopped stay with that device after a restart: another
/// device does not get them within the grace period, and the device, back with the same boot,
/// gets each `Assign` again with the same handle (it answers a replay from its dedup table) and
/// no attempt counted.
#[test]
fn after_a_restart_tasks_wait_for_their_device_and_are_replayed_to_it() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    let h = assigns(&s.turn(), LINK)[0].handle;
    s.restart();
    let t = s.task("t").unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Dispatched, 1));
    let other = s.up(3, hello_of("dev-2"), 4);
    assert!(assigns(&other, 3).is_empty(), "{:?}", other.commands);
    s.now += 29_999;
    assert!(assigns(&s.turn(), 3).is_empty());
    let back = s.up(2, hello(), 4);
    assert_eq!(replays(&back, 2), [h]);
    assert!(assigns(&back, 2).is_empty());
    let t = s.task("t").unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Dispatched, 1));
    s.report(2, h, TaskReport::Completed, None);
    s.turn();
    assert!(s.task("t").is_none());
}

/// A device that ran a task before the bridge crashed reports it to the restarted bridge
/// before anything is dispatched again: the report settles the task from durable state
/// (found while testing the SIGKILL scenario: an in-memory map lost it, the report was
/// acknowledged and ignored, and the result was lost).
#[test]
fn a_report_after_a_restart_settles_its_task() {
    let mut s = Sim::new();
    s.submit(r#"{"id":"t","capability":"echo","payload":1}"#);
    s.turn();
    let h = assigns(&s.up(LINK, hello(), 4), LINK)[0].handle;
    s.restart();
    s.link(
        2,
        LinkInput::Up {
            peer: "p".into(),
            hello: hello(),
            rebooted: false,
            credit: 0,
            credential: None,
        },
    );
    let t = s.report(2, h, TaskReport::Completed, None);
    assert_eq!(s.turn().tickets, [t]);
    assert!(s.task("t").is_none(), "the task is settled");
    let events = s.events();
    let done = events
        .iter()
        .find(|e| e.state == TaskState::Completed)
        .expect("completed");
    assert_eq!(done.result, Some(serde_json::json!({"v": 1})));
}

/// Generated ids come from a durable counter: a restart (or a clock reset) never generates
/// the id of an earlier task, so id-less submissions are never taken for duplicates.
#[test]
fn generated_ids_never_repeat_across_restarts() {
    let mut s = Sim::new();
    let mut ids = std::collections::BTreeSet::new();
    for round in 0..3 {
        for _ in 0..5 {
            s.submit(r#"{"capability":"echo"}"#);
        }
        s.turn();
        s.restart();
        s.now = 0; // the clock went back
        assert_eq!(
            s.e.queue().len(),
            5 * (round + 1),
            "every id-less submission is a task"
        );
    }
    for e in s.events() {
        ids.insert(e.id);
    }
    assert_eq!(ids.len(), 15);
}

// ----- one device at a time -----

/// A device's link drops while it runs a task and comes straight back (same boot): within the
/// grace period the task goes to no other device, even an idle one; the device gets the
/// `Assign` again (a replay, same handle) and its report settles the task (H1 of the
/// reliability review: the task ran on both).
#[test]
fn a_task_waits_for_its_device_through_a_link_loss() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    let h = assigns(&s.turn(), LINK)[0].handle;
    s.report(LINK, h, TaskReport::Running, None);
    s.turn();
    s.down(LINK);
    s.turn();
    let idle = s.up(2, hello_of("dev-2"), 4);
    assert!(assigns(&idle, 2).is_empty(), "{:?}", idle.commands);
    s.now += 29_999;
    assert!(
        assigns(&s.turn(), 2).is_empty(),
        "given away within the grace period"
    );
    let back = s.up(3, hello(), 4);
    assert_eq!(replays(&back, 3), [h]);
    let t = s.task("t").unwrap();
    assert_eq!(
        (t.state, t.device.as_deref(), t.attempt),
        (TaskState::Running, Some("dev-1"), 1)
    );
    s.now += 60_000;
    assert!(assigns(&s.turn(), 2).is_empty());
    s.report(3, h, TaskReport::Completed, None);
    s.turn();
    assert_eq!(s.states().last(), Some(&("t".into(), TaskState::Completed)));
}

/// A device that does not come back within the grace period loses its task to another
/// device, as a new execution (a new handle). When it does come back, with the same boot, it
/// is told to cancel the execution it may still run; a result it reports for it first wins,
/// and the other device is told to cancel.
#[test]
fn after_the_grace_period_the_task_moves_and_the_returning_device_is_told_to_cancel() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    let old = assigns(&s.turn(), LINK)[0].handle;
    s.down(LINK);
    s.turn();
    s.up(2, hello_of("dev-2"), 4);
    s.now += 30_000;
    s.turn();
    assert_eq!(s.task("t").unwrap().attempt, 1);
    s.now += 1_000; // the retry delay
    let moved = assigns(&s.turn(), 2);
    assert_eq!(moved.len(), 1, "moved to dev-2 once the grace period ended");
    let new = moved[0].handle;
    assert_ne!(new, old, "a new execution has a new handle");
    let back = s.up(3, hello(), 4);
    assert_eq!(cancels(&back, 3), [old], "told to cancel what moved on");
    assert!(replays(&back, 3).is_empty());
    // It had finished before it heard: its result stands; dev-2 is told to cancel.
    s.report(3, old, TaskReport::Completed, None);
    let released = s.turn();
    assert_eq!(cancels(&released, 2), [new]);
    assert!(s.task("t").is_none());
    let events = s.events();
    let last = events.iter().rfind(|e| e.id == "t").unwrap();
    assert_eq!(last.state, TaskState::Completed);
    // dev-2's answer changes nothing.
    s.report(2, new, TaskReport::Cancelled, None);
    s.turn();
    assert!(s.states().is_empty());
}

/// A device back with another boot id lost its tasks: they are tried again at once (after
/// the retry delay), not held for the grace period; a task cancelled while it was away ends
/// `cancelled` then, and one cancelled while away from a device that kept it is cancelled
/// there when it comes back.
#[test]
fn a_rebooted_device_gives_up_its_tasks_and_cancels_wait_for_a_device_that_kept_them() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"lost","capability":"echo"}"#);
    s.submit(r#"{"id":"gone","capability":"echo"}"#);
    s.turn();
    s.down(LINK);
    let ticket = s.ticket();
    s.e.handle_cancel("gone", ticket, s.now()).unwrap();
    let released = s.turn();
    assert_eq!(released.tickets, [ticket]);
    assert!(s.task("gone").unwrap().cancelling);
    s.up(LINK, booted("dev-1", 8), 4);
    assert_eq!(s.task("lost").unwrap().state, TaskState::Queued);
    assert!(s.task("gone").is_none());
    let states = s.states();
    assert!(
        states.contains(&("gone".into(), TaskState::Cancelled)),
        "{states:?}"
    );

    // Kept across a link loss: the cancel reaches the device when it is back.
    s.now += 1_000;
    let h = assigns(&s.turn(), LINK)[0].handle;
    s.down(LINK);
    let ticket = s.ticket();
    s.e.handle_cancel("lost", ticket, s.now()).unwrap();
    s.turn();
    let back = s.up(2, booted("dev-1", 8), 4);
    assert_eq!(cancels(&back, 2), [h]);
    assert!(replays(&back, 2).is_empty());
    s.report(2, h, TaskReport::Cancelled, None);
    s.turn();
    assert_eq!(
        s.states(),
        [
            ("lost".into(), TaskState::Dispatched),
            ("lost".into(), TaskState::Cancelled)
        ]
    );
}

// ----- execution leases -----

/// A device that takes a task and never reports it loses it when its lease ends: it is told
/// to cancel, and the task is tried again (a new handle) elsewhere. The lease is the
/// submission's `timeout_ms`, else its capability's, else the default.
#[test]
fn a_task_whose_lease_ends_is_cancelled_there_and_tried_again() {
    let mut s = Sim::new();
    s.e.set_leases(Leases {
        grace_ms: 30_000,
        per_capability: [("echo".to_owned(), 5_000)].into(),
        default_ms: 60_000,
    });
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"own","capability":"echo","timeout_ms":2000}"#);
    s.submit(r#"{"id":"cap","capability":"echo"}"#);
    let released = s.turn();
    let handle = |id: &str| -> u32 { s.task(id).unwrap().handle() };
    let (own, cap) = (handle("own"), handle("cap"));
    assert_eq!(assigns(&released, LINK).len(), 2);
    let start = s.now;
    // First the capability document's new figures (a second after the last), then the lease.
    assert_eq!(s.e.poll_timeout(), Some(start + 1_000));
    s.now = start + 1_000;
    s.turn();
    assert_eq!(s.e.poll_timeout(), Some(start + 2_000));
    s.now = start + 1_999;
    assert!(cancels(&s.turn(), LINK).is_empty());
    s.now = start + 2_000;
    let released = s.turn();
    assert_eq!(cancels(&released, LINK), [own]);
    let t = s.task("own").unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Queued, 1));
    assert_ne!(t.handle(), own);
    s.up(2, hello_of("dev-2"), 4);
    s.now = start + 5_000;
    let released = s.turn();
    assert_eq!(cancels(&released, LINK), [cap]);
    assert_eq!(
        assigns(&released, 2).len(),
        1,
        "own goes to dev-2, not back to dev-1"
    );
    assert!(assigns(&released, LINK).is_empty());
}

/// A device's advertised credit is clamped to its declared slots less the tasks on it: one
/// that claims 255 free slots of 4 gets 4 tasks, and no more while it holds them.
#[test]
fn credit_never_exceeds_the_declared_slots() {
    let mut s = Sim::new();
    for i in 0..10 {
        s.submit(&format!(r#"{{"id":"t{i}","capability":"echo"}}"#));
    }
    let released = s.up(LINK, hello(), 255);
    assert_eq!(assigns(&released, LINK).len(), 4);
    s.credit(LINK, 255);
    assert!(assigns(&s.turn(), LINK).is_empty());
    assert_eq!(s.e.stats(s.now()).devices["dev-1"].free_slots, 0);
}

/// A cancel that arrives before its submission (brokers order messages per topic only) is
/// kept: the submission is answered `cancelled` and never dispatched.
#[test]
fn a_cancel_that_overtakes_its_submission_still_cancels_it() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    let ticket = s.ticket();
    s.e.handle_cancel("early", ticket, s.now()).unwrap();
    s.turn();
    s.submit(r#"{"id":"early","capability":"echo"}"#);
    let released = s.turn();
    assert!(assigns(&released, LINK).is_empty());
    assert!(s.task("early").is_none());
    let states = s.states();
    assert_eq!(
        states,
        [
            ("early".into(), TaskState::Cancelled),
            ("early".into(), TaskState::Cancelled)
        ],
        "recorded, then answered as a duplicate"
    );
}

// ----- devices and locks -----

/// Lock names become the device's lock ids, in ascending order whatever the submission's
/// order; a named device without the lock rejects the task, saying which lock and what
/// it has; the device document lists the locks.
#[test]
fn lock_names_become_the_devices_lock_ids() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"bus","capability":"echo","locks":["bus"]}"#);
    s.submit(r#"{"id":"both","capability":"echo","locks":["bus","i2c0"]}"#);
    s.submit(r#"{"id":"spi","capability":"echo","device":"dev-1","locks":["i2c0","spi"]}"#);
    let released = s.turn();
    let locks: Vec<Vec<u8>> = assigns(&released, LINK)
        .iter()
        .map(|a| a.locks.to_vec())
        .collect();
    assert_eq!(locks, [vec![1], vec![0, 1]]);
    assert!(s.task("spi").is_none(), "the task is settled");
    let outbox: Vec<String> =
        s.e.queue()
            .outbox(100)
            .unwrap()
            .into_iter()
            .map(|(_, o)| o.payload)
            .collect();
    let rejected = outbox
        .iter()
        .find(|p| p.contains(r#""id":"spi""#) && p.contains("rejected"))
        .unwrap_or_else(|| panic!("{outbox:#?}"));
    assert!(
        rejected.contains(r#""code":"invalid_locks""#)
            && rejected
                .contains(r#"device dev-1 has no lock \"spi\" (its locks: \"i2c0\", \"bus\")"#),
        "{rejected}"
    );
    assert!(
        outbox
            .iter()
            .any(|p| p.contains(r#""locks":["i2c0","bus"]"#)),
        "{outbox:#?}"
    );
}

/// Publishes the outbox: its entries, oldest first, acknowledged and gone with a commit.
fn publish(s: &mut Sim) -> Vec<OutboxEntry> {
    let entries = s.e.queue().outbox(10_000).unwrap();
    let keys: Vec<u64> = entries.iter().map(|(k, _)| *k).collect();
    s.e.handle_published(&keys);
    s.e.commit().unwrap();
    entries.into_iter().map(|(_, o)| o).collect()
}

/// The device documents published since the last call, as (device id, online), in order
/// (a document replaced by a newer one of its device before it was published is not).
fn documents(s: &mut Sim) -> Vec<(String, bool)> {
    publish(s)
        .into_iter()
        .filter(|o| o.subtopic.starts_with("devices/"))
        .map(|o| {
            let doc: serde_json::Value = serde_json::from_str(&o.payload).unwrap();
            (
                o.subtopic["devices/".len()..].to_owned(),
                doc["online"] == true,
            )
        })
        .collect()
}

/// A byte stream without connections of its own (a serial port) carries a device's next
/// session on the same link: the link is not closed under it, and the device stays online.
#[test]
fn a_new_session_of_the_same_device_on_its_link_keeps_the_link() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    assert_eq!(documents(&mut s), [("dev-1".into(), true)]);
    let mut restarted = hello();
    restarted.boot_id += 1;
    let released = s.up(LINK, restarted, 4);
    assert!(
        released.commands.is_empty(),
        "the link was closed under its new session"
    );
    assert_eq!(documents(&mut s), [("dev-1".into(), true)]);
    // It is the device on the link: tasks reach it there.
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 1);
    // Elsewhere, a new session still closes the old link.
    let released = s.up(2, hello(), 4);
    assert!(
        released
            .commands
            .iter()
            .any(|(l, c)| *l == LINK && matches!(c, LinkCommand::Close)),
        "{:?}",
        released.commands
    );
}

/// Another device opening a session on a link (a serial port whose device was swapped)
/// takes the previous one offline; its tasks wait for it.
#[test]
fn another_device_on_a_link_takes_the_previous_one_offline() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"t","capability":"echo","device":"dev-1"}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 1);
    assert_eq!(documents(&mut s), [("dev-1".into(), true)]);
    let released = s.up(LINK, hello_of("dev-2"), 4);
    assert_eq!(
        documents(&mut s),
        [("dev-1".into(), false), ("dev-2".into(), true)]
    );
    assert_eq!(s.task("t").unwrap().state, TaskState::Dispatched);
    // dev-1's task is not handed to dev-2 on the link dev-1 used.
    assert!(assigns(&released, LINK).is_empty());
    s.now += 40_000;
    assert!(assigns(&s.turn(), LINK).is_empty());
    assert_eq!(s.task("t").unwrap().state, TaskState::Queued);
}

// ----- urgent work -----

/// With reservation on (the default), a device of 4 slots takes 3 long low-priority tasks and
/// keeps its last slot: a P0 submitted after them is dispatched at once, ahead of the P4s
/// still queued. Per device, the reserve can be changed; a one-slot device reserves nothing.
#[test]
fn a_reserved_slot_waits_for_urgent_work() {
    let mut s = Sim::new();
    s.e.set_urgency(Urgency::default());
    s.up(LINK, hello(), 4);
    for i in 0..6 {
        s.submit(&format!(
            r#"{{"id":"low-{i}","capability":"echo","priority":4}}"#
        ));
    }
    assert_eq!(
        assigns(&s.turn(), LINK).len(),
        3,
        "one slot of four is kept"
    );
    s.credit(LINK, 1);
    assert!(
        assigns(&s.turn(), LINK).is_empty(),
        "P4 never takes the reserved slot"
    );
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0}"#);
    s.now += 30; // the turn that dispatches it comes 30 ms later
    let sent = assigns(&s.turn(), LINK);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].handle, s.task("urgent").unwrap().handle());
    let stats = s.e.stats(s.now());
    assert_eq!(stats.devices["dev-1"].reserved, 1);
    let w = stats.urgent_wait;
    assert_eq!(
        (w.n, w.p50_ms, w.max_ms),
        (1, 30, 30),
        "only urgent tasks are counted"
    );

    let mut per_device = Urgency::default();
    per_device.per_device.insert("dev-2".into(), 3);
    s.e.set_urgency(per_device.clone());
    assert_eq!(per_device.reserve_for("dev-2", 8), 3);
    assert_eq!(
        per_device.reserve_for("dev-2", 2),
        1,
        "one slot always stays for any task"
    );
    assert_eq!(per_device.reserve_for("dev-1", 1), 0);
}

/// A device of protocol version 2 (it can give unstarted tasks back), with `slots`.
fn hello_v2(slots: u8) -> Hello {
    let mut h = hello();
    h.version = 2;
    h.slots = slots;
    h
}

fn preempts(released: &Released, link: LinkId) -> Vec<u32> {
    to_link(released, link, |c| match c {
        LinkCommand::Preempt { handle } => Some(*handle),
        _ => None,
    })
}

/// Taking back only (no reservation), so that the slots fill up.
fn take_back_only() -> Urgency {
    Urgency {
        reserve: 0,
        ..Urgency::default()
    }
}

/// Every slot holds low-priority work, one task started and one not: an urgent task asks the
/// device to give back the unstarted one (never the started one), gets its slot once the
/// device did, and the given-back task is queued again with a new handle and its attempt not
/// counted, `preempted` in its events, and runs after.
#[test]
fn an_urgent_task_without_a_slot_takes_back_an_unstarted_task() {
    let mut s = Sim::new();
    s.e.set_urgency(take_back_only());
    s.up(LINK, hello_v2(2), 2);
    s.submit(r#"{"id":"started","capability":"echo","priority":4}"#);
    s.submit(r#"{"id":"waiting","capability":"echo","priority":4}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 2);
    let started = s.task("started").unwrap().handle();
    let unstarted = s.task("waiting").unwrap().handle();
    s.report(LINK, started, TaskReport::Running, None);
    s.credit(LINK, 0);
    s.turn();
    s.events();

    s.submit(r#"{"id":"urgent","capability":"echo","priority":0}"#);
    let released = s.turn();
    assert_eq!(
        preempts(&released, LINK),
        [unstarted],
        "only the unstarted task"
    );
    assert!(
        preempts(&s.turn(), LINK).is_empty(),
        "one take-back per waiting task"
    );

    let ticket = s.ticket();
    s.link(
        LINK,
        LinkInput::Suspended {
            handle: unstarted,
            checkpoint: Checkpoint::default(),
            ticket,
        },
    );
    s.credit(LINK, 1);
    let released = s.turn();
    assert_eq!(released.tickets, [ticket]);
    let sent = assigns(&released, LINK);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].handle,
        s.task("urgent").unwrap().handle(),
        "the urgent task got the slot"
    );
    let back = s.task("waiting").unwrap();
    assert_eq!(
        (back.state, back.attempt, back.preemptions),
        (TaskState::Queued, 0, 1)
    );
    assert_ne!(
        back.handle(),
        unstarted,
        "the device will not run the old handle again"
    );
    let states = s.states();
    assert!(
        states.contains(&("waiting".into(), TaskState::Preempted)),
        "{states:?}"
    );
    assert_eq!(s.e.stats(s.now()).preemptions, 1);

    // The urgent task finishes; the given-back task runs, with its new handle, as attempt 1.
    let h = s.task("urgent").unwrap().handle();
    s.report(LINK, h, TaskReport::Completed, None);
    s.credit(LINK, 1);
    let sent = assigns(&s.turn(), LINK);
    assert_eq!(
        sent.iter().map(|a| a.handle).collect::<Vec<_>>(),
        [s.task("waiting").unwrap().handle()]
    );
    assert_eq!(s.task("waiting").unwrap().attempt, 1);
}

/// The victim is the least urgent unstarted task strictly below the waiting one (then the
/// latest deadline, then the latest admitted); a task as urgent as the waiting one is never
/// taken back, and a non-urgent waiting task takes back nothing.
#[test]
fn the_victim_is_the_least_urgent_unstarted_task_strictly_below() {
    let mut s = Sim::new();
    s.e.set_urgency(take_back_only());
    s.up(LINK, hello_v2(4), 4);
    s.submit(r#"{"id":"p1","capability":"echo","priority":1}"#);
    s.submit(r#"{"id":"p3","capability":"echo","priority":3}"#);
    s.submit(r#"{"id":"p4-early","capability":"echo","priority":4,"deadline_ms":60000}"#);
    s.submit(r#"{"id":"p4-late","capability":"echo","priority":4,"deadline_ms":90000}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 4);
    s.credit(LINK, 0);
    s.submit(r#"{"id":"p2","capability":"echo","priority":2}"#);
    assert!(preempts(&s.turn(), LINK).is_empty(), "P2 is not urgent");
    s.submit(r#"{"id":"a","capability":"echo","priority":1}"#);
    let h = |s: &Sim, id: &str| s.task(id).unwrap().handle();
    assert_eq!(preempts(&s.turn(), LINK), [h(&s, "p4-late")]);
    s.submit(r#"{"id":"b","capability":"echo","priority":1}"#);
    assert_eq!(preempts(&s.turn(), LINK), [h(&s, "p4-early")]);
    s.submit(r#"{"id":"c","capability":"echo","priority":1}"#);
    assert_eq!(preempts(&s.turn(), LINK), [h(&s, "p3")]);
    s.submit(r#"{"id":"d","capability":"echo","priority":1}"#);
    assert!(preempts(&s.turn(), LINK).is_empty(), "p1 is as urgent as d");
    s.submit(r#"{"id":"e","capability":"echo","priority":0}"#);
    assert_eq!(
        preempts(&s.turn(), LINK),
        [h(&s, "p1")],
        "a P0 may take back a P1"
    );
}

/// A task is given back at most `max_preemptions` times; a device of protocol version 1 is
/// never asked (it has reservation only); a victim that starts first refuses, and a victim that
/// finishes first ends the take-back, so the waiting task may choose again.
#[test]
fn take_backs_are_bounded_and_only_asked_of_devices_that_can() {
    let mut s = Sim::new();
    s.e.set_urgency(Urgency {
        max_preemptions: 1,
        ..take_back_only()
    });
    let mut v1 = hello();
    v1.version = 1;
    s.up(LINK, v1, 1);
    s.submit(r#"{"id":"low","capability":"echo","priority":4}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 1);
    s.credit(LINK, 0);
    s.submit(r#"{"id":"u1","capability":"echo","priority":0}"#);
    assert!(
        preempts(&s.turn(), LINK).is_empty(),
        "a version 1 device is never asked"
    );

    // The same device, upgraded (so rebooted), reconnects: "low" is tried again after the
    // retry delay.
    s.up(
        LINK,
        Hello {
            boot_id: 8,
            ..hello_v2(1)
        },
        0,
    );
    s.credit(LINK, 1);
    let sent = assigns(&s.turn(), LINK);
    assert_eq!(sent.len(), 1, "u1 first");
    let u1 = sent[0].handle;
    s.submit(r#"{"id":"low2","capability":"echo","priority":4}"#);
    s.report(LINK, u1, TaskReport::Completed, None);
    s.credit(LINK, 1);
    let sent = assigns(&s.turn(), LINK);
    assert_eq!(sent.len(), 1);
    let low = sent[0].handle;
    s.credit(LINK, 0);
    s.submit(r#"{"id":"u2","capability":"echo","priority":0}"#);
    let asked = preempts(&s.turn(), LINK);
    assert_eq!(asked, [low]);
    let ticket = s.ticket();
    s.link(
        LINK,
        LinkInput::Suspended {
            handle: low,
            checkpoint: Checkpoint::default(),
            ticket,
        },
    );
    s.credit(LINK, 1);
    let sent = assigns(&s.turn(), LINK);
    let u2 = sent[0].handle;
    s.report(LINK, u2, TaskReport::Completed, None);
    s.credit(LINK, 1);
    let sent = assigns(&s.turn(), LINK);
    assert_eq!(sent.len(), 1, "the given-back task runs again");
    let given_back = sent[0].handle;
    s.credit(LINK, 0);
    s.submit(r#"{"id":"u3","capability":"echo","priority":0}"#);
    let asked = preempts(&s.turn(), LINK);
    assert!(
        !asked.contains(&given_back),
        "a task given back max_preemptions times is not asked again: {asked:?}"
    );
    // A victim that finishes first ends its take-back.
    s.report(LINK, given_back, TaskReport::Completed, None);
    s.credit(LINK, 1);
    let sent = assigns(&s.turn(), LINK);
    assert_eq!(sent.len(), 1, "u3 takes the freed slot");
}

/// A device of 3 slots full of unstarted P4 tasks `a`, `b`, `c`, then a P0 `urgent`: the
/// engine and the take-backs its turn asked for.
fn full_device_then_urgent() -> (Sim, Vec<u32>) {
    let mut s = Sim::new();
    s.e.set_urgency(take_back_only());
    s.up(LINK, hello_v2(3), 3);
    for id in ["a", "b", "c"] {
        s.submit(&format!(
            r#"{{"id":"{id}","capability":"echo","priority":4}}"#
        ));
    }
    assert_eq!(assigns(&s.turn(), LINK).len(), 3);
    s.credit(LINK, 0);
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0}"#);
    let asked = preempts(&s.turn(), LINK);
    (s, asked)
}

/// A take-back that comes too late (the device started the task: `Started`) or never went out
/// (`PreemptNotSent`) leaves the task alone, and the waiting task chooses another victim in the
/// next turn.
#[test]
fn a_refused_or_unsent_take_back_lets_the_waiting_task_choose_again() {
    let (mut s, first) = full_device_then_urgent();
    assert_eq!(first.len(), 1);
    // The device started it before the Preempt arrived: its `running` report comes first.
    s.report(LINK, first[0], TaskReport::Running, None);
    let ticket = s.ticket();
    let reject = Reject {
        handle: Some(first[0]),
        reason: RejectReason::Started,
    };
    s.link(LINK, LinkInput::Reject { reject, ticket });
    let released = s.turn();
    assert!(released.tickets.contains(&ticket));
    let second = preempts(&released, LINK);
    assert_eq!(second.len(), 1, "another victim at once");
    assert_ne!(second, first);
    let id = ["a", "b", "c"]
        .into_iter()
        .find(|id| s.task(id).unwrap().handle() == first[0])
        .unwrap();
    assert_eq!(
        s.task(id).unwrap().state,
        TaskState::Running,
        "a started task runs on"
    );
    s.link(LINK, LinkInput::PreemptNotSent { handle: second[0] });
    let third = preempts(&s.turn(), LINK);
    assert_eq!(third.len(), 1, "one not sent is chosen again or replaced");
    assert!(!s.states().iter().any(|(_, st)| *st == TaskState::Rejected));
}

/// A link reports its credit after each `Assign` it took, so reports written before a turn's
/// `Assign`s reached the link arrive after the engine counted them: the engine discounts the
/// `Assign`s the link had not taken yet, so a stale report never makes it send more than the
/// device has room for (found by the incident benchmark: a P3 took a reserved slot, and a P0
/// waited 5 s for it).
#[test]
fn a_credit_report_older_than_the_last_assigns_does_not_count_them_twice() {
    let mut s = Sim::new();
    s.e.set_urgency(Urgency::default());
    s.up(LINK, hello_v2(4), 4);
    for i in 0..8 {
        s.submit(&format!(
            r#"{{"id":"p3-{i}","capability":"echo","priority":3}}"#
        ));
    }
    assert_eq!(assigns(&s.turn(), LINK).len(), 3, "one slot of four kept");
    // The link took the first of the three Assigns when it wrote this report: 3 left of 4.
    s.link(
        LINK,
        LinkInput::Credit {
            credit: 3,
            taken: 1,
        },
    );
    assert!(
        assigns(&s.turn(), LINK).is_empty(),
        "two Assigns still on their way"
    );
    // All three taken: one slot left, the reserved one.
    s.link(
        LINK,
        LinkInput::Credit {
            credit: 1,
            taken: 3,
        },
    );
    assert!(assigns(&s.turn(), LINK).is_empty());
    s.submit(r#"{"id":"p0","capability":"echo","priority":0}"#);
    assert_eq!(
        assigns(&s.turn(), LINK).len(),
        1,
        "the reserved slot is still there for P0"
    );
}

/// The slot a device gave back is free on the device only once its `Suspended` is
/// acknowledged, so the link's credit report comes a turn later: until then the waiting task
/// counts as served and takes nothing else back (found by `tests/tests/urgent.rs`: three P4s
/// were given back for one P0).
#[test]
fn one_take_back_per_waiting_task_until_the_freed_slot_is_reported() {
    let (mut s, asked) = full_device_then_urgent();
    assert_eq!(asked.len(), 1);
    let ticket = s.ticket();
    s.link(
        LINK,
        LinkInput::Suspended {
            handle: asked[0],
            checkpoint: Checkpoint::default(),
            ticket,
        },
    );
    let released = s.turn();
    assert!(
        preempts(&released, LINK).is_empty(),
        "a second take-back for the same task"
    );
    assert!(
        assigns(&released, LINK).is_empty(),
        "the slot is not free on the device yet"
    );
    s.credit(LINK, 1);
    let sent = assigns(&s.turn(), LINK);
    assert_eq!(
        sent.iter().map(|a| a.handle).collect::<Vec<_>>(),
        [s.task("urgent").unwrap().handle()]
    );
}

/// A device whose `echo` resumes from a checkpoint (protocol 2) and whose `sleep` is never
/// stopped once started.
fn hello_resumable(slots: u8) -> Hello {
    let mut h = hello_v2(slots);
    h.capabilities =
        heapless::Vec::from_slice(&["echo".try_into().unwrap(), "sleep".try_into().unwrap()])
            .unwrap();
    h.resumable = 0b01;
    h.restartable = 0;
    h
}

/// Every slot holds started work: an urgent task takes back the started task of a resumable
/// capability (an unstarted one would go first), never one whose capability is never stopped;
/// the checkpoint it comes back with is committed with the task and goes, as a `Restore`, just
/// ahead of the `Assign` that resumes it — on a device that resumes that capability; it
/// survives a restart.
#[test]
fn a_started_task_is_taken_back_with_its_checkpoint_and_resumed_from_it() {
    let mut s = Sim::new();
    s.e.set_urgency(take_back_only());
    s.up(LINK, hello_resumable(2), 2);
    s.submit(r#"{"id":"never","capability":"sleep","priority":4}"#);
    s.submit(r#"{"id":"resumable","capability":"echo","priority":4}"#);
    assert_eq!(assigns(&s.turn(), LINK).len(), 2);
    for id in ["never", "resumable"] {
        let h = s.task(id).unwrap().handle();
        s.report(LINK, h, TaskReport::Running, None);
    }
    s.credit(LINK, 0);
    s.turn();
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0}"#);
    let asked = preempts(&s.turn(), LINK);
    assert_eq!(
        asked,
        [s.task("resumable").unwrap().handle()],
        "never the `never` one"
    );
    let checkpoint = Checkpoint {
        steps: 7,
        scratch: vec![1, 2, 3],
        result: b"[1,".to_vec(),
    };
    let ticket = s.ticket();
    let suspended = LinkInput::Suspended {
        handle: asked[0],
        checkpoint: checkpoint.clone(),
        ticket,
    };
    s.link(LINK, suspended);
    s.turn();
    let t: &TaskRecord = &s.task("resumable").unwrap();
    assert_eq!(t.checkpoint.as_ref(), Some(&checkpoint));
    s.restart();
    assert_eq!(
        s.task("resumable").unwrap().checkpoint.as_ref(),
        Some(&checkpoint),
        "durable"
    );
    // A device that resumes `echo` gets the checkpoint just ahead of the Assign.
    let released = s.up(2, hello_resumable(3), 3);
    let to_link: Vec<&LinkCommand> = released
        .commands
        .iter()
        .filter(|(l, _)| *l == 2)
        .map(|(_, c)| c)
        .collect();
    let handle = s.task("resumable").unwrap().handle();
    let restore_at = to_link.iter().position(|c| matches!(c, LinkCommand::Restore { handle: h, checkpoint: c } if *h == handle && *c == checkpoint));
    let assign_at = to_link
        .iter()
        .position(|c| matches!(c, LinkCommand::Assign(a) if a.handle == handle));
    assert!(
        restore_at.is_some() && assign_at == restore_at.map(|i| i + 1),
        "{to_link:?}"
    );
    // Should the device no longer resume it, the task starts over, without an event.
    s.events();
    let ticket = s.ticket();
    let reject = Reject {
        handle: Some(handle),
        reason: RejectReason::NotResumable,
    };
    s.link(2, LinkInput::Reject { reject, ticket });
    s.turn();
    let t = s.task("resumable").unwrap();
    assert!(t.checkpoint.is_none());
    assert!(
        s.states().iter().all(|(id, _)| id != "resumable"),
        "no event for it"
    );
}

/// A device that does not resume a capability starts a checkpointed task over: no `Restore`.
#[test]
fn a_checkpoint_goes_only_to_a_device_that_resumes_its_capability() {
    let mut s = Sim::new();
    s.e.set_urgency(take_back_only());
    s.up(LINK, hello_resumable(1), 1);
    s.submit(r#"{"id":"t","capability":"echo","priority":4}"#);
    let h = assigns(&s.turn(), LINK)[0].handle;
    s.report(LINK, h, TaskReport::Running, None);
    s.credit(LINK, 0);
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0}"#);
    assert_eq!(preempts(&s.turn(), LINK), [h]);
    let ticket = s.ticket();
    let checkpoint = Checkpoint {
        steps: 3,
        scratch: vec![],
        result: vec![],
    };
    s.link(
        LINK,
        LinkInput::Suspended {
            handle: h,
            checkpoint,
            ticket,
        },
    );
    s.turn();
    s.link(
        LINK,
        LinkInput::Down {
            reason: "gone".into(),
        },
    );
    s.turn();
    let mut plain = hello_v2(2); // echo, not resumable
    plain.device_id = DeviceId::try_from("dev-9").unwrap();
    let released = s.up(3, plain, 2);
    assert!(
        !released
            .commands
            .iter()
            .any(|(_, c)| matches!(c, LinkCommand::Restore { .. })),
        "{:?}",
        released.commands
    );
    let t = s.task("t").unwrap().handle();
    assert!(
        assigns(&released, 3).iter().any(|a| a.handle == t),
        "it starts over there"
    );
}

// ----- bridge resources -----

fn reprioritized(released: &Released, link: LinkId) -> Vec<(u32, Priority)> {
    to_link(released, link, |c| match c {
        LinkCommand::Reprioritize { handle, priority } => Some((*handle, *priority)),
        _ => None,
    })
}

/// `bus` declared with `policy`.
fn with_bus(s: &mut Sim, policy: ResourcePolicy) {
    s.e.set_resources([("bus".to_owned(), policy)].into());
}

/// Pathfinder across devices, in the engine: a P4 on dev-1 holds `bus`; a P0 that needs it
/// waits although dev-2 is idle, and dev-1 is told to run the holder at P0; when the holder
/// ends, the P0 takes `bus` (and a waiter that goes away gives the holder its own priority
/// back).
#[test]
fn a_resource_has_one_holder_and_its_most_urgent_waiter_lends_it_priority() {
    let mut s = Sim::new();
    with_bus(&mut s, ResourcePolicy::default());
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"low","capability":"echo","priority":4,"resources":["bus"]}"#);
    let low = assigns(&s.turn(), LINK)[0].handle;
    s.up(2, hello_of("dev-2"), 4);
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0,"resources":["bus"]}"#);
    s.submit(r#"{"id":"free","capability":"echo","priority":5}"#);
    let released = s.turn();
    assert_eq!(
        assigns(&released, 2).len() + assigns(&released, LINK).len(),
        1,
        "only the task naming no resource goes"
    );
    assert_eq!(s.task("urgent").unwrap().state, TaskState::Queued);
    assert_eq!(reprioritized(&released, LINK), [(low, Priority::P0)]);
    // Told once, not every turn.
    assert!(reprioritized(&s.turn(), LINK).is_empty());
    s.report(LINK, low, TaskReport::Completed, None);
    let released = s.turn();
    let sent: Vec<Assign> = [assigns(&released, LINK), assigns(&released, 2)].concat();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].handle, s.task("urgent").unwrap().handle());

    let holder_link = if assigns(&released, LINK).is_empty() {
        2
    } else {
        LINK
    };
    s.report(holder_link, sent[0].handle, TaskReport::Completed, None);
    s.turn();

    // A waiter that goes away gives the holder its own priority back.
    s.submit(r#"{"id":"mid","capability":"echo","priority":3,"resources":["bus"]}"#);
    let released = s.turn();
    let (mid_link, mid) = match assigns(&released, LINK).first() {
        Some(a) => (LINK, a.handle),
        None => (2, assigns(&released, 2)[0].handle),
    };
    s.submit(r#"{"id":"waiter","capability":"echo","priority":1,"resources":["bus"]}"#);
    assert_eq!(reprioritized(&s.turn(), mid_link), [(mid, Priority::P1)]);
    let t = s.ticket();
    s.e.handle_cancel("waiter", t, s.now()).unwrap();
    assert_eq!(reprioritized(&s.turn(), mid_link), [(mid, Priority::P3)]);
}

/// A submission naming a resource the configuration does not declare is rejected, naming it.
#[test]
fn an_undeclared_resource_is_rejected_with_its_name() {
    let mut s = Sim::new();
    with_bus(&mut s, ResourcePolicy::default());
    s.submit(r#"{"id":"t","capability":"echo","resources":["bus","conveyor"]}"#);
    s.turn();
    let events = s.events();
    let (state, error) = last_error(&events, "t");
    assert_eq!(
        (state, error.code),
        (TaskState::Rejected, ErrorCode::InvalidResources)
    );
    assert!(
        error
            .message
            .contains("\"conveyor\" is not declared (declared: bus)"),
        "{}",
        error.message
    );
    assert!(s.task("t").is_none());
}

/// Ownership is durable: after a restart the holder still holds `bus` (a waiter does not get
/// it), and its device, back, is told the holder's priority again.
#[test]
fn resource_ownership_survives_a_restart() {
    let mut s = Sim::new();
    with_bus(&mut s, ResourcePolicy::default());
    s.up(LINK, hello(), 4);
    s.submit(r#"{"id":"low","capability":"echo","priority":4,"resources":["bus"]}"#);
    let low = assigns(&s.turn(), LINK)[0].handle;
    s.restart();
    with_bus(&mut s, ResourcePolicy::default());
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0,"resources":["bus"]}"#);
    let other = s.up(2, hello_of("dev-2"), 4);
    assert!(assigns(&other, 2).is_empty(), "bus is still held");
    let back = s.up(3, hello(), 4);
    assert_eq!(replays(&back, 3), [low]);
    assert_eq!(reprioritized(&back, 3), [(low, Priority::P0)]);
}

/// A fixed ceiling: the holder's `Assign` carries the ceiling; with inheritance off and no
/// ceiling, a waiter lends nothing; a holder is never taken back for urgent work.
#[test]
fn ceilings_raise_from_the_assign_inheritance_can_be_off_and_holders_are_not_victims() {
    let mut s = Sim::new();
    s.e.set_urgency(take_back_only());
    s.e.set_resources(
        [
            (
                "bus".to_owned(),
                ResourcePolicy {
                    ceiling: Some(broker_config::Ceiling::Fixed(Priority::P1)),
                    inheritance: true,
                },
            ),
            (
                "radio".to_owned(),
                ResourcePolicy {
                    ceiling: None,
                    inheritance: false,
                },
            ),
        ]
        .into(),
    );
    s.up(LINK, hello_v2(2), 2);
    s.submit(r#"{"id":"ceil","capability":"echo","priority":5,"resources":["bus"]}"#);
    s.submit(r#"{"id":"plain","capability":"echo","priority":4,"resources":["radio"]}"#);
    let sent = assigns(&s.turn(), LINK);
    let prio = |id: &str| {
        let h = s.task(id).unwrap().handle();
        sent.iter().find(|a| a.handle == h).unwrap().priority
    };
    assert_eq!((prio("ceil"), prio("plain")), (Priority::P1, Priority::P4));
    s.credit(LINK, 0);
    s.submit(r#"{"id":"wants-radio","capability":"echo","priority":0,"resources":["radio"]}"#);
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0}"#);
    let released = s.turn();
    assert!(
        reprioritized(&released, LINK).is_empty(),
        "inheritance off: {:?}",
        released.commands
    );
    assert!(
        preempts(&released, LINK).is_empty(),
        "both tasks hold resources: neither is a victim"
    );
}

// ----- QoS classes -----

/// With besteffort held to 50 % of the slots, 8 besteffort tasks on two 4-slot devices take 4
/// slots and leave 4 for the classes above; a guaranteed task arriving finds one at once. The
/// stats count each class.
#[test]
fn a_class_quota_caps_its_share_of_the_slots() {
    let mut s = Sim::new();
    s.e.set_class_quotas([100, 100, 50]);
    s.up(LINK, hello(), 4);
    s.up(2, hello_of("dev-2"), 4);
    for i in 0..8 {
        s.submit(&format!(
            r#"{{"id":"be-{i}","capability":"echo","priority":5}}"#
        ));
    }
    let released = s.turn();
    let first = [assigns(&released, LINK), assigns(&released, 2)].concat();
    assert_eq!(first.len(), 4);
    s.submit(r#"{"id":"g","capability":"echo","priority":2}"#);
    let released = s.turn();
    let sent = [assigns(&released, LINK), assigns(&released, 2)].concat();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].handle, s.task("g").unwrap().handle());
    let stats = s.e.stats(s.now());
    let be = stats.classes["besteffort"];
    assert_eq!((be.in_flight, be.queued, be.max_percent), (4, 4, 50));
    assert_eq!(stats.classes["guaranteed"].in_flight, 1);
    // One finishes: one more besteffort task takes its place, not more.
    let done = first[0].handle;
    let on = s.e.queue().by_handle(done).unwrap().device.clone().unwrap();
    let link = if on == "dev-1" { LINK } else { 2 };
    s.report(link, done, TaskReport::Completed, None);
    let released = s.turn();
    assert_eq!(
        assigns(&released, LINK).len() + assigns(&released, 2).len(),
        1
    );
}

/// An id a credential proved once (a TLS certificate, a DTLS PSK) cannot be claimed over a
/// link without one afterwards, across restarts: such a Hello closes its link and changes
/// nothing (review H4). With the policy off, or for ids never proven, anyone may claim.
#[test]
fn an_id_proven_by_a_credential_cannot_be_claimed_without_one() {
    let mut s = Sim::new();
    let up = |s: &mut Sim, link: LinkId, credential: Option<&'static str>| {
        let now = s.now();
        s.e.handle_link(
            link,
            LinkInput::Up {
                peer: "test".into(),
                hello: hello(),
                rebooted: false,
                credit: 4,
                credential,
            },
            now,
        );
        s.turn()
    };
    let closed = |r: &Released, link: LinkId| {
        r.commands
            .iter()
            .any(|(l, c)| *l == link && matches!(c, LinkCommand::Close))
    };
    // Never proven: a link without credentials may claim it.
    assert!(!closed(&up(&mut s, 1, None), 1));
    // Proven over TLS: the TLS session takes over.
    let r = up(&mut s, 2, Some("TLS client certificate"));
    assert!(closed(&r, 1) && !closed(&r, 2), "{:?}", r.commands);
    // An impostor over plain TCP is closed; the TLS session keeps the device.
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    let r = up(&mut s, 3, None);
    assert!(closed(&r, 3) && !closed(&r, 2), "{:?}", r.commands);
    assert!(assigns(&r, 3).is_empty());
    assert_eq!(
        assigns(&r, 2).len(),
        1,
        "the task goes to the proven device"
    );
    // Across a restart too.
    s.restart();
    let r = up(&mut s, 4, None);
    assert!(closed(&r, 4), "{:?}", r.commands);
    // Unless the configuration allows it.
    s.e.set_unproven_claims(true);
    let r = up(&mut s, 5, None);
    assert!(!closed(&r, 5), "{:?}", r.commands);
}

/// A device that answers every `Assign` with `NoFreeSlot` while advertising credit cannot
/// drive a dispatch loop (review M6): each refusal costs the task an attempt and its retry
/// delay, so it is not sent again before that delay, whatever credit the device reports;
/// after its attempts the task fails.
#[test]
fn a_device_refusing_everything_costs_attempts_and_delays_not_a_loop() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 8);
    s.submit(r#"{"id":"t","capability":"echo"}"#);
    let mut dispatched = 0;
    for _ in 0..20 {
        let released = s.turn();
        for a in assigns(&released, LINK) {
            dispatched += 1;
            let ticket = s.ticket();
            let reject = Reject {
                handle: Some(a.handle),
                reason: RejectReason::NoFreeSlot,
            };
            s.link(LINK, LinkInput::Reject { reject, ticket });
            // Right after the refusal, with the same credit: nothing goes out again.
            assert!(assigns(&s.turn(), LINK).is_empty(), "a dispatch loop");
            s.credit(LINK, 8);
            assert!(
                assigns(&s.turn(), LINK).is_empty(),
                "before the retry delay"
            );
        }
        s.now += 2_000;
        s.credit(LINK, 8);
    }
    assert_eq!(dispatched, 3, "one dispatch per attempt");
    let events = s.events();
    let (state, error) = last_error(&events, "t");
    assert_eq!(
        (state, error.code),
        (TaskState::Failed, ErrorCode::AttemptsExhausted)
    );
}

/// Tasks that fit no device now cost the dispatcher nothing turn after turn (review M7):
/// tasks naming a lock no device has, tasks in their retry delay and tasks of a class at its
/// quota are passed over whole, so what the dispatcher examines follows the work it hands
/// out, not the length of the queue.
#[test]
fn tasks_that_fit_nowhere_are_not_examined_at_every_turn() {
    let mut s = Sim::new();
    s.e.set_class_quotas([100, 100, 50]);
    s.up(LINK, hello(), 4);
    s.up(2, hello_of("dev-2"), 4);
    // Four besteffort tasks take their class's share (half of 8 slots); 30 more wait. (The
    // test queue holds 100 tasks.)
    for i in 0..34 {
        s.submit(&format!(
            r#"{{"id":"be-{i}","capability":"echo","priority":5}}"#
        ));
    }
    // 30 name a lock no device has.
    for i in 0..30 {
        s.submit(&format!(
            r#"{{"id":"lk-{i}","capability":"echo","locks":["absent"]}}"#
        ));
    }
    s.turn();
    // 30 wait for their retry delay: refused with NoFreeSlot, which backs them off.
    for i in 0..30 {
        s.submit(&format!(
            r#"{{"id":"rt-{i}","capability":"echo","priority":1}}"#
        ));
    }
    let mut refusals = 0;
    while refusals < 30 {
        let released = s.turn();
        let sent = [assigns(&released, LINK), assigns(&released, 2)].concat();
        assert!(
            !sent.is_empty(),
            "{refusals} refused, then nothing went out: {:?}",
            s.e.stats(s.now())
        );
        for a in sent {
            let link =
                if s.e.queue().by_handle(a.handle).unwrap().device.as_deref() == Some("dev-1") {
                    LINK
                } else {
                    2
                };
            let ticket = s.ticket();
            let reject = Reject {
                handle: Some(a.handle),
                reason: RejectReason::NoFreeSlot,
            };
            s.link(link, LinkInput::Reject { reject, ticket });
            refusals += 1;
        }
        s.credit(LINK, 4);
        s.credit(2, 4);
    }
    s.turn();
    let before = s.e.stats(s.now()).dispatch_examined;
    // Many turns with credit and echo work coming and going.
    for i in 0..100 {
        s.submit(&format!(
            r#"{{"id":"rt-new-{i}","capability":"echo","priority":0}}"#
        ));
        let released = s.turn();
        for (link, a) in [LINK, 2]
            .into_iter()
            .flat_map(|l| assigns(&released, l).into_iter().map(move |a| (l, a)))
        {
            s.report(link, a.handle, TaskReport::Completed, None);
        }
        // The devices say they have room again (each holds two besteffort tasks).
        s.credit(LINK, 2);
        s.credit(2, 2);
        s.now += 1;
    }
    let stats = s.e.stats(s.now());
    assert_eq!(
        s.e.queue().len(),
        94,
        "every new task ran: {:?}",
        stats.queued
    );
    let examined = stats.dispatch_examined - before;
    assert!(
        examined <= 300,
        "{examined} tasks examined over 100 turns with 90 that fit nowhere now"
    );
}

/// A device offline for `devices.forget_after` has its retained document cleared (an empty
/// retained message), also across a restart of the bridge (a device online when the bridge
/// stopped counts as offline from the restart until it comes back); one that comes back in
/// time keeps it (review L5).
#[test]
fn a_device_offline_long_enough_has_its_document_cleared() {
    let cleared = |s: &Sim, id: &str| {
        s.e.queue()
            .outbox(1_000)
            .unwrap()
            .into_iter()
            .any(|(_, o)| o.subtopic == format!("devices/{id}") && o.retain && o.payload.is_empty())
    };
    let mut s = Sim::new();
    s.e.set_forget_after(Duration::from_secs(60));
    s.up(LINK, hello(), 4);
    s.up(2, hello_of("dev-2"), 4);
    s.down(LINK);
    s.turn();
    s.now += 30_000;
    s.turn();
    // dev-2 is online when the bridge stops.
    s.restart();
    s.e.set_forget_after(Duration::from_secs(60));
    s.turn();
    s.now += 29_000;
    s.turn();
    assert!(!cleared(&s, "dev-1"), "cleared before its time");
    assert_eq!(
        s.e.poll_timeout(),
        Some(s.now + 1_000),
        "woken when it is due"
    );
    s.now += 1_000;
    s.turn();
    assert!(cleared(&s, "dev-1"));
    assert!(!cleared(&s, "dev-2"));
    // dev-2 comes back in time, and stays.
    s.now += 20_000;
    s.up(3, hello_of("dev-2"), 4);
    s.now += 120_000;
    s.turn();
    assert!(
        !cleared(&s, "dev-2"),
        "a device that came back was forgotten"
    );
    // Forgotten once: nothing is left to forget.
    assert!(
        s.e.queue()
            .offline()
            .values()
            .all(|&since| since == u64::MAX)
    );
}

/// The capability documents published since the last call, oldest first: (capability,
/// document or `None` for a clear).
fn capability_documents(s: &mut Sim) -> Vec<(String, Option<serde_json::Value>)> {
    publish(s)
        .into_iter()
        .filter_map(|o| {
            let name = o.subtopic.strip_prefix("capabilities/")?.to_owned();
            assert!(o.retain, "capability documents are retained");
            let doc = (!o.payload.is_empty()).then(|| serde_json::from_str(&o.payload).unwrap());
            Some((name, doc))
        })
        .collect()
}

/// (device id, free) of a capability document.
fn listed(doc: &serde_json::Value) -> Vec<(String, u64)> {
    doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap().to_owned(),
                d["free"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn capability_documents_follow_devices_at_once_and_their_free_slots_at_most_each_second() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    let docs = capability_documents(&mut s);
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].0, "echo");
    let doc = docs[0].1.as_ref().unwrap();
    assert_eq!(listed(doc), [("dev-1".to_owned(), 4)]);
    assert_eq!(doc["free"], 4);
    assert_eq!(doc["devices"][0]["slots"], 4);
    // A second device: published in the same turn.
    s.up(2, hello_of("dev-2"), 4);
    let docs = capability_documents(&mut s);
    assert_eq!(docs.len(), 1);
    assert_eq!(
        listed(docs[0].1.as_ref().unwrap()),
        [("dev-1".to_owned(), 4), ("dev-2".to_owned(), 4)]
    );
    // A task takes a slot: within a second of the last document, the change waits.
    s.now += 10;
    s.submit(r#"{"id":"t1","capability":"echo"}"#);
    s.turn();
    assert!(
        capability_documents(&mut s).is_empty(),
        "published too soon"
    );
    let last = s.now - 10;
    assert_eq!(s.e.poll_timeout(), Some(last + discovery::SLOTS_EVERY_MS));
    s.now = last + discovery::SLOTS_EVERY_MS;
    s.turn();
    let docs = capability_documents(&mut s);
    assert_eq!(docs.len(), 1);
    let doc = docs[0].1.as_ref().unwrap();
    assert_eq!(doc["free"], 7, "{doc}");
    // Only the task's lease is left to wake for.
    let lease = s.task("t1").unwrap().lease_until_ms;
    assert_eq!(s.e.poll_timeout(), lease, "nothing more to publish");
    // Nothing changed: nothing published.
    s.now += 5_000;
    s.turn();
    assert!(capability_documents(&mut s).is_empty());
    // A device leaving is published at once; the last one leaving clears the document.
    s.down(2);
    s.turn();
    let docs = capability_documents(&mut s);
    assert_eq!(docs.len(), 1);
    assert_eq!(listed(docs[0].1.as_ref().unwrap()).len(), 1);
    s.down(LINK);
    s.turn();
    assert_eq!(capability_documents(&mut s), [("echo".to_owned(), None)]);
}

/// While the broker is away, documents that change replace each other in the outbox: one per
/// topic waits, the newest.
#[test]
fn capability_documents_do_not_pile_up_while_unpublished() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    for i in 0..20 {
        s.submit(&format!(r#"{{"id":"t{i}","capability":"echo"}}"#));
        s.now += discovery::SLOTS_EVERY_MS;
        s.turn();
        s.credit(LINK, 4);
    }
    s.turn();
    let waiting =
        s.e.queue()
            .outbox(10_000)
            .unwrap()
            .into_iter()
            .filter(|(_, o)| o.subtopic == "capabilities/echo")
            .count();
    assert_eq!(waiting, 1);
}

#[test]
fn a_restart_clears_the_capability_documents_of_devices_not_back() {
    let mut s = Sim::new();
    s.up(LINK, hello(), 4);
    let mut other = hello_of("dev-2");
    other.capabilities = heapless::Vec::from_slice(&["crc32".try_into().unwrap()]).unwrap();
    s.up(2, other, 4);
    s.events();
    assert!(
        capability_documents(&mut s).is_empty(),
        "forgotten once acknowledged"
    );
    s.restart();
    // dev-1 is back in the first turn; dev-2 is not.
    s.up(3, hello(), 4);
    let docs = capability_documents(&mut s);
    assert!(docs.contains(&("crc32".to_owned(), None)), "{docs:?}");
    let echo: Vec<_> = docs.iter().filter(|(n, _)| n == "echo").collect();
    assert_eq!(echo.len(), 1, "{docs:?}");
    assert_eq!(
        listed(echo[0].1.as_ref().unwrap()),
        [("dev-1".to_owned(), 4)]
    );
    // Cleared once: not again at the next start.
    s.events();
    s.restart();
    s.turn();
    assert!(!capability_documents(&mut s).contains(&("crc32".to_owned(), None)));
}

#[test]
fn a_capability_name_that_is_no_topic_level_gets_no_document() {
    let mut s = Sim::new();
    let mut h = hello();
    h.capabilities =
        heapless::Vec::from_slice(&["a/#".try_into().unwrap(), "ok".try_into().unwrap()]).unwrap();
    s.up(LINK, h, 1);
    let names: Vec<String> = capability_documents(&mut s)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["ok"]);
}

/// The waiting reason of task `id`, as a query answers it.
fn why(s: &Sim, id: &str) -> crate::api::Waiting {
    let query = crate::api::Query {
        reply: "r".into(),
        id: Some(id.into()),
        limit: 1,
    };
    let answer = s.e.answer_query(&query, s.now()).unwrap();
    assert_eq!(answer.tasks.len(), 1, "{answer:?}");
    answer.tasks[0].waiting.clone()
}

#[test]
fn a_query_says_why_each_task_waits() {
    use crate::api::WaitCode;
    let mut s = Sim::new();
    with_bus(&mut s, ResourcePolicy::default());
    let mut one_slot = hello();
    one_slot.slots = 1;
    one_slot.max_payload = 64;
    s.up(LINK, one_slot, 1);
    s.submit(r#"{"id":"runs","capability":"echo","resources":["bus"]}"#);
    s.turn();
    s.submit(r#"{"id":"busy","capability":"echo"}"#);
    s.submit(r#"{"id":"nobody","capability":"sensor.read"}"#);
    s.submit(r#"{"id":"named","capability":"echo","device":"dev-9"}"#);
    s.submit(r#"{"id":"lock","capability":"echo","locks":["spi9"]}"#);
    let big = "x".repeat(100);
    s.submit(&format!(
        r#"{{"id":"big","capability":"echo","payload":"{big}"}}"#
    ));
    s.submit(r#"{"id":"bus","capability":"echo","resources":["bus"]}"#);
    s.turn();
    assert_eq!(why(&s, "runs").code, WaitCode::OnDevice);
    assert_eq!(why(&s, "runs").message, "dispatched on dev-1");
    let w = why(&s, "busy");
    assert_eq!(w.code, WaitCode::DevicesBusy, "{w:?}");
    assert!(w.message.contains("dev-1"), "{}", w.message);
    let w = why(&s, "nobody");
    assert_eq!(w.code, WaitCode::NoDevice);
    assert!(w.message.contains("sensor.read"), "{}", w.message);
    let w = why(&s, "named");
    assert_eq!(w.code, WaitCode::DeviceOffline);
    assert!(w.message.contains("dev-9"), "{}", w.message);
    let w = why(&s, "lock");
    assert_eq!(w.code, WaitCode::NoLock);
    assert!(w.message.contains("spi9"), "{}", w.message);
    let w = why(&s, "big");
    assert_eq!(w.code, WaitCode::PayloadTooLarge);
    assert!(w.message.contains("at most 64 bytes"), "{}", w.message);
    let w = why(&s, "bus");
    assert_eq!(w.code, WaitCode::Resource);
    assert_eq!(w.message, "resource bus is held by task runs");

    // A transient failure: the retry delay, with the time it ends.
    let handle = s.task("runs").unwrap().handle();
    s.report(LINK, handle, TaskReport::Failed, Some(TRANSIENT_ERROR));
    s.turn();
    let w = why(&s, "runs");
    assert_eq!(w.code, WaitCode::RetryBackoff, "{w:?}");
    let wake = s.e.poll_timeout().unwrap();
    let until_wall = s.now().wall_ms + (wake - s.now);
    assert!(
        w.until_ms
            .is_some_and(|u| u <= until_wall && u > s.now().wall_ms),
        "{w:?}"
    );

    // The device goes away with a task: it waits for it until the grace period ends.
    s.credit(LINK, 1);
    s.turn();
    let on: Vec<String> =
        s.e.queue()
            .live()
            .into_iter()
            .filter(|t| t.state.is_on_device())
            .map(|t| t.sub.id.clone())
            .collect();
    assert_eq!(on.len(), 1, "the freed slot is taken");
    let on = &on[0];
    s.down(LINK);
    s.turn();
    let w = why(&s, on);
    assert_eq!(w.code, WaitCode::DeviceAway, "{w:?}");
    assert!(w.until_ms.is_some());

    // Finished and unknown tasks.
    let ticket = s.ticket();
    s.e.handle_cancel("nobody", ticket, s.now()).unwrap();
    s.turn();
    let query = |id: &str| crate::api::Query {
        reply: "r".into(),
        id: Some(id.into()),
        limit: 1,
    };
    let answer = s.e.answer_query(&query("nobody"), s.now()).unwrap();
    assert!(answer.tasks.is_empty());
    assert_eq!(answer.finished.unwrap().state, TaskState::Cancelled);
    let answer = s.e.answer_query(&query("never"), s.now()).unwrap();
    assert_eq!(answer.error.unwrap().code, ErrorCode::UnknownTask);
}

#[test]
fn a_query_says_when_free_slots_are_kept_for_urgent_work() {
    use crate::api::WaitCode;
    let mut s = Sim::new();
    s.e.set_urgency(Urgency::default());
    s.up(LINK, hello(), 4);
    for i in 0..4 {
        s.submit(&format!(
            r#"{{"id":"low-{i}","capability":"echo","priority":4}}"#
        ));
    }
    s.turn();
    let w = why(&s, "low-3");
    assert_eq!(w.code, WaitCode::ReservedForUrgent, "{w:?}");
}

#[test]
fn a_query_lists_tasks_on_devices_first_then_in_dispatch_order_up_to_its_limit() {
    let mut s = Sim::new();
    let mut one_slot = hello();
    one_slot.slots = 1;
    s.up(LINK, one_slot, 1);
    s.submit(r#"{"id":"first","capability":"echo","priority":5}"#);
    s.turn();
    for (id, p) in [("p3", 3), ("p1", 1), ("p4", 4), ("p1b", 1), ("p0", 0)] {
        s.submit(&format!(
            r#"{{"id":"{id}","capability":"echo","priority":{p}}}"#
        ));
    }
    s.turn();
    let query = |limit| crate::api::Query {
        reply: "r".into(),
        id: None,
        limit,
    };
    let ids = |limit| -> Vec<String> {
        let answer = s.e.answer_query(&query(limit), s.now()).unwrap();
        assert_eq!(answer.live, 6);
        answer.tasks.into_iter().map(|t| t.id).collect()
    };
    assert_eq!(ids(100), ["first", "p0", "p1", "p1b", "p3", "p4"]);
    assert_eq!(ids(3), ["first", "p0", "p1"]);
    assert_eq!(ids(1), ["first"]);
}

#[test]
fn a_capability_offered_by_many_devices_lists_those_with_the_most_room() {
    let mut s = Sim::new();
    let n = crate::api::MAX_LISTED + 44;
    for i in 0..n {
        // Every fourth device has no free slot.
        let credit = if i % 4 == 0 { 0 } else { 2 };
        s.up(10 + i as LinkId, hello_of(&format!("d{i:03}")), credit);
    }
    let docs = capability_documents(&mut s);
    let (_, doc) = docs.last().unwrap();
    let doc = doc.as_ref().unwrap();
    assert_eq!(doc["online"], n);
    assert_eq!(doc["free"], 2 * (n - n.div_ceil(4)));
    let listed = listed(doc);
    assert_eq!(listed.len(), crate::api::MAX_LISTED);
    // Every device with room is listed; full ones fill the rest of the list.
    assert_eq!(
        listed.iter().filter(|(_, free)| *free == 2).count(),
        n - n.div_ceil(4)
    );
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "listed by id");
    let size = doc.to_string().len();
    assert!(size < 32 * 1024, "{size} bytes");
}

#[test]
fn queries_beyond_the_budget_of_a_second_are_told_to_ask_again() {
    let mut s = Sim::new();
    let now = s.now();
    let mut refused = 0;
    for i in 0..query::QUERIES_PER_SECOND + 5 {
        let q = format!(r#"{{"reply":"r{i}"}}"#);
        let (topic, answer) = s.e.handle_query(q.as_bytes(), now).unwrap().unwrap();
        assert_eq!(topic, format!("query/replies/r{i}"));
        let answer: crate::api::QueryAnswer = serde_json::from_str(&answer).unwrap();
        if let Some(e) = answer.error {
            assert_eq!(e.code, ErrorCode::TooManyQueries);
            refused += 1;
        }
    }
    assert_eq!(refused, 5);
    s.now += 1_000;
    let now = s.now();
    let (_, answer) = s.e.handle_query(br#"{"reply":"r"}"#, now).unwrap().unwrap();
    assert!(!answer.contains("too_many_queries"), "{answer}");
}

#[test]
fn a_long_list_is_cut_to_the_answer_limit_and_says_so() {
    let mut s = Sim::new();
    for i in 0..50 {
        s.submit(&format!(
            r#"{{"id":"task-{i:02}","capability":"nowhere","trace_id":"trace-{i}"}}"#
        ));
    }
    s.turn();
    s.e.set_answer_limit(2_000);
    let (_, json) =
        s.e.handle_query(br#"{"reply":"r"}"#, s.now())
            .unwrap()
            .unwrap();
    assert!(json.len() <= 2_000, "{} bytes", json.len());
    let answer: crate::api::QueryAnswer = serde_json::from_str(&json).unwrap();
    assert!(answer.truncated);
    assert_eq!(answer.live, 50);
    assert!(!answer.tasks.is_empty() && answer.tasks.len() < 50);
    assert_eq!(answer.tasks[0].id, "task-00", "in dispatch order");
    // With room, all of them.
    s.e.set_answer_limit(64 * 1024);
    s.now += 1_000;
    let (_, json) =
        s.e.handle_query(br#"{"reply":"r"}"#, s.now())
            .unwrap()
            .unwrap();
    let answer: crate::api::QueryAnswer = serde_json::from_str(&json).unwrap();
    assert!(!answer.truncated);
    assert_eq!(answer.tasks.len(), 50);
}

#[test]
fn a_query_about_a_named_device_says_what_dispatch_will_do() {
    use crate::api::WaitCode;
    let mut s = Sim::new();
    let mut full = hello();
    full.slots = 1;
    s.up(LINK, full, 1);
    s.submit(r#"{"id":"fills","capability":"echo"}"#);
    s.turn();
    s.submit(r#"{"id":"other-cap","capability":"crc32","device":"dev-1"}"#);
    s.submit(r#"{"id":"no-lock","capability":"echo","device":"dev-1","locks":["spi9"]}"#);
    s.turn();
    let w = why(&s, "other-cap");
    assert_eq!(w.code, WaitCode::DeviceLacksCapability, "{w:?}");
    assert!(w.message.contains("does not offer crc32"), "{}", w.message);
    let w = why(&s, "no-lock");
    assert_eq!(w.code, WaitCode::NoLock, "{w:?}");
    assert!(w.message.contains("the task is rejected"), "{}", w.message);
    // And so it is, once the device has room.
    let handle = s.task("fills").unwrap().handle();
    s.report(LINK, handle, TaskReport::Completed, None);
    s.credit(LINK, 1);
    s.turn();
    assert!(s.task("no-lock").is_none(), "rejected, as the answer said");
}

#[test]
fn a_query_without_a_reply_level_is_refused_on_the_errors_topic_without_storing_it() {
    let mut s = Sim::new();
    let before = s.e.queue().outbox_len();
    let (topic, json) =
        s.e.handle_query(br#"{"id":"x"}"#, s.now())
            .unwrap()
            .unwrap();
    assert_eq!(topic, "errors");
    assert!(json.contains("invalid_query"), "{json}");
    s.turn();
    assert_eq!(s.e.queue().outbox_len(), before, "stored in the outbox");
}

// ----- metrics -----

/// The metrics snapshot: a task's wait is observed once, at its first dispatch (a refused
/// `Assign` does not count it again), in its priority's histogram; the queue's depth and its
/// oldest task's age follow the queue; finished tasks are counted by state, rejected
/// submissions included; the device shows its slots, tasks and credit.
#[test]
fn metrics_count_first_dispatches_queued_tasks_and_terminal_states() {
    let mut s = Sim::new();
    s.submit(r#"{"id":"a","capability":"echo","priority":2}"#);
    s.now += 30;
    s.submit(r#"{"id":"b","capability":"echo","priority":4}"#);
    s.submit(r#"{"id":"c","capability":"echo","priority":4}"#);
    s.submit("not json");
    s.turn();
    let m = s.e.metrics(s.now());
    assert_eq!(m.queued, [0, 0, 1, 0, 2, 0]);
    assert_eq!(m.oldest_queued_ms, Some(30), "a waited 30 ms");
    assert_eq!(m.finished.get(TaskState::Rejected), 1);
    assert!(m.devices.is_empty());

    s.now += 20;
    let h = assigns(&s.up(LINK, hello(), 1), LINK)[0].handle;
    assert_eq!(s.task("a").unwrap().state, TaskState::Dispatched);
    let m = s.e.metrics(s.now());
    assert_eq!(m.dispatch_waits[2].count(), 1);
    assert_eq!(
        m.dispatch_waits[2].sum_ms(),
        50,
        "accepted at 1000, dispatched at 1050"
    );
    assert_eq!(m.queued, [0, 0, 0, 0, 2, 0]);
    assert_eq!(m.oldest_queued_ms, Some(20), "b and c waited 20 ms");
    let dev = &m.devices[..];
    assert_eq!(dev.len(), 1);
    assert_eq!(dev[0].id, "dev-1");
    let load = dev[0].online.expect("online");
    assert_eq!((load.slots, load.in_flight, load.credit), (4, 1, 0));

    // Refused, and dispatched again: still one observation.
    s.link(LINK, LinkInput::Refused { handle: h });
    s.credit(LINK, 1);
    s.turn();
    assert_eq!(s.task("a").unwrap().state, TaskState::Dispatched);
    assert_eq!(s.e.metrics(s.now()).dispatch_waits[2].count(), 1);

    s.report(LINK, h, TaskReport::Completed, None);
    s.credit(LINK, 1);
    let ticket = s.ticket();
    s.e.handle_cancel("b", ticket, s.now()).unwrap();
    s.turn();
    let m = s.e.metrics(s.now());
    assert_eq!(m.finished.get(TaskState::Completed), 1);
    assert_eq!(m.finished.get(TaskState::Cancelled), 1);
    // c took the freed slot.
    assert_eq!(m.dispatch_waits[4].count(), 1);
    assert_eq!(m.live, 1);
    assert_eq!(m.oldest_queued_ms, None);

    s.down(LINK);
    s.turn();
    let m = s.e.metrics(s.now());
    assert_eq!(m.devices.len(), 1);
    assert_eq!(
        (m.devices[0].id.as_str(), m.devices[0].online),
        ("dev-1", None)
    );
}

/// `reserved` in a capability document is the reserve still free, as dispatch counts it: an
/// urgent task on the device holds its reserved slot.
#[test]
fn a_capability_document_counts_the_reserve_urgent_tasks_hold() {
    let mut s = Sim::new();
    s.e.set_urgency(Urgency::default());
    s.up(LINK, hello(), 4);
    let docs = capability_documents(&mut s);
    assert_eq!(docs[0].1.as_ref().unwrap()["devices"][0]["reserved"], 1);
    s.submit(r#"{"id":"urgent","capability":"echo","priority":0}"#);
    s.now += discovery::SLOTS_EVERY_MS;
    s.turn();
    let docs = capability_documents(&mut s);
    let doc = docs.last().unwrap().1.as_ref().unwrap();
    assert_eq!(doc["devices"][0]["in_flight"], 1, "{doc}");
    assert_eq!(doc["devices"][0]["reserved"], 0, "{doc}");
}
