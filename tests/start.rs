//! A start that fails leaves nothing behind: no thread of it still running,
//! and its ports free for the next start.
//!
//! Owns: the unwinding of `hongbao::server::start`. Each step that starts a
//! thread is made to fail in turn (`start_failing_at`), the last step of all
//! included, with the ledger writer and the generator busy; and a real
//! failure (a taken control port) is shown to fail the start and leave no thread.
//! Must not: run beside another start in this process. It counts this
//! process's threads named `hongbao-…` through `/proc/self/task`, so every
//! test here holds [`ONE_AT_A_TIME`].

mod util;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use hongbao::server::{ServerConfig, StartError, ThreadStep, start, start_failing_at};
use util::{WAIT, config, scratch_dir};

/// Held by every test here: a start in another test would add threads to
/// the count.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Every thread a server starts has a name beginning so.
const THREAD_PREFIX: &str = "hongbao-";

/// The steps that start a thread, in the order a start runs them.
const THREAD_STEPS: [ThreadStep; 5] = [
    ThreadStep::Stats,
    ThreadStep::LedgerWriter,
    ThreadStep::Generator,
    ThreadStep::Control,
    ThreadStep::LastCore,
];

/// The names of this process's threads that a server started.
fn server_threads() -> Vec<String> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("reading /proc/self/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .filter(|name| name.starts_with(THREAD_PREFIX))
        .collect()
}

/// Waits until no server thread is left. A joined thread can stay listed
/// for a moment while the kernel finishes its exit, hence the deadline.
#[track_caller]
fn assert_no_server_thread(after: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = server_threads();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "threads still running {WAIT:?} after {after}: {left:?}"
        );
        // Not synchronisation: only the polling interval of the probe.
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Two loopback addresses with ports nobody holds now, one different from
/// the other (both are held while the second is chosen).
fn free_addrs() -> (SocketAddr, SocketAddr) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    let (a, b) = (bind(), bind());
    let addr = |l: &TcpListener| l.local_addr().expect("its address");
    (addr(&a), addr(&b))
}

/// Two cores, a ledger, the HTTP control and a generator at work: every
/// thread a server can have, each busy.
fn busy_config(listen: SocketAddr, http: SocketAddr, data_dir: &Path) -> ServerConfig {
    ServerConfig {
        listen,
        http,
        no_http: false,
        threads: Some(2),
        data_dir: Some(data_dir.to_owned()),
        envelopes_per_sec: 1_000,
        ..config()
    }
}

/// Starts on the same addresses and stops: proves them free, and the
/// ledger the failed start wrote to still sound (the replay checks it).
#[track_caller]
fn start_and_stop(config: &ServerConfig, after: &str) {
    let server = start(config).unwrap_or_else(|e| panic!("starting again after {after}: {e}"));
    assert_eq!(server.addr(), config.listen, "the data port after {after}");
    assert_eq!(
        server.http_addr(),
        Some(config.http),
        "the control after {after}"
    );
    assert!(
        !server_threads().is_empty(),
        "a running server shows its threads (or the count proves nothing)"
    );
    server.shutdown();
    assert_no_server_thread(&format!("a shutdown following {after}"));
}

/// Makes `config`'s start fail at each of `steps` in turn: each failure is
/// the injected one, leaves no thread, and a start after it runs and stops.
#[track_caller]
fn fail_at_each(config: &ServerConfig, steps: &[ThreadStep], what: &str) {
    for &step in steps {
        let failed = format!("{what} failing at {step:?}");
        let error = match start_failing_at(config, step) {
            Ok(_) => panic!("{failed} started"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("injected by a test"),
            "{failed} failed otherwise: {error}"
        );
        assert_no_server_thread(&failed);
        start_and_stop(config, &failed);
    }
}

#[test]
fn a_failed_thread_step_stops_every_thread_started_before_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_no_server_thread("nothing");
    let dir = scratch_dir("start-unwinds");
    let (listen, http) = free_addrs();
    let config = busy_config(listen, http, &dir);
    fail_at_each(&config, &THREAD_STEPS, "a start");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same in cluster mode, whose engine thread and push reader start
/// between the ledger writer and the generator (the engine need not be
/// reachable for a start: a port nothing listens on).
#[test]
fn a_failed_thread_step_in_cluster_mode_stops_the_engine_threads_too() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_no_server_thread("nothing");
    let dir = scratch_dir("start-unwinds-cluster");
    let (listen, http) = free_addrs();
    let (nobody, _) = free_addrs();
    let config = ServerConfig {
        cluster: Some(format!("redis://{nobody}")),
        node_id: Some(1),
        ..busy_config(listen, http, &dir)
    };
    fail_at_each(
        &config,
        &[
            ThreadStep::Engine,
            ThreadStep::Generator,
            ThreadStep::LastCore,
        ],
        "a cluster-mode start",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_control_port_fails_the_start_and_leaves_no_thread() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let taken = TcpListener::bind("127.0.0.1:0").expect("taking a port");
    let dir = scratch_dir("start-control-taken");
    let (listen, http_free) = free_addrs();
    let mut config = busy_config(listen, taken.local_addr().expect("its address"), &dir);
    match start(&config) {
        Ok(_) => panic!("started with the control port taken"),
        Err(StartError::Http { addr, .. }) => assert_eq!(addr, config.http),
        Err(e) => panic!("failed at another step: {e}"),
    }
    assert_no_server_thread("a start refused for its control port");
    drop(taken);
    config.http = http_free;
    start_and_stop(&config, "a start refused for its control port");
    let _ = std::fs::remove_dir_all(&dir);
}
