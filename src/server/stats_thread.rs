//! The stats thread: closes seconds, prints and publishes them.
//!
//! Owns: the thread's loop over the cores' and the generator's reports, the
//! line per second on stdout, `--stats-jsonl`, `--hlog` (through
//! `latency_log`), the histograms handed back to the cores, and the run's
//! `Summary`. Must not: block a core (the cores never wait on it while they
//! serve) or sit on the request path.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::latency_log::LatencyLog;
use super::published::Published;
use crate::hlog::LatencyHistogram;
use crate::stats::{Aggregator, Report, SecondStats, recycle};

/// The run's totals, given when the server stops.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Every second summed.
    pub total: SecondStats,
    /// Seconds counted.
    pub seconds: u64,
    /// Service time over the run, nanoseconds.
    pub service_ns: crate::stats::SummaryNs,
    /// Envelopes left in the rings at the end.
    pub envelopes_in_rings: u64,
}

/// What the stats thread is given.
pub(super) struct StatsSetup {
    /// Cores reporting.
    pub(super) cores: usize,
    /// Reports from the cores and the generator.
    pub(super) reports: Receiver<Report>,
    /// Each core's histogram return, by core.
    pub(super) recycle: Vec<Sender<Box<LatencyHistogram>>>,
    /// Where closed seconds are published for the HTTP control.
    pub(super) published: Arc<Mutex<Published>>,
    /// `--stats-jsonl`.
    pub(super) stats_file: Option<std::fs::File>,
    /// `--quiet`: no line per second.
    pub(super) quiet: bool,
    /// `--hlog`.
    pub(super) latency_log: Option<LatencyLog>,
}

/// The stats thread: closes seconds, prints and publishes them, and hands
/// histograms back to the cores. Returns the totals once every source is gone.
pub(super) fn aggregate(setup: StatsSetup) -> Summary {
    let StatsSetup {
        cores,
        reports,
        recycle: spares_back,
        published,
        mut stats_file,
        quiet,
        mut latency_log,
    } = setup;
    let mut agg = Aggregator::new(cores);
    if latency_log.is_some() {
        agg.keep_latency();
    }
    let mut seconds = 0;
    let mut emit = |agg: &Aggregator, closed: Vec<SecondStats>| {
        if closed.is_empty() {
            return;
        }
        let stdout = io::stdout();
        let mut out = stdout.lock();
        for s in &closed {
            seconds += 1;
            if !quiet {
                let _ = writeln!(out, "{}", second_line(s));
            }
            if let Some(f) = stats_file.as_mut()
                && let Ok(line) = serde_json::to_string(s)
            {
                let _ = writeln!(f, "{line}");
            }
        }
        publish(&published, agg, closed);
    };
    while let Ok(report) = reports.recv() {
        let core = match &report {
            Report::Core { core, .. } => Some(*core),
            Report::Generator { .. } | Report::CoreGone { .. } => None,
        };
        if let (Some(core), Some(h)) = (core, agg.add(report)) {
            recycle::give_back(h, &spares_back[core]);
        }
        let closed = agg.drain_closed();
        if let Some(log) = latency_log.as_mut() {
            log.append(agg.take_latency());
        }
        emit(&agg, closed);
    }
    let closed = agg.drain_all();
    if let Some(log) = latency_log.as_mut() {
        log.append(agg.take_latency());
    }
    emit(&agg, closed);
    if let Some(log) = latency_log {
        log.finish(agg.total_latency());
    }
    Summary {
        total: agg.total.clone(),
        seconds,
        service_ns: agg.total_latency_ns(),
        envelopes_in_rings: 0,
    }
}

/// Publishes closed seconds for the HTTP control: the last
/// `SECONDS_KEPT` of them, and the totals so far.
fn publish(published: &Mutex<Published>, agg: &Aggregator, closed: Vec<SecondStats>) {
    let mut p = Published::lock(published);
    for s in closed {
        p.recent.push(s);
    }
    p.total = agg.total.clone();
    p.service = crate::stats::buckets(agg.total_latency());
}

/// One line per second, for people watching a terminal.
pub fn second_line(s: &SecondStats) -> String {
    let c = &s.server;
    format!(
        "{sec} conns {open} +{acc}/-{closed} login {login} shakes {shakes} got {got} none {none} gone {gone} \
         over {over} bad {bad} evict {evict} in {bin}B out {bout}B gen {gen} rings {rings} svc p50/p99/p99.9 {p50}/{p99}/{p999}us",
        sec = s.second,
        open = s.conns_open,
        acc = c.accepted,
        closed = c.closed,
        login = c.logins,
        shakes = c.shakes,
        got = c.got,
        none = c.none,
        gone = c.gone,
        over = c.overload,
        bad = c.bad_frames(),
        evict = c.evictions,
        bin = c.bytes_in,
        bout = c.bytes_out,
        gen = s.generator.generated,
        rings = s.envelopes_in_rings,
        p50 = us(s.service_ns_p50),
        p99 = us(s.service_ns_p99),
        p999 = us(s.service_ns_p999),
    )
}

fn us(ns: u64) -> String {
    format!("{:.1}", crate::clock::micros_of_nanos(ns))
}
