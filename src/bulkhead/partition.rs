use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::BulkheadLayer;
use crate::policy::{BulkheadPolicy, Policy};

/// One bulkhead: its permits and its queue, shared by every service built from layers of
/// the same name in the same [`BulkheadRegistry`].
pub(crate) struct Partition {
    pub(crate) name: Arc<str>,
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) max_concurrent: usize,
    pub(crate) max_queue: usize,
    pub(crate) max_wait: Duration,
    pub(crate) waiting: AtomicUsize,
}

impl Partition {
    pub(crate) fn new(name: Arc<str>, policy: &BulkheadPolicy) -> Self {
        let max_concurrent = usize::try_from(policy.max_concurrent)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Partition {
            name,
            semaphore: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_queue: usize::try_from(policy.max_queue).unwrap_or(usize::MAX),
            max_wait: policy.max_wait,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Takes a place in the queue, if one is free.
    pub(crate) fn enter_queue(self: &Arc<Self>) -> Option<QueuePlace> {
        if self.max_wait.is_zero() {
            return None;
        }
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_queue).then_some(n + 1)
            })
            .ok()
            .map(|_| QueuePlace(self.clone()))
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .field("available", &self.semaphore.available_permits())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

/// A place in a partition's queue, given back when dropped.
pub(crate) struct QueuePlace(Arc<Partition>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Named bulkheads: layers made from the same registry with the same name share permits and
/// queue. [`BulkheadLayer::new`] uses [`BulkheadRegistry::global`].
///
/// The first layer made for a name sets its limits; later layers of that name join it as it
/// is (their own limits are ignored). A partition lives as long as a layer or service uses it.
#[derive(Clone, Default)]
pub struct BulkheadRegistry {
    partitions: Arc<Mutex<HashMap<Arc<str>, Weak<Partition>>>>,
}

impl BulkheadRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        BulkheadRegistry::default()
    }

    /// The process-wide registry.
    pub fn global() -> &'static BulkheadRegistry {
        static GLOBAL: OnceLock<BulkheadRegistry> = OnceLock::new();
        GLOBAL.get_or_init(BulkheadRegistry::new)
    }

    /// A layer for the bulkhead `name`, made with `policy` if it does not exist yet.
    pub fn layer(&self, name: impl Into<Arc<str>>, policy: &BulkheadPolicy) -> BulkheadLayer {
        let name = name.into();
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = partitions.get(&name).and_then(Weak::upgrade) {
            return BulkheadLayer {
                partition: existing,
            };
        }
        partitions.retain(|_, weak| weak.strong_count() > 0);
        let partition = Arc::new(Partition::new(name.clone(), policy));
        partitions.insert(name, Arc::downgrade(&partition));
        BulkheadLayer { partition }
    }

    /// A layer for an operation's bulkhead: its `bulkhead.partition`, or its own name.
    pub fn layer_for(&self, policy: &Policy) -> BulkheadLayer {
        self.layer(policy.bulkhead_partition().clone(), &policy.bulkhead)
    }
}

impl fmt::Debug for BulkheadRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f.debug_set()
            .entries(partitions.values().filter_map(Weak::upgrade))
            .finish()
    }
}
