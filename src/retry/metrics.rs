//! The retry layer's metric handles, registered once when a layer is made (no look-up in the
//! recorder per call). Without the `metrics` feature, a zero-sized stand-in.

use std::sync::Arc;

use crate::error::RetryStop;

/// How a call through the retry layer ended, as counted in `palisade_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The first attempt succeeded (or was ignored by the classifier).
    SucceededWithoutRetry,
    /// A later attempt succeeded.
    SucceededAfterRetry,
    /// Retried, and the last attempt failed (out of retries, out of time, not retryable, or
    /// the service failed its readiness check before a retry).
    FailedAfterRetries,
    /// A retry was wanted but the budget refused it.
    BudgetExhausted,
    /// The first attempt failed and was not retried: not a failure to retry, a request that
    /// cannot be replayed, no retries allowed, or no time left for one.
    NotRetryable,
}

impl Ended {
    /// A failure that stopped the retries for `stop` after `attempts` attempts.
    pub(crate) fn failure(attempts: u32, stop: RetryStop) -> Self {
        match stop {
            RetryStop::BudgetExhausted => Ended::BudgetExhausted,
            _ if attempts > 1 => Ended::FailedAfterRetries,
            _ => Ended::NotRetryable,
        }
    }

    /// A success (or an ignored outcome) at attempt `attempts`.
    #[inline]
    pub(crate) fn success(attempts: u32) -> Self {
        if attempts > 1 {
            Ended::SucceededAfterRetry
        } else {
            Ended::SucceededWithoutRetry
        }
    }
}

/// `palisade_retries_total{operation, outcome}` (one handle per outcome) and
/// `palisade_retry_attempts_total{operation}`.
#[derive(Clone, Debug)]
pub(crate) struct RetryMetrics {
    #[cfg(feature = "metrics")]
    ended: [metrics::Counter; 5],
    #[cfg(feature = "metrics")]
    attempts: metrics::Counter,
}

impl RetryMetrics {
    /// Registers the handles of `operation` with the recorder in force.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(operation: &Arc<str>) -> Self {
        #[cfg(feature = "metrics")]
        {
            use crate::metrics::RetryOutcomeKind as Kind;
            use crate::metrics::names::{RETRIES_TOTAL, RETRY_ATTEMPTS_TOTAL};
            let ended = |kind: Kind| {
                metrics::counter!(
                    RETRIES_TOTAL,
                    "operation" => operation.to_string(),
                    "outcome" => kind.as_str()
                )
            };
            RetryMetrics {
                ended: [
                    ended(Kind::SucceededWithoutRetry),
                    ended(Kind::SucceededAfterRetry),
                    ended(Kind::FailedAfterRetries),
                    ended(Kind::BudgetExhausted),
                    ended(Kind::NotRetryable),
                ],
                attempts: metrics::counter!(
                    RETRY_ATTEMPTS_TOTAL,
                    "operation" => operation.to_string()
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        RetryMetrics {}
    }

    /// Counts a call that ended.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn ended(&self, ended: Ended) {
        #[cfg(feature = "metrics")]
        self.ended[ended as usize].increment(1);
    }

    /// Counts a retry attempt sent (an attempt after the first).
    #[inline]
    pub(crate) fn attempt(&self) {
        #[cfg(feature = "metrics")]
        self.attempts.increment(1);
    }
}
