//! `hongbao server`: assembles the cores, the generator, stats and control.
//!
//! Owns: start-up in order (validate, raise the fd limit, bind listeners, make
//! the rings, start the aggregator, the generator, one pinned worker per core,
//! the HTTP control), the `ServerHandle` that stops them in the reverse order,
//! and the aggregator thread that prints and publishes each closed second.
//! Must not: sit on the request path. Cores share only the rings (through the
//! generator) and the stats channel.

pub mod config;
pub mod control;
pub mod latency_log;
pub mod limits;
pub mod published;
pub mod worker;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

pub use config::ServerConfig;

use crate::generator::{self, EnvelopeSpec, GeneratorSetup, Schedule};
use crate::hlog::LatencyHistogram;
use crate::ids::{CoreId, EnvelopeId, PacketId};
use crate::ledger::{self, Books, Ledger};
use crate::mesh::{CoreMsg, Peers};
use crate::packets::NewPacket;
use crate::ring::{Envelope, EnvelopeRings};
use crate::seconds::SECONDS_KEPT;
use crate::session::{Hongbao, HongbaoSettings, Reference};
use crate::stats::{Aggregator, Report, SecondStats};
use control::ControlServer;
use limits::FdLimit;
use published::Published;
use worker::{WorkerLimits, WorkerSetup};

/// Entries a core's inbox holds; a sender that finds it full keeps its
/// messages and offers them again on its next turn.
const INBOX_LEN: usize = 1 << 16;

/// Why the server did not start: the step that failed, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting cannot work.
    #[error("checking settings: {0}")]
    Config(#[from] config::ConfigError),
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

/// A running core, as its owner holds it.
struct WorkerHandle {
    thread: JoinHandle<io::Result<()>>,
    waker: Arc<mio::Waker>,
    inbox: Sender<CoreMsg>,
}

/// What the server found in its ledger at start.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Replayed {
    /// True when the server keeps a ledger.
    pub enabled: bool,
    /// Money records replayed.
    pub records: u64,
    /// Group commits replayed.
    pub batches: u32,
    /// Bytes of a torn tail cut off (records never acknowledged).
    pub torn_bytes: u64,
    /// Offset where the torn tail began.
    pub torn_at: u64,
    /// Envelopes outstanding, queued into the rings again.
    pub envelopes_outstanding: u64,
    /// Their cents.
    pub cents_outstanding: u64,
    /// Live packets handed back to their cores.
    pub packets_live: u64,
    /// Cents not yet claimed in them.
    pub cents_in_packets: u64,
    /// The totals of the whole ledger.
    pub totals: ledger::Totals,
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    threads: usize,
    fd_limit: FdLimit,
    warnings: Vec<String>,
    workers: Vec<WorkerHandle>,
    generator: JoinHandle<()>,
    generator_commands: Sender<generator::Command>,
    aggregator: JoinHandle<Summary>,
    control: Option<ControlServer>,
    published: Arc<Mutex<Published>>,
    rings: Arc<EnvelopeRings>,
    ledger_writer: Option<JoinHandle<()>>,
    replayed: Replayed,
}

/// The run's totals, given when the server stops.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Every second summed.
    pub total: SecondStats,
    /// Seconds counted.
    pub seconds: u64,
    /// Service time over the run, summarised in nanoseconds.
    pub service_ns: crate::stats::SummaryNs,
    /// Envelopes left in the rings at the end.
    pub envelopes_in_rings: u64,
}

