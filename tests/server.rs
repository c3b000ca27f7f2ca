//! The server over real TCP on 127.0.0.1: raw wire v1 bytes in, exact bytes
//! out, and the counters the server keeps about what it did.
//!
//! Owns: end-to-end behaviour of `hongbao::server::start` and of the
//! `hongbao server` binary (start line, SIGTERM summary, start-up errors).
//! Must not: assert a timing, or sleep as synchronisation. Every socket read
//! and write has a timeout and every wait a deadline (see `util`), so a hang
//! fails the test instead of stalling the run. Counters are read from the
//! summary `shutdown()` returns, or polled against a deadline, because the
//! server publishes them only once a second has closed.

mod util;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use hongbao::server::{ServerConfig, ServerHandle, Summary, start};
use socket2::{Domain, Protocol, Socket, Type};
use util::{
    Client, FIRST_ENVELOPE, GONE, GOT, IO_TIMEOUT, LOGIN_RESPONSE, NONE, OVERLOAD, ShakeAnswer,
    Spawned, WAIT, config, frame, http_get, login_request, parse_shake_answer, rss_kib,
    run_to_exit, shake_request, signal, timestamp_of, unix_now, wait_for,
};

#[track_caller]
fn serve(config: ServerConfig) -> ServerHandle {
    start(&config).unwrap_or_else(|e| panic!("starting the server: {e}"))
}

/// Reads one shake answer already owed to `c`, stamped at or after `since`.
#[track_caller]
fn recv_shake(c: &mut Client, since: u64) -> ShakeAnswer {
    let b = c.recv(28);
    parse_shake_answer(&b, since..=unix_now())
}

/// The answer's timestamp, checked to be a second of the test's clock
/// between `before` and now.
#[track_caller]
fn stamped(answer: &[u8], before: u64) -> [u8; 8] {
    let ts = timestamp_of(answer);
    let after = unix_now();
    assert!(
        (before..=after).contains(&ts),
        "answer stamped {ts}, not in {before}..={after}: {answer:?}"
    );
    ts.to_be_bytes()
}

