//! The coarse tick: a breaker's time, kept by a tokio task, so that hot paths need not read
//! the clock.
//!
//! A clock read costs about a third of a closed-state success with a time window. A success
//! only needs to know its bucket, and a rejection only needs to know that the open period is
//! clearly not over; neither needs the time to the nanosecond. So each breaker built on a
//! multi-thread tokio runtime spawns one small task (the *ticker*) that reads tokio's clock at
//! most every [`MAX_GRAIN`] and at every bucket boundary, and stores what it read: the time
//! in nanoseconds since the breaker's base, and the time window's bucket number. Envoy does
//! the same with the time it caches per event-loop iteration.
//!
//! # When the tick is not used
//!
//! The hot paths read the precise clock, as before the tick existed, whenever a value is
//! [`UNAVAILABLE`]:
//! - the breaker was built outside a tokio runtime, or on a current-thread runtime (such a
//!   runtime only runs its tasks inside `block_on`: a ticker there could stand still while the
//!   breaker is used from elsewhere, and a frozen clock is worse than a slow one);
//! - tokio's clock is not the system's monotonic clock (it was paused or advanced: only
//!   current-thread runtimes can be, so paused-clock tests always use the precise clock and
//!   `pause`/`advance` drive the breaker exactly);
//! - the runtime that ran the ticker shut down: the task's guard marks the tick unavailable
//!   when the task is dropped;
//! - a reconfiguration changed the bucket width, until the ticker's next wake.
//!
//! The ticker holds only a [`Weak`] reference and ends at its first wake after the breaker is
//! dropped. It allocates once, when spawned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::Breaker;

/// The value of a coarse field that must not be used: read the clock instead.
pub(crate) const UNAVAILABLE: u64 = u64::MAX;

/// The longest the ticker sleeps, in nanoseconds: also the margin a rejection allows before it
/// reads the precise clock near the end of an open period.
pub(crate) const MAX_GRAIN: u64 = 100_000_000;

/// The shortest the ticker sleeps (tokio's timer counts whole milliseconds).
const MIN_GRAIN: u64 = 1_000_000;

/// How long the ticker sleeps for a time window of buckets `width` nanoseconds wide (0 for a
/// count window): a quarter of a bucket, between 1 ms and 100 ms. It also wakes at every
/// bucket boundary, so a success lands in the bucket it belongs to except during the wake's
/// lag; the quarter only bounds how stale the time a rejection is judged on can be.
pub(crate) fn grain(width: u64) -> u64 {
    if width == 0 {
        MAX_GRAIN
    } else {
        (width / 4).clamp(MIN_GRAIN, MAX_GRAIN)
    }
}

/// What the ticker last read.
#[derive(Debug)]
pub(crate) struct Coarse {
    /// Nanoseconds since the breaker's base, or [`UNAVAILABLE`].
    pub(crate) now: AtomicU64,
    /// The time window's bucket number at `now`, or [`UNAVAILABLE`] (also for a count
    /// window).
    pub(crate) bucket: AtomicU64,
}

impl Coarse {
    pub(crate) fn unavailable() -> Self {
        Coarse {
            now: AtomicU64::new(UNAVAILABLE),
            bucket: AtomicU64::new(UNAVAILABLE),
        }
    }

    pub(crate) fn clear(&self) {
        self.bucket.store(UNAVAILABLE, Ordering::Relaxed);
        self.now.store(UNAVAILABLE, Ordering::Relaxed);
    }
}

/// Whether tokio's clock is, here and now, the system's monotonic clock: read between two
/// reads of it. False when the current runtime's clock was paused or advanced.
fn clock_is_real() -> bool {
    let before = std::time::Instant::now();
    let now = Instant::now().into_std();
    let after = std::time::Instant::now();
    before <= now && now <= after
}

/// Starts `breaker`'s ticker if the current thread is in a multi-thread tokio runtime whose
/// clock is the system's; otherwise the breaker keeps reading the precise clock.
pub(crate) fn start(breaker: &Arc<Breaker>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread || !clock_is_real() {
        return;
    }
    // Available from the start: the first success needs no clock read.
    breaker.tick();
    let guard = Guard(Arc::downgrade(breaker));
    handle.spawn(run(guard));
}

/// Marks the tick unavailable when the ticker ends or is dropped (its runtime shut down).
struct Guard(Weak<Breaker>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.upgrade() {
            breaker.coarse().clear();
        }
    }
}

