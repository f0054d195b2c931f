//! A bridge session and a device (session + runtime) talking over a link the fuzzer controls:
//! it delivers, drops, duplicates, reorders and corrupts frames, injects arbitrary bytes,
//! moves the clock, submits, cancels and takes back (`Preempt`) tasks — started or not, of
//! capabilities that never stop, restart or resume — sends checkpoints (`Restore`, followed
//! by its `Assign` or not), raises and lowers tasks (`Reprioritize`, of tasks holding or
//! waiting for a device lock or not), and reboots the device. Nothing may panic,
//! `poll_transmit` must run dry, the flow-control and window bounds must hold, and the bridge
//! never finds its device (of the current version) too old for `Preempt`, `Restore` or
//! `Reprioritize`.
#![no_main]

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use device_core::link::{BridgeSide, Config, Refusal, Session};
use device_core::proto::{
    Assign, Cancel, MAX_FRAME, MAX_SCRATCH, Message, Payload, Preempt, Preemption, Reprioritize,
    Restore,
};
use device_core::runtime::{Ctx, Device, Runtime, Step};
use device_core::{Instant, Priority};
use libfuzzer_sys::fuzz_target;

const SLOTS: usize = 4;
const BRIDGE_WINDOW: usize = 8;
type Dev = Device<SLOTS, 2, 3, 4, 2>;
type Bridge = Session<BridgeSide, BRIDGE_WINDOW, 4>;

fn echo(ctx: &mut Ctx<'_>) -> Step {
    let _ = ctx.result.extend_from_slice(ctx.payload);
    Step::Done
}

