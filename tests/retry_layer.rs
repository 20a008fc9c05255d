//! The retry layer under tokio's paused clock: exact backoff sequences, retry-after, the
//! budget, the deadline, readiness and cancellation.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::classify::{
    Category, Classification, Classified, SelfClassified, Severity, Transience,
};
use palisade::error::{Error, RetryStop, ThroughLayers, TimeoutKind};
use palisade::policy::{Jitter, RetryPolicy};
use palisade::retry::{Backoff, RetryLayer, Rng};
use palisade::timeout::TimeoutLayer;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

/// An error that is not `Clone`, classified as it says.
#[derive(Debug)]
struct Fault {
    transience: Transience,
    retry_after: Option<Duration>,
}

impl Fault {
    fn transient() -> Self {
        Fault {
            transience: Transience::Transient,
            retry_after: None,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fault", self.transience)
    }
}

impl std::error::Error for Fault {}

impl Classified for Fault {
    fn classification(&self) -> Classification {
        let c = Classification::new(
            self.transience,
            Category::External,
            Severity::Medium,
            "fault",
        );
        match self.retry_after {
            Some(after) => c.with_retry_after(after),
            None => c,
        }
    }
}

fn policy(max_retries: u32, jitter: Jitter) -> RetryPolicy {
    let mut p = RetryPolicy::default();
    p.max_retries = max_retries;
    p.base_delay = Duration::from_millis(100);
    p.max_delay = Duration::from_secs(2);
    p.multiplier = 2.0;
    p.jitter = jitter;
    p.budget.enabled = false;
    p
}

/// A service that fails its first `failures` calls with `fault()` and records when each
/// attempt started.
#[derive(Clone)]
struct Flaky {
    failures: u32,
    calls: Arc<AtomicU32>,
    started: Arc<Mutex<Vec<Instant>>>,
    fault: fn() -> Fault,
}

impl Flaky {
    fn new(failures: u32, fault: fn() -> Fault) -> Self {
        Flaky {
            failures,
            calls: Arc::default(),
            started: Arc::default(),
            fault,
        }
    }

    fn gaps(&self) -> Vec<Duration> {
        let started = self.started.lock().unwrap();
        started.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

impl Service<u32> for Flaky {
    type Response = u32;
    type Error = Fault;
    type Future = std::future::Ready<Result<u32, Fault>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Fault>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.started.lock().unwrap().push(Instant::now());
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if n < self.failures {
            Err((self.fault)())
        } else {
            Ok(request * 2)
        })
    }
}

/// tokio's timer wheel fires on whole milliseconds: a sleep lasts its delay rounded up.
fn on_the_wheel(d: Duration) -> Duration {
    Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64)
}

