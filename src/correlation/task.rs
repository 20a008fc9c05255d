//! The task-local that carries the current request's ID, and helpers that keep it across
//! `tokio::spawn`.

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;

use super::CorrelationId;

tokio::task_local! {
    static CURRENT: CorrelationId;
}

pub(crate) fn current() -> Option<CorrelationId> {
    CURRENT.try_with(CorrelationId::clone).ok()
}

/// Runs `future` with `id` as the [current](CorrelationId::current) correlation ID.
///
/// The ID is visible only while `future` is being polled (including from code it calls
/// synchronously), and not in tasks it spawns: use [`spawn`] for those.
pub fn scope<F: Future>(id: CorrelationId, future: F) -> TaskLocalFuture<CorrelationId, F> {
    CURRENT.scope(id, future)
}

/// Wraps `future` so that it runs with the current correlation ID, if there is one.
///
/// For executors other than tokio's `spawn`, or to hand a future to a `JoinSet`.
pub fn carry<F: Future>(future: F) -> Carried<F> {
    match current() {
        Some(id) => Carried::Scoped {
            future: CURRENT.scope(id, future),
        },
        None => Carried::Plain { future },
    }
}

/// [`tokio::spawn`], keeping the current correlation ID for the spawned task.
///
/// A background job started while handling a request (a ledger write, an audit call) keeps the
/// request's ID, so its logs and the downstream calls it makes are correlated.
///
/// # Panics
///
/// As [`tokio::spawn`]: when called outside a tokio runtime.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(carry(future))
}

pin_project_lite::pin_project! {
    /// A future that runs with the correlation ID that was current when it was made.
    /// Built by [`carry`].
    #[project = CarriedProj]
    #[allow(missing_docs)]
    pub enum Carried<F: Future> {
        /// There was an ID: it is in scope while the future is polled.
        Scoped { #[pin] future: TaskLocalFuture<CorrelationId, F> },
        /// There was none.
        Plain { #[pin] future: F },
    }
}

impl<F: Future> Future for Carried<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            CarriedProj::Scoped { future } => future.poll(cx),
            CarriedProj::Plain { future } => future.poll(cx),
        }
    }
}

impl<F: Future> std::fmt::Debug for Carried<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Carried::Scoped { .. } => "Carried::Scoped",
            Carried::Plain { .. } => "Carried::Plain",
        })
    }
}
