//! One flooder thread: its users' connections, its mio poll, its part of
//! the slot rule.
//!
//! Owns: opening, logging in and (after any failure) re-opening its users'
//! connections with backoff, each time at the next `--server` (failover);
//! sending the shakes the slot rule gives its
//! users, each at its intended wall-clock time; claiming pushed packets
//! (once while a claim awaits its answer; again after a reconnect);
//! matching every answer to what it answers. Must not: share anything with
//! other threads on the send/receive path (it owns its poll, sockets,
//! buffers, counters and histograms, and talks to the coordinator only by
//! channel, once a second and at phase ends), allocate per request once
//! warmed up, or panic on anything a server sends.
//!
//! Event-loop contract (mio, Linux epoll): every socket is registered once,
//! edge-triggered, for READABLE and WRITABLE, and never re-registered, so no
//! `epoll_ctl` is spent per request. WRITABLE first reports a finished
//! connect, later that a full send buffer has room again. Events can be
//! spurious; `Interrupted` means retry; a read or write that would block ends
//! that socket's turn until its next edge.
//!
//! While shaking, the thread sleeps until its next request is due (or at most
//! [`READ_TICK`]) with `clock_nanosleep` *outside* epoll, then collects
//! readiness with a zero-timeout poll. Answers therefore never wake it: a
//! loopback answer that woke the flooder cost it a context switch and the
//! server an inter-processor wake-up per request, which made the flooder,
//! not the server, the expensive side. Answer times do not suffer: every
//! socket has `SO_TIMESTAMPNS`, and an answer's time is the kernel's receive
//! timestamp of the data (of the last segment a read returns, so a late
//! one only makes earlier answers look later, never faster).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::control::{NO_OVERRIDE, OVERRIDE_QPS_MASK, OVERRIDE_STEP_SHIFT};
use super::schedule::{self, Plan, Share, SlotRule};
use super::stats::{Latency, SecondHists};
use crate::clock::NANOS_PER_SEC;
use crate::clock::{unix_nanos, unix_secs};
use crate::conn::{Behind, Carry, FrameStop, LazyBuffers, SpillRule};
use crate::ids::{Cents, EnvelopeId, PacketId, UserId};
use crate::stats::client::Counters;
use crate::stats::recycle;
use crate::token::Keyring;
use crate::wire::{DecodeError, Frame, ShakeOutcome};

/// The token of each thread's `mio::Waker`; connections use tokens `0..users`.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// The longest a shaking thread sleeps: how long an answer or a push may sit
/// unread (its time is the kernel's stamp, so only claims wait for it).
const READ_TICK: Duration = Duration::from_millis(1);

/// With `--spin`, waits shorter than this are spun; longer ones still sleep.
const SPIN_WAIT_MAX: Duration = Duration::from_millis(2);

/// Bytes read per `recvmsg` into the thread's one scratch buffer: a whole
/// burst of answers fits, and it is shared by all of the thread's
/// connections, so there is no per-connection read buffer.
const READ_BUF_LEN: usize = 64 * 1024;

/// Connects (and logins) a thread keeps in flight at once. Below the kernel's
/// default accept backlog (somaxconn 4096) even with 8 threads, so an
/// as-fast-as-possible connect burst never overflows the server's listen queue
/// and turns into 1 s SYN retransmits that would fake a slow server.
const HANDSHAKES_IN_FLIGHT_MAX: usize = 512;

/// Requests a thread keeps awaiting answers, at most: ~32 MiB of records,
/// 8 s of 120k/s against a server that has stopped answering.
const IN_FLIGHT_MAX: u64 = 1 << 20;

/// Claims a thread keeps awaiting answers, at most.
const CLAIMS_IN_FLIGHT_MAX: usize = 1 << 16;

/// Claims one user keeps awaiting answers, at most: a push repeated while
/// its claim is unanswered is found among these (a scan, so they must stay
/// few), and a user pushed more packets than this meanwhile counts the
/// rest unsent. Far above what a user is pushed in a round trip.
const CLAIMS_PER_USER_MAX: usize = 64;

/// Of a user's claims still unanswered when its connection closes, this
/// many are sent again after its next login (a cluster answers a repeat
/// with the amount it paid); the rest are counted lost. Few, so that a
/// mass reconnect after a node's death is not a claim storm.
const CLAIMS_RESENT_MAX: usize = 4;

/// The first retry of a failed connect or login waits about this long; each
/// further failure doubles it, up to [`BACKOFF_MAX`], with ±50 % jitter so
/// that users refused together do not come back together.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Doublings of [`BACKOFF_FIRST`] counted at most: six already pass
/// [`BACKOFF_MAX`]; stopping at ten keeps the shift and the product far from
/// overflowing however often a user fails.
const BACKOFF_DOUBLINGS_MAX: u8 = 10;

/// An `--ack-log` buffer is written out when it reaches this.
const ACK_FLUSH_AT: usize = 64 * 1024;
/// Room past [`ACK_FLUSH_AT`] for the line that crosses it (a line is at
/// most 40 bytes: a kind and three `u32`s), so the buffer never grows.
const ACK_LINE_ROOM: usize = 256;

/// The frame being sent: one at a time (cleared before each), so any room
/// for [`crate::wire::FRAME_LEN_MAX`] bytes would do; the 64 shake requests of 16
/// bytes it has always had room for cost nothing and never grow.
const WRITE_BUF_LEN: usize = 64 * 16;

/// Run seconds a thread may report past the plan's and the drain's whole
/// seconds (the partial second the drain ends in, and the one published
/// as the thread stops): room kept for them so the per-second list never
/// grows while shaking.
const SECONDS_PAST_DRAIN: u64 = 2;

/// Room for the control messages of one `recvmsg`, in `u64`s (so it is
/// aligned for `cmsghdr`): one `SCM_TIMESTAMPNS` takes 32 bytes, and 64
/// leave room for one more the kernel might add.
const CONTROL_WORDS: usize = 8;

/// The timer slack asked for, ns: the least there is (0 would mean "back to
/// the default", 50 µs).
const TIMER_SLACK_NS: libc::c_ulong = 1;
/// Seconds a signed login's token is valid from its connect: long enough
/// for any clock skew between flooder and server on one host or LAN, short
/// enough that a token seen on the wire is soon useless.
const LOGIN_TOKEN_TTL_SECS: u64 = 3600;

/// How a connection's output spills: behind waiting output, new requests
/// queue without a system call (a WRITABLE edge is coming, the socket being
/// registered for it for good). Never over its cap: the flooder does not
/// drop a connection for its own backlog, which [`IN_FLIGHT_MAX`] and
/// [`CLAIMS_IN_FLIGHT_MAX`] bound instead.
const SPILL_RULE: SpillRule = SpillRule {
    behind: Behind::Queue,
    kept_max: usize::MAX,
};

/// mio events taken per poll. More only means fewer polls under a burst.
const EVENTS_CAPACITY: usize = 1024;

/// What a thread is told by the coordinator.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Control {
    /// Start shaking; run second 0 is this Unix second.
    Go { start_unix_secs: u64 },
    /// Give up now (another thread failed, or the run is over).
    Stop,
}

/// What a thread tells the coordinator.
#[derive(Debug)]
pub(crate) enum ToMain {
    /// Cumulative connect-phase counts, about once a second.
    ConnectProgress {
        thread: usize,
        /// Whole seconds since the connect phase started.
        second: u64,
        progress: ConnectProgress,
    },
    /// The connect phase ended for this thread, complete or not.
    LoggedIn {
        thread: usize,
        summary: LoginSummary,
    },
    /// One run second has ended.
    Second(Box<SecondOut>),
    /// The thread finished its run.
    Done(Box<ThreadResult>),
    /// The thread cannot go on (its poll failed); the run must stop.
    Failed { thread: usize, error: String },
}

/// One thread's account of one run second.
#[derive(Debug)]
pub(crate) struct SecondOut {
    pub thread: usize,
    /// Run second (0 = the first second of shaking).
    pub second: u64,
    /// The global rate this thread used for the second.
    pub qps: u64,
    pub counters: Counters,
    /// The second's histograms; the coordinator hands them back for reuse.
    pub hists: Box<SecondHists>,
    /// Logged-in connections at the second's end.
    pub ready: u64,
    /// CPU time the thread used since its previous report, ns.
    pub cpu_ns: u64,
    /// Wall time since its previous report, ns: a second, or more when the
    /// thread fell behind and reports several seconds at once (the first
    /// of them then carries the whole span's CPU).
    pub wall_ns: u64,
}

