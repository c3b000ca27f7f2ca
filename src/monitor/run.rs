//! `hongbao monitor`: the command. Once a second it fetches every source,
//! closes the seconds that are ready, appends them to the series files,
//! prints a line, and hands them to the dashboard; at the end it writes
//! the report.
//!
//! Owns: the options, the one-second loop (its clock, its network sample,
//! fetching the sources in parallel) and the end of a run. Must not: sum,
//! align or draw anything itself; `collect`, `series`, `chart` and
//! `report` do.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

use super::collect::{Collector, SourceState, fetch_seconds};
use super::dashboard::{self, Board};
use super::series::{self, LatencyAcross, NetSecond, Row};
use super::{net, report};
use crate::clock::unix_now;

/// `hongbao monitor` options.
#[derive(Clone, Debug, clap::Args)]
pub struct MonitorArgs {
    /// A server's or flooder's HTTP control (`host:port`), as given to its
    /// `--http`. Repeat for every process; the kind is learnt from its
    /// answer. Comma-separated too (`a:9090,b:8989`), as its variable takes
    /// them.
    #[arg(
        long = "source",
        env = "HONGBAO_MONITOR_SOURCE",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub sources: Vec<String>,

    /// Stop after this many seconds (default: at SIGINT or SIGTERM).
    #[arg(long, env = "HONGBAO_MONITOR_DURATION")]
    pub duration: Option<u64>,

    /// Append each closed second as one JSON object per line to this file.
    #[arg(long, env = "HONGBAO_MONITOR_JSONL")]
    pub jsonl: Option<PathBuf>,

    /// Append each closed second as a CSV line to this file (a header is
    /// written when the file is new or empty).
    #[arg(long, env = "HONGBAO_MONITOR_CSV")]
    pub csv: Option<PathBuf>,

    /// Write the static HTML report of the run here at the end.
    #[arg(long, env = "HONGBAO_MONITOR_REPORT")]
    pub report: Option<PathBuf>,

    /// Also write every chart as PNG (and SVG) files into this directory at
    /// the end.
    #[arg(long, env = "HONGBAO_MONITOR_CHARTS_DIR")]
    pub charts_dir: Option<PathBuf>,

    /// HdrHistogram interval logs to plot as whole-run percentile
    /// distributions in the report, as `LABEL=FILE` (say
    /// `server=server.hlog`, `client=flood.hlog`). Comma-separated too, as
    /// its variable takes them (so a FILE may not hold a comma).
    #[arg(
        long = "hlog",
        env = "HONGBAO_MONITOR_HLOG",
        value_name = "LABEL=FILE",
        value_delimiter = ','
    )]
    pub hlogs: Vec<String>,

    /// Serve the live dashboard here (`/`), with `/series` and
    /// `/chart?name=N` behind it. Loopback by default.
    #[arg(long, env = "HONGBAO_MONITOR_HTTP", default_value = "127.0.0.1:9100")]
    pub http: std::net::SocketAddr,

    /// Do not serve the dashboard.
    #[arg(long, env = "HONGBAO_MONITOR_NO_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_http: bool,

    /// Seconds a second waits for a late source before it closes without
    /// it. Sources close their seconds within a tick; a clock skewed by
    /// more than this shows the source as idle and its buckets as late.
    #[arg(long, env = "HONGBAO_MONITOR_LAG", default_value_t = 5)]
    pub lag: u64,

    /// At start, take up to this many past seconds the sources still hold
    /// (they keep 300).
    #[arg(long, env = "HONGBAO_MONITOR_HISTORY", default_value_t = 300)]
    pub history: u64,

    /// The network interface to count (default: the one that reaches the
    /// first source).
    #[arg(long, env = "HONGBAO_MONITOR_IFACE")]
    pub iface: Option<String>,

    /// Build the report from a series file written by `--jsonl` instead of
    /// collecting (no source is fetched).
    #[arg(long, env = "HONGBAO_MONITOR_REPLAY", value_name = "FILE")]
    pub replay: Option<PathBuf>,

    /// Do not print a line per second.
    #[arg(long, env = "HONGBAO_MONITOR_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,
}

