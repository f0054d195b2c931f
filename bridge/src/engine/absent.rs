//! One device at a time: a task that was on a device stays with it while it is away, and
//! leaves it only when the device comes back without it, a grace period passes, or the
//! task's execution lease ends.
//!
//! - A device's link drops (or the bridge restarts): the device may still be running its
//!   tasks, so they wait for it for `Leases::grace_ms`, not dispatched anywhere else.
//! - It comes back with the same boot id: its tasks stay on it, and each `Assign` is sent
//!   again (a replay: the device answers one it holds from its dedup table, and takes one it
//!   never received). A cancel asked for meanwhile goes out now.
//! - It comes back with another boot id: it lost them; they are tried again at once.
//! - The grace period passes, or a task's execution lease ends: the task is tried again (a
//!   new handle, so no device can confuse the two executions), elsewhere if need be. The old
//!   handle is remembered, so that when that device comes back with the same boot it is told
//!   to cancel it, and a result it reports for it first is still taken (the first result
//!   wins; the other execution is cancelled).

use std::collections::BTreeMap;

use device_core::proto::{Cancel, Hello, Report, TaskReport};

use super::Engine;
use crate::api::TaskState;
use crate::link::{LinkCommand, LinkId};
use crate::queue::Change;
use crate::time::Now;

/// How long tasks wait for a device that went away, and how long a device may hold a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leases {
    /// How long tasks on a device that went away wait for it.
    pub grace_ms: u64,
    /// The execution lease of a task that names none, by capability.
    pub per_capability: BTreeMap<String, u64>,
    /// The execution lease of any other task.
    pub default_ms: u64,
}

impl Default for Leases {
    /// 30 s of grace; 30 min leases.
    fn default() -> Self {
        Self {
            grace_ms: 30_000,
            per_capability: BTreeMap::new(),
            default_ms: 30 * 60 * 1000,
        }
    }
}

impl Leases {
    /// The execution lease of a task of `capability` that asked for `timeout_ms`.
    pub fn lease_ms(&self, capability: &str, timeout_ms: Option<u64>) -> u64 {
        timeout_ms
            .or_else(|| self.per_capability.get(capability).copied())
            .unwrap_or(self.default_ms)
    }
}

/// Executions left behind remembered per device.
const LEFT_BEHIND_KEPT: usize = 1024;

/// An execution a device may still be running though its task has moved on: the task, and
/// the boot of the device it ran under.
#[derive(Clone, Debug)]
pub(super) struct LeftBehind {
    pub(super) id: String,
    pub(super) boot: u32,
}

impl Engine {
    /// Device `device` went away: its tasks wait for it for the grace period.
    pub(super) fn device_gone(&mut self, device: &str, now: Now) {
        if self.queue.in_flight(device) > 0 {
            let until = now.ms.saturating_add(self.leases.grace_ms);
            tracing::info!(%device, tasks = self.queue.in_flight(device), grace_ms = self.leases.grace_ms, "device away; its tasks wait for it");
            self.away.insert(device.to_owned(), until);
        }
    }

    /// Device `hello.device_id` opened a session on `link`: its tasks stay on it if it kept
    /// them (same boot: each `Assign` is replayed), and are tried again if it lost them.
    /// Executions it may still run for tasks that have moved on are cancelled.
    pub(super) fn device_back(&mut self, link: LinkId, hello: &Hello, rebooted: bool, now: Now) {
        let id = hello.device_id.as_str();
        self.away.remove(id);
        // Its resource holders are told their priority again.
        self.unsure_of(id);
        if let Some(left) = self.left_behind.remove(id) {
            let kept: BTreeMap<u32, LeftBehind> = left
                .into_iter()
                .filter(|(_, l)| !rebooted && l.boot == hello.boot_id)
                .collect();
            for handle in kept.keys() {
                let cancel = Cancel { handle: *handle };
                self.staged
                    .commands
                    .push((link, LinkCommand::Cancel(cancel)));
            }
            if !kept.is_empty() {
                tracing::info!(device = %id, executions = kept.len(), "device came back with work that moved on; cancelling it there");
                self.left_behind.insert(id.to_owned(), kept);
            }
        }
        let tasks: Vec<(String, Option<u32>, bool)> = self
            .queue
            .on_device(id)
            .map(|t| (t.sub.id.clone(), t.boot, t.cancelling))
            .collect();
        let mut changes = Vec::new();
        for (task, boot, cancelling) in tasks {
            let lost = rebooted || boot.is_some_and(|b| b != hello.boot_id);
            if lost {
                // Nothing is left behind on a device that rebooted.
                let change = self.again(&task, now, &format!("device {id} rebooted"));
                if let Some(left) = self.left_behind.get_mut(id) {
                    left.retain(|_, l| l.boot == hello.boot_id);
                }
                changes.extend(change);
                continue;
            }
            let Some(t) = self.queue.get(&task) else {
                continue;
            };
            if cancelling {
                let cancel = Cancel { handle: t.handle() };
                self.staged
                    .commands
                    .push((link, LinkCommand::Cancel(cancel)));
                continue;
            }
            match super::assign::assign_for(&t, hello, now.ms) {
                Ok(assign) => {
                    if let Some(checkpoint) = t.checkpoint.clone() {
                        let command = LinkCommand::Restore {
                            handle: assign.handle,
                            checkpoint,
                        };
                        self.staged.commands.push((link, command));
                    }
                    self.staged
                        .commands
                        .push((link, LinkCommand::Replay(Box::new(assign))));
                    self.devices.count_assign(link);
                }
                // It no longer fits the device (its capabilities changed): tried again.
                Err(_) => changes.extend(self.again(&task, now, "its device changed")),
            }
        }
        self.queue.apply(changes, now);
    }

