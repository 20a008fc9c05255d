//! The weight governor: the client slows itself before the exchange refuses it.
//!
//! Binance-style exchanges charge every request a weight and count it per window aligned to
//! the exchange's clock (`X-MBX-USED-WEIGHT-1M`: the weight used in the current minute). The
//! governor
//!
//! - reads the used-weight header after every response, and the window from the header's
//!   name (`-1M` is one minute, `-10S` ten seconds);
//! - before a request, adds its weight; if that would pass `threshold` of `limit`, it waits
//!   until the window rolls over (by the exchange's clock, plus a small guard);
//! - on a 429 or 418 pauses *every* further call until the time the exchange advertised
//!   (`Retry-After`), because calls during a ban escalate it. A call whose deadline (palisade's
//!   total timeout, read from the task's `Deadline`) ends before the pause does is not held
//!   into its timeout: it is answered at once, locally, with the exchange's own refusal
//!   (`-1003` and the `Retry-After` left), which the retry layer then declines to wait for.
//!
//! Waiting uses `tokio::time`, so tests run it on a paused clock. The governor holds its lock
//! only to read and update a few counters, never across an `.await`; a caller dropped while
//! waiting leaves nothing behind (its weight is only added once it stops waiting).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use palisade::classify::Classify;
use palisade::timeout::Deadline;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::classifier::ExchangeClassifier;
use crate::clock::ServerClock;
use crate::transport::{ApiRequest, ApiResponse, StackError};

/// The prefix of Binance's used-weight headers (`x-mbx-used-weight-1m`).
pub const USED_WEIGHT_PREFIX: &str = "x-mbx-used-weight-";

/// When the governor slows down.
#[derive(Clone, Copy, Debug)]
pub struct GovernorConfig {
    /// The exchange's weight limit per window (Binance spot: 6000 per minute today, 1200
    /// historically).
    pub limit: u32,
    /// The fraction of `limit` the client allows itself (0.8: keep a fifth in reserve).
    pub threshold: f64,
    /// The window, until a used-weight header names it.
    pub window: Duration,
    /// How long after the window's boundary to wait, for clock error between the peers.
    pub guard: Duration,
    /// The pause after a 429 or 418 that advertised no wait.
    pub default_pause: Duration,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            limit: 1200,
            threshold: 0.8,
            window: Duration::from_secs(60),
            guard: Duration::from_millis(50),
            default_pause: Duration::from_secs(60),
        }
    }
}

impl GovernorConfig {
    /// The weight the client allows itself per window.
    pub fn budget(&self) -> u32 {
        let budget = f64::from(self.limit) * self.threshold.clamp(0.0, 1.0);
        // Saturating float-to-int cast; the budget is at most `limit`.
        budget.floor() as u32
    }
}

/// What the governor did, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GovernorStats {
    /// Times a call waited because the weight budget was used up.
    pub weight_waits: u32,
    /// Time spent in those waits.
    pub weight_waited: Duration,
    /// Times a call waited for a pause ordered by a 429 or 418.
    pub pause_waits: u32,
    /// Time spent in those waits.
    pub pause_waited: Duration,
    /// Pauses ordered (429 and 418 responses seen).
    pub pauses: u32,
    /// Calls refused locally because the pause outlasted their deadline (never sent).
    pub refused_past_deadline: u32,
    /// The highest used weight the exchange reported.
    pub peak_used_weight: u32,
}

#[derive(Debug)]
struct State {
    window: Duration,
    window_index: i64,
    used: u32,
    paused_until: Option<Instant>,
    stats: GovernorStats,
}

/// Why a call waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Weight,
    Pause,
}

/// Shared by every request of one client (one IP, one API key).
#[derive(Debug)]
pub struct WeightGovernor {
    config: GovernorConfig,
    clock: Arc<ServerClock>,
    state: Mutex<State>,
}

