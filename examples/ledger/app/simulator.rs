//! A payment-gateway simulator on 127.0.0.1, started by the example, with failures and
//! latency set by flags, so the ledger's client meets real sockets and real faults.
//!
//! `POST /v1/payments` settles a payment `{reference, amount, from, to}`; the reference is
//! an idempotency key (a retry of a settled reference returns the original payment, as real
//! gateways do). Faults, drawn from a seeded generator with probability `failure_rate`:
//!
//! | share | answer | what the ledger's client sees |
//! |---|---|---|
//! | 40% | 503 `{"code":"issuer_unavailable"}` | transient (`gateway_issuer_unavailable`) |
//! | 30% | 500, plain text | transient (`http_500`) |
//! | 20% | the payment settles, then 500: a lost response | transient; the retry finds it settled |
//! | 10% | 429 `{"code":"rate_limited"}`, `Retry-After: 1` | transient, waits (`gateway_rate_limited`) |
//!
//! During an outage ([`Simulator::set_outage`]) every payment call answers 503 and settles
//! nothing. Amounts ending in `13` (e.g. 10.13) are declined: 402 `{"code":"card_declined"}`, a
//! persistent business failure. Reads (`GET /v1/payments`, `GET /v1/payments/{reference}`)
//! never fail, so reconciliation and the ledger's look-ups work during an outage.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ids::SplitMix64;

/// How the simulator misbehaves.
#[derive(Clone, Copy, Debug)]
pub struct SimulatorConfig {
    /// Probability in `[0, 1]` that a payment call fails.
    pub failure_rate: f64,
    /// Mean latency of a payment call (uniform in 0.5x..1.5x).
    pub latency: Duration,
    /// Seed of the fault generator.
    pub seed: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            failure_rate: 0.0,
            latency: Duration::ZERO,
            seed: 7,
        }
    }
}

/// A payment as the gateway records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GatewayPayment {
    /// The gateway's id.
    pub payment_id: String,
    /// The caller's reference (the ledger's transfer id).
    pub reference: String,
    /// Minor units.
    pub amount: i64,
    /// Paying account.
    pub from: String,
    /// Receiving account.
    pub to: String,
    /// Always `settled` here.
    pub status: String,
}

/// A payment request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PaymentRequest {
    /// Idempotency key and reconciliation key: the ledger's transfer id.
    pub reference: String,
    /// Minor units, positive.
    pub amount: i64,
    /// Paying account.
    pub from: String,
    /// Receiving account.
    pub to: String,
}

/// What the simulator did so far.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SimulatorStats {
    /// Payment calls received.
    pub calls: u64,
    /// Faults injected.
    pub injected_failures: u64,
    /// Payments declined (amount ending in 13).
    pub declined: u64,
    /// Payments settled (recorded).
    pub settled: u64,
}

struct SimState {
    failure_rate_bits: AtomicU64,
    outage: std::sync::atomic::AtomicBool,
    latency: Duration,
    rng: SplitMix64,
    payments: Mutex<BTreeMap<String, GatewayPayment>>,
    /// The `x-request-id` of every payment call, by reference, oldest first.
    request_ids: Mutex<BTreeMap<String, Vec<String>>>,
    next_id: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
    declined: AtomicU64,
}

impl SimState {
    fn failure_rate(&self) -> f64 {
        f64::from_bits(self.failure_rate_bits.load(Ordering::Relaxed))
    }

