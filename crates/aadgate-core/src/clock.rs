//! The crate's clock: the current time in Unix seconds, and the [`Clock`] trait the pipeline,
//! the key store and the token exchange read it through, so tests and `aadgate explain --at`
//! can stop or move time without sleeping.

use std::time::{SystemTime, UNIX_EPOCH};

/// Current Unix time in seconds (0 if the system clock is before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Current Unix time in microseconds (0 if the system clock is before 1970).
pub fn unix_now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A source of the current time in Unix seconds (injectable for tests and `explain --at`).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in Unix seconds.
    fn now(&self) -> i64;

    /// Now, in Unix microseconds: the rate limits' clock (GCRA needs sub-second steps). The
    /// default is [`Clock::now`] in whole seconds, so a stopped clock stays stopped.
    fn now_micros(&self) -> u64 {
        u64::try_from(self.now())
            .unwrap_or(0)
            .saturating_mul(1_000_000)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        unix_now()
    }

    fn now_micros(&self) -> u64 {
        unix_now_micros()
    }
}

/// A clock stopped at a given time.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now(&self) -> i64 {
        self.0
    }
}
