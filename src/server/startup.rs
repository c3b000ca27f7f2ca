//! `server::start` as named steps, each thread handed as it starts to
//! [`Running`], the owner of whatever has started.
//!
//! Owns: the order of start-up. Every check and every resource that can fail
//! for a reason the operator can fix (the settings, the open-file limit, the
//! listeners, the control port, the ledger's replay, the output files, each
//! core's poll) is taken in [`prepare`], before any thread runs, so that such
//! a failure leaves nothing behind and writes nothing to the ledger. Then
//! [`Launch::run`] starts the threads one step at a time (stats, ledger
//! writer, in cluster mode the engine thread and push reader, generator,
//! HTTP control, cores), handing each to [`Running`] the
//! moment it runs: a later step that fails drops `Running`, which stops what
//! ran in the reverse order, and the success path hands the same `Running`
//! to the `ServerHandle`. Must not: sit on the request path, or start a
//! thread before every fallible preparation is done.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::config::{ConfigError, ServerConfig};
use super::control::ClusterControl;
use super::control::{self, ControlServer};
use super::engine::{self, EngineSetup, EngineStatus, PushReaderSetup};
use super::handle::{Replayed, SeedSource, ServerHandle};
use super::latency_log::LatencyLog;
use super::limits::{self, FdLimit};
use super::published::Published;
use super::running::{
    CoreThread, EngineThreads, GeneratorThread, LedgerThread, Running, StatsThread,
};
use super::stats_thread::{StatsSetup, aggregate};
use super::worker::{self, WorkerLimits, WorkerSetup};
use crate::clock::MILLIS_PER_SEC;
use crate::cluster::EngineConfig;
use crate::generator::{self, ClusterLink, Command, EnvelopeSpec, GeneratorSetup, Schedule};
use crate::hlog::LatencyHistogram;
use crate::http;
use crate::ids::{CoreId, EnvelopeId, PacketId};
use crate::ledger::{self, Books, Ledger, LedgerFile};
use crate::mesh::{CoreMsg, EngineJob, Peers};
use crate::packets::NewPacket;
use crate::ring::{Envelope, EnvelopeRings};
use crate::session::{Hongbao, HongbaoSettings, LoginPolicy, Reference};
use crate::stats::{Report, recycle};
use crate::token::{KeyFileError, Keyring};

/// Entries a core's inbox holds; a sender that finds it full keeps its
/// messages and offers them again on its next turn.
const INBOX_LEN: usize = 1 << 16;
/// Reports the stats thread may fall behind by. Each core and the generator
/// send one a second, so this is about a minute of backlog on 64 cores; a
/// core that finds the queue full keeps its counts for its next second.
const REPORTS_LEN: usize = 4 * 1024;
/// The message of a failure a test asked for (see [`ThreadStep`]).
const INJECTED: &str = "failure injected by a test";

/// The steps of a start that start a thread, in the order they run.
///
/// [`start_failing_at`] makes one of them fail as a failed spawn
/// would, so that a test can show that a failed start stops every thread
/// that started before the failure. Not for use outside tests.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadStep {
    /// The stats thread, started first.
    Stats,
    /// The ledger writer (only with `--data-dir`).
    LedgerWriter,
    /// Cluster mode: the engine thread (the push reader follows it).
    Engine,
    /// The generator.
    Generator,
    /// The HTTP control (unless `--no-http`).
    Control,
    /// The last core, once every other core runs: the last step of all.
    LastCore,
}

