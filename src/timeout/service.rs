use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::ResponseFuture;
use super::deadline::{Deadline, RequestDeadline, TaskDeadlineOnly};
use super::future::Listing;
use super::layer::ListIn;
use super::layer::Shared;
use crate::error::{Error, TimeoutKind};

/// Fails a call that runs past its limit or past the deadline in force, whichever is first.
///
/// # Cancellation and cost
///
/// Dropping the response future drops the inner future and frees the call's in-flight slot.
/// The timer is armed only if the inner future returns `Pending` once, so a call that
/// completes at once reads the clock once and allocates nothing; one that waits registers one
/// tokio timer (no allocation either).
#[derive(Clone, Debug)]
pub struct Timeout<S, X = TaskDeadlineOnly> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
    pub(crate) extract: X,
}

impl<S, X> Timeout<S, X> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, X, Req> Service<Req> for Timeout<S, X>
where
    S: Service<Req>,
    X: RequestDeadline<Req>,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The stack's shared read when inside it (see `crate::clock`), else the clock.
        let now = crate::clock::now();
        let upstream = match (Deadline::current(), self.extract.deadline(&request)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some((deadline, kind, limit)) = binding(&self.shared, now, upstream) else {
            return ResponseFuture::expired(self.shared.clone());
        };
        let listing = listing(&self.shared, now);
        let inner = deadline.sync_scope(|| self.inner.call(request));
        ResponseFuture::new(inner, listing, deadline, kind, limit)
    }
}

/// The deadline that binds a call made `now` under the `upstream` deadline, if any, with its
/// kind and limit (as reported in a timeout's error); `None` if the upstream deadline has
/// already expired (the call is not to be made).
#[inline(always)]
pub(crate) fn binding(
    shared: &Shared,
    now: tokio::time::Instant,
    upstream: Option<Deadline>,
) -> Option<(Deadline, TimeoutKind, Duration)> {
    let own = Deadline::after_from(now, shared.limit);
    match upstream {
        Some(up) if up.instant() <= now => None,
        // The deadline from upstream binds: report it as the total budget it is, with
        // the time that was left.
        Some(up) if up < own => Some((up, TimeoutKind::Total, up.instant() - now)),
        _ => Some((own, shared.kind, shared.limit)),
    }
}

/// Lists a call made `now` where the layer lists its calls.
#[inline(always)]
pub(crate) fn listing(shared: &Arc<Shared>, now: tokio::time::Instant) -> Listing {
    match &shared.in_flight {
        ListIn::Nowhere => Listing::Off(shared.clone()),
        ListIn::Global(registry, id) => Listing::Global {
            id: *id,
            slot: registry.start(*id, now),
        },
        ListIn::NameOnly(id) => Listing::Named { id: *id },
        ListIn::Registry(registry, id) => Listing::Custom {
            slot: registry.start(*id, now),
            registry: registry.clone(),
            id: *id,
        },
    }
}
