//! The quote client: palisade's stack around a tonic `Channel`.
//!
//! ```text
//! ResilienceLayer (client.yaml: total timeout -> retry -> breaker -> attempt timeout)
//!     -> one unary call -> PropagateDeadline -> Channel
//! ```
//!
//! The stack wraps the typed call ([`Call`], cheap to clone), so a retry sends the message
//! again without buffering an HTTP body. Below it, [`PropagateDeadlineLayer`] writes the time
//! the stack has left (the smaller of the attempt timeout and what remains of the total) into
//! each request's `grpc-timeout`, so the server gives up when the client does.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::circuit_breaker::Transition;
use palisade::classify::GrpcStatus;
use palisade::policy::{Policies, Policy};
use palisade::retry::CloneRequest;
use palisade::stack::{ResilienceLayer, SelectOperation, StackHandle};
use palisade::timeout::{Deadline, PropagateDeadline, PropagateDeadlineLayer};
use tokio::sync::broadcast;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::codec::Text;

/// One unary call: the method, the operation whose policy applies, the message.
#[derive(Clone, Debug)]
pub struct Call {
    /// The gRPC method path.
    pub method: &'static str,
    /// The operation in `client.yaml`.
    pub operation: &'static str,
    /// The request message.
    pub message: String,
}

/// Selects a call's policy by its operation.
#[derive(Clone, Copy, Debug)]
struct ByCall;

impl SelectOperation<Call> for ByCall {
    fn select<'p>(&self, policies: &'p Policies, call: &Call) -> &'p Arc<Policy> {
        policies.for_operation(call.operation)
    }
}

/// What the client knows of its attempts: how many went on the wire, and the time the stack
/// had left when the last one was sent.
#[derive(Debug, Default)]
pub struct Attempts {
    sent: AtomicU32,
    last_budget: Mutex<Option<Duration>>,
}

impl Attempts {
    /// Attempts sent so far.
    pub fn sent(&self) -> u32 {
        self.sent.load(Ordering::SeqCst)
    }

    /// The deadline's remaining time when the last attempt was sent.
    pub fn last_budget(&self) -> Option<Duration> {
        *self.last_budget.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The stack's service type, named for [`QuoteClient`].
type Stacked = palisade::stack::Resilience<
    Unary,
    GrpcStatus,
    CloneRequest,
    ByCall,
    palisade::stack::NoFallback,
>;

/// A client of the quote server.
pub struct QuoteClient {
    service: Stacked,
    handle: StackHandle<GrpcStatus>,
    attempts: Arc<Attempts>,
}

impl QuoteClient {
    /// Connects to `url` with the policies of `client_yaml`.
    pub async fn connect(
        url: String,
        client_yaml: &str,
    ) -> Result<QuoteClient, Box<dyn std::error::Error>> {
        let channel = Endpoint::from_shared(url)?.connect().await?;
        let policies = Policies::from_yaml_str(client_yaml)?;
        let attempts = Arc::new(Attempts::default());
        let unary = Unary {
            grpc: tonic::client::Grpc::new(tower::Layer::layer(&PropagateDeadlineLayer, channel)),
            attempts: Arc::clone(&attempts),
        };
        // Typed calls, not HTTP requests: the server-side correlation layer does not apply.
        let stack = ResilienceLayer::from_policies(policies, GrpcStatus::default())
            .without_correlation()
            .with_replay(CloneRequest)
            .with_select(ByCall);
        let handle = stack.handle();
        let service = ServiceBuilder::new().layer(stack).service(unary);
        Ok(QuoteClient {
            service,
            handle,
            attempts,
        })
    }

    /// Makes one call through the stack; palisade's refusals become statuses
    /// (`UNAVAILABLE` with `grpc-retry-pushback-ms`, `DEADLINE_EXCEEDED`).
    pub async fn call(&self, call: Call) -> Result<String, Status> {
        self.service
            .clone()
            .oneshot(call)
            .await
            .map_err(Status::from)
    }

    /// The stack's per-operation state: breakers, budgets.
    pub fn handle(&self) -> &StackHandle<GrpcStatus> {
        &self.handle
    }

    /// The attempts sent.
    pub fn attempts(&self) -> &Attempts {
        &self.attempts
    }

    /// The transitions of `operation`'s breaker from now on.
    pub fn breaker_events(&self, operation: &str) -> Option<broadcast::Receiver<Transition>> {
        self.handle.breaker(operation).map(|b| b.subscribe())
    }
}

/// One unary call on the channel: the service the stack wraps.
#[derive(Clone)]
pub struct Unary {
    grpc: tonic::client::Grpc<PropagateDeadline<Channel>>,
    attempts: Arc<Attempts>,
}

impl Service<Call> for Unary {
    type Response = String;
    type Error = Status;
    // Example code: the call is an async block, boxed.
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, Status>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        // The channel's own readiness is awaited in the call.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let mut grpc = self.grpc.clone();
        let attempts = Arc::clone(&self.attempts);
        Box::pin(async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
            attempts.sent.fetch_add(1, Ordering::SeqCst);
            *attempts
                .last_budget
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Deadline::current().map(|d| d.remaining());
            let path = http::uri::PathAndQuery::from_static(call.method);
            let deadline = Deadline::current();
            match grpc.unary(Request::new(call.message), path, Text).await {
                Ok(response) => Ok(response.into_inner()),
                // tonic's channel enforces the `grpc-timeout` it sends, and reports its own
                // expiry as CANCELLED; to the caller it is the deadline passing.
                Err(s)
                    if s.code() == Code::Cancelled && deadline.is_some_and(|d| d.is_expired()) =>
                {
                    Err(Status::deadline_exceeded(format!(
                        "deadline passed: {}",
                        s.message()
                    )))
                }
                Err(s) => Err(s),
            }
        })
    }
}
