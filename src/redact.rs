//! Headers that must never reach a log: credentials, session cookies, API keys.
//!
//! [`SensitiveHeaders`] is the list (by default `Authorization`, `Proxy-Authorization`, `Cookie`,
//! `Set-Cookie`, `X-Api-Key`, `X-MBX-APIKEY`; add your own). It does two things:
//! - [`mark`](SensitiveHeaders::mark) flags those header values as sensitive, so their `Debug`
//!   output is `Sensitive` instead of the secret (whoever logs `?headers` later), and HTTP/2
//!   never puts them in its compression tables;
//! - [`redact`](SensitiveHeaders::redact) formats a header map for a log line with those values
//!   replaced by `[redacted]`.
//!
//! [`CorrelationLayer`](crate::correlation::CorrelationLayer) marks them on every request and
//! response it sees, and logs request headers only through `redact`.
//!
//! ```
//! use http::{HeaderMap, HeaderName, HeaderValue};
//! use palisade::redact::SensitiveHeaders;
//!
//! let sensitive = SensitiveHeaders::default().with(HeaderName::from_static("x-ledger-token"));
//! let mut headers = HeaderMap::new();
//! headers.insert("authorization", HeaderValue::from_static("Bearer s3cr3t"));
//! headers.insert("x-ledger-token", HeaderValue::from_static("t0k3n"));
//! headers.insert("accept", HeaderValue::from_static("application/json"));
//!
//! let line = sensitive.redact(&headers).to_string();
//! assert!(!line.contains("s3cr3t") && !line.contains("t0k3n"));
//! assert!(line.contains("accept: application/json"));
//!
//! sensitive.mark(&mut headers);
//! assert!(!format!("{headers:?}").contains("s3cr3t"));
//! ```

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

/// The names of headers whose values are never logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensitiveHeaders(Arc<[HeaderName]>);

/// The headers [`SensitiveHeaders::default`] hides.
pub const DEFAULT_SENSITIVE_HEADERS: [HeaderName; 6] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    http::header::COOKIE,
    http::header::SET_COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-mbx-apikey"),
];

impl Default for SensitiveHeaders {
    fn default() -> Self {
        SensitiveHeaders(Arc::new(DEFAULT_SENSITIVE_HEADERS))
    }
}

impl SensitiveHeaders {
    /// No header is sensitive (values already flagged sensitive stay hidden by `redact`).
    pub fn none() -> Self {
        SensitiveHeaders(Arc::new([]))
    }

    /// These headers and `name`.
    pub fn with(self, name: HeaderName) -> Self {
        if self.contains(&name) {
            return self;
        }
        let mut names = self.0.to_vec();
        names.push(name);
        SensitiveHeaders(names.into())
    }

    /// Whether `name` is in the list.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|n| n == name)
    }

    /// Flags every value of a listed header as sensitive. No allocation.
    pub fn mark(&self, headers: &mut HeaderMap) {
        if self.0.is_empty() {
            return;
        }
        for (name, value) in headers.iter_mut() {
            if self.contains(name) {
                value.set_sensitive(true);
            }
        }
    }

    /// `headers`, formattable for a log line, listed values shown as `[redacted]`.
    pub fn redact<'a>(&'a self, headers: &'a HeaderMap) -> Redacted<'a> {
        Redacted {
            headers,
            sensitive: self,
        }
    }
}

/// A header map formatted with its sensitive values hidden; built by
/// [`SensitiveHeaders::redact`]. `Display` and `Debug` print the same thing.
#[derive(Clone, Copy)]
pub struct Redacted<'a> {
    headers: &'a HeaderMap,
    sensitive: &'a SensitiveHeaders,
}

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.headers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}: ")?;
            if value.is_sensitive() || self.sensitive.contains(name) {
                f.write_str("[redacted]")?;
            } else {
                match value.to_str() {
                    Ok(s) => f.write_str(s)?,
                    Err(_) => write!(f, "{:?}", value.as_bytes().escape_ascii().to_string())?,
                }
            }
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
