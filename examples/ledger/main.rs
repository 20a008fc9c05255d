//! The wallet ledger, palisade's main example: a double-entry ledger on SQLite behind an axum
//! API, a payment-gateway client with palisade's classifiers and policies, a gateway
//! simulator with injected faults, reconciliation and checkpointed batches.
//!
//! ```text
//! cargo run --example ledger                 # serve on 127.0.0.1:3000 until Ctrl-C
//! cargo run --example ledger -- --demo       # scripted scenario, summary, exit 0
//! cargo run --example ledger -- --help       # every flag
//! ```
//!
//! The service lives in `app/` so the integration tests (`tests/ledger_*.rs`) run the same
//! code; this file is the command line and the demo.

mod app;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use palisade::policy::Policies;

use app::db::DbConfig;
use app::simulator::{Simulator, SimulatorConfig};
use app::{Ledger, LedgerConfig};

/// How logs are written (to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One JSON object per line, with the spans it was logged in: `request` (correlation_id)
    /// and `transfer` (transfer_id, idempotency_key).
    Json,
    /// Human-readable lines.
    Text,
    /// No logs.
    Off,
}

/// palisade's wallet ledger example: a double-entry ledger service with a payment gateway,
/// reconciliation and checkpointed batches, every dependency call under a YAML policy.
#[derive(Debug, Parser)]
#[command(
    name = "ledger",
    after_help = "Environment variables override the policy file, e.g.\n  \
                  PALISADE__POLICIES__PAYMENT_GATEWAY__TIMEOUT__ATTEMPT=500ms\n  \
                  PALISADE__POLICIES__PAYMENT_GATEWAY__ENABLED=false switches the gateway off:\n    \
                  transfers are refused (503 operation_disabled) before any debit.\n\n\
                  The simulated gateway declines amounts ending in 13 (e.g. 10.13) with `card_declined`."
)]
struct Cli {
    /// Run a scripted scenario against real servers, print a summary and exit (0 if the books
    /// balance).
    #[arg(long)]
    demo: bool,
    /// Port on 127.0.0.1 [default: 3000, or a free port if 3000 is taken; the demo always
    /// uses a free port].
    #[arg(long)]
    port: Option<u16>,
    /// SQLite database file, or `:memory:`.
    #[arg(long, default_value = ":memory:")]
    db: String,
    /// SQLite connections in the pool (file databases; `:memory:` uses one).
    #[arg(long, default_value_t = 4)]
    pool_size: usize,
    /// How long SQLite waits for a lock before answering BUSY (then the
    /// `database_operation` retry policy takes over).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    busy_timeout: Duration,
    /// The policy file [default: examples/ledger/policies.yaml].
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Print the resolved policy table and exit.
    #[arg(long)]
    print_policies: bool,
    /// Probability (0 to 1) that a payment call to the simulated gateway fails
    /// [default: 0.2; 0.3 in the demo].
    #[arg(long)]
    gateway_failure_rate: Option<f64>,
    /// Mean latency of the simulated gateway.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    gateway_latency: Duration,
    /// Seed of the simulator's fault generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Use this gateway instead of starting the simulator.
    #[arg(long)]
    gateway_url: Option<String>,
    /// Run reconciliation this often (`0s` turns the periodic run off).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    reconcile_every: Duration,
    /// Log format [default: json; text in the demo].
    #[arg(long, value_enum)]
    log: Option<LogFormat>,
    /// Log level: error, warn, info, debug, trace [default: info; warn in the demo].
    #[arg(long)]
    log_level: Option<tracing::Level>,
}

fn init_logs(format: LogFormat, level: tracing::Level) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        // The span list, not only the current span: a line logged inside a transfer carries
        // both the transfer's fields and the request's correlation ID.
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Off => Ok(()),
    };
}

