//! The stack: one policy table to a full resilience stack, selected per operation and hot
//! reloaded.
//!
//! [`ResilienceLayer`] is built from a [`PolicyStore`](crate::policy::PolicyStore) (or
//! [`from_policies`](ResilienceLayer::from_policies),
//! [`from_yaml_path`](ResilienceLayer::from_yaml_path)) and a classifier. It is the only place
//! that knows the order of the layers:
//!
//! ```text
//! correlation -> error metrics -> kill switch / fallback -> bulkhead -> total timeout
//!             -> retry -> circuit breaker -> attempt timeout -> service
//! ```
//!
//! The layers stay usable alone. Correlation ([`CorrelationLayer`](crate::correlation::CorrelationLayer),
//! feature `correlation`) and error metrics ([`ErrorMetricsLayer`](crate::metrics::ErrorMetricsLayer),
//! feature `metrics`) are on by default; see [Correlation and metrics](#correlation-and-metrics).
//!
//! ```
//! use palisade::classify::SelfClassified;
//! use palisade::policy::{OperationName, Policies};
//! use palisade::stack::ResilienceLayer;
//! use palisade::Error;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let policies = Policies::from_yaml_str(r#"
//! policies:
//!   payment_gateway:
//!     circuit_breaker: { consecutive_failures: 2 }
//!   ledger_read: {}
//!   legacy_export: { enabled: false }
//! "#).unwrap();
//! // This service answers `&str`s, not `http::Response`s: no headers to echo an ID in.
//! let layer = ResilienceLayer::from_policies(policies, SelfClassified).without_correlation();
//! let stack = layer.handle();
//! let service = ServiceBuilder::new().layer(layer).service(service_fn(|req: http::Request<()>| async move {
//!     match req.uri().path() {
//!         "/pay" => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
//!         _ => Ok::<_, std::io::Error>("ok"),
//!     }
//! }));
//! let request = |op: &str, path: &str| {
//!     let mut r = http::Request::get(path).body(()).unwrap();
//!     r.extensions_mut().insert(OperationName::new(op));
//!     r
//! };
//!
//! // Two gateway failures open the gateway's breaker...
//! for _ in 0..2 {
//!     assert!(service.clone().oneshot(request("payment_gateway", "/pay")).await.is_err());
//! }
//! assert!(matches!(
//!     service.clone().oneshot(request("payment_gateway", "/pay")).await,
//!     Err(Error::CircuitOpen(_))
//! ));
//! // ...and nothing else: another operation has its own breaker.
//! assert_eq!(service.clone().oneshot(request("ledger_read", "/balance")).await.unwrap(), "ok");
//! assert_eq!(stack.breaker("ledger_read").unwrap().metrics().calls, 1);
//!
//! // `enabled: false` is a kill switch: refused without calling the service.
//! assert!(matches!(
//!     service.clone().oneshot(request("legacy_export", "/export")).await,
//!     Err(Error::OperationDisabled(_))
//! ));
//! # }
//! ```
//!
//! # Selecting the operation
//!
//! [`ByRequest`] (the default) selects, for `http::Request`s: an explicit
//! [`OperationName`](crate::policy::OperationName) extension, then axum's `MatchedPath` with
//! the method (`POST /v1/transfers`), then the path with the method (gRPC method paths), in
//! the table's `routes`, else `defaults`. [`ByName`] runs everything under one operation; any
//! [`SelectOperation`] can be given with [`ResilienceLayer::with_select`].
//!
//! # Per-operation state
//!
//! Each operation has its own circuit breaker, bulkhead partition (operations that name the
//! same `bulkhead.partition` share it) and retry budget, so a failing `database_operation`
//! never blocks `api_call`. The state is shared by every service the layer builds and read
//! through [`StackHandle`]. Requests that select no operation share the state of `defaults`.
//!
//! # Correlation and metrics
//!
//! For `http::Request`s answered with `http::Response`s, the stack's outermost layer is a
//! [`CorrelationLayer`](crate::correlation::CorrelationLayer) configured by the policy
//! file's top-level `correlation:` section (which headers to take an ID from, in order; the
//! header to echo it in; whether to trust `traceparent`). The ID is in the request's
//! extensions and the task-local while the call runs, echoed on every response, and written
//! in problem bodies ([`problem_responses`](ResilienceLayer::problem_responses)) and gRPC
//! status metadata ([`grpc_statuses`](ResilienceLayer::grpc_statuses)), which are made inside
//! the correlation layer. Other request types have no headers: build their stacks with
//! [`without_correlation`](ResilienceLayer::without_correlation) (the compiler asks for it:
//! the correlation layer is a service of `http::Request`s only). Clients propagate the
//! current ID with [`PropagateCorrelationLayer`](crate::correlation::PropagateCorrelationLayer)
//! instead.
//!
//! Inside it, the stack's [`ErrorMetricsLayer`](crate::metrics::ErrorMetricsLayer) records
//! every call (`palisade_requests_total`, `palisade_request_duration_seconds`,
//! `palisade_errors_total`) labelled with the operation the stack selected (`other` for the
//! defaults), so there is one selection per call and no label comes from a raw path. It sees
//! what the caller gets: a call a fallback answered counts as a success, and the fallback
//! counter ([`FALLBACKS_TOTAL`]) keeps the original classification. Turn it off with
//! [`without_metrics`](ResilienceLayer::without_metrics).
//!
//! # Kill switch and fallback
//!
//! An operation with `enabled: false` fails at once with
//! [`Error::OperationDisabled`](crate::Error::OperationDisabled), without reaching any layer or
//! the service. A [`Fallback`] ([`fallback_fn`]) answers every failed or refused call (open
//! breaker, full bulkhead, timeout, kill switch, the service's own error) and every response
//! the classifier calls a failure once the retries are spent (a 503), and sees its
//! [`Failure`]: the operation, the error or response, and its classification.
//!
//! # Hot reload
//!
//! Reload the store ([`StackHandle::store`]): `reload`, `reload_from_str`,
//! `reload_from_file`, or `watch_file` to follow a file. A table that fails validation is
//! rejected with its error and the running one stays. After a reload:
//!
//! - calls in flight finish under the policy they started with (each call holds its own
//!   clone of its operation's layers);
//! - the next call runs under the new table;
//! - each operation keeps its breaker, retry budget and bulkhead partition; a reload that
//!   changes their thresholds applies them in place (`reconfigure`): an open breaker stays
//!   open with its trip count and window, a budget keeps the requests and retries it counted,
//!   a bulkhead resized smaller never takes back a permit held by a call in flight (new calls
//!   wait until fewer than the new limit are out);
//! - a removed operation's state is dropped (calls in flight keep theirs until they end).
//!
//! # Clock reads and in-flight calls
//!
//! The layers of one call share the stack's clock reads: the error metrics' start, the two
//! timeouts' deadlines and the breaker's time window use one read of tokio's clock made when
//! the call is made, and the breaker's window and the metrics' end one read made when it
//! completes. The user's service (its readiness, its `call`, its future) and the fallback run
//! outside that sharing ([`Outside`]): they, and any palisade layer inside them, read the
//! clock themselves, and the layers read it afresh after them, so the time they take is never
//! hidden. A shared read is thus never older than the stack's own code that ran since (its
//! layers, and the synchronous hooks it calls: selection, request replay, classification).
//!
//! A call is listed in the timeouts' [`InFlight`](crate::timeout::InFlight) registry once,
//! by its total timeout, for as long as it runs (attempts and backoffs included); the attempt
//! timeout lists nothing but still names the operation in its errors and metrics.
//!
//! # Boxing
//!
//! Nothing is boxed per call by the stack: the response future is one named type
//! ([`ResponseFuture`]) that does the work of the error metrics, the bulkhead's permit, the
//! total timeout and the retries itself, with those layers' own code, over the circuit
//! breaker's and the attempt timeout's named futures. (The bulkhead boxes the wait of a call
//! that queues, as documented there.)

