//! Transfers: a multi-step saga with compensation, recorded as state transitions.
//!
//! ```text
//! CREATED -> VALIDATED -> EXECUTING -> COMPLETED
//!    |           |            |
//!    +-----------+--> FAILED  +--> FAILED -> ROLLING_BACK -> ROLLED_BACK
//!               (nothing moved)    (debit compensated)
//! ```
//!
//! 1. CREATED: the row (and its idempotency key) is written.
//! 2. VALIDATED: both accounts exist, the amount is positive, funds suffice (a business
//!    failure here ends in FAILED with nothing posted).
//! 3. EXECUTING: the debit is posted (source to `suspense:gateway`) in the same SQLite
//!    transaction as the state change, re-checking funds under the write lock.
//! 4. The payment gateway settles the payment, the transfer id being its reference.
//! 5. COMPLETED: the credit is posted (suspense to destination) with the state change.
//!    Or, if the gateway failed for good: FAILED, ROLLING_BACK, then the compensation
//!    (suspense back to source) posted with ROLLED_BACK. A transient failure is ambiguous
//!    (the gateway may have settled before the connection dropped), so the gateway is asked
//!    for the reference first and the transfer completes if it was settled.
//!
//! Each final state stores the response, so a replayed idempotency key returns it verbatim.
//! Every posting has a unique reference (`{id}:debit`, `{id}:credit`, `{id}:compensation`),
//! so no step can post twice, whatever crashes and retries happen.

use std::sync::Arc;

use palisade::classify::Classified;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument;

use super::Ledger;
use super::error::{LedgerError, TxKind};
use super::gateway::GatewayFailure;
use super::ledger::{self, SUSPENSE, get_account, validate_account_id};
use super::simulator::{GatewayPayment, PaymentRequest};

/// The states of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransferState {
    /// Recorded, nothing checked yet.
    Created,
    /// Accounts and funds checked.
    Validated,
    /// Debited; the gateway is being called.
    Executing,
    /// Credited: done.
    Completed,
    /// Failed; if the debit was posted, compensation follows.
    Failed,
    /// The debit is being compensated.
    RollingBack,
    /// The debit was compensated: done.
    RolledBack,
}

impl TransferState {
    /// Every state, in order.
    pub const ALL: [TransferState; 7] = [
        TransferState::Created,
        TransferState::Validated,
        TransferState::Executing,
        TransferState::Completed,
        TransferState::Failed,
        TransferState::RollingBack,
        TransferState::RolledBack,
    ];

    /// The name stored and logged.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransferState::Created => "CREATED",
            TransferState::Validated => "VALIDATED",
            TransferState::Executing => "EXECUTING",
            TransferState::Completed => "COMPLETED",
            TransferState::Failed => "FAILED",
            TransferState::RollingBack => "ROLLING_BACK",
            TransferState::RolledBack => "ROLLED_BACK",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TransferState> {
        TransferState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The index in [`TransferState::ALL`], for counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// `POST /v1/transfers` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferRequest {
    /// Source account.
    pub from: String,
    /// Destination account.
    pub to: String,
    /// Minor units, positive.
    pub amount: i64,
}

/// What a transfer request answers: the stored response, and whether it is a replay.
#[derive(Clone, Debug)]
pub struct TransferReply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// Whether an idempotency key replayed a stored answer.
    pub replayed: bool,
}

/// A transfer as stored.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Transfer {
    /// Its id, also the payment reference at the gateway.
    pub id: String,
    /// Source account.
    pub from: String,
    /// Destination account.
    pub to: String,
    /// Minor units.
    pub amount: i64,
    /// Current state.
    pub state: TransferState,
    /// The gateway's payment id, once settled.
    pub gateway_payment_id: Option<String>,
    /// Why it failed, if it did.
    pub error_code: Option<String>,
    /// States it went through, in order.
    pub history: Vec<TransferState>,
}

