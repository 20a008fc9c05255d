//! The quote server: a tonic service with palisade's stack on `Server::builder().layer`.
//!
//! ```text
//! Record (what the demo prints) -> GrpcStatuses -> deadline from `grpc-timeout`
//!                                -> ResilienceLayer (server.yaml) -> the handlers
//! ```
//!
//! The caller's `grpc-timeout` becomes the task's [`Deadline`](palisade::timeout::Deadline)
//! (a `TimeoutLayer` reading the header); every timeout of the stack below takes the smaller
//! of its own limit and the time left, so a handler still running when the caller gives up is
//! dropped and the caller gets `DEADLINE_EXCEEDED`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::Error;
use palisade::classify::{GrpcResponse, GrpcStatus};
use palisade::error::TimeoutKind;
use palisade::policy::Policies;
use palisade::stack::ResilienceLayer;
use palisade::stack::grpc::GrpcStatusLayer;
use palisade::timeout::{GRPC_TIMEOUT, TimeoutLayer, parse_grpc_timeout};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::server::UnaryService;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};
use tower::{Layer, Service, ServiceBuilder};

use crate::codec::Text;

/// `Get`: a quote. Every third call's first attempt fails (the feed hiccups).
pub const GET: &str = "/quotes.v1.Quotes/Get";
/// `History`: slow, it takes [`HISTORY_WORK`].
pub const HISTORY: &str = "/quotes.v1.Quotes/History";
/// `Place`: the matching engine is down; always `UNAVAILABLE`.
pub const PLACE: &str = "/quotes.v1.Orders/Place";

/// How long a history query works before it answers.
pub const HISTORY_WORK: Duration = Duration::from_secs(2);

/// The server's own limit when a caller sends no `grpc-timeout`.
const NO_CALLER_DEADLINE: Duration = Duration::from_secs(60);

/// What the server saw of one call, recorded outside its whole stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCall {
    /// The gRPC method path.
    pub method: String,
    /// The caller's `grpc-timeout`, parsed.
    pub grpc_timeout: Option<Duration>,
    /// The status answered; `None` if the caller went away first (the call was dropped).
    pub status: Option<Code>,
    /// From the request's arrival to the answer (or the drop).
    pub elapsed: Duration,
}

/// Everything the server saw, for the report and the tests.
#[derive(Debug, Default)]
pub struct ServerLog {
    calls: Mutex<Vec<ServerCall>>,
    handled: Mutex<HashMap<String, u32>>,
    finished_history: AtomicU32,
    changed: Notify,
}

impl ServerLog {
    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<ServerCall> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many calls of `method` reached its handler.
    pub fn handled(&self, method: &str) -> u32 {
        let handled = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        handled.get(method).copied().unwrap_or(0)
    }

    /// How many history queries ran to the end (a dropped one does not).
    pub fn finished_history(&self) -> u32 {
        self.finished_history.load(Ordering::SeqCst)
    }

    /// Waits until `count` calls are recorded (a call is recorded when its answer is sent or
    /// it is dropped, which can come a moment after the client returns).
    pub async fn wait_for_calls(&self, count: usize) -> Vec<ServerCall> {
        loop {
            let changed = self.changed.notified();
            let calls = self.calls();
            if calls.len() >= count {
                return calls;
            }
            changed.await;
        }
    }

