//! What the breaker tells the world when it changes state.

use std::fmt;
use std::sync::Arc;

/// The state of the breaker's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are rejected until the open time has passed.
    Open,
    /// A few probe calls test whether the callee has recovered.
    HalfOpen,
}

impl CircuitState {
    /// `"closed"`, `"open"` or `"half_open"`, for labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator has set on top of the machine, at run time, through a
/// [`CircuitBreakerHandle`](super::CircuitBreakerHandle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OperatorMode {
    /// The machine decides. The default.
    #[default]
    Normal,
    /// Every call is rejected with [`CircuitOpen`](crate::error::CircuitOpen), whatever the
    /// machine says.
    ForcedOpen,
    /// Every call passes and nothing is recorded. Also the mode of a policy with
    /// `circuit_breaker.enabled: false`.
    Disabled,
    /// Shadow mode: the machine records, trips and probes as usual, but a call it would have
    /// rejected passes (uncounted) instead.
    MetricsOnly,
}

impl OperatorMode {
    /// `"normal"`, `"forced_open"`, `"disabled"` or `"metrics_only"`, for labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            OperatorMode::Normal => "normal",
            OperatorMode::ForcedOpen => "forced_open",
            OperatorMode::Disabled => "disabled",
            OperatorMode::MetricsOnly => "metrics_only",
        }
    }

    pub(crate) const fn bits(self) -> u64 {
        match self {
            OperatorMode::Normal => 0,
            OperatorMode::ForcedOpen => 1,
            OperatorMode::Disabled => 2,
            OperatorMode::MetricsOnly => 3,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => OperatorMode::Normal,
            1 => OperatorMode::ForcedOpen,
            2 => OperatorMode::Disabled,
            _ => OperatorMode::MetricsOnly,
        }
    }
}

impl fmt::Display for OperatorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum TransitionReason {
    /// `consecutive_failures` counted failures in a row.
    ConsecutiveFailures {
        /// The failures in a row when it tripped.
        count: u32,
    },
    /// The window's failure rate reached `failure_rate` with at least `minimum_calls` calls.
    FailureRate {
        /// The rate when it tripped.
        rate: f64,
        /// The calls in the window.
        calls: u64,
    },
    /// The window's slow-call rate reached `slow_call_rate` with at least `minimum_calls` calls.
    SlowCallRate {
        /// The rate when it tripped.
        rate: f64,
        /// The calls in the window.
        calls: u64,
    },
    /// The open time passed and a call arrived: it is the first probe.
    OpenTimeElapsed,
    /// `success_threshold` probes succeeded.
    ProbesSucceeded,
    /// A probe failed (or was slow, when the slow-call rule is on).
    ProbeFailed,
    /// The breaker stayed half-open for `half_open_max_duration` without closing.
    HalfOpenTimedOut,
    /// An operator reset the breaker through its handle.
    Reset,
    /// An operator changed the mode through its handle.
    ModeChanged {
        /// The mode before.
        from: OperatorMode,
        /// The mode after.
        to: OperatorMode,
    },
}

/// One change of a breaker's state or mode, sent to subscribers and to the
/// `on_transition` callback.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The machine state before.
    pub from: CircuitState,
    /// The machine state after (the same as `from` for a mode change).
    pub to: CircuitState,
    /// Why.
    pub reason: TransitionReason,
}
