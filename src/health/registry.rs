use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use super::{CheckResult, ComponentHealth, HealthReport, HealthStatus, aggregate};

/// The default time a check may take before it counts as unhealthy.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Every component's health: checks the registry runs, and states components report.
///
/// Cheap to clone (one `Arc`); clones share the same components. Health is not on a request's
/// path, so the registry keeps its state behind a plain mutex, never held across an `.await`.
#[derive(Clone, Default)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    components: Mutex<BTreeMap<Arc<str>, Component>>,
}

struct Component {
    state: ComponentHealth,
    check: Option<(CheckFn, Duration)>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("report", &self.snapshot())
            .finish()
    }
}

/// A check to register: an async closure, its timeout and whether it is critical.
pub struct Check {
    name: Arc<str>,
    check: CheckFn,
    timeout: Duration,
    critical: bool,
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("critical", &self.critical)
            .finish_non_exhaustive()
    }
}

impl Check {
    /// A critical check named `name` with the [default timeout](DEFAULT_CHECK_TIMEOUT). `check`
    /// returns anything that converts to a [`CheckResult`]: a [`HealthStatus`], a
    /// `CheckResult`, or a `Result<(), impl Display>`.
    pub fn new<F, Fut, R>(name: impl Into<Arc<str>>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: Into<CheckResult>,
    {
        let check: CheckFn = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.into() })
        });
        Check {
            name: name.into(),
            check,
            timeout: DEFAULT_CHECK_TIMEOUT,
            critical: true,
        }
    }

    /// A check that takes longer than `timeout` is unhealthy (and is dropped).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// When this check fails the service is only degraded, not unhealthy.
    pub fn non_critical(mut self) -> Self {
        self.critical = false;
        self
    }
}

/// A handle through which one component reports its own state: what a circuit breaker holds.
///
/// Cheap to clone. Reporting the status it already has changes nothing, not even the time of the
/// last change.
#[derive(Clone)]
pub struct ComponentReporter {
    registry: HealthRegistry,
    name: Arc<str>,
}

impl fmt::Debug for ComponentReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComponentReporter")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ComponentReporter {
    /// Reports `status`, with an optional `detail`.
    pub fn report(&self, status: HealthStatus, detail: Option<String>) {
        self.registry
            .set(&self.name, CheckResult { status, detail }, None);
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl HealthRegistry {
    /// An empty registry: healthy, with no components.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Arc<str>, Component>> {
        // State is replaced whole under the lock, so a poisoned map is still consistent.
        self.inner
            .components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds (or replaces) a check, run by [`check_all`](Self::check_all). Its status is
    /// `unknown` until it first runs.
    pub fn register(&self, check: Check) {
        let mut components = self.lock();
        let state = ComponentHealth {
            status: HealthStatus::Unknown,
            detail: None,
            critical: check.critical,
            last_change: SystemTime::now(),
        };
        components.insert(
            check.name,
            Component {
                state,
                check: Some((check.check, check.timeout)),
            },
        );
    }

    /// A handle for a component that reports its own state (a circuit breaker), `unknown` until
    /// it reports. `critical` says whether its being unhealthy makes the service unhealthy.
    ///
    /// A breaker reports `Degraded` when it opens and `Healthy` when it closes: a dependency
    /// behind an open breaker means reduced function, not a dead service.
    pub fn reporter(&self, name: impl Into<Arc<str>>, critical: bool) -> ComponentReporter {
        let name = name.into();
        self.lock()
            .entry(name.clone())
            .or_insert_with(|| Component {
                state: ComponentHealth {
                    status: HealthStatus::Unknown,
                    detail: None,
                    critical,
                    last_change: SystemTime::now(),
                },
                check: None,
            });
        ComponentReporter {
            registry: self.clone(),
            name,
        }
    }

    /// Sets a component's state directly (creating it, non-critical, if it is new).
    pub fn report(&self, component: &str, status: HealthStatus, detail: Option<String>) {
        self.set(component, CheckResult { status, detail }, Some(false));
    }

    fn set(&self, name: &str, result: CheckResult, critical_if_new: Option<bool>) {
        let mut components = self.lock();
        let now = SystemTime::now();
        match components.get_mut(name) {
            Some(c) => {
                if c.state.status != result.status {
                    c.state.last_change = now;
                }
                c.state.status = result.status;
                c.state.detail = result.detail;
            }
            None => {
                components.insert(
                    name.into(),
                    Component {
                        state: ComponentHealth {
                            status: result.status,
                            detail: result.detail,
                            critical: critical_if_new.unwrap_or(false),
                            last_change: now,
                        },
                        check: None,
                    },
                );
            }
        }
    }

    /// The current state, without running any check.
    pub fn snapshot(&self) -> HealthReport {
        let components = self.lock();
        let components: BTreeMap<String, ComponentHealth> = components
            .iter()
            .map(|(name, c)| (name.to_string(), c.state.clone()))
            .collect();
        HealthReport {
            status: aggregate(components.values()),
            components,
        }
    }

    /// Runs every check concurrently, each within its timeout, records the results, and returns
    /// the report. A check that times out is unhealthy and its future is dropped; a check that
    /// panics is not caught (checks must not panic).
    ///
    /// Cancel-safe: dropping the returned future drops the checks still running and records
    /// nothing for them.
    pub async fn check_all(&self) -> HealthReport {
        let checks: Vec<(Arc<str>, CheckFn, Duration)> = self
            .lock()
            .iter()
            .filter_map(|(name, c)| c.check.as_ref().map(|(f, t)| (name.clone(), f.clone(), *t)))
            .collect();
        type Running = (
            Arc<str>,
            Duration,
            Pin<Box<tokio::time::Timeout<CheckFuture>>>,
        );
        let mut running: Vec<Option<Running>> = checks
            .into_iter()
            .map(|(name, check, limit)| {
                Some((name, limit, Box::pin(tokio::time::timeout(limit, check()))))
            })
            .collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for slot in running.iter_mut() {
                let Some((name, limit, fut)) = slot else {
                    continue;
                };
                match fut.as_mut().poll(cx) {
                    Poll::Pending => pending = true,
                    Poll::Ready(result) => {
                        let result = result.unwrap_or_else(|_| {
                            CheckResult::unhealthy(format!(
                                "check timed out after {}",
                                humantime::format_duration(*limit)
                            ))
                        });
                        self.set(name, result, None);
                        *slot = None;
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        self.snapshot()
    }
}
