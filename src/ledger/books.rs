//! The books: what the ledger's records add up to, checked record by record.
//!
//! Owns: applying records in order and refusing any that breaks the rules of
//! money — an envelope granted twice or for another amount, a claim by a user
//! not targeted or twice, a packet paid out beyond its amount, a refund that
//! does not close a packet exactly. The server rebuilds its state from the
//! books at start; `hongbao audit` prints them. Must not: read files or
//! clocks (the caller feeds records and names offsets).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::record::Record;
use crate::ids::{Cents, EnvelopeId, PacketId, UserId};

/// Claimants a packet may have: the wire's push names three, a fuller
/// control form up to a hundred.
pub const CLAIMANTS_MAX: u16 = 100;

/// A record that breaks the books, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

fn violation<T>(why: String) -> Result<T, Violation> {
    Err(Violation(why))
}

/// Money totals over every record applied. Cents are u64: a day at a million
/// cents a second is far from overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Envelopes generated.
    pub envelopes_generated: u64,
    /// Their cents.
    pub cents_generated: u64,
    /// Envelopes granted to users.
    pub envelopes_granted: u64,
    /// Their cents.
    pub cents_granted: u64,
    /// Envelopes returned unclaimed.
    pub envelopes_returned: u64,
    /// Their cents.
    pub cents_returned: u64,
    /// Packets created.
    pub packets_created: u64,
    /// Their cents.
    pub cents_packets: u64,
    /// Claims paid.
    pub claims: u64,
    /// Their cents.
    pub cents_claimed: u64,
    /// Packets refunded at expiry.
    pub refunds: u64,
    /// Their cents.
    pub cents_refunded: u64,
    /// Cluster mode: packets this node created in the engine.
    pub cluster_packets_created: u64,
    /// Their cents.
    pub cents_cluster_packets: u64,
    /// Cluster mode: paid claims this node acknowledged (mirrors of the
    /// engine's; their packets may come from any node).
    pub cluster_claims: u64,
    /// Their cents.
    pub cents_cluster_claimed: u64,
    /// Cluster mode: refunds the engine made of this node's packets.
    pub cluster_refunds: u64,
    /// Their cents.
    pub cents_cluster_refunded: u64,
    /// Cluster mode: envelopes this node leased from the fleet's budget.
    pub envelopes_leased: u64,
}

/// A packet as the books know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketBook {
    /// Its id.
    pub id: PacketId,
    /// Its amount.
    pub amount: Cents,
    /// The users it is for, in the order they were named.
    pub targets: Vec<UserId>,
    /// Claims paid, in order.
    pub claims: Vec<(UserId, Cents)>,
    /// Cents paid out so far.
    pub claimed: Cents,
    /// When it was created, Unix milliseconds.
    pub created_ms: u64,
    /// When it expires, Unix seconds.
    pub until_s: u32,
}

/// An envelope generated and neither granted nor returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// Its id.
    pub id: EnvelopeId,
    /// Its amount.
    pub cents: Cents,
    /// When it was generated, Unix milliseconds.
    pub at_ms: u64,
}

/// A packet whose targets are still being read.
struct PendingPacket {
    book: PacketBook,
    claimants: u16,
    /// Created in the cluster's engine (its claims are mirrors).
    cluster: bool,
}

/// Cluster mode: a packet this node created in the engine, as its own
/// ledger knows it. Its claims are decided in the engine and mirrored on
/// whichever node acknowledged them, so only the fleet's audit can add it
/// up; a node's books check what one ledger can: a refund once, no more
/// than the amount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPacketBook {
    /// Its id.
    pub id: PacketId,
    /// Its amount.
    pub amount: Cents,
    /// Its targets, in order.
    pub targets: Vec<UserId>,
    /// When it was created, Unix milliseconds.
    pub created_ms: u64,
    /// When it expires, Unix seconds.
    pub until_s: u32,
    /// The engine's refund of it, once made.
    pub refunded: Option<Cents>,
}

/// The state every record so far adds up to.
#[derive(Default)]
pub struct Books {
    outstanding: HashMap<EnvelopeId, (Cents, u64)>,
    packets: HashMap<PacketId, PacketBook>,
    /// Packets refunded: no claim or refund may follow.
    closed: HashSet<PacketId>,
    /// Cluster mode: the packets this node created in the engine.
    cluster_packets: HashMap<PacketId, ClusterPacketBook>,
    /// Cluster mode: the claims this node mirrored, (packet, user) -> cents.
    cluster_claims: HashMap<(PacketId, UserId), Cents>,
    /// Cluster mode: envelopes leased per budget epoch.
    leases: HashMap<u32, u64>,
    pending: Option<PendingPacket>,
    totals: Totals,
    envelope_id_max: Option<u32>,
    packet_id_max: Option<u32>,
    /// Kept only for an audit: every grant and claim, to check
    /// acknowledgements against.
    history: Option<History>,
}

