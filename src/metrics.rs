//! Prometheus text exposition (format 0.0.4) for the server and the flooder.
//!
//! Owns: writing the text (`# HELP`, `# TYPE`, samples, label escaping),
//! the cumulative latency summary a process publishes beside its counters
//! ([`LatencySummary`]), and the two documents served at `GET /metrics`:
//! [`server`] and [`flooder`]. Must not: read a clock, lock anything, or
//! know HTTP. The callers hand in what they already publish once a second.
//!
//! Names follow Prometheus' conventions: a prefix per process kind
//! (`hongbao_server_`, `hongbao_flood_`), counters end in `_total`,
//! latencies are summaries in seconds. Counters are cumulative since the
//! process started (the server) or since shaking started (the flooder), so a
//! restart shows as a reset, which `rate()` handles. Every field of the
//! counter structs is exposed by name through serde, so a counter added to
//! them appears here without a change.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Quantiles every latency summary carries.
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// A latency distribution as a Prometheus summary: quantiles over the whole
/// run, in seconds, with the count and sum of the samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Sum of the samples in seconds, to the histogram's precision (three
    /// significant digits per sample).
    pub sum_seconds: f64,
    /// `(quantile, seconds)` for each of [`QUANTILES`]; empty when no sample
    /// was recorded (a quantile of nothing is not a number).
    pub quantiles: Vec<(f64, f64)>,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds.
    pub fn of_ns(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            sum_seconds: h.mean() * h.len() as f64 / 1e9,
            quantiles: QUANTILES
                .iter()
                .map(|&q| (q, h.value_at_quantile(q) as f64 / 1e9))
                .collect(),
        }
    }
}

/// A Prometheus text document being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty document.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter: a cumulative count that only resets when the process does.
    /// `name` should end in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A gauge: a value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {}", number(value));
    }

    /// A gauge with one sample per label value: `name{label="value"} x`.
    pub fn gauge_labelled(&mut self, name: &str, help: &str, label: &str, samples: &[(&str, f64)]) {
        self.header(name, help, "gauge");
        for (value, x) in samples {
            let _ = writeln!(
                self.out,
                "{name}{{{label}=\"{}\"}} {}",
                escape_label(value),
                number(*x)
            );
        }
    }

    /// A summary: quantile samples, `_sum` and `_count`.
    pub fn summary(&mut self, name: &str, help: &str, s: &LatencySummary) {
        self.header(name, help, "summary");
        for (q, v) in &s.quantiles {
            let _ = writeln!(self.out, "{name}{{quantile=\"{q}\"}} {}", number(*v));
        }
        let _ = writeln!(self.out, "{name}_sum {}", number(s.sum_seconds));
        let _ = writeln!(self.out, "{name}_count {}", s.count);
    }

    /// One counter per numeric field of `counters` (a struct of `u64`s
    /// serialised by serde): `{prefix}{field}_total`.
    pub fn counters_of(&mut self, prefix: &str, what: &str, counters: &impl Serialize) {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(counters) else {
            return;
        };
        for (field, value) in fields {
            if let Some(v) = value.as_u64() {
                self.counter(
                    &format!("{prefix}{field}_total"),
                    &format!("{what}: {field}, cumulative"),
                    v,
                );
            }
        }
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The content type of the text format, for the HTTP answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A sample value as Prometheus writes it (`NaN`, `+Inf`, or a decimal).
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{x}")
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The server's `/metrics`: cumulative counters of every core and of the
/// generator, the gauges of the last closed second, and the service-time
/// summary over the run. `total` is the server's published total (its
/// `second` the last closed second).
pub fn server(total: &crate::stats::SecondStats, service: &LatencySummary) -> String {
    let mut e = Exposition::new();
    e.counters_of(
        "hongbao_server_",
        "events counted by the worker cores since start",
        &total.server,
    );
    e.counters_of(
        "hongbao_server_generator_",
        "events counted by the envelope generator since start",
        &total.generator,
    );
    e.gauge(
        "hongbao_server_conns_open",
        "connections open at the close of the last second",
        total.conns_open as f64,
    );
    e.gauge(
        "hongbao_server_envelopes_in_rings",
        "envelopes waiting in the cores' rings at the close of the last second",
        total.envelopes_in_rings as f64,
    );
    e.gauge(
        "hongbao_server_last_second",
        "the last closed Unix second these figures include (0 before the first)",
        total.second as f64,
    );
    e.summary(
        "hongbao_server_service_seconds",
        "service time, a frame read to its answer handed to write, over the run",
        service,
    );
    e.finish()
}

/// What the flooder publishes for `/metrics`: its cumulative counters over
/// the shaking phase, the last complete second's gauges and the latency
/// summaries over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodMetrics {
    /// `connecting`, `shaking` or `done`.
    pub state: &'static str,
    /// Every complete second's counters summed.
    pub totals: crate::flood::stats::Counters,
    /// The last complete Unix second (0 before the first).
    pub last_second: u64,
    /// Global shakes per second the plan asked in that second.
    pub qps: u64,
    /// This process's users logged in at that second.
    pub connections: u64,
    /// The busiest thread's CPU over that second, percent.
    pub thread_cpu_max_pct: f64,
    /// Latency from intended send time (corrected), every complete second.
    pub latency: LatencySummary,
    /// The flooder's own lateness, every complete second.
    pub send_lag: LatencySummary,
}