fn slow(ctx: &mut Ctx<'_>) -> Step {
    if ctx.step >= u32::from(ctx.payload.first().copied().unwrap_or(0) % 8) {
        Step::Done
    } else {
        Step::Continue
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Tick(u16),
    /// Move the oldest (or newest) frame of one direction: deliver, drop, or deliver twice,
    /// optionally with one bit flipped.
    Move {
        to_device: bool,
        newest: bool,
        fate: u8,
        flip: Option<(u16, u8)>,
    },
    Inject {
        to_device: bool,
        bytes: Vec<u8>,
    },
    Assign {
        handle: u8,
        /// echo (never preempted once started), slow (resumes), again (restarts).
        capability: u8,
        priority: u8,
        payload: u8,
        deadline: Option<u16>,
        lock: Option<u8>,
    },
    Cancel(u8),
    Preempt(u8),
    /// Run the task with this handle at priority `priority % 6` from now on.
    Reprioritize {
        handle: u8,
        priority: u8,
    },
    /// A checkpoint for `handle`, then (if `assign`) its `Assign` of that capability.
    Restore {
        handle: u8,
        steps: u8,
        scratch: Vec<u8>,
        result: Vec<u8>,
        assign: Option<u8>,
    },
    Steps(u8),
    Reboot,
}

fn device(boot: u32, now: Instant) -> Dev {
    let mut rt = Runtime::new();
    let _ = rt.register("echo", echo);
    let _ = rt.register_with("slow", slow, Preemption::Resume);
    let _ = rt.register_with("again", slow, Preemption::Restart);
    // Named, so that every `Hello` carries lock names; lock 1 stays unnamed, and lock 2 (an
    // `Assign` may send it) does not exist.
    let _ = rt.declare_lock("bus");
    Dev::new("fuzz", boot, rt, Config::default(), now).expect("valid id")
}

/// Queues everything `poll` has to send; it must run dry within a bounded number of frames.
fn drain(
    mut poll: impl FnMut(&mut [u8]) -> Option<usize>,
    into: &mut VecDeque<Vec<u8>>,
    who: &str,
) {
    let mut buf = [0u8; MAX_FRAME];
    for _ in 0..=64 {
        let Some(n) = poll(&mut buf) else { return };
        into.push_back(buf[..n].to_vec());
    }
    panic!("{who} poll_transmit never runs dry");
}

struct World {
    now: u64,
    boot: u32,
    dev: Dev,
    br: Bridge,
    to_device: VecDeque<Vec<u8>>,
    to_bridge: VecDeque<Vec<u8>>,
}

impl World {
    fn flush(&mut self) {
        let t = Instant::from_millis(self.now);
        drain(
            |b| self.dev.poll_transmit(t, b),
            &mut self.to_bridge,
            "device",
        );
        drain(
            |b| self.br.poll_transmit(t, b),
            &mut self.to_device,
            "bridge",
        );
        // Keep the queues bounded: a real link has finite buffers.
        self.to_device.truncate(256);
        self.to_bridge.truncate(256);
    }

    fn deliver(&mut self, to_device: bool, bytes: &[u8]) {
        let t = Instant::from_millis(self.now);
        if to_device {
            let _ = self.dev.handle_bytes(bytes, t);
        } else {
            let _ = self.br.handle_bytes(bytes, t);
            while self.br.poll_event().is_some() {}
        }
    }

    fn check(&self) {
        assert!(self.br.unacknowledged() <= BRIDGE_WINDOW);
        assert!(
            usize::from(self.br.credit()) <= SLOTS,
            "credit beyond the device's slots"
        );
        assert!(usize::from(self.dev.runtime().free_slots()) <= SLOTS);
    }
}

fn assign(
    handle: u8,
    capability: u8,
    priority: u8,
    payload: u8,
    deadline: Option<u16>,
    lock: Option<u8>,
) -> Assign {
    let mut locks = heapless::Vec::new();
    if let Some(l) = lock {
        let _ = locks.push(l % 3);
    }
    let capability = ["echo", "slow", "again"][usize::from(capability % 3)];
    Assign {
        handle: u32::from(handle),
        priority: Priority::from_level(priority % 6).unwrap_or(Priority::P3),
        deadline_ms: deadline.map(u32::from),
        capability: capability.try_into().unwrap(),
        locks,
        payload: Payload::from_slice(&[payload; 3]).unwrap(),
        trace_id: heapless::String::new(),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World {
        now: 0,
        boot: 1,
        dev: device(1, Instant::ZERO),
        br: Bridge::bridge(Config::default(), Instant::ZERO),
        to_device: VecDeque::new(),
        to_bridge: VecDeque::new(),
    };
    for op in ops.into_iter().take(512) {
        let t = Instant::from_millis(w.now);
        match op {
            Op::Tick(ms) => {
                w.now += u64::from(ms);
                let t = Instant::from_millis(w.now);
                w.dev.handle_timeout(t);
                w.br.handle_timeout(t);
                if w.br.state() == device_core::link::State::Closed {
                    w.br = Bridge::bridge(Config::default(), t);
                }
            }
            Op::Move {
                to_device,
                newest,
                fate,
                flip,
            } => {
                let q = if to_device {
                    &mut w.to_device
                } else {
                    &mut w.to_bridge
                };
                let Some(mut bytes) = (if newest { q.pop_back() } else { q.pop_front() }) else {
                    continue;
                };
                if let Some((at, bit)) = flip {
                    if !bytes.is_empty() {
                        let i = usize::from(at) % bytes.len();
                        bytes[i] ^= 1 << (bit % 8);
                    }
                }
                for _ in 0..(fate % 3) {
                    w.deliver(to_device, &bytes);
                }
            }
            Op::Inject { to_device, bytes } => w.deliver(to_device, &bytes),
            Op::Assign {
                handle,
                capability,
                priority,
                payload,
                deadline,
                lock,
            } => {
                let a = assign(handle, capability, priority, payload, deadline, lock);
                let _ = w.br.send(Message::Assign(a));
            }
            Op::Restore {
                handle,
                steps,
                scratch,
                result,
                assign: then,
            } => {
                let r = Restore {
                    handle: u32::from(handle),
                    steps: u32::from(steps),
                    scratch: heapless::Vec::from_slice(&scratch[..scratch.len().min(MAX_SCRATCH)])
                        .unwrap(),
                    result: Payload::from_slice(&result[..result.len().min(64)]).unwrap(),
                };
                if let Err(e) = w.br.send(Message::Restore(r)) {
                    assert_ne!(
                        e.reason,
                        Refusal::Unsupported,
                        "the device speaks the current version"
                    );
                }
                if let Some(capability) = then {
                    let a = assign(handle, capability, 3, steps, None, None);
                    let _ = w.br.send(Message::Assign(a));
                }
            }
            Op::Cancel(h) => {
                let _ = w.br.send(Message::Cancel(Cancel {
                    handle: u32::from(h),
                }));
            }
            Op::Preempt(h) => {
                let handle = u32::from(h);
                if let Err(e) = w.br.send(Message::Preempt(Preempt { handle })) {
                    assert_ne!(
                        e.reason,
                        Refusal::Unsupported,
                        "the device speaks the current version"
                    );
                }
            }
            Op::Reprioritize { handle, priority } => {
                let r = Reprioritize {
                    handle: u32::from(handle),
                    priority: Priority::from_level(priority % 6).unwrap_or(Priority::P3),
                };
                if let Err(e) = w.br.send(Message::Reprioritize(r)) {
                    assert_ne!(
                        e.reason,
                        Refusal::Unsupported,
                        "the device speaks the current version"
                    );
                }
            }
            Op::Steps(n) => {
                for _ in 0..n % 16 {
                    if !w.dev.step(t) {
                        break;
                    }
                }
            }
            Op::Reboot => {
                w.boot += 1;
                w.dev = device(w.boot, t);
            }
        }
        w.flush();
        w.check();
    }
});
