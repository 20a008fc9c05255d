use std::path::Path;
use std::sync::Arc;

use tower_layer::Layer;

use super::NoReplay;
use super::breakers::{Breakers, PerOperation};
use super::edge::{DefaultCorrelation, Edge, Errors, Uncorrelated};
use super::fallback::NoFallback;
use super::registry::{Registry, StackHandle};
use super::select::ByRequest;
use super::service::Resilience;
#[cfg(feature = "metrics")]
use crate::error::ThroughLayers;
#[cfg(feature = "metrics")]
use crate::metrics::ErrorMetricsLayer;
use crate::policy::{ConfigError, Policies, PolicyStore};

/// The whole resilience stack as one layer, built from a policy table.
///
/// See the [module docs](super) for the order of the layers, how operations are selected and
/// what a reload does. Every service the layer builds (axum's `Router::layer` builds one per
/// route) shares one per-operation state: one breaker, bulkhead and retry budget per
/// operation.
///
/// `K` is the correlation edge ([`Correlated`](super::Correlated), or
/// [`Uncorrelated`](super::Uncorrelated) after [`without_correlation`](Self::without_correlation));
/// `V` what errors become ([`Errors`](super::Errors), or problem responses / gRPC statuses).
pub struct ResilienceLayer<
    C,
    P = NoReplay,
    Sel = ByRequest,
    F = NoFallback,
    B: Breakers<C> = PerOperation,
    K = DefaultCorrelation,
    V = Errors,
> {
    registry: Arc<Registry<C, B>>,
    classifier: C,
    replay: P,
    select: Sel,
    fallback: F,
    correlation: K,
    responses: V,
    #[cfg(feature = "metrics")]
    metrics: Option<ErrorMetricsLayer<ThroughLayers<C>>>,
}

/// The same layer with one field replaced, the others (`keep`) moved over.
macro_rules! with {
    ($self:ident, $field:ident: $value:expr, keep: $($keep:ident),*) => {
        ResilienceLayer {
            $field: $value,
            $($keep: $self.$keep,)*
            #[cfg(feature = "metrics")]
            metrics: $self.metrics,
        }
    };
}

