//! What the observability layers cost per call, over a service that answers at once.
//!
//! No tracing subscriber and no metrics recorder are installed, as in a service that runs with
//! them off: what is left is the layers' own work (validating and sharing the ID, the task-local,
//! the span callsite check, the clock read, building metric keys for the no-op recorder).
//! Each layered figure includes building the request and polling the future; subtract the
//! `baseline` figure for the layer's own cost.
//!
//! Figures are CPU time of the process per call (`CpuTimer`), which the neighbours' load on a
//! shared machine moves less than wall time. Instruction counts, which it does not move at
//! all: with `OBSERVE_COUNT=<name>` and `OBSERVE_CALLS=<n>` set, the binary makes `n` calls
//! through the named case (see `count_instructions`) and exits;
//! `benches/instructions.sh observability <name>...` runs it under cachegrind.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group};
use http::{Request, Response, StatusCode};
use palisade::classify::HttpStatus;
use palisade::correlation::{
    CorrelationId, CorrelationLayer, PropagateCorrelationLayer, X_REQUEST_ID,
};
use palisade::metrics::ErrorMetricsLayer;
use palisade_benches::CpuTimer;
use tower::{Layer, Service};

/// Benches `f` in process CPU time per call.
fn cpu<M: criterion::measurement::Measurement<Value = std::time::Duration>, O>(
    g: &mut criterion::BenchmarkGroup<'_, M>,
    name: &str,
    mut f: impl FnMut() -> O,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = CpuTimer::start();
            for _ in 0..iters {
                black_box(f());
            }
            start.elapsed(1)
        })
    });
}

/// Polls a future that is ready at once, without a runtime.
/// Like [`cpu`], with two threads at once, each calling its own clone of `service` (as a
/// server's workers do): the CPU time of both per call, so whatever every call shares (a
/// contended reference count, a cache line) shows up.
fn cpu_two_threads<M, S>(
    g: &mut criterion::BenchmarkGroup<'_, M>,
    name: &str,
    service: S,
    make: MakeRequest,
) where
    M: criterion::measurement::Measurement<Value = std::time::Duration>,
    S: Service<Request<()>> + Clone + Send,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = CpuTimer::start();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    let mut service = service.clone();
                    s.spawn(move || {
                        for _ in 0..iters.div_ceil(2) {
                            let _ = black_box(now(service.call(black_box(make()))));
                        }
                    });
                }
            });
            start.elapsed(2)
        })
    });
}

fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("the benchmarked services never wait"),
    }
}

#[derive(Clone, Copy)]
struct Answer(StatusCode);

impl Service<Request<()>> for Answer {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        // Real responses carry headers, so the layers add to a map that exists already.
        let mut res = Response::new(());
        *res.status_mut() = self.0;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        ready(Ok(res))
    }
}

/// A request with the headers a client typically sends, and optionally an ID.
fn request(id: Option<&'static str>) -> Request<()> {
    let mut req = Request::new(());
    let headers = req.headers_mut();
    headers.insert(
        http::header::HOST,
        http::HeaderValue::from_static("ledger.internal"),
    );
    headers.insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("palisade-bench"),
    );
    if let Some(id) = id {
        req.headers_mut()
            .insert(X_REQUEST_ID, http::HeaderValue::from_static(id));
    }
    req
}

/// Stands for the extensions a request already carries when the layer sees it under axum's
/// `Router::layer` (the router inserts `OriginalUri` and `MatchedPath` first) or tonic's
/// server (connection info). Plain hyper adds one only to upgrade requests.
#[derive(Clone)]
struct Served;

/// The correlation rows, one per request shape: the baseline's name (no layer), the
/// layered row's name, and the request. The layer's own cost is the difference of the two.
/// "As served": under axum's `Router::layer` and tonic's server the request already carries
/// extensions (see `Served`), so the extension map exists before the layer adds the ID to it.
/// The hostile rows have baselines of their own shape (an `x-request-id` the layer replaces).
const CORRELATION_CASES: [(&str, &str, MakeRequest); 6] = [
    ("baseline_with_id_header", "incoming_id", || {
        request(Some(INCOMING_ID))
    }),
    (
        "baseline_with_id_as_served",
        "incoming_id_as_served",
        || served(Some(INCOMING_ID)),
    ),
    ("baseline_without_id", "generated_id", || request(None)),
    ("baseline_with_hostile_id", "hostile_id_replaced", || {
        request(Some(HOSTILE_ID))
    }),
    (
        "baseline_without_id_as_served",
        "generated_id_as_served",
        || served(None),
    ),
    (
        "baseline_with_hostile_id_as_served",
        "hostile_id_replaced_as_served",
        || served(Some(HOSTILE_ID)),
    ),
];

/// Builds one bench request.
type MakeRequest = fn() -> Request<()>;

/// A valid incoming ID, and one the layer must replace (it has spaces).
const INCOMING_ID: &str = "pay-2026-000042";
const HOSTILE_ID: &str = "a b c";

