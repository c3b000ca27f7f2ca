//! What one flooder thread counts, and how threads' counts are merged.
//!
//! Owns: the latency histograms ([`Latency`], the run's; [`SecondHists`],
//! one second's) and their merge; the counts beside them are
//! [`crate::stats::client::Counters`]. Must not: be shared between threads while
//! a run is going. Each thread owns its own and hands them over by value
//! (once a second for progress, once at the end in full), so nothing on the
//! send/receive path is locked or contended.

use hdrhistogram::Histogram;

use crate::hlog::latency_histogram;
use crate::stats::recycle::Recycle;

/// Latency histograms of one thread (or, merged, of the run), in nanoseconds
/// with 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency {
    /// Answer time − intended send time: what a user waiting on a schedule
    /// sees, corrected for coordinated omission.
    pub corrected: Histogram<u64>,
    /// Answer time − actual send time: the uncorrected service time.
    pub service: Histogram<u64>,
    /// Actual send time − intended send time: the flooder's own lateness
    /// (timer granularity, a busy core), which `corrected` includes and
    /// `service` leaves out. Shown so that a reader can tell the two apart.
    pub send_lag: Histogram<u64>,
    /// `corrected` of the shakes that moved no money (every answer but "got
    /// an envelope", and lost requests): what a durable ledger must not slow.
    pub no_money: Histogram<u64>,
}

/// One thread's histograms of one second, by the time things happened in
/// it: the corrected latency of the answers that arrived, and the send lag
/// of the requests that left. Handed to the coordinator each second (for the
/// progress line's percentiles and the `--hlog` interval log) and handed
/// back for reuse ([`crate::stats::recycle`]).
#[derive(Clone, Debug)]
pub struct SecondHists {
    /// Answer time − intended send time, ns.
    pub corrected: Histogram<u64>,
    /// Actual − intended send time, ns.
    pub send_lag: Histogram<u64>,
}

impl SecondHists {
    /// Empty histograms.
    pub fn new() -> SecondHists {
        SecondHists {
            corrected: latency_histogram(),
            send_lag: latency_histogram(),
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &SecondHists) {
        // Same bounds on both sides, so adding cannot fail.
        self.corrected
            .add(&other.corrected)
            .expect("same histogram bounds");
        self.send_lag
            .add(&other.send_lag)
            .expect("same histogram bounds");
    }
}

impl Recycle for SecondHists {
    fn fresh() -> SecondHists {
        SecondHists::new()
    }

    fn is_empty(&self) -> bool {
        self.corrected.is_empty() && self.send_lag.is_empty()
    }

    fn reset(&mut self) {
        self.corrected.reset();
        self.send_lag.reset();
    }
}

impl Default for SecondHists {
    fn default() -> SecondHists {
        SecondHists::new()
    }
}

impl Latency {
    /// Empty histograms, allocated once here so that recording never
    /// allocates.
    pub fn new() -> Latency {
        Latency {
            corrected: latency_histogram(),
            service: latency_histogram(),
            send_lag: latency_histogram(),
            no_money: latency_histogram(),
        }
    }

    /// Records the corrected latency of a shake that moved no money (also
    /// recorded with [`Latency::record`]).
    #[inline]
    pub fn record_no_money(&mut self, corrected_ns: u64) {
        self.no_money.saturating_record(corrected_ns.max(1));
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&mut self, corrected_ns: u64, service_ns: u64) {
        // The histograms start at 1 ns; a 0 (same clock reading) is 1.
        self.corrected.saturating_record(corrected_ns.max(1));
        self.service.saturating_record(service_ns.max(1));
    }

    /// Records how late one request went out.
    #[inline]
    pub fn record_send_lag(&mut self, lag_ns: u64) {
        self.send_lag.saturating_record(lag_ns.max(1));
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        self.corrected
            .add(&other.corrected)
            .expect("same histogram bounds");
        self.service
            .add(&other.service)
            .expect("same histogram bounds");
        self.send_lag
            .add(&other.send_lag)
            .expect("same histogram bounds");
        self.no_money
            .add(&other.no_money)
            .expect("same histogram bounds");
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::client::Percentiles;

    #[test]
    fn latency_merges_and_summarises_in_microseconds() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..=1000u64 {
            a.record(i * 1_000, i * 500);
        }
        b.record(5_000_000, 0);
        b.record_send_lag(700);
        a.add(&b);
        assert_eq!(a.send_lag.len(), 1);
        let p = Percentiles::of(&a.corrected);
        assert_eq!(p.count, 1001);
        assert!((p.p50_us - 501.0).abs() <= 1.0, "{p:?}");
        assert!((p.max_us - 5_000.0).abs() <= 5.0, "{p:?}");
        let s = Percentiles::of(&a.service);
        assert_eq!(s.count, 1001);
        assert!(s.p50_us < p.p50_us);
        assert_eq!(
            Percentiles::of(&Latency::new().service),
            Percentiles::default()
        );
    }

    #[test]
    fn latency_beyond_the_bound_saturates_instead_of_failing() {
        let mut a = Latency::new();
        a.record(u64::MAX, u64::MAX);
        assert_eq!(a.corrected.len(), 1);
    }
}
