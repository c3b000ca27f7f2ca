//! The ledger on disk: crash rules, damage, and the audit command.
//!
//! Owns: what a ledger file replays to when cut at any byte (a torn tail,
//! cut back to the last whole group commit, never an error), when a bit is
//! flipped in an early batch (the start is refused, naming the offset) or in
//! the final one (cut as torn), and what `hongbao audit` says about both and
//! about acknowledgements the ledger lacks. Must not: assert a timing.

mod util;

use std::path::Path;

use hongbao::ids::{Cents, EnvelopeId, PacketId, UserId};
use hongbao::ledger::{self, Books, Entry, RECORD_LEN, Record, ScanError};
use util::{run_to_exit, scratch_dir};

/// Writes a ledger with every kind of record, one group commit per step,
/// through the real writer. Returns the file's bytes and each commit's end.
/// Opens the ledger in `dir` as a server does, waiting (bounded) while it is
/// locked. Only the tests need the wait: while another test of this binary
/// forks a `hongbao` child, the child holds a copy of every descriptor until
/// its exec closes them, and with it the lock of a ledger this test just
/// closed (CI saw `WouldBlock` once).
fn open_when_unlocked(
    dir: &Path,
    books: &mut Books,
) -> Result<(ledger::LedgerFile, ledger::ScanEnd), ledger::OpenError> {
    let deadline = std::time::Instant::now() + util::WAIT;
    loop {
        match ledger::file::open(dir, books) {
            Err(ledger::OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn write_sample(dir: &Path) -> (Vec<u8>, Vec<u64>) {
    let mut books = Books::new();
    let (file, _) = ledger::file::open(dir, &mut books).expect("opening a new ledger");
    let (ledger, writer) = ledger::writer::start(file, vec![None]).expect("starting the writer");
    let send = |record: Record| {
        assert!(ledger.send(Entry::Record {
            producer: 0,
            record
        }))
    };
    let at_ms = 1_700_000_000_000;
    for i in 0..6 {
        send(Record::EnvelopeGenerated {
            id: EnvelopeId(0x10_0000 + i),
            cents: Cents(10 + u64::from(i)),
            at_ms,
        });
    }
    assert!(ledger.sync());
    for i in 0..3 {
        send(Record::EnvelopeGranted {
            id: EnvelopeId(0x10_0000 + i),
            user: UserId(i),
            cents: Cents(10 + u64::from(i)),
            at_ms,
        });
        assert!(ledger.sync());
    }
    send(Record::EnvelopeReturned {
        id: EnvelopeId(0x10_0005),
        cents: Cents(15),
        at_ms,
    });
    let packet = PacketId(0x20_0000);
    assert!(ledger.send(Entry::Packet {
        producer: 0,
        created: Record::PacketCreated {
            id: packet,
            cents: Cents(100),
            claimants: 3,
            at_ms,
            until_s: 1_700_086_400,
        },
        targets: vec![UserId(7), UserId(8), UserId(9)].into_boxed_slice(),
    }));
    assert!(ledger.sync());
    for (user, cents) in [(8, 30), (7, 25)] {
        send(Record::Claim {
            id: packet,
            user: UserId(user),
            cents: Cents(cents),
            at_ms,
        });
        assert!(ledger.sync());
    }
    send(Record::Refund {
        id: packet,
        cents: Cents(45),
        at_ms,
    });
    assert!(ledger.sync());
    drop(ledger);
    writer.join().expect("writer thread");
    let bytes = std::fs::read(dir.join(ledger::FILE_NAME)).expect("reading the ledger");
    let commits = bytes
        .chunks(RECORD_LEN)
        .enumerate()
        .filter_map(|(i, r)| {
            let r: &[u8; RECORD_LEN] = r.try_into().ok()?;
            matches!(Record::decode(r), Ok(Record::Commit { .. }))
                .then_some(((i + 1) * RECORD_LEN) as u64)
        })
        .collect();
    (bytes, commits)
}

#[test]
fn a_ledger_cut_at_every_byte_replays_to_the_last_whole_commit() {
    let dir = scratch_dir("ledger-cut");
    let (bytes, commits) = write_sample(&dir.join("whole"));
    assert_eq!(commits.len(), 8, "one commit per sync");
    let mut last_totals = None;
    for cut in 0..=bytes.len() {
        let d = dir.join("cut");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(ledger::FILE_NAME), &bytes[..cut]).unwrap();
        let mut books = Books::new();
        let (_file, end) =
            open_when_unlocked(&d, &mut books).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let want = commits
            .iter()
            .copied()
            .filter(|&c| c <= cut as u64)
            .max()
            .unwrap_or(0);
        assert_eq!(end.valid_len, want, "cut at {cut}");
        assert_eq!(end.torn_bytes(), cut as u64 - want, "cut at {cut}");
        books.check_conservation().unwrap();
        let len = std::fs::metadata(d.join(ledger::FILE_NAME)).unwrap().len();
        assert_eq!(len, want, "the torn tail is cut on disk");
        // Totals only grow with the cut: each valid prefix extends the last.
        let t = books.totals();
        if let Some(last) = last_totals {
            let grew = |a: u64, b: u64| a >= b;
            let hongbao::ledger::Totals {
                cents_generated,
                cents_granted,
                cents_claimed,
                ..
            } = last;
            assert!(grew(t.cents_generated, cents_generated));
            assert!(grew(t.cents_granted, cents_granted));
            assert!(grew(t.cents_claimed, cents_claimed));
        }
        last_totals = Some(t);
    }
    let t = last_totals.unwrap();
    assert_eq!(
        (t.cents_generated, t.cents_granted, t.cents_returned),
        (75, 33, 15)
    );
    assert_eq!((t.cents_claimed, t.cents_refunded), (55, 45));
}

#[test]
fn a_bit_flipped_in_an_early_batch_refuses_the_start_and_the_audit() {
    let dir = scratch_dir("ledger-flip");
    let (mut bytes, commits) = write_sample(&dir);
    // A record inside the second batch: later batches prove it was synced.
    let offset = commits[0] as usize + 5;
    bytes[offset] ^= 0x10;
    std::fs::write(dir.join(ledger::FILE_NAME), &bytes).unwrap();
    let record_at = (offset / RECORD_LEN * RECORD_LEN) as u64;

    let err = open_when_unlocked(&dir, &mut Books::new()).expect_err("damage must refuse");
    match err {
        ledger::OpenError::Scan(ScanError::Damaged { offset, .. }) => assert_eq!(offset, record_at),
        e => panic!("expected damage, got {e}"),
    }
    let dir_arg = dir.to_str().unwrap();
    let server = run_to_exit(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--no-http",
        "--data-dir",
        dir_arg,
    ]);
    assert!(!server.status.success());
    assert!(
        server.stderr.contains(&format!("offset {record_at}"))
            && server.stderr.contains("--data-dir"),
        "the error names the offset and the step: {}",
        server.stderr
    );
    let audit = run_to_exit(&["audit", "--data-dir", dir_arg]);
    assert!(!audit.status.success());
    assert!(
        audit.stderr.contains(&format!("offset {record_at}")),
        "{}",
        audit.stderr
    );
    // The file is untouched: refusing is not repairing.
    assert_eq!(std::fs::read(dir.join(ledger::FILE_NAME)).unwrap(), bytes);
}

#[test]
fn a_bit_flipped_in_the_final_batch_is_cut_as_a_torn_tail() {
    let dir = scratch_dir("ledger-flip-last");
    let (mut bytes, commits) = write_sample(&dir);
    let last_start = commits[commits.len() - 2] as usize;
    bytes[last_start + 3] ^= 1;
    std::fs::write(dir.join(ledger::FILE_NAME), &bytes).unwrap();
    let (_f, end) = open_when_unlocked(&dir, &mut Books::new()).expect("a torn tail is no error");
    assert_eq!(end.valid_len, last_start as u64);
}

#[test]
fn the_audit_proves_acknowledgements_and_names_a_lost_one() {
    let dir = scratch_dir("ledger-audit");
    write_sample(&dir);
    let acks = dir.join("acks.log");
    std::fs::write(
        &acks,
        "grant 0 1048576 10\ngrant 2 1048578 12\nclaim 8 2097152 30\nclaim 5 2097152 0\n",
    )
    .unwrap();
    let d = dir.to_str().unwrap();
    let ok = run_to_exit(&[
        "audit",
        "--data-dir",
        d,
        "--ack-log",
        acks.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(ok.stdout.contains("audit: OK"), "{}", ok.stdout);
    assert!(
        ok.stdout.contains("2 grants and 1 paid claims"),
        "{}",
        ok.stdout
    );
    let json = run_to_exit(&["audit", "--data-dir", d, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v["totals"]["cents_generated"], 75);
    assert_eq!(v["cents_outstanding"], 27);

    for (line, names) in [
        ("grant 1 1048576 10\n", "envelope 1048576"),
        ("grant 4 1048580 14\n", "not in the ledger"),
        ("claim 9 2097152 45\n", "claim of packet 2097152 by user 9"),
    ] {
        std::fs::write(&acks, line).unwrap();
        let bad = run_to_exit(&[
            "audit",
            "--data-dir",
            d,
            "--ack-log",
            acks.to_str().unwrap(),
        ]);
        assert!(!bad.status.success(), "{line}");
        assert!(bad.stderr.contains(names), "{line}: {}", bad.stderr);
    }
}
