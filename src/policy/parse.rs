//! Walks the YAML tree into per-section patches, collecting every problem on the way.
//!
//! A patch holds only what a section wrote (every field optional), with where it was written.
//! Patches merge field by field in `resolve` (the most specific section that set a field wins); checks on a single value (types, ranges) happen
//! here, where the value was written, so a bad value in `defaults` is reported once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConfigIssue, IssueKind};
use super::node::{Key, Node, Origin, Value};
use super::{Jitter, WindowType};
use crate::classify::{Category, Severity, Transience};

/// Every problem found so far.
#[derive(Default)]
pub(crate) struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    pub fn push(
        &mut self,
        kind: IssueKind,
        path: impl Into<String>,
        origin: &Origin,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0
            .push(ConfigIssue::new(kind, path, origin, message, fix));
    }
}

/// A value a section set, where it was written, and by which section.
#[derive(Clone, Debug)]
pub(crate) struct Set<T> {
    pub value: T,
    pub origin: Origin,
    pub section: Arc<str>,
    pub path: String,
}

/// Declares a patch struct: every field an `Option<Set<T>>`, unset unless the section wrote it.
macro_rules! patch {
    ($name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        #[derive(Clone, Debug, Default)]
        pub(crate) struct $name {
            $(pub $field: Option<Set<$ty>>,)*
        }
    };
}

patch!(TimeoutPatch {
    total: Duration,
    attempt: Duration,
});

patch!(RetryPatch {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: Jitter,
    retry_unknown: bool,
});

patch!(BudgetPatch {
    enabled: bool,
    ratio: f64,
    min_per_second: u32,
    window: Duration,
});

patch!(BreakerPatch {
    enabled: bool,
    failure_rate: f64,
    consecutive_failures: u32,
    minimum_calls: u32,
    window: Duration,
    window_type: WindowType,
    window_size: u32,
    open_timeout: Duration,
    open_timeout_multiplier: f64,
    open_timeout_max: Duration,
    half_open_max_requests: u32,
    success_threshold: u32,
    half_open_max_duration: Duration,
    slow_call_duration: Option<Duration>,
    slow_call_rate: f64,
});

patch!(BulkheadPatch {
    max_concurrent: u32,
    max_queue: u32,
    max_wait: Duration,
    partition: Arc<str>,
});

/// Everything one section (`defaults` or one policy) wrote.
#[derive(Clone, Debug, Default)]
pub(crate) struct PolicyPatch {
    pub enabled: Option<Set<bool>>,
    pub extends: Option<Set<String>>,
    pub timeout: TimeoutPatch,
    pub retry: RetryPatch,
    pub budget: BudgetPatch,
    pub circuit_breaker: BreakerPatch,
    pub bulkhead: BulkheadPatch,
}

/// The keys of a mapping, read one by one; what is left unread is reported as unknown.
pub(crate) struct Section<'a> {
    entries: &'a [(Key, Node)],
    path: String,
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    /// Opens `node` as a section; a null node is an empty section, anything else but a
    /// mapping is reported.
    pub fn open(node: &'a Node, path: impl Into<String>, issues: &mut Issues) -> Option<Self> {
        let path = path.into();
        let entries: &'a [(Key, Node)] = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            other => {
                issues.push(
                    IssueKind::WrongType,
                    &path,
                    &node.origin,
                    format!("expected a section (mapping), found {}", other.kind()),
                    format!(
                        "write `{}:` followed by indented `key: value` lines",
                        leaf(&path)
                    ),
                );
                return None;
            }
        };
        Some(Section {
            used: vec![false; entries.len()],
            entries,
            path,
            known: Vec::new(),
        })
    }

    /// The path of a field of this section.
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// The value of a known key, if the section has it.
    pub fn take(&mut self, key: &'static str) -> Option<&'a Node> {
        self.known.push(key);
        let at = self.entries.iter().position(|(k, _)| k.name == key)?;
        self.used[at] = true;
        Some(&self.entries[at].1)
    }

    /// Every entry, for sections whose keys are names the user chose (`policies`, `routes`).
    pub fn take_all(&mut self) -> &'a [(Key, Node)] {
        self.used.iter_mut().for_each(|u| *u = true);
        self.entries
    }

    /// Reports every key that was never taken, with the closest known key as a suggestion.
    pub fn finish(self, issues: &mut Issues) {
        for ((key, _), used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let fix = match did_you_mean(&key.name, &self.known) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("known keys here: {}", self.known.join(", ")),
            };
            let path = if self.path.is_empty() {
                key.name.clone()
            } else {
                format!("{}.{}", self.path, key.name)
            };
            issues.push(
                IssueKind::UnknownKey,
                path,
                &key.origin,
                format!("unknown key `{}`", key.name),
                fix,
            );
        }
    }
}

