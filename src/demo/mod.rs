//! `hongbao demo`: the seed experiment on one machine, in one command.
//!
//! Owns: the run from start to report — check the machine and plan the run
//! to it (`plan`); start a server, a monitor and flooder processes as
//! children (`child`: this same binary, pinned, each in its own process
//! group); send packets when the shaking starts; show progress once a
//! second; then stop the children in order, audit the ledger against the
//! flooders' acknowledgements and write the summary (`summary`). Every
//! child is stopped on every path out, Ctrl-C included. Must not: serve,
//! flood or monitor anything itself (the children do), or touch a process
//! it did not start.
//!
//! The phases are the seed's: connect every user; shake at 30,000/s with
//! the generator's 200 envelopes/s and packets being sent and claimed; shake
//! at 60,000/s.

mod child;
mod plan;
mod summary;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::audit::{AuditArgs, audit};
use crate::flood::procfs;
use child::{Child, describe};
use plan::{FlooderPlan, Machine, Plan, Wish};
use summary::{
    AuditOutcome, ChildSummary, ConnectSummary, CpuSample, Inputs, MoneySummary, PhaseSummary,
    Summary,
};

/// `hongbao demo` options.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated users, one connection each. Default: what the open-file
    /// limit allows one process (the server holds every connection),
    /// rounded down to a thousand; the pre-flight check states it.
    #[arg(long)]
    pub users: Option<u32>,

    /// The shaking phases after the connect phase: global rates, each
    /// optionally with its length (`30000x50s`). Steps without a length share
    /// `--duration`.
    #[arg(long, default_value = "30000,60000")]
    pub phases: String,

    /// Seconds of shaking, shared evenly by the phases given without a
    /// length. With the connect phase and the wrap-up the demo takes about
    /// 20 s more.
    #[arg(long, default_value_t = 100)]
    pub duration: u64,

    /// Server worker threads, pinned to the first cores; the flooders get
    /// the rest. Default: half the cores (at least one).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Flooder processes sharing the users, as the seed's client machines
    /// did (each its own slot-rule share of the global rate).
    #[arg(long, default_value_t = 2)]
    pub flooders: usize,

    /// Envelopes per second from the generator.
    #[arg(long, default_value_t = 200)]
    pub envelopes_per_sec: u64,

    /// Packets sent per second while shaking (the original's
    /// `/fahongbao`: 3 users each, 10..=309 cents); 0 for none.
    #[arg(long, default_value_t = 20)]
    pub packets_per_sec: u64,

    /// Where the report and every file of the run go. Default:
    /// `hongbao-demo-YYYYMMDD-HHMMSS` in the current directory.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Check the machine and print the plan, then exit without starting
    /// anything.
    #[arg(long)]
    pub check: bool,
}

