//! What a server or a flooder serves to the monitor: its last minutes of
//! complete per-second buckets (`GET /seconds`, `?since=T` for the ones
//! after Unix second T) and Prometheus text (`GET /metrics`).
//!
//! Owns: the wire schema of a source's seconds ([`Seconds`], [`ClientSecond`]),
//! the form a second's latency histogram travels in ([`encode_histogram`],
//! [`decode_histogram`]: HdrHistogram V2 + deflate, base64, as an interval
//! log's histogram column), the flooder's bucket store ([`FloodSeconds`],
//! filled by its coordinator once a second), and the two route helpers the
//! control servers call. Must not: sit on a request path. The server's
//! buckets are the ones its stats thread already publishes (their histogram
//! encoded there, once a second); the flooder's are written by its
//! coordinator once a second, after every thread has reported the second,
//! and their histogram is encoded then.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
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
    /// The second's latency histogram (nanoseconds from the intended send
    /// time, the one `latency_us` summarises), [`encode_histogram`]d, so
    /// that a monitor adds several flooders' seconds up exactly. None from
    /// a flooder older than this field, and in a monitor's sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns_histogram: Option<String>,
}

/// The longest encoded histogram [`decode_histogram`] takes: a second of
/// ours is a few KiB (V2 writes only the counts up to the largest value and
/// deflate shrinks the runs); anything near this is not one of ours.
pub const HISTOGRAM_TEXT_MAX: usize = 1 << 20;

/// A latency histogram as a source serves it: HdrHistogram's V2 encoding,
/// deflated, in standard base64 with padding: the histogram column of an
/// interval log, so Java's `Histogram.decodeFromCompressedByteBuffer` reads
/// it too. None only if the crate cannot encode it (counts past what V2
/// holds). Once a second per source, never per request: the encoding
/// allocates and deflates.
pub fn encode_histogram(h: &Histogram<u64>) -> Option<String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(&bytes))
}

/// Reads what [`encode_histogram`] wrote; `Err` says why not.
pub fn decode_histogram(
    deserializer: &mut Deserializer,
    text: &str,
) -> Result<Histogram<u64>, String> {
    if text.len() > HISTOGRAM_TEXT_MAX {
        return Err(format!(
            "an encoded histogram of {} bytes (at most {HISTOGRAM_TEXT_MAX})",
            text.len()
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("a histogram that is not base64: {e}"))?;
    deserializer
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("a histogram that does not decode: {e:?}"))
}

/// The `since` of a `/seconds?since=T` request: only seconds after Unix
/// second T are served (a monitor asks for those it has not seen, rather
/// than 300 each second). None without it; `Err` when it is not a number.
fn since(req: &Request) -> Result<Option<u64>, Response> {
    match req.param("since") {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Response::error(
                400,
                format!("since must be a Unix second (whole number), not {v:?}"),
            )
        }),
    }
}

/// The server's `/metrics` (Prometheus text) and, for any other path it is
/// given, `/seconds`: the closed seconds its stats thread published.
pub fn server_route(req: &Request, published: &Mutex<Published>) -> Response {
    if req.path() == "/metrics" {
        let p = Published::lock(published);
        return Response::text(metrics::CONTENT_TYPE, metrics::server(&p.total, &p.service));
    }
    let since = match since(req) {
        Ok(since) => since,
        Err(bad) => return bad,
    };
    let seconds = {
        let p = Published::lock(published);
        p.recent
            .iter()
            .filter(|s| since.is_none_or(|t| s.second > t))
            .cloned()
            .collect()
    };
    Response::ok(seconds_json(&Seconds::Server { seconds }))
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
        self.seconds_after(None)
    }

    /// The kept seconds after Unix second `since` (all when None), oldest
    /// first.
    pub fn seconds_after(&self, since: Option<u64>) -> Vec<ClientSecond> {
        self.lock()
            .seconds
            .iter()
            .filter(|s| since.is_none_or(|t| s.second > t))
            .cloned()
            .collect()
    }

    /// Answers `/seconds` and `/metrics`; None for any other path.
    pub fn route(&self, req: &Request) -> Option<Response> {
        match req.path() {
            "/seconds" => Some(match since(req) {
                Ok(since) => Response::ok(seconds_json(&Seconds::Flooder {
                    seconds: self.seconds_after(since),
                })),
                Err(bad) => bad,
            }),
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
    use hdrhistogram::serialization::interval_log::{
        IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
    };

    /// What a source serves is exactly an interval log's histogram column
    /// (so any HdrHistogram reader takes it), and decodes to the same
    /// counts.
    #[test]
    fn a_histogram_encodes_as_an_interval_log_column_and_decodes_back() {
        let mut h = latency_histogram();
        for v in [1_u64, 900, 45_000, 45_001, 2_000_000, 59_000_000_000] {
            h.record_n(v, v % 7 + 1).expect("in bounds");
        }
        let text = encode_histogram(&h).expect("encodes");
        let mut log = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .begin_log_with(&mut log, &mut serializer)
            .expect("header")
            .write_histogram(
                &h,
                std::time::Duration::ZERO,
                std::time::Duration::from_secs(1),
                None,
            )
            .expect("interval");
        let column = IntervalLogIterator::new(&log)
            .find_map(|e| match e.expect("parses") {
                LogEntry::Interval(i) => Some(i.encoded_histogram().to_owned()),
                _ => None,
            })
            .expect("one interval");
        assert_eq!(text, column);
        let back = decode_histogram(&mut Deserializer::new(), &text).expect("decodes");
        assert_eq!(back, h);
        assert!(decode_histogram(&mut Deserializer::new(), "not base64!").is_err());
        assert!(decode_histogram(&mut Deserializer::new(), "aGV5").is_err());
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

        let published = Mutex::new(Published::default());
        Published::lock(&published)
            .recent
            .extend((5..9).map(|t| SecondStats {
                second: t,
                ..SecondStats::default()
            }));
        let r = server_route(&Request::new("/seconds?since=6"), &published);
        let seconds: Vec<u64> = r.body["seconds"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|b| b["second"].as_u64().expect("a second"))
            .collect();
        assert_eq!(seconds, [7, 8]);
        assert_eq!(r.body["kind"], "server");
    }

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
