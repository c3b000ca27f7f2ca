//! Helpers for the integration tests: wire v1 frames built by hand, a raw
//! TCP client whose every read and write is bounded by a timeout, polling a
//! condition against a deadline, HTTP GET against the control port, and a
//! guard around a spawned `hongbao` binary.
//!
//! Must not: sleep as synchronisation. Waiting is always "poll this
//! condition until it holds or a deadline passes", and a missed deadline
//! fails the test naming what it waited for, at the caller's line.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

pub mod browser;
pub mod cluster;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::RangeInclusive;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hongbao::server::ServerConfig;

/// The longest any one socket read or write may block. Generous, because a
/// noisy 2-core machine can stall a thread for a while; a test that hits it
/// has found a hang, not a slow answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a test waits for a condition to become true.
pub const WAIT: Duration = Duration::from_secs(10);

/// Cmd ids of wire v1, written out here rather than taken from the crate, so
/// that the tests check the crate against the reference, not against itself.
pub const LOGIN_REQUEST: u16 = 0;
/// See [`LOGIN_REQUEST`].
pub const LOGIN_RESPONSE: u16 = 1;
/// See [`LOGIN_REQUEST`].
pub const SHAKE_REQUEST: u16 = 2;

/// Shake result: got an envelope.
pub const GOT: u32 = 14;
/// Shake result: no envelope now.
pub const NONE: u32 = 15;
/// Shake result: every envelope is gone.
pub const GONE: u32 = 16;
/// Shake result: over the per-second ceiling.
pub const OVERLOAD: u32 = 17;

/// The first shake envelope id (the original's numbering).
pub const FIRST_ENVELOPE: u32 = 0x0010_0000;

/// A server configuration for in-process tests: loopback on an ephemeral
/// port, no HTTP, quiet, one unpinned worker, small tables, no envelopes,
/// no per-connection rate limit (these tests pipeline thousands of requests
/// on one connection; `tests/hostile.rs` tests the limit). Tests override
/// what they exercise.
///
/// Unpinned because the test harness runs tests in parallel: pinning every
/// server's first worker to CPU 0 would serialise them on one core.
pub fn config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        http: "127.0.0.1:0".parse().expect("loopback address"),
        no_http: true,
        quiet: true,
        threads: Some(1),
        no_pin: true,
        conns_max: 4096,
        ring_capacity: 4096,
        envelopes_per_sec: 0,
        envelope_total: None,
        conn_qps_max: 0,
        ..ServerConfig::default()
    }
}

/// Reads one whole frame from `stream`; returns its cmd and body fields. An
/// error or end of file (the server went away) is returned, not a panic.
pub fn read_frame(stream: &mut TcpStream) -> io::Result<(u16, Vec<u32>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let len = usize::from(u16::from_be_bytes(head));
    if !(8..=44).contains(&len) {
        return Err(io::Error::other(format!("frame length {len}")));
    }
    let mut rest = vec![0u8; len - 2];
    stream.read_exact(&mut rest)?;
    let cmd = u16::from_be_bytes([rest[0], rest[1]]);
    let fields = rest[10..].chunks(4).map(|c| be32(c, 0)).collect();
    Ok((cmd, fields))
}

/// A claim (cmd 5) of `packet`, with user 0 as the original client sends.
pub fn claim_request(packet: u32) -> Vec<u8> {
    frame(5, unix_now(), &[0, packet])
}

/// A fresh directory under the target dir, removed first if left over.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch dir");
    dir
}

/// Whole seconds since the Unix epoch, from the same clock the server stamps
/// its answers with.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Polls `probe` until it returns `Some`, and returns that; fails the test,
/// naming `what`, when `within` passes first.
#[track_caller]
pub fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        // Not synchronisation: only the polling interval of the probe.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A v1 frame built by hand: `length`, `cmd`, `timestamp`, then each field
/// as a big-endian u32. `length` is computed from the fields.
pub fn frame(cmd: u16, timestamp: u64, fields: &[u32]) -> Vec<u8> {
    let len = 12 + 4 * fields.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&u16::try_from(len).expect("short frame").to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    for f in fields {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b
}

/// A LoginRequest for `user`.
pub fn login_request(user: u32) -> Vec<u8> {
    frame(LOGIN_REQUEST, unix_now(), &[user])
}

/// A shake request naming `user` (which the server must ignore after login).
pub fn shake_request(user: u32) -> Vec<u8> {
    frame(SHAKE_REQUEST, unix_now(), &[user])
}

/// The big-endian u32 at `at`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The timestamp field of an answer.
pub fn timestamp_of(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[4..12].try_into().expect("8 bytes"))
}

