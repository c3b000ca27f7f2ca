//! Signed sessions and unpredictable money, over real TCP.
//!
//! Owns: what an attacker on the network can try at login — a flipped bit
//! in the tag, the user or the expiry, an expired token, an unknown key id,
//! A's token presented as B, a signed login cut short or too long, a v1
//! login where signed ones are required — each refused with its answer and
//! counted by reason where `/status` and `/metrics` show them, none logged
//! in; a good token logs in and shakes; key rotation (two keys live, a
//! removed key refused); a claim made as the session's user whatever the
//! frame says; the server without a key as the original (v1 logins, the
//! warning); `hongbao token` and the flooder signing its logins; and the
//! seed: drawn from the OS unless `--seed` is given. Must not: assert a
//! timing.

mod util;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hongbao::ids::UserId;
use hongbao::server::{AuthMode, SeedSource, ServerConfig, ServerHandle, start};
use hongbao::token::{self, Keyring, Token};
use hongbao::wire::Frame;
use util::{
    Client, GONE, GOT, LOGIN_RESPONSE, NONE, Spawned, WAIT, config, frame, http_get, login_request,
    run_to_exit, scratch_dir, unix_now, wait_for,
};

const CLAIM_ANSWER: u16 = 6;
const PUSH: u16 = 4;
/// LoginResponse results for a refused login (docs/PROTOCOL.md).
const V1_REFUSED: u32 = 1;
const BAD_TAG: u32 = 2;
const EXPIRED: u32 = 3;
const UNKNOWN_KEY: u32 = 4;

/// A key file with keys `ids` in a fresh scratch dir; its path and keyring.
fn key_file(name: &str, ids: &[u32]) -> (PathBuf, Keyring) {
    let path = scratch_dir(name).join("auth.key");
    let mut ring = None;
    for &id in ids {
        ring = Some(token::add_new_key(&path, id).expect("adding a key"));
    }
    (path, ring.expect("at least one key"))
}

fn signed_server(keys: &Path, http: bool) -> ServerHandle {
    start(&ServerConfig {
        auth_key_file: Some(keys.to_path_buf()),
        no_http: !http,
        ..config()
    })
    .unwrap_or_else(|e| panic!("starting the server: {e}"))
}

/// A signed login's bytes for `token`.
fn signed_login(token: Token) -> Vec<u8> {
    let mut b = Vec::new();
    Frame::SignedLogin { token }.encode(unix_now(), &mut b);
    b
}

/// Sends `login` on a new connection and returns the LoginResponse's
/// (user, result).
fn login_answer(addr: std::net::SocketAddr, login: &[u8]) -> (Client, u32, u32) {
    let mut c = Client::connect(addr);
    c.send(login);
    let (cmd, f) = c.frame();
    assert_eq!(cmd, LOGIN_RESPONSE);
    (c, f[0], f[1])
}

/// `login` is answered `result` for `user`, then the connection is closed.
#[track_caller]
fn refused(addr: std::net::SocketAddr, login: &[u8], user: u32, result: u32) {
    let (mut c, got_user, got) = login_answer(addr, login);
    assert_eq!((got_user, got), (user, result));
    c.expect_eof();
}

/// `login` logs in as `user`, whose shakes (naming someone else) are answered
/// for `user`.
#[track_caller]
fn logs_in(addr: std::net::SocketAddr, login: &[u8], user: u32) -> Client {
    let (mut c, got_user, result) = login_answer(addr, login);
    assert_eq!((got_user, result), (user, 0));
    let answer = c.shake(user.wrapping_add(1000));
    assert_eq!(answer.user, user, "the shake is the session's user's");
    assert!([NONE, GOT, GONE].contains(&answer.result));
    c
}

