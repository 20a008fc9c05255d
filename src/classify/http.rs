//! HTTP responses: status codes and rate-limit headers.
//!
//! [`HttpStatus`] classifies an `http::Response` (and, with feature `reqwest`, a
//! `reqwest::Response`) by its status. It has no opinion on errors: pair it with
//! [`TransportErrors`](super::TransportErrors) for those.
//!
//! # Mapping
//!
//! | status | outcome | transience | category | severity | code |
//! |---|---|---|---|---|---|
//! | 100–399 | success | | | | |
//! | 401, 403, 407 | failure | persistent | security | high | `http_401` … |
//! | 408 Request Timeout | failure | transient | network | medium | `http_408` |
//! | 429 Too Many Requests | failure | transient | external | medium | `http_429`, with retry-after |
//! | other 400–499 | failure | persistent | user | low | `http_4xx` |
//! | 501 Not Implemented, 505 HTTP Version Not Supported | failure | persistent | external | high | `http_501`, `http_505` |
//! | 503 Service Unavailable | failure | transient | external | high | `http_503`, with retry-after |
//! | other 500–599 | failure | transient | external | high | `http_5xx` |
//! | 600–999 (non-standard) | failure | unknown | external | medium | `http_other` |
//!
//! # Retry-after
//!
//! On 429 and 503 only, the first of these headers that parses sets `retry_after`, capped at
//! [`HttpStatus::retry_after_cap`] (default 300 s) so a hostile or buggy peer cannot park a
//! client for a day:
//!
//! 1. `Retry-After`: delay in whole seconds, or an HTTP date;
//! 2. `X-RateLimit-Reset`, then `RateLimit-Reset`: seconds, possibly fractional. A value of
//!    at least 1,000,000,000 is read as a Unix timestamp (GitHub style), a smaller one as a
//!    delay (IETF draft style).
//!
//! A date or timestamp in the past gives a zero wait. Unparseable values are skipped.
//!
//! ```
//! use std::time::Duration;
//! use http::{Response, StatusCode};
//! use palisade::classify::{Classify, HttpStatus, Transience};
//!
//! let limited = Response::builder()
//!     .status(StatusCode::TOO_MANY_REQUESTS)
//!     .header("retry-after", "7")
//!     .body(())
//!     .unwrap();
//! let outcome = HttpStatus::new().outcome(Ok::<_, &std::io::Error>(&limited));
//! let class = outcome.classification().unwrap();
//! assert_eq!(class.transience, Transience::Transient);
//! assert_eq!(class.code, "http_429");
//! assert_eq!(class.retry_after, Some(Duration::from_secs(7)));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, StatusCode};

use super::{Category, Classification, Classify, Code, Outcome, Severity, Transience};

/// `X-RateLimit-Reset`, as sent by GitHub, Twitter and many exchanges.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Reset`, from the IETF RateLimit header fields draft.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Timestamps at or above this are Unix times; below it, delays in seconds (2001-09-09).
const UNIX_TIME_THRESHOLD: f64 = 1_000_000_000.0;

/// Classifies HTTP responses by status code and rate-limit headers. See the
/// [module docs](self) for the full table.
#[derive(Clone, Copy, Debug)]
pub struct HttpStatus {
    retry_after_cap: Duration,
}

impl Default for HttpStatus {
    fn default() -> Self {
        HttpStatus::new()
    }
}

impl HttpStatus {
    /// The default cap on a server-advertised wait: five minutes.
    pub const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(300);

    /// A classifier with the default retry-after cap.
    pub const fn new() -> Self {
        HttpStatus {
            retry_after_cap: Self::DEFAULT_RETRY_AFTER_CAP,
        }
    }

    /// Caps the wait a server can ask for.
    #[must_use]
    pub const fn with_retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// The cap on a server-advertised wait.
    pub const fn retry_after_cap(&self) -> Duration {
        self.retry_after_cap
    }

    /// The outcome of a response with this status and these headers.
    pub fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        // The clock is read only when a rate-limit header holds a date or timestamp.
        self.classify_response_at(status, headers, SystemTime::now)
    }

    /// Like [`classify_response`](Self::classify_response), with the wall clock supplied
    /// (for tests, and callers that already read it).
    pub fn classify_response_at(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: impl FnOnce() -> SystemTime,
    ) -> Outcome {
        let Some(mut class) = status_classification(status) else {
            return Outcome::Success;
        };
        if matches!(status.as_u16(), 429 | 503) {
            class.retry_after = retry_after(headers, now).map(|d| d.min(self.retry_after_cap));
        }
        Outcome::Failure(class)
    }
}

impl<B, E> Classify<http::Response<B>, E> for HttpStatus {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Option<Outcome> {
        let response = result.ok()?;
        Some(self.classify_response(response.status(), response.headers()))
    }
}

