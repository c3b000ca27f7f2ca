//! What a server publishes: its closed seconds and their totals, written by
//! the stats thread once a second and read by the HTTP control, the handle
//! and the monitor (`GET /seconds`, `GET /metrics`).
//!
//! Owns: `Published`, the server's two monitor routes (`route`,
//! `metrics_route`) and its `/metrics` document ([`metrics`]: which
//! counter field is which Prometheus family, label and help). Must not: sit on the request path;
//! each second's histogram was encoded by the stats thread when it closed.

use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use super::engine::EngineReport;
use crate::http::{Request, Response};
use crate::prom::{self, Buckets, Exposition, Family};
use crate::seconds::{self, Kept, Seconds};
use crate::stats::{CoreCounters, GeneratorCounters, SecondStats};

/// What the aggregator publishes once a second for the HTTP control and the
/// handle. Read under a mutex by readers that are not on the request path.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Published {
    /// The last closed seconds, oldest first.
    pub recent: Kept<SecondStats>,
    /// Every closed second summed; `second` is the last closed one.
    pub total: SecondStats,
    /// Service time over every closed second as Prometheus buckets, for
    /// `/metrics`.
    pub service: Buckets,
}

impl Published {
    /// Locks the published stats. A panic while the lock was held cannot
    /// leave them half-written in a way that matters (each field is replaced
    /// whole), so a poisoned lock is used as it is rather than spreading the
    /// panic to the HTTP control or the owner.
    pub(crate) fn lock(published: &Mutex<Published>) -> MutexGuard<'_, Published> {
        published.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server's `/seconds`: the closed seconds its stats thread published
/// (any path it is given is answered as `/seconds`; `/metrics` is
/// [`metrics_route`]).
pub(crate) fn route(req: &Request, published: &Mutex<Published>) -> Response {
    let since = match seconds::since(req) {
        Ok(since) => since,
        Err(bad) => return bad,
    };
    let seconds = Published::lock(published).recent.after(since);
    Response::ok(seconds::to_json(&Seconds::Server { seconds }))
}

/// The server's `/metrics` answer: [`metrics`] from what the stats thread
/// published, with the workers' connection cap and, with `--cluster`, the
/// engine's counters.
pub(crate) fn metrics_route(
    published: &Mutex<Published>,
    conns_cap: usize,
    engine: Option<&EngineReport>,
) -> Response {
    // Copied out, so that the stats thread never waits on the document
    // (nor on the /proc reads of its process_* metrics).
    let (total, last, service) = {
        let p = Published::lock(published);
        (p.total.clone(), p.recent.last().cloned(), p.service.clone())
    };
    let text = metrics(&Figures {
        total: &total,
        last: last.as_ref(),
        service: &service,
        conns_cap: Some(conns_cap),
        engine,
    });
    Response::text(prom::CONTENT_TYPE, text)
}

/// What the server's `/metrics` is written from.
#[derive(Clone, Copy, Debug)]
pub struct Figures<'a> {
    /// Every closed second summed (`second` the last closed one).
    pub total: &'a SecondStats,
    /// The last closed second, for the figures that are a second's maximum.
    pub last: Option<&'a SecondStats>,
    /// Service time over every closed second.
    pub service: &'a Buckets,
    /// The workers' connection cap (`/status`' `conns_cap`).
    pub conns_cap: Option<usize>,
    /// The cluster engine's counters, with `--cluster`.
    pub engine: Option<&'a EngineReport>,
}

