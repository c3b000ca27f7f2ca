//! Charts of the series, drawn with plotters: SVG for the report and the
//! dashboard, PNG beside them.
//!
//! Owns: the list of charts ([`charts`]: what each plots, its title and
//! units), drawing one from rows ([`svg`], [`png`]), and finding a font.
//! Must not: fill a gap. A second where a kind has no sum, or where one of
//! its sources was missing (a partial sum would look like a drop), is a
//! break in that kind's lines.
//!
//! Text needs a TrueType font to measure (plotters' `ab_glyph`): one is
//! looked for at run time (`HONGBAO_FONT`, then the usual Debian, Fedora and
//! Arch paths, then `fc-match`), so no font is built into the binary. On a
//! host with none, charts fail with the fix (install `fonts-dejavu-core`).

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use super::series::Row;
use crate::clock::micros_of_nanos;
use crate::seconds::ClientSecond;
use crate::stats::SecondStats;

/// Width of every chart, pixels.
pub const WIDTH: u32 = 900;
/// Height of every chart, pixels.
pub const HEIGHT: u32 = 360;

/// Bytes in the megabyte of the network chart's axis.
const BYTES_PER_MB: f64 = 1e6;

/// One line of a chart: its legend and how a row gives its value (None:
/// no value that second).
pub struct Line {
    /// Legend text.
    pub name: &'static str,
    /// The value in a row, in the chart's unit.
    pub value: fn(&Row) -> Option<f64>,
}

/// One chart.
pub struct Chart {
    /// File stem and dashboard id: `qps` gives `qps.svg`.
    pub name: &'static str,
    /// Its title.
    pub title: &'static str,
    /// The y axis: quantity and unit.
    pub y_label: &'static str,
    /// A logarithmic y axis (latencies span decades).
    pub log_y: bool,
    /// Its lines are levels (connections), not counts per second: the
    /// report shows no total for them.
    pub gauge: bool,
    /// Its lines.
    pub lines: Vec<Line>,
}

/// Why a chart was not drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// No font to measure text with.
    #[error(
        "no TrueType font found to draw chart text: install one (apt-get install fonts-dejavu-core) or set HONGBAO_FONT=/path/to/font.ttf"
    )]
    NoFont,
    /// Plotters failed.
    #[error("drawing chart {chart}: {error}")]
    Draw {
        /// Which chart.
        chart: &'static str,
        /// What plotters said.
        error: String,
    },
}

/// The servers' sum of a row, only when no server was missing (nor a
/// source of unknown kind, which may be one).
fn servers(r: &Row) -> Option<&SecondStats> {
    (r.servers.missing.is_empty() && r.unreached.is_empty())
        .then_some(r.servers.sum.as_ref())
        .flatten()
}

/// The clients' sum of a row, only when no flooder was missing (nor a
/// source of unknown kind).
fn clients(r: &Row) -> Option<&ClientSecond> {
    (r.clients.missing.is_empty() && r.unreached.is_empty())
        .then_some(r.clients.sum.as_ref())
        .flatten()
}

/// A positive value, for logarithmic axes (no sample that second: no point).
fn positive(x: f64) -> Option<f64> {
    (x > 0.0).then_some(x)
}

/// Every chart, in the order the report shows them. Each is built by its
/// own function below: a chart is a flat table of lines, read one at a time.
pub fn charts() -> Vec<Chart> {
    vec![
        qps_chart(),
        envelopes_chart(),
        outcomes_chart(),
        packets_chart(),
        money_chart(),
        conns_chart(),
        latency_chart(),
        net_packets_chart(),
        net_bytes_chart(),
        errors_chart(),
    ]
}

/// Shakes per second as the clients planned, sent and saw answered, against
/// what the servers answered.
fn qps_chart() -> Chart {
    Chart {
        name: "qps",
        title: "Shakes per second: clients vs servers",
        y_label: "shakes / s",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "planned by clients",
                value: |r| clients(r).map(|c| c.qps as f64),
            },
            Line {
                name: "sent by clients",
                value: |r| clients(r).map(|c| c.counters.sent as f64),
            },
            Line {
                name: "answered to clients",
                value: |r| clients(r).map(|c| c.counters.answered as f64),
            },
            Line {
                name: "answered by servers",
                value: |r| servers(r).map(|s| s.server.shakes as f64),
            },
        ],
    }
}

