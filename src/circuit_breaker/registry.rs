//! The bounded map of keyed breakers.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::{Shards, Sinks};
use super::layer::CircuitBreakerBuilder;
use crate::policy::CircuitBreakerPolicy;

/// How often a breaker's last-use time is written: coarse, so that hot keys do not write a
/// shared cache line on every call.
const TOUCH_NANOS: u64 = 1_000_000;

/// One breaker per key, at most `max_keys` of them.
///
/// A key's breaker is built on its first call. When the map is full, breakers idle for
/// `idle_timeout` that no call or handle holds are evicted; if none can be, the call uses the
/// shared *overflow* breaker instead of growing the map. A flood of attacker-chosen keys thus
/// costs at most `max_keys` breakers and cannot push out a breaker that is in use.
pub(crate) struct Registry<K> {
    name: Arc<str>,
    /// Only used under the map's write lock; a lock of its own only so that `reconfigure` can
    /// change it through `&self`.
    builder: Mutex<CircuitBreakerBuilder>,
    sinks: Sinks,
    map: RwLock<HashMap<K, Arc<Shards>>>,
    overflow: Arc<Shards>,
    max_keys: usize,
    idle: u64,
    base: Instant,
    last_sweep: AtomicU64,
}

impl<K> std::fmt::Debug for Registry<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("max_keys", &self.max_keys)
            .field("idle", &Duration::from_nanos(self.idle))
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + Display> Registry<K> {
    pub(crate) fn new(
        name: Arc<str>,
        builder: CircuitBreakerBuilder,
        max_keys: usize,
        idle_timeout: Duration,
    ) -> Self {
        let sinks = builder.sinks();
        let overflow = builder.breaker(format!("{name}/{{overflow}}").into(), sinks.clone());
        Registry {
            name,
            builder: Mutex::new(builder),
            sinks,
            map: RwLock::new(HashMap::new()),
            overflow,
            max_keys: max_keys.max(1),
            idle: u64::try_from(idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            base: Instant::now(),
            last_sweep: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.base)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    fn touch(breaker: &Shards, now: u64) {
        if now.saturating_sub(breaker.last_used.load(Ordering::Relaxed)) >= TOUCH_NANOS {
            breaker.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// The breaker for `key`: its own, a new one, or the overflow breaker when full.
    pub(crate) fn get(&self, key: &K) -> Arc<Shards> {
        let now = self.now();
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(breaker) = map.get(key) {
                Self::touch(breaker, now);
                return breaker.clone();
            }
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(breaker) = map.get(key) {
            Self::touch(breaker, now);
            return breaker.clone();
        }
        let since_sweep = now.saturating_sub(self.last_sweep.load(Ordering::Relaxed));
        // Sweeping is O(keys) under the write lock: when full, at most every idle/8, so a flood of
        // new keys cannot turn every call into a sweep.
        if since_sweep >= self.idle || (map.len() >= self.max_keys && since_sweep >= self.idle / 8)
        {
            self.sweep(&mut map, now);
        }
        if map.len() >= self.max_keys {
            Self::touch(&self.overflow, now);
            return self.overflow.clone();
        }
        let breaker = self
            .builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .breaker(format!("{}/{key}", self.name).into(), self.sinks.clone());
        breaker.last_used.store(now, Ordering::Relaxed);
        map.insert(key.clone(), breaker.clone());
        breaker
    }

    fn sweep(&self, map: &mut HashMap<K, Arc<Shards>>, now: u64) -> usize {
        self.last_sweep.store(now, Ordering::Relaxed);
        let before = map.len();
        map.retain(|_, breaker| {
            let idle = now.saturating_sub(breaker.last_used.load(Ordering::Relaxed)) >= self.idle;
            // Held by an in-flight call or a handle: in use, keep it.
            !idle || breaker.in_use()
        });
        before - map.len()
    }

    /// Applies `policy` to every breaker held, the overflow breaker, and every breaker built
    /// later. The map's write lock is held throughout, so no key is built with the old rules
    /// after this returns.
    pub(crate) fn reconfigure(&self, policy: &CircuitBreakerPolicy) {
        let map = self.map.write().unwrap_or_else(|p| p.into_inner());
        self.builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_policy(policy);
        for breaker in map.values() {
            breaker.reconfigure(policy);
        }
        self.overflow.reconfigure(policy);
    }

    /// Evicts idle breakers now; how many went.
    pub(crate) fn evict_idle(&self) -> usize {
        let now = self.now();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        self.sweep(&mut map, now)
    }

    pub(crate) fn lookup(&self, key: &K) -> Option<Arc<Shards>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn overflow(&self) -> &Arc<Shards> {
        &self.overflow
    }

    pub(crate) fn sinks(&self) -> &Sinks {
        &self.sinks
    }
}
