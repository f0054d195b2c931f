//! Dispatch policy: which queued task goes to which device, now. No I/O, no clock: the caller
//! passes the queue's ready tasks, the online devices and the time, and applies the decisions.
//!
//! Rules:
//! - Tasks are considered in dispatch order (P0 first, then earliest deadline, then FIFO).
//! - A task whose deadline has passed is expired instead (it never starts late).
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

use std::collections::BTreeMap;

use crate::queue::TaskRecord;

/// What the dispatcher knows of an online device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    pub capabilities: Vec<String>,
    /// `Assign`s the device can take now (its session's credit).
    pub credit: u32,
    /// Tasks on the device (dispatched and not finished).
    pub in_flight: u32,
    /// Largest payload it accepts, in bytes.
    pub max_payload: usize,
}

/// A decision for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Assign {
        id: String,
        device: String,
    },
    Expire {
        id: String,
    },
    /// The named device cannot ever take this payload.
    TooLarge {
        id: String,
        device: String,
        max: usize,
    },
}

/// Decides what to do now with the `ready` tasks (in dispatch order) given the online
/// `devices` (by id). At most one decision per task; never more assignments to a device than
/// its credit.
pub fn plan<'a>(
    ready: impl IntoIterator<Item = &'a TaskRecord>,
    devices: &BTreeMap<String, DeviceView>,
    now_ms: u64,
) -> Vec<Decision> {
    let mut credit: BTreeMap<&str, (u32, u32)> = devices
        .iter()
        .map(|(id, d)| (id.as_str(), (d.credit, d.in_flight)))
        .collect();
    let mut free: u32 = credit.values().map(|c| c.0).sum();
    let mut out = Vec::new();
    for task in ready {
        if task.deadline_at_ms.is_some_and(|d| d <= now_ms) {
            out.push(Decision::Expire {
                id: task.sub.id.clone(),
            });
            continue;
        }
        if free == 0 || task.not_before_ms > now_ms {
            // Nothing can be placed; keep going only to expire overdue tasks.
            continue;
        }
        let fits = |id: &str, d: &DeviceView| {
            d.capabilities.contains(&task.sub.capability)
                && credit.get(id).is_some_and(|c| c.0 > 0)
                && task.sub.payload.len() <= d.max_payload
        };
        let chosen = match &task.sub.device {
            Some(named) => match devices.get(named) {
                Some(d) if task.sub.payload.len() > d.max_payload => {
                    let max = d.max_payload;
                    out.push(Decision::TooLarge {
                        id: task.sub.id.clone(),
                        device: named.clone(),
                        max,
                    });
                    continue;
                }
                Some(d) if fits(named, d) => Some(named.as_str()),
                _ => None,
            },
            None => devices
                .iter()
                .filter(|(id, d)| fits(id, d))
                .min_by_key(|(id, _)| (credit[id.as_str()].1, id.as_str()))
                .map(|(id, _)| id.as_str()),
        };
        if let Some(dev) = chosen {
            let c = credit.get_mut(dev).expect("chosen among known devices");
            c.0 -= 1;
            c.1 += 1;
            free -= 1;
            out.push(Decision::Assign {
                id: task.sub.id.clone(),
                device: dev.to_owned(),
            });
        }
    }
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
                payload: "null".into(),
                locks: vec![],
                trace_id: None,
            },
            state: TaskState::Queued,
            device: None,
            attempt: 0,
            submitted_ms: 0,
            deadline_at_ms: None,
            not_before_ms: 0,
        }
    }

    fn dev(caps: &[&str], credit: u32, in_flight: u32) -> DeviceView {
        DeviceView {
            capabilities: caps.iter().map(|c| (*c).into()).collect(),
            credit,
            in_flight,
            max_payload: 256,
        }
    }

    fn devices(list: &[(&str, DeviceView)]) -> BTreeMap<String, DeviceView> {
        list.iter()
            .map(|(id, d)| ((*id).into(), d.clone()))
            .collect()
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
    fn a_named_device_is_honoured_even_when_others_are_idle() {
        let ds = devices(&[("a", dev(&["echo"], 1, 0)), ("b", dev(&["echo"], 1, 9))]);
        assert_eq!(
            plan(&[task("t", "echo", Some("b"), 1)], &ds, 0),
            [assign("t", "b")]
        );
        assert_eq!(plan(&[task("t", "echo", Some("gone"), 1)], &ds, 0), []);
    }

    #[test]
    fn overdue_tasks_expire_and_retrying_ones_wait() {
        let ds = devices(&[("a", dev(&["echo"], 0, 0))]);
        let mut late = task("late", "echo", None, 1);
        late.deadline_at_ms = Some(100);
        let mut waiting = task("waiting", "echo", None, 2);
        waiting.not_before_ms = 200;
        assert_eq!(
            plan([&late, &waiting], &ds, 100),
            [Decision::Expire { id: "late".into() }]
        );
        let ds = devices(&[("a", dev(&["echo"], 1, 0))]);
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
}
