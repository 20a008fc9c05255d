//! gRPC statuses (feature `grpc`).
//!
//! [`GrpcStatus`] classifies `tonic::Status` errors (a tonic client's failures);
//! [`GrpcResponse`] classifies `http::Response`s that carry a `grpc-status` header
//! (trailers-only responses, which is how servers answer immediate errors). A response without `grpc-status` in its headers gets no
//! opinion: its status travels in the trailers, after the layers have seen the response.
//!
//! # Mapping
//!
//! | code | outcome | transience | category | severity | code string |
//! |---|---|---|---|---|---|
//! | OK | success | | | | |
//! | CANCELLED | ignored (the caller went away) | | | | |
//! | UNAVAILABLE | failure | transient | external | high | `grpc_unavailable` |
//! | DEADLINE_EXCEEDED | failure | transient | network | medium | `grpc_deadline_exceeded` |
//! | RESOURCE_EXHAUSTED | failure | transient | external | medium | `grpc_resource_exhausted` |
//! | ABORTED | failure | transient | application | medium | `grpc_aborted` |
//! | INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE | failure | persistent | user | low | `grpc_invalid_argument`, … |
//! | FAILED_PRECONDITION | failure | persistent | business | low | `grpc_failed_precondition` |
//! | PERMISSION_DENIED, UNAUTHENTICATED | failure | persistent | security | high | `grpc_permission_denied`, `grpc_unauthenticated` |
//! | UNIMPLEMENTED | failure | persistent | external | high | `grpc_unimplemented` |
//! | DATA_LOSS | failure | persistent | external | critical | `grpc_data_loss` |
//! | UNKNOWN, INTERNAL, and any number gRPC does not define | failure | unknown | external | high | `grpc_unknown`, `grpc_internal` |
//!
//! # Pushback
//!
//! A failure carrying `grpc-retry-pushback-ms` (in the status metadata or response headers)
//! gets that many milliseconds as `retry_after`, capped like HTTP's (default 300 s). Following
//! gRPC's retry design (A6), a negative or unparseable pushback means "do not retry": the
//! failure becomes persistent whatever its code.
//!
//! ```
//! use palisade::classify::{Classify, GrpcStatus, Transience};
//!
//! let status = tonic::Status::unavailable("backend down");
//! let outcome = GrpcStatus::new().outcome(Err::<&(), _>(&status));
//! let class = outcome.classification().unwrap();
//! assert_eq!(class.transience, Transience::Transient);
//! assert_eq!(class.code, "grpc_unavailable");
//! ```

use std::time::Duration;

use http::HeaderMap;
use tonic::Code as GrpcCode;

use super::{Category, Classification, Classify, Code, Outcome, Severity, Transience};

/// The metadata key a server uses to ask clients to wait before retrying.
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";
/// The header (or trailer) carrying a gRPC status code.
pub const GRPC_STATUS: &str = "grpc-status";

/// Classifies gRPC statuses. See the [module docs](self) for the full table.
#[derive(Clone, Copy, Debug)]
pub struct GrpcStatus {
    retry_after_cap: Duration,
}

impl Default for GrpcStatus {
    fn default() -> Self {
        GrpcStatus::new()
    }
}

impl GrpcStatus {
    /// A classifier with the default pushback cap (300 s).
    pub const fn new() -> Self {
        GrpcStatus {
            retry_after_cap: super::HttpStatus::DEFAULT_RETRY_AFTER_CAP,
        }
    }

    /// Caps the wait a server can ask for.
    #[must_use]
    pub const fn with_retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// The outcome of a status code with an optional `grpc-retry-pushback-ms` value.
    pub fn classify_code(&self, code: GrpcCode, pushback: Option<&[u8]>) -> Outcome {
        let mut class = match code_classification(code) {
            Ok(class) => class,
            Err(outcome) => return outcome,
        };
        if let Some(raw) = pushback {
            match std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
            {
                Some(ms) if ms >= 0 => {
                    let wait = Duration::from_millis(ms.unsigned_abs());
                    class.retry_after = Some(wait.min(self.retry_after_cap));
                }
                _ => class.transience = Transience::Persistent,
            }
        }
        Outcome::Failure(class)
    }

