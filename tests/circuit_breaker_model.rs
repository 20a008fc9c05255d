//! The breaker against a reference model: random policies, random sequences of outcomes,
//! clock advances, held calls and cancellations; the two must agree at every step.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState, OperatorMode};
use palisade::classify::{Category, Outcome, Severity, Transience};
use palisade::policy::{CircuitBreakerPolicy, WindowType};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

#[derive(Debug)]
enum Req {
    Ok,
    Fail,
    CallerFault,
    Ignored,
    /// Succeeds after 2 s.
    Slow,
    Held(oneshot::Receiver<bool>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bad {
    Down,
    Funds,
    Gone,
}

fn classify(result: Result<&(), &Bad>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(Bad::Down) => Outcome::failure(
            Transience::Transient,
            Category::Network,
            Severity::High,
            "down",
        ),
        Err(Bad::Funds) => Outcome::failure(
            Transience::Persistent,
            Category::User,
            Severity::Low,
            "bad_input",
        ),
        Err(Bad::Gone) => Outcome::Ignored,
    }
}

async fn dependency(req: Req) -> Result<(), Bad> {
    match req {
        Req::Ok => Ok(()),
        Req::Fail => Err(Bad::Down),
        Req::CallerFault => Err(Bad::Funds),
        Req::Ignored => Err(Bad::Gone),
        Req::Slow => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }
        Req::Held(rx) => match rx.await {
            Ok(true) => Ok(()),
            _ => Err(Bad::Down),
        },
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ok,
    Fail,
    CallerFault,
    Ignored,
    Slow,
}

#[derive(Debug, Clone)]
enum Op {
    Call(Kind),
    Start,
    Finish(usize, bool),
    Cancel(usize),
    Advance(u64),
    Mode(OperatorMode),
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![
            Just(Kind::Ok),
            Just(Kind::Fail),
            Just(Kind::Fail),
            Just(Kind::CallerFault),
            Just(Kind::Ignored),
            Just(Kind::Slow),
        ].prop_map(Op::Call),
        2 => Just(Op::Start),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Finish(i, ok)),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => prop_oneof![Just(100u64), Just(500), Just(1_000), Just(3_000), Just(6_000)].prop_map(Op::Advance),
        1 => prop_oneof![
            3 => Just(OperatorMode::Normal),
            1 => Just(OperatorMode::ForcedOpen),
            1 => Just(OperatorMode::Disabled),
            1 => Just(OperatorMode::MetricsOnly),
        ].prop_map(Op::Mode),
        1 => Just(Op::Reset),
    ]
}

#[derive(Debug, Clone)]
struct Rules {
    consecutive_failures: u32,
    minimum_calls: u32,
    failure_rate: f64,
    count_window: Option<u32>,
    multiplier: f64,
    half_open_max_requests: u32,
    success_threshold: u32,
    slow_rule: bool,
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        0u32..4,
        1u32..5,
        prop_oneof![Just(0.25), Just(0.5), Just(1.0)],
        prop_oneof![Just(None), (1u32..6).prop_map(Some)],
        prop_oneof![Just(1.0), Just(2.0)],
        1u32..4,
        1u32..4,
        any::<bool>(),
    )
        .prop_map(|(cf, min, rate, count, mult, max, succ, slow)| Rules {
            consecutive_failures: cf,
            minimum_calls: min,
            failure_rate: rate,
            count_window: count,
            multiplier: mult,
            half_open_max_requests: max,
            success_threshold: succ,
            slow_rule: slow,
        })
}

const WINDOW_MS: u64 = 10_000;
const BUCKET_MS: u64 = 1_000;
const OPEN_MS: u64 = 5_000;
const OPEN_MAX_MS: u64 = 20_000;
const HALF_OPEN_MAX_MS: u64 = 8_000;
const SLOW_MS: u64 = 1_000;

