use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request, Response};
use tower_service::Service;
use tracing::Instrument;

use super::future::ResponseSensitive;
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
    /// The main header: already on the request as it should be.
    MainHeader,
    Header,
    Traceparent,
    Generated,
    Replaced,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::MainHeader | Source::Header => "header",
            Source::Traceparent => "traceparent",
            Source::Generated => "generated",
            Source::Replaced => "replaced",
        }
    }
}

/// What [`CorrelationConfig::extract`] found on a request.
struct Extracted {
    id: CorrelationId,
    source: Source,
    /// Whether an ID header was rejected.
    rejected: bool,
    /// Whether the request may carry a sensitive header, so it must be marked. The one pass
    /// over the names tells for free; `false` only when that pass saw none.
    sensitive: bool,
}

impl CorrelationConfig {
    /// The request's ID and where it came from, and whether an ID header was rejected.
    fn extract(&self, headers: &HeaderMap) -> Extracted {
        if let [main] = self.headers.as_slice()
            && headers.keys_len() <= SCAN_AT_MOST
        {
            return self.extract_by_scan(main, headers);
        }
        let mut rejected = false;
        let found = |id, source, rejected| Extracted {
            id,
            source,
            rejected,
            sensitive: true,
        };
        for (i, name) in self.headers.iter().enumerate() {
            if let Some(value) = headers.get(name) {
                match CorrelationId::from_header(value) {
                    Some(id) if i == 0 => return found(id, Source::MainHeader, rejected),
                    Some(id) => return found(id, Source::Header, rejected),
                    None => rejected = true,
                }
            }
        }
        if self.use_traceparent
            && let Some(id) = headers
                .get(TRACEPARENT)
                .and_then(CorrelationId::from_traceparent)
        {
            return found(id, Source::Traceparent, rejected);
        }
        let source = if rejected {
            Source::Replaced
        } else {
            Source::Generated
        };
        found(CorrelationId::generate(), source, rejected)
    }

    /// [`extract`](Self::extract) for one ID header, in one pass over the request's header
    /// names: for a few headers, comparing names is cheaper than hashing `main` and
    /// `traceparent` for two look-ups. Same result as the look-ups: the first value of each.
    /// The same pass tells whether any header is sensitive, so that a request with none is
    /// not walked again by [`SensitiveHeaders::mark`](crate::redact::SensitiveHeaders::mark).
    fn extract_by_scan(&self, main: &HeaderName, headers: &HeaderMap) -> Extracted {
        let (mut found, mut rejected, mut traceparent, mut sensitive) = (None, false, None, false);
        // Names compared as text: `HeaderName`'s own comparison with a constant builds and
        // drops a temporary name per header.
        let main = main.as_str();
        for (name, value) in headers {
            let name = name.as_str();
            sensitive |= self.sensitive.may_contain(name);
            if name == main {
                if found.is_some() || rejected {
                    continue; // a later value of the same header
                }
                match CorrelationId::from_header(value) {
                    Some(id) => found = Some(id),
                    None => rejected = true,
                }
            } else if self.use_traceparent && traceparent.is_none() && name == TRACEPARENT_STR {
                traceparent = Some(value);
            }
        }
        let (id, source) = if let Some(id) = found {
            (id, Source::MainHeader)
        } else if let Some(id) = traceparent.and_then(CorrelationId::from_traceparent) {
            (id, Source::Traceparent)
        } else if rejected {
            (CorrelationId::generate(), Source::Replaced)
        } else {
            (CorrelationId::generate(), Source::Generated)
        };
        Extracted {
            id,
            source,
            rejected,
            sensitive,
        }
    }
}

/// Up to this many distinct header names, [`CorrelationConfig::extract_by_scan`] beats hashed
/// look-ups; beyond, its cost grows with the request and the look-ups' does not.
const SCAN_AT_MOST: usize = 16;

/// [`TRACEPARENT`] as text (a test checks they agree).
const TRACEPARENT_STR: &str = "traceparent";

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
        let config = &self.config;
        let Extracted {
            id,
            source,
            rejected,
            mut sensitive,
        } = config.extract(req.headers());
        let header = &config.headers[0];
        let span = tracing::info_span!(
            "request",
            correlation_id = id.as_str(),
            method = %req.method(),
        );
        if rejected {
            // Invalid ID headers are dropped, so nothing downstream (a handler, a log of the
            // headers) sees the attacker-controlled value; the value itself is never logged.
            for name in &config.headers[1..] {
                if req
                    .headers()
                    .get(name)
                    .is_some_and(|v| !CorrelationId::is_valid(v.as_bytes()))
                {
                    req.headers_mut().remove(name);
                }
            }
            span.in_scope(|| {
                tracing::debug!(
                    source = source.as_str(),
                    "incoming correlation id is invalid; not used",
                );
            });
        }
        #[cfg(feature = "opentelemetry")]
        if config.join_trace {
            super::otel::join_incoming_trace(&span, req.headers());
        }
        // Handlers that read the header see only the validated ID.
        if source != Source::MainHeader {
            req.headers_mut().insert(header.clone(), id.header_value());
            sensitive |= config.sensitive.contains(header);
        }
        if sensitive {
            config.sensitive.mark(req.headers_mut());
        }
        if config.log_headers {
            span.in_scope(|| {
                tracing::debug!(headers = %config.sensitive.redact(req.headers()), "request headers");
            });
        }
        req.extensions_mut().insert(id.clone());
        let echo = header.clone();
        let sensitive = if config.default_sensitive {
            ResponseSensitive::Default
        } else {
            ResponseSensitive::Custom(config.sensitive.clone())
        };
        let inner = super::scope(id, self.inner.call(req).instrument(span));
        ResponseFuture::new(inner, echo, sensitive)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_traceparent_text_is_the_header_name() {
        assert_eq!(super::TRACEPARENT_STR, super::TRACEPARENT.as_str());
    }
}
