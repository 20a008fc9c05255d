//! A resilient `reqwest::Client`: the same policy table, the same stack, one breaker per host
//! within each operation.
//!
//! [`ResilientClient`] is a `Service<reqwest::Request>` (the operation comes from the table's
//! `routes`, by method and path, else `defaults`) with a small API for the common verbs that
//! names the operation explicitly:
//!
//! ```no_run
//! use palisade::policy::Policies;
//! use palisade::stack::reqwest::ResilientClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let policies = Policies::from_yaml_str("policies:\n  payment_gateway:\n    timeout: { total: 2s }\n")?;
//! let client = ResilientClient::from_policies(reqwest::Client::new(), policies);
//! let response = client
//!     .post("payment_gateway", "https://gateway.example/v1/charges")
//!     .header("idempotency-key", "charge-42")
//!     .body("{}")
//!     .send()
//!     .await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! A request made while handling one (inside a server stack's or a
//! [`CorrelationLayer`](crate::correlation::CorrelationLayer)'s scope) carries that request's
//! correlation ID in `x-request-id`, unless it already has one.
//!
//! Outcomes are judged by HTTP status (5xx, 408, 429 fail; `Retry-After` is honoured) and
//! by transport errors (connect, timeouts). A request is retried only if it is idempotent
//! (GET, HEAD, OPTIONS, PUT, DELETE, or any method with an `Idempotency-Key` header) and its
//! body can be copied (not a stream).

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::breakers::PerKey;
use super::fallback::NoFallback;
use super::layer::ResilienceLayer;
use super::registry::StackHandle;
use super::select::SelectOperation;
use super::service::Resilience;
use crate::classify::{ClassifyExt, HttpStatus, Or, TransportErrors};
use crate::error::Error;
use crate::policy::{ConfigError, OperationName, Policies, Policy, PolicyStore};
use crate::retry::Replay;
use tower_layer::Layer;

/// How a [`ResilientClient`] classifies outcomes: status first, then transport errors.
pub type ClientClassifier = Or<HttpStatus, TransportErrors>;

/// A request of a [`ResilientClient`], with the operation it runs under if it was named.
#[derive(Debug)]
pub struct ClientRequest {
    /// The operation, if named; otherwise selected from `routes`.
    pub operation: Option<OperationName>,
    /// The request.
    pub request: reqwest::Request,
}

/// The key of each operation's per-host breakers.
pub type HostKey = fn(&ClientRequest) -> Arc<str>;

fn host_of(request: &ClientRequest) -> Arc<str> {
    super::breakers::reqwest_host(&request.request)
}

/// Selects a [`ClientRequest`]'s operation: its name, else `routes` by method and path,
/// else `defaults`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientSelect;

impl SelectOperation<ClientRequest> for ClientSelect {
    fn select<'p>(&self, policies: &'p Policies, request: &ClientRequest) -> &'p Arc<Policy> {
        match &request.operation {
            Some(name) => policies.for_operation(name.as_str()),
            None => policies.for_route(
                request.request.method().as_str(),
                request.request.url().path(),
            ),
        }
    }
}

/// Replays idempotent requests whose body can be copied.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientReplay;

impl<Res> Replay<ClientRequest, Res> for ClientReplay {
    fn replay(&self, request: &ClientRequest) -> Option<ClientRequest> {
        let r = &request.request;
        let idempotent = matches!(
            r.method().as_str(),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
        ) || r.headers().contains_key(crate::retry::IDEMPOTENCY_KEY);
        if !idempotent {
            return None;
        }
        Some(ClientRequest {
            operation: request.operation.clone(),
            request: r.try_clone()?,
        })
    }
}

/// `reqwest::Client` as a service of [`ClientRequest`]s.
#[derive(Clone, Debug)]
pub struct ClientService(pub reqwest::Client);

impl Service<ClientRequest> for ClientService {
    type Response = reqwest::Response;
    type Error = reqwest::Error;
    type Future = <reqwest::Client as Service<reqwest::Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), reqwest::Error>> {
        Service::<reqwest::Request>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: ClientRequest) -> Self::Future {
        #[cfg(feature = "correlation")]
        let request = with_current_id(request);
        self.0.call(request.request)
    }
}

/// Made while handling a request: passes its correlation ID on, unless the caller set one (as
/// `PropagateCorrelationLayer` does); each attempt of a retried call carries it.
#[cfg(feature = "correlation")]
fn with_current_id(mut request: ClientRequest) -> ClientRequest {
    use crate::correlation::{CorrelationId, X_REQUEST_ID};
    let headers = request.request.headers_mut();
    if !headers.contains_key(X_REQUEST_ID)
        && let Some(id) = CorrelationId::current()
    {
        headers.insert(X_REQUEST_ID, id.header_value());
    }
    request
}

