//! The ledger's HTTP API (axum 0.8).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/accounts` | open an account `{id?, name?, initial_balance?}` |
//! | `GET /v1/accounts/{id}` | an account and its balance |
//! | `POST /v1/transfers` | a transfer `{from, to, amount}`; header `Idempotency-Key` |
//! | `GET /v1/transfers/{id}` | a transfer and its state history |
//! | `POST /v1/batches` | store and post a batch `{id?, items: [{from, to, amount}]}` |
//! | `GET /v1/batches/{id}` | where a batch stands |
//! | `POST /v1/batches/{id}/resume` | continue a batch after its checkpoint |
//! | `POST /v1/batches/{id}/replay` | replay a batch's failed items |
//! | `POST /v1/reconciliation` | run reconciliation now |
//! | `GET /v1/ledger/check` | the books' invariants |
//! | `GET /health/live`, `GET /health/ready` | liveness, readiness (database answers) |
//! | `GET /metrics` | palisade's metrics and the domain counters, Prometheus text format |
//!
//! Every API route runs behind palisade's `ResilienceLayer`, added with `route_layer` so
//! axum's `MatchedPath` selects the operation from the policy file's `routes` (`POST
//! /v1/transfers` runs under `transfer`). Outermost first, it takes or makes the request's
//! correlation ID (echoed in `x-request-id`, and the `request` span every log line of the
//! request carries), answers palisade's refusals as `application/problem+json` (503 with
//! `Retry-After`, 504; the body's `correlation_id` is the request's), counts every call by
//! operation and outcome (`palisade_requests_total`, ...), and gives each operation its
//! server-side bulkhead, total timeout and kill switch. Health and metrics are outside the
//! stack: they must answer when everything else is refused.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade::classify::HttpStatus;
use palisade::stack::ResilienceLayer;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::Ledger;
use super::batch::{BatchRequest, BatchRun, CrashPlan};
use super::error::LedgerError;
use super::observe;
use super::transfers::TransferRequest;

/// The header carrying a transfer's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set to `true` on a response replayed from an idempotency key.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

type AppState = State<Arc<Ledger>>;

/// The ledger's router.
pub fn router(ledger: Arc<Ledger>) -> Router {
    let stack = ResilienceLayer::new(ledger.store.clone(), HttpStatus::new());
    let api = Router::new()
        .route("/v1/accounts", post(create_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/transfers", post(create_transfer))
        .route("/v1/transfers/{id}", get(get_transfer))
        .route("/v1/batches", post(create_batch))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/resume", post(resume_batch))
        .route("/v1/batches/{id}/replay", post(replay_batch))
        .route("/v1/reconciliation", post(reconcile))
        .route("/v1/ledger/check", get(check))
        .route_layer(stack.problem_responses());
    let health = observe::health(&ledger);
    api.route("/metrics", get(metrics))
        .with_state(ledger)
        .merge(palisade::health::axum::routes(health))
}

fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, LedgerError> {
    payload
        .map(|Json(t)| t)
        .map_err(|e| LedgerError::invalid("body", e.body_text()))
}

#[derive(Debug, Deserialize)]
struct NewAccount {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    initial_balance: i64,
}

async fn create_account(
    State(ledger): AppState,
    payload: Result<Json<NewAccount>, JsonRejection>,
) -> Result<Response, LedgerError> {
    let req = body(payload)?;
    let account = ledger
        .create_account(req.id, req.name, req.initial_balance)
        .await?;
    Ok((StatusCode::CREATED, Json(account)).into_response())
}

async fn get_account(
    State(ledger): AppState,
    Path(id): Path<String>,
) -> Result<Response, LedgerError> {
    Ok(Json(ledger.account(&id).await?).into_response())
}

async fn create_transfer(
    State(ledger): AppState,
    headers: HeaderMap,
    payload: Result<Json<TransferRequest>, JsonRejection>,
) -> Result<Response, LedgerError> {
    let req = body(payload)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| LedgerError::invalid("Idempotency-Key", "must be visible ASCII"))?
                .to_owned(),
        ),
        None => None,
    };
    let reply = detached(async move { ledger.transfer(req, key).await }).await?;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(reply.body)).into_response();
    if reply.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn get_transfer(
    State(ledger): AppState,
    Path(id): Path<String>,
) -> Result<Response, LedgerError> {
    match ledger.get_transfer(&id).await? {
        Some(t) => Ok(Json(json!({ "transfer": t })).into_response()),
        None => Ok((
            StatusCode::NOT_FOUND,
            Json(json!({ "error": { "code": "transfer_not_found", "message": format!("no transfer `{id}`") } })),
        )
            .into_response()),
    }
}

async fn create_batch(
    State(ledger): AppState,
    payload: Result<Json<BatchRequest>, JsonRejection>,
) -> Result<Response, LedgerError> {
    let req = body(payload)?;
    let id = ledger.create_batch(req).await?;
    run_batch(ledger, id, StatusCode::CREATED).await
}

async fn run_batch(
    ledger: Arc<Ledger>,
    id: String,
    status: StatusCode,
) -> Result<Response, LedgerError> {
    let run = detached(async move { ledger.run_batch(&id, CrashPlan::default()).await }).await?;
    match run {
        BatchRun::Finished(s) => Ok((status, Json(s)).into_response()),
        BatchRun::Crashed { .. } => unreachable!("no crash is planned for HTTP requests"),
    }
}

async fn get_batch(
    State(ledger): AppState,
    Path(id): Path<String>,
) -> Result<Response, LedgerError> {
    Ok(Json(ledger.batch_status(&id).await?).into_response())
}

async fn resume_batch(
    State(ledger): AppState,
    Path(id): Path<String>,
) -> Result<Response, LedgerError> {
    run_batch(ledger, id, StatusCode::OK).await
}

async fn replay_batch(
    State(ledger): AppState,
    Path(id): Path<String>,
) -> Result<Response, LedgerError> {
    let status = detached(async move { ledger.replay_failed(&id).await }).await?;
    Ok(Json(status).into_response())
}

/// Runs work that moves money on its own task, so it finishes even if the client hangs up:
/// hyper drops a handler's future when its connection closes, and a transfer abandoned
/// between its debit and its credit would wait for the next start's recovery.
///
/// The task keeps the request's correlation ID and span, so its logs and gateway calls carry
/// the ID.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, LedgerError>> + Send + 'static,
) -> Result<T, LedgerError> {
    let work = work.instrument(tracing::Span::current());
    match palisade::correlation::spawn(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels the task.
        Err(_) => Err(LedgerError::ShuttingDown),
    }
}

async fn reconcile(State(ledger): AppState) -> Result<Response, LedgerError> {
    Ok(Json(ledger.reconcile().await?).into_response())
}

async fn check(State(ledger): AppState) -> Result<Response, LedgerError> {
    Ok(Json(ledger.check().await?).into_response())
}

async fn metrics(State(ledger): AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        observe::render_metrics(&ledger),
    )
        .into_response()
}
