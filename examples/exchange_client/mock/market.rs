//! The exchange's book: symbols, prices, balances and orders, in fixed-point units of 1e-8.
//!
//! Each endpoint takes the locked [`Book`](super::Book) and the query's parameters and returns
//! the answer; the server in [`super`] decides whether the request gets that far.

use std::collections::HashMap;

use super::{Answer, Book};

/// Fixed-point scale: eight decimals, as the exchange quotes.
pub const SCALE: i128 = 100_000_000;

/// The symbols the mock lists: (symbol, base, quote, starting price).
pub const SYMBOLS: [(&str, &str, &str, &str); 3] = [
    ("BTCUSDT", "BTC", "USDT", "60000"),
    ("ETHUSDT", "ETH", "USDT", "3000"),
    ("BNBUSDT", "BNB", "USDT", "600"),
];

/// An order on the book.
#[derive(Debug)]
pub struct Order {
    pub symbol: String,
    pub side: &'static str,
    pub client_order_id: String,
    pub status: &'static str,
    pub locked_asset: String,
    pub locked: i128,
    pub quantity: i128,
    pub price: i128,
}

pub fn rejection(code: i64) -> Answer {
    let msg = match code {
        -2010 => "Account has insufficient balance for requested action.",
        -2011 => "Unknown order sent.",
        -2013 => "Order does not exist.",
        -1013 => "Filter failure: LOT_SIZE",
        _ => "Rejected.",
    };
    Answer::error(400, code, msg)
}

pub fn missing(name: &str) -> Answer {
    Answer::error(
        400,
        -1102,
        &format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
    )
}

pub fn ticker(state: &mut Book, params: &HashMap<String, String>) -> Answer {
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

pub fn place(state: &mut Book, params: &HashMap<String, String>) -> Answer {
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
    if state.by_client_id.contains_key(&client_order_id) {
        // As Binance: the client must query the order to learn it went through.
        return Answer::error(400, -2010, "Duplicate order sent.");
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

pub fn query(state: &mut Book, params: &HashMap<String, String>) -> Answer {
    let Some(symbol) = params.get("symbol") else {
        return missing("symbol");
    };
    let id = match (params.get("orderId"), params.get("origClientOrderId")) {
        (Some(id), _) => id.parse::<u64>().ok(),
        (None, Some(client_id)) => state.by_client_id.get(client_id).copied(),
        (None, None) => return missing("orderId"),
    };
    match id.and_then(|id| Some((id, state.orders.get(&id)?))) {
        Some((id, order)) if &order.symbol == symbol => order_answer(id, order),
        _ => rejection(-2013),
    }
}

pub fn cancel(state: &mut Book, params: &HashMap<String, String>) -> Answer {
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

pub fn order_answer(id: u64, order: &Order) -> Answer {
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
