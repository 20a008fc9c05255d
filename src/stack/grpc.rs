//! Palisade errors as gRPC statuses, for tonic servers and clients.
//!
//! | error | status | `grpc-retry-pushback-ms` |
//! |---|---|---|
//! | circuit open | `UNAVAILABLE` | milliseconds until the next probe |
//! | bulkhead full | `RESOURCE_EXHAUSTED` | the bulkhead's wait, if it had one |
//! | timeout, expired deadline | `DEADLINE_EXCEEDED` | |
//! | kill switch (`enabled: false`) | `UNAVAILABLE` | |
//! | the service's own status | itself | |
//!
//! A refusal made while a correlation ID is current (inside the stack's correlation layer, or
//! in a client call made while handling a request) carries it in `x-request-id` metadata.
//!
//! On a server, [`GrpcStatusLayer`] (or [`ResilienceLayer::grpc_statuses`](super::ResilienceLayer::grpc_statuses))
//! makes the stack an infallible HTTP service answering refusals with trailers-only gRPC
//! responses, for `tonic::transport::Server::builder().layer(..)`; operations are selected by
//! gRPC method path (`/exchange.v1.Orders/Place`) in the table's `routes`. On a client, put
//! the stack around a `Channel` and turn its errors into statuses with `Status::from`.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tonic::Status;
use tonic::metadata::MetadataValue;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{BulkheadRejection, Error};

/// The metadata key with which a server tells clients how long to wait before retrying.
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// The status a layer's refusal is answered with; `None` for the service's own error.
pub fn layer_status<E>(error: &Error<E>) -> Option<Status> {
    let (mut status, pushback) = match error.last_attempt() {
        Error::CircuitOpen(open) => (
            Status::unavailable(open.to_string()),
            Some(open.retry_after),
        ),
        Error::BulkheadFull(full) => {
            let wait = match full.reason {
                BulkheadRejection::WaitTimedOut(wait) => Some(wait),
                BulkheadRejection::QueueFull => None,
            };
            (Status::resource_exhausted(full.to_string()), wait)
        }
        Error::Timeout(t) => (Status::deadline_exceeded(t.to_string()), None),
        Error::OperationDisabled(off) => (Status::unavailable(off.to_string()), None),
        _ => return None,
    };
    // The request's ID, when made inside a correlation scope (a server stack's handler, or a
    // client call made while handling a request), so the caller can quote it.
    #[cfg(feature = "correlation")]
    if let Some(id) = crate::correlation::CorrelationId::current()
        && let Ok(value) = MetadataValue::try_from(id.as_str())
    {
        status.metadata_mut().insert("x-request-id", value);
    }
    if let Some(wait) = pushback {
        let millis =
            u64::try_from(wait.max(Duration::from_millis(1)).as_millis()).unwrap_or(u64::MAX);
        if let Ok(value) = MetadataValue::try_from(millis.to_string()) {
            status.metadata_mut().insert(GRPC_RETRY_PUSHBACK_MS, value);
        }
    }
    Some(status)
}

/// The status of any palisade error: a layer's refusal as in the [module docs](self), the
/// service's own error as `INTERNAL` with its message.
pub fn grpc_status<E: Display>(error: &Error<E>) -> Status {
    layer_status(error).unwrap_or_else(|| Status::internal(error.to_string()))
}

impl From<Error<Status>> for Status {
    /// A refusal as in the [module docs](crate::stack::grpc); the service's own status (of the
    /// last attempt) as it was.
    fn from(error: Error<Status>) -> Status {
        match layer_status(&error) {
            Some(status) => status,
            None => match error.into_inner() {
                Ok(status) => status,
                Err(other) => Status::internal(other.to_string()),
            },
        }
    }
}

/// Answers a service's [`Error`]s with trailers-only gRPC responses: it never fails.
#[derive(Clone, Debug)]
pub struct GrpcStatusLayer<L> {
    inner: L,
}

impl<L> GrpcStatusLayer<L> {
    /// Wraps the services `inner` builds.
    pub fn new(inner: L) -> Self {
        GrpcStatusLayer { inner }
    }
}

