use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use tower_service::Service;

use super::NoReplay;
use super::breakers::{Breakers, PerOperation};
use super::fallback::{Fallback, NoFallback};
use super::future::{CallState, Held, IntoStackError, ResponseFuture, State, admitted, running};
use super::registry::{Registry, StackHandle};
use super::select::{ByRequest, SelectOperation};
use super::table::{Attempts, OperationService, OperationStack, Parts, StackMetrics, Table};
use crate::classify::Classify;
#[cfg(feature = "metrics")]
use crate::error::ThroughLayers;
use crate::error::{Error, OperationDisabled};
#[cfg(feature = "metrics")]
use crate::metrics::ErrorMetricsLayer;
use crate::retry::Replay;

/// A service behind the whole resilience stack, made by
/// [`ResilienceLayer`](super::ResilienceLayer).
///
/// Each call selects its operation from the running policy table, then goes through that
/// operation's kill switch, bulkhead, total timeout, retry, circuit breaker and attempt
/// timeout; a failure goes to the fallback, if one is configured.
///
/// # Readiness
///
/// `poll_ready` is always ready: which bulkhead applies is known only once the request is
/// seen. Each `Resilience` value keeps its own copy of the layers of the operation it called
/// last. In the common case `call` takes a free permit straight from the operation's
/// bulkhead partition, readies the layers below the bulkhead at once (with a no-op waker) and
/// calls them in place. Otherwise (no free permit, or the service not ready) it asks the
/// copy's bulkhead, which queues or rejects the call; if the copy is not ready then, it moves
/// into the response future, which waits there for the operation's permit with the task's
/// waker (like tower's `Oneshot`), and the next call clones the operation's layers afresh. A
/// full bulkhead thus rejects or holds that call, not the whole service, and one operation's
/// waiting never holds up another's.
///
/// # Reloads
///
/// A call takes the operation's layers as they are when it starts: a reload never changes
/// the rules of a call in flight. The first call after a reload (noticed with one atomic
/// load) rebuilds the operation layers of this service (and of its clones) from the
/// per-operation state, which the layer's services share; each value's own copy names the
/// table it came from, so it is replaced at its next call.
///
/// # Cost
///
/// Per call: one lock-free load of the table, the selection (for `http::Request`s an
/// extension lookup and a hash lookup), one hash of a pointer, the layers' own costs on this
/// value's copy of them (no clone of them when the value is called again for the same
/// operation; one clone when it is a fresh clone, as axum makes per request), and one
/// reference count, on the operation's parts (its bulkhead partition, retry parts and error
/// metrics), which the response future holds for all of them. The layers and the metrics
/// share one clock read when the call is made and one when it completes, instead of one
/// each (see [`Outside`](super::Outside)). No lock, and no allocation of its own. Figures in
/// `docs/performance.md`.
pub struct Resilience<
    S,
    C,
    P = NoReplay,
    Sel = ByRequest,
    F = NoFallback,
    B: Breakers<C> = PerOperation,
> {
    shared: Arc<Shared<S, C, P, Sel, F, B>>,
    /// This service's own copy of the layers of the operation it called last: called in
    /// place while the table and the operation stay the same, so a call clones no layer.
    /// Empty in a new clone (a clone per request, as axum makes, costs what it did).
    local: Option<Local<S, C, P, B>>,
}

/// The layers of one operation of one table, owned by one [`Resilience`] value.
struct Local<S, C, P, B: Breakers<C>> {
    /// The [`Table::id`] the layers came from, and the address of the operation's stack in
    /// it (compared only while that table is the running one, so the address is its own).
    table: u64,
    stack: usize,
    /// The key of the operation's stack in that table (the address of its policy).
    policy: usize,
    service: OperationService<S, C, P, B>,
}

struct Shared<S, C, P, Sel, F, B: Breakers<C>> {
    registry: Arc<Registry<C, B>>,
    /// The service every operation's layers are built around, cloned once per operation and
    /// rebuild. Locked only while rebuilding after a reload.
    inner: Mutex<S>,
    table: ArcSwap<Table<S, C, P, B>>,
    classifier: C,
    replay: P,
    select: Sel,
    fallback: F,
    /// The stack's error metrics (`None`: turned off), recorded around the whole call,
    /// fallback included.
    metrics: StackMetrics<C>,
}

