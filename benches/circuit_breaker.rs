//! The circuit breaker's hot paths, and tower-resilience 0.13's breaker doing the same work.
//!
//! - `closed_success/sequential`: one task calling a no-op service through a closed breaker.
//! - `closed_success/64_tasks_2_workers`: 64 tasks on a 2-worker runtime sharing one breaker.
//!   Reported as *CPU time per call* (all threads, from `CLOCK_PROCESS_CPUTIME_ID`), so it
//!   compares with the sequential figure: equal means contention costs nothing.
//! - `closed_success/64_tasks_1_worker`: the same on one worker, the control: what the task
//!   machinery costs without any cross-core traffic.
//! - `open_rejection/sequential`: calls rejected by an open breaker (named `bench`, and under
//!   a name too long to be held in place by the error, which then shares the breaker's copy).
//! - `primitives`: a clock read, an `Arc` clone and drop, an atomic add, for scale.
//!
//! Every figure is CPU time per call (all threads of the process, from
//! `CLOCK_PROCESS_CPUTIME_ID` on Linux; wall time elsewhere), measured on a tokio worker:
//! on a machine shared with other work, wall time mostly measures the neighbours.
//!
//! Run with `cargo bench -p palisade-benches --bench circuit_breaker`.
//!
//! Instruction counts, which the machine's load does not move: with `BREAKER_COUNT=<name>` and
//! `BREAKER_CALLS=<n>` set, the binary makes `n` sequential calls through the named service
//! (see [`count_instructions`]) and exits; `benches/instructions.sh circuit_breaker <name>...`
//! runs it under cachegrind twice and prints the instructions per call.

use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use palisade::classify::Outcome;
use palisade::policy::{CircuitBreakerPolicy, WindowType};
use palisade_benches::process_cpu_nanos;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Classifier = fn(Result<&u64, &()>) -> Outcome;

fn classify(r: Result<&u64, &()>) -> Outcome {
    Outcome::fallback(r.is_ok())
}

fn noop(ok: bool) -> Ready<Result<u64, ()>> {
    ready(if ok { Ok(1) } else { Err(()) })
}

type Noop = tower::util::ServiceFn<fn(bool) -> Ready<Result<u64, ()>>>;

fn inner() -> Noop {
    service_fn(noop as fn(bool) -> Ready<Result<u64, ()>>)
}

/// Built inside `rt`, as a server builds its layers inside its runtime: on a multi-thread
/// runtime the breaker starts its coarse-time ticker there (see docs/circuit_breaker.md).
fn palisade_breaker(
    rt: &tokio::runtime::Runtime,
    window: WindowType,
) -> palisade::circuit_breaker::CircuitBreaker<Noop, Classifier> {
    named_breaker(rt, window, "bench")
}

/// [`palisade_breaker`] under another name: a name longer than
/// [`BreakerName::INLINE`](palisade::error::BreakerName::INLINE) bytes is shared, not copied,
/// by each rejection.
fn named_breaker(
    rt: &tokio::runtime::Runtime,
    window: WindowType,
    name: &str,
) -> palisade::circuit_breaker::CircuitBreaker<Noop, Classifier> {
    let _runtime = rt.enter();
    let mut policy = CircuitBreakerPolicy::default();
    policy.window_type = window;
    policy.consecutive_failures = 1;
    policy.minimum_calls = 1;
    let layer = CircuitBreakerLayer::new(name, policy, classify as Classifier);
    ServiceBuilder::new().layer(layer).service(inner())
}

/// Its defaults (count window of 100, 50 %), tripping on one failure like ours.
fn resilience_layer() -> tower_resilience::circuitbreaker::CircuitBreakerLayer {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .consecutive_failures(1)
        .wait_duration_in_open(Duration::from_secs(3600))
        .build()
        .unwrap()
}

/// Times `iters` calls made one after the other by one task on `rt` (a one-worker runtime),
/// as CPU time (see [`concurrent`]).
fn sequential<S>(rt: &tokio::runtime::Runtime, svc: &S, ok: bool, iters: u64) -> Duration
where
    S: Service<bool> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    S::Response: Send,
{
    let mut svc = svc.clone();
    rt.block_on(async {
        let cpu_start = process_cpu_nanos();
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..iters {
                let r = svc.ready().await.unwrap().call(black_box(ok)).await;
                black_box(r.is_ok());
            }
        })
        .await
        .unwrap();
        match (cpu_start, process_cpu_nanos()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => start.elapsed(),
        }
    })
}

