//! Start-up checks against the host: the open-file limit and the listeners.
//!
//! Owns: raising RLIMIT_NOFILE to its hard limit and telling the operator
//! exactly what to change when that is below the planned connections; binding
//! the per-worker SO_REUSEPORT listeners. Must not: change anything outside
//! this process. Every error names the step that failed and the fix.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Descriptors the process keeps for itself whatever its size: stdio, the
/// ledger and its directory, the stats and latency files, the stats thread's
/// reads of /proc, a registration with the monitor, the listener probe. A
/// server with one worker and every output open holds 16 (counted in
/// /proc/PID/fd); the rest is margin.
pub const FDS_FIXED: u64 = 32;
/// Descriptors per worker beyond its connections: its listener, epoll and
/// waker's eventfd, and one spare.
pub const FDS_PER_WORKER: u64 = 4;

/// Descriptors kept from the data plane: [`FDS_FIXED`], [`FDS_PER_WORKER`]
/// per worker and, with the HTTP control, all it can hold
/// ([`crate::http::FDS_MAX`]). The workers stop accepting at the open-file
/// limit less these, so a full data plane leaves the control and the ledger
/// theirs.
pub fn fds_reserved(threads: usize, control: bool) -> u64 {
    let control = if control { crate::http::FDS_MAX } else { 0 };
    FDS_FIXED + FDS_PER_WORKER * threads as u64 + control
}

/// The kernel's default `fs.nr_open` (2^20): advice never suggests less.
const NR_OPEN_DEFAULT: u64 = 1_048_576;
/// `fs.file-max` advised per `fs.nr_open`: the whole host needs room for
/// other processes' files beside this one's.
const FILE_MAX_PER_NR_OPEN: u64 = 2;

/// What the open-file limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit after raising it.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl FdLimit {
    /// Connections this limit leaves room for beside `reserved`
    /// descriptors ([`fds_reserved`]).
    pub fn conns(&self, reserved: u64) -> u64 {
        self.soft.saturating_sub(reserved)
    }

    /// Each of `threads` workers' connection cap: its share of
    /// `conns_max`, and never more than its share of the descriptors left
    /// beside `reserved` (at least 1, so a worker still serves when the
    /// limit is below the reserve; the start-up warning says so).
    pub fn worker_conns_max(&self, conns_max: usize, threads: usize, reserved: u64) -> usize {
        let threads = threads.max(1);
        let room = usize::try_from(self.conns(reserved) / threads as u64).unwrap_or(usize::MAX);
        conns_max.div_ceil(threads).min(room).max(1)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns both.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (mut soft, hard) = crate::host::nofile()?;
    // Should a sandbox refuse even this, the soft limit stands and
    // `fd_limit_advice` says what to change.
    if soft < hard && crate::host::set_nofile_soft(hard).is_ok() {
        soft = hard;
    }
    Ok(FdLimit { soft, hard })
}

/// The warning printed when the limit less `reserved` descriptors is below
/// `conns_max`, with the fix.
pub fn fd_limit_advice(limit: FdLimit, conns_max: usize, reserved: u64) -> Option<String> {
    let conns_max = conns_max as u64;
    if limit.conns(reserved) >= conns_max {
        return None;
    }
    let want = conns_max + reserved;
    // fs.nr_open caps the hard nofile limit; fs.file-max caps the whole host.
    let nr_open = want.max(NR_OPEN_DEFAULT);
    Some(format!(
        "warning: the open-file limit (soft {soft}, hard {hard}) allows {fit} connections \
         ({reserved} descriptors are kept for the control, the ledger and the workers), \
         below --conns-max {conns_max}: the workers stop accepting at about {fit}. To hold {conns_max}: \
         `sysctl -w fs.nr_open={nr_open} fs.file-max={file_max}`, \
         raise the hard limit (`* hard nofile {want}` in /etc/security/limits.d/, or LimitNOFILE={want} \
         for a systemd unit), then `ulimit -n {want}` in the shell that starts the server. \
         Or size the plan to this host with --conns-max {fit}.",
        soft = limit.soft,
        hard = limit.hard,
        fit = limit.conns(reserved),
        file_max = FILE_MAX_PER_NR_OPEN * nr_open,
    ))
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{step} {addr}: {error}{hint}")]
pub struct BindError {
    /// The step that failed, e.g. "binding".
    pub step: &'static str,
    /// The address it was for.
    pub addr: SocketAddr,
    /// The OS error (part of the message, not a separate cause, so the
    /// one-line report does not repeat it).
    pub error: io::Error,
    /// What to do about it.
    pub hint: &'static str,
}

fn bind_error(step: &'static str, addr: SocketAddr, error: io::Error) -> BindError {
    let hint = match error.kind() {
        io::ErrorKind::AddrInUse => {
            " (another process holds this port: stop it, or choose another with --listen)"
        }
        io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a higher port)"
        }
        io::ErrorKind::AddrNotAvailable => " (this host has no such address: check --listen)",
        _ => "",
    };
    BindError {
        step,
        addr,
        error,
        hint,
    }
}