/// Starts a server with `config`; returns once every listener is bound.
pub fn start(config: &ServerConfig) -> Result<ServerHandle, StartError> {
    config.validate()?;
    let mut warnings = Vec::new();
    let fd_limit = limits::raise_fd_limit().map_err(StartError::FdLimit)?;
    if let Some(advice) = limits::fd_limit_advice(fd_limit, config.conns_max) {
        warnings.push(advice);
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let threads = config.threads.unwrap_or(cores.len().max(1));
    if !config.no_pin && cores.len() < threads {
        warnings.push(format!(
            "warning: {threads} workers on {} allowed cores: some share a core",
            cores.len()
        ));
    }
    let listeners = limits::bind_listeners(config.listen, threads, config.backlog)?;
    // Bound before any thread starts, so a taken control port fails the
    // start cleanly instead of leaving workers running.
    let control_listener = if config.no_http {
        None
    } else {
        Some(
            control::bind(config.http).map_err(|error| StartError::Http {
                addr: config.http,
                error,
            })?,
        )
    };
    let addr = listeners[0]
        .local_addr()
        .map_err(resource("reading the bound address"))?;

    // The ledger first: a damaged one refuses the start before anything runs.
    let mut books = Books::new();
    let mut replayed = Replayed::default();
    let opened = match &config.data_dir {
        Some(dir) => {
            let (file, end) = ledger::file::open(dir, &mut books)?;
            books.check_conservation().map_err(StartError::Books)?;
            replayed = Replayed {
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
            Some(file)
        }
        None => None,
    };
    let envelope_ttl_ms = config.envelope_ttl.saturating_mul(1000);
    let outstanding: Vec<Envelope> = books
        .outstanding()
        .into_iter()
        .map(|o| Envelope {
            id: o.id,
            amount: o.cents,
            until_s: (o.at_ms.saturating_add(envelope_ttl_ms) / 1000).min(u64::from(u32::MAX))
                as u32,
        })
        .collect();
    replayed.envelopes_outstanding = outstanding.len() as u64;
    let (next_envelope_id, next_packet_id): (EnvelopeId, PacketId) =
        (books.next_envelope_id(), books.next_packet_id());
    let mut initial_packets: Vec<Vec<NewPacket>> = (0..threads).map(|_| Vec::new()).collect();
    for p in books.take_packets() {
        replayed.packets_live += 1;
        initial_packets[p.id.0 as usize % threads].push(p.into());
    }
    drop(books);

    let rings = Arc::new(EnvelopeRings::new(threads, config.ring_capacity));
    let published = Arc::new(Mutex::new(Published::default()));
    let (reports_tx, reports_rx) = crossbeam_channel::bounded::<Report>(4 * 1024);
    let mut recycle_txs = Vec::with_capacity(threads);
    let mut recycle_rxs = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (tx, rx) = crossbeam_channel::bounded::<Box<LatencyHistogram>>(4);
        recycle_txs.push(tx);
        recycle_rxs.push(rx);
    }
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

    // Every core's poll, waker and inbox exist before any thread starts, so
    // each can be given all the others' addresses.
    let mut polls = Vec::with_capacity(threads);
    let mut inboxes = Vec::with_capacity(threads);
    let mut peers = Peers {
        inboxes: Vec::with_capacity(threads),
        wakers: Vec::with_capacity(threads),
    };
    for _ in 0..threads {
        let (poll, waker) =
            worker::poll_and_waker().map_err(resource("creating a worker's poll"))?;
        let (tx, rx) = crossbeam_channel::bounded(INBOX_LEN);
        polls.push(poll);
        inboxes.push(rx);
        peers.inboxes.push(tx);
        peers.wakers.push(waker);
    }
    let generator_producer = threads as u16;
    let (ledger, ledger_writer) = match opened {
        Some(file) => {
            let mut wakers: Vec<Option<Arc<mio::Waker>>> =
                peers.wakers.iter().cloned().map(Some).collect();
            wakers.push(None); // the generator waits with a barrier instead
            let (ledger, thread) = ledger::writer::start(file, wakers)
                .map_err(resource("starting the ledger writer"))?;
            (ledger, Some(thread))
        }
        None => (Ledger::disabled(), None),
    };

    let latency_log = match &config.hlog {
        Some(path) => {
            Some(latency_log::LatencyLog::create(path).map_err(resource("creating --hlog"))?)
        }
        None => None,
    };
    let aggregator = {
        let published = published.clone();
        let quiet = config.quiet;
        std::thread::Builder::new()
            .name("hongbao-stats".into())
            .spawn(move || {
                aggregate(
                    threads,
                    reports_rx,
                    recycle_txs,
                    published,
                    stats_file,
                    quiet,
                    latency_log,
                )
            })
            .map_err(resource("starting the stats thread"))?
    };

    let (gen_tx, gen_rx) = crossbeam_channel::unbounded();
    let generator = {
        let setup = GeneratorSetup {
            rings: rings.clone(),
            initial: Schedule {
                rate: config.envelopes_per_sec,
                total: config.envelope_total,
            },
            spec: EnvelopeSpec {
                cents_min: config.envelope_cents_min,
                cents_max: config.envelope_cents_max,
                seed: config.seed,
            },
            commands: gen_rx,
            reports: reports_tx.clone(),
            ledger: ledger.clone(),
            producer: generator_producer,
            peers: peers.clone(),
            outstanding,
            next_envelope_id,
            next_packet_id,
            envelope_ttl_s: config.envelope_ttl,
            packet_ttl_s: config.packet_ttl,
        };
        std::thread::Builder::new()
            .name("hongbao-generator".into())
            .spawn(move || generator::run(setup))
            .map_err(resource("starting the generator thread"))?
    };

    let worker_limits = WorkerLimits {
        conns_max: config.conns_max.div_ceil(threads).max(1),
        outbound_max: config.outbound_max,
        login_timeout: Duration::from_secs_f64(config.login_timeout),
        shutdown_grace: Duration::from_secs_f64(config.shutdown_grace),
    };
    let settings = HongbaoSettings {
        shakes_per_sec_max: config.max_qps.div_ceil(threads as u64),
        mailbox_max: config.mailbox_max,
        seed: config.seed,
    };
    let mut workers = Vec::with_capacity(threads);
    let per_core = listeners
        .into_iter()
        .zip(recycle_rxs)
        .zip(polls)
        .zip(inboxes)
        .zip(initial_packets);
    for (i, ((((listener, recycled), poll), inbox), packets)) in per_core.enumerate() {
        let setup = WorkerSetup {
            core: CoreId(i),
            pin: (!config.no_pin && !cores.is_empty()).then(|| cores[i % cores.len()]),
            poll,
            listener,
            inbox,
            peers: peers.clone(),
            ledger: ledger.producer(i as u16),
            initial_packets: packets,
            reports: reports_tx.clone(),
            recycled,
            limits: worker_limits,
        };
        let reference = config.reference;
        let rings = rings.clone();
        let reports = reports_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("hongbao-core-{i}"))
            .spawn(move || {
                let result = if reference {
                    worker::run(setup, Reference)
                } else {
                    worker::run(setup, Hongbao::new(CoreId(i), rings, settings))
                };
                if let Err(e) = &result {
                    // The core's connections are gone with it. Say so, let
                    // the stats go on without it, and stop the server in
                    // order (the binary turns SIGTERM into a shutdown).
                    eprintln!("hongbao: core {i}: polling failed: {e}; stopping the server");
                    let _ = reports.send(Report::CoreGone { core: i });
                    // SAFETY: raise(3) only sends a signal to this process.
                    unsafe { libc::raise(libc::SIGTERM) };
                }
                result
            })
            .map_err(resource("starting a worker thread"))?;
        workers.push(WorkerHandle {
            thread: handle,
            waker: peers.wakers[i].clone(),
            inbox: peers.inboxes[i].clone(),
        });
    }
    drop(ledger);
    drop(peers);
    drop(reports_tx);

    let mut handle = ServerHandle {
        addr,
        http_addr: None,
        threads,
        fd_limit,
        warnings,
        workers,
        generator,
        generator_commands: gen_tx,
        aggregator,
        control: None,
        published,
        rings,
        ledger_writer,
        replayed,
    };
    if let Some(listener) = control_listener {
        let started = ControlServer::start(
            listener,
            handle.generator_commands.clone(),
            handle.published.clone(),
        );
        match started {
            Ok(c) => {
                handle.http_addr = Some(c.addr);
                handle.control = Some(c);
            }
            Err(error) => {
                // Leave nothing running behind a failed start.
                let _ = handle.shutdown();
                return Err(StartError::Http {
                    addr: config.http,
                    error,
                });
            }
        }
    }
    Ok(handle)
}

