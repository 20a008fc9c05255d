//! A Binance-style REST client on reqwest and palisade.
//!
//! Every call goes through its endpoint's tower stack (see [`crate::stack`]): palisade's error
//! metrics, bulkhead (one per policy), total timeout, retry (with the policy's retry budget),
//! circuit breaker (one per endpoint) and attempt timeout, all configured from the
//! operation's policy in `policies.yaml`, with the exchange's weight governor and a per-try
//! log between them. Each call runs under a correlation ID (see the private `execute`'s
//! docs).
//!
//! Each attempt is classified by the [`ExchangeClassifier`] (the `binance` code table from
//! `policies.yaml`, then the HTTP status, then transport errors); only transient failures are
//! retried, after the wait the exchange advertised or the policy's backoff.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use palisade::bulkhead::{BulkheadLayer, BulkheadRegistry};
use palisade::circuit_breaker::{CircuitBreakerHandle, Transition};
use palisade::classify::{Classification, Classified, Classify, Outcome, Severity};
use palisade::correlation::{self, CorrelationId};
use palisade::error::RetryStop;
use palisade::policy::Policies;
use palisade::retry::RetryBudget;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use crate::classifier::{ExchangeClassifier, error_body};
use crate::clock::{ServerClock, WallClock};
use crate::error::ExchangeError;
use crate::governor::{GovernorConfig, WeightGovernor};
use crate::report::{BreakerReport, BudgetReport, BulkheadReport, CallStats};
use crate::stack::{EndpointStack, Parts, Resync, apply_server_time, endpoint_stack};
use crate::transport::{ApiRequest, ApiResponse, Credentials, Operation, RestTransport};

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

/// One endpoint's stack and the state the report reads.
struct Endpoint {
    stack: EndpointStack,
    breaker: CircuitBreakerHandle,
}

/// The client. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct ExchangeClient {
    endpoints: BTreeMap<Operation, Endpoint>,
    budgets: BTreeMap<String, RetryBudget>,
    bulkheads: BTreeMap<String, BulkheadLayer>,
    policies: Arc<Policies>,
    classifier: ExchangeClassifier,
    clock: Arc<ServerClock>,
    governor: Arc<WeightGovernor>,
    stats: Arc<Mutex<CallStats>>,
    transitions: Mutex<Vec<broadcast::Receiver<Transition>>>,
    next_order_id: AtomicU64,
}

impl std::fmt::Debug for ExchangeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeClient")
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .field("classifier", &self.classifier)
            .field("clock", &self.clock)
            .field("governor", &self.governor)
            .finish_non_exhaustive()
    }
}

