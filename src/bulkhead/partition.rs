use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::BulkheadLayer;
use super::metrics::BulkheadMetrics;
use crate::policy::{BulkheadPolicy, Policy};

/// One bulkhead: its permits and its queue, shared by every service built from layers of
/// the same name in the same [`BulkheadRegistry`].
///
/// # Where the permits are
///
/// A free permit is either in `free`, an atomic count that calls take from and give back to
/// with one atomic operation each and no lock, or in `semaphore`, where the calls waiting in
/// the queue park (tokio's `Semaphore`, FIFO). A permit goes into the semaphore only when a
/// release finds somebody waiting: with nobody waiting, the semaphore (and its lock) is never
/// touched.
///
/// No wake-up is lost: a release adds to `free` and then reads `waiting`; a waiter adds to
/// `waiting` and then looks at `free` (all `SeqCst`). Whatever the interleaving, one of the
/// two sees the other's write: either the waiter takes the permit from `free` itself, or the
/// release moves it into the semaphore, where the waiter gets it (or another call took the
/// permit first, and its own release is the same race again). A permit moved there for a
/// waiter that has left meanwhile is not lost: calls take from the semaphore too when `free`
/// is empty.
///
/// Its limits can change while calls are in flight ([`Partition::reconfigure`]). There are
/// always `max_concurrent + debt` permits (free, in the semaphore or held): shrinking adds to
/// the debt, and permits coming back pay it off before anybody else can take them. The one
/// exception is a release that read the debt just before a shrink raised it: its permit goes
/// back to `free` and is retired right after, unless a call takes it in that instant, in
/// which case the next release pays instead (the same as before the free count existed).
pub(crate) struct Partition {
    pub(crate) name: Arc<str>,
    /// Free permits on the lock-free path.
    free: AtomicUsize,
    /// Free permits handed over to waiters (and any left there by a waiter that has gone).
    semaphore: Semaphore,
    max_concurrent: AtomicUsize,
    max_queue: AtomicUsize,
    /// `max_wait` in nanoseconds (saturating).
    max_wait: AtomicU64,
    /// Permits to retire as they come back, after a shrink that found them in use.
    debt: AtomicUsize,
    /// Calls in the queue (each holds a [`QueuePlace`]).
    pub(crate) waiting: AtomicUsize,
    /// Serialises reconfigurations (never taken on the call path).
    resize: Mutex<()>,
    pub(crate) metrics: BulkheadMetrics,
}

