//! Transport errors: `std::io::Error` kinds, and hyper and reqwest errors.
//!
//! [`TransportErrors`] walks an error's `source()` chain. An `std::io::Error` anywhere in the
//! chain decides (it is the most specific cause: a reqwest connect error wrapping a refused
//! connection is `io_connection_refused`); otherwise the outermost hyper or reqwest error that
//! says what it is decides; otherwise it has no opinion. It has no opinion on responses either.
//!
//! # `std::io::ErrorKind`
//!
//! | kind | transience | category | severity | code |
//! |---|---|---|---|---|
//! | ConnectionRefused, ConnectionReset, ConnectionAborted, NotConnected, BrokenPipe, HostUnreachable, NetworkUnreachable, NetworkDown, AddrNotAvailable, TimedOut, UnexpectedEof, WriteZero | transient | network | medium | `io_connection_refused`, … |
//! | Interrupted, WouldBlock, ResourceBusy, Deadlock | transient | system | low | `io_interrupted`, … |
//! | PermissionDenied | persistent | security | high | `io_permission_denied` |
//! | NotFound, AlreadyExists, InvalidInput | persistent | user | low | `io_not_found`, … |
//! | InvalidData | persistent | external | medium | `io_invalid_data` |
//! | Unsupported, AddrInUse | persistent | system | high | `io_unsupported`, `io_addr_in_use` |
//! | StorageFull, QuotaExceeded, OutOfMemory | persistent | system | critical | `io_storage_full`, … |
//! | Other and any other kind | unknown | system | medium | `io_other` |
//!
//! # hyper (feature `hyper`)
//!
//! | error | transience | category | severity | code |
//! |---|---|---|---|---|
//! | `is_timeout` | transient | network | medium | `hyper_timeout` |
//! | `is_canceled` (the connection closed before the request was sent) | transient | network | medium | `hyper_canceled` |
//! | `is_closed`, `is_incomplete_message`, `is_body_write_aborted` | transient | network | medium | `hyper_connection_closed` |
//! | `is_shutdown` | transient | network | low | `hyper_shutdown` |
//! | `is_parse` | persistent | external | medium | `hyper_parse` |
//! | `is_user` | persistent | application | high | `hyper_user` |
//!
//! # reqwest (feature `reqwest`)
//!
//! | error | transience | category | severity | code |
//! |---|---|---|---|---|
//! | `is_timeout` | transient | network | medium | `reqwest_timeout` |
//! | `is_connect` | transient | network | medium | `reqwest_connect` |
//! | `is_status` | as the [HTTP table](super::http) for its status | | | `http_503`, … |
//! | `is_body` | transient | network | medium | `reqwest_body` |
//! | `is_request` | transient | network | medium | `reqwest_request` |
//! | `is_decode` | persistent | external | medium | `reqwest_decode` |
//! | `is_redirect` | persistent | external | medium | `reqwest_redirect` |
//! | `is_builder` | persistent | application | high | `reqwest_builder` |
//!
//! ```
//! use std::io;
//! use palisade::classify::{Classify, TransportErrors, Transience};
//!
//! let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
//! let outcome = TransportErrors.outcome(Err::<&(), _>(&refused));
//! let class = outcome.classification().unwrap();
//! assert_eq!(class.transience, Transience::Transient);
//! assert_eq!(class.code, "io_connection_refused");
//! ```

use std::error::Error as StdError;
use std::io::ErrorKind;

use super::{Category, Classification, Classify, Code, Outcome, Severity, Transience};

/// Classifies `std::io::Error`, hyper and reqwest errors found anywhere in an error's source
/// chain. See the [module docs](self) for the tables.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransportErrors;

impl<Res, E: StdError + 'static> Classify<Res, E> for TransportErrors {
    fn classify(&self, result: Result<&Res, &E>) -> Option<Outcome> {
        classify_error(result.err()?).map(Outcome::Failure)
    }
}

/// [`TransportErrors`] for boxed errors (`tower::BoxError`), which do not implement
/// `std::error::Error` themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct BoxedTransportErrors;

impl<Res> Classify<Res, Box<dyn StdError + Send + Sync>> for BoxedTransportErrors {
    fn classify(&self, result: Result<&Res, &Box<dyn StdError + Send + Sync>>) -> Option<Outcome> {
        let err: &(dyn StdError + 'static) = result.err()?.as_ref();
        classify_error(err).map(Outcome::Failure)
    }
}

/// Classifies an error by its source chain, or `None` if nothing in it is a known transport
/// error.
pub fn classify_error(err: &(dyn StdError + 'static)) -> Option<Classification> {
    let mut wrapper = None;
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(classify_io_kind(io.kind()));
        }
        if wrapper.is_none() {
            wrapper = classify_wrapper(err);
        }
        next = err.source();
    }
    wrapper
}