/// Connect-phase counts of one thread, cumulative.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConnectProgress {
    /// Connect attempts started, retries included.
    pub opened: u64,
    /// TCP connections established.
    pub connected: u64,
    /// Logins answered with result 0.
    pub logged_in: u64,
    /// Attempts that failed (socket, connect, login refused, lost); each
    /// is retried after a backoff.
    pub failed: u64,
}

crate::stats::impl_add!(ConnectProgress {
    opened,
    connected,
    logged_in,
    failed,
});

/// How one thread's connect phase ended.
#[derive(Debug)]
pub(crate) struct LoginSummary {
    /// Final counts.
    pub progress: ConnectProgress,
    /// Users logged in when the phase ended.
    pub ready: u64,
    /// The first failure, with the user and step it happened at.
    pub first_error: Option<String>,
    /// When the first connect was started.
    pub first_connect: Option<Instant>,
    /// When the last user of the phase logged in.
    pub last_login: Option<Instant>,
}

/// Everything a thread measured, handed over once at the end.
#[derive(Debug)]
pub(crate) struct ThreadResult {
    /// The thread's index.
    pub thread: usize,
    /// Counts per run second.
    pub per_second: Vec<Counters>,
    /// Counts between login and the start of shaking.
    pub before_start: Counters,
    /// Latency of requests intended inside the measurement window.
    pub latency: Latency,
    /// Requests intended inside the window that never got an answer.
    pub lost_in_window: u64,
    /// The same for requests intended in the warmup.
    pub lost_outside_window: u64,
    /// Claims never answered.
    pub claims_lost: u64,
    /// Requests the slot rule gave the thread, by intended run second.
    pub scheduled: Vec<u64>,
}

/// The run parameters a thread needs.
#[derive(Clone, Debug)]
pub(crate) struct WorkerConfig {
    pub index: usize,
    /// Servers; user `u` goes to `servers[u % len]` first, and to the next
    /// one in the list after each lost connection or failed attempt.
    pub servers: Arc<[SocketAddr]>,
    /// Source addresses; user `u` binds `binds[u % len]`; empty means let
    /// the kernel choose.
    pub binds: Arc<[IpAddr]>,
    /// This thread's users: `first_user .. first_user + users`.
    pub first_user: u32,
    pub users: u32,
    /// The experiment's slot rule (over `--total`).
    pub rule: SlotRule,
    pub plan: Plan,
    pub burst: bool,
    pub push_answers_shake: bool,
    /// `/qps` override: `(step id << 32) | qps`, or [`NO_OVERRIDE`].
    pub rate_override: Arc<AtomicU64>,
    /// Connects per second for this thread; 0 = as fast as possible.
    pub connect_rate_per_sec: u64,
    /// How long to wait for answers after the last request.
    pub drain_ns: u64,
    /// The connect phase's zero.
    pub connect_start: Instant,
    pub login_deadline: Instant,
    /// No phase of this thread goes past this.
    pub hard_deadline: Instant,
    /// Shortest sleep between two sends (`--send-interval-us`).
    pub send_interval: Duration,
    /// Poll without sleeping while shaking (`--spin`).
    pub spin: bool,
    /// `--ack-log`, opened for appending by the coordinator.
    pub ack_log: Option<Arc<File>>,
    /// Keys to sign logins with (`--auth-key-file`); v1 logins without.
    pub keys: Option<Keyring>,
    /// Emptied second histograms handed back by the coordinator.
    pub recycle: Receiver<Box<SecondHists>>,
}

/// The global rate for run second `s`: the plan's, unless a `/qps` override
/// was set for the plan step that `s` belongs to.
pub(crate) fn rate_for(plan: &Plan, rate_override: &AtomicU64, s: u64) -> u64 {
    let Some((step, qps)) = plan.at(s) else {
        return 0;
    };
    let o = rate_override.load(Ordering::Relaxed);
    if o != NO_OVERRIDE && (o >> OVERRIDE_STEP_SHIFT) as u32 == step {
        o & OVERRIDE_QPS_MASK
    } else {
        qps
    }
}

/// The thread body: connect, hold, shake, report. Returns when done or told
/// to stop; every outcome is reported to the coordinator by channel.
pub(crate) fn run(
    cfg: WorkerConfig,
    poll: Poll,
    control: Receiver<Control>,
    to_main: Sender<ToMain>,
) {
    let thread = cfg.index;
    tighten_timer_slack();
    let mut worker = Worker::new(cfg, poll, control, to_main.clone());
    let outcome = (|| -> Result<(), Stop> {
        let summary = worker.connect_all()?;
        let _ = to_main.send(ToMain::LoggedIn { thread, summary });
        let start = worker.hold()?;
        worker.shake(start)?;
        let _ = to_main.send(ToMain::Done(Box::new(worker.finish())));
        Ok(())
    })();
    if let Err(Stop::Failed(error)) = outcome {
        let _ = to_main.send(ToMain::Failed { thread, error });
    }
}

/// Why a thread stops early.
enum Stop {
    /// The coordinator said so, or the hard deadline passed.
    Told,
    /// The thread's own machinery failed (not a connection: those retry).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for its (first or next) connect attempt.
    Idle,
    /// Nonblocking connect started; waiting for WRITABLE.
    Connecting,
    /// LoginRequest sent; waiting for LoginResponse.
    LoggingIn,
    /// Logged in: shakes go out, answers come back.
    Ready,
}

/// A request on the wire, waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// When the schedule wanted it sent, ns since the run's start.
    intended_ns: u64,
    /// When it was handed to the socket, ns since the run's start.
    sent_ns: u64,
}

struct Conn {
    stream: Option<TcpStream>,
    user: UserId,
    state: State,
    /// Failed attempts in a row, for the backoff.
    failures: u8,
    /// Index into the servers of the next (or current) connection: the
    /// user's `u % len` at first, one further on after each failure.
    server: u32,
    /// Packets claimed and not yet answered. Claims are answered by the
    /// core that owns the packet, so their answers may overtake or trail
    /// shake answers: they are matched by connection and packet, not by
    /// order. After a close, the few kept ([`CLAIMS_RESENT_MAX`]) wait here
    /// to be sent again after the next login. Unallocated until the first
    /// claim; at most [`CLAIMS_PER_USER_MAX`].
    claims: Vec<PacketId>,
    /// Requests awaiting answers, oldest first: a server answers a
    /// connection's shakes in order. Unallocated until the first shake.
    in_flight: VecDeque<InFlight>,
    /// Bytes that did not fit one turn: a partial answer frame, or output
    /// the socket would not take. Allocated the first time a connection
    /// needs it and then kept: a connection that spilled once under load
    /// tends to again.
    spill: LazyBuffers,
}

impl Conn {
    /// Moves the user on to the next of `servers` servers for its next
    /// attempt; false (staying put) when there is only one.
    fn fail_over(&mut self, servers: usize) -> bool {
        if servers <= 1 {
            return false;
        }
        self.server = ((self.server as usize + 1) % servers) as u32;
        true
    }
}

/// Why a connection is closed.
#[derive(Debug)]
enum Close {
    Eof,
    Io(io::Error),
    Bad(DecodeError),
    Login(String),
}

impl Close {
    fn describe(&self) -> String {
        match self {
            Close::Eof => "closed by the server".to_string(),
            Close::Io(e) => e.to_string(),
            Close::Bad(e) => format!("undecodable frame: {e}"),
            Close::Login(why) => why.clone(),
        }
    }
}

/// The counts and histograms that frames and closes update.
struct Tally {
    /// The second in progress; before shaking starts, the before-start span.
    current: Counters,
    /// The second in progress, by when things happened.
    second: Box<SecondHists>,
    /// The window's requests, by intended time.
    latency: Latency,
    /// Intended send times (ns since start) whose latency is recorded.
    window_ns: Range<u64>,
    /// Requests on the wire over all this thread's connections.
    in_flight: u64,
    lost_in_window: u64,
    lost_outside_window: u64,
    /// Claims awaiting answers over all this thread's connections, those
    /// waiting to be sent again after a reconnect included.
    claims_in_flight: usize,
    /// Claims given up at a close, past [`CLAIMS_RESENT_MAX`]: never
    /// answered.
    claims_dropped: u64,
    ack: Option<AckLog>,
    /// Requests the slot rule gave this thread, by intended run second.
    scheduled: Vec<u64>,
}

