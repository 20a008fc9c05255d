//! The exchange client's error-code table (examples/exchange_client/policies.yaml) and the
//! classifier that applies it to HTTP answers and transport errors.

#![allow(dead_code)]

#[path = "../examples/exchange_client/classifier.rs"]
mod classifier;
#[path = "../examples/exchange_client/clock.rs"]
mod clock;
#[path = "../examples/exchange_client/transport.rs"]
mod transport;

use std::sync::Arc;
use std::time::Duration;

use palisade::classify::{Category, Classification, Classify, Severity, Transience};
use palisade::error::{TimeoutError, TimeoutKind};
use palisade::policy::Policies;

use classifier::ExchangeClassifier;
use transport::{ApiResponse, StackError};

const POLICIES: &str = include_str!("../examples/exchange_client/policies.yaml");

fn policies() -> Policies {
    Policies::from_yaml_str(POLICIES).expect("the example's policy file loads")
}

fn classifier() -> ExchangeClassifier {
    ExchangeClassifier::new(Arc::clone(policies().error_codes("binance").unwrap()))
}

#[test]
fn the_table_maps_at_least_fifty_binance_codes_and_every_code_parses() {
    let policies = policies();
    let table = policies.error_codes("binance").expect("a binance table");
    assert!(table.len() >= 50, "{} codes", table.len());
    for (code, entry) in table.iter() {
        let n: i64 = code
            .parse()
            .unwrap_or_else(|_| panic!("{code} is a number"));
        assert!(
            (-1199..=-1000).contains(&n) || (-2099..=-2000).contains(&n),
            "{code} is in Binance's REST ranges"
        );
        assert_eq!(
            entry.classification.code.as_str(),
            format!("binance_{code}")
        );
        let message = entry.message.as_deref().unwrap_or_default();
        let suggestion = entry.suggestion.as_deref().unwrap_or_default();
        assert!(message.len() > 10, "{code} has a message");
        assert!(suggestion.len() > 10, "{code} has a suggestion");
    }
}

#[test]
fn the_codes_the_client_depends_on_classify_as_designed() {
    use Category::*;
    use Transience::*;
    let policies = policies();
    let table = policies.error_codes("binance").unwrap();
    let class = |code: &str| -> Classification {
        table
            .classify(code)
            .unwrap_or_else(|| panic!("{code} is mapped"))
    };
    for (code, transience, category) in [
        ("-1000", Unknown, External),
        ("-1001", Transient, External),
        ("-1003", Transient, External),
        ("-1006", Unknown, External),
        ("-1007", Unknown, External),
        ("-1008", Transient, External),
        ("-1013", Persistent, User),
        ("-1015", Transient, External),
        ("-1021", Transient, System),
        ("-1022", Persistent, Security),
        ("-1100", Persistent, User),
        ("-1102", Persistent, User),
        ("-1121", Persistent, User),
        ("-1131", Persistent, User),
        ("-2010", Persistent, Business),
        ("-2011", Persistent, User),
        ("-2013", Persistent, User),
        ("-2014", Persistent, Security),
        ("-2015", Persistent, Security),
    ] {
        let c = class(code);
        assert_eq!((c.transience, c.category), (transience, category), "{code}");
    }
    assert_eq!(class("-1003").retry_after, Some(Duration::from_secs(60)));
    assert_eq!(class("-1015").retry_after, Some(Duration::from_secs(10)));
    assert_eq!(class("-2010").severity, Severity::Low);
    assert!(class("-2010").is_caller_fault());
    assert!(
        !class("-1022").is_caller_fault(),
        "security is not the caller's fault"
    );
}

#[test]
fn each_operation_has_its_policy() {
    let policies = policies();
    for name in ["exchange_public", "exchange_order", "exchange_account"] {
        let policy = policies.get(name).unwrap_or_else(|| panic!("{name}"));
        assert!(policy.timeout.attempt < policy.timeout.total);
        assert!(policy.retry.max_retries >= 1);
    }
    for op in transport::Operation::ALL {
        assert!(policies.get(op.policy()).is_some(), "{op}");
    }
}

fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> ApiResponse {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.as_bytes().to_vec()).unwrap()
}

fn classify(response: &ApiResponse) -> Option<Classification> {
    classifier()
        .outcome(Ok::<_, &StackError>(response))
        .classification()
        .cloned()
}

#[test]
fn a_429_with_a_code_takes_the_tables_verdict_and_the_headers_wait() {
    let body = r#"{"code":-1003,"msg":"Too much request weight used"}"#;
    let c = classify(&answer(429, &[("retry-after", "7")], body)).unwrap();
    assert_eq!(c.code, "binance_-1003");
    assert_eq!(c.retry_after, Some(Duration::from_secs(7)));
    // Without the header, the table's default wait.
    let c = classify(&answer(429, &[], body)).unwrap();
    assert_eq!(c.retry_after, Some(Duration::from_secs(60)));
    // A 418 ban reads Retry-After too (HttpStatus alone reads it only on 429 and 503).
    let c = classify(&answer(418, &[("retry-after", "120")], body)).unwrap();
    assert_eq!(c.transience, Transience::Transient);
    assert_eq!(c.retry_after, Some(Duration::from_secs(120)));
    // A hostile wait is capped like HttpStatus caps it.
    let c = classify(&answer(418, &[("retry-after", "86400")], body)).unwrap();
    assert_eq!(c.retry_after, Some(Duration::from_secs(300)));
}

#[test]
fn answers_without_a_known_code_fall_back_to_the_status() {
    let bad_gateway = answer(502, &[], "<html>Bad Gateway</html>");
    let c = classify(&bad_gateway).unwrap();
    assert_eq!(
        (c.code.as_str(), c.transience),
        ("http_502", Transience::Transient)
    );

    let unknown_code = answer(400, &[], r#"{"code":-1999,"msg":"?"}"#);
    let c = classify(&unknown_code).unwrap();
    assert_eq!((c.code.as_str(), c.category), ("http_400", Category::User));

    let rejected = answer(
        400,
        &[],
        r#"{"code":-2010,"msg":"Account has insufficient balance"}"#,
    );
    assert_eq!(classify(&rejected).unwrap().code, "binance_-2010");

    assert_eq!(
        classify(&answer(200, &[], r#"{"code":-2010}"#)),
        None,
        "2xx is success"
    );
}

#[tokio::test]
async fn transport_and_layer_errors_classify_themselves() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = reqwest::get(format!("http://{addr}/api/v3/ping"))
        .await
        .unwrap_err();
    let refused: StackError = palisade::Error::Inner(transport_error(err));
    let c = classifier()
        .outcome(Err::<&ApiResponse, _>(&refused))
        .classification()
        .cloned()
        .unwrap();
    assert_eq!(c.category, Category::Network);
    assert_eq!(c.transience, Transience::Transient);

    let timeout: StackError = palisade::Error::Timeout(TimeoutError {
        kind: TimeoutKind::Attempt,
        operation: "exchange_public".into(),
        limit: Duration::from_secs(2),
    });
    let c = classifier()
        .outcome(Err::<&ApiResponse, _>(&timeout))
        .classification()
        .cloned()
        .unwrap();
    assert_eq!(c.code, "timeout_attempt");
    assert!(c.is_transient());
}

/// A `TransportError` from a reqwest error, as the transport builds it.
fn transport_error(err: reqwest::Error) -> transport::TransportError {
    transport::TransportError::from_reqwest(err)
}
