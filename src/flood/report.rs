//! The flooder's results: one serde structure, printed as a table or written
//! as JSON.
//!
//! Owns: the result schema that `tools/bench_server.py` and later tooling
//! read, the arithmetic that turns raw samples into per-request figures, and
//! the human-readable summary. Must not: measure anything itself; it only
//! formats what the coordinator collected.

use std::fmt::Write as _;

use serde::Serialize;

use super::stats::{Counters, Percentiles};

/// Version of the JSON layout below; bump it when a field changes meaning or
/// goes away (adding a field does not need it).
pub const SCHEMA_VERSION: u32 = 1;

/// Everything one flooder run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
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
    /// value means the figures were disturbed. Only a rough signal: the
    /// per-CPU figures are sampled at clock ticks while the processes' are
    /// exact run time, and a process that wakes in step with the tick is
    /// under-sampled, so a few percent of a core either way (even negative)
    /// is noise. Without `--server-pid` it includes the server.
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
    /// The server address, resolved.
    pub server: String,
    /// Users (connections).
    pub users: u32,
    /// The first user id.
    pub first_user: u32,
    /// Flooder threads.
    pub threads: usize,
    /// Target shakes per second, all threads together.
    pub rate_per_sec: u64,
    /// Measurement window length.
    pub duration_secs: u64,
    /// Shaking before the window, not recorded.
    pub warmup_secs: u64,
    /// Target connects per second; 0 = as fast as possible.
    pub connect_rate_per_sec: u64,
    /// Source addresses, round-robin.
    pub binds: Vec<String>,
    /// Wait after the last login before sampling the server's RSS.
    pub settle_secs: u64,
    /// The server process sampled, if any.
    pub server_pid: Option<u32>,
}

/// The connect + login phase.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectReport {
    /// Users that logged in (all of them, or the run would have failed).
    pub logged_in: u64,
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
    /// Requests the schedule put inside the window: `rate × duration`.
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
}

/// The flooder's own CPU over the window.
#[derive(Clone, Debug, Serialize)]
pub struct FlooderReport {
    /// User + system CPU of the whole flooder process over the window.
    pub cpu_us: u64,
    /// `cpu_us / window sent`; None when nothing was sent.
    pub cpu_us_per_request: Option<f64>,
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
    /// Share of the window it spent running anything (user, system, irq,
    /// softirq), in percent.
    pub busy_pct: f64,
    /// Share of the window the hypervisor took from it, in percent.
    pub steal_pct: f64,
}

/// One second of the shaking phase.
#[derive(Clone, Debug, Serialize)]
pub struct SecondReport {
    /// Seconds since the shaking start.
    pub second: u64,
    /// `warmup`, `window` or `drain`.
    pub phase: &'static str,
    /// That second's counts, all threads summed.
    #[serde(flatten)]
    pub counters: Counters,
}

/// Which phase second `second` of the shaking belongs to.
pub fn phase_of(second: u64, warmup_secs: u64, duration_secs: u64) -> &'static str {
    if second < warmup_secs {
        "warmup"
    } else if second < warmup_secs + duration_secs {
        "window"
    } else {
        "drain"
    }
}

/// `numerator / denominator`, or None when the denominator is 0.
pub fn per(numerator: f64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator / denominator as f64)
}

/// One progress line for a second of shaking.
pub fn progress_line(s: &SecondReport) -> String {
    let c = &s.counters;
    format!(
        "[{:>4}s {:<6}] sent {:>8}  answered {:>8}  got {:>7}  none {:>8}  overload {:>7}  errors {}",
        s.second,
        s.phase,
        c.sent,
        c.answered,
        c.got,
        c.none,
        c.overload,
        c.errors()
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
    let c = &r.config;
    let w = &r.window;
    writeln!(
        out,
        "hongbao flood: {} users on {}, {} thread(s), {} shakes/s for {} s after {} s warmup",
        c.users, c.server, c.threads, c.rate_per_sec, c.duration_secs, c.warmup_secs
    )?;
    writeln!(
        out,
        "  connect+login  {} users in {:.3} s = {:.0} logins/s",
        r.connect.logged_in, r.connect.secs, r.connect.logins_per_sec
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
    writeln!(
        out,
        "  answers        got {}  none {}  gone {}  overload {}  pushes {}  other results {}",
        k.got, k.none, k.gone, k.overload, k.pushes, k.other_results
    )?;
    writeln!(
        out,
        "  errors         unexpected frames {}  bad frames {}  conn errors {}  unsent {}  lost {} (+{} in warmup)",
        k.unexpected_frames, k.bad_frames, k.conn_errors, k.unsent, w.lost, w.lost_in_warmup
    )?;
    let b = &r.before_start;
    if b.errors() > 0 {
        writeln!(
            out,
            "  before start   conn errors {}  bad frames {}  unexpected frames {}",
            b.conn_errors, b.bad_frames, b.unexpected_frames
        )?;
    }
    writeln!(
        out,
        "  latency µs     {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "max", "mean", "count"
    )?;
    for (name, p) in [
        ("corrected", &r.latency_corrected),
        ("service", &r.latency_service),
        ("send lag", &r.send_lag),
    ] {
        writeln!(
            out,
            "    {:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
            name, p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us, p.mean_us, p.count
        )?;
    }
    writeln!(
        out,
        "  flooder CPU    {:.3} s = {} µs/request",
        r.flooder.cpu_us as f64 / 1e6,
        fmt_opt(r.flooder.cpu_us_per_request)
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
        r.foreign_cpu_us as f64 / 1e6
    )?;
    if let Some(s) = &r.server {
        writeln!(
            out,
            "  server CPU     pid {}: {:.3} s = {} µs/answered",
            s.pid,
            s.cpu_us as f64 / 1e6,
            fmt_opt(s.cpu_us_per_answered)
        )?;
        writeln!(
            out,
            "  server accept  {:.3} s CPU over the connect phase = {} µs/login ({} logins/s per server core)",
            s.connect_cpu_us as f64 / 1e6,
            fmt_opt(s.connect_cpu_us_per_login),
            s.connect_cpu_us_per_login
                .filter(|us| *us > 0.0)
                .map_or_else(|| "-".to_string(), |us| format!("{:.0}", 1e6 / us))
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

const MIB: f64 = 1024.0 * 1024.0;

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_at_warmup_and_window_ends() {
        let phases: Vec<&str> = (0..6).map(|s| phase_of(s, 2, 3)).collect();
        assert_eq!(
            phases,
            ["warmup", "warmup", "window", "window", "window", "drain"]
        );
        assert_eq!(phase_of(0, 0, 1), "window");
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
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["sent"], 5);
        assert_eq!(v["none"], 4);
        assert_eq!(v["lost"], 1);
    }
}
