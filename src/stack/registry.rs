//! Per-operation state: one breaker, one bulkhead partition and one retry budget per
//! operation, kept across reloads; a reload that changes their thresholds reconfigures them in
//! place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::breakers::{Breakers, PerOperation};
use crate::bulkhead::BulkheadLayer;
use crate::error::ThroughLayers;
use crate::policy::{BulkheadPolicy, Policies, Policy, PolicyStore};
use crate::retry::RetryBudget;

/// The state one operation keeps between calls.
pub(crate) struct OperationState<C, B: Breakers<C>> {
    pub(crate) policy: Arc<Policy>,
    pub(crate) breaker: B::Layer,
    pub(crate) bulkhead: BulkheadLayer,
    pub(crate) budget: RetryBudget,
}

/// Every operation's state for one version of the policy table.
pub(crate) struct States<C, B: Breakers<C>> {
    pub(crate) policies: Arc<Policies>,
    pub(crate) defaults: Arc<OperationState<C, B>>,
    pub(crate) operations: HashMap<Arc<str>, Arc<OperationState<C, B>>>,
    /// Bumped on every change of table, so services know their operation stacks are stale.
    pub(crate) generation: u64,
}

impl<C, B: Breakers<C>> States<C, B> {
    pub(crate) fn get(&self, operation: &str) -> Option<&Arc<OperationState<C, B>>> {
        if operation == self.defaults.policy.name() {
            return Some(&self.defaults);
        }
        self.operations.get(operation)
    }
}

/// The state of every operation of a stack, shared by every service one
/// [`ResilienceLayer`](super::ResilienceLayer) builds (so that `Router::layer`, which builds
/// one service per route, still gives each operation one breaker).
pub(crate) struct Registry<C, B: Breakers<C>> {
    pub(crate) store: PolicyStore,
    classifier: C,
    breakers: B,
    states: Mutex<Arc<States<C, B>>>,
    partitions: Mutex<HashMap<Arc<str>, (BulkheadPolicy, BulkheadLayer)>>,
}

