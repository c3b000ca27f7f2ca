//! One flooder thread: its connections, its mio poll, its share of the schedule.
//!
//! Owns: opening and logging in its users' connections, holding them, then
//! sending its share of the open-loop schedule and matching each answer to
//! the request it answers. Must not: share anything with other threads on the
//! send/receive path (it owns its poll, sockets, buffers, counters and
//! histograms, and talks to the coordinator only by channel, once a second and
//! at phase ends), allocate per request once warmed up, or panic on anything
//! a server sends.
//!
//! Event-loop contract (mio, Linux epoll): every socket is registered once,
//! edge-triggered, for READABLE and WRITABLE, and never re-registered, so no
//! `epoll_ctl` is spent per request. WRITABLE first reports a finished
//! connect, later that a full send buffer has room again; epoll also reports
//! it alongside most read edges, so a writable event with nothing pending is
//! simply ignored. Events can be spurious; `Interrupted` means retry; a read
//! or write that would block ends that socket's turn until its next edge.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::schedule::{self, NANOS_PER_SEC, Share};
use super::stats::{Counters, Latency};
use super::timer::{Timer, tighten_timer_slack};
use crate::ids::UserId;
use crate::wire::{self, DecodeError, Frame, ShakeOutcome};

/// The token of each thread's `mio::Waker`; connections use tokens `0..users`.
pub(crate) const WAKER: Token = Token(usize::MAX);
/// The token of each thread's send timer.
const TIMER: Token = Token(usize::MAX - 1);
/// With `--spin`, waits shorter than this are spun; longer ones (the end of
/// the run, a stalled server) still sleep.
const SPIN_WAIT_MAX: Duration = Duration::from_millis(2);
/// How long past the timer the poll waits anyway, in case the timer is lost.
const TIMER_BACKSTOP: Duration = Duration::from_millis(5);

/// Bytes read per `read` call into the thread's one scratch buffer: a whole
/// burst of answers for many coalesced requests fits, and it is shared by all
/// of the thread's connections, so there is no per-connection read buffer.
const READ_BUF_LEN: usize = 64 * 1024;

/// Connects (and logins) a thread keeps in flight at once. Below the kernel's
/// default accept backlog (somaxconn 4096) even with 8 threads, so an
/// as-fast-as-possible connect burst never overflows the server's listen queue
/// and turns into 1 s SYN retransmits that would fake a slow server.
const HANDSHAKES_IN_FLIGHT_MAX: usize = 512;

/// Requests a thread keeps awaiting answers, at most: ~32 MiB of records,
/// 8 s of 120k/s against a server that has stopped answering.
const IN_FLIGHT_MAX: u64 = 1 << 20;

/// mio events taken per poll. More only means fewer polls under a burst.
const EVENTS_CAPACITY: usize = 1024;

/// What a thread is told by the coordinator.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Control {
    /// Start shaking; the schedule's time zero is this instant.
    Go(Instant),
    /// Give up now (another thread failed, or the connect phase did).
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
    /// The connect phase ended, complete or not.
    LoggedIn {
        thread: usize,
        summary: LoginSummary,
    },
    /// One second of the shaking phase has ended: its counts.
    Second { second: u64, counters: Counters },
    /// The thread finished its run.
    Done(Box<ThreadResult>),
    /// The thread cannot go on (its poll failed); the run must stop.
    Failed { thread: usize, error: String },
}

/// Connect-phase counts of one thread, cumulative.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConnectProgress {
    /// Sockets opened (connect started), failed ones included.
    pub opened: u64,
    /// TCP connections established.
    pub connected: u64,
    /// Users that got LoginResponse result 0.
    pub logged_in: u64,
    /// Users that failed: socket, connect, login rejected, or lost.
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
    /// The first failure, with the user and step it happened at.
    pub first_error: Option<String>,
    /// When the first connect was started.
    pub first_connect: Option<Instant>,
    /// When the last LoginResponse arrived.
    pub last_login: Option<Instant>,
    /// The login deadline passed before every user logged in or failed.
    pub timed_out: bool,
}

