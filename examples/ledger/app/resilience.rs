//! Where palisade's layers plug into the ledger, and the stopgap that stands in for them.
//!
//! The ledger calls two dependencies: SQLite (policy `database_operation`) and the payment
//! gateway (policy `payment_gateway`). Both go through [`call_with_policy`], which today is a
//! small local retry loop with per-attempt and total timeouts, driven entirely by the resolved
//! policy and a palisade classifier. It is TEMPORARY: when `palisade::retry` and
//! `palisade::timeout` land, [`call_with_policy`]'s callers switch to the real stack and this
//! loop is deleted. Every seam is marked `// palisade stack: <layer> goes here when it lands`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade::Error;
use palisade::classify::{Classification, Outcome, Transience};
use palisade::error::{TimeoutError, TimeoutKind};
use palisade::policy::{Jitter, Policy};

/// SplitMix64: a tiny, seedable, lock-free generator for jitter, fault injection and ids.
/// Not for secrets.
#[derive(Debug)]
pub struct SplitMix64(AtomicU64);

impl SplitMix64 {
    /// A generator with this seed; the same seed and call order give the same numbers.
    pub const fn new(seed: u64) -> Self {
        SplitMix64(AtomicU64::new(seed))
    }

    /// A generator seeded from the wall clock and the process id.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix64::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Jitter for the stopgap loop; ids and fault injection have their own generators.
static JITTER: std::sync::LazyLock<SplitMix64> = std::sync::LazyLock::new(SplitMix64::from_entropy);

/// What [`call_with_policy`] did: the final result, how it classified, how many attempts.
#[derive(Debug)]
pub struct Attempted<T, E> {
    /// The last attempt's result, or the timeout that ended the call.
    pub result: Result<T, Error<E>>,
    /// The classifier's verdict on that result (a response can be a failure: a 503).
    pub outcome: Outcome,
    /// Attempts made, at least 1.
    pub attempts: u32,
    /// Classifications of the attempts that were retried, oldest first.
    pub retried: Vec<Classification>,
}

/// The backoff before retry number `retry` (0-based), per the policy, honouring a peer's
/// retry-after (capped by `max_delay`, like palisade's retry layer will).
pub fn backoff(
    policy: &Policy,
    retry: u32,
    previous: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let r = &policy.retry;
    let exp = r.base_delay.as_secs_f64() * r.multiplier.max(1.0).powi(retry.min(64) as i32);
    let delay = Duration::from_secs_f64(exp.min(r.max_delay.as_secs_f64()));
    let jittered = match r.jitter {
        Jitter::None => delay,
        Jitter::Full => delay.mul_f64(JITTER.next_f64()),
        Jitter::Equal => delay / 2 + (delay / 2).mul_f64(JITTER.next_f64()),
        Jitter::Decorrelated => {
            let hi = (previous * 3).max(r.base_delay);
            let span = hi.saturating_sub(r.base_delay);
            (r.base_delay + span.mul_f64(JITTER.next_f64())).min(r.max_delay)
        }
    };
    match retry_after {
        Some(after) => jittered.max(after.min(r.max_delay)),
        None => jittered,
    }
}

/// Calls `attempt` under `policy` (not at all if the policy has `enabled: false`): each
/// attempt bounded by `timeout.attempt`, the whole call
/// by `timeout.total`, transient failures (as `classify` judges them) retried up to
/// `retry.max_retries` times with the policy's backoff.
///
/// TEMPORARY stopgap for palisade's `RetryLayer` and `TimeoutLayer`: it has no retry budget
/// and no metrics; dropping the returned future cancels the attempt in flight and sends
/// nothing more.
pub async fn call_with_policy<T, E, F, Fut, C>(
    policy: &Policy,
    classify: C,
    mut attempt: F,
) -> Attempted<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Fn(Result<&T, &E>) -> Outcome,
{
    // palisade stack: TimeoutLayer (total), RetryLayer(policy.retry, classifier) and
    // TimeoutLayer (attempt) go here when they land; this loop is their stand-in.
    if !policy.enabled {
        // The kill switch: fail fast, call nothing.
        let disabled = Error::OperationDisabled(palisade::error::OperationDisabled {
            operation: policy.name_arc().clone(),
        });
        let outcome = disabled
            .layer_classification()
            .map_or(Outcome::fallback(false), Outcome::Failure);
        return Attempted {
            result: Err(disabled),
            outcome,
            attempts: 0,
            retried: Vec::new(),
        };
    }
    let start = tokio::time::Instant::now();
    let deadline = start + policy.timeout.total;
    let mut retried = Vec::new();
    let mut previous = policy.retry.base_delay;
    let mut n = 0u32;
    loop {
        n += 1;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (limit, kind) = if policy.timeout.attempt < remaining {
            (policy.timeout.attempt, TimeoutKind::Attempt)
        } else {
            (remaining, TimeoutKind::Total)
        };
        let result = match tokio::time::timeout(limit, attempt(n)).await {
            Ok(r) => r.map_err(Error::Inner),
            Err(_) => Err(Error::Timeout(TimeoutError {
                kind,
                operation: policy.name_arc().clone(),
                limit: if kind == TimeoutKind::Total {
                    policy.timeout.total
                } else {
                    limit
                },
            })),
        };
        let outcome = match &result {
            Ok(t) => classify(Ok(t)),
            Err(Error::Inner(e)) => classify(Err(e)),
            Err(other) => other
                .layer_classification()
                .map_or(Outcome::fallback(false), Outcome::Failure),
        };
        let retryable = match &outcome {
            Outcome::Failure(c) => {
                c.is_transient()
                    || (c.transience == Transience::Unknown && policy.retry.retry_unknown)
            }
            _ => false,
        };
        if !retryable || n > policy.retry.max_retries {
            return Attempted {
                result,
                outcome,
                attempts: n,
                retried,
            };
        }
        let class = outcome
            .classification()
            .cloned()
            .expect("retryable is a failure");
        let delay = backoff(policy, n - 1, previous, class.retry_after);
        previous = delay;
        if tokio::time::Instant::now() + delay >= deadline {
            // No time for another attempt: report the failure we have.
            return Attempted {
                result,
                outcome,
                attempts: n,
                retried,
            };
        }
        tracing::warn!(
            operation = policy.name(),
            attempt = n,
            code = %class.code,
            delay_ms = delay.as_millis() as u64,
            "transient failure; retrying"
        );
        retried.push(class);
        tokio::time::sleep(delay).await;
    }
}
