//! The flooder's command line: options, their parsers, and their checks.
//!
//! Owns: [`FloodArgs`] and what turns its strings into values (source address
//! ranges, `--phases` scripts) and the checks that refuse a run before any
//! connection is opened. Must not: open sockets or read clocks.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::bail;

use super::schedule::{Phase, Plan};

/// Most shakes per second one flooder process may be asked for: far past
/// what a machine sends, low enough that a typo cannot ask for 2^64.
pub const QPS_MAX: u64 = 10_000_000;

/// Most source addresses one `--bind` may name: a /16's worth, far more than
/// any machine needs (each gives ~28,000 connections per server address).
const BIND_ADDRESSES_MAX: usize = 65_536;

/// Users one process holds when neither `--max` nor `--users` says: the
/// per-core benchmarks' population, under one process's 20,000 open files and
/// one source address's ports.
const USERS_DEFAULT: u32 = 10_000;

/// User ids the wire can carry: its user field is 32 bits.
const USER_IDS_MAX: u64 = 1 << 32;

/// The longest `--send-interval-us`: a second, past which a thread would sleep
/// through whole seconds of its schedule.
const SEND_INTERVAL_US_MAX: u64 = crate::clock::MICROS_PER_SEC;

/// A day bounds every run (runs must stop by themselves) and keeps the
/// nanosecond arithmetic far from overflow.
const DAY_SECS: u64 = 86_400;

