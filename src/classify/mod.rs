//! One verdict on every outcome, shared by every layer.
//!
//! Retry, the circuit breaker and the metrics layer must never disagree on what a failure is,
//! so none of them decides it. Each asks a classifier, and the classifier answers with an
//! [`Outcome`]: a success, a failure with its [`Classification`], or an outcome nobody counts
//! (a client that went away).
//!
//! A [`Classification`] says
//! - whether trying again can help ([`Transience`]): retry only retries `Transient` failures;
//! - whose fault it is ([`Category`]): the breaker does not trip on `Business` or `User`
//!   failures such as insufficient funds;
//! - how loud to be about it ([`Severity`]);
//! - a stable, bounded `code` for metrics labels and logs (`"http_503"`, `"grpc_unavailable"`,
//!   `"io_connection_refused"`, `"binance_-1003"`);
//! - and, when the peer said so, how long to wait before trying again (`retry_after`).
//!
//! # Classifiers
//!
//! A classifier implements [`Classify`]. It may have no opinion on an outcome (it returns
//! `None`): classifiers compose with [`ClassifyExt::or`], the first that has an opinion wins, and
//! [`Classify::outcome`] falls back to "`Ok` is a success, `Err` is an unknown failure".
//!
//! | classifier | looks at | module |
//! |---|---|---|
//! | [`HttpStatus`] | `http::Response` status and `Retry-After` / rate-limit headers | [`http`] |
//! | [`GrpcStatus`], [`GrpcResponse`] | `tonic::Status`, or `grpc-status` response headers; `grpc-retry-pushback-ms` | [`grpc`] |
//! | [`TransportErrors`] | `std::io::Error`, hyper and reqwest errors anywhere in the source chain | [`transport`] |
//! | [`SelfClassified`] | errors that implement [`Classified`] (your own domain errors) | here |
//! | [`TableClassifier`] | a service's own error codes, looked up in a [`CodeTable`] | [`table`] |
//! | any closure `Fn(Result<&Res, &Err>) -> Option<Outcome>` | whatever you like | here |
//!
//! # Example
//!
//! ```
//! use palisade::classify::{
//!     Category, Classification, Classified, Classify, Outcome, SelfClassified, Severity, Transience,
//! };
//!
//! #[derive(Debug)]
//! enum LedgerError {
//!     InsufficientFunds { account: u64 },
//!     DatabaseBusy,
//! }
//!
//! impl Classified for LedgerError {
//!     fn classification(&self) -> Classification {
//!         match self {
//!             // The caller's problem: never retried, never trips a breaker.
//!             LedgerError::InsufficientFunds { .. } => Classification::new(
//!                 Transience::Persistent,
//!                 Category::Business,
//!                 Severity::Low,
//!                 "insufficient_funds",
//!             ),
//!             LedgerError::DatabaseBusy => Classification::new(
//!                 Transience::Transient,
//!                 Category::Database,
//!                 Severity::Medium,
//!                 "database_busy",
//!             ),
//!         }
//!     }
//! }
//!
//! let classifier = SelfClassified;
//! let busy: Result<&(), &LedgerError> = Err(&LedgerError::DatabaseBusy);
//! assert!(classifier.outcome(busy).is_transient_failure());
//!
//! let broke = LedgerError::InsufficientFunds { account: 7 };
//! let outcome = classifier.outcome(Err::<&(), _>(&broke));
//! let class = outcome.classification().unwrap();
//! assert_eq!(class.category, Category::Business);
//! assert_eq!(class.code, "insufficient_funds");
//!
//! assert_eq!(classifier.outcome(Ok::<_, &LedgerError>(&())), Outcome::Success);
//! ```

mod code;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;
pub mod table;
pub mod transport;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use code::Code;
#[cfg(feature = "grpc")]
pub use grpc::{GrpcResponse, GrpcStatus};
#[cfg(feature = "http")]
pub use http::HttpStatus;
pub use table::{CodeEntry, CodeTable, TableClassifier};
pub use transport::TransportErrors;

/// Whether trying the same call again can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transience {
    /// A later attempt may succeed: overload, a dropped connection, a timeout.
    Transient,
    /// The same call will fail the same way: bad input, missing permission, insufficient funds.
    Persistent,
    /// Nobody knows. Retry treats this as persistent unless configured otherwise.
    Unknown,
}

