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
//! | [`Retried`](Error::Retried), [`RetryBudgetExhausted`](Error::RetryBudgetExhausted) | that of the last attempt's error | | | | |
//!
//! # Composing layers
//!
//! Each layer wraps the error of the service inside it, so a stack of palisade layers has a
//! nested error type (`Error<Error<E>>`). [`Error::flatten`] folds one level away, and
//! [`ThroughLayers`] lets a classifier written for `E` judge an `Error<E>`: palisade's own
//! variants classify themselves and the inner error goes to the wrapped classifier. To mix
//! with tower's own middleware, which speaks [`BoxError`], every `Error<E>` converts into one
//! (`Box::from`), and [`LayerErrors`] classifies a [`BoxError`] that holds a palisade error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::{
    Category, Classification, Classified, Classify, Code, Outcome, Severity, Transience,
};

/// The type-erased error of tower's own middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// The retry layer gave up: the last attempt failed and no further attempt was allowed
    /// (the failure was not retryable, `max_retries` was reached, or the deadline could not
    /// fit another attempt).
    #[error(transparent)]
    Retried(Retried<E>),
    /// The retry layer would have retried, but the retry budget was spent: the last attempt's
    /// failure, with how many attempts were made.
    #[error(transparent)]
    RetryBudgetExhausted(Retried<E>),
}

impl<E> Error<E> {
    /// The inner service's error, if that is what this is.
    /// Looks through [`Retried`](Error::Retried) to the last attempt's error.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Error::Inner(e) => Some(e),
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => r.last.inner(),
            _ => None,
        }
    }

    /// The inner service's error, or this error back if a layer failed the call. Looks
    /// through [`Retried`](Error::Retried) to the last attempt's error.
    pub fn into_inner(self) -> Result<E, Self> {
        match self {
            Error::Inner(e) => Ok(e),
            Error::Retried(r) => r.last.into_inner(),
            Error::RetryBudgetExhausted(r) => r.last.into_inner(),
            other => Err(other),
        }
    }

    /// How many attempts the retry layer made, if this error came out of one.
    pub fn attempts(&self) -> Option<u32> {
        match self {
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => Some(r.attempts),
            _ => None,
        }
    }

    /// The error of the last attempt, looking through any retry context: what actually went
    /// wrong.
    pub fn last_attempt(&self) -> &Error<E> {
        match self {
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => r.last.last_attempt(),
            other => other,
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
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => r.last.layer_classification(),
        }
    }
}

impl<E> Error<E>
where
    E: std::error::Error + Send + Sync + 'static,
{
    /// Erases the type for tower's own middleware: a layer's error becomes a box of its
    /// payload ([`TimeoutError`], [`BulkheadFull`], ...), which [`LayerErrors`] and
    /// `downcast_ref` recognise, and the inner error is boxed as it is. Retry context is kept
    /// (the whole [`Retried`] is boxed).
    pub fn into_box_error(self) -> BoxError {
        match self {
            Error::Inner(e) => Box::new(e),
            Error::Timeout(e) => Box::new(e),
            Error::BulkheadFull(e) => Box::new(e),
            Error::CircuitOpen(e) => Box::new(e),
            Error::OperationDisabled(e) => Box::new(e),
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => Box::new(r),
        }
    }
}

impl<E> Error<Error<E>> {
    /// Folds the error of a layer stacked on another palisade layer into one level:
    /// `Inner(Inner(e))` becomes `Inner(e)`, `Inner(Timeout(t))` becomes `Timeout(t)`, and a
    /// retry's last attempt is flattened the same way. Use with `ServiceBuilder::map_err`.
    pub fn flatten(self) -> Error<E> {
        match self {
            Error::Inner(inner) => inner,
            Error::Timeout(e) => Error::Timeout(e),
            Error::BulkheadFull(e) => Error::BulkheadFull(e),
            Error::CircuitOpen(e) => Error::CircuitOpen(e),
            Error::OperationDisabled(e) => Error::OperationDisabled(e),
            Error::Retried(r) => Error::Retried(r.flatten()),
            Error::RetryBudgetExhausted(r) => Error::RetryBudgetExhausted(r.flatten()),
        }
    }
}

/// Context the retry layer adds to the failure of its last attempt.
#[derive(Debug)]
pub struct Retried<E> {
    /// The operation whose retry policy applied.
    pub operation: Arc<str>,
    /// Attempts made, the first included.
    pub attempts: u32,
    /// Why no further attempt was made.
    pub stop: RetryStop,
    /// The last attempt's error. Boxed so that the error type stays small; allocated only
    /// when a call fails.
    pub last: Box<Error<E>>,
}

