//! The books agree: what the server says it moved equals what its ledger
//! holds.
//!
//! Owns: one run of a real `hongbao server` with a ledger, under users who
//! shake and claim while envelopes and packets are generated, then a quiet
//! spell and a clean stop. Its `/status`, its `/metrics` (read once the
//! run is quiet) and its shutdown summary must each equal, figure by
//! figure, the totals `hongbao audit --json` reads from the ledger after
//! the stop. Must not: assert a timing (it waits for the server to be quiet
//! by polling, bounded).

mod util;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use util::{Spawned, http_get, http_get_text, run_to_exit, scratch_dir, shake_and_claim, wait_for};

const USERS: u32 = 16;

/// The money and envelope figures a server publishes, in the ledger's
/// terms (the names of `hongbao audit --json`'s totals).
fn status_books(total: &Value) -> HashMap<&'static str, u64> {
    let s = &total["server"];
    let g = &total["generator"];
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    HashMap::from([
        ("envelopes_generated", n(g, "recorded")),
        ("cents_generated", n(g, "cents_recorded")),
        ("envelopes_granted", n(s, "got")),
        ("cents_granted", n(s, "cents_granted")),
        ("envelopes_returned", n(s, "envelopes_returned")),
        ("cents_returned", n(s, "cents_returned")),
        ("packets_created", n(g, "packets_created")),
        ("cents_packets", n(g, "cents_packets")),
        ("claims", n(s, "claims_paid")),
        ("cents_claimed", n(s, "cents_claimed")),
        ("cents_refunded", n(s, "cents_refunded")),
        (
            "envelopes_outstanding",
            n(total, "envelopes_in_rings") + n(total, "envelopes_ahead"),
        ),
    ])
}

/// The same figures from the Prometheus document.
fn metrics_books(text: &str) -> HashMap<&'static str, u64> {
    let samples: HashMap<&str, f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, v)| Some((name, v.trim().parse().ok()?)))
        .collect();
    let n = |name: &str| {
        *samples
            .get(name)
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{text}")) as u64
    };
    HashMap::from([
        (
            "envelopes_generated",
            n("hongbao_server_envelopes_recorded_total"),
        ),
        ("cents_generated", n("hongbao_server_recorded_cents_total")),
        (
            "envelopes_granted",
            n("hongbao_server_shakes_total{result=\"got\"}"),
        ),
        ("cents_granted", n("hongbao_server_granted_cents_total")),
        (
            "envelopes_returned",
            n("hongbao_server_envelopes_returned_total"),
        ),
        ("cents_returned", n("hongbao_server_returned_cents_total")),
        ("packets_created", n("hongbao_server_packets_created_total")),
        ("cents_packets", n("hongbao_server_packet_cents_total")),
        ("claims", n("hongbao_server_claims_total{result=\"paid\"}")),
        ("cents_claimed", n("hongbao_server_claimed_cents_total")),
        ("cents_refunded", n("hongbao_server_refunded_cents_total")),
        (
            "envelopes_outstanding",
            n("hongbao_server_envelopes_in_rings") + n("hongbao_server_envelopes_ahead"),
        ),
    ])
}

/// The integers of `text` after `label`, in order, up to `count` of them.
fn numbers_after(text: &str, label: &str, count: usize) -> Vec<u64> {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {text}"));
    text[at + label.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(count)
        .map(|w| w.parse().expect("digits"))
        .collect()
}

/// The same figures from the shutdown summary line.
fn summary_books(summary: &str) -> HashMap<&'static str, u64> {
    // "claims C (paid P, X cents), packets N (X cents; expired E, refunded X cents)"
    let c = numbers_after(summary, "claims ", 7);
    // "envelopes recorded N (X cents) = granted N (X cents) + returned N (X
    // cents) + in rings N + ahead N"
    let e = numbers_after(summary, "envelopes recorded ", 8);
    HashMap::from([
        ("envelopes_generated", e[0]),
        ("cents_generated", e[1]),
        ("envelopes_granted", e[2]),
        ("cents_granted", e[3]),
        ("envelopes_returned", e[4]),
        ("cents_returned", e[5]),
        ("packets_created", c[3]),
        ("cents_packets", c[4]),
        ("claims", c[1]),
        ("cents_claimed", c[2]),
        ("cents_refunded", c[6]),
        ("envelopes_outstanding", e[6] + e[7]),
    ])
}

