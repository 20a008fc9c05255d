//! CorrelationLayer and PropagateCorrelationLayer as plain Tower services: properties of the ID,
//! cancellation, and the task-local's reach.
#![cfg(feature = "correlation")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use http::{HeaderValue, Request, Response};
use palisade::correlation::{
    self, CorrelationId, CorrelationLayer, PropagateCorrelationLayer, X_CORRELATION_ID,
    X_REQUEST_ID,
};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

fn echo_service() -> impl Service<
    Request<()>,
    Response = Response<Option<String>>,
    Error = Infallible,
    Future = impl Future + Send,
> + Clone {
    ServiceBuilder::new()
        .layer(CorrelationLayer::new())
        .service_fn(|req: Request<()>| async move {
            // The task-local, the extension and the header must agree.
            let current = CorrelationId::current().map(|id| id.to_string());
            let ext = req
                .extensions()
                .get::<CorrelationId>()
                .map(|id| id.to_string());
            let header = req.headers()[X_REQUEST_ID].to_str().unwrap().to_owned();
            assert_eq!(current.as_deref(), Some(header.as_str()));
            assert_eq!(ext, current);
            Ok::<_, Infallible>(Response::new(current))
        })
}

fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// Byte strings a header value can hold: mostly visible ASCII around the 128-byte limit, with
/// spaces, tabs and non-ASCII bytes mixed in.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(b'!'..=b'~', 0..140),
        proptest::collection::vec(
            prop_oneof![8 => b'!'..=b'~', 1 => Just(b' '), 1 => Just(b'\t'), 1 => 0x80u8..=0xff],
            0..300,
        ),
    ]
}

proptest! {
    /// Whatever bytes arrive, the echoed ID is the incoming one if and only if it is valid, and
    /// otherwise a fresh UUIDv7.
    #[test]
    fn an_id_is_kept_iff_valid(bytes in header_bytes()) {
        // Only what `http` lets into a header value can reach a server.
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
        let req = Request::builder().header(X_REQUEST_ID, value).body(()).unwrap();
        let res = run(echo_service().oneshot(req)).unwrap();
        let echoed = res.headers()[X_REQUEST_ID].as_bytes().to_vec();
        prop_assert_eq!(res.body().as_deref().map(str::as_bytes), Some(echoed.as_slice()));
        // The rule, restated independently of the library: 1 to 128 visible ASCII bytes.
        let valid = !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
        prop_assert_eq!(CorrelationId::is_valid(&bytes), valid);
        if valid {
            prop_assert_eq!(echoed, bytes);
        } else {
            prop_assert_ne!(&echoed, &bytes);
            let text = String::from_utf8(echoed).unwrap();
            let uuid = text.parse::<uuid::Uuid>().unwrap();
            prop_assert_eq!(uuid.get_version_num(), 7);
        }
    }
}

/// The echo is the ID the handler saw, also when the handler waits before answering (the
/// response future takes the ID back from the task-local scope once the handler is done).
#[test]
fn the_echo_is_the_handlers_id_after_the_handler_waited() {
    let service = ServiceBuilder::new()
        .layer(CorrelationLayer::new())
        .service_fn(|req: Request<()>| async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            let current = CorrelationId::current().unwrap().to_string();
            assert_eq!(req.headers()[X_REQUEST_ID], current.as_str());
            Ok::<_, Infallible>(Response::new(current))
        });
    for incoming in [Some("order-7f3a"), Some("a b c"), None] {
        let mut req = Request::new(());
        if let Some(id) = incoming {
            req.headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_static(id));
        }
        let res = run(service.clone().oneshot(req)).unwrap();
        let echoed = res.headers()[X_REQUEST_ID].to_str().unwrap();
        assert_eq!(echoed, res.body(), "{incoming:?}");
        match incoming {
            Some("order-7f3a") => assert_eq!(echoed, "order-7f3a"),
            _ => assert_eq!(echoed.len(), 36, "{incoming:?}"),
        }
        assert_eq!(res.headers().get_all(X_REQUEST_ID).iter().count(), 1);
    }
}

#[test]
fn dropping_the_response_future_mid_flight_leaves_nothing_behind() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut rx = Some(rx);
    let mut service = CorrelationLayer::new().layer(tower::service_fn(move |_req: Request<()>| {
        let rx = rx.take().unwrap();
        async move {
            let _ = rx.await;
            Ok::<_, Infallible>(Response::new(()))
        }
    }));
    let req = Request::builder()
        .header(X_REQUEST_ID, "abc")
        .body(())
        .unwrap();
    {
        let mut fut = pin!(service.call(req));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        // Between polls the ID is not current: the task-local is scoped to the poll.
        assert!(CorrelationId::current().is_none());
    }
    // The handler's future was dropped with the response future: its receiver is gone.
    assert!(tx.send(()).is_err());
    assert!(CorrelationId::current().is_none());
}

