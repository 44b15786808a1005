//! Time as herald counts it: milliseconds on a shard's monotonic clock, and Unix milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds on a shard's monotonic clock.
pub type Millis = u64;

/// Converts a duration to clock milliseconds (at least 1).
pub fn millis(duration: Duration) -> Millis {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}
