#!/usr/bin/env python3
"""Per-core server benchmark: hongbao against the zero-logic reference.

Owns: building the release binary, starting each server under test pinned to
core 0 on a fresh loopback port, driving it with `hongbao flood` pinned to
core 1, and turning the flooder's JSON reports into medians, ratios and
markdown tables for docs/BENCHMARKS.md. Must not: leave a process behind
(every process it starts is stopped by its own pid: SIGTERM, then SIGKILL
after a timeout), wait without a timeout, change a host setting, or talk to
anything but loopback (servers listen on 127.0.0.1 only).

Each server run is `hongbao server --threads 1 --quiet --no-http` (hongbao)
or the same with `--reference` (same loop and frames, every shake answered
"none"), fresh, on a fresh port. A round runs every selected part for both
servers side by side; their order alternates between rounds so that neither
always runs on a warmer machine. The parts (--parts, default all):

  rates       for each fixed rate (default 30000,60000,120000 shakes/s):
              10,000 connections, warmup, then a window in which the flooder
              samples the server's CPU at the window's exact edges
              (--server-pid): server CPU µs per shake, latency p50/p99/p99.9
              from the intended send time, the flooder's own cost and lag.
  burst       the Go client's shape (`hongbao flood --burst`: all of a
              second's users fire at its start) against the smooth default
              at --burst-rates (default 30000,60000), same figures, ratios
              burst / smooth per round. The smooth side is the rates part's
              run of the same round when that rate is in it, else its own.
  memory      18,000 idle logged-in connections (rate 0): server RSS before
              the first connect and after the last login, and the
              connect + login rate (end to end, and per server core from the
              server's CPU over the connect phase).
  saturation  the highest shake rate each server sustains on its one core.

Saturation. A step runs one server at one rate (10,000 connections, warmup,
a --sat-duration window, the flooder at --sat-send-interval-us) and gets one
verdict:
  ok        answered >= 0.99 x sent over the window, and the server's core
            < 95 % busy (both the server process's run time over the window,
            and the core's busy time in /proc/stat, which adds the loopback
            softirq work the kernel defers to ksoftirqd), and service latency
            p99 (actual send -> answer) < 50 ms, and the flooder was not a
            limit (below);
  server    the server's core was full: the server process >= 95 % of it,
            or the core >= 95 % busy while anything but the two processes
            used < 20 % of a core; or, the flooder not being a limit and the
            host quiet, answers fell behind or service p99 reached 50 ms;
  flooder   not ok, the server's core not full, and the flooder was a
            limit: its busiest thread used > 90 % of its core in a window
            second (not with --flood-spin); or, the host quiet (below), it
            sent < 0.99 x the scheduled requests, or its send lag p99
            (actual - intended send) was > 10 ms, ten times its own warning
            threshold: past the few ms this VM's vCPU wake-ups add by
            themselves;
  host      not ok, neither core full of our work, and anything but the two
            processes used >= 20 % of a core in the window: another
            workload was the bound.
A step that is not ok is run once more and the second verdict stands: a
shared host's noise only ever makes a run worse, so one clean run shows the
rate is sustained.
The rate steps up from --sat-from by --sat-step (to --sat-to at most) until
a step is not ok, then bisects between the highest ok rate and the lowest
not-ok one down to --sat-resolution; both servers step in the same round,
interleaved. A server's maximum is its highest ok rate; the bound is the
verdict of its lowest not-ok rate. Only a "server" bound makes the maximum
the server's: with "flooder" or "host" (or no failing step below --sat-to)
it is a lower bound, and the table says so (">="). Either way the server's
capacity from its CPU at its highest ok step (answered/s / share of its core
used) is reported beside it: an estimate, not a measurement, since the cost
per shake moves with the arrival pattern (it rose past 6 us at 120k/s with
the flooder saturated, against 5.3 us at 105k/s, on this machine).

Figures are medians over rounds with min..max beside them: p99 near
saturation varies 2-4x between runs on a 2-vCPU VM, throughput much less.
A ratio hongbao / reference (or burst / smooth) is taken per round, from runs
side by side, then the median.

Usage:
  tools/bench_server.py                # 3 rounds, 10 s windows, all parts (~17 min)
  tools/bench_server.py --quick        # 1 round, 3 s windows, coarse saturation: smoke run (~2 min)
  tools/bench_server.py --parts rates,memory --rates 60000 --repeats 5 --out /tmp/bench.json
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release" / "hongbao"

# The servers compared. Each gets --listen/--threads 1/--quiet; --no-http
# keeps the control port (8989 by default) out of the way of anything else
# running on this host, and of a previous server still shutting down.
SERVERS = {
    "hongbao": [],
    "reference": ["--reference"],
}

SERVER_CORE = "0"
FLOODER_CORE = "1"

PARTS = ("rates", "burst", "memory", "saturation")

# Ports for the servers under test: below the ephemeral range (32768+ by
# default), so no client connection can be holding one, and each run gets a
# fresh one so no TIME_WAIT from an earlier run shares its 4-tuples.
PORT_FIRST = 21000
PORT_LAST = 31999

BUILD_TIMEOUT_S = 1800
SERVER_READY_TIMEOUT_S = 10
# SIGTERM to SIGKILL: the server's own shutdown grace is 2 s.
STOP_TIMEOUT_S = 10
# The flooder's own bounds: login timeout (30 s) + settle + the wait for a
# whole second + warmup + window + drain (2 s). The slack covers start-up and
# the final join; the flooder's own hard deadline (10 s past its bounds)
# comes first.
FLOODER_SLACK_S = 30
LOGIN_TIMEOUT_S = 30
# Seconds a run takes beyond settle + warmup + window: server start, connect,
# the wait for a whole second, drain, stop. Only for the time estimate.
RUN_OVERHEAD_S = 4.5

# Saturation verdicts (see the module docstring).
SAT_ANSWERED_MIN = 0.99
SAT_SERVER_CORE_PCT = 95
SAT_SERVICE_P99_MAX_US = 50_000
SAT_HOST_PCT = 20
# The flooder's own limits: its busy-thread warning threshold
# (src/flood/mod.rs), and ten times its send-lag one (1 ms), which a 3-5 s
# window on this VM crosses now and then at any rate from wake-up stalls
# alone, while the rate it sent stays exact.
SAT_SEND_LAG_P99_MAX_US = 10_000
SAT_FLOODER_THREAD_PCT = 90
SAT_SENT_MIN = 0.99
# A search never runs more steps than this per server and round.
SAT_STEPS_MAX = 16

# Other load above this share of a core (median over rounds) marks a row as
# measured on a machine that was not quiet: a few percent is kernel threads
# and clock-tick rounding, tens of percent is another workload.
NOISY_PCT = 10

# The flooder's core above this share means its own queueing is part of the
# latency: the row then measures the flooder as much as the server.
FLOODER_BUSY_PCT = 70


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="rounds; medians are over these (default 3)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"parts to run, comma separated (default all: {','.join(PARTS)})")
    p.add_argument(
        "--rates",
        default="30000,60000,120000",
        help="fixed shake rates, comma separated (default 30000,60000,120000: below, near and at "
        "the reference floor's sweet spot on one core)",
    )
    p.add_argument("--users", type=int, default=10000,
                   help="connections in the rates, burst and saturation runs (default 10000)")
    p.add_argument(
        "--memory-users",
        type=int,
        default=18000,
        help="idle connections in the memory run (default 18000: as many as fit under the "
        "20,000 open-files limit with room to spare)",
    )
    p.add_argument(
        "--memory-bind",
        default="127.0.0.2,127.0.0.3",
        help="source addresses for the memory run's flooder (loopback; default 127.0.0.2,127.0.0.3). "
        "From one address, Linux's connect() slows to ~1k/s past half the ephemeral range "
        "(~14k), and the connect rate would measure the kernel's port search. '' = none",
    )
    p.add_argument("--duration", type=int, default=10, help="measurement window of the rates and burst runs, "
                   "seconds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warmup before the window, seconds (default 2)")
    p.add_argument("--settle", type=int, default=2, help="seconds after the last login before RSS (default 2)")
    p.add_argument("--flood-spin", action="store_true",
                   help="run the flooder with --spin (never sleeps while shaking): on a VM a sleeping "
                   "vCPU can take milliseconds to wake, which the latency would charge to the server; "
                   "the flooder's CPU figures then only say it used its whole core")
    p.add_argument("--send-interval-us", type=int, default=50,
                   help="the flooder's --send-interval-us in the rates and burst runs (default 50: "
                   "the least send lag, so the latency is the server's as far as one flooder core "
                   "allows; the flooder's own default, 500, trades lag for its own CPU)")
    p.add_argument("--burst-rates", default="30000,60000",
                   help="rates of the burst part, comma separated (default 30000,60000)")
    p.add_argument("--sat-from", type=int, default=60000, help="saturation: first rate (default 60000)")
    p.add_argument("--sat-step", type=int, default=20000, help="saturation: rate step up (default 20000)")
    p.add_argument("--sat-to", type=int, default=240000,
                   help="saturation: highest rate tried (default 240000, past any server's one core here)")
    p.add_argument("--sat-resolution", type=int, default=5000,
                   help="saturation: bisect until the bracket is this narrow (default 5000)")
    p.add_argument("--sat-duration", type=int, default=5, help="saturation: window per step, seconds (default 5)")
    p.add_argument("--sat-send-interval-us", type=int, default=200,
                   help="saturation: the flooder's --send-interval-us (default 200: fewer wake-ups, so one "
                   "flooder core drives a higher rate on time; lag stays under the 1 ms criterion)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 3 s windows, 1 s warmup and settle, saturation in 30k steps "
                   "without bisection")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/hongbao")
    p.add_argument("--out", type=Path, help="results JSON (default target/bench/bench-<time>.json)")
    p.add_argument("--summarise", type=Path, metavar="JSON",
                   help="run nothing: re-judge the saturation steps of an earlier results JSON with this "
                   "script's criteria, summarise it again and print its tables (written to --out, default "
                   "JSON with .resummarised.json); its runs stay as measured")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
        args.duration = args.sat_duration = 3
        args.warmup = args.settle = 1
        args.sat_step = 30000
        args.sat_resolution = args.sat_step
    args.rates = ints(args.rates)
    args.burst_rates = ints(args.burst_rates)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in args.parts if x not in PARTS]
    if unknown or not args.parts:
        p.error(f"--parts: unknown {unknown}; choose from {','.join(PARTS)}")
    if args.repeats < 1 or ("rates" in args.parts and (not args.rates or min(args.rates) <= 0)):
        p.error("--repeats must be >= 1 and --rates a list of positive numbers")
    if "burst" in args.parts and (not args.burst_rates or min(args.burst_rates) <= 0):
        p.error("--burst-rates must be a list of positive numbers")
    if "saturation" in args.parts and not (0 < args.sat_from <= args.sat_to and args.sat_step > 0
                                           and args.sat_resolution > 0 and args.sat_duration > 0):
        p.error("--sat-from/--sat-to/--sat-step/--sat-resolution/--sat-duration must be positive, from <= to")
    return args


def build():
    log("building: cargo build --release --locked")
    proc = subprocess.Popen(["cargo", "build", "--release", "--locked"], cwd=REPO)
    try:
        code = proc.wait(timeout=BUILD_TIMEOUT_S)
    finally:
        stop(proc, "cargo")
    if code != 0:
        raise SystemExit(f"cargo build failed ({code})")
    if not BINARY.exists():
        raise SystemExit(f"build produced no {BINARY}")


def port_free(port):
    """True when nothing listens on 127.0.0.1:port. Bound with SO_REUSEADDR,
    as our servers bind, so an earlier run's TIME_WAIT does not count as
    taken. (The other tools' one check.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(start):
    """The first port from `start` that 127.0.0.1 can bind, wrapping in range."""
    span = PORT_LAST - PORT_FIRST + 1
    for i in range(span):
        port = PORT_FIRST + (start - PORT_FIRST + i) % span
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_FIRST}..{PORT_LAST}")


