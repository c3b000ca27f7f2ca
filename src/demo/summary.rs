//! The demo's results: per phase, from the files the children wrote.
//!
//! Owns: turning the flooders' `--json` reports, the servers'
//! `--stats-jsonl` seconds (one server, or every node of a fleet, added up
//! per second), both sides' interval logs and the server CPU samples into
//! one [`Summary`] (written as JSON) and the table printed at the end; with
//! `--nodes`, the fleet's part ([`ClusterSummary`]: the faults and when,
//! the clients' failovers) and the fleet audit's verdict. Must not: measure
//! anything itself; every figure comes from a file a child wrote or a
//! sample the run took.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use super::plan::{Check, Machine, Plan, Verdict as CheckVerdict};
use crate::audit::AuditReport;
use crate::audit::fleet::FleetReport;
use crate::flood::schedule::{self, Phase};
use crate::hlog;
use crate::stats::SecondStats;

/// The JSON schema version of `summary.json`.
pub const SCHEMA_VERSION: u32 = 1;

/// Latency percentiles, milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |ns: u64| ns as f64 / 1e6;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The flooders' side of one phase, all flooders summed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientPhase {
    /// Shakes sent per second.
    pub sent_per_sec: f64,
    /// Answers per second.
    pub answered_per_sec: f64,
    /// Envelopes got per second.
    pub got_per_sec: f64,
    /// "None" answers per second.
    pub none_per_sec: f64,
    /// "Overload" answers per second.
    pub overload_per_sec: f64,
    /// Claims answered per second.
    pub claims_per_sec: f64,
    /// Requests due but not sent (user not logged in, or too many awaited).
    pub unsent: u64,
    /// Lost connections, bad frames and unknown answers.
    pub errors: u64,
    /// Latency from the intended send time (corrected for coordinated
    /// omission), every flooder's histograms added.
    pub latency: Percentiles,
}

/// The server's side of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerPhase {
    /// Seconds of its stats that fell in the phase.
    pub seconds: u64,
    /// Shakes answered per second.
    pub shakes_per_sec: f64,
    /// Envelopes granted per second.
    pub got_per_sec: f64,
    /// Shakes refused as over `--max-qps`, per second.
    pub overload_per_sec: f64,
    /// Packets created in the phase.
    pub packets_created: u64,
    /// Claims paid in the phase.
    pub claims_paid: u64,
    /// Bad frames (every kind) in the phase.
    pub bad_frames: u64,
    /// Connections open at the phase's last second.
    pub conns_open: u64,
    /// Service time (frame read to answer handed to `write`).
    pub service: Percentiles,
    /// Server CPU per shake over the phase, microseconds (all threads).
    pub cpu_us_per_shake: Option<f64>,
    /// Server CPU over the phase, percent of one core.
    pub cpu_pct: Option<f64>,
}

/// One shaking phase.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseSummary {
    /// Its global rate.
    pub qps: u64,
    /// Its length.
    pub secs: u64,
    /// Its first Unix second (the first flooder's clock).
    pub unix_start: u64,
    /// The flooders' side.
    pub client: ClientPhase,
    /// The server's side.
    pub server: ServerPhase,
}

/// The connect phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectSummary {
    /// Users planned.
    pub users: u64,
    /// Users logged in when shaking began.
    pub logged_in: u64,
    /// Connect or login attempts that failed (and were retried).
    pub failures: u64,
    /// Seconds the slowest flooder took to connect and log in its users.
    pub secs: f64,
    /// Logins per second over all flooders.
    pub per_sec: f64,
    /// Server memory (RSS) per logged-in connection, bytes.
    pub server_rss_bytes_per_conn: Option<f64>,
}

/// Money, as the clients saw it and as the ledger holds it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MoneySummary {
    /// Envelopes the flooders were granted.
    pub client_envelopes: u64,
    /// Their cents.
    pub client_envelope_cents: u64,
    /// Claim answers the flooders got.
    pub client_claim_answers: u64,
    /// Their cents.
    pub client_claim_cents: u64,
}

