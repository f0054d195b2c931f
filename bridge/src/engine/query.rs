//! "Why is my task waiting?": the answer to a query on `{root}/query/tasks`.
//!
//! The reasons are the dispatch policy's own rules, asked of one task at a time in the order
//! the policy applies them (see `dispatch.rs`): a retry delay, the device it names, the
//! capability, the locks, the payload size, the class quota, the resources, then the slots.
//! An answer reads the engine's state and changes nothing.

use std::collections::BTreeMap;

use super::Engine;
use crate::api::{
    self, ApiError, ErrorCode, ErrorEvent, Query, QueryAnswer, QueryRefusal, TaskState, TaskView,
    WaitCode, Waiting,
};
use crate::dispatch::{self, DeviceView};
use crate::queue::{QueueError, TaskRecord};
use crate::time::Now;

/// Queries answered in one second at most: an answer reads the devices and up to `limit`
/// tasks, so a flood of queries must not hold up the turns that move work.
pub(super) const QUERIES_PER_SECOND: u32 = 20;

impl Engine {
    /// A message on `{root}/query/tasks`: the answer to publish, as (subtopic, JSON), on its
    /// reply topic; for one that names no reply topic, its refusal on `{root}/errors` (neither
    /// is stored). `None` beyond the budget for a query without a reply topic.
    pub fn handle_query(
        &mut self,
        payload: &[u8],
        now: Now,
    ) -> Result<Option<(String, String)>, QueueError> {
        // Every query counts, answered or refused: each costs a publish.
        let second = now.ms / 1000;
        if self.queries.0 != second {
            self.queries = (second, 0);
        }
        self.queries.1 += 1;
        let over_budget = self.queries.1 > QUERIES_PER_SECOND;
        let answer = |error: Option<ApiError>, id: Option<String>| QueryAnswer {
            id,
            live: self.queue.len(),
            error,
            ts_ms: now.wall_ms,
            ..QueryAnswer::default()
        };
        let (reply, answer) = match api::parse_query(payload) {
            Ok(query) if over_budget => {
                let error = ApiError::new(
                    ErrorCode::TooManyQueries,
                    format!(
                        "the bridge answers {QUERIES_PER_SECOND} queries a second; ask again in \
                         a second"
                    ),
                );
                (query.reply, answer(Some(error), query.id))
            }
            Ok(query) => {
                let answer = self.answer_query(&query, now)?;
                (query.reply, answer)
            }
            Err(QueryRefusal {
                reply: Some(reply),
                error,
            }) => (reply, answer(Some(error), None)),
            Err(QueryRefusal { reply: None, error }) => {
                if let Some(so_far) = self.log_due(super::Remote::Query) {
                    tracing::warn!(so_far, message = %error.message, "a query without a usable reply level refused");
                }
                if over_budget {
                    return Ok(None);
                }
                // On `{root}/errors`, best effort: not stored, so a flood of such queries
                // cannot take the outbox's room for the answers to submissions.
                let event = ErrorEvent {
                    error,
                    id: None,
                    trace_id: None,
                    received: String::from_utf8_lossy(payload).chars().take(200).collect(),
                    ts_ms: now.wall_ms,
                };
                let json = serde_json::to_string(&event).expect("events serialise to JSON");
                return Ok(Some(("errors".to_owned(), json)));
            }
        };
        Ok(Some((format!("query/replies/{reply}"), answer.to_json())))
    }

    /// The longest answer the bridge publishes, in bytes (the MQTT packet limit less room for
    /// the topic): a list that would be longer is cut, and says so.
    pub fn set_answer_limit(&mut self, bytes: usize) {
        self.answer_bytes = bytes;
    }

