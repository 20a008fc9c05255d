//! The wallet ledger example's resilience wiring: every `LedgerError`'s classification and
//! HTTP status; SQLite BUSY from a real lock, transient and retried by palisade's retry under
//! `database_operation`; and the database stack's breaker, which counts only the database's
//! own failures (a domain error such as insufficient funds is an answer, not a failure), its
//! kill switch and its timeout.
#![cfg(feature = "http")]

#[path = "../examples/ledger/app/mod.rs"]
#[allow(dead_code)]
mod app;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use app::db::{DATABASE_OPERATION, Db, DbConfig};
use app::error::{LedgerError, TxKind, classify_sqlite};
use palisade::circuit_breaker::CircuitState;
use palisade::classify::{Category, Classified, Severity, Transience};
use palisade::error::TimeoutKind;
use palisade::policy::{Policies, PolicyStore};

fn busy() -> LedgerError {
    LedgerError::DatabaseError {
        operation: "test",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ),
    }
}

fn corrupt() -> LedgerError {
    LedgerError::DatabaseError {
        operation: "test",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        ),
    }
}

/// A store whose `database_operation` is `section` (YAML flow mapping).
fn store(section: &str) -> PolicyStore {
    let yaml = format!("policies:\n  {DATABASE_OPERATION}: {section}\n");
    PolicyStore::new(Policies::from_yaml_str(&yaml).expect("test policy parses"))
}

fn db_store(max_retries: u32) -> PolicyStore {
    store(&format!(
        "{{ retry: {{ max_retries: {max_retries}, base_delay: 20ms, multiplier: 2.0, max_delay: 500ms, jitter: none }}, circuit_breaker: {{ consecutive_failures: 0 }} }}"
    ))
}