/// Times `iters` calls shared by 64 tasks on a runtime of `workers` workers, and returns the
/// CPU time the process spent on them (all threads; wall time x workers where the kernel does
/// not say). CPU time, not wall time: on a shared machine the workers do not always get a core
/// each, and waiting for one is not a cost of the breaker.
fn concurrent<S>(rt: &tokio::runtime::Runtime, workers: u32, svc: &S, iters: u64) -> Duration
where
    S: Service<bool> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
    S::Response: Send,
{
    const TASKS: u64 = 64;
    let per_task = iters.div_ceil(TASKS);
    rt.block_on(async {
        let cpu_start = process_cpu_nanos();
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let r = svc.ready().await.unwrap().call(true).await;
                        black_box(r.is_ok());
                        if i % 256 == 255 {
                            // Let the other tasks of this worker run, as a server would.
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let spent = match (cpu_start, process_cpu_nanos()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => start.elapsed() * workers,
        };
        // Per-call CPU time, comparable with the sequential figure.
        Duration::from_secs_f64(spent.as_secs_f64() * iters as f64 / (per_task * TASKS) as f64)
    })
}

fn one_worker() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap()
}

fn closed_success(c: &mut Criterion) {
    let one_worker = one_worker();
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();

    let mut g = c.benchmark_group("closed_success/sequential");
    g.bench_function("no breaker (baseline)", |b| {
        let svc = inner();
        b.iter_custom(|iters| sequential(&one_worker, &svc, true, iters))
    });
    g.bench_function("palisade time window", |b| {
        let svc = palisade_breaker(&one_worker, WindowType::Time);
        b.iter_custom(|iters| sequential(&one_worker, &svc, true, iters))
    });
    g.bench_function("palisade count window", |b| {
        let svc = palisade_breaker(&one_worker, WindowType::Count);
        b.iter_custom(|iters| sequential(&one_worker, &svc, true, iters))
    });
    g.bench_function("tower-resilience 0.13", |b| {
        let svc = ServiceBuilder::new()
            .layer(resilience_layer())
            .service(inner());
        b.iter_custom(|iters| sequential(&one_worker, &svc, true, iters))
    });
    g.finish();

    for (name, rt, n) in [
        ("64_tasks_1_worker", &one_worker, 1),
        ("64_tasks_2_workers", &workers, 2),
    ] {
        let mut g = c.benchmark_group(format!("closed_success/{name}"));
        g.bench_function("no breaker (baseline)", |b| {
            let svc = inner();
            b.iter_custom(|iters| concurrent(rt, n, &svc, iters))
        });
        g.bench_function("palisade time window", |b| {
            let svc = palisade_breaker(rt, WindowType::Time);
            b.iter_custom(|iters| concurrent(rt, n, &svc, iters))
        });
        g.bench_function("palisade count window", |b| {
            let svc = palisade_breaker(rt, WindowType::Count);
            b.iter_custom(|iters| concurrent(rt, n, &svc, iters))
        });
        g.bench_function("tower-resilience 0.13", |b| {
            let svc = ServiceBuilder::new()
                .layer(resilience_layer())
                .service(inner());
            b.iter_custom(|iters| concurrent(rt, n, &svc, iters))
        });
        g.finish();
    }
}

/// Times `iters` runs of `f` on the worker of `rt`, as CPU time (see [`concurrent`]).
fn cpu_time(rt: &tokio::runtime::Runtime, iters: u64, f: impl Fn() + Send + 'static) -> Duration {
    rt.block_on(async {
        let cpu_start = process_cpu_nanos();
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..iters {
                f();
            }
        })
        .await
        .unwrap();
        match (cpu_start, process_cpu_nanos()) {
            (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
            _ => start.elapsed(),
        }
    })
}