impl Tally {
    /// Nothing counted yet; acknowledgements to `ack`, if any; `scheduled`
    /// the per-second plan's slots.
    fn new(ack: Option<AckLog>, scheduled: Vec<u64>) -> Tally {
        Tally {
            current: Counters::default(),
            second: Box::new(SecondHists::new()),
            latency: Latency::new(),
            window_ns: 0..0,
            in_flight: 0,
            lost_in_window: 0,
            lost_outside_window: 0,
            claims_in_flight: 0,
            claims_dropped: 0,
            ack,
            scheduled,
        }
    }

    /// Counts requests that will never be answered. Those of the window also
    /// go into the latency histograms, at the time waited so far (`now_ns`,
    /// a lower bound): left out, they would flatter the tail exactly when the
    /// server is worst.
    fn lose(&mut self, lost: &VecDeque<InFlight>, now_ns: u64) {
        for r in lost {
            if self.window_ns.contains(&r.intended_ns) {
                self.lost_in_window += 1;
                let waited = now_ns.saturating_sub(r.intended_ns);
                self.latency
                    .record(waited, now_ns.saturating_sub(r.sent_ns));
                self.latency.record_no_money(waited);
            } else {
                self.lost_outside_window += 1;
            }
        }
        self.in_flight -= lost.len() as u64;
    }
}

/// A thread's buffer of `--ack-log` lines, written out whole so that the
/// threads' lines never interleave within one (the file is opened for
/// appending, and each `write` of a regular file appends in one piece).
struct AckLog {
    file: Arc<File>,
    buf: Vec<u8>,
}

impl AckLog {
    fn line(&mut self, kind: &str, user: UserId, id: u32, cents: u32) {
        // Writing to a Vec cannot fail.
        let _ = writeln!(self.buf, "{kind} {} {id} {cents}", user.0);
    }

    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= ACK_FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.file).write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// Where the shaking phase ends, in Unix ns (`start_ns`) and run ns.
struct ShakeEnds {
    /// Run second 0, Unix nanoseconds.
    start_ns: u64,
    /// The plan's end: nothing is sent from here.
    end_ns: u64,
    /// The last moment answers are waited for.
    drain_end_ns: u64,
}

/// Walks the slot rule's positions second by second and hands out this
/// thread's users' requests as they fall due.
struct Cursor {
    rule: SlotRule,
    burst: bool,
    /// This thread's user ids.
    users: Range<u64>,
    /// The Unix second of run second 0.
    start_unix: u64,
    /// Run second being walked.
    sec: u64,
    /// Its rate, once the second has begun (read then, not earlier, so
    /// that a `/qps` change lands on a second boundary).
    q: Option<u64>,
    /// Next position of `sec` to look at.
    pos: u64,
    /// Run seconds that send: `0..end`.
    end: u64,
}

impl Cursor {
    /// Calls `send(user, intended_ns)` for every request of this thread due
    /// by `now_ns` (ns since the start), in order; returns when the next
    /// one is due, or None when the plan has no more.
    fn advance(
        &mut self,
        now_ns: u64,
        rate: impl Fn(u64) -> u64,
        mut send: impl FnMut(u64, u64, u64),
    ) -> Option<u64> {
        loop {
            if self.sec >= self.end {
                return None;
            }
            let sec_start = self.sec * NANOS_PER_SEC;
            let q = match self.q {
                Some(q) => q,
                None if now_ns < sec_start => return Some(sec_start),
                None => *self.q.insert(rate(self.sec)),
            };
            let t = self.start_unix + self.sec;
            while self.pos < q {
                let user = self.rule.user_at(t, q, self.pos);
                if self.users.contains(&user) {
                    let due = sec_start + schedule::offset_ns(self.pos, q, self.burst);
                    if due > now_ns {
                        return Some(due);
                    }
                    send(user, due, self.sec);
                }
                self.pos += 1;
            }
            self.sec += 1;
            self.q = None;
            self.pos = 0;
        }
    }
}

struct Worker {
    cfg: WorkerConfig,
    poll: Poll,
    events: Events,
    control: Receiver<Control>,
    to_main: Sender<ToMain>,
    conns: Vec<Conn>,
    read_buf: Box<[u8]>,
    write_buf: Vec<u8>,
    tally: Tally,
    before_start: Counters,
    per_second: Vec<Counters>,
    /// Run second 0's Unix time in ns, once told; answers and sends are
    /// stamped in ns since it.
    start_ns: Option<u64>,
    progress: ConnectProgress,
    /// Users logged in now.
    ready: u64,
    /// Connections in Connecting or LoggingIn.
    handshaking: usize,
    first_error: Option<String>,
    last_login: Option<Instant>,
    /// Users waiting to retry: (when, ns since connect start; index).
    retries: BinaryHeap<Reverse<(u64, u32)>>,
    /// Thread CPU time and wall clock at the last published second.
    cpu_mark_ns: u64,
    wall_mark_ns: u64,
}

