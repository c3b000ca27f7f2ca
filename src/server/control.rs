//! The server's HTTP control routes, compatible with the original's.
//!
//! Owns: the route table. `GET /yaohongbao?qps=Q&sum=S` starts a batch of S
//! envelopes at Q per second (replacing the running one); `GET /stats`
//! returns the last closed seconds; `GET /status` the totals and the running
//! batch; `GET /seconds` (the monitor's) and `GET /metrics` (Prometheus
//! text) are answered by [`crate::monitor::source`]. Answers are JSON
//! unless said otherwise. Must not: touch the cores' data; it talks to the
//! generator through its command channel and reads the stats the aggregator
//! publishes once a second. The HTTP itself (listener, thread, parsing, 400,
//! 405, limits) is [`crate::http`]'s.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::json;

use crate::generator::{Command, Schedule};
use crate::http::{self, Listener, Request, Response};
use crate::server::Published;

/// Largest batch rate accepted: a million envelopes a second is far past any
/// real use and keeps a typo from flooding the rings at once.
const BATCH_RATE_MAX: u64 = 1_000_000;
/// How long a route waits for the generator to answer a command; as long as
/// a client is given to take its answer.
const GENERATOR_TIMEOUT: Duration = http::IO_TIMEOUT;
/// The paths served, listed in a 404.
const PATHS: &[&str] = &[
    "/yaohongbao?qps=Q&sum=S",
    "/stats",
    "/status",
    "/seconds",
    "/metrics",
];

/// The running control loop.
#[derive(Debug)]
pub struct ControlServer {
    /// Where it listens.
    pub addr: SocketAddr,
    server: http::Server,
}

/// Binds the control address (done before any thread starts, so a taken
/// port fails the start cleanly).
pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
    http::bind(addr)
}

impl ControlServer {
    /// Starts serving on a listener from [`bind`].
    pub fn start(
        listener: Listener,
        generator: Sender<Command>,
        published: Arc<Mutex<Published>>,
    ) -> io::Result<ControlServer> {
        let server = http::Server::start(listener, "hongbao-http", move |req| {
            route(req, &generator, &published)
        })?;
        Ok(ControlServer {
            addr: server.addr(),
            server,
        })
    }

    /// Stops the loop and waits for it.
    pub fn stop(self) {
        self.server.stop();
    }
}

fn route(req: &Request, generator: &Sender<Command>, published: &Mutex<Published>) -> Response {
    match req.path() {
        "/yaohongbao" => start_batch(req, generator),
        "/stats" => {
            let p = Published::lock(published);
            Response::ok(json!({ "seconds": p.recent }))
        }
        "/seconds" | "/metrics" => crate::monitor::source::server_route(req, published),
        "/status" => {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let batch = generator
                .send(Command::Status(reply))
                .ok()
                .and_then(|()| answer.recv_timeout(GENERATOR_TIMEOUT).ok());
            let p = Published::lock(published);
            Response::ok(json!({ "total": p.total, "batch": batch }))
        }
        path => Response::not_found(path, PATHS),
    }
}

fn start_batch(req: &Request, generator: &Sender<Command>) -> Response {
    let qps = req.param("qps").map(str::parse::<u64>);
    let sum = req.param("sum").map(str::parse::<u64>);
    let (qps, sum) = match (qps, sum) {
        (Some(Ok(q)), Some(Ok(s))) if (1..=BATCH_RATE_MAX).contains(&q) => (q, s),
        _ => {
            return Response::error(
                400,
                format!(
                    "need qps in 1..={BATCH_RATE_MAX} and sum, both whole numbers: /yaohongbao?qps=200&sum=40000"
                ),
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
        .and_then(|()| answer.recv_timeout(GENERATOR_TIMEOUT).ok())
    {
        Some(started) => {
            Response::ok(json!({"ok": true, "qps": qps, "sum": sum, "replaced": started.replaced}))
        }
        None => Response::error(503, "the generator is not running"),
    }
}
