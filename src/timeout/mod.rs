//! The timeout manager: a total timeout around all attempts, a per-attempt timeout inside
//! retry, deadline propagation, and a list of the calls in flight.
//!
//! ```
//! use std::time::Duration;
//! use palisade::error::{Error, TimeoutKind};
//! use palisade::policy::Policy;
//! use palisade::timeout::{Deadline, TimeoutLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut policy = Policy::builtin("ledger_write");
//! policy.timeout.total = Duration::from_millis(500);
//!
//! let service = ServiceBuilder::new()
//!     .layer(TimeoutLayer::total_from(&policy))
//!     .service(service_fn(|work: Duration| async move {
//!         // Everything called from here sees the deadline.
//!         let left = Deadline::current().unwrap().remaining();
//!         tokio::time::sleep(work).await;
//!         Ok::<_, std::io::Error>(left)
//!     }));
//!
//! let left = service.clone().oneshot(Duration::from_millis(10)).await.unwrap();
//! assert_eq!(left, Duration::from_millis(500));
//!
//! match service.oneshot(Duration::from_secs(2)).await {
//!     Err(Error::Timeout(t)) => {
//!         assert_eq!(t.kind, TimeoutKind::Total);
//!         assert_eq!(&*t.operation, "ledger_write");
//!         assert_eq!(t.limit, Duration::from_millis(500));
//!     }
//!     other => panic!("expected a timeout, got {other:?}"),
//! }
//! # }
//! ```
//!
//! # Deadline propagation
//!
//! A [`Timeout`] sets its deadline as the task's [`Deadline`] while it calls and polls the
//! service inside it. Every timeout below takes `min(own limit, time left)`; a call made
//! once the deadline has passed fails at once with [`TimeoutKind::DeadlineExpired`](crate::error::TimeoutKind::DeadlineExpired) without
//! reaching the service; and retry will not start an attempt the deadline cannot fit. A
//! deadline also comes from upstream: a [`Deadline::scope`] around the handler, or, for
//! `http::Request`s with [`TimeoutLayer::with_grpc_timeout`], the `grpc-timeout` header.
//! On the way out, [`PropagateDeadlineLayer`] writes the time left into the `grpc-timeout`
//! header of a client's requests, so the next server knows it too.
//! When the upstream deadline is the one that fires, the error says
//! [`TimeoutKind::Total`](crate::error::TimeoutKind::Total) with the time that was left as its limit.
//!
//! # In-flight calls
//!
//! Each timeout layer lists its calls in an [`InFlight`] registry ([`InFlight::global`]
//! unless told otherwise), so an operator can see what is running and for how long. It costs
//! one compare-and-swap when a call starts and one store when it ends.
//!
//! # Metrics and events
//!
//! With the feature `metrics`, every timeout counts in `palisade_timeouts_total{operation,
//! kind}` (`total`, `attempt`, `deadline`), through handles registered when the layer is made
//! (install the recorder first). A total timeout is a WARN `tracing` event (the call failed
//! for its caller); an attempt timeout and an expired deadline are DEBUG. See
//! `docs/metrics.md`.
//!
//! # Errors
//!
//! [`Error::Timeout`](crate::Error::Timeout) with a [`TimeoutError`](crate::error::TimeoutError)
//! that names the operation, the kind of timeout and the limit, classified transient /
//! network; the inner service's errors come out as [`Error::Inner`](crate::Error::Inner).

mod deadline;
mod future;
mod in_flight;
mod layer;
mod metrics;
#[cfg(feature = "http")]
mod propagate;
mod service;

pub use deadline::{Deadline, RequestDeadline, Scoped, TaskDeadlineOnly, parse_grpc_timeout};
#[cfg(feature = "http")]
pub use deadline::{GRPC_TIMEOUT, GrpcTimeoutHeader};
pub use future::ResponseFuture;
pub(crate) use future::{Listing, Watch};
pub use in_flight::{InFlight, InFlightCall};
pub(crate) use layer::Shared;
pub use layer::TimeoutLayer;
#[cfg(feature = "http")]
pub use propagate::{PropagateDeadline, PropagateDeadlineLayer, format_grpc_timeout};
pub use service::Timeout;
pub(crate) use service::{binding, listing};
