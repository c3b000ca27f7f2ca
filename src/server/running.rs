//! `Running`: whatever of a server has started, owned so that stopping it
//! (or dropping it) stops every thread in the reverse order of its start.
//!
//! Owns: each thread's handle with the start's own end of the channel that
//! keeps it alive, and the order of the stop. Must not: start anything
//! (that is `startup`'s), or panic while stopping: a thread that panicked is
//! named to the caller, who decides.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::control::ControlServer;
use super::engine::{EngineRequest, EngineStatus};
use super::stats_thread::Summary;
use crate::generator::Command;
use crate::ledger::Ledger;
use crate::mesh::CoreMsg;
use crate::stats::Report;

/// The stats thread and the start's own sender of reports: the thread ends
/// once every sender is gone.
pub(super) struct StatsThread {
    pub(super) thread: JoinHandle<Summary>,
    pub(super) reports: Sender<Report>,
}

/// The ledger writer (none when the ledger is disabled) and the start's own
/// handle: the writer ends once every handle and producer is gone.
pub(super) struct LedgerThread {
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) ledger: Ledger,
}

/// The generator and its command channel: it ends once every sender of
/// commands (this one and the HTTP control's) is gone.
pub(super) struct GeneratorThread {
    pub(super) thread: JoinHandle<()>,
    pub(super) commands: Sender<Command>,
}

/// Cluster mode: the engine thread and the push reader, with what stops
/// them (the flag, which each looks at within a second) and what the
/// control and the handle read.
pub(super) struct EngineThreads {
    pub(super) node: u32,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) status: Arc<EngineStatus>,
    pub(super) requests: Sender<EngineRequest>,
    pub(super) engine: Option<JoinHandle<()>>,
    pub(super) reader: Option<JoinHandle<()>>,
}

impl EngineThreads {
    /// Stops both threads and waits for them; true if one panicked.
    fn stop(&mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        let mut panicked = false;
        for t in [self.engine.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            panicked |= t.join().is_err();
        }
        panicked
    }
}

impl Drop for EngineThreads {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A running core, as its owner holds it: it ends when told to in its inbox.
pub(super) struct CoreThread {
    pub(super) thread: JoinHandle<io::Result<()>>,
    pub(super) waker: Arc<mio::Waker>,
    pub(super) inbox: Sender<CoreMsg>,
}

/// Whatever of a server has started, in the order it started. Dropping it
/// stops it ([`Running::stop`]), so neither a failed start nor a dropped
/// handle leaves a thread running or a port held.
#[derive(Default)]
pub(super) struct Running {
    pub(super) stats: Option<StatsThread>,
    pub(super) ledger: Option<LedgerThread>,
    pub(super) engine: Option<EngineThreads>,
    pub(super) generator: Option<GeneratorThread>,
    pub(super) control: Option<ControlServer>,
    pub(super) cores: Vec<CoreThread>,
}

impl Running {
    /// Stops what runs, in the reverse order of its start: the cores (which
    /// flush pending answers first), the control, the generator, the engine
    /// threads (cluster mode), the ledger
    /// writer (it drains once every producer is gone), then the stats thread,
    /// whose totals are returned. Each part is joined even when one before
    /// it panicked; `Err` names the first that did. A second call finds
    /// nothing left to stop.
    pub(super) fn stop(&mut self) -> Result<Option<Summary>, &'static str> {
        let mut panicked = None;
        for c in &self.cores {
            let _ = c.inbox.send(CoreMsg::Shutdown);
            let _ = c.waker.wake();
        }
        for (i, c) in self.cores.drain(..).enumerate() {
            // A failed core already said so when it stopped; the others'
            // totals still stand.
            if let Ok(Err(e)) = c.thread.join() {
                eprintln!("hongbao: core {i} had stopped early: {e}");
            }
        }
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some(GeneratorThread { thread, commands }) = self.generator.take() {
            drop(commands);
            if thread.join().is_err() {
                panicked.get_or_insert("generator thread");
            }
        }
        // After the generator (which hands it packets) and before the
        // ledger writer (its mirrors are records).
        if let Some(mut e) = self.engine.take() {
            if e.stop() {
                panicked.get_or_insert("engine thread");
            }
        }
        if let Some(LedgerThread { thread, ledger }) = self.ledger.take() {
            drop(ledger);
            if thread.is_some_and(|t| t.join().is_err()) {
                panicked.get_or_insert("ledger writer");
            }
        }
        let mut summary = None;
        if let Some(StatsThread { thread, reports }) = self.stats.take() {
            drop(reports);
            match thread.join() {
                Ok(s) => summary = Some(s),
                Err(_) => {
                    panicked.get_or_insert("stats thread");
                }
            }
        }
        match panicked {
            Some(what) => Err(what),
            None => Ok(summary),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A panicked thread has already said so on stderr; a drop must not
        // panic in turn.
        let _ = self.stop();
    }
}
