//! The flooder's pacing arithmetic: when each request is due and who sends it.
//!
//! Owns: the open-loop schedule (global request `k` is due `k / rate` seconds
//! after the start), each thread's share of it, the round-robin that maps a
//! thread's requests onto its connections, and the even split of users over
//! threads. Must not: read a clock, sleep, or touch a socket. Every function
//! takes elapsed nanoseconds and returns counts or nanoseconds, so the tests
//! below can pin exact boundaries.
//!
//! Integer nanoseconds with `u128` intermediates are used instead of floats so
//! that "due by t" and "due at" agree exactly at every boundary: a float
//! schedule drifts by one request now and then, which shows up as a second
//! carrying `rate ± 1` requests.

use std::ops::Range;

/// Nanoseconds in a second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// One thread's share of an evenly paced global stream.
///
/// Global item `k` (0-based) is due `k / per_sec` seconds after the start,
/// rounded up to the next whole nanosecond. Thread `index` of `count` owns the
/// items `k ≡ index (mod count)`, so the threads' shares interleave and their
/// union is exactly the global stream: N threads at `rate / N` each would drift
/// apart by rounding, this cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    index: u64,
    count: u64,
    per_sec: u64,
}

impl Share {
    /// Thread `index` of `count`, global rate `per_sec` items per second.
    /// A rate of 0 means nothing is ever due.
    ///
    /// # Panics
    ///
    /// When `count` is 0 or `index >= count`: the caller builds shares from
    /// its own thread count, so this is a broken invariant, not input.
    pub fn new(index: usize, count: usize, per_sec: u64) -> Share {
        assert!(count > 0 && index < count, "share {index} of {count}");
        Share {
            index: index as u64,
            count: count as u64,
            per_sec,
        }
    }

    /// Global items due by `elapsed_ns` after the start, inclusive: the `k`
    /// with `k * 1e9 <= elapsed_ns * per_sec`.
    pub fn global_due_by(&self, elapsed_ns: u64) -> u64 {
        if self.per_sec == 0 {
            return 0;
        }
        let due = u128::from(elapsed_ns) * u128::from(self.per_sec) / u128::from(NANOS_PER_SEC);
        // Item 0 is due at the start itself, hence the + 1.
        u64::try_from(due + 1).unwrap_or(u64::MAX)
    }

    /// This share's items due by `elapsed_ns` after the start, inclusive.
    pub fn due_by(&self, elapsed_ns: u64) -> u64 {
        let global = self.global_due_by(elapsed_ns);
        if global <= self.index {
            0
        } else {
            (global - 1 - self.index) / self.count + 1
        }
    }

    /// Nanoseconds after the start at which this share's item `j` (0-based)
    /// becomes due: the least `t` with `due_by(t) > j`. `u64::MAX` when the
    /// rate is 0 (never).
    pub fn due_at_ns(&self, j: u64) -> u64 {
        if self.per_sec == 0 {
            return u64::MAX;
        }
        let k = u128::from(j) * u128::from(self.count) + u128::from(self.index);
        let ns = (k * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(self.per_sec));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// This share's items due strictly before `end_ns`: how many it sends in
    /// a run that stops issuing at `end_ns`.
    pub fn due_before(&self, end_ns: u64) -> u64 {
        if end_ns == 0 {
            0
        } else {
            self.due_by(end_ns - 1)
        }
    }
}

/// The slice of a thread's requests `from..to` that goes to one connection:
/// request `j` goes to connection `j % conns`, so this connection gets
/// `first`, `first + conns`, … (`count` of them) and can send them in one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The connection's index among the thread's connections.
    pub conn: usize,
    /// The thread's first request number in this batch.
    pub first: u64,
    /// How many requests; each next one is `conns` request numbers later.
    pub count: u64,
}

/// Splits a thread's due requests `from..to` round-robin over `conns`
/// connections, one [`Batch`] per connection that gets any, in the order the
/// requests fall due. Yields nothing when `conns` is 0 or the range is empty.
pub fn batches(from: u64, to: u64, conns: usize) -> impl Iterator<Item = Batch> {
    let n = conns as u64;
    let due = to.saturating_sub(from);
    let visits = if n == 0 { 0 } else { due.min(n) };
    (0..visits).map(move |step| {
        let first = from + step;
        Batch {
            conn: (first % n) as usize,
            first,
            count: (to - first).div_ceil(n),
        }
    })
}