/// Why the server did not start: the step that failed, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting cannot work.
    #[error("checking settings: {0}")]
    Config(#[from] ConfigError),
    /// The login keys could not be read.
    #[error(
        "reading the login keys (--auth-key-file): {0}; make a key file with `hongbao token --new-key FILE`"
    )]
    AuthKeys(KeyFileError),
    /// The OS gave no randomness for the seed.
    #[error("drawing the seed from the OS's randomness: {0}; give one with --seed")]
    Seed(getrandom::Error),
    /// The open-file limit could not be read or raised.
    #[error("raising the open-file limit (RLIMIT_NOFILE): {0}")]
    FdLimit(io::Error),
    /// A listener could not be set up.
    #[error(transparent)]
    Bind(#[from] limits::BindError),
    /// The ledger could not be opened or replayed.
    #[error("opening the ledger in --data-dir: {0}")]
    Ledger(#[from] ledger::OpenError),
    /// The replayed ledger does not balance.
    #[error(
        "replaying the ledger in --data-dir: {0}; run `hongbao audit --data-dir` to see the totals"
    )]
    Books(ledger::Violation),
    /// The HTTP control could not listen.
    #[error(
        "binding the HTTP control on {addr}: {error} (choose another with --http, or --no-http)"
    )]
    Http {
        /// Its address.
        addr: SocketAddr,
        /// The OS error.
        error: io::Error,
    },
    /// The control token file is missing, empty or open to others.
    #[error("reading --control-token-file: {0}")]
    ControlToken(String),
    /// A thread, poll or file could not be created.
    #[error("{step}: {error}")]
    Resource {
        /// What was being made.
        step: &'static str,
        /// The OS error.
        error: io::Error,
    },
}

fn resource(step: &'static str) -> impl FnOnce(io::Error) -> StartError {
    move |error| StartError::Resource { step, error }
}

/// Starts a server with `config`; returns once every listener is bound and
/// every thread runs. A start that fails stops what it had started, in the
/// reverse order, before it returns.
pub fn start(config: &ServerConfig) -> Result<ServerHandle, StartError> {
    start_with(config, None)
}

/// [`start`], with the thread-starting `step` failing as a failed spawn
/// would: for tests that show a failed start leaves nothing running.
#[doc(hidden)]
pub fn start_failing_at(
    config: &ServerConfig,
    step: ThreadStep,
) -> Result<ServerHandle, StartError> {
    start_with(config, Some(step))
}

/// Starts a server: [`prepare`], then [`Launch::run`]. `fault` makes one
/// thread-starting step fail (tests only).
fn start_with(
    config: &ServerConfig,
    fault: Option<ThreadStep>,
) -> Result<ServerHandle, StartError> {
    let Prepared {
        threads,
        cpus,
        fd_limit,
        warnings,
        addr,
        control_listener,
        replay,
        outputs,
        cores,
        seed,
        policy,
        engine_config,
    } = prepare(config)?;
    let mut launch = Launch::new(
        config,
        fault,
        (threads, fd_limit),
        cpus,
        cores.peers.clone(),
    );
    launch.settings.seed = seed.0;
    launch.policy = policy;
    launch.engine_config = engine_config;
    let replayed = replay.replayed;
    let mut running = Running::default();
    // On a failure `running` is dropped here, which stops what it holds.
    launch.run(
        Parts {
            control_listener,
            replay,
            outputs,
            cores,
        },
        &mut running,
    )?;
    Ok(ServerHandle {
        addr,
        http_addr: running.control.as_ref().map(|c| c.addr),
        threads,
        fd_limit,
        warnings,
        published: launch.published,
        rings: launch.rings,
        replayed,
        seed,
        running,
    })
}

/// Everything checked, bound, replayed and opened before the first thread.
struct Prepared {
    threads: usize,
    /// The CPUs this process may run on, for pinning.
    cpus: Vec<core_affinity::CoreId>,
    fd_limit: FdLimit,
    warnings: Vec<String>,
    /// Where clients connect.
    addr: SocketAddr,
    control_listener: Option<ControlBound>,
    replay: Replay,
    outputs: Outputs,
    cores: Cores,
    /// The seed of amounts and splits, and where it came from.
    seed: (u64, SeedSource),
    /// Which logins the cores take.
    policy: LoginPolicy,
    /// Cluster mode: where the engine is.
    engine_config: Option<EngineConfig>,
}

