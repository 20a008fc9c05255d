//! The payment-gateway client: palisade's [`ResilientClient`] (reqwest behind the whole
//! stack, one circuit breaker per gateway host) with the correlation ID of the request being
//! served put on every call ([`PropagateCorrelationLayer`]).
//!
//! Two operations of the policy file govern it:
//! - `payment_gateway`: settling payments (`POST /v1/payments`). Retried only because each
//!   carries an `Idempotency-Key` (the transfer id), which the gateway honours.
//! - `gateway_read`: look-ups and the list reconciliation reads. A breaker of its own, so an
//!   outage of payments does not stop the ledger from asking whether a payment settled.
//!
//! The stack decides retries and counts failures against the breaker with palisade's HTTP and
//! transport classifiers. Once a call is over, its final answer is classified again, in the
//! order a payments engineer would read it, to tell the customer what happened:
//! 1. the gateway's own error code, looked up in the `gateway` table of `policies.yaml`
//!    (`card_declined` is a persistent business failure, `rate_limited` transient with a wait);
//! 2. the HTTP status and `Retry-After` ([`HttpStatus`]);
//! 3. transport errors anywhere in the source chain ([`TransportErrors`]);
//! 4. palisade's own refusals (open breaker, timeout, kill switch) classify themselves.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use palisade::Error;
use palisade::circuit_breaker::{CircuitState, OperatorMode};
use palisade::classify::{
    Classification, Classify, ClassifyExt, CodeTable, HttpStatus, Or, Outcome, TableClassifier,
    TransportErrors,
};
use palisade::correlation::{PropagateCorrelation, PropagateCorrelationLayer};
use palisade::error::CircuitOpen;
use palisade::health::{CheckResult, breaker_health};
use palisade::policy::{Policy, PolicyStore};
use palisade::stack::reqwest::ResilientClient;
use serde::Serialize;
use tower::{Layer, Service, ServiceExt};

use super::simulator::{GatewayPayment, PaymentRequest};

/// The operation that settles payments.
pub const PAY: &str = "payment_gateway";
/// The operation of look-ups and listings.
pub const READ: &str = "gateway_read";

/// A response from the gateway, read in full.
#[derive(Clone, Debug)]
pub struct GatewayReply {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers (`Retry-After`).
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// The gateway's error code (`{"code": "card_declined"}`), if the body has one.
    pub code: Option<String>,
}

/// A [`ResilientClient`] call under one named operation, as a `Service<reqwest::Request>`, so
/// client-side layers ([`PropagateCorrelationLayer`]) wrap it like any other service.
#[derive(Clone, Debug)]
pub struct NamedOperation {
    client: ResilientClient,
    operation: &'static str,
}

type Sent = Result<reqwest::Response, Error<reqwest::Error>>;

impl Service<reqwest::Request> for NamedOperation {
    type Response = reqwest::Response;
    type Error = Error<reqwest::Error>;
    // An example may box; palisade's own layers use named futures.
    type Future = Pin<Box<dyn Future<Output = Sent> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Backpressure is the stack's bulkhead, inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        let (client, operation) = (self.client.clone(), self.operation);
        Box::pin(async move { client.execute(operation, request).await })
    }
}

/// What every gateway call goes through: the correlation ID, then the resilience stack.
pub type GatewayService = PropagateCorrelation<NamedOperation>;

type CodeOf = fn(Result<&GatewayReply, &reqwest::Error>) -> Option<String>;
type StatusOf = fn(Result<&GatewayReply, &reqwest::Error>) -> Option<Outcome>;

/// The gateway's classifier: code table, then HTTP status, then transport errors.
pub type GatewayClassifier = Or<Or<TableClassifier<CodeOf>, StatusOf>, TransportErrors>;

fn code_of(result: Result<&GatewayReply, &reqwest::Error>) -> Option<String> {
    result.ok()?.code.clone()
}

fn status_of(result: Result<&GatewayReply, &reqwest::Error>) -> Option<Outcome> {
    let reply = result.ok()?;
    Some(HttpStatus::new().classify_response(reply.status, &reply.headers))
}

/// Builds the gateway classifier over a code table (the `gateway` table of the policy file).
pub fn classifier(table: Arc<CodeTable>) -> GatewayClassifier {
    TableClassifier::new(table, code_of as CodeOf)
        .or(status_of as StatusOf)
        .or(TransportErrors)
}

