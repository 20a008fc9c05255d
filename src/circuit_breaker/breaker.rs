//! The state machine shared by every clone of a breaker's service.
//!
//! # The state word
//!
//! Everything a call needs to be admitted or recorded sits in one `AtomicU64`:
//!
//! ```text
//!  63            32 31                    4  3  2  1  0
//! +---------------+------------------------+-----+-----+
//! |  generation   |         count          | mode|state|
//! +---------------+------------------------+-----+-----+
//! ```
//!
//! `count` is the run of consecutive failures while closed, and `successes (14 bits) |
//! probes in flight (14 bits)` while half-open. The generation grows on every state change: a
//! call remembers the generation that admitted it, and its outcome is dropped if the breaker has
//! moved on since (a slow call admitted while closed must not be taken for a probe). Probe slots
//! live in the same word, so taking, releasing and counting a probe is one compare-and-swap that
//! fails if the state changed: a slot can never leak into another half-open period.
//!
//! The closed, normal-mode success path is one load of this word, one add in the window and no
//! lock. State changes take a mutex (never held across an await) so that the open deadline, the
//! growth streak and the events are written by one thread at a time, in order.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::events::{CircuitState, OperatorMode, Transition, TransitionReason};
use super::metrics::BreakerMetrics;
use super::settings::{PROBE_LIMIT, Settings, nanos};
use super::tick::{self, Coarse, UNAVAILABLE};
use super::window::{self, Sample, Totals, Window};
use crate::classify::Outcome;
use crate::error::BreakerName;
use crate::policy::CircuitBreakerPolicy;

const STATE_MASK: u64 = 0b11;
const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const MODE_SHIFT: u32 = 2;
const MODE_MASK: u64 = 0b11 << MODE_SHIFT;
/// Closed, normal mode: the only value of the low bits the fast path accepts.
const FAST_MASK: u64 = STATE_MASK | MODE_MASK;
const COUNT_SHIFT: u32 = 4;
const COUNT_MASK: u64 = ((1 << 28) - 1) << COUNT_SHIFT;
const PROBE_ONE: u64 = 1 << COUNT_SHIFT;
const PROBE_BITS: u32 = 14;
const SUCCESS_ONE: u64 = 1 << (COUNT_SHIFT + PROBE_BITS);
const GEN_SHIFT: u32 = 32;

fn state_of(word: u64) -> u64 {
    word & STATE_MASK
}

fn gen_of(word: u64) -> u32 {
    (word >> GEN_SHIFT) as u32
}

fn count_of(word: u64) -> u32 {
    ((word & COUNT_MASK) >> COUNT_SHIFT) as u32
}

fn probes_of(word: u64) -> u32 {
    count_of(word) & PROBE_LIMIT
}

fn successes_of(word: u64) -> u32 {
    count_of(word) >> PROBE_BITS
}

fn mode_of(word: u64) -> OperatorMode {
    OperatorMode::from_bits((word & MODE_MASK) >> MODE_SHIFT)
}

/// A word in `state` of the next generation, keeping the mode, with a zero count.
fn next_word(word: u64, state: u64) -> u64 {
    (u64::from(gen_of(word).wrapping_add(1)) << GEN_SHIFT) | (word & MODE_MASK) | state
}

/// The part of the state only transitions touch.
#[derive(Debug)]
struct Slow {
    /// Trips since the last stable close: the exponent of the open-time growth.
    streak: u32,
    closed_at: u64,
    rng: u64,
    /// The `enabled` of the policy last applied, to tell a policy that turns the breaker off or
    /// on from one that leaves an operator's mode alone.
    enabled: bool,
}

pub(crate) type Callback = Arc<dyn Fn(&Transition) + Send + Sync>;

