#!/usr/bin/env python3
"""Flooder benchmark: what `hongbao flood` costs per request, and how fast one
flooder core sends on time, against the zero-logic reference server.

Owns: starting the reference server (`hongbao server --reference`) pinned to
core 0 on a fresh loopback port, driving it with one flooder thread pinned to
core 1, and turning the flooder's JSON reports into medians, paired ratios and
markdown tables. Must not: leave a process behind (every process it starts is
stopped by its own pid), wait without a timeout, or talk to anything but
loopback. Process handling, ports and formatting are tools/bench_server.py's,
imported from it.

Every run: a fresh reference server, 10,000 connections logged in as fast as
both sides go, 2 s warmup, then a window in which the flooder samples its own
CPU and the server's (--server-pid) at the window's exact edges.

  * Efficiency, at each rate (default 30k, 60k, 120k/s) for each flooder
    --send-interval-us (default 200, 500): flooder CPU µs per request sent,
    server CPU µs per request answered, and their ratio taken per run (both
    measured over the same window, so drift between runs cancels), then
    medians over --repeats rounds. Target: the flooder at 60k/s costs at most
    1.5 x the reference server.
  * Max rate, for each --search-intervals value (default 200, 500): rates from
    --search-from up to --search-to in --search-step steps, --search-repeats
    rounds. A rate is driven on time when its median send-lag p99 (actual -
    intended send time) is <= 1 ms and every round was clean: nothing unsent
    or lost, no connection or frame errors, answered within 0.1 % of sent.
    The figure is the highest such rate.
  * Connections established per second: every run's connect+login rate.

Within a round every configuration runs once, round-robin (reversed on even
rounds), so drift on a shared VM hits all configurations alike. Figures are
medians with min..max beside them.

Usage:
  tools/bench_flood.py                  # 5 efficiency + 3 search rounds, 8 s windows
  tools/bench_flood.py --quick          # 1 round each, 3 s windows: smoke run
  tools/bench_flood.py --no-build --duration 5 --out /tmp/flood.json
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import bench_server as bs

SERVER = "reference"
WARMUP_S = 2
SETTLE_S = 2
# The flooder's send-lag bound for "on time": the flooder's own warning
# threshold, so a passing rate is one it runs without warning.
SEND_LAG_P99_MAX_US = 1000
# Answers counted in the window may differ from requests sent in it by those
# in flight at its edges: a few dozen, far under this share.
ANSWERED_TOLERANCE = 0.001
# The rate the efficiency target is judged at, and the target itself.
TARGET_RATE = 60000
TARGET_RATIO = 1.5
# Seconds a run takes beyond warmup + window: server start, connect, settle,
# drain (longer when requests are lost), stop. Only for the time estimate.
RUN_OVERHEAD_S = SETTLE_S + 2
QUICK_DURATION_S = 3


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="30000,60000,120000",
                   help="efficiency rates, shakes/s, comma separated (default 30000,60000,120000)")
    p.add_argument("--send-intervals", default="200,500",
                   help="flooder --send-interval-us values for the efficiency table (default 200,500)")
    p.add_argument("--repeats", type=int, default=5, help="efficiency rounds (default 5)")
    p.add_argument("--search-intervals", default="200,500",
                   help="--send-interval-us values for the max-rate search (default 200,500; '' = no search)")
    p.add_argument("--search-from", type=int, default=60000, help="first rate of the search (default 60000)")
    p.add_argument("--search-step", type=int, default=30000, help="rate step of the search (default 30000)")
    p.add_argument("--search-to", type=int, default=300000, help="last rate of the search (default 300000)")
    p.add_argument("--search-repeats", type=int, default=3, help="max-rate search rounds (default 3)")
    p.add_argument("--users", type=int, default=10000, help="connections per run (default 10000)")
    p.add_argument("--duration", type=int, default=8, help="measurement window, seconds (default 8)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: 1 round of each, {QUICK_DURATION_S} s windows")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/hongbao")
    p.add_argument("--out", type=Path, help="results JSON (default target/bench/flood-<time>.json)")
    args = p.parse_args()
    if args.quick:
        args.repeats = args.search_repeats = 1
        args.duration = QUICK_DURATION_S
    args.rates = ints(args.rates)
    args.send_intervals = ints(args.send_intervals)
    args.search_intervals = ints(args.search_intervals)
    if (args.repeats < 1 or args.search_repeats < 1 or args.duration < 1 or not args.rates
            or min(args.rates) <= 0 or not args.send_intervals or args.search_step <= 0
            or not 0 < args.search_from <= args.search_to):
        p.error("repeats, duration, rates and the search bounds must be positive, and the lists non-empty")
    args.search_rates = list(range(args.search_from, args.search_to + 1, args.search_step))
    return args


def run(args, workdir, port, phase, round_no, rate, interval):
    """One reference server + flooder run; bench_server's record plus ours."""
    run_id = f"{phase}-r{round_no}-{rate}-si{interval}"
    # The flooder options bench_server.one_run reads besides its arguments.
    opts = argparse.Namespace(settle=SETTLE_S, flood_spin=False, send_interval_us=interval)
    started = time.monotonic()
    record = bs.one_run(opts, workdir, run_id, SERVER, port, rate, args.users, args.duration, WARMUP_S, "")
    record.update(phase=phase, round=round_no, send_interval_us=interval, port=port,
                  wall_s=round(time.monotonic() - started, 1))
    return record