mod breakers;
mod edge;
mod fallback;
mod future;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod outside;
mod registry;
#[cfg(feature = "reqwest")]
pub mod reqwest;
mod select;
mod service;
mod table;

#[cfg(feature = "reqwest")]
pub use breakers::reqwest_host;
pub use breakers::{Breakers, KeyOf, PerKey, PerOperation};
#[cfg(feature = "correlation")]
pub use edge::Correlated;
#[cfg(feature = "http")]
pub use edge::Problems;
#[cfg(feature = "grpc")]
pub use edge::Statuses;
pub use edge::{DefaultCorrelation, Edge, Errors, Uncorrelated};
pub use fallback::{Failure, Fallback, FallbackFn, NoFallback, fallback_fn};
pub use future::{IntoStackError, ResponseFuture};
pub use layer::ResilienceLayer;
#[cfg(feature = "metrics")]
pub use metrics::FALLBACKS_TOTAL;
pub use outside::{Outside, OutsideFuture};
pub use registry::StackHandle;
pub use select::{ByName, ByRequest, SelectOperation};
pub use service::Resilience;
pub use table::OperationService;

use crate::retry::Replay;

/// Never makes a copy of a request, so calls are never sent twice: the stack's default, since
/// only the caller knows which requests are safe to repeat (see
/// [`ResilienceLayer::with_replay`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplay;

impl<Req, Res> Replay<Req, Res> for NoReplay {
    fn replay(&self, _request: &Req) -> Option<Req> {
        None
    }
}
