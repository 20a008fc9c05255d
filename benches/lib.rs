//! What palisade's criterion benches share (the benches are this package's targets; see
//! `Cargo.toml` for why they are a package of their own).

use std::time::{Duration, Instant};

/// CPU time used so far by every thread of this process, in nanoseconds
/// (`CLOCK_PROCESS_CPUTIME_ID`, which the kernel brings up to date when read, unlike
/// `/proc/self/task/*/schedstat`, which lags by up to a scheduler tick); `None` off Unix.
///
/// On a machine shared with other work, wall time mostly measures the neighbours (the same
/// row moved by 2x between runs on the project's 2-core machine); CPU time spent by this
/// process does not count the time it waited for a core.
pub fn process_cpu_nanos() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return None;
        }
        Some(u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Measures what a piece of work costs: CPU time of the whole process where the kernel says,
/// wall time (times `threads`) elsewhere.
#[derive(Debug)]
pub struct CpuTimer {
    cpu: Option<u64>,
    wall: Instant,
}

impl CpuTimer {
    /// Starts measuring.
    pub fn start() -> Self {
        CpuTimer {
            cpu: process_cpu_nanos(),
            wall: Instant::now(),
        }
    }

    /// What was spent since `start`.
    pub fn elapsed(&self, threads: u32) -> Duration {
        match (self.cpu, process_cpu_nanos()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => self.wall.elapsed() * threads,
        }
    }
}
