use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

/// How a component, or the whole service, is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Working.
    Healthy,
    /// Working with reduced function: a breaker is open, a non-critical dependency is down.
    /// Still ready for traffic.
    Degraded,
    /// Not working: a critical dependency is down. Not ready for traffic.
    Unhealthy,
    /// Not known yet: a component that has not reported, a check that has not run.
    Unknown,
}

impl HealthStatus {
    /// `"healthy"`, `"degraded"`, `"unhealthy"`, `"unknown"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }

    /// Whether a service in this state should receive traffic: healthy or degraded.
    pub const fn is_ready(self) -> bool {
        matches!(self, HealthStatus::Healthy | HealthStatus::Degraded)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one check or report says: a status and an optional human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// The component's status.
    pub status: HealthStatus,
    /// Why, for operators (`"circuit open; next probe in 30s"`). Never secrets.
    pub detail: Option<String>,
}

impl CheckResult {
    /// Healthy, no detail.
    pub fn healthy() -> Self {
        CheckResult {
            status: HealthStatus::Healthy,
            detail: None,
        }
    }

    /// Degraded, because of `detail`.
    pub fn degraded(detail: impl Into<String>) -> Self {
        CheckResult {
            status: HealthStatus::Degraded,
            detail: Some(detail.into()),
        }
    }

    /// Unhealthy, because of `detail`.
    pub fn unhealthy(detail: impl Into<String>) -> Self {
        CheckResult {
            status: HealthStatus::Unhealthy,
            detail: Some(detail.into()),
        }
    }
}

impl From<HealthStatus> for CheckResult {
    fn from(status: HealthStatus) -> Self {
        CheckResult {
            status,
            detail: None,
        }
    }
}

/// `Ok` is healthy; `Err` is unhealthy with the error's message as the detail.
impl<E: fmt::Display> From<Result<(), E>> for CheckResult {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => CheckResult::healthy(),
            Err(e) => CheckResult::unhealthy(e.to_string()),
        }
    }
}

/// One component's latest state, as reported in [`HealthReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ComponentHealth {
    /// Its status.
    pub status: HealthStatus,
    /// Why, if the component said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether its being unhealthy makes the service unhealthy (otherwise only degraded).
    pub critical: bool,
    /// When its status last changed (not when it was last checked).
    #[serde(serialize_with = "rfc3339")]
    pub last_change: SystemTime,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// The service's aggregate status and every component's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The aggregate, see [`aggregate`].
    pub status: HealthStatus,
    /// Each component by name.
    pub components: std::collections::BTreeMap<String, ComponentHealth>,
}

impl HealthReport {
    /// 200 when the service is ready (healthy or degraded), 503 otherwise.
    pub fn http_status(&self) -> u16 {
        if self.status.is_ready() { 200 } else { 503 }
    }
}

/// The service's status from its components':
/// - **unhealthy** if a critical component is unhealthy;
/// - else **degraded** if any component is degraded, or a non-critical one is unhealthy;
/// - else **unknown** if a critical component is unknown;
/// - else **healthy** (including when there are no components, or only non-critical unknowns).
pub fn aggregate<'a>(components: impl IntoIterator<Item = &'a ComponentHealth>) -> HealthStatus {
    let mut status = HealthStatus::Healthy;
    for c in components {
        let effective = match (c.status, c.critical) {
            (HealthStatus::Unhealthy, false) => HealthStatus::Degraded,
            (HealthStatus::Unknown, false) => HealthStatus::Healthy,
            (s, _) => s,
        };
        status = worse(status, effective);
    }
    status
}

fn worse(a: HealthStatus, b: HealthStatus) -> HealthStatus {
    fn rank(s: HealthStatus) -> u8 {
        match s {
            HealthStatus::Healthy => 0,
            HealthStatus::Unknown => 1,
            HealthStatus::Degraded => 2,
            HealthStatus::Unhealthy => 3,
        }
    }
    if rank(b) > rank(a) { b } else { a }
}
