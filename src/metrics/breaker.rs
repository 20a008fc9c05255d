//! Circuit breaker transitions as metrics.

use std::sync::Mutex;

use super::{BreakerState, record_breaker_state, record_breaker_transition};
use crate::circuit_breaker::{CircuitState, OperatorMode, Transition, TransitionReason};

impl BreakerState {
    /// The state a breaker shows: its operator mode when that overrides the machine (forced
    /// open, disabled), else the machine's state.
    pub fn of(state: CircuitState, mode: OperatorMode) -> Self {
        match (mode, state) {
            (OperatorMode::ForcedOpen, _) => BreakerState::ForcedOpen,
            (OperatorMode::Disabled, _) => BreakerState::Disabled,
            (_, CircuitState::Closed) => BreakerState::Closed,
            (_, CircuitState::HalfOpen) => BreakerState::HalfOpen,
            (_, CircuitState::Open) => BreakerState::Open,
        }
    }
}

/// A transition callback that records every transition ([`record_breaker_transition`]): the
/// transitions counter and the state gauge. Mode changes (forced open, disabled, back to normal)
/// count as transitions between the states they show.
///
/// palisade's own breakers record these metrics by themselves with the `metrics` feature (see
/// [`circuit_breaker`](crate::circuit_breaker#metrics)): do not plug this into their
/// [`on_transition`](crate::circuit_breaker::CircuitBreakerBuilder::on_transition) as well, or
/// every transition counts twice. It is for a breaker of your own that emits
/// [`Transition`]s.
///
/// Call it once per breaker; the gauge is set to `closed` for `breaker` right away.
pub fn breaker_transition_recorder(
    breaker: impl Into<std::sync::Arc<str>>,
) -> impl Fn(&Transition) + Send + Sync + 'static {
    let breaker: std::sync::Arc<str> = breaker.into();
    record_breaker_state(breaker.clone(), BreakerState::Closed);
    let mode = Mutex::new(OperatorMode::Normal);
    move |t: &Transition| {
        let mut mode = mode.lock().unwrap_or_else(|p| p.into_inner());
        let before = BreakerState::of(t.from, *mode);
        if let TransitionReason::ModeChanged { to, .. } = t.reason {
            *mode = to;
        }
        let after = BreakerState::of(t.to, *mode);
        if before != after {
            record_breaker_transition(t.breaker.clone(), before, after);
        }
    }
}
