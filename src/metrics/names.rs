//! Metric names, as constants, so dashboards and tests never drift from the code.
//!
//! Every metric is described in `docs/metrics.md`; [`describe`](super::describe) registers the
//! same descriptions and units with the installed recorder.

/// Counter `{operation, outcome}`: calls through an
/// [`ErrorMetricsLayer`](super::ErrorMetricsLayer), by outcome (`success`, `failure`,
/// `ignored`, `cancelled`).
pub const REQUESTS_TOTAL: &str = "palisade_requests_total";
/// Histogram `{operation}`, seconds: how long completed calls took (cancelled calls excluded).
pub const REQUEST_DURATION_SECONDS: &str = "palisade_request_duration_seconds";
/// Counter `{operation, category, severity, transience, code}`: failed calls by classification.
pub const ERRORS_TOTAL: &str = "palisade_errors_total";
/// Counter `{operation, outcome}`: retried calls by how they ended (see
/// [`RetryOutcomeKind`](super::RetryOutcomeKind)).
pub const RETRIES_TOTAL: &str = "palisade_retries_total";
/// Counter `{operation}`: retry attempts made (attempts after the first).
pub const RETRY_ATTEMPTS_TOTAL: &str = "palisade_retry_attempts_total";
/// Gauge `{breaker, state}`: 1 for the breaker's current state, 0 for the others.
pub const CIRCUIT_BREAKER_STATE: &str = "palisade_circuit_breaker_state";
/// Counter `{breaker, from, to}`: state transitions.
pub const CIRCUIT_BREAKER_TRANSITIONS_TOTAL: &str = "palisade_circuit_breaker_transitions_total";
/// Counter `{breaker}`: calls rejected because the breaker was open.
pub const CIRCUIT_BREAKER_REJECTED_TOTAL: &str = "palisade_circuit_breaker_rejected_total";
/// Gauge `{bulkhead}`: calls holding a permit.
pub const BULKHEAD_IN_FLIGHT: &str = "palisade_bulkhead_in_flight";
/// Gauge `{bulkhead}`: calls waiting for a permit.
pub const BULKHEAD_QUEUED: &str = "palisade_bulkhead_queued";
/// Counter `{bulkhead, reason}`: calls turned away (`queue_full`, `wait_timed_out`).
pub const BULKHEAD_REJECTED_TOTAL: &str = "palisade_bulkhead_rejected_total";
/// Counter `{operation, kind}`: timeouts fired (`total`, `attempt`, `deadline`).
pub const TIMEOUTS_TOTAL: &str = "palisade_timeouts_total";

/// The label every unknown or over-limit value collapses to.
pub const OTHER: &str = "other";