    /// Another attempt of task `id` (a new handle, after the retry delay), or its end: it is
    /// cancelled if a cancel was asked for, failed if it has had its attempts. The device it
    /// was on, if any, may still run it: remembered as left behind there.
    pub(super) fn again(&mut self, id: &str, now: Now, why: &str) -> Option<Change> {
        let t = self.queue.get(id)?;
        if let (Some(device), Some(boot), true) =
            (t.device.clone(), t.boot, t.state != TaskState::Queued)
        {
            let left = LeftBehind {
                id: id.to_owned(),
                boot,
            };
            let on_device = self.left_behind.entry(device).or_default();
            on_device.insert(t.handle(), left);
            // A device that holds on to tasks past their leases while staying online: keep
            // the newest (handles grow with admission).
            while on_device.len() > LEFT_BEHIND_KEPT {
                on_device.pop_first();
            }
        }
        if t.cancelling {
            return Some(super::outcome::cancelled(id, why));
        }
        self.retry_change(id, now, why)
    }

    /// Releases the tasks of devices whose grace period ended (and, after a restart, starts
    /// the grace period of every device that had tasks), and takes back tasks whose execution
    /// lease ended.
    pub(super) fn release_overdue(&mut self, now: Now) {
        if !self.resumed {
            self.resumed = true;
            let until = now.ms.saturating_add(self.leases.grace_ms);
            let absent: Vec<String> = self
                .queue
                .devices_with_tasks()
                .filter(|d| self.devices.get(d).is_none())
                .map(str::to_owned)
                .collect();
            for device in absent {
                tracing::info!(%device, tasks = self.queue.in_flight(&device), "tasks wait for their device after the restart");
                self.away.insert(device, until);
            }
            let with_tasks: Vec<String> =
                self.queue.devices_with_tasks().map(str::to_owned).collect();
            for device in with_tasks {
                self.unsure_of(&device);
            }
        }
        let ended: Vec<String> = self
            .away
            .iter()
            .filter(|(_, until)| **until <= now.ms)
            .map(|(d, _)| d.clone())
            .collect();
        let mut changes = Vec::new();
        for device in ended {
            self.away.remove(&device);
            let ids: Vec<String> = self
                .queue
                .on_device(&device)
                .map(|t| t.sub.id.clone())
                .collect();
            if !ids.is_empty() {
                tracing::warn!(%device, tasks = ids.len(), grace_ms = self.leases.grace_ms, "device did not come back in time; its tasks may run elsewhere");
            }
            let why = format!(
                "device {device} did not come back within {} ms",
                self.leases.grace_ms
            );
            for id in ids {
                changes.extend(self.again(&id, now, &why));
            }
        }
        let expired: Vec<(String, Option<String>, u32)> = self
            .queue
            .lease_ended(now.ms)
            .filter_map(|id| self.queue.get(id))
            .map(|t| (t.sub.id.clone(), t.device.clone(), t.handle()))
            .collect();
        for (id, device, handle) in expired {
            let device = device.unwrap_or_default();
            tracing::warn!(%id, %device, "execution lease ended; cancelling the task there and trying again");
            if let Some(link) = self.devices.link_of(&device) {
                let command = LinkCommand::Cancel(Cancel { handle });
                self.staged.commands.push((link, command));
            }
            let why = format!("execution lease ended on device {device}");
            changes.extend(self.again(&id, now, &why));
            // One task fewer on it: its capability documents' figures change.
            self.discovery.touch(&device);
        }
        self.queue.apply(changes, now);
    }

    /// A report from the device on `link` for a handle that is not its task's any more: an
    /// execution left behind there. A result is taken if the task has none yet (the first
    /// result wins: the other execution is cancelled); anything else only forgets it.
    pub(super) fn left_behind_report(&mut self, link: LinkId, report: &Report) -> Option<Change> {
        let device = self.devices.device_on(link)?.clone();
        let left = self.left_behind.get_mut(&device)?;
        let terminal = report.state != TaskReport::Running;
        let entry = if terminal {
            left.remove(&report.handle)?
        } else {
            return None;
        };
        if left.is_empty() {
            self.left_behind.remove(&device);
        }
        if report.state != TaskReport::Completed {
            return None;
        }
        let task = self.queue.get(&entry.id)?;
        if task.state != TaskState::Queued {
            if let Some(now_on) = task.device.as_deref().and_then(|d| self.devices.link_of(d)) {
                let cancel = Cancel {
                    handle: task.handle(),
                };
                self.staged
                    .commands
                    .push((now_on, LinkCommand::Cancel(cancel)));
            }
        }
        tracing::info!(id = %entry.id, %device, "a result from an execution left behind: it stands");
        Some(Change::Finished {
            id: entry.id,
            state: TaskState::Completed,
            result: Some(super::outcome::result_json(&report.result)),
            error: None,
        })
    }

    /// Devices whose tasks wait for them, with the timer-clock ms their grace period ends.
    pub(super) fn away_until(&self) -> Option<u64> {
        self.away.values().copied().min()
    }
}
