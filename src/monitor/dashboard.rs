//! The live dashboard: one page whose charts are redrawn every second
//! while a run goes on.
//!
//! Owns: the monitor's HTTP routes: `/` (the page), `/chart?name=N` (one
//! chart as SVG, drawn by `chart` from the rows so far), `/series?since=T`
//! (rows after Unix second T, JSON), `/sources` (each source's state),
//! `/register?source=ADDR` (a source adding itself, as `flood --monitor`
//! does) and `/metrics` (the monitor's own Prometheus document: fetches
//! by result, sources up, seconds collected).
//! Must not: keep state of its own beyond the [`Board`], which the
//! monitor's loop (`run`) writes once a second and the routes only read.
//! The page's script only fetches and swaps in what the routes answer, so
//! the dashboard and the report draw the same charts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::json;

use super::chart;
use super::collect::{Kind, SourceState};
use super::series::Row;
use crate::http::{self, Request, Response};
use crate::prom::{self, Exposition};

/// Seconds of rows a dashboard chart shows: the last ten minutes, so a
/// long run stays readable and cheap to draw.
pub const WINDOW_SECS: usize = 600;

/// What the dashboard reads and the loop writes, once a second.
#[derive(Debug, Default)]
pub struct Board {
    /// Every closed row, oldest first.
    pub rows: Vec<Row>,
    /// The sources' state after the last fetch.
    pub sources: Vec<SourceState>,
    /// Sources that registered since the last tick (`/register`).
    pub registered: Vec<String>,
}

impl Board {
    /// Locks the board; each write replaces whole values, so a poisoned
    /// lock is still consistent.
    pub fn lock(board: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
        board.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts serving the dashboard for `board` on `addr`.
pub fn start(addr: SocketAddr, board: Arc<Mutex<Board>>) -> std::io::Result<http::Server> {
    let listener = http::bind(addr)?;
    http::Server::start(listener, "monitor-http", move |req| route(req, &board))
}

/// Answers one dashboard request.
pub fn route(req: &Request, board: &Mutex<Board>) -> Response {
    match req.path() {
        "/" => Response::text("text/html; charset=utf-8", page()),
        "/chart" => chart_route(req, board),
        "/series" => series_route(req, board),
        "/register" => register_route(req, board),
        "/metrics" => {
            // Copied out: the loop never waits on the document.
            let (sources, rows, last) = {
                let b = Board::lock(board);
                (
                    b.sources.clone(),
                    b.rows.len(),
                    b.rows.last().map(|r| r.second),
                )
            };
            Response::text(prom::CONTENT_TYPE, metrics(&sources, rows, last))
        }
        "/sources" => {
            let b = Board::lock(board);
            Response::ok(json!({
                "sources": b.sources,
                "last_second": b.rows.last().map(|r| r.second),
                "rows": b.rows.len(),
            }))
        }
        path => Response::not_found(
            path,
            &[
                "/",
                "/chart?name=N",
                "/series?since=T",
                "/sources",
                "/register?source=ADDR",
                "/metrics",
            ],
        ),
    }
}

/// `/chart?name=N`: one chart of the last [`WINDOW_SECS`] rows, as SVG.
/// The monitor's `/metrics`: what it fetched and collected, per source
/// (labelled by its address and, once known, its kind), and the
/// `process_*` metrics.
pub fn metrics(sources: &[SourceState], rows: usize, last_second: Option<u64>) -> String {
    let mut e = Exposition::new();
    let kind = |s: &SourceState| match s.kind {
        Some(Kind::Server) => "server",
        Some(Kind::Flooder) => "flooder",
        None => "unknown",
    };
    e.family(
        "hongbao_monitor_source_fetches_total",
        "Fetches of a source's /seconds, once a second, by result: ok, or failed (no answer in time, refused, or not understood).",
        prom::Type::Counter,
    );
    for s in sources {
        for (result, n) in [("ok", s.fetches_ok), ("failed", s.fetches_failed)] {
            e.sample(
                "hongbao_monitor_source_fetches_total",
                &[("source", &s.addr), ("kind", kind(s)), ("result", result)],
                n as f64,
            );
        }
    }
    e.family(
        "hongbao_monitor_source_up",
        "1 when the last fetch of the source succeeded.",
        prom::Type::Gauge,
    );
    for s in sources {
        e.sample(
            "hongbao_monitor_source_up",
            &[("source", &s.addr), ("kind", kind(s))],
            f64::from(u8::from(s.up)),
        );
    }
    e.family(
        "hongbao_monitor_source_seconds_total",
        "Seconds the monitor closed, per source and how the source counted in each: reported (its bucket in the sum), missed (it was down at the close); and late (buckets that arrived after their second closed, dropped).",
        prom::Type::Counter,
    );
    for s in sources {
        for (result, n) in [
            ("reported", s.reported),
            ("missed", s.missed),
            ("late", s.late),
        ] {
            e.sample(
                "hongbao_monitor_source_seconds_total",
                &[("source", &s.addr), ("kind", kind(s)), ("result", result)],
                n as f64,
            );
        }
    }
    e.counter(
        "hongbao_monitor_seconds_closed_total",
        "Seconds closed into rows (written to --jsonl and --csv, drawn on the charts).",
        rows as u64,
    );
    e.gauge(
        "hongbao_monitor_last_closed_second_timestamp_seconds",
        "The last Unix second closed into a row (0 before the first).",
        last_second.map_or(0.0, |t| t as f64),
    );
    e.process();
    e.finish()
}

fn chart_route(req: &Request, board: &Mutex<Board>) -> Response {
    let Some(name) = req.param("name") else {
        return Response::error(400, "missing name: /chart?name=qps");
    };
    let Some(c) = chart::charts().into_iter().find(|c| c.name == name) else {
        return Response::error(404, format!("no chart {name:?}"));
    };
    // Copied out, so that drawing does not hold the lock the loop needs.
    let rows = {
        let b = Board::lock(board);
        let from = b.rows.len().saturating_sub(WINDOW_SECS);
        b.rows[from..].to_vec()
    };
    match chart::svg(&c, &rows) {
        Ok(svg) => Response::text("image/svg+xml", svg),
        Err(e) => Response::error(500, e.to_string()),
    }
}

/// `/series?since=T`: the rows after Unix second T (all without it).
fn series_route(req: &Request, board: &Mutex<Board>) -> Response {
    let since = match req.param("since").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            return Response::error(400, "since must be a Unix second: /series?since=T");
        }
    };
    let b = Board::lock(board);
    let rows: Vec<_> = b.rows.iter().filter(|r| r.second > since).collect();
    Response::ok(json!({ "rows": rows }))
}

