//! Disk faults: a ledger write that fails aborts the server, loudly, and
//! nothing it answered is lost.
//!
//! Owns: two faults under load, each on a real `hongbao server` with users
//! shaking and claiming: the file-size limit (`RLIMIT_FSIZE`, so `write`
//! fails with EFBIG) and a full filesystem (a small tmpfs, so `write` fails
//! with ENOSPC). Each time the server must abort (SIGABRT, no retry: after a
//! failed write or sync the kernel's page state proves nothing) with a
//! message naming the ledger file and the error; a restart on what is on
//! disk replays it (cutting a torn tail); and `hongbao audit --ack-log`
//! finds the books balanced and every grant and claim the users were
//! answered in the ledger. Must not: assert a timing.

mod util;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use util::{Exited, Spawned, audit_acks, count_acks, http_get, scratch_dir, shake_and_claim};

const USERS: u32 = 8;

fn server_args(data: &str) -> Vec<&str> {
    vec![
        "server",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--no-pin",
        "--quiet",
        "--seed",
        "11",
        "--envelopes-per-sec",
        "4000",
        "--data-dir",
        data,
    ]
}

/// Loads `server` with users who shake and claim packets until it goes
/// away, which it must do by itself within a bound. Returns its exit and
/// the acknowledgements the users were given, in `--ack-log` format.
fn load_until_it_dies(server: Spawned) -> (Exited, Vec<String>) {
    let http = server.http.expect("http on");
    let (code, body) = http_get(
        http,
        &format!("/fahongbao?qps=200&sum=100000&min=0&max={}", USERS - 1),
    );
    assert_eq!(code, 200, "{body}");
    let acks = Arc::new(Mutex::new(Vec::new()));
    // Never set: each user's loop ends when the server dies.
    let never = Arc::new(AtomicBool::new(false));
    let users: Vec<_> = (0..USERS)
        .map(|u| {
            let (acks, never, addr) = (acks.clone(), never.clone(), server.addr);
            std::thread::spawn(move || shake_and_claim(addr, u, &acks, &never))
        })
        .collect();
    let exited = server.wait(Duration::from_secs(60));
    for u in users {
        let ended = u.join().expect("user thread");
        assert!(ended.is_err(), "a user's loop ends with the server");
    }
    assert!(!never.load(Ordering::Relaxed));
    let acks = acks.lock().unwrap().clone();
    (exited, acks)
}

/// The abort: SIGABRT, and one line naming the ledger file and the error.
#[track_caller]
fn assert_aborted_naming(exited: &Exited, file: &Path, error: &str) {
    assert_eq!(
        exited.status.signal(),
        Some(libc::SIGABRT),
        "aborted, not exited or killed otherwise: {exited:?}"
    );
    let line = format!(
        "hongbao: ledger: write of {} failed: {error}",
        file.display()
    );
    assert!(
        exited.stderr.contains(&line),
        "{line:?} in {}",
        exited.stderr
    );
}

/// Restarts on `data` (the ledger replays, a torn tail is cut), stops
/// cleanly, and audits the ledger against `acks`.
fn restart_and_audit(data: &str, acks: &[String], dir: &Path) {
    let (grants, claims) = count_acks(acks);
    assert!(
        grants > 0 && claims > 0,
        "the load moved money before the fault: {grants} grants, {claims} claims"
    );
    eprintln!("before the fault: {grants} grants and {claims} paid claims acknowledged");
    let server = Spawned::server(&server_args(data));
    let exited = server.terminate();
    assert!(exited.status.success(), "{exited:?}");
    audit_acks(data, acks, &dir.join("acks.log"));
}

#[test]
fn a_write_over_the_file_size_limit_aborts_and_loses_nothing_acknowledged() {
    let dir = scratch_dir("disk-efbig");
    let data_dir = dir.join("data");
    let data = data_dir.to_str().unwrap().to_string();
    // 256 KiB: a few seconds of envelopes and packets at these rates.
    let server = Spawned::server_with_rlimit(&server_args(&data), libc::RLIMIT_FSIZE, 256 << 10);
    let (exited, acks) = load_until_it_dies(server);
    assert_aborted_naming(
        &exited,
        &data_dir.join("ledger.log"),
        "File too large (os error 27)",
    );
    restart_and_audit(&data, &acks, &dir);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `at`; `None` when this process may not
    /// mount (not root, or no CAP_SYS_ADMIN in a container).
    fn mount(at: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "hongbao-test",
            ])
            .arg(at)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_filesystem_aborts_and_loses_nothing_acknowledged() {
    let dir = scratch_dir("disk-enospc");
    let small = dir.join("small");
    let Some(tmpfs) = Tmpfs::mount(&small, 256 << 10) else {
        // Only where mounting is not allowed at all; CI runs as root.
        eprintln!("SKIPPED: this process may not mount a tmpfs (needs root)");
        return;
    };
    let data = small.to_str().unwrap().to_string();
    let server = Spawned::server(&server_args(&data));
    let (exited, acks) = load_until_it_dies(server);
    assert_aborted_naming(
        &exited,
        &small.join("ledger.log"),
        "No space left on device (os error 28)",
    );
    // The restart gets room to write: the ledger as the fault left it, on
    // an ordinary directory.
    let moved = dir.join("data");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::copy(small.join("ledger.log"), moved.join("ledger.log")).unwrap();
    drop(tmpfs);
    restart_and_audit(moved.to_str().unwrap(), &acks, &dir);
}
