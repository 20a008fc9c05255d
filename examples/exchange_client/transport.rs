//! One attempt of one API call, as a tower `Service`: sign, send, read the answer.
//!
//! Signing happens here, at the bottom of the stack, so every attempt carries a fresh
//! `timestamp` (a retry after a minute's pause would otherwise be refused with `-1021`).
//! Secrets live in [`Secret`]s whose `Debug` is redacted; the signed URL is never logged, and
//! transport errors drop it (`reqwest::Error::without_url`) before anyone can print them.
//!
//! Each attempt leaves through palisade's [`PropagateCorrelation`], which copies the
//! call's correlation ID (the task-local one the client sets per call) into `x-request-id`:
//! every try of one call carries the same ID, so the exchange's logs and ours line up.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hmac::{Hmac, Mac};
use http::{HeaderValue, Method};
use palisade::correlation::{PropagateCorrelation, PropagateCorrelationLayer};
use sha2::Sha256;
use tower::{Layer, Service, ServiceExt};

use crate::clock::ServerClock;

/// A response with its body read.
pub type ApiResponse = http::Response<Vec<u8>>;

/// The error of the client's stack: a transport failure, or a palisade layer's own error.
pub type StackError = palisade::Error<TransportError>;

/// The header that carries the API key.
pub const X_MBX_APIKEY: &str = "x-mbx-apikey";

/// How long an answered attempt took from sending to its body being read (governor waits
/// excluded); in the response's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendLatency(pub std::time::Duration);

/// A request could not be sent or its answer not read. Never holds the request's URL.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// reqwest failed to send or read.
    #[error("transport error")]
    Reqwest(#[source] reqwest::Error),
    /// The request could not be built (never for the URLs the client makes).
    #[error("the request could not be built")]
    InvalidRequest,
}

impl TransportError {
    /// Wraps a reqwest error, dropping the URL it carries (a signed URL holds the signature).
    pub fn from_reqwest(err: reqwest::Error) -> Self {
        TransportError::Reqwest(err.without_url())
    }
}

/// A string that must never be printed: an API key, a secret key, a signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An API key and its secret. `Debug` shows neither.
#[derive(Clone)]
pub struct Credentials {
    api_key: Secret,
    secret_key: Secret,
    header: HeaderValue,
}

/// The API key cannot be sent in a header.
#[derive(Debug, thiserror::Error)]
#[error("the API key holds characters an HTTP header cannot carry")]
pub struct InvalidApiKey;

impl Credentials {
    /// Credentials from an API key and secret.
    pub fn new(api_key: Secret, secret_key: Secret) -> Result<Self, InvalidApiKey> {
        let mut header = HeaderValue::from_str(api_key.expose()).map_err(|_| InvalidApiKey)?;
        // Keeps the key out of `Debug` output of header maps, and out of HPACK tables.
        header.set_sensitive(true);
        Ok(Credentials {
            api_key,
            secret_key,
            header,
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &self.api_key)
            .field("secret_key", &self.secret_key)
            .finish()
    }
}

/// HMAC-SHA256 of `payload` under `secret`, hex encoded, as Binance signs requests.
pub fn sign(secret: &Secret, payload: &str) -> Secret {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    Secret::new(hex(&mac.finalize().into_bytes()))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Percent-encodes a query component (everything but RFC 3986 unreserved characters).
pub fn encode_component(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push_str(&hex(&[b]).to_ascii_uppercase());
        }
    }
}