/// Where transitions go.
#[derive(Clone)]
pub(crate) struct Sinks {
    pub(crate) events: broadcast::Sender<Transition>,
    pub(crate) callback: Option<Callback>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("subscribers", &self.events.receiver_count())
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

/// Keeps the hot word on its own cache line, away from the `Arc` counts and the cold fields.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

/// One breaker: its rules, its state word, its window.
#[derive(Debug)]
pub(crate) struct Breaker {
    word: Padded<AtomicU64>,
    /// The ticker's time (see [`tick`]): read by every success and rejection, written a few
    /// times a second, so on a line of its own.
    coarse: Padded<Coarse>,
    window: Window,
    pub(crate) settings: Settings,
    pub(crate) name: Arc<str>,
    /// The name as a rejection carries it: held in place when short, so a rejection's copy
    /// and its drop touch no reference count.
    pub(crate) reject_name: BreakerName,
    base: Instant,
    open_until: AtomicU64,
    /// When the current open period began: a rejection judged on the ticker's time reports
    /// the wait from the later of the two, so never more than the open time.
    opened_at: AtomicU64,
    half_open_deadline: AtomicU64,
    rejections: AtomicU64,
    shadow_rejections: AtomicU64,
    trips: AtomicU64,
    /// When a keyed registry last handed this breaker out, in nanoseconds since `base`.
    pub(crate) last_used: AtomicU64,
    slow: Mutex<Slow>,
    sinks: Sinks,
    metrics: BreakerMetrics,
}

/// What `admit` decided for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: record the outcome against this generation.
    Closed(u32),
    /// A half-open probe holding one slot of this generation.
    Probe(u32),
    /// Pass without recording: disabled, or a metrics-only breaker that would have rejected.
    Pass,
    /// Rejected; the next probe is this far away.
    Reject(Duration),
}

/// How one finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    Ignored,
}

/// A snapshot of a breaker for its handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    pub(crate) state: CircuitState,
    pub(crate) mode: OperatorMode,
    pub(crate) totals: Totals,
    pub(crate) consecutive_failures: u32,
    pub(crate) probes_in_flight: u32,
    pub(crate) probe_successes: u32,
    pub(crate) open_remaining: Option<Duration>,
    pub(crate) rejections: u64,
    pub(crate) shadow_rejections: u64,
    pub(crate) trips: u64,
}

impl Breaker {
    pub(crate) fn new(
        name: Arc<str>,
        settings: Settings,
        window: Window,
        mode: OperatorMode,
        enabled: bool,
        sinks: Sinks,
    ) -> Self {
        let base = Instant::now();
        let seed = {
            // Different breakers jitter differently; no randomness crate for one number.
            let addr = &base as *const Instant as u64;
            let t = nanos(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
            );
            splitmix(addr ^ t ^ name.len() as u64) | 1
        };
        Breaker {
            metrics: BreakerMetrics::new(&name, mode),
            word: Padded(AtomicU64::new(mode.bits() << MODE_SHIFT)),
            coarse: Padded(Coarse::unavailable()),
            window,
            settings,
            reject_name: BreakerName::from(&name),
            name,
            base,
            open_until: AtomicU64::new(0),
            opened_at: AtomicU64::new(0),
            half_open_deadline: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
            shadow_rejections: AtomicU64::new(0),
            trips: AtomicU64::new(0),
            last_used: AtomicU64::new(0),
            slow: Mutex::new(Slow {
                streak: 0,
                closed_at: 0,
                rng: seed,
                enabled,
            }),
            sinks,
        }
    }

