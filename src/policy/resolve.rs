//! From a YAML string to resolved [`Policies`]: parse, apply overrides, read every section,
//! follow `extends`, merge field by field, check what only the merged policy can show.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConfigIssue, IssueKind};
use super::node::{Node, Origin, Value};
use super::parse::{self, Issues, PolicyPatch, Section, Set};
use super::{
    BudgetPolicy, BulkheadPolicy, CircuitBreakerPolicy, Policies, Policy, RetryPolicy, RouteEntry,
    TimeoutPolicy, WindowType,
};
use crate::classify::{Classification, CodeEntry, CodeTable};

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Parser input budgets for policy files: far above any real file, far below harm.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 32,
            max_nodes: 100_000,
            max_events: 400_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_total_scalar_bytes: 4 << 20,
            max_documents: 1,
        },
        strict_booleans: true,
        with_snippet: false,
    }
}

pub(crate) fn load(
    yaml: &str,
    name: &str,
    max_bytes: usize,
    vars: &[(String, String)],
    prefix: &str,
) -> Result<Policies, Vec<ConfigIssue>> {
    let _ = name;
    let mut issues = Issues::default();
    if yaml.len() > max_bytes {
        issues.push(
            IssueKind::TooLarge,
            "",
            &Origin::Builtin,
            format!(
                "the policy file is {} bytes; the limit is {max_bytes}",
                yaml.len()
            ),
            "split the file or raise the limit with PolicyLoader::with_max_bytes",
        );
        return Err(issues.0);
    }
    let mut root = if yaml.trim().is_empty() {
        Node {
            value: Value::Null,
            origin: Origin::Builtin,
        }
    } else {
        match serde_saphyr::from_str_with_options::<Node>(yaml, options()) {
            Ok(node) => node,
            Err(e) => {
                let origin = match e.location() {
                    Some(loc) if loc.line() > 0 => Origin::Yaml {
                        line: loc.line() as u32,
                        column: loc.column() as u32,
                    },
                    _ => Origin::Builtin,
                };
                let message = e.to_string();
                let message = message
                    .lines()
                    .next()
                    .unwrap_or("malformed YAML")
                    .to_owned();
                issues.push(
                    IssueKind::Syntax,
                    "",
                    &origin,
                    format!("malformed YAML: {message}"),
                    "check indentation, quoting and that every key appears once",
                );
                return Err(issues.0);
            }
        }
    };
    super::env::apply(&mut root, vars, prefix, &mut issues);
    let policies = read_document(&root, &mut issues);
    if issues.0.is_empty() {
        Ok(policies)
    } else {
        Err(issues.0)
    }
}

fn read_document(root: &Node, issues: &mut Issues) -> Policies {
    let mut out = Policies::default();
    let Some(mut doc) = Section::open(root, "", issues) else {
        return out;
    };

    let defaults = match doc.take("defaults") {
        Some(n) => parse::policy_patch(n, "defaults", Arc::from("defaults"), false, issues),
        None => PolicyPatch::default(),
    };

    // Each policy as written, keyed by name.
    let mut written: BTreeMap<String, PolicyPatch> = BTreeMap::new();
    if let Some(n) = doc.take("policies")
        && let Some(mut section) = Section::open(n, "policies", issues)
    {
        for (key, node) in section.take_all() {
            let path = format!("policies.{}", key.name);
            if !valid_operation_name(&key.name) {
                issues.push(
                    IssueKind::OutOfRange,
                    &path,
                    &key.origin,
                    format!("`{}` is not a valid operation name", key.name),
                    "use 1-64 letters, digits, `_`, `-`, `.` or `:` (it is a metrics label)",
                );
                continue;
            }
            let patch =
                parse::policy_patch(node, &path, Arc::from(key.name.as_str()), true, issues);
            written.insert(key.name.clone(), patch);
        }
        section.finish(issues);
    }

    let resolved_defaults = resolve_policy("defaults", &[&defaults], "defaults", issues);
    out.defaults = Arc::new(resolved_defaults);

    for name in written.keys() {
        let chain = extends_chain(name, &written, issues);
        let mut patches: Vec<&PolicyPatch> = chain.iter().map(|n| &written[n]).collect();
        patches.push(&defaults);
        let policy = resolve_policy(name, &patches, &format!("policies.{name}"), issues);
        out.operations
            .insert(Arc::from(name.as_str()), Arc::new(policy));
    }

    if let Some(n) = doc.take("routes") {
        read_routes(n, &mut out, issues);
    }
    if let Some(n) = doc.take("error_codes") {
        read_error_codes(n, &mut out, issues);
    }
    if let Some(n) = doc.take("correlation") {
        out.correlation = parse::correlation(n, issues);
    }
    doc.finish(issues);
    out
}

