//! The server's HTTP control routes, compatible with the original's.
//!
//! Owns: the route table. `GET /yaohongbao?qps=Q&sum=S` starts a batch of S
//! envelopes at Q per second (replacing the running one);
//! `GET /fahongbao?qps=Q&sum=S&min=A&max=B` a batch of S sent packets at Q
//! per second, each for 3 random users in A..=B (optionally `claimants`,
//! `cents_min`, `cents_max`); `GET /packet?amount=C&users=U1,U2,…` (or
//! `&claimants=N&min=A&max=B`) makes one packet now and answers its id once
//! it is durable; `GET /stats` returns the last closed seconds; `GET
//! /status` the totals and the running batches; `GET /seconds` (the
//! monitor's) and `GET /metrics` (Prometheus text) are answered by
//! [`super::published`]. Answers are JSON
//! unless said otherwise. With `--control-token-file`, the routes that change
//! anything ([`MUTATING`]) need `Authorization: Bearer TOKEN` (401 without);
//! the read-only ones stay open to the monitor. `/status` also reports the
//! control's own counters (`control`) and the workers' connection cap
//! (`conns_cap`: `--conns-max`, or the open-file limit less the descriptors
//! kept for the control and the ledger). Must not: touch the cores' data; it
//! talks to the generator through its command channel and reads the stats
//! the aggregator publishes once a second. The HTTP itself (listener, thread,
//! parsing, 400, 401, 405, limits) is [`crate::http`]'s.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde_json::json;

use super::engine::{EngineRequest, EngineStatus};
use super::published::{self, Published};
use crate::generator::{Command, PacketSpec, PacketUsers, Schedule};
use crate::http::{self, ControlToken, Counters, Guard, Listener, Request, Response};
use crate::ids::UserId;
use crate::ledger::books::CLAIMANTS_MAX;

/// Largest batch rate accepted: a million envelopes a second is far past any
/// real use and keeps a typo from flooding the rings at once.
const BATCH_RATE_MAX: u64 = 1_000_000;
/// How long a route waits for the generator to answer a command; as long as
/// a client is given to take its answer. The handler runs on the control
/// loop's thread, so this bounds how long one request can hold the others.
const GENERATOR_TIMEOUT: Duration = http::IO_TIMEOUT;
/// The routes that change state: guarded by `--control-token-file`.
pub const MUTATING: &[&str] = &["/yaohongbao", "/fahongbao", "/packet"];
/// The paths served, listed in a 404.
const PATHS: &[&str] = &[
    "/yaohongbao?qps=Q&sum=S",
    "/fahongbao?qps=Q&sum=S&min=A&max=B",
    "/packet?amount=C&users=U1,U2",
    "/stats",
    "/status",
    "/seconds",
    "/metrics",
];
/// The original's packet amounts, cents.
const PACKET_CENTS_DEFAULT: (u64, u64) = (10, 309);
/// The original's claimants per packet.
const PACKET_CLAIMANTS_DEFAULT: u16 = 3;

