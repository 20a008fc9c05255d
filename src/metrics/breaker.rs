//! Circuit breaker transitions as metrics.

use super::BreakerState;
use crate::circuit_breaker::{CircuitState, OperatorMode, Transition};

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

/// A transition callback kept so that code written for session 1 still compiles: it records
/// nothing.
///
/// palisade's breakers now record their state gauge, transitions and rejections by themselves
/// with the `metrics` feature (see [`circuit_breaker`](crate::circuit_breaker#metrics)), which is
/// also the only feature this function exists under. It used to record every transition
/// ([`record_breaker_transition`](super::record_breaker_transition)) and set the gauge to `closed` at once; plugged into a
/// breaker's [`on_transition`](crate::circuit_breaker::CircuitBreakerBuilder::on_transition) or
/// fed from its event channel, that would now count every transition twice, or (created late,
/// as on a first event) set a stale gauge. So it does nothing, and such callers stay correct.
/// To record transitions of a machine of your own, call
/// [`record_breaker_transition`](super::record_breaker_transition) and
/// [`record_breaker_state`](super::record_breaker_state).
pub fn breaker_transition_recorder(
    breaker: impl Into<std::sync::Arc<str>>,
) -> impl Fn(&Transition) + Send + Sync + 'static {
    drop(breaker.into());
    |_: &Transition| {}
}