    fn record(&self, call: ServerCall) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
        self.changed.notify_waiters();
    }

    fn reached(&self, method: &str) -> u32 {
        let mut handled = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        let n = handled.entry(method.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

/// The handlers of one method.
#[derive(Clone)]
struct Quotes {
    method: &'static str,
    log: Arc<ServerLog>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl UnaryService<String> for Quotes {
    type Response = String;
    type Future = BoxFuture<Result<Response<String>, Status>>;

    fn call(&mut self, request: Request<String>) -> Self::Future {
        let Quotes { method, log } = self.clone();
        let symbol = request.into_inner();
        Box::pin(async move {
            let n = log.reached(method);
            match method {
                GET if n % 3 == 2 => Err(Status::unavailable("quote feed hiccup")),
                GET => Ok(Response::new(format!("{symbol} 1.08{n:02}"))),
                HISTORY => {
                    tokio::time::sleep(HISTORY_WORK).await;
                    log.finished_history.fetch_add(1, Ordering::SeqCst);
                    Ok(Response::new(format!("{symbol}: 1.0790 1.0801 1.0842")))
                }
                _ => Err(Status::unavailable("matching engine down")),
            }
        })
    }
}

/// A server listening on 127.0.0.1 (any port) until the runtime stops.
pub struct QuoteServer {
    addr: SocketAddr,
    log: Arc<ServerLog>,
}

impl QuoteServer {
    /// Starts the server under the policies of `server_yaml`.
    pub async fn start(server_yaml: &str) -> Result<QuoteServer, Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(ServerLog::default());
        let policies = Policies::from_yaml_str(server_yaml)?;

        let stack = ResilienceLayer::from_policies(policies, GrpcResponse(GrpcStatus::default()));
        // The caller's deadline, read from `grpc-timeout`, bounds everything below it.
        let caller_deadline =
            TimeoutLayer::new("grpc-timeout", TimeoutKind::Total, NO_CALLER_DEADLINE)
                .with_grpc_timeout();
        let statuses = GrpcStatusLayer::new(
            ServiceBuilder::new()
                .map_err(Error::flatten)
                .layer(caller_deadline)
                .layer(stack),
        );

        let handlers = Arc::clone(&log);
        let quotes = tower::service_fn(move |request: http::Request<Body>| {
            let method = match request.uri().path() {
                GET => GET,
                HISTORY => HISTORY,
                PLACE => PLACE,
                _ => "",
            };
            let log = Arc::clone(&handlers);
            async move {
                if method.is_empty() {
                    return Ok::<_, Infallible>(
                        Status::unimplemented("no such method").into_http(),
                    );
                }
                let mut grpc = tonic::server::Grpc::new(Text);
                Ok(grpc.unary(Quotes { method, log }, request).await)
            }
        });

        let record = RecordLayer {
            log: Arc::clone(&log),
        };
        tokio::spawn(async move {
            let served = Server::builder()
                .layer(record)
                .layer(statuses)
                .serve_with_incoming(
                    quotes,
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                )
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "quote server stopped");
            }
        });
        Ok(QuoteServer { addr, log })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the server saw.
    pub fn log(&self) -> &Arc<ServerLog> {
        &self.log
    }
}

/// Records every call as the caller sees it: its `grpc-timeout`, the status answered (or
/// that the call was dropped), how long it took.
#[derive(Clone)]
struct RecordLayer {
    log: Arc<ServerLog>,
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            log: Arc::clone(&self.log),
        }
    }
}

#[derive(Clone)]
struct Record<S> {
    inner: S,
    log: Arc<ServerLog>,
}

impl<S, B> Service<http::Request<Body>> for Record<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    // Example code: a boxed future keeps the recorder short.
    type Future = BoxFuture<Result<http::Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut pending = PendingCall {
            call: Some(ServerCall {
                method: request.uri().path().to_owned(),
                grpc_timeout: request
                    .headers()
                    .get(GRPC_TIMEOUT)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_grpc_timeout),
                status: None,
                elapsed: Duration::ZERO,
            }),
            started: Instant::now(),
            log: Arc::clone(&self.log),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            if let Ok(response) = &result {
                // Refusals and handler errors are trailers-only: the status is in the headers.
                // A success carries its status in the trailers, after the body.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from);
                pending.finish(Some(code));
            }
            result
        })
    }
}

/// A call not yet answered: dropped unanswered, it is recorded as such.
struct PendingCall {
    call: Option<ServerCall>,
    started: Instant,
    log: Arc<ServerLog>,
}

impl PendingCall {
    fn finish(&mut self, status: Option<Code>) {
        if let Some(mut call) = self.call.take() {
            call.status = status;
            call.elapsed = self.started.elapsed();
            self.log.record(call);
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.finish(None);
    }
}
