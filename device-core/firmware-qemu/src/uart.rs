//! UART0 of the LM3S6965, an ARM PL011, as QEMU's `lm3s6965evb` models it: the device link.
//!
//! Receiving is interrupt-driven: the UART0 handler moves bytes from the receive FIFO into a
//! ring, and the main loop takes them from there and otherwise sleeps in `WFI` (polling the
//! FIFO in a loop would keep a host core busy under QEMU). Sending waits for FIFO room byte by
//! byte; QEMU hands every written byte straight to its chardev, so that wait never spins there.
//!
//! Back-pressure: when the ring is full the handler masks the receive interrupt and leaves the
//! rest in the FIFO; QEMU then stops reading the TCP socket until the main loop has made room
//! (and unmasked it), so no byte is lost. (On silicon a full FIFO would overrun instead; the
//! link session's retransmission covers that.)
//!
//! Baud rate and pin muxing are not configured: QEMU ignores both, and this firmware only
//! targets QEMU.

use core::cell::RefCell;

use cortex_m::interrupt::{CriticalSection, Mutex, free};
use cortex_m::peripheral::NVIC;
use heapless::Deque;
// `interrupt` is both the attribute and the enum the attribute checks handler names against.
use lm3s6965::{Interrupt, interrupt};

/// UART0's register block.
const BASE: usize = 0x4000_C000;

// Register offsets (PL011 TRM, section 3.2).
const DR: usize = 0x000;
const FR: usize = 0x018;
const LCRH: usize = 0x02C;
const CTL: usize = 0x030;
const IMSC: usize = 0x038;
const ICR: usize = 0x044;

// FR bits.
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
// LCRH: 8 data bits, FIFOs on.
const LCRH_8N1_FIFO: u32 = (0b11 << 5) | (1 << 4);
// CTL: UART, transmitter and receiver on.
const CTL_ENABLE: u32 = (1 << 9) | (1 << 8) | 1;
// IMSC/ICR: receive and receive-timeout interrupts.
const INT_RX: u32 = (1 << 6) | (1 << 4);

/// Received bytes not yet taken by the main loop: two of the largest frames, so a whole frame
/// can arrive while the main loop is busy with a task step.
const RING: usize = 2 * device_core::proto::MAX_FRAME;

static RX: Mutex<RefCell<Deque<u8, RING>>> = Mutex::new(RefCell::new(Deque::new()));

fn read(offset: usize) -> u32 {
    // SAFETY: BASE + offset is one of UART0's 32-bit registers (the offsets above), always
    // mapped on this chip; a volatile read of it has no effect beyond the PL011's own (a DR
    // read pops the receive FIFO, which is what the caller asks for).
    unsafe { core::ptr::read_volatile((BASE + offset) as *const u32) }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`: a mapped UART0 register, written with a value its layout defines.
    // The UART is touched by no other code than this module.
    unsafe { core::ptr::write_volatile((BASE + offset) as *mut u32, value) }
}

/// Configures UART0 (8N1, FIFOs) and enables its receive interrupt.
pub fn init() {
    write(CTL, 0);
    write(LCRH, LCRH_8N1_FIFO);
    write(ICR, INT_RX);
    write(IMSC, INT_RX);
    write(CTL, CTL_ENABLE);
    // SAFETY: unmasking can break a critical section that relies on this interrupt being
    // masked; none does: the handler shares only `RX`, always behind `free`.
    unsafe { NVIC::unmask(Interrupt::UART0) };
}

/// Sends `bytes`, waiting for FIFO room.
pub fn send(bytes: &[u8]) {
    for &b in bytes {
        while read(FR) & FR_TXFF != 0 {}
        write(DR, u32::from(b));
    }
}

/// Moves received bytes into `buf`; returns how many.
pub fn receive(buf: &mut [u8]) -> usize {
    free(|cs| {
        let mut ring = RX.borrow(cs).borrow_mut();
        let mut n = 0;
        while n < buf.len() {
            let Some(b) = ring.pop_front() else { break };
            buf[n] = b;
            n += 1;
        }
        if n > 0 {
            // There is room again: take the FIFO's bytes (a no-op unless the handler paused).
            write(IMSC, INT_RX);
        }
        n
    })
}

/// Sleeps until an interrupt (a received byte, the next clock tick), unless bytes are already
/// waiting. Interrupts are masked between the check and `WFI`, so a byte arriving in between
/// still ends the sleep (a pending interrupt wakes `WFI` even while masked) and is taken by
/// the handler right after.
pub fn sleep_unless_received() {
    free(|cs| {
        if RX.borrow(cs).borrow().is_empty() {
            cortex_m::asm::wfi();
        }
    });
}

/// Drains the receive FIFO into the ring; pauses reception when the ring is full.
fn drain_fifo(cs: &CriticalSection) {
    let mut ring = RX.borrow(cs).borrow_mut();
    while read(FR) & FR_RXFE == 0 {
        if ring.is_full() {
            write(IMSC, 0);
            break;
        }
        // Bits 8..11 flag framing, parity, break and overrun errors: the frame CRC catches
        // any byte they affect, so the data byte is kept as it is.
        let _ = ring.push_back(read(DR) as u8);
    }
    write(ICR, INT_RX);
}

#[interrupt]
fn UART0() {
    free(drain_fifo);
}
