#!/usr/bin/env python3
"""The durable ledger's effect on shakes: ledger on against ledger off.

Owns: starting hongbao (one worker pinned to core 0, HTTP control on) with
and without --data-dir, side by side in each round (their order alternating
between rounds), with 200 envelopes/s granted and sent packets flowing
(GET /fahongbao, every packet pushed to 3 online users who claim it at once),
and driving it with `hongbao flood` pinned to core 1 at a fixed shake rate.
It reports, as medians over rounds with the on/off ratio of each round:
the p99 of the shakes that moved no money (the flooder's `latency_no_money`),
the p99 of all shakes, the server's CPU per shake, grants and claims per
second, and the ledger's records and syncs per second. Must not: leave a
process behind (every process is stopped by its own pid), or talk to
anything but loopback.

Usage:
  tools/bench_ledger.py                       # 3 rounds at 60,000 shakes/s
  tools/bench_ledger.py --repeats 5 --rate 60000 --packets-per-sec 50
  tools/bench_ledger.py --quick               # 1 round, 5 s window
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (the shared helpers)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rate", type=int, default=60000, help="shakes per second (default 60000)")
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--packets-per-sec", type=int, default=50, help="sent packets per second (default 50)")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.quick:
        a.repeats, a.duration = 1, 5
    return a


def http(port, target):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=10) as r:
        return json.loads(r.read())


def one_run(args, workdir, run_id, ledger_on, port, http_port):
    data_dir = workdir / f"{run_id}.data"
    server_cmd = [
        "taskset", "-c", bs.SERVER_CORE, str(bs.BINARY), "server",
        "--listen", f"127.0.0.1:{port}", "--threads", "1", "--quiet",
        "--http", f"127.0.0.1:{http_port}", "--envelopes-per-sec", "200",
        # Rates above 10 per user per second: the per-connection share off.
        "--conn-qps-max", "0",
    ] + (["--data-dir", str(data_dir)] if ledger_on else [])
    json_path = workdir / f"{run_id}.flood.json"
    flood_cmd = [
        "taskset", "-c", bs.FLOODER_CORE, str(bs.BINARY), "flood",
        "--server", f"127.0.0.1:{port}", "--server-pid", "PID",
        "--users", str(args.users), "--qps", str(args.rate), "--threads", "1", "--no-http",
        # The least send lag, as tools/bench_server.py: the latency compared
        # on and off is the server's as far as one flooder core allows.
        "--send-interval-us", "50",
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--login-timeout", str(bs.LOGIN_TIMEOUT_S), "--json", str(json_path), "--quiet",
    ]
    record = {"id": run_id, "ledger": ledger_on, "ok": False, "server_cmd": " ".join(server_cmd)}
    log_path = workdir / f"{run_id}.server.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(server_cmd, stdout=out, stderr=subprocess.STDOUT, cwd=bs.REPO)
    try:
        bs.wait_until_accepting(port, proc, bs.SERVER_READY_TIMEOUT_S)
        total = args.packets_per_sec * (args.duration + args.warmup + 60)
        http(http_port, f"/fahongbao?qps={args.packets_per_sec}&sum={total}&min=0&max={args.users - 1}")
        flood_cmd[flood_cmd.index("PID")] = str(proc.pid)
        timeout = bs.LOGIN_TIMEOUT_S + args.warmup + args.duration + bs.FLOODER_SLACK_S
        # The server's totals, published once a second, around the whole
        # flood (connect, warmup, window): rates over ~15 s.
        before, t0 = http(http_port, "/status")["total"], time.monotonic()
        result = subprocess.run(flood_cmd, capture_output=True, text=True, timeout=timeout)
        after, t1 = http(http_port, "/status")["total"], time.monotonic()
        if result.returncode != 0:
            record["error"] = f"flooder exited {result.returncode}: {result.stderr.strip()[-1000:]}"
        else:
            record["report"] = json.loads(json_path.read_text())
            secs = t1 - t0
            record["ledger_records_per_sec"] = (after["ledger"]["records"] - before["ledger"]["records"]) / secs
            record["ledger_syncs_per_sec"] = (after["ledger"]["syncs"] - before["ledger"]["syncs"]) / secs
            record["claims_paid_per_sec"] = (after["server"]["claims_paid"] - before["server"]["claims_paid"]) / secs
            record["ok"] = True
    except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        record["error"] = str(e)
    finally:
        record["server_exit"] = bs.stop(proc)
        record["server_log_tail"] = bs.tail(log_path)
        shutil.rmtree(data_dir, ignore_errors=True)
    return record


def figures(r):
    rep = r["report"]
    w = rep["window"]
    return {
        "p99_no_money_us": rep["latency_no_money"]["p99_us"],
        "p99_all_us": rep["latency_corrected"]["p99_us"],
        "server_cpu_us_per_shake": (rep.get("server") or {}).get("cpu_us_per_answered"),
        "got_per_sec": w["got"] / w["secs"],
        "claims_paid_per_sec": r["claims_paid_per_sec"],
        "ledger_records_per_sec": r["ledger_records_per_sec"],
        "ledger_syncs_per_sec": r["ledger_syncs_per_sec"],
    }


def main():
    args = parse_args()
    bs.preflight(args.no_build)
    workdir = Path(tempfile.mkdtemp(prefix="hongbao-bench-ledger-"))
    port = bs.PORT_FIRST + 500
    runs, pairs = [], []
    for round_no in range(args.repeats):
        order = [False, True] if round_no % 2 == 0 else [True, False]
        pair = {}
        for ledger_on in order:
            port = bs.free_port(port + 1)
            http_port = bs.free_port(port + 1)
            run_id = f"r{round_no}-{'on' if ledger_on else 'off'}"
            bs.log(f"round {round_no + 1}/{args.repeats}: ledger {'on' if ledger_on else 'off'} at {args.rate}/s")
            r = one_run(args, workdir, run_id, ledger_on, port, http_port)
            runs.append(r)
            if not r["ok"]:
                bs.log(f"  failed: {r.get('error')}\n{r.get('server_log_tail')}")
                continue
            pair[ledger_on] = figures(r)
            bs.log(f"  {json.dumps(pair[ledger_on])}")
            port = http_port
        if len(pair) == 2:
            pairs.append(pair)
    if not pairs:
        raise SystemExit("no round completed")
    keys = list(pairs[0][True].keys())
    summary = {}
    for k in keys:
        on = [p[True][k] for p in pairs if p[True][k] is not None]
        off = [p[False][k] for p in pairs if p[False][k] is not None]
        ratios = [p[True][k] / p[False][k] for p in pairs if p[True][k] and p[False][k]]
        summary[k] = {
            "on": statistics.median(on) if on else None,
            "off": statistics.median(off) if off else None,
            "ratio_on_off": statistics.median(ratios) if ratios else None,
            "ratio_min_max": [min(ratios), max(ratios)] if ratios else None,
        }
    out = args.out or bs.REPO / "target" / "bench" / time.strftime("ledger-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args) | {"out": str(out)}, "summary": summary, "runs": runs},
                              indent=2, default=str))
    print(f"| figure | ledger off | ledger on | on/off (median of {len(pairs)} rounds; min..max) |")
    print("|---|---|---|---|")
    for k, s in summary.items():
        rng = s["ratio_min_max"]
        ratio = f"{s['ratio_on_off']:.2f} ({rng[0]:.2f}..{rng[1]:.2f})" if s["ratio_on_off"] else "—"
        fmt = lambda v: "—" if v is None else f"{v:,.1f}"  # noqa: E731
        print(f"| {k} | {fmt(s['off'])} | {fmt(s['on'])} | {ratio} |")
    print(f"\nresults: {out}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
