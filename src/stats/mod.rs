//! Per-second counters: plain integers on each core, merged once a second.
//!
//! Owns: the counter sets (`CoreCounters`, `GeneratorCounters`), the report a
//! source sends when its second closes (`Report`), and the `Aggregator` that
//! sums the reports of one second from every source into a `SecondStats`.
//! Must not: be touched across cores on the request path. Each core increments
//! its own counters with ordinary adds; once a second it moves them, with its
//! latency histogram, through a channel (no allocation: histograms travel back
//! to be reused, `recycle`). Every percentile of a histogram is taken one
//! way, [`SummaryNs`], whatever unit a document shows it in.
//!
//! Alignment: a source closes second `t` at its first loop turn in a later
//! second, so a second's counts are those of `[t, t+1)` give or take one loop
//! turn (at most one tick, 100 ms, on an idle core). A source that skipped
//! seconds reports only the one it was counting; the seconds it skipped are
//! closed with nothing from it, and are marked incomplete for no source,
//! because it was alive and counted nothing there.

pub mod client;
pub(crate) mod recycle;
mod summary;

pub use summary::SummaryNs;
pub(crate) use summary::buckets;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::hlog::{LatencyHistogram, latency_histogram};
use crate::ledger::LedgerCounters;

/// Implements `add` (field by field) for a struct of plain counters. The
/// struct is destructured exhaustively, so a field added to it and not to
/// this list fails to compile instead of being silently dropped from sums.
macro_rules! impl_add {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl $ty {
            /// Adds `other` into `self`, field by field.
            pub fn add(&mut self, other: &$ty) {
                let $ty { $($field),* } = *other;
                $(self.$field += $field;)*
            }
        }
    };
}
pub(crate) use impl_add;

/// Counters a worker core keeps, per second. Field names end in their unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreCounters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed, for any reason.
    pub closed: u64,
    /// Logins answered.
    pub logins: u64,
    /// Shakes answered (got + none + gone + overload).
    pub shakes: u64,
    /// Shakes answered with an envelope.
    pub got: u64,
    /// Shakes answered "no envelope now".
    pub none: u64,
    /// Shakes answered "all envelopes gone".
    pub gone: u64,
    /// Shakes answered "overloaded" without touching the ring.
    pub overload: u64,
    /// Claims answered (paid + repeat + zero).
    pub claims: u64,
    /// Claims that moved money: a targeted user's first claim of a live packet.
    pub claims_paid: u64,
    /// Repeated claims, answered the first claim's amount again (no money moves).
    pub claims_repeat: u64,
    /// Claims answered 0 cents: unknown or expired packet, or a user not targeted.
    pub claims_zero: u64,
    /// Cents moved by paid claims.
    pub cents_claimed: u64,
    /// Packet pushes (cmd 4) written to a user's connection.
    pub pushes: u64,
    /// Pushes kept in an offline user's mailbox until they log in.
    pub pushes_queued: u64,
    /// Pushes dropped because the offline user's mailbox was full.
    pub push_drops: u64,
    /// Cluster mode: pushes from the engine for a user no longer online on
    /// this node, left in their mailbox in the engine for their next login.
    #[serde(default)]
    pub pushes_left_to_engine: u64,
    /// Packets that expired on their owning core.
    pub packets_expired: u64,
    /// Cents refunded by expired packets (the part nobody claimed).
    pub cents_refunded: u64,
    /// Cents handed out in shake envelopes.
    pub cents_granted: u64,
    /// Envelopes found expired in the ring and returned.
    pub envelopes_returned: u64,
    /// Their cents.
    pub cents_returned: u64,
    /// Frames refused because their length was out of bounds.
    pub bad_length: u64,
    /// Frames refused because their cmd is unknown.
    pub bad_cmd: u64,
    /// Frames refused because their size does not fit their cmd.
    pub bad_size: u64,
    /// Well-formed frames refused by the session (not a login first, or a
    /// server-to-client cmd sent by a client).
    pub bad_session: u64,
    /// v1 logins (cmd 0) refused because signed logins are required.
    pub auth_v1_refused: u64,
    /// Signed logins refused: the tag does not match (a forged or altered
    /// token, or one presented for another user).
    pub auth_bad_tag: u64,
    /// Signed logins refused: genuine but past their expiry.
    pub auth_expired: u64,
    /// Signed logins refused: no key with their key id (never issued, or
    /// removed by a rotation).
    pub auth_unknown_key: u64,
    /// Signed logins refused: their length is not the signed login's 44
    /// bytes (a token cut short). A length over 44 is `bad_length`, refused
    /// before the cmd is read.
    pub auth_bad_size: u64,
    /// Connections closed for not logging in within the login timeout.
    pub login_timeouts: u64,
    /// Connections closed because their pending output passed the limit,
    /// or stayed backed up past `--stall-timeout` (also in `stalled`).
    pub evictions: u64,
    /// Connections closed because their answers stayed backed up (unread)
    /// for `--stall-timeout`; each is also an eviction.
    pub stalled: u64,
    /// Connections closed because their user logged in on more than
    /// `--user-conns-max` connections: the user's oldest, each time.
    pub user_conns_kicked: u64,
    /// Times a connection was left unread because it was over its share,
    /// `--conn-qps-max` (read again once its bucket refills).
    pub throttled: u64,
    /// Times a connection was left unread because its core could not hand
    /// on more messages or ledger entries (backpressure; read again once
    /// there is room).
    pub reads_paused: u64,
    /// Accepts refused by the kernel for lack of descriptors (EMFILE, ENFILE)
    /// or memory; accepting pauses briefly after each.
    pub accept_fd_exhausted: u64,
    /// Other accept or registration failures.
    pub accept_errors: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

