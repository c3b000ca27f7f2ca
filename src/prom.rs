//! Prometheus text exposition (format 0.0.4), the helpers every process's
//! `/metrics` document is written with.
//!
//! Owns: writing the text (`# HELP`, `# TYPE`, samples, label escaping), the
//! shape of the cumulative latency summary a process publishes beside its
//! counters ([`LatencySummary`]) and the quantiles every summary carries
//! ([`QUANTILES`]). Must not: read a clock, lock anything, know HTTP, take
//! a summary from a histogram (that is `stats::SummaryNs`, the one way), or
//! know a counter struct: each program writes its own document
//! (`server::published`, `flood::published`) from what it already
//! publishes once a second.
//!
//! Names follow Prometheus' conventions: a prefix per process kind
//! (`hongbao_server_`, `hongbao_flood_`), counters end in `_total`,
//! latencies are summaries in seconds. Counters are cumulative since the
//! process started (the server) or since shaking started (the flooder), so a
//! restart shows as a reset, which `rate()` handles. Every field of the
//! counter structs is exposed by name through serde, so a counter added to
//! them appears here without a change.

use std::fmt::Write as _;

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
}
