//! Sent packets end to end: pushes, claims across cores, at-most-once, and
//! answers that wait for the ledger.
//!
//! Owns: the server's packet behaviour over real TCP with a real ledger:
//! a push reaches an online target at once and an offline one at login; a
//! storm of repeated claims by one user from many connections (on every
//! core) pays once and answers the same amount every time; the claims of one
//! packet arriving from all cores at once add up to its amount exactly; a
//! grant or claim acknowledged is in the ledger. Must not: assert a timing.

mod util;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use hongbao::ledger::{self, Books};
use hongbao::server::{ServerConfig, ServerHandle, start};
use util::{Client, WAIT, claim_request, config, http_get, scratch_dir, shake_request, wait_for};

const PUSH: u16 = 4;
const CLAIM_ANSWER: u16 = 6;

fn serve(name: &str, threads: usize) -> (ServerHandle, std::path::PathBuf) {
    serve_with(name, threads, ServerConfig::default().user_conns_max)
}

/// As `serve`, letting one user hold `user_conns_max` connections.
fn serve_with(
    name: &str,
    threads: usize,
    user_conns_max: usize,
) -> (ServerHandle, std::path::PathBuf) {
    let dir = scratch_dir(name);
    let server = start(&ServerConfig {
        threads: Some(threads),
        no_http: false,
        data_dir: Some(dir.clone()),
        user_conns_max,
        ..config()
    })
    .unwrap_or_else(|e| panic!("starting the server: {e}"));
    (server, dir)
}

/// Makes one packet through the control and returns its id.
fn packet(server: &ServerHandle, query: &str) -> u32 {
    let (status, body) = http_get(
        server.http_addr().expect("http on"),
        &format!("/packet?{query}"),
    );
    assert_eq!(status, 200, "{body}");
    body["packet"].as_u64().expect("packet id") as u32
}

/// Reads frames until a claim answer for `packet` comes; returns its cents.
fn claim_answer(c: &mut Client, packet: u32) -> u32 {
    loop {
        let (cmd, f) = c.frame();
        if cmd == CLAIM_ANSWER && f[0] == packet {
            return f[1];
        }
    }
}

/// Replays the ledger read-only (the server may be running).
fn books(dir: &std::path::Path) -> Books {
    let mut b = Books::with_history();
    ledger::file::scan(&dir.join(ledger::FILE_NAME), &mut b).expect("scanning the ledger");
    b
}

#[test]
fn a_push_reaches_an_online_user_at_once_and_an_offline_one_at_login() {
    let (server, _dir) = serve("packets-push", 2);
    let mut online = Client::connect(server.addr());
    online.login(11);
    // Whether the login reaches the user's home core before the packet or
    // after, the push arrives: at once, or from the mailbox at the login.
    let id = packet(&server, "amount=100&users=11,12");
    let (cmd, f) = online.frame();
    assert_eq!(cmd, PUSH);
    assert_eq!(
        f,
        vec![id, 100, 2, 11, 12, 0],
        "id, amount, claimants, first three users"
    );

    let mut later = Client::connect(server.addr());
    later.login(12);
    let (cmd, f) = later.frame();
    assert_eq!(
        (cmd, f[0]),
        (PUSH, id),
        "kept in the mailbox until the login"
    );
    for (c, _user) in [(&mut online, 11), (&mut later, 12)] {
        c.send(&claim_request(id));
    }
    let a = claim_answer(&mut online, id);
    let b = claim_answer(&mut later, id);
    assert!(a >= 1 && b >= 1);
    assert_eq!(a + b, 100, "the last claimant takes the rest");
    let t = server.shutdown().total;
    assert_eq!(t.server.pushes, 2);
    assert!(
        (1..=2).contains(&t.server.pushes_queued),
        "user 12 was offline"
    );
    assert_eq!((t.server.claims_paid, t.server.cents_claimed), (2, 100));
}

