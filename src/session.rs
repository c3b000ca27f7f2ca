//! The per-connection session: login, then shakes and claims, as pure steps.
//!
//! Owns: the `Service` trait that the core loop calls once per decoded frame
//! and once per message from another core, and its two implementations:
//! `Hongbao`, the product, and `Reference`, the zero-logic server that
//! answers the same frames with fixed replies and is the benchmark's floor.
//! Must not: touch sockets, clocks or locks. The core loop hands in the time
//! and an output buffer; a step appends at most one answer frame (or refuses
//! the frame, which closes the connection) and asks for anything else —
//! messages to other cores, answers released once the ledger is durable —
//! through [`Effects`].
//!
//! Money answers wait for the ledger, under the rule `crate::durable`
//! states and keeps: a shake that grants an envelope returns
//! [`Hold::UntilSync`], and the core holds that answer (and the connection's
//! later answers, to keep their order) until the record is durable. A paid
//! claim's answer is registered in [`Effects::after`] and sent when durable;
//! claim answers are matched by packet id, not order.

use std::sync::Arc;

use crate::clock::Now;
use crate::durable::Hold;
use crate::ids::{Cents, CoreId, EnvelopeId, PacketId, UserId};
use crate::ledger::Record;
use crate::mesh::{ConnAddr, CoreMsg, Directory, Effects, EngineJob, Route, Waiting};
use crate::packets::{Claimed, PacketTable};
use crate::ring::EnvelopeRings;
use crate::stats::CoreCounters;
use crate::token::{Keyring, Refusal};
use crate::wire::{Frame, PUSH_USERS, ShakeOutcome};

/// Where a connection is in its session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionState {
    /// Accepted; the first frame must be a login.
    #[default]
    AwaitingLogin,
    /// Bound to a user; user ids in later frames are ignored for this one.
    LoggedIn(UserId),
}

/// Why a well-formed frame was refused. The connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The first frame was not a login.
    #[error("first frame was cmd {0}, not a login")]
    NotLoggedIn(u16),
    /// A server-to-client cmd arrived from a client.
    #[error("cmd {0} is not sent by clients")]
    WrongDirection(u16),
    /// A login was refused: answered with [`LoginRefusal::result`], then
    /// the connection is closed.
    #[error("login refused: {0}")]
    LoginRefused(LoginRefusal),
}

/// Why a login was refused. Each is counted apart and answered with its own
/// LoginResponse `result` before the connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    /// A v1 login (cmd 0) where signed logins are required.
    #[error("a v1 login where a signed login is required")]
    V1Refused,
    /// A signed login whose token was refused.
    #[error("{0}")]
    Token(Refusal),
}

impl LoginRefusal {
    /// The LoginResponse `result` it is answered with (0 is success).
    pub fn result(self) -> u32 {
        match self {
            LoginRefusal::V1Refused => 1,
            LoginRefusal::Token(Refusal::BadTag) => 2,
            LoginRefusal::Token(Refusal::Expired) => 3,
            LoginRefusal::Token(Refusal::UnknownKey) => 4,
        }
    }
}

/// Which logins a server takes: v1 logins (cmd 0) unless signed ones are
/// required, and signed logins (cmd 16) checked against its keys (with no
/// key, every signed login is refused as signed by an unknown key).
#[derive(Clone, Debug, Default)]
pub struct LoginPolicy {
    /// Refuse v1 logins.
    pub signed_only: bool,
    /// The keys signed logins are checked with.
    pub keys: Keyring,
}

impl LoginPolicy {
    /// The original's: a v1 login binds whatever user it names.
    pub fn open() -> LoginPolicy {
        LoginPolicy::default()
    }
}

/// What a step on one connection's frame works with: who sent it, their
/// session, the time, where the answer goes, and what it may ask of its
/// core. The core loop makes one per read and reuses it for every frame in
/// that read.
pub struct FrameContext<'a> {
    /// The connection the frame came from.
    pub conn: ConnAddr,
    /// Its session (changed by a first login), by value: the loop copies
    /// it in once per read and back after it, so a step reaches it without
    /// following one more pointer per frame.
    pub state: SessionState,
    /// The wall clock at the start of the core's turn.
    pub now: Now,
    /// Where the answer is appended, stamped `now.secs`.
    pub out: &'a mut Vec<u8>,
    /// What the step asks of its core beyond the answer.
    pub fx: &'a mut Effects,
    /// The core's counters for this second.
    pub counters: &'a mut CoreCounters,
}