impl CoreCounters {
    /// Frames refused for any reason; each closed its connection.
    pub fn bad_frames(&self) -> u64 {
        self.bad_length + self.bad_cmd + self.bad_size + self.bad_session + self.logins_refused()
    }

    /// Logins refused for any reason (v1 where signed ones are required, or a
    /// token refused); each was answered with its result code and closed.
    pub fn logins_refused(&self) -> u64 {
        self.auth_v1_refused
            + self.auth_bad_tag
            + self.auth_expired
            + self.auth_unknown_key
            + self.auth_bad_size
    }
}

impl_add!(CoreCounters {
    accepted,
    closed,
    logins,
    shakes,
    got,
    none,
    gone,
    overload,
    claims,
    claims_paid,
    claims_repeat,
    claims_zero,
    cents_claimed,
    pushes,
    pushes_queued,
    push_drops,
    pushes_left_to_engine,
    packets_expired,
    cents_refunded,
    cents_granted,
    envelopes_returned,
    cents_returned,
    bad_length,
    bad_cmd,
    bad_size,
    bad_session,
    auth_v1_refused,
    auth_bad_tag,
    auth_expired,
    auth_unknown_key,
    auth_bad_size,
    login_timeouts,
    evictions,
    stalled,
    user_conns_kicked,
    throttled,
    reads_paused,
    accept_fd_exhausted,
    accept_errors,
    bytes_in,
    bytes_out,
});

/// Counters the envelope generator keeps, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorCounters {
    /// Envelopes generated, each pushed into some ring.
    pub generated: u64,
    /// Cents in those envelopes.
    pub cents_generated: u64,
    /// Envelopes made and recorded in the ledger: what the ledger counts as
    /// generated. The generator makes envelopes up to its lookahead before
    /// they are due, so `recorded - generated` of them wait in it, not yet
    /// in a ring (the gauge `envelopes_ahead`).
    #[serde(default)]
    pub recorded: u64,
    /// Cents in those envelopes.
    #[serde(default)]
    pub cents_recorded: u64,
    /// Times every ring was full and the generator had to hold an envelope.
    pub ring_full_stalls: u64,
    /// Sent red packets created (each durable before its pushes go out).
    pub packets_created: u64,
    /// Cents in those packets.
    pub cents_packets: u64,
    /// Cluster mode: packets not made or not handed to the engine thread
    /// (no packet id reserved: the engine unreachable; or its queue full).
    #[serde(default)]
    pub packets_unavailable: u64,
    /// Cluster mode: refills that found fewer envelopes leased than due
    /// (the budget spent, or the engine slow to lease).
    #[serde(default)]
    pub lease_waits: u64,
}

