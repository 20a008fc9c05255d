use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use metrics::SharedString;
use tokio::time::Instant;

use super::layer::Shared;
use super::names;
use crate::classify::{Classify, Outcome};

pin_project_lite::pin_project! {
    /// The response future of [`ErrorMetrics`](super::ErrorMetrics): records the outcome when
    /// the inner future completes, or `outcome="cancelled"` if it is dropped first.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        pending: Option<Pending<C>>,
    }

    impl<F, C> PinnedDrop for ResponseFuture<F, C> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                metrics::counter!(
                    names::REQUESTS_TOTAL,
                    "operation" => pending.operation, "outcome" => "cancelled"
                )
                .increment(1);
            }
        }
    }
}

struct Pending<C> {
    shared: Arc<Shared<C>>,
    operation: SharedString,
    start: Instant,
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, shared: Arc<Shared<C>>, operation: SharedString) -> Self {
        ResponseFuture {
            inner,
            pending: Some(Pending {
                shared,
                operation,
                start: Instant::now(),
            }),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(pending) = this.pending.take() {
            let outcome = pending.shared.classifier.outcome(result.as_ref());
            pending.record(&outcome);
        }
        Poll::Ready(result)
    }
}

impl<C> Pending<C> {
    fn record(self, outcome: &Outcome) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let label = match outcome {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Ignored => "ignored",
        };
        metrics::histogram!(names::REQUEST_DURATION_SECONDS, "operation" => self.operation.clone())
            .record(elapsed);
        if let Outcome::Failure(class) = outcome {
            let code = if self.shared.codes.admit(&class.code) {
                SharedString::from(class.code.as_str().to_owned())
            } else {
                SharedString::const_str(names::OTHER)
            };
            metrics::counter!(
                names::ERRORS_TOTAL,
                "operation" => self.operation.clone(),
                "category" => class.category.as_str(),
                "severity" => class.severity.as_str(),
                "transience" => class.transience.as_str(),
                "code" => code,
            )
            .increment(1);
        }
        metrics::counter!(names::REQUESTS_TOTAL, "operation" => self.operation, "outcome" => label)
            .increment(1);
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("operation", &self.pending.as_ref().map(|p| &p.operation))
            .finish_non_exhaustive()
    }
}
