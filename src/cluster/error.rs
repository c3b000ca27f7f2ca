//! What can go wrong talking to the engine, and whether a retry may help.
//!
//! Owns: `EngineError` and the one mapping from the client's errors to it.
//! Must not: retry, sleep or log.

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// An engine call that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The cluster cannot answer now: no connection, a timeout, the cluster
    /// down or failing over (CLUSTERDOWN, TRYAGAIN, MOVED/ASK after a
    /// topology change, a read-only former primary). Retryable: every call
    /// is idempotent, and the next call reconnects and rereads the
    /// topology.
    #[error("Redis Cluster unavailable: {0}")]
    Unavailable(String),
    /// A function or command refused (a broken rule, an unknown function):
    /// a retry gets the same answer.
    #[error("engine function failed: {0}")]
    Script(String),
    /// A reply of a shape this binary does not expect (or a malformed note).
    #[error("unexpected reply from the engine: {0}")]
    BadReply(String),
    /// The cluster runs a newer function library than this binary knows.
    #[error(
        "the cluster's hongbao function library is version {loaded}, newer than this binary's {ours}: upgrade this binary"
    )]
    VersionNewer {
        /// The version loaded on a primary.
        loaded: u32,
        /// This binary's [`super::library::LIBRARY_VERSION`].
        ours: u32,
    },
    /// A request this engine refuses before sending it (the caller's bug or
    /// bad input: shares that do not add up, an empty batch size, a bad
    /// `--cluster` list).
    #[error("invalid engine request: {0}")]
    Invalid(String),
}

impl EngineError {
    /// True when the same call may succeed later (only
    /// [`EngineError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Unavailable(_))
    }

    /// The client's error, as what `step` (e.g. "hb_claim") ran into.
    pub(super) fn of(step: &str, e: &RedisError) -> EngineError {
        let text = format!("{step}: {e}");
        match e.kind() {
            ErrorKind::Server(kind) => match kind {
                ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly => EngineError::Unavailable(text),
                _ if text.contains("Function not found") => EngineError::Script(format!(
                    "{text} (the hongbao function library is not loaded on this primary: Engine::load_functions loads it, as the server does at start)"
                )),
                _ => EngineError::Script(text),
            },
            // A server error whose code the client does not know: ours
            // start with ERR, so this is another program's or Redis's own.
            ErrorKind::Extension => EngineError::Script(text),
            ErrorKind::UnexpectedReturnType => EngineError::BadReply(text),
            ErrorKind::InvalidClientConfig => EngineError::Invalid(text),
            // I/O, timeouts, no connection for a slot, a torn reply: the
            // connection is suspect, the call may be retried.
            _ => EngineError::Unavailable(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(EngineError::Unavailable("x".into()).is_retryable());
        assert!(!EngineError::Script("x".into()).is_retryable());
        assert!(!EngineError::BadReply("x".into()).is_retryable());
        assert!(!EngineError::Invalid("x".into()).is_retryable());
        assert!(!EngineError::VersionNewer { loaded: 2, ours: 1 }.is_retryable());
    }

    #[test]
    fn io_errors_are_unavailable() {
        let e = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(EngineError::of("hb_claim", &e).is_retryable());
    }
}
