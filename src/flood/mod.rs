//! `hongbao flood`: the bundled load generator. It plays the seed
//! experiment's client machines: one connection per simulated user, the
//! original client's slot rule for who shakes when, open loop, latency
//! corrected for coordinated omission.
//!
//! Owns: the coordinator that runs on the calling thread: it starts one
//! worker thread per `--threads`, gathers their connect-phase reports,
//! starts the shaking on a wall-clock second, samples the server's RSS and
//! both processes' CPU at the window's exact edges, merges the threads'
//! seconds into progress lines, the status document and the `--hlog`
//! interval log, and their results into one [`report::Report`]. Must not:
//! touch a socket or sit on the request path; the workers (`worker.rs`) own
//! every connection and talk to the coordinator only through channels, once
//! a second and at phase ends.
//!
//! A run, every phase bounded in time:
//! 1. connect + login: each user opens a nonblocking connection, sends
//!    LoginRequest and waits for LoginResponse result 0; failures retry with
//!    backoff; the phase ends when every user is in or at `--login-timeout`
//!    (stragglers keep retrying; the run fails only if nobody logged in);
//! 2. settle: wait `--settle-secs`, then sample the server's RSS;
//! 3. shake: from the next whole Unix second, each second's users (the slot
//!    rule over `--total`) fire at their intended times whatever the answers
//!    do; `--warmup` seconds unrecorded, then the window (`--duration`, or
//!    every `--phases` step); then up to [`DRAIN`] for the last answers.

mod control;
mod options;
pub(crate) mod procfs;
pub mod published;
mod report;
pub(crate) mod schedule;
mod stats;
mod worker;

use std::fs::File;
use std::io::BufWriter;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use mio::{Poll, Waker};
use serde_json::json;

use crate::clock::NANOS_PER_SEC;
use crate::clock::unix_nanos;
use crate::stats::client::{Counters, Percentiles};
use crate::stats::recycle;
use crate::token::Keyring;
pub use options::FloodArgs;
use options::Resolved;
pub use report::Report;
use report::{
    ConnectReport, CpuReport, FlooderReport, RunConfig, SecondReport, ServerReport, WindowReport,
};
use schedule::SlotRule;
use stats::{Latency, SecondHists};
use worker::{Control, SecondOut, ToMain, WorkerConfig};

/// How long the threads wait for answers after the last request is due.
/// Long enough for any answer a healthy server still owes, short enough not
/// to stretch every run; anything later is counted as lost.
pub const DRAIN: Duration = Duration::from_secs(2);

/// How long the HTTP control stays up after the run, so that a monitor
/// polling once a second fetches the last seconds (`/seconds`).
const HTTP_LINGER: Duration = Duration::from_millis(1500);

/// The least time from the go signal to the schedule's start (the next
/// whole second after it), so that every thread is polling before its first
/// request falls due.
const GO_LEAD: Duration = Duration::from_millis(20);

/// Extra time the coordinator grants on top of the phases' own bounds before
/// it declares the run hung: thread start-up, the wait for a whole second,
/// joins, late wake-ups.
const DEADLINE_SLACK: Duration = Duration::from_secs(10);

/// File descriptors the flooder needs beyond one per user: stdio, each
/// thread's epoll and waker, the HTTP control, output files, /proc reads.
const FDS_SPARE: u64 = 64;

/// A flooder thread busier than this over a window second was itself a
/// limit: its sends queued behind its own work.
const THREAD_BUSY_PCT: f64 = 90.0;

/// Send lag p99 above this means the flooder, not the server, set the pace.
const SEND_LAG_P99_MAX_US: f64 = 1_000.0;

/// Messages a thread's control channel holds: the coordinator sends a thread
/// at most a go and a stop, so it never waits on a full one.
const CONTROL_QUEUE_LEN: usize = 4;

/// How long past the login deadline the coordinator waits for the threads'
/// connect-phase reports: they report by the deadline themselves; the margin
/// covers a report sent just then.
const LOGIN_REPORT_MARGIN_SECS: u64 = 5;

/// The wait from the go signal for the next whole Unix second, at most.
const WHOLE_SECOND_WAIT: Duration = Duration::from_secs(1);

