//! The stack's permits under real threads: its response future takes a bulkhead permit
//! straight from the partition when it can (no reference count of its own) and gives it back
//! through the operation's parts, so every path must give it back exactly once. Many tasks
//! on a multi-thread runtime call one stack, some reusing one service value, some a clone
//! per call; calls are dropped before their first poll, after one poll, or run to the end
//! (some failing), while the bulkhead is resized by reloads. Whatever the
//! interleaving:
//!
//! - the service never sees more calls at once than the largest limit set;
//! - every call that is not dropped ends with the service's answer or a typed error;
//! - at the end nothing is held, and exactly the last limit's permits are free.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use palisade::Error;
use palisade::classify::SelfClassified;
use palisade::policy::{Policies, PolicyStore};
use palisade::stack::{ByName, ResilienceLayer};
use tower::{Layer, Service, ServiceExt};

#[path = "support/load.rs"]
mod load;
use load::{Load, Rng};

type Io = std::io::Error;

/// The service: counts itself in, yields `work % 8` times, fails (a reset connection) when
/// `work >= 8`, counts itself out. (No retries: a backoff would sleep on the real clock.)
#[derive(Clone)]
struct Work(Load);

impl Service<u64> for Work {
    type Response = u64;
    type Error = Io;
    type Future = Pin<Box<dyn Future<Output = Result<u64, Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Io>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, work: u64) -> Self::Future {
        let guard = self.0.enter();
        Box::pin(async move {
            let _guard = guard;
            for _ in 0..work % 8 {
                tokio::task::yield_now().await;
            }
            if work >= 8 {
                return Err(Io::from(std::io::ErrorKind::ConnectionReset));
            }
            Ok(work)
        })
    }
}

fn table(max_concurrent: u32) -> String {
    format!(
        "policies:\n  op:\n    timeout: {{ total: 1h, attempt: 1h }}\n    \
         retry: {{ max_retries: 0 }}\n    \
         circuit_breaker: {{ enabled: false }}\n    \
         bulkhead: {{ max_concurrent: {max_concurrent}, max_queue: 16, max_wait: 1h }}\n"
    )
}

#[derive(Default)]
struct Tally {
    answered: usize,
    failed: usize,
    rejected: usize,
    dropped: usize,
}

async fn caller<S>(stack: S, seed: u64, rounds: usize) -> Tally
where
    S: Service<u64, Response = u64, Error = Error<Io>> + Clone,
{
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut reused = stack.clone();
    for _ in 0..rounds {
        let work = rng.below(12);
        // Half the calls go through one value kept by the task (its own copy of the layers),
        // half through a fresh clone, as axum makes per request.
        let mut service = if rng.below(2) == 0 {
            reused.clone()
        } else {
            stack.clone()
        };
        let service = if rng.below(2) == 0 {
            &mut reused
        } else {
            &mut service
        };
        let mut call = Box::pin(service.ready().await.unwrap().call(work));
        match rng.below(4) {
            // Dropped before its first poll: the permit taken by `call` comes back.
            0 => {
                drop(call);
                tally.dropped += 1;
            }
            // Dropped after one poll, maybe in flight, maybe queued.
            1 => {
                let _ = poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
                drop(call);
                tally.dropped += 1;
            }
            _ => match call.await {
                Ok(n) => {
                    assert_eq!(n, work);
                    tally.answered += 1;
                }
                Err(e) if matches!(e.last_attempt(), Error::Inner(_)) => tally.failed += 1,
                Err(Error::BulkheadFull(_)) => tally.rejected += 1,
                Err(other) => panic!("a call ended with {other:?}"),
            },
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_random_cancellation_and_reloads_no_permit_is_lost_or_made_up() {
    let store = PolicyStore::new(Policies::from_yaml_str(&table(3)).unwrap());
    let load = Load::default();
    let stack = ResilienceLayer::new(store.clone(), SelfClassified)
        .without_correlation()
        .with_select(ByName::new("op"))
        .layer(Work(load.clone()));
    let bulkhead = stack.handle().bulkhead("op").unwrap();

    let callers: Vec<_> = (0..32u64)
        .map(|i| tokio::spawn(caller(stack.clone(), 0x9e37_79b9_7f4a_7c15 ^ (i + 1), 300)))
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let reloader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while done.load(Ordering::SeqCst) == 0 {
                store.reload_from_str(&table(2 + n % 4)).unwrap();
                n += 1;
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
            }
            2 + (n - 1) % 4
        })
    };
    let all = async {
        let mut total = Tally::default();
        for caller in callers {
            let t = caller.await.expect("a caller panicked");
            total.answered += t.answered;
            total.failed += t.failed;
            total.rejected += t.rejected;
            total.dropped += t.dropped;
        }
        total
    };
    let tally = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every call ends (a waiter was never woken)");
    done.store(1, Ordering::SeqCst);
    let last_limit = reloader.await.unwrap() as usize;
    // A reload reaches the operation's state at the next call: make one.
    assert_eq!(stack.clone().oneshot(1).await.unwrap(), 1);

    assert!(tally.answered > 0 && tally.failed > 0 && tally.dropped > 0);
    let most = load.most();
    assert!(
        most <= 5,
        "never more in flight than the largest limit set, saw {most}"
    );
    assert_eq!(load.running(), 0, "no call left running");
    assert_eq!(bulkhead.in_flight(), 0, "no permit left held");
    assert_eq!(
        bulkhead.available_permits(),
        last_limit,
        "exactly the last limit's permits are free: none lost, none made up"
    );
}
