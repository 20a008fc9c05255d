//! What a session did, counted as it happens and printed at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use palisade::circuit_breaker::{CircuitState, Transition};
use palisade::classify::{Category, Classification, Transience};

use crate::governor::GovernorStats;
use crate::mock::MockStats;
use crate::transport::Operation;

/// Per-operation counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperationStats {
    /// Calls made.
    pub calls: u32,
    /// Attempts made (calls plus retries).
    pub attempts: u32,
    /// Calls that failed for good.
    pub failed: u32,
}

/// A failure code seen, with how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeCount {
    /// Whether it was retryable.
    pub transience: Transience,
    /// How many times.
    pub count: u32,
}

/// Counts kept by the client.
#[derive(Clone, Debug, Default)]
pub struct CallStats {
    /// Calls made.
    pub calls: u32,
    /// Calls that succeeded (possibly after retries).
    pub succeeded: u32,
    /// Attempts sent to the exchange.
    pub attempts: u32,
    /// Tries that were retries (including any the circuit breaker refused).
    pub retries: u32,
    /// Retries by policy (each policy has its own retry budget).
    pub retries_by_policy: BTreeMap<String, u32>,
    /// Why the retry layer gave up on a retryable failure, by policy and reason.
    pub retry_stops: BTreeMap<(String, &'static str), u32>,
    /// Tries refused by an open circuit breaker (not sent).
    pub breaker_refusals: u32,
    /// Backoff sleeps between attempts, and their total.
    pub backoff_sleeps: u32,
    /// Time slept in backoff.
    pub backoff_slept: Duration,
    /// Clock resyncs after `-1021`.
    pub time_resyncs: u32,
    /// Orders whose retry was refused as a duplicate and that were found placed.
    pub duplicates_resolved: u32,
    /// Latency of every answered attempt, from sending to the body read (governor waits,
    /// backoff and attempts that got no answer excluded).
    pub attempt_latencies: Vec<Duration>,
    /// Latency of every call, retries and waits included.
    pub call_latencies: Vec<Duration>,
    /// Failed attempts by category and code.
    pub attempt_failures: BTreeMap<(Category, String), CodeCount>,
    /// Calls that failed for good, by category and code.
    pub final_errors: BTreeMap<(Category, String), u32>,
    /// Per operation.
    pub operations: BTreeMap<Operation, OperationStats>,
    /// Calls refused by a full bulkhead, by bulkhead.
    pub bulkhead_refusals: BTreeMap<String, u32>,
}

impl CallStats {
    /// Counts a call.
    pub fn call_started(&mut self, operation: Operation) {
        self.calls += 1;
        self.operations.entry(operation).or_default().calls += 1;
    }

    /// Counts a failed attempt.
    pub fn attempt_failed(&mut self, class: &Classification) {
        let entry = self
            .attempt_failures
            .entry((class.category, class.code.to_string()))
            .or_insert(CodeCount {
                transience: class.transience,
                count: 0,
            });
        entry.count += 1;
    }

    /// Counts a call that failed for good.
    pub fn call_failed(&mut self, operation: Operation, class: &Classification) {
        *self
            .final_errors
            .entry((class.category, class.code.to_string()))
            .or_default() += 1;
        self.operations.entry(operation).or_default().failed += 1;
    }

    /// A place_order call first counted as failed (a duplicate of an earlier attempt) turned
    /// out placed: count it as succeeded.
    pub fn duplicate_resolved(&mut self, class: &Classification) {
        let key = (class.category, class.code.to_string());
        if let Some(n) = self.final_errors.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.final_errors.remove(&key);
            }
        }
        if let Some(op) = self.operations.get_mut(&Operation::PlaceOrder) {
            op.failed = op.failed.saturating_sub(1);
        }
        self.succeeded += 1;
        self.duplicates_resolved += 1;
    }

    /// Failed attempts with this code.
    pub fn failures_with_code(&self, code: &str) -> u32 {
        self.attempt_failures
            .iter()
            .filter(|((_, c), _)| c == code)
            .map(|(_, n)| n.count)
            .sum()
    }
}

