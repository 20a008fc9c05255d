use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::partition::Permit;
use crate::error::{BulkheadFull, Error};

pin_project! {
    /// The response future of [`Bulkhead`](super::Bulkhead): holds the call's permit until
    /// the call completes or the future is dropped.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Called { #[pin] inner: F, permit: Option<Permit> },
        Rejected { error: BulkheadFull },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(inner: F, permit: Permit) -> Self {
        ResponseFuture {
            state: State::Called {
                inner,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn rejected(error: BulkheadFull) -> Self {
        ResponseFuture {
            state: State::Rejected { error },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { inner, permit } => {
                let result = ready!(inner.poll(cx));
                // Give the permit back as soon as the call is done, not when the future is
                // dropped, which may be much later.
                drop(permit.take());
                Poll::Ready(result.map_err(Error::Inner))
            }
            StateProj::Rejected { error } => Poll::Ready(Err(Error::BulkheadFull(error.clone()))),
        }
    }
}
