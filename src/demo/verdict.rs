//! The demo's verdict: the short block a reader wants first.
//!
//! Owns: judging a finished run from its [`Summary`] — what ran (users,
//! phases, nodes, machine), whether each phase held its rate under one
//! stated rule ([`RATE_HELD_PCT`]), the latency and CPU per shake, the
//! money the ledger says moved, and the audit's verdict — as a
//! [`Verdict`] (the `verdict` object of `summary.json`), and rendering it
//! for the terminal ([`text`], printed before the details) and for the top
//! of `report.html` ([`html`], an element with id `verdict`). Must not:
//! measure or recompute a figure; every number is one the summary holds.

use std::fmt::Write as _;

use serde::Serialize;

use super::plan::PhaseSpec;
use super::summary::{AuditOutcome, PhaseSummary, Summary, books_balance, clients_line, opt};
use crate::monitor::report::esc;

/// A phase held its rate when its shakes served (the answers the clients
/// received in its seconds, less "overload" refusals) averaged at least
/// this share of the target, in percent, and the server reported every
/// second of it. 95 %: the slot rule sends the exact rate each second, so a
/// shortfall past a few percent is the server or the machine falling
/// behind, not rounding. The clients' count, not the server's: answers
/// that queue up and arrive after the phase (seconds of latency) were not
/// served at its rate.
pub const RATE_HELD_PCT: f64 = 95.0;

/// The rule, in words, as the verdict states it.
pub fn rate_rule() -> String {
    format!(
        "a phase held its rate when the shakes served (the answers the clients received in \
         its seconds, less \"overload\" refusals) averaged ≥ {RATE_HELD_PCT:.0} % of the \
         target and the server reported every second of it"
    )
}

/// What ran.
#[derive(Clone, Debug, Serialize)]
pub struct Ran {
    /// Users planned.
    pub users: u64,
    /// Users logged in when shaking began.
    pub logged_in: u64,
    /// Flooder processes.
    pub flooders: usize,
    /// hongbao server nodes (1 without `--nodes`).
    pub nodes: u32,
    /// Server worker threads per node.
    pub server_threads: usize,
    /// Cores the demo could use.
    pub cores: usize,
    /// The CPU model (`/proc/cpuinfo`), when readable.
    pub cpu_model: Option<String>,
    /// `--nodes`: the fault schedule's events as they happened (a kill, a
    /// start, a recovery seen).
    pub faults: Option<usize>,
}

/// One shaking phase, judged.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseVerdict {
    /// The target rate, shakes per second.
    pub qps_target: u64,
    /// Its length, seconds.
    pub secs: u64,
    /// Shakes served per second (the clients' answers less "overload").
    pub achieved_per_sec: f64,
    /// `achieved_per_sec` as a percentage of the target.
    pub achieved_pct: f64,
    /// Seconds of it the server reported.
    pub server_seconds: u64,
    /// Whether it held its rate ([`rate_rule`]).
    pub held: bool,
    /// Client latency (from the intended send time) median, ms.
    pub client_p50_ms: f64,
    /// Client latency 99th percentile, ms.
    pub client_p99_ms: f64,
    /// Server service time 99th percentile, µs.
    pub server_service_p99_us: f64,
    /// Server CPU per shake, µs (all threads, every node).
    pub server_cpu_us_per_shake: Option<f64>,
}

/// The money that moved, as the ledger (or the fleet audit) counts it.
#[derive(Clone, Debug, Serialize)]
pub struct MoneyMoved {
    /// Where the figures come from: `ledger` (one server's), or `fleet`
    /// (every node's ledger, packets and claims as the engine holds them).
    pub source: &'static str,
    /// Envelopes granted to users.
    pub envelopes_granted: u64,
    /// Their cents.
    pub cents_granted: u64,
    /// Packets issued (sent).
    pub packets_issued: u64,
    /// Their cents.
    pub cents_issued: u64,
    /// Claims paid.
    pub claims_paid: u64,
    /// Their cents.
    pub cents_claimed: u64,
    /// Packets refunded at expiry.
    pub refunds: u64,
    /// Their cents.
    pub cents_refunded: u64,
}

/// The run judged: the `verdict` object of `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The run completed, every phase held its rate and the audit passed.
    pub ok: bool,
    /// The verdict in one line.
    pub headline: String,
    /// What ran.
    pub ran: Ran,
    /// The rule each phase is judged by.
    pub rate_rule: String,
    /// Each shaking phase.
    pub phases: Vec<PhaseVerdict>,
    /// The money the ledger says moved; None when the audit could not
    /// read it (then `clients` says what the flooders got).
    pub money: Option<MoneyMoved>,
    /// What the flooders received, in words.
    pub clients: String,
    /// The audit passed.
    pub audit_ok: bool,
    /// The audit's verdict, in one line.
    pub audit: String,
}

