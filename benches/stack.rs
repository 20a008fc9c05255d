//! What the whole stack costs per call on the success path (no-op inner service), next to
//! the same palisade layers stacked by hand and a hand-stacked tower-resilience 0.13
//! equivalent (bulkhead, time limiter, circuit breaker, retry).
//!
//! Two groups. `stack_sequential`: `u64` requests selected by name, no correlation (the
//! request has no headers), the stack's error metrics with no recorder installed (as the
//! layer costs in an application that has not installed one yet; a real exporter adds its
//! own cost). `stack_http`: `http::Request`s with an incoming `x-request-id`, selected by
//! route, with the stack's correlation layer and error metrics: the "whole stack";
//! the request is built in every row, the baseline included.
//!
//! Run: `cargo bench -p palisade-benches --bench stack`. One service driven sequentially on a
//! current-thread runtime; the time per iteration is the time per call. See
//! `count_instructions` for the noise-free instruction counts.

use std::fmt::Debug;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};

use criterion::Throughput;
use http::{Request, Response};
use palisade::bulkhead::BulkheadLayer;
use palisade::circuit_breaker::CircuitBreakerLayer;
use palisade::classify::{HttpStatus, SelfClassified};
use palisade::correlation::{CorrelationLayer, X_REQUEST_ID};
use palisade::error::ThroughLayers;
use palisade::metrics::ErrorMetricsLayer;
use palisade::policy::{Policies, Policy};
use palisade::retry::{CloneRequest, RetryLayer};
use palisade::stack::{ByName, ResilienceLayer};
use palisade::timeout::TimeoutLayer;
use palisade_benches::{CpuTimer, Never, drive, noop, sequential};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

fn policies() -> Policies {
    Policies::from_yaml_str("policies:\n  bench: {}\n").unwrap()
}

fn whole_stack() -> impl Service<u64, Response = u64, Error = impl Debug + Send, Future = impl Send>
+ Clone
+ Send
+ 'static {
    ResilienceLayer::from_policies(policies(), SelfClassified)
        .without_correlation()
        .with_replay(CloneRequest)
        .with_select(ByName::new("bench"))
        .layer(noop())
}

/// Calls a fresh clone of the service each time, as axum's router does for each request:
/// the stack's own copy of the operation's layers is then never reused. (`Resilience` is
/// always ready, so the clone needs no `poll_ready` of its own.)
#[derive(Clone)]
struct ClonePerCall<S>(S);

impl<S: Service<u64> + Clone> Service<u64> for ClonePerCall<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: u64) -> S::Future {
        self.0.clone().call(request)
    }
}

fn whole_stack_clone_per_call() -> impl Service<u64, Error = impl Debug> {
    ClonePerCall(whole_stack())
}

fn prometheus_recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder()
}

fn whole_stack_without_metrics() -> impl Service<u64, Error = impl Debug> {
    ResilienceLayer::from_policies(policies(), SelfClassified)
        .without_correlation()
        .without_metrics()
        .with_replay(CloneRequest)
        .with_select(ByName::new("bench"))
        .layer(noop())
}

/// An HTTP service that answers at once with an empty 200.
#[derive(Clone, Copy, Debug)]
struct HttpNoop;

impl Service<Request<()>> for HttpNoop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

/// What a server hands the stack: a request with a few headers and an incoming ID.
fn http_request() -> Request<()> {
    Request::post("/v1/transfers")
        .header(http::header::HOST, "ledger.internal")
        .header(http::header::USER_AGENT, "palisade-bench")
        .header(X_REQUEST_ID, "pay-2026-000042")
        .body(())
        .unwrap()
}

fn http_policies() -> Policies {
    Policies::from_yaml_str(
        "policies:\n  transfers: {}\nroutes:\n  \"POST /v1/transfers\": transfers\n",
    )
    .unwrap()
}

/// The whole stack: correlation -> error metrics -> the layers, selected by route.
fn http_stack() -> impl Service<Request<()>, Error = impl Debug> + Clone {
    ResilienceLayer::from_policies(http_policies(), HttpStatus::new()).layer(HttpNoop)
}

