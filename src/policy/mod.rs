//! Named per-operation policies, as operations teams tune them, loaded from YAML.
//!
//! A policy file names operations (`api_call`, `database_operation`, ...) and gives each a
//! timeout, retry, circuit breaker and bulkhead policy. Sections are partial: what a policy
//! does not say it inherits, field by field, from the policy it `extends`, then from
//! `defaults`, then from palisade's built-in defaults. `routes` maps requests to operations,
//! and `error_codes` holds tables of a service's own error codes
//! ([`CodeTable`]).
//!
//! ```yaml
//! defaults:
//!   timeout: { total: 30s, attempt: 10s }
//!   retry: { max_retries: 3, base_delay: 100ms, max_delay: 5s, multiplier: 2.0, jitter: full,
//!            budget: { ratio: 0.2, min_per_second: 10, window: 10s } }
//!   circuit_breaker: { failure_rate: 0.5, consecutive_failures: 5, minimum_calls: 20,
//!                      window: 30s, open_timeout: 60s, half_open_max_requests: 10,
//!                      success_threshold: 3 }
//!   bulkhead: { max_concurrent: 100, max_queue: 50, max_wait: 1s }
//! policies:
//!   api_call:
//!     timeout: { total: 10s }
//!   database_operation:
//!     extends: api_call
//!     timeout: { total: 5s }
//!     retry: { max_retries: 5, base_delay: 50ms, max_delay: 2s, multiplier: 1.5 }
//! routes:
//!   "POST /v1/transfers": database_operation
//! error_codes:
//!   binance:
//!     "-1003": { transience: transient, category: external, severity: medium, retry_after: 60s }
//! ```
//!
//! Every key, default and rule is documented in `docs/configuration.md`.
//!
//! # Loading
//!
//! [`Policies::from_yaml_str`] reads a string and nothing else. [`Policies::from_path`] reads a
//! file and applies environment overrides (`PALISADE__POLICIES__API_CALL__TIMEOUT__TOTAL=5s`),
//! which win over the file. [`PolicyLoader`] chooses explicitly (tests pass their own
//! variables instead of touching the process environment).
//!
//! A file with problems is rejected whole with a [`ConfigError`] listing every problem: its
//! field path, line and column, what is wrong and how to fix it.
//!
//! ```
//! use palisade::policy::{IssueKind, Policies};
//!
//! let err = Policies::from_yaml_str("
//! policies:
//!   api_call:
//!     retry: { base_delay: 1s, max_delay: 100ms }
//!     timout: { total: 5s }
//! ").unwrap_err();
//!
//! let typo = err.issue_at("policies.api_call.timout").unwrap();
//! assert_eq!(typo.kind, IssueKind::UnknownKey);
//! assert_eq!(typo.fix, "did you mean `timeout`?");
//! assert_eq!(typo.location.as_ref().unwrap().line(), Some(5));
//!
//! let delays = err.issue_at("policies.api_call.retry.max_delay").unwrap();
//! assert_eq!(delays.kind, IssueKind::Inconsistent);
//! ```
//!
//! Lookups are cheap: [`Policies::for_operation`] and [`Policies::for_route`] are hash lookups
//! that return a shared [`Policy`].

mod env;
mod error;
mod node;
#[cfg(feature = "http")]
mod operation;
mod parse;
mod resolve;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::CodeTable;

pub use error::{ConfigError, ConfigIssue, IssueKind, SourceLocation};
#[cfg(feature = "http")]
pub use operation::OperationName;
pub use store::{PolicyStore, ReloadReport};

/// The resolved policy of one operation: every field set, inheritance applied.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Policy {
    name: Arc<str>,
    /// `false` makes the operation a kill switch: calls fail fast without reaching the service.
    pub enabled: bool,
    /// Total and per-attempt timeouts.
    pub timeout: TimeoutPolicy,
    /// Retries, backoff and the retry budget.
    pub retry: RetryPolicy,
    /// When to stop calling a failing dependency, and how to probe it again.
    pub circuit_breaker: CircuitBreakerPolicy,
    /// How many calls may be in flight and waiting.
    pub bulkhead: BulkheadPolicy,
}

