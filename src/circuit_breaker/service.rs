use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::breaker::{Admission, Shards, Ticket};
use super::future::ResponseFuture;
use super::handle::CircuitBreakerHandle;
use crate::classify::Classify;
use crate::error::{CircuitOpen, Error};

/// A service guarded by a circuit breaker. Made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `call` asks the breaker first: while closed the call goes ahead; while open it fails at once
/// with [`Error::CircuitOpen`] and the inner service is not called; while half-open it goes
/// ahead as a probe if a probe slot is free. The response future classifies the result with
/// the classifier and records it.
///
/// **Cost.** Closed-state calls take no lock and allocate nothing: one atomic load to admit,
/// one atomic add (plus one clock read with a time window) to record. An open-state rejection
/// costs one atomic add (the rejection count) and a copy of the breaker's name into the error
/// ([`BreakerName`](crate::error::BreakerName): no reference count for names of up to 22 bytes).
///
/// **Cancellation.** Dropping the response future records nothing; a probe's slot is given
/// back at once, so a half-open breaker cannot be stuck by probes that never finish.
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: Arc<Shards>,
    classifier: C,
    pending_while_open: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(
        inner: S,
        breaker: Arc<Shards>,
        classifier: C,
        pending_while_open: bool,
    ) -> Self {
        CircuitBreaker {
            inner,
            breaker,
            classifier,
            pending_while_open,
            sleep: None,
        }
    }

    /// The handle to this service's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.core().clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
            self.pending_while_open,
        )
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker.name)
            .field("state", &self.breaker.state())
            .field("pending_while_open", &self.pending_while_open)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.pending_while_open {
            while let Some(wait) = self.breaker.closed_for() {
                let deadline = Instant::now() + wait;
                let sleep = match &mut self.sleep {
                    Some(sleep) => {
                        sleep.as_mut().reset(deadline);
                        sleep
                    }
                    None => self
                        .sleep
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                ready!(sleep.as_mut().poll(cx));
            }
        }
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.admit() {
            Admission::Reject(retry_after) => ResponseFuture::rejected(CircuitOpen {
                breaker: self.breaker.reject_name.clone(),
                retry_after,
            }),
            admission => {
                let ticket = Ticket::new(&self.breaker, admission);
                ResponseFuture::called(self.inner.call(request), ticket, &self.classifier)
            }
        }
    }
}