#[test]
fn every_forgery_is_refused_and_counted_by_reason_and_a_good_token_shakes() {
    let (keys, ring) = key_file("auth-refusals", &[1]);
    let server = signed_server(&keys, true);
    let addr = server.addr();
    let far = unix_now() + 3600;
    let good = ring.sign(1, UserId(7), far).expect("key 1");
    let flip = |at: usize| {
        let mut b = good.to_bytes();
        b[at] ^= 0x01;
        Token::from_bytes(&b).expect("32 bytes")
    };

    logs_in(addr, &signed_login(good), 7);
    // A flipped bit in the tag, the user, the expiry.
    refused(addr, &signed_login(flip(31)), 7, BAD_TAG);
    refused(addr, &signed_login(flip(3)), 6, BAD_TAG);
    refused(addr, &signed_login(flip(11)), 7, BAD_TAG);
    // A's token presented as B: A's tag on B's id.
    let as_b = Token {
        user: UserId(8),
        ..good
    };
    refused(addr, &signed_login(as_b), 8, BAD_TAG);
    // Genuine but expired; signed by a key the server does not hold (a
    // flipped key id among them).
    let old = ring.sign(1, UserId(7), unix_now() - 1).expect("key 1");
    refused(addr, &signed_login(old), 7, EXPIRED);
    let (_, other) = key_file("auth-refusals-other", &[9]);
    let stranger = other.sign(9, UserId(7), far).expect("key 9");
    refused(addr, &signed_login(stranger), 7, UNKNOWN_KEY);
    refused(addr, &signed_login(flip(15)), 7, UNKNOWN_KEY);
    // A v1 login where signed ones are required.
    refused(addr, &login_request(7), 7, V1_REFUSED);
    // Cut short (its length says 40: a 12-byte tag) or too long (60: the
    // full 32-byte tag): closed with no answer.
    let whole = signed_login(good);
    let mut short = whole[..40].to_vec();
    short[1] = 40;
    let mut long = whole.clone();
    long.extend_from_slice(&[0; 16]);
    long[1] = 60;
    for bytes in [short, long] {
        let mut c = Client::connect(addr);
        c.send(&bytes);
        c.expect_eof();
    }
    // The honest user still shakes after all of that.
    logs_in(addr, &signed_login(good), 7);

    // Every reason where /status and /metrics show it, once the second that
    // counted it has closed.
    let http = server.http_addr().expect("http on");
    let status = wait_for("the refusals in /status", WAIT, || {
        let (_, body) = http_get(http, "/status");
        let t = body["total"]["server"].clone();
        (t["auth_bad_size"] == 1 && t["logins"] == 2).then_some(t)
    });
    let want = [
        ("auth_bad_tag", 4),
        ("auth_expired", 1),
        ("auth_unknown_key", 2),
        ("auth_v1_refused", 1),
        ("auth_bad_size", 1),
        ("bad_length", 1),
        ("logins", 2),
    ];
    for (name, n) in want {
        assert_eq!(status[name], n, "{name} in /status: {status}");
    }
    let (_, metrics) = {
        let mut s = std::net::TcpStream::connect(http).expect("connecting to /metrics");
        use std::io::{Read, Write};
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).expect("reading /metrics");
        ((), text)
    };
    // Each /status field is one sample of a labelled family in /metrics.
    let sample = |name: &str| match name {
        "logins" => "hongbao_server_logins_total{result=\"ok\"}".to_owned(),
        "bad_length" => "hongbao_server_bad_frames_total{reason=\"bad_length\"}".to_owned(),
        auth => {
            let reason = auth.strip_prefix("auth_").expect("an auth_ field");
            format!("hongbao_server_logins_total{{result=\"{reason}\"}}")
        }
    };
    for (name, n) in want {
        let line = format!("{} {n}", sample(name));
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} in /metrics:\n{metrics}"
        );
    }
    let t = server.shutdown().total.server;
    assert_eq!(
        (
            t.auth_bad_tag,
            t.auth_expired,
            t.auth_unknown_key,
            t.auth_v1_refused,
            t.auth_bad_size,
            t.bad_length
        ),
        (4, 1, 2, 1, 1, 1)
    );
    assert_eq!(t.logins, 2, "only the good token logged in");
    assert_eq!(t.logins_refused(), 9);
    assert_eq!(t.bad_frames(), 10);
}

