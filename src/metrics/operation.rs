//! Which `operation` label a request gets: from the policy table, a route template, or a fixed
//! name, never from the raw path.

use std::collections::HashSet;
use std::sync::Arc;

use metrics::SharedString;

use crate::policy::Policies;

use super::names::OTHER;

/// Picks the `operation` label for a request.
///
/// Implementations must return a value from a bounded set (policy names, route templates, a
/// fixed name, or `"other"`); the label ends up in every time series the request touches.
/// Implemented for closures `Fn(&Req) -> SharedString`.
pub trait OperationOf<Req> {
    /// The label for `req`.
    fn operation_of(&self, req: &Req) -> SharedString;
}

impl<Req, F> OperationOf<Req> for F
where
    F: Fn(&Req) -> SharedString,
{
    fn operation_of(&self, req: &Req) -> SharedString {
        self(req)
    }
}

/// One name for every request: a client stack for one downstream operation.
#[derive(Clone, Debug)]
pub struct OperationName(SharedString);

impl OperationName {
    /// The name `name`.
    pub fn new(name: impl Into<SharedString>) -> Self {
        OperationName(name.into())
    }
}

impl<Req> OperationOf<Req> for OperationName {
    fn operation_of(&self, _req: &Req) -> SharedString {
        self.0.clone()
    }
}

/// The operation of a server request, as the policy table routes it.
///
/// For an `http::Request`, looks up the route template (axum's `MatchedPath`, when the layer
/// runs inside the router with feature `axum`; otherwise the path as-is, compared exactly with
/// the table's routes) and method in [`Policies::route`], and labels the request with the policy
/// name. A request no route maps to is labelled with its route template if
/// [`with_route_templates`](Self::with_route_templates) is on and the template is in the
/// allow-list, else `"other"`. The raw path is never a label.
#[derive(Clone, Debug)]
pub struct PolicyOperations {
    policies: Arc<Policies>,
    templates: Arc<HashSet<Box<str>>>,
}

impl PolicyOperations {
    /// Labels requests by the policy their route maps to.
    pub fn new(policies: Arc<Policies>) -> Self {
        PolicyOperations {
            policies,
            templates: Arc::default(),
        }
    }

    /// Also labels requests whose route has no policy by these route templates
    /// (`/v1/accounts/{id}`), when axum's `MatchedPath` names one of them.
    pub fn with_route_templates<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Box<str>>,
    {
        self.templates = Arc::new(templates.into_iter().map(Into::into).collect());
        self
    }

    /// The label for a method and route template or path.
    pub fn label(&self, method: &str, route: &str) -> SharedString {
        match self.policies.route(method, route) {
            Some(policy) => SharedString::from(policy.name_arc().clone()),
            None => SharedString::const_str(OTHER),
        }
    }
}

#[cfg(feature = "http")]
impl<B> OperationOf<http::Request<B>> for PolicyOperations {
    fn operation_of(&self, req: &http::Request<B>) -> SharedString {
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
            let template = matched.as_str();
            if let Some(policy) = self.policies.route(req.method().as_str(), template) {
                return SharedString::from(policy.name_arc().clone());
            }
            if self.templates.contains(template) {
                return SharedString::from(template.to_owned());
            }
            return SharedString::const_str(OTHER);
        }
        self.label(req.method().as_str(), req.uri().path())
    }
}
