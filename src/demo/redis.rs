//! The demo's Redis Cluster (`hongbao demo --nodes N`): `tools/cluster.sh`,
//! built into this binary and run from the output directory, so the demo
//! starts the same cluster an operator starts by hand.
//!
//! Owns: starting the cluster (3 primaries x 1 replica on loopback ports it
//! is given or finds free), killing one primary and bringing it back (each
//! a run of the script), telling when a killed primary's replica has taken
//! its slots (`CLUSTER NODES` of a live node), and stopping every
//! redis-server it started — `cluster.sh down`, which stops exactly the
//! pids of its pidfiles — on every path out, `Drop` included. Must not:
//! touch a Redis it did not start, or wait on the script without a
//! deadline.

use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::child::{Child, describe};

/// The script, as built into this binary.
const SCRIPT: &str = include_str!("../../tools/cluster.sh");
/// Primaries of the demo's cluster: Redis Cluster's minimum.
pub const PRIMARIES: u16 = 3;
/// Replicas per primary: one, so a killed primary's replica takes over.
pub const REPLICAS: u16 = 1;
/// Redis nodes in all.
pub const NODES: u16 = PRIMARIES * (1 + REPLICAS);
/// Redis Cluster's bus listens on each node's port + 10000.
const BUS_OFFSET: u16 = 10_000;
/// Where the search for free ports starts: the script's default base, the
/// usual Redis Cluster ports.
const FIRST_BASE: u16 = 7_000;
/// The longest a run of the script may take: its own deadlines are 60 s to
/// start and 10 s to stop.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);
/// How long a script past [`SCRIPT_DEADLINE`] has after SIGTERM before
/// SIGKILL: it is stuck by then, and bash exits on SIGTERM at once.
const SCRIPT_STOP_GRACE: Duration = Duration::from_secs(1);
/// How often a running script is looked at.
const SCRIPT_POLL: Duration = Duration::from_millis(50);
/// The longest one `CLUSTER NODES` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lines of a failed script's log quoted in the error.
const LOG_TAIL_LINES: usize = 8;

/// The cluster's `cluster-node-timeout` as the script sets it: how long a
/// primary must be unreachable before its replica is promoted.
pub fn node_timeout_ms() -> Option<u64> {
    SCRIPT
        .lines()
        .find_map(|l| l.strip_prefix("NODE_TIMEOUT_MS="))
        .and_then(|v| v.trim().parse().ok())
}

/// The first base port from 7000 up whose [`NODES`] ports and their bus
/// ports (+10000) are all free and below `ceiling` (the ephemeral range,
/// which a client connection could be holding).
pub fn free_base(ceiling: u16) -> anyhow::Result<u16> {
    let free = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
    let mut base = FIRST_BASE;
    while u32::from(base) + u32::from(NODES + BUS_OFFSET) <= u32::from(ceiling) {
        if (base..base + NODES).all(|p| free(p) && free(p + BUS_OFFSET)) {
            return Ok(base);
        }
        base += NODES;
    }
    bail!(
        "no {NODES} free local ports (and their cluster bus ports, +{BUS_OFFSET}) from {FIRST_BASE} \
         below the ephemeral range ({ceiling}) for the demo's Redis Cluster: give --redis-port"
    )
}

/// A running Redis Cluster the demo started.
pub struct Redis {
    /// The script, written into the output directory.
    script: PathBuf,
    /// The cluster's directory (the nodes' configs, pidfiles, logs, data).
    dir: PathBuf,
    /// Where the script's runs write their output.
    logs: PathBuf,
    /// The first node's port; the others follow it.
    base: u16,
    /// Every redis-server pid seen running, in order.
    pids: Vec<u32>,
    /// True until `down` has run.
    running: bool,
}

