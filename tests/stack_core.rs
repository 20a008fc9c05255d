//! The stack on its own (no network): per-operation isolation, kill switch, fallback,
//! reloads. Paused clock throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::CircuitState;
use palisade::classify::SelfClassified;
use palisade::error::TimeoutKind;
use palisade::policy::{OperationName, Policies, PolicyStore};
use palisade::stack::{Failure, ResilienceLayer, fallback_fn};
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;

fn request(operation: &str, path: &str) -> http::Request<()> {
    let mut r = http::Request::get(path).body(()).unwrap();
    r.extensions_mut().insert(OperationName::new(operation));
    r
}

/// `/fail` refuses the connection, `/slow/<ms>` answers after that long, anything else at once.
fn backend() -> impl Service<
    http::Request<()>,
    Response = &'static str,
    Error = std::io::Error,
    Future = impl Future<Output = Result<&'static str, std::io::Error>> + Send,
> + Clone
+ Send {
    service_fn(|req: http::Request<()>| async move {
        let path = req.uri().path().to_owned();
        if path == "/fail" {
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        }
        if let Some(ms) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        Ok("ok")
    })
}

/// Two calls to the gateway's `/fail`, enough to trip its breaker in `TABLE` (and in the
/// reload tests' tables): each fails with the backend's own error on its last attempt.
async fn trip_gateway<S>(svc: &S)
where
    S: Service<http::Request<()>, Error = Error<std::io::Error>> + Clone,
    S::Response: std::fmt::Debug,
{
    for _ in 0..2 {
        let e = svc
            .clone()
            .oneshot(request("payment_gateway", "/fail"))
            .await
            .unwrap_err();
        assert!(matches!(e.last_attempt(), Error::Inner(_)), "{e:?}");
    }
}

const TABLE: &str = r#"
defaults:
  retry: { max_retries: 0 }
policies:
  payment_gateway:
    circuit_breaker: { consecutive_failures: 2, open_timeout: 30s }
  ledger_read:
    timeout: { total: 5s, attempt: 5s }
    bulkhead: { max_concurrent: 1, max_queue: 0 }
  legacy_export:
    enabled: false
  quote:
    timeout: { total: 5s, attempt: 5s }
"#;

