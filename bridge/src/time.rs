//! Time as the engine sees it: read by the caller, passed in.
//!
//! The engine and the queue never read a clock (so a test can drive them on a simulated one);
//! every input comes with a [`Now`]. The run loop reads it from a [`Clock`].

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The time an input is handled at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    /// The timer clock, in milliseconds: what deadlines, retry delays and wake-ups are measured
    /// on. Monotonic while the bridge runs; stored with tasks, so a restart continues from it.
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

/// The run loop's clock: the wall clock when the bridge started, advanced by the monotonic
/// clock since. A wall-clock step while the bridge runs (NTP correcting a gateway without a
/// real-time clock) moves no timer; `wall_ms` still follows the wall clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    started: Instant,
    started_ms: u64,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            started_ms: wall_ms(),
        }
    }

    pub fn now(&self) -> Now {
        Now {
            ms: self.started_ms + self.started.elapsed().as_millis() as u64,
            wall_ms: wall_ms(),
        }
    }

    /// The instant at which the timer clock reads `ms` (now, if that has passed).
    pub fn instant_at(&self, ms: u64) -> Instant {
        let after = ms.saturating_sub(self.started_ms);
        self.started + std::time::Duration::from_millis(after)
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 for a clock before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_clock_starts_at_the_wall_clock_and_maps_back_to_instants() {
        let clock = Clock::start();
        let now = clock.now();
        assert!(now.ms >= clock.started_ms && now.ms < clock.started_ms + 60_000);
        assert_eq!(
            clock.instant_at(clock.started_ms + 1_500),
            clock.started + std::time::Duration::from_millis(1_500)
        );
        // A time before the start is the start: sleeping until it returns at once.
        assert_eq!(clock.instant_at(0), clock.started);
    }
}
