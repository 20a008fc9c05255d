//! Correlation IDs through a real tonic server (`Server::builder().layer(CorrelationLayer)`) and
//! a tonic client over `PropagateCorrelation<Channel>`, called from an axum handler.
#![cfg(all(
    feature = "correlation",
    feature = "grpc",
    feature = "axum",
    feature = "reqwest"
))]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::routing::get;
use palisade::correlation::{CorrelationId, CorrelationLayer, PropagateCorrelationLayer};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tower::{Layer, Service};

// The gRPC example's codec: UTF-8 string messages, no protobuf code generation.
#[path = "../examples/grpc/codec.rs"]
mod codec;
use codec::Text as Utf8Codec;

/// `/test.WhoAmI/Get`: answers "<task-local ID> <x-request-id metadata>".
#[derive(Clone)]
struct WhoAmI;

impl NamedService for WhoAmI {
    const NAME: &'static str = "test.WhoAmI";
}

struct Get;

impl UnaryService<String> for Get {
    type Response = String;
    type Future = Ready<Result<Response<String>, Status>>;
    fn call(&mut self, request: Request<String>) -> Self::Future {
        let current = CorrelationId::current().map(|id| id.to_string());
        let metadata = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ready(Ok(Response::new(format!(
            "{} {}",
            current.unwrap_or_default(),
            metadata.unwrap_or_default()
        ))))
    }
}

impl Service<http::Request<tonic::body::Body>> for WhoAmI {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Utf8Codec);
            Ok(grpc.unary(Get, req).await)
        })
    }
}

async fn grpc_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(CorrelationLayer::new())
            .add_service(WhoAmI)
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    addr
}

async fn who_am_i(channel: tonic::transport::Channel) -> String {
    let service = PropagateCorrelationLayer::new().layer(channel);
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready().await.unwrap();
    grpc.unary(
        Request::new(String::new()),
        http::uri::PathAndQuery::from_static("/test.WhoAmI/Get"),
        Utf8Codec,
    )
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn an_id_reaches_a_grpc_downstream_through_a_tonic_client() {
    let grpc = grpc_server().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Outside any request: the tonic server generates an ID and its handler sees it.
    let answer = who_am_i(channel.clone()).await;
    let (current, metadata) = answer.split_once(' ').unwrap();
    assert_eq!(current.len(), 36, "{answer}");
    assert_eq!(current, metadata);

    // Inside an axum request: the incoming ID travels over gRPC.
    let app = Router::new()
        .route(
            "/pay",
            get(move || {
                let channel = channel.clone();
                async move { who_am_i(channel).await }
            }),
        )
        .layer(CorrelationLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let res = reqwest::Client::new()
        .get(format!("http://{http}/pay"))
        .header("x-request-id", "grpc-chain-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "grpc-chain-1");
    assert_eq!(res.text().await.unwrap(), "grpc-chain-1 grpc-chain-1");
}

#[tokio::test]
async fn a_grpc_response_echoes_the_id_in_its_metadata() {
    let grpc = grpc_server().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = Request::new(String::new());
    request
        .metadata_mut()
        .insert("x-request-id", "meta-5".parse().unwrap());
    let response = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/test.WhoAmI/Get"),
            Utf8Codec,
        )
        .await
        .unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "meta-5");
    assert_eq!(response.into_inner(), "meta-5 meta-5");
}
