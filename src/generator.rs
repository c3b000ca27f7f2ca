//! The envelope generator: one thread pacing envelopes into the per-core rings.
//!
//! Owns: the pacing `Schedule` (pure: no clock inside, so it is tested
//! exactly), the batch commands that the HTTP control sends, and the thread
//! that emits envelopes round-robin into the rings. Must not: drop an envelope
//! silently, burst at a second's start, or drift. Envelope `k` of a batch
//! (0-based) is due at `start + (k + 1) / rate`; the thread sleeps until the
//! next due time (or a command) and emits everything due, so every second
//! carries its share however late a wake-up was.
//!
//! The generator also makes sent red packets (`GET /fahongbao` and the
//! fuller `/packet`), paced the same way, and hands each to its owner core.
//!
//! Invariant: money enters only through the ledger. Every envelope and packet
//! is recorded and made durable (one sync per wake-up covers all it made)
//! before a ring or a core sees it.
//!
//! Invariant: envelopes counted `generated` = granted + returned + in rings.
//! An envelope counts as generated only once a ring has taken it; until then
//! it waits in the generator's queue (durable in the ledger, outstanding).
//! Envelopes counted `recorded` (the ledger's own "generated") = generated +
//! `ahead`, those waiting in that queue: so the server's totals and the
//! ledger's agree at every closed second and after a clean stop.
//! When every ring is full the generator keeps the envelopes, counts a stall,
//! and offers them again on its next wake-up; the schedule does not advance
//! meanwhile.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use crate::clock::NANOS_PER_SEC;
use crate::ids::{Cents, CoreId, EnvelopeId, PacketId, UserId};
use crate::ledger::{Entry, Ledger, LedgerCounters, Record};
use crate::mesh::{CoreMsg, Peers};
use crate::packets::NewPacket;
use crate::ring::{Envelope, EnvelopeRings};
use crate::stats::{GeneratorCounters, Report};

/// Envelopes or packets made per round before they are synced and handed
/// on: bounds the memory of one catch-up after a stall.
const MADE_PER_ROUND_MAX: u64 = 4096;
/// Envelopes are made, recorded and synced this far ahead of their due time,
/// and each is pushed into a ring when due: one sync covers 100 ms of
/// envelopes instead of one sync per wake-up. A refill happens when less than
/// half of it is left.
const LOOKAHEAD: Duration = Duration::from_millis(100);
/// The generator wakes at least this often, to close seconds and retry held
/// envelopes, even when nothing falls due.
const TICK: Duration = Duration::from_millis(100);
/// While a due envelope finds every ring full, it is offered again this soon:
/// short next to a ring's drain time, long enough not to spin.
const STALL_RETRY: Duration = Duration::from_millis(1);
/// Packets draw their amounts and targets from a stream of their own, seeded
/// from the same `--seed` turned by this many bits, so that making packets
/// does not shift the envelopes' amounts and a run still replays.
const PACKET_SEED_ROTATION: u32 = 17;
/// How long handing a packet to its owner core may wait on a full inbox
/// before the core counts as gone (the server is stopping).
const INBOX_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A batch's pacing: how many envelopes are due by a given time since start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Envelopes per second; 0 means the schedule emits nothing.
    pub rate: u64,
    /// How many envelopes in all; `None` runs until replaced.
    pub total: Option<u64>,
}

impl Schedule {
    /// Envelopes due by `elapsed` since the batch started: `floor(elapsed *
    /// rate)`, capped at the total.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let due = (elapsed.as_nanos() * u128::from(self.rate) / u128::from(NANOS_PER_SEC)) as u64;
        self.total.map_or(due, |t| due.min(t))
    }

    /// When envelope number `emitted` (0-based) falls due, since the start;
    /// `None` when the schedule has nothing more to emit.
    pub fn due_at(&self, emitted: u64) -> Option<Duration> {
        if self.rate == 0 || self.total.is_some_and(|t| emitted >= t) {
            return None;
        }
        // The smallest t with floor(t * rate) >= emitted + 1, in whole ns.
        let ns =
            (u128::from(emitted + 1) * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(self.rate));
        Some(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    /// True when a bounded schedule has emitted its whole total.
    pub fn is_done(&self, emitted: u64) -> bool {
        self.total.is_some_and(|t| emitted >= t)
    }
}

/// Who a packet batch is for and how much each packet holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSpec {
    /// Smallest amount, cents (at least `claimants`).
    pub cents_min: u64,
    /// Largest amount, cents (at most u32::MAX).
    pub cents_max: u64,
    /// Claimants per packet (1..=100).
    pub claimants: u16,
    /// Who: these users exactly (then `claimants` is their count), or
    /// `claimants` distinct users drawn from `users_min..=users_max`.
    pub users: PacketUsers,
}

