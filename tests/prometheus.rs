//! Prometheus for real: `promtool check metrics` on every `/metrics`
//! document (server, flooder, monitor, and the server's cluster-engine
//! families), `promtool check rules` and `promtool test rules` on
//! `deploy/prometheus/`, and Debian's `prometheus` scraping a live server
//! and flooder on loopback every second, its answers to `rate()` and
//! `histogram_quantile()` checked against what the flooder and the server
//! measured themselves (their `/seconds`).
//!
//! Needs Debian's `prometheus` package (`/usr/bin/prometheus`,
//! `/usr/bin/promtool`; `bash .ci/run` installs it). Without it these
//! tests fail saying so, unless `HONGBAO_SKIP_PROMETHEUS=1`, when they say
//! loudly that they did not run. Every process started here is stopped by
//! its pid (a guard stops it on failure too); every wait has a deadline.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hongbao::monitor::MonitorArgs;
use hongbao::prom::LATENCY_BUCKETS_SECONDS;
use hongbao::seconds::Seconds;
use serde_json::Value;
use util::{Spawned, http_get, http_get_text, wait_for};

/// Set to 1 to skip these tests where Prometheus cannot be installed.
const SKIP: &str = "HONGBAO_SKIP_PROMETHEUS";
/// How long the scrape test may wait for Prometheus to be ready, for its
/// targets to be up and for enough samples to be scraped.
const DEADLINE: Duration = Duration::from_secs(45);
/// The shakes per second the flooder is asked for.
const QPS: u64 = 400;
/// The window of `rate()`: ten scrapes at one a second.
const RATE_WINDOW_SECS: u64 = 10;
/// How far Prometheus' `rate()` may be from the flooder's target and from
/// its own count over the same seconds: a rate over ten one-second scrapes
/// of a counter that moves once a second is off by about one second's
/// worth at its edges, 10 %; the rest is margin for a busy machine.
const RATE_TOLERANCE: f64 = 0.15;

/// `/usr/bin/NAME` of Debian's prometheus package (or NAME on the PATH);
/// None, said loudly, when it is absent and [`SKIP`] is set.
#[track_caller]
fn tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(name))
        .chain([Path::new("/usr/bin").join(name)])
        .find(|p| p.is_file());
    if on_path.is_some() {
        return on_path;
    }
    if std::env::var(SKIP).is_ok_and(|v| v == "1") {
        eprintln!(
            "\n!!! SKIPPED: the Prometheus tests did NOT run: {name} is not installed ({SKIP}=1) !!!\n"
        );
        return None;
    }
    panic!(
        "{name} is not installed: these tests need Debian's prometheus package \
         (apt-get install prometheus; bash .ci/run installs it), or set {SKIP}=1 to skip them"
    );
}

/// Runs `promtool ARGS` with `stdin` as its input, bounded in time;
/// returns its exit success and what it printed.
#[track_caller]
fn promtool(promtool: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning promtool");
    let pid = child.id();
    let mut input = child.stdin.take().expect("stdin piped");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("promtool's output"),
        Err(_) => {
            util::signal(pid, libc::SIGKILL);
            panic!("promtool {args:?} did not finish within 60 s (killed pid {pid})");
        }
    };
    let _ = writer.join();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// `promtool check metrics` finds no problem in `text`.
#[track_caller]
fn check_metrics(tool: &Path, what: &str, text: &str) {
    assert!(text.contains("# TYPE "), "{what}: no metrics in\n{text}");
    let (ok, said) = promtool(tool, &["check", "metrics"], text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics on the {what}'s /metrics: {said}\n--- the document:\n{text}"
    );
}

/// A flooder started for a test, killed (by its pid) when dropped.
struct Flooder {
    child: Child,
    control: SocketAddr,
}

