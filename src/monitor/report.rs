//! The static HTML report of one run: one file that opens from disk with
//! no server (charts are inline SVG).
//!
//! Owns: the page: a slot for a verdict under the title (`VERDICT_SLOT`,
//! filled by `hongbao demo`), the run's span, a summary table (totals, mean and peak
//! per second, latency percentiles, money, errors, missing seconds), the
//! sources and their own view of their settings (`/status` at the end),
//! the machine (cores, kernel, limits, sysctls that matter), every chart,
//! and the whole-run latency distributions read from `--hlog` files.
//! Must not: fetch or measure during the run; it formats what it is given
//! (the machine is read from the monitor's own host when the report is
//! written, and says so).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use hdrhistogram::Histogram;

use super::chart::{self, Chart};
use super::collect::{Kind, SourceState};
use super::series::{LatencyAcross, Row};
use crate::clock::micros_of_nanos;

/// Significant digits of a whole-run histogram: those the sources record
/// with, so that adding their intervals loses nothing.
const HISTOGRAM_DIGITS: u8 = 3;

/// An interval log read whole: its label and every interval merged.
pub struct Hlog {
    /// What the report calls it (`server`, `client`).
    pub label: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// Every interval added up (nanoseconds).
    pub histogram: Histogram<u64>,
    /// Intervals read.
    pub intervals: usize,
}

impl Hlog {
    /// Reads `LABEL=FILE`.
    pub fn read(spec: &str) -> anyhow::Result<Hlog> {
        let (label, path) = spec
            .split_once('=')
            .with_context(|| format!("--hlog {spec:?}: expected LABEL=FILE"))?;
        let text = std::fs::read(path).with_context(|| format!("reading --hlog {label}={path}"))?;
        let mut histogram =
            Histogram::<u64>::new(HISTOGRAM_DIGITS).context("a histogram of 3 digits")?;
        let intervals = crate::hlog::read_intervals(&text)
            .map_err(|e| anyhow::anyhow!("--hlog {path}: {e}"))?;
        for i in &intervals {
            histogram
                .add(&i.histogram)
                .map_err(|e| anyhow::anyhow!("--hlog {path}: {e:?}"))?;
        }
        Ok(Hlog {
            label: label.to_owned(),
            path: PathBuf::from(path),
            histogram,
            intervals: intervals.len(),
        })
    }
}

/// What the report is made of.
pub struct Input<'a> {
    /// The run's rows, oldest first.
    pub rows: &'a [Row],
    /// The sources at the end (empty when replayed from a file).
    pub sources: &'a [SourceState],
    /// Each source's `/status` at the end, when it answered.
    pub statuses: &'a [(String, Option<serde_json::Value>)],
    /// Interval logs to show as distributions.
    pub hlogs: &'a [Hlog],
    /// The monitor's command line.
    pub command: Vec<String>,
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// One line's figures over the run.
struct Figures {
    seconds: usize,
    total: f64,
    mean: f64,
    peak: f64,
    median: f64,
    last: f64,
}

fn figures(c: &Chart, line: usize, rows: &[Row]) -> Option<Figures> {
    let mut values: Vec<f64> = rows
        .iter()
        .filter_map(|r| (c.lines[line].value)(r))
        .collect();
    let last = *values.last()?;
    let total: f64 = values.iter().sum();
    let seconds = values.len();
    values.sort_by(f64::total_cmp);
    Some(Figures {
        seconds,
        total,
        mean: total / seconds as f64,
        peak: values[seconds - 1],
        median: values[seconds / 2],
        last,
    })
}

/// The whole-run percentiles the interval-log table shows, as quantiles.
const HLOG_QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

/// The report page: one section after another, each written by its own
/// function below, in the order a reader needs them (what the figures
/// lack before the figures).
pub fn html(input: &Input) -> anyhow::Result<String> {
    let rows = input.rows;
    let charts = chart::charts();
    let mut h = String::new();
    write_head(&mut h, rows);
    write_completeness(&mut h, rows);
    write_summary(&mut h, &charts, rows);
    write_latency(&mut h, &charts, rows);
    write_hlogs(&mut h, input.hlogs)?;
    write_charts(&mut h, &charts, rows)?;
    write_sources(&mut h, input.sources);
    write_settings(&mut h, &input.command, input.statuses);
    write_machine(&mut h);
    Ok(h)
}

/// Where the verdict goes: right under the title, before the details. The
/// monitor cannot judge a run (it knows no plan and runs no audit), so it
/// leaves this comment; `hongbao demo` puts its verdict here once the
/// audit has run ([`with_verdict`]).
pub(crate) const VERDICT_SLOT: &str = "<!-- verdict -->";

/// The page with `block` in its verdict slot. The demo only fills a
/// report its own monitor has just written, so the slot is there.
pub(crate) fn with_verdict(page: &str, block: &str) -> String {
    page.replacen(VERDICT_SLOT, block, 1)
}