def figures(record):
    """The per-run figures this benchmark reports, from the flooder's JSON."""
    r = record["report"]
    w = r["window"]
    flooder = r["flooder"]["cpu_us_per_request"]
    server = (r.get("server") or {}).get("cpu_us_per_answered")
    errors = w["other_results"] + w["unexpected_frames"] + w["bad_frames"] + w["conn_errors"] + w["connect_failures"]
    return {
        "flooder_us": flooder,
        "server_us": server,
        "ratio": flooder / server if flooder is not None and server else None,
        "send_lag_p99_us": r["send_lag"]["p99_us"],
        "corrected_p99_us": r["latency_corrected"]["p99_us"],
        "logins_per_sec": r["connect"]["logins_per_sec"],
        "answered_per_sec": w["answered_per_sec"],
        "thread_cpu_max_pct": r["flooder"]["thread_cpu_max_pct"],
        "foreign_pct": bs.foreign_pct(r),
        "lost": w["lost"],
        "unsent": w["unsent"],
        "errors": errors,
        "warnings": r["flooder"]["warnings"],
        "clean": (w["lost"] == 0 and w["unsent"] == 0 and errors == 0 and w["sent"] > 0
                  and abs(w["answered"] - w["sent"]) <= ANSWERED_TOLERANCE * w["sent"]),
    }


def num(x):
    return "–" if x is None else f"{x:.2f}"


def describe(record):
    if not record["ok"]:
        return f"FAILED: {record.get('error')}"
    f = figures(record)
    return (f"flooder {num(f['flooder_us'])} µs/req, server {num(f['server_us'])} µs/ans, "
            f"ratio {num(f['ratio'])}, send lag p99 {f['send_lag_p99_us']:.0f} µs, "
            f"corrected p99 {f['corrected_p99_us']:.0f} µs, answered {f['answered_per_sec']:.0f}/s, "
            f"logins {f['logins_per_sec']:.0f}/s, lost {f['lost']} unsent {f['unsent']} errors {f['errors']}"
            + (f", {len(f['warnings'])} warning(s)" if f["warnings"] else "")
            + f" [{record['wall_s']} s]")


def group(runs, phase, rate, interval):
    """The rounds of one configuration: (all records, figures of the ok ones)."""
    records = [r for r in runs if r["phase"] == phase and r["rate"] == rate and r["send_interval_us"] == interval]
    return records, [figures(r) for r in records if r["ok"]]


