//! The wallet ledger, palisade's main example.
//!
//! The ledger service itself (axum, SQLite, a payment-gateway client, reconciliation) is built
//! on the layers, which land after the foundation. Until then this program does what the
//! foundation can do honestly: load the ledger's policy file (with `PALISADE__...` environment
//! overrides), print the resolved table every operation will run under, and show how the
//! ledger's own errors classify.
//!
//! ```text
//! cargo run --example ledger
//! cargo run --example ledger -- --policies my-policies.yaml
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use palisade::classify::{
    Category, Classification, Classified, Classify, SelfClassified, Severity, Transience,
};
use palisade::policy::Policies;

/// The ledger's domain errors, with the context an operator needs.
#[derive(Debug)]
enum LedgerError {
    InsufficientFunds {
        account: u64,
        needed: i64,
        available: i64,
    },
    AccountNotFound {
        account: u64,
    },
    DatabaseBusy {
        operation: &'static str,
    },
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerError::InsufficientFunds {
                account,
                needed,
                available,
            } => write!(
                f,
                "insufficient funds in account {account}: needed {needed}, available {available}"
            ),
            LedgerError::AccountNotFound { account } => write!(f, "account {account} not found"),
            LedgerError::DatabaseBusy { operation } => {
                write!(f, "database busy during {operation}")
            }
        }
    }
}

impl Classified for LedgerError {
    fn classification(&self) -> Classification {
        use Category::*;
        use Severity::*;
        use Transience::*;
        match self {
            // The customer's problem: never retried, never trips the breaker.
            LedgerError::InsufficientFunds { .. } => {
                Classification::new(Persistent, Business, Low, "insufficient_funds")
            }
            LedgerError::AccountNotFound { .. } => {
                Classification::new(Persistent, User, Low, "account_not_found")
            }
            // SQLite busy/locked: retried under `database_operation`.
            LedgerError::DatabaseBusy { .. } => {
                Classification::new(Transient, Database, Medium, "database_busy")
            }
        }
    }
}

fn usage() -> &'static str {
    "usage: ledger [--policies PATH]\n\n\
     Loads the ledger's policy file and prints the resolved policy table.\n\n\
     options:\n  \
       --policies PATH  policy file (default: examples/ledger/policies.yaml)\n  \
       -h, --help       this help\n\n\
     environment:\n  \
       PALISADE__<SECTION>__<KEY>...=VALUE overrides the file, e.g.\n  \
       PALISADE__POLICIES__PAYMENT_GATEWAY__TIMEOUT__TOTAL=3s"
}

fn main() -> ExitCode {
    let mut path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ledger/policies.yaml");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            "--policies" => match args.next() {
                Some(p) => path = PathBuf::from(p),
                None => {
                    eprintln!("--policies needs a path\n\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("unknown argument `{other}`\n\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }

    let policies = match Policies::from_path(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };

    println!("palisade ledger: policies from {}\n", path.display());
    println!("{}\n", policies.defaults());
    for policy in policies.operations() {
        println!("{policy}\n");
    }
    println!("routes:");
    for (route, operation) in policies.routes() {
        println!("  {route:<28} -> {operation}");
    }
    for table in policies.error_code_tables() {
        println!("\nerror codes `{}` ({} codes):", table.name(), table.len());
        let mut rows: Vec<_> = table.iter().collect();
        rows.sort_by_key(|(code, _)| *code);
        for (code, entry) in rows {
            println!("  {code:<20} {}", entry.classification);
        }
    }

    println!("\nhow the ledger's errors classify:");
    let examples = [
        LedgerError::InsufficientFunds {
            account: 42,
            needed: 500,
            available: 120,
        },
        LedgerError::AccountNotFound { account: 7 },
        LedgerError::DatabaseBusy {
            operation: "post_transfer",
        },
    ];
    for err in &examples {
        let outcome = SelfClassified.outcome(Err::<&(), _>(err));
        let class = outcome.classification().expect("errors are failures");
        let retried = if class.is_transient() {
            "retried"
        } else {
            "not retried"
        };
        let breaker = if class.is_caller_fault() {
            "never trips a breaker"
        } else {
            "counts toward the breaker"
        };
        println!("  {err}\n    -> {class}: {retried}, {breaker}");
    }
    println!(
        "\nThe ledger service (axum + SQLite + payment gateway) arrives with the layers; \
         this run shows the policy table it will use."
    );
    ExitCode::SUCCESS
}
