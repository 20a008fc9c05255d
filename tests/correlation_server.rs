//! Correlation IDs through real axum servers on 127.0.0.1, with reqwest as the client.
#![cfg(all(feature = "correlation", feature = "reqwest", feature = "axum"))]

use std::net::SocketAddr;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use palisade::correlation::{
    self, CorrelationId, CorrelationLayer, PropagateCorrelationLayer, WithCorrelation,
    X_CORRELATION_ID, X_REQUEST_ID,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A downstream service that answers with the `x-request-id` it received.
async fn downstream() -> SocketAddr {
    serve(Router::new().route(
        "/whoami",
        get(|headers: HeaderMap| async move {
            headers
                .get(X_REQUEST_ID)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| "<none>".to_owned())
        }),
    ))
    .await
}

/// The service under test: reads its ID three ways and calls downstream twice, once through a
/// `PropagateCorrelation<reqwest::Client>` service and once from a spawned task.
async fn upstream(downstream: SocketAddr, layer: CorrelationLayer) -> SocketAddr {
    let client = reqwest::Client::new();
    let router = Router::new()
        .route(
            "/pay",
            get(
                move |ext: axum::Extension<CorrelationId>, headers: HeaderMap| {
                    let client = client.clone();
                    async move {
                        let current = CorrelationId::current().unwrap();
                        let url = format!("http://{downstream}/whoami");

                        let service = PropagateCorrelationLayer::new().layer(client.clone());
                        let via_service = service
                            .oneshot(client.get(&url).build().unwrap())
                            .await
                            .unwrap()
                            .text()
                            .await
                            .unwrap();

                        let spawned = correlation::spawn(async move {
                            client
                                .get(&url)
                                .with_correlation()
                                .send()
                                .await
                                .unwrap()
                                .text()
                                .await
                                .unwrap()
                        })
                        .await
                        .unwrap();

                        let header = headers[X_REQUEST_ID].to_str().unwrap().to_owned();
                        format!("{current} {} {header} {via_service} {spawned}", ext.0)
                    }
                },
            ),
        )
        .layer(layer);
    serve(router).await
}

/// The response's echoed ID, and the five places the ID was seen, which must all agree.
async fn call(addr: SocketAddr, header: Option<(&str, &[u8])>) -> String {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://{addr}/pay"));
    if let Some((name, value)) = header {
        req = req.header(
            name,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    let echoed = res.headers()[X_REQUEST_ID].to_str().unwrap().to_owned();
    let body = res.text().await.unwrap();
    let seen: Vec<&str> = body.split(' ').collect();
    assert_eq!(seen.len(), 5, "{body}");
    for (what, id) in [
        "task-local",
        "extension",
        "request header",
        "downstream",
        "spawned",
    ]
    .iter()
    .zip(&seen)
    {
        assert_eq!(*id, echoed, "{what} saw another ID");
    }
    echoed
}

fn is_uuid_v7(s: &str) -> bool {
    s.len() == 36 && s.as_bytes()[14] == b'7' && s.bytes().filter(|&b| b == b'-').count() == 4
}

#[tokio::test]
async fn an_incoming_id_is_echoed_and_reaches_downstream() {
    let addr = upstream(downstream().await, CorrelationLayer::new()).await;
    let echoed = call(addr, Some(("x-request-id", b"pay-2026-000042"))).await;
    assert_eq!(echoed, "pay-2026-000042");
}

#[tokio::test]
async fn a_missing_id_is_generated() {
    let addr = upstream(downstream().await, CorrelationLayer::new()).await;
    let a = call(addr, None).await;
    let b = call(addr, None).await;
    assert!(is_uuid_v7(&a), "{a}");
    assert_ne!(a, b);
}

#[tokio::test]
async fn hostile_ids_are_replaced_never_echoed() {
    let addr = upstream(downstream().await, CorrelationLayer::new()).await;
    let long = vec![b'a'; 4096];
    let hostile: [&[u8]; 5] = [
        b"a b",
        b"tab\there",
        &long,
        b"caf\xc3\xa9",
        b"<script>alert(1)</script>\xff",
    ];
    for value in hostile {
        let echoed = call(addr, Some(("x-request-id", value))).await;
        assert!(is_uuid_v7(&echoed), "{value:?} -> {echoed}");
    }
    // 128 bytes is the limit, inclusive.
    let max = "b".repeat(128);
    assert_eq!(
        call(addr, Some(("x-request-id", max.as_bytes()))).await,
        max
    );
}

/// Control characters and CR/LF cannot be sent through reqwest, so they go over a raw socket.
/// hyper refuses most of them before any layer runs (400); whatever gets through is replaced.
#[tokio::test]
async fn control_characters_over_a_raw_socket_never_come_back() {
    let addr = upstream(downstream().await, CorrelationLayer::new()).await;
    let attempts: [&[u8]; 5] = [
        b"x-request-id: a\x01b\r\n",
        b"x-request-id: a\x7fb\r\n",
        b"x-request-id: a\rSet-Cookie: pwned=1\r\n",
        b"x-request-id: a\x00b\r\n",
        b"x-request-id: \x1b[31mred\r\n",
    ];
    for header in attempts {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut req = b"GET /pay HTTP/1.1\r\nhost: test\r\nconnection: close\r\n".to_vec();
        req.extend_from_slice(header);
        req.extend_from_slice(b"\r\n");
        stream.write_all(&req).await.unwrap();
        let mut res = Vec::new();
        stream.read_to_end(&mut res).await.unwrap();
        let text = String::from_utf8_lossy(&res).to_ascii_lowercase();
        assert!(!text.contains("pwned"), "{text}");
        assert!(!res.windows(3).any(|w| w == b"a\x01b" || w == b"a\x7fb"));
        if text.starts_with("http/1.1 200") {
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("x-request-id: "))
                .unwrap();
            assert!(is_uuid_v7(id.trim()), "{text}");
        } else {
            assert!(text.starts_with("http/1.1 400"), "{text}");
        }
    }
}

#[tokio::test]
async fn alternative_headers_and_traceparent_are_accepted() {
    let addr = upstream(
        downstream().await,
        CorrelationLayer::new().accept_header(X_CORRELATION_ID),
    )
    .await;
    assert_eq!(
        call(addr, Some(("x-correlation-id", b"corr-9"))).await,
        "corr-9"
    );
    // x-request-id wins over the alternative.
    let client = reqwest::Client::new();
    let res = client
        .get(format!("http://{addr}/pay"))
        .header("x-request-id", "primary")
        .header("x-correlation-id", "secondary")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()[X_REQUEST_ID], "primary");

    let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        call(addr, Some(("traceparent", tp))).await,
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    // An invalid ID header with a valid traceparent: the trace ID is used.
    let res = client
        .get(format!("http://{addr}/pay"))
        .header("x-request-id", "bad id")
        .header("traceparent", &tp[..])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()[X_REQUEST_ID],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

#[tokio::test]
async fn without_a_request_nothing_is_propagated_and_existing_headers_win() {
    let seen = downstream().await;
    let client = reqwest::Client::new();
    let url = format!("http://{seen}/whoami");
    let service = PropagateCorrelationLayer::new().layer(client.clone());
    let body = service
        .clone()
        .oneshot(client.get(&url).build().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "<none>");

    let id = CorrelationId::parse(b"outer").unwrap();
    let body = correlation::scope(id, async {
        service
            .oneshot(
                client
                    .get(&url)
                    .header("x-request-id", "explicit")
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(body, "explicit");
}
