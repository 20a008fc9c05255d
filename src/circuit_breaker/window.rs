//! The failure-rate window: what share of the recent calls failed or were slow.
//!
//! Both windows are lock-free and written on every recorded call, so they are built for the
//! success path: one atomic read-modify-write per call in the steady state, and the sums are
//! only read when a failure or a slow call could trip the breaker.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
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

/// The window of one breaker: a time window or a count window, switchable at run time.
///
/// Both kinds live side by side so that a reconfiguration can switch from one to the other
/// without replacing anything a running call may be writing to: the kind is one relaxed load,
/// which costs what the match on an enum's tag cost. The count window's ring is only allocated
/// while it is (or has been) in use.
#[derive(Debug)]
pub(crate) struct Window {
    counting: AtomicBool,
    time: TimeWindow,
    count: CountWindow,
}

impl Window {
    pub(crate) fn new(policy: &CircuitBreakerPolicy) -> Self {
        let counting = policy.window_type == WindowType::Count;
        Window {
            counting: AtomicBool::new(counting),
            time: TimeWindow::new(policy.window),
            count: CountWindow::new(if counting { policy.window_size } else { 0 }),
        }
    }

    #[inline]
    fn counting(&self) -> bool {
        self.counting.load(Ordering::Relaxed)
    }

    /// Whether `policy` asks for this window's kind and size, so that its contents carry over.
    pub(crate) fn same_shape(&self, policy: &CircuitBreakerPolicy) -> bool {
        match policy.window_type {
            WindowType::Time => {
                !self.counting() && self.time.width() == TimeWindow::width_of(policy.window)
            }
            WindowType::Count => {
                self.counting() && self.count.len() == CountWindow::len_of(policy.window_size)
            }
        }
    }

