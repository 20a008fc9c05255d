//! The retry budget: retries may be at most a share of recent requests plus a small floor,
//! so that retries cannot multiply the load on a dependency that is already failing.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::BudgetPolicy;

const BUCKETS: usize = 10;
/// Requests are counted in this many cache lines, so threads counting at once do not fight
/// over one line.
const STRIPES: usize = 8;

/// A retry budget shared by every clone of a retry layer (clone it to share it further).
///
/// Every request deposits into the budget; every retry withdraws one. Over the last
/// `window`, retries are allowed while `withdrawn < floor(ratio * requests) +
/// min_per_second * window`. A retry is withdrawn when it is decided, before its backoff, so
/// retries waiting in backoff count.
///
/// # Cost and precision
///
/// A request costs one relaxed `fetch_add` on a counter striped by thread (each stripe on its
/// own cache line), and no clock read. Those requests are dated when the budget is next
/// consulted (a retry, or [`remaining`](Self::remaining)): they are credited to the current
/// tenth of the window, all of them if the last consultation was less than a window ago,
/// otherwise `window / elapsed` of them, as if they had arrived evenly since. During an
/// outage, when the budget matters, it is consulted on every failure and the dating is close;
/// after a quiet spell it credits the average rate, never a burst of stale requests.
///
/// No lock, no allocation. Under contention the budget is approximate: concurrent retries
/// may pass the check together, and a count landing in a bucket while it is being recycled
/// can be lost.
#[derive(Clone)]
pub struct RetryBudget {
    state: Arc<State>,
}

struct State {
    /// The limits, changed in place by [`RetryBudget::reconfigure`].
    enabled: AtomicBool,
    base: Instant,
    window_nanos: AtomicU64,
    bucket_nanos: AtomicU64,
    /// The ratio's `f64` bits.
    ratio: AtomicU64,
    reserve: AtomicU64,
    /// Serialises reconfigurations (never taken by requests or retries).
    reconfiguring: Mutex<()>,
    /// Requests not yet dated.
    pending: [Stripe; STRIPES],
    /// When pending requests were last dated, in nanoseconds since `base`.
    dated_at: AtomicU64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Default)]
