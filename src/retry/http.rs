//! Retrying `http::Request`s: buffer the body so it can be sent again, and replay only what
//! is safe to repeat.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Attempts, Replay, Retry, RetryBudget, RetryLayer};
use crate::policy::{Policy, RetryPolicy};

/// The header that makes a non-idempotent request (a `POST` of a payment) safe to retry: the
/// server promises to apply a given key once.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Whether a request may be sent twice: an idempotent method (`GET`, `HEAD`, `OPTIONS`,
/// `PUT`, `DELETE`) or an `Idempotency-Key` header.
fn is_idempotent<B>(request: &Request<B>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || request.headers().contains_key(IDEMPOTENCY_KEY)
}

/// A request body that can be sent again if it was buffered whole.
///
/// Made by [`BufferBody`]: a body of at most the buffer limit is read into memory before the
/// first attempt ([`is_replayable`](Self::is_replayable)); a longer one, or one that was not
/// eligible for retry, streams through once (the part already read first).
pub struct ReplayBody<B: Body> {
    kind: Kind<B>,
}

enum Kind<B: Body> {
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming {
        prefix: Option<Bytes>,
        rest: B,
    },
    Failed {
        prefix: Option<Bytes>,
        // Boxed so the body stays `Unpin` whatever the error type; only on a failed read.
        error: Option<Box<B::Error>>,
    },
}

impl<B: Body> ReplayBody<B> {
    /// A body held in memory: replayable.
    pub fn buffered(data: Bytes) -> Self {
        ReplayBody {
            kind: Kind::Buffered {
                data: Some(data),
                trailers: None,
            },
        }
    }

    /// A body streamed through once: not replayable.
    pub fn streaming(body: B) -> Self {
        ReplayBody {
            kind: Kind::Streaming {
                prefix: None,
                rest: body,
            },
        }
    }

    /// Whether the body is in memory, so the request can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// A copy of a buffered body (cheap: the bytes are shared), or `None`.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data, trailers } => Some(ReplayBody {
                kind: Kind::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            _ => None,
        }
    }
}

impl<B: Body> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Buffered { data, .. } => f
                .debug_struct("ReplayBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Streaming { .. } => f.write_str("ReplayBody::Streaming"),
            Kind::Failed { .. } => f.write_str("ReplayBody::Failed"),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Buffered { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Kind::Streaming { prefix, rest } => {
                if let Some(prefix) = prefix.take().filter(|p| !p.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                let frame = ready!(Pin::new(rest).poll_frame(cx));
                Poll::Ready(
                    frame.map(|f| f.map(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))),
                )
            }
            Kind::Failed { prefix, error } => {
                if let Some(prefix) = prefix.take().filter(|p| !p.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Poll::Ready(error.take().map(|e| Err(*e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Kind::Streaming { prefix, rest } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && rest.is_end_stream()
            }
            Kind::Failed { prefix, error } => {
                prefix.as_ref().is_none_or(Bytes::is_empty) && error.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len) as u64;
        match &self.kind {
            Kind::Buffered { data, .. } => SizeHint::with_exact(len(data)),
            Kind::Streaming { prefix, rest } => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(len(prefix)));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(len(prefix)));
                }
                hint
            }
            Kind::Failed { prefix, .. } => SizeHint::with_exact(len(prefix)),
        }
    }
}

/// Replays `http::Request<ReplayBody<B>>`s whose body was buffered whole, by default only
/// idempotent ones (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, or any request with an
/// `Idempotency-Key` header). Records the attempts made as an [`Attempts`] extension of the
/// final response.
#[derive(Clone, Copy, Debug)]
pub struct HttpReplay {
    idempotent_only: bool,
}

impl Default for HttpReplay {
    fn default() -> Self {
        HttpReplay {
            idempotent_only: true,
        }
    }
}

impl<B: Body, ResB> Replay<Request<ReplayBody<B>>, Response<ResB>> for HttpReplay {
    fn replay(&self, request: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        if self.idempotent_only && !is_idempotent(request) {
            return None;
        }
        let body = request.body().try_clone()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }

    fn record_attempts(&self, response: &mut Response<ResB>, attempts: u32) {
        response.extensions_mut().insert(Attempts(attempts));
    }
}

/// Retries `http::Request`s: a [`BufferBody`] around a [`Retry`] with [`HttpReplay`].
///
/// The body of a request eligible for retry is read into memory before the first attempt,
/// up to [`DEFAULT_BODY_LIMIT`](Self::DEFAULT_BODY_LIMIT) (64 KiB); a longer body is sent
/// once, streaming, and not retried.
#[derive(Clone, Debug)]
pub struct HttpRetryLayer<C> {
    retry: RetryLayer<C, HttpReplay>,
    replay: HttpReplay,
    body_limit: usize,
}

impl<C> HttpRetryLayer<C> {
    /// The default cap on a buffered body: 64 KiB.
    pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

    /// Retries calls of `operation` as `policy` says, judged by `classifier`.
    pub fn new(operation: impl Into<Arc<str>>, policy: RetryPolicy, classifier: C) -> Self {
        HttpRetryLayer {
            retry: RetryLayer::new(operation, policy, classifier)
                .with_replay(HttpReplay::default()),
            replay: HttpReplay::default(),
            body_limit: Self::DEFAULT_BODY_LIMIT,
        }
    }

