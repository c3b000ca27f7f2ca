//! CPU time and resident memory of a process, as the benchmark figures need them.
//!
//! Owns: reading `/proc/PID/stat` (utime + stime), `/proc/PID/status`
//! (VmRSS), the per-CPU lines of `/proc/stat` and `getrusage(RUSAGE_SELF)`,
//! with the parsers kept pure so the tests can feed them awkward inputs. Must
//! not: be called on the send/receive path (each call is a few syscalls and a
//! file parse); it runs only at phase edges.

use std::fs;

use anyhow::Context;

use crate::clock::{MICROS_PER_SEC, NANOS_PER_MICRO};

/// Bytes in the kernel's "kB" (a KiB).
const BYTES_PER_KIB: u64 = 1024;
/// Clock ticks per second when `sysconf(_SC_CLK_TCK)` fails: 100 is what
/// Linux reports on every architecture we run on, and sysconf does not fail
/// there, so this is only a fallback.
const CLOCK_TICKS_PER_SEC_FALLBACK: u64 = 100;
/// `/proc/PID/stat`'s utime is field 14 (stime follows); counting starts
/// after the command name, at field 3 (state).
const STAT_UTIME_FIELD: usize = 14;
const STAT_FIRST_FIELD_AFTER_COMM: usize = 3;

/// CPU time consumed so far by process `pid`, in microseconds.
///
/// Summed over its threads from `/proc/PID/task/*/schedstat` (nanoseconds on
/// a CPU), because `/proc/PID/stat` counts 10 ms clock ticks: over a short
/// phase (18,000 logins take ~0.2 s of server CPU) one tick is 5 %. Threads
/// that exited are not counted, which is right for a server whose threads
/// live as long as it does. Falls back to the ticks when schedstat is absent.
pub fn process_cpu_us(pid: u32) -> anyhow::Result<u64> {
    if let Some(ns) = schedstat_ns(pid) {
        return Ok(ns / NANOS_PER_MICRO);
    }
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("parsing {path}"))?;
    Ok(ticks_to_us(ticks, clock_ticks_per_sec()))
}

/// Nanoseconds on a CPU, summed over the threads of `pid`; None when any
/// part of it cannot be read.
fn schedstat_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += parse_schedstat_ns(&text)?;
    }
    Some(total)
}

/// The first field of a schedstat line: nanoseconds spent on a CPU.
fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Resident set size of process `pid` in bytes.
///
/// From `Rss:` in `/proc/PID/smaps_rollup`, which walks the page tables;
/// `VmRSS` in `/proc/PID/status` comes from per-CPU counters that may lag by
/// tens of pages, a large error against ~1 MB of connections. Falls back to
/// `VmRSS` when smaps_rollup is absent.
pub fn process_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let rollup = format!("/proc/{pid}/smaps_rollup");
    if let Ok(text) = fs::read_to_string(&rollup) {
        return parse_kib_field(&text, "Rss:").with_context(|| format!("parsing {rollup}"));
    }
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_rss_bytes(&text).with_context(|| format!("parsing {path}"))
}

/// CPU time (user + system) of this process, all threads, in microseconds.
/// `getrusage` has microsecond resolution, finer than `/proc/self/stat`.
pub fn self_cpu_us() -> anyhow::Result<u64> {
    // SAFETY: `usage` is a plain C struct that `getrusage` fills in; an
    // all-zero bit pattern is a valid value for it, and the pointer is valid
    // for the duration of the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is a valid `who`, `usage` is a valid out pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_SELF)");
    }
    let us = |tv: libc::timeval| (tv.tv_sec as u64) * MICROS_PER_SEC + tv.tv_usec as u64;
    Ok(us(usage.ru_utime) + us(usage.ru_stime))
}

/// Time one CPU spent in the states that are measured, not sampled, since
/// boot, in microseconds (see [`busy_us`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// The CPU's number (`cpuN`).
    pub cpu: usize,
    /// Idle with nothing to run.
    pub idle_us: u64,
    /// Idle while a task waited for I/O.
    pub iowait_us: u64,
    /// Taken by the hypervisor while this CPU wanted to run: on a VM, time
    /// the benchmark lost without any process being charged for it.
    pub steal_us: u64,
}

/// How long a CPU ran anything (tasks, interrupts) between two samples
/// taken `elapsed_us` apart: the time it was neither idle, waiting for
/// I/O, nor stolen.
///
/// Not the sum of `/proc/stat`'s user, nice, system, irq and softirq:
/// those are sampled at the clock tick (every 4 ms at HZ=250), and the
/// flooder and the server run in step with it. A sleeping flooder thread
/// wakes on a timer whose slack (50 µs) lets the tick's own interrupt
/// expire it, and that interrupt finds the CPU idle; the server's work
/// follows the flooder's sends; and both keep the same phase to the tick
/// all run long, because sends are due at fixed fractions of whole
/// seconds. So the tick missed most of their CPU (in one run a flooder
/// using 10 % of its core showed as 3 % busy), and `foreign_cpu_us`, the window's busy time less
/// their exact CPU, came out about −1 s per 10 s window on a quiet host.
/// Idle and iowait are measured at every idle entry and exit (NO_HZ
/// kernels) and steal by the hypervisor's clock, so what is left of the
/// elapsed time is busy to within `/proc/stat`'s 10 ms unit per sample.
/// Counters that went backwards (iowait may) count as 0; the result is at
/// most `elapsed_us`.
pub fn busy_us(start: &CpuTimes, end: &CpuTimes, elapsed_us: u64) -> u64 {
    let not_busy = end.idle_us.saturating_sub(start.idle_us)
        + end.iowait_us.saturating_sub(start.iowait_us)
        + end.steal_us.saturating_sub(start.steal_us);
    elapsed_us.saturating_sub(not_busy)
}

