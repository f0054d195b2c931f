//! Taking work back for urgent tasks (DESIGN.md, "Urgent work never waits", mechanisms 2 and
//! 3): when an urgent task finds no free slot on any device that could run it, the bridge asks
//! a device to give back a task strictly less urgent than the waiting one — one it has not
//! started (at no cost), or else a started one whose capability the device declared resumable
//! or restartable (stopped at its next step boundary; a resumable one comes back with a
//! checkpoint and resumes from it on the next device that takes it).
//!
//! Victim: among the tasks on a capable device, strictly less urgent than the waiting task and
//! given back fewer than `max_preemptions` times, an unstarted one first; then the least
//! urgent, then the latest deadline, then the most recently admitted (the least progress, as
//! far as the bridge can tell). One victim per waiting task at a time; the freed slot goes to
//! the most urgent waiting task by the ordinary dispatch.

use device_core::Priority;
use device_core::proto::Preemption;

use super::{Engine, devices};
use crate::api::TaskState;
use crate::link::{LinkCommand, LinkId};
use crate::time::Now;

/// A task that could be given back, and where it is.
struct Candidate {
    id: String,
    device: String,
    link: LinkId,
    handle: u32,
    priority: Priority,
    /// (not started, priority level, deadline, admission): larger is a better victim.
    rank: (bool, u8, u64, u64),
}

impl Engine {
    /// Asks devices to give back unstarted tasks for urgent tasks that found no slot (staged:
    /// the `Preempt`s go out after the next commit). Called after the turn's dispatch.
    pub(super) fn take_back(&mut self, now: Now) {
        let urgent_at = self.urgency.urgent_at;
        // Every dispatch turn comes here: with no urgent task queued (the usual case) it costs
        // a look at the queue's counts, not a pass over the tasks on devices.
        let urgent_queued = self.queue.depth()[..=usize::from(urgent_at.level())]
            .iter()
            .any(|&n| n > 0);
        if self.urgency.max_preemptions == 0 || !urgent_queued {
            return;
        }
        let mut candidates = self.candidates();
        if candidates.is_empty() {
            return;
        }
        // By admission sequence: a fresh queued task's id is on disk.
        let waiting_for: std::collections::HashSet<u64> = self
            .preempting
            .values()
            .chain(self.freed_for.keys())
            .filter_map(|id| self.queue.get(id).map(|t| t.seq))
            .collect();
        let mut chosen: Vec<(u64, Candidate)> = Vec::new();
        'lanes: for (lane, tasks) in self.queue.lanes() {
            let (capability, named) = (&lane.capability, &lane.device);
            for task in tasks {
                if candidates.is_empty() {
                    break 'lanes;
                }
                if urgent_at.outranks(task.priority()) {
                    break; // the rest of the lane is less urgent still
                }
                let ready = task.not_before_ms() <= now.ms
                    && task.deadline_at_ms().is_none_or(|d| d > now.ms);
                if !ready || waiting_for.contains(&task.seq()) {
                    continue;
                }
                let fits = |c: &Candidate| {
                    task.priority().outranks(c.priority)
                        && named.as_ref().is_none_or(|n| *n == c.device)
                        && self.devices.get(&c.device).is_some_and(|o| {
                            o.hello
                                .capabilities
                                .iter()
                                .any(|x| x.as_str() == capability)
                                && usize::from(o.hello.max_payload) >= task.payload_len()
                                && lane
                                    .locks
                                    .iter()
                                    .all(|l| o.hello.locks.iter().any(|x| x.as_str() == l))
                        })
                };
                let best = candidates
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| fits(c))
                    .max_by_key(|(_, c)| c.rank)
                    .map(|(i, _)| i);
                if let Some(i) = best {
                    chosen.push((task.seq(), candidates.swap_remove(i)));
                }
            }
        }
        for (waiting, victim) in chosen {
            let Some(waiting) = self.queue.id_of(waiting) else {
                continue;
            };
            let started = !victim.rank.0;
            tracing::info!(task = %victim.id, device = %victim.device, started, for_task = %waiting, "taking a task back for urgent work");
            self.staged.commands.push((
                victim.link,
                LinkCommand::Preempt {
                    handle: victim.handle,
                },
            ));
            self.preempting.insert(victim.id, waiting);
        }
    }

    /// Tasks that devices can give back (unstarted ones, and started ones of a capability the
    /// device stops), given back fewer than `max_preemptions` times and not being taken back.
    /// Devices of protocol 1 have none.
    fn candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (device, online) in self.devices.iter() {
            if online.hello.version < TAKE_BACK_SINCE {
                continue;
            }
            for t in self.queue.on_device(device) {
                let unstarted = t.state == TaskState::Dispatched;
                let stoppable = unstarted
                    || devices::preemption(&online.hello, &t.sub.capability) != Preemption::Never;
                // A resource holder is never a victim: it would only hand its resource on.
                if !stoppable
                    || !t.sub.resources.is_empty()
                    || t.preemptions >= self.urgency.max_preemptions
                    || self.preempting.contains_key(&t.sub.id)
                {
                    continue;
                }
                out.push(Candidate {
                    id: t.sub.id.clone(),
                    device: device.clone(),
                    link: online.link,
                    handle: t.handle(),
                    priority: t.sub.priority,
                    rank: (
                        unstarted,
                        t.sub.priority.level(),
                        t.deadline_at_ms.unwrap_or(u64::MAX),
                        t.seq,
                    ),
                });
            }
        }
        out
    }

    /// The take-back of `id` is over (given back, refused because it started, finished, or its
    /// device left): its waiting task may choose another victim.
    pub(super) fn take_back_over(&mut self, id: &str) {
        self.preempting.remove(id);
    }
}

/// The device protocol version that has `Preempt` (older devices get reservation only).
const TAKE_BACK_SINCE: u16 = 2;
