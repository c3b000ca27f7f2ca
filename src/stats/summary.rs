//! The one way a percentile summary is taken from a latency histogram, in
//! the histogram's own unit (nanoseconds), and the shapes each published
//! document carries it in.
//!
//! Owns: [`SummaryNs`] (count, mean, the quantiles of
//! [`crate::prom::QUANTILES`], max) and its conversions: to microseconds for
//! the flooder's report and `/seconds`
//! ([`crate::stats::client::Percentiles::from_summary`]) and into the
//! server's per-second nanosecond fields
//! ([`crate::stats::SecondStats::set_service_percentiles`]); and
//! [`buckets`], the histogram `/metrics` shows (cumulative counts per
//! Prometheus bucket). Must not: change a published number: each
//! conversion does the arithmetic its document always did, so `/seconds`
//! and the reports stay byte for byte the same.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock::NANOS_PER_SEC;
use crate::prom;

/// A latency histogram summarised, nanoseconds. All zero for an empty
/// histogram: a quantile of nothing is no number, and every document shows
/// an idle span as zeros (or, in `/metrics`, as no quantile).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SummaryNs {
    /// Samples recorded.
    pub count: u64,
    /// Mean, to the histogram's precision.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest sample (to the histogram's precision).
    pub max_ns: u64,
}

impl SummaryNs {
    /// Summarises `h` (nanoseconds).
    pub fn of(h: &Histogram<u64>) -> SummaryNs {
        if h.is_empty() {
            return SummaryNs::default();
        }
        let [p50_ns, p90_ns, p99_ns, p999_ns] = prom::QUANTILES.map(|q| h.value_at_quantile(q));
        SummaryNs {
            count: h.len(),
            mean_ns: h.mean(),
            p50_ns,
            p90_ns,
            p99_ns,
            p999_ns,
            max_ns: h.max(),
        }
    }

    /// The quantiles, in the order of `prom::QUANTILES`.
    pub fn quantiles_ns(&self) -> [u64; 4] {
        [self.p50_ns, self.p90_ns, self.p99_ns, self.p999_ns]
    }
}

/// `h` (nanoseconds) as a Prometheus histogram over
/// [`prom::LATENCY_BUCKETS_SECONDS`]: for each bound, the samples at most
/// it. A sample counts as at most a bound when the HdrHistogram bucket it
/// was recorded in starts at or below the bound, as
/// `count_between(0, bound)` counts (three significant digits: a sample up
/// to 0.1 % past a bound may count in it). One pass over the recorded
/// values, off the request path (the stats threads, once a second).
pub fn buckets(h: &Histogram<u64>) -> prom::Buckets {
    let bounds_ns =
        prom::LATENCY_BUCKETS_SECONDS.map(|s| (s * NANOS_PER_SEC as f64).round() as u64);
    let mut per_bucket = [0u64; prom::LATENCY_BUCKETS_SECONDS.len()];
    for v in h.iter_recorded() {
        let low = h.lowest_equivalent(v.value_iterated_to());
        // The first bound the sample fits under; past the last, only +Inf.
        if let Some(i) = bounds_ns.iter().position(|&b| low <= b) {
            per_bucket[i] += v.count_at_value();
        }
    }
    let mut running = 0;
    let cumulative = per_bucket
        .iter()
        .map(|n| {
            running += n;
            running
        })
        .collect();
    prom::Buckets {
        cumulative,
        count: h.len(),
        sum_seconds: if h.is_empty() {
            0.0
        } else {
            h.mean() * h.len() as f64 / NANOS_PER_SEC as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_histogram_has_empty_buckets_and_a_zero_count() {
        let b = buckets(&crate::hlog::latency_histogram());
        assert_eq!(b.count, 0);
        assert_eq!(b.sum_seconds, 0.0);
        assert!(b.cumulative.iter().all(|&n| n == 0));
        assert_eq!(SummaryNs::of(&crate::hlog::latency_histogram()).count, 0);
    }

    #[test]
    fn buckets_count_what_count_between_counts() {
        let mut h = crate::hlog::latency_histogram();
        // Every bound exactly, just past it, and a spread of others,
        // past the last bound too.
        for le in prom::LATENCY_BUCKETS_SECONDS {
            let ns = (le * 1e9).round() as u64;
            h.record(ns).expect("in bounds");
            h.record(ns + ns / 100 + 1).expect("in bounds");
        }
        for i in 1..=5_000u64 {
            h.record(i * i * 997).expect("in bounds");
        }
        h.record(30_000_000_000).expect("in bounds");
        let b = buckets(&h);
        for (i, le) in prom::LATENCY_BUCKETS_SECONDS.iter().enumerate() {
            let ns = (le * 1e9).round() as u64;
            assert_eq!(b.cumulative[i], h.count_between(0, ns), "le {le}");
        }
        assert!(b.cumulative.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(b.count, h.len());
        assert!(b.cumulative[b.cumulative.len() - 1] < b.count);
        assert!((b.sum_seconds - h.mean() * h.len() as f64 / 1e9).abs() < 1e-9);
    }

    #[test]
    fn every_unit_is_the_same_reading_of_the_histogram() {
        let mut h = crate::hlog::latency_histogram();
        for ns in 1..=10_000u64 {
            h.record(ns * 997).expect("in bounds");
        }
        let s = SummaryNs::of(&h);
        let us = crate::stats::client::Percentiles::from_summary(&s);
        for (i, &q) in prom::QUANTILES.iter().enumerate() {
            let ns = h.value_at_quantile(q);
            assert_eq!(s.quantiles_ns()[i], ns);
        }
        assert_eq!(us.p99_us, h.value_at_quantile(0.99) as f64 / 1_000.0);
        assert_eq!(us.mean_us, h.mean() / 1_000.0);
        assert_eq!(s.max_ns, h.max());
    }
}