def wait_until_accepting(port, proc, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before accepting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not accept on 127.0.0.1:{port} within {timeout_s} s")


def stop(proc, name="server"):
    """SIGTERM the process we started, by its pid; SIGKILL it after a timeout."""
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"  {name} pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S} s: SIGKILL")
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=STOP_TIMEOUT_S)


def tail(path, lines=5):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def one_run(args, workdir, run_id, server, port, rate, users, duration, warmup, binds,
            burst=False, send_interval_us=None):
    """Starts `server` on `port`, floods it, stops both. Returns a run record.

    `args` supplies settle, flood_spin and send_interval_us (tools/bench_flood.py
    passes its own); `send_interval_us`, when given, overrides the latter."""
    record = {
        "id": run_id,
        "server": server,
        "rate": rate,
        "users": users,
        "kind": "memory" if rate == 0 else "rate",
        "burst": burst,
        "ok": False,
    }
    server_log = workdir / f"{run_id}.server.log"
    flood_log = workdir / f"{run_id}.flood.log"
    json_path = workdir / f"{run_id}.flood.json"
    server_cmd = [
        "taskset", "-c", SERVER_CORE, str(BINARY), "server",
        "--listen", f"127.0.0.1:{port}", "--threads", "1", "--quiet", "--no-http",
        # Rates above 10 per user per second: the per-connection share off.
        "--conn-qps-max", "0",
    ] + SERVERS[server]
    flood_cmd = [
        "taskset", "-c", FLOODER_CORE, str(BINARY), "flood",
        "--server", f"127.0.0.1:{port}",
        "--server-pid", "PID",
        "--users", str(users),
        "--qps", str(rate),
        # One flooder thread on its one core; no control port to collide on.
        "--threads", "1",
        "--no-http",
        "--duration", str(duration),
        "--warmup", str(warmup),
        "--settle-secs", str(args.settle),
        "--login-timeout", str(LOGIN_TIMEOUT_S),
        "--json", str(json_path),
        "--quiet",
    ]
    if binds:
        flood_cmd += ["--bind", binds]
    if args.flood_spin and rate > 0:
        flood_cmd += ["--spin"]
    if burst:
        flood_cmd += ["--burst"]
    interval = send_interval_us if send_interval_us is not None else args.send_interval_us
    if interval is not None:
        flood_cmd += ["--send-interval-us", str(interval)]
    record["server_cmd"] = " ".join(server_cmd)
    record["flood_cmd"] = " ".join(flood_cmd)
    flood_timeout = LOGIN_TIMEOUT_S + args.settle + 1 + warmup + duration + 2 + FLOODER_SLACK_S
    with open(server_log, "wb") as out:
        proc = subprocess.Popen(server_cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    flooder = None
    try:
        wait_until_accepting(port, proc, SERVER_READY_TIMEOUT_S)
        # taskset execs the server, so the child's pid is the server's own.
        flood_cmd[flood_cmd.index("PID")] = str(proc.pid)
        env = dict(os.environ, RUST_BACKTRACE="0")
        with open(flood_log, "wb") as out:
            flooder = subprocess.Popen(flood_cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        code = flooder.wait(timeout=flood_timeout)
        record["flood_stdout"] = tail(flood_log, 60)
        if code != 0:
            record["error"] = f"flooder exited {code}: {tail(flood_log, 10)[-2000:]}"
        elif proc.poll() is not None:
            record["error"] = f"server exited with {proc.returncode} during the run"
        else:
            record["report"] = json.loads(json_path.read_text())
            record["ok"] = True
    except subprocess.TimeoutExpired:
        record["error"] = f"flooder did not finish within {flood_timeout} s (stopped)"
    except (RuntimeError, OSError, ValueError) as e:
        record["error"] = str(e)
    finally:
        if flooder is not None:
            record["flood_exit"] = stop(flooder, "flooder")
        record["server_exit"] = stop(proc)
        record["server_log_tail"] = tail(server_log)
    return record


def foreign_pct(report):
    """CPU used during the window by anything but the server and the flooder,
    in percent of one core: the sign of a machine that was not quiet."""
    secs = report["window"]["sampled_secs"] or report["window"]["secs"]
    return report.get("foreign_cpu_us", 0) / 1e4 / secs


def server_core_pct(report):
    """The server process's run time over the window, in percent of one core."""
    secs = report["window"]["sampled_secs"] or report["window"]["secs"]
    return (report.get("server") or {}).get("cpu_us", 0) / 1e4 / secs


def core_busy_pct(report):
    """How busy the server's core was over the window, anything on it
    (/proc/stat, tick-sampled): the server, and the loopback softirq work
    the kernel defers to ksoftirqd when that core is loaded."""
    for c in report.get("cpus") or []:
        if c["cpu"] == int(SERVER_CORE):
            return c["busy_pct"]
    return 0.0


def judge(report, spin):
    """A saturation step's verdict (see the module docstring) and its reasons."""
    w = report["window"]
    own = server_core_pct(report)
    busy = core_busy_pct(report)
    others = foreign_pct(report)
    service_p99 = report["latency_service"]["p99_us"]
    server_reasons = []
    if own >= SAT_SERVER_CORE_PCT or busy >= SAT_SERVER_CORE_PCT:
        server_reasons.append(f"server core {busy:.0f} % busy, the server {own:.0f} %")
    if w["answered"] < SAT_ANSWERED_MIN * w["sent"] or w["sent"] == 0:
        server_reasons.append(f"answered {w['answered']} of {w['sent']} sent")
    if service_p99 >= SAT_SERVICE_P99_MAX_US:
        server_reasons.append(f"service p99 {service_p99 / 1000:.0f} ms")
    flooder_reasons = []
    lag = report["send_lag"]["p99_us"]
    if lag > SAT_SEND_LAG_P99_MAX_US:
        flooder_reasons.append(f"send lag p99 {lag:,.0f} µs")
    thread = report["flooder"]["thread_cpu_max_pct"]
    flooder_full = thread > SAT_FLOODER_THREAD_PCT and not spin
    if flooder_full:
        flooder_reasons.append(f"flooder thread {thread:.0f} %")
    if w["sent"] < SAT_SENT_MIN * w["scheduled"]:
        flooder_reasons.append(f"sent {w['sent']} of {w['scheduled']} scheduled")
    if not server_reasons and not flooder_reasons:
        return "ok", []
    # The server's core is full: with the server's own work, or with the
    # kernel's work for its sockets while nothing else ran.
    if own >= SAT_SERVER_CORE_PCT or (busy >= SAT_SERVER_CORE_PCT and others < SAT_HOST_PCT):
        return "server", server_reasons + flooder_reasons
    # A flooder that ran 90 % of a second and still fell behind was its own
    # limit, whatever else ran: another workload takes its CPU, it does not
    # add to it. (Past ~110k/s "others" also counts ksoftirqd doing the
    # loopback work of our own two processes.)
    if flooder_full:
        return "flooder", flooder_reasons + server_reasons
    if others >= SAT_HOST_PCT:
        return "host", [f"others {others:.0f} % of a core"] + server_reasons + flooder_reasons
    if flooder_reasons:
        return "flooder", flooder_reasons + server_reasons
    return "server", server_reasons


def describe(record):
    if not record["ok"]:
        return f"FAILED: {record.get('error')}"
    r = record["report"]
    s = r.get("server") or {}
    if record["kind"] == "memory":
        return (f"RSS {s.get('rss_bytes_per_conn', 0):.0f} B/conn, "
                f"connect+login {r['connect']['logins_per_sec']:.0f}/s")
    cpu = s.get("cpu_us_per_answered")
    text = (f"answered {r['window']['answered_per_sec']:.0f}/s, server "
            f"{cpu if cpu is None else round(cpu, 2)} µs/shake ({server_core_pct(r):.0f} % of its core, "
            f"core {core_busy_pct(r):.0f} % busy), "
            f"p50 {r['latency_corrected']['p50_us']:.0f} µs, p99 {r['latency_corrected']['p99_us']:.0f} µs, "
            f"service p99 {r['latency_service']['p99_us']:.0f} µs, send lag p99 {r['send_lag']['p99_us']:.0f} µs, "
            f"flooder thread {r['flooder']['thread_cpu_max_pct']:.0f} %, lost {r['window']['lost']}, "
            f"others {foreign_pct(r):.0f}% of a core")
    if "verdict" in record:
        text += f" -> {record['verdict']}" + (f" ({'; '.join(record['reasons'])})" if record["reasons"] else "")
    return text


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def rate_figures(reps):
    """The figures of a group of fixed-rate runs (one server, rate, shape)."""
    return {
        "runs": len(reps),
        "answered_per_sec": spread([x["window"]["answered_per_sec"] for x in reps]),
        "server_cpu_us_per_shake": spread([(x.get("server") or {}).get("cpu_us_per_answered") for x in reps]),
        "server_core_pct": spread([server_core_pct(x) for x in reps]),
        "latency_corrected_p50_us": spread([x["latency_corrected"]["p50_us"] for x in reps]),
        "latency_corrected_p99_us": spread([x["latency_corrected"]["p99_us"] for x in reps]),
        "latency_corrected_p999_us": spread([x["latency_corrected"]["p999_us"] for x in reps]),
        "latency_service_p50_us": spread([x["latency_service"]["p50_us"] for x in reps]),
        "latency_service_p99_us": spread([x["latency_service"]["p99_us"] for x in reps]),
        "latency_service_p999_us": spread([x["latency_service"]["p999_us"] for x in reps]),
        "flooder_cpu_us_per_request": spread([x["flooder"]["cpu_us_per_request"] for x in reps]),
        "flooder_thread_max_pct": spread([x["flooder"]["thread_cpu_max_pct"] for x in reps]),
        "send_lag_p99_us": spread([x["send_lag"]["p99_us"] for x in reps]),
        # The flooder's share of its core over the window: near 100 % its own
        # queueing is in the latency, charged to the server.
        "flooder_core_pct": spread([
            x["flooder"]["cpu_us_per_request"] * x["window"]["answered_per_sec"] / 1e4
            for x in reps if x["flooder"]["cpu_us_per_request"] is not None]),
        "foreign_cpu_pct": spread([foreign_pct(x) for x in reps]),
        "lost": sum(x["window"]["lost"] for x in reps),
        "errors": sum(x["window"]["conn_errors"] + x["window"]["bad_frames"] + x["window"]["unsent"]
                      for x in reps),
    }


def paired_ratio(runs_a, runs_b, key):
    """Median over rounds of key(a) / key(b), a and b from the same round."""
    by_round = {r["round"]: r for r in runs_b}
    ratios = []
    for a in runs_a:
        b = by_round.get(a["round"])
        if b is None:
            continue
        x, y = key(a["report"]), key(b["report"])
        if x is not None and y:
            ratios.append(x / y)
    return spread(ratios)


def cpu_per_shake(report):
    return (report.get("server") or {}).get("cpu_us_per_answered")


def summarise_rates(ok, rates):
    fixed = []
    for rate in rates:
        per_server = {}
        for server in SERVERS:
            reps = [r["report"] for r in ok if r["part"] == "rates" and r["server"] == server and r["rate"] == rate]
            if reps:
                per_server[server] = {"server": server, "rate": rate, **rate_figures(reps)}
        ratio = None
        h = per_server.get("hongbao", {}).get("server_cpu_us_per_shake")
        f = per_server.get("reference", {}).get("server_cpu_us_per_shake")
        if h and f and f["median"]:
            ratio = h["median"] / f["median"]
        paired = paired_ratio(
            [r for r in ok if r["part"] == "rates" and r["server"] == "hongbao" and r["rate"] == rate],
            [r for r in ok if r["part"] == "rates" and r["server"] == "reference" and r["rate"] == rate],
            cpu_per_shake)
        fixed.append({"rate": rate, "servers": per_server, "cpu_ratio_hongbao_over_reference": ratio,
                      "cpu_ratio_hongbao_over_reference_per_round": paired})
    return fixed


def summarise_memory(ok):
    memory = {}
    for server in SERVERS:
        reps = [r["report"] for r in ok if r["part"] == "memory" and r["server"] == server]
        if reps:
            cpu = spread([(x.get("server") or {}).get("connect_cpu_us_per_login") for x in reps])
            capacity = None
            if cpu and cpu["min"] > 0:
                capacity = {"median": 1e6 / cpu["median"], "min": 1e6 / cpu["max"],
                            "max": 1e6 / cpu["min"], "n": cpu["n"]}
            memory[server] = {
                "runs": len(reps),
                "connections": reps[0]["connect"]["logged_in"],
                "rss_bytes_per_conn": spread([(x.get("server") or {}).get("rss_bytes_per_conn") for x in reps]),
                "logins_per_sec": spread([x["connect"]["logins_per_sec"] for x in reps]),
                "server_cpu_us_per_login": cpu,
                "logins_per_sec_per_server_core": capacity,
            }
    return memory


def smooth_runs(ok, server, rate):
    return [r for r in ok if r["part"] in ("rates", "burst-smooth") and r["server"] == server
            and r["rate"] == rate]


def summarise_burst(ok, burst_rates):
    rows = []
    for rate in burst_rates:
        per_server = {}
        for server in SERVERS:
            smooth = smooth_runs(ok, server, rate)
            burst = [r for r in ok if r["part"] == "burst" and r["server"] == server and r["rate"] == rate]
            if not smooth and not burst:
                continue
            per_server[server] = {
                "smooth": rate_figures([r["report"] for r in smooth]) if smooth else None,
                "burst": rate_figures([r["report"] for r in burst]) if burst else None,
                "burst_over_smooth": {
                    "server_cpu_us_per_shake": paired_ratio(burst, smooth, cpu_per_shake),
                    "latency_corrected_p50_us": paired_ratio(burst, smooth, lambda x: x["latency_corrected"]["p50_us"]),
                    "latency_corrected_p99_us": paired_ratio(burst, smooth, lambda x: x["latency_corrected"]["p99_us"]),
                    "latency_corrected_p999_us": paired_ratio(
                        burst, smooth, lambda x: x["latency_corrected"]["p999_us"]),
                    "latency_service_p99_us": paired_ratio(burst, smooth, lambda x: x["latency_service"]["p99_us"]),
                },
            }
        hongbao_burst = [r for r in ok if r["part"] == "burst" and r["server"] == "hongbao" and r["rate"] == rate]
        reference_burst = [r for r in ok if r["part"] == "burst" and r["server"] == "reference" and r["rate"] == rate]
        rows.append({
            "rate": rate,
            "servers": per_server,
            "burst_cpu_ratio_hongbao_over_reference": paired_ratio(hongbao_burst, reference_burst, cpu_per_shake),
            "burst_p99_ratio_hongbao_over_reference": paired_ratio(
                hongbao_burst, reference_burst, lambda x: x["latency_corrected"]["p99_us"]),
        })
    return rows


def search_result(steps):
    """One server's search in one round: highest ok rate, the bound above it,
    and the server's figures at that rate."""
    ok_rates = [s["rate"] for s in steps if s["verdict"] == "ok"]
    # A rate is sustained when one attempt at it was ok.
    failed = sorted((s for s in steps if s["verdict"] not in ("ok", "retried") and s["rate"] not in ok_rates),
                    key=lambda s: s["rate"])
    best = max(ok_rates) if ok_rates else None
    out = {"max_rate": best, "bound": failed[0]["verdict"] if failed else "ceiling",
           "bound_rate": failed[0]["rate"] if failed else None,
           "bound_reasons": failed[0]["reasons"] if failed else [],
           "steps": [(s["rate"], s["verdict"]) for s in steps]}
    at_best = [s for s in steps if s["verdict"] == "ok" and s["rate"] == best]
    if at_best:
        r = at_best[-1]["report"]
        core = server_core_pct(r)
        out.update(
            server_core_pct_at_max=core,
            core_busy_pct_at_max=core_busy_pct(r),
            server_cpu_us_per_shake_at_max=cpu_per_shake(r),
            latency_corrected_p99_us_at_max=r["latency_corrected"]["p99_us"],
            latency_service_p99_us_at_max=r["latency_service"]["p99_us"],
            send_lag_p99_us_at_max=r["send_lag"]["p99_us"],
            flooder_thread_max_pct_at_max=r["flooder"]["thread_cpu_max_pct"],
            # What one core would answer at this per-shake cost, were it all
            # the server's: an estimate; the cost moves with the arrivals.
            capacity_from_cpu_per_sec=r["window"]["answered_per_sec"] / (core / 100) if core > 0 else None,
        )
    return out


def summarise_saturation(runs, repeats):
    sat = [r for r in runs if r.get("part") == "saturation" and r.get("verdict")]
    if not sat:
        return None
    per_round = {}
    for round_no in range(1, repeats + 1):
        for server in SERVERS:
            steps = [r for r in sat if r["round"] == round_no and r["server"] == server]
            if steps:
                per_round.setdefault(round_no, {})[server] = search_result(steps)
    servers = {}
    for server in SERVERS:
        results = [v[server] for v in per_round.values() if server in v]
        if not results:
            continue
        servers[server] = {
            "rounds": len(results),
            "max_rate": spread([x["max_rate"] for x in results]),
            "bounds": [x["bound"] for x in results],
            # The maximum is the server's only when every round ended on it.
            "server_bound": all(x["bound"] == "server" for x in results),
            "capacity_from_cpu_per_sec": spread([x.get("capacity_from_cpu_per_sec") for x in results]),
            "server_core_pct_at_max": spread([x.get("server_core_pct_at_max") for x in results]),
            "core_busy_pct_at_max": spread([x.get("core_busy_pct_at_max") for x in results]),
            "server_cpu_us_per_shake_at_max": spread([x.get("server_cpu_us_per_shake_at_max") for x in results]),
            "latency_corrected_p99_us_at_max": spread([x.get("latency_corrected_p99_us_at_max") for x in results]),
            "send_lag_p99_us_at_max": spread([x.get("send_lag_p99_us_at_max") for x in results]),
            "flooder_thread_max_pct_at_max": spread([x.get("flooder_thread_max_pct_at_max") for x in results]),
        }

    def ratio(key):
        values = []
        for v in per_round.values():
            h, f = v.get("hongbao", {}).get(key), v.get("reference", {}).get(key)
            if h is not None and f:
                values.append(h / f)
        return spread(values)

    return {
        "per_round": per_round,
        "servers": servers,
        "max_rate_ratio_hongbao_over_reference": ratio("max_rate"),
        "capacity_ratio_hongbao_over_reference": ratio("capacity_from_cpu_per_sec"),
    }


def summarise(runs, args):
    ok = [r for r in runs if r["ok"]]
    return {
        "fixed_rate": summarise_rates(ok, args.rates) if "rates" in args.parts else [],
        "burst": summarise_burst(ok, args.burst_rates) if "burst" in args.parts else [],
        "memory": summarise_memory(ok),
        "saturation": summarise_saturation(runs, args.repeats),
        "failed_runs": len(runs) - len(ok),
    }


def saturated(row):
    f = row.get("flooder_core_pct")
    return bool(f and f["median"] > FLOODER_BUSY_PCT)


def noisy(row):
    f = row.get("foreign_cpu_pct")
    return bool(f and f["median"] > NOISY_PCT)


def fmt(s, digits=1):
    if not s:
        return "–"
    m, lo, hi = s["median"], s["min"], s["max"]
    if s["n"] == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ({lo:,.{digits}f}..{hi:,.{digits}f})"


def fmt_ratio(s):
    """A ratio's spread: two decimals near 1, none once it is in the tens."""
    return fmt(s, 2 if not s or s["max"] < 10 else 0)


def markdown(meta, summary):
    out = []
    out.append(f"Machine: {meta['cpu']} × {meta['cpus']} vCPU, Linux {meta['kernel']}; "
               f"server pinned to core {SERVER_CORE}, flooder to core {FLOODER_CORE}; loopback; "
               f"commit {meta['commit'][:12]}{' (dirty)' if meta['dirty'] else ''}; {meta['date']}; "
               f"load before the run {meta.get('loadavg_before', '?')}.")
    out.append(f"Each figure: median over {meta['repeats']} round(s), (min..max) beside it; "
               f"{meta['users']:,} connections, {meta['warmup']} s warmup, {meta['duration']} s window; "
               "latency in µs, corrected = from intended send time"
               + (f"; flooder --send-interval-us {meta['send_interval_us']}"
                  if meta.get("send_interval_us") is not None else "")
               + ("; flooder spinning (--spin), so its CPU column is its whole core." if meta.get("flood_spin") else "."))
    if summary["fixed_rate"]:
        out.append("")
        out.append("| shakes/s | server | answered/s | server CPU µs/shake | hongbao ÷ reference "
                   "| p50 µs | p99 µs | p99.9 µs | service p99 µs | send lag p99 µs | flooder core % "
                   "| lost + unsent + errors | others' CPU % |")
        out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in summary["fixed_rate"]:
            for name, s in row["servers"].items():
                ratio = row["cpu_ratio_hongbao_over_reference_per_round"]
                ratio_cell = fmt(ratio, 2) if (ratio and name == "hongbao") else ""
                out.append(
                    f"| {row['rate']:,} | {name} | {fmt(s['answered_per_sec'], 0)} | "
                    f"{fmt(s['server_cpu_us_per_shake'], 2)} | {ratio_cell} | "
                    f"{fmt(s['latency_corrected_p50_us'], 0)} | {fmt(s['latency_corrected_p99_us'], 0)} | "
                    f"{fmt(s['latency_corrected_p999_us'], 0)} | "
                    f"{fmt(s['latency_service_p99_us'], 0)} | {fmt(s['send_lag_p99_us'], 0)} | "
                    f"{fmt(s['flooder_core_pct'], 0)}{' ⚠' if saturated(s) else ''} | "
                    f"{s['lost'] + s['errors']} | "
                    f"{fmt(s['foreign_cpu_pct'], 0)}{' ⚠' if noisy(s) else ''} |"
                )
    if summary["memory"]:
        out.append("")
        out.append("| server | idle connections | server RSS bytes/conn | connect+login /s (end to end) "
                   "| server CPU µs/login | accept+login capacity /s per server core |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for name, m in summary["memory"].items():
            out.append(f"| {name} | {m['connections']:,} | {fmt(m['rss_bytes_per_conn'], 0)} | "
                       f"{fmt(m['logins_per_sec'], 0)} | {fmt(m['server_cpu_us_per_login'], 2)} | "
                       f"{fmt(m['logins_per_sec_per_server_core'], 0)} |")
    sat = summary.get("saturation")
    if sat:
        out.append("")
        bisect = (f"then bisection to {meta['sat_resolution']:,}/s" if meta["sat_resolution"] < meta["sat_step"]
                  else "no bisection")
        out.append(f"Saturation: steps of {meta['sat_step']:,}/s from {meta['sat_from']:,}/s (at most "
                   f"{meta['sat_to']:,}/s), {bisect}; {meta['sat_duration']} s "
                   f"window per step, flooder --send-interval-us {meta['sat_send_interval_us']}. "
                   "\"≥\": not every round ended on the server (bound flooder, host or ceiling), so the "
                   "maximum is a lower bound.")
        out.append("")
        out.append("| server | highest sustained shakes/s | hongbao ÷ reference | bound per round "
                   "| server % of its core at max | core busy % at max | server CPU µs/shake at max "
                   "| capacity from CPU /s | hongbao ÷ reference | p99 µs at max | send lag p99 µs at max "
                   "| flooder thread % at max |")
        out.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, s in sat["servers"].items():
            first = name == "hongbao"
            out.append(
                f"| {name} | {'' if s['server_bound'] else '≥ '}{fmt(s['max_rate'], 0)} | "
                f"{fmt(sat['max_rate_ratio_hongbao_over_reference'], 2) if first else ''} | "
                f"{', '.join(s['bounds'])} | {fmt(s['server_core_pct_at_max'], 0)} | "
                f"{fmt(s['core_busy_pct_at_max'], 0)} | "
                f"{fmt(s['server_cpu_us_per_shake_at_max'], 2)} | {fmt(s['capacity_from_cpu_per_sec'], 0)} | "
                f"{fmt(sat['capacity_ratio_hongbao_over_reference'], 2) if first else ''} | "
                f"{fmt(s['latency_corrected_p99_us_at_max'], 0)} | {fmt(s['send_lag_p99_us_at_max'], 0)} | "
                f"{fmt(s['flooder_thread_max_pct_at_max'], 0)} |")
        out.append("")
        for round_no, v in sorted(sat["per_round"].items()):
            for name, x in v.items():
                steps = ", ".join(f"{rate // 1000}k {verdict}" for rate, verdict in x["steps"])
                reasons = f" ({'; '.join(x['bound_reasons'])})" if x["bound_reasons"] else ""
                out.append(f"- round {round_no} {name}: {steps} → max {x['max_rate'] or 0:,}/s, "
                           f"bound {x['bound']}{reasons}")
    if summary["burst"]:
        out.append("")
        out.append("Burst (`--burst`: all of a second's requests due at its start, the Go client's shape) "
                   "against smooth (spread over the second); latency from the intended send time; ratios "
                   "burst ÷ smooth per round, then the median. Send lag and service latency are in the "
                   "JSON.")
        out.append("")
        out.append("| shakes/s | server | shape | answered/s | server CPU µs/shake | server % of its core "
                   "| p50 µs | p99 µs | p99.9 µs | flooder thread % | lost + unsent + errors |")
        out.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in summary["burst"]:
            for name, s in row["servers"].items():
                for shape in ("smooth", "burst"):
                    f = s[shape]
                    if not f:
                        continue
                    out.append(
                        f"| {row['rate']:,} | {name} | {shape} | {fmt(f['answered_per_sec'], 0)} | "
                        f"{fmt(f['server_cpu_us_per_shake'], 2)} | {fmt(f['server_core_pct'], 0)} | "
                        f"{fmt(f['latency_corrected_p50_us'], 0)} | "
                        f"{fmt(f['latency_corrected_p99_us'], 0)} | {fmt(f['latency_corrected_p999_us'], 0)} | "
                        f"{fmt(f['flooder_thread_max_pct'], 0)} | {f['lost'] + f['errors']} |")
        out.append("")
        out.append("| shakes/s | server | burst ÷ smooth: CPU µs/shake | p50 | p99 | p99.9 |")
        out.append("|---:|---|---:|---:|---:|---:|")
        for row in summary["burst"]:
            for name, s in row["servers"].items():
                b = s["burst_over_smooth"]
                out.append(f"| {row['rate']:,} | {name} | {fmt_ratio(b['server_cpu_us_per_shake'])} | "
                           f"{fmt_ratio(b['latency_corrected_p50_us'])} | {fmt_ratio(b['latency_corrected_p99_us'])} | "
                           f"{fmt_ratio(b['latency_corrected_p999_us'])} |")
        out.append("")
        for row in summary["burst"]:
            if row["burst_cpu_ratio_hongbao_over_reference"]:
                out.append(f"- {row['rate']:,}/s burst, hongbao ÷ reference: CPU/shake "
                           f"{fmt(row['burst_cpu_ratio_hongbao_over_reference'], 2)}, p99 "
                           f"{fmt(row['burst_p99_ratio_hongbao_over_reference'], 2)}.")
    out.append("")
    out.append("\"others' CPU %\" is CPU time in the window used by anything but the server and the "
               "flooder (other processes, kernel threads), in percent of one core; a few percent either "
               "way is noise (flooders that tick-sample /proc/stat read it down to about −10 %), and "
               "past ~110k/s it includes ksoftirqd doing our own loopback work; "
               f"⚠ marks rows above {NOISY_PCT} %: the machine was not quiet and the row is suspect. "
               "\"flooder core %\" is the flooder's CPU per request × answered per second: "
               f"⚠ above {FLOODER_BUSY_PCT} % means its own queueing is in the latency (with --flood-spin "
               "it is always ~100 % and says nothing). \"lost + unsent + errors\" sums over the rounds; "
               "percentiles count answered requests only, so a row with losses flatters its tail. "
               "hongbao ÷ reference is per round (side by side), then the median.")
    if summary["failed_runs"]:
        out.append("")
        out.append(f"{summary['failed_runs']} run(s) failed; see `runs[].error` in the JSON.")
    return "\n".join(out)


def git(*argv):
    try:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def loadavg():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine(args):
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_before": loadavg(),
        "parts": args.parts,
        "repeats": args.repeats,
        "rates": args.rates,
        "burst_rates": args.burst_rates,
        "users": args.users,
        "memory_users": args.memory_users,
        "flood_spin": args.flood_spin,
        "send_interval_us": args.send_interval_us,
        "memory_bind": args.memory_bind,
        "duration": args.duration,
        "warmup": args.warmup,
        "settle": args.settle,
        "sat_from": args.sat_from,
        "sat_step": args.sat_step,
        "sat_to": args.sat_to,
        "sat_resolution": args.sat_resolution,
        "sat_duration": args.sat_duration,
        "sat_send_interval_us": args.sat_send_interval_us,
        "quick": args.quick,
        "argv": sys.argv[1:],
    }


def preflight(no_build):
    """Checks what pinned runs need, and builds the binary unless told not to."""
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin the server and the flooder")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 cores: the server on core 0, the flooder on core 1")
    if not no_build:
        build()
    elif not BINARY.exists():
        raise SystemExit(f"{BINARY} does not exist; run without --no-build")


class Search:
    """One server's saturation search in one round: step up, then bisect."""

    def __init__(self, args):
        self.args = args
        self.lo = 0          # highest ok rate so far (0: none yet)
        self.hi = None       # lowest not-ok rate so far
        self.next_up = args.sat_from
        self.steps = 0

    def next_rate(self):
        a = self.args
        if self.steps >= SAT_STEPS_MAX:
            return None
        if self.hi is None:
            return self.next_up if self.next_up <= a.sat_to else None
        if self.hi - self.lo <= a.sat_resolution:
            return None
        # The middle, on the resolution's grid, strictly inside the bracket.
        mid = self.lo + a.sat_resolution * max(1, round((self.hi - self.lo) / 2 / a.sat_resolution))
        return mid if mid < self.hi else None

    def record(self, rate, verdict):
        self.steps += 1
        if verdict == "ok":
            self.lo = max(self.lo, rate)
            if self.hi is None:
                self.next_up = rate + self.args.sat_step
        elif self.hi is None or rate < self.hi:
            self.hi = rate


class Runner:
    """Runs and records one run after another, writing the JSON as it goes."""

    def __init__(self, args, meta, out_path, workdir, total):
        self.args, self.meta, self.out_path, self.workdir = args, meta, out_path, workdir
        self.runs = []
        self.port = PORT_FIRST
        self.total = total
        self.started = time.monotonic()

    def run(self, round_no, part, server, rate, users, duration, warmup, binds="", burst=False,
            send_interval_us=None, tag=""):
        self.port = free_port(self.port + 1)
        what = "memory" if rate == 0 else f"{rate}/s{' burst' if burst else ''}"
        run_id = f"r{round_no}-{part}-{server}-{'mem' if rate == 0 else rate}{tag}"
        elapsed = (time.monotonic() - self.started) / 60
        log(f"[round {round_no}/{self.args.repeats} {part} {len(self.runs) + 1}/~{self.total}, {elapsed:.1f} min] "
            f"{server:<9} {what:>14} on port {self.port} ...")
        record = one_run(self.args, self.workdir, run_id, server, self.port, rate, users, duration, warmup, binds,
                         burst=burst, send_interval_us=send_interval_us)
        record.update(round=round_no, part=part)
        self.runs.append(record)
        return record

    def save(self):
        # Written after every run, so an interrupted run keeps what it measured.
        self.out_path.write_text(json.dumps({"meta": self.meta, "runs": self.runs}, indent=1))


def saturation_step(runner, round_no, server, rate):
    """Runs one saturation step (once more if it was not ok); its verdict."""
    a = runner.args
    for attempt in (1, 2):
        record = runner.run(round_no, "saturation", server, rate, a.users, a.sat_duration, a.warmup,
                            send_interval_us=a.sat_send_interval_us, tag=f"-a{attempt}")
        if record["ok"]:
            record["verdict"], record["reasons"] = judge(record["report"], a.flood_spin)
        else:
            record["verdict"], record["reasons"] = "failed", [str(record.get("error"))]
        if record["verdict"] != "ok" and attempt == 1:
            record["first_verdict"], record["verdict"] = record["verdict"], "retried"
        log(f"    {describe(record)}")
        runner.save()
        if record["verdict"] != "retried":
            return record["verdict"]
    raise AssertionError("unreachable: the second attempt always returns")


def plan_size(args):
    """Runs in the whole plan (saturation estimated at 6 steps a server)."""
    per_round = 0
    if "rates" in args.parts:
        per_round += 2 * len(args.rates)
    if "burst" in args.parts:
        smooth = [r for r in args.burst_rates if "rates" not in args.parts or r not in args.rates]
        per_round += 2 * (len(args.burst_rates) + len(smooth))
    if "memory" in args.parts:
        per_round += 2
    sat = 0
    if "saturation" in args.parts:
        ups = max(1, min((args.sat_to - args.sat_from) // args.sat_step + 1, 4))
        bisect = 2 if args.sat_resolution < args.sat_step else 0
        # Each not-ok step runs twice: the first failure, and about half the bisection.
        sat = 2 * (ups + bisect + 1 + bisect // 2)
    seconds = (per_round * (args.settle + args.warmup + args.duration + RUN_OVERHEAD_S)
               + sat * (args.settle + args.warmup + args.sat_duration + RUN_OVERHEAD_S)) * args.repeats
    return (per_round + sat) * args.repeats, seconds


def resummarise(path, out_path):
    """Re-judges and re-summarises an earlier run's JSON; returns the exit code."""
    data = json.loads(path.read_text())
    meta, runs = data["meta"], data["runs"]
    spin = bool(meta.get("flood_spin"))
    ids = {r["id"] for r in runs}
    for r in runs:
        if r.get("part") != "saturation" or not r["ok"]:
            continue
        verdict, reasons = judge(r["report"], spin)
        r.pop("first_verdict", None)
        # An attempt followed by another at the same step was a first try.
        if verdict != "ok" and r["id"].endswith("-a1") and r["id"][:-1] + "2" in ids:
            r["first_verdict"], verdict = verdict, "retried"
        r["verdict"], r["reasons"] = verdict, reasons
    args = argparse.Namespace(
        rates=meta.get("rates", []), burst_rates=meta.get("burst_rates", []),
        parts=meta.get("parts", list(PARTS)), repeats=meta["repeats"])
    summary = summarise(runs, args)
    meta["resummarised"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "HEAD") or "unknown",
        "from": str(path),
    }
    out_path = out_path or path.with_suffix(".resummarised.json")
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    log(f"wrote {out_path}")
    print(markdown(meta, summary))
    return 0


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main():
    args = parse_args()
    if args.summarise:
        return resummarise(args.summarise, args.out)
    # A SIGTERM to this script unwinds like ^C, so every `finally` stops the
    # processes it started.
    signal.signal(signal.SIGTERM, interrupt)
    preflight(args.no_build)
    meta = machine(args)
    out_path = args.out or REPO / "target" / "bench" / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hongbao-bench-"))
    total, seconds = plan_size(args)
    log(f"parts {','.join(args.parts)}: ~{total} runs, about {seconds / 60:.0f} min; logs in {workdir}, "
        f"results to {out_path}")

    runner = Runner(args, meta, out_path, workdir, total)
    names = list(SERVERS)
    interrupted = False
    try:
        for round_no in range(1, args.repeats + 1):
            order = names if round_no % 2 == 1 else names[::-1]
            if "rates" in args.parts:
                for rate in args.rates:
                    for server in order:
                        record = runner.run(round_no, "rates", server, rate, args.users, args.duration, args.warmup)
                        log(f"    {describe(record)}")
                        runner.save()
            if "burst" in args.parts:
                for rate in args.burst_rates:
                    for server in order:
                        if "rates" not in args.parts or rate not in args.rates:
                            record = runner.run(round_no, "burst-smooth", server, rate, args.users, args.duration,
                                                args.warmup)
                            log(f"    {describe(record)}")
                        record = runner.run(round_no, "burst", server, rate, args.users, args.duration, args.warmup,
                                            burst=True)
                        log(f"    {describe(record)}")
                        runner.save()
            if "memory" in args.parts:
                for server in order:
                    record = runner.run(round_no, "memory", server, 0, args.memory_users, 1, 0, args.memory_bind)
                    log(f"    {describe(record)}")
                    runner.save()
            if "saturation" in args.parts:
                searches = {server: Search(args) for server in order}
                while True:
                    todo = [(s, searches[s].next_rate()) for s in order]
                    todo = [(s, rate) for s, rate in todo if rate is not None]
                    if not todo:
                        break
                    for server, rate in todo:
                        searches[server].record(rate, saturation_step(runner, round_no, server, rate))
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: summarising what was measured")

    summary = summarise(runner.runs, args)
    noisy_rows = [(row["rate"], name) for row in summary["fixed_rate"] for name, s in row["servers"].items()
                  if noisy(s)]
    if noisy_rows:
        log(f"warning: {len(noisy_rows)} row(s) ran with other load above {NOISY_PCT} % of a core "
            f"(another process was busy): {noisy_rows}")
    meta["wall_s"] = round(time.monotonic() - runner.started)
    meta["loadavg_after"] = loadavg()
    meta["interrupted"] = interrupted
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runner.runs}, indent=1))
    log(f"wrote {out_path}; {meta['wall_s'] / 60:.1f} min")
    print(markdown(meta, summary))
    if interrupted:
        return 130
    return 0 if summary["failed_runs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
