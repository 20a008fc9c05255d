//! The bulkhead's lock-free permit count under real threads: many tasks on a multi-thread
//! runtime call through one bulkhead, some of them dropping their call while it waits in the
//! queue, right after a permit was handed to it, or while it runs, while another task may
//! resize the bulkhead. Whatever the interleaving:
//!
//! - the inner service never sees more calls at once than the limit (the largest limit set,
//!   when resizing);
//! - every call that is not dropped ends, with the inner service's answer or a typed
//!   rejection (a lost wake-up would leave a waiter parked for its hour-long `max_wait`,
//!   which the watchdog turns into a failure);
//! - at the end nothing is held or waiting, and exactly the last limit's permits are free.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use palisade::bulkhead::{Bulkhead, BulkheadLayer};
use palisade::error::{BulkheadRejection, Error};
use palisade::policy::BulkheadPolicy;
use tower::{Layer, Service, ServiceExt};

#[path = "support/load.rs"]
mod load;
use load::{Load, Rng};

type Io = std::io::Error;

fn limits(max_concurrent: u32, max_queue: u32, max_wait: Duration) -> BulkheadPolicy {
    let mut p = BulkheadPolicy::default();
    p.max_concurrent = max_concurrent;
    p.max_queue = max_queue;
    p.max_wait = max_wait;
    p
}

/// Long enough that no wait runs out during the test: a waiter that is never woken hangs.
const FOREVER: Duration = Duration::from_secs(3600);

/// The inner service: counts itself in, yields `work` times (so other tasks run while it is
/// in flight), counts itself out.
#[derive(Clone)]
struct Work(Load);

impl Service<u32> for Work {
    type Response = ();
    type Error = Io;
    type Future = Pin<Box<dyn Future<Output = Result<(), Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Io>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, work: u32) -> Self::Future {
        let guard = self.0.enter();
        Box::pin(async move {
            let _guard = guard;
            for _ in 0..work {
                tokio::task::yield_now().await;
            }
            Ok(())
        })
    }
}

/// What the calls of one run came to.
#[derive(Default)]
struct Tally {
    answered: usize,
    queue_full: usize,
    wait_timed_out: usize,
    dropped: usize,
    /// Calls dropped while `poll_ready` was pending (waiting in the queue).
    dropped_waiting: usize,
}

/// One task's calls: `rounds` calls, each run to its end or dropped at a point picked at
/// random.
async fn caller(service: Bulkhead<Work>, seed: u64, rounds: usize) -> Tally {
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for _ in 0..rounds {
        let mut service = service.clone();
        let work = rng.below(4) as u32;
        match rng.below(5) {
            // Dropped in the queue (or holding the permit `poll_ready` reserved): poll
            // readiness once, maybe let others run, and drop the service.
            0 | 1 => {
                let first = poll_fn(|cx| Poll::Ready(service.poll_ready(cx))).await;
                tally.dropped_waiting += usize::from(first.is_pending());
                for _ in 0..rng.below(3) {
                    tokio::task::yield_now().await;
                }
                drop(service);
                tally.dropped += 1;
            }
            // Dropped in flight: the call is polled once (it yields), then dropped.
            2 => {
                let ready = service
                    .ready()
                    .await
                    .expect("the bulkhead is never not ready");
                let mut call = ready.call(work.max(1));
                let _ = poll_fn(|cx| Poll::Ready(Pin::new(&mut call).poll(cx))).await;
                drop(call);
                tally.dropped += 1;
            }
            // Run to the end: an answer or a typed rejection, nothing else.
            _ => match service.oneshot(work).await {
                Ok(()) => tally.answered += 1,
                Err(Error::BulkheadFull(full)) => match full.reason {
                    BulkheadRejection::QueueFull => tally.queue_full += 1,
                    BulkheadRejection::WaitTimedOut(_) => tally.wait_timed_out += 1,
                },
                Err(other) => panic!("a call ended with {other:?}"),
            },
        }
    }
    tally
}

