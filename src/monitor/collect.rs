//! Fetching every source's seconds and aligning them into rows.
//!
//! Owns: each source's state (up or
//! down, its kind, the buckets not yet closed, its apparent clock skew), and
//! the rule that closes a second ([`Collector`]). Must not: read a clock or
//! a socket inside the rule: `take` and `close_ready` are given the fetch
//! results and the monitor's Unix second, so alignment is tested without
//! either.
//!
//! Alignment: seconds are aligned by the label each source gives them (its
//! Unix second), as the original monitor did. Second `t` closes when every
//! source has reported `t` or a later second, or when the monitor's clock
//! has passed `t + 1 + lag`. At the close each source is, for `t`: in the
//! sum (it has a bucket), idle (it answered but had no bucket), or missing
//! (its last fetch failed). A bucket arriving after its second closed is
//! counted as late and dropped: rows already written are never changed.
//! A source whose clock is off by more than the lag shows as idle and late;
//! its skew (its latest second against the monitor's) is shown beside it.
//!
//! Latency across sources: each bucket carries its second's histogram; at
//! the close a kind's histograms are decoded and added up, and the row's
//! percentiles are those of the sum (`latency_across: exact`). A bucket
//! without one (an older source, or one that does not decode) leaves the
//! row at the worst source's percentiles, an upper bound, and says so
//! (`worst_source_bound`).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde::Serialize;

use super::series::{KindSum, LatencyAcross, NetSecond, Row, add_client, add_server};
use crate::hlog::decode_histogram;
use crate::seconds::{ClientSecond, Seconds};
use crate::stats::SecondStats;
use crate::stats::client::Percentiles;

/// Fetches a source's `/seconds`: those after Unix second `since` when
/// given (a source older than `?since=` answers all it keeps, which
/// [`Collector::take`] sorts out the same way).
pub fn fetch_seconds(addr: &str, since: Option<u64>, timeout: Duration) -> Result<Seconds, String> {
    let target = match since {
        Some(t) => format!("/seconds?since={t}"),
        None => "/seconds".to_owned(),
    };
    let (status, body) = crate::http::get(addr, &target, timeout)?;
    if status != 200 {
        return Err(format!(
            "GET /seconds from {addr}: status {status} (is it a hongbao server or flooder of this version?)"
        ));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET /seconds from {addr}: {e}"))
}

/// Which kind of process a source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `hongbao server`.
    Server,
    /// `hongbao flood`.
    Flooder,
}

#[derive(Clone, Debug)]
enum Bucket {
    // Boxed, both: each is some hundreds of bytes, and a source's seconds
    // sit in a map until they close.
    Server(Box<SecondStats>),
    Client(Box<ClientSecond>),
}

/// One source as the monitor knows it.
#[derive(Clone, Debug, Serialize)]
pub struct SourceState {
    /// `host:port` of its HTTP control.
    pub addr: String,
    /// Known once it answered.
    pub kind: Option<Kind>,
    /// Its last fetch succeeded.
    pub up: bool,
    /// Why its last fetch failed.
    pub error: Option<String>,
    /// The latest second it reported.
    pub latest: Option<u64>,
    /// Its latest second minus the monitor's last whole second, at the last
    /// fetch that brought a new second: its clock skew plus its reporting
    /// delay (0 or -1 when in step).
    pub skew_secs: Option<i64>,
    /// Seconds it was in a row's sum.
    pub reported: u64,
    /// Seconds it was missing from (down when they closed).
    pub missed: u64,
    /// Buckets that arrived after their second closed, dropped.
    pub late: u64,
    /// Fetches of its `/seconds` that succeeded.
    pub fetches_ok: u64,
    /// Fetches that failed (no answer in time, a refusal, a bad answer).
    pub fetches_failed: u64,
    #[serde(skip)]
    buckets: BTreeMap<u64, Bucket>,
}

impl SourceState {
    /// A source not fetched yet.
    fn new(addr: &str) -> SourceState {
        SourceState {
            addr: addr.to_owned(),
            kind: None,
            up: false,
            error: None,
            latest: None,
            skew_secs: None,
            reported: 0,
            missed: 0,
            late: 0,
            fetches_ok: 0,
            fetches_failed: 0,
            buckets: BTreeMap::new(),
        }
    }
}

/// The aligner: sources, their pending buckets, the next second to close.
#[derive(Debug)]
pub struct Collector {
    /// The sources, in the order given.
    pub sources: Vec<SourceState>,
    lag_secs: u64,
    history_secs: u64,
    next: Option<u64>,
    net: BTreeMap<u64, NetSecond>,
}

impl Collector {
    /// A collector for `addrs`. A second closes at the latest `lag_secs`
    /// after it ended; at the start, up to `history_secs` of the seconds the
    /// sources still hold are taken.
    pub fn new(addrs: &[String], lag_secs: u64, history_secs: u64) -> Collector {
        Collector {
            sources: addrs.iter().map(|a| SourceState::new(a)).collect(),
            lag_secs,
            history_secs,
            next: None,
            net: BTreeMap::new(),
        }
    }

