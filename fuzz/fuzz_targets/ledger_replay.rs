//! Ledger replay over arbitrary bytes: `ledger::file::scan_reader`, the scan
//! `scan` (server start, `hongbao audit`) runs on the file, into `Books`.
//!
//! The bytes are built from pieces: raw bytes, well-formed records of every
//! kind with small ids (so that they meet: a grant of a generated envelope,
//! a claim of a created packet) and big or small amounts, valid or wrong
//! commit records, and then bits flipped and cuts anywhere. A CRC guards
//! every record, which random bytes alone would almost never pass.
//!
//! Checked: no panic, no overflow (debug assertions are on); an error or a
//! truncation point, never both: `valid_len` a whole number of records
//! within the file, counting exactly the records and commits before it;
//! an error's offset a record's start within the file; books that balance
//! after a good scan; the same result when the bytes arrive in reads of
//! any size, with interruptions; and scanning only the valid part again
//! gives the same books and nothing torn. Allocation stays within what the
//! input's size allows (`tools/fuzz.sh` runs it under `-malloc_limit_mb`).
#![no_main]

use std::io::{self, Read};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use hongbao::ids::{Cents, EnvelopeId, PacketId, UserId};
use hongbao::ledger::file::scan_reader;
use hongbao::ledger::{Books, RECORD_LEN, Record, ScanEnd, ScanError};
use libfuzzer_sys::fuzz_target;

/// The input: `[mode, read_max, interrupt]`, then the file. Mode even:
/// the rest is the file's bytes as they are (the seeds are real ledgers);
/// odd: the rest is read (with `arbitrary`) as pieces to build it from.
/// The largest read the reader returns is 1 + `read_max` % 97 bytes, so
/// that records arrive split; every (2 + `interrupt` % 3)-th read fails
/// with `Interrupted` (never when `interrupt` is 0).
const HEAD_LEN: usize = 3;

#[derive(Arbitrary, Debug)]
enum Piece {
    /// A well-formed record (valid magic and CRC).
    Record(Rec),
    /// The commit that closes the records since the last one.
    Commit,
    /// A commit with any numbers.
    AnyCommit { batch: u32, records: u64 },
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// One bit flipped somewhere in what is built so far.
    Flip { at: u16, bit: u8 },
    /// What is built so far cut short.
    Cut { at: u16 },
}

#[derive(Arbitrary, Debug)]
struct Rec {
    kind: u8,
    /// Small: ids that meet.
    id: u8,
    user: u8,
    index: u8,
    cents: Amount,
    at_ms: u16,
    until_s: u8,
}

#[derive(Arbitrary, Debug)]
enum Amount {
    Small(u8),
    Any(u64),
}

impl Rec {
    fn record(&self) -> Record {
        let env = EnvelopeId(EnvelopeId::FIRST.0 + u32::from(self.id % 8));
        let packet = PacketId(PacketId::FIRST.0 + u32::from(self.id % 4));
        let user = UserId(u32::from(self.user % 4));
        let cents = Cents(match self.cents {
            Amount::Small(c) => u64::from(c),
            Amount::Any(c) => c,
        });
        let at_ms = u64::from(self.at_ms);
        match self.kind % 11 {
            0 => Record::EnvelopeGenerated {
                id: env,
                cents,
                at_ms,
            },
            1 => Record::EnvelopeGranted {
                id: env,
                user,
                cents,
                at_ms,
            },
            2 => Record::EnvelopeReturned {
                id: env,
                cents,
                at_ms,
            },
            3 => Record::PacketCreated {
                id: packet,
                cents,
                claimants: u16::from(self.index % 4),
                at_ms,
                until_s: u32::from(self.until_s),
            },
            4 => Record::PacketTarget {
                id: packet,
                index: u16::from(self.index % 4),
                user,
            },
            5 => Record::Claim {
                id: packet,
                user,
                cents,
                at_ms,
            },
            6 => Record::Refund {
                id: packet,
                cents,
                at_ms,
            },
            // Cluster mode's records, on the same small ids so that they
            // meet the local ones (a cluster packet of a local one's id) and
            // each other (a mirror of an own packet, a refund twice).
            7 => Record::ClusterPacketCreated {
                id: packet,
                cents,
                claimants: u16::from(self.index % 4),
                at_ms,
                until_s: u32::from(self.until_s),
            },
            8 => Record::ClusterClaim {
                id: packet,
                user,
                cents,
                at_ms,
            },
            9 => Record::ClusterRefund {
                id: packet,
                cents,
                at_ms,
            },
            _ => Record::Lease {
                epoch: u32::from(self.id % 4),
                envelopes: cents.0,
                at_ms,
            },
        }
    }
}

