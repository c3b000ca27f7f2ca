//! The ledger writer: one thread that appends records and makes them durable
//! with group commit.
//!
//! Owns: the append channel, the thread that drains it into one `write` and
//! one `fdatasync` per batch, and the per-producer durable counts it
//! publishes. Must not: answer anyone before the sync returns, or retry a
//! failed sync (after a failed fsync the kernel may have dropped the dirty
//! pages and marked them clean, so a retry that succeeds proves nothing: the
//! process aborts instead, and a restart replays what is really on disk).
//!
//! Producers are the worker cores (0..cores) and the generator (cores). Each
//! numbers its own entries 1, 2, 3, …; the writer counts each producer's
//! entries in the order the channel delivers them (one producer's entries
//! keep their order) and, after each sync, stores how many of them are
//! durable. A core holds a money answer until its entry's number is at most
//! that count, and is woken through its `mio::Waker` when the count moves.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use super::file::LedgerFile;
use super::record::Record;
use crate::ids::UserId;

/// Entries the append channel holds. A core that finds it full keeps its
/// entries in its own backlog and offers them again next turn.
const CHANNEL_LEN: usize = 1 << 16;
/// Bytes one batch may hold before it is written: 100k records.
const BATCH_BYTES_MAX: usize = 4 << 20;
/// Room past [`BATCH_BYTES_MAX`] in the batch buffer: the entry that crosses
/// the limit is still taken whole (a packet of up to `CLAIMANTS_MAX` targets
/// is about 4 KiB), and the commit record follows, so the buffer never grows.
const BATCH_SLACK_BYTES: usize = 64 * 1024;

/// What producers send to the writer.
#[derive(Debug)]
pub enum Entry {
    /// One record.
    Record {
        /// Who sent it.
        producer: u16,
        /// The record.
        record: Record,
    },
    /// A packet's creation and its targets, written contiguously.
    Packet {
        /// Who sent it.
        producer: u16,
        /// The `PacketCreated` (or `ClusterPacketCreated`) record.
        created: Record,
        /// Its targets, in order.
        targets: Box<[UserId]>,
    },
    /// Answer once everything the sender sent before is durable.
    Barrier(Sender<()>),
}

/// The writer's cumulative counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCounters {
    /// Money records written (commits excluded).
    pub records: u64,
    /// Group commits (each one write and one fdatasync).
    pub syncs: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Time spent in fdatasync, nanoseconds.
    pub sync_ns: u64,
    /// The longest fdatasync, nanoseconds.
    pub sync_ns_max: u64,
}

impl LedgerCounters {
    /// Adds `other`'s sums into `self`; the maximum is the larger one.
    pub fn add(&mut self, other: &LedgerCounters) {
        let LedgerCounters {
            records,
            syncs,
            bytes,
            sync_ns,
            sync_ns_max,
        } = *other;
        self.records += records;
        self.syncs += syncs;
        self.bytes += bytes;
        self.sync_ns += sync_ns;
        self.sync_ns_max = self.sync_ns_max.max(sync_ns_max);
    }

    /// `self - earlier` for the sums; the maximum is `self`'s.
    pub fn since(&self, earlier: &LedgerCounters) -> LedgerCounters {
        LedgerCounters {
            records: self.records - earlier.records,
            syncs: self.syncs - earlier.syncs,
            bytes: self.bytes - earlier.bytes,
            sync_ns: self.sync_ns - earlier.sync_ns,
            sync_ns_max: self.sync_ns_max,
        }
    }
}

#[derive(Default)]
struct Shared {
    durable: Box<[CachePadded<AtomicU64>]>,
    records: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
    sync_ns: AtomicU64,
    sync_ns_max: AtomicU64,
}

/// A handle on the ledger, cloned by every producer. A disabled ledger (no
/// `--data-dir`) takes nothing and reports everything durable.
#[derive(Clone, Default)]
pub struct Ledger {
    tx: Option<Sender<Entry>>,
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

/// Starts the writer on `file` for `producers` producers; `wakers[p]` is
/// woken when producer `p`'s durable count moves. The thread ends when every
/// [`Ledger`] handle is dropped, after writing what was sent.
pub fn start(
    file: LedgerFile,
    wakers: Vec<Option<Arc<mio::Waker>>>,
) -> std::io::Result<(Ledger, JoinHandle<()>)> {
    let shared = Arc::new(Shared {
        durable: (0..wakers.len())
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect(),
        ..Shared::default()
    });
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_LEN);
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("hongbao-ledger".into())
            .spawn(move || run(file, rx, &shared, &wakers))?
    };
    Ok((
        Ledger {
            tx: Some(tx),
            shared: Some(shared),
        },
        thread,
    ))
}