/// Every grant and claim, for `hongbao audit --ack-log`.
#[derive(Debug, Default)]
pub struct History {
    /// Envelope → (user, cents) of its grant.
    pub grants: HashMap<EnvelopeId, (UserId, Cents)>,
    /// (packet, user) → cents of the claim.
    pub claims: HashMap<(PacketId, UserId), Cents>,
}

impl Books {
    /// Empty books.
    pub fn new() -> Self {
        Books::default()
    }

    /// Empty books that also remember every grant and claim (for an audit).
    pub fn with_history() -> Self {
        Books {
            history: Some(History::default()),
            ..Books::default()
        }
    }

    /// Every grant and claim, when kept.
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// The totals so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// True while a packet's target records are still expected.
    pub fn mid_packet(&self) -> bool {
        self.pending.is_some()
    }

    /// Applies one money record (not a commit). On a violation the books are
    /// unchanged: each step below checks everything before it changes
    /// anything.
    pub fn apply(&mut self, record: Record) -> Result<(), Violation> {
        if let Some(p) = &self.pending {
            let Record::PacketTarget { id, index, user } = record else {
                return violation(format!(
                    "packet {} names {} of its {} targets, then another record follows",
                    p.book.id,
                    p.book.targets.len(),
                    p.claimants
                ));
            };
            return self.add_target(id, index, user);
        }
        match record {
            Record::EnvelopeGenerated { id, cents, at_ms } => {
                self.generate_envelope(id, cents, at_ms)
            }
            Record::EnvelopeGranted {
                id, user, cents, ..
            } => self.close_envelope(id, cents, Some(user)),
            Record::EnvelopeReturned { id, cents, .. } => self.close_envelope(id, cents, None),
            Record::PacketCreated {
                id,
                cents,
                claimants,
                at_ms,
                until_s,
            } => self.create_packet(id, cents, claimants, at_ms, until_s, false),
            Record::PacketTarget { id, .. } => {
                violation(format!("target of packet {id} outside a packet's creation"))
            }
            Record::Claim {
                id, user, cents, ..
            } => self.claim(id, user, cents),
            Record::Refund { id, cents, .. } => self.refund(id, cents),
            Record::Commit { .. } => violation("a commit record reached the books".to_string()),
            Record::ClusterPacketCreated {
                id,
                cents,
                claimants,
                at_ms,
                until_s,
            } => self.create_packet(id, cents, claimants, at_ms, until_s, true),
            Record::ClusterClaim {
                id, user, cents, ..
            } => self.mirror_claim(id, user, cents),
            Record::ClusterRefund { id, cents, .. } => self.cluster_refund(id, cents),
            Record::Lease {
                epoch, envelopes, ..
            } => {
                let Some(leased) = self.totals.envelopes_leased.checked_add(envelopes) else {
                    return violation(format!(
                        "lease of {envelopes} envelopes (epoch {epoch}) overflows the envelopes leased"
                    ));
                };
                self.totals.envelopes_leased = leased;
                *self.leases.entry(epoch).or_default() += envelopes;
                Ok(())
            }
        }
    }

    /// Cluster mode: a claim the engine paid and this node acknowledged.
    /// One ledger can check that it is a claim of at least a cent, mirrored
    /// once per user and packet, and, for a packet of this node's, by one
    /// of its targets and within its amount; the rest is the fleet audit's.
    fn mirror_claim(&mut self, id: PacketId, user: UserId, cents: Cents) -> Result<(), Violation> {
        if cents.0 == 0 {
            return violation(format!(
                "mirrored claim of packet {id} by user {user} for 0 cents"
            ));
        }
        // A node mirrors every answer that carried money, repeats included
        // (a repeat may be acknowledged here while the paid claim was
        // acknowledged on another node): the same claim again is a no-op,
        // another amount is a violation.
        match self.cluster_claims.get(&(id, user)) {
            Some(&c) if c == cents => return Ok(()),
            Some(&c) => {
                return violation(format!(
                    "user {user}'s claim of packet {id} mirrored for {cents}, and before for {c}"
                ));
            }
            None => {}
        }
        if let Some(p) = self.cluster_packets.get(&id) {
            if !p.targets.contains(&user) {
                return violation(format!(
                    "mirrored claim of packet {id} by user {user}, who is not one of its targets"
                ));
            }
            if cents > p.amount {
                return violation(format!(
                    "mirrored claim of packet {id} by user {user} for {cents}, more than its {}",
                    p.amount
                ));
            }
        }
        let Some(claimed) = self.totals.cents_cluster_claimed.checked_add(cents.0) else {
            return violation(format!(
                "mirrored claim of packet {id} overflows the cents claimed"
            ));
        };
        self.cluster_claims.insert((id, user), cents);
        if let Some(h) = &mut self.history {
            h.claims.insert((id, user), cents);
        }
        self.totals.cluster_claims += 1;
        self.totals.cents_cluster_claimed = claimed;
        Ok(())
    }

