use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::layer::Shared;
use super::{OperationOf, ResponseFuture};
use crate::classify::Classify;

/// The service built by [`ErrorMetricsLayer`](super::ErrorMetricsLayer).
#[derive(Clone, Debug)]
pub struct ErrorMetrics<S, C, O> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<C>>,
    pub(crate) operation: O,
}

impl<S, C, O> ErrorMetrics<S, C, O> {
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

impl<S, C, O, Req> Service<Req> for ErrorMetrics<S, C, O>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    O: OperationOf<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let operation = self.operation.operation_of(&req);
        ResponseFuture::new(self.inner.call(req), self.shared.clone(), operation)
    }
}
