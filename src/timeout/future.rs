use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::deadline::Deadline;
use super::layer::Shared;
use crate::error::{Error, TimeoutError, TimeoutKind};

pin_project! {
    /// The response future of [`Timeout`](super::Timeout).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        #[pin]
        timer: Timer,
        call: CallGuard,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Running { #[pin] inner: F, deadline: Deadline, kind: TimeoutKind, limit: Duration },
        Expired,
    }
}

pin_project! {
    #[project = TimerProj]
    #[derive(Debug)]
    enum Timer {
        Unarmed,
        Armed { #[pin] sleep: Sleep },
    }
}

/// Frees the in-flight slot when the call ends, however it ends.
#[derive(Debug)]
struct CallGuard {
    shared: Arc<Shared>,
    slot: Option<Option<usize>>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let (Some(slot), Some((registry, _))) = (self.slot.take(), &self.shared.in_flight) {
            registry.finish(slot);
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        shared: Arc<Shared>,
        deadline: Deadline,
        kind: TimeoutKind,
        limit: Duration,
        slot: Option<Option<usize>>,
    ) -> Self {
        ResponseFuture {
            state: State::Running {
                inner,
                deadline,
                kind,
                limit,
            },
            timer: Timer::Unarmed,
            call: CallGuard { shared, slot },
        }
    }

    pub(crate) fn expired(shared: Arc<Shared>) -> Self {
        ResponseFuture {
            state: State::Expired,
            timer: Timer::Unarmed,
            call: CallGuard { shared, slot: None },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let (deadline, kind, limit) = match this.state.project() {
            StateProj::Expired => {
                return Poll::Ready(Err(Error::Timeout(TimeoutError {
                    kind: TimeoutKind::DeadlineExpired,
                    operation: this.call.shared.operation.clone(),
                    limit: Duration::ZERO,
                })));
            }
            StateProj::Running {
                inner,
                deadline,
                kind,
                limit,
            } => {
                if let Poll::Ready(result) = deadline.sync_scope(|| inner.poll(cx)) {
                    return Poll::Ready(result.map_err(Error::Inner));
                }
                (*deadline, *kind, *limit)
            }
        };
        if let TimerProj::Unarmed = this.timer.as_mut().project() {
            this.timer.set(Timer::Armed {
                sleep: tokio::time::sleep_until(deadline.instant()),
            });
        }
        if let TimerProj::Armed { sleep } = this.timer.project() {
            ready!(sleep.poll(cx));
        }
        Poll::Ready(Err(Error::Timeout(TimeoutError {
            kind,
            operation: this.call.shared.operation.clone(),
            limit,
        })))
    }
}
