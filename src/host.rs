//! What this host allows: kernel settings and process limits, read-only.
//!
//! Owns: reading the sysctls and the open-file limit that bound how many
//! connections one machine holds, for the start-up checks of the server, the
//! demo, the flooder and the monitor's report; the CPU model for the
//! reports; raising this process's own soft open-file limit; this process's
//! CPU, memory and descriptors for the `process_*` metrics
//! ([`process_self`]). Must not: change anything beyond this process
//! (`sysctl/hongbao-tune.sh` does, with the operator's consent), or decide
//! what a value means for a run.

/// The CPU's model name (`/proc/cpuinfo`'s first `model name`), or `None`
/// when it cannot be read (some architectures name it otherwise).
pub fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map(|(_, model)| model.trim().to_owned())
        .filter(|m| !m.is_empty())
}

/// A sysctl's whitespace-separated numbers (`net.ipv4.tcp_mem` has three),
/// or `None` when it cannot be read here (absent, or a container hides it).
pub fn sysctl_numbers(key: &str) -> Option<Vec<u64>> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let text = std::fs::read_to_string(path).ok()?;
    text.split_ascii_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<Vec<u64>>>()
        .filter(|v| !v.is_empty())
}

/// A single-number sysctl.
pub fn sysctl_u64(key: &str) -> Option<u64> {
    sysctl_numbers(key).and_then(|v| v.first().copied())
}

/// `net.ipv4.ip_local_port_range`: the ports `connect()` picks from.
pub fn ephemeral_ports() -> Option<(u16, u16)> {
    let v = sysctl_numbers("net.ipv4.ip_local_port_range")?;
    let low = u16::try_from(*v.first()?).ok()?;
    let high = u16::try_from(*v.get(1)?).ok()?;
    (low <= high).then_some((low, high))
}

/// How many ports [`ephemeral_ports`] spans.
pub fn ephemeral_port_count() -> Option<u64> {
    ephemeral_ports().map(|(low, high)| u64::from(high - low) + 1)
}

/// This process's open-file limit, `(soft, hard)`.
pub fn nofile() -> std::io::Result<(u64, u64)> {
    // SAFETY: an all-zero rlimit is a valid value; getrlimit fills it in.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: RLIMIT_NOFILE is a valid resource; `limit` is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Sets this process's soft open-file limit to `soft` (at most the hard
/// limit, which only root may raise).
pub fn set_nofile_soft(soft: u64) -> std::io::Result<()> {
    let (_, hard) = nofile()?;
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own and has no other effects.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// This process's figures for the `process_*` metrics, each `None` when
/// it cannot be read here.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSelf {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft open-file limit.
    pub fds_max: Option<u64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory, bytes.
    pub virtual_bytes: Option<u64>,
    /// When the process started, Unix seconds.
    pub start_time_seconds: Option<f64>,
}

/// Reads [`ProcessSelf`] from `/proc/self` and `getrlimit`, once per
/// scrape, on an HTTP thread only.
pub fn process_self() -> ProcessSelf {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
    });
    let fields = stat.as_deref().map(stat_fields).unwrap_or_default();
    let field = |n: usize| fields.get(n).copied();
    let ticks = (ticks > 0).then_some(ticks as f64);
    ProcessSelf {
        cpu_seconds: match (field(STAT_UTIME), field(STAT_STIME), ticks) {
            (Some(u), Some(s), Some(t)) => Some((u + s) as f64 / t),
            _ => None,
        },
        open_fds: open_fds(),
        fds_max: nofile().ok().map(|(soft, _)| soft),
        resident_bytes: field(STAT_RSS_PAGES)
            .zip((page > 0).then_some(page as u64))
            .map(|(pages, size)| pages * size),
        virtual_bytes: field(STAT_VSIZE),
        start_time_seconds: match (field(STAT_STARTTIME), ticks, boot) {
            (Some(start), Some(t), Some(b)) => Some(b as f64 + start as f64 / t),
            _ => None,
        },
    }
}

/// Open descriptors. Linux 6.2 and later give their count as the size of
/// `/proc/self/fd`, one `stat`; before, the size is 0 and the directory is
/// listed, an entry per descriptor (what Prometheus' clients do; about a
/// microsecond each, so a second at a million connections).
fn open_fds() -> Option<u64> {
    match std::fs::metadata("/proc/self/fd") {
        Ok(m) if m.len() > 0 => Some(m.len()),
        _ => std::fs::read_dir("/proc/self/fd")
            .ok()
            // Less the descriptor the listing itself holds open.
            .map(|d| (d.count() as u64).saturating_sub(1)),
    }
}

/// Indexes into [`stat_fields`]: `proc(5)`'s field numbers less 3, the
/// first field after the command's closing parenthesis being the 3rd.
const STAT_UTIME: usize = 14 - 3;
/// See [`STAT_UTIME`].
const STAT_STIME: usize = 15 - 3;
/// See [`STAT_UTIME`].
const STAT_STARTTIME: usize = 22 - 3;
/// See [`STAT_UTIME`].
const STAT_VSIZE: usize = 23 - 3;
/// See [`STAT_UTIME`].
const STAT_RSS_PAGES: usize = 24 - 3;

/// The numeric fields of a `/proc/PID/stat` line after the command name
/// (which may hold spaces and parentheses, so the last `)` ends it); a
/// field that is not a number (the state letter) reads as 0.
fn stat_fields(line: &str) -> Vec<u64> {
    let rest = line.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_ascii_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_every_linux_has() {
        // Present on every Linux this runs on, containers included.
        assert!(sysctl_u64("kernel.pid_max").is_some_and(|n| n > 0));
        let (soft, hard) = nofile().expect("getrlimit");
        assert!(soft <= hard);
        assert_eq!(sysctl_u64("no.such.key"), None);
        if let Some((low, high)) = ephemeral_ports() {
            assert_eq!(ephemeral_port_count(), Some(u64::from(high - low) + 1));
        }
    }

    #[test]
    fn this_process_reads_as_a_running_one() {
        let p = process_self();
        assert!(p.open_fds.is_some_and(|n| n >= 3), "{p:?}");
        assert_eq!(p.fds_max, Some(nofile().expect("getrlimit").0));
        assert!(p.resident_bytes.is_some_and(|n| n > 0), "{p:?}");
        assert!(p.cpu_seconds.is_some(), "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            p.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 86_400.0 * 365.0),
            "{p:?}"
        );
        let f = stat_fields("42 (a ) b) S 1 2 3 4 5 6 7 8 9 10 11 12");
        assert_eq!(f[0], 0);
        assert_eq!(f[STAT_UTIME], 11);
    }
}
