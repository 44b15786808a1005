//! CLOCK_MONOTONIC in nanoseconds: the same numbers in every process on the machine, so send times travel inside messages.

/// Nanoseconds on the machine's monotonic clock.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Sleeps until `at_ns` on the monotonic clock (pacing, not synchronisation).
pub fn sleep_until(at_ns: u64) {
    let now = now_ns();
    if at_ns > now {
        std::thread::sleep(std::time::Duration::from_nanos(at_ns - now));
    }
}
