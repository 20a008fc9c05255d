//! Paused-clock tests of every rule of the circuit breaker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::{
    CircuitBreakerLayer, CircuitState, CountedFailures, KeyedCircuitBreakerLayer, OperatorMode,
    Transition, TransitionReason,
};
use palisade::policy::{Policies, WindowType};
use tokio::sync::oneshot;
use tokio::time::advance;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

#[macro_use]
#[path = "support/breaker_harness.rs"]
mod breaker_harness;
use breaker_harness::*;

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_and_a_success_breaks_the_run() {
    let mut p = policy();
    p.consecutive_failures = 3;
    p.minimum_calls = 1000;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);

    trip(&svc, 2).await;
    assert_eq!(h.metrics().consecutive_failures, 2);
    call(&svc, Call::Ok).await.unwrap();
    assert_eq!(h.metrics().consecutive_failures, 0);
    trip(&svc, 2).await;
    assert_eq!(h.state(), CircuitState::Closed);
    trip(&svc, 1).await;
    assert_eq!(h.state(), CircuitState::Open);
    // The inner service is not called while open.
    let r = call(&svc, Call::Fail).await;
    assert_eq!(rejected(&r), Some(Duration::from_secs(5)));
    advance(Duration::from_secs(2)).await;
    assert_eq!(
        rejected(&call(&svc, Call::Ok).await),
        Some(Duration::from_secs(3))
    );
    assert_eq!(h.metrics().rejections, 2);
    assert_eq!(h.metrics().trips, 1);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_trips_only_once_minimum_calls_are_recorded() {
    let l = layer(policy()); // 50 % of at least 4 calls
    let h = l.handle();
    let svc = service!(l);

    trip(&svc, 3).await; // 3 of 3 failed, but only 3 calls
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.metrics().failure_rate, 1.0);
    call(&svc, Call::Ok).await.unwrap(); // 4 calls, 75 %, but a success never trips
    assert_eq!(h.state(), CircuitState::Closed);
    trip(&svc, 1).await; // 5 calls, 80 %
    assert_eq!(h.state(), CircuitState::Open);
    let m = h.metrics();
    assert_eq!((m.state, m.trips), (CircuitState::Open, 1));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_below_the_threshold_does_not_trip() {
    let l = layer(policy());
    let h = l.handle();
    let svc = service!(l);
    for _ in 0..10 {
        call(&svc, Call::Ok).await.unwrap();
        call(&svc, Call::Ok).await.unwrap();
        let _ = call(&svc, Call::Fail).await; // 1 in 3
    }
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.metrics().calls, 30);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_calls_older_than_the_window() {
    let l = layer(policy()); // 10 s window, 1 s buckets
    let h = l.handle();
    let svc = service!(l);

    trip(&svc, 3).await;
    advance(Duration::from_secs(10)).await; // those three age out
    assert_eq!(h.metrics().calls, 0);
    trip(&svc, 1).await; // 1 call in the window: under minimum_calls
    assert_eq!(h.state(), CircuitState::Closed);
    advance(Duration::from_secs(9)).await; // still inside the window
    trip(&svc, 2).await;
    assert_eq!(h.state(), CircuitState::Closed);
    trip(&svc, 1).await; // 4 calls, all failed
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn count_window_keeps_the_last_calls() {
    let mut p = policy();
    p.window_type = WindowType::Count;
    p.window_size = 4;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);

    trip(&svc, 1).await;
    for _ in 0..4 {
        call(&svc, Call::Ok).await.unwrap(); // pushes the failure out
    }
    assert_eq!((h.metrics().calls, h.metrics().failures), (4, 0));
    advance(Duration::from_secs(3600)).await; // time does not matter
    trip(&svc, 1).await;
    assert_eq!(h.state(), CircuitState::Closed); // 1 of 4
    trip(&svc, 1).await; // 2 of 4
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn caller_faults_and_ignored_outcomes_never_count() {
    let mut p = policy();
    p.consecutive_failures = 2;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);

    for _ in 0..20 {
        assert!(matches!(
            call(&svc, Call::CallerFault).await,
            Err(Error::Inner(Bad::Funds))
        ));
        assert!(call(&svc, Call::Ignored).await.is_err());
    }
    let m = h.metrics();
    assert_eq!(m.state, CircuitState::Closed);
    // The caller's faults were recorded as calls the callee answered; ignored ones not at all.
    assert_eq!((m.calls, m.failures), (20, 0));

    // Counting them is a choice.
    let l = CircuitBreakerLayer::builder("dep", p)
        .counted(CountedFailures::all())
        .build(classify as Classifier);
    let h = l.handle();
    let svc = service!(l);
    let _ = call(&svc, Call::CallerFault).await;
    let _ = call(&svc, Call::CallerFault).await;
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_slow_call_rate() {
    let mut p = policy();
    p.slow_call_duration = Some(Duration::from_millis(500));
    p.slow_call_rate = 0.5;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);

    call(&svc, Call::Ok).await.unwrap();
    call(&svc, Call::Slow(Duration::from_millis(500)))
        .await
        .unwrap(); // at the limit: not slow
    call(&svc, Call::Slow(Duration::from_millis(501)))
        .await
        .unwrap();
    assert_eq!(h.metrics().slow_calls, 1);
    assert_eq!(h.state(), CircuitState::Closed);
    call(&svc, Call::Slow(Duration::from_secs(2)))
        .await
        .unwrap(); // 2 of 4 slow
    assert_eq!(h.state(), CircuitState::Open);

    // A slow probe reopens.
    advance(Duration::from_secs(5)).await;
    call(&svc, Call::Slow(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_time_grows_on_repeated_trips_up_to_the_cap_and_resets_after_a_stable_close() {
    let mut p = policy();
    p.consecutive_failures = 1;
    p.success_threshold = 1;
    p.open_timeout_multiplier = 2.0;
    p.open_timeout_max = Duration::from_secs(15);
    let l = layer(p); // jitter off
    let h = l.handle();
    let svc = service!(l);

    trip(&svc, 1).await;
    for expected in [5, 10, 15, 15] {
        assert_eq!(
            h.metrics().open_remaining,
            Some(Duration::from_secs(expected))
        );
        assert_eq!(
            rejected(&call(&svc, Call::Ok).await),
            Some(Duration::from_secs(expected))
        );
        advance(Duration::from_secs(expected)).await;
        let _ = call(&svc, Call::Fail).await; // the probe fails: reopen, longer
        assert_eq!(h.state(), CircuitState::Open);
    }
    // A probe succeeds; a quick trip after that close still grows...
    advance(Duration::from_secs(15)).await;
    call(&svc, Call::Ok).await.unwrap();
    assert_eq!(h.state(), CircuitState::Closed);
    trip(&svc, 1).await;
    assert_eq!(h.metrics().open_remaining, Some(Duration::from_secs(15)));
    // ...but after a close that held for `window` (10 s), it starts again from open_timeout.
    advance(Duration::from_secs(15)).await;
    call(&svc, Call::Ok).await.unwrap();
    advance(Duration::from_secs(10)).await;
    trip(&svc, 1).await;
    assert_eq!(h.metrics().open_remaining, Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn grown_open_times_are_jittered_downwards() {
    let mut p = policy();
    p.consecutive_failures = 1;
    p.open_timeout = Duration::from_secs(100);
    p.open_timeout_multiplier = 2.0; // default jitter 10 %
    p.open_timeout_max = Duration::from_secs(1000);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let l = CircuitBreakerLayer::new("dep", p, classify as Classifier);
        let h = l.handle();
        let svc = service!(l);
        trip(&svc, 1).await;
        let open = h.metrics().open_remaining.unwrap();
        assert!(
            open <= Duration::from_secs(100) && open >= Duration::from_secs(90),
            "{open:?}"
        );
        seen.insert(open);
    }
    assert!(seen.len() > 1, "jitter should vary: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_the_probe_limit_and_dropped_probes_free_their_slot() {
    let mut p = policy();
    p.consecutive_failures = 1;
    p.success_threshold = 3;
    let l = layer(p);
    let h = l.handle();
    let mut svc = service!(l);
    trip(&svc, 1).await;
    advance(Duration::from_secs(5)).await;

    let (tx1, rx1) = oneshot::channel();
    let (_tx2, rx2) = oneshot::channel();
    let p1 = svc.ready().await.unwrap().call(Call::Held(rx1));
    assert_eq!(h.state(), CircuitState::HalfOpen);
    let p2 = svc.ready().await.unwrap().call(Call::Held(rx2));
    assert_eq!(h.metrics().probes_in_flight, 2);
    assert_eq!(
        rejected(&call(&svc, Call::Ok).await),
        Some(Duration::from_secs(20))
    );

    drop(p2); // cancelled: its slot comes back, nothing recorded
    assert_eq!(h.metrics().probes_in_flight, 1);
    let (tx3, rx3) = oneshot::channel();
    let p3 = svc.ready().await.unwrap().call(Call::Held(rx3));
    assert_eq!(h.metrics().probes_in_flight, 2);

    tx1.send(true).unwrap();
    p1.await.unwrap();
    tx3.send(true).unwrap();
    p3.await.unwrap();
    let m = h.metrics();
    assert_eq!(
        (m.state, m.probe_successes, m.probes_in_flight),
        (CircuitState::HalfOpen, 2, 0)
    );
    call(&svc, Call::Ok).await.unwrap(); // third success
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(
        h.metrics().calls,
        0,
        "the window starts empty after closing"
    );
}

#[tokio::test(start_paused = true)]
async fn one_failed_probe_reopens() {
    let mut p = policy();
    p.consecutive_failures = 1;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 1).await;
    advance(Duration::from_secs(5)).await;
    call(&svc, Call::Ok).await.unwrap(); // 1 of 2 successes
    assert_eq!(h.state(), CircuitState::HalfOpen);
    // A caller fault is the callee answering: it counts as a success and closes.
    let _ = call(&svc, Call::CallerFault).await;
    assert_eq!(h.state(), CircuitState::Closed);
    trip(&svc, 1).await;
    advance(Duration::from_secs(5)).await;
    let _ = call(&svc, Call::Ignored).await; // neither
    assert_eq!(h.state(), CircuitState::HalfOpen);
    let _ = call(&svc, Call::Fail).await;
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(h.metrics().open_remaining, Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn half_open_max_duration_forces_a_decision_when_probes_hang() {
    let mut p = policy();
    p.consecutive_failures = 1;
    let l = layer(p);
    let h = l.handle();
    let mut svc = service!(l);
    trip(&svc, 1).await;
    advance(Duration::from_secs(5)).await;

    let (_a, ra) = oneshot::channel();
    let (tb, rb) = oneshot::channel();
    let hung = svc.ready().await.unwrap().call(Call::Held(ra));
    let late = svc.ready().await.unwrap().call(Call::Held(rb));
    advance(Duration::from_secs(19)).await;
    assert!(rejected(&call(&svc, Call::Ok).await).is_some());
    assert_eq!(h.state(), CircuitState::HalfOpen);
    advance(Duration::from_secs(1)).await; // 20 s in half-open
    let r = call(&svc, Call::Ok).await;
    assert_eq!(
        rejected(&r),
        Some(Duration::from_secs(5)),
        "reopened, not stuck"
    );
    assert_eq!(h.state(), CircuitState::Open);

    // Probes of the old half-open period finishing late change nothing.
    tb.send(true).unwrap();
    late.await.unwrap();
    drop(hung);
    assert_eq!(h.state(), CircuitState::Open);
    advance(Duration::from_secs(5)).await;
    call(&svc, Call::Ok).await.unwrap();
    assert_eq!(h.metrics().probes_in_flight, 0);
    assert_eq!(h.metrics().probe_successes, 1);
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_calls_admitted_before_a_trip_are_not_counted_after_it() {
    let mut p = policy();
    p.consecutive_failures = 1;
    p.success_threshold = 1;
    let l = layer(p);
    let h = l.handle();
    let mut svc = service!(l);
    let (tx, rx) = oneshot::channel();
    let old = svc.ready().await.unwrap().call(Call::Held(rx)); // admitted while closed
    trip(&svc, 1).await;
    advance(Duration::from_secs(5)).await;
    let (_ptx, prx) = oneshot::channel();
    let probe = svc.ready().await.unwrap().call(Call::Held(prx));
    tx.send(true).unwrap();
    old.await.unwrap(); // would close the breaker if it were taken for a probe
    assert_eq!(h.state(), CircuitState::HalfOpen);
    drop(probe);
}

#[tokio::test(start_paused = true)]
async fn operator_modes_override_the_machine() {
    let mut p = policy();
    p.consecutive_failures = 1;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);

    h.force_open();
    assert_eq!(h.mode(), OperatorMode::ForcedOpen);
    assert_eq!(
        rejected(&call(&svc, Call::Ok).await),
        Some(Duration::from_secs(5))
    );
    assert_eq!(h.state(), CircuitState::Closed);

    h.disable();
    for _ in 0..5 {
        assert!(matches!(call(&svc, Call::Fail).await, Err(Error::Inner(_))));
    }
    assert_eq!((h.state(), h.metrics().calls), (CircuitState::Closed, 0));

    h.metrics_only();
    let _ = call(&svc, Call::Fail).await;
    assert_eq!(h.state(), CircuitState::Open, "the machine still runs");
    assert!(
        matches!(call(&svc, Call::Fail).await, Err(Error::Inner(_))),
        "but lets calls through"
    );
    assert_eq!(h.metrics().shadow_rejections, 1);

    h.resume();
    assert!(rejected(&call(&svc, Call::Ok).await).is_some());
    h.reset();
    assert_eq!(h.state(), CircuitState::Closed);
    call(&svc, Call::Ok).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_disabled_policy_passes_everything() {
    let policies = Policies::from_yaml_str(
        "policies:\n  ledger:\n    circuit_breaker: { enabled: false, consecutive_failures: 1 }\n",
    )
    .unwrap();
    let l =
        CircuitBreakerLayer::from_policy(policies.for_operation("ledger"), classify as Classifier);
    let h = l.handle();
    assert_eq!(&**h.name(), "ledger");
    assert_eq!(h.mode(), OperatorMode::Disabled);
    let svc = service!(l);
    for _ in 0..3 {
        assert!(matches!(call(&svc, Call::Fail).await, Err(Error::Inner(_))));
    }
}

#[tokio::test(start_paused = true)]
async fn transitions_are_announced_in_order() {
    let mut p = policy();
    p.consecutive_failures = 1;
    p.success_threshold = 1;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let l = CircuitBreakerLayer::builder("dep", p)
        .on_transition(move |t: &Transition| sink.lock().unwrap().push((t.from, t.to)))
        .build(classify as Classifier);
    let h = l.handle();
    let mut events = h.subscribe();
    let svc = service!(l);

    trip(&svc, 1).await;
    advance(Duration::from_secs(5)).await;
    call(&svc, Call::Ok).await.unwrap();
    h.force_open();

    let mut got = Vec::new();
    while let Ok(t) = events.try_recv() {
        assert_eq!(&*t.breaker, "dep");
        got.push(t.reason);
    }
    assert_eq!(
        got,
        vec![
            TransitionReason::ConsecutiveFailures { count: 1 },
            TransitionReason::OpenTimeElapsed,
            TransitionReason::ProbesSucceeded,
            TransitionReason::ModeChanged {
                from: OperatorMode::Normal,
                to: OperatorMode::ForcedOpen
            },
        ]
    );
    use CircuitState::*;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed),
            (Closed, Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn pending_while_open_holds_poll_ready_until_the_probe_time() {
    let mut p = policy();
    p.consecutive_failures = 1;
    let l = CircuitBreakerLayer::builder("dep", p)
        .pending_while_open(true)
        .build(classify as Classifier);
    let h = l.handle();
    let mut svc = service!(l);
    trip(&svc, 1).await;

    let started = tokio::time::Instant::now();
    svc.ready().await.unwrap(); // sleeps on the paused clock until the open time ends
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    svc.call(Call::Ok).await.unwrap();
    assert_eq!(h.state(), CircuitState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_independent_bounded_and_evicted_when_idle() {
    let mut p = policy();
    p.consecutive_failures = 1;
    let l = KeyedCircuitBreakerLayer::builder("hosts", p)
        .max_keys(2)
        .idle_timeout(Duration::from_secs(60))
        .build(|c: &(u32, Call)| c.0, classify as Classifier);
    let h = l.handle();
    let svc = ServiceBuilder::new()
        .layer(l)
        .service(service_fn(|(_, c): (u32, Call)| dependency(c)));
    let go = |key, c| svc.clone().oneshot((key, c));

    assert!(matches!(go(1, Call::Fail).await, Err(Error::Inner(_))));
    match go(1, Call::Ok).await {
        Err(Error::CircuitOpen(open)) => assert_eq!(&*open.breaker, "hosts/1"),
        other => panic!("{other:?}"),
    }
    go(2, Call::Ok).await.unwrap(); // key 2 has its own, closed breaker
    assert_eq!(h.len(), 2);
    assert_eq!(h.get(&1).unwrap().state(), CircuitState::Open);

    // Full: other keys are judged by the shared overflow breaker, the map does not grow.
    for key in 3..100 {
        go(key, Call::Ok).await.unwrap();
    }
    assert_eq!(h.len(), 2);
    assert_eq!(h.overflow().metrics().calls, 97);
    assert_eq!(&**h.overflow().name(), "hosts/{overflow}");

    // Held by a handle: never evicted, however idle.
    let pinned = h.get(&2).unwrap();
    advance(Duration::from_secs(60)).await;
    go(3, Call::Ok).await.unwrap(); // the sweep evicts key 1, key 3 takes its place
    assert_eq!(h.len(), 2);
    assert!(h.get(&1).is_none());
    assert!(h.get(&3).is_some());
    drop(pinned);
    advance(Duration::from_secs(60)).await;
    assert_eq!(h.evict_idle(), 2);
    assert!(h.is_empty());
    // A key that comes back starts afresh.
    go(1, Call::Ok).await.unwrap();
    assert_eq!(h.get(&1).unwrap().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_keep_one_in_flight_from_eviction() {
    let mut p = policy();
    p.consecutive_failures = 1;
    let l = KeyedCircuitBreakerLayer::builder("hosts", p)
        .max_keys(1)
        .idle_timeout(Duration::from_secs(1))
        .build(|c: &(u32, Call)| c.0, classify as Classifier);
    let h = l.handle();
    let mut svc = ServiceBuilder::new()
        .layer(l)
        .service(service_fn(|(_, c): (u32, Call)| dependency(c)));
    let (tx, rx) = oneshot::channel();
    let held = svc.ready().await.unwrap().call((7, Call::Held(rx)));
    advance(Duration::from_secs(5)).await;
    assert_eq!(h.evict_idle(), 0, "a call in flight holds its breaker");
    tx.send(false).unwrap();
    assert!(held.await.is_err());
    assert_eq!(h.get(&7).unwrap().state(), CircuitState::Open);
}
