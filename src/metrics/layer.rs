use std::sync::Arc;

use metrics::SharedString;
use tower_layer::Layer;

use super::codes::CodeLimit;
use super::{ErrorMetrics, Operation};

/// The default cap on distinct `code` label values per layer.
pub const DEFAULT_MAX_CODES: usize = 128;

/// Counts calls, their duration, and their failures by classification.
///
/// See the [module docs](super) for the metrics and their labels.
#[derive(Clone, Debug)]
pub struct ErrorMetricsLayer<C, O = Operation> {
    pub(crate) shared: Arc<Shared<C>>,
    pub(crate) operation: O,
}

#[derive(Debug)]
pub(crate) struct Shared<C> {
    pub(crate) classifier: C,
    pub(crate) codes: CodeLimit,
}

impl<C> ErrorMetricsLayer<C, Operation> {
    /// Judges outcomes with `classifier`; every call is labelled `operation="other"` until you
    /// pick names with [`operation`](Self::operation) or [`operation_from`](Self::operation_from).
    pub fn new(classifier: C) -> Self {
        ErrorMetricsLayer {
            shared: Arc::new(Shared {
                classifier,
                codes: CodeLimit::new(DEFAULT_MAX_CODES),
            }),
            operation: Operation::other(),
        }
    }
}

impl<C, O> ErrorMetricsLayer<C, O> {
    /// Labels every call with `operation` (a policy name).
    pub fn operation(self, operation: impl Into<SharedString>) -> ErrorMetricsLayer<C, Operation> {
        ErrorMetricsLayer {
            shared: self.shared,
            operation: Operation::new(operation),
        }
    }

    /// Labels each call by `operation_of`: a [`PolicyOperations`](super::PolicyOperations), or
    /// a closure returning one of a few [`Operation`]s built up front.
    pub fn operation_from<P>(self, operation_of: P) -> ErrorMetricsLayer<C, P> {
        ErrorMetricsLayer {
            shared: self.shared,
            operation: operation_of,
        }
    }

    /// Caps the distinct `code` label values at `max` (default [`DEFAULT_MAX_CODES`]); later new
    /// codes are labelled `"other"`.
    pub fn max_codes(self, max: usize) -> Self
    where
        C: Clone,
    {
        ErrorMetricsLayer {
            shared: Arc::new(Shared {
                classifier: self.shared.classifier.clone(),
                codes: CodeLimit::new(max),
            }),
            operation: self.operation,
        }
    }
}

impl<S, C, O: Clone> Layer<S> for ErrorMetricsLayer<C, O> {
    type Service = ErrorMetrics<S, C, O>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorMetrics {
            inner,
            shared: self.shared.clone(),
            operation: self.operation.clone(),
        }
    }
}
