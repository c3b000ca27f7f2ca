//! The packet split (`packets::share`) and a claim on its owner core
//! (`PacketTable::claim`), without sockets and with the ledger off.
//!
//! What it measures and why: every paid claim draws one double-average share,
//! and a packet is split among up to 100 claimants, so `split/share` is the
//! cost of one draw and `split/packet/N` of splitting a whole packet of `N`
//! claimants (3, 10, 100), reported per share. `claim/*` is the owner core's
//! step for one claim: `paid/N` claims every share of a fresh packet of `N`
//! targets in turn (reported per claim; finding the user is a scan of the
//! targets, so a claim's cost grows with `N`), `repeat` the last of 10
//! targets claiming again (the same amount, nothing moves), `zero` a user a
//! packet of 10 is not for (a full scan). The ledger is off (`Ledger::disabled().producer(0)`, as
//! in `benches/hot_path.rs`): the record's cost is in `benches/ledger.rs`.

// criterion_group! generates public functions that cannot carry docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hongbao::ids::{Cents, PacketId, UserId};
use hongbao::ledger::{Ledger, Producer};
use hongbao::packets::{NewPacket, PacketTable, share};

/// Claimants per packet: the smallest usual, a typical group, and the most
/// a packet may have (`PacketSpec::claimants` is 1..=100).
const CLAIMANTS: [u64; 3] = [3, 10, 100];
/// Cents per claimant in a benched packet (1 yuan each on average).
const CENTS_PER_CLAIMANT: u64 = 100;
const NOW_S: u64 = 1_700_000_000;
const AT_MS: u64 = NOW_S * 1_000;
const ID: PacketId = PacketId::FIRST;

/// Splits `amount` among `claimants`, as the owner core does claim by claim.
fn split(amount: u64, claimants: u64, rng: &mut fastrand::Rng) -> u64 {
    let mut remaining = amount;
    for left in (1..=claimants).rev() {
        remaining -= share(remaining, left, rng);
    }
    remaining
}

fn shares(c: &mut Criterion) {
    let mut g = c.benchmark_group("split");
    g.throughput(Throughput::Elements(1));
    let mut rng = fastrand::Rng::with_seed(1);
    g.bench_function("share", |b| {
        b.iter(|| share(black_box(1_000), black_box(10), &mut rng))
    });
    for n in CLAIMANTS {
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("packet", n), &n, |b, &n| {
            b.iter(|| split(black_box(n * CENTS_PER_CLAIMANT), n, &mut rng))
        });
    }
    g.finish();
}

fn packet(claimants: u64) -> NewPacket {
    NewPacket {
        id: ID,
        amount: Cents(claimants * CENTS_PER_CLAIMANT),
        targets: (1..=claimants as u32).map(UserId).collect(),
        claims: Vec::new(),
        until_s: u32::MAX,
    }
}

/// A table holding one fresh packet of `claimants` targets, users 1..=N.
fn table(claimants: u64) -> PacketTable {
    let mut t = PacketTable::new(1);
    t.insert(packet(claimants));
    t
}

fn claims(c: &mut Criterion) {
    let mut g = c.benchmark_group("claim");
    let mut ledger: Producer = Ledger::disabled().producer(0);
    for n in CLAIMANTS {
        g.throughput(Throughput::Elements(n));
        // The table is built outside the timing and dropped after it.
        g.bench_with_input(BenchmarkId::new("paid", n), &n, |b, &n| {
            b.iter_batched(
                || table(n),
                |mut t| {
                    for user in 1..=n as u32 {
                        black_box(t.claim(ID, UserId(user), NOW_S, AT_MS, &mut ledger));
                    }
                    t
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    let mut t = table(10);
    t.claim(ID, UserId(10), NOW_S, AT_MS, &mut ledger);
    g.bench_function("repeat", |b| {
        b.iter(|| t.claim(ID, black_box(UserId(10)), NOW_S, AT_MS, &mut ledger))
    });
    g.bench_function("zero", |b| {
        b.iter(|| t.claim(ID, black_box(UserId(99)), NOW_S, AT_MS, &mut ledger))
    });
    g.finish();
}

criterion_group!(benches, shares, claims);
criterion_main!(benches);
