//! Prometheus text exposition (format 0.0.4), the helpers every process's
//! `/metrics` document is written with.
//!
//! Owns: writing the text (`# HELP`, `# TYPE`, samples, label escaping),
//! the latency buckets every histogram shares ([`LATENCY_BUCKETS_SECONDS`])
//! and the shape of a histogram ready to write ([`Buckets`]), and the
//! `process_*` metrics every Prometheus client library exposes
//! (`Exposition::process`, read from `/proc/self` through
//! `host`). Must not: read a clock, lock anything, know HTTP,
//! take buckets from an HdrHistogram (that is `stats::SummaryNs`'s file,
//! the one way a histogram is read), or know a counter struct: each program
//! writes its own document (`server::published`, `flood::published`,
//! `monitor::dashboard`) from what it already publishes once a second.
//!
//! Names follow Prometheus' naming guide: a prefix per process kind
//! (`hongbao_server_`, `hongbao_flood_`, `hongbao_monitor_`), base units
//! (seconds, bytes; money in the project's unit, cents) named last, counters
//! end in `_total`. A label is used where its values partition one count
//! (shakes by `result`, bad frames by `reason`): summing over it gives a
//! meaningful total. Counts that are not parts of one whole (envelopes
//! generated, granted, returned) are separate metrics. Counters are
//! cumulative since the process started (the server, the monitor) or since
//! shaking started (the flooder), so a restart shows as a reset, which
//! `rate()` handles.

use std::fmt::Write as _;

/// Quantiles every latency summary carries (`/seconds`, the reports).
pub(crate) const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Upper bounds (`le`) of every latency histogram's buckets, in seconds,
/// `+Inf` aside: 1, 2.5 and 5 per decade from 1 µs to 10 s. A server's
/// service time sits in the microseconds, a client's latency in the tens
/// of microseconds to milliseconds on loopback and up to seconds under
/// overload or across a WAN, so one set serves every histogram (and a
/// fleet's can be summed). Three per decade bound `histogram_quantile`'s
/// error to a factor of 2.5 at worst; the exact percentiles stay in
/// `/seconds` and the reports.
pub const LATENCY_BUCKETS_SECONDS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram as Prometheus takes it: cumulative counts per
/// bucket of [`LATENCY_BUCKETS_SECONDS`], the count and the sum.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Buckets {
    /// Samples at most each bound of [`LATENCY_BUCKETS_SECONDS`] (same
    /// order; cumulative, so never decreasing). Empty means all zero.
    pub cumulative: Vec<u64>,
    /// Samples recorded (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the samples in seconds, to the histogram's precision.
    pub sum_seconds: f64,
}

