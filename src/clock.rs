//! The wall clock as time since the Unix epoch: what frames, ledger records,
//! interval logs and per-second counters are stamped with, read one way for
//! every program. One reading (`SystemTime::now`, a vDSO call, no system
//! call); a clock set before 1970 reads as zero rather than failing.
//!
//! Owns: the readings in the units their users keep (a [`Duration`], Unix
//! nanoseconds, Unix seconds, a core's [`Now`] of seconds and
//! milliseconds), and the units' ratios every program converts with.
//! Must not: make a system call, fail, or keep state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds in a second.
pub const MILLIS_PER_SEC: u64 = 1_000;
/// Microseconds in a second.
pub const MICROS_PER_SEC: u64 = 1_000_000;
/// Nanoseconds in a second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Nanoseconds in a microsecond.
pub const NANOS_PER_MICRO: u64 = 1_000;
/// Microseconds in one percent of a second: CPU microseconds per second
/// divided by this are a percentage of one core.
pub const MICROS_PER_PERCENT_OF_SEC: u64 = MICROS_PER_SEC / 100;

/// The wall clock read once, in the two units a server turn stamps with:
/// frames carry Unix seconds, ledger records Unix milliseconds. Both come
/// from the same reading, so they never disagree about which second it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Unix seconds (frames are stamped with it).
    pub secs: u64,
    /// Unix milliseconds (ledger records are stamped with it).
    pub ms: u64,
}

/// Nanoseconds as (fractional) microseconds, the unit latencies are shown
/// in.
pub fn micros_of_nanos(ns: u64) -> f64 {
    ns as f64 / NANOS_PER_MICRO as f64
}

/// Time since the Unix epoch now (zero for a clock before it).
pub fn unix_now() -> Duration {
    since_epoch(SystemTime::now())
}

/// Time from the Unix epoch to `t` (zero for a time before it).
pub fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// The wall clock now in Unix nanoseconds: the flooder's send and answer
/// stamps. A `u64` of nanoseconds lasts until the year 2554.
pub fn unix_nanos() -> u64 {
    unix_now().as_nanos() as u64
}

/// The wall clock now in whole Unix seconds: the timestamp a frame carries,
/// and the second a counter belongs to.
pub fn unix_secs() -> u64 {
    unix_now().as_secs()
}

/// The wall clock now as seconds and milliseconds of one reading.
pub fn now() -> Now {
    now_of(unix_now())
}

/// `since_epoch` as a [`Now`]: the seconds are the milliseconds' whole
/// seconds, as a core has always derived them.
fn now_of(since_epoch: Duration) -> Now {
    let ms = since_epoch.as_millis() as u64;
    Now {
        secs: ms / MILLIS_PER_SEC,
        ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_before_the_epoch_reads_as_zero() {
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(since_epoch(before), Duration::ZERO);
        assert_eq!(
            since_epoch(UNIX_EPOCH + Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn one_reading_gives_seconds_and_milliseconds_that_agree() {
        let n = now_of(Duration::from_nanos(1_700_000_001_999_999_999));
        assert_eq!(
            n,
            Now {
                secs: 1_700_000_001,
                ms: 1_700_000_001_999
            }
        );
    }
}
