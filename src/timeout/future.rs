use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::InFlight;
use super::deadline::Deadline;
use super::in_flight::Slot;
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
        call: Listing,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        // The limit as `limit_nanos` stores it; the deadline is the timer's (see `Timer`).
        Running { #[pin] inner: F, kind: TimeoutKind, limit: u64 },
        Expired,
    }
}

pin_project! {
    /// A call's deadline, its timer and its listing: what a timeout future keeps besides the
    /// call it times (the stack's future keeps one for its total timeout).
    #[derive(Debug)]
    pub(crate) struct Watch {
        #[pin]
        timer: Timer,
        call: Listing,
        kind: TimeoutKind,
        // The limit as `limit_nanos` stores it; the deadline is the timer's (see `Timer`).
        limit: u64,
    }
}

/// A timeout's limit as its futures keep it, for the error: nanoseconds, saturating at 584
/// years, eight bytes less than a `Duration` in a future every outer layer moves.
#[inline]
fn limit_nanos(limit: Duration) -> u64 {
    u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX)
}

pin_project! {
    #[project = TimerProj]
    #[derive(Debug)]
    enum Timer {
        // The deadline waits here until the timer is armed, then is the sleep's own: it fits
        // beside the sleep's niche, so the future is 16 bytes smaller than with a deadline
        // field of its own (every outer layer moves it).
        Unarmed { deadline: Deadline },
        Armed { #[pin] sleep: Sleep },
        // Nothing to time (the deadline had expired before the call).
        Off,
    }
}

/// Where the call is listed: who frees its slot when it ends, however it ends, and who knows
/// the operation's name for an error. A call listed in the global registry holds no reference
/// count, so concurrent calls share no written cache line through it.
#[derive(Debug)]
pub(crate) enum Listing {
    /// Not listed; the future keeps the layer's name and metric handles.
    Off(Arc<Shared>),
    /// Listed in [`InFlight::global`].
    Global { id: u16, slot: Slot },
    Custom {
        registry: InFlight,
        id: u16,
        slot: Slot,
    },
    /// Not listed; [`InFlight::global`] knows the operation by `id`.
    Named { id: u16 },
}

impl Listing {
    /// The call timed out: counts it, and returns the operation's name for the error.
    fn timed_out(&self, kind: TimeoutKind) -> Arc<str> {
        let found = match self {
            Listing::Off(shared) => {
                shared.metrics.fired(kind);
                return shared.operation.clone();
            }
            Listing::Global { id, .. } | Listing::Named { id } => {
                InFlight::global().timed_out(*id, kind)
            }
            Listing::Custom { registry, id, .. } => registry.timed_out(*id, kind),
        };
        found.unwrap_or_else(|| Arc::from("unknown"))
    }
}

impl Drop for Listing {
    #[inline]
    fn drop(&mut self) {
        match self {
            Listing::Off(_) | Listing::Named { .. } => {}
            Listing::Global { slot, .. } => InFlight::global().finish(*slot),
            Listing::Custom { registry, slot, .. } => registry.finish(*slot),
        }
    }
}

impl Watch {
    #[inline]
    pub(crate) fn new(
        listing: Listing,
        deadline: Deadline,
        kind: TimeoutKind,
        limit: Duration,
    ) -> Self {
        Watch {
            timer: Timer::Unarmed { deadline },
            call: listing,
            kind,
            limit: limit_nanos(limit),
        }
    }

    /// A call not made: the deadline from upstream had already expired.
    pub(crate) fn expired(listing: Listing) -> Self {
        Watch {
            timer: Timer::Off,
            call: listing,
            kind: TimeoutKind::DeadlineExpired,
            limit: 0,
        }
    }

    /// The deadline, unless the call was not made.
    #[inline]
    pub(crate) fn deadline(self: Pin<&mut Self>) -> Option<Deadline> {
        match self.project().timer.project() {
            TimerProj::Unarmed { deadline } => Some(*deadline),
            TimerProj::Armed { sleep } => Some(Deadline::at(sleep.deadline())),
            TimerProj::Off => None,
        }
    }

    /// Waits for the deadline (arming the timer at the first wait): the error once it has
    /// passed, at once for a call not made.
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TimeoutError> {
        let mut this = self.project();
        let deadline = match this.timer.as_mut().project() {
            TimerProj::Off => return Poll::Ready(not_made(this.call)),
            TimerProj::Unarmed { deadline } => Some(*deadline),
            TimerProj::Armed { .. } => None,
        };
        if let Some(deadline) = deadline {
            this.timer.set(Timer::Armed {
                sleep: tokio::time::sleep_until(deadline.instant()),
            });
        }
        if let TimerProj::Armed { sleep } = this.timer.project() {
            ready!(sleep.poll(cx));
        }
        Poll::Ready(fired(
            this.call,
            *this.kind,
            Duration::from_nanos(*this.limit),
        ))
    }
}

/// The error of a call not made because the deadline from upstream had expired: counted,
/// logged at DEBUG.
#[cold]
fn not_made(call: &Listing) -> TimeoutError {
    let operation = call.timed_out(TimeoutKind::DeadlineExpired);
    // Nothing was called: the caller upstream has already given up.
    tracing::debug!(
        operation = %operation,
        kind = TimeoutKind::DeadlineExpired.as_str(),
        "palisade: deadline already expired, call not made"
    );
    TimeoutError {
        kind: TimeoutKind::DeadlineExpired,
        operation,
        limit: Duration::ZERO,
    }
}

/// The error of a call whose deadline passed: counted, logged.
#[cold]
fn fired(call: &Listing, kind: TimeoutKind, limit: Duration) -> TimeoutError {
    let error = TimeoutError {
        kind,
        operation: call.timed_out(kind),
        limit,
    };
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    // A total timeout fails the call for its caller: WARN. An attempt timeout is one
    // attempt of several (retry decides, and logs, what follows): DEBUG.
    if kind == TimeoutKind::Total {
        tracing::warn!(
            operation = %error.operation,
            kind = kind.as_str(),
            limit_ms,
            "palisade: timeout fired"
        );
    } else {
        tracing::debug!(
            operation = %error.operation,
            kind = kind.as_str(),
            limit_ms,
            "palisade: timeout fired"
        );
    }
    error
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: F,
        listing: Listing,
        deadline: Deadline,
        kind: TimeoutKind,
        limit: Duration,
    ) -> Self {
        ResponseFuture {
            state: State::Running {
                inner,
                kind,
                limit: limit_nanos(limit),
            },
            timer: Timer::Unarmed { deadline },
            call: listing,
        }
    }

    pub(crate) fn expired(shared: Arc<Shared>) -> Self {
        ResponseFuture {
            state: State::Expired,
            timer: Timer::Off,
            call: Listing::Off(shared),
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
                return Poll::Ready(Err(Error::Timeout(not_made(this.call))));
            }
            StateProj::Running { inner, kind, limit } => {
                let deadline = match this.timer.as_mut().project() {
                    TimerProj::Unarmed { deadline } => *deadline,
                    TimerProj::Armed { sleep } => Deadline::at(sleep.deadline()),
                    TimerProj::Off => unreachable!("a running call has a deadline"),
                };
                if let Poll::Ready(result) = deadline.sync_scope(|| inner.poll(cx)) {
                    return Poll::Ready(result.map_err(Error::Inner));
                }
                (deadline, *kind, Duration::from_nanos(*limit))
            }
        };
        if let TimerProj::Unarmed { .. } = this.timer.as_mut().project() {
            this.timer.set(Timer::Armed {
                sleep: tokio::time::sleep_until(deadline.instant()),
            });
        }
        if let TimerProj::Armed { sleep } = this.timer.project() {
            ready!(sleep.poll(cx));
        }
        Poll::Ready(Err(Error::Timeout(fired(this.call, kind, limit))))
    }
}
