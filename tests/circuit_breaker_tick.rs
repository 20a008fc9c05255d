//! The coarse tick (see `src/circuit_breaker/tick.rs`): which breakers run a ticker, that it
//! ends with its breaker, and that a breaker without one (built outside a runtime, or whose
//! runtime shut down) reads the precise clock, so paused-clock decisions stay exact.

use std::future::{Ready, ready};
use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitState};
use palisade::classify::Outcome;
use palisade::policy::CircuitBreakerPolicy;
use tokio::runtime::Runtime;
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt, service_fn};

type Inner = tower::util::ServiceFn<fn(bool) -> Ready<Result<(), ()>>>;
type Classifier = fn(Result<&(), &()>) -> Outcome;
type Breaker = CircuitBreaker<Inner, Classifier>;

/// A time window of 10 s (1 s buckets) tripping at 50 % failures over at least 4 calls, open
/// for 5 s.
fn breaker(name: &str) -> Breaker {
    let mut policy = CircuitBreakerPolicy::default();
    policy.window = Duration::from_secs(10);
    policy.minimum_calls = 4;
    policy.failure_rate = 0.5;
    policy.consecutive_failures = 0;
    policy.open_timeout = Duration::from_secs(5);
    let classify: Classifier = |r| Outcome::fallback(r.is_ok());
    let inner: fn(bool) -> Ready<Result<(), ()>> = |ok| ready(if ok { Ok(()) } else { Err(()) });
    CircuitBreakerLayer::new(name, policy, classify).layer(service_fn(inner))
}

async fn call(svc: &mut Breaker, ok: bool) -> Result<(), Error<()>> {
    svc.ready().await?.call(ok).await
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap()
}

fn paused() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// The window forgets a call one window after its bucket began, and an open period ends
/// exactly when it should, under `advance`: what a breaker reading the precise clock does.
///
/// `aligned`: the breaker's buckets start when the paused clock does (it was built on this
/// runtime), so the window's end is checked to the nanosecond; otherwise the calls fall
/// somewhere in a 1 s bucket and are kept for more than 9 s and at most 10 s.
async fn window_and_open_time_are_exact(mut svc: Breaker, aligned: bool) {
    let handle = svc.handle();
    // Successes first: a breaker recording them into a stale bucket would keep them too long.
    for _ in 0..3 {
        call(&mut svc, true).await.unwrap();
    }
    assert!(call(&mut svc, false).await.is_err());
    assert_eq!(handle.metrics().calls, 4);
    let kept = if aligned {
        // One nanosecond before the first bucket leaves the window.
        Duration::from_secs(10) - Duration::from_nanos(1)
    } else {
        Duration::from_secs(9)
    };
    advance(kept).await;
    assert_eq!(handle.metrics().calls, 4);
    advance(Duration::from_secs(10) - kept).await;
    assert_eq!(
        handle.metrics().calls,
        0,
        "the first bucket left the window"
    );
    // Three failures and a success: 75 % over 4 calls, in the window's current bucket.
    call(&mut svc, true).await.unwrap();
    for _ in 0..3 {
        let _ = call(&mut svc, false).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
    advance(Duration::from_secs(5) - Duration::from_nanos(1)).await;
    match call(&mut svc, true).await {
        Err(Error::CircuitOpen(open)) => assert_eq!(open.retry_after, Duration::from_nanos(1)),
        other => panic!("expected a rejection, got {other:?}"),
    }
    advance(Duration::from_nanos(1)).await;
    call(&mut svc, true)
        .await
        .expect("the open time is over: a probe");
}

#[test]
fn a_breaker_built_outside_a_runtime_follows_the_paused_clock_exactly() {
    let svc = breaker("outside");
    paused().block_on(window_and_open_time_are_exact(svc, false));
}

#[test]
fn a_breaker_built_on_a_current_thread_runtime_follows_its_paused_clock_exactly() {
    let rt = paused();
    let svc = {
        let _in = rt.enter();
        breaker("paused")
    };
    assert_eq!(
        rt.metrics().num_alive_tasks(),
        0,
        "no ticker on a current-thread runtime"
    );
    rt.block_on(window_and_open_time_are_exact(svc, true));
}

#[test]
fn after_its_runtime_shut_down_a_breaker_reads_the_clock_again() {
    let first = multi_thread();
    let mut svc = {
        let _in = first.enter();
        breaker("moved")
    };
    assert_eq!(first.metrics().num_alive_tasks(), 1, "the ticker runs");
    first.block_on(async {
        call(&mut svc, true).await.unwrap();
    });
    drop(first);
    // A fresh window (a frozen tick would put these successes in a bucket that never ends).
    svc.handle().reset();
    paused().block_on(window_and_open_time_are_exact(svc, false));
}

#[test]
fn the_ticker_ends_when_its_breaker_is_dropped() {
    let rt = multi_thread();
    let mut svc = {
        let _in = rt.enter();
        breaker("dropped")
    };
    assert_eq!(rt.metrics().num_alive_tasks(), 1);
    rt.block_on(async {
        for ok in [true, false, true] {
            let _ = call(&mut svc, ok).await;
        }
    });
    drop(svc);
    // This thread keeps a spare reference to the breaker its last call used until it
    // finishes a call of another breaker: make one.
    let mut other = breaker("other");
    rt.block_on(async { call(&mut other, true).await.unwrap() });
    // The ticker notices at its next wake (at most 100 ms): wait for it, up to 10 s.
    let mut alive = rt.metrics().num_alive_tasks();
    for _ in 0..1000 {
        if alive == 0 {
            break;
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        alive = rt.metrics().num_alive_tasks();
    }
    assert_eq!(alive, 0, "the ticker of a dropped breaker ended");
}

#[test]
fn a_ticking_breaker_rejects_while_open_and_reports_at_most_the_open_time() {
    let rt = multi_thread();
    let mut svc = {
        let _in = rt.enter();
        breaker("ticking")
    };
    rt.block_on(async {
        for _ in 0..4 {
            let _ = call(&mut svc, false).await;
        }
        assert_eq!(svc.handle().state(), CircuitState::Open);
        for _ in 0..100 {
            match call(&mut svc, true).await {
                Err(Error::CircuitOpen(open)) => {
                    assert!(open.retry_after <= Duration::from_secs(5));
                    assert!(open.retry_after > Duration::ZERO);
                }
                other => panic!("expected a rejection, got {other:?}"),
            }
        }
        assert_eq!(svc.handle().metrics().rejections, 100);
    });
}
