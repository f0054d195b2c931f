//! The capabilities this firmware offers. A task's payload arrives as the JSON text of the
//! submission's `payload`; a result that is JSON text reaches MQTT as JSON.
//!
//! | capability | payload | result | steps |
//! |---|---|---|---|
//! | `echo` | anything | the payload | 1 |
//! | `crc32` | anything | `{"crc32":N}`, CRC-32 (IEEE, as zlib) of the payload's bytes | 1 |
//! | `work` | a JSON number of milliseconds | the timing record below | one per main-loop pass until the time is up; resumable: taken back after it started, it resumes from its checkpoint |
//! | `bus.transfer` | as `work` | as `work` | as `work`; submit it with `"locks":["bus"]` to hold the [`BUS`] lock throughout |
//!
//! The timing record is `{"ms":M,"steps":S,"arrived":A,"first":F,"last":L}`: the duration
//! asked for, the steps run, and the [order log](crate::order) ticks of the task's arrival and
//! of its first and last steps. `arrived` is `null` if the arrival was not recorded (it always
//! is, unless 16 replayed `Assign`s crowded it out).
//!
//! Handler error codes, reported as `device_failed` ("failed with code N"): [`BAD_PAYLOAD`],
//! [`RESULT_TOO_LARGE`].

use core::fmt::Write;

use device_core::LockId;
use device_core::proto::Preemption;
use device_core::proto::{Payload, crc32};
use device_core::runtime::{Ctx, Handler, Runtime, Step};

use crate::order;

/// The shared resource `bus.transfer` tasks name: lock 0 of the scheduler, advertised as
/// [`BUS_NAME`].
pub const BUS: LockId = LockId::new(0);
/// The name tasks give [`BUS`] in their submission's `locks`.
pub const BUS_NAME: &str = "bus";
/// Locks in the scheduler.
pub const LOCKS: usize = 1;

/// Capabilities, with their handlers and how a started task of each may be preempted, in the
/// order the device advertises them. `work` keeps its whole state in the scratch bytes, so it
/// resumes from a checkpoint; `bus.transfer` holds the bus lock throughout, so it is never
/// stopped.
const CAPABILITIES: [(&str, Handler, Preemption); 4] = [
    ("echo", echo, Preemption::Never),
    ("crc32", crc, Preemption::Never),
    ("work", timed, Preemption::Resume),
    ("bus.transfer", timed, Preemption::Never),
];
/// Number of capabilities.
pub const COUNT: usize = CAPABILITIES.len();

/// The payload is not what the capability takes.
pub const BAD_PAYLOAD: u16 = 1;
/// The result does not fit in a `Payload`.
pub const RESULT_TOO_LARGE: u16 = 2;

/// Registers every capability with `runtime` and declares the bus lock, so that `Hello`
/// advertises both.
pub fn register<const N: usize>(runtime: &mut Runtime<N, LOCKS, COUNT>) {
    for (name, handler, preemption) in CAPABILITIES {
        // The runtime has room for exactly `COUNT`, so only a name too long can fail, on the
        // first boot of a build that introduced it.
        if runtime.register_with(name, handler, preemption).is_err() {
            panic!("capability name {name} is too long");
        }
    }
    // The first lock declared is lock 0; only an invalid name can fail, as above.
    match runtime.declare_lock(BUS_NAME) {
        Ok(id) if id == BUS => {}
        _ => panic!("lock {BUS_NAME} cannot be declared as lock 0"),
    }
}

fn echo(ctx: &mut Ctx<'_>) -> Step {
    match ctx.result.extend_from_slice(ctx.payload) {
        Ok(()) => Step::Done,
        Err(_) => Step::Fail(RESULT_TOO_LARGE),
    }
}

fn crc(ctx: &mut Ctx<'_>) -> Step {
    let crc = crc32(ctx.payload);
    finish(ctx.result, format_args!(r#"{{"crc32":{crc}}}"#))
}

/// Where a timed task keeps its state between steps, in `Ctx::scratch`.
struct Timing {
    /// Device clock at the first step, in ms (wrapping: durations are far below 49 days).
    start_ms: u32,
    /// How long to run, in ms.
    duration_ms: u32,
    /// Order log tick of the arrival, if recorded.
    arrived: Option<u32>,
    /// Order log tick of the first step.
    first: u32,
}

/// How `Timing::arrived == None` is kept in the scratch bytes.
const UNKNOWN: u32 = u32::MAX;

impl Timing {
    fn load(scratch: &[u8; 16]) -> Self {
        let word = |i: usize| {
            u32::from_le_bytes([
                scratch[4 * i],
                scratch[4 * i + 1],
                scratch[4 * i + 2],
                scratch[4 * i + 3],
            ])
        };
        Self {
            start_ms: word(0),
            duration_ms: word(1),
            arrived: Some(word(2)).filter(|&a| a != UNKNOWN),
            first: word(3),
        }
    }

    fn store(&self, scratch: &mut [u8; 16]) {
        let arrived = self.arrived.unwrap_or(UNKNOWN);
        let words = [self.start_ms, self.duration_ms, arrived, self.first];
        for (chunk, word) in scratch.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
    }
}

/// Runs for the payload's number of milliseconds, one step per call, then reports its timing.
fn timed(ctx: &mut Ctx<'_>) -> Step {
    let tick = order::tick();
    let now_ms = ctx.now.as_millis() as u32;
    let timing = if ctx.step == 0 {
        let Some(duration_ms) = parse_millis(ctx.payload) else {
            return Step::Fail(BAD_PAYLOAD);
        };
        let timing = Timing {
            start_ms: now_ms,
            duration_ms,
            arrived: order::take_arrival(ctx.handle),
            first: tick,
        };
        timing.store(ctx.scratch);
        timing
    } else {
        Timing::load(ctx.scratch)
    };
    if now_ms.wrapping_sub(timing.start_ms) < timing.duration_ms {
        return Step::Continue;
    }
    let steps = ctx.step + 1;
    let Timing {
        duration_ms,
        arrived,
        first,
        ..
    } = timing;
    let arrived = JsonTick(arrived);
    finish(
        ctx.result,
        format_args!(
            r#"{{"ms":{duration_ms},"steps":{steps},"arrived":{arrived},"first":{first},"last":{tick}}}"#
        ),
    )
}

/// A JSON number of milliseconds: decimal digits, surrounding whitespace allowed.
fn parse_millis(payload: &[u8]) -> Option<u32> {
    let digits = payload.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// An order log tick as JSON: the number, or `null` when not recorded.
struct JsonTick(Option<u32>);

impl core::fmt::Display for JsonTick {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(tick) => write!(f, "{tick}"),
            None => f.write_str("null"),
        }
    }
}

/// Completes with `args` as the result.
fn finish(result: &mut Payload, args: core::fmt::Arguments<'_>) -> Step {
    match PayloadWriter(result).write_fmt(args) {
        Ok(()) => Step::Done,
        Err(_) => Step::Fail(RESULT_TOO_LARGE),
    }
}

/// `core::fmt` into a `Payload`, failing when it is full.
struct PayloadWriter<'a>(&'a mut Payload);

impl Write for PayloadWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0
            .extend_from_slice(s.as_bytes())
            .map_err(|_| core::fmt::Error)
    }
}