impl Worker {
    fn new(
        cfg: WorkerConfig,
        poll: Poll,
        control: Receiver<Control>,
        to_main: Sender<ToMain>,
    ) -> Worker {
        let seconds = cfg.plan.end_secs() + cfg.drain_ns / NANOS_PER_SEC + SECONDS_PAST_DRAIN;
        let end_secs = cfg.plan.end_secs() as usize;
        let first = cfg.first_user;
        let servers = cfg.servers.len().max(1) as u64;
        let ack = cfg.ack_log.clone().map(|file| AckLog {
            file,
            buf: Vec::with_capacity(ACK_FLUSH_AT + ACK_LINE_ROOM),
        });
        Worker {
            conns: (0..cfg.users)
                .map(|i| Conn {
                    stream: None,
                    user: UserId(first + i),
                    state: State::Idle,
                    failures: 0,
                    server: (u64::from(first + i) % servers) as u32,
                    claims: Vec::new(),
                    in_flight: VecDeque::new(),
                    spill: LazyBuffers::none(),
                })
                .collect(),
            per_second: Vec::with_capacity(seconds as usize),
            cfg,
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            control,
            to_main,
            read_buf: vec![0; READ_BUF_LEN].into_boxed_slice(),
            write_buf: Vec::with_capacity(WRITE_BUF_LEN),
            tally: Tally::new(ack, vec![0; end_secs]),
            before_start: Counters::default(),
            start_ns: None,
            progress: ConnectProgress::default(),
            ready: 0,
            handshaking: 0,
            first_error: None,
            last_login: None,
            retries: BinaryHeap::new(),
            cpu_mark_ns: 0,
            wall_mark_ns: 0,
        }
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> Stop {
        Stop::Failed(format!("thread {}: {what}: {e}", self.cfg.index))
    }

    /// Polls for events, waiting at most `timeout`. `Interrupted` is a
    /// normal wake-up with no events.
    fn poll_for(&mut self, timeout: Duration) -> Result<(), Stop> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
                Ok(())
            }
            Err(e) => Err(self.failed("poll", e)),
        }
    }

    fn check_control(&self) -> Result<Option<u64>, Stop> {
        match self.control.try_recv() {
            Ok(Control::Go { start_unix_secs }) => Ok(Some(start_unix_secs)),
            Ok(Control::Stop) | Err(TryRecvError::Disconnected) => Err(Stop::Told),
            Err(TryRecvError::Empty) => Ok(None),
        }
    }

    /// Nanoseconds since the connect phase's zero: the retry clock.
    fn connect_clock(&self, now: Instant) -> u64 {
        nanos_since(self.cfg.connect_start, now)
    }

    /// Nanoseconds since run second 0 by the wall clock (0 before it).
    fn run_clock(&self) -> u64 {
        self.start_ns
            .map_or(0, |start| unix_nanos().saturating_sub(start))
    }

    /// Opens every user's connection at the connect pace and logs each in;
    /// returns when all are in, or at the login deadline (the rest keep
    /// retrying while the run goes on).
    fn connect_all(&mut self) -> Result<LoginSummary, Stop> {
        let users = self.conns.len();
        let pace = Share::new(0, 1, self.cfg.connect_rate_per_sec);
        let mut started = 0usize;
        let mut first_connect = None;
        let mut progress_second = 1;
        let mut next_progress = self.cfg.connect_start + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            let clock = self.connect_clock(now);
            let allowed = if self.cfg.connect_rate_per_sec == 0 {
                users
            } else {
                (pace.due_by(clock) as usize).min(users)
            };
            while started < allowed && self.handshaking < HANDSHAKES_IN_FLIGHT_MAX {
                first_connect.get_or_insert(now);
                self.open(started, clock);
                started += 1;
            }
            self.retry_due(clock);
            if self.ready as usize == users || now >= self.cfg.login_deadline {
                return Ok(LoginSummary {
                    progress: self.progress,
                    ready: self.ready,
                    first_error: self.first_error.clone(),
                    first_connect,
                    last_login: self.last_login,
                });
            }
            if now >= next_progress {
                let progress = ToMain::ConnectProgress {
                    thread: self.cfg.index,
                    second: progress_second,
                    progress: self.progress,
                };
                let _ = self.to_main.send(progress);
                progress_second += 1;
                next_progress += Duration::from_secs(1);
            }
            self.check_control()?;
            let mut wake = next_progress.min(self.cfg.login_deadline);
            if self.cfg.connect_rate_per_sec > 0
                && started < users
                && self.handshaking < HANDSHAKES_IN_FLIGHT_MAX
            {
                let due = pace.due_at_ns(started as u64);
                wake = wake.min(self.cfg.connect_start + Duration::from_nanos(due));
            }
            if let Some(&Reverse((due, _))) = self.retries.peek() {
                wake = wake.min(self.cfg.connect_start + Duration::from_nanos(due));
            }
            self.poll_for(wake.saturating_duration_since(now))?;
            self.handle_events();
        }
    }

    /// Keeps the connections (answering what arrives, retrying failures)
    /// until told to start; returns run second 0's Unix time.
    fn hold(&mut self) -> Result<u64, Stop> {
        loop {
            if let Some(start) = self.check_control()? {
                self.before_start = std::mem::take(&mut self.tally.current);
                return Ok(start);
            }
            let now = Instant::now();
            if now >= self.cfg.hard_deadline {
                return Err(Stop::Told);
            }
            self.retry_due(self.connect_clock(now));
            let mut wait = self.cfg.hard_deadline - now;
            if let Some(&Reverse((due, _))) = self.retries.peek() {
                let due = self.cfg.connect_start + Duration::from_nanos(due);
                wait = wait.min(due.saturating_duration_since(now));
            }
            // The coordinator's Go comes with a wake-up.
            self.poll_for(wait)?;
            self.handle_events();
        }
    }

    /// Shakes from Unix second `start_unix` to the plan's end, then waits up
    /// to the drain for the last answers.
    fn shake(&mut self, start_unix: u64) -> Result<(), Stop> {
        let start_ns = start_unix.saturating_mul(NANOS_PER_SEC);
        self.wait_for_start(start_ns)?;
        let (mut cursor, ends) = self.begin_shaking(start_unix, start_ns);
        let plan = self.cfg.plan.clone();
        let rate_override = self.cfg.rate_override.clone();
        let first = u64::from(self.cfg.first_user);
        let mut second = 0;
        let mut next_due = Some(0);
        loop {
            let now_ns = self.run_clock();
            while now_ns >= (second + 1) * NANOS_PER_SEC {
                self.publish_second(second);
                second += 1;
                // Once a second is often enough to notice a stop request,
                // and keeps even the channel's atomics off the request path.
                self.check_control()?;
            }
            // Sends first: what is due leaves the moment the thread wakes,
            // not after a turn's worth of reading (answers lose nothing by
            // waiting: their time is the kernel's stamp).
            if next_due.is_some() {
                // A fresh reading: publishing a second takes time.
                let due_by = self.run_clock();
                next_due = cursor.advance(
                    due_by,
                    |s| rate_for(&plan, &rate_override, s),
                    |user, intended_ns, sec| {
                        self.tally.scheduled[sec as usize] += 1;
                        self.send_shake((user - first) as usize, intended_ns)
                    },
                );
            }
            // What arrived since the last turn: answers (stamped by the
            // kernel), pushes, finished connects, room to write.
            self.poll_for(Duration::ZERO)?;
            self.handle_events();
            self.retry_due(self.connect_clock(Instant::now()));
            self.flush_ack()?;
            let now_ns = self.run_clock();
            if self.shaking_done(next_due, now_ns, &ends) {
                self.publish_second(second);
                return Ok(());
            }
            self.pace(next_due, now_ns, second, &ends);
        }
    }

    /// Until the start, keeps reading and retrying as while holding, then
    /// sleeps to the start itself.
    fn wait_for_start(&mut self, start_ns: u64) -> Result<(), Stop> {
        loop {
            let now = unix_nanos();
            if now >= start_ns {
                return Ok(());
            }
            self.check_control()?;
            self.retry_due(self.connect_clock(Instant::now()));
            let wait = Duration::from_nanos(start_ns - now);
            if wait > READ_TICK {
                self.poll_for(wait - READ_TICK)?;
                self.handle_events();
            } else {
                sleep_until_unix(start_ns);
            }
        }
    }

    /// Marks the start (CPU and wall clocks, the measured window) and makes
    /// the cursor over this thread's users, with the shaking's ends.
    fn begin_shaking(&mut self, start_unix: u64, start_ns: u64) -> (Cursor, ShakeEnds) {
        self.start_ns = Some(start_ns);
        self.cpu_mark_ns = thread_cpu_ns();
        self.wall_mark_ns = start_ns;
        let plan = &self.cfg.plan;
        let window = plan.window();
        self.tally.window_ns = window.start * NANOS_PER_SEC..window.end * NANOS_PER_SEC;
        let end_ns = plan.end_secs() * NANOS_PER_SEC;
        let first = u64::from(self.cfg.first_user);
        let cursor = Cursor {
            rule: self.cfg.rule,
            burst: self.cfg.burst,
            users: first..first + u64::from(self.cfg.users),
            start_unix,
            sec: 0,
            q: None,
            pos: 0,
            end: plan.end_secs(),
        };
        let ends = ShakeEnds {
            start_ns,
            end_ns,
            drain_end_ns: end_ns + self.cfg.drain_ns,
        };
        (cursor, ends)
    }

    /// True when shaking is over: nothing more is due, the plan has ended
    /// and the answers are in (or the drain is over); or the thread's hard
    /// deadline has passed.
    fn shaking_done(&self, next_due: Option<u64>, now_ns: u64, ends: &ShakeEnds) -> bool {
        let drained = (self.tally.in_flight == 0 && self.tally.claims_in_flight == 0)
            || now_ns >= ends.drain_end_ns;
        (next_due.is_none() && now_ns >= ends.end_ns && drained)
            || Instant::now() >= self.cfg.hard_deadline
    }

    /// Sleeps until the next send is due, the second ends, or it is time to
    /// read again, whichever comes first (or not at all, see `--spin`).
    fn pace(&self, next_due: Option<u64>, now_ns: u64, second: u64, ends: &ShakeEnds) {
        let next_ns = next_due
            .unwrap_or(if now_ns < ends.end_ns {
                ends.end_ns
            } else {
                ends.drain_end_ns
            })
            .min((second + 1) * NANOS_PER_SEC)
            .min(now_ns + READ_TICK.as_nanos() as u64);
        let wait = Duration::from_nanos(next_ns.saturating_sub(now_ns));
        // --spin: never sleep while shaking. On a VM a sleeping vCPU can
        // take long to wake for the next send; a dedicated load core
        // that spins measures the server instead.
        if wait.is_zero() || (self.cfg.spin && wait < SPIN_WAIT_MAX) {
            return;
        }
        // What falls due within --send-interval-us leaves together; any
        // lateness is measured (send lag), not hidden: latency counts
        // from each request's intended time.
        let wait = wait.max(self.cfg.send_interval);
        sleep_until_unix(ends.start_ns + now_ns + wait.as_nanos() as u64);
    }

    /// Puts one shake for connection `idx` on the wire (or counts it unsent).
    fn send_shake(&mut self, idx: usize, intended_ns: u64) {
        // Each send's own clock reading (a vDSO call, tens of ns): the sends
        // of one batch leave microseconds apart, and its send lag and
        // service time are measured from when it really left.
        let now_ns = self.run_clock();
        let Worker {
            conns,
            tally,
            write_buf,
            ..
        } = self;
        let conn = &mut conns[idx];
        let lag = now_ns.saturating_sub(intended_ns);
        tally.second.send_lag.saturating_record(lag.max(1));
        if tally.window_ns.contains(&intended_ns) {
            tally.latency.record_send_lag(lag);
        }
        // Open loop, but not unbounded: a server that stops answering would
        // otherwise grow the in-flight record (and the spill) by every
        // request for the rest of the run. Past the cap, and for users not
        // logged in, requests are counted unsent, which the report shows.
        if conn.state != State::Ready || tally.in_flight >= IN_FLIGHT_MAX {
            tally.current.unsent += 1;
            return;
        }
        write_buf.clear();
        Frame::ShakeRequest { user: conn.user }.encode(now_ns / NANOS_PER_SEC, write_buf);
        conn.in_flight.push_back(InFlight {
            intended_ns,
            sent_ns: now_ns,
        });
        tally.current.sent += 1;
        tally.in_flight += 1;
        if let Err(close) = send(conn, write_buf) {
            self.close(idx, close);
        }
    }

    /// Handles the last poll's events.
    fn handle_events(&mut self) {
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            if let Some((idx, readable, writable)) = readiness(event) {
                self.on_event(idx, readable, writable);
            }
        }
        self.events = events;
    }

    /// Handles readiness of connection `idx` in any state; closes it (and
    /// schedules its retry) on any failure.
    fn on_event(&mut self, idx: usize, readable: bool, writable: bool) {
        let was = match self.conns.get(idx) {
            Some(c) if c.stream.is_some() => c.state,
            // A stale event for a connection closed earlier in this batch.
            _ => return,
        };
        let result = self.drive(idx, readable, writable);
        let now = self.conns[idx].state;
        if was == State::Connecting && now != State::Connecting {
            self.progress.connected += 1;
        }
        if was != State::Ready && now == State::Ready {
            self.progress.logged_in += 1;
            self.ready += 1;
            self.handshaking -= 1;
            self.conns[idx].failures = 0;
            self.last_login = Some(Instant::now());
        }
        if let Err(close) = result {
            self.close(idx, close);
        }
    }

    fn drive(&mut self, idx: usize, readable: bool, writable: bool) -> Result<(), Close> {
        let start_ns = self.start_ns;
        let Worker {
            conns,
            tally,
            read_buf,
            write_buf,
            cfg,
            ..
        } = self;
        let conn = &mut conns[idx];
        let Some(stream) = conn.stream.as_ref() else {
            return Ok(());
        };
        if conn.state == State::Connecting {
            // A finished connect shows as writable (or as an error); until
            // then peer_addr fails with NotConnected, and the event was early.
            if let Some(e) = stream.take_error().map_err(Close::Io)? {
                return Err(Close::Io(e));
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(Close::Io(e)),
            }
            conn.state = State::LoggingIn;
            write_buf.clear();
            let now = unix_secs();
            login_frame(cfg.keys.as_ref(), conn.user, now).encode(now, write_buf);
            send(conn, write_buf)?;
        } else if writable && conn.spill.has_pending_out() {
            flush(conn)?;
        }
        if readable {
            let push_answers_shake = cfg.push_answers_shake;
            read_frames(conn, read_buf, |conn, frame, stamp_ns| {
                // Before the start, answers are stamped 0 and fall outside
                // the window anyway.
                let answer_ns = start_ns.map_or(0, |s| stamp_ns.saturating_sub(s));
                on_frame(conn, frame, answer_ns, tally, write_buf, push_answers_shake)
            })?;
        }
        Ok(())
    }

    /// Starts user `idx`'s nonblocking connect to its current server and
    /// registers it; a failure schedules a retry.
    fn open(&mut self, idx: usize, clock: u64) {
        let conn = &self.conns[idx];
        let user = u64::from(conn.user.0);
        let server = self.cfg.servers[conn.server as usize];
        let bind = (!self.cfg.binds.is_empty())
            .then(|| self.cfg.binds[(user % self.cfg.binds.len() as u64) as usize]);
        self.progress.opened += 1;
        let opened = open_socket(server, bind).and_then(|mut stream| {
            self.poll
                .registry()
                .register(
                    &mut stream,
                    Token(idx),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map(|()| stream)
        });
        match opened {
            Ok(stream) => {
                let conn = &mut self.conns[idx];
                conn.stream = Some(stream);
                conn.state = State::Connecting;
                self.handshaking += 1;
            }
            Err(e) => {
                let hint = match e.raw_os_error() {
                    Some(libc::EADDRNOTAVAIL) => {
                        " (out of ephemeral ports: add --bind source addresses)"
                    }
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        " (out of file descriptors: raise ulimit -n)"
                    }
                    _ => "",
                };
                let from = bind.map(|ip| format!(" from {ip}")).unwrap_or_default();
                let why = format!("connect to {server}{from}: {e}{hint}");
                self.note_failure(idx, "connect", &why);
                self.schedule_retry(idx, clock);
            }
        }
    }

    /// Re-opens the users whose backoff has passed.
    fn retry_due(&mut self, clock: u64) {
        while let Some(&Reverse((due, idx))) = self.retries.peek() {
            if due > clock || self.handshaking >= HANDSHAKES_IN_FLIGHT_MAX {
                return;
            }
            self.retries.pop();
            self.open(idx as usize, clock);
        }
    }

    fn note_failure(&mut self, idx: usize, step: &str, why: &str) {
        self.progress.failed += 1;
        self.tally.current.connect_failures += 1;
        let user = self.conns[idx].user;
        self.first_error
            .get_or_insert_with(|| format!("user {user} {step}: {why}"));
    }

    /// Schedules user `idx`'s next attempt after a backoff, at the next
    /// server in the list: a server that closed or refused the user may be
    /// gone, and any node of a cluster serves any user.
    fn schedule_retry(&mut self, idx: usize, clock: u64) {
        let conn = &mut self.conns[idx];
        if conn.fail_over(self.cfg.servers.len()) {
            self.tally.current.failovers += 1;
        }
        let doubling = 1u32 << conn.failures.min(BACKOFF_DOUBLINGS_MAX);
        conn.failures = conn.failures.saturating_add(1);
        let backoff = (BACKOFF_FIRST * doubling).min(BACKOFF_MAX);
        // ±50 % jitter.
        let ns = backoff.as_nanos() as u64;
        let jittered = ns / 2 + fastrand::u64(0..=ns);
        self.retries.push(Reverse((clock + jittered, idx as u32)));
    }

    /// Closes connection `idx`, counting why, losing the shakes it had in
    /// flight and keeping a few of its unanswered claims to send again, and
    /// schedules its retry.
    fn close(&mut self, idx: usize, why: Close) {
        let now_ns = self.run_clock();
        let clock = self.connect_clock(Instant::now());
        let conn = &mut self.conns[idx];
        let was = conn.state;
        // Dropping the stream closes the socket, which also removes it from
        // the epoll set; a stale event for it in this batch is ignored.
        conn.stream = None;
        conn.state = State::Idle;
        conn.spill.clear();
        let lost = std::mem::take(&mut conn.in_flight);
        self.tally.lose(&lost, now_ns);
        keep_claims_to_resend(conn, &mut self.tally);
        match was {
            State::Ready => {
                self.ready -= 1;
                match why {
                    Close::Bad(_) => self.tally.current.bad_frames += 1,
                    _ => self.tally.current.conn_errors += 1,
                }
                let user = self.conns[idx].user;
                self.first_error
                    .get_or_insert_with(|| format!("user {user} lost: {}", why.describe()));
            }
            State::Connecting | State::LoggingIn => {
                self.handshaking -= 1;
                let step = if was == State::Connecting {
                    "connect"
                } else {
                    "login"
                };
                self.note_failure(idx, step, &why.describe());
            }
            State::Idle => return,
        }
        self.schedule_retry(idx, clock);
    }

    fn flush_ack(&mut self) -> Result<(), Stop> {
        if let Some(ack) = &mut self.tally.ack {
            ack.flush_if_full()
                .map_err(|e| Stop::Failed(format!("writing --ack-log: {e}")))?;
        }
        Ok(())
    }

    fn publish_second(&mut self, second: u64) {
        let counters = std::mem::take(&mut self.tally.current);
        self.per_second.push(counters);
        let hists = recycle::swap_out(&mut self.tally.second, &self.cfg.recycle);
        let (cpu, wall) = (thread_cpu_ns(), unix_nanos());
        let cpu_ns = cpu.saturating_sub(self.cpu_mark_ns);
        let wall_ns = wall.saturating_sub(self.wall_mark_ns);
        (self.cpu_mark_ns, self.wall_mark_ns) = (cpu, wall);
        let _ = self.to_main.send(ToMain::Second(Box::new(SecondOut {
            thread: self.cfg.index,
            second,
            qps: rate_for(&self.cfg.plan, &self.cfg.rate_override, second),
            counters,
            hists,
            ready: self.ready,
            cpu_ns,
            wall_ns,
        })));
    }

    /// Counts what never got an answer and hands over the results.
    fn finish(&mut self) -> ThreadResult {
        let now_ns = self.run_clock();
        for conn in &mut self.conns {
            let lost = std::mem::take(&mut conn.in_flight);
            self.tally.lose(&lost, now_ns);
        }
        if let Some(ack) = &mut self.tally.ack {
            // Best effort at the end: a failure here was already reported by
            // an earlier flush, or leaves the file short, which the audit
            // tells.
            let _ = ack.flush();
        }
        ThreadResult {
            thread: self.cfg.index,
            per_second: std::mem::take(&mut self.per_second),
            before_start: self.before_start,
            latency: std::mem::take(&mut self.tally.latency),
            lost_in_window: self.tally.lost_in_window,
            lost_outside_window: self.tally.lost_outside_window,
            claims_lost: self.tally.claims_in_flight as u64 + self.tally.claims_dropped,
            scheduled: std::mem::take(&mut self.tally.scheduled),
        }
    }
}