/// The demo's preferred local ports: the original's server port, the
/// server's, monitor's and first flooder's default control ports.
const PREFERRED_PORTS: [u16; 4] = [1025, 8989, 9100, 9090];
/// How long a child may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a child may take to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Seconds past the planned end before the demo gives up on a flooder.
const OVERRUN_SECS: u64 = 90;
/// The flooders' warmup at the first phase's rate, not counted in it.
const FLOOD_WARMUP_SECS: u64 = 2;
/// Fetch timeout for the progress polls.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a starting child is asked whether it answers yet.
const START_POLL: Duration = Duration::from_millis(100);
/// Seconds the flooders' connect phase may take (their `--login-timeout`),
/// twice the flooder's default: here the server and the flooders share one
/// machine's cores while every user connects. The watch's budget counts it.
const FLOOD_LOGIN_TIMEOUT_SECS: u64 = 60;
/// Lines of a failed child's log quoted in the error: its last words,
/// short enough to read on a terminal.
const LOG_TAIL_LINES: usize = 8;
/// The login key the demo makes in its output directory (mode 0600): the
/// server requires signed logins with it and the flooders sign with it.
const AUTH_KEY_FILE: &str = "auth.key";
/// Width the progress line is padded to on a terminal, so that a shorter
/// line overwrites all of a longer one before it.
const PROGRESS_WIDTH: usize = 150;
/// How often a progress line is printed when stderr is not a terminal (a
/// log file): every second would flood it.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The progress polls run this long after the whole second, when the
/// flooders have closed the previous one.
const POLL_AFTER_SECOND_SECS: f64 = 0.3;
/// The shortest sleep between progress polls, seconds, so that a poll
/// that ran late does not run twice in a row.
const POLL_WAIT_MIN_SECS: f64 = 0.2;
/// Timeout of the request that starts the packets.
const PACKETS_START_TIMEOUT: Duration = Duration::from_secs(2);
/// The flooders keep their control up 1.5 s after their run so that the
/// monitor collects their last seconds: the wait gives it those and one
/// tick.
const FLOODER_LINGER: Duration = Duration::from_millis(2_500);
/// How long the monitor may take to stop: it draws every chart and writes
/// the report first.
const MONITOR_STOP_GRACE: Duration = Duration::from_secs(120);

/// Why a run ended early.
#[derive(Debug)]
enum Ended {
    /// All flooders finished their phases.
    Done,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// A child failed; the message says which and how.
    Failed(String),
}

/// The running children and what the run collects about them.
struct Run {
    out: PathBuf,
    server: Child,
    monitor: Option<Child>,
    flooders: Vec<Child>,
    server_http: String,
    /// The token the server's and the flooders' guarded routes need.
    token: crate::http::ControlToken,
    flooder_http: Vec<String>,
    cpu: Vec<CpuSample>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
}

fn unix_now() -> f64 {
    crate::clock::unix_now().as_secs_f64()
}

/// `YYYYMMDD-HHMMSS`, UTC.
fn stamp(secs: u64) -> String {
    let (y, m, d) = crate::hlog::civil_from_days(secs / 86_400);
    let t = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// Runs the demo. Returns the process exit code: 0 when the run completed
/// and the audit passed, 1 when something failed, 130 when interrupted.
pub fn run(args: &DemoArgs, stop: &AtomicBool) -> anyhow::Result<u8> {
    let machine = Machine::read()?;
    let plan = plan::plan(
        &machine,
        &Wish {
            users: args.users,
            phases: args.phases.clone(),
            duration: args.duration,
            threads: args.threads,
            flooders: args.flooders,
        },
    )?;
    print_plan(args, &plan);
    if args.check {
        return Ok(0);
    }

    let started = unix_now() as u64;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("hongbao-demo-{}", stamp(started))));
    std::fs::create_dir_all(out.join("logs"))
        .with_context(|| format!("creating the output directory {}", out.display()))?;
    let token = write_control_token(&out.join(CONTROL_TOKEN_FILE))?;
    let exe =
        std::env::current_exe().context("finding this program's path to start the children")?;
    let ports = Ports::pick(&machine, &plan)?;
    let mut run = Launch {
        args,
        plan: &plan,
        exe: &exe,
        out: &out,
        ports: &ports,
        stop,
    }
    .start(token)?;
    let ended = watch(args, &plan, &mut run, stop);
    finish(&machine, &plan, run, started, ended)
}

/// The pre-flight checks and the plan, as printed before the run.
fn print_plan(args: &DemoArgs, plan: &Plan) {
    println!("hongbao demo: checking the machine");
    print!("{}", summary::checks_table(&plan.checks));
    println!(
        "plan: {} users over {} flooder(s); then {}; {} envelopes/s, {} packets/s",
        plan.users,
        plan.flooders.len(),
        plan.phases
            .iter()
            .map(|p| format!("{}/s for {} s", p.qps, p.secs))
            .collect::<Vec<_>>()
            .join(", "),
        args.envelopes_per_sec,
        args.packets_per_sec,
    );
}

