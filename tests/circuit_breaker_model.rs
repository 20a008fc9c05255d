//! The breaker against a reference model: random policies, random sequences of outcomes,
//! clock advances, held calls and cancellations, operator modes, resets and reconfigurations;
//! the two must agree at every step. With `pending_while_open`, `poll_ready` must say what the
//! model says. A second model drives a keyed registry (idle eviction, the overflow breaker,
//! in-flight calls pinning their breaker, reconfiguration of every key).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::{
    CircuitBreakerLayer, CircuitState, KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer,
    OperatorMode,
};
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
    Reconfigure(Rules),
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
        1 => rules().prop_map(Op::Reconfigure),
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
    /// When the breaker was built: its time buckets start there.
    base: u64,
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
    fn new(rules: Rules, base: u64) -> Self {
        Model {
            rules,
            base,
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
        let tick = (now - self.base) / BUCKET_MS;
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

    /// When a call admitted now started, for the slow-call rule: only if the rule is on now.
    fn started(&self, now: u64) -> Option<u64> {
        self.rules.slow_rule.then_some(now)
    }

    fn finish(&mut self, admit: Admit, verdict: Verdict, started: Option<u64>, now: u64) {
        let slow = self.rules.slow_rule && started.is_some_and(|t| now - t > SLOW_MS);
        match admit {
            Admit::Closed(generation)
                if generation == self.generation && verdict != Verdict::Ignored =>
            {
                let failed = verdict == Verdict::Failure;
                self.window
                    .push_back(((now - self.base) / BUCKET_MS, failed, slow));
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

    /// New rules, the state kept; the window too if its type and size are unchanged.
    fn reconfigure(&mut self, rules: Rules) {
        if self.rules.count_window != rules.count_window {
            self.window.clear();
        }
        self.rules = rules;
    }

    /// Whether `poll_ready` is ready, in pending-while-open mode.
    fn ready(&self, now: u64) -> bool {
        match self.mode {
            OperatorMode::ForcedOpen => false,
            OperatorMode::Normal => !(self.state == CircuitState::Open && now < self.open_until),
            _ => true,
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
    Option<u64>,
);

fn request(kind: Kind) -> Req {
    match kind {
        Kind::Ok => Req::Ok,
        Kind::Fail => Req::Fail,
        Kind::CallerFault => Req::CallerFault,
        Kind::Ignored => Req::Ignored,
        Kind::Slow => Req::Slow,
    }
}

fn verdict_of(kind: Kind) -> Verdict {
    match kind {
        Kind::Ok | Kind::Slow | Kind::CallerFault => Verdict::Success,
        Kind::Fail => Verdict::Failure,
        Kind::Ignored => Verdict::Ignored,
    }
}

/// `poll_ready` once, with a waker that does nothing.
fn poll_ready<S: Service<Req>>(svc: &mut S) -> bool {
    let waker = std::task::Waker::noop();
    svc.poll_ready(&mut std::task::Context::from_waker(waker))
        .is_ready()
}

fn run(rules: Rules, pending: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
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
            .pending_while_open(pending)
            .build(classify as fn(Result<&(), &Bad>) -> Outcome);
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new().layer(layer).service(service_fn(dependency));
        let mut model = Model::new(rules, 0);
        let mut held: Vec<Held> = Vec::new();

        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Call(_) | Op::Start if pending && !poll_ready(&mut svc) => {
                    // Not ready: a caller waits (or a balancer goes elsewhere), calling nothing.
                    prop_assert!(!model.ready(now()), "step {}: pending, model ready: {:?}", step, model);
                }
                Op::Call(kind) => {
                    let t0 = now();
                    let started = model.started(t0);
                    let expected = model.admit(t0);
                    let result = svc.ready().await.unwrap().call(request(kind)).await;
                    match (expected, &result) {
                        (Admit::Reject(ms), Err(Error::CircuitOpen(open))) => {
                            prop_assert_eq!(open.retry_after, Duration::from_millis(ms), "step {}", step);
                        }
                        (Admit::Reject(_), other) => prop_assert!(false, "step {step}: expected a rejection, got {other:?}"),
                        (_, Err(Error::CircuitOpen(open))) => {
                            prop_assert!(false, "step {step}: model admitted ({expected:?}), breaker rejected {open:?}")
                        }
                        (admit, _) => model.finish(admit, verdict_of(kind), started, now()),
                    }
                }
                Op::Start => {
                    let t0 = now();
                    let started = model.started(t0);
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
                            held.push((fut, tx, admit, started));
                        }
                    }
                }
                Op::Finish(i, ok) if !held.is_empty() => {
                    let (fut, tx, admit, started) = held.remove(i % held.len());
                    tx.send(ok).unwrap();
                    let result = fut.await;
                    prop_assert_eq!(result.is_ok(), ok);
                    let verdict = if ok { Verdict::Success } else { Verdict::Failure };
                    model.finish(admit, verdict, started, now());
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
                Op::Reconfigure(rules) => {
                    handle.reconfigure(&rules.policy());
                    model.reconfigure(rules);
                }
            }
            if pending {
                prop_assert_eq!(poll_ready(&mut svc), model.ready(now()), "step {}: readiness, {:?}", step, model);
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

// ---- the keyed registry ----

const KEYS: u8 = 4;
const MAX_KEYS: usize = 2;
const IDLE_MS: u64 = 4_000;

#[derive(Debug, Clone)]
enum KeyedOp {
    Call(u8, Kind),
    Start(u8),
    Finish(usize, bool),
    Cancel(usize),
    Advance(u64),
    EvictIdle,
    Reconfigure(Rules),
}

fn keyed_op() -> impl Strategy<Value = KeyedOp> {
    prop_oneof![
        5 => (0..KEYS, prop_oneof![
            Just(Kind::Ok),
            Just(Kind::Fail),
            Just(Kind::Fail),
            Just(Kind::Slow),
        ]).prop_map(|(k, kind)| KeyedOp::Call(k, kind)),
        2 => (0..KEYS).prop_map(KeyedOp::Start),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| KeyedOp::Finish(i, ok)),
        1 => any::<usize>().prop_map(KeyedOp::Cancel),
        3 => prop_oneof![Just(100u64), Just(500), Just(1_000), Just(3_000), Just(6_000)].prop_map(KeyedOp::Advance),
        1 => Just(KeyedOp::EvictIdle),
        1 => rules().prop_map(KeyedOp::Reconfigure),
    ]
}

/// Which breaker judged a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Key(u8),
    Overflow,
}

/// A registry entry of the model: a breaker model, when it was last used, calls holding it.
#[derive(Debug)]
struct Entry {
    model: Model,
    last_used: u64,
    held: usize,
}

/// The registry of `registry.rs`, the plain way: at most `MAX_KEYS` keys; a new key sweeps
/// idle unheld entries first when an idle period has passed since the last sweep, or when the
/// map is full and an eighth of one has; a new key that still finds it full is judged by the
/// overflow breaker. Each key's breaker starts fresh, its time buckets from its creation.
#[derive(Debug)]
struct KeyedModel {
    rules: Rules,
    map: std::collections::BTreeMap<u8, Entry>,
    overflow: Entry,
    last_sweep: u64,
}

impl KeyedModel {
    fn new(rules: Rules) -> Self {
        KeyedModel {
            overflow: Entry {
                model: Model::new(rules.clone(), 0),
                last_used: 0,
                held: 0,
            },
            rules,
            map: Default::default(),
            last_sweep: 0,
        }
    }

    fn sweep(&mut self, now: u64) -> usize {
        self.last_sweep = now;
        let before = self.map.len();
        self.map
            .retain(|_, e| now - e.last_used < IDLE_MS || e.held > 0);
        before - self.map.len()
    }

    fn get(&mut self, key: u8, now: u64) -> Target {
        if let Some(e) = self.map.get_mut(&key) {
            e.last_used = now;
            return Target::Key(key);
        }
        let since = now - self.last_sweep;
        if since >= IDLE_MS || (self.map.len() >= MAX_KEYS && since >= IDLE_MS / 8) {
            self.sweep(now);
        }
        if self.map.len() >= MAX_KEYS {
            self.overflow.last_used = now;
            return Target::Overflow;
        }
        self.map.insert(
            key,
            Entry {
                model: Model::new(self.rules.clone(), now),
                last_used: now,
                held: 0,
            },
        );
        Target::Key(key)
    }

    fn entry(&mut self, target: Target) -> &mut Entry {
        match target {
            Target::Key(k) => self
                .map
                .get_mut(&k)
                .expect("a held or just-used key is in the map"),
            Target::Overflow => &mut self.overflow,
        }
    }
}

type KeyedHeld = (
    Pin<Box<dyn Future<Output = Result<(), Error<Bad>>>>>,
    oneshot::Sender<bool>,
    Target,
    Admit,
    Option<u64>,
);

fn check_breaker(
    step: usize,
    m: &palisade::circuit_breaker::CircuitBreakerMetrics,
    model: &Model,
    now: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(m.state, model.state, "step {}: {:?}", step, model);
    let (calls, failures, slows) = model.totals(now);
    match model.state {
        CircuitState::Closed => {
            prop_assert_eq!(m.consecutive_failures, model.consecutive, "step {}", step);
            prop_assert_eq!(
                (m.calls, m.failures, m.slow_calls),
                (calls, failures, slows),
                "step {}: {:?}",
                step,
                model
            );
        }
        CircuitState::HalfOpen => {
            prop_assert_eq!(
                (m.probes_in_flight, m.probe_successes),
                (model.probes, model.successes),
                "step {}",
                step
            );
        }
        CircuitState::Open => {
            prop_assert_eq!(
                m.open_remaining,
                Some(Duration::from_millis(model.open_until.saturating_sub(now))),
                "step {}",
                step
            );
        }
    }
    Ok(())
}

fn check_keyed(
    step: usize,
    handle: &KeyedCircuitBreakerHandle<u8>,
    model: &KeyedModel,
    now: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(handle.len(), model.map.len(), "step {}: {:?}", step, model);
    for key in 0..KEYS {
        match (handle.get(&key), model.map.get(&key)) {
            (None, None) => {}
            (Some(h), Some(e)) => check_breaker(step, &h.metrics(), &e.model, now)?,
            (got, _) => prop_assert!(
                false,
                "step {step}: key {key}: registry has it: {}, model: {model:?}",
                got.is_some()
            ),
        }
    }
    check_breaker(
        step,
        &handle.overflow().metrics(),
        &model.overflow.model,
        now,
    )
}

fn run_keyed(rules: Rules, ops: Vec<KeyedOp>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = tokio::time::Instant::now();
        let now = || start.elapsed().as_millis() as u64;
        let layer = KeyedCircuitBreakerLayer::builder("k", rules.policy())
            .max_keys(MAX_KEYS)
            .idle_timeout(Duration::from_millis(IDLE_MS))
            .breakers(|b| b.open_jitter(0.0))
            .build(
                |r: &(u8, Req)| r.0,
                classify as fn(Result<&(), &Bad>) -> Outcome,
            );
        let handle = layer.handle();
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|r: (u8, Req)| dependency(r.1)));
        let mut model = KeyedModel::new(rules);
        let mut held: Vec<KeyedHeld> = Vec::new();

        for (step, op) in ops.into_iter().enumerate() {
            match op {
                KeyedOp::Call(key, kind) => {
                    let t0 = now();
                    let target = model.get(key, t0);
                    let breaker = &mut model.entry(target).model;
                    let started = breaker.started(t0);
                    let expected = breaker.admit(t0);
                    let result = svc.ready().await.unwrap().call((key, request(kind))).await;
                    match (expected, &result) {
                        (Admit::Reject(ms), Err(Error::CircuitOpen(open))) => {
                            prop_assert_eq!(
                                open.retry_after,
                                Duration::from_millis(ms),
                                "step {}",
                                step
                            );
                            let name = match target {
                                Target::Key(k) => format!("k/{k}"),
                                Target::Overflow => "k/{overflow}".to_owned(),
                            };
                            prop_assert_eq!(&*open.breaker, name.as_str(), "step {}", step);
                        }
                        (Admit::Reject(_), other) => {
                            prop_assert!(false, "step {step}: expected a rejection, got {other:?}")
                        }
                        (_, Err(Error::CircuitOpen(open))) => prop_assert!(
                            false,
                            "step {step}: model admitted ({expected:?}), breaker rejected {open:?}"
                        ),
                        (admit, _) => model.entry(target).model.finish(
                            admit,
                            verdict_of(kind),
                            started,
                            now(),
                        ),
                    }
                }
                KeyedOp::Start(key) => {
                    let t0 = now();
                    let target = model.get(key, t0);
                    let entry = model.entry(target);
                    let started = entry.model.started(t0);
                    let expected = entry.model.admit(t0);
                    let (tx, rx) = oneshot::channel();
                    let mut fut: Pin<Box<dyn Future<Output = _>>> =
                        Box::pin(svc.ready().await.unwrap().call((key, Req::Held(rx))));
                    match expected {
                        Admit::Reject(_) => {
                            let result = fut.await;
                            prop_assert!(
                                matches!(result, Err(Error::CircuitOpen(_))),
                                "step {step}: {result:?}"
                            );
                        }
                        admit => {
                            let waker = std::task::Waker::noop();
                            let polled = fut
                                .as_mut()
                                .poll(&mut std::task::Context::from_waker(waker));
                            prop_assert!(
                                polled.is_pending(),
                                "step {step}: model admitted, breaker said {polled:?}"
                            );
                            entry.held += 1;
                            held.push((fut, tx, target, admit, started));
                        }
                    }
                }
                KeyedOp::Finish(i, ok) if !held.is_empty() => {
                    let (fut, tx, target, admit, started) = held.remove(i % held.len());
                    tx.send(ok).unwrap();
                    prop_assert_eq!(fut.await.is_ok(), ok);
                    let verdict = if ok {
                        Verdict::Success
                    } else {
                        Verdict::Failure
                    };
                    let entry = model.entry(target);
                    entry.held -= 1;
                    entry.model.finish(admit, verdict, started, now());
                }
                KeyedOp::Cancel(i) if !held.is_empty() => {
                    let (fut, _tx, target, admit, _) = held.remove(i % held.len());
                    drop(fut);
                    let entry = model.entry(target);
                    entry.held -= 1;
                    entry.model.cancel(admit);
                }
                KeyedOp::Finish(..) | KeyedOp::Cancel(_) => {}
                KeyedOp::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                KeyedOp::EvictIdle => {
                    let evicted = handle.evict_idle();
                    prop_assert_eq!(evicted, model.sweep(now()), "step {}", step);
                }
                KeyedOp::Reconfigure(rules) => {
                    handle.reconfigure(&rules.policy());
                    for e in model.map.values_mut() {
                        e.model.reconfigure(rules.clone());
                    }
                    model.overflow.model.reconfigure(rules.clone());
                    model.rules = rules;
                }
            }
            check_keyed(step, &handle, &model, now())?;
        }
        // Whatever happened, dropping every call leaves no probe slot taken anywhere.
        held.clear();
        for key in 0..KEYS {
            if let Some(h) = handle.get(&key) {
                prop_assert_eq!(h.metrics().probes_in_flight, 0);
            }
        }
        prop_assert_eq!(handle.overflow().metrics().probes_in_flight, 0);
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
    fn breaker_agrees_with_the_reference_model(
        rules in rules(),
        pending in any::<bool>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(rules, pending, ops)?;
    }

    #[test]
    fn keyed_registry_agrees_with_the_reference_model(
        rules in rules(),
        ops in prop::collection::vec(keyed_op(), 1..80),
    ) {
        run_keyed(rules, ops)?;
    }
}