/// Runs the flooder: connect, log in, shake, report.
pub fn run(args: &FloodArgs) -> anyhow::Result<()> {
    let resolved = options::resolve(args)?;
    ensure_open_files(resolved.users() + FDS_SPARE)?;
    warn_if_ports_scarce(&resolved);
    let live = Arc::new(control::Live::new(resolved.plan.clone()));
    let http = match resolved.http {
        Some(addr) => Some(start_http(args, addr, live.clone())?),
        None => None,
    };
    let ack_log = open_ack_log(args)?;

    let rss_before = server_rss(args, "before connecting")?;
    // The server's CPU over the connect phase: its cost per accepted and
    // logged-in connection, which bounds its accept rate whatever the
    // flooder's own connect speed.
    let connect_cpu_before = server_cpu(args, "before")?;
    let mut coordinator = Coordinator::spawn(args, &resolved, live.clone(), ack_log)?;
    let login = coordinator.connect_phase()?;
    let connect_cpu = connect_cpu_before.zip(server_cpu(args, "after")?);

    coordinator.wait(Instant::now() + Duration::from_secs(args.settle_secs))?;
    let rss_after = server_rss(args, "after login")?;

    let (shaking, hlog) = coordinator.shake_phase(args.hlog.as_deref())?;
    coordinator.join();

    let samples = ServerSamples {
        rss: rss_before.zip(rss_after),
        connect_cpu,
    };
    let report = build_report(args, &resolved, &login, &samples, &shaking);
    print!("{}", report::summary(&report));
    if let Some(hlog) = hlog {
        hlog.finish(&shaking.latency.corrected)?;
    }
    if let Some(path) = &args.json {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(file), &report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(http) = http {
        // A monitor fetches once a second: the last seconds stay served
        // long enough for its next fetch before the control goes away.
        std::thread::sleep(HTTP_LINGER);
        http.stop();
    }
    Ok(())
}

/// Starts the HTTP control on `addr` and registers it with `--monitor`
/// (a failure to register is only a warning).
fn start_http(
    args: &FloodArgs,
    addr: std::net::SocketAddr,
    live: Arc<control::Live>,
) -> anyhow::Result<crate::http::Server> {
    let token = args
        .control_token_file
        .as_deref()
        .map(crate::http::ControlToken::from_file)
        .transpose()
        .map_err(|e| anyhow::anyhow!("reading --control-token-file: {e}"))?;
    let listener = crate::http::bind(addr).with_context(|| {
        format!(
            "binding the flooder's HTTP control on {addr} (--http): is another flooder \
             running here? Give each its own --http port, or --no-http"
        )
    })?;
    let counters = listener.counters();
    let guard = crate::http::Guard {
        token,
        paths: control::MUTATING,
    };
    let server = crate::http::Server::start_guarded(listener, "flood-http", guard, move |req| {
        let mut answer = control::route(&live, req);
        // The control's own counts (401s among them) beside the run's.
        if req.path() == "/status"
            && let Some(doc) = answer.body.as_object_mut()
        {
            doc.insert("control".into(), counters.to_json());
        }
        answer
    })
    .context("starting the flooder's HTTP control thread")?;
    if !args.quiet {
        eprintln!(
            "hongbao flood: control on http://{} (GET /qps?qps=N, GET /status)",
            server.addr()
        );
    }
    if let Some(monitor) = &args.monitor
        && let Err(e) = crate::seconds::register(monitor, server.addr())
    {
        eprintln!("warning: registering with the monitor at {monitor}: {e}");
    }
    Ok(server)
}

/// `--ack-log`, opened for appending, shared by the threads.
fn open_ack_log(args: &FloodArgs) -> anyhow::Result<Option<Arc<File>>> {
    let Some(path) = &args.ack_log else {
        return Ok(None);
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening --ack-log {}", path.display()))?;
    Ok(Some(Arc::new(file)))
}

/// The `--server-pid` process's RSS, sampled `when`; None without it.
fn server_rss(args: &FloodArgs, when: &str) -> anyhow::Result<Option<u64>> {
    args.server_pid
        .map(|pid| {
            procfs::process_rss_bytes(pid)
                .with_context(|| format!("sampling the server's RSS {when}"))
        })
        .transpose()
}

/// The `--server-pid` process's CPU so far, sampled `when` connecting; None
/// without it.
fn server_cpu(args: &FloodArgs, when: &str) -> anyhow::Result<Option<u64>> {
    args.server_pid
        .map(|pid| {
            procfs::process_cpu_us(pid)
                .with_context(|| format!("sampling the server's CPU {when} connecting"))
        })
        .transpose()
}

/// What was sampled from the `--server-pid` process outside the window.
struct ServerSamples {
    /// RSS before the first connect and `--settle-secs` after the last login.
    rss: Option<(u64, u64)>,
    /// CPU so far, before the connect phase and after it.
    connect_cpu: Option<(u64, u64)>,
}

/// `--hlog`: the interval log being written, and where its `.hgrm` goes.
struct HlogOut {
    log: crate::hlog::IntervalLog,
    path: PathBuf,
}

impl HlogOut {
    /// Creates the log; interval times count from `start` (run second 0).
    fn create(path: &Path, start: SystemTime) -> anyhow::Result<HlogOut> {
        let log = crate::hlog::IntervalLog::create(path, start)
            .with_context(|| format!("creating --hlog {}", path.display()))?;
        Ok(HlogOut {
            log,
            path: path.to_owned(),
        })
    }

    /// Closes the log and writes the window's distribution beside it.
    fn finish(self, window: &hdrhistogram::Histogram<u64>) -> anyhow::Result<()> {
        let path = &self.path;
        self.log
            .finish()
            .with_context(|| format!("writing --hlog {}", path.display()))?;
        let hgrm = path.with_extension("hgrm");
        let file = File::create(&hgrm).with_context(|| format!("creating {}", hgrm.display()))?;
        let mut out = BufWriter::new(file);
        crate::hlog::write_hgrm(&mut out, window, crate::hlog::MAX_VALUE_DIVISOR)
            .with_context(|| format!("writing {}", hgrm.display()))?;
        std::io::Write::flush(&mut out).with_context(|| format!("writing {}", hgrm.display()))?;
        Ok(())
    }
}

/// Raises the soft open-files limit to what the run needs, up to the hard
/// limit, and fails early with the numbers when even that is too low, rather
/// than failing thousands of connects later.
fn ensure_open_files(needed: u64) -> anyhow::Result<()> {
    let (soft, hard) = crate::host::nofile().context("getrlimit(RLIMIT_NOFILE)")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "this run needs about {needed} open files (one per user plus {FDS_SPARE}), but the hard limit \
             (ulimit -Hn) is {hard}: use fewer users per process (--min/--max) or raise the limit"
        );
    }
    crate::host::set_nofile_soft(needed)
        .with_context(|| format!("raising the open-files limit from {soft} to {needed}"))
}