impl Ledger {
    /// A ledger that records nothing: every answer goes out at once.
    pub fn disabled() -> Ledger {
        Ledger::default()
    }

    /// True when records are written.
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// How many of `producer`'s entries are durable (`u64::MAX` when disabled).
    #[inline]
    pub fn durable(&self, producer: usize) -> u64 {
        self.shared
            .as_ref()
            .map_or(u64::MAX, |s| s.durable[producer].load(Ordering::Acquire))
    }

    /// The writer's counters so far, with the longest sync since the last
    /// call (the maximum restarts at each call: one reader, once a second).
    pub fn take_counters(&self) -> LedgerCounters {
        let mut c = self.counters();
        c.sync_ns_max = self
            .shared
            .as_ref()
            .map_or(0, |s| s.sync_ns_max.swap(0, Ordering::Relaxed));
        c
    }

    /// The writer's counters so far.
    pub fn counters(&self) -> LedgerCounters {
        self.shared
            .as_ref()
            .map_or_else(LedgerCounters::default, |s| LedgerCounters {
                records: s.records.load(Ordering::Relaxed),
                syncs: s.syncs.load(Ordering::Relaxed),
                bytes: s.bytes.load(Ordering::Relaxed),
                sync_ns: s.sync_ns.load(Ordering::Relaxed),
                sync_ns_max: s.sync_ns_max.load(Ordering::Relaxed),
            })
    }

    /// Sends an entry, waiting while the channel is full (for the generator
    /// and the control, never a core). False when the writer is gone.
    pub fn send(&self, entry: Entry) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(entry).is_ok())
    }

    /// Waits until everything this thread sent before is durable. True at
    /// once when disabled; false when the writer is gone.
    pub fn sync(&self) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (reply, done) = crossbeam_channel::bounded(1);
        tx.send(Entry::Barrier(reply)).is_ok() && done.recv().is_ok()
    }

    /// A producer handle for producer number `id`.
    pub fn producer(&self, id: u16) -> Producer {
        Producer {
            ledger: self.clone(),
            id,
            appended: 0,
            backlog: VecDeque::new(),
        }
    }
}

/// One producer's side: numbers its entries and keeps those the channel
/// could not take, so a core never blocks on the ledger.
#[derive(Debug)]
pub struct Producer {
    ledger: Ledger,
    id: u16,
    appended: u64,
    backlog: VecDeque<Entry>,
}

impl Producer {
    /// Appends a record; returns its number, which [`Producer::durable`]
    /// reaches once it is on disk. `None` when the ledger is disabled.
    #[inline]
    pub fn append(&mut self, record: Record) -> Option<u64> {
        self.push(Entry::Record {
            producer: self.id,
            record,
        })
    }

    fn push(&mut self, entry: Entry) -> Option<u64> {
        self.ledger.tx.as_ref()?;
        self.appended += 1;
        self.backlog.push_back(entry);
        Some(self.appended)
    }

    /// Offers the backlog to the writer without blocking. True when the
    /// backlog is empty afterwards.
    pub fn flush(&mut self) -> bool {
        let Some(tx) = &self.ledger.tx else {
            return true;
        };
        while let Some(entry) = self.backlog.pop_front() {
            match tx.try_send(entry) {
                Ok(()) => {}
                Err(TrySendError::Full(e)) => {
                    self.backlog.push_front(e);
                    return false;
                }
                // The writer is gone only when the server is stopping: the
                // answers that wait for these records are never sent.
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog.clear();
                    return true;
                }
            }
        }
        true
    }

    /// Entries not yet handed to the writer.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// How many of this producer's entries are durable.
    #[inline]
    pub fn durable(&self) -> u64 {
        self.ledger.durable(usize::from(self.id))
    }
}

