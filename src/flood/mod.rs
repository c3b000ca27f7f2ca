//! `hongbao flood`: an open-loop load generator for the v1 wire protocol.
//!
//! Owns: the command-line options, and the coordinator that runs on the
//! calling thread: it starts one worker thread per `--threads`, gathers their
//! connect-phase reports, samples the server's RSS and both processes' CPU at
//! the measurement window's exact edges, prints progress, and merges the
//! threads' results into one [`report::Report`]. Must not: touch a socket or
//! sit on the request path; the workers (`worker.rs`) own every connection and
//! talk to the coordinator only through channels, once a second and at phase
//! ends.
//!
//! A run, every phase bounded in time:
//! 1. connect + login: each user opens a nonblocking connection, sends
//!    LoginRequest and waits for LoginResponse result 0; the phase fails
//!    unless every user logs in within `--login-timeout`;
//! 2. settle: wait `--settle-secs`, then sample the server's RSS;
//! 3. shake: request `k` is due at `start + k / rate`, sent whatever the
//!    answers do (open loop); `--warmup` seconds unrecorded, then the
//!    `--duration` window; then up to [`DRAIN`] for the last answers.

mod procfs;
pub mod report;
pub mod schedule;
pub mod stats;
mod timer;
mod worker;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::{Poll, Waker};

pub use report::Report;
use report::{
    ConnectReport, CpuReport, FlooderReport, RunConfig, SecondReport, ServerReport, WindowReport,
};
use stats::{Counters, Latency, Percentiles};
use worker::{Control, ToMain, WorkerConfig};

/// How long the threads wait for answers after the last request is due.
/// Long enough for any answer a healthy server still owes, short enough not
/// to stretch every run; anything later is counted as lost.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Time from the go signal to the schedule's start, so that every thread has
/// been woken and is polling before its first request falls due.
const GO_LEAD: Duration = Duration::from_millis(20);

/// Extra time the coordinator grants on top of the phases' own bounds before
/// it declares the run hung: thread start-up, joins, late wake-ups.
const DEADLINE_SLACK: Duration = Duration::from_secs(10);

/// File descriptors the flooder needs beyond one per user: stdio, each
/// thread's epoll and waker, the JSON file, /proc reads.
const FDS_SPARE: u64 = 64;

/// Flooder options.
#[derive(Clone, Debug, clap::Args)]
pub struct FloodArgs {
    /// Server to flood, HOST:PORT. Default: port 1025 on loopback, where the
    /// original server and ours listen by default.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1025")]
    pub server: String,

    /// Users, one connection each. Default 10,000: the population of the
    /// per-core benchmarks, under one process's 20,000 open files and one
    /// source address's ~28,000 ephemeral ports.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub users: u32,

    /// The first user id; users are `first-user ..` consecutively. Default 1,
    /// because user 0 is what the original client puts in claims; several
    /// flooders can split a population by giving disjoint ranges.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub first_user: u32,

    /// Worker threads, each with its own poll and share of the users and
    /// rate. Default 1: the per-core benchmarks pin the flooder to one core.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,

    /// Total shakes per second, open loop. 0 = connect and log in only, then
    /// hold the connections idle (memory runs). Default 30,000: the lowest
    /// benchmark rate, far below one server core's capacity, so a bare run
    /// measures latency rather than saturation.
    #[arg(long, value_name = "R", default_value_t = 30_000)]
    pub rate: u64,

    /// Measurement window in seconds, after the warmup. Default 10: long
    /// against the 10 ms clock tick of the server CPU sample (<1 % error).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub duration: u64,

    /// Seconds of shaking before the window, not recorded. Default 2: enough
    /// for caches, buffers and in-flight queues to reach their working size.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    pub warmup: u64,

    /// Total connects per second. Default 0 = as fast as the server takes
    /// them (still at most 512 handshakes in flight per thread, so the
    /// server's accept backlog never overflows).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub connect_rate: u64,

