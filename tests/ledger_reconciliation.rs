//! The wallet ledger example's reconciliation: it finds planted discrepancies of every kind,
//! stores and counts them, and never changes money. The periodic schedule is tested on
//! tokio's paused clock.
#![cfg(feature = "http")]

#[path = "../examples/ledger/app/mod.rs"]
#[allow(dead_code)]
mod app;
#[allow(dead_code)]
mod ledger_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use app::db::DbConfig;
use app::simulator::{GatewayPayment, SimulatorConfig};
use ledger_support::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_finds_planted_discrepancies_and_moves_no_money() {
    let h = start(SimulatorConfig::default(), DbConfig::memory()).await;
    h.open("alice", 50_000).await;
    h.open("bob", 0).await;
    let mut completed = Vec::new();
    for amount in [1_000, 2_000, 3_000] {
        let r = h.transfer("alice", "bob", amount, None).await;
        assert_eq!(r.status, 201);
        completed.push(r.body["transfer"]["id"].as_str().unwrap().to_owned());
    }
    let declined = h.transfer("alice", "bob", 413, None).await;
    assert_eq!(declined.body["transfer"]["state"], "ROLLED_BACK");
    let rolled_back = declined.body["transfer"]["id"].as_str().unwrap().to_owned();

    // A clean run first.
    let clean = h
        .post("/v1/reconciliation", serde_json::json!({}), None)
        .await;
    assert_eq!(clean.status, 200, "{}", clean.body);
    assert_eq!(clean.body["discrepancies"], serde_json::json!([]));
    assert_eq!(clean.body["ledger_checked"], 4);
    assert_eq!(clean.body["gateway_checked"], 3);

    // Plant one discrepancy of each kind at the gateway.
    assert!(h.sim.alter_amount(&completed[0], 999));
    assert!(h.sim.forget(&completed[1]));
    let payment = |reference: &str, amount| GatewayPayment {
        payment_id: format!("pay_{reference}"),
        reference: reference.into(),
        amount,
        from: "alice".into(),
        to: "bob".into(),
        status: "settled".into(),
    };
    h.sim.plant(payment("tr_from_nowhere", 4_200));
    h.sim.plant(payment(&rolled_back, 413));

    let before = h.ledger.check().await.unwrap();
    let balances = (h.balance("alice").await, h.balance("bob").await);
    let report = h.ledger.reconcile().await.unwrap();
    let mut found: Vec<(String, &str, Option<i64>, Option<i64>)> = report
        .discrepancies
        .iter()
        .map(|d| {
            (
                d.reference.clone(),
                d.kind,
                d.ledger_amount,
                d.gateway_amount,
            )
        })
        .collect();
    found.sort();
    let mut expected = vec![
        (
            completed[0].clone(),
            "amount_mismatch",
            Some(1_000),
            Some(999),
        ),
        (
            completed[1].clone(),
            "missing_at_gateway",
            Some(2_000),
            None,
        ),
        (
            rolled_back.clone(),
            "settled_but_rolled_back",
            Some(413),
            Some(413),
        ),
        (
            "tr_from_nowhere".to_owned(),
            "unknown_to_ledger",
            None,
            Some(4_200),
        ),
    ];
    expected.sort();
    assert_eq!(found, expected);

    // Reported, stored and counted; nothing corrected.
    assert_eq!(
        h.ledger.check().await.unwrap(),
        before,
        "no posting was made"
    );
    assert_eq!((h.balance("alice").await, h.balance("bob").await), balances);
    assert_eq!(h.ledger.counters.reconciliation(), (2, 4));
    let stored: (i64, i64) = h
        .ledger
        .db
        .read("test", move |conn| {
            Ok((
                conn.query_row(
                    "SELECT discrepancies FROM reconciliation_runs WHERE id = ?1",
                    [report.run_id],
                    |r| r.get(0),
                )
                .unwrap(),
                conn.query_row(
                    "SELECT COUNT(*) FROM reconciliation_discrepancies WHERE run_id = ?1",
                    [report.run_id],
                    |r| r.get(0),
                )
                .unwrap(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(stored, (4, 4));
    let metrics = h
        .http
        .get(format!("{}/metrics", h.server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ledger_reconciliation_discrepancies_total 4"),
        "{metrics}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_periodic_job_runs_once_per_period_starting_after_one_period() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    let task = app::reconcile::spawn_periodic(Duration::from_secs(60), move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "not at start");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_slow_run_delays_the_next_instead_of_piling_up() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    let task = app::reconcile::spawn_periodic(Duration::from_secs(10), move || {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            // Each run takes 25 s, longer than the period.
            tokio::time::sleep(Duration::from_secs(25)).await;
        }
    });
    // Runs start at 10 s, 35 s, 60 s: three in 61 s, not six.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    task.abort();
}
