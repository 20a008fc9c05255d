use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::Replay;
use super::backoff::Progress;
use super::layer::Shared;
use super::metrics::Ended;
use super::service::Parts;
use crate::classify::{Classify, Outcome, Transience};
use crate::error::{Error, Retried, RetryStop};
use crate::timeout::Deadline;

pin_project! {
    /// The response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, Req, C, P>
    where
        S: Service<Req>,
    {
        parts: Arc<Parts<S, C, P>>,
        #[pin]
        run: Run<S, Req>,
    }
}

pin_project! {
    /// A retried call in progress, without the layer's parts: whoever polls it hands them in.
    /// [`ResponseFuture`] holds them with a reference count; the stack's future holds one for
    /// all its layers.
    pub(crate) struct Run<S, Req>
    where
        S: Service<Req>,
    {
        request: Option<Req>,
        attempts: u32,
        // When the attempt was first seen pending; `None` while it has not been.
        attempt_started: Option<Instant>,
        // The backoff's progress (its policy is `parts.shared.policy`).
        backoff: Progress,
        #[pin]
        state: State<S, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        Attempt { #[pin] future: F },
        Backoff { #[pin] sleep: Sleep },
        // A fresh clone of the layer's service for this retry, readied, called, dropped.
        Readying { service: S },
    }
}

impl<S, Req, C, P> ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
{
    #[inline(always)]
    pub(crate) fn new(parts: Arc<Parts<S, C, P>>, run: Run<S, Req>) -> Self {
        ResponseFuture { parts, run }
    }
}

impl<S, Req> Run<S, Req>
where
    S: Service<Req>,
{
    #[inline(always)]
    pub(crate) fn new(request: Option<Req>, attempt: S::Future, backoff: Progress) -> Self {
        Run {
            request,
            attempts: 1,
            attempt_started: None,
            backoff,
            state: State::Attempt { future: attempt },
        }
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(crate) fn state_name(&self) -> &'static str {
        match self.state {
            State::Attempt { .. } => "attempt",
            State::Backoff { .. } => "backoff",
            State::Readying { .. } => "readying",
        }
    }
}

impl<S, Req, C, P> std::fmt::Debug for ResponseFuture<S, Req, C, P>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("operation", &self.parts.shared.operation)
            .field("attempts", &self.run.attempts())
            .field("state", &self.run.state_name())
            .finish()
    }
}

impl<S, Req, C, P> Future for ResponseFuture<S, Req, C, P>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    P: Replay<Req, S::Response>,
{
    type Output = Result<S::Response, Error<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.run.poll_with(this.parts, cx)
    }
}