/// Everything a thread measured, handed over once at the end.
#[derive(Debug)]
pub(crate) struct ThreadResult {
    /// The thread's index.
    pub thread: usize,
    /// Counts per second of the shaking phase (index = second since start).
    pub per_second: Vec<Counters>,
    /// Counts between login and the start of shaking (drops, stray frames).
    pub before_start: Counters,
    /// Latency of requests intended inside the measurement window.
    pub latency: Latency,
    /// Requests intended inside the window that never got an answer
    /// (connection lost, or still unanswered when the drain ended).
    pub lost_in_window: u64,
    /// The same for requests intended in the warmup.
    pub lost_outside_window: u64,
}

/// The run parameters a thread needs; its share is given by `index` of
/// `threads`.
#[derive(Clone, Debug)]
pub(crate) struct WorkerConfig {
    pub index: usize,
    pub threads: usize,
    pub server: SocketAddr,
    /// Source addresses, round-robin by the user's global index; empty means
    /// let the kernel choose.
    pub binds: Arc<[IpAddr]>,
    /// This thread's first user id.
    pub first_user: u32,
    /// How many consecutive user ids from `first_user`.
    pub users: u32,
    /// The global index of this thread's first user (for the bind round-robin).
    pub global_offset: u64,
    /// Total shakes per second over all threads.
    pub rate_per_sec: u64,
    /// Total connects per second over all threads; 0 = as fast as possible.
    pub connect_rate_per_sec: u64,
    pub warmup_ns: u64,
    pub window_ns: u64,
    /// How long to wait for answers after the last request.
    pub drain_ns: u64,
    /// The schedule's zero for connects.
    pub connect_start: Instant,
    pub login_deadline: Instant,
    /// No phase of this thread goes past this.
    pub hard_deadline: Instant,
    /// Shortest wait between two sends (`--send-interval-us`).
    pub send_interval: Duration,
    /// Poll without sleeping while shaking (`--spin`).
    pub spin: bool,
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
    let timer = match Timer::new(poll.registry(), TIMER) {
        Ok(t) => t,
        Err(e) => {
            let error = format!("thread {thread}: creating the send timer: {e}");
            let _ = to_main.send(ToMain::Failed { thread, error });
            return;
        }
    };
    let mut worker = Worker::new(cfg, poll, control, to_main.clone(), timer);
    let outcome = (|| -> Result<(), Stop> {
        let summary = worker.connect_all()?;
        // A send fails only when the coordinator has already given up. An
        // incomplete phase is the coordinator's to judge: hold until told.
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
    /// The thread's own machinery failed (not a connection: those are counted).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nonblocking connect started; waiting for WRITABLE.
    Connecting,
    /// LoginRequest sent; waiting for LoginResponse.
    LoggingIn,
    /// Logged in: shakes go out, answers come back.
    Ready,
    /// Gone; the slot stays so connection indices never shift.
    Closed,
}

/// A request on the wire, waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// When the schedule wanted it sent, ns since the shaking start.
    intended_ns: u64,
    /// When it was handed to the socket, ns since the shaking start.
    sent_ns: u64,
}

/// Bytes that did not fit one turn: a partial answer frame, or output the
/// socket would not take. Allocated the first time a connection needs it and
/// then kept, trading some idle memory for no allocation per request: a
/// connection that spilled once under load tends to spill again.
struct Spill {
    partial: [u8; wire::FRAME_LEN_MAX],
    partial_len: usize,
    out: Vec<u8>,
}

struct Conn {
    stream: Option<TcpStream>,
    user: UserId,
    state: State,
    /// Requests awaiting answers, oldest first: a server answers a
    /// connection's requests in order. Empty and unallocated until the first
    /// shake, so an idle connection costs no heap here; it then grows to the
    /// working depth during warmup and stays there.
    in_flight: VecDeque<InFlight>,
    spill: Option<Box<Spill>>,
}

impl Conn {
    fn closed(user: UserId) -> Conn {
        Conn {
            stream: None,
            user,
            state: State::Closed,
            in_flight: VecDeque::new(),
            spill: None,
        }
    }

