//! What sits around the stack's core at its edge: the correlation layer (outermost), then what
//! palisade errors become (problem responses, gRPC statuses, or the errors themselves).
//!
//! The order is fixed by [`ResilienceLayer`](super::ResilienceLayer): correlation ->
//! responses -> [error metrics -> kill switch / fallback -> bulkhead -> ...]. Errors become
//! responses inside the correlation layer, so a problem response or a gRPC status carries the
//! request's ID (echoed header, `correlation_id` in the body) like any other response.

/// A wrapper the stack puts around its core. [`ResilienceLayer`](super::ResilienceLayer)
/// puts the correlation edge outermost, then the one that turns errors into responses, so a
/// refusal answered as a response carries the request's correlation ID.
pub trait Edge {
    /// The wrapped service.
    type Service<T>;

    /// Wraps `inner`.
    fn wrap<T>(&self, inner: T) -> Self::Service<T>;
}

/// No correlation layer: for request types without headers (anything but `http::Request`),
/// and for users who add their own [`CorrelationLayer`](crate::correlation::CorrelationLayer).
#[derive(Clone, Copy, Debug, Default)]
pub struct Uncorrelated;

impl Edge for Uncorrelated {
    type Service<T> = T;

    fn wrap<T>(&self, inner: T) -> T {
        inner
    }
}

/// The stack's correlation layer: each `http::Request` gets its validated or generated ID, in
/// the extensions, the task-local, the `request` span and the echoed response header.
/// Configured from the policy file's `correlation:` section, or given with
/// [`with_correlation`](super::ResilienceLayer::with_correlation).
#[cfg(feature = "correlation")]
#[derive(Clone, Debug)]
pub struct Correlated(pub crate::correlation::CorrelationLayer);

#[cfg(feature = "correlation")]
impl Correlated {
    /// The correlation layer the policy file's `correlation:` section describes.
    pub fn from_policy(policy: &crate::policy::CorrelationPolicy) -> Self {
        use crate::correlation::CorrelationLayer;
        use http::HeaderName;

        // The parser accepts only lowercase token names, so these conversions cannot fail;
        // a name that somehow did is skipped rather than panicking.
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).ok();
        // The response header is read first, then the file's list in its order; a header the
        // file does not name (`x-request-id` included) is not read at all.
        let main = policy.response_header.as_deref().and_then(name);
        let listed = policy.headers.iter().filter_map(|h| name(h));
        let layer = CorrelationLayer::new()
            .use_traceparent(policy.trust_traceparent)
            .headers(main.into_iter().chain(listed));
        Correlated(layer)
    }
}

#[cfg(feature = "correlation")]
impl Edge for Correlated {
    type Service<T> = crate::correlation::CorrelationService<T>;

    fn wrap<T>(&self, inner: T) -> Self::Service<T> {
        tower_layer::Layer::layer(&self.0, inner)
    }
}

/// The correlation edge a new [`ResilienceLayer`](super::ResilienceLayer) has: [`Correlated`]
/// with feature `correlation` (a default feature), else [`Uncorrelated`].
#[cfg(feature = "correlation")]
pub type DefaultCorrelation = Correlated;
/// The correlation edge a new [`ResilienceLayer`](super::ResilienceLayer) has: [`Correlated`]
/// with feature `correlation` (a default feature), else [`Uncorrelated`].
#[cfg(not(feature = "correlation"))]
pub type DefaultCorrelation = Uncorrelated;

/// Palisade errors come out as [`Error`](crate::Error)s. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Errors;

impl Edge for Errors {
    type Service<T> = T;

    fn wrap<T>(&self, inner: T) -> T {
        inner
    }
}

/// Palisade errors become `application/problem+json` responses; see
/// [`problem_responses`](super::ResilienceLayer::problem_responses).
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug)]
pub struct Problems {
    pub(crate) overload: http::StatusCode,
}

#[cfg(feature = "http")]
impl Edge for Problems {
    type Service<T> = super::http::ProblemResponses<T>;

    fn wrap<T>(&self, inner: T) -> Self::Service<T> {
        super::http::ProblemResponses::new(inner, self.overload)
    }
}

/// Palisade errors become trailers-only gRPC responses; see
/// [`grpc_statuses`](super::ResilienceLayer::grpc_statuses).
#[cfg(feature = "grpc")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Statuses;

#[cfg(feature = "grpc")]
impl Edge for Statuses {
    type Service<T> = super::grpc::GrpcStatuses<T>;

    fn wrap<T>(&self, inner: T) -> Self::Service<T> {
        super::grpc::GrpcStatuses::new(inner)
    }
}
