use super::*;
use device_core::Priority;
use std::path::Path;

fn sub(id: &str, priority: Priority, deadline_ms: Option<u64>) -> Submission {
    Submission {
        id: id.into(),
        capability: "echo".into(),
        device: None,
        priority,
        deadline_ms,
        timeout_ms: None,
        payload: "null".into(),
        locks: vec![],
        resources: vec![],
        trace_id: Some(format!("tr-{id}")),
    }
}

/// The states of the outbox's status events, in order, as (id, state).
fn events(q: &mut Queue) -> Vec<(String, TaskState)> {
    q.commit().unwrap();
    q.outbox(1000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| {
            let ev: StatusEvent = serde_json::from_str(&e.payload).unwrap();
            assert_eq!(e.subtopic, format!("tasks/{}/status", ev.id));
            (ev.id, ev.state)
        })
        .collect()
}

fn drain(q: &mut Queue) -> Vec<(String, TaskState)> {
    let ev = events(q);
    let keys: Vec<u64> = q
        .outbox(1000)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    q.published(&keys);
    q.commit().unwrap();
    ev
}

fn ids<T: std::ops::Deref<Target = TaskRecord>>(it: impl IntoIterator<Item = T>) -> Vec<String> {
    it.into_iter().map(|t| t.sub.id.clone()).collect()
}

/// The ids of a lane's tasks, in its order, read through the queue.
fn lane_ids<'a>(q: &Queue, it: impl Iterator<Item = Queued<'a>>) -> Vec<String> {
    it.map(|t| q.id_of(t.seq()).expect("a queued task's id"))
        .collect()
}

#[test]
fn accepted_tasks_are_queued_with_an_event_and_ordered_for_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 100).unwrap();
    let out = q
        .submit(
            vec![
                sub("late", Priority::P2, Some(9000)),
                sub("none", Priority::P2, None),
                sub("early", Priority::P2, Some(1000)),
                sub("urgent", Priority::P0, None),
                sub("low", Priority::P5, Some(1)),
            ],
            Now::at(10),
        )
        .unwrap();
    assert!(out.iter().all(|a| *a == Admission::Queued));
    assert_eq!(ids(q.ready()), ["urgent", "early", "late", "none", "low"]);
    assert_eq!(events(&mut q).len(), 5);
    assert!(events(&mut q).iter().all(|(_, s)| *s == TaskState::Queued));
    assert_eq!(q.get("early").unwrap().deadline_at_ms, Some(1010));
}

#[test]
fn resubmitting_an_id_never_creates_a_second_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 100).unwrap();
    let out = q
        .submit(
            vec![
                sub("a", Priority::P3, None),
                sub("a", Priority::P3, None),
                sub("a", Priority::P0, None),
            ],
            Now::at(0),
        )
        .unwrap();
    assert_eq!(
        out,
        [
            Admission::Queued,
            Admission::Duplicate(TaskState::Queued),
            Admission::Rejected(ErrorCode::IdConflict)
        ],
        "the same submission again is a duplicate; other content under its id a conflict"
    );
    assert_eq!(q.len(), 1);
    assert_eq!(
        q.get("a").unwrap().sub.priority,
        Priority::P3,
        "the first submission wins"
    );
    q.commit().unwrap();
    let conflict = q
        .outbox(100)
        .unwrap()
        .into_iter()
        .find(|(_, e)| e.subtopic == "errors")
        .expect("the conflict is answered on errors");
    assert!(
        conflict.1.payload.contains("id_conflict"),
        "{}",
        conflict.1.payload
    );
    q.published(&[conflict.0]);
    drain(&mut q);
    // Live duplicate: its current state is published again.
    q.apply(
        vec![Change::Dispatched {
            id: "a".into(),
            device: "d1".into(),
            boot: 1,
            lease_until_ms: u64::MAX,
        }],
        Now::at(1),
    );
    q.commit().unwrap();
    drain(&mut q);
    assert_eq!(
        q.submit(vec![sub("a", Priority::P3, None)], Now::at(2))
            .unwrap(),
        [Admission::Duplicate(TaskState::Dispatched)]
    );
    assert_eq!(drain(&mut q), [("a".into(), TaskState::Dispatched)]);
    // Finished duplicate: its final event, result included, is published again.
    let result = Some(serde_json::json!({"v": 1}));
    q.apply(
        vec![Change::Finished {
            id: "a".into(),
            state: TaskState::Completed,
            result: result.clone(),
            error: None,
        }],
        Now::at(3),
    );
    q.commit().unwrap();
    drain(&mut q);
    assert_eq!(
        q.submit(vec![sub("a", Priority::P3, None)], Now::at(4))
            .unwrap(),
        [Admission::Duplicate(TaskState::Completed)]
    );
    q.commit().unwrap();
    let (_, e) = q.outbox(1).unwrap().remove(0);
    let ev: StatusEvent = serde_json::from_str(&e.payload).unwrap();
    assert_eq!((ev.state, ev.result), (TaskState::Completed, result));
    assert!(q.is_empty());
}

#[test]
fn a_full_queue_rejects_with_an_event_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 2).unwrap();
    let out = q
        .submit(
            vec![
                sub("a", Priority::P3, None),
                sub("b", Priority::P3, None),
                sub("c", Priority::P3, None),
            ],
            Now::at(0),
        )
        .unwrap();
    assert_eq!(out[2], Admission::Rejected(ErrorCode::QueueFull));
    assert_eq!(q.len(), 2);
    q.commit().unwrap();
    let (_, e) = q.outbox(10).unwrap().pop().unwrap();
    let ev: StatusEvent = serde_json::from_str(&e.payload).unwrap();
    assert_eq!(ev.state, TaskState::Rejected);
    assert_eq!(ev.error.unwrap().code, ErrorCode::QueueFull);
    // Room again after one finishes; the rejected id may be submitted anew.
    q.apply(
        vec![Change::Finished {
            id: "a".into(),
            state: TaskState::Cancelled,
            result: None,
            error: None,
        }],
        Now::at(1),
    );
    q.commit().unwrap();
    assert_eq!(
        q.submit(vec![sub("c", Priority::P3, None)], Now::at(2))
            .unwrap(),
        [Admission::Queued]
    );
}

