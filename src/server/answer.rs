//! Answering what a read brought: the step the core loop takes for every
//! buffer of bytes it reads from a connection.
//!
//! Owns: decoding every whole frame of a buffer, handing each to the
//! [`Service`], counting a refused frame by kind, and keeping an answer back
//! under the durable-before-reply rule of `crate::durable`. Public so that
//! the hot-path benchmark times exactly what the core loop runs.
//! Must not: do I/O, read a clock, or allocate per frame (a connection's held
//! answers allocate once, when it first holds one).

use crate::durable::HeldAnswers;
use crate::mesh::Waiting;
use crate::session::{FrameContext, Service};
use crate::wire::{self, DecodeError};

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
    let mut answered = Answered::default();
    loop {
        match wire::decode(&bytes[answered.used..]) {
            Ok(d) => {
                let before = cx.out.len();
                let Ok(hold) = service.on_frame(d.frame, cx) else {
                    cx.counters.bad_session += 1;
                    answered.refused = true;
                    return answered;
                };
                held.keep(hold, waiter, &mut cx.fx.after_sync, cx.out, before);
                answered.used += d.len;
                answered.frames += 1;
            }
            Err(DecodeError::Incomplete) => return answered,
            Err(e) => {
                match e {
                    DecodeError::BadLength(_) => cx.counters.bad_length += 1,
                    DecodeError::UnknownCmd(_) => cx.counters.bad_cmd += 1,
                    DecodeError::BadSize { .. } => cx.counters.bad_size += 1,
                    DecodeError::Incomplete => unreachable!("matched above"),
                }
                answered.refused = true;
                return answered;
            }
        }
    }
}
