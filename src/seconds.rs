//! The contract between the sources (servers, flooders) and the monitor:
//! what `GET /seconds` carries, and how a source registers itself.
//!
//! Owns: the wire schema of a source's seconds ([`Seconds`], [`ClientSecond`];
//! a server's second is [`crate::stats::SecondStats`]), how many complete
//! seconds a source keeps ([`SECONDS_KEPT`]), the `?since=T` parameter, and
//! [`register`]. A second's latency histogram travels as
//! [`crate::hlog::encode_histogram`] writes it. Must not: know which program
//! serves or reads it: the server, the flooder and the monitor meet here and
//! nowhere else (`server/`, `flood/` and `monitor/` never import one
//! another).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::http::{Request, Response};
use crate::stats::SecondStats;
use crate::stats::client::{Counters, Percentiles};

/// Complete seconds a source keeps for the monitor and `/stats`: five
/// minutes, so that a monitor that was away that long loses nothing.
pub const SECONDS_KEPT: usize = 300;

/// A second a source publishes: labelled with its Unix second.
pub trait Labelled {
    /// The Unix second it counts.
    fn second(&self) -> u64;
}

impl Labelled for SecondStats {
    fn second(&self) -> u64 {
        self.second
    }
}

impl Labelled for ClientSecond {
    fn second(&self) -> u64 {
        self.second
    }
}

/// A source's last [`SECONDS_KEPT`] complete seconds, oldest first: what its
/// `/seconds` serves. Serialises as the list.
#[derive(Clone, Debug, Serialize)]
#[serde(transparent)]
pub struct Kept<T> {
    seconds: VecDeque<T>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            seconds: VecDeque::with_capacity(SECONDS_KEPT),
        }
    }
}

impl<T: Labelled + Clone> Kept<T> {
    /// Keeps `second`, dropping the oldest once [`SECONDS_KEPT`] are kept.
    pub fn push(&mut self, second: T) {
        if self.seconds.len() == SECONDS_KEPT {
            self.seconds.pop_front();
        }
        self.seconds.push_back(second);
    }

    /// The latest kept second.
    pub fn last(&self) -> Option<&T> {
        self.seconds.back()
    }

    /// The kept seconds after Unix second `since` (all when None), oldest
    /// first: a `/seconds?since=T` answer.
    pub fn after(&self, since: Option<u64>) -> Vec<T> {
        self.seconds
            .iter()
            .filter(|s| since.is_none_or(|t| s.second() > t))
            .cloned()
            .collect()
    }
}

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
    /// time, the one `latency_us` summarises), [`crate::hlog::encode_histogram`]d, so
    /// that a monitor adds several flooders' seconds up exactly. None from
    /// a flooder older than this field, and in a monitor's sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns_histogram: Option<String>,
}

/// The `since` of a `/seconds?since=T` request: only seconds after Unix
/// second T are served (a monitor asks for those it has not seen, rather
/// than 300 each second). None without it; `Err` when it is not a number.
pub fn since(req: &Request) -> Result<Option<u64>, Response> {
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

/// The JSON body of a `/seconds` answer.
pub fn to_json(s: &Seconds) -> serde_json::Value {
    // Plain structs of numbers always serialise.
    serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
}

/// Registers a source's HTTP control (`source`) with the monitor whose
/// dashboard listens at `monitor`: `GET /register?source=ADDR`.
pub fn register(monitor: &str, source: std::net::SocketAddr) -> Result<(), String> {
    if source.ip().is_unspecified() {
        return Err(format!(
            "{source} is not an address the monitor can reach; give --http a specific address"
        ));
    }
    let target = format!("/register?source={source}");
    match crate::http::get(monitor, &target, std::time::Duration::from_secs(2))? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("status {status}: {body}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_seconds_are_kept_and_served_after_t() {
        let mut kept = Kept::default();
        for t in 0..(SECONDS_KEPT as u64 + 5) {
            kept.push(ClientSecond {
                second: 1000 + t,
                ..ClientSecond::default()
            });
        }
        let all = kept.after(None);
        assert_eq!(all.len(), SECONDS_KEPT);
        assert_eq!(all[0].second, 1005);
        let later: Vec<u64> = kept.after(Some(1302)).iter().map(|s| s.second).collect();
        assert_eq!(later, [1303, 1304]);
        assert!(kept.after(Some(2000)).is_empty());
    }

    #[test]
    fn since_is_a_unix_second_or_nothing() {
        assert_eq!(since(&Request::new("/seconds")).ok(), Some(None));
        assert_eq!(since(&Request::new("/seconds?since=7")).ok(), Some(Some(7)));
        let bad = since(&Request::new("/seconds?since=x")).expect_err("refused");
        assert_eq!(bad.status, 400);
    }
}