/// Warns when one source address would carry more connections to the server
/// than half the ephemeral port range. Linux's `connect()` tries ports of one
/// parity first and scans the whole range once those run out, so past that
/// point connects slow to about a thousand a second (measured here: 18,000
/// users from one address took 4.4 s, from two 0.5 s) and the connect rate
/// measures the port search, not the server.
fn warn_if_ports_scarce(r: &Resolved) {
    let Some(ports) = crate::host::ephemeral_port_count() else {
        return;
    };
    // Users are spread over the servers; each source address gives its own
    // ports per server address.
    let per_server = r.users().div_ceil(r.servers.len() as u64);
    let per_address = per_server.div_ceil(r.binds.len().max(1) as u64);
    let server = r.servers[0];
    if per_address > ports / 2 {
        let addresses = per_server.div_ceil(ports / 2).max(2);
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

/// The coordinator's handle on one worker thread.
struct WorkerHandle {
    control: Sender<Control>,
    waker: Arc<Waker>,
    recycle: Sender<Box<SecondHists>>,
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
    users: u64,
    logged_in: u64,
    failures: u64,
    first_error: Option<String>,
    secs: f64,
}

/// What the shaking phase produced.
struct Shaking {
    /// Edge samples at window start and end.
    edges: [EdgeSample; 2],
    seconds: Vec<SecondSummary>,
    per_second: Vec<Counters>,
    before_start: Counters,
    latency: Latency,
    lost_in_window: u64,
    lost_outside_window: u64,
    claims_lost: u64,
    /// This process's requests by intended run second.
    scheduled: Vec<u64>,
    /// Unix second of run second 0.
    start_unix: u64,
}

/// One run second, all threads merged.
#[derive(Clone, Debug, Default)]
struct SecondSummary {
    counters: Counters,
    qps: u64,
    ready: u64,
    corrected: Percentiles,
    send_lag: Percentiles,
    /// The busiest thread's CPU over the second, percent.
    thread_cpu_max_pct: f64,
}

/// A second being merged, until every thread has reported it.
struct Pending {
    summary: SecondSummary,
    hists: SecondHists,
    reported: usize,
}

/// CPU counters read at one edge of the window.
#[derive(Clone, Debug)]
struct EdgeSample {
    at: Instant,
    self_cpu_us: u64,
    server_cpu_us: Option<u64>,
    cpus: Vec<procfs::CpuTimes>,
}

/// The shaking phase's clock: run second 0 is a whole Unix second, so that
/// flooders on NTP-synced machines agree on which users fire when.
struct RunClock {
    /// Unix second of run second 0.
    start_unix: u64,
    /// The wall clock, Unix nanoseconds, read at `now`.
    now_wall: u64,
    now: Instant,
}

impl RunClock {
    /// Run second 0 at the first whole Unix second at least [`GO_LEAD`] away.
    fn next_second() -> RunClock {
        let now_wall = unix_nanos();
        let now = Instant::now();
        let start_unix = (now_wall + GO_LEAD.as_nanos() as u64).div_ceil(NANOS_PER_SEC);
        RunClock {
            start_unix,
            now_wall,
            now,
        }
    }

    /// The instant run second `run_second` starts at.
    fn instant_of(&self, run_second: u64) -> Instant {
        let at = (self.start_unix + run_second) * NANOS_PER_SEC;
        self.now + Duration::from_nanos(at.saturating_sub(self.now_wall))
    }
}

/// What the shaking phase gathers while the threads run.
struct Gathering {
    /// Unix second of run second 0.
    start_unix: u64,
    hlog: Option<HlogOut>,
    /// The window's edges sampled so far: start, then end.
    edges: Vec<EdgeSample>,
    /// Seconds being merged, by run second; those below `seconds.len()` are
    /// closed.
    pending: Vec<Pending>,
    /// The seconds closed, in order.
    seconds: Vec<SecondSummary>,
    /// Counts summed over the closed seconds.
    totals: Counters,
    /// Each finished thread's results.
    results: Vec<worker::ThreadResult>,
}

impl Shaking {
    /// The phase's outcome: the seconds as closed, and the threads' results
    /// summed (by thread order).
    fn merge(
        edges: [EdgeSample; 2],
        seconds: Vec<SecondSummary>,
        mut results: Vec<worker::ThreadResult>,
        start_unix: u64,
    ) -> Shaking {
        let mut shaking = Shaking {
            edges,
            seconds,
            per_second: Vec::new(),
            before_start: Counters::default(),
            latency: Latency::new(),
            lost_in_window: 0,
            lost_outside_window: 0,
            claims_lost: 0,
            scheduled: Vec::new(),
            start_unix,
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
            shaking.claims_lost += r.claims_lost;
            if shaking.scheduled.len() < r.scheduled.len() {
                shaking.scheduled.resize(r.scheduled.len(), 0);
            }
            for (sum, n) in shaking.scheduled.iter_mut().zip(&r.scheduled) {
                *sum += n;
            }
        }
        shaking
    }
}

struct Coordinator {
    args: FloodArgs,
    users: u64,
    live: Arc<control::Live>,
    workers: Vec<WorkerHandle>,
    from_workers: Receiver<ToMain>,
    login_deadline: Instant,
    hard_deadline: Instant,
}

/// When the phases must be over, counted from the start of the connect phase.
#[derive(Clone, Copy)]
struct Deadlines {
    connect_start: Instant,
    login_deadline: Instant,
    /// Past this the run is hung: every phase's own bound plus slack.
    hard_deadline: Instant,
}

impl Deadlines {
    /// The deadlines of a run whose connect phase starts now.
    fn from_now(args: &FloodArgs, plan: &schedule::Plan) -> Deadlines {
        let connect_start = Instant::now();
        let login_deadline = connect_start + Duration::from_secs(args.login_timeout);
        let hard_deadline = login_deadline
            + Duration::from_secs(args.settle_secs + plan.end_secs())
            + WHOLE_SECOND_WAIT
            + GO_LEAD
            + DRAIN
            + DEADLINE_SLACK;
        Deadlines {
            connect_start,
            login_deadline,
            hard_deadline,
        }
    }
}

/// What every thread's configuration shares.
struct WorkerCommon {
    servers: Arc<[std::net::SocketAddr]>,
    binds: Arc<[IpAddr]>,
    rule: SlotRule,
    live: Arc<control::Live>,
    ack_log: Option<Arc<File>>,
    /// `--auth-key-file`'s keys, to sign logins with.
    keys: Option<Keyring>,
    deadlines: Deadlines,
    to_main: Sender<ToMain>,
}

/// Starts thread `index` of `r.threads` on its share of the users and of the
/// connect rate.
fn spawn_worker(
    args: &FloodArgs,
    r: &Resolved,
    index: usize,
    common: &WorkerCommon,
) -> anyhow::Result<WorkerHandle> {
    let users = schedule::split(r.users(), r.threads, index);
    let poll = Poll::new().context("creating a poll (epoll) instance")?;
    let waker =
        Arc::new(Waker::new(poll.registry(), worker::WAKER).context("creating a poll waker")?);
    let (control, control_rx) = crossbeam_channel::bounded(CONTROL_QUEUE_LEN);
    // Emptied second histograms on their way back to the thread; a full
    // channel only means the thread allocates a new set.
    let (spares_back, spares) = recycle::channel();
    // Each thread connects its share of the connect rate.
    let connect_rate = schedule::split(args.connect_rate, r.threads, index);
    let cfg = WorkerConfig {
        index,
        servers: common.servers.clone(),
        binds: common.binds.clone(),
        first_user: r.min + users.start as u32,
        users: (users.end - users.start) as u32,
        rule: common.rule,
        plan: r.plan.clone(),
        burst: args.burst,
        push_answers_shake: args.push_answers_shake,
        rate_override: common.live.rate_override.clone(),
        connect_rate_per_sec: connect_rate.end - connect_rate.start,
        drain_ns: DRAIN.as_nanos() as u64,
        connect_start: common.deadlines.connect_start,
        login_deadline: common.deadlines.login_deadline,
        hard_deadline: common.deadlines.hard_deadline,
        send_interval: Duration::from_micros(args.send_interval_us),
        spin: args.spin,
        ack_log: common.ack_log.clone(),
        keys: common.keys.clone(),
        recycle: spares,
    };
    let to_main = common.to_main.clone();
    let join = std::thread::Builder::new()
        .name(format!("flood-{index}"))
        .spawn(move || worker::run(cfg, poll, control_rx, to_main))
        .context("spawning a flooder thread")?;
    Ok(WorkerHandle {
        control,
        waker,
        recycle: spares_back,
        join: Some(join),
    })
}

impl Coordinator {
    fn spawn(
        args: &FloodArgs,
        r: &Resolved,
        live: Arc<control::Live>,
        ack_log: Option<Arc<File>>,
    ) -> anyhow::Result<Coordinator> {
        let (to_main, from_workers) = crossbeam_channel::unbounded();
        let deadlines = Deadlines::from_now(args, &r.plan);
        let keys = match &args.auth_key_file {
            Some(path) => {
                Some(Keyring::load(path).context("reading the login keys (--auth-key-file)")?)
            }
            None => None,
        };
        let common = WorkerCommon {
            servers: r.servers.clone().into(),
            binds: r.binds.clone().into(),
            rule: SlotRule::new(r.total),
            live,
            ack_log,
            keys,
            deadlines,
            to_main,
        };
        let mut workers = Vec::with_capacity(r.threads);
        for index in 0..r.threads {
            workers.push(spawn_worker(args, r, index, &common)?);
        }
        Ok(Coordinator {
            args: args.clone(),
            users: r.users(),
            live: common.live,
            workers,
            from_workers,
            login_deadline: deadlines.login_deadline,
            hard_deadline: deadlines.hard_deadline,
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
    /// second. Fails only if no user at all logged in.
    fn connect_phase(&mut self) -> anyhow::Result<LoginOutcome> {
        let summaries = self.gather_logins()?;
        self.login_outcome(&summaries)
    }

    /// Every thread's login summary, printing the summed progress each time
    /// every thread has reported a further second.
    fn gather_logins(&self) -> anyhow::Result<Vec<worker::LoginSummary>> {
        let threads = self.workers.len();
        let mut latest = vec![worker::ConnectProgress::default(); threads];
        // The last second each thread reported; a finished thread counts as
        // having reported every second.
        let mut reached = vec![0u64; threads];
        let mut printed = 0;
        let mut summaries: Vec<Option<worker::LoginSummary>> = (0..threads).map(|_| None).collect();
        let give_up = self.login_deadline + Duration::from_secs(LOGIN_REPORT_MARGIN_SECS);
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
                    self.args.login_timeout + LOGIN_REPORT_MARGIN_SECS
                ),
            }
            let all_reached = reached.iter().copied().min().unwrap_or(0);
            if all_reached != u64::MAX && all_reached > printed {
                printed = all_reached;
                self.publish_connect(printed, &latest, "connecting");
            }
        }
        // The final counts, whether or not a whole second passed: the
        // status says "connected" with them through the settle, until the
        // first shaking second replaces it (a connect phase shorter than a
        // second would otherwise leave the initial, empty document there).
        self.publish_connect(printed, &latest, "connected");
        Ok(summaries.into_iter().flatten().collect())
    }

    /// Prints connect second `second`'s line and rewrites the status
    /// document (its `state`: `connecting`, or `connected` once every
    /// thread has finished), from each thread's latest counts.
    fn publish_connect(&self, second: u64, latest: &[worker::ConnectProgress], state: &str) {
        let mut sum = worker::ConnectProgress::default();
        latest.iter().for_each(|p| sum.add(p));
        let line = format!(
            "[{state} {second:>3}s] opened {:>7}  connected {:>7}  logged in {:>7}  failed {}{}",
            sum.opened,
            sum.connected,
            sum.logged_in,
            sum.failed,
            if state == "connecting" {
                " (retrying)"
            } else {
                ""
            }
        );
        self.live.set_status(json!({
            "state": state,
            "second": second,
            "opened": sum.opened,
            "connected": sum.connected,
            "logged_in": sum.logged_in,
            "failed": sum.failed,
        }));
        if !self.args.quiet {
            eprintln!("{line}");
        }
    }

    /// The connect phase summed over the threads; fails when nobody logged
    /// in, warns when some did not.
    fn login_outcome(&self, summaries: &[worker::LoginSummary]) -> anyhow::Result<LoginOutcome> {
        let mut total = worker::ConnectProgress::default();
        summaries.iter().for_each(|s| total.add(&s.progress));
        let ready: u64 = summaries.iter().map(|s| s.ready).sum();
        let first_error = summaries.iter().find_map(|s| s.first_error.clone());
        if ready == 0 {
            bail!(
                "no user logged in within --login-timeout {} s ({} attempts failed); first error: {}",
                self.args.login_timeout,
                total.failed,
                first_error.as_deref().unwrap_or("none reported")
            );
        }
        if ready < self.users {
            eprintln!(
                "warning: {ready} of {} users logged in within --login-timeout {} s; the rest keep retrying, and \
                 their requests are counted unsent. First error: {}",
                self.users,
                self.args.login_timeout,
                first_error.as_deref().unwrap_or("none reported")
            );
        }
        let first = summaries.iter().filter_map(|s| s.first_connect).min();
        let last = summaries.iter().filter_map(|s| s.last_login).max();
        let secs = match (first, last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        Ok(LoginOutcome {
            users: self.users,
            logged_in: ready,
            failures: total.failed,
            first_error,
            secs,
        })
    }

    /// Starts the shaking on the next whole Unix second, samples CPU at the
    /// window's edges, prints a line per second, and collects every thread's
    /// results.
    fn shake_phase(
        &mut self,
        hlog_path: Option<&Path>,
    ) -> anyhow::Result<(Shaking, Option<HlogOut>)> {
        let threads = self.workers.len();
        let clock = RunClock::next_second();
        let start_unix = clock.start_unix;
        self.live.start_unix.store(start_unix, Ordering::Relaxed);
        let hlog = match hlog_path {
            Some(path) => Some(HlogOut::create(
                path,
                SystemTime::UNIX_EPOCH + Duration::from_secs(start_unix),
            )?),
            None => None,
        };
        for w in &self.workers {
            w.tell(Control::Go {
                start_unix_secs: start_unix,
            });
        }
        let window = self.live.plan.window();
        let edges_at = [clock.instant_of(window.start), clock.instant_of(window.end)];
        let mut g = Gathering {
            start_unix,
            hlog,
            edges: Vec::with_capacity(2),
            pending: Vec::new(),
            seconds: Vec::new(),
            totals: Counters::default(),
            results: Vec::with_capacity(threads),
        };
        while g.results.len() < threads {
            let next_edge = edges_at.get(g.edges.len()).copied();
            let message = self.recv_until(next_edge.unwrap_or(self.hard_deadline))?;
            if next_edge.is_some_and(|edge| Instant::now() >= edge) {
                g.edges.push(self.sample_edge().with_context(|| {
                    let which = if g.edges.is_empty() { "start" } else { "end" };
                    format!("sampling CPU at the window's {which}")
                })?);
            }
            match message {
                Some(ToMain::Second(out)) => {
                    self.merge_second(*out, &mut g.pending);
                    self.close_complete_seconds(&mut g)?;
                }
                Some(ToMain::Done(result)) => g.results.push(*result),
                Some(_) | None => {}
            }
        }
        self.close_trailing_seconds(&mut g);
        self.live.seconds.done();
        self.live.set_status(json!({
            "state": "done",
            "start_unix": start_unix,
            "totals": g.totals,
        }));
        let Ok(edges) = <[EdgeSample; 2]>::try_from(g.edges) else {
            bail!("the threads finished before the window ended");
        };
        let shaking = Shaking::merge(edges, g.seconds, g.results, start_unix);
        Ok((shaking, g.hlog))
    }

    /// Closes, in order, the pending seconds every thread has reported:
    /// each goes to the `--hlog`, the progress line, the status document and
    /// the published seconds.
    fn close_complete_seconds(&self, g: &mut Gathering) -> anyhow::Result<()> {
        let threads = self.workers.len();
        while g
            .pending
            .get(g.seconds.len())
            .is_some_and(|p| p.reported == threads)
        {
            let at = g.seconds.len();
            let p = &mut g.pending[at];
            let summary = close_second(p);
            if let Some(h) = g.hlog.as_mut() {
                let offset = Duration::from_secs(at as u64);
                h.log
                    .append(offset, Duration::from_secs(1), &p.hists.corrected)
                    .with_context(|| format!("writing --hlog {}", h.path.display()))?;
            }
            g.totals.add(&summary.counters);
            self.publish(at as u64, &summary, &g.totals, g.start_unix);
            self.live.seconds.push(
                crate::seconds::ClientSecond {
                    second: g.start_unix + at as u64,
                    run_second: at as u64,
                    qps: summary.qps,
                    connections: summary.ready,
                    counters: summary.counters,
                    latency_us: summary.corrected,
                    send_lag_us: summary.send_lag,
                    thread_cpu_max_pct: summary.thread_cpu_max_pct,
                    // Encoded by `push` from the histogram below.
                    latency_ns_histogram: None,
                },
                &p.hists.corrected,
                &p.hists.send_lag,
            );
            g.seconds.push(summary);
        }
        Ok(())
    }

    /// Threads that ended early (drain done) leave trailing seconds that
    /// not every thread reported; they are shown as they are (neither logged
    /// to `--hlog` nor published).
    fn close_trailing_seconds(&self, g: &mut Gathering) {
        let closed = g.seconds.len();
        for (at, p) in g.pending.iter_mut().enumerate().skip(closed) {
            let summary = close_second(p);
            g.totals.add(&summary.counters);
            self.publish(at as u64, &summary, &g.totals, g.start_unix);
            g.seconds.push(summary);
        }
    }

    /// Adds one thread's second into its pending merge, and hands the
    /// thread's histograms back for reuse.
    fn merge_second(&self, out: SecondOut, pending: &mut Vec<Pending>) {
        let at = out.second as usize;
        while pending.len() <= at {
            pending.push(Pending {
                summary: SecondSummary::default(),
                hists: SecondHists::new(),
                reported: 0,
            });
        }
        let p = &mut pending[at];
        p.summary.counters.add(&out.counters);
        p.summary.qps = p.summary.qps.max(out.qps);
        p.summary.ready += out.ready;
        p.summary.thread_cpu_max_pct = p
            .summary
            .thread_cpu_max_pct
            .max(out.cpu_ns as f64 / out.wall_ns.max(1) as f64 * 100.0);
        p.hists.add(&out.hists);
        p.reported += 1;
        // Emptied here, off the thread's loop.
        recycle::give_back(out.hists, &self.workers[out.thread].recycle);
    }

    /// Prints a second's line and rewrites the status document.
    fn publish(&self, second: u64, s: &SecondSummary, totals: &Counters, start_unix: u64) {
        let phase = report::phase_of(second, &self.live.plan);
        let line = report::progress_line(&report::Line {
            second,
            phase,
            qps: s.qps,
            counters: &s.counters,
            ready: s.ready,
            corrected: &s.corrected,
            send_lag: &s.send_lag,
            thread_cpu_max_pct: s.thread_cpu_max_pct,
        });
        self.live.set_status(json!({
            "state": "shaking",
            "start_unix": start_unix,
            "second": second,
            "phase": phase,
            "qps": s.qps,
            "connections": s.ready,
            "last_second": {
                "counters": s.counters,
                "latency_us": s.corrected,
                "send_lag_us": s.send_lag,
                "thread_cpu_max_pct": s.thread_cpu_max_pct,
            },
            "totals": totals,
        }));
        if !self.args.quiet {
            eprintln!("{line}");
        }
    }

    fn sample_edge(&self) -> anyhow::Result<EdgeSample> {
        // The per-CPU times first, at `at`: their busy time is the elapsed
        // time less what they count as idle, so `at` must be when they
        // were read.
        let at = Instant::now();
        let cpus = procfs::cpu_times()?;
        let server_cpu_us = self
            .args
            .server_pid
            .map(procfs::process_cpu_us)
            .transpose()?;
        let self_cpu_us = procfs::self_cpu_us()?;
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

/// Summarises a merged second.
fn close_second(p: &mut Pending) -> SecondSummary {
    p.summary.corrected = Percentiles::of(&p.hists.corrected);
    p.summary.send_lag = Percentiles::of(&p.hists.send_lag);
    p.summary.clone()
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

/// The run's report from what the phases measured.
fn build_report(
    args: &FloodArgs,
    r: &Resolved,
    login: &LoginOutcome,
    samples: &ServerSamples,
    shaking: &Shaking,
) -> Report {
    let seconds = WindowSeconds::of(r, shaking);
    let window = seconds.counters;
    let host = HostCpu::over(&shaking.edges);
    let secs = r.plan.window_secs() as f64;
    let send_lag = Percentiles::of(&shaking.latency.send_lag);
    let warnings = flooder_warnings(args, &send_lag, seconds.thread_cpu_max_pct);
    Report {
        schema: report::SCHEMA_VERSION,
        start_unix: shaking.start_unix,
        config: run_config(args, r),
        connect: connect_report(login),
        window: WindowReport {
            secs,
            sampled_secs: host.sampled_secs,
            scheduled: seconds.scheduled,
            counters: window,
            sent_per_sec: window.sent as f64 / secs,
            answered_per_sec: window.answered as f64 / secs,
            lost: shaking.lost_in_window,
            lost_in_warmup: shaking.lost_outside_window,
            claims_lost: shaking.claims_lost,
        },
        latency_corrected: Percentiles::of(&shaking.latency.corrected),
        latency_service: Percentiles::of(&shaking.latency.service),
        latency_no_money: Percentiles::of(&shaking.latency.no_money),
        send_lag,
        flooder: FlooderReport {
            cpu_us: host.self_cpu_us,
            cpu_us_per_request: report::per(host.self_cpu_us as f64, window.sent),
            thread_cpu_max_pct: seconds.thread_cpu_max_pct,
            warnings,
        },
        server: args
            .server_pid
            .map(|pid| server_report(pid, host.server_cpu_us, samples, login, &window)),
        foreign_cpu_us: host.busy_us_total as i64
            - host.self_cpu_us as i64
            - host.server_cpu_us as i64,
        cpus: host.cpus,
        before_start: shaking.before_start,
        per_second: seconds.reports,
    }
}

/// Every second of the shaking phase as reported, and the window's sums.
struct WindowSeconds {
    reports: Vec<SecondReport>,
    /// Counts summed over the window's seconds.
    counters: Counters,
    /// The window seconds' global rates, summed.
    scheduled: u64,
    /// The busiest thread in the busiest window second, percent.
    thread_cpu_max_pct: f64,
}

impl WindowSeconds {
    fn of(r: &Resolved, shaking: &Shaking) -> WindowSeconds {
        let window_range = r.plan.window();
        let mut sums = WindowSeconds {
            reports: Vec::with_capacity(shaking.per_second.len()),
            counters: Counters::default(),
            scheduled: 0,
            thread_cpu_max_pct: 0.0,
        };
        for (second, counters) in shaking.per_second.iter().enumerate() {
            let second = second as u64;
            let s = shaking
                .seconds
                .get(second as usize)
                .cloned()
                .unwrap_or_default();
            if window_range.contains(&second) {
                sums.counters.add(counters);
                sums.scheduled += s.qps;
                sums.thread_cpu_max_pct = sums.thread_cpu_max_pct.max(s.thread_cpu_max_pct);
            }
            sums.reports.push(SecondReport {
                second,
                unix: shaking.start_unix + second,
                phase: report::phase_of(second, &r.plan),
                qps: s.qps,
                scheduled: shaking.scheduled.get(second as usize).copied().unwrap_or(0),
                connections: s.ready,
                p50_us: s.corrected.p50_us,
                p99_us: s.corrected.p99_us,
                send_lag_p99_us: s.send_lag.p99_us,
                thread_cpu_max_pct: s.thread_cpu_max_pct,
                counters: *counters,
            });
        }
        sums
    }
}

/// The host's CPU over the window, from the two edge samples.
struct HostCpu {
    /// The time between the samples, seconds.
    sampled_secs: f64,
    /// The flooder's own CPU.
    self_cpu_us: u64,
    /// The `--server-pid` process's CPU; 0 without it.
    server_cpu_us: u64,
    /// Every CPU's busy time, summed.
    busy_us_total: u64,
    cpus: Vec<CpuReport>,
}

impl HostCpu {
    fn over([start, end]: &[EdgeSample; 2]) -> HostCpu {
        let sampled = end.at.saturating_duration_since(start.at);
        let sampled_secs = sampled.as_secs_f64();
        let server_cpu_us = match (start.server_cpu_us, end.server_cpu_us) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        let mut busy_us_total = 0;
        let cpus = start
            .cpus
            .iter()
            .filter_map(|a| {
                let b = end.cpus.iter().find(|b| b.cpu == a.cpu)?;
                // Not the tick-sampled user/system: see `procfs::busy_us`.
                let busy_us = procfs::busy_us(a, b, sampled.as_micros() as u64);
                busy_us_total += busy_us;
                // A floor on the span so that two samples taken at once
                // give 0 %, not a division by zero.
                let pct = |us: u64| {
                    us as f64
                        / crate::clock::MICROS_PER_PERCENT_OF_SEC as f64
                        / sampled_secs.max(1e-9)
                };
                Some(CpuReport {
                    cpu: a.cpu,
                    busy_pct: pct(busy_us),
                    steal_pct: pct(b.steal_us.saturating_sub(a.steal_us)),
                })
            })
            .collect();
        HostCpu {
            sampled_secs,
            self_cpu_us: end.self_cpu_us.saturating_sub(start.self_cpu_us),
            server_cpu_us,
            busy_us_total,
            cpus,
        }
    }
}

/// The `--server-pid` process's cost: over the window, per connection.
fn server_report(
    pid: u32,
    cpu_us: u64,
    samples: &ServerSamples,
    login: &LoginOutcome,
    window: &Counters,
) -> ServerReport {
    let (rss_before, rss_after) = samples.rss.unwrap_or_default();
    let connect_cpu_us = samples.connect_cpu.map_or(0, |(a, b)| b.saturating_sub(a));
    ServerReport {
        pid,
        cpu_us,
        cpu_us_per_answered: report::per(cpu_us as f64, window.answered),
        connect_cpu_us,
        connect_cpu_us_per_login: report::per(connect_cpu_us as f64, login.logged_in),
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_bytes_per_conn: (rss_after as f64 - rss_before as f64) / login.logged_in.max(1) as f64,
    }
}

/// Why the flooder itself may have limited the run.
fn flooder_warnings(
    args: &FloodArgs,
    send_lag: &Percentiles,
    thread_cpu_max_pct: f64,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if send_lag.p99_us > SEND_LAG_P99_MAX_US {
        warnings.push(format!(
            "the flooder was a limit: its send lag p99 was {:.0} µs (> {SEND_LAG_P99_MAX_US:.0} µs), so part of the \
             latency is its own lateness; use more --threads, another core or machine, or a lower rate",
            send_lag.p99_us
        ));
    }
    if thread_cpu_max_pct > THREAD_BUSY_PCT && !args.spin {
        warnings.push(format!(
            "the flooder was a limit: a thread used {thread_cpu_max_pct:.0}% of a core in some window second \
             (> {THREAD_BUSY_PCT:.0}%); use more --threads or spread the load over more processes"
        ));
    }
    warnings
}

/// The options the run used, as reported.
fn run_config(args: &FloodArgs, r: &Resolved) -> RunConfig {
    RunConfig {
        servers: r.servers.iter().map(ToString::to_string).collect(),
        min: r.min,
        max: r.max,
        total: r.total,
        users: r.users(),
        threads: r.threads,
        phases: r
            .plan
            .phases()
            .iter()
            .map(|p| report::PhaseReport {
                qps: p.qps,
                secs: p.secs,
            })
            .collect(),
        warmup_secs: r.plan.warmup_secs(),
        burst: args.burst,
        connect_rate_per_sec: args.connect_rate,
        binds: r.binds.len(),
        settle_secs: args.settle_secs,
        server_pid: args.server_pid,
        send_interval_us: args.send_interval_us,
        spin: args.spin,
    }
}

/// The connect phase, as reported.
fn connect_report(login: &LoginOutcome) -> ConnectReport {
    ConnectReport {
        users: login.users,
        logged_in: login.logged_in,
        failures: login.failures,
        first_error: login.first_error.clone(),
        secs: login.secs,
        logins_per_sec: if login.secs > 0.0 {
            login.logged_in as f64 / login.secs
        } else {
            0.0
        },
    }
}
