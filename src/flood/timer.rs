//! A precise wake-up for the send schedule: a `timerfd` in the thread's poll.
//!
//! Owns: one CLOCK_MONOTONIC timerfd per flooder thread, registered with the
//! thread's mio poll. Must not: be read on the hot path. epoll's own timeout
//! is whole milliseconds (mio rounds it up), which made every request leave up
//! to 1 ms late and charged that lateness to the server's latency; a timerfd
//! fires to the microsecond. Arming it resets its expiration count, and
//! edge-triggered epoll reports each expiry anew, so it is never read.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A one-shot relative timer whose expiry wakes a mio poll.
pub(crate) struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// Creates the timer and registers it under `token`.
    pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        // SAFETY: timerfd_create has no memory effects; we check its result.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just created and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Timer { fd })
    }

    /// Fires once, `after` from now (replacing any earlier arming).
    pub(crate) fn arm(&self, after: Duration) -> io::Result<()> {
        // A zero it_value would disarm the timer: wait at least 1 ns.
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: the fd is a live timerfd we own; `spec` outlives the call,
        // and a null old-value pointer is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Asks the kernel to fire this thread's timers without the default 50 µs
/// slack, which would otherwise add to every send's lateness.
pub(crate) fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}