impl_add!(GeneratorCounters {
    generated,
    cents_generated,
    recorded,
    cents_recorded,
    ring_full_stalls,
    packets_created,
    cents_packets,
    packets_unavailable,
    lease_waits,
});

/// What a source sends when it closes a second.
// Once a second per source, by value through a channel: the size of the
// counters costs nothing there, and boxing them would allocate each second.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Report {
    /// A worker core closed `second`.
    Core {
        /// Which worker.
        core: usize,
        /// Unix second the counts belong to.
        second: u64,
        /// Counts for that second.
        counters: CoreCounters,
        /// Connections open at the close (a gauge).
        conns_open: u64,
        /// Service times recorded in that second; sent back for reuse.
        latency: Box<LatencyHistogram>,
    },
    /// A worker core stopped for good (its poll failed): seconds no longer
    /// wait for it.
    CoreGone {
        /// Which worker.
        core: usize,
    },
    /// The generator closed `second`.
    Generator {
        /// Unix second the counts belong to.
        second: u64,
        /// Counts for that second.
        counters: GeneratorCounters,
        /// Envelopes waiting in all rings at the close (a gauge).
        in_rings: u64,
        /// Envelopes recorded but not yet in a ring, waiting in the
        /// generator for their due time (a gauge).
        ahead: u64,
        /// What the ledger writer did in that second.
        ledger: LedgerCounters,
    },
}

/// One second of the whole server, every source summed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Unix second.
    pub second: u64,
    /// Summed core counters.
    pub server: CoreCounters,
    /// Generator counters.
    pub generator: GeneratorCounters,
    /// Connections open at the second's close.
    pub conns_open: u64,
    /// Envelopes waiting in rings at the second's close.
    pub envelopes_in_rings: u64,
    /// Envelopes recorded in the ledger but still in the generator at the
    /// second's close, made ahead of their due time. Outstanding in the
    /// ledger = in rings + ahead.
    #[serde(default)]
    pub envelopes_ahead: u64,
    /// What the ledger writer did (all zero without `--data-dir`).
    pub ledger: LedgerCounters,
    /// Service time percentiles over the second, nanoseconds (0 when idle).
    pub service_ns_p50: u64,
    /// See `service_ns_p50`.
    pub service_ns_p99: u64,
    /// See `service_ns_p50`.
    pub service_ns_p999: u64,
    /// See `service_ns_p50`.
    pub service_ns_max: u64,
    /// The second's service times as an HdrHistogram (nanoseconds, V2
    /// deflate, base64: [`crate::hlog::encode_histogram`]), so
    /// that a monitor adds several servers' seconds up exactly instead of
    /// bounding their percentiles. Encoded by the stats thread as the
    /// second closes; None from a server older than this field, in totals
    /// and in a monitor's sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ns_histogram: Option<String>,
}

impl SecondStats {
    /// Sets the service-time percentiles from the second's histogram
    /// (nanoseconds): all zero when it is empty.
    pub fn set_service_percentiles(&mut self, h: &LatencyHistogram) {
        let s = SummaryNs::of(h);
        self.service_ns_p50 = s.p50_ns;
        self.service_ns_p99 = s.p99_ns;
        self.service_ns_p999 = s.p999_ns;
        self.service_ns_max = s.max_ns;
    }
}

struct Pending {
    second: u64,
    stats: SecondStats,
    latency: LatencyHistogram,
}

/// Merges per-source reports into per-second totals.
///
/// Sources are the worker cores `0..cores` and the generator. A second is
/// closed once every source has reported it or a later one.
pub struct Aggregator {
    cores: usize,
    /// Last second each source reported; index `cores` is the generator.
    reported: Vec<Option<u64>>,
    pending: VecDeque<Pending>,
    /// Every closed second summed, for the final summary.
    pub total: SecondStats,
    total_latency: LatencyHistogram,
    /// Each closed second's merged histogram, kept for the server's
    /// `--hlog` when [`Aggregator::keep_latency`] asked for them.
    kept_latency: Option<Vec<(u64, LatencyHistogram)>>,
}

