//! `hongbao monitor`: per-second series from every server and flooder,
//! summed by kind and aligned by second; charts, a static report, a live
//! dashboard.
//!
//! Owns: the monitor's pieces, each in its own file: what sources serve
//! (`source`), fetching and aligning their seconds (`collect`), the series
//! file (`series`), the host's network counters (`net`), charts (`chart`),
//! the static HTML report (`report`), the live dashboard (`dashboard`) and
//! the command itself (`run`). Must not: guess. A second a source did not
//! report is missing, shown as missing, never as zero.

pub mod chart;
pub mod collect;
pub mod dashboard;
pub mod net;
pub mod report;
pub mod run;
pub mod series;
pub mod source;

pub use run::{MonitorArgs, run, run_with};

/// Registers a source's HTTP control (`source`) with the monitor whose
/// dashboard listens at `monitor`: `GET /register?source=ADDR`.
pub fn register(monitor: &str, source: std::net::SocketAddr) -> Result<(), String> {
    if source.ip().is_unspecified() {
        return Err(format!(
            "{source} is not an address the monitor can reach; give --http a specific address"
        ));
    }
    let target = format!("/register?source={source}");
    match collect::get(monitor, &target, std::time::Duration::from_secs(2))? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("status {status}: {body}")),
    }
}
