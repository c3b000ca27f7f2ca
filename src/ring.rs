//! Per-core envelope rings: the only path by which envelopes reach the cores.
//!
//! Owns: one bounded lock-free queue (`crossbeam_queue::ArrayQueue`) per core,
//! and the "batch exhausted" flag. The generator is the only producer; each
//! core is the only consumer of its own ring, so a pop never contends with
//! another core. Must not: drop an envelope. A push that finds a ring full gets
//! the envelope back and must offer it elsewhere (see `generator`).
//!
//! Cores are not woken when an envelope arrives: a core takes envelopes only
//! when a shake asks for one, so an idle core has nothing to do with it.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

use crate::ids::{Cents, CoreId, EnvelopeId};

/// A shake envelope waiting in a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Its id, unique within a server's lifetime.
    pub id: EnvelopeId,
    /// Its amount, in the configured range.
    pub amount: Cents,
    /// When it expires unclaimed and is returned, Unix seconds.
    pub until_s: u32,
}

/// The rings of every core, shared between the generator and the cores.
#[derive(Debug)]
pub struct EnvelopeRings {
    rings: Box<[CachePadded<ArrayQueue<Envelope>>]>,
    /// Set by the generator when a bounded batch has pushed its last envelope
    /// and no other batch runs; read by a core only when its ring is empty.
    exhausted: CachePadded<AtomicBool>,
}

impl EnvelopeRings {
    /// Rings for `cores` cores, each holding up to `capacity` envelopes.
    ///
    /// # Panics
    ///
    /// When `cores` or `capacity` is 0 (configuration validates both).
    pub fn new(cores: usize, capacity: usize) -> Self {
        assert!(cores > 0 && capacity > 0, "rings need cores and capacity");
        let rings = (0..cores)
            .map(|_| CachePadded::new(ArrayQueue::new(capacity)))
            .collect();
        EnvelopeRings {
            rings,
            exhausted: CachePadded::new(AtomicBool::new(false)),
        }
    }

    /// How many cores (rings) there are.
    pub fn cores(&self) -> usize {
        self.rings.len()
    }

    /// Offers `envelope` to `core`'s ring; gives it back when that ring is full.
    pub fn push(&self, core: CoreId, envelope: Envelope) -> Result<(), Envelope> {
        self.rings[core.0].push(envelope)
    }

    /// Takes the oldest envelope from `core`'s ring. Only that core calls it.
    #[inline]
    pub fn pop(&self, core: CoreId) -> Option<Envelope> {
        let ring = &self.rings[core.0];
        // Most shakes find the ring empty (200 envelopes a second against
        // tens of thousands of shakes), and an empty `pop` costs a SeqCst
        // fence; this check is two loads. A racy "empty" means "none now".
        if ring.is_empty() {
            return None;
        }
        ring.pop()
    }

    /// True when `core`'s ring holds nothing now.
    #[inline]
    pub fn is_empty_for(&self, core: CoreId) -> bool {
        self.rings[core.0].is_empty()
    }

    /// Envelopes waiting in all rings. A racy sum, exact once the generator
    /// and the cores are quiet; used for gauges, never for money decisions.
    pub fn len(&self) -> usize {
        self.rings.iter().map(|r| r.len()).sum()
    }

    /// True when no ring holds an envelope (see [`EnvelopeRings::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks whether the current batch has handed out its last envelope.
    pub fn set_exhausted(&self, exhausted: bool) {
        self.exhausted.store(exhausted, Ordering::Release);
    }

    /// True when the last batch is fully pushed and no batch runs.
    #[inline]
    pub fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(i: u32) -> Envelope {
        Envelope {
            id: EnvelopeId(i),
            amount: Cents(10),
            until_s: u32::MAX,
        }
    }

    #[test]
    fn a_full_ring_hands_the_envelope_back() {
        let rings = EnvelopeRings::new(2, 2);
        assert_eq!(rings.push(CoreId(0), env(1)), Ok(()));
        assert_eq!(rings.push(CoreId(0), env(2)), Ok(()));
        assert_eq!(rings.push(CoreId(0), env(3)), Err(env(3)));
        assert_eq!(rings.push(CoreId(1), env(3)), Ok(()));
        assert_eq!(rings.len(), 3);
        assert_eq!(rings.pop(CoreId(0)), Some(env(1)));
        assert_eq!(rings.pop(CoreId(1)), Some(env(3)));
        assert_eq!(rings.pop(CoreId(1)), None);
    }

    #[test]
    fn envelopes_cross_threads_exactly_once() {
        let rings = std::sync::Arc::new(EnvelopeRings::new(1, 64));
        let consumer = {
            let rings = rings.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while seen.len() < 10_000 {
                    if let Some(e) = rings.pop(CoreId(0)) {
                        seen.push(e.id.0);
                    } else {
                        std::thread::yield_now();
                    }
                }
                seen
            })
        };
        for i in 0..10_000 {
            let mut e = env(i);
            while let Err(back) = rings.push(CoreId(0), e) {
                e = back;
                std::thread::yield_now();
            }
        }
        let seen = consumer.join().expect("consumer thread");
        assert_eq!(seen, (0..10_000).collect::<Vec<_>>());
    }
}
