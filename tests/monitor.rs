//! The monitor end to end: its alignment rule, its series files, the
//! Prometheus text of servers and flooders read by a real parser, charts
//! drawn from a fixed series, the server's `--hlog`, and the live dashboard
//! in a real headless Chromium.
//!
//! Owns: what `hongbao monitor` promises its readers. Must not: assert a
//! speed. Every run is bounded (`--duration`, a stop flag, timeouts on
//! every child) and binds 127.0.0.1 port 0.

mod util;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use clap::Parser;
use hongbao::flood::published::FloodSeconds;
use hongbao::hlog::{decode_histogram, encode_histogram};
use hongbao::http::{self, Request, Response, get};
use hongbao::monitor::collect::Collector;
use hongbao::monitor::series::{self, KindSum, LatencyAcross, NetSecond, Row};
use hongbao::monitor::{MonitorArgs, chart, report};
use hongbao::seconds::{ClientSecond, Seconds};
use hongbao::stats::SecondStats;
use hongbao::stats::client::{Counters, Percentiles};
use util::{Client, browser, unix_now, wait_for};

/// A monitor's options as its command line gives them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: MonitorArgs,
}

fn monitor_args(args: &[&str]) -> MonitorArgs {
    Cli::parse_from(std::iter::once("monitor").chain(args.iter().copied())).args
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hongbao-monitor-{}-{name}", std::process::id()))
}

/// A server in this process with its HTTP control on 127.0.0.1:0 and
/// `envelopes_per_sec`; returns it and its control's address.
fn server_with_http(envelopes_per_sec: u64) -> (hongbao::server::ServerHandle, String) {
    let server = hongbao::server::start(&hongbao::server::ServerConfig {
        no_http: false,
        envelopes_per_sec,
        ..util::config()
    })
    .expect("server starts");
    let http = server.http_addr().expect("http on").to_string();
    (server, http)
}

/// Runs the monitor on a thread until `--duration` or `stop`; returns the
/// thread and the dashboard's address once it serves.
fn spawn_monitor(
    args: MonitorArgs,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<anyhow::Result<()>>, SocketAddr) {
    let (at_tx, at_rx) = mpsc::channel::<SocketAddr>();
    let monitor = std::thread::spawn(move || {
        hongbao::monitor::run_with(&args, &stop, move |addr| {
            let _ = at_tx.send(addr);
        })
    });
    let dashboard = at_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the dashboard's address");
    (monitor, dashboard)
}

/// The rows of a series file the monitor wrote.
#[track_caller]
fn read_rows(jsonl: &Path) -> Vec<Row> {
    let file = std::fs::File::open(jsonl).expect("the series file");
    series::read_jsonl(std::io::BufReader::new(file)).expect("rows read back")
}

fn server_second(t: u64, shakes: u64) -> SecondStats {
    let mut s = SecondStats {
        second: t,
        conns_open: 10,
        service_ns_p50: 2_000,
        service_ns_p99: 5_000,
        service_ns_p999: 9_000,
        ..SecondStats::default()
    };
    s.server.shakes = shakes;
    s.server.got = 2;
    s.generator.generated = 2;
    s
}

fn client_second(t: u64, sent: u64) -> ClientSecond {
    ClientSecond {
        second: t,
        qps: sent,
        connections: 10,
        counters: Counters {
            sent,
            answered: sent,
            ..Counters::default()
        },
        latency_us: Percentiles {
            count: sent,
            p50_us: 80.0,
            p99_us: 300.0,
            p999_us: 900.0,
            ..Percentiles::default()
        },
        ..ClientSecond::default()
    }
}