#[cfg(feature = "reqwest")]
impl<E> Classify<reqwest::Response, E> for HttpStatus {
    fn classify(&self, result: Result<&reqwest::Response, &E>) -> Option<Outcome> {
        let response = result.ok()?;
        Some(self.classify_response(response.status(), response.headers()))
    }
}

/// The classification of a status without looking at headers, or `None` for 1xx–3xx.
pub fn status_classification(status: StatusCode) -> Option<Classification> {
    use Category::*;
    use Severity::*;
    use Transience::*;

    let n = status.as_u16();
    let (transience, category, severity) = match n {
        100..=399 => return None,
        401 | 403 | 407 => (Persistent, Security, High),
        408 => (Transient, Network, Medium),
        429 => (Transient, External, Medium),
        400..=499 => (Persistent, User, Low),
        501 | 505 => (Persistent, External, High),
        500..=599 => (Transient, External, High),
        _ => (Unknown, External, Medium),
    };
    let code = status_code_name(n).unwrap_or("http_other");
    Some(Classification::new(
        transience,
        category,
        severity,
        Code::from_static(code),
    ))
}

/// Reads the wait a 429 or 503 response asks for, uncapped. See the [module docs](self).
pub fn retry_after(headers: &HeaderMap, now: impl FnOnce() -> SystemTime) -> Option<Duration> {
    let mut now = Some(now);
    let mut clock = move || now.take().map_or(SystemTime::UNIX_EPOCH, |f| f());

    if let Some(value) = header_str(headers, &http::header::RETRY_AFTER) {
        if let Ok(secs) = value.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            return Some(at.duration_since(clock()).unwrap_or(Duration::ZERO));
        }
    }
    for name in [&X_RATELIMIT_RESET, &RATELIMIT_RESET] {
        let Some(secs) = header_str(headers, name).and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if !secs.is_finite() || secs < 0.0 {
            continue;
        }
        if secs >= UNIX_TIME_THRESHOLD {
            let since_epoch = clock().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
            let reset = Duration::try_from_secs_f64(secs).ok()?;
            return Some(reset.saturating_sub(since_epoch));
        }
        return Duration::try_from_secs_f64(secs).ok();
    }
    None
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// Static codes for every 4xx and 5xx status, so classifying a failure never allocates.
macro_rules! status_code_names {
    ($($n:literal)+) => {
        fn status_code_name(status: u16) -> Option<&'static str> {
            match status {
                $($n => Some(concat!("http_", $n)),)+
                _ => None,
            }
        }
    };
}

