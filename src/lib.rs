//! hongbao: a thread-per-core red-packet server for a million TCP connections,
//! and the toolkit that proves it under load. See `docs/ARCHITECTURE.md`.

pub mod audit;
pub mod clock;
pub mod cluster;
pub mod conn;
pub mod demo;
pub mod durable;
pub mod environment;
pub mod flood;
pub mod generator;
pub mod hlog;
mod host;
pub mod http;
pub mod ids;
pub mod ledger;
pub mod mesh;
pub mod monitor;
pub mod packets;
pub mod prom;
pub mod ring;
pub mod seconds;
pub mod server;
pub mod session;
pub mod stats;
pub mod token;
pub mod wire;
