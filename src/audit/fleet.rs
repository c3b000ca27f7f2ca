//! `hongbao audit --cluster URLS --data-dir D1 --data-dir D2 ...`: the
//! fleet's books, every node's ledger reconciled with the engine.
//!
//! Owns: the checks that need more than one ledger. Per packet (every one a
//! node's ledger created, or mirrored a claim of): the engine has it with
//! the creator's amount; claims + refund + remaining = amount; every claim
//! by one of its targets, at least a cent, and (the engine keeps one per
//! user) at most one per user; every claim a node acknowledged (its mirror)
//! is in the engine for the same amount; a refund a creator recorded is the
//! engine's. Per budget epoch, the envelopes every node leased add up to no
//! more than its total; per node, no more envelopes generated than leased.
//! Every `grant` and paid `claim` of the flooders' `--ack-log`s is in a
//! node's ledger. Must not: write to a ledger or to the engine (it reads
//! packets with a read-only function).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;

use super::node::{AuditArgs, AuditReport, GrantFound, audit_node, check_acks};
use crate::cluster::{Engine, EngineConfig, PacketState};
use crate::ids::{Cents, EnvelopeId, PacketId, UserId};
use crate::ledger::Books;
use crate::ledger::books::ClusterPacketBook;

/// What the fleet's audit found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetReport {
    /// Each node's own audit, in `--data-dir` order.
    pub nodes: Vec<AuditReport>,
    /// Packets created in the engine by the fleet (per the ledgers).
    pub packets: u64,
    /// Their cents.
    pub cents_packets: u64,
    /// Packets the engine has, checked.
    pub packets_checked: u64,
    /// Packets a ledger created that the engine never got (the node died
    /// between its ledger and the engine; never claimable, created again
    /// at its next start).
    pub packets_not_in_engine: Vec<u32>,
    /// Paid claims in the engine, over the packets checked.
    pub claims: u64,
    /// Their cents.
    pub cents_claimed: u64,
    /// Refunds in the engine.
    pub refunds: u64,
    /// Their cents.
    pub cents_refunded: u64,
    /// Cents still claimable (live packets' remainders).
    pub cents_remaining: u64,
    /// Claims acknowledged by nodes (mirrors), each found in the engine.
    pub mirrors: u64,
    /// Envelopes leased across the fleet, per budget epoch.
    pub leased_by_epoch: BTreeMap<u32, u64>,
    /// Each epoch's total, as the engine keeps it.
    pub budget_by_epoch: BTreeMap<u32, u64>,
    /// Envelopes generated across the fleet.
    pub envelopes_generated: u64,
    /// Acknowledged grants checked.
    pub acks_grants: u64,
    /// Acknowledged paid claims checked.
    pub acks_claims: u64,
    /// Of those, repeats of a claim already acknowledged.
    pub acks_claims_repeated: u64,
    /// Acknowledged 0-cent claims (not checked).
    pub acks_zero_claims: u64,
}

/// Runs the fleet's audit; `Err` names the first violation.
pub fn audit_fleet(args: &AuditArgs) -> anyhow::Result<FleetReport> {
    let urls = args.cluster.as_deref().unwrap_or_default();
    let config = EngineConfig::parse(urls).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    let mut engine = Engine::connect(&config).context("connecting to the cluster's engine")?;
    let mut report = FleetReport::default();
    let mut nodes: Vec<(PathBuf, Books)> = Vec::new();
    for dir in &args.data_dir {
        let (r, books) = audit_node(dir)?;
        report.envelopes_generated += r.totals.envelopes_generated;
        report.nodes.push(r);
        nodes.push((dir.clone(), books));
    }
    check_leases(&nodes, &mut engine, &mut report)?;
    check_packets(&nodes, &mut engine, &mut report)?;
    // Acknowledgements: in some node's ledger. Envelope ids are a node's
    // own, so a grant is looked for in every node's grants.
    let mut grants: HashMap<EnvelopeId, Vec<(UserId, Cents)>> = HashMap::new();
    let mut claims: HashMap<(PacketId, UserId), Cents> = HashMap::new();
    for (_, books) in &nodes {
        let h = books.history().expect("books made with history");
        for (&id, &g) in &h.grants {
            grants.entry(id).or_default().push(g);
        }
        claims.extend(h.claims.iter().map(|(&k, &v)| (k, v)));
    }
    for log in &args.ack_log {
        let mut r = AuditReport::default();
        check_fleet_acks(log, &grants, &claims, &mut r)?;
        report.acks_grants += r.acks_grants;
        report.acks_claims += r.acks_claims;
        report.acks_claims_repeated += r.acks_claims_repeated;
        report.acks_zero_claims += r.acks_zero_claims;
    }
    Ok(report)
}

