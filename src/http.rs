//! A minimal HTTP/1.1 control server: GET in, JSON out, on its own thread.
//!
//! Owns: the control listener, the thread that serves it, reading and parsing
//! one request per connection (httparse), the query string (form-urlencoded),
//! and writing the JSON answer with `Connection: close`. The server, the
//! flooder and the monitor each plug their route table in as a handler.
//! Must not: know any route, sit on a data path, or panic on any input: a
//! request it cannot parse gets a 400, one too large a 431, a method other
//! than GET a 405, each with a JSON body `{"error": "..."}`.
//!
//! One connection is served at a time, in turn, with blocking reads and
//! writes under a deadline: this is a control plane for operators and
//! scripts, a handful of requests a minute, not a data path. A client that
//! connects and sends nothing holds the loop for at most [`IO_TIMEOUT`];
//! the connections behind it wait in the listen backlog.
//!
//! Only GET is served: request bodies are never read, so a method that
//! carries one could not be answered correctly, and HEAD would need answers
//! without a body.
//!
//! The accept loop follows mio's contract: the listener is edge-triggered,
//! so every readiness event is drained with `accept` until `WouldBlock`;
//! spurious events are harmless; `Interrupted` means try again.
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
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::{Value, json};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// A request must fit this, request line and headers together: control
/// requests are one short line, and the buffer lives on the loop's stack.
pub const REQUEST_MAX: usize = 8 * 1024;
/// A client gets this long to send its whole request, and again as long to
/// take the answer. Long enough for a person typing into `nc`'s pipe from a
/// script, short enough that a silent client does not hold the loop for long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Headers parsed per request; more is a 400. Control clients send a few.
const HEADERS_MAX: usize = 32;
/// After refusing an oversize request, what the client still sends is read
/// and dropped, up to this much for at most [`DRAIN_TIMEOUT`], so that
/// closing does not reset the connection and destroy the 431 on its way.
const DRAIN_MAX: usize = 64 * 1024;
/// See [`DRAIN_MAX`]: on loopback or a LAN the rest of a request arrives in
/// well under this.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// After `accept` failed with something other than `WouldBlock` (say, out of
/// file descriptors), the backlog is tried again after this long: an
/// edge-triggered listener would not report the waiting connections again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A control listener, bound but not yet served.
///
/// Binding is a step of its own so that a taken port fails the program's
/// start-up before any of its threads run.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
}

/// Binds `addr` for a control server (non-blocking, `SO_REUSEADDR`).
pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
    Ok(Listener {
        inner: TcpListener::bind(addr)?,
    })
}

impl Listener {
    /// The address bound, with the port the OS chose for port 0.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A GET request as the handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    path: String,
    query: String,
    params: Vec<(String, String)>,
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
        }
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
        let mut out = Vec::with_capacity(160 + body.len());
        // Writing into a Vec cannot fail. Answers are never cached: every
        // route reports the state of a running process.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
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
            Parsed::Get(Request::new(req.path.unwrap_or("")))
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
    /// with `handler`.
    ///
    /// The handler runs on that thread, one request at a time; it should
    /// answer quickly (a slow one delays the requests behind it) and must
    /// not panic: a panic ends the thread, and the control with it.
    pub fn start<H>(listener: Listener, name: &str, handler: H) -> io::Result<Server>
    where
        H: Fn(&Request) -> Response + Send + 'static,
    {
        let mut listener = listener.inner;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let label = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || serve(poll, listener, &label, handler))?;
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

    /// Stops the loop, closes the listener and waits for the thread. Prompt
    /// between requests; a request being served finishes first (at most
    /// [`IO_TIMEOUT`] to read it and as long to write the answer).
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

/// The loop: wait for connections or the waker; serve each connection in
/// turn until the backlog is empty.
fn serve<H>(mut poll: Poll, listener: TcpListener, name: &str, handler: H)
where
    H: Fn(&Request) -> Response,
{
    let mut events = Events::with_capacity(16);
    let mut timeout = None;
    loop {
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("hongbao: {name} stopped: polling failed: {e}");
            return;
        }
        if events.iter().any(|event| event.token() == WAKER) {
            return;
        }
        timeout = None;
        loop {
            match listener.accept() {
                // A failed exchange concerns that client alone: it timed
                // out, reset, or went away. Nothing to tell anyone.
                Ok((stream, _)) => {
                    let _ = exchange(stream, &handler);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    timeout = Some(ACCEPT_RETRY);
                    break;
                }
            }
        }
    }
}

/// One connection: read a request, answer it, close.
fn exchange<H>(stream: mio::net::TcpStream, handler: &H) -> io::Result<()>
where
    H: Fn(&Request) -> Response,
{
    let mut stream = std::net::TcpStream::from(OwnedFd::from(stream));
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; REQUEST_MAX];
    let mut filled = 0;
    let (response, oversize) = loop {
        let n = read_before(&mut stream, &mut buf[filled..], deadline)?;
        if n == 0 {
            // Closed before a whole request: nobody to answer.
            return Ok(());
        }
        filled += n;
        match parse(&buf[..filled]) {
            Parsed::Partial if filled < buf.len() => {}
            Parsed::Partial => break (Response::error(431, "request too large"), true),
            Parsed::Get(request) => break (handler(&request), false),
            Parsed::Refused(response) => break (response, false),
        }
    };
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(&response.to_bytes())?;
    if oversize {
        drain(&mut stream);
    }
    Ok(())
}

/// Reads into `buf`, giving up at `deadline` (a total for the request, so a
/// client sending a byte at a time cannot hold the loop for long either).
fn read_before(
    stream: &mut std::net::TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Says we are done writing, then reads and drops what the client still
/// sends (bounded), so the close is orderly and the answer arrives.
fn drain(stream: &mut std::net::TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_MAX {
        match read_before(stream, &mut sink, deadline) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
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
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
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
        // Accepted first (the backlog is first in, first out), it holds the
        // loop until its deadline, then is closed without an answer.
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
