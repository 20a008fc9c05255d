//! The bulkhead's metric handles, registered once when its partition is made (no look-up in
//! the recorder per call). Without the `metrics` feature, a zero-sized stand-in.

use crate::error::BulkheadRejection;

/// `palisade_bulkhead_in_flight{bulkhead}`, `palisade_bulkhead_queued{bulkhead}` and
/// `palisade_bulkhead_rejected_total{bulkhead, reason}` (one handle per reason).
///
/// The gauges move by one as permits and places in the queue are taken and given back, so
/// concurrent calls never overwrite each other's reading.
#[derive(Debug)]
pub(crate) struct BulkheadMetrics {
    #[cfg(feature = "metrics")]
    in_flight: metrics::Gauge,
    #[cfg(feature = "metrics")]
    queued: metrics::Gauge,
    #[cfg(feature = "metrics")]
    rejected: [metrics::Counter; 2],
}

impl BulkheadMetrics {
    /// Registers the handles of bulkhead `name` with the recorder in force.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(name: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            use crate::metrics::names::{
                BULKHEAD_IN_FLIGHT, BULKHEAD_QUEUED, BULKHEAD_REJECTED_TOTAL,
            };
            let rejected = |reason: &'static str| {
                metrics::counter!(
                    BULKHEAD_REJECTED_TOTAL,
                    "bulkhead" => name.to_owned(),
                    "reason" => reason
                )
            };
            BulkheadMetrics {
                in_flight: metrics::gauge!(BULKHEAD_IN_FLIGHT, "bulkhead" => name.to_owned()),
                queued: metrics::gauge!(BULKHEAD_QUEUED, "bulkhead" => name.to_owned()),
                rejected: [rejected("queue_full"), rejected("wait_timed_out")],
            }
        }
        #[cfg(not(feature = "metrics"))]
        BulkheadMetrics {}
    }

    /// A permit was taken.
    #[inline]
    pub(crate) fn acquired(&self) {
        #[cfg(feature = "metrics")]
        self.in_flight.increment(1.0);
    }

    /// A permit was given back (or retired).
    #[inline]
    pub(crate) fn released(&self) {
        #[cfg(feature = "metrics")]
        self.in_flight.decrement(1.0);
    }

    /// A call joined the queue.
    pub(crate) fn queued(&self) {
        #[cfg(feature = "metrics")]
        self.queued.increment(1.0);
    }

    /// A call left the queue (with a permit, or not).
    pub(crate) fn dequeued(&self) {
        #[cfg(feature = "metrics")]
        self.queued.decrement(1.0);
    }

    /// A call was turned away.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn rejected(&self, reason: &BulkheadRejection) {
        #[cfg(feature = "metrics")]
        self.rejected[match reason {
            BulkheadRejection::QueueFull => 0,
            BulkheadRejection::WaitTimedOut(_) => 1,
        }]
        .increment(1);
    }
}