impl WeightGovernor {
    /// A governor that reads window boundaries from `clock`.
    pub fn new(config: GovernorConfig, clock: Arc<ServerClock>) -> Self {
        WeightGovernor {
            state: Mutex::new(State {
                window: config.window,
                window_index: -1,
                used: 0,
                paused_until: None,
                stats: GovernorStats::default(),
            }),
            config,
            clock,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GovernorConfig {
        &self.config
    }

    /// What the governor has done so far.
    pub fn stats(&self) -> GovernorStats {
        self.lock().stats
    }

    /// The time until which every call is paused, if a pause is in force.
    pub fn paused_until(&self) -> Option<Instant> {
        self.lock()
            .paused_until
            .filter(|&until| until > Instant::now())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave these counters inconsistent: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn window_index(&self, window: Duration) -> i64 {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
        self.clock.now_ms().div_euclid(window_ms)
    }

    /// Waits until a request of `weight` may be sent, then counts it. A pause that would
    /// outlast the task's deadline is not waited for: returns the time it has left.
    pub async fn acquire(&self, weight: u32) -> Result<(), Duration> {
        loop {
            let (until, why) = {
                let mut state = self.lock();
                match self.must_wait(&mut state, weight) {
                    None => {
                        state.used = state.used.saturating_add(weight);
                        return Ok(());
                    }
                    Some((until, Wait::Pause))
                        if Deadline::current().is_some_and(|d| until > d.instant()) =>
                    {
                        state.stats.refused_past_deadline += 1;
                        return Err(until.saturating_duration_since(Instant::now()));
                    }
                    Some(wait) => wait,
                }
            };
            let started = Instant::now();
            match why {
                Wait::Weight => tracing::info!(
                    wait_ms = until.saturating_duration_since(started).as_millis() as u64,
                    weight,
                    budget = self.config.budget(),
                    "used weight near the limit; waiting for the window to roll"
                ),
                Wait::Pause => tracing::info!(
                    wait_ms = until.saturating_duration_since(started).as_millis() as u64,
                    "exchange asked us to back off; waiting"
                ),
            }
            tokio::time::sleep_until(until).await;
            let waited = started.elapsed();
            let mut state = self.lock();
            match why {
                Wait::Weight => {
                    state.stats.weight_waits += 1;
                    state.stats.weight_waited += waited;
                }
                Wait::Pause => {
                    state.stats.pause_waits += 1;
                    state.stats.pause_waited += waited;
                }
            }
        }
    }

    fn must_wait(&self, state: &mut State, weight: u32) -> Option<(Instant, Wait)> {
        let now = Instant::now();
        if let Some(until) = state.paused_until {
            if until > now {
                return Some((until, Wait::Pause));
            }
            state.paused_until = None;
        }
        let index = self.window_index(state.window);
        if index != state.window_index {
            state.window_index = index;
            state.used = 0;
        }
        // A request heavier than the whole budget still goes alone in a fresh window.
        if state.used > 0 && state.used.saturating_add(weight) > self.config.budget() {
            let window_ms = i64::try_from(state.window.as_millis()).unwrap_or(i64::MAX);
            let next = index.saturating_add(1).saturating_mul(window_ms);
            let until = self.clock.instant_at(next) + self.config.guard;
            return Some((until.max(now), Wait::Weight));
        }
        None
    }

    /// Reads a response's used-weight header, and pauses every call after a 429 or 418 for
    /// `retry_after` (the classifier's reading of `Retry-After`, or the code table's default).
    pub fn observe(&self, status: StatusCode, headers: &HeaderMap, retry_after: Option<Duration>) {
        let mut state = self.lock();
        if let Some((window, used)) = used_weight(headers) {
            state.window = window;
            let index = self.window_index(window);
            if index > state.window_index {
                state.window_index = index;
                state.used = 0;
            }
            if index == state.window_index {
                // The exchange's count includes other clients on the same IP; ours includes
                // requests still in flight. Keep the larger.
                state.used = state.used.max(used);
            }
            state.stats.peak_used_weight = state.stats.peak_used_weight.max(used);
        }
        if matches!(status.as_u16(), 429 | 418) {
            let pause = retry_after.unwrap_or(self.config.default_pause);
            let until = Instant::now() + pause;
            state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
            state.stats.pauses += 1;
            tracing::warn!(
                status = status.as_u16(),
                pause_ms = pause.as_millis() as u64,
                "exchange refused for rate limits; pausing every call"
            );
        }
    }
}

/// The window and the used weight from the first `X-MBX-USED-WEIGHT-<n><unit>` header.
pub fn used_weight(headers: &HeaderMap) -> Option<(Duration, u32)> {
    headers.iter().find_map(|(name, value)| {
        let interval = name.as_str().strip_prefix(USED_WEIGHT_PREFIX)?;
        let used = value.to_str().ok()?.trim().parse().ok()?;
        Some((parse_interval(interval)?, used))
    })
}

/// `1m` → one minute, `10s` → ten seconds, `1h`, `1d` (header names are lower case).
pub fn parse_interval(interval: &str) -> Option<Duration> {
    let unit_at = interval.len().checked_sub(1)?;
    let (count, unit) = interval.split_at(unit_at);
    let count: u64 = count.parse().ok().filter(|&n| n > 0)?;
    let unit_secs = match unit.to_ascii_lowercase().as_str() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(count.checked_mul(unit_secs)?))
}

/// Puts a [`WeightGovernor`] in front of a service: wait before each attempt, observe each
/// answer.
#[derive(Clone, Debug)]
pub struct GovernorLayer {
    governor: Arc<WeightGovernor>,
    classifier: ExchangeClassifier,
}

impl GovernorLayer {
    /// A layer sharing `governor`; `classifier` reads the wait a refusal asks for.
    pub fn new(governor: Arc<WeightGovernor>, classifier: ExchangeClassifier) -> Self {
        GovernorLayer {
            governor,
            classifier,
        }
    }
}

impl<S> Layer<S> for GovernorLayer {
    type Service = Governed<S>;

    fn layer(&self, inner: S) -> Governed<S> {
        Governed {
            inner,
            governor: Arc::clone(&self.governor),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service behind a [`WeightGovernor`]. Built by [`GovernorLayer`].
#[derive(Clone, Debug)]
pub struct Governed<S> {
    inner: S,
    governor: Arc<WeightGovernor>,
    classifier: ExchangeClassifier,
}

impl<S> Service<ApiRequest> for Governed<S>
where
    S: Service<ApiRequest, Response = ApiResponse, Error = StackError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = ApiResponse;
    type Error = StackError;
    type Future = Pin<Box<dyn Future<Output = Result<ApiResponse, StackError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StackError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ApiRequest) -> Self::Future {
        // The ready service goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let governor = Arc::clone(&self.governor);
        let classifier = self.classifier.clone();
        Box::pin(async move {
            if let Err(left) = governor.acquire(request.operation.weight()).await {
                tracing::info!(
                    operation = request.operation.as_str(),
                    pause_left_ms = left.as_millis() as u64,
                    "the exchange's pause outlasts this call's deadline; not sent"
                );
                return Ok(local_refusal(left));
            }
            let result = inner.call(request).await;
            if let Ok(response) = &result {
                let outcome = classifier.outcome(Ok(response));
                let wait = outcome.classification().and_then(|c| c.retry_after);
                governor.observe(response.status(), response.headers(), wait);
            }
            result
        })
    }
}

/// The header marking an answer the governor made up instead of sending the request.
pub const LOCAL_REFUSAL: &str = "x-local-refusal";

/// The exchange's rate-limit refusal, answered locally: what the exchange would say to a
/// request sent during its pause, with the wait left.
pub fn local_refusal(left: Duration) -> ApiResponse {
    let body = serde_json::json!({
        "code": -1003,
        "msg": "Not sent: the exchange's rate-limit pause outlasts this call's deadline.",
    });
    let mut response = http::Response::new(body.to_string().into_bytes());
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    response
        .headers_mut()
        .insert(LOCAL_REFUSAL, http::HeaderValue::from_static("governor"));
    response
}