#[allow(unused_variables)] // `err` is unused when neither hyper nor reqwest is enabled.
fn classify_wrapper(err: &(dyn StdError + 'static)) -> Option<Classification> {
    #[cfg(feature = "hyper")]
    if let Some(err) = err.downcast_ref::<hyper::Error>()
        && let Some(class) = classify_hyper(err)
    {
        return Some(class);
    }
    #[cfg(feature = "reqwest")]
    if let Some(err) = err.downcast_ref::<reqwest::Error>() {
        return classify_reqwest(err);
    }
    None
}

fn class(
    transience: Transience,
    category: Category,
    severity: Severity,
    code: &'static str,
) -> Classification {
    Classification::new(transience, category, severity, Code::from_static(code))
}

/// The classification of an I/O error kind. See the [module docs](self).
pub fn classify_io_kind(kind: ErrorKind) -> Classification {
    use Category::*;
    use Severity::*;
    use Transience::*;

    let (transience, category, severity, code) = match kind {
        ErrorKind::ConnectionRefused => (Transient, Network, Medium, "io_connection_refused"),
        ErrorKind::ConnectionReset => (Transient, Network, Medium, "io_connection_reset"),
        ErrorKind::ConnectionAborted => (Transient, Network, Medium, "io_connection_aborted"),
        ErrorKind::NotConnected => (Transient, Network, Medium, "io_not_connected"),
        ErrorKind::BrokenPipe => (Transient, Network, Medium, "io_broken_pipe"),
        ErrorKind::HostUnreachable => (Transient, Network, Medium, "io_host_unreachable"),
        ErrorKind::NetworkUnreachable => (Transient, Network, Medium, "io_network_unreachable"),
        ErrorKind::NetworkDown => (Transient, Network, Medium, "io_network_down"),
        ErrorKind::AddrNotAvailable => (Transient, Network, Medium, "io_addr_not_available"),
        ErrorKind::TimedOut => (Transient, Network, Medium, "io_timed_out"),
        ErrorKind::UnexpectedEof => (Transient, Network, Medium, "io_unexpected_eof"),
        ErrorKind::WriteZero => (Transient, Network, Medium, "io_write_zero"),
        ErrorKind::Interrupted => (Transient, System, Low, "io_interrupted"),
        ErrorKind::WouldBlock => (Transient, System, Low, "io_would_block"),
        ErrorKind::ResourceBusy => (Transient, System, Low, "io_resource_busy"),
        ErrorKind::Deadlock => (Transient, System, Low, "io_deadlock"),
        ErrorKind::PermissionDenied => (Persistent, Security, High, "io_permission_denied"),
        ErrorKind::NotFound => (Persistent, User, Low, "io_not_found"),
        ErrorKind::AlreadyExists => (Persistent, User, Low, "io_already_exists"),
        ErrorKind::InvalidInput => (Persistent, User, Low, "io_invalid_input"),
        ErrorKind::InvalidData => (Persistent, External, Medium, "io_invalid_data"),
        ErrorKind::Unsupported => (Persistent, System, High, "io_unsupported"),
        ErrorKind::AddrInUse => (Persistent, System, High, "io_addr_in_use"),
        ErrorKind::StorageFull => (Persistent, System, Critical, "io_storage_full"),
        ErrorKind::QuotaExceeded => (Persistent, System, Critical, "io_quota_exceeded"),
        ErrorKind::OutOfMemory => (Persistent, System, Critical, "io_out_of_memory"),
        _ => (Unknown, System, Medium, "io_other"),
    };
    class(transience, category, severity, code)
}

/// The classification of a hyper error, or `None` when hyper does not say what it is.
#[cfg(feature = "hyper")]
pub fn classify_hyper(err: &hyper::Error) -> Option<Classification> {
    use Category::*;
    use Severity::*;
    use Transience::*;

    let row = if err.is_timeout() {
        (Transient, Network, Medium, "hyper_timeout")
    } else if err.is_canceled() {
        (Transient, Network, Medium, "hyper_canceled")
    } else if err.is_closed() || err.is_incomplete_message() || err.is_body_write_aborted() {
        (Transient, Network, Medium, "hyper_connection_closed")
    } else if err.is_shutdown() {
        (Transient, Network, Low, "hyper_shutdown")
    } else if err.is_parse() {
        (Persistent, External, Medium, "hyper_parse")
    } else if err.is_user() {
        (Persistent, Application, High, "hyper_user")
    } else {
        return None;
    };
    Some(class(row.0, row.1, row.2, row.3))
}

/// The classification of a reqwest error, or `None` when reqwest does not say what it is.
#[cfg(feature = "reqwest")]
pub fn classify_reqwest(err: &reqwest::Error) -> Option<Classification> {
    use Category::*;
    use Severity::*;
    use Transience::*;

    if let Some(status) = err.status() {
        return super::http::status_classification(status);
    }
    let row = if err.is_timeout() {
        (Transient, Network, Medium, "reqwest_timeout")
    } else if err.is_connect() {
        (Transient, Network, Medium, "reqwest_connect")
    } else if err.is_body() {
        (Transient, Network, Medium, "reqwest_body")
    } else if err.is_decode() {
        (Persistent, External, Medium, "reqwest_decode")
    } else if err.is_redirect() {
        (Persistent, External, Medium, "reqwest_redirect")
    } else if err.is_builder() {
        (Persistent, Application, High, "reqwest_builder")
    } else if err.is_request() {
        (Transient, Network, Medium, "reqwest_request")
    } else {
        return None;
    };
    Some(class(row.0, row.1, row.2, row.3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;
    use std::io;

    fn row(kind: ErrorKind) -> (Transience, Category, Severity, String) {
        let c = classify_io_kind(kind);
        (c.transience, c.category, c.severity, c.code.to_string())
    }

    #[test]
    fn every_row_of_the_io_table() {
        use Category::*;
        use Severity::*;
        use Transience::*;
        let network = [
            (ErrorKind::ConnectionRefused, "io_connection_refused"),
            (ErrorKind::ConnectionReset, "io_connection_reset"),
            (ErrorKind::ConnectionAborted, "io_connection_aborted"),
            (ErrorKind::NotConnected, "io_not_connected"),
            (ErrorKind::BrokenPipe, "io_broken_pipe"),
            (ErrorKind::HostUnreachable, "io_host_unreachable"),
            (ErrorKind::NetworkUnreachable, "io_network_unreachable"),
            (ErrorKind::NetworkDown, "io_network_down"),
            (ErrorKind::AddrNotAvailable, "io_addr_not_available"),
            (ErrorKind::TimedOut, "io_timed_out"),
            (ErrorKind::UnexpectedEof, "io_unexpected_eof"),
            (ErrorKind::WriteZero, "io_write_zero"),
        ];
        for (kind, code) in network {
            assert_eq!(row(kind), (Transient, Network, Medium, code.into()));
        }
        for (kind, code) in [
            (ErrorKind::Interrupted, "io_interrupted"),
            (ErrorKind::WouldBlock, "io_would_block"),
            (ErrorKind::ResourceBusy, "io_resource_busy"),
            (ErrorKind::Deadlock, "io_deadlock"),
        ] {
            assert_eq!(row(kind), (Transient, System, Low, code.into()));
        }
        assert_eq!(
            row(ErrorKind::PermissionDenied),
            (Persistent, Security, High, "io_permission_denied".into())
        );
        for (kind, code) in [
            (ErrorKind::NotFound, "io_not_found"),
            (ErrorKind::AlreadyExists, "io_already_exists"),
            (ErrorKind::InvalidInput, "io_invalid_input"),
        ] {
            assert_eq!(row(kind), (Persistent, User, Low, code.into()));
        }
        assert_eq!(
            row(ErrorKind::InvalidData),
            (Persistent, External, Medium, "io_invalid_data".into())
        );
        assert_eq!(
            row(ErrorKind::Unsupported),
            (Persistent, System, High, "io_unsupported".into())
        );
        assert_eq!(
            row(ErrorKind::AddrInUse),
            (Persistent, System, High, "io_addr_in_use".into())
        );
        for (kind, code) in [
            (ErrorKind::StorageFull, "io_storage_full"),
            (ErrorKind::QuotaExceeded, "io_quota_exceeded"),
            (ErrorKind::OutOfMemory, "io_out_of_memory"),
        ] {
            assert_eq!(row(kind), (Persistent, System, Critical, code.into()));
        }
        assert_eq!(
            row(ErrorKind::Other),
            (Unknown, System, Medium, "io_other".into())
        );
        assert_eq!(
            row(ErrorKind::IsADirectory),
            (Unknown, System, Medium, "io_other".into())
        );
    }

    /// An application error wrapping an I/O error, as connection pools and clients do.
    #[derive(Debug)]
    struct Wrapped(io::Error);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("pool checkout failed")
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_io_error_deep_in_the_chain_decides() {
        let err = Wrapped(io::Error::from(ErrorKind::ConnectionReset));
        let outcome = TransportErrors.outcome(Err::<&(), _>(&err));
        assert_eq!(
            outcome.classification().unwrap().code,
            "io_connection_reset"
        );
    }

    #[test]
    fn boxed_errors_are_classified_too() {
        let err: Box<dyn StdError + Send + Sync> =
            Box::new(Wrapped(io::Error::from(ErrorKind::TimedOut)));
        let outcome = BoxedTransportErrors.outcome(Err::<&(), _>(&err));
        assert!(outcome.is_transient_failure());
        assert_eq!(outcome.classification().unwrap().code, "io_timed_out");
    }

    #[test]
    fn unknown_errors_and_responses_get_no_opinion() {
        let err = fmt::Error;
        assert_eq!(TransportErrors.classify(Err::<&(), _>(&err)), None);
        assert_eq!(TransportErrors.classify(Ok::<_, &fmt::Error>(&())), None);
    }
}
