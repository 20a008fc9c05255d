//! Batch posting with checkpoints (seed 004): many transfers, resumable, replayable.
//!
//! A batch is stored whole before anything is posted (`batches` + `batch_items`). Items are
//! then posted one by one; each item's posting, its status and the batch's checkpoint are
//! written in ONE SQLite transaction, so after a crash an item is either posted and
//! checkpointed or neither. Resuming continues after the checkpoint, and the unique posting
//! reference `batch:{id}:{seq}` makes a second posting of an item impossible even if the
//! checkpoint were wrong. Items that fail for a business reason (insufficient funds, unknown
//! account) are marked FAILED and skipped; an operator replays them later, e.g. after funding
//! the account. Batch items move money inside the ledger only (no gateway call).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::Ledger;
use super::error::{LedgerError, TxKind};
use super::ledger::{self, validate_account_id};
use palisade::classify::Classified;

/// The most items one batch may hold.
pub const MAX_ITEMS: usize = 10_000;

/// One item: move `amount` from `from` to `to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchItem {
    /// Source account.
    pub from: String,
    /// Destination account.
    pub to: String,
    /// Minor units, positive.
    pub amount: i64,
}

/// `POST /v1/batches` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The batch id (an idempotency key for the whole batch); generated if absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The items, posted in order.
    pub items: Vec<BatchItem>,
}

/// Where a batch stands.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BatchStatus {
    /// The batch id.
    pub id: String,
    /// `PENDING`, `RUNNING`, `COMPLETED` or `COMPLETED_WITH_FAILURES`.
    pub state: String,
    /// Items in the batch.
    pub total: i64,
    /// The last item processed in order (-1 before the first).
    pub checkpoint: i64,
    /// Items posted.
    pub posted: i64,
    /// Items failed (replayable).
    pub failed: i64,
    /// Items not processed yet.
    pub pending: i64,
    /// The failed items: sequence number, error code and message.
    pub failures: Vec<(i64, String, String)>,
}

/// Simulated crashes, for tests and the demo: stop as if the process died.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrashPlan {
    /// Die inside this item's transaction, before it commits.
    pub before_commit_of: Option<i64>,
    /// Die right after this item's transaction commits.
    pub after_commit_of: Option<i64>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchRun {
    /// Every item was processed.
    Finished(BatchStatus),
    /// A simulated crash stopped the run at this item.
    Crashed {
        /// The item being processed.
        seq: i64,
    },
}

const SIMULATED_CRASH: &str = "simulated_crash";

impl Ledger {
    /// Stores a batch without posting anything; returns its id.
    pub async fn create_batch(&self, request: BatchRequest) -> Result<String, LedgerError> {
        if request.items.is_empty() || request.items.len() > MAX_ITEMS {
            return Err(LedgerError::invalid(
                "items",
                format!("1 to {MAX_ITEMS} items"),
            ));
        }
        for (seq, item) in request.items.iter().enumerate() {
            let bad = |reason: &str| LedgerError::InvalidEntry {
                entry: Some(format!("item {seq}")),
                field: "items",
                reason: reason.into(),
            };
            validate_account_id(&item.from).map_err(|_| bad("invalid `from`"))?;
            validate_account_id(&item.to).map_err(|_| bad("invalid `to`"))?;
            if item.amount <= 0 {
                return Err(bad("amount must be positive"));
            }
            if item.from == item.to {
                return Err(bad("`from` and `to` are the same account"));
            }
        }
        let id = match request.id {
            Some(id) => {
                validate_account_id(&id).map_err(|_| {
                    LedgerError::invalid("id", "1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`")
                })?;
                id
            }
            None => format!("batch_{:016x}", self.ids.next_u64()),
        };
        let items = request.items;
        let bid = id.clone();
        self.db
            .write("create_batch", move |tx| {
                let db = LedgerError::db("create_batch");
                let exists = tx
                    .query_row("SELECT 1 FROM batches WHERE id = ?1", [&bid], |_| Ok(()))
                    .optional()
                    .map_err(&db)?;
                if exists.is_some() {
                    return Err(LedgerError::IdempotencyConflict { key: bid.clone() });
                }
                tx.execute(
                    "INSERT INTO batches (id, state, total) VALUES (?1, 'PENDING', ?2)",
                    params![bid, items.len() as i64],
                )
                .map_err(&db)?;
                for (seq, item) in items.iter().enumerate() {
                    tx.execute(
                        "INSERT INTO batch_items (batch_id, seq, from_account, to_account, amount, status)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'PENDING')",
                        params![bid, seq as i64, item.from, item.to, item.amount],
                    )
                    .map_err(&db)?;
                }
                Ok(())
            })
            .await?;
        tracing::info!(batch_id = %id, "batch stored");
        Ok(id)
    }

