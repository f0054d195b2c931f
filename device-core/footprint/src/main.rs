//! Footprint probe for `device-core` (run through `measure.sh` next to this crate).
//!
//! - On a bare-metal target it is a `no_main` image whose entry calls every scheduler and lock
//!   operation of a `Scheduler<8, 4>` on opaque inputs, so that `llvm-size` reports what the
//!   scheduler + locks cost in flash when firmware uses all of them.
//! - On the host it prints the RAM figures (`size_of`) and runs fixed workloads through
//!   `#[inline(never)]` wrappers, so that `valgrind --tool=callgrind` counts the instructions of
//!   each operation. The call counts are printed so the script can divide.
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::hint::black_box;
use device_core::{Instant, LockId, Priority, Scheduler, TaskSpec};

/// The configuration the figures are quoted for: 8 task slots, 4 locks.
type Sched = Scheduler<8, 4>;

/// Calls every operation once with inputs the optimiser cannot see through.
fn exercise(s: &mut Sched) -> usize {
    let now = Instant::from_millis(black_box(5));
    let prio = Priority::from_level(black_box(3)).unwrap_or(Priority::P5);
    let lock = LockId::new(black_box(1));
    let mut acc = 0;
    if let Ok(t) = s.admit(
        TaskSpec::new(prio).deadline(now.saturating_add_millis(10)),
        now,
    ) {
        let _ = s.set_lock_policy(lock, device_core::LockPolicy::Ceiling(prio));
        let _ = s.next(now);
        acc += usize::from(s.should_preempt());
        let _ = s.lock(t, lock, Some(now), now);
        let _ = s.try_lock(t, LockId::new(black_box(2)));
        let _ = s.unlock(t, lock);
        let _ = s.set_base_priority(t, Priority::P1);
        acc += s.poll_timeout().map_or(0, |i| i.as_millis() as usize);
        while let Some(e) = s.poll_event() {
            acc += black_box(&e as *const _ as usize) & 1;
        }
        let _ = s.cancel(black_box(t));
        let _ = s.fail(t);
        let _ = s.complete(t);
        let _ = s.remove(t);
    }
    s.advance(now);
    acc
}

#[cfg(target_os = "none")]
mod bare {
    /// Entry symbol of the measured image; the linker keeps what it reaches.
    #[allow(unsafe_code)] // `no_mangle` is the only way to name an entry point.
    #[unsafe(no_mangle)]
    extern "C" fn _start() -> ! {
        let mut s = super::Sched::new();
        loop {
            core::hint::black_box(super::exercise(&mut s));
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

#[cfg(not(target_os = "none"))]
mod host {
    use super::*;

    /// Iterations of each workload.
    pub(super) const ITERATIONS: u32 = 10_000;
    const BUS: LockId = LockId::new(0);
    const AUX: LockId = LockId::new(1);
    const T0: Instant = Instant::ZERO;

    #[inline(never)]
    pub(super) fn op_next(s: &mut Sched) -> Option<device_core::TaskId> {
        s.next(black_box(T0))
    }

    #[inline(never)]
    pub(super) fn op_lock(s: &mut Sched, t: device_core::TaskId, l: LockId) -> bool {
        s.lock(t, l, None, T0) == Ok(device_core::Acquire::Acquired)
    }

    #[inline(never)]
    pub(super) fn op_unlock(s: &mut Sched, t: device_core::TaskId, l: LockId) {
        s.unlock(t, l).unwrap();
    }

    #[inline(never)]
    pub(super) fn op_admit(s: &mut Sched, spec: TaskSpec) -> device_core::TaskId {
        s.admit(spec, T0).unwrap()
    }

    /// Pick with 7 other ready tasks spread over the levels: the picked task finishes and is
    /// re-admitted, so every `next()` switches to a newly chosen task.
    pub(super) fn pick_workload() {
        let mut s = Sched::new();
        for p in [1, 2, 2, 3, 4, 5, 5] {
            op_admit(&mut s, TaskSpec::new(Priority::from_level(p).unwrap()));
        }
        let spec = TaskSpec::new(Priority::P0);
        for _ in 0..ITERATIONS {
            let t = op_admit(&mut s, spec);
            assert_eq!(op_next(&mut s), Some(t));
            s.complete(t).unwrap();
            s.remove(t).unwrap();
        }
    }

    /// Uncontended lock/unlock by the executing task, 7 other tasks ready.
    pub(super) fn uncontended_workload() {
        let mut s = Sched::new();
        for p in [1, 2, 2, 3, 4, 5, 5] {
            op_admit(&mut s, TaskSpec::new(Priority::from_level(p).unwrap()));
        }
        let t = op_next(&mut s).unwrap();
        for _ in 0..ITERATIONS {
            assert!(op_lock(&mut s, t, BUS));
            op_unlock(&mut s, t, BUS);
        }
    }

    /// Contended: a P4 holder of BUS; a P2 task holding AUX blocks on BUS (boosting the
    /// holder), the holder unlocks and hands BUS over. Five P5 tasks are ready throughout.
    pub(super) fn contended_workload() {
        let mut s = Sched::new();
        for _ in 0..5 {
            let p = 5;
            op_admit(&mut s, TaskSpec::new(Priority::from_level(p).unwrap()));
        }
        let holder = op_admit(&mut s, TaskSpec::new(Priority::P0));
        assert_eq!(op_next(&mut s), Some(holder));
        s.set_base_priority(holder, Priority::P4).unwrap();
        for _ in 0..ITERATIONS {
            assert!(op_lock(&mut s, holder, BUS));
            let waiter = op_admit(&mut s, TaskSpec::new(Priority::P2));
            assert_eq!(op_next(&mut s), Some(waiter));
            assert!(op_lock(&mut s, waiter, AUX));
            assert!(!op_lock(&mut s, waiter, BUS), "must block");
            assert_eq!(op_next(&mut s), Some(holder));
            op_unlock(&mut s, holder, BUS);
            assert_eq!(op_next(&mut s), Some(waiter));
            s.unlock(waiter, BUS).unwrap();
            s.unlock(waiter, AUX).unwrap();
            s.complete(waiter).unwrap();
            s.remove(waiter).unwrap();
            assert_eq!(op_next(&mut s), Some(holder));
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    let workload = std::env::args().nth(1).unwrap_or_default();
    match workload.as_str() {
        "pick" => host::pick_workload(),
        "uncontended" => host::uncontended_workload(),
        "contended" => host::contended_workload(),
        _ => {
            let mut s = Sched::new();
            black_box(exercise(&mut s));
            println!("Scheduler<8, 4>: {} bytes", core::mem::size_of::<Sched>());
            println!(
                "Scheduler<16, 8>: {} bytes",
                core::mem::size_of::<Scheduler<16, 8>>()
            );
            println!("usage: device-core-footprint pick|uncontended|contended (under callgrind)");
            return;
        }
    }
    println!("{workload}: {} iterations", host::ITERATIONS);
}