/// Per-CPU times from `/proc/stat`, to see at the window's edges whether
/// anything besides the server and the flooder ran, or the hypervisor stole.
pub fn cpu_times() -> anyhow::Result<Vec<CpuTimes>> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_cpu_times(&text, clock_ticks_per_sec()).context("parsing /proc/stat")
}

/// The `cpuN` lines of `/proc/stat` (not the `cpu` total), fields in
/// USER_HZ units: user nice system idle iowait irq softirq steal guest
/// guest_nice. Only idle, iowait and steal are kept: the others are tick
/// samples ([`busy_us`] says why they are not used).
fn parse_cpu_times(text: &str, ticks_per_sec: u64) -> anyhow::Result<Vec<CpuTimes>> {
    let mut cpus = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(number) = name.strip_prefix("cpu").filter(|n| !n.is_empty()) else {
            continue;
        };
        let cpu: usize = number.parse().with_context(|| format!("cpu name {name}"))?;
        let values: Vec<u64> = fields
            .map(str::parse::<u64>)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{name} has a non-numeric field"))?;
        let [
            _user,
            _nice,
            _system,
            idle,
            iowait,
            _irq,
            _softirq,
            steal,
            ..,
        ] = values[..]
        else {
            anyhow::bail!("{name} has {} fields, expected at least 8", values.len());
        };
        cpus.push(CpuTimes {
            cpu,
            idle_us: ticks_to_us(idle, ticks_per_sec),
            iowait_us: ticks_to_us(iowait, ticks_per_sec),
            steal_us: ticks_to_us(steal, ticks_per_sec),
        });
    }
    if cpus.is_empty() {
        anyhow::bail!("no cpuN lines");
    }
    Ok(cpus)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        CLOCK_TICKS_PER_SEC_FALLBACK
    }
}

fn ticks_to_us(ticks: u64, per_sec: u64) -> u64 {
    ticks.saturating_mul(MICROS_PER_SEC) / per_sec.max(1)
}

/// utime + stime in clock ticks from the text of `/proc/PID/stat`.
///
/// The second field, the command name, is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the *last* `)`.
/// After it come field 3 (state) onwards; utime and stime are fields 14 and 15.
fn parse_stat_cpu_ticks(text: &str) -> anyhow::Result<u64> {
    let after = text
        .rfind(')')
        .map(|at| &text[at + 1..])
        .context("no ')' closing the command name")?;
    let mut fields = after
        .split_ascii_whitespace()
        .skip(STAT_UTIME_FIELD - STAT_FIRST_FIELD_AFTER_COMM);
    let mut next = |name: &str| -> anyhow::Result<u64> {
        fields
            .next()
            .with_context(|| format!("no {name} field"))?
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))
    };
    let utime = next("utime")?;
    let stime = next("stime")?;
    Ok(utime + stime)
}

/// `VmRSS` in bytes from the text of `/proc/PID/status` (the kernel writes
/// it in kB, meaning KiB).
fn parse_status_rss_bytes(text: &str) -> anyhow::Result<u64> {
    parse_kib_field(text, "VmRSS:").context("(is it a kernel thread?)")
}

