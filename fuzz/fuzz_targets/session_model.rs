//! The session with its packets, over arbitrary frame sequences from
//! several users on several cores, checked against a simple model.
//!
//! One `Hongbao` service per core (1..=3 cores) with its `Effects`, as the
//! core loop holds them; frames go in through `server::answer::answer_frames`
//! (decode, `Service::on_frame`, hold), as the core loop runs on each read.
//! Messages between cores travel on one FIFO channel per (from, to) pair,
//! and the fuzzer chooses which channel moves next, so any interleaving the
//! real crossbeam channels allow is tried. The loop's own part of the
//! messages (a push delivered to a connection or sent back home, a claim's
//! answer written) is done here as `server/worker.rs` does it. The ledger is
//! off (no answer waits for a sync), so every decision is seen when made.
//!
//! The model, checked at each decision and at the end:
//! - a claim of an unknown or expired packet, or by a user it is not for,
//!   gets 0 (a stranger gets 0);
//! - a target's first claim before expiry is paid at least a cent, a repeat
//!   gets the same amount again, at most one paid claim per user per packet,
//!   and the paid shares never exceed the packet (and equal it once every
//!   target has claimed);
//! - money is conserved: for packets, issued = claimed + refunded once all
//!   expired; for envelopes, issued = granted + returned + still in rings;
//!   the cores' counters agree with what the answers said;
//! - every answer is a whole frame for the session's user, a push reaches
//!   only a connection of a user the packet names, with the packet's fields.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arbitrary::Arbitrary;
use hongbao::clock::Now;
use hongbao::durable::HeldAnswers;
use hongbao::ids::{Cents, CoreId, EnvelopeId, PacketId, UserId};
use hongbao::ledger::Ledger;
use hongbao::mesh::{ConnAddr, CoreMsg, Effects};
use hongbao::packets::NewPacket;
use hongbao::ring::{Envelope, EnvelopeRings};
use hongbao::server::answer::answer_frames;
use hongbao::session::{FrameContext, Hongbao, HongbaoSettings, Service, SessionState};
use hongbao::stats::CoreCounters;
use hongbao::wire::{self, Frame, ShakeOutcome};
use libfuzzer_sys::fuzz_target;

/// Users 0..USERS: few, so that targets, strangers and repeats meet.
const USERS: u32 = 6;
/// Connection slots (a connection's key is its slot).
const SLOTS: usize = 8;
/// Envelopes a core's ring holds: small, so a full ring is reached.
const RING_CAPACITY: usize = 4;
/// Ops per input: bounds an input's time.
const OPS_MAX: usize = 256;
/// Times a push may be sent back home (the worker's `PUSH_HOPS_MAX`).
const PUSH_HOPS_MAX: u8 = 3;
/// Messages moved by one settle before it is called a livelock.
const SETTLE_MAX: usize = 100_000;
/// The clock at the start.
const START_S: u64 = 1_700_000_000;

#[derive(Arbitrary, Debug)]
struct Input {
    /// 1 + cores % 3 cores.
    cores: u8,
    /// Each core's share of `--max-qps` (small: overload is reached).
    shakes_per_sec: u8,
    /// Pushes kept per offline user.
    mailbox: u8,
    seed: u64,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A connection is accepted on a core, into the first free slot.
    Connect { core: u8 },
    /// A well-formed frame from a connection.
    Frame { slot: u8, frame: ClientFrame },
    /// Raw bytes from a connection (malformed frames, several frames).
    Raw { slot: u8, bytes: Vec<u8> },
    /// A connection closes.
    Close { slot: u8 },
    /// A packet for the users in `targets` (a bit mask), of `extra` cents
    /// beyond one per target, expiring `ttl % 8` seconds from now; with
    /// `restored`, its first target's claim of `restored` cents was paid
    /// before a restart (as rebuilt from the ledger).
    Packet {
        targets: u8,
        extra: u16,
        ttl: u8,
        restored: Option<u16>,
    },
    /// The generator pushes an envelope into a core's ring.
    Envelope { core: u8, amount: u16, ttl: u8 },
    /// The next message on the channel from one core to another moves.
    Deliver { from: u8, to: u8 },
    /// Every message in flight moves, until none is left.
    Settle,
    /// The clock moves `secs % 4` seconds; every core ticks.
    Tick { secs: u8 },
    /// The generator says a bounded batch is over (or a new one started).
    Exhausted { on: bool },
}