/// Reads a transfer and its history.
pub fn get_transfer(conn: &Connection, id: &str) -> Result<Option<Transfer>, LedgerError> {
    let db = LedgerError::db("get_transfer");
    let row = conn
        .query_row(
            "SELECT id, from_account, to_account, amount, state, gateway_payment_id, error_code
             FROM transfers WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            },
        )
        .optional()
        .map_err(&db)?;
    let Some((id, from, to, amount, state, gateway_payment_id, error_code)) = row else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached("SELECT to_state FROM transfer_events WHERE transfer_id = ?1 ORDER BY id")
        .map_err(&db)?;
    let history = stmt
        .query_map([&id], |r| r.get::<_, String>(0))
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(&db)?
        .iter()
        .filter_map(|s| TransferState::parse(s))
        .collect();
    Ok(Some(Transfer {
        id,
        from,
        to,
        amount,
        state: TransferState::parse(&state).unwrap_or(TransferState::Failed),
        gateway_payment_id,
        error_code,
        history,
    }))
}

/// Records one state change in the same SQLite transaction as whatever caused it.
fn transition(
    tx: &Connection,
    id: &str,
    from: Option<TransferState>,
    to: TransferState,
    detail: Option<&str>,
) -> Result<(), LedgerError> {
    let db = LedgerError::db("transition");
    tx.execute(
        "UPDATE transfers SET state = ?1, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?2",
        params![to.as_str(), id],
    )
    .map_err(&db)?;
    tx.execute(
        "INSERT INTO transfer_events (transfer_id, from_state, to_state, detail) VALUES (?1, ?2, ?3, ?4)",
        params![id, from.map(TransferState::as_str), to.as_str(), detail],
    )
    .map_err(&db)?;
    Ok(())
}

/// Stores the final answer with the final state.
fn store_response(tx: &Connection, id: &str, status: u16, body: &Value) -> Result<(), LedgerError> {
    tx.execute(
        "UPDATE transfers SET response_status = ?1, response_body = ?2 WHERE id = ?3",
        params![status, body.to_string(), id],
    )
    .map_err(LedgerError::db("store_response"))?;
    Ok(())
}

fn transfer_body(tx: &Connection, id: &str) -> Result<Value, LedgerError> {
    let transfer = get_transfer(tx, id)?;
    Ok(json!({ "transfer": transfer }))
}

/// Ends a transfer in FAILED before anything was posted, storing the error as its answer.
fn fail_unposted(
    tx: &Transaction<'_>,
    id: &str,
    from: TransferState,
    error: &LedgerError,
) -> Result<TransferReply, LedgerError> {
    let class = error.classification();
    tx.execute(
        "UPDATE transfers SET error_code = ?1, error_message = ?2 WHERE id = ?3",
        params![class.code.as_str(), error.to_string(), id],
    )
    .map_err(LedgerError::db("fail_transfer"))?;
    transition(
        tx,
        id,
        Some(from),
        TransferState::Failed,
        Some(class.code.as_str()),
    )?;
    let mut body = error.body();
    body["transfer"] = transfer_body(tx, id)?["transfer"].clone();
    let status = error.status().as_u16();
    store_response(tx, id, status, &body)?;
    Ok(TransferReply {
        status,
        body,
        replayed: false,
    })
}

/// The end of a step before any money moved: on success the transfer moves `from` -> `to`;
/// a failure for good (insufficient funds, an unknown account) ends it in FAILED with its
/// answer stored; a transient one goes back to the database stack to be retried.
fn advance_unposted(
    tx: &Transaction<'_>,
    id: &str,
    work: Result<(), LedgerError>,
    from: TransferState,
    to: TransferState,
) -> Result<Step, LedgerError> {
    match work {
        Ok(()) => {
            transition(tx, id, Some(from), to, None)?;
            Ok(None)
        }
        Err(e) if !e.classification().is_transient() => fail_unposted(tx, id, from, &e).map(Some),
        Err(e) => Err(e),
    }
}

enum Begin {
    New,
    Replay(TransferReply),
}

/// A step that either moved on (`Ok(None)`) or ended the transfer with a stored answer.
type Step = Option<TransferReply>;

impl Ledger {
    fn new_transfer_id(&self) -> String {
        format!("tr_{:016x}", self.ids.next_u64())
    }

    fn record(&self, id: &str, from: Option<TransferState>, to: TransferState) {
        self.counters.transition(to);
        tracing::info!(
            transfer_id = id,
            from = from.map(TransferState::as_str),
            to = to.as_str(),
            "transfer state changed"
        );
    }

