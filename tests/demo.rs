//! `hongbao demo` end to end: the real binary starting its own server,
//! monitor and flooders on loopback, at small rates.
//!
//! Owns: what a user of the demo relies on — a run completes with its
//! report, summary, latency logs and a passing audit; every figure in the
//! summary agrees with what was planned; every child is gone when the demo
//! exits, after a finished run and after Ctrl-C alike; a run the machine
//! cannot hold is refused with the fix. Must not: assert speed (the rates
//! here are a fraction of what one core does).

mod util;

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{browser, scratch_dir, signal, wait_for};

/// One demo at a time: each picks free local ports for its children when
/// it starts, and two starting together could pick the same ones.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts `hongbao demo ARGS --out OUT`, its output in `OUT.log`.
fn demo(out: &Path, args: &[&str]) -> Child {
    let log = std::fs::File::create(out.with_extension("log")).expect("creating the demo's log");
    util::hongbao(&["demo"])
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .expect("spawning hongbao demo")
}

/// Waits for the demo to exit, killing it (its pid only) past `within`.
fn wait_exit(child: &mut Child, out: &Path, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the demo") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo did not exit within {within:?}; its output:\n{}",
                std::fs::read_to_string(out.with_extension("log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn summary(out: &Path) -> Value {
    let text = std::fs::read(out.join("summary.json")).expect("summary.json written");
    serde_json::from_slice(&text).expect("summary.json is JSON")
}

fn alive(pid: u64) -> bool {
    // Signal 0 checks existence; an exited child the demo reaped is gone.
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill with signal 0 sends nothing and touches no memory.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn assert_children_gone(s: &Value) {
    let children = s["children"].as_array().expect("children listed");
    let names: Vec<&str> = children.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["server", "flood-0", "flood-1", "monitor"], "{s}");
    for c in children {
        let pid = c["pid"].as_u64().expect("pid");
        assert!(!alive(pid), "{} (pid {pid}) outlived the demo", c["name"]);
    }
}

#[test]
fn a_short_demo_completes_with_its_report_and_a_passing_audit() {
    let _one = one_at_a_time();
    let out = scratch_dir("demo-short");
    let mut child = demo(
        &out,
        &[
            "--users",
            "600",
            "--phases",
            "1000x3s,2000x3s",
            "--packets-per-sec",
            "10",
        ],
    );
    let status = wait_exit(&mut child, &out, Duration::from_secs(120));
    let log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
    assert!(status.success(), "demo failed ({status}):\n{log}");

    // What it printed: the checks first, progress, then the table and paths.
    assert!(log.contains("checking the machine"), "{log}");
    assert!(log.contains("open files"), "{log}");
    assert!(
        log.contains("phase 1/3 connect") || log.contains("phase 2/3"),
        "{log}"
    );
    assert!(log.contains("audit     OK"), "{log}");
    assert!(
        log.contains(&format!("report:  {}", out.join("report.html").display())),
        "{log}"
    );
    // Its last lines open with the verdict, the details after it.
    let (_, end) = log
        .rsplit_once("stopping: monitor")
        .unwrap_or_else(|| panic!("no stopping line:\n{log}"));
    let end = end
        .split_once('\n')
        .map_or("", |(_, rest)| rest)
        .trim_start();
    let verdict = end.split("\n\n").next().unwrap_or_default();
    assert!(
        verdict.starts_with("verdict   ✓ completed; every phase held its rate; audit OK\nran       600 users (600 logged in) over 2 flooders, 1 server"),
        "the end does not open with the verdict:\n{end}"
    );
    assert_eq!(verdict.matches("✓ held").count(), 2, "{verdict}");
    assert!(verdict.contains("\nmoney     ledger: "), "{verdict}");
    assert!(
        verdict
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("audit     OK: the books balance"),
        "{verdict}"
    );
    assert!(
        end.find("verdict").unwrap_or(usize::MAX) < end.find("\nconnect   ").unwrap_or(0),
        "the details come after the verdict:\n{end}"
    );

    let s = summary(&out);
    assert_eq!(s["completed"], true, "{s}");
    assert_eq!(s["audit"]["ok"], true, "{s}");
    assert_eq!(s["connect"]["logged_in"], 600, "{s}");
    let phases = s["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2);
    for (p, qps) in phases.iter().zip([1000.0, 2000.0]) {
        let c = &p["client"];
        // Open loop at a rate far below one core: every second carries the
        // planned rate exactly (the slot rule), and each request is answered.
        let sent = c["sent_per_sec"].as_f64().unwrap();
        assert!((sent - qps).abs() <= qps / 100.0, "{p}");
        let answered = c["answered_per_sec"].as_f64().unwrap();
        assert!((answered - sent).abs() <= qps / 50.0, "{p}");
        assert_eq!(c["errors"], 0, "{p}");
        assert_eq!(c["unsent"], 0, "{p}");
        assert!(
            c["latency"]["count"].as_u64().unwrap() >= 3 * qps as u64 * 99 / 100,
            "{p}"
        );
        let server = &p["server"];
        assert_eq!(server["seconds"], 3, "{p}");
        assert!(
            server["shakes_per_sec"].as_f64().unwrap() > qps * 0.9,
            "{p}"
        );
        assert_eq!(server["bad_frames"], 0, "{p}");
        assert_eq!(server["conns_open"], 600, "{p}");
        assert!(server["cpu_us_per_shake"].as_f64().is_some(), "{p}");
    }
    // Money moved and was acknowledged: envelopes at 200/s and packets at
    // 10/s, every acknowledgement found in the ledger by the audit.
    let audit = &s["audit"]["report"];
    assert!(audit["acks_grants"].as_u64().unwrap() > 0, "{s}");
    assert!(audit["acks_claims"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["money"]["client_envelopes"], audit["acks_grants"], "{s}");
    assert_eq!(
        audit["totals"]["cents_granted"], s["money"]["client_envelope_cents"],
        "every granted envelope reached a client: {s}"
    );

    // The verdict in summary.json, beside the keys it always had.
    let v = &s["verdict"];
    assert_eq!(v["ok"], true, "{s}");
    assert_eq!(v["audit_ok"], true, "{s}");
    assert_eq!(v["ran"]["users"], 600, "{s}");
    assert_eq!(v["ran"]["nodes"], 1, "{s}");
    assert_eq!(v["phases"].as_array().map(Vec::len), Some(2), "{s}");
    assert_eq!(
        v["money"]["cents_granted"], audit["totals"]["cents_granted"],
        "{s}"
    );

    // The files of the run.
    let report = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(report.contains("<svg"), "the report has charts");
    assert!(
        report.find("id=\"verdict\"").unwrap_or(usize::MAX)
            < report.find("<h2>Completeness").unwrap_or(0),
        "the verdict comes before the details"
    );
    browser::verdict_on_the_first_screen(&out, "OK: the books balance");
    for file in [
        "series.jsonl",
        "series.csv",
        "server.hlog",
        "flood-0.hlog",
        "flood-1.hlog",
        "flood-0.json",
        "acks-0.log",
        "data/ledger.log",
        "logs/server.log",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    assert_children_gone(&s);
}

#[test]
fn ctrl_c_stops_every_child_and_still_writes_the_report() {
    let _one = one_at_a_time();
    let out = scratch_dir("demo-interrupted");
    let mut child = demo(&out, &["--users", "400", "--phases", "1000x60s"]);
    // The flooders write their latency logs once shaking has begun.
    wait_for(
        "the flooders to start shaking",
        Duration::from_secs(60),
        || {
            if let Some(status) = child.try_wait().expect("waiting") {
                panic!(
                    "the demo exited early ({status}):\n{}",
                    std::fs::read_to_string(out.with_extension("log")).unwrap_or_default()
                );
            }
            (out.join("flood-0.hlog").exists() && out.join("flood-1.hlog").exists()).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    signal(child.id(), libc::SIGINT);
    let status = wait_exit(&mut child, &out, Duration::from_secs(60));
    let log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(
        asked.elapsed() < Duration::from_secs(45),
        "stopping took {:?}",
        asked.elapsed()
    );
    let s = summary(&out);
    assert_eq!(s["completed"], false);
    assert_eq!(s["failure"], "interrupted");
    // What was acknowledged before the interruption is in the ledger.
    assert_eq!(s["audit"]["ok"], true, "{s}");
    assert!(out.join("report.html").exists(), "{log}");
    assert_children_gone(&s);
}

#[test]
fn check_prints_the_plan_and_starts_nothing_and_too_many_users_are_refused() {
    let _one = one_at_a_time();
    let out = scratch_dir("demo-check");
    let mut child = demo(&out, &["--check"]);
    let status = wait_exit(&mut child, &out, Duration::from_secs(30));
    let log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("open files") && log.contains("LIMITS"),
        "{log}"
    );
    assert!(log.contains("plan: "), "{log}");
    assert!(!out.join("logs").exists(), "--check started something");

    let out = scratch_dir("demo-refused");
    let mut child = demo(&out, &["--users", "4000000000"]);
    let status = wait_exit(&mut child, &out, Duration::from_secs(30));
    let log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("--users 4000000000"), "{log}");
    assert!(log.contains("hongbao-tune.sh --apply"), "{log}");
}
