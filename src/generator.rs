//! The envelope generator: one thread pacing envelopes into the per-core rings.
//!
//! Owns: the pacing `Schedule` (pure: no clock inside, so it is tested
//! exactly), the batch commands that the HTTP control sends, and the thread
//! that emits envelopes round-robin into the rings. Must not: drop an envelope
//! silently, burst at a second's start, or drift. Envelope `k` of a batch
//! (0-based) is due at `start + (k + 1) / rate`; the thread sleeps until the
//! next due time (or a command) and emits everything due, so every second
//! carries its share however late a wake-up was.
//!
//! Invariant: generated = granted + in rings. An envelope counts as generated
//! only once a ring has taken it. When every ring is full the generator keeps
//! the envelope, counts a stall, and offers it again on its next wake-up; the
//! schedule does not advance meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use crate::ids::{Cents, CoreId, EnvelopeId};
use crate::ring::{Envelope, EnvelopeRings};
use crate::stats::{GeneratorCounters, Report};

/// A batch's pacing: how many envelopes are due by a given time since start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Envelopes per second; 0 means the schedule emits nothing.
    pub rate: u64,
    /// How many envelopes in all; `None` runs until replaced.
    pub total: Option<u64>,
}

impl Schedule {
    /// Envelopes due by `elapsed` since the batch started: `floor(elapsed *
    /// rate)`, capped at the total.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let due = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        self.total.map_or(due, |t| due.min(t))
    }

    /// When envelope number `emitted` (0-based) falls due, since the start;
    /// `None` when the schedule has nothing more to emit.
    pub fn due_at(&self, emitted: u64) -> Option<Duration> {
        if self.rate == 0 || self.total.is_some_and(|t| emitted >= t) {
            return None;
        }
        // The smallest t with floor(t * rate) >= emitted + 1, in whole ns.
        let ns = (u128::from(emitted + 1) * 1_000_000_000).div_ceil(u128::from(self.rate));
        Some(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    /// True when a bounded schedule has emitted its whole total.
    pub fn is_done(&self, emitted: u64) -> bool {
        self.total.is_some_and(|t| emitted >= t)
    }
}

/// What the HTTP control asks of the generator.
#[derive(Debug)]
pub enum Command {
    /// Replace the running batch with a new one; the reply says what the old
    /// one had left undone.
    StartBatch {
        /// The new batch.
        schedule: Schedule,
        /// Where to answer.
        reply: Sender<BatchStarted>,
    },
    /// Report the running batch.
    Status(Sender<BatchStatus>),
}

/// The answer to a `StartBatch`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BatchStarted {
    /// The batch replaced, as it stood when replaced.
    pub replaced: BatchStatus,
}

/// A batch as it stands.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct BatchStatus {
    /// Envelopes per second.
    pub rate: u64,
    /// Its total, when bounded.
    pub total: Option<u64>,
    /// Envelopes pushed so far.
    pub emitted: u64,
    /// True when a bounded batch has emitted its total.
    pub done: bool,
}

/// How envelopes are made.
#[derive(Clone, Copy, Debug)]
pub struct EnvelopeSpec {
    /// Smallest amount, in cents (at least 1).
    pub cents_min: u64,
    /// Largest amount, in cents (at most u32::MAX, the wire's field).
    pub cents_max: u64,
    /// Random seed for amounts, so a run can be replayed.
    pub seed: u64,
}

/// Runs the generator until `commands` disconnects (the server stops).
///
/// Reports its counters for each closed second through `reports`.
pub fn run(
    rings: Arc<EnvelopeRings>,
    initial: Schedule,
    spec: EnvelopeSpec,
    commands: Receiver<Command>,
    reports: Sender<Report>,
) {
    let mut g = Generator {
        rings,
        spec,
        rng: fastrand::Rng::with_seed(spec.seed),
        next_id: EnvelopeId::FIRST.0,
        next_core: 0,
        held: None,
        counters: GeneratorCounters::default(),
    };
    let mut batch = Batch::new(initial, Instant::now());
    g.rings
        .set_exhausted(batch.schedule.is_done(0) && initial.total.is_some());
    let mut second = unix_second(SystemTime::now());
    // Wake at least this often to close seconds and retry a held envelope.
    let tick = Duration::from_millis(100);
    loop {
        let now = Instant::now();
        let next_due = if g.held.is_some() {
            now + Duration::from_millis(1)
        } else {
            batch
                .schedule
                .due_at(batch.emitted)
                .map(|d| batch.start + d)
                .unwrap_or(now + tick)
        };
        let wake = next_due.min(now + tick).max(now);
        match commands.recv_deadline(wake) {
            Ok(Command::StartBatch { schedule, reply }) => {
                let replaced = batch.status();
                batch = Batch::new(schedule, Instant::now());
                g.rings.set_exhausted(false);
                let _ = reply.send(BatchStarted { replaced });
            }
            Ok(Command::Status(reply)) => {
                let _ = reply.send(batch.status());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The server is stopping: report the second in progress so
                // the final totals hold every envelope generated.
                let _ = reports.send(Report::Generator {
                    second,
                    counters: g.counters,
                    in_rings: g.rings.len() as u64,
                });
                return;
            }
        }
        let now = Instant::now();
        let due = batch
            .schedule
            .due_by(now.saturating_duration_since(batch.start));
        while batch.emitted < due {
            if !g.emit_one() {
                break;
            }
            batch.emitted += 1;
        }
        if batch.schedule.is_done(batch.emitted) && g.held.is_none() {
            g.rings.set_exhausted(true);
        }
        let now_second = unix_second(SystemTime::now());
        if now_second != second {
            let counters = std::mem::take(&mut g.counters);
            let in_rings = g.rings.len() as u64;
            if reports
                .send(Report::Generator {
                    second,
                    counters,
                    in_rings,
                })
                .is_err()
            {
                return;
            }
            second = now_second;
        }
    }
}

