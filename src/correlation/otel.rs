//! W3C trace context for OpenTelemetry (feature `opentelemetry`): the server's request span joins
//! the caller's trace, and outgoing requests carry the current span as their parent.
//!
//! Parsing and formatting are done here against the `traceparent` / `tracestate` headers, so
//! nothing depends on a global propagator having been installed. The spans themselves become
//! OpenTelemetry spans through `tracing-opentelemetry`'s layer, which the application installs.

use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TRACEPARENT;
use super::id::traceparent_parts;

/// The W3C `tracestate` header.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The remote span context in `traceparent` (and `tracestate`), if well formed.
pub fn extract_span_context(headers: &HeaderMap) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = traceparent_parts(headers.get(TRACEPARENT)?.as_bytes())?;
    let trace_id = TraceId::from_hex(std::str::from_utf8(trace_id).ok()?).ok()?;
    let span_id = SpanId::from_hex(std::str::from_utf8(span_id).ok()?).ok()?;
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    let state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        state,
    ))
}

/// An OpenTelemetry context whose parent is the remote span in `headers`, if any.
pub fn extract_context(headers: &HeaderMap) -> Option<Context> {
    extract_span_context(headers).map(|sc| Context::new().with_remote_span_context(sc))
}

/// Sets `traceparent` (and `tracestate`) to `span`'s OpenTelemetry context, unless the request
/// has a `traceparent` already or the span is not recorded by OpenTelemetry.
pub fn inject_span_context(span: &tracing::Span, headers: &mut HeaderMap) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    if !sc.is_valid() {
        return;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT, value);
    }
    let state = sc.trace_state().header();
    if !state.is_empty()
        && let Ok(value) = HeaderValue::from_str(&state)
    {
        headers.insert(TRACESTATE, value);
    }
}

pub(crate) fn join_incoming_trace(span: &tracing::Span, headers: &HeaderMap) {
    if let Some(cx) = extract_context(headers) {
        // Fails only when the span is not recorded by an OpenTelemetry layer: nothing to join.
        let _ = span.set_parent(cx);
    }
}

pub(crate) fn inject_current_trace(headers: &mut HeaderMap) {
    inject_span_context(&tracing::Span::current(), headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_a_sampled_remote_parent() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
        let sc = extract_span_context(&headers).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().get("vendor"), Some("abc"));

        headers.insert(TRACEPARENT, HeaderValue::from_static("00-zz-00-01"));
        assert!(extract_span_context(&headers).is_none());
    }

    #[test]
    fn injects_nothing_without_an_opentelemetry_span() {
        let mut headers = HeaderMap::new();
        inject_span_context(&tracing::Span::none(), &mut headers);
        assert!(headers.is_empty());
    }
}
