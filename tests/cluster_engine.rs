//! The cluster engine (`hongbao::cluster`) against a real Redis Cluster on
//! loopback: 3 primaries with a replica each, started once for this binary
//! by `tools/cluster.sh up` on ports in 17000..=17099 and stopped when it
//! exits (`util::cluster`).
//!
//! Each test works on its own packets (fresh ids from the engine), users
//! and node ids, so the tests share the cluster while running in parallel;
//! the one that replaces the function library, and the one that kills a
//! primary, hold `EXCLUSIVE` for writing, the others for reading.

mod util;

use std::collections::HashSet;
use std::sync::{RwLock, RwLockReadGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hongbao::cluster::{
    ClaimOutcome, ClaimReq, Created, Engine, EngineConfig, EngineError, EnginePacket, LIBRARY,
    LIBRARY_VERSION, PushNote, Routed,
};
use hongbao::ids::{Cents, PacketId, UserId};
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use util::cluster::{TestCluster, shared};

/// This binary's Redis ports (its cluster bus ports are these + 10000).
const PORTS: std::ops::RangeInclusive<u16> = 17000..=17099;

/// Tests that change the whole cluster (its library, a primary's life)
/// write-lock this; the others read-lock it.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn cluster() -> Option<&'static TestCluster> {
    shared("engine", PORTS)
}

fn config(c: &TestCluster) -> EngineConfig {
    EngineConfig::parse(&c.list()).expect("the test cluster's list parses")
}

/// A connected engine with the library loaded.
#[track_caller]
fn engine(c: &TestCluster) -> Engine {
    let mut e = Engine::connect(&config(c)).expect("connecting to the test cluster");
    e.load_functions().expect("loading the function library");
    e
}

fn shared_lock() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A packet of `amount` for `targets`, split by the server's own
/// double-average `share`, expiring `ttl_ms` from now (or in the past).
fn packet(e: &mut Engine, amount: u64, targets: &[UserId], expires_ms: u64) -> EnginePacket {
    let ids = e.reserve_packet_ids(1).expect("an id");
    assert_eq!(ids.len(), 1);
    let mut rng = fastrand::Rng::with_seed(u64::from(ids.start));
    let mut remaining = amount;
    let mut shares = Vec::new();
    for left in (1..=targets.len() as u64).rev() {
        let s = hongbao::packets::share(remaining, left, &mut rng);
        remaining -= s;
        shares.push(Cents(s));
    }
    EnginePacket {
        id: PacketId(ids.start),
        amount: Cents(amount),
        expires_ms,
        creator: 1,
        targets: targets.to_vec(),
        shares,
    }
}

fn users(from: u32, n: u32) -> Vec<UserId> {
    (from..from + n).map(UserId).collect()
}

#[test]
fn the_library_loads_once_and_a_newer_one_is_refused() {
    let Some(c) = cluster() else { return };
    let _all = EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner());
    let mut e = Engine::connect(&config(c)).expect("connecting");
    let first = e.load_functions().expect("first load");
    assert_eq!(first.primaries, 3);
    assert_eq!(first.version, LIBRARY_VERSION);
    let second = e.load_functions().expect("second load");
    assert_eq!(second.loaded, 0, "a second load changes nothing");
    assert_eq!(second.primaries, 3);

    // A newer library on every primary: this binary refuses to run on it.
    let raw = redis::cluster::ClusterClient::new(c.urls()).expect("a raw client");
    let mut raw = raw.get_connection().expect("a raw connection");
    let on_primaries = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::AllSucceeded),
    ));
    let newer = format!(
        "#!lua name=hongbao\nredis.register_function{{function_name='hb_version', callback=function() return {} end, flags={{'no-writes'}}}}\n",
        LIBRARY_VERSION + 1
    );
    raw.route_command(
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&newer),
        on_primaries.clone(),
    )
    .expect("loading a newer library by hand");
    match e.load_functions() {
        Err(EngineError::VersionNewer { loaded, ours }) => {
            assert_eq!((loaded, ours), (LIBRARY_VERSION + 1, LIBRARY_VERSION));
        }
        other => panic!("a newer library must be refused, got {other:?}"),
    }
    let text = EngineError::VersionNewer { loaded: 2, ours: 1 }.to_string();
    assert!(text.contains("upgrade this binary"), "{text}");

    // Gone again (by hand, as an operator downgrading would): ours loads
    // on every primary.
    raw.route_command(
        redis::cmd("FUNCTION").arg("DELETE").arg("hongbao"),
        on_primaries,
    )
    .expect("deleting the library by hand");
    let again = e.load_functions().expect("loading after the delete");
    assert_eq!(again.loaded, 3);
    let reply: String = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg("hongbao")
        .arg("WITHCODE")
        .query::<redis::Value>(&mut raw)
        .map(|v| format!("{v:?}"))
        .expect("FUNCTION LIST");
    assert!(reply.contains("hb_claim"), "{reply}");
    assert!(!LIBRARY.is_empty());
}