    /// Source addresses to connect from, round-robin over users, e.g.
    /// 127.0.0.2,127.0.0.3: each gives its own ~28,000 ephemeral ports, so
    /// one host can exceed 64k connections. Default: the kernel's choice.
    #[arg(long, value_name = "IP[,IP...]", value_delimiter = ',')]
    pub bind: Vec<IpAddr>,

    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Server process to measure: its CPU (utime + stime from
    /// /proc/PID/stat) at the window's edges, its VmRSS before the first
    /// connect and `--settle-secs` after the last login.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Seconds to wait after the last login before sampling the server's
    /// RSS and starting to shake. Default 2: lets the server finish
    /// accept-time work and the allocator settle.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    pub settle_secs: u64,

    /// Seconds the connect + login phase may take before the run fails.
    /// Default 30: 10,000 users log in within a second on loopback, so 30 s
    /// means something is wrong, not slow.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub login_timeout: u64,

    /// Shortest wait between two sends of a thread, in microseconds: requests
    /// falling due within it leave together. Smaller is smoother pacing and
    /// less send lag, at more wake-ups (CPU) for both flooder and server.
    #[arg(long, default_value_t = 50, value_name = "US")]
    pub send_interval_us: u64,

    /// Never sleep while shaking: poll without blocking between sends. For a
    /// load core of its own on a virtual machine, where a sleeping vCPU can
    /// take milliseconds to wake and that delay would be charged to the
    /// server. The flooder then uses its whole core, so its CPU per request
    /// says nothing.
    #[arg(long)]
    pub spin: bool,

    /// No per-second progress lines; only the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the flooder: connect, log in, shake, report.
pub fn run(args: &FloodArgs) -> anyhow::Result<()> {
    let server = resolve(&args.server)?;
    validate(args)?;
    ensure_open_files(u64::from(args.users) + FDS_SPARE)?;
    warn_if_ports_scarce(args, server);

    let rss_before = match args.server_pid {
        Some(pid) => Some(
            procfs::process_rss_bytes(pid)
                .context("sampling the server's RSS before connecting")?,
        ),
        None => None,
    };

    // The server's CPU over the connect phase: its cost per accepted and
    // logged-in connection, which bounds its accept rate whatever the
    // flooder's own connect speed.
    let server_cpu = |when: &str| -> anyhow::Result<Option<u64>> {
        args.server_pid
            .map(|pid| {
                procfs::process_cpu_us(pid)
                    .with_context(|| format!("sampling the server's CPU {when} connecting"))
            })
            .transpose()
    };
    let connect_cpu_before = server_cpu("before")?;
    let mut coordinator = Coordinator::spawn(args, server)?;
    let login = coordinator.connect_phase()?;
    let connect_cpu = connect_cpu_before.zip(server_cpu("after")?);

    coordinator.wait(Instant::now() + Duration::from_secs(args.settle_secs))?;
    let rss_after = match args.server_pid {
        Some(pid) => {
            Some(procfs::process_rss_bytes(pid).context("sampling the server's RSS after login")?)
        }
        None => None,
    };

    let shaking = coordinator.shake_phase()?;
    coordinator.join();

    let report = build_report(
        args,
        server,
        &login,
        rss_before.zip(rss_after),
        connect_cpu,
        &shaking,
    );
    print!("{}", report::summary(&report));
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("resolving --server {server}"))?
        .next()
        .with_context(|| format!("--server {server} resolves to no address"))
}

fn validate(args: &FloodArgs) -> anyhow::Result<()> {
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    if args.threads == 0 || args.threads as u64 > u64::from(args.users) {
        bail!("--threads must be between 1 and --users ({})", args.users);
    }
    if args.first_user.checked_add(args.users - 1).is_none() {
        bail!(
            "--first-user {} + --users {} overflows the wire's u32 user id",
            args.first_user,
            args.users
        );
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    // A day bounds every run (runs must stop by themselves) and keeps the
    // nanosecond and Instant arithmetic far from overflow.
    const DAY_SECS: u64 = 86_400;
    for (name, secs) in [
        ("--duration", args.duration),
        ("--warmup", args.warmup),
        ("--settle-secs", args.settle_secs),
        ("--login-timeout", args.login_timeout),
    ] {
        if secs > DAY_SECS {
            bail!("{name} {secs} is more than a day ({DAY_SECS} s)");
        }
    }
    if args.send_interval_us > 1_000_000 {
        bail!("--send-interval-us must be at most 1,000,000 (one second)");
    }
    Ok(())
}

/// Raises the soft open-files limit to what the run needs, up to the hard
/// limit, and fails early with the numbers when even that is too low, rather
/// than failing thousands of connects later.
fn ensure_open_files(needed: u64) -> anyhow::Result<()> {
    // SAFETY: an all-zero rlimit is a valid value; getrlimit fills it in.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: RLIMIT_NOFILE is a valid resource; `limit` is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let soft = limit.rlim_cur as u64;
    let hard = limit.rlim_max as u64;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "this run needs about {needed} open files (one per user plus {FDS_SPARE}), but the hard limit \
             (ulimit -Hn) is {hard}: use fewer --users per process or raise the limit"
        );
    }
    limit.rlim_cur = needed as libc::rlim_t;
    // SAFETY: `limit` is a valid rlimit with cur <= max.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("raising the open-files limit from {soft} to {needed}"));
    }
    Ok(())
}

