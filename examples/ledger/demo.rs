//! `--demo`: a scripted scenario against the real servers, then a summary.
//!
//! Everything goes over HTTP through the ledger's API (and on to the simulated gateway),
//! except the simulated crash of a batch, which needs the ledger in-process. The run passes
//! (exit 0) only if every step behaved as described and the books balance at the end.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::app::batch::{BatchItem, BatchRequest, BatchRun, CrashPlan};
use crate::app::gateway::PAY;
use crate::app::simulator::{GatewayPayment, Simulator};
use crate::app::transfers::TransferState;
use crate::app::{Ledger, Server};

struct Client {
    http: reqwest::Client,
    base: String,
}

struct Reply {
    status: u16,
    replayed: bool,
    body: Value,
    /// The `x-request-id` the ledger echoed.
    request_id: String,
    /// `Retry-After`, if any.
    retry_after: Option<String>,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<Reply, reqwest::Error> {
        self.send_traced(method, path, body, key, None).await
    }

    async fn send_traced(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
        request_id: Option<&str>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let replayed = res.headers().contains_key("idempotent-replayed");
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header("x-request-id").unwrap_or_default();
        let retry_after = header("retry-after");
        let body = res.json().await.unwrap_or(Value::Null);
        Ok(Reply {
            status,
            replayed,
            body,
            request_id,
            retry_after,
        })
    }

    async fn post(
        &self,
        path: &str,
        body: Value,
        key: Option<&str>,
    ) -> Result<Reply, reqwest::Error> {
        self.send(reqwest::Method::POST, path, Some(body), key)
            .await
    }

    async fn get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    async fn balance(&self, account: &str) -> Result<i64, reqwest::Error> {
        Ok(
            self.get(&format!("/v1/accounts/{account}")).await?.body["balance"]
                .as_i64()
                .unwrap_or(i64::MIN),
        )
    }

    async fn transfer(
        &self,
        from: &str,
        to: &str,
        amount: i64,
        key: Option<&str>,
    ) -> Result<Reply, reqwest::Error> {
        self.post(
            "/v1/transfers",
            json!({ "from": from, "to": to, "amount": amount }),
            key,
        )
        .await
    }
}

fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.abs() / 100, minor.abs() % 100)
}

fn state(reply: &Reply) -> &str {
    reply.body["transfer"]["state"].as_str().unwrap_or("?")
}

fn code(reply: &Reply) -> &str {
    reply.body["error"]["code"].as_str().unwrap_or("-")
}