    /// Cluster mode: the engine refunded one of this node's packets: once,
    /// for at most its amount.
    fn cluster_refund(&mut self, id: PacketId, cents: Cents) -> Result<(), Violation> {
        let Some(p) = self.cluster_packets.get_mut(&id) else {
            return violation(format!(
                "cluster refund of packet {id}, which this node never created"
            ));
        };
        if p.refunded.is_some() {
            return violation(format!("cluster packet {id} refunded a second time"));
        }
        if cents > p.amount {
            return violation(format!(
                "cluster refund of {cents} for packet {id} of {}",
                p.amount
            ));
        }
        p.refunded = Some(cents);
        self.totals.cluster_refunds += 1;
        self.totals.cents_cluster_refunded += cents.0;
        Ok(())
    }

    /// An envelope generated: money enters.
    fn generate_envelope(
        &mut self,
        id: EnvelopeId,
        cents: Cents,
        at_ms: u64,
    ) -> Result<(), Violation> {
        if cents.0 == 0 {
            return violation(format!("envelope {id} generated with 0 cents"));
        }
        if self.outstanding.contains_key(&id) {
            return violation(format!("envelope {id} generated twice"));
        }
        // Amounts are read from the file: their sum must fit the totals
        // (every other envelope total is a part of this one).
        let Some(cents_generated) = self.totals.cents_generated.checked_add(cents.0) else {
            return violation(format!(
                "envelope {id} of {cents} overflows the cents generated"
            ));
        };
        self.outstanding.insert(id, (cents, at_ms));
        self.envelope_id_max = Some(self.envelope_id_max.map_or(id.0, |m| m.max(id.0)));
        self.totals.envelopes_generated += 1;
        self.totals.cents_generated = cents_generated;
        Ok(())
    }

    /// An outstanding envelope granted to `granted_to`, or returned unclaimed
    /// when that is `None`: either way it must be outstanding, for the very
    /// amount it was generated with.
    fn close_envelope(
        &mut self,
        id: EnvelopeId,
        cents: Cents,
        granted_to: Option<UserId>,
    ) -> Result<(), Violation> {
        let verb = if granted_to.is_some() {
            "granted"
        } else {
            "returned"
        };
        match self.outstanding.get(&id) {
            None => {
                return violation(format!(
                    "envelope {id} {verb} but it is not outstanding (never generated, or already granted or returned)"
                ));
            }
            Some(&(have, _)) if have != cents => {
                return violation(format!(
                    "envelope {id} {verb} for {cents} but was generated for {have}"
                ));
            }
            Some(_) => {}
        }
        self.outstanding.remove(&id);
        if let (Some(h), Some(user)) = (&mut self.history, granted_to) {
            h.grants.insert(id, (user, cents));
        }
        if granted_to.is_some() {
            self.totals.envelopes_granted += 1;
            self.totals.cents_granted += cents.0;
        } else {
            self.totals.envelopes_returned += 1;
            self.totals.cents_returned += cents.0;
        }
        Ok(())
    }

    /// A packet's creation, local or (`cluster`) in the engine: it waits in
    /// `pending` until its targets follow.
    fn create_packet(
        &mut self,
        id: PacketId,
        cents: Cents,
        claimants: u16,
        at_ms: u64,
        until_s: u32,
        cluster: bool,
    ) -> Result<(), Violation> {
        if self.packets.contains_key(&id)
            || self.closed.contains(&id)
            || self.cluster_packets.contains_key(&id)
        {
            return violation(format!("packet {id} created twice"));
        }
        if !(1..=CLAIMANTS_MAX).contains(&claimants) {
            return violation(format!(
                "packet {id} has {claimants} claimants (1..={CLAIMANTS_MAX})"
            ));
        }
        if cents.0 < u64::from(claimants) {
            return violation(format!(
                "packet {id} of {cents} cannot give each of {claimants} claimants a cent"
            ));
        }
        // Every other packet total is a part of this one (of the cluster
        // packets' one, for a cluster packet), added when the last target
        // is read.
        let total = if cluster {
            self.totals.cents_cluster_packets
        } else {
            self.totals.cents_packets
        };
        if total.checked_add(cents.0).is_none() {
            return violation(format!(
                "packet {id} of {cents} overflows the cents in packets"
            ));
        }
        self.pending = Some(PendingPacket {
            book: PacketBook {
                id,
                amount: cents,
                targets: Vec::with_capacity(usize::from(claimants)),
                claims: Vec::new(),
                claimed: Cents(0),
                created_ms: at_ms,
                until_s,
            },
            claimants,
            cluster,
        });
        Ok(())
    }

