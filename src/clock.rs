//! The wall clock as time since the Unix epoch: what frames, ledger records,
//! interval logs and per-second counters are stamped with. One reading
//! (`SystemTime::now`, a vDSO call, no system call); a clock set before 1970
//! reads as zero rather than failing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch now (zero for a clock before it).
pub fn unix_now() -> Duration {
    since_epoch(SystemTime::now())
}

/// Time from the Unix epoch to `t` (zero for a time before it).
pub fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
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
}
