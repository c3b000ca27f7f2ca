//! Sent red packets on their owning core: the split, claims, expiry.
//!
//! Owns: the double-average split, a core's table of the packets it owns,
//! and the rules of a claim — a targeted user's first claim of a live packet
//! is paid, a repeat gets the same amount again and moves nothing, anyone
//! else (not targeted, unknown or expired packet) gets 0. Must not: touch
//! sockets or clocks (the core passes the time in), or move money without a
//! ledger record: every payment and refund is appended through the core's
//! [`Producer`] before it is answered.
//!
//! One core owns a packet (`id mod cores`), so its claims are serialised by
//! that core's loop without a lock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::ids::{Cents, PacketId, UserId};
use crate::ledger::{PacketBook, Producer, Record};

/// One claimant's share by the double-average method: with `remaining` cents
/// left for `left` claimants, a uniform draw in 1..=min(2·remaining/left,
/// remaining − (left − 1)); the last claimant takes the rest. So every
/// claimant gets at least one cent, the mean share is the fair one, and the
/// shares add up to the amount exactly.
///
/// # Panics
///
/// When `left` is 0 or `remaining < left`: a packet is created with at least
/// a cent per claimant, and each share leaves a cent for everyone after.
pub fn share(remaining: u64, left: u64, rng: &mut fastrand::Rng) -> u64 {
    // The "double" of the double-average method: a draw up to twice the fair
    // share keeps the fair share as the mean.
    const MEAN_SHARE_MULTIPLE: u64 = 2;
    assert!(
        left >= 1 && remaining >= left,
        "{remaining} cents for {left} claimants"
    );
    if left == 1 {
        return remaining;
    }
    let hi = (remaining / left * MEAN_SHARE_MULTIPLE)
        .min(remaining - (left - 1))
        .max(1);
    rng.u64(1..=hi)
}

/// What a claim was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// A first claim: paid this much; the answer waits for ledger entry `seq`.
    Paid {
        /// The share.
        cents: Cents,
        /// The ledger entry (None when the ledger is off).
        seq: Option<u64>,
    },
    /// A repeat: the first claim's amount again. The answer waits for the
    /// packet's latest payment to be durable (it may be the first one's).
    Repeat {
        /// The share paid before.
        cents: Cents,
        /// The ledger entry to wait for.
        seq: Option<u64>,
    },
    /// Unknown or expired packet, or a user it is not for: 0 cents.
    Zero,
}

/// A live packet on its owning core.
#[derive(Debug)]
struct Live {
    amount: Cents,
    remaining: Cents,
    targets: Box<[UserId]>,
    /// Each target's share, 0 until claimed; same order as `targets`.
    shares: Box<[u32]>,
    left: u16,
    until_s: u32,
    /// The ledger entry of the latest payment: a repeat waits for it.
    last_seq: Option<u64>,
}

/// The packets one core owns.
#[derive(Debug)]
pub struct PacketTable {
    live: HashMap<PacketId, Live>,
    expiry: BinaryHeap<Reverse<(u32, PacketId)>>,
    rng: fastrand::Rng,
}

/// A packet to hand to its owner: made by the control, or rebuilt from the
/// ledger at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPacket {
    /// Its id.
    pub id: PacketId,
    /// Its amount.
    pub amount: Cents,
    /// The users it is for.
    pub targets: Box<[UserId]>,
    /// Claims already paid (from the ledger).
    pub claims: Vec<(UserId, Cents)>,
    /// Expiry, Unix seconds.
    pub until_s: u32,
}

impl From<PacketBook> for NewPacket {
    fn from(p: PacketBook) -> Self {
        NewPacket {
            id: p.id,
            amount: p.amount,
            targets: p.targets.into_boxed_slice(),
            claims: p.claims,
            until_s: p.until_s,
        }
    }
}

