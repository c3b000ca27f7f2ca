//! `hongbao::hlog` through its public API: interval logs read back with the
//! `hdrhistogram` crate's own parser and deserializer, and `.hgrm` text held
//! to Java's format.
//!
//! Owns: the round trip (what we write is what a reader gets) and the shape
//! of the distribution text. Must not: need Java or the network; the check
//! against the Java tools is `tools/check_hlog.sh`, which runs
//! `sample_for_java` below with `HONGBAO_HLOG_SAMPLE` set to a directory,
//! and `hgrm_of_a_log` with `HONGBAO_HLOG_READ` set to a real run's log.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hongbao::hlog::{self, IntervalLog, LEGEND, MAX_VALUE_DIVISOR};

/// Our latency histograms: nanoseconds up to a minute, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// `count` latencies in nanoseconds: mostly tens of microseconds to a few
/// milliseconds, with a rare slow tail, from a fixed seed.
fn latencies(seed: u64, count: usize) -> Histogram<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut hist = latency_histogram();
    for _ in 0..count {
        let base = 20_000 + rng.u64(0..200_000);
        let tail = if rng.u32(0..1000) == 0 {
            rng.u64(0..250_000_000)
        } else {
            (-(rng.f64().max(1e-12)).ln() * 400_000.0) as u64
        };
        hist.record(base + tail).expect("within a minute");
    }
    hist
}

/// A fresh directory in the temp dir, unique to this process and test; the
/// test removes it.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-hlog-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a temp dir");
    dir
}

/// Standard base64 (with padding) to bytes; the log's histogram column.
#[track_caller]
fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not base64: {e}"))
}

/// One interval as a reader sees it.
struct ReadInterval {
    start: Duration,
    length: Duration,
    max_ms: f64,
    hist: Histogram<u64>,
}

/// Parses a whole log with the crate's iterator and deserializer.
#[track_caller]
fn read_log(text: &[u8]) -> (Vec<LogEntry<'_>>, Vec<ReadInterval>) {
    let mut markers = Vec::new();
    let mut intervals = Vec::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(text) {
        match entry.expect("log parses") {
            LogEntry::Interval(i) => {
                let bytes = base64_decode(i.encoded_histogram());
                let hist: Histogram<u64> = deserializer
                    .deserialize(&mut bytes.as_slice())
                    .expect("histogram decodes");
                intervals.push(ReadInterval {
                    start: i.start_timestamp(),
                    length: i.duration(),
                    max_ms: i.max(),
                    hist,
                });
            }
            other => markers.push(other),
        }
    }
    (markers, intervals)
}

#[test]
fn interval_log_round_trips() {
    let dir = temp_dir("round_trip");
    let path = dir.join("round_trip.hlog");
    let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
    let written: Vec<(Duration, Duration, Histogram<u64>)> = vec![
        (Duration::ZERO, Duration::from_secs(1), latencies(1, 5_000)),
        (
            Duration::from_secs(1),
            Duration::from_secs(1),
            latencies(2, 20_000),
        ),
        // A second where nothing was answered still gets its line.
        (
            Duration::from_secs(2),
            Duration::from_secs(1),
            latency_histogram(),
        ),
        (
            Duration::from_millis(3_000),
            Duration::from_millis(1_500),
            latencies(3, 1),
        ),
        (
            Duration::from_millis(4_500),
            Duration::from_millis(250),
            latencies(4, 70_000),
        ),
    ];
    let mut log = IntervalLog::create(&path, start).expect("creating the log");
    for (offset, length, hist) in &written {
        log.append(*offset, *length, hist).expect("appending");
    }
    log.finish().expect("flushing");

    let text = std::fs::read(&path).expect("reading the log back");
    let (markers, read) = read_log(&text);
    let start_since_epoch = Duration::from_millis(1_700_000_000_250);
    assert_eq!(
        markers,
        vec![
            LogEntry::StartTime(start_since_epoch),
            LogEntry::BaseTime(start_since_epoch)
        ]
    );
    assert_eq!(read.len(), written.len());
    for (got, (offset, length, hist)) in read.iter().zip(&written) {
        assert_eq!(got.start, *offset);
        assert_eq!(got.length, *length);
        assert_eq!(got.hist.len(), hist.len());
        assert_eq!(got.hist.max(), hist.max());
        assert_eq!(got.hist.min_nz(), hist.min_nz());
        assert_eq!(got.hist.high(), hist.high());
        assert_eq!(got.hist.sigfig(), hist.sigfig());
        let counts = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        };
        assert_eq!(counts(&got.hist), counts(hist));
        // The max column is in milliseconds, to the three decimals written.
        let want_ms = hist.max() as f64 / MAX_VALUE_DIVISOR;
        assert!(
            (got.max_ms - want_ms).abs() <= 0.0005 + f64::EPSILON * want_ms,
            "max column {} for {} ns",
            got.max_ms,
            hist.max()
        );
    }
    std::fs::remove_dir_all(&dir).expect("removing the temp dir");
}

