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
pub struct SensitiveHeaders {
    names: Arc<[HeaderName]>,
    /// One bit per listed name, chosen by its length and first and last bytes, so most
    /// headers are ruled out by one bit test before any name comparison (by length alone,
    /// `accept`, `user-agent` and `x-request-id` all looked like listed names).
    lengths: u128,
}

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
        SensitiveHeaders::from_names(Arc::new(DEFAULT_SENSITIVE_HEADERS))
    }
}

#[inline(always)]
fn length_bit(name: &HeaderName) -> u128 {
    name_bit(name.as_str().as_bytes())
}

#[inline(always)]
fn name_bit(bytes: &[u8]) -> u128 {
    let (first, last) = match bytes {
        [first, .., last] => (*first, *last),
        [only] => (*only, *only),
        [] => (0, 0),
    };
    let spread =
        bytes.len().wrapping_mul(31) ^ usize::from(first).wrapping_mul(7) ^ usize::from(last);
    1u128 << (spread & 127)
}

impl SensitiveHeaders {
    fn from_names(names: Arc<[HeaderName]>) -> Self {
        let lengths = names.iter().fold(0, |mask, n| mask | length_bit(n));
        SensitiveHeaders { names, lengths }
    }

    /// No header is sensitive (values already flagged sensitive stay hidden by `redact`).
    pub fn none() -> Self {
        SensitiveHeaders::from_names(Arc::new([]))
    }

    /// These headers and `name`.
    pub fn with(self, name: HeaderName) -> Self {
        if self.contains(&name) {
            return self;
        }
        let mut names = self.names.to_vec();
        names.push(name);
        SensitiveHeaders::from_names(names.into())
    }

    /// Whether `name` is in the list.
    #[inline(always)]
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.lengths & length_bit(name) != 0 && self.names.iter().any(|n| n == name)
    }

    /// Whether a header named `name` (lowercase, as [`HeaderName::as_str`] gives it) could be
    /// in the list: `false` means it is not; `true` means it may be (one bit test, no name
    /// comparison). For a caller that already walks the names, to skip [`mark`](Self::mark)
    /// when none could be listed.
    #[cfg(feature = "correlation")]
    #[inline(always)]
    pub(crate) fn may_contain(&self, name: &str) -> bool {
        self.lengths & name_bit(name.as_bytes()) != 0
    }

    /// Flags every value of a listed header as sensitive. No allocation; a header whose name
    /// matches no listed name's length and first and last bytes costs a bit test.
    pub fn mark(&self, headers: &mut HeaderMap) {
        // Most maps hold none: a read-only pass over the names (no values, no extra values)
        // finds that out at a fraction of the cost of visiting every value.
        if self.names.is_empty() || !headers.keys().any(|name| self.contains(name)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn names_of_the_same_length_are_told_apart() {
        let long = HeaderName::from_bytes(&[b'x'; 200]).unwrap();
        let longer = HeaderName::from_bytes(&[b'y'; 300]).unwrap();
        let sensitive = SensitiveHeaders::default().with(long.clone());
        assert!(sensitive.contains(&http::header::AUTHORIZATION));
        assert!(sensitive.contains(&HeaderName::from_static("x-mbx-apikey")));
        // Same length as `x-mbx-apikey`, `cookie` and `set-cookie`, but not listed.
        assert!(!sensitive.contains(&HeaderName::from_static("x-request-id")));
        assert!(!sensitive.contains(&http::header::ACCEPT));
        assert!(!sensitive.contains(&http::header::USER_AGENT));
        assert!(sensitive.contains(&long));
        assert!(!sensitive.contains(&longer));
        assert!(!SensitiveHeaders::none().contains(&http::header::AUTHORIZATION));
    }

    #[test]
    fn a_name_sharing_a_listed_names_bit_is_still_compared() {
        // `te` and `grpc-status` share a fingerprint bit: only the listed one is marked.
        let sensitive = SensitiveHeaders::none().with(http::header::TE);
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        sensitive.mark(&mut headers);
        assert!(!headers["grpc-status"].is_sensitive());
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        sensitive.mark(&mut headers);
        assert!(headers[http::header::TE].is_sensitive());
        assert!(!headers["grpc-status"].is_sensitive());
    }

    #[test]
    fn every_value_of_a_repeated_header_is_marked() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", HeaderValue::from_static("a=1"));
        headers.append("cookie", HeaderValue::from_static("b=2"));
        headers.append("accept", HeaderValue::from_static("*/*"));
        SensitiveHeaders::default().mark(&mut headers);
        assert!(
            headers
                .get_all("cookie")
                .iter()
                .all(HeaderValue::is_sensitive)
        );
        assert!(!headers["accept"].is_sensitive());
        let line = SensitiveHeaders::none().redact(&headers).to_string();
        assert_eq!(
            line,
            "{cookie: [redacted], cookie: [redacted], accept: */*}"
        );
    }
}
