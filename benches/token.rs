//! The cost of a signed login: the token check alone, and a whole login
//! step (decode and session) signed and v1, side by side.
//!
//! What it measures and why: a signed login checks an HMAC-SHA256 tag on
//! the core that reads it, once per connection, so its cost bounds how fast
//! a core takes logins (a reconnect storm of a million clients) and what a
//! forger's attempt costs the server. The session is the zero-logic
//! reference's, so the figures are the login path's alone (the product adds
//! the presence message both kinds of login send). Each login starts a new
//! session, as on a new connection.

// criterion_group! generates public functions that cannot carry docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hongbao::clock::Now;
use hongbao::ids::{CoreId, UserId};
use hongbao::ledger::Ledger;
use hongbao::mesh::{ConnAddr, Effects};
use hongbao::session::{FrameContext, LoginPolicy, Reference, Service, SessionState};
use hongbao::stats::CoreCounters;
use hongbao::token::{KEY_LEN, Keyring};
use hongbao::wire::{self, Frame};

const CONN: ConnAddr = ConnAddr {
    core: 0,
    key: 0,
    serial: 1,
};
const NOW: Now = Now {
    secs: 1_700_000_000,
    ms: 1_700_000_000_000,
};
const EXPIRY: u64 = NOW.secs + 3600;

/// Two live keys, as during a rotation; tokens are signed with the second,
/// so a check looks past the first.
fn keys() -> Keyring {
    Keyring::new(&[(1, [1; KEY_LEN]), (2, [2; KEY_LEN])]).expect("two keys")
}

fn token(c: &mut Criterion) {
    let ring = keys();
    let good = ring.sign(2, UserId(7), EXPIRY).expect("key 2");
    let mut forged = good;
    forged.tag[0] ^= 1;
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign", |b| {
        b.iter(|| ring.sign(black_box(2), black_box(UserId(7)), black_box(EXPIRY)))
    });
    g.bench_function("verify_good", |b| {
        b.iter(|| ring.verify(black_box(&good), black_box(NOW.secs)))
    });
    g.bench_function("verify_bad_tag", |b| {
        b.iter(|| ring.verify(black_box(&forged), black_box(NOW.secs)))
    });
    g.finish();
}

/// Decodes `bytes` and runs the login step on a fresh session.
fn login_step(
    bytes: &[u8],
    service: &mut Reference,
    out: &mut Vec<u8>,
    fx: &mut Effects,
    counters: &mut CoreCounters,
) -> bool {
    let d = wire::decode(bytes).expect("a whole frame");
    out.clear();
    let mut cx = FrameContext {
        conn: CONN,
        state: SessionState::AwaitingLogin,
        now: NOW,
        out,
        fx,
        counters,
    };
    service.on_frame(d.frame, &mut cx).is_ok()
}

fn login(c: &mut Criterion) {
    let ring = keys();
    let mut v1 = Vec::new();
    Frame::LoginRequest { user: UserId(7) }.encode(NOW.secs, &mut v1);
    let mut signed = Vec::new();
    let token = ring.sign(2, UserId(7), EXPIRY).expect("key 2");
    Frame::SignedLogin { token }.encode(NOW.secs, &mut signed);
    let mut open = Reference::default();
    let mut checked = Reference::with_policy(LoginPolicy {
        signed_only: true,
        keys: ring,
    });
    let mut out = Vec::with_capacity(64);
    let mut counters = CoreCounters::default();
    let mut fx = Effects::new(CoreId(0), 1, Ledger::disabled().producer(0));
    // Each path does what its name says: checked once, outside the timing.
    assert!(login_step(&v1, &mut open, &mut out, &mut fx, &mut counters));
    assert!(login_step(
        &signed,
        &mut checked,
        &mut out,
        &mut fx,
        &mut counters
    ));
    assert!(!login_step(
        &v1,
        &mut checked,
        &mut out,
        &mut fx,
        &mut counters
    ));

    let mut g = c.benchmark_group("login");
    g.throughput(Throughput::Elements(1));
    g.bench_function("v1_open", |b| {
        b.iter(|| login_step(black_box(&v1), &mut open, &mut out, &mut fx, &mut counters))
    });
    g.bench_function("signed", |b| {
        b.iter(|| {
            login_step(
                black_box(&signed),
                &mut checked,
                &mut out,
                &mut fx,
                &mut counters,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, token, login);
criterion_main!(benches);