#[test]
fn a_task_goes_through_its_states_each_with_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 10).unwrap();
    q.submit(vec![sub("t", Priority::P3, None)], Now::at(0))
        .unwrap();
    q.apply(
        vec![
            Change::Dispatched {
                id: "t".into(),
                device: "d1".into(),
                boot: 1,
                lease_until_ms: u64::MAX,
            },
            Change::Running { id: "t".into() },
        ],
        Now::at(1),
    );
    q.commit().unwrap();
    assert!(q.ready().is_empty());
    assert_eq!(ids(q.on_device("d1")), ["t"]);
    // The device is lost: back to the queue, dispatched again as attempt 2 elsewhere.
    q.apply(
        vec![Change::Requeue {
            id: "t".into(),
            not_before_ms: 500,
        }],
        Now::at(2),
    );
    q.commit().unwrap();
    assert_eq!(ids(q.ready()), ["t"]);
    assert_eq!(q.get("t").unwrap().not_before_ms, 500);
    q.apply(
        vec![Change::Dispatched {
            id: "t".into(),
            device: "d2".into(),
            boot: 1,
            lease_until_ms: u64::MAX,
        }],
        Now::at(3),
    );
    q.commit().unwrap();
    assert_eq!(q.get("t").unwrap().attempt, 2);
    let skipped = q.apply(
        vec![
            Change::Finished {
                id: "t".into(),
                state: TaskState::Completed,
                result: None,
                error: None,
            },
            Change::Running { id: "t".into() },
            Change::Running { id: "ghost".into() },
        ],
        Now::at(4),
    );
    assert_eq!(
        skipped.len(),
        2,
        "changes after the end, and to unknown ids, are skipped"
    );
    let states: Vec<TaskState> = drain(&mut q).into_iter().map(|e| e.1).collect();
    use TaskState::*;
    assert_eq!(states, [Queued, Dispatched, Running, Dispatched, Completed]);
}

#[test]
fn everything_survives_a_reopen_and_tasks_on_devices_stay_there() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, first_keys) = {
        let mut q = Queue::open(dir.path(), 10).unwrap();
        q.submit(
            vec![sub("a", Priority::P3, None), sub("b", Priority::P1, None)],
            Now::at(0),
        )
        .unwrap();
        q.apply(
            vec![Change::Dispatched {
                id: "a".into(),
                device: "d1".into(),
                boot: 1,
                lease_until_ms: u64::MAX,
            }],
            Now::at(1),
        );
        q.commit().unwrap();
        let keys: Vec<u64> = q.outbox(10).unwrap().iter().map(|e| e.0).collect();
        q.published(&keys[..1]);
        q.commit().unwrap();
        (q.get("a").unwrap().handle(), keys)
    };
    let mut q = Queue::open(dir.path(), 10).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(ids(q.ready()), ["b"]);
    assert_eq!(
        ids(q.on_device("d1")),
        ["a"],
        "the dispatched task stays on its device"
    );
    assert_eq!(
        q.get("a").unwrap().handle(),
        handle,
        "same handle: the device's dedup applies"
    );
    assert_eq!(q.get("a").unwrap().attempt, 1);
    let keys: Vec<u64> = q.outbox(10).unwrap().iter().map(|e| e.0).collect();
    assert_eq!(
        keys,
        first_keys[1..],
        "only the unacknowledged events remain, in order"
    );
    // Counters continue: new keys and handles are never reused.
    q.submit(vec![sub("c", Priority::P3, None)], Now::at(2))
        .unwrap();
    q.commit().unwrap();
    assert!(q.get("c").unwrap().seq > q.get("b").unwrap().seq);
    assert!(q.outbox(10).unwrap().last().unwrap().0 > *keys.last().unwrap());
}

#[test]
fn events_without_a_task_go_through_the_outbox_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 10).unwrap();
    q.notify(OutboxEntry {
        subtopic: "errors".into(),
        payload: "{}".into(),
        retain: false,
    });
    q.commit().unwrap();
    let out = q.outbox(10).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.subtopic, "errors");
}

#[test]
fn indexes_follow_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 10).unwrap();
    let mut named = sub("named", Priority::P1, None);
    named.device = Some("d2".into());
    let mut other = sub("other", Priority::P2, Some(50));
    other.capability = "sleep".into();
    q.submit(
        vec![
            sub("a", Priority::P3, Some(100)),
            sub("b", Priority::P0, None),
            named,
            other,
        ],
        Now::at(0),
    )
    .unwrap();
    type LaneIds<'a> = ((&'a str, Option<&'a str>, usize), Vec<String>);
    let lanes: Vec<LaneIds<'_>> = q
        .lanes()
        .map(|(l, ts): (&Lane, _)| {
            (
                (l.capability.as_str(), l.device.as_deref(), l.class),
                lane_ids(&q, ts),
            )
        })
        .collect();
    assert_eq!(
        lanes,
        [
            (("echo", None, 0), vec!["b".to_owned()]),
            (("echo", None, 1), vec!["a".to_owned()]),
            (("echo", Some("d2"), 0), vec!["named".to_owned()]),
            (("sleep", None, 1), vec!["other".to_owned()]),
        ]
    );
    assert_eq!(q.depth(), [1, 1, 1, 1, 0, 0]);
    assert_eq!(q.overdue(49).len(), 0);
    assert_eq!(q.overdue(100), ["other", "a"]);
    assert_eq!(q.next_timer(0), Some(50));
    assert_eq!(q.next_timer(50), Some(100));
    assert_eq!(q.next_timer(100), None);

    q.apply(
        vec![
            Change::Dispatched {
                id: "a".into(),
                device: "d1".into(),
                boot: 1,
                lease_until_ms: u64::MAX,
            },
            Change::Dispatched {
                id: "b".into(),
                device: "d1".into(),
                boot: 1,
                lease_until_ms: u64::MAX,
            },
        ],
        Now::at(1),
    );
    assert_eq!(q.in_flight("d1"), 2);
    assert_eq!(q.depth(), [0, 1, 1, 0, 0, 0]);
    assert_eq!(
        q.next_timer(0),
        Some(50),
        "a dispatched task's deadline no longer counts"
    );
    assert_eq!(q.lanes().count(), 2, "emptied lanes are dropped");
    q.apply(
        vec![
            Change::Requeue {
                id: "a".into(),
                not_before_ms: 70,
            },
            Change::Finished {
                id: "b".into(),
                state: TaskState::Completed,
                result: None,
                error: None,
            },
        ],
        Now::at(2),
    );
    assert_eq!(q.in_flight("d1"), 0);
    assert_eq!(q.depth(), [0, 1, 1, 1, 0, 0]);
    assert_eq!(
        q.next_timer(60),
        Some(70),
        "a retry delay wakes the dispatcher"
    );
    assert!(q.by_handle(1).is_some() && q.by_handle(2).is_none());
}