    /// Adds a source (one that registered itself); false when it is
    /// already known. Its buckets older than the next second to close
    /// count as late.
    pub fn add_source(&mut self, addr: &str) -> bool {
        if self.sources.iter().any(|s| s.addr == addr) {
            return false;
        }
        self.sources.push(SourceState::new(addr));
        true
    }

    /// Takes the result of fetching source `i` at monitor second `now`.
    pub fn take(&mut self, i: usize, fetched: Result<Seconds, String>, now: u64) {
        let next = self.next;
        let Some(s) = self.sources.get_mut(i) else {
            return;
        };
        let seconds = match fetched {
            Ok(seconds) => seconds,
            Err(e) => {
                s.up = false;
                s.error = Some(e);
                s.fetches_failed += 1;
                return;
            }
        };
        s.up = true;
        s.fetches_ok += 1;
        s.error = None;
        let buckets: Vec<(u64, Bucket)> = match seconds {
            Seconds::Server { seconds } => {
                s.kind = Some(Kind::Server);
                seconds
                    .into_iter()
                    .map(|b| (b.second, Bucket::Server(Box::new(b))))
                    .collect()
            }
            Seconds::Flooder { seconds } => {
                s.kind = Some(Kind::Flooder);
                seconds
                    .into_iter()
                    .map(|b| (b.second, Bucket::Client(Box::new(b))))
                    .collect()
            }
        };
        for (second, bucket) in buckets {
            if s.latest.is_some_and(|l| second <= l) {
                // Seen at an earlier fetch: sources serve a sliding window.
                continue;
            }
            if next.is_some_and(|n| second < n) {
                s.late += 1;
            } else {
                s.buckets.insert(second, bucket);
            }
            s.latest = Some(second);
            s.skew_secs = Some(second as i64 - now as i64 + 1);
        }
    }

    /// Keeps the monitor host's network counters for `second`.
    pub fn take_net(&mut self, second: u64, net: NetSecond) {
        self.net.insert(second, net);
    }

    /// Closes every second that is ready at monitor second `now` (see the
    /// module's alignment rule) and returns their rows, oldest first.
    pub fn close_ready(&mut self, now: u64) -> Vec<Row> {
        let floor = now.saturating_sub(self.history_secs.max(self.lag_secs + 1));
        let next = *self.next.get_or_insert_with(|| {
            let earliest = self
                .sources
                .iter()
                .filter_map(|s| s.buckets.keys().next().copied())
                .min()
                .unwrap_or(now.saturating_sub(1));
            earliest.max(floor)
        });
        let mut rows = Vec::new();
        let mut t = next;
        loop {
            let everyone_past = self
                .sources
                .iter()
                .all(|s| s.latest.is_some_and(|l| l >= t));
            let lag_over = now > t.saturating_add(self.lag_secs);
            if !(everyone_past || lag_over) {
                break;
            }
            rows.push(self.close(t));
            t += 1;
        }
        self.next = Some(t);
        // Network samples of closed seconds are no longer wanted.
        self.net = self.net.split_off(&t);
        rows
    }

    /// Closes second `t`: each source's bucket into the row, then the
    /// kinds' latencies from their histograms added up.
    fn close(&mut self, t: u64) -> Row {
        let mut row = Row {
            second: t,
            net: self.net.remove(&t),
            ..Row::default()
        };
        let mut latency = CloseLatency::new();
        for s in &mut self.sources {
            s.close_into(t, &mut row, &mut latency);
        }
        latency.set_percentiles(&mut row);
        row
    }
}

impl SourceState {
    /// Puts this source's bucket of second `t` into `row` (its histogram
    /// into `latency`), or names the source idle, missing or unreached for
    /// `t`; its buckets older than `t` are dropped as late.
    fn close_into(&mut self, t: u64, row: &mut Row, latency: &mut CloseLatency) {
        // Anything older than t is late by now; t itself is taken.
        let mut later = self.buckets.split_off(&t);
        let bucket = later.remove(&t);
        self.buckets = later;
        let addr = self.addr.clone();
        match (bucket, self.kind) {
            (Some(Bucket::Server(mut b)), _) => {
                self.reported += 1;
                // Taken out first, so that no row carries one.
                let h = b.service_ns_histogram.take();
                latency.servers.add(&mut latency.deserializer, h.as_deref());
                add_to(&mut row.servers, &b, add_server);
            }
            (Some(Bucket::Client(mut b)), _) => {
                self.reported += 1;
                let h = b.latency_ns_histogram.take();
                latency.clients.add(&mut latency.deserializer, h.as_deref());
                add_to(&mut row.clients, &b, add_client);
            }
            (None, None) => {
                self.missed += 1;
                row.unreached.push(addr);
            }
            (None, Some(kind)) => {
                let group = match kind {
                    Kind::Server => (&mut row.servers.idle, &mut row.servers.missing),
                    Kind::Flooder => (&mut row.clients.idle, &mut row.clients.missing),
                };
                if self.up {
                    group.0.push(addr);
                } else {
                    self.missed += 1;
                    group.1.push(addr);
                }
            }
        }
    }
}