fn correlation(c: &mut Criterion) {
    let mut g = c.benchmark_group("correlation");
    let mut plain = Answer(StatusCode::OK);
    let mut layered = CorrelationLayer::new().layer(Answer(StatusCode::OK));
    for (baseline, name, make) in CORRELATION_CASES {
        cpu(&mut g, baseline, || now(plain.call(black_box(make()))));
        cpu(&mut g, name, || now(layered.call(black_box(make()))));
    }
    cpu(&mut g, "generate_uuid_v7", CorrelationId::generate);

    // Two threads at once, each with its own clone of one layer's service (as a server's
    // workers have): CPU time of both per call. Whatever every call shares shows up here.
    let shared = CorrelationLayer::new().layer(Answer(StatusCode::OK));
    cpu_two_threads(&mut g, "incoming_id_as_served_2_threads", shared, || {
        served(Some(INCOMING_ID))
    });
    cpu_two_threads(
        &mut g,
        "baseline_with_id_as_served_2_threads",
        Answer(StatusCode::OK),
        || served(Some(INCOMING_ID)),
    );

    let mut propagate = PropagateCorrelationLayer::new().layer(Answer(StatusCode::OK));
    cpu(&mut g, "propagate_outside_a_request", || {
        now(propagate.call(black_box(request(None))))
    });
    let id = CorrelationId::parse(INCOMING_ID.as_bytes()).unwrap();
    cpu(&mut g, "propagate_inside_a_request", || {
        now(palisade::correlation::scope(id.clone(), async {
            propagate.call(black_box(request(None))).await
        }))
    });
    g.finish();
}

fn error_metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("error_metrics");
    let mut plain = Answer(StatusCode::OK);
    cpu(&mut g, "baseline", || {
        now(plain.call(black_box(request(None))))
    });
    let layer = ErrorMetricsLayer::new(HttpStatus::default()).operation("payment_gateway");
    let mut ok = layer.layer(Answer(StatusCode::OK));
    cpu(&mut g, "success_noop_recorder", || {
        now(ok.call(black_box(request(None))))
    });
    // Two threads at once on clones of one service, as in the correlation group.
    let shared = layer.layer(Answer(StatusCode::OK));
    cpu_two_threads(&mut g, "success_noop_recorder_2_threads", shared, || {
        request(None)
    });
    cpu_two_threads(&mut g, "baseline_2_threads", Answer(StatusCode::OK), || {
        request(None)
    });
    let mut failing = layer.layer(Answer(StatusCode::SERVICE_UNAVAILABLE));
    cpu(&mut g, "failure_noop_recorder", || {
        now(failing.call(black_box(request(None))))
    });
    g.finish();
}

criterion_group!(benches, correlation, error_metrics);

/// The pieces the layers are made of, to explain their figures: a clock read, an empty span, a
/// task-local scope, a first extension.
fn building_blocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("building_blocks");
    let id = CorrelationId::parse(INCOMING_ID.as_bytes()).unwrap();
    cpu(&mut g, "request_with_first_extension", || {
        let mut r = request(None);
        r.extensions_mut().insert(id.clone());
        r
    });
    cpu(&mut g, "request_alone", || request(None));
    cpu(&mut g, "disabled_span", || {
        tracing::info_span!("request", correlation_id = id.as_str())
    });
    cpu(&mut g, "task_local_scope_poll", || {
        now(palisade::correlation::scope(id.clone(), async { 1 }))
    });
    g.bench_function("tokio_instant", |b| b.iter(tokio::time::Instant::now));
    g.bench_function("std_instant", |b| b.iter(std::time::Instant::now));
    g.finish();
}
criterion_group!(blocks, building_blocks);

/// A request as hyper's server hands it over: with an extension already in its map.
fn served(id: Option<&'static str>) -> Request<()> {
    let mut req = request(id);
    req.extensions_mut().insert(Served);
    req
}

/// Makes `calls` calls of `f`, keeping each answer from being optimised away.
fn repeat<T>(calls: u64, mut f: impl FnMut() -> T) {
    for _ in 0..calls {
        let _ = black_box(f());
    }
}

/// Makes `calls` calls through the case `name`, for instruction counts.
fn count_instructions(name: &str, calls: u64) {
    let mut plain = Answer(StatusCode::OK);
    let mut correlated = CorrelationLayer::new().layer(Answer(StatusCode::OK));
    let metrics = ErrorMetricsLayer::new(HttpStatus::default()).operation("payment_gateway");
    let mut ok = metrics.layer(Answer(StatusCode::OK));
    let mut failing = metrics.layer(Answer(StatusCode::SERVICE_UNAVAILABLE));
    for (baseline, layered, make) in CORRELATION_CASES {
        if name == baseline {
            return repeat(calls, || now(plain.call(black_box(make()))));
        }
        if name == layered {
            return repeat(calls, || now(correlated.call(black_box(make()))));
        }
    }
    match name {
        "generate_uuid_v7" => repeat(calls, CorrelationId::generate),
        "metrics_success" => repeat(calls, || now(ok.call(black_box(request(None))))),
        "metrics_failure" => repeat(calls, || now(failing.call(black_box(request(None))))),
        other => panic!("unknown case `{other}`"),
    }
}

fn main() {
    palisade_benches::bench_main("OBSERVE", count_instructions, || {
        benches();
        blocks();
    });
}