/// Part `index` of `total` items split into `parts` contiguous ranges whose
/// sizes differ by at most one (the first `total % parts` get the extra one).
///
/// # Panics
///
/// When `parts` is 0 or `index >= parts` (a broken invariant, as in
/// [`Share::new`]).
pub fn split(total: u64, parts: usize, index: usize) -> Range<u64> {
    assert!(parts > 0 && index < parts, "part {index} of {parts}");
    let (parts, index) = (parts as u64, index as u64);
    let base = total / parts;
    let extra = total % parts;
    let start = index * base + index.min(extra);
    let len = base + u64::from(index < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_at_three_per_second_has_exact_boundaries() {
        let s = Share::new(0, 1, 3);
        assert_eq!(s.due_by(0), 1, "item 0 is due at the start");
        assert_eq!(s.due_by(333_333_333), 1);
        assert_eq!(s.due_by(333_333_334), 2);
        assert_eq!(s.due_at_ns(1), 333_333_334);
        assert_eq!(s.due_at_ns(3), NANOS_PER_SEC);
        assert_eq!(s.due_by(NANOS_PER_SEC - 1), 3);
        assert_eq!(s.due_by(NANOS_PER_SEC), 4);
    }

    #[test]
    fn due_at_is_the_first_instant_due_by_counts_it() {
        for &(count, rate) in &[(1, 30_000), (2, 30_000), (3, 7), (4, 120_001), (7, 1)] {
            for index in 0..count {
                let s = Share::new(index, count, rate);
                for j in 0..200 {
                    let at = s.due_at_ns(j);
                    assert_eq!(
                        s.due_by(at),
                        j + 1,
                        "share {index}/{count} rate {rate} j {j}"
                    );
                    if at > 0 {
                        assert_eq!(
                            s.due_by(at - 1),
                            j,
                            "share {index}/{count} rate {rate} j {j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shares_add_up_to_the_global_stream() {
        for &(count, rate) in &[(1, 10), (2, 30_000), (3, 60_000), (5, 7), (8, 3)] {
            let shares: Vec<Share> = (0..count).map(|i| Share::new(i, count, rate)).collect();
            let mut t = 0;
            while t < 3 * NANOS_PER_SEC {
                let sum: u64 = shares.iter().map(|s| s.due_by(t)).sum();
                assert_eq!(
                    sum,
                    shares[0].global_due_by(t),
                    "count {count} rate {rate} t {t}"
                );
                t += 12_345_677;
            }
        }
    }

    #[test]
    fn a_run_issues_exactly_rate_times_seconds() {
        for &(count, rate) in &[(1, 30_000), (2, 60_000), (3, 120_000), (2, 1)] {
            let end = 12 * NANOS_PER_SEC;
            let total: u64 = (0..count)
                .map(|i| Share::new(i, count, rate).due_before(end))
                .sum();
            assert_eq!(total, rate * 12, "count {count} rate {rate}");
        }
    }

    #[test]
    fn rate_zero_never_sends() {
        let s = Share::new(0, 2, 0);
        assert_eq!(s.due_by(u64::MAX), 0);
        assert_eq!(s.due_before(10 * NANOS_PER_SEC), 0);
        assert_eq!(s.due_at_ns(0), u64::MAX);
    }

    #[test]
    fn huge_elapsed_times_do_not_overflow() {
        let s = Share::new(1, 2, 10_000_000);
        let year_ns = 365 * 24 * 3600 * NANOS_PER_SEC;
        assert_eq!(s.due_by(year_ns), year_ns / 100 / 2);
        assert!(s.due_at_ns(u64::MAX / 2) == u64::MAX);
    }

    #[test]
    fn batches_cover_every_request_once_in_round_robin() {
        for &(from, to, conns) in &[
            (0, 5, 3),
            (7, 30, 4),
            (10, 11, 5),
            (3, 3, 4),
            (0, 9, 1),
            (5, 100, 7),
        ] {
            let mut seen = Vec::new();
            for b in batches(from, to, conns) {
                for i in 0..b.count {
                    let j = b.first + i * conns as u64;
                    assert_eq!(j as usize % conns, b.conn);
                    seen.push(j);
                }
            }
            seen.sort_unstable();
            assert_eq!(
                seen,
                (from..to).collect::<Vec<_>>(),
                "{from}..{to} over {conns}"
            );
        }
    }

    #[test]
    fn batches_visit_each_connection_at_most_once_starting_at_the_cursor() {
        let b: Vec<Batch> = batches(7, 30, 4).collect();
        let conns: Vec<usize> = b.iter().map(|b| b.conn).collect();
        assert_eq!(conns, [3, 0, 1, 2]);
        assert_eq!(b.iter().map(|b| b.count).collect::<Vec<_>>(), [6, 6, 6, 5]);
        assert_eq!(batches(0, 10, 0).count(), 0);
    }

    #[test]
    fn split_is_contiguous_and_even() {
        for &(total, parts) in &[(10, 3), (10_000, 1), (5, 8), (0, 2), (18_000, 2)] {
            let ranges: Vec<Range<u64>> = (0..parts).map(|i| split(total, parts, i)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[parts - 1].end, total);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let lens: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
            assert!(
                lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1,
                "{lens:?}"
            );
        }
    }
}
