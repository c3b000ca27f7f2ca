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
//!
//! `hongbao demo --nodes N` runs the same across a fleet: a Redis Cluster
//! of 3 primaries x 1 replica (`redis`: `tools/cluster.sh`, built into the
//! binary) and N hongbao nodes (`server --cluster ... --node-id I`, each
//! with its own ledger); every flooder gets every node as `--server` (user
//! `u` on node `u mod N`, failing over to the next); the monitor sums every
//! node and flooder; the envelope budget is the fleet's (`/yaohongbao` on
//! node 1) and the packets are sent from every node to targets anywhere in
//! the user range, so most sit on other nodes. The fault schedule (`fleet`)
//! kills node 2 with SIGKILL a quarter into the shaking and starts it
//! again 4 s later, and kills a Redis primary past half way, restarting it
//! once its replica has taken over. The run ends with the fleet audit
//! (every node's ledger against the engine, and the flooders'
//! acknowledgements), then stops the Redis Cluster. Its defaults are small
//! (3,000 users, 2,000 then 4,000 shakes/s for 20 s each) so that the
//! whole takes about a minute on a 2-core machine.

mod child;
mod fleet;
mod plan;
mod redis;
mod summary;
mod verdict;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::audit::fleet::audit_fleet;
use crate::audit::{AuditArgs, audit};
use crate::flood::procfs;
use child::{Child, describe};
use fleet::{FaultPlan, Faults, Fleet};
use plan::{FlooderPlan, Machine, PhaseSpec, Plan, Wish};
use redis::Redis;
use summary::{
    AuditOutcome, ChildSummary, ClusterSummary, ConnectSummary, CpuSample, Inputs, MoneySummary,
    PhaseSummary, RedisSummary, Summary,
};
use verdict::Verdict;

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
    /// `--duration`. Default: 30000,60000 (with `--nodes`: 2000,4000).
    #[arg(long)]
    pub phases: Option<String>,

    /// Seconds of shaking, shared evenly by the phases given without a
    /// length. With the connect phase and the wrap-up the demo takes about
    /// 20 s more. Default: 100 (with `--nodes`: 40).
    #[arg(long)]
    pub duration: Option<u64>,

    /// Server worker threads (each node's, with `--nodes`), pinned to the
    /// first cores; the flooders get the rest. Default: half the cores (at
    /// least one).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Flooder processes sharing the users, as the seed's client machines
    /// did (each its own slot-rule share of the global rate).
    #[arg(long, default_value_t = 2)]
    pub flooders: usize,

    /// Envelopes per second from the generator (with `--nodes`: the fleet's
    /// budget, set on node 1 with `/yaohongbao` and leased by every node).
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

    /// Run the experiment across this many hongbao nodes (2..=16) on a
    /// Redis Cluster of 3 primaries x 1 replica that the demo starts on
    /// loopback (`tools/cluster.sh`, Debian's redis-server) and stops at
    /// the end: the flooders spread their users over the nodes, the
    /// monitor sums them all, packets go to users on other nodes, node 2
    /// is killed with SIGKILL and started again, a Redis primary is killed
    /// and brought back, and the run ends with the fleet audit. Defaults
    /// then: 3,000 users, `--phases 2000,4000`, `--duration 40` (about a
    /// minute on 2 cores).
    #[arg(long, value_name = "N")]
    pub nodes: Option<u32>,

    /// With `--nodes`: the Redis Cluster's first port (its 6 nodes take it
    /// and the next 5, their cluster bus 10000 above). Default: the first
    /// free block from 7000.
    #[arg(long, value_name = "PORT", requires = "nodes")]
    pub redis_port: Option<u16>,
}

impl DemoArgs {
    /// What the options ask for, the defaults of a fleet run filled in.
    fn wish(&self) -> Wish {
        let fleet = self.nodes.is_some();
        Wish {
            users: self.users.or(fleet.then_some(fleet::USERS)),
            phases: self
                .phases
                .clone()
                .unwrap_or_else(|| if fleet { fleet::PHASES } else { PHASES }.to_owned()),
            duration: self.duration.unwrap_or(if fleet {
                fleet::DURATION_SECS
            } else {
                DURATION_SECS
            }),
            threads: self.threads,
            flooders: self.flooders,
        }
    }
}

/// `--phases` when not given: the seed's two rates.
const PHASES: &str = "30000,60000";
/// `--duration` when not given, seconds.
const DURATION_SECS: u64 = 100;

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
/// How often the watch looks while a fault waits on a failover or a start:
/// its timing is measured to this.
const FAULT_POLL: Duration = Duration::from_millis(200);
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

/// One server process of the run: the server, or a node of the fleet
/// (which the fault schedule may kill and start again).
struct Server {
    /// `server`, or `node-I`.
    name: String,
    /// Its node id (`--nodes`), from 1.
    node_id: Option<u32>,
    /// Its shakes address, `127.0.0.1:PORT`.
    listen: String,
    /// Its HTTP control, `127.0.0.1:PORT`.
    http: String,
    /// Its command line when started again: its own `--hlog` (a start
    /// truncates the file), the rest as at first.
    restart_args: Vec<String>,
    /// Where a restarted process's output goes.
    restart_log: PathBuf,
    /// Its `--stats-jsonl` (appended to by every process of it).
    stats: PathBuf,
    /// Its `--hlog` files, one per process started.
    hlogs: Vec<PathBuf>,
    /// The `--hlog` of a process started again.
    restart_hlog: PathBuf,
    /// The running process; None while it is down.
    current: Option<Child>,
    /// Its earlier processes, killed, with how they ended.
    retired: Vec<(Child, ExitStatus)>,
    /// CPU time of its retired processes, microseconds, so that its CPU
    /// only grows across a restart.
    cpu_retired_us: u64,
    /// Its running process's last CPU sample, microseconds.
    cpu_last_us: u64,
}

