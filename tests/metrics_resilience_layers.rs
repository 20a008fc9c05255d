//! The retry, timeout and bulkhead layers' own metrics and tracing events, asserted through
//! metrics-util's debugging recorder and a captured tracing subscriber, after scripted
//! sequences under tokio's paused clock.
#![cfg(feature = "metrics")]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade::bulkhead::BulkheadLayer;
use palisade::classify::{
    Category, Classification, Classified, SelfClassified, Severity, Transience,
};
use palisade::error::{BulkheadRejection, Error, RetryStop, TimeoutKind};
use palisade::metrics::names;
use palisade::policy::{BudgetPolicy, BulkheadPolicy, Jitter, RetryPolicy};
use palisade::retry::{RetryBudget, RetryLayer};
use palisade::timeout::{Deadline, TimeoutLayer};
use tokio::sync::oneshot;
use tower::{Layer, ServiceExt, service_fn};

type Labels = Vec<(String, String)>;

/// Running totals of what a snapshotter reports. A debugging-recorder snapshot drains
/// (counters and gauges restart from 0), so the deltas are added up here; the layers only
/// move gauges up and down by one, so the sums are the gauges' values.
struct Totals {
    snapshotter: Snapshotter,
    values: BTreeMap<(String, Labels), f64>,
}

impl Totals {
    fn new(snapshotter: Snapshotter) -> Self {
        Totals {
            snapshotter,
            values: BTreeMap::new(),
        }
    }

    /// Every series whose name starts with `prefix`, with its value, zeros included (a
    /// series exists once its handle is registered).
    fn read(&mut self, prefix: &str) -> BTreeMap<(String, Labels), f64> {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let mut labels: Labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let delta = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => panic!("no histogram expected"),
            };
            *self
                .values
                .entry((key.key().name().to_owned(), labels))
                .or_default() += delta;
        }
        self.values
            .iter()
            .filter(|((name, _), _)| name.starts_with(prefix))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

fn series(name: &str, labels: &[(&str, &str)], value: f64) -> ((String, Labels), f64) {
    let mut l: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    ((name.to_owned(), l), value)
}

#[path = "support/captured_logs.rs"]
mod captured_logs;
use captured_logs::Captured;

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self, containing: &str) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .filter(|l| l.contains(containing))
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Debug)]
enum Ledger {
    Busy,
    InsufficientFunds,
}

