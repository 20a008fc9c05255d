//! Graceful degradation: answer from somewhere else when the call failed or was refused.

use std::future::Future;
use std::sync::Arc;

use crate::classify::Classification;
use crate::error::Error;

/// A call the stack could not complete, handed to a [`Fallback`]: an error (the service's, or
/// a layer's refusal), or a response the classifier calls a failure (a 503 after retries).
#[derive(Debug)]
#[non_exhaustive]
pub struct Failure<Res, E> {
    /// The operation the call ran under.
    pub operation: Arc<str>,
    /// What came back: `Ok` with a response the classifier calls a failure, or `Err` with
    /// the error (the service's, or the layer that refused the call: open breaker, full
    /// bulkhead, timeout, kill switch).
    pub result: Result<Res, Error<E>>,
    /// How the failure was classified (a layer's own classification, or the classifier's
    /// verdict on the service's error or response), so that a fallback, a log or a metric can
    /// record the original cause of a degraded answer.
    pub classification: Option<Classification>,
}

impl<Res, E> Failure<Res, E> {
    /// What the call would have returned without a fallback: a fallback that returns
    /// `failure.decline()` lets the failure through unchanged.
    pub fn decline(self) -> Result<Res, Error<E>> {
        self.result
    }

    /// The error, if the call failed with one (rather than with a failed response).
    pub fn error(&self) -> Option<&Error<E>> {
        self.result.as_ref().err()
    }

    /// The response, if the classifier called a response a failure.
    pub fn response(&self) -> Option<&Res> {
        self.result.as_ref().ok()
    }

    /// The classification's code (`circuit_open`, `operation_disabled`, `http_503`, ...), if
    /// classified.
    pub fn code(&self) -> Option<&str> {
        self.classification.as_ref().map(|c| c.code.as_str())
    }
}

/// Answers a call that failed: from a cache, a default, a secondary dependency.
///
/// Called with every failed call: the service's error, every refusal by a layer (the kill
/// switch included), and every response the stack's classifier calls a failure (after the
/// retries). Return `failure.decline()` to let a failure through.
pub trait Fallback<Res, E> {
    /// The fallback's future.
    type Future: Future<Output = Result<Res, Error<E>>>;

    /// Answers `failure`, or declines with [`Failure::decline`].
    fn recover(&self, failure: Failure<Res, E>) -> Self::Future;

    /// Whether responses are classified to find failed ones for [`recover`](Self::recover)
    /// (`true`); [`NoFallback`] says `false`, so a stack without a fallback classifies no
    /// response of its own.
    fn on_responses(&self) -> bool {
        true
    }

    /// Whether there is a fallback at all (`true`); [`NoFallback`] says `false`, so the stack
    /// returns failures as they are without classifying them or counting them in
    /// `palisade_fallbacks_total`.
    fn is_active(&self) -> bool {
        true
    }
}

/// No fallback: failures are returned as they are. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFallback;

impl<Res, E> Fallback<Res, E> for NoFallback {
    type Future = std::future::Ready<Result<Res, Error<E>>>;

    fn recover(&self, failure: Failure<Res, E>) -> Self::Future {
        std::future::ready(failure.result)
    }

    fn on_responses(&self) -> bool {
        false
    }

    fn is_active(&self) -> bool {
        false
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
/// let fallback = fallback_fn(|failure: Failure<u64, std::io::Error>| async move {
///     match failure.code() {
///         Some("circuit_open" | "bulkhead_full" | "operation_disabled") => Ok::<_, Error<_>>(42),
///         _ => failure.decline(),
///     }
/// });
/// # let _ = fallback;
/// ```
pub fn fallback_fn<F>(f: F) -> FallbackFn<F> {
    FallbackFn(f)
}

impl<F, Fut, Res, E> Fallback<Res, E> for FallbackFn<F>
where
    F: Fn(Failure<Res, E>) -> Fut,
    Fut: Future<Output = Result<Res, Error<E>>>,
{
    type Future = Fut;

    fn recover(&self, failure: Failure<Res, E>) -> Fut {
        (self.0)(failure)
    }
}
