//! The server's `--hlog FILE`: its service time as an HdrHistogram interval
//! log, one interval per closed second, in the flooder's format.
//!
//! Owns: the log file from start-up to shutdown, the interval offsets (Unix
//! second of each closed second minus the log's start second) and the
//! `.hgrm` of the whole run written beside the log at the end. Must not:
//! sit on the request path or stop the stats thread: it runs on the stats
//! thread once a second, with the histograms the cores already merged, and
//! a write error ends the log (said once on stderr), never the server.
//!
//! Units are the cores' own: nanoseconds recorded, shown in milliseconds by
//! the Java tools (`crate::hlog`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::hlog::LatencyHistogram;
use crate::hlog::{IntervalLog, MAX_VALUE_DIVISOR, write_hgrm};

/// An open `--hlog`.
pub struct LatencyLog {
    path: PathBuf,
    /// None once a write failed.
    log: Option<IntervalLog<BufWriter<File>>>,
    /// The Unix second interval offsets count from.
    start_second: u64,
}

impl LatencyLog {
    /// Creates the log at `path` (truncating it); intervals count from the
    /// current whole Unix second.
    pub fn create(path: &Path) -> std::io::Result<LatencyLog> {
        let start_second = crate::clock::unix_secs();
        let log = IntervalLog::create(path, UNIX_EPOCH + Duration::from_secs(start_second))
            .map_err(std::io::Error::other)?;
        Ok(LatencyLog {
            path: path.to_owned(),
            log: Some(log),
            start_second,
        })
    }

    /// Appends each closed second's histogram as one interval. Seconds
    /// before the log's start (a core's late report) are left out: an
    /// interval log's offsets cannot go below zero.
    pub fn append(&mut self, seconds: Vec<(u64, LatencyHistogram)>) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        for (second, h) in seconds {
            let Some(offset) = second.checked_sub(self.start_second) else {
                continue;
            };
            if let Err(e) = log.append(Duration::from_secs(offset), Duration::from_secs(1), &h) {
                eprintln!(
                    "hongbao: writing --hlog {}: {e}; no more intervals are logged",
                    self.path.display()
                );
                self.log = None;
                return;
            }
        }
    }

    /// Closes the log and writes the run's distribution to `FILE.hgrm`.
    pub fn finish(self, total: &LatencyHistogram) {
        let Some(log) = self.log else {
            return;
        };
        if let Err(e) = log.finish() {
            eprintln!("hongbao: writing --hlog {}: {e}", self.path.display());
        }
        let hgrm = self.path.with_extension("hgrm");
        let written = File::create(&hgrm).and_then(|f| {
            let mut out = BufWriter::new(f);
            write_hgrm(&mut out, total, MAX_VALUE_DIVISOR).map_err(std::io::Error::other)?;
            out.flush()
        });
        if let Err(e) = written {
            eprintln!("hongbao: writing {}: {e}", hgrm.display());
        }
    }
}
