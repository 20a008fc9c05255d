//! The error every palisade layer returns.
//!
//! A layer either passes the inner service's error through ([`Error::Inner`]) or fails the
//! call itself: a timeout fired, the bulkhead is full, the breaker is open, the operation is
//! switched off. Each of those carries the context an operator needs (which operation, which
//! limit) and its own [`Classification`], so an outer layer, a metrics recorder or a handler
//! can act on it without parsing strings:
//!
//! | variant | transience | category | severity | code | retry-after |
//! |---|---|---|---|---|---|
//! | [`Timeout`](Error::Timeout) | transient | network | medium | `timeout_total`, `timeout_attempt`, `deadline_expired` | |
//! | [`BulkheadFull`](Error::BulkheadFull) | transient | system | medium | `bulkhead_full` | |
//! | [`CircuitOpen`](Error::CircuitOpen) | transient | external | medium | `circuit_open` | time until the next probe |
//! | [`OperationDisabled`](Error::OperationDisabled) | persistent | system | medium | `operation_disabled` | |

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::{Category, Classification, Classified, Code, Severity, Transience};

/// The error of a service wrapped in palisade layers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The inner service failed; its error, untouched.
    #[error("{0}")]
    Inner(E),
    /// A timeout fired or the propagated deadline had already passed.
    #[error(transparent)]
    Timeout(TimeoutError),
    /// The bulkhead had no permit to give within its queue and wait limits.
    #[error(transparent)]
    BulkheadFull(BulkheadFull),
    /// The circuit breaker is open (or forced open) and rejected the call.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
    /// The operation's policy has `enabled: false`: a kill switch.
    #[error(transparent)]
    OperationDisabled(OperationDisabled),
}

impl<E> Error<E> {
    /// The inner service's error, if that is what this is.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Error::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The inner service's error, or this error back if a layer failed the call.
    pub fn into_inner(self) -> Result<E, Self> {
        match self {
            Error::Inner(e) => Ok(e),
            other => Err(other),
        }
    }

    /// The classification of an error a layer raised itself; `None` for [`Error::Inner`],
    /// which only the inner service's classifier can judge.
    pub fn layer_classification(&self) -> Option<Classification> {
        match self {
            Error::Inner(_) => None,
            Error::Timeout(e) => Some(e.classification()),
            Error::BulkheadFull(e) => Some(e.classification()),
            Error::CircuitOpen(e) => Some(e.classification()),
            Error::OperationDisabled(e) => Some(e.classification()),
        }
    }
}

impl<E: Classified> Classified for Error<E> {
    fn classification(&self) -> Classification {
        match self {
            Error::Inner(e) => e.classification(),
            other => other
                .layer_classification()
                .expect("every non-inner variant classifies itself"),
        }
    }

    fn is_ignored(&self) -> bool {
        matches!(self, Error::Inner(e) if e.is_ignored())
    }
}

/// Which timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// The budget for the whole call, all attempts and backoff included.
    Total,
    /// The budget for one attempt.
    Attempt,
    /// A deadline propagated from upstream had already passed, so the call was not made.
    DeadlineExpired,
}

impl TimeoutKind {
    /// `"total"`, `"attempt"` or `"deadline"`, for labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Total => "total",
            TimeoutKind::Attempt => "attempt",
            TimeoutKind::DeadlineExpired => "deadline",
        }
    }
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A timeout fired: which one, for which operation, after how long.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} timeout of {} elapsed for operation `{operation}`", humantime::format_duration(*.limit))]
pub struct TimeoutError {
    /// Which timeout fired.
    pub kind: TimeoutKind,
    /// The operation whose policy set the limit.
    pub operation: Arc<str>,
    /// The limit that was exceeded.
    pub limit: Duration,
}

impl Classified for TimeoutError {
    fn classification(&self) -> Classification {
        let code = match self.kind {
            TimeoutKind::Total => "timeout_total",
            TimeoutKind::Attempt => "timeout_attempt",
            TimeoutKind::DeadlineExpired => "deadline_expired",
        };
        Classification::new(
            Transience::Transient,
            Category::Network,
            Severity::Medium,
            Code::from_static(code),
        )
    }
}