fn print_policies(policies: &Policies, path: &std::path::Path) {
    println!("palisade ledger: policies from {}\n", path.display());
    println!("{}\n", policies.defaults());
    for policy in policies.operations() {
        println!("{policy}\n");
    }
    println!("routes:");
    for (route, operation) in policies.routes() {
        println!("  {route:<28} -> {operation}");
    }
    for table in policies.error_code_tables() {
        println!("\nerror codes `{}` ({} codes):", table.name(), table.len());
        let mut rows: Vec<_> = table.iter().collect();
        rows.sort_by_key(|(code, _)| *code);
        for (code, entry) in rows {
            println!("  {code:<20} {}", entry.classification);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, level) = if cli.demo {
        (LogFormat::Text, tracing::Level::WARN)
    } else {
        (LogFormat::Json, tracing::Level::INFO)
    };
    init_logs(cli.log.unwrap_or(format), cli.log_level.unwrap_or(level));

    let path = cli.policies.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ledger/policies.yaml")
    });
    let policies = match Policies::loader().with_process_env().load_path(&path) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.print_policies {
        print_policies(&policies, &path);
        return ExitCode::SUCCESS;
    }
    let failure_rate = cli
        .gateway_failure_rate
        .unwrap_or(if cli.demo { 0.3 } else { 0.2 });
    if !(0.0..=1.0).contains(&failure_rate) {
        eprintln!("--gateway-failure-rate must be between 0 and 1");
        return ExitCode::from(2);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match run(cli, policies, failure_rate).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ledger: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(
    cli: Cli,
    policies: Arc<Policies>,
    failure_rate: f64,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let simulator = match &cli.gateway_url {
        Some(_) => None,
        None => Some(
            Simulator::start(SimulatorConfig {
                failure_rate,
                latency: cli.gateway_latency,
                seed: cli.seed,
            })
            .await?,
        ),
    };
    let gateway_url = match (&cli.gateway_url, &simulator) {
        (Some(url), _) => url.clone(),
        (None, Some(sim)) => sim.url(),
        (None, None) => unreachable!("a simulator starts when no URL is given"),
    };
    let db = DbConfig {
        path: cli.db.clone(),
        pool_size: cli.pool_size,
        busy_timeout: cli.busy_timeout,
    };
    let ledger = Ledger::open(LedgerConfig {
        db,
        gateway_url: gateway_url.clone(),
        policies: Arc::clone(&policies),
    })?;
    let (transfers, batches) = ledger.recover().await?;
    if transfers > 0 || !batches.is_empty() {
        println!(
            "recovered {transfers} interrupted transfer(s) and {} batch(es)",
            batches.len()
        );
    }

    let listener = bind(cli.port, cli.demo).await?;
    let server = app::serve(Arc::clone(&ledger), listener)?;

    let periodic = (!cli.reconcile_every.is_zero()).then(|| {
        let ledger = Arc::clone(&ledger);
        app::reconcile::spawn_periodic(cli.reconcile_every, move || {
            let ledger = Arc::clone(&ledger);
            async move {
                if let Err(e) = ledger.reconcile().await {
                    tracing::error!(error = %e, "periodic reconciliation failed");
                }
            }
        })
    });

    if cli.demo {
        let sim = simulator
            .as_ref()
            .ok_or("the demo needs the built-in gateway simulator (no --gateway-url)")?;
        let ok = demo::run(&ledger, &server, sim, failure_rate).await?;
        if let Some(task) = periodic {
            task.abort();
        }
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let url = server.url();
    println!("palisade wallet ledger");
    println!("  ledger    {url}   (database {})", ledger.db.path());
    println!(
        "  gateway   {gateway_url}   ({})",
        if simulator.is_some() {
            format!(
                "simulator: failure rate {failure_rate}, latency {:?}, seed {}",
                cli.gateway_latency, cli.seed
            )
        } else {
            "external".to_owned()
        }
    );
    println!("  health    {url}/health/live  {url}/health/ready");
    println!("  metrics   {url}/metrics");
    println!("\npolicies (examples/ledger/policies.yaml, three palisade stacks):");
    for (route, operation) in policies.routes() {
        println!("  {route:<28} -> {operation}");
    }
    println!("  (SQLite queries)             -> database_operation");
    println!("  (gateway payments)           -> payment_gateway, one breaker per gateway host");
    println!("  (gateway look-ups, listing)  -> gateway_read");
    println!("\ntry:");
    let json = "-H 'content-type: application/json'";
    println!(
        "  curl -s {url}/v1/accounts {json} -d '{{\"id\":\"alice\",\"initial_balance\":10000}}'"
    );
    println!("  curl -s {url}/v1/accounts {json} -d '{{\"id\":\"bob\"}}'");
    println!(
        "  curl -s {url}/v1/transfers {json} -H 'idempotency-key: k1' -d '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":2500}}'"
    );
    println!(
        "  curl -s {url}/v1/transfers {json} -d '{{\"from\":\"alice\",\"to\":\"bob\",\"amount\":1013}}'   # declined, compensated"
    );
    println!(
        "  curl -s {url}/v1/accounts/alice -H 'x-request-id: my-trace-1' -i   # ID echoed, in the logs"
    );
    println!("  curl -s {url}/health/ready");
    println!("  curl -s {url}/metrics | grep palisade_requests_total");
    println!("  curl -s -X POST {url}/v1/reconciliation");
    println!("  curl -s {url}/v1/ledger/check");
    println!("\nCtrl-C stops.");
    tokio::signal::ctrl_c().await?;
    println!("stopping: finishing the requests in flight");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Binds 127.0.0.1: the given port; by default 3000, or a free port if 3000 is taken; the
/// demo always takes a free port, so it never collides with anything.
async fn bind(port: Option<u16>, demo: bool) -> std::io::Result<tokio::net::TcpListener> {
    match (port, demo) {
        (Some(p), _) => tokio::net::TcpListener::bind(("127.0.0.1", p)).await,
        (None, true) => tokio::net::TcpListener::bind(("127.0.0.1", 0)).await,
        (None, false) => match tokio::net::TcpListener::bind(("127.0.0.1", 3000)).await {
            Ok(l) => Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                eprintln!("port 3000 is taken; using a free port instead");
                tokio::net::TcpListener::bind(("127.0.0.1", 0)).await
            }
            Err(e) => Err(e),
        },
    }
}
