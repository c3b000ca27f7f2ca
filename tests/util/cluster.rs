//! A Redis Cluster on loopback for the cluster tests: one per test binary,
//! started on first use with `tools/cluster.sh up` (3 primaries, 1 replica
//! each) in a scratch dir on the first free base port of the binary's
//! range, shared by its tests, and stopped with `tools/cluster.sh down`
//! when the binary exits (an `atexit` hook, which runs after libtest's last
//! test, passed or failed). The hook then checks with `pgrep` that no
//! redis-server of the cluster's ports is left, and fails the binary if one
//! is.
//!
//! Without redis-server (and no way to install it) the tests fail, saying
//! so, unless HONGBAO_SKIP_CLUSTER=1, when [`shared`] returns None and
//! prints SKIPPED loudly.

use std::io::Write as _;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Nodes of the test cluster: 3 primaries, 1 replica each.
pub const NODES: u16 = 6;
/// Redis Cluster's bus listens on each node's port + 10000.
const BUS_OFFSET: u16 = 10_000;
/// The longest `tools/cluster.sh` may run: its own deadlines are 60 s for
/// the start and 10 s for the stop.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

/// A running test cluster.
#[derive(Debug)]
pub struct TestCluster {
    /// Its directory (the nodes' configs, pids, logs, data).
    pub dir: PathBuf,
    /// The first node's port; the others follow it.
    pub base: u16,
}

impl TestCluster {
    /// Every node as `redis://127.0.0.1:PORT`, for `EngineConfig::urls`.
    pub fn urls(&self) -> Vec<String> {
        self.ports()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The nodes' ports.
    pub fn ports(&self) -> std::ops::Range<u16> {
        self.base..self.base + NODES
    }

    /// The `--cluster` list of every node.
    pub fn list(&self) -> String {
        self.urls().join(",")
    }

    /// `tools/cluster.sh kill-primary`: kill -9 of one primary; its port.
    #[track_caller]
    pub fn kill_primary(&self) -> u16 {
        self.kill_primary_of(None)
    }

    /// `tools/cluster.sh kill-primary --key KEY`: kill -9 of the primary
    /// serving `key`'s slot (any primary without a key); its port.
    #[track_caller]
    pub fn kill_primary_of(&self, key: Option<&str>) -> u16 {
        let dir = self.dir.to_string_lossy();
        let mut args = vec!["kill-primary", "--dir", &dir];
        if let Some(k) = key {
            args.extend(["--key", k]);
        }
        let out = script(&args);
        assert!(out.status.success(), "kill-primary: {}", both(&out));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("kill-primary printed no port: {}", both(&out)))
    }

    /// `tools/cluster.sh restart --port PORT`: the node back (a replica
    /// now, if it was a primary replaced by its replica), waited for.
    #[track_caller]
    pub fn restart(&self, port: u16) {
        let out = script(&[
            "restart",
            "--dir",
            &self.dir.to_string_lossy(),
            "--port",
            &port.to_string(),
        ]);
        assert!(out.status.success(), "restart {port}: {}", both(&out));
    }

    /// `tools/cluster.sh status`.
    pub fn status(&self) -> String {
        both(&script(&["status", "--dir", &self.dir.to_string_lossy()]))
    }
}

static CLUSTER: OnceLock<Result<Option<TestCluster>, String>> = OnceLock::new();
/// What the exit hook stops: the dir and base of the started cluster.
static STARTED: Mutex<Option<(PathBuf, u16)>> = Mutex::new(None);

/// The binary's cluster, started on first use on the first free base of
/// `ports` (which must hold [`NODES`] ports). None when skipped; a failed
/// start fails every test that asks, with the script's words.
#[track_caller]
pub fn shared(name: &str, ports: RangeInclusive<u16>) -> Option<&'static TestCluster> {
    match CLUSTER.get_or_init(|| start(name, ports)) {
        Ok(c) => c.as_ref(),
        Err(e) => panic!("{e}"),
    }
}