/// How long one fetch may take: a source that cannot answer within it is
/// down for that second.
const FETCH_TIMEOUT: Duration = Duration::from_millis(800);
/// Each tick runs this long after the whole second, so that the sources
/// have closed the second just ended (a server's idle core closes its
/// second within one 100 ms tick).
const TICK_OFFSET: Duration = Duration::from_millis(150);
/// How often the wait for the next tick looks at the stop flag: a stop is
/// seen within this.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Runs the monitor until `--duration` or until `stop` is set.
pub fn run(args: &MonitorArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let quiet = args.quiet;
    run_with(args, stop, move |addr| {
        if !quiet {
            eprintln!("hongbao monitor: dashboard on http://{addr}/");
        }
    })
}

/// [`run`], telling `dashboard_at` where the dashboard listens (with port 0
/// the OS chose it) once it serves.
pub fn run_with(
    args: &MonitorArgs,
    stop: &AtomicBool,
    dashboard_at: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    if let Some(path) = &args.replay {
        return replay(args, path);
    }
    if args.sources.is_empty() && args.no_http {
        bail!(
            "give at least one --source ADDR (a server's or flooder's --http), or serve --http for \
             sources that register themselves (flood --monitor), or --replay FILE"
        );
    }
    let mut outputs = Outputs::open(args)?;
    let board = Arc::new(Mutex::new(Board::default()));
    let dashboard = if args.no_http {
        None
    } else {
        let d = dashboard::start(args.http, board.clone())
            .with_context(|| format!("serving the dashboard on {} (--http)", args.http))?;
        dashboard_at(d.addr());
        Some(d)
    };
    let mut collecting = Collecting::new(args);
    let started = unix_now();
    let end = args.duration.map(|d| started + Duration::from_secs(d));
    let statuses = loop {
        sleep_to_next_tick(stop);
        let stopping = stop.load(Ordering::Relaxed) || end.is_some_and(|e| unix_now() >= e);
        let second = unix_now().as_secs();
        collecting.add_registered(&board, args.quiet);
        collecting.sample_net(second);
        collecting.fetch_all(second, args.quiet);
        let rows = collecting.collector.close_ready(second);
        outputs.write(&rows, args.quiet)?;
        {
            let mut b = Board::lock(&board);
            b.rows.extend(rows);
            b.sources = collecting.collector.sources.clone();
        }
        if stopping {
            break collecting.statuses();
        }
    };
    if let Some(d) = dashboard {
        d.stop();
    }
    let b = Board::lock(&board);
    finish(args, &b.rows, &b.sources, statuses)
}

/// `--replay`: the report from a series file, no source fetched.
fn replay(args: &MonitorArgs, path: &Path) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let rows = series::read_jsonl(BufReader::new(file))
        .with_context(|| format!("reading {}", path.display()))?;
    finish(args, &rows, &[], Vec::new())
}

/// Sleeps to the next tick ([`TICK_OFFSET`] past the next whole second),
/// waking every [`STOP_POLL`] to see a stop.
fn sleep_to_next_tick(stop: &AtomicBool) {
    let now = unix_now();
    let tick = Duration::from_secs(now.as_secs() + 1) + TICK_OFFSET;
    let mut wait = tick.saturating_sub(now);
    while !wait.is_zero() && !stop.load(Ordering::Relaxed) {
        let step = wait.min(STOP_POLL);
        std::thread::sleep(step);
        wait -= step;
    }
}

/// Where closed seconds are written: `--jsonl`, `--csv` and the terminal.
struct Outputs {
    jsonl: Option<BufWriter<File>>,
    csv: Option<BufWriter<File>>,
    /// The CSV's columns, in the header's order.
    columns: Vec<String>,
}

