//! What a flooder publishes: its last complete seconds for the monitor
//! (`GET /seconds`) and its Prometheus document (`GET /metrics`).
//!
//! Owns: the flooder's bucket store ([`FloodSeconds`], filled by its
//! coordinator once a second, after every thread has reported the second;
//! each second's latency histogram is encoded then), its `/metrics`
//! document ([`FloodMetrics`], [`flooder`]), and the two routes. Must not:
//! sit on a request path.

use std::sync::{Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::hlog::{LatencyHistogram, encode_histogram, latency_histogram};
use crate::http::{Request, Response};
use crate::prom::{self, Buckets, Exposition, Family};
use crate::seconds::{self, ClientSecond, Kept, Seconds};
use crate::stats::client::Counters;

/// A flooder's complete seconds and its metrics, shared between its
/// coordinator (one write a second) and its HTTP thread.
#[derive(Debug, Default)]
pub struct FloodSeconds {
    inner: Mutex<FloodInner>,
}

#[derive(Debug)]
struct FloodInner {
    seconds: Kept<ClientSecond>,
    metrics: FloodMetrics,
    latency: LatencyHistogram,
    send_lag: LatencyHistogram,
}

impl Default for FloodInner {
    fn default() -> Self {
        FloodInner {
            seconds: Kept::default(),
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
    /// run's latency summaries, and its latency histogram, encoded, into
    /// the second (unless the caller put one there).
    pub fn push(
        &self,
        mut second: ClientSecond,
        latency: &Histogram<u64>,
        send_lag: &Histogram<u64>,
    ) {
        if second.latency_ns_histogram.is_none() {
            // Encoded before the lock: the HTTP thread never waits on it.
            second.latency_ns_histogram = encode_histogram(latency);
        }
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
        g.metrics.latency = crate::stats::buckets(&g.latency);
        g.metrics.send_lag = crate::stats::buckets(&g.send_lag);
        g.seconds.push(second);
    }

    /// Marks the run finished (for `/metrics`' state).
    pub fn done(&self) {
        self.lock().metrics.state = "done";
    }

    /// The kept seconds, oldest first.
    pub fn seconds(&self) -> Vec<ClientSecond> {
        self.seconds_after(None)
    }

    /// The kept seconds after Unix second `since` (all when None), oldest
    /// first.
    pub fn seconds_after(&self, since: Option<u64>) -> Vec<ClientSecond> {
        self.lock().seconds.after(since)
    }

    /// Answers `/seconds` and `/metrics`; None for any other path.
    pub fn route(&self, req: &Request) -> Option<Response> {
        match req.path() {
            "/seconds" => Some(match seconds::since(req) {
                Ok(since) => Response::ok(seconds::to_json(&Seconds::Flooder {
                    seconds: self.seconds_after(since),
                })),
                Err(bad) => bad,
            }),
            "/metrics" => {
                // Copied out: the coordinator never waits on the document.
                let metrics = self.lock().metrics.clone();
                Some(Response::text(prom::CONTENT_TYPE, flooder(&metrics)))
            }
            _ => None,
        }
    }
}

/// What the flooder publishes for `/metrics`: its cumulative counters over
/// the shaking phase, the last complete second's gauges and the latency
/// histograms over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FloodMetrics {
    /// `connecting`, `shaking` or `done`.
    pub state: &'static str,
    /// Every complete second's counters summed.
    pub totals: Counters,
    /// The last complete Unix second (0 before the first).
    pub last_second: u64,
    /// Global shakes per second the plan asked in that second.
    pub qps: u64,
    /// This process's users logged in at that second.
    pub connections: u64,
    /// The busiest thread's CPU over that second, percent.
    pub thread_cpu_max_pct: f64,
    /// Latency from intended send time (corrected), every complete second.
    pub latency: Buckets,
    /// The flooder's own lateness, every complete second.
    pub send_lag: Buckets,
}

/// The flooder's counters as Prometheus families. Every field of
/// [`Counters`] moves some sample here (a unit test holds it to that).
const FAMILIES: &[Family<Counters>] = &[
    Family {
        name: "hongbao_flood_shakes_sent_total",
        help: "Shake requests handed to the socket.",
        label: "",
        samples: &[("", |c| c.sent)],
    },
    Family {
        name: "hongbao_flood_answers_total",
        help: "Answers matched to a request: shake results of any code, and pushes sent in place of a shake result.",
        label: "",
        samples: &[("", |c| c.answered)],
    },
    Family {
        name: "hongbao_flood_shakes_total",
        help: "Shake results received, by result: got (14, an envelope), none (15, no envelope now), gone (16, all envelopes gone), overload (17, server overloaded), other (a code v1 does not define).",
        label: "result",
        samples: &[
            ("got", |c| c.got),
            ("none", |c| c.none),
            ("gone", |c| c.gone),
            ("overload", |c| c.overload),
            ("other", |c| c.other_results),
        ],
    },
    Family {
        name: "hongbao_flood_got_cents_total",
        help: "Cents in the envelopes got.",
        label: "",
        samples: &[("", |c| c.got_cents)],
    },
    Family {
        name: "hongbao_flood_pushes_total",
        help: "Packet pushes (cmd 4) received: a packet names this user.",
        label: "",
        samples: &[("", |c| c.pushes)],
    },
    Family {
        name: "hongbao_flood_claims_sent_total",
        help: "Claims (cmd 5) sent, by kind: first (one per packet a user was pushed), resent (again after a reconnect, their connection closed before the answer).",
        label: "kind",
        samples: &[("first", |c| c.claims), ("resent", |c| c.claims_resent)],
    },
    Family {
        name: "hongbao_flood_claim_answers_total",
        help: "Claim answers (cmd 6) matched to a claim.",
        label: "",
        samples: &[("", |c| c.claim_answers)],
    },
    Family {
        name: "hongbao_flood_claimed_cents_total",
        help: "Cents in the claim answers.",
        label: "",
        samples: &[("", |c| c.claim_cents)],
    },
    Family {
        name: "hongbao_flood_bad_frames_total",
        help: "Frames received that answer nothing, by reason: unexpected (well-formed, but no request outstanding or a cmd a server should not send), undecodable (not a v1 frame; the connection is closed).",
        label: "reason",
        samples: &[
            ("unexpected", |c| c.unexpected_frames),
            ("undecodable", |c| c.bad_frames),
        ],
    },
    Family {
        name: "hongbao_flood_connection_errors_total",
        help: "Connection failures, by kind: lost (closed by the peer, reset, or failed on I/O), connect (a connect or login attempt failed; retried after a backoff).",
        label: "kind",
        samples: &[
            ("lost", |c| c.conn_errors),
            ("connect", |c| c.connect_failures),
        ],
    },
    Family {
        name: "hongbao_flood_failovers_total",
        help: "Users moved to the next --server by a lost connection or a failed attempt.",
        label: "",
        samples: &[("", |c| c.failovers)],
    },
    Family {
        name: "hongbao_flood_unsent_total",
        help: "Requests that fell due but were not sent: their user was not logged in, or the thread already awaited its cap of answers.",
        label: "",
        samples: &[("", |c| c.unsent)],
    },
];

/// The flooder's `/metrics`.
pub fn flooder(m: &FloodMetrics) -> String {
    let mut e = Exposition::new();
    e.families(FAMILIES, &m.totals);
    let states = ["connecting", "shaking", "done"];
    let samples: Vec<(&str, f64)> = states
        .iter()
        .map(|s| (*s, f64::from(u8::from(*s == m.state))))
        .collect();
    e.gauge_labelled(
        "hongbao_flood_state",
        "1 for the phase the flooder is in.",
        "state",
        &samples,
    );
    e.gauge(
        "hongbao_flood_target_shakes_per_second",
        "Global shakes per second the plan asked in the last complete second.",
        m.qps as f64,
    );
    e.gauge(
        "hongbao_flood_users_logged_in",
        "This process's users logged in during the last complete second.",
        m.connections as f64,
    );
    e.gauge(
        "hongbao_flood_thread_cpu_max_ratio",
        "The busiest flooder thread's CPU over the last complete second, 1 = a whole core.",
        m.thread_cpu_max_pct / 100.0,
    );
    e.gauge(
        "hongbao_flood_last_complete_second_timestamp_seconds",
        "The last complete Unix second these figures include (0 before the first).",
        m.last_second as f64,
    );
    e.histogram(
        "hongbao_flood_latency_seconds",
        "Shake latency from the intended send time to the answer's arrival (corrected for coordinated omission), over every complete second.",
        &m.latency,
    );
    e.histogram(
        "hongbao_flood_send_lag_seconds",
        "How late the flooder handed requests to the kernel against their intended time, over every complete second.",
        &m.send_lag,
    );
    e.process();
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seconds::SECONDS_KEPT;

    #[test]
    fn every_counter_field_moves_a_sample() {
        // Less the process_* metrics, which move by themselves.
        let doc = |m: &FloodMetrics| -> Vec<String> {
            flooder(m)
                .lines()
                .filter(|l| !l.contains("process_"))
                .map(str::to_owned)
                .collect()
        };
        let quiet = doc(&FloodMetrics::default());
        let v = serde_json::to_value(Counters::default()).expect("a struct");
        for field in v.as_object().expect("fields").keys() {
            let mut c = v.clone();
            c[field] = 7.into();
            let totals: Counters = serde_json::from_value(c).expect("the same struct");
            let m = FloodMetrics {
                totals,
                ..FloodMetrics::default()
            };
            assert_ne!(doc(&m), quiet, "{field}");
        }
    }

    #[test]
    fn seconds_since_t_are_the_later_ones() {
        let s = FloodSeconds::default();
        let h = latency_histogram();
        for t in 100..110 {
            s.push(
                ClientSecond {
                    second: t,
                    ..ClientSecond::default()
                },
                &h,
                &h,
            );
        }
        let served = |target: &str| -> Vec<u64> {
            let r = s.route(&Request::new(target)).expect("served");
            r.body["seconds"]
                .as_array()
                .expect("a list")
                .iter()
                .map(|b| b["second"].as_u64().expect("a second"))
                .collect()
        };
        assert_eq!(served("/seconds").len(), 10);
        assert_eq!(served("/seconds?since=107"), [108, 109]);
        assert_eq!(served("/seconds?since=200"), Vec::<u64>::new());
        let bad = s
            .route(&Request::new("/seconds?since=x"))
            .expect("answered");
        assert_eq!(bad.status, 400);
    }

    #[test]
    fn a_flooder_keeps_its_last_seconds_and_their_totals() {
        let s = FloodSeconds::default();
        let mut h = latency_histogram();
        h.record(2_000).expect("in bounds");
        for t in 0..(SECONDS_KEPT as u64 + 5) {
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
        assert_eq!(kept.len(), SECONDS_KEPT);
        assert_eq!(kept[0].second, 1005);
        let m = s.lock().metrics.clone();
        assert_eq!(m.totals.sent, 3 * (SECONDS_KEPT as u64 + 5));
        assert_eq!(m.latency.count, SECONDS_KEPT as u64 + 5);
        assert_eq!(m.latency.cumulative[0], 0);
        assert_eq!(m.latency.cumulative[1], SECONDS_KEPT as u64 + 5);
        let r = s.route(&Request::new("/seconds")).expect("served");
        assert_eq!(r.body["kind"], "flooder");
        assert_eq!(r.body["seconds"].as_array().map(Vec::len), Some(300));
        assert!(s.route(&Request::new("/other")).is_none());
    }
}