impl Redis {
    /// `cluster.sh up` on ports `base..base+6` in `out/redis`: waits until
    /// every node says the cluster is ok. On failure, what started is
    /// stopped.
    pub fn up(out: &Path, base: u16) -> anyhow::Result<Redis> {
        let script = out.join("cluster.sh");
        std::fs::write(&script, SCRIPT)
            .and_then(|()| {
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            })
            .with_context(|| format!("writing {}", script.display()))?;
        let mut redis = Redis {
            script,
            dir: out.join("redis"),
            logs: out.join("logs"),
            base,
            pids: Vec::new(),
            // From here `Drop` runs `down`, should `up` fail half way.
            running: true,
        };
        redis.run(
            "up",
            &[
                "--port",
                &base.to_string(),
                "--primaries",
                &PRIMARIES.to_string(),
                "--replicas",
                &REPLICAS.to_string(),
            ],
        )?;
        redis.note_pids();
        Ok(redis)
    }

    /// Its nodes' ports.
    pub fn ports(&self) -> Range<u16> {
        self.base..self.base + NODES
    }

    /// Every node as `redis://127.0.0.1:PORT`, comma-separated: the
    /// servers' `--cluster`.
    pub fn urls(&self) -> String {
        self.ports()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every redis-server pid seen running.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Node `port`'s pid from its pidfile, when it has one.
    pub fn pid_of(&self, port: u16) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("node-{port}/redis.pid")))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    fn note_pids(&mut self) {
        for p in self.ports() {
            if let Some(pid) = self.pid_of(p)
                && !self.pids.contains(&pid)
            {
                self.pids.push(pid);
            }
        }
    }

    /// `cluster.sh kill-primary`: kill -9 of a primary that serves slots.
    /// Returns its port and pid.
    pub fn kill_primary(&mut self) -> anyhow::Result<(u16, Option<u32>)> {
        let before: Vec<(u16, Option<u32>)> = self.ports().map(|p| (p, self.pid_of(p))).collect();
        let log = self.run("kill-primary", &[])?;
        // The port is alone on its line (stdout); the script's words are
        // on the others.
        let port = log
            .lines()
            .find_map(|l| l.trim().parse::<u16>().ok())
            .context("cluster.sh kill-primary printed no port")?;
        let pid = before
            .iter()
            .find(|(p, _)| *p == port)
            .and_then(|(_, pid)| *pid);
        Ok((port, pid))
    }

    /// Starts `cluster.sh restart --port PORT` (which waits until the node
    /// is back in the cluster), to be watched with [`Restart::done`].
    pub fn restart(&self, port: u16) -> anyhow::Result<Restart> {
        let name = "restart";
        let child = self.spawn(name, &["--port", &port.to_string()])?;
        Ok(Restart {
            child,
            started: Instant::now(),
        })
    }

    /// The restarted node's role as the script said it (`primary` or
    /// `replica`), and its pid noted.
    pub fn restarted(&mut self, restart: &Restart) -> Option<String> {
        self.note_pids();
        let log = std::fs::read_to_string(&restart.child.log).ok()?;
        log.lines()
            .find_map(|l| l.split(" is back: ").nth(1))
            .map(|r| r.trim().to_owned())
    }

    /// True when a live node's `CLUSTER NODES` says node `killed` has
    /// failed and serves no slots any more: its replica took them.
    pub fn replaced(&self, killed: u16) -> bool {
        self.ports()
            .filter(|&p| p != killed)
            .any(|p| cluster_nodes(p).is_some_and(|text| slots_moved_from(&text, killed)))
    }

    /// `cluster.sh down`: stops every node of the cluster (by the pids of
    /// its pidfiles) and removes its directory.
    pub fn down(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.note_pids();
        self.running = false;
        self.run("down", &[]).map(drop)
    }

    /// Starts one run of the script, its output in `logs/redis-CMD.log`.
    fn spawn(&self, cmd: &str, args: &[&str]) -> anyhow::Result<Child> {
        let mut argv = vec![
            self.script.display().to_string(),
            cmd.to_owned(),
            "--dir".to_owned(),
            self.dir.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        Child::spawn(
            &format!("cluster.sh {cmd}"),
            Path::new("bash"),
            &argv,
            &[],
            self.logs.join(format!("redis-{cmd}.log")),
        )
    }

    /// Runs the script to its end (within [`SCRIPT_DEADLINE`]); returns its
    /// output, or fails quoting it.
    fn run(&self, cmd: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut child = self.spawn(cmd, args)?;
        let Some(status) = child.wait_for(SCRIPT_DEADLINE) else {
            child.stop(SCRIPT_STOP_GRACE);
            bail!(
                "tools/cluster.sh {cmd} did not finish within {} s; its log ({}) ends:\n{}",
                SCRIPT_DEADLINE.as_secs(),
                child.log.display(),
                child.log_tail(LOG_TAIL_LINES)
            );
        };
        if !status.success() {
            bail!(
                "tools/cluster.sh {cmd} {}; its log ({}) ends:\n{}",
                describe(status),
                child.log.display(),
                child.log_tail(LOG_TAIL_LINES)
            );
        }
        Ok(std::fs::read_to_string(&child.log).unwrap_or_default())
    }
}