    /// A claim paid: by a target, once, for at least a cent, leaving every
    /// later claimant a cent, the last taking exactly the rest.
    fn claim(&mut self, id: PacketId, user: UserId, cents: Cents) -> Result<(), Violation> {
        let Some(p) = self.packets.get(&id) else {
            let why = if self.closed.contains(&id) {
                "it was refunded"
            } else {
                "it was never created"
            };
            return violation(format!("claim of packet {id} by user {user}, but {why}"));
        };
        if !p.targets.contains(&user) {
            return violation(format!(
                "claim of packet {id} by user {user}, who is not one of its targets"
            ));
        }
        if p.claims.iter().any(|&(u, _)| u == user) {
            return violation(format!("user {user} claimed packet {id} a second time"));
        }
        if cents.0 == 0 {
            return violation(format!("claim of packet {id} by user {user} for 0 cents"));
        }
        // Every claimant after this one still needs a cent, and the
        // last takes exactly the rest (checked: amounts are read from the
        // file, and a wrapped sum would pass).
        let after = (p.targets.len() - p.claims.len() - 1) as u64;
        let claimed = p.claimed.0.checked_add(cents.0);
        let fits = claimed.is_some_and(|c| {
            c.checked_add(after).is_some_and(|need| need <= p.amount.0)
                && (after > 0 || c == p.amount.0)
        });
        let Some(claimed) = claimed.filter(|_| fits) else {
            return violation(format!(
                "claims of packet {id} reach {} + {cents} cents of its {} after user {user}",
                p.claimed, p.amount
            ));
        };
        let p = self.packets.get_mut(&id).expect("checked above");
        p.claims.push((user, cents));
        p.claimed = Cents(claimed);
        if let Some(h) = &mut self.history {
            h.claims.insert((id, user), cents);
        }
        self.totals.claims += 1;
        self.totals.cents_claimed += cents.0;
        Ok(())
    }

    /// A live packet's refund at expiry: exactly what its claims left, never
    /// 0; the packet closes for good.
    fn refund(&mut self, id: PacketId, cents: Cents) -> Result<(), Violation> {
        let Some(p) = self.packets.get(&id) else {
            return violation(format!(
                "refund of packet {id}, which is not live (never created, or refunded already)"
            ));
        };
        if p.claimed.0.checked_add(cents.0) != Some(p.amount.0) || cents.0 == 0 {
            return violation(format!(
                "refund of {cents} for packet {id}: claims {} + refund != amount {}",
                p.claimed, p.amount
            ));
        }
        self.packets.remove(&id);
        self.closed.insert(id);
        self.totals.refunds += 1;
        self.totals.cents_refunded += cents.0;
        Ok(())
    }

    fn add_target(&mut self, id: PacketId, index: u16, user: UserId) -> Result<(), Violation> {
        let p = self
            .pending
            .as_mut()
            .expect("called while a packet is pending");
        if id != p.book.id || usize::from(index) != p.book.targets.len() {
            return violation(format!(
                "packet {} expects target {} but target {index} of packet {id} follows",
                p.book.id,
                p.book.targets.len()
            ));
        }
        if p.book.targets.contains(&user) {
            return violation(format!("packet {id} names user {user} twice"));
        }
        p.book.targets.push(user);
        if p.book.targets.len() == usize::from(p.claimants) {
            let PendingPacket {
                book: p, cluster, ..
            } = self.pending.take().expect("pending above");
            self.packet_id_max = Some(self.packet_id_max.map_or(p.id.0, |m| m.max(p.id.0)));
            if cluster {
                self.totals.cluster_packets_created += 1;
                self.totals.cents_cluster_packets += p.amount.0;
                self.cluster_packets.insert(
                    p.id,
                    ClusterPacketBook {
                        id: p.id,
                        amount: p.amount,
                        targets: p.targets,
                        created_ms: p.created_ms,
                        until_s: p.until_s,
                        refunded: None,
                    },
                );
                return Ok(());
            }
            self.totals.packets_created += 1;
            self.totals.cents_packets += p.amount.0;
            self.packets.insert(p.id, p);
        }
        Ok(())
    }

    /// Cents in envelopes generated and neither granted nor returned.
    pub fn cents_outstanding(&self) -> u64 {
        self.outstanding.values().map(|(c, _)| c.0).sum()
    }

    /// Cents in live packets not yet claimed.
    pub fn cents_in_packets(&self) -> u64 {
        self.packets
            .values()
            .map(|p| p.amount.0 - p.claimed.0)
            .sum()
    }

