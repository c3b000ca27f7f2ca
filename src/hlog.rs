//! HdrHistogram's standard files, so that the Java tools read our latencies.
//!
//! Owns: the interval log ([`IntervalLog`], the `.hlog` that Java's
//! `HistogramLogReader`, `HistogramLogProcessor` and `HistogramLogAnalyzer`
//! read: one compressed histogram per interval) and the percentile
//! distribution text ([`write_hgrm`], the `.hgrm` that Java's
//! `AbstractHistogram.outputPercentileDistribution` prints and the online
//! plotter at hdrhistogram.github.io/HdrHistogram/plotFiles.html reads).
//! Must not: record, merge or decide what a histogram holds; read a clock
//! (the caller hands in the start time and each interval's offset); write
//! anything the Java tools would parse differently from ours.
//!
//! Units: our histograms record nanoseconds. An interval log keeps them as
//! recorded (the compressed histograms are exact), but its human-readable
//! `Interval_Max` column is in milliseconds ([`MAX_VALUE_DIVISOR`]), the unit
//! the Java tools show by default (`-outputValueUnitRatio 1e6`). A `.hgrm`
//! is in whatever unit its `value_unit_ratio` says: pass
//! [`MAX_VALUE_DIVISOR`] for milliseconds.
//!
//! The interval lines and their encoding (V2 + deflate + base64) are the
//! `hdrhistogram` crate's own writer and serializer; this module adds what
//! that writer lacks for the Java tools: the format version line, a
//! `StartTime` with its human date, and the legend line. The `.hgrm`
//! follows Java's code step for step (its percentile iterator, its mean and
//! deviation sums, and `String.format`'s rounding of decimals), because the
//! crate's own quantile iterator works in fractions rather than percents and
//! so picks slightly different rows.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, IntervalLogWriterError};
use hdrhistogram::serialization::{
    Deserializer, Serializer, V2DeflateSerializeError, V2DeflateSerializer,
};

/// The interval log format version we write, as Java's
/// `HistogramLogWriter` 2.1 and later write it.
pub const LOG_FORMAT_VERSION: &str = "1.3";

/// The legend line Java's `HistogramLogWriter.outputLegend` writes before
/// the first interval; readers skip it.
pub const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

/// What the `Interval_Max` column of an interval log is divided by:
/// nanoseconds to milliseconds, Java's `HistogramLogWriter` default.
pub const MAX_VALUE_DIVISOR: f64 = 1e6;

