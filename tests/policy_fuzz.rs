//! The loader never panics: arbitrary text, and arbitrary documents built from the policy
//! file's own vocabulary (so the fuzzing reaches the merge and validation code, not only the
//! YAML parser), with arbitrary environment overrides.

use palisade::policy::{Policies, PolicyLoader};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "defaults",
    "policies",
    "routes",
    "error_codes",
    "timeout",
    "retry",
    "circuit_breaker",
    "bulkhead",
    "budget",
    "total",
    "attempt",
    "max_retries",
    "base_delay",
    "max_delay",
    "multiplier",
    "jitter",
    "retry_unknown",
    "ratio",
    "min_per_second",
    "window",
    "enabled",
    "failure_rate",
    "consecutive_failures",
    "minimum_calls",
    "window_type",
    "window_size",
    "open_timeout",
    "open_timeout_multiplier",
    "open_timeout_max",
    "half_open_max_requests",
    "success_threshold",
    "half_open_max_duration",
    "slow_call_duration",
    "slow_call_rate",
    "max_concurrent",
    "max_queue",
    "max_wait",
    "partition",
    "extends",
    "transience",
    "category",
    "severity",
    "retry_after",
    "message",
    "suggestion",
    "api_call",
    "db",
    "GET /x",
    "/a.B/C",
    "-1003",
    "binance",
];

const SCALARS: &[&str] = &[
    "0",
    "1",
    "-1",
    "3",
    "100",
    "5000",
    "99999999999999999999",
    "0.5",
    "1.5",
    "-0.1",
    ".nan",
    ".inf",
    "true",
    "false",
    "yes",
    "~",
    "null",
    "0s",
    "10ms",
    "1m30s",
    "-5s",
    "30",
    "full",
    "count",
    "time",
    "decorrelated",
    "transient",
    "business",
    "low",
    "api_call",
    "db",
    "nowhere",
    "\"\"",
    "'x'",
    "off",
    "[]",
    "{}",
    "[1, 2]",
    "&a 1",
    "*a",
    "!!str 5",
    "|\n    text",
];

/// A YAML document of nested sections, as text.
fn document() -> impl Strategy<Value = String> {
    let leaf = (prop::sample::select(KEYS), prop::sample::select(SCALARS))
        .prop_map(|(k, v)| vec![(k.to_owned(), Node::Scalar(v.to_owned()))]);
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop::collection::vec(
            (prop::sample::select(KEYS), inner.clone(), any::<bool>()),
            1..6,
        )
        .prop_map(|entries| {
            entries
                .into_iter()
                .map(|(k, children, flow)| (k.to_owned(), Node::Map(children, flow)))
                .collect()
        })
    })
    .prop_map(|entries| {
        let mut out = String::new();
        render(&entries, 0, &mut out);
        out
    })
}

/// Fields of each section, with values that are mostly valid: these documents load often,
/// so merging, `extends` and cross-field checks get fuzzed too.
const SECTIONS: &[(&str, &[&str])] = &[
    ("timeout", &["total", "attempt"]),
    (
        "retry",
        &[
            "max_retries",
            "base_delay",
            "max_delay",
            "multiplier",
            "jitter",
        ],
    ),
    (
        "circuit_breaker",
        &[
            "failure_rate",
            "consecutive_failures",
            "minimum_calls",
            "window_type",
            "window_size",
            "open_timeout",
            "open_timeout_max",
        ],
    ),
    ("bulkhead", &["max_concurrent", "max_queue", "max_wait"]),
];
const PLAUSIBLE: &[&str] = &[
    "1", "3", "20", "0.5", "1s", "100ms", "2s", "30s", "full", "count", "0",
];

/// The lines of one policy section (`timeout: { total: 1s }`), unindented.
fn section() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (
            0..SECTIONS.len(),
            prop::collection::vec((0..8usize, prop::sample::select(PLAUSIBLE)), 1..4),
        ),
        0..4,
    )
    .prop_map(|sections| {
        let mut lines = std::collections::BTreeMap::new();
        for (s, fields) in sections {
            let (name, keys) = SECTIONS[s];
            let body: std::collections::BTreeMap<&str, &str> = fields
                .iter()
                .map(|(k, v)| (keys[k % keys.len()], *v))
                .collect();
            let body: Vec<String> = body.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            lines.insert(name, format!("{name}: {{ {} }}", body.join(", ")));
        }
        lines.into_values().collect()
    })
}