/// The worker cores' counters as Prometheus families. Every field of
/// [`CoreCounters`] moves some sample here (a unit test holds it to that);
/// `shakes` and `claims` are the sums of their families' samples.
const CORE_FAMILIES: &[Family<CoreCounters>] = &[
    Family {
        name: "hongbao_server_connections_accepted_total",
        help: "Connections accepted.",
        label: "",
        samples: &[("", |c| c.accepted)],
    },
    Family {
        name: "hongbao_server_connections_closed_total",
        help: "Connections closed, for any reason (by the peer, a bad frame, a limit).",
        label: "",
        samples: &[("", |c| c.closed)],
    },
    Family {
        name: "hongbao_server_connections_dropped_total",
        help: "Connections the server closed on one of its limits, by reason: login_timeout (no login within the login timeout), output_limit (pending output past the limit) and stalled (answers unread past --stall-timeout), the two evictions, and user_conns_max (the user's oldest connection, past --user-conns-max).",
        label: "reason",
        samples: &[
            ("login_timeout", |c| c.login_timeouts),
            ("output_limit", |c| c.evictions.saturating_sub(c.stalled)),
            ("stalled", |c| c.stalled),
            ("user_conns_max", |c| c.user_conns_kicked),
        ],
    },
    Family {
        name: "hongbao_server_logins_total",
        help: "Logins answered, by result: ok, or the reason a login was refused (v1_refused: v1 where signed logins are required; bad_tag, expired, unknown_key, bad_size: a signed token refused). A refused login closes its connection.",
        label: "result",
        samples: &[
            ("ok", |c| c.logins),
            ("v1_refused", |c| c.auth_v1_refused),
            ("bad_tag", |c| c.auth_bad_tag),
            ("expired", |c| c.auth_expired),
            ("unknown_key", |c| c.auth_unknown_key),
            ("bad_size", |c| c.auth_bad_size),
        ],
    },
    Family {
        name: "hongbao_server_shakes_total",
        help: "Shakes answered, by result: got (an envelope), none (no envelope now), gone (all envelopes gone), overload (over the per-second ceiling, the ring untouched).",
        label: "result",
        samples: &[
            ("got", |c| c.got),
            ("none", |c| c.none),
            ("gone", |c| c.gone),
            ("overload", |c| c.overload),
        ],
    },
    Family {
        name: "hongbao_server_granted_cents_total",
        help: "Cents handed out in shake envelopes.",
        label: "",
        samples: &[("", |c| c.cents_granted)],
    },
    Family {
        name: "hongbao_server_envelopes_returned_total",
        help: "Envelopes found expired in a ring and returned.",
        label: "",
        samples: &[("", |c| c.envelopes_returned)],
    },
    Family {
        name: "hongbao_server_returned_cents_total",
        help: "Cents in the envelopes returned.",
        label: "",
        samples: &[("", |c| c.cents_returned)],
    },
    Family {
        name: "hongbao_server_claims_total",
        help: "Claims answered by the worker cores, by result: paid (a targeted user's first claim of a live packet: money moved), repeat (the first claim's amount again), zero (unknown or expired packet, or a user not targeted).",
        label: "result",
        samples: &[
            ("paid", |c| c.claims_paid),
            ("repeat", |c| c.claims_repeat),
            ("zero", |c| c.claims_zero),
        ],
    },
    Family {
        name: "hongbao_server_claimed_cents_total",
        help: "Cents moved by paid claims.",
        label: "",
        samples: &[("", |c| c.cents_claimed)],
    },
    Family {
        name: "hongbao_server_pushes_written_total",
        help: "Packet pushes (cmd 4) written to a user's connection, mailbox deliveries at login included.",
        label: "",
        samples: &[("", |c| c.pushes)],
    },
    Family {
        name: "hongbao_server_pushes_queued_total",
        help: "Packet pushes kept in an offline user's mailbox until they log in.",
        label: "",
        samples: &[("", |c| c.pushes_queued)],
    },
    Family {
        name: "hongbao_server_pushes_dropped_total",
        help: "Packet pushes dropped because the offline user's mailbox was full.",
        label: "",
        samples: &[("", |c| c.push_drops)],
    },
    Family {
        name: "hongbao_server_pushes_left_to_engine_total",
        help: "Cluster mode: pushes for a user no longer online on this node, left in their mailbox in the engine.",
        label: "",
        samples: &[("", |c| c.pushes_left_to_engine)],
    },
    Family {
        name: "hongbao_server_packets_expired_total",
        help: "Sent red packets that expired on their owning core.",
        label: "",
        samples: &[("", |c| c.packets_expired)],
    },
    Family {
        name: "hongbao_server_refunded_cents_total",
        help: "Cents refunded by expired packets (the part nobody claimed).",
        label: "",
        samples: &[("", |c| c.cents_refunded)],
    },
    Family {
        name: "hongbao_server_bad_frames_total",
        help: "Frames refused, each closing its connection, by reason: bad_length (length out of bounds), bad_cmd (unknown cmd), bad_size (size does not fit the cmd), bad_session (not a login first, or a server-to-client cmd). Refused logins are in hongbao_server_logins_total.",
        label: "reason",
        samples: &[
            ("bad_length", |c| c.bad_length),
            ("bad_cmd", |c| c.bad_cmd),
            ("bad_size", |c| c.bad_size),
            ("bad_session", |c| c.bad_session),
        ],
    },
    Family {
        name: "hongbao_server_reads_paused_total",
        help: "Times a connection was left unread for a while, by reason: conn_qps_max (over its share, --conn-qps-max), backpressure (its core could not hand on more messages or ledger entries).",
        label: "reason",
        samples: &[
            ("conn_qps_max", |c| c.throttled),
            ("backpressure", |c| c.reads_paused),
        ],
    },
    Family {
        name: "hongbao_server_accept_failures_total",
        help: "Accepts that failed, by reason: fd_exhausted (EMFILE, ENFILE or no memory; accepting pauses briefly after each), other (other accept or registration failures).",
        label: "reason",
        samples: &[
            ("fd_exhausted", |c| c.accept_fd_exhausted),
            ("other", |c| c.accept_errors),
        ],
    },
    Family {
        name: "hongbao_server_received_bytes_total",
        help: "Bytes read from client connections.",
        label: "",
        samples: &[("", |c| c.bytes_in)],
    },
    Family {
        name: "hongbao_server_sent_bytes_total",
        help: "Bytes written to client connections.",
        label: "",
        samples: &[("", |c| c.bytes_out)],
    },
];