    /// The answer to `query`. Fails only when the queue cannot be read (a finished task's
    /// record).
    pub fn answer_query(&self, query: &Query, now: Now) -> Result<QueryAnswer, QueueError> {
        let mut answer = QueryAnswer {
            id: query.id.clone(),
            live: self.queue.len(),
            ts_ms: now.wall_ms,
            ..QueryAnswer::default()
        };
        let views = self.device_views();
        let room = self.class_room();
        let view = |t: &TaskRecord| self.task_view(t, &views, room, now);
        match &query.id {
            Some(id) => match self.queue.get(id) {
                Some(t) => answer.tasks.push(view(&t)),
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
                // order; only the tasks listed are read.
                let mut on: Vec<&TaskRecord> = Vec::new();
                for device in self.queue.devices_with_tasks() {
                    if on.len() >= query.limit {
                        break;
                    }
                    let mut tasks: Vec<&TaskRecord> = self.queue.on_device(device).collect();
                    tasks.sort_unstable_by_key(|t| t.seq);
                    on.extend(tasks);
                }
                on.truncate(query.limit);
                let queued = self.queue.first_queued(query.limit - on.len());
                // The envelope (counts, time, error) takes well under 512 bytes.
                let mut budget = self.answer_bytes.saturating_sub(512);
                let on = on.into_iter().map(std::borrow::Cow::Borrowed);
                for t in on.chain(queued) {
                    let v = view(&t);
                    let size = serde_json::to_string(&v).map_or(0, |j| j.len() + 1);
                    if size > budget {
                        answer.truncated = true;
                        break;
                    }
                    budget -= size;
                    answer.tasks.push(v);
                }
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
            priority: t.sub.priority.to_string(),
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
                Some((_, d)) if !d.capabilities.iter().any(|c| c == cap) => {
                    return because(
                        WaitCode::DeviceLacksCapability,
                        format!(
                            "the device it names, {named}, is online but does not offer {cap}; \
                             the task waits until it does (a device declares its capabilities \
                             when it connects)"
                        ),
                    );
                }
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
        // A device the task names that cannot take it rejects it once it has a free slot
        // (dispatch decides only for devices with room).
        let named_rejects = " when that device has a free slot, the task is rejected";
        if with_locks.is_empty() {
            let message = match &t.sub.device {
                Some(named) => format!(
                    "{named} lacks a lock it names ({});{named_rejects} (invalid_locks)",
                    t.sub.locks.join(", ")
                ),
                None => format!(
                    "{} online device(s) offer {cap}, but none has every lock it names ({})",
                    capable.len(),
                    t.sub.locks.join(", ")
                ),
            };
            return because(WaitCode::NoLock, message);
        }
        let size = t.sub.payload.len();
        let fitting: Vec<(&String, &DeviceView)> = with_locks
            .iter()
            .filter(|(_, d)| size <= d.max_payload)
            .copied()
            .collect();
        if fitting.is_empty() {
            let max = with_locks
                .iter()
                .map(|(_, d)| d.max_payload)
                .max()
                .unwrap_or(0);
            let message = match &t.sub.device {
                Some(named) => format!(
                    "its payload ({size} bytes) is larger than {named} takes (at most {max} \
                     bytes);{named_rejects} (payload_too_large)"
                ),
                None => format!(
                    "its payload ({size} bytes) is larger than any online device offering {cap} \
                     takes (at most {max} bytes); it waits for one that takes it"
                ),
            };
            return because(WaitCode::PayloadTooLarge, message);
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
                    "the free slots of {} are kept for urgent tasks ({} or more urgent)",
                    names(&fitting),
                    self.urgency.urgent_at
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
                    w.sub.id, w.sub.priority
                ));
            }
        }
        None
    }
}

/// Device names for a message: the first few, and how many more.
fn names(devices: &[(&String, &DeviceView)]) -> String {
    const SHOWN: usize = 3;
    let mut text = devices
        .iter()
        .take(SHOWN)
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if devices.len() > SHOWN {
        text.push_str(&format!(" and {} more", devices.len() - SHOWN));
    }
    text
}

fn state_word(state: TaskState) -> &'static str {
    match state {
        TaskState::Running => "running",
        _ => "dispatched",
    }
}
