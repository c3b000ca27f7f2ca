//! One synchronous connection to the engine (Redis Cluster) and every call
//! hongbao makes on it.
//!
//! Owns: `Engine` (a `redis::cluster::ClusterConnection`, reconnected after
//! a retryable error), `EngineConfig`, the typed requests and answers of
//! each function of `hongbao.lua`, the loading of that library. Must not:
//! wait without a deadline (every read and write has the configured
//! timeout; `wait_replicas` and `read_pushes` raise it by their own bound
//! for that call only), retry a refused call, sleep, or be called from a
//! core loop (engine threads only: each call blocks for a round trip).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection, cluster_pipe};
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ConnectionLike, Value, cmd};

pub use super::error::EngineError;
use super::keys::{self, PacketKeys, UserKeys};
use super::library::{LIBRARY, LIBRARY_VERSION};
pub use super::note::PushNote;
use crate::ids::{Cents, PacketId, UserId};

/// Distinct slots a batch's WAIT is sent to one by one; past this, one WAIT
/// on every primary instead.
pub(crate) const WAIT_SLOTS_MAX: usize = 8;

/// How to reach the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Seed nodes, `redis://HOST:PORT`: the client reads the topology from
    /// the first that answers, so give several (a dead seed is skipped).
    pub urls: Vec<String>,
    /// The longest one TCP connect to a node may take.
    pub connect_timeout: Duration,
    /// The longest one reply may take (and one write may block).
    pub response_timeout: Duration,
}

impl EngineConfig {
    /// A node on loopback answers in microseconds; a second covers a
    /// remote one and a busy machine, yet a dead one is noticed quickly.
    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// A claim's function runs in microseconds, but every write is fsynced
    /// (`appendfsync always`) before the reply: two seconds cover a slow
    /// disk; longer and a stuck primary would hold claims that long.
    pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

    /// `redis://H:P[,redis://H:P...]` (a bare `H:P` is taken as
    /// `redis://H:P`), with the default timeouts.
    pub fn parse(list: &str) -> Result<EngineConfig, EngineError> {
        let mut urls = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let rest = item.strip_prefix("redis://").unwrap_or(item);
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(['/', '@', ' '])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok || (item.contains("://") && !item.starts_with("redis://")) {
                return Err(EngineError::Invalid(format!(
                    "--cluster: {item:?} is not redis://HOST:PORT (a comma-separated list of Redis Cluster nodes, e.g. redis://127.0.0.1:7000,redis://127.0.0.1:7001)"
                )));
            }
            urls.push(format!("redis://{rest}"));
        }
        if urls.is_empty() {
            return Err(EngineError::Invalid(
                "--cluster: no node given (e.g. redis://127.0.0.1:7000,redis://127.0.0.1:7001)"
                    .into(),
            ));
        }
        Ok(EngineConfig {
            urls,
            connect_timeout: Self::CONNECT_TIMEOUT,
            response_timeout: Self::RESPONSE_TIMEOUT,
        })
    }
}

/// What [`Engine::load_functions`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOutcome {
    /// The library version now on every primary (this binary's).
    pub version: u32,
    /// Primaries checked.
    pub primaries: u32,
    /// Primaries the library was loaded on (absent or older there); 0 when
    /// every primary had it already.
    pub loaded: u32,
}

/// A packet to create in the engine, its split already computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnginePacket {
    /// Its id, from [`Engine::reserve_packet_ids`].
    pub id: PacketId,
    /// Its amount: the shares' sum, at most the wire's u32.
    pub amount: Cents,
    /// When it expires (Unix ms): claims from then on get 0, and
    /// [`Engine::expire`] refunds what is left.
    pub expires_ms: u64,
    /// The node that created it.
    pub creator: u32,
    /// Who may claim it, each once.
    pub targets: Vec<UserId>,
    /// The shares, one per target, each at least a cent, paid in this order
    /// to whoever claims first, second, ...
    pub shares: Vec<Cents>,
}

/// What [`Engine::create_packet`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The packet is new.
    New,
    /// A packet with this id and amount was there already (a retry).
    Exists,
}

/// One claim to decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimReq {
    /// The packet claimed.
    pub packet: PacketId,
    /// Who claims.
    pub user: UserId,
    /// The claiming node's clock (Unix ms), against the packet's expiry.
    pub now_ms: u64,
}

/// How the engine decided a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// A first claim: this share is now the user's.
    Paid(Cents),
    /// Paid before: the same amount again.
    Repeat(Cents),
    /// The user is not a target: 0.
    Stranger,
    /// No such packet: 0.
    Unknown,
    /// Expired or refunded: 0.
    Expired,
}

impl ClaimOutcome {
    /// What the claimant is answered.
    pub fn cents(&self) -> Cents {
        match *self {
            ClaimOutcome::Paid(c) | ClaimOutcome::Repeat(c) => c,
            ClaimOutcome::Stranger | ClaimOutcome::Unknown | ClaimOutcome::Expired => Cents(0),
        }
    }
}

/// A packet as the engine holds it, for the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketState {
    /// Its amount.
    pub amount: Cents,
    /// Not yet paid nor refunded.
    pub remaining: Cents,
    /// The refund, once expired and refunded.
    pub refunded: Option<Cents>,
    /// How many may claim it.
    pub claimants: u32,
    /// Its expiry (Unix ms).
    pub expires_ms: u64,
    /// The node that created it.
    pub creator: u32,
    /// Repeat claims answered (each a write, so that WAIT covers it).
    pub repeats: u64,
    /// The paid claims, by user id.
    pub claims: Vec<(UserId, Cents)>,
    /// Its targets, by user id.
    pub targets: Vec<UserId>,
}

/// The fleet's envelope budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetState {
    /// Bumped by each [`Engine::set_budget`]; 0 before the first.
    pub epoch: u64,
    /// Envelopes per second, fleet-wide.
    pub qps: u64,
    /// Envelopes this epoch may issue, fleet-wide.
    pub total: u64,
    /// Envelopes leased to nodes this epoch (never above `total`).
    pub leased: u64,
}

/// A node's lease of envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The epoch the grant belongs to: a node drops what it holds of an
    /// older one.
    pub epoch: u64,
    /// Envelopes granted now (0 when the budget is spent).
    pub granted: u64,
    /// The epoch's rate, fleet-wide.
    pub qps: u64,
    /// The epoch's total.
    pub total: u64,
    /// Leased so far this epoch, this grant included.
    pub leased: u64,
    /// Nodes that leased in the last 3 s, this one included: a node's share
    /// of the rate is `qps / live_nodes`.
    pub live_nodes: u32,
}