/// The connection index and readiness of an event, or None for the waker
/// (its message is read by `check_control`).
fn readiness(event: &Event) -> Option<(usize, bool, bool)> {
    let token = event.token();
    if token == WAKER {
        return None;
    }
    // Errors and hang-ups are found by the read or write that follows, which
    // reports the actual cause; treat them as readable so that read runs.
    let readable = event.is_readable() || event.is_read_closed() || event.is_error();
    Some((token.0, readable, event.is_writable()))
}

/// Handles one frame from a server. Returns an error to close the connection.
#[inline]
fn on_frame(
    conn: &mut Conn,
    frame: Frame,
    now_ns: u64,
    tally: &mut Tally,
    write_buf: &mut Vec<u8>,
    push_answers_shake: bool,
) -> Result<(), Close> {
    match conn.state {
        State::LoggingIn => {
            on_login_answer(conn, frame)?;
            resend_claims(conn, tally, write_buf)
        }
        State::Ready => {
            let answers_shake = match frame {
                Frame::ShakeResponse {
                    result,
                    envelope,
                    amount,
                    ..
                } => {
                    count_shake_answer(tally, conn.user, result, envelope, amount);
                    true
                }
                Frame::PacketPush { packet, .. } => {
                    tally.current.pushes += 1;
                    claim(conn, packet, tally, write_buf)?;
                    push_answers_shake
                }
                Frame::ClaimResponse { packet, amount } => {
                    count_claim_answer(tally, conn, packet, amount);
                    return Ok(());
                }
                _ => false,
            };
            let request = if answers_shake {
                conn.in_flight.pop_front()
            } else {
                None
            };
            match request {
                Some(request) => record_answer(tally, &request, &frame, now_ns),
                // Not an answer, or an answer to nothing we sent.
                None if !matches!(frame, Frame::PacketPush { .. }) => {
                    tally.current.unexpected_frames += 1;
                }
                None => {}
            }
            Ok(())
        }
        // No frame can arrive before the connect finishes or after close.
        State::Connecting | State::Idle => Ok(()),
    }
}