/// The first line of a message (a failure's log tail follows it).
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn phase_verdict(p: &PhaseSummary) -> PhaseVerdict {
    let achieved = (p.client.answered_per_sec - p.client.overload_per_sec).max(0.0);
    let achieved_pct = if p.qps > 0 {
        achieved / p.qps as f64 * 100.0
    } else {
        100.0
    };
    PhaseVerdict {
        qps_target: p.qps,
        secs: p.secs,
        achieved_per_sec: achieved,
        achieved_pct,
        server_seconds: p.server.seconds,
        held: achieved_pct >= RATE_HELD_PCT && p.server.seconds >= p.secs,
        client_p50_ms: p.client.latency.p50_ms,
        client_p99_ms: p.client.latency.p99_ms,
        server_service_p99_us: p.server.service.p99_ms * 1e3,
        server_cpu_us_per_shake: p.server.cpu_us_per_shake,
    }
}

/// The money from the audit's report: one ledger, or the fleet's.
fn money_moved(audit: &AuditOutcome) -> Option<MoneyMoved> {
    if let Some(r) = &audit.report {
        let t = &r.totals;
        return Some(MoneyMoved {
            source: "ledger",
            envelopes_granted: t.envelopes_granted,
            cents_granted: t.cents_granted,
            packets_issued: t.packets_created,
            cents_issued: t.cents_packets,
            claims_paid: t.claims,
            cents_claimed: t.cents_claimed,
            refunds: t.refunds,
            cents_refunded: t.cents_refunded,
        });
    }
    let f = audit.fleet.as_ref()?;
    Some(MoneyMoved {
        source: "fleet",
        envelopes_granted: f.nodes.iter().map(|n| n.totals.envelopes_granted).sum(),
        cents_granted: f.nodes.iter().map(|n| n.totals.cents_granted).sum(),
        packets_issued: f.packets,
        cents_issued: f.cents_packets,
        claims_paid: f.claims,
        cents_claimed: f.cents_claimed,
        refunds: f.refunds,
        cents_refunded: f.cents_refunded,
    })
}

/// The audit's verdict in one line.
fn audit_line(audit: &AuditOutcome) -> String {
    match (&audit.report, &audit.fleet, &audit.error) {
        (_, _, Some(e)) => format!("FAILED: {}", first_line(e)),
        (Some(r), _, None) => books_balance(r),
        (None, Some(f), None) => format!(
            "OK: the fleet's books balance ({} node ledgers against the engine); {} acknowledged grants and {} paid claims all found in a node's ledger",
            f.nodes.len(),
            f.acks_grants,
            f.acks_claims
        ),
        (None, None, None) => "not run".to_owned(),
    }
}