    /// Checks that the totals balance: envelope money generated = granted +
    /// returned + outstanding, and packet money created = claimed + refunded
    /// plus what is unclaimed in live packets. Holds after every whole
    /// record; a failure means the books themselves are broken.
    pub fn check_conservation(&self) -> Result<(), Violation> {
        let t = &self.totals;
        let envelopes = t.cents_granted + t.cents_returned + self.cents_outstanding();
        if t.cents_generated != envelopes {
            return violation(format!(
                "envelope money does not balance: generated {} != granted {} + returned {} + outstanding {}",
                t.cents_generated,
                t.cents_granted,
                t.cents_returned,
                self.cents_outstanding()
            ));
        }
        let packets = t.cents_claimed + t.cents_refunded + self.cents_in_packets();
        if t.cents_packets != packets {
            return violation(format!(
                "packet money does not balance: created {} != claimed {} + refunded {} + unclaimed {}",
                t.cents_packets,
                t.cents_claimed,
                t.cents_refunded,
                self.cents_in_packets()
            ));
        }
        Ok(())
    }

    /// Cluster mode: the packets this node created in the engine, by id.
    pub fn cluster_packets(&self) -> &HashMap<PacketId, ClusterPacketBook> {
        &self.cluster_packets
    }

    /// Cluster mode: the claims this node mirrored, (packet, user) -> cents.
    pub fn cluster_claims(&self) -> &HashMap<(PacketId, UserId), Cents> {
        &self.cluster_claims
    }

    /// Cluster mode: envelopes leased per budget epoch.
    pub fn leases(&self) -> &HashMap<u32, u64> {
        &self.leases
    }

    /// Envelopes outstanding, oldest id first.
    pub fn outstanding(&self) -> Vec<Outstanding> {
        let mut v: Vec<Outstanding> = self
            .outstanding
            .iter()
            .map(|(&id, &(cents, at_ms))| Outstanding { id, cents, at_ms })
            .collect();
        v.sort_by_key(|o| o.id);
        v
    }

    /// How many packets are live (created, not refunded).
    pub fn packets_live(&self) -> usize {
        self.packets.len()
    }