/// Where [`Engine::route_push`] found the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The node the user is online at (send the push on its stream), or
    /// None (the mailbox keeps it for their login).
    pub online_at: Option<u32>,
    /// Notes the mailbox dropped to stay within its cap.
    pub dropped: u32,
}

/// A push read from a node's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPush {
    /// The stream entry's id, to acknowledge once delivered.
    pub id: String,
    /// The user to push to.
    pub user: UserId,
    /// What to push.
    pub note: PushNote,
}

/// Where a consumer's reading of a push stream stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cursor {
    /// Re-reading this consumer's entries delivered before and not
    /// acknowledged (after a restart), from after this id.
    Pending(String),
    /// Reading new entries (`>`).
    New,
}

/// Ids handed out per [`Engine::reserve_packet_ids`] at most: a node needs
/// a few a second; a cap keeps a bad request from burning the id space.
pub(crate) const PACKET_IDS_PER_RESERVE_MAX: u32 = 1 << 20;
/// Packet ids run 1..=ID_SPAN, then 1 again: never 0 (the wire's "none"),
/// and never u32::MAX, so that a batch is a `Range<u32>`.
const ID_SPAN: u64 = u32::MAX as u64 - 1;
/// Budgets and amounts stay below 2^53, where the functions' Lua numbers
/// are exact.
const LUA_EXACT_MAX: u64 = 1 << 53;
/// How often the client itself retries a call that met a topology change
/// (MOVED, TRYAGAIN, CLUSTERDOWN), and the wait between tries: a claim
/// waits at most ~3 × 100 ms this way before the engine answers
/// `Unavailable` and the caller decides.
const CLIENT_RETRIES: u32 = 3;
const CLIENT_RETRY_WAIT_MS: u64 = 100;
/// Attempts of a call: after a retryable error, once more at once on a new
/// connection. Every call is idempotent, and most such errors are a
/// failover the old connection had not seen; past that the caller decides.
const CALL_TRIES: u32 = 2;
/// Attempts of a `WAIT`: one. WAIT counts the writes of the connection it
/// runs on, so on a new connection it would confirm writes no replica has.
const WAIT_TRIES: u32 = 1;

/// A connection to the engine. Not shared between threads: each engine
/// thread holds its own.
pub struct Engine {
    client: ClusterClient,
    /// None after a retryable error: the next call reconnects, which
    /// rereads the topology from the seeds (a failover moves slots).
    conn: Option<ClusterConnection>,
    config: EngineConfig,
    /// Push streams whose consumer group this engine has made sure of.
    groups: HashSet<u32>,
    /// Per (node, consumer): where reading its stream stands.
    cursors: HashMap<(u32, String), Cursor>,
    /// Malformed notes met (and skipped) in mailboxes and streams.
    malformed_notes: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("urls", &self.config.urls)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Connects to the cluster and checks that every primary says
    /// `cluster_state:ok`.
    pub fn connect(config: &EngineConfig) -> Result<Engine, EngineError> {
        let urls = config.urls.join(",");
        let client = ClusterClientBuilder::new(config.urls.clone())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(CLIENT_RETRIES)
            .min_retry_wait(CLIENT_RETRY_WAIT_MS)
            .max_retry_wait(CLIENT_RETRY_WAIT_MS + 1)
            .build()
            .map_err(|e| {
                EngineError::Invalid(format!(
                    "setting up the Redis Cluster client for {urls}: {e}; check --cluster"
                ))
            })?;
        let mut engine = Engine {
            client,
            conn: None,
            config: config.clone(),
            groups: HashSet::new(),
            cursors: HashMap::new(),
            malformed_notes: 0,
        };
        engine.connection().map_err(|e| {
            EngineError::Unavailable(format!(
                "connecting to Redis Cluster at {urls}: {e}; start it with tools/cluster.sh up, or check --cluster"
            ))
        })?;
        let states = engine.on_primaries("CLUSTER INFO", cmd("CLUSTER").arg("INFO"))?;
        for (addr, info) in states {
            let info = text(&info, "CLUSTER INFO")?;
            let state = info
                .lines()
                .find_map(|l| l.trim().strip_prefix("cluster_state:"))
                .unwrap_or("unknown");
            if state != "ok" {
                return Err(EngineError::Unavailable(format!(
                    "Redis Cluster node {addr} says cluster_state:{state}: wait for the cluster to recover (tools/cluster.sh status shows each node)"
                )));
            }
        }
        Ok(engine)
    }

    /// Malformed notes met in mailboxes and push streams and skipped (a
    /// stream's are acknowledged, so that they are not read again).
    pub fn malformed_notes(&self) -> u64 {
        self.malformed_notes
    }

    /// Makes sure every primary runs this binary's function library: loads
    /// it (FUNCTION LOAD REPLACE) where it is absent or older, refuses when
    /// one runs a newer one. Replicas get it from their primary.
    pub fn load_functions(&mut self) -> Result<LoadOutcome, EngineError> {
        let listed = self.on_primaries(
            "FUNCTION LIST",
            cmd("FUNCTION")
                .arg("LIST")
                .arg("LIBRARYNAME")
                .arg("hongbao"),
        )?;
        let mut stale = Vec::new();
        let primaries = listed.len() as u32;
        for (addr, libs) in listed {
            let present = !items(&libs, "FUNCTION LIST")?.is_empty();
            let version = if present {
                let v = self.on_node(&addr, "hb_version", cmd("FCALL").arg("hb_version").arg(0))?;
                Some(int(&v, "hb_version")?)
            } else {
                None
            };
            match version {
                Some(v) if v > i64::from(LIBRARY_VERSION) => {
                    return Err(EngineError::VersionNewer {
                        loaded: u32::try_from(v).unwrap_or(u32::MAX),
                        ours: LIBRARY_VERSION,
                    });
                }
                Some(v) if v == i64::from(LIBRARY_VERSION) => {}
                _ => stale.push(addr),
            }
        }
        for addr in &stale {
            self.on_node(
                addr,
                "FUNCTION LOAD",
                cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(LIBRARY),
            )?;
        }
        Ok(LoadOutcome {
            version: LIBRARY_VERSION,
            primaries,
            loaded: stale.len() as u32,
        })
    }

