//! The breaker's own metrics (feature `metrics`), read back through metrics-util's debugging
//! recorder after scripted sequences.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade::Error;
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState, KeyedCircuitBreakerLayer};
use palisade::classify::{Category, Outcome, Severity, Transience};
use palisade::metrics::names;
use palisade::policy::CircuitBreakerPolicy;
use tower::{ServiceBuilder, ServiceExt, service_fn};

type Labels = Vec<(String, String)>;

/// Every breaker metric of one snapshot: (name, sorted labels) -> value. The debugging recorder
/// drains on snapshot: counters come back as the increments since the last snapshot, gauges as
/// their value if set since.
fn snapshot(s: &Snapshotter) -> BTreeMap<(String, Labels), DebugValue> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name().starts_with("palisade_circuit_breaker"))
        .map(|(key, _, _, value)| {
            let mut labels: Labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            ((key.key().name().to_owned(), labels), value)
        })
        .collect()
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    let mut v: Labels = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// What one snapshot says about breaker `breaker`.
struct View<'a> {
    map: &'a BTreeMap<(String, Labels), DebugValue>,
    breaker: &'a str,
}

impl View<'_> {
    /// The state whose gauge is 1; panics unless exactly one is, and the other four are 0.
    fn state(&self) -> String {
        let mut one = Vec::new();
        let mut seen = 0;
        for ((name, labels), value) in self.map {
            if name != names::CIRCUIT_BREAKER_STATE
                || !labels.contains(&("breaker".into(), self.breaker.into()))
            {
                continue;
            }
            seen += 1;
            let state = labels.iter().find(|(k, _)| k == "state").unwrap().1.clone();
            match value {
                DebugValue::Gauge(v) if v.0 == 1.0 => one.push(state),
                DebugValue::Gauge(v) if v.0 == 0.0 => {}
                other => panic!("{state}: {other:?}"),
            }
        }
        assert_eq!(seen, 5, "{}: {:?}", self.breaker, self.map);
        assert_eq!(one.len(), 1, "{one:?}");
        one.pop().unwrap()
    }

    fn transitions(&self, from: &str, to: &str) -> u64 {
        self.counter(
            names::CIRCUIT_BREAKER_TRANSITIONS_TOTAL,
            &[("breaker", self.breaker), ("from", from), ("to", to)],
        )
    }

    fn all_transitions(&self) -> u64 {
        self.map
            .iter()
            .filter(|((name, labels), _)| {
                name == names::CIRCUIT_BREAKER_TRANSITIONS_TOTAL
                    && labels.contains(&("breaker".into(), self.breaker.into()))
            })
            .map(|(_, v)| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{other:?}"),
            })
            .sum()
    }

    fn rejected(&self) -> u64 {
        self.counter(
            names::CIRCUIT_BREAKER_REJECTED_TOTAL,
            &[("breaker", self.breaker)],
        )
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.map.get(&(name.to_owned(), l(labels))) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name}: {other:?}"),
        }
    }
}

fn classify(r: Result<&u32, &&'static str>) -> Outcome {
    match r {
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::failure(
            Transience::Transient,
            Category::External,
            Severity::High,
            "gateway",
        ),
    }
}

fn policy() -> CircuitBreakerPolicy {
    let mut p = CircuitBreakerPolicy::default();
    p.consecutive_failures = 2;
    p.open_timeout = Duration::from_secs(10);
    p.half_open_max_requests = 1;
    p.success_threshold = 1;
    p
}

async fn gateway(amount: u32) -> Result<u32, &'static str> {
    match amount {
        0 => Err("down"),
        // Held until the test advances the clock.
        1 => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(1)
        }
        n => Ok(n),
    }
}

/// Runs `f` on a paused current-thread runtime with `recorder` installed for this thread only.
fn with_recorder<F: std::future::Future>(recorder: &DebuggingRecorder, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || rt.block_on(f))
}

