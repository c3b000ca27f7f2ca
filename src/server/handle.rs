//! `ServerHandle`: a running server as its owner holds it.
//!
//! Owns: what the start found (addresses, threads, the open-file limit,
//! warnings, the ledger's replay) and the queries and the shutdown a running
//! server answers. Must not: start anything (that is `startup`'s), or stop
//! anything itself: `Running` stops the threads, in the reverse order of
//! their start.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::limits::FdLimit;
use super::published::Published;
use super::running::Running;
use super::stats_thread::Summary;
use crate::ledger;
use crate::ring::EnvelopeRings;
use crate::stats::SecondStats;

/// What the server found in its ledger at start.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Replayed {
    /// True when the server keeps a ledger.
    pub enabled: bool,
    /// Money records replayed.
    pub records: u64,
    /// Group commits replayed.
    pub batches: u32,
    /// Bytes of a torn tail cut off (records never acknowledged).
    pub torn_bytes: u64,
    /// Offset where the torn tail began.
    pub torn_at: u64,
    /// Envelopes outstanding, queued into the rings again.
    pub envelopes_outstanding: u64,
    /// Their cents.
    pub cents_outstanding: u64,
    /// Live packets handed back to their cores.
    pub packets_live: u64,
    /// Cents not yet claimed in them.
    pub cents_in_packets: u64,
    /// The totals of the whole ledger.
    pub totals: ledger::Totals,
}

/// Where the seed of amounts and splits came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedSource {
    /// `--seed`.
    Given,
    /// The OS's randomness, drawn at start.
    Os,
}

/// A running server. Dropping it stops it, as [`ServerHandle::shutdown`]
/// does without the totals.
pub struct ServerHandle {
    pub(super) addr: SocketAddr,
    pub(super) http_addr: Option<SocketAddr>,
    pub(super) threads: usize,
    pub(super) fd_limit: FdLimit,
    pub(super) warnings: Vec<String>,
    pub(super) published: Arc<Mutex<Published>>,
    pub(super) rings: Arc<EnvelopeRings>,
    pub(super) replayed: Replayed,
    pub(super) seed: (u64, SeedSource),
    /// Every thread, stopped in the reverse order of its start.
    pub(super) running: Running,
}

impl ServerHandle {
    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The HTTP control address, unless disabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The open-file limit in force.
    pub fn fd_limit(&self) -> FdLimit {
        self.fd_limit
    }

    /// Warnings from start-up, each with its fix.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Totals over every closed second so far.
    pub fn total(&self) -> SecondStats {
        Published::lock(&self.published).total.clone()
    }

    /// The last closed seconds, oldest first.
    pub fn recent(&self) -> Vec<SecondStats> {
        let p = Published::lock(&self.published);
        p.recent.after(None)
    }

    /// What the ledger held at start.
    pub fn replayed(&self) -> Replayed {
        self.replayed
    }

    /// The seed of amounts and splits, and where it came from: print it so
    /// that the run can be replayed with `--seed`.
    pub fn seed(&self) -> (u64, SeedSource) {
        self.seed
    }

    /// Envelopes waiting in the rings now.
    pub fn envelopes_in_rings(&self) -> u64 {
        self.rings.len() as u64
    }

    /// Stops accepting, flushes pending answers, stops every thread, and
    /// returns the run's totals.
    ///
    /// # Panics
    ///
    /// When a worker's poll failed or a thread panicked: both are broken
    /// invariants, not operating errors.
    pub fn shutdown(mut self) -> Summary {
        let stopped = self.running.stop();
        let mut summary = match stopped {
            Ok(Some(summary)) => summary,
            Ok(None) => unreachable!("a started server has a stats thread"),
            Err(thread) => panic!("{thread} panicked"),
        };
        summary.envelopes_in_rings = self.rings.len() as u64;
        summary
    }
}