/// Warns when one source address would carry more connections to the server
/// than half the ephemeral port range. Linux's `connect()` tries ports of one
/// parity first and scans the whole range once those run out, so past that
/// point connects slow to about a thousand a second (measured here: 18,000
/// users from one address took 4.4 s, from two 0.5 s) and the connect rate
/// measures the port search, not the server.
fn warn_if_ports_scarce(args: &FloodArgs, server: SocketAddr) {
    let Some(ports) = ephemeral_port_count() else {
        return;
    };
    let per_address = u64::from(args.users).div_ceil(args.bind.len().max(1) as u64);
    if per_address > ports / 2 {
        let addresses = u64::from(args.users).div_ceil(ports / 2).max(2);
        let example = if server.ip().is_loopback() {
            let loopback: Vec<String> = (0..addresses)
                .map(|i| format!("127.0.0.{}", i + 2))
                .collect();
            format!("e.g. --bind {}", loopback.join(","))
        } else {
            format!("--bind with {addresses} or more local addresses")
        };
        eprintln!(
            "warning: {per_address} connections per source address to {server} exceed half of the {ports} \
             ephemeral ports; connects will slow down past ~{}. Spread them with {example}",
            ports / 2
        );
    }
}

/// The size of `net.ipv4.ip_local_port_range`, if readable.
fn ephemeral_port_count() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_ascii_whitespace().map(str::parse::<u64>);
    let (Some(Ok(low)), Some(Ok(high))) = (parts.next(), parts.next()) else {
        return None;
    };
    Some(high.saturating_sub(low) + 1)
}

/// The coordinator's handle on one worker thread.
struct WorkerHandle {
    control: Sender<Control>,
    waker: Arc<Waker>,
    join: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn tell(&self, message: Control) {
        // Failures mean the thread has already gone, which is what we want.
        let _ = self.control.send(message);
        let _ = self.waker.wake();
    }
}

/// The connect phase as a whole.
struct LoginOutcome {
    logged_in: u64,
    secs: f64,
}

/// What the shaking phase produced.
struct Shaking {
    /// Edge samples at window start and end.
    edges: [EdgeSample; 2],
    per_second: Vec<Counters>,
    before_start: Counters,
    latency: Latency,
    lost_in_window: u64,
    lost_outside_window: u64,
}

/// CPU counters read at one edge of the window.
#[derive(Clone, Debug)]
struct EdgeSample {
    at: Instant,
    self_cpu_us: u64,
    server_cpu_us: Option<u64>,
    cpus: Vec<procfs::CpuTimes>,
}

struct Coordinator {
    args: FloodArgs,
    workers: Vec<WorkerHandle>,
    from_workers: Receiver<ToMain>,
    login_deadline: Instant,
    hard_deadline: Instant,
}

impl Coordinator {
    fn spawn(args: &FloodArgs, server: SocketAddr) -> anyhow::Result<Coordinator> {
        let (to_main, from_workers) = crossbeam_channel::unbounded();
        let binds: Arc<[IpAddr]> = args.bind.clone().into();
        let login_timeout = Duration::from_secs(args.login_timeout);
        let connect_start = Instant::now();
        let login_deadline = connect_start + login_timeout;
        let hard_deadline = login_deadline
            + Duration::from_secs(args.settle_secs + args.warmup + args.duration)
            + GO_LEAD
            + DRAIN
            + DEADLINE_SLACK;
        let mut workers = Vec::with_capacity(args.threads);
        for index in 0..args.threads {
            let users = schedule::split(u64::from(args.users), args.threads, index);
            let poll = Poll::new().context("creating a poll (epoll) instance")?;
            let waker = Arc::new(
                Waker::new(poll.registry(), worker::WAKER).context("creating a poll waker")?,
            );
            let (control, control_rx) = crossbeam_channel::bounded(4);
            let cfg = WorkerConfig {
                index,
                threads: args.threads,
                server,
                binds: binds.clone(),
                first_user: args.first_user + users.start as u32,
                users: (users.end - users.start) as u32,
                global_offset: users.start,
                rate_per_sec: args.rate,
                connect_rate_per_sec: args.connect_rate,
                warmup_ns: args.warmup * schedule::NANOS_PER_SEC,
                window_ns: args.duration * schedule::NANOS_PER_SEC,
                drain_ns: DRAIN.as_nanos() as u64,
                connect_start,
                login_deadline,
                hard_deadline,
                send_interval: Duration::from_micros(args.send_interval_us),
                spin: args.spin,
            };
            let to_main = to_main.clone();
            let join = std::thread::Builder::new()
                .name(format!("flood-{index}"))
                .spawn(move || worker::run(cfg, poll, control_rx, to_main))
                .context("spawning a flooder thread")?;
            workers.push(WorkerHandle {
                control,
                waker,
                join: Some(join),
            });
        }
        Ok(Coordinator {
            args: args.clone(),
            workers,
            from_workers,
            login_deadline,
            hard_deadline,
        })
    }

