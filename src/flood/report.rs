//! The flooder's results: one serde structure, printed as a table or written
//! as JSON.
//!
//! Owns: the result schema that `tools/bench_server.py` and later tooling
//! read, the arithmetic that turns raw samples into per-request figures, and
//! the human-readable summary. Must not: measure anything itself; it only
//! formats what the coordinator collected.

use std::fmt::Write as _;

use serde::Serialize;

use super::schedule::Plan;
use crate::clock::MICROS_PER_SEC;
use crate::stats::client::{Counters, Percentiles};

/// Version of the JSON layout below; bump it when a field changes meaning or
/// goes away (adding a field does not need it).
pub const SCHEMA_VERSION: u32 = 2;

/// Everything one flooder run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `SCHEMA_VERSION`.
    pub schema: u32,
    /// The Unix second shaking started at (run second 0).
    pub start_unix: u64,
    /// The options the run used, resolved.
    pub config: RunConfig,
    /// The connect + login phase.
    pub connect: ConnectReport,
    /// Counts and rates inside the measurement window.
    pub window: WindowReport,
    /// Latency from intended send time (coordinated omission corrected), of
    /// requests intended inside the window; a request never answered counts
    /// at the time it was waited for (a lower bound), so losses cannot
    /// flatter the tail.
    pub latency_corrected: Percentiles,
    /// Latency from actual send time (uncorrected service time), same requests.
    pub latency_service: Percentiles,
    /// `latency_corrected` of the shakes that moved no money (all but "got
    /// an envelope"): the figure a durable ledger must not move.
    pub latency_no_money: Percentiles,
    /// Actual − intended send time of the window's requests: the flooder's
    /// own lateness, included in `latency_corrected`.
    pub send_lag: Percentiles,
    /// The flooder's own cost.
    pub flooder: FlooderReport,
    /// The server's cost, when `--server-pid` was given.
    pub server: Option<ServerReport>,
    /// How busy each CPU of the host was over the window.
    pub cpus: Vec<CpuReport>,
    /// CPU time over the window of everything but the flooder and the server
    /// (other processes, kernel threads): near 0 on a quiet machine. A large
    /// value means the figures were disturbed. The CPUs' busy time is the
    /// window less their measured idle, iowait and stolen time, not their
    /// tick-sampled user and system time, which misses most of a flooder's
    /// and server's CPU (they run in step with the tick; see
    /// `procfs::busy_us`) and made this about −1 s per 10 s. Within some
    /// 10 ms per CPU (`/proc/stat`'s unit), so a small negative value is
    /// rounding. Without `--server-pid` it includes the server.
    pub foreign_cpu_us: i64,
    /// Events between the last login and the start of shaking (drops, stray
    /// frames); all zero in a healthy run.
    pub before_start: Counters,
    /// Every second of the shaking phase, warmup and drain included.
    pub per_second: Vec<SecondReport>,
}

/// The options the run used.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    /// The server addresses, resolved; user `u` went to `servers[u % len]`.
    pub servers: Vec<String>,
    /// This process's first user id.
    pub min: u32,
    /// This process's last user id.
    pub max: u32,
    /// Users in the whole experiment (the slot rule's `totalUsers`).
    pub total: u64,
    /// This process's users (connections).
    pub users: u64,
    /// Flooder threads.
    pub threads: usize,
    /// The window's steps: global shakes per second and seconds each.
    pub phases: Vec<PhaseReport>,
    /// Shaking before the window, not recorded.
    pub warmup_secs: u64,
    /// Each second's users fired at its start (`--burst`).
    pub burst: bool,
    /// Target connects per second; 0 = as fast as possible.
    pub connect_rate_per_sec: u64,
    /// How many source addresses (`--bind`) the users were spread over.
    pub binds: usize,
    /// Wait after the last login before sampling the server's RSS.
    pub settle_secs: u64,
    /// The server process sampled, if any.
    pub server_pid: Option<u32>,
    /// `--send-interval-us`.
    pub send_interval_us: u64,
    /// `--spin`.
    pub spin: bool,
}

/// One `--phases` step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PhaseReport {
    /// Global shakes per second.
    pub qps: u64,
    /// Seconds.
    pub secs: u64,
}

/// The connect + login phase.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectReport {
    /// This process's users.
    pub users: u64,
    /// Users logged in when the phase ended.
    pub logged_in: u64,
    /// Connect or login attempts that failed and were retried.
    pub failures: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// From the first connect started to the last LoginResponse received.
    pub secs: f64,
    /// `logged_in / secs`.
    pub logins_per_sec: f64,
}