#[test]
fn staged_changes_reach_the_outbox_and_the_disk_only_with_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut q = Queue::open(dir.path(), 10).unwrap();
        q.submit(vec![sub("kept", Priority::P3, None)], Now::at(0))
            .unwrap();
        q.commit().unwrap();
        q.submit(vec![sub("lost", Priority::P3, None)], Now::at(1))
            .unwrap();
        assert!(q.has_pending());
        assert_eq!(
            q.outbox(10).unwrap().len(),
            1,
            "an uncommitted event is visible"
        );
    }
    let mut q = Queue::open(dir.path(), 10).unwrap();
    assert_eq!(ids(q.ready()), ["kept"]);
    assert_eq!(events(&mut q), [("kept".into(), TaskState::Queued)]);
}

#[test]
fn a_queue_that_cannot_open_its_database_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Queue::open(dir.path(), 10).unwrap();
    // A second bridge on the same data directory.
    let Err(e) = Queue::open(dir.path(), 10) else {
        panic!("the database was opened twice");
    };
    assert!(matches!(e, QueueError::Open { .. }), "{e}");
    let text = e.to_string();
    let file = dir.path().join("queue.redb");
    assert!(
        text.starts_with(&format!("queue database: {}: ", file.display())),
        "{text}"
    );
    assert!(std::error::Error::source(&e).is_some());

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let Err(e) = Queue::open(&blocker.join("queue"), 10) else {
        panic!("a directory was created under a file");
    };
    assert!(matches!(e, QueueError::Dir { .. }), "{e}");
    assert!(e.to_string().contains("a-file"), "{e}");
}

/// Generated ids are unique (a durable counter) and unguessable (64 random bits): two in a row
/// share no random part, and the counter goes on after a restart.
#[test]
fn generated_ids_count_on_across_restarts_and_carry_random_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let mut q = Queue::open(dir.path(), 10).unwrap();
        let ids = (q.generate_id(), q.generate_id());
        q.submit(vec![sub(&ids.0, Priority::P3, None)], Now::at(0))
            .unwrap();
        q.commit().unwrap();
        ids
    };
    let parts = |id: &str| -> (u64, String) {
        let mut p = id.splitn(3, '-');
        assert_eq!(p.next(), Some("gen"), "{id}");
        let n = u64::from_str_radix(p.next().unwrap(), 16).unwrap();
        let r = p.next().unwrap().to_owned();
        assert_eq!(r.len(), 16, "{id}");
        (n, r)
    };
    let (na, ra) = parts(&a);
    let (nb, rb) = parts(&b);
    assert_eq!(nb, na + 1);
    assert_ne!(ra, rb, "the random parts differ");
    let mut q = Queue::open(dir.path(), 10).unwrap();
    let (nc, _) = parts(&q.generate_id());
    assert_eq!(nc, nb + 1, "the counter was committed with the submission");
}

/// The broker was down while P4 work ran: its events wait in the outbox. A P0 task arrives and
/// runs; its events are read (and so published) before the P4 backlog, and every task's own
/// events keep their order.
#[test]
fn a_p0_tasks_events_leave_the_outbox_before_a_p4_backlog_and_each_task_keeps_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 100).unwrap();
    let low: Vec<Submission> = (0..5)
        .map(|i| sub(&format!("low-{i}"), Priority::P4, None))
        .collect();
    q.submit(low, Now::at(0)).unwrap();
    let dispatch = |id: &str| Change::Dispatched {
        id: id.into(),
        device: "d1".into(),
        boot: 1,
        lease_until_ms: u64::MAX,
    };
    q.apply(
        (0..5).map(|i| dispatch(&format!("low-{i}"))).collect(),
        Now::at(1),
    );
    q.commit().unwrap();
    q.notify(OutboxEntry {
        subtopic: "errors".into(),
        payload: "{}".into(),
        retain: false,
    });
    q.submit(vec![sub("urgent", Priority::P0, None)], Now::at(2))
        .unwrap();
    q.apply(
        vec![
            dispatch("urgent"),
            Change::Running {
                id: "urgent".into(),
            },
            Change::Finished {
                id: "urgent".into(),
                state: TaskState::Completed,
                result: None,
                error: None,
            },
            Change::Running { id: "low-0".into() },
        ],
        Now::at(3),
    );
    q.commit().unwrap();
    let order: Vec<(String, String)> = q
        .outbox(100)
        .unwrap()
        .into_iter()
        .map(|(_, e)| {
            let state = serde_json::from_str::<StatusEvent>(&e.payload)
                .map(|ev| format!("{:?}", ev.state))
                .unwrap_or_default();
            (e.subtopic, state)
        })
        .collect();
    let urgent = "tasks/urgent/status".to_owned();
    assert_eq!(
        order[..4],
        [
            (urgent.clone(), "Queued".to_owned()),
            (urgent.clone(), "Dispatched".to_owned()),
            (urgent.clone(), "Running".to_owned()),
            (urgent, "Completed".to_owned()),
        ],
        "the P0's events first: {order:#?}"
    );
    let low0: Vec<&str> = order
        .iter()
        .filter(|(t, _)| t == "tasks/low-0/status")
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(low0, ["Queued", "Dispatched", "Running"]);
    assert_eq!(
        order.last().unwrap().0,
        "errors",
        "answers to bad input wait behind task events: {order:#?}"
    );
}

/// The outbox at its bound: a new submission is rejected (`outbox_full`) and its rejection
/// is not stored but handed out to publish once; a duplicate's repeat is dropped and a flood
/// of bad input is not stored either (all counted as shed); the events of accepted work still
/// go in. Once the broker takes events, new work is accepted again.
#[test]
fn a_full_outbox_rejects_new_work_sheds_answers_and_still_takes_accepted_works_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 100).unwrap();
    q.set_outbox_limit(3);
    let subs = ["a", "b", "c"].map(|id| sub(id, Priority::P3, None));
    q.submit(subs.to_vec(), Now::at(0)).unwrap();
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 3);

    let out = q
        .submit(
            vec![sub("d", Priority::P0, None), sub("a", Priority::P3, None)],
            Now::at(1),
        )
        .unwrap();
    assert_eq!(
        out,
        [
            Admission::Rejected(ErrorCode::OutboxFull),
            Admission::Duplicate(TaskState::Queued)
        ]
    );
    for _ in 0..1000 {
        q.notify(OutboxEntry {
            subtopic: "errors".into(),
            payload: "{}".into(),
            retain: false,
        });
    }
    q.apply(
        vec![Change::Dispatched {
            id: "a".into(),
            device: "d1".into(),
            boot: 1,
            lease_until_ms: u64::MAX,
        }],
        Now::at(2),
    );
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 4, "only accepted work's event was stored");
    assert_eq!(q.outbox(100).unwrap().len(), 4);
    assert_eq!(q.shed(), 1002, "the repeat and the 1001 answers");
    let unstored = q.take_unstored();
    assert_eq!(unstored.len(), 1001, "the rejection and the errors entries");
    let rejection: StatusEvent = serde_json::from_str(&unstored[0].payload).unwrap();
    assert_eq!(rejection.id, "d");
    assert_eq!(rejection.error.unwrap().code, ErrorCode::OutboxFull);
    assert!(q.take_unstored().is_empty(), "handed out once");

    // The broker takes two events: room again.
    let keys: Vec<u64> = q.outbox(2).unwrap().iter().map(|e| e.0).collect();
    q.published(&keys);
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 2);
    assert_eq!(
        q.submit(vec![sub("d", Priority::P0, None)], Now::at(3))
            .unwrap(),
        [Admission::Queued]
    );
    // The depth survives a reopen.
    q.commit().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), 100).unwrap();
    assert_eq!(q.outbox_len(), 3);
}

