//! Correlation IDs and error metrics inside the stack, through a real axum server on
//! 127.0.0.1: the `correlation:` section of the policy file picks the headers, the ID reaches
//! the handler, is echoed on every response (refusals included) and written in problem
//! bodies; metrics are labelled by the operation the stack selected.
#![cfg(all(feature = "axum", feature = "metrics", feature = "correlation"))]

use std::collections::BTreeMap;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade::classify::HttpStatus;
use palisade::correlation::CorrelationId;
use palisade::policy::Policies;
use palisade::stack::ResilienceLayer;
use tokio::net::TcpListener;

const POLICIES: &str = r#"
correlation:
  headers: [x-correlation-id, x-request-id]
  response_header: x-correlation-id
  trust_traceparent: false
defaults:
  retry: { max_retries: 0 }
policies:
  transfers:
    circuit_breaker: { consecutive_failures: 2, open_timeout: 30s }
  quotes: {}
routes:
  "POST /v1/transfers": transfers
  "GET /v1/quotes/{pair}": quotes
"#;

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Counter values by (name, sorted labels), from one snapshot.
fn counters(snapshotter: &Snapshotter) -> BTreeMap<(String, Vec<(String, String)>), u64> {
    let mut out = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let mut labels: Vec<_> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            out.insert((key.key().name().to_owned(), labels), n);
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

// Current-thread runtime: the server runs on the test's thread, so the thread-local recorder
// sees what the stack records.
#[tokio::test]
async fn ids_and_metrics_follow_the_stacks_own_selection() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let stack = ResilienceLayer::from_policies(
        Policies::from_yaml_str(POLICIES).unwrap(),
        HttpStatus::new(),
    );
    let router = Router::new()
        .route(
            "/v1/quotes/{pair}",
            // The handler sees the request's ID without it being passed around.
            get(|| async { CorrelationId::current().unwrap().to_string() }),
        )
        .route("/v1/transfers", post(|| async { StatusCode::BAD_GATEWAY }))
        .route("/v1/misc", get(|| async { "misc" }))
        .layer(stack.problem_responses());
    let base = serve(router).await;
    let client = reqwest::Client::new();
    let get = |path: &str, header: Option<(&str, &str)>| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some((name, value)) = header {
            r = r.header(name, value);
        }
        r.send()
    };

    // The first listed header wins and is the one echoed.
    let r = get("/v1/quotes/EURUSD", Some(("x-correlation-id", "quote-1")))
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"], "quote-1");
    assert_eq!(r.text().await.unwrap(), "quote-1");
    // The second listed header is accepted too; the ID is echoed in the response header.
    let r = get("/v1/quotes/EURUSD", Some(("x-request-id", "quote-2")))
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"], "quote-2");
    assert_eq!(r.text().await.unwrap(), "quote-2");
    // A hostile ID is replaced by a generated one, never echoed.
    let r = get("/v1/quotes/EURUSD", Some(("x-correlation-id", "a\tb")))
        .await
        .unwrap();
    let echoed = r.headers()["x-correlation-id"].to_str().unwrap().to_owned();
    assert_eq!(echoed.len(), 36, "{echoed}");
    assert_eq!(r.text().await.unwrap(), echoed);
    // `trust_traceparent: false`: a traceparent alone does not give the ID.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get("/v1/quotes/EURUSD", Some(("traceparent", trace)))
        .await
        .unwrap();
    let id = r.text().await.unwrap();
    assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(id.len(), 36);
    // A route without a policy runs under the defaults, labelled `other`.
    assert_eq!(get("/v1/misc", None).await.unwrap().status(), 200);

    // Two failures open the transfers breaker; the refusal carries the caller's ID.
    for _ in 0..2 {
        let r = client
            .post(format!("{base}/v1/transfers"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["x-correlation-id"].len(), 36);
    }
    let r = client
        .post(format!("{base}/v1/transfers"))
        .header("x-correlation-id", "transfer-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-correlation-id"], "transfer-3");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["correlation_id"], "transfer-3");
    assert_eq!(body["code"], "circuit_open");

    let c = counters(&snapshotter);
    let get_count =
        |name: &str, l: &[(&str, &str)]| c.get(&(name.to_owned(), labels(l))).copied().unwrap_or(0);
    let requests = "palisade_requests_total";
    assert_eq!(
        get_count(requests, &[("operation", "quotes"), ("outcome", "success")]),
        4
    );
    assert_eq!(
        get_count(requests, &[("operation", "other"), ("outcome", "success")]),
        1
    );
    assert_eq!(
        get_count(
            requests,
            &[("operation", "transfers"), ("outcome", "failure")]
        ),
        3
    );
    let errors = |code: &str| {
        c.iter()
            .filter(|((name, l), _)| {
                name == "palisade_errors_total"
                    && l.contains(&("operation".into(), "transfers".into()))
                    && l.contains(&("code".into(), code.into()))
            })
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    assert_eq!(errors("http_502"), 2);
    assert_eq!(errors("circuit_open"), 1);
    // Only policy names and `other`: never a raw path.
    for (name, l) in c.keys() {
        if name == requests {
            let op = &l.iter().find(|(k, _)| k == "operation").unwrap().1;
            assert!(
                ["quotes", "transfers", "other"].contains(&op.as_str()),
                "{op}"
            );
        }
    }
}

