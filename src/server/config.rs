//! Server settings: every limit with its default and the reason for it.
//!
//! Owns: `ServerConfig`, parsed by clap for `hongbao server` and built with
//! `ServerConfig::default()` (the same defaults) by tests and embedders.
//! Must not: hold state; checks that need the machine live in `limits`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// `hongbao server` options.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerConfig {
    /// Address every worker listens on, each with its own SO_REUSEPORT socket.
    /// Port 1025 is the original's.
    #[arg(long, env = "HONGBAO_SERVER_LISTEN", default_value = "0.0.0.0:1025")]
    pub listen: SocketAddr,

    /// Worker threads, one per core, each pinned. Default: the cores this
    /// process may run on (so `taskset -c 0` gives one).
    #[arg(long, env = "HONGBAO_SERVER_THREADS")]
    pub threads: Option<usize>,

    /// Do not pin workers to cores (for hosts where another process owns them).
    #[arg(long, env = "HONGBAO_SERVER_NO_PIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_pin: bool,

    /// listen(2) backlog per worker. The kernel caps it at net.core.somaxconn;
    /// 65535 absorbs a reconnect storm of a million clients without SYN drops
    /// on a tuned host.
    #[arg(long, env = "HONGBAO_SERVER_BACKLOG", default_value_t = 65_535)]
    pub backlog: i32,

    /// Connections the server plans for: split evenly over workers, each of
    /// which stops accepting at its share. A connection costs ~4.3 KB of kernel
    /// memory and under 100 B here, so 1M needs ~4.5 GB.
    #[arg(long, env = "HONGBAO_SERVER_CONNS_MAX", default_value_t = 1_000_000)]
    pub conns_max: usize,

    /// Shakes per second the whole server answers before it says "overloaded"
    /// (result 17), split evenly over workers; claims use the same budget.
    /// The last resort: --conn-qps-max keeps one client from taking it all.
    /// Set it below the measured
    /// saturation of the host (see docs/BENCHMARKS.md) so overload is cheap
    /// refusals, not queues; the default is above what 8 cores can reach.
    #[arg(
        long = "max-qps",
        env = "HONGBAO_SERVER_MAX_QPS",
        value_name = "MAX_QPS",
        default_value_t = 2_000_000
    )]
    pub shakes_per_sec_max: u64,

    /// Requests per second one connection is served (logins, shakes, claims
    /// alike), after a burst of `max(32, this)`: a token bucket per
    /// connection (8 bytes in its slot). A connection past it is not read
    /// until its bucket refills (its requests wait in its own socket, unread),
    /// so a pipelining client slows itself, not its core's other users; the
    /// core-wide --max-qps stays as the last resort. The original client
    /// sends one request a second. Raise it for the flooder's high-rate modes
    /// (requests per user per second above 10); 0 turns the limit off.
    #[arg(long, env = "HONGBAO_SERVER_CONN_QPS_MAX", default_value_t = CONN_QPS_MAX_DEFAULT)]
    pub conn_qps_max: u64,

    /// Connections one user may hold at once, so a user is read at most
    /// this x --conn-qps-max requests a second however many connections
    /// they open (beside each new connection's first burst). A login past it closes the user's OLDEST connection (counted as
    /// user_conns_kicked), not the new one, so a client reconnecting before
    /// its old socket timed out gets in. 4 leaves room for the one
    /// connection the original client holds, a reconnect or two whose old
    /// socket is not yet gone, and a second device. 0 turns the limit off.
    #[arg(long, env = "HONGBAO_SERVER_USER_CONNS_MAX", default_value_t = 4)]
    pub user_conns_max: usize,

    /// Shake envelopes generated per second at start (the seed's 200).
    /// 0 starts with no batch; `GET /yaohongbao` starts one later.
    #[arg(long, env = "HONGBAO_SERVER_ENVELOPES_PER_SEC", default_value_t = 200)]
    pub envelopes_per_sec: u64,

    /// Stop after this many envelopes (default: run until replaced).
    #[arg(long, env = "HONGBAO_SERVER_ENVELOPE_TOTAL")]
    pub envelope_total: Option<u64>,

    /// Smallest envelope amount in cents (the original's 10).
    #[arg(long, env = "HONGBAO_SERVER_ENVELOPE_CENTS_MIN", default_value_t = 10)]
    pub envelope_cents_min: u64,

    /// Largest envelope amount in cents (the original's 309).
    #[arg(long, env = "HONGBAO_SERVER_ENVELOPE_CENTS_MAX", default_value_t = 309)]
    pub envelope_cents_max: u64,

    /// Seed for envelope amounts, packet amounts, targets and splits, so a
    /// run can be replayed. Default: drawn from the OS's randomness at
    /// start (and printed, so that run can be replayed too), so amounts are
    /// not the same in every run.
    #[arg(long, env = "HONGBAO_SERVER_SEED")]
    pub seed: Option<u64>,

    /// Directory of the ledger (`ledger.log`): every movement of money,
    /// made durable before it is answered, replayed at start. Without it the
    /// server keeps money in memory only and answers at once (benchmarks,
    /// tests of the loop).
    #[arg(long, env = "HONGBAO_SERVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Seconds a sent packet may be claimed; then what nobody claimed is
    /// refunded. A day, as WeChat does.
    #[arg(long, env = "HONGBAO_SERVER_PACKET_TTL", default_value_t = 86_400)]
    pub packet_ttl: u64,

    /// Seconds an envelope may wait in a ring; then it is returned. A day.
    #[arg(long, env = "HONGBAO_SERVER_ENVELOPE_TTL", default_value_t = 86_400)]
    pub envelope_ttl: u64,

    /// Pushes kept for a user who is offline, delivered at their next login;
    /// more are dropped (counted). Bounds the memory a packet storm to absent
    /// users can take.
    #[arg(long, env = "HONGBAO_SERVER_MAILBOX_MAX", default_value_t = 16)]
    pub mailbox_max: usize,

    /// Envelopes each core's ring holds. 65,536 is over five minutes of the
    /// default rate per core; when all rings are full the generator waits.
    #[arg(long, env = "HONGBAO_SERVER_RING_CAPACITY", default_value_t = 65_536)]
    pub ring_capacity: usize,

    /// Bytes of answers a connection may leave unread (beyond what its
    /// kernel send buffer, --send-buffer, holds) before it is disconnected.
    /// 64 KiB is ~2,300 shake answers: far beyond any honest pipeline. A
    /// connection whose answers are backed up is not read, so a stalled
    /// reader holds at most this (its buffer's capacity at most twice it)
    /// plus its kernel buffers (2 x --send-buffer + 2 x --recv-buffer, Linux
    /// doubling both): with the defaults under 200 KiB, so 1M stalled readers
    /// hold under 200 GB, the kernel's part also capped by net.ipv4.tcp_mem.
    /// Disconnected at once past this, or --stall-timeout after its output
    /// first backs up.
    #[arg(long, env = "HONGBAO_SERVER_OUTBOUND_MAX", default_value_t = 65_536)]
    pub outbound_max: usize,

    /// Seconds a connection's answers may stay backed up (the kernel took
    /// not all of them, and it did not read them since) before it is
    /// disconnected as a stalled reader (counted in evictions).
    #[arg(long, env = "HONGBAO_SERVER_STALL_TIMEOUT", default_value_t = 3.0)]
    pub stall_timeout: f64,

    /// SO_SNDBUF of every accepted connection, in bytes (set on the
    /// listeners, which the kernel copies to each accepted socket; Linux
    /// doubles it and stops autotuning it). Bounds the kernel memory a
    /// connection that stops reading holds: 16 KiB gives 32 KiB, about 1,100
    /// shake answers. 0 leaves the kernel's autotuning (up to
    /// net.ipv4.tcp_wmem's maximum, 4 MiB by default).
    #[arg(long, env = "HONGBAO_SERVER_SEND_BUFFER", default_value_t = 16_384)]
    pub send_buffer: usize,

    /// SO_RCVBUF of every accepted connection, in bytes, set like
    /// --send-buffer (Linux doubles it): bounds the kernel memory of requests
    /// a connection sends while it is not read (paused or over
    /// --conn-qps-max). 0 leaves the kernel's autotuning (up to
    /// net.ipv4.tcp_rmem's maximum, 6 MiB by default).
    #[arg(long, env = "HONGBAO_SERVER_RECV_BUFFER", default_value_t = 16_384)]
    pub recv_buffer: usize,

    /// Seconds a new connection has to log in before it is closed, so that
    /// half-open or silent sockets do not hold descriptors.
    #[arg(long, env = "HONGBAO_SERVER_LOGIN_TIMEOUT", default_value_t = 10.0)]
    pub login_timeout: f64,

    /// Keys that sign logins (cmd 16): one `ID:HEX` line per key (a u32 id,
    /// 32 bytes in hex), at most 4, all accepted, so a new key and the one
    /// it replaces live side by side. Mode 0600 or the start is refused.
    /// Make one with `hongbao token --new-key FILE`. Without it, logins are
    /// v1's, unchecked: anyone can log in as anyone.
    #[arg(long, env = "HONGBAO_SERVER_AUTH_KEY_FILE", value_name = "FILE")]
    pub auth_key_file: Option<PathBuf>,

    /// `required`: only signed logins (a v1 login is answered result 1 and
    /// closed); `off`: v1 logins too, unchecked (signed ones are still
    /// checked). Default: `required` with `--auth-key-file`, else `off`.
    #[arg(long, env = "HONGBAO_SERVER_AUTH", value_enum, value_name = "MODE")]
    pub auth: Option<AuthMode>,

    /// Seconds to keep flushing pending answers after a stop is asked.
    #[arg(long, env = "HONGBAO_SERVER_SHUTDOWN_GRACE", default_value_t = 2.0)]
    pub shutdown_grace: f64,

    /// HTTP control address (`GET /yaohongbao`, `/stats`, `/status`).
    /// Loopback by default: control is not for the open network.
    #[arg(long, env = "HONGBAO_SERVER_HTTP", default_value = "127.0.0.1:8989")]
    pub http: SocketAddr,

    /// Do not serve HTTP control.
    #[arg(long, env = "HONGBAO_SERVER_NO_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_http: bool,

    /// Require `Authorization: Bearer TOKEN` on the HTTP control's mutating
    /// routes (`/yaohongbao`, `/fahongbao`, `/packet`); a request without it
    /// gets a 401, counted. The token is this file's text, trimmed (16..=1024
    /// visible ASCII characters), read at start; the start is refused if the
    /// file is missing, empty or open to other users (`chmod 600`). Read-only
    /// routes stay open.
    #[arg(
        long,
        env = "HONGBAO_SERVER_CONTROL_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "no_http"
    )]
    pub control_token_file: Option<PathBuf>,

    /// Serve the zero-logic reference instead: same loop and frames, every
    /// shake answered "no envelope". The benchmark's floor.
    #[arg(long, env = "HONGBAO_SERVER_REFERENCE", value_parser = clap::builder::BoolishValueParser::new())]
    pub reference: bool,

    /// Append each closed second, as one JSON object per line, to this file.
    #[arg(long, env = "HONGBAO_SERVER_STATS_JSONL")]
    pub stats_jsonl: Option<PathBuf>,

    /// Write service time (frame read to answer handed to write, every core
    /// merged) to this HdrHistogram interval log, one interval per second,
    /// in the flooder's `--hlog` format; `FILE.hgrm` gets the run's
    /// percentile distribution at shutdown.
    #[arg(long, env = "HONGBAO_SERVER_HLOG")]
    pub hlog: Option<PathBuf>,

    /// Do not print a line per second (the start line and summary remain).
    #[arg(long, env = "HONGBAO_SERVER_QUIET", value_parser = clap::builder::BoolishValueParser::new())]
    pub quiet: bool,

    /// Cluster mode: join the red-packet system whose shared state (packets,
    /// claims, presence, pushes, the envelope budget) lives in this Redis
    /// Cluster, given as one or more seed nodes `redis://HOST:PORT`,
    /// comma-separated. Shakes never wait for it. Without it the server is
    /// an island with its own ledger (the default).
    #[arg(long, env = "HONGBAO_SERVER_CLUSTER", value_name = "URLS")]
    pub cluster: Option<String>,

    /// Cluster mode: this node's id, unique in the fleet (1..=65535): its
    /// push stream, its presence entries and its leases carry it. A node
    /// restarted with the same id takes up its stream where it stopped.
    #[arg(long, env = "HONGBAO_SERVER_NODE_ID", requires = "cluster")]
    pub node_id: Option<u32>,

    /// Cluster mode: replicas that must have a claim (Redis `WAIT`) before
    /// it is answered. 1 survives a primary's loss; 0 only for a cluster
    /// without replicas (a test), where a primary's loss can lose claims.
    #[arg(
        long,
        env = "HONGBAO_SERVER_ENGINE_REPLICAS",
        default_value_t = 1,
        requires = "cluster"
    )]
    pub engine_replicas: u32,

    /// Cluster mode: how long a claim may wait for the engine (a failover,
    /// an unreachable cluster) before it is answered 0 (not confirmed: safe
    /// to retry). Above Redis's `cluster-node-timeout` plus a failover.
    #[arg(
        long,
        env = "HONGBAO_SERVER_ENGINE_TIMEOUT",
        default_value_t = 10.0,
        requires = "cluster"
    )]
    pub engine_timeout: f64,
}

