//! The deadline of the task: set by a timeout layer or an upstream caller, read by every
//! layer below it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

thread_local! {
    /// The deadline of the task being polled on this thread. Set only for the duration of a
    /// poll (or a call) by [`Deadline::sync_scope`], so it follows the task, like tokio's
    /// `task_local!`, at the cost of two `Cell` swaps (tokio's `RefCell` and lazy
    /// initialisation cost several times that, on every call of every timeout layer).
    static CURRENT: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Puts the previous deadline back when a scope ends, unwinding included.
struct Restore(Option<Deadline>);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

/// A point in time by which a call must be done, on tokio's clock (so it follows
/// `tokio::time::pause`).
///
/// A deadline is propagated through the task: a [`TimeoutLayer`](super::TimeoutLayer) sets
/// it while it calls and polls the service inside, and every timeout, retry and client below
/// reads it with [`Deadline::current`]. Spawned tasks do not inherit it; wrap their futures
/// with [`Deadline::scope`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// The deadline at this instant.
    pub const fn at(at: Instant) -> Self {
        Deadline { at }
    }

    /// The deadline `timeout` from now. A timeout too large for the clock gives a deadline
    /// about thirty years away.
    pub fn after(timeout: Duration) -> Self {
        Deadline::after_from(Instant::now(), timeout)
    }

    #[inline]
    pub(crate) fn after_from(now: Instant, timeout: Duration) -> Self {
        Deadline {
            at: now.checked_add(timeout).unwrap_or_else(|| far_future(now)),
        }
    }

    /// The instant of the deadline.
    pub const fn instant(&self) -> Instant {
        self.at
    }

    /// Time left until the deadline; zero once it has passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(&self) -> bool {
        self.at <= Instant::now()
    }

    /// The deadline of the current task, if a timeout layer or [`Deadline::scope`] set one.
    #[inline]
    pub fn current() -> Option<Deadline> {
        CURRENT.get()
    }

    /// The earlier of this deadline and the current task's.
    #[must_use]
    pub fn min_with_current(self) -> Deadline {
        match Deadline::current() {
            Some(current) if current < self => current,
            _ => self,
        }
    }

    /// Runs `future` with this deadline as the task's deadline, or the one in force when the
    /// future is polled if that is earlier (a scope never extends a deadline).
    pub fn scope<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            deadline: self,
            future,
        }
    }

    /// Runs `f` with exactly this deadline as the task's deadline.
    pub(crate) fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        let _restore = Restore(CURRENT.replace(Some(self)));
        f()
    }
}

pin_project! {
    /// A future run with a [`Deadline`] in force. Made by [`Deadline::scope`].
    #[derive(Debug)]
    pub struct Scoped<F> {
        deadline: Deadline,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let deadline = this.deadline.min_with_current();
        deadline.sync_scope(|| this.future.poll(cx))
    }
}

fn far_future(now: Instant) -> Instant {
    // Thirty years fits every platform's clock, like tokio's own `far_future`.
    now.checked_add(Duration::from_secs(86_400 * 365 * 30))
        .unwrap_or(now)
}

/// Finds the deadline a request carries from upstream.
pub trait RequestDeadline<Req> {
    /// The deadline set by the caller of this request, if any.
    fn deadline(&self, request: &Req) -> Option<Deadline>;
}

/// Reads no deadline from requests: only the task's deadline applies. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskDeadlineOnly;

impl<Req> RequestDeadline<Req> for TaskDeadlineOnly {
    fn deadline(&self, _: &Req) -> Option<Deadline> {
        None
    }
}

/// Reads an `http::Request`'s deadline: a [`Deadline`] in its extensions, else its
/// `grpc-timeout` header (measured from the moment the layer sees the request).
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcTimeoutHeader;

/// The gRPC deadline header.
#[cfg(feature = "http")]
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

#[cfg(feature = "http")]
impl<B> RequestDeadline<http::Request<B>> for GrpcTimeoutHeader {
    fn deadline(&self, request: &http::Request<B>) -> Option<Deadline> {
        if let Some(d) = request.extensions().get::<Deadline>() {
            return Some(*d);
        }
        let value = request.headers().get(GRPC_TIMEOUT)?.to_str().ok()?;
        parse_grpc_timeout(value).map(Deadline::after)
    }
}

/// Parses a `grpc-timeout` value: one to eight ASCII digits and a unit, `H` hours, `M`
/// minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds. Anything else
/// is `None` (and the header is then ignored, as the gRPC spec asks).
///
/// ```
/// use std::time::Duration;
/// use palisade::timeout::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
/// assert_eq!(parse_grpc_timeout("123456789S"), None); // nine digits
/// assert_eq!(parse_grpc_timeout("5x"), None);
/// ```
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in ["", "S", "m5", "-1S", "1.5S", "10", "1 S", "١S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scope_never_extends_the_deadline_in_force() {
        assert_eq!(Deadline::current(), None);
        let outer = Deadline::after(Duration::from_secs(1));
        let inner = Deadline::after(Duration::from_secs(5));
        let seen = outer
            .scope(async move { inner.scope(async { Deadline::current() }).await })
            .await;
        assert_eq!(seen, Some(outer));
        let tighter = Deadline::after(Duration::from_millis(10));
        let seen = outer
            .scope(async move { tighter.scope(async { Deadline::current() }).await })
            .await;
        assert_eq!(seen, Some(tighter));
        assert_eq!(
            Deadline::current(),
            None,
            "a scope ends with its future's poll"
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(outer.remaining(), Duration::from_millis(600));
    }
}