impl ServerHandle {
    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP control address, unless disabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The open-file limit in force.
    pub fn fd_limit(&self) -> FdLimit {
        self.fd_limit
    }

    /// Warnings from start-up, each with its fix.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Totals over every closed second so far.
    pub fn total(&self) -> SecondStats {
        Published::lock(&self.published).total.clone()
    }

    /// The last closed seconds, oldest first.
    pub fn recent(&self) -> Vec<SecondStats> {
        let p = Published::lock(&self.published);
        p.recent.iter().cloned().collect()
    }

    /// What the ledger held at start.
    pub fn replayed(&self) -> Replayed {
        self.replayed
    }

    /// Envelopes waiting in the rings now.
    pub fn envelopes_in_rings(&self) -> u64 {
        self.rings.len() as u64
    }

    /// Stops accepting, flushes pending answers, stops every thread, and
    /// returns the run's totals.
    ///
    /// # Panics
    ///
    /// When a worker's poll failed or a thread panicked: both are broken
    /// invariants, not operating errors.
    pub fn shutdown(self) -> Summary {
        for w in &self.workers {
            let _ = w.inbox.send(CoreMsg::Shutdown);
            let _ = w.waker.wake();
        }
        for (i, w) in self.workers.into_iter().enumerate() {
            // A failed core already said so when it stopped; the others'
            // totals still stand.
            if let Ok(Err(e)) = w.thread.join() {
                eprintln!("hongbao: core {i} had stopped early: {e}");
            }
        }
        if let Some(c) = self.control {
            c.stop();
        }
        drop(self.generator_commands);
        self.generator.join().expect("generator thread panicked");
        // Every producer is gone now: the writer drains and ends.
        if let Some(w) = self.ledger_writer {
            w.join().expect("ledger writer panicked");
        }
        let mut summary = self.aggregator.join().expect("stats thread panicked");
        summary.envelopes_in_rings = self.rings.len() as u64;
        summary
    }
}

/// The stats thread: closes seconds, prints and publishes them, and hands
/// histograms back to the cores. Returns the totals once every source is gone.
fn aggregate(
    cores: usize,
    reports: Receiver<Report>,
    recycle: Vec<Sender<Box<LatencyHistogram>>>,
    published: Arc<Mutex<Published>>,
    mut stats_file: Option<std::fs::File>,
    quiet: bool,
    mut latency_log: Option<latency_log::LatencyLog>,
) -> Summary {
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
        let mut p = Published::lock(&published);
        for s in closed {
            if p.recent.len() == SECONDS_KEPT {
                p.recent.pop_front();
            }
            p.recent.push_back(s);
        }
        p.total = agg.total.clone();
        p.service = agg.total_latency_ns().to_prom();
    };
    while let Ok(report) = reports.recv() {
        let core = match &report {
            Report::Core { core, .. } => Some(*core),
            Report::Generator { .. } | Report::CoreGone { .. } => None,
        };
        if let (Some(core), Some(h)) = (core, agg.add(report)) {
            let _ = recycle[core].try_send(h);
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
    format!("{:.1}", ns as f64 / 1000.0)
}
