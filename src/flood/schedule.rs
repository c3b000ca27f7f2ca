//! The flooder's pacing arithmetic: which user shakes when.
//!
//! Owns: the original client's slot rule ([`SlotRule`]: which users fire in
//! wall-clock second `t` at a global rate `q`, generalised to `q` above the
//! user count), the spreading of a second's requests over it, the run's
//! per-second rate plan ([`Plan`]: warmup, then `--phases` steps), an evenly
//! paced stream for connects ([`Share`]), and the split of users over
//! threads. Must not: read a clock, sleep, or touch a socket. Every function
//! takes seconds or nanoseconds and returns users, counts or nanoseconds, so
//! the tests below can pin exact boundaries.
//!
//! Integer nanoseconds with `u128` intermediates are used instead of floats so
//! that "due by t" and "due at" agree exactly at every boundary: a float
//! schedule drifts by one request now and then, which shows up as a second
//! carrying `rate ± 1` requests.

use crate::clock::NANOS_PER_SEC;
use std::ops::Range;

/// The original client's hash: users are dealt into 13 buckets by `u % 13`
/// and the buckets laid end to end, so consecutive hashed ids (which fire
/// together) are users 13 apart. A permutation of `0..total`; the identity
/// when `total <= 13`. Kept exactly, so that our flooders and the original
/// clients sharing one `--total` pick the same users each second.
///
/// The flooder walks the rule by position ([`SlotRule::user_at`], through
/// [`unhash`]); this forward form, with [`SlotRule::triggers`] and
/// [`SlotRule::fires`], is the original's code as it was, kept for the tests
/// as the oracle `user_at` is checked against.
#[cfg(test)]
pub fn hash(user: u64, total: u64) -> u64 {
    const BUCKETS: u64 = 13;
    if total <= BUCKETS {
        return user;
    }
    let (len, rem) = (total / BUCKETS, total % BUCKETS);
    let (row, bucket) = (user / BUCKETS, user % BUCKETS);
    len * bucket + bucket.min(rem) + row
}

/// The inverse of the original's hash (users dealt into 13 buckets by
/// `u % 13`, the buckets laid end to end): the user whose hashed id is `h`.
pub fn unhash(h: u64, total: u64) -> u64 {
    const BUCKETS: u64 = 13;
    if total <= BUCKETS {
        return h;
    }
    let (len, rem) = (total / BUCKETS, total % BUCKETS);
    // Buckets 0..rem hold len + 1 users, the others len.
    let big = rem * (len + 1);
    let (bucket, row) = if h < big {
        (h / (len + 1), h % (len + 1))
    } else {
        (rem + (h - big) / len, (h - big) % len)
    };
    row * BUCKETS + bucket
}

/// Which users fire in a wall-clock second, as the original client decided
/// it, so that processes sharing `total` need no coordinator.
///
/// For a global rate `q <= total` the rule is the original's exactly: with
/// `g = total / q`, when `total % q == 0` the users whose hashed id `h` has
/// `h % g == t % g` fire; otherwise the window of `q` consecutive hashed ids
/// starting at `(t × q) mod total` (wrapping; `t × q` in the original's 32-bit
/// arithmetic) fires. Each second then carries exactly `q` requests, at most
/// one per user. For `q > total` every user fires `q / total` times and the
/// rule picks the `q % total` users that fire once more.
///
/// A second's `q` requests are numbered by position `0..q`: first the full
/// rounds, in hashed-id order, then the extra ones in the rule's order.
/// Position `p` is due at `p / q` of the second (or at its start with
/// `--burst`), so the global stream is evenly spread whoever sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRule {
    total: u64,
}

impl SlotRule {
    /// The rule for `total` users in all.
    ///
    /// # Panics
    ///
    /// When `total` is 0: options checking refuses it first.
    pub fn new(total: u64) -> SlotRule {
        assert!(total > 0, "a slot rule needs users");
        SlotRule { total }
    }

    /// The original's decision for one hashed id with `q <= total`
    /// (`TriggerRequest` on a hashed id): does `h` fire in second `t`?
    /// The tests' oracle, as `hash` is.
    #[cfg(test)]
    pub fn triggers(&self, h: u64, t: u64, q: u64) -> bool {
        let total = self.total;
        let q = q.min(total);
        if q == 0 {
            return false;
        }
        if total % q == 0 {
            let g = total / q;
            return (t as u32 as u64) % g == h % g;
        }
        let start = window_start(t, q, total);
        // The window start..start+q, wrapping past total to 0.
        (h + total - start) % total < q
    }