struct Bucket {
    /// The bucket's epoch plus one (0: never used).
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

thread_local! {
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

impl RetryBudget {
    /// A budget with these limits.
    pub fn new(policy: &BudgetPolicy) -> Self {
        let limits = Limits::of(policy);
        RetryBudget {
            state: Arc::new(State {
                enabled: AtomicBool::new(policy.enabled),
                base: Instant::now(),
                window_nanos: AtomicU64::new(limits.window_nanos),
                bucket_nanos: AtomicU64::new(limits.bucket_nanos),
                ratio: AtomicU64::new(limits.ratio.to_bits()),
                reserve: AtomicU64::new(limits.reserve),
                reconfiguring: Mutex::new(()),
                pending: Default::default(),
                dated_at: AtomicU64::new(0),
                buckets: Default::default(),
            }),
        }
    }

    /// Applies new limits in place, for a policy reload, keeping the requests and retries
    /// already counted: every clone of the budget (so every service of the layer) sees them.
    ///
    /// A new `ratio` or `min_per_second` applies to the counts already in the window. A new
    /// `window` gathers the counts of the old window into the current tenth of the new one,
    /// so they expire together when that tenth leaves the new window (between nine and ten
    /// tenths of it from now), not piecemeal. Disabling stops counting
    /// requests; enabling again starts from the counts kept when it was disabled, as they
    /// expire.
    pub fn reconfigure(&self, policy: &BudgetPolicy) {
        let state = &*self.state;
        let _serial = state
            .reconfiguring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let limits = Limits::of(policy);
        state.ratio.store(limits.ratio.to_bits(), Ordering::Relaxed);
        state.reserve.store(limits.reserve, Ordering::Relaxed);
        if limits.bucket_nanos != state.bucket_nanos.load(Ordering::Relaxed)
            || limits.window_nanos != state.window_nanos.load(Ordering::Relaxed)
        {
            let now = state.since_base(Instant::now());
            let (requests, retries) = state.totals(state.date_pending(now));
            for bucket in &state.buckets {
                bucket.epoch.store(0, Ordering::Release);
                bucket.requests.store(0, Ordering::Release);
                bucket.retries.store(0, Ordering::Release);
            }
            state
                .window_nanos
                .store(limits.window_nanos, Ordering::Release);
            state
                .bucket_nanos
                .store(limits.bucket_nanos, Ordering::Release);
            let bucket = state.bucket(now / limits.bucket_nanos);
            bucket.requests.fetch_add(requests, Ordering::Relaxed);
            bucket.retries.fetch_add(retries, Ordering::Relaxed);
        }
        state.enabled.store(policy.enabled, Ordering::Release);
    }

    /// A budget that never refuses.
    pub fn unlimited() -> Self {
        RetryBudget::new(&BudgetPolicy {
            enabled: false,
            ..BudgetPolicy::default()
        })
    }

    /// Counts one request.
    pub fn deposit(&self) {
        if self.state.enabled.load(Ordering::Relaxed) {
            let stripe = STRIPE.with(|s| *s);
            self.state.pending[stripe].0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if it allows one.
    pub fn try_withdraw(&self) -> bool {
        let state = &*self.state;
        if !state.enabled.load(Ordering::Relaxed) {
            return true;
        }
        let now = state.since_base(Instant::now());
        let epoch = state.date_pending(now);
        let (requests, retries) = state.totals(epoch);
        if retries >= state.allowed(requests) {
            return false;
        }
        state.bucket(epoch).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Retries the budget would allow right now.
    pub fn remaining(&self) -> u64 {
        let state = &*self.state;
        if !state.enabled.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        let now = state.since_base(Instant::now());
        let (requests, retries) = state.totals(state.date_pending(now));
        state.allowed(requests).saturating_sub(retries)
    }
}

/// A policy's limits, in the units the budget counts in.
struct Limits {
    window_nanos: u64,
    bucket_nanos: u64,
    ratio: f64,
    reserve: u64,
}

impl Limits {
    fn of(policy: &BudgetPolicy) -> Self {
        let window = policy.window.max(Duration::from_millis(BUCKETS as u64));
        let window_nanos = nanos(window);
        let reserve = (f64::from(policy.min_per_second) * window.as_secs_f64()).floor();
        Limits {
            window_nanos,
            bucket_nanos: (window_nanos / BUCKETS as u64).max(1),
            ratio: if policy.ratio.is_finite() {
                policy.ratio.max(0.0)
            } else {
                0.0
            },
            reserve: reserve as u64,
        }
    }
}

/// Nanoseconds in `d`, saturating. Not `as_nanos()`: its 128-bit result would make the
/// divisions below slow 128-bit ones.
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

impl State {
    fn since_base(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base))
    }

    fn allowed(&self, requests: u64) -> u64 {
        let ratio = f64::from_bits(self.ratio.load(Ordering::Relaxed));
        ((requests as f64 * ratio).floor() as u64)
            .saturating_add(self.reserve.load(Ordering::Relaxed))
    }

    /// Credits the requests deposited since the last call to the bucket of `now`; returns
    /// that bucket's epoch.
    fn date_pending(&self, now: u64) -> u64 {
        let epoch = now / self.bucket_nanos.load(Ordering::Acquire).max(1);
        let window_nanos = self.window_nanos.load(Ordering::Relaxed);
        let taken = self
            .pending
            .iter()
            .map(|s| s.0.swap(0, Ordering::AcqRel))
            .fold(0u64, u64::saturating_add);
        let since = now.saturating_sub(self.dated_at.swap(now, Ordering::AcqRel));
        if taken > 0 {
            let credited = if since <= window_nanos {
                taken
            } else {
                // Only the share that fell inside the window, as if they came evenly.
                (u128::from(taken) * u128::from(window_nanos) / u128::from(since)) as u64
            };
            self.bucket(epoch)
                .requests
                .fetch_add(credited, Ordering::Relaxed);
        }
        epoch
    }

    /// The bucket of `epoch`, recycled if it still holds an older epoch's counts.
    fn bucket(&self, epoch: u64) -> &Bucket {
        let bucket = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let tag = epoch + 1;
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen < tag
            && bucket
                .epoch
                .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Release);
            bucket.retries.store(0, Ordering::Release);
        }
        bucket
    }

    /// Requests and retries over the buckets still inside the window.
    fn totals(&self, epoch: u64) -> (u64, u64) {
        let oldest = (epoch + 1).saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| {
                let tag = b.epoch.load(Ordering::Acquire);
                tag >= oldest && tag <= epoch + 1
            })
            .fold((0u64, 0u64), |(requests, retries), b| {
                (
                    requests.saturating_add(b.requests.load(Ordering::Acquire)),
                    retries.saturating_add(b.retries.load(Ordering::Acquire)),
                )
            })
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("enabled", &self.state.enabled.load(Ordering::Relaxed))
            .field(
                "ratio",
                &f64::from_bits(self.state.ratio.load(Ordering::Relaxed)),
            )
            .field("reserve", &self.state.reserve.load(Ordering::Relaxed))
            .field("remaining", &self.remaining())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32, window_secs: u64) -> RetryBudget {
        RetryBudget::new(&BudgetPolicy {
            ratio,
            min_per_second,
            window: Duration::from_secs(window_secs),
            ..BudgetPolicy::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_alone_allows_min_per_second_times_window() {
        let b = budget(0.0, 1, 10);
        for _ in 0..10 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        assert_eq!(b.remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_earn_retries_at_the_ratio_and_expire_with_the_window() {
        let b = budget(0.2, 0, 10);
        for _ in 0..20 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 4);
        for _ in 0..4 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        // Nine seconds on, the requests and retries are still in the window...
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(b.remaining(), 0);
        // ...a second later the bucket that held them has left it: refilled by new requests.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_quiet_spell_only_the_average_rate_is_credited() {
        let b = budget(0.2, 0, 10);
        // A thousand requests over 100 s without a retry: about 100 fell in the last 10 s.
        for _ in 0..1000 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(b.remaining(), 20);
        // Requests arriving while the budget is consulted often are credited in full.
        for _ in 0..50 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.remaining(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_so_the_floor_refills() {
        let b = budget(0.0, 1, 10);
        for _ in 0..10 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.remaining(), 10);
        assert!(b.try_withdraw());
    }

    fn limits(ratio: f64, min_per_second: u32, window_secs: u64) -> BudgetPolicy {
        BudgetPolicy {
            ratio,
            min_per_second,
            window: Duration::from_secs(window_secs),
            ..BudgetPolicy::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_ratio_or_floor_applies_to_the_counts_already_kept() {
        let b = budget(0.2, 0, 10);
        for _ in 0..20 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert_eq!(b.remaining(), 2);
        // Through a clone: every service of the layer shares the change.
        b.clone().reconfigure(&limits(0.5, 0, 10));
        assert_eq!(
            b.remaining(),
            8,
            "20 requests at 0.5, 2 retries already taken"
        );
        b.reconfigure(&limits(0.5, 1, 10));
        assert_eq!(b.remaining(), 18, "plus a floor of 1/s over 10 s");
        b.reconfigure(&limits(0.05, 0, 10));
        assert_eq!(b.remaining(), 0, "1 allowed, 2 taken: none left, no wrap");
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_window_keeps_the_counts_until_it_has_passed() {
        let b = budget(0.2, 0, 10);
        for _ in 0..20 {
            b.deposit();
        }
        for _ in 0..4 {
            assert!(b.try_withdraw());
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        // A shorter window: the 20 requests and 4 retries still count...
        b.reconfigure(&limits(0.2, 0, 2));
        for _ in 0..5 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 1, "25 requests at 0.2, 4 retries taken");
        // ...until two seconds have passed, not the eight left of the old window.
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert_eq!(b.remaining(), 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 2, "only the 10 new requests are left");

        // A longer window keeps them as long as its current tenth is in it: reconfigured at
        // 7 s, the tenth is 6-12 s, in the window until 66 s.
        b.reconfigure(&limits(0.2, 0, 60));
        tokio::time::advance(Duration::from_millis(58_900)).await;
        assert_eq!(b.remaining(), 2);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn disabling_lets_every_retry_through_and_enabling_resumes_the_counts() {
        let b = budget(0.0, 1, 10);
        for _ in 0..10 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        b.reconfigure(&BudgetPolicy {
            enabled: false,
            ..limits(0.0, 1, 10)
        });
        for _ in 0..100 {
            assert!(b.try_withdraw());
        }
        b.reconfigure(&limits(0.0, 1, 10));
        assert_eq!(
            b.remaining(),
            0,
            "the 10 retries taken while enabled still count"
        );
        assert!(!b.try_withdraw());
    }

    #[test]
    fn a_disabled_budget_never_refuses() {
        let b = RetryBudget::unlimited();
        for _ in 0..1000 {
            assert!(b.try_withdraw());
        }
    }
}
