//! Cluster mode: the two threads that talk to the cluster's engine (Redis
//! Cluster, through [`crate::cluster::Engine`]), so that no core ever waits
//! on it.
//!
//! Owns: the engine thread (claims, presence, deliveries, packet creation
//! and routing, the envelope leases, expiry refunds, packet ids) and the
//! push reader (this node's push stream, read with a blocking read and
//! acknowledged once each push is handed to its user's home core). Must
//! not: answer a claim "paid" before the engine has it on
//! `--engine-replicas` replicas and this node's ledger has its mirror;
//! block a core; wait without a deadline.
//!
//! Claims travel: core → [`EngineJob::Claim`] (bounded channel) → a batch of
//! up to `CLAIM_BATCH_MAX` `hb_claim` calls in one round trip → `WAIT`
//! (the primaries the batch wrote to) → [`Record::ClusterClaim`] mirrors, one ledger sync for
//! the batch → [`CoreMsg::ClaimAnswer`] to each claim's core. A batch that
//! fails anywhere is tried again whole (the engine answers a repeat with
//! the same amount); a claim older than `--engine-timeout` is answered 0
//! (not confirmed; safe to retry) and counted `claims_unconfirmed`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};
use serde::Serialize;

use crate::cluster::{
    ClaimOutcome, ClaimReq, Created, Engine, EngineConfig, EngineError, EnginePacket, PushNote,
};
use crate::generator::{HandOver, LeaseGrant};
use crate::ids::{Cents, PacketId, UserId};
use crate::ledger::{Entry, Ledger, Record};
use crate::mesh::{CoreMsg, EngineJob, Peers};
use crate::packets::{NewPacket, share};
use crate::wire::{Frame, PUSH_USERS};

/// Claims decided in one round trip to the engine.
const CLAIM_BATCH_MAX: usize = 512;
/// Logins (or logouts) whose presence is set in one round trip.
const LOGIN_BATCH_MAX: usize = 512;
/// Jobs the cores may have queued for the engine thread: past this a core
/// keeps its jobs and stops reading its connections (backpressure).
pub(crate) const JOBS_LEN: usize = 16 * 1024;
/// Packets the generator may have handed over and the engine thread not
/// yet created: past this the generator waits (up to its deadline).
pub(crate) const CREATES_LEN: usize = 4096;
/// Presence updates kept while the engine is slow or away (each is given
/// up after `--engine-timeout` anyway): past this the oldest is given up
/// at once (`presence_lost`).
const PRESENCE_MAX: usize = 256 * 1024;
/// Deliveries waiting to leave their mailboxes: past this the oldest is
/// forgotten (`deliveries_dropped`; the push may then come again at a
/// later login).
const DELIVERED_MAX: usize = 64 * 1024;
/// Control requests waiting (each one HTTP request, which waits 2 s).
pub(crate) const REQUESTS_LEN: usize = 64;
/// Lease grants waiting for the generator (it takes them every 100 ms;
/// the engine thread grants at most one per 200 ms).
pub(crate) const LEASES_LEN: usize = 16;
/// How long the engine thread waits for work before it looks at its
/// timers: short, so a claim never waits long for its batch.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// After an engine call failed, the engine thread retries no sooner than
/// this (a failover takes seconds; spinning would not shorten it).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The longest one nap of a pause between retries: a stop asked for during
/// the pause is seen within this, so shutdown never waits a whole pause.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(50);
/// How often an unreachable engine is dialled again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// How often the node asks the budget for envelopes (and says it lives).
const LEASE_EVERY: Duration = Duration::from_millis(200);
/// A node leases this many seconds of its rate at a time, when what it
/// holds falls below half of that. Bounds what a dying node takes with it.
const LEASE_SECONDS: u64 = 1;
/// How often expired packets of this node are refunded.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// Packet ids kept reserved ahead for the generator.
const IDS_AHEAD: usize = 256;
/// The generator's queue of packet ids: a refill of [`IDS_AHEAD`] comes
/// when fewer than half of that are left, so at most one and a half times
/// it are ever queued, and a refill always fits.
pub(crate) const IDS_LEN: usize = 2 * IDS_AHEAD;
/// Longest single `WAIT`.
const WAIT_MAX: Duration = Duration::from_secs(1);
/// How long a message to a core may wait on its full inbox.
const CORE_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Delivered pushes taken out of mailboxes in one round trip.
const DELIVERED_BATCH_MAX: usize = 512;
/// The longest one round spends on each queue of other work (packets to
/// create and route, logins and logouts, delivered pushes) before claims
/// get their turn again; what is in hand is finished first (a packet: at
/// most four round trips; a batch of presence or deliveries: one). So a
/// packet storm or a mass disconnect never holds claims back for long.
const QUEUE_ROUND_MAX: Duration = Duration::from_millis(5);
/// Pushes read from the stream per read.
const PUSH_READ_MAX: usize = 256;
/// How long one blocking read of the push stream waits.
const PUSH_BLOCK: Duration = Duration::from_millis(500);

/// What the control asks of the engine thread.
#[derive(Debug)]
pub(crate) enum EngineRequest {
    /// `/yaohongbao` in cluster mode: the fleet's envelope rate and total;
    /// the answer is the budget's new epoch, or why it failed.
    SetBudget {
        /// Envelopes per second, fleet-wide.
        qps: u64,
        /// Envelopes in all, fleet-wide.
        total: u64,
        /// Where to answer.
        reply: Sender<Result<u64, String>>,
    },
}

