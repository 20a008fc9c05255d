//! Which operations are in flight right now, and for how long: cheap enough to leave on.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::metrics::TimeoutMetrics;
use crate::error::TimeoutKind;

/// Bits of a slot holding the start time, in microseconds since the registry was made
/// (2^48 µs is about 8.9 years).
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// Operation ids fit the 16 high bits; id 0 marks a free slot.
const MAX_OPERATIONS: usize = (1 << (64 - TIME_BITS)) - 1;

/// A registry of calls in flight, shared by the timeout layers given it (by default all of
/// them share [`InFlight::global`]).
///
/// # Cost
///
/// A call takes one slot of a fixed array when it starts and frees it when its future
/// completes or is dropped: one compare-and-swap and one store on an `AtomicU64`, no lock and
/// no allocation. Each thread starts its search at its own place in the array, so threads
/// rarely touch the same cache line. When every slot is taken, calls are still counted (in
/// [`untracked`](InFlight::untracked)) but not listed. Taking a
/// [`snapshot`](InFlight::snapshot) scans the array and allocates the list; it does not stop
/// calls from starting or finishing.
#[derive(Clone)]
pub struct InFlight {
    registry: Arc<Registry>,
}

struct Registry {
    base: Instant,
    slots: Box<[AtomicU64]>,
    untracked: AtomicUsize,
    operations: Mutex<Vec<Operation>>,
}

/// An operation registered by a layer: its name, and the metric handles of the last layer
/// built for it (read only when one of its calls times out).
struct Operation {
    name: Arc<str>,
    metrics: TimeoutMetrics,
}

/// One call in flight, as seen by [`InFlight::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlightCall {
    /// The operation's name.
    pub operation: Arc<str>,
    /// How long the call has been running (to the microsecond).
    pub elapsed: Duration,
}

