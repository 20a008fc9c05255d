use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::breaker::Breaker;
use super::events::{CircuitState, OperatorMode, Transition};
use crate::policy::CircuitBreakerPolicy;

/// A breaker seen from outside: its state and counts, the operator modes, its transitions.
///
/// Cheap to clone; every clone, layer and service of one breaker share it. Reading the state is
/// one atomic load.
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    breaker: Arc<Breaker>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(breaker: Arc<Breaker>) -> Self {
        CircuitBreakerHandle { breaker }
    }

    #[cfg(test)]
    pub(crate) fn core(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// The breaker's name.
    pub fn name(&self) -> &Arc<str> {
        &self.breaker.name
    }

    /// The machine's state. Transitions happen when calls arrive and finish: an open breaker
    /// whose open time has passed reports `Open` until the next call, which becomes its first
    /// probe.
    pub fn state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// The operator mode.
    pub fn mode(&self) -> OperatorMode {
        self.breaker.mode()
    }

    /// Sets the operator mode; a change is announced like a transition.
    pub fn set_mode(&self, mode: OperatorMode) {
        self.breaker.set_mode(mode);
    }

    /// Rejects every call until the mode is changed back.
    pub fn force_open(&self) {
        self.set_mode(OperatorMode::ForcedOpen);
    }

    /// Lets every call through, recording nothing.
    pub fn disable(&self) {
        self.set_mode(OperatorMode::Disabled);
    }

    /// Shadow mode: record and transition, never reject.
    pub fn metrics_only(&self) {
        self.set_mode(OperatorMode::MetricsOnly);
    }

    /// Back to normal mode (the machine's state is kept).
    pub fn resume(&self) {
        self.set_mode(OperatorMode::Normal);
    }

    /// Closes the breaker and forgets its window and its open-time growth. The mode is kept.
    pub fn reset(&self) {
        self.breaker.reset();
    }

    /// Applies the rules of `policy` to this live breaker, keeping its state: for a policy
    /// reload.
    ///
    /// Kept: the state (closed, open, half-open) and the operator mode; the time the open
    /// period ends and the half-open deadline; the trip count the open time grows with; the run
    /// of consecutive failures; probes in flight and probe successes; the window's contents if
    /// the window type and size are unchanged (`window` for a time window, `window_size` for a
    /// count window). A window of another type or size starts empty.
    ///
    /// The new rules apply from the next call or outcome: nothing trips or closes at the moment
    /// of reconfiguring. A closed breaker with 4 failures in a row whose threshold drops from 10
    /// to 3 trips on the next failure; a half-open breaker whose probe limit drops keeps its
    /// probes in flight and admits no more until fewer than the new limit are out. A new
    /// `open_timeout` applies from the next trip; the open period under way keeps its end.
    ///
    /// `enabled` acts only when it changes from the policy applied before: turning it off sets
    /// the mode to `Disabled`, turning it on sets a `Disabled` breaker back to `Normal`; a
    /// policy that leaves it as it was leaves an operator's mode alone. Which failures count
    /// ([`CircuitBreakerBuilder::counted`](super::CircuitBreakerBuilder::counted)) and an
    /// explicit open jitter are builder options and are kept.
    ///
    /// Calls take no lock and no extra atomic read-modify-write for this: every rule is read
    /// where it was read before, with a relaxed atomic load (about ten more instructions per
    /// call in all, see `docs/performance.md`). A call racing a reconfiguration may be judged by a mix of old and new rules
    /// for that one call; a reshaped window may lose or gain the samples of calls recording at
    /// that moment.
    pub fn reconfigure(&self, policy: &CircuitBreakerPolicy) {
        self.breaker.reconfigure(policy);
    }

    /// A receiver of every later transition and mode change. For a keyed breaker this is the
    /// registry's channel: it carries every key's transitions, each naming its breaker.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.breaker.subscribe()
    }

    /// The breaker's counts now.
    pub fn metrics(&self) -> CircuitBreakerMetrics {
        let s = self.breaker.snapshot();
        CircuitBreakerMetrics {
            state: s.state,
            mode: s.mode,
            calls: s.totals.calls,
            failures: s.totals.failures,
            slow_calls: s.totals.slow,
            failure_rate: s.totals.failure_rate(),
            slow_call_rate: s.totals.slow_rate(),
            consecutive_failures: s.consecutive_failures,
            probes_in_flight: s.probes_in_flight,
            probe_successes: s.probe_successes,
            open_remaining: s.open_remaining,
            rejections: s.rejections,
            shadow_rejections: s.shadow_rejections,
            trips: s.trips,
        }
    }
}

impl std::fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.breaker.name)
            .field("state", &self.state())
            .field("mode", &self.mode())
            .finish()
    }
}

/// A breaker's counts at one moment, from [`CircuitBreakerHandle::metrics`].
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerMetrics {
    /// The machine's state.
    pub state: CircuitState,
    /// The operator mode.
    pub mode: OperatorMode,
    /// Calls in the window (closed state only; the window is cleared when the breaker closes).
    pub calls: u64,
    /// Counted failures in the window.
    pub failures: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// `failures / calls`, 0 for an empty window.
    pub failure_rate: f64,
    /// `slow_calls / calls`, 0 for an empty window.
    pub slow_call_rate: f64,
    /// Counted failures in a row (closed state).
    pub consecutive_failures: u32,
    /// Probes in flight (half-open state).
    pub probes_in_flight: u32,
    /// Probes that succeeded in this half-open period.
    pub probe_successes: u32,
    /// Time left before the next probe may go (open state).
    pub open_remaining: Option<Duration>,
    /// Calls rejected since the breaker was built.
    pub rejections: u64,
    /// Calls a metrics-only breaker would have rejected and let through.
    pub shadow_rejections: u64,
    /// Times the breaker opened since it was built.
    pub trips: u64,
}
