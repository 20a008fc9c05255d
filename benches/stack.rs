//! What the whole stack costs per call on the success path (no-op inner service), next to
//! the same palisade layers stacked by hand and a hand-stacked tower-resilience 0.13
//! equivalent (bulkhead, time limiter, circuit breaker, retry).
//!
//! Run: `cargo bench --bench stack`. One service driven sequentially on a current-thread
//! runtime; the time per iteration is the time per call. See `count_instructions` for the
//! noise-free instruction counts.

use std::fmt::Debug;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use palisade::bulkhead::BulkheadLayer;
use palisade::circuit_breaker::CircuitBreakerLayer;
use palisade::classify::SelfClassified;
use palisade::error::ThroughLayers;
use palisade::policy::{Policies, Policy};
use palisade::retry::{CloneRequest, RetryLayer};
use palisade::stack::{ByName, ResilienceLayer};
use palisade::timeout::TimeoutLayer;
use palisade_benches::{Never, drive, noop, sequential};
use tower::{Layer, Service, ServiceBuilder};

fn policies() -> Policies {
    Policies::from_yaml_str("policies:\n  bench: {}\n").unwrap()
}

fn whole_stack() -> impl Service<u64, Error = impl Debug> {
    ResilienceLayer::from_policies(policies(), SelfClassified)
        .with_replay(CloneRequest)
        .with_select(ByName::new("bench"))
        .layer(noop())
}

fn by_hand() -> impl Service<u64, Error = impl Debug> {
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
}

fn tower_resilience() -> impl Service<u64, Error = impl Debug> {
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
}

fn stack(c: &mut Criterion) {
    sequential(c, "stack_sequential", "baseline (no layer)", noop);
    sequential(
        c,
        "stack_sequential",
        "palisade ResilienceLayer (whole stack)",
        whole_stack,
    );
    sequential(
        c,
        "stack_sequential",
        "palisade layers stacked by hand",
        by_hand,
    );
    sequential(
        c,
        "stack_sequential",
        "tower-resilience stacked by hand",
        tower_resilience,
    );
}

/// `STACK_COUNT=<stack|hand|tower-resilience|noop> STACK_CALLS=<n>`: makes `n` sequential
/// calls and exits, for `valgrind --tool=cachegrind --cache-sim=no`. Two runs with two values
/// of `n`: the difference in instructions over the difference in calls is one call's cost,
/// free of the machine's noise.
fn count_instructions(name: &str, calls: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match name {
            "stack" => drive(&mut whole_stack(), calls).await,
            "hand" => drive(&mut by_hand(), calls).await,
            "tower-resilience" => drive(&mut tower_resilience(), calls).await,
            _ => drive(&mut noop(), calls).await,
        }
    });
}

criterion_group!(benches, stack);

fn main() {
    palisade_benches::bench_main("STACK", count_instructions, benches);
}