async fn run(guard: Guard) {
    loop {
        let next = {
            // No strong reference is held across the sleep.
            let Some(breaker) = guard.0.upgrade() else {
                return;
            };
            if !clock_is_real() {
                // Paused or advanced since: the breaker reads the precise clock from now on
                // (the guard clears the tick).
                return;
            }
            breaker.tick()
        };
        tokio::time::sleep_until(next).await;
    }
}

/// The ticker's next wake after `now` (nanoseconds since `base`) for buckets `width`
/// nanoseconds wide (0: no buckets): at most a grain away, and at the next bucket boundary
/// if that comes first.
pub(crate) fn next_wake(base: Instant, now: u64, width: u64) -> Instant {
    let mut next = now.saturating_add(grain(width));
    if let Some(bucket) = now.checked_div(width) {
        next = next.min(bucket.saturating_add(1).saturating_mul(width));
    }
    base.checked_add(Duration::from_nanos(next))
        .unwrap_or_else(|| Instant::now() + Duration::from_nanos(MAX_GRAIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit_breaker::CircuitBreakerLayer;
    use crate::classify::Outcome;
    use crate::policy::CircuitBreakerPolicy;
    use std::future::{Ready, ready};
    use tower::{Layer, service_fn};

    type Svc = crate::circuit_breaker::CircuitBreaker<
        tower::util::ServiceFn<fn(bool) -> Ready<Result<(), ()>>>,
        fn(Result<&(), &()>) -> Outcome,
    >;

    fn service() -> Svc {
        let classify: fn(Result<&(), &()>) -> Outcome = |r| Outcome::fallback(r.is_ok());
        let inner: fn(bool) -> Ready<Result<(), ()>> =
            |ok| ready(if ok { Ok(()) } else { Err(()) });
        CircuitBreakerLayer::new("tick", CircuitBreakerPolicy::default(), classify)
            .layer(service_fn(inner))
    }

    fn multi_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap()
    }

    /// Waits (real time, at most 10 s) until `done`: the ticker notices a dropped breaker at
    /// its next wake, at most [`MAX_GRAIN`] later.
    fn eventually(rt: &tokio::runtime::Runtime, done: impl Fn() -> bool) -> bool {
        for _ in 0..1000 {
            if done() {
                return true;
            }
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        }
        done()
    }

    #[test]
    fn ticker_runs_on_a_multi_thread_runtime_and_ends_with_its_breaker() {
        let rt = multi_thread();
        let svc = {
            let _in = rt.enter();
            service()
        };
        let handle = svc.handle();
        let breaker = Arc::downgrade(handle.core());
        let coarse = handle.core().coarse();
        assert_ne!(coarse.now.load(Ordering::Relaxed), UNAVAILABLE);
        assert_ne!(coarse.bucket.load(Ordering::Relaxed), UNAVAILABLE);
        assert_eq!(rt.metrics().num_alive_tasks(), 1);
        drop(handle);
        drop(svc);
        assert!(
            breaker.upgrade().is_none(),
            "the ticker holds no strong reference"
        );
        assert!(eventually(&rt, || rt.metrics().num_alive_tasks() == 0));
    }

    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn service_with(policy: CircuitBreakerPolicy) -> Svc {
        let classify: fn(Result<&(), &()>) -> Outcome = |r| Outcome::fallback(r.is_ok());
        let inner: fn(bool) -> Ready<Result<(), ()>> =
            |ok| ready(if ok { Ok(()) } else { Err(()) });
        CircuitBreakerLayer::new("tick", policy, classify).layer(service_fn(inner))
    }

    async fn call(svc: &mut Svc, ok: bool) -> Result<(), crate::Error<()>> {
        use tower::{Service, ServiceExt};
        svc.ready().await?.call(ok).await
    }

    fn retry_after(r: Result<(), crate::Error<()>>) -> Duration {
        match r {
            Err(crate::Error::CircuitOpen(open)) => open.retry_after,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    const MS: u64 = 1_000_000;

    /// The ticker's values are set by hand on a paused clock (no ticker runs on a
    /// current-thread runtime), to check what the hot paths make of them.
    #[test]
    fn a_rejection_trusts_the_tick_only_far_from_the_end_of_the_open_period() {
        paused().block_on(async {
            let mut svc = service_with(CircuitBreakerPolicy {
                consecutive_failures: 1,
                open_timeout: Duration::from_secs(5),
                ..CircuitBreakerPolicy::default()
            });
            let handle = svc.handle();
            let coarse = handle.core().coarse();
            let _ = call(&mut svc, false).await;
            // A tick from before the trip: the wait counts from the trip, not from the tick.
            coarse.now.store(0, Ordering::Relaxed);
            tokio::time::advance(Duration::from_millis(4_950)).await;
            assert_eq!(
                retry_after(call(&mut svc, true).await),
                Duration::from_secs(5)
            );
            // A tick 150 ms before the end: judged on it.
            coarse.now.store(4_850 * MS, Ordering::Relaxed);
            assert_eq!(
                retry_after(call(&mut svc, true).await),
                Duration::from_millis(150)
            );
            // Within the last grain: the precise clock (4.95 s) decides.
            coarse.now.store(4_950 * MS, Ordering::Relaxed);
            assert_eq!(
                retry_after(call(&mut svc, true).await),
                Duration::from_millis(50)
            );
            tokio::time::advance(Duration::from_millis(50)).await;
            call(&mut svc, true).await.expect("over: a probe");
            assert_eq!(handle.metrics().rejections, 3);
        });
    }

    #[test]
    fn a_success_goes_to_the_ticks_bucket_and_without_one_to_the_clocks() {
        paused().block_on(async {
            let mut svc = service_with(CircuitBreakerPolicy {
                window: Duration::from_secs(10),
                ..CircuitBreakerPolicy::default()
            });
            let handle = svc.handle();
            let coarse = handle.core().coarse();
            tokio::time::advance(Duration::from_millis(3_500)).await;
            // The ticker is a bucket late: the success counts in bucket 2, not 3.
            coarse.bucket.store(2, Ordering::Relaxed);
            call(&mut svc, true).await.unwrap();
            coarse.bucket.store(UNAVAILABLE, Ordering::Relaxed);
            call(&mut svc, true).await.unwrap();
            assert_eq!(handle.metrics().calls, 2);
            // Bucket 2 leaves the window at 12 s, bucket 3 at 13 s.
            tokio::time::advance(Duration::from_millis(8_500)).await;
            assert_eq!(handle.metrics().calls, 1);
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(handle.metrics().calls, 0);
        });
    }

    #[test]
    fn no_ticker_outside_a_runtime_or_on_a_current_thread_runtime() {
        let svc = service();
        assert_eq!(
            svc.handle().core().coarse().now.load(Ordering::Relaxed),
            UNAVAILABLE
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let svc = {
            let _in = rt.enter();
            service()
        };
        assert_eq!(
            svc.handle().core().coarse().now.load(Ordering::Relaxed),
            UNAVAILABLE
        );
        assert_eq!(rt.metrics().num_alive_tasks(), 0);
    }

    #[test]
    fn the_tick_is_cleared_when_the_runtime_shuts_down() {
        let rt = multi_thread();
        let svc = {
            let _in = rt.enter();
            service()
        };
        let handle = svc.handle();
        assert_ne!(
            handle.core().coarse().now.load(Ordering::Relaxed),
            UNAVAILABLE
        );
        drop(rt);
        let coarse = handle.core().coarse();
        assert_eq!(coarse.now.load(Ordering::Relaxed), UNAVAILABLE);
        assert_eq!(coarse.bucket.load(Ordering::Relaxed), UNAVAILABLE);
    }

    #[test]
    fn grain_is_a_quarter_bucket_within_bounds() {
        assert_eq!(grain(0), MAX_GRAIN);
        assert_eq!(grain(3_000_000_000), MAX_GRAIN);
        assert_eq!(grain(200_000_000), 50_000_000);
        assert_eq!(grain(1_000_000), MIN_GRAIN);
    }

    #[test]
    fn next_wake_stops_at_bucket_boundaries() {
        let base = Instant::now();
        // 1 s buckets: 0.95 s wakes at the boundary, 0.5 s a grain later.
        assert_eq!(
            next_wake(base, 950_000_000, 1_000_000_000),
            base + Duration::from_secs(1)
        );
        assert_eq!(
            next_wake(base, 500_000_000, 1_000_000_000),
            base + Duration::from_millis(600)
        );
        assert_eq!(
            next_wake(base, 0, 0),
            base + Duration::from_nanos(MAX_GRAIN)
        );
    }
}