impl<C: Clone, B: Breakers<C>> Registry<C, B> {
    pub(crate) fn new(store: PolicyStore, classifier: C, breakers: B) -> Self {
        let policies = store.current();
        let mut partitions = HashMap::new();
        let states = build(&classifier, &breakers, &policies, None, &mut partitions, 0);
        Registry {
            store,
            classifier,
            breakers,
            states: Mutex::new(Arc::new(states)),
            partitions: Mutex::new(partitions),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Arc<States<C, B>>> {
        // Written in one step (an `Arc` swap): a panic elsewhere cannot leave it half-done.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The states for the store's running table, brought up to date first if a reload
    /// happened since they were built. Cold: taken when a reload is noticed, not per call.
    pub(crate) fn sync(&self) -> Arc<States<C, B>> {
        let mut states = self.lock();
        let current = self.store.current();
        if !Arc::ptr_eq(&states.policies, &current) {
            let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
            let next = build(
                &self.classifier,
                &self.breakers,
                &current,
                Some(&states),
                &mut partitions,
                states.generation + 1,
            );
            *states = Arc::new(next);
        }
        states.clone()
    }
}

/// The state of every operation of `policies`, reusing `old`'s where the rules are the same.
fn build<C: Clone, B: Breakers<C>>(
    classifier: &C,
    breakers: &B,
    policies: &Arc<Policies>,
    old: Option<&States<C, B>>,
    partitions: &mut HashMap<Arc<str>, (BulkheadPolicy, BulkheadLayer)>,
    generation: u64,
) -> States<C, B> {
    let mut next_partitions = HashMap::new();
    let mut state_of = |policy: &Arc<Policy>| {
        let before = old.and_then(|o| o.get(policy.name()));
        Arc::new(operation_state(
            classifier,
            breakers,
            policy,
            before.map(|b| &**b),
            partitions,
            &mut next_partitions,
        ))
    };
    let defaults = state_of(policies.defaults());
    let operations = policies
        .operations()
        .map(|p| (p.name_arc().clone(), state_of(p)))
        .collect();
    // Partitions no operation names any more are dropped here (in-flight calls keep theirs).
    *partitions = next_partitions;
    if let Some(old) = old {
        let removed: Vec<&str> = old
            .operations
            .keys()
            .filter(|name| policies.get(name).is_none())
            .map(|name| &**name)
            .collect();
        tracing::info!(
            generation,
            removed = ?removed,
            "palisade stack: per-operation state brought up to date after a policy reload"
        );
    }
    States {
        policies: policies.clone(),
        defaults,
        operations,
        generation,
    }
}

fn operation_state<C: Clone, B: Breakers<C>>(
    classifier: &C,
    breakers: &B,
    policy: &Arc<Policy>,
    before: Option<&OperationState<C, B>>,
    partitions: &HashMap<Arc<str>, (BulkheadPolicy, BulkheadLayer)>,
    next_partitions: &mut HashMap<Arc<str>, (BulkheadPolicy, BulkheadLayer)>,
) -> OperationState<C, B> {
    // A changed section is applied to the live piece of state in place (thresholds change,
    // the breaker's state, the budget's counts and the bulkhead's permits in use stay).
    let breaker = match before {
        Some(b) => {
            if b.policy.circuit_breaker != policy.circuit_breaker {
                B::reconfigure(&b.breaker, policy);
            }
            b.breaker.clone()
        }
        None => breakers.build(policy, ThroughLayers(classifier.clone())),
    };
    let budget = match before {
        Some(b) => {
            if b.policy.retry.budget != policy.retry.budget {
                b.budget.reconfigure(&policy.retry.budget);
            }
            b.budget.clone()
        }
        None => RetryBudget::new(&policy.retry.budget),
    };
    let partition = policy.bulkhead_partition().clone();
    let bulkhead = if let Some((_, layer)) = next_partitions.get(&partition) {
        // Operations naming one partition share it; the first one's limits apply.
        layer.clone()
    } else {
        let layer = match partitions.get(&partition) {
            Some((limits, layer)) => {
                if *limits != policy.bulkhead {
                    layer.reconfigure(&policy.bulkhead);
                }
                layer.clone()
            }
            None => BulkheadLayer::unshared(partition.clone(), &policy.bulkhead),
        };
        next_partitions.insert(partition, (policy.bulkhead.clone(), layer.clone()));
        layer
    };
    OperationState {
        policy: policy.clone(),
        breaker,
        bulkhead,
        budget,
    }
}

/// A view of a stack's per-operation state, for operators and tests: each operation's
/// breaker, bulkhead and retry budget as the running policy table has them.
///
/// Every method first brings the state up to date with the store, so a reload is visible here
/// even before the next call.
pub struct StackHandle<C, B: Breakers<C> = PerOperation> {
    pub(crate) registry: Arc<Registry<C, B>>,
}

impl<C, B: Breakers<C>> Clone for StackHandle<C, B> {
    fn clone(&self) -> Self {
        StackHandle {
            registry: self.registry.clone(),
        }
    }
}

impl<C, B: Breakers<C>> std::fmt::Debug for StackHandle<C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackHandle")
            .field("store", &self.registry.store)
            .finish_non_exhaustive()
    }
}

impl<C: Clone, B: Breakers<C>> StackHandle<C, B> {
    /// The policy store the stack runs under: reload it to change the stack's rules.
    pub fn store(&self) -> &PolicyStore {
        &self.registry.store
    }

    /// The breaker of `operation` (`defaults` for the defaults), if the running table has it:
    /// a [`CircuitBreakerHandle`](crate::circuit_breaker::CircuitBreakerHandle), or with
    /// [`PerKey`](super::PerKey) breakers the handle of the operation's keyed registry.
    pub fn breaker(&self, operation: &str) -> Option<B::Handle> {
        Some(B::handle(&self.registry.sync().get(operation)?.breaker))
    }

    /// The bulkhead of `operation`, to read its permits and queue.
    pub fn bulkhead(&self, operation: &str) -> Option<BulkheadLayer> {
        Some(self.registry.sync().get(operation)?.bulkhead.clone())
    }

    /// The retry budget of `operation`.
    pub fn budget(&self, operation: &str) -> Option<RetryBudget> {
        Some(self.registry.sync().get(operation)?.budget.clone())
    }

    /// How many times the per-operation state has been rebuilt after a reload.
    pub fn generation(&self) -> u64 {
        self.registry.sync().generation
    }
}
