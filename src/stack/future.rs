use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use tokio::time::Instant;

use super::breakers::Breakers;
use super::fallback::{Failure, Fallback};
use super::table::{Attempts, OperationService, Parts, RetryOf};
use crate::bulkhead::{Partition, Permit};
use crate::classify::{Classification, Classify, Outcome};
use crate::error::Error;
use crate::retry::{Replay, Run};
use crate::timeout::{Deadline, Listing, Watch};

/// The nested error of an operation's layers, folded into one [`Error`]. A call that failed
/// on its only attempt comes out as the error it met ([`Error::CircuitOpen`],
/// [`Error::Timeout`], [`Error::Inner`], ...); one that was retried, or whose retry the budget
/// refused, as [`Error::Retried`] / [`Error::RetryBudgetExhausted`] around its last attempt's.
pub trait IntoStackError<E> {
    /// One level: `Error<E>`.
    fn into_stack_error(self) -> Error<E>;
}

impl<E> IntoStackError<E> for Error<Error<Error<Error<Error<E>>>>> {
    fn into_stack_error(self) -> Error<E> {
        match self.flatten().flatten().flatten().flatten() {
            // One attempt and no retry refused by the budget: the retry layer adds nothing a
            // caller needs, and the error it met is easier to match on its own.
            Error::Retried(r) if r.attempts == 1 => *r.last,
            other => other,
        }
    }
}

/// Where a call's permit is: given back exactly once, when the call ends or its future is
/// dropped.
pub(crate) enum Held {
    /// Taken straight from the partition ([`Partition::try_take`]); given back through the
    /// operation's parts.
    Raw,
    /// Taken by the bulkhead service (after a wait): given back when dropped.
    Owned(#[expect(dead_code, reason = "held for its Drop, which gives the permit back")] Permit),
    /// Given back.
    Released,
}

impl Held {
    fn release(&mut self, partition: &Partition) {
        if let Held::Raw = std::mem::replace(self, Held::Released) {
            partition.give_back();
        }
    }
}

pin_project! {
    /// The response future of [`Resilience`](super::Resilience): one future for the
    /// operation's bulkhead permit, total timeout and retries (each attempt through the
    /// circuit breaker and the attempt timeout), the fallback and the stack's error metrics.
    ///
    /// It does what those layers' futures would do nested in one another, with their own
    /// code, but holds one reference count for all of them, not one each, and is moved as
    /// one future instead of six (see `docs/performance.md`).
    ///
    /// Dropping it at any point drops what it holds: the call in flight, then the permit,
    /// the fallback's future; a call dropped before it ended is counted as cancelled.
    pub struct ResponseFuture<S, Req, C, P, F, B>
    where
        S: Service<Req>,
        B: Breakers<C>,
        Attempts<S, C, B>: Service<Req>,
        F: Fallback<S::Response, S::Error>,
    {
        parts: Arc<Parts<S, C, P, B>>,
        #[pin]
        state: CallState<S, Req, C, P, F, B>,
        // When the call started, while the stack's error metrics are to record it.
        start: Option<Instant>,
        // Only kept when there is a fallback to hand a failure to.
        operation: Option<Arc<str>>,
        classifier: C,
        fallback: F,
    }

    impl<S, Req, C, P, F, B> PinnedDrop for ResponseFuture<S, Req, C, P, F, B>
    where
        S: Service<Req>,
        B: Breakers<C>,
        Attempts<S, C, B>: Service<Req>,
        F: Fallback<S::Response, S::Error>,
    {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let mut held = Held::Released;
            if let StateProj::Running { permit, .. } = this.state.as_mut().project() {
                held = std::mem::replace(permit, Held::Released);
            }
            // The call in flight goes first, then its permit, as the bulkhead's own future
            // would have it.
            this.state.set(State::Done);
            held.release(&this.parts.partition);
            #[cfg(feature = "metrics")]
            if this.start.take().is_some()
                && let Some(metrics) = &this.parts.metrics
            {
                metrics.cancelled();
            }
        }
    }
}

/// Where a call of the stack is.
pub(crate) type CallState<S, Req, C, P, F, B> = State<
    OperationService<S, C, P, B>,
    Req,
    Run<Attempts<S, C, B>, Req>,
    <F as Fallback<<S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Future,
    Error<<S as Service<Req>>::Error>,
