//! The demo's plan: what this machine allows, and the run scaled to it.
//!
//! Owns: reading the host facts that bound a run ([`Machine`]), turning them
//! and the options into a [`Plan`] (users, phases, which cores the server
//! and the flooders get, each flooder's users and source addresses), the
//! checks printed before the run with what limits it and how to lift it, and
//! the local ports. Must not: start anything or change the host.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::host;
use crate::server::CONN_QPS_MAX_DEFAULT;
use crate::server::limits::fds_reserved;

/// Connections a flooder may have handshaking at once, per thread (the
/// flooder's own cap): what the server's accept queue must take.
const HANDSHAKES_PER_FLOODER_THREAD: u64 = 512;

/// The host facts a run is planned from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cores: Vec<usize>,
    /// The hard open-file limit, which every child inherits.
    pub nofile_hard: u64,
    /// `fs.file-max`: open files on the whole host.
    pub file_max: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral_ports: Option<(u16, u16)>,
    /// `net.core.somaxconn`: the cap on a listener's accept queue.
    pub somaxconn: Option<u64>,
}

impl Machine {
    /// A host of `cores` CPUs whose only known limit is the open-file hard
    /// limit `nofile_hard`: the fixture the demo's unit tests plan from.
    #[cfg(test)]
    pub(crate) fn for_tests(cores: usize, nofile_hard: u64) -> Machine {
        Machine {
            cores: (0..cores).collect(),
            nofile_hard,
            file_max: None,
            ephemeral_ports: None,
            somaxconn: None,
        }
    }

    /// Reads this host.
    pub fn read() -> anyhow::Result<Machine> {
        let cores: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let (_, nofile_hard) = host::nofile().context("reading the open-file limit (getrlimit)")?;
        Ok(Machine {
            cores: if cores.is_empty() { vec![0] } else { cores },
            nofile_hard,
            file_max: host::sysctl_u64("fs.file-max"),
            ephemeral_ports: host::ephemeral_ports(),
            somaxconn: host::sysctl_u64("net.core.somaxconn"),
        })
    }
}

/// What the options ask for; `None` is "scale it to the machine".
#[derive(Clone, Debug)]
pub struct Wish {
    /// Simulated users.
    pub users: Option<u32>,
    /// `--phases` text: rates, each optionally with its length.
    pub phases: String,
    /// Seconds of shaking, split evenly over the steps that name no length.
    pub duration: u64,
    /// Server worker threads.
    pub threads: Option<usize>,
    /// Flooder processes.
    pub flooders: usize,
}

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Not a limit for this run.
    Ok,
    /// This is what bounds the run.
    Limits,
    /// Works, at a cost the note names.
    Warn,
}

/// One line of the pre-flight table.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// What the host has.
    pub value: String,
    /// How it came out.
    pub verdict: Verdict,
    /// What it means for the run, and how to lift it.
    pub note: String,
}

/// One flooder process's share.
#[derive(Clone, Debug, Serialize)]
pub struct FlooderPlan {
    /// Its first user id.
    pub min: u32,
    /// Its last user id (inclusive).
    pub max: u32,
    /// Its worker threads.
    pub threads: usize,
    /// Its source addresses (`--bind`): its own, so that no two flooders
    /// compete for one address's ports.
    pub binds: Vec<Ipv4Addr>,
}

impl FlooderPlan {
    /// Its `--bind` value: one address or an inclusive range.
    pub fn bind_arg(&self) -> String {
        match (self.binds.first(), self.binds.last()) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a}-{b}"),
            _ => "127.0.0.1".to_owned(),
        }
    }
}

/// The run, scaled to the machine.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Simulated users, one connection each.
    pub users: u32,
    /// The shaking phases after the connect phase.
    pub phases: Vec<PhaseSpec>,
    /// Cores the server is pinned to.
    pub server_cores: Vec<usize>,
    /// Server worker threads.
    pub server_threads: usize,
    /// Cores the flooders are pinned to.
    pub flooder_cores: Vec<usize>,
    /// Each flooder's share.
    pub flooders: Vec<FlooderPlan>,
    /// The pre-flight checks, in the order printed.
    pub checks: Vec<Check>,
}

/// A shaking phase (what the flooder's `--phases` steps say).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PhaseSpec {
    /// Global shakes per second.
    pub qps: u64,
    /// Seconds.
    pub secs: u64,
}

impl PhaseSpec {
    /// "1000/s for 12 s", as the plan and the verdict print it.
    pub fn in_words(&self) -> String {
        format!("{}/s for {} s", self.qps, self.secs)
    }
}

