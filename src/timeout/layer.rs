use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::deadline::TaskDeadlineOnly;
use super::metrics::TimeoutMetrics;
use super::{InFlight, Timeout};
use crate::error::TimeoutKind;
use crate::policy::{Policy, TimeoutPolicy};

/// Applies a [`Timeout`] to a service: the total timeout of an operation (outside retry) or
/// its per-attempt timeout (inside retry). See the [module docs](super).
#[derive(Clone, Debug)]
pub struct TimeoutLayer<X = TaskDeadlineOnly> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) extract: X,
}

/// What every clone of a timeout service shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) operation: Arc<str>,
    pub(crate) kind: TimeoutKind,
    pub(crate) limit: Duration,
    pub(crate) in_flight: ListIn,
    pub(crate) metrics: TimeoutMetrics,
}

/// Where a layer lists its calls.
#[derive(Clone, Debug)]
pub(crate) enum ListIn {
    Nowhere,
    /// The global registry, under this operation id: futures need no reference count.
    Global(&'static InFlight, u16),
    Registry(InFlight, u16),
    /// Known to the global registry under this id (for the operation's name and metrics
    /// when a call times out) without listing calls: the stack's attempt timeout, whose
    /// call its total timeout lists already.
    NameOnly(u16),
}

impl ListIn {
    fn new(registry: &InFlight, operation: &Arc<str>, metrics: &TimeoutMetrics) -> Self {
        match registry.operation_id(operation, metrics) {
            None => ListIn::Nowhere,
            Some(id) if registry.is_global() => ListIn::Global(InFlight::global(), id),
            Some(id) => ListIn::Registry(registry.clone(), id),
        }
    }
}

impl TimeoutLayer {
    /// A timeout of `kind` ([`TimeoutKind::Total`] or [`TimeoutKind::Attempt`]) and `limit`
    /// for `operation`, listed in [`InFlight::global`].
    pub fn new(operation: impl Into<Arc<str>>, kind: TimeoutKind, limit: Duration) -> Self {
        let operation = operation.into();
        let metrics = TimeoutMetrics::new(&operation);
        let in_flight = ListIn::new(InFlight::global(), &operation, &metrics);
        TimeoutLayer {
            shared: Arc::new(Shared {
                operation,
                kind,
                limit,
                in_flight,
                metrics,
            }),
            extract: TaskDeadlineOnly,
        }
    }

    /// The total timeout of `operation`: `policy.total`, around every attempt and backoff.
    pub fn total(operation: impl Into<Arc<str>>, policy: &TimeoutPolicy) -> Self {
        TimeoutLayer::new(operation, TimeoutKind::Total, policy.total)
    }

    /// The per-attempt timeout of `operation`: `policy.attempt`, inside retry.
    pub fn attempt(operation: impl Into<Arc<str>>, policy: &TimeoutPolicy) -> Self {
        TimeoutLayer::new(operation, TimeoutKind::Attempt, policy.attempt)
    }

    /// The total timeout of a resolved operation policy.
    pub fn total_from(policy: &Policy) -> Self {
        TimeoutLayer::total(policy.name_arc().clone(), &policy.timeout)
    }

    /// The per-attempt timeout of a resolved operation policy.
    pub fn attempt_from(policy: &Policy) -> Self {
        TimeoutLayer::attempt(policy.name_arc().clone(), &policy.timeout)
    }
}

impl<X> TimeoutLayer<X> {
    /// Lists this layer's calls in `in_flight` instead of the global registry.
    #[must_use]
    pub fn with_in_flight(self, in_flight: &InFlight) -> Self {
        let mut shared = self.shared_parts();
        shared.in_flight = ListIn::new(in_flight, &shared.operation, &shared.metrics);
        TimeoutLayer {
            shared: Arc::new(shared),
            extract: self.extract,
        }
    }

    /// Lists this layer's calls nowhere (saves a compare-and-swap per call).
    #[must_use]
    pub fn without_in_flight(self) -> Self {
        let mut shared = self.shared_parts();
        shared.in_flight = ListIn::Nowhere;
        TimeoutLayer {
            shared: Arc::new(shared),
            extract: self.extract,
        }
    }

    /// Lists no call, but keeps the operation's entry in the global registry for the name
    /// and metrics of a timeout, so a call costs no compare-and-swap and no reference count.
    /// For the stack's attempt timeout: its total timeout lists the whole call (attempts and
    /// backoffs) once. Unchanged if the layer lists elsewhere or nowhere.
    #[must_use]
    pub(crate) fn unlisted(self) -> Self {
        let ListIn::Global(_, id) = self.shared.in_flight else {
            return self;
        };
        let mut shared = self.shared_parts();
        shared.in_flight = ListIn::NameOnly(id);
        TimeoutLayer {
            shared: Arc::new(shared),
            extract: self.extract,
        }
    }

    /// Also bounds each call by the deadline its request carries, read by `extract`.
    pub fn with_request_deadline<Y>(self, extract: Y) -> TimeoutLayer<Y> {
        TimeoutLayer {
            shared: self.shared,
            extract,
        }
    }

    /// Also bounds each `http::Request` by its `grpc-timeout` header (or a
    /// [`Deadline`](super::Deadline) in its extensions).
    #[cfg(feature = "http")]
    pub fn with_grpc_timeout(self) -> TimeoutLayer<super::GrpcTimeoutHeader> {
        self.with_request_deadline(super::GrpcTimeoutHeader)
    }

    /// The operation named in this layer's errors.
    pub fn operation(&self) -> &str {
        &self.shared.operation
    }

    /// The limit this layer applies.
    pub fn limit(&self) -> Duration {
        self.shared.limit
    }

    /// Whether this is a total or a per-attempt timeout.
    pub fn kind(&self) -> TimeoutKind {
        self.shared.kind
    }

    fn shared_parts(&self) -> Shared {
        Shared {
            operation: self.shared.operation.clone(),
            kind: self.shared.kind,
            limit: self.shared.limit,
            in_flight: self.shared.in_flight.clone(),
            metrics: self.shared.metrics.clone(),
        }
    }
}

impl<S, X: Clone> Layer<S> for TimeoutLayer<X> {
    type Service = Timeout<S, X>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            shared: self.shared.clone(),
            extract: self.extract.clone(),
        }
    }
}
