//! A budget for log lines about remote events (bad frames, failed handshakes, refused
//! connections): anyone who can reach a listener can cause them, as fast as they can send, so
//! each kind gets a small burst and then one line per interval. The lines left out are
//! counted, and the next line of the kind says how many (`suppressed=N`); nothing is dropped
//! without a trace.
//!
//! A [`Throttle`] reads no clock: the caller passes `now`, so its arithmetic is tested on a
//! made-up timeline. It is shared (a mutex held for a few instructions), so one budget can
//! cover a kind of event across every connection of a process: a flood spread over many
//! connections costs no more log than one over a single connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of log line's budget: `burst` lines at once, then one more every `every`.
#[derive(Debug)]
pub struct Throttle {
    burst: u32,
    every: Duration,
    budget: Mutex<Budget>,
}

#[derive(Debug)]
struct Budget {
    /// Lines that may be written now.
    lines: u32,
    /// When `lines` was last topped up (`None`: never used, the budget is full).
    refilled: Option<Instant>,
    /// Lines left out since the last one written.
    suppressed: u64,
}

impl Throttle {
    /// A full budget of `burst` lines, one more every `every`.
    pub const fn new(burst: u32, every: Duration) -> Self {
        Self {
            burst,
            every,
            budget: Mutex::new(Budget {
                lines: burst,
                refilled: None,
                suppressed: 0,
            }),
        }
    }

    /// The budget of a kind of remote event: five lines at once (a handful of events are
    /// all logged), then one every ten seconds (a flood costs at most 8,640 lines a day per
    /// kind instead of one per frame or datagram).
    pub const fn remote_events() -> Self {
        Self::new(5, Duration::from_secs(10))
    }

    /// Whether a line may be written at `now`: `Some(n)` when it may, `n` being how many lines
    /// of the kind were left out since the last one written (for the line to say); `None` when
    /// this one is left out (and counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting: the counts are
        // still usable.
        let mut b = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = *b.refilled.get_or_insert(now);
        if !self.every.is_zero() {
            let periods = now.saturating_duration_since(since).as_nanos() / self.every.as_nanos();
            if periods > 0 {
                let periods = u32::try_from(periods).unwrap_or(u32::MAX);
                b.lines = b.lines.saturating_add(periods).min(self.burst);
                b.refilled = Some(since + self.every * periods.min(1 << 20));
                if b.lines == self.burst {
                    // Full: the next period starts now, not at a multiple of the old one.
                    b.refilled = Some(now);
                }
            }
        }
        if b.lines == 0 {
            b.suppressed += 1;
            return None;
        }
        b.lines -= 1;
        Some(std::mem::take(&mut b.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_line_per_interval_says_how_many_were_left_out() {
        let t = Throttle::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(t.admit(at(0)), Some(0));
        assert_eq!(t.admit(at(1)), Some(0));
        assert_eq!(t.admit(at(2)), Some(0));
        for ms in 3..1_000 {
            assert_eq!(t.admit(at(ms)), None, "{ms} ms");
        }
        assert_eq!(t.admit(at(9_999)), None);
        // One line per ten seconds, carrying the count of those left out before it.
        assert_eq!(t.admit(at(10_000)), Some(998));
        assert_eq!(t.admit(at(10_001)), None);
        assert_eq!(t.admit(at(20_000)), Some(1));
        // A long quiet spell refills the burst, never more.
        assert_eq!(t.admit(at(500_000)), Some(0));
        assert_eq!(t.admit(at(500_000)), Some(0));
        assert_eq!(t.admit(at(500_000)), Some(0));
        assert_eq!(t.admit(at(500_000)), None);
        assert_eq!(t.admit(at(510_000)), Some(1));
    }

    #[test]
    fn time_going_backwards_costs_nothing_and_breaks_nothing() {
        let t = Throttle::new(1, Duration::from_secs(1));
        let t0 = Instant::now() + Duration::from_secs(100);
        assert_eq!(t.admit(t0), Some(0));
        assert_eq!(t.admit(t0 - Duration::from_secs(50)), None);
        assert_eq!(t.admit(t0 + Duration::from_secs(1)), Some(1));
    }
}