#[test]
fn login_and_shake_answers_are_exact_bytes() {
    let server = serve(ServerConfig {
        envelopes_per_sec: 1_000_000,
        envelope_total: Some(1),
        // One possible amount, so the answer's every byte is known.
        envelope_cents_min: 123,
        envelope_cents_max: 123,
        ..config()
    });
    wait_for("the one envelope to reach the ring", WAIT, || {
        (server.envelopes_in_rings() == 1).then_some(())
    });
    let mut c = Client::connect(server.addr());

    // LoginRequest: length 16, cmd 0, timestamp, userid 0x01020304.
    let before = unix_now();
    c.send(&[0, 16, 0, 0, 0, 0, 0, 0, 0x65, 0x00, 0x00, 0x00, 1, 2, 3, 4]);
    let got = c.recv(20);
    let t = stamped(&got, before);
    // LoginResponse: length 20, cmd 1, the server's second, userid, result 0.
    let want = [&[0, 20, 0, 1][..], &t, &[1, 2, 3, 4], &[0, 0, 0, 0]].concat();
    assert_eq!(got, want);

    // A shake naming another user is answered for the session's user.
    let before = unix_now();
    c.send(&[
        0, 16, 0, 2, 0, 0, 0, 0, 0x65, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef,
    ]);
    let got = c.recv(28);
    let t = stamped(&got, before);
    // Shake answer: length 28, cmd 3, ts, userid, result 14, the first
    // envelope id 0x100000, amount 123.
    let want = [
        &[0, 28, 0, 3][..],
        &t,
        &[1, 2, 3, 4],
        &[0, 0, 0, 14],
        &[0, 0x10, 0, 0],
        &[0, 0, 0, 123],
    ]
    .concat();
    assert_eq!(got, want);

    // The batch's only envelope is taken: the next answer is "gone" (after
    // "none" at most while the generator marks the batch done).
    let mut shakes = 1;
    let got = wait_for("a shake answered other than 'none'", WAIT, || {
        let before = unix_now();
        c.send(&[0, 16, 0, 2, 0, 0, 0, 0, 0x65, 0, 0, 0, 0, 0, 0, 9]);
        let got = c.recv(28);
        shakes += 1;
        stamped(&got, before);
        (got[16..20] != [0, 0, 0, 15]).then_some(got)
    });
    let want = [
        &[0, 28, 0, 3][..],
        &got[4..12],
        &[1, 2, 3, 4],
        &[0, 0, 0, 16],
        &[0, 0, 0, 0],
        &[0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(got, want);

    let s = server.shutdown().total;
    assert_eq!(s.server.logins, 1);
    assert_eq!(s.server.shakes, shakes);
    assert_eq!((s.server.got, s.server.gone, s.server.overload), (1, 1, 0));
    assert_eq!(s.server.cents_granted, 123);
    assert_eq!(
        (s.generator.generated, s.generator.cents_generated),
        (1, 123)
    );
}

#[test]
fn granted_envelopes_equal_generated_once_the_generator_drains() {
    const ENVELOPES: u64 = 2_000;
    // SO_REUSEPORT hashes each connection to one of the two workers; 32
    // connections all landing on one worker has odds of 2^-31, and only then
    // would one ring be left undrained.
    const CONNS: usize = 32;
    let server = serve(ServerConfig {
        threads: Some(2),
        envelopes_per_sec: 1_000_000,
        envelope_total: Some(ENVELOPES),
        // Rings much smaller than the batch: the generator has to hold
        // envelopes while every ring is full and offer them again later.
        ring_capacity: 64,
        ..config()
    });
    let mut clients: Vec<Client> = (0..CONNS).map(|_| Client::connect(server.addr())).collect();
    for (user, c) in (1000..).zip(&mut clients) {
        c.login(user);
    }
    let mut gone = [false; CONNS];
    let mut granted = Vec::new();
    let deadline = Instant::now() + 2 * WAIT;
    while gone.contains(&false) {
        assert!(
            Instant::now() < deadline,
            "not every connection saw 'gone' after {} envelopes",
            granted.len()
        );
        // One shake on every connection still shaking, then the answers, so
        // both cores serve shakes side by side.
        let before = unix_now();
        for (c, _) in clients.iter_mut().zip(&gone).filter(|(_, g)| !**g) {
            c.send(&shake_request(7));
        }
        for (c, g) in clients.iter_mut().zip(&mut gone).filter(|(_, g)| !**g) {
            let a = recv_shake(c, before);
            match a.result {
                GOT => granted.push((a.envelope, a.amount)),
                NONE => assert_eq!((a.envelope, a.amount), (0, 0)),
                GONE => *g = true,
                r => panic!("unexpected shake result {r}: {a:?}"),
            }
        }
    }
    let summary: Summary = server.shutdown();
    let t = &summary.total;
    assert_eq!(t.generator.generated, ENVELOPES);
    assert_eq!(t.server.got, ENVELOPES);
    assert_eq!(granted.len() as u64, ENVELOPES);
    assert_eq!(summary.envelopes_in_rings, 0);
    assert_eq!(t.generator.cents_generated, t.server.cents_granted);
    let seen_cents: u64 = granted.iter().map(|&(_, a)| u64::from(a)).sum();
    assert_eq!(seen_cents, t.server.cents_granted);
    for &(id, amount) in &granted {
        assert!(
            (10..=309).contains(&amount),
            "envelope {id:#x} has {amount} cents"
        );
        assert!(
            (FIRST_ENVELOPE..FIRST_ENVELOPE + ENVELOPES as u32).contains(&id),
            "envelope id {id:#x} outside the batch"
        );
    }
    let ids: HashSet<u32> = granted.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids.len(), granted.len(), "an envelope was granted twice");
}

#[test]
fn shakes_over_the_per_second_ceiling_are_answered_overloaded() {
    const MAX: usize = 4;
    let server = serve(ServerConfig {
        shakes_per_sec_max: MAX as u64,
        ..config()
    });
    let mut c = Client::connect(server.addr());
    c.login(42);

    // 3 * MAX shakes in one write. The quota resets when the core's second
    // changes, so a boundary may fall inside the burst — but a burst of a few
    // hundred bytes cannot span two boundaries, so at most 2 * MAX shakes are
    // under the ceiling and at least MAX are refused. The first MAX are always
    // under it: nothing shook before them.
    let burst: Vec<u8> = (0..3 * MAX).flat_map(|_| shake_request(42)).collect();
    let before = unix_now();
    c.send(&burst);
    let results: Vec<u32> = (0..3 * MAX)
        .map(|_| recv_shake(&mut c, before).result)
        .collect();
    assert!(
        results.iter().all(|&r| r == NONE || r == OVERLOAD),
        "{results:?}"
    );
    assert!(results[..MAX].iter().all(|&r| r == NONE), "{results:?}");
    let refused = results.iter().filter(|&&r| r == OVERLOAD).count();
    assert!(
        refused >= MAX,
        "only {refused} of {} refused: {results:?}",
        3 * MAX
    );

    // The ceiling is per second: once the server's second changes, a shake
    // is answered normally again.
    let mut shakes = results.len();
    let mut overloads = refused;
    wait_for("a shake under the ceiling in a later second", WAIT, || {
        let a = c.shake(42);
        shakes += 1;
        match a.result {
            NONE => Some(()),
            OVERLOAD => {
                overloads += 1;
                None
            }
            r => panic!("unexpected shake result {r}"),
        }
    });

    let t = server.shutdown().total;
    assert_eq!(t.server.shakes, shakes as u64);
    assert_eq!(t.server.overload, overloads as u64);
    assert_eq!(t.server.none, (shakes - overloads) as u64);
}

#[test]
fn the_quota_of_a_new_second_starts_at_its_first_shake() {
    // Each second, right after the test's clock turns, MAX + 1 shakes one at
    // a time: the first MAX are under the ceiling and the last is refused,
    // every second. A shake that arrives in a new second belongs to that
    // second's quota, not to the previous one's.
    const MAX: usize = 2;
    let server = serve(ServerConfig {
        shakes_per_sec_max: MAX as u64,
        ..config()
    });
    let mut c = Client::connect(server.addr());
    c.login(42);
    let mut seconds = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut second = unix_now();
    while seconds.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no three whole seconds of shakes: {seconds:?}"
        );
        second = wait_for("the test's clock to turn a second", WAIT, || {
            let now = unix_now();
            (now > second).then_some(now)
        });
        let results: Vec<u32> = (0..=MAX).map(|_| c.shake(42).result).collect();
        // Every answer came back within `second` by the test's clock, so the
        // server handled every shake in that second. Otherwise try again.
        if unix_now() == second {
            seconds.push((second, results));
        }
    }
    for (second, results) in &seconds {
        assert_eq!(
            results[..],
            [NONE, NONE, OVERLOAD],
            "second {second}: {MAX} + 1 shakes against a ceiling of {MAX}"
        );
    }
    server.shutdown();
}