/// Envelopes generated and granted by the servers, against those the clients
/// received.
fn envelopes_chart() -> Chart {
    Chart {
        name: "envelopes",
        title: "Envelopes per second: generated and granted",
        y_label: "envelopes / s",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "generated (servers)",
                value: |r| servers(r).map(|s| s.generator.generated as f64),
            },
            Line {
                name: "granted (servers)",
                value: |r| servers(r).map(|s| s.server.got as f64),
            },
            Line {
                name: "received (clients)",
                value: |r| clients(r).map(|c| c.counters.got as f64),
            },
        ],
    }
}

/// The servers' answers to shakes, by outcome.
fn outcomes_chart() -> Chart {
    Chart {
        name: "outcomes",
        title: "Shake outcomes per second (servers)",
        y_label: "answers / s",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "got an envelope",
                value: |r| servers(r).map(|s| s.server.got as f64),
            },
            Line {
                name: "none now",
                value: |r| servers(r).map(|s| s.server.none as f64),
            },
            Line {
                name: "all gone",
                value: |r| servers(r).map(|s| s.server.gone as f64),
            },
            Line {
                name: "overloaded",
                value: |r| servers(r).map(|s| s.server.overload as f64),
            },
        ],
    }
}

/// Red packets created, pushed, claimed and expired at the servers.
fn packets_chart() -> Chart {
    Chart {
        name: "packets",
        title: "Red packets per second: created, pushed, claimed, expired",
        y_label: "per second",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "packets created",
                value: |r| servers(r).map(|s| s.generator.packets_created as f64),
            },
            Line {
                name: "pushes",
                value: |r| servers(r).map(|s| s.server.pushes as f64),
            },
            Line {
                name: "claims answered",
                value: |r| servers(r).map(|s| s.server.claims as f64),
            },
            Line {
                name: "claims paid",
                value: |r| servers(r).map(|s| s.server.claims_paid as f64),
            },
            Line {
                name: "packets expired",
                value: |r| servers(r).map(|s| s.server.packets_expired as f64),
            },
        ],
    }
}

/// Cents moved per second, as the servers booked them and as the clients
/// received them.
fn money_chart() -> Chart {
    Chart {
        name: "money",
        title: "Money moved per second",
        y_label: "cents / s",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "granted in envelopes",
                value: |r| servers(r).map(|s| s.server.cents_granted as f64),
            },
            Line {
                name: "put in packets",
                value: |r| servers(r).map(|s| s.generator.cents_packets as f64),
            },
            Line {
                name: "claimed",
                value: |r| servers(r).map(|s| s.server.cents_claimed as f64),
            },
            Line {
                name: "refunded",
                value: |r| servers(r).map(|s| s.server.cents_refunded as f64),
            },
            Line {
                name: "received by clients",
                value: |r| {
                    clients(r).map(|c| (c.counters.got_cents + c.counters.claim_cents) as f64)
                },
            },
        ],
    }
}

/// Open connections: a level, not a count per second.
fn conns_chart() -> Chart {
    Chart {
        name: "conns",
        title: "Open connections",
        y_label: "connections",
        log_y: false,
        gauge: true,
        lines: vec![
            Line {
                name: "open at servers",
                value: |r| servers(r).map(|s| s.conns_open as f64),
            },
            Line {
                name: "logged in at clients",
                value: |r| clients(r).map(|c| c.connections as f64),
            },
        ],
    }
}

/// Latency percentiles per second, the clients' from the intended send and
/// the servers' service time.
fn latency_chart() -> Chart {
    Chart {
        name: "latency",
        title: "Latency per second: client (from intended send) and server (service)",
        y_label: "microseconds (log)",
        log_y: true,
        gauge: false,
        lines: vec![
            Line {
                name: "client p50",
                value: |r| clients(r).and_then(|c| positive(c.latency_us.p50_us)),
            },
            Line {
                name: "client p99",
                value: |r| clients(r).and_then(|c| positive(c.latency_us.p99_us)),
            },
            Line {
                name: "client p99.9",
                value: |r| clients(r).and_then(|c| positive(c.latency_us.p999_us)),
            },
            Line {
                name: "server p50",
                value: |r| servers(r).and_then(|s| positive(micros_of_nanos(s.service_ns_p50))),
            },
            Line {
                name: "server p99",
                value: |r| servers(r).and_then(|s| positive(micros_of_nanos(s.service_ns_p99))),
            },
            Line {
                name: "server p99.9",
                value: |r| servers(r).and_then(|s| positive(micros_of_nanos(s.service_ns_p999))),
            },
        ],
    }
}

