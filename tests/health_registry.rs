//! HealthRegistry: checks with timeouts, reporters, aggregation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade::health::{Check, CheckResult, HealthRegistry, HealthStatus};

#[tokio::test(start_paused = true)]
async fn a_slow_check_is_unhealthy_after_its_timeout_and_others_still_run() {
    let registry = HealthRegistry::new();
    registry.register(
        Check::new("slow_db", || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            HealthStatus::Healthy
        })
        .timeout(Duration::from_millis(500)),
    );
    registry.register(Check::new("cache", || async { HealthStatus::Healthy }));

    let before = tokio::time::Instant::now();
    let report = registry.check_all().await;
    // Checks run concurrently: the whole run takes the slow check's timeout, not the sum.
    assert_eq!(before.elapsed(), Duration::from_millis(500));
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(report.components["slow_db"].status, HealthStatus::Unhealthy);
    assert_eq!(
        report.components["slow_db"].detail.as_deref(),
        Some("check timed out after 500ms")
    );
    assert_eq!(report.components["cache"].status, HealthStatus::Healthy);
    assert_eq!(report.http_status(), 503);
}

#[tokio::test]
async fn checks_are_unknown_until_they_run_and_errors_become_details() {
    let registry = HealthRegistry::new();
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    registry.register(Check::new("postgres", move || {
        let up = flag.load(Ordering::SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err(std::io::Error::other("connection refused"))
            }
        }
    }));
    assert_eq!(registry.snapshot().status, HealthStatus::Unknown);
    assert_eq!(registry.snapshot().http_status(), 503);

    let down = registry.check_all().await;
    assert_eq!(down.status, HealthStatus::Unhealthy);
    assert_eq!(
        down.components["postgres"].detail.as_deref(),
        Some("connection refused")
    );

    up.store(true, Ordering::SeqCst);
    let report = registry.check_all().await;
    assert_eq!(report.status, HealthStatus::Healthy);
    assert_eq!(report.components["postgres"].detail, None);
    assert!(report.components["postgres"].last_change >= down.components["postgres"].last_change);
}

#[tokio::test]
async fn non_critical_failures_only_degrade() {
    let registry = HealthRegistry::new();
    registry.register(
        Check::new("fx_rates", || async {
            CheckResult::unhealthy("feed stale")
        })
        .non_critical(),
    );
    registry.register(Check::new("ledger", || async { HealthStatus::Healthy }));
    let report = registry.check_all().await;
    assert_eq!(report.status, HealthStatus::Degraded);
    assert_eq!(report.http_status(), 200);
    assert!(!report.components["fx_rates"].critical);
}

#[tokio::test]
async fn health_flips_to_degraded_when_a_breaker_opens_and_back_when_it_closes() {
    let registry = HealthRegistry::new();
    registry.register(Check::new("ledger", || async { HealthStatus::Healthy }));
    // What a circuit breaker holds and reports into on each transition.
    let breaker = registry.reporter("payment_gateway", false);
    breaker.report(HealthStatus::Healthy, None);

    let healthy = registry.check_all().await;
    assert_eq!(healthy.status, HealthStatus::Healthy);
    let closed_since = healthy.components["payment_gateway"].last_change;

    breaker.report(
        HealthStatus::Degraded,
        Some("circuit open; next probe in 30s".into()),
    );
    let degraded = registry.check_all().await;
    assert_eq!(degraded.status, HealthStatus::Degraded);
    let gw = &degraded.components["payment_gateway"];
    assert_eq!(gw.status, HealthStatus::Degraded);
    assert_eq!(
        gw.detail.as_deref(),
        Some("circuit open; next probe in 30s")
    );
    assert!(gw.last_change >= closed_since);
    let opened_at = gw.last_change;

    // Reporting the same status again keeps the time of the last change.
    std::thread::sleep(Duration::from_millis(2));
    breaker.report(HealthStatus::Degraded, Some("circuit half-open".into()));
    assert_eq!(
        registry.snapshot().components["payment_gateway"].last_change,
        opened_at
    );

    breaker.report(HealthStatus::Healthy, None);
    let back = registry.check_all().await;
    assert_eq!(back.status, HealthStatus::Healthy);
    assert!(back.components["payment_gateway"].last_change > opened_at);
}

#[test]
fn report_serialises_to_the_documented_json() {
    let registry = HealthRegistry::new();
    registry.report(
        "payment_gateway",
        HealthStatus::Degraded,
        Some("circuit open".into()),
    );
    let json = serde_json::to_value(registry.snapshot()).unwrap();
    assert_eq!(json["status"], "degraded");
    let gw = &json["components"]["payment_gateway"];
    assert_eq!(gw["status"], "degraded");
    assert_eq!(gw["detail"], "circuit open");
    assert_eq!(gw["critical"], false);
    let ts = gw["last_change"].as_str().unwrap();
    assert!(humantime_parse(ts), "{ts}");
}

fn humantime_parse(ts: &str) -> bool {
    // 2026-01-02T03:04:05.678Z
    ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T'
}