/// Percentile rows per half distance to 100% in a `.hgrm`: 5 is the
/// default of Java's `HistogramLogProcessor` and of the plotter's samples.
pub const PERCENTILE_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Why a histogram log or distribution could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HlogError {
    /// The log file could not be created.
    #[error("creating histogram log {}: {source}", path.display())]
    Create {
        /// The file we tried to create.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Writing or flushing failed.
    #[error("writing histogram log: {0}")]
    Io(#[from] io::Error),
    /// An interval histogram could not be encoded (counts beyond what the
    /// V2 format holds).
    #[error("encoding an interval histogram: {0}")]
    Encode(#[from] V2DeflateSerializeError),
    /// The start time is before 1970, which the log cannot express.
    #[error("histogram log start time is before the Unix epoch")]
    BeforeEpoch,
    /// A unit ratio must be a positive finite number to divide by.
    #[error("value unit ratio must be finite and above 0, got {0}")]
    BadUnitRatio(f64),
    /// The `hdrhistogram` crate's writer put something other than the header
    /// we saw at start-up before an interval line: a crate change this
    /// module has not caught up with.
    #[error("hdrhistogram's interval log writer wrote an unexpected header")]
    UnexpectedWriterOutput,
}

/// An interval log being written: a header, then one line per interval
/// histogram, each flushed as it is appended so that a run that dies keeps
/// every interval it finished.
///
/// The header names the start time twice: as `StartTime` (with a human date
/// in UTC) and as `BaseTime`, so that readers take each interval's timestamp
/// as seconds since that start, without guessing.
pub struct IntervalLog<W: Write = BufWriter<File>> {
    out: W,
    /// The crate's writer is built per interval (it borrows its output and
    /// serializer, so it cannot live in this struct); this is its settings.
    builder: IntervalLogWriterBuilder,
    /// Kept across intervals so its buffers are reused.
    serializer: V2DeflateSerializer,
    /// What the crate's writer puts before the first interval (the
    /// `#[MaxValueDivisor: ...]` comment): written once in our header and
    /// cut from the front of each later interval.
    prefix: Vec<u8>,
    /// One interval's text, reused.
    line: Vec<u8>,
}

impl IntervalLog<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes the header.
    ///
    /// `start_time` is when the measured run began; intervals are appended
    /// as offsets from it.
    pub fn create(path: impl AsRef<Path>, start_time: SystemTime) -> Result<Self, HlogError> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| HlogError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(BufWriter::new(file), start_time)
    }
}

impl<W: Write> IntervalLog<W> {
    /// Writes the header to `out` and returns the log, ready for intervals.
    ///
    /// The header, in the order Java's `HistogramLogWriter` users write it:
    ///
    /// ```text
    /// #[Logged with hongbao 0.1.0]
    /// #[Histogram log format version 1.3]
    /// #[StartTime: 1700000000.123 (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]
    /// #[BaseTime: 1700000000.123 (seconds since epoch)]
    /// #[MaxValueDivisor: 1000000.000]
    /// "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
    /// ```
    pub fn new(mut out: W, start_time: SystemTime) -> Result<Self, HlogError> {
        let since_epoch = start_time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| HlogError::BeforeEpoch)?;
        let secs = since_epoch.as_secs();
        let millis = since_epoch.subsec_millis();

        let mut builder = IntervalLogWriterBuilder::new();
        builder.with_max_value_divisor(MAX_VALUE_DIVISOR);
        let mut serializer = V2DeflateSerializer::new();
        let mut prefix = Vec::new();
        // Only the header the crate writes is wanted here; the writer it
        // returns is dropped at once.
        builder.begin_log_with(&mut prefix, &mut serializer)?;

        writeln!(out, "#[Logged with hongbao {}]", env!("CARGO_PKG_VERSION"))?;
        writeln!(out, "#[Histogram log format version {LOG_FORMAT_VERSION}]")?;
        writeln!(
            out,
            "#[StartTime: {secs}.{millis:03} (seconds since epoch), {}]",
            java_date_utc(secs)
        )?;
        writeln!(out, "#[BaseTime: {secs}.{millis:03} (seconds since epoch)]")?;
        out.write_all(&prefix)?;
        writeln!(out, "{LEGEND}")?;
        out.flush()?;

        Ok(IntervalLog {
            out,
            builder,
            serializer,
            prefix,
            line: Vec::new(),
        })
    }

    /// Appends one interval: `hist` holds what was recorded from
    /// `start_offset` (time since the log's start time) for `length`.
    ///
    /// The line is `start,length,max_ms,base64(V2 deflate histogram)` with
    /// three decimals, written by the `hdrhistogram` crate, and is flushed
    /// before this returns. Intervals should be appended in start order.
    pub fn append(
        &mut self,
        start_offset: Duration,
        length: Duration,
        hist: &Histogram<u64>,
    ) -> Result<(), HlogError> {
        self.line.clear();
        self.builder
            .begin_log_with(&mut self.line, &mut self.serializer)?
            .write_histogram(hist, start_offset, length, None)
            .map_err(|e| match e {
                IntervalLogWriterError::SerializeError(e) => HlogError::Encode(e),
                IntervalLogWriterError::IoError(e) => HlogError::Io(e),
            })?;
        let interval = self
            .line
            .strip_prefix(self.prefix.as_slice())
            .ok_or(HlogError::UnexpectedWriterOutput)?;
        self.out.write_all(interval)?;
        self.out.flush()?;
        Ok(())
    }

    /// Flushes and hands back the writer. Dropping the log instead also
    /// flushes, but loses any error.
    pub fn finish(mut self) -> Result<W, HlogError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A latency histogram as every process records it: nanoseconds, 1 ns to
/// 60 s at 3 significant digits (a minute is far beyond any run's deadline,
/// so nothing real saturates). The server's service time, the flooder's
/// latencies and the monitor's sums are all of this shape, so any two add
/// up exactly.
pub type LatencyHistogram = Histogram<u64>;

/// The slowest latency a [`LatencyHistogram`] holds: anything slower is
/// recorded as this.
pub const LATENCY_NS_MAX: u64 = 60 * crate::clock::NANOS_PER_SEC;

/// An empty [`LatencyHistogram`], allocated once here (about 200 KiB) so
/// that recording never allocates.
pub fn latency_histogram() -> LatencyHistogram {
    // A valid configuration, so creation cannot fail; if it ever did, that
    // is a bug here.
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// The longest encoded histogram [`decode_histogram`] takes: a second of
/// ours is a few KiB (V2 writes only the counts up to the largest value and
/// deflate shrinks the runs); anything near this is not one of ours.
pub const HISTOGRAM_TEXT_MAX: usize = 1 << 20;

/// A latency histogram as a source serves it: HdrHistogram's V2 encoding,
/// deflated, in standard base64 with padding: the histogram column of an
/// interval log, so Java's `Histogram.decodeFromCompressedByteBuffer` reads
/// it too. None only if the crate cannot encode it (counts past what V2
/// holds). Once a second per source, never per request: the encoding
/// allocates and deflates.
pub fn encode_histogram(h: &Histogram<u64>) -> Option<String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(&bytes))
}