/// The monitor host's interface, packets per second.
fn net_packets_chart() -> Chart {
    Chart {
        name: "net_packets",
        title: "Network packets per second (interface of the monitor host)",
        y_label: "packets / s",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "received",
                value: |r| r.net.as_ref().map(|n| n.rx_packets as f64),
            },
            Line {
                name: "sent",
                value: |r| r.net.as_ref().map(|n| n.tx_packets as f64),
            },
        ],
    }
}

/// The monitor host's interface, bytes per second.
fn net_bytes_chart() -> Chart {
    Chart {
        name: "net_bytes",
        title: "Network bytes per second (interface of the monitor host)",
        y_label: "MB / s",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "received",
                value: |r| r.net.as_ref().map(|n| n.rx_bytes as f64 / BYTES_PER_MB),
            },
            Line {
                name: "sent",
                value: |r| r.net.as_ref().map(|n| n.tx_bytes as f64 / BYTES_PER_MB),
            },
        ],
    }
}

/// Errors per second at both ends.
fn errors_chart() -> Chart {
    Chart {
        name: "errors",
        title: "Errors per second",
        y_label: "per second",
        log_y: false,
        gauge: false,
        lines: vec![
            Line {
                name: "bad frames (servers)",
                value: |r| servers(r).map(|s| s.server.bad_frames() as f64),
            },
            Line {
                name: "evictions + login timeouts (servers)",
                value: |r| {
                    servers(r).map(|s| (s.server.evictions + s.server.login_timeouts) as f64)
                },
            },
            Line {
                name: "errors (clients)",
                value: |r| clients(r).map(|c| c.counters.errors() as f64),
            },
        ],
    }
}

/// Colours for lines, distinct on white and for the common colour blindness.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(120, 94, 20),
];

/// Registers a font with plotters once per process.
fn ensure_font() -> Result<(), ChartError> {
    static FONT: OnceLock<bool> = OnceLock::new();
    let ok = *FONT.get_or_init(|| {
        let Some(bytes) = find_font() else {
            return false;
        };
        // Fonts live as long as the process: plotters keeps a 'static
        // reference, and this runs once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    if ok { Ok(()) } else { Err(ChartError::NoFont) }
}

fn find_font() -> Option<Vec<u8>> {
    let mut candidates: Vec<String> = std::env::var("HONGBAO_FONT").into_iter().collect();
    candidates.extend(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
        ]
        .map(String::from),
    );
    if let Some(path) = candidates.iter().find_map(|p| std::fs::read(p).ok()) {
        return Some(path);
    }
    let out = std::process::Command::new("fc-match")
        .args(["-f", "%{file}", "sans-serif"])
        .output()
        .ok()?;
    std::fs::read(String::from_utf8_lossy(&out.stdout).trim()).ok()
}

/// The chart as an SVG document.
pub fn svg(chart: &Chart, rows: &[Row]) -> Result<String, ChartError> {
    ensure_font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, chart, rows).map_err(|error| ChartError::Draw {
            chart: chart.name,
            error,
        })?;
    }
    Ok(out)
}

/// The chart as a PNG file at `path`.
pub fn png(chart: &Chart, rows: &[Row], path: &Path) -> Result<(), ChartError> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    draw(&root, chart, rows).map_err(|error| ChartError::Draw {
        chart: chart.name,
        error,
    })
}

/// An axis tick: whole numbers without decimals, small ones with what
/// they need, large ones with a k or M.
fn axis_number(y: f64) -> String {
    let a = y.abs();
    if a >= 1e6 {
        format!("{:.1}M", y / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", y / 1e3)
    } else if a >= 10.0 || y.fract() == 0.0 {
        format!("{y:.0}")
    } else if a >= 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.2}")
    }
}

