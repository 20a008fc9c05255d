//! The boundary between the stack's layers and the user's service, for the shared clock read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::clock;

/// The user's service as the stack's innermost layer (the attempt timeout) sees it: the
/// same service, called and polled outside the stack's shared clock read.
///
/// The stack reads tokio's clock once for all its layers while its own code runs (one read
/// per call, one per completing poll, instead of one per layer). This wrapper marks where
/// that ends: the service's `poll_ready`, `call` and future run as they would with no stack
/// around them (any palisade layer inside reads the clock itself), and the time spent in them
/// is never hidden from the layers outside, which read the clock afresh afterwards. It adds
/// nothing to the future's size and takes no lock; its cost is a few thread-local writes.
#[derive(Clone, Debug)]
pub struct Outside<S> {
    inner: S,
}

impl<S> Outside<S> {
    pub(crate) fn new(inner: S) -> Self {
        Outside { inner }
    }

    /// The user's service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The user's service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The user's service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Service<Req>, Req> Service<Req> for Outside<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = OutsideFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        clock::outside(|| self.inner.poll_ready(cx))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        OutsideFuture {
            inner: clock::outside(|| self.inner.call(request)),
        }
    }
}

pin_project! {
    /// The response future of [`Outside`]: the user's future, polled outside the stack's
    /// shared clock read.
    #[derive(Debug)]
    pub struct OutsideFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for OutsideFuture<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.project().inner;
        clock::outside(|| inner.poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    use tower::{ServiceExt, service_fn};
    use tower_layer::Layer;

    use crate::classify::SelfClassified;
    use crate::clock;
    use crate::policy::Policies;
    use crate::stack::{ByName, Failure, ResilienceLayer, fallback_fn};

    /// The user's service and fallback (their `call`, their futures' polls) never see the
    /// stack's shared clock read, whether the call succeeds, waits or fails; palisade's own
    /// code around them does.
    #[tokio::test(start_paused = true)]
    async fn user_code_runs_outside_the_shared_clock_read() {
        let policies = Policies::from_yaml_str(
            "policies:\n  op:\n    retry: { max_retries: 0 }\n    timeout: { attempt: 1s }\n",
        )
        .unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let check = {
            let seen = seen.clone();
            move || {
                assert!(!clock::in_step(), "user code saw the stack's clock read");
                seen.fetch_add(1, Ordering::SeqCst);
            }
        };
        let service = {
            let check = check.clone();
            service_fn(move |fail: bool| {
                check();
                let check = check.clone();
                let mut polls = 0;
                std::future::poll_fn(move |cx| {
                    check();
                    polls += 1;
                    if polls == 1 {
                        // Pending once: the completing poll is a later step.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Ready(if fail {
                        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                    } else {
                        Ok("ok")
                    })
                })
            })
        };
        let fallback = {
            let check = check.clone();
            fallback_fn(move |_: Failure<&'static str, std::io::Error>| {
                check();
                let check = check.clone();
                async move {
                    check();
                    Ok("fallback")
                }
            })
        };
        let stack = ResilienceLayer::from_policies(policies, SelfClassified)
            .without_correlation()
            .with_select(ByName::new("op"))
            .with_fallback(fallback)
            .layer(service);
        assert_eq!(stack.clone().oneshot(false).await.unwrap(), "ok");
        // call, two polls
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert_eq!(stack.clone().oneshot(true).await.unwrap(), "fallback");
        // call, two polls, the fallback's call and poll
        assert_eq!(seen.load(Ordering::SeqCst), 8);
        assert!(!clock::in_step(), "the steps closed");
    }
}
