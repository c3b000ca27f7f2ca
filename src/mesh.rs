//! What cores say to each other, and what a step asks its core to do.
//!
//! Owns: [`CoreMsg`], the messages that travel between cores (and from the
//! control to a core) through each core's bounded crossbeam channel, woken by
//! its `mio::Waker`; [`ConnAddr`], a connection's address across cores;
//! [`Effects`], what a session step asks of its core beyond its own answer
//! (messages to send, answers to release once the ledger is durable, under
//! the rule `crate::durable` keeps; [`Waiting`] names who waits); and
//! [`Peers`], every core's inbox and waker, for whoever sends to a core
//! (the cores, the generator); and the `Directory` in which a user's home
//! core tracks where the user is online and keeps pushes for users who are
//! not. Must not: do I/O.
//!
//! Routing: a packet lives on its owner core (`id mod cores`), so its
//! claims are serialised there; a user's presence and mailbox live on the
//! user's home core (`user mod cores`). Messages are collected per
//! destination during a loop turn and sent at its end, with one wake-up per
//! destination core, so their cost is per turn, not per message.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::Sender;
use mio::Waker;

use crate::durable::AfterSync;
use crate::ids::{Cents, CoreId, PacketId, UserId};
use crate::ledger::Producer;
use crate::packets::NewPacket;
use crate::wire::Frame;

/// Every core's inbox and waker, for sending messages between cores.
#[derive(Clone, Debug)]
pub struct Peers {
    /// Each core's inbox.
    pub inboxes: Vec<Sender<CoreMsg>>,
    /// Each core's waker.
    pub wakers: Vec<Arc<Waker>>,
    /// Cluster mode: the engine thread's inbox (bounded; it waits on it
    /// with a deadline, so it needs no waker). `None` on a single server.
    pub engine: Option<Sender<EngineJob>>,
}

/// Cluster mode: what a core asks of the engine thread (`server::engine`),
/// which talks to the cluster's engine so that no core ever waits on it.
#[derive(Debug)]
pub enum EngineJob {
    /// `user` claims `packet`: decided in the engine, answered to `reply`
    /// (a [`CoreMsg::ClaimAnswer`]) once it is on a replica and mirrored in
    /// this node's ledger, or 0 when that could not be confirmed. Every
    /// claim sent gets exactly one answer.
    Claim {
        /// The packet.
        packet: PacketId,
        /// The session's user.
        user: UserId,
        /// Where the answer goes.
        reply: ConnAddr,
    },
    /// From the user's home core: `user` has a first connection on this
    /// node (presence in the engine; their undelivered pushes come back as
    /// [`CoreMsg::Push`]).
    Online {
        /// The user.
        user: UserId,
    },
    /// From the user's home core: `user`'s last connection on this node
    /// closed.
    Offline {
        /// The user.
        user: UserId,
    },
    /// A push from the engine was written on one of `user`'s connections:
    /// it leaves their mailbox in the engine.
    Delivered {
        /// The user.
        user: UserId,
        /// The push frame (cmd 4) as written.
        push: Frame,
    },
}

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
    /// From the user's home core to the core holding `to`: the user has
    /// more connections than `--user-conns-max`, and `to` is the oldest;
    /// close it if it is still that connection of that user.
    Kick {
        /// The connection.
        to: ConnAddr,
        /// Its user.
        user: UserId,
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

/// Who waits for the ledger (see `crate::durable` for the rule): released
/// by the core loop once the entry it waits for is durable.
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

/// Messages a core keeps for one destination before it stops reading its
/// connections (backpressure): past this, whatever a read would add waits
/// in the senders' sockets instead. A read adds at most one message per
/// frame (a claim, a login), so an outbox holds at most this plus one read's
/// frames plus what one inbox's drain produces (an answer per claim, a
/// delivery per push, at most one kick and a mailbox of deliveries per
/// login).
pub(crate) const OUTBOX_MAX: usize = 4096;
/// Claims this core has sent to owner cores and not yet had answered: past
/// this it stops reading its connections. Every claim sent gets exactly one
/// answer back, so this bounds the claims and claim answers in every queue
/// between cores that this core's connections caused.
pub(crate) const CLAIMS_AWAY_MAX: u64 = 8192;
/// Ledger entries a core keeps (the writer's channel being full) before it
/// stops reading its connections.
pub(crate) const LEDGER_BACKLOG_MAX: usize = 4096;

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
    pub after_sync: AfterSync<Waiting>,
    /// Claims sent to other cores whose answers have not come back.
    pub claims_away: u64,
    /// Cluster mode: jobs for the engine thread, sent at the end of the
    /// turn (empty and unused on a single server).
    pub engine: Vec<EngineJob>,
}

