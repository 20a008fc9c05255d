//! A breaker's rules, changeable while it runs.
//!
//! Every rule is its own atomic, read with a relaxed load where the rule is used. On the
//! closed-state success path only `slow_call` is read, as it was when it was a plain field (a
//! relaxed load of an aligned word is a plain load on the targets we build for), so
//! [`CircuitBreakerHandle::reconfigure`](super::CircuitBreakerHandle::reconfigure) costs calls
//! nothing. A reconfiguration stores the rules one by one: a call racing it may see some old
//! rules and some new for that one call; transitions, which read the rules under the
//! transition lock that reconfiguration also takes, see one set or the other.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::counted::CountedFailures;
use crate::policy::CircuitBreakerPolicy;

/// The most probes in flight, and the most successes counted, in one half-open period.
pub(crate) const PROBE_LIMIT: u32 = (1 << 14) - 1;

/// `slow_call` when the slow-call rule is off.
const NO_SLOW_CALL: u64 = u64::MAX;

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An `f64` in an `AtomicU64`.
#[derive(Debug)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn new(v: f64) -> Self {
        AtomicF64(AtomicU64::new(v.to_bits()))
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }

    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
}

/// The values of one policy, derived once, before they are stored.
struct Values {
    consecutive_failures: u32,
    failure_rate: f64,
    minimum_calls: u64,
    open_timeout: u64,
    open_multiplier: f64,
    open_max: u64,
    open_jitter: f64,
    half_open_max_requests: u32,
    success_threshold: u32,
    half_open_max: u64,
    slow_call: u64,
    slow_call_rate: f64,
    stable_after: u64,
}

impl Values {
    fn of(policy: &CircuitBreakerPolicy, open_jitter: Option<f64>) -> Self {
        let multiplier = if policy.open_timeout_multiplier.is_finite() {
            policy.open_timeout_multiplier.max(1.0)
        } else {
            1.0
        };
        let default_jitter = if multiplier > 1.0 { 0.1 } else { 0.0 };
        let jitter = open_jitter.unwrap_or(default_jitter);
        Values {
            consecutive_failures: policy.consecutive_failures,
            failure_rate: policy.failure_rate,
            minimum_calls: u64::from(policy.minimum_calls.max(1)),
            open_timeout: nanos(policy.open_timeout),
            open_multiplier: multiplier,
            open_max: nanos(policy.open_timeout_max.max(policy.open_timeout)),
            // NaN jitter (a builder given NaN) means none.
            open_jitter: if jitter.is_nan() {
                0.0
            } else {
                jitter.clamp(0.0, 1.0)
            },
            half_open_max_requests: policy.half_open_max_requests.clamp(1, PROBE_LIMIT),
            success_threshold: policy.success_threshold.clamp(1, PROBE_LIMIT),
            half_open_max: nanos(policy.half_open_max_duration),
            slow_call: policy
                .slow_call_duration
                .map_or(NO_SLOW_CALL, |d| nanos(d).min(NO_SLOW_CALL - 1)),
            slow_call_rate: policy.slow_call_rate,
            stable_after: nanos(policy.window),
        }
    }
}

/// A breaker's rules, read from its policy, replaceable at run time.
#[derive(Debug)]
pub(crate) struct Settings {
    consecutive_failures: AtomicU32,
    failure_rate: AtomicF64,
    minimum_calls: AtomicU64,
    open_timeout: AtomicU64,
    open_multiplier: AtomicF64,
    open_max: AtomicU64,
    open_jitter: AtomicF64,
    half_open_max_requests: AtomicU32,
    success_threshold: AtomicU32,
    half_open_max: AtomicU64,
    slow_call: AtomicU64,
    slow_call_rate: AtomicF64,
    /// A close is stable, and the open time falls back to `open_timeout`, once the breaker has
    /// stayed closed this long.
    stable_after: AtomicU64,
    /// The builder's jitter, if it set one: kept so a new policy's multiplier can derive the
    /// default again.
    explicit_jitter: Option<f64>,
    /// Which failures count: a builder option, not a policy rule, so never reconfigured.
    pub(crate) counted: CountedFailures,
}