/// The engine threads' counters and state, read by `/status`.
#[derive(Debug, Default)]
pub struct EngineStatus {
    /// True while the last engine call succeeded.
    pub available: AtomicBool,
    /// Claims received from the cores.
    pub claims: AtomicU64,
    /// Claims that moved money.
    pub claims_paid: AtomicU64,
    /// Repeats answered the same amount.
    pub claims_repeat: AtomicU64,
    /// Claims answered 0: stranger, unknown or expired packet.
    pub claims_zero: AtomicU64,
    /// Claims answered 0 because the engine could not confirm them in time.
    pub claims_unconfirmed: AtomicU64,
    /// Cents paid by claims this node acknowledged.
    pub cents_claimed: AtomicU64,
    /// Round trips of claims.
    pub claim_batches: AtomicU64,
    /// `WAIT`s that found fewer replicas than `--engine-replicas`.
    pub wait_short: AtomicU64,
    /// Engine calls that failed.
    pub errors: AtomicU64,
    /// Connections made to the engine (the first included).
    pub connects: AtomicU64,
    /// Packets created in the engine by this node.
    pub packets_created: AtomicU64,
    /// Packets handed over by the generator, not yet in the engine.
    pub packets_pending: AtomicU64,
    /// Pushes routed to a node's stream.
    pub pushes_routed: AtomicU64,
    /// Pushes the router found no room for in a mailbox (oldest dropped).
    pub mailbox_drops: AtomicU64,
    /// Pushes read from this node's stream.
    pub pushes_read: AtomicU64,
    /// Pushes handed back by a login (the user's mailbox).
    pub pushes_at_login: AtomicU64,
    /// Presence updates (logins, last logouts) made.
    pub presence: AtomicU64,
    /// Presence updates given up after `--engine-timeout` (or past
    /// `PRESENCE_MAX` waiting).
    pub presence_lost: AtomicU64,
    /// Deliveries not reported to the engine (past `DELIVERED_MAX`).
    pub deliveries_dropped: AtomicU64,
    /// Envelopes leased from the fleet's budget.
    pub envelopes_leased: AtomicU64,
    /// The budget's epoch as last seen.
    pub budget_epoch: AtomicU64,
    /// The fleet's envelope rate as last seen.
    pub budget_qps: AtomicU64,
    /// The fleet's envelope total as last seen.
    pub budget_total: AtomicU64,
    /// Envelopes leased fleet-wide as last seen.
    pub budget_leased: AtomicU64,
    /// Live nodes as the budget last saw them.
    pub live_nodes: AtomicU64,
    /// Refunds made at expiry of this node's packets.
    pub refunds: AtomicU64,
    /// Their cents.
    pub cents_refunded: AtomicU64,
    /// The last engine error, for `/status`.
    pub last_error: Mutex<String>,
}

/// A snapshot of [`EngineStatus`] for `/status`.
#[derive(Debug, Serialize)]
pub struct EngineReport {
    /// This node's id.
    pub node: u32,
    /// Whether claims and packets can be served now.
    pub available: bool,
    /// Claims received.
    pub claims: u64,
    /// Paid.
    pub claims_paid: u64,
    /// Repeats.
    pub claims_repeat: u64,
    /// Answered 0 by the engine.
    pub claims_zero: u64,
    /// Answered 0 unconfirmed.
    pub claims_unconfirmed: u64,
    /// Cents paid.
    pub cents_claimed: u64,
    /// Round trips of claims.
    pub claim_batches: u64,
    /// Short `WAIT`s.
    pub wait_short: u64,
    /// Failed engine calls.
    pub errors: u64,
    /// Connections made.
    pub connects: u64,
    /// Packets created.
    pub packets_created: u64,
    /// Packets waiting for the engine.
    pub packets_pending: u64,
    /// Pushes routed.
    pub pushes_routed: u64,
    /// Mailbox drops.
    pub mailbox_drops: u64,
    /// Pushes read from this node's stream.
    pub pushes_read: u64,
    /// Pushes from mailboxes at login.
    pub pushes_at_login: u64,
    /// Presence updates.
    pub presence: u64,
    /// Presence updates given up.
    pub presence_lost: u64,
    /// Deliveries not reported.
    pub deliveries_dropped: u64,
    /// Envelopes leased by this node.
    pub envelopes_leased: u64,
    /// The fleet budget as last seen: epoch, qps, total, leased, live nodes.
    pub budget: BudgetReport,
    /// Refunds made.
    pub refunds: u64,
    /// Their cents.
    pub cents_refunded: u64,
    /// The last error.
    pub last_error: String,
}

/// The fleet's budget as this node last saw it.
#[derive(Debug, Serialize)]
pub struct BudgetReport {
    /// Epoch (one per `/yaohongbao`).
    pub epoch: u64,
    /// Envelopes per second, fleet-wide.
    pub qps: u64,
    /// Envelopes in all.
    pub total: u64,
    /// Envelopes leased fleet-wide.
    pub leased: u64,
    /// Nodes that leased in the last seconds.
    pub live_nodes: u64,
}

