//! The per-connection session: login, then shakes (and claims), as a pure step.
//!
//! Owns: the `Service` trait that the core loop calls once per decoded frame,
//! and its two implementations: `Hongbao`, the product, and `Reference`, the
//! zero-logic server that answers the same frames with fixed replies and is
//! the benchmark's floor. Must not: touch sockets, clocks or locks. The core
//! loop hands in the current second and an output buffer; a step appends
//! exactly one answer frame or refuses the frame, which closes the connection.

use std::sync::Arc;

use crate::ids::{Cents, CoreId, EnvelopeId, UserId};
use crate::ring::EnvelopeRings;
use crate::stats::CoreCounters;
use crate::wire::{Frame, ShakeOutcome};

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
}

/// What a core needs from the business logic: one step per frame.
pub trait Service {
    /// Handles one decoded frame for a connection in `state`, appending the
    /// answer to `out`, stamped `now_secs`. Counts what it did in `counters`.
    fn on_frame(
        &mut self,
        state: &mut SessionState,
        frame: Frame,
        now_secs: u64,
        out: &mut Vec<u8>,
        counters: &mut CoreCounters,
    ) -> Result<(), SessionError>;

    /// Called when the core's wall-clock second changes.
    fn on_second(&mut self) {}
}

/// The session path both services share: binds the connection at login,
/// refuses a first frame that is not a login and frames only servers send,
/// answers claims, and hands shakes to `shake` with the session's user. The
/// reference differs from the product only in that closure, so the benchmark
/// compares exactly the business logic.
#[inline]
fn dispatch(
    state: &mut SessionState,
    frame: Frame,
    now_secs: u64,
    out: &mut Vec<u8>,
    counters: &mut CoreCounters,
    shake: impl FnOnce(UserId, &mut Vec<u8>, &mut CoreCounters),
) -> Result<(), SessionError> {
    let user = match (*state, frame) {
        (SessionState::AwaitingLogin, Frame::LoginRequest { user }) => {
            *state = SessionState::LoggedIn(user);
            login_ok(user, now_secs, out, counters);
            return Ok(());
        }
        (SessionState::AwaitingLogin, f) => return Err(SessionError::NotLoggedIn(f.cmd())),
        // A repeated login is answered for the session's user and changes
        // nothing: the binding is made once per connection.
        (SessionState::LoggedIn(user), Frame::LoginRequest { .. }) => {
            login_ok(user, now_secs, out, counters);
            return Ok(());
        }
        (SessionState::LoggedIn(user), _) => user,
    };
    match frame {
        Frame::ShakeRequest { .. } => {
            counters.shakes += 1;
            shake(user, out, counters);
            Ok(())
        }
        Frame::ClaimRequest { packet, .. } => {
            // No sent packets exist yet (issue 4 adds them): every packet is
            // unknown, and an unknown packet's claim result is 0 cents.
            counters.claims += 1;
            Frame::ClaimResponse {
                packet,
                amount: Cents(0),
            }
            .encode(now_secs, out);
            Ok(())
        }
        f => Err(SessionError::WrongDirection(f.cmd())),
    }
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

/// The product: shakes take envelopes from this core's ring.
pub struct Hongbao {
    core: CoreId,
    rings: Arc<EnvelopeRings>,
    /// This core's share of `--max-qps`: shakes it answers per second before
    /// it answers "overloaded".
    shakes_per_sec_max: u64,
    shakes_this_sec: u64,
}

impl Hongbao {
    /// The service for `core`, allowed `shakes_per_sec_max` shakes a second.
    pub fn new(core: CoreId, rings: Arc<EnvelopeRings>, shakes_per_sec_max: u64) -> Self {
        Hongbao {
            core,
            rings,
            shakes_per_sec_max,
            shakes_this_sec: 0,
        }
    }
}

impl Hongbao {
    /// Answers one shake for `user`: overloaded, an envelope, gone, or none.
    #[inline]
    fn shake(
        &mut self,
        user: UserId,
        now_secs: u64,
        out: &mut Vec<u8>,
        counters: &mut CoreCounters,
    ) {
        // The ceiling is checked before the ring, so an overloaded core does
        // no more work than answering.
        if self.shakes_this_sec >= self.shakes_per_sec_max {
            counters.overload += 1;
            shake_answer(user, ShakeOutcome::OVERLOAD, None, now_secs, out);
            return;
        }
        self.shakes_this_sec += 1;
        // "Exhausted" is stored (Release) after the last push, so a pop after
        // loading it (Acquire) sees every envelope; the first pop may have run
        // just before the last push.
        let popped = self.rings.pop(self.core).or_else(|| {
            self.rings
                .exhausted()
                .then(|| self.rings.pop(self.core))
                .flatten()
        });
        match popped {
            Some(e) => {
                counters.got += 1;
                counters.cents_granted += e.amount.0;
                shake_answer(
                    user,
                    ShakeOutcome::GOT,
                    Some((e.id, e.amount)),
                    now_secs,
                    out,
                );
            }
            None if self.rings.exhausted() => {
                counters.gone += 1;
                shake_answer(user, ShakeOutcome::GONE, None, now_secs, out);
            }
            None => {
                counters.none += 1;
                shake_answer(user, ShakeOutcome::NONE, None, now_secs, out);
            }
        }
    }
}

impl Service for Hongbao {
    #[inline]
    fn on_frame(
        &mut self,
        state: &mut SessionState,
        frame: Frame,
        now_secs: u64,
        out: &mut Vec<u8>,
        counters: &mut CoreCounters,
    ) -> Result<(), SessionError> {
        dispatch(
            state,
            frame,
            now_secs,
            out,
            counters,
            |user, out, counters| self.shake(user, now_secs, out, counters),
        )
    }

    fn on_second(&mut self) {
        self.shakes_this_sec = 0;
    }
}

/// The zero-logic reference: the same frames, session and loop, no business.
/// Every shake is answered "no envelope"; every claim 0 cents.
#[derive(Default)]
pub struct Reference;

impl Service for Reference {
    #[inline]
    fn on_frame(
        &mut self,
        state: &mut SessionState,
        frame: Frame,
        now_secs: u64,
        out: &mut Vec<u8>,
        counters: &mut CoreCounters,
    ) -> Result<(), SessionError> {
        dispatch(
            state,
            frame,
            now_secs,
            out,
            counters,
            |user, out, counters| {
                counters.none += 1;
                shake_answer(user, ShakeOutcome::NONE, None, now_secs, out);
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PacketId;
    use crate::ring::Envelope;
    use crate::wire::decode;

    fn step<S: Service>(
        s: &mut S,
        state: &mut SessionState,
        frame: Frame,
        c: &mut CoreCounters,
    ) -> Result<Frame, SessionError> {
        let mut out = Vec::new();
        s.on_frame(state, frame, 1, &mut out, c)?;
        let d = decode(&out).expect("one whole answer");
        assert_eq!(d.len, out.len(), "exactly one answer frame");
        Ok(d.frame)
    }

    fn hongbao(per_sec: u64) -> (Hongbao, Arc<EnvelopeRings>) {
        let rings = Arc::new(EnvelopeRings::new(1, 8));
        (Hongbao::new(CoreId(0), rings.clone(), per_sec), rings)
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
    fn server_frames_from_a_client_are_refused() {
        let mut s = Reference;
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