impl Policy {
    /// The operation's name (`api_call`), or `defaults`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operation's name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// The built-in defaults under another name.
    pub fn builtin(name: impl Into<Arc<str>>) -> Self {
        Policy {
            name: name.into(),
            enabled: true,
            timeout: TimeoutPolicy::default(),
            retry: RetryPolicy::default(),
            circuit_breaker: CircuitBreakerPolicy::default(),
            bulkhead: BulkheadPolicy::default(),
        }
    }

    /// The bulkhead partition this operation uses: `bulkhead.partition`, or the operation name.
    pub fn bulkhead_partition(&self) -> &Arc<str> {
        self.bulkhead.partition.as_ref().unwrap_or(&self.name)
    }
}

/// Timeouts of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeoutPolicy {
    /// The budget for the whole call: every attempt and every backoff. Default 30 s.
    pub total: Duration,
    /// The budget for one attempt; never more than `total`. Default 10 s.
    pub attempt: Duration,
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        TimeoutPolicy {
            total: Duration::from_secs(30),
            attempt: Duration::from_secs(10),
        }
    }
}

/// How the computed backoff delay is randomized, so clients that failed together do not
/// retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// Exactly the exponential delay.
    None,
    /// Uniform in `[0, delay]` (AWS "full jitter"). The default.
    Full,
    /// `delay / 2` plus uniform in `[0, delay / 2]`.
    Equal,
    /// Uniform in `[base_delay, previous_delay * 3]`, capped (AWS "decorrelated jitter").
    Decorrelated,
}

impl FromStr for Jitter {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Jitter::None),
            "full" => Ok(Jitter::Full),
            "equal" => Ok(Jitter::Equal),
            "decorrelated" => Ok(Jitter::Decorrelated),
            _ => Err(()),
        }
    }
}

impl Jitter {
    /// The name used in YAML.
    pub const fn as_str(self) -> &'static str {
        match self {
            Jitter::None => "none",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
        }
    }
}

/// Retries of one operation.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retry). Default 3.
    pub max_retries: u32,
    /// The first backoff delay. Default 100 ms.
    pub base_delay: Duration,
    /// The longest backoff delay, also the cap on a server's retry-after. Default 5 s.
    pub max_delay: Duration,
    /// Growth of the delay per attempt. Default 2.0.
    pub multiplier: f64,
    /// Randomization of the delay. Default [`Jitter::Full`].
    pub jitter: Jitter,
    /// Whether failures of unknown transience are retried. Default `false`.
    pub retry_unknown: bool,
    /// The retry budget shared by all clones of the layer.
    pub budget: BudgetPolicy,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: Jitter::Full,
            retry_unknown: false,
            budget: BudgetPolicy::default(),
        }
    }
}

/// A retry budget: retries may be at most `ratio` of requests over `window`, plus
/// `min_per_second` always allowed, so retries cannot multiply load during an outage.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct BudgetPolicy {
    /// Whether the budget applies. Default `true`.
    pub enabled: bool,
    /// Retries allowed per request, from 0 to 1. Default 0.2.
    pub ratio: f64,
    /// Retries per second always allowed. Default 10.
    pub min_per_second: u32,
    /// How far back requests and retries are counted. Default 10 s.
    pub window: Duration,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        BudgetPolicy {
            enabled: true,
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// What the failure-rate window counts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowType {
    /// The calls of the last `window` (a duration), in buckets. The default.
    Time,
    /// The last `window_size` calls.
    Count,
}

impl FromStr for WindowType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "time" => Ok(WindowType::Time),
            "count" => Ok(WindowType::Count),
            _ => Err(()),
        }
    }
}

