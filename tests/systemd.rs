//! `deploy/systemd/`: the service unit and its settings file, checked
//! without root and without a running systemd.
//!
//! - `systemd-analyze verify` says nothing about the unit (its `ExecStart`
//!   pointed at the binary under test, as verify wants an executable);
//! - `systemd-analyze security` rates its exposure at most [`EXPOSURE_MAX`];
//! - the server, run under strace with a ledger, pinned workers, a flooder,
//!   a packet and the HTTP control, makes no system call the unit's
//!   `SystemCallFilter=` lines refuse, and opens sockets only of the
//!   families `RestrictAddressFamilies=` allows;
//! - `hongbao.env` names every server option's variable with its default,
//!   and the unit and the file name no variable that is not an option.
//!
//! Without systemd-analyze (or strace, for the third) the tests fail saying
//! so, unless HONGBAO_SKIP_SYSTEMD=1, when they print SKIPPED loudly;
//! `.ci/run` installs both.
//!
//! Must not: assert a speed; leave a process (the traced server is stopped
//! by its pid).

mod util;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{ArgAction, Args};
use hongbao::environment::var_name;

/// `systemd-analyze security`'s overall exposure of the unit, times ten
/// (its `--threshold` unit): 1.2 with systemd 252, "OK". What is left
/// exposed, and why, is in the unit's comments and README.md ("Run it as a
/// service"): the network (it is a server), @resources (core pinning and
/// its open-file limit), AF_UNIX (name resolution), /proc/sys (the start-up
/// advice), the clock's rtc read (ProtectClock's own device rule), the
/// host's root directory.
const EXPOSURE_MAX: u32 = 12;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("deploy/systemd/hongbao.service")).expect("the unit")
}

/// Whether `tool` runs here (`tool probe...` succeeds: strace must also be
/// allowed to trace); if not, fails the test saying so, or (with
/// HONGBAO_SKIP_SYSTEMD=1) says SKIPPED and returns false.
fn have(tool: &str, probe: &[&str]) -> bool {
    let found = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("HONGBAO_SKIP_SYSTEMD").is_ok_and(|v| v == "1"),
            "`{tool} {}` fails here: .ci/run installs it (Debian: apt-get install systemd strace); \
             HONGBAO_SKIP_SYSTEMD=1 skips these tests",
            probe.join(" ")
        );
        eprintln!(
            "\n!!! SKIPPED: `{tool} {}` fails here (HONGBAO_SKIP_SYSTEMD=1) !!!\n",
            probe.join(" ")
        );
    }
    found
}

/// The unit, its `ExecStart` binary replaced by the one under test, as
/// `hongbao.service` in a scratch directory.
fn unit_for_test(name: &str) -> PathBuf {
    let text = unit_text();
    assert!(
        text.contains("ExecStart=/usr/local/bin/hongbao server"),
        "the unit runs /usr/local/bin/hongbao server"
    );
    let text = text.replace("/usr/local/bin/hongbao", env!("CARGO_BIN_EXE_hongbao"));
    let dir = util::scratch_dir(name);
    let path = dir.join("hongbao.service");
    std::fs::write(&path, text).expect("writing the unit");
    path
}

#[test]
fn unit_verifies_clean() {
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    let unit = unit_for_test("systemd-verify");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("running systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown or misspelt directive is only a warning to verify: clean
    // means nothing said at all.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {}: {:?}\n{said}",
        unit.display(),
        out.status
    );
}

#[test]
fn unit_exposure_stays_at_most_its_recorded_score() {
    if !have("systemd-analyze", &["--version"]) {
        return;
    }
    let unit = unit_for_test("systemd-security");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={EXPOSURE_MAX}"))
        .arg(&unit)
        .output()
        .expect("running systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for hongbao.service: "))
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let score: f64 = overall
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {overall:?}"));
    assert!(
        out.status.success() && score * 10.0 <= f64::from(EXPOSURE_MAX) + 1e-9,
        "exposure {overall} is above {}: a directive loosened?\n{text}",
        f64::from(EXPOSURE_MAX) / 10.0
    );
}

/// Every system call a group (`@system-service`) or name stands for.
fn expand(item: &str, out: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return;
    }
    let listed = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", item])
        .output()
        .expect("running systemd-analyze syscall-filter");
    assert!(listed.status.success(), "syscall-filter {item}: {listed:?}");
    // The first line is the group's name, then comments and members.
    for line in String::from_utf8_lossy(&listed.stdout).lines().skip(1) {
        let word = line.trim();
        if word.is_empty() || word.starts_with('#') {
            continue;
        }
        expand(word, out);
    }
}

/// The calls the unit's `SystemCallFilter=` lines leave allowed: the first
/// an allow list, each `~` line taken away from it.
fn allowed_calls(unit: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for line in unit.lines() {
        let Some(value) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        match value.strip_prefix('~') {
            Some(deny) => deny.split_whitespace().for_each(|g| expand(g, &mut denied)),
            None => value
                .split_whitespace()
                .for_each(|g| expand(g, &mut allowed)),
        }
    }
    assert!(!allowed.is_empty(), "the unit has an allow list");
    &allowed - &denied
}