impl Effects {
    /// Effects for `core` of `cores`, appending through `ledger`.
    pub fn new(core: CoreId, cores: usize, ledger: Producer) -> Self {
        Effects {
            core,
            cores,
            ledger,
            outbox: (0..cores).map(|_| Vec::new()).collect(),
            after_sync: AfterSync::new(),
            claims_away: 0,
            engine: Vec::new(),
        }
    }

    /// True while the core cannot hand on what reading more requests would
    /// produce: an outbox, the claims away or the ledger backlog is at its
    /// cap. The core then reads no connection (its inbox, answers and
    /// writes go on) until this is false again.
    #[inline]
    pub fn backpressure(&self) -> bool {
        self.claims_away >= CLAIMS_AWAY_MAX
            || self.ledger.backlog() >= LEDGER_BACKLOG_MAX
            || self.outbox.iter().any(|o| o.len() >= OUTBOX_MAX)
            || self.engine.len() >= OUTBOX_MAX
    }

    /// Queues `msg` for `core`.
    #[inline]
    pub fn send(&mut self, core: usize, msg: CoreMsg) {
        self.outbox[core].push(msg);
    }

    /// Runs `waiting` once ledger entry `seq` of this core is durable.
    #[inline]
    pub fn after(&mut self, seq: u64, waiting: Waiting) {
        self.after_sync.push(seq, waiting);
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

/// Where one user is. A directory entry per online user is the one thing
/// a logged-in connection adds beyond its slab slot, so the common case (one
/// connection, no mail) is kept inline: 16 bytes, no allocation.
#[derive(Debug)]
enum Presence {
    /// Online on one connection, no mail waiting.
    One(ConnAddr),
    /// Several connections, or mail waiting (then usually none): rare.
    More(Box<Crowd>),
}

#[derive(Debug, Default)]
struct Crowd {
    /// The user's connections, latest last; at most `--user-conns-max`.
    conns: Vec<ConnAddr>,
    /// Pushes waiting for a login, oldest first.
    mail: Vec<Frame>,
}

impl Crowd {
    /// The entry this crowd should become: itself, one connection inline,
    /// or none at all.
    fn settle(self: Box<Crowd>) -> Option<Presence> {
        match (self.conns.as_slice(), self.mail.is_empty()) {
            ([], true) => None,
            ([one], true) => Some(Presence::One(*one)),
            _ => Some(Presence::More(self)),
        }
    }
}

/// What a login changes at the user's home core.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// The pushes that waited for the login, oldest first: to deliver on
    /// the new connection now.
    pub mail: Vec<Frame>,
    /// The user's oldest connection, when the login took them past
    /// `--user-conns-max`: already out of the directory, to be closed.
    pub kicked: Option<ConnAddr>,
}

/// The users whose home is this core: where they are online, and the pushes
/// waiting for those who are not.
#[derive(Debug)]
pub(crate) struct Directory {
    users: HashMap<UserId, Presence>,
    mailbox_max: usize,
    /// Connections one user may hold at once (0: no limit).
    user_conns_max: usize,
}

impl Directory {
    /// A directory keeping at most `mailbox_max` pushes per offline user
    /// and at most `user_conns_max` connections per user (0: no limit).
    pub fn new(mailbox_max: usize, user_conns_max: usize) -> Self {
        Directory {
            users: HashMap::new(),
            mailbox_max,
            user_conns_max,
        }
    }