/// What a core needs from the business logic.
pub trait Service {
    /// Handles one decoded frame from `cx.conn`, appending its answer (if it
    /// has one now) to `cx.out`. The answer may go out at once, or only once
    /// the ledger record behind it is durable: the [`Hold`] says which.
    fn on_frame(&mut self, frame: Frame, cx: &mut FrameContext<'_>) -> Result<Hold, SessionError>;

    /// Handles a message from another core (or the control) that concerns
    /// the business: packets, pushes, presence, claims.
    fn on_message(
        &mut self,
        _msg: CoreMsg,
        _now: Now,
        _fx: &mut Effects,
        _counters: &mut CoreCounters,
    ) {
    }

    /// A logged-in connection closed.
    fn on_close(&mut self, _user: UserId, _conn: ConnAddr, _fx: &mut Effects) {}

    /// Called on the core's tick (every 100 ms): expiries.
    fn on_tick(&mut self, _now: Now, _fx: &mut Effects, _counters: &mut CoreCounters) {}

    /// Called when the core's wall-clock second changes.
    fn on_second(&mut self) {}
}

/// What the session path hands to the service-specific parts.
enum Step {
    /// A shake from this user.
    Shake(UserId),
    /// A claim of this packet by this user.
    Claim(UserId, PacketId),
    /// This user just logged in (first login of the connection).
    Login(UserId),
}

/// The session path both services share: binds the connection at login,
/// refuses a first frame that is not a login and frames only servers send,
/// and hands shakes and claims on with the session's user. The reference
/// differs from the product only in what it does with those, so the
/// benchmark compares exactly the business logic.
#[inline(always)]
fn dispatch(
    frame: Frame,
    cx: &mut FrameContext<'_>,
    policy: &LoginPolicy,
) -> Result<Option<Step>, SessionError> {
    match (cx.state, frame) {
        (SessionState::AwaitingLogin, Frame::LoginRequest { user }) => {
            if policy.signed_only {
                return refuse_login(user, LoginRefusal::V1Refused, cx);
            }
            cx.state = SessionState::LoggedIn(user);
            login_ok(user, cx.now.secs, cx.out, cx.counters);
            Ok(Some(Step::Login(user)))
        }
        (SessionState::AwaitingLogin, Frame::SignedLogin { token }) => {
            match policy.keys.verify(&token, cx.now.secs) {
                Ok(user) => {
                    cx.state = SessionState::LoggedIn(user);
                    login_ok(user, cx.now.secs, cx.out, cx.counters);
                    Ok(Some(Step::Login(user)))
                }
                Err(why) => refuse_login(token.user, LoginRefusal::Token(why), cx),
            }
        }
        (SessionState::AwaitingLogin, f) => Err(SessionError::NotLoggedIn(f.cmd())),
        // A repeated login, v1 or signed, is answered for the session's
        // user and changes nothing: the binding is made once per
        // connection, so nothing in it needs checking.
        (SessionState::LoggedIn(user), Frame::LoginRequest { .. } | Frame::SignedLogin { .. }) => {
            login_ok(user, cx.now.secs, cx.out, cx.counters);
            Ok(None)
        }
        (SessionState::LoggedIn(user), Frame::ShakeRequest { .. }) => {
            cx.counters.shakes += 1;
            Ok(Some(Step::Shake(user)))
        }
        (SessionState::LoggedIn(user), Frame::ClaimRequest { packet, .. }) => {
            Ok(Some(Step::Claim(user, packet)))
        }
        (SessionState::LoggedIn(_), f) => Err(SessionError::WrongDirection(f.cmd())),
    }
}

/// Answers a refused login with its result code (the user as sent, so a
/// client sees which login failed); the connection closes after the answer.
/// Counted by reason where refusals are counted (`server::answer`).
#[cold]
fn refuse_login(
    user: UserId,
    why: LoginRefusal,
    cx: &mut FrameContext<'_>,
) -> Result<Option<Step>, SessionError> {
    Frame::LoginResponse {
        user,
        result: why.result(),
    }
    .encode(cx.now.secs, cx.out);
    Err(SessionError::LoginRefused(why))
}

fn login_ok(user: UserId, now_secs: u64, out: &mut Vec<u8>, counters: &mut CoreCounters) {
    counters.logins += 1;
    Frame::LoginResponse { user, result: 0 }.encode(now_secs, out);
}

fn shake_answer(
    user: UserId,
    result: ShakeOutcome,
    envelope: Option<(EnvelopeId, Cents)>,
    now_secs: u64,
    out: &mut Vec<u8>,
) {
    let (envelope, amount) = envelope.unwrap_or((EnvelopeId(0), Cents(0)));
    Frame::ShakeResponse {
        user,
        result,
        envelope,
        amount,
    }
    .encode(now_secs, out);
}

/// Expired envelopes a shake returns before it answers "none": bounds one
/// shake's work when a ring is full of stale envelopes.
const RETURNS_PER_SHAKE_MAX: usize = 8;

/// Spreads core numbers over the packet split's seed, so cores with the same
/// `--seed` split differently: 2^32 divided by the golden ratio (Knuth's
/// multiplicative hash), whose multiples of consecutive integers share no
/// run of low bits.
const CORE_SEED_SPREAD: u64 = 0x9e37_79b9;

/// The product: shakes take envelopes from this core's ring; packets this
/// core owns are claimed here; users whose home is this core are tracked here.
pub struct Hongbao {
    core: CoreId,
    rings: Arc<EnvelopeRings>,
    /// This core's share of `--max-qps`: shakes (and claims) it takes per
    /// second before it answers shakes "overloaded".
    shakes_per_sec_max: u64,
    shakes_this_sec: u64,
    packets: PacketTable,
    directory: Directory,
    policy: LoginPolicy,
    /// See [`HongbaoSettings::cluster`].
    cluster: bool,
}

/// Settings of the product's business on one core.
#[derive(Clone, Copy, Debug)]
pub struct HongbaoSettings {
    /// Shakes a second this core answers before "overloaded".
    pub shakes_per_sec_max: u64,
    /// Pushes kept per offline user.
    pub mailbox_max: usize,
    /// Connections one user may hold at once (0: no limit); a login past it
    /// closes the user's oldest.
    pub user_conns_max: usize,
    /// Seed of the packet split.
    pub seed: u64,
    /// Cluster mode: packets, claims, presence and mailboxes live in the
    /// cluster's engine; this core hands claims and presence to the engine
    /// thread and keeps no packet and no mail of its own.
    pub cluster: bool,
}

impl Hongbao {
    /// The service for `core`.
    pub fn new(core: CoreId, rings: Arc<EnvelopeRings>, settings: HongbaoSettings) -> Self {
        Hongbao {
            core,
            rings,
            shakes_per_sec_max: settings.shakes_per_sec_max,
            shakes_this_sec: 0,
            packets: PacketTable::new(
                settings.seed ^ (core.0 as u64).wrapping_mul(CORE_SEED_SPREAD),
            ),
            // In cluster mode the engine keeps the mail of users not
            // online here (it knows where they are, if anywhere).
            directory: Directory::new(
                if settings.cluster {
                    0
                } else {
                    settings.mailbox_max
                },
                settings.user_conns_max,
            ),
            policy: LoginPolicy::open(),
            cluster: settings.cluster,
        }
    }

