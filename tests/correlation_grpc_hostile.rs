//! Hostile correlation IDs sent to a real tonic server (`Server::builder().layer(CorrelationLayer)`)
//! on 127.0.0.1, whose handler calls a second tonic server through a tonic client wrapped in
//! `PropagateCorrelationLayer`.
//!
//! IDs that HTTP/2 can carry (4 KB long, a tab, a space, non-ASCII bytes) reach the layer: the
//! caller gets a fresh UUIDv7 back, never its own value, and the handler and the downstream
//! server see that same fresh ID. IDs that HTTP/2 cannot carry (CR/LF, NUL, ESC, DEL, 0x01) are
//! sent as raw frames, since no client type will build them: the server's HTTP/2 layer must
//! refuse the stream before any handler runs, or else the handler must see a fresh ID; either
//! way the value reaches neither the handler nor the downstream server.
#![cfg(all(feature = "correlation", feature = "grpc"))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use palisade::correlation::{CorrelationId, CorrelationLayer, PropagateCorrelationLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::server::{NamedService, UnaryService};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tower::{Layer, Service, ServiceBuilder};

// The gRPC example's codec: UTF-8 string messages, no protobuf code generation.
#[path = "../examples/grpc/codec.rs"]
mod codec;
use codec::Text as Utf8Codec;

/// What a handler saw: the task-local ID and the `x-request-id` metadata, as raw bytes.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<Vec<u8>>)>>>;

fn seen_by(request: &Request<String>) -> (Option<String>, Option<Vec<u8>>) {
    (
        CorrelationId::current().map(|id| id.to_string()),
        request
            .metadata()
            .get("x-request-id")
            .map(|v| v.as_bytes().to_vec()),
    )
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// `/test.Ledger/Get`. The downstream answers with the ID it sees; the front records what it
/// sees, calls the downstream (when it has one) and answers "<its ID> <downstream's answer>".
#[derive(Clone)]
struct Ledger {
    seen: Seen,
    downstream: Option<Channel>,
}

impl NamedService for Ledger {
    const NAME: &'static str = "test.Ledger";
}

impl UnaryService<String> for Ledger {
    type Response = String;
    type Future = BoxFuture<Result<Response<String>, Status>>;
    fn call(&mut self, request: Request<String>) -> Self::Future {
        let seen = seen_by(&request);
        self.seen.lock().unwrap().push(seen.clone());
        let downstream = self.downstream.clone();
        Box::pin(async move {
            let own = seen.0.unwrap_or_default();
            let answer = match downstream {
                // The client is wrapped in PropagateCorrelationLayer: the ID comes from the
                // task-local the front's CorrelationLayer set.
                Some(channel) => {
                    let client = PropagateCorrelationLayer::new().layer(channel);
                    format!("{own} {}", call(client, Request::new(String::new())).await?)
                }
                None => own,
            };
            Ok(Response::new(answer))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Ledger {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Utf8Codec);
            Ok(grpc.unary(this, req).await)
        })
    }
}

/// Calls `/test.Ledger/Get` through `service`; the answer, or the status.
async fn call<S>(service: S, request: Request<String>) -> Result<String, Status>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.into().to_string()))?;
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static("/test.Ledger/Get"),
        Utf8Codec,
    )
    .await
    .map(Response::into_inner)
}

async fn serve(ledger: Ledger) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(CorrelationLayer::new())
            .add_service(ledger)
            .serve_with_incoming(incoming)
            .await
            .unwrap()
    });
    addr
}

/// A front server calling a downstream server, and what each of their handlers saw.
struct Servers {
    front: SocketAddr,
    front_seen: Seen,
    downstream_seen: Seen,
}

async fn servers() -> Servers {
    let downstream_seen = Seen::default();
    let downstream = serve(Ledger {
        seen: downstream_seen.clone(),
        downstream: None,
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{downstream}"))
        .unwrap()
        .connect_lazy();
    let front_seen = Seen::default();
    let front = serve(Ledger {
        seen: front_seen.clone(),
        downstream: Some(channel),
    })
    .await;
    Servers {
        front,
        front_seen,
        downstream_seen,
    }
}

fn is_uuid_v7(id: &str) -> bool {
    let b = id.as_bytes();
    id.len() == 36
        && CorrelationId::is_valid(b)
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b[14] == b'7'
        && id
            .bytes()
            .enumerate()
            .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit())
}

#[tokio::test]
async fn hostile_ids_a_grpc_client_can_send_are_replaced_and_the_fresh_id_travels_downstream() {
    let servers = servers().await;
    let front = tonic::transport::Endpoint::from_shared(format!("http://{}", servers.front))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let hostile: Vec<(&str, HeaderValue)> = vec![
        ("4 KB", HeaderValue::from_bytes(&[b'a'; 4096]).unwrap()),
        ("129 bytes", HeaderValue::from_bytes(&[b'z'; 129]).unwrap()),
        ("tab", HeaderValue::from_static("pay\t42")),
        ("space", HeaderValue::from_static("pay 42")),
        (
            "non-ASCII",
            HeaderValue::from_bytes(b"caf\xc3\xa9-42").unwrap(),
        ),
    ];
    for (i, (what, value)) in hostile.into_iter().enumerate() {
        // The header is set on the HTTP/2 request itself, below tonic's metadata checks.
        let sent = value.clone();
        let client = ServiceBuilder::new()
            .map_request(move |mut r: http::Request<tonic::body::Body>| {
                r.headers_mut().insert("x-request-id", sent.clone());
                r
            })
            .service(front.clone());
        let mut grpc = tonic::client::Grpc::new(client);
        grpc.ready().await.unwrap();
        let response = grpc
            .unary(
                Request::new(String::new()),
                http::uri::PathAndQuery::from_static("/test.Ledger/Get"),
                Utf8Codec,
            )
            .await
            .unwrap_or_else(|status| panic!("{what}: {status:?}"));

        // The echo is a fresh UUIDv7, never the value sent.
        let echoed = response
            .metadata()
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{what}: no ID echoed"))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(is_uuid_v7(&echoed), "{what}: echoed {echoed:?}");
        assert_ne!(echoed.as_bytes(), value.as_bytes(), "{what}");

        // The handler saw that ID, in the task-local and in its metadata (the hostile value
        // was replaced on the request too), and so did the downstream server.
        let answer = response.into_inner();
        assert_eq!(answer, format!("{echoed} {echoed}"), "{what}");
        let front_seen = servers.front_seen.lock().unwrap()[i].clone();
        assert_eq!(
            front_seen,
            (Some(echoed.clone()), Some(echoed.as_bytes().to_vec())),
            "{what}"
        );
        let downstream_seen = servers.downstream_seen.lock().unwrap()[i].clone();
        assert_eq!(
            downstream_seen,
            (Some(echoed.clone()), Some(echoed.as_bytes().to_vec())),
            "{what}"
        );
    }

    // Control: a valid ID is kept end to end.
    let mut request = Request::new(String::new());
    request
        .metadata_mut()
        .insert("x-request-id", "pay-2026-000042".parse().unwrap());
    let answer = call(front.clone(), request).await.unwrap();
    assert_eq!(answer, "pay-2026-000042 pay-2026-000042");
}

/// An HPACK integer with an `n`-bit prefix, the prefix's other bits taken from `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literal fields (never indexed, no Huffman coding): bytes as they are.
fn header_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;

/// How the server answered stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    /// It reset the stream (or the connection) without a response.
    Refused,
    /// It sent response headers: the bytes of every frame of stream 1.
    Responded(Vec<u8>),
}