impl Plan {
    /// The server's `--conn-qps-max`: each user's share of the fastest phase
    /// twice over (the slot rule gives some users one request more in a
    /// second, and pushes bring claims), plus the default
    /// ([`CONN_QPS_MAX_DEFAULT`]), so the demo's rates are served, not
    /// throttled.
    pub fn conn_qps_max(&self) -> u64 {
        let fastest = self.phases.iter().map(|p| p.qps).max().unwrap_or(0);
        fastest.div_ceil(u64::from(self.users.max(1))) * 2 + CONN_QPS_MAX_DEFAULT
    }

    /// The flooders' `--phases` argument.
    pub fn phases_arg(&self) -> String {
        let steps: Vec<String> = self
            .phases
            .iter()
            .map(|p| format!("{}x{}s", p.qps, p.secs))
            .collect();
        steps.join(",")
    }

    /// Seconds of shaking in all.
    pub fn shaking_secs(&self) -> u64 {
        self.phases.iter().map(|p| p.secs).sum()
    }
}

/// Parses `--phases`: comma-separated steps, each a rate (`30000`) or a rate
/// and its length (`30000x50s`); steps without a length share `duration`
/// evenly.
pub fn parse_phases(text: &str, duration: u64) -> anyhow::Result<Vec<PhaseSpec>> {
    let steps: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if steps.is_empty() {
        bail!("--phases is empty: give rates such as 30000,60000");
    }
    let each = duration / steps.len() as u64;
    let mut phases = Vec::with_capacity(steps.len());
    for step in steps {
        let (qps, secs) = match step.split_once(['x', 'X']) {
            Some((qps, secs)) => {
                let secs = secs.trim();
                let secs: u64 = secs
                    .strip_suffix('s')
                    .unwrap_or(secs)
                    .parse()
                    .with_context(|| format!("--phases step {step:?}: seconds"))?;
                (qps, secs)
            }
            None => (step, each),
        };
        let qps: u64 = qps
            .trim()
            .replace('_', "")
            .parse()
            .with_context(|| format!("--phases step {step:?}: rate"))?;
        if secs == 0 {
            bail!(
                "--phases step {step:?} would last 0 seconds: give it a length (30000x30s) or a longer --duration"
            );
        }
        phases.push(PhaseSpec { qps, secs });
    }
    Ok(phases)
}

/// Open files held back from `fs.file-max` for the rest of the host.
const HOST_FILES_RESERVED: u64 = 10_000;
/// Open files a user takes on the host: both ends of its connection, the
/// server's and its flooder's.
const HOST_FILES_PER_USER: u64 = 2;
/// The default user count is rounded down to this: a margin below the
/// limit, and a round number to read.
const USERS_ROUNDING: u64 = 1_000;
/// Connections per source address when the ephemeral range cannot be read
/// (about half of Linux's default range).
const CONNS_PER_ADDRESS_UNKNOWN: u64 = 10_000;
/// The flooders' first source address: 127.0.0.1 is the server's.
const FIRST_SOURCE_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Plans the run for `machine`. Refuses, naming the fix, what the machine
/// cannot hold. Each resource is planned by its own step, which adds its
/// line to the pre-flight checks.
pub fn plan(machine: &Machine, wish: &Wish) -> anyhow::Result<Plan> {
    if wish.flooders == 0 {
        bail!("--flooders 0: the demo needs at least one flooder process");
    }
    let phases = parse_phases(&wish.phases, wish.duration)?;
    let mut checks = Vec::new();
    let cores = plan_cores(machine, wish.threads, &mut checks)?;
    // The server keeps these from its workers (its HTTP control is on).
    let reserved = fds_reserved(cores.server_threads, true);
    let mut user_checks = Vec::new();
    let users = plan_users(machine, wish.users, reserved, &mut user_checks)?;
    // The open files first in the table, as the bound of the run.
    checks.splice(0..0, user_checks);
    let flooders = plan_flooders(machine, users, wish.flooders, &cores, &mut checks);
    check_accept_queue(machine, &flooders, &mut checks);
    Ok(Plan {
        users,
        phases,
        server_cores: cores.server,
        server_threads: cores.server_threads,
        flooder_cores: cores.flooders,
        flooders,
        checks,
    })
}