#[test]
fn server_system_calls_fit_the_unit_filter() {
    if !have("systemd-analyze", &["--version"])
        || !have("strace", &["-qq", "-o", "/dev/null", "true"])
    {
        return;
    }
    let unit = unit_text();
    let allowed = allowed_calls(&unit);
    let families: BTreeSet<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .expect("RestrictAddressFamilies=")
        .split_whitespace()
        .collect();

    let dir = util::scratch_dir("systemd-strace");
    let trace = dir.join("trace");
    let data = dir.join("data");
    // Two pinned workers (sched_setaffinity), a ledger (flock, fdatasync),
    // the HTTP control, a packet and a flooder's logins and shakes.
    let trace_arg = trace.to_str().expect("UTF-8 path");
    let server = util::Spawned::on_loopback_under(
        &["strace", "-f", "-qq", "-o", trace_arg],
        2,
        true,
        &["--data-dir", data.to_str().expect("UTF-8 path")],
    );
    // Killed should the test fail before the stop: strace, killed, would
    // leave it running.
    let traced = KillOnDrop(traced_pid(server.pid()));
    let http = server.http.expect("HTTP control");
    let (code, _) = util::http_get(http, "/packet?amount=500&users=1,2,3");
    assert_eq!(code, 200);
    assert_eq!(util::http_get_text(http, "/metrics").0, 200);
    let addr = server.addr.to_string();
    let flood = util::run_to_exit(&[
        "flood",
        "--server",
        &addr,
        "--users",
        "20",
        "--threads",
        "1",
        "--qps",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--settle-secs",
        "0",
        "--no-http",
        "--quiet",
    ]);
    assert!(flood.status.success(), "{flood:?}");
    util::signal(traced.0, libc::SIGTERM);
    let out = server.wait(Duration::from_secs(30));
    assert!(
        out.status.success() && out.stdout.contains("summary:"),
        "the clean stop: {out:?}"
    );

    let text = std::fs::read_to_string(&trace).expect("strace's output");
    let mut used = BTreeSet::new();
    let mut opened = BTreeSet::new();
    for line in text.lines() {
        // "PID name(args) = result", or a resumed or signal line.
        let call = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest)
            .trim_start();
        let Some((name, args)) = call.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        used.insert(name.to_string());
        if name == "socket" {
            opened.insert(args.split(',').next().unwrap_or("").to_string());
        }
    }
    // The exec strace itself makes, and the start-up of the Rust runtime,
    // must be in too: the filter applies from the exec on.
    assert!(
        used.contains("sched_setaffinity") && used.contains("fdatasync"),
        "the run pinned its workers and synced its ledger: {used:?}"
    );
    let refused: Vec<_> = used.difference(&allowed).collect();
    assert!(
        refused.is_empty(),
        "the server makes calls the unit's SystemCallFilter refuses: {refused:?}"
    );
    let foreign: Vec<_> = opened
        .iter()
        .filter(|f| !families.contains(f.as_str()))
        .collect();
    assert!(
        foreign.is_empty(),
        "sockets of families RestrictAddressFamilies= refuses: {foreign:?}"
    );
}

/// The process strace runs (its one child).
fn traced_pid(strace: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
        .expect("strace's children");
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the server under strace")
}

/// SIGKILL to this pid when dropped (nothing if it has exited).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0) {
            // SAFETY: kill(2) takes plain integers and touches no memory of
            // ours; a process already gone is ESRCH, ignored.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn env_file_names_every_server_option_with_its_default() {
    let cmd = hongbao::server::ServerConfig::augment_args(clap::Command::new("server"));
    let file = std::fs::read_to_string(repo().join("deploy/systemd/hongbao.env"))
        .expect("deploy/systemd/hongbao.env");
    for arg in cmd.get_arguments() {
        let long = arg.get_long().expect("a long name");
        let name = var_name("server", long);
        let default = match arg.get_action() {
            ArgAction::SetTrue => "false".to_string(),
            _ => arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(","),
        };
        let line = format!("#{name}={default}");
        assert!(
            file.lines().any(|l| l.trim() == line),
            "deploy/systemd/hongbao.env lacks the line {line:?} (--{long} and its default)"
        );
    }
    for (what, text) in [("hongbao.service", unit_text()), ("hongbao.env", file)] {
        for name in variables_named(&text) {
            assert!(
                cmd.get_arguments()
                    .any(|a| a.get_long().is_some_and(|l| var_name("server", l) == name)),
                "{what} names {name}, which is no option of hongbao server"
            );
        }
    }
}

#[test]
fn unit_open_file_limit_is_the_hosts_hard_limit() {
    let limits = std::fs::read_to_string(repo().join("sysctl/99-hongbao-limits.conf"))
        .expect("sysctl/99-hongbao-limits.conf");
    let hard: Vec<&str> = limits
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "hard", "nofile", n] => Some(n),
            _ => None,
        })
        .collect();
    assert!(!hard.is_empty(), "no hard nofile in the limits file");
    let unit = unit_text();
    let limit = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE=");
    for n in hard {
        assert_eq!(
            limit, n,
            "the unit's LimitNOFILE and sysctl/99-hongbao-limits.conf's hard nofile (a service reads no limits.d)"
        );
    }
    // Enough for the default --conns-max and the server's own descriptors
    // with 64 workers (sysctl/README.md: 1,000,547).
    let limit: u64 = limit.parse().expect("a number");
    assert!(limit >= 1_000_547, "LimitNOFILE={limit}");
}

/// Every `HONGBAO_...` word of `text`.
fn variables_named(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("HONGBAO_SERVER_") && w.len() > "HONGBAO_SERVER_".len())
        .map(str::to_string)
        .collect()
}
