//! One service's operation stacks: the layers of every operation, built around clones of the
//! inner service, in the stack's one documented order.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tower_layer::Layer;

use super::breakers::{Breakers, PerOperation};
use super::outside::Outside;
use super::registry::{OperationState, States};
use crate::bulkhead::{Bulkhead, Partition};
use crate::error::ThroughLayers;
use crate::policy::{Policies, Policy};
use crate::retry::{Retry, RetryLayer};
use crate::timeout::{Timeout, TimeoutLayer};

/// The layers one operation's calls go through, outermost first: bulkhead -> total timeout ->
/// retry -> circuit breaker -> attempt timeout -> the service (wrapped in [`Outside`], which
/// marks where the stack's shared clock read ends). This alias (with the private
/// `OperationStack::build`) is the only place that knows the order.
///
/// [`Resilience`](super::Resilience) wraps these in the kill switch, the fallback and the
/// stack's error metrics; the correlation layer and the conversion of errors into responses
/// sit outside it (`ResilienceLayer::layer`); see the [module docs](super).
pub type OperationService<S, C, P, B = PerOperation> = Bulkhead<
    Timeout<
        Retry<<B as Breakers<C>>::Service<Timeout<Outside<S>>>, ThroughLayers<ThroughLayers<C>>, P>,
    >,
>;

/// The service the retry calls for each attempt: the circuit breaker around the attempt
/// timeout around the user's service.
pub(crate) type Attempts<S, C, B> = <B as Breakers<C>>::Service<Timeout<Outside<S>>>;

/// The classifier the retry judges attempts with: the stack's, through the breaker's and the
/// attempt timeout's errors.
pub(crate) type RetryClassifier<C> = ThroughLayers<ThroughLayers<C>>;

/// What the retry service of an operation's layers shares with its calls.
pub(crate) type RetryParts<S, C, P, B> =
    crate::retry::Parts<Attempts<S, C, B>, RetryClassifier<C>, P>;

/// The retry service of an operation's layers.
pub(crate) type RetryOf<S, C, P, B> = Retry<Attempts<S, C, B>, RetryClassifier<C>, P>;

/// What a call through one operation's layers needs from them once it is made, shared by
/// every call of the operation (in one table version): the stack's response future holds it
/// with one reference count, where the layers' own futures would take one each (the
/// bulkhead's permit, the retry's parts, the error metrics).
pub(crate) struct Parts<S, C, P, B: Breakers<C>> {
    pub(crate) partition: Arc<Partition>,
    pub(crate) total: Arc<crate::timeout::Shared>,
    pub(crate) retry: Arc<RetryParts<S, C, P, B>>,
    /// The stack's error metrics for this operation (`None`: turned off), labelled by the
    /// policy, their handles registered once per operation and table version.
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Bound<ThroughLayers<C>>>,
}

/// One operation of one service: its policy snapshot and its layers.
pub(crate) struct OperationStack<S, C, P, B: Breakers<C>> {
    pub(crate) policy: Arc<Policy>,
    pub(crate) service: OperationService<S, C, P, B>,
    pub(crate) parts: Arc<Parts<S, C, P, B>>,
}

/// The stack's error metrics layer, as table builds take it.
#[cfg(feature = "metrics")]
pub(crate) type StackMetrics<C> = Option<crate::metrics::ErrorMetricsLayer<ThroughLayers<C>>>;
/// Without feature `metrics`: nothing.
#[cfg(not(feature = "metrics"))]
pub(crate) type StackMetrics<C> = std::marker::PhantomData<C>;

