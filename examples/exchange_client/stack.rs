//! The client's tower stack: palisade's layers from the operation's policy in
//! `policies.yaml`, with the exchange-specific layers between them. One stack per endpoint,
//! outermost first:
//!
//! ```text
//! ErrorMetricsLayer            palisade: palisade_requests_total, _request_duration_seconds
//!                              and _errors_total, labelled with the endpoint's name
//! BulkheadLayer                palisade: the policy's `bulkhead:` (shared by its endpoints);
//!                              a full one refuses at once with BulkheadFull
//! TimeoutLayer (total)         palisade: the call's whole budget; retry sees it as the deadline
//!   RetryLayer                 palisade: transient failures only, backoff or the asked wait,
//!                              within the policy's retry budget (shared by its endpoints)
//!     AttemptLog               example: counts each try for the report; resyncs the clock
//!                              after -1021 before the retry signs again
//!       CircuitBreakerLayer    palisade: one breaker per endpoint; caller faults do not count
//!         GovernorLayer        example: the weight budget and the 429/418 pause
//!           TimeoutLayer (attempt)   palisade: one request's limit (governor waits excluded)
//!             RestTransport    example: sign, send, read
//! ```
//!
//! The palisade layers record their own metrics (labels in `docs/metrics.md`): retry outcomes
//! and attempts (`operation` = the policy, e.g. `exchange_public`), timeouts (`operation` =
//! the policy, `kind` total/attempt/deadline), bulkhead gauges and rejections (`bulkhead` =
//! the policy), breaker state, transitions and rejections (`breaker` =
//! `<policy>:<endpoint>`). They register their series when built, so the recorder must be
//! installed before the client is built (`main` does so).
//!
//! Every layer judges outcomes with the same [`ExchangeClassifier`]. The governor sits
//! inside the breaker so an open breaker refuses a call before it reserves any weight, and
//! outside the attempt timeout so a wait for the weight window is not a timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use palisade::bulkhead::{Bulkhead, BulkheadLayer};
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer};
use palisade::classify::{Classify, Outcome};
use palisade::metrics::{ErrorMetrics, ErrorMetricsLayer, Operation as MetricsOperation};
use palisade::policy::Policy;
use palisade::retry::{CloneRequest, Retry, RetryBudget, RetryLayer};
use palisade::timeout::{Timeout, TimeoutLayer};
use serde::Deserialize;
use tokio::time::Instant;
use tower::util::{BoxCloneSyncService, MapErr};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::classifier::ExchangeClassifier;
use crate::clock::ServerClock;
use crate::governor::{Governed, GovernorLayer, WeightGovernor};
use crate::report::CallStats;
use crate::transport::{
    ApiRequest, ApiResponse, Operation, RestTransport, SendLatency, StackError,
};

/// Folds the error of a palisade layer around the stack's error into one level.
pub type Flatten = fn(palisade::Error<StackError>) -> StackError;

fn flatten(error: palisade::Error<StackError>) -> StackError {
    error.flatten()
}

/// One endpoint's stack; see the [module docs](self).
pub type EndpointStack = ErrorMetrics<
    MapErr<
        Bulkhead<
            MapErr<
                Timeout<
                    MapErr<
                        Retry<
                            AttemptLog<
                                MapErr<
                                    CircuitBreaker<
                                        Governed<MapErr<Timeout<RestTransport>, Flatten>>,
                                        ExchangeClassifier,
                                    >,
                                    Flatten,
                                >,
                            >,
                            ExchangeClassifier,
                            CloneRequest,
                        >,
                        Flatten,
                    >,
                >,
                Flatten,
            >,
        >,
        Flatten,
    >,
    ExchangeClassifier,
    MetricsOperation,
>;

/// The stack of the `time` endpoint, as the clock resync calls it.
pub type TimeService = BoxCloneSyncService<ApiRequest, ApiResponse, StackError>;

/// What the layers of one endpoint share with the rest of the client.
pub struct Parts<'a> {
    /// The endpoint.
    pub operation: Operation,
    /// Its policy.
    pub policy: &'a Policy,
    /// The retry budget of its policy (shared by every endpoint under that policy).
    pub budget: RetryBudget,
    /// The bulkhead of its policy (shared by every endpoint under that policy).
    pub bulkhead: BulkheadLayer,
    /// The classifier every layer judges by.
    pub classifier: &'a ExchangeClassifier,
    /// The weight governor (one for the client: the exchange counts weight per IP).
    pub governor: &'a Arc<WeightGovernor>,
    /// Where tries are counted.
    pub stats: &'a Arc<Mutex<CallStats>>,
    /// The clock resync after `-1021`, for signed endpoints.
    pub resync: Option<Arc<Resync>>,
    /// Seeds the retry jitter.
    pub seed: u64,
}

