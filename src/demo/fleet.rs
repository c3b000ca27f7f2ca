//! The demo's fleet (`hongbao demo --nodes N`): N hongbao nodes on one
//! Redis Cluster, and the faults the run injects into it.
//!
//! Owns: the cluster run's defaults; the fault schedule ([`FaultPlan`]:
//! when, in seconds into the shaking phases, node 2 is killed with SIGKILL
//! and started again, and a Redis primary is killed and brought back once
//! its replica has taken over) and running it from the watch loop one
//! step at a time ([`Faults::step`], which never waits on anything longer
//! than a probe); the packets' split over the nodes; the events as they
//! happened. Must not: kill a process the demo did not start, or leave the
//! Redis Cluster short of a node when the audit reads it.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::redis::{Redis, Restart};
use super::summary::FaultEvent;

/// What the fault schedule does to the run: the demo's run implements it.
pub trait Fleet {
    /// Kills node `index` (from 0) with SIGKILL; its pid, None when it had
    /// no process running.
    fn kill_node(&mut self, index: usize) -> Option<u32>;
    /// Starts node `index` again (same node id and data directory); its
    /// pid.
    fn restart_node(&mut self, index: usize) -> anyhow::Result<u32>;
    /// Whether node `index` answers and reaches the engine.
    fn node_ready(&self, index: usize) -> bool;
    /// The last lines of node `index`'s log.
    fn node_log_tail(&self, index: usize) -> String;
    /// Node `index`'s share of the packets again, for what is left of
    /// their time; the event in words, None when none is left.
    fn restart_packets(&self, index: usize, packets_per_sec: u64) -> Option<String>;
    /// The Redis Cluster.
    fn redis(&mut self) -> Option<&mut Redis>;
}

/// `--users` with `--nodes` when not given: a few thousand, so that the
/// fleet (three nodes, six redis-servers, two flooders and the monitor)
/// runs on a 2-core machine in about a minute (65 s measured, debug build).
pub const USERS: u32 = 3_000;
/// `--phases` with `--nodes` when not given: shakes are each node's own
/// (no engine call), so modest rates show the fleet without taking the
/// cores the redis-servers need.
pub const PHASES: &str = "2000,4000";
/// `--duration` with `--nodes` when not given, seconds: room for both
/// faults and their recovery.
pub const DURATION_SECS: u64 = 40;
/// The most nodes: each takes two local ports and a process.
pub const NODES_MAX: u32 = 16;
/// Shaking seconds the schedule needs: a node down for
/// [`NODE_DOWN_SECS`], then a primary's failover (the script's
/// `cluster-node-timeout` of 2 s and an election) and its restart, each
/// inside the run.
pub const SHAKING_SECS_MIN: u64 = 16;
/// The packets stop this many seconds before the shaking does, so that the
/// last ones are created in the engine and claimed before the nodes stop.
pub const PACKETS_END_MARGIN_SECS: u64 = 3;
/// The node the schedule kills (its id): the second, whose users fail over
/// to the third.
const VICTIM_NODE: u32 = 2;
/// When the node is killed, as a fraction of the shaking seconds.
const NODE_KILL_AT: f64 = 0.25;
/// How long it stays down, seconds: its users have failed over by then.
const NODE_DOWN_SECS: f64 = 4.0;
/// When a Redis primary is killed, as a fraction of the shaking seconds:
/// after the node is back.
const PRIMARY_KILL_AT: f64 = 0.55;
/// The longest the schedule waits for the killed primary's replica to take
/// its slots before it restarts the primary anyway (it then comes back as
/// the primary): far above a failover's few seconds.
const PROMOTION_WAIT_MAX: Duration = Duration::from_secs(20);
/// The longest the end of the run waits for a restarted node to answer.
const NODE_START_WAIT_MAX: Duration = Duration::from_secs(15);
/// How often the end of the run looks whether a killed primary's replica
/// has taken over.
const SETTLE_POLL: Duration = Duration::from_millis(200);

