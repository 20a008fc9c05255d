//! ErrorMetricsLayer inside a real axum router: operations come from the policy table or the
//! matched route template, never from the raw path.
#![cfg(all(feature = "metrics", feature = "axum", feature = "reqwest"))]

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use metrics_util::debugging::DebuggingRecorder;
use palisade::classify::HttpStatus;
use palisade::metrics::{ErrorMetricsLayer, PolicyOperations, names};
use palisade::policy::Policies;

#[tokio::test]
async fn route_templates_name_operations() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The server runs on this test's thread (current-thread runtime), so a thread-local
    // recorder sees its metrics.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let policies = Arc::new(
        Policies::from_yaml_str(
            r#"
policies:
  transfers: {}
routes:
  "POST /v1/transfers/{id}": transfers
"#,
        )
        .unwrap(),
    );
    let operations = PolicyOperations::new(policies).with_route_templates(["/v1/accounts/{id}"]);
    let app = Router::new()
        .route("/v1/transfers/{id}", post(|| async { StatusCode::CREATED }))
        .route(
            "/v1/accounts/{id}",
            get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        )
        .route("/v1/misc/{id}", get(|| async { "ok" }))
        // route_layer: runs after routing, so axum's MatchedPath is there.
        .route_layer(ErrorMetricsLayer::new(HttpStatus::default()).operation_from(operations));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = reqwest::Client::new();
    for i in 0..50 {
        client
            .post(format!("http://{addr}/v1/transfers/{i}"))
            .send()
            .await
            .unwrap();
        client
            .get(format!("http://{addr}/v1/accounts/{i}"))
            .send()
            .await
            .unwrap();
        client
            .get(format!("http://{addr}/v1/misc/{i}"))
            .send()
            .await
            .unwrap();
    }

    let mut operations = BTreeSet::new();
    for (key, _, _, _) in snapshotter.snapshot().into_vec() {
        if key.key().name() == names::REQUESTS_TOTAL {
            let op = key.key().labels().find(|l| l.key() == "operation").unwrap();
            operations.insert(op.value().to_owned());
        }
    }
    assert_eq!(
        operations,
        BTreeSet::from([
            "/v1/accounts/{id}".to_owned(),
            "other".to_owned(),
            "transfers".to_owned()
        ])
    );
}
