//! The ledger: every movement of money, as an append-only log on disk.
//!
//! Owns: the record format (`record`), the file and its crash rules
//! ([`file`](mod@file)), the writer thread with group commit ([`writer`]), and the
//! books that replay and audit the records (`books`). Must not: decide
//! anything about money; the generator, the cores and the control decide,
//! and record here before they answer.
//!
//! **Invariant:** money moves only through the ledger. An envelope enters
//! when it is generated, leaves when granted or returned; a packet enters
//! when created, leaves by claims and its refund. Every grant and claim is
//! answered only after its record is durable.

pub(crate) mod books;
pub mod file;
mod record;
pub mod writer;

pub use books::{Books, Outstanding, PacketBook, Totals, Violation};
pub use file::{FILE_NAME, LedgerFile, OpenError, ScanEnd, ScanError};
pub use record::{RECORD_LEN, Record};
pub use writer::{Entry, Ledger, LedgerCounters, Producer};
