//! Proof that the success path allocates nothing: a counting global allocator around calls
//! through each layer and through the whole stack. One test per binary, so no other test
//! allocates while this one counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use palisade::bulkhead::BulkheadLayer;
use palisade::classify::{
    Category, Classification, Classified, SelfClassified, Severity, Transience,
};
use palisade::error::ThroughLayers;
use palisade::policy::{BulkheadPolicy, RetryPolicy, TimeoutPolicy};
use palisade::retry::RetryLayer;
use palisade::timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for i in 0..calls {
        let ready = service.ready().await.unwrap();
        std::hint::black_box(ready.call(i).await.unwrap());
    }
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
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