impl<E: fmt::Display> fmt::Display for Retried<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "operation `{}` failed after {} attempt(s) ({}): ",
            self.operation, self.attempts, self.stop
        )?;
        match &*self.last {
            Error::Inner(e) => e.fmt(f),
            Error::Timeout(e) => e.fmt(f),
            Error::BulkheadFull(e) => e.fmt(f),
            Error::CircuitOpen(e) => e.fmt(f),
            Error::OperationDisabled(e) => e.fmt(f),
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => r.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Retried<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.last {
            Error::Inner(e) => Some(e),
            Error::Timeout(e) => Some(e),
            Error::BulkheadFull(e) => Some(e),
            Error::CircuitOpen(e) => Some(e),
            Error::OperationDisabled(e) => Some(e),
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => Some(r),
        }
    }
}

impl<E> Retried<E> {
    /// The inner service's error of the last attempt, if a layer did not raise it.
    pub fn inner(&self) -> Option<&E> {
        self.last.inner()
    }
}

impl<E> Retried<Error<E>> {
    fn flatten(self) -> Retried<E> {
        Retried {
            operation: self.operation,
            attempts: self.attempts,
            stop: self.stop,
            last: Box::new(self.last.flatten()),
        }
    }
}

/// Why the retry layer stopped trying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryStop {
    /// The classifier did not call the failure retryable (persistent, or unknown without
    /// `retry_unknown`), or the request could not be replayed.
    NotRetryable,
    /// `max_retries` retries were made.
    MaxRetries,
    /// The retry budget was spent.
    BudgetExhausted,
    /// The deadline could not fit the backoff and another attempt.
    Deadline,
    /// The failure asked for a wait (its `retry_after`: a `Retry-After` header, gRPC
    /// pushback, an open breaker's time to its next probe) longer than the policy's
    /// `max_delay`. Retrying sooner than asked would only be refused again, so the failure
    /// goes back to the caller, with its `retry_after`, at once.
    RetryAfterTooLong,
}

impl RetryStop {
    /// `"not_retryable"`, `"max_retries"`, `"budget_exhausted"`, `"deadline"` or
    /// `"retry_after_too_long"`, for labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryStop::NotRetryable => "not_retryable",
            RetryStop::MaxRetries => "max_retries",
            RetryStop::BudgetExhausted => "budget_exhausted",
            RetryStop::Deadline => "deadline",
            RetryStop::RetryAfterTooLong => "retry_after_too_long",
        }
    }
}

impl fmt::Display for RetryStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an [`Error<E>`]: palisade's own variants classify themselves (a timeout is
/// transient), the inner service's error goes to the wrapped classifier. Hand this to a layer
/// that sits outside another palisade layer, e.g. a retry around a per-attempt timeout.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThroughLayers<C>(pub C);

impl<Res, E, C: Classify<Res, E>> Classify<Res, Error<E>> for ThroughLayers<C> {
    fn classify(&self, result: Result<&Res, &Error<E>>) -> Option<Outcome> {
        match result {
            Ok(res) => self.0.classify(Ok(res)),
            Err(err) => match err.last_attempt() {
                Error::Inner(e) => Some(self.0.outcome(Err(e))),
                other => other.layer_classification().map(Outcome::Failure),
            },
        }
    }
}

/// Classifies a [`BoxError`] that holds one of palisade's layer errors (after tower's
/// `map_err(Into::into)`); no opinion on anything else, so chain it with
/// [`ClassifyExt::or`](crate::classify::ClassifyExt::or).
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerErrors;

impl<Res> Classify<Res, BoxError> for LayerErrors {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Option<Outcome> {
        let err: &(dyn std::error::Error + 'static) = result.err()?.as_ref();
        let class = if let Some(e) = err.downcast_ref::<TimeoutError>() {
            e.classification()
        } else if let Some(e) = err.downcast_ref::<BulkheadFull>() {
            e.classification()
        } else if let Some(e) = err.downcast_ref::<CircuitOpen>() {
            e.classification()
        } else if let Some(e) = err.downcast_ref::<OperationDisabled>() {
            e.classification()
        } else {
            return None;
        };
        Some(Outcome::Failure(class))
    }
}

impl<E: Classified> Classified for Error<E> {
    fn classification(&self) -> Classification {
        match self {
            Error::Inner(e) => e.classification(),
            Error::Retried(r) | Error::RetryBudgetExhausted(r) => r.last.classification(),
            other => other
                .layer_classification()
                .expect("every non-inner variant classifies itself"),
        }
    }