/// Circuit breaking of one operation.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerPolicy {
    /// Whether the breaker applies. Default `true`.
    pub enabled: bool,
    /// Trip when this share of counted calls in the window failed, from above 0 to 1.
    /// Default 0.5.
    pub failure_rate: f64,
    /// Trip after this many failures in a row (0 turns the rule off). Default 5.
    pub consecutive_failures: u32,
    /// Calls the window must hold before the rate rule may trip. Default 20.
    pub minimum_calls: u32,
    /// The span of a time window. Default 30 s.
    pub window: Duration,
    /// Time-based or count-based window. Default [`WindowType::Time`].
    pub window_type: WindowType,
    /// The length of a count window, in calls. Default 100.
    pub window_size: u32,
    /// How long the breaker stays open before probing. Default 60 s.
    pub open_timeout: Duration,
    /// Growth of the open time on each trip without a stable close (1.0: no growth).
    /// Default 1.0.
    pub open_timeout_multiplier: f64,
    /// The cap on a grown open time. Default 300 s.
    pub open_timeout_max: Duration,
    /// Concurrent probes allowed while half-open. Default 10.
    pub half_open_max_requests: u32,
    /// Successful probes that close the breaker. Default 3.
    pub success_threshold: u32,
    /// Longest time in half-open before the breaker reopens. Default 60 s.
    pub half_open_max_duration: Duration,
    /// Calls slower than this count toward the slow-call rate; `None` turns the rule off.
    /// Default off.
    pub slow_call_duration: Option<Duration>,
    /// Trip when this share of calls in the window were slow. Default 1.0.
    pub slow_call_rate: f64,
}

impl Default for CircuitBreakerPolicy {
    fn default() -> Self {
        CircuitBreakerPolicy {
            enabled: true,
            failure_rate: 0.5,
            consecutive_failures: 5,
            minimum_calls: 20,
            window: Duration::from_secs(30),
            window_type: WindowType::Time,
            window_size: 100,
            open_timeout: Duration::from_secs(60),
            open_timeout_multiplier: 1.0,
            open_timeout_max: Duration::from_secs(300),
            half_open_max_requests: 10,
            success_threshold: 3,
            half_open_max_duration: Duration::from_secs(60),
            slow_call_duration: None,
            slow_call_rate: 1.0,
        }
    }
}

/// Concurrency limits of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkheadPolicy {
    /// Calls in flight at once. Default 100.
    pub max_concurrent: u32,
    /// Calls waiting for a permit (0: no queue). Default 50.
    pub max_queue: u32,
    /// Longest wait for a permit (0: do not wait). Default 1 s.
    pub max_wait: Duration,
    /// Operations naming the same partition share one bulkhead. Default: the operation's own.
    pub partition: Option<Arc<str>>,
}

impl Default for BulkheadPolicy {
    fn default() -> Self {
        BulkheadPolicy {
            max_concurrent: 100,
            max_queue: 50,
            max_wait: Duration::from_secs(1),
            partition: None,
        }
    }
}

/// Where a server stack takes each request's correlation ID from and where it echoes it: the
/// file's top-level `correlation:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CorrelationPolicy {
    /// Headers an incoming ID is accepted from, in order (lowercase). Default `[x-request-id]`.
    pub headers: Vec<Arc<str>>,
    /// The header the ID is echoed in on the response; it is also read first. Default: the
    /// first of `headers`.
    pub response_header: Option<Arc<str>>,
    /// Whether the trace ID of a W3C `traceparent` is taken as the ID when no ID header is
    /// valid. Default `true`.
    pub trust_traceparent: bool,
}

impl Default for CorrelationPolicy {
    fn default() -> Self {
        CorrelationPolicy {
            headers: vec![Arc::from("x-request-id")],
            response_header: None,
            trust_traceparent: true,
        }
    }
}

/// Routes to one path: a policy for any method and policies for given methods.
#[derive(Clone, Debug, Default, PartialEq)]
struct RouteEntry {
    any_method: Option<Arc<Policy>>,
    by_method: Vec<(Box<str>, Arc<Policy>)>,
}

/// Every operation's policy, the routes to them and the error-code tables of one file.
#[derive(Clone, Debug, PartialEq)]
pub struct Policies {
    defaults: Arc<Policy>,
    operations: BTreeMap<Arc<str>, Arc<Policy>>,
    routes: HashMap<Box<str>, RouteEntry>,
    route_list: Vec<(String, Arc<str>)>,
    error_codes: BTreeMap<String, Arc<CodeTable>>,
    pub(crate) correlation: CorrelationPolicy,
}