    fn spill(&mut self) -> &mut Spill {
        self.spill.get_or_insert_with(|| {
            Box::new(Spill {
                partial: [0; wire::FRAME_LEN_MAX],
                partial_len: 0,
                out: Vec::new(),
            })
        })
    }

    /// Copies a kept partial frame to the front of `buf`; returns its length.
    fn copy_partial_to(&self, buf: &mut [u8]) -> usize {
        match &self.spill {
            Some(s) if s.partial_len > 0 => {
                buf[..s.partial_len].copy_from_slice(&s.partial[..s.partial_len]);
                s.partial_len
            }
            _ => 0,
        }
    }

    /// Keeps `rest`, the start of a frame not yet complete (shorter than the
    /// longest frame, since the decoder accepts no longer one).
    fn keep_partial(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            if let Some(s) = &mut self.spill {
                s.partial_len = 0;
            }
            return;
        }
        let s = self.spill();
        s.partial[..rest.len()].copy_from_slice(rest);
        s.partial_len = rest.len();
    }

    fn has_pending_out(&self) -> bool {
        self.spill.as_ref().is_some_and(|s| !s.out.is_empty())
    }
}

/// Why a connection is closed.
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
    latency: Latency,
    /// Intended send times (ns since start) whose latency is recorded.
    window_ns: Range<u64>,
    /// Requests on the wire over all this thread's connections.
    in_flight: u64,
    lost_in_window: u64,
    lost_outside_window: u64,
}

impl Tally {
    /// Counts requests that will never be answered. Those of the window also
    /// go into the latency histograms, at the time waited so far (`now_ns`,
    /// a lower bound): left out, they would flatter the tail exactly when the
    /// server is worst.
    fn lose(&mut self, lost: &VecDeque<InFlight>, now_ns: u64) {
        for r in lost {
            if self.window_ns.contains(&r.intended_ns) {
                self.lost_in_window += 1;
                self.latency.record(
                    now_ns.saturating_sub(r.intended_ns),
                    now_ns.saturating_sub(r.sent_ns),
                );
            } else {
                self.lost_outside_window += 1;
            }
        }
        self.in_flight -= lost.len() as u64;
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
    timer: Timer,
    /// The shaking schedule's time zero, once told; answers are stamped in
    /// nanoseconds since it.
    shake_start: Option<Instant>,
}

impl Worker {
    fn new(
        cfg: WorkerConfig,
        poll: Poll,
        control: Receiver<Control>,
        to_main: Sender<ToMain>,
        timer: Timer,
    ) -> Worker {
        let seconds = (cfg.warmup_ns + cfg.window_ns + cfg.drain_ns) / NANOS_PER_SEC + 2;
        Worker {
            conns: Vec::with_capacity(cfg.users as usize),
            per_second: Vec::with_capacity(seconds as usize),
            cfg,
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            control,
            to_main,
            read_buf: vec![0; READ_BUF_LEN].into_boxed_slice(),
            // Room for a burst of coalesced shakes; grows once if a stalled
            // server lets more fall due for one connection.
            write_buf: Vec::with_capacity(64 * 16),
            tally: Tally {
                current: Counters::default(),
                latency: Latency::new(),
                window_ns: 0..0,
                in_flight: 0,
                lost_in_window: 0,
                lost_outside_window: 0,
            },
            before_start: Counters::default(),
            timer,
            shake_start: None,
        }
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
            Err(e) => Err(Stop::Failed(format!(
                "thread {}: poll: {e}",
                self.cfg.index
            ))),
        }
    }

    fn check_control(&self) -> Result<Option<Instant>, Stop> {
        match self.control.try_recv() {
            Ok(Control::Go(start)) => Ok(Some(start)),
            Ok(Control::Stop) | Err(TryRecvError::Disconnected) => Err(Stop::Told),
            Err(TryRecvError::Empty) => Ok(None),
        }
    }