impl<S, L: Layer<S>> Layer<S> for GrpcStatusLayer<L> {
    type Service = GrpcStatuses<L::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcStatuses {
            inner: self.inner.layer(inner),
        }
    }
}

/// A service whose [`Error`]s are answered as gRPC statuses. Made by [`GrpcStatusLayer`].
#[derive(Clone, Debug)]
pub struct GrpcStatuses<S> {
    inner: S,
}

impl<S> GrpcStatuses<S> {
    pub(crate) fn new(inner: S) -> Self {
        GrpcStatuses { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, B, E> Service<Req> for GrpcStatuses<S>
where
    S: Service<Req, Response = http::Response<B>, Error = Error<E>>,
    B: Default,
    E: Display,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = GrpcStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The stack is always ready; a wrapped service that is not answers in the next call.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        GrpcStatusFuture {
            future: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`GrpcStatuses`].
    #[derive(Debug)]
    pub struct GrpcStatusFuture<F> {
        #[pin]
        future: F,
    }
}

impl<F, B, E> Future for GrpcStatusFuture<F>
where
    F: Future<Output = Result<http::Response<B>, Error<E>>>,
    B: Default,
    E: Display,
{
    type Output = Result<http::Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().future.poll(cx)) {
            Ok(response) => response,
            Err(error) => grpc_status(&error).into_http(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BulkheadFull, CircuitOpen, OperationDisabled, TimeoutError, TimeoutKind};
    use tonic::Code;

    fn pushback(s: &Status) -> Option<&str> {
        s.metadata()
            .get(GRPC_RETRY_PUSHBACK_MS)
            .map(|v| v.to_str().unwrap())
    }

    #[test]
    fn each_refusal_has_its_code_and_pushback_where_known() {
        let open: Error<Status> = Error::CircuitOpen(CircuitOpen {
            breaker: "orders".into(),
            retry_after: Duration::from_millis(1500),
        });
        let s = Status::from(open);
        assert_eq!((s.code(), pushback(&s)), (Code::Unavailable, Some("1500")));

        let full: Error<Status> = Error::BulkheadFull(BulkheadFull {
            bulkhead: "orders".into(),
            max_concurrent: 1,
            max_queue: 0,
            reason: BulkheadRejection::QueueFull,
        });
        let s = Status::from(full);
        assert_eq!((s.code(), pushback(&s)), (Code::ResourceExhausted, None));

        let late: Error<Status> = Error::Timeout(TimeoutError {
            kind: TimeoutKind::Attempt,
            operation: "orders".into(),
            limit: Duration::from_secs(1),
        });
        assert_eq!(Status::from(late).code(), Code::DeadlineExceeded);

        let off: Error<Status> = Error::OperationDisabled(OperationDisabled {
            operation: "orders".into(),
        });
        let s = Status::from(off);
        assert_eq!((s.code(), pushback(&s)), (Code::Unavailable, None));

        let own: Error<Status> = Error::Inner(Status::not_found("no such order"));
        assert_eq!(Status::from(own).code(), Code::NotFound);
    }

    #[cfg(feature = "correlation")]
    #[tokio::test]
    async fn a_refusal_made_while_an_id_is_current_carries_it() {
        use crate::correlation::{CorrelationId, scope};
        let open = || -> Error<Status> {
            Error::CircuitOpen(CircuitOpen {
                breaker: "orders".into(),
                retry_after: Duration::from_secs(1),
            })
        };
        let id = CorrelationId::parse(b"order-7f3a").unwrap();
        let s = scope(id, async { Status::from(open()) }).await;
        assert_eq!(s.metadata().get("x-request-id").unwrap(), "order-7f3a");
        // Outside any request: no ID to quote.
        assert!(
            Status::from(open())
                .metadata()
                .get("x-request-id")
                .is_none()
        );
    }

    #[test]
    fn refusals_become_trailers_only_responses() {
        let open: Error<Status> = Error::CircuitOpen(CircuitOpen {
            breaker: "orders".into(),
            retry_after: Duration::from_secs(2),
        });
        let response: http::Response<()> = grpc_status(&open).into_http();
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()[GRPC_RETRY_PUSHBACK_MS], "2000");
    }
}