/// Flooder options.
#[derive(Clone, Debug, clap::Args)]
pub struct FloodArgs {
    /// Servers to flood, HOST:PORT, repeated or comma-separated; user `u`
    /// goes to server `u mod count` first. After its connection is lost
    /// (closed, reset, refused) or an attempt fails, its next attempt (after
    /// the usual backoff) goes to the next server in the list, so the users
    /// of a node that dies carry on on the others; its claims still
    /// unanswered (4 at most) are sent again after that login. Default:
    /// port 1025 on loopback, where the original server and ours listen by
    /// default.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_SERVER",
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        default_value = "127.0.0.1:1025"
    )]
    pub server: Vec<String>,

    /// The first of this process's user ids. Default 0, as the original.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_MIN",
        value_name = "ID",
        default_value_t = 0
    )]
    pub min: u32,

    /// The last of this process's user ids (inclusive). Default: `--min` +
    /// 9,999, i.e. 10,000 users: the per-core benchmarks' population, under
    /// one process's 20,000 open files and one source address's ports.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_MAX",
        value_name = "ID",
        conflicts_with = "users"
    )]
    pub max: Option<u32>,

    /// Shorthand for `--max` = `--min` + N − 1.
    #[arg(long, env = "HONGBAO_FLOOD_USERS", value_name = "N")]
    pub users: Option<u32>,

    /// Users in the whole experiment, over every flooder process: the slot
    /// rule's `totalUsers`. Every process of one experiment must get the same
    /// `--total` and `--qps`, and disjoint `--min..=--max` ranges. Default:
    /// `--max` + 1 (this process alone holds users 0..=max).
    #[arg(long, env = "HONGBAO_FLOOD_TOTAL", value_name = "N")]
    pub total: Option<u64>,

    /// Worker threads, each with its own poll and a contiguous share of the
    /// users. Default: the cores this process may run on.
    #[arg(long, env = "HONGBAO_FLOOD_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// Global shakes per second, summed over every flooder process of the
    /// experiment (the original's `-qps`); each process sends only its own
    /// users' part. 0 = connect and log in only, then hold the connections
    /// idle (memory runs). Default 30,000: the seed experiment's first rate.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_QPS",
        visible_alias = "rate",
        value_name = "QPS",
        default_value_t = 30_000,
        conflicts_with = "phases"
    )]
    pub qps: u64,

    /// Measurement window in seconds, after the warmup. Default 10.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_DURATION",
        value_name = "SECS",
        default_value_t = 10,
        conflicts_with = "phases"
    )]
    pub duration: u64,

    /// A scripted ramp instead of `--qps`/`--duration`: steps `QPSxSECSs`,
    /// comma-separated, e.g. `30000x60s,60000x60s`. The window is all steps.
    #[arg(long, env = "HONGBAO_FLOOD_PHASES", value_name = "QPSxSECSs[,...]")]
    pub phases: Option<String>,

    /// Seconds of shaking before the window, at the first step's rate, not
    /// recorded in the window's figures. Default 2: enough for caches,
    /// buffers and queues to reach their working size.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_WARMUP",
        value_name = "SECS",
        default_value_t = 2
    )]
    pub warmup: u64,

    /// Fire each second's users all at its start, as the original client did,
    /// instead of spreading them evenly over the second.
    #[arg(long, env = "HONGBAO_FLOOD_BURST", value_parser = clap::builder::BoolishValueParser::new())]
    pub burst: bool,

    /// Take pushes (cmd 4) as the answer to a pending shake, as the original
    /// server sent them, rather than as unsolicited (ours). Either way the
    /// pushed packet is claimed.
    #[arg(long, env = "HONGBAO_FLOOD_PUSH_ANSWERS_SHAKE", value_parser = clap::builder::BoolishValueParser::new())]
    pub push_answers_shake: bool,

    /// HTTP control: `GET /qps?qps=N` (the original client's) changes the
    /// global rate from the next second until the next `--phases` step;
    /// `GET /status` answers JSON.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_HTTP",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub http: String,

    /// Run without the HTTP control (as the server's `--no-http`).
    #[arg(long, env = "HONGBAO_FLOOD_NO_HTTP", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with = "http")]
    pub no_http: bool,

    /// Require `Authorization: Bearer TOKEN` on `GET /qps` (as the
    /// server's `--control-token-file`: the file's text, trimmed, 16..=1024
    /// visible ASCII characters, not open to other users); `/status`,
    /// `/seconds` and `/metrics` stay open.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_CONTROL_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "no_http"
    )]
    pub control_token_file: Option<std::path::PathBuf>,

    /// Register this flooder's HTTP control with a running `hongbao
    /// monitor` at this address (its `--http`), so that the monitor
    /// collects it without a `--source`. A failure is a warning.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_MONITOR",
        value_name = "ADDR",
        conflicts_with = "no_http"
    )]
    pub monitor: Option<String>,

    /// Total connects per second. Default 0 = as fast as the server takes
    /// them (still at most 512 handshakes in flight per thread, so the
    /// server's accept backlog never overflows).
    #[arg(
        long,
        env = "HONGBAO_FLOOD_CONNECT_RATE",
        value_name = "N",
        default_value_t = 0
    )]
    pub connect_rate: u64,

    /// Source addresses, round-robin over users: a list and/or IPv4 ranges,
    /// e.g. `127.0.0.2-127.0.0.60` or `127.0.0.2,127.0.0.3`. Each gives its own
    /// ~28,000 ephemeral ports per server address, so one host can hold more
    /// than 64k connections to one server port. Default: the kernel's choice.
    #[arg(long, env = "HONGBAO_FLOOD_BIND", value_name = "IP[-IP][,...]", value_delimiter = ',', value_parser = parse_bind)]
    pub bind: Vec<Vec<IpAddr>>,

    /// Write the results as JSON to this file.
    #[arg(long, env = "HONGBAO_FLOOD_JSON", value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the corrected latency of every second as an HdrHistogram
    /// interval log (V2 deflate, milliseconds), which HistogramLogProcessor
    /// and HistogramLogAnalyzer read, plus the window's percentile
    /// distribution beside it with the extension `.hgrm`.
    #[arg(long, env = "HONGBAO_FLOOD_HLOG", value_name = "FILE")]
    pub hlog: Option<PathBuf>,

    /// Append a line for every acknowledged grant (`grant USER ENVELOPE
    /// CENTS`) and claim answer (`claim USER PACKET CENTS`) to this file,
    /// for `hongbao audit --ack-log` to check against the ledger.
    #[arg(long, env = "HONGBAO_FLOOD_ACK_LOG", value_name = "FILE")]
    pub ack_log: Option<PathBuf>,

    /// Log in with signed logins (cmd 16), each signed at its connect with
    /// the newest key of this file (the server's `--auth-key-file`) and valid
    /// for an hour. Without it, logins are v1's (cmd 0).
    #[arg(long, env = "HONGBAO_FLOOD_AUTH_KEY_FILE", value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,

    /// Server process to measure: its CPU (from /proc/PID/task/*/schedstat)
    /// at the window's edges, its RSS before the first connect and
    /// `--settle-secs` after the last login.
    #[arg(long, env = "HONGBAO_FLOOD_SERVER_PID", value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Seconds to wait after the last login before sampling the server's
    /// RSS and starting to shake. Default 2.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_SETTLE_SECS",
        value_name = "SECS",
        default_value_t = 2
    )]
    pub settle_secs: u64,

    /// Seconds the connect + login phase may take. Users not in by then keep
    /// retrying in the background while the run goes on (their requests are
    /// counted unsent); the run fails only if no user logged in. Default 30.
    #[arg(
        long,
        env = "HONGBAO_FLOOD_LOGIN_TIMEOUT",
        value_name = "SECS",
        default_value_t = 30
    )]
    pub login_timeout: u64,

    /// Shortest sleep between two sends of a thread, in microseconds:
    /// requests falling due within it leave together, each up to this late
    /// (measured: send lag). Smaller is smoother pacing and less send lag,
    /// at more wake-ups: on loopback each one costs the flooder its own
    /// timer wake-up and the server's. Default 500: at 60k/s on one core
    /// the flooder then costs ~1.47 x the reference server per request
    /// (1.58 x at 200, ~1.9 x at 50) with send-lag p99 ~0.55 ms; use 50
    /// when the latency figure must carry as little of the flooder as
    /// possible (docs/BENCHMARKS.md, "The flooder's own cost")
    #[arg(
        long,
        env = "HONGBAO_FLOOD_SEND_INTERVAL_US",
        default_value_t = 500,
        value_name = "US"
    )]
    pub send_interval_us: u64,

    /// Never sleep while shaking: poll without blocking between sends. For a
    /// load core of its own on a virtual machine, where a sleeping vCPU can
    /// take long to wake. The flooder then uses its whole core, so its CPU
    /// per request says nothing.
    #[arg(long, env = "HONGBAO_FLOOD_SPIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub spin: bool,

    /// No per-second progress lines; only the summary.
    #[arg(long, env = "HONGBAO_FLOOD_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,
}