/// Sends one gRPC call with `x-request-id: <id>` as raw HTTP/2 frames, byte for byte.
async fn raw_call(addr: SocketAddr, id: &[u8]) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let authority = addr.to_string();
    let block = header_block(&[
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/test.Ledger/Get"),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"x-request-id", id),
    ]);
    out.extend(frame(HEADERS, 0x4, 1, &block)); // END_HEADERS
    out.extend(frame(DATA, 0x1, 1, &[0, 0, 0, 0, 0])); // an empty message, END_STREAM
    tcp.write_all(&out).await.unwrap();

    let mut responded = Vec::new();
    let mut got_headers = false;
    loop {
        let mut head = [0u8; 9];
        if tcp.read_exact(&mut head).await.is_err() {
            break; // the connection closed
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        match (kind, stream) {
            (SETTINGS, 0) if flags & 0x1 == 0 => {
                tcp.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
            }
            (GOAWAY, 0) => break,
            (RST_STREAM, 1) => break,
            (HEADERS | DATA, 1) => {
                got_headers |= kind == HEADERS;
                responded.extend_from_slice(&payload);
                if flags & 0x1 != 0 {
                    break; // END_STREAM
                }
            }
            _ => {}
        }
    }
    if got_headers {
        Answer::Responded(responded)
    } else {
        Answer::Refused
    }
}

#[tokio::test]
async fn ids_http2_cannot_carry_never_reach_a_handler_or_the_downstream() {
    let servers = servers().await;
    let hostile: [(&str, &[u8]); 6] = [
        ("CR LF", b"pay-1\r\nset-cookie: session=stolen"),
        ("LF", b"pay-1\nx-admin: 1"),
        ("NUL", b"pay\x00-1"),
        ("ESC", b"pay\x1b[31m-1"),
        ("DEL", b"pay\x7f-1"),
        ("0x01", b"\x01pay-1"),
    ];
    for (what, id) in hostile {
        let answer = tokio::time::timeout(Duration::from_secs(10), raw_call(servers.front, id))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"));
        // The HTTP/2 layer under tonic refuses a header value with these bytes, so no handler
        // ran. (Were it ever to let the request through, the handler would have had to see a
        // fresh ID: checked below over whatever the handlers recorded.)
        if let Answer::Responded(bytes) = &answer {
            assert!(
                !bytes.windows(id.len()).any(|w| w == id),
                "{what}: the value came back"
            );
        }
        assert_eq!(answer, Answer::Refused, "{what}");
    }
    for seen in [&servers.front_seen, &servers.downstream_seen] {
        for (current, metadata) in seen.lock().unwrap().iter() {
            let current = current.as_deref().unwrap_or_default();
            assert!(is_uuid_v7(current), "{current:?}");
            assert_eq!(metadata.as_deref(), Some(current.as_bytes()));
        }
    }
    assert!(servers.front_seen.lock().unwrap().is_empty());
    assert!(servers.downstream_seen.lock().unwrap().is_empty());

    // The same raw client with a valid ID is answered, and the ID is echoed: the refusals
    // above are about the bytes, not the hand-made frames.
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        raw_call(servers.front, b"pay-raw-7"),
    )
    .await
    .unwrap();
    assert!(matches!(answer, Answer::Responded(_)), "{answer:?}");
    assert_eq!(
        servers.front_seen.lock().unwrap().as_slice(),
        [(Some("pay-raw-7".to_owned()), Some(b"pay-raw-7".to_vec()))]
    );
    assert_eq!(
        servers.downstream_seen.lock().unwrap().as_slice(),
        [(Some("pay-raw-7".to_owned()), Some(b"pay-raw-7".to_vec()))]
    );
}
