//! The Mars Pathfinder priority inversion (1997), replayed on the scheduler.
//!
//! On Pathfinder a low-priority meteorological task held the information bus mutex, the
//! high-priority bus management task blocked on it, and a medium-priority communications task,
//! CPU-bound, kept the low task from running. Bus management missed its deadline and the
//! watchdog reset the spacecraft. The mutex had priority inheritance off.
//!
//! Here every task is a script of cooperative steps, one step per millisecond; `next()` picks
//! who runs each step, exactly as the runtime will.

use device_core::{Acquire, Instant, LockId, LockPolicy, Priority, Scheduler, TaskSpec};

const BUS: LockId = LockId::new(0);

#[derive(Clone, Copy, Debug)]
enum Step {
    Lock,
    Work,
    Unlock,
}

/// Meteo: takes the bus for a critical section of 5 steps (lock, 3 × work, unlock).
const METEO: &[Step] = &[Step::Lock, Step::Work, Step::Work, Step::Work, Step::Unlock];
const METEO_CRITICAL_SECTION: u32 = 5;
/// Bus management: short, needs the bus.
const BUS_MGMT: &[Step] = &[Step::Lock, Step::Work, Step::Unlock];
/// Communications: long and CPU-bound, no locks.
const COMMS: &[Step] = &[Step::Work; 30];
/// Bus management and comms arrive while meteo is inside its critical section.
const ARRIVAL_MS: u64 = 2;
/// Bus management must be done this many steps after arriving or the watchdog resets.
const WATCHDOG_STEPS: u32 = 10;

#[derive(Debug)]
struct Outcome {
    /// Task names in completion order.
    finished: Vec<&'static str>,
    /// Steps other tasks executed between bus management's arrival and its completion.
    high_blocking: u32,
}

fn replay(policy: LockPolicy) -> Outcome {
    let mut s: Scheduler<4, 1> = Scheduler::new();
    s.set_lock_policy(BUS, policy).unwrap();
    let t0 = Instant::ZERO;
    let arrive = Instant::from_millis(ARRIVAL_MS);
    let tasks = [
        (
            "meteo",
            s.admit(TaskSpec::new(Priority::P4), t0).unwrap(),
            METEO,
        ),
        (
            "bus_mgmt",
            s.admit(TaskSpec::new(Priority::P0).release_at(arrive), t0)
                .unwrap(),
            BUS_MGMT,
        ),
        (
            "comms",
            s.admit(TaskSpec::new(Priority::P2).release_at(arrive), t0)
                .unwrap(),
            COMMS,
        ),
    ];
    let high = tasks[1].1;
    let mut pc = [0usize; 3];
    let mut out = Outcome {
        finished: vec![],
        high_blocking: 0,
    };
    for ms in 0..200 {
        let now = Instant::from_millis(ms);
        let Some(id) = s.next(now) else {
            if out.finished.len() == tasks.len() {
                return out;
            }
            continue;
        };
        let k = tasks.iter().position(|t| t.1 == id).unwrap();
        let (name, _, script) = tasks[k];
        if id != high && ms >= ARRIVAL_MS && !out.finished.contains(&"bus_mgmt") {
            out.high_blocking += 1;
        }
        match script[pc[k]] {
            // A blocked Lock step is re-run when the task is picked again, and then finds the
            // lock handed over to it.
            Step::Lock if !s.holds(id, BUS) => {
                if s.lock(id, BUS, None, now).unwrap() == Acquire::Blocked {
                    continue;
                }
            }
            Step::Lock => {}
            Step::Work => {}
            Step::Unlock => s.unlock(id, BUS).unwrap(),
        }
        pc[k] += 1;
        if pc[k] == script.len() {
            s.complete(id).unwrap();
            out.finished.push(name);
        }
    }
    panic!("{policy:?}: the replay did not finish in 200 steps: {out:?}");
}

#[test]
fn pathfinder_with_inheritance_bus_management_finishes_first() {
    let o = replay(LockPolicy::Inherit);
    println!(
        "inheritance: finished {:?}, bus_mgmt blocked for {} steps",
        o.finished, o.high_blocking
    );
    assert_eq!(o.finished, ["meteo", "bus_mgmt", "comms"]);
    assert!(
        o.high_blocking <= METEO_CRITICAL_SECTION,
        "blocked {} steps, longer than meteo's critical section ({METEO_CRITICAL_SECTION})",
        o.high_blocking
    );
    assert!(o.high_blocking < WATCHDOG_STEPS);
}

#[test]
fn pathfinder_without_inheritance_inverts_and_trips_the_watchdog() {
    let o = replay(LockPolicy::Plain);
    println!(
        "no inheritance: finished {:?}, bus_mgmt blocked for {} steps",
        o.finished, o.high_blocking
    );
    assert_eq!(
        o.finished,
        ["comms", "meteo", "bus_mgmt"],
        "the medium task runs first"
    );
    assert!(o.high_blocking > METEO_CRITICAL_SECTION);
    assert!(
        o.high_blocking >= WATCHDOG_STEPS,
        "the watchdog would reset the spacecraft"
    );
}

#[test]
fn pathfinder_with_priority_ceiling_is_bounded_too() {
    let o = replay(LockPolicy::Ceiling(Priority::P0));
    println!(
        "ceiling: finished {:?}, bus_mgmt blocked for {} steps",
        o.finished, o.high_blocking
    );
    assert_eq!(o.finished, ["meteo", "bus_mgmt", "comms"]);
    assert!(o.high_blocking <= METEO_CRITICAL_SECTION);
}
