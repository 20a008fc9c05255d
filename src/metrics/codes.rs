//! Keeps the `code` label bounded even when a classifier makes up codes.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::classify::Code;

/// The distinct codes seen so far, up to a limit; later new codes become `"other"`.
///
/// Consulted only on the failure path. Built-in classifiers and code tables have a fixed set of
/// codes; this is the guard against a closure that puts request data into one.
#[derive(Debug)]
pub(crate) struct CodeLimit {
    max: usize,
    seen: Mutex<HashSet<Code>>,
}

impl CodeLimit {
    pub(crate) fn new(max: usize) -> Self {
        CodeLimit {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// `code` if it is known or there is room for it, else `None`.
    pub(crate) fn admit(&self, code: &Code) -> bool {
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            // A panic elsewhere while holding the lock left a valid set; keep using it.
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.contains(code) {
            return true;
        }
        if seen.len() < self.max {
            seen.insert(code.clone());
            return true;
        }
        false
    }
}
