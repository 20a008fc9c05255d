//! Retries: only what the classifier calls transient, with exponential backoff and jitter,
//! honouring the server's retry-after, within a retry budget and the deadline in force.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use palisade::classify::SelfClassified;
//! use palisade::policy::{Jitter, Policy};
//! use palisade::retry::RetryLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut policy = Policy::builtin("ledger_read");
//! policy.retry.max_retries = 3;
//! policy.retry.base_delay = Duration::from_millis(100);
//! policy.retry.jitter = Jitter::None;
//!
//! // A flaky dependency: refuses the connection twice, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let service = ServiceBuilder::new()
//!     .layer(RetryLayer::from_policy(&policy, SelfClassified))
//!     .service(service_fn(move |account: u64| {
//!         let n = seen.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             if n < 2 {
//!                 Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
//!             } else {
//!                 Ok(account * 100)
//!             }
//!         }
//!     }));
//!
//! let started = tokio::time::Instant::now();
//! assert_eq!(service.oneshot(7).await.unwrap(), 700);
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! // Backoff of 100 ms, then 200 ms (no jitter).
//! assert_eq!(started.elapsed(), Duration::from_millis(300));
//! # }
//! ```
//!
//! # What is retried
//!
//! The layer asks its [`Classify`](crate::classify::Classify) about every attempt. It retries
//! a failure classified [`Transient`](crate::classify::Transience::Transient) (and
//! `Unknown` when `retry_unknown` is set); successes, persistent failures and ignored outcomes
//! are returned at once. A retry also needs a copy of the request: [`Replay`] makes one
//! ([`CloneRequest`] for any `Req: Clone`; for `http::Request`s, [`HttpRetryLayer`] buffers the
//! body and replays only idempotent requests).
//!
//! # When it stops
//!
//! - after `max_retries` retries;
//! - when the failure asks for a longer wait than `max_delay` (its `retry_after`: a
//!   `Retry-After` header, gRPC pushback, an open breaker's time to its next probe): a retry
//!   sooner than asked would be refused again, so the failure comes back at once with its
//!   `retry_after` for the caller (a wait it asks for up to `max_delay` is honoured, plus up
//!   to half again as jitter);
//! - when the [`RetryBudget`] (shared by all clones of the layer) has no retry left;
//! - when the task's [`Deadline`](crate::timeout::Deadline) (set by a total
//!   [`TimeoutLayer`](crate::timeout::TimeoutLayer) outside, or upstream) cannot fit the
//!   backoff plus another attempt as long as the last one.
//!
//! The last attempt's error comes back as [`Error::Retried`](crate::Error::Retried) or
//! [`Error::RetryBudgetExhausted`](crate::Error::RetryBudgetExhausted), carrying the attempts
//! made and why it stopped ([`RetryStop`](crate::error::RetryStop)). A final response is
//! returned as it is ([`HttpReplay`] notes the attempts in an [`Attempts`] extension).
//!
//! # Metrics and events
//!
//! With the feature `metrics`, the layer counts every call by how it ended
//! (`palisade_retries_total{operation, outcome}`) and every retry attempt sent
//! (`palisade_retry_attempts_total{operation}`), through handles registered when the layer is
//! made (install the recorder first). Each retry is a DEBUG `tracing` event with its delay and
//! the failure's classification code as `reason`. See `docs/metrics.md`.
//!
//! # Stacking with timeouts
//!
//! Put the total timeout outside and the attempt timeout inside:
//! `TimeoutLayer::total_from(&p)`, `RetryLayer::from_policy(&p, ThroughLayers(c))`,
//! `TimeoutLayer::attempt_from(&p)`. [`ThroughLayers`](crate::error::ThroughLayers) lets the
//! classifier see the attempt timeout (transient) as well as the service's own errors.

mod backoff;
mod budget;
mod future;
#[cfg(feature = "http")]
mod http;
mod layer;
mod metrics;
mod replay;
mod service;

pub use backoff::{Backoff, Rng};
pub use budget::RetryBudget;
pub use future::ResponseFuture;
pub(crate) use future::Run;
#[cfg(feature = "http")]
pub use http::{
    BufferBody, BufferBodyFuture, HttpReplay, HttpRetryLayer, IDEMPOTENCY_KEY, ReplayBody,
};
pub use layer::RetryLayer;
pub use replay::{CloneRequest, Replay};
pub(crate) use service::Parts;
pub use service::Retry;

/// How many attempts a retried call made, recorded on the final response where the response
/// type allows it (an `http::Response` extension, by [`HttpReplay`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);
