//! "Why is my task waiting?": the answer to a query on `{root}/query/tasks`.
//!
//! The reasons are the dispatch policy's own rules, asked of one task at a time in the order
//! the policy applies them (see `dispatch.rs`): a retry delay, the device it names, the
//! capability, the locks, the payload size, the class quota, the resources, then the slots.
//! An answer reads the engine's state and changes nothing.

use std::collections::BTreeMap;

use device_core::Priority;

use super::Engine;
use crate::api::{
    self, ApiError, ErrorCode, ErrorEvent, Query, QueryAnswer, QueryRefusal, TaskState, TaskView,
    WaitCode, Waiting,
};
use crate::dispatch::{self, DeviceView};
use crate::queue::{OutboxEntry, QueueError, TaskRecord};
use crate::time::Now;

/// Queries answered in one second at most: an answer reads every live task, so a flood of
/// queries must not hold up the turns that move work.
pub(super) const QUERIES_PER_SECOND: u32 = 20;

impl Engine {
    /// A message on `{root}/query/tasks`: the answer to publish, as (subtopic, JSON), when it
    /// names where to. One that does not is refused on `{root}/errors` (with the next commit).
    pub fn handle_query(
        &mut self,
        payload: &[u8],
        now: Now,
    ) -> Result<Option<(String, String)>, QueueError> {
        let (reply, answer) = match api::parse_query(payload) {
            Ok(query) => {
                let second = now.ms / 1000;
                if self.queries.0 != second {
                    self.queries = (second, 0);
                }
                self.queries.1 += 1;
                if self.queries.1 > QUERIES_PER_SECOND {
                    let answer = QueryAnswer {
                        live: self.queue.len(),
                        error: Some(ApiError::new(
                            ErrorCode::TooManyQueries,
                            format!(
                                "the bridge answers {QUERIES_PER_SECOND} queries a second; ask \
                                 again in a second"
                            ),
                        )),
                        ts_ms: now.wall_ms,
                        ..QueryAnswer::default()
                    };
                    return Ok(Some((
                        format!("query/replies/{}", query.reply),
                        answer.to_json(),
                    )));
                }
                let answer = self.answer_query(&query, now)?;
                (query.reply, answer)
            }
            Err(QueryRefusal {
                reply: Some(reply),
                error,
            }) => {
                let answer = QueryAnswer {
                    live: self.queue.len(),
                    error: Some(error),
                    ts_ms: now.wall_ms,
                    ..QueryAnswer::default()
                };
                (reply, answer)
            }
            Err(QueryRefusal { reply: None, error }) => {
                let event = ErrorEvent {
                    error,
                    id: None,
                    trace_id: None,
                    received: String::from_utf8_lossy(payload).chars().take(200).collect(),
                    ts_ms: now.wall_ms,
                };
                self.queue
                    .notify(OutboxEntry::new("errors".into(), &event, false));
                return Ok(None);
            }
        };
        Ok(Some((format!("query/replies/{reply}"), answer.to_json())))
    }

    /// The answer to `query`. Fails only when the queue cannot be read (a finished task's
    /// record).
    pub fn answer_query(&self, query: &Query, now: Now) -> Result<QueryAnswer, QueueError> {
        let mut answer = QueryAnswer {
            live: self.queue.len(),
            ts_ms: now.wall_ms,
            ..QueryAnswer::default()
        };
        let views = self.device_views();
        let room = self.class_room();
        let view = |t: &TaskRecord| self.task_view(t, &views, room, now);
        match &query.id {
            Some(id) => match self.queue.get(id) {
                Some(t) => answer.tasks.push(view(t)),
                None => match self.queue.final_state(id)? {
                    Some(event) => answer.finished = Some(event),
                    None => {
                        answer.error = Some(ApiError::new(
                            ErrorCode::UnknownTask,
                            format!(
                                "no task {id}: never submitted, or finished long enough ago \
                                 that the bridge no longer keeps its record"
                            ),
                        ));
                    }
                },
            },
            None => {
                // On a device first (by device, then admission), then queued in dispatch
                // order: the first `limit` of them without sorting the whole queue.
                let (mut on, mut queued): (Vec<&TaskRecord>, Vec<&TaskRecord>) =
                    self.queue.live().partition(|t| t.state.is_on_device());
                on.sort_by(|a, b| (&a.device, a.seq).cmp(&(&b.device, b.seq)));
                on.truncate(query.limit);
                let left = query.limit - on.len();
                if queued.len() > left && left > 0 {
                    queued.select_nth_unstable_by_key(left - 1, |t| t.order_key());
                }
                queued.truncate(left);
                queued.sort_by_key(|t| t.order_key());
                answer.tasks = on.into_iter().chain(queued).map(view).collect();
            }
        }
        Ok(answer)
    }

    /// One task as an answer shows it.
    fn task_view(
        &self,
        t: &TaskRecord,
        views: &BTreeMap<String, DeviceView>,
        room: [Option<u32>; 3],
        now: Now,
    ) -> TaskView {
        TaskView {
            id: t.sub.id.clone(),
            state: t.state,
            capability: t.sub.capability.clone(),
            device: t.device.clone().or_else(|| t.sub.device.clone()),
            priority: format!("P{}", t.sub.priority.level()),
            attempt: t.attempt,
            age_ms: now.wall_ms.saturating_sub(t.submitted_ms),
            trace_id: t.sub.trace_id.clone(),
            waiting: self.waiting(t, views, room, now),
        }
    }