fn valid_operation_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// `name`, then the policy it extends, and so on. An unknown target or a cycle is reported
/// (a cycle once, at the alphabetically first policy in it) and ends the chain.
fn extends_chain(
    name: &str,
    written: &BTreeMap<String, PolicyPatch>,
    issues: &mut Issues,
) -> Vec<String> {
    let mut chain = vec![name.to_owned()];
    let mut current = name;
    while let Some(ext) = &written[current].extends {
        let target = ext.value.as_str();
        let path = format!("policies.{current}.extends");
        if !written.contains_key(target) {
            // Reported only while resolving the policy that wrote it, not its descendants.
            if current == name {
                let known: Vec<&str> = written.keys().map(String::as_str).collect();
                let fix = match parse::did_you_mean(target, &known) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!(
                        "define `policies.{target}` or extend one of: {}",
                        known.join(", ")
                    ),
                };
                issues.push(
                    IssueKind::UnknownReference,
                    path,
                    &ext.origin,
                    format!("extends `{target}`, which is not a policy in this file"),
                    fix,
                );
            }
            break;
        }
        if let Some(at) = chain.iter().position(|n| n == target) {
            let cycle = &chain[at..];
            let first = cycle.iter().min().expect("a cycle has members");
            // Report once: while resolving the alphabetically first member of the cycle.
            if cycle.iter().any(|n| n == name) && first == name {
                let mut shown: Vec<&str> = cycle.iter().map(String::as_str).collect();
                shown.push(target);
                let origin = written[first].extends.as_ref().map(|e| e.origin.clone());
                issues.push(
                    IssueKind::Cycle,
                    format!("policies.{first}.extends"),
                    &origin.unwrap_or(Origin::Builtin),
                    format!("extends forms a cycle: {}", shown.join(" -> ")),
                    "remove `extends` from one policy in the cycle",
                );
            }
            break;
        }
        chain.push(target.to_owned());
        current = target;
    }
    chain
}

/// The value of a field from the most specific patch that sets it, with that patch's rank
/// (0 = the policy itself; `patches.len()` = built in).
fn pick<T: Clone>(
    patches: &[&PolicyPatch],
    field: impl Fn(&PolicyPatch) -> &Option<Set<T>>,
    builtin: T,
) -> Picked<T> {
    for (rank, p) in patches.iter().enumerate() {
        if let Some(set) = field(p) {
            return Picked {
                value: set.value.clone(),
                rank,
                set: Some(set.clone()),
            };
        }
    }
    Picked {
        value: builtin,
        rank: patches.len(),
        set: None,
    }
}

struct Picked<T> {
    value: T,
    rank: usize,
    set: Option<Set<T>>,
}

impl<T> Picked<T> {
    fn origin(&self) -> Origin {
        self.set
            .as_ref()
            .map_or(Origin::Builtin, |s| s.origin.clone())
    }

    /// Where the value came from, for messages: `defaults.retry.base_delay`, or `built in`.
    fn source(&self) -> String {
        self.set.as_ref().map_or_else(
            || "the built-in default".to_owned(),
            |s| format!("`{}`", s.path),
        )
    }
}

