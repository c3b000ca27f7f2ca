//! The per-request hot path, piece by piece, without sockets.
//!
//! What it measures and why: the server's own code must cost well under a
//! microsecond per shake (performance-notes: the kernel takes ~5–6 µs of the
//! floor), so each piece a shake passes through is timed alone — decoding a
//! frame, encoding an answer, one session step for a shake (with and without
//! an envelope in the ring), and answering a 64 KiB read full of pipelined
//! shakes, which is what a core does per wake-up under load: the bench calls
//! `server::answer::answer_frames`, the very step the core loop runs on each
//! read. Throughput is reported per frame.

// criterion_group! generates public functions that cannot carry docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hongbao::clock::Now;
use hongbao::durable::HeldAnswers;
use hongbao::ids::{Cents, CoreId, EnvelopeId, UserId};
use hongbao::ledger::Ledger;
use hongbao::mesh::{ConnAddr, Effects};
use hongbao::ring::{Envelope, EnvelopeRings};
use hongbao::server::answer::answer_frames;
use hongbao::session::{FrameContext, Hongbao, HongbaoSettings, Reference, Service, SessionState};
use hongbao::stats::CoreCounters;
use hongbao::wire::{self, Frame, ShakeOutcome};

const CONN: ConnAddr = ConnAddr {
    core: 0,
    key: 0,
    serial: 1,
};
const NOW: Now = Now { secs: 1, ms: 1_000 };
const SETTINGS: HongbaoSettings = HongbaoSettings {
    shakes_per_sec_max: u64::MAX,
    mailbox_max: 16,
    user_conns_max: 4,
    seed: 1,
    cluster: false,
};

/// A core's effects with the ledger off: the step alone is measured.
fn effects() -> Effects {
    Effects::new(CoreId(0), 1, Ledger::disabled().producer(0))
}

/// A logged-in user's step context, as the core loop makes one per read.
fn context<'a>(
    out: &'a mut Vec<u8>,
    fx: &'a mut Effects,
    counters: &'a mut CoreCounters,
) -> FrameContext<'a> {
    FrameContext {
        conn: CONN,
        state: SessionState::LoggedIn(UserId(7)),
        now: NOW,
        out,
        fx,
        counters,
    }
}

fn shake_bytes(count: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(count * 16);
    for _ in 0..count {
        Frame::ShakeRequest { user: UserId(7) }.encode(1_700_000_000, &mut v);
    }
    v
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    let one = shake_bytes(1);
    g.bench_function("decode_shake", |b| b.iter(|| wire::decode(black_box(&one))));
    let answer = Frame::ShakeResponse {
        user: UserId(7),
        result: ShakeOutcome::GOT,
        envelope: EnvelopeId::FIRST,
        amount: Cents(123),
    };
    let mut out = Vec::with_capacity(64);
    g.bench_function("encode_shake_response", |b| {
        b.iter(|| {
            out.clear();
            black_box(answer).encode(1_700_000_000, &mut out);
        })
    });
    g.finish();
}

fn session_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    let frame = Frame::ShakeRequest { user: UserId(7) };
    let mut out = Vec::with_capacity(64);
    let mut counters = CoreCounters::default();
    let mut fx = effects();
    let mut cx = context(&mut out, &mut fx, &mut counters);

    let rings = Arc::new(EnvelopeRings::new(1, 1024));
    let mut hongbao = Hongbao::new(CoreId(0), rings.clone(), SETTINGS);
    g.bench_function("shake_none", |b| {
        b.iter(|| {
            cx.out.clear();
            hongbao.on_frame(black_box(frame), &mut cx)
        })
    });
    let envelope = Envelope {
        id: EnvelopeId::FIRST,
        amount: Cents(100),
        until_s: u32::MAX,
    };
    g.bench_function("shake_got_with_ring_push", |b| {
        b.iter(|| {
            let _ = rings.push(CoreId(0), envelope);
            cx.out.clear();
            hongbao.on_frame(black_box(frame), &mut cx)
        })
    });
    let mut reference = Reference::default();
    g.bench_function("shake_reference", |b| {
        b.iter(|| {
            cx.out.clear();
            reference.on_frame(black_box(frame), &mut cx)
        })
    });
    g.finish();
}

fn pipelined_read(c: &mut Criterion) {
    // 4,096 shakes fill the 64 KiB read buffer exactly.
    let frames = 4096;
    let input = shake_bytes(frames);
    let mut g = c.benchmark_group("wake_up");
    g.throughput(Throughput::Elements(frames as u64));
    let rings = Arc::new(EnvelopeRings::new(1, 16));
    let mut hongbao = Hongbao::new(CoreId(0), rings, SETTINGS);
    let mut out = Vec::with_capacity(frames * 28);
    let mut counters = CoreCounters::default();
    let mut fx = effects();
    let mut held = HeldAnswers::default();
    // Every frame of the read is answered: checked once, outside the timing.
    let answered = answer_frames(
        &input,
        &mut hongbao,
        &mut held,
        &mut context(&mut out, &mut fx, &mut counters),
    );
    assert_eq!(
        (answered.used, answered.frames),
        (input.len(), frames as u64)
    );
    g.bench_function("answer_64KiB_of_shakes", |b| {
        b.iter(|| {
            out.clear();
            // Made per read, as the core loop makes it.
            let mut cx = context(&mut out, &mut fx, &mut counters);
            let answered = answer_frames(black_box(&input), &mut hongbao, &mut held, &mut cx);
            black_box((answered, out.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, codec, session_step, pipelined_read);
criterion_main!(benches);
