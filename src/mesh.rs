//! What cores say to each other, and what a step asks its core to do.
//!
//! Owns: [`CoreMsg`], the messages that travel between cores (and from the
//! control to a core) through each core's bounded crossbeam channel, woken by
//! its `mio::Waker`; [`ConnAddr`], a connection's address across cores;
//! [`Effects`], what a session step asks of its core beyond its own answer
//! (messages to send, answers to release once the ledger is durable); and
//! the [`Directory`] in which a user's home core tracks where the user is
//! online and keeps pushes for users who are not. Must not: do I/O.
//!
//! Routing: a packet lives on its owner core (`id mod cores`), so its
//! claims are serialised there; a user's presence and mailbox live on the
//! user's home core (`user mod cores`). Messages are collected per
//! destination during a loop turn and sent at its end, with one wake-up per
//! destination core, so their cost is per turn, not per message.

use std::collections::{HashMap, VecDeque};

use crate::ids::{Cents, CoreId, PacketId, UserId};
use crate::ledger::Producer;
use crate::packets::NewPacket;
use crate::wire::Frame;

/// A connection's address: its core, slab key and the serial number it got
/// at accept, so an answer never reaches a later connection in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnAddr {
    /// The core holding it.
    pub core: u16,
    /// Its slab key there.
    pub key: u32,
    /// The core's accept counter when it was accepted.
    pub serial: u32,
}

/// A message to a core.
#[derive(Debug)]
pub enum CoreMsg {
    /// Stop accepting, flush pending answers for up to the grace period, exit.
    Shutdown,
    /// A packet this core owns, already durable; its pushes go out from here.
    Packet(Box<NewPacket>),
    /// To the user's home core: push this packet to `user` wherever they are.
    Push {
        /// The user.
        user: UserId,
        /// The push frame (cmd 4).
        push: Frame,
        /// Times it has been routed already (bounds a user flapping between cores).
        hops: u8,
    },
    /// To the core holding `to`: write this push on that connection.
    Deliver {
        /// The connection.
        to: ConnAddr,
        /// Its user.
        user: UserId,
        /// The push frame.
        push: Frame,
        /// As in `Push`.
        hops: u8,
    },
    /// To the user's home core: the user logged in on `addr`.
    Online {
        /// The user.
        user: UserId,
        /// Where.
        addr: ConnAddr,
    },
    /// To the user's home core: the connection `addr` of the user closed.
    Offline {
        /// The user.
        user: UserId,
        /// Which.
        addr: ConnAddr,
    },
    /// To the packet's owner: `user` claims `packet`; answer to `reply`.
    Claim {
        /// The packet.
        packet: PacketId,
        /// The session's user.
        user: UserId,
        /// Where the answer goes.
        reply: ConnAddr,
    },
    /// From the owner, once durable: the claim's answer for connection `to`.
    ClaimAnswer {
        /// The connection.
        to: ConnAddr,
        /// The packet.
        packet: PacketId,
        /// The user's share (0 when none).
        cents: Cents,
    },
}

/// An answer waiting for the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Release the held shake answers of this connection (on this core).
    Conn {
        /// Its slab key.
        key: u32,
        /// Its serial.
        serial: u32,
    },
    /// Answer a claim to connection `to` (on this core or another).
    Claim {
        /// The connection.
        to: ConnAddr,
        /// The packet.
        packet: PacketId,
        /// The share.
        cents: Cents,
    },
}

/// What a session step asks of its core beyond the answer it wrote.
#[derive(Debug)]
pub struct Effects {
    /// This core.
    pub core: CoreId,
    /// How many cores there are.
    pub cores: usize,
    /// This core's ledger producer.
    pub ledger: Producer,
    /// Messages per destination core, sent at the end of the turn; this
    /// core's own are handled by it at the end of the turn too.
    pub outbox: Vec<Vec<CoreMsg>>,
    /// Answers waiting for this core's ledger entry number, in order.
    pub after_sync: VecDeque<(u64, Waiting)>,
}

impl Effects {
    /// Effects for `core` of `cores`, appending through `ledger`.
    pub fn new(core: CoreId, cores: usize, ledger: Producer) -> Self {
        Effects {
            core,
            cores,
            ledger,
            outbox: (0..cores).map(|_| Vec::new()).collect(),
            after_sync: VecDeque::new(),
        }
    }

