//! The monitor's series: one [`Row`] per second, every source summed by
//! kind, and its two file forms (JSON lines and CSV).
//!
//! Owns: the row schema, how a kind's seconds are summed ([`add_server`],
//! [`add_client`]), and writing and reading rows. Must not: fetch anything
//! or read a clock. A kind with no source reporting a second has no sum
//! (`null` in JSON, empty cells in CSV), never a zero.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::seconds::ClientSecond;
use crate::stats::SecondStats;

/// Version of the row layout; bump when a field changes meaning or goes.
pub const SCHEMA_VERSION: u32 = 1;

/// One second of the whole experiment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The Unix second, as the sources label it.
    pub second: u64,
    /// Every server's second, summed.
    pub servers: KindSum<SecondStats>,
    /// Every flooder's second, summed.
    pub clients: KindSum<ClientSecond>,
    /// Sources that never answered, so of no known kind.
    pub unreached: Vec<String>,
    /// The monitor host's network interface over the second (its own
    /// clock's second); None when it was not sampled.
    pub net: Option<NetSecond>,
}

/// One kind's sources in one second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindSum<T> {
    /// Sources whose bucket for the second is in `sum`.
    pub reporting: u32,
    /// Sources that answered but had no bucket for the second (a flooder
    /// not shaking yet or any more; a clock behind by more than the lag).
    pub idle: Vec<String>,
    /// Sources that did not answer when the second closed.
    pub missing: Vec<String>,
    /// The reporting sources summed; None when none reported.
    pub sum: Option<T>,
    /// How the sum's latency percentiles (servers' service time, clients'
    /// latency) were taken across its sources; None when none reported,
    /// and in rows of a monitor older than this field (which took the
    /// worst source's).
    #[serde(default)]
    pub latency_across: Option<LatencyAcross>,
}

impl<T> Default for KindSum<T> {
    fn default() -> Self {
        KindSum {
            reporting: 0,
            idle: Vec::new(),
            missing: Vec::new(),
            sum: None,
            latency_across: None,
        }
    }
}

/// How a second's latency percentiles were taken across a kind's sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyAcross {
    /// Exact: the percentiles of every reporting source's histogram of the
    /// second added up (one source: its own).
    Exact,
    /// An upper bound: some reporting source sent no histogram (an older
    /// version), so each percentile is the worst source's. If every source
    /// has at most 1 % of its samples above x, so does their union; the
    /// merged figure can be far lower.
    WorstSourceBound,
}

/// The monitor host's interface counters over one second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetSecond {
    /// The interface, as /proc/net/dev names it.
    pub iface: String,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Adds a server's second into a sum. Counters and gauges add up (each
/// server has its own connections and rings); service-time percentiles
/// take the worst server's, an upper bound of the merged percentile
/// (if each server has at most 1 % of its samples above x, so does their
/// union), which the collector replaces with the percentiles of the
/// servers' histograms added up when every server sent one. The
/// histogram itself is not summed here: the collector takes it out first.
///
/// The struct is destructured exhaustively, so a field added to it fails to
/// compile here until it is given its rule, instead of being taken from
/// the first server alone.
pub fn add_server(sum: &mut SecondStats, s: &SecondStats) {
    let SecondStats {
        second: _,
        server,
        generator,
        conns_open,
        envelopes_in_rings,
        envelopes_ahead,
        ledger,
        service_ns_p50,
        service_ns_p99,
        service_ns_p999,
        service_ns_max,
        service_ns_histogram: _,
    } = s;
    sum.server.add(server);
    sum.generator.add(generator);
    sum.ledger.add(ledger);
    sum.conns_open += conns_open;
    sum.envelopes_in_rings += envelopes_in_rings;
    sum.envelopes_ahead += envelopes_ahead;
    sum.service_ns_p50 = sum.service_ns_p50.max(*service_ns_p50);
    sum.service_ns_p99 = sum.service_ns_p99.max(*service_ns_p99);
    sum.service_ns_p999 = sum.service_ns_p999.max(*service_ns_p999);
    sum.service_ns_max = sum.service_ns_max.max(*service_ns_max);
}

