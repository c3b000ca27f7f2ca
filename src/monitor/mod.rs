//! `hongbao monitor`: per-second series from every server and flooder,
//! summed by kind and aligned by second; charts, a static report, a live
//! dashboard.
//!
//! Owns: the monitor's pieces, each in its own file: fetching and aligning
//! the sources' seconds (`collect`; what they serve is `crate::seconds`, the
//! contract the sources and the monitor share), the series
//! file (`series`), the host's network counters (`net`), charts (`chart`),
//! the static HTML report (`report`), the live dashboard (`dashboard`) and
//! the command itself (`run`). Must not: guess. A second a source did not
//! report is missing, shown as missing, never as zero.

pub mod chart;
pub mod collect;
mod dashboard;
mod net;
pub mod report;
pub mod run;
pub mod series;

pub use run::{MonitorArgs, run, run_with};
