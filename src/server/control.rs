//! HTTP control, compatible with the original's, on its own small loop.
//!
//! Owns: the control listener and its thread. `GET /yaohongbao?qps=Q&sum=S`
//! starts a batch of S envelopes at Q per second (replacing the running one);
//! `GET /stats` returns the last closed seconds; `GET /status` the totals and
//! the running batch. Answers are JSON. Must not: touch the cores' data; it
//! talks to the generator through its command channel and reads the stats the
//! aggregator publishes once a second.
//!
//! Requests are parsed with httparse. One request per connection, handled in
//! turn with short timeouts: this is a control plane for operators and
//! scripts, not a data path.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::{Value, json};

use crate::generator::{Command, Schedule};
use crate::server::Published;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// A request must fit this; control requests are one short line.
const REQUEST_MAX: usize = 8 * 1024;
/// A client gets this long to send its request and take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest batch rate accepted: a million envelopes a second is far past any
/// real use and keeps a typo from flooding the rings at once.
const BATCH_RATE_MAX: u64 = 1_000_000;

/// The running control loop.
pub struct ControlServer {
    /// Where it listens.
    pub addr: SocketAddr,
    waker: Arc<Waker>,
    thread: std::thread::JoinHandle<()>,
}

/// Binds the control address (done before any thread starts, so a taken
/// port fails the start cleanly).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
}

impl ControlServer {
    /// Starts serving on a listener from [`bind`].
    pub fn start(
        mut listener: TcpListener,
        generator: Sender<Command>,
        published: Arc<Mutex<Published>>,
    ) -> io::Result<ControlServer> {
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let thread = std::thread::Builder::new()
            .name("hongbao-http".into())
            .spawn(move || serve(poll, listener, generator, published))?;
        Ok(ControlServer {
            addr,
            waker,
            thread,
        })
    }

    /// Stops the loop and waits for it.
    pub fn stop(self) {
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

fn serve(
    mut poll: Poll,
    listener: TcpListener,
    generator: Sender<Command>,
    published: Arc<Mutex<Published>>,
) {
    let mut events = Events::with_capacity(16);
    loop {
        if let Err(e) = poll.poll(&mut events, None)
            && e.kind() != io::ErrorKind::Interrupted
        {
            eprintln!("hongbao: http control stopped: polling failed: {e}");
            return;
        }
        for event in events.iter() {
            if event.token() == WAKER {
                return;
            }
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    // One short exchange at a time, blocking with timeouts.
                    let _ = handle(stream, &generator, &published);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

fn handle(
    stream: mio::net::TcpStream,
    generator: &Sender<Command>,
    published: &Arc<Mutex<Published>>,
) -> io::Result<()> {
    let fd = std::os::fd::OwnedFd::from(stream);
    let mut stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; REQUEST_MAX];
    let mut filled = 0;
    let (status, body) = loop {
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                break route(
                    req.method.unwrap_or(""),
                    req.path.unwrap_or(""),
                    generator,
                    published,
                );
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => {}
            Ok(httparse::Status::Partial) => {
                break (431, json!({"error": "request too large"}));
            }
            Err(e) => break (400, json!({"error": format!("bad request: {e}")})),
        }
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn route(
    method: &str,
    target: &str,
    generator: &Sender<Command>,
    published: &Arc<Mutex<Published>>,
) -> (u16, Value) {
    if method != "GET" {
        return (405, json!({"error": "only GET is served"}));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/yaohongbao" => start_batch(query, generator),
        "/stats" => {
            let p = Published::lock(published);
            (200, json!({ "seconds": p.recent }))
        }
        "/status" => {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let batch = generator
                .send(Command::Status(reply))
                .ok()
                .and_then(|()| answer.recv_timeout(IO_TIMEOUT).ok());
            let p = Published::lock(published);
            (200, json!({ "total": p.total, "batch": batch }))
        }
        _ => (
            404,
            json!({"error": format!("no such path {path}"), "paths": ["/yaohongbao?qps=Q&sum=S", "/stats", "/status"]}),
        ),
    }
}

fn start_batch(query: &str, generator: &Sender<Command>) -> (u16, Value) {
    let mut qps = None;
    let mut sum = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "qps" => qps = Some(v.parse::<u64>()),
            "sum" => sum = Some(v.parse::<u64>()),
            _ => {}
        }
    }
    let (qps, sum) = match (qps, sum) {
        (Some(Ok(q)), Some(Ok(s))) if (1..=BATCH_RATE_MAX).contains(&q) => (q, s),
        _ => {
            return (
                400,
                json!({"error": format!("need qps in 1..={BATCH_RATE_MAX} and sum, both whole numbers: /yaohongbao?qps=200&sum=40000")}),
            );
        }
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    let cmd = Command::StartBatch {
        schedule: Schedule {
            rate: qps,
            total: Some(sum),
        },
        reply,
    };
    match generator
        .send(cmd)
        .ok()
        .and_then(|()| answer.recv_timeout(IO_TIMEOUT).ok())
    {
        Some(started) => (
            200,
            json!({"ok": true, "qps": qps, "sum": sum, "replaced": started.replaced}),
        ),
        None => (503, json!({"error": "the generator is not running"})),
    }
}
