//! Proof that the closed-state success path and the open-state rejection allocate nothing: a
//! counting global allocator, counting only on the test's own thread.

use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use palisade::classify::Outcome;
use palisade::policy::{CircuitBreakerPolicy, WindowType};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

type Classifier = fn(Result<&(), &()>) -> Outcome;

fn classify(r: Result<&(), &()>) -> Outcome {
    Outcome::fallback(r.is_ok())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn policies() -> Vec<(&'static str, CircuitBreakerPolicy)> {
    let time = CircuitBreakerPolicy::default();
    let mut count = CircuitBreakerPolicy::default();
    count.window_type = WindowType::Count;
    let mut slow = CircuitBreakerPolicy::default();
    slow.slow_call_duration = Some(Duration::from_secs(1));
    vec![
        ("time window", time),
        ("count window", count),
        ("slow-call rule", slow),
    ]
}

#[test]
fn the_counter_sees_allocations() {
    assert_eq!(
        counting_alloc::during(|| drop(std::hint::black_box(Box::new(7u64)))),
        1
    );
}

#[test]
fn closed_success_path_allocates_nothing() {
    let rt = runtime();
    for (what, policy) in policies() {
        let layer = CircuitBreakerLayer::new("alloc", policy, classify as Classifier);
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: ()| std::future::ready(Ok::<(), ()>(()))));
        rt.block_on(async {
            // Warm up: first calls may touch lazily built runtime state.
            for _ in 0..10 {
                svc.ready().await.unwrap().call(()).await.unwrap();
            }
            let n = counting_alloc::during(|| {
                futures_lite_block(async {
                    for _ in 0..10_000 {
                        svc.ready().await.unwrap().call(()).await.unwrap();
                    }
                })
            });
            assert_eq!(n, 0, "{what}: allocations on the closed success path");
        });
        assert_eq!(handle.state(), CircuitState::Closed);
        assert!(
            handle.metrics().calls > 0,
            "{what}: the calls were recorded"
        );
    }
}

#[test]
fn open_rejection_allocates_nothing() {
    let rt = runtime();
    let mut policy = CircuitBreakerPolicy::default();
    policy.consecutive_failures = 1;
    let layer = CircuitBreakerLayer::new("alloc", policy, classify as Classifier);
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|ok: bool| {
            std::future::ready(if ok { Ok(()) } else { Err(()) })
        }));
    rt.block_on(async {
        assert!(svc.ready().await.unwrap().call(false).await.is_err());
        assert_eq!(handle.state(), CircuitState::Open);
        let n = counting_alloc::during(|| {
            futures_lite_block(async {
                for _ in 0..10_000 {
                    let r = svc.ready().await.unwrap().call(true).await;
                    assert!(matches!(r, Err(Error::CircuitOpen(_))));
                }
            })
        });
        assert_eq!(n, 0, "allocations on the open rejection path");
    });
}

/// With the coarse tick: a breaker built on a multi-thread runtime runs a ticker (allocated
/// once, when the breaker is built); its successes and rejections still allocate nothing.
#[test]
fn ticking_breaker_allocates_nothing_per_call() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let mut policy = CircuitBreakerPolicy::default();
    policy.consecutive_failures = 1;
    let layer = {
        let _in = rt.enter();
        CircuitBreakerLayer::new("alloc", policy, classify as Classifier)
    };
    assert_eq!(rt.metrics().num_alive_tasks(), 1, "the ticker runs");
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|ok: bool| {
            std::future::ready(if ok { Ok(()) } else { Err(()) })
        }));
    // `block_on` of a multi-thread runtime polls on this thread: the counted one.
    rt.block_on(async {
        for _ in 0..10 {
            svc.ready().await.unwrap().call(true).await.unwrap();
        }
        let n = counting_alloc::during(|| {
            futures_lite_block(async {
                for _ in 0..10_000 {
                    svc.ready().await.unwrap().call(true).await.unwrap();
                }
            })
        });
        assert_eq!(n, 0, "allocations on the ticking closed success path");
        assert!(svc.ready().await.unwrap().call(false).await.is_err());
        assert_eq!(handle.state(), CircuitState::Open);
        let n = counting_alloc::during(|| {
            futures_lite_block(async {
                for _ in 0..10_000 {
                    let r = svc.ready().await.unwrap().call(true).await;
                    assert!(matches!(r, Err(Error::CircuitOpen(_))));
                }
            })
        });
        assert_eq!(n, 0, "allocations on the ticking rejection path");
    });
}

/// Polls a future that never waits to completion on this thread, with no runtime machinery in
/// the measured region (tokio's clock is still reachable through the entered runtime).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