#[test]
fn every_ledger_error_classifies_with_its_http_status() {
    use Category::*;
    use Severity::*;
    use Transience::*;
    type Row = (Transience, Category, Severity, &'static str);
    let cases: Vec<(LedgerError, Row, u16)> = vec![
        (
            LedgerError::InsufficientFunds {
                account: "a".into(),
                transaction: TxKind::TransferDebit,
                needed: 2,
                available: 1,
            },
            (Persistent, Business, Low, "insufficient_funds"),
            422,
        ),
        (
            LedgerError::AccountNotFound {
                account: "a".into(),
                transaction: "transfer",
            },
            (Persistent, User, Low, "account_not_found"),
            404,
        ),
        (
            LedgerError::invalid("amount", "negative"),
            (Persistent, User, Low, "invalid_entry"),
            400,
        ),
        (busy(), (Transient, Database, Medium, "sqlite_busy"), 503),
        (
            LedgerError::DatabaseError {
                operation: "t",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED),
                    None,
                ),
            },
            (Transient, Database, Medium, "sqlite_locked"),
            503,
        ),
        (
            LedgerError::DatabaseError {
                operation: "t",
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                    None,
                ),
            },
            (Persistent, Database, High, "sqlite_constraint"),
            500,
        ),
        (
            LedgerError::IdempotencyConflict { key: "k".into() },
            (Persistent, User, Low, "idempotency_conflict"),
            422,
        ),
        (
            LedgerError::IdempotencyInProgress { key: "k".into() },
            (Transient, User, Low, "idempotency_in_progress"),
            409,
        ),
        (
            LedgerError::ShuttingDown,
            (Transient, System, Low, "shutting_down"),
            503,
        ),
        (
            LedgerError::CircuitOpen(palisade::error::CircuitOpen {
                breaker: "payment_gateway/127.0.0.1:9".into(),
                retry_after: Duration::from_secs(2),
            }),
            (Transient, External, Medium, "circuit_open"),
            503,
        ),
    ];
    for (err, (t, c, s, code), status) in cases {
        let class = err.classification();
        assert_eq!(
            (
                class.transience,
                class.category,
                class.severity,
                class.code.as_str()
            ),
            (t, c, s, code),
            "{err}"
        );
        assert_eq!(err.status().as_u16(), status, "{err}");
        assert_eq!(err.body()["error"]["code"], code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_errors_are_answers_never_retried_nor_counted_by_the_database_breaker() {
    let db = Db::open(
        DbConfig::memory(),
        store("{ circuit_breaker: { consecutive_failures: 2 } }"),
    )
    .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    for _ in 0..5 {
        let runs = Arc::clone(&runs);
        let err = db
            .write("debit", move |_tx| -> Result<(), LedgerError> {
                runs.fetch_add(1, Ordering::SeqCst);
                Err(LedgerError::InsufficientFunds {
                    account: "carol".into(),
                    transaction: TxKind::TransferDebit,
                    needed: 10,
                    available: 0,
                })
            })
            .await
            .expect_err("the query refuses");
        assert!(
            matches!(err, LedgerError::InsufficientFunds { .. }),
            "{err}"
        );
    }
    // A transient domain error (a key in use) is not the database's contention either.
    let in_progress = db
        .read("begin", |_conn| -> Result<(), LedgerError> {
            Err(LedgerError::IdempotencyInProgress { key: "k".into() })
        })
        .await
        .expect_err("in progress");
    assert!(matches!(
        in_progress,
        LedgerError::IdempotencyInProgress { .. }
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 5, "each ran once");
    assert_eq!(db.retries(), 0, "nothing retried");
    let breaker = db.handle().breaker(DATABASE_OPERATION).expect("a breaker");
    let m = breaker.metrics();
    assert_eq!((m.state, m.failures), (CircuitState::Closed, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_database_opens_its_breaker_and_later_queries_fail_fast() {
    let db = Db::open(
        DbConfig::memory(),
        store("{ retry: { max_retries: 0 }, circuit_breaker: { consecutive_failures: 3, open_timeout: 1m } }"),
    )
    .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let query = |runs: Arc<AtomicU32>| {
        move |_conn: &rusqlite::Connection| -> Result<(), LedgerError> {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(corrupt())
        }
    };
    for _ in 0..3 {
        let err = db.read("scan", query(Arc::clone(&runs))).await.unwrap_err();
        assert_eq!(err.classification().code, "sqlite_corrupt");
    }
    let refused = db.read("scan", query(Arc::clone(&runs))).await.unwrap_err();
    assert!(matches!(refused, LedgerError::CircuitOpen(_)), "{refused}");
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.classification().retry_after.is_some());
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the refused query never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_database_errors_are_retried_up_to_the_policy_limit() {
    let db = Db::open(DbConfig::memory(), db_store(3)).unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let err = db
        .read("scan", move |_conn| -> Result<(), LedgerError> {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(busy())
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.classification().code,
        "sqlite_busy",
        "the last attempt's error"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4, "1 + max_retries attempts");
    assert_eq!(db.retries(), 3);

    // A persistent one is not retried.
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let err = db
        .read("scan", move |_conn| -> Result<(), LedgerError> {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(corrupt())
        })
        .await
        .unwrap_err();
    assert_eq!(err.classification().code, "sqlite_corrupt");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_kill_switch_and_timeout_come_from_the_policy() {
    let off = Db::open(DbConfig::memory(), store("{ enabled: false }")).unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let err = off
        .read("scan", move |_conn| -> Result<(), LedgerError> {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::Disabled(_)), "{err}");
    assert_eq!(err.status().as_u16(), 503);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "never ran");

    // A query slower than the total timeout is answered with a timeout (it finishes in the
    // blocking pool, holding its connection, and its result is dropped).
    let slow = Db::open(
        DbConfig::memory(),
        store("{ timeout: { total: 50ms, attempt: 50ms }, retry: { max_retries: 0 } }"),
    )
    .unwrap();
    let err = slow
        .read("scan", |_conn| -> Result<(), LedgerError> {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        })
        .await
        .unwrap_err();
    match &err {
        LedgerError::Timeout(t) => {
            assert!(matches!(t.kind, TimeoutKind::Total | TimeoutKind::Attempt));
            assert_eq!(&*t.operation, DATABASE_OPERATION);
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(err.status().as_u16(), 504);
}

fn temp_file(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("palisade-{name}-{}.db", std::process::id()));
    let path = path.to_string_lossy().into_owned();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_from_a_real_lock_is_transient_and_retried() {
    let path = temp_file("ledger-busy");
    let mut config = DbConfig::file(path.clone(), 1);
    config.busy_timeout = Duration::from_millis(1);
    let db = Db::open(config.clone(), db_store(8)).unwrap();
    let no_retry = Db::open(config, db_store(0)).unwrap();

    // Another process holds the write lock.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    // Without retries, the write fails with BUSY: transient, database, a 503.
    let err = no_retry
        .write("create_account", |tx| {
            app::ledger::create_account(tx, "bob", "Bob", 0)
        })
        .await
        .expect_err("the lock is held");
    let class = err.classification();
    assert_eq!(
        (class.transience, class.category),
        (Transience::Transient, Category::Database)
    );
    assert_eq!(class.code, "sqlite_busy");
    assert_eq!(err.status().as_u16(), 503);
    assert_eq!(no_retry.retries(), 0);

    // With retries, the write waits out the lock: release it from another thread shortly.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        holder.execute_batch("COMMIT").unwrap();
    });
    let account = db
        .write("create_account", |tx| {
            app::ledger::create_account(tx, "alice", "Alice", 500)
        })
        .await
        .expect("the write succeeds once the lock is released");
    release.join().unwrap();
    assert_eq!(account.balance, 500);
    assert!(db.retries() >= 1, "at least one BUSY was retried");

    // classify_sqlite on the raw error agrees.
    let raw =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(classify_sqlite(&raw).is_transient());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_waits_for_a_lock_held_elsewhere() {
    let path = temp_file("ledger-open-locked");
    let mut config = DbConfig::file(path.clone(), 1);
    config.busy_timeout = Duration::from_millis(1);
    drop(Db::open(config.clone(), db_store(0)).unwrap());

    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        holder.execute_batch("COMMIT").unwrap();
    });
    // The per-query wait is 1 ms, but the schema waits up to the policy's total timeout.
    let db = Db::open(config, db_store(0)).expect("opens once the lock is released");
    release.join().unwrap();
    let n: i64 = db
        .read("test", |conn| {
            conn.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
                .map_err(LedgerError::db("test"))
        })
        .await
        .unwrap();
    assert_eq!(n, 2, "the system accounts exist");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
}
