//! A Binance-style REST client on reqwest and palisade.
//!
//! Every call goes through one tower stack (built in [`ExchangeClient::new`]):
//!
//! ```text
//! retry (stopgap loop below)  ->  WeightGovernor  ->  attempt timeout (stopgap)  ->  RestTransport
//! ```
//!
//! Each attempt is classified by the [`ExchangeClassifier`] (the `binance` code table from
//! `policies.yaml`, then the HTTP status, then transport errors); only transient failures are
//! retried, after the wait the exchange advertised or the policy's backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use palisade::classify::{Classification, Classified, Classify, Outcome, Severity, Transience};
use palisade::policy::{Jitter, Policies, RetryPolicy};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::classifier::{ExchangeClassifier, error_body};
use crate::clock::{ServerClock, WallClock};
use crate::error::ExchangeError;
use crate::governor::{Governed, GovernorConfig, GovernorLayer, WeightGovernor};
use crate::report::CallStats;
use crate::transport::{
    ApiRequest, ApiResponse, Credentials, Operation, RestTransport, SendLatency,
};

/// The name of the code table in `policies.yaml`.
pub const CODE_TABLE: &str = "binance";

/// How to reach the exchange and how to behave.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    /// API key and secret.
    pub credentials: Credentials,
    /// `recvWindow` sent with signed requests.
    pub recv_window: Duration,
    /// When to slow down.
    pub governor: GovernorConfig,
    /// The local clock (tests pin it).
    pub clock: WallClock,
    /// Seeds the backoff jitter.
    pub seed: u64,
}

/// The client's stack: what `ServiceBuilder` in [`ExchangeClient::new`] builds.
pub type Stack = Governed<RestTransport>;

/// The policy file has no `binance` code table.
#[derive(Debug, thiserror::Error)]
#[error("the policy file has no `error_codes: {CODE_TABLE}:` table")]
pub struct MissingCodeTable;

/// A side of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Buy the base asset.
    Buy,
    /// Sell the base asset.
    Sell,
}

impl Side {
    /// `BUY` or `SELL`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }
}

/// A limit order to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    /// `BTCUSDT`
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Quantity, as a decimal string.
    pub quantity: String,
    /// Limit price, as a decimal string.
    pub price: String,
}

/// `GET /api/v3/ticker/price`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct TickerPrice {
    /// The symbol.
    pub symbol: String,
    /// The last price, as a decimal string.
    pub price: String,
}

/// The answer to placing or cancelling an order.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OrderAck {
    /// The symbol.
    pub symbol: String,
    /// The exchange's id.
    pub order_id: u64,
    /// Our id, kept across retries so a repeat cannot place a second order.
    pub client_order_id: String,
    /// `NEW`, `CANCELED`, ...
    pub status: String,
}

/// One asset's balance.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Balance {
    /// The asset.
    pub asset: String,
    /// Free to trade.
    pub free: String,
    /// Locked in open orders.
    pub locked: String,
}

/// `GET /api/v3/account`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// Whether the key may trade.
    pub can_trade: bool,
    /// Balances.
    pub balances: Vec<Balance>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerTime {
    server_time: i64,
}

/// The client. Cheap to share behind an `Arc`; calls may run concurrently.
#[derive(Debug)]
pub struct ExchangeClient {
    stack: Stack,
    policies: Arc<Policies>,
    classifier: ExchangeClassifier,
    clock: Arc<ServerClock>,
    governor: Arc<WeightGovernor>,
    stats: Mutex<CallStats>,
    jitter_state: Mutex<u64>,
    next_order_id: AtomicU64,
}