/// The known name closest to `typed`, if one is close enough to be a typo.
pub(crate) fn did_you_mean<'k>(typed: &str, known: &[&'k str]) -> Option<&'k str> {
    let typed = typed.to_ascii_lowercase();
    known
        .iter()
        .map(|k| {
            (
                strsim::damerau_levenshtein(&typed, &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

fn wrong_type(issues: &mut Issues, path: &str, node: &Node, expected: &str, fix: String) {
    issues.push(
        IssueKind::WrongType,
        path,
        &node.origin,
        format!("expected {expected}, found {}", node.value.kind()),
        fix,
    );
}

/// Reads values of a section into `Set`s tagged with the section that wrote them.
pub(crate) struct Reader<'i> {
    pub issues: &'i mut Issues,
    pub section: Arc<str>,
}

impl Reader<'_> {
    fn set<T>(&self, value: T, node: &Node, path: &str) -> Set<T> {
        Set {
            value,
            origin: node.origin.clone(),
            section: self.section.clone(),
            path: path.to_owned(),
        }
    }

    /// A duration in humantime form (`250ms`, `1m30s`); zero only when `allow_zero`.
    pub fn duration(&mut self, node: &Node, path: &str, allow_zero: bool) -> Option<Set<Duration>> {
        let key = leaf(path);
        let text = match &node.value {
            Value::Str(s) => s.trim(),
            Value::Int(0) if allow_zero => return Some(self.set(Duration::ZERO, node, path)),
            Value::Int(n) => {
                wrong_type(
                    self.issues,
                    path,
                    node,
                    "a duration with a unit",
                    format!("add a unit, e.g. `{key}: {n}ms` or `{key}: {n}s`"),
                );
                return None;
            }
            _ => {
                wrong_type(
                    self.issues,
                    path,
                    node,
                    "a duration",
                    format!("write a duration such as `{key}: 250ms` or `{key}: 1m30s`"),
                );
                return None;
            }
        };
        if text.starts_with('-') {
            self.issues.push(
                IssueKind::OutOfRange,
                path,
                &node.origin,
                format!("`{text}` is negative"),
                format!("use a positive duration such as `{key}: 1s`"),
            );
            return None;
        }
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.issues.push(
                    IssueKind::OutOfRange,
                    path,
                    &node.origin,
                    format!("`{text}` is zero, and {key} must be longer than zero"),
                    format!("use a positive duration such as `{key}: 1s`"),
                );
                None
            }
            Ok(d) => Some(self.set(d, node, path)),
            Err(e) => {
                self.issues.push(
                    IssueKind::WrongType,
                    path,
                    &node.origin,
                    format!("`{text}` is not a duration ({e})"),
                    "use a number and a unit: ms, s, m, h (e.g. `250ms`, `1m30s`)".to_owned(),
                );
                None
            }
        }
    }

    /// A duration, or `off` / null for none.
    pub fn optional_duration(&mut self, node: &Node, path: &str) -> Option<Set<Option<Duration>>> {
        match &node.value {
            Value::Null => Some(self.set(None, node, path)),
            Value::Str(s) if s.trim().eq_ignore_ascii_case("off") => {
                Some(self.set(None, node, path))
            }
            _ => {
                let d = self.duration(node, path, false)?;
                Some(Set {
                    value: Some(d.value),
                    origin: d.origin,
                    section: d.section,
                    path: d.path,
                })
            }
        }
    }

    /// A whole number in `min..=max`.
    pub fn count(&mut self, node: &Node, path: &str, min: u32, max: u32) -> Option<Set<u32>> {
        let key = leaf(path);
        let n = match &node.value {
            Value::Int(n) => *n,
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => *f as i64,
            _ => {
                wrong_type(
                    self.issues,
                    path,
                    node,
                    "a whole number",
                    format!("write a number such as `{key}: {}`", min.max(1)),
                );
                return None;
            }
        };
        if n < i64::from(min) || n > i64::from(max) {
            let what = if n < 0 {
                "negative"
            } else if n == 0 {
                "zero"
            } else if n < i64::from(min) {
                "too small"
            } else {
                "too large"
            };
            self.issues.push(
                IssueKind::OutOfRange,
                path,
                &node.origin,
                format!("{key} is {what} ({n}); it must be between {min} and {max}"),
                format!("set {key} to a whole number from {min} to {max}"),
            );
            return None;
        }
        Some(self.set(n as u32, node, path))
    }

    /// A number in `lo..=hi`, or `(lo, hi]` when `lo_exclusive`.
    pub fn number(
        &mut self,
        node: &Node,
        path: &str,
        lo: f64,
        lo_exclusive: bool,
        hi: f64,
    ) -> Option<Set<f64>> {
        let key = leaf(path);
        let x = match &node.value {
            Value::Int(n) => *n as f64,
            Value::Float(f) => *f,
            _ => {
                wrong_type(
                    self.issues,
                    path,
                    node,
                    "a number",
                    format!("write a number such as `{key}: {hi}`"),
                );
                return None;
            }
        };
        let below = if lo_exclusive { x <= lo } else { x < lo };
        if !x.is_finite() || below || x > hi {
            let range = if lo_exclusive {
                format!("greater than {lo} and at most {hi}")
            } else {
                format!("between {lo} and {hi}")
            };
            self.issues.push(
                IssueKind::OutOfRange,
                path,
                &node.origin,
                format!("{key} is {x}; it must be {range}"),
                format!("set {key} to a number {range}"),
            );
            return None;
        }
        Some(self.set(x, node, path))
    }

    /// `true` or `false`.
    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<Set<bool>> {
        match &node.value {
            Value::Bool(b) => Some(self.set(*b, node, path)),
            _ => {
                let key = leaf(path);
                wrong_type(
                    self.issues,
                    path,
                    node,
                    "true or false",
                    format!("write `{key}: true` or `{key}: false`"),
                );
                None
            }
        }
    }

    /// A non-empty string.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<Set<String>> {
        match &node.value {
            Value::Str(s) if !s.trim().is_empty() => {
                Some(self.set(s.trim().to_owned(), node, path))
            }
            _ => {
                let key = leaf(path);
                wrong_type(
                    self.issues,
                    path,
                    node,
                    "a name",
                    format!("write a name, e.g. `{key}: api_call`"),
                );
                None
            }
        }
    }

    /// One of a fixed set of names.
    pub fn label<T: FromStr>(
        &mut self,
        node: &Node,
        path: &str,
        names: &[&'static str],
    ) -> Option<Set<T>> {
        let key = leaf(path);
        let text = match &node.value {
            Value::Str(s) => s.trim(),
            _ => {
                wrong_type(
                    self.issues,
                    path,
                    node,
                    &format!("one of: {}", names.join(", ")),
                    format!("write e.g. `{key}: {}`", names[0]),
                );
                return None;
            }
        };
        match text.parse::<T>() {
            Ok(v) => Some(self.set(v, node, path)),
            Err(_) => {
                let fix = match did_you_mean(text, names) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("use one of: {}", names.join(", ")),
                };
                self.issues.push(
                    IssueKind::WrongType,
                    path,
                    &node.origin,
                    format!("`{text}` is not a valid {key}"),
                    fix,
                );
                None
            }
        }
    }
}