/// Each node generated no more envelopes than it leased (when it leased at
/// all: a node that never joined a fleet generated under its own batch),
/// and per epoch the fleet leased no more than the budget's total.
fn check_leases(
    nodes: &[(PathBuf, Books)],
    engine: &mut Engine,
    report: &mut FleetReport,
) -> anyhow::Result<()> {
    for (dir, books) in nodes {
        let t = books.totals();
        if t.envelopes_leased > 0 && t.envelopes_generated > t.envelopes_leased {
            bail!(
                "{}: {} envelopes generated but only {} leased from the fleet's budget",
                dir.display(),
                t.envelopes_generated,
                t.envelopes_leased
            );
        }
        for (&epoch, &n) in books.leases() {
            *report.leased_by_epoch.entry(epoch).or_default() += n;
        }
    }
    let totals: HashMap<u64, u64> = engine
        .budget_totals()
        .context("reading the budget's totals from the engine")?;
    for (&epoch, &leased) in &report.leased_by_epoch {
        let Some(&total) = totals.get(&u64::from(epoch)) else {
            bail!(
                "the ledgers leased {leased} envelopes in budget epoch {epoch}, which the engine does not know"
            );
        };
        report.budget_by_epoch.insert(epoch, total);
        if leased > total {
            bail!(
                "budget epoch {epoch}: the fleet leased {leased} envelopes, over its total of {total}"
            );
        }
    }
    Ok(())
}

/// Every packet a ledger names, against the engine's state of it.
fn check_packets(
    nodes: &[(PathBuf, Books)],
    engine: &mut Engine,
    report: &mut FleetReport,
) -> anyhow::Result<()> {
    let mut ids: BTreeSet<PacketId> = BTreeSet::new();
    // Every mirror: (packet, user) -> (cents, the node that acknowledged).
    let mut mirrors: Vec<(PacketId, UserId, Cents, &PathBuf)> = Vec::new();
    for (dir, books) in nodes {
        for (&id, p) in books.cluster_packets() {
            ids.insert(id);
            report.packets += 1;
            report.cents_packets += p.amount.0;
        }
        for (&(id, user), &cents) in books.cluster_claims() {
            ids.insert(id);
            mirrors.push((id, user, cents, dir));
        }
    }
    let creators: HashMap<PacketId, (&PathBuf, &ClusterPacketBook)> = nodes
        .iter()
        .flat_map(|(dir, b)| {
            b.cluster_packets()
                .iter()
                .map(move |(&id, p)| (id, (dir, p)))
        })
        .collect();
    let mut engine_claims: HashMap<(PacketId, UserId), Cents> = HashMap::new();
    for id in ids {
        let state = engine
            .packet(id)
            .with_context(|| format!("reading packet {id} from the engine"))?;
        let Some(state) = state else {
            if mirrors.iter().any(|m| m.0 == id) {
                bail!(
                    "packet {id}: a node acknowledged a claim of it, but the engine does not have it"
                );
            }
            report.packets_not_in_engine.push(id.0);
            continue;
        };
        report.packets_checked += 1;
        check_packet(
            id,
            &state,
            creators.get(&id).copied(),
            &mut engine_claims,
            report,
        )?;
    }
    for (id, user, cents, dir) in mirrors {
        match engine_claims.get(&(id, user)) {
            Some(&c) if c == cents => report.mirrors += 1,
            Some(&c) => bail!(
                "{}: acknowledged user {user}'s claim of packet {id} for {cents}, the engine paid {c}",
                dir.display()
            ),
            None => bail!(
                "{}: acknowledged user {user}'s claim of packet {id} for {cents}, which the engine does not have: an acknowledged claim was lost",
                dir.display()
            ),
        }
    }
    Ok(())
}

/// One packet the engine has, against its creator's ledger (when a node of
/// the fleet created it): the amount and the refund agree; every claim is
/// by one of its targets, at least a cent, one per user and no more than
/// its claimants; claims + refund + remaining = amount. Its claims go into
/// `engine_claims` for the mirrors' check.
fn check_packet(
    id: PacketId,
    state: &PacketState,
    creator: Option<(&PathBuf, &ClusterPacketBook)>,
    engine_claims: &mut HashMap<(PacketId, UserId), Cents>,
    report: &mut FleetReport,
) -> anyhow::Result<()> {
    if let Some((dir, book)) = creator {
        if book.amount != state.amount {
            bail!(
                "packet {id}: {} created it for {} but the engine holds {}",
                dir.display(),
                book.amount,
                state.amount
            );
        }
        if let Some(refund) = book.refunded
            && state.refunded != Some(refund)
        {
            bail!(
                "packet {id}: {} recorded a refund of {refund}, the engine {:?}",
                dir.display(),
                state.refunded
            );
        }
    }
    let mut claimed = 0u64;
    let mut users = BTreeSet::new();
    for &(user, cents) in &state.claims {
        if cents.0 == 0 {
            bail!("packet {id}: the engine paid user {user} 0 cents");
        }
        if !state.targets.contains(&user) {
            bail!("packet {id}: the engine paid user {user}, who is not one of its targets");
        }
        if !users.insert(user) {
            bail!("packet {id}: the engine paid user {user} twice");
        }
        claimed += cents.0;
        engine_claims.insert((id, user), cents);
    }
    if users.len() > state.claimants as usize {
        bail!(
            "packet {id}: {} claims paid, more than its {} claimants",
            users.len(),
            state.claimants
        );
    }
    let refund = state.refunded.map_or(0, |c| c.0);
    if claimed + refund + state.remaining.0 != state.amount.0 {
        bail!(
            "packet {id}: claims {claimed} + refund {refund} + remaining {} != amount {}",
            state.remaining,
            state.amount
        );
    }
    report.claims += users.len() as u64;
    report.cents_claimed += claimed;
    report.refunds += u64::from(state.refunded.is_some());
    report.cents_refunded += refund;
    report.cents_remaining += state.remaining.0;
    Ok(())
}