/// Counts and rates inside the measurement window.
#[derive(Clone, Debug, Serialize)]
pub struct WindowReport {
    /// Nominal window length (`--duration`).
    pub secs: f64,
    /// The time between the two CPU samples taken at the window's edges,
    /// which is what the CPU figures divide by; within a millisecond or so
    /// of `secs`.
    pub sampled_secs: f64,
    /// Requests the slot rule gave the window, globally: the sum of the
    /// window seconds' rates (this process sends its users' part of it).
    pub scheduled: u64,
    /// Counts of events that happened inside the window (sent by send time,
    /// answers by arrival time).
    #[serde(flatten)]
    pub counters: Counters,
    /// `sent / secs`: the achieved rate.
    pub sent_per_sec: f64,
    /// `answered / secs`.
    pub answered_per_sec: f64,
    /// Requests intended inside the window that never got an answer.
    pub lost: u64,
    /// Requests intended in the warmup that never got an answer.
    pub lost_in_warmup: u64,
    /// Claims never answered: still awaited at the end, or given up at a
    /// close (past the few sent again after the reconnect).
    pub claims_lost: u64,
}

/// The flooder's own CPU over the window.
#[derive(Clone, Debug, Serialize)]
pub struct FlooderReport {
    /// User + system CPU of the whole flooder process over the window.
    pub cpu_us: u64,
    /// `cpu_us / window sent`; None when nothing was sent.
    pub cpu_us_per_request: Option<f64>,
    /// The busiest thread's CPU in the busiest window second, percent.
    pub thread_cpu_max_pct: f64,
    /// Why the flooder itself may have limited the run (send lag p99 over
    /// 1 ms, a thread over 90 % busy); empty when it did not.
    pub warnings: Vec<String>,
}

/// The server's cost, sampled from `/proc/PID`.
#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    /// The sampled process.
    pub pid: u32,
    /// User + system CPU over the window (clock-tick resolution, 10 ms).
    pub cpu_us: u64,
    /// `cpu_us / window answered`; None when nothing was answered.
    pub cpu_us_per_answered: Option<f64>,
    /// User + system CPU from before the first connect to the last login.
    pub connect_cpu_us: u64,
    /// `connect_cpu_us / logged-in users`: the server's cost to accept and log
    /// in one connection; 1e6 over it is its accept capacity per core.
    pub connect_cpu_us_per_login: Option<f64>,
    /// VmRSS before the first connect.
    pub rss_before_bytes: u64,
    /// VmRSS `--settle-secs` after the last login.
    pub rss_after_bytes: u64,
    /// `(after − before) / logged-in connections`; may be negative when the
    /// allocator gave memory back meanwhile.
    pub rss_bytes_per_conn: f64,
}

/// One CPU over the window, from `/proc/stat`.
#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    /// The CPU's number.
    pub cpu: usize,
    /// Share of the window it spent running anything (tasks, interrupts):
    /// the window less its idle, iowait and stolen time, in percent.
    pub busy_pct: f64,
    /// Share of the window the hypervisor took from it, in percent.
    pub steal_pct: f64,
}

/// One second of the shaking phase.
#[derive(Clone, Debug, Serialize)]
pub struct SecondReport {
    /// Run seconds since the shaking start (a whole Unix second).
    pub second: u64,
    /// The second's Unix time: `start_unix + second`.
    pub unix: u64,
    /// `warmup`, `window` or `drain`.
    pub phase: &'static str,
    /// The global rate of the second.
    pub qps: u64,
    /// This process's share of it: requests intended in the second (sent,
    /// or counted unsent), by the slot rule.
    pub scheduled: u64,
    /// This process's logged-in connections at the second's end.
    pub connections: u64,
    /// Corrected latency of the answers that arrived in the second.
    pub p50_us: f64,
    /// The same, 99th percentile.
    pub p99_us: f64,
    /// Send lag of the requests sent in the second, 99th percentile.
    pub send_lag_p99_us: f64,
    /// The busiest flooder thread's CPU in the second, percent.
    pub thread_cpu_max_pct: f64,
    /// That second's counts, all threads summed.
    #[serde(flatten)]
    pub counters: Counters,
}

/// Which part of the run second `second` belongs to.
pub fn phase_of(second: u64, plan: &Plan) -> &'static str {
    if second < plan.warmup_secs() {
        "warmup"
    } else if second < plan.end_secs() {
        "window"
    } else {
        "drain"
    }
}