impl InFlight {
    /// Slots of the [global](InFlight::global) registry.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// A registry listing up to `capacity` calls at once, rounded up to a power of two.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << 20);
        let slots = (0..capacity).map(|_| AtomicU64::new(0)).collect();
        InFlight {
            registry: Arc::new(Registry {
                base: Instant::now(),
                slots,
                untracked: AtomicUsize::new(0),
                operations: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The registry every timeout layer uses unless given another.
    pub fn global() -> &'static InFlight {
        static GLOBAL: OnceLock<InFlight> = OnceLock::new();
        GLOBAL.get_or_init(|| InFlight::with_capacity(Self::DEFAULT_CAPACITY))
    }

    /// The calls in flight, longest-running first.
    pub fn snapshot(&self) -> Vec<InFlightCall> {
        let registry = &*self.registry;
        let now = Instant::now();
        let now_micros = micros_since(registry.base, now);
        let operations = registry
            .operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|op| op.name.clone())
            .collect::<Vec<_>>();
        let mut calls: Vec<InFlightCall> = registry
            .slots
            .iter()
            .filter_map(|slot| {
                let value = slot.load(Ordering::Acquire);
                let id = (value >> TIME_BITS) as usize;
                let operation = operations.get(id.checked_sub(1)?)?.clone();
                let started = value & TIME_MASK;
                Some(InFlightCall {
                    operation,
                    elapsed: Duration::from_micros(now_micros.saturating_sub(started)),
                })
            })
            .collect();
        calls.sort_by_key(|call| std::cmp::Reverse(call.elapsed));
        calls
    }

    /// How many calls are in flight, listed or not.
    pub fn len(&self) -> usize {
        let listed = self
            .registry
            .slots
            .iter()
            .filter(|slot| slot.load(Ordering::Relaxed) != 0)
            .count();
        listed + self.untracked()
    }

    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls in flight that found every slot taken, so are counted but not listed.
    pub fn untracked(&self) -> usize {
        self.registry.untracked.load(Ordering::Relaxed)
    }

    /// The slot capacity.
    pub fn capacity(&self) -> usize {
        self.registry.slots.len()
    }

    /// The id of an operation, registering it on first use. Called when a layer is built,
    /// with that layer's metric handles (which replace those of an earlier layer of the same
    /// operation: the same series, unless the recorder changed since).
    pub(crate) fn operation_id(
        &self,
        operation: &Arc<str>,
        metrics: &TimeoutMetrics,
    ) -> Option<u16> {
        let mut operations = self
            .registry
            .operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = match operations.iter().position(|op| op.name == *operation) {
            Some(index) => {
                operations[index].metrics = metrics.clone();
                index
            }
            None if operations.len() < MAX_OPERATIONS => {
                operations.push(Operation {
                    name: operation.clone(),
                    metrics: metrics.clone(),
                });
                operations.len() - 1
            }
            None => return None,
        };
        u16::try_from(index + 1).ok()
    }

    /// Whether this is the [global](InFlight::global) registry.
    pub(crate) fn is_global(&self) -> bool {
        Arc::ptr_eq(&self.registry, &InFlight::global().registry)
    }

    /// A call of operation `id` timed out: counts it, and returns the operation's name.
    pub(crate) fn timed_out(&self, id: u16, kind: TimeoutKind) -> Option<Arc<str>> {
        let operations = self
            .registry
            .operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let operation = operations.get(usize::from(id).checked_sub(1)?)?;
        operation.metrics.fired(kind);
        Some(operation.name.clone())
    }

    /// Records a call of operation `id` starting `now`; returns its slot, or
    /// [`Slot::UNTRACKED`] if it went to the untracked count.
    pub(crate) fn start(&self, id: u16, now: Instant) -> Slot {
        let registry = &*self.registry;
        let value = (u64::from(id) << TIME_BITS) | (micros_since(registry.base, now) & TIME_MASK);
        // The capacity is a power of two: masks, not divisions.
        let mask = registry.slots.len() - 1;
        let stored = HINT.get();
        let hint = if stored == usize::MAX {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(64, Ordering::Relaxed)
        } else {
            stored
        };
        for offset in 0..=mask {
            let index = hint.wrapping_add(offset) & mask;
            let slot = &registry.slots[index];
            if slot.load(Ordering::Relaxed) == 0
                && slot
                    .compare_exchange(0, value, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                // The next call on this thread most likely finds this slot free again.
                if index != stored {
                    HINT.set(index);
                }
                // The capacity is at most 2^20 (`with_capacity`): the index fits.
                return Slot(index as u32);
            }
        }
        registry.untracked.fetch_add(1, Ordering::Relaxed);
        Slot::UNTRACKED
    }

    /// Records the end of a call started with [`start`](Self::start).
    pub(crate) fn finish(&self, slot: Slot) {
        if slot == Slot::UNTRACKED {
            self.registry.untracked.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.registry.slots[slot.0 as usize].store(0, Ordering::Release);
        }
    }
}

/// The slot a call took, in four bytes (it sits in every timeout's response future, which
/// every layer outside moves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot(u32);

impl Slot {
    /// Every slot was taken: the call is only counted.
    pub(crate) const UNTRACKED: Slot = Slot(u32::MAX);
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

thread_local! {
    /// Where this thread starts looking for a free slot (`usize::MAX`: not chosen yet).
    /// Threads start 64 slots (eight cache lines) apart so they do not fight over a line.
    static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn micros_since(base: Instant, now: Instant) -> u64 {
    // Not `as_micros()`: that is a 128-bit division, a large share of this path's cost.
    let d = now.saturating_duration_since(base);
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lists_calls_longest_first_and_counts_overflow() {
        let registry = InFlight::with_capacity(2);
        let none = TimeoutMetrics::default();
        let a = registry.operation_id(&Arc::from("a"), &none).unwrap();
        let b = registry.operation_id(&Arc::from("b"), &none).unwrap();
        assert_eq!(registry.operation_id(&Arc::from("a"), &none), Some(a));
        let first = registry.start(a, Instant::now());
        tokio::time::advance(Duration::from_millis(30)).await;
        let second = registry.start(b, Instant::now());
        let third = registry.start(b, Instant::now());
        assert!(first != Slot::UNTRACKED && second != Slot::UNTRACKED);
        assert_eq!(third, Slot::UNTRACKED);
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.untracked(), 1);
        tokio::time::advance(Duration::from_millis(20)).await;
        let calls = registry.snapshot();
        assert_eq!(calls.len(), 2);
        assert_eq!(&*calls[0].operation, "a");
        assert_eq!(calls[0].elapsed, Duration::from_millis(50));
        assert_eq!(&*calls[1].operation, "b");
        assert_eq!(calls[1].elapsed, Duration::from_millis(20));
        registry.finish(first);
        registry.finish(third);
        registry.finish(second);
        assert!(registry.is_empty());
    }
}