#[test]
fn both_keys_of_a_rotation_log_in_and_a_removed_key_is_refused() {
    let (keys, ring) = key_file("auth-rotation", &[1, 2]);
    let far = unix_now() + 3600;
    let old = signed_login(ring.sign(1, UserId(1), far).expect("key 1"));
    let new = signed_login(ring.sign(2, UserId(2), far).expect("key 2"));
    let server = signed_server(&keys, false);
    logs_in(server.addr(), &old, 1);
    logs_in(server.addr(), &new, 2);
    drop(server);

    // Key 1 retired: only key 2's line is left.
    let text = std::fs::read_to_string(&keys).expect("reading the key file");
    let kept: String = text.lines().filter(|l| l.starts_with("2:")).collect();
    std::fs::write(&keys, kept + "\n").expect("rewriting the key file");
    let server = signed_server(&keys, false);
    refused(server.addr(), &old, 1, UNKNOWN_KEY);
    logs_in(server.addr(), &new, 2);
    let t = server.shutdown().total.server;
    assert_eq!((t.logins, t.auth_unknown_key), (1, 1));
}

#[test]
fn a_claim_is_made_as_the_sessions_user_whatever_the_frame_names() {
    let (keys, ring) = key_file("auth-claim", &[1]);
    let server = signed_server(&keys, true);
    let far = unix_now() + 3600;
    let login = |u| signed_login(ring.sign(1, UserId(u), far).expect("key 1"));
    let mut a = logs_in(server.addr(), &login(1), 1);
    let mut b = logs_in(server.addr(), &login(2), 2);
    // A packet for user 2 alone.
    let (status, body) = http_get(
        server.http_addr().expect("http on"),
        "/packet?amount=100&users=2",
    );
    assert_eq!(status, 200, "{body}");
    let packet = body["packet"].as_u64().expect("packet id") as u32;
    // User 1 claims it naming user 2: the claim is user 1's, who gets 0.
    a.send(&frame(5, unix_now(), &[2, packet]));
    assert_eq!(a.frame(), (CLAIM_ANSWER, vec![packet, 0]));
    // User 2 gets the push and takes the whole packet.
    let (cmd, push) = b.frame();
    assert_eq!((cmd, push[0]), (PUSH, packet));
    b.send(&frame(5, unix_now(), &[0, packet]));
    assert_eq!(b.frame(), (CLAIM_ANSWER, vec![packet, 100]));
    let t = server.shutdown().total.server;
    assert_eq!((t.claims_paid, t.claims_zero, t.cents_claimed), (1, 1, 100));
}