/// Reads what [`encode_histogram`] wrote; `Err` says why not.
pub fn decode_histogram(
    deserializer: &mut Deserializer,
    text: &str,
) -> Result<Histogram<u64>, String> {
    if text.len() > HISTOGRAM_TEXT_MAX {
        return Err(format!(
            "an encoded histogram of {} bytes (at most {HISTOGRAM_TEXT_MAX})",
            text.len()
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("a histogram that is not base64: {e}"))?;
    deserializer
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("a histogram that does not decode: {e:?}"))
}

/// Writes `hist`'s percentile distribution exactly as Java's
/// `outputPercentileDistribution(out, 5, value_unit_ratio)` prints it.
///
/// Values are divided by `value_unit_ratio` (1e6 turns our nanoseconds into
/// milliseconds) and shown with as many decimals as the histogram has
/// significant digits:
///
/// ```text
///        Value     Percentile TotalCount 1/(1-Percentile)
///
///        0.045 0.000000000000          1           1.00
///        ...
///       12.452 1.000000000000      20000
/// #[Mean    =        1.043, StdDeviation   =        0.998]
/// #[Max     =       12.452, Total count    =        20000]
/// #[Buckets =           26, SubBuckets     =         2048]
/// ```
///
/// The last row is the 100th percentile, at the maximum, without a
/// `1/(1-Percentile)` column (it would be infinite); Java leaves it out too.
/// An empty histogram gives the header and the footer only.
pub fn write_hgrm<W: Write + ?Sized>(
    out: &mut W,
    hist: &Histogram<u64>,
    value_unit_ratio: f64,
) -> Result<(), HlogError> {
    if !(value_unit_ratio.is_finite() && value_unit_ratio > 0.0) {
        return Err(HlogError::BadUnitRatio(value_unit_ratio));
    }
    let text = percentile_distribution(hist, value_unit_ratio, PERCENTILE_TICKS_PER_HALF_DISTANCE);
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// One row of the distribution: the value reached, the percentile level it
/// was reported at, and how many values are at or below it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Row {
    value: u64,
    level_percent: f64,
    count_to_value: u64,
}

/// The whole `.hgrm` text: Java's format strings, with `%12.Nf` where N is
/// the histogram's significant digits.
fn percentile_distribution(hist: &Histogram<u64>, ratio: f64, ticks: u32) -> String {
    let digits = usize::from(hist.sigfig());
    let mut text = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for row in percentile_rows(hist, ticks) {
        let value = java_fixed(row.value as f64 / ratio, digits);
        let percentile = java_fixed(row.level_percent / 100.0, 12);
        let count = row.count_to_value;
        // Java compares the level to 100.0 exactly to pick the last-line format.
        if row.level_percent != 100.0 {
            let inverse = java_fixed(1.0 / (1.0 - row.level_percent / 100.0), 2);
            text.push_str(&format!(
                "{value:>12} {percentile:>2} {count:>10} {inverse:>14}\n"
            ));
        } else {
            text.push_str(&format!("{value:>12} {percentile:>2} {count:>10}\n"));
        }
    }
    let (mean, deviation) = java_mean_and_deviation(hist);
    text.push_str(&format!(
        "#[Mean    = {:>12}, StdDeviation   = {:>12}]\n",
        java_fixed(mean / ratio, digits),
        java_fixed(deviation / ratio, digits)
    ));
    text.push_str(&format!(
        "#[Max     = {:>12}, Total count    = {:>12}]\n",
        java_fixed(hist.max() as f64 / ratio, digits),
        hist.len()
    ));
    text.push_str(&format!(
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]\n",
        hist.buckets(),
        sub_bucket_count(hist.sigfig())
    ));
    text
}