#[test]
fn seconds_align_by_label_across_skewed_clocks_and_a_missing_source_is_missing() {
    // Two servers (b's clock 2 s ahead) and a flooder that stops answering.
    let addrs: Vec<String> = ["a:1", "b:2", "c:3"].map(String::from).to_vec();
    let mut c = Collector::new(&addrs, 3, 300);
    let now = 105;
    let servers = |range: std::ops::RangeInclusive<u64>, shakes| {
        Ok(Seconds::Server {
            seconds: range.map(|t| server_second(t, shakes)).collect(),
        })
    };
    c.take(0, servers(100..=104, 1), now);
    c.take(1, servers(100..=106, 100), now);
    c.take(
        2,
        Ok(Seconds::Flooder {
            seconds: (100..=102).map(|t| client_second(t, 7)).collect(),
        }),
        now,
    );
    let rows = c.close_ready(now);
    // 100..=102: everyone reported; 103 waits for the flooder.
    assert_eq!(
        rows.iter().map(|r| r.second).collect::<Vec<_>>(),
        [100, 101, 102]
    );
    for r in &rows {
        let s = r.servers.sum.as_ref().expect("both servers");
        assert_eq!(s.server.shakes, 101, "summed by label, second {}", r.second);
        assert_eq!(s.conns_open, 20);
        assert_eq!(r.clients.sum.as_ref().map(|c| c.counters.sent), Some(7));
    }
    assert_eq!(c.sources[1].skew_secs, Some(2), "b runs 2 s ahead");
    assert_eq!(c.sources[0].skew_secs, Some(0));

    // The flooder goes down; a catches up; the lag (3 s) runs out for
    // 103..=104 at 108, for 105..=106 at 110.
    c.take(2, Err("connection refused".into()), 108);
    c.take(0, servers(100..=106, 1), 108);
    let mut rows = c.close_ready(108);
    assert_eq!(
        rows.iter().map(|r| r.second).collect::<Vec<_>>(),
        [103, 104]
    );
    rows.extend(c.close_ready(110));
    assert_eq!(
        rows.iter().map(|r| r.second).collect::<Vec<_>>(),
        [103, 104, 105, 106]
    );
    for r in &rows {
        assert_eq!(r.clients.missing, ["c:3"], "second {}", r.second);
        assert_eq!(r.clients.sum, None, "missing is never zero");
        assert_eq!(r.clients.reporting, 0);
        assert_eq!(r.servers.sum.as_ref().map(|s| s.server.shakes), Some(101));
    }
    assert_eq!(c.sources[2].missed, 4);
    assert!(!c.sources[2].up);

    // A source that never answered is of no kind: listed as unreached.
    let mut c = Collector::new(&["x:1".into()], 1, 300);
    c.take(0, Err("refused".into()), 50);
    assert!(c.close_ready(50).is_empty(), "the lag is not over");
    let rows = c.close_ready(53);
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(r.unreached, ["x:1"]);
        assert_eq!((&r.servers.sum, &r.clients.sum), (&None, &None));
    }
}

/// Two latency distributions of one second (nanoseconds), from a fixed
/// seed: `fast` is 1,000 samples of 50..150 µs; `slow` is 985 samples of
/// 150..250 µs and 15 (1.5 %) of 9.5..10.5 ms, so its own p99 is in the
/// slow tail while the union's (0.75 % slow) is not.
fn two_distributions() -> (hdrhistogram::Histogram<u64>, hdrhistogram::Histogram<u64>) {
    let mut rng = fastrand::Rng::with_seed(99);
    let mut fast = hongbao::hlog::latency_histogram();
    let mut slow = hongbao::hlog::latency_histogram();
    for _ in 0..1_000 {
        fast.record(rng.u64(50_000..150_000)).expect("in bounds");
    }
    for _ in 0..985 {
        slow.record(rng.u64(150_000..250_000)).expect("in bounds");
    }
    for _ in 0..15 {
        slow.record(rng.u64(9_500_000..10_500_000))
            .expect("in bounds");
    }
    (fast, slow)
}

/// A server's second `t` whose service times are `h`, as a server serves
/// it: percentiles and the encoded histogram (or none, as an older server).
fn server_second_of(t: u64, h: &hdrhistogram::Histogram<u64>, with_histogram: bool) -> SecondStats {
    let mut s = server_second(t, h.len());
    s.set_service_percentiles(h);
    s.service_ns_histogram = with_histogram.then(|| encode_histogram(h).expect("encodes"));
    s
}

/// A flooder's second `t` whose latencies are `h`, as a flooder serves it.
fn client_second_of(
    t: u64,
    h: &hdrhistogram::Histogram<u64>,
    with_histogram: bool,
) -> ClientSecond {
    ClientSecond {
        latency_us: Percentiles::of(h),
        latency_ns_histogram: with_histogram.then(|| encode_histogram(h).expect("encodes")),
        ..client_second(t, h.len())
    }
}

