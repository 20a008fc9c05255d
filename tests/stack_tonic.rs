//! End to end over 127.0.0.1 with tonic: a server with the stack on
//! `Server::builder().layer`, and a client with the stack around a `Channel`.
#![cfg(feature = "grpc")]

use std::future::Ready;

use bytes::{Buf, BufMut};
use palisade::classify::{GrpcResponse, GrpcStatus};
use palisade::error::BoxError;
use palisade::policy::Policies;
use palisade::stack::ResilienceLayer;
use palisade::stack::grpc::{GRPC_RETRY_PUSHBACK_MS, grpc_status};
use tonic::Code;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};
use tower::{ServiceBuilder, service_fn};

/// Messages as raw bytes: no code generation needed.
#[derive(Clone, Copy, Debug, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// `Quote` echoes its message; `Place` is down.
#[derive(Clone, Copy)]
struct Orders(&'static str);

impl tonic::server::UnaryService<Vec<u8>> for Orders {
    type Response = Vec<u8>;
    type Future = Ready<Result<Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        std::future::ready(match self.0 {
            "/exchange.v1.Orders/Place" => Err(Status::unavailable("matching engine down")),
            _ => Ok(Response::new(request.into_inner())),
        })
    }
}

const POLICIES: &str = r#"
defaults:
  retry: { max_retries: 0 }
policies:
  place_order:
    circuit_breaker: { consecutive_failures: 2, open_timeout: 30s }
  cancel_order:
    enabled: false
routes:
  "/exchange.v1.Orders/Place": place_order
  "/exchange.v1.Orders/Cancel": cancel_order
"#;

async fn server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stack = ResilienceLayer::from_policies(
        Policies::from_yaml_str(POLICIES).unwrap(),
        GrpcResponse(GrpcStatus::default()),
    );
    let orders = service_fn(|req: http::Request<Body>| async move {
        let path: &'static str = match req.uri().path() {
            "/exchange.v1.Orders/Place" => "/exchange.v1.Orders/Place",
            _ => "/exchange.v1.Orders/Quote",
        };
        let mut grpc = tonic::server::Grpc::new(Raw);
        Ok::<_, std::convert::Infallible>(grpc.unary(Orders(path), req).await)
    });
    tokio::spawn(async move {
        Server::builder()
            .layer(stack.grpc_statuses())
            .serve_with_incoming(
                orders,
                tokio_stream::wrappers::TcpListenerStream::new(listener),
            )
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

async fn unary<S>(
    client: &mut tonic::client::Grpc<S>,
    path: &'static str,
) -> Result<Vec<u8>, Status>
where
    S: tonic::client::GrpcService<Body>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    unary_as(client, path, None).await.map(Response::into_inner)
}

/// A call with an `x-request-id` in its metadata, if given; the whole response.
async fn unary_as<S>(
    client: &mut tonic::client::Grpc<S>,
    path: &'static str,
    id: Option<&'static str>,
) -> Result<Response<Vec<u8>>, Status>
where
    S: tonic::client::GrpcService<Body>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    let mut request = Request::new(b"EURUSD".to_vec());
    if let Some(id) = id {
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
    }
    client
        .unary(request, http::uri::PathAndQuery::from_static(path), Raw)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stack_answers_with_statuses_and_pushback() {
    let url = server().await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut client = tonic::client::Grpc::new(channel);

    assert_eq!(
        unary(&mut client, "/exchange.v1.Orders/Quote")
            .await
            .unwrap(),
        b"EURUSD"
    );
    for _ in 0..2 {
        let s = unary(&mut client, "/exchange.v1.Orders/Place")
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.metadata().get(GRPC_RETRY_PUSHBACK_MS).is_none());
    }
    // The server's breaker for place_order is open: UNAVAILABLE with a pushback.
    let s = unary(&mut client, "/exchange.v1.Orders/Place")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    let pushback: u64 = s
        .metadata()
        .get(GRPC_RETRY_PUSHBACK_MS)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29_000..=30_000).contains(&pushback), "{pushback}");
    // The server stack's correlation layer: a refusal carries the caller's ID back in its
    // metadata, and a call without one gets a generated ID.
    let s = unary_as(&mut client, "/exchange.v1.Orders/Place", Some("order-7f3a"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(s.metadata().get("x-request-id").unwrap(), "order-7f3a");
    let ok = unary_as(&mut client, "/exchange.v1.Orders/Quote", None)
        .await
        .unwrap();
    assert_eq!(ok.metadata().get("x-request-id").unwrap().len(), 36);
    // Other methods still answer; the kill switch refuses.
    assert_eq!(
        unary(&mut client, "/exchange.v1.Orders/Quote")
            .await
            .unwrap(),
        b"EURUSD"
    );
    let s = unary(&mut client, "/exchange.v1.Orders/Cancel")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_stack_around_a_channel_opens_its_own_breaker() {
    let url = server().await;
    let channel = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let client_policies = Policies::from_yaml_str(
        r#"
defaults:
  retry: { max_retries: 0 }
policies:
  place_order:
    circuit_breaker: { consecutive_failures: 1, open_timeout: 10s }
routes:
  "/exchange.v1.Orders/Place": place_order
"#,
    )
    .unwrap();
    let stack =
        ResilienceLayer::from_policies(client_policies, GrpcResponse(GrpcStatus::default()));
    let breakers = stack.handle();
    let resilient = ServiceBuilder::new()
        .map_err(|e: palisade::Error<tonic::transport::Error>| -> BoxError {
            Box::new(grpc_status(&e))
        })
        .layer(stack)
        .service(channel);
    let mut client = tonic::client::Grpc::new(resilient);

    let s = unary(&mut client, "/exchange.v1.Orders/Place")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(
        breakers.breaker("place_order").unwrap().state(),
        palisade::circuit_breaker::CircuitState::Open
    );
    // Refused on the client, before the network: UNAVAILABLE with the client's own pushback.
    let s = unary(&mut client, "/exchange.v1.Orders/Place")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    let pushback: u64 = s
        .metadata()
        .get(GRPC_RETRY_PUSHBACK_MS)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9_000..=10_000).contains(&pushback), "{pushback}");
    assert_eq!(
        unary(&mut client, "/exchange.v1.Orders/Quote")
            .await
            .unwrap(),
        b"EURUSD"
    );
}
