//! The wallet ledger service: everything but the command line, so the integration tests in
//! `tests/ledger_*.rs` run the same code as `cargo run --example ledger`.
//!
//! | module | what it is |
//! |---|---|
//! | [`db`] | SQLite pool, schema, every query through palisade's stack under `database_operation` |
//! | [`error`] | `LedgerError`, classified for palisade |
//! | [`ledger`] | double-entry postings, accounts, the invariant check |
//! | [`transfers`] | the transfer saga: states, compensation, idempotency, crash recovery |
//! | [`gateway`] | the payment-gateway client (palisade's `ResilientClient`, per-host breakers, correlation IDs) |
//! | [`simulator`] | the payment-gateway simulator on 127.0.0.1 |
//! | [`reconcile`] | ledger against gateway, reported, never corrected |
//! | [`batch`] | checkpointed batch posting, resume, operator replay |
//! | [`routes`] | the axum router, behind palisade's stack (`route_layer`, problem+json) |
//! | [`observe`] | correlation IDs, error metrics, Prometheus, health, JSON logs |
//! | [`ids`] | a seedable generator for ids and the simulator's faults |

pub mod batch;
pub mod db;
pub mod error;
pub mod gateway;
pub mod ids;
pub mod ledger;
pub mod observe;
pub mod reconcile;
pub mod routes;
pub mod simulator;
pub mod transfers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade::classify::CodeTable;
use palisade::policy::{Policies, PolicyStore};

use db::{Db, DbConfig};
use error::LedgerError;
use gateway::GatewayClient;
use ids::SplitMix64;
use transfers::TransferState;

/// What the ledger needs to start.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// The database.
    pub db: DbConfig,
    /// The payment gateway's base URL.
    pub gateway_url: String,
    /// The resolved policy table (`policies.yaml`).
    pub policies: Arc<Policies>,
}

/// Counters of what the ledger did, served at `/metrics` and printed by the demo.
#[derive(Debug, Default)]
pub struct Counters {
    transitions: [AtomicU64; 7],
    replays: AtomicU64,
    refused: AtomicU64,
    reconciliation_runs: AtomicU64,
    discrepancies: AtomicU64,
    batch_posted: AtomicU64,
    batch_failed: AtomicU64,
}

impl Counters {
    fn transition(&self, to: TransferState) {
        self.transitions[to.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn replay(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn reconciled(&self, discrepancies: u64) {
        self.reconciliation_runs.fetch_add(1, Ordering::Relaxed);
        self.discrepancies
            .fetch_add(discrepancies, Ordering::Relaxed);
    }

    fn batch_item(&self, posted: bool) {
        let c = if posted {
            &self.batch_posted
        } else {
            &self.batch_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Transitions into `state` so far.
    pub fn transitions(&self, state: TransferState) -> u64 {
        self.transitions[state.index()].load(Ordering::Relaxed)
    }

    /// Idempotent replays served.
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// Transfers refused before their debit because the gateway was switched off or its
    /// breaker was open.
    pub fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Reconciliation runs and discrepancies found, in total.
    pub fn reconciliation(&self) -> (u64, u64) {
        (
            self.reconciliation_runs.load(Ordering::Relaxed),
            self.discrepancies.load(Ordering::Relaxed),
        )
    }

    /// Batch items posted and failed, in total.
    pub fn batch_items(&self) -> (u64, u64) {
        (
            self.batch_posted.load(Ordering::Relaxed),
            self.batch_failed.load(Ordering::Relaxed),
        )
    }
}

/// The ledger: database, gateway client, policies, counters.
#[derive(Debug)]
pub struct Ledger {
    /// The database.
    pub db: Db,
    /// The payment gateway client.
    pub gateway: GatewayClient,
    /// The policy table every stack of the ledger runs under (database, gateway, HTTP
    /// routes); reloading it changes them all.
    pub store: PolicyStore,
    /// What happened so far.
    pub counters: Counters,
    ids: SplitMix64,
}

impl Ledger {
    /// Opens the database (creating the schema) and builds the gateway client. Does not
    /// recover anything: call [`Ledger::recover`] once before serving.
    ///
    /// Installs the process's Prometheus recorder first ([`observe::prometheus`]): palisade's
    /// layers register their series with the recorder in force when they are built, and the
    /// database and gateway stacks are built here (a layer built earlier would record
    /// nothing for its whole life).
    pub fn open(config: LedgerConfig) -> Result<Arc<Ledger>, LedgerError> {
        if observe::prometheus().is_none() {
            tracing::warn!(
                "another metrics recorder is installed: /metrics shows domain counters only"
            );
        }
        let store = PolicyStore::new(Policies::clone(&config.policies));
        let db = Db::open(config.db, store.clone())?;
        let table = config
            .policies
            .error_codes("gateway")
            .cloned()
            .unwrap_or_else(|| Arc::new(CodeTable::new("gateway")));
        let gateway = GatewayClient::new(&config.gateway_url, store.clone(), table);
        Ok(Arc::new(Ledger {
            db,
            gateway,
            store,
            counters: Counters::default(),
            ids: SplitMix64::from_entropy(),
        }))
    }

    /// Finishes what a crash interrupted: half-done transfers, then unfinished batches.
    pub async fn recover(&self) -> Result<(usize, Vec<String>), LedgerError> {
        let transfers = self.recover_transfers().await?;
        let batches = self.resume_batches().await?;
        Ok((transfers, batches))
    }

    /// Opens a customer account funded with `initial_balance` from `world`.
    pub async fn create_account(
        &self,
        id: Option<String>,
        name: Option<String>,
        initial_balance: i64,
    ) -> Result<ledger::Account, LedgerError> {
        let id = id.unwrap_or_else(|| format!("acc_{:012x}", self.ids.next_u64() >> 16));
        let name = name.unwrap_or_else(|| id.clone());
        let account = self
            .db
            .write("create_account", move |tx| {
                ledger::create_account(tx, &id, &name, initial_balance)
            })
            .await?;
        tracing::info!(account = %account.id, balance = account.balance, "account opened");
        Ok(account)
    }

    /// Reads an account.
    pub async fn account(&self, id: &str) -> Result<ledger::Account, LedgerError> {
        let id = id.to_owned();
        self.db
            .read("get_account", move |conn| {
                ledger::get_account(conn, &id, "lookup")
            })
            .await
    }

    /// Reads a transfer.
    pub async fn get_transfer(&self, id: &str) -> Result<Option<transfers::Transfer>, LedgerError> {
        let id = id.to_owned();
        self.db
            .read("get_transfer", move |conn| {
                transfers::get_transfer(conn, &id)
            })
            .await
    }

    /// Checks every invariant of the books.
    pub async fn check(&self) -> Result<ledger::LedgerCheck, LedgerError> {
        self.db.read("check_ledger", ledger::check).await
    }
}

/// A running ledger HTTP server. Stops abruptly when dropped; [`Server::shutdown`] stops it
/// gracefully.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    breakers: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for the requests in flight to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.breakers.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        self.breakers.abort();
    }
}

/// Serves the ledger's router on `listener` until the returned server is dropped.
pub fn serve(ledger: Arc<Ledger>, listener: tokio::net::TcpListener) -> std::io::Result<Server> {
    let addr = listener.local_addr()?;
    let breakers = observe::watch_breakers(&ledger);
    let router = routes::router(ledger);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let graceful = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = graceful.await {
            tracing::error!(error = %e, "ledger server stopped");
        }
    });
    Ok(Server {
        addr,
        task,
        breakers,
        stop: Some(stop),
    })
}