    /// Nanoseconds since this breaker was built, on tokio's (pausable) clock (the stack's
    /// shared read when inside it: see `crate::clock`).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        nanos(crate::clock::now().saturating_duration_since(self.base))
    }

    /// The ticker's time.
    pub(crate) fn coarse(&self) -> &Coarse {
        &self.coarse.0
    }

    /// The ticker's work: reads the clock, stores the time and the bucket for the hot paths,
    /// and says when to do it again. Under the transition lock, so that a reconfiguration
    /// changing the bucket width cannot be overwritten by a bucket of the old width.
    pub(crate) fn tick(&self) -> Instant {
        let _slow = self.lock();
        let now = self.now().min(UNAVAILABLE - 1);
        let width = self.window.bucket_width();
        let bucket = now.checked_div(width).unwrap_or(UNAVAILABLE);
        self.coarse.0.bucket.store(bucket, Ordering::Relaxed);
        self.coarse.0.now.store(now, Ordering::Relaxed);
        tick::next_wake(self.base, now, width)
    }

    #[inline]
    pub(crate) fn needs_start_time(&self) -> bool {
        self.settings.slow_call().is_some()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.sinks.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Slow> {
        // Nothing panics while holding it; recover the data rather than spread a poison.
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides whether one call may go ahead.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let word = self.word.0.load(Ordering::Acquire);
        if word & FAST_MASK == CLOSED {
            return Admission::Closed(gen_of(word));
        }
        if word & FAST_MASK == OPEN
            && let Some(wait) = self.clearly_open()
        {
            // Open, normal mode, and clearly so: the rejection's own fast path.
            self.rejections.fetch_add(1, Ordering::Relaxed);
            self.metrics.rejected();
            return Admission::Reject(wait);
        }
        self.admit_slow(word)
    }

    /// The wait until the next probe if, by the ticker's time, the open period is clearly not
    /// over (more than the ticker's grain is left); `None` near its end or without a ticker,
    /// when the precise clock must decide. The wait is counted from the ticker's time or the
    /// start of the period, whichever is later: at most the grain too long, never longer than
    /// the open time.
    #[inline]
    fn clearly_open(&self) -> Option<Duration> {
        let until = self.open_until.load(Ordering::Acquire);
        let coarse = self.coarse.0.now.load(Ordering::Relaxed);
        if coarse.saturating_add(tick::MAX_GRAIN) < until {
            let since = coarse.max(self.opened_at.load(Ordering::Relaxed));
            Some(Duration::from_nanos(until.saturating_sub(since)))
        } else {
            None
        }
    }

    #[cold]
    fn admit_slow(&self, mut word: u64) -> Admission {
        loop {
            let shadow = match mode_of(word) {
                OperatorMode::Disabled => return Admission::Pass,
                OperatorMode::ForcedOpen => {
                    self.rejections.fetch_add(1, Ordering::Relaxed);
                    self.metrics.rejected();
                    return Admission::Reject(self.settings.open_timeout());
                }
                OperatorMode::MetricsOnly => true,
                OperatorMode::Normal => false,
            };
            match state_of(word) {
                CLOSED => return Admission::Closed(gen_of(word)),
                OPEN => {
                    // Clearly not over by the ticker's time: no clock read. Near the end (or
                    // without a ticker) the precise clock decides, so the period ends when it
                    // did before, give or take the ticker's lag.
                    if let Some(wait) = self.clearly_open() {
                        return self.reject(shadow, wait);
                    }
                    let until = self.open_until.load(Ordering::Acquire);
                    let now = self.now();
                    if now < until {
                        return self.reject(shadow, until - now);
                    }
                    if let Some(generation) = self.to_half_open(word, now) {
                        return Admission::Probe(generation);
                    }
                }
                _ => {
                    let now = self.now();
                    let deadline = self.half_open_deadline.load(Ordering::Acquire);
                    if now >= deadline {
                        self.reopen(gen_of(word), now, TransitionReason::HalfOpenTimedOut);
                    } else if probes_of(word) >= self.settings.half_open_max_requests() {
                        return self.reject(shadow, Duration::from_nanos(deadline - now));
                    } else if self
                        .word
                        .0
                        .compare_exchange(
                            word,
                            word + PROBE_ONE,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return Admission::Probe(gen_of(word));
                    }
                }
            }
            word = self.word.0.load(Ordering::Acquire);
        }
    }

    fn reject(&self, shadow: bool, after: impl Into<DurationNanos>) -> Admission {
        if shadow {
            self.shadow_rejections.fetch_add(1, Ordering::Relaxed);
            Admission::Pass
        } else {
            self.rejections.fetch_add(1, Ordering::Relaxed);
            self.metrics.rejected();
            Admission::Reject(after.into().0)
        }
    }

    /// When a call would next be admitted, for `poll_ready` in pending-while-open mode:
    /// `None` if now.
    pub(crate) fn closed_for(&self) -> Option<Duration> {
        let word = self.word.0.load(Ordering::Acquire);
        match mode_of(word) {
            OperatorMode::ForcedOpen => Some(self.settings.open_timeout()),
            OperatorMode::Normal if state_of(word) == OPEN => {
                let until = self.open_until.load(Ordering::Acquire);
                let now = self.now();
                (now < until).then(|| Duration::from_nanos(until - now))
            }
            _ => None,
        }
    }

    /// Records the outcome of a call admitted as [`Admission::Closed`].
    #[inline]
    pub(crate) fn record_closed(
        &self,
        stripe: usize,
        generation: u32,
        verdict: Verdict,
        slow: bool,
        now: Option<u64>,
    ) {
        if verdict != Verdict::Success || slow {
            return self.record_closed_slow(stripe, generation, verdict, slow, now);
        }
        // The hot path: a plain success adds to the window and, only if a failure run was
        // going, ends it.
        let word = self.word.0.load(Ordering::Acquire);
        if gen_of(word) != generation {
            return;
        }
        // A success only needs to know its bucket: the window reads the clock only if it is a
        // time window, and then only to find the bucket.
        self.window
            .record_success(self.base, &self.coarse.0.bucket, now, stripe);
        if count_of(word) != 0 {
            self.clear_consecutive(word, generation);
        }
    }

    #[cold]
    fn record_closed_slow(
        &self,
        stripe: usize,
        generation: u32,
        verdict: Verdict,
        slow: bool,
        now: Option<u64>,
    ) {
        if verdict == Verdict::Ignored {
            return;
        }
        let word = self.word.0.load(Ordering::Acquire);
        // A call admitted before the last state change says nothing about this period. (The
        // check and the add below are not one atomic step: a call stalled between them for a
        // whole open time and half-open period could still add one sample to a fresh window.)
        if gen_of(word) != generation {
            return;
        }
        let failure = verdict == Verdict::Failure;
        let now = match now {
            Some(now) => now,
            None if self.window.needs_clock() => self.now(),
            None => 0,
        };
        self.window.record(now, Sample { failure, slow }, stripe);
        if !failure {
            if count_of(word) != 0 {
                self.clear_consecutive(word, generation);
            }
            if slow {
                self.evaluate(generation, now, false, true);
            }
            return;
        }
        let run = self.add_consecutive(word, generation);
        let threshold = self.settings.consecutive_failures();
        if threshold > 0 && run >= threshold {
            let now = if now == 0 { self.now() } else { now };
            self.trip(
                generation,
                now,
                TransitionReason::ConsecutiveFailures { count: run },
            );
            return;
        }
        self.evaluate(generation, now, true, slow);
    }

    fn clear_consecutive(&self, mut word: u64, generation: u32) {
        while gen_of(word) == generation && state_of(word) == CLOSED && count_of(word) != 0 {
            match self.word.0.compare_exchange_weak(
                word,
                word & !COUNT_MASK,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(seen) => word = seen,
            }
        }
    }

    /// Adds one to the failure run; the run after, or 0 if the breaker moved on.
    fn add_consecutive(&self, mut word: u64, generation: u32) -> u32 {
        loop {
            if gen_of(word) != generation || state_of(word) != CLOSED {
                return 0;
            }
            let run = count_of(word);
            if u64::from(run) << COUNT_SHIFT == COUNT_MASK {
                return run;
            }
            match self.word.0.compare_exchange_weak(
                word,
                word + PROBE_ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return run + 1,
                Err(seen) => word = seen,
            }
        }
    }

    /// Checks the rate rules after a failure or a slow call.
    #[cold]
    fn evaluate(&self, generation: u32, now: u64, failure: bool, slow: bool) {
        let now = if self.window.needs_clock() {
            now
        } else {
            self.now()
        };
        let totals = self.window.totals(now);
        if totals.calls < self.settings.minimum_calls() {
            return;
        }
        if failure && totals.failure_rate() >= self.settings.failure_rate() {
            let reason = TransitionReason::FailureRate {
                rate: totals.failure_rate(),
                calls: totals.calls,
            };
            self.trip(generation, now, reason);
        } else if slow
            && self.settings.slow_call().is_some()
            && totals.slow_rate() >= self.settings.slow_call_rate()
        {
            let reason = TransitionReason::SlowCallRate {
                rate: totals.slow_rate(),
                calls: totals.calls,
            };
            self.trip(generation, now, reason);
        }
    }

    /// Records the outcome of a probe.
    pub(crate) fn record_probe(&self, generation: u32, verdict: Verdict, slow: bool) {
        let mut word = self.word.0.load(Ordering::Acquire);
        if gen_of(word) != generation || state_of(word) != HALF_OPEN {
            return;
        }
        let now = self.now();
        if now >= self.half_open_deadline.load(Ordering::Acquire) {
            self.reopen(generation, now, TransitionReason::HalfOpenTimedOut);
            return;
        }
        let slow = slow && self.settings.slow_call().is_some();
        if verdict == Verdict::Failure || (verdict == Verdict::Success && slow) {
            self.reopen(generation, now, TransitionReason::ProbeFailed);
            return;
        }
        loop {
            if gen_of(word) != generation || state_of(word) != HALF_OPEN {
                return;
            }
            let mut next = word.saturating_sub(if probes_of(word) > 0 { PROBE_ONE } else { 0 });
            if verdict == Verdict::Success && successes_of(word) < PROBE_LIMIT {
                next += SUCCESS_ONE;
            }
            match self
                .word
                .0
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if verdict == Verdict::Success
                        && successes_of(next) >= self.settings.success_threshold()
                    {
                        self.close(generation, now);
                    }
                    return;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Gives back a probe slot whose call was dropped before it finished.
    pub(crate) fn release_probe(&self, generation: u32) {
        let mut word = self.word.0.load(Ordering::Acquire);
        while gen_of(word) == generation && state_of(word) == HALF_OPEN && probes_of(word) > 0 {
            match self.word.0.compare_exchange_weak(
                word,
                word - PROBE_ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(seen) => word = seen,
            }
        }
    }

    /// Moves `word`'s generation to `to` under the transition lock; `false` if the state or
    /// generation changed first.
    fn swap_state(&self, generation: u32, from: u64, to: u64, count: u64) -> Option<u64> {
        let mut word = self.word.0.load(Ordering::Acquire);
        loop {
            if gen_of(word) != generation || state_of(word) != from {
                return None;
            }
            let next = next_word(word, to) | count;
            match self
                .word
                .0
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(next),
                Err(seen) => word = seen,
            }
        }
    }

    fn open_for(&self, slow: &mut Slow) -> Duration {
        let s = &self.settings;
        let open_max = s.open_max();
        let grown =
            s.open_timeout().as_secs_f64() * s.open_multiplier().powi(slow.streak.min(1024) as i32);
        let mut open = if grown.is_finite() && grown < open_max.as_secs_f64() {
            Duration::from_secs_f64(grown)
        } else {
            open_max
        };
        let jitter = s.open_jitter();
        if jitter > 0.0 {
            slow.rng = splitmix(slow.rng);
            let unit = (slow.rng >> 11) as f64 / (1u64 << 53) as f64;
            open = open.mul_f64(1.0 - jitter * unit);
        }
        slow.streak = slow.streak.saturating_add(1);
        open
    }

    fn trip(&self, generation: u32, now: u64, reason: TransitionReason) {
        let mut slow = self.lock();
        let word = self.word.0.load(Ordering::Acquire);
        if gen_of(word) != generation || state_of(word) != CLOSED {
            return;
        }
        if now.saturating_sub(slow.closed_at) >= self.settings.stable_after() {
            slow.streak = 0;
        }
        self.open(&mut slow, generation, CLOSED, now, reason);
    }

    fn reopen(&self, generation: u32, now: u64, reason: TransitionReason) {
        let mut slow = self.lock();
        self.open(&mut slow, generation, HALF_OPEN, now, reason);
    }

    fn open(
        &self,
        slow: &mut Slow,
        generation: u32,
        from: u64,
        now: u64,
        reason: TransitionReason,
    ) {
        let word = self.word.0.load(Ordering::Acquire);
        if gen_of(word) != generation || state_of(word) != from {
            return;
        }
        let open = self.open_for(slow);
        self.opened_at.store(now, Ordering::Relaxed);
        self.open_until
            .store(now.saturating_add(nanos(open)), Ordering::Release);
        if self.swap_state(generation, from, OPEN, 0).is_some() {
            self.trips.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                breaker = %self.name,
                from = state_name(from),
                reason = ?reason,
                open_for = ?open,
                "circuit breaker opened"
            );
            self.emit(state_of_bits(from), CircuitState::Open, reason);
        }
    }

    fn to_half_open(&self, word: u64, now: u64) -> Option<u32> {
        let _slow = self.lock();
        let generation = gen_of(word);
        if now < self.open_until.load(Ordering::Acquire) {
            return None;
        }
        self.half_open_deadline.store(
            now.saturating_add(self.settings.half_open_max()),
            Ordering::Release,
        );
        let next = self.swap_state(generation, OPEN, HALF_OPEN, PROBE_ONE)?;
        tracing::info!(breaker = %self.name, "circuit breaker half-open: probing");
        self.emit(
            CircuitState::Open,
            CircuitState::HalfOpen,
            TransitionReason::OpenTimeElapsed,
        );
        Some(gen_of(next))
    }

    fn close(&self, generation: u32, now: u64) {
        let mut slow = self.lock();
        let word = self.word.0.load(Ordering::Acquire);
        if gen_of(word) != generation || state_of(word) != HALF_OPEN {
            return;
        }
        self.window.reset();
        slow.closed_at = now;
        if self.swap_state(generation, HALF_OPEN, CLOSED, 0).is_some() {
            tracing::info!(breaker = %self.name, "circuit breaker closed: probes succeeded");
            self.emit(
                CircuitState::HalfOpen,
                CircuitState::Closed,
                TransitionReason::ProbesSucceeded,
            );
        }
    }

    /// Back to a fresh closed state, mode unchanged.
    pub(crate) fn reset(&self) {
        let mut slow = self.lock();
        let now = self.now();
        self.window.reset();
        slow.closed_at = now;
        slow.streak = 0;
        let mut word = self.word.0.load(Ordering::Acquire);
        loop {
            match self.word.0.compare_exchange_weak(
                word,
                next_word(word, CLOSED),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(seen) => word = seen,
            }
        }
        tracing::info!(breaker = %self.name, "circuit breaker reset");
        self.emit(
            state_of_bits(state_of(word)),
            CircuitState::Closed,
            TransitionReason::Reset,
        );
    }

    /// Applies a new policy's rules in place, keeping the state (see
    /// [`CircuitBreakerHandle::reconfigure`](super::CircuitBreakerHandle::reconfigure)).
    pub(crate) fn reconfigure(&self, policy: &CircuitBreakerPolicy) {
        let mut slow = self.lock();
        self.settings.store(policy);
        let reshaped = !self.window.same_shape(policy);
        if reshaped {
            // Successes read the precise clock until the ticker's next wake gives a bucket
            // of the new width.
            self.coarse.0.bucket.store(UNAVAILABLE, Ordering::Relaxed);
            self.window.reshape(policy);
        }
        tracing::info!(
            breaker = %self.name,
            fresh_window = reshaped,
            "circuit breaker reconfigured"
        );
        if slow.enabled != policy.enabled {
            slow.enabled = policy.enabled;
            let mode = self.mode();
            if !policy.enabled {
                self.set_mode_locked(OperatorMode::Disabled);
            } else if mode == OperatorMode::Disabled {
                self.set_mode_locked(OperatorMode::Normal);
            }
        }
    }

    pub(crate) fn set_mode(&self, mode: OperatorMode) {
        let _slow = self.lock();
        self.set_mode_locked(mode);
    }

    /// Sets the mode; the caller holds the transition lock.
    fn set_mode_locked(&self, mode: OperatorMode) {
        let mut word = self.word.0.load(Ordering::Acquire);
        loop {
            let from = mode_of(word);
            if from == mode {
                return;
            }
            let next = (word & !MODE_MASK) | (mode.bits() << MODE_SHIFT);
            match self
                .word
                .0
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let state = state_of_bits(state_of(word));
                    tracing::warn!(breaker = %self.name, from = from.as_str(), to = mode.as_str(), "circuit breaker mode changed");
                    self.emit(
                        state,
                        state,
                        TransitionReason::ModeChanged { from, to: mode },
                    );
                    return;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Announces a transition or a mode change; the caller holds the transition lock.
    fn emit(&self, from: CircuitState, to: CircuitState, reason: TransitionReason) {
        let modes = match reason {
            TransitionReason::ModeChanged { from, to } => (from, to),
            // Modes only change under the transition lock, which the caller holds.
            _ => (self.mode(), self.mode()),
        };
        self.metrics.transition(from, to, modes);
        let transition = Transition {
            breaker: self.name.clone(),
            from,
            to,
            reason,
        };
        if let Some(callback) = &self.sinks.callback {
            callback(&transition);
        }
        // No subscriber is not an error.
        let _ = self.sinks.events.send(transition);
    }

    pub(crate) fn state(&self) -> CircuitState {
        state_of_bits(state_of(self.word.0.load(Ordering::Acquire)))
    }

    pub(crate) fn mode(&self) -> OperatorMode {
        mode_of(self.word.0.load(Ordering::Acquire))
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let word = self.word.0.load(Ordering::Acquire);
        let now = self.now();
        let state = state_of_bits(state_of(word));
        let until = self.open_until.load(Ordering::Acquire);
        Snapshot {
            state,
            mode: mode_of(word),
            totals: self.window.totals(now),
            consecutive_failures: if state == CircuitState::Closed {
                count_of(word)
            } else {
                0
            },
            probes_in_flight: if state == CircuitState::HalfOpen {
                probes_of(word)
            } else {
                0
            },
            probe_successes: if state == CircuitState::HalfOpen {
                successes_of(word)
            } else {
                0
            },
            open_remaining: (state == CircuitState::Open)
                .then(|| Duration::from_nanos(until.saturating_sub(now))),
            rejections: self.rejections.load(Ordering::Relaxed),
            shadow_rejections: self.shadow_rejections.load(Ordering::Relaxed),
            trips: self.trips.load(Ordering::Relaxed),
        }
    }

    /// Whether the outcome counts as a failure, a success, or not at all.
    #[inline]
    pub(crate) fn verdict(&self, outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Success => Verdict::Success,
            Outcome::Failure(c) if self.settings.counted.counts(c) => Verdict::Failure,
            Outcome::Failure(_) => Verdict::Success,
            Outcome::Ignored => Verdict::Ignored,
        }
    }
}

/// A wait in nanoseconds or a `Duration`, so `reject` takes either.
struct DurationNanos(Duration);

impl From<u64> for DurationNanos {
    fn from(n: u64) -> Self {
        DurationNanos(Duration::from_nanos(n))
    }
}

impl From<Duration> for DurationNanos {
    fn from(d: Duration) -> Self {
        DurationNanos(d)
    }
}

fn state_of_bits(state: u64) -> CircuitState {
    match state {
        CLOSED => CircuitState::Closed,
        OPEN => CircuitState::Open,
        _ => CircuitState::HalfOpen,
    }
}

fn state_name(state: u64) -> &'static str {
    state_of_bits(state).as_str()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One thread's way into a breaker: a reference count and a window stripe of its own, so that
/// threads admitting calls at once do not all write the same reference count.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Shard {
    breaker: Arc<Breaker>,
    stripe: usize,
    /// Whether finished calls leave their reference in the thread's spare slot (see
    /// [`SPARE`]); off for keyed breakers, whose eviction counts references.
    recycle: bool,
}