#[test]
fn a_packet_created_twice_is_created_once() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let targets = users(1_000, 3);
    let expires_ms = now_ms() + 60_000;
    let p = packet(&mut e, 300, &targets, expires_ms);
    assert_ne!(p.id.0, 0);
    assert_eq!(e.create_packet(&p).expect("create"), Created::New);
    assert_eq!(e.create_packet(&p).expect("create again"), Created::Exists);
    let mut other = p.clone();
    other.amount = Cents(301);
    other.shares[0].0 += 1;
    match e.create_packet(&other) {
        Err(EngineError::Script(s)) => assert!(s.contains("conflict"), "{s}"),
        r => panic!("another amount under the same id must conflict, got {r:?}"),
    }
    let s = e.packet(p.id).expect("state").expect("the packet is there");
    assert_eq!(s.amount, Cents(300));
    assert_eq!(s.remaining, Cents(300));
    assert_eq!(s.refunded, None);
    assert_eq!(s.claimants, 3);
    assert_eq!(s.expires_ms, expires_ms);
    assert_eq!(s.creator, 1);
    assert_eq!(s.targets, targets);
    assert!(s.claims.is_empty());
    // Bad packets never reach the engine.
    let mut bad = p.clone();
    bad.shares[0] = Cents(0);
    assert!(matches!(
        e.create_packet(&bad),
        Err(EngineError::Invalid(_))
    ));
}

