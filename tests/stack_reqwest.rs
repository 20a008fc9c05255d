//! The resilient reqwest client over 127.0.0.1: retries of idempotent requests, one breaker
//! per host within an operation.
#![cfg(all(feature = "reqwest", feature = "axum"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use palisade::Error;
use palisade::circuit_breaker::CircuitState;
use palisade::policy::Policies;
use palisade::stack::reqwest::ResilientClient;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

const POLICIES: &str = r#"
policies:
  payment_gateway:
    retry: { max_retries: 3, base_delay: 1ms, max_delay: 5ms, jitter: none }
    circuit_breaker: { consecutive_failures: 3, open_timeout: 60s }
routes:
  "GET /rates": payment_gateway
"#;

/// A downstream host: `/flaky` answers 503 twice then 200, `/down` always 500.
async fn host() -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let router = Router::new()
        .route(
            "/flaky",
            get(move || {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .route(
            "/down",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/up", post(|| async { StatusCode::OK }))
        .route("/rates", get(|| async { "1.08" }))
        .route(
            "/whoami",
            get(|headers: axum::http::HeaderMap| async move {
                headers
                    .get("x-request-id")
                    .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned())
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_to_a_flaky_host_are_retried() {
    let (base, calls) = host().await;
    let client = ResilientClient::from_policies(
        reqwest::Client::new(),
        Policies::from_yaml_str(POLICIES).unwrap(),
    );
    let r = client
        .get("payment_gateway", format!("{base}/flaky"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // As a tower service, the operation comes from `routes`.
    let mut svc = client.clone();
    let request = reqwest::Request::new(
        reqwest::Method::GET,
        format!("{base}/rates").parse().unwrap(),
    );
    let r = svc.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "1.08");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_down_opens_its_own_breaker_only() {
    let (down, _) = host().await;
    let (up, _) = host().await;
    let client = ResilientClient::from_policies(
        reqwest::Client::new(),
        Policies::from_yaml_str(POLICIES).unwrap(),
    );
    // POSTs without an idempotency key are sent once.
    for _ in 0..3 {
        let r = client
            .post("payment_gateway", format!("{down}/down"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
    }
    match client
        .post("payment_gateway", format!("{down}/up"))
        .send()
        .await
    {
        Err(Error::CircuitOpen(open)) => {
            let host = down.trim_start_matches("http://");
            assert_eq!(&*open.breaker, format!("payment_gateway/{host}"));
        }
        other => panic!("expected the down host's breaker to be open, got {other:?}"),
    }
    // The same operation on another host goes through.
    let r = client
        .post("payment_gateway", format!("{up}/up"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let breakers = client.handle().breaker("payment_gateway").unwrap();
    let state = |base: &str| {
        breakers
            .get(&Arc::from(base.trim_start_matches("http://")))
            .unwrap()
            .state()
    };
    assert_eq!(state(&down), CircuitState::Open);
    assert_eq!(state(&up), CircuitState::Closed);
}

#[cfg(feature = "correlation")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_while_handling_a_request_carries_its_correlation_id() {
    use palisade::correlation::{CorrelationId, scope};

    let (base, _) = host().await;
    let client = ResilientClient::from_policies(
        reqwest::Client::new(),
        Policies::from_yaml_str(POLICIES).unwrap(),
    );
    let id = CorrelationId::parse(b"transfer-7f3a").unwrap();
    let seen = scope(id, async {
        client
            .get("payment_gateway", format!("{base}/whoami"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(seen, "transfer-7f3a");
    // Outside a request there is nothing to pass on.
    let seen = client
        .get("payment_gateway", format!("{base}/whoami"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(seen, "none");
}
