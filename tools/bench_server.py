#!/usr/bin/env python3
"""Per-core server benchmark: hongbao against the zero-logic reference.

Owns: building the release binary, starting each server under test pinned to
core 0 on a fresh loopback port, driving it with `hongbao flood` pinned to
core 1, and turning the flooder's JSON reports into medians, ratios and a
markdown table for docs/BENCHMARKS.md. Must not: leave a process behind (every
process it starts is stopped by its own pid: SIGTERM, then SIGKILL after a
timeout), wait without a timeout, or talk to anything but loopback (servers
listen on 127.0.0.1 only).

What one round runs, hongbao and reference side by side (their order
alternates between rounds so that neither always runs on a warmer machine):
  * for each fixed rate (default 30000,60000,120000 shakes/s): a fresh server,
    10,000 connections, warmup, then a measurement window in which the flooder
    samples the server's CPU at the window's exact edges (--server-pid);
  * a memory run: a fresh server, 18,000 idle logged-in connections (rate 0),
    server RSS before the first connect and after the last login, and the
    connect+login rate.

Figures are medians over rounds with min..max beside them: p99 near
saturation varies 2-4x between runs on a 2-vCPU VM, throughput much less.

Usage:
  tools/bench_server.py                # 3 rounds, 10 s windows
  tools/bench_server.py --quick        # 1 round, 5 s windows: smoke run
  tools/bench_server.py --rates 60000 --repeats 5 --out /tmp/bench.json
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

# Ports for the servers under test: below the ephemeral range (32768+ by
# default), so no client connection can be holding one, and each run gets a
# fresh one so no TIME_WAIT from an earlier run shares its 4-tuples.
PORT_FIRST = 21000
PORT_LAST = 31999

BUILD_TIMEOUT_S = 1800
SERVER_READY_TIMEOUT_S = 10
SERVER_STOP_TIMEOUT_S = 10
# The flooder's own bounds: login timeout (30 s) + settle + warmup + window +
# drain (2 s). The slack covers start-up and the final join.
FLOODER_SLACK_S = 30
LOGIN_TIMEOUT_S = 30


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="rounds; medians are over these (default 3)")
    p.add_argument(
        "--rates",
        default="30000,60000,120000",
        help="fixed shake rates, comma separated (default 30000,60000,120000: below, near and at "
        "the reference floor's sweet spot on one core)",
    )
    p.add_argument("--users", type=int, default=10000, help="connections in the fixed-rate runs (default 10000)")
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
    p.add_argument("--duration", type=int, default=10, help="measurement window, seconds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warmup before the window, seconds (default 2)")
    p.add_argument("--settle", type=int, default=2, help="seconds after the last login before RSS (default 2)")
    p.add_argument("--flood-spin", action="store_true",
                   help="run the flooder with --spin (never sleeps while shaking): on a VM a sleeping "
                   "vCPU can take milliseconds to wake, which the latency would charge to the server; "
                   "the flooder's CPU figures then only say it used its whole core")
    p.add_argument("--send-interval-us", type=int, default=None,
                   help="the flooder's --send-interval-us (default: the flooder's own default)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 5 s windows")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/hongbao")
    p.add_argument("--out", type=Path, help="results JSON (default target/bench/bench-<time>.json)")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
        args.duration = 5
    args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if args.repeats < 1 or not args.rates or min(args.rates) <= 0:
        p.error("--repeats must be >= 1 and --rates a list of positive numbers")
    return args


def build():
    log("building: cargo build --release")
    subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True, timeout=BUILD_TIMEOUT_S)
    if not BINARY.exists():
        raise SystemExit(f"build produced no {BINARY}")


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


def stop(proc):
    """SIGTERM the process we started, by its pid; SIGKILL it after a timeout."""
    if proc.poll() is not None:
        return proc.returncode
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"  server pid {proc.pid} ignored SIGTERM for {SERVER_STOP_TIMEOUT_S} s: SIGKILL")
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=SERVER_STOP_TIMEOUT_S)


def tail(path, lines=5):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def one_run(args, workdir, run_id, server, port, rate, users, duration, warmup, binds):
    """Starts `server` on `port`, floods it, stops it. Returns a run record."""
    record = {
        "id": run_id,
        "server": server,
        "rate": rate,
        "users": users,
        "kind": "memory" if rate == 0 else "rate",
        "ok": False,
    }
    server_log = workdir / f"{run_id}.server.log"
    json_path = workdir / f"{run_id}.flood.json"
    server_cmd = [
        "taskset", "-c", SERVER_CORE, str(BINARY), "server",
        "--listen", f"127.0.0.1:{port}", "--threads", "1", "--quiet", "--no-http",
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
    if args.send_interval_us is not None:
        flood_cmd += ["--send-interval-us", str(args.send_interval_us)]
    record["server_cmd"] = " ".join(server_cmd)
    record["flood_cmd"] = " ".join(flood_cmd)
    flood_timeout = LOGIN_TIMEOUT_S + args.settle + warmup + duration + 2 + FLOODER_SLACK_S
    with open(server_log, "wb") as out:
        proc = subprocess.Popen(server_cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_until_accepting(port, proc, SERVER_READY_TIMEOUT_S)
        # taskset execs the server, so the child's pid is the server's own.
        flood_cmd[flood_cmd.index("PID")] = str(proc.pid)
        env = dict(os.environ, RUST_BACKTRACE="0")
        result = subprocess.run(flood_cmd, capture_output=True, text=True, timeout=flood_timeout, env=env)
        record["flood_stdout"] = result.stdout
        if result.returncode != 0:
            record["error"] = f"flooder exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        elif proc.poll() is not None:
            record["error"] = f"server exited with {proc.returncode} during the run"
        else:
            record["report"] = json.loads(json_path.read_text())
            record["ok"] = True
    except subprocess.TimeoutExpired:
        record["error"] = f"flooder did not finish within {flood_timeout} s (killed)"
    except (RuntimeError, OSError, ValueError) as e:
        record["error"] = str(e)
    finally:
        record["server_exit"] = stop(proc)
        record["server_log_tail"] = tail(server_log)
    return record


def describe(record):
    if not record["ok"]:
        return f"FAILED: {record.get('error')}"
    r = record["report"]
    s = r.get("server") or {}
    if record["kind"] == "memory":
        return (f"RSS {s.get('rss_bytes_per_conn', 0):.0f} B/conn, "
                f"connect+login {r['connect']['logins_per_sec']:.0f}/s")
    cpu = s.get("cpu_us_per_answered")
    return (f"answered {r['window']['answered_per_sec']:.0f}/s, server "
            f"{cpu if cpu is None else round(cpu, 2)} µs/shake, p50 {r['latency_corrected']['p50_us']:.0f} µs, "
            f"p99 {r['latency_corrected']['p99_us']:.0f} µs, lost {r['window']['lost']}, "
            f"others {foreign_pct(r):.0f}% of a core")


def foreign_pct(report):
    """CPU used during the window by anything but the server and the flooder,
    in percent of one core: the sign of a machine that was not quiet."""
    secs = report["window"]["sampled_secs"] or report["window"]["secs"]
    return report.get("foreign_cpu_us", 0) / 1e4 / secs


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs, rates):
    ok = [r for r in runs if r["ok"]]
    fixed = []
    for rate in rates:
        per_server = {}
        for server in SERVERS:
            reps = [r["report"] for r in ok if r["kind"] == "rate" and r["server"] == server and r["rate"] == rate]
            if not reps:
                continue
            per_server[server] = {
                "server": server,
                "rate": rate,
                "runs": len(reps),
                "answered_per_sec": spread([x["window"]["answered_per_sec"] for x in reps]),
                "server_cpu_us_per_shake": spread([(x.get("server") or {}).get("cpu_us_per_answered") for x in reps]),
                "latency_corrected_p50_us": spread([x["latency_corrected"]["p50_us"] for x in reps]),
                "latency_corrected_p99_us": spread([x["latency_corrected"]["p99_us"] for x in reps]),
                "latency_corrected_p999_us": spread([x["latency_corrected"]["p999_us"] for x in reps]),
                "latency_service_p50_us": spread([x["latency_service"]["p50_us"] for x in reps]),
                "latency_service_p99_us": spread([x["latency_service"]["p99_us"] for x in reps]),
                "flooder_cpu_us_per_request": spread([x["flooder"]["cpu_us_per_request"] for x in reps]),
                "send_lag_p99_us": spread([x["send_lag"]["p99_us"] for x in reps]),
                # The flooder's share of its core over the window: near 100 %
                # its own queueing is in the latency, charged to the server.
                "flooder_core_pct": spread([
                    x["flooder"]["cpu_us_per_request"] * x["window"]["answered_per_sec"] / 1e4
                    for x in reps if x["flooder"]["cpu_us_per_request"] is not None]),
                "foreign_cpu_pct": spread([foreign_pct(x) for x in reps]),
                "lost": sum(x["window"]["lost"] for x in reps),
                "errors": sum(x["window"]["conn_errors"] + x["window"]["bad_frames"] + x["window"]["unsent"]
                              for x in reps),
            }
        ratio = None
        h = per_server.get("hongbao", {}).get("server_cpu_us_per_shake")
        f = per_server.get("reference", {}).get("server_cpu_us_per_shake")
        if h and f and f["median"]:
            ratio = h["median"] / f["median"]
        fixed.append({"rate": rate, "servers": per_server, "cpu_ratio_hongbao_over_reference": ratio})
    memory = {}
    for server in SERVERS:
        reps = [r["report"] for r in ok if r["kind"] == "memory" and r["server"] == server]
        if reps:
            memory[server] = {
                "runs": len(reps),
                "connections": reps[0]["connect"]["logged_in"],
                "rss_bytes_per_conn": spread([(x.get("server") or {}).get("rss_bytes_per_conn") for x in reps]),
                "logins_per_sec": spread([x["connect"]["logins_per_sec"] for x in reps]),
                "server_cpu_us_per_login": spread(
                    [(x.get("server") or {}).get("connect_cpu_us_per_login") for x in reps]),
            }
    return {"fixed_rate": fixed, "memory": memory, "failed_runs": len(runs) - len(ok)}


# Other load above this share of a core (median over rounds) marks a row as
# measured on a machine that was not quiet: a few percent is kernel threads
# and clock-tick rounding, tens of percent is another workload.
NOISY_PCT = 10


# The flooder's core above this share means its own queueing is part of the
# latency: the row then measures the flooder as much as the server.
FLOODER_BUSY_PCT = 70


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


def markdown(meta, summary):
    out = []
    out.append(f"Machine: {meta['cpu']} × {meta['cpus']} vCPU, Linux {meta['kernel']}; "
               f"server pinned to core {SERVER_CORE}, flooder to core {FLOODER_CORE}; loopback; "
               f"commit {meta['commit'][:12]}{' (dirty)' if meta['dirty'] else ''}; {meta['date']}.")
    out.append(f"Each figure: median over {meta['repeats']} round(s), (min..max) beside it; "
               f"{meta['users']:,} connections, {meta['warmup']} s warmup, {meta['duration']} s window; "
               "latency in µs, corrected = from intended send time"
               + (f"; flooder --send-interval-us {meta['send_interval_us']}"
                  if meta.get("send_interval_us") is not None else "")
               + ("; flooder spinning (--spin), so its CPU column is its whole core." if meta.get("flood_spin") else "."))
    out.append("")
    out.append("| shakes/s | server | answered/s | server CPU µs/shake | hongbao ÷ reference "
               "| p50 µs | p99 µs | p99.9 µs | service p99 µs | send lag p99 µs | flooder core % "
               "| lost + unsent + errors | others' CPU % |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in summary["fixed_rate"]:
        for name, s in row["servers"].items():
            ratio = row["cpu_ratio_hongbao_over_reference"]
            ratio_cell = f"{ratio:.2f}" if (ratio is not None and name == "hongbao") else ""
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
    out.append("")
    out.append("| server | idle connections | server RSS bytes/conn | connect+login /s (end to end) "
               "| server CPU µs/login | accept+login capacity /s per server core |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for name, m in summary["memory"].items():
        cpu = m.get("server_cpu_us_per_login")
        capacity = None
        if cpu and cpu["min"] > 0:
            capacity = {"median": 1e6 / cpu["median"], "min": 1e6 / cpu["max"],
                        "max": 1e6 / cpu["min"], "n": cpu["n"]}
        out.append(f"| {name} | {m['connections']:,} | {fmt(m['rss_bytes_per_conn'], 0)} | "
                   f"{fmt(m['logins_per_sec'], 0)} | {fmt(cpu, 2)} | {fmt(capacity, 0)} |")
    out.append("")
    out.append("\"others' CPU %\" is CPU time in the window used by anything but the server and the "
               "flooder (other processes, kernel threads), in percent of one core, from /proc/stat's "
               "tick samples against the two processes' exact run time, so a few percent either way "
               "(even negative) is noise; "
               f"⚠ marks rows above {NOISY_PCT} %: the machine was not quiet and the row is suspect. "
               "\"flooder core %\" is the flooder's CPU per request × answered per second: "
               f"⚠ above {FLOODER_BUSY_PCT} % means its own queueing is in the latency (with --flood-spin "
               "it is always ~100 % and says nothing). \"lost + unsent + errors\" sums over the rounds; "
               "percentiles count answered requests only, so a row with losses flatters its tail.")
    if summary["failed_runs"]:
        out.append("")
        out.append(f"{summary['failed_runs']} run(s) failed; see `runs[].error` in the JSON.")
    return "\n".join(out)


def git(*argv):
    try:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


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
        "repeats": args.repeats,
        "rates": args.rates,
        "users": args.users,
        "memory_users": args.memory_users,
        "flood_spin": args.flood_spin,
        "send_interval_us": args.send_interval_us,
        "memory_bind": args.memory_bind,
        "duration": args.duration,
        "warmup": args.warmup,
        "settle": args.settle,
        "quick": args.quick,
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


def main():
    args = parse_args()
    preflight(args.no_build)
    meta = machine(args)
    out_path = args.out or REPO / "target" / "bench" / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hongbao-bench-"))
    log(f"logs in {workdir}, results to {out_path}")

    runs = []
    port = PORT_FIRST
    names = list(SERVERS)
    for round_no in range(1, args.repeats + 1):
        order = names if round_no % 2 == 1 else names[::-1]
        plan = [(rate, args.users, args.duration, args.warmup, "") for rate in args.rates]
        plan.append((0, args.memory_users, 1, 0, args.memory_bind))
        for rate, users, duration, warmup, binds in plan:
            for server in order:
                port = free_port(port + 1)
                run_id = f"r{round_no}-{server}-{'mem' if rate == 0 else rate}"
                log(f"[round {round_no}/{args.repeats}] {server:<9} "
                    f"{'memory' if rate == 0 else f'{rate}/s':>9} on port {port} ...")
                record = one_run(args, workdir, run_id, server, port, rate, users, duration, warmup, binds)
                record["round"] = round_no
                runs.append(record)
                log(f"    {describe(record)}")
                # Write as we go, so an interrupted run keeps what it measured.
                out_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))

    summary = summarise(runs, args.rates)
    noisy_rows = [(row["rate"], name) for row in summary["fixed_rate"] for name, s in row["servers"].items()
                  if noisy(s)]
    if noisy_rows:
        log(f"warning: {len(noisy_rows)} row(s) ran with other load above {NOISY_PCT} % of a core "
            f"(another process was busy): {noisy_rows}")
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    log(f"wrote {out_path}")
    print(markdown(meta, summary))
    return 0 if summary["failed_runs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
