use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::backoff::Rng;
use super::metrics::RetryMetrics;
use super::{CloneRequest, Retry, RetryBudget};
use crate::policy::{Policy, RetryPolicy};

/// Applies [`Retry`] to a service. See the [module docs](super).
///
/// The [`RetryBudget`] is made with the layer and shared by every service it builds and all
/// their clones.
pub struct RetryLayer<C, P = CloneRequest> {
    operation: Arc<str>,
    policy: RetryPolicy,
    classifier: C,
    replay: P,
    budget: RetryBudget,
    metrics: RetryMetrics,
    seed: Option<u64>,
}

/// What every clone of a retry service shares.
pub(crate) struct Shared<C, P> {
    pub(crate) operation: Arc<str>,
    pub(crate) policy: RetryPolicy,
    pub(crate) classifier: C,
    pub(crate) replay: P,
    pub(crate) budget: RetryBudget,
    pub(crate) metrics: RetryMetrics,
}

impl<C> RetryLayer<C> {
    /// Retries calls of `operation` as `policy` says, when `classifier` calls the failure
    /// transient (or unknown, with `retry_unknown`).
    pub fn new(operation: impl Into<Arc<str>>, policy: RetryPolicy, classifier: C) -> Self {
        let operation = operation.into();
        RetryLayer {
            metrics: RetryMetrics::new(&operation),
            operation,
            budget: RetryBudget::new(&policy.budget),
            policy,
            classifier,
            replay: CloneRequest,
            seed: None,
        }
    }

    /// The retry policy of a resolved operation policy.
    pub fn from_policy(policy: &Policy, classifier: C) -> Self {
        RetryLayer::new(policy.name_arc().clone(), policy.retry, classifier)
    }
}

impl<C, P> RetryLayer<C, P> {
    /// Replays requests with `replay` instead.
    pub fn with_replay<Q>(self, replay: Q) -> RetryLayer<C, Q> {
        RetryLayer {
            operation: self.operation,
            policy: self.policy,
            classifier: self.classifier,
            replay,
            budget: self.budget,
            metrics: self.metrics,
            seed: self.seed,
        }
    }

    /// Shares `budget` (e.g. with the layers of other operations calling the same
    /// dependency) instead of the layer's own.
    #[must_use]
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Seeds the jitter, for reproducible tests. Services built from the layer, and their
    /// clones, each draw a different but reproducible sequence from it.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The budget the layer's services share.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The operation named in errors.
    pub fn operation(&self) -> &str {
        &self.operation
    }
}

impl<C: Clone, P: Clone> Clone for RetryLayer<C, P> {
    fn clone(&self) -> Self {
        RetryLayer {
            operation: self.operation.clone(),
            policy: self.policy,
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
            seed: self.seed,
        }
    }
}

impl<C: fmt::Debug, P: fmt::Debug> fmt::Debug for RetryLayer<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("operation", &self.operation)
            .field("policy", &self.policy)
            .field("classifier", &self.classifier)
            .field("replay", &self.replay)
            .field("budget", &self.budget)
            .finish()
    }
}

impl<S, C: Clone, P: Clone> Layer<S> for RetryLayer<C, P> {
    type Service = Retry<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Arc::new(Shared {
            operation: self.operation.clone(),
            policy: self.policy,
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
        });
        let rng = self.seed.map_or_else(Rng::from_entropy, Rng::seeded);
        Retry::new(inner, shared, rng)
    }
}