impl<C: Clone> ResilienceLayer<C> {
    /// A stack running under `store`'s table (reload the store to change it), judging
    /// outcomes with `classifier`. Its correlation layer (feature `correlation`) follows the
    /// table's `correlation:` section as it is now (a reload does not change it).
    pub fn new(store: PolicyStore, classifier: C) -> Self {
        #[cfg(feature = "correlation")]
        let correlation = super::Correlated::from_policy(store.current().correlation());
        #[cfg(not(feature = "correlation"))]
        let correlation = super::Uncorrelated;
        ResilienceLayer {
            registry: Arc::new(Registry::new(store, classifier.clone(), PerOperation)),
            #[cfg(feature = "metrics")]
            metrics: Some(ErrorMetricsLayer::new(ThroughLayers(classifier.clone()))),
            classifier,
            replay: NoReplay,
            select: ByRequest,
            fallback: NoFallback,
            correlation,
            responses: Errors,
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

impl<C: Clone, P, Sel, F, B: Breakers<C>, K, V> ResilienceLayer<C, P, Sel, F, B, K, V> {
    /// Makes copies of requests for retries with `replay`. Without one ([`NoReplay`]) a call
    /// is never sent twice; for clients use [`CloneRequest`](crate::retry::CloneRequest) or a
    /// request-specific replay.
    pub fn with_replay<Q>(self, replay: Q) -> ResilienceLayer<C, Q, Sel, F, B, K, V> {
        with!(self, replay: replay, keep: registry, classifier, select, fallback, correlation, responses)
    }

    /// Selects each request's operation with `select` instead of [`ByRequest`].
    pub fn with_select<T>(self, select: T) -> ResilienceLayer<C, P, T, F, B, K, V> {
        with!(self, select: select, keep: registry, classifier, replay, fallback, correlation, responses)
    }

    /// Shapes each operation's circuit breaking with `breakers` ([`PerKey`](super::PerKey):
    /// one breaker per host within each operation). The per-operation state starts afresh.
    pub fn with_breakers<B2: Breakers<C>>(
        self,
        breakers: B2,
    ) -> ResilienceLayer<C, P, Sel, F, B2, K, V> {
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
            correlation: self.correlation,
            responses: self.responses,
            #[cfg(feature = "metrics")]
            metrics: self.metrics,
        }
    }

    /// Answers failed and refused calls, and responses the classifier calls failures, with
    /// `fallback`.
    pub fn with_fallback<G>(self, fallback: G) -> ResilienceLayer<C, P, Sel, G, B, K, V> {
        with!(self, fallback: fallback, keep: registry, classifier, replay, select, correlation, responses)
    }

    /// No correlation layer: for request types other than `http::Request` (they have no
    /// headers to read an ID from), or to add your own
    /// [`CorrelationLayer`](crate::correlation::CorrelationLayer) outside the stack.
    pub fn without_correlation(self) -> ResilienceLayer<C, P, Sel, F, B, Uncorrelated, V> {
        with!(self, correlation: Uncorrelated, keep: registry, classifier, replay, select, fallback, responses)
    }

    /// Correlation by `layer` instead of the policy file's `correlation:` section.
    #[cfg(feature = "correlation")]
    pub fn with_correlation(
        self,
        layer: crate::correlation::CorrelationLayer,
    ) -> ResilienceLayer<C, P, Sel, F, B, super::Correlated, V> {
        with!(self, correlation: super::Correlated(layer), keep: registry, classifier, replay, select, fallback, responses)
    }

    /// No error metrics in the stack (to add your own
    /// [`ErrorMetricsLayer`](crate::metrics::ErrorMetricsLayer)); the layers' own metrics
    /// stay.
    #[must_use]
    pub fn without_metrics(self) -> Self {
        #[cfg(feature = "metrics")]
        let this = ResilienceLayer {
            metrics: None,
            ..self
        };
        #[cfg(not(feature = "metrics"))]
        let this = self;
        this
    }

    /// Error metrics recorded by `layer` (e.g. with its own
    /// [`max_codes`](crate::metrics::ErrorMetricsLayer::max_codes)); its `operation` labelling
    /// is not used: the stack labels each call by its selected policy.
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn with_metrics<O>(self, layer: ErrorMetricsLayer<ThroughLayers<C>, O>) -> Self {
        ResilienceLayer {
            metrics: Some(layer.operation(crate::metrics::names::OTHER)),
            ..self
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
    /// (503/504 with `Retry-After`, the request's correlation ID in the body), so it goes on
    /// axum's `Router::layer` as it is. See [`http`](super::http).
    #[cfg(feature = "http")]
    pub fn problem_responses(self) -> ResilienceLayer<C, P, Sel, F, B, K, super::Problems> {
        with!(self, responses: super::Problems { overload: http::StatusCode::SERVICE_UNAVAILABLE }, keep: registry, classifier, replay, select, fallback, correlation)
    }

    /// The stack as an infallible gRPC service: palisade errors become trailers-only
    /// responses with their status (`UNAVAILABLE`, `RESOURCE_EXHAUSTED`,
    /// `DEADLINE_EXCEEDED`) and `grpc-retry-pushback-ms`, for tonic's
    /// `Server::builder().layer`. See [`grpc`](super::grpc).
    #[cfg(feature = "grpc")]
    pub fn grpc_statuses(self) -> ResilienceLayer<C, P, Sel, F, B, K, super::Statuses> {
        with!(self, responses: super::Statuses, keep: registry, classifier, replay, select, fallback, correlation)
    }
}

#[cfg(feature = "http")]
impl<C: Clone, P, Sel, F, B: Breakers<C>, K> ResilienceLayer<C, P, Sel, F, B, K, super::Problems> {
    /// The status of an open breaker and a full bulkhead: 503 by default, or e.g. 429.
    #[must_use]
    pub fn overload_status(mut self, status: http::StatusCode) -> Self {
        self.responses.overload = status;
        self
    }
}

impl<C: Clone, P: Clone, Sel: Clone, F: Clone, B: Breakers<C>, K: Clone, V: Clone> Clone
    for ResilienceLayer<C, P, Sel, F, B, K, V>
{
    fn clone(&self) -> Self {
        ResilienceLayer {
            registry: self.registry.clone(),
            classifier: self.classifier.clone(),
            replay: self.replay.clone(),
            select: self.select.clone(),
            fallback: self.fallback.clone(),
            correlation: self.correlation.clone(),
            responses: self.responses.clone(),
            #[cfg(feature = "metrics")]
            metrics: self.metrics.clone(),
        }
    }
}

impl<C, P, Sel, F, B: Breakers<C>, K, V> std::fmt::Debug
    for ResilienceLayer<C, P, Sel, F, B, K, V>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilienceLayer")
            .field("store", &self.registry.store)
            .finish_non_exhaustive()
    }
}

impl<S, C, P, Sel, F, B, K, V> Layer<S> for ResilienceLayer<C, P, Sel, F, B, K, V>
where
    B: Breakers<C>,
    S: Clone,
    C: Clone,
    P: Clone,
    Sel: Clone,
    F: Clone,
    K: Edge,
    V: Edge,
{
    type Service = K::Service<V::Service<Resilience<S, C, P, Sel, F, B>>>;

    fn layer(&self, inner: S) -> Self::Service {
        // The one order: correlation -> responses (errors as problem responses or statuses,
        // inside the correlation scope so they carry the ID) -> error metrics -> [kill switch,
        // fallback, bulkhead -> total timeout -> retry -> circuit breaker -> attempt timeout]
        // -> service. Error metrics wrap the call inside `Resilience`, which selects the
        // operation once for the metrics label and the layers.
        let core = Resilience::new(
            inner,
            self.registry.clone(),
            self.classifier.clone(),
            self.replay.clone(),
            self.select.clone(),
            self.fallback.clone(),
            #[cfg(feature = "metrics")]
            self.metrics.clone(),
        );
        self.correlation.wrap(self.responses.wrap(core))
    }
}