impl Flooder {
    fn start(server: SocketAddr, users: u64, qps: u64, secs: u64) -> Flooder {
        let (server, users, qps, secs) = (
            server.to_string(),
            users.to_string(),
            qps.to_string(),
            secs.to_string(),
        );
        let (child, control, _drain) = util::spawn_flood_with_control(&[
            "--server",
            &server,
            "--users",
            &users,
            "--qps",
            &qps,
            "--warmup",
            "0",
            "--duration",
            &secs,
            "--threads",
            "1",
            "--http",
            "127.0.0.1:0",
        ]);
        Flooder { child, control }
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with its HTTP control, loopback, one worker, no per-connection
/// limit (the flooder's users each send one shake a second anyway).
fn server() -> (Spawned, SocketAddr) {
    let server = Spawned::on_loopback(1, &["--conn-qps-max", "0"]);
    let http = server.http.expect("http on");
    (server, http)
}

#[test]
fn promtool_finds_no_problem_in_any_metrics_document() {
    let Some(promtool_path) = tool("promtool") else {
        return;
    };
    let (server, http) = server();
    let flooder = Flooder::start(server.addr, 20, 40, 30);
    // The flooder's document once it has latencies; the server's once it
    // has served them.
    let flood_text = wait_for("the flooder's latencies in /metrics", util::WAIT, || {
        let (code, text) = http_get_text(flooder.control, "/metrics");
        (code == 200 && !text.contains("hongbao_flood_latency_seconds_count 0\n")).then_some(text)
    });
    check_metrics(&promtool_path, "flooder", &flood_text);
    let server_text = wait_for("the server's shakes in /metrics", util::WAIT, || {
        let (code, text) = http_get_text(http, "/metrics");
        (code == 200 && !text.contains("hongbao_server_service_seconds_count 0\n")).then_some(text)
    });
    check_metrics(&promtool_path, "server", &server_text);

    // The monitor's, once it has closed a second of both.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MonitorArgs,
    }
    let (h, f) = (http.to_string(), flooder.control.to_string());
    let args = Cli::parse_from([
        "monitor",
        "--source",
        &h,
        "--source",
        &f,
        "--http",
        "127.0.0.1:0",
        "--quiet",
        "--duration",
        "60",
    ])
    .args;
    let stop = Arc::new(AtomicBool::new(false));
    let (at_tx, at_rx) = mpsc::channel();
    let monitor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            hongbao::monitor::run_with(&args, &stop, move |addr| {
                let _ = at_tx.send(addr);
            })
        })
    };
    let dashboard: SocketAddr = at_rx
        .recv_timeout(util::WAIT)
        .expect("the monitor's address");
    let monitor_text = wait_for(
        "a closed second in the monitor's /metrics",
        util::WAIT,
        || {
            let (code, text) = http_get_text(dashboard, "/metrics");
            (code == 200 && !text.contains("hongbao_monitor_seconds_closed_total 0\n"))
                .then_some(text)
        },
    );
    stop.store(true, Ordering::Relaxed);
    check_metrics(&promtool_path, "monitor", &monitor_text);
    assert!(
        monitor_text.contains(&format!(
            "hongbao_monitor_source_up{{source=\"{h}\",kind=\"server\"}} 1"
        )),
        "{monitor_text}"
    );
    monitor
        .join()
        .expect("the monitor thread")
        .expect("the monitor ran");

    // The cluster engine's families, as a --cluster server adds them.
    let engine = hongbao::server::engine::EngineStatus::default().report(3);
    let total = hongbao::stats::SecondStats::default();
    let cluster_text = hongbao::server::published::metrics(&hongbao::server::published::Figures {
        total: &total,
        last: None,
        service: &hongbao::prom::Buckets::default(),
        conns_cap: Some(100),
        engine: Some(&engine),
    });
    assert!(cluster_text.contains("hongbao_server_engine_claims_total{result=\"unconfirmed\"} 0"));
    check_metrics(&promtool_path, "cluster server", &cluster_text);
    drop(flooder);
    drop(server);
}

#[test]
fn promtool_checks_and_tests_the_operators_rules() {
    let Some(promtool_path) = tool("promtool") else {
        return;
    };
    let (ok, said) = promtool(
        &promtool_path,
        &["check", "rules", "deploy/prometheus/rules.yml"],
        "",
    );
    assert!(ok, "promtool check rules: {said}");
    let (ok, said) = promtool(
        &promtool_path,
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        "",
    );
    assert!(ok, "promtool check config: {said}");
    let (ok, said) = promtool(
        &promtool_path,
        &["test", "rules", "deploy/prometheus/rules_test.yml"],
        "",
    );
    assert!(ok, "promtool test rules: {said}");
}

