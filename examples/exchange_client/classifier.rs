//! How the client judges every attempt: palisade's classifiers, composed for a Binance-style API.
//!
//! 1. A response whose JSON body carries `{"code": -1003, "msg": "..."}` is looked up in the
//!    `binance` [`CodeTable`] from `policies.yaml`, through a [`TableClassifier`].
//! 2. A response the table does not know is judged by its status ([`HttpStatus`]).
//! 3. A transport error (refused, reset) is judged by [`TransportErrors`]; an error raised by a
//!    palisade layer (a timeout, an open breaker) classifies itself. A retry's error is judged
//!    by its last attempt.
//!
//! On a 429 or 418 the exchange's `Retry-After` header wins over the table's default wait.

use std::sync::Arc;
use std::time::SystemTime;

use palisade::classify::{
    Classify, CodeTable, HttpStatus, Outcome, TableClassifier, TransportErrors,
};
use serde::Deserialize;

use crate::transport::{ApiResponse, StackError};

/// The error body of a Binance-style API.
#[derive(Debug, Deserialize)]
pub struct ApiErrorBody {
    /// The exchange's code, e.g. `-2010`.
    pub code: i64,
    /// The exchange's message.
    #[serde(default)]
    pub msg: String,
}

/// Parses an error body, if the response has one.
pub fn error_body(response: &ApiResponse) -> Option<ApiErrorBody> {
    if response.status().is_success() {
        return None;
    }
    serde_json::from_slice(response.body()).ok()
}

type CodeExtractor = fn(Result<&ApiResponse, &StackError>) -> Option<String>;

fn extract_code(result: Result<&ApiResponse, &StackError>) -> Option<String> {
    error_body(result.ok()?).map(|body| body.code.to_string())
}

/// The client's classifier: see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ExchangeClassifier {
    codes: TableClassifier<CodeExtractor>,
    status: HttpStatus,
}

impl ExchangeClassifier {
    /// A classifier over the exchange's code table.
    pub fn new(table: Arc<CodeTable>) -> Self {
        ExchangeClassifier {
            codes: TableClassifier::new(table, extract_code as CodeExtractor),
            status: HttpStatus::new(),
        }
    }

    /// The code table.
    pub fn table(&self) -> &CodeTable {
        self.codes.table()
    }

    /// The wait a 429 or 418 response's headers ask for, capped like [`HttpStatus`] caps it.
    fn advertised_wait(&self, response: &ApiResponse) -> Option<std::time::Duration> {
        if !matches!(response.status().as_u16(), 429 | 418) {
            return None;
        }
        palisade::classify::http::retry_after(response.headers(), SystemTime::now)
            .map(|wait| wait.min(self.status.retry_after_cap()))
    }
}

impl Classify<ApiResponse, StackError> for ExchangeClassifier {
    fn classify(&self, result: Result<&ApiResponse, &StackError>) -> Option<Outcome> {
        match result {
            Ok(response) => {
                let outcome = self
                    .codes
                    .classify(Ok(response))
                    .or_else(|| self.status.classify(Ok::<_, &StackError>(response)))?;
                Some(match outcome {
                    Outcome::Failure(class) => {
                        Outcome::Failure(match self.advertised_wait(response) {
                            Some(wait) => class.with_retry_after(wait),
                            None => class,
                        })
                    }
                    other => other,
                })
            }
            // Through the retry's context to what actually went wrong.
            Err(error) => match error.last_attempt() {
                palisade::Error::Inner(transport) => {
                    TransportErrors.classify(Err::<&(), _>(transport))
                }
                layer => layer.layer_classification().map(Outcome::Failure),
            },
        }
    }
}