#[test]
fn reserved_packet_ids_are_unique_and_never_0() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut seen = HashSet::new();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let mut e = engine(c);
            thread::spawn(move || {
                (0..20)
                    .flat_map(|_| e.reserve_packet_ids(7).expect("ids"))
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    for h in handles {
        for id in h.join().expect("a reserving thread") {
            assert_ne!(id, 0);
            assert!(seen.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(seen.len(), 3 * 20 * 7);
}

#[test]
fn a_hundred_claimants_from_three_connections_sum_exactly() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let targets = users(2_000, 100);
    let amount = 10_000;
    let p = packet(&mut e, amount, &targets, now_ms() + 60_000);
    assert_eq!(e.create_packet(&p).expect("create"), Created::New);
    let id = p.id;
    let handles: Vec<_> = (0..3u32)
        .map(|t| {
            let mut e = engine(c);
            let mine: Vec<UserId> = targets.iter().copied().filter(|u| u.0 % 3 == t).collect();
            thread::spawn(move || {
                let mut paid = Vec::new();
                for chunk in mine.chunks(8) {
                    let batch: Vec<ClaimReq> = chunk
                        .iter()
                        .map(|&user| ClaimReq {
                            packet: id,
                            user,
                            now_ms: now_ms(),
                        })
                        .collect();
                    let out = e.claims(&batch).expect("claims");
                    assert_eq!(out.len(), batch.len());
                    for (r, o) in batch.iter().zip(out) {
                        match o {
                            ClaimOutcome::Paid(c) => paid.push((r.user, c)),
                            o => panic!("{} got {o:?} on a first claim", r.user),
                        }
                    }
                }
                assert!(e.wait_replicas(1, Duration::from_secs(2)).expect("WAIT") >= 1);
                paid
            })
        })
        .collect();
    let mut paid: Vec<(UserId, Cents)> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a claiming thread"))
        .collect();
    paid.sort_unstable();
    assert_eq!(paid.len(), 100);
    assert!(
        paid.iter().all(|(_, c)| c.0 >= 1),
        "every share is a cent at least"
    );
    assert_eq!(paid.iter().map(|(_, c)| c.0).sum::<u64>(), amount);
    let s = e.packet(id).expect("state").expect("there");
    assert_eq!(s.remaining, Cents(0));
    assert_eq!(s.claims, paid, "the engine's claims are the answers given");
}

#[test]
fn a_storm_of_repeat_claims_pays_once_with_one_amount() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let targets = users(3_000, 4);
    let p = packet(&mut e, 1_000, &targets, now_ms() + 60_000);
    e.create_packet(&p).expect("create");
    let (id, user) = (p.id, targets[2]);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let mut e = engine(c);
            thread::spawn(move || {
                let mut out = Vec::new();
                for _ in 0..10 {
                    let batch = vec![
                        ClaimReq {
                            packet: id,
                            user,
                            now_ms: now_ms(),
                        };
                        5
                    ];
                    out.extend(e.claims(&batch).expect("claims"));
                }
                out
            })
        })
        .collect();
    let all: Vec<ClaimOutcome> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a storming thread"))
        .collect();
    assert_eq!(all.len(), 150);
    let paid: Vec<_> = all
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Paid(_)))
        .collect();
    assert_eq!(paid.len(), 1, "exactly one paid claim: {all:?}");
    let cents = paid[0].cents();
    assert!(cents.0 >= 1);
    for o in &all {
        assert!(
            matches!(o, ClaimOutcome::Paid(_) | ClaimOutcome::Repeat(_)),
            "{o:?}"
        );
        assert_eq!(o.cents(), cents, "every answer has the same amount");
    }
    let s = e.packet(id).expect("state").expect("there");
    assert_eq!(s.claims, vec![(user, cents)]);
    assert_eq!(s.remaining.0, 1_000 - cents.0);
    assert_eq!(s.repeats, 149);
}

#[test]
fn strangers_unknown_and_expired_packets_get_zero() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let targets = users(4_000, 2);
    let live = packet(&mut e, 200, &targets, now_ms() + 60_000);
    let gone = packet(&mut e, 200, &targets, now_ms() - 1);
    e.create_packet(&live).expect("create live");
    e.create_packet(&gone).expect("create expired");
    let never = PacketId(e.reserve_packet_ids(1).expect("an id").start);
    let now = now_ms();
    let out = e
        .claims(&[
            ClaimReq {
                packet: live.id,
                user: UserId(4_999),
                now_ms: now,
            },
            ClaimReq {
                packet: never,
                user: targets[0],
                now_ms: now,
            },
            ClaimReq {
                packet: gone.id,
                user: targets[0],
                now_ms: now,
            },
            // The live one at (and after) its expiry instant.
            ClaimReq {
                packet: live.id,
                user: targets[1],
                now_ms: live.expires_ms,
            },
        ])
        .expect("claims");
    assert_eq!(
        out,
        [
            ClaimOutcome::Stranger,
            ClaimOutcome::Unknown,
            ClaimOutcome::Expired,
            ClaimOutcome::Expired
        ]
    );
    assert!(out.iter().all(|o| o.cents() == Cents(0)));
    assert_eq!(e.packet(never).expect("state"), None);
    let s = e.packet(live.id).expect("state").expect("there");
    assert!(s.claims.is_empty());
    assert_eq!(s.remaining, Cents(200));
}

