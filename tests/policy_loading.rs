//! Policy tables: merging over `extends`, `defaults` and built-ins, environment overrides,
//! lookups by operation and route, and error-code tables.

use std::time::Duration;

use palisade::classify::{Category, Severity, Transience};
use palisade::policy::{Jitter, Policies, PolicyLoader, WindowType};

/// The YAML of the foundation issue, verbatim.
const ISSUE_YAML: &str = r#"
defaults:
  timeout: { total: 30s, attempt: 10s }
  retry: { max_retries: 3, base_delay: 100ms, max_delay: 5s, multiplier: 2.0, jitter: full,
           budget: { ratio: 0.2, min_per_second: 10, window: 10s } }
  circuit_breaker: { failure_rate: 0.5, consecutive_failures: 5, minimum_calls: 20,
                     window: 30s, open_timeout: 60s, half_open_max_requests: 10,
                     success_threshold: 3 }
  bulkhead: { max_concurrent: 100, max_queue: 50, max_wait: 1s }
policies:
  api_call:
    timeout: { total: 10s }
  database_operation:
    extends: api_call
    timeout: { total: 5s }
    retry: { max_retries: 5, base_delay: 50ms, max_delay: 2s, multiplier: 1.5 }
  redis_operation:
    enabled: true
    timeout: { total: 2s }
    retry: { max_retries: 3, base_delay: 25ms, max_delay: 1s }
routes:
  "POST /v1/transfers": database_operation
  "/exchange.v1.Orders/Place": api_call
error_codes:
  binance:
    "-1003": { transience: transient, category: external, severity: medium, retry_after: 60s }
    "-2010": { transience: persistent, category: business, severity: low }
"#;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

#[test]
fn the_issue_example_loads() {
    let p = Policies::from_yaml_str(ISSUE_YAML).unwrap();
    let names: Vec<&str> = p.operations().map(|p| p.name()).collect();
    assert_eq!(names, ["api_call", "database_operation", "redis_operation"]);
}

#[test]
fn sections_merge_field_by_field_over_extends_then_defaults() {
    let p = Policies::from_yaml_str(ISSUE_YAML).unwrap();
    let db = p.for_operation("database_operation");
    // Its own section.
    assert_eq!(db.timeout.total, secs(5));
    assert_eq!(db.retry.max_retries, 5);
    assert_eq!(db.retry.base_delay, ms(50));
    assert_eq!(db.retry.max_delay, secs(2));
    assert_eq!(db.retry.multiplier, 1.5);
    // From defaults, through api_call, which does not set them.
    assert_eq!(db.retry.jitter, Jitter::Full);
    assert_eq!(db.retry.budget.ratio, 0.2);
    assert_eq!(db.retry.budget.min_per_second, 10);
    assert_eq!(db.circuit_breaker.minimum_calls, 20);
    assert_eq!(db.bulkhead.max_queue, 50);
    // The inherited 10s attempt limit is cut to the policy's shorter total.
    assert_eq!(db.timeout.attempt, secs(5));

    let api = p.for_operation("api_call");
    assert_eq!(api.timeout.total, secs(10));
    assert_eq!(api.timeout.attempt, secs(10));
    assert_eq!(api.retry.max_retries, 3);

    let redis = p.for_operation("redis_operation");
    assert_eq!(redis.retry.base_delay, ms(25));
    assert_eq!(redis.retry.multiplier, 2.0, "from defaults");
    assert_eq!(redis.timeout.attempt, secs(2));
}

#[test]
fn extends_chains_take_the_nearest_ancestor_first() {
    let p = Policies::from_yaml_str(
        "
defaults:
  retry: { max_retries: 1, base_delay: 10ms }
policies:
  base:
    retry: { max_retries: 2, max_delay: 3s }
  middle:
    extends: base
    retry: { max_retries: 4 }
  leaf:
    extends: middle
    bulkhead: { max_concurrent: 7 }
",
    )
    .unwrap();
    let leaf = p.for_operation("leaf");
    assert_eq!(leaf.retry.max_retries, 4, "from middle");
    assert_eq!(leaf.retry.max_delay, secs(3), "from base");
    assert_eq!(leaf.retry.base_delay, ms(10), "from defaults");
    assert_eq!(leaf.retry.multiplier, 2.0, "built in");
    assert_eq!(leaf.bulkhead.max_concurrent, 7);
}

