//! What one flooder thread counts, and how threads' counts are merged.
//!
//! Owns: the per-second [`Counters`], the two latency histograms
//! ([`Latency`]) and their merge. Must not: be shared between threads while
//! a run is going. Each thread owns its own and hands them over by value
//! (once a second for progress, once at the end in full), so nothing on the
//! send/receive path is locked or contended.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Plain event counts over some span (one second, the window, a whole run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Shake requests handed to the socket.
    pub sent: u64,
    /// Answers matched to a request: shake results of any code, and pushes
    /// sent in place of a shake result.
    pub answered: u64,
    /// Shake result 14: got an envelope.
    pub got: u64,
    /// Cents in the envelopes got.
    pub got_cents: u64,
    /// Shake result 15: no envelope now.
    pub none: u64,
    /// Shake result 16: all envelopes gone.
    pub gone: u64,
    /// Shake result 17: server overloaded.
    pub overload: u64,
    /// PacketPush (cmd 4) frames: a packet names this user.
    pub pushes: u64,
    /// Claims (cmd 5) sent for pushed packets.
    pub claims: u64,
    /// Claim answers (cmd 6) matched to a claim.
    pub claim_answers: u64,
    /// Cents in the claim answers.
    pub claim_cents: u64,
    /// Shake results with a code v1 does not define.
    pub other_results: u64,
    /// Well-formed frames that answer nothing: an answer with no request
    /// outstanding, or a cmd a server should not send here.
    pub unexpected_frames: u64,
    /// Bytes that do not decode as a v1 frame; the connection is closed.
    pub bad_frames: u64,
    /// Connections lost: closed by the peer, reset, or failed on I/O.
    pub conn_errors: u64,
    /// Connect or login attempts that failed; each is retried after a backoff.
    pub connect_failures: u64,
    /// Requests that fell due but were not sent: their user was not logged
    /// in (connecting, or waiting to retry), or the thread already awaited
    /// its cap of answers (a stalled server). Claims past their cap too.
    pub unsent: u64,
}

crate::stats::impl_add!(Counters {
    sent,
    answered,
    got,
    got_cents,
    none,
    gone,
    overload,
    pushes,
    claims,
    claim_answers,
    claim_cents,
    other_results,
    unexpected_frames,
    bad_frames,
    conn_errors,
    connect_failures,
    unsent,
});

impl Counters {
    /// Everything that went wrong, in one number for the progress line.
    pub fn errors(&self) -> u64 {
        self.other_results
            + self.unexpected_frames
            + self.bad_frames
            + self.conn_errors
            + self.connect_failures
            + self.unsent
    }
}

/// The slowest latency a histogram can hold: anything slower is recorded as
/// this. A minute is far beyond any run's deadline, so nothing real saturates.
const LATENCY_NS_MAX: u64 = 60 * 1_000_000_000;

/// Latency histograms of one thread (or, merged, of the run), in nanoseconds
/// with 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency {
    /// Answer time − intended send time: what a user waiting on a schedule
    /// sees, corrected for coordinated omission.
    pub corrected: Histogram<u64>,
    /// Answer time − actual send time: the uncorrected service time.
    pub service: Histogram<u64>,
    /// Actual send time − intended send time: the flooder's own lateness
    /// (timer granularity, a busy core), which `corrected` includes and
    /// `service` leaves out. Shown so that a reader can tell the two apart.
    pub send_lag: Histogram<u64>,
    /// `corrected` of the shakes that moved no money (every answer but "got
    /// an envelope", and lost requests): what a durable ledger must not slow.
    pub no_money: Histogram<u64>,
}