    /// Takes the live packets out (the server hands them to their cores).
    pub fn take_packets(&mut self) -> Vec<PacketBook> {
        let mut v: Vec<PacketBook> = self.packets.drain().map(|(_, p)| p).collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// The next unused envelope id (after every id recorded).
    pub fn next_envelope_id(&self) -> EnvelopeId {
        self.envelope_id_max.map_or(EnvelopeId::FIRST, |m| {
            EnvelopeId(m.wrapping_add(1).max(EnvelopeId::FIRST.0))
        })
    }

    /// The next unused packet id (after every id recorded).
    pub fn next_packet_id(&self) -> PacketId {
        self.packet_id_max.map_or(PacketId::FIRST, |m| {
            PacketId(m.wrapping_add(1).max(PacketId::FIRST.0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(id: u32, cents: u64, claimants: u16) -> Record {
        Record::PacketCreated {
            id: PacketId(id),
            cents: Cents(cents),
            claimants,
            at_ms: 1,
            until_s: 100,
        }
    }

    fn target(id: u32, index: u16, user: u32) -> Record {
        Record::PacketTarget {
            id: PacketId(id),
            index,
            user: UserId(user),
        }
    }

    fn claim(id: u32, user: u32, cents: u64) -> Record {
        Record::Claim {
            id: PacketId(id),
            user: UserId(user),
            cents: Cents(cents),
            at_ms: 2,
        }
    }

    /// Found by `fuzz/` (ledger_replay): amounts are u64 in the file, and
    /// sums of them overflowed (a panic in debug builds; in release a
    /// wrapped claim total passed the check and broke the balance). Each
    /// is now a violation that leaves the books unchanged.
    #[test]
    fn amounts_whose_sums_overflow_are_violations() {
        let mut b = Books::new();
        let generated = |id: u32, cents: u64| Record::EnvelopeGenerated {
            id: EnvelopeId(id),
            cents: Cents(cents),
            at_ms: 1,
        };
        b.apply(generated(0x100000, u64::MAX)).unwrap();
        assert!(
            b.apply(generated(0x100001, 1)).is_err(),
            "cents generated overflow"
        );
        b.apply(created(1, u64::MAX - 1, 2)).unwrap();
        b.apply(target(1, 0, 10)).unwrap();
        b.apply(target(1, 1, 11)).unwrap();
        assert!(
            b.apply(created(2, 2, 1)).is_err(),
            "cents in packets overflow"
        );
        b.apply(claim(1, 10, 5)).unwrap();
        // 5 + (u64::MAX - 3) wraps to 1: it must not pass as a share.
        assert!(
            b.apply(claim(1, 11, u64::MAX - 3)).is_err(),
            "claimed overflow"
        );
        let refund = |cents: u64| Record::Refund {
            id: PacketId(1),
            cents: Cents(cents),
            at_ms: 3,
        };
        assert!(
            b.apply(refund(u64::MAX - 3)).is_err(),
            "claimed + refund overflow"
        );
        b.apply(refund(u64::MAX - 6)).unwrap();
        assert_eq!(b.totals().cents_claimed, 5);
        b.check_conservation().unwrap();
    }

    #[test]
    fn envelopes_are_granted_once_for_their_amount() {
        let mut b = Books::new();
        let id = EnvelopeId(0x100000);
        b.apply(Record::EnvelopeGenerated {
            id,
            cents: Cents(50),
            at_ms: 1,
        })
        .unwrap();
        let grant = |cents| Record::EnvelopeGranted {
            id,
            user: UserId(1),
            cents: Cents(cents),
            at_ms: 2,
        };
        assert!(b.apply(grant(51)).is_err(), "wrong amount");
        b.apply(grant(50)).unwrap();
        assert!(b.apply(grant(50)).is_err(), "twice");
        b.check_conservation().unwrap();
        assert_eq!(b.totals().cents_granted, 50);
        assert_eq!(b.next_envelope_id(), EnvelopeId(0x100001));
    }

    #[test]
    fn claims_follow_the_rules_and_the_last_takes_the_rest() {
        let mut b = Books::new();
        for r in [created(9, 10, 2), target(9, 0, 1), target(9, 1, 2)] {
            b.apply(r).unwrap();
        }
        assert!(b.apply(claim(9, 3, 1)).is_err(), "not a target");
        assert!(b.apply(claim(9, 1, 0)).is_err(), "zero cents");
        assert!(
            b.apply(claim(9, 1, 10)).is_err(),
            "leaves no cent for the other"
        );
        b.apply(claim(9, 1, 4)).unwrap();
        assert!(b.apply(claim(9, 1, 1)).is_err(), "twice");
        assert!(
            b.apply(claim(9, 2, 5)).is_err(),
            "the last must take the rest"
        );
        b.apply(claim(9, 2, 6)).unwrap();
        b.check_conservation().unwrap();
        assert!(
            b.apply(Record::Refund {
                id: PacketId(9),
                cents: Cents(1),
                at_ms: 3
            })
            .is_err()
        );
    }

    #[test]
    fn a_refund_closes_a_packet_exactly() {
        let mut b = Books::new();
        for r in [
            created(9, 10, 2),
            target(9, 0, 1),
            target(9, 1, 2),
            claim(9, 1, 3),
        ] {
            b.apply(r).unwrap();
        }
        let refund = |c| Record::Refund {
            id: PacketId(9),
            cents: Cents(c),
            at_ms: 3,
        };
        assert!(b.apply(refund(6)).is_err());
        b.apply(refund(7)).unwrap();
        assert!(b.apply(claim(9, 2, 1)).is_err(), "after the refund");
        b.check_conservation().unwrap();
        assert_eq!(b.cents_in_packets(), 0);
    }

    fn cluster_created(id: u32, cents: u64, claimants: u16) -> Record {
        Record::ClusterPacketCreated {
            id: PacketId(id),
            cents: Cents(cents),
            claimants,
            at_ms: 1,
            until_s: 100,
        }
    }

    fn mirror(id: u32, user: u32, cents: u64) -> Record {
        Record::ClusterClaim {
            id: PacketId(id),
            user: UserId(user),
            cents: Cents(cents),
            at_ms: 2,
        }
    }

    fn cluster_refund(id: u32, cents: u64) -> Record {
        Record::ClusterRefund {
            id: PacketId(id),
            cents: Cents(cents),
            at_ms: 3,
        }
    }

    fn lease(epoch: u32, envelopes: u64) -> Record {
        Record::Lease {
            epoch,
            envelopes,
            at_ms: 4,
        }
    }

    /// Books holding cluster packet 7 of 10 cents for users 1 and 2.
    fn with_cluster_packet() -> Books {
        let mut b = Books::with_history();
        for r in [cluster_created(7, 10, 2), target(7, 0, 1), target(7, 1, 2)] {
            b.apply(r).unwrap();
        }
        b
    }

    #[test]
    fn a_cluster_packet_is_created_once_with_its_targets_in_order() {
        let mut b = Books::new();
        b.apply(cluster_created(7, 10, 2)).unwrap();
        assert!(b.mid_packet());
        assert!(b.apply(target(7, 1, 1)).is_err(), "out of order");
        b.apply(target(7, 0, 1)).unwrap();
        assert!(b.apply(target(7, 1, 1)).is_err(), "same user twice");
        assert!(
            b.apply(mirror(7, 1, 1)).is_err(),
            "a mirror before the targets end"
        );
        assert!(b.apply(target(8, 1, 2)).is_err(), "another packet's target");
        b.apply(target(7, 1, 2)).unwrap();
        assert!(!b.mid_packet());
        assert!(
            b.apply(target(7, 2, 3)).is_err(),
            "a target past the claimants"
        );

        let p = &b.cluster_packets()[&PacketId(7)];
        assert_eq!(p.amount, Cents(10));
        assert_eq!(p.targets, [UserId(1), UserId(2)]);
        assert_eq!((p.created_ms, p.until_s, p.refunded), (1, 100, None));
        let t = b.totals();
        assert_eq!(
            (t.cluster_packets_created, t.cents_cluster_packets),
            (1, 10)
        );
        // Not a local packet: nothing for a core to take, nothing in the
        // local balance.
        assert_eq!((t.packets_created, t.cents_packets), (0, 0));
        assert_eq!(b.packets_live(), 0);
        assert_eq!(b.cents_in_packets(), 0);
        b.check_conservation().unwrap();

        assert!(b.apply(cluster_created(7, 10, 2)).is_err(), "twice");
        assert!(
            b.apply(created(7, 10, 2)).is_err(),
            "a local packet of the same id"
        );
        b.apply(created(9, 10, 1)).unwrap();
        b.apply(target(9, 0, 1)).unwrap();
        assert!(
            b.apply(cluster_created(9, 10, 1)).is_err(),
            "a cluster packet of a local one's id"
        );
        assert_eq!(b.totals().cluster_packets_created, 1);

        // Its id counts among the ids used.
        let mut b = Books::new();
        let id = PacketId::FIRST.0 + 5;
        for r in [cluster_created(id, 1, 1), target(id, 0, 1)] {
            b.apply(r).unwrap();
        }
        assert_eq!(b.next_packet_id(), PacketId(id + 1));
    }

    #[test]
    fn a_cluster_packet_is_checked_as_a_local_one_at_creation() {
        let mut b = Books::new();
        assert!(b.apply(cluster_created(7, 10, 0)).is_err(), "no claimants");
        assert!(
            b.apply(cluster_created(7, 500, CLAIMANTS_MAX + 1)).is_err(),
            "too many claimants"
        );
        assert!(
            b.apply(cluster_created(7, 2, 3)).is_err(),
            "not a cent for each claimant"
        );
        assert!(!b.mid_packet(), "a refused creation leaves nothing pending");
        assert_eq!(b.totals(), Totals::default());
    }

    #[test]
    fn a_claim_is_mirrored_once_and_its_repeats_change_nothing() {
        let mut b = with_cluster_packet();
        b.apply(mirror(7, 1, 4)).unwrap();
        // A repeat acknowledged here is mirrored for the same amount.
        b.apply(mirror(7, 1, 4)).unwrap();
        assert!(
            b.apply(mirror(7, 1, 3)).is_err(),
            "twice, for another amount"
        );
        b.apply(mirror(7, 2, 6)).unwrap();
        let t = b.totals();
        assert_eq!((t.cluster_claims, t.cents_cluster_claimed), (2, 10));
        assert_eq!(b.cluster_claims()[&(PacketId(7), UserId(1))], Cents(4));
        let history = b.history().expect("kept");
        assert_eq!(history.claims[&(PacketId(7), UserId(2))], Cents(6));
        // Cluster claims are not local ones.
        assert_eq!((t.claims, t.cents_claimed), (0, 0));
        b.check_conservation().unwrap();
    }

    #[test]
    fn a_mirror_of_an_own_packet_must_be_by_a_target_within_its_amount() {
        let mut b = with_cluster_packet();
        assert!(b.apply(mirror(7, 3, 1)).is_err(), "not a target");
        assert!(b.apply(mirror(7, 1, 11)).is_err(), "more than the amount");
        assert!(b.apply(mirror(7, 1, 0)).is_err(), "zero cents");
        assert_eq!(b.totals().cluster_claims, 0);
        assert!(b.cluster_claims().is_empty(), "refusals change nothing");
        b.apply(mirror(7, 1, 10)).unwrap();
    }

    #[test]
    fn a_mirror_of_a_packet_from_another_node_is_accepted() {
        let mut b = Books::with_history();
        // Packet 70 was created on another node: this one knows neither
        // its amount nor its targets.
        b.apply(mirror(70, 5, 123)).unwrap();
        b.apply(mirror(70, 6, 1)).unwrap();
        b.apply(mirror(70, 5, 123)).unwrap();
        assert!(b.apply(mirror(70, 5, 124)).is_err(), "one amount per claim");
        assert!(b.apply(mirror(71, 5, 0)).is_err(), "still at least a cent");
        let t = b.totals();
        assert_eq!((t.cluster_claims, t.cents_cluster_claimed), (2, 124));
        assert!(b.cluster_packets().is_empty());
        // A local claim or refund of it is no such thing.
        assert!(b.apply(claim(70, 5, 123)).is_err());
        assert!(
            b.apply(Record::Refund {
                id: PacketId(70),
                cents: Cents(1),
                at_ms: 3
            })
            .is_err()
        );
        b.check_conservation().unwrap();
    }

    #[test]
    fn a_mirrored_claim_that_overflows_the_total_is_refused() {
        let mut b = Books::new();
        b.apply(mirror(70, 5, u64::MAX)).unwrap();
        assert!(b.apply(mirror(70, 6, 1)).is_err());
        assert_eq!(b.totals().cluster_claims, 1);
        assert!(
            !b.cluster_claims().contains_key(&(PacketId(70), UserId(6))),
            "a refused mirror is not kept"
        );
    }

    #[test]
    fn a_cluster_refund_comes_once_for_an_own_packet_within_its_amount() {
        let mut b = with_cluster_packet();
        assert!(b.apply(cluster_refund(8, 1)).is_err(), "unknown packet");
        assert!(b.apply(cluster_refund(7, 11)).is_err(), "over the amount");
        assert_eq!(b.cluster_packets()[&PacketId(7)].refunded, None);
        b.apply(mirror(7, 1, 4)).unwrap();
        b.apply(cluster_refund(7, 6)).unwrap();
        assert!(b.apply(cluster_refund(7, 6)).is_err(), "twice");
        assert!(
            b.apply(cluster_refund(7, 1)).is_err(),
            "twice, another amount"
        );
        assert_eq!(b.cluster_packets()[&PacketId(7)].refunded, Some(Cents(6)));
        let t = b.totals();
        assert_eq!((t.cluster_refunds, t.cents_cluster_refunded), (1, 6));
        assert_eq!((t.refunds, t.cents_refunded), (0, 0), "not a local refund");
        // A local packet is not refunded by the engine, nor a cluster one
        // by a local refund.
        for r in [created(9, 10, 1), target(9, 0, 1)] {
            b.apply(r).unwrap();
        }
        assert!(b.apply(cluster_refund(9, 10)).is_err());
        assert!(
            b.apply(Record::Refund {
                id: PacketId(7),
                cents: Cents(6),
                at_ms: 3
            })
            .is_err()
        );
        assert!(b.apply(claim(7, 2, 6)).is_err(), "a local claim of it");
        b.check_conservation().unwrap();
    }

    #[test]
    fn leases_add_up_per_epoch_and_in_total() {
        let mut b = Books::new();
        b.apply(lease(1, 100)).unwrap();
        b.apply(lease(2, 50)).unwrap();
        b.apply(lease(1, 25)).unwrap();
        b.apply(lease(3, 0)).unwrap();
        assert_eq!(
            *b.leases(),
            HashMap::from([(1, 125), (2, 50), (3, 0)]),
            "per epoch"
        );
        assert_eq!(b.totals().envelopes_leased, 175);
        assert!(b.apply(lease(4, u64::MAX)).is_err(), "the total overflows");
        assert_eq!(b.totals().envelopes_leased, 175);
        assert!(!b.leases().contains_key(&4), "a refused lease is not kept");
        b.check_conservation().unwrap();
    }

    #[test]
    fn a_lease_or_a_mirror_inside_a_packets_targets_is_refused() {
        let mut b = Books::new();
        b.apply(cluster_created(7, 10, 2)).unwrap();
        b.apply(target(7, 0, 1)).unwrap();
        assert!(b.apply(lease(1, 10)).is_err());
        assert!(b.apply(mirror(70, 1, 1)).is_err());
        assert!(b.apply(cluster_refund(7, 1)).is_err());
        assert!(b.mid_packet());
    }

    /// Cluster packet amounts are read from the file like local ones: their
    /// sum must not overflow the cluster packets' total.
    #[test]
    fn cluster_packets_whose_amounts_overflow_are_violations() {
        let mut b = Books::new();
        b.apply(cluster_created(1, u64::MAX - 1, 1)).unwrap();
        b.apply(target(1, 0, 10)).unwrap();
        assert!(
            b.apply(cluster_created(2, 2, 1)).is_err(),
            "cents in cluster packets overflow"
        );
        assert!(!b.mid_packet());
        assert_eq!(b.totals().cents_cluster_packets, u64::MAX - 1);
        // Local packets have their own total: this one fits it.
        b.apply(created(3, 2, 1)).unwrap();
        b.apply(target(3, 0, 10)).unwrap();
        b.check_conservation().unwrap();
    }

    #[test]
    fn a_packet_needs_all_its_targets_in_order() {
        let mut b = Books::new();
        b.apply(created(9, 10, 2)).unwrap();
        assert!(b.apply(target(9, 1, 1)).is_err(), "out of order");
        b.apply(target(9, 0, 1)).unwrap();
        assert!(b.apply(target(9, 1, 1)).is_err(), "same user twice");
        assert!(
            b.apply(claim(9, 1, 1)).is_err(),
            "claim before the targets end"
        );
        assert!(b.mid_packet());
        assert!(b.apply(created(10, 0, 1)).is_err());
    }
}
