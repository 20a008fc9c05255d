use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tower_layer::Layer;

use super::Bulkhead;
use super::partition::{BulkheadRegistry, Partition};
use crate::policy::{BulkheadPolicy, Policy};

/// Applies a [`Bulkhead`]: limits the calls in flight and waiting for one named partition.
/// See the [module docs](super).
#[derive(Clone)]
pub struct BulkheadLayer {
    pub(crate) partition: Arc<Partition>,
}

impl BulkheadLayer {
    /// The bulkhead `name` of the [global registry](BulkheadRegistry::global), made with
    /// `policy` if it does not exist yet.
    pub fn new(name: impl Into<Arc<str>>, policy: &BulkheadPolicy) -> Self {
        BulkheadRegistry::global().layer(name, policy)
    }

    /// The bulkhead of a resolved operation policy (its partition, or its own name), from
    /// the global registry.
    pub fn from_policy(policy: &Policy) -> Self {
        BulkheadRegistry::global().layer_for(policy)
    }

    /// A bulkhead shared with nobody but this layer's clones.
    pub fn unshared(name: impl Into<Arc<str>>, policy: &BulkheadPolicy) -> Self {
        BulkheadLayer {
            partition: Arc::new(Partition::new(name.into(), policy)),
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.partition.name
    }

    /// Calls allowed in flight at once.
    pub fn max_concurrent(&self) -> usize {
        self.partition.max_concurrent()
    }

    /// Calls allowed to wait for a permit.
    pub fn max_queue(&self) -> usize {
        self.partition.max_queue()
    }

    /// Longest wait for a permit.
    pub fn max_wait(&self) -> Duration {
        self.partition.max_wait()
    }

    /// Permits free right now.
    pub fn available_permits(&self) -> usize {
        self.partition.available()
    }

    /// Permits held right now by calls reserved or in flight. After a shrink this may
    /// exceed [`max_concurrent`](Self::max_concurrent) until those calls finish.
    pub fn in_flight(&self) -> usize {
        self.partition.in_flight()
    }

    /// Resizes this bulkhead in place, for a policy reload: every clone of the layer, every
    /// service built from it and every layer sharing its name in the registry see the new
    /// limits, and the calls in flight and waiting keep their places.
    ///
    /// - Growing `max_concurrent` adds permits at once (waiters get them in order).
    /// - Shrinking it retires free permits at once and the others as the calls holding them
    ///   finish; a permit held by a call in flight is never taken back, so for a while more
    ///   calls than the new limit may be in flight, and no new call starts until they are
    ///   under it.
    /// - `max_queue` and `max_wait` apply to calls that join the queue from now on; calls
    ///   already waiting keep the wait they were given.
    ///
    /// `policy.partition` is ignored: a bulkhead does not change its name.
    pub fn reconfigure(&self, policy: &BulkheadPolicy) {
        self.partition.reconfigure(policy);
    }

    /// Calls waiting for a permit right now.
    pub fn waiting(&self) -> usize {
        self.partition.waiting.load(Ordering::Acquire)
    }
}

impl fmt::Debug for BulkheadLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BulkheadLayer")
            .field(&self.partition)
            .finish()
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(inner, self.partition.clone())
    }
}