impl ExchangeClient {
    /// A client calling the exchange at `config.base_url` under `policies`.
    pub fn new(config: ClientConfig, policies: Arc<Policies>) -> Result<Self, MissingCodeTable> {
        let table = policies.error_codes(CODE_TABLE).ok_or(MissingCodeTable)?;
        let classifier = ExchangeClassifier::new(Arc::clone(table));
        let clock = ServerClock::new(config.clock);
        let governor = Arc::new(WeightGovernor::new(config.governor, Arc::clone(&clock)));
        let transport = RestTransport::new(
            config.base_url,
            config.credentials,
            Arc::clone(&clock),
            Arc::clone(&policies),
            u64::try_from(config.recv_window.as_millis()).unwrap_or(60_000),
        );
        let stack = ServiceBuilder::new()
            // palisade stack: MetricsLayer (attempts, outcomes by code) goes here when it lands
            // palisade stack: RetryLayer (policy.retry + ExchangeClassifier, with its budget)
            //                 goes here when it lands, replacing `ExchangeClient::execute`'s loop
            // palisade stack: CircuitBreakerLayer (policy.circuit_breaker + ExchangeClassifier)
            //                 goes here when it lands
            .layer(GovernorLayer::new(
                Arc::clone(&governor),
                classifier.clone(),
            ))
            // palisade stack: TimeoutLayer (policy.timeout.attempt) goes here when it lands,
            //                 replacing `send_within_attempt_limit` in transport.rs
            .service(transport);
        Ok(ExchangeClient {
            stack,
            policies,
            classifier,
            clock,
            governor,
            stats: Mutex::new(CallStats::default()),
            jitter_state: Mutex::new(config.seed),
            next_order_id: AtomicU64::new(1),
        })
    }

    /// The governor (for its stats).
    pub fn governor(&self) -> &WeightGovernor {
        &self.governor
    }

    /// The exchange clock estimate.
    pub fn clock(&self) -> &ServerClock {
        &self.clock
    }

    /// A copy of the counts so far.
    pub fn stats(&self) -> CallStats {
        self.lock_stats().clone()
    }

    fn lock_stats(&self) -> MutexGuard<'_, CallStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /api/v3/ping`
    pub async fn ping(&self) -> Result<(), ExchangeError> {
        self.execute(ApiRequest::new(Operation::Ping)).await?;
        Ok(())
    }

    /// `GET /api/v3/time`: the exchange's time in Unix milliseconds.
    pub async fn server_time(&self) -> Result<i64, ExchangeError> {
        let time: ServerTime = self.fetch(ApiRequest::new(Operation::Time)).await?;
        Ok(time.server_time)
    }

    /// Learns the offset between our clock and the exchange's; returns it in milliseconds.
    pub async fn sync_time(&self) -> Result<i64, ExchangeError> {
        let response = self.execute(ApiRequest::new(Operation::Time)).await?;
        let answered = self.clock.local().now_ms();
        // The exchange read its clock about half a round trip before the answer arrived.
        // Only the send-to-answer time counts: a wait in the governor before sending does not.
        let round_trip = response
            .extensions()
            .get::<SendLatency>()
            .map_or(0, |SendLatency(d)| {
                i64::try_from(d.as_millis()).unwrap_or(0)
            });
        let time: ServerTime =
            serde_json::from_slice(response.body()).map_err(|e| ExchangeError::Decode {
                operation: Operation::Time,
                detail: e.to_string(),
            })?;
        self.clock.sync(time.server_time, answered - round_trip / 2);
        tracing::info!(offset_ms = self.clock.offset_ms(), "clock synchronised");
        Ok(self.clock.offset_ms())
    }

    /// `GET /api/v3/ticker/price?symbol=...`
    pub async fn ticker_price(&self, symbol: &str) -> Result<TickerPrice, ExchangeError> {
        self.fetch(ApiRequest::new(Operation::TickerPrice).param("symbol", symbol))
            .await
    }

