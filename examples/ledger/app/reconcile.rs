//! Reconciliation: the ledger's postings against the gateway's records.
//!
//! A run reads every transfer and every gateway payment, reports what disagrees, stores the
//! report, logs each discrepancy and counts it. It never posts, corrects or compensates:
//! money changes only through transfers, and a discrepancy is for a person to resolve.
//!
//! | kind | meaning |
//! |---|---|
//! | `missing_at_gateway` | the ledger completed a transfer the gateway has no payment for |
//! | `amount_mismatch` | both have it, with different amounts |
//! | `settled_but_rolled_back` | the gateway settled a payment the ledger failed or compensated |
//! | `unknown_to_ledger` | the gateway has a payment whose reference no transfer has |
//!
//! Transfers still in flight are skipped (and counted), so a run during traffic is not noisy.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use palisade::timeout::TimeoutLayer;
use tower::{Layer, ServiceExt};

use rusqlite::params;
use serde::Serialize;

use super::Ledger;
use super::error::LedgerError;
use super::transfers::TransferState;

/// One disagreement between the ledger and the gateway.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Discrepancy {
    /// The transfer id / payment reference.
    pub reference: String,
    /// What disagrees (see the module docs).
    pub kind: &'static str,
    /// What the ledger says, in minor units.
    pub ledger_amount: Option<i64>,
    /// What the gateway says, in minor units.
    pub gateway_amount: Option<i64>,
    /// A sentence for the operator.
    pub detail: String,
}

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct ReconciliationReport {
    /// The stored run's id.
    pub run_id: i64,
    /// Transfers compared.
    pub ledger_checked: usize,
    /// Gateway payments compared.
    pub gateway_checked: usize,
    /// Transfers skipped because they are in flight.
    pub in_flight: usize,
    /// What disagrees.
    pub discrepancies: Vec<Discrepancy>,
}

impl Ledger {
    /// Runs reconciliation once, under the `reconciliation` policy's total timeout
    /// (palisade's `TimeoutLayer`; the database reads and the gateway list inside it run
    /// under their own stacks).
    pub async fn reconcile(self: &Arc<Self>) -> Result<ReconciliationReport, LedgerError> {
        let policy = Arc::clone(self.store.current().for_operation("reconciliation"));
        let ledger = Arc::clone(self);
        let run = tower::service_fn(move |()| {
            let ledger = Arc::clone(&ledger);
            async move { ledger.reconcile_once().await }
        });
        TimeoutLayer::total_from(&policy)
            .layer(run)
            .oneshot(())
            .await
            .map_err(LedgerError::from_stack)
    }

    async fn reconcile_once(&self) -> Result<ReconciliationReport, LedgerError> {
        // Ledger first: a payment settling between the two reads then shows as a gateway
        // payment of an in-flight transfer, which is skipped, not reported.
        let transfers: Vec<(String, i64, String, bool)> = self
            .db
            .read("reconcile_read", |conn| {
                let mut stmt = conn
                    .prepare("SELECT id, amount, state, response_status IS NOT NULL FROM transfers")
                    .map_err(LedgerError::db("reconcile_read"))?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .and_then(Iterator::collect)
                    .map_err(LedgerError::db("reconcile_read"))
            })
            .await?;
        let payments = self
            .gateway
            .list()
            .await
            .map_err(|f| LedgerError::IntegrationError {
                transfer: "reconciliation".into(),
                failure: f,
            })?;
        let at_gateway: HashMap<&str, i64> = payments
            .iter()
            .map(|p| (p.reference.as_str(), p.amount))
            .collect();
        let mut discrepancies = Vec::new();
        let mut in_flight = 0;
        let mut known = HashMap::new();
        for (id, amount, state, finished) in &transfers {
            known.insert(id.as_str(), ());
            let gateway = at_gateway.get(id.as_str()).copied();
            let state = TransferState::parse(state);
            if !finished {
                in_flight += 1;
                continue;
            }
            let found = match (state, gateway) {
                (Some(TransferState::Completed), None) => Some((
                    "missing_at_gateway",
                    "the ledger completed this transfer but the gateway has no payment",
                )),
                (Some(TransferState::Completed), Some(g)) if g != *amount => Some((
                    "amount_mismatch",
                    "the ledger and the gateway disagree on the amount",
                )),
                (Some(TransferState::RolledBack | TransferState::Failed), Some(_)) => Some((
                    "settled_but_rolled_back",
                    "the gateway settled a payment the ledger gave back to the payer",
                )),
                _ => None,
            };
            if let Some((kind, detail)) = found {
                discrepancies.push(Discrepancy {
                    reference: id.clone(),
                    kind,
                    ledger_amount: Some(*amount),
                    gateway_amount: gateway,
                    detail: detail.into(),
                });
            }
        }
        for p in &payments {
            if !known.contains_key(p.reference.as_str()) {
                discrepancies.push(Discrepancy {
                    reference: p.reference.clone(),
                    kind: "unknown_to_ledger",
                    ledger_amount: None,
                    gateway_amount: Some(p.amount),
                    detail: format!(
                        "gateway payment {} has no transfer in the ledger",
                        p.payment_id
                    ),
                });
            }
        }
        let (ledger_checked, gateway_checked) = (transfers.len() - in_flight, payments.len());
        let stored = discrepancies.clone();
        let run_id = self
            .db
            .write("reconcile_report", move |tx| {
                let db = LedgerError::db("reconcile_report");
                tx.execute(
                    "INSERT INTO reconciliation_runs
                     (started_at, finished_at, ledger_checked, gateway_checked, in_flight, discrepancies)
                     VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?1, ?2, ?3, ?4)",
                    params![ledger_checked as i64, gateway_checked as i64, in_flight as i64, stored.len() as i64],
                )
                .map_err(&db)?;
                let run = tx.last_insert_rowid();
                for d in &stored {
                    tx.execute(
                        "INSERT INTO reconciliation_discrepancies
                         (run_id, reference, kind, ledger_amount, gateway_amount, detail)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![run, d.reference, d.kind, d.ledger_amount, d.gateway_amount, d.detail],
                    )
                    .map_err(&db)?;
                }
                Ok(run)
            })
            .await?;
        for d in &discrepancies {
            tracing::error!(
                run_id,
                reference = %d.reference,
                kind = d.kind,
                ledger_amount = d.ledger_amount,
                gateway_amount = d.gateway_amount,
                "reconciliation discrepancy"
            );
        }
        self.counters.reconciled(discrepancies.len() as u64);
        tracing::info!(
            run_id,
            ledger_checked,
            gateway_checked,
            in_flight,
            discrepancies = discrepancies.len(),
            "reconciliation finished"
        );
        Ok(ReconciliationReport {
            run_id,
            ledger_checked,
            gateway_checked,
            in_flight,
            discrepancies,
        })
    }
}

/// Runs `job` every `every` (the first run after one period), until the task is aborted.
/// A run that takes longer than the period delays the next one instead of piling up.
pub fn spawn_periodic<F, Fut>(every: Duration, mut job: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            job().await;
        }
    })
}