    fn is_ignored(&self) -> bool {
        matches!(self.last_attempt(), Error::Inner(e) if e.is_ignored())
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
    pub breaker: BreakerName,
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

/// The name of a circuit breaker, as [`CircuitOpen`] carries it: a string that reads as a
/// `str` (it derefs to one), displays, compares and hashes as one.
///
/// A rejection hands a copy of the breaker's name to the caller. A short name (up to
/// [`BreakerName::INLINE`] bytes, which covers most operation names) is held in place, so
/// that copy, and its drop, are a few plain byte moves; a longer one shares the breaker's
/// `Arc<str>` (a reference count increment and decrement). Build one from a `&str`, a `String`
/// or an `Arc<str>`; [`BreakerName::to_arc`] gives an `Arc<str>` back.
#[derive(Clone)]
pub struct BreakerName(NameRepr);

#[derive(Clone)]
enum NameRepr {
    Inline {
        len: u8,
        bytes: [u8; BreakerName::INLINE],
    },
    Shared(Arc<str>),
}

impl BreakerName {
    /// The longest name, in bytes, held in place rather than shared.
    pub const INLINE: usize = 22;

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid: the bytes were copied whole from a `str`.
            NameRepr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            NameRepr::Shared(name) => name,
        }
    }

    /// The name as an `Arc<str>` (shared if it is held that way, else a new allocation).
    pub fn to_arc(&self) -> Arc<str> {
        match &self.0 {
            NameRepr::Inline { .. } => Arc::from(self.as_str()),
            NameRepr::Shared(name) => name.clone(),
        }
    }

    fn inline(name: &str) -> Option<Self> {
        let mut bytes = [0; Self::INLINE];
        bytes
            .get_mut(..name.len())?
            .copy_from_slice(name.as_bytes());
        Some(BreakerName(NameRepr::Inline {
            len: name.len() as u8,
            bytes,
        }))
    }
}

impl std::ops::Deref for BreakerName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for BreakerName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for BreakerName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for BreakerName {
    fn from(name: &str) -> Self {
        Self::inline(name).unwrap_or_else(|| BreakerName(NameRepr::Shared(Arc::from(name))))
    }
}

impl From<String> for BreakerName {
    fn from(name: String) -> Self {
        Self::inline(&name).unwrap_or_else(|| BreakerName(NameRepr::Shared(Arc::from(name))))
    }
}

impl From<Arc<str>> for BreakerName {
    fn from(name: Arc<str>) -> Self {
        Self::inline(&name).unwrap_or(BreakerName(NameRepr::Shared(name)))
    }
}

impl From<&Arc<str>> for BreakerName {
    fn from(name: &Arc<str>) -> Self {
        Self::inline(name).unwrap_or_else(|| BreakerName(NameRepr::Shared(name.clone())))
    }
}

impl From<BreakerName> for Arc<str> {
    fn from(name: BreakerName) -> Self {
        match name.0 {
            NameRepr::Shared(name) => name,
            NameRepr::Inline { .. } => Arc::from(name.as_str()),
        }
    }
}

impl From<BreakerName> for String {
    fn from(name: BreakerName) -> Self {
        name.as_str().to_owned()
    }
}

impl fmt::Display for BreakerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for BreakerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for BreakerName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for BreakerName {}

impl PartialEq<str> for BreakerName {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for BreakerName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<BreakerName> for str {
    fn eq(&self, other: &BreakerName) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<BreakerName> for &str {
    fn eq(&self, other: &BreakerName) -> bool {
        *self == other.as_str()
    }
}

impl PartialOrd for BreakerName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BreakerName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for BreakerName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
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

    fn timeout(kind: TimeoutKind) -> TimeoutError {
        TimeoutError {
            kind,
            operation: "quote".into(),
            limit: Duration::from_millis(250),
        }
    }

