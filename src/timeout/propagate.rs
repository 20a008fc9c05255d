//! Passing the deadline on to the next service over gRPC's `grpc-timeout` header.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use super::deadline::{Deadline, GRPC_TIMEOUT, parse_grpc_timeout};

/// Sets `grpc-timeout` on outgoing `http::Request`s to the time left before the task's
/// [`Deadline`], so the next server stops working when this caller will have given up. A
/// header already on the request is kept if it is tighter. Requests made with no deadline in
/// force are left alone.
///
/// Put it on clients (a tonic channel, a hyper client), inside the timeout layers.
///
/// ```
/// use std::time::Duration;
/// use palisade::timeout::{Deadline, PropagateDeadlineLayer};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let client = PropagateDeadlineLayer.layer(service_fn(|req: http::Request<()>| async move {
///     Ok::<_, std::convert::Infallible>(req.headers().get("grpc-timeout").cloned())
/// }));
/// let sent = Deadline::after(Duration::from_millis(1500))
///     .scope(client.oneshot(http::Request::new(())))
///     .await
///     .unwrap();
/// assert_eq!(sent.unwrap(), "1500000u");
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateDeadlineLayer;

impl<S> Layer<S> for PropagateDeadlineLayer {
    type Service = PropagateDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateDeadline { inner }
    }
}

/// The service of [`PropagateDeadlineLayer`].
#[derive(Clone, Debug)]
pub struct PropagateDeadline<S> {
    inner: S,
}

impl<S> PropagateDeadline<S> {
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

impl<S, B> Service<Request<B>> for PropagateDeadline<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        if let Some(deadline) = Deadline::current() {
            let left = deadline.remaining();
            let existing = request
                .headers()
                .get(GRPC_TIMEOUT)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_grpc_timeout);
            if existing.is_none_or(|e| left < e) {
                request
                    .headers_mut()
                    .insert(GRPC_TIMEOUT, format_grpc_timeout(left));
            }
        }
        self.inner.call(request)
    }
}

/// Writes a `grpc-timeout` value: the finest unit whose count fits the header's eight digits,
/// rounded down (a server told slightly less time gives up no later than its caller).
///
/// ```
/// use std::time::Duration;
/// use palisade::timeout::{format_grpc_timeout, parse_grpc_timeout};
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600 * 24 * 365)), "31536000S");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600 * 24 * 3650)), "5256000M");
/// let value = format_grpc_timeout(Duration::from_nanos(1_234_567_891));
/// assert_eq!(parse_grpc_timeout(value.to_str().unwrap()), Some(Duration::from_micros(1_234_567)));
/// ```
pub fn format_grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let (count, unit) = [
        (1u128, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos / per, unit))
    .find(|(count, _)| *count <= MAX)
    .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{count}{unit}"))
        .unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn echo() -> impl Service<
        Request<()>,
        Response = Option<Duration>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone {
        tower::service_fn(|req: Request<()>| async move {
            Ok(req
                .headers()
                .get(GRPC_TIMEOUT)
                .and_then(|v| parse_grpc_timeout(v.to_str().unwrap())))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn sends_the_time_left_or_a_tighter_header_or_nothing() {
        let client = PropagateDeadlineLayer.layer(echo());
        let deadline = Deadline::after(Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(250)).await;
        let sent = deadline
            .scope(client.clone().oneshot(Request::new(())))
            .await
            .unwrap();
        assert_eq!(sent, Some(Duration::from_millis(750)));

        let tighter = Request::builder()
            .header(GRPC_TIMEOUT, "100m")
            .body(())
            .unwrap();
        let sent = deadline
            .scope(client.clone().oneshot(tighter))
            .await
            .unwrap();
        assert_eq!(sent, Some(Duration::from_millis(100)));

        assert_eq!(client.oneshot(Request::new(())).await.unwrap(), None);
    }

    #[test]
    fn every_duration_formats_to_a_valid_header() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(99_999_999),
            Duration::from_nanos(100_000_000),
            Duration::from_secs(99_999_999),
            Duration::MAX,
        ] {
            let value = format_grpc_timeout(d);
            let parsed = parse_grpc_timeout(value.to_str().unwrap()).unwrap();
            assert!(parsed <= d, "{d:?} -> {value:?}");
        }
    }
}