/// A shake answer's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShakeAnswer {
    /// The user the answer names.
    pub user: u32,
    /// 14, 15, 16 or 17.
    pub result: u32,
    /// The envelope id (0 unless `result` is 14).
    pub envelope: u32,
    /// The amount in cents (0 unless `result` is 14).
    pub amount: u32,
}

/// Checks that `b` is a 28-byte shake answer (length 28, cmd 3) stamped
/// with a second in `stamped`, and returns its fields.
#[track_caller]
pub fn parse_shake_answer(b: &[u8], stamped: RangeInclusive<u64>) -> ShakeAnswer {
    assert_eq!(b.len(), 28, "a shake answer is 28 bytes: {b:?}");
    assert_eq!(&b[0..4], &[0, 28, 0, 3], "length 28, cmd 3: {b:?}");
    let ts = timestamp_of(b);
    assert!(
        stamped.contains(&ts),
        "answer stamped {ts}, outside the test's clock {stamped:?}"
    );
    ShakeAnswer {
        user: be32(b, 12),
        result: be32(b, 16),
        envelope: be32(b, 20),
        amount: be32(b, 24),
    }
}

/// A client speaking raw bytes over a blocking socket whose reads and writes
/// time out after [`IO_TIMEOUT`].
pub struct Client {
    /// The socket, for tests that need it directly.
    pub stream: TcpStream,
}

impl Client {
    /// Connects to `addr`, with Nagle off so each write leaves at once.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Client::from_stream(stream)
    }

    /// Wraps a connected socket, setting Nagle off and the timeouts.
    #[track_caller]
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        Client { stream }
    }

    /// Writes all of `bytes` in one `write_all`.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing {} bytes: {e}", bytes.len()));
    }

    /// Reads exactly `n` bytes.
    #[track_caller]
    pub fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.stream
            .read_exact(&mut b)
            .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
        b
    }

    /// Logs in as `user` and checks the answer byte for byte (the timestamp
    /// must be a second of the test's clock around the exchange).
    #[track_caller]
    pub fn login(&mut self, user: u32) {
        let before = unix_now();
        self.send(&login_request(user));
        let got = self.recv(20);
        let after = unix_now();
        let ts = timestamp_of(&got);
        assert!(
            (before..=after).contains(&ts),
            "login answer stamped {ts}, not in {before}..={after}"
        );
        let mut want = vec![0, 20, 0, 1];
        want.extend_from_slice(&ts.to_be_bytes());
        want.extend_from_slice(&user.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(got, want, "login answer for user {user:#x}");
    }

    /// Sends one shake (naming `user`) and returns the answer's fields.
    #[track_caller]
    pub fn shake(&mut self, user: u32) -> ShakeAnswer {
        let before = unix_now();
        self.send(&shake_request(user));
        let got = self.recv(28);
        parse_shake_answer(&got, before..=unix_now())
    }

    /// Reads one whole frame; returns its cmd and body fields.
    #[track_caller]
    pub fn frame(&mut self) -> (u16, Vec<u32>) {
        read_frame(&mut self.stream).unwrap_or_else(|e| panic!("reading a frame: {e}"))
    }

    /// Expects the server to have closed the connection: a read returns
    /// end-of-file, with no bytes before it.
    #[track_caller]
    pub fn expect_eof(&mut self) {
        let mut b = [0u8; 64];
        match self.stream.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("expected end-of-file, got {n} bytes: {:?}", &b[..n]),
            Err(e) => panic!("expected end-of-file, got {e} (kind {:?})", e.kind()),
        }
    }
}

/// Sends `GET target` to the HTTP control at `addr`; returns the status code
/// and the body parsed as JSON.
#[track_caller]
pub fn http_get(addr: SocketAddr, target: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get_text(addr, target);
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("body of GET {target} is not JSON ({e}): {body:?}"));
    (status, json)
}