/// A (nearly) full disk: new submissions are rejected with `storage_full`, their rejections
/// not stored; changes and events of accepted work are; once space returns, new work is
/// accepted.
#[test]
fn a_full_disk_rejects_new_work_but_records_accepted_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 100).unwrap();
    q.submit(vec![sub("a", Priority::P3, None)], Now::at(0))
        .unwrap();
    q.commit().unwrap();
    q.set_storage_full(true);
    assert_eq!(
        q.submit(vec![sub("b", Priority::P3, None)], Now::at(1))
            .unwrap(),
        [Admission::Rejected(ErrorCode::StorageFull)]
    );
    q.apply(
        vec![Change::Finished {
            id: "a".into(),
            state: TaskState::Completed,
            result: None,
            error: None,
        }],
        Now::at(2),
    );
    q.commit().unwrap();
    assert_eq!(
        events(&mut q),
        [
            ("a".to_owned(), TaskState::Queued),
            ("a".to_owned(), TaskState::Completed)
        ]
    );
    assert_eq!(q.take_unstored().len(), 1, "b's rejection, published once");
    q.set_storage_full(false);
    assert_eq!(
        q.submit(vec![sub("b", Priority::P3, None)], Now::at(3))
            .unwrap(),
        [Admission::Queued]
    );
}

/// The timer clock's anchor is committed with the queue: at once when the run sets it, then
/// advanced to the latest time a commit covered, so a restart continues the clock from there.
#[test]
fn the_timer_clocks_anchor_is_committed_with_the_latest_time_handled() {
    let dir = tempfile::tempdir().unwrap();
    let anchor = Anchor {
        boot: 7,
        clock_ms: 5_000,
        boot_ms: 1_000,
    };
    {
        let mut q = Queue::open(dir.path(), 10).unwrap();
        assert_eq!(q.stored_anchor(), None, "a new database has none");
        q.set_anchor(anchor);
        assert!(q.has_pending(), "the run's anchor is committed at once");
        q.commit().unwrap();
    }
    let mut q = Queue::open(dir.path(), 10).unwrap();
    assert_eq!(q.stored_anchor(), Some(anchor));
    q.set_anchor(anchor);
    q.commit().unwrap();
    q.submit(vec![sub("a", Priority::P3, Some(60_000))], Now::at(6_000))
        .unwrap();
    // A later time handled in the same batch (a dispatch turn with nothing to change).
    q.apply(vec![], Now::at(7_000));
    q.commit().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), 10).unwrap();
    let stored = q.stored_anchor().unwrap();
    assert_eq!(
        stored,
        Anchor {
            boot: 7,
            clock_ms: 7_000,
            boot_ms: 3_000
        },
        "the latest time the commit covered, the boot clock advanced with it"
    );
}

/// A quiet queue that holds tasks commits the anchor on its own every `KEEP_TIME_EVERY_MS`
/// (after a reboot, deadlines run late by at most that); an empty one does not write at all.
#[test]
fn a_quiet_queue_with_waiting_tasks_commits_the_anchor_every_minute_and_an_empty_one_never() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 10).unwrap();
    q.set_anchor(Anchor {
        boot: 7,
        clock_ms: 0,
        boot_ms: 0,
    });
    q.commit().unwrap();
    q.apply(vec![], Now::at(10 * KEEP_TIME_EVERY_MS));
    assert!(
        !q.has_pending(),
        "an empty queue has nothing to keep the time for"
    );
    q.submit(vec![sub("a", Priority::P3, Some(3_600_000))], Now::at(0))
        .unwrap();
    q.commit().unwrap();
    let committed = 10 * KEEP_TIME_EVERY_MS;
    q.apply(vec![], Now::at(committed + KEEP_TIME_EVERY_MS - 1));
    assert!(!q.has_pending(), "not due yet");
    q.apply(vec![], Now::at(committed + KEEP_TIME_EVERY_MS));
    assert!(q.has_pending(), "due a minute after the last commit");
    q.commit().unwrap();
    assert!(!q.has_pending());
    drop(q);
    let q = Queue::open(dir.path(), 10).unwrap();
    assert_eq!(
        q.stored_anchor().unwrap().clock_ms,
        committed + KEEP_TIME_EVERY_MS
    );
}

/// A retained document replaces the older one of its topic still in the outbox (the broker
/// keeps only the newest anyway), within a commit, across commits and across a reopen; other
/// topics and events are untouched.
#[test]
fn a_newer_retained_document_replaces_the_older_one_waiting_in_the_outbox() {
    let doc = |topic: &str, n: u32| OutboxEntry {
        subtopic: topic.into(),
        payload: format!("{{\"n\":{n}}}"),
        retain: true,
    };
    let retained = |q: &Queue| -> Vec<(String, String)> {
        q.outbox(1000)
            .unwrap()
            .into_iter()
            .filter(|(_, e)| e.retain)
            .map(|(_, e)| (e.subtopic, e.payload))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 100).unwrap();
    q.notify(doc("devices/a", 1));
    q.notify(doc("devices/a", 2));
    q.notify(doc("capabilities/echo", 1));
    q.commit().unwrap();
    assert_eq!(
        retained(&q),
        [
            ("devices/a".to_owned(), "{\"n\":2}".to_owned()),
            ("capabilities/echo".to_owned(), "{\"n\":1}".to_owned())
        ]
    );
    assert_eq!(q.outbox_len(), 2);
    q.notify(doc("capabilities/echo", 2));
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 2);
    // Published and removed: a newer document then removes nothing twice.
    let first = q.outbox(1).unwrap()[0].0;
    q.published(&[first]);
    q.commit().unwrap();
    q.notify(doc("devices/a", 3));
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 2);
    assert_eq!(
        retained(&q),
        [
            ("capabilities/echo".to_owned(), "{\"n\":2}".to_owned()),
            ("devices/a".to_owned(), "{\"n\":3}".to_owned())
        ]
    );
    drop(q);
    let mut q = Queue::open(dir.path(), 100).unwrap();
    q.notify(doc("devices/a", 4));
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 2);
    assert_eq!(
        retained(&q)[1],
        ("devices/a".to_owned(), "{\"n\":4}".to_owned())
    );
    // An outbox written without the record (an older version): several documents of a topic
    // wait; the first commit after the next open keeps only the newest.
    q.forget_retained_latest();
    q.notify(doc("devices/a", 5));
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 3);
    drop(q);
    let mut q = Queue::open(dir.path(), 100).unwrap();
    q.commit().unwrap();
    assert_eq!(q.outbox_len(), 2);
    assert_eq!(
        retained(&q)[1],
        ("devices/a".to_owned(), "{\"n\":5}".to_owned())
    );
}