struct Batch {
    schedule: Schedule,
    start: Instant,
    emitted: u64,
}

impl Batch {
    fn new(schedule: Schedule, start: Instant) -> Self {
        Batch {
            schedule,
            start,
            emitted: 0,
        }
    }

    fn status(&self) -> BatchStatus {
        BatchStatus {
            rate: self.schedule.rate,
            total: self.schedule.total,
            emitted: self.emitted,
            done: self.schedule.is_done(self.emitted),
        }
    }
}

struct Generator {
    rings: Arc<EnvelopeRings>,
    spec: EnvelopeSpec,
    rng: fastrand::Rng,
    next_id: u32,
    next_core: usize,
    /// An envelope made but refused by every ring; offered first next time.
    held: Option<Envelope>,
    counters: GeneratorCounters,
}

impl Generator {
    /// Makes (or takes back the held) envelope and pushes it into the next
    /// ring with room. False when every ring was full: the envelope is held.
    fn emit_one(&mut self) -> bool {
        let mut envelope = match self.held.take() {
            Some(e) => e,
            None => {
                let id = EnvelopeId(self.next_id);
                // Ids wrap only after 4 billion envelopes; a server that
                // lives that long restarts its numbering at FIRST.
                self.next_id = self.next_id.checked_add(1).unwrap_or(EnvelopeId::FIRST.0);
                Envelope {
                    id,
                    amount: Cents(self.rng.u64(self.spec.cents_min..=self.spec.cents_max)),
                }
            }
        };
        let cores = self.rings.cores();
        for _ in 0..cores {
            let core = CoreId(self.next_core);
            self.next_core = (self.next_core + 1) % cores;
            match self.rings.push(core, envelope) {
                Ok(()) => {
                    self.counters.generated += 1;
                    self.counters.cents_generated += envelope.amount.0;
                    return true;
                }
                Err(back) => envelope = back,
            }
        }
        self.counters.ring_full_stalls += 1;
        self.held = Some(envelope);
        false
    }
}

/// Whole seconds since the Unix epoch (0 for a clock before it).
pub fn unix_second(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_carries_exactly_the_rate() {
        let s = Schedule {
            rate: 200,
            total: None,
        };
        for sec in 0..30u64 {
            let a = s.due_by(Duration::from_secs(sec));
            let b = s.due_by(Duration::from_secs(sec + 1));
            assert_eq!(b - a, 200, "second {sec}");
        }
    }

    #[test]
    fn emission_is_smooth_within_a_second() {
        let s = Schedule {
            rate: 200,
            total: None,
        };
        // Every 5 ms window holds exactly one envelope: no burst at 0.
        for ms in (0..1000).step_by(5) {
            let n = s.due_by(Duration::from_millis(ms + 5)) - s.due_by(Duration::from_millis(ms));
            assert_eq!(n, 1, "window at {ms} ms");
        }
    }

    #[test]
    fn due_at_is_the_first_instant_due_by_counts_it() {
        for rate in [1u64, 3, 7, 200, 999, 1_000_000] {
            let s = Schedule { rate, total: None };
            for k in 0..50 {
                let t = s.due_at(k).unwrap();
                assert_eq!(s.due_by(t), k + 1, "rate {rate} k {k}");
                assert_eq!(
                    s.due_by(t - Duration::from_nanos(1)),
                    k,
                    "rate {rate} k {k}"
                );
            }
        }
    }

    #[test]
    fn a_bounded_batch_stops_at_its_total() {
        let s = Schedule {
            rate: 100,
            total: Some(150),
        };
        assert_eq!(s.due_by(Duration::from_secs(10)), 150);
        assert_eq!(s.due_at(150), None);
        assert!(s.is_done(150) && !s.is_done(149));
        assert_eq!(
            Schedule {
                rate: 0,
                total: None
            }
            .due_at(0),
            None
        );
    }

    #[test]
    fn a_full_ring_passes_the_envelope_on_and_all_full_holds_it() {
        let rings = Arc::new(EnvelopeRings::new(2, 1));
        let mut g = Generator {
            rings: rings.clone(),
            spec: EnvelopeSpec {
                cents_min: 10,
                cents_max: 309,
                seed: 1,
            },
            rng: fastrand::Rng::with_seed(1),
            next_id: EnvelopeId::FIRST.0,
            next_core: 0,
            held: None,
            counters: GeneratorCounters::default(),
        };
        assert!(g.emit_one());
        assert!(g.emit_one());
        assert!(!g.emit_one(), "both rings are full");
        assert_eq!(g.counters.generated, 2);
        assert_eq!(g.counters.ring_full_stalls, 1);
        let held = g.held.expect("the envelope is kept, not dropped");
        rings.pop(CoreId(1)).unwrap();
        assert!(g.emit_one());
        assert_eq!(rings.pop(CoreId(1)), Some(held));
        assert_eq!(g.counters.generated, 3);
        assert!((10..=309).contains(&held.amount.0));
    }
}