#[test]
fn a_frame_sent_byte_by_byte_is_answered() {
    let server = serve(config());
    let mut c = Client::connect(server.addr());
    let before = unix_now();
    for b in login_request(0x0a0b_0c0d) {
        c.send(&[b]);
        // Spacing only, so the server sees the frame in many reads; nothing
        // waits on it.
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = c.recv(20);
    let t = stamped(&got, before);
    assert_eq!(
        got,
        [&[0, 20, 0, 1][..], &t, &[10, 11, 12, 13], &[0, 0, 0, 0]].concat()
    );

    let before = unix_now();
    for b in shake_request(5) {
        c.send(&[b]);
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = c.recv(28);
    let t = stamped(&got, before);
    // No batch runs: result 15, no envelope, no amount.
    let want = [
        &[0, 28, 0, 3][..],
        &t,
        &[10, 11, 12, 13],
        &[0, 0, 0, 15],
        &[0; 4],
        &[0; 4],
    ]
    .concat();
    assert_eq!(got, want);
    server.shutdown();
}

#[test]
fn coalesced_frames_are_answered_in_order() {
    const FRAMES: u32 = 100;
    let server = serve(ServerConfig {
        envelopes_per_sec: 1_000_000,
        envelope_total: Some(u64::from(FRAMES)),
        ..config()
    });
    // One core, one ring, filled in id order: answers in request order carry
    // the ids in increasing order.
    wait_for("the batch to reach the ring", WAIT, || {
        (server.envelopes_in_rings() == u64::from(FRAMES)).then_some(())
    });
    let mut c = Client::connect(server.addr());
    let burst: Vec<u8> = [login_request(77)]
        .into_iter()
        .chain((0..FRAMES).map(shake_request))
        .flatten()
        .collect();
    let before = unix_now();
    c.send(&burst);
    let login = c.recv(20);
    stamped(&login, before);
    assert_eq!(&login[12..], &[0, 0, 0, 77, 0, 0, 0, 0]);
    for i in 0..FRAMES {
        let a = recv_shake(&mut c, before);
        let want = ShakeAnswer {
            user: 77,
            result: GOT,
            envelope: FIRST_ENVELOPE + i,
            amount: a.amount,
        };
        assert_eq!(a, want, "answer {i}");
    }
    let t = server.shutdown().total;
    assert_eq!(
        (t.server.logins, t.server.shakes, t.server.got),
        (1, 100, 100)
    );
}

#[test]
fn a_long_pipeline_cut_at_odd_points_is_answered_in_order() {
    // More than the server's 64 KiB read buffer, written in chunks of an odd
    // size so that frames straddle reads, while the answers are read
    // concurrently.
    const FRAMES: u32 = 20_000;
    const CHUNK: usize = 997;
    let server = serve(ServerConfig {
        envelopes_per_sec: 1_000_000,
        envelope_total: Some(u64::from(FRAMES)),
        ring_capacity: FRAMES as usize,
        // This test is about order, not eviction: a reader on a loaded
        // machine may lag a whole pipeline behind.
        outbound_max: 64 << 20,
        ..config()
    });
    wait_for("the batch to reach the ring", WAIT, || {
        (server.envelopes_in_rings() == u64::from(FRAMES)).then_some(())
    });
    let mut c = Client::connect(server.addr());
    c.login(8);
    let pipeline: Vec<u8> = (0..FRAMES).flat_map(shake_request).collect();
    let mut writer = c.stream.try_clone().expect("cloning the socket");
    let writing = std::thread::spawn(move || {
        for chunk in pipeline.chunks(CHUNK) {
            writer.write_all(chunk)?;
        }
        Ok::<(), std::io::Error>(())
    });
    let before = unix_now();
    let mut answers = vec![0u8; 28 * FRAMES as usize];
    c.stream
        .read_exact(&mut answers)
        .unwrap_or_else(|e| panic!("reading {FRAMES} answers: {e}"));
    writing
        .join()
        .expect("writer thread")
        .expect("writing the pipeline");
    for (i, b) in (0..).zip(answers.chunks(28)) {
        let a = parse_shake_answer(b, before..=unix_now());
        assert_eq!(
            (a.user, a.result, a.envelope),
            (8, GOT, FIRST_ENVELOPE + i),
            "answer {i}"
        );
    }
    let t = server.shutdown().total;
    assert_eq!(
        (t.server.shakes, t.server.got),
        (u64::from(FRAMES), u64::from(FRAMES))
    );
    assert_eq!((t.server.evictions, t.server.bad_frames()), (0, 0));
}

#[test]
fn malformed_frames_close_only_their_own_connection() {
    let server = serve(config());
    let addr = server.addr();
    // Opened, and logged in, before any bad frame arrives.
    let mut a = Client::connect(addr);
    a.login(1);
    let mut b = Client::connect(addr);
    b.login(2);

    let now = unix_now();
    let cases: [(&str, bool, Vec<u8>); 6] = [
        // The length is refused from its two bytes alone.
        ("a length below 8", true, [&[0, 7][..], &[0; 14]].concat()),
        ("a length above 44", true, [&[0, 45][..], &[0; 14]].concat()),
        ("an unknown cmd", true, frame(7, now, &[1])),
        ("a shake with a claim's body", true, frame(2, now, &[1, 2])),
        (
            "a server-to-client cmd",
            true,
            frame(LOGIN_RESPONSE, now, &[1, 0]),
        ),
        ("a first frame that is not a login", false, shake_request(3)),
    ];
    for (what, log_in, bytes) in cases {
        let mut bad = Client::connect(addr);
        if log_in {
            bad.login(3);
        }
        bad.send(&bytes);
        bad.expect_eof();
        assert_eq!(a.shake(1).result, NONE, "after {what}");
        assert_eq!(b.shake(2).result, NONE, "after {what}");
    }

    // Frames before a bad one in the same write are still answered.
    let mut bad = Client::connect(addr);
    let before = unix_now();
    bad.send(&[login_request(4), shake_request(4), vec![0, 45, 0, 2]].concat());
    let login = bad.recv(20);
    stamped(&login, before);
    assert_eq!(&login[..4], &[0, 20, 0, 1]);
    assert_eq!(recv_shake(&mut bad, before).result, NONE);
    bad.expect_eof();
    assert_eq!(a.shake(1).result, NONE);

    let t = server.shutdown().total.server;
    assert_eq!(t.bad_length, 3);
    assert_eq!(t.bad_cmd, 1);
    assert_eq!(t.bad_size, 1);
    // The server-to-client cmd and the missing login.
    assert_eq!(t.bad_session, 2);
    assert_eq!((t.accepted, t.closed), (9, 7));
}

#[test]
fn a_client_that_never_reads_is_evicted_and_memory_stays_bounded() {
    const OUTBOUND_MAX: usize = 4096;
    const RSS_GROWTH_MAX_KIB: u64 = 16 * 1024;
    let server = Spawned::server(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        // One worker: the flooder and the well-behaved client share it.
        "--threads",
        "1",
        "--outbound-max",
        &OUTBOUND_MAX.to_string(),
        // The flooder must be read as fast as it writes.
        "--conn-qps-max",
        "0",
        "--envelopes-per-sec",
        "0",
        "--conns-max",
        "1024",
        "--ring-capacity",
        "1024",
        "--quiet",
    ]);
    let http = server.http.expect("the HTTP control is on");
    let mut good = Client::connect(server.addr);
    good.login(1);

    // A small receive buffer, so the kernel holds few answers for the
    // flooder and the server's own pending output has to grow.
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect_timeout(&server.addr.into(), IO_TIMEOUT)
        .expect("connecting the flooder");
    let mut flooder = Client::from_stream(socket.into());
    flooder.login(2);

    let baseline_kib = rss_kib(server.pid());
    let mut peak_kib = baseline_kib;
    let batch: Vec<u8> = (0..1024).flat_map(|_| shake_request(2)).collect();
    let mut batches = 0u64;
    let refused = loop {
        if let Err(e) = flooder.stream.write_all(&batch) {
            break e;
        }
        batches += 1;
        peak_kib = peak_kib.max(rss_kib(server.pid()));
        assert!(
            peak_kib - baseline_kib < RSS_GROWTH_MAX_KIB,
            "the server's RSS grew from {baseline_kib} KiB to {peak_kib} KiB after {batches} batches"
        );
        if batches % 16 == 0 {
            assert_eq!(
                good.shake(1).result,
                NONE,
                "the good client while the flood runs"
            );
        }
        assert!(
            batches < 4096,
            "64 MiB of shakes never read, and still connected"
        );
    };
    // The server closed the flooder while it still sent: the kernel answers
    // with a reset, or refuses writes on the closed pipe.
    assert!(
        matches!(
            refused.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        "the flood ended with {refused} ({:?}), not a close by the server",
        refused.kind()
    );

    wait_for("GET /status to count the eviction", WAIT, || {
        let (status, body) = http_get(http, "/status");
        assert_eq!(status, 200, "{body}");
        let evictions = body["total"]["server"]["evictions"]
            .as_u64()
            .expect("evictions");
        (evictions >= 1).then_some(())
    });
    assert_eq!(
        good.shake(1).result,
        NONE,
        "the good client after the eviction"
    );
    peak_kib = peak_kib.max(rss_kib(server.pid()));
    assert!(
        peak_kib - baseline_kib < RSS_GROWTH_MAX_KIB,
        "the server's RSS grew from {baseline_kib} KiB to {peak_kib} KiB"
    );

    let exited = server.terminate();
    assert!(exited.status.success(), "{exited:?}");
    let summary = exited
        .stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or_else(|| panic!("no summary line: {exited:?}"));
    assert!(summary.contains("evictions 1,"), "{summary}");
}

/// How many shakes to pipeline so that their answers (28 bytes each) are
/// more than the kernel buffers of a loopback connection hold: with the
/// client not reading, the server keeps the rest as its own pending output.
/// The server's send buffer grows at most to `net.ipv4.tcp_wmem`'s maximum;
/// the client's receive buffer is pinned small.
fn pipeline_past_kernel_buffers() -> usize {
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    ((wmem_max + (1 << 20)) / 28).max(200_000)
}

/// A client socket whose receive buffer is as small as the kernel allows.
#[track_caller]
fn connect_with_small_receive_buffer(addr: std::net::SocketAddr) -> Client {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    Client::from_stream(socket.into())
}

/// A server (`config`, with room for a whole pipeline's answers: these tests
/// are not about eviction) and a logged-in client with a small receive
/// buffer that has sent a pipeline of shakes longer than the kernel's buffers
/// hold, reading nothing yet. Returns the pipeline's length and the Unix
/// second before the login.
#[track_caller]
fn slow_reader_with_pipeline(config: ServerConfig) -> (ServerHandle, Client, usize, u64) {
    let n = pipeline_past_kernel_buffers();
    let server = serve(ServerConfig {
        outbound_max: 2 * 28 * n,
        ..config
    });
    let mut c = connect_with_small_receive_buffer(server.addr());
    let start = unix_now();
    c.login(1);
    let pipeline: Vec<u8> = (0..n).flat_map(|_| shake_request(1)).collect();
    c.send(&pipeline);
    (server, c, n, start)
}

#[test]
fn answers_owed_are_flushed_when_new_bytes_and_room_to_write_arrive_together() {
    // A connection holds pending output and waits for room to write. Room
    // and a few new bytes (not yet a whole frame) then arrive together, in
    // one readiness event that is both readable and writable. The pending
    // answers must still go out. To make "together" certain, the server is
    // stopped (SIGSTOP) while the client frees the room and sends the byte,
    // and continued (SIGCONT) after.
    let n = pipeline_past_kernel_buffers();
    let outbound_max = (2 * 28 * n).to_string();
    let server = Spawned::server(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--threads",
        "1",
        // Room for the whole pipeline's answers: this is not about eviction.
        "--outbound-max",
        &outbound_max,
        "--conn-qps-max",
        "0",
        "--envelopes-per-sec",
        "0",
        "--quiet",
    ]);
    let http = server.http.expect("the HTTP control is on");
    let mut c = connect_with_small_receive_buffer(server.addr);
    c.login(1);
    let pipeline: Vec<u8> = (0..n).flat_map(|_| shake_request(1)).collect();
    c.send(&pipeline);
    wait_for(
        "the server to have answered the whole pipeline",
        WAIT,
        || {
            let (status, body) = http_get(http, "/status");
            assert_eq!(status, 200, "{body}");
            (body["total"]["server"]["shakes"].as_u64() == Some(n as u64)).then_some(())
        },
    );

    signal(server.pid(), libc::SIGSTOP);
    // Take everything the kernel holds, which empties the server's send
    // buffer: the kernel queues "writable" for the stopped server. A read
    // that waits 300 ms without data ends the draining; were it to end
    // early, the test would only lose its power to catch the fault.
    let owed = 28 * n;
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    c.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => panic!("end-of-file after {got} of {owed} bytes"),
            Ok(read) => got += read,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("reading after {got} of {owed} bytes: {e}"),
        }
    }
    assert!(
        got < owed,
        "the kernel held every answer: nothing was pending"
    );
    // One byte of the next frame: "readable", but no whole frame to answer.
    c.send(&shake_request(1)[..1]);
    signal(server.pid(), libc::SIGCONT);

    c.stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    while got < owed {
        match c.stream.read(&mut buf) {
            Ok(0) => panic!("end-of-file after {got} of {owed} bytes"),
            Ok(read) => got += read,
            Err(e) => {
                panic!("the server stopped sending owed answers after {got} of {owed} bytes: {e}")
            }
        }
    }
    let exited = server.terminate();
    assert!(exited.status.success(), "{exited:?}");
}