impl Drop for Redis {
    /// The cluster is never left behind, whatever path the demo leaves by.
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("hongbao demo: stopping the Redis Cluster: {e:#}");
        }
    }
}

/// A `cluster.sh restart` running.
pub struct Restart {
    child: Child,
    started: Instant,
}

impl Restart {
    /// None while it runs; then whether it succeeded (or why not). Past
    /// [`SCRIPT_DEADLINE`] it is stopped and fails.
    pub fn done(&mut self) -> Option<Result<(), String>> {
        if let Some(status) = self.child.exited() {
            return Some(if status.success() {
                Ok(())
            } else {
                Err(format!(
                    "tools/cluster.sh restart {}: {}",
                    describe(status),
                    self.child.log_tail(LOG_TAIL_LINES)
                ))
            });
        }
        if self.started.elapsed() > SCRIPT_DEADLINE {
            self.child.stop(SCRIPT_STOP_GRACE);
            return Some(Err(format!(
                "tools/cluster.sh restart did not finish within {} s",
                SCRIPT_DEADLINE.as_secs()
            )));
        }
        None
    }

    /// Waits for it to end, polling.
    pub fn wait(&mut self) -> Result<(), String> {
        loop {
            if let Some(r) = self.done() {
                return r;
            }
            std::thread::sleep(SCRIPT_POLL);
        }
    }
}

/// `CLUSTER NODES` of the node on `port`, None when it does not answer
/// within [`PROBE_TIMEOUT`].
fn cluster_nodes(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut conn = client.get_connection_with_timeout(PROBE_TIMEOUT).ok()?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    redis::cmd("CLUSTER")
        .arg("NODES")
        .query::<String>(&mut conn)
        .ok()
}

/// Whether a `CLUSTER NODES` text says node `port` is failed (`fail`, not
/// the unconfirmed `fail?`) and serves no slots: each line is `id
/// ip:port@bus flags primary ping pong epoch link [slots...]`.
fn slots_moved_from(text: &str, port: u16) -> bool {
    let addr = format!("127.0.0.1:{port}@");
    text.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() == 8 && f[1].starts_with(&addr) && f[2].split(',').any(|flag| flag == "fail")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_is_replaced_once_failed_and_without_slots() {
        let before = "\
a1 127.0.0.1:7000@17000 master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected
";
        assert!(!slots_moved_from(before, 7000));
        // Suspected only (`fail?`): not yet.
        let suspected = before.replace(
            "master - 0 0 1 connected 0-5460",
            "master,fail? - 0 0 1 disconnected 0-5460",
        );
        assert!(!slots_moved_from(&suspected, 7000));
        // Failed and its slots gone to its replica.
        let after = "\
a1 127.0.0.1:7000@17000 master,fail - 0 0 1 disconnected
b2 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 master - 0 0 4 connected 0-5460
";
        assert!(slots_moved_from(after, 7000));
        assert!(!slots_moved_from(after, 7001));
        // 7000 and 70000-like prefixes do not mix.
        assert!(!slots_moved_from(after, 700));
    }

    #[test]
    fn the_node_timeout_is_read_from_the_script() {
        assert!(
            node_timeout_ms().is_some_and(|t| t > 0),
            "{:?}",
            node_timeout_ms()
        );
    }
}
