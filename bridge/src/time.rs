//! Time as the engine sees it: read by the caller, passed in.
//!
//! The engine and the queue never read a clock (so a test can drive them on a simulated one);
//! every input comes with a [`Now`]. The run loop reads it from a [`Clock`].
//!
//! Deadlines, retry delays and wake-ups are measured on the *timer clock* (DESIGN.md, "Time"),
//! never on the wall clock, which NTP may step by hours or years on a gateway without a
//! real-time clock. The timer clock advances with the kernel's `CLOCK_BOOTTIME` (monotonic,
//! counts suspend), and the queue commits where both stood ([`Anchor`]), so a restart
//! continues it:
//! - in the same kernel boot, exactly: the boot clock measures the time the bridge was down,
//!   which counts in full;
//! - after a reboot, from the last committed value plus the time since the new boot (a lower
//!   bound of the time the gateway was down): a deadline may run late by the rest of the
//!   downtime, but never passes early;
//! - with no anchor (a new database, or one from before anchors), from the wall clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The time an input is handled at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    /// The timer clock, in milliseconds: what deadlines, retry delays and wake-ups are measured
    /// on. Monotonic, also across restarts (see the module's doc); stored with tasks.
    pub ms: u64,
    /// Wall-clock milliseconds since the Unix epoch: for `ts_ms` in published documents only.
    pub wall_ms: u64,
}

impl Now {
    /// A time whose two clocks agree (tests and simulations).
    pub const fn at(ms: u64) -> Self {
        Self { ms, wall_ms: ms }
    }
}

/// Where the timer clock stood, as the queue commits it: what a restart continues from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The kernel boot it was taken in ([`boot_id`]); 0 when unknown, which matches no boot.
    pub boot: u64,
    /// A timer-clock ms the clock has reached: the latest the queue committed, so no stored
    /// deadline or delay was computed from a later one.
    pub clock_ms: u64,
    /// `CLOCK_BOOTTIME` ms when the timer clock read `clock_ms`: in the same boot, the boot
    /// clock's advance since is exactly the time that passed.
    pub boot_ms: u64,
}

impl Anchor {
    /// The same run's anchor when its timer clock reads `ms` (never earlier than this one:
    /// the two clocks advance together within a run).
    pub fn at(self, ms: u64) -> Self {
        let ms = ms.max(self.clock_ms);
        Self {
            boot: self.boot,
            clock_ms: ms,
            boot_ms: self.boot_ms + (ms - self.clock_ms),
        }
    }
}

/// The run loop's clock: a start value ([`Clock::resume`]) advanced by `CLOCK_BOOTTIME`. A
/// wall-clock step (NTP correcting a gateway without a real-time clock) moves no timer,
/// before or after a restart; `wall_ms` still follows the wall clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Where the timer clock started, with the boot clock then: [`Clock::now`] adds the boot
    /// clock's advance since.
    start: Anchor,
}

impl Clock {
    /// A clock continuing from `stored` (the queue's last committed [`Anchor`]), or starting
    /// at the wall clock when there is none.
    pub fn resume(stored: Option<Anchor>) -> Self {
        Self::resume_at(stored, boot_id(), boot_ms(), wall_ms())
    }

    /// [`Clock::resume`] in kernel boot `boot` (0: unknown), `boot_ms` after it began, with
    /// the wall clock at `wall_ms`.
    fn resume_at(stored: Option<Anchor>, boot: u64, boot_ms: u64, wall_ms: u64) -> Self {
        let clock_ms = match stored {
            None => wall_ms,
            // The same boot: the clock went on while the bridge was down. (Never behind the
            // committed value, should the kernel's clock ever seem to go back.)
            Some(a) if a.boot != 0 && a.boot == boot => {
                a.clock_ms.saturating_add(boot_ms.saturating_sub(a.boot_ms))
            }
            // Another boot: the gateway was down at least as long as this boot has run.
            Some(a) if a.boot != 0 && boot != 0 => a.clock_ms.saturating_add(boot_ms),
            // Either boot is unknown: the downtime counts as nothing (deadlines run late,
            // never early).
            Some(a) => a.clock_ms,
        };
        Self {
            start: Anchor {
                boot,
                clock_ms,
                boot_ms,
            },
        }
    }

    pub fn now(&self) -> Now {
        Now {
            ms: self.ms_at(boot_ms()),
            wall_ms: wall_ms(),
        }
    }

    /// The timer clock when the boot clock reads `boot_ms`.
    fn ms_at(&self, boot_ms: u64) -> u64 {
        self.start.clock_ms + boot_ms.saturating_sub(self.start.boot_ms)
    }

    /// The anchor to commit with the queue, as of `now` (see [`Anchor::at`]).
    pub fn anchor(&self, now: Now) -> Anchor {
        self.start.at(now.ms)
    }

