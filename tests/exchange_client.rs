//! The exchange client example against its mock exchange on 127.0.0.1, on tokio's paused
//! clock: fault schedules, rate-limit pauses, the weight governor, and secrets.

// The example's modules, compiled into this test; parts of them are used only by the program.
#![allow(dead_code)]

#[path = "../examples/exchange_client/classifier.rs"]
mod classifier;
#[path = "../examples/exchange_client/client.rs"]
mod client;
#[path = "../examples/exchange_client/clock.rs"]
mod clock;
#[path = "../examples/exchange_client/error.rs"]
mod error;
#[path = "../examples/exchange_client/exposition.rs"]
mod exposition;
#[path = "../examples/exchange_client/governor.rs"]
mod governor;
#[path = "../examples/exchange_client/mock/mod.rs"]
mod mock;
#[path = "../examples/exchange_client/report.rs"]
mod report;
#[path = "../examples/exchange_client/session.rs"]
mod session;
#[path = "../examples/exchange_client/stack.rs"]
mod stack;
#[path = "../examples/exchange_client/transport.rs"]
mod transport;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use palisade::circuit_breaker::CircuitState;
use palisade::classify::{Category, Classified, Transience};
use palisade::correlation::{self, CorrelationId};
use palisade::policy::Policies;
use tokio::time::Instant;

use client::{ClientConfig, ExchangeClient, NewOrder, Side};
use clock::WallClock;
use governor::GovernorConfig;
use mock::{Fault, FaultPlan, MockConfig, MockExchange};
use transport::{Credentials, Operation, Secret};

const API_KEY: &str = "k3yT3stAPIabcdef0123456789";
const SECRET_KEY: &str = "s3cr3tT3stKEYfedcba9876543210";
/// A minute boundary (Unix seconds), so weight windows start with the test.
const T0_SECS: u64 = 1_750_000_020;

const POLICIES: &str = include_str!("../examples/exchange_client/policies.yaml");

fn policies() -> Arc<Policies> {
    Arc::new(Policies::from_yaml_str(POLICIES).expect("the example's policies load"))
}

fn t0() -> WallClock {
    WallClock::starting_at(Duration::from_secs(T0_SECS))
}

fn mock_config(plan: FaultPlan) -> MockConfig {
    let mut config = MockConfig::new(API_KEY, SECRET_KEY);
    config.plan = plan;
    config.clock = t0();
    config
}

fn client_for(base_url: String, secret: &str, governor: GovernorConfig) -> ExchangeClient {
    let credentials = Credentials::new(Secret::new(API_KEY), Secret::new(secret)).unwrap();
    let config = ClientConfig {
        base_url,
        credentials,
        recv_window: Duration::from_secs(5),
        governor,
        clock: t0(),
        seed: 11,
    };
    ExchangeClient::new(config, policies()).unwrap()
}

async fn start(plan: FaultPlan) -> (MockExchange, ExchangeClient) {
    let mock = MockExchange::start(mock_config(plan)).await.unwrap();
    let client = client_for(mock.base_url(), SECRET_KEY, GovernorConfig::default());
    (mock, client)
}

/// A mock whose weight limit is 100 per minute, and a client governed by `governor`.
async fn start_weight_limited(governor: GovernorConfig) -> (MockExchange, ExchangeClient) {
    let mut config = mock_config(FaultPlan::new());
    config.weight_limit = 100;
    let mock = MockExchange::start(config).await.unwrap();
    let client = client_for(mock.base_url(), SECRET_KEY, governor);
    (mock, client)
}