#[test]
fn expiry_refunds_the_rest_once_and_the_books_balance() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let targets = users(5_000, 5);
    let expires_ms = now_ms() + 60_000;
    let p = packet(&mut e, 5_000, &targets, expires_ms);
    e.create_packet(&p).expect("create");
    let claimed = e
        .claims(&[
            ClaimReq {
                packet: p.id,
                user: targets[0],
                now_ms: expires_ms - 10,
            },
            ClaimReq {
                packet: p.id,
                user: targets[3],
                now_ms: expires_ms - 10,
            },
        ])
        .expect("claims");
    let paid: u64 = claimed.iter().map(|o| o.cents().0).sum();
    assert!(paid >= 2);
    assert_eq!(e.expire(p.id, expires_ms - 1).expect("expire early"), None);
    let refund = e
        .expire(p.id, expires_ms)
        .expect("expire")
        .expect("a refund");
    assert_eq!(refund.0, 5_000 - paid);
    assert_eq!(e.expire(p.id, expires_ms + 5).expect("expire again"), None);
    // A node whose clock is behind cannot pay after the refund.
    let late = e
        .claims(&[ClaimReq {
            packet: p.id,
            user: targets[1],
            now_ms: expires_ms - 1_000,
        }])
        .expect("a late claim");
    assert_eq!(late, [ClaimOutcome::Expired]);
    let s = e.packet(p.id).expect("state").expect("there");
    assert_eq!(s.refunded, Some(refund));
    assert_eq!(s.remaining, Cents(0));
    let claims: u64 = s.claims.iter().map(|(_, c)| c.0).sum();
    assert_eq!(claims + refund.0 + s.remaining.0, s.amount.0);
    assert_eq!(s.claims.len(), 2);

    // A packet claimed in full refunds 0, once; an unknown one nothing.
    let q = packet(&mut e, 2, &targets[..2], expires_ms);
    e.create_packet(&q).expect("create");
    e.claims(&[
        ClaimReq {
            packet: q.id,
            user: targets[0],
            now_ms: 0,
        },
        ClaimReq {
            packet: q.id,
            user: targets[1],
            now_ms: 0,
        },
    ])
    .expect("claims");
    assert_eq!(e.expire(q.id, expires_ms).expect("expire"), Some(Cents(0)));
    assert_eq!(e.expire(q.id, expires_ms).expect("expire"), None);
    let never = PacketId(e.reserve_packet_ids(1).expect("an id").start);
    assert_eq!(
        e.expire(never, u64::MAX >> 12).expect("expire unknown"),
        None
    );
}

#[test]
fn concurrent_leases_never_exceed_the_total() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let total = 1_000;
    let epoch = e.set_budget(600, total).expect("set the budget");
    let b = e.budget().expect("budget");
    assert_eq!((b.epoch, b.qps, b.total, b.leased), (epoch, 600, total, 0));
    let handles: Vec<_> = (1..=3u32)
        .map(|node| {
            let mut e = engine(c);
            thread::spawn(move || {
                let mut got = 0;
                for seq in 1.. {
                    let l = e.lease(node, seq, 37, now_ms()).expect("lease");
                    assert_eq!(l.epoch, epoch);
                    assert!(l.leased <= l.total, "{l:?}");
                    assert!((1..=3).contains(&l.live_nodes), "{l:?}");
                    // The same request again: the same grant, nothing more.
                    let again = e.lease(node, seq, 37, now_ms()).expect("lease again");
                    assert_eq!(again.granted, l.granted, "a retried lease");
                    got += l.granted;
                    if l.granted == 0 {
                        // A late retry of an older request gets nothing.
                        let old = e.lease(node, seq - 1, 37, now_ms()).expect("old lease");
                        assert_eq!(old.granted, 0);
                        break;
                    }
                }
                got
            })
        })
        .collect();
    let granted: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("a leasing thread"))
        .sum();
    assert_eq!(granted, total, "every envelope leased once, none more");
    let b = e.budget().expect("budget");
    assert_eq!(b.leased, total);
    // A new budget is a new epoch with nothing leased.
    let next = e.set_budget(600, 10).expect("set again");
    assert_eq!(next, epoch + 1);
    let l = e.lease(1, 1_000, 50, now_ms()).expect("lease");
    assert_eq!((l.epoch, l.granted, l.leased), (next, 10, 10));
}