impl Server {
    /// Kills its process with SIGKILL; returns the pid, None when it had
    /// none running.
    fn kill(&mut self) -> Option<u32> {
        let mut child = self.current.take()?;
        let pid = child.pid();
        let status = child.kill();
        child.name = format!("{} (killed)", self.name);
        self.cpu_retired_us += self.cpu_last_us;
        self.cpu_last_us = 0;
        self.retired.push((child, status));
        Some(pid)
    }

    /// The last lines of its current (or last) process's log.
    fn log_tail(&self) -> String {
        self.current
            .as_ref()
            .or(self.retired.last().map(|(c, _)| c))
            .map(|c| c.log_tail(LOG_TAIL_LINES))
            .unwrap_or_default()
    }
}

/// The running children and what the run collects about them.
struct Run {
    out: PathBuf,
    /// This program, which every child runs.
    exe: PathBuf,
    /// The cores the servers are pinned to.
    server_cores: Vec<usize>,
    /// The server, or every node of the fleet in id order.
    servers: Vec<Server>,
    monitor: Option<Child>,
    flooders: Vec<Child>,
    /// The token the server's and the flooders' guarded routes need.
    token: crate::http::ControlToken,
    flooder_http: Vec<String>,
    /// Simulated users.
    users: u32,
    cpu: Vec<CpuSample>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    /// `--nodes`: the Redis Cluster (stopped at the end).
    redis: Option<Redis>,
    /// `--nodes`: the fault schedule.
    faults: Option<Faults>,
    /// When the packets end, once started.
    packets_until: Option<Instant>,
    /// `--nodes`: each node's `cluster` object of `/status` at the end.
    node_status: Vec<Value>,
}

impl Fleet for Run {
    fn kill_node(&mut self, index: usize) -> Option<u32> {
        self.servers.get_mut(index)?.kill()
    }

    /// Starts server `index` again (same node id and data directory, its
    /// own latency log); returns the new pid.
    fn restart_node(&mut self, index: usize) -> anyhow::Result<u32> {
        let cores = self.server_cores.clone();
        let exe = self.exe.clone();
        let server = &mut self.servers[index];
        let child = Child::spawn(
            &server.name,
            &exe,
            &server.restart_args,
            &cores,
            server.restart_log.clone(),
        )?;
        let pid = child.pid();
        server.current = Some(child);
        if !server.hlogs.contains(&server.restart_hlog) {
            server.hlogs.push(server.restart_hlog.clone());
        }
        Ok(pid)
    }

    /// Whether server `index` answers `/status`, and, in a fleet, says it
    /// reaches the engine.
    fn node_ready(&self, index: usize) -> bool {
        let s = &self.servers[index];
        let Ok((200, body)) = crate::http::get(&s.http, "/status", POLL_TIMEOUT) else {
            return false;
        };
        s.node_id.is_none()
            || serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v["cluster"]["available"].as_bool() == Some(true))
    }

    fn node_log_tail(&self, index: usize) -> String {
        self.servers
            .get(index)
            .map(Server::log_tail)
            .unwrap_or_default()
    }

    /// Server `index`'s share of the packets again, for what is left of
    /// their time (its schedule died with its process).
    fn restart_packets(&self, index: usize, packets_per_sec: u64) -> Option<String> {
        let rate = *fleet::packet_rates(packets_per_sec, self.servers.len()).get(index)?;
        let left = self
            .packets_until?
            .saturating_duration_since(Instant::now())
            .as_secs();
        if rate == 0 || left == 0 {
            return None;
        }
        let s = &self.servers[index];
        Some(match self.send_packets(s, rate, rate * left) {
            Ok(()) => format!(
                "{}'s packets sent again: {rate}/s for the {left} s left",
                s.name
            ),
            Err(e) => format!("{}'s packets could not be sent again: {e}", s.name),
        })
    }

    fn redis(&mut self) -> Option<&mut Redis> {
        self.redis.as_mut()
    }
}

impl Run {
    /// `/fahongbao` on server `s`: `sum` packets at `rate`, to any of the
    /// users.
    fn send_packets(&self, s: &Server, rate: u64, sum: u64) -> Result<(), String> {
        let target = format!(
            "/fahongbao?qps={rate}&sum={sum}&min=0&max={}",
            self.users.saturating_sub(1)
        );
        let answer =
            crate::http::get_with_token(&s.http, &target, PACKETS_START_TIMEOUT, Some(&self.token));
        // A refusal (401, 400) is an answer too: only a 200 started them.
        answer.and_then(|(status, body)| match status {
            200 => Ok(()),
            _ => Err(format!("{status} {body}")),
        })
    }

