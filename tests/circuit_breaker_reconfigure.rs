//! Paused-clock tests of `reconfigure`: new rules on a live breaker, its state kept.

use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::{CircuitState, KeyedCircuitBreakerLayer, OperatorMode};
use palisade::policy::WindowType;
use tokio::sync::oneshot;
use tokio::time::advance;
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[macro_use]
#[path = "support/breaker_harness.rs"]
mod breaker_harness;
use breaker_harness::*;

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stays_open_until_its_open_period_ends() {
    let mut p = policy();
    p.consecutive_failures = 2;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 2).await;
    assert_eq!(h.state(), CircuitState::Open);
    advance(Duration::from_secs(1)).await;

    // Looser thresholds and a much shorter open time: the open period under way keeps its end.
    let mut looser = p;
    looser.consecutive_failures = 50;
    looser.failure_rate = 0.99;
    looser.open_timeout = Duration::from_millis(100);
    looser.open_timeout_max = Duration::from_millis(100);
    h.reconfigure(&looser);
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(h.metrics().open_remaining, Some(Duration::from_secs(4)));
    let r = call(&svc, Call::Ok).await;
    assert_eq!(rejected(&r), Some(Duration::from_secs(4)));
    advance(Duration::from_secs(4)).await;
    // The probe goes; one failed probe reopens, for the new open time.
    trip(&svc, 1).await;
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(h.metrics().open_remaining, Some(Duration::from_millis(100)));
    assert_eq!(h.metrics().trips, 2);
}