#[test]
fn a_client_that_half_closes_still_gets_every_answer() {
    // A client may send its last request and then shut down its write side
    // (as `nc -N` does). Every shake is owed its answer all the same, also
    // answers the server still holds because the client reads slowly.
    let (server, mut c, n, start) = slow_reader_with_pipeline(config());
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutting down the write side");
    let mut answers = Vec::new();
    let end = c.stream.read_to_end(&mut answers);
    assert_eq!(
        answers.len(),
        28 * n,
        "answers received before the end ({end:?}) for {n} shakes"
    );
    let last = parse_shake_answer(&answers[answers.len() - 28..], start..=unix_now());
    assert_eq!((last.user, last.result), (1, NONE));
    let t = server.shutdown().total.server;
    assert_eq!((t.shakes, t.evictions), (n as u64, 0));
}

#[test]
fn connections_land_on_every_worker() {
    // Which worker served a shake shows in the envelope id. The generator
    // pushes envelope k (id 0x100000 + k) into ring k % 2 while no ring is
    // full, and each worker pops only its own ring: an even offset was
    // served by worker 0, an odd one by worker 1.
    const CONNS: usize = 64;
    const SHAKES_PER_CONN: usize = 2;
    let envelopes = 2 * CONNS * SHAKES_PER_CONN;
    let server = serve(ServerConfig {
        threads: Some(2),
        envelopes_per_sec: 1_000_000,
        envelope_total: Some(envelopes as u64),
        // Each ring can hold the whole batch, so no push ever skips a ring,
        // and each can serve every connection should all land on one worker.
        ring_capacity: envelopes,
        ..config()
    });
    wait_for("the batch to reach the rings", WAIT, || {
        (server.envelopes_in_rings() == envelopes as u64).then_some(())
    });
    let mut per_worker = [0usize; 2];
    let mut clients = Vec::new();
    for user in 0..CONNS as u32 {
        let mut c = Client::connect(server.addr());
        c.login(user);
        let workers: Vec<usize> = (0..SHAKES_PER_CONN)
            .map(|_| {
                let a = c.shake(user);
                assert_eq!(a.result, GOT, "{a:?}");
                ((a.envelope - FIRST_ENVELOPE) % 2) as usize
            })
            .collect();
        assert!(
            workers.iter().all(|&w| w == workers[0]),
            "a connection moved between workers: {workers:?}"
        );
        per_worker[workers[0]] += 1;
        // Kept open so the kernel spreads all of them at once.
        clients.push(c);
    }
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "connections per worker: {per_worker:?}"
    );
    let t = server.shutdown().total;
    assert_eq!(t.server.accepted, CONNS as u64);
}

