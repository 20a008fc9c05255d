use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::sync::LazyLock;

use http::{HeaderName, HeaderValue, Response};
use tracing::instrument::Instrumented;

use super::Scoped;
use crate::redact::SensitiveHeaders;

/// The headers to flag on the response. The default list is shared process-wide, so a call
/// takes no reference count on anything shared by every request (an `Arc` bumped by every
/// request on every core would be one contended cache line).
#[derive(Clone, Debug)]
pub(crate) enum ResponseSensitive {
    Default,
    Custom(SensitiveHeaders),
}

static DEFAULT_SENSITIVE: LazyLock<SensitiveHeaders> = LazyLock::new(SensitiveHeaders::default);

impl ResponseSensitive {
    fn headers(&self) -> &SensitiveHeaders {
        match self {
            ResponseSensitive::Default => &DEFAULT_SENSITIVE,
            ResponseSensitive::Custom(custom) => custom,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`CorrelationService`](super::CorrelationService): runs the inner
    /// future inside the request's span with the ID in the task-local, then echoes the ID.
    ///
    /// Dropping it drops the inner future, the span and the task-local scope; nothing leaks.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Scoped<Instrumented<F>>,
        // The header to echo the ID in; the ID itself is taken back from the task-local
        // scope once the inner future is done (no copy or reference count of its own).
        echo: Option<HeaderName>,
        sensitive: ResponseSensitive,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: Scoped<Instrumented<F>>,
        echo: HeaderName,
        sensitive: ResponseSensitive,
    ) -> Self {
        ResponseFuture {
            inner,
            echo: Some(echo),
            sensitive,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut result = ready!(this.inner.as_mut().poll(cx));
        if let (Ok(response), Some(name), Some(id)) =
            (&mut result, this.echo.take(), this.inner.take_id())
        {
            let headers = response.headers_mut();
            headers.insert(name, HeaderValue::from(id));
            // A response may carry secrets too (`Set-Cookie`); `mark` rules a header out with
            // one bit test, cheaper than even one hashed look-up.
            this.sensitive.headers().mark(headers);
        }
        Poll::Ready(result)
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("echo", &self.echo)
            .finish_non_exhaustive()
    }
}
