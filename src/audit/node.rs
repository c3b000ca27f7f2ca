//! One node's audit: its ledger replayed read-only into books that refuse
//! any record breaking a rule of money, the totals balanced, and the
//! flooders' acknowledgements found in it.
//!
//! Owns: `AuditArgs`, `AuditReport`, the single ledger's audit and the
//! ack-log check the fleet's audit reuses. Must not: change the ledger.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::ids::{Cents, EnvelopeId, PacketId, UserId};
use crate::ledger::{self, Books, Totals};

/// `hongbao audit` options.
#[derive(Clone, Debug, clap::Args)]
pub struct AuditArgs {
    /// The server's `--data-dir`; with `--cluster`, every node's (repeat
    /// the option once per node).
    #[arg(long, required = true)]
    pub data_dir: Vec<PathBuf>,
    /// Cluster mode: the fleet's engine (`redis://HOST:PORT`, comma
    /// separated), to reconcile every node's ledger with it.
    #[arg(long, value_name = "URLS")]
    pub cluster: Option<String>,
    /// Acknowledgement logs written by `hongbao flood --ack-log` (repeatable):
    /// every `grant` and paid `claim` in them must be in the ledger.
    #[arg(long)]
    pub ack_log: Vec<PathBuf>,
    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What the audit found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    /// Money records read.
    pub records: u64,
    /// Group commits read.
    pub batches: u32,
    /// Bytes after the last intact commit (cut at the server's next start).
    pub torn_bytes: u64,
    /// The totals.
    pub totals: Totals,
    /// Cents in envelopes outstanding.
    pub cents_outstanding: u64,
    /// Cents unclaimed in live packets.
    pub cents_in_packets: u64,
    /// Live packets.
    pub packets_live: u64,
    /// Acknowledged grants checked against the ledger.
    pub acks_grants: u64,
    /// Acknowledged paid claims checked.
    pub acks_claims: u64,
    /// Of those, answers to a claim already acknowledged (a client that
    /// claimed again after a reconnect: the engine answers a repeat with
    /// what it paid the first time, and the node mirrors it once).
    pub acks_claims_repeated: u64,
    /// Acknowledged 0-cent claims (no money moved; not checked).
    pub acks_zero_claims: u64,
}

/// The audit without printing.
pub fn audit(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    let [dir] = args.data_dir.as_slice() else {
        bail!("one --data-dir without --cluster (several only for a fleet's audit)");
    };
    let (report, books) = audit_node(dir)?;
    let mut report = report;
    let history = books.history().expect("books made with history");
    for log in &args.ack_log {
        let grant = |id: EnvelopeId, user: UserId, cents: Cents| match history.grants.get(&id) {
            Some(&(u, c)) if (u, c) == (user, cents) => GrantFound::Same,
            Some(&(u, c)) => GrantFound::Other(u, c),
            None => GrantFound::Missing,
        };
        check_acks(log, &grant, &history.claims, &mut report)?;
    }
    Ok(report)
}

/// One node's ledger, replayed read-only into books that keep every grant
/// and claim: its report (no acknowledgements checked yet) and its books.
pub(super) fn audit_node(dir: &std::path::Path) -> anyhow::Result<(AuditReport, Books)> {
    let path = dir.join(ledger::FILE_NAME);
    if !path.exists() {
        bail!(
            "no ledger at {} (is --data-dir the server's?)",
            path.display()
        );
    }
    let mut books = Books::with_history();
    let end = ledger::file::scan(&path, &mut books).map_err(|e| anyhow::anyhow!("{e}"))?;
    books
        .check_conservation()
        .map_err(|v| anyhow::anyhow!("{}: {v}", path.display()))?;
    let report = AuditReport {
        records: end.records,
        batches: end.batches,
        torn_bytes: end.torn_bytes(),
        totals: books.totals(),
        cents_outstanding: books.cents_outstanding(),
        cents_in_packets: books.cents_in_packets(),
        packets_live: books.packets_live() as u64,
        ..AuditReport::default()
    };
    Ok((report, books))
}

/// What the ledgers hold of an acknowledged grant's envelope id.
pub(super) enum GrantFound {
    /// A grant of that envelope to that user for that amount.
    Same,
    /// A grant of that envelope, to another user or for another amount.
    Other(UserId, Cents),
    /// No grant of that envelope.
    Missing,
}