    /// One CPU sample of every server process, a killed one's last sample
    /// kept.
    fn sample_cpu(&mut self) {
        let mut total = 0;
        let mut any = false;
        for s in &mut self.servers {
            if let Some(c) = &s.current
                && let Ok(us) = procfs::process_cpu_us(c.pid())
            {
                s.cpu_last_us = us;
                any = true;
            }
            total += s.cpu_retired_us + s.cpu_last_us;
        }
        if any {
            self.cpu.push(CpuSample {
                unix: unix_now(),
                cpu_us: total,
            });
        }
    }

    /// Every running server's memory (RSS) added up; None when one cannot
    /// be read.
    fn servers_rss(&self) -> Option<u64> {
        self.servers
            .iter()
            .filter_map(|s| s.current.as_ref())
            .map(|c| procfs::process_rss_bytes(c.pid()).ok())
            .sum()
    }
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
    let plan = plan::plan(&machine, &args.wish())?;
    let faults = match args.nodes {
        None => None,
        Some(n) if !(2..=fleet::NODES_MAX).contains(&n) => bail!(
            "--nodes {n}: a fleet here has 2..={} nodes (the fault schedule kills node 2)",
            fleet::NODES_MAX
        ),
        Some(_) if plan.shaking_secs() < fleet::SHAKING_SECS_MIN => bail!(
            "--nodes needs at least {} s of shaking for its faults and their recovery; the \
             phases give {} s: raise --duration or the phases' lengths",
            fleet::SHAKING_SECS_MIN,
            plan.shaking_secs()
        ),
        Some(_) => Some(FaultPlan::new(plan.shaking_secs())),
    };
    print_plan(args, &plan, faults.as_ref());
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
    let ports = Ports::pick(&machine, &plan, args.nodes)?;
    // Stopped when dropped: after the servers on every path out (they are
    // declared later, so dropped first).
    let redis = match args.nodes {
        Some(_) => Some(start_redis(args, &machine, &out)?),
        None => None,
    };
    let mut run = Launch {
        args,
        plan: &plan,
        exe: &exe,
        out: &out,
        ports: &ports,
        redis: redis.as_ref(),
        stop,
    }
    .start(token)?;
    run.redis = redis;
    run.faults = faults.map(Faults::new);
    let ended = watch(args, &plan, &mut run, stop);
    finish(&machine, &plan, run, started, ended)
}

/// The fleet's Redis Cluster, on `--redis-port` or the first free ports.
fn start_redis(args: &DemoArgs, machine: &Machine, out: &Path) -> anyhow::Result<Redis> {
    let base = match args.redis_port {
        Some(p) => p,
        None => redis::free_base(
            machine
                .ephemeral_ports
                .map_or(plan::EPHEMERAL_LOW_DEFAULT, |(low, _)| low),
        )?,
    };
    println!(
        "starting the Redis Cluster: {} primaries x {} replica on 127.0.0.1:{}..{} (tools/cluster.sh, logs in {})",
        redis::PRIMARIES,
        redis::REPLICAS,
        base,
        base + redis::NODES - 1,
        out.join("logs").display()
    );
    Redis::up(out, base).context("starting the Redis Cluster")
}

/// The pre-flight checks and the plan, as printed before the run.
fn print_plan(args: &DemoArgs, plan: &Plan, faults: Option<&FaultPlan>) {
    println!("hongbao demo: checking the machine");
    print!("{}", summary::checks_table(&plan.checks));
    println!(
        "plan: {} users over {} flooder(s); then {}; {} envelopes/s, {} packets/s",
        plan.users,
        plan.flooders.len(),
        plan.phases
            .iter()
            .map(PhaseSpec::in_words)
            .collect::<Vec<_>>()
            .join(", "),
        args.envelopes_per_sec,
        args.packets_per_sec,
    );
    if let (Some(n), Some(f)) = (args.nodes, faults) {
        println!(
            "fleet: {n} hongbao nodes on a Redis Cluster of {} primaries x {} replica; every flooder on every node (user u on node u mod {n} first); the fleet's envelope budget; packets from every node to users on any node",
            redis::PRIMARIES,
            redis::REPLICAS
        );
        println!("faults (seconds into the shaking): {}", f.describe());
    }
}

/// The control token's file in the output directory: the server's and the
/// flooders' `--control-token-file`, so the run exercises the guarded
/// routes as an operator would.
const CONTROL_TOKEN_FILE: &str = "control-token";
/// Random bytes in the demo's control token: 192 bits, past guessing, and
/// 48 hex characters, within the lengths a control token may have.
const CONTROL_TOKEN_BYTES: usize = 24;

/// Writes a fresh control token ([`CONTROL_TOKEN_BYTES`] from the OS, as
/// hex) to `path`, readable by its owner only, and returns it.
fn write_control_token(path: &Path) -> anyhow::Result<crate::http::ControlToken> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut bytes = [0u8; CONTROL_TOKEN_BYTES];
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
    /// Each server's shakes port (`--listen`) and HTTP control: the
    /// server's, or every node's in id order.
    servers: Vec<(u16, u16)>,
    /// The monitor's dashboard.
    monitor_http: u16,
    /// Each flooder's HTTP control.
    flooders: Vec<u16>,
}

