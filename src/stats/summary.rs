//! The one way a percentile summary is taken from a latency histogram, in
//! the histogram's own unit (nanoseconds), and the shapes each published
//! document carries it in.
//!
//! Owns: [`SummaryNs`] (count, mean, the quantiles of
//! [`crate::prom::QUANTILES`], max) and its conversions: to microseconds for
//! the flooder's report and `/seconds`
//! ([`crate::stats::client::Percentiles::from_summary`]), to seconds for
//! `/metrics` ([`SummaryNs::to_prom`]), and into the server's per-second
//! nanosecond fields ([`crate::stats::SecondStats::set_service`]). Must not: change a published
//! number: each conversion does the arithmetic its document always did, so
//! `/seconds`, `/metrics` and the reports stay byte for byte the same.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clock::NANOS_PER_SEC;
use crate::prom::{self, LatencySummary};

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

    /// The quantiles, in the order of [`prom::QUANTILES`].
    pub fn quantiles_ns(&self) -> [u64; 4] {
        [self.p50_ns, self.p90_ns, self.p99_ns, self.p999_ns]
    }

    /// As a Prometheus summary, in seconds; no quantile when empty.
    pub fn to_prom(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count,
            sum_seconds: self.mean_ns * self.count as f64 / NANOS_PER_SEC as f64,
            quantiles: prom::QUANTILES
                .iter()
                .zip(self.quantiles_ns())
                .map(|(&q, ns)| (q, ns as f64 / NANOS_PER_SEC as f64))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::Exposition;

    #[test]
    fn an_empty_summary_has_no_quantiles_but_a_count() {
        let s = SummaryNs::of(&crate::hlog::latency_histogram()).to_prom();
        let mut e = Exposition::new();
        e.summary("x_seconds", "help", &s);
        assert_eq!(
            e.finish(),
            "# HELP x_seconds help\n# TYPE x_seconds summary\nx_seconds_sum 0\nx_seconds_count 0\n"
        );
    }

    #[test]
    fn a_summary_is_in_seconds() {
        let mut h = crate::hlog::latency_histogram();
        for ns in [1_000, 2_000, 3_000, 1_000_000] {
            h.record(ns).expect("in bounds");
        }
        let s = SummaryNs::of(&h).to_prom();
        assert_eq!(s.count, 4);
        assert_eq!(s.quantiles.len(), prom::QUANTILES.len());
        let p50 = s.quantiles[0].1;
        assert!((p50 - 2e-6).abs() < 1e-8, "{p50}");
        assert!((s.sum_seconds - 1.006e-3).abs() < 1e-5, "{}", s.sum_seconds);
    }

    #[test]
    fn every_unit_is_the_same_reading_of_the_histogram() {
        let mut h = crate::hlog::latency_histogram();
        for ns in 1..=10_000u64 {
            h.record(ns * 997).expect("in bounds");
        }
        let s = SummaryNs::of(&h);
        let p = s.to_prom();
        let us = crate::stats::client::Percentiles::from_summary(&s);
        for (i, &q) in prom::QUANTILES.iter().enumerate() {
            let ns = h.value_at_quantile(q);
            assert_eq!(s.quantiles_ns()[i], ns);
            assert_eq!(p.quantiles[i], (q, ns as f64 / 1e9));
        }
        assert_eq!(us.p99_us, h.value_at_quantile(0.99) as f64 / 1_000.0);
        assert_eq!(us.mean_us, h.mean() / 1_000.0);
        assert_eq!(p.sum_seconds, h.mean() * h.len() as f64 / 1e9);
        assert_eq!(s.max_ns, h.max());
    }
}
