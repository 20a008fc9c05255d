use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::ResponseFuture;
use super::partition::{Entry, Partition, Permit, QueuePlace};
use crate::error::{BulkheadFull, BulkheadRejection, Error};

/// Limits the calls in flight through one named partition, with a bounded queue and a
/// bounded wait.
///
/// # Readiness and cancellation
///
/// `poll_ready` reserves a permit (waiting in the queue if need be) and `call` hands it to
/// the response future, which gives it back when it completes or is dropped. Dropping the
/// service gives back a permit it reserved and its place in the queue. So no permit is lost
/// whichever future is dropped, at whichever point.
///
/// When the queue is full, or the wait runs out, `poll_ready` still returns `Ready(Ok)`, and
/// the next `call` fails at once with [`Error::BulkheadFull`] without reaching the inner
/// service: the service stays usable (an error from `poll_ready` would make most callers
/// drop it), and the rejection reaches the caller of that request. Polling readiness again
/// before that `call` looks again, so a rejection never outlives the moment it was decided.
///
/// # Fairness and cost
///
/// When a permit is free, `poll_ready` takes it with one compare-and-swap, and the response
/// future gives it back with one atomic add and two loads: no lock and no allocation on the
/// success path. Only a call that finds no free permit touches tokio's semaphore, where the
/// queue waits, and only a release that finds somebody waiting takes its lock, to hand the
/// permit over. Waiting in the queue allocates one box for the wait, freed when it ends.
///
/// Waiters get permits in arrival order among themselves (tokio's semaphore is FIFO). A call
/// arriving at the very moment a permit comes back, between the release making it free and
/// handing it to the queue, can take it first; the waiter then gets the next one.
///
/// # Panics
///
/// `call` panics if `poll_ready` has not returned `Ready(Ok)` since the last `call`, as
/// tower's own limits do: that is a bug in the caller, not bad input.
pub struct Bulkhead<S> {
    inner: S,
    partition: Arc<Partition>,
    state: State,
}

/// A wait in the queue: the permit, or the wait it was given when that ran out.
type Wait = Pin<Box<dyn Future<Output = Result<Permit, Duration>> + Send + Sync>>;

enum State {
    Idle,
    Waiting(Wait),
    Reserved(Permit),
    Rejected(BulkheadRejection),
}

impl<S> Bulkhead<S> {
    pub(crate) fn new(inner: S, partition: Arc<Partition>) -> Self {
        Bulkhead {
            inner,
            partition,
            state: State::Idle,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped (a reserved permit is given back).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The partition this bulkhead's calls take their permits from.
    pub(crate) fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }

    /// What `call` does with the outcome of a successful `poll_ready`, for a caller that
    /// calls the inner service itself: the reserved permit, or the rejection decided.
    ///
    /// # Panics
    ///
    /// Without a successful `poll_ready` first, like `call`.
    pub(crate) fn take_ready(&mut self) -> Result<Permit, BulkheadFull> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Reserved(permit) => Ok(permit),
            State::Rejected(reason) => Err(self.rejection(reason)),
            State::Idle | State::Waiting(_) => {
                panic!("Bulkhead::call without a successful poll_ready")
            }
        }
    }

    fn rejection(&self, reason: BulkheadRejection) -> BulkheadFull {
        self.partition.metrics.rejected(&reason);
        tracing::warn!(
            bulkhead = %self.partition.name,
            reason = %reason,
            max_concurrent = self.partition.max_concurrent(),
            max_queue = self.partition.max_queue(),
            "palisade: bulkhead full, call rejected"
        );
        BulkheadFull {
            bulkhead: self.partition.name.clone(),
            max_concurrent: self.partition.max_concurrent(),
            max_queue: self.partition.max_queue(),
            reason,
        }
    }
}

impl<S: Clone> Clone for Bulkhead<S> {
    /// A clone shares the partition but not this service's reserved permit.
    fn clone(&self) -> Self {
        Bulkhead::new(self.inner.clone(), self.partition.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for Bulkhead<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Waiting(_) => "waiting",
            State::Reserved(_) => "reserved",
            State::Rejected(_) => "rejected",
        };
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("partition", &self.partition)
            .field("state", &state)
            .finish()
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.state {
            State::Reserved(_) => return self.inner.poll_ready(cx).map_err(Error::Inner),
            // The hot path, kept straight: a free permit, taken with one compare-and-swap.
            // (A rejection decided by an earlier poll is stale now: look again.)
            State::Idle | State::Rejected(_) => {
                if let Some(permit) = self.partition.try_acquire() {
                    self.state = State::Reserved(permit);
                    return self.inner.poll_ready(cx).map_err(Error::Inner);
                }
                self.state = State::Idle;
            }
            State::Waiting(_) => {}
        }
        self.poll_ready_slow(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.take_ready() {
            Ok(permit) => ResponseFuture::called(self.inner.call(request), permit),
            Err(full) => ResponseFuture::rejected(full),
        }
    }
}

impl<S> Bulkhead<S> {
    /// No free permit: join the queue (or be rejected), or go on waiting in it.
    #[cold]
    fn poll_ready_slow<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error<S::Error>>>
    where
        S: Service<Req>,
    {
        loop {
            match &mut self.state {
                State::Reserved(_) => return self.inner.poll_ready(cx).map_err(Error::Inner),
                State::Rejected(_) => return Poll::Ready(Ok(())),
                State::Idle => {
                    self.state = match self.partition.try_acquire() {
                        Some(permit) => State::Reserved(permit),
                        None => match self.partition.enter_queue() {
                            Entry::Permit(permit) => State::Reserved(permit),
                            Entry::Queued(place) => State::Waiting(wait(&self.partition, place)),
                            Entry::Full => State::Rejected(BulkheadRejection::QueueFull),
                        },
                    };
                }
                State::Waiting(wait) => {
                    self.state = match wait.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(permit)) => State::Reserved(permit),
                        Poll::Ready(Err(waited)) => {
                            State::Rejected(BulkheadRejection::WaitTimedOut(waited))
                        }
                    };
                }
            }
        }
    }
}

/// Waits up to `max_wait` for a permit, holding a place in the queue until it ends or is
/// dropped.
fn wait(partition: &Arc<Partition>, place: QueuePlace) -> Wait {
    let partition = partition.clone();
    let max_wait = partition.max_wait();
    Box::pin(async move {
        let _place = place;
        match tokio::time::timeout(max_wait, partition.acquire_queued()).await {
            // Handed over without an await in between, so a drop cannot lose it.
            Ok(true) => Ok(Permit::queued(partition.clone())),
            Ok(false) | Err(_) => Err(max_wait),
        }
    })
}
