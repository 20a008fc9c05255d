//! The wallet ledger example's transfers, over HTTP on 127.0.0.1 against the gateway
//! simulator: balances stay balanced under concurrent transfers with injected failures,
//! idempotent replays post once, compensation restores the debit.
#![cfg(feature = "http")]

#[path = "../examples/ledger/app/mod.rs"]
#[allow(dead_code)]
mod app;
#[allow(dead_code)]
mod ledger_support;

use std::collections::HashMap;
use std::time::Duration;

use app::db::DbConfig;
use app::simulator::SimulatorConfig;
use ledger_support::{TempDb, start};

fn faulty(failure_rate: f64, seed: u64) -> SimulatorConfig {
    SimulatorConfig {
        failure_rate,
        latency: Duration::ZERO,
        seed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_with_gateway_failures_keep_the_books_balanced() {
    let file = TempDb::new("ledger-concurrent");
    let h = start(faulty(0.35, 11), file.config(4)).await;
    let accounts = ["a0", "a1", "a2", "a3", "a4", "a5"];
    for id in accounts {
        h.open(id, 50_000).await;
    }
    let supply: i64 = 6 * 50_000;

    let mut tasks = Vec::new();
    for i in 0..120usize {
        let from = accounts[i % 6];
        let to = accounts[(i * 7 + 1) % 6];
        let to = if to == from {
            accounts[(i + 1) % 6]
        } else {
            to
        };
        // Some amounts end in 13 (declined), some exceed what is left (insufficient funds).
        let amount = [1_000, 2_513, 700, 30_000, 150][i % 5] as i64;
        let (http, url) = (h.http.clone(), h.server.url());
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(format!("{url}/v1/transfers"))
                .header("idempotency-key", format!("load-{i}"))
                .json(&serde_json::json!({ "from": from, "to": to, "amount": amount }))
                .send()
                .await
                .expect("the ledger answers");
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.expect("json body");
            (status, body)
        }));
    }
    let mut states: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (status, body) = task.await.expect("task finishes");
        let state = body["transfer"]["state"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        match state.as_str() {
            "COMPLETED" => assert_eq!(status, 201, "{body}"),
            "ROLLED_BACK" => assert!(status == 502 || status == 402, "{status} {body}"),
            // Insufficient funds, or (should a run of injected faults open the payment
            // breaker) refused before the debit.
            "FAILED" => assert!(
                status == 422 || (status == 503 && body["error"]["code"] == "circuit_open"),
                "only insufficient funds or an open breaker fails unposted: {status} {body}"
            ),
            other => panic!("transfer ended in {other}: {status} {body}"),
        }
        *states.entry(state).or_default() += 1;
    }
    assert!(
        states.get("COMPLETED").copied().unwrap_or(0) > 20,
        "{states:?}"
    );
    assert!(
        states.get("ROLLED_BACK").copied().unwrap_or(0) > 0,
        "{states:?}"
    );

    let check = h.ledger.check().await.expect("check runs");
    assert!(check.balanced, "{check:?}");
    assert_eq!(check.total_balance, 0);
    assert_eq!(check.suspense_balance, 0, "no money left in flight");
    assert_eq!(check.money_supply, supply, "transfers create no money");
    let mut sum = 0;
    for id in accounts {
        let b = h.balance(id).await;
        assert!(b >= 0, "{id} went negative");
        sum += b;
    }
    assert_eq!(sum, supply);

    // Every completed transfer settled exactly once at the gateway, and nothing else did.
    let report = h.ledger.reconcile().await.expect("reconciliation runs");
    assert_eq!(report.discrepancies, vec![], "ledger and gateway agree");
    assert_eq!(
        h.sim.payments().len(),
        states.get("COMPLETED").copied().unwrap_or(0)
    );
    assert!(h.sim.stats().injected_failures > 0, "faults were injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_idempotency_key_returns_the_original_answer_and_posts_once() {
    let h = start(faulty(0.0, 1), DbConfig::memory()).await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;

    let first = h.transfer("alice", "bob", 2_500, Some("key-1")).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(!first.replayed);
    let again = h.transfer("alice", "bob", 2_500, Some("key-1")).await;
    assert_eq!(again.status, 201);
    assert!(again.replayed);
    assert_eq!(again.body, first.body, "the stored answer, verbatim");

    let id = first.body["transfer"]["id"].as_str().unwrap().to_owned();
    assert_eq!(h.postings(&format!("{id}:debit")).await, 1);
    assert_eq!(h.postings(&format!("{id}:credit")).await, 1);
    assert_eq!(h.balance("alice").await, 7_500);
    assert_eq!(h.balance("bob").await, 2_500);
    assert_eq!(h.sim.payments().len(), 1, "one payment at the gateway");
    assert_eq!(h.ledger.counters.replays(), 1);

    // The same key with another body is refused, and moves nothing.
    let conflict = h.transfer("alice", "bob", 100, Some("key-1")).await;
    assert_eq!(conflict.status, 422);
    assert_eq!(conflict.body["error"]["code"], "idempotency_conflict");
    assert_eq!(h.balance("alice").await, 7_500);

    // A failed transfer's answer is replayed too, without a second attempt.
    let declined = h.transfer("alice", "bob", 113, Some("key-2")).await;
    assert_eq!(declined.status, 402);
    let calls = h.sim.stats().calls;
    let replay = h.transfer("alice", "bob", 113, Some("key-2")).await;
    assert!(replay.replayed);
    assert_eq!(replay.body, declined.body);
    assert_eq!(
        h.sim.stats().calls,
        calls,
        "a replay never reaches the gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_post_once() {
    let file = TempDb::new("ledger-same-key");
    let h = start(
        SimulatorConfig {
            failure_rate: 0.0,
            latency: Duration::from_millis(30),
            seed: 3,
        },
        file.config(4),
    )
    .await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url) = (h.http.clone(), h.server.url());
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(format!("{url}/v1/transfers"))
                .header("idempotency-key", "same")
                .json(&serde_json::json!({ "from": "alice", "to": "bob", "amount": 1_000 }))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    // The first runs; the others are replays (201) or told it is in progress (409).
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201));
    assert_eq!(h.balance("alice").await, 9_000, "debited once");
    assert_eq!(h.balance("bob").await, 1_000, "credited once");
    assert_eq!(h.sim.payments().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_failure_after_the_debit_is_compensated() {
    let h = start(faulty(0.0, 5), DbConfig::memory()).await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;

    // A persistent failure: declined, not retried, compensated.
    let declined = h.transfer("alice", "bob", 1_013, None).await;
    assert_eq!(declined.status, 402, "{}", declined.body);
    assert_eq!(declined.body["error"]["code"], "gateway_card_declined");
    assert_eq!(
        declined.body["error"]["user_message"],
        "The card was declined"
    );
    assert_eq!(
        declined.body["transfer"]["history"],
        serde_json::json!([
            "CREATED",
            "VALIDATED",
            "EXECUTING",
            "FAILED",
            "ROLLING_BACK",
            "ROLLED_BACK"
        ])
    );
    let id = declined.body["transfer"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        h.sim.request_ids(&id).len(),
        1,
        "business failures are not retried"
    );
    assert_eq!(h.postings(&format!("{id}:debit")).await, 1);
    assert_eq!(h.postings(&format!("{id}:compensation")).await, 1);
    assert_eq!(h.postings(&format!("{id}:credit")).await, 0);
    assert_eq!(h.balance("alice").await, 10_000, "the debit was given back");
    assert_eq!(h.balance("bob").await, 0);

    // A transient outage: retried up to the policy's limit, then compensated.
    h.sim.set_outage(true);
    let outage = h.transfer("alice", "bob", 500, None).await;
    h.sim.set_outage(false);
    assert_eq!(outage.status, 502, "{}", outage.body);
    assert_eq!(outage.body["transfer"]["state"], "ROLLED_BACK");
    let retries = h.ledger.gateway.policy().retry.max_retries;
    let outage_id = outage.body["transfer"]["id"].as_str().unwrap();
    assert_eq!(
        h.sim.request_ids(outage_id).len(),
        retries as usize + 1,
        "palisade's retry sent the payment 1 + max_retries times"
    );
    assert_eq!(h.balance("alice").await, 10_000);

    let check = h.ledger.check().await.unwrap();
    assert!(check.balanced && check.suspense_balance == 0, "{check:?}");
    assert!(h.sim.payments().is_empty(), "nothing settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_failures_post_nothing_and_never_reach_the_gateway() {
    let h = start(faulty(0.0, 5), DbConfig::memory()).await;
    h.open("alice", 1_000).await;
    h.open("bob", 0).await;

    let broke = h.transfer("bob", "alice", 500, None).await;
    assert_eq!(broke.status, 422);
    let e = &broke.body["error"];
    assert_eq!(e["code"], "insufficient_funds");
    assert_eq!(
        (&e["transience"], &e["category"], &e["severity"]),
        (
            &serde_json::json!("persistent"),
            &serde_json::json!("business"),
            &serde_json::json!("low")
        )
    );
    assert_eq!(
        (e["needed"].as_i64(), e["available"].as_i64()),
        (Some(500), Some(0))
    );
    assert_eq!(broke.body["transfer"]["state"], "FAILED");

    let missing = h.transfer("alice", "nobody", 500, None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "account_not_found");

    let invalid = h.transfer("alice", "bob", -5, None).await;
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.body["error"]["code"], "invalid_entry");

    let garbage = h
        .post("/v1/transfers", serde_json::json!({ "from": 1 }), None)
        .await;
    assert_eq!(garbage.status, 400);

    assert_eq!(h.sim.stats().calls, 0, "the gateway was never called");
    let check = h.ledger.check().await.unwrap();
    assert_eq!(check.transactions, 1, "only alice's opening deposit");
    assert_eq!(h.get("/v1/accounts/nobody").await.status, 404);
    assert_eq!(h.get("/health/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_is_a_transient_transport_failure_and_is_compensated() {
    // A port nobody listens on: the connection is refused.
    let closed = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let ledger = app::Ledger::open(app::LedgerConfig {
        db: DbConfig::memory(),
        gateway_url: url,
        policies: ledger_support::policies(),
    })
    .unwrap();
    ledger
        .create_account(Some("alice".into()), None, 1_000)
        .await
        .unwrap();
    ledger
        .create_account(Some("bob".into()), None, 0)
        .await
        .unwrap();
    let reply = ledger
        .transfer(
            app::transfers::TransferRequest {
                from: "alice".into(),
                to: "bob".into(),
                amount: 100,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], "io_connection_refused");
    assert_eq!(reply.body["error"]["transience"], "transient");
    assert_eq!(reply.body["transfer"]["state"], "ROLLED_BACK");
    let retries = ledger.gateway.policy().retry.max_retries;
    assert_eq!(reply.body["error"]["attempts"], retries + 1);
    assert_eq!(ledger.account("alice").await.unwrap().balance, 1_000);
    let stats = ledger.gateway.stats();
    // The payment, then the look-up asking whether it settled anyway: each failed for good
    // after its retries.
    assert_eq!(
        stats.failures_by_code.get("io_connection_refused").copied(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_transfer_does_not_strand_its_money() {
    let h = start(
        SimulatorConfig {
            failure_rate: 0.0,
            latency: Duration::from_millis(300),
            seed: 9,
        },
        DbConfig::memory(),
    )
    .await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;
    // The client gives up while the ledger waits for the gateway (after the debit).
    let impatient = h
        .http
        .post(format!("{}/v1/transfers", h.server.url()))
        .header("idempotency-key", "hang-up")
        .timeout(Duration::from_millis(50))
        .json(&serde_json::json!({ "from": "alice", "to": "bob", "amount": 700 }))
        .send()
        .await;
    assert!(impatient.is_err(), "the client timed out");

    // The transfer goes on without it; retrying with the key eventually replays the answer
    // (409 while it is still running). Polling only waits; it asserts no timing.
    let mut last = None;
    for _ in 0..400 {
        let r = h.transfer("alice", "bob", 700, Some("hang-up")).await;
        if r.status != 409 {
            last = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = last.expect("the transfer finished");
    assert_eq!((r.status, r.replayed), (201, true), "{}", r.body);
    assert_eq!(r.body["transfer"]["state"], "COMPLETED");
    assert_eq!(h.balance("alice").await, 9_300);
    assert_eq!(h.balance("bob").await, 700);
    assert_eq!(h.ledger.check().await.unwrap().suspense_balance, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_gateway_refuses_transfers_before_any_debit() {
    let sim = app::simulator::Simulator::start(faulty(0.0, 1))
        .await
        .unwrap();
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ledger/policies.yaml");
    let policies = palisade::policy::Policies::loader()
        .with_env_vars([("PALISADE__POLICIES__PAYMENT_GATEWAY__ENABLED", "false")])
        .load_path(path)
        .unwrap();
    let ledger = app::Ledger::open(app::LedgerConfig {
        db: DbConfig::memory(),
        gateway_url: sim.url(),
        policies: std::sync::Arc::new(policies),
    })
    .unwrap();
    ledger
        .create_account(Some("alice".into()), None, 1_000)
        .await
        .unwrap();
    ledger
        .create_account(Some("bob".into()), None, 0)
        .await
        .unwrap();
    let request = || app::transfers::TransferRequest {
        from: "alice".into(),
        to: "bob".into(),
        amount: 100,
    };
    let err = ledger
        .transfer(request(), Some("k".into()))
        .await
        .expect_err("the gateway is off");
    use palisade::classify::Classified;
    assert_eq!(err.classification().code, "operation_disabled");
    assert_eq!(err.status().as_u16(), 503);
    assert_eq!(
        ledger.account("alice").await.unwrap().balance,
        1_000,
        "nothing debited"
    );
    assert_eq!(sim.stats().calls, 0, "the gateway was not called");
    // The key was freed: the same request runs again (and is refused again), not replayed.
    let again = ledger.transfer(request(), Some("k".into())).await;
    assert!(matches!(again, Err(app::error::LedgerError::Disabled(_))));
    let check = ledger.check().await.unwrap();
    assert_eq!(check.transactions, 1, "alice's opening deposit only");
    assert_eq!(
        ledger
            .counters
            .transitions(app::transfers::TransferState::Failed),
        2
    );
}
