//! Retrying a real HTTP call: an axum server on 127.0.0.1 answers 503 twice, then 200; the
//! client's POST carries an `Idempotency-Key` and a body that must arrive whole every time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::any;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::classify::{Classify, ClassifyExt, HttpStatus, TransportErrors};
use palisade::policy::{Jitter, RetryPolicy};
use palisade::retry::{Attempts, HttpRetryLayer, IDEMPOTENCY_KEY, ReplayBody};
use tower::{Layer, ServiceExt};

/// One request as the server saw it: its idempotency key and body.
type Received = (Option<String>, Bytes);

/// What the server received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Received>>>);

impl Seen {
    fn requests(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

struct Server {
    addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that fails its first `failures` requests with 503.
async fn server(failures: usize) -> Server {
    async fn handle(
        State((seen, failures)): State<(Seen, usize)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, &'static str) {
        let key = headers
            .get(IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let n = {
            let mut requests = seen.0.lock().unwrap();
            requests.push((key, body));
            requests.len()
        };
        if n <= failures {
            (StatusCode::SERVICE_UNAVAILABLE, "busy")
        } else {
            (StatusCode::OK, "transferred")
        }
    }

    let seen = Seen::default();
    let app = Router::new()
        .route("/transfers", any(handle))
        .with_state((seen.clone(), failures));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { addr, seen, task }
}

/// A request body sent as chunks of unknown total length.
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn of(chunks: &[&'static [u8]]) -> Self {
        Chunks(chunks.iter().map(|c| Bytes::from_static(c)).collect())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

fn policy() -> RetryPolicy {
    let mut p = RetryPolicy::default();
    p.max_retries = 3;
    p.base_delay = Duration::from_millis(5);
    p.jitter = Jitter::None;
    p
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, ReplayBody<Chunks>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn classifier<B>() -> impl Classify<http::Response<B>, hyper_util::client::legacy::Error> + Clone {
    HttpStatus::new().or(TransportErrors)
}

fn post(addr: SocketAddr, key: Option<&str>, body: Chunks) -> Request<Chunks> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/transfers"));
    if let Some(key) = key {
        builder = builder.header(IDEMPOTENCY_KEY, key);
    }
    builder.body(body).unwrap()
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_is_retried_with_the_same_body() {
    let server = server(2).await;
    let service = HttpRetryLayer::new("transfers", policy(), classifier()).layer(client());
    let body = Chunks::of(&[b"{\"from\":1,", b"\"to\":2,", b"\"amount\":100}"]);
    let response = service
        .oneshot(post(server.addr, Some("tx-42"), body))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));

    let expected = Bytes::from_static(b"{\"from\":1,\"to\":2,\"amount\":100}");
    let seen = server.seen.requests();
    assert_eq!(seen.len(), 3);
    for (key, body) in seen {
        assert_eq!(key.as_deref(), Some("tx-42"));
        assert_eq!(body, expected);
    }
}

#[tokio::test]
async fn a_post_without_a_key_is_sent_once() {
    let server = server(2).await;
    let service = HttpRetryLayer::new("transfers", policy(), classifier()).layer(client());
    let response = service
        .oneshot(post(server.addr, None, Chunks::of(&[b"amount=100"])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    assert_eq!(server.seen.requests().len(), 1);
}

#[tokio::test]
async fn a_body_over_the_cap_is_sent_once_and_whole() {
    let server = server(2).await;
    let service = HttpRetryLayer::new("transfers", policy(), classifier())
        .with_body_limit(8)
        .layer(client());
    let response = service
        .oneshot(post(
            server.addr,
            Some("tx-43"),
            Chunks::of(&[b"0123", b"4567", b"89ab", b"cdef"]),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen = server.seen.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1, Bytes::from_static(b"0123456789abcdef"));
}

#[tokio::test]
async fn any_method_can_be_retried_when_configured() {
    let server = server(1).await;
    let service = HttpRetryLayer::new("transfers", policy(), classifier())
        .retry_any_method()
        .layer(client());
    let response = service
        .oneshot(post(server.addr, None, Chunks::of(&[b"amount=5"])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.seen.requests().len(), 2);
}
