//! A gRPC quote service and its client, both behind palisade's stack, over 127.0.0.1.
//!
//! The program starts a tonic server (`server.yaml`) and connects a client (`client.yaml`),
//! then runs a short scripted session and prints what happened:
//!
//! 1. **A retry.** Every third `Get` fails once with `UNAVAILABLE`; the client's retry sends it
//!    again and the caller sees only the quote.
//! 2. **A deadline.** `History` works for 2 s; the client allows it 300 ms. The client's
//!    remaining time travels in `grpc-timeout`; the server's stack makes it its deadline and
//!    drops the handler when it passes. The caller gets `DEADLINE_EXCEEDED`.
//! 3. **An open breaker.** `Place` is down on the server. After three `UNAVAILABLE`s in a row
//!    the client's breaker for `orders_place` opens, and further calls are refused on the
//!    client, without a network round trip, with `UNAVAILABLE` and `grpc-retry-pushback-ms`.
//!
//! It exits 0 when everything happened as described, 1 otherwise.
//!
//! ```text
//! cargo run --example grpc --features grpc
//! ```

mod client;
mod codec;
mod server;

use std::process::ExitCode;
use std::time::Duration;

use palisade::circuit_breaker::CircuitState;
use palisade::stack::grpc::GRPC_RETRY_PUSHBACK_MS;
use tonic::{Code, Status};

use crate::client::{Call, QuoteClient};
use crate::server::{GET, HISTORY, PLACE, QuoteServer};

const SERVER_POLICIES: &str = include_str!("server.yaml");
const CLIENT_POLICIES: &str = include_str!("client.yaml");

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(failed) if failed.is_empty() => ExitCode::SUCCESS,
        Ok(failed) => {
            for check in failed {
                eprintln!("grpc: check failed: {check}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("grpc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the session; returns the checks that did not hold.
async fn run() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let server = QuoteServer::start(SERVER_POLICIES).await?;
    let client = QuoteClient::connect(server.url(), CLIENT_POLICIES).await?;
    println!(
        "quote server on {} (stack: server.yaml), client stack: client.yaml",
        server.url()
    );
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            failed.push(what.to_owned());
        }
    };

    println!("\n1. retry: every third Get fails once with UNAVAILABLE");
    for symbol in ["EURUSD", "GBPUSD", "USDJPY"] {
        let before = client.attempts().sent();
        let answer = client.call(get(symbol)).await;
        let attempts = client.attempts().sent() - before;
        match &answer {
            Ok(quote) => println!(
                "   Get {symbol}: {quote} ({attempts} {})",
                if attempts == 1 { "attempt" } else { "attempts" }
            ),
            Err(s) => println!("   Get {symbol}: {:?} {}", s.code(), s.message()),
        }
        check(answer.is_ok(), "every Get answers");
        if symbol == "GBPUSD" {
            check(attempts == 2, "the failed Get is retried once");
        }
    }

    println!("\n2. deadline: History works 2 s, the client allows 300 ms");
    let seen_before = server.log().calls().len();
    let answer = client.call(history("EURUSD")).await;
    let budget = client.attempts().last_budget();
    let code = answer.as_ref().err().map(Status::code);
    println!(
        "   client: {:?} after its 300 ms; {} left when the attempt was sent",
        code.unwrap_or(Code::Ok),
        budget.map_or("no deadline".into(), ms)
    );
    check(
        code == Some(Code::DeadlineExceeded),
        "History ends DEADLINE_EXCEEDED",
    );
    let seen = tokio::time::timeout(
        Duration::from_secs(2),
        server.log().wait_for_calls(seen_before + 1),
    )
    .await
    .ok()
    .and_then(|calls| calls.into_iter().rev().find(|c| c.method == HISTORY));
    match &seen {
        Some(call) => {
            println!(
                "   server: grpc-timeout {} -> {} after {}; handler finished: {}",
                call.grpc_timeout.map_or("none".into(), ms),
                call.status
                    .map_or("dropped (the client went away)".into(), |c| format!(
                        "{c:?}"
                    )),
                ms(call.elapsed),
                server.log().finished_history() > 0
            );
            check(
                matches!((call.grpc_timeout, budget), (Some(t), Some(b)) if t <= b && !t.is_zero()),
                "the server's grpc-timeout is no larger than the client's remaining time",
            );
            check(
                call.elapsed < server::HISTORY_WORK,
                "the server stopped before the handler's work was done",
            );
        }
        None => check(false, "the server recorded the History call"),
    }
    check(
        server.log().finished_history() == 0,
        "the History handler never finished",
    );

    println!("\n3. breaker: Place is down on the server");
    let mut events = client
        .breaker_events("orders_place")
        .ok_or("no breaker for orders_place")?;
    for n in 1..=5 {
        let reached_before = server.log().handled(PLACE);
        let status = client.call(place(n)).await.err();
        let reached = server.log().handled(PLACE) > reached_before;
        match &status {
            Some(s) => match s.metadata().get(GRPC_RETRY_PUSHBACK_MS) {
                Some(pushback) if !reached => println!(
                    "   Place #{n}: {:?}, refused on the client (breaker open), pushback {} ms",
                    s.code(),
                    pushback.to_str().unwrap_or("?")
                ),
                _ => println!(
                    "   Place #{n}: {:?} \"{}\" from the server",
                    s.code(),
                    s.message()
                ),
            },
            None => println!("   Place #{n}: ok"),
        }
        check(
            status.as_ref().map(Status::code) == Some(Code::Unavailable),
            "every Place is UNAVAILABLE",
        );
        check(
            reached == (n <= 3),
            "the breaker opens after three failures",
        );
    }
    let breaker = client
        .handle()
        .breaker("orders_place")
        .ok_or("no breaker")?;
    while let Ok(t) = events.try_recv() {
        println!(
            "   breaker {}: {} -> {} ({:?})",
            t.breaker, t.from, t.to, t.reason
        );
    }
    let metrics = breaker.metrics();
    println!(
        "   breaker orders_place is {}; {} calls recorded, {} refused",
        breaker.state(),
        metrics.calls,
        metrics.rejections
    );
    check(breaker.state() == CircuitState::Open, "the breaker is open");
    check(
        client.handle().breaker("quotes_get").map(|b| b.state()) == Some(CircuitState::Closed),
        "the quotes breaker stays closed",
    );

    println!(
        "\nserver saw {} calls; client sent {} attempts",
        server.log().calls().len(),
        client.attempts().sent()
    );
    Ok(failed)
}

/// A duration in milliseconds, to a hundredth.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn get(symbol: &str) -> Call {
    Call {
        method: GET,
        operation: "quotes_get",
        message: symbol.to_owned(),
    }
}

fn history(symbol: &str) -> Call {
    Call {
        method: HISTORY,
        operation: "quotes_history",
        message: symbol.to_owned(),
    }
}

fn place(n: u32) -> Call {
    Call {
        method: PLACE,
        operation: "orders_place",
        message: format!("BUY 1 EURUSD @ 1.08 #{n}"),
    }
}