impl EngineStatus {
    /// The snapshot `/status` shows.
    pub fn report(&self, node: u32) -> EngineReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EngineReport {
            node,
            available: self.available.load(Ordering::Relaxed),
            claims: g(&self.claims),
            claims_paid: g(&self.claims_paid),
            claims_repeat: g(&self.claims_repeat),
            claims_zero: g(&self.claims_zero),
            claims_unconfirmed: g(&self.claims_unconfirmed),
            cents_claimed: g(&self.cents_claimed),
            claim_batches: g(&self.claim_batches),
            wait_short: g(&self.wait_short),
            errors: g(&self.errors),
            connects: g(&self.connects),
            packets_created: g(&self.packets_created),
            packets_pending: g(&self.packets_pending),
            pushes_routed: g(&self.pushes_routed),
            mailbox_drops: g(&self.mailbox_drops),
            pushes_read: g(&self.pushes_read),
            pushes_at_login: g(&self.pushes_at_login),
            presence: g(&self.presence),
            presence_lost: g(&self.presence_lost),
            deliveries_dropped: g(&self.deliveries_dropped),
            envelopes_leased: g(&self.envelopes_leased),
            budget: BudgetReport {
                epoch: g(&self.budget_epoch),
                qps: g(&self.budget_qps),
                total: g(&self.budget_total),
                leased: g(&self.budget_leased),
                live_nodes: g(&self.live_nodes),
            },
            refunds: g(&self.refunds),
            cents_refunded: g(&self.cents_refunded),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }

    fn failed(&self, e: &EngineError) {
        self.available.store(false, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = e.to_string();
        }
    }

    fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// A packet of this node's to refund at its expiry.
#[derive(Clone, Copy, Debug)]
struct Expiring {
    /// The packet.
    pub id: PacketId,
    /// Its expiry, Unix seconds.
    pub until_s: u32,
}

/// Everything the engine thread starts with.
pub(crate) struct EngineSetup {
    /// Where the engine is.
    pub config: EngineConfig,
    /// This node's id.
    pub node: u32,
    /// Jobs from the cores.
    pub jobs: Receiver<EngineJob>,
    /// Packets from the generator, recorded and durable, to create.
    pub creates: Receiver<Box<HandOver>>,
    /// Requests from the control.
    pub requests: Receiver<EngineRequest>,
    /// The cores' inboxes and wakers.
    pub peers: Peers,
    /// This node's ledger (disabled without `--data-dir`).
    pub ledger: Ledger,
    /// The producer number the engine thread writes as.
    pub producer: u16,
    /// Counters and state for `/status`.
    pub status: Arc<EngineStatus>,
    /// Set when the server stops.
    pub stop: Arc<AtomicBool>,
    /// Pushes kept per user in the engine's mailbox.
    pub mailbox_max: u32,
    /// Replicas a claim must reach before its answer.
    pub replicas: u32,
    /// How long a claim or a presence update may wait for the engine.
    pub timeout: Duration,
    /// Packet ids for the generator, reserved from the engine.
    pub ids: Sender<PacketId>,
    /// Envelope leases for the generator.
    pub leases: Sender<LeaseGrant>,
    /// Envelopes the generator still holds leases for (it counts down).
    pub allowance: Arc<AtomicU64>,
    /// Seed of the packet splits.
    pub seed: u64,
    /// This node's packets from its ledger, not yet refunded: created again
    /// in the engine (a no-op when there already) and refunded at expiry.
    pub replayed: Vec<NewPacket>,
}

/// A claim waiting for its batch.
struct PendingClaim {
    packet: PacketId,
    user: UserId,
    reply: crate::mesh::ConnAddr,
    since: Instant,
    /// An earlier try's outcome was "paid" (a retry then says "repeat").
    paid_before: bool,
}

/// A presence update waiting for the engine.
struct PendingPresence {
    user: UserId,
    online: bool,
    since: Instant,
}

/// A packet on its way into the engine: created, then routed to each target.
struct Creation {
    packet: EnginePacket,
    until_s: u32,
    created: bool,
    /// Targets routed so far.
    routed: usize,
    /// Who waits for the creation (`/packet`), answered once the engine
    /// has the packet.
    created_reply: Option<Sender<Option<PacketId>>>,
}

/// Runs the engine thread until `stop` is set.
pub(crate) fn run(setup: EngineSetup) {
    let mut t = EngineThread::new(setup);
    while !t.stop.load(Ordering::Relaxed) {
        t.connect_if_due();
        t.take_work();
        t.serve();
    }
    t.finish();
}

struct EngineThread {
    s: EngineSetup,
    stop: Arc<AtomicBool>,
    engine: Option<Engine>,
    last_dial: Option<Instant>,
    rng: fastrand::Rng,
    claims: VecDeque<PendingClaim>,
    presence: VecDeque<PendingPresence>,
    delivered: VecDeque<(UserId, PushNote)>,
    creations: VecDeque<Creation>,
    expiring: VecDeque<Expiring>,
    /// The next lease request's number (unique across restarts: it starts
    /// at the start's Unix milliseconds).
    lease_seq: u64,
    /// A lease request that failed, to repeat with the same number.
    lease_retry: Option<(u64, u64)>,
    last_lease: Option<Instant>,
    last_expire: Instant,
    /// The last grant's epoch and per-node rate, to tell the generator of
    /// a change.
    lease_seen: (u64, u64),
    /// No engine work before this (after a failure).
    paused_until: Option<Instant>,
}

impl EngineThread {
    fn new(s: EngineSetup) -> Self {
        let mut creations = VecDeque::new();
        let mut rng = fastrand::Rng::with_seed(s.seed ^ u64::from(s.node));
        for p in &s.replayed {
            creations.push_back(creation(p, s.node, &mut rng));
        }
        EngineThread {
            stop: s.stop.clone(),
            engine: None,
            last_dial: None,
            rng,
            claims: VecDeque::new(),
            presence: VecDeque::new(),
            delivered: VecDeque::new(),
            creations,
            expiring: VecDeque::new(),
            lease_seq: crate::clock::unix_now().as_millis() as u64,
            lease_retry: None,
            last_lease: None,
            last_expire: Instant::now(),
            lease_seen: (0, 0),
            paused_until: None,
            s,
        }
    }

