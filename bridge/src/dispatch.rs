//! Dispatch policy: which queued task goes to which device, now. No I/O, no clock: the caller
//! passes the queue's ready tasks, the online devices and the time, and applies the decisions.
//!
//! Rules:
//! - Tasks are considered in dispatch order (P0 first, then earliest deadline, then FIFO).
//! - A task whose deadline has passed is never started (the caller expires it first).
//! - A task waiting for its retry delay is skipped.
//! - A task naming a `device` goes only there; otherwise to the online device advertising its
//!   capability with a free slot (credit) and the fewest tasks in flight (least loaded), ties
//!   broken by device id for determinism.
//! - A task that cannot be placed does not block the ones behind it (a P0 task for a busy
//!   device must not stall P3 work elsewhere), but a device's free slot goes to the most
//!   urgent task that can use it.
//! - A payload larger than a capable device accepts is skipped for that device; a payload no
//!   online capable device accepts waits (another device may come), unless a named device
//!   refuses it, which rejects it.
//! - Reservation (urgent work never waits): a device keeps `reserve` slots for urgent tasks
//!   (priority `urgent_at` or more urgent). Urgent tasks use the reserve first; any other task
//!   goes to a device only while it has more free slots than the reserve not yet held by
//!   urgent tasks, so long low-priority work cannot take every slot an urgent task could use.
//! - Lock names work like capabilities: a task naming locks goes only to a device advertising
//!   every one of them. With none online it waits; a named device lacking one rejects it.
//!
//! The queue hands tasks over in lanes, one per (capability, named device), each in dispatch
//! order. Planning merges the heads of the lanes some device can serve now and drops a lane
//! as soon as no device with credit can take its head, so its cost follows the assignments
//! made and the lanes open, not the length of the queue.

use std::collections::BTreeMap;

use device_core::Priority;

use crate::queue::{Lane, Queued, TaskRecord};

/// What the dispatcher knows of an online device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    pub capabilities: Vec<String>,
    /// `Assign`s the device can take now (its session's credit).
    pub credit: u32,
    /// Of those, how many only urgent tasks may take: its reserved slots not already held by
    /// urgent tasks (urgent work uses the reserve first, so low-priority work keeps the rest).
    pub reserve: u32,
    /// Tasks on the device (dispatched and not finished).
    pub in_flight: u32,
    /// Largest payload it accepts, in bytes.
    pub max_payload: usize,
    /// The names of its locks (from its `Hello`).
    pub locks: Vec<String>,
}

impl DeviceView {
    /// The first of `locks` the device does not advertise, if any.
    pub(crate) fn missing_lock<'t>(&self, locks: &'t [String]) -> Option<&'t str> {
        locks
            .iter()
            .find(|l| !self.locks.contains(l))
            .map(String::as_str)
    }
}

/// A decision for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Assign {
        id: String,
        device: String,
    },
    /// The named device cannot ever take this payload.
    TooLarge {
        id: String,
        device: String,
        max: usize,
    },
    /// The named device has no lock of this name, so it cannot ever take the task.
    MissingLock {
        id: String,
        device: String,
        lock: String,
    },
}

/// The QoS class of a priority: 0 realtime (P0–P1), 1 guaranteed (P2–P3), 2 besteffort
/// (P4–P5).
pub fn class_of(p: Priority) -> usize {
    usize::from(p.level() / 2)
}

/// The classes' names, by [`class_of`].
pub const CLASSES: [&str; 3] = ["realtime", "guaranteed", "besteffort"];

/// Where a lane's head task can go now.
enum Head<'a> {
    /// To this device; the task's order key ranks it against the other lanes' heads.
    To((u8, u64, u64), &'a str),
    /// Nowhere: the lane is empty, or no device with credit serves it.
    Closed,
}

/// What [`plan`] decided, and how much it looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// At most one per task.
    pub decisions: Vec<Decision>,
    /// Tasks looked at: the decisions, plus the tasks passed over one by one (a payload too
    /// large for every device serving it now). Lanes passed over whole (on their head) are
    /// not counted: their cost is per lane, not per task.
    pub examined: u64,
}

