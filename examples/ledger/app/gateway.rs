//! The payment-gateway client: reqwest as a `tower::Service`, palisade's classifiers, and the
//! `payment_gateway` policy.
//!
//! Every answer is judged by one classifier, built from palisade's parts in the order a
//! payments engineer would read a response:
//! 1. the gateway's own error code, looked up in the `gateway` table of `policies.yaml`
//!    (`card_declined` is a persistent business failure, `rate_limited` transient with a wait);
//! 2. the HTTP status and `Retry-After` ([`HttpStatus`]);
//! 3. transport errors anywhere in the source chain ([`TransportErrors`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::{HeaderMap, StatusCode};
use palisade::classify::{
    Classification, Classify, ClassifyExt, CodeTable, HttpStatus, Or, Outcome, TableClassifier,
    TransportErrors,
};
use palisade::policy::Policy;
use serde::Serialize;
use tower::{Service, ServiceExt};

use super::resilience::call_with_policy;
use super::simulator::{GatewayPayment, PaymentRequest};

/// One request to the gateway.
#[derive(Clone, Debug)]
pub enum GatewayCall {
    /// Settle a payment.
    Pay(PaymentRequest),
    /// Look a payment up by reference.
    Lookup(String),
    /// Every payment (for reconciliation).
    List,
}

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

/// reqwest as a `tower::Service`, so palisade's layers wrap it like any other service.
#[derive(Clone, Debug)]
pub struct GatewayTransport {
    http: reqwest::Client,
    base: Arc<str>,
}

impl Service<GatewayCall> for GatewayTransport {
    type Response = GatewayReply;
    type Error = reqwest::Error;
    // An example may box; palisade's own layers use named futures.
    type Future = Pin<Box<dyn Future<Output = Result<GatewayReply, reqwest::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: GatewayCall) -> Self::Future {
        let request = match &call {
            GatewayCall::Pay(p) => self.http.post(format!("{}/v1/payments", self.base)).json(p),
            GatewayCall::Lookup(r) => self.http.get(format!("{}/v1/payments/{r}", self.base)),
            GatewayCall::List => self.http.get(format!("{}/v1/payments", self.base)),
        };
        // palisade stack: the correlation layer adds `x-request-id` here when it lands.
        Box::pin(async move {
            let response = request.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?.to_vec();
            let code = if status.is_success() {
                None
            } else {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("code")?.as_str().map(str::to_owned))
            };
            Ok(GatewayReply {
                status,
                headers,
                body,
                code,
            })
        })
    }
}

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

/// The service every gateway call goes through.
// palisade stack: when the layers land this becomes
//   ServiceBuilder::new()
//       .layer(TimeoutLayer::total(&policy))
//       .layer(RetryLayer::new(policy.retry, classifier.clone()))
//       .layer(CircuitBreakerLayer::new(policy.circuit_breaker, classifier.clone()))
//       .layer(TimeoutLayer::attempt(&policy))
//       .service(transport)
// and `call_with_policy` below disappears.
pub type GatewayStack = GatewayTransport;

fn stack(transport: GatewayTransport) -> GatewayStack {
    tower::ServiceBuilder::new().service(transport)
}

/// A gateway call that failed for good: its classification, what was said, and what the
/// code table says to tell the user.
#[derive(Clone, Debug)]
pub struct GatewayFailure {
    /// The final classification.
    pub class: Classification,
    /// What the gateway or the transport said.
    pub detail: String,
    /// Attempts made.
    pub attempts: u32,
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
    /// Attempts, retries included.
    pub attempts: u64,
    /// Failed attempts by classification code (`http_503`, `gateway_card_declined`...).
    pub failures_by_code: BTreeMap<String, u64>,
}

/// The ledger's client of the payment gateway.
pub struct GatewayClient {
    service: GatewayStack,
    classifier: GatewayClassifier,
    table: Arc<CodeTable>,
    policy: Arc<Policy>,
    calls: AtomicU64,
    attempts: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("service", &self.service)
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

impl GatewayClient {
    /// A client of the gateway at `base_url`, under `policy` (`payment_gateway`), classifying
    /// the gateway's codes with `table`.
    pub fn new(base_url: &str, policy: Arc<Policy>, table: Arc<CodeTable>) -> GatewayClient {
        let transport = GatewayTransport {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').into(),
        };
        GatewayClient {
            service: stack(transport),
            classifier: classifier(Arc::clone(&table)),
            table,
            policy,
            calls: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// The policy calls run under.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Counters so far.
    pub fn stats(&self) -> GatewayStats {
        GatewayStats {
            calls: self.calls.load(Ordering::Relaxed),
            attempts: self.attempts.load(Ordering::Relaxed),
            failures_by_code: self.failures.lock().map(|m| m.clone()).unwrap_or_default(),
        }
    }

    fn count_failure(&self, class: &Classification) {
        if let Ok(mut m) = self.failures.lock() {
            *m.entry(class.code.to_string()).or_default() += 1;
        }
    }

    /// Sends one call under the policy and returns the successful reply, or why it failed.
    async fn send(&self, call: GatewayCall) -> Result<GatewayReply, Box<GatewayFailure>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // palisade stack: once `GatewayStack` carries the retry and timeout layers, this is
        // `self.service.clone().oneshot(call)`; `call_with_policy` is the temporary stand-in.
        let attempted = call_with_policy(
            &self.policy,
            |r| self.classifier.outcome(r),
            |_| self.service.clone().oneshot(call.clone()),
        )
        .await;
        self.attempts
            .fetch_add(u64::from(attempted.attempts), Ordering::Relaxed);
        for class in &attempted.retried {
            self.count_failure(class);
        }
        let failure = |class: Classification, detail: String| {
            self.count_failure(&class);
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
                attempts: attempted.attempts,
            })
        };
        match (attempted.result, attempted.outcome) {
            (Ok(reply), Outcome::Success | Outcome::Ignored) => Ok(reply),
            (Ok(reply), Outcome::Failure(class)) => {
                let body = String::from_utf8_lossy(&reply.body);
                let detail = format!("HTTP {}: {}", reply.status.as_u16(), body.trim());
                Err(failure(class, detail))
            }
            (Err(e), outcome) => {
                let class = outcome
                    .classification()
                    .cloned()
                    .unwrap_or_else(Classification::unclassified);
                Err(failure(class, e.to_string()))
            }
        }
    }

    /// Settles a payment. The reference makes it idempotent at the gateway, so a retry after
    /// a lost response finds the payment instead of making a second one.
    pub async fn pay(
        &self,
        request: &PaymentRequest,
    ) -> Result<GatewayPayment, Box<GatewayFailure>> {
        let reply = self.send(GatewayCall::Pay(request.clone())).await?;
        parse(&reply)
    }

    /// Looks a payment up by reference; `None` if the gateway has no such payment.
    pub async fn lookup(
        &self,
        reference: &str,
    ) -> Result<Option<GatewayPayment>, Box<GatewayFailure>> {
        match self.send(GatewayCall::Lookup(reference.to_owned())).await {
            Ok(reply) => parse(&reply).map(Some),
            Err(f) if f.class.code == "http_404" => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// Every payment the gateway holds.
    pub async fn list(&self) -> Result<Vec<GatewayPayment>, Box<GatewayFailure>> {
        let reply = self.send(GatewayCall::List).await?;
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
            attempts: 1,
            message: None,
            suggestion: None,
        })
    })
}