/// The users a packet is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacketUsers {
    /// Drawn at random from this range, distinct.
    Range {
        /// Smallest user id.
        min: u32,
        /// Largest user id.
        max: u32,
    },
    /// Exactly these.
    List(Vec<UserId>),
}

/// What the HTTP control asks of the generator.
#[derive(Debug)]
pub enum Command {
    /// Replace the running packet batch with a new one.
    StartPackets {
        /// Pacing: packets per second, and how many.
        schedule: Schedule,
        /// What each packet is.
        spec: PacketSpec,
        /// Where to answer: the batch replaced.
        reply: Sender<BatchStatus>,
    },
    /// Make one packet now; the answer is its id, once it is durable and
    /// handed to its owner core.
    CreatePacket {
        /// What it is (amount: `cents_min`).
        spec: PacketSpec,
        /// Where to answer.
        reply: Sender<Option<PacketId>>,
    },
    /// Replace the running batch with a new one; the reply says what the old
    /// one had left undone.
    StartBatch {
        /// The new batch.
        schedule: Schedule,
        /// Where to answer.
        reply: Sender<BatchStarted>,
    },
    /// Report the running batches: envelopes, packets.
    Status(Sender<(BatchStatus, BatchStatus)>),
}

/// The answer to a `StartBatch`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BatchStarted {
    /// The batch replaced, as it stood when replaced.
    pub replaced: BatchStatus,
}

/// A batch as it stands.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct BatchStatus {
    /// Envelopes per second.
    pub rate: u64,
    /// Its total, when bounded.
    pub total: Option<u64>,
    /// Envelopes pushed so far.
    pub emitted: u64,
    /// True when a bounded batch has emitted its total.
    pub done: bool,
}

/// How envelopes are made.
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeSpec {
    /// Smallest amount, in cents (at least 1).
    pub cents_min: u64,
    /// Largest amount, in cents (at most u32::MAX, the wire's field).
    pub cents_max: u64,
    /// Random seed for amounts, so a run can be replayed.
    pub seed: u64,
}

/// Cluster mode: envelopes this node may generate, leased from the fleet's
/// budget by the engine thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The budget's epoch (one per `/yaohongbao`): a new one replaces the
    /// running batch, and what is left of the old lease is not issued.
    pub epoch: u64,
    /// Envelopes granted now.
    pub granted: u64,
    /// This node's share of the fleet's rate, envelopes per second.
    pub rate: u64,
}

/// Cluster mode: a packet recorded and durable, handed to the engine thread
/// to create in the engine; `created` (for `/packet`) is answered with its
/// id once the engine has it.
#[derive(Debug)]
pub struct HandOver {
    /// The packet.
    pub packet: NewPacket,
    /// Who waits for its creation in the engine, if anyone.
    pub created: Option<Sender<Option<PacketId>>>,
}

/// Cluster mode: how the generator meets the engine thread. Packets get
/// fleet-unique ids from the engine and are created there; envelopes are
/// made only under a lease, so the fleet never issues more than its budget.
pub struct ClusterLink {
    /// Packet ids reserved from the engine.
    pub ids: Receiver<PacketId>,
    /// Packets recorded and durable, for the engine thread to create.
    pub creates: Sender<Box<HandOver>>,
    /// Leases granted.
    pub leases: Receiver<LeaseGrant>,
    /// Envelopes leased and not yet made: the generator counts down, the
    /// engine thread reads it to lease more in time.
    pub allowance: Arc<AtomicU64>,
}

