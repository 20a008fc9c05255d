//! One breaker per key: per host, per route, per operation.

use std::fmt::Display;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::broadcast;
use tower_layer::Layer;
use tower_service::Service;

use super::breaker::{Admission, Ticket};
use super::events::Transition;
use super::future::ResponseFuture;
use super::handle::CircuitBreakerHandle;
use super::layer::CircuitBreakerBuilder;
use super::registry::Registry;
use crate::classify::Classify;
use crate::error::{CircuitOpen, Error};

/// Wraps services in [`KeyedCircuitBreaker`]s: one breaker per key a function reads from each
/// request, all with the same rules, held in a bounded registry.
///
/// The registry holds at most `max_keys` breakers (default 1,024). When it is full, breakers
/// idle for `idle_timeout` (default 10 minutes) that no in-flight call or handle holds are
/// evicted; when none can be, the call is judged by one shared *overflow* breaker (named
/// `<name>/{overflow}`) rather than growing the map, so attacker-chosen keys cannot grow memory
/// and cannot push out a breaker that is protecting a real dependency.
///
/// **Cost.** One hash lookup under a read lock per call on top of the breaker itself.
///
/// ```
/// use palisade::Error;
/// use palisade::circuit_breaker::KeyedCircuitBreakerLayer;
/// use palisade::classify::Outcome;
/// use palisade::policy::CircuitBreakerPolicy;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut policy = CircuitBreakerPolicy::default();
/// policy.consecutive_failures = 1;
/// let layer = KeyedCircuitBreakerLayer::builder("upstream", policy)
///     .max_keys(100)
///     .build(|host: &&'static str| host.to_string(), |r: Result<&(), &()>| Outcome::fallback(r.is_ok()));
/// let handle = layer.handle();
/// let svc = ServiceBuilder::new().layer(layer).service(service_fn(|host: &'static str| async move {
///     if host == "down.example" { Err(()) } else { Ok(()) }
/// }));
///
/// assert!(svc.clone().oneshot("down.example").await.is_err()); // trips down.example only
/// assert!(matches!(svc.clone().oneshot("down.example").await, Err(Error::CircuitOpen(_))));
/// assert!(svc.clone().oneshot("up.example").await.is_ok());
/// assert_eq!(handle.len(), 2);
/// # }
/// ```
pub struct KeyedCircuitBreakerLayer<K, F, C> {
    registry: Arc<Registry<K>>,
    key: F,
    classifier: C,
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerLayer {
            registry: self.registry.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C> std::fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl KeyedCircuitBreakerLayer<(), (), ()> {
    /// A builder: the breakers' name prefix and rules, then the registry's bounds.
    pub fn builder(
        name: impl Into<Arc<str>>,
        policy: crate::policy::CircuitBreakerPolicy,
    ) -> KeyedCircuitBreakerBuilder {
        let name = name.into();
        KeyedCircuitBreakerBuilder {
            breaker: CircuitBreakerBuilder::new(name.clone(), policy),
            name,
            max_keys: 1024,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl<K: Hash + Eq + Clone + Display, F, C> KeyedCircuitBreakerLayer<K, F, C> {
    /// The handle to the registry.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle<K> {
        KeyedCircuitBreakerHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            registry: self.registry.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// Options of a [`KeyedCircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct KeyedCircuitBreakerBuilder {
    name: Arc<str>,
    breaker: CircuitBreakerBuilder,
    max_keys: usize,
    idle_timeout: Duration,
}

impl KeyedCircuitBreakerBuilder {
    /// The most breakers held at once (at least 1). Default 1,024.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How long a breaker must go unused before it may be evicted. Default 10 minutes. Keep
    /// it above the longest open time, or an evicted open breaker comes back closed.
    #[must_use]
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The options of every breaker (counted failures, jitter, callback, event capacity).
    /// `pending_while_open` does not apply: readiness cannot depend on a request's key.
    #[must_use]
    pub fn breakers(
        mut self,
        f: impl FnOnce(CircuitBreakerBuilder) -> CircuitBreakerBuilder,
    ) -> Self {
        self.breaker = f(self.breaker);
        self
    }

    /// The layer, reading each request's key with `key` and deciding with `classifier`.
    pub fn build<K, F, C>(self, key: F, classifier: C) -> KeyedCircuitBreakerLayer<K, F, C>
    where
        K: Hash + Eq + Clone + Display,
    {
        KeyedCircuitBreakerLayer {
            registry: Arc::new(Registry::new(
                self.name,
                self.breaker,
                self.max_keys,
                self.idle_timeout,
            )),
            key,
            classifier,
        }
    }
}

/// A service guarded by one breaker per key. Made by [`KeyedCircuitBreakerLayer`]; behaves like
/// [`CircuitBreaker`](super::CircuitBreaker) with the breaker chosen per request.
pub struct KeyedCircuitBreaker<S, K, F, C> {
    inner: S,
    registry: Arc<Registry<K>>,
    key: F,
    classifier: C,
}

impl<S, K, F, C> KeyedCircuitBreaker<S, K, F, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        KeyedCircuitBreaker {
            inner: self.inner.clone(),
            registry: self.registry.clone(),
            key: self.key.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K, F, C> std::fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req>,
    K: Hash + Eq + Clone + Display,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let breaker = self.registry.get(&(self.key)(&request));
        match breaker.admit() {
            Admission::Reject(retry_after) => ResponseFuture::rejected(CircuitOpen {
                breaker: breaker.reject_name.clone(),
                retry_after,
            }),
            admission => {
                let ticket = Ticket::new(&breaker, admission);
                ResponseFuture::called(self.inner.call(request), ticket, &self.classifier)
            }
        }
    }
}

/// The registry of a [`KeyedCircuitBreakerLayer`] seen from outside.
pub struct KeyedCircuitBreakerHandle<K> {
    registry: Arc<Registry<K>>,
}

impl<K> Clone for KeyedCircuitBreakerHandle<K> {
    fn clone(&self) -> Self {
        KeyedCircuitBreakerHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<K> std::fmt::Debug for KeyedCircuitBreakerHandle<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCircuitBreakerHandle")
            .field("registry", &self.registry)
            .finish()
    }
}

impl<K: Hash + Eq + Clone + Display> KeyedCircuitBreakerHandle<K> {
    /// The breaker of `key`, if the registry holds one. Holding the handle keeps the breaker
    /// from being evicted.
    pub fn get(&self, key: &K) -> Option<CircuitBreakerHandle> {
        self.registry
            .lookup(key)
            .map(|b| CircuitBreakerHandle::new(b.core().clone()))
    }

    /// The breaker used for new keys while the registry is full.
    pub fn overflow(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.registry.overflow().core().clone())
    }

    /// How many keyed breakers the registry holds (the overflow breaker not included).
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// Whether the registry holds no keyed breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies the rules of `policy` to every breaker of the registry, keeping each one's
    /// state (see [`CircuitBreakerHandle::reconfigure`]): the breakers of existing keys, the
    /// overflow breaker, and the breakers of keys seen later.
    pub fn reconfigure(&self, policy: &crate::policy::CircuitBreakerPolicy) {
        self.registry.reconfigure(policy);
    }

    /// Evicts every breaker idle for `idle_timeout` and unheld, now; returns how many.
    pub fn evict_idle(&self) -> usize {
        self.registry.evict_idle()
    }

    /// A receiver of the transitions of every breaker of the registry.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.registry.sinks().events.subscribe()
    }
}