#[test]
fn trip_reject_probe_close_and_operator_modes() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    with_recorder(&recorder, async {
        let layer = CircuitBreakerLayer::builder("payment_gateway", policy())
            .open_jitter(0.0)
            .build(classify as fn(Result<&u32, &&'static str>) -> Outcome);
        let breaker = layer.handle();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(gateway));
        let view = |map| View {
            map,
            breaker: "payment_gateway",
        };

        // Built: closed, nothing counted yet. Successes record nothing.
        for _ in 0..5 {
            svc.clone().oneshot(7).await.unwrap();
        }
        let m = snapshot(&snapshotter);
        assert_eq!(view(&m).state(), "closed");
        assert_eq!(view(&m).all_transitions(), 0);
        assert_eq!(view(&m).rejected(), 0);

        // Trip: one transition, the gauge moves.
        for _ in 0..2 {
            let _ = svc.clone().oneshot(0).await;
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        // Three rejections while open.
        for _ in 0..3 {
            let r = svc.clone().oneshot(7).await;
            assert!(matches!(r, Err(Error::CircuitOpen(_))));
        }
        let m = snapshot(&snapshotter);
        assert_eq!(view(&m).state(), "open");
        assert_eq!(view(&m).transitions("closed", "open"), 1);
        assert_eq!(view(&m).all_transitions(), 1);
        assert_eq!(view(&m).rejected(), 3);

        // Open time over: a slow probe holds the only slot; a second call is rejected.
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = tokio::spawn(svc.clone().oneshot(1));
        tokio::task::yield_now().await;
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(matches!(
            svc.clone().oneshot(7).await,
            Err(Error::CircuitOpen(_))
        ));
        let m = snapshot(&snapshotter);
        assert_eq!(view(&m).state(), "half_open");
        assert_eq!(view(&m).transitions("open", "half_open"), 1);
        assert_eq!(view(&m).rejected(), 1);

        // The probe succeeds: closed.
        tokio::time::advance(Duration::from_secs(1)).await;
        probe.await.unwrap().unwrap();
        assert_eq!(breaker.state(), CircuitState::Closed);
        let m = snapshot(&snapshotter);
        assert_eq!(view(&m).state(), "closed");
        assert_eq!(view(&m).transitions("half_open", "closed"), 1);
        assert_eq!(view(&m).all_transitions(), 1);
        assert_eq!(view(&m).rejected(), 0);

        // Forced open: shown as such, and its rejections count.
        breaker.force_open();
        let _ = svc.clone().oneshot(7).await;
        breaker.resume();
        let m = snapshot(&snapshotter);
        assert_eq!(view(&m).state(), "closed");
        assert_eq!(view(&m).transitions("closed", "forced_open"), 1);
        assert_eq!(view(&m).transitions("forced_open", "closed"), 1);
        assert_eq!(view(&m).rejected(), 1);

        // Metrics-only lets would-be rejections through: shown as the machine's state, and
        // those calls are not rejections.
        breaker.metrics_only();
        for _ in 0..2 {
            let _ = svc.clone().oneshot(0).await;
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        svc.clone().oneshot(7).await.unwrap();
        let m = snapshot(&snapshotter);
        assert_eq!(view(&m).state(), "open");
        assert_eq!(view(&m).transitions("closed", "open"), 1);
        assert_eq!(view(&m).rejected(), 0);

        // Reset while open, disabled: counted as the states they show.
        breaker.reset();
        breaker.disable();
        let m = snapshot(&snapshotter);
        assert_eq!(view(&m).state(), "disabled");
        assert_eq!(view(&m).transitions("open", "closed"), 1);
        assert_eq!(view(&m).transitions("closed", "disabled"), 1);
        assert_eq!(view(&m).all_transitions(), 2);
    });
}

#[test]
fn a_breaker_built_before_the_recorder_records_nothing() {
    let layer = CircuitBreakerLayer::builder("early", policy())
        .build(classify as fn(Result<&u32, &&'static str>) -> Outcome);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    with_recorder(&recorder, async {
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(gateway));
        for _ in 0..4 {
            let _ = svc.clone().oneshot(0).await;
        }
        assert!(snapshot(&snapshotter).is_empty());
    });
}

#[test]
fn a_disabled_policy_starts_disabled_and_a_dropped_breaker_shows_no_state() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    with_recorder(&recorder, async {
        let mut p = policy();
        p.enabled = false;
        let layer = CircuitBreakerLayer::builder("off", p)
            .build(classify as fn(Result<&u32, &&'static str>) -> Outcome);
        let m = snapshot(&snapshotter);
        assert_eq!(
            View {
                map: &m,
                breaker: "off"
            }
            .state(),
            "disabled"
        );
        drop(layer);
        let m = snapshot(&snapshotter);
        let states: Vec<_> = m
            .iter()
            .filter(|((name, _), _)| name == names::CIRCUIT_BREAKER_STATE)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(states.len(), 5);
        assert!(
            states
                .iter()
                .all(|v| matches!(v, DebugValue::Gauge(g) if g.0 == 0.0)),
            "{states:?}"
        );
    });
}

#[test]
fn keyed_breakers_record_under_their_own_names() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    with_recorder(&recorder, async {
        let layer = KeyedCircuitBreakerLayer::builder("hosts", policy())
            .max_keys(1)
            .build(
                |r: &(&'static str, u32)| r.0,
                |r: Result<&u32, &&'static str>| classify(r),
            );
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|r: (&'static str, u32)| gateway(r.1)));
        for key in ["a", "b"] {
            for _ in 0..2 {
                let _ = svc.clone().oneshot((key, 0)).await;
            }
        }
        let _ = svc.clone().oneshot(("c", 7)).await; // rejected by the open overflow breaker
        let m = snapshot(&snapshotter);
        let a = View {
            map: &m,
            breaker: "hosts/a",
        };
        let overflow = View {
            map: &m,
            breaker: "hosts/{overflow}",
        };
        assert_eq!(a.state(), "open");
        assert_eq!(a.transitions("closed", "open"), 1);
        assert_eq!(overflow.state(), "open");
        assert_eq!(overflow.transitions("closed", "open"), 1);
        assert_eq!(overflow.rejected(), 1);
        assert_eq!(a.rejected(), 0);
    });
}

/// A finished call leaves its reference to the breaker in its thread's spare slot (so the next
/// call need not touch a reference count). A breaker whose layer and services are all dropped
/// lives on in that slot only until the thread finishes a call of another breaker: it is then
/// dropped, and its gauges go to 0.
#[test]
fn a_spare_reference_keeps_a_dropped_breaker_only_until_another_breakers_call() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    with_recorder(&recorder, async {
        let build = |name: &'static str| {
            let layer = CircuitBreakerLayer::builder(name, policy())
                .build(classify as fn(Result<&u32, &&'static str>) -> Outcome);
            ServiceBuilder::new()
                .layer(layer)
                .service(service_fn(gateway))
        };
        let first = build("first");
        first.clone().oneshot(7).await.unwrap();
        drop(first);
        let m = snapshot(&snapshotter);
        // Still held by the spare: no gauge was touched since the start.
        assert_eq!(
            View {
                map: &m,
                breaker: "first"
            }
            .state(),
            "closed"
        );

        let second = build("second");
        second.clone().oneshot(7).await.unwrap();
        let m = snapshot(&snapshotter);
        let first_gauges: Vec<_> = m
            .iter()
            .filter(|((name, labels), _)| {
                name == names::CIRCUIT_BREAKER_STATE
                    && labels.contains(&("breaker".into(), "first".into()))
            })
            .collect();
        assert_eq!(first_gauges.len(), 5, "{m:?}");
        assert!(
            first_gauges
                .iter()
                .all(|(_, v)| matches!(v, DebugValue::Gauge(g) if g.0 == 0.0)),
            "{first_gauges:?}"
        );
    });
}
