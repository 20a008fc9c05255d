//! Code tables: a service's own error codes mapped to classifications.
//!
//! Exchanges, payment gateways and vendors answer with their own codes (Binance's `-1003`
//! "too many requests", `-2010` "insufficient balance"). A [`CodeTable`] maps those codes to
//! classifications, with an optional user-facing message and recovery suggestion. Tables are
//! usually loaded from the policy file's `error_codes:` section
//! ([`Policies::error_codes`](crate::policy::Policies::error_codes)); a
//! [`TableClassifier`] applies one to responses or errors through a code extractor.
//!
//! Codes are namespaced by the table's name: entry `-1003` of table `binance` classifies with
//! code `binance_-1003`, so metrics labels stay bounded by the table's size.
//!
//! ```
//! use std::time::Duration;
//! use palisade::classify::{
//!     Category, Classification, Classify, CodeTable, Severity, Transience,
//! };
//!
//! let mut binance = CodeTable::new("binance");
//! binance.insert(
//!     "-1003",
//!     Transience::Transient,
//!     Category::External,
//!     Severity::Medium,
//! ).retry_after = Some(Duration::from_secs(60));
//!
//! struct ApiError { code: i64 }
//! let classifier = binance.classifier(|r: Result<&(), &ApiError>| r.err().map(|e| e.code.to_string()));
//!
//! let outcome = classifier.outcome(Err(&ApiError { code: -1003 }));
//! let class = outcome.classification().unwrap();
//! assert_eq!(class.code, "binance_-1003");
//! assert_eq!(class.retry_after, Some(Duration::from_secs(60)));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::{Category, Classification, Classify, Code, Outcome, Severity, Transience};

/// One row of a [`CodeTable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeEntry {
    /// The classification, with the namespaced code (`binance_-1003`).
    pub classification: Classification,
    /// What to tell a user, if the table says.
    pub message: Option<String>,
    /// What the user or operator can do about it, if the table says.
    pub suggestion: Option<String>,
}

/// A named map from a service's own error codes to classifications.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CodeTable {
    name: String,
    entries: HashMap<String, CodeEntry>,
}

impl CodeTable {
    /// An empty table; `name` prefixes every code it produces.
    pub fn new(name: impl Into<String>) -> Self {
        CodeTable {
            name: name.into(),
            entries: HashMap::new(),
        }
    }

    /// The table's name (`binance`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds or replaces the entry for `code` and returns it for further changes (a
    /// retry-after, a message).
    pub fn insert(
        &mut self,
        code: &str,
        transience: Transience,
        category: Category,
        severity: Severity,
    ) -> &mut Classification {
        let full: Arc<str> = format!("{}_{}", self.name, code).into();
        let entry = CodeEntry {
            classification: Classification::new(transience, category, severity, Code::from(full)),
            message: None,
            suggestion: None,
        };
        self.entries.insert(code.to_owned(), entry);
        &mut self
            .entries
            .get_mut(code)
            .expect("entry was just inserted")
            .classification
    }

    /// Adds or replaces a whole entry; its classification's code is replaced by the
    /// namespaced one.
    pub fn insert_entry(&mut self, code: &str, mut entry: CodeEntry) {
        entry.classification.code = Code::from(format!("{}_{}", self.name, code));
        self.entries.insert(code.to_owned(), entry);
    }

    /// The entry for `code`, if the table has one.
    pub fn get(&self, code: &str) -> Option<&CodeEntry> {
        self.entries.get(code)
    }

    /// The classification for `code`, if the table has one.
    pub fn classify(&self, code: &str) -> Option<Classification> {
        self.get(code).map(|e| e.classification.clone())
    }

    /// How many codes the table maps.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table maps no code.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The codes and entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CodeEntry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A classifier that applies this table to the code `extract` finds in a result.
    ///
    /// `extract` returns `None` when the result carries no code (most successes), and the
    /// classifier then has no opinion; so does a code the table does not know.
    pub fn classifier<F>(self, extract: F) -> TableClassifier<F> {
        TableClassifier {
            table: Arc::new(self),
            extract,
        }
    }
}

impl fmt::Debug for CodeTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeTable")
            .field("name", &self.name)
            .field("codes", &self.entries.len())
            .finish()
    }
}

/// Applies a [`CodeTable`] to the codes an extractor finds. Built by
/// [`CodeTable::classifier`].
#[derive(Clone)]
pub struct TableClassifier<F> {
    table: Arc<CodeTable>,
    extract: F,
}

impl<F> TableClassifier<F> {
    /// A classifier over a shared table.
    pub fn new(table: Arc<CodeTable>, extract: F) -> Self {
        TableClassifier { table, extract }
    }

    /// The table.
    pub fn table(&self) -> &CodeTable {
        &self.table
    }
}

impl<F> fmt::Debug for TableClassifier<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableClassifier")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<Res, Err, F, K> Classify<Res, Err> for TableClassifier<F>
where
    F: Fn(Result<&Res, &Err>) -> Option<K>,
    K: AsRef<str>,
{
    fn classify(&self, result: Result<&Res, &Err>) -> Option<Outcome> {
        let code = (self.extract)(result)?;
        self.table.classify(code.as_ref()).map(Outcome::Failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binance() -> CodeTable {
        let mut t = CodeTable::new("binance");
        t.insert(
            "-2010",
            Transience::Persistent,
            Category::Business,
            Severity::Low,
        );
        t.insert(
            "-1003",
            Transience::Transient,
            Category::External,
            Severity::Medium,
        );
        t
    }

    #[test]
    fn codes_are_namespaced_by_the_table_name() {
        let t = binance();
        assert_eq!(t.classify("-2010").unwrap().code, "binance_-2010");
        assert_eq!(t.classify("-2010").unwrap().category, Category::Business);
        assert_eq!(t.classify("-9999"), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_classifier_abstains_without_a_known_code() {
        let c =
            binance().classifier(|r: Result<&Option<&'static str>, &()>| r.ok().and_then(|c| *c));
        assert_eq!(c.classify(Ok(&None)), None);
        assert_eq!(c.classify(Ok(&Some("-1"))), None);
        assert!(c.outcome(Ok(&Some("-1003"))).is_transient_failure());
        assert_eq!(c.outcome(Ok(&None)), Outcome::Success);
    }

    #[test]
    fn insert_entry_replaces_the_code_with_the_namespaced_one() {
        let mut t = CodeTable::new("gw");
        t.insert_entry(
            "card_declined",
            CodeEntry {
                classification: Classification::new(
                    Transience::Persistent,
                    Category::Business,
                    Severity::Low,
                    "whatever",
                ),
                message: Some("The card was declined".into()),
                suggestion: Some("Use another card".into()),
            },
        );
        let e = t.get("card_declined").unwrap();
        assert_eq!(e.classification.code, "gw_card_declined");
        assert_eq!(e.suggestion.as_deref(), Some("Use another card"));
    }
}
