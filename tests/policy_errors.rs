//! Bad policy files: every problem is reported, with its field path, line, message and fix.

use palisade::policy::{
    ConfigError, ConfigIssue, IssueKind, Policies, PolicyLoader, SourceLocation,
};

fn errors(yaml: &str) -> ConfigError {
    match Policies::from_yaml_str(yaml) {
        Ok(_) => panic!("expected this to be rejected:\n{yaml}"),
        Err(e) => e,
    }
}

/// The one problem in `yaml`, which must be at `path`.
fn only(yaml: &str, path: &str) -> ConfigIssue {
    let err = errors(yaml);
    assert_eq!(err.issues().len(), 1, "expected exactly one problem: {err}");
    let issue = err.issues()[0].clone();
    assert_eq!(issue.path, path, "{err}");
    issue
}

fn line(issue: &ConfigIssue) -> u32 {
    issue
        .location
        .as_ref()
        .and_then(SourceLocation::line)
        .unwrap_or_else(|| panic!("no line for {issue}"))
}

fn check(issue: &ConfigIssue, kind: IssueKind, at_line: u32, message: &str, fix: &str) {
    assert_eq!(issue.kind, kind, "{issue}");
    assert_eq!(line(issue), at_line, "{issue}");
    assert!(issue.message.contains(message), "message of {issue}");
    assert!(issue.fix.contains(fix), "fix of {issue}");
}

#[test]
fn unknown_top_level_key_suggests_the_right_one() {
    let i = only("polices:\n  api_call: {}\n", "polices");
    check(
        &i,
        IssueKind::UnknownKey,
        1,
        "unknown key `polices`",
        "did you mean `policies`?",
    );
}

#[test]
fn unknown_section_in_a_policy() {
    let i = only(
        "policies:\n  api_call:\n    retyr: { max_retries: 2 }\n",
        "policies.api_call.retyr",
    );
    check(
        &i,
        IssueKind::UnknownKey,
        3,
        "unknown key `retyr`",
        "did you mean `retry`?",
    );
}

#[test]
fn unknown_field_in_retry() {
    let i = only(
        "defaults:\n  retry:\n    max_retry: 2\n",
        "defaults.retry.max_retry",
    );
    check(
        &i,
        IssueKind::UnknownKey,
        3,
        "unknown key",
        "did you mean `max_retries`?",
    );
}

#[test]
fn unknown_key_far_from_any_lists_the_known_keys() {
    let i = only(
        "defaults:\n  bulkhead: { zzz: 1 }\n",
        "defaults.bulkhead.zzz",
    );
    check(
        &i,
        IssueKind::UnknownKey,
        2,
        "unknown key `zzz`",
        "known keys here: max_concurrent, max_queue, max_wait, partition",
    );
}

#[test]
fn extends_is_not_allowed_in_defaults() {
    let i = only("defaults:\n  extends: api_call\n", "defaults.extends");
    check(
        &i,
        IssueKind::UnknownKey,
        2,
        "unknown key `extends`",
        "known keys here",
    );
}

#[test]
fn a_word_where_a_number_belongs() {
    let i = only(
        "policies:\n  api_call:\n    retry:\n      max_retries: three\n",
        "policies.api_call.retry.max_retries",
    );
    check(
        &i,
        IssueKind::WrongType,
        4,
        "expected a whole number, found a string",
        "`max_retries: 1`",
    );
}

#[test]
fn a_scalar_where_a_section_belongs() {
    let i = only(
        "policies:\n  api_call:\n    timeout: 5s\n",
        "policies.api_call.timeout",
    );
    check(
        &i,
        IssueKind::WrongType,
        3,
        "expected a section (mapping), found a string",
        "write `timeout:`",
    );
}

#[test]
fn a_list_where_policies_belong() {
    let i = only("policies:\n  - api_call\n", "policies");
    check(&i, IssueKind::WrongType, 2, "found a list", "");
}

#[test]
fn a_duration_without_a_unit() {
    let i = only(
        "defaults:\n  timeout: { total: 30 }\n",
        "defaults.timeout.total",
    );
    check(
        &i,
        IssueKind::WrongType,
        2,
        "expected a duration with a unit",
        "`total: 30s`",
    );
}

#[test]
fn a_duration_that_does_not_parse() {
    let i = only(
        "defaults:\n  timeout:\n    total: 30 parsecs\n",
        "defaults.timeout.total",
    );
    check(
        &i,
        IssueKind::WrongType,
        3,
        "`30 parsecs` is not a duration",
        "ms, s, m, h",
    );
}

#[test]
fn a_negative_duration() {
    let i = only(
        "defaults:\n  retry: { base_delay: -5ms }\n",
        "defaults.retry.base_delay",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        2,
        "is negative",
        "positive duration",
    );
}