    /// Users with an entry (online, or with mail): what the tests check
    /// is never kept for nothing.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user has an entry.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// `user` logged in on `addr`; returns the mail to deliver there now
    /// and, when that makes more than `--user-conns-max` connections, the
    /// user's oldest one, which leaves the directory at once (not the new
    /// one, so a user reconnecting before their old socket timed out gets
    /// in). Its close later finds nothing to remove, and it never logs in
    /// again, so a kick causes no other kick.
    pub fn online(&mut self, user: UserId, addr: ConnAddr) -> Arrival {
        let max = self.user_conns_max;
        let over = |n: usize| max != 0 && n > max;
        let mut kicked = None;
        let (presence, mail) = match self.users.remove(&user) {
            None => (Presence::One(addr), Vec::new()),
            Some(Presence::One(before)) if over(2) => {
                kicked = Some(before);
                (Presence::One(addr), Vec::new())
            }
            Some(Presence::One(before)) => (
                Presence::More(Box::new(Crowd {
                    conns: vec![before, addr],
                    mail: Vec::new(),
                })),
                Vec::new(),
            ),
            Some(Presence::More(mut crowd)) => {
                crowd.conns.push(addr);
                if over(crowd.conns.len()) {
                    // One login adds one connection, so one goes: the
                    // oldest, first in the list.
                    kicked = Some(crowd.conns.remove(0));
                }
                let mail = std::mem::take(&mut crowd.mail);
                let settled = crowd.settle().unwrap_or(Presence::One(addr));
                (settled, mail)
            }
        };
        self.users.insert(user, presence);
        Arrival { mail, kicked }
    }

    /// True while `user` has a connection here.
    pub fn is_online(&self, user: UserId) -> bool {
        match self.users.get(&user) {
            Some(Presence::One(_)) => true,
            Some(Presence::More(crowd)) => !crowd.conns.is_empty(),
            None => false,
        }
    }

    /// The connection `addr` of `user` closed.
    pub fn offline(&mut self, user: UserId, addr: ConnAddr) {
        match self.users.remove(&user) {
            None => {}
            Some(Presence::One(a)) if a == addr => {}
            Some(one @ Presence::One(_)) => {
                self.users.insert(user, one);
            }
            Some(Presence::More(mut crowd)) => {
                crowd.conns.retain(|&a| a != addr);
                if let Some(p) = crowd.settle() {
                    self.users.insert(user, p);
                }
            }
        }
    }

