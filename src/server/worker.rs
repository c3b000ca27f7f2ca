//! The per-core event loop: poll → accept → read → answer → write.
//!
//! Owns: one mio `Poll`, one SO_REUSEPORT listener, the connections the kernel
//! hands that listener (in a slab, grouped in SETs), the core's scratch
//! buffers, counters and latency histogram. Must not: block, lock, log, or
//! allocate per request; share anything mutable with another core.
//!
//! # The event-loop contract
//!
//! - Edge-triggered (mio's only mode): a readiness event is a hint that state
//!   changed, so each event is drained to `WouldBlock` — the listener is
//!   accepted from until `WouldBlock`, a socket read until `WouldBlock` or a
//!   short read (below), or to end of file when the event reports the peer's
//!   FIN. Spurious events are harmless: a read that finds
//!   nothing returns `WouldBlock`; a token whose slot was reused in a later
//!   turn reaches the new connection, which reads nothing.
//! - Bounded work per connection: at most `READS_PER_WAKE_MAX` full reads per
//!   wake-up; a connection with more to read is read again once the turn's
//!   other events are handled, and again on later turns
//!   (the poll then does not block), so one fast sender cannot starve the
//!   core's other connections.
//! - Short read means drained: on Linux a TCP socket raises a new edge for
//!   every arrival of data, so a read that returns fewer bytes than the room
//!   offered has emptied the receive queue for now, and the extra read that
//!   would return `WouldBlock` is skipped. A read that fills the buffer is
//!   followed by another.
//! - `Interrupted` means retry; other errors close that connection only.
//! - One write per connection per wake-up: every answer to the frames read is
//!   encoded into one per-core output buffer and handed to a single `write`.
//!   Only a short write gives the connection its own buffer for the rest and
//!   asks for `WRITABLE`; both go away once it drains.
//! - Interest is registered once, `READABLE`, at accept; re-registration
//!   happens only around a short write.
//! - Reading waits when it must (backpressure; see docs/ARCHITECTURE.md,
//!   "Bounded queues and backpressure"): no connection is read while the
//!   core cannot hand messages on (`Effects::backpressure`: the `paused`
//!   list); a connection is read at most its share, `--conn-qps-max` (the
//!   `throttled` list, taken up on ticks), and at most as many requests as
//!   `--outbound-max` has room for beside its unsent output, held answers
//!   and claims away (`BLOCKED_OUT`, read again once half is free). Each
//!   waits flagged, listed once, and is read again from the resume list,
//!   since edge-triggered readiness will not announce bytes already there.
//!   The inbox, answers, writes and releases never wait.
//! - No buffer per idle connection: reads go into one per-core 64 KiB scratch
//!   buffer. A connection owns a (boxed) buffer only while it holds a partial
//!   frame, unsent output, or answers held for the ledger.
//!
//! The request path, in order: `on_readable` → `read_and_answer` (reads up
//! to the connection's share, `super::answer::answer_frames` on each read,
//! answers held under `crate::durable`'s rule) → `send_answers` (one write)
//! → `settle_after_read`; at the end of the turn `pump` releases held answers
//! whose ledger entries are durable.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::answer::{Answered, answer_frames};
use super::rate::ConnRate;
use crate::clock::{self, Now};
use crate::conn::{Behind, Carry, LazyBuffers, SpillRule};
use crate::durable::{HELD_FRAME_MAX, HeldAnswers};
use crate::hlog::{LatencyHistogram, latency_histogram};
use crate::ids::{Cents, CoreId, PacketId};
use crate::ledger::Producer;
use crate::mesh::{ConnAddr, CoreMsg, Effects, EngineJob, Peers, Waiting};
use crate::session::{FrameContext, Service, SessionState};
use crate::stats::{CoreCounters, Report, recycle};
use crate::wire::{FRAME_LEN_BY_CMD, Frame, cmd};

/// The listener's token.
const LISTENER: Token = Token(0);
/// The waker's token: control messages are waiting.
const WAKER: Token = Token(1);
/// Connection `key` in the slab has token `FIRST_CONN + key`.
const FIRST_CONN: usize = 2;

/// Connections per SET: the unit in which a core sweeps login deadlines.
/// 1,024 slots scan in a few microseconds, so one sweep step never stalls
/// the loop.
const SET_SIZE: usize = 1024;
/// SETs swept per tick at most, bounding the sweep's work per turn (64 SETs
/// cover 65,536 connections; a core with 500k sweeps all in under a second).
const SETS_SWEPT_PER_TICK: usize = 64;
/// Per-core read buffer, shared by all of the core's connections.
const SCRATCH_IN_LEN: usize = 64 * 1024;
/// Full reads a connection gets per wake-up before it waits for the next
/// turn: 128 KiB, thousands of frames, bounds one connection's share of a turn.
const READS_PER_WAKE_MAX: usize = 2;
/// The shortest frame a client sends (a login or a shake): the most frames
/// a read can hold.
const REQUEST_LEN_MIN: usize = FRAME_LEN_BY_CMD[cmd::SHAKE_REQUEST as usize];
/// Answers take at most `HELD_FRAME_MAX / REQUEST_LEN_MIN` of the request
/// bytes (28/16: a shake answer over a shake), so the output buffer for one
/// wake-up's reads never grows.
const SCRATCH_OUT_LEN: usize =
    SCRATCH_IN_LEN * READS_PER_WAKE_MAX / REQUEST_LEN_MIN * HELD_FRAME_MAX;
