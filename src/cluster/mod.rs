//! The cluster engine: hongbao's shared state in Redis Cluster 7, reached
//! through one synchronous connection per engine thread.
//!
//! Owns: the key names (`keys`), the function library (`hongbao.lua` and
//! its version, in `library`; loaded on every primary by
//! [`Engine::load_functions`]), the typed calls
//! on it (`engine`), the push note's text (`note`), the errors (`error`).
//! Must not: run on a core loop (each call blocks for a round trip), know
//! about connections, sessions or the ledger, or wait without a deadline.
//!
//! # Functions, their keys, and why one hash tag each
//!
//! Redis Cluster runs a function on the primary of its keys' slot, and
//! refuses keys of two slots in one call. A function is atomic (Redis runs
//! it to its end before any other command) only over the keys of one
//! primary, so each function's keys share one hash tag (the text in
//! braces, which alone decides the slot): a packet's four keys under
//! `{p:ID}`, a user's two under `{u:USER}`, the budget's three under
//! `{budget}`. Packets, users and nodes spread over the primaries; the
//! budget is one slot, touched a few times a second per node.
//!
//! | function | keys | writes |
//! |---|---|---|
//! | `hb_version` | none | none (no-writes) |
//! | `hb_create` | `hb:{p:ID}`, `:t`, `:c`, `:s` | the packet hash, targets, shares; PEXPIREAT expiry + 1 day |
//! | `hb_claim` | `hb:{p:ID}`, `:t`, `:c`, `:s` | paid: pops a share, records user -> cents, remaining and left down; repeat: `repeats` + 1 |
//! | `hb_expire` | `hb:{p:ID}`, `:c` | refunded = remaining, remaining = 0 (once) |
//! | `hb_packet` | `hb:{p:ID}`, `:t`, `:c`, `:s` | none (no-writes) |
//! | `hb_login` | `hb:{u:USER}`, `:m` | presence (node, since); prunes expired notes |
//! | `hb_logout` | `hb:{u:USER}` | presence removed if it is this node's |
//! | `hb_route` | `hb:{u:USER}`, `:m` | the note into the mailbox, capped |
//! | `hb_delivered` | `hb:{u:USER}:m` | the note out of the mailbox |
//! | `hb_budget_set` | `hb:{budget}` | epoch + 1, qps, total, leased = 0 |
//! | `hb_lease` | `hb:{budget}`, `:nodes`, `:req` | leased + grant, the node's heartbeat and last request |
//!
//! Plain commands, each on one key: `INCRBY hb:{ids}` (packet ids), `XADD`,
//! `XREADGROUP`, `XACK` on `hb:{n:NODE}:push` (a node's pushes), `HMGET
//! hb:{budget}`, `HSET`/`PEXPIREAT` and `HEXISTS` of `routed` on
//! `hb:{p:ID}` (a packet's pushes all routed), `WAIT` (on the primaries of a batch's packets, or every primary past
//! `WAIT_SLOTS_MAX` slots).
//!
//! Every function is idempotent (the client retries after MOVED, ASK,
//! TRYAGAIN or a failover): a retried create is `Exists`, a retried claim a
//! repeat with the same cents, a retried expire refunds nothing, a retried
//! lease returns the same grant. `hb_budget_set` is a reset, and a retried
//! set resets again. `XADD` is not: a push may arrive twice.

mod engine;
mod error;
pub mod keys;
mod library;
mod note;

pub use engine::{
    BudgetState, ClaimOutcome, ClaimReq, Created, Engine, EngineConfig, EnginePacket, Lease,
    LoadOutcome, PacketState, Routed, StreamPush,
};
pub use error::EngineError;
pub use library::{LIBRARY, LIBRARY_VERSION};
pub use note::PushNote;