#[test]
fn a_connection_that_does_not_log_in_is_closed_after_the_login_timeout() {
    let server = serve(ServerConfig {
        login_timeout: 0.3,
        ..config()
    });
    // Connected first, so its own login deadline passes before the others'.
    let mut member = Client::connect(server.addr());
    member.login(1);
    let mut silent = Client::connect(server.addr());
    let mut partial = Client::connect(server.addr());
    partial.send(&login_request(3)[..5]);
    // Both reads block until the server closes (bounded by IO_TIMEOUT).
    silent.expect_eof();
    partial.expect_eof();
    assert_eq!(
        member.shake(1).result,
        NONE,
        "a logged-in connection stays open"
    );
    let t = server.shutdown().total.server;
    assert_eq!(t.login_timeouts, 2);
    assert_eq!((t.accepted, t.closed), (3, 2));
}

#[test]
fn sigterm_stops_the_binary_with_a_summary() {
    let server = Spawned::server(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--no-http",
        "--threads",
        "2",
        "--quiet",
    ]);
    let mut c = Client::connect(server.addr);
    c.login(9);
    let a = c.shake(9);
    assert!(matches!(a.result, GOT | NONE), "{a:?}");
    let exited = server.terminate();
    assert!(exited.status.success(), "{exited:?}");
    assert_eq!(exited.status.code(), Some(0));
    let summary = exited
        .stdout
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary line: {exited:?}"));
    assert!(summary.contains("logins 1,"), "{summary}");
    assert!(summary.contains("shakes 1 ("), "{summary}");
}

