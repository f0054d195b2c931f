//! The `Assign` message for a task on a device.

use device_core::proto::{Assign, Hello, MAX_TASK_LOCKS};

use crate::api::{ApiError, ErrorCode};
use crate::queue::TaskRecord;

/// The `Assign` for a task's current attempt on the device that said `hello`, at timer-clock
/// `now_ms`: its lock names become that device's lock ids, in ascending order (every task takes
/// a device's locks in one global order, so declared locks never deadlock each other), and its
/// deadline becomes the time left. Fails only for a task the device cannot take, which dispatch
/// never chooses.
pub(super) fn assign_for(t: &TaskRecord, hello: &Hello, now_ms: u64) -> Result<Assign, ApiError> {
    let mut locks = heapless::Vec::<u8, MAX_TASK_LOCKS>::new();
    for name in &t.sub.locks {
        let id = hello
            .locks
            .iter()
            .position(|l| l.as_str() == name)
            .and_then(|i| u8::try_from(i).ok())
            .ok_or_else(|| no_such_lock(&hello.device_id, name, Some(hello)))?;
        locks.push(id).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidLocks,
                format!("a task holds at most {MAX_TASK_LOCKS} locks"),
            )
        })?;
    }
    locks.sort_unstable();
    let remaining = t
        .deadline_at_ms
        .map(|d| d.saturating_sub(now_ms).min(u64::from(u32::MAX)) as u32);
    let invalid = |code, what: &str| ApiError::new(code, format!("{what} does not fit a device"));
    Ok(Assign {
        handle: t.handle(),
        priority: t.sub.priority,
        deadline_ms: remaining,
        capability: t
            .sub
            .capability
            .as_str()
            .try_into()
            .map_err(|_| invalid(ErrorCode::InvalidCapability, "the capability name"))?,
        locks,
        payload: heapless::Vec::from_slice(t.sub.payload.as_bytes())
            .map_err(|_| invalid(ErrorCode::PayloadTooLarge, "the payload"))?,
        trace_id: t
            .sub
            .trace_id
            .as_deref()
            .unwrap_or("")
            .try_into()
            .map_err(|_| invalid(ErrorCode::InvalidTraceId, "the trace id"))?,
    })
}

/// Why a task naming `lock` cannot run on `device`, listing the locks it has (from its
/// `hello`, when known).
pub(super) fn no_such_lock(device: &str, lock: &str, hello: Option<&Hello>) -> ApiError {
    let names: Vec<String> = hello
        .into_iter()
        .flat_map(|h| &h.locks)
        .map(|l| format!("{:?}", l.as_str()))
        .collect();
    let has = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    ApiError::new(
        ErrorCode::InvalidLocks,
        format!("device {device} has no lock {lock:?} (its locks: {has})"),
    )
}