/// Builds the file's bytes from the pieces.
fn build(pieces: &[Piece]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let (mut batch, mut since_commit) = (0u32, 0u64);
    for piece in pieces {
        match piece {
            Piece::Record(r) => {
                r.record().encode_to(&mut bytes);
                since_commit += 1;
            }
            Piece::Commit => {
                batch = batch.wrapping_add(1);
                Record::Commit {
                    batch,
                    records: since_commit,
                }
                .encode_to(&mut bytes);
                since_commit = 0;
            }
            &Piece::AnyCommit { batch, records } => {
                Record::Commit { batch, records }.encode_to(&mut bytes);
            }
            Piece::Raw(raw) => bytes.extend_from_slice(raw),
            &Piece::Flip { at, bit } => {
                if !bytes.is_empty() {
                    let at = usize::from(at) % bytes.len();
                    bytes[at] ^= 1 << (bit % 8);
                }
            }
            &Piece::Cut { at } => bytes.truncate(usize::from(at) % (bytes.len() + 1)),
        }
    }
    bytes
}

/// Reads at most `max` bytes at a time, failing every `interrupt`-th read
/// with `Interrupted`.
struct Chunky<'a> {
    bytes: &'a [u8],
    max: usize,
    interrupt: usize,
    reads: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.interrupt > 0 && self.reads.is_multiple_of(self.interrupt) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.max).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

fn scan(bytes: &[u8], books: &mut Books) -> Result<ScanEnd, ScanError> {
    let mut reader = bytes;
    scan_reader(
        Path::new("fuzz.log"),
        &mut reader,
        bytes.len() as u64,
        books,
    )
}

/// The books' state, to compare two replays.
fn state(b: &Books) -> impl PartialEq + std::fmt::Debug {
    (
        b.totals(),
        b.outstanding(),
        b.cents_in_packets(),
        b.packets_live(),
        b.next_envelope_id(),
        b.next_packet_id(),
        b.mid_packet(),
        b.cluster_packets().clone(),
        b.cluster_claims().clone(),
        b.leases().clone(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&[mode, read_max, interrupt], rest)) = data.split_first_chunk::<HEAD_LEN>() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let Ok(pieces) = Vec::<Piece>::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        build(&pieces)
    };
    let len = bytes.len() as u64;
    let record = RECORD_LEN as u64;

    let mut books = Books::with_history();
    let result = scan(&bytes, &mut books);

    // The same bytes in reads of any size, with interruptions.
    let mut chunky_books = Books::with_history();
    let mut chunky = Chunky {
        bytes: &bytes,
        max: 1 + usize::from(read_max % 97),
        interrupt: if interrupt == 0 {
            0
        } else {
            2 + usize::from(interrupt % 3)
        },
        reads: 0,
    };
    let chunky_result = scan_reader(Path::new("fuzz.log"), &mut chunky, len, &mut chunky_books);
    assert_eq!(
        format!("{result:?}"),
        format!("{chunky_result:?}"),
        "the result depends on how the bytes arrive"
    );
    assert_eq!(state(&books), state(&chunky_books));

    match result {
        Ok(end) => {
            assert_eq!(end.file_len, len);
            assert!(end.valid_len <= len, "{end:?}");
            assert_eq!(end.valid_len % record, 0, "cut inside a record: {end:?}");
            assert_eq!(
                end.records + u64::from(end.batches),
                end.valid_len / record,
                "every record before the cut is counted: {end:?}"
            );
            assert!(!books.mid_packet(), "a good scan ends between packets");
            books
                .check_conservation()
                .expect("the books balance after a good scan");
            // Cutting the torn tail and scanning again changes nothing.
            let mut again = Books::with_history();
            let end2 = scan(&bytes[..end.valid_len as usize], &mut again)
                .expect("the valid part scans again");
            assert_eq!(end2.valid_len, end.valid_len);
            assert_eq!(end2.torn_bytes(), 0);
            assert_eq!((end2.batches, end2.records), (end.batches, end.records));
            assert_eq!(state(&books), state(&again));
        }
        Err(ScanError::Damaged { offset, .. }) | Err(ScanError::Violation { offset, .. }) => {
            assert!(offset < len, "an error past the end: {offset} of {len}");
            assert_eq!(offset % record, 0, "an error inside a record: {offset}");
        }
        Err(ScanError::Io { error, .. }) => panic!("reading memory failed: {error}"),
    }
});
