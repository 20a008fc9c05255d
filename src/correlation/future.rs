use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::sync::Arc;

use http::{HeaderValue, Response};
use tokio::task::futures::TaskLocalFuture;
use tracing::instrument::Instrumented;

use super::CorrelationId;
use super::layer::CorrelationConfig;

pin_project_lite::pin_project! {
    /// The response future of [`CorrelationService`](super::CorrelationService): runs the inner
    /// future inside the request's span with the ID in the task-local, then echoes the ID.
    ///
    /// Dropping it drops the inner future, the span and the task-local scope; nothing leaks.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<CorrelationId, Instrumented<F>>,
        config: Arc<CorrelationConfig>,
        echo: Option<HeaderValue>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: TaskLocalFuture<CorrelationId, Instrumented<F>>,
        config: Arc<CorrelationConfig>,
        echo: HeaderValue,
    ) -> Self {
        ResponseFuture {
            inner,
            config,
            echo: Some(echo),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(value)) = (&mut result, this.echo.take()) {
            let headers = response.headers_mut();
            headers.insert(this.config.headers[0].clone(), value);
            // A response may carry secrets too (`Set-Cookie`); `mark` rules a header out with
            // one bit test, cheaper than even one hashed look-up.
            this.config.sensitive.mark(headers);
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