std::thread_local! {
    /// One reference to the shard this thread's last finished call used, kept instead of
    /// dropped, so that the thread's next call of the same breaker takes it instead of cloning
    /// one: a call then neither increments nor decrements a reference count (two locked
    /// read-modify-writes, about 10 ns, a sixth of a closed-state success). A call of another
    /// breaker clones as before and, when it finishes, replaces the spare (dropping it), so a
    /// thread holds at most one spare, and a breaker every other owner has dropped lives on
    /// only until its last thread finishes a call of another breaker, or exits.
    static SPARE: Cell<Option<Arc<Shard>>> = const { Cell::new(None) };
}

/// A reference to `shard` for a call: this thread's spare if it is one, else a clone.
#[inline]
fn take_reference(shard: &Arc<Shard>) -> Arc<Shard> {
    if !shard.recycle {
        return shard.clone();
    }
    SPARE
        .try_with(|spare| match spare.take() {
            Some(kept) if Arc::ptr_eq(&kept, shard) => kept,
            other => {
                spare.set(other);
                shard.clone()
            }
        })
        .unwrap_or_else(|_| shard.clone())
}

/// Gives a finished call's reference back: kept as this thread's spare, replacing (dropping)
/// the one before. Dropped at once if the thread is exiting.
#[inline]
fn give_back(shard: Arc<Shard>) {
    if !shard.recycle {
        return;
    }
    let _ = SPARE.try_with(move |spare| drop(spare.replace(Some(shard))));
}