fn permits(max_concurrent: u32) -> usize {
    usize::try_from(max_concurrent)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

fn wait_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a call that found no free permit gets when it tries to join the queue.
pub(crate) enum Entry {
    /// A permit came back meanwhile: no need to wait.
    Permit(Permit),
    /// A place in the queue: wait on the semaphore.
    Queued(QueuePlace),
    /// The queue is full (or there is none).
    Full,
}

impl Partition {
    pub(crate) fn new(name: Arc<str>, policy: &BulkheadPolicy) -> Self {
        let max_concurrent = permits(policy.max_concurrent);
        Partition {
            metrics: BulkheadMetrics::new(&name),
            name,
            free: AtomicUsize::new(max_concurrent),
            semaphore: Semaphore::new(0),
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

    /// Permits free right now (on the lock-free path or in the semaphore).
    pub(crate) fn available(&self) -> usize {
        self.free
            .load(Ordering::SeqCst)
            .saturating_add(self.semaphore.available_permits())
    }

    /// Permits held by calls right now (reserved or in flight).
    pub(crate) fn in_flight(&self) -> usize {
        // Read the debt first: a permit coming back between the reads can only make the
        // result too small by one, never wrap.
        let debt = self.debt.load(Ordering::SeqCst);
        let available = self.available();
        (self.max_concurrent() + debt).saturating_sub(available)
    }

    /// Takes a free permit, if there is one: one compare-and-swap on `free`, no lock and no
    /// allocation (the semaphore is looked at only when `free` is empty).
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        self.try_take().then(|| Permit(self.clone()))
    }

    /// Takes a free permit without wrapping it: whoever takes it must hand it to
    /// [`give_back`](Self::give_back) exactly once, on every path (the stack's future does,
    /// holding the partition through its operation's parts, so a call takes no reference
    /// count of its own for its permit).
    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        if self.take_free(1) == 1 || self.take_from_semaphore() {
            self.metrics.acquired();
            true
        } else {
            false
        }
    }

    /// Gives back a permit taken with [`try_take`](Self::try_take).
    #[inline]
    pub(crate) fn give_back(&self) {
        self.metrics.released();
        self.release();
    }

    /// Takes up to `n` permits from `free`; returns how many it took.
    #[inline]
    fn take_free(&self, n: usize) -> usize {
        let mut free = self.free.load(Ordering::SeqCst);
        loop {
            let take = free.min(n);
            if take == 0 {
                return 0;
            }
            match self.free.compare_exchange_weak(
                free,
                free - take,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return take,
                Err(now) => free = now,
            }
        }
    }

    /// Takes a permit left in the semaphore (one handed over for a waiter that has gone).
    #[cold]
    fn take_from_semaphore(&self) -> bool {
        match self.semaphore.try_acquire() {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Joins the queue, if a place is free; then looks for a free permit once more, which
    /// closes the race with a release that read `waiting` before this call was counted.
    pub(crate) fn enter_queue(self: &Arc<Self>) -> Entry {
        if self.max_wait.load(Ordering::Relaxed) == 0 {
            return Entry::Full;
        }
        let max_queue = self.max_queue();
        if self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max_queue).then_some(n + 1)
            })
            .is_err()
        {
            return Entry::Full;
        }
        if let Some(permit) = self.try_acquire() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Entry::Permit(permit);
        }
        self.metrics.queued();
        Entry::Queued(QueuePlace(self.clone()))
    }

    /// Waits on the semaphore for a permit handed over by a release.
    pub(crate) async fn acquire_queued(&self) -> bool {
        // The semaphore is never closed; a closed one would count as a wait that ran out.
        match self.semaphore.acquire().await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
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
        let old = self.max_concurrent.swap(new, Ordering::SeqCst);
        if new > old {
            let grow = new - old;
            let grow = grow - self.take_debt(grow);
            if grow > 0 {
                self.put(grow);
            }
        } else if new < old {
            // Debt first, then retire what is free: a permit coming back in between pays
            // the debt itself, one coming back before is free and retired here.
            self.debt.fetch_add(old - new, Ordering::SeqCst);
            self.collect_debt();
        }
    }

    /// Retires free permits (from `free`, then from the semaphore) against the debt.
    fn collect_debt(&self) {
        loop {
            let debt = self.debt.load(Ordering::SeqCst);
            if debt == 0 {
                return;
            }
            let mut retired = self.take_free(debt);
            if retired == 0 {
                retired = self.semaphore.forget_permits(debt);
            }
            if retired == 0 {
                return;
            }
            let paid = self.take_debt(retired);
            if paid < retired {
                // Permits coming back paid part of the debt meanwhile: return the surplus.
                self.put(retired - paid);
            }
        }
    }

    /// Takes up to `n` off the debt; returns how much it took.
    fn take_debt(&self, n: usize) -> usize {
        match self
            .debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
                (d > 0).then(|| d - d.min(n))
            }) {
            Ok(before) => before.min(n),
            Err(_) => 0,
        }
    }

    /// Makes `n` permits free: into `free` first, then, if anybody waits, as many of them as
    /// there are waiters into the semaphore, where the waiters get them in order.
    #[inline]
    fn put(&self, n: usize) {
        self.free.fetch_add(n, Ordering::SeqCst);
        let waiting = self.waiting.load(Ordering::SeqCst);
        if waiting != 0 {
            self.hand_over(n.min(waiting));
        }
        // A shrink that ran between the debt check in `release` and the add above found
        // nothing free to retire: retire it now rather than let a new call take it.
        if self.debt.load(Ordering::SeqCst) != 0 {
            self.collect_debt();
        }
    }

    /// Moves up to `n` free permits into the semaphore, for the calls waiting there (the
    /// only place where a call takes tokio's semaphore lock).
    #[cold]
    fn hand_over(&self, n: usize) {
        let moved = self.take_free(n);
        if moved > 0 {
            self.semaphore.add_permits(moved);
        }
    }

    /// A permit coming back: it pays the debt if there is one, else it is free again.
    #[inline]
    fn release(&self) {
        if self.debt.load(Ordering::SeqCst) != 0 && self.take_debt(1) == 1 {
            return;
        }
        self.put(1);
    }
}

/// One permit of a partition, given back (or retired against a shrink) when dropped.
///
/// It keeps the partition alive with an `Arc` (one reference-count increment when taken, one
/// decrement when given back): a response future may outlive every service and layer of its
/// bulkhead, and with `unsafe` forbidden nothing cheaper can guarantee the partition is still
/// there when the permit comes back.
pub(crate) struct Permit(Arc<Partition>);

