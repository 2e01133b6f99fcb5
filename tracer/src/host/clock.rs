//! Kernel timestamps (CLOCK_MONOTONIC ns) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Offset between CLOCK_REALTIME and CLOCK_MONOTONIC, measured once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, in the kernel's `bpf_ktime_get_ns` scale.
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC) as u64
}

impl Clock {
    pub fn now() -> Self {
        let mono = now_ns(libc::CLOCK_MONOTONIC);
        let real = now_ns(libc::CLOCK_REALTIME);
        Self { realtime_minus_monotonic_ns: real - mono }
    }

    /// A fixed offset, for replaying recordings and for tests.
    pub fn with_offset_ns(realtime_minus_monotonic_ns: i128) -> Self {
        Self { realtime_minus_monotonic_ns }
    }

    pub fn offset_ns(&self) -> i128 {
        self.realtime_minus_monotonic_ns
    }

    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        let real = i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns;
        UNIX_EPOCH + Duration::from_nanos(real.max(0) as u64)
    }

    /// RFC 3339, microseconds, UTC: `2026-11-28T02:45:01.123456Z`.
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall(monotonic_ns)).to_string()
    }

    /// Time of day, UTC, microseconds: `02:45:01.123456`.
    pub fn time_of_day(&self, monotonic_ns: u64) -> String {
        let full = self.rfc3339(monotonic_ns);
        full.get(11..26).unwrap_or(&full).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_monotonic_to_wall_time() {
        // 2026-11-28T00:00:00Z is 1795824000 s after the epoch.
        let clock = Clock::with_offset_ns(1_795_824_000_000_000_000 - 5_000_000_000);
        assert_eq!(clock.rfc3339(5_000_000_000 + 1_500), "2026-11-28T00:00:00.000001Z");
        assert_eq!(clock.time_of_day(5_000_000_000 + 61_250_000_000), "00:01:01.250000");
    }
}