/// A breaker and its shards, one per window stripe; what services and registries hold.
#[derive(Debug)]
pub(crate) struct Shards {
    breaker: Arc<Breaker>,
    shards: Box<[Arc<Shard>]>,
}

impl Shards {
    /// `recycle`: whether calls may keep a spare reference per thread (not for keyed breakers,
    /// which are evicted only when nothing else holds them).
    /// Non-keyed breakers start their ticker here (see [`tick`]); keyed ones read the clock.
    pub(crate) fn new(breaker: Breaker, recycle: bool) -> Self {
        let breaker = Arc::new(breaker);
        if recycle {
            tick::start(&breaker);
        }
        let shards = (0..window::stripe_count())
            .map(|stripe| {
                Arc::new(Shard {
                    breaker: breaker.clone(),
                    stripe,
                    recycle,
                })
            })
            .collect();
        Shards { breaker, shards }
    }

    /// The breaker itself, for handles.
    pub(crate) fn core(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    #[inline]
    fn shard(&self) -> &Arc<Shard> {
        // As many shards as stripes, a power of two: a mask, never a division.
        &self.shards[window::thread_stripe() & (self.shards.len() - 1)]
    }

    /// Whether anything but the registry holds this breaker: a call in flight or a handle.
    pub(crate) fn in_use(&self) -> bool {
        Arc::strong_count(&self.breaker) > 1 + self.shards.len()
            || self.shards.iter().any(|s| Arc::strong_count(s) > 1)
    }
}

impl std::ops::Deref for Shards {
    type Target = Breaker;