/// The envelope generator's counters as Prometheus families; every field of
/// [`GeneratorCounters`] is one.
const GENERATOR_FAMILIES: &[Family<GeneratorCounters>] = &[
    Family {
        name: "hongbao_server_envelopes_recorded_total",
        help: "Envelopes made and recorded in the ledger (made up to the lookahead before they are due).",
        label: "",
        samples: &[("", |g| g.recorded)],
    },
    Family {
        name: "hongbao_server_recorded_cents_total",
        help: "Cents in the envelopes recorded.",
        label: "",
        samples: &[("", |g| g.cents_recorded)],
    },
    Family {
        name: "hongbao_server_envelopes_generated_total",
        help: "Envelopes pushed into a ring, due.",
        label: "",
        samples: &[("", |g| g.generated)],
    },
    Family {
        name: "hongbao_server_generated_cents_total",
        help: "Cents in the envelopes pushed into a ring.",
        label: "",
        samples: &[("", |g| g.cents_generated)],
    },
    Family {
        name: "hongbao_server_ring_full_stalls_total",
        help: "Times every ring was full and the generator had to hold an envelope.",
        label: "",
        samples: &[("", |g| g.ring_full_stalls)],
    },
    Family {
        name: "hongbao_server_packets_created_total",
        help: "Sent red packets created (each durable before its pushes go out).",
        label: "",
        samples: &[("", |g| g.packets_created)],
    },
    Family {
        name: "hongbao_server_packet_cents_total",
        help: "Cents in the packets created.",
        label: "",
        samples: &[("", |g| g.cents_packets)],
    },
    Family {
        name: "hongbao_server_packets_unavailable_total",
        help: "Cluster mode: packets not made or not handed to the engine thread (engine unreachable, or its queue full).",
        label: "",
        samples: &[("", |g| g.packets_unavailable)],
    },
    Family {
        name: "hongbao_server_lease_waits_total",
        help: "Cluster mode: refills that found fewer envelopes leased than due.",
        label: "",
        samples: &[("", |g| g.lease_waits)],
    },
];

/// Seconds in a nanosecond count.
fn seconds_of(ns: u64) -> f64 {
    ns as f64 / crate::clock::NANOS_PER_SEC as f64
}

/// The server's `/metrics`: cumulative counters of every core, of the
/// generator and of the ledger; the gauges of the last closed second; the
/// service-time histogram over the run; with `--cluster`, the engine's
/// counters; and the `process_*` metrics.
pub fn metrics(f: &Figures<'_>) -> String {
    let total = f.total;
    let mut e = Exposition::new();
    e.families(CORE_FAMILIES, &total.server);
    e.families(GENERATOR_FAMILIES, &total.generator);
    e.histogram(
        "hongbao_server_service_seconds",
        "Service time, a frame read to its answer handed to write, over every closed second.",
        f.service,
    );
    let ledger = &total.ledger;
    e.counter(
        "hongbao_server_ledger_records_total",
        "Money records written to the ledger (commits excluded); 0 without --data-dir.",
        ledger.records,
    );
    e.counter(
        "hongbao_server_ledger_written_bytes_total",
        "Bytes written to the ledger.",
        ledger.bytes,
    );
    e.counter(
        "hongbao_server_ledger_syncs_total",
        "Ledger group commits, each one write and one fdatasync.",
        ledger.syncs,
    );
    e.counter_f64(
        "hongbao_server_ledger_sync_seconds_total",
        "Time spent in the ledger's fdatasync; divided by the syncs' rate, the mean sync time.",
        seconds_of(ledger.sync_ns),
    );
    e.gauge(
        "hongbao_server_ledger_sync_max_seconds",
        "The longest ledger fdatasync in the last closed second.",
        seconds_of(f.last.map_or(0, |s| s.ledger.sync_ns_max)),
    );
    e.gauge(
        "hongbao_server_connections_open",
        "Connections open at the close of the last second.",
        total.conns_open as f64,
    );
    if let Some(cap) = f.conns_cap {
        e.gauge(
            "hongbao_server_connections_max",
            "The workers' connection cap: --conns-max, or the open-file limit less the descriptors kept for the control and the ledger.",
            cap as f64,
        );
    }
    e.gauge(
        "hongbao_server_envelopes_in_rings",
        "Envelopes waiting in the cores' rings at the close of the last second.",
        total.envelopes_in_rings as f64,
    );
    e.gauge(
        "hongbao_server_envelopes_ahead",
        "Envelopes recorded in the ledger but still in the generator, made ahead of their due time, at the close of the last second.",
        total.envelopes_ahead as f64,
    );
    e.gauge(
        "hongbao_server_last_closed_second_timestamp_seconds",
        "The last closed Unix second these figures include (0 before the first).",
        total.second as f64,
    );
    if let Some(engine) = f.engine {
        engine_metrics(&mut e, engine);
    }
    e.process();
    e.finish()
}