/// The endpoints the client calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `GET /api/v3/ping`
    Ping,
    /// `GET /api/v3/time`
    Time,
    /// `GET /api/v3/ticker/price`
    TickerPrice,
    /// `POST /api/v3/order` (signed)
    PlaceOrder,
    /// `DELETE /api/v3/order` (signed)
    CancelOrder,
    /// `GET /api/v3/order` (signed)
    QueryOrder,
    /// `GET /api/v3/account` (signed)
    Account,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 7] = [
        Operation::Ping,
        Operation::Time,
        Operation::TickerPrice,
        Operation::PlaceOrder,
        Operation::CancelOrder,
        Operation::QueryOrder,
        Operation::Account,
    ];

    /// The name used in logs and the report.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Ping => "ping",
            Operation::Time => "time",
            Operation::TickerPrice => "ticker_price",
            Operation::PlaceOrder => "place_order",
            Operation::CancelOrder => "cancel_order",
            Operation::QueryOrder => "query_order",
            Operation::Account => "account",
        }
    }

    /// The HTTP method.
    pub fn method(self) -> Method {
        match self {
            Operation::PlaceOrder => Method::POST,
            Operation::CancelOrder => Method::DELETE,
            _ => Method::GET,
        }
    }

    /// The path.
    pub const fn path(self) -> &'static str {
        match self {
            Operation::Ping => "/api/v3/ping",
            Operation::Time => "/api/v3/time",
            Operation::TickerPrice => "/api/v3/ticker/price",
            Operation::PlaceOrder | Operation::CancelOrder | Operation::QueryOrder => {
                "/api/v3/order"
            }
            Operation::Account => "/api/v3/account",
        }
    }

    /// The operation a method and path name, if any.
    pub fn from_route(method: &Method, path: &str) -> Option<Operation> {
        Operation::ALL
            .into_iter()
            .find(|op| op.path() == path && op.method() == *method)
    }

    /// The request weight the exchange charges (Binance spot's figures for one symbol).
    pub const fn weight(self) -> u32 {
        match self {
            Operation::Ping | Operation::Time => 1,
            Operation::TickerPrice => 2,
            Operation::PlaceOrder | Operation::CancelOrder => 1,
            Operation::QueryOrder => 4,
            Operation::Account => 20,
        }
    }

    /// Whether the request is signed (`timestamp`, `recvWindow`, `signature`, API key).
    pub const fn signed(self) -> bool {
        matches!(
            self,
            Operation::PlaceOrder
                | Operation::CancelOrder
                | Operation::QueryOrder
                | Operation::Account
        )
    }

    /// The policy in `policies.yaml` the operation runs under.
    pub const fn policy(self) -> &'static str {
        match self {
            Operation::Ping | Operation::Time | Operation::TickerPrice => "exchange_public",
            Operation::PlaceOrder | Operation::CancelOrder | Operation::QueryOrder => {
                "exchange_order"
            }
            Operation::Account => "exchange_account",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unsigned request: cheap to clone, so each attempt signs its own copy.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    /// The endpoint.
    pub operation: Operation,
    /// Query parameters, in order, without `timestamp`, `recvWindow` and `signature`.
    pub params: Vec<(&'static str, String)>,
    /// Shared by every copy the retry layer sends: counts the call's tries.
    pub trace: CallTrace,
}

/// What the tries of one call share (each retry sends a clone of the request).
#[derive(Clone, Debug, Default)]
pub struct CallTrace(Arc<std::sync::Mutex<TraceState>>);

#[derive(Debug, Default)]
struct TraceState {
    tries: u32,
    last_end: Option<tokio::time::Instant>,
}

impl CallTrace {
    fn state(&self) -> std::sync::MutexGuard<'_, TraceState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a try starting `now`; for a retry, returns the wait since the previous try
    /// ended (the retry's backoff).
    pub fn start_try(&self, now: tokio::time::Instant) -> Option<std::time::Duration> {
        let mut state = self.state();
        state.tries += 1;
        state
            .last_end
            .take()
            .map(|end| now.saturating_duration_since(end))
    }

    /// Notes that a try ended `now`.
    pub fn end_try(&self, now: tokio::time::Instant) {
        self.state().last_end = Some(now);
    }

    /// Tries made so far (including any the circuit breaker refused).
    pub fn tries(&self) -> u32 {
        self.state().tries
    }
}

impl ApiRequest {
    /// A request with no parameters.
    pub fn new(operation: Operation) -> Self {
        ApiRequest {
            operation,
            params: Vec::new(),
            trace: CallTrace::default(),
        }
    }

    /// Adds a parameter.
    #[must_use]
    pub fn param(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.params.push((name, value.into()));
        self
    }
}

/// Sends an `http::Request` with reqwest: the service palisade's
/// [`PropagateCorrelationLayer`] wraps (its `reqwest::Request` support needs palisade's
/// `reqwest` feature, which the example does not require).
#[derive(Clone, Debug)]
pub struct HttpSend(reqwest::Client);

impl Service<http::Request<Vec<u8>>> for HttpSend {
    type Response = reqwest::Response;
    type Error = reqwest::Error;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, reqwest::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), reqwest::Error>> {
        // reqwest's client pools connections itself and is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Vec<u8>>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move { client.execute(reqwest::Request::try_from(request)?).await })
    }
}

