//! Time as the cores see it: handed in by the shell, never read from a clock.

use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// An instant on CLOCK_MONOTONIC, in nanoseconds. It is the clock of the
/// kernel's `bpf_ktime_get_ns`, so timestamps written by the XDP program and
/// by user space compare directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);
    pub const MAX: Time = Time(u64::MAX);

    pub const fn from_nanos(nanos: u64) -> Self {
        Time(nanos)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, duration: Duration) -> Time {
        Time(self.0.saturating_add(duration.as_nanos() as u64))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, duration: Duration) {
        *self = *self + duration;
    }
}

impl Sub<Duration> for Time {
    type Output = Time;

    fn sub(self, duration: Duration) -> Time {
        Time(self.0.saturating_sub(duration.as_nanos() as u64))
    }
}

/// Unix time (milliseconds) as a core reads it: the monotonic [`Time`] it
/// is handed plus an offset its shell sets from the system clock (and sets
/// again, so that clock adjustments reach it). Cores stay clock-free and
/// simulations give each process the clock they want, skewed or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    /// Unix milliseconds minus monotonic milliseconds.
    offset_ms: i64,
}

impl WallClock {
    pub const fn with_offset(offset_ms: i64) -> Self {
        WallClock { offset_ms }
    }

    /// Unix milliseconds at `now` (0 before the epoch, which no real clock
    /// reads).
    pub fn unix_ms(&self, now: Time) -> u64 {
        let monotonic_ms = (now.as_nanos() / 1_000_000) as i64;
        monotonic_ms.saturating_add(self.offset_ms).max(0) as u64
    }
}