    /// The outcome of a `tonic::Status`.
    pub fn classify_status(&self, status: &tonic::Status) -> Outcome {
        let pushback = status
            .metadata()
            .get(GRPC_RETRY_PUSHBACK_MS)
            .map(|v| v.as_bytes());
        self.classify_code(status.code(), pushback)
    }

    /// The outcome named by `grpc-status` in these headers, if they carry one.
    pub fn classify_headers(&self, headers: &HeaderMap) -> Option<Outcome> {
        let raw = headers.get(GRPC_STATUS)?.to_str().ok()?.trim();
        let code = GrpcCode::from(raw.parse::<i32>().ok()?);
        let pushback = headers.get(GRPC_RETRY_PUSHBACK_MS).map(|v| v.as_bytes());
        Some(self.classify_code(code, pushback))
    }
}

impl<Res> Classify<Res, tonic::Status> for GrpcStatus {
    fn classify(&self, result: Result<&Res, &tonic::Status>) -> Option<Outcome> {
        Some(self.classify_status(result.err()?))
    }
}

/// Classifies `http::Response`s by their `grpc-status` header, as [`GrpcStatus`] does
/// statuses: for server-side stacks, where the response is what the layers see.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcResponse(pub GrpcStatus);

impl<B, E> Classify<http::Response<B>, E> for GrpcResponse {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Option<Outcome> {
        self.0.classify_headers(result.ok()?.headers())
    }
}