fn resolve_policy(name: &str, patches: &[&PolicyPatch], path: &str, issues: &mut Issues) -> Policy {
    let t = TimeoutPolicy::default();
    let r = RetryPolicy::default();
    let g = BudgetPolicy::default();
    let c = CircuitBreakerPolicy::default();
    let k = BulkheadPolicy::default();

    let enabled = pick(patches, |p| &p.enabled, true).value;

    let total = pick(patches, |p| &p.timeout.total, t.total);
    let mut attempt = pick(patches, |p| &p.timeout.attempt, t.attempt);
    if attempt.value > total.value {
        // Written at least as specifically as the total, a longer attempt limit is a mistake
        // (reported by the section that wrote one of the two). Inherited from further away
        // (`total: 2s` under `defaults.timeout.attempt: 10s`), it is cut to the total.
        if attempt.rank <= total.rank && (attempt.rank == 0 || total.rank == 0) {
            issues.push(
                IssueKind::Inconsistent,
                format!("{path}.timeout.attempt"),
                &attempt.origin(),
                format!(
                    "attempt timeout {} is longer than the total timeout {} (from {})",
                    fmt_d(attempt.value),
                    fmt_d(total.value),
                    total.source()
                ),
                format!(
                    "lower attempt to at most {}, or raise total",
                    fmt_d(total.value)
                ),
            );
        }
        attempt.value = total.value;
    }

    let base_delay = pick(patches, |p| &p.retry.base_delay, r.base_delay);
    let max_delay = pick(patches, |p| &p.retry.max_delay, r.max_delay);
    if max_delay.value < base_delay.value && (max_delay.rank == 0 || base_delay.rank == 0) {
        issues.push(
            IssueKind::Inconsistent,
            format!("{path}.retry.max_delay"),
            &max_delay.origin(),
            format!(
                "max_delay {} is shorter than base_delay {} (from {})",
                fmt_d(max_delay.value),
                fmt_d(base_delay.value),
                base_delay.source()
            ),
            format!(
                "raise max_delay to at least {} or lower base_delay",
                fmt_d(base_delay.value)
            ),
        );
    }

    let open_timeout = pick(patches, |p| &p.circuit_breaker.open_timeout, c.open_timeout);
    let open_timeout_max = pick(
        patches,
        |p| &p.circuit_breaker.open_timeout_max,
        c.open_timeout_max,
    );
    if open_timeout_max.value < open_timeout.value
        && (open_timeout_max.rank == 0 || open_timeout.rank == 0)
    {
        issues.push(
            IssueKind::Inconsistent,
            format!("{path}.circuit_breaker.open_timeout_max"),
            &open_timeout_max.origin(),
            format!(
                "open_timeout_max {} is shorter than open_timeout {} (from {})",
                fmt_d(open_timeout_max.value),
                fmt_d(open_timeout.value),
                open_timeout.source()
            ),
            format!(
                "raise open_timeout_max to at least {}",
                fmt_d(open_timeout.value)
            ),
        );
    }

    let window_type = pick(patches, |p| &p.circuit_breaker.window_type, c.window_type);
    let window_size = pick(patches, |p| &p.circuit_breaker.window_size, c.window_size);
    let minimum_calls = pick(
        patches,
        |p| &p.circuit_breaker.minimum_calls,
        c.minimum_calls,
    );
    if window_type.value == WindowType::Count
        && minimum_calls.value > window_size.value
        && (minimum_calls.rank == 0 || window_size.rank == 0 || window_type.rank == 0)
    {
        issues.push(
            IssueKind::Inconsistent,
            format!("{path}.circuit_breaker.minimum_calls"),
            &minimum_calls.origin(),
            format!(
                "minimum_calls {} exceeds the count window of {} calls (from {}), so the failure-rate rule could never trip",
                minimum_calls.value,
                window_size.value,
                window_size.source()
            ),
            format!("lower minimum_calls to at most {}", window_size.value),
        );
    }

    Policy {
        name: Arc::from(name),
        enabled,
        timeout: TimeoutPolicy {
            total: total.value,
            attempt: attempt.value,
        },
        retry: RetryPolicy {
            max_retries: pick(patches, |p| &p.retry.max_retries, r.max_retries).value,
            base_delay: base_delay.value,
            max_delay: max_delay.value,
            multiplier: pick(patches, |p| &p.retry.multiplier, r.multiplier).value,
            jitter: pick(patches, |p| &p.retry.jitter, r.jitter).value,
            retry_unknown: pick(patches, |p| &p.retry.retry_unknown, r.retry_unknown).value,
            budget: BudgetPolicy {
                enabled: pick(patches, |p| &p.budget.enabled, g.enabled).value,
                ratio: pick(patches, |p| &p.budget.ratio, g.ratio).value,
                min_per_second: pick(patches, |p| &p.budget.min_per_second, g.min_per_second).value,
                window: pick(patches, |p| &p.budget.window, g.window).value,
            },
        },
        circuit_breaker: CircuitBreakerPolicy {
            enabled: pick(patches, |p| &p.circuit_breaker.enabled, c.enabled).value,
            failure_rate: pick(patches, |p| &p.circuit_breaker.failure_rate, c.failure_rate).value,
            consecutive_failures: pick(
                patches,
                |p| &p.circuit_breaker.consecutive_failures,
                c.consecutive_failures,
            )
            .value,
            minimum_calls: minimum_calls.value,
            window: pick(patches, |p| &p.circuit_breaker.window, c.window).value,
            window_type: window_type.value,
            window_size: window_size.value,
            open_timeout: open_timeout.value,
            open_timeout_multiplier: pick(
                patches,
                |p| &p.circuit_breaker.open_timeout_multiplier,
                c.open_timeout_multiplier,
            )
            .value,
            open_timeout_max: open_timeout_max.value,
            half_open_max_requests: pick(
                patches,
                |p| &p.circuit_breaker.half_open_max_requests,
                c.half_open_max_requests,
            )
            .value,
            success_threshold: pick(
                patches,
                |p| &p.circuit_breaker.success_threshold,
                c.success_threshold,
            )
            .value,
            half_open_max_duration: pick(
                patches,
                |p| &p.circuit_breaker.half_open_max_duration,
                c.half_open_max_duration,
            )
            .value,
            slow_call_duration: pick(
                patches,
                |p| &p.circuit_breaker.slow_call_duration,
                c.slow_call_duration,
            )
            .value,
            slow_call_rate: pick(
                patches,
                |p| &p.circuit_breaker.slow_call_rate,
                c.slow_call_rate,
            )
            .value,
        },
        bulkhead: BulkheadPolicy {
            max_concurrent: pick(patches, |p| &p.bulkhead.max_concurrent, k.max_concurrent).value,
            max_queue: pick(patches, |p| &p.bulkhead.max_queue, k.max_queue).value,
            max_wait: pick(patches, |p| &p.bulkhead.max_wait, k.max_wait).value,
            partition: pick(patches, |p| &p.bulkhead.partition, Arc::<str>::from(""))
                .set
                .map(|s| s.value),
        },
    }
}