#[test]
fn a_zero_timeout() {
    let i = only(
        "policies:\n  a:\n    timeout: { total: 0s }\n",
        "policies.a.timeout.total",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        3,
        "is zero, and total must be longer than zero",
        "positive",
    );
}

#[test]
fn a_negative_limit() {
    let i = only(
        "defaults:\n  bulkhead: { max_concurrent: -1 }\n",
        "defaults.bulkhead.max_concurrent",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        2,
        "max_concurrent is negative (-1)",
        "from 1 to 1000000",
    );
}

#[test]
fn a_zero_limit() {
    let i = only(
        "defaults:\n  circuit_breaker: { half_open_max_requests: 0 }\n",
        "defaults.circuit_breaker.half_open_max_requests",
    );
    check(&i, IssueKind::OutOfRange, 2, "is zero (0)", "from 1 to");
}

#[test]
fn probe_counts_above_what_the_breaker_can_hold() {
    // The breaker counts probes in 14-bit fields: 16,383 is the most it can honour.
    for key in ["half_open_max_requests", "success_threshold"] {
        let i = only(
            &format!("defaults:\n  circuit_breaker: {{ {key}: 16384 }}\n"),
            &format!("defaults.circuit_breaker.{key}"),
        );
        check(
            &i,
            IssueKind::OutOfRange,
            2,
            "too large (16384)",
            "from 1 to 16383",
        );
        let yaml = format!("defaults:\n  circuit_breaker: {{ {key}: 16383 }}\n");
        assert!(
            palisade::policy::Policies::from_yaml_str(&yaml).is_ok(),
            "{key}"
        );
    }
}

#[test]
fn an_absurd_retry_count() {
    let i = only(
        "defaults:\n  retry: { max_retries: 5000 }\n",
        "defaults.retry.max_retries",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        2,
        "too large (5000)",
        "from 0 to 100",
    );
}

#[test]
fn max_delay_below_base_delay() {
    let i = only(
        "policies:\n  db:\n    retry:\n      base_delay: 500ms\n      max_delay: 100ms\n",
        "policies.db.retry.max_delay",
    );
    check(
        &i,
        IssueKind::Inconsistent,
        5,
        "max_delay 100ms is shorter than base_delay 500ms (from `policies.db.retry.base_delay`)",
        "raise max_delay to at least 500ms",
    );
}

#[test]
fn max_delay_below_an_inherited_base_delay() {
    let i = only(
        "defaults:\n  retry: { base_delay: 1s }\npolicies:\n  db:\n    retry: { max_delay: 200ms }\n",
        "policies.db.retry.max_delay",
    );
    check(
        &i,
        IssueKind::Inconsistent,
        5,
        "(from `defaults.retry.base_delay`)",
        "at least 1s",
    );
}

#[test]
fn attempt_longer_than_total() {
    let i = only(
        "policies:\n  api:\n    timeout: { total: 2s, attempt: 5s }\n",
        "policies.api.timeout.attempt",
    );
    check(
        &i,
        IssueKind::Inconsistent,
        3,
        "attempt timeout 5s is longer than the total timeout 2s",
        "lower attempt to at most 2s",
    );
}

#[test]
fn attempt_longer_than_an_inherited_total() {
    let i = only(
        "defaults:\n  timeout: { total: 3s, attempt: 1s }\npolicies:\n  api:\n    timeout: { attempt: 4s }\n",
        "policies.api.timeout.attempt",
    );
    check(
        &i,
        IssueKind::Inconsistent,
        5,
        "(from `defaults.timeout.total`)",
        "at most 3s",
    );
}

#[test]
fn failure_rate_of_zero() {
    let i = only(
        "defaults:\n  circuit_breaker: { failure_rate: 0 }\n",
        "defaults.circuit_breaker.failure_rate",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        2,
        "failure_rate is 0; it must be greater than 0 and at most 1",
        "",
    );
}

#[test]
fn failure_rate_above_one() {
    let i = only(
        "defaults:\n  circuit_breaker:\n    failure_rate: 1.5\n",
        "defaults.circuit_breaker.failure_rate",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        3,
        "failure_rate is 1.5",
        "greater than 0 and at most 1",
    );
}

#[test]
fn a_failure_rate_written_as_a_percentage_string() {
    let i = only(
        "defaults:\n  circuit_breaker: { failure_rate: 50% }\n",
        "defaults.circuit_breaker.failure_rate",
    );
    check(
        &i,
        IssueKind::WrongType,
        2,
        "expected a number, found a string",
        "",
    );
}