#[test]
fn a_taken_port_is_a_one_line_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port to hold");
    let addr = held.local_addr().expect("held address").to_string();
    let exited = run_to_exit(&["server", "--listen", &addr, "--no-http", "--quiet"]);
    assert!(!exited.status.success(), "{exited:?}");
    assert!(exited.stdout.is_empty(), "no start line: {exited:?}");
    let lines: Vec<&str> = exited
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line of error: {:?}", exited.stderr);
    assert!(
        lines[0].contains(&addr),
        "the error names {addr}: {}",
        lines[0]
    );
    drop(held);
}

#[test]
fn http_control_starts_a_batch_and_serves_stats() {
    let server = serve(ServerConfig {
        no_http: false,
        ..config()
    });
    let http = server.http_addr().expect("the HTTP control is on");

    let (status, body) = http_get(http, "/yaohongbao?qps=100&sum=5");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(
        (body["qps"].as_u64(), body["sum"].as_u64()),
        (Some(100), Some(5)),
        "{body}"
    );

    for bad in [
        "/yaohongbao",
        "/yaohongbao?qps=100",
        "/yaohongbao?sum=5",
        "/yaohongbao?qps=0&sum=5",
        "/yaohongbao?qps=abc&sum=5",
        "/yaohongbao?qps=100&sum=-1",
        "/yaohongbao?qps=2000000&sum=5",
    ] {
        let (status, body) = http_get(http, bad);
        assert_eq!(status, 400, "GET {bad}: {body}");
        assert!(body["error"].is_string(), "GET {bad}: {body}");
    }
    assert_eq!(http_get(http, "/nowhere").0, 404);

    // The batch runs: five envelopes reach the shakes, then "gone".
    let mut c = Client::connect(server.addr());
    c.login(1);
    let mut got = 0;
    wait_for("the batch's five envelopes, then 'gone'", WAIT, || {
        let a = c.shake(1);
        match a.result {
            GOT => got += 1,
            NONE => {}
            GONE => return Some(()),
            r => panic!("unexpected shake result {r}"),
        }
        None
    });
    assert_eq!(got, 5);

    let (status, body) = http_get(http, "/status");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"]["emitted"].as_u64(), Some(5), "{body}");
    assert_eq!(body["batch"]["done"], true, "{body}");

    // /stats lists closed seconds, so the first one shows up after a while.
    let seconds = wait_for("/stats to list a closed second", WAIT, || {
        let (status, body) = http_get(http, "/stats");
        assert_eq!(status, 200, "{body}");
        let seconds = body["seconds"].as_array().expect("a seconds array").clone();
        (!seconds.is_empty()).then_some(seconds)
    });
    assert!(seconds[0]["second"].is_u64(), "{seconds:?}");
    server.shutdown();
}