/// `first_queued` lists what `ready` lists, in the same order, reading only what it lists:
/// lanes of several capabilities and devices, priorities, deadlines and retry delays mixed.
#[test]
fn the_first_queued_tasks_are_the_head_of_the_dispatch_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1_000).unwrap();
    let now = Now::at(1_000);
    let mut subs = Vec::new();
    for i in 0..60u64 {
        let p = Priority::from_level((i % 6) as u8).unwrap();
        let mut s = sub(&format!("t{i}"), p, (i % 4 == 0).then_some(10_000 - i * 10));
        s.capability = ["a", "b", "c"][(i % 3) as usize].into();
        if i % 5 == 0 {
            s.device = Some("d1".into());
        }
        subs.push(s);
    }
    q.submit(subs, now).unwrap();
    // Some wait out a retry delay.
    let delayed: Vec<Change> = ["t7", "t13", "t20"]
        .iter()
        .map(|id| Change::Requeue {
            id: (*id).to_owned(),
            not_before_ms: 50_000,
        })
        .collect();
    q.apply(delayed, now);
    q.commit().unwrap();
    let all: Vec<String> = ids(q.ready());
    assert_eq!(all.len(), 60);
    for limit in [0, 1, 7, 59, 60, 100] {
        let first: Vec<String> = ids(q.first_queued(limit));
        assert_eq!(first, all[..limit.min(60)], "limit {limit}");
    }
}

/// What the queue's in-memory view says of its queued tasks: per lane, each task's id, order
/// key, payload size and deadline, as dispatch sees them.
/// A queued task as dispatch sees it: id, order key, payload size, deadline.
type Seen = (String, OrderKey, usize, Option<u64>);

fn dispatch_view(q: &Queue) -> Vec<(Lane, Vec<Seen>)> {
    q.lanes()
        .map(|(lane, tasks)| {
            let tasks = tasks
                .map(|t| {
                    let id = q.id_of(t.seq()).expect("a queued task's id");
                    (id, t.order_key(), t.payload_len(), t.deadline_at_ms())
                })
                .collect();
            (lane.clone(), tasks)
        })
        .collect()
}

/// A backlog of varied fresh tasks (priorities, deadlines, named devices, locks, payloads
/// with escapes and non-ASCII text) and a few that are not fresh (one on a device, one
/// naming a bridge resource, one queued again after a lost device).
fn varied_backlog(q: &mut Queue) {
    let mut batch = Vec::new();
    for i in 0..40u64 {
        let mut s = sub(
            &format!("t{i}"),
            Priority::from_level((i % 6) as u8).unwrap(),
            None,
        );
        if i % 3 == 0 {
            s.deadline_ms = Some(1_000 + i);
        }
        if i % 4 == 0 {
            s.device = Some(format!("d{}", i % 2));
        }
        if i % 5 == 0 {
            s.locks = vec!["bus".into(), "spi".into()];
        }
        s.payload = format!(
            r#"{{"i":{i},"text":"é \"quoted\" \\ {}"}}"#,
            "x".repeat(i as usize)
        );
        batch.push(s);
    }
    let mut held = sub("holder", Priority::P2, None);
    held.resources = vec!["crane".into()];
    batch.push(held);
    batch.push(sub("on-device", Priority::P1, None));
    batch.push(sub("lost", Priority::P3, None));
    q.submit(batch, Now::at(0)).unwrap();
    let dispatched = |id: &str| Change::Dispatched {
        id: id.into(),
        device: "d0".into(),
        boot: 1,
        lease_until_ms: 60_000,
    };
    q.apply(
        vec![dispatched("on-device"), dispatched("lost")],
        Now::at(0),
    );
    q.apply(
        vec![Change::Requeue {
            id: "lost".into(),
            not_before_ms: 0,
        }],
        Now::at(0),
    );
    q.commit().unwrap();
}

#[test]
fn a_fresh_queued_task_is_a_lane_entry_and_its_record_stays_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    // Held whole: the task on a device, the one naming a resource, the one queued again.
    let mut whole: Vec<&str> = q.active.keys().map(String::as_str).collect();
    whole.sort_unstable();
    assert_eq!(whole, ["holder", "lost", "on-device"]);
    assert_eq!((q.fresh, q.len()), (40, 43));
    // Every fresh one is still found by id, with its whole record, and by its lane entry.
    let t7 = q.get("t7").expect("a fresh task is found by id");
    assert_eq!(
        (t7.state, t7.sub.payload.contains("quoted")),
        (TaskState::Queued, true)
    );
    let view = dispatch_view(&q);
    let entry = view
        .iter()
        .flat_map(|(_, ts)| ts)
        .find(|(id, ..)| id == "t7")
        .expect("t7 in its lane");
    assert_eq!((entry.1, entry.2), (t7.order_key(), t7.sub.payload.len()));
    assert_eq!(q.depth().iter().sum::<u64>(), 42);
    // The dispatch order is the whole records' order.
    let mut by_record: Vec<(OrderKey, String)> = q
        .live()
        .iter()
        .filter(|t| t.state == TaskState::Queued)
        .map(|t| (t.order_key(), t.sub.id.clone()))
        .collect();
    by_record.sort();
    let by_queue: Vec<(OrderKey, String)> = q
        .ready()
        .iter()
        .map(|t| (t.order_key(), t.sub.id.clone()))
        .collect();
    assert_eq!(by_queue, by_record);
}

/// The rows of `fresh` and `active`, which open trusts when they add up to `tasks`' (else it
/// reads every record and writes them again).
fn index_rows(q: &Queue) -> (u64, u64, u64) {
    let read = q.db.begin_read().unwrap();
    let len = |t: &dyn ReadableTableMetadata| t.len().unwrap();
    (
        len(&read.open_table(FRESH).unwrap()),
        len(&read.open_table(ACTIVE).unwrap()),
        len(&read.open_table(TASKS).unwrap()),
    )
}

