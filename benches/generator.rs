//! The envelope generator: its pacing arithmetic, the generator thread end to
//! end, and the inbox-and-waker hand-off it uses for packets.
//!
//! What it measures and why: the generator is one thread feeding every core,
//! so its cost per envelope bounds the envelope rate the server can offer.
//! `schedule/due_by` and `schedule/due_at` are `Schedule`'s two questions (how
//! many are due by now; when is envelope k due), each a u128 multiply and
//! divide; `schedule/refill_*` is the schedule's share of one refill as the
//! generator does it (two `due_by`, then one `due_at` per envelope made, up to
//! 100 ms ahead; at the default 200/s and at 20,000/s), per envelope planned.
//! `run/*` starts the real generator thread (`generator::run`) with a batch
//! that is all due at once, and times it until the rings hold the whole batch:
//! per envelope, the thread's whole path (amount, id, record, the queue of
//! made envelopes, the round-robin push into two rings, one ledger sync per
//! 4,096), with the ledger off and on (then each sync waits for the writer's
//! `fdatasync` on this machine's disk; the bench prints how many a run took).
//! An envelope wakes no core, so the ring is its only hand-off
//! (`benches/ring.rs`); a packet goes to its owner core through a bounded
//! crossbeam channel and a `mio::Waker`, timed in `packet_hand_off/*` (one
//! send per packet, one wake per core per round).

// criterion_group! generates public functions that cannot carry docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hongbao::generator::{self, EnvelopeSpec, GeneratorSetup, Schedule};
use hongbao::ids::{Cents, CoreId, EnvelopeId, PacketId, UserId};
use hongbao::ledger::{self, Books, Ledger};
use hongbao::mesh::CoreMsg;
use hongbao::mesh::Peers;
use hongbao::packets::NewPacket;
use hongbao::ring::EnvelopeRings;
use hongbao::server::worker::poll_and_waker;

/// The generator's own `LOOKAHEAD` (private there): envelopes are made this
/// far ahead, and a refill happens when less than half of it is left.
const LOOKAHEAD: Duration = Duration::from_millis(100);

/// The server's default `--ring-capacity`.
const RING_CAPACITY: usize = 65_536;
/// Two rings, as on this two-core machine; the generator alternates them.
const CORES: usize = 2;
/// Envelopes per timed run: four of the generator's rounds of 4,096
/// (`MADE_PER_ROUND_MAX`), so the ledger-on run syncs four times.
const RUN_ENVELOPES: u64 = 4 * 4096;
/// Envelopes per second for a run: every envelope of the batch is due within
/// 17 ns of its start, so the generator never sleeps and its cost, not its
/// pacing, is timed.
const RUN_RATE: u64 = 1_000_000_000_000;

fn schedule(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule");
    g.throughput(Throughput::Elements(1));
    let s = Schedule {
        rate: 200,
        total: None,
    };
    let elapsed = Duration::from_millis(12_345);
    g.bench_function("due_by", |b| {
        b.iter(|| black_box(s).due_by(black_box(elapsed)))
    });
    g.bench_function("due_at", |b| {
        b.iter(|| black_box(s).due_at(black_box(2_469)))
    });
    for rate in [200u64, 20_000] {
        let s = Schedule { rate, total: None };
        // A refill in the steady state, 10 s into the batch: the last one
        // made envelopes up to 50 ms ahead, so this one makes the next 50 ms
        // (and one more).
        let elapsed = Duration::from_secs(10);
        let emitted = s.due_by(elapsed + LOOKAHEAD / 2) - 1;
        let made = refill(&s, elapsed, emitted);
        g.throughput(Throughput::Elements(made));
        g.bench_function(format!("refill_{rate}_per_s"), |b| {
            b.iter(|| refill(black_box(&s), black_box(elapsed), black_box(emitted)))
        });
    }
    g.finish();
}

/// The schedule's calls in one of the generator's refills (`emit_due`): is a
/// refill due, how many to make, and each one's due time. Returns how many.
fn refill(s: &Schedule, elapsed: Duration, emitted: u64) -> u64 {
    if s.due_by(elapsed + LOOKAHEAD / 2) <= emitted {
        return 0;
    }
    let until = s.due_by(elapsed + LOOKAHEAD);
    for k in emitted..until {
        black_box(s.due_at(k));
    }
    until - emitted
}