>;

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<Svc, Req, R, FF, Err> {
        // Holding the permit: the total timeout's watch and the retried attempts (`None`:
        // the deadline had expired before the call, which was not made).
        Running { #[pin] watch: Watch, #[pin] run: Option<R>, permit: Held },
        // Waiting for the bulkhead's permit (or the service's readiness), on this value's own
        // copy of the layers.
        Queued { service: Svc, request: Option<Req> },
        Refused { error: Option<Err> },
        Fallback { #[pin] future: FF },
        Done,
    }
}

impl<S, Req, C, P, F, B> ResponseFuture<S, Req, C, P, F, B>
where
    S: Service<Req>,
    B: Breakers<C>,
    Attempts<S, C, B>: Service<Req>,
    F: Fallback<S::Response, S::Error>,
{
    pub(crate) fn new(
        parts: Arc<Parts<S, C, P, B>>,
        state: CallState<S, Req, C, P, F, B>,
        start: Option<Instant>,
        operation: Option<Arc<str>>,
        classifier: C,
        fallback: F,
    ) -> Self {
        ResponseFuture {
            parts,
            state,
            start,
            operation,
            classifier,
            fallback,
        }
    }
}

/// Makes the call on the readied retry service, under the total timeout: what the total
/// timeout's and the retry's `call` do.
#[inline(always)]
pub(crate) fn running<S, Req, C, P, F, B>(
    parts: &Parts<S, C, P, B>,
    retry: &mut RetryOf<S, C, P, B>,
    request: Req,
    permit: Held,
) -> CallState<S, Req, C, P, F, B>
where
    S: Service<Req>,
    B: Breakers<C>,
    Attempts<S, C, B>: Service<Req, Response = S::Response> + Clone,
    P: Replay<Req, S::Response>,
    F: Fallback<S::Response, S::Error>,
{
    let now = crate::clock::now();
    match crate::timeout::binding(&parts.total, now, Deadline::current()) {
        Some((deadline, kind, limit)) => State::Running {
            watch: Watch::new(
                crate::timeout::listing(&parts.total, now),
                deadline,
                kind,
                limit,
            ),
            run: Some(deadline.sync_scope(|| retry.start(request))),
            permit,
        },
        None => State::Running {
            watch: Watch::expired(Listing::Off(parts.total.clone())),
            run: None,
            permit,
        },
    }
}

/// Makes the call on layers whose bulkhead is ready: with the permit it reserved, or refused
/// with the rejection it decided (a full queue, a wait that ran out). Inlined like
/// [`running`], so the call's state is built where the future is.
#[inline(always)]
pub(crate) fn admitted<S, Req, C, P, F, B>(
    parts: &Parts<S, C, P, B>,
    service: &mut OperationService<S, C, P, B>,
    request: Req,
) -> CallState<S, Req, C, P, F, B>
where
    S: Service<Req>,
    B: Breakers<C>,
    Attempts<S, C, B>: Service<Req, Response = S::Response> + Clone,
    P: Replay<Req, S::Response>,
    F: Fallback<S::Response, S::Error>,
{
    match service.take_ready() {
        Ok(permit) => running::<S, Req, C, P, F, B>(
            parts,
            service.get_mut().get_mut(),
            request,
            Held::Owned(permit),
        ),
        Err(full) => State::Refused {
            error: Some(Error::BulkheadFull(full)),
        },
    }
}

impl<S, Req, C, P, F, B> std::fmt::Debug for ResponseFuture<S, Req, C, P, F, B>
where
    S: Service<Req>,
    B: Breakers<C>,
    Attempts<S, C, B>: Service<Req>,
    F: Fallback<S::Response, S::Error>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Running { .. } => "running",
            State::Queued { .. } => "queued",
            State::Refused { .. } => "refused",
            State::Fallback { .. } => "fallback",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("operation", &self.parts.total.operation)
            .field("state", &state)
            .finish()
    }
}