impl Outputs {
    /// Opens the files to append to; a new or empty CSV gets its header.
    fn open(args: &MonitorArgs) -> anyhow::Result<Outputs> {
        let jsonl = match &args.jsonl {
            Some(p) => Some(BufWriter::new(open_append(p, "--jsonl")?)),
            None => None,
        };
        let (csv, columns) = match &args.csv {
            Some(p) => {
                let f = open_append(p, "--csv")?;
                let empty = f.metadata().map(|m| m.len() == 0).unwrap_or(true);
                let mut w = BufWriter::new(f);
                if empty {
                    writeln!(w, "{}", series::csv_header())
                        .with_context(|| format!("writing {}", p.display()))?;
                }
                (Some(w), series::csv_columns())
            }
            None => (None, Vec::new()),
        };
        Ok(Outputs {
            jsonl,
            csv,
            columns,
        })
    }

    /// Writes the rows closed this tick, and flushes: each second is on
    /// disk before the next tick.
    fn write(&mut self, rows: &[Row], quiet: bool) -> anyhow::Result<()> {
        for row in rows {
            if let Some(w) = self.jsonl.as_mut() {
                series::write_jsonl(w, row).context("writing --jsonl")?;
            }
            if let Some(w) = self.csv.as_mut() {
                writeln!(w, "{}", series::csv_line(row, &self.columns)).context("writing --csv")?;
            }
            if !quiet {
                println!("{}", line(row));
            }
        }
        if let Some(w) = self.jsonl.as_mut() {
            w.flush().context("writing --jsonl")?;
        }
        if let Some(w) = self.csv.as_mut() {
            w.flush().context("writing --csv")?;
        }
        Ok(())
    }
}

/// The sources and what is collected from them, from one tick to the next.
struct Collecting {
    collector: Collector,
    /// Each source's address, in the collector's order.
    sources: Vec<String>,
    /// The interface whose counters are sampled, once one is known.
    iface: Option<String>,
    /// Its counters at the last tick, with that tick's second.
    net_prev: Option<(u64, net::IfaceCounters)>,
}

impl Collecting {
    fn new(args: &MonitorArgs) -> Collecting {
        let sources = args.sources.clone();
        let iface = args
            .iface
            .clone()
            .or_else(|| net::iface_towards(sources.first()?));
        Collecting {
            collector: Collector::new(&sources, args.lag, args.history),
            sources,
            iface,
            net_prev: None,
        }
    }

    /// Adds the sources that registered on the dashboard since the last
    /// tick.
    fn add_registered(&mut self, board: &Mutex<Board>, quiet: bool) {
        let registered = std::mem::take(&mut Board::lock(board).registered);
        for addr in registered {
            if self.collector.add_source(&addr) {
                if !quiet {
                    eprintln!("hongbao monitor: source {addr} registered");
                }
                if self.iface.is_none() {
                    self.iface = net::iface_towards(&addr);
                }
                self.sources.push(addr);
            }
        }
    }

    /// The interface's counters over the second that just ended, given to
    /// the collector when the last sample was a second ago.
    fn sample_net(&mut self, second: u64) {
        let Some(name) = &self.iface else {
            return;
        };
        let Some(now) = net::read(name) else {
            return;
        };
        if let Some((at, prev)) = self.net_prev
            && at + 1 == second
        {
            self.collector.take_net(
                at,
                NetSecond {
                    iface: name.clone(),
                    rx_packets: now.rx_packets.saturating_sub(prev.rx_packets),
                    tx_packets: now.tx_packets.saturating_sub(prev.tx_packets),
                    rx_bytes: now.rx_bytes.saturating_sub(prev.rx_bytes),
                    tx_bytes: now.tx_bytes.saturating_sub(prev.tx_bytes),
                },
            );
        }
        self.net_prev = Some((second, now));
    }