#[tokio::test(start_paused = true)]
async fn lowering_the_consecutive_threshold_trips_on_the_next_failure() {
    let mut p = policy();
    p.consecutive_failures = 5;
    p.minimum_calls = 1000;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 4).await;
    assert_eq!(h.metrics().consecutive_failures, 4);

    let mut lower = p;
    lower.consecutive_failures = 3;
    h.reconfigure(&lower);
    // The run is kept, and nothing trips at the moment of reconfiguring...
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.metrics().consecutive_failures, 4);
    // ...but the next failure does.
    trip(&svc, 1).await;
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn raising_the_consecutive_threshold_keeps_the_run() {
    let mut p = policy();
    p.consecutive_failures = 5;
    p.minimum_calls = 1000;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 4).await;

    let mut higher = p;
    higher.consecutive_failures = 7;
    h.reconfigure(&higher);
    trip(&svc, 2).await; // 6 in a row: the old threshold would have tripped at 5
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.metrics().consecutive_failures, 6);
    trip(&svc, 1).await; // 7: the run from before the change counts
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_window_is_kept_when_its_type_and_size_are_unchanged() {
    let l = layer(policy()); // 50 % of at least 4 calls in 10 s
    let h = l.handle();
    let svc = service!(l);
    call(&svc, Call::Ok).await.unwrap();
    trip(&svc, 2).await;
    advance(Duration::from_secs(3)).await;

    let mut stricter = policy();
    stricter.minimum_calls = 3;
    stricter.failure_rate = 0.6;
    stricter.window_size = 7; // a count-window setting: the time window ignores it
    h.reconfigure(&stricter);
    let m = h.metrics();
    assert_eq!((m.calls, m.failures), (3, 2));
    trip(&svc, 1).await; // 3 of 4: 75 % >= 60 %
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_new_window_size_starts_a_fresh_window() {
    let l = layer(policy());
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 3).await; // 3 of 3, under minimum_calls
    let mut wider = policy();
    wider.window = Duration::from_secs(20);
    h.reconfigure(&wider);
    assert_eq!(h.metrics().calls, 0);
    trip(&svc, 3).await;
    assert_eq!(h.state(), CircuitState::Closed);
    // The new window is 20 s wide: calls 15 s ago still count.
    advance(Duration::from_secs(15)).await;
    trip(&svc, 1).await;
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn switching_between_time_and_count_windows() {
    let mut count = policy();
    count.window_type = WindowType::Count;
    count.window_size = 4;
    let l = layer(count);
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 2).await;
    call(&svc, Call::Ok).await.unwrap();
    assert_eq!(h.metrics().calls, 3);

    // Same type, same size: kept.
    let mut same = count;
    same.failure_rate = 0.9;
    h.reconfigure(&same);
    assert_eq!(h.metrics().calls, 3);

    // A longer ring (beyond the first allocation): fresh, and it holds the new size.
    let mut longer = count;
    longer.window_size = 300;
    h.reconfigure(&longer);
    assert_eq!(h.metrics().calls, 0);
    for _ in 0..400 {
        call(&svc, Call::Ok).await.unwrap();
    }
    assert_eq!(h.metrics().calls, 300);

    // To a time window: fresh, and it forgets by time.
    h.reconfigure(&policy());
    assert_eq!(h.metrics().calls, 0);
    trip(&svc, 3).await;
    advance(Duration::from_secs(10)).await;
    assert_eq!(h.metrics().calls, 0);

    // Back to a short count window: fresh, and the old long ring's slots do not leak in.
    h.reconfigure(&count);
    assert_eq!(h.metrics().calls, 0);
    for _ in 0..10 {
        call(&svc, Call::Ok).await.unwrap();
    }
    assert_eq!(h.metrics().calls, 4);
    trip(&svc, 2).await; // 2 of the last 4
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_probes_are_kept_and_the_new_limits_apply_to_new_ones() {
    let mut p = policy();
    p.consecutive_failures = 1;
    p.half_open_max_requests = 3;
    p.success_threshold = 3;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 1).await;
    advance(Duration::from_secs(5)).await;

    let (tx1, rx1) = oneshot::channel();
    let (tx2, rx2) = oneshot::channel();
    let probe1 = tokio::spawn(svc.clone().oneshot(Call::Held(rx1)));
    let probe2 = tokio::spawn(svc.clone().oneshot(Call::Held(rx2)));
    tokio::task::yield_now().await;
    assert_eq!(h.state(), CircuitState::HalfOpen);
    assert_eq!(h.metrics().probes_in_flight, 2);

    let mut fewer = p;
    fewer.half_open_max_requests = 1;
    fewer.success_threshold = 2;
    h.reconfigure(&fewer);
    assert_eq!(h.state(), CircuitState::HalfOpen);
    assert_eq!(h.metrics().probes_in_flight, 2);
    // Two out, limit one: rejected until the half-open deadline would force a decision.
    let r = call(&svc, Call::Ok).await;
    assert_eq!(rejected(&r), Some(Duration::from_secs(20)));

    tx1.send(true).unwrap();
    probe1.await.unwrap().unwrap();
    assert_eq!(h.state(), CircuitState::HalfOpen);
    assert_eq!(h.metrics().probe_successes, 1);
    // One still out, limit one: still full.
    assert!(rejected(&call(&svc, Call::Ok).await).is_some());
    tx2.send(true).unwrap();
    probe2.await.unwrap().unwrap();
    // Two successes meet the new threshold of two.
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_trip_count_for_growing_open_times_is_kept() {
    let mut p = policy();
    p.consecutive_failures = 1;
    p.open_timeout = Duration::from_secs(5);
    p.open_timeout_multiplier = 2.0;
    p.open_timeout_max = Duration::from_secs(1000);
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);
    trip(&svc, 1).await; // open 5 s
    advance(Duration::from_secs(5)).await;
    trip(&svc, 1).await; // probe fails: open 10 s
    assert_eq!(h.metrics().open_remaining, Some(Duration::from_secs(10)));

    let mut q = p;
    q.open_timeout = Duration::from_secs(1);
    q.open_timeout_multiplier = 3.0;
    h.reconfigure(&q);
    advance(Duration::from_secs(10)).await;
    trip(&svc, 1).await; // third trip: 1 s x 3^2
    assert_eq!(h.metrics().open_remaining, Some(Duration::from_secs(9)));
}

