//! What reaches the logs: the correlation ID on every line of a request, and never a secret.
#![cfg(all(feature = "correlation", feature = "reqwest", feature = "axum"))]

use axum::Router;
use axum::http::{HeaderMap, HeaderName};
use axum::routing::get;
use palisade::correlation::{CorrelationLayer, X_CORRELATION_ID};
use palisade::redact::SensitiveHeaders;
use tracing_subscriber::layer::SubscriberExt;

#[path = "support/captured_logs.rs"]
mod captured_logs;
use captured_logs::Captured;

const SECRETS: [&str; 7] = [
    "Bearer s3cr3t-token",
    "session=abc123",
    "apikey-xyz-789",
    "mbx-secret-456",
    "ledger-token-000",
    "refresh=zzz999",
    "bad id",
];

#[tokio::test]
async fn json_logs_carry_the_id_and_never_a_secret() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(captured.clone()),
    );
    // TRACE for every target: anything any layer might log is captured.
    let _guard = tracing::subscriber::set_default(subscriber);

    let layer = CorrelationLayer::new()
        .accept_header(X_CORRELATION_ID)
        .sensitive_headers(
            SensitiveHeaders::default().with(HeaderName::from_static("x-ledger-token")),
        )
        .log_headers(true);
    let app = Router::new()
        .route(
            "/pay",
            get(|headers: HeaderMap| async move {
                // A careless handler that logs every header with `Debug`.
                tracing::info!(?headers, "handler saw headers");
                tracing::warn!("payment declined");
                ([("set-cookie", "refresh=zzz999; HttpOnly")], "declined")
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let res = reqwest::Client::new()
        .get(format!("http://{addr}/pay"))
        .header("authorization", "Bearer s3cr3t-token")
        .header("cookie", "session=abc123")
        .header("x-api-key", "apikey-xyz-789")
        .header("x-mbx-apikey", "mbx-secret-456")
        .header("x-ledger-token", "ledger-token-000")
        // A hostile primary ID: overwritten before anything can log it; the valid
        // alternative is used.
        .header("x-request-id", "bad id")
        .header("x-correlation-id", "req-77")
        .header("user-agent", "palisade-test-agent")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-77");
    drop(res);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The headers were logged (so the test could have caught a leak)...
    assert!(logs.contains("palisade-test-agent"), "{logs}");
    assert!(logs.contains("handler saw headers"), "{logs}");
    // ...and not one secret made it.
    for secret in SECRETS {
        assert!(!logs.contains(secret), "`{secret}` leaked:\n{logs}");
    }

    // Every line logged while handling the request carries its correlation ID.
    let mut in_request = 0;
    for line in logs.lines() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        let target = json["target"].as_str().unwrap_or_default();
        if target.starts_with("palisade") || target.starts_with("correlation_logging") {
            in_request += 1;
            assert_eq!(json["span"]["correlation_id"], "req-77", "{line}");
            assert_eq!(json["spans"][0]["name"], "request", "{line}");
        }
    }
    assert!(in_request >= 3, "{logs}");
}
