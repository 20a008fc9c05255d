//! The failure-rate window: what share of the recent calls failed or were slow.
//!
//! Both windows are lock-free and written on every recorded call, so they are built for the
//! success path: one atomic read-modify-write per call in the steady state, and the sums are
//! only read when a failure or a slow call could trip the breaker.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::{CircuitBreakerPolicy, WindowType};

/// How many buckets a time window is cut into. The window slides one bucket at a time, so a
/// call stays counted for between `9/10` and `10/10` of the window.
pub(crate) const TIME_BUCKETS: u64 = 10;

/// Width of one counter field of a time bucket.
const FIELD_BITS: u32 = 14;
const FIELD_MAX: u64 = (1 << FIELD_BITS) - 1;
/// Past this many calls in one bucket, the three counters are halved: the rates stay right,
/// the bucket never overflows into its neighbour.
const HALVE_AT: u64 = FIELD_MAX - 4096;
const TOTAL_SHIFT: u32 = 0;
const FAIL_SHIFT: u32 = FIELD_BITS;
const SLOW_SHIFT: u32 = 2 * FIELD_BITS;
const EPOCH_SHIFT: u32 = 3 * FIELD_BITS;
/// The bucket's tick, modulo 2^22: a bucket left untouched for 2^22 ticks (48 days with one
/// second buckets) could be mistaken for a current one.
const EPOCH_MASK: u64 = (1 << (64 - EPOCH_SHIFT)) - 1;

/// What one recorded call was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

impl Sample {
    pub(crate) const SUCCESS: Sample = Sample {
        failure: false,
        slow: false,
    };
}

/// The sums over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Totals {
    pub(crate) fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.slow as f64 / self.calls as f64
        }
    }
}

#[derive(Debug)]
pub(crate) enum Window {
    Time(TimeWindow),
    Count(CountWindow),
}

impl Window {
    pub(crate) fn new(policy: &CircuitBreakerPolicy) -> Self {
        match policy.window_type {
            WindowType::Time => Window::Time(TimeWindow::new(policy.window)),
            WindowType::Count => Window::Count(CountWindow::new(policy.window_size)),
        }
    }

    /// Whether recording needs the clock.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }

    /// A time to record a success at `now` with: `now` in nanoseconds since `base`, or the
    /// start of the bucket `now` falls in, which records into the same bucket. Only a time
    /// window needs it; see [`TimeWindow::bucket_time`].
    #[inline]
    pub(crate) fn record_time(&self, base: Instant, now: Instant) -> u64 {
        match self {
            Window::Time(w) => w.bucket_time(base, now),
            Window::Count(_) => 0,
        }
    }

    #[inline]
    pub(crate) fn record(&self, now: u64, sample: Sample, stripe: usize) {
        match self {
            Window::Time(w) => w.record(now, sample, stripe),
            Window::Count(w) => w.record(sample),
        }
    }

    pub(crate) fn totals(&self, now: u64) -> Totals {
        match self {
            Window::Time(w) => w.totals(now),
            Window::Count(w) => w.totals(),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Time(w) => w.reset(),
            Window::Count(w) => w.reset(),
        }
    }
}

/// The calls of the last `window`, in [`TIME_BUCKETS`] buckets keyed by coarse ticks.
///
/// Each bucket is one `AtomicU64`: `epoch (22 bits) | slow | failures | calls (14 bits each)`.
/// A writer that finds a bucket of an older tick starts it afresh with a compare-and-swap; a
/// writer that finds the current tick adds with one `fetch_add`.
///
/// The buckets are striped: each thread writes the buckets of its own stripe (one cache line
/// each), so threads recording successes at once do not fight over one line; reading sums all
/// stripes, which only failures and slow calls do.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    /// Unique in the process, never 0: the key of the per-thread bucket memory.
    id: u64,
    bucket_nanos: u64,
    stripes: Box<[Stripe]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct Stripe([AtomicU64; TIME_BUCKETS as usize]);

/// The most stripes a time window has; more threads share them.
const MAX_STRIPES: usize = 8;

/// How many stripes (and breaker shards) to make: one per core, at most [`MAX_STRIPES`].
pub(crate) fn stripe_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_STRIPES)
    })
}

/// The bounds of one time bucket, for [`TimeWindow::bucket_time`].
#[derive(Clone, Copy)]
struct BucketBounds {
    /// The [`TimeWindow`]'s id; 0 for none.
    window: u64,
    from: Instant,
    until: Instant,
    start: u64,
}

