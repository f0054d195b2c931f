//! Footprint probe for `device-core` (run through `measure.sh` next to this crate).
//!
//! - On a bare-metal target it is a `no_main` image whose entry calls, on opaque inputs, every
//!   operation of one part, so that `llvm-size` reports what that part costs in flash when
//!   firmware uses all of it: by default the scheduler + locks of a `Scheduler<8, 4>`; with
//!   feature `link` the codec + session; with feature `device` a whole `runtime::Device`
//!   (codec, session, runtime, scheduler).
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

/// The link part: frame codec and session, as a device uses them.
#[cfg(feature = "link")]
fn exercise_link(
    s: &mut device_core::link::Session<device_core::link::DeviceSide, 4>,
    buf: &mut [u8; device_core::proto::MAX_FRAME],
) -> usize {
    use device_core::proto::{Message, Reject, RejectReason};
    let now = Instant::from_millis(black_box(7));
    let n = black_box(buf.len());
    let _ = s.handle_bytes(&buf[..n], now);
    let reason = RejectReason::UnknownLock;
    let _ = s.send(Message::Reject(Reject {
        handle: Some(black_box(3)),
        reason,
    }));
    s.set_credit(black_box(2));
    let _ = s.handle_timeout(now);
    let mut acc = s.poll_timeout().map_or(0, |t| t.as_millis() as usize);
    while let Some(k) = s.poll_transmit(now, buf) {
        acc += k;
    }
    acc
}

/// A whole device: session + runtime + scheduler.
#[cfg(feature = "device")]
mod whole_device {
    use super::*;
    use device_core::runtime::{Ctx, Runtime, Step};

    /// 8 task slots, 4 locks, 4 capabilities, window 4, no reorder buffer.
    pub(crate) type Dev = device_core::runtime::Device<8, 4, 4, 4>;

    fn echo(ctx: &mut Ctx<'_>) -> Step {
        match ctx.result.extend_from_slice(ctx.payload) {
            Ok(()) => Step::Done,
            Err(_) => Step::Fail(1),
        }
    }

    pub(crate) fn new() -> Option<Dev> {
        let mut rt = Runtime::new();
        rt.register("echo", echo).ok()?;
        rt.declare_lock("bus").ok()?;
        Dev::new(
            "probe",
            black_box(9),
            rt,
            device_core::link::Config::default(),
            Instant::ZERO,
        )
    }

    pub(crate) fn exercise(d: &mut Dev, buf: &mut [u8; device_core::proto::MAX_FRAME]) -> usize {
        let now = Instant::from_millis(black_box(7));
        let n = black_box(buf.len());
        let _ = d.handle_bytes(&buf[..n], now);
        let _ = d.handle_timeout(now);
        let mut acc = 0;
        while d.step(now) {
            acc += 1;
        }
        while let Some(k) = d.poll_transmit(now, buf) {
            acc += k;
        }
        acc + d.poll_timeout().map_or(0, |t| t.as_millis() as usize)
    }
}

#[cfg(target_os = "none")]
mod bare {
    /// Entry symbol of the measured image; the linker keeps what it reaches.
    #[allow(unsafe_code)] // `no_mangle` is the only way to name an entry point.
    #[unsafe(no_mangle)]
    extern "C" fn _start() -> ! {
        #[cfg(feature = "link")]
        {
            use device_core::link::{Config, DeviceSide, Session};
            let mut buf = [0u8; device_core::proto::MAX_FRAME];
            let hello = device_core::proto::Hello {
                version: 0,
                device_id: heapless::String::new(),
                boot_id: core::hint::black_box(5),
                session_id: 0,
                capabilities: heapless::Vec::new(),
                locks: heapless::Vec::new(),
                slots: 8,
                max_payload: 256,
                resumable: 0,
                restartable: 0,
            };
            let mut s = Session::<DeviceSide, 4>::device(
                hello,
                Config::default(),
                device_core::Instant::ZERO,
            );
            loop {
                core::hint::black_box(super::exercise_link(&mut s, &mut buf));
            }
        }
        #[cfg(feature = "device")]
        {
            let mut buf = [0u8; device_core::proto::MAX_FRAME];
            let Some(mut d) = super::whole_device::new() else {
                loop {}
            };
            loop {
                core::hint::black_box(super::whole_device::exercise(&mut d, &mut buf));
            }
        }
        #[cfg(not(any(feature = "link", feature = "device")))]
        {
            let mut s = super::Sched::new();
            loop {
                core::hint::black_box(super::exercise(&mut s));
            }
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