fn transient_codes(stats: &report::CallStats) -> Vec<String> {
    stats
        .final_errors
        .keys()
        .filter(|(_, code)| !code.starts_with("binance_-2") && code != "binance_-1121")
        .map(|(_, code)| code.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn survives_the_fault_schedule_with_one_retry_per_fault() {
    let plan = FaultPlan::new()
        // arrival 3 is the session's first signed call (account)
        .at(3, Fault::Timestamp)
        .at(6, Fault::ServerError { status: 503 })
        .at(9, Fault::ServerError { status: 500 })
        .at(12, Fault::ServerError { status: 502 })
        .at(
            15,
            Fault::RateLimit {
                retry_after: Duration::from_secs(5),
            },
        )
        .at(
            19,
            Fault::Slow {
                delay: Duration::from_secs(5),
            },
        )
        .at(
            24,
            Fault::Ban {
                retry_after: Duration::from_secs(30),
            },
        );
    let (mock, client) = start(plan.clone()).await;

    let outcome = session::run(&client, 40).await;
    let stats = client.stats();
    let exchange = mock.stats();

    let injected: Vec<u64> = exchange.injected.iter().map(|(n, _)| *n).collect();
    assert_eq!(injected, vec![3, 6, 9, 12, 15, 19, 24], "every fault fired");
    assert_eq!(stats.retries, 7, "one retry per transient fault");
    assert_eq!(stats.time_resyncs, 1, "-1021 resyncs the clock once");
    // Every request the mock saw was an attempt of the client's.
    assert_eq!(exchange.requests, u64::from(stats.attempts));
    assert_eq!(stats.attempts, stats.calls + stats.retries);
    // Nothing transient was left failing: only the script's deliberate mistakes failed.
    assert!(
        transient_codes(&stats).is_empty(),
        "{:?}",
        stats.final_errors
    );
    let failed: Vec<_> = outcome
        .errors
        .iter()
        .map(|e| e.classification().code.to_string())
        .collect();
    assert!(failed.contains(&"binance_-2010".to_owned()), "{failed:?}");
    assert!(failed.contains(&"binance_-2011".to_owned()), "{failed:?}");
    assert!(failed.contains(&"binance_-1121".to_owned()), "{failed:?}");
    for error in &outcome.errors {
        assert!(error.classification().is_caller_fault(), "{error}");
        assert_eq!(error.attempts(), 1, "never retried: {error}");
    }
    // The client respected every pause and never overran the weight limit.
    assert_eq!(exchange.requests_during_pause, 0);
    assert_eq!(exchange.weight_refusals, 0);
    // The slow order (if any) was not placed twice, and the session left nothing open.
    assert_eq!(
        exchange.orders_placed,
        u64::from(outcome.orders_acknowledged)
    );
    assert_eq!(mock.open_orders(), 0);
    assert_eq!(client.governor().stats().pauses, 2, "one 429 and one 418");
}

#[tokio::test(start_paused = true)]
async fn seeded_schedules_cost_exactly_one_retry_per_injected_fault() {
    for seed in [1, 7, 42] {
        let plan = FaultPlan::seeded(seed, 80, Duration::from_secs(3));
        assert!(plan.len() >= 3, "seed {seed} schedules faults");
        let (mock, client) = start(plan).await;
        session::run(&client, 60).await;
        let stats = client.stats();
        let exchange = mock.stats();
        assert!(exchange.faults_injected >= 3, "seed {seed}");
        assert_eq!(
            u64::from(stats.retries),
            exchange.faults_injected,
            "seed {seed}: {:?}",
            exchange.injected
        );
        assert!(transient_codes(&stats).is_empty(), "seed {seed}");
        assert_eq!(exchange.requests_during_pause, 0, "seed {seed}");
        assert_eq!(exchange.weight_refusals, 0, "seed {seed}");
        assert_eq!(mock.open_orders(), 0, "seed {seed}");
    }
}

#[tokio::test(start_paused = true)]
async fn persistent_business_and_user_errors_are_never_retried() {
    // The 4th request (an account call, signed) is rejected with -2010 by the schedule.
    let plan = FaultPlan::new().at(4, Fault::Reject { code: -2010 });
    let (mock, client) = start(plan).await;
    client.ping().await.unwrap();
    client.sync_time().await.unwrap();
    client.account().await.unwrap();

    let injected = client.account().await.unwrap_err();
    assert_eq!(injected.exchange_code(), Some(-2010));
    assert_eq!(injected.attempts(), 1);

    // Real rejections from the mock's book: too big for the balance, then unknown orders.
    let too_big = NewOrder {
        symbol: "BTCUSDT".into(),
        side: Side::Buy,
        quantity: "10".into(),
        price: "60000".into(),
    };
    let broke = client.place_order(&too_big).await.unwrap_err();
    let class = broke.classification();
    assert_eq!(class.code, "binance_-2010");
    assert_eq!(class.transience, Transience::Persistent);
    assert_eq!(class.category, Category::Business);
    assert!(class.is_caller_fault());
    assert_eq!(broke.attempts(), 1);
    let text = broke.to_string();
    assert!(text.contains("insufficient balance"), "{text}");
    assert!(text.contains("Reduce the order size"), "{text}");

    let unknown = client.cancel_order("BTCUSDT", 999_999).await.unwrap_err();
    assert_eq!(unknown.exchange_code(), Some(-2011));
    assert_eq!(unknown.classification().category, Category::User);
    assert_eq!(unknown.attempts(), 1);

    let stats = client.stats();
    assert_eq!(stats.retries, 0);
    assert_eq!(mock.stats().requests, 6, "one request per call");
    // The refused order locked nothing.
    assert_eq!(
        mock.balance("USDT"),
        Some(("10000.00000000".into(), "0.00000000".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn a_bad_signature_is_a_persistent_security_failure() {
    let mock = MockExchange::start(mock_config(FaultPlan::new()))
        .await
        .unwrap();
    let client = client_for(mock.base_url(), "not-the-secret", GovernorConfig::default());
    let err = client.account().await.unwrap_err();
    let class = err.classification();
    assert_eq!(class.code, "binance_-1022");
    assert_eq!(class.category, Category::Security);
    assert_eq!(class.transience, Transience::Persistent);
    assert_eq!(err.attempts(), 1);
    assert_eq!(mock.stats().requests, 1);
}

/// Waits (on the paused clock) until the mock has seen `n` requests.
async fn until_arrivals(mock: &MockExchange, n: u64) {
    while mock.stats().requests < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_call_until_the_advertised_time() {
    let plan = FaultPlan::new().at(
        1,
        Fault::RateLimit {
            retry_after: Duration::from_secs(30),
        },
    );
    let (mock, client) = start(plan).await;
    let client = Arc::new(client);
    let started = Instant::now();

    let first = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.ticker_price("BTCUSDT").await }
    });
    until_arrivals(&mock, 1).await;
    // A second caller, after the 429: it must wait for the pause as well.
    let second = tokio::spawn({
        let client = Arc::clone(&client);
        async move { client.ticker_price("ETHUSDT").await }
    });
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();

    let arrivals = mock.stats().arrivals;
    assert_eq!(arrivals.len(), 3);
    assert_eq!(arrivals[0].status, 429);
    for later in &arrivals[1..] {
        let after = later.at - started;
        // The header's 30 s, not the code table's 60 s default for -1003: the second
        // caller is held by the governor until then, and the failed call's retry waits at
        // least that long (palisade's retry adds up to half again as jitter).
        assert!(after >= Duration::from_secs(30), "{after:?}");
        assert!(after <= Duration::from_secs(45), "{after:?}");
        assert_eq!(later.status, 200);
    }
    assert!(
        arrivals[1].at - started < Duration::from_secs(31),
        "the held caller goes when the pause ends"
    );
    assert_eq!(mock.stats().requests_during_pause, 0);
    let governor = client.governor().stats();
    assert_eq!(governor.pauses, 1);
    // The second caller waited in the governor; the retry's own wait already covered the
    // pause.
    assert_eq!(governor.pause_waits, 1, "{governor:?}");
}

#[tokio::test(start_paused = true)]
async fn a_418_ban_holds_calls_until_it_ends() {
    let plan = FaultPlan::new().at(
        2,
        Fault::Ban {
            retry_after: Duration::from_secs(120),
        },
    );
    let (mock, client) = start(plan).await;
    client.ping().await.unwrap();
    let banned_at = Instant::now();
    // Banned on the first try. The retry would have to wait the ban's 120 s, more than the
    // call's total timeout (100 s) allows, so palisade's retry gives up at once.
    let err = client.ticker_price("BTCUSDT").await.unwrap_err();
    assert_eq!(err.classification().code, "binance_-1003");
    assert_eq!(err.attempts(), 1);
    assert!(banned_at.elapsed() < Duration::from_secs(1));
    assert_eq!(mock.stats().requests, 2, "nothing sent during the ban");
    // A call made during the ban is not held into its timeout either: the governor refuses
    // it at once, locally, with the wait left.
    let err = client.ticker_price("BTCUSDT").await.unwrap_err();
    assert_eq!(err.classification().code, "binance_-1003");
    assert!(banned_at.elapsed() < Duration::from_secs(1));
    assert_eq!(client.governor().stats().refused_past_deadline, 1);
    assert_eq!(mock.stats().requests, 2, "nothing sent during the ban");
    // Once the rest of the ban fits a call's budget, the call waits for its end and goes
    // through.
    tokio::time::sleep(Duration::from_secs(30)).await;
    client.ticker_price("BTCUSDT").await.unwrap();
    let last = mock.stats().arrivals.last().unwrap().at;
    assert!(last - banned_at >= Duration::from_secs(120));
    assert!(last - banned_at < Duration::from_secs(121));
    assert_eq!(mock.stats().requests_during_pause, 0);
}

#[tokio::test(start_paused = true)]
async fn the_governor_slows_down_before_the_exchange_refuses() {
    let (mock, client) = start_weight_limited(GovernorConfig {
        limit: 100,
        threshold: 0.8,
        ..GovernorConfig::default()
    })
    .await;
    let started = Instant::now();
    for _ in 0..60 {
        client.ticker_price("BTCUSDT").await.unwrap(); // weight 2: 120 in all
    }
    let exchange = mock.stats();
    assert_eq!(exchange.weight_refusals, 0);
    assert!(exchange.peak_weight <= 80, "{}", exchange.peak_weight);
    let waits = client.governor().stats();
    assert_eq!(waits.weight_waits, 1);
    // 40 calls fit the first minute's budget; the 41st waited for the next window.
    assert!(exchange.arrivals[39].at - started < Duration::from_secs(1));
    assert!(exchange.arrivals[40].at - started >= Duration::from_secs(60));
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn without_the_governor_the_exchange_refuses() {
    // The same load with a client that believes the limit is ten times higher: the exchange
    // answers 429, which shows the previous test's zero refusals are the governor's doing.
    let (mock, client) = start_weight_limited(GovernorConfig {
        limit: 1000,
        ..GovernorConfig::default()
    })
    .await;
    for _ in 0..60 {
        client.ticker_price("BTCUSDT").await.unwrap();
    }
    assert!(mock.stats().weight_refusals >= 1);
    assert!(client.stats().retries >= 1);
    assert_eq!(mock.stats().requests_during_pause, 0);
}

#[path = "support/captured_logs.rs"]
mod captured_logs;
use captured_logs::Captured;

/// Every event of this test binary at TRACE, from every thread and crate (reqwest, hyper,
/// axum included). A global subscriber, not a scoped one: tracing caches per-callsite
/// interest process-wide, so a thread-local subscriber can miss events whose callsites were
/// first hit by a concurrently running test.
fn captured_logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other test sets a subscriber");
        logs
    })
}

#[tokio::test(start_paused = true)]
async fn no_secret_reaches_logs_or_errors() {
    let logs = captured_logs();

    let plan = FaultPlan::seeded(5, 60, Duration::from_secs(3));
    let (mock, client) = start(plan).await;
    let outcome = session::run(&client, 40).await;

    let mut texts = vec![format!("{client:?}")];
    for error in &outcome.errors {
        texts.push(error.to_string());
        texts.push(format!("{error:?}"));
    }
    // A signature the exchange refuses, and a transport error on a signed request.
    let wrong = client_for(mock.base_url(), "wrong-secret", GovernorConfig::default());
    let refused = wrong.account().await.unwrap_err();
    // A peer that hangs up on every connection, so each attempt fails inside reqwest (whose
    // errors carry the signed URL until the transport strips it). The port stays ours: a
    // closed port could be taken by a concurrently started mock, which would answer.
    let hang_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = format!("http://{}", hang_up.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((connection, _)) = hang_up.accept().await {
            drop(connection);
        }
    });
    let nowhere = client_for(closing, SECRET_KEY, GovernorConfig::default());
    let order = NewOrder {
        symbol: "BTCUSDT".into(),
        side: Side::Buy,
        quantity: "0.001".into(),
        price: "100".into(),
    };
    let unreachable = nowhere.place_order(&order).await.unwrap_err();
    assert_eq!(unreachable.operation(), Operation::PlaceOrder);
    assert!(
        matches!(unreachable, error::ExchangeError::Transport { .. }),
        "{unreachable}"
    );
    for error in [&refused, &unreachable] {
        texts.push(error.to_string());
        texts.push(format!("{error:?}"));
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            texts.push(cause.to_string());
            source = cause.source();
        }
    }
    texts.push(format!("{nowhere:?}"));

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "the capture works");
    let signatures = mock.stats().signatures;
    assert!(signatures.len() >= 5);
    let mut secrets = vec![
        API_KEY.to_owned(),
        SECRET_KEY.to_owned(),
        "wrong-secret".into(),
    ];
    secrets.extend(signatures);
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
        for text in &texts {
            assert!(!text.contains(secret.as_str()), "a secret in {text}");
        }
    }
    // The signed URL is not there either, only the operation.
    assert!(!logs.contains("signature="));
    // Correlation IDs are logged, by the client (its `call` span) and by the mock, and the
    // lines that carry them hold no secret (checked above for every line; here the lines
    // with this session's IDs, so the check cannot pass for want of IDs in the logs).
    let ids: std::collections::BTreeSet<String> = mock
        .stats()
        .arrivals
        .iter()
        .filter_map(|a| a.request_id.clone())
        .collect();
    assert!(ids.len() >= 30, "one ID per call: {}", ids.len());
    let mut lines_with_ids = 0;
    for line in logs
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
    {
        lines_with_ids += 1;
        assert!(
            line.contains("correlation_id") || line.contains("request_id"),
            "{line}"
        );
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret next to an ID: {line}"
            );
        }
    }
    assert!(lines_with_ids >= ids.len(), "every ID is logged");
    assert!(texts.iter().all(|t| !t.contains("signature=")));
}