/// Everything the generator starts with.
pub struct GeneratorSetup {
    /// The per-core rings.
    pub rings: Arc<EnvelopeRings>,
    /// The first envelope batch.
    pub initial: Schedule,
    /// How envelopes are made.
    pub spec: EnvelopeSpec,
    /// Commands from the control.
    pub commands: Receiver<Command>,
    /// Where closed seconds go.
    pub reports: Sender<Report>,
    /// The ledger (disabled without `--data-dir`).
    pub ledger: Ledger,
    /// The generator's producer number in the ledger.
    pub producer: u16,
    /// The cores, to hand packets to their owners.
    pub peers: Peers,
    /// Envelopes outstanding in the ledger at start: pushed before new ones.
    pub outstanding: Vec<Envelope>,
    /// The first envelope id to use.
    pub next_envelope_id: EnvelopeId,
    /// The first packet id to use.
    pub next_packet_id: PacketId,
    /// Seconds an envelope waits in a ring before it is returned.
    pub envelope_ttl_s: u64,
    /// Seconds a packet lives before its remainder is refunded.
    pub packet_ttl_s: u64,
    /// Cluster mode: the engine thread's side (`None` on a single server).
    pub cluster: Option<ClusterLink>,
}

/// Runs the generator until `commands` disconnects (the server stops).
///
/// Reports its counters for each closed second through `reports`.
pub fn run(setup: GeneratorSetup) {
    let mut run = Run::new(setup);
    loop {
        let now = Instant::now();
        let wake = run.next_due(now).min(now + TICK).max(now);
        match run.commands.recv_deadline(wake) {
            Ok(command) => run.on_command(command),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The server is stopping: report the second in progress so
                // the final totals hold every envelope generated.
                let _ = run.reports.send(Report::Generator {
                    second: run.second,
                    counters: run.g.counters,
                    in_rings: run.g.rings.len() as u64,
                    ahead: run.g.held.len() as u64,
                    ledger: run.g.ledger.take_counters().since(&run.ledger_seen),
                });
                return;
            }
        }
        run.take_leases();
        run.g.emit_due(&mut run.batch);
        run.make_due_packets();
        if run.batch.schedule.is_done(run.batch.emitted)
            && run.g.held.is_empty()
            && run.batch.schedule.total.is_some()
        {
            run.g.rings.set_exhausted(true);
        }
        if !run.close_second() {
            return;
        }
    }
}

impl Run {
    /// Cluster mode: takes the leases the engine thread granted, each
    /// recorded in the ledger (synced with the envelopes made under it). A
    /// new epoch starts a new batch at this node's share of the fleet's
    /// rate, and what was left of the old one's leases is not issued (the
    /// budget under-issues by at most that, never over-issues); a new rate
    /// (nodes came or went) restarts the schedule at it.
    fn take_leases(&mut self) {
        let Some(link) = &self.g.cluster else {
            return;
        };
        while let Ok(grant) = link.leases.try_recv() {
            if grant.granted > 0 && self.g.ledger.is_enabled() {
                self.g.ledger.send(Entry::Record {
                    producer: self.g.producer,
                    record: Record::Lease {
                        epoch: grant.epoch as u32,
                        envelopes: grant.granted,
                        at_ms: crate::clock::unix_now().as_millis() as u64,
                    },
                });
            }
            if grant.epoch != self.epoch {
                self.epoch = grant.epoch;
                link.allowance.store(grant.granted, Ordering::Relaxed);
                self.batch = Batch::new(
                    Schedule {
                        rate: grant.rate,
                        total: None,
                    },
                    Instant::now(),
                );
                self.g.rings.set_exhausted(false);
            } else {
                link.allowance.fetch_add(grant.granted, Ordering::Relaxed);
                if grant.rate != self.batch.schedule.rate {
                    self.batch = Batch::new(
                        Schedule {
                            rate: grant.rate,
                            total: None,
                        },
                        Instant::now(),
                    );
                }
            }
        }
    }
}

/// The generator thread's state between wake-ups.
struct Run {
    g: Generator,
    packets: Packets,
    /// The running envelope batch.
    batch: Batch,
    commands: Receiver<Command>,
    reports: Sender<Report>,
    /// The Unix second being counted.
    second: u64,
    /// The ledger's counters at the last report.
    ledger_seen: LedgerCounters,
    /// Cluster mode: the budget epoch of the running batch.
    epoch: u64,
}