/// `numerator / denominator`, or None when the denominator is 0.
pub fn per(numerator: f64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator / denominator as f64)
}

/// What one progress line shows.
pub struct Line<'a> {
    /// Run second.
    pub second: u64,
    /// See [`phase_of`].
    pub phase: &'static str,
    /// The second's global rate.
    pub qps: u64,
    /// The second's counts.
    pub counters: &'a Counters,
    /// Logged-in connections.
    pub ready: u64,
    /// Corrected latency of the second's answers.
    pub corrected: &'a Percentiles,
    /// Send lag of the second's requests.
    pub send_lag: &'a Percentiles,
    /// The busiest thread's CPU, percent.
    pub thread_cpu_max_pct: f64,
}

/// One progress line for a second of shaking.
pub fn progress_line(l: &Line) -> String {
    let c = l.counters;
    format!(
        "[{:>4}s {:<6}] qps {:>7}  sent {:>7}  answered {:>7}  got {:>6}  none {:>7}  overload {:>6}  errors {:>4}  \
         conns {:>6}  p50 {:>7.0}µs  p99 {:>7.0}µs  lag p99 {:>6.0}µs  cpu {:>3.0}%",
        l.second,
        l.phase,
        l.qps,
        c.sent,
        c.answered,
        c.got,
        c.none,
        c.overload,
        c.errors(),
        l.ready,
        l.corrected.p50_us,
        l.corrected.p99_us,
        l.send_lag.p99_us,
        l.thread_cpu_max_pct,
    )
}

/// The readable summary table.
pub fn summary(r: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_summary(r, &mut out);
    out
}

fn write_summary(r: &Report, out: &mut String) -> std::fmt::Result {
    write_run(r, out)?;
    write_counts(r, out)?;
    write_latency(r, out)?;
    write_costs(r, out)?;
    for w in &r.flooder.warnings {
        writeln!(out, "  WARNING        {w}")?;
    }
    Ok(())
}

/// The run's shape: its options, the connect phase, the window and its rates.
fn write_run(r: &Report, out: &mut String) -> std::fmt::Result {
    let c = &r.config;
    let w = &r.window;
    let steps: Vec<String> = c
        .phases
        .iter()
        .map(|p| format!("{}/s×{}s", p.qps, p.secs))
        .collect();
    writeln!(
        out,
        "hongbao flood: users {}..={} of {} on {}, {} thread(s), {} after {} s warmup{}",
        c.min,
        c.max,
        c.total,
        c.servers.join(","),
        c.threads,
        steps.join(", "),
        c.warmup_secs,
        if c.burst { ", burst" } else { "" }
    )?;
    writeln!(
        out,
        "  connect+login  {} of {} users in {:.3} s = {:.0} logins/s; {} failed attempts retried",
        r.connect.logged_in,
        r.connect.users,
        r.connect.secs,
        r.connect.logins_per_sec,
        r.connect.failures
    )?;
    writeln!(
        out,
        "  window         {:.3} s (CPU sampled over {:.4} s), {} requests scheduled",
        w.secs, w.sampled_secs, w.scheduled
    )?;
    let k = &w.counters;
    writeln!(
        out,
        "  rate           sent {} = {:.1}/s   answered {} = {:.1}/s",
        k.sent, w.sent_per_sec, k.answered, w.answered_per_sec
    )?;
    Ok(())
}

/// What the answers were, the packets, and everything that went wrong.
fn write_counts(r: &Report, out: &mut String) -> std::fmt::Result {
    let w = &r.window;
    let k = &w.counters;
    writeln!(
        out,
        "  answers        got {} ({} cents)  none {}  gone {}  overload {}  other results {}",
        k.got, k.got_cents, k.none, k.gone, k.overload, k.other_results
    )?;
    writeln!(
        out,
        "  packets        pushes {}  claims {} (+{} resent)  answered {} ({} cents)  unanswered {}",
        k.pushes, k.claims, k.claims_resent, k.claim_answers, k.claim_cents, w.claims_lost
    )?;
    writeln!(
        out,
        "  errors         unexpected frames {}  bad frames {}  conn errors {}  connect failures {}  \
         (failovers {})  unsent {}  lost {} (+{} in warmup)",
        k.unexpected_frames,
        k.bad_frames,
        k.conn_errors,
        k.connect_failures,
        k.failovers,
        k.unsent,
        w.lost,
        w.lost_in_warmup
    )?;
    let b = &r.before_start;
    if b.errors() > 0 {
        writeln!(
            out,
            "  before start   conn errors {}  bad frames {}  unexpected frames {}",
            b.conn_errors, b.bad_frames, b.unexpected_frames
        )?;
    }
    Ok(())
}