/// Sends `GET target` to the HTTP control at `addr`; returns the status code
/// and the body as text.
#[track_caller]
pub fn http_get_text(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connecting to the HTTP control {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("sending GET {target}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the answer to GET {target}: {e}"));
    let text = String::from_utf8(raw).expect("HTTP answer is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// The acknowledgements in `acks` (the flooder's `--ack-log` lines): grants,
/// and claims that paid.
pub fn count_acks(acks: &[String]) -> (usize, usize) {
    let grants = acks.iter().filter(|a| a.starts_with("grant")).count();
    let claims = acks
        .iter()
        .filter(|a| a.starts_with("claim") && !a.ends_with(" 0"))
        .count();
    (grants, claims)
}

/// Writes `acks` to `log` and runs `hongbao audit --ack-log` on the ledger
/// in `data`: it must pass and find every one of them.
#[track_caller]
pub fn audit_acks(data: &str, acks: &[String], log: &std::path::Path) {
    let (grants, claims) = count_acks(acks);
    std::fs::write(log, acks.join("\n") + "\n").expect("writing the ack log");
    let audit = run_to_exit(&[
        "audit",
        "--data-dir",
        data,
        "--ack-log",
        log.to_str().expect("UTF-8"),
    ]);
    assert!(
        audit.status.success(),
        "audit: {}\n{}",
        audit.stdout,
        audit.stderr
    );
    assert!(
        audit
            .stdout
            .contains(&format!("{grants} grants and {claims} paid claims")),
        "{}",
        audit.stdout
    );
}

/// A flooder started with `hongbao flood ARGS` (stdout discarded), its HTTP
/// control address (from its first stderr line) and a thread draining the
/// rest of its stderr, so that it never blocks on a full pipe.
#[track_caller]
pub fn spawn_flood_with_control(args: &[&str]) -> (Child, SocketAddr, JoinHandle<String>) {
    let mut child = hongbao(&["flood"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hongbao flood");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("reading stderr");
    let control: SocketAddr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no control address in {first:?}"));
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    (child, control, drain)
}

/// One user's closed loop against a server: log in, shake, read until the
/// shake's answer, claim every packet pushed meanwhile; again until `stop`
/// is set (then it reads out the answers to its last claims) or the server
/// goes away (an error). Every money answer goes to `acks` in the
/// flooder's `--ack-log` format, for `hongbao audit --ack-log`.
pub fn shake_and_claim(
    addr: SocketAddr,
    user: u32,
    acks: &std::sync::Mutex<Vec<String>>,
    stop: &std::sync::atomic::AtomicBool,
) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&login_request(user))?;
    let (cmd, _) = read_frame(&mut s)?;
    assert_eq!(cmd, LOGIN_RESPONSE, "login answer");
    let mut claims_unanswered = 0usize;
    let ack = |line: String| acks.lock().expect("acks").push(line);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        s.write_all(&shake_request(user))?;
        loop {
            let (cmd, f) = read_frame(&mut s)?;
            match cmd {
                3 => {
                    if f[1] == GOT {
                        ack(format!("grant {user} {} {}", f[2], f[3]));
                    }
                    break;
                }
                4 => {
                    s.write_all(&claim_request(f[0]))?;
                    claims_unanswered += 1;
                }
                6 => {
                    ack(format!("claim {user} {} {}", f[0], f[1]));
                    claims_unanswered -= 1;
                }
                other => panic!("unexpected cmd {other}"),
            }
        }
    }
    while claims_unanswered > 0 {
        let (cmd, f) = read_frame(&mut s)?;
        if cmd == 6 {
            ack(format!("claim {user} {} {}", f[0], f[1]));
            claims_unanswered -= 1;
        }
    }
    Ok(())
}

/// Resident memory of process `pid`, in KiB, from /proc/PID/status.
#[track_caller]
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Sends `sig` to `pid`, which must be a process this test started.
#[track_caller]
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

/// A `hongbao` binary started by a test. Dropping it kills that process
/// (SIGKILL by its pid) if it still runs, so a failed test leaves nothing.
pub struct Spawned {
    child: Child,
    stdout_lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// The address from its start line.
    pub addr: SocketAddr,
    /// The HTTP control address from its start line, unless "off".
    pub http: Option<SocketAddr>,
}

/// How a spawned binary ended.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// What it printed on stdout after the start line.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// `hongbao ARGS` as every test starts it: stdin null, stdout and stderr
/// piped (set them again to change that), and without the test runner's
/// backtrace settings or the shell's `HONGBAO_*` options.
pub fn hongbao(args: &[&str]) -> Command {
    wrapped_command(&[], args)
}

/// `hongbao ARGS`, or `WRAPPER... hongbao ARGS` (say, under strace).
fn wrapped_command(wrapper: &[&str], args: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        None => Command::new(env!("CARGO_BIN_EXE_hongbao")),
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg(env!("CARGO_BIN_EXE_hongbao"));
            cmd
        }
    };
    cmd.args(args)
        // What an operator sees by default, whatever the test runner's env.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Nor the shell's HONGBAO_SERVER_* (... _FLOOD_*, _MONITOR_*) options:
    // a test sets what it means with flags or `Spawned::server_with_env`.
    for (name, _) in hongbao::environment::option_vars() {
        cmd.env_remove(name);
    }
    cmd
}

fn collect_stderr(child: &mut Child) -> JoinHandle<String> {
    let mut stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    })
}

/// Waits for `child` to exit, killing it (by its pid) when `within` passes.
#[track_caller]
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pid {} did not exit within {within:?}", child.id());
            }
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Runs `hongbao ARGS` to its exit, bounded by [`WAIT`].
#[track_caller]
pub fn run_to_exit(args: &[&str]) -> Exited {
    run_to_exit_with_env(args, &[])
}