impl Aggregator {
    /// An aggregator for `cores` worker cores and one generator.
    pub fn new(cores: usize) -> Self {
        Aggregator {
            cores,
            reported: vec![None; cores + 1],
            pending: VecDeque::new(),
            total: SecondStats::default(),
            total_latency: latency_histogram(),
            kept_latency: None,
        }
    }

    /// From now on, keeps each closed second's merged service-time
    /// histogram until [`Aggregator::take_latency`] takes it.
    pub fn keep_latency(&mut self) {
        self.kept_latency.get_or_insert_with(Vec::new);
    }

    /// The closed seconds' histograms kept since the last call, oldest
    /// first, as `(Unix second, histogram)`; empty unless kept.
    pub fn take_latency(&mut self) -> Vec<(u64, LatencyHistogram)> {
        self.kept_latency
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Service times over every closed second so far.
    pub fn total_latency(&self) -> &LatencyHistogram {
        &self.total_latency
    }

    fn bucket(&mut self, second: u64) -> &mut Pending {
        // Seconds only move forward per source, and sources lag each other by
        // a turn, so a report lands in one of the last few buckets.
        let front = self.pending.front().map(|p| p.second);
        if let Some(front) = front
            && second < front
        {
            // Older than anything pending: it was closed already (a source
            // that lagged behind the close rule). Count it into the oldest
            // open bucket rather than lose it.
            return self.pending.front_mut().expect("front exists");
        }
        let back = self.pending.back().map(|p| p.second);
        let from = back.map_or(second, |b| b + 1);
        for s in from..=second {
            self.pending.push_back(Pending {
                second: s,
                stats: SecondStats {
                    second: s,
                    ..SecondStats::default()
                },
                latency: latency_histogram(),
            });
        }
        let idx = self
            .pending
            .iter()
            .position(|p| p.second == second)
            .expect("bucket created above");
        &mut self.pending[idx]
    }

    /// Takes one report. Returns the latency histogram for reuse when the
    /// report carried one.
    pub fn add(&mut self, report: Report) -> Option<Box<LatencyHistogram>> {
        match report {
            Report::Core {
                core,
                second,
                counters,
                conns_open,
                mut latency,
            } => {
                let b = self.bucket(second);
                b.stats.server.add(&counters);
                b.stats.conns_open += conns_open;
                // Both histograms share bounds, so adding cannot fail.
                let _ = b.latency.add(&*latency);
                latency.reset();
                self.mark(core, second);
                Some(latency)
            }
            Report::Generator {
                second,
                counters,
                in_rings,
                ahead,
                ledger,
            } => {
                let b = self.bucket(second);
                b.stats.generator.add(&counters);
                b.stats.ledger.add(&ledger);
                b.stats.envelopes_in_rings = in_rings;
                b.stats.envelopes_ahead = ahead;
                self.mark(self.cores, second);
                None
            }
            Report::CoreGone { core } => {
                self.mark(core, u64::MAX);
                None
            }
        }
    }

    fn mark(&mut self, source: usize, second: u64) {
        let slot = &mut self.reported[source];
        *slot = Some(slot.map_or(second, |s| s.max(second)));
    }

    /// Closes and returns every second that all sources have reported.
    pub fn drain_closed(&mut self) -> Vec<SecondStats> {
        let Some(min) = self
            .reported
            .iter()
            .try_fold(u64::MAX, |m, r| r.map(|s| m.min(s)))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.second <= min) {
            let p = self.pending.pop_front().expect("front exists");
            out.push(self.close(p));
        }
        out
    }

    /// Closes every pending second, reported or not (at shutdown).
    pub fn drain_all(&mut self) -> Vec<SecondStats> {
        let mut out = Vec::new();
        while let Some(p) = self.pending.pop_front() {
            out.push(self.close(p));
        }
        out
    }

