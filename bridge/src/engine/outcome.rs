//! What a device's report or refusal, a lost device or a transient failure does to a task.

use device_core::proto::{Reject, RejectReason, Report, TRANSIENT_ERROR, TaskReport};
use serde_json::Value;

use super::Engine;
use crate::api::{ErrorCode, TaskState};
use crate::link::LinkId;
use crate::queue::Change;
use crate::time::Now;

impl Engine {
    /// The live task a device's message about `handle` is about, with the device: the task
    /// with that handle (unique), on the device on `link` (dispatched there or running). Found
    /// from durable state, so reports that arrive after a bridge restart still settle their
    /// tasks. A task back in the queue is on no device, though its record still names the one
    /// that refused it (with the same handle): a message from that device about it changes
    /// nothing (a `running` report would put it on the device without an `Assign`, a lease or
    /// a slot).
    pub(super) fn task_of(&self, link: LinkId, handle: u32) -> Option<(String, String)> {
        let device = self.devices.device_on(link)?;
        let task = self.queue.by_handle(handle).filter(|t| {
            t.state != TaskState::Queued && t.device.as_deref() == Some(device.as_str())
        })?;
        Some((task.sub.id.clone(), device.clone()))
    }

    /// What a device's refusal does to its task: no free slot sends it back to the queue
    /// (another slot or device takes it), anything else rejects it.
    pub(super) fn reject_change(
        &mut self,
        link: LinkId,
        reject: Reject,
        now: Now,
    ) -> Option<Change> {
        let (id, device) = self.task_of(link, reject.handle?)?;
        let change = match reject.reason {
            // It advertised room it did not have: the refusal costs the task an attempt and
            // its retry delay, so a device that refuses everything cannot drive a dispatch
            // loop (one commit each). Its credit view is left as its link reports it: a link
            // reports credit only when it changes, so a view zeroed here could stay at zero
            // with the device idle (seen in the benchmark's preemption phase).
            RejectReason::NoFreeSlot => {
                self.refused_change(&id, now, &format!("device {device} had no free slot"))
            }
            // A take-back that came too late: the task runs on; another may be chosen.
            RejectReason::Started => {
                self.take_back_over(&id);
                return None;
            }
            // The device would not resume it (its capability changed since the checkpoint
            // was taken): it starts over, here or elsewhere.
            RejectReason::NotResumable => Change::StartOver { id },
            reason => Change::finished(
                &id,
                TaskState::Rejected,
                ErrorCode::DeviceRejected,
                format!("device {device}: {reason}"),
            ),
        };
        Some(self.unless_cancelling(change))
    }

    /// What a device's report does to its task.
    pub(super) fn report_change(
        &mut self,
        link: LinkId,
        report: Report,
        now: Now,
    ) -> Option<Change> {
        let Some((id, device)) = self.task_of(link, report.handle) else {
            if let Some(change) = self.left_behind_report(link, &report) {
                return Some(change);
            }
            tracing::debug!(
                link,
                handle = report.handle,
                "report for a handle already settled"
            );
            return None;
        };
        let change = match report.state {
            TaskReport::Running => Change::Running { id },
            TaskReport::Completed => Change::Finished {
                id,
                state: TaskState::Completed,
                result: Some(result_json(&report.result)),
                error: None,
            },
            TaskReport::Failed => {
                let code = report.error.unwrap_or(0);
                if code >= TRANSIENT_ERROR {
                    let why = format!("device {device} failed with transient code {code:#06x}");
                    let task = self.queue.get(&id)?;
                    tracing::info!(%id, attempt = task.attempt, %why, "retrying");
                    // A new execution (a new handle), unless attempts are exhausted or a
                    // cancel was asked for. Nothing is left behind: the device ended it.
                    if task.cancelling {
                        return Some(cancelled(&id, &why));
                    }
                    return self.retry_change(&id, now, &why);
                }
                Change::finished(
                    &id,
                    TaskState::Failed,
                    ErrorCode::DeviceFailed,
                    format!("device {device} failed with code {code}"),
                )
            }
            TaskReport::Expired => {
                self.expired += 1;
                Change::finished(
                    &id,
                    TaskState::Expired,
                    ErrorCode::DeadlineExpired,
                    "the deadline passed before the device could start it",
                )
            }
            TaskReport::Cancelled => {
                Change::finished(&id, TaskState::Cancelled, ErrorCode::Cancelled, "cancelled")
            }
        };
        Some(change)
    }

    /// Another attempt of live task `id` after the retry delay, with a new handle (a
    /// `Retry`), or `failed` when it has had its attempts; `why` says what ended this one.
    pub(super) fn retry_change(&mut self, id: &str, now: Now, why: &str) -> Option<Change> {
        let t = self.queue.get(id)?;
        if t.attempt >= self.retry.max_attempts {
            return Some(Change::finished(
                id,
                TaskState::Failed,
                ErrorCode::AttemptsExhausted,
                format!("{why}; {} attempts made", t.attempt),
            ));
        }
        let delay = self.retry.backoff.delay(t.attempt, self.rng.next_u64());
        Some(Change::Retry {
            id: id.to_owned(),
            not_before_ms: now.ms + delay.as_millis() as u64,
        })
    }

    /// Live task `id` back to the queue after a device refused it without running it: after
    /// the retry delay of its attempt, with the same handle, or `failed` when it has had its
    /// attempts; `why` says who refused it.
    pub(super) fn refused_change(&mut self, id: &str, now: Now, why: &str) -> Change {
        let attempt = self.queue.get(id).map_or(0, |t| t.attempt);
        if attempt >= self.retry.max_attempts {
            return Change::finished(
                id,
                TaskState::Failed,
                ErrorCode::AttemptsExhausted,
                format!("{why}; {attempt} attempts made"),
            );
        }
        let delay = self.retry.backoff.delay(attempt, self.rng.next_u64());
        Change::Requeue {
            id: id.to_owned(),
            not_before_ms: now.ms + delay.as_millis() as u64,
        }
    }

    /// `change` sends task `id` back to the queue: unless a cancel was asked for while it was
    /// on its device, which now ends it `cancelled` (it ran no further there).
    pub(super) fn unless_cancelling(&self, change: Change) -> Change {
        match self.queue.get(change.id()) {
            Some(t) if t.cancelling => cancelled(change.id(), "given back by its device"),
            _ => change,
        }
    }
}

/// A task's end on a cancel asked for.
pub(super) fn cancelled(id: &str, how: &str) -> Change {
    Change::finished(
        id,
        TaskState::Cancelled,
        ErrorCode::Cancelled,
        format!("cancelled on request ({how})"),
    )
}

/// A device's result bytes as JSON: the JSON the device wrote, or a string.
pub(super) fn result_json(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text.into_owned()))
}