impl<S, Req, C, P, F, B> Future for ResponseFuture<S, Req, C, P, F, B>
where
    S: Service<Req>,
    B: Breakers<C>,
    Attempts<S, C, B>: Service<Req, Response = S::Response, Error = Error<Error<S::Error>>> + Clone,
    OperationService<S, C, P, B>: Service<Req, Response = S::Response>,
    <OperationService<S, C, P, B> as Service<Req>>::Error: IntoStackError<S::Error>,
    C: Classify<S::Response, S::Error>,
    P: Replay<Req, S::Response>,
    F: Fallback<S::Response, S::Error>,
{
    type Output = Result<S::Response, Error<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // One clock read for every layer of this poll and the metrics' end (see
        // `crate::clock`).
        let _step = crate::clock::step();
        let mut this = self.project();
        let output = loop {
            // A failure for the fallback (`Ok`), or the call's end (`Err`: no fallback).
            let to_fallback = match this.state.as_mut().project() {
                StateProj::Running {
                    mut watch,
                    run,
                    permit,
                } => {
                    let mut ended = None;
                    if let Some(run) = run.as_pin_mut()
                        && let Some(deadline) = watch.as_mut().deadline()
                        && let Poll::Ready(result) =
                            deadline.sync_scope(|| run.poll_with(&this.parts.retry, cx))
                    {
                        ended = Some(
                            result.map_err(|e| Error::Inner(Error::Inner(e)).into_stack_error()),
                        );
                    }
                    let result = match ended {
                        Some(result) => result,
                        None => Err(Error::Timeout(ready!(watch.poll_expired(cx)))),
                    };
                    // Given back as soon as the call is done, not when the future is dropped.
                    permit.release(&this.parts.partition);
                    match result {
                        Ok(response) => {
                            if this.operation.is_none() || !this.fallback.on_responses() {
                                break Ok(response);
                            }
                            // A response the classifier calls a failure (a 503 after the
                            // retries) goes to the fallback too.
                            match this.classifier.classify(Ok(&response)) {
                                Some(Outcome::Failure(class)) => Ok((Ok(response), Some(class))),
                                _ => break Ok(response),
                            }
                        }
                        Err(e) => failed(e, this.classifier, this.operation),
                    }
                }
                StateProj::Queued { service, request } => match ready!(service.poll_ready(cx)) {
                    Ok(()) => {
                        let Some(request) = request.take() else {
                            unreachable!("the request is taken only by the call");
                        };
                        let state = admitted::<S, Req, C, P, F, B>(this.parts, service, request);
                        this.state.set(state);
                        continue;
                    }
                    Err(e) => failed(e.into_stack_error(), this.classifier, this.operation),
                },
                StateProj::Refused { error } => {
                    let error = error
                        .take()
                        .expect("palisade stack ResponseFuture polled after completion");
                    failed(error, this.classifier, this.operation)
                }
                // The fallback is the user's code: outside the shared clock read.
                StateProj::Fallback { future } => {
                    break ready!(crate::clock::outside(|| future.poll(cx)));
                }
                StateProj::Done => panic!("palisade stack ResponseFuture polled after completion"),
            };
            let (result, classification) = match to_fallback {
                Ok(failure) => failure,
                Err(e) => break Err(e),
            };
            let Some(operation) = this.operation else {
                unreachable!("failures reach here only when there is a fallback");
            };
            record_fallback(operation, classification.as_ref());
            let future = crate::clock::outside(|| {
                this.fallback.recover(Failure {
                    operation: operation.clone(),
                    result,
                    classification,
                })
            });
            this.state.set(State::Fallback { future });
        };
        #[cfg(feature = "metrics")]
        if let Some(start) = this.start.take()
            && let Some(metrics) = &this.parts.metrics
        {
            metrics.record(start, &metrics.classifier().outcome(output.as_ref()));
        }
        Poll::Ready(output)
    }
}

type ToFallback<Res, E> = (Result<Res, Error<E>>, Option<Classification>);

/// A failed call: returned as it is (`Err`) without a fallback, else with its
/// classification (a layer's own, or the classifier's verdict on the service's error) for the
/// fallback.
fn failed<Res, E, C: Classify<Res, E>>(
    error: Error<E>,
    classifier: &C,
    operation: &Option<Arc<str>>,
) -> Result<ToFallback<Res, E>, Error<E>> {
    if operation.is_none() {
        return Err(error);
    }
    let classification = match error.last_attempt() {
        Error::Inner(e) => classifier.outcome(Err(e)).classification().cloned(),
        other => other.layer_classification(),
    };
    Ok((Err(error), classification))
}

/// Counts a failure handed to the fallback, with its original classification, and logs it at
/// DEBUG. The fallback path is cold (a failed call), so the counter is looked up here.
fn record_fallback(operation: &Arc<str>, classification: Option<&Classification>) {
    let code = classification.map_or("unclassified", |c| c.code.as_str());
    tracing::debug!(
        operation = %operation,
        code,
        "palisade stack: call failed, asking the fallback"
    );
    #[cfg(feature = "metrics")]
    super::metrics::record_fallback(operation, classification);
}