/// The flooder's `/metrics`.
pub fn flooder(m: &FloodMetrics) -> String {
    let mut e = Exposition::new();
    e.counters_of(
        "hongbao_flood_",
        "events counted by the flooder's threads since shaking started",
        &m.totals,
    );
    let states = ["connecting", "shaking", "done"];
    let samples: Vec<(&str, f64)> = states
        .iter()
        .map(|s| (*s, f64::from(u8::from(*s == m.state))))
        .collect();
    e.gauge_labelled(
        "hongbao_flood_state",
        "1 for the phase the flooder is in",
        "state",
        &samples,
    );
    e.gauge(
        "hongbao_flood_qps_target",
        "global shakes per second the plan asked in the last complete second",
        m.qps as f64,
    );
    e.gauge(
        "hongbao_flood_connections",
        "this process's users logged in during the last complete second",
        m.connections as f64,
    );
    e.gauge(
        "hongbao_flood_thread_cpu_max_ratio",
        "the busiest flooder thread's CPU over the last complete second, 1 = a whole core",
        m.thread_cpu_max_pct / 100.0,
    );
    e.gauge(
        "hongbao_flood_last_second",
        "the last complete Unix second these figures include (0 before the first)",
        m.last_second as f64,
    );
    e.summary(
        "hongbao_flood_latency_seconds",
        "shake latency from the intended send time to the answer's arrival (corrected for coordinated omission)",
        &m.latency,
    );
    e.summary(
        "hongbao_flood_send_lag_seconds",
        "how late the flooder handed requests to the kernel against their intended time",
        &m.send_lag,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_labels_are_written_as_the_format_says() {
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\ny\\"), "x\\ny\\\\");
    }

    #[test]
    fn an_empty_summary_has_no_quantiles_but_a_count() {
        let s = LatencySummary::of_ns(&crate::stats::latency_histogram());
        let mut e = Exposition::new();
        e.summary("x_seconds", "help", &s);
        assert_eq!(
            e.finish(),
            "# HELP x_seconds help\n# TYPE x_seconds summary\nx_seconds_sum 0\nx_seconds_count 0\n"
        );
    }

    #[test]
    fn a_summary_is_in_seconds() {
        let mut h = crate::stats::latency_histogram();
        for ns in [1_000, 2_000, 3_000, 1_000_000] {
            h.record(ns).expect("in bounds");
        }
        let s = LatencySummary::of_ns(&h);
        assert_eq!(s.count, 4);
        assert_eq!(s.quantiles.len(), QUANTILES.len());
        let p50 = s.quantiles[0].1;
        assert!((p50 - 2e-6).abs() < 1e-8, "{p50}");
        assert!((s.sum_seconds - 1.006e-3).abs() < 1e-5, "{}", s.sum_seconds);
    }
}