/// `/register?source=ADDR`: a source adding itself, collected from the
/// next tick.
fn register_route(req: &Request, board: &Mutex<Board>) -> Response {
    let Some(source) = req.param("source") else {
        return Response::error(400, "missing source: /register?source=HOST:PORT");
    };
    let resolves =
        std::net::ToSocketAddrs::to_socket_addrs(source).is_ok_and(|mut a| a.next().is_some());
    if !resolves {
        return Response::error(400, format!("{source:?} is not a HOST:PORT"));
    }
    Board::lock(board).registered.push(source.to_owned());
    Response::ok(json!({ "ok": true, "source": source }))
}

/// The page: a status line, a sources table and one box per chart, all
/// refreshed once a second.
fn page() -> String {
    let names: Vec<&str> = chart::charts().iter().map(|c| c.name).collect();
    let boxes: String = names
        .iter()
        .map(|n| format!("<div class=\"chart\" id=\"chart-{n}\"></div>\n"))
        .collect();
    let names_js = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hongbao monitor (live)</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
.chart {{ display: inline-block; margin: 4px; background: #fff; border: 1px solid #ddd; min-width: {w}px; min-height: {h}px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; font-size: 13px; }}
.down {{ color: #b00; font-weight: bold; }}
</style></head>
<body>
<h1>hongbao monitor <small>live</small></h1>
<p id="status">waiting for the first second…</p>
<table id="sources"><tr><th>source</th><th>kind</th><th>state</th><th>latest second</th><th>skew s</th><th>reported</th><th>missed</th><th>late</th><th>error</th></tr></table>
{boxes}
<script>
const names = {names_js};
function esc(s) {{ return String(s).replace(/[&<>"]/g, c => ({{'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}})[c]); }}
async function refresh() {{
  try {{
    const s = await (await fetch('/sources', {{cache: 'no-store'}})).json();
    document.getElementById('status').textContent =
      s.last_second === null ? 'no second closed yet' :
      'last closed second ' + s.last_second + ' (' + new Date(s.last_second * 1000).toISOString() + '), ' + s.rows + ' seconds';
    let html = '<tr><th>source</th><th>kind</th><th>state</th><th>latest second</th><th>skew s</th><th>reported</th><th>missed</th><th>late</th><th>error</th></tr>';
    for (const x of s.sources) {{
      html += '<tr><td>' + esc(x.addr) + '</td><td>' + esc(x.kind ?? '?') + '</td><td class="' + (x.up ? '' : 'down') + '">' +
        (x.up ? 'up' : 'DOWN') + '</td><td>' + esc(x.latest ?? '-') + '</td><td>' + esc(x.skew_secs ?? '-') + '</td><td>' +
        x.reported + '</td><td>' + x.missed + '</td><td>' + x.late + '</td><td>' + esc(x.error ?? '') + '</td></tr>';
    }}
    document.getElementById('sources').innerHTML = html;
    for (const n of names) {{
      const r = await fetch('/chart?name=' + n, {{cache: 'no-store'}});
      if (r.ok) document.getElementById('chart-' + n).innerHTML = await r.text();
    }}
  }} catch (e) {{
    document.getElementById('status').textContent = 'monitor unreachable: ' + e;
  }}
}}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"#,
        w = chart::WIDTH,
        h = chart::HEIGHT,
    )
}