/// A login for `user`: signed with the newest key when there are keys (once
/// per connect, never per request), v1's otherwise.
fn login_frame(keys: Option<&Keyring>, user: UserId, now: u64) -> Frame {
    let signed = keys.and_then(|k| {
        let expiry = now.saturating_add(LOGIN_TOKEN_TTL_SECS);
        k.sign(k.newest(), user, expiry)
    });
    match signed {
        Some(token) => Frame::SignedLogin { token },
        None => Frame::LoginRequest { user },
    }
}

/// The answer to a connection's login: ready to shake, or closed.
fn on_login_answer(conn: &mut Conn, frame: Frame) -> Result<(), Close> {
    match frame {
        Frame::LoginResponse { result: 0, .. } => {
            conn.state = State::Ready;
            Ok(())
        }
        Frame::LoginResponse { result, .. } => {
            Err(Close::Login(format!("login refused with result {result}")))
        }
        other => Err(Close::Login(format!(
            "expected LoginResponse, got cmd {}",
            other.cmd()
        ))),
    }
}

/// Counts a shake's answer by its result (and logs a grant to the ack log).
#[inline]
fn count_shake_answer(
    tally: &mut Tally,
    user: UserId,
    result: ShakeOutcome,
    envelope: EnvelopeId,
    amount: Cents,
) {
    let counters = &mut tally.current;
    match result {
        ShakeOutcome::GOT => {
            counters.got += 1;
            counters.got_cents += u64::from(amount.wire());
            if let Some(ack) = &mut tally.ack {
                ack.line("grant", user, envelope.0, amount.wire());
            }
        }
        ShakeOutcome::NONE => counters.none += 1,
        ShakeOutcome::GONE => counters.gone += 1,
        ShakeOutcome::OVERLOAD => counters.overload += 1,
        _ => counters.other_results += 1,
    }
}

/// Counts a claim's answer against the claim `conn` sent (and logs it to
/// the ack log); an answer to no claim of its is unexpected.
fn count_claim_answer(tally: &mut Tally, conn: &mut Conn, packet: PacketId, amount: Cents) {
    let pending = conn.claims.iter().position(|&p| p == packet);
    let counters = &mut tally.current;
    match pending {
        Some(at) => {
            conn.claims.swap_remove(at);
            tally.claims_in_flight -= 1;
            counters.claim_answers += 1;
            counters.claim_cents += u64::from(amount.wire());
            if let Some(ack) = &mut tally.ack {
                ack.line("claim", conn.user, packet.0, amount.wire());
            }
        }
        None => counters.unexpected_frames += 1,
    }
}

/// Records the latency of `frame`, the answer to `request` received at
/// `now_ns`: always in the second's corrected histogram, and in the
/// window's when the request was meant to leave within the window.
#[inline]
fn record_answer(tally: &mut Tally, request: &InFlight, frame: &Frame, now_ns: u64) {
    tally.current.answered += 1;
    tally.in_flight -= 1;
    let corrected = now_ns.saturating_sub(request.intended_ns);
    tally.second.corrected.saturating_record(corrected.max(1));
    if tally.window_ns.contains(&request.intended_ns) {
        tally
            .latency
            .record(corrected, now_ns.saturating_sub(request.sent_ns));
        let moved_money = matches!(
            frame,
            Frame::ShakeResponse {
                result: ShakeOutcome::GOT,
                ..
            }
        );
        if !moved_money {
            tally.latency.record_no_money(corrected);
        }
    }
}

/// Claims a pushed packet on the connection it was pushed to, unless the
/// user's claim of it still awaits its answer (a push can come twice: a
/// cluster delivers from the user's mailbox at login as well as live).
fn claim(
    conn: &mut Conn,
    packet: PacketId,
    tally: &mut Tally,
    write_buf: &mut Vec<u8>,
) -> Result<(), Close> {
    if conn.claims.contains(&packet) {
        return Ok(());
    }
    if tally.claims_in_flight >= CLAIMS_IN_FLIGHT_MAX || conn.claims.len() >= CLAIMS_PER_USER_MAX {
        tally.current.unsent += 1;
        return Ok(());
    }
    write_buf.clear();
    Frame::ClaimRequest {
        user: conn.user,
        packet,
    }
    .encode(unix_secs(), write_buf);
    conn.claims.push(packet);
    tally.claims_in_flight += 1;
    tally.current.claims += 1;
    send(conn, write_buf)
}