impl Settings {
    pub(crate) fn new(
        policy: &CircuitBreakerPolicy,
        counted: CountedFailures,
        open_jitter: Option<f64>,
    ) -> Self {
        let v = Values::of(policy, open_jitter);
        Settings {
            consecutive_failures: AtomicU32::new(v.consecutive_failures),
            failure_rate: AtomicF64::new(v.failure_rate),
            minimum_calls: AtomicU64::new(v.minimum_calls),
            open_timeout: AtomicU64::new(v.open_timeout),
            open_multiplier: AtomicF64::new(v.open_multiplier),
            open_max: AtomicU64::new(v.open_max),
            open_jitter: AtomicF64::new(v.open_jitter),
            half_open_max_requests: AtomicU32::new(v.half_open_max_requests),
            success_threshold: AtomicU32::new(v.success_threshold),
            half_open_max: AtomicU64::new(v.half_open_max),
            slow_call: AtomicU64::new(v.slow_call),
            slow_call_rate: AtomicF64::new(v.slow_call_rate),
            stable_after: AtomicU64::new(v.stable_after),
            explicit_jitter: open_jitter,
            counted,
        }
    }

    /// Stores the rules of `policy` (the caller holds the transition lock).
    pub(crate) fn store(&self, policy: &CircuitBreakerPolicy) {
        let v = Values::of(policy, self.explicit_jitter);
        self.consecutive_failures
            .store(v.consecutive_failures, Relaxed);
        self.failure_rate.set(v.failure_rate);
        self.minimum_calls.store(v.minimum_calls, Relaxed);
        self.open_timeout.store(v.open_timeout, Relaxed);
        self.open_multiplier.set(v.open_multiplier);
        self.open_max.store(v.open_max, Relaxed);
        self.open_jitter.set(v.open_jitter);
        self.half_open_max_requests
            .store(v.half_open_max_requests, Relaxed);
        self.success_threshold.store(v.success_threshold, Relaxed);
        self.half_open_max.store(v.half_open_max, Relaxed);
        self.slow_call.store(v.slow_call, Relaxed);
        self.slow_call_rate.set(v.slow_call_rate);
        self.stable_after.store(v.stable_after, Relaxed);
    }

    /// Failures in a row that trip the breaker; 0 for off.
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    pub(crate) fn failure_rate(&self) -> f64 {
        self.failure_rate.get()
    }

    pub(crate) fn minimum_calls(&self) -> u64 {
        self.minimum_calls.load(Relaxed)
    }

    pub(crate) fn open_timeout(&self) -> Duration {
        Duration::from_nanos(self.open_timeout.load(Relaxed))
    }

    pub(crate) fn open_multiplier(&self) -> f64 {
        self.open_multiplier.get()
    }

    pub(crate) fn open_max(&self) -> Duration {
        Duration::from_nanos(self.open_max.load(Relaxed))
    }

    pub(crate) fn open_jitter(&self) -> f64 {
        self.open_jitter.get()
    }

    pub(crate) fn half_open_max_requests(&self) -> u32 {
        self.half_open_max_requests.load(Relaxed)
    }

    pub(crate) fn success_threshold(&self) -> u32 {
        self.success_threshold.load(Relaxed)
    }

    /// The longest half-open period, in nanoseconds.
    pub(crate) fn half_open_max(&self) -> u64 {
        self.half_open_max.load(Relaxed)
    }

    /// The slow-call threshold in nanoseconds, if the slow-call rule is on.
    #[inline]
    pub(crate) fn slow_call(&self) -> Option<u64> {
        match self.slow_call.load(Relaxed) {
            NO_SLOW_CALL => None,
            limit => Some(limit),
        }
    }

    pub(crate) fn slow_call_rate(&self) -> f64 {
        self.slow_call_rate.get()
    }

    /// How long a close must last to be stable, in nanoseconds.
    pub(crate) fn stable_after(&self) -> u64 {
        self.stable_after.load(Relaxed)
    }
}