#[derive(Arbitrary, Debug)]
enum ClientFrame {
    Login {
        user: u8,
    },
    Shake {
        user: u8,
    },
    /// A claim of the packet made `packet`-th (or an unknown one past them).
    Claim {
        user: u8,
        packet: u8,
    },
    /// A frame only servers send.
    Server {
        cmd: u8,
    },
}

/// What the model knows of a packet.
struct PacketModel {
    amount: u64,
    targets: Vec<UserId>,
    until_s: u64,
    /// Each target's paid share (restored ones included).
    paid: HashMap<UserId, u64>,
}

struct Conn {
    core: usize,
    serial: u32,
    state: SessionState,
    held: HeldAnswers,
}

struct World {
    cores: usize,
    now: Now,
    services: Vec<Hongbao>,
    fx: Vec<Effects>,
    counters: Vec<CoreCounters>,
    rings: Arc<EnvelopeRings>,
    /// Messages in flight, `channels[from][to]`, in order.
    channels: Vec<Vec<VecDeque<CoreMsg>>>,
    slots: Vec<Option<Conn>>,
    next_serial: u32,
    /// The user each connection (by serial) logged in as: a claim's answer
    /// names only the connection.
    user_of_serial: HashMap<u32, UserId>,
    packets: HashMap<PacketId, PacketModel>,
    /// Packet ids in the order made.
    packet_ids: Vec<PacketId>,
    next_packet: u32,
    /// Shares paid through the service (restored ones excluded).
    cents_claimed: u64,
    claims_paid: u64,
    /// Packet money in: every packet's amount.
    packet_cents_issued: u64,
    /// Of it, paid before the "restart".
    packet_cents_restored: u64,
    envelopes: HashMap<EnvelopeId, u64>,
    granted: HashMap<EnvelopeId, u64>,
    next_envelope: u32,
    last_until_s: u64,
}

fn now_at(secs: u64) -> Now {
    Now {
        secs,
        ms: secs * 1000,
    }
}

impl World {
    fn new(input: &Input) -> World {
        let cores = 1 + usize::from(input.cores % 3);
        let rings = Arc::new(EnvelopeRings::new(cores, RING_CAPACITY));
        let settings = HongbaoSettings {
            shakes_per_sec_max: u64::from(input.shakes_per_sec % 16),
            mailbox_max: usize::from(input.mailbox % 4),
            seed: input.seed,
            // Off: the model lets a user hold any number of connections;
            // the cap's kicks are the core loop's (CoreMsg::Kick), which
            // this harness does not run.
            user_conns_max: 0,
            cluster: false,
        };
        World {
            cores,
            now: now_at(START_S),
            services: (0..cores)
                .map(|c| Hongbao::new(CoreId(c), rings.clone(), settings))
                .collect(),
            fx: (0..cores)
                .map(|c| Effects::new(CoreId(c), cores, Ledger::disabled().producer(c as u16)))
                .collect(),
            counters: (0..cores).map(|_| CoreCounters::default()).collect(),
            rings,
            channels: (0..cores)
                .map(|_| (0..cores).map(|_| VecDeque::new()).collect())
                .collect(),
            slots: (0..SLOTS).map(|_| None).collect(),
            next_serial: 1,
            user_of_serial: HashMap::new(),
            packets: HashMap::new(),
            packet_ids: Vec::new(),
            next_packet: PacketId::FIRST.0,
            cents_claimed: 0,
            claims_paid: 0,
            packet_cents_issued: 0,
            packet_cents_restored: 0,
            envelopes: HashMap::new(),
            granted: HashMap::new(),
            next_envelope: EnvelopeId::FIRST.0,
            last_until_s: START_S,
        }
    }

    fn addr(&self, slot: usize) -> ConnAddr {
        let c = self.slots[slot].as_ref().expect("an open slot");
        ConnAddr {
            core: c.core as u16,
            key: slot as u32,
            serial: c.serial,
        }
    }

    /// The model's verdict on a claim decided now: checks it, and records
    /// a payment.
    fn decided(&mut self, user: UserId, packet: PacketId, cents: u64) {
        let now_s = self.now.secs;
        let Some(p) = self.packets.get_mut(&packet) else {
            assert_eq!(cents, 0, "an unknown packet {packet} paid {user}");
            return;
        };
        if now_s >= p.until_s || !p.targets.contains(&user) {
            assert_eq!(
                cents, 0,
                "expired packet or stranger {user} paid on {packet}"
            );
            return;
        }
        assert!(cents >= 1, "target {user} of live {packet} got 0");
        match p.paid.get(&user) {
            Some(&before) => assert_eq!(cents, before, "a repeat claim changed its amount"),
            None => {
                p.paid.insert(user, cents);
                self.cents_claimed += cents;
                self.claims_paid += 1;
                let sum: u64 = p.paid.values().sum();
                assert!(sum <= p.amount, "{packet}: {sum} paid of {}", p.amount);
                if p.paid.len() == p.targets.len() {
                    assert_eq!(sum, p.amount, "{packet}: every target paid, not all of it");
                }
            }
        }
    }