/// After [`varied_backlog`], tasks leave by every way, in two commits: a fresh one expires, a
/// dispatched one completes, another goes to a device and fails for good (t2 stays on d1).
fn tasks_leave_by_every_way(q: &mut Queue) {
    let dispatched = |id: &str| Change::Dispatched {
        id: id.into(),
        device: "d1".into(),
        boot: 1,
        lease_until_ms: 60_000,
    };
    let end = |id: &str, state| Change::finished(id, state, ErrorCode::DeadlineExpired, "test");
    q.apply(vec![dispatched("t1"), dispatched("t2")], Now::at(0));
    q.commit().unwrap();
    q.apply(
        vec![
            end("t0", TaskState::Expired),
            end("t1", TaskState::Completed),
            end("on-device", TaskState::Failed),
        ],
        Now::at(0),
    );
    q.commit().unwrap();
}

#[test]
fn a_reopened_queue_sees_its_backlog_exactly_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    tasks_leave_by_every_way(&mut q);
    assert_eq!(index_rows(&q), (37, 3, 40), "t2, holder, lost are active");
    let before = dispatch_view(&q);
    let (depth, overdue, timer) = (q.depth(), q.overdue(1_030), q.next_timer(0));
    drop(q);
    let q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(dispatch_view(&q), before);
    assert_eq!(
        (q.depth(), q.overdue(1_030), q.next_timer(0)),
        (depth, overdue, timer)
    );
    assert_eq!((q.fresh, q.active.len()), (37, 3));
    // What the fast path read matches the records read whole.
    for (lane, tasks) in &before {
        for (id, key, size, _) in tasks {
            let t = q.get(id).unwrap();
            assert_eq!(
                (&Lane::of(&t), t.order_key(), t.sub.payload.len()),
                (lane, *key, *size)
            );
        }
    }
}

#[test]
fn a_fresh_tasks_row_round_trips_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 10).unwrap();
    let mut s = sub("é-1", Priority::P4, Some(5));
    s.device = Some("d-ü".into());
    s.locks = vec!["bus".into(), "spi".into()];
    s.payload = "[1,2,3]".into();
    q.submit(vec![s], Now::at(1_234)).unwrap();
    let rec = q.get("é-1").unwrap().into_owned();
    let row = FreshRow::of(&rec).encode();
    let back = FreshRow::decode(&row).expect("a row decodes");
    assert_eq!(back, FreshRow::of(&rec));
    assert_eq!(back.lane(None), Lane::of(&rec));
    assert_eq!((back.payload_len, back.submitted_ms), (7, rec.submitted_ms));
    for cut in 0..row.len() {
        assert_eq!(FreshRow::decode(&row[..cut]), None, "cut at {cut}");
    }
    let mut longer = row.clone();
    longer.push(0);
    assert_eq!(FreshRow::decode(&longer), None);
    let mut other_version = row;
    other_version[0] = 2;
    assert_eq!(FreshRow::decode(&other_version), None);
}

#[test]
fn a_queue_written_before_the_index_of_fresh_tasks_gets_it_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    let before = dispatch_view(&q);
    // As an older version left it: no `fresh` or `active` table.
    let txn = q.db.begin_write().unwrap();
    txn.delete_table(FRESH).unwrap();
    txn.delete_table(ACTIVE).unwrap();
    txn.commit().unwrap();
    drop(q);
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(dispatch_view(&q), before);
    // And a fresh task found through it goes to a device as any other.
    let (_, head) = &before[0];
    let id = head[0].0.clone();
    q.apply(
        vec![Change::Dispatched {
            id: id.clone(),
            device: "d1".into(),
            boot: 1,
            lease_until_ms: 60_000,
        }],
        Now::at(0),
    );
    q.commit().unwrap();
    assert_eq!(q.get(&id).unwrap().state, TaskState::Dispatched);
    assert_eq!((q.fresh, q.len()), (39, 43));
}

#[test]
fn a_fresh_task_read_once_is_read_again_after_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    assert_eq!(q.get("t5").unwrap().state, TaskState::Queued);
    let end = Change::finished("t5", TaskState::Cancelled, ErrorCode::Cancelled, "test");
    q.apply(vec![end], Now::at(0));
    assert!(q.get("t5").is_none(), "finished, before the commit");
    q.commit().unwrap();
    assert!(q.get("t5").is_none(), "finished, after the commit");
    assert_eq!(q.get("t6").unwrap().attempt, 0);
    q.apply(
        vec![Change::Dispatched {
            id: "t6".into(),
            device: "d1".into(),
            boot: 1,
            lease_until_ms: 60_000,
        }],
        Now::at(0),
    );
    assert_eq!(q.get("t6").unwrap().attempt, 1);
}

/// t3's record once it went to d1 (not written).
fn t3_dispatched_to_d1(q: &Queue) -> TaskRecord {
    let mut t3 = q.get("t3").unwrap().into_owned();
    t3.state = TaskState::Dispatched;
    t3.device = Some("d1".into());
    t3.attempt = 1;
    t3
}

#[test]
fn an_index_an_older_version_left_behind_is_rebuilt_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    // A version without the index dispatches t3: its record and the event counter change,
    // the index does not (and the table counts still add up).
    let t3 = t3_dispatched_to_d1(&q);
    let txn = q.db.begin_write().unwrap();
    {
        let mut tasks = txn.open_table(TASKS).unwrap();
        tasks.insert("t3", json(&t3).as_bytes()).unwrap();
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("outbox", q.next_outbox + 1).unwrap();
    }
    txn.commit().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(q.get("t3").unwrap().state, TaskState::Dispatched);
    let queued: Vec<String> = dispatch_view(&q)
        .into_iter()
        .flat_map(|(_, ts)| ts.into_iter().map(|t| t.0))
        .collect();
    assert!(
        !queued.contains(&"t3".to_owned()),
        "t3 is on a device, not queued"
    );
    assert_eq!(q.in_flight("d1"), 1);
    assert_eq!(index_rows(&q), (39, 4, 43));
}

#[test]
fn a_damaged_index_is_rebuilt_from_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    let before = dispatch_view(&q);
    let txn = q.db.begin_write().unwrap();
    {
        let mut fresh = txn.open_table(FRESH).unwrap();
        let (seq, _) = fresh
            .first()
            .unwrap()
            .map(|(k, v)| (k.value(), v.value().len()))
            .unwrap();
        fresh.insert(seq, &[0xff, 0x00][..]).unwrap();
    }
    txn.commit().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(dispatch_view(&q), before);
    assert_eq!(index_rows(&q), (40, 3, 43));
}

