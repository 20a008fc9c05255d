//! Client side: put the current request's ID on outgoing requests.

use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName};
use tower_layer::Layer;
use tower_service::Service;

use super::{CorrelationId, X_REQUEST_ID};

/// Adds the [current](CorrelationId::current) correlation ID to outgoing requests that do not
/// carry one already.
///
/// Works for `http::Request<B>` (hyper, tonic `Channel`) and, with feature `reqwest`, for
/// `reqwest::Request` (wrap a `reqwest::Client`, which is a `Service<reqwest::Request>`). With
/// feature `opentelemetry` it also injects a W3C `traceparent` for the current span.
///
/// Costs one task-local read per call, and a reference-count bump when there is an ID. The
/// response future is the inner service's own.
#[derive(Clone, Debug)]
pub struct PropagateCorrelationLayer {
    header: HeaderName,
    #[cfg(feature = "opentelemetry")]
    inject_trace: bool,
}

impl Default for PropagateCorrelationLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl PropagateCorrelationLayer {
    /// Propagates the ID in `x-request-id`.
    pub fn new() -> Self {
        PropagateCorrelationLayer {
            header: X_REQUEST_ID,
            #[cfg(feature = "opentelemetry")]
            inject_trace: true,
        }
    }

    /// Propagates the ID in `header` instead.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Whether to inject the current span's W3C trace context (default `true`). Feature
    /// `opentelemetry`.
    #[cfg(feature = "opentelemetry")]
    pub fn inject_trace_context(mut self, yes: bool) -> Self {
        self.inject_trace = yes;
        self
    }

    fn apply(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(&self.header)
            && let Some(id) = CorrelationId::current()
        {
            headers.insert(self.header.clone(), id.into());
        }
        #[cfg(feature = "opentelemetry")]
        if self.inject_trace {
            super::otel::inject_current_trace(headers);
        }
    }
}

impl<S> Layer<S> for PropagateCorrelationLayer {
    type Service = PropagateCorrelation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateCorrelation {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service built by [`PropagateCorrelationLayer`].
#[derive(Clone, Debug)]
pub struct PropagateCorrelation<S> {
    inner: S,
    layer: PropagateCorrelationLayer,
}

impl<S> PropagateCorrelation<S> {
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

impl<S, B> Service<http::Request<B>> for PropagateCorrelation<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        self.layer.apply(req.headers_mut());
        self.inner.call(req)
    }
}

#[cfg(feature = "reqwest")]
impl<S> Service<reqwest::Request> for PropagateCorrelation<S>
where
    S: Service<reqwest::Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: reqwest::Request) -> Self::Future {
        self.layer.apply(req.headers_mut());
        self.inner.call(req)
    }
}

/// Adds the current correlation ID to a `reqwest` request being built, for code that calls
/// `reqwest::Client` directly rather than through a `Service` stack.
///
/// ```no_run
/// # async fn f() -> Result<(), reqwest::Error> {
/// use palisade::correlation::WithCorrelation;
/// let client = reqwest::Client::new();
/// client.get("http://ledger.internal/v1/balance").with_correlation().send().await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "reqwest")]
pub trait WithCorrelation {
    /// The builder, with `x-request-id` set to the current ID if there is one.
    fn with_correlation(self) -> Self;
}

#[cfg(feature = "reqwest")]
impl WithCorrelation for reqwest::RequestBuilder {
    fn with_correlation(self) -> Self {
        match CorrelationId::current() {
            Some(id) => self.header(X_REQUEST_ID, http::HeaderValue::from(id)),
            None => self,
        }
    }
}
