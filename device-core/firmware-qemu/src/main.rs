//! `edge-firmware-qemu`: device-core as firmware on QEMU's `lm3s6965evb` (a TI LM3S6965,
//! Cortex-M3, 256 KiB flash, 64 KiB RAM), the device side of the edge bridge over UART0.
//!
//! Run it against a bridge whose plain TCP device link listens on 127.0.0.1:7878 (the
//! bridge's default) with `cargo run --release` from this directory; QEMU connects its
//! serial port to the bridge (see `.cargo/config.toml`). Logs appear on QEMU's standard output.
//!
//! # Layout
//! - `main.rs`: start-up and the main loop, which moves bytes between the UART and
//!   device-core's [`Device`] and sleeps when there is nothing to do.
//! - [`caps`]: the capabilities offered (`echo`, `crc32`, `work`, `bus.transfer`).
//! - [`order`]: the order log that makes scheduling visible in task results.
//! - [`uart`]: the PL011 UART0, receiving by interrupt.
//! - [`clock`]: the SysTick millisecond clock, and boot entropy.
//! - [`host`]: semihosting logs, exit codes, panic and fault handlers.
#![no_std]
#![no_main]

mod caps;
mod clock;
mod host;
mod order;
mod uart;

use core::mem::MaybeUninit;

use cortex_m_rt::entry;
use device_core::link::{Config, Event};
use device_core::proto::{Deframer, MAX_FRAME, Message};
use device_core::runtime::{Device, Runtime};

use host::log;

/// The id the device announces; the bridge names it in status events and topics.
const DEVICE_ID: &str = "qemu-m3";
/// Task slots: how many tasks the device holds at once (running, queued by priority, or
/// finished with their report not yet acknowledged).
pub(crate) const SLOTS: usize = 8;
/// Reliable messages in flight to the bridge (reports and rejects) before acks are needed.
const WINDOW: usize = 4;

/// The device: `SLOTS` tasks, the bus lock, a send window of `WINDOW` and no reorder buffer
/// (a UART does not reorder).
type Firmware = Device<SLOTS, { caps::LOCKS }, { caps::COUNT }, WINDOW>;

#[entry]
fn main() -> ! {
    // Static rather than on the stack, so that the image's RAM figure counts it; `MaybeUninit`
    // (not `Option`) keeps it in .bss, where an `Option`'s `None` would cost its size in flash.
    static mut DEVICE: MaybeUninit<Firmware> = MaybeUninit::uninit();
    serve(boot(DEVICE))
}

/// Brings up the clock, the UART and the device, in `slot`.
///
/// Not inlined: building the device by value takes about 16 KiB of stack for temporaries
/// (the runtime, task table included, is copied on its way into `slot`), and that frame must
/// be gone before the main loop runs, which needs under 5 KiB.
#[inline(never)]
fn boot(slot: &'static mut MaybeUninit<Firmware>) -> &'static mut Firmware {
    let core = cortex_m::Peripherals::take().expect("core peripherals are taken only here");
    clock::start(core.SYST);
    uart::init();
    let boot_id = clock::boot_entropy();
    let mut runtime = Runtime::new();
    caps::register(&mut runtime);
    let firmware = Firmware::new(DEVICE_ID, boot_id, runtime, Config::default(), clock::now())
        .expect("DEVICE_ID is at most MAX_DEVICE_ID bytes");
    log!("{DEVICE_ID}: boot id {boot_id:#010x}, {SLOTS} task slots; saying hello on UART0");
    slot.write(firmware)
}

/// The main loop: input, timers, one task step, output; sleep when none of them had work.
fn serve(device: &mut Firmware) -> ! {
    let mut deframer: Deframer<MAX_FRAME> = Deframer::new();
    let mut input = [0u8; 64];
    let mut output = [0u8; MAX_FRAME];
    loop {
        let now = clock::now();
        let received = uart::receive(&mut input);
        let mut rest = &input[..received];
        while !rest.is_empty() {
            let (used, frame) = deframer.push_raw(rest);
            rest = &rest[used..];
            match frame {
                Some(Ok(bytes)) => take(device, bytes, now),
                Some(Err(e)) => log!("dropped bytes from the bridge: {e}"),
                None => {}
            }
        }
        if device.poll_timeout().is_some_and(|at| at <= now)
            && device.handle_timeout(now) == Some(Event::PeerLost)
        {
            log!("the bridge went silent; saying hello again");
        }
        // One step, so that a task arriving meanwhile preempts at the next step boundary.
        let stepped = device.step(now);
        while let Some(n) = device.poll_transmit(now, &mut output) {
            uart::send(&output[..n]);
        }
        if received == 0 && !stepped {
            uart::sleep_unless_received();
        }
    }
}

/// Hands one received frame to the device.
fn take(device: &mut Firmware, frame: &[u8], now: device_core::Instant) {
    match device.handle_bytes(frame, now) {
        Ok(Some(Event::Welcomed)) => log!("session established"),
        Ok(Some(Event::Received(Message::Assign(a)))) => {
            order::note_arrival(a.handle);
            log!(
                "task {} arrived: {} at {:?}",
                a.handle,
                a.capability,
                a.priority
            );
        }
        Ok(_) => {}
        Err(e) => log!("bad frame from the bridge: {e}"),
    }
}
