//! Double-entry bookkeeping: accounts, balanced postings, and the invariant check.
//!
//! Money is an `i64` of minor units (cents). Every posting is one `ledger_transactions` row
//! with two or more `entries` whose amounts sum to zero; an account's balance is the sum of
//! its entries, kept in `accounts.balance` in the same SQLite transaction. Money enters from
//! the system account `world` and waits in `suspense:gateway` while the payment gateway
//! decides, so the sum of all balances is always zero.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::error::{LedgerError, TxKind};

/// Where deposits come from: its balance is minus the money in the ledger.
pub const WORLD: &str = "world";
/// Where a transfer's money waits between the debit and the gateway's answer.
pub const SUSPENSE: &str = "suspense:gateway";

/// An account and its balance.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Account {
    /// The account id.
    pub id: String,
    /// A display name.
    pub name: String,
    /// `customer` (never negative) or `system`.
    pub kind: String,
    /// Balance in minor units.
    pub balance: i64,
    /// When it was opened (UTC).
    pub created_at: String,
}

/// Reads an account; `transaction` names what the caller was doing, for the error.
pub fn get_account(
    conn: &Connection,
    id: &str,
    transaction: &'static str,
) -> Result<Account, LedgerError> {
    conn.query_row(
        "SELECT id, name, kind, balance, created_at FROM accounts WHERE id = ?1",
        [id],
        |r| {
            Ok(Account {
                id: r.get(0)?,
                name: r.get(1)?,
                kind: r.get(2)?,
                balance: r.get(3)?,
                created_at: r.get(4)?,
            })
        },
    )
    .optional()
    .map_err(LedgerError::db("get_account"))?
    .ok_or_else(|| LedgerError::AccountNotFound {
        account: id.to_owned(),
        transaction,
    })
}

/// Validates an account id supplied by a client.
pub fn validate_account_id(id: &str) -> Result<(), LedgerError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LedgerError::invalid(
            "id",
            "1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`",
        ))
    }
}

/// Opens a customer account, funded from `world` with `initial_balance` if it is positive.
pub fn create_account(
    conn: &Connection,
    id: &str,
    name: &str,
    initial_balance: i64,
) -> Result<Account, LedgerError> {
    validate_account_id(id)?;
    if initial_balance < 0 {
        return Err(LedgerError::invalid(
            "initial_balance",
            "must not be negative",
        ));
    }
    let exists: bool = conn
        .query_row("SELECT 1 FROM accounts WHERE id = ?1", [id], |_| Ok(true))
        .optional()
        .map_err(LedgerError::db("create_account"))?
        .unwrap_or(false);
    if exists {
        return Err(LedgerError::InvalidEntry {
            entry: Some(id.to_owned()),
            field: "id",
            reason: "an account with this id already exists".into(),
        });
    }
    conn.execute(
        "INSERT INTO accounts (id, name, kind) VALUES (?1, ?2, 'customer')",
        params![id, name],
    )
    .map_err(LedgerError::db("create_account"))?;
    if initial_balance > 0 {
        post(
            conn,
            TxKind::Deposit,
            &format!("deposit:{id}"),
            &[(WORLD, -initial_balance), (id, initial_balance)],
        )?;
    }
    get_account(conn, id, "create_account")
}

