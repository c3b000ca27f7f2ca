//! The envelope ring (`EnvelopeRings`): push and pop on one thread, and
//! envelopes handed from a producer thread to a consumer thread.
//!
//! What it measures and why: every shake pops its core's ring, and almost
//! every pop finds it empty (200 envelopes a second against tens of thousands
//! of shakes), so `ring/one_thread/pop_empty` is a cost paid per shake;
//! `push_pop` is an envelope in and out on one thread (the ring's own cost,
//! no other core involved), and `push_full` a push that finds the ring full
//! and gets the envelope back (the generator's stall path). The ring is the
//! generator's whole hand-off for an envelope: it pushes into a core's ring
//! and wakes no one (a core pops when a shake asks), so there is no channel
//! or waker to add here (packets do use one: see `benches/generator.rs`).
//! `ring/across_threads/transfer` is that hand-off between two threads: a
//! producer thread (the generator) pushes, the measured thread (a core) pops
//! each envelope as it arrives, with the ring's cache lines moving between
//! CPUs. Throughput is reported per envelope (per push+pop pair).

// criterion_group! generates public functions that cannot carry docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::Sender;
use hongbao::ids::{Cents, CoreId, EnvelopeId};
use hongbao::ring::{Envelope, EnvelopeRings};

/// The server's default `--ring-capacity`, so the rings are the size a core
/// really pops.
const RING_CAPACITY: usize = 65_536;

const CORE: CoreId = CoreId(0);

fn envelope(i: u32) -> Envelope {
    Envelope {
        id: EnvelopeId(i),
        amount: Cents(100),
        until_s: u32::MAX,
    }
}

fn one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/one_thread");
    g.throughput(Throughput::Elements(1));
    let rings = EnvelopeRings::new(1, RING_CAPACITY);
    g.bench_function("pop_empty", |b| b.iter(|| rings.pop(black_box(CORE))));
    g.bench_function("push_pop", |b| {
        b.iter(|| {
            let _ = rings.push(CORE, black_box(envelope(1)));
            rings.pop(black_box(CORE))
        })
    });
    let full = EnvelopeRings::new(1, 1);
    full.push(CORE, envelope(0))
        .expect("an empty ring takes one");
    g.bench_function("push_full", |b| {
        b.iter(|| full.push(black_box(CORE), black_box(envelope(1))))
    });
    g.finish();
}

/// A thread standing in for the generator: for each count it receives, it
/// pushes that many envelopes into ring 0, waiting for room when it is full.
struct Feeder {
    counts: Sender<u64>,
    thread: JoinHandle<()>,
}

impl Feeder {
    fn start(rings: Arc<EnvelopeRings>) -> Feeder {
        let (counts, rx) = crossbeam_channel::bounded::<u64>(1);
        let thread = std::thread::spawn(move || {
            for n in rx {
                for i in 0..n {
                    let mut e = envelope(i as u32);
                    while let Err(back) = rings.push(CORE, e) {
                        e = back;
                        std::hint::spin_loop();
                    }
                }
            }
        });
        Feeder { counts, thread }
    }

    fn stop(self) {
        drop(self.counts);
        self.thread.join().expect("feeder thread");
    }
}

fn across_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/across_threads");
    g.throughput(Throughput::Elements(1));
    let rings = Arc::new(EnvelopeRings::new(1, RING_CAPACITY));
    let feeder = Feeder::start(rings.clone());
    // Timed from the request to the last envelope popped: the producer's
    // pushes, the cache-line traffic and the consumer's pops (including those
    // that find the ring empty while it waits), per envelope.
    g.bench_function("transfer", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            feeder.counts.send(iters).expect("feeder thread");
            let mut got = 0;
            while got < iters {
                match rings.pop(CORE) {
                    Some(e) => {
                        black_box(e);
                        got += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
            start.elapsed()
        })
    });
    g.finish();
    feeder.stop();
}

criterion_group!(benches, one_thread, across_threads);
criterion_main!(benches);
