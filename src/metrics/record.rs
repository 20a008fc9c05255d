//! The recording API the other layers call: plain values in, bounded labels out.
//!
//! Each function records through the `metrics` facade into whatever recorder is installed (none:
//! nothing happens, at the cost of building a key). Names passed in (`operation`, `breaker`,
//! `bulkhead`) must come from the policy table, never from request data; every other label is a
//! closed enum.

use metrics::SharedString;

use crate::error::{BulkheadRejection, TimeoutKind};

use super::names;

/// How a call through the retry layer ended, for [`record_retry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryOutcomeKind {
    /// The first attempt succeeded.
    SucceededWithoutRetry,
    /// An attempt after the first succeeded.
    SucceededAfterRetry,
    /// Every allowed attempt failed (the last failure is returned).
    FailedAfterRetries,
    /// A retry was wanted but the retry budget had no tokens left.
    BudgetExhausted,
    /// The failure was not one to retry (persistent, or unknown with `retry_unknown: false`).
    NotRetryable,
}

impl RetryOutcomeKind {
    /// The label value: `succeeded_without_retry`, `succeeded_after_retry`,
    /// `failed_after_retries`, `budget_exhausted`, `not_retryable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryOutcomeKind::SucceededWithoutRetry => "succeeded_without_retry",
            RetryOutcomeKind::SucceededAfterRetry => "succeeded_after_retry",
            RetryOutcomeKind::FailedAfterRetries => "failed_after_retries",
            RetryOutcomeKind::BudgetExhausted => "budget_exhausted",
            RetryOutcomeKind::NotRetryable => "not_retryable",
        }
    }
}

/// A circuit breaker's state, for [`record_breaker_transition`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// A few probe calls are let through.
    HalfOpen,
    /// Calls are rejected.
    Open,
    /// Held open by an operator.
    ForcedOpen,
    /// Switched off: every call flows and nothing is counted.
    Disabled,
}

impl BreakerState {
    /// Every state, in gauge order.
    pub const ALL: [BreakerState; 5] = [
        BreakerState::Closed,
        BreakerState::HalfOpen,
        BreakerState::Open,
        BreakerState::ForcedOpen,
        BreakerState::Disabled,
    ];

    /// The label value: `closed`, `half_open`, `open`, `forced_open`, `disabled`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }
}

/// Counts one call through the retry layer by how it ended.
pub fn record_retry(operation: impl Into<SharedString>, kind: RetryOutcomeKind) {
    metrics::counter!(names::RETRIES_TOTAL, "operation" => operation.into(), "outcome" => kind.as_str())
        .increment(1);
}

/// Counts one retry attempt (an attempt after the first).
pub fn record_retry_attempt(operation: impl Into<SharedString>) {
    metrics::counter!(names::RETRY_ATTEMPTS_TOTAL, "operation" => operation.into()).increment(1);
}

/// Records a breaker changing state: one transition counted, and the state gauge moved to `to`
/// (1 for `to`, 0 for every other state, so `max by (breaker)` never double counts).
pub fn record_breaker_transition(
    breaker: impl Into<SharedString>,
    from: BreakerState,
    to: BreakerState,
) {
    let breaker = breaker.into();
    metrics::counter!(
        names::CIRCUIT_BREAKER_TRANSITIONS_TOTAL,
        "breaker" => breaker.clone(), "from" => from.as_str(), "to" => to.as_str()
    )
    .increment(1);
    record_breaker_state(breaker, to);
}

/// Sets the breaker's state gauge without counting a transition (at start-up, say).
pub fn record_breaker_state(breaker: impl Into<SharedString>, state: BreakerState) {
    let breaker = breaker.into();
    for s in BreakerState::ALL {
        metrics::gauge!(
            names::CIRCUIT_BREAKER_STATE,
            "breaker" => breaker.clone(), "state" => s.as_str()
        )
        .set(if s == state { 1.0 } else { 0.0 });
    }
}

/// Counts one call rejected by an open breaker.
pub fn record_breaker_rejected(breaker: impl Into<SharedString>) {
    metrics::counter!(names::CIRCUIT_BREAKER_REJECTED_TOTAL, "breaker" => breaker.into())
        .increment(1);
}

/// Sets a bulkhead's gauges: calls in flight and calls queued.
pub fn record_bulkhead(bulkhead: impl Into<SharedString>, in_flight: usize, queued: usize) {
    let bulkhead = bulkhead.into();
    metrics::gauge!(names::BULKHEAD_IN_FLIGHT, "bulkhead" => bulkhead.clone())
        .set(in_flight as f64);
    metrics::gauge!(names::BULKHEAD_QUEUED, "bulkhead" => bulkhead).set(queued as f64);
}

/// Counts one call a bulkhead turned away, by reason (`queue_full`, `wait_timed_out`).
pub fn record_bulkhead_rejected(bulkhead: impl Into<SharedString>, reason: &BulkheadRejection) {
    let reason = match reason {
        BulkheadRejection::QueueFull => "queue_full",
        BulkheadRejection::WaitTimedOut(_) => "wait_timed_out",
    };
    metrics::counter!(names::BULKHEAD_REJECTED_TOTAL, "bulkhead" => bulkhead.into(), "reason" => reason)
        .increment(1);
}

/// Counts one timeout by kind (`total`, `attempt`, `deadline`).
pub fn record_timeout(operation: impl Into<SharedString>, kind: TimeoutKind) {
    metrics::counter!(names::TIMEOUTS_TOTAL, "operation" => operation.into(), "kind" => kind.as_str())
        .increment(1);
}
