//! Deterministic simulation of a bridge and a device over a bad link.
//!
//! A bridge-side `Session` with a minimal dispatcher (the bridge's queue in miniature: assign
//! on credit, re-send what a new session lost, take each report once) talks to a real
//! `runtime::Device` over a simulated datagram channel with seeded loss, duplication,
//! reordering and corruption, on a simulated clock. Halfway through, the device reboots.
//!
//! Checked: every task ends with its correct result at the bridge; no handle runs twice in one
//! boot; the only handles that run twice at all are ones the reboot caught between running and
//! the bridge acknowledging their report (at most the device's slot count); flow control is
//! exact (the device never has to refuse an Assign for lack of a slot).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use device_core::link::{BridgeSide, Config, Event, Refusal, Session};
use device_core::proto::{Assign, MAX_FRAME, Message, Payload, RejectReason, TaskReport};
use device_core::runtime::{Ctx, Device, Runtime, Step};
use device_core::{Instant, Priority};

const TASKS: u32 = 10_000;
const SLOTS: usize = 8;
/// Device: window 8, reorder buffer 4. Bridge: window 16, reorder buffer 16.
type Dev = Device<SLOTS, 2, 2, 8, 4>;
type Bridge = Session<BridgeSide, 16, 16>;

thread_local! {
    static BOOT: RefCell<u32> = const { RefCell::new(0) };
    /// (boot, handle) -> executions.
    static RUNS: RefCell<BTreeMap<(u32, u32), u32>> = const { RefCell::new(BTreeMap::new()) };
}

/// Echo that takes two steps, counting every execution.
fn echo(ctx: &mut Ctx<'_>) -> Step {
    if ctx.step == 0 {
        return Step::Continue;
    }
    let boot = BOOT.with(|b| *b.borrow());
    RUNS.with(|r| *r.borrow_mut().entry((boot, ctx.handle)).or_default() += 1);
    ctx.result.extend_from_slice(ctx.payload).unwrap();
    Step::Done
}

/// SplitMix64: a seeded, reproducible random source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default, Debug)]
struct LinkStats {
    sent: u64,
    lost: u64,
    duplicated: u64,
    corrupted: u64,
}

/// One direction of the channel: datagrams with delivery times (random delays reorder them).
#[derive(Default)]
struct Channel {
    in_flight: Vec<(u64, u64, Vec<u8>)>,
    order: u64,
    stats: LinkStats,
}

impl Channel {
    const LOSS: u64 = 20;
    const DUPLICATION: u64 = 10;
    const CORRUPTION: u64 = 1;

    fn send(&mut self, rng: &mut Rng, now: u64, bytes: &[u8]) {
        self.stats.sent += 1;
        if rng.chance(Self::LOSS) {
            self.stats.lost += 1;
            return;
        }
        let copies = if rng.chance(Self::DUPLICATION) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let mut b = bytes.to_vec();
            if rng.chance(Self::CORRUPTION) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
                self.stats.corrupted += 1;
            }
            self.order += 1;
            self.in_flight
                .push((now + 1 + rng.below(30), self.order, b));
        }
    }

    fn due(&mut self, now: u64) -> Vec<Vec<u8>> {
        let (mut due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|d| d.0 <= now);
        self.in_flight = later;
        due.sort_by_key(|d| (d.0, d.1));
        due.into_iter().map(|d| d.2).collect()
    }
}

#[derive(Clone, PartialEq, Debug)]
enum TaskState {
    Queued,
    Sent,
    Done(Vec<u8>),
}

/// The bridge's dispatcher in miniature.
struct Dispatcher {
    tasks: Vec<TaskState>,
    queue: VecDeque<u32>,
    done: u32,
    duplicate_reports: u32,
    rejects: BTreeMap<String, u32>,
    redispatched: u32,
}

impl Dispatcher {
    fn payload(handle: u32) -> Vec<u8> {
        format!("task-{handle}").into_bytes()
    }