#[tokio::test]
async fn without_metrics_and_without_correlation_leave_both_to_the_user() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let stack = ResilienceLayer::from_policies(
        Policies::from_yaml_str(POLICIES).unwrap(),
        HttpStatus::new(),
    )
    .without_metrics()
    .without_correlation();
    let router = Router::new()
        .route(
            "/v1/quotes/{pair}",
            get(|| async { format!("{:?}", CorrelationId::current()) }),
        )
        .layer(stack.problem_responses());
    let base = serve(router).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/quotes/EURUSD"))
        .header("x-correlation-id", "quote-1")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-correlation-id").is_none());
    assert_eq!(r.text().await.unwrap(), "None");
    assert!(
        counters(&snapshotter)
            .keys()
            .all(|(name, _)| name != "palisade_requests_total")
    );
}

#[test]
fn the_correlation_section_is_read_and_its_mistakes_located() {
    use palisade::policy::IssueKind;

    let p = Policies::from_yaml_str(POLICIES).unwrap();
    let c = p.correlation();
    let headers: Vec<&str> = c.headers.iter().map(|h| &**h).collect();
    assert_eq!(headers, ["x-correlation-id", "x-request-id"]);
    assert_eq!(c.response_header.as_deref(), Some("x-correlation-id"));
    assert!(!c.trust_traceparent);
    // Without the section: x-request-id, traceparent trusted.
    let d = Policies::from_yaml_str("policies: {}\n").unwrap();
    assert_eq!(&*d.correlation().headers[0], "x-request-id");
    assert!(d.correlation().trust_traceparent);

    let err = Policies::from_yaml_str(
        "correlation:\n  headers: [x-request-id, \"bad header\"]\n  response_header: x_id\n  trust_traceparent: yes\n  echo: x-request-id\n",
    )
    .unwrap_err();
    let bad = err.issue_at("correlation.headers.1").unwrap();
    assert_eq!(bad.kind, IssueKind::OutOfRange);
    assert_eq!(bad.location.as_ref().unwrap().line(), Some(2));
    let underscore = err.issue_at("correlation.response_header").unwrap();
    assert!(
        underscore.message.contains("x_id"),
        "{}",
        underscore.message
    );
    assert_eq!(underscore.location.as_ref().unwrap().line(), Some(3));
    assert_eq!(
        err.issue_at("correlation.trust_traceparent").unwrap().kind,
        IssueKind::WrongType
    );
    let unknown = err.issue_at("correlation.echo").unwrap();
    assert_eq!(unknown.kind, IssueKind::UnknownKey);
    assert_eq!(unknown.location.as_ref().unwrap().line(), Some(5));

    let not_a_list =
        Policies::from_yaml_str("correlation:\n  headers: x-request-id\n").unwrap_err();
    assert_eq!(
        not_a_list.issue_at("correlation.headers").unwrap().kind,
        IssueKind::WrongType
    );
}

/// A `correlation:` list without `x-request-id` makes the stack ignore that header: an
/// `x-request-id` from outside is not taken as the ID, a fresh one is made and echoed.
#[tokio::test]
async fn a_header_the_file_does_not_list_is_not_read() {
    let stack = ResilienceLayer::from_policies(
        Policies::from_yaml_str("correlation:\n  headers: [x-correlation-id]\n").unwrap(),
        HttpStatus::new(),
    );
    let router = Router::new()
        .route(
            "/v1/misc",
            get(|| async { CorrelationId::current().unwrap().to_string() }),
        )
        .layer(stack.problem_responses());
    let base = serve(router).await;
    let client = reqwest::Client::new();

    let r = client
        .get(format!("{base}/v1/misc"))
        .header("x-request-id", "from-outside")
        .send()
        .await
        .unwrap();
    let echoed = r.headers()["x-correlation-id"].to_str().unwrap().to_owned();
    assert_ne!(echoed, "from-outside");
    assert_eq!(echoed.len(), 36);
    assert_eq!(r.text().await.unwrap(), echoed);

    let r = client
        .get(format!("{base}/v1/misc"))
        .header("x-correlation-id", "listed-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-correlation-id"], "listed-1");
}

/// A call dropped before it ends is counted once, as `outcome="cancelled"`, under the
/// operation the stack selected (and not again as anything else); a call that ends is
/// counted by its outcome.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_in_flight_is_counted_as_cancelled() {
    use std::time::Duration;
    use tower::{Layer, Service, ServiceExt};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let policies = Policies::from_yaml_str("policies:\n  transfers: {}\n").unwrap();
    let svc = ResilienceLayer::from_policies(policies, palisade::classify::SelfClassified)
        .without_correlation()
        .with_select(palisade::stack::ByName::new("transfers"))
        .layer(tower::service_fn(|ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, std::io::Error>(ms)
        }));

    let mut dropped = Box::pin(svc.clone().call(1000));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(dropped.as_mut().poll(&mut cx).is_pending());
    drop(dropped);
    assert_eq!(svc.clone().oneshot(0).await.unwrap(), 0);

    let counters = counters(&snapshotter);
    let requests = |outcome| {
        counters
            .get(&(
                "palisade_requests_total".to_owned(),
                labels(&[("operation", "transfers"), ("outcome", outcome)]),
            ))
            .copied()
    };
    assert_eq!(requests("cancelled"), Some(1));
    assert_eq!(requests("success"), Some(1));
    assert_eq!(requests("failure"), None);
}