/// Readiness events taken per poll: bounds one turn's work, so timers and
/// the second's close are never starved for long.
const EVENTS_MAX: usize = 1024;
/// The loop wakes at least this often to close seconds and sweep.
const TICK: Duration = Duration::from_millis(100);
/// How long accepting pauses after the kernel runs out of descriptors, so a
/// full table is not a busy loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long the loop waits at most while messages or ledger entries it
/// could not hand over (a full channel) wait to be offered again.
const RETRY_SOON: Duration = Duration::from_millis(1);
/// Times a push is routed on after missing its user (who moved between
/// cores since the home core looked): a user flapping between cores faster
/// than a push travels would otherwise keep it circling; past this it is
/// dropped and counted.
const PUSH_HOPS_MAX: u8 = 3;
/// Rounds of its own messages a core handles at the end of a turn. Each
/// round handles what the last produced; routing to oneself ends within a
/// few hops (at most `PUSH_HOPS_MAX` plus a claim and its answer), so a
/// message left after this waits for the next turn rather than spin here.
const SELF_MESSAGE_ROUNDS_MAX: usize = 8;

/// Limits a core enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkerLimits {
    /// Connections this core holds at most.
    pub conns_max: usize,
    /// Unsent answer bytes a connection may hold before it is evicted.
    pub outbound_max: usize,
    /// Each connection's share of the core: requests a second and burst.
    pub conn_rate: ConnRate,
    /// Time a connection's answers may stay backed up before it is evicted.
    pub stall_timeout: Duration,
    /// Time a new connection has to log in.
    pub login_timeout: Duration,
    /// Time to flush pending answers after a shutdown.
    pub shutdown_grace: Duration,
}

/// Everything a core is given at start.
pub(crate) struct WorkerSetup {
    /// This core's index (and ring).
    pub core: CoreId,
    /// The CPU to pin to, if any.
    pub pin: Option<core_affinity::CoreId>,
    /// The poll, created by the owner so it can make the waker.
    pub poll: Poll,
    /// This core's listener.
    pub listener: std::net::TcpListener,
    /// This core's inbox: messages from other cores, the control and the
    /// owner; the sender wakes the poll after sending.
    pub inbox: Receiver<CoreMsg>,
    /// Every core's inbox and waker.
    pub peers: Peers,
    /// This core's ledger producer.
    pub ledger: Producer,
    /// Packets this core owns, rebuilt from the ledger.
    pub initial_packets: Vec<crate::packets::NewPacket>,
    /// Where closed seconds go.
    pub reports: Sender<Report>,
    /// Histograms coming back from the aggregator for reuse.
    pub recycled: Receiver<Box<LatencyHistogram>>,
    /// Limits.
    pub limits: WorkerLimits,
}

/// Makes the poll and its waker for a core.
pub fn poll_and_waker() -> io::Result<(Poll, Arc<Waker>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    Ok((poll, waker))
}

/// The connection is on the core's `paused` list (backpressure).
const PARKED_PRESSURE: u8 = 1;
/// The connection is on the core's `throttled` list (over its share).
const PARKED_RATE: u8 = 2;
/// The connection was not read because its answers are backed up (unsent
/// output up to `--outbound-max`, or answers held for the ledger): read
/// again once there is room.
const BLOCKED_OUT: u8 = 4;

/// A connection: tens of bytes while idle.
struct Conn {
    stream: TcpStream,
    state: SessionState,
    /// Milliseconds since the core's epoch, wrapping; meaningful only while
    /// awaiting login, draining answers after the peer's FIN, or with
    /// answers backed up (see [`Conn::is_timed`]).
    deadline_ms: u32,
    /// The core's accept count when this connection was accepted: with the
    /// slab key, its address across cores (see [`ConnAddr`]).
    serial: u32,
    /// Its share's token bucket: the theoretical arrival time, nanoseconds
    /// on the core's clock (see `super::rate`).
    rate_tat_ns: u64,
    /// Why it is not being read, if it is not: `PARKED_*`, `BLOCKED_OUT`.
    parked: u8,
    /// Its claims sent to owner cores whose answers have not come back:
    /// room is kept for those answers too.
    claims_away: u32,
    /// Present only while a partial frame, unsent output, or answers held
    /// for the ledger are kept: one pointer while idle.
    buffers: LazyBuffers<ConnExtra>,
}

impl Conn {
    /// Has a deadline the sweep must check: not logged in yet, draining
    /// answers after the peer's FIN, or answers backed up (`WRITABLE` asked).
    fn is_timed(&self) -> bool {
        self.state == SessionState::AwaitingLogin
            || self
                .buffers
                .get()
                .is_some_and(|b| b.extra.read_closed || b.extra.writable)
    }

    /// Answers it may be given from one more read: as many as fit in what
    /// `outbound_max` leaves beside its unsent output, none while it holds
    /// answers waiting for the ledger. A connection with room for none is
    /// not read (its answers are backed up), so a client that reads slowly
    /// is slowed, not evicted, and a read never takes it past the cap.
    fn answer_room(&self, outbound_max: usize) -> usize {
        let room = match self.buffers.get() {
            None => outbound_max / HELD_FRAME_MAX,
            Some(b) if !b.extra.held.is_empty() => 0,
            Some(b) => outbound_max.saturating_sub(b.pending_len()) / HELD_FRAME_MAX,
        };
        room.saturating_sub(self.claims_away as usize)
    }
}

/// The server's own part of a busy connection's buffers; `crate::conn`
/// keeps the partial frame and the unsent output beside it.
#[derive(Debug, Default)]
struct ConnExtra {
    /// `WRITABLE` interest is registered (only while output waits).
    writable: bool,
    /// The peer sent its FIN while answers were still owed: no more reads,
    /// close once the output drains or the deadline passes.
    read_closed: bool,
    /// Answers held for the ledger, in request order.
    held: HeldAnswers,
}

impl ConnExtra {
    /// Holds nothing that needs the buffers kept (the drain of a half-closed
    /// peer ends with a close, not here).
    fn is_idle(&self) -> bool {
        !self.writable && self.held.is_empty()
    }
}