#[test]
fn multiplier_below_one() {
    let i = only(
        "defaults:\n  retry: { multiplier: 0.5 }\n",
        "defaults.retry.multiplier",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        2,
        "multiplier is 0.5; it must be between 1 and 100",
        "",
    );
}

#[test]
fn budget_ratio_out_of_range() {
    let i = only(
        "defaults:\n  retry:\n    budget: { ratio: 2 }\n",
        "defaults.retry.budget.ratio",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        3,
        "ratio is 2; it must be between 0 and 1",
        "",
    );
}

#[test]
fn an_unknown_jitter() {
    let i = only(
        "defaults:\n  retry: { jitter: ful }\n",
        "defaults.retry.jitter",
    );
    check(
        &i,
        IssueKind::WrongType,
        2,
        "`ful` is not a valid jitter",
        "did you mean `full`?",
    );
}

#[test]
fn a_non_boolean_enabled() {
    let i = only("policies:\n  a:\n    enabled: yes\n", "policies.a.enabled");
    check(
        &i,
        IssueKind::WrongType,
        3,
        "expected true or false",
        "`enabled: false`",
    );
}

#[test]
fn extends_an_unknown_policy() {
    let i = only(
        "policies:\n  api_call: {}\n  db:\n    extends: api_cal\n",
        "policies.db.extends",
    );
    check(
        &i,
        IssueKind::UnknownReference,
        4,
        "extends `api_cal`, which is not a policy in this file",
        "did you mean `api_call`?",
    );
}

#[test]
fn extends_cycles_are_reported_once() {
    let i = only(
        "policies:\n  a:\n    extends: b\n  b:\n    extends: c\n  c:\n    extends: a\n",
        "policies.a.extends",
    );
    check(
        &i,
        IssueKind::Cycle,
        3,
        "extends forms a cycle: a -> b -> c -> a",
        "remove `extends` from one policy",
    );
}

#[test]
fn a_policy_extending_itself() {
    let i = only("policies:\n  a:\n    extends: a\n", "policies.a.extends");
    check(&i, IssueKind::Cycle, 3, "cycle: a -> a", "");
}

#[test]
fn a_route_to_a_missing_policy() {
    let i = only(
        "policies:\n  database_operation: {}\nroutes:\n  \"POST /v1/transfers\": database_operaton\n",
        "routes.POST /v1/transfers",
    );
    check(
        &i,
        IssueKind::UnknownReference,
        4,
        "routes to `database_operaton`, which is not a policy",
        "did you mean `database_operation`?",
    );
}

#[test]
fn a_route_with_an_unknown_method() {
    let i = only(
        "policies:\n  a: {}\nroutes:\n  \"PSOT /v1/x\": a\n",
        "routes.PSOT /v1/x",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        4,
        "`PSOT` is not an HTTP method",
        "did you mean `POST /v1/x`?",
    );
}

#[test]
fn a_route_without_a_leading_slash() {
    let i = only(
        "policies:\n  a: {}\nroutes:\n  \"GET v1/x\": a\n",
        "routes.GET v1/x",
    );
    check(
        &i,
        IssueKind::OutOfRange,
        4,
        "`v1/x` is not a route path",
        "starting with `/`",
    );
}

#[test]
fn an_operation_name_that_cannot_be_a_label() {
    let i = only("policies:\n  \"api call!\": {}\n", "policies.api call!");
    check(
        &i,
        IssueKind::OutOfRange,
        2,
        "is not a valid operation name",
        "letters, digits",
    );
}

#[test]
fn an_error_code_with_an_unknown_category() {
    let i = only(
        "error_codes:\n  binance:\n    \"-1003\": { transience: transient, category: externel }\n",
        "error_codes.binance.-1003.category",
    );
    check(
        &i,
        IssueKind::WrongType,
        3,
        "`externel` is not a valid category",
        "did you mean `external`?",
    );
}

#[test]
fn an_error_code_without_transience() {
    let i = only(
        "error_codes:\n  binance:\n    \"-2010\": { category: business }\n",
        "error_codes.binance.-2010.transience",
    );
    check(
        &i,
        IssueKind::WrongType,
        3,
        "has no `transience`",
        "add `transience: transient`",
    );
}

#[test]
fn count_window_shorter_than_minimum_calls() {
    let i = only(
        "defaults:\n  circuit_breaker: { window_type: count, window_size: 10, minimum_calls: 20 }\n",
        "defaults.circuit_breaker.minimum_calls",
    );
    check(
        &i,
        IssueKind::Inconsistent,
        2,
        "exceeds the count window of 10 calls",
        "at most 10",
    );
}

