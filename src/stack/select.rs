//! Which operation a request runs under.

use std::sync::Arc;

use crate::policy::{Policies, Policy};

/// Picks the policy of a request from the running table.
///
/// The stack asks this once per call, on the snapshot of the table the call runs under.
/// Implementations must only compare what they read with the table (never turn raw paths or
/// hosts into operations), so operations and the state kept per operation stay bounded.
pub trait SelectOperation<Req> {
    /// The policy `request` runs under.
    fn select<'p>(&self, policies: &'p Policies, request: &Req) -> &'p Arc<Policy>;

    /// Whether `select` gives the same policy for every request of one table, as
    /// [`ByName`] does: the stack then asks once per table for each service value that is
    /// called again, not once per call. `false` unless overridden.
    fn same_for_every_request(&self) -> bool {
        false
    }
}

/// Selects by what the request says about itself: for `http::Request`s, an explicit
/// [`OperationName`](crate::policy::OperationName) extension, then axum's `MatchedPath` with
/// the method (feature `axum`), then the path (gRPC method paths) with the method, looked up
/// in `routes`, else `defaults` ([`Policies::select`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ByRequest;

#[cfg(feature = "http")]
impl<B> SelectOperation<http::Request<B>> for ByRequest {
    fn select<'p>(&self, policies: &'p Policies, request: &http::Request<B>) -> &'p Arc<Policy> {
        policies.select(request)
    }
}

/// Runs every request under one named operation (`defaults` if the table has no such
/// operation). For clients of one dependency, and for requests that carry no route.
#[derive(Clone, Debug)]
pub struct ByName(pub Arc<str>);

impl ByName {
    /// Every request runs under `operation`.
    pub fn new(operation: impl Into<Arc<str>>) -> Self {
        ByName(operation.into())
    }
}

impl<Req> SelectOperation<Req> for ByName {
    fn select<'p>(&self, policies: &'p Policies, _request: &Req) -> &'p Arc<Policy> {
        policies.for_operation(&self.0)
    }

    fn same_for_every_request(&self) -> bool {
        true
    }
}