/// The options resolved and checked: what the run uses.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub servers: Vec<SocketAddr>,
    /// This process's users, inclusive.
    pub min: u32,
    pub max: u32,
    pub total: u64,
    pub threads: usize,
    pub plan: Plan,
    pub binds: Vec<IpAddr>,
    pub http: Option<SocketAddr>,
}

impl Resolved {
    /// How many users this process holds.
    pub fn users(&self) -> u64 {
        u64::from(self.max - self.min) + 1
    }
}

/// Checks the options and resolves defaults and addresses, in the order
/// the options are named here (the first bad one is the error).
pub fn resolve(args: &FloodArgs) -> anyhow::Result<Resolved> {
    let mut servers = Vec::with_capacity(args.server.len());
    for s in &args.server {
        servers.push(resolve_addr(s, "--server")?);
    }
    let (min, max, total) = resolve_users(args)?;
    let users = u64::from(max - min) + 1;
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let threads = threads.min(usize::try_from(users).unwrap_or(usize::MAX));
    let plan = resolve_plan(args)?;
    if args.send_interval_us > SEND_INTERVAL_US_MAX {
        bail!("--send-interval-us must be at most 1,000,000 (one second)");
    }
    let binds: Vec<IpAddr> = args.bind.iter().flatten().copied().collect();
    if binds.len() > BIND_ADDRESSES_MAX {
        bail!(
            "--bind names {} addresses; at most {BIND_ADDRESSES_MAX}",
            binds.len()
        );
    }
    let http = if args.no_http {
        None
    } else {
        Some(resolve_addr(&args.http, "--http")?)
    };
    Ok(Resolved {
        servers,
        min,
        max,
        total,
        threads,
        plan,
        binds,
        http,
    })
}

/// This process's users `min..=max` and the experiment's `total`, checked
/// against each other and the wire's 32-bit user ids.
fn resolve_users(args: &FloodArgs) -> anyhow::Result<(u32, u32, u64)> {
    let min = args.min;
    let max = match (args.max, args.users) {
        (Some(max), _) => max,
        (None, Some(0)) => bail!("--users must be at least 1"),
        (None, Some(n)) => min.checked_add(n - 1).ok_or_else(|| {
            anyhow::anyhow!("--min {min} + --users {n} overflows the wire's 32-bit user id")
        })?,
        (None, None) => min.saturating_add(USERS_DEFAULT - 1),
    };
    if max < min {
        bail!("--max {max} is below --min {min}");
    }
    let total = args.total.unwrap_or(u64::from(max) + 1);
    if total <= u64::from(max) {
        bail!(
            "--total {total} must be above --max {max}: user ids run 0..total over every flooder process"
        );
    }
    if total > USER_IDS_MAX {
        bail!("--total {total} exceeds the wire's 2^32 user ids");
    }
    Ok((min, max, total))
}