fn unix_now() -> f64 {
    crate::clock::unix_now().as_secs_f64()
}

/// When the faults happen, seconds into the shaking phases (after the
/// flooders' warmup).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct FaultPlan {
    /// The hongbao node killed (its id, from 1).
    pub node: u32,
    /// When it is killed with SIGKILL.
    pub node_kill_secs: f64,
    /// When it is started again (same node id, same data directory).
    pub node_restart_secs: f64,
    /// When a Redis primary is killed with SIGKILL; it is restarted once
    /// its replica has taken its slots.
    pub primary_kill_secs: f64,
}

impl FaultPlan {
    /// The schedule for `shaking_secs` of shaking.
    pub fn new(shaking_secs: u64) -> FaultPlan {
        let s = shaking_secs as f64;
        let node_kill_secs = (s * NODE_KILL_AT).round();
        FaultPlan {
            node: VICTIM_NODE,
            node_kill_secs,
            node_restart_secs: node_kill_secs + NODE_DOWN_SECS,
            primary_kill_secs: (s * PRIMARY_KILL_AT)
                .round()
                .max(node_kill_secs + NODE_DOWN_SECS + 1.0),
        }
    }

    /// The schedule in words, for the plan printed before the run.
    pub fn describe(&self) -> String {
        format!(
            "kill -9 of hongbao node {} at +{:.0} s, started again at +{:.0} s; kill -9 of a Redis primary at +{:.0} s, restarted once its replica has taken over",
            self.node, self.node_kill_secs, self.node_restart_secs, self.primary_kill_secs
        )
    }
}

