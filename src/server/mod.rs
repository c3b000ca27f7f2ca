//! `hongbao server`: assembles the cores, the generator, stats and control.
//!
//! Owns: the server's public face, gathered from the files that hold it:
//! `startup` (`start` in named steps, `StartError`), `handle` (the
//! `ServerHandle`), `running` (what has started, stopped in the reverse
//! order), `stats_thread` (each closed second printed and published, the
//! run's `Summary`). Must not: sit on the request path. Cores share only the
//! rings (through the generator) and the stats channel.

pub mod answer;
mod config;
mod control;
pub mod engine;
mod handle;
mod latency_log;
pub(crate) mod limits;
pub mod published;
mod rate;
mod running;
mod startup;
mod stats_thread;
pub mod worker;

pub(crate) use config::CONN_QPS_MAX_DEFAULT;
pub use config::{AuthMode, ServerConfig};
pub use handle::{Replayed, SeedSource, ServerHandle};
pub use startup::{StartError, start};
#[doc(hidden)]
pub use startup::{ThreadStep, start_failing_at};
pub use stats_thread::{Summary, second_line};