impl Run {
    fn new(setup: GeneratorSetup) -> Run {
        let g = Generator {
            rings: setup.rings,
            spec: setup.spec,
            rng: fastrand::Rng::with_seed(setup.spec.seed),
            next_id: setup.next_envelope_id.0,
            next_core: 0,
            held: {
                let now = Instant::now();
                setup.outstanding.into_iter().map(|e| (now, e)).collect()
            },
            stalled: false,
            counters: GeneratorCounters::default(),
            ledger: setup.ledger,
            producer: setup.producer,
            envelope_ttl_s: setup.envelope_ttl_s,
            cluster: setup.cluster,
        };
        let packets = Packets {
            peers: setup.peers,
            next_id: setup.next_packet_id.0,
            ttl_s: setup.packet_ttl_s,
            batch: Batch::new(
                Schedule {
                    rate: 0,
                    total: Some(0),
                },
                Instant::now(),
            ),
            spec: None,
            rng: fastrand::Rng::with_seed(setup.spec.seed.rotate_left(PACKET_SEED_ROTATION)),
            made: Vec::new(),
            created: None,
        };
        // In cluster mode the batch comes from the fleet's budget, with
        // the first lease.
        let initial = if g.cluster.is_some() {
            Schedule {
                rate: 0,
                total: None,
            }
        } else {
            setup.initial
        };
        let batch = Batch::new(initial, Instant::now());
        g.rings.set_exhausted(
            batch.schedule.is_done(0) && initial.total.is_some() && g.held.is_empty(),
        );
        let second = crate::clock::unix_secs();
        let ledger_seen = g.ledger.counters();
        Run {
            g,
            packets,
            batch,
            commands: setup.commands,
            reports: setup.reports,
            second,
            ledger_seen,
            epoch: 0,
        }
    }

    /// When something next falls due: the next envelope to push, the next
    /// refill, the next packet; [`TICK`] from now when nothing is due.
    fn next_due(&self, now: Instant) -> Instant {
        let (g, batch, packets) = (&self.g, &self.batch, &self.packets);
        // The next envelope to push and the next refill; while a due
        // envelope finds every ring full, only a retry shortly after (no
        // refill: the schedule waits for room).
        // (An envelope that fell due during the last refill's sync is
        // not a stall: it is pushed at once.)
        let stalled = g.stalled && g.held.front().is_some_and(|&(due, _)| due <= now);
        let envelopes = if stalled {
            Some(now + STALL_RETRY)
        } else {
            let refill = batch
                .schedule
                .due_at(batch.emitted)
                .map(|d| (batch.start + d).checked_sub(LOOKAHEAD / 2).unwrap_or(now));
            g.held
                .front()
                .map(|&(due, _)| due)
                .into_iter()
                .chain(refill)
                .min()
        };
        let pkts = packets
            .batch
            .schedule
            .due_at(packets.batch.emitted)
            .map(|d| packets.batch.start + d);
        envelopes
            .into_iter()
            .chain(pkts)
            .min()
            .unwrap_or(now + TICK)
    }

    /// Does what the control asks and answers it.
    fn on_command(&mut self, command: Command) {
        match command {
            Command::StartBatch { schedule, reply } => {
                let replaced = self.batch.status();
                self.batch = Batch::new(schedule, Instant::now());
                self.g.rings.set_exhausted(false);
                let _ = reply.send(BatchStarted { replaced });
            }
            Command::StartPackets {
                schedule,
                spec,
                reply,
            } => {
                let replaced = self.packets.batch.status();
                self.packets.batch = Batch::new(schedule, Instant::now());
                self.packets.spec = Some(spec);
                let _ = reply.send(replaced);
            }
            Command::CreatePacket { spec, reply } => {
                let id = self.packets.make(&spec, &mut self.g);
                if id.is_some() && self.g.cluster.is_some() {
                    // Answered by the engine thread once the engine has it.
                    self.packets.created = Some(reply);
                    self.packets.hand_over(&mut self.g);
                } else {
                    let _ = reply.send(id.filter(|_| self.packets.hand_over(&mut self.g)));
                }
            }
            Command::Status(reply) => {
                let _ = reply.send((self.batch.status(), self.packets.batch.status()));
            }
        }
    }

    /// Makes the packets of the running packet batch that are due (at most
    /// [`MADE_PER_ROUND_MAX`]), then makes them durable and hands them over.
    fn make_due_packets(&mut self) {
        let Some(spec) = self.packets.spec.clone() else {
            return;
        };
        let packets = &mut self.packets;
        let due = packets.batch.schedule.due_by(packets.batch.start.elapsed());
        let mut made = 0;
        while packets.batch.emitted < due && made < MADE_PER_ROUND_MAX {
            if packets.make(&spec, &mut self.g).is_none() {
                break;
            }
            packets.batch.emitted += 1;
            made += 1;
        }
        packets.hand_over(&mut self.g);
    }

