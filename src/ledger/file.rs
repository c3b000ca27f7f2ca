//! The ledger file: scanning it back, telling a torn tail from damage, and
//! opening it for appends.
//!
//! Owns: the file's shape — whole 40-byte records in group commits, each
//! ending with a [`Record::Commit`] that counts the records before it — and
//! the rule that decides, after a crash, what is a torn tail (truncated and
//! reported) and what is damage (the start is refused, naming the offset).
//! Must not: interpret money (the books do).
//!
//! # Torn tail or damage
//!
//! The writer writes a whole batch and its commit record with one `write`,
//! then syncs, and writes nothing more until the sync returns. So only the
//! last batch can be torn by a crash, and within it the kernel may have
//! written any of its pages: garbage, zeros, or a short file can appear
//! anywhere after the last intact commit. Scanning stops at the first record
//! that does not decode (or breaks the batch structure) at offset `o`; then:
//!
//! - no intact commit record after `o`: a torn tail; the file is cut after
//!   the last intact commit before `o`;
//! - exactly one intact commit after `o`, and the batch it closes starts
//!   right after the last intact commit (so `o` lies inside the final batch):
//!   also a torn tail, cut the same way;
//! - otherwise an intact batch follows the damaged one, which therefore was
//!   synced: damage, and the start is refused.
//!
//! Records after the last intact commit were never acknowledged (answers
//! wait for the sync), so cutting them loses nothing acknowledged. Damage
//! inside the final batch cannot be told from a torn write; it is cut and
//! reported with its size, and `hongbao audit --ack-log` finds any
//! acknowledged answer it took.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::books::{Books, Violation};
use super::record::{RECORD_LEN, Record, RecordError};

/// The ledger's file name inside `--data-dir`.
pub const FILE_NAME: &str = "ledger.log";

/// What scanning found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanEnd {
    /// Bytes up to the end of the last intact commit.
    pub valid_len: u64,
    /// The file's length.
    pub file_len: u64,
    /// Group commits read.
    pub batches: u32,
    /// Money records read (commits excluded).
    pub records: u64,
}

impl ScanEnd {
    /// Bytes after the last intact commit: a torn tail to cut.
    pub fn torn_bytes(&self) -> u64 {
        self.file_len - self.valid_len
    }
}

/// Why a ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Reading failed.
    #[error("reading {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A damaged record is followed by intact batches: not a torn write.
    #[error(
        "{path}: record at offset {offset} is damaged ({why}) but intact group commits follow it, \
         so it was synced before the damage: this is corruption, not a torn write. Refusing to \
         use the ledger; restore {path} from a copy, or inspect it with `hongbao audit --data-dir`"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The records are intact but break the books.
    #[error(
        "{path}: record at offset {offset} breaks the books: {violation}. Refusing to use the \
         ledger; `hongbao audit --data-dir` lists the totals up to it"
    )]
    Violation {
        /// The file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The rule it breaks.
        violation: Violation,
    },
}

/// Why a record at some offset stops the scan.
enum Stop {
    Record(RecordError),
    Structure(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Record(e) => e.fmt(f),
            Stop::Structure(s) => f.write_str(s),
        }
    }
}

/// The scan's read buffer: large reads keep a replay of a multi-gigabyte
/// ledger at disk speed, and a megabyte is nothing next to the books it fills.
const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// Reads the ledger at `path` (a missing file is an empty ledger), applying
/// every record of every intact batch to `books` in order. Records of a
/// torn final batch are not applied. Returns where the valid part ends.
pub fn scan(path: &Path, books: &mut Books) -> Result<ScanEnd, ScanError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ScanEnd::default()),
        Err(e) => return Err(io_error(path, e)),
    };
    let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
    let mut reader = io::BufReader::with_capacity(SCAN_BUFFER_BYTES, &mut file);
    scan_reader(path, &mut reader, file_len, books)
}

