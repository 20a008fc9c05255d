//! Graceful degradation: answer from somewhere else when the call failed or was refused.

use std::future::Future;
use std::sync::Arc;

use crate::classify::Classification;
use crate::error::Error;

/// A call the stack could not complete, handed to a [`Fallback`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Failure<E> {
    /// The operation the call ran under.
    pub operation: Arc<str>,
    /// What went wrong: the service's error, or the layer that refused the call (open breaker,
    /// full bulkhead, timeout, kill switch).
    pub error: Error<E>,
    /// How the failure was classified (a layer's own classification, or the classifier's
    /// verdict on the service's error), so that a fallback, a log or a metric can record the
    /// original cause of a degraded answer.
    pub classification: Option<Classification>,
}

impl<E> Failure<E> {
    /// The error, to decline: a fallback that returns `Err(failure.into_error())` lets the
    /// failure through unchanged.
    pub fn into_error(self) -> Error<E> {
        self.error
    }

    /// The classification's code (`circuit_open`, `operation_disabled`, ...), if classified.
    pub fn code(&self) -> Option<&str> {
        self.classification.as_ref().map(|c| c.code.as_str())
    }
}

/// Answers a call that failed: from a cache, a default, a secondary dependency.
///
/// Called with every failed call (the service's error and every refusal by a layer, the kill
/// switch included); return `Err(failure.into_error())` to let a failure through.
pub trait Fallback<Res, E> {
    /// The fallback's future.
    type Future: Future<Output = Result<Res, Error<E>>>;

    /// Answers `failure`, or declines with its error.
    fn recover(&self, failure: Failure<E>) -> Self::Future;
}

/// No fallback: failures are returned as they are. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFallback;

impl<Res, E> Fallback<Res, E> for NoFallback {
    type Future = std::future::Ready<Result<Res, Error<E>>>;

    fn recover(&self, failure: Failure<E>) -> Self::Future {
        std::future::ready(Err(failure.error))
    }
}

/// A [`Fallback`] from an async function; see [`fallback_fn`].
#[derive(Clone, Copy, Debug)]
pub struct FallbackFn<F>(F);

/// A fallback from a function of the [`Failure`], returning a future of the answer.
///
/// ```
/// use palisade::stack::{fallback_fn, Failure};
/// use palisade::Error;
///
/// // Serve a cached quote while the pricing service is unavailable; let the rest through.
/// let fallback = fallback_fn(|failure: Failure<std::io::Error>| async move {
///     match failure.code() {
///         Some("circuit_open" | "bulkhead_full" | "operation_disabled") => Ok::<_, Error<_>>(42_u64),
///         _ => Err(failure.into_error()),
///     }
/// });
/// # let _ = fallback;
/// ```
pub fn fallback_fn<F>(f: F) -> FallbackFn<F> {
    FallbackFn(f)
}

impl<F, Fut, Res, E> Fallback<Res, E> for FallbackFn<F>
where
    F: Fn(Failure<E>) -> Fut,
    Fut: Future<Output = Result<Res, Error<E>>>,
{
    type Future = Fut;

    fn recover(&self, failure: Failure<E>) -> Fut {
        (self.0)(failure)
    }
}