/// Runs `tasks` callers of `rounds` calls each through `layer`, with `resize` (if any)
/// running beside them until they are done; fails if they are not done within a minute.
/// Returns what the calls came to and the limit the resizer set last.
async fn churn(
    layer: &BulkheadLayer,
    load: &Load,
    tasks: u64,
    rounds: usize,
    resize: Option<Vec<BulkheadPolicy>>,
) -> (Tally, Option<usize>) {
    let service = layer.layer(Work(load.clone()));
    let callers: Vec<_> = (0..tasks)
        .map(|i| {
            tokio::spawn(caller(
                service.clone(),
                0x9e37_79b9_7f4a_7c15 ^ (i + 1),
                rounds,
            ))
        })
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let resizer = resize.map(|sizes| {
        let (layer, done) = (layer.clone(), done.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while done.load(Ordering::SeqCst) == 0 {
                layer.reconfigure(&sizes[rounds % sizes.len()]);
                rounds += 1;
                tokio::task::yield_now().await;
            }
            assert!(rounds > 0, "the resizer ran");
            sizes[(rounds - 1) % sizes.len()].max_concurrent as usize
        })
    });
    let all = async {
        let mut total = Tally::default();
        for caller in callers {
            let t = caller.await.expect("a caller panicked");
            total.answered += t.answered;
            total.queue_full += t.queue_full;
            total.wait_timed_out += t.wait_timed_out;
            total.dropped += t.dropped;
            total.dropped_waiting += t.dropped_waiting;
        }
        total
    };
    let total = tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every call ends with an answer or a rejection (a waiter was never woken)");
    done.store(1, Ordering::SeqCst);
    let last_limit = match resizer {
        Some(resizer) => Some(resizer.await.expect("the resizer panicked")),
        None => None,
    };
    (total, last_limit)
}

fn assert_settled(layer: &BulkheadLayer, load: &Load, limit: usize) {
    assert_eq!(load.running(), 0, "no call left running");
    assert_eq!(layer.in_flight(), 0, "no permit left held");
    assert_eq!(layer.waiting(), 0, "nobody left in the queue");
    assert_eq!(
        layer.available_permits(),
        limit,
        "exactly the limit's permits are free: none lost, none made up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_random_cancellation_the_limit_holds_and_no_waiter_is_forgotten() {
    let layer = BulkheadLayer::unshared("stress", &limits(3, 24, FOREVER));
    let load = Load::default();
    let (tally, _) = churn(&layer, &load, 48, 400, None).await;
    assert!(
        tally.queue_full > 0 && tally.dropped_waiting > 0,
        "the queue filled up"
    );

    assert!(
        load.most() <= 3,
        "never more than 3 in flight, saw {}",
        load.most()
    );
    assert_eq!(load.most(), 3, "the test filled the bulkhead");
    assert_eq!(tally.wait_timed_out, 0);
    assert!(tally.answered > 0);
    assert_settled(&layer, &load, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_random_cancellation_and_resizes_no_permit_is_lost_or_made_up() {
    let layer = BulkheadLayer::unshared("stress_resize", &limits(4, 64, FOREVER));
    let load = Load::default();
    let sizes = [
        (1u32, 64),
        (6, 8),
        (2, 16),
        (8, 64),
        (0, 64),
        (3, 4),
        (5, 64),
        (1, 32),
        (7, 16),
    ]
    .map(|(n, queue)| limits(n, queue, FOREVER))
    .to_vec();
    let (tally, last_limit) = churn(&layer, &load, 48, 400, Some(sizes)).await;
    // Whatever size the resizer stopped on, its permits are all free now, no debt left
    // over; and one more resize (a grow or a shrink with nothing in flight) is exact too.
    assert_settled(&layer, &load, last_limit.unwrap());
    layer.reconfigure(&limits(4, 64, FOREVER));

    assert!(
        load.most() <= 8,
        "never more in flight than the largest limit set, saw {}",
        load.most()
    );
    assert_eq!(tally.wait_timed_out, 0);
    assert!(tally.answered > 0 && tally.dropped_waiting > 0);
    assert_settled(&layer, &load, 4);
}

/// Short waits that really run out: the rejections are typed, and a wait that ran out
/// while its permit was being handed over loses no permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waits_running_out_under_load_lose_no_permit() {
    let layer = BulkheadLayer::unshared("stress_wait", &limits(2, 8, Duration::from_micros(50)));
    let load = Load::default();
    let (tally, _) = churn(&layer, &load, 32, 300, None).await;

    assert!(load.most() <= 2);
    // How many waits run out depends on the machine (tokio's timer ticks by the
    // millisecond); what must hold does not.
    assert!(tally.answered > 0);
    assert_settled(&layer, &load, 2);
}