/// The engine threads' counters on `/metrics` (`/status`' `cluster`).
const ENGINE_FAMILIES: &[Family<EngineReport>] = &[
    Family {
        name: "hongbao_server_engine_claims_total",
        help: "Claims settled through the engine, by result: paid (money moved), repeat (the same amount again), zero (stranger, unknown or expired packet), unconfirmed (answered 0 because the engine could not confirm it in time).",
        label: "result",
        samples: &[
            ("paid", |r| r.claims_paid),
            ("repeat", |r| r.claims_repeat),
            ("zero", |r| r.claims_zero),
            ("unconfirmed", |r| r.claims_unconfirmed),
        ],
    },
    Family {
        name: "hongbao_server_engine_claims_received_total",
        help: "Claims received from the cores by the engine thread.",
        label: "",
        samples: &[("", |r| r.claims)],
    },
    Family {
        name: "hongbao_server_engine_claimed_cents_total",
        help: "Cents paid by claims this node acknowledged.",
        label: "",
        samples: &[("", |r| r.cents_claimed)],
    },
    Family {
        name: "hongbao_server_engine_claim_batches_total",
        help: "Round trips of claims to the engine.",
        label: "",
        samples: &[("", |r| r.claim_batches)],
    },
    Family {
        name: "hongbao_server_engine_wait_short_total",
        help: "WAITs that found fewer replicas than --engine-replicas.",
        label: "",
        samples: &[("", |r| r.wait_short)],
    },
    Family {
        name: "hongbao_server_engine_errors_total",
        help: "Engine calls that failed.",
        label: "",
        samples: &[("", |r| r.errors)],
    },
    Family {
        name: "hongbao_server_engine_connects_total",
        help: "Connections made to the engine, the first included.",
        label: "",
        samples: &[("", |r| r.connects)],
    },
    Family {
        name: "hongbao_server_engine_packets_created_total",
        help: "Packets created in the engine by this node.",
        label: "",
        samples: &[("", |r| r.packets_created)],
    },
    Family {
        name: "hongbao_server_engine_pushes_routed_total",
        help: "Pushes routed to a node's stream.",
        label: "",
        samples: &[("", |r| r.pushes_routed)],
    },
    Family {
        name: "hongbao_server_engine_mailbox_drops_total",
        help: "Pushes the router found no room for in a mailbox (the oldest dropped).",
        label: "",
        samples: &[("", |r| r.mailbox_drops)],
    },
    Family {
        name: "hongbao_server_engine_pushes_read_total",
        help: "Pushes read from this node's stream.",
        label: "",
        samples: &[("", |r| r.pushes_read)],
    },
    Family {
        name: "hongbao_server_engine_pushes_at_login_total",
        help: "Pushes handed back by a login from the user's mailbox.",
        label: "",
        samples: &[("", |r| r.pushes_at_login)],
    },
    Family {
        name: "hongbao_server_engine_presence_updates_total",
        help: "Presence updates (logins, last logouts) made.",
        label: "",
        samples: &[("", |r| r.presence)],
    },
    Family {
        name: "hongbao_server_engine_presence_lost_total",
        help: "Presence updates given up after --engine-timeout.",
        label: "",
        samples: &[("", |r| r.presence_lost)],
    },
    Family {
        name: "hongbao_server_engine_deliveries_dropped_total",
        help: "Deliveries not reported to the engine (past its bound).",
        label: "",
        samples: &[("", |r| r.deliveries_dropped)],
    },
    Family {
        name: "hongbao_server_engine_envelopes_leased_total",
        help: "Envelopes this node leased from the fleet's budget.",
        label: "",
        samples: &[("", |r| r.envelopes_leased)],
    },
    Family {
        name: "hongbao_server_engine_refunds_total",
        help: "Refunds made at the expiry of this node's packets.",
        label: "",
        samples: &[("", |r| r.refunds)],
    },
    Family {
        name: "hongbao_server_engine_refunded_cents_total",
        help: "Cents refunded at the expiry of this node's packets.",
        label: "",
        samples: &[("", |r| r.cents_refunded)],
    },
];