    fn deref(&self) -> &Breaker {
        &self.breaker
    }
}

/// `Ticket::start` of a call admitted while the slow-call rule was off.
const NO_START: u64 = u64::MAX;

/// One admitted call's claim on its breaker: records the outcome when the call finishes, and
/// gives a probe slot back when the call is dropped before that.
#[derive(Debug)]
pub(crate) struct Ticket {
    /// `Some` until dropped, when it goes back to the thread's spare slot.
    shard: Option<Arc<Shard>>,
    admission: Admission,
    start: u64,
}

impl Ticket {
    /// A ticket for an admitted call; `None` for calls that record nothing.
    #[inline]
    pub(crate) fn new(shards: &Shards, admission: Admission) -> Option<Self> {
        match admission {
            Admission::Closed(_) | Admission::Probe(_) => Some(Ticket {
                shard: Some(take_reference(shards.shard())),
                admission,
                start: if shards.needs_start_time() {
                    shards.now()
                } else {
                    NO_START
                },
            }),
            Admission::Pass | Admission::Reject(_) => None,
        }
    }

    /// Records how the call went.
    #[inline]
    pub(crate) fn finish(mut self, outcome: &Outcome) {
        let Some(shard) = &self.shard else {
            return;
        };
        let breaker = &*shard.breaker;
        let verdict = breaker.verdict(outcome);
        let (slow, now) = match breaker.settings.slow_call() {
            // A call admitted before the slow-call rule was turned on has no start time and is
            // not judged by it.
            Some(limit) if self.start != NO_START => {
                let now = breaker.now();
                (now.saturating_sub(self.start) > limit, Some(now))
            }
            _ => (false, None),
        };
        match self.admission {
            Admission::Closed(generation) => {
                breaker.record_closed(shard.stripe, generation, verdict, slow, now)
            }
            Admission::Probe(generation) => breaker.record_probe(generation, verdict, slow),
            Admission::Pass | Admission::Reject(_) => {}
        }
        self.admission = Admission::Pass;
    }
}

impl Drop for Ticket {
    #[inline]
    fn drop(&mut self) {
        if let Some(shard) = self.shard.take() {
            if let Admission::Probe(generation) = self.admission {
                shard.breaker.release_probe(generation);
            }
            give_back(shard);
        }
    }
}
