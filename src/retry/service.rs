use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use tower_service::Service;

use super::backoff::{Progress, Rng};
use super::future::Run;
use super::layer::Shared;
use super::{CloneRequest, Replay, ResponseFuture};
use crate::classify::Classify;
use crate::error::Error;

/// Retries a call while its classifier calls the failure transient, within `max_retries`,
/// the retry budget and the deadline.
///
/// # Readiness and cancellation
///
/// `call` sends the first attempt on the service that `poll_ready` readied. Each retry goes
/// to a fresh clone of a copy of the inner service taken at the first call of this service
/// or any of its clones (kept once, shared by them), after the backoff and after that
/// clone's readiness: the readied service stays here for the next call instead of moving
/// into the future, so a call clones no service unless it is retried (changes made through
/// [`get_mut`](Retry::get_mut) after the first call do not reach retries). Dropping the
/// future at any point (during an attempt, a backoff or a readiness wait) drops the attempt
/// in flight, the retry's service and the request copy; nothing else is held. A retry
/// already taken from the budget is not given back.
///
/// # Cost
///
/// The success path clones one shared `Arc` (tower's `Retry` clones the inner service
/// instead, with every reference count in it), copies the request for a possible retry
/// (`Replay`), counts the request in the budget (one relaxed add), and allocates nothing of
/// its own. It reads the clock only if an attempt is not done at its first poll (to time
/// the attempt), and on failures. `S::Error` need not be `Clone`.
pub struct Retry<S, C, P = CloneRequest> {
    inner: S,
    parts: Arc<Parts<S, C, P>>,
    rng: Rng,
}

/// What a service's calls share with their futures, behind one reference count: the layer's
/// settings, and a clone of the service taken at the first call, cloned again for each retry.
/// (In a `Mutex`, taken on retries only, so that a service that is `Send` but not `Sync`,
/// such as a `BoxCloneService`, still makes a `Send` retry service.)
pub(crate) struct Parts<S, C, P> {
    pub(crate) shared: Arc<Shared<C, P>>,
    template: OnceLock<Mutex<S>>,
}

impl<S: Clone, C, P> Parts<S, C, P> {
    /// A service for a retry.
    pub(crate) fn service(&self) -> S {
        let Some(template) = self.template.get() else {
            unreachable!("a retry follows a first call, which keeps the template");
        };
        template.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<S, C, P> Retry<S, C, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, P>>, rng: Rng) -> Self {
        Retry {
            inner,
            parts: Arc::new(Parts {
                shared,
                template: OnceLock::new(),
            }),
            rng,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, P> Clone for Retry<S, C, P> {
    /// A clone draws its own jitter sequence (reproducible when the layer was seeded and
    /// cloned on one thread).
    ///
    /// The salt that tells clones apart comes from a per-thread counter (each thread starts
    /// its own range, taken once from a process-wide counter), so cloning writes no cache
    /// line shared between cores.
    fn clone(&self) -> Self {
        let mut rng = self.rng;
        let salt = next_salt();
        let seed = rng.next_u64() ^ salt.wrapping_mul(0xA076_1D64_78BD_642F);
        Retry {
            inner: self.inner.clone(),
            parts: self.parts.clone(),
            rng: Rng::seeded(seed),
        }
    }
}

/// A salt no other clone of this process has had: the thread's range (one process-wide
/// `fetch_add` per thread, shifted to the top 24 bits) plus the thread's own count.
fn next_salt() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static NEXT: Cell<u64> = const { Cell::new(0) };
    }
    NEXT.with(|next| {
        let mut salt = next.get();
        if salt == 0 {
            salt = THREADS.fetch_add(1, Ordering::Relaxed) << 40;
        }
        next.set(salt + 1);
        salt
    })
}

impl<S: fmt::Debug, C: fmt::Debug, P: fmt::Debug> fmt::Debug for Retry<S, C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("operation", &self.parts.shared.operation)
            .field("policy", &self.parts.shared.policy)
            .field("classifier", &self.parts.shared.classifier)
            .field("replay", &self.parts.shared.replay)
            .field("budget", &self.parts.shared.budget)
            .finish()
    }
}

impl<S, C, P, Req> Service<Req> for Retry<S, C, P>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error>,
    P: Replay<Req, S::Response>,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = ResponseFuture<S, Req, C, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let run = self.start(request);
        ResponseFuture::new(self.parts.clone(), run)
    }
}

impl<S, C, P> Retry<S, C, P> {
    /// The parts this service's calls are polled with (shared by its clones).
    pub(crate) fn parts(&self) -> &Arc<Parts<S, C, P>> {
        &self.parts
    }

    /// Makes the first attempt of a call on the readied service: what `call` does, without
    /// the reference count of the parts (the stack's future holds one for all its layers).
    #[inline(always)]
    pub(crate) fn start<Req>(&mut self, request: Req) -> Run<S, Req>
    where
        S: Service<Req> + Clone,
        P: Replay<Req, S::Response>,
    {
        let shared = &*self.parts.shared;
        shared.budget.deposit();
        let copy = if shared.policy.max_retries > 0 {
            shared.replay.replay(&request)
        } else {
            None
        };
        // Call the service that was readied, in place; retries clone the template (taken
        // once, at the first call of this service or a clone of it).
        self.parts
            .template
            .get_or_init(|| Mutex::new(self.inner.clone()));
        let attempt = self.inner.call(request);
        let backoff = Progress::new(&shared.policy, Rng::seeded(self.rng.next_u64()));
        Run::new(copy, attempt, backoff)
    }
}