    /// Runs a transfer end to end. With an idempotency key, a replay returns the stored
    /// answer of the first request and posts nothing.
    pub async fn transfer(
        self: &Arc<Self>,
        request: TransferRequest,
        idempotency_key: Option<String>,
    ) -> Result<TransferReply, LedgerError> {
        validate_account_id(&request.from)?;
        validate_account_id(&request.to)?;
        if request.amount <= 0 {
            return Err(LedgerError::invalid(
                "amount",
                "must be a positive number of minor units",
            ));
        }
        if request.from == request.to {
            return Err(LedgerError::invalid("to", "must differ from `from`"));
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(LedgerError::invalid(
                "Idempotency-Key",
                "1 to 255 characters",
            ));
        }
        let id = self.new_transfer_id();
        let span = tracing::info_span!(
            "transfer",
            transfer_id = %id,
            idempotency_key = idempotency_key.as_deref().unwrap_or(""),
        );
        let result = self
            .transfer_inner(id.clone(), request, idempotency_key)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result
            && e.classification().is_transient()
        {
            self.release_unposted(&id, e).instrument(span).await;
        }
        result
    }

    /// After a transient failure (the database stayed busy past its retries) or with the
    /// gateway switched off, before any money moved: ends the transfer in FAILED and frees
    /// its idempotency key, so the client can retry with the same key. A transfer that was already debited is left for
    /// [`Ledger::recover_transfers`], which knows how to finish it.
    async fn release_unposted(&self, id: &str, error: &LedgerError) {
        let (tid, code, message) = (
            id.to_owned(),
            error.classification().code.to_string(),
            error.to_string(),
        );
        let released = self
            .db
            .write("release_transfer", move |tx| {
                let state: Option<String> = tx
                    .query_row("SELECT state FROM transfers WHERE id = ?1", [&tid], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(LedgerError::db("release_transfer"))?;
                let Some(from) = state.as_deref().and_then(TransferState::parse) else {
                    return Ok(None);
                };
                if !matches!(from, TransferState::Created | TransferState::Validated) {
                    return Ok(None);
                }
                tx.execute(
                    "UPDATE transfers SET idempotency_key = NULL, error_code = ?1, error_message = ?2,
                     response_status = 503, response_body = ?3 WHERE id = ?4",
                    params![code, message, json!({ "error": { "code": code, "message": message } }).to_string(), tid],
                )
                .map_err(LedgerError::db("release_transfer"))?;
                transition(tx, &tid, Some(from), TransferState::Failed, Some(&code))?;
                Ok(Some(from))
            })
            .await;
        match released {
            Ok(Some(from)) => {
                self.record(id, Some(from), TransferState::Failed);
                tracing::warn!("nothing was posted; the idempotency key is free for a retry");
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not release the transfer; recovery will"),
        }
    }

    async fn transfer_inner(
        self: &Arc<Self>,
        id: String,
        request: TransferRequest,
        key: Option<String>,
    ) -> Result<TransferReply, LedgerError> {
        let fingerprint = format!("{}|{}|{}", request.from, request.to, request.amount);
        let begin = {
            let (id, request) = (id.clone(), request.clone());
            self.db
                .write("begin_transfer", move |tx| {
                    if let Some(key) = &key {
                        let found: Option<(String, Option<u16>, Option<String>)> = tx
                            .query_row(
                                "SELECT fingerprint, response_status, response_body
                                 FROM transfers WHERE idempotency_key = ?1",
                                [key],
                                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                            )
                            .optional()
                            .map_err(LedgerError::db("begin_transfer"))?;
                        if let Some((stored, status, body)) = found {
                            if stored != fingerprint {
                                return Err(LedgerError::IdempotencyConflict { key: key.clone() });
                            }
                            return match (status, body) {
                                (Some(status), Some(body)) => Ok(Begin::Replay(TransferReply {
                                    status,
                                    body: serde_json::from_str(&body).unwrap_or(Value::Null),
                                    replayed: true,
                                })),
                                _ => Err(LedgerError::IdempotencyInProgress { key: key.clone() }),
                            };
                        }
                    }
                    tx.execute(
                        "INSERT INTO transfers (id, idempotency_key, fingerprint, from_account, to_account, amount, state)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'CREATED')",
                        params![id, key, fingerprint, request.from, request.to, request.amount],
                    )
                    .map_err(LedgerError::db("begin_transfer"))?;
                    transition(tx, &id, None, TransferState::Created, None)?;
                    Ok(Begin::New)
                })
                .await?
        };
        match begin {
            Begin::Replay(reply) => {
                self.counters.replay();
                tracing::info!(
                    status = reply.status,
                    "idempotent replay: returning the stored answer"
                );
                return Ok(reply);
            }
            Begin::New => self.record(&id, None, TransferState::Created),
        }

        // VALIDATED, or FAILED with nothing posted.
        let step = {
            let (id, r) = (id.clone(), request.clone());
            self.db
                .write("validate_transfer", move |tx| {
                    let check = get_account(tx, &r.from, "transfer").and_then(|from| {
                        get_account(tx, &r.to, "transfer")?;
                        if from.balance < r.amount {
                            return Err(LedgerError::InsufficientFunds {
                                account: r.from.clone(),
                                transaction: TxKind::TransferDebit,
                                needed: r.amount,
                                available: from.balance,
                            });
                        }
                        Ok(())
                    });
                    advance_unposted(
                        tx,
                        &id,
                        check,
                        TransferState::Created,
                        TransferState::Validated,
                    )
                })
                .await?
        };
        if let Some(reply) = step {
            self.record(&id, Some(TransferState::Created), TransferState::Failed);
            return Ok(reply);
        }
        self.record(&id, Some(TransferState::Created), TransferState::Validated);

        // Graceful degradation: with the gateway switched off (`payment_gateway.enabled:
        // false`), or while its circuit breaker is open, refuse before debiting and free the
        // key for when it is back. A debit now could only be given back.
        let gateway = self.gateway.policy();
        let refusal = if !gateway.enabled {
            Some(LedgerError::Disabled(palisade::error::OperationDisabled {
                operation: gateway.name_arc().clone(),
            }))
        } else {
            self.gateway
                .payments_refused()
                .map(LedgerError::CircuitOpen)
        };
        if let Some(refusal) = refusal {
            tracing::warn!(error = %refusal, "payment gateway unavailable: refused before the debit");
            self.counters.refused();
            self.release_unposted(&id, &refusal).await;
            return Err(refusal);
        }

        // EXECUTING: the debit, funds re-checked under the write lock.
        let step: Step = {
            let (id, r) = (id.clone(), request.clone());
            self.db
                .write("debit_transfer", move |tx| {
                    let debit = match ledger::post(
                        tx,
                        TxKind::TransferDebit,
                        &format!("{id}:debit"),
                        &[(&r.from, -r.amount), (SUSPENSE, r.amount)],
                    ) {
                        Ok(txn) => {
                            tx.execute(
                                "UPDATE transfers SET debit_txn = ?1 WHERE id = ?2",
                                params![txn, id],
                            )
                            .map_err(LedgerError::db("debit_transfer"))?;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
                    advance_unposted(
                        tx,
                        &id,
                        debit,
                        TransferState::Validated,
                        TransferState::Executing,
                    )
                })
                .await?
        };
        if let Some(reply) = step {
            self.record(&id, Some(TransferState::Validated), TransferState::Failed);
            return Ok(reply);
        }
        self.record(
            &id,
            Some(TransferState::Validated),
            TransferState::Executing,
        );

        let payment = PaymentRequest {
            reference: id.clone(),
            amount: request.amount,
            from: request.from.clone(),
            to: request.to.clone(),
        };
        let settled = self.settle_at_gateway(&payment).await;
        match settled {
            Ok(p) => self.complete(&id, &request, &p).await,
            Err(failure) => self.compensate(&id, &request, failure).await,
        }
    }

    /// Calls the gateway; after a transient failure, asks whether the payment settled anyway
    /// (a lost response), so a settled payment is never compensated.
    async fn settle_at_gateway(
        &self,
        payment: &PaymentRequest,
    ) -> Result<GatewayPayment, Box<GatewayFailure>> {
        match self.gateway.pay(payment).await {
            Ok(p) => Ok(p),
            // Refused by palisade before anything was sent (the breaker opened after this
            // transfer's check): nothing can have settled, compensate at once.
            Err(failure) if failure.refused => Err(failure),
            Err(failure) if failure.class.is_transient() => {
                match self.gateway.lookup(&payment.reference).await {
                    Ok(Some(p)) if p.amount == payment.amount => {
                        tracing::warn!(code = %failure.class.code, "gateway failed but had settled the payment");
                        Ok(p)
                    }
                    Ok(_) => Err(failure),
                    Err(lookup) => {
                        tracing::error!(
                            code = %lookup.class.code,
                            "gateway look-up failed; compensating, reconciliation will flag a mismatch"
                        );
                        Err(failure)
                    }
                }
            }
            Err(failure) => Err(failure),
        }
    }

    /// EXECUTING -> COMPLETED: posts the credit.
    async fn complete(
        &self,
        id: &str,
        request: &TransferRequest,
        payment: &GatewayPayment,
    ) -> Result<TransferReply, LedgerError> {
        let (tid, r, payment_id) = (id.to_owned(), request.clone(), payment.payment_id.clone());
        let reply = self
            .db
            .write("credit_transfer", move |tx| {
                let txn = ledger::post(
                    tx,
                    TxKind::TransferCredit,
                    &format!("{tid}:credit"),
                    &[(SUSPENSE, -r.amount), (&r.to, r.amount)],
                )?;
                tx.execute(
                    "UPDATE transfers SET credit_txn = ?1, gateway_payment_id = ?2 WHERE id = ?3",
                    params![txn, payment_id, tid],
                )
                .map_err(LedgerError::db("credit_transfer"))?;
                transition(
                    tx,
                    &tid,
                    Some(TransferState::Executing),
                    TransferState::Completed,
                    None,
                )?;
                let body = transfer_body(tx, &tid)?;
                store_response(tx, &tid, 201, &body)?;
                Ok(TransferReply {
                    status: 201,
                    body,
                    replayed: false,
                })
            })
            .await?;
        self.record(id, Some(TransferState::Executing), TransferState::Completed);
        Ok(reply)
    }

    /// EXECUTING -> FAILED -> ROLLING_BACK -> ROLLED_BACK: gives the debit back.
    async fn compensate(
        &self,
        id: &str,
        request: &TransferRequest,
        failure: Box<GatewayFailure>,
    ) -> Result<TransferReply, LedgerError> {
        let code = failure.class.code.to_string();
        let error = LedgerError::IntegrationError {
            transfer: id.to_owned(),
            failure,
        };
        tracing::warn!(error = %error, "gateway failed after the debit; compensating");
        let (tid, message) = (id.to_owned(), error.to_string());
        self.db
            .write("fail_transfer", move |tx| {
                tx.execute(
                    "UPDATE transfers SET error_code = ?1, error_message = ?2 WHERE id = ?3",
                    params![code, message, tid],
                )
                .map_err(LedgerError::db("fail_transfer"))?;
                transition(
                    tx,
                    &tid,
                    Some(TransferState::Executing),
                    TransferState::Failed,
                    Some(&code),
                )?;
                transition(
                    tx,
                    &tid,
                    Some(TransferState::Failed),
                    TransferState::RollingBack,
                    None,
                )
            })
            .await?;
        self.record(id, Some(TransferState::Executing), TransferState::Failed);
        self.record(id, Some(TransferState::Failed), TransferState::RollingBack);
        let reply = self
            .post_compensation(
                id,
                request.from.clone(),
                request.amount,
                error.status().as_u16(),
                error.body(),
            )
            .await?;
        Ok(reply)
    }

    /// ROLLING_BACK -> ROLLED_BACK: the compensating posting, with the stored answer.
    async fn post_compensation(
        &self,
        id: &str,
        from: String,
        amount: i64,
        status: u16,
        error_body: Value,
    ) -> Result<TransferReply, LedgerError> {
        let tid = id.to_owned();
        let reply = self
            .db
            .write("compensate_transfer", move |tx| {
                let txn = ledger::post(
                    tx,
                    TxKind::Compensation,
                    &format!("{tid}:compensation"),
                    &[(SUSPENSE, -amount), (&from, amount)],
                )?;
                tx.execute(
                    "UPDATE transfers SET compensation_txn = ?1 WHERE id = ?2",
                    params![txn, tid],
                )
                .map_err(LedgerError::db("compensate_transfer"))?;
                transition(
                    tx,
                    &tid,
                    Some(TransferState::RollingBack),
                    TransferState::RolledBack,
                    None,
                )?;
                let mut body = error_body.clone();
                body["transfer"] = transfer_body(tx, &tid)?["transfer"].clone();
                store_response(tx, &tid, status, &body)?;
                Ok(TransferReply {
                    status,
                    body,
                    replayed: false,
                })
            })
            .await?;
        self.record(
            id,
            Some(TransferState::RollingBack),
            TransferState::RolledBack,
        );
        Ok(reply)
    }

    /// Finishes transfers a crash left half-done: nothing posted ends FAILED; a debit whose
    /// payment the gateway settled is credited; any other debit is compensated. A transfer
    /// whose gateway look-up fails stays as it is for the next run. Returns how many were
    /// finished.
    pub async fn recover_transfers(&self) -> Result<usize, LedgerError> {
        let stuck: Vec<(String, String, i64, String, String)> = self
            .db
            .read("find_stuck_transfers", |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT id, from_account, amount, to_account, state FROM transfers
                         WHERE response_status IS NULL ORDER BY created_at",
                    )
                    .map_err(LedgerError::db("find_stuck_transfers"))?;
                stmt.query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .and_then(Iterator::collect)
                .map_err(LedgerError::db("find_stuck_transfers"))
            })
            .await?;
        let mut finished = 0;
        for (id, from, amount, to, state) in stuck {
            let request = TransferRequest { from, to, amount };
            let state = TransferState::parse(&state).unwrap_or(TransferState::Failed);
            tracing::warn!(transfer_id = %id, state = state.as_str(), "recovering an interrupted transfer");
            let interrupted = LedgerError::invalid(
                "transfer",
                "interrupted by a restart before any money moved; send it again with a new idempotency key",
            );
            match state {
                TransferState::Created | TransferState::Validated => {
                    let tid = id.clone();
                    self.db
                        .write("recover_transfer", move |tx| {
                            fail_unposted(tx, &tid, state, &interrupted)
                        })
                        .await?;
                    self.record(&id, Some(state), TransferState::Failed);
                }
                TransferState::Executing => match self.gateway.lookup(&id).await {
                    Ok(Some(p)) if p.amount == amount => {
                        self.complete(&id, &request, &p).await?;
                    }
                    Ok(_) => {
                        let failure = Box::new(GatewayFailure {
                            class: palisade::classify::Classification::new(
                                palisade::classify::Transience::Transient,
                                palisade::classify::Category::System,
                                palisade::classify::Severity::Medium,
                                "interrupted",
                            ),
                            detail: "the ledger restarted before the gateway answered".into(),
                            attempts: None,
                            refused: false,
                            message: None,
                            suggestion: None,
                        });
                        self.compensate(&id, &request, failure).await?;
                    }
                    Err(f) => {
                        tracing::error!(transfer_id = %id, code = %f.class.code, "cannot recover yet");
                        continue;
                    }
                },
                TransferState::Failed | TransferState::RollingBack => {
                    let tid = id.clone();
                    if state == TransferState::Failed {
                        self.db
                            .write("recover_transfer", move |tx| {
                                transition(
                                    tx,
                                    &tid,
                                    Some(TransferState::Failed),
                                    TransferState::RollingBack,
                                    None,
                                )
                            })
                            .await?;
                        self.record(&id, Some(TransferState::Failed), TransferState::RollingBack);
                    }
                    let body = json!({ "error": { "code": "interrupted", "message": "the transfer failed and was compensated after a restart" } });
                    self.post_compensation(&id, request.from.clone(), amount, 502, body)
                        .await?;
                }
                TransferState::Completed | TransferState::RolledBack => continue,
            }
            finished += 1;
        }
        Ok(finished)
    }
}