    /// `POST /api/v3/order`: a GTC limit order.
    ///
    /// Every attempt carries the same `newClientOrderId`. When an attempt whose answer was
    /// lost (a timeout, a 5xx) had in fact placed the order, the retry is refused as a
    /// duplicate; the client then fetches the order by that id and returns it, so a retry
    /// never places a second order and never reports a placed order as failed.
    pub async fn place_order(&self, order: &NewOrder) -> Result<OrderAck, ExchangeError> {
        let id = self.next_order_id.fetch_add(1, Ordering::Relaxed);
        let client_order_id = format!("palisade-{id}");
        let request = ApiRequest::new(Operation::PlaceOrder)
            .param("symbol", order.symbol.as_str())
            .param("side", order.side.as_str())
            .param("type", "LIMIT")
            .param("timeInForce", "GTC")
            .param("quantity", order.quantity.as_str())
            .param("price", order.price.as_str())
            .param("newClientOrderId", client_order_id.as_str());
        match self.fetch(request).await {
            Err(e) if e.is_duplicate_of_an_earlier_attempt() => {
                tracing::info!(
                    operation = "place_order",
                    attempts = e.attempts(),
                    "an earlier attempt placed the order; fetching it"
                );
                let ack = self.query_order(&order.symbol, &client_order_id).await?;
                self.lock_stats().duplicate_resolved(&e.classification());
                Ok(ack)
            }
            other => other,
        }
    }

    /// `GET /api/v3/order?origClientOrderId=...`
    pub async fn query_order(
        &self,
        symbol: &str,
        client_order_id: &str,
    ) -> Result<OrderAck, ExchangeError> {
        let request = ApiRequest::new(Operation::QueryOrder)
            .param("symbol", symbol)
            .param("origClientOrderId", client_order_id);
        self.fetch(request).await
    }

    /// `DELETE /api/v3/order`
    pub async fn cancel_order(
        &self,
        symbol: &str,
        order_id: u64,
    ) -> Result<OrderAck, ExchangeError> {
        let request = ApiRequest::new(Operation::CancelOrder)
            .param("symbol", symbol)
            .param("orderId", order_id.to_string());
        self.fetch(request).await
    }

    /// `GET /api/v3/account`
    pub async fn account(&self) -> Result<Account, ExchangeError> {
        self.fetch(ApiRequest::new(Operation::Account)).await
    }

    async fn fetch<T: DeserializeOwned>(&self, request: ApiRequest) -> Result<T, ExchangeError> {
        let operation = request.operation;
        let response = self.execute(request).await?;
        serde_json::from_slice(response.body()).map_err(|e| ExchangeError::Decode {
            operation,
            detail: e.to_string(),
        })
    }