/// The delays a layer seeded with `seed` uses for the first call of its first service.
fn expected_delays(policy: &RetryPolicy, seed: u64, n: usize) -> Vec<Duration> {
    let mut service_rng = Rng::seeded(seed);
    let mut backoff = Backoff::new(policy, Rng::seeded(service_rng.next_u64()));
    (0..n)
        .map(|_| on_the_wheel(backoff.next_delay(None)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn without_jitter_the_delays_double_up_to_the_cap() {
    let mut p = policy(5, Jitter::None);
    p.max_delay = Duration::from_millis(500);
    let flaky = Flaky::new(5, Fault::transient);
    let service = RetryLayer::new("op", p, SelfClassified).layer(flaky.clone());
    assert_eq!(service.oneshot(21).await.unwrap(), 42);
    assert_eq!(
        flaky.gaps(),
        [100, 200, 400, 500, 500].map(Duration::from_millis)
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_gives_an_exact_reproducible_sequence() {
    for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
        let p = policy(4, jitter);
        let mut runs = Vec::new();
        for seed in [7, 7, 8] {
            let flaky = Flaky::new(4, Fault::transient);
            let service = RetryLayer::new("op", p, SelfClassified)
                .with_seed(seed)
                .layer(flaky.clone());
            service.oneshot(1).await.unwrap();
            assert_eq!(flaky.gaps(), expected_delays(&p, seed, 4), "{jitter:?}");
            runs.push(flaky.gaps());
        }
        assert_eq!(runs[0], runs[1], "{jitter:?}: same seed, same delays");
        assert_ne!(runs[0], runs[2], "{jitter:?}: another seed, other delays");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_overrides_the_backoff_jittered_up_to_half_again() {
    let p = policy(1, Jitter::None);
    // The server asks for 300 ms (not the 100 ms backoff), or for exactly `max_delay` (2 s),
    // which is still waited for: between the asked wait and half again.
    let asks: [(fn() -> Fault, Duration); 2] = [
        (
            || Fault {
                transience: Transience::Transient,
                retry_after: Some(Duration::from_millis(300)),
            },
            Duration::from_millis(300),
        ),
        (
            || Fault {
                transience: Transience::Transient,
                retry_after: Some(Duration::from_secs(2)),
            },
            Duration::from_secs(2),
        ),
    ];
    for (fault, asked) in asks {
        for seed in 0..20 {
            let flaky = Flaky::new(1, fault);
            let service = RetryLayer::new("op", p, SelfClassified)
                .with_seed(seed)
                .layer(flaky.clone());
            service.oneshot(1).await.unwrap();
            let gap = flaky.gaps()[0];
            assert!(
                gap >= asked && gap <= asked + asked / 2,
                "{asked:?}: {gap:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_max_delay_is_not_waited_out_but_returned_at_once() {
    // The server asks for an hour; the policy waits at most 2 s. Retrying after 2 s would be
    // refused again, so the failure goes back at once, its retry-after intact.
    let flaky = Flaky::new(1, || Fault {
        transience: Transience::Transient,
        retry_after: Some(Duration::from_secs(3600)),
    });
    let started = Instant::now();
    let err = RetryLayer::new("quotes", policy(3, Jitter::None), SelfClassified)
        .layer(flaky.clone())
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
    assert_eq!(Instant::now(), started, "no backoff was slept");
    let Error::Retried(r) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((r.attempts, r.stop), (1, RetryStop::RetryAfterTooLong));
    let Error::Inner(fault) = &*r.last else {
        panic!("{err:?}")
    };
    assert_eq!(
        fault.classification().retry_after,
        Some(Duration::from_secs(3600))
    );
}

#[tokio::test(start_paused = true)]
async fn only_transient_failures_are_retried_and_unknown_on_request() {
    let persistent = Flaky::new(1, || Fault {
        transience: Transience::Persistent,
        retry_after: None,
    });
    let err = RetryLayer::new("op", policy(3, Jitter::None), SelfClassified)
        .layer(persistent.clone())
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(persistent.calls.load(Ordering::SeqCst), 1);
    match &err {
        Error::Retried(r) => {
            assert_eq!((r.attempts, r.stop), (1, RetryStop::NotRetryable));
            assert_eq!(r.inner().unwrap().transience, Transience::Persistent);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.attempts(), Some(1));

    let unknown = || Fault {
        transience: Transience::Unknown,
        retry_after: None,
    };
    let flaky = Flaky::new(1, unknown);
    let result = RetryLayer::new("op", policy(3, Jitter::None), SelfClassified)
        .layer(flaky.clone())
        .oneshot(1)
        .await;
    assert!(result.is_err());
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);

    let mut p = policy(3, Jitter::None);
    p.retry_unknown = true;
    let flaky = Flaky::new(1, unknown);
    let result = RetryLayer::new("op", p, SelfClassified)
        .layer(flaky.clone())
        .oneshot(1)
        .await;
    assert_eq!(result.unwrap(), 2);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn max_retries_bounds_the_attempts_and_the_error_says_so() {
    let flaky = Flaky::new(10, Fault::transient);
    let err = RetryLayer::new("transfers", policy(2, Jitter::None), SelfClassified)
        .layer(flaky.clone())
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    let Error::Retried(r) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((r.attempts, r.stop), (3, RetryStop::MaxRetries));
    assert_eq!(&*r.operation, "transfers");
    assert_eq!(
        err.to_string(),
        "operation `transfers` failed after 3 attempt(s) (max_retries): transient fault"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_shared_by_clones_exhausts_and_refills() {
    let mut p = policy(5, Jitter::None);
    // No share of requests, a floor of one retry a second over two seconds: two retries.
    p.budget.enabled = true;
    p.budget.ratio = 0.0;
    p.budget.min_per_second = 1;
    p.budget.window = Duration::from_secs(2);
    p.base_delay = Duration::from_millis(1);
    let flaky = Flaky::new(u32::MAX, Fault::transient);
    let layer = RetryLayer::new("op", p, SelfClassified);
    let service = layer.layer(flaky.clone());

    let err = service.clone().oneshot(1).await.unwrap_err();
    let Error::RetryBudgetExhausted(r) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((r.attempts, r.stop), (3, RetryStop::BudgetExhausted));
    assert_eq!(r.inner().unwrap().transience, Transience::Transient);
    assert_eq!(layer.budget().remaining(), 0);

    // Another clone, and another service from the same layer, find it spent too.
    let err = layer.layer(flaky.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(err.attempts(), Some(1));
    assert!(matches!(err, Error::RetryBudgetExhausted(_)));

    // Two seconds on, the spent retries have left the window.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(layer.budget().remaining(), 2);
    let err = service.oneshot(1).await.unwrap_err();
    assert_eq!(err.attempts(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn retries_waiting_in_backoff_count_against_the_budget() {
    let mut p = policy(1, Jitter::None);
    p.budget.enabled = true;
    p.budget.ratio = 0.0;
    p.budget.min_per_second = 1;
    p.budget.window = Duration::from_secs(1);
    p.base_delay = Duration::from_secs(5);
    let layer = RetryLayer::new("op", p, SelfClassified);
    let flaky = Flaky::new(u32::MAX, Fault::transient);
    let mut waiting = Box::pin(layer.layer(flaky.clone()).oneshot(1));
    // The first call fails and goes to sleep for 5 s, holding the only retry.
    assert!(futures_poll(&mut waiting).is_pending());
    assert_eq!(layer.budget().remaining(), 0);
    let err = layer.layer(flaky).oneshot(1).await.unwrap_err();
    assert!(matches!(err, Error::RetryBudgetExhausted(_)));
}

fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let waker = std::task::Waker::noop();
    std::pin::Pin::new(f).poll(&mut Context::from_waker(waker))
}

#[tokio::test(start_paused = true)]
async fn no_retry_when_the_deadline_cannot_fit_another_attempt() {
    // Each attempt takes 300 ms and fails; the total budget is one second.
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let slow_failure = service_fn(move |_: u32| {
        seen.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err::<u32, _>(Fault::transient())
        }
    });
    let mut timeout = palisade::policy::TimeoutPolicy::default();
    timeout.total = Duration::from_secs(1);
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::total("op", &timeout))
        .layer(RetryLayer::new(
            "op",
            policy(5, Jitter::None),
            SelfClassified,
        ))
        .service(slow_failure);
    let started = Instant::now();
    let err = service.oneshot(1).await.unwrap_err().flatten();
    // 0-300 fails, 100 ms backoff, 400-700 fails; a 200 ms backoff and a 300 ms attempt
    // would end at 1.2 s, past the deadline: stop at 700 ms instead of timing out at 1 s.
    assert_eq!(started.elapsed(), Duration::from_millis(700));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let Error::Retried(r) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((r.attempts, r.stop), (2, RetryStop::Deadline));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_inside_retry_is_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let hangs_once = service_fn(move |n: u32| {
        let call = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if call == 0 {
                std::future::pending::<()>().await;
            }
            Ok::<_, Fault>(n)
        }
    });
    let mut timeout = palisade::policy::TimeoutPolicy::default();
    timeout.attempt = Duration::from_millis(250);
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(
            "op",
            policy(2, Jitter::None),
            ThroughLayers(SelfClassified),
        ))
        .layer(TimeoutLayer::attempt("op", &timeout))
        .service(hangs_once);
    let started = Instant::now();
    assert_eq!(service.oneshot(9).await.unwrap(), 9);
    assert_eq!(started.elapsed(), Duration::from_millis(350));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Always hanging: the last attempt's timeout comes back, flattened to one level.
    let hangs = service_fn(|_: u32| std::future::pending::<Result<u32, Fault>>());
    let service = ServiceBuilder::new()
        .layer(RetryLayer::new(
            "op",
            policy(1, Jitter::None),
            ThroughLayers(SelfClassified),
        ))
        .layer(TimeoutLayer::attempt("op", &timeout))
        .service(hangs);
    let err = service.oneshot(1).await.unwrap_err().flatten();
    assert_eq!(err.attempts(), Some(2));
    match err.last_attempt() {
        Error::Timeout(t) => assert_eq!(t.kind, TimeoutKind::Attempt),
        other => panic!("{other:?}"),
    }
}

/// Counts `poll_ready` calls, and is ready only every other poll.
#[derive(Clone, Default)]
struct Reluctant {
    polls: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Service<u32> for Reluctant {
    type Response = u32;
    type Error = Fault;
    type Future = std::future::Ready<Result<u32, Fault>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Fault>> {
        if self.polls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, n: u32) -> Self::Future {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if call < 2 {
            Err(Fault::transient())
        } else {
            Ok(n)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_is_polled_again_before_every_attempt() {
    let inner = Reluctant::default();
    let service =
        RetryLayer::new("op", policy(3, Jitter::None), SelfClassified).layer(inner.clone());
    assert_eq!(service.oneshot(5).await.unwrap(), 5);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    // Two polls (pending, ready) before each of the three attempts.
    assert_eq!(inner.polls.load(Ordering::SeqCst), 6);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_in_an_attempt_or_a_backoff_releases_everything() {
    // The request is an Arc: its strong count shows whether a copy is still held.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
    let slow_failure = service_fn(move |_: Arc<()>| {
        let guard = CountGuard::new(counter.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(guard);
            Err::<(), _>(Fault::transient())
        }
    });
    let service =
        RetryLayer::new("op", policy(3, Jitter::None), SelfClassified).layer(slow_failure);
    let request = Arc::new(());

    // Dropped during the first attempt.
    let mut future = Box::pin(service.clone().oneshot(request.clone()));
    assert!(futures_poll(&mut future).is_pending());
    assert_eq!(in_flight.load(Ordering::SeqCst), 1);
    drop(future);
    assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(Arc::strong_count(&request), 1);

    // Dropped during the backoff after the first attempt.
    let mut future = Box::pin(service.clone().oneshot(request.clone()));
    assert!(futures_poll(&mut future).is_pending());
    tokio::time::advance(Duration::from_millis(150)).await;
    assert!(futures_poll(&mut future).is_pending());
    assert_eq!(
        in_flight.load(Ordering::SeqCst),
        0,
        "in backoff, no attempt runs"
    );
    assert!(
        Arc::strong_count(&request) > 1,
        "the copy for the retry is held"
    );
    drop(future);
    assert_eq!(Arc::strong_count(&request), 1);
}

struct CountGuard(Arc<AtomicUsize>);

impl CountGuard {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        CountGuard(counter)
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