    /// Reserves `n` packet ids, unique across the fleet: the next `n`
    /// values of one counter, mapped onto 1..=u32::MAX-1. Never 0; past
    /// u32::MAX-1 the ids start again at 1, and a batch that would straddle
    /// that point is cut short there (fewer than `n`; ask again). So the
    /// wire's u32 id bounds how long a packet may live fleet-wide: it must
    /// be gone (expired, refunded, and its keys' extra day over) before the
    /// fleet has created 2^32 - 2 packets more. At 50,000 packets/s that is
    /// about 23 hours.
    pub fn reserve_packet_ids(&mut self, n: u32) -> Result<Range<u32>, EngineError> {
        if n == 0 {
            return Ok(1..1);
        }
        if n > PACKET_IDS_PER_RESERVE_MAX {
            return Err(EngineError::Invalid(format!(
                "reserve_packet_ids({n}): at most {PACKET_IDS_PER_RESERVE_MAX} at once"
            )));
        }
        let after = self.run("INCRBY ids", |c| {
            c.req_command(cmd("INCRBY").arg(keys::IDS).arg(n))
        })?;
        let after = u64::try_from(int(&after, "INCRBY ids")?)
            .map_err(|_| EngineError::BadReply("the packet id counter is negative".into()))?;
        Ok(id_range(after, n))
    }

    /// Creates a packet (hb_create). A second call with the same id and
    /// amount is [`Created::Exists`]; with another amount, an error.
    pub fn create_packet(&mut self, p: &EnginePacket) -> Result<Created, EngineError> {
        check_packet(p)?;
        let k = PacketKeys::new(p.id);
        let mut c = fcall("hb_create", &[&k.hash, &k.targets, &k.claims, &k.shares]);
        c.arg(p.id.0)
            .arg(p.amount.0)
            .arg(p.expires_ms)
            .arg(p.creator)
            .arg(p.targets.len());
        for t in &p.targets {
            c.arg(t.0);
        }
        for s in &p.shares {
            c.arg(s.0);
        }
        let v = self.run("hb_create", |conn| conn.req_command(&c))?;
        match text(&v, "hb_create")?.as_str() {
            "created" => Ok(Created::New),
            "exists" => Ok(Created::Exists),
            other => Err(EngineError::BadReply(format!(
                "hb_create answered {other:?}"
            ))),
        }
    }

    /// Marks packet `p` as routed to every target (the field `routed` of
    /// its hash), so that a node replaying it after a restart, or retrying
    /// a create whose answer it lost, knows whether its pushes went out.
    /// The packet's expiry is set again with it: the field never outlives
    /// the packet, nor makes a hash without one (a packet whose keys are
    /// gone by `now_ms` is not marked).
    pub(crate) fn mark_routed(&mut self, p: &EnginePacket, now_ms: u64) -> Result<(), EngineError> {
        let keep = p.expires_ms.saturating_add(keys::PACKET_KEEP_MS);
        if keep <= now_ms {
            return Ok(());
        }
        let k = PacketKeys::new(p.id);
        let mut pipe = cluster_pipe();
        pipe.add_command(cmd("HSET").arg(&k.hash).arg("routed").arg(1).clone());
        pipe.add_command(cmd("PEXPIREAT").arg(&k.hash).arg(keep).clone());
        self.run("mark routed", |c| pipe.query::<Vec<Value>>(c))?;
        Ok(())
    }

    /// Whether packet `id` was marked routed ([`Engine::mark_routed`]).
    pub(crate) fn is_routed(&mut self, id: PacketId) -> Result<bool, EngineError> {
        let k = PacketKeys::new(id);
        let mut c = cmd("HEXISTS");
        c.arg(&k.hash).arg("routed");
        let v = self.run("HEXISTS routed", |conn| conn.req_command(&c))?;
        Ok(int(&v, "HEXISTS routed")? == 1)
    }

