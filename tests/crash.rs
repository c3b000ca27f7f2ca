//! Kill -9 under load, again and again: nothing acknowledged is lost.
//!
//! Owns: the crash loop. A real `hongbao server` with a ledger serves
//! clients that shake (envelopes flowing) and claim the packets pushed to
//! them; at a random moment it is killed with SIGKILL, restarted on the same
//! `--data-dir`, and loaded again, for 20 cycles. Every grant and claim the
//! clients were answered is kept, and at the end `hongbao audit` must find
//! the books balanced and every one of them in the ledger. Must not: assert
//! a timing (the kill moments are random, the checks are of money only).

mod util;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::{Spawned, audit_acks, count_acks, http_get, scratch_dir, shake_and_claim, signal};

const CYCLES: usize = 20;
const USERS: u32 = 16;

#[test]
fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = scratch_dir("crash-loop");
    let data_dir = dir.join("data");
    let data = data_dir.to_str().unwrap().to_string();
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--no-pin",
        "--quiet",
        "--envelopes-per-sec",
        "3000",
        // The users shake as fast as they are answered: full load.
        "--conn-qps-max",
        "0",
        "--data-dir",
        &data,
    ];
    let acks = Arc::new(Mutex::new(Vec::new()));
    // Never set: each user's loop ends when its server is killed.
    let never = Arc::new(AtomicBool::new(false));
    let mut rng = fastrand::Rng::with_seed(0x6b69_6c6c);
    let deadline = Instant::now() + Duration::from_secs(300);
    for cycle in 0..CYCLES {
        assert!(Instant::now() < deadline, "the loop is bounded");
        let server = Spawned::server(&args);
        let http = server.http.expect("http on");
        let (status, body) = http_get(
            http,
            &format!("/fahongbao?qps=300&sum=100000&min=0&max={}", USERS - 1),
        );
        assert_eq!(status, 200, "cycle {cycle}: {body}");
        let clients: Vec<_> = (0..USERS)
            .map(|u| {
                let (acks, never) = (acks.clone(), never.clone());
                let addr = server.addr;
                std::thread::spawn(move || {
                    let _ = shake_and_claim(addr, u, &acks, &never);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.u64(100..700)));
        signal(server.pid(), libc::SIGKILL);
        for c in clients {
            c.join().expect("client thread");
        }
        drop(server); // reaps the killed process
    }
    // A last, clean start and stop: the ledger replays after the last kill.
    let server = Spawned::server(&args);
    let exited = server.terminate();
    assert!(exited.status.success(), "{exited:?}");
    assert!(exited.stdout.contains("summary:"), "{}", exited.stdout);

    let acks = acks.lock().unwrap();
    let (grants, claims) = count_acks(&acks);
    assert!(
        grants > 0 && claims > 0,
        "the load moved money: {grants} grants, {claims} claims"
    );
    eprintln!("{CYCLES} kills: {grants} grants and {claims} paid claims acknowledged");
    audit_acks(&data, &acks, &dir.join("acks.log"));
}