/// Whose fault a failure is, or which part of the system it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// The runtime or host: resource exhaustion, a full bulkhead, an unexpected internal state.
    System,
    /// The application's own logic failed (a bug, an unimplemented path).
    Application,
    /// A database call failed: busy, locked, lost connection, constraint.
    Database,
    /// The network between us and the peer: refused, reset, timed out.
    Network,
    /// Authentication or authorization: bad credentials, missing permission.
    Security,
    /// A business rule said no: insufficient funds, limit reached. Not a fault of the system.
    Business,
    /// An external dependency failed: a payment gateway's 5xx, an exchange's rate limit.
    External,
    /// The caller sent something wrong: invalid input, unknown resource.
    User,
}

/// How loud to be about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// Money or data is at risk; page somebody.
    Critical,
    /// A dependency is failing; users are affected.
    High,
    /// Degraded but coping (retries, rate limits).
    Medium,
    /// Expected failures, counted but not alarming (invalid input, insufficient funds).
    Low,
    /// Informational only.
    Info,
}

/// Implements `as_str`, `ALL`, `Display` and `FromStr` for the three label enums, so metrics
/// labels, YAML values and log fields all spell a variant the same way.
macro_rules! label_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The lowercase name used in YAML, metrics labels and logs.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownLabel;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(UnknownLabel {
                        what: $what,
                        value: s.to_owned(),
                        expected: &[$($name),+],
                    }),
                }
            }
        }
    };
}

label_enum!(Transience, "transience", {
    Transient => "transient",
    Persistent => "persistent",
    Unknown => "unknown",
});

label_enum!(Category, "category", {
    System => "system",
    Application => "application",
    Database => "database",
    Network => "network",
    Security => "security",
    Business => "business",
    External => "external",
    User => "user",
});

label_enum!(Severity, "severity", {
    Critical => "critical",
    High => "high",
    Medium => "medium",
    Low => "low",
    Info => "info",
});

/// A string that is not the name of a [`Transience`], [`Category`] or [`Severity`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`; expected one of: {}", expected.join(", "))]
pub struct UnknownLabel {
    /// Which enum was being parsed (`"category"`).
    pub what: &'static str,
    /// The value that did not match.
    pub value: String,
    /// The accepted names.
    pub expected: &'static [&'static str],
}

/// The verdict on one failed outcome.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Classification {
    /// Whether trying again can help.
    pub transience: Transience,
    /// Whose fault it is.
    pub category: Category,
    /// How loud to be.
    pub severity: Severity,
    /// A stable, bounded code for labels and logs, e.g. `"http_503"`.
    pub code: Code,
    /// How long the peer asked us to wait before the next attempt, if it said.
    pub retry_after: Option<Duration>,
}

impl Classification {
    /// A classification without a retry-after.
    pub fn new(
        transience: Transience,
        category: Category,
        severity: Severity,
        code: impl Into<Code>,
    ) -> Self {
        Classification {
            transience,
            category,
            severity,
            code: code.into(),
            retry_after: None,
        }
    }

    /// The classification of an error no classifier had an opinion on: unknown transience,
    /// system category, medium severity, code `"unclassified"`.
    pub const fn unclassified() -> Self {
        Classification {
            transience: Transience::Unknown,
            category: Category::System,
            severity: Severity::Medium,
            code: Code::from_static("unclassified"),
            retry_after: None,
        }
    }

    /// The same classification with a retry-after.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Whether the failure is worth another attempt.
    pub fn is_transient(&self) -> bool {
        self.transience == Transience::Transient
    }

    /// Whether the failure is the caller's or the business's (persistent `User` or `Business`):
    /// the system is healthy and said no. Breakers do not count these by default.
    pub fn is_caller_fault(&self) -> bool {
        self.transience == Transience::Persistent
            && matches!(self.category, Category::User | Category::Business)
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} {}, severity {})",
            self.code, self.transience, self.category, self.severity
        )?;
        if let Some(after) = self.retry_after {
            write!(f, ", retry after {}", humantime::format_duration(after))?;
        }
        Ok(())
    }
}

/// What happened to one call, as every layer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The call did what it was asked.
    Success,
    /// The call failed, and this is how.
    Failure(Classification),
    /// Counted by nobody: the caller went away (a cancelled request), or a classifier decided
    /// the outcome says nothing about the health of the callee.
    Ignored,
}

impl Outcome {
    /// A failure with a freshly built classification.
    pub fn failure(
        transience: Transience,
        category: Category,
        severity: Severity,
        code: impl Into<Code>,
    ) -> Self {
        Outcome::Failure(Classification::new(transience, category, severity, code))
    }