/// Cluster mode: the engine threads' counters (`/status`' `cluster`).
fn engine_metrics(e: &mut Exposition, r: &EngineReport) {
    e.gauge(
        "hongbao_server_engine_up",
        "1 while the last call to the cluster's engine succeeded.",
        f64::from(u8::from(r.available)),
    );
    e.families(ENGINE_FAMILIES, r);
    let gauges: [(&str, &str, u64); 6] = [
        (
            "hongbao_server_engine_budget_leased_envelopes",
            "Envelopes leased fleet-wide in the budget's current epoch, as last seen.",
            r.budget.leased,
        ),
        (
            "hongbao_server_engine_packets_pending",
            "Packets handed over by the generator, not yet in the engine.",
            r.packets_pending,
        ),
        (
            "hongbao_server_engine_budget_epoch",
            "The fleet budget's epoch as last seen (one per /yaohongbao).",
            r.budget.epoch,
        ),
        (
            "hongbao_server_engine_budget_envelopes_per_second",
            "The fleet's envelope rate as last seen.",
            r.budget.qps,
        ),
        (
            "hongbao_server_engine_budget_envelopes",
            "The fleet's envelope total as last seen.",
            r.budget.total,
        ),
        (
            "hongbao_server_engine_live_nodes",
            "Nodes that leased from the budget in the last seconds, as last seen.",
            r.budget.live_nodes,
        ),
    ];
    for (name, help, x) in gauges {
        e.gauge(name, help, x as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `T` with field `name` set to `n`, through serde (every field is a
    /// plain number).
    fn with_field<T: Serialize + serde::de::DeserializeOwned + Default>(name: &str, n: u64) -> T {
        let mut v = serde_json::to_value(T::default()).expect("a struct");
        v[name] = n.into();
        serde_json::from_value(v).expect("the same struct")
    }

    fn fields<T: Serialize + Default>() -> Vec<String> {
        let v = serde_json::to_value(T::default()).expect("a struct");
        v.as_object().expect("fields").keys().cloned().collect()
    }

    /// The document less the `process_*` metrics, which move by
    /// themselves.
    fn doc(total: &SecondStats) -> String {
        let text = metrics(&Figures {
            total,
            last: None,
            service: &Buckets::default(),
            conns_cap: Some(10),
            engine: None,
        });
        assert!(text.contains("\nprocess_open_fds "), "{text}");
        without_process(&text)
    }

    fn without_process(text: &str) -> String {
        text.lines()
            .filter(|l| !l.contains("process_"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_counter_field_moves_a_sample() {
        let quiet = doc(&SecondStats::default());
        // The sums of their families' samples, not samples of their own.
        let sums = ["shakes", "claims"];
        for field in fields::<CoreCounters>() {
            let total = SecondStats {
                server: with_field(&field, 7),
                ..SecondStats::default()
            };
            let moved = doc(&total) != quiet;
            assert_eq!(moved, !sums.contains(&field.as_str()), "{field}");
        }
        for field in fields::<GeneratorCounters>() {
            let total = SecondStats {
                generator: with_field(&field, 7),
                ..SecondStats::default()
            };
            assert_ne!(doc(&total), quiet, "{field}");
        }
        let total = SecondStats {
            server: CoreCounters {
                evictions: 5,
                stalled: 2,
                bad_cmd: 4,
                got: 3,
                ..CoreCounters::default()
            },
            ..SecondStats::default()
        };
        let text = doc(&total);
        for line in [
            "hongbao_server_connections_dropped_total{reason=\"output_limit\"} 3",
            "hongbao_server_connections_dropped_total{reason=\"stalled\"} 2",
            "hongbao_server_bad_frames_total{reason=\"bad_cmd\"} 4",
            "hongbao_server_shakes_total{result=\"got\"} 3",
            "hongbao_server_connections_max 10",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

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