/// The value of a `Name:   123 kB` line, in bytes.
fn parse_kib_field(text: &str, name: &str) -> anyhow::Result<u64> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no {name} line"))?;
    let mut parts = line.split_ascii_whitespace();
    let value: u64 = parts
        .next()
        .with_context(|| format!("{name} has no value"))?
        .parse()
        .with_context(|| format!("{name} is not a number"))?;
    match parts.next() {
        Some("kB") => Ok(value * BYTES_PER_KIB),
        other => anyhow::bail!("{name} unit is {other:?}, expected kB"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with spaces and a ')' inside, as a hostile or
        // merely odd process name can have.
        let text = "4242 (my (odd) srv) S 1 4242 4242 0 -1 4194560 1029 0 0 0 \
                    1234 567 0 0 20 0 1 0 88 12345678 900 18446744073709551615\n";
        assert_eq!(parse_stat_cpu_ticks(text).unwrap(), 1234 + 567);
    }

    #[test]
    fn stat_that_is_cut_short_is_an_error() {
        assert!(parse_stat_cpu_ticks("1 (x) S 1 2 3").is_err());
        assert!(parse_stat_cpu_ticks("no parens at all").is_err());
    }

    #[test]
    fn rss_is_read_in_kib() {
        let text = "Name:\thongbao\nVmPeak:\t  999 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_bytes(text).unwrap(), 2048 * 1024);
        assert!(parse_status_rss_bytes("Name:\tkthreadd\n").is_err());
        assert!(parse_status_rss_bytes("VmRSS:\t12 MB\n").is_err());
    }

    #[test]
    fn per_cpu_lines_are_read_and_the_total_skipped() {
        let text = "cpu  47106 0 12127 166236 527 0 4546 41 0 0\n\
                    cpu0 23307 1 5135 85157 72 2 2093 19 0 0\n\
                    cpu1 23799 0 6991 81079 454 0 2453 22 5 0\n\
                    intr 2065038 0 0\n";
        let cpus = parse_cpu_times(text, 100).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[0].cpu, 0);
        assert_eq!(cpus[0].idle_us, 85157 * 10_000);
        assert_eq!(cpus[0].iowait_us, 72 * 10_000);
        assert_eq!(cpus[0].steal_us, 19 * 10_000);
        assert_eq!(cpus[1].cpu, 1);
        assert_eq!(cpus[1].idle_us, 81079 * 10_000);
        assert!(parse_cpu_times("cpu0 1 2 3\n", 100).is_err());
        assert!(parse_cpu_times("intr 5\n", 100).is_err());
    }

    /// Two samples of `/proc/stat` 6 s apart on a host where only a
    /// flooder (on cpu1, 0.63 s of CPU by its own exact count) and a server
    /// (on cpu0, 0.26 s) ran, modelled on a run on this project's VM: the tick
    /// sampled 0.20 s and 0.05 s of user/system/softirq for them, while
    /// idle, measured, left 0.63 s and 0.26 s. Summing the tick fields made
    /// "everything else" 0.25 − 0.89 = −0.64 s; what is not idle makes it 0.
    #[test]
    fn busy_is_what_was_not_idle_not_what_the_tick_sampled() {
        let start = "cpu  0 0 0 0 0 0 0 0 0 0\n\
                     cpu0 23307 1 5135 85157 72 0 2093 19 0 0\n\
                     cpu1 23799 0 6991 81079 454 0 2453 22 0 0\n";
        let end = "cpu  0 0 0 0 0 0 0 0 0 0\n\
                   cpu0 23308 1 5137 85731 72 0 2095 19 0 0\n\
                   cpu1 23809 0 6998 81616 454 0 2456 22 0 0\n";
        let (a, b) = (
            parse_cpu_times(start, 100).unwrap(),
            parse_cpu_times(end, 100).unwrap(),
        );
        let elapsed_us = 6_000_000;
        let busy: Vec<u64> = a
            .iter()
            .zip(&b)
            .map(|(a, b)| busy_us(a, b, elapsed_us))
            .collect();
        assert_eq!(busy, [260_000, 630_000]);
        let (flooder_us, server_us) = (630_000_i64, 260_000_i64);
        let others = busy.iter().sum::<u64>() as i64 - flooder_us - server_us;
        assert_eq!(others, 0, "nothing else ran");

        // Stolen time is not busy; a counter that went back counts 0; busy
        // never exceeds the time elapsed.
        let cpu = |idle_us, iowait_us, steal_us| CpuTimes {
            cpu: 0,
            idle_us,
            iowait_us,
            steal_us,
        };
        assert_eq!(busy_us(&cpu(0, 0, 0), &cpu(100, 50, 25), 1_000), 825);
        assert_eq!(busy_us(&cpu(0, 500, 0), &cpu(100, 0, 0), 1_000), 900);
        assert_eq!(busy_us(&cpu(0, 0, 0), &cpu(0, 0, 0), 1_000), 1_000);
        assert_eq!(busy_us(&cpu(0, 0, 0), &cpu(2_000, 0, 0), 1_000), 0);
    }

    #[test]
    fn ticks_become_microseconds() {
        assert_eq!(ticks_to_us(250, 100), 2_500_000);
        assert_eq!(ticks_to_us(3, 1000), 3_000);
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(process_rss_bytes(pid).unwrap() > 0);
        process_cpu_us(pid).unwrap();
        self_cpu_us().unwrap();
        assert!(!cpu_times().unwrap().is_empty());
    }

    #[test]
    fn schedstat_gives_nanoseconds_on_cpu() {
        assert_eq!(parse_schedstat_ns("1392353 0 2\n"), Some(1_392_353));
        assert_eq!(parse_schedstat_ns(""), None);
        assert_eq!(parse_schedstat_ns("x 0 2"), None);
    }

    #[test]
    fn smaps_rollup_rss_is_read_in_bytes() {
        let text = "55d0-7ffe ---p 00000000 00:00 0  [rollup]\nRss:                1908 kB\nPss:  1000 kB\n";
        assert_eq!(parse_kib_field(text, "Rss:").unwrap(), 1908 * 1024);
        assert!(parse_kib_field("Pss: 1 kB\n", "Rss:").is_err());
        assert!(parse_kib_field("Rss: 1 MB\n", "Rss:").is_err());
    }
}