/// The flooders' acknowledgements against every node's ledger: a grant is
/// a node's (by envelope id, user and amount: every node numbers its
/// envelopes from the same first id, so one ack log holds the same id
/// granted by several nodes), a paid claim a node's mirror.
fn check_fleet_acks(
    log: &PathBuf,
    grants: &HashMap<EnvelopeId, Vec<(UserId, Cents)>>,
    claims: &HashMap<(PacketId, UserId), Cents>,
    report: &mut AuditReport,
) -> anyhow::Result<()> {
    let grant = |id: EnvelopeId, user: UserId, cents: Cents| {
        let all = grants.get(&id).map_or(&[][..], Vec::as_slice);
        match all.first() {
            _ if all.contains(&(user, cents)) => GrantFound::Same,
            Some(&(u, c)) => GrantFound::Other(u, c),
            None => GrantFound::Missing,
        }
    };
    check_acks(log, &grant, claims, report)
}

/// The fleet's audit as a table.
pub(super) fn print_fleet(r: &FleetReport) {
    println!("fleet: {} node ledgers", r.nodes.len());
    for (i, n) in r.nodes.iter().enumerate() {
        let t = &n.totals;
        println!(
            "  node {i}: {} records; envelopes generated {} (leased {}), granted {}; packets created {}, claims mirrored {}, refunds {}",
            n.records,
            t.envelopes_generated,
            t.envelopes_leased,
            t.envelopes_granted,
            t.cluster_packets_created,
            t.cluster_claims,
            t.cluster_refunds
        );
    }
    println!(
        "packets: {} created ({} cents); {} in the engine: claims {} ({} cents) + refunds {} ({} cents) + remaining {} cents = amounts",
        r.packets,
        r.cents_packets,
        r.packets_checked,
        r.claims,
        r.cents_claimed,
        r.refunds,
        r.cents_refunded,
        r.cents_remaining
    );
    if !r.packets_not_in_engine.is_empty() {
        println!(
            "  {} packet(s) in a ledger but never in the engine (never claimable): {:?}",
            r.packets_not_in_engine.len(),
            r.packets_not_in_engine
        );
    }
    println!(
        "claims acknowledged by nodes: {} mirrors, each in the engine with its amount",
        r.mirrors
    );
    for (epoch, leased) in &r.leased_by_epoch {
        println!(
            "budget epoch {epoch}: leased {leased} of {}",
            r.budget_by_epoch.get(epoch).copied().unwrap_or(0)
        );
    }
    if r.acks_grants + r.acks_claims + r.acks_zero_claims > 0 {
        println!(
            "acknowledgements: {} grants and {} paid claims all in a node's ledger ({} of them repeats; {} zero-cent claims not checked)",
            r.acks_grants, r.acks_claims, r.acks_claims_repeated, r.acks_zero_claims
        );
    }
    println!("audit: OK");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ack_log_may_hold_the_same_envelope_id_from_several_nodes() {
        let dir = std::env::temp_dir().join(format!("hongbao-fleet-acks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("acks.log");
        // Envelope 7 granted by two nodes, to two users, both acknowledged.
        // User 5's claim of packet 9 answered twice (a repeat).
        std::fs::write(
            &log,
            "grant 12 7 216\ngrant 1183 7 15\nclaim 5 9 40\nclaim 5 9 40\n",
        )
        .unwrap();
        let mut grants: HashMap<EnvelopeId, Vec<(UserId, Cents)>> = HashMap::new();
        grants.insert(
            EnvelopeId(7),
            vec![(UserId(1183), Cents(15)), (UserId(12), Cents(216))],
        );
        let claims = HashMap::from([((PacketId(9), UserId(5)), Cents(40))]);
        let mut r = AuditReport::default();
        check_fleet_acks(&log, &grants, &claims, &mut r).unwrap();
        assert_eq!(
            (r.acks_grants, r.acks_claims, r.acks_claims_repeated),
            (2, 2, 1)
        );

        // A repeat for another amount is not the ledger's claim.
        std::fs::write(&log, "claim 5 9 40\nclaim 5 9 41\n").unwrap();
        let e = check_fleet_acks(&log, &grants, &claims, &mut AuditReport::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("for 41c but the ledger paid 40c"), "{e}");

        // A grant no node made for that user and amount is named.
        std::fs::write(&log, "grant 12 7 217\n").unwrap();
        let e = check_fleet_acks(&log, &grants, &claims, &mut AuditReport::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("envelope 7 to user 12 for 217"), "{e}");
        std::fs::write(&log, "grant 12 8 216\n").unwrap();
        let e = check_fleet_acks(&log, &grants, &claims, &mut AuditReport::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("was lost"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