/// At a close, keeps [`CLAIMS_RESENT_MAX`] of the connection's unanswered
/// claims to send again after its next login, and gives up the rest.
fn keep_claims_to_resend(conn: &mut Conn, tally: &mut Tally) {
    let kept = conn.claims.len().min(CLAIMS_RESENT_MAX);
    let dropped = conn.claims.len() - kept;
    conn.claims.truncate(kept);
    tally.claims_in_flight -= dropped;
    tally.claims_dropped += dropped as u64;
}

/// Sends again, on a connection just logged in, the claims its previous
/// connection left unanswered (at most [`CLAIMS_RESENT_MAX`], kept by
/// `close`): a cluster answers a repeat with what it paid the first time,
/// and a claim that never arrived is decided now.
fn resend_claims(conn: &mut Conn, tally: &mut Tally, write_buf: &mut Vec<u8>) -> Result<(), Close> {
    if conn.claims.is_empty() {
        return Ok(());
    }
    write_buf.clear();
    let now = unix_secs();
    for &packet in &conn.claims {
        Frame::ClaimRequest {
            user: conn.user,
            packet,
        }
        .encode(now, write_buf);
    }
    tally.current.claims_resent += conn.claims.len() as u64;
    send(conn, write_buf)
}

/// Reads what the socket holds and hands every complete frame to `on_frame`
/// with its receive time (Unix ns), keeping a trailing partial frame for the
/// next edge.
fn read_frames(
    conn: &mut Conn,
    buf: &mut [u8],
    mut on_frame: impl FnMut(&mut Conn, Frame, u64) -> Result<(), Close>,
) -> Result<(), Close> {
    let mut carry = Carry::take(buf, &mut conn.spill);
    loop {
        let Some(stream) = conn.stream.as_ref() else {
            carry.keep_rest(&mut conn.spill);
            return Ok(());
        };
        let room = carry.room().len();
        let (n, stamp) = match recv_stamped(stream.as_raw_fd(), carry.room()) {
            Ok((0, _)) => return Err(Close::Eof),
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                carry.keep_rest(&mut conn.spill);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Close::Io(e)),
        };
        // The kernel's receive stamp; without one (timestamps unavailable),
        // the time of the read, which can only be later.
        let at = stamp.unwrap_or_else(unix_nanos);
        carry.filled(n);
        match carry.decode(|frame| on_frame(conn, frame, at)).stop {
            None => {}
            Some(FrameStop::Refused(e)) => return Err(Close::Bad(e)),
            Some(FrameStop::Handler(close)) => return Err(close),
        }
        // Linux raises a new edge for every arrival on a TCP socket, so a read
        // that did not fill the buffer has drained it for now. A full buffer
        // may mean more is waiting: read again.
        if n < room {
            carry.keep_rest(&mut conn.spill);
            return Ok(());
        }
    }
}