fn history(reply: &Reply) -> String {
    reply.body["transfer"]["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .unwrap_or_default()
}

/// Waits (a few seconds at most) until the payment breaker is closed, sending the probes
/// that close it: one transfer at a time between the demo's own accounts.
async fn wait_until_closed(ledger: &Arc<Ledger>) {
    for _ in 0..100 {
        match ledger.gateway.breaker(PAY) {
            Some(b) if b.state() != palisade::circuit_breaker::CircuitState::Closed => {
                if ledger.gateway.payments_refused().is_none() {
                    // The open period is over: the next payment is a probe.
                    let probe = crate::app::transfers::TransferRequest {
                        from: "alice".into(),
                        to: "bob".into(),
                        amount: 100,
                    };
                    let _ = ledger.transfer(probe, None).await;
                } else {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            _ => return,
        }
    }
}

/// A step's verdict, printed and remembered.
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn expect(&mut self, ok: bool, what: &str) {
        if !ok {
            println!("   !! expected: {what}");
            self.failed.push(what.to_owned());
        }
    }
}

/// Runs the scenario; returns whether every check held.
pub async fn run(
    ledger: &Arc<Ledger>,
    server: &Server,
    sim: &Simulator,
    failure_rate: f64,
) -> Result<bool, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let c = Client {
        http: reqwest::Client::new(),
        base: server.url(),
    };
    let mut checks = Checks { failed: Vec::new() };
    println!("palisade wallet ledger demo");
    println!(
        "  ledger   {}   (database {})",
        server.url(),
        ledger.db.path()
    );
    println!(
        "  gateway  {}   (simulator, failure rate {failure_rate})",
        sim.url()
    );
    let gw = ledger.gateway.policy();
    println!(
        "  payment_gateway policy: attempt timeout {:?}, total {:?}, {} retries from {:?} backoff",
        gw.timeout.attempt, gw.timeout.total, gw.retry.max_retries, gw.retry.base_delay
    );

    println!("\n1. open accounts");
    for (id, amount) in [("alice", 100_000), ("bob", 25_000), ("carol", 0)] {
        let r = c
            .post(
                "/v1/accounts",
                json!({ "id": id, "initial_balance": amount }),
                None,
            )
            .await?;
        checks.expect(r.status == 201, "accounts open with 201");
        println!(
            "   {id:<6} {:>10}",
            money(r.body["balance"].as_i64().unwrap_or(0))
        );
    }

    println!(
        "\n2. transfer alice -> bob 25.00 with Idempotency-Key demo-1, x-request-id demo-req-1"
    );
    let first = c
        .send_traced(
            reqwest::Method::POST,
            "/v1/transfers",
            Some(json!({ "from": "alice", "to": "bob", "amount": 2_500 })),
            Some("demo-1"),
            Some("demo-req-1"),
        )
        .await?;
    println!(
        "   {} {}  [{}]",
        first.status,
        state(&first),
        history(&first)
    );
    let first_id = first.body["transfer"]["id"].as_str().unwrap_or("?");
    let seen = sim.request_ids(first_id);
    println!(
        "   x-request-id echoed: {}; the gateway saw {:?} on its payment call(s)",
        first.request_id, seen
    );
    checks.expect(
        first.status == 201 && first.request_id == "demo-req-1",
        "the transfer completes and its correlation ID is echoed",
    );
    checks.expect(
        !seen.is_empty() && seen.iter().all(|id| id == "demo-req-1"),
        "the correlation ID reaches the gateway",
    );
    let alice_after_first = c.balance("alice").await?;

    println!("\n3. the client retries the same request (same key)");
    let replay = c.transfer("alice", "bob", 2_500, Some("demo-1")).await?;
    println!(
        "   {} {}  idempotent-replayed: {}  same transfer: {}",
        replay.status,
        state(&replay),
        replay.replayed,
        replay.body["transfer"]["id"] == first.body["transfer"]["id"]
    );
    checks.expect(
        replay.replayed && replay.status == first.status && replay.body == first.body,
        "a replayed key returns the original answer",
    );
    checks.expect(
        c.balance("alice").await? == alice_after_first,
        "a replay posts nothing",
    );

    println!("\n4. the same key with a different amount");
    let conflict = c.transfer("alice", "bob", 9_900, Some("demo-1")).await?;
    println!("   {} {}", conflict.status, code(&conflict));
    checks.expect(
        conflict.status == 422,
        "key reuse with another body is refused",
    );

    println!("\n5. carol (balance 0.00) -> alice 10.00");
    let broke = c.transfer("carol", "alice", 1_000, None).await?;
    println!(
        "   {} {} ({} {}, severity {}): not retried, never counts against a breaker  [{}]",
        broke.status,
        code(&broke),
        broke.body["error"]["transience"].as_str().unwrap_or("?"),
        broke.body["error"]["category"].as_str().unwrap_or("?"),
        broke.body["error"]["severity"].as_str().unwrap_or("?"),
        history(&broke)
    );
    checks.expect(
        broke.status == 422 && code(&broke) == "insufficient_funds",
        "insufficient funds is a 422",
    );

    println!("\n6. alice -> bob 10.13 (the simulated issuer declines amounts ending in 13)");
    let before = c.balance("alice").await?;
    let declined = c.transfer("alice", "bob", 1_013, None).await?;
    println!(
        "   {} {}: \"{}\"  [{}]",
        declined.status,
        code(&declined),
        declined.body["error"]["user_message"]
            .as_str()
            .unwrap_or(""),
        history(&declined)
    );
    let after = c.balance("alice").await?;
    println!(
        "   alice before {} after {}: the debit was compensated",
        money(before),
        money(after)
    );
    checks.expect(
        state(&declined) == "ROLLED_BACK" && before == after,
        "a declined payment is rolled back and the debit restored",
    );

    println!(
        "\n7. 40 concurrent transfers while the gateway fails {:.0}% of calls",
        failure_rate * 100.0
    );
    let (gw_before, sim_before) = (ledger.gateway.stats(), sim.stats().calls);
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let http = c.http.clone();
        let base = c.base.clone();
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        // 1.00 to 3.99: never more than either side holds (20 x 3.99 < 250.00), never
        // ending in 13, so only injected faults can fail these.
        let amount = match 100 + (i * 37) % 300 {
            a if a % 100 == 13 => a + 1,
            a => a,
        };
        tasks.push(tokio::spawn(async move {
            let c = Client { http, base };
            c.transfer(from, to, amount, Some(&format!("demo-load-{i}")))
                .await
                .map(|r| {
                    let state = r.body["transfer"]["state"].as_str().unwrap_or("?");
                    (state.to_owned(), code(&r).to_owned())
                })
        }));
    }
    let (mut completed, mut rolled_back, mut refused, mut other) = (0, 0, 0, 0);
    for t in tasks {
        match t.await? {
            Ok((state, _)) if state == "COMPLETED" => completed += 1,
            Ok((state, _)) if state == "ROLLED_BACK" => rolled_back += 1,
            // The breaker may open on a run of injected faults: refused before the debit.
            Ok((state, code)) if state == "FAILED" && code == "circuit_open" => refused += 1,
            _ => other += 1,
        }
    }
    let gw_after = ledger.gateway.stats();
    println!(
        "   completed {completed}, rolled back {rolled_back}, refused by the breaker {refused}, other {other}"
    );
    println!(
        "   {} payment calls through palisade's retry made {} attempts at the gateway",
        gw_after.calls - gw_before.calls,
        sim.stats().calls - sim_before
    );
    checks.expect(
        other == 0,
        "every transfer ends COMPLETED, ROLLED_BACK or refused before its debit",
    );
    // Let a breaker the load may have opened close again before the outage.
    wait_until_closed(ledger).await;

    println!("\n8. gateway outage: every payment call answers 503");
    sim.set_outage(true);
    let pay = ledger.gateway.breaker(PAY);
    let trips_before = pay.as_ref().map_or(0, |b| b.metrics().trips);
    let mut opened = false;
    for n in 1..=6 {
        let t0 = Instant::now();
        let calls_before = sim.stats().calls;
        let r = c.transfer("alice", "bob", 500, None).await?;
        let calls = sim.stats().calls - calls_before;
        let path = match history(&r) {
            h if h.is_empty() => "refused before the debit".to_owned(),
            h => h,
        };
        println!(
            "   transfer {n}: {} {} in {:.1?}, {calls} gateway call(s)  [{path}]",
            r.status,
            code(&r),
            t0.elapsed(),
        );
        // 503 circuit_open: refused before the debit. (A 502 circuit_open is a transfer whose
        // retry met the breaker opening: it was debited, then compensated.)
        if r.status == 503 && code(&r) == "circuit_open" {
            let before = c.balance("alice").await?;
            println!(
                "   the breaker is open: refused fast, nothing debited (alice still {}), Retry-After {}s",
                money(before),
                r.retry_after.as_deref().unwrap_or("?")
            );
            checks.expect(
                calls == 0 && r.retry_after.is_some(),
                "an open breaker refuses a transfer fast, before any debit or gateway call",
            );
            opened = true;
            break;
        }
        checks.expect(
            state(&r) == "ROLLED_BACK",
            "an outage rolls the transfer back",
        );
    }
    checks.expect(opened, "the outage opens the payment breaker");
    let ready = c.get("/health/ready").await?;
    println!(
        "   /health/ready: {} {}  (breaker:payment_gateway {})",
        ready.status,
        ready.body["status"].as_str().unwrap_or("?"),
        ready.body["components"]["breaker:payment_gateway"]["detail"]
            .as_str()
            .unwrap_or("-")
    );
    checks.expect(
        ready.status == 200 && ready.body["status"] == "degraded",
        "an open breaker makes the service degraded, still ready",
    );

    println!("\n9. the gateway recovers (and, for this step, stops injecting faults)");
    sim.set_outage(false);
    sim.set_failure_rate(0.0);
    let wait = ledger
        .gateway
        .payments_refused()
        .map_or(std::time::Duration::ZERO, |o| o.retry_after);
    println!("   waiting {wait:.1?} for the breaker to let a probe through");
    tokio::time::sleep(wait + std::time::Duration::from_millis(50)).await;
    let probe_policy = ledger.gateway.policy();
    let mut closed = false;
    for n in 1..=probe_policy.circuit_breaker.success_threshold + 2 {
        let r = c.transfer("alice", "bob", 500, None).await?;
        let now = ledger
            .gateway
            .breaker(PAY)
            .map(|b| format!("{:?}", b.state()))
            .unwrap_or_default();
        println!("   probe {n}: {} {}  breaker {now}", r.status, state(&r));
        if now == "Closed" {
            closed = true;
            break;
        }
    }
    let trips = ledger.gateway.breaker(PAY).map_or(0, |b| b.metrics().trips);
    checks.expect(
        closed && trips > trips_before,
        "the breaker opened, then closed again after successful probes",
    );
    sim.set_failure_rate(failure_rate);

    println!("\n10. batch of 4 payouts, one from carol who has nothing");
    let items = json!([
        { "from": "alice", "to": "carol", "amount": 1_000 },
        { "from": "carol", "to": "bob", "amount": 5_000 },
        { "from": "alice", "to": "bob", "amount": 700 },
        { "from": "bob", "to": "alice", "amount": 300 },
    ]);
    let batch = c
        .post(
            "/v1/batches",
            json!({ "id": "payroll-1", "items": items }),
            None,
        )
        .await?;
    println!(
        "   {} {}: posted {}, failed {} ({})",
        batch.status,
        batch.body["state"].as_str().unwrap_or("?"),
        batch.body["posted"],
        batch.body["failed"],
        batch.body["failures"][0][1].as_str().unwrap_or("-")
    );
    c.post(
        "/v1/accounts",
        json!({ "id": "carol-topup", "initial_balance": 5_000 }),
        None,
    )
    .await?;
    c.transfer("carol-topup", "carol", 5_000, None).await?;
    let replayed = c
        .post("/v1/batches/payroll-1/replay", json!({}), None)
        .await?;
    println!(
        "   carol topped up; operator replay: {}: posted {}, failed {}",
        replayed.body["state"].as_str().unwrap_or("?"),
        replayed.body["posted"],
        replayed.body["failed"]
    );
    checks.expect(
        replayed.body["posted"] == 4 && replayed.body["failed"] == 0,
        "the replay posts the failed item",
    );

    println!("\n11. crash in the middle of a batch, then resume");
    let id = ledger
        .create_batch(BatchRequest {
            id: Some("sweep-1".into()),
            items: (0..6)
                .map(|i| BatchItem {
                    from: "alice".into(),
                    to: "bob".into(),
                    amount: 100 + i,
                })
                .collect(),
        })
        .await?;
    let crashed = ledger
        .run_batch(
            &id,
            CrashPlan {
                before_commit_of: Some(3),
                after_commit_of: None,
            },
        )
        .await?;
    let mid = ledger.batch_status(&id).await?;
    println!(
        "   {:?}: checkpoint {}, posted {}, pending {}",
        crashed, mid.checkpoint, mid.posted, mid.pending
    );
    let resumed = ledger.resume_batches().await?;
    let done = ledger.batch_status(&id).await?;
    println!(
        "   resumed {:?}: {}, checkpoint {}, posted {} of {}",
        resumed, done.state, done.checkpoint, done.posted, done.total
    );
    checks.expect(
        matches!(crashed, BatchRun::Crashed { seq: 3 }) && mid.posted == 3 && done.posted == 6,
        "resume posts each remaining item once",
    );

    println!(
        "\n12. reconciliation, with a payment planted at the gateway that the ledger never made"
    );
    sim.plant(GatewayPayment {
        payment_id: "pay_planted".into(),
        reference: "tr_not_in_ledger".into(),
        amount: 4_200,
        from: "mallory".into(),
        to: "bob".into(),
        status: "settled".into(),
    });
    let report = c.post("/v1/reconciliation", json!({}), None).await?;
    let found = report.body["discrepancies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!(
        "   checked {} transfers and {} payments: {} discrepancy(ies)",
        report.body["ledger_checked"],
        report.body["gateway_checked"],
        found.len()
    );
    for d in &found {
        println!(
            "   - {} {}: {}",
            d["kind"].as_str().unwrap_or("?"),
            d["reference"].as_str().unwrap_or("?"),
            d["detail"].as_str().unwrap_or("")
        );
    }
    checks.expect(
        found.iter().any(|d| d["reference"] == "tr_not_in_ledger"),
        "reconciliation finds the planted payment",
    );

    println!("\n13. what operators see: /metrics and /health/ready");
    let metrics = c
        .http
        .get(format!("{}/metrics", c.base))
        .send()
        .await?
        .text()
        .await?;
    // The layers register every series when they are built, so most of them read 0: only
    // those that moved are shown.
    let moved = |l: &&str| !l.ends_with(" 0");
    let shown: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("palisade_requests_total{operation=\"transfer\"")
                || l.starts_with("palisade_circuit_breaker_transitions_total")
                || l.starts_with("ledger_transfer_transitions_total{state=\"ROLLED_BACK\"")
        })
        .filter(moved)
        .collect();
    for line in &shown {
        println!("   {line}");
    }
    checks.expect(
        shown
            .iter()
            .any(|l| l.starts_with("palisade_requests_total{operation=\"transfer\"")),
        "/metrics counts the transfer operation's requests",
    );
    let payments_breaker = format!("{{breaker=\"{PAY}/");
    checks.expect(
        shown.iter().any(|l| {
            l.starts_with("palisade_circuit_breaker_transitions_total")
                && l.contains(&payments_breaker)
                && l.contains("from=\"closed\",to=\"open\"")
        }),
        "/metrics records the payments breaker opening",
    );
    let ready = c.get("/health/ready").await?;
    println!(
        "   /health/ready: {} {}",
        ready.status,
        ready.body["status"].as_str().unwrap_or("?")
    );

    println!("\n14. the books");
    let check = c.get("/v1/ledger/check").await?.body;
    println!(
        "   balanced: {}  sum of balances {}  in suspense {}  money supply {}  ({} postings, {} entries)",
        check["balanced"],
        check["total_balance"],
        check["suspense_balance"],
        money(check["money_supply"].as_i64().unwrap_or(0)),
        check["transactions"],
        check["entries"]
    );
    checks.expect(
        check["balanced"] == true && check["suspense_balance"] == 0,
        "the books balance and nothing is stuck in suspense",
    );

    let g = ledger.gateway.stats();
    let s = sim.stats();
    let counters = &ledger.counters;
    println!("\nsummary");
    print!("   transfers:");
    for st in TransferState::ALL {
        print!(" {} {}", st.as_str(), counters.transitions(st));
    }
    println!();
    println!(
        "   idempotent replays {}; refused before the debit (gateway breaker open) {}",
        counters.replays(),
        counters.refusals()
    );
    println!(
        "   gateway client: {} calls, {} refused by its stack without sending; failed for good by code {:?}",
        g.calls, g.refused, g.failures_by_code
    );
    println!(
        "   gateway simulator: {} calls, {} injected faults, {} declined, {} settled",
        s.calls, s.injected_failures, s.declined, s.settled
    );
    let (runs, discrepancies) = counters.reconciliation();
    let (posted, failed) = counters.batch_items();
    println!("   reconciliation: {runs} run(s), {discrepancies} discrepancy(ies)");
    println!("   batch items: {posted} posted, {failed} failed (before replay)");
    println!("   database retries (busy/locked): {}", ledger.db.retries());
    println!("   took {:.1?}", started.elapsed());
    if checks.failed.is_empty() {
        println!("\nall checks passed");
        Ok(true)
    } else {
        println!(
            "\n{} check(s) FAILED: {:?}",
            checks.failed.len(),
            checks.failed
        );
        Ok(false)
    }
}