impl<S: Clone, C: Clone, P: Clone, B: Breakers<C>> OperationStack<S, C, P, B> {
    fn build(
        inner: &S,
        state: &OperationState<C, B>,
        classifier: &C,
        replay: &P,
        metrics: &StackMetrics<C>,
    ) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = metrics;
        let policy = &state.policy;
        // Innermost first.
        // The total timeout lists the call in the in-flight registry, once for all its attempts.
        let attempt = TimeoutLayer::attempt_from(policy)
            .unlisted()
            .layer(Outside::new(inner.clone()));
        let breaker = B::wrap(&state.breaker, attempt);
        let retry =
            RetryLayer::from_policy(policy, ThroughLayers(ThroughLayers(classifier.clone())))
                .with_replay(replay.clone())
                .with_budget(state.budget.clone())
                .layer(breaker);
        let total = TimeoutLayer::total_from(policy).layer(retry);
        let service = state.bulkhead.layer(total);
        let total = service.get_ref();
        let parts = Arc::new(Parts {
            partition: service.partition().clone(),
            total: total.shared.clone(),
            retry: total.get_ref().parts().clone(),
            #[cfg(feature = "metrics")]
            metrics: metrics.as_ref().map(|layer| {
                let label = super::metrics::label(policy.name_arc());
                crate::metrics::Bound::new(layer, crate::metrics::Operation::new(label))
            }),
        });
        OperationStack {
            policy: policy.clone(),
            service,
            parts,
        }
    }
}

/// Every operation's stack for one version of the policy table.
pub(crate) struct Table<S, C, P, B: Breakers<C>> {
    /// Unique in the process (tables are numbered as they are built): a service's own copy
    /// of an operation's layers names the table it came from by this.
    pub(crate) id: u64,
    pub(crate) policies: Arc<Policies>,
    /// Fires when the store swaps in another table: this one is then stale.
    pub(crate) changes: watch::Receiver<Arc<Policies>>,
    defaults: OperationStack<S, C, P, B>,
    /// Keyed by the address of the operation's `Arc<Policy>` in `policies`: selection hands
    /// back that `Arc`, so finding its stack hashes one word instead of a name.
    operations: HashMap<usize, OperationStack<S, C, P, B>, PtrHash>,
}

impl<S: Clone, C: Clone, P: Clone, B: Breakers<C>> Table<S, C, P, B> {
    pub(crate) fn build(
        inner: &S,
        states: &States<C, B>,
        changes: watch::Receiver<Arc<Policies>>,
        classifier: &C,
        replay: &P,
        metrics: &StackMetrics<C>,
    ) -> Self {
        let policies = states.policies.clone();
        let defaults = OperationStack::build(inner, &states.defaults, classifier, replay, metrics);
        let operations = policies
            .operations()
            .filter_map(|p| {
                let state = states.operations.get(p.name())?;
                Some((
                    Arc::as_ptr(p) as usize,
                    OperationStack::build(inner, state, classifier, replay, metrics),
                ))
            })
            .collect();
        static TABLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Table {
            id: TABLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            policies,
            changes,
            defaults,
            operations,
        }
    }
}

impl<S, C, P, B: Breakers<C>> Table<S, C, P, B> {
    /// The stack of a policy selected from this table's `policies`.
    pub(crate) fn stack(&self, policy: &Arc<Policy>) -> &OperationStack<S, C, P, B> {
        self.stack_by_key(Arc::as_ptr(policy) as usize)
    }

    /// The stack of the policy at this address (the defaults' if none of the operations').
    pub(crate) fn stack_by_key(&self, policy: usize) -> &OperationStack<S, C, P, B> {
        self.operations.get(&policy).unwrap_or(&self.defaults)
    }

    pub(crate) fn is_stale(&self) -> bool {
        // A closed channel means the store is gone: nothing will change any more.
        self.changes.has_changed().unwrap_or(false)
    }
}

/// Hashes pointers: they are already unique, so a multiply spreads them over the buckets.
#[derive(Clone, Copy, Default)]
pub(crate) struct PtrHash;

impl std::hash::BuildHasher for PtrHash {
    type Hasher = PtrHasher;

    fn build_hasher(&self) -> PtrHasher {
        PtrHasher(0)
    }
}

pub(crate) struct PtrHasher(u64);

impl std::hash::Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}