/// Judges the run. `cpu_model` is the host's (`host::cpu_model`), passed in
/// so that the verdict of a fixture does not depend on the machine.
pub fn judge(s: &Summary, cpu_model: Option<String>) -> Verdict {
    let phases: Vec<PhaseVerdict> = s.phases.iter().map(phase_verdict).collect();
    let held = phases.iter().filter(|p| p.held).count();
    let audit_ok = s.audit.ok && s.audit.error.is_none();
    let completed = match (&s.failure, s.completed) {
        (None, true) => "completed".to_owned(),
        (Some(why), _) => format!("did not complete ({})", first_line(why)),
        (None, false) => "did not complete".to_owned(),
    };
    let rates = if phases.is_empty() {
        "no shaking phase was measured".to_owned()
    } else if held == phases.len() {
        "every phase held its rate".to_owned()
    } else {
        format!("{held} of {} phases held their rate", phases.len())
    };
    let audit = if audit_ok { "audit OK" } else { "audit FAILED" };
    let ok = s.completed && !phases.is_empty() && held == phases.len() && audit_ok;
    Verdict {
        ok,
        headline: format!(
            "{} {completed}; {rates}; {audit}",
            if ok { "✓" } else { "✗" }
        ),
        ran: Ran {
            users: s.connect.users.max(u64::from(s.plan.users)),
            logged_in: s.connect.logged_in,
            flooders: s.plan.flooders.len(),
            nodes: s.cluster.as_ref().map_or(1, |c| c.nodes),
            server_threads: s.plan.server_threads,
            cores: s.machine.cores.len(),
            cpu_model,
            faults: s.cluster.as_ref().map(|c| c.faults.len()),
        },
        rate_rule: rate_rule(),
        phases,
        money: money_moved(&s.audit),
        clients: clients_line(&s.money),
        audit_ok,
        audit: audit_line(&s.audit),
    }
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// What ran, in one line.
fn ran_line(v: &Verdict, s: &Summary) -> String {
    let r = &v.ran;
    let phases: Vec<String> = s.plan.phases.iter().map(PhaseSpec::in_words).collect();
    let threads = plural(r.server_threads, "worker thread");
    let nodes = match r.faults {
        Some(faults) => format!(
            "{} hongbao nodes of {threads} each on a Redis Cluster, {} (listed in the details)",
            r.nodes,
            plural(faults, "fault event"),
        ),
        None => format!("1 server of {threads}"),
    };
    format!(
        "{} users ({} logged in) over {} flooders, {nodes}; connect, then shake {}; machine: {} cores, {}",
        r.users,
        r.logged_in,
        r.flooders,
        phases.join(", then "),
        r.cores,
        r.cpu_model.as_deref().unwrap_or("CPU model unknown"),
    )
}

/// The money line.
fn money_line(v: &Verdict) -> String {
    match &v.money {
        Some(m) => format!(
            "{}: {} envelopes granted ({} cents); {} packets issued ({} cents), {} claims paid ({} cents), {} refunded ({} cents)",
            if m.source == "fleet" {
                "the nodes' ledgers and the engine"
            } else {
                "ledger"
            },
            m.envelopes_granted,
            m.cents_granted,
            m.packets_issued,
            m.cents_issued,
            m.claims_paid,
            m.cents_claimed,
            m.refunds,
            m.cents_refunded
        ),
        None => format!("ledger: not read (the audit failed); {}", v.clients),
    }
}

fn mark(held: bool) -> &'static str {
    if held { "✓ held" } else { "✗ not held" }
}

/// The verdict block for the terminal: its first line starts `verdict`.
pub fn text(v: &Verdict, s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "verdict   {}", v.headline);
    let _ = writeln!(out, "ran       {}", ran_line(v, s));
    let _ = writeln!(out, "rates     {}:", v.rate_rule);
    let _ = writeln!(
        out,
        "          {:<10} {:>9} {:>10} {:>7}  {:<10}  {:>19}  {:>11}  {:>13}",
        "phase",
        "target/s",
        "served/s",
        "%",
        "held",
        "client p50/p99 ms",
        "srv p99 µs",
        "CPU µs/shake",
    );
    for (i, p) in v.phases.iter().enumerate() {
        let _ = writeln!(
            out,
            "          {:<10} {:>9} {:>10.0} {:>7.1}  {:<10}  {:>19}  {:>11.1}  {:>13}",
            format!("phase {}", i + 2),
            p.qps_target,
            p.achieved_per_sec,
            p.achieved_pct,
            mark(p.held),
            format!("{:.3} / {:.3}", p.client_p50_ms, p.client_p99_ms),
            p.server_service_p99_us,
            opt(p.server_cpu_us_per_shake, 2),
        );
    }
    let _ = writeln!(out, "money     {}", money_line(v));
    let _ = writeln!(out, "audit     {}", v.audit);
    out
}