/// One sample of a [`Family`]: its label value and how its count is read
/// from the struct.
pub(crate) type Sample<T> = (&'static str, fn(&T) -> u64);

/// One counter family of a counter struct `T`: its name, help, and its
/// samples, each read from `T` by a function: one unlabelled sample
/// (`label` empty, the sample's value `""`), or one per value of `label`.
#[derive(Debug)]
pub(crate) struct Family<T: 'static> {
    /// The metric's name, ending in `_total`.
    pub name: &'static str,
    /// What is counted.
    pub help: &'static str,
    /// The label that tells the samples apart; empty for one sample.
    pub label: &'static str,
    /// `(label value, read the count)`.
    pub samples: &'static [Sample<T>],
}

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Type {
    /// Only goes up (resets with the process).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets, `_sum` and `_count`.
    Histogram,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// A Prometheus text document being written.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty document.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Every sample of
    /// the family must follow before the next family starts.
    pub fn family(&mut self, name: &str, help: &str, kind: Type) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// Counter families of one struct (see [`Family`]).
    pub fn families<T>(&mut self, families: &[Family<T>], of: &T) {
        for f in families {
            self.family(f.name, f.help, Type::Counter);
            for (value, get) in f.samples {
                let labels: &[(&str, &str)] = if f.label.is_empty() {
                    &[]
                } else {
                    &[(f.label, value)]
                };
                self.sample(f.name, labels, get(of) as f64);
            }
        }
    }

    /// A counter without labels. `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, Type::Counter);
        self.sample(name, &[], value as f64);
    }

    /// A counter of seconds (or any fractional base unit).
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, help, Type::Counter);
        self.sample(name, &[], value);
    }

    /// A gauge: a value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, help, Type::Gauge);
        self.sample(name, &[], value);
    }

    /// A gauge with one sample per label value: `name{label="value"} x`.
    pub fn gauge_labelled(&mut self, name: &str, help: &str, label: &str, samples: &[(&str, f64)]) {
        self.family(name, help, Type::Gauge);
        for (value, x) in samples {
            self.sample(name, &[(label, value)], *x);
        }
    }

    /// A histogram over [`LATENCY_BUCKETS_SECONDS`]: one cumulative
    /// `_bucket` per bound and `+Inf`, `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, b: &Buckets) {
        self.family(name, help, Type::Histogram);
        let bucket = format!("{name}_bucket");
        for (i, le) in LATENCY_BUCKETS_SECONDS.iter().enumerate() {
            let n = b.cumulative.get(i).copied().unwrap_or(0);
            self.sample(&bucket, &[("le", &number(*le))], n as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], b.count as f64);
        self.sample(&format!("{name}_sum"), &[], b.sum_seconds);
        self.sample(&format!("{name}_count"), &[], b.count as f64);
    }

    /// The `process_*` metrics of Prometheus' client libraries for this
    /// process, those `/proc/self` gives: CPU, memory, descriptors and the
    /// open-file limit (the alerts compare the last two), start time. A
    /// figure that cannot be read is left out rather than shown as zero.
    pub fn process(&mut self) {
        let p = crate::host::process_self();
        if let Some(x) = p.cpu_seconds {
            self.counter_f64(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                x,
            );
        }
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds.map(|n| n as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft RLIMIT_NOFILE).",
                p.fds_max.map(|n| n as f64),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes.map(|n| n as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes.map(|n| n as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(x) = value {
                self.gauge(name, help, x);
            }
        }
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The content type of the text format, for the HTTP answer.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
        assert_eq!(number(2.5e-6), "0.0000025");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\ny\\"), "x\\ny\\\\");
    }

    #[test]
    fn a_histogram_has_every_bucket_then_inf_sum_and_count() {
        let mut e = Exposition::new();
        let mut cumulative = vec![0; LATENCY_BUCKETS_SECONDS.len()];
        cumulative[3..].fill(2);
        e.histogram(
            "x_seconds",
            "help",
            &Buckets {
                cumulative,
                count: 3,
                sum_seconds: 20.5,
            },
        );
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "# TYPE x_seconds histogram");
        assert_eq!(lines[2], "x_seconds_bucket{le=\"0.000001\"} 0");
        assert_eq!(lines[5], "x_seconds_bucket{le=\"0.00001\"} 2");
        assert_eq!(lines[23], "x_seconds_bucket{le=\"10\"} 2");
        assert_eq!(lines[24], "x_seconds_bucket{le=\"+Inf\"} 3");
        assert_eq!(lines[25], "x_seconds_sum 20.5");
        assert_eq!(lines[26], "x_seconds_count 3");
        assert_eq!(lines.len(), 27);
    }

    #[test]
    fn labelled_counters_share_one_family() {
        let mut e = Exposition::new();
        let families = [Family::<(u64, u64)> {
            name: "a_total",
            help: "what",
            label: "result",
            samples: &[("x", |c| c.0), ("y", |c| c.1)],
        }];
        e.families(&families, &(1, 2));
        assert_eq!(
            e.finish(),
            "# HELP a_total what\n# TYPE a_total counter\na_total{result=\"x\"} 1\na_total{result=\"y\"} 2\n"
        );
    }

    #[test]
    fn this_process_has_descriptors_and_a_limit() {
        let mut e = Exposition::new();
        e.process();
        let text = e.finish();
        for name in [
            "process_open_fds ",
            "process_max_fds ",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }
}
