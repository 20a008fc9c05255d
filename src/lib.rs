//! # palisade
//!
//! Resilience middleware for [Tower](https://docs.rs/tower): calls that move money survive
//! faults, and say what went wrong.
//!
//! The crate is built around two shared ideas that every layer uses:
//!
//! - [`classify`]: one verdict on every outcome (success, transient or persistent failure, of
//!   which category and severity, with a stable code and an optional retry-after), so retry,
//!   circuit breaker and metrics never disagree on what a failure is.
//! - [`policy`]: named per-operation policies (`api_call`, `database_operation`, ...) with
//!   defaults and inheritance, loaded from YAML, validated with errors that name the field,
//!   the line and the fix.
//!
//! ```
//! use palisade::policy::Policies;
//! use std::time::Duration;
//!
//! let policies = Policies::from_yaml_str(r#"
//! defaults:
//!   timeout: { total: 30s, attempt: 10s }
//! policies:
//!   api_call:
//!     timeout: { total: 10s }
//!   database_operation:
//!     extends: api_call
//!     retry: { max_retries: 5, base_delay: 50ms, max_delay: 2s }
//! routes:
//!   "POST /v1/transfers": database_operation
//! "#).unwrap();
//!
//! let transfers = policies.for_route("POST", "/v1/transfers");
//! assert_eq!(transfers.name(), "database_operation");
//! assert_eq!(transfers.timeout.total, Duration::from_secs(10)); // from api_call
//! assert_eq!(transfers.timeout.attempt, Duration::from_secs(10)); // from defaults
//! assert_eq!(transfers.retry.max_retries, 5);
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bulkhead;
pub mod circuit_breaker;
pub mod classify;
mod clock;
#[cfg(feature = "correlation")]
pub mod correlation;
pub mod error;
pub mod health;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod policy;
#[cfg(feature = "http")]
pub mod redact;
pub mod retry;
pub mod stack;
pub mod timeout;

pub use error::Error;

/// The README's example, compiled and run as a doc test.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The cookbook (docs/cookbook.md), compiled and run as doc tests.
#[cfg(all(doctest, feature = "axum", feature = "reqwest", feature = "grpc"))]
#[doc = include_str!("../docs/cookbook.md")]
pub struct CookbookDoctests;