/// The nearest-rank percentile of `samples` (`p` in 0..=100); `None` when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One bulkhead at the end of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkheadReport {
    /// Its name (the policy, or the partition it names).
    pub name: String,
    /// Calls allowed in flight.
    pub max_concurrent: usize,
    /// Calls allowed to wait for a permit.
    pub max_queue: usize,
    /// Permits free now.
    pub available: usize,
    /// Calls it refused.
    pub refused: u32,
}

/// One policy's retry budget at the end of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetReport {
    /// The policy.
    pub policy: String,
    /// Retries the budget would allow right now (`RetryBudget::remaining`).
    pub remaining: u64,
    /// Retries taken under it.
    pub retries: u32,
    /// Retries it refused.
    pub refused: u32,
}

/// One endpoint's circuit breaker at the end of the session.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerReport {
    /// The breaker's name (`policy:endpoint`).
    pub name: String,
    /// Its state now.
    pub state: CircuitState,
    /// Calls it recorded in its window.
    pub calls: u64,
    /// Counted failures in its window.
    pub failures: u64,
    /// Calls it refused while open.
    pub rejections: u64,
    /// Its transitions, from its event stream.
    pub transitions: Vec<Transition>,
    /// Events the stream dropped because nobody read them in time (all breakers).
    pub lagged: u64,
}