/// A Prometheus started for a test, stopped by its pid when dropped (on a
/// failure too), its scratch directory removed.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(binary: &Path, targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = util::scratch_dir("prometheus");
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        // A free port: bound, read back and released; Prometheus binds it
        // next (loopback, so only a test racing for the same ephemeral
        // port could take it first).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log again"))
            .stderr(log)
            .spawn()
            .expect("spawning prometheus");
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/...`, its `data` when the status is success. Asked
    /// as HTTP/1.0, so that a long answer comes whole, not chunked.
    fn api(&self, target: &str) -> Option<Value> {
        use std::io::Read;
        let mut stream =
            std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .ok()?;
        write!(
            stream,
            "GET {target} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut answer = String::new();
        stream.take(64 << 20).read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let v: Value = serde_json::from_str(body).ok()?;
        (head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"))
            .then_some(())
            .filter(|()| v["status"] == "success")
            .map(|()| v["data"].clone())
    }

    /// The one value of an instant `query` at Unix time `at`; None when
    /// it has no result yet.
    fn query(&self, query: &str, at: f64) -> Option<f64> {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .append_pair("time", &format!("{at:.3}"))
            .finish();
        let data = self.api(&format!("/api/v1/query?{q}"))?;
        let result = data["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        let x: f64 = result[0]["value"][1].as_str()?.parse().ok()?;
        x.is_finite().then_some(x)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bucket of [`LATENCY_BUCKETS_SECONDS`] that holds `seconds`:
/// `(lower, upper]` bounds (0 below the first; +Inf past the last).
fn bucket_of(seconds: f64) -> (f64, f64) {
    let i = LATENCY_BUCKETS_SECONDS.iter().position(|&le| seconds <= le);
    match i {
        Some(0) => (0.0, LATENCY_BUCKETS_SECONDS[0]),
        Some(i) => (LATENCY_BUCKETS_SECONDS[i - 1], LATENCY_BUCKETS_SECONDS[i]),
        None => (
            LATENCY_BUCKETS_SECONDS[LATENCY_BUCKETS_SECONDS.len() - 1],
            f64::INFINITY,
        ),
    }
}

/// What a source measured up to its second `last`, from its `/seconds`:
/// its latency histogram over every second up to `last` and the count
/// per second over the last [`RATE_WINDOW_SECS`] of them.
fn measured(http: SocketAddr, last: u64) -> (Histogram<u64>, f64) {
    let (code, body) = http_get_text(http, "/seconds");
    assert_eq!(code, 200, "GET /seconds: {body}");
    let seconds: Seconds = serde_json::from_str(&body).expect("the /seconds schema");
    let mut h = hongbao::hlog::latency_histogram();
    let mut d = Deserializer::new();
    let mut in_window = 0;
    let from = last - RATE_WINDOW_SECS;
    let mut add = |second: u64, text: Option<&String>, n: u64| {
        if second > last {
            return;
        }
        if let Some(text) = text {
            let one = hongbao::hlog::decode_histogram(&mut d, text).expect("a histogram");
            h.add(&one).expect("same bounds");
        }
        if second > from {
            in_window += n;
        }
    };
    match seconds {
        Seconds::Server { seconds } => {
            for s in &seconds {
                add(s.second, s.service_ns_histogram.as_ref(), s.server.shakes);
            }
        }
        Seconds::Flooder { seconds } => {
            for s in &seconds {
                add(s.second, s.latency_ns_histogram.as_ref(), s.counters.sent);
            }
        }
    }
    (h, in_window as f64 / RATE_WINDOW_SECS as f64)
}

/// Checks that `p99` from Prometheus' histogram lies in the bucket of the
/// HdrHistogram's own p99 (or a neighbour, where that p99 sits within the
/// HdrHistogram's 0.1 % precision of a bound); returns the figures.
#[track_caller]
fn p99_in_its_bucket(what: &str, from_prometheus: f64, h: &Histogram<u64>) -> String {
    let hdr = h.value_at_quantile(0.99) as f64 / 1e9;
    let (lower, _) = bucket_of(hdr / 1.001);
    let (_, upper) = bucket_of(hdr * 1.001);
    assert!(
        (lower..=upper).contains(&from_prometheus),
        "{what}: histogram_quantile(0.99) = {from_prometheus} s is outside the bucket \
         ({lower}, {upper}] s of the p99 the process measured, {hdr} s ({} samples)",
        h.len()
    );
    format!(
        "{what} p99: Prometheus {:.1} us, measured {:.1} us, bucket ({:.1}, {:.1}] us",
        from_prometheus * 1e6,
        hdr * 1e6,
        lower * 1e6,
        upper * 1e6
    )
}

#[test]
fn a_real_prometheus_scrapes_server_and_flooder_and_agrees_with_them() {
    let Some(binary) = tool("prometheus") else {
        return;
    };
    let started = Instant::now();
    let (server, http) = server();
    let flooder = Flooder::start(server.addr, QPS, QPS, 60);
    let prometheus = Prometheus::start(
        &binary,
        &[("hongbao_server", http), ("hongbao_flood", flooder.control)],
    );
    let fail = |what: &str| -> ! {
        panic!(
            "{what} (after {:.0?}); Prometheus said:\n{}",
            started.elapsed(),
            prometheus.log()
        )
    };
    let ready = Instant::now() + DEADLINE;
    // Both targets up.
    loop {
        let up = prometheus.api("/api/v1/targets").is_some_and(|d| {
            let active = d["activeTargets"].as_array().cloned().unwrap_or_default();
            active.len() == 2 && active.iter().all(|t| t["health"] == "up")
        });
        if up {
            break;
        }
        if Instant::now() > ready {
            fail("Prometheus' two targets were not up in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every rule of deploy/prometheus/rules.yml loaded and evaluates.
    let rules = prometheus
        .api("/api/v1/rules")
        .unwrap_or_else(|| fail("no /api/v1/rules"));
    let groups = rules["groups"].as_array().cloned().unwrap_or_default();
    assert!(!groups.is_empty(), "no rule group loaded: {rules}");
    for g in &groups {
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            assert_ne!(r["health"], "err", "a rule fails to evaluate: {r}");
        }
    }
    // The flooder shaking for a whole rate window, every user logged in.
    let window_full = || {
        let (_, s) = http_get(flooder.control, "/status");
        s["state"] == "shaking" && s["second"].as_u64() > Some(RATE_WINDOW_SECS + 3)
    };
    while !window_full() {
        if Instant::now() > ready {
            fail("the flooder did not shake for a whole window in time");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One instant for every query: the figures of the same scrapes.
    let at = hongbao::clock::unix_now().as_secs_f64();
    let q = |query: &str| {
        prometheus
            .query(query, at)
            .unwrap_or_else(|| fail(&format!("no value for {query} at {at}")))
    };
    let w = RATE_WINDOW_SECS;
    let server_rate = q(&format!("sum(rate(hongbao_server_shakes_total[{w}s]))"));
    let flood_rate = q(&format!("rate(hongbao_flood_shakes_sent_total[{w}s])"));
    let answered_rate = q(&format!("sum(rate(hongbao_flood_shakes_total[{w}s]))"));
    let flood_p99 =
        q("histogram_quantile(0.99, sum by (le) (hongbao_flood_latency_seconds_bucket))");
    let server_p99 =
        q("histogram_quantile(0.99, sum by (le) (hongbao_server_service_seconds_bucket))");
    let flood_last = q("hongbao_flood_last_complete_second_timestamp_seconds") as u64;
    let server_last = q("hongbao_server_last_closed_second_timestamp_seconds") as u64;
    // A recording rule of deploy/prometheus/rules.yml, evaluated.
    let recorded = (0..50).find_map(|_| {
        let x = prometheus.query(
            "hongbao:server_shakes:rate1m",
            hongbao::clock::unix_now().as_secs_f64(),
        );
        if x.is_none() {
            std::thread::sleep(Duration::from_millis(200));
        }
        x
    });

    let (flood_h, flood_measured) = measured(flooder.control, flood_last);
    let (server_h, server_measured) = measured(http, server_last);
    let mut report = vec![format!(
        "rates over {w} s: Prometheus server {server_rate:.1}/s, flooder sent {flood_rate:.1}/s, \
         answered {answered_rate:.1}/s; the flooder measured {flood_measured:.1}/s, the server \
         {server_measured:.1}/s; target {QPS}/s; recording rule hongbao:server_shakes:rate1m {recorded:?}"
    )];
    for (what, rate, against) in [
        ("server shakes", server_rate, QPS as f64),
        ("flooder shakes sent", flood_rate, QPS as f64),
        ("flooder answers", answered_rate, QPS as f64),
        ("flooder shakes sent", flood_rate, flood_measured),
        ("server shakes", server_rate, server_measured),
    ] {
        assert!(
            (rate - against).abs() <= RATE_TOLERANCE * against,
            "{what}: Prometheus' rate {rate:.1}/s is not within {:.0} % of {against:.1}/s\n{}",
            RATE_TOLERANCE * 100.0,
            report.join("\n")
        );
    }
    assert!(
        recorded.is_some_and(|r| r > 0.0),
        "the recording rule hongbao:server_shakes:rate1m has no value: {recorded:?}"
    );
    report.push(p99_in_its_bucket("flooder latency", flood_p99, &flood_h));
    report.push(p99_in_its_bucket(
        "server service time",
        server_p99,
        &server_h,
    ));
    eprintln!(
        "Prometheus against the processes ({:.1} s):\n{}",
        started.elapsed().as_secs_f64(),
        report.join("\n")
    );
    drop(prometheus);
    drop(flooder);
    drop(server);
}