#[test]
fn missing_sections_get_the_built_in_defaults() {
    let p = Policies::from_yaml_str("policies:\n  bare: {}\n").unwrap();
    let bare = p.for_operation("bare");
    assert!(bare.enabled);
    assert_eq!(bare.timeout.total, secs(30));
    assert_eq!(bare.timeout.attempt, secs(10));
    assert_eq!(bare.retry.max_retries, 3);
    assert!(bare.retry.budget.enabled);
    assert_eq!(bare.circuit_breaker.failure_rate, 0.5);
    assert_eq!(bare.circuit_breaker.window_type, WindowType::Time);
    assert_eq!(bare.circuit_breaker.slow_call_duration, None);
    assert_eq!(bare.bulkhead.max_concurrent, 100);
    assert_eq!(bare.bulkhead.max_wait, secs(1));
    assert_eq!(&**bare.bulkhead_partition(), "bare");
}

#[test]
fn an_empty_document_is_all_defaults() {
    for yaml in ["", "   \n", "# just a comment\n"] {
        let p = Policies::from_yaml_str(yaml).unwrap();
        assert_eq!(p.operations().count(), 0);
        assert_eq!(p.defaults().timeout.total, secs(30));
    }
}

#[test]
fn unknown_operations_and_routes_fall_back_to_defaults() {
    let p = Policies::from_yaml_str(ISSUE_YAML).unwrap();
    assert!(p.get("nope").is_none());
    assert_eq!(p.for_operation("nope").name(), "defaults");
    assert_eq!(p.for_route("GET", "/elsewhere").name(), "defaults");
}

#[test]
fn routes_match_method_and_path_then_path_alone() {
    let p = Policies::from_yaml_str(
        r#"
policies:
  reads: {}
  writes: {}
  grpc: {}
routes:
  "GET /v1/accounts/{id}": reads
  "POST /v1/accounts/{id}": writes
  "/exchange.v1.Orders/Place": grpc
"#,
    )
    .unwrap();
    assert_eq!(p.for_route("GET", "/v1/accounts/{id}").name(), "reads");
    assert_eq!(p.for_route("post", "/v1/accounts/{id}").name(), "writes");
    assert_eq!(
        p.for_route("DELETE", "/v1/accounts/{id}").name(),
        "defaults"
    );
    assert_eq!(
        p.for_route("POST", "/exchange.v1.Orders/Place").name(),
        "grpc"
    );
    let routes: Vec<(&str, &str)> = p.routes().collect();
    assert_eq!(routes[0], ("GET /v1/accounts/{id}", "reads"));
    assert_eq!(routes.len(), 3);
}

#[test]
fn durations_take_humantime_forms() {
    let p = Policies::from_yaml_str(
        "policies:\n  x:\n    timeout: { total: 1m30s, attempt: 1500ms }\n    bulkhead: { max_wait: 0s }\n    retry: { max_delay: 2min }\n",
    )
    .unwrap();
    let x = p.for_operation("x");
    assert_eq!(x.timeout.total, secs(90));
    assert_eq!(x.timeout.attempt, ms(1500));
    assert_eq!(x.bulkhead.max_wait, Duration::ZERO);
    assert_eq!(x.retry.max_delay, secs(120));
}

#[test]
fn every_breaker_and_bulkhead_key_is_read() {
    let p = Policies::from_yaml_str(
        "
policies:
  x:
    enabled: false
    retry: { jitter: decorrelated, retry_unknown: true, budget: { enabled: false } }
    circuit_breaker:
      enabled: false
      failure_rate: 0.25
      consecutive_failures: 0
      minimum_calls: 10
      window: 1m
      window_type: count
      window_size: 50
      open_timeout: 5s
      open_timeout_multiplier: 2
      open_timeout_max: 1m
      half_open_max_requests: 2
      success_threshold: 2
      half_open_max_duration: 20s
      slow_call_duration: 2s
      slow_call_rate: 0.8
    bulkhead: { max_concurrent: 3, max_queue: 0, max_wait: 250ms, partition: shared_db }
",
    )
    .unwrap();
    let x = p.for_operation("x");
    assert!(!x.enabled);
    assert_eq!(x.retry.jitter, Jitter::Decorrelated);
    assert!(x.retry.retry_unknown);
    assert!(!x.retry.budget.enabled);
    let b = &x.circuit_breaker;
    assert!(!b.enabled);
    assert_eq!(b.failure_rate, 0.25);
    assert_eq!(b.consecutive_failures, 0);
    assert_eq!(b.minimum_calls, 10);
    assert_eq!(b.window, secs(60));
    assert_eq!(b.window_type, WindowType::Count);
    assert_eq!(b.window_size, 50);
    assert_eq!(b.open_timeout, secs(5));
    assert_eq!(b.open_timeout_multiplier, 2.0);
    assert_eq!(b.open_timeout_max, secs(60));
    assert_eq!(b.half_open_max_requests, 2);
    assert_eq!(b.success_threshold, 2);
    assert_eq!(b.half_open_max_duration, secs(20));
    assert_eq!(b.slow_call_duration, Some(secs(2)));
    assert_eq!(b.slow_call_rate, 0.8);
    assert_eq!(x.bulkhead.max_queue, 0);
    assert_eq!(x.bulkhead.max_wait, ms(250));
    assert_eq!(&**x.bulkhead_partition(), "shared_db");
}

