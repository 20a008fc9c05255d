//! One payments service with everything from palisade's observability half: correlation IDs
//! (echoed, generated, propagated to a downstream ledger), JSON logs where every line of a
//! request carries its ID, error metrics exported for Prometheus with explicit histogram
//! buckets, and `/health/ready`.
//!
//! `cargo run --example observability --features axum,reqwest`
//!
//! Everything runs on 127.0.0.1 and stops by itself after a handful of requests.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use palisade::classify::HttpStatus;
use palisade::correlation::{CorrelationLayer, PropagateCorrelationLayer, X_REQUEST_ID};
use palisade::health::{self, Check, HealthRegistry, HealthStatus};
use palisade::metrics::{ErrorMetricsLayer, PolicyOperations};
use palisade::policy::Policies;
use tower::{Layer, ServiceExt};

const POLICIES: &str = r#"
policies:
  transfers: {}
  balances: {}
routes:
  "POST /v1/transfers/{id}": transfers
  "GET /v1/balance": balances
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // JSON logs: the `request` span (with `correlation_id`) is on every line logged inside it.
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .init();

    // Buckets for calls that move money: 5 ms to 30 s.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("palisade_request_duration_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()?;
    palisade::metrics::describe();

    // The ledger: answers with the correlation ID it received; account 13 is unavailable.
    let ledger =
        serve(
            Router::new()
                .route(
                    "/ledger/{account}",
                    get(
                        |axum::extract::Path(account): axum::extract::Path<u32>,
                         headers: HeaderMap| async move {
                            let id = headers.get(X_REQUEST_ID).cloned();
                            tracing::info!(account, "ledger entry written");
                            let status = if account == 13 {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::OK
                            };
                            (
                                status,
                                id.map(|v| v.to_str().unwrap_or_default().to_owned())
                                    .unwrap_or_default(),
                            )
                        },
                    ),
                )
                .layer(CorrelationLayer::new()),
        )
        .await?;

    let registry = HealthRegistry::new();
    registry.register(Check::new("ledger", move || async move {
        let res = reqwest::get(format!("http://{ledger}/ledger/1")).await;
        match res {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("ledger answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    }));
    let breaker = registry.reporter("ledger_breaker", false);
    breaker.report(HealthStatus::Healthy, None);

    let policies = Arc::new(Policies::from_yaml_str(POLICIES)?);
    let client = reqwest::Client::new();
    let app = Router::new()
        .route(
            "/v1/transfers/{id}",
            post(move |axum::extract::Path(id): axum::extract::Path<u32>| {
                let client = client.clone();
                async move {
                    tracing::info!(transfer = id, "transfer accepted");
                    let ledger_call = PropagateCorrelationLayer::new().layer(client.clone());
                    let req = client
                        .get(format!("http://{ledger}/ledger/{id}"))
                        .build()
                        .unwrap();
                    match ledger_call.oneshot(req).await {
                        Ok(res) if res.status().is_success() => {
                            (StatusCode::CREATED, res.text().await.unwrap_or_default())
                        }
                        Ok(res) => {
                            tracing::warn!(
                                status = res.status().as_u16(),
                                "ledger refused the entry"
                            );
                            (StatusCode::SERVICE_UNAVAILABLE, String::new())
                        }
                        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
                    }
                }
            }),
        )
        .route_layer(
            ErrorMetricsLayer::new(HttpStatus::default())
                .operation_from(PolicyOperations::new(policies)),
        )
        .layer(CorrelationLayer::new())
        .merge(health::axum::routes(registry));
    let payments = serve(app).await?;

    let http = reqwest::Client::new();
    // An ID from the caller is echoed and reaches the ledger.
    let res = http
        .post(format!("http://{payments}/v1/transfers/7"))
        .header("x-request-id", "checkout-5521")
        .send()
        .await?;
    assert_eq!(res.headers()["x-request-id"], "checkout-5521");
    assert_eq!(
        res.text().await?,
        "checkout-5521",
        "the ledger saw the same ID"
    );

    // A hostile ID is replaced by a generated one, which the ledger sees instead.
    let res = http
        .post(format!("http://{payments}/v1/transfers/8"))
        .header("x-request-id", "x".repeat(4096))
        .send()
        .await?;
    let generated = res.headers()["x-request-id"].to_str()?.to_owned();
    assert_eq!(generated.len(), 36);
    assert_eq!(res.text().await?, generated);

    // A failing transfer is counted by its classification.
    let res = http
        .post(format!("http://{payments}/v1/transfers/13"))
        .send()
        .await?;
    assert_eq!(res.status(), 503);

    let ready = http
        .get(format!("http://{payments}/health/ready"))
        .send()
        .await?;
    println!(
        "\n/health/ready -> {}\n{}\n",
        ready.status(),
        ready.text().await?
    );

    println!("Prometheus exposition (palisade_ series):");
    for line in prometheus
        .render()
        .lines()
        .filter(|l| l.contains("palisade_"))
    {
        println!("{line}");
    }
    Ok(())
}

async fn serve(router: Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}