/// Like [`run_to_exit`], with these environment variables set.
#[track_caller]
pub fn run_to_exit_with_env(args: &[&str], vars: &[(&str, &str)]) -> Exited {
    let mut child = hongbao(args)
        .envs(vars.iter().copied())
        .spawn()
        .expect("spawning hongbao");
    let stderr = collect_stderr(&mut child);
    let mut stdout_pipe = child.stdout.take().expect("stdout piped");
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child, WAIT);
    Exited {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

impl Spawned {
    /// Starts `hongbao ARGS` and waits (bounded by [`WAIT`]) for its start
    /// line, "hongbao server listening on ADDR (... http HTTP, ...)".
    #[track_caller]
    pub fn server(args: &[&str]) -> Spawned {
        Spawned::start(hongbao(args), args)
    }

    /// `hongbao server` on 127.0.0.1 (data and HTTP control on ephemeral
    /// ports), `threads` unpinned workers, quiet, then `args`.
    #[track_caller]
    pub fn on_loopback(threads: u32, args: &[&str]) -> Spawned {
        Spawned::on_loopback_under(&[], threads, false, args)
    }

    /// Like [`Spawned::on_loopback`], its workers pinned if `pin`, run by
    /// `wrapper` (say, `strace -f -o FILE`: its pid is then the wrapper's).
    #[track_caller]
    pub fn on_loopback_under(wrapper: &[&str], threads: u32, pin: bool, args: &[&str]) -> Spawned {
        let threads = threads.to_string();
        let mut all = vec![
            "server",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--threads",
            &threads,
            "--quiet",
        ];
        if !pin {
            all.push("--no-pin");
        }
        all.extend_from_slice(args);
        Spawned::start(wrapped_command(wrapper, &all), &all)
    }

    /// Like [`Spawned::server`], with these environment variables set.
    #[track_caller]
    pub fn server_with_env(args: &[&str], vars: &[(&str, &str)]) -> Spawned {
        let mut cmd = hongbao(args);
        cmd.envs(vars.iter().copied());
        Spawned::start(cmd, args)
    }

    /// Like [`Spawned::server`], with the open-file limit (soft and hard)
    /// set to `nofile` in the child before it runs.
    #[track_caller]
    pub fn server_with_fd_limit(args: &[&str], nofile: u64) -> Spawned {
        Spawned::server_with_rlimit(args, libc::RLIMIT_NOFILE, nofile)
    }

    /// Like [`Spawned::server`], with the limit `resource` (soft and hard)
    /// set to `value` in the child before it runs.
    #[track_caller]
    pub fn server_with_rlimit(
        args: &[&str],
        resource: libc::__rlimit_resource_t,
        value: u64,
    ) -> Spawned {
        use std::os::unix::process::CommandExt;
        let mut cmd = hongbao(args);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setrlimit, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Spawned::start(cmd, args)
    }

    #[track_caller]
    fn start(mut cmd: Command, args: &[&str]) -> Spawned {
        let mut child = cmd.spawn().expect("spawning hongbao");
        let stderr = collect_stderr(&mut child);
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, stdout_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut spawned = Spawned {
            child,
            stdout_lines,
            stderr: Some(stderr),
            addr: "0.0.0.0:0".parse().expect("placeholder"),
            http: None,
        };
        let line = match spawned.stdout_lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
                let stderr = spawned.stderr.take().map(|h| h.join().unwrap_or_default());
                panic!("no start line from hongbao {args:?} ({e}); stderr: {stderr:?}");
            }
        };
        let rest = line
            .strip_prefix("hongbao server listening on ")
            .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
        let (addr, rest) = rest.split_once(' ').expect("address then details");
        spawned.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("address {addr:?} in {line:?}: {e}"));
        let http = rest
            .split_once("http ")
            .and_then(|(_, h)| h.split([',', ')']).next())
            .unwrap_or_else(|| panic!("no http field in {line:?}"));
        spawned.http = (http != "off").then(|| {
            http.parse()
                .unwrap_or_else(|e| panic!("http {http:?}: {e}"))
        });
        spawned
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded by [`WAIT`]) for the exit.
    #[track_caller]
    pub fn terminate(self) -> Exited {
        signal(self.child.id(), libc::SIGTERM);
        self.wait(WAIT)
    }

    /// Waits for the exit, killing the process when `within` passes (and
    /// failing the test).
    #[track_caller]
    pub fn wait(mut self, within: Duration) -> Exited {
        let status = wait_exit(&mut self.child, within);
        // The process is gone, so its stdout is at end-of-file: the reader
        // thread forwards what is left and disconnects the channel.
        let mut stdout = String::new();
        while let Ok(line) = self.stdout_lines.recv_timeout(WAIT) {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        Exited {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
