//! Operations selected from axum's matched route template, through a real axum router.
#![cfg(feature = "axum")]

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};
use palisade::policy::Policies;
use tower::ServiceExt;

#[tokio::test]
async fn the_matched_route_template_selects_the_policy_not_the_raw_path() {
    let policies = Arc::new(
        Policies::from_yaml_str(
            r#"
policies:
  account_reads: {}
  transfers: {}
routes:
  "GET /v1/accounts/{id}": account_reads
  "POST /v1/transfers": transfers
"#,
        )
        .unwrap(),
    );
    let select = |policies: Arc<Policies>| {
        move |request: Request| async move { policies.select(&request).name().to_owned() }
    };
    let app = Router::new()
        .route("/v1/accounts/{id}", get(select(policies.clone())))
        .route("/v1/transfers", post(select(policies.clone())))
        .route("/v1/other/{id}", get(select(policies.clone())));

    for (method, path, expected) in [
        ("GET", "/v1/accounts/42", "account_reads"),
        ("GET", "/v1/accounts/7", "account_reads"),
        ("POST", "/v1/transfers", "transfers"),
        ("GET", "/v1/other/9", "defaults"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(body, expected.as_bytes(), "{method} {path}");
    }
}
