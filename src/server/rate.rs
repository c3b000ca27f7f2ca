//! A connection's fair share of its core: `--conn-qps-max` as a token
//! bucket kept in one `u64` per connection.
//!
//! Owns: [`ConnRate`], the rule (a rate and a burst) and its arithmetic on a
//! connection's theoretical arrival time, the generic cell rate algorithm
//! (GCRA, the ATM forum's token bucket in one number): each request pushes
//! the time forward by one interval; a request is within the share while
//! the time is less than a burst of intervals ahead of now. Hand-written
//! because it is a dozen lines of integer arithmetic on the core's own clock,
//! and a crate's limiter would keep its own clock or a lock per bucket.
//! Must not: read a clock, allocate, or keep any state of its own.

/// The smallest burst a limited connection is allowed: a client that wakes up
/// and sends a handful of requests at once is served at once.
pub const BURST_MIN: u64 = 32;

/// The per-connection rate rule. `interval_ns == 0` means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRate {
    /// Nanoseconds one request costs.
    interval_ns: u64,
    /// Requests a connection may send at once after a quiet spell.
    burst: u64,
}

impl ConnRate {
    /// `per_sec` requests a second per connection (0: no limit), with a
    /// burst of one second's requests, at least [`BURST_MIN`].
    pub fn new(per_sec: u64) -> Self {
        if per_sec == 0 {
            return ConnRate {
                interval_ns: 0,
                burst: u64::MAX,
            };
        }
        ConnRate {
            interval_ns: (1_000_000_000 / per_sec).max(1),
            burst: per_sec.max(BURST_MIN),
        }
    }

    /// Requests a connection whose arrival time is `tat` may send at `now`
    /// (both nanoseconds on the core's clock); `u64::MAX` without a limit.
    #[inline]
    pub fn allowed(&self, tat: u64, now: u64) -> u64 {
        if self.interval_ns == 0 {
            return u64::MAX;
        }
        let horizon = now.saturating_add(self.burst.saturating_mul(self.interval_ns));
        horizon.saturating_sub(tat.max(now)) / self.interval_ns
    }

    /// Takes `n` requests' worth from the bucket at `now`.
    #[inline]
    pub fn charge(&self, tat: &mut u64, now: u64, n: u64) {
        if self.interval_ns == 0 || n == 0 {
            return;
        }
        *tat = (*tat)
            .max(now)
            .saturating_add(n.saturating_mul(self.interval_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_new_connection_has_its_burst() {
        let r = ConnRate::new(10);
        assert_eq!(r.allowed(0, 5 * SEC), 32);
        let r = ConnRate::new(1000);
        assert_eq!(r.allowed(0, 5 * SEC), 1000, "one second's worth");
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let r = ConnRate::new(10);
        let mut tat = 0;
        let now = 100 * SEC;
        r.charge(&mut tat, now, 32);
        assert_eq!(r.allowed(tat, now), 0, "burst used");
        assert_eq!(r.allowed(tat, now + SEC / 10), 1);
        assert_eq!(r.allowed(tat, now + SEC), 10);
        assert_eq!(
            r.allowed(tat, now + 100 * SEC),
            32,
            "never more than a burst"
        );
    }

    #[test]
    fn one_request_a_second_is_always_within_the_share() {
        let r = ConnRate::new(10);
        let mut tat = 0;
        for s in 1..1000 {
            assert!(r.allowed(tat, s * SEC) >= 1);
            r.charge(&mut tat, s * SEC, 1);
        }
    }

    /// Over any window, a connection gets at most burst + rate x window.
    #[test]
    fn a_pipeliner_gets_its_rate_and_no_more() {
        let r = ConnRate::new(10);
        let mut tat = 0;
        let mut served = 0;
        let start = 7 * SEC;
        let mut now = start;
        while now < start + 10 * SEC {
            let n = r.allowed(tat, now);
            r.charge(&mut tat, now, n);
            served += n;
            now += SEC / 1000;
        }
        assert!((32 + 99..=32 + 100).contains(&served), "{served}");
    }

    #[test]
    fn without_a_limit_everything_is_allowed() {
        let r = ConnRate::new(0);
        let mut tat = 0;
        r.charge(&mut tat, 5, 1 << 40);
        assert_eq!(tat, 0);
        assert_eq!(r.allowed(tat, 5), u64::MAX);
    }
}
