use std::path::Path;
use std::sync::Arc;

use tower_layer::Layer;

use super::NoReplay;
use super::breakers::{Breakers, PerOperation};
use super::fallback::NoFallback;
use super::registry::{Registry, StackHandle};
use super::select::ByRequest;
use super::service::Resilience;
use crate::policy::{ConfigError, Policies, PolicyStore};

/// The whole resilience stack as one layer, built from a policy table.
///
/// See the [module docs](super) for the order of the layers, how operations are selected and
/// what a reload does. Every service the layer builds (axum's `Router::layer` builds one per
/// route) shares one per-operation state: one breaker, bulkhead and retry budget per
/// operation.
pub struct ResilienceLayer<
    C,
    P = NoReplay,
    Sel = ByRequest,
    F = NoFallback,
    B: Breakers<C> = PerOperation,
> {
    registry: Arc<Registry<C, B>>,
    classifier: C,
    replay: P,
    select: Sel,
    fallback: F,
}

impl<C: Clone> ResilienceLayer<C> {
    /// A stack running under `store`'s table (reload the store to change it), judging
    /// outcomes with `classifier`.
    pub fn new(store: PolicyStore, classifier: C) -> Self {
        ResilienceLayer {
            registry: Arc::new(Registry::new(store, classifier.clone(), PerOperation)),
            classifier,
            replay: NoReplay,
            select: ByRequest,
            fallback: NoFallback,
        }
    }

    /// A stack running under a fixed table (its [`handle`](Self::handle)'s store can still be
    /// reloaded).
    pub fn from_policies(policies: Policies, classifier: C) -> Self {
        Self::new(PolicyStore::new(policies), classifier)
    }

    /// A stack running under a policy file (with `PALISADE__...` environment overrides);
    /// `handle().store().reload_from_file()` or `watch_file` pick up its changes.
    pub fn from_yaml_path(path: impl AsRef<Path>, classifier: C) -> Result<Self, ConfigError> {
        Ok(Self::new(PolicyStore::from_path(path)?, classifier))
    }
}

impl<C: Clone, P, Sel, F, B: Breakers<C>> ResilienceLayer<C, P, Sel, F, B> {
    /// Makes copies of requests for retries with `replay`. Without one ([`NoReplay`]) a call
    /// is never sent twice; for clients use [`CloneRequest`](crate::retry::CloneRequest) or a
    /// request-specific replay.
    pub fn with_replay<Q>(self, replay: Q) -> ResilienceLayer<C, Q, Sel, F, B> {
        ResilienceLayer {
            registry: self.registry,
            classifier: self.classifier,
            replay,
            select: self.select,
            fallback: self.fallback,
        }
    }

    /// Selects each request's operation with `select` instead of [`ByRequest`].
    pub fn with_select<T>(self, select: T) -> ResilienceLayer<C, P, T, F, B> {
        ResilienceLayer {
            registry: self.registry,
            classifier: self.classifier,
            replay: self.replay,
            select,
            fallback: self.fallback,
        }
    }

    /// Shapes each operation's circuit breaking with `breakers` ([`PerKey`](super::PerKey):
    /// one breaker per host within each operation). The per-operation state starts afresh.
    pub fn with_breakers<B2: Breakers<C>>(self, breakers: B2) -> ResilienceLayer<C, P, Sel, F, B2> {
        ResilienceLayer {
            registry: Arc::new(Registry::new(
                self.registry.store.clone(),
                self.classifier.clone(),
                breakers,
            )),
            classifier: self.classifier,
            replay: self.replay,
            select: self.select,
            fallback: self.fallback,
        }
    }

    /// Answers failed and refused calls with `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> ResilienceLayer<C, P, Sel, G, B> {
        ResilienceLayer {
            registry: self.registry,
            classifier: self.classifier,
            replay: self.replay,
            select: self.select,
            fallback,
        }
    }

    /// The per-operation state and the policy store, shared by every service of this layer.
    pub fn handle(&self) -> StackHandle<C, B> {
        StackHandle {
            registry: self.registry.clone(),
        }
    }

    /// The policy store the stack runs under.
    pub fn store(&self) -> &PolicyStore {
        &self.registry.store
    }

    /// The stack as an infallible HTTP service: palisade errors become problem responses
    /// (503/504 with `Retry-After`), so it goes on axum's `Router::layer` as it is. See
    /// [`http`](super::http).
    #[cfg(feature = "http")]
    pub fn problem_responses(self) -> super::http::ProblemResponseLayer<Self> {
        super::http::ProblemResponseLayer::new(self)
    }

    /// The stack as an infallible gRPC service: palisade errors become trailers-only
    /// responses with their status (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`,
    /// `DEADLINE_EXCEEDED`) and `grpc-retry-pushback-ms`, for tonic's
    /// `Server::builder().layer`. See [`grpc`](super::grpc).
    #[cfg(feature = "grpc")]
    pub fn grpc_statuses(self) -> super::grpc::GrpcStatusLayer<Self> {
        super::grpc::GrpcStatusLayer::new(self)
    }
}

impl<C: Clone, P: Clone, Sel: Clone, F: Clone, B: Breakers<C>> Clone
    for ResilienceLayer<C, P, Sel, F, B>
{
    fn clone(&self) -> Self {
        ResilienceLayer {
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            select: self.select.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<C, P, Sel, F, B: Breakers<C>> std::fmt::Debug for ResilienceLayer<C, P, Sel, F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilienceLayer")
            .field("store", &self.registry.store)
            .finish_non_exhaustive()
    }
}

impl<S, C, P, Sel, F, B> Layer<S> for ResilienceLayer<C, P, Sel, F, B>
where
    B: Breakers<C>,
    S: Clone,
    C: Clone,
    P: Clone,
    Sel: Clone,
    F: Clone,
{
    type Service = Resilience<S, C, P, Sel, F, B>;

    fn layer(&self, inner: S) -> Self::Service {
        // Correlation IDs and error metrics (issue 5) go outside this service, in that order:
        // correlation -> error metrics -> [kill switch, fallback, bulkhead -> total timeout ->
        // retry -> circuit breaker -> attempt timeout] -> service. They are not on this branch.
        Resilience::new(
            inner,
            self.registry.clone(),
            self.classifier.clone(),
            self.replay.clone(),
            self.select.clone(),
            self.fallback.clone(),
        )
    }
}
