//! Answering what a read brought: the step the core loop takes for every
//! buffer of bytes it reads from a connection.
//!
//! Owns: handing each whole frame of a buffer (decoded by
//! `crate::conn::decode_frames`, the one decoding loop) to the [`Service`],
//! counting a refused frame by kind, and keeping an answer back under the
//! durable-before-reply rule of `crate::durable`. Public so that
//! the hot-path benchmark times exactly what the core loop runs.
//! Must not: do I/O, read a clock, or allocate per frame (a connection's held
//! answers allocate once, when it first holds one).

use crate::conn::{FrameStop, decode_frames};
use crate::durable::HeldAnswers;
use crate::mesh::Waiting;
use crate::session::{FrameContext, LoginRefusal, Service, SessionError};
use crate::token::Refusal;
use crate::wire::{DecodeError, cmd};

/// What answering a buffer came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answered {
    /// Bytes of the buffer used: whole frames, up to a partial one or a
    /// refused one.
    pub used: usize,
    /// Frames answered (or decided with no answer of their own, as a claim
    /// sent to its owner core).
    pub frames: u64,
    /// A frame was refused (malformed, or not allowed in its session): the
    /// connection must close. The answers to the frames before it stay owed.
    pub refused: bool,
}

/// Decodes and answers every whole frame in `bytes`, from the connection
/// `cx.conn` whose answers held for the ledger are `held`. Answers go to
/// `cx.out`, except one that must wait for the ledger — and every answer
/// after one, so the connection's answers keep their order — which goes to
/// `held` instead. A refused frame is counted here, by kind.
#[inline]
pub fn answer_frames<S: Service>(
    bytes: &[u8],
    service: &mut S,
    held: &mut HeldAnswers,
    cx: &mut FrameContext<'_>,
) -> Answered {
    let waiter = Waiting::Conn {
        key: cx.conn.key,
        serial: cx.conn.serial,
    };
    let decoded = decode_frames(bytes, |frame| {
        let before = cx.out.len();
        let hold = service.on_frame(frame, cx)?;
        held.keep(hold, waiter, &mut cx.fx.after_sync, cx.out, before);
        Ok::<(), SessionError>(())
    });
    match decoded.stop {
        None => {}
        Some(FrameStop::Handler(SessionError::LoginRefused(why))) => {
            let c = &mut *cx.counters;
            match why {
                LoginRefusal::V1Refused => c.auth_v1_refused += 1,
                LoginRefusal::Token(Refusal::BadTag) => c.auth_bad_tag += 1,
                LoginRefusal::Token(Refusal::Expired) => c.auth_expired += 1,
                LoginRefusal::Token(Refusal::UnknownKey) => c.auth_unknown_key += 1,
            }
        }
        Some(FrameStop::Handler(_)) => cx.counters.bad_session += 1,
        Some(FrameStop::Refused(e)) => match e {
            DecodeError::BadLength(_) => cx.counters.bad_length += 1,
            DecodeError::UnknownCmd(_) => cx.counters.bad_cmd += 1,
            // A signed login of the wrong size (a token cut short) is counted
            // with the logins refused, apart from v1's bad sizes.
            DecodeError::BadSize {
                cmd: cmd::SIGNED_LOGIN_REQUEST,
                ..
            } => cx.counters.auth_bad_size += 1,
            DecodeError::BadSize { .. } => cx.counters.bad_size += 1,
            // decode_frames stops at an incomplete frame without refusing it.
            DecodeError::Incomplete => unreachable!("an incomplete frame is not refused"),
        },
    }
    Answered {
        used: decoded.used,
        frames: decoded.frames,
        refused: decoded.stop.is_some(),
    }
}