    #[test]
    fn flatten_folds_one_level_and_looks_inside_retries() {
        let nested: Error<Error<std::io::Error>> =
            Error::Inner(Error::Timeout(timeout(TimeoutKind::Attempt)));
        assert!(matches!(nested.flatten(), Error::Timeout(t) if t.kind == TimeoutKind::Attempt));

        let retried: Error<Error<std::io::Error>> = Error::RetryBudgetExhausted(Retried {
            operation: "quote".into(),
            attempts: 3,
            stop: RetryStop::BudgetExhausted,
            last: Box::new(Error::Inner(Error::Timeout(timeout(TimeoutKind::Attempt)))),
        });
        let flat = retried.flatten();
        assert_eq!(flat.attempts(), Some(3));
        assert!(matches!(flat.last_attempt(), Error::Timeout(_)));
        assert_eq!(flat.classification().code, "timeout_attempt");
        assert_eq!(
            flat.to_string(),
            "operation `quote` failed after 3 attempt(s) (budget_exhausted): attempt timeout of \
             250ms elapsed for operation `quote`"
        );

        let inner: Error<Error<std::io::Error>> = Error::Inner(Error::Inner(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(inner.flatten().into_inner().is_ok());
    }

    #[test]
    fn through_layers_judges_layer_errors_itself_and_passes_inner_ones_on() {
        let only_inner = |r: Result<&(), &std::io::Error>| {
            r.err().map(|_| {
                Outcome::failure(
                    Transience::Persistent,
                    Category::User,
                    Severity::Low,
                    "inner",
                )
            })
        };
        let c = ThroughLayers(only_inner);
        let t: Error<std::io::Error> = Error::Timeout(timeout(TimeoutKind::Total));
        assert_eq!(
            c.outcome(Err(&t)).classification().unwrap().code,
            "timeout_total"
        );
        let inner: Error<std::io::Error> = Error::Inner(std::io::ErrorKind::Other.into());
        assert_eq!(
            c.outcome(Err(&inner)).classification().unwrap().code,
            "inner"
        );
        assert_eq!(c.outcome(Ok(&())), Outcome::Success);
    }

    #[test]
    fn boxed_layer_errors_are_recognised_by_layer_errors() {
        let e: Error<std::io::Error> = Error::BulkheadFull(BulkheadFull {
            bulkhead: "db".into(),
            max_concurrent: 1,
            max_queue: 0,
            reason: BulkheadRejection::QueueFull,
        });
        let boxed = e.into_box_error();
        assert!(boxed.downcast_ref::<BulkheadFull>().is_some());
        let outcome = LayerErrors.outcome(Err::<&(), _>(&boxed));
        assert_eq!(outcome.classification().unwrap().code, "bulkhead_full");

        let other: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::Other));
        assert_eq!(LayerErrors.classify(Err::<&(), _>(&other)), None);
        let inner: Error<std::io::Error> = Error::Inner(std::io::ErrorKind::Other.into());
        assert!(
            inner
                .into_box_error()
                .downcast_ref::<std::io::Error>()
                .is_some()
        );
    }
    #[test]
    fn breaker_names_read_the_same_held_in_place_or_shared() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        fn hash(name: &BreakerName) -> u64 {
            let mut h = DefaultHasher::new();
            name.hash(&mut h);
            h.finish()
        }
        let exactly = "é".repeat(BreakerName::INLINE / 2); // 22 bytes, 11 chars
        let long = format!("{exactly}x");
        for text in [
            "",
            "ledger_read",
            exactly.as_str(),
            long.as_str(),
            "payment_gateway/127.0.0.1:9",
        ] {
            let names = [
                BreakerName::from(text),
                BreakerName::from(text.to_owned()),
                BreakerName::from(Arc::<str>::from(text)),
                BreakerName::from(&Arc::<str>::from(text)),
            ];
            for name in &names {
                assert_eq!(name.as_str(), text);
                assert_eq!(&**name, text);
                assert_eq!(name.to_string(), text);
                assert_eq!(format!("{name:?}"), format!("{text:?}"));
                assert_eq!(*name, text);
                assert_eq!(name.clone(), names[0]);
                assert_eq!(hash(name), hash(&names[0]));
                assert_eq!(&*name.to_arc(), text);
                assert_eq!(&*Arc::<str>::from(name.clone()), text);
                assert_eq!(String::from(name.clone()), text);
            }
            assert_eq!(
                matches!(names[0].0, NameRepr::Inline { .. }),
                text.len() <= BreakerName::INLINE,
                "{text}"
            );
        }
        // A long name keeps sharing the breaker's string.
        let shared: Arc<str> = Arc::from(long.as_str());
        assert!(Arc::ptr_eq(&BreakerName::from(&shared).to_arc(), &shared));
        let open = CircuitOpen {
            breaker: long.as_str().into(),
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(
            open.to_string(),
            format!("circuit breaker `{long}` is open; next probe in 1s 500ms")
        );
        // The error stays small to move: no bigger than a timeout's.
        assert!(std::mem::size_of::<CircuitOpen>() <= 40);
    }
}
