//! The six priority levels shared by the MQTT API, the wire protocol and the scheduler.

use core::fmt;

use serde::{Deserialize, Serialize};

/// Task priority, P0 (most urgent) to P5 (least), as in the Harness P0–P5 scale.
///
/// The derived `Ord` follows the level number, so `P0 < P5`; to ask which of two priorities is
/// more urgent use [`Priority::outranks`] or [`Priority::most_urgent`], which say it in words.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[repr(u8)]
pub enum Priority {
    /// Most urgent.
    P0 = 0,
    /// Second most urgent.
    P1 = 1,
    /// Third.
    P2 = 2,
    /// The default of the MQTT API.
    P3 = 3,
    /// Background work.
    P4 = 4,
    /// Least urgent.
    P5 = 5,
}

impl Priority {
    /// Number of levels.
    pub const LEVELS: usize = 6;
    /// Every level, most urgent first.
    pub const ALL: [Self; Self::LEVELS] =
        [Self::P0, Self::P1, Self::P2, Self::P3, Self::P4, Self::P5];

    /// The level for `0..=5`, or `None`.
    pub const fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => Some(Self::P0),
            1 => Some(Self::P1),
            2 => Some(Self::P2),
            3 => Some(Self::P3),
            4 => Some(Self::P4),
            5 => Some(Self::P5),
            _ => None,
        }
    }

    /// The level number, 0 for P0.
    pub const fn level(self) -> u8 {
        self as u8
    }

    /// Whether `self` is strictly more urgent than `other`.
    pub const fn outranks(self, other: Self) -> bool {
        (self as u8) < (other as u8)
    }

    /// The more urgent of the two.
    #[must_use]
    pub const fn most_urgent(self, other: Self) -> Self {
        if other.outranks(self) { other } else { self }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_and_order_by_urgency() {
        for (i, p) in Priority::ALL.iter().enumerate() {
            assert_eq!(Priority::from_level(i as u8), Some(*p));
            assert_eq!(p.level() as usize, i);
        }
        assert_eq!(Priority::from_level(6), None);
        assert!(Priority::P0.outranks(Priority::P1));
        assert!(!Priority::P3.outranks(Priority::P3));
        assert_eq!(Priority::P4.most_urgent(Priority::P2), Priority::P2);
        assert_eq!(Priority::P2.to_string(), "P2");
    }
}