const TRANSIENCE_NAMES: &[&str] = &["transient", "persistent", "unknown"];
const CATEGORY_NAMES: &[&str] = &[
    "system",
    "application",
    "database",
    "network",
    "security",
    "business",
    "external",
    "user",
];
const SEVERITY_NAMES: &[&str] = &["critical", "high", "medium", "low", "info"];
const JITTER_NAMES: &[&str] = &["none", "full", "equal", "decorrelated"];
const WINDOW_TYPE_NAMES: &[&str] = &["time", "count"];

/// Upper bounds that catch typos (`max_retries: 3000`) without getting in anyone's way.
const MAX_RETRIES: u32 = 100;
const MAX_LIMIT: u32 = 1_000_000;
/// The circuit breaker keeps probes in flight and probe successes in 14-bit fields of its
/// state word, so `half_open_max_requests` and `success_threshold` stop at 2^14 - 1.
const MAX_PROBES: u32 = (1 << 14) - 1;

/// Reads key `field` of section `s` with reader method `read` (and its extra arguments) into
/// `patch.field`, when the section has it: one line per key.
macro_rules! read {
    ($s:ident, $r:ident, $patch:ident . $field:ident = $read:ident($($arg:expr),*)) => {
        if let Some(n) = $s.take(stringify!($field)) {
            $patch.$field = $r.$read(n, &$s.child(stringify!($field)) $(, $arg)*);
        }
    };
}