/// The steps that can fail for a reason the operator can fix, in order; no
/// thread runs yet, so a failure here leaves nothing to stop.
fn prepare(config: &ServerConfig) -> Result<Prepared, StartError> {
    config.validate()?;
    let mut warnings = Vec::new();
    let policy = login_policy(config, &mut warnings)?;
    let seed = match config.seed {
        Some(seed) => (seed, SeedSource::Given),
        None => (getrandom::u64().map_err(StartError::Seed)?, SeedSource::Os),
    };
    let (threads, cpus) = count_threads(config, &mut warnings);
    let fd_limit = raise_fd_limit(config, threads, &mut warnings)?;
    let listeners = limits::bind_listeners(
        config.listen,
        threads,
        config.backlog,
        limits::SocketBuffers {
            send: config.send_buffer,
            recv: config.recv_buffer,
        },
    )?;
    let control_listener = bind_control(config, &mut warnings)?;
    let addr = listeners[0]
        .local_addr()
        .map_err(resource("reading the bound address"))?;
    // The ledger before any thread: a damaged one refuses the start before
    // anything runs.
    let mut replay = replay_ledger(config, threads, &mut warnings)?;
    let outputs = open_outputs(config)?;
    let cores = make_cores(
        listeners,
        std::mem::take(&mut replay.packets_by_core),
        config.cluster.is_some(),
    )?;
    let engine_config = match &config.cluster {
        Some(urls) => Some(EngineConfig::parse(urls).map_err(|why| {
            StartError::Config(ConfigError {
                option: "cluster",
                why: why.to_string(),
            })
        })?),
        None => None,
    };
    Ok(Prepared {
        threads,
        cpus,
        fd_limit,
        warnings,
        addr,
        control_listener,
        replay,
        outputs,
        cores,
        seed,
        policy,
        engine_config,
    })
}

/// Reads `--auth-key-file` and says, once, when anyone can log in as anyone.
fn login_policy(
    config: &ServerConfig,
    warnings: &mut Vec<String>,
) -> Result<LoginPolicy, StartError> {
    let keys = match &config.auth_key_file {
        Some(path) => Keyring::load(path).map_err(StartError::AuthKeys)?,
        None => Keyring::default(),
    };
    let signed_only = config.signed_logins_required();
    if !signed_only {
        warnings.push(format!(
            "warning: logins are not checked: v1 logins name any user, so anyone can log in as \
             anyone ({}); to require signed logins: `hongbao token --new-key FILE`, then \
             --auth-key-file FILE",
            if config.auth_key_file.is_some() {
                "--auth off"
            } else {
                "no --auth-key-file"
            }
        ));
    }
    Ok(LoginPolicy { signed_only, keys })
}

/// Raises the open-file limit, and warns when, less the descriptors kept
/// for the control, the ledger and `threads` workers, it is below
/// `--conns-max`.
fn raise_fd_limit(
    config: &ServerConfig,
    threads: usize,
    warnings: &mut Vec<String>,
) -> Result<FdLimit, StartError> {
    let fd_limit = limits::raise_fd_limit().map_err(StartError::FdLimit)?;
    let reserved = limits::fds_reserved(threads, !config.no_http);
    if let Some(advice) = limits::fd_limit_advice(fd_limit, config.conns_max, reserved) {
        warnings.push(advice);
    }
    Ok(fd_limit)
}

/// The worker count (`--threads`, or one per allowed CPU) and the CPUs to
/// pin them to; warns when workers must share CPUs.
fn count_threads(
    config: &ServerConfig,
    warnings: &mut Vec<String>,
) -> (usize, Vec<core_affinity::CoreId>) {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let threads = config.threads.unwrap_or(cpus.len().max(1));
    if !config.no_pin && cpus.len() < threads {
        warnings.push(format!(
            "warning: {threads} workers on {} allowed cores: some share a core",
            cpus.len()
        ));
    }
    (threads, cpus)
}

/// The HTTP control's listener and its token, ready to serve.
struct ControlBound {
    listener: http::Listener,
    token: Option<http::ControlToken>,
}

/// Reads `--control-token-file` and binds the HTTP control, unless
/// `--no-http`; warns when the kernel caps its backlog below
/// [`http::BACKLOG`].
fn bind_control(
    config: &ServerConfig,
    warnings: &mut Vec<String>,
) -> Result<Option<ControlBound>, StartError> {
    if config.no_http {
        return Ok(None);
    }
    let token = config
        .control_token_file
        .as_deref()
        .map(http::ControlToken::from_file)
        .transpose()
        .map_err(StartError::ControlToken)?;
    let listener = control::bind(config.http).map_err(|error| StartError::Http {
        addr: config.http,
        error,
    })?;
    if let Some(max) = http::somaxconn()
        && i64::from(max) < i64::from(http::BACKLOG)
    {
        warnings.push(format!(
            "warning: net.core.somaxconn is {max}, below the HTTP control's backlog of {}: \
             a burst of control connections may be refused. `sysctl -w net.core.somaxconn=4096`",
            http::BACKLOG
        ));
    }
    Ok(Some(ControlBound { listener, token }))
}

