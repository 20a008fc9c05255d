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
//! One deviation from Binance: an order whose `newClientOrderId` is already known is answered
//! with the existing order (Binance answers `-2010` "Duplicate order sent."), so a client's
//! retry of an order that did go through is idempotent without an extra query.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State as Extract;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::WallClock;
use crate::transport::{Operation, X_MBX_APIKEY};

/// Fixed-point scale: eight decimals, as the exchange quotes.
const SCALE: i128 = 100_000_000;

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After` and a `-1003` body; requests before the wait ends get a 418.
    RateLimit {
        /// The advertised wait.
        retry_after: Duration,
    },
    /// 418 (IP banned) with `Retry-After` and a `-1003` body.
    Ban {
        /// The advertised wait.
        retry_after: Duration,
    },
    /// A 5xx: 500 (`-1001`), 503 (`-1008`) or any other status with an HTML body.
    ServerError {
        /// The status.
        status: u16,
    },
    /// The request is processed, and the answer sent only after `delay`.
    Slow {
        /// How late.
        delay: Duration,
    },
    /// `-1021` (timestamp outside recvWindow). Signed requests only: scheduled on an
    /// unsigned one, it waits for the next signed request.
    Timestamp,
    /// A rejection with this exchange code. Signed requests only, like `Timestamp`.
    Reject {
        /// `-2010`, `-2011`, ...
        code: i64,
    },
}

impl Fault {
    /// Whether the client is expected to retry after this fault.
    pub fn is_transient(&self) -> bool {
        match self {
            Fault::RateLimit { .. } | Fault::Ban { .. } | Fault::Slow { .. } | Fault::Timestamp => {
                true
            }
            Fault::ServerError { status } => !matches!(status, 501 | 505),
            Fault::Reject { .. } => false,
        }
    }

    /// A short name for the report.
    pub fn name(&self) -> String {
        match self {
            Fault::RateLimit { .. } => "429".into(),
            Fault::Ban { .. } => "418".into(),
            Fault::ServerError { status } => status.to_string(),
            Fault::Slow { .. } => "slow".into(),
            Fault::Timestamp => "-1021".into(),
            Fault::Reject { code } => code.to_string(),
        }
    }
}

/// Faults by arrival number (the first request to reach the mock is number 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    faults: BTreeMap<u64, Fault>,
}

impl FaultPlan {
    /// No faults.
    pub fn new() -> Self {
        FaultPlan::default()
    }

    /// Adds a fault for the `arrival`-th request.
    #[must_use]
    pub fn at(mut self, arrival: u64, fault: Fault) -> Self {
        self.faults.insert(arrival, fault);
        self
    }

    /// A reproducible schedule over the first `arrivals` requests: about one in eight gets a
    /// fault, never two in a row, none in the first three (the session's start-up calls). The
    /// slow answers last `slow`; at most one ban.
    pub fn seeded(seed: u64, arrivals: u64, slow: Duration) -> Self {
        let mut rng = SplitMix(seed);
        let mut plan = FaultPlan::new();
        let mut banned = false;
        let mut n = 4;
        while n <= arrivals {
            if rng.next().is_multiple_of(8) {
                let fault = match rng.next() % 12 {
                    0..=2 => Fault::ServerError { status: 503 },
                    3 | 4 => Fault::ServerError { status: 500 },
                    5 => Fault::ServerError { status: 502 },
                    6 | 7 => Fault::RateLimit {
                        retry_after: Duration::from_secs(1),
                    },
                    8 => Fault::Slow { delay: slow },
                    9 | 10 => Fault::Timestamp,
                    _ if !banned => {
                        banned = true;
                        Fault::Ban {
                            retry_after: Duration::from_secs(2),
                        }
                    }
                    _ => Fault::ServerError { status: 503 },
                };
                plan.faults.insert(n, fault);
                n += 1;
            }
            n += 1;
        }
        plan
    }

    /// The faults, by arrival.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Fault)> {
        self.faults.iter().map(|(n, f)| (*n, f))
    }

    /// How many faults are scheduled.
    pub fn len(&self) -> usize {
        self.faults.len()
    }

    /// Whether no fault is scheduled.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// A small deterministic generator (splitmix64).
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

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
}

#[derive(Debug)]
struct Order {
    symbol: String,
    side: &'static str,
    client_order_id: String,
    status: &'static str,
    locked_asset: String,
    locked: i128,
    quantity: i128,
    price: i128,
}

#[derive(Debug)]
struct Book {
    window_index: i64,
    used: u32,
    paused_until: Option<Instant>,
    /// A signed-only fault scheduled on an unsigned request, waiting for a signed one.
    deferred: Option<Fault>,
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

/// The symbols the mock lists: (symbol, base, quote, starting price).
const SYMBOLS: [(&str, &str, &str, &str); 3] = [
    ("BTCUSDT", "BTC", "USDT", "60000"),
    ("ETHUSDT", "ETH", "USDT", "3000"),
    ("BNBUSDT", "BNB", "USDT", "600"),
];

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
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
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
        state.stats.arrivals.push(Arrival {
            number,
            operation,
            at: now,
            status: answer.status.as_u16(),
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
        let signed = operation.is_some_and(Operation::signed);
        let mut delay = None;
        let mut scheduled = self.config.plan.faults.get(&number).cloned();
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
                    Fault::Reject { code } => return rejection(*code),
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
            Operation::TickerPrice => ticker(state, params),
            Operation::PlaceOrder => place(state, params),
            Operation::CancelOrder => cancel(state, params),
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

fn rejection(code: i64) -> Answer {
    let msg = match code {
        -2010 => "Account has insufficient balance for requested action.",
        -2011 => "Unknown order sent.",
        -2013 => "Order does not exist.",
        -1013 => "Filter failure: LOT_SIZE",
        _ => "Rejected.",
    };
    Answer::error(400, code, msg)
}

fn missing(name: &str) -> Answer {
    Answer::error(
        400,
        -1102,
        &format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
    )
}

fn ticker(state: &mut Book, params: &HashMap<String, String>) -> Answer {
    let Some(symbol) = params.get("symbol") else {
        return missing("symbol");
    };
    let step = state.rng.next();
    let Some(price) = state.prices.get_mut(symbol.as_str()) else {
        return Answer::error(400, -1121, "Invalid symbol.");
    };
    // A random walk of at most 0.1% per look, so prices move between calls.
    let move_by = *price / 1000 * (i128::from(step % 201) - 100) / 100;
    *price = (*price + move_by).max(SCALE / 100);
    Answer::ok(serde_json::json!({ "symbol": symbol, "price": format_fixed(*price) }).to_string())
}

fn place(state: &mut Book, params: &HashMap<String, String>) -> Answer {
    for name in ["symbol", "side", "type", "quantity", "price"] {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            return missing(name);
        }
    }
    let symbol = &params["symbol"];
    let Some((_, base, quote, _)) = SYMBOLS.iter().find(|s| s.0 == symbol) else {
        return Answer::error(400, -1121, "Invalid symbol.");
    };
    let side = match params["side"].as_str() {
        "BUY" => "BUY",
        "SELL" => "SELL",
        _ => return Answer::error(400, -1117, "Invalid side."),
    };
    if params["type"] != "LIMIT" {
        return Answer::error(400, -1116, "Invalid orderType.");
    }
    let (Some(quantity), Some(price)) = (
        parse_fixed(&params["quantity"]),
        parse_fixed(&params["price"]),
    ) else {
        return Answer::error(
            400,
            -1111,
            "Parameter 'quantity' or 'price' has too much precision.",
        );
    };
    if quantity <= 0 || price <= 0 {
        return Answer::error(400, -1013, "Filter failure: LOT_SIZE");
    }
    let client_order_id = params
        .get("newClientOrderId")
        .cloned()
        .unwrap_or_else(|| format!("mock-{}", state.next_order_id));
    if let Some(id) = state.by_client_id.get(&client_order_id) {
        // A retry of an order that went through: answer with it (see the module docs).
        let id = *id;
        return order_answer(id, &state.orders[&id]);
    }
    let (asset, needed) = if side == "BUY" {
        (*quote, (quantity * price + SCALE - 1) / SCALE)
    } else {
        (*base, quantity)
    };
    let free = state.balances.get(asset).map_or(0, |b| b.0);
    if needed > free {
        return rejection(-2010);
    }
    let balance = state.balances.entry(asset.to_owned()).or_default();
    balance.0 -= needed;
    balance.1 += needed;
    let id = state.next_order_id;
    state.next_order_id += 1;
    state.by_client_id.insert(client_order_id.clone(), id);
    state.orders.insert(
        id,
        Order {
            symbol: symbol.clone(),
            side,
            client_order_id,
            status: "NEW",
            locked_asset: asset.to_owned(),
            locked: needed,
            quantity,
            price,
        },
    );
    state.stats.orders_placed += 1;
    order_answer(id, &state.orders[&id])
}

fn cancel(state: &mut Book, params: &HashMap<String, String>) -> Answer {
    let Some(symbol) = params.get("symbol") else {
        return missing("symbol");
    };
    let Some(id) = params.get("orderId").and_then(|id| id.parse::<u64>().ok()) else {
        return missing("orderId");
    };
    let Some(order) = state
        .orders
        .get_mut(&id)
        .filter(|o| o.status == "NEW" && &o.symbol == symbol)
    else {
        return rejection(-2011);
    };
    order.status = "CANCELED";
    let (asset, amount) = (order.locked_asset.clone(), order.locked);
    order.locked = 0;
    if let Some(balance) = state.balances.get_mut(&asset) {
        balance.0 += amount;
        balance.1 -= amount;
    }
    order_answer(id, &state.orders[&id])
}

fn order_answer(id: u64, order: &Order) -> Answer {
    Answer::ok(
        serde_json::json!({
            "symbol": order.symbol,
            "orderId": id,
            "clientOrderId": order.client_order_id,
            "price": format_fixed(order.price),
            "origQty": format_fixed(order.quantity),
            "executedQty": "0.00000000",
            "status": order.status,
            "timeInForce": "GTC",
            "type": "LIMIT",
            "side": order.side,
        })
        .to_string(),
    )
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

/// Parses a query string, percent-decoding values.
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses a non-negative decimal with at most eight decimals into units of 1e-8.
pub fn parse_fixed(s: &str) -> Option<i128> {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && fraction.is_empty()
        || fraction.len() > 8
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        || whole.len() > 20
    {
        return None;
    }
    let whole: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut frac: i128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    for _ in fraction.len()..8 {
        frac *= 10;
    }
    whole.checked_mul(SCALE)?.checked_add(frac)
}

/// Formats units of 1e-8 as a decimal with eight places.
pub fn format_fixed(units: i128) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    let scale = SCALE.unsigned_abs();
    format!("{sign}{}.{:08}", abs / scale, abs % scale)
}