/// Builds one endpoint's stack over `transport`; returns it with its breaker's handle.
pub fn endpoint_stack(
    transport: RestTransport,
    parts: Parts<'_>,
) -> (EndpointStack, CircuitBreakerHandle) {
    let Parts {
        operation,
        policy,
        budget,
        bulkhead,
        classifier,
        governor,
        stats,
        resync,
        seed,
    } = parts;
    let breaker_name: Arc<str> = format!("{}:{}", policy.name(), operation.as_str()).into();
    let breaker = CircuitBreakerLayer::builder(breaker_name.clone(), policy.circuit_breaker)
        .event_capacity(256)
        .build(classifier.clone());
    let handle = breaker.handle();
    let flat = flatten as Flatten;
    let stack = ServiceBuilder::new()
        .layer(ErrorMetricsLayer::new(classifier.clone()).operation(operation.as_str()))
        .map_err(flat)
        .layer(bulkhead)
        .map_err(flat)
        .layer(TimeoutLayer::total_from(policy))
        .map_err(flat)
        .layer(
            RetryLayer::from_policy(policy, classifier.clone())
                .with_budget(budget)
                .with_seed(seed),
        )
        .layer(AttemptLogLayer {
            stats: Arc::clone(stats),
            classifier: classifier.clone(),
            resync,
        })
        .map_err(flat)
        .layer(breaker)
        .layer(GovernorLayer::new(Arc::clone(governor), classifier.clone()))
        .map_err(flat)
        .layer(TimeoutLayer::attempt_from(policy))
        .service(transport);
    (stack, handle)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerTime {
    server_time: i64,
}

/// Learns the exchange's clock from a `/api/v3/time` answer; returns the offset in ms.
///
/// The exchange read its clock about half a round trip before the answer arrived. Only the
/// send-to-answer time counts: a wait in the governor before sending does not.
pub fn apply_server_time(
    clock: &ServerClock,
    response: &ApiResponse,
) -> Result<i64, serde_json::Error> {
    let answered = clock.local().now_ms();
    let round_trip = response
        .extensions()
        .get::<SendLatency>()
        .map_or(0, |SendLatency(d)| {
            i64::try_from(d.as_millis()).unwrap_or(0)
        });
    let time: ServerTime = serde_json::from_slice(response.body())?;
    clock.sync(time.server_time, answered - round_trip / 2);
    Ok(clock.offset_ms())
}

/// Re-learns the exchange's clock when it refuses a timestamp (`-1021`).
pub struct Resync {
    /// The `time` endpoint's own stack.
    pub time: TimeService,
    /// The clock the transport signs with.
    pub clock: Arc<ServerClock>,
}

/// Puts an [`AttemptLog`] in front of a service.
#[derive(Clone)]
pub struct AttemptLogLayer {
    stats: Arc<Mutex<CallStats>>,
    classifier: ExchangeClassifier,
    resync: Option<Arc<Resync>>,
}

impl<S> Layer<S> for AttemptLogLayer {
    type Service = AttemptLog<S>;

    fn layer(&self, inner: S) -> AttemptLog<S> {
        AttemptLog {
            inner,
            stats: Arc::clone(&self.stats),
            classifier: self.classifier.clone(),
            resync: self.resync.clone(),
        }
    }
}

/// Counts every try the retry layer makes: the report's attempts, retries, waits between
/// tries, answered latency, failures by code and refusals by the breaker. After a `-1021` it
/// resyncs the clock before handing the failure back, so the retry signs with the
/// exchange's time.
///
/// It records no metric: the retry, breaker and timeout layers record their own.
#[derive(Clone)]
pub struct AttemptLog<S> {
    inner: S,
    stats: Arc<Mutex<CallStats>>,
    classifier: ExchangeClassifier,
    resync: Option<Arc<Resync>>,
}

fn lock(stats: &Mutex<CallStats>) -> MutexGuard<'_, CallStats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S> Service<ApiRequest> for AttemptLog<S>
where
    S: Service<ApiRequest, Response = ApiResponse, Error = StackError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = ApiResponse;
    type Error = StackError;
    // Example code: the bookkeeping is an async block, boxed.
    type Future = Pin<Box<dyn Future<Output = Result<ApiResponse, StackError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StackError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ApiRequest) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let stats = Arc::clone(&self.stats);
        let classifier = self.classifier.clone();
        let resync = self.resync.clone();
        Box::pin(async move {
            let operation = request.operation;
            let trace = request.trace.clone();
            let now = Instant::now();
            if let Some(gap) = trace.start_try(now) {
                let mut stats = lock(&stats);
                stats.retries += 1;
                stats.backoff_sleeps += 1;
                stats.backoff_slept += gap;
            }
            let result = inner.call(request).await;
            trace.end_try(Instant::now());
            let outcome = classifier.outcome(result.as_ref());
            let refused = matches!(result, Err(palisade::Error::CircuitOpen(_)));
            {
                let mut stats = lock(&stats);
                if refused {
                    stats.breaker_refusals += 1;
                } else {
                    stats.attempts += 1;
                    stats.operations.entry(operation).or_default().attempts += 1;
                }
                if let Some(SendLatency(latency)) = result
                    .as_ref()
                    .ok()
                    .and_then(|r| r.extensions().get::<SendLatency>())
                {
                    stats.attempt_latencies.push(*latency);
                }
                if let Outcome::Failure(class) = &outcome {
                    stats.attempt_failed(class);
                }
            }
            if let (Outcome::Failure(class), Some(resync)) = (&outcome, &resync)
                && class.code == "binance_-1021"
            {
                // The exchange thinks our clock is off: learn its time before the retry signs
                // again. The sync is a call of its own (counted as one).
                lock(&stats).time_resyncs += 1;
                let started = Instant::now();
                lock(&stats).call_started(Operation::Time);
                let synced = resync
                    .time
                    .clone()
                    .oneshot(ApiRequest::new(Operation::Time))
                    .await;
                let mut stats = lock(&stats);
                stats.call_latencies.push(started.elapsed());
                match synced {
                    Ok(response) if response.status().is_success() => {
                        match apply_server_time(&resync.clock, &response) {
                            Ok(offset) => {
                                stats.succeeded += 1;
                                tracing::info!(offset_ms = offset, "clock resynchronised");
                            }
                            Err(e) => tracing::warn!(error = %e, "clock resync unreadable"),
                        }
                    }
                    other => {
                        let class = classifier.outcome(other.as_ref());
                        if let Some(class) = class.classification() {
                            stats.call_failed(Operation::Time, class);
                        }
                        tracing::warn!("clock resync failed");
                    }
                }
            }
            result
        })
    }
}