/// The latency table: corrected, no money, service, send lag.
fn write_latency(r: &Report, out: &mut String) -> std::fmt::Result {
    writeln!(
        out,
        "  latency µs     {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "max", "mean", "count"
    )?;
    for (name, p) in [
        ("corrected", &r.latency_corrected),
        ("no money", &r.latency_no_money),
        ("service", &r.latency_service),
        ("send lag", &r.send_lag),
    ] {
        writeln!(
            out,
            "    {:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
            name, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us, p.mean_us, p.count
        )?;
    }
    Ok(())
}

/// What the run cost: the flooder's CPU, the host's CPUs, and the server's
/// CPU and memory when sampled.
fn write_costs(r: &Report, out: &mut String) -> std::fmt::Result {
    writeln!(
        out,
        "  flooder CPU    {:.3} s = {} µs/request; busiest thread {:.0}% of a core",
        r.flooder.cpu_us as f64 / MICROS_PER_SEC as f64,
        fmt_opt(r.flooder.cpu_us_per_request),
        r.flooder.thread_cpu_max_pct
    )?;
    let cpus: Vec<String> = r
        .cpus
        .iter()
        .map(|c| {
            format!(
                "cpu{} {:.0}% busy (steal {:.1}%)",
                c.cpu, c.busy_pct, c.steal_pct
            )
        })
        .collect();
    writeln!(
        out,
        "  host CPUs      {}; others used {:.3} s",
        cpus.join(", "),
        r.foreign_cpu_us as f64 / MICROS_PER_SEC as f64
    )?;
    if let Some(s) = &r.server {
        writeln!(
            out,
            "  server CPU     pid {}: {:.3} s = {} µs/answered",
            s.pid,
            s.cpu_us as f64 / MICROS_PER_SEC as f64,
            fmt_opt(s.cpu_us_per_answered)
        )?;
        writeln!(
            out,
            "  server accept  {:.3} s CPU over the connect phase = {} µs/login ({} logins/s per server core)",
            s.connect_cpu_us as f64 / MICROS_PER_SEC as f64,
            fmt_opt(s.connect_cpu_us_per_login),
            s.connect_cpu_us_per_login
                .filter(|us| *us > 0.0)
                .map_or_else(
                    || "-".to_string(),
                    |us| format!("{:.0}", MICROS_PER_SEC as f64 / us)
                )
        )?;
        writeln!(
            out,
            "  server RSS     before {:.1} MiB  after {:.1} MiB  = {:.0} B/conn",
            s.rss_before_bytes as f64 / MIB,
            s.rss_after_bytes as f64 / MIB,
            s.rss_bytes_per_conn
        )?;
    }
    Ok(())
}

/// Bytes in a mebibyte, for RSS shown in MiB.
const MIB: f64 = 1024.0 * 1024.0;

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_at_warmup_and_window_ends() {
        use crate::flood::schedule::Phase;
        let plan = Plan::new(2, vec![Phase { qps: 1, secs: 3 }]);
        let phases: Vec<&str> = (0..6).map(|s| phase_of(s, &plan)).collect();
        assert_eq!(
            phases,
            ["warmup", "warmup", "window", "window", "window", "drain"]
        );
        let no_warmup = Plan::new(0, vec![Phase { qps: 1, secs: 1 }]);
        assert_eq!(phase_of(0, &no_warmup), "window");
    }

    #[test]
    fn per_refuses_a_zero_denominator() {
        assert_eq!(per(10.0, 0), None);
        assert_eq!(per(10.0, 4), Some(2.5));
    }

    #[test]
    fn window_counters_are_flattened_into_the_json() {
        let w = WindowReport {
            secs: 1.0,
            sampled_secs: 1.0,
            scheduled: 5,
            counters: Counters {
                sent: 5,
                none: 4,
                ..Counters::default()
            },
            sent_per_sec: 5.0,
            answered_per_sec: 4.0,
            lost: 1,
            lost_in_warmup: 0,
            claims_lost: 0,
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["sent"], 5);
        assert_eq!(v["none"], 4);
        assert_eq!(v["lost"], 1);
    }
}
