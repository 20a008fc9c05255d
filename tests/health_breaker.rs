//! The real circuit breaker reporting into health through its `on_transition` hook, and into
//! metrics by itself.
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use palisade::classify::{Category, Outcome, Severity, Transience};
use palisade::health::{HealthRegistry, HealthStatus};
use palisade::metrics::names;
use palisade::policy::CircuitBreakerPolicy;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// The breaker's metrics since the last call: the debugging recorder drains on every snapshot
/// (counters become deltas, gauges are reset), so each checkpoint takes exactly one.
struct Checkpoint(Vec<Metric>);

/// A metric's name, labels and value.
type Metric = (String, Vec<(String, String)>, DebugValue);

fn checkpoint(s: &Snapshotter) -> Checkpoint {
    Checkpoint(
        s.snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let k = key.key();
                let labels = k
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (k.name().to_owned(), labels, value)
            })
            .collect(),
    )
}

impl Checkpoint {
    fn find(&self, name: &str, wanted: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|(n, labels, value)| {
            let all = wanted
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
            (n == name && all).then_some(value)
        })
    }

    fn gauge(&self, state: &str) -> Option<f64> {
        match self.find(
            names::CIRCUIT_BREAKER_STATE,
            &[("breaker", "payment_gateway"), ("state", state)],
        ) {
            Some(DebugValue::Gauge(v)) => Some(v.into_inner()),
            _ => None,
        }
    }

    fn transitions(&self, from: &str, to: &str) -> u64 {
        match self.find(
            names::CIRCUIT_BREAKER_TRANSITIONS_TOTAL,
            &[("breaker", "payment_gateway"), ("from", from), ("to", to)],
        ) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn health_flips_to_degraded_when_the_breaker_opens_and_back_when_it_closes() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let registry = HealthRegistry::new();
    let report_health = registry.breaker_callback("payment_gateway", false);

    let mut policy = CircuitBreakerPolicy::default();
    policy.consecutive_failures = 2;
    policy.open_timeout = Duration::from_secs(10);
    policy.success_threshold = 1;
    let classify = |r: Result<&u32, &&str>| match r {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::failure(
            Transience::Transient,
            Category::External,
            Severity::High,
            "gateway",
        ),
    };
    let layer = CircuitBreakerLayer::builder("payment_gateway", policy)
        .on_transition(report_health)
        .build(classify);
    let breaker = layer.handle();
    let gateway =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|amount: u32| async move {
                if amount == 0 {
                    Err("gateway down")
                } else {
                    Ok(amount)
                }
            }));

    assert_eq!(registry.snapshot().status, HealthStatus::Healthy);
    assert_eq!(checkpoint(&snapshotter).gauge("closed"), Some(1.0));

    for _ in 0..2 {
        let _ = gateway.clone().oneshot(0).await;
    }
    assert_eq!(breaker.state(), CircuitState::Open);
    let report = registry.snapshot();
    assert_eq!(report.status, HealthStatus::Degraded);
    assert_eq!(report.http_status(), 200);
    assert_eq!(
        report.components["payment_gateway"].detail.as_deref(),
        Some("circuit open")
    );
    let opened = checkpoint(&snapshotter);
    assert_eq!(opened.gauge("open"), Some(1.0));
    assert_eq!(opened.gauge("closed"), Some(0.0));
    assert_eq!(opened.transitions("closed", "open"), 1);

    // The open time passes; the next call is a probe, and its success closes the breaker.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(gateway.clone().oneshot(5).await.unwrap(), 5);
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(registry.snapshot().status, HealthStatus::Healthy);
    let closed = checkpoint(&snapshotter);
    assert_eq!(closed.gauge("closed"), Some(1.0));
    assert_eq!(closed.gauge("open"), Some(0.0));
    assert_eq!(closed.transitions("open", "half_open"), 1);
    assert_eq!(closed.transitions("half_open", "closed"), 1);

    // An operator forcing it open shows too, and resuming brings it back.
    breaker.force_open();
    assert_eq!(registry.snapshot().status, HealthStatus::Degraded);
    assert_eq!(checkpoint(&snapshotter).gauge("forced_open"), Some(1.0));
    breaker.resume();
    assert_eq!(registry.snapshot().status, HealthStatus::Healthy);
    let resumed = checkpoint(&snapshotter);
    assert_eq!(resumed.transitions("forced_open", "closed"), 1);
    assert_eq!(resumed.gauge("closed"), Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn a_critical_breaker_makes_the_service_unready() {
    let registry = HealthRegistry::new();
    let report_health = registry.breaker_callback("ledger_db", true);
    let mut policy = CircuitBreakerPolicy::default();
    policy.consecutive_failures = 1;
    let layer = CircuitBreakerLayer::builder("ledger_db", policy)
        .on_transition(report_health)
        .build(|r: Result<&(), &()>| {
            Some(if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::failure(
                    Transience::Transient,
                    Category::Database,
                    Severity::Critical,
                    "db",
                )
            })
        });
    let db = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: ()| async { Err::<(), ()>(()) }));
    let _ = db.oneshot(()).await;
    let report = registry.snapshot();
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(report.http_status(), 503);
}
