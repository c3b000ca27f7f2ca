//! What a flooder counts and publishes: its event counts ([`Counters`]) and
//! its latency summaries ([`Percentiles`]), in the shape the `/seconds`
//! schema carries them to the monitor and the report shows them.
//!
//! Owns: the counter set and the microsecond summary (taken, like every
//! summary, through [`super::SummaryNs`]). Must not: hold a
//! histogram or be shared between threads while a run is going (each
//! flooder thread counts into its own and hands it over by value).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::SummaryNs;
use crate::clock::{NANOS_PER_MICRO, micros_of_nanos};

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
    /// Claims (cmd 5) sent for pushed packets: one per packet a user was
    /// pushed, a push repeated while its claim awaits an answer being
    /// claimed once.
    pub claims: u64,
    /// Claims sent again, after a reconnect and login, because the
    /// connection they were sent on closed before their answer came.
    #[serde(default)]
    pub claims_resent: u64,
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
    /// Users moved to the next `--server` by a lost connection or a failed
    /// attempt (never with one server): their next attempt goes there.
    #[serde(default)]
    pub failovers: u64,
    /// Requests that fell due but were not sent: their user was not logged
    /// in (connecting, or waiting to retry), or the thread already awaited
    /// its cap of answers (a stalled server). Claims past their cap too.
    pub unsent: u64,
}

super::impl_add!(Counters {
    sent,
    answered,
    got,
    got_cents,
    none,
    gone,
    overload,
    pushes,
    claims,
    claims_resent,
    claim_answers,
    claim_cents,
    other_results,
    unexpected_frames,
    bad_frames,
    conn_errors,
    connect_failures,
    failovers,
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
        Percentiles::from_summary(&SummaryNs::of(h))
    }

    /// A summary in microseconds, as the flooder's report and `/seconds`
    /// show it.
    pub fn from_summary(s: &SummaryNs) -> Percentiles {
        Percentiles {
            count: s.count,
            mean_us: s.mean_ns / NANOS_PER_MICRO as f64,
            p50_us: micros_of_nanos(s.p50_ns),
            p90_us: micros_of_nanos(s.p90_ns),
            p99_us: micros_of_nanos(s.p99_ns),
            p999_us: micros_of_nanos(s.p999_ns),
            max_us: micros_of_nanos(s.max_ns),
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
            claims_resent: 18,
            claim_answers: 15,
            claim_cents: 16,
            other_results: 8,
            unexpected_frames: 9,
            bad_frames: 10,
            conn_errors: 11,
            connect_failures: 17,
            failovers: 19,
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
}
