//! Hot reload: the running policy table, swappable while requests are in flight.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{ConfigError, Policies, PolicyLoader};

/// The policy table a running service uses, replaceable at run time.
///
/// Readers take a snapshot ([`current`](Self::current)): an `Arc` of the table, loaded without
/// a lock. A request that took its snapshot keeps it until it finishes, so a reload never
/// changes the rules of a call half-way through. A reload that fails validation is rejected
/// with its [`ConfigError`] and the running table stays.
///
/// Layers that keep per-operation state (breakers, budgets, bulkheads) can
/// [`subscribe`](Self::subscribe) to reloads and use the [`ReloadReport`] to keep the state of
/// operations that still exist and drop that of removed ones.
///
/// ```
/// use palisade::policy::{Policies, PolicyStore};
/// use std::time::Duration;
///
/// let store = PolicyStore::new(Policies::from_yaml_str(
///     "policies:\n  api_call:\n    timeout: { total: 10s }\n",
/// ).unwrap());
/// let before = store.current();
///
/// let report = store
///     .reload_from_str("policies:\n  api_call:\n    timeout: { total: 2s }\n")
///     .unwrap();
/// assert_eq!(report.changed, ["api_call"]);
/// assert_eq!(store.current().for_operation("api_call").timeout.total, Duration::from_secs(2));
/// // A snapshot taken before the reload is untouched.
/// assert_eq!(before.for_operation("api_call").timeout.total, Duration::from_secs(10));
///
/// // An invalid table is rejected and the running one stays.
/// assert!(store.reload_from_str("policies:\n  api_call:\n    timeout: { total: 0s }\n").is_err());
/// assert_eq!(store.current().for_operation("api_call").timeout.total, Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct PolicyStore {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Policies>,
    changes: watch::Sender<Arc<Policies>>,
    loader: PolicyLoader,
    path: Option<PathBuf>,
    /// Touched only by reloads, never by readers.
    state: Mutex<ReloadState>,
}

#[derive(Default)]
struct ReloadState {
    generation: u64,
    last_error: Option<ConfigError>,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Operations that are new.
    pub added: Vec<String>,
    /// Operations that are gone: their per-operation state should be dropped.
    pub removed: Vec<String>,
    /// Operations whose policy changed: their state is kept, their thresholds updated.
    pub changed: Vec<String>,
    /// Whether `defaults`, routes or error-code tables changed.
    pub other_changes: bool,
    /// How many reloads have been applied, this one included.
    pub generation: u64,
}

impl ReloadReport {
    /// Whether the reload changed anything at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.other_changes
    }
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("path", &self.inner.path)
            .field("operations", &self.current().operations().count())
            .finish_non_exhaustive()
    }
}

impl PolicyStore {
    /// A store holding `policies`, with no file behind it.
    pub fn new(policies: Policies) -> Self {
        Self::build(policies, PolicyLoader::new(), None)
    }