/// The ledger audit's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct AuditOutcome {
    /// Every rule held and every acknowledgement was found.
    pub ok: bool,
    /// The violation, or what kept the audit from running.
    pub error: Option<String>,
    /// What it read and checked (one server).
    pub report: Option<AuditReport>,
    /// What the fleet audit read and checked (`--nodes`: every node's
    /// ledger against the engine, and the flooders' acknowledgements).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReport>,
}

/// One step of the fault schedule (`--nodes`), as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultEvent {
    /// When, Unix seconds.
    pub unix: f64,
    /// When, seconds into the shaking phases (after the warmup).
    pub shaking_secs: f64,
    /// What happened, in words.
    pub what: String,
}

/// The fleet's Redis Cluster.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RedisSummary {
    /// Its nodes' ports on 127.0.0.1 (each node's cluster bus is 10000
    /// above).
    pub ports: Vec<u16>,
    /// Primaries.
    pub primaries: u16,
    /// Replicas per primary.
    pub replicas: u16,
    /// Its `cluster-node-timeout`: how long a primary must be unreachable
    /// before its replica is promoted.
    pub node_timeout_ms: Option<u64>,
    /// Every redis-server process it ran, the restarted one included.
    pub pids: Vec<u32>,
}

/// What the flooders saw of the fleet, summed over every second they
/// reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetClients {
    /// Users moved on to the next node after a lost connection.
    pub failovers: u64,
    /// Unanswered claims sent again after such a move.
    pub claims_resent: u64,
    /// Pushes (cmd 4) received.
    pub pushes: u64,
    /// Connections lost.
    pub conn_errors: u64,
}

/// `--nodes`: the fleet, what was done to it, and what it said.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterSummary {
    /// hongbao nodes.
    pub nodes: u32,
    /// Each node's shakes address, by node id from 1.
    pub node_addrs: Vec<String>,
    /// The Redis Cluster.
    pub redis: RedisSummary,
    /// The fault schedule as it ran.
    pub faults: Vec<FaultEvent>,
    /// The flooders' side.
    pub clients: FleetClients,
    /// Each node's `cluster` object of `/status` when the run ended (a
    /// restarted node's counters start at its restart).
    pub node_status: Vec<Value>,
}

/// How a child ended.
#[derive(Clone, Debug, Serialize)]
pub struct ChildSummary {
    /// Its role.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// How it ended, in words.
    pub ended: String,
    /// Its log.
    pub log: PathBuf,
}

/// Everything the run produced, as `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// When the demo started, Unix seconds.
    pub started_unix: u64,
    /// False when interrupted or a child failed.
    pub completed: bool,
    /// Why it did not complete.
    pub failure: Option<String>,
    /// The host.
    pub machine: Machine,
    /// The run as planned.
    pub plan: Plan,
    /// The connect phase.
    pub connect: ConnectSummary,
    /// The shaking phases.
    pub phases: Vec<PhaseSummary>,
    /// Money.
    pub money: MoneySummary,
    /// The ledger audit.
    pub audit: AuditOutcome,
    /// `--nodes`: the fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSummary>,
    /// The children.
    pub children: Vec<ChildSummary>,
    /// The report and the other files, relative to the output directory.
    pub files: Vec<(String, String)>,
}

/// A server CPU sample: when, and its CPU time so far.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    /// Unix time, seconds.
    pub unix: f64,
    /// The server's CPU time, all threads, microseconds (a fleet's: every
    /// node's, a killed node's last sample kept).
    pub cpu_us: u64,
}