/// Reads a policy section (`defaults` or `policies.NAME`).
pub(crate) fn policy_patch(
    node: &Node,
    path: &str,
    section: Arc<str>,
    allow_extends: bool,
    issues: &mut Issues,
) -> PolicyPatch {
    let mut patch = PolicyPatch::default();
    let Some(mut s) = Section::open(node, path, issues) else {
        return patch;
    };
    let mut r = Reader { issues, section };

    read!(s, r, patch.enabled = boolean());
    if allow_extends && let Some(n) = s.take("extends") {
        patch.extends = r.string(n, &s.child("extends"));
    }
    if let Some(n) = s.take("timeout") {
        patch.timeout = timeout_patch(n, &s.child("timeout"), &mut r);
    }
    if let Some(n) = s.take("retry") {
        (patch.retry, patch.budget) = retry_patch(n, &s.child("retry"), &mut r);
    }
    if let Some(n) = s.take("circuit_breaker") {
        patch.circuit_breaker = breaker_patch(n, &s.child("circuit_breaker"), &mut r);
    }
    if let Some(n) = s.take("bulkhead") {
        patch.bulkhead = bulkhead_patch(n, &s.child("bulkhead"), &mut r);
    }
    s.finish(r.issues);
    patch
}

fn timeout_patch(node: &Node, path: &str, r: &mut Reader<'_>) -> TimeoutPatch {
    let mut p = TimeoutPatch::default();
    let Some(mut s) = Section::open(node, path, r.issues) else {
        return p;
    };
    read!(s, r, p.total = duration(false));
    read!(s, r, p.attempt = duration(false));
    s.finish(r.issues);
    p
}

fn retry_patch(node: &Node, path: &str, r: &mut Reader<'_>) -> (RetryPatch, BudgetPatch) {
    let mut p = RetryPatch::default();
    let mut b = BudgetPatch::default();
    let Some(mut s) = Section::open(node, path, r.issues) else {
        return (p, b);
    };
    read!(s, r, p.max_retries = count(0, MAX_RETRIES));
    read!(s, r, p.base_delay = duration(false));
    read!(s, r, p.max_delay = duration(false));
    read!(s, r, p.multiplier = number(1.0, false, 100.0));
    read!(s, r, p.jitter = label(JITTER_NAMES));
    read!(s, r, p.retry_unknown = boolean());
    if let Some(n) = s.take("budget") {
        b = budget_patch(n, &s.child("budget"), r);
    }
    s.finish(r.issues);
    (p, b)
}

fn budget_patch(node: &Node, path: &str, r: &mut Reader<'_>) -> BudgetPatch {
    let mut p = BudgetPatch::default();
    let Some(mut s) = Section::open(node, path, r.issues) else {
        return p;
    };
    read!(s, r, p.enabled = boolean());
    read!(s, r, p.ratio = number(0.0, false, 1.0));
    read!(s, r, p.min_per_second = count(0, MAX_LIMIT));
    read!(s, r, p.window = duration(false));
    s.finish(r.issues);
    p
}

fn breaker_patch(node: &Node, path: &str, r: &mut Reader<'_>) -> BreakerPatch {
    let mut p = BreakerPatch::default();
    let Some(mut s) = Section::open(node, path, r.issues) else {
        return p;
    };
    read!(s, r, p.enabled = boolean());
    read!(s, r, p.failure_rate = number(0.0, true, 1.0));
    read!(s, r, p.consecutive_failures = count(0, MAX_LIMIT));
    read!(s, r, p.minimum_calls = count(1, MAX_LIMIT));
    read!(s, r, p.window = duration(false));
    read!(s, r, p.window_type = label(WINDOW_TYPE_NAMES));
    read!(s, r, p.window_size = count(1, MAX_LIMIT));
    read!(s, r, p.open_timeout = duration(false));
    read!(s, r, p.open_timeout_multiplier = number(1.0, false, 100.0));
    read!(s, r, p.open_timeout_max = duration(false));
    read!(s, r, p.half_open_max_requests = count(1, MAX_PROBES));
    read!(s, r, p.success_threshold = count(1, MAX_PROBES));
    read!(s, r, p.half_open_max_duration = duration(false));
    read!(s, r, p.slow_call_duration = optional_duration());
    read!(s, r, p.slow_call_rate = number(0.0, true, 1.0));
    s.finish(r.issues);
    p
}

fn bulkhead_patch(node: &Node, path: &str, r: &mut Reader<'_>) -> BulkheadPatch {
    let mut p = BulkheadPatch::default();
    let Some(mut s) = Section::open(node, path, r.issues) else {
        return p;
    };
    read!(s, r, p.max_concurrent = count(1, MAX_LIMIT));
    read!(s, r, p.max_queue = count(0, MAX_LIMIT));
    read!(s, r, p.max_wait = duration(true));
    if let Some(n) = s.take("partition") {
        p.partition = r.string(n, &s.child("partition")).map(|set| Set {
            value: Arc::from(set.value),
            origin: set.origin,
            section: set.section,
            path: set.path,
        });
    }
    s.finish(r.issues);
    p
}

