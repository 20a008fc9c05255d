//! The report's metrics section, read back from the Prometheus text the recorder renders:
//! what a dashboard would show, next to the client's own counts.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One sample of the Prometheus text format: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments and lines it cannot read skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y \"quoted\""` into a map, undoing the format's escapes.
fn parse_labels(mut rest: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// The sum of the samples named `name` whose labels include every pair of `with`.
pub fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|l| l == v))
        })
        // A fold from +0: `sum` of no floats is -0, which would print as "-0".
        .fold(0.0, |sum, s| sum + s.value)
}

/// Sums the samples named `name` by the value of `label`.
fn by(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some(v) = s.labels.get(label) {
            *sums.entry(v.clone()).or_default() += s.value;
        }
    }
    sums
}

fn pairs(sums: &BTreeMap<String, f64>) -> String {
    if sums.is_empty() {
        return "none".into();
    }
    sums.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join("   ")
}

/// The report's short metrics section, from the rendered exposition `text`.
pub fn summary(text: &str) -> String {
    let samples = samples(text);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "metrics      palisade_requests_total by endpoint and outcome (--metrics prints all)"
    );
    let mut endpoints: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "palisade_requests_total")
    {
        if let (Some(op), Some(outcome)) = (s.labels.get("operation"), s.labels.get("outcome")) {
            *endpoints
                .entry(op.clone())
                .or_default()
                .entry(outcome.clone())
                .or_default() += s.value;
        }
    }
    for (op, outcomes) in &endpoints {
        let _ = writeln!(out, "  {op:<14} {}", pairs(outcomes));
    }
    let _ = writeln!(
        out,
        "  palisade_errors_total by category   {}",
        pairs(&by(&samples, "palisade_errors_total", "category"))
    );
    let _ = writeln!(
        out,
        "  palisade_retries_total by outcome   {}",
        pairs(&by(&samples, "palisade_retries_total", "outcome"))
    );
    let _ = writeln!(
        out,
        "  palisade_timeouts_total by kind     {}",
        pairs(&by(&samples, "palisade_timeouts_total", "kind"))
    );
    let transitions = by(&samples, "palisade_circuit_breaker_transitions_total", "to");
    let _ = writeln!(
        out,
        "  breakers: transitions to {}; rejected {}   bulkheads: rejected {}",
        pairs(&transitions),
        total(&samples, "palisade_circuit_breaker_rejected_total", &[]),
        total(&samples, "palisade_bulkhead_rejected_total", &[])
    );
    out
}