    /// How many times `user` fires in second `t` at global rate `q`: the
    /// tests' oracle, as `hash` is.
    #[cfg(test)]
    pub fn fires(&self, user: u64, t: u64, q: u64) -> u64 {
        let (rounds, extra) = (q / self.total, q % self.total);
        rounds + u64::from(self.triggers(hash(user, self.total), t, extra))
    }

    /// The user at position `p` (`p < q`) of second `t` at global rate `q`.
    pub fn user_at(&self, t: u64, q: u64, p: u64) -> u64 {
        let total = self.total;
        let full = q / total * total;
        let h = if p < full {
            p % total
        } else {
            let (k, extra) = (p - full, q - full);
            if total % extra == 0 {
                let g = total / extra;
                (t as u32 as u64) % g + k * g
            } else {
                (window_start(t, extra, total) + k) % total
            }
        };
        unhash(h, total)
    }
}

/// `(t × q) mod total` as the original computes it: second and rate as
/// 32-bit unsigned, their product wrapping.
fn window_start(t: u64, q: u64, total: u64) -> u64 {
    u64::from((t as u32).wrapping_mul(q as u32)) % total
}

/// Nanoseconds into its second at which position `p` of `q` is due: evenly
/// spread (`ceil(p × 1e9 / q)`), or all at once with `burst`.
pub fn offset_ns(p: u64, q: u64, burst: bool) -> u64 {
    if burst || q == 0 {
        return 0;
    }
    (u128::from(p) * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(q)) as u64
}

/// One step of a `--phases` script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    /// Global shakes per second.
    pub qps: u64,
    /// How long, in seconds.
    pub secs: u64,
}

/// The run's rate, second by second: `warmup` seconds at the first step's
/// rate, then the steps, then nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    warmup: u64,
    phases: Vec<Phase>,
}

impl Plan {
    /// A plan; `phases` must not be empty (options checking ensures it).
    pub fn new(warmup: u64, phases: Vec<Phase>) -> Plan {
        assert!(!phases.is_empty(), "a plan needs a step");
        Plan { warmup, phases }
    }

    /// Seconds of warmup.
    pub fn warmup_secs(&self) -> u64 {
        self.warmup
    }

    /// Seconds of the window: every step.
    pub fn window_secs(&self) -> u64 {
        self.phases.iter().map(|p| p.secs).sum()
    }

    /// Seconds that send anything: warmup and window.
    pub fn end_secs(&self) -> u64 {
        self.warmup + self.window_secs()
    }

    /// The run seconds of the window.
    pub fn window(&self) -> Range<u64> {
        self.warmup..self.end_secs()
    }