std::thread_local! {
    /// The last bucket this thread computed, and whose.
    static LAST_BUCKET: Cell<BucketBounds> = Cell::new(BucketBounds {
        window: 0,
        from: Instant::now(),
        until: Instant::now(),
        start: 0,
    });
    /// `usize::MAX` until the thread first records.
    static STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// This thread's stripe number (take it modulo the stripe count).
#[inline]
pub(crate) fn thread_stripe() -> usize {
    STRIPE
        .try_with(|s| match s.get() {
            usize::MAX => {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let stripe = NEXT.fetch_add(1, Ordering::Relaxed) % MAX_STRIPES;
                s.set(stripe);
                stripe
            }
            stripe => stripe,
        })
        .unwrap_or(0)
}

impl TimeWindow {
    pub(crate) fn new(window: Duration) -> Self {
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        TimeWindow {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            bucket_nanos: (window / TIME_BUCKETS).max(1),
            stripes: (0..stripe_count())
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// The start of the bucket that `now` falls in, in nanoseconds since `base`.
    ///
    /// Turning an `Instant` into nanoseconds (a subtraction of two timespecs, a 128-bit
    /// conversion and a division) cost about a third of a closed-state success beside the
    /// clock read itself. Each thread remembers the bounds of the last bucket it computed as
    /// `Instant`s, so a call whose clock read falls inside them only compares two `Instant`s.
    /// The clock is still read on every call, and it is tokio's, so `tokio::time::pause` and
    /// `advance` drive the window exactly as before: a read outside the remembered bucket
    /// (later, or earlier on another runtime's clock) computes its bucket afresh. The memory
    /// is keyed by the window's id, unique in the process (an address could be reused by a
    /// window with another base or width).
    #[inline]
    pub(crate) fn bucket_time(&self, base: Instant, now: Instant) -> u64 {
        let b = LAST_BUCKET.get();
        if b.window == self.id && b.from <= now && now < b.until {
            return b.start;
        }
        self.bucket_time_slow(base, now)
    }

    #[cold]
    fn bucket_time_slow(&self, base: Instant, now: Instant) -> u64 {
        let since = now.saturating_duration_since(base);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        let start = nanos / self.bucket_nanos * self.bucket_nanos;
        // `start` is at most `nanos`, so `from` is at most `now` and is never `base` moved
        // back; `until` may not exist this far out, and then nothing is remembered.
        if since >= Duration::from_nanos(start)
            && let Some(from) = base.checked_add(Duration::from_nanos(start))
            && let Some(until) = from.checked_add(Duration::from_nanos(self.bucket_nanos))
        {
            LAST_BUCKET.set(BucketBounds {
                window: self.id,
                from,
                until,
                start,
            });
        }
        start
    }

    fn bucket(&self, tick: u64, stripe: usize) -> &AtomicU64 {
        &self.stripes[stripe % self.stripes.len()].0[(tick % TIME_BUCKETS) as usize]
    }

    fn buckets(&self) -> impl Iterator<Item = &AtomicU64> {
        self.stripes.iter().flat_map(|s| s.0.iter())
    }

    #[inline]
    pub(crate) fn record(&self, now: u64, sample: Sample, stripe: usize) {
        let tick = now / self.bucket_nanos;
        let epoch = tick & EPOCH_MASK;
        let add = (1 << TOTAL_SHIFT)
            | (u64::from(sample.failure) << FAIL_SHIFT)
            | (u64::from(sample.slow) << SLOW_SHIFT);
        let bucket = self.bucket(tick, stripe);
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let same_tick = current >> EPOCH_SHIFT == epoch;
            if same_tick && field(current, TOTAL_SHIFT) < HALVE_AT {
                // The common case: one uncontended-or-not add. A bucket that rolls over between
                // the load and the add takes this call into the new tick, which is when it ended.
                bucket.fetch_add(add, Ordering::Relaxed);
                return;
            }
            let next = if same_tick {
                let halve = |shift| (field(current, shift) / 2) << shift;
                (epoch << EPOCH_SHIFT) | halve(TOTAL_SHIFT) | halve(FAIL_SHIFT) | halve(SLOW_SHIFT)
            } else {
                epoch << EPOCH_SHIFT
            } + add;
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    pub(crate) fn totals(&self, now: u64) -> Totals {
        let tick = now / self.bucket_nanos;
        let epoch = tick & EPOCH_MASK;
        let mut totals = Totals::default();
        for bucket in self.buckets() {
            let value = bucket.load(Ordering::Relaxed);
            let age = epoch.wrapping_sub(value >> EPOCH_SHIFT) & EPOCH_MASK;
            if age < TIME_BUCKETS {
                totals.calls += field(value, TOTAL_SHIFT);
                totals.failures += field(value, FAIL_SHIFT);
                totals.slow += field(value, SLOW_SHIFT);
            }
        }
        totals
    }

    pub(crate) fn reset(&self) {
        for bucket in self.buckets() {
            // Epoch 0 with no calls: an empty bucket whatever tick it is read at.
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

fn field(value: u64, shift: u32) -> u64 {
    (value >> shift) & FIELD_MAX
}

/// Sample codes in the count window's ring.
const EMPTY: u8 = 0;
const CALL: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

/// Count-window sums, packed `slow | failures | calls` at 21 bits each (the ring is at most
/// 1,000,000 calls long, under 2^21).
const COUNT_BITS: u32 = 21;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// The last `size` calls, in a ring of one byte per call, with running sums.
///
/// A writer takes the next slot with `fetch_add`, and only writes the slot and the sums when
/// the sample it replaces differs (never, in a healthy steady state).
#[derive(Debug)]
pub(crate) struct CountWindow {
    next: AtomicU64,
    slots: Box<[AtomicU8]>,
    sums: AtomicU64,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = size.clamp(1, COUNT_MASK as u32);
        CountWindow {
            next: AtomicU64::new(0),
            slots: (0..size).map(|_| AtomicU8::new(EMPTY)).collect(),
            sums: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, sample: Sample) {
        let code =
            CALL | if sample.failure { FAILED } else { 0 } | if sample.slow { SLOW } else { 0 };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let slot = &self.slots[index as usize];
        // `fetch_add` gave this slot to this call alone (until the ring wraps under it, which
        // takes `size` calls in flight at once), so a plain load and store is enough, and the
        // healthy steady state (a success replacing a success) writes nothing at all.
        let old = slot.load(Ordering::Relaxed);
        if old != code {
            slot.store(code, Ordering::Relaxed);
            let delta = sums_of(code).wrapping_sub(sums_of(old));
            self.sums.fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub(crate) fn totals(&self) -> Totals {
        let sums = self.sums.load(Ordering::Relaxed);
        Totals {
            calls: sums & COUNT_MASK,
            failures: (sums >> COUNT_BITS) & COUNT_MASK,
            slow: (sums >> (2 * COUNT_BITS)) & COUNT_MASK,
        }
    }

    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(EMPTY, Ordering::Relaxed);
        }
        self.sums.store(0, Ordering::Relaxed);
        self.next.store(0, Ordering::Relaxed);
    }
}

fn sums_of(code: u8) -> u64 {
    u64::from(code & CALL != 0)
        | u64::from(code & FAILED != 0) << COUNT_BITS
        | u64::from(code & SLOW != 0) << (2 * COUNT_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };

    #[test]
    fn time_window_forgets_buckets_older_than_the_window() {
        let w = TimeWindow::new(Duration::from_secs(10)); // 1 s buckets
        let s = 1_000_000_000;
        w.record(0, FAIL, 0);
        w.record(s / 2, OK, 0);
        assert_eq!(w.totals(s / 2).calls, 2);
        w.record(5 * s, FAIL, 0);
        assert_eq!(
            w.totals(9 * s + s / 2),
            Totals {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        // Tick 10 reuses the slot of tick 0 and no longer sees it.
        assert_eq!(
            w.totals(10 * s),
            Totals {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        w.record(10 * s, OK, 0);
        assert_eq!(w.totals(10 * s).calls, 2);
        assert_eq!(w.totals(40 * s).calls, 0);
    }

    #[test]
    fn remembered_bucket_gives_the_same_bucket_as_the_arithmetic() {
        // Two windows of different widths and bases, read alternately on one thread and at
        // instants on both sides of bucket edges, later and earlier: the per-thread memory
        // must never hand one window's bucket to the other, nor a stale one.
        let base = Instant::now();
        let a = TimeWindow::new(Duration::from_secs(10)); // 1 s buckets
        let b = TimeWindow::new(Duration::from_millis(70)); // 7 ms buckets
        let b_base = base + Duration::from_millis(3);
        let offsets_ms = [
            0u64, 1, 999, 1000, 1001, 6, 7, 13, 14, 2500, 999, 0, 7000, 20,
        ];
        for ms in offsets_ms {
            let now = base + Duration::from_millis(ms) + Duration::from_nanos(3);
            for (w, base) in [(&a, base), (&b, b_base)] {
                let exact = u64::try_from(now.saturating_duration_since(base).as_nanos()).unwrap();
                let exact_tick = exact / w.bucket_nanos;
                // Twice: the second read is served from memory when the first filled it.
                for _ in 0..2 {
                    assert_eq!(
                        w.bucket_time(base, now) / w.bucket_nanos,
                        exact_tick,
                        "{ms} ms"
                    );
                }
            }
        }
        // Before the base (a clock that is behind): everything is bucket 0, as before.
        assert_eq!(b.bucket_time(b_base, base), 0);
    }

    #[test]
    fn time_bucket_halves_instead_of_overflowing() {
        let w = TimeWindow::new(Duration::from_secs(10));
        for i in 0..40_000u64 {
            w.record(0, if i % 4 == 0 { FAIL } else { OK }, 0);
        }
        let t = w.totals(0);
        assert!(t.calls > 6_000 && t.calls <= FIELD_MAX, "{t:?}");
        assert!((t.failure_rate() - 0.25).abs() < 0.01, "{t:?}");
    }

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let w = CountWindow::new(3);
        w.record(FAIL);
        w.record(FAIL);
        w.record(OK);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        w.record(OK);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        w.record(Sample {
            failure: false,
            slow: true,
        });
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.totals(), Totals::default());
    }
}
