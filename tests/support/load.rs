//! What the stress tests share: a seeded generator for their random choices, and a count of
//! the calls running in the service under test.
//! Included with `#[path = "support/load.rs"] mod load;`.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A small deterministic generator (xorshift64*), one per task: the choices are
/// reproducible, the thread interleavings are not.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Counts the calls running in a service and the most seen at once.
#[derive(Clone, Default)]
pub struct Load {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Load {
    /// Counts a call in, until the returned guard is dropped (when the call ends or is
    /// dropped mid-flight).
    pub fn enter(&self) -> Running {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Running(self.running.clone())
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// The most calls seen running at once.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// One running call; leaves the count when dropped.
pub struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