/// The rows Java's `PercentileIterator` yields, step for step.
///
/// Levels start at 0% and advance in equal ticks, `ticks` per half of the
/// remaining distance to 100%. At each recorded bucket, a row is reported
/// for every level the running count has reached; once the bucket holding
/// the last value is reached, one more row is reported there at 100%.
fn percentile_rows(hist: &Histogram<u64>, ticks: u32) -> Vec<Row> {
    let total = hist.len();
    let mut rows = Vec::new();
    if total == 0 {
        return rows;
    }
    let mut level = 0.0_f64;
    let mut count_to_value = 0_u64;
    let mut value = 0_u64;
    'buckets: for bucket in hist.iter_recorded() {
        count_to_value = count_to_value.saturating_add(bucket.count_at_value());
        value = bucket.value_iterated_to();
        loop {
            let reached = 100.0 * count_to_value as f64 / total as f64;
            if reached < level {
                continue 'buckets;
            }
            rows.push(Row {
                value,
                level_percent: level,
                count_to_value,
            });
            if count_to_value >= total {
                break 'buckets;
            }
            let next = next_level(level, ticks);
            // Past ~10^15 values the tick can become too small to move the
            // level, where Java would report the same row forever; report no
            // more intermediate rows instead.
            level = if next > level { next } else { f64::INFINITY };
        }
    }
    rows.push(Row {
        value,
        level_percent: 100.0,
        count_to_value,
    });
    rows
}

/// Java's `PercentileIterator.incrementIterationLevel`, with its casts: the
/// number of halvings so far is truncated, and the tick is 100% divided by
/// `ticks * 2^(halvings + 1)`.
fn next_level(level: f64, ticks: u32) -> f64 {
    // Java computes `Math.log(x) / Math.log(2)`, not a log2: keep its rounding.
    let halvings = ((100.0 / (100.0 - level)).ln() / 2.0_f64.ln()) as i64;
    let exponent = halvings.saturating_add(1);
    // `(long) Math.pow(2, exponent)`: exact below 2^63, saturated above.
    let scale = match u32::try_from(exponent) {
        Ok(e) if e < 63 => 1_i64 << e,
        Ok(_) => i64::MAX,
        Err(_) => 0,
    };
    let reporting_ticks = i64::from(ticks).saturating_mul(scale);
    level + 100.0 / reporting_ticks as f64
}

/// Java's `getMean` and `getStdDeviation`: each bucket counts at its median
/// equivalent value, sums are taken in bucket order, then divided once (the
/// crate's `mean` divides each term, which rounds differently).
fn java_mean_and_deviation(hist: &Histogram<u64>) -> (f64, f64) {
    let total = hist.len();
    if total == 0 {
        return (0.0, 0.0);
    }
    let mut sum = 0.0_f64;
    for bucket in hist.iter_recorded() {
        sum += hist.median_equivalent(bucket.value_iterated_to()) as f64
            * bucket.count_at_value() as f64;
    }
    let mean = sum / total as f64;
    let mut squares = 0.0_f64;
    for bucket in hist.iter_recorded() {
        let deviation = hist.median_equivalent(bucket.value_iterated_to()) as f64 - mean;
        squares += (deviation * deviation) * bucket.count_at_value() as f64;
    }
    (mean, (squares / total as f64).sqrt())
}

/// Java's `subBucketCount` for a number of significant digits: the power of
/// two that holds `2 * 10^digits` at unit resolution (2048 for 3 digits).
fn sub_bucket_count(sigfig: u8) -> u64 {
    // The crate accepts at most 5 digits; the clamp keeps the power in range.
    let largest_unit_resolution = 2 * 10_u64.pow(u32::from(sigfig.min(5)));
    let magnitude = u64::BITS - (largest_unit_resolution - 1).leading_zeros();
    1 << magnitude.max(1)
}

