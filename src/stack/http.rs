//! Palisade errors as HTTP responses: the stack becomes an infallible service that axum's
//! `Router::layer` and `route_layer` take directly, with no `HandleErrorLayer`.
//!
//! | error | status | `Retry-After` |
//! |---|---|---|
//! | circuit open | 503 (or the overload status) | seconds until the next probe, rounded up |
//! | bulkhead full | 503 (or the overload status) | the bulkhead's wait, rounded up, at least 1 s |
//! | timeout, expired deadline | 504 | |
//! | kill switch (`enabled: false`) | 503 | |
//! | the service's own error | 500 | |
//!
//! A retried call is answered by what its last attempt met. The body is
//! `application/problem+json` (RFC 9457) with the error's `code`, the `operation` and the
//! request's `correlation_id` (from [`CorrelationId::current`](crate::correlation::CorrelationId::current):
//! set when the response is made inside a correlation layer, as the stack does; else null).

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::Classified;
use crate::error::{BulkheadRejection, Error};

/// The media type of problem details.
pub const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// Turns a service's [`Error`]s into problem responses; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ProblemResponseLayer<L> {
    inner: L,
    overload: StatusCode,
}

impl<L> ProblemResponseLayer<L> {
    /// Wraps the services `inner` builds.
    pub fn new(inner: L) -> Self {
        ProblemResponseLayer {
            inner,
            overload: StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The status of an open breaker and a full bulkhead: 503 by default, or e.g. 429.
    #[must_use]
    pub fn overload_status(mut self, status: StatusCode) -> Self {
        self.overload = status;
        self
    }

    /// The wrapped layer.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }
}

impl<S, L: Layer<S>> Layer<S> for ProblemResponseLayer<L> {
    type Service = ProblemResponses<L::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        ProblemResponses {
            inner: self.inner.layer(inner),
            overload: self.overload,
        }
    }
}

/// A service whose [`Error`]s are answered as problem responses: it never fails.
#[derive(Clone, Debug)]
pub struct ProblemResponses<S> {
    inner: S,
    overload: StatusCode,
}

impl<S> ProblemResponses<S> {
    pub(crate) fn new(inner: S, overload: StatusCode) -> Self {
        ProblemResponses { inner, overload }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, B, E> Service<Req> for ProblemResponses<S>
where
    S: Service<Req, Response = Response<B>, Error = Error<E>>,
    B: From<Bytes>,
    E: Display,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ProblemFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The stack is always ready; a wrapped service that is not answers its error in the
        // next call instead of failing readiness.
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ProblemFuture {
            future: self.inner.call(request),
            overload: self.overload,
        }
    }
}

pin_project! {
    /// The response future of [`ProblemResponses`].
    #[derive(Debug)]
    pub struct ProblemFuture<F> {
        #[pin]
        future: F,
        overload: StatusCode,
    }
}

impl<F, B, E> Future for ProblemFuture<F>
where
    F: Future<Output = Result<Response<B>, Error<E>>>,
    B: From<Bytes>,
    E: Display,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.future.poll(cx)) {
            Ok(response) => response,
            Err(error) => problem_response(&error, *this.overload),
        }))
    }
}

/// The status and `Retry-After` a palisade error is answered with.
pub fn status_of<E>(error: &Error<E>, overload: StatusCode) -> (StatusCode, Option<Duration>) {
    match error.last_attempt() {
        Error::CircuitOpen(open) => (overload, Some(open.retry_after)),
        Error::BulkheadFull(full) => {
            let wait = match full.reason {
                BulkheadRejection::WaitTimedOut(wait) => wait,
                BulkheadRejection::QueueFull => Duration::ZERO,
            };
            (overload, Some(wait.max(Duration::from_secs(1))))
        }
        Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, None),
        Error::OperationDisabled(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    }
}

/// The problem response for `error`: status, `Retry-After` and an `application/problem+json`
/// body. `overload` is the status of an open breaker and a full bulkhead.
pub fn problem_response<B: From<Bytes>, E: Display>(
    error: &Error<E>,
    overload: StatusCode,
) -> Response<B> {
    let (status, retry_after) = status_of(error, overload);
    let last = error.last_attempt();
    let (code, operation): (_, Option<&str>) = match last {
        Error::Timeout(e) => (e.classification().code, Some(&e.operation)),
        Error::BulkheadFull(e) => (e.classification().code, Some(&e.bulkhead)),
        Error::CircuitOpen(e) => (e.classification().code, Some(&e.breaker)),
        Error::OperationDisabled(e) => (e.classification().code, Some(&e.operation)),
        _ => ("internal_error".into(), None),
    };
    let mut body = String::with_capacity(256);
    body.push_str("{\"type\":\"about:blank\",\"title\":");
    push_json_string(&mut body, status.canonical_reason().unwrap_or("Error"));
    body.push_str(&format!(",\"status\":{},\"code\":", status.as_u16()));
    push_json_string(&mut body, code.as_str());
    body.push_str(",\"detail\":");
    push_json_string(&mut body, &error.to_string());
    body.push_str(",\"operation\":");
    match operation {
        Some(op) => push_json_string(&mut body, op),
        None => body.push_str("null"),
    }
    if let Some(wait) = retry_after {
        body.push_str(&format!(",\"retry_after_seconds\":{}", seconds(wait)));
    }
    // The request's ID when the response is made inside a correlation layer's scope (the
    // stack puts this layer inside its correlation layer); else null.
    body.push_str(",\"correlation_id\":");
    #[cfg(feature = "correlation")]
    match crate::correlation::CorrelationId::current() {
        Some(id) => push_json_string(&mut body, id.as_str()),
        None => body.push_str("null"),
    }
    #[cfg(not(feature = "correlation"))]
    body.push_str("null");
    body.push('}');
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, PROBLEM_JSON);
    if let Some(wait) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds(wait)));
    }
    response
}

/// Whole seconds, rounded up: a client told to come back in 0 s would come back at once.
fn seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{CircuitOpen, TimeoutError, TimeoutKind};

    #[test]
    fn open_breakers_say_when_to_come_back() {
        let e: Error<std::io::Error> = Error::CircuitOpen(CircuitOpen {
            breaker: "pay\"ments".into(),
            retry_after: Duration::from_millis(2500),
        });
        let r: Response<Bytes> = problem_response(&e, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let body = std::str::from_utf8(r.body()).unwrap();
        assert!(body.contains(r#""code":"circuit_open""#), "{body}");
        assert!(body.contains(r#""operation":"pay\"ments""#), "{body}");
        assert!(body.ends_with(r#""correlation_id":null}"#), "{body}");
    }

    #[test]
    fn timeouts_are_gateway_timeouts_without_retry_after() {
        let e: Error<std::io::Error> = Error::Timeout(TimeoutError {
            kind: TimeoutKind::Total,
            operation: "quote".into(),
            limit: Duration::from_secs(1),
        });
        let r: Response<Bytes> = problem_response(&e, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.status(), 504);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
