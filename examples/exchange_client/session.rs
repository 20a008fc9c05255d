//! The scripted trading session the example runs: prices, orders, cancels, account checks,
//! and a few mistakes a real caller makes (an order too big for the balance, a cancel of an
//! order already cancelled, an unknown symbol), so the report shows persistent business and
//! user errors next to the transient faults the mock injects.

use crate::client::{ExchangeClient, NewOrder, Side};
use crate::error::ExchangeError;
use crate::mock::parse_fixed;

/// Symbols the session trades, with the quantity of one small order.
const MARKETS: [(&str, &str); 3] = [
    ("BTCUSDT", "0.00100000"),
    ("ETHUSDT", "0.05000000"),
    ("BNBUSDT", "0.20000000"),
];

/// What the session saw go wrong for good, in order.
#[derive(Debug, Default)]
pub struct SessionOutcome {
    /// Calls that failed after the retries their classification allowed.
    pub errors: Vec<ExchangeError>,
    /// Orders the session placed and that the exchange acknowledged.
    pub orders_acknowledged: u32,
    /// Orders the session cancelled.
    pub orders_cancelled: u32,
}

impl SessionOutcome {
    fn note<T>(&mut self, result: Result<T, ExchangeError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }
}

/// A limit price 2% under `price`, kept to two decimals, so orders rest on the book.
fn resting_bid(price: &str) -> String {
    let units = parse_fixed(price).unwrap_or(0);
    let cents = units / 1_000_000 * 98 / 100;
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Runs the script until the client has made `calls` calls (a few more when a step needs
/// two), then cancels whatever it left open.
pub async fn run(client: &ExchangeClient, calls: u32) -> SessionOutcome {
    run_with(client, calls, |_| {}).await
}

/// [`run`], calling `before_step` with the step's number before each step (the program uses
/// it to start an outage at a given point of the script).
pub async fn run_with(
    client: &ExchangeClient,
    calls: u32,
    mut before_step: impl FnMut(u32),
) -> SessionOutcome {
    let mut out = SessionOutcome::default();
    out.note(client.ping().await);
    out.note(client.sync_time().await);
    out.note(client.account().await);

    let mut open: Vec<(String, u64)> = Vec::new();
    let mut last_cancelled: Option<(String, u64)> = None;
    let mut step = 0u32;
    while client.stats().calls < calls {
        before_step(step);
        let (symbol, quantity) = MARKETS[(step as usize / 10) % MARKETS.len()];
        match step % 10 {
            0 | 1 | 2 | 4 | 6 => {
                out.note(client.ticker_price(symbol).await);
            }
            3 => {
                if let Some(ticker) = out.note(client.ticker_price(symbol).await) {
                    let order = NewOrder {
                        symbol: symbol.to_owned(),
                        side: Side::Buy,
                        quantity: quantity.to_owned(),
                        price: resting_bid(&ticker.price),
                    };
                    if let Some(ack) = out.note(client.place_order(&order).await) {
                        out.orders_acknowledged += 1;
                        open.push((ack.symbol, ack.order_id));
                    }
                }
            }
            5 => {
                if let Some((symbol, id)) = open.pop() {
                    if out.note(client.cancel_order(&symbol, id).await).is_some() {
                        out.orders_cancelled += 1;
                    }
                    last_cancelled = Some((symbol, id));
                }
            }
            7 if step % 20 == 7 => {
                // Far more than the balance: the exchange says -2010, and retrying cannot help.
                let order = NewOrder {
                    symbol: "BTCUSDT".into(),
                    side: Side::Buy,
                    quantity: "10".into(),
                    price: "60000".into(),
                };
                out.note(client.place_order(&order).await);
            }
            7 => {
                // Cancelling twice: the exchange says -2011 (unknown order).
                if let Some((symbol, id)) = &last_cancelled {
                    out.note(client.cancel_order(symbol, *id).await);
                }
            }
            8 => {
                out.note(client.account().await);
            }
            _ => {
                if step == 9 {
                    // A typo in a symbol: -1121, the caller's mistake.
                    out.note(client.ticker_price("BTCUSTD").await);
                } else {
                    out.note(client.ticker_price(symbol).await);
                }
            }
        }
        step += 1;
    }
    for (symbol, id) in open {
        if out.note(client.cancel_order(&symbol, id).await).is_some() {
            out.orders_cancelled += 1;
        }
    }
    out
}
