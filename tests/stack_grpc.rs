//! The stack in front of a gRPC service at the HTTP level (what tonic's
//! `Server::builder().layer` sees): operations by method path, refusals as trailers-only
//! statuses. Paused clock, no network.
#![cfg(feature = "grpc")]

use std::time::Duration;

use palisade::classify::{GrpcResponse, GrpcStatus};
use palisade::policy::Policies;
use palisade::stack::ResilienceLayer;
use tonic::Status;
use tonic::body::Body;
use tower::{ServiceExt, service_fn};
use tower_layer::Layer;

const POLICIES: &str = r#"
defaults:
  retry: { max_retries: 0 }
policies:
  place_order:
    circuit_breaker: { consecutive_failures: 2, open_timeout: 10s }
  cancel_order:
    enabled: false
  quote:
    timeout: { total: 200ms, attempt: 200ms }
routes:
  "/exchange.v1.Orders/Place": place_order
  "/exchange.v1.Orders/Cancel": cancel_order
  "/exchange.v1.Orders/Quote": quote
"#;

fn call(path: &str) -> http::Request<Body> {
    http::Request::post(path).body(Body::default()).unwrap()
}

fn status(r: &http::Response<Body>) -> (String, Option<String>) {
    (
        r.headers()["grpc-status"].to_str().unwrap().to_owned(),
        r.headers()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().unwrap().to_owned()),
    )
}

#[tokio::test(start_paused = true)]
async fn grpc_refusals_have_their_status_and_pushback() {
    let layer = ResilienceLayer::from_policies(
        Policies::from_yaml_str(POLICIES).unwrap(),
        GrpcResponse(GrpcStatus::default()),
    );
    let svc = layer
        .grpc_statuses()
        .layer(service_fn(|req: http::Request<Body>| async move {
            let status = match req.uri().path() {
                "/exchange.v1.Orders/Place" => Status::unavailable("matching engine down"),
                "/exchange.v1.Orders/Quote" => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Status::ok("")
                }
                _ => Status::ok(""),
            };
            Ok::<_, std::convert::Infallible>(status.into_http::<Body>())
        }));

    // The service's own UNAVAILABLE passes through, twice; then the breaker answers.
    for _ in 0..2 {
        let r = svc
            .clone()
            .oneshot(call("/exchange.v1.Orders/Place"))
            .await
            .unwrap();
        assert_eq!(status(&r), ("14".to_owned(), None));
    }
    let r = svc
        .clone()
        .oneshot(call("/exchange.v1.Orders/Place"))
        .await
        .unwrap();
    assert_eq!(status(&r), ("14".to_owned(), Some("10000".to_owned())));

    // Other methods are unaffected by that breaker.
    let r = svc
        .clone()
        .oneshot(call("/exchange.v1.Orders/List"))
        .await
        .unwrap();
    assert_eq!(status(&r).0, "0");

    // Kill switch: UNAVAILABLE without pushback.
    let r = svc
        .clone()
        .oneshot(call("/exchange.v1.Orders/Cancel"))
        .await
        .unwrap();
    assert_eq!(status(&r), ("14".to_owned(), None));

    // Timeout: DEADLINE_EXCEEDED.
    let r = svc
        .oneshot(call("/exchange.v1.Orders/Quote"))
        .await
        .unwrap();
    assert_eq!(status(&r).0, "4");
}
