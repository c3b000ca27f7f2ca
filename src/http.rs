//! A minimal HTTP/1.1 control server: GET in, JSON out, on its own thread.
//!
//! Owns: the control listener, the thread that serves it, reading and parsing
//! requests (httparse), the query string (form-urlencoded), the bearer token
//! that guards the mutating routes, and writing the JSON answer with
//! `Connection: close`. The server, the flooder and the monitor each plug
//! their route table in as a handler. Must not: know any route, sit on a data
//! path, or panic on any input: a request it cannot parse gets a 400, one too
//! large a 431, a method other than GET a 405, a guarded route without the
//! token a 401, each with a JSON body `{"error": "..."}`.
//!
//! Many connections are served at once, on one thread with its own mio
//! loop, and none can stall it (each limit is a constant, stated here):
//!
//! - **Deadlines.** A connection has `HEAD_TIMEOUT` from its accept to
//!   send its whole request head, and `WRITE_TIMEOUT` to take its answer;
//!   then what it still sends (a body, which is never served) is read and
//!   dropped for at most `LINGER_TIMEOUT` and `DRAIN_MAX` bytes. Past a
//!   deadline it is closed and counted ([`Counters`]).
//! - **A connection cap.** At most `CONNS_MAX` connections are held. A
//!   connection accepted at the cap evicts the oldest held one that is not
//!   being answered (an answered one lingering first, then the one waiting
//!   longest for its head), counted; if every held one is being answered, the
//!   newcomer gets a 503 and is closed, counted. So idle connections, however
//!   many and however often reopened, cannot keep a new one out: a newcomer
//!   is only pushed out by `CONNS_MAX` newer ones.
//! - **Bounded buffers.** A request head must fit `REQUEST_MAX` bytes,
//!   held per connection only while it arrives; an answer is held until
//!   written, and all answers held at once stay under
//!   `ANSWERS_BYTES_MAX` (past it, a 503, counted).
//! - **A backlog** of `BACKLOG` (the kernel caps it at
//!   `net.core.somaxconn`, see `somaxconn`).
//! - **Descriptors.** A control server holds at most `FDS_MAX`; a process
//!   that also serves a data plane keeps them in reserve (`server::limits`).
//!
//! The handler runs on the loop's thread, one request at a time: it must be
//! quick or bounded (the server's waits on its generator for at most
//! `IO_TIMEOUT`). Only GET is served: request bodies are never read, so a
//! method that carries one could not be answered correctly, and HEAD would
//! need answers without a body.
//!
//! The loop follows mio's contract: sockets are edge-triggered, so every
//! readiness event is drained until `WouldBlock`; spurious events are
//! harmless; `Interrupted` means try again.
//!
//! ```no_run
//! use hongbao::http::{self, Response};
//! use serde_json::json;
//!
//! let listener = http::bind("127.0.0.1:0".parse().unwrap())?;
//! let server = http::Server::start(listener, "example-http", |req| match req.path() {
//!     "/hello" => Response::ok(json!({ "name": req.param("name") })),
//!     path => Response::not_found(path, &["/hello?name=N"]),
//! })?;
//! println!("GET http://{}/hello?name=you", server.addr());
//! server.stop();
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::{Value, json};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use subtle::ConstantTimeEq;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection `key` in the slab has token `FIRST_CONN + key`.
const FIRST_CONN: usize = 2;
/// Readiness events taken from one poll: one per connection held covers a
/// turn in which all of them are ready; the listener's or the waker's event
/// past that waits for the next turn, a moment later.
const EVENTS_MAX: usize = CONNS_MAX;
/// Room kept ahead of an answer's body for its status line and headers,
/// which come to about 120 to 170 bytes, so writing them seldom
/// reallocates.
const ANSWER_HEAD_LEN_HINT: usize = 160;