/// An empty latency histogram: 1 ns .. 60 s at 3 significant digits,
/// allocated once (about 200 KiB) so that recording never allocates.
pub fn histogram() -> Histogram<u64> {
    // A valid configuration, so creation cannot fail; if it ever did, that
    // is a bug here.
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// One thread's histograms of one second, by the time things happened in
/// it: the corrected latency of the answers that arrived, and the send lag
/// of the requests that left. Handed to the coordinator each second (for the
/// progress line's percentiles and the `--hlog` interval log) and handed
/// back empty for reuse.
#[derive(Clone, Debug)]
pub struct SecondHists {
    /// Answer time − intended send time, ns.
    pub corrected: Histogram<u64>,
    /// Actual − intended send time, ns.
    pub send_lag: Histogram<u64>,
}

impl SecondHists {
    /// Empty histograms.
    pub fn new() -> SecondHists {
        SecondHists {
            corrected: histogram(),
            send_lag: histogram(),
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &SecondHists) {
        // Same bounds on both sides, so adding cannot fail.
        self.corrected
            .add(&other.corrected)
            .expect("same histogram bounds");
        self.send_lag
            .add(&other.send_lag)
            .expect("same histogram bounds");
    }

    /// Empties both, keeping their memory.
    pub fn reset(&mut self) {
        self.corrected.reset();
        self.send_lag.reset();
    }
}

impl Default for SecondHists {
    fn default() -> SecondHists {
        SecondHists::new()
    }
}

impl Latency {
    /// Empty histograms, allocated once here so that recording never
    /// allocates.
    pub fn new() -> Latency {
        Latency {
            corrected: histogram(),
            service: histogram(),
            send_lag: histogram(),
            no_money: histogram(),
        }
    }

    /// Records the corrected latency of a shake that moved no money (also
    /// recorded with [`Latency::record`]).
    #[inline]
    pub fn record_no_money(&mut self, corrected_ns: u64) {
        self.no_money.saturating_record(corrected_ns.max(1));
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&mut self, corrected_ns: u64, service_ns: u64) {
        // The histograms start at 1 ns; a 0 (same clock reading) is 1.
        self.corrected.saturating_record(corrected_ns.max(1));
        self.service.saturating_record(service_ns.max(1));
    }

    /// Records how late one request went out.
    #[inline]
    pub fn record_send_lag(&mut self, lag_ns: u64) {
        self.send_lag.saturating_record(lag_ns.max(1));
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        self.corrected
            .add(&other.corrected)
            .expect("same histogram bounds");
        self.service
            .add(&other.service)
            .expect("same histogram bounds");
        self.send_lag
            .add(&other.send_lag)
            .expect("same histogram bounds");
        self.no_money
            .add(&other.no_money)
            .expect("same histogram bounds");
    }
}

impl Default for Latency {
    fn default() -> Latency {
        Latency::new()
    }
}

/// A histogram's summary in microseconds, as the report shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Percentiles {
    /// Summarises `h` (nanoseconds) in microseconds; all zero when empty.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Percentiles {
            count: h.len(),
            mean_us: h.mean() / 1_000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_every_field() {
        let one = Counters {
            sent: 1,
            answered: 2,
            got: 3,
            got_cents: 13,
            none: 4,
            gone: 5,
            overload: 6,
            pushes: 7,
            claims: 14,
            claim_answers: 15,
            claim_cents: 16,
            other_results: 8,
            unexpected_frames: 9,
            bad_frames: 10,
            conn_errors: 11,
            connect_failures: 17,
            unsent: 12,
        };
        let mut sum = one;
        sum.add(&one);
        let doubled = serde_json::to_value(sum).unwrap();
        let single = serde_json::to_value(one).unwrap();
        for (name, v) in single.as_object().unwrap() {
            assert_eq!(doubled[name], v.as_u64().unwrap() * 2, "field {name}");
        }
        assert_eq!(one.errors(), 8 + 9 + 10 + 11 + 17 + 12);
    }

    #[test]
    fn latency_merges_and_summarises_in_microseconds() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..=1000u64 {
            a.record(i * 1_000, i * 500);
        }
        b.record(5_000_000, 0);
        b.record_send_lag(700);
        a.add(&b);
        assert_eq!(a.send_lag.len(), 1);
        let p = Percentiles::of(&a.corrected);
        assert_eq!(p.count, 1001);
        assert!((p.p50_us - 501.0).abs() <= 1.0, "{p:?}");
        assert!((p.max_us - 5_000.0).abs() <= 5.0, "{p:?}");
        let s = Percentiles::of(&a.service);
        assert_eq!(s.count, 1001);
        assert!(s.p50_us < p.p50_us);
        assert_eq!(
            Percentiles::of(&Latency::new().service),
            Percentiles::default()
        );
    }

    #[test]
    fn latency_beyond_the_bound_saturates_instead_of_failing() {
        let mut a = Latency::new();
        a.record(u64::MAX, u64::MAX);
        assert_eq!(a.corrected.len(), 1);
    }
}