/// Users: the server holds one descriptor per user beside `reserved`, the
/// flooders one per user they hold; every process has the same hard limit.
/// Refuses more than fit; by default fills the limit, and says it is what bounds the
/// run.
fn plan_users(
    machine: &Machine,
    wished: Option<u32>,
    reserved: u64,
    checks: &mut Vec<Check>,
) -> anyhow::Result<u32> {
    let fd_fit = machine.nofile_hard.saturating_sub(reserved);
    let host_fit = machine.file_max.map_or(u64::MAX, |m| {
        m.saturating_sub(HOST_FILES_RESERVED) / HOST_FILES_PER_USER
    });
    let fit = fd_fit.min(host_fit).min(u64::from(u32::MAX));
    let lift = "to lift it: `sudo sysctl/hongbao-tune.sh --apply` (fs.nr_open, fs.file-max and \
                the nofile limits), then start a new login shell; or spread users over machines \
                (README: several machines)";
    let users = match wished {
        Some(0) => bail!("--users 0: the demo needs at least one user"),
        Some(u) if u64::from(u) > fit => bail!(
            "--users {u} needs {} open files in the server process, but this host allows {fit} \
             connections per process (hard open-file limit {hard}, fs.file-max {fmax}); {lift}",
            u64::from(u) + reserved,
            hard = machine.nofile_hard,
            fmax = machine
                .file_max
                .map_or_else(|| "unreadable".to_owned(), |m| m.to_string()),
        ),
        Some(u) => u,
        None if fit >= 2 * USERS_ROUNDING => (fit / USERS_ROUNDING * USERS_ROUNDING) as u32,
        None => fit.max(1) as u32,
    };
    let fd_value = format!("hard {} per process", machine.nofile_hard);
    checks.push(if wished.is_none() {
        Check {
            what: "open files",
            value: fd_value,
            verdict: Verdict::Limits,
            note: format!(
                "{users} users: the server holds one descriptor per user and this limit leaves \
                 room for {fit}; {lift}"
            ),
        }
    } else {
        Check {
            what: "open files",
            value: fd_value,
            verdict: Verdict::Ok,
            note: format!("room for {fit} connections per process; {users} asked"),
        }
    });
    if let Some(max) = machine.file_max {
        checks.push(Check {
            what: "fs.file-max",
            value: max.to_string(),
            verdict: if host_fit < fd_fit {
                Verdict::Limits
            } else {
                Verdict::Ok
            },
            note: format!(
                "the host's open files; the run needs about {} (both ends of every connection)",
                HOST_FILES_PER_USER * u64::from(users)
            ),
        });
    }
    Ok(users)
}

/// Which cores the server and the flooders get.
struct Cores {
    server_threads: usize,
    server: Vec<usize>,
    flooders: Vec<usize>,
}

/// Cores: the server on its own cores, the flooders on the rest, as the
/// seed's server and clients were on separate machines; all share every
/// core when the server's threads take them all.
fn plan_cores(
    machine: &Machine,
    threads: Option<usize>,
    checks: &mut Vec<Check>,
) -> anyhow::Result<Cores> {
    let n = machine.cores.len();
    let server_threads = threads.unwrap_or((n / 2).max(1));
    if server_threads == 0 {
        bail!("--threads 0: the server needs at least one worker");
    }
    let (server_cores, flooder_cores) = if server_threads < n {
        (
            machine.cores[..server_threads].to_vec(),
            machine.cores[server_threads..].to_vec(),
        )
    } else {
        (machine.cores.clone(), machine.cores.clone())
    };
    let shared = server_threads >= n;
    checks.push(Check {
        what: "cores",
        value: n.to_string(),
        verdict: if shared { Verdict::Warn } else { Verdict::Ok },
        note: if shared {
            format!(
                "the server's {server_threads} thread(s) and the flooders share all {n} cores: \
                 the figures measure both; fewer --threads leaves the flooders cores of their own"
            )
        } else {
            format!(
                "server: {server_threads} thread(s) on cores {server_cores:?}; flooders on cores \
                 {flooder_cores:?} (on loopback the clients' TCP work is on this machine too)"
            )
        },
    });
    Ok(Cores {
        server_threads,
        server: server_cores,
        flooders: flooder_cores,
    })
}

