use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::breaker::Ticket;
use crate::classify::Classify;
use crate::error::{CircuitOpen, Error};

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker): the inner call, whose
    /// outcome it records when it finishes, or a rejection ready at once.
    ///
    /// Dropping it before it finishes records nothing and gives back a half-open probe slot.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    // The ticket lives in the called variant only, so a rejection has nothing else to drop.
    #[project = KindProj]
    enum Kind<F, C> {
        Called { #[pin] future: F, record: Option<(Ticket, C)> },
        Rejected { error: Option<CircuitOpen> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline(always)]
    pub(crate) fn called(future: F, ticket: Option<Ticket>, classifier: &C) -> Self
    where
        C: Clone,
    {
        ResponseFuture {
            kind: Kind::Called {
                future,
                record: ticket.map(|t| (t, classifier.clone())),
            },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, record } => {
                let result = ready!(future.poll(cx));
                if let Some((ticket, classifier)) = record.take() {
                    ticket.finish(&classifier.outcome(result.as_ref()));
                }
                Poll::Ready(result.map_err(Error::Inner))
            }
            KindProj::Rejected { error } => Poll::Ready(Err(Error::CircuitOpen(
                error
                    .take()
                    .expect("circuit breaker ResponseFuture polled after completion"),
            ))),
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field(
                "recording",
                &matches!(
                    &self.kind,
                    Kind::Called {
                        record: Some(_),
                        ..
                    }
                ),
            )
            .finish_non_exhaustive()
    }
}
