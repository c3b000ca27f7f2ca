//! What a server publishes: its closed seconds and their totals, written by
//! the stats thread once a second and read by the HTTP control, the handle
//! and the monitor (`GET /seconds`, `GET /metrics`).
//!
//! Owns: [`Published`], the server's two monitor routes ([`route`]) and its
//! `/metrics` document ([`metrics`]). Must not: sit on the request path;
//! each second's histogram was encoded by the stats thread when it closed.

use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::http::{Request, Response};
use crate::prom::{self, Exposition, LatencySummary};
use crate::seconds::{self, Kept, Seconds};
use crate::stats::SecondStats;

/// What the aggregator publishes once a second for the HTTP control and the
/// handle. Read under a mutex by readers that are not on the request path.
#[derive(Debug, Default, Serialize)]
pub struct Published {
    /// The last closed seconds, oldest first.
    pub recent: Kept<SecondStats>,
    /// Every closed second summed; `second` is the last closed one.
    pub total: SecondStats,
    /// Service time over every closed second, for `/metrics`.
    pub service: LatencySummary,
}

impl Published {
    /// Locks the published stats. A panic while the lock was held cannot
    /// leave them half-written in a way that matters (each field is replaced
    /// whole), so a poisoned lock is used as it is rather than spreading the
    /// panic to the HTTP control or the owner.
    pub fn lock(published: &Mutex<Published>) -> MutexGuard<'_, Published> {
        published.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server's `/metrics` (Prometheus text) and, for any other path it is
/// given, `/seconds`: the closed seconds its stats thread published.
pub fn route(req: &Request, published: &Mutex<Published>) -> Response {
    if req.path() == "/metrics" {
        let p = Published::lock(published);
        return Response::text(prom::CONTENT_TYPE, metrics(&p.total, &p.service));
    }
    let since = match seconds::since(req) {
        Ok(since) => since,
        Err(bad) => return bad,
    };
    let seconds = Published::lock(published).recent.after(since);
    Response::ok(seconds::to_json(&Seconds::Server { seconds }))
}

/// The server's `/metrics`: cumulative counters of every core and of the
/// generator, the gauges of the last closed second, and the service-time
/// summary over the run. `total` is the server's published total (its
/// `second` the last closed second).
pub fn metrics(total: &SecondStats, service: &LatencySummary) -> String {
    let mut e = Exposition::new();
    e.counters_of(
        "hongbao_server_",
        "events counted by the worker cores since start",
        &total.server,
    );
    e.counters_of(
        "hongbao_server_generator_",
        "events counted by the envelope generator since start",
        &total.generator,
    );
    e.gauge(
        "hongbao_server_conns_open",
        "connections open at the close of the last second",
        total.conns_open as f64,
    );
    e.gauge(
        "hongbao_server_envelopes_in_rings",
        "envelopes waiting in the cores' rings at the close of the last second",
        total.envelopes_in_rings as f64,
    );
    e.gauge(
        "hongbao_server_envelopes_ahead",
        "envelopes recorded in the ledger but still in the generator, made ahead of their due time, at the close of the last second",
        total.envelopes_ahead as f64,
    );
    e.gauge(
        "hongbao_server_last_second",
        "the last closed Unix second these figures include (0 before the first)",
        total.second as f64,
    );
    e.summary(
        "hongbao_server_service_seconds",
        "service time, a frame read to its answer handed to write, over the run",
        service,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_since_t_are_the_later_ones() {
        let published = Mutex::new(Published::default());
        for t in 5..9 {
            Published::lock(&published).recent.push(SecondStats {
                second: t,
                ..SecondStats::default()
            });
        }
        let r = route(&Request::new("/seconds?since=6"), &published);
        let seconds: Vec<u64> = r.body["seconds"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|b| b["second"].as_u64().expect("a second"))
            .collect();
        assert_eq!(seconds, [7, 8]);
        assert_eq!(r.body["kind"], "server");
    }
}