impl ExchangeClient {
    /// A client calling the exchange at `config.base_url` under `policies`: one stack per
    /// endpoint, each built from its operation's policy.
    pub fn new(config: ClientConfig, policies: Arc<Policies>) -> Result<Self, MissingCodeTable> {
        let table = policies.error_codes(CODE_TABLE).ok_or(MissingCodeTable)?;
        let classifier = ExchangeClassifier::new(Arc::clone(table));
        let clock = ServerClock::new(config.clock);
        let governor = Arc::new(WeightGovernor::new(config.governor, Arc::clone(&clock)));
        let transport = RestTransport::new(
            config.base_url,
            config.credentials,
            Arc::clone(&clock),
            u64::try_from(config.recv_window.as_millis()).unwrap_or(60_000),
        );
        let stats = Arc::new(Mutex::new(CallStats::default()));
        // One retry budget per policy, shared by the endpoints that run under it.
        let mut budgets: BTreeMap<String, RetryBudget> = BTreeMap::new();
        // The client's own registry (not the process-wide one): each policy's bulkhead (or
        // the partition it names) is shared by its endpoints, and by nobody outside this client.
        let registry = BulkheadRegistry::new();
        let mut bulkheads: BTreeMap<String, BulkheadLayer> = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        let mut transitions = Vec::new();
        let mut resync = None;
        // `time` first: the signed endpoints' clock resync calls its stack.
        let order = std::iter::once(Operation::Time).chain(
            Operation::ALL
                .into_iter()
                .filter(|op| *op != Operation::Time),
        );
        for (n, operation) in order.enumerate() {
            let policy = policies.for_operation(operation.policy());
            let budget = budgets
                .entry(policy.name().to_owned())
                .or_insert_with(|| RetryBudget::new(&policy.retry.budget))
                .clone();
            let bulkhead = registry.layer_for(policy);
            bulkheads
                .entry(bulkhead.name().to_owned())
                .or_insert_with(|| bulkhead.clone());
            let (stack, breaker) = endpoint_stack(
                transport.clone(),
                Parts {
                    operation,
                    policy,
                    budget,
                    bulkhead,
                    classifier: &classifier,
                    governor: &governor,
                    stats: &stats,
                    resync: if operation.signed() {
                        resync.clone()
                    } else {
                        None
                    },
                    seed: config.seed.wrapping_add(n as u64),
                },
            );
            if operation == Operation::Time {
                resync = Some(Arc::new(Resync {
                    time: tower::util::BoxCloneSyncService::new(stack.clone()),
                    clock: Arc::clone(&clock),
                }));
            }
            transitions.push(breaker.subscribe());
            endpoints.insert(operation, Endpoint { stack, breaker });
        }
        Ok(ExchangeClient {
            endpoints,
            budgets,
            bulkheads,
            policies,
            classifier,
            clock,
            governor,
            stats,
            transitions: Mutex::new(transitions),
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

    /// The circuit breaker of an endpoint.
    pub fn breaker(&self, operation: Operation) -> &CircuitBreakerHandle {
        &self.endpoints[&operation].breaker
    }

    /// Each policy's retry budget: what it allows now, read from the budget itself, with the
    /// retries this client took under it and the ones it refused.
    pub fn budgets(&self) -> Vec<BudgetReport> {
        let stats = self.lock_stats();
        self.budgets
            .iter()
            .map(|(policy, budget)| BudgetReport {
                policy: policy.clone(),
                remaining: budget.remaining(),
                retries: stats.retries_by_policy.get(policy).copied().unwrap_or(0),
                refused: stats
                    .retry_stops
                    .get(&(policy.clone(), RetryStop::BudgetExhausted.as_str()))
                    .copied()
                    .unwrap_or(0),
            })
            .collect()
    }

    /// Each bulkhead: its limits, what is free now, and the calls it refused.
    pub fn bulkheads(&self) -> Vec<BulkheadReport> {
        let stats = self.lock_stats();
        self.bulkheads
            .iter()
            .map(|(name, layer)| BulkheadReport {
                name: name.clone(),
                max_concurrent: layer.max_concurrent(),
                max_queue: layer.max_queue(),
                available: layer.available_permits(),
                refused: stats.bulkhead_refusals.get(name).copied().unwrap_or(0),
            })
            .collect()
    }

    /// Every breaker's state and counts, with the transitions its event stream delivered
    /// since the last call.
    pub fn breakers(&self) -> Vec<BreakerReport> {
        let mut events: BTreeMap<String, Vec<Transition>> = BTreeMap::new();
        let mut lagged = 0;
        for receiver in self
            .transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            loop {
                match receiver.try_recv() {
                    Ok(t) => events.entry(t.breaker.to_string()).or_default().push(t),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => lagged += n,
                    Err(_) => break,
                }
            }
        }
        self.endpoints
            .values()
            .map(|e| {
                let name = e.breaker.name().to_string();
                let metrics = e.breaker.metrics();
                BreakerReport {
                    transitions: events.remove(&name).unwrap_or_default(),
                    name,
                    state: metrics.state,
                    calls: metrics.calls,
                    failures: metrics.failures,
                    rejections: metrics.rejections,
                    lagged,
                }
            })
            .collect()
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
        let offset =
            apply_server_time(&self.clock, &response).map_err(|e| ExchangeError::Decode {
                operation: Operation::Time,
                detail: e.to_string(),
            })?;
        tracing::info!(offset_ms = offset, "clock synchronised");
        Ok(offset)
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
    ///
    /// The placement and that lookup are one operation: they share a correlation ID.
    pub async fn place_order(&self, order: &NewOrder) -> Result<OrderAck, ExchangeError> {
        match CorrelationId::current() {
            Some(_) => self.place_order_in_scope(order).await,
            None => {
                correlation::scope(CorrelationId::generate(), self.place_order_in_scope(order))
                    .await
            }
        }
    }

    async fn place_order_in_scope(&self, order: &NewOrder) -> Result<OrderAck, ExchangeError> {
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

    /// Sends one call through its endpoint's stack and turns a failure into an
    /// [`ExchangeError`]. Retries, waits and timeouts all happen inside the stack.
    ///
    /// The call runs under a correlation ID: the caller's, when it set one for a larger
    /// operation (placing an order and looking it up), else a new one. The stack's transport
    /// sends it in `x-request-id` with every try, and every log line of the call carries it
    /// (the `call` span).
    async fn execute(&self, request: ApiRequest) -> Result<ApiResponse, ExchangeError> {
        let id = CorrelationId::current().unwrap_or_else(CorrelationId::generate);
        let span = tracing::info_span!(
            "call",
            correlation_id = id.as_str(),
            operation = request.operation.as_str()
        );
        correlation::scope(id, self.execute_in_scope(request))
            .instrument(span)
            .await
    }

    async fn execute_in_scope(&self, request: ApiRequest) -> Result<ApiResponse, ExchangeError> {
        let operation = request.operation;
        let trace = request.trace.clone();
        let started = Instant::now();
        self.lock_stats().call_started(operation);
        let stack = self.endpoints[&operation].stack.clone();
        let result = stack.oneshot(request).await;
        let attempts = trace.tries().max(1);
        let policy = self.policies.for_operation(operation.policy());
        {
            let mut stats = self.lock_stats();
            stats.call_latencies.push(started.elapsed());
            *stats
                .retries_by_policy
                .entry(policy.name().to_owned())
                .or_default() += attempts - 1;
        }
        if let Err(palisade::Error::BulkheadFull(full)) = &result {
            // Refused before the retry layer: nothing was sent (the bulkhead counted it in
            // `palisade_bulkhead_rejected_total`).
            let classification = full.classification();
            tracing::warn!(
                operation = operation.as_str(),
                bulkhead = &*full.bulkhead,
                reason = %full.reason,
                "call refused: the bulkhead is full"
            );
            let mut stats = self.lock_stats();
            *stats
                .bulkhead_refusals
                .entry(full.bulkhead.to_string())
                .or_default() += 1;
            stats.call_failed(operation, &classification);
            drop(stats);
            return Err(ExchangeError::Refused {
                operation,
                classification,
                source: full.clone(),
            });
        }
        let class = match self.classifier.outcome(result.as_ref()) {
            Outcome::Success | Outcome::Ignored => {
                if result.is_ok() {
                    self.lock_stats().succeeded += 1;
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
        let stop = self.why_retry_stopped(operation, &result, &class, attempts);
        if let Some(stop) = stop {
            let mut stats = self.lock_stats();
            *stats
                .retry_stops
                .entry((policy.name().to_owned(), stop.as_str()))
                .or_default() += 1;
        }
        log_failure(operation, &class, attempts);
        self.lock_stats().call_failed(operation, &class);
        Err(self.error(operation, attempts, class, result))
    }

    /// Why the retry layer gave up on a retryable failure. For an error it says so itself;
    /// an answer it hands back as it is, so the reason is worked out the same way it decides:
    /// the policy's retry count, else a wait asked for beyond `max_delay`, else the budget if
    /// it allows no retry now, else the deadline.
    fn why_retry_stopped(
        &self,
        operation: Operation,
        result: &Result<ApiResponse, crate::transport::StackError>,
        class: &Classification,
        attempts: u32,
    ) -> Option<RetryStop> {
        let policy = self.policies.for_operation(operation.policy());
        match result {
            Err(palisade::Error::Retried(r)) if r.stop != RetryStop::NotRetryable => Some(r.stop),
            Err(palisade::Error::RetryBudgetExhausted(_)) => Some(RetryStop::BudgetExhausted),
            Ok(_) if class.is_transient() => Some(if attempts > policy.retry.max_retries {
                RetryStop::MaxRetries
            } else if class
                .retry_after
                .is_some_and(|asked| asked > policy.retry.max_delay)
            {
                RetryStop::RetryAfterTooLong
            } else if self.budgets[policy.name()].remaining() == 0 {
                RetryStop::BudgetExhausted
            } else {
                RetryStop::Deadline
            }),
            _ => None,
        }
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