    /// Checks the answers a step wrote for connection `slot`.
    fn answers(&mut self, slot: usize, out: &[u8]) {
        let mut at = 0;
        while at < out.len() {
            let d = wire::decode(&out[at..]).expect("answers are whole frames");
            at += d.len;
            assert_eq!(d.timestamp, self.now.secs, "stamped now");
            let SessionState::LoggedIn(me) = self.slots[slot].as_ref().expect("open").state else {
                panic!("an answer before a login: {:?}", d.frame);
            };
            match d.frame {
                Frame::LoginResponse { user, result } => assert_eq!((user, result), (me, 0)),
                Frame::ShakeResponse {
                    user,
                    result,
                    envelope,
                    amount,
                } => {
                    assert_eq!(user, me, "a shake answered for another user");
                    if result == ShakeOutcome::GOT {
                        let issued = self.envelopes.get(&envelope).copied();
                        assert_eq!(issued, Some(amount.0), "granted {envelope} as issued");
                        let again = self.granted.insert(envelope, amount.0);
                        assert!(again.is_none(), "{envelope} granted twice");
                    } else {
                        assert!(
                            [
                                ShakeOutcome::NONE,
                                ShakeOutcome::GONE,
                                ShakeOutcome::OVERLOAD
                            ]
                            .contains(&result),
                            "{result:?}"
                        );
                        assert_eq!((envelope.0, amount.0), (0, 0));
                    }
                }
                // A claim decided on this core, answered at once.
                Frame::ClaimResponse { packet, amount } => self.decided(me, packet, amount.0),
                f => panic!("a client frame answered with {f:?}"),
            }
        }
    }

    /// Moves what each core's step asked to send onto the channels. A
    /// claim's answer is a decision made now: the model sees it here.
    fn post(&mut self) {
        for from in 0..self.cores {
            for to in 0..self.cores {
                let msgs = std::mem::take(&mut self.fx[from].outbox[to]);
                for msg in msgs {
                    if let CoreMsg::ClaimAnswer { to, packet, cents } = msg {
                        let user = self.user_of_serial[&to.serial];
                        self.decided(user, packet, cents.0);
                    }
                    self.channels[from][to].push_back(msg);
                }
            }
            assert!(
                self.fx[from].after_sync.is_empty(),
                "the ledger is off: nothing waits"
            );
        }
    }

    fn connect(&mut self, core: u8) {
        let Some(slot) = self.slots.iter().position(Option::is_none) else {
            return;
        };
        let core = usize::from(core) % self.cores;
        self.slots[slot] = Some(Conn {
            core,
            serial: self.next_serial,
            state: SessionState::AwaitingLogin,
            held: HeldAnswers::default(),
        });
        self.next_serial += 1;
    }

    /// Bytes read from the connection in `slot`, answered as the core loop
    /// answers a read; a refused frame closes it.
    fn read(&mut self, slot: u8, bytes: &[u8]) {
        let slot = usize::from(slot) % SLOTS;
        if self.slots[slot].is_none() {
            return;
        }
        let addr = self.addr(slot);
        let core = usize::from(addr.core);
        let conn = self.slots[slot].as_mut().expect("open");
        let mut out = Vec::new();
        let mut cx = FrameContext {
            conn: addr,
            state: conn.state,
            now: self.now,
            out: &mut out,
            fx: &mut self.fx[core],
            counters: &mut self.counters[core],
        };
        let answered = answer_frames(bytes, &mut self.services[core], &mut conn.held, &mut cx);
        let before = conn.state;
        conn.state = cx.state;
        assert!(conn.held.is_empty(), "the ledger is off: no answer is held");
        if let (SessionState::AwaitingLogin, SessionState::LoggedIn(user)) = (before, conn.state) {
            self.user_of_serial.insert(addr.serial, user);
        }
        assert!(answered.used <= bytes.len());
        self.answers(slot, &out);
        self.post();
        if answered.refused {
            self.close(slot as u8);
        }
    }

    fn close(&mut self, slot: u8) {
        let slot = usize::from(slot) % SLOTS;
        let Some(conn) = self.slots[slot].take() else {
            return;
        };
        if let SessionState::LoggedIn(user) = conn.state {
            let addr = ConnAddr {
                core: conn.core as u16,
                key: slot as u32,
                serial: conn.serial,
            };
            self.services[conn.core].on_close(user, addr, &mut self.fx[conn.core]);
            self.post();
        }
    }