impl<S, C, P, Sel, F, B> Resilience<S, C, P, Sel, F, B>
where
    S: Clone,
    C: Clone,
    P: Clone,
    B: Breakers<C>,
{
    pub(crate) fn new(
        inner: S,
        registry: Arc<Registry<C, B>>,
        classifier: C,
        replay: P,
        select: Sel,
        fallback: F,
        #[cfg(feature = "metrics")] metrics: Option<ErrorMetricsLayer<ThroughLayers<C>>>,
    ) -> Self {
        #[cfg(not(feature = "metrics"))]
        let metrics = std::marker::PhantomData;
        let changes = registry.store.subscribe();
        let states = registry.sync();
        let table = Table::build(&inner, &states, changes, &classifier, &replay, &metrics);
        Resilience {
            shared: Arc::new(Shared {
                registry,
                inner: Mutex::new(inner),
                table: ArcSwap::from_pointee(table),
                classifier,
                replay,
                select,
                fallback,
                metrics,
            }),
            local: None,
        }
    }

    /// The per-operation state this service shares with the rest of its layer's services.
    pub fn handle(&self) -> StackHandle<C, B> {
        StackHandle {
            registry: self.shared.registry.clone(),
        }
    }

    /// Rebuilds the operation layers after a reload, once for this service and its clones.
    #[cold]
    fn refresh(shared: &Shared<S, C, P, Sel, F, B>) {
        let inner = shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !shared.table.load().is_stale() {
            return; // a clone got here first
        }
        // Subscribed before the table is read, so a reload in between is noticed next call.
        let changes = shared.registry.store.subscribe();
        let states = shared.registry.sync();
        let table = Table::build(
            &*inner,
            &states,
            changes,
            &shared.classifier,
            &shared.replay,
            &shared.metrics,
        );
        shared.table.store(Arc::new(table));
    }
}

impl<S, C, P, Sel, F, B: Breakers<C>> Clone for Resilience<S, C, P, Sel, F, B> {
    fn clone(&self) -> Self {
        Resilience {
            shared: self.shared.clone(),
            local: None,
        }
    }
}

impl<S, C, P, Sel, F, B: Breakers<C>> std::fmt::Debug for Resilience<S, C, P, Sel, F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilience")
            .field("store", &self.shared.registry.store)
            .finish_non_exhaustive()
    }
}

impl<S, C, P, Sel, F, B, Req> Service<Req> for Resilience<S, C, P, Sel, F, B>
where
    B: Breakers<C>,
    Attempts<S, C, B>: Service<Req, Response = S::Response, Error = Error<Error<S::Error>>> + Clone,
    OperationService<S, C, P, B>: Service<Req, Response = S::Response> + Clone,
    <OperationService<S, C, P, B> as Service<Req>>::Error: IntoStackError<S::Error>,
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    P: Replay<Req, S::Response> + Clone,
    Sel: SelectOperation<Req>,
    F: Fallback<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S, Req, C, P, F, B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // One clock read for every layer of this call (see `crate::clock`): the metrics'
        // start, the timeouts' deadlines, the breaker's window; the service itself runs
        // outside it.
        let _step = crate::clock::step();
        let Resilience { shared, local } = self;
        let mut table = shared.table.load();
        if table.is_stale() {
            Self::refresh(shared);
            table = shared.table.load();
        }
        let shared = &**shared;
        // A selection that is the same for every request (by name) is made once per table
        // and service value: the copy of the layers remembers the operation it is for.
        let (stack, key) = match local {
            Some(l) if l.table == table.id && shared.select.same_for_every_request() => {
                (table.stack_by_key(l.policy), l.policy)
            }
            _ => {
                let policy = shared.select.select(&table.policies, &request);
                (table.stack(policy), Arc::as_ptr(policy) as usize)
            }
        };
        // The operation's name is kept for the fallback only: without one, a call holds no
        // reference count of its own for it.
        let operation = shared
            .fallback
            .is_active()
            .then(|| stack.policy.name_arc().clone());
        let parts = stack.parts.clone();
        // When the call started, for the metrics (`None`: they are off): read once the
        // layers are ready (the readiness check polls the user's service, after which the
        // step reads the clock afresh), so the layers' own reads share it.
        #[cfg(feature = "metrics")]
        let metered = parts.metrics.is_some();
        #[cfg(not(feature = "metrics"))]
        let metered = false;
        let mut start = None;
        let mut mark_start = || start = metered.then(crate::clock::now);
        let state = if stack.policy.enabled {
            Self::start(&parts, local, &table, stack, key, request, &mut mark_start)
        } else {
            // The kill switch: refused before any layer or the service is touched.
            mark_start();
            State::Refused {
                error: Some(Error::OperationDisabled(OperationDisabled {
                    operation: stack.policy.name_arc().clone(),
                })),
            }
        };
        ResponseFuture::new(
            parts,
            state,
            start,
            operation,
            shared.classifier.clone(),
            shared.fallback.clone(),
        )
    }
}