    /// Why task `t` is not running, by the dispatch policy's rules.
    fn waiting(
        &self,
        t: &TaskRecord,
        views: &BTreeMap<String, DeviceView>,
        room: [Option<u32>; 3],
        now: Now,
    ) -> Waiting {
        let wall = |ms: u64| now.wall_ms.saturating_add(ms.saturating_sub(now.ms));
        let because = |code, message: String| Waiting {
            code,
            message,
            until_ms: None,
        };
        let cap = &t.sub.capability;
        if t.state != TaskState::Queued {
            let device = t.device.as_deref().unwrap_or("?");
            if t.cancelling {
                return because(
                    WaitCode::Cancelling,
                    format!("a cancel was sent to {device}; its answer ends the task"),
                );
            }
            if self.devices.get(device).is_none() {
                let until = self.away.get(device).copied();
                return Waiting {
                    until_ms: until.map(wall),
                    ..because(
                        WaitCode::DeviceAway,
                        format!(
                            "{device} went offline with the task; it waits for the device to come \
                             back until its grace period ends, then runs elsewhere"
                        ),
                    )
                };
            }
            return because(
                WaitCode::OnDevice,
                format!("{} on {device}", state_word(t.state)),
            );
        }
        if t.not_before_ms > now.ms {
            return Waiting {
                until_ms: Some(wall(t.not_before_ms)),
                ..because(
                    WaitCode::RetryBackoff,
                    format!(
                        "waiting out a retry delay after attempt {} ({} ms left)",
                        t.attempt,
                        t.not_before_ms - now.ms
                    ),
                )
            };
        }
        let capable: Vec<(&String, &DeviceView)> = match &t.sub.device {
            Some(named) => match views.get_key_value(named) {
                Some(v) => vec![v],
                None => {
                    return because(
                        WaitCode::DeviceOffline,
                        format!("the device it names, {named}, is not online"),
                    );
                }
            },
            None => views
                .iter()
                .filter(|(_, d)| d.capabilities.iter().any(|c| c == cap))
                .collect(),
        };
        if capable.is_empty() {
            return because(
                WaitCode::NoDevice,
                format!("no online device offers the capability {cap}"),
            );
        }
        let with_locks: Vec<(&String, &DeviceView)> = capable
            .iter()
            .filter(|(_, d)| d.missing_lock(&t.sub.locks).is_none())
            .copied()
            .collect();
        if with_locks.is_empty() {
            return because(
                WaitCode::NoLock,
                format!(
                    "{} online device(s) offer {cap}, but none has every lock it names ({})",
                    capable.len(),
                    t.sub.locks.join(", ")
                ),
            );
        }
        let size = t.sub.payload.len();
        let fitting: Vec<(&String, &DeviceView)> = with_locks
            .iter()
            .filter(|(_, d)| size <= d.max_payload)
            .copied()
            .collect();
        if fitting.is_empty() {
            let max = with_locks.iter().map(|(_, d)| d.max_payload).max();
            return because(
                WaitCode::PayloadTooLarge,
                format!(
                    "its payload ({size} bytes) is larger than any online device offering {cap} \
                     takes (at most {} bytes); it waits for one that takes it",
                    max.unwrap_or(0)
                ),
            );
        }
        let class = dispatch::class_of(t.sub.priority);
        if room[class] == Some(0) {
            return because(
                WaitCode::ClassQuota,
                format!(
                    "its QoS class ({}) holds its share of the slots",
                    dispatch::CLASSES[class]
                ),
            );
        }
        if let Some(why) = self.resource_wait(t, now) {
            return because(WaitCode::Resource, why);
        }
        let urgent = !self.urgency.urgent_at.outranks(t.sub.priority);
        let free: u32 = fitting.iter().map(|(_, d)| d.credit).sum();
        if free == 0 {
            return because(
                WaitCode::DevicesBusy,
                format!(
                    "every device that can take it is full ({} device(s): {})",
                    fitting.len(),
                    names(&fitting)
                ),
            );
        }
        if !urgent && fitting.iter().all(|(_, d)| d.credit <= d.reserve) {
            return because(
                WaitCode::ReservedForUrgent,
                format!(
                    "the free slots of {} are kept for urgent tasks (P{} or more urgent)",
                    names(&fitting),
                    self.urgency.urgent_at.level()
                ),
            );
        }
        because(
            WaitCode::Ready,
            "a device can take it: it goes with the next dispatch, after any more urgent task"
                .into(),
        )
    }

    /// Why task `t` may not take its resources now, if it may not.
    fn resource_wait(&self, t: &TaskRecord, now: Now) -> Option<String> {
        for r in &t.sub.resources {
            if let Some(holder) = self.queue.holder(r).filter(|h| h.sub.id != t.sub.id) {
                return Some(format!("resource {r} is held by task {}", holder.sub.id));
            }
            let first = self.queue.waiters(r).find(|w| self.could_run(w, now));
            if let Some(w) = first.filter(|w| w.sub.id != t.sub.id) {
                return Some(format!(
                    "resource {r} goes first to task {} ({})",
                    w.sub.id,
                    priority_word(w.sub.priority)
                ));
            }
        }
        None
    }
}

fn names(devices: &[(&String, &DeviceView)]) -> String {
    devices
        .iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn state_word(state: TaskState) -> &'static str {
    match state {
        TaskState::Running => "running",
        _ => "dispatched",
    }
}

fn priority_word(p: Priority) -> String {
    format!("P{}", p.level())
}