#[test]
fn open_timeout_max_below_open_timeout() {
    let i = only(
        "defaults:\n  circuit_breaker: { open_timeout: 2m, open_timeout_max: 1m }\n",
        "defaults.circuit_breaker.open_timeout_max",
    );
    check(
        &i,
        IssueKind::Inconsistent,
        2,
        "open_timeout_max 1m is shorter than open_timeout 2m",
        "",
    );
}

#[test]
fn malformed_yaml_names_the_line() {
    let err = errors("defaults:\n  timeout: { total: 5s\npolicies: {}\n");
    assert_eq!(err.issues().len(), 1, "{err}");
    let i = &err.issues()[0];
    assert_eq!(i.kind, IssueKind::Syntax);
    assert!(i.message.starts_with("malformed YAML"), "{i}");
    assert!(line(i) >= 2, "{i}");
}

#[test]
fn duplicate_keys_are_rejected() {
    let err = errors("policies:\n  a: {}\n  a: {}\n");
    let i = &err.issues()[0];
    assert_eq!(i.kind, IssueKind::Syntax, "{err}");
    assert_eq!(line(i), 3, "{err}");
    assert!(i.message.to_lowercase().contains("duplicate"), "{err}");
}

#[test]
fn a_bad_environment_override_names_the_variable() {
    let err = PolicyLoader::new()
        .with_env_vars([("PALISADE__POLICIES__API__TIMEOUT__TOTAL", "soon")])
        .load_str("policies:\n  api: {}\n")
        .unwrap_err();
    let i = err
        .issue_at("policies.api.timeout.total")
        .expect("reported at the field");
    assert_eq!(i.kind, IssueKind::WrongType);
    assert_eq!(
        i.location,
        Some(SourceLocation::Env {
            var: "PALISADE__POLICIES__API__TIMEOUT__TOTAL".into()
        })
    );
    assert!(
        i.to_string()
            .contains("environment variable PALISADE__POLICIES__API__TIMEOUT__TOTAL")
    );
}

#[test]
fn an_override_of_an_unknown_key_is_a_typo_too() {
    let err = PolicyLoader::new()
        .with_env_vars([("PALISADE__DEFAULTS__RETRY__MAX_RETRYS", "2")])
        .load_str("")
        .unwrap_err();
    let i = err.issue_at("defaults.retry.max_retrys").unwrap();
    assert_eq!(i.kind, IssueKind::UnknownKey);
    assert_eq!(i.fix, "did you mean `max_retries`?");
}

#[test]
fn an_override_through_a_scalar_is_rejected() {
    let err = PolicyLoader::new()
        .with_env_vars([("PALISADE__POLICIES__A__ENABLED__X", "1")])
        .load_str("policies:\n  a:\n    enabled: true\n")
        .unwrap_err();
    assert_eq!(err.issues()[0].kind, IssueKind::WrongType, "{err}");
    assert!(err.issues()[0].message.contains("not a section"), "{err}");
}

#[test]
fn input_over_the_size_limit_is_refused_before_parsing() {
    let err = PolicyLoader::new()
        .with_max_bytes(16)
        .load_str("policies:\n  api_call: {}\n")
        .unwrap_err();
    assert_eq!(err.issues()[0].kind, IssueKind::TooLarge);
}

#[test]
fn deeply_nested_input_hits_the_parser_budget() {
    let yaml = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let err = errors(&yaml);
    assert_eq!(err.issues()[0].kind, IssueKind::Syntax, "{err}");
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let yaml = "
defaults:
  timeout: { total: 0s }
  retyr: {}
policies:
  api_call:
    retry: { base_delay: 1s, max_delay: 10ms, jitter: sometimes }
    circuit_breaker: { failure_rate: 2 }
  db:
    extends: nowhere
routes:
  \"GET /x\": missing
";
    let err = errors(yaml);
    let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "defaults.timeout.total",
        "defaults.retyr",
        "policies.api_call.retry.jitter",
        "policies.api_call.circuit_breaker.failure_rate",
        "policies.api_call.retry.max_delay",
        "policies.db.extends",
        "routes.GET /x",
    ] {
        assert!(
            paths.contains(&expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert_eq!(err.issues().len(), 7, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("policy file <string> has 7 problems:"),
        "{text}"
    );
    assert!(
        text.contains(
            "  - defaults.retyr (line 4, column 3): unknown key `retyr`; fix: did you mean `retry`?"
        ),
        "{text}"
    );
}

#[test]
fn a_bad_value_in_defaults_is_reported_once_not_per_policy() {
    let err = errors(
        "defaults:\n  retry: { base_delay: 2s, max_delay: 1s }\npolicies:\n  a: {}\n  b: {}\n",
    );
    assert_eq!(err.issues().len(), 1, "{err}");
    assert_eq!(err.issues()[0].path, "defaults.retry.max_delay");
}