    /// Reports the second just ended, if one has. False when nobody takes
    /// reports any more (the server is stopping).
    fn close_second(&mut self) -> bool {
        let now_second = crate::clock::unix_secs();
        if now_second == self.second {
            return true;
        }
        let counters = std::mem::take(&mut self.g.counters);
        let in_rings = self.g.rings.len() as u64;
        let ahead = self.g.held.len() as u64;
        let ledger_now = self.g.ledger.take_counters();
        let ledger = ledger_now.since(&self.ledger_seen);
        self.ledger_seen = ledger_now;
        let sent = self.reports.send(Report::Generator {
            second: self.second,
            counters,
            in_rings,
            ahead,
            ledger,
        });
        self.second = now_second;
        sent.is_ok()
    }
}

/// The packet side of the generator.
struct Packets {
    peers: Peers,
    next_id: u32,
    ttl_s: u64,
    batch: Batch,
    spec: Option<PacketSpec>,
    rng: fastrand::Rng,
    /// Made and recorded, not yet synced and handed to their cores.
    made: Vec<NewPacket>,
    /// Cluster mode: who waits for the last packet made to be created in
    /// the engine (`/packet`).
    created: Option<Sender<Option<PacketId>>>,
}

impl Packets {
    /// Makes one packet and records it (not yet synced). `None` when the
    /// ledger writer is gone (the server is stopping).
    fn make(&mut self, spec: &PacketSpec, g: &mut Generator) -> Option<PacketId> {
        let targets: Box<[UserId]> = match &spec.users {
            PacketUsers::List(users) => users.clone().into_boxed_slice(),
            PacketUsers::Range { min, max } => {
                let mut picked: Vec<UserId> = Vec::with_capacity(usize::from(spec.claimants));
                while picked.len() < usize::from(spec.claimants) {
                    let u = UserId(self.rng.u32(*min..=*max));
                    if !picked.contains(&u) {
                        picked.push(u);
                    }
                }
                picked.into_boxed_slice()
            }
        };
        let id = match &g.cluster {
            // Fleet-unique ids come from the engine; none reserved means
            // the engine is unreachable: no packet now.
            Some(link) => match link.ids.try_recv() {
                Ok(id) => id,
                Err(_) => {
                    g.counters.packets_unavailable += 1;
                    return None;
                }
            },
            None => {
                let id = PacketId(self.next_id);
                self.next_id = self.next_id.checked_add(1).unwrap_or(PacketId::FIRST.0);
                id
            }
        };
        let amount = Cents(self.rng.u64(spec.cents_min..=spec.cents_max));
        let now = crate::clock::unix_now();
        let until_s = (now.as_secs() + self.ttl_s).min(u64::from(u32::MAX)) as u32;
        let (cents, claimants, at_ms) = (amount, targets.len() as u16, now.as_millis() as u64);
        let created =
            Record::packet_created(g.cluster.is_some(), id, cents, claimants, at_ms, until_s);
        if g.ledger.is_enabled()
            && !g.ledger.send(Entry::Packet {
                producer: g.producer,
                created,
                targets: targets.clone(),
            })
        {
            return None;
        }
        g.counters.packets_created += 1;
        g.counters.cents_packets += amount.0;
        self.made.push(NewPacket {
            id,
            amount,
            targets,
            claims: Vec::new(),
            until_s,
        });
        Some(id)
    }

    /// Makes the packets made so far durable, then hands each to its owner
    /// core. False when the ledger or a core is gone.
    fn hand_over(&mut self, g: &mut Generator) -> bool {
        let made = std::mem::take(&mut self.made);
        if made.is_empty() {
            return true;
        }
        if !g.ledger.sync() {
            return false;
        }
        if let Some(link) = &g.cluster {
            // Created in the engine by the engine thread, which retries
            // until the engine has it (a restart creates again what the
            // ledger holds). A full hand-over queue past its deadline
            // leaves the packet in the ledger only, counted: the fleet
            // audit names it as never created, the next start creates it.
            let mut ok = true;
            let last = made.len() - 1;
            for (i, packet) in made.into_iter().enumerate() {
                let created = if i == last { self.created.take() } else { None };
                let h = HandOver { packet, created };
                if let Err(e) = link.creates.send_timeout(Box::new(h), INBOX_SEND_TIMEOUT) {
                    g.counters.packets_unavailable += 1;
                    if let Some(reply) = e.into_inner().created {
                        let _ = reply.send(None);
                    }
                    ok = false;
                }
            }
            return ok;
        }
        let cores = self.peers.inboxes.len();
        let mut woken = vec![false; cores];
        let mut ok = true;
        for p in made {
            let owner = p.id.0 as usize % cores;
            // A core's inbox is bounded; waiting here is fine (the generator
            // is not on the request path). A core that is gone means the
            // server is stopping; the packet is in the ledger and is rebuilt
            // at the next start.
            ok &= self.peers.inboxes[owner]
                .send_timeout(CoreMsg::Packet(Box::new(p)), INBOX_SEND_TIMEOUT)
                .is_ok();
            woken[owner] = true;
        }
        for (core, w) in woken.into_iter().enumerate() {
            if w {
                let _ = self.peers.wakers[core].wake();
            }
        }
        ok
    }
}