struct Inner {
    http: PropagateCorrelation<HttpSend>,
    base_url: String,
    credentials: Credentials,
    clock: Arc<ServerClock>,
    recv_window_ms: u64,
}

/// The bottom of the client's stack: signs and sends one attempt.
#[derive(Clone)]
pub struct RestTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for RestTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestTransport")
            .field("base_url", &self.inner.base_url)
            .field("credentials", &self.inner.credentials)
            .field("recv_window_ms", &self.inner.recv_window_ms)
            .finish_non_exhaustive()
    }
}

impl RestTransport {
    /// A transport to `base_url` (`http://127.0.0.1:PORT`).
    pub fn new(
        base_url: impl Into<String>,
        credentials: Credentials,
        clock: Arc<ServerClock>,
        recv_window_ms: u64,
    ) -> Self {
        RestTransport {
            inner: Arc::new(Inner {
                http: PropagateCorrelationLayer::new().layer(HttpSend(reqwest::Client::new())),
                base_url: base_url.into(),
                credentials,
                clock,
                recv_window_ms,
            }),
        }
    }
}

impl Inner {
    fn url(&self, request: &ApiRequest) -> String {
        let op = request.operation;
        let mut query = String::new();
        for (name, value) in &request.params {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(name);
            query.push('=');
            encode_component(value, &mut query);
        }
        if op.signed() {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&format!(
                "timestamp={}&recvWindow={}",
                self.clock.now_ms(),
                self.recv_window_ms
            ));
            let signature = sign(&self.credentials.secret_key, &query);
            query.push_str("&signature=");
            query.push_str(signature.expose());
        }
        let mut url = format!("{}{}", self.base_url, op.path());
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        url
    }

    async fn send(&self, request: ApiRequest) -> Result<ApiResponse, StackError> {
        let op = request.operation;
        let url = self.url(&request);
        let mut builder = http::Request::builder().method(op.method()).uri(url);
        if op.signed() {
            builder = builder.header(X_MBX_APIKEY, self.credentials.header.clone());
        }
        // The URL is ours and valid; a failure here would only name the request, not the URL.
        let request = builder
            .body(Vec::new())
            .map_err(|_| palisade::Error::Inner(TransportError::InvalidRequest))?;
        tracing::debug!(operation = op.as_str(), "sending");
        let sent = tokio::time::Instant::now();
        let response = self
            .http
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| palisade::Error::Inner(TransportError::from_reqwest(e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| palisade::Error::Inner(TransportError::from_reqwest(e)))?;
        tracing::debug!(
            operation = op.as_str(),
            status = status.as_u16(),
            "answered"
        );
        let mut answer = http::Response::new(Vec::from(body));
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        answer.extensions_mut().insert(SendLatency(sent.elapsed()));
        Ok(answer)
    }
}

impl Service<ApiRequest> for RestTransport {
    type Response = ApiResponse;
    type Error = StackError;
    type Future = Pin<Box<dyn Future<Output = Result<ApiResponse, StackError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StackError>> {
        // reqwest's client pools connections itself and is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ApiRequest) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.send(request).await })
    }
}
