//! Which `operation` label a request gets: from the policy table, a route template, or a fixed
//! name, never from the raw path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use metrics::{Key, Label, SharedString};

use crate::policy::Policies;

use super::names::{self, OTHER};

/// An `operation` label value with its metric keys built once, so recording a call allocates
/// nothing and hashes nothing. Cheap to clone (one `Arc`).
///
/// Build the few operations a service has up front (policy names, route templates); a label
/// made per request from request data would defeat the point and the cardinality bound.
#[derive(Clone)]
pub struct Operation(Arc<OperationKeys>);

pub(crate) struct OperationKeys {
    pub(crate) name: SharedString,
    pub(crate) success: Key,
    pub(crate) failure: Key,
    pub(crate) ignored: Key,
    pub(crate) cancelled: Key,
    pub(crate) duration: Key,
}

impl Operation {
    /// The operation named `name`.
    pub fn new(name: impl Into<SharedString>) -> Self {
        let name = name.into();
        let requests = |outcome: &'static str| {
            Key::from_parts(
                names::REQUESTS_TOTAL,
                vec![
                    Label::new("operation", name.clone()),
                    Label::from_static_parts("outcome", outcome),
                ],
            )
        };
        Operation(Arc::new(OperationKeys {
            success: requests("success"),
            failure: requests("failure"),
            ignored: requests("ignored"),
            cancelled: requests("cancelled"),
            duration: Key::from_parts(
                names::REQUEST_DURATION_SECONDS,
                vec![Label::new("operation", name.clone())],
            ),
            name,
        }))
    }

    /// The catch-all operation, `"other"`.
    pub fn other() -> Self {
        Operation::new(OTHER)
    }

    /// The label value.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub(crate) fn keys(&self) -> &OperationKeys {
        &self.0
    }
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Operation").field(&self.name()).finish()
    }
}

/// Picks the [`Operation`] of a request.
///
/// Implementations must return one of a bounded set of operations (policy names, route
/// templates, a fixed name, or [`Operation::other`]); the label ends up in every time series the
/// request touches. Implemented for closures `Fn(&Req) -> Operation`.
pub trait OperationOf<Req> {
    /// The operation of `req`.
    fn operation_of(&self, req: &Req) -> Operation;
}

impl<Req, F> OperationOf<Req> for F
where
    F: Fn(&Req) -> Operation,
{
    fn operation_of(&self, req: &Req) -> Operation {
        self(req)
    }
}

/// One operation for every request: a client stack for one downstream operation.
impl<Req> OperationOf<Req> for Operation {
    fn operation_of(&self, _req: &Req) -> Operation {
        self.clone()
    }
}

/// The operation of a server request, as the policy table routes it.
///
/// For an `http::Request`, picks the policy as [`Policies::select`] does for every layer (an
/// explicit [`OperationName`](crate::policy::OperationName) in the extensions, else the method
/// with axum's `MatchedPath` when the layer runs inside the router with feature `axum`, else
/// the method with the exact path) and labels the request with the policy's name. A request
/// that runs under the defaults is labelled with its route template if that template is in the
/// [`with_route_templates`](Self::with_route_templates) allow-list, else `"other"`. The raw path
/// is never a label.
#[derive(Clone, Debug)]
pub struct PolicyOperations {
    policies: Arc<Policies>,
    by_policy: Arc<HashMap<Arc<str>, Operation>>,
    by_template: Arc<HashMap<Box<str>, Operation>>,
    other: Operation,
}

impl PolicyOperations {
    /// Labels requests by the policy their route maps to.
    pub fn new(policies: Arc<Policies>) -> Self {
        let by_policy = policies
            .operations()
            .map(|p| (p.name_arc().clone(), Operation::new(p.name_arc().clone())))
            .collect();
        PolicyOperations {
            policies,
            by_policy: Arc::new(by_policy),
            by_template: Arc::default(),
            other: Operation::other(),
        }
    }

    /// Also labels requests whose route has no policy by these route templates
    /// (`/v1/accounts/{id}`), when axum's `MatchedPath` names one of them.
    pub fn with_route_templates<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Box<str>>,
    {
        let by_template = templates
            .into_iter()
            .map(|t| {
                let t: Box<str> = t.into();
                let op = Operation::new(t.to_string());
                (t, op)
            })
            .collect();
        self.by_template = Arc::new(by_template);
        self
    }

    /// The operation of a method and route template or path: its policy's, or `other`.
    pub fn operation(&self, method: &str, route: &str) -> Operation {
        self.policies
            .route(method, route)
            .and_then(|policy| self.by_policy.get(policy.name()))
            .unwrap_or(&self.other)
            .clone()
    }
}

#[cfg(feature = "http")]
impl<B> OperationOf<http::Request<B>> for PolicyOperations {
    fn operation_of(&self, req: &http::Request<B>) -> Operation {
        // The same choice the other layers make (`Policies::select`): an explicit
        // `OperationName`, then the matched route template, then the exact path.
        let policy = self.policies.select(req);
        if let Some(op) = self.by_policy.get(policy.name()) {
            return op.clone();
        }
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>()
            && let Some(op) = self.by_template.get(matched.as_str())
        {
            return op.clone();
        }
        self.other.clone()
    }
}
