//! A mock Binance-style exchange on 127.0.0.1 (axum), with faults on a deterministic schedule.
//!
//! It behaves like the real API where the client can tell: request weights counted per window
//! aligned to its clock and reported in `X-MBX-USED-WEIGHT-<interval>`; a 429 with
//! `Retry-After` and a `-1003` body when the weight passes the limit; a 418 ban for requests
//! sent during that pause; HMAC-SHA256 signatures, API keys and `recvWindow` checked
//! (`-1022`, `-2014`/`-2015`, `-1021`); balances that lock on orders (`-2010` insufficient
//! balance) and orders that can be cancelled once (`-2011` unknown order).
//!
//! On top of that a [`FaultPlan`] injects faults by arrival number: 429s and 418s, 5xx
//! answers, slow answers, timestamp and business rejections.
//!
//! Like Binance, an order whose `newClientOrderId` is already known is refused with `-2010`
//! "Duplicate order sent.", and `GET /api/v3/order?origClientOrderId=` finds it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State as Extract;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use palisade::correlation::{CorrelationId, CorrelationLayer};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::WallClock;
use crate::transport::{Operation, X_MBX_APIKEY};

mod faults;
mod market;
mod query;

pub use faults::{Fault, FaultPlan, SplitMix};
use market::{Order, SYMBOLS};
pub use market::{format_fixed, parse_fixed};
use query::{parse_query, unhex};

/// How the mock is set up.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// The only API key it accepts.
    pub api_key: String,
    /// The secret it verifies signatures with.
    pub secret_key: String,
    /// Weight allowed per window.
    pub weight_limit: u32,
    /// The window (Binance: one minute).
    pub window: Duration,
    /// Faults to inject.
    pub plan: FaultPlan,
    /// The exchange's clock.
    pub clock: WallClock,
    /// Starting balances, asset and decimal amount.
    pub balances: Vec<(String, String)>,
    /// Seeds the prices' random walk.
    pub seed: u64,
}

impl MockConfig {
    /// A mock with these keys, Binance's historical limit of 1200 per minute, no faults, and
    /// 10,000 USDT, 0.5 BTC and 5 ETH.
    pub fn new(api_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        MockConfig {
            api_key: api_key.into(),
            secret_key: secret_key.into(),
            weight_limit: 1200,
            window: Duration::from_secs(60),
            plan: FaultPlan::new(),
            clock: WallClock::system(),
            balances: vec![
                ("USDT".into(), "10000".into()),
                ("BTC".into(), "0.5".into()),
                ("ETH".into(), "5".into()),
            ],
            seed: 1,
        }
    }
}

/// One request as the mock saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Arrival number.
    pub number: u64,
    /// The endpoint, if it is one the mock knows.
    pub operation: Option<Operation>,
    /// When (tokio's clock).
    pub at: Instant,
    /// The status answered.
    pub status: u16,
    /// The request's correlation ID (`x-request-id`), as palisade's `CorrelationLayer` in
    /// front of the mock accepted it (a request without one gets a generated ID).
    pub request_id: Option<String>,
}

/// What the mock saw and did.
#[derive(Clone, Debug, Default)]
pub struct MockStats {
    /// Requests received.
    pub requests: u64,
    /// Faults injected (a signed-only fault counts when a signed request takes it).
    pub faults_injected: u64,
    /// The injected faults, by arrival number.
    pub injected: Vec<(u64, Fault)>,
    /// 429s sent because the weight passed the limit.
    pub weight_refusals: u64,
    /// Requests that arrived while a 429 or 418 pause was in force.
    pub requests_during_pause: u64,
    /// Orders placed (a repeated `newClientOrderId` is not a new order).
    pub orders_placed: u64,
    /// Every request, in arrival order.
    pub arrivals: Vec<Arrival>,
    /// Signatures received (so tests can look for them where they must not be).
    pub signatures: Vec<String>,
    /// The highest weight counted in one window.
    pub peak_weight: u32,
    /// Requests answered 503 because their endpoint was in an outage.
    pub outage_answers: u64,
}