    /// Fetches every source in parallel (only the seconds it has not served
    /// yet) and hands the results to the collector, saying when a source
    /// goes down or comes up.
    fn fetch_all(&mut self, second: u64, quiet: bool) {
        let fetched: Vec<Result<_, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .sources
                .iter()
                .zip(&self.collector.sources)
                .map(|(a, s)| {
                    let since = s.latest;
                    scope.spawn(move || fetch_seconds(a, since, FETCH_TIMEOUT))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("the fetch thread panicked".into()))
                })
                .collect()
        });
        for (i, f) in fetched.into_iter().enumerate() {
            let was_up = self.collector.sources[i].up;
            self.collector.take(i, f, second);
            let s = &self.collector.sources[i];
            if !quiet && s.up != was_up {
                match &s.error {
                    Some(e) => eprintln!("hongbao monitor: source {} is DOWN: {e}", s.addr),
                    None => eprintln!("hongbao monitor: source {} is up", s.addr),
                }
            }
        }
    }

    /// The sources' own view of the run at its end (`GET /status`), for the
    /// report's settings.
    fn statuses(&self) -> Vec<(String, Option<serde_json::Value>)> {
        self.sources
            .iter()
            .map(|a| {
                let status =
                    crate::http::get(a, "/status", FETCH_TIMEOUT)
                        .ok()
                        .and_then(|(code, body)| {
                            (code == 200).then(|| serde_json::from_str(&body).ok())?
                        });
                (a.clone(), status)
            })
            .collect()
    }
}

fn open_append(path: &Path, option: &str) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {option} {}", path.display()))
}

/// The end of a run: charts and the report.
fn finish(
    args: &MonitorArgs,
    rows: &[Row],
    sources: &[SourceState],
    statuses: Vec<(String, Option<serde_json::Value>)>,
) -> anyhow::Result<()> {
    if let Some(dir) = &args.charts_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for c in super::chart::charts() {
            let svg = super::chart::svg(&c, rows)?;
            let path = dir.join(format!("{}.svg", c.name));
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            super::chart::png(&c, rows, &dir.join(format!("{}.png", c.name)))?;
        }
    }
    if let Some(path) = &args.report {
        let hlogs = args
            .hlogs
            .iter()
            .map(|spec| report::Hlog::read(spec))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let html = report::html(&report::Input {
            rows,
            sources,
            statuses: &statuses,
            hlogs: &hlogs,
            command: std::env::args().collect(),
        })?;
        std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
        if !args.quiet {
            eprintln!("hongbao monitor: report in {}", path.display());
        }
    }
    Ok(())
}

/// `<=` before a percentile that is only the worst source's bound.
fn bound_mark(across: Option<LatencyAcross>) -> &'static str {
    match across {
        Some(LatencyAcross::WorstSourceBound) => "<=",
        _ => "",
    }
}

/// One line per closed second, for a terminal; a latency that is only
/// an upper bound (a source sent no histogram) shows as `p99 <=…`.
pub fn line(r: &Row) -> String {
    let mut out = format!("{} ", r.second);
    match &r.servers.sum {
        Some(s) => out.push_str(&format!(
            "servers {}/{} shakes {} got {} none {} over {} conns {} gen {} svc p99 {}{:.1}us",
            r.servers.reporting,
            r.servers.reporting as usize + r.servers.idle.len() + r.servers.missing.len(),
            s.server.shakes,
            s.server.got,
            s.server.none,
            s.server.overload,
            s.conns_open,
            s.generator.generated,
            bound_mark(r.servers.latency_across),
            s.service_ns_p99 as f64 / 1e3
        )),
        None => out.push_str("servers -"),
    }
    out.push_str(" | ");
    match &r.clients.sum {
        Some(c) => out.push_str(&format!(
            "clients {}/{} sent {} answered {} p99 {}{:.0}us",
            r.clients.reporting,
            r.clients.reporting as usize + r.clients.idle.len() + r.clients.missing.len(),
            c.counters.sent,
            c.counters.answered,
            bound_mark(r.clients.latency_across),
            c.latency_us.p99_us
        )),
        None => out.push_str("clients -"),
    }
    let missing: Vec<&String> = r
        .servers
        .missing
        .iter()
        .chain(&r.clients.missing)
        .chain(&r.unreached)
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        out.push_str(&format!(" | MISSING {}", names.join(" ")));
    }
    out
}
