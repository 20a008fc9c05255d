//! Proof that the whole stack (`ResilienceLayer`: selection, error metrics, kill switch,
//! bulkhead, total timeout, retry, circuit breaker, attempt timeout) allocates nothing per
//! call on the success path, and that its correlation layer allocates only for the ID it
//! stores in the request's extensions (and, for a generated ID, for its text in the request
//! header and the echo). Only the test's own thread is counted
//! (tests/support/counting_alloc.rs).

use palisade::classify::{
    Category, Classification, Classified, SelfClassified, Severity, Transience,
};
use palisade::policy::Policies;
use palisade::retry::CloneRequest;
use palisade::stack::{ByName, ResilienceLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

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
async fn allocations<S, R>(mut service: S, make: impl Fn(u64) -> R, calls: u64) -> usize
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    service.ready().await.unwrap().call(make(0)).await.unwrap();
    counting_alloc::start();
    for i in 0..calls {
        let ready = service.ready().await.unwrap();
        std::hint::black_box(ready.call(make(i)).await.unwrap());
    }
    counting_alloc::stop() as usize
}

#[test]
fn the_whole_stack_allocates_nothing_per_call() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let policies = Policies::from_yaml_str(
            "policies:\n  ledger_read: {}\nroutes:\n  \"GET /balance\": ledger_read\n",
        )
        .unwrap();
        // Not done at once, so both timeouts arm their timers.
        let yields = || {
            service_fn(|x: u64| async move {
                tokio::task::yield_now().await;
                Ok::<_, Never>(x)
            })
        };

        // The counter works: a service that boxes every answer is caught.
        let boxing = service_fn(|x: u64| std::future::ready(Ok::<_, Never>(Box::new(x))));
        assert!(allocations(boxing, |i| i, 1000).await >= 1000);

        let by_name = ResilienceLayer::from_policies(policies.clone(), SelfClassified)
            .with_replay(CloneRequest)
            .with_select(ByName::new("ledger_read"))
            .without_correlation()
            .layer(yields());
        assert_eq!(
            allocations(by_name.clone(), |i| i, 1000).await,
            0,
            "stack, by name"
        );
        // A fresh clone of the service for every call, as axum's router makes: the clone
        // fills its own copy of the operation's layers in place, on no heap.
        counting_alloc::start();
        for i in 0..1000 {
            let mut fresh = by_name.clone();
            std::hint::black_box(fresh.ready().await.unwrap().call(i).await.unwrap());
        }
        assert_eq!(counting_alloc::stop(), 0, "stack, a clone per call");

        // Selection by route on an `http::Request` (built outside the count).
        let by_route = ResilienceLayer::from_policies(policies, SelfClassified)
            .without_correlation()
            .layer(service_fn(|r: http::Request<()>| async move {
                tokio::task::yield_now().await;
                Ok::<_, Never>(r.method().as_str().len())
            }));
        let requests: Vec<_> = (0..1001)
            .map(|_| http::Request::get("/balance").body(()).unwrap())
            .collect();
        let requests = std::sync::Mutex::new(requests);
        let next = |_| requests.lock().unwrap().pop().unwrap();
        assert_eq!(
            allocations(by_route, next, 1000).await,
            0,
            "stack, by route"
        );

        // The HTTP stack with correlation and error metrics (no recorder installed), requests
        // as a server hands them over: an incoming ID, extensions already in use.
        #[derive(Clone)]
        struct Served;
        // The handler answers with a header already set, as real ones do (content type): an
        // empty response's header map would allocate its table for the echoed ID.
        let handler = || {
            service_fn(|_: http::Request<()>| async move {
                tokio::task::yield_now().await;
                let mut r = http::Response::new(());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Never>(r)
            })
        };
        let http = ResilienceLayer::from_policies(
            Policies::from_yaml_str(
                "policies:\n  ledger_read: {}\nroutes:\n  \"GET /balance\": ledger_read\n",
            )
            .unwrap(),
            SelfClassified,
        )
        .layer(handler());
        let served = |id: Option<&'static str>| {
            let requests: Vec<_> = (0..1001)
                .map(|_| {
                    // Headers and extensions already in use, as a server hands requests over
                    // (an empty header map would allocate its table for the generated ID).
                    let mut r = http::Request::get("/balance")
                        .header(http::header::HOST, "ledger.internal")
                        .body(())
                        .unwrap();
                    r.extensions_mut().insert(Served);
                    if let Some(id) = id {
                        r.headers_mut()
                            .insert("x-request-id", http::HeaderValue::from_static(id));
                    }
                    r
                })
                .collect();
            std::sync::Mutex::new(requests)
        };
        // What the handler allocates on its own (its response's header map).
        let bare = served(Some("balance-7f3a"));
        let next = |_| bare.lock().unwrap().pop().unwrap();
        let own = allocations(handler(), next, 1000).await;
        assert!(own >= 1000, "the handler's header map: {own}");

        let with_id = served(Some("balance-7f3a"));
        let next = |_| with_id.lock().unwrap().pop().unwrap();
        let n = allocations(http.clone(), next, 1000).await - own;
        // One per call: the ID's box in the request's extensions (`Extensions::insert` boxes
        // each value). Nothing else: selection, metrics, the layers, the echo.
        assert_eq!(
            n, 1000,
            "http stack, incoming id: {n} allocations for 1000 calls"
        );
        let without_id = served(None);
        let next = |_| without_id.lock().unwrap().pop().unwrap();
        let n = allocations(http, next, 1000).await - own;
        // Three per call: the generated ID's 36 bytes in the request header and again in the
        // echo on the response (each its own buffer, freed without a shared reference count:
        // three atomic operations per request cost more than the second allocation), and its
        // box in the extensions.
        assert_eq!(
            n, 3000,
            "http stack, generated id: {n} allocations for 1000 calls"
        );
    });
}