    /// The steps.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// The step that run second `s` belongs to, as an id (0 = the warmup,
    /// `i + 1` = step `i`), and its rate; None from the end on.
    pub fn at(&self, s: u64) -> Option<(u32, u64)> {
        if s < self.warmup {
            return Some((0, self.phases[0].qps));
        }
        let mut from = self.warmup;
        for (i, p) in self.phases.iter().enumerate() {
            if s < from + p.secs {
                return Some((i as u32 + 1, p.qps));
            }
            from += p.secs;
        }
        None
    }
}

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
    /// a run that stops issuing at `end_ns`. The tests' measure of a share.
    #[cfg(test)]
    pub fn due_before(&self, end_ns: u64) -> u64 {
        if end_ns == 0 {
            0
        } else {
            self.due_by(end_ns - 1)
        }
    }
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
    fn hash_is_a_permutation_and_unhash_inverts_it() {
        for total in (1..200).chain([1_000, 9_999, 10_000, 30_001, 180_000]) {
            let mut seen = vec![false; total as usize];
            for u in 0..total {
                let h = hash(u, total);
                assert!(h < total, "total {total} user {u} -> {h}");
                assert!(!seen[h as usize], "total {total}: {h} twice");
                seen[h as usize] = true;
                assert_eq!(unhash(h, total), u, "total {total} user {u}");
            }
        }
        // Bucket layout: 100 users, 13 buckets of 7 or 8 (9 buckets of 8).
        assert_eq!(hash(13, 100), 1, "row 1 of bucket 0");
        assert_eq!(hash(1, 100), 8, "bucket 1 starts after bucket 0's 8");
    }

    /// The original client's own test vectors for `TriggerRequest`, which
    /// takes already-hashed ids.
    #[test]
    fn triggers_matches_the_originals_vectors() {
        let r = SlotRule::new(100);
        assert!(r.triggers(0, 0, 10));
        assert!(r.triggers(10, 0, 10));
        assert!(!r.triggers(11, 0, 10));
        assert!(r.triggers(11, 1, 10));
        assert!(r.triggers(99, 9, 10));
        assert!(r.triggers(0, 10, 10));
        // 33/s over 100: windows 0-32, 33-65, 66-98, 99-31 (wrapping), 32-64.
        let window = |t: u64| -> Vec<u64> { (0..100).filter(|&h| r.triggers(h, t, 33)).collect() };
        assert_eq!(window(0), (0..=32).collect::<Vec<_>>());
        assert_eq!(window(1), (33..=65).collect::<Vec<_>>());
        assert_eq!(window(2), (66..=98).collect::<Vec<_>>());
        assert_eq!(window(3), [(0..=31).collect(), vec![99]].concat());
        assert_eq!(window(4), (32..=64).collect::<Vec<_>>());
    }

    /// The original's `Test_qps2`: hashing does not change how many fire.
    #[test]
    fn hashing_keeps_the_count() {
        let r = SlotRule::new(180_000);
        let t = 1_484_553_130;
        let plain = (0..180_000).filter(|&u| r.triggers(u, t, 3_000)).count();
        let hashed = (0..180_000).filter(|&u| r.fires(u, t, 3_000) == 1).count();
        assert_eq!(plain, 3_000);
        assert_eq!(hashed, plain);
    }

    /// Every second carries exactly q requests, and the positions enumerate
    /// exactly the users the rule fires, as often as it fires them: below,
    /// at and above one request per user, divisible or not, and at a Unix
    /// time whose 32-bit product with q wraps.
    #[test]
    fn positions_enumerate_exactly_the_users_that_fire() {
        for &(total, q) in &[
            (100, 10),
            (100, 33),
            (100, 100),
            (100, 250),
            (13, 5),
            (7, 3),
            (10_000, 3_000),
            (10_000, 30_000),
            (10_007, 9_999),
            (1, 7),
        ] {
            let r = SlotRule::new(total);
            for t in [0, 1, 2, 5, 1_795_338_176, u64::from(u32::MAX)] {
                let mut counts = vec![0u64; total as usize];
                for p in 0..q {
                    counts[r.user_at(t, q, p) as usize] += 1;
                }
                let (lo, hi) = (q / total, q.div_ceil(total));
                for u in 0..total {
                    let c = counts[u as usize];
                    assert_eq!(c, r.fires(u, t, q), "total {total} q {q} t {t} user {u}");
                    assert!(
                        c == lo || c == hi,
                        "total {total} q {q}: user {u} fires {c}"
                    );
                }
                assert_eq!(counts.iter().sum::<u64>(), q);
            }
        }
    }

    /// Processes that split the users any way among themselves send, summed,
    /// exactly q per second: each sends the positions of its own users.
    #[test]
    fn any_split_of_the_users_sums_to_q() {
        let (total, q) = (1_000u64, 333u64);
        let r = SlotRule::new(total);
        for cuts in [
            vec![0, 1_000],
            vec![0, 1, 999, 1_000],
            vec![0, 250, 500, 501, 1_000],
        ] {
            for t in 0..40 {
                let mut sum = 0;
                for w in cuts.windows(2) {
                    sum += (0..q)
                        .filter(|&p| (w[0]..w[1]).contains(&r.user_at(t, q, p)))
                        .count() as u64;
                }
                assert_eq!(sum, q, "cuts {cuts:?} t {t}");
            }
        }
    }

    #[test]
    fn at_most_one_per_user_per_second_when_q_is_at_most_total() {
        let r = SlotRule::new(997);
        for q in [1, 2, 500, 996, 997] {
            for t in 0..10 {
                let mut seen = std::collections::HashSet::new();
                for p in 0..q {
                    assert!(seen.insert(r.user_at(t, q, p)), "q {q} t {t} p {p}");
                }
            }
        }
    }

    #[test]
    fn offsets_spread_the_second_or_burst_at_its_start() {
        assert_eq!(offset_ns(0, 4, false), 0);
        assert_eq!(offset_ns(1, 4, false), 250_000_000);
        assert_eq!(offset_ns(1, 3, false), 333_333_334);
        assert!(offset_ns(59_999, 60_000, false) < NANOS_PER_SEC);
        assert_eq!(offset_ns(7, 10, true), 0);
    }

    #[test]
    fn plan_walks_warmup_then_steps_then_ends() {
        let plan = Plan::new(
            2,
            vec![Phase { qps: 10, secs: 3 }, Phase { qps: 20, secs: 1 }],
        );
        let rates: Vec<Option<(u32, u64)>> = (0..7).map(|s| plan.at(s)).collect();
        assert_eq!(
            rates,
            [
                Some((0, 10)),
                Some((0, 10)),
                Some((1, 10)),
                Some((1, 10)),
                Some((1, 10)),
                Some((2, 20)),
                None
            ]
        );
        assert_eq!(plan.window(), 2..6);
        assert_eq!(plan.end_secs(), 6);
    }

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