    /// Decides where a push for `user` goes; keeps it if they are offline.
    pub fn route(&mut self, user: UserId, push: Frame) -> Route {
        match self.users.get_mut(&user) {
            Some(Presence::One(addr)) => Route::To(*addr),
            Some(Presence::More(crowd)) => match crowd.conns.last() {
                Some(&addr) => Route::To(addr),
                None if crowd.mail.len() >= self.mailbox_max => Route::Dropped,
                None => {
                    crowd.mail.push(push);
                    Route::Queued
                }
            },
            None if self.mailbox_max == 0 => Route::Dropped,
            None => {
                let crowd = Crowd {
                    conns: Vec::new(),
                    mail: vec![push],
                };
                self.users.insert(user, Presence::More(Box::new(crowd)));
                Route::Queued
            }
        }
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

    /// The memory bound of the queues between cores (docs/ARCHITECTURE.md,
    /// "Bounded queues and backpressure") counts 64 bytes a message.
    #[test]
    fn a_message_between_cores_is_at_most_64_bytes() {
        assert!(std::mem::size_of::<CoreMsg>() <= 64);
    }

    #[test]
    fn an_online_user_costs_sixteen_bytes_inline() {
        assert!(std::mem::size_of::<Presence>() <= 16);
    }

    /// The directory against the obvious model (every user's connections
    /// in a Vec, mail in a Vec) over random logins, logouts and pushes.
    #[test]
    fn the_directory_behaves_as_a_list_of_connections_and_a_mailbox() {
        let mut rng = fastrand::Rng::with_seed(7);
        const CONNS_MAX: usize = 3;
        let mut d = Directory::new(3, CONNS_MAX);
        let mut model: HashMap<u32, (Vec<ConnAddr>, Vec<Frame>)> = HashMap::new();
        let mut serial = 0;
        for step in 0..20_000 {
            let user = rng.u32(0..8);
            let (conns, mail) = model.entry(user).or_default();
            match rng.u8(0..3) {
                0 => {
                    serial += 1;
                    let a = ConnAddr {
                        core: rng.u16(0..2),
                        key: rng.u32(0..4),
                        serial,
                    };
                    conns.push(a);
                    let kicked = (conns.len() > CONNS_MAX).then(|| conns.remove(0));
                    let want = Arrival {
                        mail: std::mem::take(mail),
                        kicked,
                    };
                    assert_eq!(d.online(UserId(user), a), want, "step {step}");
                    if let Some(k) = kicked {
                        // Its close reaches the directory later: nothing.
                        d.offline(UserId(user), k);
                    }
                }
                1 if !conns.is_empty() => {
                    let a = conns.remove(rng.usize(0..conns.len()));
                    d.offline(UserId(user), a);
                }
                _ => {
                    let f = push(step);
                    let want = match conns.last() {
                        Some(&a) => Route::To(a),
                        None if mail.len() >= 3 => Route::Dropped,
                        None => {
                            mail.push(f);
                            Route::Queued
                        }
                    };
                    assert_eq!(d.route(UserId(user), f), want, "step {step}");
                }
            }
            let live = model
                .values()
                .filter(|(c, m)| !c.is_empty() || !m.is_empty())
                .count();
            assert_eq!(d.len(), live, "step {step}: no entry kept for nothing");
        }
    }

    #[test]
    fn pushes_wait_for_a_login_up_to_the_mailbox_size() {
        let mut d = Directory::new(2, 0);
        let u = UserId(1);
        assert_eq!(d.route(u, push(1)), Route::Queued);
        assert_eq!(d.route(u, push(2)), Route::Queued);
        assert_eq!(d.route(u, push(3)), Route::Dropped);
        let a = ConnAddr {
            core: 0,
            key: 5,
            serial: 9,
        };
        assert_eq!(d.online(u, a).mail, vec![push(1), push(2)]);
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

    fn conn(serial: u32) -> ConnAddr {
        ConnAddr {
            core: (serial % 2) as u16,
            key: serial,
            serial,
        }
    }

    /// A login past `--user-conns-max` takes out the user's oldest
    /// connection, never the new one, once; the kicked connection's close
    /// changes nothing; other users are not touched; 0 is no limit.
    #[test]
    fn a_login_past_the_cap_kicks_the_oldest_connection_once() {
        for max in [1, 2, 4] {
            let mut d = Directory::new(4, max);
            let (u, other) = (UserId(3), UserId(4));
            d.online(other, conn(100));
            for s in 1..=max as u32 {
                assert_eq!(d.online(u, conn(s)).kicked, None, "max {max}");
            }
            // Each further login kicks the oldest still there, in order.
            for s in max as u32 + 1..=max as u32 + 5 {
                let kicked = d.online(u, conn(s)).kicked;
                assert_eq!(kicked, Some(conn(s - max as u32)), "max {max} login {s}");
                d.offline(u, kicked.unwrap());
                assert_eq!(d.route(u, push(s)), Route::To(conn(s)), "the latest");
            }
            // The closes of the kicked ones arriving again: no effect.
            for s in 1..=5 {
                d.offline(u, conn(s));
            }
            // The user still holds exactly `max` connections, the latest.
            let last = max as u32 + 5;
            for s in (last + 1 - max as u32..=last).rev() {
                assert_eq!(d.route(u, push(s)), Route::To(conn(s)));
                d.offline(u, conn(s));
            }
            assert_eq!(d.route(u, push(1)), Route::Queued, "all gone");
            assert_eq!(d.route(other, push(1)), Route::To(conn(100)));
        }
        let mut open = Directory::new(4, 0);
        for s in 1..=100 {
            assert_eq!(open.online(UserId(1), conn(s)).kicked, None, "0: no limit");
        }
    }
}