    /// The next message from a worker, or None at `deadline`. A worker's
    /// failure fails the run here.
    fn recv_until(&self, deadline: Instant) -> anyhow::Result<Option<ToMain>> {
        let deadline = deadline.min(self.hard_deadline);
        match self.from_workers.recv_deadline(deadline) {
            Ok(ToMain::Failed { thread, error }) => {
                bail!("flooder thread {thread} failed: {error}")
            }
            Ok(message) => Ok(Some(message)),
            Err(RecvTimeoutError::Timeout) => {
                if Instant::now() >= self.hard_deadline {
                    bail!("the run passed its hard deadline; a flooder thread is stuck");
                }
                Ok(None)
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("every flooder thread exited unexpectedly")
            }
        }
    }

    /// Waits until `until`, still failing at once if a worker fails.
    fn wait(&self, until: Instant) -> anyhow::Result<()> {
        while Instant::now() < until {
            self.recv_until(until)?;
        }
        Ok(())
    }

    /// Gathers every thread's connect-phase report, printing progress once a
    /// second; fails unless every user logged in.
    fn connect_phase(&mut self) -> anyhow::Result<LoginOutcome> {
        let threads = self.workers.len();
        let mut latest = vec![worker::ConnectProgress::default(); threads];
        // The last second each thread reported; a finished thread counts as
        // having reported every second.
        let mut reached = vec![0u64; threads];
        let mut printed = 0;
        let mut summaries: Vec<Option<worker::LoginSummary>> = (0..threads).map(|_| None).collect();
        // Threads report by the login deadline themselves; the margin covers
        // a report sent just then.
        let give_up = self.login_deadline + Duration::from_secs(5);
        while summaries.iter().any(Option::is_none) {
            match self.recv_until(give_up)? {
                Some(ToMain::ConnectProgress {
                    thread,
                    second,
                    progress,
                }) => {
                    latest[thread] = progress;
                    reached[thread] = second;
                }
                Some(ToMain::LoggedIn { thread, summary }) => {
                    latest[thread] = summary.progress;
                    reached[thread] = u64::MAX;
                    summaries[thread] = Some(summary);
                }
                Some(_) => {}
                None => bail!(
                    "no connect-phase report from some flooder threads within {} s",
                    self.args.login_timeout + 5
                ),
            }
            let all_reached = reached.iter().copied().min().unwrap_or(0);
            if all_reached != u64::MAX && all_reached > printed {
                printed = all_reached;
                if !self.args.quiet {
                    let mut sum = worker::ConnectProgress::default();
                    latest.iter().for_each(|p| sum.add(p));
                    eprintln!(
                        "[connect {printed:>3}s] opened {:>7}  connected {:>7}  logged in {:>7}  failed {}",
                        sum.opened, sum.connected, sum.logged_in, sum.failed
                    );
                }
            }
        }
        let summaries: Vec<worker::LoginSummary> = summaries.into_iter().flatten().collect();
        let mut total = worker::ConnectProgress::default();
        summaries.iter().for_each(|s| total.add(&s.progress));
        let users = u64::from(self.args.users);
        if total.logged_in < users {
            let first_error = summaries
                .iter()
                .find_map(|s| s.first_error.clone())
                .unwrap_or_else(|| "none reported".to_string());
            let how = if summaries.iter().any(|s| s.timed_out) {
                format!("did not complete within {} s", self.args.login_timeout)
            } else {
                "failed".to_string()
            };
            bail!(
                "the connect/login phase {how}: {} of {users} users logged in ({} connected, {} failed, {} never \
                 started); first error: {first_error}",
                total.logged_in,
                total.connected,
                total.failed,
                users - total.opened
            );
        }
        let first = summaries.iter().filter_map(|s| s.first_connect).min();
        let last = summaries.iter().filter_map(|s| s.last_login).max();
        let secs = match (first, last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        Ok(LoginOutcome {
            logged_in: total.logged_in,
            secs,
        })
    }

    /// Starts the schedule, samples CPU at the window's edges, prints a line
    /// per second, and collects every thread's results.
    fn shake_phase(&mut self) -> anyhow::Result<Shaking> {
        let threads = self.workers.len();
        let start = Instant::now() + GO_LEAD;
        for w in &self.workers {
            w.tell(Control::Go(start));
        }
        let window_start = start + Duration::from_secs(self.args.warmup);
        let window_end = window_start + Duration::from_secs(self.args.duration);
        let mut edges: Vec<EdgeSample> = Vec::with_capacity(2);
        let mut seconds: Vec<(Counters, usize)> = Vec::new();
        let mut printed = 0;
        let mut results: Vec<worker::ThreadResult> = Vec::with_capacity(threads);
        while results.len() < threads {
            let next_edge = [window_start, window_end].get(edges.len()).copied();
            let message = self.recv_until(next_edge.unwrap_or(self.hard_deadline))?;
            if next_edge.is_some_and(|edge| Instant::now() >= edge) {
                edges.push(self.sample_edge().with_context(|| {
                    let which = if edges.is_empty() { "start" } else { "end" };
                    format!("sampling CPU at the window's {which}")
                })?);
            }
            match message {
                Some(ToMain::Second {
                    second, counters, ..
                }) => {
                    let at = second as usize;
                    if seconds.len() <= at {
                        seconds.resize(at + 1, (Counters::default(), 0));
                    }
                    seconds[at].0.add(&counters);
                    seconds[at].1 += 1;
                    while printed < seconds.len() && seconds[printed].1 == threads {
                        self.print_second(printed as u64, &seconds[printed].0);
                        printed += 1;
                    }
                }
                Some(ToMain::Done(result)) => results.push(*result),
                Some(_) | None => {}
            }
        }
        // Threads that ended early (drain done) leave trailing seconds that
        // not every thread reported; show them as they are.
        for (second, (counters, _)) in seconds.iter().enumerate().skip(printed) {
            self.print_second(second as u64, counters);
        }
        let Ok(edges) = <[EdgeSample; 2]>::try_from(edges) else {
            bail!("the threads finished before the window ended");
        };
        let mut shaking = Shaking {
            edges,
            per_second: Vec::new(),
            before_start: Counters::default(),
            latency: Latency::new(),
            lost_in_window: 0,
            lost_outside_window: 0,
        };
        results.sort_by_key(|r| r.thread);
        for r in &results {
            if shaking.per_second.len() < r.per_second.len() {
                shaking
                    .per_second
                    .resize(r.per_second.len(), Counters::default());
            }
            for (sum, c) in shaking.per_second.iter_mut().zip(&r.per_second) {
                sum.add(c);
            }
            shaking.before_start.add(&r.before_start);
            shaking.latency.add(&r.latency);
            shaking.lost_in_window += r.lost_in_window;
            shaking.lost_outside_window += r.lost_outside_window;
        }
        Ok(shaking)
    }

    fn print_second(&self, second: u64, counters: &Counters) {
        if self.args.quiet {
            return;
        }
        let line = report::progress_line(&SecondReport {
            second,
            phase: report::phase_of(second, self.args.warmup, self.args.duration),
            counters: *counters,
        });
        eprintln!("{line}");
    }

    fn sample_edge(&self) -> anyhow::Result<EdgeSample> {
        let at = Instant::now();
        let server_cpu_us = self
            .args
            .server_pid
            .map(procfs::process_cpu_us)
            .transpose()?;
        let self_cpu_us = procfs::self_cpu_us()?;
        let cpus = procfs::cpu_times()?;
        Ok(EdgeSample {
            at,
            self_cpu_us,
            server_cpu_us,
            cpus,
        })
    }

    /// Waits for the threads, which have reported everything and are only
    /// closing their sockets.
    fn join(&mut self) {
        for w in &mut self.workers {
            if let Some(join) = w.join.take() {
                let _ = join.join();
            }
        }
    }
}

impl Drop for Coordinator {
    /// On any early return, tell the threads to stop rather than leave them
    /// holding connections until the process exits.
    fn drop(&mut self) {
        for w in &self.workers {
            if w.join.is_some() {
                w.tell(Control::Stop);
            }
        }
    }
}

fn build_report(
    args: &FloodArgs,
    server: SocketAddr,
    login: &LoginOutcome,
    rss: Option<(u64, u64)>,
    connect_cpu: Option<(u64, u64)>,
    shaking: &Shaking,
) -> Report {
    let window_range = args.warmup..args.warmup + args.duration;
    let mut window = Counters::default();
    let per_second: Vec<SecondReport> = shaking
        .per_second
        .iter()
        .enumerate()
        .map(|(second, counters)| {
            let second = second as u64;
            if window_range.contains(&second) {
                window.add(counters);
            }
            SecondReport {
                second,
                phase: report::phase_of(second, args.warmup, args.duration),
                counters: *counters,
            }
        })
        .collect();
    let [start, end] = &shaking.edges;
    let secs = args.duration as f64;
    let sampled_secs = end.at.saturating_duration_since(start.at).as_secs_f64();
    let self_cpu_us = end.self_cpu_us.saturating_sub(start.self_cpu_us);
    let server_cpu_us = match (start.server_cpu_us, end.server_cpu_us) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => 0,
    };
    let mut busy_us_total = 0;
    let cpus: Vec<CpuReport> = start
        .cpus
        .iter()
        .filter_map(|a| {
            let b = end.cpus.iter().find(|b| b.cpu == a.cpu)?;
            let busy_us = b.busy_us.saturating_sub(a.busy_us);
            busy_us_total += busy_us;
            let pct = |us: u64| us as f64 / 1e4 / sampled_secs.max(1e-9);
            Some(CpuReport {
                cpu: a.cpu,
                busy_pct: pct(busy_us),
                steal_pct: pct(b.steal_us.saturating_sub(a.steal_us)),
            })
        })
        .collect();
    let server_report = args.server_pid.map(|pid| {
        let cpu_us = server_cpu_us;
        let (rss_before, rss_after) = rss.unwrap_or_default();
        let connect_cpu_us = connect_cpu.map_or(0, |(a, b)| b.saturating_sub(a));
        ServerReport {
            pid,
            cpu_us,
            cpu_us_per_answered: report::per(cpu_us as f64, window.answered),
            connect_cpu_us,
            connect_cpu_us_per_login: report::per(connect_cpu_us as f64, login.logged_in),
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
            rss_bytes_per_conn: (rss_after as f64 - rss_before as f64)
                / login.logged_in.max(1) as f64,
        }
    });
    Report {
        schema: report::SCHEMA_VERSION,
        config: RunConfig {
            server: server.to_string(),
            users: args.users,
            first_user: args.first_user,
            threads: args.threads,
            rate_per_sec: args.rate,
            duration_secs: args.duration,
            warmup_secs: args.warmup,
            connect_rate_per_sec: args.connect_rate,
            binds: args.bind.iter().map(ToString::to_string).collect(),
            settle_secs: args.settle_secs,
            server_pid: args.server_pid,
        },
        connect: ConnectReport {
            logged_in: login.logged_in,
            secs: login.secs,
            logins_per_sec: if login.secs > 0.0 {
                login.logged_in as f64 / login.secs
            } else {
                0.0
            },
        },
        window: WindowReport {
            secs,
            sampled_secs,
            scheduled: args.rate * args.duration,
            counters: window,
            sent_per_sec: window.sent as f64 / secs,
            answered_per_sec: window.answered as f64 / secs,
            lost: shaking.lost_in_window,
            lost_in_warmup: shaking.lost_outside_window,
        },
        latency_corrected: Percentiles::of(&shaking.latency.corrected),
        latency_service: Percentiles::of(&shaking.latency.service),
        send_lag: Percentiles::of(&shaking.latency.send_lag),
        flooder: FlooderReport {
            cpu_us: self_cpu_us,
            cpu_us_per_request: report::per(self_cpu_us as f64, window.sent),
        },
        server: server_report,
        cpus,
        foreign_cpu_us: busy_us_total as i64 - self_cpu_us as i64 - server_cpu_us as i64,
        before_start: shaking.before_start,
        per_second,
    }
}
