//! What the observability layers cost per call, over a service that answers at once.
//!
//! No tracing subscriber and no metrics recorder are installed, as in a service that runs with
//! them off: what is left is the layers' own work (validating and sharing the ID, the task-local,
//! the span callsite check, the clock read, building metric keys for the no-op recorder).
//! Each layered figure includes building the request and polling the future; subtract the
//! `baseline` figure for the layer's own cost.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use palisade::classify::HttpStatus;
use palisade::correlation::{
    CorrelationId, CorrelationLayer, PropagateCorrelationLayer, X_REQUEST_ID,
};
use palisade::metrics::ErrorMetricsLayer;
use tower::{Layer, Service};

/// Polls a future that is ready at once, without a runtime.
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

/// Stands for the extension hyper adds to each request it parses.
#[derive(Clone)]
struct Served;

fn correlation(c: &mut Criterion) {
    let mut g = c.benchmark_group("correlation");
    let mut plain = Answer(StatusCode::OK);
    g.bench_function("baseline_with_id_header", |b| {
        b.iter(|| now(plain.call(black_box(request(Some("pay-2026-000042"))))))
    });
    let mut layered = CorrelationLayer::new().layer(Answer(StatusCode::OK));
    g.bench_function("incoming_id", |b| {
        b.iter(|| now(layered.call(black_box(request(Some("pay-2026-000042"))))))
    });
    // hyper's server puts an extension on every request it parses, so in a real server the
    // extension map exists before the layer adds the ID to it.
    let served = |id| {
        let mut req = request(id);
        req.extensions_mut().insert(Served);
        req
    };
    g.bench_function("baseline_with_id_as_served", |b| {
        b.iter(|| now(plain.call(black_box(served(Some("pay-2026-000042"))))))
    });
    g.bench_function("incoming_id_as_served", |b| {
        b.iter(|| now(layered.call(black_box(served(Some("pay-2026-000042"))))))
    });
    g.bench_function("baseline_without_id", |b| {
        b.iter(|| now(plain.call(black_box(request(None)))))
    });
    g.bench_function("generated_id", |b| {
        b.iter(|| now(layered.call(black_box(request(None)))))
    });
    g.bench_function("hostile_id_replaced", |b| {
        b.iter(|| now(layered.call(black_box(request(Some("a b c"))))))
    });
    g.bench_function("generate_uuid_v7", |b| b.iter(CorrelationId::generate));

    let mut propagate = PropagateCorrelationLayer::new().layer(Answer(StatusCode::OK));
    g.bench_function("propagate_outside_a_request", |b| {
        b.iter(|| now(propagate.call(black_box(request(None)))))
    });
    let id = CorrelationId::parse(b"pay-2026-000042").unwrap();
    g.bench_function("propagate_inside_a_request", |b| {
        b.iter(|| {
            now(palisade::correlation::scope(id.clone(), async {
                propagate.call(black_box(request(None))).await
            }))
        })
    });
    g.finish();
}

fn error_metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("error_metrics");
    let mut plain = Answer(StatusCode::OK);
    g.bench_function("baseline", |b| {
        b.iter(|| now(plain.call(black_box(request(None)))))
    });
    let layer = ErrorMetricsLayer::new(HttpStatus::default()).operation("payment_gateway");
    let mut ok = layer.layer(Answer(StatusCode::OK));
    g.bench_function("success_noop_recorder", |b| {
        b.iter(|| now(ok.call(black_box(request(None)))))
    });
    let mut failing = layer.layer(Answer(StatusCode::SERVICE_UNAVAILABLE));
    g.bench_function("failure_noop_recorder", |b| {
        b.iter(|| now(failing.call(black_box(request(None)))))
    });
    g.finish();
}

criterion_group!(benches, correlation, error_metrics);
criterion_main!(benches, blocks);

/// The pieces the layers are made of, to explain their figures: a clock read, an empty span, a
/// task-local scope, a first extension.
fn building_blocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("building_blocks");
    let id = CorrelationId::parse(b"pay-2026-000042").unwrap();
    g.bench_function("request_with_first_extension", |b| {
        b.iter(|| {
            let mut r = request(None);
            r.extensions_mut().insert(id.clone());
            r
        })
    });
    g.bench_function("request_alone", |b| b.iter(|| request(None)));
    g.bench_function("disabled_span", |b| {
        b.iter(|| tracing::info_span!("request", correlation_id = id.as_str()))
    });
    g.bench_function("task_local_scope_poll", |b| {
        b.iter(|| now(palisade::correlation::scope(id.clone(), async { 1 })))
    });
    g.bench_function("tokio_instant", |b| b.iter(tokio::time::Instant::now));
    g.bench_function("std_instant", |b| b.iter(std::time::Instant::now));
    g.finish();
}
criterion_group!(blocks, building_blocks);
