//! Which failures count against the breaker.

use std::fmt;
use std::sync::Arc;

use crate::classify::{Category, Classification};

/// Decides which classified failures count against the breaker.
///
/// The classifier says *what* an outcome is; this says which of those failures mean the callee
/// is unhealthy. A failure that does not count is recorded as a success (the callee answered, and
/// correctly said no), exactly like a successful call. [`Outcome::Ignored`] never counts either
/// way.
///
/// The default counts every failure except the caller's own
/// ([`Classification::is_caller_fault`]: persistent `User` or `Business` failures such as
/// invalid input or insufficient funds).
///
/// ```
/// use palisade::circuit_breaker::CountedFailures;
/// use palisade::classify::{Category, Classification, Severity, Transience};
///
/// let funds = Classification::new(Transience::Persistent, Category::Business, Severity::Low, "insufficient_funds");
/// let busy = Classification::new(Transience::Transient, Category::Database, Severity::Medium, "db_busy");
/// assert!(!CountedFailures::default().counts(&funds));
/// assert!(CountedFailures::default().counts(&busy));
///
/// let only_db = CountedFailures::categories([Category::Database]);
/// assert!(only_db.counts(&busy) && !only_db.counts(&funds));
/// ```
///
/// [`Outcome::Ignored`]: crate::classify::Outcome::Ignored
#[derive(Clone)]
pub struct CountedFailures {
    predicate: Arc<dyn Fn(&Classification) -> bool + Send + Sync>,
    description: &'static str,
}

impl CountedFailures {
    /// Every failure counts, the caller's own included.
    pub fn all() -> Self {
        CountedFailures {
            predicate: Arc::new(|_| true),
            description: "all",
        }
    }

    /// Only transient failures count.
    pub fn transient_only() -> Self {
        CountedFailures {
            predicate: Arc::new(Classification::is_transient),
            description: "transient_only",
        }
    }

    /// Only failures of these categories count (whatever their transience).
    pub fn categories(categories: impl IntoIterator<Item = Category>) -> Self {
        let mut mask = 0u16;
        for c in categories {
            mask |= 1 << category_bit(c);
        }
        CountedFailures {
            predicate: Arc::new(move |c: &Classification| {
                mask & (1 << category_bit(c.category)) != 0
            }),
            description: "categories",
        }
    }

    /// Whatever the predicate says.
    pub fn from_fn(predicate: impl Fn(&Classification) -> bool + Send + Sync + 'static) -> Self {
        CountedFailures {
            predicate: Arc::new(predicate),
            description: "custom",
        }
    }

    /// Whether this failure counts against the breaker.
    pub fn counts(&self, classification: &Classification) -> bool {
        (self.predicate)(classification)
    }
}

fn category_bit(c: Category) -> u16 {
    Category::ALL.iter().position(|x| *x == c).unwrap_or(0) as u16
}

impl Default for CountedFailures {
    fn default() -> Self {
        CountedFailures {
            predicate: Arc::new(|c: &Classification| !c.is_caller_fault()),
            description: "not_caller_fault",
        }
    }
}

impl fmt::Debug for CountedFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CountedFailures")
            .field(&self.description)
            .finish()
    }
}
