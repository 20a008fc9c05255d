//! What palisade's criterion benches share (the benches are this package's targets; see
//! `Cargo.toml` for why they are a package of their own).

use std::time::{Duration, Instant};

/// CPU time used so far by every thread of this process, in nanoseconds, from
/// `/proc/self/task/*/schedstat` (Linux); `None` elsewhere.
///
/// On a machine shared with other work, wall time mostly measures the neighbours (the same
/// row moved by 2x between runs on the project's 2-core machine); CPU time spent by this
/// process does not count the time it waited for a core.
pub fn process_cpu_nanos() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
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