#[test]
fn latency_across_sources_is_the_merged_histograms_not_the_worst_or_the_mean() {
    let (fast, slow) = two_distributions();
    let mut union = hongbao::hlog::latency_histogram();
    union.add(&fast).expect("same bounds");
    union.add(&slow).expect("same bounds");
    let q = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q);
    let union_p99 = q(&union, 0.99);
    // The case this is about: the union's p99 is neither source's worst
    // nor their mean.
    let worst_p99 = q(&fast, 0.99).max(q(&slow, 0.99));
    let mean_p99 = (q(&fast, 0.99) + q(&slow, 0.99)) / 2;
    assert!(q(&slow, 0.99) > 9_000_000, "slow's own p99 is in its tail");
    assert!(union_p99 < 300_000, "the union's is not: {union_p99}");
    assert_ne!(union_p99, worst_p99);
    assert_ne!(union_p99, mean_p99);

    let t = 1_700_000_000;
    let addrs: Vec<String> = ["a:1", "b:2", "c:3", "d:4"].map(String::from).to_vec();
    let mut c = Collector::new(&addrs, 3, 300);
    let server = |h, with| {
        Ok(Seconds::Server {
            seconds: vec![server_second_of(t, h, with)],
        })
    };
    let client = |h, with| {
        Ok(Seconds::Flooder {
            seconds: vec![client_second_of(t, h, with)],
        })
    };
    c.take(0, server(&fast, true), t + 1);
    c.take(1, server(&slow, true), t + 1);
    c.take(2, client(&fast, true), t + 1);
    c.take(3, client(&slow, true), t + 1);
    let rows = c.close_ready(t + 1);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let s = row.servers.sum.as_ref().expect("two servers");
    assert_eq!(row.servers.latency_across, Some(LatencyAcross::Exact));
    assert_eq!(s.service_ns_p50, q(&union, 0.50));
    assert_eq!(s.service_ns_p99, union_p99);
    assert_eq!(s.service_ns_p999, q(&union, 0.999));
    assert_eq!(s.service_ns_max, union.max());
    assert_eq!(s.service_ns_histogram, None, "a row carries no histogram");
    let cl = row.clients.sum.as_ref().expect("two flooders");
    assert_eq!(row.clients.latency_across, Some(LatencyAcross::Exact));
    assert_eq!(cl.latency_us, Percentiles::of(&union));
    assert_eq!(cl.latency_us.p99_us, union_p99 as f64 / 1_000.0);
    assert_eq!(cl.latency_ns_histogram, None);
    // The series file keeps the exact figures and no histogram.
    let mut jsonl = Vec::new();
    series::write_jsonl(&mut jsonl, row).expect("written");
    let text = String::from_utf8(jsonl).expect("utf-8");
    assert!(!text.contains("histogram"), "{text}");
    assert!(text.contains(r#""latency_across":"exact""#), "{text}");
    let back = series::read_jsonl(text.as_bytes()).expect("read back");
    assert_eq!(back[0].servers, row.servers);
    assert_eq!(back[0].clients.latency_across, Some(LatencyAcross::Exact));

    // A source without histograms (an older version): the worst source's
    // percentiles, marked as the bound they are.
    let mut c = Collector::new(&addrs, 3, 300);
    c.take(0, server(&fast, true), t + 1);
    c.take(1, server(&slow, false), t + 1);
    c.take(2, client(&fast, false), t + 1);
    c.take(3, client(&slow, true), t + 1);
    let row = &c.close_ready(t + 1)[0];
    let s = row.servers.sum.as_ref().expect("two servers");
    assert_eq!(
        row.servers.latency_across,
        Some(LatencyAcross::WorstSourceBound)
    );
    assert_eq!(s.service_ns_p99, worst_p99);
    assert_eq!(s.server.shakes, 2_000, "counters still add up");
    let cl = row.clients.sum.as_ref().expect("two flooders");
    assert_eq!(
        row.clients.latency_across,
        Some(LatencyAcross::WorstSourceBound)
    );
    assert_eq!(cl.latency_us.p99_us, worst_p99 as f64 / 1_000.0);
    assert_eq!(cl.latency_us.count, 2_000);

    // One source alone is exact either way: its own percentiles.
    let mut c = Collector::new(&["a:1".into()], 3, 300);
    c.take(0, server(&slow, false), t + 1);
    let row = &c.close_ready(t + 1)[0];
    assert_eq!(row.servers.latency_across, Some(LatencyAcross::Exact));
    assert_eq!(
        row.servers.sum.as_ref().map(|s| s.service_ns_p99),
        Some(q(&slow, 0.99))
    );
}

/// A fake source on 127.0.0.1:0 serving `/seconds` for the last few
/// seconds of the real clock, shifted by `skew` seconds.
fn fake_source(kind: &'static str, skew: i64, per_second: u64) -> http::Server {
    let listener = http::bind("127.0.0.1:0".parse().expect("loopback")).expect("bind");
    http::Server::start(listener, "fake-source", move |req: &Request| {
        if req.path() != "/seconds" {
            return Response::not_found(req.path(), &["/seconds"]);
        }
        let last = (unix_now() as i64 + skew - 1) as u64;
        let range = last - 4..=last;
        let seconds = match kind {
            "server" => Seconds::Server {
                seconds: range.map(|t| server_second(t, per_second)).collect(),
            },
            _ => Seconds::Flooder {
                seconds: range.map(|t| client_second(t, per_second)).collect(),
            },
        };
        Response::ok(serde_json::to_value(seconds).expect("plain data"))
    })
    .expect("start")
}

#[test]
fn the_monitor_writes_jsonl_and_csv_and_shows_a_stopped_source_as_missing() {
    let steady = fake_source("server", 0, 10);
    let stopping = fake_source("server", 0, 1000);
    let flooder = fake_source("flooder", 1, 7);
    let (a, b, f) = (
        steady.addr().to_string(),
        stopping.addr().to_string(),
        flooder.addr().to_string(),
    );
    let jsonl = temp("series.jsonl");
    let csv = temp("series.csv");
    let _ = std::fs::remove_file(&jsonl);
    let _ = std::fs::remove_file(&csv);
    let args = monitor_args(&[
        "--source",
        &a,
        "--source",
        &b,
        "--source",
        &f,
        "--duration",
        "7",
        "--lag",
        "1",
        "--history",
        "2",
        "--jsonl",
        jsonl.to_str().expect("utf-8 path"),
        "--csv",
        csv.to_str().expect("utf-8 path"),
        "--no-http",
        "--quiet",
    ]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let run = scope.spawn(|| hongbao::monitor::run(&args, &stop));
        // Let a few seconds close with all three, then stop one for good.
        wait_for("three rows in the series", Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&jsonl).unwrap_or_default();
            (text.lines().count() >= 3).then_some(())
        });
        stopping.stop();
        run.join()
            .expect("the monitor thread")
            .expect("the monitor run");
    });
    let rows = read_rows(&jsonl);
    assert!(rows.len() >= 5, "{} rows", rows.len());
    for w in rows.windows(2) {
        assert_eq!(w[1].second, w[0].second + 1, "one row per second, in order");
    }
    let both = rows.iter().filter(|r| r.servers.missing.is_empty()).count();
    let without = rows
        .iter()
        .filter(|r| r.servers.missing == [b.clone()])
        .count();
    assert!(both >= 1 && without >= 1, "{rows:#?}");
    for r in &rows {
        // Exactly the sources not missing are summed; none: no sum at all.
        // (A fetch that timed out on a loaded machine shows the same way.)
        let present: Vec<u64> = [(&a, 10), (&b, 1000)]
            .iter()
            .filter(|(addr, _)| !r.servers.missing.contains(addr))
            .map(|(_, shakes)| *shakes)
            .collect();
        let want = (!present.is_empty()).then(|| present.iter().sum::<u64>());
        let shakes = r.servers.sum.as_ref().map(|s| s.server.shakes);
        assert_eq!(shakes, want, "second {}: {r:?}", r.second);
        assert_eq!(r.servers.reporting as usize, present.len());
        // The flooder's clock is a second ahead: its labels still align.
        let sent = r.clients.sum.as_ref().map(|c| c.counters.sent);
        let want = r.clients.missing.is_empty().then_some(7);
        assert_eq!(sent, want, "second {}", r.second);
    }

    let text = std::fs::read_to_string(&csv).expect("the CSV file");
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    assert_eq!(header, series::csv_header());
    let columns: Vec<&str> = header.split(',').collect();
    for want in [
        "second",
        "servers.sum.server.shakes",
        "servers.missing",
        "clients.sum.counters.sent",
        "clients.sum.latency_us.p99_us",
        "net.rx_packets",
    ] {
        assert!(columns.contains(&want), "{want} not in {header}");
    }
    let missing_at = columns.iter().position(|c| *c == "servers.missing");
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), rows.len());
    for (line, row) in body.iter().zip(&rows) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), columns.len(), "{line}");
        assert_eq!(cells[0], row.second.to_string());
        let missing = missing_at.map(|i| cells[i]);
        assert_eq!(missing, Some(row.servers.missing.join(";").as_str()));
    }
    let _ = std::fs::remove_file(&jsonl);
    let _ = std::fs::remove_file(&csv);
}