/// A request must fit this, request line and headers together: control
/// requests are one short line and a few headers.
pub(crate) const REQUEST_MAX: usize = 8 * 1024;
/// Each deadline of a connection: to send its request head, and again to
/// take its answer. Long enough for a person typing into `nc`'s pipe from a
/// script, short enough that a silent client costs a slot for a moment only.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// From accept to the end of the request head (the header deadline).
pub(crate) const HEAD_TIMEOUT: Duration = IO_TIMEOUT;
/// From the end of the head to the last byte of the answer written (the
/// write deadline): a client that does not read its answer is closed then.
pub(crate) const WRITE_TIMEOUT: Duration = IO_TIMEOUT;
/// After the answer, what the client still sends (a request body, which is
/// never served) is read and dropped for at most this long, and at most
/// [`DRAIN_MAX`] bytes, so that closing does not reset the connection and
/// destroy the answer on its way. On loopback or a LAN the rest of a request
/// and the client's close arrive in well under this.
pub(crate) const LINGER_TIMEOUT: Duration = Duration::from_millis(500);
/// See [`LINGER_TIMEOUT`].
pub(crate) const DRAIN_MAX: usize = 64 * 1024;
/// Connections held at once; see the module's notes for what happens at the
/// cap. The monitor holds one per fetch and operators a few: 256 leaves room
/// for a burst of scripts, and 256 × [`REQUEST_MAX`] bounds the head buffers
/// at 2 MiB.
pub(crate) const CONNS_MAX: usize = 256;
/// Answer bytes held at once over all connections: an answer that would
/// take more gets a 503 instead, counted (`shed`). A full `/seconds` is
/// about 1 MB, so 64 of them fit; without this, 256 clients asking for it
/// and not reading would hold 256 MB for their write deadline.
pub(crate) const ANSWERS_BYTES_MAX: usize = 64 << 20;
/// Descriptors a control server holds at most: its connections, the
/// listener, its epoll and its waker's eventfd.
pub(crate) const FDS_MAX: u64 = CONNS_MAX as u64 + 3;
/// The control listener's listen(2) backlog: takes 300 connects at once
/// (the kernel caps it at `net.core.somaxconn`, 4096 by default since Linux
/// 5.4).
pub(crate) const BACKLOG: i32 = 1024;
/// Headers parsed per request; more is a 400. Control clients send a few.
const HEADERS_MAX: usize = 32;
/// Connections accepted per readiness event before the loop serves the ones
/// it holds; the rest are taken on the next turn, at once.
const ACCEPTS_PER_TURN: usize = 64;
/// After `accept` failed with something other than `WouldBlock` (say, out of
/// file descriptors), the backlog is tried again after this long: an
/// edge-triggered listener would not report the waiting connections again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Bytes read per `read` call, from a buffer on the loop's stack.
const READ_CHUNK: usize = 4096;
/// Shortest control token accepted: 16 bytes is 96 bits even as base64.
pub(crate) const TOKEN_LEN_MIN: usize = 16;
/// Longest control token accepted: it travels in one request head.
pub(crate) const TOKEN_LEN_MAX: usize = 1024;

/// `net.core.somaxconn`, which caps every listen backlog; `None` when it
/// cannot be read (no procfs).
pub(crate) fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What a control server has done, counted since it started. Relaxed
/// atomics: read by routes for `/status`, written by the loop alone.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections held now.
    pub open: AtomicU64,
    /// Requests answered, whatever the status.
    pub answered: AtomicU64,
    /// Held connections closed to make room at `CONNS_MAX`.
    pub evicted: AtomicU64,
    /// Connections refused at `CONNS_MAX` with a 503 (every held one was
    /// being answered).
    pub refused: AtomicU64,
    /// Connections closed at the header deadline (`HEAD_TIMEOUT`).
    pub head_timeouts: AtomicU64,
    /// Connections closed at the write deadline (`WRITE_TIMEOUT`).
    pub write_timeouts: AtomicU64,
    /// Requests refused with a 431 (head over `REQUEST_MAX`).
    pub too_large: AtomicU64,
    /// Requests refused with a 400 or a 405.
    pub bad_requests: AtomicU64,
    /// Requests for a guarded route refused with a 401 (no token, or a
    /// wrong one).
    pub unauthorized: AtomicU64,
    /// Answers replaced by a 503 because the answers held would pass
    /// `ANSWERS_BYTES_MAX`.
    pub shed: AtomicU64,
    /// `accept` failures (out of descriptors, or the connection gone).
    pub accept_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counts as a JSON object, for a `/status` route.
    pub fn to_json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "accepted": get(&self.accepted),
            "open": get(&self.open),
            "answered": get(&self.answered),
            "evicted": get(&self.evicted),
            "refused": get(&self.refused),
            "head_timeouts": get(&self.head_timeouts),
            "write_timeouts": get(&self.write_timeouts),
            "too_large": get(&self.too_large),
            "bad_requests": get(&self.bad_requests),
            "unauthorized": get(&self.unauthorized),
            "shed": get(&self.shed),
            "accept_errors": get(&self.accept_errors),
        })
    }
}

/// A control listener, bound but not yet served.
///
/// Binding is a step of its own so that a taken port fails the program's
/// start-up before any of its threads run.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    counters: Arc<Counters>,
}

/// Binds `addr` for a control server: non-blocking, close-on-exec,
/// `SO_REUSEADDR`, a backlog of `BACKLOG`.
pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(Listener {
        inner: TcpListener::from_std(socket.into()),
        counters: Arc::default(),
    })
}

impl Listener {
    /// The address bound, with the port the OS chose for port 0.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The server's counters, shared: take them before [`Server::start`]
    /// to report them from a route.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }
}

/// The bearer token that guards a control server's mutating routes.
///
/// Its `Debug` does not show it.
#[derive(Clone)]
pub(crate) struct ControlToken(Arc<str>);

impl std::fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlToken(..)")
    }
}

