//! The broker's two clocks. Anything that may be stored (message and session expiry) is in
//! wall-clock milliseconds since the Unix epoch, so it means the same after a restart;
//! timers that only pace this process (stall detection, pauses) use tokio's monotonic clock,
//! which paused-time tests control.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now. A clock set before 1970 reads as 0.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `now` plus a number of seconds, in Unix milliseconds (saturating).
pub(crate) fn after_secs(now_ms: u64, secs: u32) -> u64 {
    now_ms.saturating_add(u64::from(secs) * 1000)
}

/// Milliseconds on tokio's monotonic clock since the first call in this process: small
/// enough to keep in an atomic, and frozen or advanced by paused-time tests.
pub(crate) fn mono_ms() -> u64 {
    mono_us() / 1000
}

/// Microseconds on the same clock as `mono_ms` (token buckets: a rate of thousands per
/// second needs finer steps than milliseconds).
pub(crate) fn mono_us() -> u64 {
    mono_ns() / 1000
}

/// Nanoseconds on the same clock (shared rates: a tenant's many connections).
pub(crate) fn mono_ns() -> u64 {
    mono_ns_at(tokio::time::Instant::now())
}

/// Where the `mono_ns` scale starts (a second before its first use).
fn base() -> tokio::time::Instant {
    static BASE: OnceLock<tokio::time::Instant> = OnceLock::new();
    *BASE.get_or_init(|| tokio::time::Instant::now() - Duration::from_secs(1))
}

/// `instant` on the `mono_ns` scale.
pub(crate) fn mono_ns_at(instant: tokio::time::Instant) -> u64 {
    u64::try_from(instant.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `ns` is on the `mono_ns` scale (8 bytes to keep instead of 16).
pub(crate) fn instant_at_ns(ns: u64) -> tokio::time::Instant {
    base() + Duration::from_nanos(ns)
}

/// One reading of both clocks, taken by whoever feeds an event to a state machine that
/// decides on time (the client core), so that machine never reads a clock itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    /// The monotonic clock: keep-alive, pauses, rates.
    pub(crate) instant: tokio::time::Instant,
    /// The wall clock in Unix milliseconds: message expiry (what is stored).
    pub(crate) unix_ms: u64,
}

impl Now {
    /// The monotonic reading on the `mono_ns` scale.
    pub(crate) fn mono_ns(&self) -> u64 {
        mono_ns_at(self.instant)
    }

    /// The monotonic reading on the `mono_us` scale.
    pub(crate) fn mono_us(&self) -> u64 {
        self.mono_ns() / 1000
    }

    /// The monotonic reading on the `mono_ms` scale.
    pub(crate) fn mono_ms(&self) -> u64 {
        self.mono_ns() / 1_000_000
    }

    /// `d` later on both clocks (tests step a core's time this way).
    #[cfg(test)]
    pub(crate) fn after(self, d: Duration) -> Self {
        Now {
            instant: self.instant + d,
            unix_ms: self
                .unix_ms
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// The broker's time, as one handle passed to whatever decides on time (the session table,
/// its timer task), so tests can drive it: in production both readings are the system's;
/// in a paused-time test ([`Clock::following_tokio`]) the wall clock is tokio's paused
/// clock plus a fixed start, so `tokio::time::advance` moves both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// `None`: the system's wall clock. `Some((unix_ms, instant))`: the wall clock read
    /// `unix_ms` at tokio's `instant` and advances with tokio's clock.
    following: Option<(u64, tokio::time::Instant)>,
}

impl Clock {
    /// The system's clocks.
    pub(crate) fn system() -> Self {
        Clock { following: None }
    }

    /// A wall clock that starts at `start_unix_ms` now and advances with tokio's clock
    /// (paused or not). For tests.
    #[cfg(test)]
    pub(crate) fn following_tokio(start_unix_ms: u64) -> Self {
        Clock {
            following: Some((start_unix_ms, tokio::time::Instant::now())),
        }
    }

    /// Wall-clock milliseconds since the Unix epoch: for what is stored (expiry times).
    pub(crate) fn unix_ms(&self) -> u64 {
        match self.following {
            None => unix_ms(),
            Some((start, at)) => {
                let elapsed = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                start.saturating_add(elapsed)
            }
        }
    }

    /// The monotonic clock: for waits and pauses, which nothing stores.
    pub(crate) fn instant(&self) -> tokio::time::Instant {
        tokio::time::Instant::now()
    }

    /// Both clocks, read once.
    pub(crate) fn now(&self) -> Now {
        Now {
            instant: self.instant(),
            unix_ms: self.unix_ms(),
        }
    }

    /// The monotonic clock in milliseconds (`mono_ms`), for stamps kept in atomics.
    pub(crate) fn mono_ms(&self) -> u64 {
        mono_ms()
    }
}