    fn packet(&mut self, targets: u8, extra: u16, ttl: u8, restored: Option<u16>) {
        let targets: Vec<UserId> = (0..USERS)
            .filter(|u| targets & (1 << u) != 0)
            .map(UserId)
            .collect();
        if targets.is_empty() {
            return;
        }
        let id = PacketId(self.next_packet);
        self.next_packet += 1;
        let amount = targets.len() as u64 + u64::from(extra);
        let until_s = self.now.secs + u64::from(ttl % 8);
        self.last_until_s = self.last_until_s.max(until_s);
        // A restored claim leaves a cent for every other target.
        let claims: Vec<(UserId, Cents)> = restored
            .map(|c| {
                let most = amount - (targets.len() as u64 - 1);
                vec![(targets[0], Cents(1 + u64::from(c) % most))]
            })
            .unwrap_or_default();
        let restored_cents: u64 = claims.iter().map(|(_, c)| c.0).sum();
        self.packet_cents_issued += amount;
        self.packet_cents_restored += restored_cents;
        self.packets.insert(
            id,
            PacketModel {
                amount,
                targets: targets.clone(),
                until_s,
                paid: claims.iter().map(|&(u, c)| (u, c.0)).collect(),
            },
        );
        self.packet_ids.push(id);
        // The generator hands it to its owner core.
        let owner = self.fx[0].owner(id);
        let p = NewPacket {
            id,
            amount: Cents(amount),
            targets: targets.into_boxed_slice(),
            claims,
            until_s: until_s as u32,
        };
        self.services[owner].on_message(
            CoreMsg::Packet(Box::new(p)),
            self.now,
            &mut self.fx[owner],
            &mut self.counters[owner],
        );
        self.post();
    }

    fn envelope(&mut self, core: u8, amount: u16, ttl: u8) {
        let core = usize::from(core) % self.cores;
        let id = EnvelopeId(self.next_envelope);
        let e = Envelope {
            id,
            amount: Cents(1 + u64::from(amount)),
            until_s: (self.now.secs + u64::from(ttl % 8)) as u32,
        };
        if self.rings.push(CoreId(core), e).is_ok() {
            self.next_envelope += 1;
            self.envelopes.insert(id, e.amount.0);
        }
    }

    /// The next message from `from` to `to` reaches `to`; false when none
    /// was in flight.
    fn deliver(&mut self, from: usize, to: usize) -> bool {
        let Some(msg) = self.channels[from][to].pop_front() else {
            return false;
        };
        match msg {
            // The core loop's part (server/worker.rs, `on_message`).
            CoreMsg::Deliver {
                to: addr,
                user,
                push,
                hops,
            } => {
                let slot = addr.key as usize;
                let here = self.slots[slot].as_ref().is_some_and(|c| {
                    c.serial == addr.serial && c.state == SessionState::LoggedIn(user)
                });
                if here {
                    self.pushed(user, push);
                } else if hops < PUSH_HOPS_MAX {
                    let home = self.fx[to].home(user);
                    self.fx[to].send(
                        home,
                        CoreMsg::Push {
                            user,
                            push,
                            hops: hops + 1,
                        },
                    );
                }
            }
            // Decided and checked when posted; written if the connection
            // is still the same one.
            CoreMsg::ClaimAnswer { .. } => {}
            msg => self.services[to].on_message(
                msg,
                self.now,
                &mut self.fx[to],
                &mut self.counters[to],
            ),
        }
        self.post();
        true
    }

    /// A push written on a connection of `user`.
    fn pushed(&self, user: UserId, push: Frame) {
        let Frame::PacketPush {
            packet,
            amount,
            claimants,
            users,
        } = push
        else {
            panic!("a push that is not cmd 4: {push:?}");
        };
        let p = &self.packets[&packet];
        assert!(
            p.targets.contains(&user),
            "{packet} pushed to a stranger {user}"
        );
        assert_eq!((amount.0, claimants as usize), (p.amount, p.targets.len()));
        for (i, u) in users.iter().enumerate() {
            assert_eq!(*u, p.targets.get(i).copied().unwrap_or(UserId(0)));
        }
    }