    /// Queues `msg` for `core`.
    #[inline]
    pub fn send(&mut self, core: usize, msg: CoreMsg) {
        self.outbox[core].push(msg);
    }

    /// Runs `waiting` once ledger entry `seq` of this core is durable.
    #[inline]
    pub fn after(&mut self, seq: u64, waiting: Waiting) {
        debug_assert!(self.after_sync.back().is_none_or(|&(s, _)| s <= seq));
        self.after_sync.push_back((seq, waiting));
    }

    /// The core owning packet `id`.
    #[inline]
    pub fn owner(&self, id: PacketId) -> usize {
        id.0 as usize % self.cores
    }

    /// The home core of `user`: where their presence and mailbox live.
    #[inline]
    pub fn home(&self, user: UserId) -> usize {
        user.0 as usize % self.cores
    }

    /// True when this core's ledger entry `seq` is durable already.
    #[inline]
    pub fn is_durable(&self, seq: u64) -> bool {
        seq <= self.ledger.durable()
    }
}

/// Where a push should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To this connection (the user's latest).
    To(ConnAddr),
    /// The user is offline: kept for their next login.
    Queued,
    /// The user is offline and their mailbox is full: dropped.
    Dropped,
}

#[derive(Debug, Default)]
struct Presence {
    /// The user's connections, latest last. Usually one.
    conns: Vec<ConnAddr>,
    /// Pushes waiting for a login, oldest first.
    mail: Vec<Frame>,
}

/// The users whose home is this core: where they are online, and the pushes
/// waiting for those who are not.
#[derive(Debug)]
pub struct Directory {
    users: HashMap<UserId, Presence>,
    mailbox_max: usize,
}

impl Directory {
    /// A directory keeping at most `mailbox_max` pushes per offline user.
    pub fn new(mailbox_max: usize) -> Self {
        Directory {
            users: HashMap::new(),
            mailbox_max,
        }
    }

    /// Users with an entry (online, or with mail).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user has an entry.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// `user` logged in on `addr`; returns the mail to deliver there now.
    pub fn online(&mut self, user: UserId, addr: ConnAddr) -> Vec<Frame> {
        let p = self.users.entry(user).or_default();
        p.conns.push(addr);
        std::mem::take(&mut p.mail)
    }

    /// The connection `addr` of `user` closed.
    pub fn offline(&mut self, user: UserId, addr: ConnAddr) {
        if let Some(p) = self.users.get_mut(&user) {
            p.conns.retain(|&a| a != addr);
            if p.conns.is_empty() && p.mail.is_empty() {
                self.users.remove(&user);
            }
        }
    }

    /// Decides where a push for `user` goes; keeps it if they are offline.
    pub fn route(&mut self, user: UserId, push: Frame) -> Route {
        let p = self.users.entry(user).or_default();
        if let Some(&addr) = p.conns.last() {
            return Route::To(addr);
        }
        if p.mail.len() >= self.mailbox_max {
            return Route::Dropped;
        }
        p.mail.push(push);
        Route::Queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(id: u32) -> Frame {
        Frame::PacketPush {
            packet: PacketId(id),
            amount: Cents(10),
            claimants: 1,
            users: [UserId(1), UserId(0), UserId(0)],
        }
    }

    #[test]
    fn pushes_wait_for_a_login_up_to_the_mailbox_size() {
        let mut d = Directory::new(2);
        let u = UserId(1);
        assert_eq!(d.route(u, push(1)), Route::Queued);
        assert_eq!(d.route(u, push(2)), Route::Queued);
        assert_eq!(d.route(u, push(3)), Route::Dropped);
        let a = ConnAddr {
            core: 0,
            key: 5,
            serial: 9,
        };
        assert_eq!(d.online(u, a), vec![push(1), push(2)]);
        assert_eq!(d.route(u, push(4)), Route::To(a));
        let b = ConnAddr {
            core: 1,
            key: 5,
            serial: 1,
        };
        d.online(u, b);
        assert_eq!(d.route(u, push(5)), Route::To(b), "the latest connection");
        d.offline(u, b);
        assert_eq!(d.route(u, push(6)), Route::To(a));
        d.offline(u, a);
        assert!(d.is_empty());
    }
}