#[test]
fn credentials_debug_is_redacted() {
    let credentials = Credentials::new(Secret::new(API_KEY), Secret::new(SECRET_KEY)).unwrap();
    let shown = format!(
        "{credentials:?} {:?}",
        transport::sign(&Secret::new(SECRET_KEY), "a=1")
    );
    assert!(
        !shown.contains(API_KEY) && !shown.contains(SECRET_KEY),
        "{shown}"
    );
    assert!(shown.contains("<redacted>"));
}

#[test]
fn signatures_match_binance_documentation() {
    // The worked example of Binance's SIGNED endpoint documentation.
    let secret = Secret::new("NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j");
    let payload = "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
    assert_eq!(
        transport::sign(&secret, payload).expose(),
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    );
}

#[test]
fn used_weight_headers_name_their_window() {
    use http::HeaderMap;
    let mut headers = HeaderMap::new();
    headers.insert("x-mbx-used-weight-1m", "417".parse().unwrap());
    assert_eq!(
        governor::used_weight(&headers),
        Some((Duration::from_secs(60), 417))
    );
    assert_eq!(
        governor::parse_interval("10s"),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        governor::parse_interval("1h"),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(governor::parse_interval("0m"), None);
    assert_eq!(governor::parse_interval("m"), None);
    assert_eq!(governor::parse_interval("5x"), None);
    let mut bad = HeaderMap::new();
    bad.insert("x-mbx-used-weight-1m", "lots".parse().unwrap());
    assert_eq!(governor::used_weight(&bad), None);
}

#[test]
fn fixed_point_amounts_parse_strictly() {
    assert_eq!(mock::parse_fixed("0.001"), Some(100_000));
    assert_eq!(mock::parse_fixed("60000"), Some(6_000_000_000_000));
    assert_eq!(mock::parse_fixed("1.123456789"), None);
    assert_eq!(mock::parse_fixed("-1"), None);
    assert_eq!(mock::parse_fixed("1e5"), None);
    assert_eq!(mock::parse_fixed("."), None);
    assert_eq!(mock::format_fixed(123_456_789), "1.23456789");
}

#[tokio::test(start_paused = true)]
async fn a_retried_order_is_placed_once() {
    // The exchange takes the order but answers after the attempt timeout (2 s). The retry
    // carries the same newClientOrderId and is refused as a duplicate (-2010, as Binance
    // does); the client then finds the order by that id instead of reporting a failure.
    let plan = FaultPlan::new().at(
        1,
        Fault::Slow {
            delay: Duration::from_secs(5),
        },
    );
    let (mock, client) = start(plan).await;
    let order = NewOrder {
        symbol: "ETHUSDT".into(),
        side: Side::Buy,
        quantity: "0.5".into(),
        price: "2900".into(),
    };
    let ack = client.place_order(&order).await.unwrap();
    assert_eq!(ack.status, "NEW");
    assert_eq!(ack.client_order_id, "palisade-1");
    let stats = client.stats();
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.failures_with_code("timeout_attempt"), 1);
    assert_eq!(stats.failures_with_code("binance_-2010"), 1);
    assert_eq!(stats.duplicates_resolved, 1);
    assert!(stats.final_errors.is_empty(), "{:?}", stats.final_errors);
    assert_eq!(stats.succeeded, stats.calls);
    let exchange = mock.stats();
    let operations: Vec<_> = exchange.arrivals.iter().map(|a| a.operation).collect();
    assert_eq!(
        operations,
        [
            Some(Operation::PlaceOrder),
            Some(Operation::PlaceOrder),
            Some(Operation::QueryOrder)
        ]
    );
    // Placing and looking up is one operation: one correlation ID on all three requests.
    let ids: Vec<_> = exchange
        .arrivals
        .iter()
        .map(|a| a.request_id.clone())
        .collect();
    assert!(ids[0].is_some());
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(exchange.orders_placed, 1, "one order, not two");
    assert_eq!(mock.open_orders(), 1);
    assert_eq!(
        mock.balance("USDT"),
        Some(("8550.00000000".into(), "1450.00000000".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn every_try_of_a_call_carries_its_correlation_id() {
    // The first call fails twice (503, 502) and succeeds on its third try; two more calls
    // succeed at once.
    let plan = FaultPlan::new()
        .at(1, Fault::ServerError { status: 503 })
        .at(2, Fault::ServerError { status: 502 });
    let (mock, client) = start(plan).await;
    for _ in 0..3 {
        client.ticker_price("BTCUSDT").await.unwrap();
    }
    assert_eq!(client.stats().retries, 2);
    let arrivals = mock.stats().arrivals;
    assert_eq!(arrivals.len(), 5);
    let ids: Vec<String> = arrivals
        .iter()
        .map(|a| a.request_id.clone().expect("the mock recorded an ID"))
        .collect();
    // The client's own IDs: generated UUIDv7s.
    for id in &ids {
        assert_eq!(id.len(), 36, "{id}");
        assert!(CorrelationId::parse(id.as_bytes()).is_some());
    }
    assert_eq!(ids[0], ids[1], "the retry carries the call's ID");
    assert_eq!(ids[0], ids[2], "so does the second retry");
    assert_ne!(ids[2], ids[3], "the next call has its own ID");
    assert_ne!(ids[3], ids[4]);
    assert_ne!(ids[0], ids[4]);

    // A caller's own ID (a larger operation of its own) is used as it is.
    let mine = CorrelationId::parse(b"session-7-ping").unwrap();
    correlation::scope(mine, client.ping()).await.unwrap();
    let last = mock.stats().arrivals.pop().unwrap();
    assert_eq!(last.operation, Some(Operation::Ping));
    assert_eq!(last.request_id.as_deref(), Some("session-7-ping"));
}

#[tokio::test(start_paused = true)]
async fn the_session_is_counted_in_palisade_metrics() {
    // A recorder for this test's thread only (the paused runtime is single-threaded), set
    // before the client is built, as the program installs its global one.
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);

    // Arrival 5 is the session's second ticker call: one 503, one retry.
    let plan = FaultPlan::new().at(5, Fault::ServerError { status: 503 });
    let (_mock, client) = start(plan).await;
    session::run(&client, 30).await;
    let stats = client.stats();

    let text = prometheus.render();
    let samples = exposition::samples(&text);
    let count = |name: &str, with: &[(&str, &str)]| exposition::total(&samples, name, with);
    let ticker = stats.operations[&Operation::TickerPrice];
    assert!(ticker.calls >= 15, "{ticker:?}");
    assert_eq!(ticker.failed, 1, "the script's misspelt symbol");
    let requests = "palisade_requests_total";
    assert_eq!(
        count(requests, &[("operation", "ticker_price")]),
        f64::from(ticker.calls)
    );
    assert_eq!(
        count(
            requests,
            &[("operation", "ticker_price"), ("outcome", "success")]
        ),
        f64::from(ticker.calls - 1)
    );
    assert_eq!(
        count(
            requests,
            &[("operation", "ticker_price"), ("outcome", "failure")]
        ),
        1.0
    );
    // Every call of every endpoint is counted once.
    assert_eq!(count(requests, &[]), f64::from(stats.calls));
    // The failures by classification: -1121 (user) on the ticker.
    assert_eq!(
        count(
            "palisade_errors_total",
            &[
                ("operation", "ticker_price"),
                ("category", "user"),
                ("code", "binance_-1121")
            ]
        ),
        1.0
    );
    let final_failures: u32 = stats.final_errors.values().sum();
    assert_eq!(
        count("palisade_errors_total", &[]),
        f64::from(final_failures)
    );
    // The retry layer's own metrics, labelled with the policy (`ticker_price` runs under
    // `exchange_public`): the one retried call, its one extra attempt, and nothing counted
    // twice (the client records no metric of its own).
    assert_eq!(stats.retries, 1, "{stats:?}");
    assert_eq!(
        count(
            "palisade_retries_total",
            &[
                ("operation", "exchange_public"),
                ("outcome", "succeeded_after_retry")
            ]
        ),
        1.0
    );
    assert_eq!(
        count(
            "palisade_retry_attempts_total",
            &[("operation", "exchange_public")]
        ),
        1.0
    );
    assert_eq!(
        count("palisade_retry_attempts_total", &[]),
        f64::from(stats.retries)
    );
    assert_eq!(
        count("palisade_retries_total", &[("operation", "ticker_price")]),
        0.0,
        "no series by endpoint"
    );
    // Every call goes through its policy's retry layer once.
    assert_eq!(count("palisade_retries_total", &[]), f64::from(stats.calls));
    let public_calls: u32 = stats
        .operations
        .iter()
        .filter(|(op, _)| op.policy() == "exchange_public")
        .map(|(_, o)| o.calls)
        .sum();
    assert_eq!(
        count(
            "palisade_retries_total",
            &[("operation", "exchange_public")]
        ),
        f64::from(public_calls)
    );
    // The calls that failed for good, by the retry layer's outcome: the misspelt symbol and
    // the session's business refusals are not retryable.
    assert_eq!(
        count("palisade_retries_total", &[("outcome", "not_retryable")]),
        f64::from(final_failures),
        "{text}"
    );
    // Each breaker's state gauge, set when the client was built: closed, and still closed.
    assert_eq!(
        count(
            "palisade_circuit_breaker_state",
            &[
                ("breaker", "exchange_public:ticker_price"),
                ("state", "closed")
            ]
        ),
        1.0
    );
    // The report's section shows the endpoint's line.
    let summary = exposition::summary(&text);
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("ticker_price"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        line.contains(&format!("success {}", ticker.calls - 1)),
        "{line}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_refuses_the_call_without_sending_it() {
    // The public endpoints may have one call in flight and none waiting.
    let yaml = POLICIES.replace(
        "  exchange_public:\n    retry: { max_retries: 4 }",
        "  exchange_public:\n    retry: { max_retries: 4 }\n    \
         bulkhead: { max_concurrent: 1, max_queue: 0, max_wait: 1s }",
    );
    assert_ne!(yaml, POLICIES, "the example's exchange_public policy moved");
    let policies = Arc::new(Policies::from_yaml_str(&yaml).unwrap());
    let public = policies.for_operation("exchange_public");
    assert_eq!(public.bulkhead.max_concurrent, 1);
    assert_eq!(
        policies
            .for_operation("exchange_account")
            .bulkhead
            .max_concurrent,
        10
    );

    // The first ticker call is answered after 1 s (within the 2 s attempt timeout).
    let plan = FaultPlan::new().at(
        1,
        Fault::Slow {
            delay: Duration::from_secs(1),
        },
    );
    let mock = MockExchange::start(mock_config(plan)).await.unwrap();
    let credentials = Credentials::new(Secret::new(API_KEY), Secret::new(SECRET_KEY)).unwrap();
    let config = ClientConfig {
        base_url: mock.base_url(),
        credentials,
        recv_window: Duration::from_secs(5),
        governor: GovernorConfig::default(),
        clock: t0(),
        seed: 11,
    };
    let client = ExchangeClient::new(config, policies).unwrap();

    let slow = client.ticker_price("BTCUSDT");
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Same policy, another endpoint: the policy's one permit is taken.
        let ping = client.ping().await;
        // Another policy has its own bulkhead.
        let account = client.account().await;
        (ping, account)
    };
    let (slow, (ping, account)) = tokio::join!(slow, meanwhile);
    slow.unwrap();
    account.unwrap();
    let refused = ping.unwrap_err();
    match &refused {
        error::ExchangeError::Refused {
            operation,
            classification,
            source,
        } => {
            assert_eq!(*operation, Operation::Ping);
            assert_eq!(&*source.bulkhead, "exchange_public");
            assert_eq!(source.max_concurrent, 1);
            assert_eq!(source.reason, palisade::error::BulkheadRejection::QueueFull);
            assert_eq!(classification.code, "bulkhead_full");
            assert_eq!(classification.transience, Transience::Transient);
        }
        other => panic!("expected a bulkhead refusal, got {other}"),
    }
    assert_eq!(refused.attempts(), 0);
    assert!(refused.to_string().contains("bulkhead"), "{refused}");

    // Nothing of the refused call reached the exchange, and it was not retried.
    let operations: Vec<_> = mock.stats().arrivals.iter().map(|a| a.operation).collect();
    assert_eq!(
        operations,
        [Some(Operation::TickerPrice), Some(Operation::Account)]
    );
    let stats = client.stats();
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.bulkhead_refusals["exchange_public"], 1);
    let public = client
        .bulkheads()
        .into_iter()
        .find(|b| b.name == "exchange_public")
        .unwrap();
    assert_eq!((public.refused, public.available), (1, 1));

    // With the permit back, the same call goes through.
    client.ping().await.unwrap();
}

#[test]
fn the_exposition_reader_undoes_escapes() {
    let text = "# HELP x_total x\nx_total{a=\"1\",b=\"q\\\"uote\"} 3\ny 2.5\n";
    let samples = exposition::samples(text);
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].labels["b"], "q\"uote");
    assert_eq!(exposition::total(&samples, "x_total", &[("a", "1")]), 3.0);
    let none = exposition::total(&samples, "x_total", &[("a", "2")]);
    assert_eq!(none.to_string(), "0", "no sample sums to 0, not -0");
    assert_eq!(exposition::total(&samples, "y", &[]), 2.5);
}