/// The same, stacked by hand with the same layers (no selection, no kill switch).
fn http_by_hand() -> impl Service<Request<()>, Error = impl Debug> + Clone {
    let p: Policy = (**http_policies().for_operation("transfers")).clone();
    ServiceBuilder::new()
        .layer(CorrelationLayer::new())
        .layer(ErrorMetricsLayer::new(ThroughLayers(HttpStatus::new())).operation("transfers"))
        .layer(BulkheadLayer::unshared("transfers", &p.bulkhead))
        .layer(TimeoutLayer::total_from(&p))
        .layer(RetryLayer::from_policy(
            &p,
            ThroughLayers(ThroughLayers(HttpStatus::new())),
        ))
        .layer(CircuitBreakerLayer::from_policy(
            &p,
            ThroughLayers(HttpStatus::new()),
        ))
        .layer(TimeoutLayer::attempt_from(&p))
        .service(HttpNoop)
}

/// Times `iters` calls shared by 64 tasks on a runtime of `workers` workers, each task with
/// its own clone of the service, as CPU time of the process per call (as the breaker bench
/// does): shared state (reference counts, the retry layer's process-wide jitter seed, the
/// bulkhead's semaphore, the breaker's window) is then touched from both cores.
fn concurrent<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> std::time::Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
    S::Response: Send,
{
    const TASKS: u64 = 64;
    let per_task = iters.div_ceil(TASKS);
    rt.block_on(async {
        let start = CpuTimer::start();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        black_box(svc.ready().await.unwrap().call(i).await.unwrap());
                        if i % 256 == 255 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let spent = start.elapsed(2);
        std::time::Duration::from_secs_f64(
            spent.as_secs_f64() * iters as f64 / (per_task * TASKS) as f64,
        )
    })
}

fn stack_concurrent(c: &mut Criterion) {
    for workers in [1, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap();
        let mut g = c.benchmark_group(format!("stack_64_tasks_{workers}_workers"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("palisade ResilienceLayer (whole stack)", |b| {
            let svc = whole_stack();
            b.iter_custom(|iters| concurrent(&rt, &svc, iters))
        });
        g.bench_function("palisade layers stacked by hand", |b| {
            let svc = by_hand();
            b.iter_custom(|iters| concurrent(&rt, &svc, iters))
        });
        g.finish();
    }
}

async fn drive_http<S>(service: &mut S, calls: u64)
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    for _ in 0..calls {
        let ready = service.ready().await.unwrap();
        black_box(ready.call(black_box(http_request())).await.unwrap());
    }
}

fn sequential_http<S, F>(c: &mut Criterion, name: &str, make: F)
where
    F: Fn() -> S,
    S: Service<Request<()>>,
    S::Error: Debug,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("stack_http");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut service = make();
                drive_http(&mut service, 1).await;
                let start = CpuTimer::start();
                drive_http(&mut service, iters).await;
                start.elapsed(1)
            })
        })
    });
    group.finish();
}

fn by_hand() -> impl Service<u64, Response = u64, Error = impl Debug + Send, Future = impl Send>
+ Clone
+ Send
+ 'static {
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

/// A runtime as `#[tokio::main]` makes it: multi-thread, here with two workers.
fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Like `sequential`, but the service is built inside a multi-thread runtime (as an
/// application under `#[tokio::main]` builds it), so the breakers' coarse tick runs on a
/// worker and a success reads no clock for the breaker's window; the calls are still made
/// one after the other, from the runtime's `block_on` thread. CPU time of the whole process
/// (the tick's wakes included).
fn sequential_multi_thread<S, F>(c: &mut Criterion, name: &str, make: F)
where
    F: Fn() -> S,
    S: Service<u64>,
    S::Error: Debug,
{
    let rt = multi_thread_runtime();
    let mut group = c.benchmark_group("stack_sequential");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut service = make();
                drive(&mut service, 1).await;
                let start = CpuTimer::start();
                drive(&mut service, iters).await;
                start.elapsed(1)
            })
        })
    });
    group.finish();
}