    fn close(&mut self, p: Pending) -> SecondStats {
        let mut s = p.stats;
        s.set_service_percentiles(&p.latency);
        // Once a second, on the stats thread: what the monitor merges.
        s.service_ns_histogram = crate::hlog::encode_histogram(&p.latency);
        let _ = self.total_latency.add(&p.latency);
        if let Some(kept) = self.kept_latency.as_mut() {
            kept.push((s.second, p.latency));
        }
        self.total.server.add(&s.server);
        self.total.generator.add(&s.generator);
        self.total.ledger.add(&s.ledger);
        self.total.second = s.second;
        self.total.conns_open = s.conns_open;
        self.total.envelopes_in_rings = s.envelopes_in_rings;
        self.total.envelopes_ahead = s.envelopes_ahead;
        s
    }

    /// Service time over the whole run so far, summarised.
    pub fn total_latency_ns(&self) -> SummaryNs {
        SummaryNs::of(&self.total_latency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(core: usize, second: u64, shakes: u64) -> Report {
        Report::Core {
            core,
            second,
            counters: CoreCounters {
                shakes,
                ..CoreCounters::default()
            },
            conns_open: 1,
            latency: Box::new(latency_histogram()),
        }
    }

    fn generator(second: u64, generated: u64) -> Report {
        Report::Generator {
            second,
            counters: GeneratorCounters {
                generated,
                ..GeneratorCounters::default()
            },
            in_rings: 0,
            ahead: 0,
            ledger: LedgerCounters::default(),
        }
    }

    #[test]
    fn a_second_closes_only_when_every_source_reported_it() {
        let mut a = Aggregator::new(2);
        a.add(core(0, 100, 5));
        a.add(generator(100, 2));
        assert!(a.drain_closed().is_empty());
        a.add(core(1, 100, 7));
        let closed = a.drain_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].second, 100);
        assert_eq!(closed[0].server.shakes, 12);
        assert_eq!(closed[0].generator.generated, 2);
        assert_eq!(closed[0].conns_open, 2);
    }

    #[test]
    fn a_source_that_skipped_a_second_closes_it_with_nothing() {
        let mut a = Aggregator::new(1);
        a.add(core(0, 100, 5));
        a.add(generator(100, 1));
        assert_eq!(a.drain_closed().len(), 1);
        a.add(generator(101, 1));
        a.add(core(0, 102, 3)); // the core was busy through 101
        a.add(generator(102, 1));
        let closed = a.drain_closed();
        let shakes: Vec<u64> = closed.iter().map(|s| s.server.shakes).collect();
        assert_eq!(shakes, [0, 3]);
        assert_eq!(a.total.server.shakes, 8);
        assert_eq!(a.total.generator.generated, 3);
    }

    #[test]
    fn latency_percentiles_come_from_the_merged_histograms() {
        let mut a = Aggregator::new(2);
        for (c, ns) in [(0, 1_000), (1, 9_000)] {
            let mut h = Box::new(latency_histogram());
            h.record_n(ns, 100).unwrap();
            a.add(Report::Core {
                core: c,
                second: 5,
                counters: CoreCounters::default(),
                conns_open: 0,
                latency: h,
            });
        }
        a.add(generator(5, 0));
        let s = &a.drain_closed()[0];
        assert!(
            (995..=1_005).contains(&s.service_ns_p50),
            "{}",
            s.service_ns_p50
        );
        assert!(
            (8_990..=9_010).contains(&s.service_ns_p99),
            "{}",
            s.service_ns_p99
        );
        // The second's histogram travels with it, for a monitor to merge.
        let text = s.service_ns_histogram.as_deref().expect("encoded");
        let h = crate::hlog::decode_histogram(
            &mut hdrhistogram::serialization::Deserializer::new(),
            text,
        )
        .expect("decodes");
        assert_eq!(h.len(), 200);
        assert_eq!(h.value_at_quantile(0.99), s.service_ns_p99);
        assert_eq!(a.total.service_ns_histogram, None, "totals carry none");
    }
}
