//! Bridge resources shared across devices (DESIGN.md, "Shared resources across devices"): a
//! distributed priority-inheritance lock.
//!
//! - A task naming resources is dispatched only once it can take all of them at once (no
//!   hold-and-wait, so no deadlock among resources): none is held, and it is the most urgent
//!   waiter that could run now (priority, then deadline, then admission) of each.
//! - Ownership is the task on a device that names the resource: durable with the task, so it
//!   survives a restart; released when the task ends or goes back to the queue (given back,
//!   retried, moved), never by a take-back (a holder is not a victim).
//! - Inheritance: while more urgent tasks wait for a resource, its holder runs at the most
//!   urgent waiter's priority on its device (`Reprioritize`), and back at its own when they
//!   are served or gone. A ceiling raises it further: a fixed priority, or `dynamic` (the most
//!   urgent task queued for the resource, from the `Assign` on).

use std::collections::BTreeMap;

use broker_config::Ceiling;
use device_core::Priority;

use super::Engine;
use crate::link::LinkCommand;
use crate::queue::TaskRecord;
use crate::time::Now;

/// How a declared resource lends priority to its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourcePolicy {
    pub ceiling: Option<Ceiling>,
    /// More urgent waiters lend their priority to the holder.
    pub inheritance: bool,
}

impl Default for ResourcePolicy {
    fn default() -> Self {
        Self {
            ceiling: None,
            inheritance: true,
        }
    }
}

impl Engine {
    /// Whether `task` may take every resource it names now: none is held, and no more
    /// urgent waiter for one of them could run now.
    pub(super) fn may_hold(&self, task: &TaskRecord, now: Now) -> bool {
        task.sub.resources.iter().all(|r| {
            self.queue.holder(r).is_none()
                && self
                    .queue
                    .waiters(r)
                    .find(|w| self.could_run(w, now))
                    .is_none_or(|w| w.sub.id == task.sub.id)
        })
    }

    /// Whether queued task `t` could be dispatched now but for its resources: its retry delay
    /// is over, its deadline not passed, and a device serving it is online.
    pub(super) fn could_run(&self, t: &TaskRecord, now: Now) -> bool {
        let serves = |hello: &device_core::proto::Hello| {
            hello
                .capabilities
                .iter()
                .any(|c| c.as_str() == t.sub.capability)
        };
        t.not_before_ms <= now.ms
            && t.deadline_at_ms.is_none_or(|d| d > now.ms)
            && match &t.sub.device {
                Some(d) => self.devices.get(d).is_some_and(|o| serves(&o.hello)),
                None => self.devices.iter().any(|(_, o)| serves(&o.hello)),
            }
    }

    /// The priority `task` runs at on its device while it holds its resources: its own, raised
    /// by each resource's ceiling and, with inheritance, by its most urgent waiter.
    pub(super) fn holding_priority(&self, task: &TaskRecord) -> Priority {
        let mut p = task.sub.priority;
        for r in &task.sub.resources {
            let policy = self.resources.get(r).copied().unwrap_or_default();
            let most_urgent_waiter = || self.queue.waiters(r).map(|w| w.sub.priority).min();
            if let Some(Ceiling::Fixed(c)) = policy.ceiling {
                p = p.most_urgent(c);
            }
            if policy.inheritance || policy.ceiling == Some(Ceiling::Dynamic) {
                if let Some(w) = most_urgent_waiter() {
                    p = p.most_urgent(w);
                }
            }
        }
        p
    }

    /// Tells the devices of resource holders the priority each must run at now (raised for
    /// a waiter, back when it is served or gone): one `Reprioritize` per change.
    pub(super) fn lend_priorities(&mut self) {
        let holders: BTreeMap<String, (Priority, Option<String>, u32)> = self
            .queue
            .held()
            .map(|(_, t)| {
                (
                    t.sub.id.clone(),
                    (self.holding_priority(t), t.device.clone(), t.handle()),
                )
            })
            .collect();
        self.lent.retain(|id, _| holders.contains_key(id));
        self.unsure.retain(|id| holders.contains_key(id));
        for (id, (want, device, handle)) in holders {
            let Some(task) = self.queue.get(&id) else {
                continue;
            };
            let now_at = self.lent.get(&id).copied().unwrap_or(task.sub.priority);
            if want == now_at && !self.unsure.contains(&id) {
                continue;
            }
            let Some(link) = device.as_deref().and_then(|d| self.devices.link_of(d)) else {
                continue; // told when its device is back (it forgets nothing it was told)
            };
            self.unsure.remove(&id);
            tracing::info!(%id, from = ?now_at, to = ?want, "holder of a resource reprioritised");
            self.staged.commands.push((
                link,
                LinkCommand::Reprioritize {
                    handle,
                    priority: want,
                },
            ));
            if want == task.sub.priority {
                self.lent.remove(&id);
            } else {
                self.lent.insert(id, want);
            }
        }
    }

    /// What device `id` runs its resource holders at is not known (the bridge restarted, or
    /// the device came back): they are told again.
    pub(super) fn unsure_of(&mut self, device: &str) {
        let ids: Vec<String> = self
            .queue
            .on_device(device)
            .filter(|t| !t.sub.resources.is_empty())
            .map(|t| t.sub.id.clone())
            .collect();
        self.unsure.extend(ids);
    }

    /// Refuses a submission naming a resource the configuration does not declare.
    pub(super) fn undeclared(&self, resources: &[String]) -> Option<String> {
        let missing = resources
            .iter()
            .find(|r| !self.resources.contains_key(*r))?;
        let declared: Vec<&str> = self.resources.keys().map(String::as_str).collect();
        Some(if declared.is_empty() {
            format!("resources: {missing:?} is not declared (no [[resource]] is)")
        } else {
            format!(
                "resources: {missing:?} is not declared (declared: {})",
                declared.join(", ")
            )
        })
    }
}
