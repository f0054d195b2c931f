//! The host, reached by semihosting (QEMU's `-semihosting-config enable=on,target=native`):
//! log lines on QEMU's standard output and the exit code. Nothing else goes this way: every
//! call traps into the emulator, and the device link is the UART.
//!
//! The firmware never ends by itself; it exits only on a fault, with a code that says which
//! (`cortex_m_semihosting::debug::exit` can only say 0 or 1, so [`exit`] uses the extended
//! call). A fault must end QEMU rather than park the core, or a test waiting on the device
//! would hang until its deadline instead of failing at once with the reason.

use core::panic::PanicInfo;

use cortex_m_rt::{ExceptionFrame, exception};

/// Exit code after a panic (the code a panicking Rust program exits with).
pub const EXIT_PANIC: u32 = 101;
/// Exit code after a hard fault.
pub const EXIT_HARD_FAULT: u32 = 102;
/// Exit code after an exception or interrupt that has no handler.
pub const EXIT_UNEXPECTED_EXCEPTION: u32 = 103;

/// Writes one line to the host, prefixed with the device clock.
macro_rules! log {
    ($($arg:tt)*) => {
        cortex_m_semihosting::hprintln!(
            "[{:>8} ms] {}",
            $crate::clock::now().as_millis(),
            format_args!($($arg)*)
        )
    };
}
pub(crate) use log;

/// Ends the emulation with `code` as QEMU's exit status.
pub fn exit(code: u32) -> ! {
    // SYS_EXIT_EXTENDED and its reason ADP_Stopped_ApplicationExit (Arm semihosting 2.0).
    const SYS_EXIT_EXTENDED: usize = 0x20;
    const APPLICATION_EXIT: usize = 0x2_0026;
    let block = [APPLICATION_EXIT, code as usize];
    // SAFETY: the call reads the two words of `block`, which lives until it returns, and
    // touches no other memory. Under QEMU with semihosting enabled it does not return.
    unsafe { cortex_m_semihosting::syscall(SYS_EXIT_EXTENDED, &block) };
    // Only a debugger that resumes the target gets here: stay put.
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    log!("panic: {info}");
    exit(EXIT_PANIC)
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    log!("hard fault: {frame:?}");
    exit(EXIT_HARD_FAULT)
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    log!("no handler for exception/interrupt {irqn}");
    exit(EXIT_UNEXPECTED_EXCEPTION)
}