    /// Decides a batch of claims (hb_claim each), pipelined: one round trip
    /// per primary involved. Answers in the batch's order. An error is the
    /// whole batch's, though some of its claims may have been decided:
    /// none of them may be answered "paid", and retrying them is safe (a
    /// decided one comes back as a repeat with the same cents).
    pub fn claims(&mut self, batch: &[ClaimReq]) -> Result<Vec<ClaimOutcome>, EngineError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = batch.iter().map(|r| {
            let k = PacketKeys::new(r.packet);
            let mut c = fcall("hb_claim", &[&k.hash, &k.targets, &k.claims, &k.shares]);
            c.arg(r.user.0).arg(r.now_ms);
            c
        });
        let replies = self.pipelined("hb_claim", cmds)?;
        replies.iter().map(claim_outcome).collect()
    }

    /// Waits until every primary's writes from this connection are on at
    /// least `replicas` replicas, or `timeout` passes on a primary (WAIT on
    /// each primary, in turn). Returns the fewest replicas any primary
    /// reached: below `replicas` means not confirmed. Blocks up to about
    /// `timeout` per primary.
    pub fn wait_replicas(&mut self, replicas: u32, timeout: Duration) -> Result<u32, EngineError> {
        // WAIT 0 would block forever.
        let ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        let mut c = cmd("WAIT");
        c.arg(replicas).arg(ms);
        // Once only: WAIT counts the writes of the connection it runs on,
        // so on a fresh connection (the retry of `run`) it would count none
        // and answer at once, confirming writes no replica has. A failure
        // is the caller's: it decides the batch again (repeats are writes
        // on the new connection, which the next WAIT then covers).
        let v =
            self.with_read_timeout_tries(timeout, WAIT_TRIES, "WAIT", |conn| conn.req_command(&c))?;
        let n = int(&v, "WAIT")?;
        Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
    }

    /// As [`Engine::wait_replicas`], but only on the primaries that hold
    /// `packets` (WAIT routed by each packet's slot): a primary that lost
    /// its replica (a failover, until a replica is back) then holds up the
    /// claims of its own shard only, not the fleet's. Past
    /// [`WAIT_SLOTS_MAX`] distinct slots, every primary (one WAIT each
    /// beats many on the same few primaries).
    pub(crate) fn wait_replicas_for(
        &mut self,
        packets: &[PacketId],
        replicas: u32,
        timeout: Duration,
    ) -> Result<u32, EngineError> {
        let mut routes: Vec<Route> = Vec::new();
        for &p in packets {
            let r = Route::with_key(PacketKeys::new(p).hash, SlotAddr::Master);
            if !routes.contains(&r) {
                routes.push(r);
                if routes.len() > WAIT_SLOTS_MAX {
                    return self.wait_replicas(replicas, timeout);
                }
            }
        }
        let ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u64;
        let mut c = cmd("WAIT");
        c.arg(replicas).arg(ms);
        let mut fewest = u32::MAX;
        for route in routes {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            // Once only, as in `wait_replicas`.
            let v = self.with_read_timeout_tries(timeout, WAIT_TRIES, "WAIT", |conn| {
                conn.route_command(&c, routing.clone())
            })?;
            let n = u32::try_from(int(&v, "WAIT")?.max(0)).unwrap_or(u32::MAX);
            fewest = fewest.min(n);
            if fewest < replicas {
                break;
            }
        }
        Ok(fewest)
    }

    /// Refunds what is left of an expired packet (hb_expire): the cents
    /// refunded by this call (0 when all was claimed), or None when it is
    /// unknown, not yet expired at `now_ms`, or refunded before.
    pub fn expire(&mut self, packet: PacketId, now_ms: u64) -> Result<Option<Cents>, EngineError> {
        let k = PacketKeys::new(packet);
        let mut c = fcall("hb_expire", &[&k.hash, &k.claims]);
        c.arg(now_ms);
        let v = self.run("hb_expire", |conn| conn.req_command(&c))?;
        let n = int(&v, "hb_expire")?;
        Ok(u64::try_from(n).ok().map(Cents))
    }

    /// A packet's whole state (hb_packet), None when the engine has no such
    /// packet (never created, or its keys' day past expiry is over).
    pub fn packet(&mut self, packet: PacketId) -> Result<Option<PacketState>, EngineError> {
        let k = PacketKeys::new(packet);
        let c = fcall("hb_packet", &[&k.hash, &k.targets, &k.claims, &k.shares]);
        let v = self.run("hb_packet", |conn| conn.req_command(&c))?;
        packet_state(&v)
    }

    /// Sets the fleet's budget (hb_budget_set): a new epoch, nothing leased
    /// yet. Returns the epoch.
    pub fn set_budget(&mut self, qps: u64, total: u64) -> Result<u64, EngineError> {
        if qps >= LUA_EXACT_MAX || total >= LUA_EXACT_MAX {
            return Err(EngineError::Invalid(format!(
                "set_budget({qps}, {total}): each must be below 2^53"
            )));
        }
        let mut c = fcall("hb_budget_set", &[keys::BUDGET, keys::BUDGET_TOTALS]);
        c.arg(qps).arg(total);
        let v = self.run("hb_budget_set", |conn| conn.req_command(&c))?;
        nonneg(&v, "hb_budget_set")
    }

    /// Every budget epoch's total (epoch -> envelopes), for the audit.
    pub(crate) fn budget_totals(
        &mut self,
    ) -> Result<std::collections::HashMap<u64, u64>, EngineError> {
        let mut c = cmd("HGETALL");
        c.arg(keys::BUDGET_TOTALS);
        let v = self.run("HGETALL budget totals", |conn| conn.req_command(&c))?;
        let f = items(&v, "HGETALL budget totals")?;
        let mut out = std::collections::HashMap::new();
        for pair in f.chunks(2) {
            let [k, t] = pair else {
                return Err(EngineError::BadReply(format!(
                    "HGETALL budget totals: {v:?}"
                )));
            };
            out.insert(nonneg(k, "budget epoch")?, nonneg(t, "budget total")?);
        }
        Ok(out)
    }

    /// The budget as it stands (zeros before the first set).
    pub fn budget(&mut self) -> Result<BudgetState, EngineError> {
        let mut c = cmd("HMGET");
        c.arg(keys::BUDGET)
            .arg("epoch")
            .arg("qps")
            .arg("total")
            .arg("leased");
        let v = self.run("HMGET budget", |conn| conn.req_command(&c))?;
        let f = items(&v, "HMGET budget")?;
        if f.len() != 4 {
            return Err(EngineError::BadReply(format!("HMGET budget: {v:?}")));
        }
        let field = |i: usize| -> Result<u64, EngineError> {
            match &f[i] {
                Value::Nil => Ok(0),
                x => nonneg(x, "budget field"),
            }
        };
        Ok(BudgetState {
            epoch: field(0)?,
            qps: field(1)?,
            total: field(2)?,
            leased: field(3)?,
        })
    }

    /// Leases up to `want` envelopes for `node` (hb_lease). `seq` numbers
    /// the node's requests: a retry with the same `seq` returns the same
    /// grant without leasing again; a `seq` older than the last gets 0.
    pub fn lease(
        &mut self,
        node: u32,
        seq: u64,
        want: u64,
        now_ms: u64,
    ) -> Result<Lease, EngineError> {
        if want >= LUA_EXACT_MAX || seq >= LUA_EXACT_MAX {
            return Err(EngineError::Invalid(format!(
                "lease(want {want}, seq {seq}): each must be below 2^53"
            )));
        }
        let mut c = fcall(
            "hb_lease",
            &[keys::BUDGET, keys::BUDGET_NODES, keys::BUDGET_REQ],
        );
        c.arg(node).arg(seq).arg(want).arg(now_ms);
        let v = self.run("hb_lease", |conn| conn.req_command(&c))?;
        let f = items(&v, "hb_lease")?;
        if f.len() != 6 {
            return Err(EngineError::BadReply(format!("hb_lease: {v:?}")));
        }
        Ok(Lease {
            epoch: nonneg(&f[0], "hb_lease epoch")?,
            granted: nonneg(&f[1], "hb_lease granted")?,
            qps: nonneg(&f[2], "hb_lease qps")?,
            total: nonneg(&f[3], "hb_lease total")?,
            leased: nonneg(&f[4], "hb_lease leased")?,
            live_nodes: u32::try_from(nonneg(&f[5], "hb_lease live")?).unwrap_or(u32::MAX),
        })
    }

    /// Marks each user online at `node` (hb_login), pipelined, and returns
    /// each one's undelivered notes (kept until [`Engine::delivered`]),
    /// earliest expiry first. A malformed note is skipped and counted
    /// ([`Engine::malformed_notes`]).
    pub fn logins(
        &mut self,
        batch: &[(UserId, u64)],
        node: u32,
    ) -> Result<Vec<Vec<PushNote>>, EngineError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = batch.iter().map(|&(user, now_ms)| {
            let k = UserKeys::new(user);
            let mut c = fcall("hb_login", &[&k.presence, &k.mailbox]);
            c.arg(user.0).arg(node).arg(now_ms / 1000).arg(now_ms);
            c
        });
        let replies = self.pipelined("hb_login", cmds)?;
        let mut out = Vec::with_capacity(batch.len());
        for r in &replies {
            let mut notes = Vec::new();
            for n in items(r, "hb_login")? {
                match PushNote::decode(&text(n, "hb_login note")?) {
                    Ok(note) => notes.push(note),
                    Err(_) => self.malformed_notes += 1,
                }
            }
            out.push(notes);
        }
        Ok(out)
    }

    /// Marks `user` offline (hb_logout) when they are online at `node`;
    /// true when they were. A login on another node since is left alone.
    pub fn logout(&mut self, user: UserId, node: u32) -> Result<bool, EngineError> {
        Ok(self.logouts(&[user], node)? == 1)
    }

    /// [`Engine::logout`] of each of `users` from `node`, pipelined: one
    /// round trip per primary involved. Returns how many were online at
    /// `node` (and no longer are).
    pub fn logouts(&mut self, users: &[UserId], node: u32) -> Result<u64, EngineError> {
        if users.is_empty() {
            return Ok(0);
        }
        let cmds = users.iter().map(|&user| {
            let mut c = fcall("hb_logout", &[&UserKeys::new(user).presence]);
            c.arg(node);
            c
        });
        let replies = self.pipelined("hb_logout", cmds)?;
        let mut out = 0;
        for r in &replies {
            out += nonneg(r, "hb_logout")?;
        }
        Ok(out)
    }

    /// Puts `note` in `user`'s mailbox (capped at `mailbox_max`, the
    /// earliest-expiring dropped) and says where the user is online
    /// (hb_route). The mailbox keeps the note until [`Engine::delivered`],
    /// so a push outlives the node it was sent to.
    pub fn route_push(
        &mut self,
        user: UserId,
        note: &PushNote,
        mailbox_max: u32,
    ) -> Result<Routed, EngineError> {
        let mut one = self.route_pushes(&[user], note, mailbox_max)?;
        one.pop()
            .ok_or_else(|| EngineError::BadReply("hb_route: no answer".into()))
    }

    /// [`Engine::route_push`] of one note to each of `users`, pipelined:
    /// one round trip per primary involved, not one per user (each round
    /// trip is a write the primary fsyncs). Answers in `users`' order. An
    /// error is the whole call's, though some users may have been routed:
    /// routing them again is harmless (the mailbox keeps one entry per
    /// note, and a note already there drops nothing).
    pub fn route_pushes(
        &mut self,
        users: &[UserId],
        note: &PushNote,
        mailbox_max: u32,
    ) -> Result<Vec<Routed>, EngineError> {
        if mailbox_max == 0 {
            return Err(EngineError::Invalid("route_pushes: mailbox_max 0".into()));
        }
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = note.encode();
        let cmds = users.iter().map(|&user| {
            let k = UserKeys::new(user);
            let mut c = fcall("hb_route", &[&k.presence, &k.mailbox]);
            c.arg(&encoded).arg(note.expires_s).arg(mailbox_max);
            c
        });
        let replies = self.pipelined("hb_route", cmds)?;
        replies.iter().map(routed).collect()
    }

    /// Appends a push for `user` to node `node`'s stream (XADD, capped at
    /// about `keys::PUSH_STREAM_MAXLEN`). Delivery is at least once: a
    /// retried send may add the entry twice.
    pub fn send_push(
        &mut self,
        node: u32,
        user: UserId,
        note: &PushNote,
    ) -> Result<(), EngineError> {
        self.send_pushes(&[(node, user)], note)
    }

    /// [`Engine::send_push`] of one note for each `(node, user)`,
    /// pipelined: one round trip per primary involved. A retried call may
    /// add some entries twice (delivery is at least once).
    pub fn send_pushes(
        &mut self,
        pushes: &[(u32, UserId)],
        note: &PushNote,
    ) -> Result<(), EngineError> {
        if pushes.is_empty() {
            return Ok(());
        }
        let encoded = note.encode();
        let cmds = pushes.iter().map(|&(node, user)| {
            let mut c = cmd("XADD");
            c.arg(keys::push_stream(node))
                .arg("MAXLEN")
                .arg("~")
                .arg(keys::PUSH_STREAM_MAXLEN)
                .arg("*")
                .arg("u")
                .arg(user.0)
                .arg("n")
                .arg(&encoded);
            c
        });
        self.pipelined("XADD push", cmds)?;
        Ok(())
    }

    /// Removes the notes of `note`'s packet from `user`'s mailbox (hb_delivered:
    /// by packet, as a core knows the push frame, not its expiry); true when
    /// one was there.
    pub fn delivered(&mut self, user: UserId, note: &PushNote) -> Result<bool, EngineError> {
        Ok(self.delivered_many(&[(user, *note)])? >= 1)
    }

    /// [`Engine::delivered`] for each `(user, note)`, pipelined: one round
    /// trip per primary involved. Returns how many notes left mailboxes.
    pub fn delivered_many(&mut self, items: &[(UserId, PushNote)]) -> Result<u64, EngineError> {
        if items.is_empty() {
            return Ok(0);
        }
        let cmds = items.iter().map(|(user, note)| {
            let mut c = fcall("hb_delivered", &[&UserKeys::new(*user).mailbox]);
            c.arg(note.packet.0);
            c
        });
        let replies = self.pipelined("hb_delivered", cmds)?;
        let mut removed = 0;
        for r in &replies {
            removed += nonneg(r, "hb_delivered")?;
        }
        Ok(removed)
    }

    /// Reads up to `count` pushes from node `node`'s stream as `consumer`
    /// of the group `hongbao` (created, with the stream, on first use). The
    /// first reads of this engine return the consumer's entries delivered
    /// before and not acknowledged (a restart re-reads them), without
    /// blocking; then new entries, blocking up to `block` (zero: no block)
    /// when there are none. A malformed entry is acknowledged, skipped and
    /// counted.
    pub fn read_pushes(
        &mut self,
        node: u32,
        consumer: &str,
        block: Duration,
        count: usize,
    ) -> Result<Vec<StreamPush>, EngineError> {
        if count == 0 || consumer.is_empty() {
            return Err(EngineError::Invalid(
                "read_pushes: count 0 or an empty consumer".into(),
            ));
        }
        self.ensure_group(node)?;
        let read = self.read_group(node, consumer, block, count);
        if let Err(EngineError::Script(e)) = &read
            && e.contains("NOGROUP")
        {
            // The stream or its group is gone (a failover before they
            // reached the replica): made again on the next call.
            self.groups.remove(&node);
            return Err(EngineError::Unavailable(e.clone()));
        }
        read
    }

    fn read_group(
        &mut self,
        node: u32,
        consumer: &str,
        block: Duration,
        count: usize,
    ) -> Result<Vec<StreamPush>, EngineError> {
        let key = keys::push_stream(node);
        let cursor = self
            .cursors
            .entry((node, consumer.to_string()))
            .or_insert_with(|| Cursor::Pending("0".into()))
            .clone();
        if let Cursor::Pending(from) = cursor {
            let c = xreadgroup(&key, consumer, count, None, &from);
            let v = self.run("XREADGROUP pending", |conn| conn.req_command(&c))?;
            let (pushes, last) = self.stream_entries(node, &v)?;
            let next = match last {
                Some(id) => Cursor::Pending(id),
                None => Cursor::New,
            };
            self.cursors.insert((node, consumer.to_string()), next);
            if !pushes.is_empty() {
                return Ok(pushes);
            }
        }
        let block_ms = (!block.is_zero()).then(|| block.as_millis().max(1) as u64);
        let c = xreadgroup(&key, consumer, count, block_ms, ">");
        let v = self.with_read_timeout(block, "XREADGROUP", |conn| conn.req_command(&c))?;
        Ok(self.stream_entries(node, &v)?.0)
    }

    /// Acknowledges delivered pushes of node `node`'s stream (XACK).
    pub fn ack_pushes(&mut self, node: u32, ids: &[String]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = cmd("XACK");
        c.arg(keys::push_stream(node)).arg(keys::PUSH_GROUP);
        for id in ids {
            c.arg(id.as_str());
        }
        self.run("XACK", |conn| conn.req_command(&c))?;
        Ok(())
    }

    /// The connection, made when there is none.
    fn connection(&mut self) -> Result<&mut ClusterConnection, EngineError> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection()
                .map_err(|e| EngineError::of("connecting", &e))?;
            // The builder sets the read timeout; the write timeout too, so
            // that a send to a stuck node cannot block for ever.
            conn.set_write_timeout(Some(self.config.response_timeout))
                .map_err(|e| EngineError::of("setting the write timeout", &e))?;
            self.conn = Some(conn);
        }
        // Just made, when it was None.
        self.conn
            .as_mut()
            .ok_or_else(|| EngineError::Unavailable("no connection".into()))
    }

    /// Runs `f` on the connection. After a retryable error the connection
    /// is dropped (the next call reconnects and rereads the topology) and
    /// `f` is tried once more at once: every call is idempotent, and most
    /// such errors are a failover the old connection had not seen.
    fn run<T>(
        &mut self,
        step: &str,
        f: impl FnMut(&mut ClusterConnection) -> redis::RedisResult<T>,
    ) -> Result<T, EngineError> {
        self.run_tries(step, CALL_TRIES, f)
    }

    /// `cmds` in one cluster pipeline (one round trip per primary
    /// involved), through [`Engine::run`]; one answer per command, in
    /// order, or `BadReply`.
    fn pipelined(
        &mut self,
        step: &str,
        cmds: impl IntoIterator<Item = Cmd>,
    ) -> Result<Vec<Value>, EngineError> {
        let mut pipe = cluster_pipe();
        let mut sent = 0;
        for c in cmds {
            pipe.add_command(c);
            sent += 1;
        }
        let replies = self.run(step, |c| pipe.query::<Vec<Value>>(c))?;
        if replies.len() != sent {
            return Err(EngineError::BadReply(format!(
                "{step}: {} answers to {sent} commands",
                replies.len()
            )));
        }
        Ok(replies)
    }

    /// [`Engine::run`] with `tries` attempts (1: no retry on a new
    /// connection).
    fn run_tries<T>(
        &mut self,
        step: &str,
        tries: u32,
        mut f: impl FnMut(&mut ClusterConnection) -> redis::RedisResult<T>,
    ) -> Result<T, EngineError> {
        let mut last = None;
        for _ in 0..tries {
            let conn = match self.connection() {
                Ok(c) => c,
                Err(e) => return Err(last.unwrap_or(e)),
            };
            match f(conn) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let e = EngineError::of(step, &e);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    self.conn = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| EngineError::Unavailable(step.into())))
    }

    /// [`Engine::run`] with every read allowed `extra` more than the
    /// response timeout, for a call that blocks on the server by design
    /// (WAIT, XREADGROUP BLOCK); restored after.
    fn with_read_timeout<T>(
        &mut self,
        extra: Duration,
        step: &str,
        f: impl FnMut(&mut ClusterConnection) -> redis::RedisResult<T>,
    ) -> Result<T, EngineError> {
        self.with_read_timeout_tries(extra, CALL_TRIES, step, f)
    }

    /// [`Engine::with_read_timeout`] with `tries` attempts.
    fn with_read_timeout_tries<T>(
        &mut self,
        extra: Duration,
        tries: u32,
        step: &str,
        mut f: impl FnMut(&mut ClusterConnection) -> redis::RedisResult<T>,
    ) -> Result<T, EngineError> {
        let base = self.config.response_timeout;
        let raised = base.saturating_add(extra);
        self.run_tries(step, tries, |conn| {
            conn.set_read_timeout(Some(raised))?;
            let out = f(conn);
            let restored = conn.set_read_timeout(Some(base));
            let out = out?;
            restored?;
            Ok(out)
        })
    }

    /// `c` on every primary, each answer with the primary's address.
    fn on_primaries(&mut self, step: &str, c: &Cmd) -> Result<Vec<(String, Value)>, EngineError> {
        let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let v = self.run(step, |conn| conn.route_command(c, route.clone()))?;
        let Value::Map(pairs) = v else {
            return Err(EngineError::BadReply(format!(
                "{step} on every primary: {v:?}"
            )));
        };
        pairs
            .into_iter()
            .map(|(addr, v)| Ok((text(&addr, step)?, v)))
            .collect()
    }

    /// `c` on the node at `addr` (`host:port`).
    fn on_node(&mut self, addr: &str, step: &str, c: &Cmd) -> Result<Value, EngineError> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| EngineError::BadReply(format!("a node address {addr:?}")))?;
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        self.run(step, |conn| conn.route_command(c, route.clone()))
    }

    /// Creates node `node`'s stream and group once (BUSYGROUP: both there).
    fn ensure_group(&mut self, node: u32) -> Result<(), EngineError> {
        if self.groups.contains(&node) {
            return Ok(());
        }
        let mut c = cmd("XGROUP");
        // From the stream's start: pushes sent before the group existed
        // are read too.
        c.arg("CREATE")
            .arg(keys::push_stream(node))
            .arg(keys::PUSH_GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.run("XGROUP CREATE", |conn| conn.req_command(&c)) {
            Ok(_) => {}
            Err(EngineError::Script(e)) if e.contains("BUSYGROUP") => {}
            Err(e) => return Err(e),
        }
        self.groups.insert(node);
        Ok(())
    }

    /// The entries of an XREADGROUP reply and the last id in it. Entries
    /// that are malformed, or deleted since delivered (trimmed), are
    /// acknowledged and skipped.
    fn stream_entries(
        &mut self,
        node: u32,
        v: &Value,
    ) -> Result<(Vec<StreamPush>, Option<String>), EngineError> {
        let mut pushes = Vec::new();
        let mut last = None;
        let mut skipped = Vec::new();
        let streams: Vec<&Value> = match v {
            Value::Nil => Vec::new(),
            Value::Array(s) => s.iter().collect(),
            Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
            other => return Err(EngineError::BadReply(format!("XREADGROUP: {other:?}"))),
        };
        for s in streams {
            // RESP2: [key, entries]; RESP3 maps give the entries alone.
            let entries = match items(s, "XREADGROUP stream")? {
                [_key, entries] if matches!(entries, Value::Array(_)) => {
                    items(entries, "XREADGROUP entries")?
                }
                entries => entries,
            };
            for e in entries {
                let [id, fields] = items(e, "XREADGROUP entry")? else {
                    return Err(EngineError::BadReply(format!("XREADGROUP entry {e:?}")));
                };
                let id = text(id, "stream id")?;
                last = Some(id.clone());
                match stream_push(&id, fields) {
                    Some(p) => pushes.push(p),
                    None => {
                        if !matches!(fields, Value::Nil) {
                            self.malformed_notes += 1;
                        }
                        skipped.push(id);
                    }
                }
            }
        }
        self.ack_pushes(node, &skipped)?;
        Ok((pushes, last))
    }
}