    /// Opens every user's connection at the connect pace, logs each in, and
    /// returns when all have logged in or failed, or at the login deadline.
    fn connect_all(&mut self) -> Result<LoginSummary, Stop> {
        let users = self.cfg.users as usize;
        let pace = Share::new(
            self.cfg.index,
            self.cfg.threads,
            self.cfg.connect_rate_per_sec,
        );
        let mut p = ConnectProgress::default();
        let mut first_error: Option<String> = None;
        let mut first_connect = None;
        let mut last_login = None;
        let mut progress_second = 1;
        let mut next_progress = self.cfg.connect_start + Duration::from_secs(1);
        loop {
            let now = Instant::now();
            let elapsed_ns = nanos_since(self.cfg.connect_start, now);
            let allowed = if self.cfg.connect_rate_per_sec == 0 {
                users
            } else {
                (pace.due_by(elapsed_ns) as usize).min(users)
            };
            while self.conns.len() < allowed && self.handshakes(&p) < HANDSHAKES_IN_FLIGHT_MAX {
                first_connect.get_or_insert(now);
                let i = self.conns.len();
                p.opened += 1;
                if let Err(e) = self.open(i) {
                    p.failed += 1;
                    first_error.get_or_insert(e);
                }
            }
            let settled = (p.logged_in + p.failed) as usize;
            if settled == users || now >= self.cfg.login_deadline {
                return Ok(LoginSummary {
                    progress: p,
                    first_error,
                    first_connect,
                    last_login,
                    timed_out: settled < users,
                });
            }
            if now >= next_progress {
                let progress = ToMain::ConnectProgress {
                    thread: self.cfg.index,
                    second: progress_second,
                    progress: p,
                };
                let _ = self.to_main.send(progress);
                progress_second += 1;
                next_progress += Duration::from_secs(1);
            }
            self.check_control()?;
            let mut wake = next_progress.min(self.cfg.login_deadline);
            if self.cfg.connect_rate_per_sec > 0
                && self.conns.len() < users
                && self.handshakes(&p) < HANDSHAKES_IN_FLIGHT_MAX
            {
                let due = pace.due_at_ns(self.conns.len() as u64);
                wake = wake.min(self.cfg.connect_start + Duration::from_nanos(due));
            }
            self.poll_for(wake.saturating_duration_since(now))?;
            let now = Instant::now();
            let events = self.take_events();
            for event in events.iter() {
                let Some((idx, readable, writable)) = readiness(event) else {
                    continue;
                };
                let was = self.conns[idx].state;
                match self.on_event(idx, readable, writable, 0) {
                    Ok(()) => {}
                    Err(close) => {
                        if was != State::Ready && self.conns[idx].state == State::Ready {
                            // Logged in and lost in the same event: count the
                            // login here; the lost-after-login accounting
                            // below moves it to failed, once.
                            p.logged_in += 1;
                            if was == State::Connecting {
                                p.connected += 1;
                            }
                        } else if was != State::Ready {
                            // Failed before login: this user is lost to the run.
                            p.failed += 1;
                            let user = self.conns[idx].user;
                            first_error.get_or_insert_with(|| {
                                let step = if was == State::Connecting {
                                    "connect"
                                } else {
                                    "login"
                                };
                                format!("user {user} {step}: {}", close.describe())
                            });
                        }
                        self.close(idx, close);
                        continue;
                    }
                }
                let state = self.conns[idx].state;
                if was == State::Connecting && state != State::Connecting {
                    p.connected += 1;
                }
                if was != State::Ready && state == State::Ready {
                    p.logged_in += 1;
                    last_login = Some(now);
                }
            }
            self.events = events;
            // A user that logged in and then lost its connection is no longer
            // logged in; the run needs every user, so it counts as failed.
            let lost = self.tally.current.conn_errors + self.tally.current.bad_frames;
            if lost > 0 {
                p.logged_in -= lost;
                p.failed += lost;
                first_error.get_or_insert_with(|| {
                    "a logged-in connection was lost during the connect phase".into()
                });
                self.tally.current.conn_errors = 0;
                self.tally.current.bad_frames = 0;
            }
        }
    }