/// The stack around a client.
pub type ClientStack = Resilience<
    ClientService,
    ClientClassifier,
    ClientReplay,
    ClientSelect,
    NoFallback,
    PerKey<HostKey>,
>;

/// A `reqwest::Client` behind the resilience stack; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ResilientClient {
    client: reqwest::Client,
    stack: ClientStack,
}

impl ResilientClient {
    /// `client` under `store`'s policies.
    pub fn new(client: reqwest::Client, store: PolicyStore) -> Self {
        // A client has no incoming request to take an ID from: `ClientService` passes the
        // current one on instead.
        let layer = ResilienceLayer::new(store, HttpStatus::new().or(TransportErrors))
            .without_correlation()
            .with_replay(ClientReplay)
            .with_select(ClientSelect)
            .with_breakers(PerKey::new(host_of as HostKey));
        ResilientClient {
            stack: layer.layer(ClientService(client.clone())),
            client,
        }
    }

    /// `client` under a fixed table.
    pub fn from_policies(client: reqwest::Client, policies: Policies) -> Self {
        Self::new(client, PolicyStore::new(policies))
    }

    /// `client` under a policy file (with `PALISADE__...` environment overrides).
    pub fn from_yaml_path(
        client: reqwest::Client,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, ConfigError> {
        Ok(Self::new(client, PolicyStore::from_path(path)?))
    }

    /// The per-operation state (per-host breakers, bulkheads, budgets) and the store.
    pub fn handle(&self) -> StackHandle<ClientClassifier, PerKey<HostKey>> {
        self.stack.handle()
    }

    /// Sends `request` under `operation`'s policy.
    pub async fn execute(
        &self,
        operation: &str,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, Error<reqwest::Error>> {
        self.stack
            .clone()
            .call(ClientRequest {
                operation: Some(OperationName::new(operation)),
                request,
            })
            .await
    }

    /// A request to `url` with `method`, run under `operation`.
    pub fn request(
        &self,
        operation: &str,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> ClientRequestBuilder<'_> {
        ClientRequestBuilder {
            client: self,
            operation: OperationName::new(operation),
            builder: self.client.request(method, url),
        }
    }

    /// A GET under `operation`.
    pub fn get(&self, operation: &str, url: impl reqwest::IntoUrl) -> ClientRequestBuilder<'_> {
        self.request(operation, reqwest::Method::GET, url)
    }

    /// A POST under `operation`.
    pub fn post(&self, operation: &str, url: impl reqwest::IntoUrl) -> ClientRequestBuilder<'_> {
        self.request(operation, reqwest::Method::POST, url)
    }

    /// A PUT under `operation`.
    pub fn put(&self, operation: &str, url: impl reqwest::IntoUrl) -> ClientRequestBuilder<'_> {
        self.request(operation, reqwest::Method::PUT, url)
    }

    /// A DELETE under `operation`.
    pub fn delete(&self, operation: &str, url: impl reqwest::IntoUrl) -> ClientRequestBuilder<'_> {
        self.request(operation, reqwest::Method::DELETE, url)
    }
}

impl Service<reqwest::Request> for ResilientClient {
    type Response = reqwest::Response;
    type Error = Error<reqwest::Error>;
    type Future = <ClientStack as Service<ClientRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        self.stack.call(ClientRequest {
            operation: None,
            request,
        })
    }
}

/// A request being built for a [`ResilientClient`].
#[derive(Debug)]
pub struct ClientRequestBuilder<'a> {
    client: &'a ResilientClient,
    operation: OperationName,
    builder: reqwest::RequestBuilder,
}

impl ClientRequestBuilder<'_> {
    /// Adds a header.
    #[must_use]
    pub fn header<K, V>(mut self, key: K, value: V) -> Self
    where
        http::HeaderName: TryFrom<K>,
        <http::HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        http::HeaderValue: TryFrom<V>,
        <http::HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.builder = self.builder.header(key, value);
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.builder = self.builder.body(body);
        self
    }

    /// Anything else reqwest's builder offers.
    #[must_use]
    pub fn map(
        mut self,
        f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Self {
        self.builder = f(self.builder);
        self
    }

    /// Builds the request and sends it through the stack.
    pub async fn send(self) -> Result<reqwest::Response, Error<reqwest::Error>> {
        let request = self.builder.build().map_err(Error::Inner)?;
        let mut stack = self.client.stack.clone();
        stack
            .call(ClientRequest {
                operation: Some(self.operation),
                request,
            })
            .await
    }
}