/// What reading a connection came to.
#[derive(Default)]
struct ReadOutcome {
    /// Why the connection must close, if it must (the answers written before
    /// are still owed).
    close: Option<Close>,
    /// Frames answered.
    frames: u64,
    /// When the first bytes arrived: where the answers' service time starts.
    read_at: Option<Instant>,
    /// Bytes read.
    bytes: u64,
    /// The connection used its reads for this wake-up with more possibly
    /// waiting: it must be read again after the turn's other events.
    share_used: bool,
    /// The read stopped at the connection's share (`--conn-qps-max`) with
    /// more possibly waiting: read again once its bucket refills.
    rate_limited: bool,
}

/// Per-SET bookkeeping.
#[derive(Clone, Copy, Default)]
struct Set {
    /// Connections in this SET with a deadline: not logged in yet, or
    /// draining answers after the peer's FIN. SETs with none are not swept.
    timed: u32,
}

/// Why a connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// The peer closed its sending side (a read returned end of file).
    Eof,
    /// The connection failed: reset, broken pipe, or another I/O error.
    Peer,
    /// A frame was refused (counted by kind where it was refused).
    BadFrame,
    /// Pending output passed the limit.
    Evicted,
    /// No login in time.
    LoginTimeout,
    /// Half-closed by the peer, whose owed answers did not drain in time.
    DrainTimeout,
    /// Answers backed up (unread by the peer) for `--stall-timeout`.
    Stalled,
    /// The user's oldest connection, closed by a login past
    /// `--user-conns-max` (the home core asked, `CoreMsg::Kick`).
    Kicked,
}

/// A running core.
struct Worker<S: Service> {
    core: CoreId,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    sets: Vec<Set>,
    sweep_cursor: usize,
    scratch_in: Box<[u8]>,
    scratch_out: Vec<u8>,
    /// Where a connection without buffers holds answers while its read is
    /// answered; they move to its buffers before the read ends.
    held_spare: HeldAnswers,
    /// Connections with more to read than one wake-up's share, and whether
    /// their peer's FIN was reported: read again after the turn's events.
    resume: Vec<(usize, bool)>,
    /// The resume list being worked through (kept to reuse its allocation).
    resuming: Vec<(usize, bool)>,
    /// Connections left unread while the core could not hand messages on
    /// (`Effects::backpressure`): read again once it can. Each connection
    /// is on it at most once (`PARKED_PRESSURE`).
    paused: Vec<usize>,
    /// Connections left unread over their share: read again on a tick once
    /// their bucket has a token. At most once each (`PARKED_RATE`).
    throttled: Vec<usize>,
    service: S,
    /// What steps ask of the core: messages, ledger entries, held answers.
    fx: Effects,
    inbox: Receiver<CoreMsg>,
    peers: Peers,
    /// An empty outbox swapped in while one is sent (keeps allocations).
    spare_outbox: Vec<CoreMsg>,
    /// The same for the engine thread's jobs (cluster mode).
    engine_spare: Vec<EngineJob>,
    /// Accepts so far: the next connection's serial.
    serial: u32,
    counters: CoreCounters,
    latency: Box<LatencyHistogram>,
    limits: WorkerLimits,
    reports: Sender<Report>,
    recycled: Receiver<Box<LatencyHistogram>>,
    epoch: Instant,
    now: Instant,
    /// `now` in nanoseconds since `epoch`: the rate buckets' clock.
    now_ns: u64,
    /// The wall clock at the start of this turn.
    wall: Now,
    /// The wall-clock second being counted.
    second: u64,
    next_tick: Instant,
    /// Accepting is paused until then (descriptors ran out).
    accept_paused_until: Option<Instant>,
    /// Accepting stopped because this core holds `conns_max`.
    accept_full: bool,
    /// Connections holding unsent output.
    conns_pending_out: usize,
    /// Set once a shutdown is asked: flush until then, then exit.
    shutdown_deadline: Option<Instant>,
}

/// Runs a core until it is told to shut down. Errors are fatal to the
/// process: the poll itself failed.
pub(crate) fn run<S: Service>(setup: WorkerSetup, service: S) -> io::Result<()> {
    if let Some(pin) = setup.pin
        && !core_affinity::set_for_current(pin)
    {
        // Start-up, not the request path: say it once. A floating thread is
        // slower, still correct.
        eprintln!(
            "warning: core {}: pinning to CPU {} failed; the thread floats",
            setup.core, pin.id
        );
    }
    let mut listener = TcpListener::from_std(setup.listener);
    setup
        .poll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let now = Instant::now();
    let wall = clock::now();
    let cores = setup.peers.inboxes.len();
    let mut w = Worker {
        core: setup.core,
        poll: setup.poll,
        listener: Some(listener),
        conns: Slab::with_capacity(setup.limits.conns_max),
        sets: Vec::new(),
        sweep_cursor: 0,
        scratch_in: vec![0; SCRATCH_IN_LEN].into_boxed_slice(),
        scratch_out: Vec::with_capacity(SCRATCH_OUT_LEN),
        held_spare: HeldAnswers::default(),
        resume: Vec::with_capacity(EVENTS_MAX),
        resuming: Vec::with_capacity(EVENTS_MAX),
        paused: Vec::new(),
        throttled: Vec::new(),
        service,
        fx: Effects::new(setup.core, cores, setup.ledger),
        inbox: setup.inbox,
        peers: setup.peers,
        spare_outbox: Vec::new(),
        engine_spare: Vec::new(),
        serial: 0,
        counters: CoreCounters::default(),
        latency: Box::new(latency_histogram()),
        limits: setup.limits,
        reports: setup.reports,
        recycled: setup.recycled,
        epoch: now,
        now,
        now_ns: 0,
        wall,
        second: wall.secs,
        next_tick: now + TICK,
        accept_paused_until: None,
        accept_full: false,
        conns_pending_out: 0,
        shutdown_deadline: None,
    };
    for p in setup.initial_packets {
        w.on_message(CoreMsg::Packet(Box::new(p)));
    }
    w.run()
}