/// Decides what to do now with the queued tasks, given as `lanes` (each in dispatch order)
/// and the online `devices` (by id); tasks of priority `urgent_at` or more urgent may take
/// reserved slots. At most one decision per task; never more assignments to a device than its
/// credit. A task naming bridge resources goes only if `may_hold` says it may take them now
/// (none held, no more urgent waiter), and no task assigned before it in this plan took one.
/// `class_room`: how many more tasks of each QoS class ([`class_of`]) may go now (`None`: no
/// quota).
///
/// A lane whose head cannot go for a reason every task of the lane shares is passed over
/// whole: its class is at its quota, no device serving it has its locks, or its head may not
/// take its resources (then no task behind it may: they wait for the same resources, behind
/// the same more urgent waiter). So tasks that fit nowhere cost nothing turn after turn.
///
/// A decision names its task by id, which `id_of` gives for the few tasks decided on (a fresh
/// queued task's is on disk); a task it gives none for is left out of the plan.
pub fn plan<'a, I>(
    lanes: impl IntoIterator<Item = (&'a Lane, I)>,
    devices: &'a BTreeMap<String, DeviceView>,
    urgent_at: Priority,
    now_ms: u64,
    may_hold: &dyn Fn(&TaskRecord) -> bool,
    id_of: &dyn Fn(&Queued<'a>) -> Option<String>,
    class_room: [Option<u32>; 3],
) -> Plan
where
    I: Iterator<Item = Queued<'a>>,
{
    // (credit, in flight, reserve left) per device, as assignments are made.
    let mut load: BTreeMap<&str, (u32, u32, u32)> = devices
        .iter()
        .map(|(id, d)| (id.as_str(), (d.credit, d.in_flight, d.reserve)))
        .collect();
    // Whether device `d`, with (credit, in flight) `c` now, can take a task of `cap` that is
    // urgent or not (a lane's head is its most urgent task, so a lane no device serves for its
    // head is closed for every task behind it too).
    let serves = |d: &DeviceView, c: &(u32, u32, u32), cap: &str, urgent: bool| {
        let kept = if urgent { 0 } else { c.2 };
        c.0 > kept && d.capabilities.iter().any(|x| x == cap)
    };
    let mut open: Vec<(&Lane, std::iter::Peekable<I>)> = lanes
        .into_iter()
        .filter(|(lane, _)| match &lane.device {
            Some(n) => devices
                .get(n)
                .is_some_and(|d| serves(d, &load[n.as_str()], &lane.capability, true)),
            None => devices
                .iter()
                .any(|(id, d)| serves(d, &load[id.as_str()], &lane.capability, true)),
        })
        .map(|(lane, tasks)| (lane, tasks.peekable()))
        .collect();
    let mut out = Plan::default();
    // Bridge resources taken by the tasks assigned so far in this plan.
    let mut claimed: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut class_room = class_room;
    loop {
        let mut best: Option<((u8, u64, u64), usize, &str)> = None;
        let mut i = 0;
        while i < open.len() {
            let (lane, tasks) = &mut open[i];
            let (cap, named) = (lane.capability.as_str(), &lane.device);
            let head = loop {
                // The whole lane's class is at its quota.
                if class_room[lane.class] == Some(0) {
                    break Head::Closed;
                }
                let Some(task) = tasks.peek() else {
                    break Head::Closed;
                };
                if task.not_before_ms() > now_ms
                    || task.deadline_at_ms().is_some_and(|d| d <= now_ms)
                {
                    out.examined += 1;
                    tasks.next();
                    continue;
                }
                // Waits for its resources: held, or to be served to a more urgent waiter; so
                // does every task behind it. (A task naming resources is always held whole.)
                if !lane.resources.is_empty()
                    && (lane.resources.iter().any(|r| claimed.contains(r.as_str()))
                        || !task.record().is_some_and(may_hold))
                {
                    break Head::Closed;
                }
                let size = task.payload_len();
                let urgent = !urgent_at.outranks(task.priority());
                match named {
                    Some(n) => {
                        let d = &devices[n.as_str()];
                        if size > d.max_payload {
                            if let Some(id) = id_of(task) {
                                out.decisions.push(Decision::TooLarge {
                                    id,
                                    device: n.clone(),
                                    max: d.max_payload,
                                });
                            }
                            tasks.next();
                            continue;
                        }
                        if let Some(lock) = d.missing_lock(&lane.locks) {
                            if let Some(id) = id_of(task) {
                                out.decisions.push(Decision::MissingLock {
                                    id,
                                    device: n.clone(),
                                    lock: lock.to_owned(),
                                });
                            }
                            tasks.next();
                            continue;
                        }
                        if !serves(d, &load[n.as_str()], cap, urgent) {
                            break Head::Closed;
                        }
                        break Head::To(task.order_key(), n.as_str());
                    }
                    None => {
                        let mut serving = devices
                            .iter()
                            .filter(|(id, d)| {
                                serves(d, &load[id.as_str()], cap, urgent)
                                    && d.missing_lock(&lane.locks).is_none()
                            })
                            .peekable();
                        // None serves it now, or none has its locks: it waits, and so does
                        // the rest of the lane.
                        if serving.peek().is_none() {
                            break Head::Closed;
                        }
                        let fit = serving
                            .filter(|(_, d)| size <= d.max_payload)
                            // Least loaded, but not the device of its last attempt while
                            // another can take it (a task whose lease ended there, or that
                            // failed there, is tried elsewhere).
                            .min_by_key(|(id, _)| {
                                let last = task.last_device() == Some(id.as_str());
                                (last, load[id.as_str()].1, id.as_str())
                            });
                        match fit {
                            Some((id, _)) => break Head::To(task.order_key(), id.as_str()),
                            // Too large for every device serving it now: it waits.
                            None => {
                                out.examined += 1;
                                tasks.next();
                            }
                        }
                    }
                }
            };
            match head {
                Head::To(key, device) => {
                    if best.is_none_or(|b| key < b.0) {
                        best = Some((key, i, device));
                    }
                    i += 1;
                }
                Head::Closed => {
                    drop(open.swap_remove(i));
                }
            }
        }
        let Some((_, i, device)) = best else {
            break;
        };
        let (lane, tasks) = &mut open[i];
        let task = tasks.next().expect("the head just looked at");
        claimed.extend(lane.resources.iter().map(String::as_str));
        if let Some(room) = &mut class_room[class_of(task.priority())] {
            *room -= 1;
        }
        let l = load.get_mut(device).expect("chosen among known devices");
        l.0 -= 1;
        l.1 += 1;
        if !urgent_at.outranks(task.priority()) {
            l.2 = l.2.saturating_sub(1);
        }
        if let Some(id) = id_of(&task) {
            out.decisions.push(Decision::Assign {
                id,
                device: device.to_owned(),
            });
        }
    }
    out.examined += out.decisions.len() as u64;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Submission, TaskState};
    use device_core::Priority;

    fn task(id: &str, cap: &str, device: Option<&str>, seq: u64) -> TaskRecord {
        TaskRecord {
            seq,
            sub: Submission {
                id: id.into(),
                capability: cap.into(),
                device: device.map(Into::into),
                priority: Priority::P3,
                deadline_ms: None,
                timeout_ms: None,
                payload: "null".into(),
                locks: vec![],
                resources: vec![],
                trace_id: None,
            },
            state: TaskState::Queued,
            device: None,
            attempt: 0,
            submitted_ms: 0,
            deadline_at_ms: None,
            not_before_ms: 0,
            retry_handle: None,
            preemptions: 0,
            checkpoint: None,
            boot: None,
            lease_until_ms: None,
            cancelling: false,
        }
    }

    fn dev(caps: &[&str], credit: u32, in_flight: u32) -> DeviceView {
        DeviceView {
            capabilities: caps.iter().map(|c| (*c).into()).collect(),
            credit,
            reserve: 0,
            in_flight,
            max_payload: 256,
            locks: vec![],
        }
    }

    fn with_locks(mut d: DeviceView, locks: &[&str]) -> DeviceView {
        d.locks = locks.iter().map(|l| (*l).into()).collect();
        d
    }

    fn locking(mut t: TaskRecord, locks: &[&str]) -> TaskRecord {
        t.sub.locks = locks.iter().map(|l| (*l).into()).collect();
        t
    }

    fn devices(list: &[(&str, DeviceView)]) -> BTreeMap<String, DeviceView> {
        list.iter()
            .map(|(id, d)| ((*id).into(), d.clone()))
            .collect()
    }

    /// `plan` over `tasks` grouped into lanes as the queue keeps them.
    fn plan<'a>(
        tasks: impl IntoIterator<Item = &'a TaskRecord>,
        devices: &BTreeMap<String, DeviceView>,
        now_ms: u64,
    ) -> Vec<Decision> {
        let mut lanes: BTreeMap<Lane, Vec<&TaskRecord>> = BTreeMap::new();
        for t in tasks {
            lanes.entry(Lane::of(t)).or_default().push(t);
        }
        for l in lanes.values_mut() {
            l.sort_unstable_by_key(|t| t.order_key());
        }
        super::plan(
            lanes
                .iter()
                .map(|(l, ts)| (l, ts.iter().map(|t| Queued::Whole(t)))),
            devices,
            Priority::P1,
            now_ms,
            &|t| !t.sub.resources.iter().any(|r| r == "held"),
            &|t| t.record().map(|r| r.sub.id.clone()),
            [None, None, None],
        )
        .decisions
    }

    fn assign(id: &str, device: &str) -> Decision {
        Decision::Assign {
            id: id.into(),
            device: device.into(),
        }
    }

    #[test]
    fn least_loaded_capable_device_with_credit_wins() {
        let ds = devices(&[
            ("a", dev(&["echo"], 2, 3)),
            ("b", dev(&["echo"], 2, 1)),
            ("c", dev(&["sleep"], 5, 0)),
        ]);
        let tasks = [
            task("t1", "echo", None, 1),
            task("t2", "echo", None, 2),
            task("t3", "echo", None, 3),
        ];
        assert_eq!(
            plan(&tasks, &ds, 0),
            [assign("t1", "b"), assign("t2", "b"), assign("t3", "a")]
        );
    }

    #[test]
    fn credit_is_never_exceeded_and_a_blocked_task_does_not_block_others() {
        let ds = devices(&[
            ("busy", dev(&["echo"], 0, 4)),
            ("free", dev(&["sleep"], 1, 0)),
        ]);
        let tasks = [
            task("wants-busy", "echo", Some("busy"), 1),
            task("sleep", "sleep", None, 2),
            task("sleep2", "sleep", None, 3),
        ];
        assert_eq!(plan(&tasks, &ds, 0), [assign("sleep", "free")]);
    }

    #[test]
    fn a_free_slot_goes_to_the_most_urgent_task_of_any_lane() {
        let ds = devices(&[("a", dev(&["echo", "sleep"], 2, 0))]);
        let mut urgent = task("urgent", "sleep", None, 3);
        urgent.sub.priority = Priority::P0;
        let mut named = task("named", "echo", Some("a"), 2);
        named.sub.priority = Priority::P1;
        let tasks = [task("old", "echo", None, 1), named, urgent];
        assert_eq!(
            plan(&tasks, &ds, 0),
            [assign("urgent", "a"), assign("named", "a")]
        );
    }

    #[test]
    fn a_named_device_is_honoured_even_when_others_are_idle() {
        let ds = devices(&[("a", dev(&["echo"], 1, 0)), ("b", dev(&["echo"], 1, 9))]);
        assert_eq!(
            plan(&[task("t", "echo", Some("b"), 1)], &ds, 0),
            [assign("t", "b")]
        );
        assert_eq!(plan(&[task("t", "echo", Some("gone"), 1)], &ds, 0), []);
    }

    #[test]
    fn overdue_tasks_never_start_and_retrying_ones_wait() {
        let ds = devices(&[("a", dev(&["echo"], 1, 0))]);
        let mut late = task("late", "echo", None, 1);
        late.deadline_at_ms = Some(100);
        let mut waiting = task("waiting", "echo", None, 2);
        waiting.not_before_ms = 200;
        assert_eq!(plan([&late, &waiting], &ds, 100), []);
        assert_eq!(plan([&late], &ds, 99), [assign("late", "a")]);
        assert_eq!(plan([&waiting], &ds, 199), []);
        assert_eq!(plan([&waiting], &ds, 200), [assign("waiting", "a")]);
    }

    #[test]
    fn payloads_too_large_for_a_device_go_elsewhere_or_are_refused_by_a_named_one() {
        let mut small = dev(&["echo"], 1, 0);
        small.max_payload = 4;
        let ds = devices(&[("small", small), ("big", dev(&["echo"], 1, 5))]);
        let mut t = task("t", "echo", None, 1);
        t.sub.payload = "\"twelve bytes\"".into();
        assert_eq!(plan([&t], &ds, 0), [assign("t", "big")]);
        t.sub.device = Some("small".into());
        assert_eq!(
            plan([&t], &ds, 0),
            [Decision::TooLarge {
                id: "t".into(),
                device: "small".into(),
                max: 4
            }]
        );
    }

    #[test]
    fn a_task_naming_locks_goes_only_to_a_device_advertising_all_of_them() {
        let ds = devices(&[
            ("a-idle", dev(&["echo"], 4, 0)),
            ("bus", with_locks(dev(&["echo"], 4, 3), &["bus"])),
            ("both", with_locks(dev(&["echo"], 4, 5), &["spi", "bus"])),
        ]);
        let tasks = [
            locking(task("needs-bus", "echo", None, 1), &["bus"]),
            locking(task("needs-both", "echo", None, 2), &["bus", "spi"]),
            task("plain", "echo", None, 3),
        ];
        assert_eq!(
            plan(&tasks, &ds, 0),
            [
                assign("needs-bus", "bus"),
                assign("needs-both", "both"),
                assign("plain", "a-idle"),
            ]
        );
    }

    #[test]
    fn a_task_naming_a_lock_no_device_has_waits_without_blocking_others() {
        let ds = devices(&[("a", with_locks(dev(&["echo"], 2, 0), &["bus"]))]);
        let tasks = [
            locking(task("needs-spi", "echo", None, 1), &["spi"]),
            task("next", "echo", None, 2),
        ];
        assert_eq!(plan(&tasks, &ds, 0), [assign("next", "a")]);
        // The one device with the lock has no credit now: the task waits for it, and the
        // credit of a device without the lock goes to other work.
        let ds = devices(&[
            ("lockless", dev(&["echo"], 2, 0)),
            ("bus", with_locks(dev(&["echo"], 0, 4), &["bus"])),
        ]);
        let tasks = [
            locking(task("needs-bus", "echo", None, 1), &["bus"]),
            task("next", "echo", None, 2),
        ];
        assert_eq!(plan(&tasks, &ds, 0), [assign("next", "lockless")]);
    }

    #[test]
    fn a_named_device_without_the_lock_rejects_the_task_and_one_with_it_takes_it() {
        let ds = devices(&[
            ("plain", dev(&["echo"], 1, 0)),
            ("bus", with_locks(dev(&["echo"], 1, 0), &["i2c0", "bus"])),
        ]);
        let to_plain = locking(task("t1", "echo", Some("plain"), 1), &["bus"]);
        let to_bus = locking(task("t2", "echo", Some("bus"), 2), &["bus", "i2c0"]);
        let half = locking(task("t3", "echo", Some("bus"), 3), &["i2c0", "spi"]);
        // Decisions for tasks of different lanes come in no particular order.
        let mut decided = plan([&to_plain, &to_bus, &half], &ds, 0);
        decided.sort_by_key(|d| format!("{d:?}"));
        assert_eq!(
            decided,
            [
                assign("t2", "bus"),
                Decision::MissingLock {
                    id: "t1".into(),
                    device: "plain".into(),
                    lock: "bus".into(),
                },
                Decision::MissingLock {
                    id: "t3".into(),
                    device: "bus".into(),
                    lock: "spi".into(),
                },
            ]
        );
        // Behind a rejected head, the next task of the lane still goes out.
        let after = task("t4", "echo", Some("plain"), 4);
        assert_eq!(
            plan([&to_plain, &after], &ds, 0),
            [
                Decision::MissingLock {
                    id: "t1".into(),
                    device: "plain".into(),
                    lock: "bus".into(),
                },
                assign("t4", "plain"),
            ]
        );
    }

    fn at(mut t: TaskRecord, p: Priority) -> TaskRecord {
        t.sub.priority = p;
        t
    }

    fn reserving(mut d: DeviceView, reserve: u32) -> DeviceView {
        d.reserve = reserve;
        d
    }

    /// A device's reserved slots go only to urgent tasks (P1 and P0 here): low-priority work
    /// stops while the device has no more free slots than it reserves, and an urgent task
    /// still finds one; an urgent task takes the reserve first, leaving the other slots to
    /// low-priority work.
    #[test]
    fn reserved_slots_are_kept_for_urgent_tasks() {
        let ds = devices(&[("a", reserving(dev(&["echo"], 2, 0), 1))]);
        let low = [
            at(task("p4-1", "echo", None, 1), Priority::P4),
            at(task("p4-2", "echo", None, 2), Priority::P4),
        ];
        assert_eq!(
            plan(&low, &ds, 0),
            [assign("p4-1", "a")],
            "one slot stays free"
        );
        let urgent = at(task("p1", "echo", None, 3), Priority::P1);
        assert_eq!(
            plan([&low[0], &low[1], &urgent], &ds, 0),
            [assign("p1", "a"), assign("p4-1", "a")],
            "the urgent task first, then low work down to the reserve"
        );
        // With only the reserved slot free, P2 waits and P0 takes it.
        let ds = devices(&[("a", reserving(dev(&["echo"], 1, 1), 1))]);
        let p2 = at(task("p2", "echo", Some("a"), 4), Priority::P2);
        let p0 = at(task("p0", "echo", None, 5), Priority::P0);
        assert_eq!(plan([&p2], &ds, 0), []);
        assert_eq!(plan([&p2, &p0], &ds, 0), [assign("p0", "a")]);
    }

    /// Reservation prefers a device with unreserved room for low-priority work, and leaves
    /// every device's reserve alone.
    #[test]
    fn low_priority_work_uses_only_unreserved_slots_on_every_device() {
        let ds = devices(&[
            ("a", reserving(dev(&["echo"], 1, 0), 1)),
            ("b", reserving(dev(&["echo"], 3, 0), 1)),
        ]);
        let tasks: Vec<TaskRecord> = (1..=4)
            .map(|i| at(task(&format!("t{i}"), "echo", None, i), Priority::P3))
            .collect();
        assert_eq!(plan(&tasks, &ds, 0), [assign("t1", "b"), assign("t2", "b")]);
    }

    /// A bridge resource goes to one task per plan, the most urgent first; a task whose
    /// resource is held waits, and tasks naming none are not held up.
    #[test]
    fn a_resource_goes_to_one_task_at_a_time_the_most_urgent_first() {
        let ds = devices(&[("a", dev(&["echo"], 8, 0)), ("b", dev(&["echo"], 8, 0))]);
        let with = |id: &str, seq: u64, prio: Priority, resources: &[&str]| {
            let mut t = task(id, "echo", None, seq);
            t.sub.priority = prio;
            t.sub.resources = resources.iter().map(|r| (*r).to_owned()).collect();
            t
        };
        let tasks = [
            with("low", 1, Priority::P4, &["bus"]),
            with("urgent", 2, Priority::P0, &["bus"]),
            with("other", 3, Priority::P4, &["held"]),
            with("free", 4, Priority::P5, &[]),
        ];
        let got: Vec<String> = plan(&tasks, &ds, 0)
            .into_iter()
            .map(|d| match d {
                Decision::Assign { id, .. } => id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["urgent", "free"]);
    }
}
