//! Health: which dependency is degraded, for load balancers and operators.
//!
//! A [`HealthRegistry`] holds components of two kinds:
//! - **checks** the registry runs ([`Check`]: an async closure with a timeout), such as a
//!   database ping;
//! - **reporters** that push their own state ([`ComponentReporter`]), such as a circuit breaker
//!   that reports `Degraded` when it opens and `Healthy` when it closes
//!   ([`HealthRegistry::breaker_callback`] plugs a
//!   [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer) in).
//!
//! Each component has a status ([`HealthStatus`]), a detail and the time its status last
//! changed; the service's status is their [`aggregate`]. With feature `axum`,
//! `health::axum::routes` serves `/health/live` and `/health/ready` as JSON with
//! 200/503.
//!
//! ```
//! use std::time::Duration;
//! use palisade::health::{Check, HealthRegistry, HealthStatus};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = HealthRegistry::new();
//! registry.register(
//!     Check::new("postgres", || async { Ok::<(), std::io::Error>(()) })
//!         .timeout(Duration::from_millis(500)),
//! );
//! let breaker = registry.reporter("payment_gateway", false);
//! breaker.report(HealthStatus::Healthy, None);
//! assert_eq!(registry.check_all().await.status, HealthStatus::Healthy);
//!
//! // The breaker opens: the service is degraded, still ready.
//! breaker.report(HealthStatus::Degraded, Some("circuit open".into()));
//! let report = registry.check_all().await;
//! assert_eq!(report.status, HealthStatus::Degraded);
//! assert_eq!(report.http_status(), 200);
//! assert_eq!(report.components["payment_gateway"].detail.as_deref(), Some("circuit open"));
//! # }
//! ```

#[cfg(feature = "axum")]
pub mod axum;
mod breaker;
mod registry;
mod status;

pub use breaker::breaker_health;
pub use registry::{Check, ComponentReporter, DEFAULT_CHECK_TIMEOUT, HealthRegistry};
pub use status::{CheckResult, ComponentHealth, HealthReport, HealthStatus, aggregate};