    /// Makes this window the (empty) window `policy` asks for. Calls recording at the same
    /// moment may land in the old shape and be lost, or be counted in the new one: at most one
    /// sample per call in flight.
    pub(crate) fn reshape(&self, policy: &CircuitBreakerPolicy) {
        match policy.window_type {
            WindowType::Time => {
                self.time.set_width(policy.window);
                self.counting.store(false, Ordering::Relaxed);
            }
            WindowType::Count => {
                self.count.resize(policy.window_size);
                self.counting.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The time window's bucket width in nanoseconds; 0 for a count window.
    pub(crate) fn bucket_width(&self) -> u64 {
        if self.counting() {
            0
        } else {
            self.time.width()
        }
    }

    /// Whether recording needs the clock.
    #[inline]
    pub(crate) fn needs_clock(&self) -> bool {
        !self.counting()
    }

    /// Records a plain success: the hot path, which reads the window's kind once. `now` is the
    /// time in nanoseconds since `base` if the caller has read the clock already; else a time
    /// window takes the ticker's bucket (`coarse`, see [`super::tick`]) and reads the clock
    /// only when there is none. A count window never needs the time.
    #[inline]
    pub(crate) fn record_success(
        &self,
        base: Instant,
        coarse: &AtomicU64,
        now: Option<u64>,
        stripe: usize,
    ) {
        if self.counting() {
            self.count.record(Sample::SUCCESS)
        } else {
            let tick = match now {
                Some(now) => now / self.time.width(),
                None => match coarse.load(Ordering::Relaxed) {
                    super::tick::UNAVAILABLE => self.time.bucket_tick(base, crate::clock::now()),
                    tick => tick,
                },
            };
            self.time.record_tick(tick, Sample::SUCCESS, stripe)
        }
    }

    #[inline]
    pub(crate) fn record(&self, now: u64, sample: Sample, stripe: usize) {
        if self.counting() {
            self.count.record(sample)
        } else {
            self.time.record(now, sample, stripe)
        }
    }

    pub(crate) fn totals(&self, now: u64) -> Totals {
        if self.counting() {
            self.count.totals()
        } else {
            self.time.totals(now)
        }
    }

    pub(crate) fn reset(&self) {
        if self.counting() {
            self.count.reset()
        } else {
            self.time.reset()
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
    /// Unique in the process, never 0: the key of the per-thread bucket memory. A new width
    /// takes a new id, so that no thread's memory of the old buckets is used again.
    id: AtomicU64,
    bucket_nanos: AtomicU64,
    stripes: Box<[Stripe]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct Stripe([AtomicU64; TIME_BUCKETS as usize]);

/// The most stripes a time window has; more threads share them.
const MAX_STRIPES: usize = 8;

/// How many stripes (and breaker shards) to make: one per core, at most [`MAX_STRIPES`],
/// rounded down to a power of two so that a stripe is picked with a mask, not a division.
pub(crate) fn stripe_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_STRIPES);
        1 << cores.ilog2()
    })
}

/// The bucket a thread last recorded into, for [`TimeWindow::bucket_tick`].
#[derive(Clone, Copy)]
struct BucketBounds {
    /// The [`TimeWindow`]'s id.
    window: u64,
    from: Instant,
    until: Instant,
    tick: u64,
}

std::thread_local! {
    /// The last bucket this thread computed, and whose; `None` until it records.
    static LAST_BUCKET: Cell<Option<BucketBounds>> = const { Cell::new(None) };
    /// `usize::MAX` until the thread first records.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe number, below [`stripe_count`].
#[inline]
pub(crate) fn thread_stripe() -> usize {
    STRIPE
        .try_with(|s| match s.get() {
            usize::MAX => {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let stripe = NEXT.fetch_add(1, Ordering::Relaxed) & (stripe_count() - 1);
                s.set(stripe);
                stripe
            }
            stripe => stripe,
        })
        .unwrap_or(0)
}

impl TimeWindow {
    pub(crate) fn new(window: Duration) -> Self {
        TimeWindow {
            id: AtomicU64::new(next_window_id()),
            bucket_nanos: AtomicU64::new(Self::width_of(window)),
            stripes: (0..stripe_count())
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// The bucket width of a window of `window`, in nanoseconds.
    pub(crate) fn width_of(window: Duration) -> u64 {
        let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        (window / TIME_BUCKETS).max(1)
    }

    /// The bucket width, in nanoseconds.
    #[inline]
    pub(crate) fn width(&self) -> u64 {
        self.bucket_nanos.load(Ordering::Relaxed)
    }

    /// Empties the window and gives it buckets for a window of `window`.
    pub(crate) fn set_width(&self, window: Duration) {
        self.bucket_nanos
            .store(Self::width_of(window), Ordering::Relaxed);
        self.id.store(next_window_id(), Ordering::Relaxed);
        self.reset();
    }

    /// The tick (bucket number since `base`) that `now` falls in.
    ///
    /// Turning an `Instant` into nanoseconds (a subtraction of two timespecs, a 128-bit
    /// conversion and a division) cost about a third of a closed-state success beside the
    /// clock read itself. Each thread remembers the bounds of the last bucket it computed as
    /// `Instant`s, and its tick, so a call whose clock read falls inside them only compares two
    /// `Instant`s.
    /// The clock is still read on every call, and it is tokio's, so `tokio::time::pause` and
    /// `advance` drive the window exactly as before: a read outside the remembered bucket
    /// (later, or earlier on another runtime's clock) computes its bucket afresh. The memory
    /// is keyed by the window's id, unique in the process (an address could be reused by a
    /// window with another base or width).
    #[inline]
    pub(crate) fn bucket_tick(&self, base: Instant, now: Instant) -> u64 {
        if let Some(b) = LAST_BUCKET.get()
            && b.window == self.id.load(Ordering::Relaxed)
            && b.from <= now
            && now < b.until
        {
            return b.tick;
        }
        self.bucket_tick_slow(base, now)
    }

    #[cold]
    fn bucket_tick_slow(&self, base: Instant, now: Instant) -> u64 {
        // The id is read before the width: a width changed in between gives a new id, and the
        // memory written below under the old id is never used again.
        let id = self.id.load(Ordering::Relaxed);
        let width = self.width();
        let since = now.saturating_duration_since(base);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        let tick = nanos / width;
        let start = tick * width;
        // `start` is at most `nanos`, so `from` is at most `now` and is never `base` moved
        // back; `until` may not exist this far out, and then nothing is remembered.
        if since >= Duration::from_nanos(start)
            && let Some(from) = base.checked_add(Duration::from_nanos(start))
            && let Some(until) = from.checked_add(Duration::from_nanos(width))
        {
            LAST_BUCKET.set(Some(BucketBounds {
                window: id,
                from,
                until,
                tick,
            }));
        }
        tick
    }

    #[inline]
    fn bucket(&self, tick: u64, stripe: usize) -> &AtomicU64 {
        // The stripe count is a power of two: a mask, never a division, and never out of range.
        &self.stripes[stripe & (self.stripes.len() - 1)].0[(tick % TIME_BUCKETS) as usize]
    }

    fn buckets(&self) -> impl Iterator<Item = &AtomicU64> {
        self.stripes.iter().flat_map(|s| s.0.iter())
    }

    /// Records a sample at `now`, in nanoseconds since the breaker's base.
    #[inline]
    pub(crate) fn record(&self, now: u64, sample: Sample, stripe: usize) {
        self.record_tick(now / self.width(), sample, stripe);
    }

    /// Records a sample in bucket `tick`.
    #[inline]
    pub(crate) fn record_tick(&self, tick: u64, sample: Sample, stripe: usize) {
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
            let seen = current >> EPOCH_SHIFT;
            if !same_tick
                && field(current, TOTAL_SHIFT) != 0
                && seen.wrapping_sub(epoch) & EPOCH_MASK < EPOCH_MASK / 2
            {
                // The slot already holds a later tick: this sample is at least a whole window
                // late (a stalled thread, a ticker running late), outside the window already.
                // Starting the bucket afresh would erase newer calls; the late one is dropped.
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
        let tick = now / self.width();
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

/// A new window id: unique in the process, never 0.
fn next_window_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
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

/// The smallest growth segment of a count window's ring.
const MIN_GROWTH: u64 = 64;
/// Enough growth segments, doubling from [`MIN_GROWTH`], for a ring of `COUNT_MASK` calls.
const GROWTH_SEGMENTS: usize = 16;

/// The last `len` calls, in a ring of one byte per call, with running sums.
///
/// A writer takes the next slot with `fetch_add`, and only writes the slot and the sums when
/// the sample it replaces differs (never, in a healthy steady state).
///
/// The ring is the slots built with the window, then growth segments of doubling size, each
/// allocated once when a reconfiguration first lengthens the ring that far, and kept until the
/// window is dropped: a slot never moves or goes away while a call may write to it. A ring
/// never lengthened is only the first slots, and a call pays one comparison for the rest.
#[derive(Debug)]
pub(crate) struct CountWindow {
    next: AtomicU64,
    len: AtomicU64,
    first: Box<[AtomicU8]>,
    growth: [OnceLock<Box<[AtomicU8]>>; GROWTH_SEGMENTS],
    sums: AtomicU64,
}

impl CountWindow {
    /// A ring of `size` calls; 0 allocates nothing (a time window that may switch later).
    pub(crate) fn new(size: u32) -> Self {
        let first = if size == 0 { 0 } else { Self::len_of(size) };
        CountWindow {
            next: AtomicU64::new(0),
            len: AtomicU64::new(first),
            first: (0..first).map(|_| AtomicU8::new(EMPTY)).collect(),
            growth: std::array::from_fn(|_| OnceLock::new()),
            sums: AtomicU64::new(0),
        }
    }

    /// The ring length a `window_size` of `size` gives.
    pub(crate) fn len_of(size: u32) -> u64 {
        u64::from(size.clamp(1, COUNT_MASK as u32))
    }

    /// The ring's length.
    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// The size of the first growth segment.
    fn growth_base(&self) -> u64 {
        (self.first.len() as u64).max(MIN_GROWTH)
    }

    /// The growth segment and the offset in it of ring slot `index`, which is past `first`.
    fn growth_of(&self, index: u64) -> (usize, usize) {
        let base = self.growth_base();
        let past = index - self.first.len() as u64;
        let k = 63 - (past / base + 1).leading_zeros();
        (k as usize, (past - base * ((1 << k) - 1)) as usize)
    }

    /// Empties the ring and makes it `size` calls long, allocating what it lacks.
    pub(crate) fn resize(&self, size: u32) {
        let len = Self::len_of(size);
        if len > self.first.len() as u64 {
            let (last, _) = self.growth_of(len - 1);
            let base = self.growth_base();
            for (k, segment) in self.growth.iter().enumerate().take(last + 1) {
                segment.get_or_init(|| (0..base << k).map(|_| AtomicU8::new(EMPTY)).collect());
            }
        }
        // Empty the longer of the two rings, so a later lengthening finds clean slots.
        let old = self.len();
        self.len.store(len, Ordering::Relaxed);
        self.clear(old.max(len));
    }

    #[inline]
    fn slot(&self, index: u64) -> Option<&AtomicU8> {
        match self.first.get(index as usize) {
            Some(slot) => Some(slot),
            None => self.growth_slot(index),
        }
    }

    #[cold]
    fn growth_slot(&self, index: u64) -> Option<&AtomicU8> {
        let (k, offset) = self.growth_of(index);
        self.growth.get(k)?.get()?.get(offset)
    }

    #[inline]
    pub(crate) fn record(&self, sample: Sample) {
        let len = self.len();
        if len == 0 {
            return;
        }
        let code =
            CALL | if sample.failure { FAILED } else { 0 } | if sample.slow { SLOW } else { 0 };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let Some(slot) = self.slot(index) else {
            return;
        };
        // `fetch_add` gave this slot to this call alone (until the ring wraps under it, which
        // takes `len` calls in flight at once), so a plain load and store is enough, and the
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
        self.clear(self.len());
    }

    fn clear(&self, len: u64) {
        for index in 0..len {
            if let Some(slot) = self.slot(index) {
                slot.store(EMPTY, Ordering::Relaxed);
            }
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
    fn a_late_sample_does_not_erase_the_newer_bucket_in_its_slot() {
        let w = TimeWindow::new(Duration::from_secs(10)); // 1 s buckets
        w.record_tick(12, FAIL, 0);
        w.record_tick(12, OK, 0);
        // Tick 2 shares tick 12's slot: a sample that late is dropped.
        w.record_tick(2, OK, 0);
        let s = 1_000_000_000;
        assert_eq!(w.totals(12 * s).calls, 2);
        assert_eq!(w.totals(12 * s).failures, 1);
        // A slot holding an older tick is started afresh as before.
        w.record_tick(22, OK, 0);
        assert_eq!(w.totals(22 * s).calls, 1);
    }

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
                let exact_tick = exact / w.width();
                // Twice: the second read is served from memory when the first filled it.
                for _ in 0..2 {
                    assert_eq!(w.bucket_tick(base, now), exact_tick, "{ms} ms");
                }
            }
        }
        // Before the base (a clock that is behind): everything is bucket 0, as before.
        assert_eq!(b.bucket_tick(b_base, base), 0);
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
    fn a_lengthened_count_ring_has_a_distinct_slot_for_every_index() {
        for (built, sizes) in [
            (0u32, &[1u32, 64, 65, 1000][..]),
            (3, &[2, 3, 4, 70, 200_000][..]),
            (100, &[50, 1_000_000, 100][..]),
        ] {
            let w = CountWindow::new(built);
            for &size in sizes {
                w.resize(size);
                assert_eq!(w.len(), u64::from(size));
                let mut seen = std::collections::HashSet::new();
                for i in 0..w.len() {
                    let slot = w.slot(i).unwrap_or_else(|| panic!("{built}->{size}: {i}"));
                    assert!(seen.insert(slot as *const AtomicU8), "{built}->{size}: {i}");
                }
                for _ in 0..size + 5 {
                    w.record(FAIL);
                }
                assert_eq!(w.totals().failures, u64::from(size));
            }
        }
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