impl PacketTable {
    /// An empty table; `seed` makes the split replayable in tests.
    pub fn new(seed: u64) -> Self {
        PacketTable {
            live: HashMap::new(),
            expiry: BinaryHeap::new(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Live packets held.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when no packet is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Takes ownership of a packet (already durable in the ledger).
    pub fn insert(&mut self, p: NewPacket) {
        let mut shares = vec![0u32; p.targets.len()].into_boxed_slice();
        let mut remaining = p.amount.0;
        for (user, cents) in &p.claims {
            if let Some(i) = p.targets.iter().position(|t| t == user) {
                shares[i] = cents.wire();
                remaining -= cents.0;
            }
        }
        let left = shares.iter().filter(|&&s| s == 0).count() as u16;
        self.expiry.push(Reverse((p.until_s, p.id)));
        self.live.insert(
            p.id,
            Live {
                amount: p.amount,
                remaining: Cents(remaining),
                targets: p.targets,
                shares,
                left,
                until_s: p.until_s,
                last_seq: None,
            },
        );
    }

    /// Answers `user`'s claim of packet `id` at `now_s`, recording a payment
    /// in the ledger through `ledger`.
    pub fn claim(
        &mut self,
        id: PacketId,
        user: UserId,
        now_s: u64,
        at_ms: u64,
        ledger: &mut Producer,
    ) -> Claimed {
        let Some(p) = self.live.get_mut(&id) else {
            return Claimed::Zero;
        };
        if now_s >= u64::from(p.until_s) {
            return Claimed::Zero;
        }
        let Some(i) = p.targets.iter().position(|&t| t == user) else {
            return Claimed::Zero;
        };
        if p.shares[i] != 0 {
            return Claimed::Repeat {
                cents: Cents(u64::from(p.shares[i])),
                seq: p.last_seq,
            };
        }
        let cents = share(p.remaining.0, u64::from(p.left), &mut self.rng);
        let seq = ledger.append(Record::Claim {
            id,
            user,
            cents: Cents(cents),
            at_ms,
        });
        p.shares[i] = Cents(cents).wire();
        p.remaining.0 -= cents;
        p.left -= 1;
        p.last_seq = seq.or(p.last_seq);
        Claimed::Paid {
            cents: Cents(cents),
            seq,
        }
    }

    /// Expires every packet due by `now_s`: records the refund of what was
    /// not claimed and forgets the packet. Returns (packets, cents refunded).
    pub fn expire(&mut self, now_s: u64, at_ms: u64, ledger: &mut Producer) -> (u64, u64) {
        let (mut packets, mut cents) = (0, 0);
        while let Some(&Reverse((until_s, id))) = self.expiry.peek() {
            if u64::from(until_s) > now_s {
                break;
            }
            self.expiry.pop();
            let Some(p) = self.live.remove(&id) else {
                continue;
            };
            packets += 1;
            if p.remaining.0 > 0 {
                ledger.append(Record::Refund {
                    id,
                    cents: p.remaining,
                    at_ms,
                });
                cents += p.remaining.0;
            }
            debug_assert!(p.amount.0 >= p.remaining.0);
        }
        (packets, cents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shares_add_up_and_each_gets_a_cent(n in 1u64..=100, extra in 0u64..100_000, seed: u64) {
            let amount = n + extra;
            let mut rng = fastrand::Rng::with_seed(seed);
            let (mut remaining, mut sum) = (amount, 0);
            for left in (1..=n).rev() {
                let s = share(remaining, left, &mut rng);
                prop_assert!(s >= 1);
                prop_assert!(remaining - s >= left - 1, "leaves a cent for each after");
                remaining -= s;
                sum += s;
            }
            prop_assert_eq!(sum, amount);
            prop_assert_eq!(remaining, 0);
        }
    }

    fn packet(id: u32, amount: u64, targets: &[u32], until_s: u32) -> NewPacket {
        NewPacket {
            id: PacketId(id),
            amount: Cents(amount),
            targets: targets.iter().map(|&u| UserId(u)).collect(),
            claims: Vec::new(),
            until_s,
        }
    }

    #[test]
    fn claims_pay_once_repeat_the_amount_and_refuse_strangers() {
        let mut t = PacketTable::new(7);
        let mut ledger = Ledger::disabled().producer(0);
        t.insert(packet(1, 100, &[10, 11, 12], 1_000));
        let first = t.claim(PacketId(1), UserId(10), 5, 0, &mut ledger);
        let Claimed::Paid { cents, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            t.claim(PacketId(1), UserId(10), 5, 0, &mut ledger),
            Claimed::Repeat { cents, seq: None }
        );
        assert_eq!(
            t.claim(PacketId(1), UserId(99), 5, 0, &mut ledger),
            Claimed::Zero
        );
        assert_eq!(
            t.claim(PacketId(2), UserId(10), 5, 0, &mut ledger),
            Claimed::Zero
        );
        let mut total = cents.0;
        for u in [11, 12] {
            let Claimed::Paid { cents, .. } = t.claim(PacketId(1), UserId(u), 5, 0, &mut ledger)
            else {
                panic!()
            };
            total += cents.0;
        }
        assert_eq!(total, 100);
        assert_eq!(
            t.claim(PacketId(1), UserId(11), 1_000, 0, &mut ledger),
            Claimed::Zero,
            "expired"
        );
        assert_eq!(t.expire(1_000, 0, &mut ledger), (1, 0));
        assert!(t.is_empty());
    }

    #[test]
    fn a_rebuilt_packet_keeps_its_claims_and_refunds_the_rest() {
        let mut t = PacketTable::new(7);
        let mut ledger = Ledger::disabled().producer(0);
        let mut p = packet(1, 100, &[10, 11], 50);
        p.claims = vec![(UserId(11), Cents(30))];
        t.insert(p);
        assert_eq!(
            t.claim(PacketId(1), UserId(11), 5, 0, &mut ledger),
            Claimed::Repeat {
                cents: Cents(30),
                seq: None
            }
        );
        assert_eq!(t.expire(49, 0, &mut ledger), (0, 0));
        assert_eq!(t.expire(50, 0, &mut ledger), (1, 70));
    }
}
