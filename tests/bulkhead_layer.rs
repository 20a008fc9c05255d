//! The bulkhead under tokio's paused clock: limits, the queue and its wait, shared
//! partitions, and permits given back on every path, cancellation included.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::bulkhead::{BulkheadLayer, BulkheadRegistry};
use palisade::classify::{Category, Classified, SelfClassified, Transience};
use palisade::error::{BulkheadRejection, Error};
use palisade::policy::{BulkheadPolicy, Jitter, Policies, RetryPolicy, TimeoutPolicy};
use palisade::retry::RetryLayer;
use palisade::timeout::TimeoutLayer;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

type Io = std::io::Error;

fn limits(max_concurrent: u32, max_queue: u32, max_wait_ms: u64) -> BulkheadPolicy {
    let mut p = BulkheadPolicy::default();
    p.max_concurrent = max_concurrent;
    p.max_queue = max_queue;
    p.max_wait = Duration::from_millis(max_wait_ms);
    p
}

/// A service whose calls finish when the test says so, counting the calls it got.
#[derive(Clone, Default)]
struct Gate {
    calls: Arc<AtomicU32>,
}

impl Service<oneshot::Receiver<()>> for Gate {
    type Response = ();
    type Error = Io;
    type Future = Pin<Box<dyn Future<Output = Result<(), Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Io>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, open: oneshot::Receiver<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let _ = open.await;
            Ok(())
        })
    }
}

fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(std::task::Waker::noop()))
}

fn poll_ready<S: Service<R>, R>(s: &mut S) -> Poll<Result<(), S::Error>> {
    s.poll_ready(&mut Context::from_waker(std::task::Waker::noop()))
}