impl ControlToken {
    /// A token from its text, trimmed: [`TOKEN_LEN_MIN`]..=[`TOKEN_LEN_MAX`]
    /// visible ASCII characters (what a header value carries unchanged).
    pub fn new(text: &str) -> Result<ControlToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        if !(TOKEN_LEN_MIN..=TOKEN_LEN_MAX).contains(&token.len()) {
            return Err(format!(
                "the token has {} characters, not {TOKEN_LEN_MIN}..={TOKEN_LEN_MAX}",
                token.len()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII characters without spaces".into());
        }
        Ok(ControlToken(token.into()))
    }

    /// Reads a token file (`--control-token-file`): the whole file, trimmed,
    /// as [`ControlToken::new`] takes it. Refused when others (not the owner
    /// or the group) may read or write it, as a secret should not be.
    /// Every error names the path and the fix.
    pub fn from_file(path: &Path) -> Result<ControlToken, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            format!(
                "reading the control token file {shown}: {e} (create it with, say, \
                 `head -c 32 /dev/urandom | base64 > {shown}; chmod 600 {shown}`)"
            )
        })?;
        let mode = meta.permissions().mode();
        if mode & 0o007 != 0 {
            return Err(format!(
                "the control token file {shown} is open to other users (mode {:o}): \
                 `chmod 600 {shown}`",
                mode & 0o777
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the control token file {shown}: {e}"))?;
        ControlToken::new(&text).map_err(|e| {
            format!(
                "the control token file {shown}: {e} (write, say, \
                 `head -c 32 /dev/urandom | base64` into it)"
            )
        })
    }

    /// The token's text, for a client to send.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, compared in constant time (for a
    /// given length: the length itself may show, and is not the secret).
    fn admits(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| bool::from(self.0.as_bytes().ct_eq(p.as_bytes())))
    }
}

/// Which routes need the bearer token: with a token, a request for any of
/// `paths` must carry `Authorization: Bearer TOKEN` or gets a 401, counted.
/// Without a token (the default) every route is open.
#[derive(Clone, Debug, Default)]
pub(crate) struct Guard {
    /// The token, if one is configured.
    pub token: Option<ControlToken>,
    /// The paths it guards (exact, before any `?`).
    pub paths: &'static [&'static str],
}

impl Guard {
    /// The refusal for `req`, if it needs a token it did not bring.
    fn refuse(&self, req: &Request) -> Option<Response> {
        let token = self.token.as_ref()?;
        if !self.paths.contains(&req.path()) || token.admits(req.bearer()) {
            return None;
        }
        Some(Response::error(
            401,
            format!(
                "{} needs the control token: send `Authorization: Bearer TOKEN` \
                 (the token in the server's --control-token-file)",
                req.path()
            ),
        ))
    }
}

/// A GET request as the handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    path: String,
    query: String,
    params: Vec<(String, String)>,
    bearer: Option<String>,
}

impl Request {
    /// A request for `target`, the request line's second word
    /// (`/path?query`). The path is kept as sent (not percent-decoded); the
    /// query's pairs are decoded as `application/x-www-form-urlencoded`.
    /// Public so that a route table can be tested without a socket.
    pub fn new(target: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Request {
            path: path.to_owned(),
            query: query.to_owned(),
            params,
            bearer: None,
        }
    }

    /// The same request carrying `Authorization: Bearer TOKEN`.
    pub fn with_bearer(mut self, token: &str) -> Request {
        self.bearer = Some(token.to_owned());
        self
    }

    /// The token of an `Authorization: Bearer TOKEN` header, if sent.
    pub fn bearer(&self) -> Option<&str> {
        self.bearer.as_deref()
    }

    /// The path, before any `?`, as sent.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string, after the first `?` (empty if none).
    pub fn query(&self) -> &str {
        &self.query
    }

    /// The query's pairs, decoded, in the order sent, repeats included.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The decoded value of query parameter `name`; the last one if it is
    /// repeated (as a later `-flag` overrides an earlier one).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer: a status and a JSON body, sent with `Connection: close`.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body, sent as `application/json` unless `text` is set.
    pub body: Value,
    /// A body of another type (Prometheus text, HTML, SVG), sent instead of
    /// `body` when set: its `Content-Type` and its text.
    pub text: Option<(&'static str, String)>,
}

impl Response {
    /// A 200 with `body`.
    pub fn ok(body: Value) -> Response {
        Response {
            status: 200,
            body,
            text: None,
        }
    }

    /// A 200 whose body is `text`, sent as `content_type` (say
    /// `text/plain; version=0.0.4` for Prometheus, `text/html; charset=utf-8`).
    pub fn text(content_type: &'static str, text: String) -> Response {
        Response {
            status: 200,
            body: Value::Null,
            text: Some((content_type, text)),
        }
    }

    /// An error answer: `status` with the body `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response {
            status,
            body: json!({ "error": message.into() }),
            text: None,
        }
    }

    /// A 404 for `path` that lists the paths served:
    /// `{"error": "no such path P", "paths": [...]}`.
    pub fn not_found(path: &str, paths: &[&str]) -> Response {
        Response {
            status: 404,
            body: json!({ "error": format!("no such path {path}"), "paths": paths }),
            text: None,
        }
    }

    /// The whole answer as sent: status line, headers, body.
    fn to_bytes(&self) -> Vec<u8> {
        let json;
        let (content_type, body) = match &self.text {
            Some((content_type, text)) => (*content_type, text.as_str()),
            None => {
                json = self.body.to_string();
                ("application/json", json.as_str())
            }
        };
        let mut out = Vec::with_capacity(ANSWER_HEAD_LEN_HINT + body.len());
        // Writing into a Vec cannot fail. Answers are never cached: every
        // route reports the state of a running process.
        // A 401 names the scheme it wants (RFC 9110 11.6.1).
        let challenge = if self.status == 401 {
            "WWW-Authenticate: Bearer realm=\"hongbao-control\"\r\n"
        } else {
            ""
        };
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{challenge}Connection: close\r\n\r\n{body}",
            self.status,
            reason(self.status),
            body.len()
        );
        out
    }
}