    /// The same service, taking logins under `policy` (open by default).
    pub fn with_policy(mut self, policy: LoginPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Answers one shake for `user`: overloaded, an envelope, gone, or none.
    #[inline(always)]
    fn shake(&mut self, user: UserId, cx: &mut FrameContext<'_>) -> Hold {
        let FrameContext {
            now,
            out,
            fx,
            counters,
            ..
        } = cx;
        let now = *now;
        // The ceiling is checked before the ring, so an overloaded core does
        // no more work than answering.
        if self.shakes_this_sec >= self.shakes_per_sec_max {
            counters.overload += 1;
            shake_answer(user, ShakeOutcome::OVERLOAD, None, now.secs, out);
            return Hold::No;
        }
        self.shakes_this_sec += 1;
        for _ in 0..RETURNS_PER_SHAKE_MAX {
            // "Exhausted" is stored (Release) after the last push, so a pop
            // after loading it (Acquire) sees every envelope; the first pop
            // may have run just before the last push.
            let popped = self.rings.pop(self.core).or_else(|| {
                self.rings
                    .exhausted()
                    .then(|| self.rings.pop(self.core))
                    .flatten()
            });
            let Some(e) = popped else { break };
            if now.secs >= u64::from(e.until_s) {
                // Nobody took it in its time: it leaves circulation.
                fx.ledger.append(Record::EnvelopeReturned {
                    id: e.id,
                    cents: e.amount,
                    at_ms: now.ms,
                });
                counters.envelopes_returned += 1;
                counters.cents_returned += e.amount.0;
                continue;
            }
            counters.got += 1;
            counters.cents_granted += e.amount.0;
            let seq = fx.ledger.append(Record::EnvelopeGranted {
                id: e.id,
                user,
                cents: e.amount,
                at_ms: now.ms,
            });
            shake_answer(
                user,
                ShakeOutcome::GOT,
                Some((e.id, e.amount)),
                now.secs,
                out,
            );
            return Hold::until(seq);
        }
        if self.rings.exhausted() && self.rings.is_empty_for(self.core) {
            counters.gone += 1;
            shake_answer(user, ShakeOutcome::GONE, None, now.secs, out);
        } else {
            counters.none += 1;
            shake_answer(user, ShakeOutcome::NONE, None, now.secs, out);
        }
        Hold::No
    }

    /// A claim from `cx.conn`'s user: decided here, on the packet's owner
    /// core, or in the cluster's engine; its answer now or as a message.
    #[inline(never)]
    fn claim(&mut self, user: UserId, packet: PacketId, cx: &mut FrameContext<'_>) {
        let conn = cx.conn;
        // A claim uses the core's per-second budget like a shake, so
        // a claim flood makes the core refuse shakes rather than go
        // past --max-qps. It is still decided: wire v1 has no
        // "overloaded" answer for a claim, and a claim is never
        // dropped; a connection's claims are held to its fair share
        // before they are read (`--conn-qps-max`).
        self.shakes_this_sec = self.shakes_this_sec.saturating_add(1);
        let owner = cx.fx.owner(packet);
        if self.cluster {
            // Decided in the engine; its answer comes back as a
            // message, counted as away until then. (The engine
            // thread counts how it was decided.)
            cx.fx.claims_away += 1;
            cx.fx.engine.push(EngineJob::Claim {
                packet,
                user,
                reply: conn,
            });
        } else if owner == self.core.0 {
            let claimed = self.claim_here(packet, user, conn, cx.now, cx.fx, cx.counters);
            if let Some(cents) = claimed {
                Frame::ClaimResponse {
                    packet,
                    amount: cents,
                }
                .encode(cx.now.secs, cx.out);
            }
        } else {
            // Its answer comes back as a message: counted until
            // then, so the claims a core has in flight are bounded.
            cx.fx.claims_away += 1;
            cx.fx.send(
                owner,
                CoreMsg::Claim {
                    packet,
                    user,
                    reply: conn,
                },
            );
        }
    }

    /// A first login on `cx.conn`: the user is online at their home core.
    #[inline(never)]
    fn login(&mut self, user: UserId, cx: &mut FrameContext<'_>) {
        let conn = cx.conn;
        let home = cx.fx.home(user);
        if home == self.core.0 {
            self.online(user, conn, cx.fx);
        } else {
            cx.fx.send(home, CoreMsg::Online { user, addr: conn });
        }
    }

    /// Decides `user`'s claim of `packet` on its owner core. `Some(cents)`
    /// when the answer may go now; `None` when it was registered to go to
    /// `reply` once its ledger record is durable.
    fn claim_here(
        &mut self,
        packet: PacketId,
        user: UserId,
        reply: ConnAddr,
        now: Now,
        fx: &mut Effects,
        counters: &mut CoreCounters,
    ) -> Option<Cents> {
        counters.claims += 1;
        let (cents, seq) = match self
            .packets
            .claim(packet, user, now.secs, now.ms, &mut fx.ledger)
        {
            Claimed::Paid { cents, seq } => {
                counters.claims_paid += 1;
                counters.cents_claimed += cents.0;
                (cents, seq)
            }
            Claimed::Repeat { cents, seq } => {
                counters.claims_repeat += 1;
                (cents, seq)
            }
            Claimed::Zero => {
                counters.claims_zero += 1;
                return Some(Cents(0));
            }
        };
        match seq {
            Some(seq) if !fx.is_durable(seq) => {
                fx.after(
                    seq,
                    Waiting::Claim {
                        to: reply,
                        packet,
                        cents,
                    },
                );
                None
            }
            _ => Some(cents),
        }
    }

    /// Routes a push for `user` (this core is their home).
    fn route_push(
        &mut self,
        user: UserId,
        push: Frame,
        hops: u8,
        fx: &mut Effects,
        counters: &mut CoreCounters,
    ) {
        match self.directory.route(user, push) {
            Route::To(to) => fx.send(
                usize::from(to.core),
                CoreMsg::Deliver {
                    to,
                    user,
                    push,
                    hops,
                },
            ),
            Route::Queued => counters.pushes_queued += 1,
            // Not online here: the engine's mailbox has it for their next
            // login, on any node.
            Route::Dropped if self.cluster => counters.pushes_left_to_engine += 1,
            Route::Dropped => counters.push_drops += 1,
        }
    }

    /// `user` logged in on `addr` (this core is their home): deliver the
    /// mail, and close their oldest connection if this one takes them past
    /// `--user-conns-max` (through the core holding it, this one included:
    /// only a core loop closes connections). At most one kick per login, so
    /// the messages stay bounded by the logins read.
    fn online(&mut self, user: UserId, addr: ConnAddr, fx: &mut Effects) {
        if self.cluster && !self.directory.is_online(user) {
            fx.engine.push(EngineJob::Online { user });
        }
        let arrival = self.directory.online(user, addr);
        if let Some(old) = arrival.kicked {
            fx.send(usize::from(old.core), CoreMsg::Kick { to: old, user });
        }
        for push in arrival.mail {
            fx.send(
                usize::from(addr.core),
                CoreMsg::Deliver {
                    to: addr,
                    user,
                    push,
                    hops: 0,
                },
            );
        }
    }
}

impl Hongbao {
    /// The connection `addr` of `user` closed (this core is their home); in
    /// cluster mode the engine learns when their last one here is gone.
    fn offline(&mut self, user: UserId, addr: ConnAddr, fx: &mut Effects) {
        self.directory.offline(user, addr);
        if self.cluster && !self.directory.is_online(user) {
            fx.engine.push(EngineJob::Offline { user });
        }
    }
}

impl Service for Hongbao {
    #[inline(always)]
    fn on_frame(&mut self, frame: Frame, cx: &mut FrameContext<'_>) -> Result<Hold, SessionError> {
        // The shake is the hot path and stays inline; a claim and a login
        // are steps of their own, out of line, so that the core loop's code
        // for a frame stays short.
        Ok(match dispatch(frame, cx, &self.policy)? {
            None => Hold::No,
            Some(Step::Shake(user)) => self.shake(user, cx),
            Some(Step::Claim(user, packet)) => {
                self.claim(user, packet, cx);
                Hold::No
            }
            Some(Step::Login(user)) => {
                self.login(user, cx);
                Hold::No
            }
        })
    }

