//! The stack's own metric: failures answered by (or handed to) the fallback, with their
//! original classification. The rest comes from the
//! [`ErrorMetricsLayer`](crate::metrics::ErrorMetricsLayer) inside the stack and from the
//! layers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use metrics::SharedString;

use crate::classify::{Classification, Code};

/// Counter `{operation, category, severity, transience, code}`: failed calls handed to the
/// stack's fallback, labelled with the failure's original classification (the fallback's own
/// answer is what `palisade_requests_total` sees). `operation` is the policy name, `other`
/// for the defaults; an unclassified failure has `code="unclassified"` and the other labels
/// `unknown`.
pub const FALLBACKS_TOTAL: &str = "palisade_fallbacks_total";

/// Distinct `code` values this process records before the rest become `other` (the same cap
/// as [`DEFAULT_MAX_CODES`](crate::metrics::DEFAULT_MAX_CODES)): classifier tables have a
/// fixed set of codes, this guards against a closure putting request data into one.
static CODES: Mutex<Option<HashSet<Code>>> = Mutex::new(None);

fn admit(code: &Code) -> bool {
    let mut codes = CODES.lock().unwrap_or_else(|p| p.into_inner());
    let codes = codes.get_or_insert_with(HashSet::new);
    if codes.contains(code) {
        return true;
    }
    if codes.len() < crate::metrics::DEFAULT_MAX_CODES {
        codes.insert(code.clone());
        return true;
    }
    false
}

/// The `operation` label of a policy: its name, or `other` for the defaults (as
/// `palisade_requests_total` has it).
pub(crate) fn label(operation: &Arc<str>) -> SharedString {
    if &**operation == "defaults" {
        SharedString::const_str(crate::metrics::names::OTHER)
    } else {
        SharedString::from(operation.clone())
    }
}

/// Counts one failure handed to the fallback. Cold: runs only for failed calls of a stack
/// with a fallback (and refusals of one without: the call fails either way).
pub(crate) fn record_fallback(operation: &Arc<str>, classification: Option<&Classification>) {
    let (category, severity, transience, code) = match classification {
        Some(c) => (
            c.category.as_str(),
            c.severity.as_str(),
            c.transience.as_str(),
            if admit(&c.code) {
                SharedString::from(c.code.as_str().to_owned())
            } else {
                SharedString::const_str(crate::metrics::names::OTHER)
            },
        ),
        None => (
            "unknown",
            "unknown",
            "unknown",
            SharedString::const_str("unclassified"),
        ),
    };
    metrics::counter!(
        FALLBACKS_TOTAL,
        "operation" => label(operation),
        "category" => category,
        "severity" => severity,
        "transience" => transience,
        "code" => code,
    )
    .increment(1);
}