/// The bulkhead rejected a call: its queue was full, or the call waited too long.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead `{bulkhead}` is full ({max_concurrent} in flight, {max_queue} queued): {reason}")]
pub struct BulkheadFull {
    /// The bulkhead's name (its partition).
    pub bulkhead: Arc<str>,
    /// Its concurrency limit.
    pub max_concurrent: usize,
    /// Its queue limit.
    pub max_queue: usize,
    /// Why this call was turned away.
    pub reason: BulkheadRejection,
}

/// Why a bulkhead turned a call away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkheadRejection {
    /// Every permit was taken and the queue was full.
    QueueFull,
    /// The call queued for this long without getting a permit.
    WaitTimedOut(Duration),
}

impl fmt::Display for BulkheadRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BulkheadRejection::QueueFull => f.write_str("the queue is full"),
            BulkheadRejection::WaitTimedOut(d) => {
                write!(f, "no permit within {}", humantime::format_duration(*d))
            }
        }
    }
}

impl Classified for BulkheadFull {
    fn classification(&self) -> Classification {
        Classification::new(
            Transience::Transient,
            Category::System,
            Severity::Medium,
            Code::from_static("bulkhead_full"),
        )
    }
}

/// The circuit breaker rejected a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "circuit breaker `{breaker}` is open; next probe in {}",
    humantime::format_duration(*.retry_after)
)]
pub struct CircuitOpen {
    /// The breaker's name (operation, or operation and key).
    pub breaker: Arc<str>,
    /// How long until the breaker lets a probe through.
    pub retry_after: Duration,
}

impl Classified for CircuitOpen {
    fn classification(&self) -> Classification {
        Classification::new(
            Transience::Transient,
            Category::External,
            Severity::Medium,
            Code::from_static("circuit_open"),
        )
        .with_retry_after(self.retry_after)
    }
}

/// The operation is switched off by its policy (`enabled: false`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("operation `{operation}` is disabled by its policy (enabled: false)")]
pub struct OperationDisabled {
    /// The operation.
    pub operation: Arc<str>,
}

impl Classified for OperationDisabled {
    fn classification(&self) -> Classification {
        Classification::new(
            Transience::Persistent,
            Category::System,
            Severity::Medium,
            Code::from_static("operation_disabled"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_errors_classify_themselves_and_say_what_happened() {
        let e: Error<std::io::Error> = Error::Timeout(TimeoutError {
            kind: TimeoutKind::Attempt,
            operation: "api_call".into(),
            limit: Duration::from_millis(1500),
        });
        assert_eq!(
            e.to_string(),
            "attempt timeout of 1s 500ms elapsed for operation `api_call`"
        );
        let c = e.classification();
        assert_eq!(
            (c.transience, c.code.as_str()),
            (Transience::Transient, "timeout_attempt")
        );

        let open: Error<std::io::Error> = Error::CircuitOpen(CircuitOpen {
            breaker: "payment_gateway".into(),
            retry_after: Duration::from_secs(30),
        });
        assert_eq!(
            open.classification().retry_after,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            open.to_string(),
            "circuit breaker `payment_gateway` is open; next probe in 30s"
        );

        let full: Error<std::io::Error> = Error::BulkheadFull(BulkheadFull {
            bulkhead: "db".into(),
            max_concurrent: 10,
            max_queue: 5,
            reason: BulkheadRejection::WaitTimedOut(Duration::from_secs(1)),
        });
        assert_eq!(
            full.to_string(),
            "bulkhead `db` is full (10 in flight, 5 queued): no permit within 1s"
        );
        assert_eq!(full.classification().category, Category::System);
    }

    #[test]
    fn inner_errors_keep_their_own_classification() {
        let e: Error<std::io::Error> =
            Error::Inner(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(e.layer_classification(), None);
        assert_eq!(e.classification().code, "io_connection_refused");
        assert!(e.into_inner().is_ok());
    }
}