    fn on_message(
        &mut self,
        msg: CoreMsg,
        now: Now,
        fx: &mut Effects,
        counters: &mut CoreCounters,
    ) {
        match msg {
            CoreMsg::Packet(p) => {
                let mut users = [UserId(0); PUSH_USERS];
                for (slot, &u) in users.iter_mut().zip(p.targets.iter()) {
                    *slot = u;
                }
                let push = Frame::PacketPush {
                    packet: p.id,
                    amount: p.amount,
                    claimants: p.targets.len() as u32,
                    users,
                };
                // Only targets who have not claimed are pushed: all of them
                // for a new packet; after a restart, those still owed.
                let unclaimed: Vec<UserId> = p
                    .targets
                    .iter()
                    .copied()
                    .filter(|t| !p.claims.iter().any(|(u, _)| u == t))
                    .collect();
                // The packet is in the table before any push leaves, so a
                // claim can never overtake its packet.
                self.packets.insert(*p);
                for user in unclaimed {
                    fx.send(
                        fx.home(user),
                        CoreMsg::Push {
                            user,
                            push,
                            hops: 0,
                        },
                    );
                }
            }
            CoreMsg::Push { user, push, hops } => self.route_push(user, push, hops, fx, counters),
            CoreMsg::Online { user, addr } => self.online(user, addr, fx),
            CoreMsg::Offline { user, addr } => self.offline(user, addr, fx),
            CoreMsg::Claim {
                packet,
                user,
                reply,
            } => {
                if let Some(cents) = self.claim_here(packet, user, reply, now, fx, counters) {
                    fx.send(
                        usize::from(reply.core),
                        CoreMsg::ClaimAnswer {
                            to: reply,
                            packet,
                            cents,
                        },
                    );
                }
            }
            // The core loop handles these itself.
            CoreMsg::Shutdown
            | CoreMsg::Deliver { .. }
            | CoreMsg::Kick { .. }
            | CoreMsg::ClaimAnswer { .. } => {}
        }
    }