/// `done_ids`, in order.
fn done_order_rows(q: &Queue) -> Vec<(u64, String)> {
    let read = q.db.begin_read().unwrap();
    let order = read.open_table(DONE_ORDER).unwrap();
    order
        .iter()
        .unwrap()
        .map(|row| {
            let (n, id) = row.unwrap();
            (n.value(), String::from_utf8(id.value().to_vec()).unwrap())
        })
        .collect()
}

/// `active` as versions before `active_ids` kept it.
const OLD_ACTIVE: TableDefinition<'_, &str, ()> = TableDefinition::new(LEGACY_ACTIVE);

/// The database as a version before `active_ids` and `done_ids` leaves it: their rows in
/// `active` and `done_order`, with those tables' value types, and no `active_ids` or
/// `done_ids`.
fn as_an_earlier_version_left_it(q: &Queue) {
    let active: Vec<String> = {
        let read = q.db.begin_read().unwrap();
        let table = read.open_table(ACTIVE).unwrap();
        let ids = table.iter().unwrap();
        ids.map(|row| row.unwrap().0.value().to_owned()).collect()
    };
    let order = done_order_rows(q);
    let txn = q.db.begin_write().unwrap();
    {
        let mut old = txn.open_table(OLD_ACTIVE).unwrap();
        for id in &active {
            old.insert(id.as_str(), ()).unwrap();
        }
        let mut old = txn.open_table(LEGACY_DONE_ORDER).unwrap();
        for (n, id) in &order {
            old.insert(*n, id.as_str()).unwrap();
        }
    }
    txn.delete_table(ACTIVE).unwrap();
    txn.delete_table(DONE_ORDER).unwrap();
    txn.commit().unwrap();
}

fn table_names(q: &Queue) -> BTreeSet<String> {
    let read = q.db.begin_read().unwrap();
    let tables = read.list_tables().unwrap();
    tables.map(|t| t.name().to_owned()).collect()
}

#[test]
fn a_queue_an_earlier_version_wrote_opens_with_every_task_and_its_finish_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    for (id, at) in [("t7", 10), ("t2", 20), ("t11", 30)] {
        let end = Change::finished(id, TaskState::Cancelled, ErrorCode::Cancelled, "test");
        q.apply(vec![end], Now::at(at));
        q.commit().unwrap();
    }
    let view = dispatch_view(&q);
    let ids = |rows: Vec<(u64, String)>| rows.into_iter().map(|(_, id)| id).collect::<Vec<_>>();
    let order = done_order_rows(&q);
    assert_eq!(ids(order.clone()), ["t7", "t2", "t11"]);
    let rows = index_rows(&q);
    as_an_earlier_version_left_it(&q);
    drop(q);
    let q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(dispatch_view(&q), view);
    assert_eq!(q.in_flight("d0"), 1);
    assert_eq!(done_order_rows(&q), order);
    assert_eq!(index_rows(&q), rows);
    let names = table_names(&q);
    assert!(
        !names.contains(LEGACY_ACTIVE) && !names.contains(LEGACY_DONE_ORDER.name()),
        "{names:?}"
    );
}

#[test]
fn a_queue_an_earlier_version_ran_on_after_this_one_opens_as_that_version_left_it() {
    // This version writes `active_ids`; an earlier one then runs (it keeps `active`, not
    // `active_ids`): it dispatches t3, and the task on d0 finishes, is forgotten and is
    // submitted again under its id, fresh. Then this version opens the database again, with
    // its `active_ids` from before: they still add up with `fresh` to the tasks' count, and
    // every id they list has a record, so only the earlier version's table says that they
    // are stale. Trusted, they would lose t3 and hold the new on-device task twice.
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    assert_eq!(index_rows(&q), (40, 3, 43));
    let t3 = t3_dispatched_to_d1(&q);
    let mut again = q.get("t5").unwrap().into_owned();
    again.sub.id = "on-device".into();
    again.seq = q.next_seq;
    let txn = q.db.begin_write().unwrap();
    {
        let mut tasks = txn.open_table(TASKS).unwrap();
        tasks.insert("t3", json(&t3).as_bytes()).unwrap();
        tasks.insert("on-device", json(&again).as_bytes()).unwrap();
        let mut fresh = txn.open_table(FRESH).unwrap();
        assert!(fresh.remove(t3.seq).unwrap().is_some());
        let row = FreshRow::of(&again).encode();
        fresh.insert(again.seq, row.as_slice()).unwrap();
        let mut old = txn.open_table(OLD_ACTIVE).unwrap();
        for id in ["holder", "lost", "t3"] {
            old.insert(id, ()).unwrap();
        }
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("seq", q.next_seq + 1).unwrap();
        meta.insert("outbox", q.next_outbox + 1).unwrap();
        meta.insert(INDEXED, q.next_outbox + 1).unwrap();
    }
    txn.commit().unwrap();
    drop(q);
    let q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(q.get("t3").unwrap().state, TaskState::Dispatched);
    assert_eq!((q.in_flight("d1"), q.in_flight("d0")), (1, 0));
    let queued: Vec<String> = dispatch_view(&q)
        .into_iter()
        .flat_map(|(_, ts)| ts.into_iter().map(|t| t.0))
        .collect();
    assert_eq!(queued.iter().filter(|id| *id == "on-device").count(), 1);
    assert!(!queued.contains(&"t3".to_owned()));
    assert_eq!(queued.len(), 42, "39 fresh, on-device again, lost, holder");
    assert_eq!(q.len(), 43);
    assert_eq!(index_rows(&q), (40, 3, 43));
    assert!(!table_names(&q).contains(LEGACY_ACTIVE));
}

/// The data directory as a crash leaves it, copied while `q` is still open (no closing
/// checkpoint): redb's file holds its last durable commit, the write-ahead log the commits
/// after it.
fn crashed_copy(q: &Queue, dir: &Path) -> tempfile::TempDir {
    assert!(q.wal.unchecked() > 0, "the commits went to the log");
    copy_data(dir)
}

fn copy_data(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for file in ["queue.redb", "queue.wal"] {
        std::fs::copy(dir.join(file), copy.path().join(file)).unwrap();
    }
    copy
}

/// Everything a reopened queue shows: the dispatch order, what is held whole, the final
/// events kept, the outbox and the counters.
type Everything = (
    Vec<(Lane, Vec<Seen>)>,
    Vec<String>,
    Vec<(String, TaskState)>,
    Vec<u64>,
    (u64, u64, u64),
);