impl Classified for Ledger {
    fn classification(&self) -> Classification {
        match self {
            Ledger::Busy => Classification::new(
                Transience::Transient,
                Category::Database,
                Severity::Medium,
                "database_busy",
            ),
            Ledger::InsufficientFunds => Classification::new(
                Transience::Persistent,
                Category::Business,
                Severity::Low,
                "insufficient_funds",
            ),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_counts_each_call_by_how_it_ended_and_each_retry_attempt() {
    let recorder = DebuggingRecorder::new();
    let mut totals = Totals::new(recorder.snapshotter());
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let logs = Captured::default();
    let _logs = logs.install();

    // Each call's attempts answer in turn from this script.
    let script: Arc<Mutex<VecDeque<Result<&'static str, Ledger>>>> = Arc::default();
    let answers = script.clone();
    let ledger = service_fn(move |_: ()| {
        let answer = answers.lock().unwrap().pop_front().expect("scripted");
        async move { answer }
    });
    let mut policy = RetryPolicy::default();
    policy.max_retries = 2;
    policy.base_delay = Duration::from_millis(100);
    policy.multiplier = 2.0;
    policy.jitter = Jitter::None;
    // Four retries in all, then the budget is spent.
    let mut limits = BudgetPolicy::default();
    limits.ratio = 0.0;
    limits.min_per_second = 1;
    limits.window = Duration::from_secs(4);
    let budget = RetryBudget::new(&limits);
    let layer = RetryLayer::new("ledger_debit", policy, SelfClassified).with_budget(budget);
    let service = layer.layer(ledger);

    // Registered when the layer was made, before any call: every series is there, at 0.
    let zero = |outcome| {
        series(
            names::RETRIES_TOTAL,
            &[("operation", "ledger_debit"), ("outcome", outcome)],
            0.0,
        )
    };
    assert_eq!(
        totals.read("palisade_retr"),
        BTreeMap::from([
            series(
                names::RETRY_ATTEMPTS_TOTAL,
                &[("operation", "ledger_debit")],
                0.0
            ),
            zero("budget_exhausted"),
            zero("failed_after_retries"),
            zero("not_retryable"),
            zero("succeeded_after_retry"),
            zero("succeeded_without_retry"),
        ])
    );

    use Ledger::{Busy, InsufficientFunds as Broke};
    let calls: Vec<Vec<Result<&'static str, Ledger>>> = vec![
        vec![Ok("done")],                      // succeeded without retry
        vec![Err(Busy), Ok("done")],           // succeeded after 1 retry
        vec![Err(Busy), Err(Busy), Err(Busy)], // failed after 2 retries (max)
        vec![Err(Broke)],                      // not retryable
        vec![Err(Busy), Err(Broke)],           // failed after 1 retry (persistent)
        vec![Err(Busy)],                       // budget exhausted (4 retries taken)
    ];
    let mut stops = Vec::new();
    for answers in calls {
        script.lock().unwrap().extend(answers);
        match service.clone().oneshot(()).await {
            Ok(_) => stops.push(None),
            Err(Error::Retried(r) | Error::RetryBudgetExhausted(r)) => stops.push(Some(r.stop)),
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(script.lock().unwrap().is_empty(), "every answer was used");
    }
    assert_eq!(
        stops,
        [
            None,
            None,
            Some(RetryStop::MaxRetries),
            Some(RetryStop::NotRetryable),
            Some(RetryStop::NotRetryable),
            Some(RetryStop::BudgetExhausted),
        ]
    );

    let count = |outcome, n| {
        series(
            names::RETRIES_TOTAL,
            &[("operation", "ledger_debit"), ("outcome", outcome)],
            n,
        )
    };
    assert_eq!(
        totals.read("palisade_retr"),
        BTreeMap::from([
            series(
                names::RETRY_ATTEMPTS_TOTAL,
                &[("operation", "ledger_debit")],
                4.0
            ),
            count("budget_exhausted", 1.0),
            count("failed_after_retries", 2.0),
            count("not_retryable", 1.0),
            count("succeeded_after_retry", 1.0),
            count("succeeded_without_retry", 1.0),
        ])
    );

    // One DEBUG event per retry, with its delay and the classification code as reason.
    let retries = logs.lines("retrying after a transient failure");
    assert_eq!(retries.len(), 4, "{retries:#?}");
    for (line, delay) in retries.iter().zip([100, 100, 200, 100]) {
        assert!(line.starts_with("DEBUG"), "{line}");
        assert!(line.contains("operation=ledger_debit"), "{line}");
        assert!(line.contains(&format!("delay_ms={delay}")), "{line}");
        assert!(line.contains("reason=database_busy"), "{line}");
    }
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_counted_by_kind() {
    let recorder = DebuggingRecorder::new();
    let mut totals = Totals::new(recorder.snapshotter());
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let logs = Captured::default();
    let _logs = logs.install();

    let slow = service_fn(|work: Duration| async move {
        tokio::time::sleep(work).await;
        Ok::<_, std::io::Error>(())
    });
    // Listed in the global in-flight registry, and listed nowhere: both count.
    let attempt = TimeoutLayer::new(
        "quote_fetch",
        TimeoutKind::Attempt,
        Duration::from_millis(100),
    )
    .layer(slow);
    let total = TimeoutLayer::new(
        "quote_fetch",
        TimeoutKind::Total,
        Duration::from_millis(300),
    )
    .without_in_flight()
    .layer(slow);

    // A fast call counts nothing.
    attempt
        .clone()
        .oneshot(Duration::from_millis(50))
        .await
        .unwrap();
    for _ in 0..2 {
        let e = attempt
            .clone()
            .oneshot(Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout(ref t) if t.kind == TimeoutKind::Attempt));
    }
    let e = total
        .clone()
        .oneshot(Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(ref t) if t.kind == TimeoutKind::Total));
    // A deadline that has already passed: not called, counted as `deadline`.
    let deadline = Deadline::after(Duration::from_millis(10));
    tokio::time::advance(Duration::from_millis(10)).await;
    let e = deadline
        .scope(attempt.clone().oneshot(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout(ref t) if t.kind == TimeoutKind::DeadlineExpired));

    let kind = |kind, n| {
        series(
            names::TIMEOUTS_TOTAL,
            &[("operation", "quote_fetch"), ("kind", kind)],
            n,
        )
    };
    assert_eq!(
        totals.read(names::TIMEOUTS_TOTAL),
        BTreeMap::from([
            kind("attempt", 2.0),
            kind("deadline", 1.0),
            kind("total", 1.0)
        ])
    );

    // A total timeout is a WARN (the call failed for its caller); an attempt timeout and an
    // expired deadline are DEBUG.
    let fired = logs.lines("palisade: timeout fired");
    let levels: Vec<(bool, bool)> = fired
        .iter()
        .map(|l| {
            (
                l.contains("WARN"),
                l.contains(r#"kind="total" limit_ms=300"#),
            )
        })
        .collect();
    assert_eq!(
        levels,
        [(false, false), (false, false), (true, true)],
        "{fired:#?}"
    );
    let expired = logs.lines("deadline already expired");
    assert_eq!(expired.len(), 1);
    assert!(expired[0].contains("DEBUG"), "{}", expired[0]);
}

fn limits(max_concurrent: u32, max_queue: u32, max_wait_ms: u64) -> BulkheadPolicy {
    let mut p = BulkheadPolicy::default();
    p.max_concurrent = max_concurrent;
    p.max_queue = max_queue;
    p.max_wait = Duration::from_millis(max_wait_ms);
    p
}

#[tokio::test(start_paused = true)]
async fn bulkhead_gauges_follow_permits_and_the_queue_and_rejections_count_by_reason() {
    let recorder = DebuggingRecorder::new();
    let mut totals = Totals::new(recorder.snapshotter());
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let logs = Captured::default();
    let _logs = logs.install();

    let layer = BulkheadLayer::unshared("ledger_db", &limits(2, 1, 250));
    let service = layer.layer(service_fn(|open: oneshot::Receiver<()>| async move {
        let _ = open.await;
        Ok::<_, std::io::Error>(())
    }));
    let state = |totals: &mut Totals, in_flight, queued, queue_full, timed_out| {
        let b = [("bulkhead", "ledger_db")];
        assert_eq!(
            totals.read("palisade_bulkhead"),
            BTreeMap::from([
                series(names::BULKHEAD_IN_FLIGHT, &b, in_flight),
                series(names::BULKHEAD_QUEUED, &b, queued),
                series(
                    names::BULKHEAD_REJECTED_TOTAL,
                    &[("bulkhead", "ledger_db"), ("reason", "queue_full")],
                    queue_full
                ),
                series(
                    names::BULKHEAD_REJECTED_TOTAL,
                    &[("bulkhead", "ledger_db"), ("reason", "wait_timed_out")],
                    timed_out
                ),
            ])
        );
    };
    state(&mut totals, 0.0, 0.0, 0.0, 0.0);

    let start = |service: &_| {
        let (open, rx) = oneshot::channel::<()>();
        let call = tokio::spawn(tower::ServiceExt::oneshot(Clone::clone(service), rx));
        (open, call)
    };
    let (open_a, a) = start(&service);
    let (open_b, b) = start(&service);
    tokio::task::yield_now().await;
    state(&mut totals, 2.0, 0.0, 0.0, 0.0);

    // A third waits in the queue, a fourth is turned away: the queue is full.
    let (_keep_c, c) = start(&service);
    tokio::task::yield_now().await;
    state(&mut totals, 2.0, 1.0, 0.0, 0.0);
    let (_keep_d, d) = start(&service);
    let full = d.await.unwrap().unwrap_err();
    assert!(matches!(full, Error::BulkheadFull(ref f) if f.reason == BulkheadRejection::QueueFull));
    state(&mut totals, 2.0, 1.0, 1.0, 0.0);

    // The waiter runs out of time.
    tokio::time::advance(Duration::from_millis(250)).await;
    let timed_out = c.await.unwrap().unwrap_err();
    assert!(matches!(
        timed_out,
        Error::BulkheadFull(ref f) if matches!(f.reason, BulkheadRejection::WaitTimedOut(_))
    ));
    state(&mut totals, 2.0, 0.0, 1.0, 1.0);

    // Calls finishing give their permits back; a shrink keeps the gauge honest while calls
    // over the new limit finish.
    layer.reconfigure(&limits(1, 1, 250));
    open_a.send(()).unwrap();
    a.await.unwrap().unwrap();
    state(&mut totals, 1.0, 0.0, 1.0, 1.0);
    drop(open_b);
    b.await.unwrap().unwrap();
    state(&mut totals, 0.0, 0.0, 1.0, 1.0);

    // Each rejection is a WARN naming the bulkhead and the reason.
    let rejected = logs.lines("bulkhead full, call rejected");
    assert_eq!(rejected.len(), 2, "{rejected:#?}");
    for line in &rejected {
        assert!(line.starts_with(" WARN"), "{line}");
        assert!(line.contains("bulkhead=ledger_db"), "{line}");
    }
    assert!(rejected[0].contains("the queue is full"), "{}", rejected[0]);
    assert!(rejected[1].contains("250ms"), "{}", rejected[1]);
}