    /// The retry policy of a resolved operation policy.
    pub fn from_policy(policy: &Policy, classifier: C) -> Self {
        HttpRetryLayer::new(policy.name_arc().clone(), policy.retry, classifier)
    }

    /// Buffers bodies of up to `limit` bytes for replay.
    #[must_use]
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Retries every method, not only idempotent ones. Only for servers that deduplicate
    /// requests by other means.
    #[must_use]
    pub fn retry_any_method(mut self) -> Self {
        self.replay = HttpReplay {
            idempotent_only: false,
        };
        self.retry = self.retry.with_replay(self.replay);
        self
    }

    /// Seeds the jitter, for reproducible tests.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.retry = self.retry.with_seed(seed);
        self
    }

    /// Shares `budget` instead of the layer's own.
    #[must_use]
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.retry = self.retry.with_budget(budget);
        self
    }

    /// The budget the layer's services share.
    pub fn budget(&self) -> &RetryBudget {
        self.retry.budget()
    }
}

impl<S, C: Clone> Layer<S> for HttpRetryLayer<C> {
    type Service = BufferBody<Retry<S, C, HttpReplay>>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner: self.retry.layer(inner),
            limit: self.body_limit,
            idempotent_only: self.replay.idempotent_only,
        }
    }
}

/// Reads the body of a request eligible for retry into memory (up to a limit) and passes the
/// request on with a [`ReplayBody`]. Made by [`HttpRetryLayer`].
///
/// Buffering happens in the response future, after `poll_ready`: the readied service is
/// moved into the future (a clone stays here), so readiness is honoured. Dropping the future
/// drops the partly read body. A body that fails to read is passed on once, failing at the
/// same point.
#[derive(Clone, Debug)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
    idempotent_only: bool,
}

impl<S> BufferBody<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    B: Body + Unpin,
    B::Data: Buf,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BufferBodyFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let eligible = !self.idempotent_only || is_idempotent(&request);
        let (parts, body) = request.into_parts();
        let hint = body.size_hint().lower();
        if !eligible || hint > self.limit as u64 {
            let future = self
                .inner
                .call(Request::from_parts(parts, ReplayBody::streaming(body)));
            return BufferBodyFuture::calling(future);
        }
        if body.is_end_stream() {
            let future = self.inner.call(Request::from_parts(
                parts,
                ReplayBody::buffered(Bytes::new()),
            ));
            return BufferBodyFuture::calling(future);
        }
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        BufferBodyFuture {
            state: State::Buffering {
                parts: Some(parts),
                body: Some(body),
                buffer: BytesMut::new(),
                limit: self.limit,
                service: Some(service),
            },
        }
    }
}

pin_project! {
    /// The response future of [`BufferBody`]: reads the body, then calls the service.
    pub struct BufferBodyFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        Buffering {
            parts: Option<http::request::Parts>,
            body: Option<B>,
            buffer: BytesMut,
            limit: usize,
            service: Option<S>,
        },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, B> BufferBodyFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    fn calling(future: S::Future) -> Self {
        BufferBodyFuture {
            state: State::Calling { future },
        }
    }
}

impl<S, B> fmt::Debug for BufferBodyFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Buffering { buffer, .. } => format!("buffering ({} bytes)", buffer.len()),
            State::Calling { .. } => "calling".to_owned(),
        };
        f.debug_struct("BufferBodyFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B> Future for BufferBodyFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body + Unpin,
    B::Data: Buf,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let (parts, body, mut service) = match this.state.as_mut().project() {
                StateProj::Calling { future } => return future.poll(cx),
                StateProj::Buffering {
                    parts,
                    body,
                    buffer,
                    limit,
                    service,
                } => {
                    let Some(reading) = body.as_mut() else {
                        return Poll::Pending;
                    };
                    let replay_body = match ready!(Pin::new(reading).poll_frame(cx)) {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(mut data) => {
                                if buffer.len().saturating_add(data.remaining()) > *limit {
                                    // Too long to keep: send it once, what was read first.
                                    buffer.put(&mut data);
                                    let rest = body.take();
                                    rest.map(|rest| ReplayBody {
                                        kind: Kind::Streaming {
                                            prefix: Some(std::mem::take(buffer).freeze()),
                                            rest,
                                        },
                                    })
                                } else {
                                    buffer.put(&mut data);
                                    continue;
                                }
                            }
                            Err(frame) => Some(ReplayBody {
                                kind: Kind::Buffered {
                                    data: Some(std::mem::take(buffer).freeze()),
                                    trailers: frame.into_trailers().ok(),
                                },
                            }),
                        },
                        Some(Err(error)) => Some(ReplayBody {
                            kind: Kind::Failed {
                                prefix: Some(std::mem::take(buffer).freeze()),
                                error: Some(Box::new(error)),
                            },
                        }),
                        None => Some(ReplayBody::buffered(std::mem::take(buffer).freeze())),
                    };
                    match (parts.take(), replay_body, service.take()) {
                        (Some(parts), Some(body), Some(service)) => (parts, body, service),
                        // Each is taken only here, once, just before leaving this state.
                        _ => return Poll::Pending,
                    }
                }
            };
            let future = service.call(Request::from_parts(parts, body));
            this.state.set(State::Calling { future });
        }
    }
}
