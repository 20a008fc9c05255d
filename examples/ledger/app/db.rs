//! SQLite: a small pool of connections used from tokio's blocking threads, the schema, and
//! the one function every ledger query goes through ([`Db::write`] / [`Db::read`]), which
//! runs it under the `database_operation` policy.
//!
//! Writes take the write lock up front (`BEGIN IMMEDIATE`), so two writers never deadlock
//! upgrading a read lock; a writer that waits longer than `busy_timeout` gets `SQLITE_BUSY`,
//! which classifies as transient and is retried with the policy's backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::classify::{Classify, SelfClassified};
use palisade::policy::Policy;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::Semaphore;

use super::error::LedgerError;
use super::resilience::call_with_policy;

/// Where the database lives and how connections behave.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// A file path, or `:memory:` (one connection, gone when the process exits).
    pub path: String,
    /// Connections in the pool (forced to 1 for `:memory:`).
    pub pool_size: usize,
    /// How long SQLite itself waits for a lock before answering `SQLITE_BUSY`.
    pub busy_timeout: Duration,
}

impl DbConfig {
    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// An in-memory database.
    pub fn memory() -> Self {
        DbConfig {
            path: ":memory:".into(),
            pool_size: 1,
            busy_timeout: Duration::from_millis(200),
        }
    }

    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// A file database with `pool_size` connections.
    pub fn file(path: impl Into<String>, pool_size: usize) -> Self {
        DbConfig {
            path: path.into(),
            pool_size,
            busy_timeout: Duration::from_millis(200),
        }
    }

    fn is_memory(&self) -> bool {
        self.path == ":memory:" || self.path.is_empty()
    }
}