    /// Posts a batch's pending items after its checkpoint, in order.
    pub async fn run_batch(&self, id: &str, crash: CrashPlan) -> Result<BatchRun, LedgerError> {
        let bid = id.to_owned();
        self.db
            .write("start_batch", move |tx| {
                let n = tx
                    .execute(
                        "UPDATE batches SET state = 'RUNNING', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                        [&bid],
                    )
                    .map_err(LedgerError::db("start_batch"))?;
                if n == 0 {
                    return Err(LedgerError::InvalidEntry {
                        entry: Some(bid.clone()),
                        field: "batch",
                        reason: "no such batch".into(),
                    });
                }
                Ok(())
            })
            .await?;
        loop {
            let bid = id.to_owned();
            let next: Option<(i64, String, String, i64)> = self
                .db
                .read("next_batch_item", move |conn| {
                    conn.query_row(
                        "SELECT i.seq, i.from_account, i.to_account, i.amount
                         FROM batch_items i JOIN batches b ON b.id = i.batch_id
                         WHERE i.batch_id = ?1 AND i.seq > b.checkpoint AND i.status = 'PENDING'
                         ORDER BY i.seq LIMIT 1",
                        [&bid],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()
                    .map_err(LedgerError::db("next_batch_item"))
                })
                .await?;
            let Some((seq, from, to, amount)) = next else {
                break;
            };
            let crash_inside = crash.before_commit_of == Some(seq);
            let result = self
                .post_item(id, seq, from, to, amount, true, crash_inside)
                .await;
            match result {
                Err(LedgerError::InvalidEntry { field, .. }) if field == SIMULATED_CRASH => {
                    tracing::warn!(
                        batch_id = id,
                        seq,
                        "simulated crash before the item committed"
                    );
                    return Ok(BatchRun::Crashed { seq });
                }
                other => {
                    other?;
                }
            }
            if crash.after_commit_of == Some(seq) {
                tracing::warn!(
                    batch_id = id,
                    seq,
                    "simulated crash after the item committed"
                );
                return Ok(BatchRun::Crashed { seq });
            }
        }
        let status = self.finish_batch(id).await?;
        Ok(BatchRun::Finished(status))
    }

    /// Posts one item, records its status (and, in order, the checkpoint) in the same
    /// transaction. Business failures mark the item FAILED; others abort the run.
    #[allow(clippy::too_many_arguments)]
    async fn post_item(
        &self,
        id: &str,
        seq: i64,
        from: String,
        to: String,
        amount: i64,
        advance_checkpoint: bool,
        crash_inside: bool,
    ) -> Result<bool, LedgerError> {
        let bid = id.to_owned();
        let posted = self
            .db
            .write("post_batch_item", move |tx| {
                let db = LedgerError::db("post_batch_item");
                let posting = ledger::post(
                    tx,
                    TxKind::BatchItem,
                    &format!("batch:{bid}:{seq}"),
                    &[(&from, -amount), (&to, amount)],
                );
                let posted = match posting {
                    Ok(txn) => {
                        tx.execute(
                            "UPDATE batch_items SET status = 'POSTED', txn_id = ?1, error_code = NULL,
                             error_message = NULL, attempts = attempts + 1 WHERE batch_id = ?2 AND seq = ?3",
                            params![txn, bid, seq],
                        )
                        .map_err(&db)?;
                        true
                    }
                    Err(e) if !e.classification().is_transient() => {
                        let class = e.classification();
                        tx.execute(
                            "UPDATE batch_items SET status = 'FAILED', error_code = ?1, error_message = ?2,
                             attempts = attempts + 1 WHERE batch_id = ?3 AND seq = ?4",
                            params![class.code.as_str(), e.to_string(), bid, seq],
                        )
                        .map_err(&db)?;
                        false
                    }
                    Err(e) => return Err(e),
                };
                if advance_checkpoint {
                    tx.execute(
                        "UPDATE batches SET checkpoint = ?1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?2",
                        params![seq, bid],
                    )
                    .map_err(&db)?;
                }
                if crash_inside {
                    // Everything above is rolled back, as if the process died before COMMIT.
                    return Err(LedgerError::InvalidEntry {
                        entry: Some(format!("batch:{bid}:{seq}")),
                        field: SIMULATED_CRASH,
                        reason: "simulated crash".into(),
                    });
                }
                Ok(posted)
            })
            .await?;
        self.counters.batch_item(posted);
        if posted {
            tracing::info!(batch_id = id, seq, amount, "batch item posted");
        } else {
            tracing::warn!(batch_id = id, seq, "batch item failed; replayable");
        }
        Ok(posted)
    }

    async fn finish_batch(&self, id: &str) -> Result<BatchStatus, LedgerError> {
        let bid = id.to_owned();
        self.db
            .write("finish_batch", move |tx| {
                let failed: i64 = tx
                    .query_row(
                        "SELECT COUNT(*) FROM batch_items WHERE batch_id = ?1 AND status = 'FAILED'",
                        [&bid],
                        |r| r.get(0),
                    )
                    .map_err(LedgerError::db("finish_batch"))?;
                let state = if failed == 0 { "COMPLETED" } else { "COMPLETED_WITH_FAILURES" };
                tx.execute(
                    "UPDATE batches SET state = ?1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?2",
                    params![state, bid],
                )
                .map_err(LedgerError::db("finish_batch"))?;
                Ok(())
            })
            .await?;
        let status = self.batch_status(id).await?;
        tracing::info!(batch_id = id, state = %status.state, posted = status.posted, failed = status.failed, "batch finished");
        Ok(status)
    }

    /// An operator's replay: tries every FAILED item again, in order. Items that still fail
    /// stay FAILED with the new error.
    pub async fn replay_failed(&self, id: &str) -> Result<BatchStatus, LedgerError> {
        let status = self.batch_status(id).await?;
        if status.state == "RUNNING" || status.state == "PENDING" {
            return Err(LedgerError::InvalidEntry {
                entry: Some(id.to_owned()),
                field: "batch",
                reason: "resume the batch before replaying its failed items".into(),
            });
        }
        let bid = id.to_owned();
        let failed: Vec<(i64, String, String, i64)> = self
            .db
            .read("failed_batch_items", move |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT seq, from_account, to_account, amount FROM batch_items
                         WHERE batch_id = ?1 AND status = 'FAILED' ORDER BY seq",
                    )
                    .map_err(LedgerError::db("failed_batch_items"))?;
                stmt.query_map([&bid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .and_then(Iterator::collect)
                    .map_err(LedgerError::db("failed_batch_items"))
            })
            .await?;
        tracing::info!(
            batch_id = id,
            items = failed.len(),
            "operator replay of failed items"
        );
        for (seq, from, to, amount) in failed {
            self.post_item(id, seq, from, to, amount, false, false)
                .await?;
        }
        self.finish_batch(id).await
    }

    /// Where a batch stands.
    pub async fn batch_status(&self, id: &str) -> Result<BatchStatus, LedgerError> {
        let bid = id.to_owned();
        self.db
            .read("batch_status", move |conn| {
                let db = LedgerError::db("batch_status");
                let head: Option<(String, i64, i64)> = conn
                    .query_row(
                        "SELECT state, total, checkpoint FROM batches WHERE id = ?1",
                        [&bid],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(&db)?;
                let Some((state, total, checkpoint)) = head else {
                    return Err(LedgerError::InvalidEntry {
                        entry: Some(bid.clone()),
                        field: "batch",
                        reason: "no such batch".into(),
                    });
                };
                let count = |status: &str| -> Result<i64, LedgerError> {
                    conn.query_row(
                        "SELECT COUNT(*) FROM batch_items WHERE batch_id = ?1 AND status = ?2",
                        params![bid, status],
                        |r| r.get(0),
                    )
                    .map_err(LedgerError::db("batch_status"))
                };
                let mut stmt = conn
                    .prepare(
                        "SELECT seq, COALESCE(error_code, ''), COALESCE(error_message, '') FROM batch_items
                         WHERE batch_id = ?1 AND status = 'FAILED' ORDER BY seq",
                    )
                    .map_err(&db)?;
                let failures = stmt
                    .query_map([&bid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .and_then(Iterator::collect)
                    .map_err(&db)?;
                Ok(BatchStatus {
                    id: bid.clone(),
                    state,
                    total,
                    checkpoint,
                    posted: count("POSTED")?,
                    failed: count("FAILED")?,
                    pending: count("PENDING")?,
                    failures,
                })
            })
            .await
    }

    /// Resumes every batch a crash left RUNNING or PENDING. Returns their ids.
    pub async fn resume_batches(&self) -> Result<Vec<String>, LedgerError> {
        let ids: Vec<String> = self
            .db
            .read("unfinished_batches", |conn| {
                let mut stmt = conn
                    .prepare("SELECT id FROM batches WHERE state IN ('RUNNING', 'PENDING') ORDER BY created_at")
                    .map_err(LedgerError::db("unfinished_batches"))?;
                stmt.query_map([], |r| r.get(0))
                    .and_then(Iterator::collect)
                    .map_err(LedgerError::db("unfinished_batches"))
            })
            .await?;
        for id in &ids {
            tracing::warn!(batch_id = %id, "resuming an interrupted batch from its checkpoint");
            self.run_batch(id, CrashPlan::default()).await?;
        }
        Ok(ids)
    }
}
