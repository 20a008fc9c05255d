//! SQLite: a small pool of connections used from tokio's blocking threads, the schema, and
//! the one function every ledger query goes through ([`Db::write`] / [`Db::read`]), which
//! runs it through palisade's stack under the `database_operation` policy: its bulkhead,
//! total timeout, retry, circuit breaker and attempt timeout, all from `policies.yaml`.
//!
//! Writes take the write lock up front (`BEGIN IMMEDIATE`), so two writers never deadlock
//! upgrading a read lock; a writer that waits longer than `busy_timeout` gets `SQLITE_BUSY`,
//! which `LedgerError` classifies as transient / database, so palisade's retry runs it again
//! with the policy's backoff. Business failures (insufficient funds, persistent / business)
//! are answers of a working database: never retried, never counted by the breaker
//! ([`DatabaseFailures`]).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::classify::{Classified, Classify, Outcome};
use palisade::policy::PolicyStore;
use palisade::retry::CloneRequest;
use palisade::stack::{ByName, Resilience, ResilienceLayer, StackHandle};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::error::LedgerError;

/// The policy every query runs under.
pub const DATABASE_OPERATION: &str = "database_operation";

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

/// A pool of SQLite connections behind palisade's stack. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    stack: DbStack,
    handle: StackHandle<DatabaseFailures>,
    pool: Arc<Pool>,
    retries: Arc<AtomicU64>,
}

/// The connections, and one permit per connection.
struct Pool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    config: DbConfig,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.pool.config.path)
            .field("pool_size", &self.pool.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// A query's work, type-erased so one stack serves every query.
type Job = Arc<dyn Fn(&mut Connection) -> Result<Box<dyn Any + Send>, LedgerError> + Send + Sync>;

/// One query through the stack: the retry layer replays it by cloning (the work is an `Arc`,
/// and a failed attempt's transaction was rolled back, so running it again is safe).
#[derive(Clone)]
struct Query {
    operation: &'static str,
    job: Job,
    attempts: Arc<AtomicU32>,
}

/// Runs a [`Query`] on a pooled connection in tokio's blocking pool: the service the stack
/// wraps.
#[derive(Clone)]
struct Runner {
    pool: Arc<Pool>,
}

type Ran = Result<Box<dyn Any + Send>, LedgerError>;

impl Service<Query> for Runner {
    type Response = Box<dyn Any + Send>;
    type Error = LedgerError;
    // An example may box; palisade's own layers use named futures.
    type Future = Pin<Box<dyn Future<Output = Ran> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), LedgerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, query: Query) -> Self::Future {
        query.attempts.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            // The permit and the connection travel with the blocking task, so a caller that
            // gives up (a timeout, a dropped request) cannot leak either.
            let permit = Arc::clone(&pool.permits)
                .acquire_owned()
                .await
                .expect("the pool's semaphore is never closed");
            let joined = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                pool.run(query)
            })
            .await;
            match joined {
                Ok(result) => result,
                // A panic in a query is a bug: let it surface as one.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        })
    }
}

impl Pool {
    fn run(&self, query: Query) -> Ran {
        let mut conn = match self.conns.lock() {
            Ok(mut conns) => conns.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        if conn.is_none() {
            // A connection is lost only when a query panicked; a file database reconnects,
            // an in-memory one cannot without losing every row.
            conn = if self.config.is_memory() {
                None
            } else {
                open_connection(&self.config).ok()
            };
        }
        let result = match conn.as_mut() {
            Some(conn) => (query.job)(conn),
            None => Err(LedgerError::DatabaseError {
                operation: query.operation,
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some("the pooled connection was lost".into()),
                ),
            }),
        };
        if let Some(conn) = conn {
            match self.conns.lock() {
                Ok(mut conns) => conns.push(conn),
                Err(poisoned) => poisoned.into_inner().push(conn),
            }
        }
        result
    }
}

/// How the database stack judges a query: only the database's own errors are failures (each
/// classified by [`classify_sqlite`](super::error::classify_sqlite): busy and locked are
/// transient, so retried; a full disk is persistent). A domain error the query returned
/// (insufficient funds, an idempotency key in use) means the database answered: a success as
/// far as the database's retry and breaker are concerned, handed back to the caller as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct DatabaseFailures;

impl<Res> Classify<Res, LedgerError> for DatabaseFailures {
    fn classify(&self, result: Result<&Res, &LedgerError>) -> Option<Outcome> {
        Some(match result {
            Err(e @ LedgerError::DatabaseError { .. }) => Outcome::Failure(e.classification()),
            Ok(_) | Err(_) => Outcome::Success,
        })
    }
}

/// The whole stack around the runner, every call under `database_operation`.
type DbStack = Resilience<Runner, DatabaseFailures, CloneRequest, ByName>;

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
    /// Opens (and if needed creates) the database; queries run under `store`'s
    /// `database_operation` policy (reload the store to change it).
    pub fn open(config: DbConfig, store: PolicyStore) -> Result<Db, LedgerError> {
        let size = if config.is_memory() {
            1
        } else {
            config.pool_size.max(1)
        };
        let policy = Arc::clone(store.current().for_operation(DATABASE_OPERATION));
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
        let pool = Arc::new(Pool {
            conns: Mutex::new(conns),
            permits: Arc::new(Semaphore::new(size)),
            config,
        });
        // Not an HTTP request: no correlation layer of its own (the caller's ID is in scope).
        let layer = ResilienceLayer::new(store, DatabaseFailures)
            .without_correlation()
            .with_select(ByName::new(DATABASE_OPERATION))
            .with_replay(CloneRequest);
        Ok(Db {
            handle: layer.handle(),
            stack: layer.layer(Runner {
                pool: Arc::clone(&pool),
            }),
            pool,
            retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The stack's per-operation state: the database breaker, bulkhead and retry budget.
    pub fn handle(&self) -> &StackHandle<DatabaseFailures> {
        &self.handle
    }

    /// The database's path.
    pub fn path(&self) -> &str {
        &self.pool.config.path
    }

    /// How many attempts were retried after a transient failure (busy, locked).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
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
        let attempts = Arc::new(AtomicU32::new(0));
        let query = Query {
            operation,
            job: Arc::new(move |conn| f(conn).map(|t| Box::new(t) as Box<dyn Any + Send>)),
            attempts: Arc::clone(&attempts),
        };
        let result = self.stack.clone().oneshot(query).await;
        let retried = attempts.load(Ordering::Relaxed).saturating_sub(1);
        if retried > 0 {
            // The retry layer counts them in `palisade_retry_attempts_total` itself.
            self.retries
                .fetch_add(u64::from(retried), Ordering::Relaxed);
            tracing::warn!(
                operation,
                retried,
                "database attempts retried after transient failures"
            );
        }
        match result {
            Ok(value) => Ok(*value
                .downcast::<T>()
                .expect("a query's stack returns what its work made")),
            Err(e) => Err(LedgerError::from_stack(e)),
        }
    }
}
