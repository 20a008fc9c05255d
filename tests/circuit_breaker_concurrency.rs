//! Many tasks on several threads against one breaker: exactly `half_open_max_requests`
//! probes at once, and no slot leaked by cancelled probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use palisade::classify::Outcome;
use palisade::policy::{CircuitBreakerPolicy, WindowType};
use tokio::sync::{Barrier, Semaphore, mpsc};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const LIMIT: u32 = 8;
const TASKS: usize = 256;

#[derive(Debug)]
enum Event {
    Admitted(usize),
    Rejected,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_probe_limit_runs_at_once_and_cancelled_probes_give_their_slot_back() {
    for round in 0..20 {
        let mut policy = CircuitBreakerPolicy::default();
        policy.consecutive_failures = 1;
        policy.open_timeout = Duration::ZERO; // half-open on the next call
        policy.half_open_max_requests = LIMIT;
        policy.success_threshold = 1_000; // stay half-open while the test looks
        policy.half_open_max_duration = Duration::from_secs(3600);
        let layer = CircuitBreakerLayer::new("shared", policy, |r: Result<&(), &()>| {
            Outcome::fallback(r.is_ok())
        });
        let handle = layer.handle();

        let gate = Arc::new(Semaphore::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let (events, mut seen) = mpsc::unbounded_channel();
        let svc = {
            let (gate, in_flight, max_in_flight, events) = (
                gate.clone(),
                in_flight.clone(),
                max_in_flight.clone(),
                events.clone(),
            );
            ServiceBuilder::new()
                .layer(layer)
                .service(service_fn(move |id: Option<usize>| {
                    let (gate, in_flight, max_in_flight, events) = (
                        gate.clone(),
                        in_flight.clone(),
                        max_in_flight.clone(),
                        events.clone(),
                    );
                    async move {
                        let Some(id) = id else { return Err(()) };
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_in_flight.fetch_max(now, Ordering::SeqCst);
                        events.send(Event::Admitted(id)).unwrap();
                        // Decrement on every exit path, the cancelled one included.
                        struct Leave(Arc<AtomicUsize>);
                        impl Drop for Leave {
                            fn drop(&mut self) {
                                self.0.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        let _leave = Leave(in_flight);
                        gate.acquire().await.unwrap().forget();
                        Ok(())
                    }
                }))
        };
        // Trip it.
        assert!(svc.clone().oneshot(None).await.is_err());
        assert_eq!(handle.state(), CircuitState::Open);

        let spawn_wave = |ids: std::ops::Range<usize>| {
            let barrier = Arc::new(Barrier::new(ids.len()));
            ids.map(|id| {
                let (svc, barrier, events) = (svc.clone(), barrier.clone(), events.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let r = svc.oneshot(Some(id)).await;
                    if let Err(Error::CircuitOpen(_)) = r {
                        events.send(Event::Rejected).unwrap();
                    }
                    r
                })
            })
            .collect::<Vec<_>>()
        };
        let mut tasks = spawn_wave(0..TASKS);
        let mut admitted = Vec::new();
        let mut rejected = 0;
        while admitted.len() + rejected < TASKS {
            match seen.recv().await.unwrap() {
                Event::Admitted(id) => admitted.push(id),
                Event::Rejected => rejected += 1,
            }
        }
        assert_eq!(admitted.len(), LIMIT as usize, "round {round}");
        assert_eq!(
            max_in_flight.load(Ordering::SeqCst),
            LIMIT as usize,
            "round {round}"
        );
        assert_eq!(handle.metrics().probes_in_flight, LIMIT);

        // Cancel half the probes mid-flight.
        for &id in &admitted[..LIMIT as usize / 2] {
            tasks[id].abort();
        }
        for &id in &admitted[..LIMIT as usize / 2] {
            assert!((&mut tasks[id]).await.unwrap_err().is_cancelled());
        }
        assert_eq!(
            handle.metrics().probes_in_flight,
            LIMIT / 2,
            "round {round}: cancelled probes leaked"
        );

        // A second wave gets exactly the freed slots.
        tasks.extend(spawn_wave(TASKS..2 * TASKS));
        let mut second = 0;
        let mut rejected = 0;
        while second + rejected < TASKS {
            match seen.recv().await.unwrap() {
                Event::Admitted(_) => second += 1,
                Event::Rejected => rejected += 1,
            }
        }
        assert_eq!(second, LIMIT as usize / 2, "round {round}");
        assert_eq!(max_in_flight.load(Ordering::SeqCst), LIMIT as usize);
        assert_eq!(handle.metrics().probes_in_flight, LIMIT);

        // Let every probe succeed.
        gate.add_permits(LIMIT as usize);
        let cancelled = &admitted[..LIMIT as usize / 2];
        for (id, task) in tasks.into_iter().enumerate() {
            if !cancelled.contains(&id) {
                let _ = task.await.unwrap();
            }
        }
        let m = handle.metrics();
        assert_eq!(
            (m.state, m.probes_in_flight, m.probe_successes),
            (CircuitState::HalfOpen, 0, LIMIT)
        );
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_closed_calls_are_all_counted() {
    let mut policy = CircuitBreakerPolicy::default();
    policy.window_type = WindowType::Count;
    policy.window_size = 1_000_000;
    policy.consecutive_failures = 0;
    policy.minimum_calls = 1_000_000;
    let layer = CircuitBreakerLayer::new("shared", policy, |r: Result<&(), &()>| {
        Outcome::fallback(r.is_ok())
    });
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|fail: bool| async move {
            if fail { Err(()) } else { Ok(()) }
        }));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for i in 0..5_000 {
                    let _ = svc.clone().oneshot((t + i) % 10 == 0).await;
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let m = handle.metrics();
    assert_eq!((m.calls, m.failures), (80_000, 8_000));
    assert_eq!(m.state, CircuitState::Closed);
}
