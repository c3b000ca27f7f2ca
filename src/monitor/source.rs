//! What a server or a flooder serves to the monitor: its last minutes of
//! complete per-second buckets (`GET /seconds`) and Prometheus text
//! (`GET /metrics`).
//!
//! Owns: the wire schema of a source's seconds ([`Seconds`], [`ClientSecond`]),
//! the flooder's bucket store ([`FloodSeconds`], filled by its coordinator
//! once a second), and the two route helpers the control servers call.
//! Must not: sit on a request path. The server's buckets are the ones its
//! stats thread already publishes; the flooder's are written by its
//! coordinator once a second, after every thread has reported the second.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::flood::stats::{Counters, Percentiles};
use crate::http::{Request, Response};
use crate::metrics::{self, FloodMetrics, LatencySummary};
use crate::server::Published;
use crate::stats::{LatencyHistogram, SecondStats, latency_histogram};

/// Complete seconds a flooder keeps for the monitor: five minutes, as the
/// server does.
pub const FLOOD_SECONDS_KEPT: usize = 300;

/// The answer to `GET /seconds`: which kind of process answered, and its
/// complete seconds, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Seconds {
    /// A `hongbao server`: its closed seconds, every core and the generator
    /// summed.
    Server {
        /// Oldest first.
        seconds: Vec<SecondStats>,
    },
    /// A `hongbao flood`: its complete seconds, every thread merged.
    Flooder {
        /// Oldest first.
        seconds: Vec<ClientSecond>,
    },
}

/// One complete second of one flooder process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientSecond {
    /// Unix second (`start_unix + run_second`).
    pub second: u64,
    /// Seconds since the flooder's shaking started.
    pub run_second: u64,
    /// Global shakes per second the plan asked (every flooder process of
    /// the experiment shares it).
    pub qps: u64,
    /// This process's users logged in during the second.
    pub connections: u64,
    /// What its threads counted in the second.
    pub counters: Counters,
    /// Latency from the intended send time, of answers in the second.
    pub latency_us: Percentiles,
    /// The flooder's own lateness in the second.
    pub send_lag_us: Percentiles,
    /// The busiest thread's CPU over the second, percent.
    pub thread_cpu_max_pct: f64,
}

/// The server's `/metrics` (Prometheus text) and, for any other path it is
/// given, `/seconds`: the closed seconds its stats thread published.
pub fn server_route(req: &Request, published: &Mutex<Published>) -> Response {
    let p = Published::lock(published);
    match req.path() {
        "/metrics" => Response::text(metrics::CONTENT_TYPE, metrics::server(&p.total, &p.service)),
        _ => Response::ok(seconds_json(&Seconds::Server {
            seconds: p.recent.iter().cloned().collect(),
        })),
    }
}

fn seconds_json(s: &Seconds) -> serde_json::Value {
    // Plain structs of numbers always serialise.
    serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
}

/// A flooder's complete seconds and its metrics, shared between its
/// coordinator (one write a second) and its HTTP thread.
#[derive(Debug, Default)]
pub struct FloodSeconds {
    inner: Mutex<FloodInner>,
}

#[derive(Debug)]
struct FloodInner {
    seconds: VecDeque<ClientSecond>,
    metrics: FloodMetrics,
    latency: LatencyHistogram,
    send_lag: LatencyHistogram,
}

impl Default for FloodInner {
    fn default() -> Self {
        FloodInner {
            seconds: VecDeque::with_capacity(FLOOD_SECONDS_KEPT),
            metrics: FloodMetrics {
                state: "connecting",
                ..FloodMetrics::default()
            },
            latency: latency_histogram(),
            send_lag: latency_histogram(),
        }
    }
}

impl FloodSeconds {
    fn lock(&self) -> std::sync::MutexGuard<'_, FloodInner> {
        // Each field is replaced whole under the lock, so a panic elsewhere
        // cannot leave it half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps one complete second; its histograms (nanoseconds) go into the
    /// run's latency summaries.
    pub fn push(
        &self,
        second: ClientSecond,
        latency: &hdrhistogram::Histogram<u64>,
        send_lag: &hdrhistogram::Histogram<u64>,
    ) {
        let mut g = self.lock();
        // Same bounds or wider; a value past ours saturates rather than
        // being lost, and adding cannot otherwise fail.
        let _ = g.latency.add(latency);
        let _ = g.send_lag.add(send_lag);
        g.metrics.state = "shaking";
        g.metrics.totals.add(&second.counters);
        g.metrics.last_second = second.second;
        g.metrics.qps = second.qps;
        g.metrics.connections = second.connections;
        g.metrics.thread_cpu_max_pct = second.thread_cpu_max_pct;
        g.metrics.latency = LatencySummary::of_ns(&g.latency);
        g.metrics.send_lag = LatencySummary::of_ns(&g.send_lag);
        if g.seconds.len() == FLOOD_SECONDS_KEPT {
            g.seconds.pop_front();
        }
        g.seconds.push_back(second);
    }

    /// Marks the run finished (for `/metrics`' state).
    pub fn done(&self) {
        self.lock().metrics.state = "done";
    }

    /// The kept seconds, oldest first.
    pub fn seconds(&self) -> Vec<ClientSecond> {
        self.lock().seconds.iter().cloned().collect()
    }

    /// Answers `/seconds` and `/metrics`; None for any other path.
    pub fn route(&self, req: &Request) -> Option<Response> {
        match req.path() {
            "/seconds" => Some(Response::ok(seconds_json(&Seconds::Flooder {
                seconds: self.seconds(),
            }))),
            "/metrics" => Some(Response::text(
                metrics::CONTENT_TYPE,
                metrics::flooder(&self.lock().metrics),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooder_keeps_its_last_seconds_and_their_totals() {
        let s = FloodSeconds::default();
        let mut h = latency_histogram();
        h.record(2_000).expect("in bounds");
        for t in 0..(FLOOD_SECONDS_KEPT as u64 + 5) {
            s.push(
                ClientSecond {
                    second: 1000 + t,
                    run_second: t,
                    counters: Counters {
                        sent: 3,
                        ..Counters::default()
                    },
                    ..ClientSecond::default()
                },
                &h,
                &h,
            );
        }
        let kept = s.seconds();
        assert_eq!(kept.len(), FLOOD_SECONDS_KEPT);
        assert_eq!(kept[0].second, 1005);
        let m = s.lock().metrics.clone();
        assert_eq!(m.totals.sent, 3 * (FLOOD_SECONDS_KEPT as u64 + 5));
        assert_eq!(m.latency.count, FLOOD_SECONDS_KEPT as u64 + 5);
        let r = s.route(&Request::new("/seconds")).expect("served");
        assert_eq!(r.body["kind"], "flooder");
        assert_eq!(r.body["seconds"].as_array().map(Vec::len), Some(300));
        assert!(s.route(&Request::new("/other")).is_none());
    }
}