/// The run's span in words.
fn span(rows: &[Row]) -> String {
    match (rows.first(), rows.last()) {
        (Some(a), Some(b)) => format!(
            "{} to {} UTC (Unix {}–{}), {} seconds",
            chart::clock(a.second),
            chart::clock(b.second),
            a.second,
            b.second,
            rows.len()
        ),
        _ => "no second was collected".into(),
    }
}

/// The page's head, style, title, span and how to read it.
fn write_head(h: &mut String, rows: &[Row]) {
    let span = span(rows);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hongbao run report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1900px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; font-size: 13px; text-align: right; }}
td:first-child, th:first-child, td.l {{ text-align: left; }}
.chart {{ display: inline-block; margin: 4px; border: 1px solid #ddd; }}
.warn {{ color: #b00; }}
pre {{ background: #f4f4f4; padding: 0.5em; overflow-x: auto; font-size: 12px; }}
</style></head><body>
<h1>hongbao run report</h1>
{VERDICT_SLOT}
<p>{span}.</p>
<p>Each second is what the sources reported for it, summed by kind (servers, clients).
A second where a source did not answer is <b>missing</b>: it is left out of the charts
(a gap), never drawn as zero. Latency percentiles per second are those of every
source's histogram of that second added up (exact); where a source sent no histogram
(an older version) they are the worst source's, an upper bound, counted below.</p>
"#
    );
}

/// Missing seconds first: a reader must know what the figures lack.
fn write_completeness(h: &mut String, rows: &[Row]) {
    let missing_servers = rows
        .iter()
        .filter(|r| !r.servers.missing.is_empty())
        .count();
    let missing_clients = rows
        .iter()
        .filter(|r| !r.clients.missing.is_empty())
        .count();
    let unreached = rows.iter().filter(|r| !r.unreached.is_empty()).count();
    let bound = |across: Option<LatencyAcross>| across == Some(LatencyAcross::WorstSourceBound);
    let latency_bound = rows
        .iter()
        .filter(|r| bound(r.servers.latency_across) || bound(r.clients.latency_across))
        .count();
    let _ = write!(
        h,
        "<h2>Completeness</h2><table><tr><th>what</th><th>seconds</th></tr>\
         <tr><td>seconds collected</td><td>{}</td></tr>\
         <tr><td>with a server missing</td><td{}>{missing_servers}</td></tr>\
         <tr><td>with a client missing</td><td{}>{missing_clients}</td></tr>\
         <tr><td>with a source never reached</td><td{}>{unreached}</td></tr>\
         <tr><td>with latency only bounded (a source sent no histogram)</td><td{}>{latency_bound}</td></tr></table>",
        rows.len(),
        warn(missing_servers),
        warn(missing_clients),
        warn(unreached),
        warn(latency_bound),
    );
}

/// Totals, mean, peak and last of every line of the linear charts.
fn write_summary(h: &mut String, charts: &[Chart], rows: &[Row]) {
    h.push_str("<h2>Summary</h2><table><tr><th>chart</th><th>line</th><th>seconds with data</th><th>total</th><th>mean / s</th><th>peak / s</th><th>last</th></tr>");
    for c in charts.iter().filter(|c| !c.log_y) {
        for (i, line) in c.lines.iter().enumerate() {
            let Some(f) = figures(c, i, rows) else {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td class=l>{}</td><td>0</td><td>–</td><td>–</td><td>–</td><td>–</td></tr>",
                    esc(c.y_label),
                    esc(line.name)
                );
                continue;
            };
            let total = if c.gauge { "–".into() } else { num(f.total) };
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=l>{}</td><td>{}</td><td>{total}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(c.y_label),
                esc(line.name),
                f.seconds,
                num(f.mean),
                num(f.peak),
                num(f.last)
            );
        }
    }
    h.push_str("</table>");
}

/// The median and worst second of every line of the latency charts.
fn write_latency(h: &mut String, charts: &[Chart], rows: &[Row]) {
    h.push_str("<h2>Latency per second</h2><table><tr><th>line</th><th>seconds</th><th>median second (µs)</th><th>worst second (µs)</th></tr>");
    for c in charts.iter().filter(|c| c.log_y) {
        for (i, line) in c.lines.iter().enumerate() {
            match figures(c, i, rows) {
                Some(f) => {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(line.name),
                        f.seconds,
                        num(f.median),
                        num(f.peak)
                    );
                }
                None => {
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>0</td><td>–</td><td>–</td></tr>",
                        esc(line.name)
                    );
                }
            }
        }
    }
    h.push_str("</table>");
}