/// Cluster mode: what the control asks of and reads from the engine thread.
#[derive(Clone, Debug)]
pub struct ClusterControl {
    /// This node's id.
    pub node: u32,
    /// Requests to the engine thread (`/yaohongbao` sets the fleet's budget).
    pub requests: Sender<EngineRequest>,
    /// The engine threads' counters, shown by `/status`.
    pub status: Arc<EngineStatus>,
}

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
    /// Starts serving on a listener from [`bind`]; with `token`, the
    /// [`MUTATING`] routes need it. `conns_cap` is the workers' connection
    /// cap, reported by `/status`.
    pub fn start(
        listener: Listener,
        token: Option<ControlToken>,
        generator: Sender<Command>,
        published: Arc<Mutex<Published>>,
        conns_cap: usize,
        cluster: Option<ClusterControl>,
    ) -> io::Result<ControlServer> {
        let counters = listener.counters();
        let guard = Guard {
            token,
            paths: MUTATING,
        };
        let server = http::Server::start_guarded(listener, "hongbao-http", guard, move |req| {
            route(
                req,
                &generator,
                &published,
                &counters,
                conns_cap,
                cluster.as_ref(),
            )
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

fn route(
    req: &Request,
    generator: &Sender<Command>,
    published: &Mutex<Published>,
    control: &Counters,
    conns_cap: usize,
    cluster: Option<&ClusterControl>,
) -> Response {
    match req.path() {
        "/yaohongbao" => match cluster {
            Some(c) => set_budget(req, c),
            None => start_batch(req, generator),
        },
        "/fahongbao" => start_packets(req, generator),
        "/packet" => create_packet(req, generator),
        "/stats" => {
            let p = Published::lock(published);
            Response::ok(json!({ "seconds": p.recent }))
        }
        "/seconds" => published::route(req, published),
        "/metrics" => {
            let engine = cluster.map(|c| c.status.report(c.node));
            published::metrics_route(published, conns_cap, engine.as_ref())
        }
        "/status" => {
            let batch = ask(generator, Command::Status);
            let p = Published::lock(published);
            let (envelopes, packets) = batch.unzip();
            let mut status = json!({
                "total": p.total,
                "batch": envelopes,
                "packets": packets,
                "conns_cap": conns_cap,
                "control": control.to_json(),
            });
            if let Some(c) = cluster {
                status["cluster"] = json!(c.status.report(c.node));
            }
            Response::ok(status)
        }
        path => Response::not_found(path, PATHS),
    }
}

/// Sends the generator the command `make` builds around a reply channel,
/// and waits for its answer: `None` when the generator is gone or does not
/// answer within [`GENERATOR_TIMEOUT`].
fn ask<T>(generator: &Sender<Command>, make: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
    // One answer per command, so a channel of one never makes the
    // generator wait.
    let (reply, answer) = crossbeam_channel::bounded(1);
    generator.send(make(reply)).ok()?;
    answer.recv_timeout(GENERATOR_TIMEOUT).ok()
}

/// `qps` and `sum` of `/yaohongbao`, or the 400 that says what they must be.
fn batch_params(req: &Request) -> Result<(u64, u64), Response> {
    let qps = req.param("qps").map(str::parse::<u64>);
    let sum = req.param("sum").map(str::parse::<u64>);
    match (qps, sum) {
        (Some(Ok(q)), Some(Ok(s))) if (1..=BATCH_RATE_MAX).contains(&q) => Ok((q, s)),
        _ => Err(Response::error(
            400,
            format!(
                "need qps in 1..={BATCH_RATE_MAX} and sum, both whole numbers: /yaohongbao?qps=200&sum=40000"
            ),
        )),
    }
}

/// Cluster mode: `/yaohongbao` sets the fleet's envelope budget in the
/// engine (every node leases from it within 200 ms).
fn set_budget(req: &Request, cluster: &ClusterControl) -> Response {
    let (qps, sum) = match batch_params(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    let sent = cluster.requests.try_send(EngineRequest::SetBudget {
        qps,
        total: sum,
        reply,
    });
    if sent.is_err() {
        return Response::error(503, "the engine thread is busy or not running");
    }
    match answer.recv_timeout(GENERATOR_TIMEOUT) {
        Ok(Ok(epoch)) => Response::ok(json!({
            "ok": true, "qps": qps, "sum": sum, "cluster": true, "epoch": epoch
        })),
        Ok(Err(why)) => Response::error(503, format!("the cluster's engine: {why}")),
        Err(_) => Response::error(503, "the cluster's engine did not answer in time"),
    }
}

fn start_batch(req: &Request, generator: &Sender<Command>) -> Response {
    let (qps, sum) = match batch_params(req) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let schedule = Schedule {
        rate: qps,
        total: Some(sum),
    };
    match ask(generator, |reply| Command::StartBatch { schedule, reply }) {
        Some(started) => {
            Response::ok(json!({"ok": true, "qps": qps, "sum": sum, "replaced": started.replaced}))
        }
        None => Response::error(503, "the generator is not running"),
    }
}

/// Reads an optional whole-number parameter; `Err` names it when malformed.
fn number<T: std::str::FromStr>(req: &Request, name: &'static str) -> Result<Option<T>, String> {
    match req.param(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} must be a whole number, not {v:?}")),
    }
}

/// The users part of a packet request: `users=U1,U2,…`, or `claimants`
/// drawn from `min..=max`.
fn packet_users(req: &Request, claimants_default: u16) -> Result<(u16, PacketUsers), String> {
    if let Some(list) = req.param("users") {
        let mut users = Vec::new();
        for u in list.split(',') {
            let u: u32 = u
                .trim()
                .parse()
                .map_err(|_| format!("users must be user ids separated by commas, not {u:?}"))?;
            if users.contains(&UserId(u)) {
                return Err(format!("user {u} is named twice"));
            }
            users.push(UserId(u));
        }
        let n = users.len();
        if !(1..=usize::from(CLAIMANTS_MAX)).contains(&n) {
            return Err(format!("a packet names 1..={CLAIMANTS_MAX} users, not {n}"));
        }
        return Ok((n as u16, PacketUsers::List(users)));
    }
    let claimants = number::<u16>(req, "claimants")?.unwrap_or(claimants_default);
    if !(1..=CLAIMANTS_MAX).contains(&claimants) {
        return Err(format!("claimants must be 1..={CLAIMANTS_MAX}"));
    }
    let (Some(min), Some(max)) = (number::<u32>(req, "min")?, number::<u32>(req, "max")?) else {
        return Err("need users=U1,U2,… or min and max (the range users are drawn from)".into());
    };
    if min > max || u64::from(max - min) + 1 < u64::from(claimants) {
        return Err(format!(
            "min..=max must hold at least {claimants} users (the claimants)"
        ));
    }
    Ok((claimants, PacketUsers::Range { min, max }))
}

/// Checks an amount range against the claimants and the wire's u32.
fn packet_cents(min: u64, max: u64, claimants: u16) -> Result<(), String> {
    if min < u64::from(claimants) || min > max || max > u64::from(u32::MAX) {
        return Err(format!(
            "amounts must give each of the {claimants} claimants a cent and fit the wire's u32: \
             {claimants} <= cents_min <= cents_max <= {}",
            u32::MAX
        ));
    }
    Ok(())
}

fn start_packets(req: &Request, generator: &Sender<Command>) -> Response {
    let parsed = (|| -> Result<(Schedule, PacketSpec), String> {
        let qps = number::<u64>(req, "qps")?.filter(|q| (1..=BATCH_RATE_MAX).contains(q));
        let sum = number::<u64>(req, "sum")?;
        let (Some(qps), Some(sum)) = (qps, sum) else {
            return Err(format!(
                "need qps in 1..={BATCH_RATE_MAX} and sum: /fahongbao?qps=10&sum=100&min=0&max=9999"
            ));
        };
        let (claimants, users) = packet_users(req, PACKET_CLAIMANTS_DEFAULT)?;
        let cents_min = number(req, "cents_min")?.unwrap_or(PACKET_CENTS_DEFAULT.0);
        let cents_max = number(req, "cents_max")?.unwrap_or(PACKET_CENTS_DEFAULT.1);
        packet_cents(cents_min, cents_max, claimants)?;
        Ok((
            Schedule {
                rate: qps,
                total: Some(sum),
            },
            PacketSpec {
                cents_min,
                cents_max,
                claimants,
                users,
            },
        ))
    })();
    let (schedule, spec) = match parsed {
        Ok(p) => p,
        Err(why) => return Response::error(400, why),
    };
    let started = ask(generator, |reply| Command::StartPackets {
        schedule,
        spec,
        reply,
    });
    match started {
        Some(replaced) => Response::ok(json!({
            "ok": true, "qps": schedule.rate, "sum": schedule.total, "replaced": replaced
        })),
        None => Response::error(503, "the generator is not running"),
    }
}

fn create_packet(req: &Request, generator: &Sender<Command>) -> Response {
    let parsed = (|| -> Result<PacketSpec, String> {
        let Some(amount) = number::<u64>(req, "amount")? else {
            return Err("need amount (cents) and users=U1,U2,… or claimants, min and max".into());
        };
        let (claimants, users) = packet_users(req, PACKET_CLAIMANTS_DEFAULT)?;
        packet_cents(amount, amount, claimants)?;
        Ok(PacketSpec {
            cents_min: amount,
            cents_max: amount,
            claimants,
            users,
        })
    })();
    let spec = match parsed {
        Ok(s) => s,
        Err(why) => return Response::error(400, why),
    };
    match ask(generator, |reply| Command::CreatePacket { spec, reply }) {
        Some(Some(id)) => Response::ok(json!({ "ok": true, "packet": id })),
        _ => Response::error(
            503,
            "no packet made: the generator or the ledger is not running, or (cluster mode) the \
             cluster's engine is unreachable (GET /status, \"cluster\")",
        ),
    }
}
