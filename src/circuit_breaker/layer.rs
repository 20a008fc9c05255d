use std::sync::Arc;

use tokio::sync::broadcast;
use tower_layer::Layer;

use super::breaker::{Breaker, Callback, Shards, Sinks};
use super::counted::CountedFailures;
use super::events::{OperatorMode, Transition};
use super::handle::CircuitBreakerHandle;
use super::service::CircuitBreaker;
use super::settings::Settings;
use super::window::Window;
use crate::policy::{CircuitBreakerPolicy, Policy};

/// Wraps services in one shared [`CircuitBreaker`].
///
/// Every service this layer makes (and every clone of them) shares one breaker: the layer is
/// the breaker. Build one layer per dependency you want to guard, or use
/// [`KeyedCircuitBreakerLayer`](super::KeyedCircuitBreakerLayer) for one breaker per host,
/// route or operation.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C> {
    breaker: Arc<Shards>,
    classifier: C,
    pending_while_open: bool,
}

impl<C> CircuitBreakerLayer<C> {
    /// A breaker named `name` with the rules of `policy`, deciding with `classifier`.
    pub fn new(name: impl Into<Arc<str>>, policy: CircuitBreakerPolicy, classifier: C) -> Self {
        CircuitBreakerBuilder::new(name, policy).build(classifier)
    }

    /// A breaker named after an operation's policy, with its `circuit_breaker` rules.
    pub fn from_policy(policy: &Policy, classifier: C) -> Self {
        Self::new(
            policy.name_arc().clone(),
            policy.circuit_breaker,
            classifier,
        )
    }

    /// The handle to this layer's breaker: state, counts, operator modes, events.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.core().clone())
    }
}

impl CircuitBreakerLayer<()> {
    /// A builder for the options the policy file does not hold; the classifier comes last, in
    /// [`CircuitBreakerBuilder::build`].
    pub fn builder(
        name: impl Into<Arc<str>>,
        policy: CircuitBreakerPolicy,
    ) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::new(name, policy)
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            self.breaker.clone(),
            self.classifier.clone(),
            self.pending_while_open,
        )
    }
}

/// Options of a [`CircuitBreakerLayer`] beyond its policy.
#[derive(Clone)]
pub struct CircuitBreakerBuilder {
    name: Arc<str>,
    policy: CircuitBreakerPolicy,
    counted: CountedFailures,
    open_jitter: Option<f64>,
    callback: Option<Callback>,
    event_capacity: usize,
    pending_while_open: bool,
}

impl std::fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .field("counted", &self.counted)
            .field("open_jitter", &self.open_jitter)
            .field("on_transition", &self.callback.is_some())
            .field("event_capacity", &self.event_capacity)
            .field("pending_while_open", &self.pending_while_open)
            .finish()
    }
}

impl CircuitBreakerBuilder {
    /// Starts from a name and the policy's rules.
    pub fn new(name: impl Into<Arc<str>>, policy: CircuitBreakerPolicy) -> Self {
        CircuitBreakerBuilder {
            name: name.into(),
            policy,
            counted: CountedFailures::default(),
            open_jitter: None,
            callback: None,
            event_capacity: 64,
            pending_while_open: false,
        }
    }

    /// Which classified failures count against the breaker. Default: all but the caller's own
    /// ([`CountedFailures::default`]).
    #[must_use]
    pub fn counted(mut self, counted: CountedFailures) -> Self {
        self.counted = counted;
        self
    }

    /// Shortens each open time by a random share of up to `jitter` (0 to 1), so clients that
    /// tripped together do not probe together. Default 0.1 when `open_timeout_multiplier` is
    /// above 1, else 0 (exact open times).
    #[must_use]
    pub fn open_jitter(mut self, jitter: f64) -> Self {
        self.open_jitter = Some(jitter);
        self
    }

    /// Calls `callback` on every transition, on the thread that made it, before subscribers
    /// hear of it. Keep it short: it runs while the breaker's transition lock is held, so it may
    /// read the breaker's handle (`state`, `metrics`) but must not change its mode or reset it.
    #[must_use]
    pub fn on_transition(mut self, callback: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.callback = Some(Arc::new(callback));
        self
    }

    /// How many transitions a slow subscriber may lag behind before it misses some. Default 64.
    #[must_use]
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Makes `poll_ready` return `Pending` while the breaker is open (or forced open), waking
    /// when the open time ends, instead of rejecting in `call`. For balancers, which then pick
    /// another endpoint. Calls beyond the half-open probe limit are still rejected in `call`.
    #[must_use]
    pub fn pending_while_open(mut self, pending: bool) -> Self {
        self.pending_while_open = pending;
        self
    }

    /// The layer, deciding with `classifier`.
    pub fn build<C>(self, classifier: C) -> CircuitBreakerLayer<C> {
        let sinks = self.sinks();
        CircuitBreakerLayer {
            breaker: self.breaker(self.name.clone(), sinks),
            classifier,
            pending_while_open: self.pending_while_open,
        }
    }

    /// Replaces the policy breakers built from now on take their rules from.
    pub(crate) fn set_policy(&mut self, policy: &CircuitBreakerPolicy) {
        self.policy = *policy;
    }

    pub(crate) fn sinks(&self) -> Sinks {
        Sinks {
            events: broadcast::channel(self.event_capacity).0,
            callback: self.callback.clone(),
        }
    }

    pub(crate) fn breaker(&self, name: Arc<str>, sinks: Sinks) -> Arc<Shards> {
        let mode = if self.policy.enabled {
            OperatorMode::Normal
        } else {
            OperatorMode::Disabled
        };
        let settings = Settings::new(&self.policy, self.counted.clone(), self.open_jitter);
        Arc::new(Shards::new(Breaker::new(
            name,
            settings,
            Window::new(&self.policy),
            mode,
            self.policy.enabled,
            sinks,
        )))
    }
}
