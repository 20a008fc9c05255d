use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::BulkheadLayer;
use crate::policy::{BulkheadPolicy, Policy};

/// One bulkhead: its permits and its queue, shared by every service built from layers of
/// the same name in the same [`BulkheadRegistry`].
///
/// Its limits can change while calls are in flight ([`Partition::reconfigure`]). The
/// semaphore always holds `max_concurrent + debt` permits (free or held): shrinking adds to
/// the debt, and permits coming back pay it off before anybody else can take them.
pub(crate) struct Partition {
    pub(crate) name: Arc<str>,
    pub(crate) semaphore: Semaphore,
    max_concurrent: AtomicUsize,
    max_queue: AtomicUsize,
    /// `max_wait` in nanoseconds (saturating).
    max_wait: AtomicU64,
    /// Permits to retire as they come back, after a shrink that found them in use.
    debt: AtomicUsize,
    pub(crate) waiting: AtomicUsize,
    /// Serialises reconfigurations (never taken on the call path).
    resize: Mutex<()>,
}

fn permits(max_concurrent: u32) -> usize {
    usize::try_from(max_concurrent)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

fn wait_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Partition {
    pub(crate) fn new(name: Arc<str>, policy: &BulkheadPolicy) -> Self {
        let max_concurrent = permits(policy.max_concurrent);
        Partition {
            name,
            semaphore: Semaphore::new(max_concurrent),
            max_concurrent: AtomicUsize::new(max_concurrent),
            max_queue: AtomicUsize::new(usize::try_from(policy.max_queue).unwrap_or(usize::MAX)),
            max_wait: AtomicU64::new(wait_nanos(policy.max_wait)),
            debt: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            resize: Mutex::new(()),
        }
    }

    pub(crate) fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::Relaxed)
    }

    pub(crate) fn max_queue(&self) -> usize {
        self.max_queue.load(Ordering::Relaxed)
    }

    pub(crate) fn max_wait(&self) -> Duration {
        Duration::from_nanos(self.max_wait.load(Ordering::Relaxed))
    }

    /// Permits held by calls right now (reserved or in flight).
    pub(crate) fn in_flight(&self) -> usize {
        // Read the debt first: a permit coming back between the reads can only make the
        // result too small by one, never wrap.
        let debt = self.debt.load(Ordering::Acquire);
        let available = self.semaphore.available_permits();
        (self.max_concurrent() + debt).saturating_sub(available)
    }

    /// Takes a free permit, if there is one (one compare-and-swap, no allocation).
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let permit = self.semaphore.try_acquire().ok()?;
        permit.forget();
        Some(Permit::new(self.clone()))
    }

    /// Takes a place in the queue, if one is free.
    pub(crate) fn enter_queue(self: &Arc<Self>) -> Option<QueuePlace> {
        if self.max_wait.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let max_queue = self.max_queue();
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_queue).then_some(n + 1)
            })
            .ok()
            .map(|_| QueuePlace(self.clone()))
    }

    /// Applies new limits in place. Growing adds permits at once (cancelling any debt
    /// first); shrinking retires free permits at once and the rest as calls in flight give
    /// theirs back, so no call in flight loses its permit. `max_queue` and `max_wait` apply
    /// to calls that join the queue from now on.
    pub(crate) fn reconfigure(&self, policy: &BulkheadPolicy) {
        let _serial = self
            .resize
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.max_queue.store(
            usize::try_from(policy.max_queue).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        self.max_wait
            .store(wait_nanos(policy.max_wait), Ordering::Relaxed);
        let new = permits(policy.max_concurrent);
        let old = self.max_concurrent.swap(new, Ordering::AcqRel);
        if new > old {
            let grow = new - old;
            let grow = grow - self.take_debt(grow);
            if grow > 0 {
                self.semaphore.add_permits(grow);
            }
        } else if new < old {
            // Debt first, then retire what is free: a permit coming back in between pays
            // the debt itself, one coming back before is free and retired here.
            self.debt.fetch_add(old - new, Ordering::AcqRel);
            self.collect_debt();
        }
    }

    /// Retires free permits against the debt.
    fn collect_debt(&self) {
        loop {
            let debt = self.debt.load(Ordering::Acquire);
            if debt == 0 {
                return;
            }
            let forgotten = self.semaphore.forget_permits(debt);
            if forgotten == 0 {
                return;
            }
            let paid = self.take_debt(forgotten);
            if paid < forgotten {
                // Permits coming back paid part of the debt meanwhile: return the surplus.
                self.semaphore.add_permits(forgotten - paid);
            }
        }
    }

    /// Takes up to `n` off the debt; returns how much it took.
    fn take_debt(&self, n: usize) -> usize {
        match self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d > 0).then(|| d - d.min(n))
            }) {
            Ok(before) => before.min(n),
            Err(_) => 0,
        }
    }

    /// A permit coming back: it pays the debt if there is one, else it is free again.
    fn release(&self) {
        if self.debt.load(Ordering::Acquire) != 0 && self.take_debt(1) == 1 {
            return;
        }
        self.semaphore.add_permits(1);
    }
}

/// One permit of a partition, given back (or retired against a shrink) when dropped.
pub(crate) struct Permit(Arc<Partition>);

impl Permit {
    /// Wraps a permit already taken from `partition`'s semaphore (and forgotten there).
    pub(crate) fn new(partition: Arc<Partition>) -> Self {
        Permit(partition)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Permit").field(&self.0.name).finish()
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent())
            .field("max_queue", &self.max_queue())
            .field("max_wait", &self.max_wait())
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
