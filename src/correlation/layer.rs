use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use super::{CorrelationService, X_REQUEST_ID};
use crate::redact::SensitiveHeaders;

/// Server-side correlation: reads, validates or generates the request's ID, and echoes it.
///
/// See the [module docs](super) for what it does with the ID.
#[derive(Clone, Debug)]
pub struct CorrelationLayer {
    pub(crate) config: Arc<CorrelationConfig>,
}

#[derive(Clone, Debug)]
pub(crate) struct CorrelationConfig {
    /// Where to look for an incoming ID, in order. The first is also the response header and
    /// the header the handler finds the (validated) ID in.
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) use_traceparent: bool,
    pub(crate) sensitive: SensitiveHeaders,
    /// Whether `sensitive` is still [`SensitiveHeaders::default`]: responses then use a
    /// process-wide copy, so a call takes no reference on the configuration.
    pub(crate) default_sensitive: bool,
    pub(crate) log_headers: bool,
    #[cfg(feature = "opentelemetry")]
    pub(crate) join_trace: bool,
}

impl Default for CorrelationLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CorrelationLayer {
    /// Reads `x-request-id`, then the trace ID of a W3C `traceparent`; echoes `x-request-id`.
    pub fn new() -> Self {
        CorrelationLayer {
            config: Arc::new(CorrelationConfig {
                headers: vec![X_REQUEST_ID],
                use_traceparent: true,
                sensitive: SensitiveHeaders::default(),
                default_sensitive: true,
                log_headers: false,
                #[cfg(feature = "opentelemetry")]
                join_trace: true,
            }),
        }
    }

    /// Also accepts an incoming ID from `header` (e.g. `x-correlation-id`), after the headers
    /// already listed.
    pub fn accept_header(mut self, header: HeaderName) -> Self {
        let config = Arc::make_mut(&mut self.config);
        if !config.headers.contains(&header) {
            config.headers.push(header);
        }
        self
    }

    /// Uses `header` instead of `x-request-id` as the main header: read first, set on the
    /// request for the handler, and echoed on the response.
    pub fn header(mut self, header: HeaderName) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.headers.retain(|h| *h != header);
        config.headers.insert(0, header);
        self
    }

    /// Reads an incoming ID from exactly these headers, in this order; the first is the main
    /// header (set on the request for the handler, and echoed). Unlike
    /// [`header`](Self::header) and [`accept_header`](Self::accept_header), this drops
    /// `x-request-id` unless it is listed, for a deployment that must not trust it. Repeats
    /// are read once; an empty list leaves the headers as they were.
    pub fn headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut list: Vec<HeaderName> = Vec::new();
        for header in headers {
            if !list.contains(&header) {
                list.push(header);
            }
        }
        if !list.is_empty() {
            Arc::make_mut(&mut self.config).headers = list;
        }
        self
    }

    /// Whether to take the trace ID of a `traceparent` header as the ID when no ID header is
    /// present (default `true`), so logs of a traced request share the trace's ID.
    pub fn use_traceparent(mut self, yes: bool) -> Self {
        Arc::make_mut(&mut self.config).use_traceparent = yes;
        self
    }

    /// The headers whose values are flagged sensitive on every request and response (so
    /// their `Debug` output hides them) and redacted when logged. Default:
    /// [`SensitiveHeaders::default`].
    pub fn sensitive_headers(mut self, sensitive: SensitiveHeaders) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.sensitive = sensitive;
        config.default_sensitive = false;
        self
    }

    /// Whether to log each request's headers, sensitive ones redacted, in a DEBUG event inside
    /// the request span (default `false`).
    pub fn log_headers(mut self, yes: bool) -> Self {
        Arc::make_mut(&mut self.config).log_headers = yes;
        self
    }

    /// Whether the request span joins the trace of an incoming `traceparent` as a child
    /// (default `true`). Feature `opentelemetry`.
    #[cfg(feature = "opentelemetry")]
    pub fn join_trace(mut self, yes: bool) -> Self {
        Arc::make_mut(&mut self.config).join_trace = yes;
        self
    }

    /// The header the ID is echoed in.
    pub fn response_header(&self) -> &HeaderName {
        &self.config.headers[0]
    }
}

impl<S> Layer<S> for CorrelationLayer {
    type Service = CorrelationService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CorrelationService {
            inner,
            config: self.config.clone(),
        }
    }
}