/// What the primitives the breaker is made of cost on this machine: the time window reads the
/// clock once per call; every admitted call clones and drops one `Arc` and adds to one atomic.
fn primitives(c: &mut Criterion) {
    let rt = one_worker();
    let mut g = c.benchmark_group("primitives");
    g.bench_function("tokio::time::Instant::now", |b| {
        b.iter_custom(|iters| {
            cpu_time(&rt, iters, || {
                black_box(tokio::time::Instant::now());
            })
        })
    });
    g.bench_function("Arc clone + drop", |b| {
        let arc = std::sync::Arc::new(0u64);
        b.iter_custom(|iters| {
            let arc = arc.clone();
            cpu_time(&rt, iters, move || drop(black_box(arc.clone())))
        })
    });
    g.bench_function("AtomicU64::fetch_add", |b| {
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        b.iter_custom(|iters| {
            let counter = counter.clone();
            cpu_time(&rt, iters, move || {
                black_box(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            })
        })
    });
    g.finish();
}

/// A keyed breaker's kind of name, too long to be held in place by `CircuitOpen`.
const LONG_NAME: &str = "payment_gateway/10.20.30.40:8443";

fn open_rejection(c: &mut Criterion) {
    let one_worker = one_worker();
    let mut g = c.benchmark_group("open_rejection/sequential");
    g.bench_function("palisade", |b| {
        let svc = palisade_breaker(&one_worker, WindowType::Time);
        let handle = svc.handle();
        sequential(&one_worker, &svc, false, 1);
        assert_eq!(handle.state(), CircuitState::Open);
        b.iter_custom(|iters| sequential(&one_worker, &svc, true, iters))
    });
    g.bench_function("palisade, long name (shared)", |b| {
        let svc = named_breaker(&one_worker, WindowType::Time, LONG_NAME);
        sequential(&one_worker, &svc, false, 1);
        assert_eq!(svc.handle().state(), CircuitState::Open);
        b.iter_custom(|iters| sequential(&one_worker, &svc, true, iters))
    });
    g.bench_function("tower-resilience 0.13", |b| {
        let svc = ServiceBuilder::new()
            .layer(resilience_layer())
            .service(inner());
        sequential(&one_worker, &svc, false, 1);
        let mut probe = svc.clone();
        let r = one_worker.block_on(async { probe.ready().await.unwrap().call(true).await });
        assert!(r.is_err(), "tower-resilience breaker should be open");
        b.iter_custom(|iters| sequential(&one_worker, &svc, true, iters))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = closed_success, open_rejection, primitives
}
/// Makes `calls` sequential calls through the service named `name`, for instruction counts.
fn count_instructions(name: &str, calls: u64) {
    async fn run<S>(mut svc: S, ok: bool, calls: u64)
    where
        S: Service<bool>,
        S::Error: std::fmt::Debug,
    {
        for _ in 0..calls {
            let r = svc.ready().await.unwrap().call(black_box(ok)).await;
            black_box(r.is_ok());
        }
    }
    // A multi-thread runtime, so that breakers run their ticker (on the worker) as in a
    // server; the calls run on this thread, inside `block_on`.
    let rt = one_worker();
    let time = palisade_breaker(&rt, WindowType::Time);
    let count = palisade_breaker(&rt, WindowType::Count);
    let long = named_breaker(&rt, WindowType::Time, LONG_NAME);
    rt.block_on(async {
        match name {
            "baseline" => run(inner(), true, calls).await,
            "palisade-time" => run(time, true, calls).await,
            "palisade-count" => run(count, true, calls).await,
            "palisade-open" => {
                let mut svc = time;
                run(&mut svc, false, 1).await;
                assert_eq!(svc.handle().state(), CircuitState::Open);
                run(svc, true, calls).await
            }
            "palisade-open-long-name" => {
                let mut svc = long;
                run(&mut svc, false, 1).await;
                assert_eq!(svc.handle().state(), CircuitState::Open);
                run(svc, true, calls).await
            }
            "tower-resilience" => {
                let svc = ServiceBuilder::new()
                    .layer(resilience_layer())
                    .service(inner());
                run(svc, true, calls).await
            }
            "tower-resilience-open" => {
                let mut svc = ServiceBuilder::new()
                    .layer(resilience_layer())
                    .service(inner());
                run(&mut svc, false, 1).await;
                run(svc, true, calls).await
            }
            other => panic!("unknown service `{other}`"),
        }
    });
}

fn main() {
    palisade_benches::bench_main("BREAKER", count_instructions, benches);
}
