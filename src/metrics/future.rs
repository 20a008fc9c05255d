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
                let key = &pending.operation.keys().cancelled;
                metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
            }
        }
    }
}

/// The operation picked for this request, its series looked up in the recorder when the
/// call ends.
struct Pending<C> {
    shared: Arc<Shared<C>>,
    operation: Operation,
    start: Instant,
}

/// The error metrics of one operation, with the handle of each of its `requests_total` and
/// duration series registered with the recorder once, when first used (so install the
/// recorder before the first call, as exporters are; a series is still created only when
/// something is recorded in it). A call then looks nothing up (a failure's `errors_total`
/// series, whose `code` varies, is still looked up); the stack's future reaches these through
/// its operation's parts.
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
        let elapsed = seconds_since(self.start);
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
        count_error(&self.shared, &self.operation, outcome);
    }
}

impl<C> Bound<C> {
    /// Records a call that started at `start` and ended now with `outcome`.
    pub(crate) fn record(&self, start: Instant, outcome: &Outcome) {
        self.record_duration(seconds_since(start));
        self.count(Some(outcome));
        count_error(&self.shared, &self.operation, outcome);
    }

    /// Records a call dropped before it ended.
    pub(crate) fn cancelled(&self) {
        self.count(None);
    }

    /// The classifier the outcomes are judged by.
    pub(crate) fn classifier(&self) -> &C {
        &self.shared.classifier
    }
}

/// Seconds from `start` to now: the stack's shared read when inside it (see
/// `crate::clock`), else the clock.
#[inline]
fn seconds_since(start: Instant) -> f64 {
    crate::clock::now()
        .saturating_duration_since(start)
        .as_secs_f64()
}

/// Counts a failure in `palisade_errors_total`, its code bounded by the layer's codes limit.
fn count_error<C>(shared: &Shared<C>, operation: &Operation, outcome: &Outcome) {
    if let Outcome::Failure(class) = outcome {
        let keys = operation.keys();
        let code = if shared.codes.admit(&class.code) {
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