/// `HH:MM:SS` UTC of a Unix second.
pub fn clock(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Title font size, pixels.
const TITLE_FONT_PX: u32 = 18;
/// Legend font size, pixels: smaller than the title, as legends hold
/// several lines in the plot's corner.
const LEGEND_FONT_PX: u32 = 13;
/// Space around the plot, pixels.
const MARGIN_PX: u32 = 12;
/// Room under the plot for the x ticks and the x description, pixels.
const X_LABEL_AREA_PX: u32 = 40;
/// Room left of the plot for the y ticks (up to `12.3M`) and the y
/// description, pixels.
const Y_LABEL_AREA_PX: u32 = 72;
/// Line width, pixels: thick enough to tell the palette's colours apart.
const STROKE_PX: u32 = 2;
/// Radius of the dot that draws a lone second between gaps, pixels.
const DOT_RADIUS_PX: i32 = 3;
/// Length of the stroke that samples a line in the legend, pixels.
const LEGEND_MARK_PX: i32 = 18;
/// The grid: light enough not to be read as data.
const GRID_COLOUR: RGBColor = RGBColor(235, 235, 235);
/// The legend box's frame.
const LEGEND_BORDER_COLOUR: RGBColor = RGBColor(180, 180, 180);
/// The legend box's white: lines behind it stay faintly visible.
const LEGEND_BACKGROUND_OPACITY: f64 = 0.85;
/// A linear axis reaches this factor above the highest value, so that the
/// peak does not run along the frame.
const LINEAR_HEADROOM: f64 = 1.1;
/// A logarithmic axis reaches this factor past the data each way, so that
/// no point sits on the frame.
const LOG_MARGIN: f64 = 1.5;
/// A logarithmic axis spans at least this factor, so that a single value
/// still gets an axis with ticks.
const LOG_SPAN_MIN: f64 = 2.0;
/// A logarithmic axis with no data: 1 µs to 1 ms, where latencies fall.
const LOG_EMPTY_US: (f64, f64) = (1.0, 1000.0);
/// Points drawn per nine of the distribution (per decade of 1 / (1 - p)):
/// enough for a smooth curve through the steps of a histogram.
const POINTS_PER_NINE: f64 = 20.0;
/// The distribution's x axis reaches at least this many nines (p90), so
/// that a log of few samples still has an axis.
const NINES_MIN: f64 = 1.0;
/// The lowest latency drawn, µs (one nanosecond): a logarithmic axis has
/// no zero.
const LATENCY_US_FLOOR: f64 = 1e-3;
/// The distribution's title.
const DISTRIBUTION_TITLE: &str = "Latency by percentile over the whole run (from the --hlog files)";

/// A run of consecutive seconds with a value: `(seconds since the first
/// row, value)` points.
type Run = Vec<(f64, f64)>;

/// The frame every chart shares: its title, margins and label areas.
fn chart_builder<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", TITLE_FONT_PX))
        .margin(MARGIN_PX)
        .x_label_area_size(X_LABEL_AREA_PX)
        .y_label_area_size(Y_LABEL_AREA_PX);
    builder
}

/// The range of a logarithmic axis that shows `values` (see
/// [`LOG_MARGIN`], [`LOG_SPAN_MIN`], [`LOG_EMPTY_US`]).
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0), |(lo, hi), v| {
        (f64::min(lo, v), f64::max(hi, v))
    });
    if lo.is_finite() {
        (lo / LOG_MARGIN, (hi * LOG_MARGIN).max(lo * LOG_SPAN_MIN))
    } else {
        LOG_EMPTY_US
    }
}

/// The top of a linear axis from zero that shows `values`.
fn linear_top(values: impl Iterator<Item = f64>) -> f64 {
    let hi = values.fold(0.0, f64::max);
    if hi > 0.0 { hi * LINEAR_HEADROOM } else { 1.0 }
}

/// One line's values as runs of consecutive seconds: a second without a
/// value ends a run, so that the gap shows.
fn runs(line: &Line, rows: &[Row], start: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut last: Option<u64> = None;
    for r in rows {
        match (line.value)(r) {
            Some(v) if v.is_finite() => {
                let point = ((r.second - start) as f64, v);
                match runs.last_mut() {
                    Some(run) if last == Some(r.second.wrapping_sub(1)) => run.push(point),
                    _ => runs.push(vec![point]),
                }
                last = Some(r.second);
            }
            _ => last = None,
        }
    }
    runs
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart: &Chart,
    rows: &[Row],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let start = rows.first().map_or(0, |r| r.second);
    let span = rows.last().map_or(0, |r| r.second - start).max(1) as f64;
    let lines: Vec<Vec<Run>> = chart
        .lines
        .iter()
        .map(|line| runs(line, rows, start))
        .collect();
    let values = || lines.iter().flatten().flatten().map(|p| p.1);
    let x_desc = if rows.is_empty() {
        "seconds (no data yet)".to_string()
    } else {
        format!("seconds since {} UTC", clock(start))
    };
    let mut builder = chart_builder(root, chart.title);
    if chart.log_y {
        let (lo, hi) = log_range(values());
        let ctx = builder
            .build_cartesian_2d(0f64..span, (lo..hi).log_scale())
            .map_err(e)?;
        finish(ctx, chart, &lines, &x_desc)?;
    } else {
        let ctx = builder
            .build_cartesian_2d(0f64..span, 0f64..linear_top(values()))
            .map_err(e)?;
        finish(ctx, chart, &lines, &x_desc)?;
    }
    root.present().map_err(e)
}

