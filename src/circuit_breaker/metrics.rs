//! The breaker's own metrics (feature `metrics`): the state gauge, transitions, rejections.
//!
//! Every handle is registered once, when the breaker is built, with the recorder installed at
//! that moment; calls and transitions then only use the handles. A breaker built before the
//! application installs its recorder therefore records nothing, ever: install the exporter
//! first, then build the layers. Without the feature, this is an empty struct and every
//! method does nothing.

#[cfg(feature = "metrics")]
pub(crate) use enabled::BreakerMetrics;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::BreakerMetrics;

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::Arc;

    use metrics::{Counter, Gauge, Key, Label, Metadata};

    use crate::circuit_breaker::{CircuitState, OperatorMode};
    use crate::metrics::{BreakerState, names};

    /// Where the metrics come from, for recorders that filter by target or level.
    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

    /// The transitions the machine makes on its own; operator actions (modes, reset) are
    /// registered too, in `others`, since they can happen at any time.
    const ALL_PAIRS: usize = BreakerState::ALL.len() * BreakerState::ALL.len();

    /// One breaker's metric handles.
    pub(crate) struct BreakerMetrics {
        /// One gauge per [`BreakerState`], in [`BreakerState::ALL`] order.
        state: [Gauge; BreakerState::ALL.len()],
        /// `transitions[from * 5 + to]`, in [`BreakerState::ALL`] order; the diagonal unused.
        transitions: Box<[Counter; ALL_PAIRS]>,
        rejected: Counter,
    }

    impl std::fmt::Debug for BreakerMetrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BreakerMetrics").finish_non_exhaustive()
        }
    }

    fn index(state: BreakerState) -> usize {
        BreakerState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or(0)
    }

    impl BreakerMetrics {
        /// Registers the handles of breaker `name` with the recorder installed now, and sets
        /// the state gauge to what a new breaker in `mode` shows.
        pub(crate) fn new(name: &Arc<str>, mode: OperatorMode) -> Self {
            let breaker = || Label::new("breaker", name.to_string());
            metrics::with_recorder(|r| {
                let state = BreakerState::ALL.map(|s| {
                    r.register_gauge(
                        &Key::from_parts(
                            names::CIRCUIT_BREAKER_STATE,
                            vec![breaker(), Label::from_static_parts("state", s.as_str())],
                        ),
                        &METADATA,
                    )
                });
                let transitions = Box::new(std::array::from_fn(|i| {
                    let from = BreakerState::ALL[i / BreakerState::ALL.len()];
                    let to = BreakerState::ALL[i % BreakerState::ALL.len()];
                    if from == to {
                        return Counter::noop();
                    }
                    r.register_counter(
                        &Key::from_parts(
                            names::CIRCUIT_BREAKER_TRANSITIONS_TOTAL,
                            vec![
                                breaker(),
                                Label::from_static_parts("from", from.as_str()),
                                Label::from_static_parts("to", to.as_str()),
                            ],
                        ),
                        &METADATA,
                    )
                }));
                let rejected = r.register_counter(
                    &Key::from_parts(names::CIRCUIT_BREAKER_REJECTED_TOTAL, vec![breaker()]),
                    &METADATA,
                );
                let metrics = BreakerMetrics {
                    state,
                    transitions,
                    rejected,
                };
                metrics.show(BreakerState::of(CircuitState::Closed, mode));
                metrics
            })
        }

        fn show(&self, state: BreakerState) {
            for (s, gauge) in BreakerState::ALL.iter().zip(&self.state) {
                gauge.set(if *s == state { 1.0 } else { 0.0 });
            }
        }

        /// Records a transition or a mode change (under the transition lock, so in order):
        /// counted and shown only if the state it shows changed.
        pub(crate) fn transition(
            &self,
            from: CircuitState,
            to: CircuitState,
            modes: (OperatorMode, OperatorMode),
        ) {
            let before = BreakerState::of(from, modes.0);
            let after = BreakerState::of(to, modes.1);
            if before != after {
                self.transitions[index(before) * BreakerState::ALL.len() + index(after)]
                    .increment(1);
                self.show(after);
            }
        }

        /// Counts one rejected call.
        #[inline]
        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
        }
    }

    impl Drop for BreakerMetrics {
        /// A breaker that is gone (an evicted key, a dropped layer) shows no state.
        fn drop(&mut self) {
            for gauge in &self.state {
                gauge.set(0.0);
            }
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    use std::sync::Arc;

    use crate::circuit_breaker::{CircuitState, OperatorMode};

    /// Nothing to record without the `metrics` feature.
    #[derive(Debug)]
    pub(crate) struct BreakerMetrics;

    impl BreakerMetrics {
        pub(crate) fn new(_name: &Arc<str>, _mode: OperatorMode) -> Self {
            BreakerMetrics
        }

        pub(crate) fn transition(
            &self,
            _from: CircuitState,
            _to: CircuitState,
            _modes: (OperatorMode, OperatorMode),
        ) {
        }

        #[inline]
        pub(crate) fn rejected(&self) {}
    }
}
