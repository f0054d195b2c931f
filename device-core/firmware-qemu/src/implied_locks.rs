//! Locks a capability takes by itself, added to its tasks' `Assign`s before the device sees
//! them.
//!
//! Why a rewrite: device-core's runtime takes (with priority inheritance) the locks an
//! `Assign` declares, and the bridge declares none yet (it refuses lock names in submissions).
//! A capability that uses a shared resource must hold its lock all the same. Until device-core
//! lets a capability declare its locks when it is registered, this module re-encodes such an
//! `Assign` with the lock appended: the frame keeps its sequence number, ack and credit, so the
//! session sees exactly the message a bridge naming the lock would have sent.

use device_core::proto::{self, MAX_FRAME, Message};

use crate::caps;

/// `frame` as the device should take it: re-encoded into `buf` when it is an `Assign` whose
/// capability implies a lock it does not declare, `frame` itself otherwise (including when it
/// does not decode: the device counts and reports that).
pub fn apply<'a>(frame: &'a [u8], buf: &'a mut [u8; MAX_FRAME]) -> &'a [u8] {
    let Ok(mut decoded) = proto::decode(frame) else {
        return frame;
    };
    let Message::Assign(assign) = &mut decoded.message else {
        return frame;
    };
    let mut changed = false;
    for lock in caps::implied_locks(&assign.capability) {
        if assign.locks.contains(&lock.index()) {
            continue;
        }
        if assign.locks.push(lock.index()).is_err() {
            // The task already declares as many locks as an `Assign` holds. Running it
            // without the implied one would break mutual exclusion; a lock id no device has
            // makes the runtime refuse it (`Reject` with `UnknownLock`) instead.
            if let Some(last) = assign.locks.last_mut() {
                *last = u8::MAX;
            }
        }
        changed = true;
    }
    if !changed {
        return frame;
    }
    // Cannot fail: an `Assign` with `MAX_TASK_LOCKS` locks still fits `MAX_FRAME`.
    match proto::encode(&decoded, buf) {
        Ok(n) => &buf[..n],
        Err(_) => frame,
    }
}