/// Every line of the ack log `log` against the ledgers: a `grant` is looked
/// up with `grant` (one ledger's grants by envelope id; a fleet's, whose
/// nodes number envelopes alike, by id, user and amount), a paid `claim`
/// in `claims`.
pub(super) fn check_acks(
    log: &PathBuf,
    grant: &dyn Fn(EnvelopeId, UserId, Cents) -> GrantFound,
    claims: &HashMap<(PacketId, UserId), Cents>,
    report: &mut AuditReport,
) -> anyhow::Result<()> {
    let file = File::open(log).with_context(|| format!("opening ack log {}", log.display()))?;
    // Paid claims acknowledged so far, to count the repeats (the ledger
    // holds one amount per claim, so a repeat for another amount fails
    // the lookup below).
    let mut acknowledged: HashSet<(PacketId, UserId)> = HashSet::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", log.display()))?;
        let at = || format!("{}:{}", log.display(), n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [kind, user, id, cents] => {
                match (user.parse::<u32>(), id.parse::<u32>(), cents.parse::<u64>()) {
                    (Ok(u), Ok(i), Ok(c)) => Some((*kind, UserId(u), i, Cents(c))),
                    _ => None,
                }
            }
            [] => continue,
            _ => None,
        };
        let Some((kind, user, id, cents)) = parsed else {
            bail!("{}: not an ack line: {line:?}", at());
        };
        match kind {
            "grant" => {
                report.acks_grants += 1;
                match grant(EnvelopeId(id), user, cents) {
                    GrantFound::Same => {}
                    GrantFound::Other(u, c) => bail!(
                        "{}: acknowledged grant of envelope {id} to user {user} for {cents} \
                         but the ledger granted it to user {u} for {c}",
                        at()
                    ),
                    GrantFound::Missing => bail!(
                        "{}: acknowledged grant of envelope {id} to user {user} for {cents} \
                         is not in the ledger: an acknowledged grant was lost",
                        at()
                    ),
                }
            }
            "claim" if cents.0 == 0 => report.acks_zero_claims += 1,
            "claim" => {
                report.acks_claims += 1;
                if !acknowledged.insert((PacketId(id), user)) {
                    report.acks_claims_repeated += 1;
                }
                match claims.get(&(PacketId(id), user)) {
                    Some(&c) if c == cents => {}
                    Some(&c) => bail!(
                        "{}: acknowledged claim of packet {id} by user {user} for {cents} \
                         but the ledger paid {c}",
                        at()
                    ),
                    None => bail!(
                        "{}: acknowledged claim of packet {id} by user {user} for {cents} \
                         is not in the ledger: an acknowledged claim was lost",
                        at()
                    ),
                }
            }
            other => bail!("{}: unknown ack kind {other:?}", at()),
        }
    }
    Ok(())
}

pub(super) fn print_table(r: &AuditReport) {
    let t = &r.totals;
    println!(
        "ledger: {} records in {} group commits{}",
        r.records,
        r.batches,
        if r.torn_bytes > 0 {
            format!(
                ", torn tail of {} bytes (never acknowledged; cut at the next start)",
                r.torn_bytes
            )
        } else {
            String::new()
        }
    );
    println!("{:<26} {:>12} {:>16}", "", "count", "cents");
    let row = |name: &str, n: u64, c: u64| println!("{name:<26} {n:>12} {c:>16}");
    row(
        "envelopes generated",
        t.envelopes_generated,
        t.cents_generated,
    );
    row("  granted", t.envelopes_granted, t.cents_granted);
    row("  returned", t.envelopes_returned, t.cents_returned);
    row(
        "  outstanding",
        t.envelopes_generated - t.envelopes_granted - t.envelopes_returned,
        r.cents_outstanding,
    );
    row("packets created", t.packets_created, t.cents_packets);
    row("  claims paid", t.claims, t.cents_claimed);
    row("  refunded", t.refunds, t.cents_refunded);
    row("  live, unclaimed", r.packets_live, r.cents_in_packets);
    println!(
        "balance: envelopes {} = {} + {} + {}; packets {} = {} + {} + {}",
        t.cents_generated,
        t.cents_granted,
        t.cents_returned,
        r.cents_outstanding,
        t.cents_packets,
        t.cents_claimed,
        t.cents_refunded,
        r.cents_in_packets
    );
    if r.acks_grants + r.acks_claims + r.acks_zero_claims > 0 {
        println!(
            "acknowledgements: {} grants and {} paid claims all in the ledger ({} of them repeats; {} zero-cent claims not checked)",
            r.acks_grants, r.acks_claims, r.acks_claims_repeated, r.acks_zero_claims
        );
    }
    println!("audit: OK");
}
