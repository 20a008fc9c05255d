//! The state a circuit breaker shows, as the `state` label of its metrics.

use super::BreakerState;
use crate::circuit_breaker::{CircuitState, OperatorMode};

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
