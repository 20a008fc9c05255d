//! Which policy a request runs under.

use std::fmt;
use std::sync::Arc;

use super::{Policies, Policy};

/// Names the operation of a request explicitly. Put it in the request's extensions (or in a
/// client call's) and the request runs under that policy, whatever its route.
///
/// ```
/// use palisade::policy::{OperationName, Policies};
///
/// let policies = Policies::from_yaml_str("policies:\n  payment_gateway: {}\n").unwrap();
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(OperationName::new("payment_gateway"));
/// assert_eq!(policies.select(&request).name(), "payment_gateway");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OperationName(Arc<str>);

impl OperationName {
    /// An operation name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        OperationName(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OperationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for OperationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Policies {
    /// The policy a request runs under, chosen in this order:
    ///
    /// 1. an explicit [`OperationName`] in the request's extensions;
    /// 2. the matched route template with the method (`POST /v1/transfers`), from axum's
    ///    `MatchedPath` (feature `axum`), looked up in `routes`;
    /// 3. the request path with the method, looked up in `routes`: this is how gRPC method
    ///    paths (`/exchange.v1.Orders/Place`) and routes without parameters match;
    /// 4. `defaults`.
    ///
    /// Raw paths are only ever compared with the table, never turned into operations, so
    /// operation names (and the metrics labels built from them) stay bounded.
    pub fn select<B>(&self, request: &http::Request<B>) -> &Arc<Policy> {
        let extensions = request.extensions();
        if let Some(name) = extensions.get::<OperationName>() {
            return self.for_operation(name.as_str());
        }
        let method = request.method().as_str();
        #[cfg(feature = "axum")]
        if let Some(matched) = extensions.get::<axum::extract::MatchedPath>()
            && let Some(policy) = self.route(method, matched.as_str())
        {
            return policy;
        }
        self.for_route(method, request.uri().path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Policies {
        Policies::from_yaml_str(
            r#"
policies:
  transfers: {}
  orders: {}
  explicit: {}
routes:
  "POST /v1/transfers": transfers
  "/exchange.v1.Orders/Place": orders
"#,
        )
        .unwrap()
    }

    fn request(method: &str, path: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    #[test]
    fn an_explicit_operation_wins_over_the_route() {
        let p = policies();
        let mut r = request("POST", "/v1/transfers");
        r.extensions_mut().insert(OperationName::new("explicit"));
        assert_eq!(p.select(&r).name(), "explicit");
    }

    #[test]
    fn paths_match_routes_with_their_method() {
        let p = policies();
        assert_eq!(
            p.select(&request("POST", "/v1/transfers")).name(),
            "transfers"
        );
        assert_eq!(
            p.select(&request("GET", "/v1/transfers")).name(),
            "defaults"
        );
        assert_eq!(
            p.select(&request("POST", "/exchange.v1.Orders/Place"))
                .name(),
            "orders"
        );
    }

    #[test]
    fn unknown_paths_and_names_run_under_defaults() {
        let p = policies();
        assert_eq!(
            p.select(&request("GET", "/v1/accounts/123")).name(),
            "defaults"
        );
        let mut r = request("GET", "/");
        r.extensions_mut().insert(OperationName::new("nope"));
        assert_eq!(p.select(&r).name(), "defaults");
    }
}