/// Posts one balanced transaction and returns its id.
///
/// Everything is checked before anything is written (legs balance, amounts non-zero,
/// accounts exist, no customer account goes negative), so an error leaves the surrounding
/// SQLite transaction untouched and the caller may still record the failure in it. The
/// caller holds the write lock (`BEGIN IMMEDIATE`), so the checks cannot go stale.
pub fn post(
    conn: &Connection,
    kind: TxKind,
    reference: &str,
    legs: &[(&str, i64)],
) -> Result<i64, LedgerError> {
    let entry = || Some(reference.to_owned());
    if legs.len() < 2 {
        return Err(LedgerError::InvalidEntry {
            entry: entry(),
            field: "entries",
            reason: "a posting needs at least two entries".into(),
        });
    }
    if legs.iter().any(|(_, amount)| *amount == 0) {
        return Err(LedgerError::InvalidEntry {
            entry: entry(),
            field: "amount",
            reason: "an entry of zero".into(),
        });
    }
    let sum = legs
        .iter()
        .try_fold(0i64, |acc, (_, a)| acc.checked_add(*a))
        .ok_or_else(|| LedgerError::InvalidEntry {
            entry: entry(),
            field: "amount",
            reason: "amounts overflow".into(),
        })?;
    if sum != 0 {
        return Err(LedgerError::InvalidEntry {
            entry: entry(),
            field: "entries",
            reason: format!("entries sum to {sum}, not zero"),
        });
    }
    let already: bool = conn
        .query_row(
            "SELECT 1 FROM ledger_transactions WHERE reference = ?1",
            [reference],
            |_| Ok(true),
        )
        .optional()
        .map_err(LedgerError::db("post"))?
        .unwrap_or(false);
    if already {
        return Err(LedgerError::InvalidEntry {
            entry: entry(),
            field: "reference",
            reason: "already posted".into(),
        });
    }
    for (account, amount) in legs {
        let (acct_kind, balance): (String, i64) = conn
            .query_row(
                "SELECT kind, balance FROM accounts WHERE id = ?1",
                [account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(LedgerError::db("post"))?
            .ok_or_else(|| LedgerError::AccountNotFound {
                account: (*account).to_owned(),
                transaction: kind.as_str(),
            })?;
        let after = balance.checked_add(*amount);
        if acct_kind == "customer" && after.is_none_or(|b| b < 0) {
            return Err(LedgerError::InsufficientFunds {
                account: (*account).to_owned(),
                transaction: kind,
                needed: -amount,
                available: balance,
            });
        }
    }
    conn.execute(
        "INSERT INTO ledger_transactions (reference, kind) VALUES (?1, ?2)",
        params![reference, kind.as_str()],
    )
    .map_err(LedgerError::db("post"))?;
    let txn = conn.last_insert_rowid();
    for (account, amount) in legs {
        conn.execute(
            "INSERT INTO entries (txn_id, account_id, amount) VALUES (?1, ?2, ?3)",
            params![txn, account, amount],
        )
        .map_err(LedgerError::db("post"))?;
        conn.execute(
            "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
            params![amount, account],
        )
        .map_err(LedgerError::db("post"))?;
    }
    Ok(txn)
}

/// The ledger's invariants, checked from scratch.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LedgerCheck {
    /// Every invariant holds.
    pub balanced: bool,
    /// The sum of every balance (must be 0).
    pub total_balance: i64,
    /// Transactions whose entries do not sum to zero (must be empty).
    pub unbalanced_transactions: Vec<i64>,
    /// Accounts whose balance differs from the sum of their entries (must be empty).
    pub drifted_accounts: Vec<String>,
    /// Customer accounts below zero (must be empty).
    pub negative_accounts: Vec<String>,
    /// Money waiting at the gateway (0 when no transfer is in flight).
    pub suspense_balance: i64,
    /// Money that entered the ledger (minus `world`'s balance).
    pub money_supply: i64,
    /// Postings.
    pub transactions: i64,
    /// Entries.
    pub entries: i64,
}

/// Checks every invariant of the books.
pub fn check(conn: &Connection) -> Result<LedgerCheck, LedgerError> {
    let db = LedgerError::db("check_ledger");
    let total_balance: i64 = conn
        .query_row("SELECT COALESCE(SUM(balance), 0) FROM accounts", [], |r| {
            r.get(0)
        })
        .map_err(&db)?;
    let mut stmt = conn
        .prepare("SELECT txn_id FROM entries GROUP BY txn_id HAVING SUM(amount) <> 0")
        .map_err(&db)?;
    let unbalanced_transactions = stmt
        .query_map([], |r| r.get(0))
        .and_then(Iterator::collect)
        .map_err(&db)?;
    let mut stmt = conn
        .prepare(
            "SELECT a.id FROM accounts a LEFT JOIN entries e ON e.account_id = a.id
             GROUP BY a.id HAVING a.balance <> COALESCE(SUM(e.amount), 0)",
        )
        .map_err(&db)?;
    let drifted_accounts = stmt
        .query_map([], |r| r.get(0))
        .and_then(Iterator::collect)
        .map_err(&db)?;
    let mut stmt = conn
        .prepare("SELECT id FROM accounts WHERE kind = 'customer' AND balance < 0")
        .map_err(&db)?;
    let negative_accounts: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(Iterator::collect)
        .map_err(&db)?;
    let suspense_balance = get_account(conn, SUSPENSE, "check_ledger")?.balance;
    let money_supply = -get_account(conn, WORLD, "check_ledger")?.balance;
    let transactions: i64 = conn
        .query_row("SELECT COUNT(*) FROM ledger_transactions", [], |r| r.get(0))
        .map_err(&db)?;
    let entries: i64 = conn
        .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
        .map_err(&db)?;
    let unbalanced_transactions: Vec<i64> = unbalanced_transactions;
    let drifted_accounts: Vec<String> = drifted_accounts;
    Ok(LedgerCheck {
        balanced: total_balance == 0
            && unbalanced_transactions.is_empty()
            && drifted_accounts.is_empty()
            && negative_accounts.is_empty(),
        total_balance,
        unbalanced_transactions,
        drifted_accounts,
        negative_accounts,
        suspense_balance,
        money_supply,
        transactions,
        entries,
    })
}
