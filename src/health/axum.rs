//! `/health/live` and `/health/ready` for axum (feature `axum`).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;

use super::{HealthRegistry, HealthReport, HealthStatus};

/// A router serving `GET /health/live` and `GET /health/ready` from `registry`; merge it into
/// the application's router.
///
/// - `/health/live`: 200 `{"status":"healthy"}` while the process can answer at all. It runs no
///   check: restarting a process because a dependency is down helps nobody.
/// - `/health/ready`: runs every check (each within its timeout) and answers the
///   [`HealthReport`] as JSON, 200 when healthy or degraded, 503 when unhealthy or unknown.
pub fn routes<S>(registry: HealthRegistry) -> Router<S> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(registry)
}

#[derive(Serialize)]
struct Live {
    status: HealthStatus,
}

/// The liveness handler: always 200 `{"status":"healthy"}`.
pub async fn live() -> Json<impl Serialize> {
    Json(Live {
        status: HealthStatus::Healthy,
    })
}

/// The readiness handler: runs the checks and answers the report, 200 or 503.
pub async fn ready(State(registry): State<HealthRegistry>) -> (StatusCode, Json<HealthReport>) {
    let report = registry.check_all().await;
    let status = if report.status.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}