/// The classification of a gRPC code, or the non-failure outcome (`OK` is a success,
/// `CANCELLED` is ignored).
pub fn code_classification(code: GrpcCode) -> Result<Classification, Outcome> {
    use Category::*;
    use Severity::*;
    use Transience::*;

    let (transience, category, severity, name) = match code {
        GrpcCode::Ok => return Err(Outcome::Success),
        GrpcCode::Cancelled => return Err(Outcome::Ignored),
        GrpcCode::Unavailable => (Transient, External, High, "grpc_unavailable"),
        GrpcCode::DeadlineExceeded => (Transient, Network, Medium, "grpc_deadline_exceeded"),
        GrpcCode::ResourceExhausted => (Transient, External, Medium, "grpc_resource_exhausted"),
        GrpcCode::Aborted => (Transient, Application, Medium, "grpc_aborted"),
        GrpcCode::InvalidArgument => (Persistent, User, Low, "grpc_invalid_argument"),
        GrpcCode::NotFound => (Persistent, User, Low, "grpc_not_found"),
        GrpcCode::AlreadyExists => (Persistent, User, Low, "grpc_already_exists"),
        GrpcCode::OutOfRange => (Persistent, User, Low, "grpc_out_of_range"),
        GrpcCode::FailedPrecondition => (Persistent, Business, Low, "grpc_failed_precondition"),
        GrpcCode::PermissionDenied => (Persistent, Security, High, "grpc_permission_denied"),
        GrpcCode::Unauthenticated => (Persistent, Security, High, "grpc_unauthenticated"),
        GrpcCode::Unimplemented => (Persistent, External, High, "grpc_unimplemented"),
        GrpcCode::DataLoss => (Persistent, External, Critical, "grpc_data_loss"),
        GrpcCode::Unknown => (Unknown, External, High, "grpc_unknown"),
        GrpcCode::Internal => (Unknown, External, High, "grpc_internal"),
    };
    Ok(Classification::new(
        transience,
        category,
        severity,
        Code::from_static(name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn row(code: GrpcCode) -> (Transience, Category, Severity, String) {
        let c = code_classification(code).unwrap();
        (c.transience, c.category, c.severity, c.code.to_string())
    }

    #[test]
    fn every_row_of_the_mapping_table() {
        use Category::*;
        use Severity::*;
        use Transience::*;
        assert_eq!(code_classification(GrpcCode::Ok), Err(Outcome::Success));
        assert_eq!(
            code_classification(GrpcCode::Cancelled),
            Err(Outcome::Ignored)
        );
        let s = String::from;
        let rows = [
            (
                GrpcCode::Unavailable,
                (Transient, External, High, s("grpc_unavailable")),
            ),
            (
                GrpcCode::DeadlineExceeded,
                (Transient, Network, Medium, s("grpc_deadline_exceeded")),
            ),
            (
                GrpcCode::ResourceExhausted,
                (Transient, External, Medium, s("grpc_resource_exhausted")),
            ),
            (
                GrpcCode::Aborted,
                (Transient, Application, Medium, s("grpc_aborted")),
            ),
            (
                GrpcCode::InvalidArgument,
                (Persistent, User, Low, s("grpc_invalid_argument")),
            ),
            (
                GrpcCode::NotFound,
                (Persistent, User, Low, s("grpc_not_found")),
            ),
            (
                GrpcCode::AlreadyExists,
                (Persistent, User, Low, s("grpc_already_exists")),
            ),
            (
                GrpcCode::OutOfRange,
                (Persistent, User, Low, s("grpc_out_of_range")),
            ),
            (
                GrpcCode::FailedPrecondition,
                (Persistent, Business, Low, s("grpc_failed_precondition")),
            ),
            (
                GrpcCode::PermissionDenied,
                (Persistent, Security, High, s("grpc_permission_denied")),
            ),
            (
                GrpcCode::Unauthenticated,
                (Persistent, Security, High, s("grpc_unauthenticated")),
            ),
            (
                GrpcCode::Unimplemented,
                (Persistent, External, High, s("grpc_unimplemented")),
            ),
            (
                GrpcCode::DataLoss,
                (Persistent, External, Critical, s("grpc_data_loss")),
            ),
            (
                GrpcCode::Unknown,
                (Unknown, External, High, s("grpc_unknown")),
            ),
            (
                GrpcCode::Internal,
                (Unknown, External, High, s("grpc_internal")),
            ),
        ];
        for (code, expected) in rows {
            assert_eq!(row(code), expected, "{code:?}");
        }
    }

    #[test]
    fn an_unknown_number_is_grpc_unknown() {
        // tonic maps numbers it does not know to `Unknown`.
        assert_eq!(GrpcCode::from(99), GrpcCode::Unknown);
    }

    #[test]
    fn pushback_sets_the_wait_and_is_capped() {
        let mut status = tonic::Status::resource_exhausted("slow down");
        status
            .metadata_mut()
            .insert(GRPC_RETRY_PUSHBACK_MS, "1500".parse().unwrap());
        let outcome = GrpcStatus::new().classify_status(&status);
        let class = outcome.classification().unwrap();
        assert!(class.is_transient());
        assert_eq!(class.retry_after, Some(Duration::from_millis(1500)));

        let capped = GrpcStatus::new()
            .with_retry_after_cap(Duration::from_secs(1))
            .classify_status(&status);
        assert_eq!(
            capped.classification().unwrap().retry_after,
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn negative_or_garbage_pushback_forbids_retry() {
        for value in ["-1", "later"] {
            let mut status = tonic::Status::unavailable("go away");
            status
                .metadata_mut()
                .insert(GRPC_RETRY_PUSHBACK_MS, value.parse().unwrap());
            let outcome = GrpcStatus::new().classify_status(&status);
            let class = outcome.classification().unwrap();
            assert_eq!(class.transience, Transience::Persistent, "{value}");
            assert_eq!(class.retry_after, None);
        }
    }

    #[test]
    fn trailers_only_responses_are_read_from_headers() {
        let mut response = http::Response::new(());
        response
            .headers_mut()
            .insert(GRPC_STATUS, HeaderValue::from_static("14"));
        response
            .headers_mut()
            .insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static("200"));
        let outcome = GrpcResponse::default().outcome(Ok::<_, &()>(&response));
        let class = outcome.classification().unwrap();
        assert_eq!(class.code, "grpc_unavailable");
        assert_eq!(class.retry_after, Some(Duration::from_millis(200)));

        let plain = http::Response::new(());
        assert_eq!(GrpcResponse::default().classify(Ok::<_, &()>(&plain)), None);
        assert_eq!(
            GrpcStatus::new().classify(Ok::<_, &tonic::Status>(&())),
            None
        );
    }

    #[test]
    fn cancelled_is_ignored_and_ok_succeeds() {
        let cancelled = tonic::Status::cancelled("client went away");
        assert_eq!(
            GrpcStatus::new().outcome(Err::<&(), _>(&cancelled)),
            Outcome::Ignored
        );
        let mut ok = http::Response::new(());
        ok.headers_mut()
            .insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(
            GrpcResponse::default().outcome(Ok::<_, &()>(&ok)),
            Outcome::Success
        );
    }
}