#[tokio::test(start_paused = true)]
async fn one_operation_failing_never_blocks_another() {
    let layer =
        ResilienceLayer::from_policies(Policies::from_yaml_str(TABLE).unwrap(), SelfClassified)
            .without_correlation();
    let handle = layer.handle();
    let svc = layer.layer(backend());

    trip_gateway(&svc).await;
    assert_eq!(
        handle.breaker("payment_gateway").unwrap().state(),
        CircuitState::Open
    );
    match svc.clone().oneshot(request("payment_gateway", "/ok")).await {
        Err(Error::CircuitOpen(open)) => {
            assert_eq!(&*open.breaker, "payment_gateway");
            assert_eq!(open.retry_after, Duration::from_secs(30));
        }
        other => panic!("expected an open breaker, got {other:?}"),
    }
    // Another operation, and the defaults, are untouched.
    assert_eq!(
        svc.clone()
            .oneshot(request("ledger_read", "/ok"))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        svc.clone().oneshot(http::Request::new(())).await.unwrap(),
        "ok"
    );
    assert_eq!(
        handle.breaker("ledger_read").unwrap().state(),
        CircuitState::Closed
    );

    // A full bulkhead of one operation rejects its own calls only.
    let mut held = svc.clone();
    let slow = tokio::spawn(held.call(request("ledger_read", "/slow/1000")));
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(
        handle.bulkhead("ledger_read").unwrap().available_permits(),
        0
    );
    match svc.clone().oneshot(request("ledger_read", "/ok")).await {
        Err(Error::BulkheadFull(full)) => assert_eq!(&*full.bulkhead, "ledger_read"),
        other => panic!("expected a full bulkhead, got {other:?}"),
    }
    assert_eq!(
        svc.clone().oneshot(http::Request::new(())).await.unwrap(),
        "ok"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(slow.await.unwrap().unwrap(), "ok");
    assert_eq!(
        handle.bulkhead("ledger_read").unwrap().available_permits(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn services_of_one_layer_share_the_operation_state() {
    // axum's Router::layer builds one service per route: they must share one breaker.
    let layer =
        ResilienceLayer::from_policies(Policies::from_yaml_str(TABLE).unwrap(), SelfClassified)
            .without_correlation();
    let a = layer.layer(backend());
    let b = layer.layer(backend());
    a.oneshot(request("payment_gateway", "/fail"))
        .await
        .unwrap_err();
    b.clone()
        .oneshot(request("payment_gateway", "/fail"))
        .await
        .unwrap_err();
    assert!(matches!(
        b.oneshot(request("payment_gateway", "/ok")).await,
        Err(Error::CircuitOpen(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_kill_switch_refuses_without_calling_and_the_fallback_answers() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let counting = service_fn(move |_: http::Request<()>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async {
            Err::<&'static str, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
        }
    });
    let policies = Policies::from_yaml_str(TABLE).unwrap();
    let plain = ResilienceLayer::from_policies(policies.clone(), SelfClassified)
        .without_correlation()
        .layer(counting.clone());
    match plain.oneshot(request("legacy_export", "/x")).await {
        Err(Error::OperationDisabled(off)) => assert_eq!(&*off.operation, "legacy_export"),
        other => panic!("expected the kill switch, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let codes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = codes.clone();
    let degraded = ResilienceLayer::from_policies(policies, SelfClassified)
        .without_correlation()
        .with_fallback(fallback_fn(
            move |f: Failure<&'static str, std::io::Error>| {
                let log = log.clone();
                async move {
                    log.lock()
                        .unwrap()
                        .push((f.operation.to_string(), f.code().unwrap().to_owned()));
                    match f.code() {
                        Some("operation_disabled" | "circuit_open") => Ok("cached"),
                        _ => f.decline(),
                    }
                }
            },
        ))
        .layer(counting);
    assert_eq!(
        degraded
            .clone()
            .oneshot(request("legacy_export", "/x"))
            .await
            .unwrap(),
        "cached"
    );
    // The service's own failures reach the fallback with their classification; it declines.
    for _ in 0..2 {
        let e = degraded
            .clone()
            .oneshot(request("payment_gateway", "/x"))
            .await
            .unwrap_err();
        assert!(matches!(e.last_attempt(), Error::Inner(_)));
    }
    // The breaker is now open: the fallback answers.
    assert_eq!(
        degraded
            .oneshot(request("payment_gateway", "/x"))
            .await
            .unwrap(),
        "cached"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        *codes.lock().unwrap(),
        [
            ("legacy_export".to_owned(), "operation_disabled".to_owned()),
            (
                "payment_gateway".to_owned(),
                "io_connection_refused".to_owned()
            ),
            (
                "payment_gateway".to_owned(),
                "io_connection_refused".to_owned()
            ),
            ("payment_gateway".to_owned(), "circuit_open".to_owned()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_applies_to_the_next_call_while_calls_in_flight_keep_their_policy() {
    let store = PolicyStore::new(Policies::from_yaml_str(TABLE).unwrap());
    let svc = ResilienceLayer::new(store.clone(), SelfClassified)
        .without_correlation()
        .layer(backend());

    // Started under a 5 s timeout; takes 2 s.
    let in_flight = tokio::spawn(svc.clone().oneshot(request("quote", "/slow/2000")));
    tokio::time::advance(Duration::from_millis(100)).await;

    let report = store
        .reload_from_str(&TABLE.replace(
            "quote:\n    timeout: { total: 5s, attempt: 5s }",
            "quote:\n    timeout: { total: 1s, attempt: 1s }",
        ))
        .unwrap();
    assert_eq!(report.changed, ["quote"]);

    let started = tokio::time::Instant::now();
    match svc.clone().oneshot(request("quote", "/slow/2000")).await {
        Err(Error::Timeout(t)) => {
            assert_eq!(t.limit, Duration::from_secs(1));
            assert!(matches!(t.kind, TimeoutKind::Total | TimeoutKind::Attempt));
        }
        other => panic!("expected the new 1 s timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    // The first call still had its 5 s and finished.
    assert_eq!(in_flight.await.unwrap().unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn an_invalid_reload_is_rejected_and_the_running_table_stays() {
    let store = PolicyStore::new(Policies::from_yaml_str(TABLE).unwrap());
    let svc = ResilienceLayer::new(store.clone(), SelfClassified)
        .without_correlation()
        .layer(backend());
    let err = store
        .reload_from_str(&TABLE.replace("enabled: false", "enabled: maybe"))
        .unwrap_err();
    assert!(err.to_string().contains("enabled"), "{err}");
    assert!(store.last_error().is_some());
    assert_eq!(store.generation(), 0);
    assert!(matches!(
        svc.oneshot(request("legacy_export", "/x")).await,
        Err(Error::OperationDisabled(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn breaker_state_survives_a_change_of_other_thresholds_and_removed_operations_go() {
    let store = PolicyStore::new(Policies::from_yaml_str(TABLE).unwrap());
    let layer = ResilienceLayer::new(store.clone(), SelfClassified).without_correlation();
    let handle = layer.handle();
    let svc = layer.layer(backend());
    trip_gateway(&svc).await;
    // Spend the gateway's retry budget.
    let budget = handle.budget("payment_gateway").unwrap();
    while budget.try_withdraw() {}

    // Only the gateway's timeout changes: its breaker stays open, its budget is the same.
    let with_timeout = TABLE.replace(
        "    circuit_breaker: { consecutive_failures: 2, open_timeout: 30s }",
        "    circuit_breaker: { consecutive_failures: 2, open_timeout: 30s }\n    timeout: { total: 3s }",
    );
    store.reload_from_str(&with_timeout).unwrap();
    assert!(matches!(
        svc.clone().oneshot(request("payment_gateway", "/ok")).await,
        Err(Error::CircuitOpen(_))
    ));
    assert_eq!(
        handle.breaker("payment_gateway").unwrap().state(),
        CircuitState::Open
    );
    assert!(
        !handle.budget("payment_gateway").unwrap().try_withdraw(),
        "the budget was kept"
    );
    assert_eq!(handle.generation(), 1);

    // The operation is removed: its state is dropped, its calls run under the defaults.
    let without = with_timeout.replace("  payment_gateway:\n", "  other_gateway:\n");
    let report = store.reload_from_str(&without).unwrap();
    assert_eq!(report.removed, ["payment_gateway"]);
    assert!(handle.breaker("payment_gateway").is_none());
    assert_eq!(
        svc.oneshot(request("payment_gateway", "/ok"))
            .await
            .unwrap(),
        "ok"
    );
}

/// A 503 the classifier calls a failure reaches the fallback once the retries are spent,
/// with its classification, and is counted in `palisade_fallbacks_total`; the caller's
/// outcome (what `palisade_requests_total` records) is the fallback's answer.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn a_failed_response_goes_to_the_fallback_after_the_retries() {
    use http::{Response, StatusCode};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use palisade::classify::HttpStatus;
    use palisade::retry::CloneRequest;
    use palisade::stack::{ByName, FALLBACKS_TOTAL};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let pricing = service_fn(move |status: u16| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut r = Response::new("from pricing");
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, std::io::Error>(r)
        }
    });
    let policies = Policies::from_yaml_str(
        "policies:\n  pricing: { retry: { max_retries: 2 }, circuit_breaker: { consecutive_failures: 100 } }\n",
    )
    .unwrap();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = failures.clone();
    let svc = ResilienceLayer::from_policies(policies, HttpStatus::new())
        .without_correlation()
        .with_select(ByName::new("pricing"))
        .with_replay(CloneRequest)
        .with_fallback(fallback_fn(
            move |f: Failure<Response<&'static str>, std::io::Error>| {
                log.lock().unwrap().push((
                    f.code().map(str::to_owned),
                    f.response().map(|r| r.status().as_u16()),
                ));
                async move {
                    match f.response().map(|r| r.status()) {
                        // Served from a cache...
                        Some(StatusCode::SERVICE_UNAVAILABLE) => Ok(Response::new("cached")),
                        // ...or let through as it was.
                        _ => f.decline(),
                    }
                }
            },
        ))
        .layer(pricing);

    let answer = svc.clone().oneshot(503).await.unwrap();
    assert_eq!(*answer.body(), "cached");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "first attempt and two retries"
    );
    // Declined: the caller gets the original response.
    let declined = svc.clone().oneshot(404).await.unwrap();
    assert_eq!(declined.status(), 404);
    assert_eq!(*declined.body(), "from pricing");
    // A success never reaches the fallback.
    assert_eq!(svc.oneshot(200).await.unwrap().status(), 200);
    assert_eq!(
        *failures.lock().unwrap(),
        [
            (Some("http_503".to_owned()), Some(503)),
            (Some("http_404".to_owned()), Some(404)),
        ]
    );

    let mut fallbacks = Vec::new();
    let mut outcomes = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let label = |name: &str| {
            key.key()
                .labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        let DebugValue::Counter(n) = value else {
            continue;
        };
        if key.key().name() == FALLBACKS_TOTAL {
            fallbacks.push((label("operation"), label("code"), label("transience"), n));
        }
        if key.key().name() == "palisade_requests_total" {
            outcomes.push((label("operation"), label("outcome"), n));
        }
    }
    fallbacks.sort();
    outcomes.sort();
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        fallbacks,
        [
            (s("pricing"), s("http_404"), s("persistent"), 1),
            (s("pricing"), s("http_503"), s("transient"), 1),
        ]
    );
    // The cached answer is a success for the caller; the declined 404 stays a failure.
    assert_eq!(
        outcomes,
        [
            (s("pricing"), s("failure"), 1),
            (s("pricing"), s("success"), 2)
        ]
    );
}

/// A reload that changes only the breaker's, the budget's and the bulkhead's thresholds keeps
/// their state: the open breaker stays open (and is the same breaker), the spent budget stays
/// spent, the permits held by calls in flight stay held.
#[tokio::test(start_paused = true)]
async fn a_threshold_only_reload_reconfigures_breaker_budget_and_bulkhead_in_place() {
    const LIMITS: &str = r#"
defaults:
  retry: { max_retries: 0 }
policies:
  payment_gateway:
    circuit_breaker: { consecutive_failures: 2, failure_rate: 0.5, open_timeout: 30s }
    retry: { budget: { ratio: 0.1, min_per_second: 1 } }
  ledger_read:
    timeout: { total: 5s, attempt: 5s }
    bulkhead: { max_concurrent: 2, max_queue: 0 }
"#;
    let store = PolicyStore::new(Policies::from_yaml_str(LIMITS).unwrap());
    let layer = ResilienceLayer::new(store.clone(), SelfClassified).without_correlation();
    let handle = layer.handle();
    let svc = layer.layer(backend());

    trip_gateway(&svc).await;
    let breaker = handle.breaker("payment_gateway").unwrap();
    assert_eq!(breaker.state(), CircuitState::Open);
    let trips = breaker.metrics().trips;
    let budget = handle.budget("payment_gateway").unwrap();
    while budget.try_withdraw() {}

    // Two calls in flight hold both ledger permits.
    let first = tokio::spawn(svc.clone().oneshot(request("ledger_read", "/slow/1000")));
    let second = tokio::spawn(svc.clone().oneshot(request("ledger_read", "/slow/1000")));
    tokio::time::advance(Duration::from_millis(10)).await;
    let bulkhead = handle.bulkhead("ledger_read").unwrap();
    assert_eq!(bulkhead.in_flight(), 2);

    let report = store
        .reload_from_str(
            &LIMITS
                .replace(
                    "consecutive_failures: 2, failure_rate: 0.5",
                    "consecutive_failures: 3, failure_rate: 0.8",
                )
                .replace(
                    "ratio: 0.1, min_per_second: 1",
                    "ratio: 0.2, min_per_second: 2",
                )
                .replace(
                    "max_concurrent: 2, max_queue: 0",
                    "max_concurrent: 1, max_queue: 0",
                ),
        )
        .unwrap();
    assert_eq!(report.changed, ["ledger_read", "payment_gateway"]);

    // The breaker is still open, the same one, under its new thresholds.
    assert!(matches!(
        svc.clone().oneshot(request("payment_gateway", "/ok")).await,
        Err(Error::CircuitOpen(_))
    ));
    let after = handle.breaker("payment_gateway").unwrap();
    assert_eq!(after.state(), CircuitState::Open);
    assert_eq!(after.metrics().trips, trips);
    // The budget is the same one, with the retries it counted: a fresh budget under the new
    // limits would have its whole reserve.
    let kept = handle.budget("payment_gateway").unwrap();
    assert_eq!(kept.remaining(), budget.remaining());
    let fresh = palisade::retry::RetryBudget::new(
        &store
            .current()
            .for_operation("payment_gateway")
            .retry
            .budget,
    );
    assert!(
        kept.remaining() < fresh.remaining(),
        "kept {} fresh {}",
        kept.remaining(),
        fresh.remaining()
    );
    budget.try_withdraw();
    assert_eq!(kept.remaining(), budget.remaining(), "one budget, shared");

    // The bulkhead shrank to one permit, but the two calls in flight keep theirs...
    assert_eq!(handle.bulkhead("ledger_read").unwrap().in_flight(), 2);
    assert_eq!(handle.bulkhead("ledger_read").unwrap().max_concurrent(), 1);
    // ...and a new call is refused while more than the new limit are out.
    assert!(matches!(
        svc.clone().oneshot(request("ledger_read", "/ok")).await,
        Err(Error::BulkheadFull(_))
    ));
    assert_eq!(first.await.unwrap().unwrap(), "ok");
    assert_eq!(second.await.unwrap().unwrap(), "ok");
    // Both returned: one permit (the new limit) is free again.
    assert_eq!(handle.bulkhead("ledger_read").unwrap().in_flight(), 0);
    assert_eq!(
        svc.clone()
            .oneshot(request("ledger_read", "/ok"))
            .await
            .unwrap(),
        "ok"
    );
    let one_in = tokio::spawn(svc.clone().oneshot(request("ledger_read", "/slow/1000")));
    tokio::time::advance(Duration::from_millis(10)).await;
    assert!(matches!(
        svc.clone().oneshot(request("ledger_read", "/ok")).await,
        Err(Error::BulkheadFull(_))
    ));
    assert_eq!(one_in.await.unwrap().unwrap(), "ok");
}

/// One service value called again and again, as a client keeps it (no clone per call): it
/// calls its own copy of the operation's layers in place. That copy must still wait for a
/// full bulkhead, follow a change of operation, and give way to a reload, while a call
/// started before the reload keeps the policy it started with.
#[tokio::test(start_paused = true)]
async fn one_service_value_follows_operations_queues_and_reloads() {
    const QUEUED: &str = r#"
defaults:
  retry: { max_retries: 0 }
policies:
  ledger_read:
    timeout: { total: 5s, attempt: 5s }
    bulkhead: { max_concurrent: 1, max_queue: 1, max_wait: 10s }
  quote:
    timeout: { total: 5s, attempt: 5s }
"#;
    let store = PolicyStore::new(Policies::from_yaml_str(QUEUED).unwrap());
    let mut svc = ResilienceLayer::new(store.clone(), SelfClassified)
        .without_correlation()
        .layer(backend());

    // The first call takes the one permit; the second, on the same value, waits in the queue
    // inside its future; the third goes to another operation and is not held up.
    let first = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(request("ledger_read", "/slow/1000")),
    );
    tokio::time::advance(Duration::from_millis(10)).await;
    let started = tokio::time::Instant::now();
    let second = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(request("ledger_read", "/ok")),
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(request("quote", "/ok"))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(second.await.unwrap().unwrap(), "ok");
    // It got the permit only when the first call gave it back.
    assert!(started.elapsed() >= Duration::from_millis(990));
    assert!(first.is_finished());
    assert_eq!(first.await.unwrap().unwrap(), "ok");

    // A quote call in flight under the 5 s timeout, then a reload to 1 s.
    let in_flight = tokio::spawn(
        svc.ready()
            .await
            .unwrap()
            .call(request("quote", "/slow/2000")),
    );
    tokio::time::advance(Duration::from_millis(10)).await;
    store
        .reload_from_str(&QUEUED.replace(
            "quote:\n    timeout: { total: 5s, attempt: 5s }",
            "quote:\n    timeout: { total: 1s, attempt: 1s }",
        ))
        .unwrap();
    let started = tokio::time::Instant::now();
    match svc
        .ready()
        .await
        .unwrap()
        .call(request("quote", "/slow/2000"))
        .await
    {
        Err(Error::Timeout(t)) => assert_eq!(t.limit, Duration::from_secs(1)),
        other => panic!("expected the reloaded 1 s timeout, got {other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(in_flight.await.unwrap().unwrap(), "ok");
}

/// A stack call is listed once in the in-flight registry (by its total timeout), for as long
/// as the whole call runs, retries and backoffs included; its attempt timeout still names
/// the operation when it fires.
#[tokio::test(start_paused = true)]
async fn a_call_is_listed_in_flight_once_and_an_attempt_timeout_names_its_operation() {
    use palisade::timeout::InFlight;
    let policies = Policies::from_yaml_str(
        "policies:\n  listed_once:\n    timeout: { total: 10s, attempt: 1s }\n    retry: { max_retries: 1, base_delay: 100ms, jitter: none }\n",
    )
    .unwrap();
    let listed = || {
        InFlight::global()
            .snapshot()
            .into_iter()
            .filter(|call| &*call.operation == "listed_once")
            .collect::<Vec<_>>()
    };
    let svc = ResilienceLayer::from_policies(policies, SelfClassified)
        .without_correlation()
        .layer(backend());
    let call = tokio::spawn(svc.oneshot(request("listed_once", "/slow/5000")));
    tokio::task::yield_now().await; // the call starts
    tokio::time::advance(Duration::from_millis(500)).await;
    let first = listed();
    assert_eq!(first.len(), 1, "{first:?}");
    // The first attempt times out at 1 s; the second starts after the 100 ms backoff, and
    // the call is still listed once, as the same call (running longer). (Elapsed times are
    // not compared exactly: the global registry's time base may come from another test's
    // clock.)
    tokio::time::advance(Duration::from_millis(1_200)).await;
    let second = listed();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].elapsed > first[0].elapsed, "{first:?} {second:?}");
    tokio::time::advance(Duration::from_millis(1_000)).await;
    let error = call.await.unwrap().unwrap_err();
    match error.last_attempt() {
        Error::Timeout(t) => {
            assert_eq!(t.kind, TimeoutKind::Attempt);
            assert_eq!(&*t.operation, "listed_once");
        }
        other => panic!("expected an attempt timeout, got {other:?}"),
    }
    assert!(listed().is_empty());
}

/// A service value selecting by name selects once per table: a reload (here the kill switch
/// turned on, then off, then the operation removed) still applies to its next call.
#[tokio::test(start_paused = true)]
async fn a_value_selecting_by_name_follows_reloads() {
    use palisade::stack::ByName;
    let store = PolicyStore::new(Policies::from_yaml_str("policies:\n  pinned: {}\n").unwrap());
    let mut svc = ResilienceLayer::new(store.clone(), SelfClassified)
        .without_correlation()
        .with_select(ByName::new("pinned"))
        .layer(backend());
    // The same value each time (not a clone per call), so its own copy of the layers is reused.
    async fn call<S: Service<http::Request<()>>>(svc: &mut S) -> Result<S::Response, S::Error>
    where
        S::Error: std::fmt::Debug,
    {
        let ready = svc.ready().await.unwrap();
        ready.call(http::Request::get("/x").body(()).unwrap()).await
    }
    for _ in 0..2 {
        assert_eq!(call(&mut svc).await.unwrap(), "ok");
    }
    store
        .reload_from_str("policies:\n  pinned: { enabled: false }\n")
        .unwrap();
    match call(&mut svc).await {
        Err(Error::OperationDisabled(off)) => assert_eq!(&*off.operation, "pinned"),
        other => panic!("expected the kill switch, got {other:?}"),
    }
    store.reload_from_str("policies:\n  pinned: {}\n").unwrap();
    assert_eq!(call(&mut svc).await.unwrap(), "ok");
    // Removed: the name now selects the defaults.
    store
        .reload_from_str("defaults: { enabled: false }\npolicies:\n  other: {}\n")
        .unwrap();
    assert!(matches!(
        call(&mut svc).await,
        Err(Error::OperationDisabled(_))
    ));
}

/// The stack's future gives its bulkhead permit back on every path: a call that ends, a call
/// dropped while in flight, and a call whose service was not ready when it was made (the
/// permit taken for it at once goes back, and the bulkhead's own one is held while it waits).
#[tokio::test(start_paused = true)]
async fn the_permit_comes_back_from_dropped_calls_and_calls_that_waited_for_the_service() {
    const PERMITS: &str = r#"
defaults:
  retry: { max_retries: 0 }
policies:
  ledger_read:
    timeout: { total: 5s, attempt: 5s }
    bulkhead: { max_concurrent: 2, max_queue: 0 }
"#;
    // The service itself takes one call at a time: a second call finds it not ready.
    let inner = tower::limit::ConcurrencyLimitLayer::new(1).layer(backend());
    let svc =
        ResilienceLayer::from_policies(Policies::from_yaml_str(PERMITS).unwrap(), SelfClassified)
            .without_correlation()
            .layer(inner);
    let bulkhead = svc.handle().bulkhead("ledger_read").unwrap();
    assert_eq!(bulkhead.available_permits(), 2);

    // A call in flight holds one permit; dropped, it gives it back.
    let mut dropped = Box::pin(svc.clone().call(request("ledger_read", "/slow/1000")));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(dropped.as_mut().poll(&mut cx).is_pending());
    assert_eq!(bulkhead.in_flight(), 1);
    drop(dropped);
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(bulkhead.available_permits(), 2);

    // One call holds the service; the next finds it not ready and waits, holding the second
    // permit, so a third is rejected (no queue).
    let first = tokio::spawn(svc.clone().oneshot(request("ledger_read", "/slow/1000")));
    tokio::time::advance(Duration::from_millis(10)).await;
    let waiting = tokio::spawn(svc.clone().oneshot(request("ledger_read", "/ok")));
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(bulkhead.in_flight(), 2);
    let third = svc.clone().oneshot(request("ledger_read", "/ok")).await;
    assert!(matches!(third, Err(Error::BulkheadFull(_))), "{third:?}");
    assert_eq!(first.await.unwrap().unwrap(), "ok");
    assert_eq!(waiting.await.unwrap().unwrap(), "ok");

    // Every permit is back: two calls at once are both let in.
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(bulkhead.available_permits(), 2);
    let (a, b) = tokio::join!(
        svc.clone().oneshot(request("ledger_read", "/slow/10")),
        svc.clone().oneshot(request("ledger_read", "/slow/10")),
    );
    assert_eq!((a.unwrap(), b.unwrap()), ("ok", "ok"));
}