    /// A store loaded from a file with environment overrides, as [`Policies::from_path`];
    /// [`reload_from_file`](Self::reload_from_file) and [`watch_file`](Self::watch_file)
    /// re-read the same file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::from_path_with(path, PolicyLoader::new().with_process_env())
    }

    /// A store loaded from a file with a chosen loader.
    pub fn from_path_with(
        path: impl AsRef<Path>,
        loader: PolicyLoader,
    ) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let policies = loader.load_path(&path)?;
        Ok(Self::build(policies, loader, Some(path)))
    }

    fn build(policies: Policies, loader: PolicyLoader, path: Option<PathBuf>) -> Self {
        let policies = Arc::new(policies);
        let (changes, _) = watch::channel(policies.clone());
        PolicyStore {
            inner: Arc::new(Inner {
                current: ArcSwap::new(policies),
                changes,
                loader,
                path,
                state: Mutex::new(ReloadState::default()),
            }),
        }
    }

    /// The running table: a snapshot that stays valid, unchanged, for as long as it is held.
    pub fn current(&self) -> Arc<Policies> {
        self.inner.current.load_full()
    }

    /// Replaces the running table.
    pub fn reload(&self, policies: Policies) -> ReloadReport {
        let mut state = self.lock_state();
        let new = Arc::new(policies);
        let old = self.inner.current.swap(new.clone());
        state.generation += 1;
        state.last_error = None;
        let report = diff(&old, &new, state.generation);
        drop(state);
        self.inner.changes.send_replace(new);
        tracing::info!(
            generation = report.generation,
            added = ?report.added,
            removed = ?report.removed,
            changed = ?report.changed,
            "policies reloaded"
        );
        report
    }

    /// Parses `yaml` and, if it is valid, replaces the running table. On error the running
    /// table stays and the error is also kept as [`last_error`](Self::last_error).
    pub fn reload_from_str(&self, yaml: &str) -> Result<ReloadReport, ConfigError> {
        let loaded = self.inner.loader.load_str(yaml);
        self.apply(loaded)
    }

    /// Re-reads the store's file. Fails with an I/O issue if the store has no file.
    pub fn reload_from_file(&self) -> Result<ReloadReport, ConfigError> {
        let loaded = match &self.inner.path {
            Some(path) => self.inner.loader.load_path(path),
            None => self.inner.loader.load_path(""),
        };
        self.apply(loaded)
    }

    fn apply(&self, loaded: Result<Policies, ConfigError>) -> Result<ReloadReport, ConfigError> {
        match loaded {
            Ok(policies) => Ok(self.reload(policies)),
            Err(e) => {
                tracing::warn!(error = %e, "policy reload rejected; the running policies stay");
                self.lock_state().last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The error of the last reload, if it failed; cleared by a successful one.
    pub fn last_error(&self) -> Option<ConfigError> {
        self.lock_state().last_error.clone()
    }

    /// How many reloads have been applied.
    pub fn generation(&self) -> u64 {
        self.lock_state().generation
    }

    /// A receiver that sees every table that is swapped in.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policies>> {
        self.inner.changes.subscribe()
    }

    /// Polls the store's file every `interval` and reloads it when it changes (by modification
    /// time, size or content). A change that fails validation is logged and kept as
    /// [`last_error`](Self::last_error); the running table stays. The task ends when the
    /// returned handle is aborted or the store has no file.
    ///
    /// Polling, rather than file-system notifications, works the same on every platform and
    /// with editors and config maps that replace files by renaming.
    pub fn watch_file(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        // Taken now, not when the task first runs, so a change made in between is not missed.
        let path = store.inner.path.clone();
        let mut seen = path.as_deref().map(Fingerprint::of);
        tokio::spawn(async move {
            let Some(path) = path else {
                return;
            };
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let now = Some(Fingerprint::of(&path));
                if now == seen {
                    continue;
                }
                seen = now;
                let _ = store.reload_from_file();
            }
        })
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        // A panic while holding this lock cannot leave the state inconsistent (each field is
        // written in one step), so a poisoned lock is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What identifies a version of a file without trusting modification times alone (they have
/// coarse resolution on some file systems).
#[derive(PartialEq, Eq)]
struct Fingerprint(Option<(SystemTime, u64, u64)>);

impl Fingerprint {
    fn of(path: &Path) -> Fingerprint {
        let Ok(meta) = std::fs::metadata(path) else {
            return Fingerprint(None);
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let hash = std::fs::read(path).map_or(0, |bytes| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            h.finish()
        });
        Fingerprint(Some((modified, meta.len(), hash)))
    }
}

fn diff(old: &Policies, new: &Policies, generation: u64) -> ReloadReport {
    let mut report = ReloadReport {
        generation,
        ..ReloadReport::default()
    };
    for policy in new.operations() {
        match old.get(policy.name()) {
            None => report.added.push(policy.name().to_owned()),
            Some(before) if **before != **policy => report.changed.push(policy.name().to_owned()),
            Some(_) => {}
        }
    }
    for policy in old.operations() {
        if new.get(policy.name()).is_none() {
            report.removed.push(policy.name().to_owned());
        }
    }
    report.other_changes = old.defaults() != new.defaults()
        || !old.routes().eq(new.routes())
        || !old.error_code_tables().eq(new.error_code_tables());
    report
}