impl Default for Policies {
    /// Built-in defaults only: no operations, routes or tables.
    fn default() -> Self {
        Policies {
            defaults: Arc::new(Policy::builtin("defaults")),
            operations: BTreeMap::new(),
            routes: HashMap::new(),
            route_list: Vec::new(),
            error_codes: BTreeMap::new(),
            correlation: CorrelationPolicy::default(),
        }
    }
}

impl Policies {
    /// Parses a policy file's contents. Applies no environment overrides.
    pub fn from_yaml_str(yaml: &str) -> Result<Policies, ConfigError> {
        PolicyLoader::new().load_str(yaml)
    }

    /// Reads a policy file and applies `PALISADE__...` environment overrides.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Policies, ConfigError> {
        PolicyLoader::new().with_process_env().load_path(path)
    }

    /// A loader, to choose where overrides come from.
    pub fn loader() -> PolicyLoader {
        PolicyLoader::new()
    }

    /// The resolved `defaults` section: what an operation without a policy gets.
    pub fn defaults(&self) -> &Arc<Policy> {
        &self.defaults
    }

    /// The policy named `operation`, if the file defines it.
    pub fn get(&self, operation: &str) -> Option<&Arc<Policy>> {
        self.operations.get(operation)
    }

    /// The policy named `operation`, or the defaults.
    pub fn for_operation(&self, operation: &str) -> &Arc<Policy> {
        self.get(operation).unwrap_or(&self.defaults)
    }

    /// The policy a route maps to, if any: `method` and `path` first (`POST /v1/transfers`),
    /// then `path` for any method. `path` is a route template or gRPC method path, compared
    /// exactly.
    pub fn route(&self, method: &str, path: &str) -> Option<&Arc<Policy>> {
        let entry = self.routes.get(path)?;
        entry
            .by_method
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(method))
            .map(|(_, p)| p)
            .or(entry.any_method.as_ref())
    }

    /// The policy a route maps to, or the defaults.
    pub fn for_route(&self, method: &str, path: &str) -> &Arc<Policy> {
        self.route(method, path).unwrap_or(&self.defaults)
    }

    /// Every named operation, by name.
    pub fn operations(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.operations.values()
    }

    /// Every route as written (`"POST /v1/transfers"`) with its operation name, in file order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.route_list.iter().map(|(r, p)| (r.as_str(), &**p))
    }

    /// The error-code table named `name` (`binance`).
    pub fn error_codes(&self, name: &str) -> Option<&Arc<CodeTable>> {
        self.error_codes.get(name)
    }

    /// The `correlation:` section: correlation ID headers for server stacks.
    pub fn correlation(&self) -> &CorrelationPolicy {
        &self.correlation
    }

    /// Every error-code table, by name.
    pub fn error_code_tables(&self) -> impl Iterator<Item = &Arc<CodeTable>> {
        self.error_codes.values()
    }
}

impl fmt::Display for Policy {
    /// One line per concern, for logs and `--print-policies` style output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = humantime::format_duration;
        let r = &self.retry;
        let b = &self.circuit_breaker;
        let k = &self.bulkhead;
        writeln!(
            f,
            "{}{}",
            self.name,
            if self.enabled { "" } else { " (DISABLED)" }
        )?;
        writeln!(
            f,
            "  timeout: total {}, attempt {}",
            d(self.timeout.total),
            d(self.timeout.attempt)
        )?;
        writeln!(
            f,
            "  retry: max {} retries, {}..{} x{} jitter {}, budget {}",
            r.max_retries,
            d(r.base_delay),
            d(r.max_delay),
            r.multiplier,
            r.jitter.as_str(),
            if r.budget.enabled {
                format!(
                    "{}% + {}/s over {}",
                    r.budget.ratio * 100.0,
                    r.budget.min_per_second,
                    d(r.budget.window)
                )
            } else {
                "off".to_owned()
            }
        )?;
        writeln!(
            f,
            "  circuit_breaker: {}trip at {}% of >= {} calls or {} in a row, open {}, {} probes, close after {}",
            if b.enabled { "" } else { "(off) " },
            b.failure_rate * 100.0,
            b.minimum_calls,
            b.consecutive_failures,
            d(b.open_timeout),
            b.half_open_max_requests,
            b.success_threshold
        )?;
        write!(
            f,
            "  bulkhead `{}`: {} in flight, {} queued, wait {}",
            self.bulkhead_partition(),
            k.max_concurrent,
            k.max_queue,
            d(k.max_wait)
        )
    }
}