/// Parses Prometheus text with the prometheus-parse crate; returns the
/// samples by metric name and labels.
fn scrape(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn value(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .unwrap_or_else(|| panic!("{name} not in the scrape"));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

/// The buckets of histogram `name` in a scrape.
#[track_caller]
fn histogram(s: &prometheus_parse::Scrape, name: &str) -> Vec<prometheus_parse::HistogramCount> {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name)
        .unwrap_or_else(|| panic!("{name} not in the scrape"));
    match &sample.value {
        prometheus_parse::Value::Histogram(bs) => bs.clone(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// The value of `name{label="value"}` in a scrape.
#[track_caller]
fn labelled(s: &prometheus_parse::Scrape, name: &str, label: &str, value: &str) -> f64 {
    let text = format!("{name}{{{label}=\"{value}\"}}");
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && x.labels.get(label) == Some(value))
        .unwrap_or_else(|| panic!("{text} not in the scrape"));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn server_and_flooder_metrics_parse_with_a_prometheus_parser() {
    let (server, http) = server_with_http(0);
    let mut client = Client::connect(server.addr());
    client.login(1);
    for _ in 0..5 {
        client.shake(1);
    }
    let text = wait_for("the shakes in /metrics", util::WAIT, || {
        let (status, body) = get(&http, "/metrics", Duration::from_secs(5)).ok()?;
        assert_eq!(status, 200);
        let s = scrape(&body);
        (labelled(&s, "hongbao_server_shakes_total", "result", "none") >= 5.0).then_some(body)
    });
    let s = scrape(&text);
    assert_eq!(
        labelled(&s, "hongbao_server_shakes_total", "result", "none"),
        5.0
    );
    assert_eq!(
        labelled(&s, "hongbao_server_shakes_total", "result", "got"),
        0.0
    );
    assert_eq!(
        labelled(&s, "hongbao_server_logins_total", "result", "ok"),
        1.0
    );
    assert_eq!(value(&s, "hongbao_server_connections_open"), 1.0);
    // The service time is a histogram: cumulative buckets up to +Inf,
    // which holds every shake and the login.
    let bs = histogram(&s, "hongbao_server_service_seconds");
    assert_eq!(bs.len(), hongbao::prom::LATENCY_BUCKETS_SECONDS.len() + 1);
    assert!(bs.windows(2).all(|w| w[0].count <= w[1].count), "{bs:?}");
    let inf = bs.last().expect("+Inf");
    assert!(inf.less_than.is_infinite() && inf.count >= 5.0, "{bs:?}");
    // Every TYPE line names a metric that has samples.
    let names: BTreeSet<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = line.split(' ').next().expect("a name");
        assert!(names.contains(name), "{name} has no sample");
    }
    // /seconds is the same seconds /stats serves, with the kind.
    let (status, body) = get(&http, "/seconds", Duration::from_secs(5)).expect("GET /seconds");
    assert_eq!(status, 200);
    let seconds: Seconds = serde_json::from_str(&body).expect("the /seconds schema");
    assert!(matches!(seconds, Seconds::Server { seconds } if !seconds.is_empty()));
    drop(client);
    server.shutdown();

    // The flooder's document, from its bucket store.
    let store = FloodSeconds::default();
    let mut h = hongbao::hlog::latency_histogram();
    h.record_n(250_000, 10).expect("in bounds");
    store.push(client_second(1000, 10), &h, &h);
    let answer = store.route(&Request::new("/metrics")).expect("served");
    let (_, text) = answer.text.expect("a text body");
    let s = scrape(&text);
    assert_eq!(value(&s, "hongbao_flood_shakes_sent_total"), 10.0);
    assert_eq!(value(&s, "hongbao_flood_target_shakes_per_second"), 10.0);
    // Ten samples of 250 µs: none at 100 µs, all at 250 µs.
    let bs = histogram(&s, "hongbao_flood_latency_seconds");
    let at = |le: f64| bs.iter().find(|b| b.less_than == le).map(|b| b.count);
    assert_eq!((at(0.0001), at(0.00025)), (Some(0.0), Some(10.0)));
    let state = s
        .samples
        .iter()
        .find(|x| x.metric == "hongbao_flood_state" && x.labels.get("state") == Some("shaking"))
        .expect("a state sample");
    assert!(matches!(state.value, prometheus_parse::Value::Gauge(v) if v == 1.0));
}

/// Sixty seconds of a steady run with one second where a server was
/// missing.
fn fixed_rows() -> Vec<Row> {
    (0..60u64)
        .map(|i| {
            let t = 1_800_000_000 + i;
            let missing = if i == 30 { vec!["s:2".into()] } else { vec![] };
            Row {
                second: t,
                servers: KindSum {
                    reporting: 1,
                    idle: vec![],
                    missing,
                    sum: Some(server_second(t, 1000 + i)),
                    latency_across: Some(LatencyAcross::Exact),
                },
                clients: KindSum {
                    reporting: 1,
                    idle: vec![],
                    missing: vec![],
                    sum: Some(client_second(t, 1000)),
                    latency_across: Some(LatencyAcross::Exact),
                },
                unreached: vec![],
                net: Some(NetSecond {
                    iface: "lo".into(),
                    rx_packets: 2000,
                    tx_packets: 2000,
                    rx_bytes: 80_000,
                    tx_bytes: 80_000,
                }),
            }
        })
        .collect()
}

#[test]
fn every_chart_renders_from_a_fixed_series_with_a_gap_where_a_source_was_missing() {
    let rows = fixed_rows();
    let dir = temp("charts");
    std::fs::create_dir_all(&dir).expect("a temp dir");
    for c in chart::charts() {
        let svg = chart::svg(&c, &rows).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert!(svg.starts_with("<svg"), "{}", c.name);
        assert!(svg.contains(c.title), "{}: title", c.name);
        assert!(svg.contains(c.y_label), "{}: y label", c.name);
        assert!(svg.contains("seconds since"), "{}: x label", c.name);
        for line in &c.lines {
            assert!(svg.contains(line.name), "{}: legend {}", c.name, line.name);
        }
        let png = dir.join(format!("{}.png", c.name));
        chart::png(&c, &rows, &png).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let bytes = std::fs::read(&png).expect("the PNG");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", c.name);
    }
    // The missing second breaks the servers' lines: two runs each instead
    // of one; the clients' line goes on.
    let qps = chart::charts()
        .into_iter()
        .find(|c| c.name == "qps")
        .expect("the qps chart");
    let gapped = chart::svg(&qps, &rows).expect("drawn");
    let whole: Vec<Row> = rows
        .iter()
        .cloned()
        .map(|mut r| {
            r.servers.missing.clear();
            r
        })
        .collect();
    let whole = chart::svg(&qps, &whole).expect("drawn");
    let lines = |svg: &str| svg.matches("<polyline").count();
    assert_eq!(lines(&gapped), lines(&whole) + 1);

    // The report gathers them, opens from disk (nothing to fetch), and
    // says what was missing.
    let html = report::html(&report::Input {
        rows: &rows,
        sources: &[],
        statuses: &[],
        hlogs: &[],
        command: vec!["hongbao".into(), "monitor".into()],
    })
    .expect("the report");
    for c in chart::charts() {
        assert!(
            html.contains(&format!("id=\"chart-{}\"", c.name)),
            "{}",
            c.name
        );
    }
    assert!(!html.contains("<script"), "a static page");
    assert!(!html.contains("src=\"http"), "nothing fetched");
    assert!(html.contains("<td>with a server missing</td><td class=warn>1</td>"));
    assert!(html.contains("net.core.somaxconn"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_server_writes_its_service_time_as_an_interval_log() {
    let hlog = temp("server.hlog");
    let server = hongbao::server::start(&hongbao::server::ServerConfig {
        hlog: Some(hlog.clone()),
        ..util::config()
    })
    .expect("server starts");
    let mut client = Client::connect(server.addr());
    client.login(7);
    let shakes = 20;
    for _ in 0..shakes {
        client.shake(7);
    }
    // The shakes' second closes once the core has moved past it.
    wait_for("the shakes' second closed", util::WAIT, || {
        (server.total().server.shakes == shakes).then_some(())
    });
    drop(client);
    server.shutdown();
    let read = report::Hlog::read(&format!("server={}", hlog.display())).expect("read back");
    assert!(read.intervals >= 1);
    // One sample per answered frame: the login and every shake.
    assert_eq!(read.histogram.len(), shakes + 1);
    let text = std::fs::read_to_string(&hlog).expect("the log");
    assert!(text.contains("#[Histogram log format version 1.3]"));
    let hgrm = std::fs::read_to_string(hlog.with_extension("hgrm")).expect("the .hgrm");
    assert!(
        hgrm.contains(&format!("Total count    = {:>12}", shakes + 1)),
        "{hgrm}"
    );
    let _ = std::fs::remove_file(&hlog);
    let _ = std::fs::remove_file(hlog.with_extension("hgrm"));
}

/// The inner SVG of one chart box in a dumped DOM.
fn chart_in(dom: &str, name: &str) -> String {
    let start = dom
        .find(&format!("id=\"chart-{name}\""))
        .unwrap_or_else(|| panic!("no chart-{name} box in the page"));
    let rest = &dom[start..];
    let end = rest.find("</svg>").map_or(0, |e| e + 6);
    rest[..end].to_owned()
}

/// The browser window the dashboard is looked at in: every chart on it.
const WINDOW: (u32, u32) = (1900, 1500);

#[test]
fn the_live_dashboard_draws_its_charts_in_chromium_and_they_change() {
    let Some(chromium) = browser::chromium_or_skip() else {
        return;
    };
    // A real server whose generator makes the series move every second.
    let (server, source) = server_with_http(200);
    let args = monitor_args(&[
        "--source",
        &source,
        "--http",
        "127.0.0.1:0",
        "--lag",
        "1",
        "--history",
        "0",
        "--duration",
        "60",
        "--quiet",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let (monitor, dashboard) = spawn_monitor(args, stop.clone());
    let url = format!("http://{dashboard}/");
    let rows = |min: usize| {
        wait_for("rows on the dashboard", Duration::from_secs(30), || {
            let (_, body) = get(&dashboard.to_string(), "/sources", Duration::from_secs(5)).ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["rows"].as_u64()? as usize >= min).then_some(())
        })
    };
    let profile = temp("chromium-profile");
    let shots = [temp("dashboard-1.png"), temp("dashboard-2.png")];
    let mut doms = Vec::new();
    for (i, shot) in shots.iter().enumerate() {
        // Two seconds more each time: the charts must have moved.
        rows(2 + 3 * i);
        let dom = browser::run(&chromium, &profile, WINDOW, "--dump-dom", &url);
        browser::run(
            &chromium,
            &profile,
            WINDOW,
            &format!("--screenshot={}", shot.display()),
            &url,
        );
        doms.push(dom);
    }
    stop.store(true, Ordering::Relaxed);
    monitor
        .join()
        .expect("the monitor thread")
        .expect("the monitor run");
    server.shutdown();

    for (dom, shot) in doms.iter().zip(&shots) {
        for c in chart::charts() {
            let svg = chart_in(dom, c.name);
            assert!(
                svg.contains("<svg"),
                "chart {} not drawn in the page",
                c.name
            );
            assert!(svg.contains(c.title), "chart {} has no title", c.name);
        }
        assert!(
            chart_in(dom, "envelopes").contains("<polyline"),
            "the envelopes chart has a line"
        );
        let png = std::fs::read(shot).expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    }
    assert_ne!(
        chart_in(&doms[0], "envelopes"),
        chart_in(&doms[1], "envelopes"),
        "the chart changed between the two loads"
    );
    let a = std::fs::read(&shots[0]).expect("shot 1");
    let b = std::fs::read(&shots[1]).expect("shot 2");
    assert_ne!(a, b, "the two screenshots differ");
    for s in &shots {
        let _ = std::fs::remove_file(s);
    }
    let _ = std::fs::remove_dir_all(&profile);
}

#[test]
fn the_monitor_sums_a_real_flooder_and_server_by_second() {
    let (server, server_http) = server_with_http(50);
    let jsonl = temp("e2e.jsonl");
    let _ = std::fs::remove_file(&jsonl);
    // The flooder says where its control listens (port 0) on stderr.
    let mut flood = util::hongbao(&["flood", "--server", &server.addr().to_string()])
        .args(["--users", "50", "--qps", "200", "--warmup", "0"])
        .args(["--duration", "3", "--threads", "1", "--settle-secs", "0"])
        .args(["--http", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning hongbao flood");
    let stderr = flood.stderr.take().expect("piped");
    let (addr_tx, addr_rx) = mpsc::channel::<String>();
    let drain = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut addr_tx = Some(addr_tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("control on http://").nth(1)
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let flood_http = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the flooder's control address");
    let args = monitor_args(&[
        "--source",
        &server_http,
        "--source",
        &flood_http,
        "--duration",
        "9",
        "--lag",
        "2",
        "--jsonl",
        jsonl.to_str().expect("utf-8 path"),
        "--no-http",
        "--quiet",
    ]);
    let stop = AtomicBool::new(false);
    let monitored = hongbao::monitor::run(&args, &stop);
    // The flooder stopped by itself long before; make sure, by its pid.
    let deadline = Instant::now() + Duration::from_secs(30);
    while flood.try_wait().expect("waiting for the flooder").is_none() {
        if Instant::now() > deadline {
            let _ = flood.kill();
            let _ = flood.wait();
            panic!("the flooder did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = drain.join();
    // Each of the server's seconds carries its histogram, which is what
    // its percentiles were taken from.
    let (status, body) = get(&server_http, "/seconds", Duration::from_secs(5)).expect("GET");
    assert_eq!(status, 200);
    let Ok(Seconds::Server { seconds }) = serde_json::from_str(&body) else {
        panic!("not a server's seconds: {body}");
    };
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    let mut service_times = 0;
    for s in &seconds {
        let text = s.service_ns_histogram.as_deref().expect("a histogram");
        let h = decode_histogram(&mut deserializer, text).expect("decodes");
        let p99 = if h.is_empty() {
            0
        } else {
            h.value_at_quantile(0.99)
        };
        assert_eq!(p99, s.service_ns_p99, "second {}", s.second);
        service_times += h.len();
    }
    assert!(service_times >= 600, "{service_times} service times");
    server.shutdown();
    monitored.expect("the monitor run");

    let rows = read_rows(&jsonl);
    let with_clients: Vec<&Row> = rows.iter().filter(|r| r.clients.sum.is_some()).collect();
    // Three seconds of shaking, and the drain's second (answers only).
    assert!(with_clients.len() >= 3, "the flooder's seconds: {rows:#?}");
    let sent: u64 = with_clients
        .iter()
        .filter_map(|r| r.clients.sum.as_ref())
        .map(|c| c.counters.sent)
        .sum();
    assert_eq!(sent, 600, "every second at its rate, summed");
    let shakes: u64 = rows
        .iter()
        .filter_map(|r| r.servers.sum.as_ref())
        .map(|s| s.server.shakes)
        .sum();
    assert_eq!(shakes, 600, "the server answered each one");
    for r in &rows {
        if r.servers.sum.is_some() {
            assert_eq!(r.servers.latency_across, Some(LatencyAcross::Exact));
        }
        if r.clients.sum.is_some() {
            assert_eq!(r.clients.latency_across, Some(LatencyAcross::Exact));
        }
    }
    // After its run the flooder exits: from then on it is missing, not zero.
    let last = rows.last().expect("rows");
    if last.clients.sum.is_none() {
        assert!(
            last.clients.missing == [flood_http.clone()] || last.clients.idle == [flood_http],
            "{last:?}"
        );
    }
    let _ = std::fs::remove_file(&jsonl);
}

#[test]
fn a_source_that_registers_itself_is_collected() {
    let source = fake_source("server", 0, 10);
    let jsonl = temp("registered.jsonl");
    let _ = std::fs::remove_file(&jsonl);
    let args = monitor_args(&[
        "--http",
        "127.0.0.1:0",
        "--duration",
        "5",
        "--lag",
        "1",
        "--history",
        "2",
        "--jsonl",
        jsonl.to_str().expect("utf-8 path"),
        "--quiet",
    ]);
    let (monitor, dashboard) = spawn_monitor(args, Arc::new(AtomicBool::new(false)));
    let (status, _) = get(
        &dashboard.to_string(),
        "/register?source=not-an-address",
        Duration::from_secs(5),
    )
    .expect("GET /register");
    assert_eq!(status, 400);
    hongbao::seconds::register(&dashboard.to_string(), source.addr()).expect("registered");
    monitor
        .join()
        .expect("the monitor thread")
        .expect("the monitor run");
    let rows = read_rows(&jsonl);
    assert!(
        rows.iter()
            .any(|r| r.servers.sum.as_ref().map(|s| s.server.shakes) == Some(10)),
        "{rows:#?}"
    );
    let _ = std::fs::remove_file(&jsonl);
}