    fn payments(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, GatewayPayment>> {
        self.payments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, req: &PaymentRequest) -> GatewayPayment {
        let mut payments = self.payments();
        payments
            .entry(req.reference.clone())
            .or_insert_with(|| GatewayPayment {
                payment_id: format!("pay_{:06}", self.next_id.fetch_add(1, Ordering::Relaxed)),
                reference: req.reference.clone(),
                amount: req.amount,
                from: req.from.clone(),
                to: req.to.clone(),
                status: "settled".into(),
            })
            .clone()
    }
}

/// A running simulator. Stops when dropped.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<SimState>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Simulator {
    /// Starts the simulator on 127.0.0.1 on a free port.
    pub async fn start(config: SimulatorConfig) -> std::io::Result<Simulator> {
        let state = Arc::new(SimState {
            failure_rate_bits: AtomicU64::new(config.failure_rate.clamp(0.0, 1.0).to_bits()),
            outage: std::sync::atomic::AtomicBool::new(false),
            latency: config.latency,
            rng: SplitMix64::new(config.seed),
            payments: Mutex::new(BTreeMap::new()),
            request_ids: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            declined: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/v1/payments", post(create_payment).get(list_payments))
            .route("/v1/payments/{reference}", get(get_payment))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "gateway simulator stopped");
            }
        });
        Ok(Simulator { addr, state, task })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// Changes the failure rate while running (an outage, then recovery).
    pub fn set_failure_rate(&self, rate: f64) {
        self.state
            .failure_rate_bits
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// Starts or ends an outage: while it lasts every payment call answers 503
    /// `issuer_unavailable` and settles nothing.
    pub fn set_outage(&self, down: bool) {
        self.state.outage.store(down, Ordering::Relaxed);
    }

    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// Every settled payment, by reference.
    pub fn payments(&self) -> Vec<GatewayPayment> {
        self.state.payments().values().cloned().collect()
    }

    /// Records a payment the ledger never asked for (to exercise reconciliation).
    pub fn plant(&self, payment: GatewayPayment) {
        self.state
            .payments()
            .insert(payment.reference.clone(), payment);
    }

    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// Changes the amount of a settled payment (to exercise reconciliation). Returns whether
    /// the reference was known.
    pub fn alter_amount(&self, reference: &str, amount: i64) -> bool {
        match self.state.payments().get_mut(reference) {
            Some(p) => {
                p.amount = amount;
                true
            }
            None => false,
        }
    }

    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// Loses a settled payment (to exercise reconciliation). Returns whether it existed.
    pub fn forget(&self, reference: &str) -> bool {
        self.state.payments().remove(reference).is_some()
    }

    /// The `x-request-id` header of each payment call made for `reference`, oldest first
    /// (empty strings for calls without one): shows the ledger's correlation ID arriving.
    pub fn request_ids(&self, reference: &str) -> Vec<String> {
        let ids = self
            .state
            .request_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ids.get(reference).cloned().unwrap_or_default()
    }

    /// Counters so far.
    pub fn stats(&self) -> SimulatorStats {
        SimulatorStats {
            calls: self.state.calls.load(Ordering::Relaxed),
            injected_failures: self.state.injected.load(Ordering::Relaxed),
            declined: self.state.declined.load(Ordering::Relaxed),
            settled: self.state.payments().len() as u64,
        }
    }
}

fn coded(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

async fn create_payment(
    State(state): State<Arc<SimState>>,
    headers: axum::http::HeaderMap,
    Json(req): Json<PaymentRequest>,
) -> Response {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state
        .request_ids
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(req.reference.clone())
        .or_default()
        .push(request_id);
    if !state.latency.is_zero() {
        let factor = 0.5 + state.rng.next_f64();
        tokio::time::sleep(state.latency.mul_f64(factor)).await;
    }
    if req.amount <= 0 || req.reference.is_empty() {
        return coded(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "amount must be positive and reference non-empty",
        );
    }
    if let Some(existing) = state.payments().get(&req.reference).cloned() {
        if existing.amount != req.amount {
            return coded(
                StatusCode::CONFLICT,
                "reference_conflict",
                "this reference was settled with another amount",
            );
        }
        return (StatusCode::OK, Json(existing)).into_response();
    }
    if req.amount % 100 == 13 {
        state.declined.fetch_add(1, Ordering::Relaxed);
        return coded(
            StatusCode::PAYMENT_REQUIRED,
            "card_declined",
            "the issuer declined the payment",
        );
    }
    if state.outage.load(Ordering::Relaxed) {
        state.injected.fetch_add(1, Ordering::Relaxed);
        return coded(
            StatusCode::SERVICE_UNAVAILABLE,
            "issuer_unavailable",
            "the issuer is down",
        );
    }
    if state.rng.next_f64() < state.failure_rate() {
        state.injected.fetch_add(1, Ordering::Relaxed);
        let kind = state.rng.next_f64();
        return if kind < 0.4 {
            coded(
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_unavailable",
                "the issuer did not answer",
            )
        } else if kind < 0.7 {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        } else if kind < 0.9 {
            state.settle(&req);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "connection to the core lost",
            )
                .into_response()
        } else {
            let mut r = coded(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        };
    }
    (StatusCode::CREATED, Json(state.settle(&req))).into_response()
}

async fn get_payment(
    State(state): State<Arc<SimState>>,
    Path(reference): Path<String>,
) -> Response {
    match state.payments().get(&reference).cloned() {
        Some(p) => (StatusCode::OK, Json(p)).into_response(),
        None => coded(
            StatusCode::NOT_FOUND,
            "payment_not_found",
            "no payment with this reference",
        ),
    }
}

async fn list_payments(State(state): State<Arc<SimState>>) -> Json<Vec<GatewayPayment>> {
    Json(state.payments().values().cloned().collect())
}