#[tokio::test]
async fn spawned_tasks_keep_the_id_and_plain_ones_do_not() {
    let id = CorrelationId::parse(b"job-1").unwrap();
    let (carried, plain, carried_future) = correlation::scope(id, async {
        let carried = correlation::spawn(async { CorrelationId::current() });
        let plain = tokio::spawn(async { CorrelationId::current() });
        let future = correlation::carry(async { CorrelationId::current() });
        (carried.await.unwrap(), plain.await.unwrap(), future)
    })
    .await;
    assert_eq!(carried.unwrap().as_str(), "job-1");
    assert!(plain.is_none());
    // A carried future keeps the ID even when polled outside the scope.
    assert_eq!(carried_future.await.unwrap().as_str(), "job-1");
    // Outside any request, spawn carries nothing.
    assert!(
        correlation::spawn(async { CorrelationId::current() })
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn propagation_adds_the_current_id_to_http_requests() {
    let client =
        PropagateCorrelationLayer::new().layer(tower::service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(req.headers().get(X_REQUEST_ID).cloned())
        }));
    assert_eq!(
        client.clone().oneshot(Request::new(())).await.unwrap(),
        None
    );
    let id = CorrelationId::parse(b"outer-7").unwrap();
    let seen = correlation::scope(id, client.oneshot(Request::new(())))
        .await
        .unwrap();
    assert_eq!(seen.unwrap(), "outer-7");
}

/// The layer finds the ID by one pass over a small header map and by hashed look-ups over a
/// large one: both must pick the same ID, whatever the headers' order and repeats.
#[test]
fn the_same_id_is_picked_with_few_or_many_other_headers() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    // The headers in order, and the ID expected (`None`: a generated one).
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (vec![("x-request-id", "order-1")], Some("order-1")),
        (
            vec![("traceparent", &traceparent), ("x-request-id", "order-1")],
            Some("order-1"),
        ),
        (
            vec![("x-request-id", "a b"), ("traceparent", &traceparent)],
            Some(TRACE_ID),
        ),
        (vec![("traceparent", &traceparent)], Some(TRACE_ID)),
        (vec![("x-request-id", "a b")], None),
        // Only the first value of a repeated header counts, as with `HeaderMap::get`.
        (
            vec![("x-request-id", "a b"), ("x-request-id", "order-2")],
            None,
        ),
        (
            vec![("x-request-id", "order-3"), ("x-request-id", "a b")],
            Some("order-3"),
        ),
        (
            vec![("traceparent", "garbage"), ("traceparent", &traceparent)],
            None,
        ),
        (vec![], None),
    ];
    for fillers in [0, 3, 20] {
        for (headers, expected) in &cases {
            let mut builder = Request::builder();
            for i in 0..fillers {
                builder = builder.header(format!("x-filler-{i}"), "1");
            }
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            let res = run(echo_service().oneshot(builder.body(()).unwrap())).unwrap();
            let echoed = res.headers()[X_REQUEST_ID].to_str().unwrap().to_owned();
            match expected {
                Some(id) => assert_eq!(&echoed, id, "{headers:?} with {fillers} others"),
                None => {
                    let uuid = echoed.parse::<uuid::Uuid>().unwrap();
                    assert_eq!(
                        uuid.get_version_num(),
                        7,
                        "{headers:?} with {fillers} others"
                    );
                }
            }
        }
    }
}

/// The layer skips marking a request whose one pass over the names saw no listed header: this
/// checks that every listed header is still marked, with few headers (the pass) and many (the
/// look-ups), whether the ID is present, missing or hostile, and when the ID header itself is
/// listed as sensitive.
#[test]
fn sensitive_request_headers_are_marked_on_every_path() {
    use http::HeaderName;
    use palisade::redact::SensitiveHeaders;

    let token = HeaderName::from_static("x-ledger-token");
    for id_is_sensitive in [false, true] {
        let mut sensitive = SensitiveHeaders::default().with(token.clone());
        if id_is_sensitive {
            sensitive = sensitive.with(X_REQUEST_ID);
        }
        let mut service = ServiceBuilder::new()
            .layer(CorrelationLayer::new().sensitive_headers(sensitive))
            .service_fn(move |req: Request<()>| async move {
                // (name, is sensitive) for every value, in order.
                let seen: Vec<(String, bool)> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().to_owned(), v.is_sensitive()))
                    .collect();
                Ok::<_, Infallible>(Response::new(seen))
            });
        for others in [0, 3, 20] {
            for id in [Some("pay-1"), None, Some("a b c")] {
                for secret in [None, Some("authorization"), Some("x-ledger-token")] {
                    let mut req = Request::new(());
                    for i in 0..others {
                        req.headers_mut().insert(
                            format!("x-other-{i}").parse::<HeaderName>().unwrap(),
                            HeaderValue::from_static("v"),
                        );
                    }
                    if let Some(name) = secret {
                        req.headers_mut()
                            .append(name, HeaderValue::from_static("s3cr3t"));
                        req.headers_mut()
                            .append(name, HeaderValue::from_static("s3cr3t-2"));
                    }
                    if let Some(id) = id {
                        req.headers_mut()
                            .insert(X_REQUEST_ID, HeaderValue::from_static(id));
                    }
                    let seen = run(async {
                        let ready = service.ready().await.unwrap();
                        ready.call(req).await.unwrap().into_body()
                    });
                    let case = format!(
                        "others {others} id {id:?} secret {secret:?} id sensitive {id_is_sensitive}"
                    );
                    assert!(seen.iter().any(|(n, _)| n == "x-request-id"), "{case}");
                    for (name, marked) in &seen {
                        let listed = name == "authorization"
                            || name == "x-ledger-token"
                            || (id_is_sensitive && name == "x-request-id");
                        assert_eq!(*marked, listed, "{name}: {case}");
                    }
                }
            }
        }
    }
}

