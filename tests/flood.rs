//! `hongbao flood` against fake servers on 127.0.0.1 that misbehave on
//! purpose, through the real binary and its JSON report.
//!
//! Owns: the flooder's behaviour when the server does not keep up. Must not:
//! assert a timing. Every run is bounded by the flooder's own deadlines and,
//! in case those fail, by a kill after `RUN_MAX`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far beyond the runs below (a few seconds each); reaching it is a failure.
const RUN_MAX: Duration = Duration::from_secs(60);

/// Accepts `users` connections, answers each login with result 0, and then
/// never reads again: a server that has stopped. Keeps the sockets open
/// until the returned handle is joined and the listener dropped.
fn stalled_server(
    users: usize,
) -> (
    std::net::SocketAddr,
    std::thread::JoinHandle<Vec<TcpStream>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener.local_addr().expect("local address");
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..users {
            let (mut s, _) = listener.accept().expect("accepting a flooder connection");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            let mut login = [0u8; 16];
            s.read_exact(&mut login).expect("reading a login frame");
            assert_eq!(&login[..4], &[0, 16, 0, 0], "a v1 login frame");
            let mut answer = vec![0, 20, 0, 1];
            answer.extend_from_slice(&login[4..12]); // any timestamp will do
            answer.extend_from_slice(&login[12..16]); // the user id
            answer.extend_from_slice(&[0, 0, 0, 0]); // result 0
            s.write_all(&answer).expect("answering the login");
            held.push(s);
        }
        held
    });
    (addr, handle)
}

#[test]
fn a_stalled_server_makes_requests_unsent_not_unbounded_memory() {
    // 1.2 million requests due, none answered: the flooder keeps at most
    // 1,048,576 awaiting answers (a cap of ~32 MiB of records) and counts the
    // rest as unsent, instead of growing its queues for as long as it runs.
    let users = 4;
    let (addr, server) = stalled_server(users);
    let json =
        std::env::temp_dir().join(format!("hongbao-flood-stalled-{}.json", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hongbao"))
        .args([
            "flood",
            "--server",
            &addr.to_string(),
            "--users",
            &users.to_string(),
        ])
        .args([
            "--rate",
            "600000",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--quiet",
        ])
        .arg("--json")
        .arg(&json)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hongbao flood");
    let deadline = Instant::now() + RUN_MAX;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the flooder") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill(); // our own child, by its pid
            let _ = child.wait();
            panic!("the flooder did not stop by itself within {RUN_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(status.success(), "flooder failed: {status:?}\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("reading the JSON report"))
            .expect("parsing the JSON report");
    let _ = std::fs::remove_file(&json);
    let window = &report["window"];
    let sent = window["sent"].as_u64().expect("window.sent");
    let unsent = window["unsent"].as_u64().expect("window.unsent");
    let answered = window["answered"].as_u64().expect("window.answered");
    assert_eq!(answered, 0, "nothing can be answered: {window}");
    assert!(
        sent <= 1 << 20,
        "sent {sent} past the in-flight cap: {window}"
    );
    assert!(
        unsent > 0,
        "requests past the cap must be counted unsent: {window}"
    );
    // Counted by when they were handled, a few of the window's last requests
    // fall in the drain second: the exact account is over every second.
    let seconds = report["per_second"].as_array().expect("per_second");
    let total = |key: &str| -> u64 { seconds.iter().map(|s| s[key].as_u64().unwrap_or(0)).sum() };
    assert_eq!(
        total("sent") + total("unsent"),
        1_200_000,
        "every scheduled request is sent or counted unsent"
    );
    assert!(total("sent") <= 1 << 20, "sent past the in-flight cap");
    // Never answered, the window's requests still count in the latency, at
    // the time waited for them: the percentiles cover every lost request.
    let lost = window["lost"].as_u64().expect("window.lost");
    assert!(lost > 0, "in-window requests were never answered: {window}");
    assert_eq!(
        report["latency_corrected"]["count"].as_u64(),
        Some(lost),
        "lost requests are in the corrected percentiles: {}",
        report["latency_corrected"]
    );
    drop(server.join().expect("fake server thread"));
}
