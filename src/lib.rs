//! hongbao: a thread-per-core red-packet server for a million TCP connections,
//! and the toolkit that proves it under load. See `docs/ARCHITECTURE.md`.

pub mod ids;
pub mod wire;
pub mod flood;