/// Adds a flooder's second into a sum. Counters and connections add up;
/// `qps` is the global plan every flooder shares (the largest seen);
/// percentiles take the worst flooder's (an upper bound, as for servers;
/// for latency the collector replaces it with the merged histograms'
/// when every flooder sent one; send lag stays the bound), sample counts
/// add up. Exhaustive, as [`add_server`].
pub fn add_client(sum: &mut ClientSecond, c: &ClientSecond) {
    let ClientSecond {
        second: _,
        run_second,
        qps,
        connections,
        counters,
        latency_us,
        send_lag_us,
        thread_cpu_max_pct,
        latency_ns_histogram: _,
    } = c;
    sum.counters.add(counters);
    sum.connections += connections;
    sum.qps = sum.qps.max(*qps);
    sum.run_second = sum.run_second.max(*run_second);
    sum.thread_cpu_max_pct = sum.thread_cpu_max_pct.max(*thread_cpu_max_pct);
    for (a, b) in [
        (&mut sum.latency_us, latency_us),
        (&mut sum.send_lag_us, send_lag_us),
    ] {
        a.count += b.count;
        a.mean_us = a.mean_us.max(b.mean_us);
        a.p50_us = a.p50_us.max(b.p50_us);
        a.p90_us = a.p90_us.max(b.p90_us);
        a.p99_us = a.p99_us.max(b.p99_us);
        a.p999_us = a.p999_us.max(b.p999_us);
        a.max_us = a.max_us.max(b.max_us);
    }
}

/// Writes one row as a JSON line.
pub fn write_jsonl(out: &mut impl Write, row: &Row) -> io::Result<()> {
    serde_json::to_writer(&mut *out, row)?;
    out.write_all(b"\n")
}

/// Reads rows written by [`write_jsonl`]; a line that is not a row is an
/// error naming its number.
pub fn read_jsonl(input: impl BufRead) -> io::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1))
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// The CSV columns: every leaf of a row whose every optional part is
/// present, as dotted paths, in a fixed (sorted) order.
pub fn csv_columns() -> Vec<String> {
    let full = Row {
        servers: KindSum {
            sum: Some(SecondStats::default()),
            ..KindSum::default()
        },
        clients: KindSum {
            sum: Some(ClientSecond::default()),
            ..KindSum::default()
        },
        net: Some(NetSecond::default()),
        ..Row::default()
    };
    let mut cells = Map::new();
    flatten("", &to_value(&full), &mut cells);
    let mut columns: Vec<String> = cells.into_iter().map(|(k, _)| k).collect();
    // The second first, then the rest as sorted.
    columns.retain(|c| c != "second");
    columns.insert(0, "second".into());
    columns
}

/// The CSV header line.
pub fn csv_header() -> String {
    csv_columns().join(",")
}

/// One row as a CSV line in [`csv_columns`]' order: a missing part leaves
/// its cells empty; a list of sources is joined with `;`.
pub fn csv_line(row: &Row, columns: &[String]) -> String {
    let mut cells = Map::new();
    flatten("", &to_value(row), &mut cells);
    let text: Vec<String> = columns
        .iter()
        .map(|c| match cells.get(c) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => csv_quote(s),
            Some(v) => v.to_string(),
        })
        .collect();
    text.join(",")
}

fn to_value(row: &Row) -> Value {
    // A row is plain numbers, strings and lists: it always serialises.
    serde_json::to_value(row).unwrap_or(Value::Null)
}

fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) => {
            let joined: Vec<String> = items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect();
            out.insert(prefix.to_owned(), Value::String(joined.join(";")));
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

fn csv_quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_of_a_missing_kind_are_empty() {
        let columns = csv_columns();
        let row = Row {
            second: 7,
            servers: KindSum {
                reporting: 0,
                missing: vec!["a:1".into(), "b:2".into()],
                ..KindSum::default()
            },
            ..Row::default()
        };
        let line = csv_line(&row, &columns);
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), columns.len());
        let at = |name: &str| {
            let i = columns.iter().position(|c| c == name).expect(name);
            cells[i]
        };
        assert_eq!(at("second"), "7");
        assert_eq!(at("servers.missing"), "a:1;b:2");
        assert_eq!(at("servers.sum.server.shakes"), "");
        assert_eq!(at("servers.reporting"), "0");
    }
}
