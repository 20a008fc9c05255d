use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::fallback::{Failure, Fallback};
use crate::classify::{Classification, Classify, Outcome};
use crate::error::Error;

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

pin_project! {
    /// The response future of [`Resilience`](super::Resilience): waits for the operation's
    /// layers to be ready (the bulkhead's permit), calls them, and hands a failure to the
    /// fallback.
    ///
    /// Dropping it at any point drops what it holds: the permit, the call in flight, the
    /// fallback's future.
    pub struct ResponseFuture<Svc, Req, C, F, E>
    where
        Svc: Service<Req>,
        F: Fallback<Svc::Response, E>,
    {
        #[pin]
        state: State<Svc, Req, Svc::Future, F::Future, Error<E>>,
        // Only kept when there is a fallback to hand a failure to.
        operation: Option<Arc<str>>,
        classifier: C,
        fallback: F,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Svc, Req, SF, FF, Err> {
        Readying { service: Svc, request: Option<Req> },
        Called { #[pin] future: SF },
        Refused { error: Option<Err> },
        Fallback { #[pin] future: FF },
    }
}

impl<Svc, Req, C, F, E> ResponseFuture<Svc, Req, C, F, E>
where
    Svc: Service<Req>,
    F: Fallback<Svc::Response, E>,
{
    pub(crate) fn new(
        service: Svc,
        request: Req,
        operation: Option<Arc<str>>,
        classifier: C,
        fallback: F,
    ) -> Self {
        ResponseFuture {
            state: State::Readying {
                service,
                request: Some(request),
            },
            operation,
            classifier,
            fallback,
        }
    }

    /// A call already made (on layers readied by the caller).
    pub(crate) fn called(
        future: Svc::Future,
        operation: Option<Arc<str>>,
        classifier: C,
        fallback: F,
    ) -> Self {
        ResponseFuture {
            state: State::Called { future },
            operation,
            classifier,
            fallback,
        }
    }

    pub(crate) fn refused(
        error: Error<E>,
        operation: Option<Arc<str>>,
        classifier: C,
        fallback: F,
    ) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            operation,
            classifier,
            fallback,
        }
    }
}

impl<Svc, Req, C, F, E> std::fmt::Debug for ResponseFuture<Svc, Req, C, F, E>
where
    Svc: Service<Req>,
    F: Fallback<Svc::Response, E>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Readying { .. } => "readying",
            State::Called { .. } => "called",
            State::Refused { .. } => "refused",
            State::Fallback { .. } => "fallback",
        };
        f.debug_struct("ResponseFuture")
            .field("operation", &self.operation)
            .field("state", &state)
            .finish()
    }
}

impl<Svc, Req, C, F, E> Future for ResponseFuture<Svc, Req, C, F, E>
where
    Svc: Service<Req>,
    Svc::Error: IntoStackError<E>,
    C: Classify<Svc::Response, E>,
    F: Fallback<Svc::Response, E>,
{
    type Output = Result<Svc::Response, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // One clock read for every layer of this poll (see `crate::clock`); already open
        // when the stack's metrics poll this future.
        let _step = crate::clock::step();
        let mut this = self.project();
        loop {
            let (result, classification) = match this.state.as_mut().project() {
                StateProj::Readying { service, request } => match ready!(service.poll_ready(cx)) {
                    Ok(()) => {
                        let Some(request) = request.take() else {
                            unreachable!("the request is taken only by the call");
                        };
                        let future = service.call(request);
                        this.state.set(State::Called { future });
                        continue;
                    }
                    Err(e) => failed(e.into_stack_error(), this.classifier, this.operation)?,
                },
                StateProj::Called { future } => match ready!(future.poll(cx)) {
                    Ok(response) => {
                        if this.operation.is_none() || !this.fallback.on_responses() {
                            return Poll::Ready(Ok(response));
                        }
                        // A response the classifier calls a failure (a 503 after the retries)
                        // goes to the fallback too.
                        match this.classifier.classify(Ok(&response)) {
                            Some(Outcome::Failure(class)) => (Ok(response), Some(class)),
                            _ => return Poll::Ready(Ok(response)),
                        }
                    }
                    Err(e) => failed(e.into_stack_error(), this.classifier, this.operation)?,
                },
                StateProj::Refused { error } => failed(
                    error
                        .take()
                        .expect("palisade stack ResponseFuture polled after completion"),
                    this.classifier,
                    this.operation,
                )?,
                // The fallback is the user's code: outside the shared clock read.
                StateProj::Fallback { future } => {
                    return crate::clock::outside(|| future.poll(cx));
                }
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
        }
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

#[cfg(feature = "metrics")]
pin_project! {
    /// The response future of [`Resilience`](super::Resilience): the stack's
    /// [`ResponseFuture`], recorded by the stack's error metrics unless they are off
    /// ([`without_metrics`](super::ResilienceLayer::without_metrics)).
    #[project = MeteredProj]
    #[allow(missing_docs)]
    pub enum MeteredFuture<F, C> {
        /// Recorded by [`ErrorMetricsLayer`](crate::metrics::ErrorMetricsLayer)'s future.
        Metered { #[pin] future: crate::metrics::ResponseFuture<F, C> },
        /// Not recorded.
        Plain { #[pin] future: F },
    }
}

#[cfg(feature = "metrics")]
impl<F, C, T, E> Future for MeteredFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // One clock read for the layers and the metrics' end (see `crate::clock`).
        let _step = crate::clock::step();
        match self.project() {
            MeteredProj::Metered { future } => future.poll(cx),
            MeteredProj::Plain { future } => future.poll(cx),
        }
    }
}

#[cfg(feature = "metrics")]
impl<F, C> std::fmt::Debug for MeteredFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeteredFuture::Metered { .. } => "MeteredFuture::Metered",
            MeteredFuture::Plain { .. } => "MeteredFuture::Plain",
        })
    }
}
