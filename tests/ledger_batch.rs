//! The wallet ledger example's checkpointed batches: a crash at any point, then a restart on
//! the same SQLite file, posts every item exactly once; an operator replays failed items.
#![cfg(feature = "http")]

#[path = "../examples/ledger/app/mod.rs"]
#[allow(dead_code)]
mod app;
#[allow(dead_code)]
mod ledger_support;

use std::sync::Arc;

use app::batch::{BatchItem, BatchRequest, BatchRun, CrashPlan};
use app::simulator::SimulatorConfig;
use app::{Ledger, LedgerConfig};
use ledger_support::{TempDb, start};
use serde_json::json;

fn items(n: i64) -> Vec<BatchItem> {
    (0..n)
        .map(|i| BatchItem {
            from: "payer".into(),
            to: format!("payee{}", i % 3),
            amount: 100 + i,
        })
        .collect()
}

/// Opens a second ledger on the same file: what a restarted process sees.
async fn restart(file: &TempDb, gateway_url: String) -> Arc<Ledger> {
    let ledger = Ledger::open(LedgerConfig {
        db: file.config(2),
        gateway_url,
        policies: ledger_support::policies(),
    })
    .expect("the ledger reopens");
    let (_, resumed) = ledger.recover().await.expect("recovery runs");
    assert_eq!(
        resumed,
        vec!["b1".to_owned()],
        "the interrupted batch resumes on start"
    );
    ledger
}

async fn crash_then_resume(plan: CrashPlan, crashed_at: i64, posted_before_resume: i64) {
    let file = TempDb::new("ledger-batch");
    let h = start(SimulatorConfig::default(), file.config(2)).await;
    h.open("payer", 100_000).await;
    for i in 0..3 {
        h.open(&format!("payee{i}"), 0).await;
    }
    let id = h
        .ledger
        .create_batch(BatchRequest {
            id: Some("b1".into()),
            items: items(10),
        })
        .await
        .unwrap();
    let run = h.ledger.run_batch(&id, plan).await.unwrap();
    assert_eq!(run, BatchRun::Crashed { seq: crashed_at });
    let mid = h.ledger.batch_status(&id).await.unwrap();
    assert_eq!(mid.state, "RUNNING");
    assert_eq!(mid.posted, posted_before_resume);
    assert_eq!(mid.checkpoint, posted_before_resume - 1);

    // The process "dies": drop everything, reopen the file.
    let url = h.sim.url();
    drop(h);
    let ledger = restart(&file, url).await;
    let done = ledger.batch_status("b1").await.unwrap();
    assert_eq!(done.state, "COMPLETED");
    assert_eq!((done.posted, done.failed, done.pending), (10, 0, 0));
    assert_eq!(done.checkpoint, 9);

    let expected: i64 = (0..10).map(|i| 100 + i).sum();
    assert_eq!(
        ledger.account("payer").await.unwrap().balance,
        100_000 - expected
    );
    let payees: i64 = futures_sum(&ledger).await;
    assert_eq!(payees, expected, "every item credited once");
    let counts: Vec<i64> = ledger
        .db
        .read("test", |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT COUNT(t.id) FROM batch_items i LEFT JOIN ledger_transactions t
                     ON t.reference = 'batch:' || i.batch_id || ':' || i.seq
                     GROUP BY i.seq ORDER BY i.seq",
                )
                .unwrap();
            Ok(stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect())
        })
        .await
        .unwrap();
    assert_eq!(counts, vec![1; 10], "each item posted exactly once");
    assert!(ledger.check().await.unwrap().balanced);

    // Resuming a finished batch posts nothing more.
    let again = ledger.run_batch("b1", CrashPlan::default()).await.unwrap();
    assert!(matches!(again, BatchRun::Finished(s) if s.posted == 10));
    assert_eq!(
        ledger.account("payer").await.unwrap().balance,
        100_000 - expected
    );
}

async fn futures_sum(ledger: &Ledger) -> i64 {
    let mut sum = 0;
    for i in 0..3 {
        sum += ledger.account(&format!("payee{i}")).await.unwrap().balance;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_an_item_commits_resumes_without_double_posting() {
    // Items 0..3 committed; item 4's transaction dies before COMMIT and is rolled back.
    crash_then_resume(
        CrashPlan {
            before_commit_of: Some(4),
            after_commit_of: None,
        },
        4,
        4,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_an_item_commits_resumes_without_double_posting() {
    // Item 6 committed with its checkpoint, then the process died.
    crash_then_resume(
        CrashPlan {
            before_commit_of: None,
            after_commit_of: Some(6),
        },
        6,
        7,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_items_are_skipped_then_replayed_by_an_operator() {
    let h = start(SimulatorConfig::default(), app::db::DbConfig::memory()).await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;
    let batch = h
        .post(
            "/v1/batches",
            json!({ "id": "pay-1", "items": [
                { "from": "alice", "to": "bob", "amount": 1_000 },
                { "from": "bob", "to": "alice", "amount": 5_000 },
                { "from": "alice", "to": "ghost", "amount": 10 },
                { "from": "alice", "to": "bob", "amount": 2_000 },
            ] }),
            None,
        )
        .await;
    assert_eq!(batch.status, 201, "{}", batch.body);
    assert_eq!(batch.body["state"], "COMPLETED_WITH_FAILURES");
    assert_eq!(
        (batch.body["posted"].as_i64(), batch.body["failed"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        batch.body["failures"][0],
        json!([1, "insufficient_funds", batch.body["failures"][0][2]])
    );
    assert_eq!(batch.body["failures"][1][1], "account_not_found");
    assert_eq!(h.balance("bob").await, 3_000);

    // Replaying before fixing anything changes nothing.
    let replay = h.post("/v1/batches/pay-1/replay", json!({}), None).await;
    assert_eq!(replay.body["failed"], 2);
    assert_eq!(h.balance("bob").await, 3_000);

    // Fund bob, open ghost, replay: both post, once.
    h.open("funder", 5_000).await;
    h.transfer("funder", "bob", 5_000, None).await;
    h.open("ghost", 0).await;
    let replay = h.post("/v1/batches/pay-1/replay", json!({}), None).await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body["state"], "COMPLETED");
    assert_eq!(
        (
            replay.body["posted"].as_i64(),
            replay.body["failed"].as_i64()
        ),
        (Some(4), Some(0))
    );
    assert_eq!(h.balance("bob").await, 3_000);
    assert_eq!(h.balance("alice").await, 10_000 - 3_000 - 10 + 5_000);
    assert_eq!(h.balance("ghost").await, 10);
    for seq in 0..4 {
        assert_eq!(h.postings(&format!("batch:pay-1:{seq}")).await, 1);
    }

    // A batch id is an idempotency key for the whole batch.
    let dup = h
        .post(
            "/v1/batches",
            json!({ "id": "pay-1", "items": [{ "from": "alice", "to": "bob", "amount": 1 }] }),
            None,
        )
        .await;
    assert_eq!(dup.status, 422);
    assert_eq!(h.get("/v1/batches/pay-1").await.body["posted"], 4);
    assert!(h.ledger.check().await.unwrap().balanced);
}