#[test]
fn without_a_key_logins_are_v1s_and_the_server_says_anyone_can_log_in() {
    let server = start(&config()).expect("starting the server");
    assert!(
        server
            .warnings()
            .iter()
            .any(|w| w.contains("anyone can log in as anyone")),
        "{:?}",
        server.warnings()
    );
    let mut c = Client::connect(server.addr());
    c.login(5);
    // A signed login has no key to be checked with.
    let (_, ring) = key_file("auth-nokey", &[1]);
    let token = ring.sign(1, UserId(6), unix_now() + 60).expect("key 1");
    refused(server.addr(), &signed_login(token), 6, UNKNOWN_KEY);
    drop(server);

    let required = start(&ServerConfig {
        auth: Some(AuthMode::Required),
        ..config()
    });
    let err = required
        .err()
        .expect("--auth required without a key")
        .to_string();
    assert!(err.contains("--auth-key-file"), "{err}");

    // A key file others may read is refused, naming the fix.
    let (keys, _) = key_file("auth-exposed", &[1]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = start(&ServerConfig {
        auth_key_file: Some(keys),
        ..config()
    })
    .err()
    .expect("an exposed key file")
    .to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn auth_off_with_a_key_takes_v1_logins_and_still_checks_signed_ones() {
    let (keys, ring) = key_file("auth-off", &[1]);
    let server = start(&ServerConfig {
        auth_key_file: Some(keys),
        auth: Some(AuthMode::Off),
        ..config()
    })
    .expect("starting the server");
    assert!(
        server
            .warnings()
            .iter()
            .any(|w| w.contains("anyone can log in as anyone"))
    );
    Client::connect(server.addr()).login(3);
    let token = ring.sign(1, UserId(4), unix_now() + 60).expect("key 1");
    logs_in(server.addr(), &signed_login(token), 4);
    let forged = Token {
        user: UserId(5),
        ..token
    };
    refused(server.addr(), &signed_login(forged), 5, BAD_TAG);
}

#[test]
fn hongbao_token_makes_a_private_key_and_issues_tokens_the_server_takes() {
    let dir = scratch_dir("auth-cli");
    let keys = dir.join("auth.key");
    let keys_arg = keys.to_str().expect("utf-8 path");
    let made = run_to_exit(&["token", "--new-key", keys_arg]);
    assert!(made.status.success(), "{}", made.stderr);
    assert_eq!(made.stdout.trim(), "1", "the first key's id");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let issued = run_to_exit(&[
        "token",
        "--key-file",
        keys_arg,
        "--user",
        "42",
        "--ttl",
        "60",
    ]);
    assert!(issued.status.success(), "{}", issued.stderr);
    let hex = issued.stdout.trim();
    assert_eq!(hex.len(), 64, "{hex:?}");
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let token = Token::from_bytes(&bytes).expect("32 bytes");
    assert_eq!((token.user, token.key_id), (UserId(42), 1));

    let server = Spawned::server(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--no-http",
        "--threads",
        "1",
        "--no-pin",
        "--quiet",
        "--auth-key-file",
        keys_arg,
        "--seed",
        "77",
    ]);
    logs_in(server.addr, &signed_login(token), 42);
    refused(server.addr, &login_request(42), 42, V1_REFUSED);
    let exited = server.terminate();
    assert!(
        exited.stdout.contains("seed 77 (from --seed"),
        "{}",
        exited.stdout
    );
    assert!(
        !exited.stderr.contains("anyone can log in"),
        "{}",
        exited.stderr
    );
}

#[test]
fn the_flooder_signs_its_logins_with_the_key() {
    let (keys, _) = key_file("auth-flood", &[1, 2]);
    let server = signed_server(&keys, false);
    let json = scratch_dir("auth-flood-report").join("flood.json");
    let mut child = util::hongbao(&["flood", "--server", &server.addr().to_string()])
        .args(["--users", "20", "--phases", "20x1s", "--warmup", "0"])
        .args(["--threads", "1", "--quiet", "--no-http", "--json"])
        .arg(&json)
        .arg("--auth-key-file")
        .arg(&keys)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hongbao flood");
    let status = util::wait_exit(&mut child, Duration::from_secs(60));
    assert!(status.success(), "flooder failed: {status:?}");
    let t = server.shutdown().total.server;
    assert_eq!(t.logins, 20, "every user logged in, signed");
    assert_eq!(t.logins_refused(), 0);
    assert!(t.shakes >= 20, "{t:?}");
}

/// The first `n` envelope amounts a server hands out to one user.
fn first_amounts(seed: Option<u64>, n: u64) -> (Vec<u32>, (u64, SeedSource)) {
    let server = start(&ServerConfig {
        seed,
        envelopes_per_sec: 1000,
        envelope_total: Some(n),
        ..config()
    })
    .expect("starting the server");
    let mut c = Client::connect(server.addr());
    c.login(1);
    let mut amounts = Vec::new();
    wait_for("every envelope handed out", WAIT, || {
        let a = c.shake(1);
        if a.result == GOT {
            amounts.push(a.amount);
        }
        (a.result == GONE).then_some(())
    });
    assert_eq!(amounts.len() as u64, n);
    (amounts, server.seed())
}

#[test]
fn amounts_are_seeded_from_the_os_unless_a_seed_is_given() {
    let (a, seed_a) = first_amounts(None, 6);
    let (b, seed_b) = first_amounts(None, 6);
    assert_eq!((seed_a.1, seed_b.1), (SeedSource::Os, SeedSource::Os));
    assert_ne!(seed_a.0, seed_b.0, "two draws from the OS");
    // Six amounts of 300 possible each alike by chance: 1 in 7e14.
    assert_ne!(a, b, "unseeded runs pay differently");
    let (c, seed_c) = first_amounts(Some(42), 6);
    let (d, _) = first_amounts(Some(42), 6);
    assert_eq!(seed_c, (42, SeedSource::Given));
    assert_eq!(c, d, "--seed replays the amounts");
}