/// One entry of an `error_codes` table, as written.
pub(crate) struct CodeEntryPatch {
    pub transience: Transience,
    pub category: Category,
    pub severity: Severity,
    pub retry_after: Option<Duration>,
    pub message: Option<String>,
    pub suggestion: Option<String>,
}

/// Reads `error_codes.TABLE.CODE`.
pub(crate) fn code_entry(node: &Node, path: &str, issues: &mut Issues) -> Option<CodeEntryPatch> {
    let mut s = Section::open(node, path, issues)?;
    let mut r = Reader {
        issues,
        section: Arc::from("error_codes"),
    };
    let mut missing = Vec::new();
    let transience = match s.take("transience") {
        Some(n) => r.label::<Transience>(n, &s.child("transience"), TRANSIENCE_NAMES),
        None => {
            missing.push("transience");
            None
        }
    };
    let category = match s.take("category") {
        Some(n) => r.label::<Category>(n, &s.child("category"), CATEGORY_NAMES),
        None => {
            missing.push("category");
            None
        }
    };
    let severity = match s.take("severity") {
        Some(n) => r.label::<Severity>(n, &s.child("severity"), SEVERITY_NAMES),
        None => Some(Set {
            value: Severity::Medium,
            origin: Origin::Builtin,
            section: r.section.clone(),
            path: String::new(),
        }),
    };
    let retry_after = s
        .take("retry_after")
        .map(|n| r.duration(n, &s.child("retry_after"), true));
    let message = s.take("message").map(|n| r.string(n, &s.child("message")));
    let suggestion = s
        .take("suggestion")
        .map(|n| r.string(n, &s.child("suggestion")));
    for field in &missing {
        r.issues.push(
            IssueKind::WrongType,
            s.child(field),
            &node.origin,
            format!("error code entry has no `{field}`"),
            format!(
                "add `{field}: {}`",
                if *field == "transience" {
                    "transient"
                } else {
                    "external"
                }
            ),
        );
    }
    s.finish(r.issues);
    Some(CodeEntryPatch {
        transience: transience?.value,
        category: category?.value,
        severity: severity?.value,
        retry_after: match retry_after {
            Some(d) => Some(d?.value),
            None => None,
        },
        message: match message {
            Some(m) => Some(m?.value),
            None => None,
        },
        suggestion: match suggestion {
            Some(m) => Some(m?.value),
            None => None,
        },
    })
}

/// Reads the top-level `correlation:` section: header names are checked here (lowercase
/// HTTP token characters), so the stack can turn them into header names without failing.
pub(crate) fn correlation(node: &Node, issues: &mut Issues) -> super::CorrelationPolicy {
    let mut out = super::CorrelationPolicy::default();
    let Some(mut s) = Section::open(node, "correlation", issues) else {
        return out;
    };
    let mut r = Reader {
        issues,
        section: Arc::from("correlation"),
    };
    if let Some(n) = s.take("headers") {
        let path = s.child("headers");
        match &n.value {
            Value::Seq(items) if !items.is_empty() => {
                let names: Vec<_> = (items.iter().enumerate())
                    .filter_map(|(i, item)| header_name(item, &format!("{path}.{i}"), &mut r))
                    .collect();
                if names.len() == items.len() {
                    out.headers = names;
                }
            }
            _ => wrong_type(
                r.issues,
                &path,
                n,
                "a list of header names",
                "write `headers: [x-request-id, x-correlation-id]`".into(),
            ),
        }
    }
    if let Some(n) = s.take("response_header") {
        out.response_header = header_name(n, &s.child("response_header"), &mut r);
    }
    if let Some(b) = s.take("trust_traceparent") {
        let b = r.boolean(b, &s.child("trust_traceparent"));
        out.trust_traceparent = b.map_or(out.trust_traceparent, |b| b.value);
    }
    s.finish(r.issues);
    out
}

/// A header name: 1 to 64 lowercase letters, digits or `-` (HTTP/2 requires lowercase names).
fn header_name(node: &Node, path: &str, r: &mut Reader<'_>) -> Option<Arc<str>> {
    let name = r.string(node, path)?.value.to_ascii_lowercase();
    let ok = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        r.issues.push(
            IssueKind::OutOfRange,
            path,
            &node.origin,
            format!("`{name}` is not a header name"),
            "use letters, digits and `-`, e.g. `x-request-id`",
        );
        return None;
    }
    Some(Arc::from(name))
}