/// The ledger's own figures, from `hongbao audit --json` (which also checks
/// that the books balance and that every acknowledgement in `ack_log` is in
/// the ledger).
fn ledger_books(data: &str, ack_log: &str) -> HashMap<&'static str, u64> {
    let audit = run_to_exit(&["audit", "--data-dir", data, "--ack-log", ack_log, "--json"]);
    assert!(
        audit.status.success(),
        "audit: {}\n{}",
        audit.stdout,
        audit.stderr
    );
    let report: Value = serde_json::from_str(&audit.stdout).expect("audit --json");
    let t = &report["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k} in {report}"));
    let mut books: HashMap<&'static str, u64> = [
        "envelopes_generated",
        "cents_generated",
        "envelopes_granted",
        "cents_granted",
        "envelopes_returned",
        "cents_returned",
        "packets_created",
        "cents_packets",
        "claims",
        "cents_claimed",
        "cents_refunded",
    ]
    .into_iter()
    .map(|k| (k, n(k)))
    .collect();
    books.insert(
        "envelopes_outstanding",
        n("envelopes_generated") - n("envelopes_granted") - n("envelopes_returned"),
    );
    books
}

/// Polls `/status` until every packet has expired and its totals hold still
/// across two closed seconds: nothing is moving any more. Returns them.
fn quiet_status(http: SocketAddr) -> Value {
    let mut last: Option<(u64, HashMap<&'static str, u64>)> = None;
    wait_for("the server to be quiet", Duration::from_secs(30), || {
        let (code, status) = http_get(http, "/status");
        assert_eq!(code, 200, "{status}");
        let second = status["total"]["second"].as_u64().expect("second");
        let books = status_books(&status["total"]);
        let s = &status["total"]["server"];
        let quiet = status["batch"]["done"] == true
            && status["packets"]["done"] == true
            && s["packets_expired"] == status["total"]["generator"]["packets_created"]
            && last
                .as_ref()
                .is_some_and(|(s, b)| second >= s + 2 && *b == books);
        if quiet {
            return Some(status["total"].clone());
        }
        if last.as_ref().is_none_or(|(_, b)| *b != books) {
            last = Some((second, books));
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    })
}

#[test]
fn status_metrics_and_summary_equal_the_ledger_after_a_clean_stop() {
    let dir = scratch_dir("books");
    let data = dir.join("data").to_str().unwrap().to_string();
    let server = Spawned::on_loopback(
        2,
        &[
            "--seed",
            "7",
            "--envelopes-per-sec",
            "0",
            "--envelope-ttl",
            "1",
            "--packet-ttl",
            "2",
            "--data-dir",
            &data,
        ],
    );
    let http = server.http.expect("http on");
    // Bounded batches, so that the run goes quiet: 4,000 envelopes at
    // 2,000/s (more than the users take: some are returned at their ttl)
    // and 40 packets at 40/s, each for 3 of twice as many users as are
    // online (the shares of those offline are refunded at expiry).
    for target in [
        "/yaohongbao?qps=2000&sum=4000".to_string(),
        format!("/fahongbao?qps=40&sum=40&min=0&max={}", 2 * USERS - 1),
    ] {
        let (code, body) = http_get(http, &target);
        assert_eq!(code, 200, "{target}: {body}");
    }
    let acks = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let users: Vec<_> = (0..USERS)
        .map(|u| {
            let (acks, stop, addr) = (acks.clone(), stop.clone(), server.addr);
            std::thread::spawn(move || shake_and_claim(addr, u, &acks, &stop))
        })
        .collect();
    wait_for("the batches to end", Duration::from_secs(20), || {
        let (_, status) = http_get(http, "/status");
        (status["batch"]["done"] == true && status["packets"]["done"] == true).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for u in users {
        u.join().expect("user thread").expect("user loop");
    }

    let status = status_books(&quiet_status(http));
    let (code, text) = http_get_text(http, "/metrics");
    assert_eq!(code, 200, "{text}");
    let metrics = metrics_books(&text);
    let exited = server.terminate();
    assert!(exited.status.success(), "{exited:?}");
    let summary = summary_books(&exited.stdout);
    let ack_log = dir.join("acks.log");
    std::fs::write(&ack_log, acks.lock().unwrap().join("\n") + "\n").unwrap();
    let ledger = ledger_books(&data, ack_log.to_str().unwrap());

    assert!(
        ledger["envelopes_granted"] > 0 && ledger["claims"] > 0,
        "the run moved money: {ledger:?}"
    );
    assert!(
        ledger["envelopes_returned"] > 0 && ledger["cents_refunded"] > 0,
        "envelopes were returned and packets refunded: {ledger:?}"
    );
    assert_eq!(status, ledger, "/status against the ledger");
    assert_eq!(metrics, ledger, "/metrics against the ledger");
    assert_eq!(summary, ledger, "the summary against the ledger");
}
