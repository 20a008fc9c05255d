//! ErrorMetricsLayer and the recording API, asserted through metrics-util's debugging recorder.
#![cfg(all(feature = "metrics", feature = "http"))]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade::Error;
use palisade::classify::{
    Category, Classification, Classified, HttpStatus, SelfClassified, Severity, Transience,
};
use palisade::error::{BulkheadFull, BulkheadRejection, CircuitOpen, TimeoutKind};
use palisade::metrics::{
    BreakerState, ErrorMetricsLayer, PolicyOperations, RetryOutcomeKind, names,
    record_breaker_rejected, record_breaker_transition, record_bulkhead, record_bulkhead_rejected,
    record_retry, record_retry_attempt, record_timeout,
};
use palisade::policy::Policies;
use tower::{Service, ServiceBuilder, ServiceExt};

type Labels = Vec<(String, String)>;

/// name -> labels -> value, sorted, for whole-map assertions.
fn snapshot(s: &Snapshotter) -> BTreeMap<String, BTreeMap<Labels, DebugValue>> {
    let mut out: BTreeMap<String, BTreeMap<Labels, DebugValue>> = BTreeMap::new();
    for (key, _, _, value) in s.snapshot().into_vec() {
        let mut labels: Labels = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        out.entry(key.key().name().to_owned())
            .or_default()
            .insert(labels, value);
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    l
}

#[derive(Debug)]
enum LedgerError {
    Busy,
    InsufficientFunds,
}

impl Classified for LedgerError {
    fn classification(&self) -> Classification {
        match self {
            LedgerError::Busy => Classification::new(
                Transience::Transient,
                Category::Database,
                Severity::Medium,
                "database_busy",
            ),
            LedgerError::InsufficientFunds => Classification::new(
                Transience::Persistent,
                Category::Business,
                Severity::Low,
                "insufficient_funds",
            ),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn scripted_sequence_gives_exact_names_labels_and_values() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    // Each request says what the service should do, and how long it takes.
    let mut service = ServiceBuilder::new()
        .layer(ErrorMetricsLayer::new(SelfClassified).operation("database_operation"))
        .service_fn(|what: &'static str| async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match what {
                "ok" => Ok(()),
                "busy" => Err(Error::Inner(LedgerError::Busy)),
                "broke" => Err(Error::Inner(LedgerError::InsufficientFunds)),
                "open" => Err(Error::CircuitOpen(CircuitOpen {
                    breaker: "database_operation".into(),
                    retry_after: Duration::from_secs(5),
                })),
                "full" => Err(Error::BulkheadFull(BulkheadFull {
                    bulkhead: "db".into(),
                    max_concurrent: 1,
                    max_queue: 0,
                    reason: BulkheadRejection::QueueFull,
                })),
                _ => unreachable!(),
            }
        });

    for what in ["ok", "ok", "ok", "busy", "busy", "broke", "open", "full"] {
        let _ = service.ready().await.unwrap().call(what).await;
    }
    // A call dropped mid-flight is counted once, as cancelled, with no duration.
    {
        let fut = service.ready().await.unwrap().call("ok");
        let _ = tokio::time::timeout(Duration::from_millis(10), fut).await;
    }

    // What the retry, breaker, bulkhead and timeout layers will record.
    record_retry(
        "database_operation",
        RetryOutcomeKind::SucceededWithoutRetry,
    );
    record_retry("database_operation", RetryOutcomeKind::SucceededAfterRetry);
    record_retry_attempt("database_operation");
    record_retry_attempt("database_operation");
    record_retry("database_operation", RetryOutcomeKind::BudgetExhausted);
    record_breaker_transition(
        "database_operation",
        BreakerState::Closed,
        BreakerState::Open,
    );
    record_breaker_rejected("database_operation");
    record_breaker_rejected("database_operation");
    record_bulkhead("db", 3, 2);
    record_bulkhead_rejected("db", &BulkheadRejection::QueueFull);
    record_bulkhead_rejected(
        "db",
        &BulkheadRejection::WaitTimedOut(Duration::from_secs(1)),
    );
    record_timeout("database_operation", TimeoutKind::Attempt);

    let snap = snapshot(&snapshotter);
    let op = ("operation", "database_operation");

    let requests = &snap[names::REQUESTS_TOTAL];
    assert_eq!(
        requests,
        &BTreeMap::from([
            (
                labels(&[op, ("outcome", "success")]),
                DebugValue::Counter(3)
            ),
            (
                labels(&[op, ("outcome", "failure")]),
                DebugValue::Counter(5)
            ),
            (
                labels(&[op, ("outcome", "cancelled")]),
                DebugValue::Counter(1)
            ),
        ])
    );

    let errors = &snap[names::ERRORS_TOTAL];
    let err = |cat, sev, tr, code| {
        labels(&[
            op,
            ("category", cat),
            ("severity", sev),
            ("transience", tr),
            ("code", code),
        ])
    };
    assert_eq!(
        errors,
        &BTreeMap::from([
            (
                err("database", "medium", "transient", "database_busy"),
                DebugValue::Counter(2)
            ),
            (
                err("business", "low", "persistent", "insufficient_funds"),
                DebugValue::Counter(1)
            ),
            (
                err("external", "medium", "transient", "circuit_open"),
                DebugValue::Counter(1)
            ),
            (
                err("system", "medium", "transient", "bulkhead_full"),
                DebugValue::Counter(1)
            ),
        ])
    );

    let DebugValue::Histogram(durations) = &snap[names::REQUEST_DURATION_SECONDS][&labels(&[op])]
    else {
        panic!("duration is a histogram")
    };
    assert_eq!(durations.len(), 8, "completed calls only");
    assert!(
        durations.iter().all(|d| d.into_inner() == 0.25),
        "{durations:?}"
    );

    assert_eq!(
        snap[names::RETRIES_TOTAL],
        BTreeMap::from([
            (
                labels(&[op, ("outcome", "succeeded_without_retry")]),
                DebugValue::Counter(1)
            ),
            (
                labels(&[op, ("outcome", "succeeded_after_retry")]),
                DebugValue::Counter(1)
            ),
            (
                labels(&[op, ("outcome", "budget_exhausted")]),
                DebugValue::Counter(1)
            ),
        ])
    );
    assert_eq!(
        snap[names::RETRY_ATTEMPTS_TOTAL][&labels(&[op])],
        DebugValue::Counter(2)
    );
    let br = ("breaker", "database_operation");
    assert_eq!(
        snap[names::CIRCUIT_BREAKER_TRANSITIONS_TOTAL],
        BTreeMap::from([(
            labels(&[br, ("from", "closed"), ("to", "open")]),
            DebugValue::Counter(1)
        )])
    );
    let state = &snap[names::CIRCUIT_BREAKER_STATE];
    assert_eq!(state.len(), BreakerState::ALL.len());
    for s in BreakerState::ALL {
        let expected = if s == BreakerState::Open { 1.0 } else { 0.0 };
        assert_eq!(
            state[&labels(&[br, ("state", s.as_str())])],
            DebugValue::Gauge(expected.into()),
            "{s:?}"
        );
    }
    assert_eq!(
        snap[names::CIRCUIT_BREAKER_REJECTED_TOTAL][&labels(&[br])],
        DebugValue::Counter(2)
    );
    assert_eq!(
        snap[names::BULKHEAD_IN_FLIGHT][&labels(&[("bulkhead", "db")])],
        DebugValue::Gauge(3.0.into())
    );
    assert_eq!(
        snap[names::BULKHEAD_QUEUED][&labels(&[("bulkhead", "db")])],
        DebugValue::Gauge(2.0.into())
    );
    assert_eq!(
        snap[names::BULKHEAD_REJECTED_TOTAL],
        BTreeMap::from([
            (
                labels(&[("bulkhead", "db"), ("reason", "queue_full")]),
                DebugValue::Counter(1)
            ),
            (
                labels(&[("bulkhead", "db"), ("reason", "wait_timed_out")]),
                DebugValue::Counter(1)
            ),
        ])
    );
    assert_eq!(
        snap[names::TIMEOUTS_TOTAL],
        BTreeMap::from([(labels(&[op, ("kind", "attempt")]), DebugValue::Counter(1))])
    );
}

fn status_service(
    policies: Arc<Policies>,
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
    ServiceBuilder::new()
        .layer(
            ErrorMetricsLayer::new(HttpStatus::default())
                .operation_from(PolicyOperations::new(policies)),
        )
        .service_fn(|req: Request<()>| async move {
            // Paths ending in an odd digit fail, so both outcomes and error series appear.
            let odd = req.uri().path().bytes().last().is_some_and(|b| b % 2 == 1);
            let status = if odd {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok(Response::builder().status(status).body(()).unwrap())
        })
}

#[tokio::test]
async fn ten_thousand_raw_paths_give_a_bounded_set_of_label_sets() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let policies = Arc::new(
        Policies::from_yaml_str(
            r#"
policies:
  transfers: {}
  balances: {}
routes:
  "POST /v1/transfers": transfers
  "/v1/balance": balances
"#,
        )
        .unwrap(),
    );
    let service = status_service(policies);

    for i in 0..10_000u32 {
        let (method, path) = match i % 4 {
            0 => ("POST", "/v1/transfers".to_owned()),
            1 => ("GET", "/v1/balance".to_owned()),
            // Raw paths with IDs in them: never a label.
            2 => ("GET", format!("/v1/accounts/{i}")),
            _ => ("GET", format!("/{i}/{}", "x".repeat((i % 50) as usize))),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        service.clone().oneshot(req).await.unwrap();
    }

    let snap = snapshot(&snapshotter);
    let mut series = 0;
    let mut operations = BTreeSet::new();
    for by_labels in snap.values() {
        series += by_labels.len();
        for labels in by_labels.keys() {
            for (k, v) in labels {
                if k == "operation" {
                    operations.insert(v.clone());
                }
            }
        }
    }
    assert_eq!(
        operations,
        BTreeSet::from(["balances".into(), "other".into(), "transfers".into()])
    );
    // 3 operations x (success, failure) + 3 durations + 3 error series at most.
    assert!(series <= 12, "{series} series: {snap:#?}");
    let total: u64 = snap[names::REQUESTS_TOTAL]
        .values()
        .map(|v| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 10_000);
}

#[tokio::test]
async fn made_up_codes_are_capped() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    #[derive(Debug)]
    struct Leaky(u32);
    impl Classified for Leaky {
        fn classification(&self) -> Classification {
            // A classifier that (wrongly) puts request data in its code.
            Classification::new(
                Transience::Transient,
                Category::External,
                Severity::High,
                format!("peer_{}", self.0),
            )
        }
    }

    let service = ServiceBuilder::new()
        .layer(
            ErrorMetricsLayer::new(SelfClassified)
                .operation("api_call")
                .max_codes(5),
        )
        .service_fn(|n: u32| async move { Err::<(), _>(Leaky(n)) });
    for n in 0..1000 {
        let _ = service.clone().oneshot(n).await;
    }
    let snap = snapshot(&snapshotter);
    let codes: BTreeSet<String> = snap[names::ERRORS_TOTAL]
        .keys()
        .flat_map(|l| {
            l.iter()
                .filter(|(k, _)| k == "code")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(codes.len(), 6, "{codes:?}");
    assert!(codes.contains("other"));
    let other = labels(&[
        ("operation", "api_call"),
        ("category", "external"),
        ("severity", "high"),
        ("transience", "transient"),
        ("code", "other"),
    ]);
    assert_eq!(snap[names::ERRORS_TOTAL][&other], DebugValue::Counter(995));
}