/// `String.format(Locale.US, "%.{precision}f", x)` as Java prints it: the
/// shortest decimal digits that read back as `x`, rounded half up at the
/// last kept digit. (Rust rounds the exact binary value instead, so 1.2345,
/// stored as 1.23449999..., would give 1.234 where Java gives 1.235.)
fn java_fixed(x: f64, precision: usize) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let shortest = format!("{:e}", x.abs());
    let (mantissa, exponent) = shortest
        .split_once('e')
        .expect("Rust's {:e} always writes an exponent");
    let exponent: i64 = exponent
        .parse()
        .expect("Rust's {:e} always writes an integer exponent");
    let digits: Vec<u8> = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    // x = 0.d1d2d3... * 10^point, so `point` digits sit before the decimal
    // point and `keep` digits reach `precision` places after it.
    let point = exponent + 1;
    let precision_i64 = i64::try_from(precision).unwrap_or(i64::MAX);
    let keep = point.saturating_add(precision_i64);

    // The result in units of 10^-precision, as decimal digits.
    let mut scaled: Vec<u8> = if keep < 0 {
        vec![0]
    } else {
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        let mut kept: Vec<u8> = digits.iter().copied().take(keep).collect();
        kept.resize(keep.max(1), 0);
        if digits.get(keep).is_some_and(|&d| d >= 5) {
            round_up(&mut kept);
        }
        kept
    };
    // Pad so there is at least one digit before the decimal point.
    if scaled.len() <= precision {
        let mut padded = vec![0; precision + 1 - scaled.len()];
        padded.extend_from_slice(&scaled);
        scaled = padded;
    }
    let split = scaled.len() - precision;
    let mut text = String::with_capacity(scaled.len() + 2);
    if x.is_sign_negative() {
        text.push('-');
    }
    text.extend(scaled[..split].iter().map(|&d| char::from(b'0' + d)));
    if precision > 0 {
        text.push('.');
        text.extend(scaled[split..].iter().map(|&d| char::from(b'0' + d)));
    }
    text
}

/// Adds one to a big-endian decimal digit string, growing it on carry out.
fn round_up(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

/// One interval read back from an interval log.
#[derive(Debug)]
pub struct Interval {
    /// When it started, seconds since the epoch: the log's `BaseTime` (or
    /// `StartTime`) plus the interval's own timestamp.
    pub start_unix: f64,
    /// Its length, seconds.
    pub length: f64,
    /// What it recorded, in the log's unit (ours: nanoseconds).
    pub histogram: Histogram<u64>,
}

/// Reads every interval of an interval log, ours or Java's. `Err` names
/// what could not be read.
pub fn read_intervals(text: &[u8]) -> Result<Vec<Interval>, String> {
    use base64::Engine as _;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    /// Java's rule: without a base time, timestamps over a year are
    /// absolute, smaller ones are offsets from the start time.
    const ABSOLUTE_AFTER_SECS: f64 = 365.0 * 86_400.0;
    let mut deserializer = Deserializer::new();
    let (mut start, mut base) = (None, None);
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(text) {
        match entry.map_err(|e| format!("an unreadable line: {e:?}"))? {
            LogEntry::StartTime(t) => start = Some(t.as_secs_f64()),
            LogEntry::BaseTime(t) => base = Some(t.as_secs_f64()),
            LogEntry::Interval(i) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .map_err(|e| format!("an interval is not base64: {e}"))?;
                let histogram: Histogram<u64> = deserializer
                    .deserialize(&mut bytes.as_slice())
                    .map_err(|e| format!("an interval's histogram: {e:?}"))?;
                let at = i.start_timestamp().as_secs_f64();
                let origin = match (base, start) {
                    (Some(b), _) => b,
                    (None, Some(s)) if at < ABSOLUTE_AFTER_SECS => s,
                    _ => 0.0,
                };
                out.push(Interval {
                    start_unix: origin + at,
                    length: i.duration().as_secs_f64(),
                    histogram,
                });
            }
        }
    }
    Ok(out)
}