/// Both kinds' latency histograms of the second being closed, and the one
/// decoder they share.
struct CloseLatency {
    deserializer: Deserializer,
    servers: Merge,
    clients: Merge,
}

impl CloseLatency {
    fn new() -> CloseLatency {
        CloseLatency {
            deserializer: Deserializer::new(),
            servers: Merge::default(),
            clients: Merge::default(),
        }
    }

    /// Sets each kind's percentiles in `row` from its histograms added up,
    /// or marks them the worst source's bound when one was lacking.
    fn set_percentiles(&self, row: &mut Row) {
        let reporting = row.servers.reporting;
        if let Some(sum) = row.servers.sum.as_mut() {
            row.servers.latency_across = Some(match self.servers.merged() {
                Some(h) => {
                    sum.set_service_percentiles(h);
                    LatencyAcross::Exact
                }
                None => LatencyAcross::bound_of(reporting),
            });
        }
        let reporting = row.clients.reporting;
        if let Some(sum) = row.clients.sum.as_mut() {
            row.clients.latency_across = Some(match self.clients.merged() {
                Some(h) => {
                    // As a flooder summarises its own second.
                    sum.latency_us = Percentiles::of(h);
                    LatencyAcross::Exact
                }
                None => LatencyAcross::bound_of(reporting),
            });
        }
    }
}

impl LatencyAcross {
    /// Without every source's histogram: the worst source's percentiles,
    /// which are exact when it is the only one.
    fn bound_of(reporting: u32) -> LatencyAcross {
        if reporting > 1 {
            LatencyAcross::WorstSourceBound
        } else {
            LatencyAcross::Exact
        }
    }
}

/// One kind's latency histograms of the second being closed, added up.
#[derive(Default)]
struct Merge {
    sum: Option<Histogram<u64>>,
    /// Reporting sources whose bucket had no histogram that decodes and
    /// adds.
    lacking: u32,
}

impl Merge {
    /// Adds one reporting source's encoded histogram (None: it sent none).
    fn add(&mut self, deserializer: &mut Deserializer, encoded: Option<&str>) {
        let Some(h) = encoded.and_then(|text| decode_histogram(deserializer, text).ok()) else {
            self.lacking += 1;
            return;
        };
        match self.sum.as_mut() {
            None => {
                let mut h = h;
                // Sources of other versions may differ in bounds: grow
                // rather than fail.
                h.auto(true);
                self.sum = Some(h);
            }
            Some(sum) => {
                if sum.add(&h).is_err() {
                    self.lacking += 1;
                }
            }
        }
    }

    /// The sum, when every reporting source's histogram is in it.
    fn merged(&self) -> Option<&Histogram<u64>> {
        if self.lacking > 0 {
            return None;
        }
        self.sum.as_ref()
    }
}

fn add_to<T: Clone>(k: &mut KindSum<T>, b: &T, add: fn(&mut T, &T)) {
    k.reporting += 1;
    match k.sum.as_mut() {
        Some(sum) => add(sum, b),
        None => k.sum = Some(b.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(seconds: std::ops::RangeInclusive<u64>, shakes: u64) -> Result<Seconds, String> {
        Ok(Seconds::Server {
            seconds: seconds
                .map(|t| {
                    let mut s = SecondStats {
                        second: t,
                        ..SecondStats::default()
                    };
                    s.server.shakes = shakes;
                    s
                })
                .collect(),
        })
    }

    #[test]
    fn a_second_waits_for_every_source_then_closes() {
        let mut c = Collector::new(&["a".into(), "b".into()], 5, 300);
        c.take(0, server(100..=102, 1), 103);
        c.take(1, server(100..=101, 2), 103);
        let rows = c.close_ready(103);
        let got: Vec<(u64, Option<u64>)> = rows
            .iter()
            .map(|r| (r.second, r.servers.sum.as_ref().map(|s| s.server.shakes)))
            .collect();
        assert_eq!(got, [(100, Some(3)), (101, Some(3))]);
        // 102 waits for b until the lag is over.
        assert!(c.close_ready(104).is_empty());
        let rows = c.close_ready(108);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].servers.idle, ["b"]);
        assert_eq!(rows[0].servers.reporting, 1);
        // b's 102 arrives too late: counted, not added.
        c.take(1, server(100..=103, 2), 108);
        assert_eq!(c.sources[1].late, 1);
    }
}
