//! `hongbao audit`: replays a ledger read-only and proves its books.
//!
//! Owns: the audit command — scan the ledger (never cutting or locking it),
//! apply every record to the books (which refuse any record that breaks a
//! rule of money), check that the totals balance, and, given the flooder's
//! `--ack-log` files, that every acknowledged grant and claim is in the
//! ledger with the same amount. With `--cluster`, the fleet's audit
//! ([`fleet`]): every node's ledger against the engine. Must not: change
//! the ledger or the engine.

pub mod fleet;
mod node;

pub(crate) use node::audit;
pub use node::{AuditArgs, AuditReport};

use node::print_table;

/// Runs the audit. `Err` names the first violation; the binary exits non-zero.
pub fn run(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    if args.cluster.is_some() {
        let report = fleet::audit_fleet(args)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            fleet::print_fleet(&report);
        }
        // The per-node part, for callers that want the one shape.
        return Ok(report.nodes.into_iter().next().unwrap_or_default());
    }
    let report = audit(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(report)
}