/// Whether logins must be signed (`--auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Only signed logins.
    Required,
    /// v1 logins too, unchecked.
    Off,
}

impl ServerConfig {
    /// Whether logins must be signed: `--auth`, or by default whether a key
    /// is configured.
    pub fn signed_logins_required(&self) -> bool {
        match self.auth {
            Some(mode) => mode == AuthMode::Required,
            None => self.auth_key_file.is_some(),
        }
    }
}

#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    config: ServerConfig,
}

impl Default for ServerConfig {
    /// The command line's defaults, from the one place they are written;
    /// never the environment's `HONGBAO_SERVER_*` (a test or an embedder
    /// gets the same settings in every shell).
    fn default() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = crate::environment::without_env(DefaultsOnly::command());
        match cmd
            .try_get_matches_from(["hongbao"])
            .and_then(|m| DefaultsOnly::from_arg_matches(&m))
        {
            Ok(defaults) => defaults.config,
            // Unreachable unless a default does not parse, which every
            // test that builds a config would show at once.
            Err(e) => e.exit(),
        }
    }
}

/// `--conn-qps-max`'s default: ten times the original client's one request
/// a second, so an honest client is never throttled while a pipelining one
/// is held to its share. The demo plans its rates on top of it.
pub(crate) const CONN_QPS_MAX_DEFAULT: u64 = 10;
/// The largest `--node-id`: u16's range, far more nodes than a fleet has.
/// The smallest is 1, since 0 stands for no node (a server without
/// `--cluster`).
const NODE_ID_MAX: u32 = u16::MAX as u32;
/// The longest login timeout or shutdown grace accepted, in seconds.
const TIMEOUT_SECS_MAX: f64 = 3600.0;
/// The longest packet or envelope TTL accepted, in seconds: half the u32
/// range, about 68 years. Deadlines are kept as u32 Unix seconds, and today
/// plus this still fits in one.
const TTL_SECS_MAX: u64 = u32::MAX as u64 / 2;

