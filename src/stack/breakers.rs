//! How an operation's circuit breaking is shaped: one breaker per operation, or one per key
//! (per host) within each operation.

use std::fmt::Display;
use std::hash::Hash;
#[cfg(feature = "reqwest")]
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::circuit_breaker::{
    CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer, KeyedCircuitBreaker,
    KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer,
};
use crate::error::ThroughLayers;
use crate::policy::Policy;

/// Builds the circuit breaking of each operation from its policy.
pub trait Breakers<C> {
    /// One operation's breaker layer: its state, kept across reloads (a changed
    /// `circuit_breaker` section is applied in place with [`reconfigure`](Self::reconfigure)).
    type Layer: Clone;
    /// The breaker service around the attempt timeout.
    type Service<T>;
    /// What [`StackHandle::breaker`](super::StackHandle::breaker) hands out.
    type Handle;

    /// The breaker layer of an operation.
    fn build(&self, policy: &Policy, classifier: ThroughLayers<C>) -> Self::Layer;

    /// Wraps `inner` in `layer`'s breaker.
    fn wrap<T>(layer: &Self::Layer, inner: T) -> Self::Service<T>;

    /// The operator's view of `layer`.
    fn handle(layer: &Self::Layer) -> Self::Handle;

    /// Applies a reloaded policy's `circuit_breaker` section to the live breaker(s) of
    /// `layer`, keeping their state (closed/open/half-open, counts, operator mode).
    fn reconfigure(layer: &Self::Layer, policy: &Policy);
}

/// One breaker per operation. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerOperation;

impl<C: Clone> Breakers<C> for PerOperation {
    type Layer = CircuitBreakerLayer<ThroughLayers<C>>;
    type Service<T> = CircuitBreaker<T, ThroughLayers<C>>;
    type Handle = CircuitBreakerHandle;

    fn build(&self, policy: &Policy, classifier: ThroughLayers<C>) -> Self::Layer {
        CircuitBreakerLayer::from_policy(policy, classifier)
    }

    fn wrap<T>(layer: &Self::Layer, inner: T) -> Self::Service<T> {
        layer.layer(inner)
    }

    fn handle(layer: &Self::Layer) -> CircuitBreakerHandle {
        layer.handle()
    }

    fn reconfigure(layer: &Self::Layer, policy: &Policy) {
        layer.handle().reconfigure(&policy.circuit_breaker);
    }
}

/// One breaker per key within each operation (per host for a client), each operation with its
/// own bounded [keyed registry](crate::circuit_breaker::KeyedCircuitBreakerLayer) under its
/// policy's rules. Breakers are named `<operation>/<key>`.
#[derive(Clone, Debug)]
pub struct PerKey<F> {
    key: F,
    max_keys: usize,
    idle_timeout: Duration,
}

impl<F> PerKey<F> {
    /// One breaker per `key(request)`, at most 1,024 per operation, evicted after 10 minutes
    /// idle (the keyed registry's defaults).
    pub fn new(key: F) -> Self {
        PerKey {
            key,
            max_keys: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }

    /// The most breakers per operation.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How long a breaker must be idle before it may be evicted.
    #[must_use]
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }
}

impl<C: Clone, F: Clone, K> Breakers<C> for PerKey<F>
where
    K: Hash + Eq + Clone + Display,
    F: KeyOf<Key = K>,
{
    type Layer = KeyedCircuitBreakerLayer<K, F, ThroughLayers<C>>;
    type Service<T> = KeyedCircuitBreaker<T, K, F, ThroughLayers<C>>;
    type Handle = KeyedCircuitBreakerHandle<K>;

    fn build(&self, policy: &Policy, classifier: ThroughLayers<C>) -> Self::Layer {
        KeyedCircuitBreakerLayer::builder(policy.name_arc().clone(), policy.circuit_breaker)
            .max_keys(self.max_keys)
            .idle_timeout(self.idle_timeout)
            .build(self.key.clone(), classifier)
    }

    fn wrap<T>(layer: &Self::Layer, inner: T) -> Self::Service<T> {
        layer.layer(inner)
    }

    fn handle(layer: &Self::Layer) -> Self::Handle {
        layer.handle()
    }

    fn reconfigure(layer: &Self::Layer, policy: &Policy) {
        layer.handle().reconfigure(&policy.circuit_breaker);
    }
}

/// Names the key type of a [`PerKey`] function, so that it can be named in the stack's
/// types; implemented for `fn(&Req) -> K` pointers.
pub trait KeyOf {
    /// The key.
    type Key;
}

impl<Req, K> KeyOf for fn(&Req) -> K {
    type Key = K;
}

/// The host (and port, if not the scheme's default) of a reqwest request: the key of a
/// client's per-host breakers.
#[cfg(feature = "reqwest")]
pub fn reqwest_host(request: &reqwest::Request) -> Arc<str> {
    let url = request.url();
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}").into(),
        (Some(host), None) => host.into(),
        (None, _) => Arc::from(""),
    }
}
