//! What this host allows: kernel settings and process limits, read-only.
//!
//! Owns: reading the sysctls and the open-file limit that bound how many
//! connections one machine holds, for the start-up checks of the server, the
//! demo, the flooder and the monitor's report; the CPU model for the
//! reports; raising this process's own
//! soft open-file limit. Must not: change anything beyond this process
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
}