/// The reason phrase for `status`; empty (which HTTP allows) for the rare
/// status not listed.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What the bytes received so far make.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Not a whole request yet.
    Partial,
    /// A whole GET request, for the handler.
    Get(Request),
    /// Answered without the handler: malformed, or not a GET.
    Refused(Response),
}

/// Parses the request head in `bytes`. Pure, so any input can be tried:
/// public for the HTTP fuzz target (`fuzz/`).
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Refused(Response::error(400, format!("bad request: {e}"))),
        Ok(httparse::Status::Complete(_)) => {
            // Both are set once httparse says Complete.
            if req.method.unwrap_or("") != "GET" {
                return Parsed::Refused(Response::error(405, "only GET is served"));
            }
            let mut request = Request::new(req.path.unwrap_or(""));
            // The scheme is case-insensitive (RFC 9110 11.1); a token that is
            // not UTF-8 cannot match one, which is.
            request.bearer = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim().to_owned());
            Parsed::Get(request)
        }
    }
}

/// A running control server. [`Server::stop`] ends it; so does dropping it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` on a new thread called `name`, answering each GET
    /// with `handler`; every route open.
    ///
    /// The handler runs on that thread, one request at a time; it must
    /// answer quickly or within a bound (a slow one delays the requests
    /// behind it) and must not panic: a panic ends the thread, and the
    /// control with it.
    pub fn start<H>(listener: Listener, name: &str, handler: H) -> io::Result<Server>
    where
        H: Fn(&Request) -> Response + Send + 'static,
    {
        Server::start_guarded(listener, name, Guard::default(), handler)
    }

    /// As [`Server::start`], with the routes in `guard` refused (401) to a
    /// request without its token.
    pub(crate) fn start_guarded<H>(
        listener: Listener,
        name: &str,
        guard: Guard,
        handler: H,
    ) -> io::Result<Server>
    where
        H: Fn(&Request) -> Response + Send + 'static,
    {
        let Listener {
            inner: mut listener,
            counters,
        } = listener;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let label = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut lp = Loop {
                    poll,
                    listener,
                    conns: Slab::with_capacity(CONNS_MAX),
                    serial: 0,
                    accept_again: None,
                    guard,
                    counters,
                    handler,
                    answers_bytes: 0,
                };
                lp.run(&label);
            })?;
        Ok(Server {
            addr,
            waker,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the loop, closes the listener and every connection, and waits
    /// for the thread. Prompt, unless a handler is running (it finishes
    /// first).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            // If the wake fails the poll is gone, and so is the loop.
            let _ = self.waker.wake();
            // A panicking handler already reported itself on stderr.
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Where a connection is in its one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request head, until [`HEAD_TIMEOUT`].
    Head,
    /// Writing the answer, until [`WRITE_TIMEOUT`].
    Write,
    /// Answered; reading and dropping what the client still sends until its
    /// close or [`LINGER_TIMEOUT`].
    Linger,
}

/// One held connection.
#[derive(Debug)]
struct Conn {
    stream: mio::net::TcpStream,
    phase: Phase,
    /// When the current phase must be over.
    deadline: Instant,
    /// Accept order: the oldest is evicted first.
    serial: u64,
    /// The request head so far (at most [`REQUEST_MAX`]), then the answer.
    buf: Vec<u8>,
    /// Bytes of the answer written, or dropped while lingering.
    done: usize,
}

/// What to do with a connection after serving its readiness.
enum Next {
    Keep,
    Close,
}

/// The control thread's state.
struct Loop<H> {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    serial: u64,
    /// Accept again at this time: after an accept error, or after a turn's
    /// share of accepts with more waiting.
    accept_again: Option<Instant>,
    guard: Guard,
    counters: Arc<Counters>,
    handler: H,
    /// Bytes of the answers held by connections being answered.
    answers_bytes: usize,
}

impl<H: Fn(&Request) -> Response> Loop<H> {
    /// Waits for connections, their readiness, deadlines or the waker;
    /// returns when woken (every connection is closed as the loop drops).
    fn run(&mut self, name: &str) {
        let mut events = Events::with_capacity(EVENTS_MAX);
        loop {
            let timeout = self.next_deadline().map(|at| {
                // Rounded up, so the loop does not wake just before it.
                at.saturating_duration_since(Instant::now()) + Duration::from_millis(1)
            });
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("hongbao: {name} stopped: polling failed: {e}");
                return;
            }
            if events.iter().any(|event| event.token() == WAKER) {
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    Token(t) => {
                        let key = t - FIRST_CONN;
                        if self.conns.contains(key)
                            && let Next::Close = self.drive(key)
                        {
                            self.close(key);
                        }
                    }
                }
            }
            let now = Instant::now();
            if self.accept_again.is_some_and(|at| at <= now) {
                self.accept_again = None;
                self.accept_all();
            }
            self.expire(now);
        }
    }

    /// The earliest deadline of a connection or a pending accept.
    fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .map(|(_, c)| c.deadline)
            .chain(self.accept_again)
            .min()
    }

    /// Closes the connections whose phase is past its deadline, counted.
    fn expire(&mut self, now: Instant) {
        let late: Vec<(usize, Phase)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, c)| (k, c.phase))
            .collect();
        for (key, phase) in late {
            match phase {
                Phase::Head => Counters::add(&self.counters.head_timeouts, 1),
                Phase::Write => Counters::add(&self.counters.write_timeouts, 1),
                Phase::Linger => {}
            }
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        // Dropping the stream closes it, which takes it out of the epoll set.
        let conn = self.conns.remove(key);
        if conn.phase == Phase::Write {
            self.answers_bytes -= conn.buf.len();
        }
        drop(conn);
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Accepts what waits in the backlog, a turn's share at a time.
    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Out of descriptors, or that connection is gone: the
                    // edge-triggered listener will not say again that more
                    // wait, so look again soon.
                    Counters::add(&self.counters.accept_errors, 1);
                    self.accept_again = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
        // More may wait: serve the held connections first, then take them.
        self.accept_again = Some(Instant::now());
    }

    /// Holds a new connection, making room at the cap.
    fn admit(&mut self, mut stream: mio::net::TcpStream) {
        Counters::add(&self.counters.accepted, 1);
        if self.conns.len() >= CONNS_MAX {
            // An answered one first, then the one waiting longest for its
            // head; never one being answered (it is within its write
            // deadline and about to go).
            let victim = self
                .conns
                .iter()
                .filter(|(_, c)| c.phase != Phase::Write)
                .min_by_key(|(_, c)| (c.phase != Phase::Linger, c.serial))
                .map(|(k, _)| k);
            match victim {
                Some(key) => {
                    Counters::add(&self.counters.evicted, 1);
                    self.close(key);
                }
                None => {
                    Counters::add(&self.counters.refused, 1);
                    // One write into an empty send buffer: it fits, or the
                    // client is gone; either way the stream closes now.
                    let busy = Response::error(503, "the control server is busy: try again");
                    let _ = stream.write(&busy.to_bytes());
                    return;
                }
            }
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(FIRST_CONN + key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            Counters::add(&self.counters.accept_errors, 1);
            return;
        }
        self.serial += 1;
        entry.insert(Conn {
            stream,
            phase: Phase::Head,
            deadline: Instant::now() + HEAD_TIMEOUT,
            serial: self.serial,
            buf: Vec::new(),
            done: 0,
        });
        Counters::add(&self.counters.open, 1);
    }

    /// Moves connection `key` on as far as its socket allows.
    fn drive(&mut self, key: usize) -> Next {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let conn = &mut self.conns[key];
            match conn.phase {
                Phase::Head => {
                    let room = REQUEST_MAX - conn.buf.len();
                    let n = match (&conn.stream).read(&mut chunk[..room.min(READ_CHUNK)]) {
                        // Closed before a whole request: nobody to answer.
                        Ok(0) => return Next::Close,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Next::Close,
                    };
                    conn.buf.extend_from_slice(&chunk[..n]);
                    let response = match parse(&conn.buf) {
                        Parsed::Partial if conn.buf.len() < REQUEST_MAX => continue,
                        Parsed::Partial => {
                            Counters::add(&self.counters.too_large, 1);
                            Response::error(431, "request too large")
                        }
                        Parsed::Refused(response) => {
                            Counters::add(&self.counters.bad_requests, 1);
                            response
                        }
                        Parsed::Get(request) => match self.guard.refuse(&request) {
                            Some(refusal) => {
                                Counters::add(&self.counters.unauthorized, 1);
                                refusal
                            }
                            None => (self.handler)(&request),
                        },
                    };
                    let mut answer = response.to_bytes();
                    if self.answers_bytes + answer.len() > ANSWERS_BYTES_MAX {
                        Counters::add(&self.counters.shed, 1);
                        answer = Response::error(503, "the control server is busy: try again")
                            .to_bytes();
                    }
                    self.answers_bytes += answer.len();
                    let conn = &mut self.conns[key];
                    conn.buf = answer;
                    conn.done = 0;
                    conn.phase = Phase::Write;
                    // From now: the handler may have taken a while.
                    conn.deadline = Instant::now() + WRITE_TIMEOUT;
                }
                Phase::Write => {
                    match (&conn.stream).write(&conn.buf[conn.done..]) {
                        Ok(0) => return Next::Close,
                        Ok(n) => conn.done += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return Next::Close,
                    }
                    if conn.done == conn.buf.len() {
                        Counters::add(&self.counters.answered, 1);
                        self.answers_bytes -= conn.buf.len();
                        conn.buf = Vec::new();
                        conn.done = 0;
                        conn.phase = Phase::Linger;
                        conn.deadline = Instant::now() + LINGER_TIMEOUT;
                        // The FIN follows the answer; the client's close
                        // ends the lingering.
                        let _ = conn.stream.shutdown(Shutdown::Write);
                    }
                }
                Phase::Linger => match (&conn.stream).read(&mut chunk) {
                    Ok(0) => return Next::Close,
                    Ok(n) => {
                        conn.done += n;
                        if conn.done > DRAIN_MAX {
                            return Next::Close;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Next::Close,
                },
            }
        }
    }
}

/// The largest answer [`get`] reads: 300 seconds of buckets with
/// their histograms are about 1 MB (and a fetch with `?since=` holds a
/// few); anything past this is not a source of ours.
const ANSWER_MAX: usize = 16 << 20;

/// GETs `target` from `addr` (`host:port`) within `timeout` for the
/// connect and as long again for the answer; returns the status and body.
pub fn get(addr: &str, target: &str, timeout: Duration) -> Result<(u16, String), String> {
    get_with_token(addr, target, timeout, None)
}

/// As [`get`], sending `Authorization: Bearer TOKEN` when `token` is given
/// (for a guarded route).
pub(crate) fn get_with_token(
    addr: &str,
    target: &str,
    timeout: Duration,
    token: Option<&ControlToken>,
) -> Result<(u16, String), String> {
    let sockaddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&sockaddr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let io = |e: std::io::Error| format!("GET {target} from {addr}: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let authorization = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.as_str()))
        .unwrap_or_default();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER_MAX as u64 + 1)
        .read_to_end(&mut answer)
        .map_err(io)?;
    if answer.len() > ANSWER_MAX {
        return Err(format!(
            "GET {target} from {addr}: answer over {ANSWER_MAX} bytes"
        ));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(format!("GET {target} from {addr}: answer cut short"));
        }
        Err(e) => return Err(format!("GET {target} from {addr}: bad answer: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let body = String::from_utf8_lossy(&answer[head..]).into_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::sync::mpsc;

    /// Generous: a test waits this long for an answer before failing, and it
    /// must outlast the server's own [`IO_TIMEOUT`].
    const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

    /// A server whose handler answers `/echo` with what it saw and sends
    /// every request it sees down the returned channel.
    fn echo_server() -> (Server, mpsc::Receiver<Request>) {
        let listener = bind("127.0.0.1:0".parse().expect("loopback")).expect("bind");
        let (seen_tx, seen) = mpsc::channel();
        let server = Server::start(listener, "test-http", move |req: &Request| {
            let _ = seen_tx.send(req.clone());
            match req.path() {
                "/echo" => Response::ok(json!({
                    "path": req.path(),
                    "query": req.query(),
                    "params": req.params(),
                })),
                "/teapot" => Response::error(418, "short and stout"),
                path => Response::not_found(path, &["/echo"]),
            }
        })
        .expect("start");
        (server, seen)
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        s
    }

    /// Sends `raw`, reads to the end, and splits the answer into status,
    /// head and JSON body.
    #[track_caller]
    fn send(addr: SocketAddr, raw: &[u8]) -> (u16, String, Value) {
        let mut s = connect(addr);
        s.write_all(raw).expect("sending the request");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("reading the answer");
        let text = String::from_utf8(answer).expect("UTF-8 answer");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        // Each header line ends in CRLF, the last one too.
        let head = format!("{head}\r\n");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let length = format!("Content-Length: {}\r\n", body.len());
        assert!(
            head.contains(&length),
            "{head:?} for a {}-byte body",
            body.len()
        );
        assert!(head.contains("Connection: close\r\n"), "{head:?}");
        assert!(
            head.contains("Content-Type: application/json\r\n"),
            "{head:?}"
        );
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        (status, head, body)
    }

    #[track_caller]
    fn get(addr: SocketAddr, target: &str) -> (u16, Value) {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let (status, _, body) = send(addr, raw.as_bytes());
        (status, body)
    }

    #[test]
    fn a_get_reaches_the_handler_with_its_query_parsed() {
        let (server, seen) = echo_server();
        let (status, body) = get(server.addr(), "/echo?qps=200&sum=40%2C000&name=a+b&qps=7");
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({
                "path": "/echo",
                "query": "qps=200&sum=40%2C000&name=a+b&qps=7",
                "params": [["qps", "200"], ["sum", "40,000"], ["name", "a b"], ["qps", "7"]],
            })
        );
        let req = seen.recv_timeout(CLIENT_TIMEOUT).expect("the handler ran");
        assert_eq!(req.param("qps"), Some("7"), "the last one wins");
        assert_eq!(req.param("name"), Some("a b"));
        assert_eq!(req.param("nope"), None);
        server.stop();
    }

    #[test]
    fn unknown_paths_get_a_404_listing_the_paths() {
        let (server, _seen) = echo_server();
        let (status, head, body) = send(server.addr(), b"GET /nowhere?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head:?}");
        assert_eq!(
            body,
            json!({"error": "no such path /nowhere", "paths": ["/echo"]})
        );
        // A status without a listed reason still makes a valid status line.
        let (status, head, body) = send(server.addr(), b"GET /teapot HTTP/1.1\r\n\r\n");
        assert_eq!((status, body), (418, json!({"error": "short and stout"})));
        assert!(head.starts_with("HTTP/1.1 418 \r\n"), "{head:?}");
        server.stop();
    }

    #[test]
    fn garbage_gets_a_400_and_the_next_client_is_served() {
        let (server, seen) = echo_server();
        for garbage in [
            &b"\x00\x01\xff garbage\r\n\r\n"[..],
            b"GET /echo HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /echo\r\n\r\n",
        ] {
            let (status, _, body) = send(server.addr(), garbage);
            assert_eq!(status, 400, "{garbage:?}: {body}");
            let error = body["error"].as_str().expect("an error string");
            assert!(error.starts_with("bad request: "), "{error}");
        }
        assert_eq!(get(server.addr(), "/echo").0, 200);
        // Only the last request was a GET the handler had to see.
        assert_eq!(seen.try_iter().count(), 1);
        server.stop();
    }

    #[test]
    fn methods_other_than_get_get_a_405() {
        let (server, seen) = echo_server();
        for method in ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"] {
            let raw = format!("{method} /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            let (status, _, body) = send(server.addr(), raw.as_bytes());
            assert_eq!(status, 405, "{method}");
            assert_eq!(body, json!({"error": "only GET is served"}), "{method}");
        }
        assert_eq!(seen.try_iter().count(), 0, "the handler saw none of them");
        server.stop();
    }

    #[test]
    fn an_oversize_request_gets_a_431() {
        let (server, seen) = echo_server();
        let mut raw = b"GET /echo?".to_vec();
        raw.resize(REQUEST_MAX + 1000, b'a');
        let (status, _, body) = send(server.addr(), &raw);
        assert_eq!(status, 431, "{body}");
        assert_eq!(body, json!({"error": "request too large"}));
        // Just under the cap is fine.
        let head = " HTTP/1.1\r\n\r\n";
        let mut target = "/echo?a=".to_owned();
        target.extend(std::iter::repeat_n(
            'b',
            REQUEST_MAX - 4 - target.len() - head.len(),
        ));
        let raw = format!("GET {target}{head}");
        assert_eq!(raw.len(), REQUEST_MAX);
        let (status, _, body) = send(server.addr(), raw.as_bytes());
        assert_eq!(status, 200);
        assert_eq!(
            body["params"][0][1].as_str().map(str::len),
            Some(target.len() - 8)
        );
        assert_eq!(seen.try_iter().count(), 1);
        server.stop();
    }

    #[test]
    fn a_silent_client_times_out_and_the_next_one_is_served() {
        let (server, _seen) = echo_server();
        // Held beside the others, it is closed at its header deadline
        // without an answer; the request after it does not wait for that.
        let mut silent = connect(server.addr());
        // This one closes halfway through its request: no answer either.
        let mut halfway = connect(server.addr());
        halfway.write_all(b"GET /echo HT").expect("sending half");
        halfway.shutdown(Shutdown::Write).expect("half close");
        let (status, body) = get(server.addr(), "/echo?after=silence");
        assert_eq!(status, 200);
        assert_eq!(body["query"], "after=silence");
        for (who, s) in [("silent", &mut silent), ("halfway", &mut halfway)] {
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)
                .unwrap_or_else(|e| panic!("the {who} client is closed: {e}"));
            assert!(answer.is_empty(), "{who}: {answer:?}");
        }
        server.stop();
    }

    #[test]
    fn idle_connections_at_the_cap_do_not_keep_a_request_out() {
        let (server, _seen) = echo_server();
        let addr = server.addr();
        // More idle connections than the cap: the oldest are evicted.
        let idle: Vec<TcpStream> = (0..CONNS_MAX + 20).map(|_| connect(addr)).collect();
        let (status, body) = get(addr, "/echo?past=idle");
        assert_eq!(status, 200, "{body}");
        drop(idle);
        server.stop();
    }

    #[test]
    fn a_client_that_does_not_read_its_answer_is_closed_at_the_write_deadline() {
        let listener = bind("127.0.0.1:0".parse().expect("loopback")).expect("bind");
        let counters = listener.counters();
        // An answer far larger than any socket buffers: half the budget.
        let server = Server::start(listener, "test-http", |req: &Request| match req.path() {
            "/big" => Response::text("text/plain", "x".repeat(ANSWERS_BYTES_MAX / 2)),
            _ => Response::ok(json!({"small": true})),
        })
        .expect("start");
        let mut stuck = connect(server.addr());
        stuck
            .write_all(b"GET /big HTTP/1.1\r\n\r\n")
            .expect("sending");
        // Served while the non-reader's answer is stuck.
        let (status, _, body) = send(server.addr(), b"GET /small HTTP/1.1\r\n\r\n");
        assert_eq!((status, body), (200, json!({"small": true})));
        // A second big answer would pass the answers' budget (two halves
        // and their heads): a 503 instead, counted.
        let (status, _, body) = send(server.addr(), b"GET /big HTTP/1.1\r\n\r\n");
        assert_eq!(status, 503, "{body}");
        assert_eq!(counters.shed.load(Ordering::Relaxed), 1);
        let start = Instant::now();
        while counters.write_timeouts.load(Ordering::Relaxed) == 0 {
            assert!(
                start.elapsed() < CLIENT_TIMEOUT,
                "the non-reader was not closed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stuck);
        server.stop();
    }

    #[test]
    fn a_guarded_route_needs_the_token_and_others_stay_open() {
        let listener = bind("127.0.0.1:0".parse().expect("loopback")).expect("bind");
        let counters = listener.counters();
        let token = ControlToken::new(" 0123456789abcdef-token\n").expect("a token");
        assert_eq!(token.as_str(), "0123456789abcdef-token", "trimmed");
        let guard = Guard {
            token: Some(token.clone()),
            paths: &["/change"],
        };
        let server = Server::start_guarded(listener, "test-http", guard, |req: &Request| {
            Response::ok(json!({ "path": req.path() }))
        })
        .expect("start");
        let ask = |auth: &str| {
            let raw = format!("GET /change?x=1 HTTP/1.1\r\n{auth}\r\n");
            let (status, head, body) = send(server.addr(), raw.as_bytes());
            (status, head, body)
        };
        let (status, head, body) = ask("");
        assert_eq!(status, 401, "{body}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head:?}");
        assert_eq!(
            ask("Authorization: Bearer 0123456789abcdef-tokeX\r\n").0,
            401
        );
        assert_eq!(ask("Authorization: Bearer 0123456789abcdef\r\n").0, 401);
        assert_eq!(
            ask("Authorization: Basic 0123456789abcdef-token\r\n").0,
            401
        );
        assert_eq!(
            ask("authorization: bearer 0123456789abcdef-token\r\n").0,
            200
        );
        assert_eq!(get(server.addr(), "/open").0, 200, "an unguarded path");
        assert_eq!(counters.unauthorized.load(Ordering::Relaxed), 4);
        // The client side sends it.
        let addr = server.addr().to_string();
        let answer = super::get_with_token(&addr, "/change", CLIENT_TIMEOUT, Some(&token));
        assert_eq!(answer.map(|a| a.0), Ok(200));
        server.stop();
    }

    #[test]
    fn token_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hongbao-http-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("0123456789abcdef0123\n", 0o600);
        assert_eq!(
            ControlToken::from_file(&path).map(|t| t.as_str().to_owned()),
            Ok("0123456789abcdef0123".to_owned())
        );
        write("0123456789abcdef0123\n", 0o644);
        let err = ControlToken::from_file(&path).expect_err("world-readable");
        assert!(err.contains("chmod 600"), "{err}");
        for bad in ["", " \n", "short", "has a space inside it"] {
            write(bad, 0o600);
            let err = ControlToken::from_file(&path).expect_err(bad);
            assert!(err.contains("token"), "{err}");
        }
        let err = ControlToken::from_file(&dir.join("missing")).expect_err("missing");
        assert!(
            err.contains("missing") && err.contains("chmod 600"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stop_returns_and_closes_the_listener() {
        let (server, _seen) = echo_server();
        let addr = server.addr();
        assert_eq!(get(addr, "/echo").0, 200);
        server.stop();
        // The listener went with the loop: nobody answers on the port now.
        let refused = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT);
        assert!(refused.is_err(), "{addr} still accepts after stop");
        // Dropping a server stops it too (or this test would not end).
        let (server, _seen) = echo_server();
        drop(server);
    }

    #[test]
    fn a_taken_port_fails_at_bind() {
        let first = bind("127.0.0.1:0".parse().expect("loopback")).expect("bind");
        let addr = first.local_addr().expect("addr");
        let err = bind(addr).expect_err("a second bind of the same port");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }

    #[test]
    fn parse_never_panics_and_sorts_what_it_sees() {
        assert_eq!(parse(b""), Parsed::Partial);
        assert_eq!(parse(b"GET /a?b=c HTTP/1.1\r\n"), Parsed::Partial);
        assert_eq!(
            parse(b"GET /a?b=c HTTP/1.1\r\n\r\n"),
            Parsed::Get(Request::new("/a?b=c"))
        );
        assert!(matches!(parse(b"HEAD / HTTP/1.1\r\n\r\n"), Parsed::Refused(r) if r.status == 405));
        assert!(matches!(parse(b"\r\n\x00"), Parsed::Refused(r) if r.status == 400));
        // Every prefix and a spread of byte soups: an answer or "more", never
        // a panic.
        let request = b"GET /echo?x=%zz&&=&y HTTP/1.1\r\nHost: h\r\nA: \xff\r\n\r\n";
        for end in 0..=request.len() {
            let _ = parse(&request[..end]);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let len = rng.usize(0..64);
            let soup: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = parse(&soup);
        }
    }

    #[test]
    fn request_new_splits_and_decodes() {
        let r = Request::new("/qps?qps=1%30&x&=v&k=");
        assert_eq!(r.path(), "/qps");
        assert_eq!(r.query(), "qps=1%30&x&=v&k=");
        assert_eq!(r.param("qps"), Some("10"));
        assert_eq!(r.param("x"), Some(""));
        assert_eq!(r.param(""), Some("v"));
        assert_eq!(r.param("k"), Some(""));
        let bare = Request::new("/status");
        assert_eq!(
            (bare.path(), bare.query(), bare.params()),
            ("/status", "", &[][..])
        );
        // Only the first '?' splits; the path is not decoded.
        let r = Request::new("/a%20b?c=d?e");
        assert_eq!((r.path(), r.param("c")), ("/a%20b", Some("d?e")));
    }
}
