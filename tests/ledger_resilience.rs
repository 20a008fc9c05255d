//! The wallet ledger example's error classification and its stopgap retry loop (the stand-in
//! for palisade's retry and timeout layers), on tokio's paused clock; and SQLite BUSY from a
//! real lock, classified transient and retried under `database_operation`.
#![cfg(feature = "http")]

#[path = "../examples/ledger/app/mod.rs"]
#[allow(dead_code)]
mod app;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use app::db::{Db, DbConfig};
use app::error::{LedgerError, TxKind, classify_sqlite};
use app::resilience::call_with_policy;
use palisade::classify::{
    Category, Classification, Classified, Classify, Outcome, SelfClassified, Severity, Transience,
};
use palisade::error::TimeoutKind;
use palisade::policy::{Jitter, Policy};
use tokio::time::Instant;

fn policy(max_retries: u32, attempt: Duration, total: Duration) -> Policy {
    let mut p = Policy::builtin("test_operation");
    p.retry.max_retries = max_retries;
    p.retry.base_delay = Duration::from_millis(100);
    p.retry.multiplier = 2.0;
    p.retry.max_delay = Duration::from_secs(1);
    p.retry.jitter = Jitter::None;
    p.timeout.attempt = attempt;
    p.timeout.total = total;
    p
}

fn busy() -> LedgerError {
    LedgerError::DatabaseError {
        operation: "test",
        source: rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ),
    }
}

fn classify(r: Result<&u32, &LedgerError>) -> Outcome {
    SelfClassified.outcome(r)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_the_policy_backoff() {
    let p = policy(3, Duration::from_secs(10), Duration::from_secs(30));
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let done = call_with_policy(&p, classify, |n| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { if n < 4 { Err(busy()) } else { Ok(n) } }
    })
    .await;
    assert_eq!(done.result.unwrap(), 4);
    assert_eq!(done.attempts, 4);
    assert_eq!(done.retried.len(), 3);
    assert!(done.retried.iter().all(|c| c.code == "sqlite_busy"));
    // 100 ms, 200 ms, 400 ms: exactly, on the paused clock.
    assert_eq!(start.elapsed(), Duration::from_millis(700));
}

#[tokio::test(start_paused = true)]
async fn persistent_failures_are_not_retried() {
    let p = policy(3, Duration::from_secs(10), Duration::from_secs(30));
    let start = Instant::now();
    let done = call_with_policy(&p, classify, |_| async {
        Err::<u32, _>(LedgerError::InsufficientFunds {
            account: "carol".into(),
            transaction: TxKind::TransferDebit,
            needed: 10,
            available: 0,
        })
    })
    .await;
    assert_eq!(done.attempts, 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    let class = done.outcome.classification().unwrap();
    assert!(class.is_caller_fault(), "never counts against a breaker");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_policy_limit() {
    let p = policy(2, Duration::from_secs(10), Duration::from_secs(30));
    let done = call_with_policy(&p, classify, |_| async { Err::<u32, _>(busy()) }).await;
    assert_eq!(done.attempts, 3);
    assert!(matches!(done.result, Err(palisade::Error::Inner(_))));
}

#[tokio::test(start_paused = true)]
async fn attempt_and_total_timeouts_bound_the_call() {
    // Attempts of 1 s inside a 3 s budget: 1 s, wait 100 ms, 1 s, wait 200 ms, then only
    // 700 ms are left, so the third attempt is cut by the total timeout.
    let p = policy(5, Duration::from_secs(1), Duration::from_secs(3));
    let start = Instant::now();
    let done = call_with_policy(&p, classify, |_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<u32, LedgerError>(1)
    })
    .await;
    assert_eq!(done.attempts, 3);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    match done.result {
        Err(palisade::Error::Timeout(t)) => {
            assert_eq!(t.kind, TimeoutKind::Total);
            assert_eq!(&*t.operation, "test_operation");
        }
        other => panic!("expected a total timeout, got {other:?}"),
    }
    assert_eq!(done.retried[0].code, "timeout_attempt");
}

#[tokio::test(start_paused = true)]
async fn a_peer_retry_after_is_honoured_up_to_max_delay() {
    let p = policy(1, Duration::from_secs(10), Duration::from_secs(30));
    let start = Instant::now();
    let limited = |r: Result<&u32, &()>| match r {
        Ok(_) => Outcome::Success,
        Err(()) => Outcome::Failure(
            Classification::new(
                Transience::Transient,
                Category::External,
                Severity::Medium,
                "rate_limited",
            )
            .with_retry_after(Duration::from_secs(30)),
        ),
    };
    let done = call_with_policy(&p, limited, |n| async move {
        if n == 1 { Err(()) } else { Ok(n) }
    })
    .await;
    assert_eq!(done.result.unwrap(), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "30 s capped at max_delay"
    );
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

fn temp_file(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("palisade-{name}-{}.db", std::process::id()));
    let path = path.to_string_lossy().into_owned();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    path
}

fn db_policy(max_retries: u32) -> Arc<Policy> {
    let mut p = Policy::builtin("database_operation");
    p.retry.max_retries = max_retries;
    p.retry.base_delay = Duration::from_millis(20);
    p.retry.multiplier = 2.0;
    p.retry.max_delay = Duration::from_millis(500);
    p.retry.jitter = Jitter::None;
    Arc::new(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_from_a_real_lock_is_transient_and_retried() {
    let path = temp_file("ledger-busy");
    let mut config = DbConfig::file(path.clone(), 1);
    config.busy_timeout = Duration::from_millis(1);
    let db = Db::open(config.clone(), db_policy(8)).unwrap();
    let no_retry = Db::open(config, db_policy(0)).unwrap();

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
    drop(Db::open(config.clone(), db_policy(0)).unwrap());

    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        holder.execute_batch("COMMIT").unwrap();
    });
    // The per-query wait is 1 ms, but the schema waits up to the policy's total timeout.
    let db = Db::open(config, db_policy(0)).expect("opens once the lock is released");
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

#[tokio::test(start_paused = true)]
async fn a_disabled_policy_fails_fast_without_calling() {
    let mut p = policy(3, Duration::from_secs(1), Duration::from_secs(3));
    p.enabled = false;
    let calls = AtomicU32::new(0);
    let done = call_with_policy(&p, classify, |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<u32, LedgerError>(1) }
    })
    .await;
    assert_eq!((done.attempts, calls.load(Ordering::SeqCst)), (0, 0));
    assert!(matches!(
        done.result,
        Err(palisade::Error::OperationDisabled(_))
    ));
    assert_eq!(
        done.outcome.classification().unwrap().code,
        "operation_disabled"
    );
}
