//! The task-local that carries the current request's ID, and helpers that keep it across
//! `tokio::spawn`.
//!
//! The "task-local" is a thread-local slot that a [`Scoped`] future fills with its ID for the
//! duration of each of its polls (and of its drop), and empties again afterwards, unwinding
//! included: so the ID follows the task from thread to thread, as tokio's `task_local!` does,
//! for two moves of the ID in and out of a `Cell` per poll (tokio's `RefCell` borrow and lazy
//! initialisation cost about twice that on every request).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::CorrelationId;

thread_local! {
    /// The ID of the scope being polled on this thread, if any.
    static CURRENT: Cell<Option<CorrelationId>> = const { Cell::new(None) };
}

pub(crate) fn current() -> Option<CorrelationId> {
    CURRENT
        .try_with(|current| {
            let id = current.take();
            let copy = id.clone();
            current.set(id);
            copy
        })
        .ok()
        .flatten()
}

/// While alive, the thread's current ID is the one that was in `slot`, and `slot` holds the
/// previous one; dropping it swaps them back. A swap moves the two IDs and drops nothing.
struct Enter<'a> {
    slot: &'a Cell<Option<CorrelationId>>,
    /// `false` when the thread-local is gone (the thread is exiting): the future then runs
    /// without its ID rather than panicking.
    entered: bool,
}

impl<'a> Enter<'a> {
    #[inline]
    fn new(slot: &'a mut Option<CorrelationId>) -> Self {
        let slot = Cell::from_mut(slot);
        let entered = CURRENT.try_with(|current| current.swap(slot)).is_ok();
        Enter { slot, entered }
    }
}

impl Drop for Enter<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.entered {
            let _ = CURRENT.try_with(|current| current.swap(self.slot));
        }
    }
}

pin_project_lite::pin_project! {
    /// A future run with a correlation ID as the [current](CorrelationId::current) one: made by
    /// [`scope`] (and by [`CorrelationLayer`](super::CorrelationLayer) around each request).
    ///
    /// The ID is current while the future is polled and while it is dropped, and only then.
    /// Once the future has completed it is dropped at once, inside the scope.
    pub struct Scoped<F> {
        id: Option<CorrelationId>,
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if std::mem::needs_drop::<F>() && this.future.is_some() {
                let mut future = this.future;
                let _enter = Enter::new(this.id);
                future.set(None);
            }
        }
    }
}

impl<F> Scoped<F> {
    /// Takes the ID out of the scope; from then on the future runs without one. The response
    /// future uses it to echo the ID once the handler is done, without a copy of its own.
    pub(crate) fn take_id(self: Pin<&mut Self>) -> Option<CorrelationId> {
        self.project().id.take()
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut future = this.future;
        let _enter = Enter::new(this.id);
        let Some(inner) = future.as_mut().as_pin_mut() else {
            panic!("`Scoped` polled after completion");
        };
        let output = inner.poll(cx);
        if output.is_ready() {
            // Dropped while the ID is still current, as a cancelled future would be.
            future.set(None);
        }
        output
    }
}

impl<F> std::fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Runs `future` with `id` as the [current](CorrelationId::current) correlation ID.
///
/// The ID is visible only while `future` is being polled or dropped (including from code it
/// calls synchronously), and not in tasks it spawns: use [`spawn`] for those.
pub fn scope<F: Future>(id: CorrelationId, future: F) -> Scoped<F> {
    Scoped {
        id: Some(id),
        future: Some(future),
    }
}

/// Wraps `future` so that it runs with the current correlation ID, if there is one.
///
/// For executors other than tokio's `spawn`, or to hand a future to a `JoinSet`.
pub fn carry<F: Future>(future: F) -> Carried<F> {
    match current() {
        Some(id) => Carried::Scoped {
            future: scope(id, future),
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
        Scoped { #[pin] future: Scoped<F> },
        /// There was none.
        Plain { #[pin] future: F },
    }
}

impl<F: Future> Future for Carried<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
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