#[tokio::test(start_paused = true)]
async fn the_governor_learns_the_window_from_the_header_name() {
    // A 10-second window (X-MBX-USED-WEIGHT-10S): the client, configured for a minute,
    // waits for the 10-second boundary, not the minute.
    let mut config = mock_config(FaultPlan::new());
    config.weight_limit = 50;
    config.window = Duration::from_secs(10);
    let mock = MockExchange::start(config).await.unwrap();
    let governor = GovernorConfig {
        limit: 50,
        threshold: 0.8,
        ..GovernorConfig::default()
    };
    let client = client_for(mock.base_url(), SECRET_KEY, governor);
    let started = Instant::now();
    for _ in 0..30 {
        client.ticker_price("BNBUSDT").await.unwrap();
    }
    let exchange = mock.stats();
    assert_eq!(exchange.weight_refusals, 0);
    assert_eq!(client.governor().stats().weight_waits, 1);
    let resumed = exchange.arrivals[20].at - started;
    assert!(resumed >= Duration::from_secs(10), "{resumed:?}");
    assert!(resumed < Duration::from_secs(11), "{resumed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_clock_sync_held_by_the_governor_measures_only_the_round_trip() {
    let (_mock, client) = start_weight_limited(GovernorConfig {
        limit: 100,
        threshold: 0.8,
        ..GovernorConfig::default()
    })
    .await;
    for _ in 0..40 {
        client.ticker_price("BTCUSDT").await.unwrap(); // the whole budget: 80
    }
    let started = Instant::now();
    let offset = client.sync_time().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(59),
        "it waited for the window"
    );
    // Both clocks read the same time: the wait before sending is not half a round trip.
    assert!(offset.abs() <= 5, "offset {offset} ms");
    // And signed requests after it are accepted.
    client.account().await.unwrap();
}