/// What the summary is built from.
pub struct Inputs<'a> {
    /// The flooders' `--json` files.
    pub flooder_json: &'a [PathBuf],
    /// The flooders' `--hlog` files.
    pub flooder_hlogs: &'a [PathBuf],
    /// The server's `--stats-jsonl` (every node's, with `--nodes`).
    pub server_stats: &'a [PathBuf],
    /// The server's `--hlog` (every node process's, with `--nodes`).
    pub server_hlogs: &'a [PathBuf],
    /// The server CPU samples, in time order.
    pub cpu: &'a [CpuSample],
    /// Server RSS before the first connect and after the last login.
    pub rss: (Option<u64>, Option<u64>),
}

/// A flooder's report, the parts the summary reads.
struct Flooder {
    start_unix: u64,
    plan: schedule::Plan,
    connect: Value,
    per_second: Vec<Value>,
    before_start: Value,
}

fn read_flooder(path: &Path) -> anyhow::Result<Flooder> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let phases: Vec<Phase> = v["config"]["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| Phase {
                    qps: p["qps"].as_u64().unwrap_or(0),
                    secs: p["secs"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(!phases.is_empty(), "{}: no phases", path.display());
    Ok(Flooder {
        start_unix: v["start_unix"].as_u64().unwrap_or(0),
        plan: schedule::Plan::new(v["config"]["warmup_secs"].as_u64().unwrap_or(0), phases),
        connect: v["connect"].clone(),
        per_second: v["per_second"].as_array().cloned().unwrap_or_default(),
        before_start: v["before_start"].clone(),
    })
}

fn read_stats(path: &Path) -> Vec<SecondStats> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn read_hlog(path: &Path) -> Vec<hlog::Interval> {
    std::fs::read(path)
        .ok()
        .and_then(|t| hlog::read_intervals(&t).ok())
        .unwrap_or_default()
}

/// Significant digits of a phase's histogram: those the children record
/// with, so that adding their intervals loses nothing.
const HISTOGRAM_DIGITS: u8 = 3;

fn new_histogram() -> Histogram<u64> {
    Histogram::new(HISTOGRAM_DIGITS).expect("3 significant digits is valid")
}

/// Adds the intervals whose middle falls in `[from, to)` Unix seconds.
fn add_intervals(into: &mut Histogram<u64>, intervals: &[hlog::Interval], from: u64, to: u64) {
    for i in intervals {
        let mid = i.start_unix + i.length / 2.0;
        if mid >= from as f64 && mid < to as f64 {
            // Histograms of different bounds add unless a value is out of
            // range; the summary's auto-resizes, so this cannot fail.
            let _ = into.add(&i.histogram);
        }
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The CPU rate between the first sample at or after `from` and the last at
/// or before `to`, in CPU-µs per second.
fn cpu_rate(samples: &[CpuSample], from: f64, to: f64) -> Option<f64> {
    let a = samples.iter().find(|s| s.unix >= from)?;
    let b = samples.iter().rev().find(|s| s.unix <= to)?;
    (b.unix - a.unix >= 1.0).then(|| (b.cpu_us.saturating_sub(a.cpu_us)) as f64 / (b.unix - a.unix))
}

/// The files the summary is built from, read.
struct Files {
    flooders: Vec<Flooder>,
    /// Each flooder's interval log, in the flooders' order.
    flooder_hlogs: Vec<Vec<hlog::Interval>>,
    /// The servers' closed seconds, every server's in one list.
    stats: Vec<SecondStats>,
    /// Every server's intervals in one list.
    server_hlog: Vec<hlog::Interval>,
}

impl Files {
    /// Reads them; a flooder report that cannot be read is an error, a
    /// missing log or stats file reads as empty.
    fn read(inputs: &Inputs<'_>) -> anyhow::Result<Files> {
        Ok(Files {
            flooders: inputs
                .flooder_json
                .iter()
                .map(|p| read_flooder(p))
                .collect::<anyhow::Result<_>>()?,
            flooder_hlogs: inputs.flooder_hlogs.iter().map(|p| read_hlog(p)).collect(),
            stats: inputs
                .server_stats
                .iter()
                .flat_map(|p| read_stats(p))
                .collect(),
            server_hlog: inputs
                .server_hlogs
                .iter()
                .flat_map(|p| read_hlog(p))
                .collect(),
        })
    }
}

/// Builds the phases, the connect phase and the money from the files.
pub fn measure(
    plan: &Plan,
    inputs: &Inputs<'_>,
) -> anyhow::Result<(ConnectSummary, Vec<PhaseSummary>, MoneySummary)> {
    let files = Files::read(inputs)?;
    let connect = connect_summary(plan, &files.flooders, inputs.rss);
    let money = money_summary(&files.flooders);
    let mut phases = Vec::with_capacity(plan.phases.len());
    let first = files.flooders.first().context("no flooder report")?;
    let mut unix_start = first.start_unix + first.plan.warmup_secs();
    for (i, spec) in plan.phases.iter().enumerate() {
        let step = i as u32 + 1;
        let unix_end = unix_start + spec.secs;
        phases.push(PhaseSummary {
            qps: spec.qps,
            secs: spec.secs,
            unix_start,
            client: client_phase(&files, step, spec.secs),
            server: server_phase(&files, inputs.cpu, unix_start, unix_end),
        });
        unix_start = unix_end;
    }
    Ok((connect, phases, money))
}

/// The connect phase, all flooders summed; the server's memory per
/// connection from its RSS before the first connect and after the last
/// login.
fn connect_summary(
    plan: &Plan,
    flooders: &[Flooder],
    rss: (Option<u64>, Option<u64>),
) -> ConnectSummary {
    let mut connect = ConnectSummary {
        users: u64::from(plan.users),
        ..ConnectSummary::default()
    };
    for f in flooders {
        connect.logged_in += u(&f.connect, "logged_in");
        connect.failures += u(&f.connect, "failures");
        connect.secs = connect.secs.max(f.connect["secs"].as_f64().unwrap_or(0.0));
    }
    if connect.secs > 0.0 {
        connect.per_sec = connect.logged_in as f64 / connect.secs;
    }
    if let (Some(before), Some(after)) = rss
        && connect.logged_in > 0
    {
        connect.server_rss_bytes_per_conn =
            Some(after.saturating_sub(before) as f64 / connect.logged_in as f64);
    }
    connect
}

/// What the flooders saw of a fleet: failovers, resent claims, pushes and
/// lost connections, over every second they reported (before the start
/// included); None when a report cannot be read.
pub fn fleet_clients(flooder_json: &[PathBuf]) -> Option<FleetClients> {
    let mut c = FleetClients::default();
    for path in flooder_json {
        let f = read_flooder(path).ok()?;
        for s in f.per_second.iter().chain(std::iter::once(&f.before_start)) {
            c.failovers += u(s, "failovers");
            c.claims_resent += u(s, "claims_resent");
            c.pushes += u(s, "pushes");
            c.conn_errors += u(s, "conn_errors");
        }
    }
    Some(c)
}

/// The money the flooders received, over every second they reported
/// (before the start included).
fn money_summary(flooders: &[Flooder]) -> MoneySummary {
    let mut money = MoneySummary::default();
    for f in flooders {
        for s in f.per_second.iter().chain(std::iter::once(&f.before_start)) {
            money.client_envelopes += u(s, "got");
            money.client_envelope_cents += u(s, "got_cents");
            money.client_claim_answers += u(s, "claim_answers");
            money.client_claim_cents += u(s, "claim_cents");
        }
    }
    money
}

/// The flooders' side of phase `step` (from 1), `secs` long: every
/// flooder's seconds of that step by its own clock, and the intervals of
/// its log that fall in them.
fn client_phase(files: &Files, step: u32, secs: u64) -> ClientPhase {
    let mut client = ClientPhase::default();
    let mut latency = new_histogram();
    for (f, intervals) in files.flooders.iter().zip(&files.flooder_hlogs) {
        let mut from = u64::MAX;
        let mut to = 0;
        for s in &f.per_second {
            let second = u(s, "second");
            if f.plan.at(second).map(|(st, _)| st) != Some(step) {
                continue;
            }
            let unix = u(s, "unix");
            from = from.min(unix);
            to = to.max(unix + 1);
            client.add_second(s);
        }
        if from < to {
            add_intervals(&mut latency, intervals, from, to);
        }
    }
    let secs = secs as f64;
    for rate in [
        &mut client.sent_per_sec,
        &mut client.answered_per_sec,
        &mut client.got_per_sec,
        &mut client.none_per_sec,
        &mut client.overload_per_sec,
        &mut client.claims_per_sec,
    ] {
        *rate /= secs;
    }
    client.latency = Percentiles::of(&latency);
    client
}

impl ClientPhase {
    /// Adds one flooder second (its `per_second` entry); the rates are
    /// totals until [`client_phase`] divides them.
    fn add_second(&mut self, s: &Value) {
        self.sent_per_sec += u(s, "sent") as f64;
        self.answered_per_sec += u(s, "answered") as f64;
        self.got_per_sec += u(s, "got") as f64;
        self.none_per_sec += u(s, "none") as f64;
        self.overload_per_sec += u(s, "overload") as f64;
        self.claims_per_sec += u(s, "claim_answers") as f64;
        self.unsent += u(s, "unsent");
        self.errors += u(s, "conn_errors")
            + u(s, "bad_frames")
            + u(s, "other_results")
            + u(s, "unexpected_frames");
    }
}

/// The server's side of the phase over Unix seconds `[unix_start,
/// unix_end)`: its stats, its service-time log and its CPU samples there.
/// A fleet's nodes are added up per second.
fn server_phase(files: &Files, cpu: &[CpuSample], unix_start: u64, unix_end: u64) -> ServerPhase {
    let mut server = ServerPhase::default();
    let mut shakes = 0u64;
    // Connections open at each second's close, every server's added.
    let mut conns: BTreeMap<u64, u64> = BTreeMap::new();
    for s in files
        .stats
        .iter()
        .filter(|s| (unix_start..unix_end).contains(&s.second))
    {
        shakes += s.server.shakes;
        server.got_per_sec += s.server.got as f64;
        server.overload_per_sec += s.server.overload as f64;
        server.packets_created += s.generator.packets_created;
        server.claims_paid += s.server.claims_paid;
        server.bad_frames += s.server.bad_frames();
        *conns.entry(s.second).or_default() += s.conns_open;
    }
    server.seconds = conns.len() as u64;
    server.conns_open = conns.last_key_value().map_or(0, |(_, &c)| c);
    if server.seconds > 0 {
        let n = server.seconds as f64;
        server.shakes_per_sec = shakes as f64 / n;
        server.got_per_sec /= n;
        server.overload_per_sec /= n;
    }
    let mut service = new_histogram();
    add_intervals(&mut service, &files.server_hlog, unix_start, unix_end);
    server.service = Percentiles::of(&service);
    if let Some(rate) = cpu_rate(cpu, unix_start as f64, unix_end as f64) {
        server.cpu_pct = Some(rate / crate::clock::MICROS_PER_PERCENT_OF_SEC as f64);
        if server.shakes_per_sec > 0.0 {
            server.cpu_us_per_shake = Some(rate / server.shakes_per_sec);
        }
    }
    server
}

/// The pre-flight table.
pub fn checks_table(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.verdict {
            CheckVerdict::Ok => "ok    ",
            CheckVerdict::Limits => "LIMITS",
            CheckVerdict::Warn => "warn  ",
        };
        let _ = writeln!(out, "  {mark} {:<20} {:<24} {}", c.what, c.value, c.note);
    }
    out
}

/// `x` with `digits` decimals, or "-" when not measured.
pub(super) fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// What the clients got, in one sentence (the table's and the verdict's).
pub(super) fn clients_line(m: &MoneySummary) -> String {
    format!(
        "clients got {} envelopes ({} cents) and {} claim answers ({} cents)",
        m.client_envelopes, m.client_envelope_cents, m.client_claim_answers, m.client_claim_cents
    )
}

/// The table printed at the end: the connect phase, a line per shaking
/// phase, the money and the audit.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let c = &s.connect;
    let _ = writeln!(
        out,
        "connect   {} of {} users logged in in {:.1} s ({:.0}/s, {} failed attempts retried); server memory {} B per connection",
        c.logged_in,
        c.users,
        c.secs,
        c.per_sec,
        c.failures,
        opt(c.server_rss_bytes_per_conn, 0),
    );
    write_phases(&mut out, &s.phases);
    let _ = writeln!(out, "\nmoney     {}", clients_line(&s.money));
    if let Some(c) = &s.cluster {
        write_cluster(&mut out, c);
    }
    write_audit(&mut out, &s.audit);
    out
}

/// The fleet, its faults as they happened, and what the clients saw.
fn write_cluster(out: &mut String, c: &ClusterSummary) {
    let r = &c.redis;
    let ports = match (r.ports.first(), r.ports.last()) {
        (Some(a), Some(b)) => format!("127.0.0.1:{a}..{b}"),
        _ => "-".to_owned(),
    };
    let _ = writeln!(
        out,
        "fleet     {} hongbao nodes ({}) on a Redis Cluster of {} primaries x {} replica(s) ({ports}, cluster-node-timeout {} ms)",
        c.nodes,
        c.node_addrs.join(", "),
        r.primaries,
        r.replicas,
        r.node_timeout_ms
            .map_or_else(|| "?".to_owned(), |t| t.to_string()),
    );
    for (i, e) in c.faults.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:<9} {:>+6.1} s  {}",
            if i == 0 { "faults" } else { "" },
            e.shaking_secs,
            e.what
        );
    }
    if c.faults.is_empty() {
        let _ = writeln!(out, "faults    none ran (the run ended first)");
    }
    let k = &c.clients;
    let _ = writeln!(
        out,
        "clients   {} failovers to another node, {} claims sent again after one, {} pushes received, {} connections lost",
        k.failovers, k.claims_resent, k.pushes, k.conn_errors
    );
}

