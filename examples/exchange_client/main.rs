//! An exchange client that survives a misbehaving exchange, built on palisade.
//!
//! The program starts a mock Binance-style exchange on 127.0.0.1 (axum) that injects rate
//! limits, bans, 5xx answers, slow answers and clock errors on a schedule drawn from `--seed`,
//! runs a scripted session against it with a real reqwest client (prices, orders, cancels,
//! account checks, and a few caller mistakes), and prints a report: attempts, retries, waits
//! caused by the weight governor and by `Retry-After`, errors by category and code, latency
//! percentiles.
//!
//! Every failure is judged by palisade's classifiers: the `binance` error-code table in
//! `policies.yaml` (59 codes, each with a classification, a message and a suggestion), the
//! HTTP status and `Retry-After`, and transport errors. palisade's own layers do the rest,
//! from the per-operation policies in the same file: a bulkhead per policy, total and attempt
//! timeouts, retry with a retry budget per policy, and a circuit breaker per endpoint. Every
//! call runs under a correlation ID that each of its tries sends in `x-request-id`, and
//! palisade's metrics go to a Prometheus recorder the report reads back (`--metrics` prints
//! the whole text).
//!
//! ```text
//! cargo run --example exchange_client
//! cargo run --example exchange_client -- --seed 42 --requests 120 --log warn
//! cargo run --example exchange_client -- --metrics
//! cargo run --example exchange_client -- --help
//! ```

// The modules are shared with tests/exchange_*.rs (`#[path]`), which use parts the program
// itself does not.
mod classifier;
#[allow(dead_code)]
mod client;
mod clock;
#[allow(dead_code)]
mod error;
mod exposition;
#[allow(dead_code)]
mod governor;
#[allow(dead_code)]
mod mock;
#[allow(dead_code)]
mod report;
#[allow(dead_code)]
mod session;
#[allow(dead_code)]
mod stack;
mod transport;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use palisade::policy::Policies;
use tokio::time::Instant;

use crate::client::{ClientConfig, ExchangeClient};
use crate::clock::WallClock;
use crate::governor::GovernorConfig;
use crate::mock::{FaultPlan, MockConfig, MockExchange, SplitMix};
use crate::report::Report;
use crate::transport::{Credentials, Operation, Secret};

/// The step of the script at which the ticker endpoint goes down.
const OUTAGE_STEP: u32 = 12;

/// Runs a scripted trading session against a mock Binance-style exchange that injects
/// faults, and prints what the client did about them.
#[derive(Debug, Parser)]
#[command(name = "exchange_client")]
struct Args {
    /// Seed of the fault schedule, the prices and the backoff jitter; the same seed replays
    /// the same session.
    #[arg(long, default_value_t = 15)]
    seed: u64,
    /// Calls the scripted session makes (retries not counted).
    #[arg(long, default_value_t = 60)]
    requests: u32,
    /// The policy file (timeouts, retries, the error-code table).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/exchange_client/policies.yaml"))]
    policies: PathBuf,
    /// The mock's weight limit per window.
    #[arg(long, default_value_t = 80)]
    weight_limit: u32,
    /// The mock's weight window (Binance: 1m; shorter keeps the demo quick).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// The fraction of the weight limit the client allows itself before it waits.
    #[arg(long, default_value_t = 0.8)]
    threshold: f64,
    /// Run without injected faults (and without the outage).
    #[arg(long)]
    no_faults: bool,
    /// How long the ticker endpoint is down, from step 12 of the script (0: no outage). It
    /// shows the endpoint's circuit breaker opening, probing and closing.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// Print the whole Prometheus exposition of palisade's metrics after the report.
    #[arg(long)]
    metrics: bool,
    /// Log level of the client's events: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log: tracing::Level,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_max_level(args.log)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exchange_client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // palisade's metrics go to a Prometheus recorder (no HTTP listener: the report renders
    // it). Installed before the client is built: palisade's retry, timeout, bulkhead and
    // breaker layers register their series with the recorder in force when they are built.
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("palisade_request_duration_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0,
            ],
        )?
        .install_recorder()?;
    palisade::metrics::describe();
    let policies = Arc::new(Policies::from_path(&args.policies)?);
    let slow = policies.for_operation("exchange_public").timeout.attempt + Duration::from_secs(1);

    // Demo credentials, shared with the mock; never printed.
    let mut rng = SplitMix(args.seed ^ 0x5eed);
    let api_key = format!("demo{:016x}{:016x}", rng.next(), rng.next());
    let secret_key = format!("{:016x}{:016x}{:016x}", rng.next(), rng.next(), rng.next());

    let mut mock_config = MockConfig::new(api_key.clone(), secret_key.clone());
    mock_config.weight_limit = args.weight_limit;
    mock_config.window = args.window;
    mock_config.seed = args.seed;
    if !args.no_faults {
        let arrivals = u64::from(args.requests) * 13 / 10 + 10;
        mock_config.plan = FaultPlan::seeded(args.seed, arrivals, slow);
    }
    let scheduled = mock_config.plan.len();
    let mock = MockExchange::start(mock_config).await?;

    let credentials = Credentials::new(Secret::new(api_key), Secret::new(secret_key))?;
    let config = ClientConfig {
        base_url: mock.base_url(),
        credentials,
        recv_window: Duration::from_secs(5),
        governor: GovernorConfig {
            limit: args.weight_limit,
            threshold: args.threshold,
            ..GovernorConfig::default()
        },
        clock: WallClock::system(),
        seed: args.seed,
    };
    let client = ExchangeClient::new(config, Arc::clone(&policies))?;
    println!(
        "mock exchange on {} (weight limit {} per {}, {} faults scheduled); running {} calls",
        mock.base_url(),
        args.weight_limit,
        humantime::format_duration(args.window),
        scheduled,
        args.requests
    );

    let started = Instant::now();
    let outage = if args.no_faults {
        Duration::ZERO
    } else {
        args.outage
    };
    let outcome = session::run_with(&client, args.requests, |step| {
        if step == OUTAGE_STEP && !outage.is_zero() {
            println!(
                "step {step}: the exchange's ticker endpoint goes down for {}",
                humantime::format_duration(outage)
            );
            mock.outage(Operation::TickerPrice, outage);
        }
    })
    .await;
    let report = Report {
        seed: args.seed,
        calls: client.stats(),
        governor: client.governor().stats(),
        budget: (client.governor().config().budget(), args.weight_limit),
        budgets: client.budgets(),
        breakers: client.breakers(),
        bulkheads: client.bulkheads(),
        exchange: mock.stats(),
        elapsed: started.elapsed(),
    };
    println!();
    print!("{report}");
    println!(
        "orders acknowledged {}, cancelled {}, still open on the exchange {}",
        outcome.orders_acknowledged,
        outcome.orders_cancelled,
        mock.open_orders()
    );
    let exposition = prometheus.render();
    print!("{}", exposition::summary(&exposition));
    println!("what a user was told (first error of each code)");
    let mut seen = BTreeSet::new();
    for error in &outcome.errors {
        let code = palisade::classify::Classified::classification(error).code;
        if seen.insert(code.to_string()) {
            println!("  - {error}");
        }
    }
    if args.metrics {
        println!();
        println!("Prometheus exposition of palisade's metrics");
        print!("{exposition}");
    }
    Ok(())
}