    fn on_close(&mut self, user: UserId, conn: ConnAddr, fx: &mut Effects) {
        let home = fx.home(user);
        if home == self.core.0 {
            self.offline(user, conn, fx);
        } else {
            fx.send(home, CoreMsg::Offline { user, addr: conn });
        }
    }

    fn on_tick(&mut self, now: Now, fx: &mut Effects, counters: &mut CoreCounters) {
        let (packets, cents) = self.packets.expire(now.secs, now.ms, &mut fx.ledger);
        counters.packets_expired += packets;
        counters.cents_refunded += cents;
    }

    fn on_second(&mut self) {
        self.shakes_this_sec = 0;
    }
}

/// The zero-logic reference: the same frames, session and loop, no business.
/// Every shake is answered "no envelope"; every claim 0 cents. Logins are
/// taken under the same policy as the product's.
#[derive(Default)]
pub struct Reference {
    policy: LoginPolicy,
}

impl Reference {
    /// The reference, taking logins under `policy`.
    pub fn with_policy(policy: LoginPolicy) -> Self {
        Reference { policy }
    }
}

impl Service for Reference {
    #[inline]
    fn on_frame(&mut self, frame: Frame, cx: &mut FrameContext<'_>) -> Result<Hold, SessionError> {
        match dispatch(frame, cx, &self.policy)? {
            Some(Step::Shake(user)) => {
                cx.counters.none += 1;
                shake_answer(user, ShakeOutcome::NONE, None, cx.now.secs, cx.out);
            }
            Some(Step::Claim(_, packet)) => {
                cx.counters.claims += 1;
                cx.counters.claims_zero += 1;
                Frame::ClaimResponse {
                    packet,
                    amount: Cents(0),
                }
                .encode(cx.now.secs, cx.out);
            }
            Some(Step::Login(_)) | None => {}
        }
        Ok(Hold::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PacketId;
    use crate::ledger::Ledger;
    use crate::packets::NewPacket;
    use crate::ring::Envelope;
    use crate::wire::decode;

    const NOW: Now = Now { secs: 1, ms: 1_000 };
    const CONN: ConnAddr = ConnAddr {
        core: 0,
        key: 0,
        serial: 1,
    };

    fn fx(core: usize, cores: usize) -> Effects {
        Effects::new(
            CoreId(core),
            cores,
            Ledger::disabled().producer(core as u16),
        )
    }

    fn step<S: Service>(
        s: &mut S,
        state: &mut SessionState,
        frame: Frame,
        c: &mut CoreCounters,
    ) -> Result<Frame, SessionError> {
        let mut out = Vec::new();
        let mut fx = fx(0, 1);
        let mut cx = FrameContext {
            conn: CONN,
            state: *state,
            now: NOW,
            out: &mut out,
            fx: &mut fx,
            counters: c,
        };
        let answered = s.on_frame(frame, &mut cx);
        *state = cx.state;
        answered?;
        let d = decode(&out).expect("one whole answer");
        assert_eq!(d.len, out.len(), "exactly one answer frame");
        Ok(d.frame)
    }

    fn settings(per_sec: u64) -> HongbaoSettings {
        HongbaoSettings {
            shakes_per_sec_max: per_sec,
            mailbox_max: 4,
            user_conns_max: 4,
            seed: 1,
            cluster: false,
        }
    }

    fn hongbao(per_sec: u64) -> (Hongbao, Arc<EnvelopeRings>) {
        let rings = Arc::new(EnvelopeRings::new(1, 8));
        (
            Hongbao::new(CoreId(0), rings.clone(), settings(per_sec)),
            rings,
        )
    }

    /// Two cores' services, with their effects, and a way to pass the
    /// messages between them as the core loops would.
    struct TwoCores {
        s: [Hongbao; 2],
        fx: [Effects; 2],
        c: CoreCounters,
    }

    impl TwoCores {
        fn new() -> Self {
            let rings = Arc::new(EnvelopeRings::new(2, 8));
            TwoCores {
                s: [0, 1].map(|i| Hongbao::new(CoreId(i), rings.clone(), settings(100))),
                fx: [fx(0, 2), fx(1, 2)],
                c: CoreCounters::default(),
            }
        }

        /// Delivers every queued message until none is left; returns the
        /// `Deliver`, `ClaimAnswer` and `Kick` messages meant for the core
        /// loops.
        fn settle(&mut self) -> Vec<CoreMsg> {
            let mut for_loops = Vec::new();
            loop {
                let mut moved = false;
                for from in 0..2 {
                    for to in 0..2 {
                        for msg in std::mem::take(&mut self.fx[from].outbox[to]) {
                            moved = true;
                            match msg {
                                CoreMsg::Deliver { .. }
                                | CoreMsg::ClaimAnswer { .. }
                                | CoreMsg::Kick { .. } => for_loops.push(msg),
                                msg => {
                                    self.s[to].on_message(msg, NOW, &mut self.fx[to], &mut self.c)
                                }
                            }
                        }
                    }
                }
                if !moved {
                    return for_loops;
                }
            }
        }

        fn frame(
            &mut self,
            core: usize,
            conn: ConnAddr,
            st: &mut SessionState,
            f: Frame,
        ) -> Vec<u8> {
            let mut out = Vec::new();
            let mut cx = FrameContext {
                conn,
                state: *st,
                now: NOW,
                out: &mut out,
                fx: &mut self.fx[core],
                counters: &mut self.c,
            };
            self.s[core].on_frame(f, &mut cx).unwrap();
            *st = cx.state;
            out
        }
    }

    // One scenario followed message by message across three cores (the
    // packet's owner, a user's home, the core holding the connection): its
    // length is the route's, and cutting it would hide the order checked.
    #[test]
    fn pushes_find_users_on_any_core_and_claims_cross_to_the_owner() {
        let mut t = TwoCores::new();
        // User 3 (home: core 1) is online on core 0; user 4 is offline.
        let conn = ConnAddr {
            core: 0,
            key: 9,
            serial: 2,
        };
        let mut st = SessionState::default();
        t.frame(0, conn, &mut st, Frame::LoginRequest { user: UserId(3) });
        assert!(t.settle().is_empty());
        // Packet 0x200001 is owned by core 1.
        let id = PacketId(0x20_0001);
        t.s[1].on_message(
            CoreMsg::Packet(Box::new(NewPacket {
                id,
                amount: Cents(50),
                targets: vec![UserId(3), UserId(4)].into_boxed_slice(),
                claims: Vec::new(),
                until_s: 100,
            })),
            NOW,
            &mut t.fx[1],
            &mut t.c,
        );
        let delivered = t.settle();
        assert!(
            matches!(delivered.as_slice(), [CoreMsg::Deliver { to, user: UserId(3), .. }] if *to == conn),
            "{delivered:?}"
        );
        assert_eq!(
            t.c.pushes_queued, 1,
            "user 4 is offline: kept in the mailbox"
        );
        // User 3 claims on core 0: the claim travels to core 1 and back.
        let out = t.frame(
            0,
            conn,
            &mut st,
            Frame::ClaimRequest {
                user: UserId(0),
                packet: id,
            },
        );
        assert!(out.is_empty(), "answered by the owner, later");
        let answers = t.settle();
        let [CoreMsg::ClaimAnswer { to, packet, cents }] = answers.as_slice() else {
            panic!("{answers:?}")
        };
        assert_eq!((*to, *packet), (conn, id));
        assert!((1..=49).contains(&cents.0), "leaves a cent for user 4");
        // User 4 logs in on core 1 and gets the push from their mailbox.
        let conn4 = ConnAddr {
            core: 1,
            key: 1,
            serial: 1,
        };
        let mut st4 = SessionState::default();
        t.frame(1, conn4, &mut st4, Frame::LoginRequest { user: UserId(4) });
        let delivered = t.settle();
        assert!(
            matches!(delivered.as_slice(), [CoreMsg::Deliver { to, user: UserId(4), .. }] if *to == conn4)
        );
        // A stranger gets 0 at once on the owner core.
        let mut st5 = SessionState::LoggedIn(UserId(5));
        let out = t.frame(
            1,
            conn4,
            &mut st5,
            Frame::ClaimRequest {
                user: UserId(5),
                packet: id,
            },
        );
        assert_eq!(
            decode(&out).unwrap().frame,
            Frame::ClaimResponse {
                packet: id,
                amount: Cents(0)
            }
        );
        assert_eq!((t.c.claims_paid, t.c.claims_zero), (1, 1));
    }

    /// A user past `--user-conns-max` (4 here) logging in on either core:
    /// each login past it sends one kick, for the oldest connection, to the
    /// core holding it (its own home core included); their closes reaching
    /// home send nothing more.
    #[test]
    fn logins_past_the_cap_kick_the_oldest_connection_on_its_core() {
        let mut t = TwoCores::new();
        let user = UserId(3); // home: core 1
        let conns: Vec<ConnAddr> = (0..7u32)
            .map(|i| ConnAddr {
                core: (i % 2) as u16,
                key: i,
                serial: i + 1,
            })
            .collect();
        for (i, &c) in conns.iter().enumerate() {
            let mut st = SessionState::default();
            t.frame(
                usize::from(c.core),
                c,
                &mut st,
                Frame::LoginRequest { user },
            );
            let sent = t.settle();
            if i < 4 {
                assert!(sent.is_empty(), "login {i}: {sent:?}");
                continue;
            }
            let old = conns[i - 4];
            assert!(
                matches!(sent.as_slice(), [CoreMsg::Kick { to, user: u }] if *to == old && *u == user),
                "login {i}: {sent:?}"
            );
            // The kicked connection's core closes it and tells home.
            t.s[usize::from(old.core)].on_close(user, old, &mut t.fx[usize::from(old.core)]);
            assert!(t.settle().is_empty(), "a close kicks nothing");
        }
    }

    #[test]
    fn first_frame_must_be_a_login() {
        let (mut s, _) = hongbao(10);
        let mut st = SessionState::default();
        let mut c = CoreCounters::default();
        let shake = Frame::ShakeRequest { user: UserId(1) };
        assert_eq!(
            step(&mut s, &mut st, shake, &mut c),
            Err(SessionError::NotLoggedIn(2))
        );
    }

    #[test]
    fn shakes_take_envelopes_then_say_none_then_overload() {
        let (mut s, rings) = hongbao(2);
        let env = Envelope {
            id: EnvelopeId(0x100000),
            amount: Cents(42),
            until_s: 100,
        };
        rings.push(CoreId(0), env).unwrap();
        let mut st = SessionState::default();
        let mut c = CoreCounters::default();
        let login = step(
            &mut s,
            &mut st,
            Frame::LoginRequest { user: UserId(7) },
            &mut c,
        );
        assert_eq!(
            login,
            Ok(Frame::LoginResponse {
                user: UserId(7),
                result: 0
            })
        );
        // The user id in the frame is ignored in favour of the session's.
        let shake = Frame::ShakeRequest { user: UserId(999) };
        let answers: Vec<Frame> = (0..3)
            .map(|_| step(&mut s, &mut st, shake, &mut c).unwrap())
            .collect();
        let want = |result, envelope, amount| Frame::ShakeResponse {
            user: UserId(7),
            result,
            envelope: EnvelopeId(envelope),
            amount: Cents(amount),
        };
        assert_eq!(
            answers,
            [
                want(ShakeOutcome::GOT, 0x100000, 42),
                want(ShakeOutcome::NONE, 0, 0),
                want(ShakeOutcome::OVERLOAD, 0, 0),
            ]
        );
        assert_eq!(
            (c.shakes, c.got, c.none, c.overload, c.cents_granted),
            (3, 1, 1, 1, 42)
        );
        s.on_second();
        rings.set_exhausted(true);
        assert_eq!(
            step(&mut s, &mut st, shake, &mut c),
            Ok(want(ShakeOutcome::GONE, 0, 0))
        );
    }

    #[test]
    fn signed_logins_bind_the_proven_user_and_refusals_answer_their_reason() {
        use crate::token::{KEY_LEN, Keyring, Token};
        let keys = Keyring::new(&[(1, [3; KEY_LEN])]).unwrap();
        let good = keys.sign(1, UserId(7), NOW.secs + 10).unwrap();
        let mut s = Reference::with_policy(LoginPolicy {
            signed_only: true,
            keys: keys.clone(),
        });
        let mut c = CoreCounters::default();
        let refused = |s: &mut Reference, f: Frame, c: &mut CoreCounters| {
            let mut st = SessionState::default();
            let mut out = Vec::new();
            let mut fx = fx(0, 1);
            let mut cx = FrameContext {
                conn: CONN,
                state: st,
                now: NOW,
                out: &mut out,
                fx: &mut fx,
                counters: c,
            };
            let err = s.on_frame(f, &mut cx).unwrap_err();
            st = cx.state;
            assert_eq!(st, SessionState::AwaitingLogin, "nothing bound");
            (decode(&out).unwrap().frame, err)
        };
        let as_b = Token {
            user: UserId(8),
            ..good
        };
        let expired = keys.sign(1, UserId(7), NOW.secs).unwrap();
        for (f, result, why) in [
            (
                Frame::LoginRequest { user: UserId(7) },
                1,
                LoginRefusal::V1Refused,
            ),
            (
                Frame::SignedLogin { token: as_b },
                2,
                LoginRefusal::Token(Refusal::BadTag),
            ),
            (
                Frame::SignedLogin { token: expired },
                3,
                LoginRefusal::Token(Refusal::Expired),
            ),
        ] {
            let user = match f {
                Frame::SignedLogin { token } => token.user,
                _ => UserId(7),
            };
            assert_eq!(
                refused(&mut s, f, &mut c),
                (
                    Frame::LoginResponse { user, result },
                    SessionError::LoginRefused(why)
                )
            );
        }
        let mut st = SessionState::default();
        let login = Frame::SignedLogin { token: good };
        assert_eq!(
            step(&mut s, &mut st, login, &mut c),
            Ok(Frame::LoginResponse {
                user: UserId(7),
                result: 0
            })
        );
        assert_eq!(st, SessionState::LoggedIn(UserId(7)));
        // A later login, even B's, changes nothing.
        let again = step(
            &mut s,
            &mut st,
            Frame::LoginRequest { user: UserId(8) },
            &mut c,
        );
        assert_eq!(
            again,
            Ok(Frame::LoginResponse {
                user: UserId(7),
                result: 0
            })
        );
        assert_eq!(c.logins, 2);
    }

    #[test]
    fn server_frames_from_a_client_are_refused() {
        let mut s = Reference::default();
        let mut st = SessionState::LoggedIn(UserId(1));
        let mut c = CoreCounters::default();
        let f = Frame::ClaimResponse {
            packet: PacketId(1),
            amount: Cents(1),
        };
        assert_eq!(
            step(&mut s, &mut st, f, &mut c),
            Err(SessionError::WrongDirection(6))
        );
    }
}