    fn dispatch(&mut self, s: &mut Bridge) {
        while let Some(&h) = self.queue.front() {
            let a = Assign {
                handle: h,
                priority: Priority::from_level((h % 6) as u8).unwrap(),
                deadline_ms: None,
                capability: "echo".try_into().unwrap(),
                locks: heapless::Vec::new(),
                payload: Payload::from_slice(&Self::payload(h)).unwrap(),
                trace_id: heapless::String::new(),
            };
            match s.send(Message::Assign(a)) {
                Ok(()) => {
                    self.queue.pop_front();
                    self.tasks[h as usize] = TaskState::Sent;
                }
                Err(e) => {
                    assert!(matches!(
                        e.reason,
                        Refusal::NoCredit | Refusal::WindowFull | Refusal::NotEstablished
                    ));
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            // A new session lost whatever the old one had not delivered: send again every
            // task without a result (harmless if the device already has it).
            Event::Connected { .. } | Event::PeerLost => {
                for h in 1..=TASKS {
                    if self.tasks[h as usize] == TaskState::Sent {
                        self.tasks[h as usize] = TaskState::Queued;
                        self.queue.push_front(h);
                        self.redispatched += 1;
                    }
                }
                self.queue.make_contiguous().sort_unstable();
            }
            Event::Received(Message::Report(r)) if r.state.is_terminal() => {
                assert_eq!(r.state, TaskReport::Completed, "{r:?}");
                let h = r.handle as usize;
                match &self.tasks[h] {
                    TaskState::Done(prev) => {
                        assert_eq!(
                            prev[..],
                            r.result[..],
                            "a duplicate report changed the result"
                        );
                        self.duplicate_reports += 1;
                    }
                    _ => {
                        self.tasks[h] = TaskState::Done(r.result.to_vec());
                        self.done += 1;
                    }
                }
            }
            Event::Received(Message::Reject(r)) => {
                *self.rejects.entry(format!("{:?}", r.reason)).or_default() += 1;
                if r.reason == RejectReason::NoFreeSlot {
                    let h = r.handle.unwrap();
                    self.tasks[h as usize] = TaskState::Queued;
                    self.queue.push_back(h);
                }
            }
            _ => {}
        }
    }
}

fn new_device(boot: u32, now: u64) -> Dev {
    BOOT.with(|b| *b.borrow_mut() = boot);
    let mut rt = Runtime::new();
    rt.register("echo", echo).unwrap();
    Dev::new(
        "sim-device",
        boot,
        rt,
        Config::default(),
        Instant::from_millis(now),
    )
    .unwrap()
}

#[test]
fn ten_thousand_tasks_over_a_lossy_link_with_a_reboot() {
    let mut rng = Rng(0x5EED_2026);
    let mut to_device = Channel::default();
    let mut to_bridge = Channel::default();
    let mut device = new_device(1, 0);
    let mut bridge = Bridge::bridge(Config::default(), Instant::ZERO);
    let mut app = Dispatcher {
        tasks: vec![TaskState::Queued; TASKS as usize + 1],
        queue: (1..=TASKS).collect(),
        done: 0,
        duplicate_reports: 0,
        rejects: BTreeMap::new(),
        redispatched: 0,
    };
    let mut pending_at_reboot = None;
    let mut retired_stats = vec![];
    let mut buf = [0u8; MAX_FRAME];
    let mut now = 0u64;
    while app.done < TASKS {
        now += 1;
        assert!(
            now < 3_600_000,
            "not finished after an hour of simulated time: {} done",
            app.done
        );
        let t = Instant::from_millis(now);

        for bytes in to_device.due(now) {
            let _ = device.handle_bytes(&bytes, t);
        }
        if device.poll_timeout().is_some_and(|d| d <= t) {
            device.handle_timeout(t);
        }
        for _ in 0..4 {
            if !device.step(t) {
                break;
            }
        }
        while let Some(n) = device.poll_transmit(t, &mut buf) {
            to_bridge.send(&mut rng, now, &buf[..n]);
        }

        for bytes in to_bridge.due(now) {
            if let Ok(Some(e)) = bridge.handle_bytes(&bytes, t) {
                app.on_event(e);
            }
            while let Some(e) = bridge.poll_event() {
                app.on_event(e);
            }
        }
        if bridge.poll_timeout().is_some_and(|d| d <= t) {
            if let Some(e) = bridge.handle_timeout(t) {
                app.on_event(e);
            }
        }
        if bridge.state() == device_core::link::State::Closed {
            retired_stats.push(bridge.stats());
            bridge = Bridge::bridge(Config::default(), t);
        }
        app.dispatch(&mut bridge);
        while let Some(n) = bridge.poll_transmit(t, &mut buf) {
            to_device.send(&mut rng, now, &buf[..n]);
        }

        if pending_at_reboot.is_none() && app.done >= TASKS / 2 {
            let pending: BTreeSet<u32> = (1..=TASKS)
                .filter(|&h| !matches!(app.tasks[h as usize], TaskState::Done(_)))
                .collect();
            pending_at_reboot = Some(pending);
            retired_stats.push(device.session().stats());
            device = new_device(2, now);
        }
    }

    let runs = RUNS.with(|r| r.borrow().clone());
    let mut per_handle: BTreeMap<u32, u32> = BTreeMap::new();
    for (&(_, h), &n) in &runs {
        assert_eq!(n, 1, "handle {h} ran {n} times in one boot");
        *per_handle.entry(h).or_default() += 1;
    }
    let twice: Vec<u32> = per_handle
        .iter()
        .filter(|e| *e.1 > 1)
        .map(|e| *e.0)
        .collect();
    let pending = pending_at_reboot.expect("the device rebooted");
    for h in 1..=TASKS {
        assert_eq!(
            app.tasks[h as usize],
            TaskState::Done(Dispatcher::payload(h)),
            "task {h}"
        );
        assert!(per_handle.contains_key(&h), "task {h} never ran");
    }
    assert!(
        twice.iter().all(|h| pending.contains(h)),
        "re-run although reported before the reboot"
    );
    assert!(
        twice.len() <= SLOTS,
        "{} re-runs, more than the device's slots",
        twice.len()
    );
    assert_eq!(
        app.rejects.get("NoFreeSlot"),
        None,
        "flow control let an Assign through without a slot"
    );
    assert!(
        app.rejects.is_empty(),
        "unexpected rejects: {:?}",
        app.rejects
    );

    let dev = device.session().stats();
    let br = bridge.stats();
    let sum = |f: fn(&device_core::link::Stats) -> u32| -> u32 {
        retired_stats.iter().chain([&dev, &br]).map(f).sum()
    };
    println!(
        "simulated {:.1} s, seed 0x5EED2026, loss 20 %, duplication 10 %, corruption 1 %, delay 1-30 ms",
        now as f64 / 1000.0
    );
    println!(
        "tasks: {TASKS} assigned, {} completed with the right result, {} reports delivered twice",
        app.done, app.duplicate_reports
    );
    println!(
        "executions: {} in all; at most once per boot; {} handles ran again after the reboot (all caught in flight by it; {} were pending)",
        runs.len(),
        twice.len(),
        pending.len()
    );
    println!("bridge -> device datagrams: {:?}", to_device.stats);
    println!("device -> bridge datagrams: {:?}", to_bridge.stats);
    println!(
        "sessions: {}, messages sent {}, retransmitted {} ({} fast), duplicates dropped {}, reordered {}, out-of-order dropped {}, bad frames {}, tasks re-dispatched by the bridge {}",
        sum(|s| s.sessions),
        sum(|s| s.sent),
        sum(|s| s.retransmitted),
        sum(|s| s.fast_retransmits),
        sum(|s| s.duplicates),
        sum(|s| s.reordered),
        sum(|s| s.out_of_order),
        sum(|s| s.bad_frames),
        app.redispatched
    );
    assert!(sum(|s| s.retransmitted) > 0 && sum(|s| s.duplicates) > 0 && sum(|s| s.bad_frames) > 0);
}