/// Flooders: contiguous user ranges, threads from the flooder cores, and
/// source addresses of their own, each carrying at most half the ephemeral
/// range.
fn plan_flooders(
    machine: &Machine,
    users: u32,
    wished: usize,
    cores: &Cores,
    checks: &mut Vec<Check>,
) -> Vec<FlooderPlan> {
    let flooders_n = wished.min(users as usize);
    let threads_each = (cores.flooders.len() / flooders_n).max(1);
    let ports = machine
        .ephemeral_ports
        .map(|(low, high)| u64::from(high - low) + 1);
    // Past half the range, connect() scans for a free port and slows down
    // (see flood::warn_if_ports_scarce): each address carries at most that.
    let per_address = ports.map_or(CONNS_PER_ADDRESS_UNKNOWN, |p| (p / 2).max(1));
    let mut flooders = Vec::with_capacity(flooders_n);
    let mut next_user = 0u32;
    let mut next_addr = u32::from(FIRST_SOURCE_ADDRESS);
    for i in 0..flooders_n {
        let share = users / flooders_n as u32 + u32::from((i as u32) < users % flooders_n as u32);
        let addresses = u64::from(share).div_ceil(per_address).max(1) as u32;
        let binds = (0..addresses)
            .map(|k| Ipv4Addr::from(next_addr + k))
            .collect();
        next_addr += addresses;
        flooders.push(FlooderPlan {
            min: next_user,
            max: next_user + share - 1,
            threads: threads_each,
            binds,
        });
        next_user += share;
    }
    let addresses = next_addr - u32::from(FIRST_SOURCE_ADDRESS);
    checks.push(Check {
        what: "ephemeral ports",
        value: machine
            .ephemeral_ports
            .map_or_else(|| "unreadable".to_owned(), |(l, h)| format!("{l}-{h}")),
        verdict: if ports.is_some() {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        note: format!(
            "{flooders_n} flooder(s) on {addresses} loopback source address(es), at most {per_address} \
             connections each (half the range: past it connect() slows down)"
        ),
    });
    flooders
}

/// The accept queue must take every handshake the flooders have in flight.
fn check_accept_queue(machine: &Machine, flooders: &[FlooderPlan], checks: &mut Vec<Check>) {
    let threads: usize = flooders.iter().map(|f| f.threads).sum();
    let in_flight = HANDSHAKES_PER_FLOODER_THREAD * threads as u64;
    let Some(somaxconn) = machine.somaxconn else {
        return;
    };
    checks.push(Check {
        what: "net.core.somaxconn",
        value: somaxconn.to_string(),
        verdict: if somaxconn >= in_flight {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        note: if somaxconn >= in_flight {
            format!("the accept queue takes the {in_flight} handshakes the flooders keep in flight")
        } else {
            format!(
                "below the {in_flight} handshakes in flight: some connects time out and are retried \
                 (counted), so the connect phase is slower; to lift it: \
                 `sudo sysctl -w net.core.somaxconn=65535` (sysctl/hongbao-tune.sh --apply)"
            )
        },
    });
}

/// Where the scan for a free port starts when a preferred one is taken: a
/// round number below Linux's default ephemeral range.
const PORT_SCAN_FROM: u16 = 20_000;
/// Ports the scan keeps below the ephemeral range, when that starts low.
const PORT_SCAN_ROOM_MIN: u16 = 2_000;
/// Ports below this need privileges to bind.
const PORTS_PRIVILEGED_END: u16 = 1_024;
/// Linux's default start of the ephemeral range, when it cannot be read.
pub const EPHEMERAL_LOW_DEFAULT: u16 = 32_768;

/// Local ports for the run: the preferred one when free, else the first
/// free one scanning up from 20000. Every candidate is below the ephemeral
/// range, so no client connection can be holding it by the time a child
/// binds it.
pub fn pick_ports(preferred: &[u16], ephemeral_low: Option<u16>) -> anyhow::Result<Vec<u16>> {
    let ceiling = ephemeral_low.unwrap_or(EPHEMERAL_LOW_DEFAULT);
    let free = |port: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
    let mut chosen: Vec<u16> = Vec::with_capacity(preferred.len());
    let mut scan = PORT_SCAN_FROM
        .min(ceiling.saturating_sub(PORT_SCAN_ROOM_MIN))
        .max(PORTS_PRIVILEGED_END);
    for &want in preferred {
        if want != 0 && want < ceiling && !chosen.contains(&want) && free(want) {
            chosen.push(want);
            continue;
        }
        loop {
            if scan >= ceiling {
                bail!(
                    "no free local port below the ephemeral range ({ceiling}) for the demo's \
                     processes: stop what holds them, or lower net.ipv4.ip_local_port_range's start"
                );
            }
            let port = scan;
            scan += 1;
            if !chosen.contains(&port) && free(port) {
                chosen.push(port);
                break;
            }
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cores: usize, hard: u64) -> Machine {
        Machine {
            cores: (0..cores).collect(),
            nofile_hard: hard,
            file_max: Some(9_223_372_036_854_775_807),
            ephemeral_ports: Some((32_768, 60_999)),
            somaxconn: Some(4_096),
        }
    }

    fn wish() -> Wish {
        Wish {
            users: None,
            phases: "30000,60000".into(),
            duration: 100,
            threads: None,
            flooders: 2,
        }
    }

    #[test]
    fn default_users_fill_the_open_file_limit_and_say_so() {
        let p = plan(&machine(2, 20_000), &wish()).unwrap();
        assert_eq!(p.users, 19_000);
        let fd = &p.checks[0];
        assert_eq!((fd.what, fd.verdict), ("open files", Verdict::Limits));
        assert!(fd.note.contains("hongbao-tune.sh --apply"), "{}", fd.note);
        // The users are split without gap or overlap.
        assert_eq!(p.flooders[0].min, 0);
        assert_eq!(p.flooders[0].max + 1, p.flooders[1].min);
        assert_eq!(p.flooders[1].max, p.users - 1);
    }

    #[test]
    fn too_many_users_are_refused_with_the_fix() {
        let w = Wish {
            users: Some(50_000),
            ..wish()
        };
        let e = plan(&machine(2, 20_000), &w).unwrap_err().to_string();
        assert!(e.contains("--users 50000"), "{e}");
        assert!(e.contains("hard open-file limit 20000"), "{e}");
        assert!(e.contains("hongbao-tune.sh --apply"), "{e}");
    }

    #[test]
    fn server_and_flooders_get_their_own_cores() {
        let p = plan(&machine(2, 20_000), &wish()).unwrap();
        assert_eq!(
            (p.server_cores.clone(), p.flooder_cores.clone()),
            (vec![0], vec![1])
        );
        assert_eq!(p.server_threads, 1);
        let p = plan(&machine(8, 20_000), &wish()).unwrap();
        assert_eq!(p.server_cores, vec![0, 1, 2, 3]);
        assert_eq!(p.flooders[0].threads, 2);
        // One core: everything shares it, and the check says so.
        let p = plan(&machine(1, 20_000), &wish()).unwrap();
        assert_eq!(p.flooder_cores, vec![0]);
        assert!(
            p.checks
                .iter()
                .any(|c| c.what == "cores" && c.verdict == Verdict::Warn)
        );
    }

    #[test]
    fn each_flooder_binds_its_own_addresses_within_half_the_port_range() {
        let w = Wish {
            users: Some(60_000),
            flooders: 1,
            ..wish()
        };
        let p = plan(&machine(2, 1_000_000), &w).unwrap();
        // 28,232 ports: 14,116 per address, so 60,000 users need 5.
        assert_eq!(p.flooders[0].binds.len(), 5);
        assert_eq!(p.flooders[0].bind_arg(), "127.0.0.2-127.0.0.6");
        let p = plan(&machine(2, 20_000), &wish()).unwrap();
        assert_eq!(p.flooders[0].bind_arg(), "127.0.0.2");
        assert_eq!(p.flooders[1].bind_arg(), "127.0.0.3");
    }

    #[test]
    fn phases_take_rates_or_lengths() {
        assert_eq!(
            parse_phases("30000,60000", 100).unwrap(),
            vec![
                PhaseSpec {
                    qps: 30_000,
                    secs: 50
                },
                PhaseSpec {
                    qps: 60_000,
                    secs: 50
                }
            ]
        );
        let p = parse_phases("1_000x3s, 2000", 10).unwrap();
        assert_eq!(
            (p[0], p[1]),
            (
                PhaseSpec { qps: 1000, secs: 3 },
                PhaseSpec { qps: 2000, secs: 5 }
            )
        );
        assert!(parse_phases("", 10).is_err());
        assert!(parse_phases("100,200,300", 2).is_err());
        assert!(parse_phases("fast", 10).is_err());
    }

    #[test]
    fn a_small_somaxconn_is_a_warning_with_the_fix() {
        let mut m = machine(2, 20_000);
        m.somaxconn = Some(128);
        let p = plan(&m, &wish()).unwrap();
        let c = p
            .checks
            .iter()
            .find(|c| c.what == "net.core.somaxconn")
            .unwrap();
        assert_eq!(c.verdict, Verdict::Warn);
        assert!(c.note.contains("somaxconn=65535"), "{}", c.note);
    }

    #[test]
    fn picked_ports_are_free_distinct_and_below_the_ephemeral_range() {
        let first = pick_ports(&[0], Some(32_768)).unwrap()[0];
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, first)).unwrap();
        let ports = pick_ports(&[first, first, 0, 40_000], Some(32_768)).unwrap();
        drop(held);
        assert_eq!(ports.len(), 4);
        assert!(!ports.contains(&first), "{ports:?} holds the taken {first}");
        assert!(
            ports.iter().all(|&p| (1_024..32_768).contains(&p)),
            "{ports:?}"
        );
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{ports:?}");
    }
}
