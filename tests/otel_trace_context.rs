//! W3C trace context with OpenTelemetry: the request span joins the caller's trace, and
//! outgoing calls carry the request span as their parent. Spans are read back from the SDK's
//! in-memory exporter.
#![cfg(feature = "opentelemetry")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Request, Response};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use palisade::correlation::{CorrelationLayer, PropagateCorrelationLayer, TRACEPARENT};
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

struct Otel {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

fn otel() -> Otel {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("palisade-test");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    Otel {
        exporter,
        provider,
        _guard: tracing::subscriber::set_default(subscriber),
    }
}

impl Otel {
    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }
}

/// A server whose handler calls a downstream service through `PropagateCorrelationLayer`; the
/// downstream records the headers it received.
async fn call_through(incoming: HeaderMap) -> (Response<()>, HeaderMap) {
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let seen_by_downstream = seen.clone();
    let downstream = ServiceBuilder::new()
        .layer(PropagateCorrelationLayer::new())
        .service_fn(move |req: Request<()>| {
            *seen_by_downstream.lock().unwrap() = req.headers().clone();
            async { Ok::<_, Infallible>(Response::new(())) }
        });
    let server = ServiceBuilder::new()
        .layer(CorrelationLayer::new())
        .service_fn(move |_req: Request<()>| {
            let downstream = downstream.clone();
            async move { downstream.oneshot(Request::new(())).await }
        });
    let mut req = Request::new(());
    *req.headers_mut() = incoming;
    let res = server.oneshot(req).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    (res, seen)
}

#[tokio::test]
async fn the_request_span_joins_the_incoming_trace_and_parents_outgoing_calls() {
    let otel = otel();
    let mut incoming = HeaderMap::new();
    incoming.insert(
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    incoming.insert("tracestate", "ledger=7".parse().unwrap());
    let (res, downstream) = call_through(incoming).await;

    let spans = otel.spans();
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("request span exported");
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    assert_eq!(request.span_context.trace_id(), trace_id);
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    assert!(request.span_context.is_sampled());

    // The outgoing call's parent is the request span, in the same trace.
    let expected = format!(
        "00-{}-{}-01",
        request.span_context.trace_id(),
        request.span_context.span_id()
    );
    assert_eq!(downstream[TRACEPARENT], expected.as_str());
    assert_eq!(downstream["tracestate"], "ledger=7");
    // The correlation ID is the trace ID, both echoed and propagated.
    assert_eq!(
        res.headers()["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(
        downstream["x-request-id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

#[tokio::test]
async fn without_an_incoming_trace_a_new_one_starts_and_is_propagated() {
    let otel = otel();
    let (_res, downstream) = call_through(HeaderMap::new()).await;
    let spans = otel.spans();
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(request.parent_span_id, SpanId::INVALID);
    let expected = format!(
        "00-{}-{}-01",
        request.span_context.trace_id(),
        request.span_context.span_id()
    );
    assert_eq!(downstream[TRACEPARENT], expected.as_str());
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored() {
    let otel = otel();
    let mut incoming = HeaderMap::new();
    incoming.insert(TRACEPARENT, "00-not-a-trace-01".parse().unwrap());
    let (res, downstream) = call_through(incoming).await;
    let spans = otel.spans();
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(request.parent_span_id, SpanId::INVALID);
    assert_eq!(res.headers()["x-request-id"].len(), 36);
    assert_ne!(downstream[TRACEPARENT], "00-not-a-trace-01");
}
