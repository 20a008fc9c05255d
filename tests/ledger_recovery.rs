//! The wallet ledger example after a crash: transfers left half-done in the database are
//! finished on start, by asking the gateway what happened, never by guessing.
#![cfg(feature = "http")]

#[path = "../examples/ledger/app/mod.rs"]
#[allow(dead_code)]
mod app;
#[allow(dead_code)]
mod ledger_support;

use app::error::TxKind;
use app::ledger::{SUSPENSE, post};
use app::simulator::{GatewayPayment, SimulatorConfig};
use app::transfers::{TransferRequest, TransferState};
use app::{Ledger, LedgerConfig};
use ledger_support::{Harness, TempDb, start};
use rusqlite::params;

/// Writes a transfer as a crash would have left it: in `state`, debited if `debited`.
async fn leave_half_done(
    h: &Harness,
    id: &str,
    key: &str,
    amount: i64,
    state: &str,
    debited: bool,
) {
    let (id, key, state) = (id.to_owned(), key.to_owned(), state.to_owned());
    h.ledger
        .db
        .write("test_crash", move |tx| {
            tx.execute(
                "INSERT INTO transfers (id, idempotency_key, fingerprint, from_account, to_account, amount, state)
                 VALUES (?1, ?2, ?3, 'alice', 'bob', ?4, ?5)",
                params![id, key, format!("alice|bob|{amount}"), amount, state],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO transfer_events (transfer_id, to_state) VALUES (?1, ?2)",
                params![id, state],
            )
            .unwrap();
            if debited {
                let txn = post(
                    tx,
                    TxKind::TransferDebit,
                    &format!("{id}:debit"),
                    &[("alice", -amount), (SUSPENSE, amount)],
                )?;
                tx.execute("UPDATE transfers SET debit_txn = ?1 WHERE id = ?2", params![txn, id])
                    .unwrap();
            }
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_done_transfers_are_finished_on_start_from_the_gateway_s_records() {
    let file = TempDb::new("ledger-recovery");
    let h = start(SimulatorConfig::default(), file.config(2)).await;
    h.open("alice", 10_000).await;
    h.open("bob", 0).await;

    // Debited, and the gateway settled before the crash: must complete.
    leave_half_done(&h, "tr_settled", "k-settled", 1_000, "EXECUTING", true).await;
    h.sim.plant(GatewayPayment {
        payment_id: "pay_1".into(),
        reference: "tr_settled".into(),
        amount: 1_000,
        from: "alice".into(),
        to: "bob".into(),
        status: "settled".into(),
    });
    // Debited, the gateway never got it: must be compensated.
    leave_half_done(&h, "tr_lost", "k-lost", 2_000, "EXECUTING", true).await;
    // Nothing posted yet: must fail, with its answer stored for the key.
    leave_half_done(&h, "tr_early", "k-early", 300, "CREATED", false).await;
    // Compensation had started: must finish it.
    leave_half_done(&h, "tr_undo", "k-undo", 400, "ROLLING_BACK", true).await;
    assert_eq!(h.balance("alice").await, 10_000 - 1_000 - 2_000 - 400);

    // The process dies; a new one opens the same file.
    let Harness {
        sim,
        ledger,
        server,
        ..
    } = h;
    drop(server);
    drop(ledger);
    let ledger = Ledger::open(LedgerConfig {
        db: file.config(2),
        gateway_url: sim.url(),
        policies: ledger_support::policies(),
    })
    .unwrap();
    let (finished, batches) = ledger.recover().await.unwrap();
    assert_eq!((finished, batches.len()), (4, 0));

    let state = |t: Option<app::transfers::Transfer>| t.unwrap().state;
    assert_eq!(
        state(ledger.get_transfer("tr_settled").await.unwrap()),
        TransferState::Completed
    );
    assert_eq!(
        state(ledger.get_transfer("tr_lost").await.unwrap()),
        TransferState::RolledBack
    );
    assert_eq!(
        state(ledger.get_transfer("tr_early").await.unwrap()),
        TransferState::Failed
    );
    assert_eq!(
        state(ledger.get_transfer("tr_undo").await.unwrap()),
        TransferState::RolledBack
    );
    assert_eq!(ledger.account("alice").await.unwrap().balance, 9_000);
    assert_eq!(ledger.account("bob").await.unwrap().balance, 1_000);
    let check = ledger.check().await.unwrap();
    assert!(check.balanced && check.suspense_balance == 0, "{check:?}");
    assert_eq!(sim.payments().len(), 1, "recovery made no new payment");
    assert!(ledger.reconcile().await.unwrap().discrepancies.is_empty());

    // The keys now replay the stored answers; nothing runs twice.
    let replay = ledger
        .transfer(
            TransferRequest {
                from: "alice".into(),
                to: "bob".into(),
                amount: 300,
            },
            Some("k-early".into()),
        )
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.body["transfer"]["state"], "FAILED");
    let replay = ledger
        .transfer(
            TransferRequest {
                from: "alice".into(),
                to: "bob".into(),
                amount: 1_000,
            },
            Some("k-settled".into()),
        )
        .await
        .unwrap();
    assert_eq!((replay.status, replay.replayed), (201, true));
    assert_eq!(ledger.account("bob").await.unwrap().balance, 1_000);

    // A second start finds nothing to do.
    assert_eq!(ledger.recover().await.unwrap().0, 0);
}
