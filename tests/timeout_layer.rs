//! The timeout manager under tokio's paused clock: which timeout fires, deadline arithmetic
//! and propagation, fail-fast on an expired deadline, and the in-flight list.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::classify::{Category, Classified, Transience};
use palisade::error::{Error, TimeoutKind};
use palisade::policy::{Policies, TimeoutPolicy};
use palisade::timeout::{Deadline, InFlight, TimeoutLayer};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

type Io = std::io::Error;

fn sleeper() -> impl Service<Duration, Response = Duration, Error = Io, Future: Send> + Clone {
    service_fn(|d: Duration| async move {
        tokio::time::sleep(d).await;
        Ok::<_, Io>(d)
    })
}

fn limits(total_ms: u64, attempt_ms: u64) -> TimeoutPolicy {
    let mut p = TimeoutPolicy::default();
    p.total = Duration::from_millis(total_ms);
    p.attempt = Duration::from_millis(attempt_ms);
    p
}

fn timeout_of<T: std::fmt::Debug, E: std::fmt::Debug>(
    r: Result<T, Error<E>>,
) -> palisade::error::TimeoutError {
    match r {
        Err(Error::Timeout(t)) => t,
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_names_itself_the_operation_and_the_limit() {
    let service = TimeoutLayer::attempt("quote", &limits(1000, 150)).layer(sleeper());
    assert_eq!(
        service
            .clone()
            .oneshot(Duration::from_millis(149))
            .await
            .unwrap(),
        Duration::from_millis(149)
    );
    let started = Instant::now();
    let t = timeout_of(service.oneshot(Duration::from_secs(5)).await);
    assert_eq!(started.elapsed(), Duration::from_millis(150));
    assert_eq!(t.kind, TimeoutKind::Attempt);
    assert_eq!(&*t.operation, "quote");
    assert_eq!(t.limit, Duration::from_millis(150));
    let class = t.classification();
    assert_eq!(
        (class.transience, class.category),
        (Transience::Transient, Category::Network)
    );
}

#[tokio::test(start_paused = true)]
async fn limits_come_from_the_policy_table_per_operation() {
    let policies = Policies::from_yaml_str(
        "defaults:\n  timeout: { total: 30s, attempt: 10s }\npolicies:\n  quote:\n    timeout: { total: 2s, attempt: 500ms }\n",
    )
    .unwrap();
    let quote = policies.for_operation("quote");
    let total = TimeoutLayer::total_from(quote);
    let attempt = TimeoutLayer::attempt_from(quote);
    assert_eq!(
        (total.kind(), total.limit()),
        (TimeoutKind::Total, Duration::from_secs(2))
    );
    assert_eq!(attempt.limit(), Duration::from_millis(500));
    assert_eq!(attempt.operation(), "quote");
    let t = timeout_of(
        attempt
            .layer(sleeper())
            .oneshot(Duration::from_secs(1))
            .await,
    );
    assert_eq!(t.limit, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn an_inner_timeout_becomes_the_time_left_of_the_outer_deadline() {
    // The handler spends 600 ms, then calls a dependency whose own attempt timeout is 10 s.
    // Only 400 ms of the one-second total are left, and that is what it gets.
    let dependency = TimeoutLayer::attempt("ledger", &limits(30_000, 10_000)).layer(sleeper());
    let handler = service_fn(move |_: ()| {
        let dependency = dependency.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            dependency.oneshot(Duration::from_secs(60)).await
        }
    });
    let service = TimeoutLayer::total("transfer", &limits(1000, 1000)).layer(handler);
    let started = Instant::now();
    let result = service.oneshot(()).await;
    assert_eq!(started.elapsed(), Duration::from_millis(1000));
    // The dependency's timeout fired first (it is polled first) and says which budget bound.
    let inner = match result {
        Err(Error::Inner(inner)) => inner,
        other => panic!("{other:?}"),
    };
    let t = timeout_of::<Duration, Io>(Err(inner));
    assert_eq!(t.kind, TimeoutKind::Total);
    assert_eq!(t.limit, Duration::from_millis(400));
    assert_eq!(&*t.operation, "ledger");
}

#[tokio::test(start_paused = true)]
async fn a_tighter_own_limit_still_wins_over_the_deadline() {
    let dependency = TimeoutLayer::attempt("ledger", &limits(30_000, 100)).layer(sleeper());
    let started = Instant::now();
    let result = Deadline::after(Duration::from_secs(5))
        .scope(dependency.oneshot(Duration::from_secs(60)))
        .await;
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(timeout_of(result).kind, TimeoutKind::Attempt);
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_fails_fast_without_calling() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let counted = service_fn(move |_: ()| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Io>(()) }
    });
    let service = TimeoutLayer::total("transfer", &limits(1000, 1000)).layer(counted);
    let deadline = Deadline::after(Duration::from_millis(50));
    tokio::time::advance(Duration::from_millis(50)).await;
    assert!(deadline.is_expired());
    let started = Instant::now();
    let t = timeout_of(deadline.scope(service.oneshot(())).await);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(t.kind, TimeoutKind::DeadlineExpired);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_reaches_the_service_inside() {
    let seen =
        service_fn(|_: ()| async { Ok::<_, Io>(Deadline::current().map(|d| d.remaining())) });
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::total("outer", &limits(800, 800)))
        .layer(TimeoutLayer::attempt("inner", &limits(800, 300)))
        .service(seen);
    // The inner layer's own 300 ms is tighter than the 800 ms outside.
    let remaining = service.oneshot(()).await.unwrap();
    assert_eq!(remaining, Some(Duration::from_millis(300)));
}

#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_header_bounds_the_call() {
    let service = TimeoutLayer::total("rpc", &limits(10_000, 10_000))
        .with_grpc_timeout()
        .layer(service_fn(|req: http::Request<()>| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, Io>(req.method().clone())
        }));
    let request = http::Request::builder()
        .header("grpc-timeout", "50m")
        .body(())
        .unwrap();
    let started = Instant::now();
    let t = timeout_of(service.clone().oneshot(request).await);
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    assert_eq!(
        (t.kind, t.limit),
        (TimeoutKind::Total, Duration::from_millis(50))
    );

    // A malformed header is ignored, as the gRPC spec says: the layer's own limit applies.
    let request = http::Request::builder()
        .header("grpc-timeout", "soon")
        .body(())
        .unwrap();
    service.oneshot(request).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn in_flight_calls_are_listed_with_their_elapsed_time_until_they_end() {
    let registry = InFlight::with_capacity(16);
    let ledger = TimeoutLayer::total("ledger", &limits(10_000, 10_000))
        .with_in_flight(&registry)
        .layer(sleeper());
    let quote = TimeoutLayer::total("quote", &limits(10_000, 10_000))
        .with_in_flight(&registry)
        .layer(sleeper());
    let long = tokio::spawn(ledger.clone().oneshot(Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut short = Box::pin(quote.oneshot(Duration::from_secs(3)));
    assert!(poll_once(&mut short).is_pending());
    tokio::time::sleep(Duration::from_millis(250)).await;

    let calls = registry.snapshot();
    let listed: Vec<_> = calls.iter().map(|c| (&*c.operation, c.elapsed)).collect();
    assert_eq!(
        listed,
        [
            ("ledger", Duration::from_millis(750)),
            ("quote", Duration::from_millis(250))
        ]
    );
    // Cancelling a call takes it off the list.
    drop(short);
    assert_eq!(registry.len(), 1);
    long.await.unwrap().unwrap();
    assert!(registry.is_empty());
    assert!(registry.snapshot().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_timeout_drops_the_inner_future_and_frees_its_slot() {
    let registry = InFlight::with_capacity(4);
    let dropped = Arc::new(AtomicU32::new(0));
    let flag = dropped.clone();
    let hangs = service_fn(move |_: ()| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<(), Io>>().await
        }
    });
    let service = TimeoutLayer::attempt("op", &limits(1000, 100))
        .with_in_flight(&registry)
        .layer(hangs);
    let result = service.oneshot(()).await;
    assert_eq!(timeout_of(result).kind, TimeoutKind::Attempt);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert!(registry.is_empty());
}

struct DropFlag(Arc<AtomicU32>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    std::pin::Pin::new(f).poll(&mut Context::from_waker(std::task::Waker::noop()))
}
