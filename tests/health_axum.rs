//! `/health/live` and `/health/ready` through a real axum server on 127.0.0.1.
#![cfg(all(feature = "axum", feature = "reqwest"))]

use std::time::Duration;

use axum::Router;
use palisade::health::{self, Check, HealthRegistry, HealthStatus};

#[tokio::test]
async fn ready_answers_json_with_200_or_503_as_components_change() {
    let registry = HealthRegistry::new();
    registry.register(
        Check::new("ledger_db", || async { HealthStatus::Healthy }).timeout(Duration::from_secs(1)),
    );
    let breaker = registry.reporter("payment_gateway", true);

    let app: Router = Router::new().merge(health::axum::routes(registry.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let res = client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.headers()["content-type"], "application/json");
            let status = res.status().as_u16();
            let body: serde_json::Value =
                serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            (status, body)
        }
    };

    // The breaker has not reported yet: unknown, not ready.
    let (status, body) = get("/health/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unknown");
    assert_eq!(body["components"]["ledger_db"]["status"], "healthy");
    assert_eq!(body["components"]["payment_gateway"]["status"], "unknown");

    breaker.report(HealthStatus::Healthy, None);
    let (status, body) = get("/health/ready").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("healthy")));

    breaker.report(HealthStatus::Degraded, Some("circuit open".into()));
    let (status, body) = get("/health/ready").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("degraded")));
    assert_eq!(
        body["components"]["payment_gateway"]["detail"],
        "circuit open"
    );

    breaker.report(HealthStatus::Unhealthy, Some("forced open".into()));
    let (status, body) = get("/health/ready").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("unhealthy")));

    // Liveness runs no check and stays up.
    let (status, body) = get("/health/live").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("healthy")));
}
