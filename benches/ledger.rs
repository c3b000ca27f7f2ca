//! Ledger hot path: encoding a record, appending to the page cache, and
//! making records durable with and without group commit.
//!
//! Why: every grant and claim waits for its record to be durable, so the
//! ledger's records per second bound the money rate, and one fdatasync's
//! latency is added to every money answer. `record/encode` is the CPU cost a
//! core pays per money move; `append/write_no_sync` the page-cache write;
//! `durable/one_record_per_sync` what a ledger without group commit could do
//! (one sync per record); `durable/group_commit_4x256` four producers
//! appending 256 records each and waiting, so syncs are shared. The last two
//! are reported as records per second (criterion's throughput). They measure
//! this machine's disk, so compare them only side by side in one run.

// criterion_group! generates public functions that cannot carry docs.
#![allow(missing_docs)]

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hongbao::ids::{Cents, EnvelopeId, UserId};
use hongbao::ledger::{self, Books, Entry, RECORD_LEN, Record};

fn grant(i: u32) -> Record {
    Record::EnvelopeGranted {
        id: EnvelopeId(i),
        user: UserId(7),
        cents: Cents(100),
        at_ms: 1_700_000_000_000,
    }
}

fn bench_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    let mut buf = [0u8; RECORD_LEN];
    g.bench_function("encode", |b| {
        b.iter(|| black_box(grant(black_box(5))).encode(&mut buf))
    });
    grant(5).encode(&mut buf);
    g.bench_function("decode", |b| b.iter(|| Record::decode(black_box(&buf))));
    g.finish();
}

fn append(c: &mut Criterion) {
    let dir = bench_dir("append");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("raw.log"))
        .expect("bench file");
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(RECORD_LEN);
    g.bench_function("write_no_sync", |b| {
        b.iter(|| {
            buf.clear();
            grant(1).encode_to(&mut buf);
            file.write_all(&buf).expect("write");
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn durable(c: &mut Criterion) {
    let dir = bench_dir("durable");
    let (file, _) = ledger::file::open(&dir, &mut Books::new()).expect("ledger");
    let (ledger, writer) = ledger::writer::start(file, vec![None; 4]).expect("writer");
    let mut g = c.benchmark_group("durable");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    // The ledger checks nothing about money: records need not balance here.
    g.bench_function("one_record_per_sync", |b| {
        b.iter(|| {
            ledger.send(Entry::Record {
                producer: 0,
                record: grant(1),
            });
            assert!(ledger.sync());
        })
    });
    g.throughput(Throughput::Elements(4 * 256));
    g.bench_function("group_commit_4x256", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for p in 0..4u16 {
                    let ledger = ledger.clone();
                    s.spawn(move || {
                        for i in 0..256 {
                            ledger.send(Entry::Record {
                                producer: p,
                                record: grant(i),
                            });
                        }
                        assert!(ledger.sync());
                    });
                }
            });
        })
    });
    g.finish();
    drop(ledger);
    writer.join().expect("writer");
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, record, append, durable);
criterion_main!(benches);