/// The ids for counter values `after - n + 1 ..= after` (n >= 1), mapped
/// onto 1..=ID_SPAN; cut at the wrap.
fn id_range(after: u64, n: u32) -> Range<u32> {
    let id = |counter: u64| (counter.wrapping_sub(1) % ID_SPAN + 1) as u32;
    let first = id(after.saturating_sub(u64::from(n) - 1).max(1));
    let last = id(after.max(1));
    if last >= first {
        first..last + 1
    } else {
        first..(ID_SPAN + 1) as u32
    }
}

/// Refuses a packet the functions would refuse, before any write.
fn check_packet(p: &EnginePacket) -> Result<(), EngineError> {
    let bad = |why: String| Err(EngineError::Invalid(format!("packet {}: {why}", p.id)));
    if p.id.0 == 0 {
        return bad("id 0".into());
    }
    if p.targets.is_empty() || p.targets.len() != p.shares.len() {
        return bad(format!(
            "{} targets, {} shares",
            p.targets.len(),
            p.shares.len()
        ));
    }
    if p.amount.0 > u64::from(u32::MAX) {
        return bad(format!("amount {} exceeds the wire's u32", p.amount));
    }
    if p.shares.iter().any(|s| s.0 == 0) {
        return bad("a share of 0 cents".into());
    }
    let sum: u64 = p.shares.iter().map(|s| s.0).sum();
    if sum != p.amount.0 {
        return bad(format!("shares sum to {sum}, not {}", p.amount));
    }
    let distinct: HashSet<UserId> = p.targets.iter().copied().collect();
    if distinct.len() != p.targets.len() {
        return bad("a target given twice".into());
    }
    Ok(())
}