fn start(name: &str, ports: RangeInclusive<u16>) -> Result<Option<TestCluster>, String> {
    let skip = std::env::var("HONGBAO_SKIP_CLUSTER").is_ok_and(|v| v == "1");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-{name}"));
    if dir.join("cluster.env").exists() {
        // A cluster a killed earlier run of this binary left: stop it.
        let _ = script(&["down", "--dir", &dir.to_string_lossy()]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut tried = Vec::new();
    let mut base = *ports.start();
    while base + NODES - 1 <= *ports.end() {
        if !(base..base + NODES).all(|p| free(p) && free(p + BUS_OFFSET)) {
            tried.push(format!("{base}: taken"));
            base += NODES;
            continue;
        }
        // Registered before the start, so that a start that fails half way
        // is stopped too.
        register_stop(&dir, base);
        let out = script(&[
            "up",
            "--dir",
            &dir.to_string_lossy(),
            "--port",
            &base.to_string(),
            "--primaries",
            "3",
            "--replicas",
            "1",
        ]);
        if out.status.success() {
            return Ok(Some(TestCluster { dir, base }));
        }
        let why = both(&out);
        if !have_redis() {
            // Nothing started: nothing to stop at exit.
            *STARTED.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if skip {
                // Straight to fd 2: libtest captures eprintln! of a test
                // that passes, and this must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n!!! SKIPPED: the cluster tests did NOT run: redis-server is not installed and could not be (HONGBAO_SKIP_CLUSTER=1) !!!\n{why}"
                );
                return Ok(None);
            }
            return Err(format!(
                "the cluster tests need Debian's redis-server, which is not installed and could not be installed here: install it (apt-get install redis-server), or set HONGBAO_SKIP_CLUSTER=1 to skip these tests.\ntools/cluster.sh said: {why}"
            ));
        }
        if !why.contains("is taken") {
            return Err(format!("tools/cluster.sh up --port {base} failed:\n{why}"));
        }
        // Taken between the check and the start (another test binary).
        tried.push(format!("{base}: {why}"));
        base += NODES;
    }
    Err(format!(
        "no {NODES} free ports (and bus ports +{BUS_OFFSET}) for a test cluster in {ports:?}: {}",
        tried.join("; ")
    ))
}

fn have_redis() -> bool {
    ["redis-server", "redis-cli"].iter().all(|b| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/cluster.sh")
}

/// Runs `tools/cluster.sh ARGS`, bounded by [`SCRIPT_DEADLINE`] (killed by
/// its pid past it).
fn script(args: &[&str]) -> Output {
    let mut child = Command::new("bash")
        .arg(script_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running bash tools/cluster.sh");
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    child
        .wait_with_output()
        .expect("collecting tools/cluster.sh's output")
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn register_stop(dir: &Path, base: u16) {
    let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    let first = started.is_none();
    *started = Some((dir.to_path_buf(), base));
    if first {
        // SAFETY: atexit(3) stores a plain function pointer; `stop_at_exit`
        // takes no arguments and unwinds nowhere (it catches panics).
        let rc = unsafe { libc::atexit(stop_at_exit) };
        assert_eq!(rc, 0, "atexit: could not register the cluster's stop");
    }
}

/// Stops the binary's cluster as the process exits, then fails the process
/// if a redis-server of its ports is left (pgrep).
extern "C" fn stop_at_exit() {
    let leaked = std::panic::catch_unwind(|| {
        let started = STARTED.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((dir, base)) = started else {
            return Vec::new();
        };
        let out = script(&["down", "--dir", &dir.to_string_lossy()]);
        if !out.status.success() {
            eprintln!(
                "tools/cluster.sh down --dir {}: {}",
                dir.display(),
                both(&out)
            );
        }
        (base..base + NODES)
            .filter(|p| {
                Command::new("pgrep")
                    .args(["-f", &format!("redis-server 127.0.0.1:{p}( |$)")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .collect::<Vec<u16>>()
    });
    match leaked {
        Ok(ports) if ports.is_empty() => {}
        Ok(ports) => {
            eprintln!("!!! the test cluster left redis-server running on ports {ports:?} !!!");
            // SAFETY: _exit(2) ends the process at once; nothing of ours
            // runs after it.
            unsafe { libc::_exit(1) }
        }
        Err(_) => {
            eprintln!("!!! stopping the test cluster panicked !!!");
            // SAFETY: as above.
            unsafe { libc::_exit(1) }
        }
    }
}
