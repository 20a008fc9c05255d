//! The transport classifier against real errors from real sockets on 127.0.0.1, not
//! hand-built ones: a refused connection, a peer that hangs up mid-response, a request that
//! cannot be built.

use palisade::classify::{Classify, Transience, TransportErrors};
use tokio::net::TcpListener;

/// A port with nothing listening: bind, note the port, close.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A server that accepts one connection and closes it without answering.
#[cfg(any(feature = "hyper", feature = "reqwest"))]
async fn hang_up_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    port
}

#[tokio::test]
async fn a_refused_tcp_connect_is_transient() {
    let port = closed_port().await;
    let err = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_err();
    let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
    let class = outcome.classification().unwrap();
    assert_eq!(class.transience, Transience::Transient);
    assert_eq!(class.code, "io_connection_refused");
}

#[cfg(feature = "hyper")]
#[tokio::test]
async fn a_hyper_connection_closed_before_the_response_is_transient() {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    let port = hang_up_server().await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let err = sender.send_request(request).await.unwrap_err();
    let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
    let class = outcome.classification().unwrap();
    assert_eq!(class.transience, Transience::Transient, "{err:?}");
    assert!(
        [
            "hyper_connection_closed",
            "hyper_canceled",
            "io_connection_reset"
        ]
        .contains(&class.code.as_str()),
        "{} for {err:?}",
        class.code
    );
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn a_reqwest_connect_error_is_classified_by_its_io_cause() {
    let port = closed_port().await;
    let err = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect());
    let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
    let class = outcome.classification().unwrap();
    assert_eq!(class.transience, Transience::Transient);
    assert_eq!(class.code, "io_connection_refused", "{err:?}");
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn a_reqwest_hang_up_is_transient() {
    let port = hang_up_server().await;
    let err = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap_err();
    let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
    let class = outcome.classification().unwrap();
    assert_eq!(class.transience, Transience::Transient, "{err:?}");
}

#[cfg(feature = "reqwest")]
#[tokio::test(start_paused = true)]
async fn a_reqwest_timeout_is_transient() {
    // A server that accepts and then says nothing; the paused clock jumps to the timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        drop(socket);
    });
    let err = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(std::time::Duration::from_millis(50))
        .send()
        .await
        .unwrap_err();
    hold.abort();
    assert!(err.is_timeout());
    let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
    let class = outcome.classification().unwrap();
    assert_eq!(class.transience, Transience::Transient);
    assert!(
        ["reqwest_timeout", "io_timed_out"].contains(&class.code.as_str()),
        "{}",
        class.code
    );
}

#[cfg(feature = "reqwest")]
#[test]
fn a_reqwest_builder_error_is_persistent() {
    let err = reqwest::Client::new().get("not a url").build().unwrap_err();
    let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
    let class = outcome.classification().unwrap();
    assert_eq!(class.transience, Transience::Persistent);
    assert_eq!(class.code, "reqwest_builder");
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn a_reqwest_status_error_uses_the_http_table() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = socket.read(&mut buf).await;
        let _ = socket
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    });
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    let err = response.error_for_status().unwrap_err();
    let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
    assert_eq!(outcome.classification().unwrap().code, "http_503");
}
