use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A stable, bounded error code: `"http_503"`, `"grpc_unavailable"`, `"binance_-1003"`.
///
/// Built-in classifiers use `&'static str` codes, so classifying a failure allocates nothing;
/// codes from tables and user errors are shared `Arc<str>`s, so cloning a classification is a
/// reference-count bump at worst.
#[derive(Clone)]
pub struct Code(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Code {
    /// A code from a string literal; usable in `const` items.
    pub const fn from_static(code: &'static str) -> Self {
        Code(Repr::Static(code))
    }

    /// The code as a string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl Deref for Code {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Code {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Code {
    fn from(code: &'static str) -> Self {
        Code::from_static(code)
    }
}

impl From<String> for Code {
    fn from(code: String) -> Self {
        Code(Repr::Shared(code.into()))
    }
}

impl From<Arc<str>> for Code {
    fn from(code: Arc<str>) -> Self {
        Code(Repr::Shared(code))
    }
}

impl PartialEq for Code {
    fn eq(&self, other: &Code) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Code {}

impl PartialEq<str> for Code {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Hash for Code {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_shared_codes_with_the_same_text_are_equal() {
        let a = Code::from("http_503");
        let b = Code::from(String::from("http_503"));
        assert_eq!(a, b);
        assert_eq!(a, "http_503");
        assert_ne!(a, Code::from("http_502"));
        let set: std::collections::HashSet<Code> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }
}
