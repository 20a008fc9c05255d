use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use metrics::{Metadata, SharedString};
use tokio::time::Instant;

use super::layer::Shared;
use super::{Operation, names};
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
                let key = &pending.operation.keys().cancelled;
                metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
            }
        }
    }
}

struct Pending<C> {
    shared: Arc<Shared<C>>,
    operation: Operation,
    start: Instant,
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, shared: Arc<Shared<C>>, operation: Operation) -> Self {
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

/// Where the metrics come from, for recorders that filter by target or level.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl<C> Pending<C> {
    fn record(self, outcome: &Outcome) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let keys = self.operation.keys();
        let requests = match outcome {
            Outcome::Success => &keys.success,
            Outcome::Failure(_) => &keys.failure,
            Outcome::Ignored => &keys.ignored,
        };
        metrics::with_recorder(|r| {
            r.register_histogram(&keys.duration, &METADATA)
                .record(elapsed);
            r.register_counter(requests, &METADATA).increment(1);
        });
        if let Outcome::Failure(class) = outcome {
            let code = if self.shared.codes.admit(&class.code) {
                SharedString::from(class.code.as_str().to_owned())
            } else {
                SharedString::const_str(names::OTHER)
            };
            metrics::counter!(
                names::ERRORS_TOTAL,
                "operation" => keys.name.clone(),
                "category" => class.category.as_str(),
                "severity" => class.severity.as_str(),
                "transience" => class.transience.as_str(),
                "code" => code,
            )
            .increment(1);
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field(
                "operation",
                &self.pending.as_ref().map(|p| p.operation.name()),
            )
            .finish_non_exhaustive()
    }
}