impl<S: Service> Worker<S> {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_MAX);
        loop {
            // Connections left with unread bytes must not wait for an event
            // that edge-triggered readiness will not send again.
            let timeout = if !self.resume.is_empty() {
                Duration::ZERO
            } else if self.has_undelivered() {
                RETRY_SOON.min(self.next_tick.saturating_duration_since(self.now))
            } else {
                self.next_tick.saturating_duration_since(self.now)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            self.now_ns = self.now.duration_since(self.epoch).as_nanos() as u64;
            self.wall = clock::now();
            if self.wall.secs != self.second {
                self.close_second(false);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.on_inbox(),
                    Token(t) => {
                        let key = t - FIRST_CONN;
                        let closing = event.is_read_closed() || event.is_error();
                        if event.is_readable() || closing {
                            // Also flushes output owed, so a readable and
                            // writable event still costs one write.
                            self.on_readable(key, closing);
                        } else if event.is_writable() {
                            self.on_writable(key);
                        }
                    }
                }
            }
            self.resume_reads();
            if self.now >= self.next_tick {
                self.next_tick = self.now + TICK;
                self.on_tick();
            }
            self.pump();
            self.unpause();
            if let Some(deadline) = self.shutdown_deadline
                && ((self.conns_pending_out == 0 && self.fx.after_sync.is_empty())
                    || self.now >= deadline)
            {
                self.close_second(true);
                return Ok(());
            }
        }
    }

    /// Reads again from the connections that used their share of reads,
    /// after every other ready connection had its turn. A slot reused since
    /// then gets a spurious read, which finds nothing.
    fn resume_reads(&mut self) {
        if self.resume.is_empty() {
            return;
        }
        std::mem::swap(&mut self.resume, &mut self.resuming);
        let mut resuming = std::mem::take(&mut self.resuming);
        for &(key, closing) in &resuming {
            if self.conns.contains(key) {
                self.on_readable(key, closing);
            }
        }
        resuming.clear();
        self.resuming = resuming;
    }

    /// Once the core can hand messages on again, the connections left
    /// unread meanwhile are read next turn (they may hold requests that no
    /// new readiness edge will announce).
    fn unpause(&mut self) {
        if self.paused.is_empty() || self.fx.backpressure() {
            return;
        }
        for key in self.paused.drain(..) {
            if let Some(c) = self.conns.get_mut(key)
                && c.parked & PARKED_PRESSURE != 0
            {
                c.parked &= !PARKED_PRESSURE;
                self.resume.push((key, true));
            }
        }
    }

    /// On a tick: the connections left unread over their share whose bucket
    /// has a token again are read next turn; the others wait on.
    fn unthrottle(&mut self) {
        let rate = self.limits.conn_rate;
        let now = self.now_ns;
        let Worker {
            throttled,
            conns,
            resume,
            ..
        } = self;
        throttled.retain(|&key| {
            let Some(c) = conns.get_mut(key) else {
                return false;
            };
            if c.parked & PARKED_RATE == 0 {
                return false; // a later connection in a reused slot
            }
            if rate.allowed(c.rate_tat_ns, now) == 0 {
                return true;
            }
            c.parked &= !PARKED_RATE;
            resume.push((key, true));
            false
        });
    }

    /// A connection left unread while its answers were backed up is read
    /// again once half of `--outbound-max` is free.
    fn unblock(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key)
            && c.parked & BLOCKED_OUT != 0
            // Half the cap free, so a slow reader is read in whole batches,
            // not one request at a time.
            && c.answer_room(self.limits.outbound_max / 2) > 0
        {
            c.parked &= !BLOCKED_OUT;
            self.resume.push((key, true));
        }
    }

    /// Takes every message waiting in the inbox.
    fn on_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            self.on_message(msg);
        }
    }

    fn on_message(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Shutdown => {
                if let Some(mut l) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                self.shutdown_deadline = Some(self.now + self.limits.shutdown_grace);
            }
            CoreMsg::Deliver {
                to,
                user,
                push,
                hops,
            } => {
                let here = self
                    .conn_of(to)
                    .is_some_and(|c| c.state == SessionState::LoggedIn(user));
                if here {
                    self.counters.pushes += 1;
                    self.write_frame(to.key as usize, push);
                    if self.peers.engine.is_some() {
                        // Out of the user's mailbox in the engine.
                        self.fx.engine.push(EngineJob::Delivered { user, push });
                    }
                } else if hops < PUSH_HOPS_MAX {
                    // Gone since the home core looked: back home, which
                    // knows by now (this core's Offline went first).
                    let home = self.fx.home(user);
                    self.fx.send(
                        home,
                        CoreMsg::Push {
                            user,
                            push,
                            hops: hops + 1,
                        },
                    );
                } else {
                    self.counters.push_drops += 1;
                }
            }
            CoreMsg::Kick { to, user } => {
                // Only if it is still that connection of that user: the
                // slot may hold a later one, which is left alone.
                if self
                    .conn_of(to)
                    .is_some_and(|c| c.state == SessionState::LoggedIn(user))
                {
                    self.close(to.key as usize, Close::Kicked);
                }
            }
            CoreMsg::ClaimAnswer { to, packet, cents } => {
                self.fx.claims_away = self.fx.claims_away.saturating_sub(1);
                // One lookup: the claim is no longer away, and its answer
                // goes out, if the connection is still the one that sent it.
                if let Some(c) = self.conn_of_mut(to) {
                    c.claims_away = c.claims_away.saturating_sub(1);
                    self.write_frame(
                        to.key as usize,
                        Frame::ClaimResponse {
                            packet,
                            amount: cents,
                        },
                    );
                }
            }
            msg => self
                .service
                .on_message(msg, self.wall, &mut self.fx, &mut self.counters),
        }
    }

    /// The connection at `addr` on this core, if it is still the same one.
    fn conn_of(&self, addr: ConnAddr) -> Option<&Conn> {
        self.conns
            .get(addr.key as usize)
            .filter(|c| c.serial == addr.serial)
    }

    /// As `conn_of`, to change it.
    fn conn_of_mut(&mut self, addr: ConnAddr) -> Option<&mut Conn> {
        self.conns
            .get_mut(addr.key as usize)
            .filter(|c| c.serial == addr.serial)
    }

    /// Writes a claim's answer on connection `to` of this core, if it is
    /// still the same connection.
    fn answer_claim(&mut self, to: ConnAddr, packet: PacketId, cents: Cents) {
        if self.conn_of(to).is_some() {
            self.write_frame(
                to.key as usize,
                Frame::ClaimResponse {
                    packet,
                    amount: cents,
                },
            );
        }
    }

    /// Writes one frame on a connection now (a push or a claim answer: they
    /// do not wait behind held shake answers).
    fn write_frame(&mut self, key: usize, frame: Frame) {
        self.scratch_out.clear();
        frame.encode(self.wall.secs, &mut self.scratch_out);
        self.flush_conn(key);
    }

    /// Sends `scratch_out` (after what the connection already owes) and
    /// settles the connection: closed on failure, buffers freed when idle.
    fn flush_conn(&mut self, key: usize) {
        match self.send(key) {
            Ok(()) => {
                if self.conns[key].buffers.get().is_some_and(|b| {
                    b.extra.read_closed && !b.has_pending_out() && b.extra.held.is_empty()
                }) {
                    self.close(key, Close::Eof);
                } else {
                    self.release_idle_buffers(key);
                    self.unblock(key);
                }
            }
            Err(why) => self.close(key, why),
        }
    }

    /// True when messages or ledger entries wait for room in a channel.
    fn has_undelivered(&self) -> bool {
        self.fx.ledger.backlog() > 0
            || self.fx.outbox.iter().any(|o| !o.is_empty())
            || !self.fx.engine.is_empty()
    }

    /// The end of a turn: handles this core's messages to itself, releases
    /// answers whose ledger entries are durable, hands ledger entries to the
    /// writer, and sends other cores their messages (one wake-up each).
    fn pump(&mut self) {
        let me = self.core.0;
        for _ in 0..SELF_MESSAGE_ROUNDS_MAX {
            if self.fx.outbox[me].is_empty() {
                break;
            }
            let msgs = std::mem::take(&mut self.fx.outbox[me]);
            for msg in msgs {
                self.on_message(msg);
            }
        }
        self.fx.ledger.flush();
        self.release_durable();
        self.send_engine_jobs();
        for core in 0..self.fx.cores {
            if core == me || self.fx.outbox[core].is_empty() {
                continue;
            }
            // Swapped with an empty spare, so both keep their allocations.
            let mut msgs = std::mem::take(&mut self.spare_outbox);
            std::mem::swap(&mut msgs, &mut self.fx.outbox[core]);
            let mut sent = 0;
            let mut drain = msgs.drain(..);
            while let Some(msg) = drain.next() {
                match self.peers.inboxes[core].try_send(msg) {
                    Ok(()) => sent += 1,
                    // Kept, in order, for the next turn; never dropped while
                    // that core lives.
                    Err(TrySendError::Full(msg)) => {
                        self.fx.outbox[core].push(msg);
                        self.fx.outbox[core].extend(drain.by_ref());
                        break;
                    }
                    // That core has stopped: the server is going down.
                    Err(TrySendError::Disconnected(_)) => {}
                }
            }
            drop(drain);
            self.spare_outbox = msgs;
            if sent > 0 {
                let _ = self.peers.wakers[core].wake();
            }
        }
    }

    /// Cluster mode: hands the engine thread this turn's jobs, in order;
    /// what its bounded inbox cannot take waits for the next turn (and
    /// stops this core's reads meanwhile: `Effects::backpressure`).
    fn send_engine_jobs(&mut self) {
        let Some(engine) = &self.peers.engine else {
            return;
        };
        let mut jobs = self.fx.engine.drain(..);
        while let Some(job) = jobs.next() {
            match engine.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.engine_spare.push(job);
                    self.engine_spare.extend(jobs.by_ref());
                    break;
                }
                // The engine thread is gone: the server is stopping.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        drop(jobs);
        // The kept jobs become the outbox; the emptied one the spare, so
        // both keep their allocations.
        std::mem::swap(&mut self.fx.engine, &mut self.engine_spare);
    }

    /// Releases every answer whose ledger entry is durable now.
    fn release_durable(&mut self) {
        let durable = self.fx.ledger.durable();
        while let Some(waiting) = self.fx.after_sync.pop_durable(durable) {
            match waiting {
                Waiting::Conn { key, serial } => {
                    let addr = ConnAddr {
                        core: self.core.0 as u16,
                        key,
                        serial,
                    };
                    if self.conn_of(addr).is_some() {
                        self.release_held(key as usize, durable);
                    }
                }
                Waiting::Claim { to, packet, cents } => {
                    if usize::from(to.core) == self.core.0 {
                        self.answer_claim(to, packet, cents);
                    } else {
                        self.fx.send(
                            usize::from(to.core),
                            CoreMsg::ClaimAnswer { to, packet, cents },
                        );
                    }
                }
            }
        }
    }

    /// Moves a connection's held answers that may go now to its output.
    fn release_held(&mut self, key: usize, durable: u64) {
        self.scratch_out.clear();
        if let Some(b) = self.conns[key].buffers.get_mut() {
            b.extra.held.release(durable, &mut self.scratch_out);
        }
        if !self.scratch_out.is_empty() {
            self.flush_conn(key);
        }
    }

    fn on_tick(&mut self) {
        self.service
            .on_tick(self.wall, &mut self.fx, &mut self.counters);
        self.unthrottle();
        if self.accept_full && self.conns.len() < self.limits.conns_max {
            self.accept_full = false;
            self.accept_all();
        }
        if self
            .accept_paused_until
            .is_some_and(|until| self.now >= until)
        {
            self.accept_paused_until = None;
            self.accept_all();
        }
        self.sweep_deadlines();
    }

    /// Sends the closed second's counters and histogram to the aggregator.
    /// `last`: the core is stopping, so it waits for room rather than keep
    /// counts it would never send.
    fn close_second(&mut self, last: bool) {
        let latency = recycle::swap_out(&mut self.latency, &self.recycled);
        let report = Report::Core {
            core: self.core.0,
            second: self.second,
            counters: std::mem::take(&mut self.counters),
            conns_open: self.conns.len() as u64,
            latency,
        };
        // Never block the loop on the stats thread (it may be stuck writing
        // to a stdout nobody reads). If its queue is full, the counts stay
        // here and go with the next second: late, never lost. If it is gone,
        // the process is stopping and the counts have nowhere to go.
        if last {
            let _ = self.reports.send(report);
        } else if let Err(TrySendError::Full(Report::Core {
            counters, latency, ..
        })) = self.reports.try_send(report)
        {
            // Nothing was recorded since the swap: put the histogram back.
            self.counters.add(&counters);
            self.latency = latency;
        }
        self.second = self.wall.secs;
        self.service.on_second();
    }

    fn now_ms(&self) -> u32 {
        // Wrapping milliseconds: deadlines are compared by wrapping
        // difference, valid while they lie within 24 days of now.
        self.now.duration_since(self.epoch).as_millis() as u32
    }

    /// A deadline one login timeout from now: for a login, and for draining
    /// answers after the peer's FIN.
    fn deadline_ms(&self) -> u32 {
        self.now_ms()
            .wrapping_add(self.limits.login_timeout.as_millis() as u32)
    }

    /// A deadline one stall timeout from now: for a connection whose answers
    /// are backed up, renewed while the peer takes any of them.
    fn stall_deadline_ms(&self) -> u32 {
        self.now_ms()
            .wrapping_add(self.limits.stall_timeout.as_millis() as u32)
    }

    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            if self.conns.len() >= self.limits.conns_max {
                self.accept_full = true;
                return;
            }
            match listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhaustion(&e) => {
                    self.counters.accept_fd_exhausted += 1;
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return;
                }
                // ECONNABORTED and kin: that one connection is gone, the
                // next may be fine.
                Err(e) if is_per_connection(&e) => self.counters.accept_errors += 1,
                // Anything else may repeat for the same queued connection
                // (a security hook's EPERM, say): pause rather than spin.
                Err(_) => {
                    self.counters.accept_errors += 1;
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream) {
        // Answers are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let deadline = self.deadline_ms();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(&mut stream, Token(FIRST_CONN + key), Interest::READABLE)
            .is_err()
        {
            self.counters.accept_errors += 1;
            return;
        }
        self.serial = self.serial.wrapping_add(1);
        entry.insert(Conn {
            stream,
            state: SessionState::AwaitingLogin,
            deadline_ms: deadline,
            serial: self.serial,
            rate_tat_ns: 0,
            parked: 0,
            claims_away: 0,
            buffers: LazyBuffers::none(),
        });
        let set = key / SET_SIZE;
        if self.sets.len() <= set {
            self.sets.resize(set + 1, Set::default());
        }
        self.sets[set].timed += 1;
        self.counters.accepted += 1;
    }

    fn close(&mut self, key: usize, why: Close) {
        // Dropping the stream closes the descriptor, which removes it from
        // the epoll set: no deregister syscall needed.
        let conn = self.conns.remove(key);
        if conn.is_timed() {
            self.sets[key / SET_SIZE].timed -= 1;
        }
        if conn.buffers.has_pending_out() {
            self.conns_pending_out -= 1;
        }
        if let SessionState::LoggedIn(user) = conn.state {
            let addr = ConnAddr {
                core: self.core.0 as u16,
                key: key as u32,
                serial: conn.serial,
            };
            self.service.on_close(user, addr, &mut self.fx);
        }
        match why {
            // A half-closed peer that does not take its answers is a client
            // that stopped reading, like an eviction.
            Close::Evicted | Close::DrainTimeout => self.counters.evictions += 1,
            Close::Stalled => {
                self.counters.evictions += 1;
                self.counters.stalled += 1;
            }
            Close::LoginTimeout => self.counters.login_timeouts += 1,
            Close::Kicked => self.counters.user_conns_kicked += 1,
            Close::Eof | Close::Peer | Close::BadFrame => {}
        }
        self.counters.closed += 1;
    }

    /// A connection has bytes to read, or its peer's FIN, or an error:
    /// reads and answers, sends the answers with one write, then keeps,
    /// closes or slims the connection. `closing`: the event already reports
    /// the peer's FIN or an error, so the short-read shortcut must not skip
    /// the read that returns it.
    fn on_readable(&mut self, key: usize, closing: bool) {
        if self.shutdown_deadline.is_some() {
            // Stopping: answer nothing new, only flush what is owed.
            self.on_writable(key);
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return; // stale event for a connection closed this turn
        };
        if conn.parked & (PARKED_PRESSURE | PARKED_RATE) != 0 {
            return; // read when its list is taken up
        }
        let answer_room = conn.answer_room(self.limits.outbound_max);
        if answer_room == 0 {
            // Its answers are backed up (unread by the peer, or waiting for
            // the ledger): no new requests from it until there is room, so
            // what it holds stays under --outbound-max. This event may be
            // room to write what it owes.
            conn.parked |= BLOCKED_OUT;
            self.on_writable(key);
            return;
        }
        if self.fx.backpressure() {
            conn.parked |= PARKED_PRESSURE;
            self.paused.push(key);
            self.counters.reads_paused += 1;
            return;
        }
        let allowed = self.limits.conn_rate.allowed(conn.rate_tat_ns, self.now_ns);
        if allowed == 0 {
            conn.parked |= PARKED_RATE;
            self.throttled.push(key);
            self.counters.throttled += 1;
            return;
        }
        // At most `allowed` whole requests, and no more than the room for
        // their answers: the shortest request is 16 bytes.
        let rate_limited = allowed < answer_room as u64;
        let requests = if rate_limited {
            allowed as usize
        } else {
            answer_room
        };
        let read_max = requests.saturating_mul(REQUEST_LEN_MIN);
        let was_timed = conn.is_timed();
        let away_before = self.fx.claims_away;
        let read = self.read_and_answer(key, closing, read_max);
        let conn = &mut self.conns[key];
        // Only this connection's frames ran: the claims it sent away.
        conn.claims_away = conn
            .claims_away
            .saturating_add((self.fx.claims_away - away_before) as u32);
        self.limits
            .conn_rate
            .charge(&mut conn.rate_tat_ns, self.now_ns, read.frames);
        if read.rate_limited && read.close.is_none() {
            if rate_limited {
                conn.parked |= PARKED_RATE;
                self.throttled.push(key);
                self.counters.throttled += 1;
            } else {
                // Stopped at its answers' room: read again after the turn's
                // other events, or once its output drains (`unblock`).
                self.resume.push((key, closing));
            }
        }
        if was_timed && !conn.is_timed() {
            // Logged in: no login deadline left to sweep.
            self.sets[key / SET_SIZE].timed -= 1;
        }
        let mut close = read.close;
        if let Err(why) = self.send_answers(key, &read) {
            close = Some(why);
        }
        self.settle_after_read(key, close);
    }

    /// Reads the connection, up to its share of the wake-up, and answers
    /// every whole frame into `scratch_out` (see the contract above); a
    /// partial frame is carried over to the next read.
    fn read_and_answer(&mut self, key: usize, closing: bool, read_max: usize) -> ReadOutcome {
        let Worker {
            conns,
            scratch_in,
            scratch_out,
            held_spare,
            resume,
            service,
            fx,
            counters,
            core,
            wall,
            ..
        } = self;
        let Conn {
            stream,
            state,
            serial,
            buffers,
            ..
        } = &mut conns[key];
        scratch_out.clear();
        let mut carry = Carry::take(&mut scratch_in[..], buffers);
        let held = match buffers.get_mut() {
            Some(b) => &mut b.extra.held,
            None => &mut *held_spare,
        };
        let mut cx = FrameContext {
            conn: ConnAddr {
                core: core.0 as u16,
                key: key as u32,
                serial: *serial,
            },
            state: *state,
            now: *wall,
            out: scratch_out,
            fx,
            counters,
        };
        let read = read_share(stream, &mut carry, closing, read_max, |bytes| {
            answer_frames(bytes, service, held, &mut cx)
        });
        *state = cx.state;
        cx.counters.bytes_in += read.bytes;
        if read.share_used {
            // More may wait: this connection's share is used; it is read
            // again after the turn's other events.
            resume.push((key, closing));
        }
        if !held_spare.is_empty() {
            // The connection's first held answers: they go with it now.
            buffers.alloc().extra.held = std::mem::take(held_spare);
        }
        if read.close.is_none() {
            // The start of a frame waits in the connection's buffers for
            // its next read (a closing connection needs none).
            carry.keep_rest(buffers);
        }
        read
    }

    /// Sends what this read answered after what the connection already
    /// owes, and records the answers' service time.
    fn send_answers(&mut self, key: usize, read: &ReadOutcome) -> Result<(), Close> {
        if self.scratch_out.is_empty() && !self.conns[key].buffers.has_pending_out() {
            return Ok(());
        }
        if let Some(read_at) = read.read_at
            && read.frames > 0
        {
            let ns = Instant::now().saturating_duration_since(read_at).as_nanos() as u64;
            // Out-of-range values are clamped to the histogram's bounds.
            self.latency.saturating_record_n(ns.max(1), read.frames);
        }
        // Answers to the frames before a refused one are still owed.
        self.send(key)
    }

    /// After a read: a peer that sent its FIN while answers are still owed
    /// is kept until they drain; a connection that must close is closed;
    /// one that holds nothing gives its buffers back.
    fn settle_after_read(&mut self, key: usize, close: Option<Close>) {
        if close == Some(Close::Eof)
            && let Some(b) = self.conns[key].buffers.get_mut()
            && (b.has_pending_out() || !b.extra.held.is_empty())
        {
            // The write did not fail: keep the connection until its answers
            // drain, within a deadline swept like a login's, then close.
            if !b.extra.read_closed {
                let was_writable = b.extra.writable;
                b.extra.read_closed = true;
                let deadline = self.deadline_ms();
                self.conns[key].deadline_ms = deadline;
                if !was_writable {
                    self.sets[key / SET_SIZE].timed += 1;
                }
            }
        } else if let Some(why) = close {
            self.close(key, why);
        } else {
            self.release_idle_buffers(key);
        }
    }

    fn on_writable(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        self.scratch_out.clear();
        self.flush_conn(key);
    }

    /// Writes the connection's pending output followed by `scratch_out`,
    /// with one `write` (`crate::conn`'s spill, `Behind::Write`); keeps what
    /// did not fit, and evicts a connection that keeps more than
    /// `--outbound-max`. Order on the wire is the order of the requests.
    fn send(&mut self, key: usize) -> Result<(), Close> {
        let Conn {
            stream, buffers, ..
        } = &mut self.conns[key];
        if self.scratch_out.is_empty() && !buffers.has_pending_out() {
            return Ok(());
        }
        let rule = SpillRule {
            behind: Behind::Write,
            kept_max: self.limits.outbound_max,
        };
        // Any error but WouldBlock (nothing taken) and Interrupted (retried)
        // closes the connection; so does a write that takes nothing without
        // blocking, which a TCP socket does not do.
        let sent = buffers
            .send(&self.scratch_out, rule, |bytes| stream.write(bytes))
            .map_err(|_| Close::Peer)?;
        self.counters.bytes_out += sent.written as u64;
        if sent.written > 0 && sent.was_pending && sent.is_pending() {
            // The peer reads, if slowly: a stalled reader is one that takes
            // nothing for --stall-timeout.
            let stall_deadline = self.stall_deadline_ms();
            let conn = &mut self.conns[key];
            if conn
                .buffers
                .get()
                .is_some_and(|b| b.extra.writable && !b.extra.read_closed)
            {
                conn.deadline_ms = stall_deadline;
            }
        }
        match (sent.was_pending, sent.is_pending()) {
            (false, true) => self.conns_pending_out += 1,
            (true, false) => self.conns_pending_out -= 1,
            _ => {}
        }
        if sent.over_cap {
            return Err(Close::Evicted);
        }
        self.want_writable(key, sent.is_pending())
    }

    /// Asks for `WRITABLE` only while output waits: left on, every ACK that
    /// frees send space would wake the loop for nothing.
    fn want_writable(&mut self, key: usize, pending: bool) -> Result<(), Close> {
        let stall_deadline = self.stall_deadline_ms();
        let conn = &mut self.conns[key];
        let was_timed = conn.is_timed();
        let Conn {
            stream, buffers, ..
        } = conn;
        let Some(b) = buffers.get_mut() else {
            return Ok(());
        };
        if pending == b.extra.writable {
            return Ok(());
        }
        let interest = if pending {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .reregister(stream, Token(FIRST_CONN + key), interest)
            .map_err(|_| Close::Peer)?;
        b.extra.writable = pending;
        // Backed up from now: a stalled reader's deadline, swept like a
        // login's (unless it already has one); drained: none.
        let is_timed = conn.is_timed();
        if pending && !was_timed {
            conn.deadline_ms = stall_deadline;
        }
        let set = &mut self.sets[key / SET_SIZE];
        match (was_timed, is_timed) {
            (false, true) => set.timed += 1,
            (true, false) => set.timed -= 1,
            _ => {}
        }
        Ok(())
    }

    /// Frees a connection's buffers once it holds nothing, so an idle
    /// connection costs no buffer.
    fn release_idle_buffers(&mut self, key: usize) {
        self.conns[key].buffers.release_if_idle(ConnExtra::is_idle);
    }

    /// Closes connections past their deadline (no login in time, or a
    /// half-closed peer whose answers did not drain), a bounded number of
    /// SETs per tick, skipping SETs with no deadline in them.
    fn sweep_deadlines(&mut self) {
        let sets = self.sets.len();
        if sets == 0 {
            return;
        }
        let now_ms = self.now_ms();
        let mut swept = 0;
        for _ in 0..sets {
            let set = self.sweep_cursor;
            self.sweep_cursor = (self.sweep_cursor + 1) % sets;
            if self.sets[set].timed == 0 {
                continue;
            }
            for key in set * SET_SIZE..(set + 1) * SET_SIZE {
                let Some(c) = self.conns.get(key) else {
                    continue;
                };
                if (now_ms.wrapping_sub(c.deadline_ms) as i32) < 0 {
                    continue;
                }
                if c.state == SessionState::AwaitingLogin {
                    self.close(key, Close::LoginTimeout);
                } else if c.buffers.get().is_some_and(|b| b.extra.read_closed) {
                    self.close(key, Close::DrainTimeout);
                } else if c.buffers.get().is_some_and(|b| b.extra.writable) {
                    self.close(key, Close::Stalled);
                }
            }
            swept += 1;
            if swept == SETS_SWEPT_PER_TICK {
                break;
            }
        }
    }
}