impl<S, C, P, Sel, F, B> Resilience<S, C, P, Sel, F, B>
where
    S: Clone,
    B: Breakers<C>,
{
    /// Makes a call of an enabled operation on this value's copy of its layers (`local`,
    /// made from `stack` if it is not that operation's of `table`), and marks when it started
    /// (`mark_start`, once the layers are ready).
    #[inline(always)]
    fn start<Req>(
        parts: &Parts<S, C, P, B>,
        local: &mut Option<Local<S, C, P, B>>,
        table: &Table<S, C, P, B>,
        stack: &OperationStack<S, C, P, B>,
        key: usize,
        request: Req,
        mut mark_start: impl FnMut(),
    ) -> CallState<S, Req, C, P, F, B>
    where
        S: Service<Req>,
        Attempts<S, C, B>:
            Service<Req, Response = S::Response, Error = Error<Error<S::Error>>> + Clone,
        OperationService<S, C, P, B>: Service<Req, Response = S::Response> + Clone,
        <OperationService<S, C, P, B> as Service<Req>>::Error: IntoStackError<S::Error>,
        C: Classify<S::Response, S::Error>,
        P: Replay<Req, S::Response>,
        F: Fallback<S::Response, S::Error>,
    {
        let id = std::ptr::from_ref(stack) as usize;
        let mine = match local {
            Some(l) if l.table == table.id && l.stack == id => l,
            _ => local.insert(Local {
                table: table.id,
                stack: id,
                policy: key,
                service: stack.service.clone(),
            }),
        };
        let mut cx = Context::from_waker(Waker::noop());
        // The common case: a free permit, taken straight from the partition (no reference
        // count: the future gives it back through `parts`), and the layers below the
        // bulkhead ready now, called in place on this value's own copy of them.
        if parts.partition.try_take() {
            let retry = mine.service.get_mut().get_mut();
            match retry.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    mark_start();
                    return running::<S, Req, C, P, F, B>(parts, retry, request, Held::Raw);
                }
                Poll::Ready(Err(e)) => {
                    parts.partition.give_back();
                    // A service whose readiness failed is not called again.
                    *local = None;
                    mark_start();
                    let error = Error::Inner(Error::Inner(e)).into_stack_error();
                    return State::Refused { error: Some(error) };
                }
                // Not ready: the permit goes back, and the bulkhead takes one of its own
                // below, to wait with.
                Poll::Pending => parts.partition.give_back(),
            }
        }
        // Otherwise through the bulkhead service: it queues the call or rejects it. If it is
        // not ready now, this value's copy of the layers moves into the future, which waits
        // with the task's waker (the next call here clones the operation's layers afresh).
        let ready = mine.service.poll_ready(&mut cx);
        mark_start();
        match ready {
            Poll::Ready(Ok(())) => {
                admitted::<S, Req, C, P, F, B>(parts, &mut mine.service, request)
            }
            Poll::Ready(Err(e)) => {
                // A service whose readiness failed is not called again.
                *local = None;
                State::Refused {
                    error: Some(e.into_stack_error()),
                }
            }
            Poll::Pending => {
                let Some(mine) = local.take() else {
                    unreachable!("filled above");
                };
                State::Queued {
                    service: mine.service,
                    request: Some(request),
                }
            }
        }
    }
}