/// The interval logs' whole-run percentiles and their distribution chart;
/// nothing without `--hlog`.
fn write_hlogs(h: &mut String, hlogs: &[Hlog]) -> anyhow::Result<()> {
    if hlogs.is_empty() {
        return Ok(());
    }
    h.push_str("<h2>Latency over the whole run (interval logs)</h2><table><tr><th>log</th><th>intervals</th><th>samples</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>p99.99 µs</th><th>max µs</th></tr>");
    for l in hlogs {
        let _ = write!(
            h,
            "<tr><td>{} <small>{}</small></td><td>{}</td><td>{}</td>",
            esc(&l.label),
            esc(&l.path.display().to_string()),
            l.intervals,
            l.histogram.len(),
        );
        for q in HLOG_QUANTILES {
            let _ = write!(
                h,
                "<td>{}</td>",
                num(micros_of_nanos(l.histogram.value_at_quantile(q)))
            );
        }
        let _ = write!(
            h,
            "<td>{}</td></tr>",
            num(micros_of_nanos(l.histogram.max()))
        );
    }
    h.push_str("</table>");
    let hists: Vec<(String, &Histogram<u64>)> = hlogs
        .iter()
        .map(|l| (l.label.clone(), &l.histogram))
        .collect();
    let _ = write!(
        h,
        "<div class=chart>{}</div>",
        chart::distribution_svg(&hists)?
    );
    Ok(())
}

/// Every chart, inline.
fn write_charts(h: &mut String, charts: &[Chart], rows: &[Row]) -> anyhow::Result<()> {
    h.push_str("<h2>Charts</h2>");
    for c in charts {
        let _ = write!(
            h,
            "<div class=chart id=\"chart-{}\">{}</div>",
            c.name,
            chart::svg(c, rows)?
        );
    }
    Ok(())
}

/// Each source's state at the end.
fn write_sources(h: &mut String, sources: &[SourceState]) {
    h.push_str("<h2>Sources</h2>");
    if sources.is_empty() {
        h.push_str("<p>Replayed from a series file: the sources' state was not recorded.</p>");
        return;
    }
    h.push_str("<table><tr><th>source</th><th>kind</th><th>up at the end</th><th>seconds reported</th><th>seconds missing</th><th>late buckets</th><th>skew s</th><th>last error</th></tr>");
    for s in sources {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td><td class=l>{}</td></tr>",
            esc(&s.addr),
            s.kind.map_or("unknown", |k| match k {
                Kind::Server => "server",
                Kind::Flooder => "flooder",
            }),
            if s.up { "yes" } else { "no" },
            s.reported,
            warn(s.missed as usize),
            s.missed,
            s.late,
            s.skew_secs.map_or("–".into(), |k| k.to_string()),
            esc(s.error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>");
}

/// The monitor's command line and each source's own `/status` at the end.
fn write_settings(
    h: &mut String,
    command: &[String],
    statuses: &[(String, Option<serde_json::Value>)],
) {
    h.push_str("<h2>Settings</h2>");
    let _ = write!(
        h,
        "<p>Monitor command line:</p><pre>{}</pre>",
        esc(&command.join(" "))
    );
    for (addr, status) in statuses {
        let text = status.as_ref().map_or_else(
            || "(no answer to GET /status at the end)".into(),
            |v| serde_json::to_string_pretty(v).unwrap_or_default(),
        );
        let _ = write!(
            h,
            "<details><summary>{} /status at the end</summary><pre>{}</pre></details>",
            esc(addr),
            esc(&text)
        );
    }
}

/// The monitor host's facts, and the page's end.
fn write_machine(h: &mut String) {
    h.push_str("<h2>Machine (the monitor's host, when the report was written)</h2><table>");
    for (k, v) in machine() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=l>{}</td></tr>",
            esc(&k),
            esc(&v)
        );
    }
    h.push_str("</table></body></html>\n");
}

fn warn(n: usize) -> &'static str {
    if n > 0 { " class=warn" } else { "" }
}

/// What the host is and how it is set: cores, kernel, memory, limits and
/// the sysctls that bound a million connections. A value that cannot be
/// read says so.
pub fn machine() -> Vec<(String, String)> {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_or_else(
            |e| format!("(unreadable: {e})"),
            |s| s.split_whitespace().collect::<Vec<_>>().join(" "),
        )
    };
    let mut out = vec![
        ("hostname".into(), read("/proc/sys/kernel/hostname")),
        ("kernel".into(), read("/proc/sys/kernel/osrelease")),
        (
            "cores (this process may use)".into(),
            std::thread::available_parallelism().map_or_else(|e| e.to_string(), |n| n.to_string()),
        ),
    ];
    if let Some(model) = crate::host::cpu_model() {
        out.push(("cpu model".into(), model));
    }
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo")
        && let Some(total) = meminfo.lines().find(|l| l.starts_with("MemTotal:"))
    {
        out.push((
            "memory".into(),
            total.trim_start_matches("MemTotal:").trim().to_owned(),
        ));
    }
    let nofile = crate::host::nofile().map_or_else(
        |e| format!("(unreadable: {e})"),
        |(soft, hard)| format!("soft {soft} hard {hard}"),
    );
    out.push(("open files (RLIMIT_NOFILE)".into(), nofile));
    for key in [
        "fs.file-max",
        "fs.nr_open",
        "net.core.somaxconn",
        "net.core.netdev_max_backlog",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.ipv4.tcp_tw_reuse",
        "net.netfilter.nf_conntrack_max",
    ] {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        out.push((key.into(), read(&path)));
    }
    out
}