struct Batch {
    schedule: Schedule,
    start: Instant,
    emitted: u64,
}

impl Batch {
    fn new(schedule: Schedule, start: Instant) -> Self {
        Batch {
            schedule,
            start,
            emitted: 0,
        }
    }

    fn status(&self) -> BatchStatus {
        BatchStatus {
            rate: self.schedule.rate,
            total: self.schedule.total,
            emitted: self.emitted,
            done: self.schedule.is_done(self.emitted),
        }
    }
}

struct Generator {
    rings: Arc<EnvelopeRings>,
    spec: EnvelopeSpec,
    rng: fastrand::Rng,
    next_id: u32,
    next_core: usize,
    /// Envelopes made (and durable) that no ring has taken yet, with the
    /// time each is due; pushed in order once due.
    held: VecDeque<(Instant, Envelope)>,
    /// The last push found every ring full: retry in 1 ms, make nothing new.
    stalled: bool,
    counters: GeneratorCounters,
    ledger: Ledger,
    producer: u16,
    envelope_ttl_s: u64,
    cluster: Option<ClusterLink>,
}

impl Generator {
    /// Pushes the envelopes that are due into the rings and, when less than
    /// half of [`LOOKAHEAD`] is made ahead, makes the next lookahead's worth,
    /// records them and syncs once. Nothing new is made while a due envelope
    /// still waits for room: the schedule does not advance then.
    fn emit_due(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        if !self.push_held(now) {
            return;
        }
        let elapsed = now.saturating_duration_since(batch.start);
        if batch.schedule.due_by(elapsed + LOOKAHEAD / 2) <= batch.emitted {
            return;
        }
        let until = batch.schedule.due_by(elapsed + LOOKAHEAD);
        let mut n = (until - batch.emitted).min(MADE_PER_ROUND_MAX);
        if let Some(link) = &self.cluster {
            // Only what is leased; the schedule waits for the next lease.
            let held = link.allowance.load(Ordering::Relaxed);
            if held < n {
                self.counters.lease_waits += 1;
            }
            n = n.min(held);
            link.allowance.fetch_sub(n, Ordering::Relaxed);
            if n == 0 {
                return;
            }
        }
        for k in 0..n {
            let due = batch
                .schedule
                .due_at(batch.emitted + k)
                .map_or(now, |d| batch.start + d);
            self.make_one(due);
        }
        if !self.ledger.sync() {
            // The writer is gone (it aborts the process on a failed write,
            // and outlives the generator in a clean stop, so this is a
            // stop gone wrong). Nothing made here reaches a ring unrecorded.
            self.held.clear();
            return;
        }
        batch.emitted += n;
        // A fresh clock: the sync took time, and what fell due meanwhile
        // goes now rather than at the next wake-up.
        self.push_held(Instant::now());
    }

    /// Makes one envelope due at `due`, records it (not yet synced) and
    /// queues it.
    fn make_one(&mut self, due: Instant) {
        let id = EnvelopeId(self.next_id);
        // Ids wrap only after 4 billion envelopes; a server that lives that
        // long restarts its numbering at FIRST.
        self.next_id = self.next_id.checked_add(1).unwrap_or(EnvelopeId::FIRST.0);
        let now = crate::clock::unix_now();
        let amount = Cents(self.rng.u64(self.spec.cents_min..=self.spec.cents_max));
        let until_s = (now.as_secs() + self.envelope_ttl_s).min(u64::from(u32::MAX)) as u32;
        self.counters.recorded += 1;
        self.counters.cents_recorded += amount.0;
        if self.ledger.is_enabled() {
            self.ledger.send(Entry::Record {
                producer: self.producer,
                record: Record::EnvelopeGenerated {
                    id,
                    cents: amount,
                    at_ms: now.as_millis() as u64,
                },
            });
        }
        self.held.push_back((
            due,
            Envelope {
                id,
                amount,
                until_s,
            },
        ));
    }

