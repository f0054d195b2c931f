//! The order log: one device-wide counter that makes the scheduler's decisions visible in task
//! results. It ticks when a task's `Assign` is delivered to the runtime and at every step of a
//! timed task, and each timed task reports the ticks of its arrival and of its first and last
//! steps (see `caps`). Comparing them across tasks shows what ran while what waited: a P0 task
//! whose first step comes before that of P4 tasks that arrived earlier overtook them; a P4 lock
//! holder whose last step comes before the first step of a P2 task that arrived while it held
//! the lock ran at an inherited priority.

use core::cell::RefCell;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::interrupt::{Mutex, free};
use device_core::proto::Handle;
use heapless::Vec;

/// Arrivals remembered until the task's first step takes them: one per task slot is enough;
/// twice that leaves room for replayed `Assign`s of tasks already started, whose entries
/// nobody takes and which age out first.
const ARRIVALS: usize = 2 * crate::SLOTS;

// Only the main loop touches these (handlers run there); the atomic and the Mutex are what
// make them sound as statics, not protection against an interrupt.
static TICKS: AtomicU32 = AtomicU32::new(0);
/// (handle, arrival tick), oldest first.
static ARRIVED: Mutex<RefCell<Vec<(Handle, u32), ARRIVALS>>> = Mutex::new(RefCell::new(Vec::new()));

/// Advances the log; returns the new tick.
pub fn tick() -> u32 {
    TICKS.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
}

/// Records that `handle`'s `Assign` was delivered (once: a replay keeps the first arrival).
pub fn note_arrival(handle: Handle) {
    let at = tick();
    free(|cs| {
        let mut arrived = ARRIVED.borrow(cs).borrow_mut();
        if arrived.iter().any(|&(h, _)| h == handle) {
            return;
        }
        if arrived.is_full() {
            arrived.remove(0);
        }
        let _ = arrived.push((handle, at));
    });
}

/// The tick at which `handle` arrived, forgotten once taken.
pub fn take_arrival(handle: Handle) -> Option<u32> {
    free(|cs| {
        let mut arrived = ARRIVED.borrow(cs).borrow_mut();
        let i = arrived.iter().position(|&(h, _)| h == handle)?;
        Some(arrived.remove(i).1)
    })
}
