//! Delays between attempts: one policy for every reconnect and retry loop (the MQTT driver,
//! serial ports, task retries, the device simulator), so they cannot drift apart.
//!
//! [`Backoff::delay`] reads no clock and draws no randomness of its own: the caller passes the
//! attempt number and a random word, so the numbers are reproducible in tests. [`SplitMix64`]
//! makes those words from a seed; [`seed_from_clock`] is the one place a seed comes from the
//! clock, for binaries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exponential backoff with jitter: `initial` at attempt 1, doubling per attempt up to `max`,
/// plus a random share of that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before attempt 1 (and attempt 0, which callers may use for "no failure yet").
    pub initial: Duration,
    /// The longest delay before jitter: how long a peer that came back may wait to be noticed.
    pub max: Duration,
    /// Jitter as a percentage of the delay, added on top, so that peers that failed together
    /// (a broker restart, a gateway reboot) do not retry in lockstep. 0 for none.
    pub jitter_percent: u32,
}

impl Backoff {
    /// Doublings stop after this many (65,536 × `initial`): past it the delay is `max` for
    /// every configuration in use, and the factor stays small.
    const MAX_DOUBLINGS: u32 = 16;

    /// The delay before `attempt` (counted from 1): `initial × 2^(attempt − 1)` capped at
    /// `max`, plus jitter in `[0, that × jitter_percent / 100)` whole milliseconds taken from
    /// `random` (its value modulo the range). Never overflows or panics, for any attempt.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(Self::MAX_DOUBLINGS);
        let base = self.initial.saturating_mul(1 << doublings).min(self.max);
        let range = base.as_millis() * u128::from(self.jitter_percent) / 100;
        if range == 0 {
            return base;
        }
        // Below 2^64, since `random` is.
        let jitter = (u128::from(random) % range) as u64;
        base.saturating_add(Duration::from_millis(jitter))
    }
}

/// A small seeded pseudo-random generator (SplitMix64, Steele, Lea and Flood 2014): enough to
/// spread retries apart, not for secrets. Deterministic, so tests can seed it.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    /// Advances by a fixed odd constant per draw; the output is a mix of it.
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next pseudo-random word.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed for [`SplitMix64`] from the wall clock's nanoseconds (0 for a clock before 1970):
/// different for processes started apart, which is all the jitter needs.
pub fn seed_from_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn no_jitter(initial: u64, max: u64) -> Backoff {
        Backoff {
            initial: ms(initial),
            max: ms(max),
            jitter_percent: 0,
        }
    }

    #[test]
    fn the_delay_doubles_per_attempt_from_initial() {
        let b = no_jitter(100, 1_000_000);
        let delays: Vec<_> = (1..=6).map(|a| b.delay(a, 12_345)).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1_600), ms(3_200)]
        );
    }

    #[test]
    fn the_delay_stops_at_max() {
        let b = no_jitter(100, 5_000);
        assert_eq!(b.delay(6, 0), ms(3_200));
        assert_eq!(b.delay(7, 0), ms(5_000));
        assert_eq!(b.delay(100, 0), ms(5_000));
    }

    #[test]
    fn attempts_0_and_1_both_wait_initial() {
        let b = no_jitter(250, 10_000);
        assert_eq!(b.delay(0, 7), ms(250));
        assert_eq!(b.delay(1, 7), ms(250));
    }

    #[test]
    fn the_largest_attempt_number_neither_overflows_nor_panics() {
        assert_eq!(no_jitter(100, 5_000).delay(u32::MAX, u64::MAX), ms(5_000));
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            jitter_percent: u32::MAX,
        };
        assert_eq!(huge.delay(u32::MAX, u64::MAX), Duration::MAX);
        // Doublings stop at 2^16 even when `max` would allow more.
        let b = no_jitter(1, u64::MAX);
        assert_eq!(b.delay(u32::MAX, 0), ms(1 << 16));
    }

    #[test]
    fn jitter_stays_within_its_share_of_the_delay() {
        let b = Backoff {
            initial: ms(100),
            max: ms(10_000),
            jitter_percent: 50,
        };
        let mut random = SplitMix64::new(1);
        for attempt in 1..=10 {
            let base = b.delay(attempt, 0);
            let range = base * 50 / 100;
            for _ in 0..10_000 {
                let d = b.delay(attempt, random.next_u64());
                assert!(
                    d >= base && d < base + range,
                    "attempt {attempt}: {d:?} outside [{base:?}, {:?})",
                    base + range
                );
            }
            // The ends of the range: `random` is taken modulo its length in milliseconds.
            let range_ms = range.as_millis() as u64;
            assert_eq!(b.delay(attempt, range_ms - 1), base + range - ms(1));
            assert_eq!(b.delay(attempt, range_ms), base);
        }
        // A range under a millisecond adds nothing.
        let tiny = Backoff {
            initial: ms(1),
            max: ms(1),
            jitter_percent: 50,
        };
        assert_eq!(tiny.delay(1, u64::MAX), ms(1));
    }

    /// What the engine's `Retry::delay` computed before it used `Backoff`, kept as the
    /// reference: `initial × 2^min(attempt − 1, 16)` capped at `max`, plus `seed % (ms / 4)`.
    fn engine_retry(initial: Duration, max: Duration, attempt: u32, seed: u64) -> Duration {
        let base = initial
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(max);
        let jitter = base.as_millis() as u64 / 4;
        base + Duration::from_millis(if jitter == 0 { 0 } else { seed % jitter })
    }

    #[test]
    fn with_25_percent_jitter_it_gives_the_engines_retry_delays() {
        // The default queue retry policy: 1 s doubling to 60 s.
        let retry = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter_percent: 25,
        };
        // 1_000_003 is 3 modulo every jitter range up to 8 s; at the 60 s cap the range is
        // 15 s, and 1_000_003 % 15_000 = 10_003.
        let pinned: Vec<_> = (0..=8).map(|a| retry.delay(a, 1_000_003)).collect();
        assert_eq!(
            pinned,
            [
                ms(1_003),
                ms(1_003),
                ms(2_003),
                ms(4_003),
                ms(8_003),
                ms(16_003),
                ms(32_003),
                ms(70_003),
                ms(70_003),
            ]
        );
        let mut random = SplitMix64::new(42);
        for (initial, max) in [(1, 1), (3, 10), (7, 1_000), (1_000, 60_000), (50, 5_000)] {
            let b = Backoff {
                initial: ms(initial),
                max: ms(max),
                jitter_percent: 25,
            };
            for attempt in (0..=20).chain([1_000, u32::MAX]) {
                for seed in [0, 1, 3, 4, u64::MAX]
                    .into_iter()
                    .chain((0..50).map(|_| random.next_u64()))
                {
                    assert_eq!(
                        b.delay(attempt, seed),
                        engine_retry(ms(initial), ms(max), attempt, seed),
                        "initial {initial} ms, max {max} ms, attempt {attempt}, seed {seed}"
                    );
                }
            }
        }
    }

    #[test]
    fn splitmix64_gives_the_published_sequence() {
        // The reference implementation's first outputs for seed 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }
}