/// `headers` replaces the list: an `x-request-id` it does not name is not read (a new ID is
/// made), the first listed header is read and echoed, and the later ones are read in order.
#[test]
fn headers_reads_exactly_the_listed_headers() {
    let layer = CorrelationLayer::new().headers([X_CORRELATION_ID, X_CORRELATION_ID]);
    assert_eq!(layer.response_header(), X_CORRELATION_ID);
    let service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(
                CorrelationId::current().map(|id| id.to_string()),
            ))
        });
    let call = |name: &'static str, value: &'static str| {
        let request = Request::builder().header(name, value).body(()).unwrap();
        run(service.clone().oneshot(request)).unwrap()
    };

    let res = call("x-correlation-id", "order-9");
    assert_eq!(res.body().as_deref(), Some("order-9"));
    assert_eq!(res.headers()[X_CORRELATION_ID], "order-9");

    let res = call("x-request-id", "not-trusted");
    let id = res.body().clone().unwrap();
    assert_ne!(id, "not-trusted");
    assert_eq!(id.parse::<uuid::Uuid>().unwrap().get_version_num(), 7);
    assert_eq!(res.headers()[X_CORRELATION_ID], id.as_str());
    assert!(res.headers().get(X_REQUEST_ID).is_none());

    // An empty list changes nothing.
    let layer = CorrelationLayer::new().headers([]);
    assert_eq!(layer.response_header(), X_REQUEST_ID);
}

/// Records the current ID when dropped.
struct SeesIdOnDrop(std::sync::Arc<std::sync::Mutex<Option<Option<String>>>>);

impl Drop for SeesIdOnDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(CorrelationId::current().map(|id| id.to_string()));
    }
}

#[test]
fn scopes_nest_and_end_with_each_poll_and_drop() {
    let mut cx = Context::from_waker(Waker::noop());
    let outer = CorrelationId::parse(b"outer").unwrap();
    let inner = CorrelationId::parse(b"inner").unwrap();
    // A scope inside a scope: the inner ID while the inner future runs, then the outer again.
    let (waited, seen) = {
        let mut scoped = pin!(correlation::scope(outer, async move {
            let during = correlation::scope(inner, async {
                tokio::task::yield_now().await;
                CorrelationId::current()
            })
            .await;
            (during, CorrelationId::current())
        }));
        assert!(scoped.as_mut().poll(&mut cx).is_pending());
        // Between polls, nothing is current on this thread.
        assert!(CorrelationId::current().is_none());
        match scoped.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => (true, out),
            std::task::Poll::Pending => (false, (None, None)),
        }
    };
    assert!(waited);
    assert_eq!(seen.0.unwrap().as_str(), "inner");
    assert_eq!(seen.1.unwrap().as_str(), "outer");
    assert!(CorrelationId::current().is_none());

    // A future dropped before it completes is dropped with its ID current.
    let record = std::sync::Arc::new(std::sync::Mutex::new(None));
    let guard = SeesIdOnDrop(record.clone());
    let mut cancelled = Box::pin(correlation::scope(
        CorrelationId::parse(b"cancelled").unwrap(),
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        },
    ));
    assert!(cancelled.as_mut().poll(&mut cx).is_pending());
    drop(cancelled);
    assert_eq!(
        record.lock().unwrap().clone(),
        Some(Some("cancelled".to_owned()))
    );
    assert!(CorrelationId::current().is_none());

    // A panic inside a poll does not leave the ID behind.
    let panicked = std::panic::catch_unwind(|| {
        let mut scoped = pin!(correlation::scope(
            CorrelationId::parse(b"boom").unwrap(),
            async { panic!("handler bug") },
        ));
        let _ = scoped
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
    });
    assert!(panicked.is_err());
    assert!(CorrelationId::current().is_none());
}