    /// Whether this is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// Whether this is a failure of any kind.
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failure(_))
    }

    /// Whether this is a failure that another attempt may fix.
    pub fn is_transient_failure(&self) -> bool {
        matches!(self, Outcome::Failure(c) if c.is_transient())
    }

    /// The classification of a failure.
    pub fn classification(&self) -> Option<&Classification> {
        match self {
            Outcome::Failure(c) => Some(c),
            _ => None,
        }
    }

    /// The outcome used when no classifier has an opinion: `Ok` is a success and `Err` an
    /// [unclassified](Classification::unclassified) failure.
    pub const fn fallback(is_ok: bool) -> Self {
        if is_ok {
            Outcome::Success
        } else {
            Outcome::Failure(Classification::unclassified())
        }
    }
}

/// Turns the result of a call into an [`Outcome`].
///
/// `classify` returns `None` when this classifier has no opinion, so classifiers compose:
/// [`a.or(b)`](ClassifyExt::or) asks `a` first and `b` only when `a` abstains. Layers call [`outcome`], which
/// falls back to [`Outcome::fallback`] when every classifier abstains.
///
/// Closures implement this trait: any `Fn(Result<&Res, &Err>) -> O` where `O` is `Outcome` or
/// `Option<Outcome>`. Use [`classify_fn`] to help type inference when a closure is passed
/// where the request and error types are not yet known.
///
/// Classifiers run on the hot path of every call: implementations should not allocate on
/// success.
///
/// [`outcome`]: Classify::outcome
pub trait Classify<Res, Err> {
    /// This classifier's opinion on one result, or `None` to let the next one decide.
    fn classify(&self, result: Result<&Res, &Err>) -> Option<Outcome>;

    /// The final verdict: this classifier's opinion, or the [fallback](Outcome::fallback).
    fn outcome(&self, result: Result<&Res, &Err>) -> Outcome {
        match self.classify(result) {
            Some(outcome) => outcome,
            None => Outcome::fallback(result.is_ok()),
        }
    }
}

/// Combinators on classifiers, for every type (like `FutureExt`), so `a.or(b)` needs no type
/// annotations even when `a` classifies several response types.
pub trait ClassifyExt: Sized {
    /// Asks `self` first, then `next` when `self` has no opinion.
    fn or<Next>(self, next: Next) -> Or<Self, Next> {
        Or { first: self, next }
    }
}

impl<T> ClassifyExt for T {}

impl<F, Res, Err, O> Classify<Res, Err> for F
where
    F: Fn(Result<&Res, &Err>) -> O,
    O: Into<Option<Outcome>>,
{
    fn classify(&self, result: Result<&Res, &Err>) -> Option<Outcome> {
        self(result).into()
    }
}

/// Pins a closure's argument type so it is usable as a [`Classify`] for any lifetime.
///
/// ```
/// use palisade::classify::{classify_fn, Classify, Outcome};
///
/// let only_even = classify_fn(|r: Result<&u32, &std::io::Error>| match r {
///     Ok(n) if n % 2 == 1 => Some(Outcome::Ignored),
///     _ => None,
/// });
/// assert_eq!(only_even.outcome(Ok(&3)), Outcome::Ignored);
/// assert_eq!(only_even.outcome(Ok(&4)), Outcome::Success);
/// ```
pub fn classify_fn<Res, Err, O, F>(f: F) -> F
where
    F: Fn(Result<&Res, &Err>) -> O,
    O: Into<Option<Outcome>>,
{
    f
}

/// Two classifiers in order: the first opinion wins. Built by [`ClassifyExt::or`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Or<First, Next> {
    first: First,
    next: Next,
}

impl<First, Next> Or<First, Next> {
    /// The classifier asked first.
    pub fn first(&self) -> &First {
        &self.first
    }

    /// The classifier asked when the first has no opinion.
    pub fn next(&self) -> &Next {
        &self.next
    }
}

impl<Res, Err, First, Next> Classify<Res, Err> for Or<First, Next>
where
    First: Classify<Res, Err>,
    Next: Classify<Res, Err>,
{
    fn classify(&self, result: Result<&Res, &Err>) -> Option<Outcome> {
        match self.first.classify(result) {
            Some(outcome) => Some(outcome),
            None => self.next.classify(result),
        }
    }
}

/// An error type that knows its own classification: domain errors (`InsufficientFunds`),
/// palisade's own layer errors, `std::io::Error`.
pub trait Classified {
    /// How this error should be counted.
    fn classification(&self) -> Classification;

    /// Whether nobody should count this error at all (a cancelled request). Default `false`.
    fn is_ignored(&self) -> bool {
        false
    }
}

impl Classified for std::io::Error {
    fn classification(&self) -> Classification {
        transport::classify_io_kind(self.kind())
    }
}