#[test]
fn a_full_ring_does_not_spin_the_generator() {
    // An endless batch into one ring of one slot that nobody empties: the
    // ring is full almost at once. The generator must wait for room, not
    // retry in a busy loop — which shows as millions of stalls a second.
    const RATE: u64 = 1_000;
    let server = serve(ServerConfig {
        envelopes_per_sec: RATE,
        ring_capacity: 1,
        ..config()
    });
    let seconds = wait_for("three closed seconds", WAIT, || {
        let r = server.recent();
        (r.len() >= 3).then_some(r)
    });
    for s in &seconds {
        assert!(
            s.generator.ring_full_stalls <= 2 * RATE,
            "second {}: {} stalls for {RATE} envelopes due",
            s.second,
            s.generator.ring_full_stalls
        );
    }
    let summary = server.shutdown();
    assert_eq!(summary.total.generator.generated, 1);
}

/// Reads a login answer if one has arrived (the socket is non-blocking).
#[track_caller]
fn login_answered(c: &mut Client) -> bool {
    let mut b = [0u8; 20];
    match c.stream.read(&mut b) {
        Ok(20) => true,
        Ok(n) => panic!("expected a 20-byte login answer, got {n} bytes"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("reading a login answer: {e}"),
    }
}

#[test]
fn running_out_of_descriptors_pauses_accepting_and_resumes() {
    // With 48 descriptors the server keeps 36 in reserve (32 fixed, 4 for
    // its one worker; no HTTP control) and holds 12 connections; the rest
    // wait in the kernel's backlog. It stops at that cap, so accept never
    // meets EMFILE.
    let server = Spawned::server_with_fd_limit(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--no-http",
            "--threads",
            "1",
            "--login-timeout",
            "30",
        ],
        48,
    );
    let total = 45;
    let mut conns: Vec<Option<Client>> = (0..total)
        .map(|i| {
            let mut c = Client::connect(server.addr);
            c.send(&login_request(i as u32 + 1));
            c.stream.set_nonblocking(true).expect("non-blocking");
            Some(c)
        })
        .collect();
    let mut answered = vec![false; total];
    let poll_answers = |conns: &mut [Option<Client>], answered: &mut [bool]| {
        for (c, done) in conns.iter_mut().zip(answered.iter_mut()) {
            if let Some(c) = c
                && !*done
                && login_answered(c)
            {
                *done = true;
            }
        }
        answered.iter().filter(|a| **a).count()
    };
    // Wait until the server has taken what its descriptors allow and then,
    // for a while, nothing more: it is at its cap.
    let mut last = (0, Instant::now());
    let held = wait_for("the server to stop accepting", WAIT, || {
        let n = poll_answers(&mut conns, &mut answered);
        if n != last.0 {
            last = (n, Instant::now());
        }
        (n > 0 && last.1.elapsed() > Duration::from_millis(1500)).then_some(n)
    });
    assert!(
        held < total,
        "all {total} were accepted under a 48-descriptor limit"
    );

    // Free descriptors: close the answered connections, as they are
    // answered. The server resumes accepting and answers every connection
    // still waiting.
    wait_for("the waiting connections to be answered", WAIT, || {
        for (c, done) in conns.iter_mut().zip(answered.iter()) {
            if *done {
                *c = None;
            }
        }
        let n = poll_answers(&mut conns, &mut answered);
        (n == total).then_some(())
    });

    let exited = server.terminate();
    assert!(exited.status.success(), "{exited:?}");
    assert!(
        exited.stderr.contains("open-file limit (soft 48, hard 48)")
            && exited.stderr.contains("ulimit -n"),
        "the start-up warning names the limit and the fix: {}",
        exited.stderr
    );
    let summary = exited
        .stdout
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary line: {exited:?}"));
    let exhausted: u64 = summary
        .split("fd-exhausted accepts ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fd-exhausted count in {summary}"));
    // The reserve held: the worker stopped at its cap before the process
    // ran out of descriptors.
    assert!(
        exhausted == 0,
        "fd-exhausted accepts {exhausted}: {summary}"
    );
}

