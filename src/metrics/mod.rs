//! Error metrics through the [`metrics`](https://docs.rs/metrics) facade: every call counted by
//! outcome, timed, and every failure counted by its classification.
//!
//! The library installs no exporter: the application picks one (Prometheus, StatsD, ...), and
//! until it does, recording is a no-op. Every metric is listed in `docs/metrics.md`, and the
//! names are constants in [`names`].
//!
//! [`ErrorMetricsLayer`] records, per call:
//! - `palisade_requests_total{operation, outcome}`: `success`, `failure`, `ignored` (as the
//!   classifier decided) or `cancelled` (the response future was dropped first);
//! - `palisade_request_duration_seconds{operation}`: a histogram of completed calls;
//! - `palisade_errors_total{operation, category, severity, transience, code}` for failures.
//!
//! The layer never decides what a failure is: it asks the [`Classify`](crate::classify::Classify)
//! it is given, the same one retry and the breaker use.
//!
//! Labels stay bounded: `operation` comes from a fixed name, the policy table
//! ([`PolicyOperations`]) or an allow-list of route templates, and is `"other"` otherwise,
//! never the raw path; `category`, `severity`, `transience` are closed enums; `code` comes from the
//! classifier and is capped per layer ([`ErrorMetricsLayer::max_codes`]).
//!
//! The retry, timeout, bulkhead and circuit breaker layers record their own series, through
//! handles registered once when each layer is built (so install the recorder first). The
//! functions of this module ([`record_retry`], [`record_breaker_transition`],
//! [`record_bulkhead`], [`record_timeout`], ...) record the same series from code that is not
//! one of those layers; they look the metric up on each call, so keep them off hot paths.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//! use palisade::classify::HttpStatus;
//! use palisade::metrics::ErrorMetricsLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! let _guard = metrics::set_default_local_recorder(&recorder);
//!
//! let service = ServiceBuilder::new()
//!     .layer(ErrorMetricsLayer::new(HttpStatus::default()).operation("payment_gateway"))
//!     .service_fn(|req: Request<u16>| async move {
//!         let status = StatusCode::from_u16(*req.body()).unwrap();
//!         Ok::<_, std::convert::Infallible>(Response::builder().status(status).body(()).unwrap())
//!     });
//!
//! service.clone().oneshot(Request::new(200)).await.unwrap();
//! service.oneshot(Request::new(503)).await.unwrap();
//!
//! let errors: Vec<_> = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .filter(|(key, ..)| key.key().name() == "palisade_errors_total")
//!     .collect();
//! assert_eq!(errors.len(), 1);
//! let (key, _, _, value) = &errors[0];
//! let code = key.key().labels().find(|l| l.key() == "code").unwrap();
//! assert_eq!(code.value(), "http_503");
//! assert_eq!(value, &DebugValue::Counter(1));
//! # }
//! ```
//!
//! # Cost
//!
//! Each [`Operation`] builds its metric keys once, so a successful call costs a clock read, two
//! `Arc` bumps, the classifier, and two handle look-ups in the installed recorder, with no
//! allocation. A failure also builds the `palisade_errors_total` key (its labels depend on the
//! classification) and checks the code cap. See `docs/performance.md`.
//!
//! # Cancellation
//!
//! Dropping the response future before it completes records `outcome="cancelled"` (and no
//! duration): every call started is counted exactly once.

mod breaker;
mod codes;
mod future;
mod layer;
pub mod names;
mod operation;
mod record;
mod service;

pub(crate) use future::Bound;
pub use future::ResponseFuture;
pub use layer::{DEFAULT_MAX_CODES, ErrorMetricsLayer};
pub use operation::{Operation, OperationOf, PolicyOperations};
pub use record::{
    BreakerState, RetryOutcomeKind, record_breaker_rejected, record_breaker_state,
    record_breaker_transition, record_bulkhead, record_bulkhead_rejected, record_retry,
    record_retry_attempt, record_timeout,
};
pub use service::ErrorMetrics;

/// Registers the description and unit of every palisade metric with the installed recorder.
///
/// Call it once after installing the exporter, so `# HELP` lines and units show up.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::REQUESTS_TOTAL,
        Unit::Count,
        "Calls, by operation and outcome."
    );
    describe_histogram!(
        names::REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of completed calls, by operation."
    );
    describe_counter!(
        names::ERRORS_TOTAL,
        Unit::Count,
        "Failed calls, by operation and classification."
    );
    describe_counter!(
        names::RETRIES_TOTAL,
        Unit::Count,
        "Calls through the retry layer, by how they ended."
    );
    describe_counter!(
        names::RETRY_ATTEMPTS_TOTAL,
        Unit::Count,
        "Retry attempts (attempts after the first)."
    );
    describe_gauge!(
        names::CIRCUIT_BREAKER_STATE,
        "1 for the breaker's current state, 0 for its other states."
    );
    describe_counter!(
        names::CIRCUIT_BREAKER_TRANSITIONS_TOTAL,
        Unit::Count,
        "Circuit breaker state transitions."
    );
    describe_counter!(
        names::CIRCUIT_BREAKER_REJECTED_TOTAL,
        Unit::Count,
        "Calls rejected by an open circuit breaker."
    );
    describe_gauge!(
        names::BULKHEAD_IN_FLIGHT,
        Unit::Count,
        "Calls holding a bulkhead permit."
    );
    describe_gauge!(
        names::BULKHEAD_QUEUED,
        Unit::Count,
        "Calls waiting for a bulkhead permit."
    );
    describe_counter!(
        names::BULKHEAD_REJECTED_TOTAL,
        Unit::Count,
        "Calls a bulkhead turned away, by reason."
    );
    describe_counter!(
        names::TIMEOUTS_TOTAL,
        Unit::Count,
        "Timeouts fired, by kind."
    );
}