/// `recvmsg` into `buf`, returning the byte count and the kernel's receive
/// timestamp (`SO_TIMESTAMPNS`, Unix ns) of the last segment read, if any.
fn recv_stamped(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iov, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // The system call itself, not glibc's `recvmsg`: the wrapper is a
    // pthread cancellation point, and entering and leaving that (atomics on
    // the thread's cancel state) cost ~2 % of the flooder's CPU at 60k/s.
    // Nothing here uses pthread cancellation.
    // SAFETY: `msg` points to one iovec over `buf` and to `control`, both
    // live and writable for the call, with their true lengths.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvmsg,
            fd,
            &mut msg as *mut libc::msghdr,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // within msg_controllen; the timespec is read unaligned-safe.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                stamp = Some(ts.tv_sec as u64 * NANOS_PER_SEC + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// Writes `bytes` with one `write`; what the socket does not take waits in
/// the connection's spill for the next WRITABLE edge.
fn send(conn: &mut Conn, bytes: &[u8]) -> Result<(), Close> {
    let Some(stream) = conn.stream.as_mut() else {
        return Ok(());
    };
    // A short write means the send buffer is full; another write now would
    // only return WouldBlock. The spill is never over its cap (see
    // SPILL_RULE), so what `send` says of it needs no answer here.
    conn.spill
        .send(bytes, SPILL_RULE, |b| send_raw(stream, b))
        .map_err(Close::Io)?;
    Ok(())
}

/// One `sendto` system call on `stream` (nonblocking, no SIGPIPE), without
/// glibc's cancellation-point wrapper (see [`recv_stamped`]).
fn send_raw(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the fd is open for the call's duration (borrowed from
    // `stream`); the pointer and length describe `bytes`, readable; no
    // destination address is passed.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            stream.as_raw_fd(),
            bytes.as_ptr(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Writes as much pending output as the socket takes.
fn flush(conn: &mut Conn) -> Result<(), Close> {
    let Some(stream) = conn.stream.as_mut() else {
        return Ok(());
    };
    conn.spill
        .flush(|b| send_raw(stream, b))
        .map_err(Close::Io)?;
    Ok(())
}

/// Opens a nonblocking TCP socket with `TCP_NODELAY` (requests are small and
/// must not wait for Nagle) and receive timestamps, optionally bound to a
/// source address, and starts the connect.
fn open_socket(server: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    let on: libc::c_int = 1;
    let set = |level, name| {
        // SAFETY: the fd is a valid open socket owned by `socket`; the option
        // value points to a c_int that lives across the call, with its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    // Best effort: without it answers are stamped when read, a little later.
    let _ = set(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS);
    if let Some(ip) = bind {
        // Without IP_BIND_ADDRESS_NO_PORT, bind() would pick the source port
        // at once, from one pool shared by every destination; with it the
        // port is chosen at connect() by the full 4-tuple, so each source
        // address gives its own ~28k ports per server address. Best effort:
        // an old kernel without it only makes ports scarcer.
        let _ = set(libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT);
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Asks the kernel to end this thread's sleeps without the default 50 µs
/// slack, which would otherwise add to every send's lateness.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0);
    }
}

/// Sleeps until the wall clock reads `unix_ns` (returns early on a signal;
/// the caller's loop re-reads the clock).
fn sleep_until_unix(unix_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (unix_ns / NANOS_PER_SEC) as libc::time_t,
        tv_nsec: (unix_ns % NANOS_PER_SEC) as libc::c_long,
    };
    // SAFETY: `ts` is a valid absolute time; a null remainder is allowed
    // with TIMER_ABSTIME.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_REALTIME,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        );
    }
}

/// CPU time this thread has used, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: CLOCK_THREAD_CPUTIME_ID is valid; `ts` is a valid out pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * NANOS_PER_SEC + ts.tv_nsec as u64
}

/// Nanoseconds from `start` to `now`, 0 when `now` is earlier.
fn nanos_since(start: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(start).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::schedule::Phase;

    #[test]
    fn cursor_sends_each_owned_position_once_at_its_time() {
        let rule = SlotRule::new(100);
        let mut c = Cursor {
            rule,
            burst: false,
            users: 10..60,
            start_unix: 1_000,
            sec: 0,
            q: None,
            pos: 0,
            end: 2,
        };
        let mut sent = Vec::new();
        let mut now = 0;
        while let Some(next) = c.advance(now, |_| 40, |u, due, s| sent.push((u, due, s))) {
            assert!(next >= now);
            now = next;
        }
        for s in 0..2 {
            let mine: Vec<u64> = (0..40)
                .map(|p| rule.user_at(1_000 + s, 40, p))
                .filter(|u| (10..60).contains(u))
                .collect();
            let got: Vec<u64> = sent.iter().filter(|x| x.2 == s).map(|x| x.0).collect();
            assert_eq!(got, mine, "second {s}");
        }
        for w in sent.windows(2) {
            assert!(w[0].1 <= w[1].1, "in time order");
        }
        // Position p of 40 is due p × 25 ms into its second.
        let (u, due, _) = sent[0];
        let p = (0..40).find(|&p| rule.user_at(1_000, 40, p) == u).unwrap();
        assert_eq!(due, p * 25_000_000);
    }

    #[test]
    fn cursor_reads_a_seconds_rate_only_when_it_begins() {
        let mut c = Cursor {
            rule: SlotRule::new(10),
            burst: true,
            users: 0..10,
            start_unix: 0,
            sec: 0,
            q: None,
            pos: 0,
            end: 3,
        };
        let asked = std::cell::RefCell::new(Vec::new());
        let rate = |s: u64| {
            asked.borrow_mut().push(s);
            5
        };
        let mut n = 0;
        let next = c.advance(0, rate, |_, _, _| n += 1);
        assert_eq!(n, 5, "burst: all of second 0 at once");
        assert_eq!(next, Some(NANOS_PER_SEC));
        assert_eq!(*asked.borrow(), [0], "second 1 not begun");
    }

    /// A logged-in user with no socket (sends go nowhere; what a step
    /// wrote is left in the write buffer) and an empty tally.
    fn ready_user(user: u32) -> (Conn, Tally) {
        let conn = Conn {
            stream: None,
            user: UserId(user),
            state: State::Ready,
            failures: 0,
            server: 0,
            claims: Vec::new(),
            in_flight: VecDeque::new(),
            spill: LazyBuffers::none(),
        };
        let tally = Tally::new(None, Vec::new());
        (conn, tally)
    }

    fn push(packet: u32, user: u32) -> Frame {
        Frame::PacketPush {
            packet: PacketId(packet),
            amount: Cents(300),
            claimants: 1,
            users: [UserId(user), UserId(0), UserId(0)],
        }
    }

    /// The claims encoded in `buf`, in order.
    fn claims_in(mut buf: &[u8]) -> Vec<u32> {
        let mut packets = Vec::new();
        while !buf.is_empty() {
            let d = crate::wire::decode(buf).expect("whole frames");
            match d.frame {
                Frame::ClaimRequest { packet, .. } => packets.push(packet.0),
                other => panic!("not a claim: {other:?}"),
            }
            buf = &buf[d.len..];
        }
        packets
    }

    #[test]
    fn a_repeated_push_is_claimed_once_while_its_claim_is_unanswered() {
        let (mut conn, mut tally) = ready_user(7);
        let mut out = Vec::new();
        for _ in 0..2 {
            on_frame(&mut conn, push(40, 7), 0, &mut tally, &mut out, false).unwrap();
        }
        assert_eq!(tally.current.pushes, 2);
        assert_eq!(tally.current.claims, 1, "the repeat is not claimed again");
        assert_eq!(tally.claims_in_flight, 1);
        let answer = Frame::ClaimResponse {
            packet: PacketId(40),
            amount: Cents(120),
        };
        on_frame(&mut conn, answer, 0, &mut tally, &mut out, false).unwrap();
        assert_eq!(tally.current.claim_answers, 1);
        assert_eq!(tally.current.claim_cents, 120);
        assert_eq!(tally.claims_in_flight, 0);
        assert!(conn.claims.is_empty());
        // Answered, the packet may be claimed again (the server answers a
        // repeat as it does); a second answer to it is unexpected.
        on_frame(&mut conn, push(40, 7), 0, &mut tally, &mut out, false).unwrap();
        assert_eq!(tally.current.claims, 2);
        on_frame(&mut conn, answer, 0, &mut tally, &mut out, false).unwrap();
        on_frame(&mut conn, answer, 0, &mut tally, &mut out, false).unwrap();
        assert_eq!(tally.current.claim_answers, 2);
        assert_eq!(tally.current.unexpected_frames, 1);
    }

    #[test]
    fn a_users_claims_past_its_cap_are_unsent() {
        let (mut conn, mut tally) = ready_user(1);
        let mut out = Vec::new();
        let over = CLAIMS_PER_USER_MAX as u32 + 3;
        for p in 0..over {
            on_frame(&mut conn, push(100 + p, 1), 0, &mut tally, &mut out, false).unwrap();
        }
        assert_eq!(tally.current.claims, CLAIMS_PER_USER_MAX as u64);
        assert_eq!(tally.current.unsent, 3);
        assert_eq!(tally.claims_in_flight, CLAIMS_PER_USER_MAX);
    }

    #[test]
    fn a_close_keeps_a_few_claims_and_sends_them_again_after_the_next_login() {
        let (mut conn, mut tally) = ready_user(3);
        let mut out = Vec::new();
        let packets: Vec<u32> = (0..CLAIMS_RESENT_MAX as u32 + 2).map(|p| 500 + p).collect();
        for &p in &packets {
            on_frame(&mut conn, push(p, 3), 0, &mut tally, &mut out, false).unwrap();
        }
        // One is answered before the close: it is not sent again.
        let answered = Frame::ClaimResponse {
            packet: PacketId(packets[0]),
            amount: Cents(10),
        };
        on_frame(&mut conn, answered, 0, &mut tally, &mut out, false).unwrap();
        let open = packets.len() - 1;
        assert_eq!(tally.claims_in_flight, open);

        keep_claims_to_resend(&mut conn, &mut tally);
        assert_eq!(conn.claims.len(), CLAIMS_RESENT_MAX);
        assert_eq!(tally.claims_dropped, (open - CLAIMS_RESENT_MAX) as u64);
        assert_eq!(tally.claims_in_flight, CLAIMS_RESENT_MAX);
        let kept: Vec<u32> = conn.claims.iter().map(|p| p.0).collect();
        assert!(!kept.contains(&packets[0]), "{kept:?}");

        // The next connection's login answer sends them, before any frame
        // that follows it is handled.
        conn.state = State::LoggingIn;
        let login = Frame::LoginResponse {
            user: UserId(3),
            result: 0,
        };
        on_frame(&mut conn, login, 0, &mut tally, &mut out, false).unwrap();
        assert_eq!(conn.state, State::Ready);
        assert_eq!(claims_in(&out), kept);
        assert_eq!(tally.current.claims_resent, CLAIMS_RESENT_MAX as u64);
        assert_eq!(tally.current.claims, packets.len() as u64, "resends apart");
        // The new node delivers the user's mailbox: the pushes of packets
        // claimed again are not claimed a third time.
        out.clear();
        for &p in &kept {
            on_frame(&mut conn, push(p, 3), 0, &mut tally, &mut out, false).unwrap();
        }
        assert!(out.is_empty(), "no claim sent: {out:?}");
        for &p in &kept {
            let answer = Frame::ClaimResponse {
                packet: PacketId(p),
                amount: Cents(10),
            };
            on_frame(&mut conn, answer, 0, &mut tally, &mut out, false).unwrap();
        }
        assert_eq!(tally.claims_in_flight, 0);
        assert_eq!(tally.current.claim_answers, 1 + kept.len() as u64);
        assert_eq!(tally.current.unexpected_frames, 0);
    }

    #[test]
    fn a_login_without_claims_left_sends_nothing() {
        let (mut conn, mut tally) = ready_user(3);
        conn.state = State::LoggingIn;
        let mut out = Vec::new();
        let login = Frame::LoginResponse {
            user: UserId(3),
            result: 0,
        };
        on_frame(&mut conn, login, 0, &mut tally, &mut out, false).unwrap();
        assert!(out.is_empty());
        assert_eq!(tally.current.claims_resent, 0);
    }

    #[test]
    fn failover_walks_the_server_list_and_stays_with_one_server() {
        let (mut conn, _) = ready_user(4);
        conn.server = 4 % 3;
        let mut seen = Vec::new();
        for _ in 0..4 {
            assert!(conn.fail_over(3));
            seen.push(conn.server);
        }
        assert_eq!(seen, [2, 0, 1, 2], "u + attempts, mod len");
        conn.server = 0;
        assert!(!conn.fail_over(1));
        assert_eq!(conn.server, 0);
    }

    #[test]
    fn overrides_apply_to_their_step_only() {
        let plan = Plan::new(
            1,
            vec![Phase { qps: 100, secs: 2 }, Phase { qps: 200, secs: 2 }],
        );
        let o = AtomicU64::new(NO_OVERRIDE);
        assert_eq!(rate_for(&plan, &o, 0), 100);
        o.store((1 << 32) | 150, Ordering::Relaxed);
        assert_eq!(rate_for(&plan, &o, 0), 100, "warmup is step 0");
        assert_eq!(rate_for(&plan, &o, 1), 150);
        assert_eq!(rate_for(&plan, &o, 2), 150);
        assert_eq!(rate_for(&plan, &o, 3), 200, "the next step takes over");
        assert_eq!(rate_for(&plan, &o, 5), 0, "past the end");
    }
}