status_code_names! {
    400 401 402 403 404 405 406 407 408 409 410 411 412 413 414 415 416 417 418 419 420 421 422
    423 424 425 426 427 428 429 430 431 432 433 434 435 436 437 438 439 440 441 442 443 444 445
    446 447 448 449 450 451 452 453 454 455 456 457 458 459 460 461 462 463 464 465 466 467 468
    469 470 471 472 473 474 475 476 477 478 479 480 481 482 483 484 485 486 487 488 489 490 491
    492 493 494 495 496 497 498 499 500 501 502 503 504 505 506 507 508 509 510 511 512 513 514
    515 516 517 518 519 520 521 522 523 524 525 526 527 528 529 530 531 532 533 534 535 536 537
    538 539 540 541 542 543 544 545 546 547 548 549 550 551 552 553 554 555 556 557 558 559 560
    561 562 563 564 565 566 567 568 569 570 571 572 573 574 575 576 577 578 579 580 581 582 583
    584 585 586 587 588 589 590 591 592 593 594 595 596 597 598 599
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn class(status: u16) -> Option<Classification> {
        status_classification(StatusCode::from_u16(status).unwrap())
    }

    fn row(status: u16) -> (Transience, Category, Severity, String) {
        let c = class(status).unwrap_or_else(|| panic!("{status} should be a failure"));
        (c.transience, c.category, c.severity, c.code.to_string())
    }

    #[test]
    fn informational_success_and_redirect_statuses_are_successes() {
        for status in [100, 101, 200, 201, 204, 206, 301, 302, 304, 307, 399] {
            assert_eq!(class(status), None, "{status}");
        }
    }

    #[test]
    fn every_row_of_the_mapping_table() {
        use Category::*;
        use Severity::*;
        use Transience::*;
        let s = String::from;
        assert_eq!(row(400), (Persistent, User, Low, s("http_400")));
        assert_eq!(row(401), (Persistent, Security, High, s("http_401")));
        assert_eq!(row(402), (Persistent, User, Low, s("http_402")));
        assert_eq!(row(403), (Persistent, Security, High, s("http_403")));
        assert_eq!(row(404), (Persistent, User, Low, s("http_404")));
        assert_eq!(row(407), (Persistent, Security, High, s("http_407")));
        assert_eq!(row(408), (Transient, Network, Medium, s("http_408")));
        assert_eq!(row(409), (Persistent, User, Low, s("http_409")));
        assert_eq!(row(422), (Persistent, User, Low, s("http_422")));
        assert_eq!(row(429), (Transient, External, Medium, s("http_429")));
        assert_eq!(row(451), (Persistent, User, Low, s("http_451")));
        assert_eq!(row(499), (Persistent, User, Low, s("http_499")));
        assert_eq!(row(500), (Transient, External, High, s("http_500")));
        assert_eq!(row(501), (Persistent, External, High, s("http_501")));
        assert_eq!(row(502), (Transient, External, High, s("http_502")));
        assert_eq!(row(503), (Transient, External, High, s("http_503")));
        assert_eq!(row(504), (Transient, External, High, s("http_504")));
        assert_eq!(row(505), (Persistent, External, High, s("http_505")));
        assert_eq!(row(507), (Transient, External, High, s("http_507")));
        assert_eq!(row(599), (Transient, External, High, s("http_599")));
        assert_eq!(row(600), (Unknown, External, Medium, s("http_other")));
        assert_eq!(row(999), (Unknown, External, Medium, s("http_other")));
    }

    #[test]
    fn every_4xx_and_5xx_has_its_own_static_code() {
        for n in 400..600u16 {
            assert_eq!(status_code_name(n), Some(format!("http_{n}").as_str()));
        }
        assert_eq!(status_code_name(600), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const NOW_SECS: u64 = 1_750_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn wait(status: u16, pairs: &[(&'static str, &str)]) -> Option<Duration> {
        let outcome = HttpStatus::new().classify_response_at(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            now,
        );
        outcome.classification().unwrap().retry_after
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(
            wait(429, &[("retry-after", "120")]),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            wait(503, &[("retry-after", " 3 ")]),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let at = httpdate::fmt_http_date(now() + Duration::from_secs(42));
        assert_eq!(
            wait(503, &[("retry-after", &at)]),
            Some(Duration::from_secs(42))
        );
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(42));
        assert_eq!(wait(429, &[("retry-after", &past)]), Some(Duration::ZERO));
    }

    #[test]
    fn rate_limit_reset_as_delay_or_unix_time() {
        assert_eq!(
            wait(429, &[("x-ratelimit-reset", "1.5")]),
            Some(Duration::from_millis(1500))
        );
        let at = (NOW_SECS + 30).to_string();
        assert_eq!(
            wait(429, &[("x-ratelimit-reset", &at)]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            wait(429, &[("ratelimit-reset", "12")]),
            Some(Duration::from_secs(12))
        );
    }

    #[test]
    fn retry_after_wins_over_rate_limit_reset() {
        assert_eq!(
            wait(429, &[("retry-after", "5"), ("x-ratelimit-reset", "50")]),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn unparseable_or_negative_values_are_skipped() {
        assert_eq!(wait(429, &[("retry-after", "soon")]), None);
        assert_eq!(
            wait(429, &[("retry-after", "-5"), ("x-ratelimit-reset", "-1")]),
            None
        );
        assert_eq!(
            wait(429, &[("retry-after", "soon"), ("ratelimit-reset", "8")]),
            Some(Duration::from_secs(8))
        );
        assert_eq!(wait(429, &[("x-ratelimit-reset", "NaN")]), None);
    }

    #[test]
    fn the_wait_is_capped() {
        assert_eq!(
            wait(429, &[("retry-after", "86400")]),
            Some(HttpStatus::DEFAULT_RETRY_AFTER_CAP)
        );
        let short = HttpStatus::new().with_retry_after_cap(Duration::from_secs(10));
        let outcome = short.classify_response_at(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("retry-after", "60")]),
            now,
        );
        assert_eq!(
            outcome.classification().unwrap().retry_after,
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn only_429_and_503_read_the_wait() {
        assert_eq!(wait(500, &[("retry-after", "5")]), None);
        assert_eq!(wait(502, &[("x-ratelimit-reset", "5")]), None);
    }

    #[test]
    fn the_clock_is_not_read_for_plain_seconds() {
        let outcome = HttpStatus::new().classify_response_at(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "2")]),
            || panic!("clock read"),
        );
        assert!(outcome.is_transient_failure());
    }

    #[test]
    fn classifies_responses_and_abstains_on_errors() {
        let ok = http::Response::new(());
        assert_eq!(
            HttpStatus::new().classify(Ok::<_, &()>(&ok)),
            Some(Outcome::Success)
        );
        assert_eq!(
            HttpStatus::new().classify(Err::<&http::Response<()>, _>(&())),
            None
        );
    }
}