/// What the ledger's replay hands to the threads to come.
struct Replay {
    /// The open ledger, for its writer; none without `--data-dir`.
    file: Option<LedgerFile>,
    /// What was found, for the operator.
    replayed: Replayed,
    /// What the generator carries on with.
    queued: Queued,
    /// Live packets, by the core that owns each.
    packets_by_core: Vec<Vec<NewPacket>>,
    /// Cluster mode: this node's packets not yet refunded, for the engine
    /// thread to create again (a no-op when the engine has them) and
    /// refund at expiry.
    cluster_packets: Vec<NewPacket>,
}

/// The generator's share of the replay.
struct Queued {
    /// Envelopes outstanding, to queue into the rings again.
    outstanding: Vec<Envelope>,
    next_envelope_id: EnvelopeId,
    next_packet_id: PacketId,
}

/// Replays the ledger in `--data-dir` (if any) and deals out what it holds:
/// outstanding envelopes to the generator, live packets to their cores.
fn replay_ledger(
    config: &ServerConfig,
    threads: usize,
    warnings: &mut Vec<String>,
) -> Result<Replay, StartError> {
    let mut books = Books::new();
    let (file, mut replayed) = match &config.data_dir {
        Some(dir) => {
            let (file, replayed) = open_ledger(dir, &mut books, warnings)?;
            (Some(file), replayed)
        }
        None => (None, Replayed::default()),
    };
    let outstanding = envelopes_to_queue(&books, config.envelope_ttl);
    replayed.envelopes_outstanding = outstanding.len() as u64;
    let queued = Queued {
        outstanding,
        next_envelope_id: books.next_envelope_id(),
        next_packet_id: books.next_packet_id(),
    };
    let mut packets_by_core: Vec<Vec<NewPacket>> = (0..threads).map(|_| Vec::new()).collect();
    for p in books.take_packets() {
        replayed.packets_live += 1;
        packets_by_core[p.id.0 as usize % threads].push(p.into());
    }
    let mut cluster_packets: Vec<NewPacket> = books
        .cluster_packets()
        .values()
        .filter(|p| p.refunded.is_none())
        .map(|p| NewPacket {
            id: p.id,
            amount: p.amount,
            targets: p.targets.clone().into_boxed_slice(),
            claims: Vec::new(),
            until_s: p.until_s,
        })
        .collect();
    cluster_packets.sort_by_key(|p| (p.until_s, p.id));
    Ok(Replay {
        file,
        replayed,
        queued,
        packets_by_core,
        cluster_packets,
    })
}

/// Opens and replays the ledger in `dir` into `books`, checks that it
/// balances, and warns about a torn tail cut off.
fn open_ledger(
    dir: &Path,
    books: &mut Books,
    warnings: &mut Vec<String>,
) -> Result<(LedgerFile, Replayed), StartError> {
    let (file, end) = ledger::file::open(dir, books)?;
    books.check_conservation().map_err(StartError::Books)?;
    let replayed = Replayed {
        enabled: true,
        records: end.records,
        batches: end.batches,
        torn_bytes: end.torn_bytes(),
        torn_at: end.valid_len,
        envelopes_outstanding: 0,
        cents_outstanding: books.cents_outstanding(),
        packets_live: 0,
        cents_in_packets: books.cents_in_packets(),
        totals: books.totals(),
    };
    if end.torn_bytes() > 0 {
        warnings.push(format!(
            "warning: ledger {}: cut a torn tail of {} bytes at offset {} (records of an \
             unfinished group commit, never acknowledged)",
            file.path.display(),
            end.torn_bytes(),
            end.valid_len
        ));
    }
    Ok((file, replayed))
}

