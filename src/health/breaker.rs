//! A circuit breaker's state as a component's health.

use std::sync::{Arc, Mutex};

use super::{CheckResult, HealthRegistry, HealthStatus};
use crate::circuit_breaker::{CircuitState, OperatorMode, Transition, TransitionReason};

/// The health a breaker's state and operator mode stand for:
///
/// | breaker | health | detail |
/// |---|---|---|
/// | closed | healthy | |
/// | half-open | degraded | `circuit half-open: probing` |
/// | open | degraded | `circuit open` |
/// | forced open by an operator | degraded | `circuit forced open` |
/// | disabled by an operator or its policy | healthy | `circuit breaker disabled` |
///
/// An open breaker means the service runs without one dependency: degraded, still able to answer
/// (and to fail fast). Register the breaker as critical to have it count as unhealthy instead
/// when the dependency is essential (see [`HealthRegistry::breaker_callback`]).
pub fn breaker_health(state: CircuitState, mode: OperatorMode) -> CheckResult {
    match (mode, state) {
        (OperatorMode::ForcedOpen, _) => CheckResult::degraded("circuit forced open"),
        (OperatorMode::Disabled, _) => CheckResult {
            status: HealthStatus::Healthy,
            detail: Some("circuit breaker disabled".into()),
        },
        (_, CircuitState::Closed) => CheckResult::healthy(),
        (_, CircuitState::HalfOpen) => CheckResult::degraded("circuit half-open: probing"),
        (_, CircuitState::Open) => CheckResult::degraded("circuit open"),
    }
}

impl HealthRegistry {
    /// A callback for
    /// [`CircuitBreakerBuilder::on_transition`](crate::circuit_breaker::CircuitBreakerBuilder::on_transition)
    /// that reports the breaker's health (see [`breaker_health`]) as component `name`: degraded
    /// when it opens, healthy again when it closes.
    ///
    /// The component starts healthy (a new breaker is closed). When `critical` is true an open
    /// breaker is reported unhealthy instead of degraded, so `/health/ready` answers 503.
    pub fn breaker_callback(
        &self,
        name: impl Into<Arc<str>>,
        critical: bool,
    ) -> impl Fn(&Transition) + Send + Sync + 'static {
        let reporter = self.reporter(name, critical);
        reporter.report(HealthStatus::Healthy, None);
        // The transition says the machine state; the operator mode changes only by
        // `ModeChanged` transitions, so it is tracked here.
        let mode = Mutex::new(OperatorMode::Normal);
        move |transition: &Transition| {
            let mut mode = mode.lock().unwrap_or_else(|p| p.into_inner());
            if let TransitionReason::ModeChanged { to, .. } = transition.reason {
                *mode = to;
            }
            let mut result = breaker_health(transition.to, *mode);
            if critical && result.status == HealthStatus::Degraded {
                result.status = HealthStatus::Unhealthy;
            }
            reporter.report(result.status, result.detail);
        }
    }
}