impl<T: Classified + ?Sized> Classified for Box<T> {
    fn classification(&self) -> Classification {
        (**self).classification()
    }

    fn is_ignored(&self) -> bool {
        (**self).is_ignored()
    }
}

impl<T: Classified + ?Sized> Classified for std::sync::Arc<T> {
    fn classification(&self) -> Classification {
        (**self).classification()
    }

    fn is_ignored(&self) -> bool {
        (**self).is_ignored()
    }
}

/// Classifies errors that implement [`Classified`]; has no opinion on responses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelfClassified;

impl<Res, Err: Classified> Classify<Res, Err> for SelfClassified {
    fn classify(&self, result: Result<&Res, &Err>) -> Option<Outcome> {
        let err = result.err()?;
        Some(if err.is_ignored() {
            Outcome::Ignored
        } else {
            Outcome::Failure(err.classification())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_their_names() {
        for t in Transience::ALL {
            assert_eq!(t.as_str().parse::<Transience>().unwrap(), *t);
        }
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>().unwrap(), *c);
        }
        for s in Severity::ALL {
            assert_eq!(s.to_string().parse::<Severity>().unwrap(), *s);
        }
        assert_eq!(Category::ALL.len(), 8);
        assert_eq!(Severity::ALL.len(), 5);
        assert_eq!("Business".parse::<Category>().unwrap(), Category::Business);
    }

    #[test]
    fn an_unknown_label_lists_the_accepted_names() {
        let err = "sometimes".parse::<Transience>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown transience `sometimes`; expected one of: transient, persistent, unknown"
        );
    }

    #[test]
    fn the_first_opinion_wins_and_abstentions_fall_through() {
        let ignore_odd = classify_fn(|r: Result<&u32, &()>| match r {
            Ok(n) if n % 2 == 1 => Some(Outcome::Ignored),
            _ => None,
        });
        let everything_fails = classify_fn(|_: Result<&u32, &()>| {
            Outcome::failure(
                Transience::Persistent,
                Category::User,
                Severity::Low,
                "nope",
            )
        });
        let both = ignore_odd.or(everything_fails);
        assert_eq!(both.outcome(Ok(&1)), Outcome::Ignored);
        assert_eq!(both.outcome(Ok(&2)).classification().unwrap().code, "nope");
        assert_eq!(
            both.outcome(Err(&())).classification().unwrap().code,
            "nope"
        );
    }

    #[test]
    fn with_no_opinion_ok_succeeds_and_err_is_unclassified() {
        let abstain = classify_fn(|_: Result<&(), &()>| None::<Outcome>);
        assert_eq!(abstain.outcome(Ok(&())), Outcome::Success);
        let failure = abstain.outcome(Err(&()));
        let class = failure.classification().unwrap();
        assert_eq!(class.transience, Transience::Unknown);
        assert_eq!(class.code, "unclassified");
        assert!(!failure.is_transient_failure());
    }

    #[derive(Debug)]
    struct Cancelled;

    impl Classified for Cancelled {
        fn classification(&self) -> Classification {
            Classification::new(
                Transience::Transient,
                Category::Network,
                Severity::Info,
                "cancelled",
            )
        }

        fn is_ignored(&self) -> bool {
            true
        }
    }

    #[test]
    fn self_classified_errors_may_ask_to_be_ignored() {
        assert_eq!(
            SelfClassified.outcome(Err::<&(), _>(&Cancelled)),
            Outcome::Ignored
        );
        assert_eq!(
            SelfClassified.classify(Ok::<_, &Cancelled>(&())),
            None,
            "no opinion on responses"
        );
    }

    #[test]
    fn caller_faults_are_persistent_user_or_business_only() {
        let c = |t, cat| Classification::new(t, cat, Severity::Low, "x");
        assert!(c(Transience::Persistent, Category::Business).is_caller_fault());
        assert!(c(Transience::Persistent, Category::User).is_caller_fault());
        assert!(!c(Transience::Transient, Category::User).is_caller_fault());
        assert!(!c(Transience::Persistent, Category::Security).is_caller_fault());
        assert!(!c(Transience::Unknown, Category::Business).is_caller_fault());
    }

    #[test]
    fn display_names_code_class_and_wait() {
        let c = Classification::new(
            Transience::Transient,
            Category::External,
            Severity::Medium,
            "http_429",
        )
        .with_retry_after(Duration::from_secs(90));
        assert_eq!(
            c.to_string(),
            "http_429 (transient external, severity medium), retry after 1m 30s"
        );
    }
}
