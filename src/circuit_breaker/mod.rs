//! Circuit breaking: stop calling a dependency that is failing, and probe until it recovers.
//!
//! ```
//! use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
//! use palisade::classify::{Category, Outcome, Severity, Transience};
//! use palisade::policy::CircuitBreakerPolicy;
//! use palisade::Error;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let mut policy = CircuitBreakerPolicy::default();
//! policy.consecutive_failures = 3;
//! policy.open_timeout = Duration::from_secs(30);
//! policy.success_threshold = 1;
//!
//! // The breaker never decides what a failure is: the classifier does.
//! let classify = |r: Result<&u32, &&str>| match r {
//!     Ok(_) => Outcome::Success,
//!     Err(&"insufficient funds") => {
//!         Outcome::failure(Transience::Persistent, Category::Business, Severity::Low, "funds")
//!     }
//!     Err(_) => Outcome::failure(Transience::Transient, Category::External, Severity::High, "gateway"),
//! };
//! let layer = CircuitBreakerLayer::new("payment_gateway", policy, classify);
//! let breaker = layer.handle();
//! let gateway = ServiceBuilder::new().layer(layer).service(service_fn(|amount: u32| async move {
//!     match amount {
//!         0 => Err("gateway down"),
//!         1 => Err("insufficient funds"),
//!         n => Ok(n),
//!     }
//! }));
//!
//! // The caller's own failures never trip it...
//! for _ in 0..10 {
//!     assert!(gateway.clone().oneshot(1).await.is_err());
//! }
//! assert_eq!(breaker.state(), CircuitState::Closed);
//!
//! // ...three gateway failures in a row do.
//! for _ in 0..3 {
//!     assert!(matches!(gateway.clone().oneshot(0).await, Err(Error::Inner("gateway down"))));
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//! match gateway.clone().oneshot(100).await {
//!     Err(Error::CircuitOpen(open)) => {
//!         assert_eq!(&*open.breaker, "payment_gateway");
//!         assert_eq!(open.retry_after, Duration::from_secs(30));
//!     }
//!     other => panic!("expected a rejection, got {other:?}"),
//! }
//!
//! // After the open time, the next call is a probe; its success closes the breaker.
//! tokio::time::advance(Duration::from_secs(30)).await;
//! assert_eq!(gateway.clone().oneshot(100).await.unwrap(), 100);
//! assert_eq!(breaker.state(), CircuitState::Closed);
//! # }
//! ```
//!
//! # The rules
//!
//! All of them come from [`CircuitBreakerPolicy`](crate::policy::CircuitBreakerPolicy):
//!
//! - **Closed.** Calls flow. The breaker *trips* (opens) when `consecutive_failures` counted
//!   failures come in a row (0 turns this rule off), or when the window holds at least
//!   `minimum_calls` calls and the share of counted failures reaches `failure_rate`, or (with
//!   `slow_call_duration` set) the share of calls slower than it reaches `slow_call_rate`. The
//!   window is the last `window_size` calls (`window_type: count`) or the last `window` of time
//!   in ten buckets (`window_type: time`: a call stays counted for 9/10 to 10/10 of `window`).
//! - **Which failures count.** Only what the classifier calls a failure, and of those only what
//!   [`CountedFailures`] accepts: by default everything but the caller's own fault (persistent
//!   `User`/`Business`, e.g. insufficient funds). A failure that does not count is recorded as a
//!   success: the callee answered. [`Outcome::Ignored`](crate::classify::Outcome::Ignored) is not
//!   recorded at all.
//! - **Open.** Calls are rejected at once with [`Error::CircuitOpen`](crate::Error::CircuitOpen)
//!   (transient, external, `retry_after` = time until the next probe), for `open_timeout`. Each
//!   trip without a stable close in between multiplies the open time by
//!   `open_timeout_multiplier`, up to `open_timeout_max`; when the multiplier is above 1, each
//!   open time is also shortened at random by up to 10% (see
//!   [`CircuitBreakerBuilder::open_jitter`]). A close is stable once the breaker stayed closed for
//!   `window`; the next trip then starts again from `open_timeout`.
//! - **Half-open.** The first call after the open time is the first probe. At most
//!   `half_open_max_requests` probes are in flight at once; other calls are rejected.
//!   `success_threshold` successful probes close the breaker (with an empty window); one counted
//!   failure (or, with the slow-call rule on, one slow probe) reopens it. If the breaker is still
//!   half-open `half_open_max_duration` after it started probing, the next call or probe outcome
//!   reopens it. Probe slots are released when a probe finishes *or is dropped*: a cancelled
//!   probe cannot leave the breaker stuck half-open.
//! - **Late outcomes.** A call remembers the state period (generation) that admitted it; if the
//!   breaker changed state since, its outcome is not recorded.
//! - **Operator modes**, set at run time through a [`CircuitBreakerHandle`]: `ForcedOpen`
//!   (reject everything; `retry_after` is `open_timeout`), `Disabled` (pass everything, record
//!   nothing; also what `enabled: false` means), `MetricsOnly` (record and transition, but let
//!   through what would have been rejected).
//!
//! Transitions happen when calls arrive and finish. The only background task keeps time: a
//! breaker built inside a multi-thread tokio runtime spawns a *ticker* that stores tokio's time
//! a few times a second (and at every time-window bucket boundary), so that successes and clear
//! rejections do not read the clock. Built outside a runtime or on a current-thread runtime
//! (where paused-clock tests run), after its runtime shuts down, and for keyed breakers, a
//! breaker reads the precise clock instead, so `tokio::time::pause`/`advance` drive it exactly.
//! The ticker ends soon after its breaker is dropped. See docs/circuit_breaker.md, "Time".
//!
//! # Observing
//!
//! Every transition and mode change is sent to [`CircuitBreakerHandle::subscribe`]rs (a tokio
//! broadcast channel), to an optional [`CircuitBreakerBuilder::on_transition`] callback, and to
//! `tracing` (`WARN` when a breaker opens or its mode changes, `INFO` otherwise).
//! [`CircuitBreakerHandle::metrics`] reads the state and the window's counts.
//!
//! # Metrics
//!
//! With the `metrics` feature (on by default), every breaker records, through the
//! [`metrics`](https://docs.rs/metrics) facade and labelled with its name:
//! `palisade_circuit_breaker_state{breaker, state}` (1 for the state it shows, 0 for the other
//! four: `closed`, `half_open`, `open`, `forced_open`, `disabled`),
//! `palisade_circuit_breaker_transitions_total{breaker, from, to}` (each change of the state it
//! shows, operator modes included) and `palisade_circuit_breaker_rejected_total{breaker}` (calls
//! rejected while open, half-open and full, or forced open; not the calls a metrics-only
//! breaker lets through).
//!
//! The handles are registered **once, when the breaker is built**, with the recorder installed
//! at that moment (a call only increments a handle it holds: no key is built or looked up per
//! call). Install the exporter before building the layers: a breaker built before any recorder
//! is installed records nothing for its whole life. Each breaker registers 26 series (5 gauges,
//! 20 transition pairs, 1 rejection counter); a keyed registry registers that for each key it
//! holds and its overflow breaker, so at most `max_keys + 1` times. A breaker that is dropped
//! (an evicted key) sets its state gauges to 0.
//!
//! # Cost and cancellation
//!
//! The closed-state success path takes no lock and allocates nothing: it loads one atomic word
//! to admit the call, clones the `Arc` of its thread's shard of the breaker, and adds to one
//! atomic window bucket (after one clock read, for a time window) when the call ends. Threads
//! write only their own shard and bucket stripe, so concurrent callers do not contend.
//! Rejections are decided the same way and allocate nothing. Figures are in
//! `docs/performance.md`.
//! Dropping a response future records nothing and frees its probe slot, if it held one.
//!
//! # Keyed breakers
//!
//! [`KeyedCircuitBreakerLayer`] keeps one breaker per key (host, route, operation) in a bounded
//! registry with idle eviction.

mod breaker;
mod counted;
mod events;
mod future;
mod handle;
mod keyed;
mod layer;
mod metrics;
mod registry;
mod service;
mod settings;
mod tick;
mod window;

pub use counted::CountedFailures;
pub use events::{CircuitState, OperatorMode, Transition, TransitionReason};
pub use future::ResponseFuture;
pub use handle::{CircuitBreakerHandle, CircuitBreakerMetrics};
pub use keyed::{
    KeyedCircuitBreaker, KeyedCircuitBreakerBuilder, KeyedCircuitBreakerHandle,
    KeyedCircuitBreakerLayer,
};
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use service::CircuitBreaker;