impl Rules {
    fn policy(&self) -> CircuitBreakerPolicy {
        let mut p = CircuitBreakerPolicy::default();
        p.consecutive_failures = self.consecutive_failures;
        p.minimum_calls = self.minimum_calls;
        p.failure_rate = self.failure_rate;
        p.window = Duration::from_millis(WINDOW_MS);
        if let Some(n) = self.count_window {
            p.window_type = WindowType::Count;
            p.window_size = n;
        }
        p.open_timeout = Duration::from_millis(OPEN_MS);
        p.open_timeout_multiplier = self.multiplier;
        p.open_timeout_max = Duration::from_millis(OPEN_MAX_MS);
        p.half_open_max_requests = self.half_open_max_requests;
        p.success_threshold = self.success_threshold;
        p.half_open_max_duration = Duration::from_millis(HALF_OPEN_MAX_MS);
        if self.slow_rule {
            p.slow_call_duration = Some(Duration::from_millis(SLOW_MS));
            p.slow_call_rate = 0.5;
        }
        p
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Admit {
    Closed(u32),
    Probe(u32),
    Reject(u64),
    /// Let through, recorded by nobody.
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Success,
    Failure,
    Ignored,
}

/// The rules of the module docs, written the plain way: vectors, no atomics, milliseconds.
#[derive(Debug)]
struct Model {
    rules: Rules,
    mode: OperatorMode,
    state: CircuitState,
    generation: u32,
    consecutive: u32,
    /// (bucket tick, failed, slow)
    window: VecDeque<(u64, bool, bool)>,
    open_until: u64,
    deadline: u64,
    probes: u32,
    successes: u32,
    streak: u32,
    closed_at: u64,
}

impl Model {
    fn new(rules: Rules) -> Self {
        Model {
            rules,
            mode: OperatorMode::Normal,
            state: CircuitState::Closed,
            generation: 0,
            consecutive: 0,
            window: VecDeque::new(),
            open_until: 0,
            deadline: 0,
            probes: 0,
            successes: 0,
            streak: 0,
            closed_at: 0,
        }
    }

    fn totals(&self, now: u64) -> (u64, u64, u64) {
        let tick = now / BUCKET_MS;
        let mut t = (0, 0, 0);
        for &(at, failed, slow) in &self.window {
            if self.rules.count_window.is_some() || tick - at < WINDOW_MS / BUCKET_MS {
                t.0 += 1;
                t.1 += u64::from(failed);
                t.2 += u64::from(slow);
            }
        }
        t
    }

    fn open(&mut self, now: u64) {
        let grown = OPEN_MS as f64 * self.rules.multiplier.powi(self.streak as i32);
        let open = (grown as u64).min(OPEN_MAX_MS);
        self.streak += 1;
        self.open_until = now + open;
        self.state = CircuitState::Open;
        self.generation += 1;
    }

    fn trip(&mut self, now: u64) {
        if now - self.closed_at >= WINDOW_MS {
            self.streak = 0;
        }
        self.open(now);
    }

    fn admit(&mut self, now: u64) -> Admit {
        match self.mode {
            OperatorMode::Disabled => Admit::Pass,
            OperatorMode::ForcedOpen => Admit::Reject(OPEN_MS),
            OperatorMode::MetricsOnly => match self.admit_normally(now) {
                Admit::Reject(_) => Admit::Pass,
                admit => admit,
            },
            _ => self.admit_normally(now),
        }
    }

    fn reset(&mut self, now: u64) {
        self.state = CircuitState::Closed;
        self.generation += 1;
        self.window.clear();
        self.consecutive = 0;
        self.streak = 0;
        self.closed_at = now;
    }

    fn admit_normally(&mut self, now: u64) -> Admit {
        loop {
            match self.state {
                CircuitState::Closed => return Admit::Closed(self.generation),
                CircuitState::Open if now < self.open_until => {
                    return Admit::Reject(self.open_until - now);
                }
                CircuitState::Open => {
                    self.state = CircuitState::HalfOpen;
                    self.generation += 1;
                    self.probes = 1;
                    self.successes = 0;
                    self.deadline = now + HALF_OPEN_MAX_MS;
                    return Admit::Probe(self.generation);
                }
                CircuitState::HalfOpen if now >= self.deadline => self.open(now),
                CircuitState::HalfOpen if self.probes >= self.rules.half_open_max_requests => {
                    return Admit::Reject(self.deadline - now);
                }
                CircuitState::HalfOpen => {
                    self.probes += 1;
                    return Admit::Probe(self.generation);
                }
            }
        }
    }

    fn finish(&mut self, admit: Admit, verdict: Verdict, started: u64, now: u64) {
        let slow = self.rules.slow_rule && now - started > SLOW_MS;
        match admit {
            Admit::Closed(generation)
                if generation == self.generation && verdict != Verdict::Ignored =>
            {
                let failed = verdict == Verdict::Failure;
                self.window.push_back((now / BUCKET_MS, failed, slow));
                if let Some(n) = self.rules.count_window
                    && self.window.len() > n as usize
                {
                    self.window.pop_front();
                }
                if failed {
                    self.consecutive += 1;
                    let cf = self.rules.consecutive_failures;
                    if cf > 0 && self.consecutive >= cf {
                        return self.trip(now);
                    }
                } else {
                    self.consecutive = 0;
                }
                let (calls, failures, slows) = self.totals(now);
                if calls >= u64::from(self.rules.minimum_calls) {
                    let rate_rule =
                        failed && failures as f64 / calls as f64 >= self.rules.failure_rate;
                    let slow_rule = slow && slows as f64 / calls as f64 >= 0.5;
                    if rate_rule || slow_rule {
                        self.trip(now);
                    }
                }
            }
            Admit::Probe(generation) if generation == self.generation => {
                if now >= self.deadline
                    || verdict == Verdict::Failure
                    || (verdict == Verdict::Success && slow)
                {
                    return self.open(now);
                }
                self.probes -= 1;
                if verdict == Verdict::Success {
                    self.successes += 1;
                    if self.successes >= self.rules.success_threshold {
                        self.state = CircuitState::Closed;
                        self.generation += 1;
                        self.window.clear();
                        self.consecutive = 0;
                        self.closed_at = now;
                    }
                }
            }
            _ => {}
        }
    }

    fn cancel(&mut self, admit: Admit) {
        if admit == Admit::Probe(self.generation) && self.state == CircuitState::HalfOpen {
            self.probes -= 1;
        }
    }
}

type Held = (
    Pin<Box<dyn Future<Output = Result<(), Error<Bad>>>>>,
    oneshot::Sender<bool>,
    Admit,
    u64,
);

fn run(rules: Rules, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = tokio::time::Instant::now();
        let now = || start.elapsed().as_millis() as u64;
        let layer = CircuitBreakerLayer::builder("model", rules.policy())
            .open_jitter(0.0)
            .build(classify as fn(Result<&(), &Bad>) -> Outcome);
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(dependency));
        let mut model = Model::new(rules);
        let mut held: Vec<Held> = Vec::new();

        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Call(kind) => {
                    let t0 = now();
                    let expected = model.admit(t0);
                    let req = match kind {
                        Kind::Ok => Req::Ok,
                        Kind::Fail => Req::Fail,
                        Kind::CallerFault => Req::CallerFault,
                        Kind::Ignored => Req::Ignored,
                        Kind::Slow => Req::Slow,
                    };
                    let result = svc.ready().await.unwrap().call(req).await;
                    match (expected, &result) {
                        (Admit::Reject(ms), Err(Error::CircuitOpen(open))) => {
                            prop_assert_eq!(open.retry_after, Duration::from_millis(ms), "step {}", step);
                        }
                        (Admit::Reject(_), other) => prop_assert!(false, "step {step}: expected a rejection, got {other:?}"),
                        (_, Err(Error::CircuitOpen(open))) => {
                            prop_assert!(false, "step {step}: model admitted ({expected:?}), breaker rejected {open:?}")
                        }
                        (admit, _) => {
                            let verdict = match kind {
                                Kind::Ok | Kind::Slow | Kind::CallerFault => Verdict::Success,
                                Kind::Fail => Verdict::Failure,
                                Kind::Ignored => Verdict::Ignored,
                            };
                            model.finish(admit, verdict, t0, now());
                        }
                    }
                }
                Op::Start => {
                    let t0 = now();
                    let expected = model.admit(t0);
                    let (tx, rx) = oneshot::channel();
                    let mut fut: Pin<Box<dyn Future<Output = _>>> = Box::pin(svc.ready().await.unwrap().call(Req::Held(rx)));
                    match expected {
                        Admit::Reject(ms) => match fut.await {
                            Err(Error::CircuitOpen(open)) => {
                                prop_assert_eq!(open.retry_after, Duration::from_millis(ms), "step {}", step)
                            }
                            other => prop_assert!(false, "step {step}: expected a rejection, got {other:?}"),
                        },
                        admit => {
                            // Not finished yet: a rejection would be ready at once.
                            let waker = std::task::Waker::noop();
                            let polled = fut.as_mut().poll(&mut std::task::Context::from_waker(waker));
                            prop_assert!(polled.is_pending(), "step {step}: model admitted, breaker said {polled:?}");
                            held.push((fut, tx, admit, t0));
                        }
                    }
                }
                Op::Finish(i, ok) if !held.is_empty() => {
                    let (fut, tx, admit, t0) = held.remove(i % held.len());
                    tx.send(ok).unwrap();
                    let result = fut.await;
                    prop_assert_eq!(result.is_ok(), ok);
                    let verdict = if ok { Verdict::Success } else { Verdict::Failure };
                    model.finish(admit, verdict, t0, now());
                }
                Op::Cancel(i) if !held.is_empty() => {
                    let (fut, _tx, admit, _) = held.remove(i % held.len());
                    drop(fut);
                    model.cancel(admit);
                }
                Op::Finish(..) | Op::Cancel(_) => {}
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Mode(mode) => {
                    handle.set_mode(mode);
                    model.mode = mode;
                }
                Op::Reset => {
                    handle.reset();
                    model.reset(now());
                }
            }