fn stack(c: &mut Criterion) {
    sequential(c, "stack_sequential", "baseline (no layer)", noop);
    sequential(
        c,
        "stack_sequential",
        "palisade ResilienceLayer (whole stack)",
        whole_stack,
    );
    sequential_multi_thread(
        c,
        "palisade ResilienceLayer (whole stack, built in a multi-thread runtime)",
        whole_stack,
    );
    {
        // A real exporter's recorder, in force on the bench's thread (the runtime is
        // current-thread): what recording costs once an application has installed one.
        let recorder = prometheus_recorder();
        let _in_force = metrics::set_default_local_recorder(&recorder);
        sequential(
            c,
            "stack_sequential",
            "palisade ResilienceLayer (whole stack, Prometheus recorder)",
            whole_stack,
        );
    }
    sequential(
        c,
        "stack_sequential",
        "palisade ResilienceLayer (whole stack, metrics off)",
        whole_stack_without_metrics,
    );
    sequential(
        c,
        "stack_sequential",
        "palisade ResilienceLayer (whole stack, a clone per call as axum makes)",
        whole_stack_clone_per_call,
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
    sequential_http(c, "baseline (no layer)", || HttpNoop);
    sequential_http(
        c,
        "palisade ResilienceLayer (correlation, metrics, selection by route)",
        http_stack,
    );
    sequential_http(
        c,
        "palisade layers with CorrelationLayer and ErrorMetricsLayer by hand",
        http_by_hand,
    );
}

/// `STACK_COUNT=<stack|stack-mt|stack-nometrics|stack-clone|stack-prometheus|hand|tower-resilience|noop|http-noop|http-stack|http-hand> STACK_CALLS=<n>`: makes `n` sequential
/// calls and exits, for `valgrind --tool=cachegrind --cache-sim=no`. Two runs with two values
/// of `n`: the difference in instructions over the difference in calls is one call's cost,
/// free of the machine's noise.
fn count_instructions(name: &str, calls: u64) {
    if name == "stack-mt" {
        // Built and driven as `sequential_multi_thread` does.
        multi_thread_runtime().block_on(async { drive(&mut whole_stack(), calls).await });
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match name {
            "stack" => drive(&mut whole_stack(), calls).await,
            "stack-nometrics" => drive(&mut whole_stack_without_metrics(), calls).await,
            "stack-clone" => drive(&mut whole_stack_clone_per_call(), calls).await,
            "stack-prometheus" => {
                let recorder = prometheus_recorder();
                let _in_force = metrics::set_default_local_recorder(&recorder);
                drive(&mut whole_stack(), calls).await
            }
            "http-noop" => drive_http(&mut HttpNoop, calls).await,
            "http-stack" => drive_http(&mut http_stack(), calls).await,
            "http-hand" => drive_http(&mut http_by_hand(), calls).await,
            "hand" => drive(&mut by_hand(), calls).await,
            "sizes" => print_future_sizes(),
            "tower-resilience" => drive(&mut tower_resilience(), calls).await,
            _ => drive(&mut noop(), calls).await,
        }
    });
}

/// `STACK_COUNT=sizes`: prints the size of each layer's response future, innermost first,
/// as the layers stack by hand, and of the whole stack's (every layer's `call` moves its
/// inner future into its own, so the sizes are what the calls copy).
fn print_future_sizes() {
    fn size<S: Service<u64>>(name: &str, mut svc: S) {
        let ready = svc.poll_ready(&mut Context::from_waker(std::task::Waker::noop()));
        assert!(ready.is_ready());
        let future = svc.call(0);
        println!("{name:<40} {:>5} bytes", std::mem::size_of_val(&future));
    }
    let p: Policy = (**policies().for_operation("bench")).clone();
    let attempt = || TimeoutLayer::attempt_from(&p).layer(noop());
    let breaker =
        || CircuitBreakerLayer::from_policy(&p, ThroughLayers(SelfClassified)).layer(attempt());
    let retry = || {
        RetryLayer::from_policy(&p, ThroughLayers(ThroughLayers(SelfClassified))).layer(breaker())
    };
    let total = || TimeoutLayer::total_from(&p).layer(retry());
    println!(
        "{:<40} {:>5} bytes",
        "tokio::time::Sleep",
        std::mem::size_of::<tokio::time::Sleep>()
    );
    size("noop", noop());
    size("attempt timeout", attempt());
    size("+ circuit breaker", breaker());
    size("+ retry", retry());
    size("+ total timeout", total());
    size(
        "+ bulkhead (by hand)",
        BulkheadLayer::unshared("bench", &p.bulkhead).layer(total()),
    );
    size("whole stack", whole_stack());
    size("whole stack, metrics off", whole_stack_without_metrics());
}

criterion_group!(benches, stack, stack_concurrent);

fn main() {
    palisade_benches::bench_main("STACK", count_instructions, benches);
}
