//! The client's error: what failed, how it classifies, and what a user can do about it.
//!
//! Nothing here holds a secret: the exchange's answer, the table's message and suggestion,
//! and transport errors stripped of their URL.

use std::fmt;

use palisade::classify::{Classification, Classified};
use palisade::error::BulkheadFull;

use crate::transport::{Operation, StackError};

/// A call that failed for good (after the retries its classification allowed).
#[derive(Debug)]
pub enum ExchangeError {
    /// The exchange answered with an error.
    Rejected {
        /// The endpoint.
        operation: Operation,
        /// The HTTP status.
        status: u16,
        /// The exchange's own code (`-2010`), when the body carried one.
        exchange_code: Option<i64>,
        /// The exchange's own message.
        exchange_message: String,
        /// The verdict.
        classification: Classification,
        /// What to tell a user, from the code table.
        message: Option<String>,
        /// What a user can do, from the code table.
        suggestion: Option<String>,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer: the connection failed or a time limit passed.
    Transport {
        /// The endpoint.
        operation: Operation,
        /// The verdict.
        classification: Classification,
        /// Attempts made.
        attempts: u32,
        /// The cause.
        source: StackError,
    },
    /// Not sent: the policy's bulkhead was full (palisade's `BulkheadFull`), so the client
    /// refused the call itself rather than pile more on the exchange.
    Refused {
        /// The endpoint.
        operation: Operation,
        /// The verdict (`bulkhead_full`: transient, the caller may try again later).
        classification: Classification,
        /// The bulkhead, its limits and why it refused.
        source: BulkheadFull,
    },
    /// The exchange answered success with a body the client cannot read.
    Decode {
        /// The endpoint.
        operation: Operation,
        /// What was wrong.
        detail: String,
    },
}

impl ExchangeError {
    /// The endpoint that failed.
    pub fn operation(&self) -> Operation {
        match self {
            ExchangeError::Rejected { operation, .. }
            | ExchangeError::Transport { operation, .. }
            | ExchangeError::Refused { operation, .. }
            | ExchangeError::Decode { operation, .. } => *operation,
        }
    }

    /// The exchange's own code, if it gave one.
    pub fn exchange_code(&self) -> Option<i64> {
        match self {
            ExchangeError::Rejected { exchange_code, .. } => *exchange_code,
            _ => None,
        }
    }

    /// Whether this is Binance's "Duplicate order sent." refusal of a retry: an earlier
    /// attempt of the same order (same `newClientOrderId`) did reach the book.
    pub fn is_duplicate_of_an_earlier_attempt(&self) -> bool {
        matches!(
            self,
            ExchangeError::Rejected {
                exchange_code: Some(-2010),
                exchange_message,
                attempts,
                ..
            } if *attempts > 1 && exchange_message.starts_with("Duplicate order")
        )
    }

    /// Attempts made before giving up.
    pub fn attempts(&self) -> u32 {
        match self {
            ExchangeError::Rejected { attempts, .. }
            | ExchangeError::Transport { attempts, .. } => *attempts,
            ExchangeError::Refused { .. } => 0,
            ExchangeError::Decode { .. } => 1,
        }
    }
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Rejected {
                operation,
                status,
                exchange_message,
                classification,
                message,
                suggestion,
                attempts,
                ..
            } => {
                write!(
                    f,
                    "{operation} failed after {attempts} attempt(s) with HTTP {status}: {classification}"
                )?;
                if let Some(message) = message {
                    write!(f, ": {message}")?;
                }
                if !exchange_message.is_empty() {
                    write!(f, " (exchange said: {exchange_message:?})")?;
                }
                if let Some(suggestion) = suggestion {
                    write!(f, ". Suggestion: {suggestion}")?;
                }
                Ok(())
            }
            ExchangeError::Transport {
                operation,
                classification,
                attempts,
                source,
            } => write!(
                f,
                "{operation} failed after {attempts} attempt(s): {classification}: {source}"
            ),
            ExchangeError::Refused {
                operation,
                classification,
                source,
            } => write!(
                f,
                "{operation} was not sent: {source} ({classification}). Suggestion: make fewer \
                 calls at once, or raise the policy's bulkhead.max_concurrent in policies.yaml"
            ),
            ExchangeError::Decode { operation, detail } => {
                write!(
                    f,
                    "{operation}: unreadable answer from the exchange: {detail}"
                )
            }
        }
    }
}

impl std::error::Error for ExchangeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExchangeError::Transport { source, .. } => Some(source),
            ExchangeError::Refused { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Classified for ExchangeError {
    fn classification(&self) -> Classification {
        match self {
            ExchangeError::Rejected { classification, .. }
            | ExchangeError::Transport { classification, .. }
            | ExchangeError::Refused { classification, .. } => classification.clone(),
            ExchangeError::Decode { .. } => Classification::new(
                palisade::classify::Transience::Persistent,
                palisade::classify::Category::External,
                palisade::classify::Severity::High,
                "exchange_decode",
            ),
        }
    }
}
