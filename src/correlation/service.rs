use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tower_service::Service;
use tracing::Instrument;

use super::layer::CorrelationConfig;
use super::{CorrelationId, ResponseFuture, TRACEPARENT};

/// The service built by [`CorrelationLayer`](super::CorrelationLayer).
#[derive(Clone, Debug)]
pub struct CorrelationService<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<CorrelationConfig>,
}

impl<S> CorrelationService<S> {
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

/// Where the request's ID came from, for the span and the debug event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Header,
    Traceparent,
    Generated,
    Replaced,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Header => "header",
            Source::Traceparent => "traceparent",
            Source::Generated => "generated",
            Source::Replaced => "replaced",
        }
    }
}

impl CorrelationConfig {
    fn extract(&self, headers: &HeaderMap) -> (CorrelationId, Source) {
        let mut rejected = false;
        for name in &self.headers {
            if let Some(value) = headers.get(name) {
                match CorrelationId::from_header(value) {
                    Some(id) => return (id, Source::Header),
                    None => rejected = true,
                }
            }
        }
        if self.use_traceparent
            && let Some(id) = headers
                .get(TRACEPARENT)
                .and_then(CorrelationId::from_traceparent)
        {
            return (id, Source::Traceparent);
        }
        let source = if rejected {
            Source::Replaced
        } else {
            Source::Generated
        };
        (CorrelationId::generate(), source)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CorrelationService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let (id, source) = self.config.extract(req.headers());
        let header = &self.config.headers[0];
        let span = tracing::info_span!(
            "request",
            correlation_id = id.as_str(),
            method = %req.method(),
        );
        if source == Source::Replaced {
            // The rejected value is not logged: it is attacker-controlled.
            span.in_scope(|| {
                tracing::debug!(
                    header = %header,
                    source = source.as_str(),
                    "incoming correlation id is invalid; replaced by a generated one",
                );
            });
        }
        #[cfg(feature = "opentelemetry")]
        if self.config.join_trace {
            super::otel::join_incoming_trace(&span, req.headers());
        }
        // Handlers that read the header see only the validated ID.
        req.headers_mut()
            .insert(header.clone(), id.header_value().clone());
        req.extensions_mut().insert(id.clone());
        let echo = id.header_value().clone();
        let inner = super::scope(id, self.inner.call(req).instrument(span));
        ResponseFuture::new(inner, header.clone(), echo)
    }
}