fn note(packet: u32, expires_s: u64) -> PushNote {
    PushNote {
        packet: PacketId(packet),
        amount: Cents(100),
        claimants: 2,
        targets: [UserId(6_000), UserId(6_001), UserId(0)],
        expires_s,
    }
}

#[test]
fn logins_get_the_mailbox_and_routes_find_the_node() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let now = now_ms();
    let soon = now / 1000 + 600;
    let (u, v, w) = (UserId(6_000), UserId(6_001), UserId(6_002));
    let n1 = note(1, soon);
    let n2 = note(2, soon + 1);
    // Offline: the mailbox keeps it.
    assert_eq!(
        e.route_push(u, &n1, 16).expect("route"),
        Routed {
            online_at: None,
            dropped: 0
        }
    );
    // An expired note is pruned at login.
    e.route_push(w, &note(9, now / 1000 - 5), 16)
        .expect("route");
    let got = e
        .logins(&[(u, now), (v, now), (w, now)], 7)
        .expect("logins");
    assert_eq!(got, vec![vec![n1], vec![], vec![]]);
    // Online now: the route names the node, and the mailbox keeps it too.
    assert_eq!(e.route_push(u, &n2, 16).expect("route").online_at, Some(7));
    assert!(e.delivered(u, &n1).expect("delivered"));
    assert!(!e.delivered(u, &n1).expect("delivered twice"));
    // A login elsewhere (node 8) moves the user; node 7's logout is stale.
    assert_eq!(e.logins(&[(u, now)], 8).expect("login"), vec![vec![n2]]);
    assert!(!e.logout(u, 7).expect("stale logout"));
    assert_eq!(e.route_push(u, &n2, 16).expect("route").online_at, Some(8));
    assert!(e.logout(u, 8).expect("logout"));
    assert_eq!(e.route_push(u, &n2, 16).expect("route").online_at, None);

    // The cap drops the earliest-expiring notes and says how many.
    let notes: Vec<PushNote> = (0..5).map(|i| note(100 + i, soon + u64::from(i))).collect();
    let mut dropped = 0;
    for n in &notes {
        dropped += e.route_push(v, n, 3).expect("route").dropped;
    }
    assert_eq!(dropped, 2);
    assert_eq!(
        e.logins(&[(v, now)], 7).expect("login"),
        vec![notes[2..].to_vec()]
    );
}

#[test]
fn pipelined_routes_pushes_deliveries_and_logouts_do_what_one_by_one_calls_do() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let now = now_ms();
    let soon = now / 1000 + 600;
    let node = 911;
    // Enough users for their keys to sit on every primary.
    let all = users(6_100, 40);
    let (online, offline) = all.split_at(20);
    let batch: Vec<(UserId, u64)> = online.iter().map(|&u| (u, now)).collect();
    e.logins(&batch, node).expect("logins");
    let n = note(300, soon);
    let routed = e.route_pushes(&all, &n, 16).expect("routes");
    assert_eq!(routed.len(), all.len(), "one answer per user, in order");
    for (u, r) in all.iter().zip(&routed) {
        let want = online.contains(u).then_some(node);
        assert_eq!((r.online_at, r.dropped), (want, 0), "user {u:?}");
    }
    // Routed again (a retried round): the same answers, nothing dropped.
    assert_eq!(e.route_pushes(&all, &n, 16).expect("routes again"), routed);
    // The cap still drops the earliest-expiring notes and says how many.
    let capped = UserId(6_200);
    let dropped: u32 = (0..5)
        .map(|i| {
            let r = e
                .route_pushes(&[capped], &note(400 + i, soon + u64::from(i)), 3)
                .expect("route");
            r[0].dropped
        })
        .sum();
    assert_eq!(dropped, 2);
    // The pushes of the online users reach their node's stream, in order.
    let pushes: Vec<(u32, UserId)> = online.iter().map(|&u| (node, u)).collect();
    e.send_pushes(&pushes, &n).expect("pushes");
    let mut reader = engine(c);
    let got = reader
        .read_pushes(node, "node-911", Duration::from_millis(500), 100)
        .expect("read");
    assert_eq!(
        got.iter()
            .map(|p| (p.user, p.note.packet))
            .collect::<Vec<_>>(),
        online.iter().map(|&u| (u, n.packet)).collect::<Vec<_>>()
    );
    let ids: Vec<String> = got.iter().map(|p| p.id.clone()).collect();
    reader.ack_pushes(node, &ids).expect("ack");
    // Delivered: out of every mailbox, once.
    let delivered: Vec<(UserId, PushNote)> = all.iter().map(|&u| (u, n)).collect();
    assert_eq!(e.delivered_many(&delivered).expect("delivered"), 40);
    assert_eq!(e.delivered_many(&delivered).expect("delivered twice"), 0);
    let mail = e.logins(&[(offline[0], now)], node).expect("login");
    assert_eq!(mail, vec![vec![]], "the mailbox is empty");
    // Logouts in one pipeline: only those online at this node leave, once;
    // one who logged in elsewhere since stays.
    e.logins(&[(online[0], now)], node + 1)
        .expect("login elsewhere");
    assert_eq!(e.logouts(online, node).expect("logouts"), 19);
    assert_eq!(e.logouts(online, node).expect("logouts again"), 0);
    let routed = e
        .route_pushes(online, &note(301, soon), 16)
        .expect("routes");
    assert_eq!(routed[0].online_at, Some(node + 1));
    assert!(routed[1..].iter().all(|r| r.online_at.is_none()));
}