    fn settle(&mut self) {
        let mut moved = 0;
        loop {
            let mut any = false;
            for from in 0..self.cores {
                for to in 0..self.cores {
                    while self.deliver(from, to) {
                        any = true;
                        moved += 1;
                        assert!(moved < SETTLE_MAX, "messages never settle");
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    fn tick(&mut self, secs: u8) {
        let secs = u64::from(secs % 4);
        self.now = now_at(self.now.secs + secs);
        for c in 0..self.cores {
            if secs > 0 {
                self.services[c].on_second();
            }
            self.services[c].on_tick(self.now, &mut self.fx[c], &mut self.counters[c]);
        }
        self.post();
    }

    fn sum(&self, f: impl Fn(&CoreCounters) -> u64) -> u64 {
        self.counters.iter().map(f).sum()
    }

    /// Everything settles, every packet expires: the books must balance.
    fn finish(mut self) {
        self.settle();
        self.now = now_at(self.last_until_s.max(self.now.secs) + 1);
        for c in 0..self.cores {
            self.services[c].on_tick(self.now, &mut self.fx[c], &mut self.counters[c]);
        }
        self.post();
        self.settle();

        let claimed = self.sum(|c| c.cents_claimed);
        let refunded = self.sum(|c| c.cents_refunded);
        assert_eq!(
            claimed, self.cents_claimed,
            "counted claims = decided claims"
        );
        assert_eq!(self.sum(|c| c.claims_paid), self.claims_paid);
        assert_eq!(
            self.sum(|c| c.packets_expired),
            self.packet_ids.len() as u64
        );
        assert_eq!(
            self.packet_cents_restored + claimed + refunded,
            self.packet_cents_issued,
            "packets: claimed + refunded = issued"
        );

        let granted: u64 = self.granted.values().sum();
        assert_eq!(self.sum(|c| c.cents_granted), granted);
        let mut in_rings = 0;
        for c in 0..self.cores {
            while let Some(e) = self.rings.pop(CoreId(c)) {
                assert!(
                    !self.granted.contains_key(&e.id),
                    "granted and still in a ring"
                );
                in_rings += e.amount.0;
            }
        }
        let issued: u64 = self.envelopes.values().sum();
        assert_eq!(
            granted + self.sum(|c| c.cents_returned) + in_rings,
            issued,
            "envelopes: granted + returned + in rings = issued"
        );
    }
}

fn client_frame(w: &World, f: &ClientFrame) -> Frame {
    let user = |u: u8| UserId(u32::from(u) % (USERS + 1));
    match *f {
        ClientFrame::Login { user: u } => Frame::LoginRequest { user: user(u) },
        ClientFrame::Shake { user: u } => Frame::ShakeRequest { user: user(u) },
        ClientFrame::Claim { user: u, packet } => {
            let i = usize::from(packet);
            let packet = w
                .packet_ids
                .get(i)
                .copied()
                .unwrap_or_else(|| PacketId(w.next_packet + (i - w.packet_ids.len()) as u32));
            Frame::ClaimRequest {
                user: user(u),
                packet,
            }
        }
        ClientFrame::Server { cmd } => match cmd % 4 {
            0 => Frame::LoginResponse {
                user: UserId(1),
                result: 0,
            },
            1 => Frame::ShakeResponse {
                user: UserId(1),
                result: ShakeOutcome::GOT,
                envelope: EnvelopeId(1),
                amount: Cents(1),
            },
            2 => Frame::PacketPush {
                packet: PacketId(1),
                amount: Cents(1),
                claimants: 1,
                users: [UserId(1); 3],
            },
            _ => Frame::ClaimResponse {
                packet: PacketId(1),
                amount: Cents(1),
            },
        },
    }
}

fuzz_target!(|input: Input| {
    let mut w = World::new(&input);
    for op in input.ops.iter().take(OPS_MAX) {
        match op {
            Op::Connect { core } => w.connect(*core),
            Op::Frame { slot, frame } => {
                let mut bytes = Vec::new();
                client_frame(&w, frame).encode(w.now.secs, &mut bytes);
                w.read(*slot, &bytes);
            }
            Op::Raw { slot, bytes } => w.read(*slot, bytes),
            Op::Close { slot } => w.close(*slot),
            Op::Packet {
                targets,
                extra,
                ttl,
                restored,
            } => w.packet(*targets, *extra, *ttl, *restored),
            Op::Envelope { core, amount, ttl } => w.envelope(*core, *amount, *ttl),
            Op::Deliver { from, to } => {
                let (from, to) = (usize::from(*from) % w.cores, usize::from(*to) % w.cores);
                w.deliver(from, to);
            }
            Op::Settle => w.settle(),
            Op::Tick { secs } => w.tick(*secs),
            Op::Exhausted { on } => w.rings.set_exhausted(*on),
        }
    }
    w.finish();
});
