//! A tiny seedable generator for transfer ids and the simulator's faults.

use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64: a tiny, seedable, lock-free generator for jitter, fault injection and ids.
/// Not for secrets.
#[derive(Debug)]
pub struct SplitMix64(AtomicU64);

impl SplitMix64 {
    /// A generator with this seed; the same seed and call order give the same numbers.
    pub const fn new(seed: u64) -> Self {
        SplitMix64(AtomicU64::new(seed))
    }

    /// A generator seeded from the wall clock and the process id.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix64::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
