//! The engine's key names, the one place they are spelled.
//!
//! Owns: every Redis key and the stream's consumer group. Must not: talk to
//! Redis. Each group of keys that one function touches shares one hash tag
//! (the part in braces), so that Redis Cluster puts them in one slot, on
//! one primary, where the function runs atomically.

use crate::ids::{PacketId, UserId};

/// The packet ids' counter (a string; INCRBY reserves a batch).
pub(crate) const IDS: &str = "hb:{ids}";
/// The fleet's envelope budget: hash `epoch`, `qps`, `total`, `leased`.
pub(crate) const BUDGET: &str = "hb:{budget}";
/// Node id -> the time of its last lease (ms): the live nodes.
pub(crate) const BUDGET_NODES: &str = "hb:{budget}:nodes";
/// Node id -> `seq:epoch:granted` of its last lease, so that a retried lease
/// returns the same grant.
pub(crate) const BUDGET_REQ: &str = "hb:{budget}:req";
/// Budget epoch -> its total: every epoch's, for the fleet's audit.
pub(crate) const BUDGET_TOTALS: &str = "hb:{budget}:totals";
/// The consumer group every node's push stream is read through.
pub(crate) const PUSH_GROUP: &str = "hongbao";
/// A push stream's length cap (XADD MAXLEN ~): a node down for longer than
/// this many pushes loses the oldest from its stream, never from the users'
/// mailboxes, which still hold them for the next login.
pub(crate) const PUSH_STREAM_MAXLEN: u64 = 100_000;

/// How long a packet's keys outlive its expiry (for the audit): a day, as
/// `KEEP_MS` in `hongbao.lua` (a test checks).
pub(crate) const PACKET_KEEP_MS: u64 = 86_400_000;

/// A packet's four keys, tagged `{p:ID}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketKeys {
    /// Hash: amount, remaining, claimants, left, expires_ms, creator,
    /// repeats, refunded (absent until the refund), routed (set once the
    /// creating node has routed its pushes to every target).
    pub hash: String,
    /// Set of the target user ids.
    pub targets: String,
    /// Hash user -> cents of the paid claims.
    pub claims: String,
    /// List of the shares not yet paid, popped by each paid claim.
    pub shares: String,
}

impl PacketKeys {
    /// The keys of packet `id`.
    pub fn new(id: PacketId) -> PacketKeys {
        let hash = format!("hb:{{p:{id}}}");
        PacketKeys {
            targets: format!("{hash}:t"),
            claims: format!("{hash}:c"),
            shares: format!("{hash}:s"),
            hash,
        }
    }
}

/// A user's two keys, tagged `{u:USER}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserKeys {
    /// Hash: node (where the user is online), since_ms.
    pub presence: String,
    /// Zset: the user's undelivered notes, scored by their expiry (s).
    pub mailbox: String,
}

impl UserKeys {
    /// The keys of `user`.
    pub fn new(user: UserId) -> UserKeys {
        let presence = format!("hb:{{u:{user}}}");
        UserKeys {
            mailbox: format!("{presence}:m"),
            presence,
        }
    }
}

/// Node `node`'s push stream (fields `u` = user, `n` = note), tagged
/// `{n:NODE}`.
pub fn push_stream(node: u32) -> String {
    format!("hb:{{n:{node}}}:push")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster hashes: the text between the first `{`
    /// and the next `}`.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = open + key[open..].find('}').expect("a closed tag");
        &key[open + 1..close]
    }

    #[test]
    fn each_group_of_keys_shares_one_tag() {
        let p = PacketKeys::new(PacketId(42));
        assert_eq!(p.hash, "hb:{p:42}");
        for k in [&p.targets, &p.claims, &p.shares] {
            assert_eq!(tag(k), "p:42", "{k}");
        }
        let u = UserKeys::new(UserId(7));
        assert_eq!(tag(&u.presence), "u:7");
        assert_eq!(tag(&u.mailbox), "u:7");
        for k in [BUDGET, BUDGET_NODES, BUDGET_REQ, BUDGET_TOTALS] {
            assert_eq!(tag(k), "budget", "{k}");
        }
        assert_eq!(tag(IDS), "ids");
        assert_eq!(tag(&push_stream(3)), "n:3");
        // Different packets, users and nodes spread over the slots.
        assert_ne!(tag(&PacketKeys::new(PacketId(43)).hash), tag(&p.hash));
    }
}
