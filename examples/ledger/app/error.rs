//! The ledger's domain errors: what went wrong, with the context an operator needs (account,
//! entry, transaction type), and how palisade should count it.
//!
//! Every variant implements [`Classified`], so the same verdict drives the HTTP status, the
//! retry decision (only transient failures are retried) and whether a failure counts against
//! a circuit breaker (a declined card or insufficient funds never does: they are the
//! caller's, not the system's). The database stack sees these through
//! [`DatabaseFailures`](super::db::DatabaseFailures), which counts only SQLite's own errors.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use palisade::classify::{Category, Classification, Classified, Severity, Transience};
use palisade::error::{BulkheadFull, CircuitOpen, OperationDisabled, TimeoutError};
use rusqlite::ErrorCode;
use serde_json::json;

use super::gateway::GatewayFailure;

/// The kind of ledger transaction an error happened in, for logs and error bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    /// Money entering the ledger from outside (an account's opening balance).
    Deposit,
    /// The debit leg of a transfer: source account to the gateway suspense account.
    TransferDebit,
    /// The credit leg of a transfer: suspense account to the destination.
    TransferCredit,
    /// Undoing a transfer's debit after the gateway failed.
    Compensation,
    /// One item of a batch, posted source to destination in one step.
    BatchItem,
}

impl TxKind {
    /// The name stored in `ledger_transactions.kind` and shown in errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            TxKind::Deposit => "deposit",
            TxKind::TransferDebit => "transfer_debit",
            TxKind::TransferCredit => "transfer_credit",
            TxKind::Compensation => "compensation",
            TxKind::BatchItem => "batch_item",
        }
    }
}