impl Ports {
    /// The preferred ports where free (a fleet's nodes counting up from
    /// the server's), the first flooder's default counting up for the
    /// others.
    fn pick(machine: &Machine, plan: &Plan, nodes: Option<u32>) -> anyhow::Result<Ports> {
        let [listen, http, monitor, first_flooder] = PREFERRED_PORTS;
        let servers = nodes.unwrap_or(1) as u16;
        let preferred = [
            (0..servers).map(|i| listen + i).collect::<Vec<_>>(),
            (0..servers).map(|i| http + i).collect(),
            vec![monitor],
            (0..plan.flooders.len() as u16)
                .map(|i| first_flooder + i)
                .collect(),
        ]
        .concat();
        let mut ports =
            plan::pick_ports(&preferred, machine.ephemeral_ports.map(|(low, _)| low))?.into_iter();
        let mut next_port = || ports.next().expect("one port per process was picked");
        let listens: Vec<u16> = (0..servers).map(|_| next_port()).collect();
        let https: Vec<u16> = (0..servers).map(|_| next_port()).collect();
        let monitor_http = next_port();
        let flooders = plan.flooders.iter().map(|_| next_port()).collect();
        Ok(Ports {
            servers: listens.into_iter().zip(https).collect(),
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
    /// `--nodes`: the fleet's Redis Cluster, running.
    redis: Option<&'a Redis>,
    stop: &'a AtomicBool,
}

/// The files of one server (or node) of the run, relative to the output
/// directory.
struct ServerFiles {
    name: String,
    node_id: Option<u32>,
    data: String,
    hlog: String,
    stats: String,
}

impl ServerFiles {
    /// Server `index`'s: the single server's names of old, `node-I` ones in
    /// a fleet.
    fn of(index: usize, fleet: bool) -> ServerFiles {
        if !fleet {
            return ServerFiles {
                name: "server".into(),
                node_id: None,
                data: "data".into(),
                hlog: "server.hlog".into(),
                stats: "server-seconds.jsonl".into(),
            };
        }
        let id = index as u32 + 1;
        ServerFiles {
            name: format!("node-{id}"),
            node_id: Some(id),
            data: format!("data/node-{id}"),
            hlog: format!("node-{id}.hlog"),
            stats: format!("node-{id}-seconds.jsonl"),
        }
    }

    /// The latency log of the process started again after a kill.
    fn restart_hlog(&self) -> String {
        format!("{}-restarted.hlog", self.name)
    }
}

impl Launch<'_> {
    /// A path in the output directory, as a command-line argument.
    fn file(&self, name: &str) -> String {
        self.out.join(name).display().to_string()
    }

    /// Starts the server (or every node of the fleet, then sets the
    /// fleet's envelope budget), the monitor and the flooders, each once
    /// the previous answers. On error every child started so far is
    /// stopped (by `Drop`).
    fn start(&self, token: crate::http::ControlToken) -> anyhow::Result<Run> {
        let (plan, ports) = (self.plan, self.ports);
        let key_file = self.out.join(AUTH_KEY_FILE);
        if !key_file.exists() {
            crate::token::add_new_key(&key_file, 1).context("making the demo's login key")?;
        }
        let fleet = self.redis.is_some();
        println!(
            "starting {} on {} (logs in {})",
            if fleet {
                format!("{} hongbao nodes", ports.servers.len())
            } else {
                "the server".to_owned()
            },
            ports
                .servers
                .iter()
                .map(|&(listen, _)| loopback(listen))
                .collect::<Vec<_>>()
                .join(", "),
            self.out.join("logs").display()
        );
        let servers = self.start_servers(fleet)?;
        if fleet && self.args.envelopes_per_sec > 0 {
            self.set_budget(&servers[0].http, &token)?;
        }

        let mut run = Run {
            out: self.out.to_path_buf(),
            exe: self.exe.to_path_buf(),
            server_cores: plan.server_cores.clone(),
            servers,
            monitor: None,
            flooders: Vec::new(),
            token,
            flooder_http: ports.flooders.iter().map(|&p| loopback(p)).collect(),
            users: plan.users,
            cpu: Vec::new(),
            rss_before: None,
            rss_after: None,
            redis: None,
            faults: None,
            packets_until: None,
            node_status: Vec::new(),
        };
        run.rss_before = run.servers_rss();

        let mut monitor = Child::spawn(
            "monitor",
            self.exe,
            &self.monitor_args(&run.servers),
            &plan.flooder_cores,
            self.out.join("logs/monitor.log"),
        )?;
        wait_answering(&mut monitor, &loopback(ports.monitor_http), "/", self.stop)?;
        run.monitor = Some(monitor);
        println!("live dashboard: http://{}/", loopback(ports.monitor_http));

        run.flooders = plan
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
        Ok(run)
    }

    /// Starts the server, or every node of the fleet, and waits until each
    /// answers (a node also until its engine does). A failure stops those
    /// started so far (their `Drop`).
    fn start_servers(&self, fleet: bool) -> anyhow::Result<Vec<Server>> {
        let (plan, ports) = (self.plan, self.ports);
        let mut servers = Vec::with_capacity(ports.servers.len());
        for (i, &(listen, http)) in ports.servers.iter().enumerate() {
            let f = ServerFiles::of(i, fleet);
            let args = self.server_args(&f, listen, http, &f.hlog);
            let child = Child::spawn(
                &f.name,
                self.exe,
                &args,
                &plan.server_cores,
                self.out.join(format!("logs/{}.log", f.name)),
            )?;
            servers.push(Server {
                restart_args: self.server_args(&f, listen, http, &f.restart_hlog()),
                restart_log: self.out.join(format!("logs/{}-restarted.log", f.name)),
                stats: self.out.join(&f.stats),
                hlogs: vec![self.out.join(&f.hlog)],
                restart_hlog: self.out.join(f.restart_hlog()),
                name: f.name,
                node_id: f.node_id,
                listen: loopback(listen),
                http: loopback(http),
                current: Some(child),
                retired: Vec::new(),
                cpu_retired_us: 0,
                cpu_last_us: 0,
            });
        }
        for s in &mut servers {
            let child = s.current.as_mut().expect("just started");
            wait_answering(child, &s.http, "/status", self.stop)?;
            if s.node_id.is_some() {
                wait_engine(child, &s.http, self.stop)?;
            }
        }
        Ok(servers)
    }

    /// `/yaohongbao` on a node: the fleet's envelope budget, the rate for
    /// the whole run (its connect phase's allowance included), shared by
    /// the nodes through their leases.
    fn set_budget(&self, http: &str, token: &crate::http::ControlToken) -> anyhow::Result<()> {
        let secs = FLOOD_LOGIN_TIMEOUT_SECS + FLOOD_WARMUP_SECS + self.plan.shaking_secs();
        let rate = self.args.envelopes_per_sec;
        let target = format!("/yaohongbao?qps={rate}&sum={}", rate * secs);
        match crate::http::get_with_token(http, &target, PACKETS_START_TIMEOUT, Some(token)) {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => {
                bail!("setting the fleet's envelope budget ({target}): {status} {body}")
            }
            Err(e) => bail!("setting the fleet's envelope budget ({target}): {e}"),
        }
    }

    /// A server's (or node's) command line, its latency log `hlog`.
    fn server_args(&self, f: &ServerFiles, listen: u16, http: u16, hlog: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "server",
            "--listen",
            &loopback(listen),
            "--http",
            &loopback(http),
            "--threads",
            &self.plan.server_threads.to_string(),
            "--data-dir",
            &self.file(&f.data),
            "--hlog",
            &self.file(hlog),
            "--stats-jsonl",
            &self.file(&f.stats),
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
        .to_vec();
        match (self.redis, f.node_id) {
            // In a fleet the envelopes come from the fleet's budget
            // (`set_budget`), leased by each node.
            (Some(redis), Some(id)) => args.extend([
                "--cluster".to_owned(),
                redis.urls(),
                "--node-id".to_owned(),
                id.to_string(),
            ]),
            _ => args.extend([
                "--envelopes-per-sec".to_owned(),
                self.args.envelopes_per_sec.to_string(),
            ]),
        }
        args
    }

    /// The monitor's command line: every server as a source (the flooders
    /// register themselves), every interval log for the report but those
    /// of a node the fault schedule kills (its first log ends torn, its
    /// second exists only if it is started again).
    fn monitor_args(&self, servers: &[Server]) -> Vec<String> {
        let mut args: Vec<String> = ["monitor"].map(String::from).to_vec();
        for s in servers {
            args.push("--source".into());
            args.push(s.http.clone());
        }
        args.extend(
            [
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
                "--quiet",
            ]
            .map(String::from),
        );
        let victim = self
            .redis
            .map(|_| FaultPlan::new(self.plan.shaking_secs()).node);
        for s in servers
            .iter()
            .filter(|s| s.node_id.is_none() || s.node_id != victim)
        {
            args.push("--hlog".into());
            args.push(format!("{}={}", s.name, s.hlogs[0].display()));
        }
        for i in 0..self.plan.flooders.len() {
            args.push("--hlog".into());
            args.push(format!(
                "client-{i}={}",
                self.file(&format!("flood-{i}.hlog"))
            ));
        }
        args
    }

    /// Flooder `i`'s command line: every server (node) as `--server`.
    fn flood_args(&self, i: usize, f: &FlooderPlan, port: u16) -> Vec<String> {
        let servers: Vec<String> = self
            .ports
            .servers
            .iter()
            .map(|&(listen, _)| loopback(listen))
            .collect();
        [
            "flood",
            "--server",
            &servers.join(","),
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

/// Waits until a node's `/status` says it reaches the cluster's engine, or
/// fails naming why.
fn wait_engine(child: &mut Child, addr: &str, stop: &AtomicBool) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let status = crate::http::get(addr, "/status", POLL_TIMEOUT)
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok());
        if let Some(v) = &status
            && v["cluster"]["available"].as_bool() == Some(true)
        {
            return Ok(());
        }
        if let Some(status) = child.exited() {
            bail!(
                "the {} {} at start:\n{}",
                child.name,
                describe(status),
                child.log_tail(LOG_TAIL_LINES)
            );
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted while the {} was starting", child.name);
        }
        if Instant::now() >= deadline {
            bail!(
                "the {} did not reach the cluster's engine within {} s (its /status: {}); its log ({}) ends:\n{}",
                child.name,
                START_TIMEOUT.as_secs(),
                status.map_or_else(|| "no answer".to_owned(), |v| v["cluster"].to_string()),
                child.log.display(),
                child.log_tail(LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(START_POLL);
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
    /// Flooders whose connect phase is over, settling before the shaking.
    connected: usize,
    shaking: usize,
    done: usize,
    logged_in: u64,
    step_second: Option<u64>,
    /// The flooders' first second, Unix (the earliest reported).
    start_unix: Option<u64>,
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
            // Its connect phase is over: its users are in, settling.
            Some("connected") => {
                self.connected += 1;
                self.logged_in += n(v, "logged_in");
            }
            Some("shaking") => {
                self.shaking += 1;
                self.logged_in += n(v, "connections");
                self.step_second = v["second"].as_u64();
                if let Some(start) = v["start_unix"].as_u64() {
                    self.start_unix = Some(self.start_unix.map_or(start, |s| s.min(start)));
                }
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
/// fails, or a signal asks to stop; shows progress, sends the packets and,
/// in a fleet, runs the fault schedule.
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

        run.sample_cpu();
        let live = poll_flooders(run);
        // Every flooder shaking: every user is in; the servers' memory now
        // holds every connection.
        if live.shaking == run.flooders.len() && run.rss_after.is_none() {
            run.rss_after = run.servers_rss();
        }
        if live.shaking > 0 && !packets_sent && args.packets_per_sec > 0 {
            packets_sent = true;
            start_packets(args, plan, run);
        }
        if let Some(start) = live.start_unix
            && let Some(faults) = run.faults.as_mut()
        {
            faults.shaking_starts_at((start + FLOOD_WARMUP_SECS) as f64);
        }
        if let Some(mut faults) = run.faults.take() {
            let stepped = faults.step(run, args.packets_per_sec);
            let waiting = faults.waiting();
            run.faults = Some(faults);
            match stepped {
                Ok(lines) => {
                    for line in lines {
                        if tty {
                            eprint!("\r{:<PROGRESS_WIDTH$}\r", "");
                        }
                        eprintln!("fault {line}");
                    }
                }
                Err(why) => {
                    if tty {
                        eprintln!();
                    }
                    return Ended::Failed(why);
                }
            }
            if waiting {
                // Look again soon: the step waits on a failover or a start.
                print_progress(plan, &live, started, tty, &mut last_line);
                std::thread::sleep(FAULT_POLL);
                continue;
            }
        }
        print_progress(plan, &live, started, tty, &mut last_line);
        // Poll just after each whole second, when the flooders have closed
        // the previous one.
        let frac = unix_now().fract();
        let wait = (1.0 + POLL_AFTER_SECOND_SECS - frac)
            .rem_euclid(1.0)
            .max(POLL_WAIT_MIN_SECS);
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
}

/// Prints the progress line: in place on a terminal, every
/// [`PROGRESS_EVERY`] to a log.
fn print_progress(
    plan: &Plan,
    live: &Live,
    started: Instant,
    tty: bool,
    last_line: &mut Option<Instant>,
) {
    let line = progress_line(plan, live, started.elapsed().as_secs());
    if tty {
        eprint!("\r{line:<PROGRESS_WIDTH$}");
    } else if last_line.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
        eprintln!("{line}");
        *last_line = Some(Instant::now());
    }
}

/// How the run ended, if a child's exit ended it: a server (other than
/// one the fault schedule killed) or the monitor exited, a flooder failed,
/// or every flooder finished.
fn children_ended(run: &mut Run) -> Option<Ended> {
    for s in &mut run.servers {
        if let Some(c) = s.current.as_mut()
            && let Some(status) = c.exited()
        {
            return Some(Ended::Failed(format!(
                "the {} {} during the run; its log ends:\n{}",
                s.name,
                describe(status),
                c.log_tail(LOG_TAIL_LINES)
            )));
        }
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
/// `/fahongbao`), to any of the users; a failure is only a warning. A
/// fleet's nodes each send their share, ending a little before the
/// shaking so that the last ones are claimed.
fn start_packets(args: &DemoArgs, plan: &Plan, run: &mut Run) {
    let fleet = run.redis.is_some();
    let secs = if fleet {
        plan.shaking_secs()
            .saturating_sub(fleet::PACKETS_END_MARGIN_SECS)
            .max(1)
    } else {
        plan.shaking_secs()
    };
    run.packets_until = Some(Instant::now() + Duration::from_secs(secs));
    let rates = fleet::packet_rates(args.packets_per_sec, run.servers.len());
    for (s, rate) in run.servers.iter().zip(rates) {
        if rate == 0 {
            continue;
        }
        if let Err(e) = run.send_packets(s, rate, rate * secs) {
            eprintln!(
                "hongbao demo: warning: starting the packets on the {} failed: {e}",
                s.name
            );
        }
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
            "{elapsed:>4}s  phase 1/{phases_total} connect  logged in {:>6}/{}{}",
            live.logged_in,
            plan.users,
            if live.connected > 0 && live.connected == plan.flooders.len() {
                "  settling"
            } else {
                ""
            }
        )
    }
}

/// How each child ended, as stopping them found it.
struct Ends {
    flooders: Vec<ExitStatus>,
    monitor: Option<ExitStatus>,
    /// Each server's running process, None when it had none.
    servers: Vec<Option<ExitStatus>>,
}

/// Stops the children in order, audits, writes and prints the summary; a
/// fleet's Redis Cluster is stopped after the audit.
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
    if failure.is_none()
        && let Some((s, status)) = run
            .servers
            .iter()
            .zip(&ends.servers)
            .find_map(|(s, e)| e.filter(|st| !st.success()).map(|st| (s, st)))
    {
        failure = Some(format!(
            "the {} {} at shutdown; its log ends:\n{}",
            s.name,
            describe(status),
            s.log_tail()
        ));
    }
    let mut redis = run.redis.take();
    if let (Some(faults), Some(redis)) = (run.faults.as_mut(), redis.as_mut()) {
        for line in faults.settle(redis) {
            eprintln!("fault {line}");
        }
    }
    let audit = match &redis {
        Some(r) => audit_fleet_books(&out, plan, &run, r),
        None => audit_ledger(&out, plan),
    };
    let cluster = redis.as_mut().map(|r| {
        // The audit has read the engine: the cluster can go.
        if let Err(e) = r.down() {
            eprintln!("hongbao demo: stopping the Redis Cluster: {e:#}");
        }
        cluster_summary(plan, &run, r)
    });
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
        cluster,
        children: child_summaries(&run, ends),
        files: files_written(&out, plan, &run),
    };
    let verdict = verdict::judge(&summary, crate::host::cpu_model());
    let summary_path = out.join("summary.json");
    let file = SummaryFile {
        summary: &summary,
        verdict: &verdict,
    };
    std::fs::write(&summary_path, serde_json::to_vec_pretty(&file)?)
        .with_context(|| format!("writing {}", summary_path.display()))?;
    put_verdict_in_report(&out.join("report.html"), &summary, &verdict);
    print_end(&out, &summary, &verdict, &summary_path);
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
/// the servers (a fleet's nodes' `/status` read first).
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
    let fleet = run.redis.is_some();
    println!(
        "stopping: monitor (writing the report), then {}",
        if fleet { "the nodes" } else { "server" }
    );
    let monitor = run.monitor.as_mut().map(|m| m.stop(MONITOR_STOP_GRACE));
    if fleet {
        run.node_status = run
            .servers
            .iter()
            .map(|s| {
                crate::http::get(&s.http, "/status", POLL_TIMEOUT)
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .map_or(Value::Null, |v| v["cluster"].clone())
            })
            .collect();
    }
    let servers = run
        .servers
        .iter_mut()
        .map(|s| s.current.as_mut().map(|c| c.stop(STOP_GRACE)))
        .collect();
    Ends {
        flooders,
        monitor,
        servers,
    }
}

/// The flooders' acknowledgement logs that exist.
fn ack_logs(out: &Path, plan: &Plan) -> Vec<PathBuf> {
    (0..plan.flooders.len())
        .map(|i| out.join(format!("acks-{i}.log")))
        .filter(|p| p.exists())
        .collect()
}

/// Audits the ledger against the flooders' acknowledgements.
fn audit_ledger(out: &Path, plan: &Plan) -> AuditOutcome {
    match audit(&AuditArgs {
        data_dir: vec![out.join("data")],
        cluster: None,
        ack_log: ack_logs(out, plan),
        json: false,
    }) {
        Ok(report) => AuditOutcome {
            ok: true,
            error: None,
            report: Some(report),
            fleet: None,
        },
        Err(e) => AuditOutcome {
            ok: false,
            error: Some(format!("{e:#}")),
            report: None,
            fleet: None,
        },
    }
}

/// The fleet audit: every node's ledger against the engine, and the
/// flooders' acknowledgements against the ledgers.
fn audit_fleet_books(out: &Path, plan: &Plan, run: &Run, redis: &Redis) -> AuditOutcome {
    let data_dir = (0..run.servers.len())
        .map(|i| out.join(ServerFiles::of(i, true).data))
        .collect();
    match audit_fleet(&AuditArgs {
        data_dir,
        cluster: Some(redis.urls()),
        ack_log: ack_logs(out, plan),
        json: false,
    }) {
        Ok(report) => AuditOutcome {
            ok: true,
            error: None,
            report: None,
            fleet: Some(report),
        },
        Err(e) => AuditOutcome {
            ok: false,
            error: Some(format!("the fleet audit: {e:#}")),
            report: None,
            fleet: None,
        },
    }
}

/// The fleet's part of the summary.
fn cluster_summary(plan: &Plan, run: &Run, redis: &Redis) -> ClusterSummary {
    let flooder_json: Vec<PathBuf> = (0..plan.flooders.len())
        .map(|i| run.out.join(format!("flood-{i}.json")))
        .collect();
    ClusterSummary {
        nodes: run.servers.len() as u32,
        node_addrs: run.servers.iter().map(|s| s.listen.clone()).collect(),
        redis: RedisSummary {
            ports: redis.ports().collect(),
            primaries: redis::PRIMARIES,
            replicas: redis::REPLICAS,
            node_timeout_ms: redis::node_timeout_ms(),
            pids: redis.pids().to_vec(),
        },
        faults: run
            .faults
            .as_ref()
            .map(|f| f.events.clone())
            .unwrap_or_default(),
        clients: summary::fleet_clients(&flooder_json).unwrap_or_default(),
        node_status: run.node_status.clone(),
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
    let server_stats: Vec<PathBuf> = run.servers.iter().map(|s| s.stats.clone()).collect();
    let server_hlogs: Vec<PathBuf> = run
        .servers
        .iter()
        .flat_map(|s| s.hlogs.iter().cloned())
        .collect();
    summary::measure(
        plan,
        &Inputs {
            flooder_json: &flooder_json,
            flooder_hlogs: &flooder_hlogs,
            server_stats: &server_stats,
            server_hlogs: &server_hlogs,
            cpu: &run.cpu,
            rss: (run.rss_before, run.rss_after),
        },
    )
    .map_err(|e| eprintln!("hongbao demo: the results could not be read: {e:#}"))
    .ok()
}

/// Each child's name, pid, end and log: the servers (a killed process
/// before the one started in its place), the flooders, the monitor.
fn child_summaries(run: &Run, ends: Ends) -> Vec<ChildSummary> {
    let mut all: Vec<(&Child, ExitStatus)> = Vec::new();
    for (s, end) in run.servers.iter().zip(ends.servers) {
        all.extend(s.retired.iter().map(|(c, st)| (c, *st)));
        if let (Some(c), Some(st)) = (&s.current, end) {
            all.push((c, st));
        }
    }
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
fn files_written(out: &Path, plan: &Plan, run: &Run) -> Vec<(String, String)> {
    let rel = |p: &Path| p.strip_prefix(out).unwrap_or(p).display().to_string();
    let fleet = run.redis.is_some() || run.faults.is_some();
    let mut files: Vec<(String, String)> = [
        ("report", "report.html"),
        ("summary", "summary.json"),
        ("series", "series.jsonl"),
        ("series (CSV)", "series.csv"),
        ("charts", "charts"),
        ("logs", "logs"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (i, s) in run.servers.iter().enumerate() {
        let f = ServerFiles::of(i, fleet);
        files.push((format!("{} seconds", s.name), rel(&s.stats)));
        for h in &s.hlogs {
            files.push((format!("{} latency log", s.name), rel(h)));
        }
        files.push((
            format!("{} ledger", s.name),
            format!("{}/ledger.log", f.data),
        ));
    }
    if fleet {
        files.push(("Redis Cluster script".into(), "cluster.sh".into()));
    }
    files
        .into_iter()
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

/// `summary.json`: the summary's keys, and the verdict as `verdict`.
#[derive(serde::Serialize)]
struct SummaryFile<'a> {
    #[serde(flatten)]
    summary: &'a Summary,
    verdict: &'a Verdict,
}

/// The block printed at the end: the verdict, a blank line, then the
/// details (the summary table).
fn end_block(summary: &Summary, verdict: &Verdict) -> String {
    format!(
        "{}\n{}",
        verdict::text(verdict, summary),
        summary::table(summary)
    )
}

/// Puts the verdict at the top of the monitor's report (its verdict
/// slot), replacing the file whole (written beside it, then renamed); a
/// report that is missing or cannot be rewritten is only a warning.
fn put_verdict_in_report(report: &Path, summary: &Summary, v: &Verdict) {
    let Ok(page) = std::fs::read_to_string(report) else {
        return;
    };
    let page = crate::monitor::report::with_verdict(&page, &verdict::html(v, summary));
    let tmp = report.with_extension("html.tmp");
    if let Err(e) = std::fs::write(&tmp, page).and_then(|()| std::fs::rename(&tmp, report)) {
        eprintln!(
            "hongbao demo: warning: putting the verdict in {}: {e}",
            report.display()
        );
    }
}

/// The verdict first, then the details (the summary table), then where
/// the report and the summary are.
fn print_end(out: &Path, summary: &Summary, verdict: &Verdict, summary_path: &Path) {
    println!();
    print!("{}", end_block(summary, verdict));
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
        let machine = Machine::for_tests(2, 20_000);
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
    fn the_settle_after_the_connect_phase_shows_every_user_logged_in() {
        let machine = Machine::for_tests(2, 20_000);
        let wish = Wish {
            users: Some(19_000),
            phases: "30000x50s,60000x50s".into(),
            duration: 0,
            threads: None,
            flooders: 2,
        };
        let plan = plan::plan(&machine, &wish).unwrap();
        let mut live = Live::default();
        live.add(&serde_json::json!({"state": "connecting", "second": 1, "logged_in": 4_000}));
        live.add(&serde_json::json!({"state": "connected", "second": 0, "logged_in": 9_500}));
        let line = progress_line(&plan, &live, 3);
        assert!(line.ends_with("logged in  13500/19000"), "{line}");
        // Both flooders past their connect phase: every user is in, settling.
        let mut live = Live::default();
        for _ in 0..2 {
            live.add(&serde_json::json!({"state": "connected", "second": 0, "logged_in": 9_500}));
        }
        let line = progress_line(&plan, &live, 4);
        assert!(
            line.ends_with("phase 1/3 connect  logged in  19000/19000  settling"),
            "{line}"
        );
    }

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(stamp(0), "19700101-000000");
        assert_eq!(stamp(1_795_331_164), "20261122-070604");
    }
}
