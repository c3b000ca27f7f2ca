#!/usr/bin/env python3
"""Envelope generator pacing: is every second within ±1 % of the target?

Owns: starting one `hongbao server` on a loopback port with a per-second
stats file, letting the generator run for `--seconds`, stopping the server by
its pid, and judging each whole second's `generated` count against the target
rate. Must not: leave the server running, or judge the first and last seconds
(the run starts and stops inside them).

The server's generator counts the envelopes it pushed in each wall-clock
second (its own clock, read at every wake-up), so a second's count is exact up
to one wake-up's worth at the boundary: at 200/s that is one envelope, 0.5 %.

Usage:
  tools/check_pacing.py                      # 200/s for 30 s
  tools/check_pacing.py --rate 5000 --seconds 60
Exit status 0 when every whole second is within the tolerance.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "hongbao")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=int, default=200, help="envelopes per second (default 200, the seed's)")
    p.add_argument("--seconds", type=int, default=30, help="whole seconds to judge (default 30)")
    p.add_argument("--tolerance", type=float, default=0.01, help="allowed relative error per second (default 0.01)")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/hongbao")
    args = p.parse_args()

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True, timeout=900)
    stats = tempfile.NamedTemporaryFile(prefix="hongbao-pacing-", suffix=".jsonl", delete=False).name
    port = free_port()
    server = subprocess.Popen(
        [BINARY, "server", "--listen", f"127.0.0.1:{port}", "--no-http", "--quiet",
         "--envelopes-per-sec", str(args.rate), "--stats-jsonl", stats,
         # No client shakes, so the rings must hold the whole run: a full
         # ring makes the generator wait, which is right, but not pacing.
         "--ring-capacity", str(args.rate * (args.seconds + 5))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Two extra seconds: the partial first and last are not judged.
        time.sleep(args.seconds + 2.5)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    with open(stats) as f:
        seconds = [json.loads(line) for line in f if line.strip()]
    os.unlink(stats)
    whole = seconds[1:-1][: args.seconds]
    counts = [s["generator"]["generated"] for s in whole]
    if len(counts) < args.seconds:
        print(f"only {len(counts)} whole seconds recorded, wanted {args.seconds}", file=sys.stderr)
        return 1
    stalls = sum(s["generator"]["ring_full_stalls"] for s in seconds)
    if stalls:
        print(f"the rings filled ({stalls} stalls): the run does not measure pacing", file=sys.stderr)
        return 1
    worst = max(abs(c - args.rate) / args.rate for c in counts)
    total = sum(counts)
    print(f"target {args.rate}/s over {len(counts)} whole seconds: min {min(counts)}, max {max(counts)}, "
          f"total {total} (expected {args.rate * len(counts)}, off by "
          f"{(total - args.rate * len(counts)) / (args.rate * len(counts)):+.4%}); "
          f"worst second {worst:.2%} off")
    print("per second:", " ".join(str(c) for c in counts))
    ok = worst <= args.tolerance
    print("OK: every second within" if ok else "FAIL: a second outside", f"±{args.tolerance:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
