//! The timeout layer's metric handles, registered once when a layer is built (no look-up in
//! the recorder per call). Without the `metrics` feature, a zero-sized stand-in.

use std::sync::Arc;

use crate::error::TimeoutKind;

/// `palisade_timeouts_total{operation, kind}`, one handle per kind.
#[derive(Clone, Debug)]
pub(crate) struct TimeoutMetrics {
    #[cfg(feature = "metrics")]
    by_kind: [metrics::Counter; 3],
}

impl Default for TimeoutMetrics {
    /// Handles that record nothing.
    fn default() -> Self {
        TimeoutMetrics {
            #[cfg(feature = "metrics")]
            by_kind: [
                metrics::Counter::noop(),
                metrics::Counter::noop(),
                metrics::Counter::noop(),
            ],
        }
    }
}

impl TimeoutMetrics {
    /// Registers the handles of `operation` with the recorder in force.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(operation: &Arc<str>) -> Self {
        #[cfg(feature = "metrics")]
        {
            use crate::metrics::names::TIMEOUTS_TOTAL;
            let counter = |kind: TimeoutKind| {
                metrics::counter!(
                    TIMEOUTS_TOTAL,
                    "operation" => operation.to_string(),
                    "kind" => kind.as_str()
                )
            };
            TimeoutMetrics {
                by_kind: [
                    counter(TimeoutKind::Total),
                    counter(TimeoutKind::Attempt),
                    counter(TimeoutKind::DeadlineExpired),
                ],
            }
        }
        #[cfg(not(feature = "metrics"))]
        TimeoutMetrics {}
    }

    /// Counts one timeout of `kind`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn fired(&self, kind: TimeoutKind) {
        #[cfg(feature = "metrics")]
        {
            let index = match kind {
                TimeoutKind::Total => 0,
                TimeoutKind::Attempt => 1,
                TimeoutKind::DeadlineExpired => 2,
            };
            self.by_kind[index].increment(1);
        }
    }
}