/// A gateway call that failed for good: its classification, what was said, and what the
/// code table says to tell the user.
#[derive(Clone, Debug)]
pub struct GatewayFailure {
    /// The final classification.
    pub class: Classification,
    /// What the gateway or the transport said.
    pub detail: String,
    /// Attempts made, when the stack reports them (a call it retried and that ended in an
    /// error); `None` when the last answer was a response.
    pub attempts: Option<u32>,
    /// The stack refused the call before sending anything (open breaker, full bulkhead, kill
    /// switch): the gateway never saw it.
    pub refused: bool,
    /// A user-facing message from the code table.
    pub message: Option<String>,
    /// A recovery suggestion from the code table.
    pub suggestion: Option<String>,
}

/// Counters of the gateway client.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GatewayStats {
    /// Logical calls (a retried call counts once).
    pub calls: u64,
    /// Calls the stack refused without sending (open breaker, kill switch, full bulkhead).
    pub refused: u64,
    /// Calls that failed for good, by classification code (`http_503`,
    /// `gateway_card_declined`, `circuit_open`...).
    pub failures_by_code: BTreeMap<String, u64>,
}

/// The ledger's client of the payment gateway.
pub struct GatewayClient {
    client: ResilientClient,
    http: reqwest::Client,
    pay: GatewayService,
    read: GatewayService,
    base: Arc<str>,
    host: Arc<str>,
    classifier: GatewayClassifier,
    table: Arc<CodeTable>,
    calls: AtomicU64,
    refused: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// `host[:port]` of a base URL: the key of the gateway's breakers within each operation.
fn host_key(base: &str) -> Arc<str> {
    match reqwest::Url::parse(base) {
        Ok(url) => {
            let host = url.host_str().unwrap_or_default();
            match url.port() {
                Some(port) => format!("{host}:{port}").into(),
                None => host.into(),
            }
        }
        Err(_) => base.into(),
    }
}

impl GatewayClient {
    /// A client of the gateway at `base_url`, running under `store`'s `payment_gateway` and
    /// `gateway_read` policies, explaining the gateway's codes with `table`.
    pub fn new(base_url: &str, store: PolicyStore, table: Arc<CodeTable>) -> GatewayClient {
        let http = reqwest::Client::new();
        let client = ResilientClient::new(http.clone(), store);
        let service = |operation| {
            PropagateCorrelationLayer::new().layer(NamedOperation {
                client: client.clone(),
                operation,
            })
        };
        let base: Arc<str> = base_url.trim_end_matches('/').into();
        GatewayClient {
            pay: service(PAY),
            read: service(READ),
            host: host_key(&base),
            base,
            classifier: classifier(Arc::clone(&table)),
            table,
            client,
            http,
            calls: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// The policy payments run under now (the store may have been reloaded).
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(self.client.handle().store().current().for_operation(PAY))
    }

    /// The breaker of `operation` for this gateway's host, once the first call made it.
    pub fn breaker(
        &self,
        operation: &str,
    ) -> Option<palisade::circuit_breaker::CircuitBreakerHandle> {
        self.client.handle().breaker(operation)?.get(&self.host)
    }

    /// The per-host breakers of `operation`.
    pub fn breakers(
        &self,
        operation: &str,
    ) -> Option<palisade::circuit_breaker::KeyedCircuitBreakerHandle<Arc<str>>> {
        self.client.handle().breaker(operation)
    }

    /// The breaker's health (closed: healthy; open or probing: degraded).
    pub fn health(&self, operation: &str) -> CheckResult {
        match self.breaker(operation) {
            Some(b) => breaker_health(b.state(), b.mode()),
            None => breaker_health(CircuitState::Closed, OperatorMode::Normal),
        }
    }

    /// `Some` while the payments breaker refuses calls: a transfer is then refused before its
    /// debit instead of being debited, refused by the breaker and compensated. Once the open
    /// period is over this answers `None`, so the next transfer is the probe that may close
    /// the breaker again.
    pub fn payments_refused(&self) -> Option<CircuitOpen> {
        let breaker = self.breaker(PAY)?;
        let m = breaker.metrics();
        let retry_after = match (m.mode, m.state, m.open_remaining) {
            (OperatorMode::ForcedOpen, ..) => Duration::from_secs(1),
            (OperatorMode::Normal, CircuitState::Open, Some(left)) if !left.is_zero() => left,
            _ => return None,
        };
        Some(CircuitOpen {
            breaker: Arc::clone(breaker.name()).into(),
            retry_after,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> GatewayStats {
        GatewayStats {
            calls: self.calls.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failures_by_code: self.failures.lock().map(|m| m.clone()).unwrap_or_default(),
        }
    }

    fn count_failure(&self, class: &Classification) {
        if let Ok(mut m) = self.failures.lock() {
            *m.entry(class.code.to_string()).or_default() += 1;
        }
    }

    fn failure(
        &self,
        class: Classification,
        detail: String,
        attempts: Option<u32>,
        refused: bool,
    ) -> Box<GatewayFailure> {
        self.count_failure(&class);
        if refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        let entry = class
            .code
            .as_str()
            .strip_prefix("gateway_")
            .and_then(|c| self.table.get(c));
        Box::new(GatewayFailure {
            message: entry.and_then(|e| e.message.clone()),
            suggestion: entry.and_then(|e| e.suggestion.clone()),
            class,
            detail,
            attempts,
            refused,
        })
    }

    /// Sends one request through the stack of `operation` and returns the successful reply,
    /// or why the call failed for good.
    async fn send(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<GatewayReply, Box<GatewayFailure>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let service = if operation == PAY {
            &self.pay
        } else {
            &self.read
        };
        let request = match request.build() {
            Ok(r) => r,
            Err(e) => {
                let class = self.classifier.outcome(Err(&e));
                let class = class
                    .classification()
                    .cloned()
                    .unwrap_or_else(Classification::unclassified);
                return Err(self.failure(class, e.to_string(), None, false));
            }
        };
        let sent = service.clone().oneshot(request).await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let refused = matches!(
                    e,
                    Error::CircuitOpen(_) | Error::BulkheadFull(_) | Error::OperationDisabled(_)
                );
                let class = match (e.layer_classification(), e.inner()) {
                    (Some(class), _) => class,
                    (None, Some(inner)) => self
                        .classifier
                        .outcome(Err(inner))
                        .classification()
                        .cloned()
                        .unwrap_or_else(Classification::unclassified),
                    (None, None) => Classification::unclassified(),
                };
                return Err(self.failure(class, e.to_string(), e.attempts(), refused));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => {
                let class = self
                    .classifier
                    .outcome(Err(&e))
                    .classification()
                    .cloned()
                    .unwrap_or_else(Classification::unclassified);
                return Err(self.failure(class, e.to_string(), None, false));
            }
        };
        let code = if status.is_success() {
            None
        } else {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
        };
        let reply = GatewayReply {
            status,
            headers,
            body,
            code,
        };
        match self.classifier.outcome(Ok(&reply)) {
            Outcome::Success | Outcome::Ignored => Ok(reply),
            Outcome::Failure(class) => {
                let text = String::from_utf8_lossy(&reply.body);
                let detail = format!("HTTP {}: {}", reply.status.as_u16(), text.trim());
                Err(self.failure(class, detail, None, false))
            }
        }
    }

    /// Settles a payment. The transfer id is both the payment's reference and its
    /// `Idempotency-Key`: the stack retries only requests that carry one, and the gateway
    /// answers a repeated key with the payment it already made, never a second one.
    pub async fn pay(
        &self,
        request: &PaymentRequest,
    ) -> Result<GatewayPayment, Box<GatewayFailure>> {
        let builder = self
            .http
            .post(format!("{}/v1/payments", self.base))
            .header(palisade::retry::IDEMPOTENCY_KEY, request.reference.as_str())
            .json(request);
        let reply = self.send(PAY, builder).await?;
        parse(&reply)
    }

    /// Looks a payment up by reference; `None` if the gateway has no such payment.
    pub async fn lookup(
        &self,
        reference: &str,
    ) -> Result<Option<GatewayPayment>, Box<GatewayFailure>> {
        let builder = self
            .http
            .get(format!("{}/v1/payments/{reference}", self.base));
        match self.send(READ, builder).await {
            Ok(reply) => parse(&reply).map(Some),
            Err(f) if f.class.code == "http_404" => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// Every payment the gateway holds.
    pub async fn list(&self) -> Result<Vec<GatewayPayment>, Box<GatewayFailure>> {
        let builder = self.http.get(format!("{}/v1/payments", self.base));
        let reply = self.send(READ, builder).await?;
        parse(&reply)
    }
}

fn parse<T: serde::de::DeserializeOwned>(reply: &GatewayReply) -> Result<T, Box<GatewayFailure>> {
    serde_json::from_slice(&reply.body).map_err(|e| {
        Box::new(GatewayFailure {
            class: Classification::new(
                palisade::classify::Transience::Persistent,
                palisade::classify::Category::External,
                palisade::classify::Severity::High,
                "gateway_bad_body",
            ),
            detail: format!("unreadable gateway response: {e}"),
            attempts: None,
            refused: false,
            message: None,
            suggestion: None,
        })
    })
}