    /// TEMPORARY (issue 7 stopgap): palisade's `RetryLayer` is being written on another
    /// branch. Until it lands this loop does its job, deciding only through the classifier:
    /// retry transient failures (and unknown ones if the policy says `retry_unknown`), at
    /// most `max_retries` times, within `timeout.total`, sleeping the exchange's retry-after
    /// or the policy's backoff. No retry budget. Delete when the layer is in the stack.
    async fn execute(&self, request: ApiRequest) -> Result<ApiResponse, ExchangeError> {
        let operation = request.operation;
        let policy = Arc::clone(self.policies.for_operation(operation.policy()));
        let started = Instant::now();
        let deadline = started + policy.timeout.total;
        let mut attempts = 0u32;
        let mut previous_delay = policy.retry.base_delay;
        {
            let mut stats = self.lock_stats();
            stats.calls += 1;
            stats.operations.entry(operation).or_default().calls += 1;
        }
        loop {
            attempts += 1;
            let mut stack = self.stack.clone();
            let result = match stack.ready().await {
                Ok(ready) => ready.call(request.clone()).await,
                Err(e) => Err(e),
            };
            let outcome = self.classifier.outcome(result.as_ref());
            {
                let mut stats = self.lock_stats();
                stats.attempts += 1;
                stats.operations.entry(operation).or_default().attempts += 1;
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
            let class = match outcome {
                Outcome::Success | Outcome::Ignored => {
                    let mut stats = self.lock_stats();
                    stats.call_latencies.push(started.elapsed());
                    if result.is_ok() {
                        stats.succeeded += 1;
                    }
                    // An error nobody counts (none today) still reaches the caller.
                    return result.map_err(|source| ExchangeError::Transport {
                        operation,
                        classification: Classification::unclassified(),
                        attempts,
                        source,
                    });
                }
                Outcome::Failure(class) => class,
            };
            let retryable = class.is_transient()
                || (class.transience == Transience::Unknown && policy.retry.retry_unknown);
            let delay = self.backoff(&policy.retry, &class, &mut previous_delay, attempts);
            // The governor holds the next attempt for the whole advertised wait, even when the
            // backoff sleep is capped shorter: do not retry into a wait past the total budget.
            let next_send = Instant::now() + class.retry_after.map_or(delay, |w| w.max(delay));
            let in_time = next_send < deadline;
            if !retryable || attempts > policy.retry.max_retries || !in_time {
                log_failure(operation, &class, attempts);
                let mut stats = self.lock_stats();
                stats.call_failed(operation, &class);
                stats.call_latencies.push(started.elapsed());
                drop(stats);
                return Err(self.error(operation, attempts, class, result));
            }
            tracing::info!(
                operation = operation.as_str(),
                code = %class.code,
                attempt = attempts,
                delay_ms = delay.as_millis() as u64,
                "transient failure; retrying"
            );
            if class.code == "binance_-1021" {
                // The exchange thinks our clock is off: learn its time before signing again.
                self.lock_stats().time_resyncs += 1;
                if let Err(e) = Box::pin(self.sync_time()).await {
                    tracing::warn!(error = %e, "clock resync failed");
                }
            }
            {
                let mut stats = self.lock_stats();
                stats.retries += 1;
                stats.backoff_sleeps += 1;
                stats.backoff_slept += delay;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// The wait before the next attempt: the exchange's retry-after when it gave one (the
    /// governor holds every call for the rest of a 429/418 pause), else the policy's backoff.
    fn backoff(
        &self,
        retry: &RetryPolicy,
        class: &Classification,
        previous: &mut Duration,
        attempt: u32,
    ) -> Duration {
        if let Some(after) = class.retry_after {
            return after.min(retry.max_delay);
        }
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let ceiling = retry
            .base_delay
            .mul_f64(retry.multiplier.max(1.0).powi(exponent).min(1e6))
            .min(retry.max_delay);
        let delay = match retry.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(self.random()),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(self.random()),
            Jitter::Decorrelated => {
                let upper = previous.saturating_mul(3).max(retry.base_delay);
                let span = upper.saturating_sub(retry.base_delay);
                (retry.base_delay + span.mul_f64(self.random())).min(retry.max_delay)
            }
        };
        *previous = delay;
        delay
    }

    /// A uniform number in [0, 1) from a seeded splitmix64, so a session replays exactly.
    fn random(&self) -> f64 {
        let mut state = self.jitter_state.lock().unwrap_or_else(|p| p.into_inner());
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn error(
        &self,
        operation: Operation,
        attempts: u32,
        classification: Classification,
        result: Result<ApiResponse, crate::transport::StackError>,
    ) -> ExchangeError {
        match result {
            Ok(response) => {
                let body = error_body(&response);
                let entry = body
                    .as_ref()
                    .and_then(|b| self.classifier.table().get(&b.code.to_string()));
                ExchangeError::Rejected {
                    operation,
                    status: response.status().as_u16(),
                    exchange_code: body.as_ref().map(|b| b.code),
                    exchange_message: body.map(|b| b.msg).unwrap_or_default(),
                    message: entry.and_then(|e| e.message.clone()),
                    suggestion: entry.and_then(|e| e.suggestion.clone()),
                    classification,
                    attempts,
                }
            }
            Err(source) => ExchangeError::Transport {
                operation,
                classification,
                attempts,
                source,
            },
        }
    }
}

/// Logs a call that failed for good as loudly as its severity says: an insufficient balance
/// (low) is routine, a bad signature (high) is not.
fn log_failure(operation: Operation, class: &Classification, attempts: u32) {
    let (op, code, category) = (operation.as_str(), &class.code, class.category.as_str());
    match class.severity {
        Severity::Critical | Severity::High => {
            tracing::error!(operation = op, %code, category, attempts, "call failed")
        }
        Severity::Medium => {
            tracing::warn!(operation = op, %code, category, attempts, "call failed")
        }
        Severity::Low | Severity::Info => {
            tracing::info!(operation = op, %code, category, attempts, "call failed")
        }
    }
}
