//! `device-core`: the part of the edge bridge that runs inside microcontroller firmware.
//!
//! It is `no_std`, allocates nothing, and reads no clock: every capacity is a const generic,
//! every time is passed in as `now`, and every fallible insert hands its item back.
//!
//! # Layout
//! - [`time`]: [`Instant`], the caller's millisecond clock reading.
//! - [`priority`]: [`Priority`] P0 (most urgent) to P5.
//! - [`task`]: task identity ([`TaskId`]), admission ([`TaskSpec`]) and [`TaskState`].
//! - [`lock`]: lock identity ([`LockId`]) and [`LockPolicy`] (inheritance, ceiling, plain).
//! - [`sched`]: the [`Scheduler`]: fixed task slots, O(1) pick, deadlines, locks with
//!   transitive priority inheritance.
//! - [`error`]: [`SchedError`], the one error type of the scheduler.
//! - [`proto`]: the device link's messages and framing (postcard, CRC-32, COBS).
//! - [`link`]: the reliable session over any link (sans-IO; the same code on both ends).
//! - [`runtime`]: the cooperative runtime (capability handlers as step functions) and
//!   [`runtime::Device`], the whole device side of the protocol.
//!
//! # Example
//! ```
//! use device_core::{Instant, LockId, Priority, Scheduler, TaskSpec};
//!
//! let mut s: Scheduler<4, 2> = Scheduler::new();
//! let bus = LockId::new(0);
//! let now = Instant::from_millis(0);
//! let low = s.admit(TaskSpec::new(Priority::P4), now).unwrap();
//! assert_eq!(s.next(now), Some(low));
//! s.lock(low, bus, None, now).unwrap();
//!
//! // A P0 task arrives and needs the bus: the holder inherits P0 until it unlocks.
//! let high = s.admit(TaskSpec::new(Priority::P0), now).unwrap();
//! assert_eq!(s.next(now), Some(high));
//! s.lock(high, bus, None, now).unwrap();
//! assert_eq!(s.effective_priority(low), Some(Priority::P0));
//! assert_eq!(s.next(now), Some(low));
//! s.unlock(low, bus).unwrap();
//! assert_eq!(s.effective_priority(low), Some(Priority::P4));
//! assert!(s.holds(high, bus));
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod error;
pub mod link;
pub mod lock;
pub mod priority;
pub mod proto;
pub mod runtime;
pub mod sched;
pub mod task;
pub mod time;

pub use error::SchedError;
pub use lock::{LockId, LockPolicy};
pub use priority::Priority;
pub use sched::{Acquire, Event, Scheduler};
pub use task::{TaskId, TaskSpec, TaskState};
pub use time::Instant;
