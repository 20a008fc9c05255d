use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use metrics::{Counter, Histogram, Metadata, SharedString};
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
                match &pending.source {
                    Source::Layer { operation, .. } => {
                        let key = &operation.keys().cancelled;
                        metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
                    }
                    Source::Bound(bound) => bound.count(None),
                }
            }
        }
    }
}

struct Pending<C> {
    source: Source<C>,
    start: Instant,
}

/// What a call records with.
enum Source<C> {
    /// [`ErrorMetrics`](super::ErrorMetrics): the operation picked for this request, its
    /// series looked up in the recorder when the call ends.
    Layer {
        shared: Arc<Shared<C>>,
        operation: Operation,
    },
    /// One operation's handles, registered once (the stack's: one per operation and policy
    /// table version).
    Bound(Arc<Bound<C>>),
}

/// The error metrics of one operation, with the handle of each of its `requests_total` and
/// duration series registered with the recorder once, when first used (so install the
/// recorder before the first call, as exporters are; a series is still created only when
/// something is recorded in it). A call then holds one reference count and looks nothing up
/// (a failure's `errors_total` series, whose `code` varies, is still looked up).
pub(crate) struct Bound<C> {
    shared: Arc<Shared<C>>,
    operation: Operation,
    success: OnceLock<Counter>,
    failure: OnceLock<Counter>,
    ignored: OnceLock<Counter>,
    cancelled: OnceLock<Counter>,
    duration: OnceLock<Histogram>,
}

impl<C> Bound<C> {
    pub(crate) fn new(layer: &super::ErrorMetricsLayer<C>, operation: Operation) -> Self {
        Bound {
            shared: layer.shared.clone(),
            operation,
            success: OnceLock::new(),
            failure: OnceLock::new(),
            ignored: OnceLock::new(),
            cancelled: OnceLock::new(),
            duration: OnceLock::new(),
        }
    }

    fn count(&self, outcome: Option<&Outcome>) {
        let keys = self.operation.keys();
        let (handle, key) = match outcome {
            Some(Outcome::Success) => (&self.success, &keys.success),
            Some(Outcome::Failure(_)) => (&self.failure, &keys.failure),
            Some(Outcome::Ignored) => (&self.ignored, &keys.ignored),
            None => (&self.cancelled, &keys.cancelled),
        };
        handle
            .get_or_init(|| metrics::with_recorder(|r| r.register_counter(key, &METADATA)))
            .increment(1);
    }

    fn record_duration(&self, seconds: f64) {
        let key = &self.operation.keys().duration;
        self.duration
            .get_or_init(|| metrics::with_recorder(|r| r.register_histogram(key, &METADATA)))
            .record(seconds);
    }
}

impl<C> Source<C> {
    fn shared(&self) -> &Shared<C> {
        match self {
            Source::Layer { shared, .. } => shared,
            Source::Bound(bound) => &bound.shared,
        }
    }

    fn operation(&self) -> &Operation {
        match self {
            Source::Layer { operation, .. } => operation,
            Source::Bound(bound) => &bound.operation,
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, shared: Arc<Shared<C>>, operation: Operation) -> Self {
        ResponseFuture {
            inner,
            pending: Some(Pending {
                source: Source::Layer { shared, operation },
                start: Instant::now(),
            }),
        }
    }

    /// Records with one operation's registered handles, for a call that started at `start`.
    pub(crate) fn bound(inner: F, bound: Arc<Bound<C>>, start: Instant) -> Self {
        ResponseFuture {
            inner,
            pending: Some(Pending {
                source: Source::Bound(bound),
                start,
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
            let outcome = pending.source.shared().classifier.outcome(result.as_ref());
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
        // The stack's shared read when inside it (see `crate::clock`), else the clock.
        let elapsed = crate::clock::now()
            .saturating_duration_since(self.start)
            .as_secs_f64();
        match &self.source {
            Source::Layer { operation, .. } => {
                let keys = operation.keys();
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
            }
            Source::Bound(bound) => {
                bound.record_duration(elapsed);
                bound.count(Some(outcome));
            }
        }
        if let Outcome::Failure(class) = outcome {
            let keys = self.source.operation().keys();
            let code = if self.source.shared().codes.admit(&class.code) {
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
                &self.pending.as_ref().map(|p| p.source.operation().name()),
            )
            .finish_non_exhaustive()
    }
}