/// The writer thread: takes what the channel holds (up to
/// [`BATCH_BYTES_MAX`]), writes it with its commit record, syncs, then
/// publishes the producers' durable counts and answers the barriers.
fn run(
    mut file: LedgerFile,
    rx: Receiver<Entry>,
    shared: &Shared,
    wakers: &[Option<Arc<mio::Waker>>],
) {
    let mut batch = Batch {
        buf: Vec::with_capacity(BATCH_BYTES_MAX + BATCH_SLACK_BYTES),
        records: 0,
        counts: vec![0u64; wakers.len()],
        moved: vec![false; wakers.len()],
        barriers: Vec::new(),
    };
    while let Ok(first) = rx.recv() {
        batch.take(first);
        while batch.buf.len() < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(e) => batch.take(e),
                Err(_) => break,
            }
        }
        if batch.records > 0 {
            batch.commit(&mut file, shared);
        }
        batch.publish(shared, wakers);
    }
}

/// The batch being gathered, and the producers' counts it moves.
struct Batch {
    /// The encoded records, then their commit.
    buf: Vec<u8>,
    /// Money records in `buf`.
    records: u64,
    /// Each producer's entries taken so far, all batches.
    counts: Vec<u64>,
    /// The producers with entries in this batch.
    moved: Vec<bool>,
    /// Who waits for this batch to be durable.
    barriers: Vec<Sender<()>>,
}

impl Batch {
    /// Encodes one entry into the batch (or keeps a barrier for its end).
    fn take(&mut self, entry: Entry) {
        match entry {
            Entry::Record { producer, record } => {
                record.encode_to(&mut self.buf);
                self.records += 1;
                self.counts[usize::from(producer)] += 1;
                self.moved[usize::from(producer)] = true;
            }
            Entry::Packet {
                producer,
                created,
                targets,
            } => {
                created.encode_to(&mut self.buf);
                let (Record::PacketCreated { id, .. } | Record::ClusterPacketCreated { id, .. }) =
                    created
                else {
                    unreachable!("a packet entry starts with its creation");
                };
                for (index, &user) in targets.iter().enumerate() {
                    Record::PacketTarget {
                        id,
                        index: index as u16,
                        user,
                    }
                    .encode_to(&mut self.buf);
                }
                self.records += 1 + targets.len() as u64;
                self.counts[usize::from(producer)] += 1;
                self.moved[usize::from(producer)] = true;
            }
            Entry::Barrier(reply) => self.barriers.push(reply),
        }
    }

    /// Closes the batch with its commit record, writes it with one `write`
    /// and makes it durable with one `fdatasync` (aborting on a failure of
    /// either), and counts it.
    fn commit(&mut self, file: &mut LedgerFile, shared: &Shared) {
        Record::Commit {
            batch: file.next_batch,
            records: self.records,
        }
        .encode_to(&mut self.buf);
        file.next_batch += 1;
        if let Err(e) = file.file.write_all(&self.buf) {
            fatal(file, "write", &e);
        }
        let started = Instant::now();
        if let Err(e) = file.file.sync_data() {
            fatal(file, "fdatasync", &e);
        }
        let ns = started.elapsed().as_nanos() as u64;
        shared.records.fetch_add(self.records, Ordering::Relaxed);
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        shared.sync_ns.fetch_add(ns, Ordering::Relaxed);
        shared.sync_ns_max.fetch_max(ns, Ordering::Relaxed);
        self.buf.clear();
        self.records = 0;
    }

    /// After the sync: stores the durable count of every producer the batch
    /// moved and wakes it, then answers the barriers.
    fn publish(&mut self, shared: &Shared, wakers: &[Option<Arc<mio::Waker>>]) {
        for (p, moved) in self.moved.iter_mut().enumerate() {
            if std::mem::take(moved) {
                shared.durable[p].store(self.counts[p], Ordering::Release);
                if let Some(w) = &wakers[p] {
                    // A core that cannot be woken is stopping; it reads the
                    // count on its next turn anyway.
                    let _ = w.wake();
                }
            }
        }
        for reply in self.barriers.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// A failed write or sync: the records' fate on disk is unknown, and
/// answering anyone would be a lie. Abort; the restart replays the truth.
fn fatal(file: &LedgerFile, what: &str, e: &std::io::Error) -> ! {
    eprintln!(
        "hongbao: ledger: {what} of {} failed: {e}. Aborting without retrying (after a failed \
         sync the kernel may have dropped the pages); on restart the ledger is replayed from \
         what is on disk. Check the disk and free space.",
        file.path.display()
    );
    std::process::abort();
}