/// The envelopes the books hold outstanding, as the rings take them: each
/// due back one `--envelope-ttl` after it was generated.
fn envelopes_to_queue(books: &Books, envelope_ttl_s: u64) -> Vec<Envelope> {
    let envelope_ttl_ms = envelope_ttl_s.saturating_mul(MILLIS_PER_SEC);
    books
        .outstanding()
        .into_iter()
        .map(|o| Envelope {
            id: o.id,
            amount: o.cents,
            // The rings keep a u32 Unix second; a deadline past it is
            // kept as the last second it can say.
            until_s: (o.at_ms.saturating_add(envelope_ttl_ms) / MILLIS_PER_SEC)
                .min(u64::from(u32::MAX)) as u32,
        })
        .collect()
}

/// The files the stats thread writes.
struct Outputs {
    /// `--stats-jsonl`, opened for appending.
    stats_file: Option<std::fs::File>,
    /// `--hlog`, created after the replay so its intervals count from the
    /// second the server starts serving.
    latency_log: Option<LatencyLog>,
}

/// Opens `--stats-jsonl` and creates `--hlog`.
fn open_outputs(config: &ServerConfig) -> Result<Outputs, StartError> {
    let stats_file = match &config.stats_jsonl {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(resource("opening --stats-jsonl"))?,
        ),
        None => None,
    };
    let latency_log = match &config.hlog {
        Some(path) => Some(LatencyLog::create(path).map_err(resource("creating --hlog"))?),
        None => None,
    };
    Ok(Outputs {
        stats_file,
        latency_log,
    })
}

/// A core before its thread starts: what is its own alone.
struct CorePlan {
    listener: TcpListener,
    poll: mio::Poll,
    inbox: Receiver<CoreMsg>,
    recycled: Receiver<Box<LatencyHistogram>>,
    initial_packets: Vec<NewPacket>,
}

/// Every core's plan, and what is shared about them.
struct Cores {
    plans: Vec<CorePlan>,
    /// Every core's inbox and waker, for every core and the generator.
    peers: Peers,
    /// The stats thread's ends of the cores' histogram returns, by core.
    recycle: Vec<Sender<Box<LatencyHistogram>>>,
    /// Cluster mode: the engine thread's end of the cores' jobs.
    engine_jobs: Option<Receiver<EngineJob>>,
}

/// Makes every core's poll, waker, inbox and histogram return before any
/// thread starts, so that each core can be given all the others' addresses.
fn make_cores(
    listeners: Vec<TcpListener>,
    packets_by_core: Vec<Vec<NewPacket>>,
    cluster: bool,
) -> Result<Cores, StartError> {
    let threads = listeners.len();
    let (engine, engine_jobs) = if cluster {
        let (tx, rx) = crossbeam_channel::bounded(engine::JOBS_LEN);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let mut cores = Cores {
        plans: Vec::with_capacity(threads),
        peers: Peers {
            inboxes: Vec::with_capacity(threads),
            wakers: Vec::with_capacity(threads),
            engine,
        },
        recycle: Vec::with_capacity(threads),
        engine_jobs,
    };
    for (listener, initial_packets) in listeners.into_iter().zip(packets_by_core) {
        let (poll, waker) =
            worker::poll_and_waker().map_err(resource("creating a worker's poll"))?;
        let (inbox_tx, inbox) = crossbeam_channel::bounded(INBOX_LEN);
        // Histograms back from the stats thread to this core: a core that
        // finds none allocates one, and any beyond the channel's few are freed.
        let (recycle_tx, recycled) = recycle::channel();
        cores.peers.inboxes.push(inbox_tx);
        cores.peers.wakers.push(waker);
        cores.recycle.push(recycle_tx);
        cores.plans.push(CorePlan {
            listener,
            poll,
            inbox,
            recycled,
            initial_packets,
        });
    }
    Ok(cores)
}

/// What [`Launch::run`] hands out, each part to the thread that takes it.
struct Parts {
    control_listener: Option<ControlBound>,
    replay: Replay,
    outputs: Outputs,
    cores: Cores,
}

/// What every thread-starting step reads.
struct Launch<'a> {
    config: &'a ServerConfig,
    fault: Option<ThreadStep>,
    threads: usize,
    cpus: Vec<core_affinity::CoreId>,
    peers: Peers,
    rings: Arc<EnvelopeRings>,
    published: Arc<Mutex<Published>>,
    worker_limits: WorkerLimits,
    settings: HongbaoSettings,
    policy: LoginPolicy,
    /// Cluster mode: where the engine is.
    engine_config: Option<EngineConfig>,
}