#[test]
fn stream_pushes_are_read_acked_and_reread_after_a_restart() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let node = 900;
    let mut sender = engine(c);
    let mut first = engine(c);
    // Nothing yet: a bounded block, then nothing.
    let t = Instant::now();
    assert!(
        first
            .read_pushes(node, "node-900", Duration::from_millis(150), 10)
            .expect("read")
            .is_empty()
    );
    assert!(t.elapsed() >= Duration::from_millis(100), "it blocked");
    let sent: Vec<(UserId, PushNote)> = (0..3)
        .map(|i| (UserId(7_000 + i), note(200 + i, 4_000_000_000)))
        .collect();
    for (u, n) in &sent {
        sender.send_push(node, *u, n).expect("send");
    }
    let got = first
        .read_pushes(node, "node-900", Duration::from_millis(500), 10)
        .expect("read");
    assert_eq!(
        got.iter().map(|p| (p.user, p.note)).collect::<Vec<_>>(),
        sent
    );
    first
        .ack_pushes(node, &[got[0].id.clone()])
        .expect("ack the first");
    drop(first);

    // "Restarted": a new engine first gets what was read and not acked.
    let mut second = engine(c);
    let again = second
        .read_pushes(node, "node-900", Duration::from_millis(500), 10)
        .expect("re-read");
    assert_eq!(again, got[1..].to_vec());
    let ids: Vec<String> = again.iter().map(|p| p.id.clone()).collect();
    second.ack_pushes(node, &ids).expect("ack");
    assert!(
        second
            .read_pushes(node, "node-900", Duration::from_millis(100), 10)
            .expect("read")
            .is_empty()
    );
    // New pushes after the pending ones.
    sender
        .send_push(node, UserId(7_010), &note(210, 4_000_000_000))
        .expect("send");
    let last = second
        .read_pushes(node, "node-900", Duration::from_millis(500), 10)
        .expect("read");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].user, UserId(7_010));
    // A malformed entry is acknowledged, skipped and counted.
    let raw = redis::cluster::ClusterClient::new(c.urls()).expect("a raw client");
    let mut raw = raw.get_connection().expect("a raw connection");
    redis::cmd("XADD")
        .arg(hongbao::cluster::keys::push_stream(node))
        .arg("*")
        .arg("u")
        .arg("1")
        .arg("n")
        .arg("not a note")
        .exec(&mut raw)
        .expect("XADD by hand");
    let none = second
        .read_pushes(node, "node-900", Duration::from_millis(500), 10)
        .expect("read past a malformed entry");
    assert!(none.is_empty());
    assert_eq!(second.malformed_notes(), 1);
    drop(second);
    let mut third = engine(c);
    assert!(
        third
            .read_pushes(node, "node-900", Duration::from_millis(100), 10)
            .expect("read")
            .len()
            == 1,
        "the one pending (unacked) new push is re-read; the malformed one was acked"
    );
}

