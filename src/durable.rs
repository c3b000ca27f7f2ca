//! Durable before reply: the one rule between the ledger and the wire.
//!
//! **Invariant:** an answer that reports money moving (a shake that grants an
//! envelope, a paid claim) is written only after the ledger has synced the
//! record behind it, and the answers on one connection go out in the order
//! of its requests. A client that was told "you got 42 cents" can therefore
//! always find those cents in the ledger after a crash.
//!
//! Owns: the rule and its bookkeeping. [`Hold`] is what a session step says
//! about the answer it wrote (it may go now, or only once this core's ledger
//! entry `seq` is durable); [`HeldAnswers`] is one connection's queue of
//! answers kept back, which also keeps every later answer of that connection
//! behind a held one; [`AfterSync`] is a core's queue of what waits for its
//! ledger's durable count, released in entry order as the count passes.
//! Must not: do I/O, read a clock, or know what waits (the core loop names
//! its waiters, `mesh::Waiting`), so it sits below everything that uses it.
//!
//! Who calls it: the session decides what waits (`Hold::UntilSync` for a
//! grant, `Effects::after` for a claim answer); the core loop holds answers
//! as it reads ([`HeldAnswers::keep`]) and releases them at the end of each
//! turn ([`AfterSync::pop_durable`], [`HeldAnswers::release`]).

use std::collections::VecDeque;

use crate::wire::{FRAME_LEN_BY_CMD, cmd};

/// The longest answer a connection can hold back: the longest of the
/// answers a client's own frame gets (login, shake, claim answers; a shake
/// answer today). Pushes and claim answers from the owner core are written
/// apart and never queue here.
pub const HELD_FRAME_MAX: usize = max(
    max(
        FRAME_LEN_BY_CMD[cmd::LOGIN_RESPONSE as usize],
        FRAME_LEN_BY_CMD[cmd::SHAKE_RESPONSE as usize],
    ),
    FRAME_LEN_BY_CMD[cmd::CLAIM_RESPONSE as usize],
);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Whether the answer a step wrote may go out now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// It may.
    No,
    /// It moves money: hold it until this core's ledger entry `seq` is durable.
    UntilSync(u64),
}

impl Hold {
    /// The hold for an answer backed by ledger entry `seq` (none when the
    /// ledger is off: nothing will ever be durable, so nothing waits).
    #[inline]
    pub fn until(seq: Option<u64>) -> Hold {
        seq.map_or(Hold::No, Hold::UntilSync)
    }
}

/// What a core releases once its ledger's durable count reaches a number,
/// in the order the entries were appended.
#[derive(Debug)]
pub struct AfterSync<W> {
    queue: VecDeque<(u64, W)>,
}

impl<W: Copy> AfterSync<W> {
    /// An empty queue (allocates on first use).
    pub fn new() -> Self {
        AfterSync {
            queue: VecDeque::new(),
        }
    }

    /// Runs `waiter` once ledger entry `seq` is durable. Entries are numbered
    /// in append order, so the queue stays sorted.
    #[inline]
    pub fn push(&mut self, seq: u64, waiter: W) {
        debug_assert!(self.queue.back().is_none_or(|&(s, _)| s <= seq));
        self.queue.push_back((seq, waiter));
    }

    /// The next waiter whose entry is within `durable`, taken off the queue.
    #[inline]
    pub fn pop_durable(&mut self, durable: u64) -> Option<W> {
        match self.queue.front() {
            Some(&(seq, waiter)) if seq <= durable => {
                self.queue.pop_front();
                Some(waiter)
            }
            _ => None,
        }
    }

    /// True when nothing waits for the ledger.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl<W: Copy> Default for AfterSync<W> {
    fn default() -> Self {
        Self::new()
    }
}

/// One answer kept back, with the entry it waits for.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// Release once the durable count reaches it (0: it waits only for the
    /// answers before it).
    seq: u64,
    len: u8,
    frame: [u8; HELD_FRAME_MAX],
}

/// One connection's answers kept back, in request order. Empty (and
/// unallocated) on every connection that holds nothing.
#[derive(Debug, Default)]
pub struct HeldAnswers {
    queue: VecDeque<Held>,
}

impl HeldAnswers {
    /// True when the connection holds no answer.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Applies the rule to the answer a step just wrote at `out[before..]`:
    /// if it waits for the ledger (`hold`), or an earlier answer of this
    /// connection still does, it moves from `out` to this queue; for a
    /// wait on the ledger, `waiter` is registered in `after_sync` to release
    /// it.
    #[inline]
    pub fn keep<W: Copy>(
        &mut self,
        hold: Hold,
        waiter: W,
        after_sync: &mut AfterSync<W>,
        out: &mut Vec<u8>,
        before: usize,
    ) {
        // The common case (nothing waits, nothing held) costs one compare.
        if hold != Hold::No || !self.queue.is_empty() {
            self.keep_slow(hold, waiter, after_sync, out, before);
        }
    }

    #[cold]
    fn keep_slow<W: Copy>(
        &mut self,
        hold: Hold,
        waiter: W,
        after_sync: &mut AfterSync<W>,
        out: &mut Vec<u8>,
        before: usize,
    ) {
        let seq = match hold {
            Hold::UntilSync(seq) => {
                after_sync.push(seq, waiter);
                seq
            }
            Hold::No => 0,
        };
        let answer = &out[before..];
        if answer.is_empty() {
            return;
        }
        debug_assert!(
            answer.len() <= HELD_FRAME_MAX,
            "client frames get short answers"
        );
        let len = answer.len().min(HELD_FRAME_MAX);
        let mut frame = [0; HELD_FRAME_MAX];
        frame[..len].copy_from_slice(&answer[..len]);
        self.queue.push_back(Held {
            seq,
            len: len as u8,
            frame,
        });
        out.truncate(before);
    }

    /// Appends to `out`, in order, the answers that may go now that entries
    /// up to `durable` are: every answer up to the first one still waiting.
    pub fn release(&mut self, durable: u64, out: &mut Vec<u8>) {
        while let Some(h) = self.queue.front() {
            if h.seq > durable {
                break;
            }
            out.extend_from_slice(&h.frame[..usize::from(h.len)]);
            self.queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_held_answer_is_a_shake_answer() {
        assert_eq!(HELD_FRAME_MAX, 28);
    }

    #[test]
    fn answers_behind_a_held_one_wait_and_go_out_in_order() {
        let mut after = AfterSync::new();
        let mut held = HeldAnswers::default();
        let mut out = b"login".to_vec();
        // Nothing held: an answer that may go stays in `out`.
        held.keep(Hold::No, 'a', &mut after, &mut out, 0);
        assert_eq!(out, b"login");
        out.extend_from_slice(b"grant");
        held.keep(Hold::UntilSync(3), 'a', &mut after, &mut out, 5);
        out.extend_from_slice(b"none");
        held.keep(Hold::No, 'a', &mut after, &mut out, 5);
        assert_eq!(out, b"login", "both later answers were kept back");
        assert_eq!(after.pop_durable(2), None);
        held.release(2, &mut out);
        assert_eq!(out, b"login");
        assert_eq!(after.pop_durable(3), Some('a'));
        held.release(3, &mut out);
        assert_eq!(out, b"logingrantnone");
        assert!(held.is_empty() && after.is_empty());
    }
}