/// `total` packets per second split over `nodes` nodes: as even as whole
/// numbers allow, the first nodes taking the remainder.
pub fn packet_rates(total: u64, nodes: usize) -> Vec<u64> {
    let n = nodes.max(1) as u64;
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

/// Where the killed node is.
enum NodeFault {
    /// Not yet killed.
    Pending,
    /// Killed; down until its restart.
    Down { killed: Instant },
    /// Started again, not yet answering.
    Starting { killed: Instant, started: Instant },
    /// Answering again (or given up on: said in the events).
    Done,
}

/// Where the killed Redis primary is.
enum PrimaryFault {
    /// Not yet killed.
    Pending,
    /// Killed; waiting for its replica to take its slots.
    Down { port: u16, killed: Instant },
    /// `cluster.sh restart` running.
    Restarting {
        port: u16,
        killed: Instant,
        restart: Box<Restart>,
    },
    /// Back in the cluster (or given up on: said in the events).
    Done,
}

/// The fault schedule as it runs.
pub struct Faults {
    plan: FaultPlan,
    node: NodeFault,
    primary: PrimaryFault,
    /// What happened, in order.
    pub events: Vec<FaultEvent>,
    /// The Unix second the shaking phases start (the flooders' start plus
    /// their warmup), once the flooders say.
    shaking_start_unix: Option<f64>,
}

impl Faults {
    /// The schedule, not started.
    pub fn new(plan: FaultPlan) -> Faults {
        Faults {
            plan,
            node: NodeFault::Pending,
            primary: PrimaryFault::Pending,
            events: Vec::new(),
            shaking_start_unix: None,
        }
    }

    /// Sets when the shaking phases start, Unix seconds (the first time the
    /// flooders say).
    pub fn shaking_starts_at(&mut self, unix: f64) {
        self.shaking_start_unix.get_or_insert(unix);
    }

    /// Seconds into the shaking phases now; None before the flooders said.
    fn at(&self) -> Option<f64> {
        self.shaking_start_unix.map(|start| unix_now() - start)
    }

    /// Whether a step is waiting on something (the watch loop then looks
    /// more often than once a second, to time it closely).
    pub fn waiting(&self) -> bool {
        matches!(self.node, NodeFault::Starting { .. })
            || matches!(
                self.primary,
                PrimaryFault::Down { .. } | PrimaryFault::Restarting { .. }
            )
    }

    fn event(&mut self, what: String) -> String {
        let unix = unix_now();
        let shaking_secs = self.shaking_start_unix.map_or(0.0, |start| unix - start);
        let line = format!("{shaking_secs:>+6.1} s  {what}");
        self.events.push(FaultEvent {
            unix,
            shaking_secs,
            what,
        });
        line
    }

    /// One step of the schedule: does what is due, notes what happened.
    /// Returns the new events as lines to print; `Err` when a fault could
    /// not be brought back (the run then fails).
    pub fn step(
        &mut self,
        run: &mut dyn Fleet,
        packets_per_sec: u64,
    ) -> Result<Vec<String>, String> {
        let Some(at) = self.at() else {
            return Ok(Vec::new());
        };
        let mut lines = Vec::new();
        self.step_node(run, at, packets_per_sec, &mut lines)?;
        self.step_primary(run, at, &mut lines)?;
        Ok(lines)
    }

    fn step_node(
        &mut self,
        run: &mut dyn Fleet,
        at: f64,
        packets_per_sec: u64,
        lines: &mut Vec<String>,
    ) -> Result<(), String> {
        let index = self.plan.node as usize - 1;
        match self.node {
            NodeFault::Pending if at >= self.plan.node_kill_secs => {
                let Some(pid) = run.kill_node(index) else {
                    return Err(format!(
                        "hongbao node {} had already exited",
                        self.plan.node
                    ));
                };
                lines.push(self.event(format!(
                    "killed hongbao node {} (pid {pid}) with SIGKILL; its users fail over to the next node",
                    self.plan.node
                )));
                self.node = NodeFault::Down {
                    killed: Instant::now(),
                };
            }
            NodeFault::Down { killed } if at >= self.plan.node_restart_secs => {
                let pid = run.restart_node(index).map_err(|e| format!("{e:#}"))?;
                lines.push(self.event(format!(
                    "started hongbao node {} again (pid {pid}), same node id and data directory",
                    self.plan.node
                )));
                self.node = NodeFault::Starting {
                    killed,
                    started: Instant::now(),
                };
            }
            NodeFault::Starting { killed, started } => {
                if run.node_ready(index) {
                    lines.push(self.event(format!(
                        "hongbao node {} answers again and reaches the engine, {:.1} s after its start, {:.1} s after its kill",
                        self.plan.node,
                        started.elapsed().as_secs_f64(),
                        killed.elapsed().as_secs_f64()
                    )));
                    self.node = NodeFault::Done;
                    // Its share of the packets: its schedule died with it.
                    if let Some(line) = run.restart_packets(index, packets_per_sec) {
                        lines.push(self.event(line));
                    }
                } else if started.elapsed() > NODE_START_WAIT_MAX {
                    return Err(format!(
                        "hongbao node {} did not answer within {} s of its restart; its log ends:\n{}",
                        self.plan.node,
                        NODE_START_WAIT_MAX.as_secs(),
                        run.node_log_tail(index)
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn step_primary(
        &mut self,
        run: &mut dyn Fleet,
        at: f64,
        lines: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(redis) = run.redis() else {
            return Ok(());
        };
        match &mut self.primary {
            PrimaryFault::Pending if at >= self.plan.primary_kill_secs => {
                let (port, pid) = redis.kill_primary().map_err(|e| format!("{e:#}"))?;
                self.primary = PrimaryFault::Down {
                    port,
                    killed: Instant::now(),
                };
                lines.push(self.event(format!(
                    "killed Redis primary 127.0.0.1:{port} (pid {}) with SIGKILL",
                    pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
                )));
            }
            PrimaryFault::Down { port, killed } => {
                let (port, killed) = (*port, *killed);
                let replaced = redis.replaced(port);
                if !replaced && killed.elapsed() < PROMOTION_WAIT_MAX {
                    return Ok(());
                }
                let restart = redis.restart(port).map_err(|e| format!("{e:#}"))?;
                lines.push(self.event(if replaced {
                    format!(
                        "its replica has taken its slots, {:.1} s after the kill: restarting 127.0.0.1:{port}",
                        killed.elapsed().as_secs_f64()
                    )
                } else {
                    format!(
                        "its replica has not taken its slots {} s after the kill: restarting 127.0.0.1:{port} anyway",
                        PROMOTION_WAIT_MAX.as_secs()
                    )
                }));
                self.primary = PrimaryFault::Restarting {
                    port,
                    killed,
                    restart: Box::new(restart),
                };
            }
            PrimaryFault::Restarting {
                port,
                killed,
                restart,
            } => {
                let (port, killed) = (*port, *killed);
                let Some(done) = restart.done() else {
                    return Ok(());
                };
                let role = redis.restarted(restart);
                self.primary = PrimaryFault::Done;
                done?;
                lines.push(self.event(format!(
                    "Redis node 127.0.0.1:{port} is back in the cluster as a {}, {:.1} s after its kill",
                    role.as_deref().unwrap_or("node"),
                    killed.elapsed().as_secs_f64()
                )));
            }
            _ => {}
        }
        Ok(())
    }

    /// At the end of the run: a Redis node still down is brought back (the
    /// audit reads every slot), each wait bounded; what happened is noted.
    pub fn settle(&mut self, redis: &mut Redis) -> Vec<String> {
        let mut lines = Vec::new();
        if let PrimaryFault::Down { port, killed } = self.primary {
            while !redis.replaced(port) && killed.elapsed() < PROMOTION_WAIT_MAX {
                std::thread::sleep(SETTLE_POLL);
            }
            match redis.restart(port) {
                Ok(restart) => {
                    self.primary = PrimaryFault::Restarting {
                        port,
                        killed,
                        restart: Box::new(restart),
                    };
                }
                Err(e) => {
                    self.primary = PrimaryFault::Done;
                    lines.push(self.event(format!("restarting 127.0.0.1:{port} failed: {e:#}")));
                }
            }
        }
        if let PrimaryFault::Restarting {
            port,
            killed,
            restart,
        } = &mut self.primary
        {
            let (port, killed) = (*port, *killed);
            let done = restart.wait();
            let role = redis.restarted(restart);
            self.primary = PrimaryFault::Done;
            lines.push(self.event(match done {
                Ok(()) => format!(
                    "after the run: Redis node 127.0.0.1:{port} is back in the cluster as a {}, {:.1} s after its kill",
                    role.as_deref().unwrap_or("node"),
                    killed.elapsed().as_secs_f64()
                ),
                Err(e) => format!("after the run: restarting 127.0.0.1:{port} failed: {e}"),
            }));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_faults_fall_inside_the_run_in_order() {
        for secs in [SHAKING_SECS_MIN, 20, DURATION_SECS, 100] {
            let p = FaultPlan::new(secs);
            assert!(p.node_kill_secs >= 1.0, "{p:?}");
            assert!(p.node_restart_secs > p.node_kill_secs, "{p:?}");
            assert!(p.primary_kill_secs > p.node_restart_secs, "{p:?}");
            // The primary's failover (a few seconds) fits before the end.
            assert!(p.primary_kill_secs + 4.0 < secs as f64, "{secs}: {p:?}");
        }
    }

    #[test]
    fn packets_split_evenly_over_the_nodes() {
        assert_eq!(packet_rates(20, 3), vec![7, 7, 6]);
        assert_eq!(packet_rates(2, 3), vec![1, 1, 0]);
        assert_eq!(packet_rates(0, 3), vec![0, 0, 0]);
        assert_eq!(packet_rates(9, 3).iter().sum::<u64>(), 9);
    }
}