    fn handshakes(&self, p: &ConnectProgress) -> usize {
        self.conns.len() - (p.logged_in + p.failed) as usize
    }

    /// Moves the last poll's events out, so they can be walked while the
    /// connections are mutated; put them back after. `Events::with_capacity(0)`
    /// does not allocate.
    fn take_events(&mut self) -> Events {
        std::mem::replace(&mut self.events, Events::with_capacity(0))
    }

    /// Starts user `i`'s nonblocking connect and registers it. On failure the
    /// slot is still filled (closed) so indices stay aligned with users.
    fn open(&mut self, i: usize) -> Result<(), String> {
        let user = UserId(self.cfg.first_user + i as u32);
        let bind = if self.cfg.binds.is_empty() {
            None
        } else {
            let at = (self.cfg.global_offset + i as u64) % self.cfg.binds.len() as u64;
            Some(self.cfg.binds[at as usize])
        };
        let opened = open_socket(self.cfg.server, bind).and_then(|mut stream| {
            self.poll
                .registry()
                .register(
                    &mut stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map(|()| stream)
        });
        match opened {
            Ok(stream) => {
                self.conns.push(Conn {
                    stream: Some(stream),
                    ..Conn::closed(user)
                });
                self.conns[i].state = State::Connecting;
                Ok(())
            }
            Err(e) => {
                self.conns.push(Conn::closed(user));
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
                Err(format!(
                    "user {user} connect to {}{from}: {e}{hint}",
                    self.cfg.server
                ))
            }
        }
    }

    /// Handles readiness of connection `idx` in any state. `now_ns` is the
    /// answer time for latency (ns since the shaking start).
    fn on_event(
        &mut self,
        idx: usize,
        readable: bool,
        writable: bool,
        now_ns: u64,
    ) -> Result<(), Close> {
        let Worker {
            conns,
            tally,
            read_buf,
            write_buf,
            shake_start,
            ..
        } = self;
        let Some(conn) = conns.get_mut(idx) else {
            return Ok(());
        };
        let Some(stream) = conn.stream.as_ref() else {
            // A stale event for a connection closed earlier in this batch.
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
            Frame::LoginRequest { user: conn.user }.encode(unix_secs(), write_buf);
            send(conn, write_buf)?;
        } else if writable && conn.has_pending_out() {
            flush(conn)?;
        }
        if readable {
            // Answers are stamped when their read returns, not when the poll
            // did: handling a thousand events takes long enough to matter.
            let shake_start = *shake_start;
            read_frames(conn, read_buf, |conn, frame, read_at| {
                let answer_ns = shake_start.map_or(now_ns, |s| nanos_since(s, read_at));
                on_frame(conn, frame, answer_ns, tally)
            })?;
        }
        Ok(())
    }

    /// Closes connection `idx`, counting why and losing what it had in flight.
    fn close(&mut self, idx: usize, why: Close) {
        let conn = &mut self.conns[idx];
        let was = conn.state;
        // Dropping the stream closes the socket, which also removes it from
        // the epoll set; a stale event for it in this batch is ignored.
        conn.stream = None;
        conn.state = State::Closed;
        let now_ns = self
            .shake_start
            .map_or(0, |s| nanos_since(s, Instant::now()));
        self.tally.lose(&conn.in_flight, now_ns);
        conn.in_flight = VecDeque::new();
        if was == State::Ready {
            match why {
                Close::Bad(_) => self.tally.current.bad_frames += 1,
                _ => self.tally.current.conn_errors += 1,
            }
        }
    }

    /// Keeps the logged-in connections until told to start; returns the
    /// schedule's start instant.
    fn hold(&mut self) -> Result<Instant, Stop> {
        loop {
            if let Some(start) = self.check_control()? {
                self.before_start = std::mem::take(&mut self.tally.current);
                return Ok(start);
            }
            let now = Instant::now();
            if now >= self.cfg.hard_deadline {
                return Err(Stop::Told);
            }
            // The coordinator wakes us through the waker; the timeout only
            // bounds the wait by the hard deadline.
            self.poll_for(self.cfg.hard_deadline - now)?;
            self.handle_events(0);
        }
    }

    /// Runs the events of the last poll against the connections.
    fn handle_events(&mut self, now_ns: u64) {
        let events = self.take_events();
        for event in events.iter() {
            let Some((idx, readable, writable)) = readiness(event) else {
                continue;
            };
            if let Err(close) = self.on_event(idx, readable, writable, now_ns) {
                self.close(idx, close);
            }
        }
        self.events = events;
    }

    /// The open-loop phase: sends this thread's share of the schedule from
    /// `start` through warmup and window, then waits for the last answers.
    fn shake(&mut self, start: Instant) -> Result<(), Stop> {
        let share = Share::new(self.cfg.index, self.cfg.threads, self.cfg.rate_per_sec);
        let end_ns = self.cfg.warmup_ns + self.cfg.window_ns;
        let drain_end_ns = end_ns + self.cfg.drain_ns;
        let total = share.due_before(end_ns);
        self.tally.window_ns = self.cfg.warmup_ns..end_ns;
        self.shake_start = Some(start);
        self.events.clear();
        let mut issued = 0;
        let mut second = 0;
        loop {
            let now = Instant::now();
            let elapsed_ns = nanos_since(start, now);
            while elapsed_ns >= (second + 1) * NANOS_PER_SEC {
                self.publish_second(second);
                second += 1;
                // Once a second is often enough to notice a stop request,
                // and keeps even the channel's atomics off the request path.
                self.check_control()?;
            }
            // Events of the previous poll: their answers arrived before it
            // returned, so the time taken right after it is their answer time.
            self.handle_events(elapsed_ns);
            if now >= start {
                // A fresh reading: handling the events took time, and the
                // send time is what the service time is measured from.
                let send_ns = nanos_since(start, Instant::now());
                let target = share.due_by(send_ns).min(total);
                if target > issued {
                    self.send_due(&share, issued, target, send_ns);
                    issued = target;
                }
            }
            let drained = self.tally.in_flight == 0 || elapsed_ns >= drain_end_ns;
            if (issued == total && elapsed_ns >= end_ns && drained) || now >= self.cfg.hard_deadline
            {
                self.publish_second(second);
                return Ok(());
            }
            let next_ns = if issued < total {
                share.due_at_ns(issued)
            } else if elapsed_ns < end_ns {
                end_ns
            } else {
                drain_end_ns
            };
            let next_ns = next_ns.min((second + 1) * NANOS_PER_SEC);
            // The timer wakes us on time to the microsecond (epoll's own
            // timeout is whole milliseconds); what falls due within
            // --send-interval-us leaves together. Any lateness left is measured,
            // not hidden: latency counts from each request's intended time.
            // A fresh reading: handling events and sending took time since
            // `now`, and a timer armed from the old reading would fire late.
            let armed_at = Instant::now();
            let timeout = if armed_at < start {
                // Before the start, elapsed_ns reads 0 and request 0 looks
                // due now: wait for the start itself instead of spinning.
                start - armed_at
            } else {
                Duration::from_nanos(next_ns.saturating_sub(nanos_since(start, armed_at)))
            };
            // --spin: never sleep while shaking. On a VM a sleeping vCPU can
            // take milliseconds to wake for an answer or the next send; a
            // dedicated load core that spins measures the server instead.
            if timeout.is_zero() || (self.cfg.spin && timeout < SPIN_WAIT_MAX) {
                self.poll_for(Duration::ZERO)?;
            } else {
                self.timer
                    .arm(timeout.max(self.cfg.send_interval))
                    .map_err(|e| {
                        Stop::Failed(format!(
                            "thread {}: arming the send timer: {e}",
                            self.cfg.index
                        ))
                    })?;
                self.poll_for(timeout.max(self.cfg.send_interval) + TIMER_BACKSTOP)?;
            }
        }
    }

    /// Sends requests `from..to` of this thread's share, round-robin over its
    /// connections, all of one connection's due requests in one write.
    fn send_due(&mut self, share: &Share, from: u64, to: u64, now_ns: u64) {
        let timestamp = unix_secs();
        let conn_count = self.conns.len();
        for batch in schedule::batches(from, to, conn_count) {
            let Worker {
                conns,
                tally,
                write_buf,
                ..
            } = self;
            let conn = &mut conns[batch.conn];
            // Open loop, but not unbounded: a server that stops answering
            // would otherwise grow the in-flight record (and the spill) by
            // every request for the rest of the run. Past the cap, requests
            // are not sent and are counted as unsent, which the report shows.
            if conn.state != State::Ready || tally.in_flight + batch.count > IN_FLIGHT_MAX {
                tally.current.unsent += batch.count;
                continue;
            }
            write_buf.clear();
            for i in 0..batch.count {
                let j = batch.first + i * conn_count as u64;
                let intended_ns = share.due_at_ns(j);
                Frame::ShakeRequest { user: conn.user }.encode(timestamp, write_buf);
                conn.in_flight.push_back(InFlight {
                    intended_ns,
                    sent_ns: now_ns,
                });
                if tally.window_ns.contains(&intended_ns) {
                    tally
                        .latency
                        .record_send_lag(now_ns.saturating_sub(intended_ns));
                }
            }
            tally.current.sent += batch.count;
            tally.in_flight += batch.count;
            if let Err(close) = send(conn, write_buf) {
                self.close(batch.conn, close);
            }
        }
    }

    fn publish_second(&mut self, second: u64) {
        let counters = std::mem::take(&mut self.tally.current);
        self.per_second.push(counters);
        let _ = self.to_main.send(ToMain::Second { second, counters });
    }

    /// Counts what never got an answer and hands over the results.
    fn finish(&mut self) -> ThreadResult {
        let now_ns = self
            .shake_start
            .map_or(0, |s| nanos_since(s, Instant::now()));
        for conn in &mut self.conns {
            self.tally.lose(&conn.in_flight, now_ns);
            conn.in_flight.clear();
        }
        ThreadResult {
            thread: self.cfg.index,
            per_second: std::mem::take(&mut self.per_second),
            before_start: self.before_start,
            latency: std::mem::take(&mut self.tally.latency),
            lost_in_window: self.tally.lost_in_window,
            lost_outside_window: self.tally.lost_outside_window,
        }
    }
}

/// The connection index and readiness of an event, or None for the waker
/// (its message is read by `check_control`).
fn readiness(event: &Event) -> Option<(usize, bool, bool)> {
    let token = event.token();
    if token == WAKER || token == TIMER {
        return None;
    }
    // Errors and hang-ups are found by the read or write that follows, which
    // reports the actual cause; treat them as readable so that read runs.
    let readable = event.is_readable() || event.is_read_closed() || event.is_error();
    Some((token.0, readable, event.is_writable()))
}

/// Handles one frame from a server. Returns an error to close the connection.
#[inline]
fn on_frame(conn: &mut Conn, frame: Frame, now_ns: u64, tally: &mut Tally) -> Result<(), Close> {
    match conn.state {
        State::LoggingIn => match frame {
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
        },
        State::Ready => {
            let counters = &mut tally.current;
            let answer = match frame {
                Frame::ShakeResponse { result, .. } => {
                    match result {
                        ShakeOutcome::GOT => counters.got += 1,
                        ShakeOutcome::NONE => counters.none += 1,
                        ShakeOutcome::GONE => counters.gone += 1,
                        ShakeOutcome::OVERLOAD => counters.overload += 1,
                        _ => counters.other_results += 1,
                    }
                    true
                }
                Frame::PacketPush { .. } => {
                    counters.pushes += 1;
                    true
                }
                _ => false,
            };
            let request = if answer {
                conn.in_flight.pop_front()
            } else {
                None
            };
            let Some(request) = request else {
                // Not an answer, or an answer to nothing we sent.
                counters.unexpected_frames += 1;
                return Ok(());
            };
            counters.answered += 1;
            tally.in_flight -= 1;
            if tally.window_ns.contains(&request.intended_ns) {
                tally.latency.record(
                    now_ns.saturating_sub(request.intended_ns),
                    now_ns.saturating_sub(request.sent_ns),
                );
            }
            Ok(())
        }
        // No frame can arrive before the connect finishes or after close.
        State::Connecting | State::Closed => Ok(()),
    }
}

/// Reads what the socket holds and hands every complete frame to `on_frame`,
/// keeping a trailing partial frame for the next edge.
fn read_frames(
    conn: &mut Conn,
    buf: &mut [u8],
    mut on_frame: impl FnMut(&mut Conn, Frame, Instant) -> Result<(), Close>,
) -> Result<(), Close> {
    loop {
        let carried = conn.copy_partial_to(buf);
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        let room = buf.len() - carried;
        let n = match stream.read(&mut buf[carried..]) {
            Ok(0) => return Err(Close::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Close::Io(e)),
        };
        let read_at = Instant::now();
        let filled = carried + n;
        let mut at = 0;
        loop {
            match wire::decode(&buf[at..filled]) {
                Ok(decoded) => {
                    on_frame(conn, decoded.frame, read_at)?;
                    at += decoded.len;
                }
                Err(DecodeError::Incomplete) => break,
                Err(e) => return Err(Close::Bad(e)),
            }
        }
        conn.keep_partial(&buf[at..filled]);
        // Linux raises a new edge for every arrival on a TCP socket, so a read
        // that did not fill the buffer has drained it for now, and the extra
        // read that would only return WouldBlock is skipped. A full buffer
        // may mean more is waiting: read again.
        if n < room {
            return Ok(());
        }
    }
}

/// Writes `bytes` with one `write`; what the socket does not take waits in
/// the connection's spill for the next WRITABLE edge.
fn send(conn: &mut Conn, bytes: &[u8]) -> Result<(), Close> {
    if conn.has_pending_out() {
        // Earlier output is still waiting, so the socket was full at the last
        // write and a WRITABLE edge is coming: queue behind it, no syscall.
        conn.spill().out.extend_from_slice(bytes);
        return Ok(());
    }
    let Some(stream) = conn.stream.as_mut() else {
        return Ok(());
    };
    let written = loop {
        match stream.write(bytes) {
            Ok(0) => return Err(Close::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Close::Io(e)),
        }
    };
    if written < bytes.len() {
        // A short write means the send buffer is full; another write now
        // would only return WouldBlock.
        conn.spill().out.extend_from_slice(&bytes[written..]);
    }
    Ok(())
}

/// Writes as much pending output as the socket takes.
fn flush(conn: &mut Conn) -> Result<(), Close> {
    let (Some(stream), Some(spill)) = (conn.stream.as_mut(), conn.spill.as_mut()) else {
        return Ok(());
    };
    while !spill.out.is_empty() {
        match stream.write(&spill.out) {
            Ok(0) => return Err(Close::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                spill.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Close::Io(e)),
        }
    }
    Ok(())
}

/// Opens a nonblocking TCP socket with `TCP_NODELAY` (requests are small and
/// must not wait for Nagle), optionally bound to a source address, and starts
/// the connect.
fn open_socket(server: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = bind {
        // Without IP_BIND_ADDRESS_NO_PORT, bind() would pick the source port
        // at once, from one pool shared by every destination; with it the
        // port is chosen at connect() by the full 4-tuple, so each source
        // address gives its own ~28k ports per server address. Best effort:
        // an old kernel without it only makes ports scarcer.
        let on: libc::c_int = 1;
        // SAFETY: the fd is a valid open socket owned by `socket`; the option
        // value points to a c_int that lives across the call, with its size.
        let _ = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Nanoseconds from `start` to `now`, 0 when `now` is earlier.
fn nanos_since(start: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(start).as_nanos() as u64
}

/// The frame timestamp: Unix seconds, as the original client sends.
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