    /// The instant at which the timer clock reads `ms` (now, if that has passed).
    pub fn instant_at(&self, ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms.saturating_sub(self.now().ms))
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 for a clock before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the kernel booted, suspended time included (`CLOCK_BOOTTIME`), which no
/// wall-clock step moves. Elsewhere than Linux: since the bridge started (and [`boot_id`] is
/// unknown, so a restart counts no downtime).
fn boot_ms() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
        return u64::try_from(ms).unwrap_or(0);
    }
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    STARTED.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`, a random UUID per boot), folded to
/// 64 bits; 0 when it cannot be read.
fn boot_id() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or(0, |text| fold_boot_id(&text))
}

/// 64 bits of a boot id's UUID text (its two halves XORed); 0 when it is not one.
fn fold_boot_id(text: &str) -> u64 {
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    match u128::from_str_radix(&hex, 16) {
        Ok(n) if hex.len() == 32 => (n >> 64) as u64 ^ n as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn anchor(boot: u64, clock_ms: u64, boot_ms: u64) -> Option<Anchor> {
        Some(Anchor {
            boot,
            clock_ms,
            boot_ms,
        })
    }

    #[test]
    fn a_new_queue_starts_the_timer_clock_at_the_wall_clock() {
        let clock = Clock::resume_at(None, 7, 5_000, 1_700_000_000_000);
        assert_eq!(clock.ms_at(5_000), 1_700_000_000_000);
        assert_eq!(clock.ms_at(6_000), 1_700_000_001_000);
        // A board that booted in 1970 starts near 0; the clock still runs from there.
        let clock = Clock::resume_at(None, 7, 5_000, 1_000);
        assert_eq!(clock.ms_at(6_000), 2_000);
    }

    #[test]
    fn a_restart_in_the_same_boot_counts_the_downtime_exactly_whatever_the_wall_clock_says() {
        // Committed with the timer at 5 h and the boot clock at 100 s; restarted at boot clock
        // 160 s, with the wall clock stepped back three hours, forward two, or reset to 1970.
        let stored = anchor(7, 5 * HOUR, 100_000);
        for wall in [2 * HOUR, 7 * HOUR, 0] {
            let clock = Clock::resume_at(stored, 7, 160_000, wall);
            assert_eq!(clock.ms_at(160_000), 5 * HOUR + 60_000, "wall {wall}");
            assert_eq!(clock.ms_at(161_000), 5 * HOUR + 61_000, "wall {wall}");
        }
    }

    #[test]
    fn a_restart_never_sets_the_timer_clock_behind_what_was_committed() {
        // A boot clock that reads less than it did (it cannot; a container's time namespace
        // could make it seem so): the clock continues from the committed value.
        let clock = Clock::resume_at(anchor(7, 5 * HOUR, 100_000), 7, 50_000, 0);
        assert_eq!(clock.ms_at(50_000), 5 * HOUR);
        assert_eq!(clock.ms_at(51_000), 5 * HOUR + 1_000);
    }

    #[test]
    fn after_a_reboot_the_clock_continues_from_the_committed_value_plus_this_boots_time() {
        // The gateway rebooted (another boot id); this boot has run 30 s: the bridge was down
        // at least that long, maybe longer, so deadlines may run late but never early.
        let clock = Clock::resume_at(anchor(7, 5 * HOUR, 100_000), 8, 30_000, 9 * HOUR);
        assert_eq!(clock.ms_at(30_000), 5 * HOUR + 30_000);
        assert_eq!(clock.ms_at(31_000), 5 * HOUR + 31_000);
    }

    #[test]
    fn with_an_unknown_boot_the_downtime_counts_as_nothing() {
        // Without a boot id, a long-running kernel's boot clock says nothing about the
        // downtime: adding it could expire every task at once.
        for (stored_boot, boot) in [(0, 0), (7, 0), (0, 7)] {
            let stored = anchor(stored_boot, 5 * HOUR, 100_000);
            let clock = Clock::resume_at(stored, boot, 24 * HOUR, 0);
            assert_eq!(clock.ms_at(24 * HOUR), 5 * HOUR, "{stored_boot} → {boot}");
        }
    }

    #[test]
    fn the_anchor_of_a_run_resumes_the_next_run_in_the_same_boot() {
        let clock = Clock::resume_at(None, 7, 5_000, 1_700_000_000_000);
        let committed = clock.anchor(Now::at(clock.ms_at(9_000)));
        assert_eq!(
            committed,
            Anchor {
                boot: 7,
                clock_ms: 1_700_000_004_000,
                boot_ms: 9_000
            }
        );
        // An anchor is never moved back.
        assert_eq!(committed.at(0), committed);
        let again = Clock::resume_at(Some(committed), 7, 12_000, 0);
        assert_eq!(again.ms_at(12_000), 1_700_000_007_000);
    }

    #[test]
    fn boot_ids_fold_to_64_bits_and_anything_else_is_unknown() {
        let id = "1c9ee7b9-3c21-4921-8a02-c2a66fe6471a\n";
        assert_eq!(
            fold_boot_id(id),
            0x1c9e_e7b9_3c21_4921 ^ 0x8a02_c2a6_6fe6_471a
        );
        assert_eq!(fold_boot_id(""), 0);
        assert_eq!(fold_boot_id("not-a-uuid"), 0);
        assert_eq!(fold_boot_id("1c9ee7b9"), 0);
    }

    #[test]
    fn the_timer_clock_runs_and_maps_back_to_instants() {
        let clock = Clock::resume(None);
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        let b = clock.now();
        assert!(b.ms >= a.ms + 20 && b.ms < a.ms + 60_000, "{a:?} {b:?}");
        // A time already passed is now: sleeping until it returns at once.
        assert!(clock.instant_at(0) <= Instant::now());
        let later = clock.instant_at(clock.now().ms + 60_000);
        assert!(later > Instant::now() + Duration::from_secs(59));
    }
}
