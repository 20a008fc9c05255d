use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use tower_service::Service;

use super::NoReplay;
use super::breakers::{Breakers, PerOperation};
use super::fallback::{Fallback, NoFallback};
#[cfg(feature = "metrics")]
use super::future::MeteredFuture;
use super::future::{IntoStackError, ResponseFuture};
use super::registry::{Registry, StackHandle};
use super::select::{ByRequest, SelectOperation};
use super::table::{OperationService, StackMetrics, Table};
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
/// last; `call` readies that copy at once (with a no-op waker) and, if it is ready (a free
/// permit: the common case), calls it in place. If it is not, the copy moves into the
/// response future, which waits there for the operation's permit with the task's waker
/// (like tower's `Oneshot`), and the next call clones the operation's layers afresh. A full
/// bulkhead thus rejects or holds that call, not the whole service, and one operation's
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
/// reference count for the error metrics (unless turned off). The layers and the metrics
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
    #[cfg(feature = "metrics")]
    type Future = MeteredFuture<
        ResponseFuture<OperationService<S, C, P, B>, Req, C, F, S::Error>,
        ThroughLayers<C>,
    >;
    #[cfg(not(feature = "metrics"))]
    type Future = ResponseFuture<OperationService<S, C, P, B>, Req, C, F, S::Error>;

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
        // When the call started, for the metrics: read once the layers are ready (the
        // readiness check polls the user's service, after which the step reads the clock
        // afresh), so the layers' own reads share it.
        let start;
        let future = if !stack.policy.enabled {
            start = crate::clock::now();
            // The kill switch: refused before any layer or the service is touched.
            ResponseFuture::refused(
                Error::OperationDisabled(OperationDisabled {
                    operation: stack.policy.name_arc().clone(),
                }),
                operation,
                shared.classifier.clone(),
                shared.fallback.clone(),
            )
        } else {
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
            // The common case: the bulkhead has a permit and the layers are ready now, so the
            // call goes through this service's own copy of the layers. Otherwise that copy
            // moves into the future, which waits with the task's waker (the next call here
            // clones the operation's layers afresh).
            match mine
                .service
                .poll_ready(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(Ok(())) => {
                    start = crate::clock::now();
                    ResponseFuture::called(
                        mine.service.call(request),
                        operation,
                        shared.classifier.clone(),
                        shared.fallback.clone(),
                    )
                }
                Poll::Ready(Err(e)) => {
                    start = crate::clock::now();
                    // A service whose readiness failed is not called again.
                    *local = None;
                    ResponseFuture::refused(
                        e.into_stack_error(),
                        operation,
                        shared.classifier.clone(),
                        shared.fallback.clone(),
                    )
                }
                Poll::Pending => {
                    start = crate::clock::now();
                    let Some(mine) = local.take() else {
                        unreachable!("filled above");
                    };
                    ResponseFuture::new(
                        mine.service,
                        request,
                        operation,
                        shared.classifier.clone(),
                        shared.fallback.clone(),
                    )
                }
            }
        };
        #[cfg(feature = "metrics")]
        let future = match &stack.metrics {
            Some(metrics) => MeteredFuture::Metered {
                future: crate::metrics::ResponseFuture::bound(future, metrics.clone(), start),
            },
            None => MeteredFuture::Plain { future },
        };
        #[cfg(not(feature = "metrics"))]
        let _ = start;
        future
    }
}