/// `FCALL name numkeys keys...`, arguments to follow.
/// hb_route's answer: `{node or -1, dropped}`.
fn routed(v: &Value) -> Result<Routed, EngineError> {
    let f = items(v, "hb_route")?;
    if f.len() != 2 {
        return Err(EngineError::BadReply(format!("hb_route: {v:?}")));
    }
    let node = int(&f[0], "hb_route node")?;
    Ok(Routed {
        online_at: u32::try_from(node).ok(),
        dropped: u32::try_from(nonneg(&f[1], "hb_route dropped")?).unwrap_or(u32::MAX),
    })
}

fn fcall(name: &str, keys: &[&str]) -> Cmd {
    let mut c = cmd("FCALL");
    c.arg(name).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

fn xreadgroup(key: &str, consumer: &str, count: usize, block_ms: Option<u64>, from: &str) -> Cmd {
    let mut c = cmd("XREADGROUP");
    c.arg("GROUP")
        .arg(keys::PUSH_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(ms) = block_ms {
        c.arg("BLOCK").arg(ms);
    }
    c.arg("STREAMS").arg(key).arg(from);
    c
}

/// A stream entry's push, None when its fields are missing or malformed.
fn stream_push(id: &str, fields: &Value) -> Option<StreamPush> {
    let pairs: Vec<(String, String)> = match fields {
        Value::Array(f) => f
            .chunks(2)
            .map(|kv| match kv {
                [k, v] => Some((text(k, "").ok()?, text(v, "").ok()?)),
                _ => None,
            })
            .collect::<Option<_>>()?,
        Value::Map(m) => m
            .iter()
            .map(|(k, v)| Some((text(k, "").ok()?, text(v, "").ok()?)))
            .collect::<Option<_>>()?,
        _ => return None,
    };
    let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let user = UserId(field("u")?.parse().ok()?);
    let note = PushNote::decode(field("n")?).ok()?;
    Some(StreamPush {
        id: id.to_string(),
        user,
        note,
    })
}

fn claim_outcome(v: &Value) -> Result<ClaimOutcome, EngineError> {
    let [status, cents] = items(v, "hb_claim")? else {
        return Err(EngineError::BadReply(format!("hb_claim: {v:?}")));
    };
    let cents = Cents(nonneg(cents, "hb_claim cents")?);
    let out = match text(status, "hb_claim status")?.as_str() {
        "paid" if cents.0 > 0 => ClaimOutcome::Paid(cents),
        "repeat" if cents.0 > 0 => ClaimOutcome::Repeat(cents),
        "stranger" => ClaimOutcome::Stranger,
        "unknown" => ClaimOutcome::Unknown,
        "expired" => ClaimOutcome::Expired,
        other => {
            return Err(EngineError::BadReply(format!(
                "hb_claim answered {other:?} with {cents}"
            )));
        }
    };
    Ok(out)
}

fn packet_state(v: &Value) -> Result<Option<PacketState>, EngineError> {
    if matches!(v, Value::Nil) {
        return Ok(None);
    }
    let f = items(v, "hb_packet")?;
    let [
        amount,
        remaining,
        refunded,
        claimants,
        expires_ms,
        creator,
        repeats,
        claims,
        targets,
    ] = f
    else {
        return Err(EngineError::BadReply(format!("hb_packet: {v:?}")));
    };
    let mut claims_out = Vec::new();
    for kv in items(claims, "hb_packet claims")?.chunks(2) {
        let [user, cents] = kv else {
            return Err(EngineError::BadReply(
                "hb_packet: an odd claims list".into(),
            ));
        };
        claims_out.push((
            UserId(small(user, "hb_packet claim user")?),
            Cents(nonneg(cents, "hb_packet claim cents")?),
        ));
    }
    claims_out.sort_unstable();
    let mut targets_out = items(targets, "hb_packet targets")?
        .iter()
        .map(|t| small(t, "hb_packet target").map(UserId))
        .collect::<Result<Vec<_>, _>>()?;
    targets_out.sort_unstable();
    let refunded = int(refunded, "hb_packet refunded")?;
    Ok(Some(PacketState {
        amount: Cents(nonneg(amount, "hb_packet amount")?),
        remaining: Cents(nonneg(remaining, "hb_packet remaining")?),
        refunded: u64::try_from(refunded).ok().map(Cents),
        claimants: small(claimants, "hb_packet claimants")?,
        expires_ms: nonneg(expires_ms, "hb_packet expires_ms")?,
        creator: small(creator, "hb_packet creator")?,
        repeats: nonneg(repeats, "hb_packet repeats")?,
        claims: claims_out,
        targets: targets_out,
    }))
}

/// An integer reply (or a decimal string, as hashes hold them).
fn int(v: &Value, what: &str) -> Result<i64, EngineError> {
    match v {
        Value::Int(n) => Ok(*n),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| EngineError::BadReply(format!("{what}: {v:?} is not a number"))),
        Value::SimpleString(s) => s
            .parse()
            .map_err(|_| EngineError::BadReply(format!("{what}: {s:?} is not a number"))),
        _ => Err(EngineError::BadReply(format!(
            "{what}: {v:?} is not a number"
        ))),
    }
}

fn nonneg(v: &Value, what: &str) -> Result<u64, EngineError> {
    u64::try_from(int(v, what)?)
        .map_err(|_| EngineError::BadReply(format!("{what}: {v:?} is negative")))
}

fn small(v: &Value, what: &str) -> Result<u32, EngineError> {
    u32::try_from(int(v, what)?)
        .map_err(|_| EngineError::BadReply(format!("{what}: {v:?} is not a u32")))
}

fn text(v: &Value, what: &str) -> Result<String, EngineError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone())
            .map_err(|_| EngineError::BadReply(format!("{what}: not UTF-8"))),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::VerbatimString { text, .. } => Ok(text.clone()),
        Value::Okay => Ok("OK".into()),
        _ => Err(EngineError::BadReply(format!("{what}: {v:?} is not text"))),
    }
}