/// The warmup and the steps (`--phases`, or `--qps` for `--duration`), each
/// rate at most [`QPS_MAX`] and every span at most a day.
fn resolve_plan(args: &FloodArgs) -> anyhow::Result<Plan> {
    let phases = match &args.phases {
        Some(text) => parse_phases(text)?,
        None => {
            if args.duration == 0 {
                bail!("--duration must be at least 1 second");
            }
            vec![Phase {
                qps: args.qps,
                secs: args.duration,
            }]
        }
    };
    for p in &phases {
        if p.qps > QPS_MAX {
            bail!(
                "a rate of {} shakes/s is above the flooder's {QPS_MAX}",
                p.qps
            );
        }
    }
    let plan = Plan::new(args.warmup, phases);
    for (name, secs) in [
        ("the window (--duration or --phases)", plan.window_secs()),
        ("--warmup", args.warmup),
        ("--settle-secs", args.settle_secs),
        ("--login-timeout", args.login_timeout),
    ] {
        if secs > DAY_SECS {
            bail!("{name} of {secs} s is more than a day ({DAY_SECS} s)");
        }
    }
    Ok(plan)
}

fn resolve_addr(text: &str, option: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    match text.to_socket_addrs() {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => Ok(a),
            None => bail!("{option} {text} resolves to no address"),
        },
        Err(e) => bail!("{option} {text}: {e} (expected HOST:PORT)"),
    }
}

/// Parses one `--bind` item: an address, or an inclusive IPv4 range
/// `A-B` (both ends given in full).
pub fn parse_bind(text: &str) -> Result<Vec<IpAddr>, String> {
    let text = text.trim();
    let Some((a, b)) = text.split_once('-') else {
        return text
            .parse::<IpAddr>()
            .map(|ip| vec![ip])
            .map_err(|e| format!("{text:?}: {e}"));
    };
    let parse = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|e| format!("{s:?} in range {text:?}: {e} (ranges are IPv4, A-B)"))
    };
    let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
    if b < a {
        return Err(format!("range {text:?} runs backwards"));
    }
    let count = (b - a) as usize + 1;
    if count > BIND_ADDRESSES_MAX {
        return Err(format!(
            "range {text:?} has {count} addresses; at most {BIND_ADDRESSES_MAX}"
        ));
    }
    Ok((a..=b).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))).collect())
}

/// Parses `--phases`: `QPSxSECS[s]` steps, comma-separated.
pub fn parse_phases(text: &str) -> anyhow::Result<Vec<Phase>> {
    let mut phases = Vec::new();
    for step in text.split(',') {
        let step = step.trim();
        let Some((qps, secs)) = step.split_once(['x', 'X']) else {
            bail!("--phases step {step:?}: expected QPSxSECSs, e.g. 30000x60s");
        };
        let qps: u64 = qps
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|e| anyhow::anyhow!("--phases step {step:?}: rate {qps:?}: {e}"))?;
        let secs = secs.trim();
        let secs: u64 = secs
            .strip_suffix('s')
            .unwrap_or(secs)
            .parse()
            .map_err(|e| anyhow::anyhow!("--phases step {step:?}: seconds: {e}"))?;
        if secs == 0 {
            bail!("--phases step {step:?} lasts 0 seconds");
        }
        phases.push(Phase { qps, secs });
    }
    if phases.is_empty() {
        bail!("--phases is empty");
    }
    Ok(phases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_takes_addresses_and_inclusive_ranges() {
        assert_eq!(
            parse_bind("127.0.0.2").unwrap(),
            vec!["127.0.0.2".parse::<IpAddr>().unwrap()]
        );
        let r = parse_bind("127.0.0.2-127.0.0.60").unwrap();
        assert_eq!(r.len(), 59);
        assert_eq!(r[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r[58], "127.0.0.60".parse::<IpAddr>().unwrap());
        let across = parse_bind("10.0.0.255-10.0.1.1").unwrap();
        assert_eq!(across.len(), 3);
        assert!(parse_bind("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_bind("127.0.0.2-").is_err());
        assert!(parse_bind("::1-::2").is_err());
        assert!(parse_bind("10.0.0.0-10.2.0.0").is_err(), "too many");
        assert_eq!(parse_bind("::1").unwrap().len(), 1);
    }

    #[test]
    fn phases_parse_steps_and_refuse_nonsense() {
        let p = parse_phases("30000x60s, 60_000x5").unwrap();
        assert_eq!(
            p,
            vec![
                Phase {
                    qps: 30_000,
                    secs: 60
                },
                Phase {
                    qps: 60_000,
                    secs: 5
                }
            ]
        );
        for bad in ["", "30000", "x60s", "30000x0s", "30000x-1s", "abcx5s"] {
            assert!(parse_phases(bad).is_err(), "{bad:?} accepted");
        }
    }
}