/// The phases' table: its header and a line per shaking phase.
fn write_phases(out: &mut String, phases: &[PhaseSummary]) {
    let _ = writeln!(
        out,
        "\n{:<16} {:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10} {:>6}",
        "phase",
        "sent/s",
        "answer/s",
        "got/s",
        "over/s",
        "errors",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "srv p99 µs",
        "srv shk/s",
        "cpu µs/sh",
        "cpu %",
    );
    for p in phases {
        let _ = writeln!(
            out,
            "{:<16} {:>9.0} {:>9.0} {:>8.1} {:>8.0} {:>7} {:>8.3} {:>8.3} {:>9.3} {:>10.1} {:>10.0} {:>10} {:>6}",
            format!("shake {}x{}s", p.qps, p.secs),
            p.client.sent_per_sec,
            p.client.answered_per_sec,
            p.client.got_per_sec,
            p.client.overload_per_sec,
            p.client.errors,
            p.client.latency.p50_ms,
            p.client.latency.p99_ms,
            p.client.latency.p999_ms,
            p.server.service.p99_ms * 1e3,
            p.server.shakes_per_sec,
            opt(p.server.cpu_us_per_shake, 2),
            opt(p.server.cpu_pct, 0),
        );
    }
}

/// A single ledger's passed audit, in one line (the summary's and the
/// verdict's).
pub(crate) fn books_balance(r: &AuditReport) -> String {
    format!(
        "OK: the books balance; {} acknowledged grants and {} paid claims all found in the ledger",
        r.acks_grants, r.acks_claims
    )
}