/// The verdict block for the top of `report.html`: a `<section
/// id="verdict">`, short enough for a laptop's first screen.
pub fn html(v: &Verdict, s: &Summary) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<section id=\"verdict\" class=\"{}\">\
         <style>#verdict {{ border: 2px solid #2a7; padding: 0 1em 0.5em; margin-bottom: 1em; }} \
         #verdict.bad {{ border-color: #b00; }} #verdict h2 {{ margin: 0.4em 0; }} \
         #verdict p {{ margin: 0.3em 0; }} #verdict table {{ margin: 0.3em 0; }} \
         #verdict .held {{ color: #171; }} #verdict .missed {{ color: #b00; }}</style>\
         <h2>Verdict: {}</h2>\
         <p><b>Ran</b>: {}</p>",
        if v.ok { "ok" } else { "bad" },
        esc(&v.headline),
        esc(&ran_line(v, s)),
    );
    h.push_str(
        "<table><tr><th>phase</th><th>target / s</th><th>served / s</th><th>% of target</th>\
         <th>server seconds</th><th>rate</th><th>client p50 ms</th><th>client p99 ms</th>\
         <th>server service p99 µs</th><th>server CPU µs / shake</th></tr>",
    );
    for (i, p) in v.phases.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td>phase {}</td><td>{}</td><td>{:.0}</td><td>{:.1}</td><td>{} of {}</td>\
             <td class=\"{}\">{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.1}</td><td>{}</td></tr>",
            i + 2,
            p.qps_target,
            p.achieved_per_sec,
            p.achieved_pct,
            p.server_seconds,
            p.secs,
            if p.held { "held" } else { "missed" },
            mark(p.held),
            p.client_p50_ms,
            p.client_p99_ms,
            p.server_service_p99_us,
            opt(p.server_cpu_us_per_shake, 2),
        );
    }
    let _ = write!(
        h,
        "</table><p><small>Rule: {}.</small></p>\
         <p><b>Money</b>: {}.</p>\
         <p><b>Audit</b>: <span class=\"{}\">{}</span></p>\
         <p><small>Details follow: completeness, the summary per chart, latency, the charts, the sources and the machine.</small></p>\
         </section>",
        esc(&v.rate_rule),
        esc(&money_line(v)),
        if v.audit_ok { "held" } else { "missed" },
        esc(&v.audit),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditReport;
    use crate::demo::plan::{self, Machine, Wish};
    use crate::demo::summary::{
        ClientPhase, ConnectSummary, MoneySummary, Percentiles, SCHEMA_VERSION, ServerPhase,
    };

    /// A two-phase run of 600 users on 2 cores: the first phase served at
    /// 99.9 % of its target, the second at `second_pct`; the ledger's
    /// figures when `audit_ok`.
    fn fixture(second_pct: f64, audit_ok: bool) -> Summary {
        let machine = Machine::for_tests(2, 20_000);
        let wish = Wish {
            users: Some(600),
            phases: "1000x3s,2000x3s".into(),
            duration: 0,
            threads: None,
            flooders: 2,
        };
        let plan = plan::plan(&machine, &wish).expect("a plan");
        let phase = |qps: u64, pct: f64, p99_ms: f64| PhaseSummary {
            qps,
            secs: 3,
            unix_start: 1_795_331_164,
            client: ClientPhase {
                sent_per_sec: qps as f64,
                answered_per_sec: qps as f64 * pct / 100.0 + 10.0,
                overload_per_sec: 10.0,
                latency: Percentiles {
                    count: qps * 3,
                    p50_ms: 0.25,
                    p99_ms,
                    p999_ms: 3.0,
                    max_ms: 4.0,
                },
                ..ClientPhase::default()
            },
            server: ServerPhase {
                seconds: 3,
                service: Percentiles {
                    p99_ms: 0.0125,
                    ..Percentiles::default()
                },
                cpu_us_per_shake: Some(7.5),
                ..ServerPhase::default()
            },
        };
        let mut report = AuditReport {
            acks_grants: 1_200,
            acks_claims: 170,
            ..AuditReport::default()
        };
        report.totals.envelopes_granted = 1_200;
        report.totals.cents_granted = 123_456;
        report.totals.packets_created = 60;
        report.totals.cents_packets = 9_000;
        report.totals.claims = 170;
        report.totals.cents_claimed = 8_000;
        Summary {
            schema: SCHEMA_VERSION,
            started_unix: 1_795_331_100,
            completed: true,
            failure: None,
            machine,
            connect: ConnectSummary {
                users: 600,
                logged_in: 600,
                ..ConnectSummary::default()
            },
            phases: vec![phase(1000, 99.9, 1.5), phase(2000, second_pct, 2.5)],
            money: MoneySummary::default(),
            audit: if audit_ok {
                AuditOutcome {
                    ok: true,
                    error: None,
                    report: Some(report),
                    fleet: None,
                }
            } else {
                AuditOutcome {
                    ok: false,
                    error: Some("claim 7 of packet 3 not in the ledger\nmore".into()),
                    report: None,
                    fleet: None,
                }
            },
            plan,
            cluster: None,
            children: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn a_run_that_held_every_rate_and_balanced_is_ok() {
        let s = fixture(98.0, true);
        let v = judge(&s, Some("Test CPU @ 1.00GHz".into()));
        assert!(v.ok, "{v:?}");
        assert_eq!(
            v.headline,
            "✓ completed; every phase held its rate; audit OK"
        );
        assert!(v.phases.iter().all(|p| p.held));
        // Overload answers are not served shakes.
        assert!((v.phases[1].achieved_per_sec - 1960.0).abs() < 1e-6);
        let m = v.money.as_ref().expect("the ledger's money");
        assert_eq!(
            (m.cents_granted, m.cents_issued, m.cents_claimed),
            (123_456, 9_000, 8_000)
        );

        let t = text(&v, &s);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("verdict   ✓ completed"), "{t}");
        assert!(
            lines[1].starts_with("ran       600 users (600 logged in) over 2 flooders, 1 server"),
            "{t}"
        );
        assert!(lines[1].contains("2 cores, Test CPU @ 1.00GHz"), "{t}");
        assert!(lines[2].contains("≥ 95 %"), "{t}");
        assert!(t.contains("phase 2"), "{t}");
        assert!(t.contains("phase 3"), "{t}");
        assert!(t.contains("✓ held"), "{t}");
        assert!(t.contains("0.250 / 2.500"), "client p50/p99: {t}");
        assert!(t.contains("12.5"), "server p99 µs: {t}");
        assert!(t.contains("7.50"), "CPU per shake: {t}");
        assert!(t.contains("123456 cents"), "{t}");
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("audit     OK: the books balance"),
            "{t}"
        );
    }

    #[test]
    fn a_missed_rate_or_a_failed_audit_makes_the_verdict_fail() {
        let s = fixture(90.0, true);
        let v = judge(&s, None);
        assert!(!v.ok);
        assert!(!v.phases[1].held && v.phases[0].held);
        assert_eq!(
            v.headline,
            "✗ completed; 1 of 2 phases held their rate; audit OK"
        );
        assert!(text(&v, &s).contains("✗ not held"));

        // A phase the server did not report whole is not held either.
        let mut s = fixture(99.0, true);
        s.phases[0].server.seconds = 2;
        assert!(!judge(&s, None).phases[0].held);

        let mut s = fixture(99.0, false);
        s.completed = false;
        s.failure = Some("interrupted".into());
        let v = judge(&s, None);
        assert_eq!(
            v.headline,
            "✗ did not complete (interrupted); every phase held its rate; audit FAILED"
        );
        assert_eq!(v.audit, "FAILED: claim 7 of packet 3 not in the ledger");
        assert!(v.money.is_none());
        assert!(text(&v, &s).contains("ledger: not read (the audit failed); clients got"));
    }

    #[test]
    fn the_demo_ends_with_the_verdict_then_the_details() {
        let s = fixture(98.0, true);
        let end = crate::demo::end_block(&s, &judge(&s, None));
        let blocks: Vec<&str> = end.split("\n\n").collect();
        assert!(blocks[0].starts_with("verdict   ✓"), "{end}");
        assert!(
            blocks[0]
                .lines()
                .last()
                .unwrap()
                .starts_with("audit     OK"),
            "{end}"
        );
        assert!(blocks[1].starts_with("connect   600 of 600 users"), "{end}");
        assert!(end.find("verdict").unwrap() < end.find("sent/s").unwrap());
    }

    #[test]
    fn summary_json_keeps_every_key_and_adds_the_verdict() {
        let s = fixture(98.0, true);
        let v = judge(&s, None);
        let plain = serde_json::to_value(&s).unwrap();
        let mut file = serde_json::to_value(crate::demo::SummaryFile {
            summary: &s,
            verdict: &v,
        })
        .unwrap();
        let verdict = file
            .as_object_mut()
            .and_then(|o| o.remove("verdict"))
            .expect("a verdict key");
        assert_eq!(file, plain, "the summary's own keys are unchanged");
        assert_eq!(verdict["ok"], true);
        assert_eq!(verdict["phases"][1]["qps_target"], 2000);
        assert_eq!(verdict["money"]["cents_claimed"], 8_000);
    }

    #[test]
    fn the_html_block_is_one_section_with_the_audit_verdict() {
        let s = fixture(98.0, true);
        let v = judge(&s, Some("<CPU & co>".into()));
        let h = html(&v, &s);
        assert!(
            h.starts_with("<section id=\"verdict\" class=\"ok\">"),
            "{h}"
        );
        assert!(h.ends_with("</section>"), "{h}");
        assert_eq!(h.matches("<section").count(), 1);
        assert!(h.contains("&lt;CPU &amp; co&gt;"), "escaped: {h}");
        assert!(h.contains("OK: the books balance"), "{h}");
        assert_eq!(h.matches("✓ held").count(), 2, "{h}");
        let bad = judge(&fixture(50.0, true), None);
        assert!(html(&bad, &s).contains("class=\"bad\""));
    }
}