#[test]
fn a_reset_with_answers_owed_closes_the_connection() {
    // A slow reader that resets its connection while the server still holds
    // its answers must be closed at once, not kept waiting for a drain that
    // can never happen (a leaked descriptor and slot).
    let (server, c, n, _) = slow_reader_with_pipeline(config());
    wait_for(
        "every shake answered into the server's buffers",
        WAIT,
        || (server.total().server.shakes == n as u64).then_some(()),
    );
    // SO_LINGER 0: close sends a reset, with the server's answers unread.
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(c);
    wait_for("the server to close the reset connection", WAIT, || {
        let t = server.total();
        (t.server.closed == 1 && t.conns_open == 0).then_some(())
    });
    let t = server.shutdown().total.server;
    assert_eq!((t.accepted, t.closed, t.evictions), (1, 1, 0));
}

#[test]
fn a_half_closed_peer_that_never_reads_is_closed_at_its_deadline() {
    // Half-closed with answers owed, the connection is kept for them, but
    // only until the deadline (the login timeout again): a peer that never
    // reads them is evicted, not held forever.
    let (server, c, n, _) = slow_reader_with_pipeline(ServerConfig {
        login_timeout: 0.5,
        ..config()
    });
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutting down the write side");
    wait_for("the server to close the draining connection", WAIT, || {
        let t = server.total();
        (t.server.closed == 1 && t.conns_open == 0).then_some(())
    });
    let t = server.shutdown().total.server;
    assert_eq!((t.shakes, t.evictions, t.login_timeouts), (n as u64, 1, 0));
}