impl<'a> Launch<'a> {
    /// `sizing`: the worker count and the open-file limit, which caps the
    /// workers' connections below the descriptors kept in reserve.
    fn new(
        config: &'a ServerConfig,
        fault: Option<ThreadStep>,
        sizing: (usize, FdLimit),
        cpus: Vec<core_affinity::CoreId>,
        peers: Peers,
    ) -> Launch<'a> {
        let (threads, fd_limit) = sizing;
        let reserved = limits::fds_reserved(threads, !config.no_http);
        Launch {
            config,
            fault,
            threads,
            cpus,
            peers,
            rings: Arc::new(EnvelopeRings::new(threads, config.ring_capacity)),
            published: Arc::new(Mutex::new(Published::default())),
            worker_limits: WorkerLimits {
                conns_max: fd_limit.worker_conns_max(config.conns_max, threads, reserved),
                outbound_max: config.outbound_max,
                conn_rate: super::rate::ConnRate::new(config.conn_qps_max),
                stall_timeout: Duration::from_secs_f64(config.stall_timeout),
                login_timeout: Duration::from_secs_f64(config.login_timeout),
                shutdown_grace: Duration::from_secs_f64(config.shutdown_grace),
            },
            settings: HongbaoSettings {
                shakes_per_sec_max: config.shakes_per_sec_max.div_ceil(threads as u64),
                mailbox_max: config.mailbox_max,
                user_conns_max: config.user_conns_max,
                // Set from the seed chosen in `prepare`.
                seed: 0,
                cluster: config.cluster.is_some(),
            },
            policy: LoginPolicy::open(),
            engine_config: None,
        }
    }

    /// Starts the threads in order, each handed to `running` as it starts.
    fn run(&self, parts: Parts, running: &mut Running) -> Result<(), StartError> {
        let Parts {
            control_listener,
            replay,
            outputs,
            cores,
        } = parts;
        let stats = running
            .stats
            .insert(self.start_stats(outputs, cores.recycle)?);
        let ledger = running
            .ledger
            .insert(self.start_ledger_writer(replay.file)?);
        let (engine, link) = match (cores.engine_jobs, &self.engine_config) {
            (Some(jobs), Some(config)) => {
                let (e, link) =
                    self.start_engine(config, jobs, replay.cluster_packets, &ledger.ledger)?;
                (Some(running.engine.insert(e)), Some(link))
            }
            _ => (None, None),
        };
        let generator = running.generator.insert(self.start_generator(
            replay.queued,
            &stats.reports,
            &ledger.ledger,
            link,
        )?);
        running.control = self.serve_control(
            control_listener,
            &generator.commands,
            engine.map(|e| ClusterControl {
                node: e.node,
                requests: e.requests.clone(),
                status: e.status.clone(),
            }),
        )?;
        for (i, plan) in cores.plans.into_iter().enumerate() {
            let core = self.start_core(CoreId(i), plan, &stats.reports, &ledger.ledger)?;
            running.cores.push(core);
        }
        Ok(())
    }

    /// Fails as `step` would when a test asked for it.
    fn injected(&self, step: ThreadStep) -> io::Result<()> {
        if self.fault == Some(step) {
            return Err(io::Error::other(INJECTED));
        }
        Ok(())
    }

    /// The stats thread: it closes seconds, prints and publishes them.
    fn start_stats(
        &self,
        outputs: Outputs,
        recycle: Vec<Sender<Box<LatencyHistogram>>>,
    ) -> Result<StatsThread, StartError> {
        let (reports, reports_rx) = crossbeam_channel::bounded::<Report>(REPORTS_LEN);
        let setup = StatsSetup {
            cores: self.threads,
            reports: reports_rx,
            recycle,
            published: self.published.clone(),
            stats_file: outputs.stats_file,
            quiet: self.config.quiet,
            latency_log: outputs.latency_log,
        };
        let thread = self
            .injected(ThreadStep::Stats)
            .and_then(|()| {
                std::thread::Builder::new()
                    .name("hongbao-stats".into())
                    .spawn(move || aggregate(setup))
            })
            .map_err(resource("starting the stats thread"))?;
        Ok(StatsThread { thread, reports })
    }

    /// The ledger writer, with `--data-dir`; a disabled ledger without.
    fn start_ledger_writer(&self, file: Option<LedgerFile>) -> Result<LedgerThread, StartError> {
        let Some(file) = file else {
            return Ok(LedgerThread {
                thread: None,
                ledger: Ledger::disabled(),
            });
        };
        let mut wakers: Vec<Option<Arc<mio::Waker>>> =
            self.peers.wakers.iter().cloned().map(Some).collect();
        wakers.push(None); // the generator waits with a barrier instead
        let (ledger, thread) = self
            .injected(ThreadStep::LedgerWriter)
            .and_then(|()| ledger::writer::start(file, wakers))
            .map_err(resource("starting the ledger writer"))?;
        Ok(LedgerThread {
            thread: Some(thread),
            ledger,
        })
    }

    /// Cluster mode: the engine thread and the push reader, and the
    /// generator's side of their channels.
    fn start_engine(
        &self,
        config: &EngineConfig,
        jobs: Receiver<EngineJob>,
        replayed: Vec<NewPacket>,
        ledger: &Ledger,
    ) -> Result<(EngineThreads, ClusterLink), StartError> {
        let node = self.config.node_id.unwrap_or(0);
        let status = Arc::new(EngineStatus::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ids_tx, ids) = crossbeam_channel::bounded(engine::IDS_LEN);
        let (creates, creates_rx) = crossbeam_channel::bounded(engine::CREATES_LEN);
        let (leases_tx, leases) = crossbeam_channel::bounded(engine::LEASES_LEN);
        let (requests, requests_rx) = crossbeam_channel::bounded(engine::REQUESTS_LEN);
        let allowance = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peers = Peers {
            engine: None,
            ..self.peers.clone()
        };
        let setup = EngineSetup {
            config: config.clone(),
            node,
            jobs,
            creates: creates_rx,
            requests: requests_rx,
            peers: peers.clone(),
            ledger: ledger.clone(),
            // Producers 0..threads are the cores, then the generator; the
            // engine thread waits with barriers as the generator does.
            producer: self.threads as u16,
            status: status.clone(),
            stop: stop.clone(),
            mailbox_max: self.config.mailbox_max as u32,
            replicas: self.config.engine_replicas,
            timeout: Duration::from_secs_f64(self.config.engine_timeout),
            ids: ids_tx,
            leases: leases_tx,
            allowance: allowance.clone(),
            seed: self.settings.seed,
            replayed,
        };
        let reader = PushReaderSetup {
            config: config.clone(),
            node,
            peers,
            status: status.clone(),
            stop: stop.clone(),
        };
        let mut threads = EngineThreads {
            node,
            stop,
            status,
            requests,
            engine: None,
            reader: None,
        };
        threads.engine = Some(
            self.injected(ThreadStep::Engine)
                .and_then(|()| {
                    std::thread::Builder::new()
                        .name("hongbao-engine".into())
                        .spawn(move || engine::run(setup))
                })
                .map_err(resource("starting the engine thread"))?,
        );
        // On a failure here `threads` is dropped, which stops the engine
        // thread started above.
        threads.reader = Some(
            std::thread::Builder::new()
                .name("hongbao-pushes".into())
                .spawn(move || engine::run_push_reader(reader))
                .map_err(resource("starting the push reader thread"))?,
        );
        let link = ClusterLink {
            ids,
            creates,
            leases,
            allowance,
        };
        Ok((threads, link))
    }

    /// The generator, carrying on with what the ledger held.
    fn start_generator(
        &self,
        queued: Queued,
        reports: &Sender<Report>,
        ledger: &Ledger,
        cluster: Option<ClusterLink>,
    ) -> Result<GeneratorThread, StartError> {
        let config = self.config;
        let (commands, commands_rx) = crossbeam_channel::unbounded();
        let setup = GeneratorSetup {
            rings: self.rings.clone(),
            initial: Schedule {
                rate: config.envelopes_per_sec,
                total: config.envelope_total,
            },
            spec: EnvelopeSpec {
                cents_min: config.envelope_cents_min,
                cents_max: config.envelope_cents_max,
                seed: self.settings.seed,
            },
            commands: commands_rx,
            reports: reports.clone(),
            ledger: ledger.clone(),
            // Producers 0..threads are the cores; the generator comes next.
            producer: self.threads as u16,
            peers: self.peers.clone(),
            outstanding: queued.outstanding,
            next_envelope_id: queued.next_envelope_id,
            next_packet_id: queued.next_packet_id,
            envelope_ttl_s: config.envelope_ttl,
            packet_ttl_s: config.packet_ttl,
            cluster,
        };
        let thread = self
            .injected(ThreadStep::Generator)
            .and_then(|()| {
                std::thread::Builder::new()
                    .name("hongbao-generator".into())
                    .spawn(move || generator::run(setup))
            })
            .map_err(resource("starting the generator thread"))?;
        Ok(GeneratorThread { thread, commands })
    }

    /// The HTTP control on the listener bound in [`prepare`], if any.
    fn serve_control(
        &self,
        bound: Option<ControlBound>,
        commands: &Sender<Command>,
        cluster: Option<ClusterControl>,
    ) -> Result<Option<ControlServer>, StartError> {
        let Some(ControlBound { listener, token }) = bound else {
            return Ok(None);
        };
        let conns_cap = self.worker_limits.conns_max * self.threads;
        self.injected(ThreadStep::Control)
            .and_then(|()| {
                ControlServer::start(
                    listener,
                    token,
                    commands.clone(),
                    self.published.clone(),
                    conns_cap,
                    cluster,
                )
            })
            .map(Some)
            .map_err(|error| StartError::Http {
                addr: self.config.http,
                error,
            })
    }

    /// One core's thread, pinned unless `--no-pin`.
    fn start_core(
        &self,
        core: CoreId,
        plan: CorePlan,
        reports: &Sender<Report>,
        ledger: &Ledger,
    ) -> Result<CoreThread, StartError> {
        let i = core.0;
        let setup = WorkerSetup {
            core,
            pin: (!self.config.no_pin && !self.cpus.is_empty())
                .then(|| self.cpus[i % self.cpus.len()]),
            poll: plan.poll,
            listener: plan.listener,
            inbox: plan.inbox,
            peers: self.peers.clone(),
            ledger: ledger.producer(i as u16),
            initial_packets: plan.initial_packets,
            reports: reports.clone(),
            recycled: plan.recycled,
            limits: self.worker_limits,
        };
        let service = CoreService {
            reference: self.config.reference,
            rings: self.rings.clone(),
            settings: self.settings,
            policy: self.policy.clone(),
        };
        let is_last = i + 1 == self.threads;
        let thread = (if is_last {
            self.injected(ThreadStep::LastCore)
        } else {
            Ok(())
        })
        .and_then(|()| {
            std::thread::Builder::new()
                .name(format!("hongbao-core-{i}"))
                .spawn(move || run_core(setup, service))
        })
        .map_err(resource("starting a worker thread"))?;
        Ok(CoreThread {
            thread,
            waker: self.peers.wakers[i].clone(),
            inbox: self.peers.inboxes[i].clone(),
        })
    }
}

/// Which service a core runs, made on the core's own thread so that its
/// memory is first touched there.
struct CoreService {
    reference: bool,
    rings: Arc<EnvelopeRings>,
    settings: HongbaoSettings,
    policy: LoginPolicy,
}

/// A core's thread: its loop, and what follows if the loop fails.
fn run_core(setup: WorkerSetup, service: CoreService) -> io::Result<()> {
    let core = setup.core;
    let reports = setup.reports.clone();
    let result = if service.reference {
        worker::run(setup, Reference::with_policy(service.policy))
    } else {
        let hongbao = Hongbao::new(core, service.rings, service.settings);
        worker::run(setup, hongbao.with_policy(service.policy))
    };
    if let Err(e) = &result {
        // The core's connections are gone with it. Say so, let the stats go
        // on without it, and stop the server in order (the binary turns
        // SIGTERM into a shutdown).
        eprintln!("hongbao: core {core}: polling failed: {e}; stopping the server");
        let _ = reports.send(Report::CoreGone { core: core.0 });
        // SAFETY: raise(3) only sends a signal to this process.
        unsafe { libc::raise(libc::SIGTERM) };
    }
    result
}
