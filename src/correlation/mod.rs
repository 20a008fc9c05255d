//! Correlation IDs: one ID follows a request through every service, log line and span.
//!
//! On the server, [`CorrelationLayer`]
//! - takes the ID from `x-request-id` (or the headers you list with
//!   [`accept_header`](CorrelationLayer::accept_header)), else from the trace ID of a W3C
//!   `traceparent`, else generates a UUIDv7;
//! - validates it: 1 to 128 bytes of visible ASCII. Anything else (spaces, control characters,
//!   CR/LF, non-ASCII, 4 KB of padding) is **replaced** by a generated ID and never echoed or
//!   logged;
//! - sets the validated ID on the request header and in the request extensions
//!   ([`CorrelationId`]), makes it the task-local [`CorrelationId::current`] while the handler
//!   runs, opens a `request` span with a `correlation_id` field, and echoes the ID on the
//!   response.
//!
//! On the client, [`PropagateCorrelationLayer`] puts the current ID on outgoing
//! `http::Request`s and `reqwest::Request`s. Tasks started with [`spawn`] (or futures wrapped
//! with [`carry`]) keep the ID of the request that started them.
//!
//! ```
//! use http::{Request, Response};
//! use palisade::correlation::{CorrelationId, CorrelationLayer, X_REQUEST_ID};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(CorrelationLayer::new())
//!     .service_fn(|_req: Request<()>| async {
//!         // The handler (and anything it calls) sees the ID without it being passed around.
//!         let id = CorrelationId::current().unwrap();
//!         Ok::<_, std::convert::Infallible>(Response::new(id.to_string()))
//!     });
//!
//! // A valid incoming ID is kept and echoed.
//! let req = Request::builder().header(X_REQUEST_ID, "order-7f3a").body(()).unwrap();
//! let res = service.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.headers()[X_REQUEST_ID], "order-7f3a");
//! assert_eq!(res.body(), "order-7f3a");
//!
//! // A hostile one is replaced by a generated UUIDv7, never echoed.
//! let req = Request::builder().header(X_REQUEST_ID, "a b\tc").body(()).unwrap();
//! let res = service.oneshot(req).await.unwrap();
//! let echoed = res.headers()[X_REQUEST_ID].to_str().unwrap();
//! assert_ne!(echoed, "a b\tc");
//! assert_eq!(echoed.len(), 36);
//! assert_eq!(res.body(), echoed);
//! # }
//! ```
//!
//! # Cost
//!
//! With an ID present, a call costs a validation pass over the ID, a reference-count bump on
//! the request's own buffer for the extension (the task-local's copy moves on to the echo), a
//! span (nearly free when no subscriber wants it) and no allocation other than the extension
//! map's first insert. A generated ID is made on the calling thread with no lock: a coarse
//! clock read, a counter and a per-thread random generator. Its text is kept inline, so its
//! copies (extension, task-local) cost no allocation and no reference count; the request
//! header and the echo each get a 36-byte buffer of their own, freed without any atomic
//! operation. The task-local is palisade's own rather than tokio's `task_local!`: a
//! thread-local slot that the request's [`Scoped`] future swaps its ID into before each poll
//! (and its drop) and out of afterwards, with no borrow flag and no lazy initialisation. See
//! `docs/performance.md`.
//!
//! # Cancellation
//!
//! Dropping the response future drops the handler's future inside the span and task-local
//! scope; nothing outlives it.

mod future;
mod id;
mod layer;
#[cfg(feature = "opentelemetry")]
pub mod otel;
mod propagate;
mod service;
mod task;
mod uuid7;

use http::HeaderName;

pub use future::ResponseFuture;
pub use id::CorrelationId;
pub use layer::CorrelationLayer;
#[cfg(feature = "reqwest")]
pub use propagate::WithCorrelation;
pub use propagate::{PropagateCorrelation, PropagateCorrelationLayer};
pub use service::CorrelationService;
pub use task::{Carried, Scoped, carry, scope, spawn};

/// `x-request-id`, the default correlation header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `x-correlation-id`, a common alternative to accept with
/// [`CorrelationLayer::accept_header`].
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// The W3C Trace Context `traceparent` header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