    /// Dials the engine when there is none, at most once per
    /// [`RECONNECT_EVERY`]; loads (or upgrades) the function library.
    fn connect_if_due(&mut self) {
        if self.engine.is_some()
            || self
                .last_dial
                .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
        {
            return;
        }
        self.last_dial = Some(Instant::now());
        let connected = Engine::connect(&self.s.config).and_then(|mut e| {
            e.load_functions()?;
            Ok(e)
        });
        match connected {
            Ok(e) => {
                self.engine = Some(e);
                EngineStatus::add(&self.s.status.connects, 1);
                // Packet ids before the node says it is available: a
                // /packet right after would find none and fail.
                if self.serve_ids() {
                    self.s.status.available.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => self.s.status.failed(&e),
        }
    }

    /// Takes what the cores, the generator and the control sent: with
    /// nothing left to do, first waits up to [`IDLE_WAIT`] for any of them,
    /// then takes what is there.
    fn take_work(&mut self) {
        let busy = !self.claims.is_empty()
            || !self.presence.is_empty()
            || !self.creations.is_empty()
            || !self.delivered.is_empty();
        let first = if busy {
            self.s.jobs.try_recv().ok()
        } else {
            self.wait_for_work()
        };
        let now = Instant::now();
        for job in first
            .into_iter()
            .chain(self.s.jobs.try_iter().take(JOBS_LEN))
        {
            match job {
                EngineJob::Claim {
                    packet,
                    user,
                    reply,
                } => {
                    EngineStatus::add(&self.s.status.claims, 1);
                    self.claims.push_back(PendingClaim {
                        packet,
                        user,
                        reply,
                        since: now,
                        paid_before: false,
                    });
                }
                EngineJob::Online { user } => self.presence.push_back(PendingPresence {
                    user,
                    online: true,
                    since: now,
                }),
                EngineJob::Offline { user } => self.presence.push_back(PendingPresence {
                    user,
                    online: false,
                    since: now,
                }),
                EngineJob::Delivered { user, push } => {
                    if let Some(note) = note_of(&push) {
                        self.delivered.push_back((user, note));
                    }
                }
            }
        }
        while self.presence.len() > PRESENCE_MAX {
            self.presence.pop_front();
            EngineStatus::add(&self.s.status.presence_lost, 1);
        }
        while self.delivered.len() > DELIVERED_MAX {
            self.delivered.pop_front();
            EngineStatus::add(&self.s.status.deliveries_dropped, 1);
        }
        while self.creations.len() < CREATES_LEN {
            let Ok(h) = self.s.creates.try_recv() else {
                break;
            };
            let mut c = creation(&h.packet, self.s.node, &mut self.rng);
            c.created_reply = h.created;
            self.creations.push_back(c);
        }
        self.s
            .status
            .packets_pending
            .store(self.creations.len() as u64, Ordering::Relaxed);
    }

    /// Waits up to [`IDLE_WAIT`] for a core's job, a packet from the
    /// generator or a control request, whichever comes first (a packet or
    /// a request must not wait out the timeout: `/packet` and the pushes
    /// of every packet wait for it); the job, if that is what came.
    fn wait_for_work(&self) -> Option<EngineJob> {
        let mut select = Select::new();
        let jobs = select.recv(&self.s.jobs);
        let creates = select.recv(&self.s.creates);
        let requests = select.recv(&self.s.requests);
        let ready = select.ready_timeout(IDLE_WAIT).ok()?;
        // Ready also means disconnected: every core, the generator or the
        // control gone, the server is stopping. Not a spin: wait instead.
        let gone = match ready {
            i if i == jobs => match self.s.jobs.try_recv() {
                Ok(j) => return Some(j),
                Err(e) => e.is_disconnected(),
            },
            i if i == creates => self.s.creates.is_empty(),
            i if i == requests => self.s.requests.is_empty(),
            _ => false,
        };
        if gone {
            std::thread::sleep(IDLE_WAIT);
        }
        None
    }

    /// One round of engine work; claims first.
    fn serve(&mut self) {
        // Claims past their deadline are answered 0 whatever the engine does.
        self.expire_claims();
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            std::thread::sleep(IDLE_WAIT);
            return;
        }
        self.paused_until = None;
        if self.engine.is_none() {
            self.fail_presence_past_deadline();
            self.answer_requests_unavailable();
            // Nothing to do until the next dial (claims and logins wait
            // for their deadline): not a spin on the work they leave.
            std::thread::sleep(IDLE_WAIT);
            return;
        }
        let ok = self.serve_claims()
            && self.serve_presence()
            && self.serve_delivered()
            && self.serve_requests()
            && self.serve_creations()
            && self.serve_ids()
            && self.serve_lease()
            && self.serve_expiry();
        if ok {
            // Every call of the round succeeded: available again, whether
            // or not claims came (a node without users leases and routes).
            self.s.status.available.store(true, Ordering::Relaxed);
        } else {
            self.paused_until = Some(Instant::now() + RETRY_PAUSE);
        }
        self.fail_presence_past_deadline();
    }

    /// Records a failed call: the connection is dropped when the failure
    /// is not one a retry on it can cure. Returns false (for `serve`).
    fn failed(&mut self, e: &EngineError) -> bool {
        self.s.status.failed(e);
        if !e.is_retryable() {
            // A script error or a bad reply will not cure itself on this
            // connection either; a fresh one reloads the library.
            self.engine = None;
        }
        false
    }

    fn expire_claims(&mut self) {
        let now = Instant::now();
        while let Some(c) = self.claims.front() {
            if now.duration_since(c.since) < self.s.timeout {
                break;
            }
            let c = self.claims.pop_front().expect("front above");
            EngineStatus::add(&self.s.status.claims_unconfirmed, 1);
            self.answer(c.reply, c.packet, Cents(0));
        }
    }

    /// Decides a batch of claims, waits for its replicas, mirrors it in the
    /// ledger and answers it.
    fn serve_claims(&mut self) -> bool {
        if self.claims.is_empty() {
            return true;
        }
        let n = self.claims.len().min(CLAIM_BATCH_MAX);
        let now_ms = crate::clock::unix_now().as_millis() as u64;
        let reqs: Vec<ClaimReq> = self
            .claims
            .iter()
            .take(n)
            .map(|c| ClaimReq {
                packet: c.packet,
                user: c.user,
                now_ms,
            })
            .collect();
        let engine = self.engine.as_mut().expect("checked by serve");
        EngineStatus::add(&self.s.status.claim_batches, 1);
        let outcomes = match engine.claims(&reqs) {
            Ok(o) if o.len() == n => o,
            Ok(o) => {
                return self.failed(&EngineError::BadReply(format!(
                    "{} outcomes for {n} claims",
                    o.len()
                )));
            }
            Err(e) => return self.failed(&e),
        };
        for (c, o) in self.claims.iter_mut().zip(&outcomes) {
            c.paid_before |= matches!(o, ClaimOutcome::Paid(_));
        }
        if self.s.replicas > 0 {
            let packets: Vec<PacketId> = reqs.iter().map(|r| r.packet).collect();
            match engine.wait_replicas_for(&packets, self.s.replicas, WAIT_MAX.min(self.s.timeout))
            {
                Ok(got) if got >= self.s.replicas => {}
                Ok(_) => {
                    EngineStatus::add(&self.s.status.wait_short, 1);
                    // Not on enough replicas yet (a replica down, a
                    // failover): the whole batch again after a pause.
                    self.paused_until = Some(Instant::now() + RETRY_PAUSE);
                    return true;
                }
                Err(e) => return self.failed(&e),
            }
        }
        // Mirrors of every answer that carries money, then one sync.
        let at_ms = now_ms;
        if self.s.ledger.is_enabled() {
            for (c, o) in self.claims.iter().zip(&outcomes) {
                let cents = o.cents();
                if cents.0 > 0 {
                    self.s.ledger.send(Entry::Record {
                        producer: self.s.producer,
                        record: Record::ClusterClaim {
                            id: c.packet,
                            user: c.user,
                            cents,
                            at_ms,
                        },
                    });
                }
            }
            if !self.s.ledger.sync() {
                // The writer is gone: the server is stopping. Nothing here
                // is answered "paid".
                return true;
            }
        }
        self.s.status.available.store(true, Ordering::Relaxed);
        let st = self.s.status.clone();
        for o in outcomes {
            let c = self.claims.pop_front().expect("n claims pending");
            let cents = o.cents();
            match o {
                ClaimOutcome::Paid(_) => {
                    EngineStatus::add(&st.claims_paid, 1);
                    EngineStatus::add(&st.cents_claimed, cents.0);
                }
                ClaimOutcome::Repeat(_) if c.paid_before => {
                    EngineStatus::add(&st.claims_paid, 1);
                    EngineStatus::add(&st.cents_claimed, cents.0);
                }
                ClaimOutcome::Repeat(_) => EngineStatus::add(&st.claims_repeat, 1),
                _ => EngineStatus::add(&st.claims_zero, 1),
            }
            self.answer(c.reply, c.packet, cents);
        }
        true
    }

    /// Sends a claim's answer to the core holding its connection.
    fn answer(&self, to: crate::mesh::ConnAddr, packet: PacketId, cents: Cents) {
        let core = usize::from(to.core);
        let msg = CoreMsg::ClaimAnswer { to, packet, cents };
        if self.s.peers.inboxes[core]
            .send_timeout(msg, CORE_SEND_TIMEOUT)
            .is_ok()
        {
            let _ = self.s.peers.wakers[core].wake();
        }
    }

    /// Hands a push to `user`'s home core, which delivers it where they are
    /// online on this node (or leaves it to the engine's mailbox).
    fn push_home(peers: &Peers, user: UserId, note: &PushNote) {
        let core = user.0 as usize % peers.inboxes.len();
        let msg = CoreMsg::Push {
            user,
            push: frame_of(note),
            hops: 0,
        };
        if peers.inboxes[core]
            .send_timeout(msg, CORE_SEND_TIMEOUT)
            .is_ok()
        {
            let _ = peers.wakers[core].wake();
        }
    }

    /// Presence in order: a run of logins in one round trip (their mail
    /// comes back as pushes), a run of logouts in another. Gives the rest
    /// back to the next round after [`QUEUE_ROUND_MAX`] (a mass login or
    /// disconnect must not hold claims back).
    fn serve_presence(&mut self) -> bool {
        let node = self.s.node;
        let started = Instant::now();
        while let Some(first) = self.presence.front() {
            if started.elapsed() >= QUEUE_ROUND_MAX {
                return true;
            }
            let online = first.online;
            let engine = self.engine.as_mut().expect("checked by serve");
            let now_ms = crate::clock::unix_now().as_millis() as u64;
            let batch: Vec<(UserId, u64)> = self
                .presence
                .iter()
                .take(LOGIN_BATCH_MAX)
                .take_while(|p| p.online == online)
                .map(|p| (p.user, now_ms))
                .collect();
            if !online {
                let users: Vec<UserId> = batch.iter().map(|&(u, _)| u).collect();
                if let Err(e) = engine.logouts(&users, node) {
                    return self.failed(&e);
                }
                EngineStatus::add(&self.s.status.presence, batch.len() as u64);
                self.presence.drain(..batch.len());
                continue;
            }
            match engine.logins(&batch, node) {
                Ok(mail) => {
                    for ((user, _), notes) in batch.iter().zip(mail) {
                        EngineStatus::add(&self.s.status.pushes_at_login, notes.len() as u64);
                        for note in &notes {
                            Self::push_home(&self.s.peers, *user, note);
                        }
                    }
                    EngineStatus::add(&self.s.status.presence, batch.len() as u64);
                    self.presence.drain(..batch.len());
                }
                Err(e) => return self.failed(&e),
            }
        }
        true
    }

    fn fail_presence_past_deadline(&mut self) {
        let now = Instant::now();
        while self
            .presence
            .front()
            .is_some_and(|p| now.duration_since(p.since) >= self.s.timeout)
        {
            self.presence.pop_front();
            EngineStatus::add(&self.s.status.presence_lost, 1);
        }
    }

    /// Pushes written to their users leave the mailboxes, a batch of up to
    /// [`DELIVERED_BATCH_MAX`] in one round trip, for at most
    /// [`QUEUE_ROUND_MAX`] a round; best effort (a failure leaves the
    /// pushes to be delivered again at a later login).
    fn serve_delivered(&mut self) -> bool {
        let started = Instant::now();
        while !self.delivered.is_empty() && started.elapsed() < QUEUE_ROUND_MAX {
            let n = self.delivered.len().min(DELIVERED_BATCH_MAX);
            let batch: Vec<(UserId, PushNote)> = self.delivered.drain(..n).collect();
            let engine = self.engine.as_mut().expect("checked by serve");
            if let Err(e) = engine.delivered_many(&batch) {
                return self.failed(&e);
            }
        }
        true
    }

    fn serve_requests(&mut self) -> bool {
        while let Ok(req) = self.s.requests.try_recv() {
            let EngineRequest::SetBudget { qps, total, reply } = req;
            let engine = self.engine.as_mut().expect("checked by serve");
            match engine.set_budget(qps, total) {
                Ok(epoch) => {
                    let _ = reply.send(Ok(epoch));
                    // Lease at once under the new budget.
                    self.last_lease = None;
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                    return self.failed(&e);
                }
            }
        }
        true
    }

    fn answer_requests_unavailable(&mut self) {
        while let Ok(req) = self.s.requests.try_recv() {
            let EngineRequest::SetBudget { reply, .. } = req;
            let _ = reply.send(Err("the cluster's engine is unreachable".into()));
        }
    }

    /// Creates the packets handed over, then routes each to its targets:
    /// into their mailboxes, and to the push stream of the node where each
    /// is online (the routes of a packet in one round trip, its pushes in
    /// another), then marks it routed in the engine. Each step may be
    /// repeated: creating twice is a no-op, routing twice adds the same
    /// mailbox entry; a packet found created already (a replay, a retry) is
    /// routed again unless it is marked. Gives the rest back to the next
    /// round after [`QUEUE_ROUND_MAX`], so that claims never wait
    /// behind a long queue of packets.
    fn serve_creations(&mut self) -> bool {
        let started = Instant::now();
        while let Some(c) = self.creations.front_mut() {
            if started.elapsed() >= QUEUE_ROUND_MAX {
                return true;
            }
            let engine = self.engine.as_mut().expect("checked by serve");
            if !c.created {
                match engine.create_packet(&c.packet) {
                    Ok(created) => {
                        if created == Created::Exists {
                            // Replayed after a restart, or our own retry
                            // after a lost answer: there already, but its
                            // pushes went out only if its routing finished
                            // (the node may have died, or the call failed,
                            // part way). Routed again unless marked done;
                            // a push twice is a repeat claim at worst.
                            match engine.is_routed(c.packet.id) {
                                Ok(true) => c.routed = c.packet.targets.len(),
                                Ok(false) => {}
                                Err(e) => return self.failed(&e),
                            }
                        } else {
                            EngineStatus::add(&self.s.status.packets_created, 1);
                        }
                        c.created = true;
                        if let Some(reply) = c.created_reply.take() {
                            let _ = reply.send(Some(c.packet.id));
                        }
                        self.expiring.push_back(Expiring {
                            id: c.packet.id,
                            until_s: c.until_s,
                        });
                    }
                    Err(e) => return self.failed(&e),
                }
            }
            if c.routed < c.packet.targets.len() {
                let note = note_of_packet(&c.packet, c.until_s);
                let users = &c.packet.targets[c.routed..];
                let routed = match engine.route_pushes(users, &note, self.s.mailbox_max) {
                    Ok(r) => r,
                    Err(e) => return self.failed(&e),
                };
                // Counted once: a note routed again drops nothing more.
                let dropped: u64 = routed.iter().map(|r| u64::from(r.dropped)).sum();
                EngineStatus::add(&self.s.status.mailbox_drops, dropped);
                let online: Vec<(u32, UserId)> = users
                    .iter()
                    .zip(&routed)
                    .filter_map(|(&user, r)| r.online_at.map(|node| (node, user)))
                    .collect();
                if let Err(e) = engine.send_pushes(&online, &note) {
                    // Routed again next round (the same mailbox entries),
                    // and pushed again.
                    return self.failed(&e);
                }
                EngineStatus::add(&self.s.status.pushes_routed, online.len() as u64);
                c.routed = c.packet.targets.len();
            }
            // Done: a replay or a retry of it need not route it again.
            let now_ms = crate::clock::unix_now().as_millis() as u64;
            if let Err(e) = engine.mark_routed(&c.packet, now_ms) {
                return self.failed(&e);
            }
            self.creations.pop_front();
        }
        self.s.status.packets_pending.store(0, Ordering::Relaxed);
        true
    }

    /// Keeps [`IDS_AHEAD`] packet ids ready for the generator.
    fn serve_ids(&mut self) -> bool {
        if self.s.ids.len() >= IDS_AHEAD / 2 {
            return true;
        }
        let engine = self.engine.as_mut().expect("checked by serve");
        match engine.reserve_packet_ids(IDS_AHEAD as u32) {
            Ok(range) => {
                for id in range {
                    if self.s.ids.try_send(PacketId(id)).is_err() {
                        break;
                    }
                }
                true
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Every [`LEASE_EVERY`]: says this node lives and leases envelopes
    /// when what the generator holds is under half of [`LEASE_SECONDS`] of
    /// its rate. A failed request is repeated with the same number, so the
    /// engine grants it once.
    fn serve_lease(&mut self) -> bool {
        if self.last_lease.is_some_and(|t| t.elapsed() < LEASE_EVERY) {
            return true;
        }
        self.last_lease = Some(Instant::now());
        let (seq, want) = match self.lease_retry {
            Some(r) => r,
            None => {
                let rate = self.lease_seen.1;
                let held = self.s.allowance.load(Ordering::Relaxed);
                let want = if held < rate * LEASE_SECONDS / 2 {
                    rate * LEASE_SECONDS - held
                } else {
                    0
                };
                self.lease_seq += 1;
                (self.lease_seq, want)
            }
        };
        let now_ms = crate::clock::unix_now().as_millis() as u64;
        let engine = self.engine.as_mut().expect("checked by serve");
        let lease = match engine.lease(self.s.node, seq, want, now_ms) {
            Ok(l) => l,
            Err(e) => {
                self.lease_retry = Some((seq, want));
                return self.failed(&e);
            }
        };
        self.lease_retry = None;
        let st = &self.s.status;
        st.budget_epoch.store(lease.epoch, Ordering::Relaxed);
        st.budget_qps.store(lease.qps, Ordering::Relaxed);
        st.budget_total.store(lease.total, Ordering::Relaxed);
        st.budget_leased.store(lease.leased, Ordering::Relaxed);
        st.live_nodes
            .store(u64::from(lease.live_nodes), Ordering::Relaxed);
        EngineStatus::add(&st.envelopes_leased, lease.granted);
        let rate = lease.qps.div_ceil(u64::from(lease.live_nodes.max(1)));
        if lease.granted > 0 || (lease.epoch, rate) != self.lease_seen {
            self.lease_seen = (lease.epoch, rate);
            let grant = LeaseGrant {
                epoch: lease.epoch,
                granted: lease.granted,
                rate,
            };
            // The generator takes grants at every wake-up (at least every
            // 100 ms); a full channel means it is gone or stopping.
            if let Err(TrySendError::Full(_)) = self.s.leases.try_send(grant) {
                // Never lost silently: counted as leased and not issued.
                EngineStatus::add(&st.errors, 1);
            }
        }
        true
    }

    /// Every [`EXPIRE_EVERY`]: refunds this node's packets whose time is up,
    /// once each, and mirrors each refund in the ledger.
    fn serve_expiry(&mut self) -> bool {
        if self.last_expire.elapsed() < EXPIRE_EVERY {
            return true;
        }
        self.last_expire = Instant::now();
        let now = crate::clock::unix_now();
        let (now_s, now_ms) = (now.as_secs(), now.as_millis() as u64);
        let mut refunded = false;
        while let Some(x) = self.expiring.front().copied() {
            if u64::from(x.until_s) > now_s {
                break;
            }
            let engine = self.engine.as_mut().expect("checked by serve");
            match engine.expire(x.id, now_ms) {
                Ok(Some(cents)) => {
                    self.s.ledger.send(Entry::Record {
                        producer: self.s.producer,
                        record: Record::ClusterRefund {
                            id: x.id,
                            cents,
                            at_ms: now_ms,
                        },
                    });
                    refunded = true;
                    EngineStatus::add(&self.s.status.refunds, 1);
                    EngineStatus::add(&self.s.status.cents_refunded, cents.0);
                }
                Ok(None) => {}
                Err(e) => return self.failed(&e),
            }
            self.expiring.pop_front();
        }
        if refunded && self.s.ledger.is_enabled() {
            self.s.ledger.sync();
        }
        true
    }

    /// The server is stopping: every claim still held is answered 0 (not
    /// confirmed), so no core waits for it.
    fn finish(&mut self) {
        while let Some(c) = self.claims.pop_front() {
            EngineStatus::add(&self.s.status.claims_unconfirmed, 1);
            self.answer(c.reply, c.packet, Cents(0));
        }
    }
}

/// A packet handed over by the generator, with its split computed once
/// (double average, integer cents, adding up to its amount).
fn creation(p: &NewPacket, node: u32, rng: &mut fastrand::Rng) -> Creation {
    let mut left = p.amount.0;
    let k = p.targets.len() as u64;
    let shares = (0..k)
        .map(|i| {
            // Amounts hold a cent per claimant (checked at creation), so
            // `share`'s precondition holds at every step.
            let s = share(left, k - i, rng);
            left -= s;
            Cents(s)
        })
        .collect();
    Creation {
        packet: EnginePacket {
            id: p.id,
            amount: p.amount,
            expires_ms: u64::from(p.until_s) * 1000,
            creator: node,
            targets: p.targets.to_vec(),
            shares,
        },
        until_s: p.until_s,
        created: false,
        routed: 0,
        created_reply: None,
    }
}

/// The push note of a packet: what a push frame carries, and its expiry.
fn note_of_packet(p: &EnginePacket, until_s: u32) -> PushNote {
    let mut targets = [UserId(0); PUSH_USERS];
    for (slot, &u) in targets.iter_mut().zip(&p.targets) {
        *slot = u;
    }
    PushNote {
        packet: p.id,
        amount: p.amount,
        claimants: p.targets.len() as u32,
        targets,
        expires_s: u64::from(until_s),
    }
}

/// The push frame (cmd 4) of a note.
fn frame_of(n: &PushNote) -> Frame {
    Frame::PacketPush {
        packet: n.packet,
        amount: n.amount,
        claimants: n.claimants,
        users: n.targets,
    }
}

/// The note of a push frame (its mailbox entry; the expiry is not part of
/// the entry's name).
fn note_of(push: &Frame) -> Option<PushNote> {
    match *push {
        Frame::PacketPush {
            packet,
            amount,
            claimants,
            users,
        } => Some(PushNote {
            packet,
            amount,
            claimants,
            targets: users,
            expires_s: 0,
        }),
        _ => None,
    }
}

/// Everything the push reader starts with.
pub(crate) struct PushReaderSetup {
    /// Where the engine is.
    pub config: EngineConfig,
    /// This node's id (its stream).
    pub node: u32,
    /// The cores' inboxes and wakers.
    pub peers: Peers,
    /// Counters and state.
    pub status: Arc<EngineStatus>,
    /// Set when the server stops.
    pub stop: Arc<AtomicBool>,
}

/// Runs the push reader until `stop` is set: this node's push stream, read
/// with a blocking read of at most `PUSH_BLOCK`, each push handed to its
/// user's home core, then acknowledged (a push handed over and lost with a
/// crash is still in the user's mailbox in the engine).
pub(crate) fn run_push_reader(s: PushReaderSetup) {
    let consumer = format!("node-{}", s.node);
    let mut engine: Option<Engine> = None;
    while !s.stop.load(Ordering::Relaxed) {
        let Some(e) = engine.as_mut() else {
            match Engine::connect(&s.config) {
                Ok(e) => engine = Some(e),
                Err(e) => {
                    s.status.failed(&e);
                    sleep_unless_stopped(&s.stop, RECONNECT_EVERY);
                }
            }
            continue;
        };
        match e.read_pushes(s.node, &consumer, PUSH_BLOCK, PUSH_READ_MAX) {
            Ok(pushes) => {
                if pushes.is_empty() {
                    continue;
                }
                EngineStatus::add(&s.status.pushes_read, pushes.len() as u64);
                let ids: Vec<String> = pushes.iter().map(|p| p.id.clone()).collect();
                for p in &pushes {
                    EngineThread::push_home(&s.peers, p.user, &p.note);
                }
                if let Err(err) = e.ack_pushes(s.node, &ids) {
                    // Read again after a reconnect (pending entries first):
                    // a push twice is claimed as a repeat at worst.
                    s.status.failed(&err);
                    engine = None;
                }
            }
            Err(err) => {
                s.status.failed(&err);
                if !err.is_retryable() {
                    engine = None;
                }
                sleep_unless_stopped(&s.stop, RETRY_PAUSE);
            }
        }
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(STOP_CHECK_EVERY));
    }
}
