//! The demo's children: this same binary run as server, monitor, flooders.
//!
//! Owns: starting a child pinned to its cores, in its own process group
//! (so the terminal's Ctrl-C reaches the demo alone, which then stops the
//! children in order), with its output in a log file, and killed by the
//! kernel should the demo die first; stopping a child by its pid (SIGTERM,
//! then SIGKILL after a grace period); the tail of its log for an error
//! message. Must not: signal any process it did not start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How often a wait for a child's exit looks: short beside any grace.
const EXIT_POLL: Duration = Duration::from_millis(50);
/// The grace a child dropped while running gets before SIGKILL (the demo's
/// own stops give their own).
const DROP_GRACE: Duration = Duration::from_secs(5);
/// Bytes read from the end of a log for its tail: far more than the few
/// lines an error quotes, and never the whole of a long log.
const TAIL_BYTES_MAX: u64 = 16 * 1024;

/// A running child.
#[derive(Debug)]
pub struct Child {
    /// `server`, `monitor`, `flood-0`, ...
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: std::process::Child,
    status: Option<ExitStatus>,
}

impl Child {
    /// Starts `exe args...` pinned to `cores` (all when empty), output to
    /// `log`.
    pub fn spawn(
        name: &str,
        exe: &Path,
        args: &[String],
        cores: &[usize],
        log: PathBuf,
    ) -> anyhow::Result<Child> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {} twice", log.display()))?;
        // Built before the fork: only async-signal-safe calls run after it.
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &core in cores {
            // SAFETY: CPU_SET writes one bit inside `set`; `core` is a CPU
            // id the kernel reported, below CPU_SETSIZE.
            unsafe { libc::CPU_SET(core, &mut set) };
        }
        let pin = !cores.is_empty();
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        let mut command = Command::new(exe);
        // The demo's children run as its plan says, whatever the shell's
        // HONGBAO_SERVER_* / _FLOOD_* / _MONITOR_* variables would add.
        for (name, _) in crate::environment::option_vars() {
            command.env_remove(name);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure calls only async-signal-safe functions
        // (setpgid, prctl, getppid, sched_setaffinity, _exit) on values
        // prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                // Its own process group: a terminal's SIGINT goes to the
                // demo alone, which stops the children in order.
                libc::setpgid(0, 0);
                // Killed with the demo, should the demo die without
                // stopping it; and if the demo is already gone, go now.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if pin && libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting the {name} ({})", exe.display()))?;
        Ok(Child {
            name: name.to_owned(),
            log,
            child,
            status: None,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (reaped once).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Stops it: SIGTERM, then SIGKILL if it has not exited within
    /// `grace`. Returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.exited() {
            return s;
        }
        // The pid is our own unreaped child, so it cannot have been reused.
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill has no memory effects; the pid is our child's.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if let Some(s) = self.wait_for(grace) {
            return s;
        }
        let _ = self.child.kill();
        // A wait status whose low bits are a signal number reads as killed
        // by it: what SIGKILL left, should the wait itself fail.
        let status = self
            .child
            .wait()
            .unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
        self.status = Some(status);
        status
    }

    /// Kills it with SIGKILL at once (the fault the demo injects into a
    /// fleet: no chance to stop cleanly) and reaps it. Returns how it ended.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(s) = self.exited() {
            return s;
        }
        // std's kill is SIGKILL, to our own unreaped child.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or(ExitStatus::from_raw(libc::SIGKILL));
        self.status = Some(status);
        status
    }

    /// The last `lines` lines of its log, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Child {
    /// A child is never left behind, whatever path the demo leaves by.
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop(DROP_GRACE);
        }
    }
}

/// How an exit status reads in a sentence.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited cleanly".to_owned(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".to_owned(),
    }
}

/// The last `lines` lines of a file (at most its last 16 KiB,
/// `TAIL_BYTES_MAX`).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES_MAX)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_stopped_by_sigterm_and_its_log_kept() {
        let dir = std::env::temp_dir().join(format!("hongbao-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = vec!["-c".to_owned(), "echo started; exec sleep 30".to_owned()];
        let mut c = Child::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &args,
            &[0],
            dir.join("s.log"),
        )
        .unwrap();
        assert!(c.exited().is_none());
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let status = c.stop(Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "SIGTERM was not enough"
        );
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(describe(status), "was killed by signal 15");
        assert_eq!(c.log_tail(5), "started");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_child_deaf_to_sigterm_is_killed_after_the_grace() {
        let dir = std::env::temp_dir().join(format!("hongbao-child-k-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = vec![
            "-c".to_owned(),
            "trap '' TERM; echo ready; while :; do sleep 1; done".to_owned(),
        ];
        let mut c =
            Child::spawn("deaf", Path::new("/bin/sh"), &args, &[], dir.join("d.log")).unwrap();
        // Wait for the trap to be set before signalling.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.log_tail(1) != "ready" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = c.stop(Duration::from_millis(300));
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