def row(records, figs):
    out = {"runs": len(records), "failed": len(records) - len(figs)}
    for key in ("flooder_us", "server_us", "ratio", "send_lag_p99_us", "corrected_p99_us", "logins_per_sec",
                "answered_per_sec", "thread_cpu_max_pct", "foreign_pct"):
        out[key] = bs.spread([f[key] for f in figs])
    out["lost_unsent_errors"] = sum(f["lost"] + f["unsent"] + f["errors"] for f in figs)
    out["warned_runs"] = sum(1 for f in figs if f["warnings"])
    out["all_clean"] = bool(figs) and not out["failed"] and all(f["clean"] for f in figs)
    return out


def summarise(args, runs):
    efficiency = []
    for interval in args.send_intervals:
        for rate in args.rates:
            efficiency.append({"rate": rate, "send_interval_us": interval,
                               **row(*group(runs, "efficiency", rate, interval))})
    search = []
    max_rate = {}
    for interval in args.search_intervals:
        best = None
        for rate in args.search_rates:
            r = {"rate": rate, "send_interval_us": interval, **row(*group(runs, "search", rate, interval))}
            lag = r["send_lag_p99_us"]
            r["on_time"] = bool(r["all_clean"] and lag and lag["median"] <= SEND_LAG_P99_MAX_US)
            if r["on_time"]:
                best = rate
            search.append(r)
        max_rate[interval] = best
    ok = [figures(r) for r in runs if r["ok"]]
    return {
        "efficiency": efficiency,
        "search": search,
        "max_rate": max_rate,
        "logins_per_sec": bs.spread([f["logins_per_sec"] for f in ok]),
        "failed_runs": len(runs) - len(ok),
        "warned_runs": sum(1 for f in ok if f["warnings"]),
    }


