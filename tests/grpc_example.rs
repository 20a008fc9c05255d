//! The gRPC example (examples/grpc) over 127.0.0.1: a retry, the client's deadline carried to
//! the server in `grpc-timeout` and enforced there, and the client's breaker.
#![cfg(feature = "grpc")]
#![allow(dead_code)]

#[path = "../examples/grpc/client.rs"]
mod client;
#[path = "../examples/grpc/codec.rs"]
mod codec;
#[path = "../examples/grpc/server.rs"]
mod server;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade::circuit_breaker::{CircuitState, TransitionReason};
use palisade::stack::grpc::GRPC_RETRY_PUSHBACK_MS;
use tonic::Code;

use client::{Call, QuoteClient};
use server::{GET, HISTORY, HISTORY_WORK, PLACE, QuoteServer};

const SERVER_POLICIES: &str = include_str!("../examples/grpc/server.yaml");
const CLIENT_POLICIES: &str = include_str!("../examples/grpc/client.yaml");

async fn start() -> (QuoteServer, QuoteClient) {
    let server = QuoteServer::start(SERVER_POLICIES).await.unwrap();
    let client = QuoteClient::connect(server.url(), CLIENT_POLICIES)
        .await
        .unwrap();
    (server, client)
}

fn call(method: &'static str, operation: &'static str, message: &str) -> Call {
    Call {
        method,
        operation,
        message: message.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_fails_once_is_retried_and_answers() {
    let (server, client) = start().await;
    // The server fails the second Get it handles (and every third after).
    let first = client
        .call(call(GET, "quotes_get", "EURUSD"))
        .await
        .unwrap();
    assert_eq!(first, "EURUSD 1.0801");
    assert_eq!(client.attempts().sent(), 1);

    let second = client
        .call(call(GET, "quotes_get", "GBPUSD"))
        .await
        .unwrap();
    assert_eq!(second, "GBPUSD 1.0803");
    assert_eq!(client.attempts().sent(), 3, "one retry");
    assert_eq!(server.log().handled(GET), 3);
    let statuses: Vec<_> = server
        .log()
        .wait_for_calls(3)
        .await
        .into_iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        statuses,
        [Some(Code::Ok), Some(Code::Unavailable), Some(Code::Ok)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_remaining_time_becomes_the_servers_deadline() {
    let (server, client) = start().await;
    let status = client
        .call(call(HISTORY, "quotes_history", "EURUSD"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    let budget = client
        .attempts()
        .last_budget()
        .expect("sent under a deadline");
    assert!(budget <= Duration::from_millis(300), "{budget:?}");
    let calls = server.log().wait_for_calls(1).await;
    let seen = calls[0]
        .grpc_timeout
        .expect("the server received grpc-timeout");
    assert!(!seen.is_zero());
    assert!(
        seen <= budget,
        "the server was given {seen:?}, the client had {budget:?} left"
    );
    // The server stopped working when the client's time was up: it answered
    // DEADLINE_EXCEEDED or the call was dropped when the client reset it, before the
    // handler's 2 s of work, and the handler never finished.
    assert!(
        matches!(calls[0].status, None | Some(Code::DeadlineExceeded)),
        "{:?}",
        calls[0]
    );
    assert!(calls[0].elapsed < HISTORY_WORK, "{:?}", calls[0]);
    assert_eq!(server.log().finished_history(), 0);
}

/// A raw gRPC request over HTTP/2 with a `grpc-timeout`, from a client that does not enforce
/// it: only the server's stack can end the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stack_answers_deadline_exceeded_when_grpc_timeout_passes() {
    let server = QuoteServer::start(SERVER_POLICIES).await.unwrap();
    let addr = server.url().trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let mut frame = vec![0u8];
    frame.extend_from_slice(&6u32.to_be_bytes());
    frame.extend_from_slice(b"EURUSD");
    let request = http::Request::post(format!("http://{addr}{HISTORY}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.unwrap().trailers().cloned();
    let status = parts
        .headers
        .get("grpc-status")
        .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .expect("a grpc-status")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());

    let calls = server.log().wait_for_calls(1).await;
    assert_eq!(calls[0].grpc_timeout, Some(Duration::from_millis(200)));
    assert_eq!(calls[0].status, Some(Code::DeadlineExceeded));
    assert!(calls[0].elapsed < HISTORY_WORK, "{:?}", calls[0]);
    assert_eq!(server.log().finished_history(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_breaker_opens_and_refuses_without_calling_the_server() {
    let (server, client) = start().await;
    let mut events = client.breaker_events("orders_place").unwrap();
    for n in 0..3 {
        let status = client
            .call(call(PLACE, "orders_place", &format!("order {n}")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "matching engine down");
        assert!(status.metadata().get(GRPC_RETRY_PUSHBACK_MS).is_none());
    }
    let transition = events.try_recv().unwrap();
    assert_eq!(
        (transition.from, transition.to),
        (CircuitState::Closed, CircuitState::Open)
    );
    assert_eq!(
        transition.reason,
        TransitionReason::ConsecutiveFailures { count: 3 }
    );

    let refused = client
        .call(call(PLACE, "orders_place", "order 4"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    let pushback: u64 = refused
        .metadata()
        .get(GRPC_RETRY_PUSHBACK_MS)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((4_000..=5_000).contains(&pushback), "{pushback}");
    assert_eq!(
        server.log().handled(PLACE),
        3,
        "the refusal never left the client"
    );
    // Place's breaker is its own: quotes still flow.
    assert!(client.call(call(GET, "quotes_get", "EURUSD")).await.is_ok());
    assert_eq!(
        client.handle().breaker("quotes_get").unwrap().state(),
        CircuitState::Closed
    );
}