#[test]
fn wait_confirms_writes_on_a_replica() {
    let Some(c) = cluster() else { return };
    let _g = shared_lock();
    let mut e = engine(c);
    let p = packet(&mut e, 10, &users(8_000, 2), now_ms() + 60_000);
    e.create_packet(&p).expect("create");
    e.claims(&[ClaimReq {
        packet: p.id,
        user: UserId(8_000),
        now_ms: now_ms(),
    }])
    .expect("claim");
    assert!(e.wait_replicas(1, Duration::from_secs(2)).expect("WAIT") >= 1);
}

#[test]
fn no_cluster_at_start_names_the_fix() {
    // A port of this binary's range where nothing listens.
    let port = PORTS
        .clone()
        .rev()
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port");
    let config = EngineConfig::parse(&format!("127.0.0.1:{port}")).expect("parse");
    match Engine::connect(&config) {
        Err(e @ EngineError::Unavailable(_)) => {
            let text = e.to_string();
            assert!(text.contains("tools/cluster.sh up"), "{text}");
            assert!(e.is_retryable());
        }
        other => panic!("no cluster must be Unavailable, got {other:?}"),
    }
}

#[test]
fn claims_resume_after_a_primary_is_killed_and_nothing_acknowledged_is_lost() {
    let Some(c) = cluster() else { return };
    let _all = EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner());
    let mut e = engine(c);
    // Packets over every primary, each half claimed and confirmed.
    let targets = users(9_000, 4);
    let expires_ms = now_ms() + 120_000;
    let mut before = Vec::new();
    for _ in 0..12 {
        let p = packet(&mut e, 400, &targets, expires_ms);
        e.create_packet(&p).expect("create");
        let out = e
            .claims(&[
                ClaimReq {
                    packet: p.id,
                    user: targets[0],
                    now_ms: now_ms(),
                },
                ClaimReq {
                    packet: p.id,
                    user: targets[1],
                    now_ms: now_ms(),
                },
            ])
            .expect("claims");
        before.push((p.id, out));
    }
    assert!(e.wait_replicas(1, Duration::from_secs(2)).expect("WAIT") >= 1);

    let killed = c.kill_primary();
    let t = Instant::now();
    // Every packet's repeats must get the same amounts, and its two other
    // targets their shares; retried while the cluster fails over.
    let deadline = t + Duration::from_secs(30);
    let mut unavailable = 0;
    for (id, first) in &before {
        let batch: Vec<ClaimReq> = targets
            .iter()
            .map(|&user| ClaimReq {
                packet: *id,
                user,
                now_ms: now_ms(),
            })
            .collect();
        let out = loop {
            match e.claims(&batch) {
                Ok(out) => break out,
                Err(err) if err.is_retryable() && Instant::now() < deadline => {
                    unavailable += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(err) => panic!(
                    "claims on {id} after killing {killed}: {err}\n{}",
                    c.status()
                ),
            }
        };
        assert_eq!(out[0], ClaimOutcome::Repeat(first[0].cents()), "{id}");
        assert_eq!(out[1], ClaimOutcome::Repeat(first[1].cents()), "{id}");
        let total: u64 = out.iter().map(|o| o.cents().0).sum();
        assert_eq!(total, 400, "{id}: {out:?}");
    }
    eprintln!(
        "primary {killed} killed: claims answered again after {:?} ({unavailable} unavailable answers; cluster-node-timeout 2000 ms)",
        t.elapsed()
    );
    c.restart(killed);
    assert!(e.wait_replicas(1, Duration::from_secs(5)).expect("WAIT") >= 1);
}