def markdown(meta, args, summary):
    out = [
        f"Machine: {meta['cpu']} × {meta['cpus']} vCPU, Linux {meta['kernel']}; reference server "
        f"(`--reference --threads 1`) pinned to core {bs.SERVER_CORE}, flooder (`--threads 1`) to core "
        f"{bs.FLOODER_CORE}; loopback; {args.users:,} connections, {WARMUP_S} s warmup, {args.duration} s "
        f"window; commit {meta['commit'][:12]}{' (dirty)' if meta['dirty'] else ''}; {meta['date']}.",
        "",
        f"Efficiency: median over {args.repeats} round(s), (min..max) beside it. Flooder µs/req is its CPU "
        "per request sent, server µs/req the reference server's per request answered; flooder ÷ server is "
        "taken per run, then the median.",
        "",
        "| shakes/s | send interval µs | flooder µs/req | server µs/req | flooder ÷ server | send lag p99 µs "
        "| corrected p99 µs | flooder busiest thread % | connect+login /s | lost + unsent + errors "
        "| runs warned | others' CPU % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["efficiency"]:
        out.append(
            f"| {r['rate']:,} | {r['send_interval_us']} | {bs.fmt(r['flooder_us'], 2)} | "
            f"{bs.fmt(r['server_us'], 2)} | {bs.fmt(r['ratio'], 2)} | {bs.fmt(r['send_lag_p99_us'], 0)} | "
            f"{bs.fmt(r['corrected_p99_us'], 0)} | {bs.fmt(r['thread_cpu_max_pct'], 0)} | "
            f"{bs.fmt(r['logins_per_sec'], 0)} | {r['lost_unsent_errors']} | "
            f"{r['warned_runs']}/{r['runs'] - r['failed']} | {bs.fmt(r['foreign_pct'], 0)} |")
    out.append("")
    for r in summary["efficiency"]:
        if r["rate"] == TARGET_RATE and r["ratio"]:
            met = r["ratio"]["median"] <= TARGET_RATIO
            out.append(f"- Target flooder ≤ {TARGET_RATIO} × server at {TARGET_RATE:,}/s, send interval "
                       f"{r['send_interval_us']} µs: {r['ratio']['median']:.2f} × — **{'met' if met else 'not met'}**.")
    logins = summary["logins_per_sec"]
    out.append(f"- Connections established (connect + login, {args.users:,} users, end to end): "
               f"{bs.fmt(logins, 0)} /s over {logins['n'] if logins else 0} runs.")
    if summary["search"]:
        out += [
            "",
            f"Max rate: median over {args.search_repeats} round(s). On time = median send-lag p99 ≤ "
            f"{SEND_LAG_P99_MAX_US} µs and every round clean (nothing lost or unsent, no errors, answered "
            f"within {ANSWERED_TOLERANCE:.1%} of sent).",
            "",
            "| shakes/s | send interval µs | send lag p99 µs | corrected p99 µs | answered/s | flooder µs/req "
            "| flooder busiest thread % | lost + unsent + errors | on time |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in summary["search"]:
            out.append(
                f"| {r['rate']:,} | {r['send_interval_us']} | {bs.fmt(r['send_lag_p99_us'], 0)} | "
                f"{bs.fmt(r['corrected_p99_us'], 0)} | {bs.fmt(r['answered_per_sec'], 0)} | "
                f"{bs.fmt(r['flooder_us'], 2)} | {bs.fmt(r['thread_cpu_max_pct'], 0)} | "
                f"{r['lost_unsent_errors']} | {'yes' if r['on_time'] else 'no'} |")
        out.append("")
        for interval, best in summary["max_rate"].items():
            out.append(f"- Highest rate one flooder core drives on time, send interval {interval} µs: "
                       + (f"**{best:,}/s**." if best else f"none from {args.search_rates[0]:,}/s."))
    out += [
        "",
        "\"flooder busiest thread %\" is its one thread's CPU in its busiest window second; \"runs warned\" "
        "counts runs where the flooder warned that it was a limit (send-lag p99 over 1 ms, or a thread over "
        "90 % busy); \"others' CPU %\" is CPU in the window used by anything but the two processes, in "
        "percent of one core (a few percent either way is tick-sampling noise).",
    ]
    if summary["failed_runs"]:
        out += ["", f"{summary['failed_runs']} run(s) failed; see `runs[].error` in the JSON."]
    return "\n".join(out)


def machine():
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "commit": bs.git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(bs.git("status", "--porcelain", "--untracked-files=no")),
    }


def main():
    args = parse_args()
    bs.preflight(args.no_build)
    meta = {**machine(), "args": {k: v for k, v in vars(args).items() if k != "out"}}
    out_path = args.out or bs.REPO / "target" / "bench" / time.strftime("flood-%Y%m%d-%H%M%S.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hongbao-bench-flood-"))

    plan = []
    for phase, rounds, rates, intervals in (("efficiency", args.repeats, args.rates, args.send_intervals),
                                            ("search", args.search_repeats, args.search_rates,
                                             args.search_intervals)):
        configs = [(rate, interval) for interval in intervals for rate in rates]
        for round_no in range(1, rounds + 1):
            order = configs if round_no % 2 == 1 else configs[::-1]
            plan += [(phase, round_no, rounds, rate, interval) for rate, interval in order]
    estimate_min = len(plan) * (WARMUP_S + args.duration + RUN_OVERHEAD_S) / 60
    bs.log(f"{len(plan)} runs, about {estimate_min:.0f} min; logs in {workdir}, results to {out_path}")

    started = time.monotonic()
    runs = []
    port = bs.PORT_FIRST
    for n, (phase, round_no, rounds, rate, interval) in enumerate(plan, 1):
        port = bs.free_port(port + 1)
        bs.log(f"[{n}/{len(plan)} {phase} round {round_no}/{rounds}] {rate}/s, send interval {interval} µs, "
            f"port {port} ...")
        record = run(args, workdir, port, phase, round_no, rate, interval)
        runs.append(record)
        bs.log(f"    {describe(record)}")
        # Write as we go, so an interrupted run keeps what it measured.
        out_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))

    summary = summarise(args, runs)
    meta["wall_s"] = round(time.monotonic() - started)
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    bs.log(f"wrote {out_path}; {meta['wall_s'] / 60:.1f} min")
    print(markdown(meta, args, summary))
    return 0 if summary["failed_runs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