/// Reads `stream` into `carry`, after the partial frame carried over, up
/// to one wake-up's share (see the contract above), handing all the bytes
/// held to `answer` after each read and keeping what it did not use (a
/// partial frame) at the front for the next read.
#[inline]
fn read_share(
    stream: &mut TcpStream,
    carry: &mut Carry<'_>,
    closing: bool,
    mut read_max: usize,
    mut answer: impl FnMut(&[u8]) -> Answered,
) -> ReadOutcome {
    let mut read = ReadOutcome::default();
    let mut reads = 0;
    loop {
        let room = carry.room();
        let room_len = room.len().min(read_max);
        if room_len == 0 {
            read.rate_limited = true;
            break;
        }
        match stream.read(&mut room[..room_len]) {
            Ok(0) => {
                read.close = Some(Close::Eof);
                break;
            }
            Ok(n) => {
                reads += 1;
                read.read_at.get_or_insert_with(Instant::now);
                read.bytes += n as u64;
                read_max -= n;
                carry.filled(n);
                let answered = answer(carry.bytes());
                read.frames += answered.frames;
                carry.consume(answered.used);
                if answered.refused {
                    read.close = Some(Close::BadFrame);
                    break;
                }
                if n < room_len && !closing {
                    break; // drained: see the contract above
                }
                if read_max == 0 {
                    read.rate_limited = true; // its share: see `on_readable`
                    break;
                }
                if reads == READS_PER_WAKE_MAX {
                    read.share_used = true;
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                read.close = Some(Close::Peer);
                break;
            }
        }
    }
    read
}

/// accept(2)'s errors that concern only the connection being accepted
/// (Linux passes pending network errors of the new socket to accept).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    /// A connection's slot, idle: socket, session, deadline, serial, rate
    /// bucket, flags, claims away and an empty buffer pointer. The memory
    /// bound in docs/ARCHITECTURE.md counts 48 bytes: mio's stream is its
    /// 4-byte descriptor in a release build (debug builds add a selector
    /// id), and the rest at most 44.
    #[test]
    fn an_idle_connection_slot_is_at_most_48_bytes() {
        let stream = std::mem::size_of::<mio::net::TcpStream>();
        assert!(std::mem::size_of::<super::Conn>() - stream <= 44);
    }
}