/// The control token's file in the output directory: the server's and the
/// flooders' `--control-token-file`, so the run exercises the guarded
/// routes as an operator would.
const CONTROL_TOKEN_FILE: &str = "control-token";

/// Writes a fresh control token (24 bytes from the OS, as hex) to `path`,
/// readable by its owner only, and returns it.
fn write_control_token(path: &Path) -> anyhow::Result<crate::http::ControlToken> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the control token")?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let writing = || format!("writing the control token {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(writing)?;
    // A file left by an earlier run keeps its mode: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(writing)?;
    writeln!(file, "{text}").with_context(writing)?;
    crate::http::ControlToken::new(&text).map_err(|e| anyhow::anyhow!("{e}"))
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The local ports of the run's children.
struct Ports {
    /// The server's shakes (`--listen`).
    listen: u16,
    /// The server's HTTP control.
    server_http: u16,
    /// The monitor's dashboard.
    monitor_http: u16,
    /// Each flooder's HTTP control.
    flooders: Vec<u16>,
}

impl Ports {
    /// The preferred ports where free, the first flooder's default
    /// counting up for the others.
    fn pick(machine: &Machine, plan: &Plan) -> anyhow::Result<Ports> {
        let first_flooder = PREFERRED_PORTS[PREFERRED_PORTS.len() - 1];
        let preferred = [
            PREFERRED_PORTS.as_slice(),
            &(1..plan.flooders.len() as u16)
                .map(|i| first_flooder + i)
                .collect::<Vec<_>>(),
        ]
        .concat();
        let mut ports =
            plan::pick_ports(&preferred, machine.ephemeral_ports.map(|(low, _)| low))?.into_iter();
        let mut next_port = || ports.next().expect("one port per process was picked");
        let (listen, server_http, monitor_http) = (next_port(), next_port(), next_port());
        let flooders = plan.flooders.iter().map(|_| next_port()).collect();
        Ok(Ports {
            listen,
            server_http,
            monitor_http,
            flooders,
        })
    }
}

/// What starting the children needs.
struct Launch<'a> {
    args: &'a DemoArgs,
    plan: &'a Plan,
    /// This program, which every child runs.
    exe: &'a Path,
    /// The output directory.
    out: &'a Path,
    ports: &'a Ports,
    stop: &'a AtomicBool,
}

