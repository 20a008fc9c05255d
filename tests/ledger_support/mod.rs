//! Shared by the `ledger_*` integration tests: starts the example's gateway simulator and
//! ledger on 127.0.0.1, exactly as `cargo run --example ledger` does, with a temporary
//! SQLite file and the example's own policy file (backoff shrunk through the environment
//! overrides palisade supports, so retries take milliseconds).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade::policy::Policies;
use serde_json::{Value, json};

use crate::app::db::DbConfig;
use crate::app::simulator::{Simulator, SimulatorConfig};
use crate::app::{Ledger, LedgerConfig, Server};

/// The example's policy file, with retries fast enough for tests.
pub fn policies() -> Arc<Policies> {
    policies_with(&[])
}

/// The example's policy file, with retries fast enough for tests and `extra` environment
/// overrides (`PALISADE__POLICIES__...`).
pub fn policies_with(extra: &[(&str, &str)]) -> Arc<Policies> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ledger/policies.yaml");
    let mut vars = vec![
        (
            "PALISADE__POLICIES__PAYMENT_GATEWAY__RETRY__BASE_DELAY",
            "1ms",
        ),
        (
            "PALISADE__POLICIES__PAYMENT_GATEWAY__RETRY__MAX_DELAY",
            "4ms",
        ),
        (
            "PALISADE__POLICIES__DATABASE_OPERATION__RETRY__BASE_DELAY",
            "1ms",
        ),
        (
            "PALISADE__POLICIES__DATABASE_OPERATION__RETRY__MAX_DELAY",
            "10ms",
        ),
    ];
    vars.extend_from_slice(extra);
    let policies = Policies::loader()
        .with_env_vars(vars)
        .load_path(path)
        .expect("the example's policy file loads");
    Arc::new(policies)
}

/// A SQLite file in the temp directory, removed (with its WAL) when dropped.
pub struct TempDb {
    pub path: String,
}

impl TempDb {
    pub fn new(name: &str) -> TempDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let file = std::env::temp_dir().join(format!(
            "palisade-{name}-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let path = file.to_string_lossy().into_owned();
        let db = TempDb { path };
        db.remove();
        db
    }

    pub fn config(&self, pool_size: usize) -> DbConfig {
        DbConfig::file(self.path.clone(), pool_size)
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path));
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A running simulator + ledger + HTTP server, and a client for it.
pub struct Harness {
    pub sim: Simulator,
    pub ledger: Arc<Ledger>,
    pub server: Server,
    pub http: reqwest::Client,
}

pub async fn start(sim: SimulatorConfig, db: DbConfig) -> Harness {
    start_with(sim, db, policies()).await
}

/// [`start`] under the given policies.
pub async fn start_with(sim: SimulatorConfig, db: DbConfig, policies: Arc<Policies>) -> Harness {
    let sim = Simulator::start(sim).await.expect("simulator starts");
    let ledger = Ledger::open(LedgerConfig {
        db,
        gateway_url: sim.url(),
        policies,
    })
    .expect("ledger opens");
    ledger.recover().await.expect("recovery runs");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind 127.0.0.1");
    let server = crate::app::serve(Arc::clone(&ledger), listener).expect("server starts");
    Harness {
        sim,
        ledger,
        server,
        http: reqwest::Client::new(),
    }
}

/// A response: status, whether it was an idempotent replay, JSON body.
pub struct Reply {
    pub status: u16,
    pub replayed: bool,
    pub body: Value,
}

impl Harness {
    pub async fn post(&self, path: &str, body: Value, key: Option<&str>) -> Reply {
        let mut req = self
            .http
            .post(format!("{}{path}", self.server.url()))
            .json(&body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let res = req.send().await.expect("the ledger answers");
        let status = res.status().as_u16();
        let replayed = res.headers().contains_key("idempotent-replayed");
        Reply {
            status,
            replayed,
            body: res.json().await.unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        let res = self
            .http
            .get(format!("{}{path}", self.server.url()))
            .send()
            .await
            .expect("the ledger answers");
        Reply {
            status: res.status().as_u16(),
            replayed: false,
            body: res.json().await.unwrap_or(Value::Null),
        }
    }

    pub async fn open(&self, id: &str, balance: i64) {
        let r = self
            .post(
                "/v1/accounts",
                json!({ "id": id, "initial_balance": balance }),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }

    pub async fn balance(&self, id: &str) -> i64 {
        self.ledger
            .account(id)
            .await
            .expect("account exists")
            .balance
    }

    pub async fn transfer(&self, from: &str, to: &str, amount: i64, key: Option<&str>) -> Reply {
        self.post(
            "/v1/transfers",
            json!({ "from": from, "to": to, "amount": amount }),
            key,
        )
        .await
    }

    /// How many postings have this reference (0 or 1 if the unique index holds).
    pub async fn postings(&self, reference: &str) -> i64 {
        let reference = reference.to_owned();
        self.ledger
            .db
            .read("test_postings", move |conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM ledger_transactions WHERE reference = ?1",
                    [&reference],
                    |r| r.get(0),
                )
                .map_err(crate::app::error::LedgerError::db("test_postings"))
            })
            .await
            .expect("query runs")
    }
}