/// Java's `new Date(ms).toString()` for a UTC time zone, e.g.
/// `Tue Nov 14 22:13:20 UTC 2023`, for the `StartTime` line (which readers
/// skip: the seconds before it are what they parse).
fn java_date_utc(secs_since_epoch: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs_since_epoch / 86_400;
    let of_day = secs_since_epoch % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 4) % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    format!(
        "{weekday} {month_name} {day:02} {:02}:{:02}:{:02} UTC {year}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    /// Each expected string is what Java 17's
    /// `String.format(Locale.US, "%.Nf", x)` printed for the same double.
    #[test]
    fn fixed_point_rounds_like_java() {
        let cases: &[(f64, usize, &str)] = &[
            (1.2345, 3, "1.235"),
            (1.2345, 12, "1.234500000000"),
            (1.2345, 2, "1.23"),
            (0.0015, 3, "0.002"),
            (0.615, 2, "0.62"),
            (0.125, 2, "0.13"),
            (2.5, 2, "2.50"),
            (0.0005, 3, "0.001"),
            (0.0005, 12, "0.000500000000"),
            (0.00049, 3, "0.000"),
            (1.0005, 3, "1.001"),
            (0.999_023_437_5, 2, "1.00"),
            (0.999_023_437_5, 12, "0.999023437500"),
            (12.3455, 3, "12.346"),
            (12.3455, 2, "12.35"),
            (12.3455, 1, "12.3"),
            (0.0, 3, "0.000"),
            (0.00004, 3, "0.000"),
            (9.9996, 3, "10.000"),
            (0.9999, 3, "1.000"),
            (1e6, 3, "1000000.000"),
            (60_000_000_000.0 / 1e6, 3, "60000.000"),
            (1.0 / (1.0 - 0.9), 2, "10.00"),
            (5.0, 0, "5"),
            (5.5, 0, "6"),
        ];
        for &(x, precision, want) in cases {
            assert_eq!(
                java_fixed(x, precision),
                want,
                "{x} with {precision} places"
            );
        }
    }

    #[test]
    fn level_ticks_halve_at_each_power_of_two() {
        // Java's `(long)(Math.log(2^k) / Math.log(2))` is k for all these (checked
        // on Java 17); a one-ulp miss here would change every row past 2^k.
        for k in 1..63 {
            let remaining = 100.0 / 2.0_f64.powi(k);
            let ratio = (100.0 / remaining).ln() / 2.0_f64.ln();
            assert_eq!(ratio as i64, i64::from(k), "2^{k}");
        }
        assert_eq!(next_level(0.0, 5), 10.0);
        assert_eq!(next_level(40.0, 5), 50.0);
        assert_eq!(next_level(50.0, 5), 55.0);
        assert_eq!(next_level(75.0, 5), 77.5);
        assert_eq!(next_level(87.5, 5), 88.75);
        // At 99%, 100/1 is 2^6.6: six halvings, so 2^7 ticks of one.
        assert_eq!(next_level(99.0, 1), 99.0 + 100.0 / 128.0);
    }

    #[test]
    fn rows_follow_javas_percentile_iterator() {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        for v in 1..=10 {
            hist.record(v).expect("in range");
        }
        let rows = percentile_rows(&hist, 5);
        let got: Vec<(u64, f64, u64)> = rows
            .iter()
            .map(|r| (r.value, r.level_percent, r.count_to_value))
            .collect();
        // Traced by hand through Java's PercentileIterator.
        let want = vec![
            (1, 0.0, 1),
            (1, 10.0, 1),
            (2, 20.0, 2),
            (3, 30.0, 3),
            (4, 40.0, 4),
            (5, 50.0, 5),
            (6, 55.0, 6),
            (6, 60.0, 6),
            (7, 65.0, 7),
            (7, 70.0, 7),
            (8, 75.0, 8),
            (8, 77.5, 8),
            (8, 80.0, 8),
            (9, 82.5, 9),
            (9, 85.0, 9),
            (9, 87.5, 9),
            (9, 88.75, 9),
            (9, 90.0, 9),
            (10, 91.25, 10),
            (10, 100.0, 10),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_single_value_gives_its_row_and_the_hundredth() {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        hist.record_n(5_000, 3).expect("in range");
        let rows = percentile_rows(&hist, 5);
        let levels: Vec<f64> = rows.iter().map(|r| r.level_percent).collect();
        assert_eq!(levels, vec![0.0, 100.0]);
        assert!(
            rows.iter()
                .all(|r| r.value == hist.max() && r.count_to_value == 3)
        );
    }

    #[test]
    fn empty_histogram_has_no_rows() {
        let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        assert!(percentile_rows(&hist, 5).is_empty());
        assert_eq!(java_mean_and_deviation(&hist), (0.0, 0.0));
    }

    #[test]
    fn sub_buckets_match_the_histogram() {
        for sigfig in 0..=5 {
            let hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, sigfig).expect("bounds");
            // The counts array holds (buckets + 1) half-sub-buckets.
            let from_layout = 2 * hist.distinct_values() as u64 / (u64::from(hist.buckets()) + 1);
            assert_eq!(sub_bucket_count(sigfig), from_layout, "sigfig {sigfig}");
        }
        assert_eq!(sub_bucket_count(3), 2048);
    }

    #[test]
    fn dates_print_like_java_in_utc() {
        assert_eq!(java_date_utc(0), "Thu Jan 01 00:00:00 UTC 1970");
        assert_eq!(java_date_utc(1_700_000_000), "Tue Nov 14 22:13:20 UTC 2023");
        assert_eq!(java_date_utc(951_782_400), "Tue Feb 29 00:00:00 UTC 2000");
        assert_eq!(java_date_utc(4_102_444_799), "Thu Dec 31 23:59:59 UTC 2099");
    }

    #[test]
    fn header_names_the_start_time_and_the_units() {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let log = IntervalLog::new(Vec::new(), start).expect("header");
        let bytes = log.finish().expect("flush");
        let text = String::from_utf8(bytes).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                concat!("#[Logged with hongbao ", env!("CARGO_PKG_VERSION"), "]"),
                "#[Histogram log format version 1.3]",
                "#[StartTime: 1700000000.123 (seconds since epoch), Tue Nov 14 22:13:20 UTC 2023]",
                "#[BaseTime: 1700000000.123 (seconds since epoch)]",
                "#[MaxValueDivisor: 1000000.000]",
                LEGEND,
            ]
        );
    }

    #[test]
    fn bad_ratio_and_pre_epoch_start_are_errors() {
        let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        for ratio in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = write_hgrm(&mut Vec::new(), &hist, ratio).expect_err("bad ratio");
            assert!(matches!(err, HlogError::BadUnitRatio(_)), "{err}");
        }
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert!(matches!(
            IntervalLog::new(Vec::new(), before),
            Err(HlogError::BeforeEpoch)
        ));
    }

    #[test]
    fn intervals_read_back_at_their_absolute_time() {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let mut log = IntervalLog::new(Vec::new(), start).expect("header");
        let mut hists = Vec::new();
        for (k, value) in [(0u64, 1_000u64), (1, 250_000)] {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
            h.record_n(value, 10 + k).expect("in range");
            log.append(Duration::from_secs(k), Duration::from_secs(1), &h)
                .expect("append");
            hists.push(h);
        }
        let text = log.finish().expect("flush");
        let read = read_intervals(&text).expect("readable");
        assert_eq!(read.len(), 2);
        for (k, (i, h)) in read.iter().zip(&hists).enumerate() {
            assert!(
                (i.start_unix - (1_700_000_000.5 + k as f64)).abs() < 1e-6,
                "{}",
                i.start_unix
            );
            assert!((i.length - 1.0).abs() < 1e-9);
            assert_eq!(i.histogram.len(), h.len());
            assert_eq!(i.histogram.max(), h.max());
        }
        assert!(read_intervals(b"0.000,1.000,0.001,not-base64!\n").is_err());
    }

    /// What a source serves is exactly an interval log's histogram column
    /// (so any HdrHistogram reader takes it), and decodes to the same
    /// counts.
    #[test]
    fn a_histogram_encodes_as_an_interval_log_column_and_decodes_back() {
        let mut h = latency_histogram();
        for v in [1_u64, 900, 45_000, 45_001, 2_000_000, 59_000_000_000] {
            h.record_n(v, v % 7 + 1).expect("in bounds");
        }
        let text = encode_histogram(&h).expect("encodes");
        let mut log = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .begin_log_with(&mut log, &mut serializer)
            .expect("header")
            .write_histogram(
                &h,
                std::time::Duration::ZERO,
                std::time::Duration::from_secs(1),
                None,
            )
            .expect("interval");
        let column = IntervalLogIterator::new(&log)
            .find_map(|e| match e.expect("parses") {
                LogEntry::Interval(i) => Some(i.encoded_histogram().to_owned()),
                _ => None,
            })
            .expect("one interval");
        assert_eq!(text, column);
        let back = decode_histogram(&mut Deserializer::new(), &text).expect("decodes");
        assert_eq!(back, h);
        assert!(decode_histogram(&mut Deserializer::new(), "not base64!").is_err());
        assert!(decode_histogram(&mut Deserializer::new(), "aGV5").is_err());
    }
}
