//! The millisecond clock device-core's runtime is driven by: SysTick interrupts every 1 ms.
//!
//! The tick also bounds how long the main loop sleeps, so the session's timers (retransmission,
//! heartbeat) and task deadlines are served within a millisecond of falling due.

use core::cell::Cell;

use cortex_m::interrupt::{Mutex, free};
use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::exception;
use device_core::Instant;

/// The core clock after reset as QEMU models it: the 200 MHz PLL output divided by the RCC
/// register's reset SYSDIV of 16. (QEMU does not connect SysTick's external reference clock
/// on this board, so SysTick counts core cycles.)
const CORE_CLOCK_HZ: u32 = 12_500_000;

/// Milliseconds since `start`, 64 bits so that it never wraps.
static MILLIS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

/// Starts the 1 ms tick.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_CLOCK_HZ / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// A number that differs from boot to boot, for the session's boot id (call once the tick runs).
///
/// This board has no random number generator, and QEMU does not model its flash as writable,
/// so neither a TRNG nor a boot counter is available. QEMU paces the emulated clock by the
/// host's, though, so how many times a loop reads the clock within each millisecond, and
/// where SysTick's counter stands when the millisecond turns, vary with host scheduling; eight
/// milliseconds of that are mixed here. (On silicon clocked by a crystal these are nearly
/// constant: real firmware takes its boot id from a TRNG or a counter in flash.)
pub fn boot_entropy() -> u32 {
    let mut hash: u32 = 0x811C_9DC5;
    for _ in 0..8 {
        let start = now();
        let mut reads: u32 = 0;
        while now() == start {
            reads = reads.wrapping_add(1);
        }
        for word in [reads, SYST::get_current()] {
            // FNV-1a over words, then a murmur3-style finish below.
            hash = (hash ^ word).wrapping_mul(0x0100_0193);
        }
    }
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85EB_CA6B);
    hash ^= hash >> 13;
    hash
}

/// The current reading.
pub fn now() -> Instant {
    Instant::from_millis(free(|cs| MILLIS.borrow(cs).get()))
}

#[exception]
fn SysTick() {
    free(|cs| {
        let ms = MILLIS.borrow(cs);
        ms.set(ms.get() + 1);
    });
}
