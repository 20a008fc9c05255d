//! Errors from loading a policy file: every problem at once, each with its field path, its
//! place in the file and a fix.

use std::fmt;

use super::node::Origin;

/// A policy file that could not be loaded. Holds every problem found, not only the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    source_name: String,
    issues: Vec<ConfigIssue>,
}

impl ConfigError {
    pub(crate) fn new(source_name: &str, issues: Vec<ConfigIssue>) -> Self {
        debug_assert!(!issues.is_empty());
        ConfigError {
            source_name: source_name.to_owned(),
            issues,
        }
    }

    /// The file path, or `<string>` for YAML given as a string.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Every problem found, in the order the file reads.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.issues
    }

    /// The problem at a field path, if there is one (for tests and tools).
    pub fn issue_at(&self, path: &str) -> Option<&ConfigIssue> {
        self.issues.iter().find(|i| i.path == path)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "policy file {} has {} problem{}:",
            self.source_name,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What kind of problem a [`ConfigIssue`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IssueKind {
    /// The file could not be read.
    Io,
    /// The file is larger than the loader accepts.
    TooLarge,
    /// The YAML itself is malformed (or breaks the parser's input budgets).
    Syntax,
    /// A key the loader does not know (usually a typo).
    UnknownKey,
    /// A value of the wrong type (a list where a duration belongs).
    WrongType,
    /// A value of the right type outside its allowed range (a zero limit, a rate above 1).
    OutOfRange,
    /// Values that contradict each other (`max_delay` below `base_delay`).
    Inconsistent,
    /// A name that refers to nothing (`extends` or a route naming a missing policy).
    UnknownReference,
    /// `extends` chains that loop.
    Cycle,
}

/// Where in the input a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceLocation {
    /// A line and column of the file, both 1-based.
    Line {
        /// The line.
        line: u32,
        /// The column.
        column: u32,
    },
    /// An environment variable override.
    Env {
        /// The variable's name.
        var: String,
    },
}

impl SourceLocation {
    pub(crate) fn from_origin(origin: &Origin) -> Option<SourceLocation> {
        match origin {
            Origin::Yaml { line, column } => Some(SourceLocation::Line {
                line: *line,
                column: *column,
            }),
            Origin::Env(var) => Some(SourceLocation::Env {
                var: var.to_string(),
            }),
            Origin::Builtin => None,
        }
    }

    /// The line, when the problem is in the file.
    pub fn line(&self) -> Option<u32> {
        match self {
            SourceLocation::Line { line, .. } => Some(*line),
            SourceLocation::Env { .. } => None,
        }
    }
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceLocation::Line { line, column } => write!(f, "line {line}, column {column}"),
            SourceLocation::Env { var } => write!(f, "environment variable {var}"),
        }
    }
}

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// What kind of problem.
    pub kind: IssueKind,
    /// The field path, e.g. `policies.database_operation.retry.max_delay`; empty for the
    /// whole document.
    pub path: String,
    /// Where the offending value was written, when known.
    pub location: Option<SourceLocation>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl ConfigIssue {
    pub(crate) fn new(
        kind: IssueKind,
        path: impl Into<String>,
        origin: &Origin,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigIssue {
            kind,
            path: path.into(),
            location: SourceLocation::from_origin(origin),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        f.write_str(path)?;
        if let Some(loc) = &self.location {
            write!(f, " ({loc})")?;
        }
        write!(f, ": {}", self.message)?;
        if !self.fix.is_empty() {
            write!(f, "; fix: {}", self.fix)?;
        }
        Ok(())
    }
}