/// A setting that cannot work, and why.
#[derive(Debug, thiserror::Error)]
#[error("--{option}: {why}")]
pub struct ConfigError {
    /// The option at fault.
    pub option: &'static str,
    /// What is wrong with it.
    pub why: String,
}

impl ServerConfig {
    /// Checks the settings that would otherwise fail later, or silently.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |option, why: &str| {
            Err(ConfigError {
                option,
                why: why.to_string(),
            })
        };
        if self.threads == Some(0) {
            return err("threads", "needs at least one worker");
        }
        if self.envelope_cents_min == 0 || self.envelope_cents_min > self.envelope_cents_max {
            return err(
                "envelope-cents-min",
                "must be at least 1 and at most --envelope-cents-max",
            );
        }
        if self.envelope_cents_max > u64::from(u32::MAX) {
            return err("envelope-cents-max", "must fit the wire's u32 amount field");
        }
        if self.ring_capacity == 0 {
            return err("ring-capacity", "must be at least 1");
        }
        if self.backlog <= 0 {
            return err("backlog", "must be positive");
        }
        // Deadlines are wrapping u32 milliseconds, valid within 24 days; an
        // hour is far beyond any sensible timeout and keeps every sum finite.
        if !(self.login_timeout > 0.0 && self.login_timeout <= TIMEOUT_SECS_MAX) {
            return err(
                "login-timeout",
                "must be more than 0 and at most 3600 seconds",
            );
        }
        if !(self.shutdown_grace >= 0.0 && self.shutdown_grace <= TIMEOUT_SECS_MAX) {
            return err("shutdown-grace", "must be 0 to 3600 seconds");
        }
        if self.packet_ttl == 0 || self.packet_ttl > TTL_SECS_MAX {
            return err("packet-ttl", "must be 1 second to 68 years");
        }
        if self.envelope_ttl == 0 || self.envelope_ttl > TTL_SECS_MAX {
            return err("envelope-ttl", "must be 1 second to 68 years");
        }
        if self.auth == Some(AuthMode::Required) && self.auth_key_file.is_none() {
            return err(
                "auth",
                "required needs --auth-key-file (make one with `hongbao token --new-key FILE`)",
            );
        }
        if !(self.stall_timeout > 0.0 && self.stall_timeout <= TIMEOUT_SECS_MAX) {
            return err(
                "stall-timeout",
                "must be more than 0 and at most 3600 seconds",
            );
        }
        if self.send_buffer > i32::MAX as usize / 2 || self.recv_buffer > i32::MAX as usize / 2 {
            return err(
                "send-buffer",
                "--send-buffer and --recv-buffer must be under 1 GiB",
            );
        }
        if self.cluster.is_some() && !self.node_id.is_some_and(|n| (1..=NODE_ID_MAX).contains(&n)) {
            return err(
                "node-id",
                "cluster mode needs --node-id N, 1..=65535, unique in the fleet",
            );
        }
        if !(self.engine_timeout > 0.0 && self.engine_timeout <= TIMEOUT_SECS_MAX) {
            return err(
                "engine-timeout",
                "must be more than 0 and at most 3600 seconds",
            );
        }
        if self.outbound_max < crate::wire::FRAME_LEN_MAX {
            return err("outbound-max", "must hold at least one frame (44 bytes)");
        }
        Ok(())
    }
}