impl std::fmt::Display for TxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A debit would take a customer account below zero.
    #[error(
        "insufficient funds in account `{account}` for {transaction}: needed {needed}, available {available}"
    )]
    InsufficientFunds {
        /// The account that would go negative.
        account: String,
        /// What was being posted.
        transaction: TxKind,
        /// The amount of the debit, in minor units.
        needed: i64,
        /// The balance at the time, in minor units.
        available: i64,
    },
    /// An account named in a request or entry does not exist.
    #[error("account `{account}` not found ({transaction})")]
    AccountNotFound {
        /// The missing account.
        account: String,
        /// What was being done: `transfer`, `lookup`, `batch_item`...
        transaction: &'static str,
    },
    /// An entry or request is malformed: zero or negative amount, unbalanced legs, same account.
    #[error("invalid entry{}: {field}: {reason}", entry.as_ref().map(|e| format!(" `{e}`")).unwrap_or_default())]
    InvalidEntry {
        /// The entry (transfer id, batch item) if there is one yet.
        entry: Option<String>,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// SQLite failed; the source error is kept for its code (busy, locked, constraint...).
    #[error("database error during {operation}: {source}")]
    DatabaseError {
        /// The ledger operation (`post_transfer`, `create_account`...).
        operation: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The payment gateway failed a transfer (after the retries its policy allows).
    #[error("payment gateway failed for transfer `{transfer}`: {}", failure.detail)]
    IntegrationError {
        /// The transfer, which is also the payment's reference at the gateway.
        transfer: String,
        /// How it failed: classification (`gateway_card_declined`, `http_503`...), what the
        /// gateway said, attempts, and the code table's message and suggestion.
        failure: Box<GatewayFailure>,
    },
    /// An idempotency key was reused with a different request body.
    #[error("idempotency key `{key}` was already used for a different request")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// The first request with this idempotency key has not finished yet.
    #[error("the request with idempotency key `{key}` is still in progress")]
    IdempotencyInProgress {
        /// The key.
        key: String,
    },
    /// The operation's policy has `enabled: false` (a kill switch, e.g. for the gateway).
    #[error(transparent)]
    Disabled(#[from] OperationDisabled),
    /// The server is stopping and did not run the request.
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// A database operation ran out of its policy's total time.
    #[error(transparent)]
    Timeout(#[from] TimeoutError),
    /// A circuit breaker refused the call before it was made: the payment gateway's (a
    /// transfer is then refused before its debit) or the database's.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    /// The database's bulkhead shed the call (too many queries queued).
    #[error(transparent)]
    BulkheadFull(#[from] BulkheadFull),
}

impl LedgerError {
    /// Wraps a SQLite error with the operation it interrupted.
    pub fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> LedgerError + Copy {
        move |source| LedgerError::DatabaseError { operation, source }
    }

    /// What a query's trip through palisade's stack ended in: the query's own error (looking
    /// through the retry context), or the refusal of a layer (timeout, open breaker, full
    /// bulkhead, kill switch).
    pub fn from_stack(error: palisade::Error<LedgerError>) -> LedgerError {
        match error.into_inner() {
            Ok(e) => e,
            Err(palisade::Error::Timeout(t)) => LedgerError::Timeout(t),
            Err(palisade::Error::OperationDisabled(d)) => LedgerError::Disabled(d),
            Err(palisade::Error::CircuitOpen(o)) => LedgerError::CircuitOpen(o),
            Err(palisade::Error::BulkheadFull(b)) => LedgerError::BulkheadFull(b),
            // `into_inner` looks through the retry context, so only a variant palisade adds
            // later lands here.
            Err(other) => LedgerError::invalid("operation", other.to_string()),
        }
    }

    /// An invalid-entry error.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> LedgerError {
        LedgerError::InvalidEntry {
            entry: None,
            field,
            reason: reason.into(),
        }
    }

    /// The HTTP status a handler answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            LedgerError::InsufficientFunds { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            LedgerError::AccountNotFound { .. } => StatusCode::NOT_FOUND,
            LedgerError::InvalidEntry { .. } => StatusCode::BAD_REQUEST,
            LedgerError::IdempotencyConflict { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            LedgerError::IdempotencyInProgress { .. } => StatusCode::CONFLICT,
            LedgerError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            LedgerError::ShuttingDown
            | LedgerError::Disabled(_)
            | LedgerError::CircuitOpen(_)
            | LedgerError::BulkheadFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            LedgerError::DatabaseError { .. } if self.classification().is_transient() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LedgerError::DatabaseError { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            LedgerError::IntegrationError { failure, .. } if failure.class.is_caller_fault() => {
                StatusCode::PAYMENT_REQUIRED
            }
            LedgerError::IntegrationError { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The JSON error body: code, message and classification, never internal paths or SQL.
    pub fn body(&self) -> serde_json::Value {
        let class = self.classification();
        let mut error = json!({
            "code": class.code.as_str(),
            "message": self.to_string(),
            "transience": class.transience.as_str(),
            "category": class.category.as_str(),
            "severity": class.severity.as_str(),
        });
        if let Some(after) = class.retry_after {
            error["retry_after_ms"] = json!(after.as_millis() as u64);
        }
        match self {
            LedgerError::InsufficientFunds {
                account,
                needed,
                available,
                ..
            } => {
                error["account"] = json!(account);
                error["needed"] = json!(needed);
                error["available"] = json!(available);
            }
            LedgerError::AccountNotFound { account, .. } => error["account"] = json!(account),
            LedgerError::IntegrationError { transfer, failure } => {
                error["transfer_id"] = json!(transfer);
                if let Some(attempts) = failure.attempts {
                    error["attempts"] = json!(attempts);
                }
                if failure.refused {
                    error["refused_by"] = json!("palisade");
                }
                if let Some(m) = &failure.message {
                    error["user_message"] = json!(m);
                }
                if let Some(s) = &failure.suggestion {
                    error["suggestion"] = json!(s);
                }
            }
            _ => {}
        }
        json!({ "error": error })
    }
}

/// How a SQLite error classifies: busy and locked are worth another attempt, a constraint or
/// a full disk is not.
pub fn classify_sqlite(err: &rusqlite::Error) -> Classification {
    use Category::Database;
    use Severity::*;
    use Transience::*;
    let Some(code) = err.sqlite_error_code() else {
        // Not an error SQLite returned: a wrong column type, no rows where one was expected.
        return Classification::new(Persistent, Category::Application, High, "sqlite_usage");
    };
    let (transience, severity, name) = match code {
        ErrorCode::DatabaseBusy => (Transient, Medium, "sqlite_busy"),
        ErrorCode::DatabaseLocked => (Transient, Medium, "sqlite_locked"),
        ErrorCode::ConstraintViolation => (Persistent, High, "sqlite_constraint"),
        ErrorCode::DiskFull => (Persistent, Critical, "sqlite_disk_full"),
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
            (Persistent, Critical, "sqlite_corrupt")
        }
        ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied => {
            (Persistent, Critical, "sqlite_cannot_write")
        }
        ErrorCode::SystemIoFailure => (Unknown, High, "sqlite_io"),
        _ => (Unknown, High, "sqlite_other"),
    };
    Classification::new(transience, Database, severity, name)
}

impl Classified for LedgerError {
    fn classification(&self) -> Classification {
        use Category::*;
        use Severity::*;
        use Transience::*;
        match self {
            // The customer's problem: never retried, never trips the breaker.
            LedgerError::InsufficientFunds { .. } => {
                Classification::new(Persistent, Business, Low, "insufficient_funds")
            }
            LedgerError::AccountNotFound { .. } => {
                Classification::new(Persistent, User, Low, "account_not_found")
            }
            LedgerError::InvalidEntry { .. } => {
                Classification::new(Persistent, User, Low, "invalid_entry")
            }
            LedgerError::IdempotencyConflict { .. } => {
                Classification::new(Persistent, User, Low, "idempotency_conflict")
            }
            // The first request will finish: asking again shortly is right.
            LedgerError::IdempotencyInProgress { .. } => {
                Classification::new(Transient, User, Low, "idempotency_in_progress")
                    .with_retry_after(Duration::from_secs(1))
            }
            LedgerError::DatabaseError { source, .. } => classify_sqlite(source),
            LedgerError::IntegrationError { failure, .. } => failure.class.clone(),
            LedgerError::Timeout(e) => e.classification(),
            LedgerError::Disabled(e) => e.classification(),
            LedgerError::CircuitOpen(e) => e.classification(),
            LedgerError::BulkheadFull(e) => e.classification(),
            LedgerError::ShuttingDown => {
                Classification::new(Transient, System, Low, "shutting_down")
            }
        }
    }
}

impl IntoResponse for LedgerError {
    fn into_response(self) -> Response {
        let class = self.classification();
        if class.severity <= Severity::High {
            tracing::error!(error = %self, code = %class.code, "request failed");
        } else {
            tracing::info!(error = %self, code = %class.code, "request refused");
        }
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Some(after) = class.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