fn bench_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// Runs the generator thread with a batch of `RUN_ENVELOPES` all due at
/// once and returns the time from its start until the rings hold them all;
/// then stops it and empties the rings (not timed).
fn generator_run(rings: &Arc<EnvelopeRings>, ledger: &Ledger) -> Duration {
    rings.set_exhausted(false);
    let (commands, commands_rx) = crossbeam_channel::unbounded();
    let (reports, reports_rx) = crossbeam_channel::unbounded();
    let setup = GeneratorSetup {
        rings: rings.clone(),
        initial: Schedule {
            rate: RUN_RATE,
            total: Some(RUN_ENVELOPES),
        },
        spec: EnvelopeSpec {
            cents_min: 10,
            cents_max: 309,
            seed: 1,
        },
        commands: commands_rx,
        reports,
        ledger: ledger.clone(),
        producer: 0,
        // No packets are made, so no core is ever handed one.
        peers: Peers {
            inboxes: Vec::new(),
            wakers: Vec::new(),
            engine: None,
        },
        outstanding: Vec::new(),
        next_envelope_id: EnvelopeId::FIRST,
        next_packet_id: PacketId::FIRST,
        envelope_ttl_s: 86_400,
        packet_ttl_s: 86_400,
        cluster: None,
    };
    let start = Instant::now();
    let thread = std::thread::spawn(move || generator::run(setup));
    // The generator sets the flag once the bounded batch is all in rings.
    while !rings.exhausted() {
        std::thread::yield_now();
    }
    let elapsed = start.elapsed();
    drop(commands);
    thread.join().expect("generator thread");
    drop(reports_rx);
    assert_eq!(
        rings.len() as u64,
        RUN_ENVELOPES,
        "every envelope in a ring"
    );
    for core in 0..rings.cores() {
        while rings.pop(CoreId(core)).is_some() {}
    }
    elapsed
}

fn run(c: &mut Criterion) {
    let mut g = c.benchmark_group("run");
    g.sample_size(20);
    g.throughput(Throughput::Elements(RUN_ENVELOPES));
    let rings = Arc::new(EnvelopeRings::new(CORES, RING_CAPACITY));
    let off = Ledger::disabled();
    g.bench_function("ledger_off", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| generator_run(&rings, &off)).sum())
    });
    let dir = bench_dir("generator");
    let (file, _) = ledger::file::open(&dir, &mut Books::new()).expect("ledger");
    let (on, writer) = ledger::writer::start(file, vec![None; 1]).expect("writer");
    // The ledger checks nothing about money: records need not balance here.
    let mut runs = 0;
    g.bench_function("ledger_on", |b| {
        b.iter_custom(|iters| {
            runs += iters;
            (0..iters).map(|_| generator_run(&rings, &on)).sum()
        })
    });
    g.finish();
    // What the disk took of it: the time is mostly fdatasync, which moves
    // with the host; this says how many syncs a run needed (the writer
    // commits whatever has arrived, so more than one per round) and their
    // mean. Warm-up runs are counted too, in both sums.
    let ledger = on.counters();
    if runs > 0 && ledger.syncs > 0 {
        eprintln!(
            "run/ledger_on: {runs} runs, {:.1} syncs per run, fdatasync mean {:.0} us",
            ledger.syncs as f64 / runs as f64,
            ledger.sync_ns as f64 / ledger.syncs as f64 / 1e3,
        );
    }
    drop(on);
    writer.join().expect("writer");
    let _ = std::fs::remove_dir_all(&dir);
}

fn packet_hand_off(c: &mut Criterion) {
    let mut g = c.benchmark_group("packet_hand_off");
    g.throughput(Throughput::Elements(1));
    // The server's inbox length (`INBOX_LEN`, private there).
    let (tx, rx) = crossbeam_channel::bounded::<CoreMsg>(1 << 16);
    let packet = NewPacket {
        id: PacketId::FIRST,
        amount: Cents(1_000),
        targets: (1..=10).map(UserId).collect(),
        claims: Vec::new(),
        until_s: u32::MAX,
    };
    // The packet is made before the hand-off (not timed); it is boxed, sent
    // and, here, taken straight back out, as its owner core would.
    g.bench_function("inbox_send_recv", |b| {
        b.iter_batched(
            || packet.clone(),
            |p| {
                tx.send_timeout(CoreMsg::Packet(Box::new(p)), Duration::from_secs(1))
                    .expect("inbox");
                rx.try_recv().expect("the message just sent")
            },
            BatchSize::SmallInput,
        )
    });
    // The poll is kept but never polled: each wake is one eventfd write.
    let (_poll, waker) = poll_and_waker().expect("poll and waker");
    g.bench_function("waker_wake", |b| b.iter(|| waker.wake().expect("wake")));
    g.finish();
}

criterion_group!(benches, schedule, run, packet_hand_off);
criterion_main!(benches);