fn finish<'a, DB, Y>(
    mut ctx: ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    chart: &Chart,
    lines: &[Vec<Run>],
    x_desc: &str,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    ctx.configure_mesh()
        .x_desc(x_desc)
        .y_desc(chart.y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| axis_number(*y))
        .light_line_style(GRID_COLOUR)
        .draw()
        .map_err(e)?;
    for (i, (line, runs)) in chart.lines.iter().zip(lines).enumerate() {
        let style = line_style(i);
        let mut labelled = false;
        for run in runs {
            let series = if run.len() == 1 {
                // A lone second between gaps: a dot, or it would not show.
                ctx.draw_series(
                    run.iter()
                        .map(|&p| Circle::new(p, DOT_RADIUS_PX, style.filled())),
                )
                .map_err(e)?
            } else {
                ctx.draw_series(LineSeries::new(run.iter().copied(), style))
                    .map_err(e)?
            };
            if !labelled {
                labelled = true;
                series.label(line.name).legend(legend_mark(style));
            }
        }
    }
    draw_legend(&mut ctx)
}

/// The style of a chart's `i`th line.
fn line_style(i: usize) -> ShapeStyle {
    ShapeStyle::from(PALETTE[i % PALETTE.len()]).stroke_width(STROKE_PX)
}

/// The legend's sample of a line: a short stroke in its style.
fn legend_mark(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + LEGEND_MARK_PX, y)], style)
}

/// Every chart's legend: upper left, on a light box.
fn draw_legend<'a, DB, X, Y>(
    ctx: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
{
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(LEGEND_BACKGROUND_OPACITY))
        .border_style(LEGEND_BORDER_COLOUR)
        .label_font(("sans-serif", LEGEND_FONT_PX))
        .draw()
        .map_err(|e| e.to_string())
}

/// Whole-run latency distributions, one line per histogram (nanoseconds):
/// latency (µs, log) against the percentile, on the usual "nines" axis
/// (x = log10(1 / (1 - p)): 1 is p90, 2 is p99, 3 is p99.9).
pub fn distribution_svg(
    hists: &[(String, &hdrhistogram::Histogram<u64>)],
) -> Result<String, ChartError> {
    ensure_font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw_distribution(&root, hists).map_err(|error| ChartError::Draw {
            chart: "distribution",
            error,
        })?;
    }
    Ok(out)
}

/// Each non-empty histogram's curve: points at p = 1 - 10^-x for x from 0,
/// [`POINTS_PER_NINE`] a nine, stopping where its samples run out
/// (1 / count).
fn percentile_curves(
    hists: &[(String, &hdrhistogram::Histogram<u64>)],
) -> Vec<(String, Vec<(f64, f64)>)> {
    hists
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(label, h)| {
            let nines_max = (h.len() as f64).log10().max(NINES_MIN);
            let points = (0..=(nines_max * POINTS_PER_NINE) as usize)
                .map(|i| {
                    let x = i as f64 / POINTS_PER_NINE;
                    let q = 1.0 - 10f64.powf(-x);
                    let latency_us = micros_of_nanos(h.value_at_quantile(q));
                    (x, latency_us.max(LATENCY_US_FLOOR))
                })
                .collect();
            (label.clone(), points)
        })
        .collect()
}

/// A tick of the nines axis as its percentile: `p99`, `p99.9`.
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    format!(
        "p{}",
        format!("{p:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
    )
}

fn draw_distribution<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    hists: &[(String, &hdrhistogram::Histogram<u64>)],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let curves = percentile_curves(hists);
    let x_max = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .fold(NINES_MIN, f64::max);
    let (lo, hi) = log_range(curves.iter().flat_map(|c| c.1.iter().map(|p| p.1)));
    let mut ctx = chart_builder(root, DISTRIBUTION_TITLE)
        .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
        .map_err(e)?;
    ctx.configure_mesh()
        .x_desc("percentile")
        .y_desc("microseconds (log)")
        .x_labels(x_max.ceil() as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .light_line_style(GRID_COLOUR)
        .draw()
        .map_err(e)?;
    for (i, (label, points)) in curves.iter().enumerate() {
        let style = line_style(i);
        ctx.draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(e)?
            .label(label.as_str())
            .legend(legend_mark(style));
    }
    draw_legend(&mut ctx)?;
    root.present().map_err(e)
}
