//! What the whole stack costs per call on the success path (no-op inner service), next to
//! the same palisade layers stacked by hand and a hand-stacked tower-resilience 0.13
//! equivalent (bulkhead, time limiter, circuit breaker, retry).
//!
//! Run: `cargo bench --bench stack`. One service driven sequentially on a current-thread
//! runtime; the time per iteration is the time per call.

use std::fmt::Debug;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::bulkhead::BulkheadLayer;
use palisade::circuit_breaker::CircuitBreakerLayer;
use palisade::classify::{
    Category, Classification, Classified, SelfClassified, Severity, Transience,
};
use palisade::error::ThroughLayers;
use palisade::policy::{Policies, Policy};
use palisade::retry::{CloneRequest, RetryLayer};
use palisade::stack::{ByName, ResilienceLayer};
use palisade::timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

/// The no-op's error: never produced.
#[derive(Clone, Debug)]
struct Never;

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

type Noop = tower::util::ServiceFn<fn(u64) -> std::future::Ready<Result<u64, Never>>>;

fn noop() -> Noop {
    service_fn(|x: u64| std::future::ready(Ok(x)))
}

async fn drive<S>(service: &mut S, calls: u64)
where
    S: Service<u64>,
    S::Error: Debug,
{
    for i in 0..calls {
        let ready = service.ready().await.unwrap();
        black_box(ready.call(black_box(i)).await.unwrap());
    }
}

fn sequential<S, F>(c: &mut Criterion, name: &str, make: F)
where
    F: Fn() -> S,
    S: Service<u64>,
    S::Error: Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("stack_sequential");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut service = make();
                drive(&mut service, 1).await;
                let start = Instant::now();
                drive(&mut service, iters).await;
                start.elapsed()
            })
        })
    });
    group.finish();
}

fn policies() -> Policies {
    Policies::from_yaml_str("policies:\n  bench: {}\n").unwrap()
}

fn stack(c: &mut Criterion) {
    sequential(c, "baseline (no layer)", noop);
    sequential(c, "palisade ResilienceLayer (whole stack)", || {
        ResilienceLayer::from_policies(policies(), SelfClassified)
            .with_replay(CloneRequest)
            .with_select(ByName::new("bench"))
            .layer(noop())
    });
    sequential(c, "palisade layers stacked by hand", || {
        let p: Policy = (**policies().for_operation("bench")).clone();
        ServiceBuilder::new()
            .layer(BulkheadLayer::unshared("bench", &p.bulkhead))
            .layer(TimeoutLayer::total_from(&p))
            .layer(RetryLayer::from_policy(
                &p,
                ThroughLayers(ThroughLayers(SelfClassified)),
            ))
            .layer(CircuitBreakerLayer::from_policy(
                &p,
                ThroughLayers(SelfClassified),
            ))
            .layer(TimeoutLayer::attempt_from(&p))
            .service(noop())
    });
    sequential(c, "tower-resilience stacked by hand", || {
        ServiceBuilder::new()
            .layer(
                tower_resilience::bulkhead::BulkheadLayer::builder()
                    .max_concurrent_calls(100)
                    .build()
                    .unwrap(),
            )
            .layer(
                tower_resilience::timelimiter::TimeLimiterLayer::builder()
                    .timeout_duration(Duration::from_secs(30))
                    .build(),
            )
            .layer(
                tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                    .failure_rate_threshold(0.5)
                    .sliding_window_size(100)
                    .build()
                    .unwrap(),
            )
            .layer(
                tower_resilience::retry::RetryLayer::<
                    u64,
                    u64,
                    tower_resilience::timelimiter::TimeLimiterError<Never>,
                >::builder()
                .max_attempts(4)
                .exponential_backoff(Duration::from_millis(100))
                .build(),
            )
            .layer(
                tower_resilience::timelimiter::TimeLimiterLayer::builder()
                    .timeout_duration(Duration::from_secs(10))
                    .build(),
            )
            .service(noop())
    });
}

criterion_group!(benches, stack);
criterion_main!(benches);
