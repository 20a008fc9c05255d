//! Bulkheads: at most `max_concurrent` calls in flight, at most `max_queue` waiting, each for
//! at most `max_wait`; past that, calls fail fast with a typed
//! [`BulkheadFull`](crate::error::BulkheadFull).
//!
//! Operations that name the same bulkhead (the `bulkhead.partition` of their policy, or
//! their own name) share its permits across every service and clone built from the same
//! [`BulkheadRegistry`].
//!
//! ```
//! use std::time::Duration;
//! use palisade::error::{BulkheadRejection, Error};
//! use palisade::policy::BulkheadPolicy;
//! use palisade::bulkhead::BulkheadLayer;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let mut policy = BulkheadPolicy::default();
//! policy.max_concurrent = 1;
//! policy.max_queue = 0;
//! let layer = BulkheadLayer::new("doc_ledger_db", &policy);
//!
//! let service = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(service_fn(|work: Duration| async move {
//!         tokio::time::sleep(work).await;
//!         Ok::<_, std::io::Error>("written")
//!     }));
//!
//! // One call holds the only permit...
//! let mut first = service.clone();
//! let slow = first.ready().await.unwrap().call(Duration::from_secs(1));
//! assert_eq!(layer.available_permits(), 0);
//!
//! // ...so the next one is turned away at once, naming the bulkhead.
//! match service.clone().oneshot(Duration::ZERO).await {
//!     Err(Error::BulkheadFull(full)) => {
//!         assert_eq!(&*full.bulkhead, "doc_ledger_db");
//!         assert_eq!(full.reason, BulkheadRejection::QueueFull);
//!     }
//!     other => panic!("expected a full bulkhead, got {other:?}"),
//! }
//!
//! assert_eq!(slow.await.unwrap(), "written");
//! assert_eq!(layer.available_permits(), 1);
//! assert_eq!(service.oneshot(Duration::ZERO).await.unwrap(), "written");
//! # }
//! ```
//!
//! # Reconfiguring
//!
//! [`BulkheadLayer::reconfigure`] resizes a live bulkhead (a policy reload): every layer,
//! service and clone sharing it sees the new limits at once, and no call in flight loses its
//! permit (a shrink takes effect as they finish).
//!
//! # Metrics and events
//!
//! With the feature `metrics`, a bulkhead keeps `palisade_bulkhead_in_flight{bulkhead}` and
//! `palisade_bulkhead_queued{bulkhead}` up to date and counts rejections in
//! `palisade_bulkhead_rejected_total{bulkhead, reason}`, through handles registered when it is
//! made (install the recorder first). Each rejection is a WARN `tracing` event. See
//! `docs/metrics.md`.

mod future;
mod layer;
mod metrics;
mod partition;
mod service;

pub use future::ResponseFuture;
pub use layer::BulkheadLayer;
pub use partition::BulkheadRegistry;
pub(crate) use partition::{Partition, Permit};
pub use service::Bulkhead;