impl<S, Req> Run<S, Req>
where
    S: Service<Req> + Clone,
{
    /// Polls the call, with the layer's parts.
    #[inline]
    pub(crate) fn poll_with<C, P>(
        self: Pin<&mut Self>,
        parts: &Parts<S, C, P>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, Error<S::Error>>>
    where
        C: Classify<S::Response, S::Error>,
        P: Replay<Req, S::Response>,
    {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Attempt { future } => {
                    let Poll::Ready(result) = future.poll(cx) else {
                        // Timed from here, not from the call: an attempt that completes at
                        // once costs no clock read, and one that waits is timed to within
                        // its first poll.
                        if this.attempt_started.is_none() {
                            *this.attempt_started = Some(crate::clock::now());
                        }
                        return Poll::Pending;
                    };
                    let shared = &*parts.shared;
                    let attempts = *this.attempts;
                    let outcome = shared.classifier.outcome(result.as_ref());
                    let class = match &outcome {
                        Outcome::Failure(class)
                            if class.transience == Transience::Transient
                                || (class.transience == Transience::Unknown
                                    && shared.policy.retry_unknown) =>
                        {
                            class
                        }
                        _ => {
                            let ended = match outcome {
                                Outcome::Success => Ended::success(attempts),
                                Outcome::Ignored if result.is_ok() => Ended::success(attempts),
                                _ => Ended::failure(attempts, RetryStop::NotRetryable),
                            };
                            shared.metrics.ended(ended);
                            return Poll::Ready(finish(shared, result, attempts, None));
                        }
                    };
                    let stop = if attempts > shared.policy.max_retries {
                        Some(RetryStop::MaxRetries)
                    } else if this.request.is_none() {
                        Some(RetryStop::NotRetryable)
                    } else if class
                        .retry_after
                        .is_some_and(|asked| asked > shared.policy.max_delay)
                    {
                        // Asked to stay away longer than this policy waits: a retry before
                        // then would be refused again (or hit a dependency that asked for quiet).
                        Some(RetryStop::RetryAfterTooLong)
                    } else {
                        None
                    };
                    if let Some(stop) = stop {
                        shared.metrics.ended(Ended::failure(attempts, stop));
                        return Poll::Ready(finish(shared, result, attempts, Some(stop)));
                    }
                    let delay = this
                        .backoff
                        .next_delay(&parts.shared.policy, class.retry_after);
                    let now = crate::clock::now();
                    // Another attempt must fit before the deadline: the backoff plus as long
                    // as the attempt that just failed took.
                    let last = this
                        .attempt_started
                        .take()
                        .map_or(Duration::ZERO, |started| now - started);
                    let needed = delay.saturating_add(last);
                    let stop = if let Some(deadline) = Deadline::current()
                        && now
                            .checked_add(needed)
                            .is_none_or(|t| t >= deadline.instant())
                    {
                        Some(RetryStop::Deadline)
                    } else if !shared.budget.try_withdraw() {
                        Some(RetryStop::BudgetExhausted)
                    } else {
                        None
                    };
                    if let Some(stop) = stop {
                        shared.metrics.ended(Ended::failure(attempts, stop));
                        return Poll::Ready(finish(shared, result, attempts, Some(stop)));
                    }
                    drop(result);
                    tracing::debug!(
                        operation = %shared.operation,
                        attempt = attempts,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        reason = %class.code,
                        "palisade: retrying after a transient failure"
                    );
                    if delay.is_zero() {
                        let service = parts.service();
                        this.state.set(State::Readying { service });
                    } else {
                        this.state.set(State::Backoff {
                            sleep: tokio::time::sleep(delay),
                        });
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    let service = parts.service();
                    this.state.set(State::Readying { service });
                }
                StateProj::Readying { service } => {
                    let shared = &*parts.shared;
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        shared.metrics.ended(Ended::FailedAfterRetries);
                        return Poll::Ready(Err(retried(
                            shared,
                            e,
                            *this.attempts,
                            RetryStop::NotRetryable,
                        )));
                    }
                    *this.attempts += 1;
                    // Keep a copy only if yet another retry may follow.
                    let request = if *this.attempts > shared.policy.max_retries {
                        this.request.take()
                    } else {
                        this.request
                            .as_ref()
                            .and_then(|r| shared.replay.replay(r))
                            .or_else(|| this.request.take())
                    };
                    let Some(request) = request else {
                        // Unreachable: a retry is only decided with a request in hand.
                        unreachable!("retry decided without a request to send");
                    };
                    let future = service.call(request);
                    shared.metrics.attempt();
                    this.state.set(State::Attempt { future });
                }
            }
        }
    }
}

fn finish<C, P, Req, Res, E>(
    shared: &Shared<C, P>,
    result: Result<Res, E>,
    attempts: u32,
    stop: Option<RetryStop>,
) -> Result<Res, Error<E>>
where
    P: Replay<Req, Res>,
{
    match result {
        Ok(mut response) => {
            shared.replay.record_attempts(&mut response, attempts);
            Ok(response)
        }
        Err(e) => Err(retried(
            shared,
            e,
            attempts,
            stop.unwrap_or(RetryStop::NotRetryable),
        )),
    }
}

fn retried<C, P, E>(shared: &Shared<C, P>, e: E, attempts: u32, stop: RetryStop) -> Error<E> {
    if stop != RetryStop::NotRetryable {
        tracing::debug!(
            operation = %shared.operation,
            attempts,
            stop = stop.as_str(),
            "palisade: giving up retrying"
        );
    }
    let retried = Retried {
        operation: shared.operation.clone(),
        attempts,
        stop,
        last: Box::new(Error::Inner(e)),
    };
    match stop {
        RetryStop::BudgetExhausted => Error::RetryBudgetExhausted(retried),
        _ => Error::Retried(retried),
    }
}
