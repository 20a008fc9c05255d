//! What the ledger tells its operators: correlation IDs, error metrics, Prometheus, health.
//!
//! - **Correlation**: the API's `ResilienceLayer` (in [`routes`](super::routes)) takes
//!   `x-request-id` (or makes a UUIDv7), echoes it, puts it in its problem+json bodies, and
//!   opens a `request` span with `correlation_id`, so every JSON log line of the request carries
//!   it. Work a request hands to another task keeps it (`palisade::correlation::spawn` in
//!   `routes::detached`), and the gateway client puts it on its calls
//!   (`PropagateCorrelationLayer`, in [`gateway`](super::gateway)).
//! - **Metrics**: each of the ledger's three stacks counts its calls by operation and outcome
//!   (`palisade_requests_total`), times them, and counts failures by classification; their
//!   retry, timeout, bulkhead and breaker layers record their own series. The Prometheus
//!   recorder is installed by [`Ledger::open`](super::Ledger::open) before any stack is built
//!   (the layers register their series when built) and renders them at `/metrics`, followed
//!   by the ledger's domain counters.
//! - **Health**: `/health/live` and `/health/ready` from `palisade::health`: a database check
//!   (`SELECT 1` through the database stack) and the circuit breakers (degraded while one is
//!   open, so readiness stays 200 and the service keeps answering, fast).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use palisade::health::{Check, HealthRegistry, breaker_health};

use super::Ledger;
use super::db::DATABASE_OPERATION;
use super::error::LedgerError;
use super::gateway::{PAY, READ};
use super::transfers::TransferState;

/// Histogram buckets for calls that move money, in seconds: 1 ms to 30 s.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's Prometheus recorder, installed on first use (a process has one metrics
/// recorder; the tests start several ledgers in one process and share it). `None` if another
/// recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            palisade::metrics::describe();
            Some(handle)
        })
        .as_ref()
}

/// The health registry: the database answers, and the circuit breakers' states.
pub fn health(ledger: &Arc<Ledger>) -> HealthRegistry {
    let registry = HealthRegistry::new();
    let db = ledger.db.clone();
    registry.register(
        Check::new("database", move || {
            let db = db.clone();
            async move {
                db.read("readiness", |conn| {
                    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                        .map_err(LedgerError::db("readiness"))
                })
                .await
                .map(|_| ())
            }
        })
        .timeout(Duration::from_secs(2)),
    );
    // The breakers are not critical: while one is open the ledger still answers (it refuses
    // transfers before debiting), so it is degraded, not unready.
    for operation in [PAY, READ] {
        let ledger = Arc::clone(ledger);
        registry.register(
            Check::new(format!("breaker:{operation}"), move || {
                let health = ledger.gateway.health(operation);
                async move { health }
            })
            .non_critical(),
        );
    }
    let db = ledger.db.clone();
    registry.register(
        Check::new(format!("breaker:{DATABASE_OPERATION}"), move || {
            let health = match db.handle().breaker(DATABASE_OPERATION) {
                Some(b) => breaker_health(b.state(), b.mode()),
                None => palisade::health::CheckResult::healthy(),
            };
            async move { health }
        })
        .non_critical(),
    );
    registry
}

/// `/metrics`: palisade's metrics from the Prometheus recorder, then the domain counters.
pub fn render_metrics(ledger: &Ledger) -> String {
    let mut out = prometheus()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    let c = &ledger.counters;
    let _ = writeln!(
        out,
        "# HELP ledger_transfer_transitions_total Transfers entering each state."
    );
    let _ = writeln!(out, "# TYPE ledger_transfer_transitions_total counter");
    for state in TransferState::ALL {
        let _ = writeln!(
            out,
            "ledger_transfer_transitions_total{{state=\"{}\"}} {}",
            state.as_str(),
            c.transitions(state)
        );
    }
    let _ = writeln!(out, "# TYPE ledger_idempotent_replays_total counter");
    let _ = writeln!(out, "ledger_idempotent_replays_total {}", c.replays());
    let _ = writeln!(
        out,
        "# HELP ledger_transfers_refused_total Transfers refused before their debit (gateway off or its breaker open)."
    );
    let _ = writeln!(out, "# TYPE ledger_transfers_refused_total counter");
    let _ = writeln!(out, "ledger_transfers_refused_total {}", c.refusals());
    let (runs, found) = c.reconciliation();
    let _ = writeln!(out, "# TYPE ledger_reconciliation_runs_total counter");
    let _ = writeln!(out, "ledger_reconciliation_runs_total {runs}");
    let _ = writeln!(
        out,
        "# TYPE ledger_reconciliation_discrepancies_total counter"
    );
    let _ = writeln!(out, "ledger_reconciliation_discrepancies_total {found}");
    let (posted, failed) = c.batch_items();
    let _ = writeln!(out, "# TYPE ledger_batch_items_total counter");
    let _ = writeln!(
        out,
        "ledger_batch_items_total{{status=\"posted\"}} {posted}"
    );
    let _ = writeln!(
        out,
        "ledger_batch_items_total{{status=\"failed\"}} {failed}"
    );
    let _ = writeln!(out, "# TYPE ledger_database_retries_total counter");
    let _ = writeln!(out, "ledger_database_retries_total {}", ledger.db.retries());
    let g = ledger.gateway.stats();
    let _ = writeln!(out, "# TYPE ledger_gateway_calls_total counter");
    let _ = writeln!(out, "ledger_gateway_calls_total {}", g.calls);
    let _ = writeln!(out, "# TYPE ledger_gateway_refused_total counter");
    let _ = writeln!(out, "ledger_gateway_refused_total {}", g.refused);
    let _ = writeln!(out, "# TYPE ledger_gateway_failures_total counter");
    for (code, n) in &g.failures_by_code {
        let _ = writeln!(out, "ledger_gateway_failures_total{{code=\"{code}\"}} {n}");
    }
    out
}

/// Follows the ledger's circuit breakers (the gateway's per-host breakers of both operations
/// and the database's) through their event streams and logs each transition at DEBUG, with
/// its reason: an example of subscribing. The breakers log their transitions themselves
/// (opening at WARN, the others at INFO) and record their metrics
/// (`palisade_circuit_breaker_transitions_total`, `palisade_circuit_breaker_state`), so this
/// adds no second WARN line. The task ends when the breakers are dropped.
pub fn watch_breakers(ledger: &Ledger) -> tokio::task::JoinHandle<()> {
    let mut receivers = Vec::new();
    for operation in [PAY, READ] {
        if let Some(keyed) = ledger.gateway.breakers(operation) {
            receivers.push(keyed.subscribe());
        }
    }
    if let Some(db) = ledger.db.handle().breaker(DATABASE_OPERATION) {
        receivers.push(db.subscribe());
    }
    tokio::spawn(async move {
        let mut merged = tokio::task::JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for mut receiver in receivers {
            let tx = tx.clone();
            merged.spawn(async move {
                loop {
                    match receiver.recv().await {
                        Ok(t) => {
                            if tx.send(t).is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        drop(tx);
        while let Some(t) = rx.recv().await {
            tracing::debug!(
                breaker = %t.breaker,
                from = ?t.from,
                to = ?t.to,
                reason = ?t.reason,
                "circuit breaker transition"
            );
        }
    })
}