impl Permit {
    /// Wraps a permit a queued call got from the semaphore (counted as acquired here; the
    /// lock-free path counts its own in [`Partition::try_take`]).
    pub(crate) fn queued(partition: Arc<Partition>) -> Self {
        partition.metrics.acquired();
        Permit(partition)
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.0.give_back();
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
            .field("available", &self.available())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

/// A place in a partition's queue, given back when dropped.
pub(crate) struct QueuePlace(Arc<Partition>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.dequeued();
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

/// The two orders in which a release and a call joining the queue can meet, played step by
/// step (the multi-threaded stress test in `tests/bulkhead_stress.rs` plays them at random).
#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn partition(max_concurrent: u32) -> Arc<Partition> {
        let policy = BulkheadPolicy {
            max_concurrent,
            max_queue: 4,
            max_wait: Duration::from_secs(60),
            ..BulkheadPolicy::default()
        };
        Arc::new(Partition::new("test".into(), &policy))
    }

    /// Free permits on the lock-free path, and in the semaphore.
    fn free_and_handed_over(p: &Partition) -> (usize, usize) {
        (
            p.free.load(Ordering::SeqCst),
            p.semaphore.available_permits(),
        )
    }

    fn queued(entry: Entry) -> QueuePlace {
        match entry {
            Entry::Queued(place) => place,
            Entry::Permit(_) => panic!("expected to wait, got a permit"),
            Entry::Full => panic!("expected to wait, the queue was full"),
        }
    }

    #[test]
    fn a_permit_released_before_the_call_joins_the_queue_is_found_by_its_second_look() {
        let p = partition(1);
        let held = p.try_acquire().expect("one permit");
        // The call finds nothing free...
        assert!(p.try_acquire().is_none());
        // ...the permit comes back before the call is counted as waiting, so the release
        // sees nobody to hand it to and leaves it in `free`...
        drop(held);
        assert_eq!(p.semaphore.available_permits(), 0);
        // ...and the call, once counted, looks again and takes it instead of parking.
        match p.enter_queue() {
            Entry::Permit(_) => {}
            _ => panic!("the second look must find the permit"),
        }
        assert_eq!(p.waiting.load(Ordering::SeqCst), 0);
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn a_permit_released_after_the_call_joined_the_queue_is_handed_to_it() {
        let p = partition(1);
        let held = p.try_acquire().expect("one permit");
        let place = queued(p.enter_queue());
        let mut wait = pin!(p.acquire_queued());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        // The release sees the waiter and moves the permit into the semaphore for it.
        drop(held);
        assert_eq!(p.free.load(Ordering::SeqCst), 0);
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(true));
        drop(place);
        let permit = Permit::queued(p.clone());
        assert_eq!(p.in_flight(), 1);
        drop(permit);
        assert_eq!((p.in_flight(), p.available()), (0, 1));
    }

    #[test]
    fn a_permit_handed_to_a_waiter_that_left_is_taken_by_the_next_call() {
        let p = partition(1);
        let held = p.try_acquire().expect("one permit");
        let place = queued(p.enter_queue());
        drop(held);
        // The waiter goes before it picks the permit up: it is left in the semaphore...
        drop(place);
        assert_eq!(free_and_handed_over(&p), (0, 1));
        assert_eq!(p.available(), 1);
        // ...where the next call finds it, and giving it back puts it on the lock-free path.
        let permit = p.try_acquire().expect("the permit left in the semaphore");
        drop(permit);
        assert_eq!(free_and_handed_over(&p), (1, 0));
    }

    #[test]
    fn a_shrink_retires_permits_left_in_the_semaphore_too() {
        let p = partition(2);
        let a = p.try_acquire().expect("a permit");
        let b = p.try_acquire().expect("a permit");
        let place = queued(p.enter_queue());
        drop(a);
        drop(place);
        // The permit that came back went to the semaphore, for the waiter that left.
        assert_eq!(p.semaphore.available_permits(), 1);
        p.reconfigure(&BulkheadPolicy {
            max_concurrent: 1,
            ..BulkheadPolicy::default()
        });
        assert_eq!((p.in_flight(), p.available()), (1, 0));
        drop(b);
        assert_eq!((p.in_flight(), p.available()), (0, 1));
    }
}
