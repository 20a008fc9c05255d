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
        self.partition.max_concurrent
    }

    /// Calls allowed to wait for a permit.
    pub fn max_queue(&self) -> usize {
        self.partition.max_queue
    }

    /// Longest wait for a permit.
    pub fn max_wait(&self) -> Duration {
        self.partition.max_wait
    }

    /// Permits free right now.
    pub fn available_permits(&self) -> usize {
        self.partition.semaphore.available_permits()
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