/// Where environment overrides come from.
#[derive(Clone, Debug, Default)]
enum EnvSource {
    #[default]
    None,
    Process,
    Vars(Vec<(String, String)>),
}

/// Loads policy files, with a choice of environment overrides and size limit.
///
/// ```
/// use palisade::policy::PolicyLoader;
/// use std::time::Duration;
///
/// let policies = PolicyLoader::new()
///     .with_env_vars([("PALISADE__POLICIES__API_CALL__TIMEOUT__TOTAL", "5s")])
///     .load_str("policies:\n  api_call:\n    timeout: { total: 10s, attempt: 2s }\n")
///     .unwrap();
/// assert_eq!(policies.for_operation("api_call").timeout.total, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct PolicyLoader {
    env: EnvSource,
    env_prefix: String,
    max_bytes: usize,
}

impl Default for PolicyLoader {
    fn default() -> Self {
        PolicyLoader::new()
    }
}

impl PolicyLoader {
    /// The largest policy file accepted by default: 1 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 1 << 20;

    /// A loader with no environment overrides.
    pub fn new() -> Self {
        PolicyLoader {
            env: EnvSource::None,
            env_prefix: "PALISADE".to_owned(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }

    /// Applies overrides from the process environment.
    #[must_use]
    pub fn with_process_env(mut self) -> Self {
        self.env = EnvSource::Process;
        self
    }

    /// Applies overrides from these variables instead of the process environment.
    #[must_use]
    pub fn with_env_vars<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.env = EnvSource::Vars(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// The variable prefix (default `PALISADE`, for `PALISADE__...`).
    #[must_use]
    pub fn with_env_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.env_prefix = prefix.into();
        self
    }

    /// The largest input accepted, in bytes.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Loads policies from a string (named `<string>` in errors).
    pub fn load_str(&self, yaml: &str) -> Result<Policies, ConfigError> {
        self.load_named(yaml, "<string>")
    }

    /// Loads policies from a file.
    pub fn load_path(&self, path: impl AsRef<Path>) -> Result<Policies, ConfigError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let fail = |kind, message: String, fix: &str| {
            ConfigError::new(
                &name,
                vec![ConfigIssue {
                    kind,
                    path: String::new(),
                    location: None,
                    message,
                    fix: fix.to_owned(),
                }],
            )
        };
        let meta = std::fs::metadata(path).map_err(|e| {
            fail(
                IssueKind::Io,
                format!("cannot read the file: {e}"),
                "check the path and its permissions",
            )
        })?;
        if meta.len() > self.max_bytes as u64 {
            return Err(fail(
                IssueKind::TooLarge,
                format!(
                    "the file is {} bytes; the limit is {}",
                    meta.len(),
                    self.max_bytes
                ),
                "split the file or raise the limit with PolicyLoader::with_max_bytes",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(
                IssueKind::Io,
                format!("cannot read the file: {e}"),
                "check the path, its permissions and that it is UTF-8",
            )
        })?;
        self.load_named(&text, &name)
    }

    fn load_named(&self, yaml: &str, name: &str) -> Result<Policies, ConfigError> {
        let vars: Vec<(String, String)> = match &self.env {
            EnvSource::None => Vec::new(),
            EnvSource::Process => std::env::vars().collect(),
            EnvSource::Vars(vars) => vars.clone(),
        };
        resolve::load(yaml, name, self.max_bytes, &vars, &self.env_prefix)
            .map_err(|issues| ConfigError::new(name, issues))
    }
}