#[derive(Debug)]
struct Book {
    window_index: i64,
    used: u32,
    paused_until: Option<Instant>,
    /// A signed-only fault scheduled on an unsigned request, waiting for a signed one.
    deferred: Option<Fault>,
    /// An endpoint that answers 503 to everything until a time.
    outage: Option<(Operation, Instant)>,
    balances: BTreeMap<String, (i128, i128)>,
    orders: BTreeMap<u64, Order>,
    by_client_id: HashMap<String, u64>,
    next_order_id: u64,
    prices: BTreeMap<&'static str, i128>,
    rng: SplitMix,
    stats: MockStats,
}

#[derive(Debug)]
struct Shared {
    config: MockConfig,
    header_name: http::HeaderName,
    state: Mutex<Book>,
}

/// The running mock. Stops when dropped.
#[derive(Debug)]
pub struct MockExchange {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl MockExchange {
    /// Binds 127.0.0.1 on a free port and serves.
    pub async fn start(config: MockConfig) -> std::io::Result<MockExchange> {
        let balances = config
            .balances
            .iter()
            .filter_map(|(asset, amount)| Some((asset.clone(), (parse_fixed(amount)?, 0))))
            .collect();
        let prices = SYMBOLS
            .iter()
            .filter_map(|(symbol, _, _, price)| Some((*symbol, parse_fixed(price)?)))
            .collect();
        let header_name = http::HeaderName::try_from(format!(
            "x-mbx-used-weight-{}",
            interval_name(config.window)
        ))
        .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            header_name,
            state: Mutex::new(Book {
                window_index: -1,
                used: 0,
                paused_until: None,
                deferred: None,
                outage: None,
                balances,
                orders: BTreeMap::new(),
                by_client_id: HashMap::new(),
                next_order_id: 1000,
                prices,
                rng: SplitMix(config.seed),
                stats: MockStats::default(),
            }),
            config,
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        // palisade's server side of correlation: the client's `x-request-id` (validated) is
        // the handler's task-local ID and is echoed on the answer.
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared))
            .layer(CorrelationLayer::new());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "mock exchange stopped");
            }
        });
        Ok(MockExchange { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A copy of what it saw.
    pub fn stats(&self) -> MockStats {
        self.shared.lock().stats.clone()
    }

    /// From now on and for `duration`, every request to `operation` is answered with a bare
    /// 503 (a load balancer with no healthy backend): an outage of one endpoint.
    pub fn outage(&self, operation: Operation, duration: Duration) {
        self.shared.lock().outage = Some((operation, Instant::now() + duration));
    }

    /// Orders still open.
    pub fn open_orders(&self) -> usize {
        let state = self.shared.lock();
        state.orders.values().filter(|o| o.status == "NEW").count()
    }

    /// The free and locked amount of an asset, as decimal strings.
    pub fn balance(&self, asset: &str) -> Option<(String, String)> {
        let state = self.shared.lock();
        state
            .balances
            .get(asset)
            .map(|(free, locked)| (format_fixed(*free), format_fixed(*locked)))
    }
}

impl Drop for MockExchange {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A JSON answer, and whether to hold it back.
struct Answer {
    status: StatusCode,
    body: String,
    retry_after: Option<Duration>,
    delay: Option<Duration>,
    html: bool,
}

impl Answer {
    fn ok(body: String) -> Self {
        Answer {
            status: StatusCode::OK,
            body,
            retry_after: None,
            delay: None,
            html: false,
        }
    }

    fn error(status: u16, code: i64, msg: &str) -> Self {
        Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            body: serde_json::json!({ "code": code, "msg": msg }).to_string(),
            retry_after: None,
            delay: None,
            html: false,
        }
    }

    fn waiting(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

async fn handle(
    Extract(shared): Extract<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response<Body> {
    let (answer, used) = shared.answer(&method, &uri, &headers);
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = answer.status;
    let content_type = if answer.html {
        "text/html"
    } else {
        "application/json;charset=UTF-8"
    };
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(shared.header_name.clone(), HeaderValue::from(used));
    if let Some(wait) = answer.retry_after {
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(ceil_secs(wait)),
        );
    }
    response
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Shared {
    fn answer(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> (Answer, u32) {
        let mut state = self.lock();
        let now = Instant::now();
        let operation = Operation::from_route(method, uri.path());
        state.stats.requests += 1;
        let number = state.stats.requests;

        let window_ms = i64::try_from(self.config.window.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let server_ms = self.config.clock.now_ms();
        let index = server_ms.div_euclid(window_ms);
        if index != state.window_index {
            state.window_index = index;
            state.used = 0;
        }
        state.used = state
            .used
            .saturating_add(operation.map_or(1, Operation::weight));
        state.stats.peak_weight = state.stats.peak_weight.max(state.used);
        let window_end = self.config.clock.instant_at((index + 1) * window_ms);

        let answer = self.decide(&mut state, number, operation, uri, headers, now, window_end);
        let request_id = CorrelationId::current();
        tracing::debug!(
            request_id = request_id.as_ref().map(CorrelationId::as_str),
            number,
            operation = operation.map(Operation::as_str),
            status = answer.status.as_u16(),
            "mock exchange answered"
        );
        state.stats.arrivals.push(Arrival {
            number,
            operation,
            at: now,
            status: answer.status.as_u16(),
            request_id: request_id.map(|id| id.as_str().to_owned()),
        });
        let used = state.used;
        (answer, used)
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        state: &mut Book,
        number: u64,
        operation: Option<Operation>,
        uri: &Uri,
        headers: &HeaderMap,
        now: Instant,
        window_end: Instant,
    ) -> Answer {
        const TOO_MUCH: &str = "Too much request weight used; please use WebSocket Streams for live updates to avoid polling the API.";
        if let Some(until) = state.paused_until.filter(|&u| u > now) {
            // Binance bans IPs that keep calling after a 429.
            state.stats.requests_during_pause += 1;
            let msg = "Way too much request weight used; IP banned until later.";
            return Answer::error(418, -1003, msg).waiting(until - now);
        }
        if state.used > self.config.weight_limit {
            state.stats.weight_refusals += 1;
            state.paused_until = Some(window_end);
            return Answer::error(429, -1003, TOO_MUCH).waiting(window_end - now);
        }
        if let Some((down, until)) = state.outage
            && Some(down) == operation
            && now < until
        {
            state.stats.outage_answers += 1;
            return Answer {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "<html><body><h1>503 Service Unavailable</h1></body></html>".into(),
                retry_after: None,
                delay: None,
                html: true,
            };
        }
        let signed = operation.is_some_and(Operation::signed);
        let mut delay = None;
        let mut scheduled = self.config.plan.get(number).cloned();
        if signed && scheduled.is_none() {
            scheduled = state.deferred.take();
        }
        if let Some(fault) = scheduled {
            let signed_only = matches!(fault, Fault::Timestamp | Fault::Reject { .. });
            if signed_only && !signed {
                // Only a signed request can carry it: keep it for the next one.
                state.deferred = Some(fault);
            } else {
                state.stats.faults_injected += 1;
                state.stats.injected.push((number, fault.clone()));
                match &fault {
                    Fault::RateLimit { retry_after } => {
                        state.paused_until = Some(now + *retry_after);
                        return Answer::error(429, -1003, TOO_MUCH).waiting(*retry_after);
                    }
                    Fault::Ban { retry_after } => {
                        state.paused_until = Some(now + *retry_after);
                        let msg = "Way too much request weight used; IP banned until later.";
                        return Answer::error(418, -1003, msg).waiting(*retry_after);
                    }
                    Fault::ServerError { status: 500 } => {
                        return Answer::error(
                            500,
                            -1001,
                            "Internal error; unable to process your request. Please try again.",
                        );
                    }
                    Fault::ServerError { status: 503 } => {
                        return Answer::error(
                            503,
                            -1008,
                            "Server is currently overloaded with other requests. Please try again in a few minutes.",
                        );
                    }
                    Fault::ServerError { status } => {
                        return Answer {
                            status: StatusCode::from_u16(*status)
                                .unwrap_or(StatusCode::BAD_GATEWAY),
                            body: "<html><body><h1>Bad Gateway</h1></body></html>".into(),
                            retry_after: None,
                            delay: None,
                            html: true,
                        };
                    }
                    Fault::Slow { delay: d } => delay = Some(*d),
                    Fault::Timestamp => {
                        return Answer::error(
                            400,
                            -1021,
                            "Timestamp for this request is outside of the recvWindow.",
                        );
                    }
                    Fault::Reject { code } => return market::rejection(*code),
                }
            }
        }
        let Some(operation) = operation else {
            return Answer {
                status: StatusCode::NOT_FOUND,
                body: String::new(),
                retry_after: None,
                delay,
                html: true,
            };
        };
        let query = uri.query().unwrap_or("");
        let params = parse_query(query);
        let mut answer = if signed {
            match self.authenticate(state, query, &params, headers) {
                Ok(()) => self.endpoint(state, operation, &params),
                Err(refusal) => refusal,
            }
        } else {
            self.endpoint(state, operation, &params)
        };
        answer.delay = delay;
        answer
    }

    fn authenticate(
        &self,
        state: &mut Book,
        query: &str,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<(), Answer> {
        let Some(key) = headers.get(X_MBX_APIKEY).and_then(|v| v.to_str().ok()) else {
            return Err(Answer::error(401, -2014, "API-key format invalid."));
        };
        if key != self.config.api_key {
            return Err(Answer::error(
                401,
                -2015,
                "Invalid API-key, IP, or permissions for action.",
            ));
        }
        let Some((payload, signature)) = query.rsplit_once("&signature=") else {
            return Err(Answer::error(
                400,
                -1102,
                "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
            ));
        };
        state.stats.signatures.push(signature.to_owned());
        let mut mac = Hmac::<Sha256>::new_from_slice(self.config.secret_key.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(payload.as_bytes());
        let valid = unhex(signature).is_some_and(|sig| mac.verify_slice(&sig).is_ok());
        if !valid {
            return Err(Answer::error(
                400,
                -1022,
                "Signature for this request is not valid.",
            ));
        }
        let Some(timestamp) = params.get("timestamp").and_then(|t| t.parse::<i64>().ok()) else {
            return Err(Answer::error(
                400,
                -1102,
                "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.",
            ));
        };
        let recv_window = params
            .get("recvWindow")
            .and_then(|w| w.parse::<i64>().ok())
            .unwrap_or(5000);
        if !(1..=60_000).contains(&recv_window) {
            return Err(Answer::error(
                400,
                -1131,
                "recvWindow must be less than 60000",
            ));
        }
        let server_ms = self.config.clock.now_ms();
        if timestamp > server_ms + 1000 || server_ms - timestamp > recv_window {
            return Err(Answer::error(
                400,
                -1021,
                "Timestamp for this request is outside of the recvWindow.",
            ));
        }
        Ok(())
    }

    fn endpoint(
        &self,
        state: &mut Book,
        operation: Operation,
        params: &HashMap<String, String>,
    ) -> Answer {
        match operation {
            Operation::Ping => Answer::ok("{}".into()),
            Operation::Time => Answer::ok(
                serde_json::json!({ "serverTime": self.config.clock.now_ms() }).to_string(),
            ),
            Operation::TickerPrice => market::ticker(state, params),
            Operation::PlaceOrder => market::place(state, params),
            Operation::CancelOrder => market::cancel(state, params),
            Operation::QueryOrder => market::query(state, params),
            Operation::Account => {
                let balances: Vec<_> = state
                    .balances
                    .iter()
                    .map(|(asset, (free, locked))| {
                        serde_json::json!({
                            "asset": asset,
                            "free": format_fixed(*free),
                            "locked": format_fixed(*locked),
                        })
                    })
                    .collect();
                Answer::ok(
                    serde_json::json!({ "canTrade": true, "balances": balances }).to_string(),
                )
            }
        }
    }
}

/// `1m` for a minute, `10s` for ten seconds: the suffix of the used-weight header.
pub fn interval_name(window: Duration) -> String {
    let secs = window.as_secs().max(1);
    if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}
