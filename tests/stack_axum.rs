//! End to end over 127.0.0.1: an axum server whose router carries the whole stack, built from
//! a YAML file, in front of a flaky downstream; real reqwest clients.
#![cfg(feature = "axum")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use palisade::classify::HttpStatus;
use palisade::stack::ResilienceLayer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

const POLICIES: &str = r#"
defaults:
  retry: { max_retries: 0 }
policies:
  transfers:
    circuit_breaker: { consecutive_failures: 2, open_timeout: 30s }
  quotes:
    timeout: { total: 5s, attempt: 5s }
  scarce:
    bulkhead: { max_concurrent: 1, max_queue: 0 }
  exports:
    enabled: false
routes:
  "POST /v1/transfers": transfers
  "GET /v1/quotes/{pair}": quotes
  "GET /v1/scarce": scarce
  "GET /v1/exports": exports
"#;

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// The downstream: `/pay` fails while `failing` is set.
async fn downstream(failing: Arc<AtomicBool>) -> String {
    let router = Router::new().route(
        "/pay",
        post(move || {
            let failing = failing.clone();
            async move {
                if failing.load(Ordering::SeqCst) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    serve(router).await
}

#[derive(Clone)]
struct App {
    downstream: String,
    client: reqwest::Client,
    gate: Arc<Semaphore>,
}

fn app(state: App) -> Router {
    Router::new()
        .route(
            "/v1/transfers",
            post(|State(app): State<App>| async move {
                let r = app
                    .client
                    .post(format!("{}/pay", app.downstream))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => StatusCode::OK,
                    _ => StatusCode::BAD_GATEWAY,
                }
            }),
        )
        .route(
            "/v1/quotes/{pair}",
            get(
                |axum::extract::Path(pair): axum::extract::Path<String>| async move {
                    if pair == "slow" {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    pair
                },
            ),
        )
        .route(
            "/v1/scarce",
            get(|State(app): State<App>| async move {
                let _permit = app.gate.acquire().await.unwrap();
                "done"
            }),
        )
        .route("/v1/exports", get(|| async { "exported" }))
        .with_state(state)
}

struct Fixture {
    base: String,
    failing: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    store: palisade::policy::PolicyStore,
    stack: palisade::stack::StackHandle<HttpStatus>,
    path: std::path::PathBuf,
    client: reqwest::Client,
}

async fn fixture(name: &str) -> Fixture {
    let path =
        std::env::temp_dir().join(format!("palisade-stack-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, POLICIES).unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(0));
    let client = reqwest::Client::new();
    let stack = ResilienceLayer::from_yaml_path(&path, HttpStatus::new()).unwrap();
    let store = stack.store().clone();
    let handle = stack.handle();
    let router = app(App {
        downstream: downstream(failing.clone()).await,
        client: client.clone(),
        gate: gate.clone(),
    })
    .layer(stack.problem_responses());
    Fixture {
        base: serve(router).await,
        failing,
        gate,
        store,
        stack: handle,
        path,
        client,
    }
}

async fn problem(r: reqwest::Response) -> (StatusCode, Option<String>, serde_json::Value) {
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_on_one_route_leaves_the_others_serving() {
    let f = fixture("isolation").await;
    f.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let r = f
            .client
            .post(format!("{}/v1/transfers", f.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
    }
    let refused = f
        .client
        .post(format!("{}/v1/transfers", f.base))
        .header("x-request-id", "transfer-7f3a")
        .send()
        .await
        .unwrap();
    // The refusal carries the request's ID, echoed and in the body.
    assert_eq!(refused.headers()["x-request-id"], "transfer-7f3a");
    let (status, retry_after, body) = problem(refused).await;
    assert_eq!(status, 503);
    assert_eq!(body["code"], "circuit_open");
    assert_eq!(body["operation"], "transfers");
    assert_eq!(body["correlation_id"], "transfer-7f3a");
    let retry_after: u64 = retry_after.unwrap().parse().unwrap();
    assert!((29..=30).contains(&retry_after), "{retry_after}");

    // Another operation of the same router is untouched.
    let r = f
        .client
        .get(format!("{}/v1/quotes/EURUSD", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "EURUSD");
    let _ = std::fs::remove_file(&f.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_palisade_error_has_its_response() {
    let f = fixture("errors").await;

    // Kill switch.
    let (status, retry_after, body) = problem(
        f.client
            .get(format!("{}/v1/exports", f.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, retry_after),
        (StatusCode::SERVICE_UNAVAILABLE, None)
    );
    assert_eq!(body["code"], "operation_disabled");

    // Full bulkhead: one call holds the only permit.
    let held = tokio::spawn({
        let (client, base) = (f.client.clone(), f.base.clone());
        async move {
            client
                .get(format!("{base}/v1/scarce"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let scarce = f.stack.bulkhead("scarce").unwrap();
    while scarce.available_permits() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (status, retry_after, body) = problem(
        f.client
            .get(format!("{}/v1/scarce", f.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "bulkhead_full");
    assert_eq!(retry_after.as_deref(), Some("1"));
    f.gate.add_permits(10);
    assert_eq!(held.await.unwrap(), 200);

    // A quote in flight under the 5 s timeout (the handler takes 1 s)...
    let in_flight = tokio::spawn({
        let (client, base) = (f.client.clone(), f.base.clone());
        async move {
            client
                .get(format!("{base}/v1/quotes/slow"))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let quotes = f.stack.bulkhead("quotes").unwrap();
    while quotes.available_permits() == quotes.max_concurrent() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // ...then the timeout is shortened by reloading the file.
    std::fs::write(
        &f.path,
        POLICIES.replace("total: 5s, attempt: 5s", "total: 100ms, attempt: 100ms"),
    )
    .unwrap();
    let report = f.store.reload_from_file().unwrap();
    assert_eq!(report.changed, ["quotes"]);
    let (status, _, body) = problem(
        f.client
            .get(format!("{}/v1/quotes/slow", f.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        body["code"] == "timeout_total" || body["code"] == "timeout_attempt",
        "{body}"
    );
    assert_eq!(body["operation"], "quotes");
    // The call that started before the reload finished under its 5 s.
    assert_eq!(in_flight.await.unwrap(), 200);
    let _ = std::fs::remove_file(&f.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_rejected_and_reported_while_the_server_keeps_its_policies() {
    let f = fixture("invalid").await;
    std::fs::write(
        &f.path,
        POLICIES.replace("enabled: false", "enabled: sometimes"),
    )
    .unwrap();
    let err = f.store.reload_from_file().unwrap_err();
    assert!(
        err.to_string().contains("policies.exports.enabled"),
        "{err}"
    );
    assert_eq!(f.store.last_error().as_ref(), Some(&err));
    // The kill switch of the running table still holds.
    let r = f
        .client
        .get(format!("{}/v1/exports", f.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let _ = std::fs::remove_file(&f.path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_answers_for_a_switched_off_route() {
    use axum::response::IntoResponse;
    use palisade::stack::{Failure, fallback_fn};

    let stack = ResilienceLayer::from_policies(
        palisade::policy::Policies::from_yaml_str(POLICIES).unwrap(),
        HttpStatus::new(),
    )
    .with_fallback(fallback_fn(
        |failure: Failure<axum::response::Response, std::convert::Infallible>| async move {
            match failure.code() {
                Some("operation_disabled") => {
                    Ok((StatusCode::OK, "served from the nightly snapshot").into_response())
                }
                _ => failure.decline(),
            }
        },
    ));
    let base = serve(
        Router::new()
            .route("/v1/exports", get(|| async { "exported" }))
            .layer(stack.problem_responses()),
    )
    .await;
    let r = reqwest::get(format!("{base}/v1/exports")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "served from the nightly snapshot");
}