/// A pool of SQLite connections. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Mutex<Vec<Connection>>,
    // palisade stack: BulkheadLayer(database_operation.bulkhead) goes here when it lands;
    // until then this semaphore (one permit per connection) is the only admission control.
    permits: Arc<Semaphore>,
    policy: Arc<Policy>,
    retries: AtomicU64,
    config: DbConfig,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.config.path)
            .field("pool_size", &self.inner.permits.available_permits())
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('customer', 'system')),
    balance    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CHECK (kind = 'system' OR balance >= 0)
);
-- One row per balanced posting; the reference is unique, so no posting can happen twice.
CREATE TABLE IF NOT EXISTS ledger_transactions (
    id         INTEGER PRIMARY KEY,
    reference  TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS entries (
    id         INTEGER PRIMARY KEY,
    txn_id     INTEGER NOT NULL REFERENCES ledger_transactions(id),
    account_id TEXT NOT NULL REFERENCES accounts(id),
    amount     INTEGER NOT NULL CHECK (amount <> 0)
);
CREATE INDEX IF NOT EXISTS entries_by_account ON entries(account_id);
CREATE INDEX IF NOT EXISTS entries_by_txn ON entries(txn_id);
CREATE TABLE IF NOT EXISTS transfers (
    id                 TEXT PRIMARY KEY,
    idempotency_key    TEXT UNIQUE,
    fingerprint        TEXT NOT NULL,
    from_account       TEXT NOT NULL,
    to_account         TEXT NOT NULL,
    amount             INTEGER NOT NULL,
    state              TEXT NOT NULL,
    debit_txn          INTEGER REFERENCES ledger_transactions(id),
    credit_txn         INTEGER REFERENCES ledger_transactions(id),
    compensation_txn   INTEGER REFERENCES ledger_transactions(id),
    gateway_payment_id TEXT,
    error_code         TEXT,
    error_message      TEXT,
    response_status    INTEGER,
    response_body      TEXT,
    created_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS transfers_by_state ON transfers(state);
CREATE TABLE IF NOT EXISTS transfer_events (
    id          INTEGER PRIMARY KEY,
    transfer_id TEXT NOT NULL REFERENCES transfers(id),
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    detail      TEXT,
    at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS transfer_events_by_transfer ON transfer_events(transfer_id);
CREATE TABLE IF NOT EXISTS batches (
    id         TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    total      INTEGER NOT NULL,
    checkpoint INTEGER NOT NULL DEFAULT -1,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch_id      TEXT NOT NULL REFERENCES batches(id),
    seq           INTEGER NOT NULL,
    from_account  TEXT NOT NULL,
    to_account    TEXT NOT NULL,
    amount        INTEGER NOT NULL,
    status        TEXT NOT NULL,
    txn_id        INTEGER REFERENCES ledger_transactions(id),
    error_code    TEXT,
    error_message TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, seq)
);
CREATE TABLE IF NOT EXISTS reconciliation_runs (
    id              INTEGER PRIMARY KEY,
    started_at      TEXT NOT NULL,
    finished_at     TEXT NOT NULL,
    ledger_checked  INTEGER NOT NULL,
    gateway_checked INTEGER NOT NULL,
    in_flight       INTEGER NOT NULL,
    discrepancies   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reconciliation_discrepancies (
    run_id         INTEGER NOT NULL REFERENCES reconciliation_runs(id),
    reference      TEXT NOT NULL,
    kind           TEXT NOT NULL,
    ledger_amount  INTEGER,
    gateway_amount INTEGER,
    detail         TEXT NOT NULL
);
INSERT OR IGNORE INTO accounts (id, name, kind) VALUES
    ('world', 'Money from outside the ledger', 'system'),
    ('suspense:gateway', 'Transfers in flight at the payment gateway', 'system');
"#;

fn open_connection(config: &DbConfig) -> Result<Connection, LedgerError> {
    let conn = Connection::open(&config.path).map_err(LedgerError::db("open_database"))?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(LedgerError::db("open_database"))?;
    if !config.is_memory() {
        // WAL: readers do not block the writer, and a crash loses no committed transaction.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(LedgerError::db("open_database"))?;
    }
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
        .map_err(LedgerError::db("open_database"))?;
    Ok(conn)
}

impl Db {
    /// Opens (and if needed creates) the database; queries run under `policy`
    /// (`database_operation`).
    pub fn open(config: DbConfig, policy: Arc<Policy>) -> Result<Db, LedgerError> {
        let size = if config.is_memory() {
            1
        } else {
            config.pool_size.max(1)
        };
        let first = open_connection(&config)?;
        // Another process may hold the lock while we start: wait for it up to the policy's
        // total timeout (once, at start), then go back to the short per-query wait.
        let wait = policy.timeout.total.max(config.busy_timeout);
        first
            .busy_timeout(wait)
            .and_then(|()| first.execute_batch(SCHEMA))
            .and_then(|()| first.busy_timeout(config.busy_timeout))
            .map_err(LedgerError::db("migrate"))?;
        let mut conns = vec![first];
        for _ in 1..size {
            conns.push(open_connection(&config)?);
        }
        Ok(Db {
            inner: Arc::new(Inner {
                conns: Mutex::new(conns),
                permits: Arc::new(Semaphore::new(size)),
                policy,
                retries: AtomicU64::new(0),
                config,
            }),
        })
    }

    // Used by tests/ledger_*.rs, not by the binary.
    #[allow(dead_code)]
    /// The policy queries run under.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.inner.policy
    }

    /// The database's path.
    pub fn path(&self) -> &str {
        &self.inner.config.path
    }

    /// How many attempts were retried after a transient failure (busy, locked).
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`), committed if `f` returns `Ok`.
    /// Transient failures (busy, locked) are retried under the policy, so `f` must be safe to
    /// run again: it is, because a failed attempt's transaction is rolled back.
    pub async fn write<T, F>(&self, operation: &'static str, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: Fn(&Transaction<'_>) -> Result<T, LedgerError> + Send + Sync + 'static,
    {
        self.run(operation, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(LedgerError::db(operation))?;
            let value = f(&tx)?;
            tx.commit().map_err(LedgerError::db(operation))?;
            Ok(value)
        })
        .await
    }

    /// Runs a read-only `f` on a pooled connection, under the policy.
    pub async fn read<T, F>(&self, operation: &'static str, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> Result<T, LedgerError> + Send + Sync + 'static,
    {
        self.run(operation, move |conn| f(conn)).await
    }

    async fn run<T, F>(&self, operation: &'static str, f: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: Fn(&mut Connection) -> Result<T, LedgerError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let inner = &self.inner;
        // palisade stack: RetryLayer(database_operation.retry, SelfClassified) and the
        // TimeoutLayers go here when they land, replacing `call_with_policy` (temporary).
        let attempted = call_with_policy(
            &inner.policy,
            |r: Result<&T, &LedgerError>| SelfClassified.outcome(r),
            |_attempt| {
                let f = Arc::clone(&f);
                let inner = Arc::clone(inner);
                async move {
                    // The permit and the connection travel with the blocking task, so a
                    // caller that gives up (a timeout, a dropped request) cannot leak either.
                    let permit = Arc::clone(&inner.permits)
                        .acquire_owned()
                        .await
                        .expect("the pool's semaphore is never closed");
                    let joined = tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        let mut conn = match inner.conns.lock() {
                            Ok(mut conns) => conns.pop(),
                            Err(poisoned) => poisoned.into_inner().pop(),
                        };
                        if conn.is_none() {
                            // A connection is lost only when a query panicked; a file database
                            // reconnects, an in-memory one cannot without losing every row.
                            conn = if inner.config.is_memory() {
                                None
                            } else {
                                open_connection(&inner.config).ok()
                            };
                        }
                        let result = match conn.as_mut() {
                            Some(conn) => f(conn),
                            None => Err(LedgerError::DatabaseError {
                                operation,
                                source: rusqlite::Error::SqliteFailure(
                                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                                    Some("the pooled connection was lost".into()),
                                ),
                            }),
                        };
                        if let Some(conn) = conn {
                            match inner.conns.lock() {
                                Ok(mut conns) => conns.push(conn),
                                Err(poisoned) => poisoned.into_inner().push(conn),
                            }
                        }
                        result
                    })
                    .await;
                    match joined {
                        Ok(result) => result,
                        // A panic in a query is a bug: let it surface as one.
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                }
            },
        )
        .await;
        if !attempted.retried.is_empty() {
            inner
                .retries
                .fetch_add(attempted.retried.len() as u64, Ordering::Relaxed);
        }
        attempted.result.map_err(|e| match e {
            palisade::Error::Inner(e) => e,
            palisade::Error::Timeout(t) => LedgerError::Timeout(t),
            palisade::Error::OperationDisabled(d) => LedgerError::Disabled(d),
            other => LedgerError::invalid("operation", other.to_string()),
        })
    }
}
