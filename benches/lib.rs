//! What palisade's criterion benches share (the benches are this package's targets; see
//! `Cargo.toml` for why they are a package of their own).

use std::fmt::Debug;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use palisade::classify::{Category, Classification, Classified, Severity, Transience};
use tower::{Service, ServiceExt, service_fn};

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

/// The no-op service's error: never produced.
#[derive(Clone, Debug)]
pub struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

impl Classified for Never {
    fn classification(&self) -> Classification {
        Classification::new(
            Transience::Transient,
            Category::System,
            Severity::Low,
            "never",
        )
    }
}

/// The inner service of every bench: answers its request at once.
pub type Noop = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, Never>>>;

/// A fresh no-op service.
pub fn noop() -> Noop {
    service_fn(|x: u64| std::future::ready(Ok(x)))
}

/// Makes `calls` calls through `service`, one after the other.
pub async fn drive<S>(service: &mut S, calls: u64)
where
    S: Service<u64>,
    S::Error: Debug,
{
    for i in 0..calls {
        let ready = service.ready().await.unwrap();
        black_box(ready.call(black_box(i)).await.unwrap());
    }
}

/// Benches sequential calls through one service built by `make`, on a current-thread runtime,
/// timed in process CPU time.
pub fn sequential<S, F>(c: &mut Criterion, group: &str, name: &str, make: F)
where
    F: Fn() -> S,
    S: Service<u64>,
    S::Error: Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut service = make();
                drive(&mut service, 1).await; // warm the per-thread state
                let start = CpuTimer::start();
                drive(&mut service, iters).await;
                start.elapsed(1)
            })
        })
    });
    group.finish();
}

/// A bench binary's `main`: with `{prefix}_COUNT=<name>` set, makes `{prefix}_CALLS`
/// (default 1,000) calls through the named service with `count` and exits, for
/// `valgrind --tool=cachegrind` (see `instructions.sh`); otherwise runs the criterion groups
/// in `benches`.
pub fn bench_main(prefix: &str, count: impl FnOnce(&str, u64), benches: impl FnOnce()) {
    if let Ok(name) = std::env::var(format!("{prefix}_COUNT")) {
        let calls = std::env::var(format!("{prefix}_CALLS"))
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        count(&name, calls);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