/// The ledger's totals and the audit's verdict.
fn write_audit(out: &mut String, audit: &AuditOutcome) {
    match (&audit.report, &audit.fleet, &audit.error) {
        (Some(r), _, None) => {
            let t = &r.totals;
            let _ = writeln!(
                out,
                "ledger    {} records: generated {} envelopes ({} cents), granted {} ({} cents), {} packets ({} cents), {} claims paid ({} cents)",
                r.records,
                t.envelopes_generated,
                t.cents_generated,
                t.envelopes_granted,
                t.cents_granted,
                t.packets_created,
                t.cents_packets,
                t.claims,
                t.cents_claimed,
            );
            let _ = writeln!(out, "audit     {}", books_balance(r));
        }
        (None, Some(f), None) => write_fleet_audit(out, f),
        (_, _, Some(e)) => {
            let _ = writeln!(out, "audit     FAILED: {e}");
        }
        (None, None, None) => {}
    }
}

/// The fleet audit's totals and its verdict.
fn write_fleet_audit(out: &mut String, f: &FleetReport) {
    let records: u64 = f.nodes.iter().map(|n| n.records).sum();
    let granted: u64 = f.nodes.iter().map(|n| n.totals.envelopes_granted).sum();
    let _ = writeln!(
        out,
        "ledgers   {} node ledgers, {records} records: generated {} envelopes, granted {granted}; {} packets created ({} cents), {} in the engine: claims {} ({} cents) + refunds {} ({} cents) + remaining {} cents = their amounts",
        f.nodes.len(),
        f.envelopes_generated,
        f.packets,
        f.cents_packets,
        f.packets_checked,
        f.claims,
        f.cents_claimed,
        f.refunds,
        f.cents_refunded,
        f.cents_remaining,
    );
    if !f.packets_not_in_engine.is_empty() {
        let _ = writeln!(
            out,
            "          {} packet(s) recorded by a node that never reached the engine (never claimable, made again at that node's next start)",
            f.packets_not_in_engine.len()
        );
    }
    let budget: Vec<String> = f
        .leased_by_epoch
        .iter()
        .map(|(epoch, leased)| {
            format!(
                "epoch {epoch} leased {leased} of {}",
                f.budget_by_epoch.get(epoch).copied().unwrap_or(0)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "audit     OK: the fleet's books balance; the nodes' {} paid claim answers (repeats included) all in the engine with their amounts; envelope budget {}; {} acknowledged grants and {} paid claims of the flooders ({} of them repeats) all in a node's ledger",
        f.mirrors,
        if budget.is_empty() {
            "not used".to_owned()
        } else {
            budget.join(", ")
        },
        f.acks_grants,
        f.acks_claims,
        f.acks_claims_repeated
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_spans_the_samples_inside_the_phase() {
        let samples: Vec<CpuSample> = (0..10)
            .map(|k| CpuSample {
                unix: 100.3 + k as f64,
                cpu_us: 250_000 * k,
            })
            .collect();
        // 0.25 s of CPU per second, i.e. 25 % of a core.
        let rate = cpu_rate(&samples, 102.0, 106.0).unwrap();
        assert!((rate - 250_000.0).abs() < 1e-6, "{rate}");
        assert_eq!(cpu_rate(&samples, 105.5, 106.0), None);
    }

    #[test]
    fn intervals_are_taken_by_their_middle() {
        let mut h = new_histogram();
        h.record(1_000).unwrap();
        let at = |start_unix: f64| hlog::Interval {
            start_unix,
            length: 1.0,
            histogram: h.clone(),
        };
        let intervals = vec![at(99.0), at(100.0), at(101.0), at(102.0)];
        let mut sum = new_histogram();
        add_intervals(&mut sum, &intervals, 100, 102);
        assert_eq!(sum.len(), 2);
    }
}