#[test]
fn environment_overrides_win_over_the_file() {
    let p = PolicyLoader::new()
        .with_env_vars([
            ("PALISADE__POLICIES__API_CALL__TIMEOUT__TOTAL", "5s"),
            ("PALISADE__DEFAULTS__RETRY__MAX_RETRIES", "7"),
            ("PALISADE__POLICIES__REDIS_OPERATION__ENABLED", "false"),
            ("PALISADE__POLICIES__NEW_ONE__BULKHEAD__MAX_CONCURRENT", "4"),
            ("OTHER__POLICIES__API_CALL__TIMEOUT__TOTAL", "1s"),
            ("PALISADE_NOT_OURS", "x"),
        ])
        .load_str(ISSUE_YAML)
        .unwrap();
    assert_eq!(p.for_operation("api_call").timeout.total, secs(5));
    assert_eq!(p.for_operation("api_call").timeout.attempt, secs(5));
    // A defaults override reaches policies that do not set the field...
    assert_eq!(p.for_operation("api_call").retry.max_retries, 7);
    // ...but not those that do.
    assert_eq!(p.for_operation("database_operation").retry.max_retries, 5);
    assert!(!p.for_operation("redis_operation").enabled);
    assert_eq!(p.for_operation("new_one").bulkhead.max_concurrent, 4);
}

#[test]
fn a_custom_prefix_selects_other_variables() {
    let p = PolicyLoader::new()
        .with_env_prefix("LEDGER")
        .with_env_vars([
            ("LEDGER__POLICIES__API_CALL__RETRY__MAX_RETRIES", "0"),
            ("PALISADE__POLICIES__API_CALL__RETRY__MAX_RETRIES", "9"),
        ])
        .load_str(ISSUE_YAML)
        .unwrap();
    assert_eq!(p.for_operation("api_call").retry.max_retries, 0);
}

#[test]
fn error_code_tables_are_loaded_and_namespaced() {
    let p = Policies::from_yaml_str(ISSUE_YAML).unwrap();
    let binance = p.error_codes("binance").unwrap();
    assert_eq!(binance.len(), 2);
    let limited = binance.classify("-1003").unwrap();
    assert_eq!(limited.transience, Transience::Transient);
    assert_eq!(limited.category, Category::External);
    assert_eq!(limited.severity, Severity::Medium);
    assert_eq!(limited.code, "binance_-1003");
    assert_eq!(limited.retry_after, Some(secs(60)));
    let broke = binance.classify("-2010").unwrap();
    assert!(broke.is_caller_fault());
    assert!(p.error_codes("kraken").is_none());
}

#[test]
fn code_entries_accept_numeric_keys_messages_and_default_severity() {
    let p = Policies::from_yaml_str(
        "
error_codes:
  gateway:
    -1021: { transience: transient, category: external, message: Timestamp outside window, suggestion: Sync the clock }
    card_declined: { transience: persistent, category: business }
",
    )
    .unwrap();
    let t = p.error_codes("gateway").unwrap();
    let e = t.get("-1021").unwrap();
    assert_eq!(e.message.as_deref(), Some("Timestamp outside window"));
    assert_eq!(e.suggestion.as_deref(), Some("Sync the clock"));
    assert_eq!(e.classification.severity, Severity::Medium);
    assert_eq!(
        t.classify("card_declined").unwrap().code,
        "gateway_card_declined"
    );
}

#[test]
fn from_path_reads_a_file() {
    let dir = std::env::temp_dir().join(format!("palisade-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policies.yaml");
    std::fs::write(&file, ISSUE_YAML).unwrap();
    let p = PolicyLoader::new().load_path(&file).unwrap();
    assert_eq!(
        p.for_route("POST", "/v1/transfers").name(),
        "database_operation"
    );

    let missing = PolicyLoader::new()
        .load_path(dir.join("nope.yaml"))
        .unwrap_err();
    assert!(
        missing.to_string().contains("cannot read the file"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_policy_prints_as_a_readable_table() {
    let p = Policies::from_yaml_str(ISSUE_YAML).unwrap();
    let text = p.for_operation("database_operation").to_string();
    assert!(text.starts_with("database_operation\n"), "{text}");
    assert!(text.contains("timeout: total 5s, attempt 5s"), "{text}");
    assert!(
        text.contains("max 5 retries, 50ms..2s x1.5 jitter full"),
        "{text}"
    );
    assert!(
        text.contains("bulkhead `database_operation`: 100 in flight, 50 queued, wait 1s"),
        "{text}"
    );
}