#[test]
fn a_storm_of_repeated_claims_from_many_connections_pays_once() {
    const CONNS: usize = 16;
    // One user on 16 connections at once: over the default cap
    // (`--user-conns-max`), which would close the oldest.
    let (server, dir) = serve_with("packets-storm", 2, CONNS);
    let id = packet(&server, "amount=300&users=5,6,7");
    const CLAIMS: usize = 25;
    let barrier = Arc::new(Barrier::new(CONNS));
    let addr = server.addr();
    let threads: Vec<_> = (0..CONNS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.login(5);
                barrier.wait();
                let storm: Vec<u8> = (0..CLAIMS).flat_map(|_| claim_request(id)).collect();
                c.send(&storm);
                (0..CLAIMS)
                    .map(|_| claim_answer(&mut c, id))
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let answers: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let distinct: HashSet<u32> = answers.iter().copied().collect();
    assert_eq!(answers.len(), CONNS * CLAIMS);
    assert_eq!(
        distinct.len(),
        1,
        "every answer is the one share: {distinct:?}"
    );
    let share = *distinct.iter().next().unwrap();
    assert!((1..=298).contains(&share));
    // Exactly one payment in the ledger, of that share.
    let b = books(&dir);
    let claims = &b.history().unwrap().claims;
    assert_eq!(claims.len(), 1);
    assert_eq!(
        claims[&(hongbao::ids::PacketId(id), hongbao::ids::UserId(5))].0,
        u64::from(share)
    );
    let t = server.shutdown().total;
    assert_eq!(t.server.claims_paid, 1);
    assert_eq!(t.server.claims_repeat as usize, CONNS * CLAIMS - 1);
}

#[test]
fn claims_of_one_packet_from_all_cores_at_once_add_up_to_its_amount() {
    let (server, dir) = serve("packets-all-cores", 2);
    const USERS: u32 = 100;
    const AMOUNT: u32 = 10_000;
    let users: Vec<String> = (1..=USERS).map(|u| u.to_string()).collect();
    let id = packet(
        &server,
        &format!("amount={AMOUNT}&users={}", users.join(",")),
    );
    let barrier = Arc::new(Barrier::new(USERS as usize));
    let addr = server.addr();
    let threads: Vec<_> = (1..=USERS)
        .map(|u| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.login(u);
                barrier.wait();
                c.send(&claim_request(id));
                claim_answer(&mut c, id)
            })
        })
        .collect();
    let shares: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        shares.iter().all(|&s| s >= 1),
        "each gets a cent: {shares:?}"
    );
    assert_eq!(shares.iter().sum::<u32>(), AMOUNT);
    let summary = server.shutdown();
    assert_eq!(summary.total.server.claims_paid, u64::from(USERS));
    let b = books(&dir);
    assert_eq!(b.totals().cents_claimed, u64::from(AMOUNT));
    b.check_conservation().unwrap();
}

#[test]
fn an_acknowledged_grant_is_in_the_ledger() {
    let (server, dir) = serve("packets-grant", 1);
    let (status, _) = http_get(server.http_addr().unwrap(), "/yaohongbao?qps=1000&sum=20");
    assert_eq!(status, 200);
    wait_for("the envelopes to reach the ring", WAIT, || {
        (server.envelopes_in_rings() == 20).then_some(())
    });
    let mut c = Client::connect(server.addr());
    c.login(3);
    let mut granted = Vec::new();
    for _ in 0..20 {
        c.send(&shake_request(3));
        let (cmd, f) = c.frame();
        assert_eq!((cmd, f[1]), (3, 14), "shake answered with an envelope");
        granted.push((f[2], f[3]));
    }
    // The server still runs: every acknowledged grant is on disk already.
    let b = books(&dir);
    let grants = &b.history().unwrap().grants;
    for (envelope, cents) in granted {
        let (user, c) = grants[&hongbao::ids::EnvelopeId(envelope)];
        assert_eq!((user.0, c.0), (3, u64::from(cents)));
    }
    server.shutdown();
}