fn everything(q: &mut Queue) -> Everything {
    let mut whole: Vec<String> = q.active.keys().cloned().collect();
    whole.sort_unstable();
    let finished = ["t0", "t1", "on-device"]
        .into_iter()
        .filter_map(|id| q.final_event(id).unwrap().map(|e| (id.to_owned(), e.state)))
        .collect();
    let outbox = q
        .outbox(10_000)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    (
        dispatch_view(q),
        whole,
        finished,
        outbox,
        (q.next_seq, q.next_outbox, q.next_done),
    )
}

#[test]
fn commits_after_the_last_checkpoint_survive_a_crash_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    tasks_leave_by_every_way(&mut q);
    // Some events acknowledged by the broker: a commit that is not logged.
    let keys: Vec<u64> = q.outbox(3).unwrap().into_iter().map(|(k, _)| k).collect();
    q.published(&keys);
    q.commit().unwrap();
    let before = everything(&mut q);
    assert_eq!(before.2.len(), 3, "{before:?}");
    let crashed = crashed_copy(&q, dir.path());
    drop(q);
    let mut q = Queue::open(crashed.path(), 1000).unwrap();
    let after = everything(&mut q);
    // The acknowledged events' deletion was not logged: they come back (published again).
    let mut expected = before;
    expected.3.extend(&keys);
    expected.3.sort_unstable();
    assert_eq!(after, expected);
    assert_eq!(index_rows(&q), (37, 3, 40));
    assert_eq!(
        q.wal.unchecked(),
        0,
        "the open applied the log and checkpointed"
    );
    // And again: applied once, the log is not applied a second time.
    assert_eq!(q.wal.unchecked(), 0);
    let again = copy_data(crashed.path());
    let mut q = Queue::open(again.path(), 1000).unwrap();
    assert_eq!(everything(&mut q), expected);
}

#[test]
fn a_clean_stop_checkpoints_and_a_log_from_another_database_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    assert!(q.wal.unchecked() > 0);
    let before = everything(&mut q);
    drop(q);
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(everything(&mut q), before);
    assert_eq!(q.wal.unchecked(), 0);
    drop(q);
    // An operator starts afresh by deleting the database and keeps the log: a new database
    // has a new log id, and the old log's records are not its own.
    std::fs::remove_file(dir.path().join("queue.redb")).unwrap();
    let q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!((q.len(), q.outbox_len()), (0, 0));
}

#[test]
fn many_commits_go_round_the_log_through_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 100_000).unwrap();
    // More records than a round of the log holds: checkpoints on the way.
    let n = wal::CHECKPOINT_RECORDS + 300;
    for i in 0..n {
        q.submit(vec![sub(&format!("r{i}"), Priority::P4, None)], Now::at(0))
            .unwrap();
        q.commit().unwrap();
    }
    assert!(q.wal.unchecked() < wal::CHECKPOINT_RECORDS);
    let crashed = crashed_copy(&q, dir.path());
    let q = Queue::open(crashed.path(), 100_000).unwrap();
    assert_eq!(q.len(), n as usize);
    assert!(q.get(&format!("r{}", n - 1)).is_some());
}

/// Changes `meta` of the (closed) database in `dir`, as another program or version would.
fn edit_meta(dir: &Path, edit: impl FnOnce(&mut redb::Table<'_, &str, u64>)) {
    let db = Database::create(dir.join("queue.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    edit(&mut txn.open_table(META).unwrap());
    txn.commit().unwrap();
}

fn meta_value(dir: &Path, key: &str) -> Option<u64> {
    stored_value(&Database::create(dir.join("queue.redb")).unwrap(), key).unwrap()
}

/// Submits `id` and commits: once this returns, the caller acknowledges the submission.
fn accept(q: &mut Queue, id: &str) {
    q.submit(vec![sub(id, Priority::P2, None)], Now::at(0))
        .unwrap();
    q.commit().unwrap();
}

#[test]
fn a_database_of_an_earlier_version_keeps_what_it_accepts_before_its_first_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    accept(&mut q, "before");
    drop(q);
    // As an earlier version leaves it: no log and no log keys.
    edit_meta(dir.path(), |meta| {
        for key in [WAL_ID, WAL_CHECKPOINT, WAL_OUTBOX] {
            meta.remove(key).unwrap();
        }
    });
    std::fs::remove_file(dir.path().join("queue.wal")).unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    accept(&mut q, "after");
    let crashed = crashed_copy(&q, dir.path());
    drop(q);
    let q = Queue::open(crashed.path(), 1000).unwrap();
    assert!(q.get("before").is_some() && q.get("after").is_some());
}

#[test]
fn a_log_older_than_the_database_is_not_applied_and_later_commits_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    let crashed = crashed_copy(&q, dir.path());
    drop(q);
    // A version without the log opened the crashed directory (the logged commits are lost
    // to it), committed an event and stopped: the log is now older than the database.
    edit_meta(crashed.path(), |meta| {
        meta.insert("outbox", 999).unwrap();
    });
    let mut q = Queue::open(crashed.path(), 1000).unwrap();
    assert_eq!((q.len(), q.outbox_len()), (0, 0));
    // What this version accepts from then on is in its log, and a crash keeps it.
    accept(&mut q, "after");
    let again = crashed_copy(&q, crashed.path());
    drop(q);
    let q = Queue::open(again.path(), 1000).unwrap();
    assert_eq!(q.len(), 1);
    assert!(q.get("after").is_some());
}

#[test]
fn after_redbs_own_close_kept_the_logged_commits_new_commits_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    varied_backlog(&mut q);
    let live = q.len();
    // No closing checkpoint: redb's close makes the commits durable by itself, and the
    // database no longer says which log records it holds.
    q.poisoned = true;
    drop(q);
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    assert_eq!(q.len(), live);
    accept(&mut q, "after");
    let crashed = crashed_copy(&q, dir.path());
    drop(q);
    let q = Queue::open(crashed.path(), 1000).unwrap();
    assert_eq!(q.len(), live + 1);
}

#[test]
fn a_failed_commit_leaves_the_closing_checkpoint_to_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = Queue::open(dir.path(), 1000).unwrap();
    accept(&mut q, "kept");
    // The log has the batch, the database does not.
    q.fail_after_log = true;
    q.submit(vec![sub("failed", Priority::P2, None)], Now::at(0))
        .unwrap();
    assert!(q.commit().is_err());
    assert_eq!(q.wal.last(), 2);
    drop(q);
    // No closing checkpoint claims record 2 for a database that does not hold it.
    assert_eq!(meta_value(dir.path(), WAL_CHECKPOINT).unwrap_or(0), 0);
    let q = Queue::open(dir.path(), 1000).unwrap();
    assert!(q.get("kept").is_some());
}