fn items<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], EngineError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(&[]),
        _ => Err(EngineError::BadReply(format!(
            "{what}: {v:?} is not a list"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_parse() {
        let c = EngineConfig::parse("redis://127.0.0.1:7000, 127.0.0.1:7001,redis://h:1/").unwrap();
        assert_eq!(
            c.urls,
            [
                "redis://127.0.0.1:7000",
                "redis://127.0.0.1:7001",
                "redis://h:1"
            ]
        );
        assert_eq!(c.connect_timeout, EngineConfig::CONNECT_TIMEOUT);
        assert_eq!(c.response_timeout, EngineConfig::RESPONSE_TIMEOUT);
        for bad in [
            "",
            ",",
            "127.0.0.1",
            "h:0",
            "h:70000",
            ":7000",
            "http://h:1",
            "redis://h",
        ] {
            let e = EngineConfig::parse(bad).unwrap_err();
            assert!(matches!(e, EngineError::Invalid(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn packet_ids_are_never_0_and_wrap_to_1() {
        assert_eq!(id_range(1, 1), 1..2);
        assert_eq!(id_range(10, 10), 1..11);
        assert_eq!(id_range(ID_SPAN, 1), u32::MAX - 1..u32::MAX);
        // Past the span, 1 again.
        assert_eq!(id_range(ID_SPAN + 1, 1), 1..2);
        assert_eq!(id_range(ID_SPAN + 5, 5), 1..6);
        // A batch across the wrap is cut there.
        assert_eq!(id_range(ID_SPAN + 2, 4), u32::MAX - 2..u32::MAX);
        // Every id of every batch is in 1..u32::MAX.
        for after in [1, 2, ID_SPAN - 1, ID_SPAN, ID_SPAN + 1, 3 * ID_SPAN + 7] {
            for n in [1, 2, 3, 1000] {
                let r = id_range(after.max(u64::from(n)), n);
                assert!(r.start >= 1 && !r.is_empty(), "{after} {n}: {r:?}");
                assert!(r.len() <= n as usize);
            }
        }
    }

    #[test]
    fn bad_packets_are_refused_before_sending() {
        let ok = EnginePacket {
            id: PacketId(1),
            amount: Cents(10),
            expires_ms: 1,
            creator: 0,
            targets: vec![UserId(1), UserId(2)],
            shares: vec![Cents(3), Cents(7)],
        };
        assert!(check_packet(&ok).is_ok());
        let cases: [fn(&mut EnginePacket); 6] = [
            |p| p.id = PacketId(0),
            |p| p.shares.pop().map(drop).unwrap_or(()),
            |p| p.shares = vec![Cents(0), Cents(10)],
            |p| p.amount = Cents(11),
            |p| p.targets = vec![UserId(1), UserId(1)],
            |p| {
                p.amount = Cents(u64::from(u32::MAX) + 1);
                p.shares = vec![Cents(1), Cents(u64::from(u32::MAX))];
            },
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut p = ok.clone();
            change(&mut p);
            assert!(
                matches!(check_packet(&p), Err(EngineError::Invalid(_))),
                "case {i}"
            );
        }
    }

    #[test]
    fn claim_replies_parse_and_odd_ones_are_errors() {
        let reply =
            |s: &str, c: i64| Value::Array(vec![Value::BulkString(s.into()), Value::Int(c)]);
        assert_eq!(
            claim_outcome(&reply("paid", 5)).unwrap(),
            ClaimOutcome::Paid(Cents(5))
        );
        assert_eq!(
            claim_outcome(&reply("repeat", 5)).unwrap().cents(),
            Cents(5)
        );
        assert_eq!(
            claim_outcome(&reply("expired", 0)).unwrap().cents(),
            Cents(0)
        );
        for bad in [
            reply("paid", 0),
            reply("paid", -1),
            reply("gift", 5),
            Value::Int(3),
        ] {
            assert!(claim_outcome(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_fields_parse_and_odd_ones_are_none() {
        let f = |kv: &[&str]| {
            Value::Array(
                kv.iter()
                    .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                    .collect(),
            )
        };
        let p = stream_push("1-0", &f(&["u", "7", "n", "1:2:3:4:5:6:7"])).unwrap();
        assert_eq!(p.user, UserId(7));
        assert_eq!(p.note.packet, PacketId(1));
        assert!(stream_push("1-0", &f(&["u", "7"])).is_none());
        assert!(stream_push("1-0", &f(&["u", "x", "n", "1:2:3:4:5:6:7"])).is_none());
        assert!(stream_push("1-0", &f(&["u", "7", "n", "junk"])).is_none());
        assert!(stream_push("1-0", &f(&["u", "7", "n"])).is_none());
        assert!(stream_push("1-0", &Value::Nil).is_none());
    }
}