/// [`scan`] over the ledger's bytes from `reader`, `file_len` of them;
/// `path` only names the file in errors. Public so that the ledger fuzz
/// target (`fuzz/`) replays arbitrary bytes without a file.
pub fn scan_reader(
    path: &Path,
    reader: &mut impl Read,
    file_len: u64,
    books: &mut Books,
) -> Result<ScanEnd, ScanError> {
    let mut end = ScanEnd {
        file_len,
        ..ScanEnd::default()
    };
    let Some((bad, why)) = apply_batches(path, reader, books, &mut end)? else {
        // End of file: a partial record or an uncommitted batch is torn.
        return Ok(end);
    };
    if is_torn_tail(reader, bad, end.valid_len).map_err(|e| io_error(path, e))? {
        Ok(end)
    } else {
        Err(ScanError::Damaged {
            path: path.to_path_buf(),
            offset: bad,
            why: why.to_string(),
        })
    }
}

/// A read of the ledger at `path` failed.
fn io_error(path: &Path, error: io::Error) -> ScanError {
    ScanError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Applies every intact batch from the reader's position (offset 0) to
/// `books`, advancing `end` past each. Returns where and why the scan stopped
/// before the end of the file, or None at the end of the file.
fn apply_batches(
    path: &Path,
    reader: &mut impl Read,
    books: &mut Books,
    end: &mut ScanEnd,
) -> Result<Option<(u64, Stop)>, ScanError> {
    // The current batch's records wait here until its commit proves them.
    let mut batch: Vec<(u64, Record)> = Vec::new();
    let mut offset = 0u64;
    let mut buf = [0u8; RECORD_LEN];
    loop {
        if !read_record(reader, &mut buf).map_err(|e| io_error(path, e))? {
            return Ok(None);
        }
        let record = match Record::decode(&buf) {
            Ok(r) => r,
            Err(e) => return Ok(Some((offset, Stop::Record(e)))),
        };
        match record {
            Record::Commit { batch: n, records } => {
                if n != end.batches + 1 || records != batch.len() as u64 {
                    let why = format!(
                        "commit {n} of {records} records where commit {} of {} was due",
                        end.batches + 1,
                        batch.len()
                    );
                    return Ok(Some((offset, Stop::Structure(why))));
                }
                apply_batch(path, books, &mut batch, offset)?;
                end.batches = n;
                end.records += records;
                end.valid_len = offset + RECORD_LEN as u64;
            }
            r => batch.push((offset, r)),
        }
        offset += RECORD_LEN as u64;
    }
}

/// Applies a batch its commit (at `commit_offset`) has proven, emptying it.
/// A batch must not end inside a packet's targets.
fn apply_batch(
    path: &Path,
    books: &mut Books,
    batch: &mut Vec<(u64, Record)>,
    commit_offset: u64,
) -> Result<(), ScanError> {
    for (at, r) in batch.drain(..) {
        books.apply(r).map_err(|violation| ScanError::Violation {
            path: path.to_path_buf(),
            offset: at,
            violation,
        })?;
    }
    if books.mid_packet() {
        return Err(ScanError::Violation {
            path: path.to_path_buf(),
            offset: commit_offset,
            violation: Violation("a group commit ends inside a packet's targets".into()),
        });
    }
    Ok(())
}

/// After damage at `bad`, reads on for intact commits: none, or exactly one
/// closing a batch that starts at `valid_len` (the end of the last intact
/// commit), means the damage lies in the final batch: a torn tail. More
/// than that means a synced batch follows the damage.
fn is_torn_tail(reader: &mut impl Read, bad: u64, valid_len: u64) -> io::Result<bool> {
    let mut buf = [0u8; RECORD_LEN];
    let mut commits = Vec::new();
    let mut at = bad + RECORD_LEN as u64;
    while read_record(reader, &mut buf)? {
        if let Ok(Record::Commit { records, .. }) = Record::decode(&buf) {
            commits.push((at, records));
            if commits.len() > 1 {
                break;
            }
        }
        at += RECORD_LEN as u64;
    }
    Ok(match commits.as_slice() {
        [] => true,
        // `records` is read from the file: a count too large for the file
        // (its bytes overflow) closes no batch that starts at `valid_len`.
        [(c, records)] => {
            records
                .checked_mul(RECORD_LEN as u64)
                .and_then(|bytes| c.checked_sub(bytes))
                == Some(valid_len)
        }
        _ => false,
    })
}

/// Reads one whole record; false at end of file (a partial record counts
/// as the end: it is torn).
fn read_record(r: &mut impl Read, buf: &mut [u8; RECORD_LEN]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < RECORD_LEN {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The ledger file opened for appends, locked against a second server.
#[derive(Debug)]
pub struct LedgerFile {
    /// The open file, positioned at its end.
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    /// The number the next commit takes.
    pub next_batch: u32,
}

/// Why the ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The records cannot be trusted.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A file operation failed.
    #[error("{step} {path}: {error}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Another process holds the ledger.
    #[error(
        "{path} is locked by another process: is another server using this --data-dir? ({error})"
    )]
    Locked {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
}

/// Opens `dir/ledger.log` for appends: creates the directory and file if
/// missing (syncing the directory so the file's name is durable), takes an
/// exclusive lock against a second server, scans the records into `books`,
/// and cuts a torn tail (syncing the cut).
pub fn open(dir: &Path, books: &mut Books) -> Result<(LedgerFile, ScanEnd), OpenError> {
    let path = dir.join(FILE_NAME);
    let io_err = |step: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |error| OpenError::Io { step, path, error }
    };
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(OpenError::Locked {
            path,
            error: io::Error::last_os_error(),
        });
    }
    if !existed {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing the directory", dir))?;
    }
    let end = scan(&path, books)?;
    if end.torn_bytes() > 0 {
        file.set_len(end.valid_len)
            .and_then(|()| file.sync_all())
            .map_err(io_err("cutting the torn tail of", &path))?;
    }
    std::io::Seek::seek(&mut file, io::SeekFrom::End(0)).map_err(io_err("seeking", &path))?;
    Ok((
        LedgerFile {
            file,
            path,
            next_batch: end.batches + 1,
        },
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_bytes(bytes: &[u8]) -> Result<ScanEnd, ScanError> {
        let mut reader = bytes;
        scan_reader(
            Path::new("test.log"),
            &mut reader,
            bytes.len() as u64,
            &mut Books::new(),
        )
    }

    /// Found by `fuzz/` (ledger_replay): a commit after damage whose record
    /// count overflowed when turned into bytes (a panic in debug builds, a
    /// wrapped and possibly matching batch start in release).
    #[test]
    fn a_commit_counting_more_records_than_bytes_after_damage_is_damage() {
        let mut bytes = vec![0u8; RECORD_LEN]; // not a record: bad magic
        Record::Commit {
            batch: 1,
            records: u64::MAX,
        }
        .encode_to(&mut bytes);
        Record::Commit {
            batch: 1,
            records: u64::MAX / RECORD_LEN as u64 + 1,
        }
        .encode_to(&mut bytes);
        // One such commit after the damage closes no batch that starts at
        // the last intact commit, and two are more than a torn batch holds:
        // either way a synced batch follows the damage.
        for cut in [2 * RECORD_LEN, 3 * RECORD_LEN] {
            let got = scan_bytes(&bytes[..cut]);
            assert!(
                matches!(got, Err(ScanError::Damaged { offset: 0, .. })),
                "{cut} bytes: {got:?}"
            );
        }
        let mut torn = vec![0u8; RECORD_LEN];
        Record::Commit {
            batch: 1,
            records: 1,
        }
        .encode_to(&mut torn);
        let end = scan_bytes(&torn).expect("damage inside the only batch is a torn tail");
        assert_eq!(
            (end.valid_len, end.torn_bytes()),
            (0, 2 * RECORD_LEN as u64)
        );
    }
}