#[test]
fn interval_log_header_is_what_java_writes() {
    let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_007);
    let mut log = IntervalLog::new(Vec::new(), start).expect("header");
    log.append(
        Duration::from_secs(1),
        Duration::from_secs(1),
        &latencies(5, 100),
    )
    .expect("appending");
    let text = String::from_utf8(log.finish().expect("flushing")).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[0].starts_with("#[Logged with hongbao "));
    assert_eq!(lines[1], "#[Histogram log format version 1.3]");
    assert_eq!(
        lines[2],
        "#[StartTime: 1700000000.007 (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]"
    );
    assert_eq!(
        lines[3],
        "#[BaseTime: 1700000000.007 (seconds since epoch)]"
    );
    assert_eq!(lines[4], "#[MaxValueDivisor: 1000000.000]");
    assert_eq!(lines[5], LEGEND);
    let columns: Vec<&str> = lines[6].split(',').collect();
    assert_eq!(columns.len(), 4, "{}", lines[6]);
    assert_eq!(columns[0], "1.000");
    assert_eq!(columns[1], "1.000");
    // V2 + deflate encodings start with the cookie 0x1c849314: "HISTF" in base64.
    assert!(columns[3].starts_with("HISTF"), "{}", columns[3]);
}

/// Values 1..=10, traced by hand through Java's `PercentileIterator` and
/// `String.format` calls; the text the Java library prints for the same
/// histogram.
#[test]
fn hgrm_matches_java_for_one_to_ten() {
    let mut hist = latency_histogram();
    for v in 1..=10 {
        hist.record(v).expect("in range");
    }
    let mut out = Vec::new();
    hlog::write_hgrm(&mut out, &hist, 1.0).expect("writing");
    let want = "       Value     Percentile TotalCount 1/(1-Percentile)

       1.000 0.000000000000          1           1.00
       1.000 0.100000000000          1           1.11
       2.000 0.200000000000          2           1.25
       3.000 0.300000000000          3           1.43
       4.000 0.400000000000          4           1.67
       5.000 0.500000000000          5           2.00
       6.000 0.550000000000          6           2.22
       6.000 0.600000000000          6           2.50
       7.000 0.650000000000          7           2.86
       7.000 0.700000000000          7           3.33
       8.000 0.750000000000          8           4.00
       8.000 0.775000000000          8           4.44
       8.000 0.800000000000          8           5.00
       9.000 0.825000000000          9           5.71
       9.000 0.850000000000          9           6.67
       9.000 0.875000000000          9           8.00
       9.000 0.887500000000          9           8.89
       9.000 0.900000000000          9          10.00
      10.000 0.912500000000         10          11.43
      10.000 1.000000000000         10
#[Mean    =        5.500, StdDeviation   =        2.872]
#[Max     =       10.000, Total count    =           10]
#[Buckets =           26, SubBuckets     =         2048]
";
    assert_eq!(String::from_utf8(out).expect("utf-8"), want);
}

#[test]
fn hgrm_of_an_empty_histogram_is_header_and_footer() {
    let mut out = Vec::new();
    hlog::write_hgrm(&mut out, &latency_histogram(), MAX_VALUE_DIVISOR).expect("writing");
    let want = "       Value     Percentile TotalCount 1/(1-Percentile)

#[Mean    =        0.000, StdDeviation   =        0.000]
#[Max     =        0.000, Total count    =            0]
#[Buckets =           26, SubBuckets     =         2048]
";
    assert_eq!(String::from_utf8(out).expect("utf-8"), want);
}