#[tokio::test(start_paused = true)]
async fn enabled_acts_only_when_it_changes() {
    let l = layer(policy());
    let h = l.handle();
    let svc = service!(l);

    let mut off = policy();
    off.enabled = false;
    h.reconfigure(&off);
    assert_eq!(h.mode(), OperatorMode::Disabled);
    trip(&svc, 10).await;
    assert_eq!(h.state(), CircuitState::Closed);

    h.reconfigure(&policy());
    assert_eq!(h.mode(), OperatorMode::Normal);

    // An operator's mode survives a reload that leaves `enabled` as it was.
    h.force_open();
    h.reconfigure(&policy());
    assert_eq!(h.mode(), OperatorMode::ForcedOpen);
    // Turning the policy off overrides it; on again gives normal.
    h.reconfigure(&off);
    assert_eq!(h.mode(), OperatorMode::Disabled);
    h.reconfigure(&policy());
    assert_eq!(h.mode(), OperatorMode::Normal);
}

#[tokio::test(start_paused = true)]
async fn a_call_admitted_before_the_slow_rule_is_on_is_not_judged_by_it() {
    let mut p = policy();
    p.minimum_calls = 1;
    let l = layer(p);
    let h = l.handle();
    let svc = service!(l);
    let before = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(3))));
    tokio::task::yield_now().await;

    let mut slow = p;
    slow.slow_call_duration = Some(Duration::from_secs(1));
    slow.slow_call_rate = 0.5;
    h.reconfigure(&slow);
    advance(Duration::from_secs(3)).await;
    before.await.unwrap().unwrap();
    let m = h.metrics();
    assert_eq!((m.calls, m.slow_calls), (1, 0));
    assert_eq!(h.state(), CircuitState::Closed);

    // A call admitted after it is.
    let after = tokio::spawn(svc.clone().oneshot(Call::Slow(Duration::from_secs(3))));
    tokio::task::yield_now().await;
    advance(Duration::from_secs(3)).await;
    after.await.unwrap().unwrap();
    assert_eq!(h.metrics().slow_calls, 1);
    assert_eq!(h.state(), CircuitState::Open); // 1 of 2 slow: 50 %
}

#[tokio::test(start_paused = true)]
async fn keyed_reconfigure_reaches_existing_keys_the_overflow_and_later_keys() {
    let mut p = policy();
    p.consecutive_failures = 5;
    p.minimum_calls = 1000;
    let l = KeyedCircuitBreakerLayer::builder("hosts", p)
        .max_keys(1)
        .breakers(|b| b.open_jitter(0.0))
        .build(
            |c: &(&'static str, Call)| c.0,
            |r: Result<&(), &Bad>| classify(r),
        );
    let h = l.handle();
    let svc = ServiceBuilder::new()
        .layer(l)
        .service(service_fn(|c: (&'static str, Call)| dependency(c.1)));
    let fail_on = |key: &'static str, n: u32| {
        let svc = svc.clone();
        async move {
            for _ in 0..n {
                let r = svc.clone().oneshot((key, Call::Fail)).await;
                assert!(matches!(r, Err(Error::Inner(Bad::Down))), "{key}: {r:?}");
            }
        }
    };
    fail_on("a", 2).await; // "a" holds the only slot
    fail_on("b", 2).await; // overflow
    let mut q = p;
    q.consecutive_failures = 3;
    h.reconfigure(&q);
    fail_on("a", 1).await;
    fail_on("b", 1).await;
    assert_eq!(h.get(&"a").unwrap().state(), CircuitState::Open);
    assert_eq!(h.overflow().state(), CircuitState::Open);

    // A key built later takes the new rules: evict "a", then "c" gets its own breaker.
    advance(Duration::from_secs(601)).await;
    assert_eq!(h.evict_idle(), 1);
    fail_on("c", 3).await;
    assert_eq!(h.get(&"c").unwrap().state(), CircuitState::Open);
}
