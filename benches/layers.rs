//! What each layer costs per call on the success path, next to tower's own middleware and
//! tower-resilience 0.13, in one run.
//!
//! The inner service is a no-op that answers at once. `sequential` drives one service on a
//! current-thread runtime; `concurrent_64` drives 64 clones from 64 tasks on a 2-worker
//! runtime (one iteration is one call by each task, so divide the time by 64 for a call).
//!
//! Every figure is CPU time (all threads of the process, from `CLOCK_PROCESS_CPUTIME_ID`;
//! wall time elsewhere): on a machine shared with other builds, wall time mostly measures the
//! neighbours. For `concurrent_64` it is the CPU time of both workers together.
//!
//! Run: `cargo bench -p palisade-benches --bench layers`; instruction counts:
//! `benches/instructions.sh layers <name>...`.
//!
//! Timings on a shared machine are noisy, so the same file also counts instructions, which
//! noise does not move: with `LAYERS_COUNT=<name>` and `LAYERS_CALLS=<n>` set, it makes `n`
//! sequential calls through the named service (see `count_instructions`) and exits. Run it
//! twice under `valgrind --tool=cachegrind --cache-sim=no` with two values of `n`; the
//! difference in instructions divided by the difference in calls is the cost of one call.

use std::fmt::Debug;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use palisade::bulkhead::BulkheadLayer;
use palisade::classify::SelfClassified;
use palisade::policy::{BulkheadPolicy, RetryPolicy, TimeoutPolicy};
use palisade::retry::RetryLayer;
use palisade::timeout::TimeoutLayer;
use palisade_benches::{CpuTimer, Never, drive, noop, sequential};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceBuilder, service_fn};

const TASKS: u64 = 64;

fn concurrent<S, F>(c: &mut Criterion, rt: &Runtime, name: &str, make: F)
where
    F: Fn() -> S,
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
{
    let mut group = c.benchmark_group("concurrent_64");
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let service = make();
                let start = CpuTimer::start();
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let mut service = service.clone();
                        tokio::spawn(async move { drive(&mut service, iters).await })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                start.elapsed(2)
            })
        })
    });
    group.finish();
}

fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
}

fn timeout_policy() -> TimeoutPolicy {
    TimeoutPolicy::default()
}

fn bulkhead_policy() -> BulkheadPolicy {
    BulkheadPolicy::default()
}

fn tr_retry() -> tower_resilience::retry::RetryLayer<u64, u64, Never> {
    tower_resilience::retry::RetryLayer::<u64, u64, Never>::builder()
        .max_attempts(4)
        .exponential_backoff(Duration::from_millis(100))
        .build()
}

fn tr_timelimiter() -> tower_resilience::timelimiter::TimeLimiterLayer {
    tower_resilience::timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(Duration::from_secs(10))
        .build()
}

fn tr_bulkhead() -> tower_resilience::bulkhead::BulkheadLayer {
    tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(100)
        .build()
        .unwrap()
}