/// A parsed `.hgrm` row: value, percentile, total count, 1/(1-percentile).
type HgrmRow = (f64, f64, u64, Option<f64>);

#[track_caller]
fn parse_hgrm(text: &str) -> (Vec<HgrmRow>, Vec<String>) {
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("       Value     Percentile TotalCount 1/(1-Percentile)")
    );
    assert_eq!(lines.next(), Some(""));
    let mut rows = Vec::new();
    let mut footer = Vec::new();
    for line in lines {
        if line.starts_with("#[") {
            footer.push(line.to_owned());
            continue;
        }
        assert!(footer.is_empty(), "row after the footer: {line}");
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert!(fields.len() == 3 || fields.len() == 4, "{line}");
        rows.push((
            fields[0].parse().expect("value"),
            fields[1].parse().expect("percentile"),
            fields[2].parse().expect("count"),
            fields.get(3).map(|f| f.parse().expect("1/(1-p)")),
        ));
    }
    (rows, footer)
}

/// The number after `name =` in a footer line.
#[track_caller]
fn footer_value(footer: &[String], name: &str) -> f64 {
    footer
        .iter()
        .find_map(|line| {
            let rest = line.split_once(&format!("{name} "))?.1;
            let rest = rest.trim_start().strip_prefix('=')?;
            rest.split([',', ']']).next()?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {name} in {footer:?}"))
}

#[test]
fn hgrm_rows_climb_to_the_max_and_the_footer_adds_up() {
    let hist = latencies(7, 100_000);
    let mut out = Vec::new();
    hlog::write_hgrm(&mut out, &hist, MAX_VALUE_DIVISOR).expect("writing");
    let text = String::from_utf8(out).expect("utf-8");
    let (rows, footer) = parse_hgrm(&text);

    assert!(rows.len() > 50, "{} rows", rows.len());
    for pair in rows.windows(2) {
        let ((v0, p0, c0, _), (v1, p1, c1, _)) = (pair[0], pair[1]);
        assert!(
            v0 <= v1 && p0 <= p1 && c0 <= c1,
            "{:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let first = rows[0];
    assert_eq!(first.1, 0.0);
    assert_eq!(first.3, Some(1.0));
    let last = rows[rows.len() - 1];
    assert_eq!(last.1, 1.0, "the last row is the 100th percentile");
    assert_eq!(last.3, None, "and has no 1/(1-p) column");
    assert_eq!(last.2, hist.len());
    let max_ms = hist.max() as f64 / MAX_VALUE_DIVISOR;
    assert!((last.0 - max_ms).abs() < 0.001, "{} vs {max_ms}", last.0);
    for &(value, percentile, _, inverse) in &rows[..rows.len() - 1] {
        let inverse = inverse.expect("1/(1-p) on every row but the last");
        assert!((inverse - 1.0 / (1.0 - percentile)).abs() <= 0.005 + 1e-9 * inverse);
        // Each row's value is where that percentile of the values lies.
        let at = hist.value_at_quantile(percentile) as f64 / MAX_VALUE_DIVISOR;
        assert!(value >= at - 0.001, "p{percentile}: row {value} below {at}");
    }

    assert_eq!(footer.len(), 3, "{footer:?}");
    assert_eq!(footer_value(&footer, "Total count"), hist.len() as f64);
    assert!((footer_value(&footer, "Max") - max_ms).abs() < 0.001);
    let mean_ms = hist.mean() / MAX_VALUE_DIVISOR;
    assert!((footer_value(&footer, "Mean") - mean_ms).abs() < 0.001);
    let stdev_ms = hist.stdev() / MAX_VALUE_DIVISOR;
    assert!((footer_value(&footer, "StdDeviation") - stdev_ms).abs() < 0.001);
    assert_eq!(footer_value(&footer, "Buckets"), f64::from(hist.buckets()));
    assert_eq!(footer_value(&footer, "SubBuckets"), 2048.0);
}

/// Writes `sample.hlog` (ten one-second intervals) and `sample.hgrm` (their
/// sum, in milliseconds) for `tools/check_hlog.sh` to hand to Java's
/// `HistogramLogProcessor`, into `$HONGBAO_HLOG_SAMPLE` if set, else into a
/// temp dir that is removed.
#[test]
fn sample_for_java() {
    let (dir, keep) = match std::env::var_os("HONGBAO_HLOG_SAMPLE") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (temp_dir("sample"), false),
    };
    std::fs::create_dir_all(&dir).expect("creating the sample dir");
    let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
    let mut log = IntervalLog::create(dir.join("sample.hlog"), start).expect("creating");
    let mut total = latency_histogram();
    for second in 0..10_u64 {
        let hist = latencies(100 + second, 10_000 + 3_000 * second as usize);
        total.add(&hist).expect("same bounds");
        log.append(Duration::from_secs(second), Duration::from_secs(1), &hist)
            .expect("appending");
    }
    log.finish().expect("flushing");
    let mut hgrm = std::fs::File::create(dir.join("sample.hgrm")).expect("creating");
    hlog::write_hgrm(&mut hgrm, &total, MAX_VALUE_DIVISOR).expect("writing");

    let text = std::fs::read(dir.join("sample.hlog")).expect("reading back");
    let (_, read) = read_log(&text);
    assert_eq!(read.len(), 10);
    let mut summed = latency_histogram();
    for interval in &read {
        summed.add(&interval.hist).expect("same bounds");
    }
    assert_eq!(summed.len(), total.len());
    assert_eq!(summed.max(), total.max());
    if !keep {
        std::fs::remove_dir_all(&dir).expect("removing the sample dir");
    }
}

/// Every interval of a log added up, as Java's `HistogramLogProcessor`
/// accumulates them: into a copy of the first interval's histogram (so the
/// sum keeps the bounds the log was written with); None when it has none.
#[track_caller]
fn sum_of_log(text: &[u8]) -> Option<Histogram<u64>> {
    let (_, intervals) = read_log(text);
    let mut intervals = intervals.into_iter();
    let mut sum = intervals.next()?.hist;
    for interval in intervals {
        sum.add(&interval.hist)
            .expect("intervals share their bounds");
    }
    Some(sum)
}

/// Reads the interval log `$HONGBAO_HLOG_READ` with the crate's reader,
/// adds its intervals up and writes their distribution in milliseconds
/// beside it as `NAME.read.hgrm`: what `tools/check_hlog.sh` requires Java's
/// `HistogramLogProcessor` to print for a real server's and flooder's log.
/// Without the variable it reads back a log it writes itself, and checks
/// that what it would write is the distribution of what went in.
#[test]
fn hgrm_of_a_log() {
    if let Some(path) = std::env::var_os("HONGBAO_HLOG_READ") {
        let path = PathBuf::from(path);
        let text = std::fs::read(&path).expect("reading $HONGBAO_HLOG_READ");
        let sum = sum_of_log(&text).expect("the log holds at least one interval");
        let mut hgrm =
            std::fs::File::create(path.with_extension("read.hgrm")).expect("creating .read.hgrm");
        hlog::write_hgrm(&mut hgrm, &sum, MAX_VALUE_DIVISOR).expect("writing .read.hgrm");
        return;
    }
    let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
    let mut log = IntervalLog::new(Vec::new(), start).expect("header");
    let mut total = latency_histogram();
    for second in 0..4_u64 {
        // An idle second in the middle, as a real log has them.
        let hist = if second == 2 {
            latency_histogram()
        } else {
            latencies(200 + second, 2_000)
        };
        total.add(&hist).expect("same bounds");
        log.append(Duration::from_secs(second), Duration::from_secs(1), &hist)
            .expect("appending");
    }
    let text = log.finish().expect("flushing");
    let sum = sum_of_log(&text).expect("four intervals");
    let hgrm = |h: &Histogram<u64>| {
        let mut out = Vec::new();
        hlog::write_hgrm(&mut out, h, MAX_VALUE_DIVISOR).expect("writing");
        String::from_utf8(out).expect("utf-8")
    };
    assert_eq!(hgrm(&sum), hgrm(&total));
    assert_eq!(sum.len(), 6_000);
}