fn rejected(message: &str, attempts: u32) -> error::ExchangeError {
    error::ExchangeError::Rejected {
        operation: Operation::PlaceOrder,
        status: 400,
        exchange_code: Some(-2010),
        exchange_message: message.into(),
        classification: palisade::classify::Classification::unclassified(),
        message: None,
        suggestion: None,
        attempts,
    }
}

#[test]
fn only_a_duplicate_of_an_earlier_attempt_is_resolved_by_a_lookup() {
    assert!(rejected("Duplicate order sent.", 2).is_duplicate_of_an_earlier_attempt());
    // On a first attempt the id was reused by the caller: a real error.
    assert!(!rejected("Duplicate order sent.", 1).is_duplicate_of_an_earlier_attempt());
    // -2010 for another reason is never a duplicate.
    let broke = rejected("Account has insufficient balance for requested action.", 2);
    assert!(!broke.is_duplicate_of_an_earlier_attempt());
}

#[tokio::test(start_paused = true)]
async fn an_unknown_order_lookup_is_a_persistent_user_error() {
    let (_mock, client) = start(FaultPlan::new()).await;
    let err = client
        .query_order("BTCUSDT", "palisade-404")
        .await
        .unwrap_err();
    assert_eq!(err.exchange_code(), Some(-2013));
    assert_eq!(err.classification().category, Category::User);
    assert_eq!(err.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_outage_opens_the_endpoints_breaker_which_probes_and_closes() {
    let (mock, client) = start(FaultPlan::new()).await;
    mock.outage(Operation::TickerPrice, Duration::from_secs(5));

    // One call and its four retries: five failures in a row open the ticker's breaker.
    let err = client.ticker_price("BTCUSDT").await.unwrap_err();
    assert_eq!(err.classification().code, "http_503");
    assert_eq!(err.attempts(), 5);
    assert_eq!(mock.stats().outage_answers, 5);
    let ticker = client.breaker(Operation::TickerPrice);
    assert_eq!(ticker.state(), CircuitState::Open);
    assert_eq!(
        client
            .stats()
            .retry_stops
            .get(&("exchange_public".into(), "max_retries")),
        Some(&1)
    );

    // Each endpoint has its own breaker: the others still call the exchange.
    client.ping().await.unwrap();
    assert_eq!(
        client.breaker(Operation::Ping).state(),
        CircuitState::Closed
    );

    // A call while it is open: its first try is refused without being sent, and palisade's
    // retry waits the breaker's retry-after for the probe, which fails (the outage is not
    // over); the next probe, after the doubled open time, finds the endpoint back.
    let before = mock.stats().requests;
    client.ticker_price("BTCUSDT").await.unwrap();
    let stats = client.stats();
    assert!(stats.breaker_refusals >= 1, "{stats:?}");
    // Only tries that were not refused reached the exchange.
    assert_eq!(mock.stats().requests, u64::from(stats.attempts));
    assert_eq!(
        stats.attempts + stats.breaker_refusals,
        stats.calls + stats.retries
    );
    assert!(mock.stats().requests > before);

    // One more success closes it (success_threshold: 2).
    client.ticker_price("BTCUSDT").await.unwrap();
    assert_eq!(ticker.state(), CircuitState::Closed);
    let report = client
        .breakers()
        .into_iter()
        .find(|b| b.name == "exchange_public:ticker_price")
        .unwrap();
    let path: Vec<_> = report.transitions.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        path.first(),
        Some(&(CircuitState::Closed, CircuitState::Open))
    );
    assert_eq!(
        path.last(),
        Some(&(CircuitState::HalfOpen, CircuitState::Closed))
    );
    assert!(report.rejections >= 1);
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_retries_when_failures_pile_up() {
    // Every third request fails with a 503: one call in two needs a retry, more than the
    // budget (10 plus 20% of calls over 10 s) allows for long.
    let mut plan = FaultPlan::new();
    for n in (1..=300).step_by(3) {
        plan = plan.at(n, Fault::ServerError { status: 503 });
    }
    let (mock, client) = start(plan).await;
    let mut failed = 0;
    for _ in 0..60 {
        if client.ticker_price("BTCUSDT").await.is_err() {
            failed += 1;
        }
    }
    let public = client
        .budgets()
        .into_iter()
        .find(|b| b.policy == "exchange_public")
        .unwrap();
    assert!(failed > 0, "the budget ran out");
    // Every call that failed did so because the budget refused its retry.
    assert_eq!(public.refused, failed);
    assert_eq!(
        client
            .stats()
            .retry_stops
            .get(&("exchange_public".into(), "budget_exhausted")),
        Some(&failed)
    );
    // No more retries than the budget's share: 10 + 20% of the 60 calls.
    assert!(public.retries <= 22, "{public:?}");
    // What it allows now is what the last calls earned back, far below its floor of 10.
    assert!(public.remaining < 10, "{public:?}");
    assert_eq!(
        u64::from(public.retries) + 60,
        mock.stats().requests,
        "each retry was one request"
    );
    // The 503s were a third of the tries: not enough to open the breaker.
    assert_eq!(
        client.breaker(Operation::TickerPrice).state(),
        CircuitState::Closed
    );
}
