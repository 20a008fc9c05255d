//! The wallet ledger example on palisade's stack, over HTTP on 127.0.0.1: the correlation ID
//! of a request is echoed, carried by every JSON log line of the transfer and reaches the
//! gateway; the payment breaker opens under gateway failures, a transfer is then refused
//! before any debit, and the breaker closes again once the gateway is back; `/metrics` and
//! `/health/ready` show it; the server-side stack answers a switched-off route with
//! problem+json.
#![cfg(feature = "http")]

#[path = "../examples/ledger/app/mod.rs"]
#[allow(dead_code)]
mod app;
#[allow(dead_code)]
mod ledger_support;

use std::time::Duration;

use app::db::DbConfig;
use app::gateway::PAY;
use app::simulator::SimulatorConfig;
use ledger_support::{policies_with, start, start_with};
use palisade::circuit_breaker::CircuitState;
use serde_json::{Value, json};

fn healthy_gateway() -> SimulatorConfig {
    SimulatorConfig {
        failure_rate: 0.0,
        latency: Duration::ZERO,
        seed: 3,
    }
}

/// `/metrics` as text. The layers record as things happen (a breaker's transition is in its
/// series when the call that caused it returns), so one fetch sees them.
async fn fetch_metrics(h: &ledger_support::Harness) -> String {
    h.http
        .get(format!("{}/metrics", h.server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[path = "support/captured_logs.rs"]
mod captured_logs;
use captured_logs::Captured;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_correlation_id_is_echoed_logged_on_every_line_and_reaches_the_gateway() {
    // The example's JSON log format, as the process-wide subscriber (a thread's default would
    // miss the lines of the transfer's own task on another worker). The other tests of this
    // file log into it too; lines are picked by transfer id below.
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_span_list(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test binary");

    let h = start(healthy_gateway(), DbConfig::memory()).await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;
    let res = h
        .http
        .post(format!("{}/v1/transfers", h.server.url()))
        .header("x-request-id", "trace-7f3a")
        .json(&json!({ "from": "alice", "to": "bob", "amount": 1_500 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-request-id"], "trace-7f3a", "echoed");
    let body: Value = res.json().await.unwrap();
    let id = body["transfer"]["id"].as_str().unwrap();

    // The gateway saw it on the payment call (PropagateCorrelationLayer on the client).
    assert_eq!(h.sim.request_ids(id), vec!["trace-7f3a".to_owned()]);

    // Every line logged inside the transfer (on its own task) carries the request's ID.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let in_transfer: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["transfer_id"] == id))
        })
        .collect();
    assert!(
        in_transfer.len() >= 4,
        "CREATED, VALIDATED, EXECUTING, COMPLETED are logged: {text}"
    );
    for line in &in_transfer {
        let spans = line["spans"].as_array().unwrap();
        assert!(
            spans.iter().any(|s| s["correlation_id"] == "trace-7f3a"),
            "a transfer line without the correlation ID: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_payment_breaker_refuses_transfers_before_the_debit_then_recovers() {
    let policies = policies_with(&[
        (
            "PALISADE__POLICIES__PAYMENT_GATEWAY__CIRCUIT_BREAKER__CONSECUTIVE_FAILURES",
            "4",
        ),
        (
            "PALISADE__POLICIES__PAYMENT_GATEWAY__CIRCUIT_BREAKER__OPEN_TIMEOUT",
            "300ms",
        ),
    ]);
    let h = start_with(healthy_gateway(), DbConfig::memory(), policies).await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;

    // An outage: the first transfer's four attempts fail, which opens the breaker; the
    // transfer is compensated.
    h.sim.set_outage(true);
    let first = h.transfer("alice", "bob", 500, None).await;
    assert_eq!(first.status, 502, "{}", first.body);
    assert_eq!(first.body["transfer"]["state"], "ROLLED_BACK");
    let breaker = h.ledger.gateway.breaker(PAY).expect("the host's breaker");
    assert_eq!(breaker.state(), CircuitState::Open);

    // The next transfer fails fast: no gateway call, no debit, a Retry-After, the key freed.
    let calls = h.sim.stats().calls;
    let postings = h.ledger.check().await.unwrap().transactions;
    let refused = h.transfer("alice", "bob", 700, Some("k-open")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "circuit_open");
    assert!(refused.body["error"]["retry_after_ms"].as_u64().is_some());
    assert_eq!(h.sim.stats().calls, calls, "the gateway was not called");
    assert_eq!(
        h.ledger.check().await.unwrap().transactions,
        postings,
        "nothing was posted: no debit to give back"
    );
    assert_eq!(h.balance("alice").await, 10_000);

    // Degraded, still ready; /metrics shows the transition and the transfer operation.
    let ready = h.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "degraded", "{}", ready.body);
    assert_eq!(
        ready.body["components"]["breaker:payment_gateway"]["status"],
        "degraded"
    );
    // This test's gateway host has its own breaker, whose series the breaker records itself,
    // once per transition.
    let host = h.sim.url().trim_start_matches("http://").to_owned();
    let breaker_series = |metrics: &str, name: &str, labels: &str| -> Option<f64> {
        let prefix = format!("{name}{{breaker=\"payment_gateway/{host}\",{labels}}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.parse().unwrap())
    };
    let transitions = "palisade_circuit_breaker_transitions_total";
    let state = "palisade_circuit_breaker_state";
    let metrics = fetch_metrics(&h).await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("palisade_requests_total{operation=\"transfer\",outcome=\"failure\"}")),
        "{metrics}"
    );
    let opened = breaker_series(&metrics, transitions, "from=\"closed\",to=\"open\"");
    assert_eq!(opened, Some(1.0), "{metrics}");
    assert_eq!(breaker_series(&metrics, state, "state=\"open\""), Some(1.0));
    assert_eq!(
        breaker_series(&metrics, state, "state=\"closed\""),
        Some(0.0)
    );
    assert!(metrics.contains("ledger_transfer_transitions_total{state=\"ROLLED_BACK\"} 1"));

    // The gateway comes back; once the open period is over the breaker lets probes through
    // and closes after `success_threshold` (2) successes. The refused key is reusable.
    h.sim.set_outage(false);
    for _ in 0..200 {
        if h.ledger.gateway.payments_refused().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        h.ledger.gateway.payments_refused().is_none(),
        "the breaker let a probe through"
    );
    let retried = h.transfer("alice", "bob", 700, Some("k-open")).await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert!(
        !retried.replayed,
        "the refusal was not stored against the key"
    );
    let second = h.transfer("alice", "bob", 300, None).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(breaker.state(), CircuitState::Closed);
    let id = retried.body["transfer"]["id"].as_str().unwrap();
    assert_eq!(h.postings(&format!("{id}:debit")).await, 1, "debited once");
    assert_eq!(h.balance("alice").await, 10_000 - 700 - 300);
    let check = h.ledger.check().await.unwrap();
    assert!(check.balanced && check.suspense_balance == 0, "{check:?}");
    assert_eq!(h.get("/health/ready").await.body["status"], "healthy");
    let metrics = fetch_metrics(&h).await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("palisade_requests_total{operation=\"transfer\",outcome=\"success\"}")),
        "{metrics}"
    );
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        let labels = format!("from=\"{from}\",to=\"{to}\"");
        assert_eq!(
            breaker_series(&metrics, transitions, &labels),
            Some(1.0),
            "{from} -> {to}: {metrics}"
        );
    }
    assert_eq!(
        breaker_series(&metrics, state, "state=\"closed\""),
        Some(1.0)
    );
    assert!(
        metrics.contains(
            "palisade_request_duration_seconds_bucket{operation=\"transfer\",le=\"0.005\"}"
        ),
        "explicit histogram buckets: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_route_is_answered_by_the_server_stack_with_problem_json() {
    let policies = policies_with(&[
        ("PALISADE__POLICIES__TRANSFER__ENABLED", "false"),
        ("PALISADE__POLICIES__BATCH__ENABLED", "false"),
    ]);
    let h = start_with(healthy_gateway(), DbConfig::memory(), policies).await;
    h.open("alice", 1_000).await;
    h.open("bob", 0).await;

    let res = h
        .http
        .post(format!("{}/v1/transfers", h.server.url()))
        .header("x-request-id", "off-1")
        .json(&json!({ "from": "alice", "to": "bob", "amount": 100 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["x-request-id"], "off-1");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "operation_disabled", "{problem}");
    assert_eq!(problem["operation"], "transfer");
    assert_eq!(
        problem["correlation_id"], "off-1",
        "the body names the request's ID: {problem}"
    );

    // Without an incoming ID the stack makes one: the body and the echoed header agree.
    let res = h
        .http
        .post(format!("{}/v1/transfers", h.server.url()))
        .json(&json!({ "from": "alice", "to": "bob", "amount": 100 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(echoed.len(), 36, "a generated UUID: {echoed}");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["correlation_id"], echoed.as_str(), "{problem}");

    // Each request counted once, as the refusal the stack made. `batch` is switched off too:
    // no other test of this binary uses it, so its series in the process-wide recorder are
    // this test's alone (an outer metrics layer would add an `http_503` series and a second
    // count per request).
    for id in ["batch-off-1", "batch-off-2"] {
        let res = h
            .http
            .post(format!("{}/v1/batches", h.server.url()))
            .header("x-request-id", id)
            .json(&json!({ "items": [{ "from": "alice", "to": "bob", "amount": 1 }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["correlation_id"], id, "{problem}");
    }
    let metrics = fetch_metrics(&h).await;
    let batch: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("palisade_")
                && !l.contains("_bucket{")
                && l.contains("operation=\"batch\"")
        })
        .collect();
    let requests: Vec<&&str> = batch
        .iter()
        .filter(|l| l.starts_with("palisade_requests_total"))
        .collect();
    assert_eq!(
        requests,
        [&"palisade_requests_total{operation=\"batch\",outcome=\"failure\"} 2"],
        "{metrics}"
    );
    let errors: Vec<&&str> = batch
        .iter()
        .filter(|l| l.starts_with("palisade_errors_total"))
        .collect();
    assert_eq!(errors.len(), 1, "one series: {errors:?}");
    assert!(
        errors[0].contains("code=\"operation_disabled\"") && errors[0].ends_with("} 2"),
        "{errors:?}"
    );

    // Only that operation: accounts still answer, and nothing reached the gateway.
    assert_eq!(h.get("/v1/accounts/alice").await.status, 200);
    assert_eq!(h.sim.stats().calls, 0);
    assert_eq!(h.balance("alice").await, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_the_stack_refuses_unsent_is_compensated_without_a_look_up() {
    // One payment at a time and no queue: a second payment while the first is in flight is
    // refused by the gateway stack's bulkhead before anything is sent, after its transfer
    // passed the breaker check and was debited. (The same path serves a breaker that opens
    // between the check and the call.)
    let policies = policies_with(&[
        (
            "PALISADE__POLICIES__PAYMENT_GATEWAY__BULKHEAD__MAX_CONCURRENT",
            "1",
        ),
        (
            "PALISADE__POLICIES__PAYMENT_GATEWAY__BULKHEAD__MAX_QUEUE",
            "0",
        ),
    ]);
    let slow = SimulatorConfig {
        failure_rate: 0.0,
        latency: Duration::from_secs(1),
        seed: 3,
    };
    let h = start_with(slow, DbConfig::memory(), policies).await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;

    let (http, url) = (h.http.clone(), h.server.url());
    let first = tokio::spawn(async move {
        http.post(format!("{url}/v1/transfers"))
            .json(&json!({ "from": "alice", "to": "bob", "amount": 1_000 }))
            .send()
            .await
            .unwrap()
            .status()
    });
    // Until the first payment is at the gateway (it then waits 0.5 s to 1.5 s there).
    for _ in 0..500 {
        if h.sim.stats().calls == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        h.sim.stats().calls,
        1,
        "the first payment reached the gateway"
    );
    let calls_before = h.ledger.gateway.stats().calls;

    let second = h.transfer("alice", "bob", 700, None).await;
    assert_eq!(second.status, 502, "{}", second.body);
    assert_eq!(second.body["error"]["code"], "bulkhead_full");
    assert_eq!(second.body["error"]["refused_by"], "palisade");
    assert_eq!(second.body["transfer"]["state"], "ROLLED_BACK");
    let id = second.body["transfer"]["id"].as_str().unwrap();
    assert!(h.sim.request_ids(id).is_empty(), "never sent");
    assert_eq!(
        h.ledger.gateway.stats().calls - calls_before,
        1,
        "the refused payment only: no look-up followed it"
    );
    assert_eq!(h.ledger.gateway.stats().refused, 1);
    assert_eq!(h.postings(&format!("{id}:debit")).await, 1);
    assert_eq!(h.postings(&format!("{id}:compensation")).await, 1);

    assert_eq!(first.await.unwrap(), 201);
    assert_eq!(h.balance("alice").await, 9_000);
    let check = h.ledger.check().await.unwrap();
    assert!(check.balanced && check.suspense_balance == 0, "{check:?}");
}
