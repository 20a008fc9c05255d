//! Proof that the success path allocates nothing: a counting global allocator around calls
//! through each layer and through the whole stack. Only the counting thread's allocations are
//! counted (the runtime is current-thread, so every layer runs there): the test harness's own
//! threads may allocate at any time.

use palisade::bulkhead::BulkheadLayer;
use palisade::classify::{
    Category, Classification, Classified, SelfClassified, Severity, Transience,
};
use palisade::error::ThroughLayers;
use palisade::policy::{BulkheadPolicy, RetryPolicy, TimeoutPolicy};
use palisade::retry::RetryLayer;
use palisade::timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

#[derive(Debug)]
struct Never;

impl Classified for Never {
    fn classification(&self) -> Classification {
        Classification::new(
            Transience::Transient,
            Category::System,
            Severity::Low,
            "never",
        )
    }
}

/// Allocations made by `calls` calls of `service`, after one call to warm up.
async fn allocations<S>(mut service: S, calls: u64) -> usize
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    service.ready().await.unwrap().call(0).await.unwrap();
    counting_alloc::start();
    for i in 0..calls {
        let ready = service.ready().await.unwrap();
        std::hint::black_box(ready.call(i).await.unwrap());
    }
    counting_alloc::stop() as usize
}

#[test]
fn the_success_path_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let noop = || service_fn(|x: u64| std::future::ready(Ok::<_, Never>(x)));
        // An inner service that is not done at once, so the timeout arms its timer.
        let yields = || {
            service_fn(|x: u64| async move {
                tokio::task::yield_now().await;
                Ok::<_, Never>(x)
            })
        };
        let retry = || RetryLayer::new("op", RetryPolicy::default(), SelfClassified);
        let attempt = || TimeoutLayer::attempt("op", &TimeoutPolicy::default());
        let bulkhead = || BulkheadLayer::unshared("op", &BulkheadPolicy::default());

        // The counter works: a service that boxes every answer is caught.
        let boxing = service_fn(|x: u64| std::future::ready(Ok::<_, Never>(Box::new(x))));
        assert!(allocations(boxing, 1000).await >= 1000);

        assert_eq!(allocations(retry().layer(noop()), 1000).await, 0, "retry");
        assert_eq!(
            allocations(attempt().layer(noop()), 1000).await,
            0,
            "timeout"
        );
        assert_eq!(
            allocations(attempt().layer(yields()), 1000).await,
            0,
            "timeout with its timer armed"
        );
        assert_eq!(
            allocations(bulkhead().layer(noop()), 1000).await,
            0,
            "bulkhead"
        );
        let stack = ServiceBuilder::new()
            .layer(TimeoutLayer::total("op", &TimeoutPolicy::default()))
            .layer(RetryLayer::new(
                "op",
                RetryPolicy::default(),
                ThroughLayers(ThroughLayers(SelfClassified)),
            ))
            .layer(attempt())
            .layer(bulkhead())
            .service(yields());
        assert_eq!(allocations(stack, 1000).await, 0, "the whole stack");
    });
}

/// With a recorder installed, the layers' metric handles (registered when the layers are
/// made) record without allocating or looking anything up per call.
#[cfg(feature = "metrics")]
#[test]
fn the_success_path_allocates_nothing_while_recording_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stack = ServiceBuilder::new()
            .layer(BulkheadLayer::unshared(
                "alloc_op",
                &BulkheadPolicy::default(),
            ))
            .layer(TimeoutLayer::total("alloc_op", &TimeoutPolicy::default()))
            .layer(RetryLayer::new(
                "alloc_op",
                RetryPolicy::default(),
                ThroughLayers(SelfClassified),
            ))
            .layer(TimeoutLayer::attempt("alloc_op", &TimeoutPolicy::default()))
            .service(service_fn(|x: u64| async move {
                tokio::task::yield_now().await;
                Ok::<_, Never>(x)
            }));
        assert_eq!(
            allocations(stack, 1000).await,
            0,
            "the whole stack, recording"
        );
    });
    // The calls were recorded: 1,001 successes without retry (the warm-up included).
    let recorded = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| {
            key.key().name() == "palisade_retries_total"
                && key
                    .key()
                    .labels()
                    .any(|l| l.value() == "succeeded_without_retry")
        });
    assert_eq!(recorded.map(|r| r.3), Some(DebugValue::Counter(1001)));
}