fn rejection<T: std::fmt::Debug, E: std::fmt::Debug>(
    r: Result<T, Error<E>>,
) -> palisade::error::BulkheadFull {
    match r {
        Err(Error::BulkheadFull(full)) => full,
        other => panic!("expected a full bulkhead, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn beyond_the_queue_calls_fail_fast_without_reaching_the_service() {
    let layer = BulkheadLayer::unshared("ledger_db", &limits(1, 1, 1000));
    let gate = Gate::default();
    let service = layer.layer(gate.clone());

    // One in flight...
    let (open_first, first_rx) = oneshot::channel();
    let first = service.clone().oneshot(first_rx);
    let first = tokio::spawn(first);
    tokio::task::yield_now().await;
    assert_eq!(layer.available_permits(), 0);

    // ...one waiting...
    let (open_second, second_rx) = oneshot::channel();
    let second = tokio::spawn(service.clone().oneshot(second_rx));
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting(), 1);

    // ...and the third is turned away at once.
    let (_keep, third_rx) = oneshot::channel();
    let full = rejection(service.clone().oneshot(third_rx).await);
    assert_eq!(&*full.bulkhead, "ledger_db");
    assert_eq!((full.max_concurrent, full.max_queue), (1, 1));
    assert_eq!(full.reason, BulkheadRejection::QueueFull);
    let class = full.classification();
    assert_eq!(
        (class.transience, class.category),
        (Transience::Transient, Category::System)
    );
    assert_eq!(
        gate.calls.load(Ordering::SeqCst),
        1,
        "the rejected call never ran"
    );

    // The first finishes; the waiter gets its permit and runs.
    open_first.send(()).unwrap();
    first.await.unwrap().unwrap();
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting(), 0);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
    open_second.send(()).unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_is_not_stale_when_polled_again() {
    let layer = BulkheadLayer::unshared("db", &limits(1, 0, 0));
    let mut holder = layer.layer(Gate::default());
    assert!(poll_ready(&mut holder).is_ready());
    let mut other = layer.layer(Gate::default());
    // Ready, but only to be turned away...
    assert!(poll_ready(&mut other).is_ready());
    drop(holder);
    // ...and after the permit came back, polled again, it takes the permit.
    assert!(poll_ready(&mut other).is_ready());
    assert_eq!(layer.available_permits(), 0);
    let (open, rx) = oneshot::channel();
    open.send(()).unwrap();
    other.call(rx).await.unwrap();
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_after_max_wait() {
    let layer = BulkheadLayer::unshared("slow", &limits(1, 5, 250));
    let service = layer.layer(Gate::default());
    let (_hold, rx) = oneshot::channel();
    let _running = tokio::spawn(service.clone().oneshot(rx));
    tokio::task::yield_now().await;

    let started = tokio::time::Instant::now();
    let (_never, rx) = oneshot::channel();
    let full = rejection(service.oneshot(rx).await);
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(
        full.reason,
        BulkheadRejection::WaitTimedOut(Duration::from_millis(250))
    );
    assert_eq!(layer.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_queue_or_a_wait_calls_are_rejected_at_once() {
    for (queue, wait) in [(0, 1000), (5, 0)] {
        let layer = BulkheadLayer::unshared("tight", &limits(1, queue, wait));
        let service = layer.layer(Gate::default());
        let (_hold, rx) = oneshot::channel();
        let _running = tokio::spawn(service.clone().oneshot(rx));
        tokio::task::yield_now().await;
        let (_never, rx) = oneshot::channel();
        let full = rejection(service.oneshot(rx).await);
        assert_eq!(full.reason, BulkheadRejection::QueueFull);
    }
}

#[tokio::test(start_paused = true)]
async fn operations_naming_the_same_partition_share_its_permits() {
    let policies = Policies::from_yaml_str(
        "policies:\n  debit:\n    bulkhead: { max_concurrent: 2, max_queue: 0, partition: ledger }\n  credit:\n    bulkhead: { max_concurrent: 2, max_queue: 0, partition: ledger }\n  quote:\n    bulkhead: { max_concurrent: 2, max_queue: 0 }\n",
    )
    .unwrap();
    let registry = BulkheadRegistry::new();
    let debit = registry.layer_for(policies.for_operation("debit"));
    let credit = registry.layer_for(policies.for_operation("credit"));
    let quote = registry.layer_for(policies.for_operation("quote"));
    assert_eq!((debit.name(), quote.name()), ("ledger", "quote"));

    let mut a = debit.layer(Gate::default());
    let mut b = credit.layer(Gate::default());
    assert!(poll_ready(&mut a).is_ready());
    assert!(poll_ready(&mut b).is_ready());
    assert_eq!(
        debit.available_permits(),
        0,
        "credit took the second ledger permit"
    );
    let (_never, rx) = oneshot::channel();
    rejection(credit.layer(Gate::default()).oneshot(rx).await);
    // Another partition is unaffected.
    assert_eq!(quote.available_permits(), 2);
    drop((a, b));
    assert_eq!(credit.available_permits(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_permit_reserved_in_poll_ready_is_released_when_the_service_is_dropped() {
    let layer = BulkheadLayer::unshared("db", &limits(1, 0, 0));
    let mut service = layer.layer(Gate::default());
    assert!(poll_ready(&mut service).is_ready());
    assert!(
        poll_ready(&mut service).is_ready(),
        "polling again keeps one permit"
    );
    assert_eq!(layer.available_permits(), 0);
    // A clone does not share the reservation.
    let mut clone = service.clone();
    assert!(poll_ready(&mut clone).is_ready(), "ready, to reject");
    let (_never, rx) = oneshot::channel();
    rejection(clone.call(rx).await);
    drop(service);
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_in_the_queue_gives_back_its_place_and_loses_no_permit() {
    let layer = BulkheadLayer::unshared("db", &limits(1, 1, 10_000));
    let mut holder = layer.layer(Gate::default());
    assert!(poll_ready(&mut holder).is_ready());
    let mut waiter = layer.layer(Gate::default());
    assert!(poll_ready(&mut waiter).is_pending());
    assert_eq!(layer.waiting(), 1);
    drop(waiter);
    assert_eq!(layer.waiting(), 0);
    drop(holder);
    assert_eq!(layer.available_permits(), 1);

    // A waiter handed the permit but dropped before it could use it gives it back too.
    let mut holder = layer.layer(Gate::default());
    assert!(poll_ready(&mut holder).is_ready());
    let mut waiter = layer.layer(Gate::default());
    assert!(poll_ready(&mut waiter).is_pending());
    drop(holder);
    drop(waiter);
    assert_eq!(layer.available_permits(), 1);
    assert_eq!(layer.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_response_future_releases_its_permit_when_done_or_dropped() {
    let layer = BulkheadLayer::unshared("db", &limits(2, 0, 0));
    let mut service = layer.layer(Gate::default());

    // Dropped mid-flight.
    assert!(poll_ready(&mut service).is_ready());
    let (_open, rx) = oneshot::channel();
    let mut future = service.call(rx);
    assert!(poll_once(&mut future).is_pending());
    assert_eq!(layer.available_permits(), 1);
    drop(future);
    assert_eq!(layer.available_permits(), 2);

    // Dropped before its first poll.
    assert!(poll_ready(&mut service).is_ready());
    let (_open, rx) = oneshot::channel();
    drop(service.call(rx));
    assert_eq!(layer.available_permits(), 2);

    // Completed: the permit is back even while the future is kept.
    assert!(poll_ready(&mut service).is_ready());
    let (open, rx) = oneshot::channel();
    let mut future = service.call(rx);
    open.send(()).unwrap();
    assert!(poll_once(&mut future).is_ready());
    assert_eq!(layer.available_permits(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_or_a_retry_dropping_the_call_loses_no_permit() {
    let layer = BulkheadLayer::unshared("db", &limits(1, 4, 60_000));
    let mut attempt = TimeoutPolicy::default();
    attempt.attempt = Duration::from_millis(100);
    let mut retry = RetryPolicy::default();
    retry.max_retries = 3;
    retry.jitter = Jitter::None;
    retry.base_delay = Duration::from_millis(500);
    retry.budget.enabled = false;
    let hangs = service_fn(|_: ()| std::future::pending::<Result<(), Io>>());
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(
            "op",
            retry,
            palisade::error::ThroughLayers(palisade::error::ThroughLayers(SelfClassified)),
        ))
        .layer(TimeoutLayer::attempt("op", &attempt))
        .layer(layer.clone())
        .service(hangs);

    // The attempt times out and is dropped: its permit comes back before the backoff.
    let mut call = Box::pin(service.clone().oneshot(()));
    assert!(poll_once(&mut call).is_pending());
    assert_eq!(layer.available_permits(), 0);
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(poll_once(&mut call).is_pending(), "now in backoff");
    assert_eq!(layer.available_permits(), 1);
    // Cancelled in the backoff: nothing held.
    drop(call);
    assert_eq!(layer.available_permits(), 1);

    // Cancelled while its attempt waits in the bulkhead's queue.
    let mut hog = layer.layer(Gate::default());
    let mut call = Box::pin(service.oneshot(()));
    assert!(poll_ready(&mut hog).is_ready());
    assert!(poll_once(&mut call).is_pending());
    assert_eq!(layer.waiting(), 1);
    drop(call);
    assert_eq!(layer.waiting(), 0);
    drop(hog);
    assert_eq!(layer.available_permits(), 1);
}

/// Starts a call through `service` that runs until its sender is used or dropped.
fn start(
    service: &palisade::bulkhead::Bulkhead<Gate>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), Error<Io>>>,
) {
    let (open, rx) = oneshot::channel();
    (open, tokio::spawn(service.clone().oneshot(rx)))
}

#[tokio::test(start_paused = true)]
async fn shrinking_while_calls_are_in_flight_retires_permits_as_they_come_back() {
    let layer = BulkheadLayer::unshared("resize", &limits(4, 0, 0));
    let service = layer.layer(Gate::default());
    let mut running = Vec::new();
    for _ in 0..4 {
        running.push(start(&service));
    }
    tokio::task::yield_now().await;
    assert_eq!((layer.in_flight(), layer.available_permits()), (4, 0));

    // Down to 2 through another clone of the layer: nobody in flight loses a permit.
    layer.clone().reconfigure(&limits(2, 0, 0));
    assert_eq!(layer.max_concurrent(), 2);
    assert_eq!((layer.in_flight(), layer.available_permits()), (4, 0));

    // The first two permits that come back are retired, not handed out.
    for _ in 0..2 {
        let (open, call) = running.remove(0);
        open.send(()).unwrap();
        call.await.unwrap().unwrap();
        assert_eq!(layer.available_permits(), 0);
        let (_never, rx) = oneshot::channel();
        let full = rejection(service.clone().oneshot(rx).await);
        assert_eq!(full.max_concurrent, 2, "the rejection names the new limit");
    }
    assert_eq!(layer.in_flight(), 2);

    // Under the new limit now: the next permit that comes back is free again.
    let (open, call) = running.remove(0);
    open.send(()).unwrap();
    call.await.unwrap().unwrap();
    assert_eq!((layer.in_flight(), layer.available_permits()), (1, 1));
    let (open, call) = running.remove(0);
    drop(open);
    call.await.unwrap().unwrap();
    assert_eq!((layer.in_flight(), layer.available_permits()), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn shrinking_retires_free_permits_at_once_and_growing_cancels_the_debt_first() {
    let layer = BulkheadLayer::unshared("resize", &limits(4, 0, 0));
    let service = layer.layer(Gate::default());
    let (open_a, a) = start(&service);
    tokio::task::yield_now().await;
    // Three free, one in flight: shrinking to 1 retires the three free ones at once and
    // owes nothing, the call in flight keeps its permit.
    layer.reconfigure(&limits(1, 0, 0));
    assert_eq!((layer.in_flight(), layer.available_permits()), (1, 0));
    let (_b_open, b) = start(&service);
    tokio::task::yield_now().await;
    assert!(matches!(
        b.await.unwrap(),
        Err(Error::BulkheadFull(ref full)) if full.max_concurrent == 1
    ));

    // Shrink to 0 with the call still in flight (a debt of one), then grow to 3: the debt is
    // cancelled first, so 3 permits exist in all, one of them still held.
    layer.reconfigure(&limits(0, 0, 0));
    layer.reconfigure(&limits(3, 0, 0));
    assert_eq!((layer.in_flight(), layer.available_permits()), (1, 2));
    open_a.send(()).unwrap();
    a.await.unwrap().unwrap();
    assert_eq!((layer.in_flight(), layer.available_permits()), (0, 3));
}

#[tokio::test(start_paused = true)]
async fn growing_hands_new_permits_to_waiters_in_order() {
    let layer = BulkheadLayer::unshared("resize", &limits(1, 4, 10_000));
    let gate = Gate::default();
    let service = layer.layer(gate.clone());
    let (_hold, _running) = start(&service);
    tokio::task::yield_now().await;
    let waiters: Vec<_> = (0..2).map(|_| start(&service)).collect();
    tokio::task::yield_now().await;
    assert_eq!((layer.waiting(), gate.calls.load(Ordering::SeqCst)), (2, 1));

    layer.reconfigure(&limits(3, 4, 10_000));
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!((layer.waiting(), gate.calls.load(Ordering::SeqCst)), (0, 3));
    assert_eq!((layer.in_flight(), layer.available_permits()), (3, 0));
    for (open, call) in waiters {
        open.send(()).unwrap();
        call.await.unwrap().unwrap();
    }
    assert_eq!(layer.available_permits(), 2);
}

#[tokio::test(start_paused = true)]
async fn queue_and_wait_changes_apply_to_the_next_waiter_only() {
    let layer = BulkheadLayer::unshared("resize", &limits(1, 2, 1000));
    let service = layer.layer(Gate::default());
    let (_hold, _running) = start(&service);
    tokio::task::yield_now().await;
    let (_keep, early) = start(&service);
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting(), 1);

    // The queue shrinks to 1 (already taken) and the wait to 100 ms.
    layer.reconfigure(&limits(1, 1, 100));
    assert_eq!(
        (layer.max_queue(), layer.max_wait()),
        (1, Duration::from_millis(100))
    );
    let (_never, rx) = oneshot::channel();
    assert_eq!(
        rejection(service.clone().oneshot(rx).await).reason,
        BulkheadRejection::QueueFull
    );

    // The queue grows again: a new waiter waits the new 100 ms, the early one its 1 s.
    layer.reconfigure(&limits(1, 2, 100));
    let started = tokio::time::Instant::now();
    let (_never, rx) = oneshot::channel();
    let full = rejection(service.clone().oneshot(rx).await);
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(
        full.reason,
        BulkheadRejection::WaitTimedOut(Duration::from_millis(100))
    );
    let full = rejection(early.await.unwrap());
    assert_eq!(started.elapsed(), Duration::from_millis(1000));
    assert_eq!(
        full.reason,
        BulkheadRejection::WaitTimedOut(Duration::from_millis(1000))
    );
}

#[tokio::test(start_paused = true)]
async fn reconfiguring_a_named_bulkhead_resizes_every_layer_sharing_it() {
    let registry = BulkheadRegistry::new();
    let a = registry.layer("shared", &limits(1, 0, 0));
    let b = registry.layer("shared", &limits(1, 0, 0));
    a.reconfigure(&limits(5, 0, 0));
    assert_eq!((b.max_concurrent(), b.available_permits()), (5, 5));
}