    /// Pushes the queued envelopes due by `now`, in order, each into the
    /// next ring with room. False when every ring was full (a stall, counted).
    fn push_held(&mut self, now: Instant) -> bool {
        while let Some(&(due, envelope)) = self.held.front() {
            if due > now {
                break;
            }
            if !self.emit_one(envelope) {
                self.stalled = true;
                return false;
            }
            self.held.pop_front();
        }
        self.stalled = false;
        true
    }

    /// Offers one envelope to the rings, round-robin from the next core.
    fn emit_one(&mut self, mut envelope: Envelope) -> bool {
        let cores = self.rings.cores();
        for _ in 0..cores {
            let core = CoreId(self.next_core);
            self.next_core = (self.next_core + 1) % cores;
            match self.rings.push(core, envelope) {
                Ok(()) => {
                    self.counters.generated += 1;
                    self.counters.cents_generated += envelope.amount.0;
                    return true;
                }
                Err(back) => envelope = back,
            }
        }
        self.counters.ring_full_stalls += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_carries_exactly_the_rate() {
        let s = Schedule {
            rate: 200,
            total: None,
        };
        for sec in 0..30u64 {
            let a = s.due_by(Duration::from_secs(sec));
            let b = s.due_by(Duration::from_secs(sec + 1));
            assert_eq!(b - a, 200, "second {sec}");
        }
    }

    #[test]
    fn emission_is_smooth_within_a_second() {
        let s = Schedule {
            rate: 200,
            total: None,
        };
        // Every 5 ms window holds exactly one envelope: no burst at 0.
        for ms in (0..1000).step_by(5) {
            let n = s.due_by(Duration::from_millis(ms + 5)) - s.due_by(Duration::from_millis(ms));
            assert_eq!(n, 1, "window at {ms} ms");
        }
    }

    #[test]
    fn due_at_is_the_first_instant_due_by_counts_it() {
        for rate in [1u64, 3, 7, 200, 999, 1_000_000] {
            let s = Schedule { rate, total: None };
            for k in 0..50 {
                let t = s.due_at(k).unwrap();
                assert_eq!(s.due_by(t), k + 1, "rate {rate} k {k}");
                assert_eq!(
                    s.due_by(t - Duration::from_nanos(1)),
                    k,
                    "rate {rate} k {k}"
                );
            }
        }
    }

    #[test]
    fn a_bounded_batch_stops_at_its_total() {
        let s = Schedule {
            rate: 100,
            total: Some(150),
        };
        assert_eq!(s.due_by(Duration::from_secs(10)), 150);
        assert_eq!(s.due_at(150), None);
        assert!(s.is_done(150) && !s.is_done(149));
        assert_eq!(
            Schedule {
                rate: 0,
                total: None
            }
            .due_at(0),
            None
        );
    }

    #[test]
    fn a_full_ring_passes_the_envelope_on_and_all_full_holds_it() {
        let rings = Arc::new(EnvelopeRings::new(2, 1));
        let mut g = Generator {
            rings: rings.clone(),
            spec: EnvelopeSpec {
                cents_min: 10,
                cents_max: 309,
                seed: 1,
            },
            rng: fastrand::Rng::with_seed(1),
            next_id: EnvelopeId::FIRST.0,
            next_core: 0,
            held: VecDeque::new(),
            stalled: false,
            counters: GeneratorCounters::default(),
            ledger: Ledger::disabled(),
            producer: 0,
            envelope_ttl_s: 60,
            cluster: None,
        };
        let now = Instant::now();
        for _ in 0..3 {
            g.make_one(now);
        }
        assert!(!g.push_held(now), "both rings are full");
        assert_eq!(g.counters.generated, 2);
        assert_eq!(g.counters.ring_full_stalls, 1);
        let (_, held) = *g.held.front().expect("the envelope is kept, not dropped");
        rings.pop(CoreId(1)).unwrap();
        assert!(g.push_held(now));
        assert_eq!(rings.pop(CoreId(1)), Some(held));
        assert_eq!(g.counters.generated, 3);
        assert!((10..=309).contains(&held.amount.0));
    }
}