/// The end-of-session report.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed of the fault schedule and the session's script.
    pub seed: u64,
    /// The client's counts.
    pub calls: CallStats,
    /// The governor's counts.
    pub governor: GovernorStats,
    /// The weight budget the governor kept to, and the exchange's limit.
    pub budget: (u32, u32),
    /// The retry budgets.
    pub budgets: Vec<BudgetReport>,
    /// The circuit breakers.
    pub breakers: Vec<BreakerReport>,
    /// The bulkheads.
    pub bulkheads: Vec<BulkheadReport>,
    /// What the mock exchange saw.
    pub exchange: MockStats,
    /// Wall time of the session.
    pub elapsed: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn latency_line(f: &mut fmt::Formatter<'_>, what: &str, samples: &[Duration]) -> fmt::Result {
    let p = |q| percentile(samples, q).map_or_else(|| "-".to_owned(), ms);
    writeln!(
        f,
        "  {what:<9} p50 {:>10}   p90 {:>10}   p99 {:>10}   max {:>10}   (n={})",
        p(50.0),
        p(90.0),
        p(99.0),
        p(100.0),
        samples.len()
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.calls;
        let g = &self.governor;
        writeln!(f, "exchange client report (seed {})", self.seed)?;
        writeln!(f, "=====================================")?;
        writeln!(
            f,
            "calls        {:>5}   succeeded {}   failed {}   in {:.1} s",
            c.calls,
            c.succeeded,
            c.calls - c.succeeded,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "attempts     {:>5}   retries {}   backoff sleeps {} ({})   clock resyncs {}   orders found placed after a duplicate {}",
            c.attempts,
            c.retries,
            c.backoff_sleeps,
            ms(c.backoff_slept),
            c.time_resyncs,
            c.duplicates_resolved
        )?;
        writeln!(
            f,
            "weight       budget {} of limit {}   peak used {}   waits for the window {} ({})",
            self.budget.0,
            self.budget.1,
            g.peak_used_weight,
            g.weight_waits,
            ms(g.weight_waited)
        )?;
        writeln!(
            f,
            "rate limits  429/418 answers {}   calls held by the pause {} ({})",
            g.pauses,
            g.pause_waits,
            ms(g.pause_waited)
        )?;
        write!(f, "retry budget")?;
        for (i, b) in self.budgets.iter().enumerate() {
            let allows = if b.remaining == u64::MAX {
                "unlimited".to_owned()
            } else {
                b.remaining.to_string()
            };
            writeln!(
                f,
                "{}{:<17} retries taken {:>3}   refused {:>3}   allows {} more now",
                if i == 0 { " " } else { "             " },
                b.policy,
                b.retries,
                b.refused,
                allows
            )?;
        }
        if self.budgets.is_empty() {
            writeln!(f)?;
        }
        let stops: Vec<String> = c
            .retry_stops
            .iter()
            .map(|((policy, why), n)| format!("{policy} {why} {n}"))
            .collect();
        writeln!(
            f,
            "retry stops  {}",
            if stops.is_empty() {
                "none: every retryable failure was retried until it succeeded".to_owned()
            } else {
                stops.join(", ")
            }
        )?;
        let opened: u64 = self
            .breakers
            .iter()
            .flat_map(|b| &b.transitions)
            .filter(|t| t.to == CircuitState::Open && t.from != CircuitState::Open)
            .count() as u64;
        writeln!(
            f,
            "breakers     {} endpoints   opened {} times   tries refused while open {}",
            self.breakers.len(),
            opened,
            c.breaker_refusals
        )?;
        for b in &self.breakers {
            if b.transitions.is_empty() && b.rejections == 0 && b.failures == 0 {
                continue;
            }
            let path: Vec<String> = b
                .transitions
                .iter()
                .map(|t| format!("{} -> {} ({:?})", t.from, t.to, t.reason))
                .collect();
            writeln!(
                f,
                "  {:<28} {:<9} window {} calls, {} failures; refused {}{}",
                b.name,
                b.state.to_string(),
                b.calls,
                b.failures,
                b.rejections,
                if path.is_empty() {
                    String::new()
                } else {
                    format!("; {}", path.join(", "))
                }
            )?;
        }
        if let Some(lagged) = self.breakers.first().map(|b| b.lagged).filter(|&n| n > 0) {
            writeln!(f, "  ({lagged} breaker events dropped unread)")?;
        }
        for (n, b) in self.bulkheads.iter().enumerate() {
            writeln!(
                f,
                "{:<12} {:<17} {} in flight + {} queued at most   free now {:>2}   refused {}",
                if n == 0 { "bulkheads" } else { "" },
                b.name,
                b.max_concurrent,
                b.max_queue,
                b.available,
                b.refused
            )?;
        }
        writeln!(
            f,
            "latency      answered = one attempt, send to answer; call = waits and retries included"
        )?;
        latency_line(f, "answered", &c.attempt_latencies)?;
        latency_line(f, "call", &c.call_latencies)?;
        writeln!(f, "per operation            calls  attempts  failed")?;
        for (op, s) in &c.operations {
            writeln!(
                f,
                "  {:<20} {:>7} {:>9} {:>7}",
                op.as_str(),
                s.calls,
                s.attempts,
                s.failed
            )?;
        }
        writeln!(f, "failed attempts by category and code")?;
        if c.attempt_failures.is_empty() {
            writeln!(f, "  none")?;
        }
        for ((category, code), n) in &c.attempt_failures {
            writeln!(
                f,
                "  {:<11} {:<18} {:>4}   ({})",
                category.as_str(),
                code,
                n.count,
                n.transience.as_str()
            )?;
        }
        writeln!(f, "calls failed for good by category and code")?;
        if c.final_errors.is_empty() {
            writeln!(f, "  none")?;
        }
        for ((category, code), n) in &c.final_errors {
            writeln!(f, "  {:<11} {:<18} {:>4}", category.as_str(), code, n)?;
        }
        let e = &self.exchange;
        writeln!(
            f,
            "mock exchange: {} requests, faults injected {}, outage answers {}, refused for weight {}, requests during a pause {}, orders placed {}",
            e.requests,
            e.faults_injected,
            e.outage_answers,
            e.weight_refusals,
            e.requests_during_pause,
            e.orders_placed
        )
    }
}
