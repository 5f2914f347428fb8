//! The two clocks the store reads: wall-clock time for records and
//! checkpoints, and `CLOCK_BOOTTIME` (the kernel's clock for decisions)
//! for the decision-to-queryable latency.

/// Unix time in nanoseconds.
#[must_use]
pub fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// `CLOCK_BOOTTIME` now, the kernel's clock for decisions.
#[must_use]
pub fn boot_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}