fn indented(lines: &[String], indent: &str) -> String {
    lines.iter().map(|l| format!("{indent}{l}\n")).collect()
}

/// A document with defaults, policies that may extend each other, and routes.
fn policy_document() -> impl Strategy<Value = String> {
    (
        section(),
        prop::collection::vec((section(), prop::option::of(0..4usize)), 0..4),
        prop::collection::vec(0..5usize, 0..3),
    )
        .prop_map(|(defaults, policies, routes)| {
            let mut out = String::new();
            if !defaults.is_empty() {
                out.push_str(&format!("defaults:\n{}", indented(&defaults, "  ")));
            }
            out.push_str("policies:\n");
            for (i, (body, extends)) in policies.iter().enumerate() {
                out.push_str(&format!("  p{i}:\n"));
                if let Some(parent) = extends {
                    out.push_str(&format!("    extends: p{parent}\n"));
                }
                out.push_str(&indented(body, "    "));
                if body.is_empty() && extends.is_none() {
                    out.push_str("    enabled: true\n");
                }
            }
            if !routes.is_empty() {
                out.push_str("routes:\n");
                for (i, target) in routes.iter().enumerate() {
                    out.push_str(&format!("  \"GET /r{i}\": p{target}\n"));
                }
            }
            out
        })
}

#[derive(Clone, Debug)]
enum Node {
    Scalar(String),
    Map(Vec<(String, Node)>, bool),
}

fn render(entries: &[(String, Node)], indent: usize, out: &mut String) {
    for (key, node) in entries {
        out.push_str(&" ".repeat(indent));
        out.push_str(&format!("{key:?}: "));
        match node {
            Node::Scalar(v) => {
                out.push_str(v);
                out.push('\n');
            }
            Node::Map(children, true) => {
                out.push_str(&flow(children));
                out.push('\n');
            }
            Node::Map(children, false) => {
                out.push('\n');
                render(children, indent + 2, out);
            }
        }
    }
}

fn flow(entries: &[(String, Node)]) -> String {
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, n)| match n {
            Node::Scalar(v) => format!("{k:?}: {}", v.replace('\n', " ")),
            Node::Map(c, _) => format!("{k:?}: {}", flow(c)),
        })
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

fn check(result: Result<Policies, palisade::policy::ConfigError>) {
    match result {
        Ok(p) => {
            // A loaded table answers every lookup.
            let _ = p.for_operation("api_call").to_string();
            let _ = p.for_route("GET", "/x");
            for op in p.operations() {
                assert!(op.timeout.attempt <= op.timeout.total, "{op}");
                assert!(op.retry.base_delay <= op.retry.max_delay, "{op}");
            }
        }
        Err(e) => {
            assert!(!e.issues().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(Policies::from_yaml_str(&text));
    }

    #[test]
    fn arbitrary_bytes_as_lossy_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check(Policies::from_yaml_str(&String::from_utf8_lossy(&bytes)));
    }

    #[test]
    fn arbitrary_policy_shaped_documents_never_panic(doc in document()) {
        check(Policies::from_yaml_str(&doc));
    }

    #[test]
    fn arbitrary_policy_tables_never_panic(doc in policy_document()) {
        check(Policies::from_yaml_str(&doc));
    }

    #[test]
    fn arbitrary_overrides_never_panic(
        doc in document(),
        path in prop::collection::vec(prop::sample::select(KEYS), 0..5),
        value in prop::sample::select(SCALARS),
        junk in "[A-Z_]{0,12}",
    ) {
        let var = format!(
            "PALISADE__{}{}",
            path.iter().map(|k| k.to_uppercase()).collect::<Vec<_>>().join("__"),
            junk
        );
        check(PolicyLoader::new().with_env_vars([(var, value.to_owned())]).load_str(&doc));
    }
}

#[test]
fn the_document_generator_reaches_past_the_parser() {
    // Guard against a generator whose output never parses: then the tests above would only
    // exercise the YAML parser, not the policy code.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = policy_document();
    let mut parsed = 0;
    let mut loaded = 0;
    for _ in 0..300 {
        let doc = strategy.new_tree(&mut runner).unwrap().current();
        match Policies::from_yaml_str(&doc) {
            Ok(_) => loaded += 1,
            Err(e) => {
                if e.issues()[0].kind != palisade::policy::IssueKind::Syntax {
                    parsed += 1;
                }
            }
        }
    }
    assert!(
        parsed > 100,
        "only {parsed} of 300 documents got past the parser"
    );
    assert!(loaded > 0, "no generated document loaded");
}