fn fmt_d(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn read_routes(node: &Node, out: &mut Policies, issues: &mut Issues) {
    let Some(mut section) = Section::open(node, "routes", issues) else {
        return;
    };
    let names: Vec<&str> = out.operations.keys().map(|k| &**k).collect();
    let mut routes: HashMap<Box<str>, RouteEntry> = HashMap::new();
    let mut list = Vec::new();
    for (key, value) in section.take_all() {
        let path = format!("routes.{}", key.name);
        let route = key.name.trim();
        let (method, route_path) = match route.split_once(' ') {
            Some((m, p)) => (Some(m.trim()), p.trim()),
            None => (None, route),
        };
        if let Some(m) = method
            && !METHODS.contains(&m)
        {
            let fix = match parse::did_you_mean(&m.to_ascii_uppercase(), METHODS) {
                Some(near) => format!("did you mean `{near} {route_path}`?"),
                None => format!("use one of {} before the path", METHODS.join(", ")),
            };
            issues.push(
                IssueKind::OutOfRange,
                &path,
                &key.origin,
                format!("`{m}` is not an HTTP method"),
                fix,
            );
            continue;
        }
        if !route_path.starts_with('/') || route_path.contains(char::is_whitespace) {
            issues.push(
                IssueKind::OutOfRange,
                &path,
                &key.origin,
                format!("`{route_path}` is not a route path"),
                "write `METHOD /path` or `/path` (a route template or gRPC method path, starting with `/`)",
            );
            continue;
        }
        let Value::Str(target) = &value.value else {
            issues.push(
                IssueKind::WrongType,
                &path,
                &value.origin,
                format!("expected a policy name, found {}", value.value.kind()),
                "write `\"POST /v1/transfers\": database_operation`",
            );
            continue;
        };
        let Some(policy) = out.operations.get(target.as_str()) else {
            let fix = match parse::did_you_mean(target, &names) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "define `policies.{target}` or route to one of: {}",
                    names.join(", ")
                ),
            };
            issues.push(
                IssueKind::UnknownReference,
                &path,
                &value.origin,
                format!("routes to `{target}`, which is not a policy in this file"),
                fix,
            );
            continue;
        };
        let entry = routes.entry(Box::from(route_path)).or_default();
        match method {
            Some(m) => entry.by_method.push((Box::from(m), policy.clone())),
            None => entry.any_method = Some(policy.clone()),
        }
        list.push((route.to_owned(), policy.name_arc().clone()));
    }
    section.finish(issues);
    out.routes = routes;
    out.route_list = list;
}

fn read_error_codes(node: &Node, out: &mut Policies, issues: &mut Issues) {
    let Some(mut tables) = Section::open(node, "error_codes", issues) else {
        return;
    };
    for (table_key, table_node) in tables.take_all() {
        let table_path = format!("error_codes.{}", table_key.name);
        let Some(mut entries) = Section::open(table_node, &table_path, issues) else {
            continue;
        };
        let mut table = CodeTable::new(table_key.name.clone());
        for (code_key, code_node) in entries.take_all() {
            let path = format!("{table_path}.{}", code_key.name);
            let Some(e) = parse::code_entry(code_node, &path, issues) else {
                continue;
            };
            let mut classification = Classification::new(e.transience, e.category, e.severity, "");
            classification.retry_after = e.retry_after;
            table.insert_entry(
                &code_key.name,
                CodeEntry {
                    classification,
                    message: e.message,
                    suggestion: e.suggestion,
                },
            );
        }
        entries.finish(issues);
        out.error_codes
            .insert(table_key.name.clone(), Arc::new(table));
    }
    tables.finish(issues);
}