            let m = handle.metrics();
            prop_assert_eq!(m.state, model.state, "step {}: {:?}", step, model);
            prop_assert_eq!(m.mode, model.mode, "step {}", step);
            let (calls, failures, slows) = model.totals(now());
            match model.state {
                CircuitState::Closed => {
                    prop_assert_eq!(m.consecutive_failures, model.consecutive, "step {}", step);
                    prop_assert_eq!((m.calls, m.failures, m.slow_calls), (calls, failures, slows), "step {}", step);
                }
                CircuitState::HalfOpen => {
                    prop_assert_eq!((m.probes_in_flight, m.probe_successes), (model.probes, model.successes), "step {}", step);
                }
                CircuitState::Open => {
                    prop_assert_eq!(m.open_remaining, Some(Duration::from_millis(model.open_until.saturating_sub(now()))), "step {}", step);
                }
            }
        }
        // Whatever happened, dropping every call leaves no probe slot taken.
        held.clear();
        prop_assert_eq!(handle.metrics().probes_in_flight, 0);
        Ok(())
    })
}

proptest! {
    // 512 cases unless PROPTEST_CASES says otherwise (CI pins it; a long soak raises it).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn breaker_agrees_with_the_reference_model(rules in rules(), ops in prop::collection::vec(op(), 1..80)) {
        run(rules, ops)?;
    }
}
