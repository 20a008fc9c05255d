//! Environment overrides: `PALISADE__POLICIES__API_CALL__TIMEOUT__TOTAL=5s` sets
//! `policies.api_call.timeout.total`, winning over the file.
//!
//! Each `__`-separated segment is one key, matched case-insensitively against the keys the
//! file already has and lowercased when it adds a new one. The value is read as a YAML
//! scalar (`5` is a number, `5s` a string, `true` a boolean), so overrides go through the same
//! checks as the file and their problems name the variable.

use std::sync::Arc;

use super::error::IssueKind;
use super::node::{Key, Node, Origin, Value};
use super::parse::Issues;

/// Applies every variable that starts with `PREFIX__` to the document, in name order.
pub(crate) fn apply(root: &mut Node, vars: &[(String, String)], prefix: &str, issues: &mut Issues) {
    let lead = format!("{prefix}__");
    let mut matching: Vec<&(String, String)> =
        vars.iter().filter(|(k, _)| k.starts_with(&lead)).collect();
    matching.sort();
    for (var, raw) in matching {
        let origin = Origin::Env(Arc::from(var.as_str()));
        let segments: Vec<String> = var[lead.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if segments.iter().any(String::is_empty) {
            issues.push(
                IssueKind::UnknownKey,
                "",
                &origin,
                format!("`{var}` has an empty key segment"),
                format!("separate keys with exactly two underscores, e.g. {lead}POLICIES__API_CALL__TIMEOUT__TOTAL"),
            );
            continue;
        }
        let value = scalar(raw, &origin);
        if let Err(path) = insert(root, &segments, value, &origin) {
            issues.push(
                IssueKind::WrongType,
                path.clone(),
                &origin,
                format!("`{var}` overrides inside `{path}`, which is not a section"),
                "name a key inside a section, e.g. POLICIES__API_CALL__TIMEOUT__TOTAL".to_owned(),
            );
        }
    }
}

/// Reads an override's value as a YAML scalar; anything that does not parse as one is a string.
fn scalar(raw: &str, origin: &Origin) -> Node {
    let value = match serde_saphyr::from_str::<Node>(raw) {
        Ok(Node {
            value: v @ (Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::Str(_)),
            ..
        }) => v,
        _ => Value::Str(raw.to_owned()),
    };
    Node {
        value,
        origin: origin.clone(),
    }
}

/// Sets `segments` in `node` to `value`, creating sections on the way. On failure, returns the
/// path that is not a section.
fn insert(
    node: &mut Node,
    segments: &[String],
    value: Node,
    origin: &Origin,
) -> Result<(), String> {
    let mut current = node;
    let mut path = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if matches!(current.value, Value::Null) {
            current.value = Value::Map(Vec::new());
        }
        let Value::Map(entries) = &mut current.value else {
            return Err(path);
        };
        let at = match entries
            .iter()
            .position(|(k, _)| k.name.eq_ignore_ascii_case(segment))
        {
            Some(at) => at,
            None => {
                let key = Key {
                    name: segment.clone(),
                    origin: origin.clone(),
                };
                entries.push((key, Node::map(Vec::new(), origin.clone())));
                entries.len() - 1
            }
        };
        if i + 1 == segments.len() {
            entries[at].1 = value;
            return Ok(());
        }
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&entries[at].0.name);
        current = &mut entries[at].1;
    }
    Ok(())
}
