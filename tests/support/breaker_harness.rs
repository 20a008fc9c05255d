//! The circuit-breaker tests' fake dependency, classifier and call helpers (paused clock).
//! Included with `#[macro_use] #[path = "support/breaker_harness.rs"] mod breaker_harness;`.

#![allow(dead_code)] // each test binary uses part of it

use std::time::Duration;

use palisade::Error;
use palisade::circuit_breaker::CircuitBreakerLayer;
use palisade::classify::{Category, Outcome, Severity, Transience};
use palisade::policy::CircuitBreakerPolicy;
use tokio::sync::oneshot;
use tower::{Service, ServiceExt};

/// What the fake dependency does with a request.
#[derive(Debug)]
pub enum Call {
    Ok,
    Fail,
    CallerFault,
    Ignored,
    /// Succeeds after this long.
    Slow(Duration),
    /// Waits for the test to say how it ends (`true`: success).
    Held(oneshot::Receiver<bool>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bad {
    Down,
    Funds,
    Gone,
}

pub fn classify(result: Result<&(), &Bad>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(Bad::Down) => Outcome::failure(
            Transience::Transient,
            Category::External,
            Severity::High,
            "down",
        ),
        Err(Bad::Funds) => Outcome::failure(
            Transience::Persistent,
            Category::Business,
            Severity::Low,
            "funds",
        ),
        Err(Bad::Gone) => Outcome::Ignored,
    }
}

pub type Classifier = fn(Result<&(), &Bad>) -> Outcome;

pub async fn dependency(call: Call) -> Result<(), Bad> {
    match call {
        Call::Ok => Ok(()),
        Call::Fail => Err(Bad::Down),
        Call::CallerFault => Err(Bad::Funds),
        Call::Ignored => Err(Bad::Gone),
        Call::Slow(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Call::Held(rx) => match rx.await {
            Ok(true) => Ok(()),
            _ => Err(Bad::Down),
        },
    }
}

pub fn policy() -> CircuitBreakerPolicy {
    let mut p = CircuitBreakerPolicy::default();
    p.consecutive_failures = 0;
    p.minimum_calls = 4;
    p.failure_rate = 0.5;
    p.window = Duration::from_secs(10);
    p.open_timeout = Duration::from_secs(5);
    p.half_open_max_requests = 2;
    p.success_threshold = 2;
    p.half_open_max_duration = Duration::from_secs(20);
    p
}

pub fn layer(p: CircuitBreakerPolicy) -> CircuitBreakerLayer<Classifier> {
    CircuitBreakerLayer::builder("dep", p)
        .open_jitter(0.0)
        .build(classify as Classifier)
}

macro_rules! service {
    ($layer:expr) => {
        ServiceBuilder::new()
            .layer($layer)
            .service(service_fn(dependency))
    };
}

pub async fn call<S>(svc: &S, c: Call) -> Result<(), Error<Bad>>
where
    S: Service<Call, Response = (), Error = Error<Bad>> + Clone,
{
    svc.clone().oneshot(c).await
}

pub fn rejected(r: &Result<(), Error<Bad>>) -> Option<Duration> {
    match r {
        Err(Error::CircuitOpen(open)) => Some(open.retry_after),
        _ => None,
    }
}

/// Fails `n` calls, each reaching the dependency.
pub async fn trip<S>(svc: &S, n: u32)
where
    S: Service<Call, Response = (), Error = Error<Bad>> + Clone,
{
    for _ in 0..n {
        let r = call(svc, Call::Fail).await;
        assert!(matches!(r, Err(Error::Inner(Bad::Down))), "{r:?}");
    }
}