fn layers(c: &mut Criterion) {
    // Sequential: one service, one thread.
    sequential(c, "sequential", "baseline (no layer)", noop);
    // What one read of tokio's clock costs in this build: dev-dependencies turn on tokio's
    // `test-util`, whose clock takes a mutex on every read (a release build of an
    // application without `test-util` reads the OS clock directly).
    sequential(c, "sequential", "reference: one tokio clock read", || {
        service_fn(|x: u64| {
            black_box(tokio::time::Instant::now());
            std::future::ready(Ok::<_, Never>(x))
        })
    });
    sequential(c, "sequential", "palisade retry", || {
        RetryLayer::new("bench", retry_policy(), SelfClassified).layer(noop())
    });
    sequential(c, "sequential", "palisade timeout", || {
        TimeoutLayer::attempt("bench", &timeout_policy()).layer(noop())
    });
    sequential(
        c,
        "sequential",
        "palisade timeout (no in-flight list)",
        || {
            TimeoutLayer::attempt("bench", &timeout_policy())
                .without_in_flight()
                .layer(noop())
        },
    );
    sequential(c, "sequential", "palisade bulkhead", || {
        BulkheadLayer::unshared("bench", &bulkhead_policy()).layer(noop())
    });
    sequential(
        c,
        "sequential",
        "palisade stack (total, retry, attempt, bulkhead)",
        || {
            ServiceBuilder::new()
                .layer(TimeoutLayer::total("bench", &timeout_policy()))
                .layer(RetryLayer::new(
                    "bench",
                    retry_policy(),
                    palisade::error::ThroughLayers(palisade::error::ThroughLayers(SelfClassified)),
                ))
                .layer(TimeoutLayer::attempt("bench", &timeout_policy()))
                .layer(BulkheadLayer::unshared("bench", &bulkhead_policy()))
                .service(noop())
        },
    );
    sequential(c, "sequential", "tower timeout", || {
        tower::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(noop())
    });
    sequential(c, "sequential", "tower concurrency_limit", || {
        tower::limit::ConcurrencyLimitLayer::new(100).layer(noop())
    });
    sequential(c, "sequential", "tower-resilience retry", || {
        tr_retry().layer(noop())
    });
    sequential(c, "sequential", "tower-resilience timelimiter", || {
        tr_timelimiter().layer(noop())
    });
    sequential(c, "sequential", "tower-resilience bulkhead", || {
        tr_bulkhead().layer(noop())
    });

    // 64 tasks on two workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    concurrent(c, &rt, "baseline (no layer)", noop);
    concurrent(c, &rt, "reference: one tokio clock read", || {
        service_fn(|x: u64| {
            black_box(tokio::time::Instant::now());
            std::future::ready(Ok::<_, Never>(x))
        })
    });
    concurrent(c, &rt, "palisade retry", || {
        RetryLayer::new("bench", retry_policy(), SelfClassified).layer(noop())
    });
    concurrent(c, &rt, "palisade timeout", || {
        TimeoutLayer::attempt("bench", &timeout_policy()).layer(noop())
    });
    concurrent(c, &rt, "palisade timeout (no in-flight list)", || {
        TimeoutLayer::attempt("bench", &timeout_policy())
            .without_in_flight()
            .layer(noop())
    });
    concurrent(c, &rt, "palisade bulkhead", || {
        BulkheadLayer::unshared("bench", &bulkhead_policy()).layer(noop())
    });
    // One permit for two workers: calls queue for it, and each release hands it over
    // through the semaphore (the path taken only when somebody waits).
    concurrent(c, &rt, "palisade bulkhead (1 permit, queued)", || {
        let mut policy = bulkhead_policy();
        policy.max_concurrent = 1;
        policy.max_queue = TASKS as u32;
        BulkheadLayer::unshared("bench", &policy).layer(noop())
    });
    concurrent(c, &rt, "tower timeout", || {
        tower::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(noop())
    });
    concurrent(c, &rt, "tower concurrency_limit", || {
        tower::limit::ConcurrencyLimitLayer::new(100).layer(noop())
    });
    concurrent(c, &rt, "tower-resilience retry", || {
        tr_retry().layer(noop())
    });
    concurrent(c, &rt, "tower-resilience timelimiter", || {
        tr_timelimiter().layer(noop())
    });
    concurrent(c, &rt, "tower-resilience bulkhead", || {
        tr_bulkhead().layer(noop())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = layers
}

/// Makes `calls` sequential calls through the service named `name`.
fn count_instructions(name: &str, calls: u64) {
    async fn run<S>(mut service: S, calls: u64)
    where
        S: Service<u64>,
        S::Error: Debug,
    {
        drive(&mut service, calls).await;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match name {
            "baseline" => run(noop(), calls).await,
            "palisade-retry" => {
                run(
                    RetryLayer::new("bench", retry_policy(), SelfClassified).layer(noop()),
                    calls,
                )
                .await
            }
            "palisade-timeout" => {
                run(
                    TimeoutLayer::attempt("bench", &timeout_policy()).layer(noop()),
                    calls,
                )
                .await
            }
            "palisade-timeout-unlisted" => {
                run(
                    TimeoutLayer::attempt("bench", &timeout_policy())
                        .without_in_flight()
                        .layer(noop()),
                    calls,
                )
                .await
            }
            "palisade-bulkhead" => {
                run(
                    BulkheadLayer::unshared("bench", &bulkhead_policy()).layer(noop()),
                    calls,
                )
                .await
            }
            "tower-timeout" => {
                run(
                    tower::timeout::TimeoutLayer::new(Duration::from_secs(10)).layer(noop()),
                    calls,
                )
                .await
            }
            "tower-concurrency-limit" => {
                run(
                    tower::limit::ConcurrencyLimitLayer::new(100).layer(noop()),
                    calls,
                )
                .await
            }
            "tower-resilience-retry" => run(tr_retry().layer(noop()), calls).await,
            "tower-resilience-timelimiter" => run(tr_timelimiter().layer(noop()), calls).await,
            "tower-resilience-bulkhead" => run(tr_bulkhead().layer(noop()), calls).await,
            "clock" => {
                run(
                    service_fn(|x: u64| {
                        black_box(tokio::time::Instant::now());
                        std::future::ready(Ok::<_, Never>(x))
                    }),
                    calls,
                )
                .await
            }
            other => panic!("unknown service `{other}`"),
        }
    });
}

fn main() {
    palisade_benches::bench_main("LAYERS", count_instructions, benches);
}