impl Launch<'_> {
    /// A path in the output directory, as a command-line argument.
    fn file(&self, name: &str) -> String {
        self.out.join(name).display().to_string()
    }

    /// Starts the server, the monitor and the flooders, each once the
    /// previous answers. On error every child started so far is stopped
    /// (by `Drop`).
    fn start(&self, token: crate::http::ControlToken) -> anyhow::Result<Run> {
        let (plan, ports) = (self.plan, self.ports);
        let key_file = self.out.join(AUTH_KEY_FILE);
        if !key_file.exists() {
            crate::token::add_new_key(&key_file, 1).context("making the demo's login key")?;
        }
        println!(
            "starting the server on {} (logs in {})",
            loopback(ports.listen),
            self.out.join("logs").display()
        );
        let mut server = Child::spawn(
            "server",
            self.exe,
            &self.server_args(),
            &plan.server_cores,
            self.out.join("logs/server.log"),
        )?;
        wait_answering(
            &mut server,
            &loopback(ports.server_http),
            "/status",
            self.stop,
        )?;
        let rss_before = procfs::process_rss_bytes(server.pid()).ok();

        let mut monitor = Child::spawn(
            "monitor",
            self.exe,
            &self.monitor_args(),
            &plan.flooder_cores,
            self.out.join("logs/monitor.log"),
        )?;
        wait_answering(&mut monitor, &loopback(ports.monitor_http), "/", self.stop)?;
        println!("live dashboard: http://{}/", loopback(ports.monitor_http));

        let flooders = plan
            .flooders
            .iter()
            .zip(&ports.flooders)
            .enumerate()
            .map(|(i, (f, &port))| {
                Child::spawn(
                    &format!("flood-{i}"),
                    self.exe,
                    &self.flood_args(i, f, port),
                    &plan.flooder_cores,
                    self.out.join(format!("logs/flood-{i}.log")),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Run {
            out: self.out.to_path_buf(),
            server,
            monitor: Some(monitor),
            flooders,
            server_http: loopback(ports.server_http),
            token,
            flooder_http: ports.flooders.iter().map(|&p| loopback(p)).collect(),
            cpu: Vec::new(),
            rss_before,
            rss_after: None,
        })
    }

    /// The server's command line.
    fn server_args(&self) -> Vec<String> {
        [
            "server",
            "--listen",
            &loopback(self.ports.listen),
            "--http",
            &loopback(self.ports.server_http),
            "--threads",
            &self.plan.server_threads.to_string(),
            "--envelopes-per-sec",
            &self.args.envelopes_per_sec.to_string(),
            "--data-dir",
            &self.file("data"),
            "--hlog",
            &self.file("server.hlog"),
            "--stats-jsonl",
            &self.file("server-seconds.jsonl"),
            "--conns-max",
            &self.plan.users.to_string(),
            "--auth-key-file",
            &self.file(AUTH_KEY_FILE),
            "--control-token-file",
            &self.file(CONTROL_TOKEN_FILE),
            "--conn-qps-max",
            &self.plan.conn_qps_max().to_string(),
            "--quiet",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The monitor's command line: the server as its source (the flooders
    /// register themselves), every interval log for the report.
    fn monitor_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "monitor",
            "--source",
            &loopback(self.ports.server_http),
            "--http",
            &loopback(self.ports.monitor_http),
            "--jsonl",
            &self.file("series.jsonl"),
            "--csv",
            &self.file("series.csv"),
            "--report",
            &self.file("report.html"),
            "--charts-dir",
            &self.file("charts"),
            "--hlog",
            &format!("server={}", self.file("server.hlog")),
            "--quiet",
        ]
        .map(String::from)
        .to_vec();
        for i in 0..self.plan.flooders.len() {
            args.push("--hlog".into());
            args.push(format!(
                "client-{i}={}",
                self.file(&format!("flood-{i}.hlog"))
            ));
        }
        args
    }

    /// Flooder `i`'s command line.
    fn flood_args(&self, i: usize, f: &FlooderPlan, port: u16) -> Vec<String> {
        [
            "flood",
            "--server",
            &loopback(self.ports.listen),
            "--total",
            &self.plan.users.to_string(),
            "--min",
            &f.min.to_string(),
            "--max",
            &f.max.to_string(),
            "--threads",
            &f.threads.to_string(),
            "--bind",
            &f.bind_arg(),
            "--phases",
            &self.plan.phases_arg(),
            "--http",
            &loopback(port),
            "--control-token-file",
            &self.file(CONTROL_TOKEN_FILE),
            "--monitor",
            &loopback(self.ports.monitor_http),
            "--json",
            &self.file(&format!("flood-{i}.json")),
            "--hlog",
            &self.file(&format!("flood-{i}.hlog")),
            "--ack-log",
            &self.file(&format!("acks-{i}.log")),
            "--login-timeout",
            &FLOOD_LOGIN_TIMEOUT_SECS.to_string(),
            "--warmup",
            &FLOOD_WARMUP_SECS.to_string(),
            "--auth-key-file",
            &self.file(AUTH_KEY_FILE),
            "--quiet",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// Waits until `child` answers `GET target` on `addr`, or fails naming why.
fn wait_answering(
    child: &mut Child,
    addr: &str,
    target: &str,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.exited() {
            bail!(
                "the {} {} at start:\n{}",
                child.name,
                describe(status),
                child.log_tail(LOG_TAIL_LINES)
            );
        }
        if crate::http::get(addr, target, POLL_TIMEOUT).is_ok_and(|(code, _)| code == 200) {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted while the {} was starting", child.name);
        }
        if Instant::now() >= deadline {
            bail!(
                "the {} did not answer on http://{addr}{target} within {} s; its log ({}) ends:\n{}",
                child.name,
                START_TIMEOUT.as_secs(),
                child.log.display(),
                child.log_tail(LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(START_POLL);
    }
}

/// What the flooders report right now, summed.
#[derive(Default)]
struct Live {
    shaking: usize,
    done: usize,
    logged_in: u64,
    step_second: Option<u64>,
    qps: u64,
    sent: u64,
    answered: u64,
    got: u64,
    overload: u64,
    claims: u64,
    errors: u64,
    p99_us: f64,
}

impl Live {
    /// Adds one flooder's `/status`.
    fn add(&mut self, v: &Value) {
        let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        match v["state"].as_str() {
            Some("connecting") => self.logged_in += n(v, "logged_in"),
            Some("shaking") => {
                self.shaking += 1;
                self.logged_in += n(v, "connections");
                self.step_second = v["second"].as_u64();
                self.qps = n(v, "qps");
                let c = &v["last_second"]["counters"];
                self.sent += n(c, "sent");
                self.answered += n(c, "answered");
                self.got += n(c, "got");
                self.overload += n(c, "overload");
                self.claims += n(c, "claim_answers");
                self.errors += n(c, "conn_errors") + n(c, "bad_frames");
                let p99 = v["last_second"]["latency_us"]["p99_us"]
                    .as_f64()
                    .unwrap_or(0.0);
                self.p99_us = self.p99_us.max(p99);
            }
            Some("done") => self.done += 1,
            _ => {}
        }
    }
}

fn poll_flooders(run: &Run) -> Live {
    let mut live = Live::default();
    for addr in &run.flooder_http {
        let Ok((200, body)) = crate::http::get(addr, "/status", POLL_TIMEOUT) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&body) else {
            continue;
        };
        live.add(&v);
    }
    live
}

/// Where run second `second` falls: `(phase number from 2, seconds into
/// it, its length)`, or None in the warmup.
fn phase_at(plan: &Plan, second: u64, warmup: u64) -> Option<(usize, u64, u64)> {
    let mut from = warmup;
    for (i, p) in plan.phases.iter().enumerate() {
        if second < from + p.secs {
            return (second >= from).then(|| (i + 2, second - from, p.secs));
        }
        from += p.secs;
    }
    None
}

/// Watches the run once a second until the flooders are done, a child
/// fails, or a signal asks to stop; shows progress and sends the packets.
fn watch(args: &DemoArgs, plan: &Plan, run: &mut Run, stop: &AtomicBool) -> Ended {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut packets_sent = false;
    let mut last_line: Option<Instant> = None;
    let budget = Duration::from_secs(FLOOD_LOGIN_TIMEOUT_SECS + plan.shaking_secs() + OVERRUN_SECS);
    loop {
        if stop.load(Ordering::Relaxed) {
            if tty {
                eprintln!();
            }
            return Ended::Interrupted;
        }
        if let Some(ended) = children_ended(run) {
            if tty && matches!(ended, Ended::Done) {
                eprintln!();
            }
            return ended;
        }
        if started.elapsed() > budget {
            return Ended::Failed(format!(
                "the flooders had not finished {} s after their planned end",
                OVERRUN_SECS
            ));
        }

        if let Ok(cpu_us) = procfs::process_cpu_us(run.server.pid()) {
            run.cpu.push(CpuSample {
                unix: unix_now(),
                cpu_us,
            });
        }
        let live = poll_flooders(run);
        // Every flooder shaking: every user is in; the server's memory now
        // holds every connection.
        if live.shaking == run.flooders.len() && run.rss_after.is_none() {
            run.rss_after = procfs::process_rss_bytes(run.server.pid()).ok();
        }
        if live.shaking > 0 && !packets_sent && args.packets_per_sec > 0 {
            packets_sent = true;
            start_packets(args, plan, run);
        }

        let line = progress_line(plan, &live, started.elapsed().as_secs());
        if tty {
            eprint!("\r{line:<PROGRESS_WIDTH$}");
        } else if last_line.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
            eprintln!("{line}");
            last_line = Some(Instant::now());
        }
        // Poll just after each whole second, when the flooders have closed
        // the previous one.
        let frac = unix_now().fract();
        let wait = (1.0 + POLL_AFTER_SECOND_SECS - frac)
            .rem_euclid(1.0)
            .max(POLL_WAIT_MIN_SECS);
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
}

/// How the run ended, if a child's exit ended it: the server or the
/// monitor exited, a flooder failed, or every flooder finished.
fn children_ended(run: &mut Run) -> Option<Ended> {
    if let Some(status) = run.server.exited() {
        return Some(Ended::Failed(format!(
            "the server {} during the run; its log ends:\n{}",
            describe(status),
            run.server.log_tail(LOG_TAIL_LINES)
        )));
    }
    if let Some(m) = run.monitor.as_mut()
        && let Some(status) = m.exited()
    {
        return Some(Ended::Failed(format!(
            "the monitor {} during the run; its log ends:\n{}",
            describe(status),
            m.log_tail(LOG_TAIL_LINES)
        )));
    }
    let mut all_done = true;
    for f in &mut run.flooders {
        match f.exited() {
            None => all_done = false,
            Some(s) if s.success() => {}
            Some(s) => {
                return Some(Ended::Failed(format!(
                    "{} {}; its log ends:\n{}",
                    f.name,
                    describe(s),
                    f.log_tail(LOG_TAIL_LINES)
                )));
            }
        }
    }
    all_done.then_some(Ended::Done)
}

/// Asks the server to send packets over the shaking phases (the original's
/// `/fahongbao`), to any of the users; a failure is only a warning.
fn start_packets(args: &DemoArgs, plan: &Plan, run: &Run) {
    let target = format!(
        "/fahongbao?qps={}&sum={}&min=0&max={}",
        args.packets_per_sec,
        args.packets_per_sec * plan.shaking_secs(),
        plan.users.saturating_sub(1)
    );
    let answer = crate::http::get_with_token(
        &run.server_http,
        &target,
        PACKETS_START_TIMEOUT,
        Some(&run.token),
    );
    // A refusal (401, 400) is an answer too: only a 200 started them.
    if let Err(e) = answer.and_then(|(status, body)| match status {
        200 => Ok(()),
        _ => Err(format!("{status} {body}")),
    }) {
        eprintln!("hongbao demo: warning: starting the packets failed: {e}");
    }
}

/// The progress line at `elapsed` seconds into the run.
fn progress_line(plan: &Plan, live: &Live, elapsed: u64) -> String {
    let phases_total = plan.phases.len() + 1;
    if live.shaking > 0 {
        let where_ = live
            .step_second
            .and_then(|s| phase_at(plan, s, FLOOD_WARMUP_SECS))
            .map_or_else(
                || format!("phase 2/{phases_total} warming up"),
                |(n, at, len)| {
                    format!(
                        "phase {n}/{phases_total} shake {}/s {at:>3}/{len} s",
                        live.qps
                    )
                },
            );
        format!(
            "{elapsed:>4}s  {where_}  sent {:>6}/s  answered {:>6}/s  got {:>3}/s  over {:>5}/s  claims {:>3}/s  errors {}  p99 {:.2} ms  users {}",
            live.sent,
            live.answered,
            live.got,
            live.overload,
            live.claims,
            live.errors,
            live.p99_us / 1e3,
            live.logged_in,
        )
    } else if live.done > 0 {
        format!("{elapsed:>4}s  finishing")
    } else {
        format!(
            "{elapsed:>4}s  phase 1/{phases_total} connect  logged in {:>6}/{}",
            live.logged_in, plan.users
        )
    }
}

/// How each child ended, as stopping them found it.
struct Ends {
    flooders: Vec<ExitStatus>,
    monitor: Option<ExitStatus>,
    server: ExitStatus,
}

/// Stops the children in order, audits, writes and prints the summary.
fn finish(
    machine: &Machine,
    plan: &Plan,
    mut run: Run,
    started: u64,
    ended: Ended,
) -> anyhow::Result<u8> {
    let out = run.out.clone();
    let ends = stop_children(&mut run, &ended);
    let mut failure = match &ended {
        Ended::Done => None,
        Ended::Interrupted => Some("interrupted".to_owned()),
        Ended::Failed(why) => Some(why.clone()),
    };
    if failure.is_none() && !ends.server.success() {
        failure = Some(format!(
            "the server {} at shutdown; its log ends:\n{}",
            describe(ends.server),
            run.server.log_tail(LOG_TAIL_LINES)
        ));
    }
    let audit = audit_ledger(&out, plan);
    let (connect, phases, money) = read_results(plan, &run).unwrap_or_default();
    let completed = failure.is_none();
    let summary = Summary {
        schema: summary::SCHEMA_VERSION,
        started_unix: started,
        completed,
        failure: failure.clone(),
        machine: machine.clone(),
        plan: plan.clone(),
        connect,
        phases,
        money,
        audit,
        children: child_summaries(&run, ends),
        files: files_written(&out, plan),
    };
    let summary_path = out.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    print_end(&out, &summary, &summary_path);
    if let Some(why) = &failure {
        eprintln!("hongbao demo: the run did not complete: {why}");
    }
    Ok(match (&ended, summary.audit.ok && completed) {
        (Ended::Interrupted, _) => 130,
        (_, true) => 0,
        _ => 1,
    })
}

/// Stops the flooders, then the monitor (which writes the report), then
/// the server.
fn stop_children(run: &mut Run, ended: &Ended) -> Ends {
    // Flooders first (after a finished run they have exited: this only
    // reads how), so that the report covers everything they sent.
    let flooders: Vec<ExitStatus> = run
        .flooders
        .iter_mut()
        .map(|f| f.stop(STOP_GRACE))
        .collect();
    if matches!(ended, Ended::Done) {
        std::thread::sleep(FLOODER_LINGER);
    }
    println!("stopping: monitor (writing the report), then server");
    let monitor = run.monitor.as_mut().map(|m| m.stop(MONITOR_STOP_GRACE));
    let server = run.server.stop(STOP_GRACE);
    Ends {
        flooders,
        monitor,
        server,
    }
}

/// Audits the ledger against the flooders' acknowledgements.
fn audit_ledger(out: &Path, plan: &Plan) -> AuditOutcome {
    let acks: Vec<PathBuf> = (0..plan.flooders.len())
        .map(|i| out.join(format!("acks-{i}.log")))
        .filter(|p| p.exists())
        .collect();
    match audit(&AuditArgs {
        data_dir: vec![out.join("data")],
        cluster: None,
        ack_log: acks,
        json: false,
    }) {
        Ok(report) => AuditOutcome {
            ok: true,
            error: None,
            report: Some(report),
        },
        Err(e) => AuditOutcome {
            ok: false,
            error: Some(format!("{e:#}")),
            report: None,
        },
    }
}

/// The connect phase, the shaking phases and the money from the files the
/// children wrote; None (said on stderr) when they cannot be read, or when
/// a flooder wrote no report.
fn read_results(
    plan: &Plan,
    run: &Run,
) -> Option<(ConnectSummary, Vec<PhaseSummary>, MoneySummary)> {
    let out = &run.out;
    let flooder_json: Vec<PathBuf> = (0..plan.flooders.len())
        .map(|i| out.join(format!("flood-{i}.json")))
        .collect();
    let flooder_hlogs: Vec<PathBuf> = (0..plan.flooders.len())
        .map(|i| out.join(format!("flood-{i}.hlog")))
        .collect();
    if !flooder_json.iter().all(|p| p.exists()) {
        return None;
    }
    summary::measure(
        plan,
        &Inputs {
            flooder_json: &flooder_json,
            flooder_hlogs: &flooder_hlogs,
            server_stats: &out.join("server-seconds.jsonl"),
            server_hlog: &out.join("server.hlog"),
            cpu: &run.cpu,
            rss: (run.rss_before, run.rss_after),
        },
    )
    .map_err(|e| eprintln!("hongbao demo: the results could not be read: {e:#}"))
    .ok()
}

/// Each child's name, pid, end and log: the server, the flooders, the
/// monitor.
fn child_summaries(run: &Run, ends: Ends) -> Vec<ChildSummary> {
    let mut all: Vec<(&Child, ExitStatus)> = vec![(&run.server, ends.server)];
    all.extend(run.flooders.iter().zip(ends.flooders));
    all.extend(run.monitor.iter().zip(ends.monitor));
    all.into_iter()
        .map(|(c, status)| ChildSummary {
            name: c.name.clone(),
            pid: c.pid(),
            ended: describe(status),
            log: c.log.clone(),
        })
        .collect()
}

/// The run's files that exist, named, relative to the output directory.
fn files_written(out: &Path, plan: &Plan) -> Vec<(String, String)> {
    [
        ("report", "report.html"),
        ("summary", "summary.json"),
        ("series", "series.jsonl"),
        ("series (CSV)", "series.csv"),
        ("charts", "charts"),
        ("server latency log", "server.hlog"),
        ("server seconds", "server-seconds.jsonl"),
        ("ledger", "data/ledger.log"),
        ("logs", "logs"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .chain((0..plan.flooders.len()).flat_map(|i| {
        [
            (format!("flooder {i} results"), format!("flood-{i}.json")),
            (
                format!("flooder {i} latency log"),
                format!("flood-{i}.hlog"),
            ),
            (
                format!("flooder {i} acknowledgements"),
                format!("acks-{i}.log"),
            ),
        ]
    }))
    .filter(|(_, v)| out.join(v).exists())
    .collect()
}

/// The summary table and where the report and the summary are.
fn print_end(out: &Path, summary: &Summary, summary_path: &Path) {
    println!();
    print!("{}", summary::table(summary));
    println!();
    let report = out.join("report.html");
    if report.exists() {
        println!("report:  {}", report.display());
    } else {
        println!(
            "report:  not written (the monitor's log: {})",
            out.join("logs/monitor.log").display()
        );
    }
    println!("summary: {}", summary_path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_names_the_phase_and_the_second_in_it() {
        let machine = Machine {
            cores: vec![0, 1],
            nofile_hard: 20_000,
            file_max: None,
            ephemeral_ports: None,
            somaxconn: None,
        };
        let wish = Wish {
            users: Some(100),
            phases: "10x3s,20x4s".into(),
            duration: 0,
            threads: None,
            flooders: 1,
        };
        let plan = plan::plan(&machine, &wish).unwrap();
        // Two warmup seconds, then phase 2 (the first shaking one) for 3 s.
        assert_eq!(phase_at(&plan, 1, 2), None);
        assert_eq!(phase_at(&plan, 2, 2), Some((2, 0, 3)));
        assert_eq!(phase_at(&plan, 5, 2), Some((3, 0, 4)));
        assert_eq!(phase_at(&plan, 8, 2), Some((3, 3, 4)));
        assert_eq!(phase_at(&plan, 9, 2), None);
    }

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(stamp(0), "19700101-000000");
        assert_eq!(stamp(1_795_331_164), "20261122-070604");
    }
}