/// The kernel buffer sizes asked for every accepted connection, in bytes
/// (Linux doubles each); 0 leaves that one to the kernel's autotuning.
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketBuffers {
    /// SO_SNDBUF.
    pub send: usize,
    /// SO_RCVBUF.
    pub recv: usize,
}

/// Binds `count` listeners sharing `addr` with SO_REUSEPORT, so the kernel
/// spreads incoming connections over the workers without a shared accept
/// queue. A port of 0 picks one free port for all of them.
///
/// SO_REUSEPORT would let us share a port with another process of the same
/// user (an old server still running); a first bind without it detects that
/// and fails with "address in use" instead of silently splitting traffic.
///
/// `buffers` caps SO_SNDBUF and SO_RCVBUF (0: the kernel autotunes). They
/// are set on each listener before `listen`, and Linux copies both (and the
/// lock that stops their autotuning) to every socket it accepts, so a
/// connection's kernel buffers are bounded without a system call per accept.
pub fn bind_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
    buffers: SocketBuffers,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let domain = Domain::for_address(addr);
    let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| bind_error("creating a socket for", addr, e))?;
    probe
        .set_reuse_address(true)
        .map_err(|e| bind_error("setting SO_REUSEADDR for", addr, e))?;
    probe
        .bind(&addr.into())
        .map_err(|e| bind_error("binding", addr, e))?;
    let addr = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    drop(probe);

    (0..count)
        .map(|_| {
            let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
                .map_err(|e| bind_error("creating a socket for", addr, e))?;
            s.set_reuse_address(true)
                .map_err(|e| bind_error("setting SO_REUSEADDR for", addr, e))?;
            s.set_reuse_port(true)
                .map_err(|e| bind_error("setting SO_REUSEPORT for", addr, e))?;
            if buffers.send > 0 {
                s.set_send_buffer_size(buffers.send)
                    .map_err(|e| bind_error("setting SO_SNDBUF (--send-buffer) for", addr, e))?;
            }
            if buffers.recv > 0 {
                s.set_recv_buffer_size(buffers.recv)
                    .map_err(|e| bind_error("setting SO_RCVBUF (--recv-buffer) for", addr, e))?;
            }
            s.bind(&addr.into())
                .map_err(|e| bind_error("binding with SO_REUSEPORT", addr, e))?;
            s.listen(backlog)
                .map_err(|e| bind_error("listening on", addr, e))?;
            s.set_nonblocking(true)
                .map_err(|e| bind_error("setting non-blocking", addr, e))?;
            Ok(s.into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_every_fix_when_the_limit_is_short() {
        let a = fd_limit_advice(
            FdLimit {
                soft: 20_000,
                hard: 20_000,
            },
            1_000_000,
            fds_reserved(1, true),
        )
        .expect("20k is below 1M");
        for needle in [
            "fs.nr_open",
            "fs.file-max",
            "hard nofile",
            "ulimit -n",
            // 20,000 less 32 fixed, 4 for the worker, 259 for the control.
            "--conns-max 19705",
        ] {
            assert!(a.contains(needle), "advice lacks {needle}: {a}");
        }
        let enough = FdLimit {
            soft: 2_000_000,
            hard: 2_000_000,
        };
        assert_eq!(
            fd_limit_advice(enough, 1_000_000, fds_reserved(8, true)),
            None
        );
    }

    #[test]
    fn workers_stop_at_the_limit_less_the_reserve() {
        let limit = FdLimit {
            soft: 1000,
            hard: 1000,
        };
        let reserved = fds_reserved(2, true);
        assert_eq!(reserved, 32 + 8 + crate::http::FDS_MAX);
        // Room for 701 beside the reserve: 350 per worker, not 500_000.
        assert_eq!(limit.worker_conns_max(1_000_000, 2, reserved), 350);
        // A plan below the limit keeps its own share.
        assert_eq!(limit.worker_conns_max(100, 2, reserved), 50);
        // A limit below the reserve still leaves each worker one.
        let tiny = FdLimit { soft: 40, hard: 40 };
        assert_eq!(tiny.worker_conns_max(1_000_000, 2, reserved), 1);
    }

    #[test]
    fn a_taken_port_is_refused_even_with_reuseport() {
        let first = bind_listeners(
            "127.0.0.1:0".parse().unwrap(),
            2,
            16,
            SocketBuffers::default(),
        )
        .unwrap();
        let addr = first[0].local_addr().unwrap();
        assert_eq!(first[1].local_addr().unwrap(), addr, "one port for all");
        let err = bind_listeners(addr, 1, 16, SocketBuffers::default()).unwrap_err();
        assert_eq!(err.error.kind(), io::ErrorKind::AddrInUse);
        let msg = err.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("in use"),
            "{msg}"
        );
    }
}
