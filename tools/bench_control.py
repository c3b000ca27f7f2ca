#!/usr/bin/env python3
"""/status latency of the HTTP control with 300 idle control connections.

Owns: starting `hongbao server` (one worker, loopback, no envelopes) on fresh
ports, holding N idle TCP connections to its control port (reopened as soon
as the server closes one at its header deadline, so N stay open throughout:
the issue's attack, and the "reopened every 2 s" one), and timing sequential
`GET /status` requests (connect to the last byte of the answer) against the
same server without them. Must not: leave a process behind (the server is
stopped by its pid: SIGTERM, then SIGKILL after a timeout), wait without a
timeout, change a host setting, or talk to anything but loopback.

A run is: a fresh server; --samples GETs with no idle connections
(baseline); then N idle connections and --samples GETs again, 50 ms apart.
With N above the control's cap (256) and reopening on, every reopen evicts
another idle connection, which reopens in turn: a connect storm of thousands
a second ("reopened" counts them), the harshest form of the attack. The figures
are the median over --runs runs of each run's median, and the worst single
GET seen. Uses target/release/hongbao, built first unless --no-build.

    python3 tools/bench_control.py [--runs 5] [--idle 300] [--samples 50] [--no-reopen]
"""

import argparse
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release" / "hongbao"
TIMEOUT = 10.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def stop(proc, what):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        log(f"{what} (pid {proc.pid}) ignored SIGTERM: SIGKILL")
        proc.kill()
        proc.wait(timeout=TIMEOUT)


def build():
    log("building: cargo build --release --locked")
    proc = subprocess.Popen(["cargo", "build", "--release", "--locked"], cwd=REPO)
    try:
        code = proc.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        stop(proc, "cargo")
        raise SystemExit("cargo build took over an hour")
    if code != 0:
        raise SystemExit(f"cargo build failed ({code})")


def start_server():
    proc = subprocess.Popen(
        [str(BINARY), "server", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--threads", "1", "--no-pin", "--envelopes-per-sec", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    # The start line: "hongbao server listening on ADDR (... http HTTP, ...)".
    ready = {}

    def read_start():
        ready["line"] = proc.stdout.readline()

    t = threading.Thread(target=read_start, daemon=True)
    t.start()
    t.join(TIMEOUT)
    line = ready.get("line", "")
    if "http " not in line:
        stop(proc, "server")
        raise SystemExit(f"no start line from the server: {line!r}")
    http = line.split("http ", 1)[1].split(",", 1)[0].split(")", 1)[0]
    host, port = http.rsplit(":", 1)
    # Keep draining stdout so the server never blocks on it.
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    return proc, (host, int(port))


def get_status(addr):
    """Seconds from connect to the answer's last byte; raises on failure."""
    t0 = time.perf_counter()
    with socket.create_connection(addr, timeout=TIMEOUT) as s:
        s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    elapsed = time.perf_counter() - t0
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"/status answered {answer[:80]!r}")
    return elapsed


class Idle:
    """N idle connections, each reopened as soon as the server closes it."""

    def __init__(self, addr, n, reopen):
        self.addr, self.n, self.reopen = addr, n, reopen
        self.sel = selectors.DefaultSelector()
        self.reopened = 0
        self.stopping = threading.Event()
        for _ in range(n):
            self.open()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self):
        s = socket.create_connection(self.addr, timeout=TIMEOUT)
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)

    def run(self):
        while not self.stopping.is_set():
            for key, _ in self.sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(s)
                    s.close()
                    if self.reopen and not self.stopping.is_set():
                        self.open()
                        self.reopened += 1

    def close(self):
        self.stopping.set()
        self.thread.join(TIMEOUT)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


def one_run(idle_n, samples, reopen):
    proc, addr = start_server()
    try:
        get_status(addr)  # warm
        base = [get_status(addr) for _ in range(samples)]
        idle = Idle(addr, idle_n, reopen)
        try:
            loaded = []
            for _ in range(samples):
                loaded.append(get_status(addr))
                time.sleep(0.05)
        finally:
            idle.close()
        return base, loaded, idle.reopened
    finally:
        stop(proc, "server")


def ms(x):
    return round(x * 1000, 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--idle", type=int, default=300)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--no-reopen", action="store_true",
                   help="open the idle connections once (the server closes them at its 2 s header "
                        "deadline: use --samples 20 to stay within it)")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/hongbao")
    args = p.parse_args()
    if not args.no_build:
        build()
    runs = []
    for i in range(args.runs):
        base, loaded, reopened = one_run(args.idle, args.samples, not args.no_reopen)
        r = {
            "base_median_ms": ms(statistics.median(base)),
            "idle_median_ms": ms(statistics.median(loaded)),
            "idle_max_ms": ms(max(loaded)),
            "reopened": reopened,
        }
        log(f"run {i + 1}/{args.runs}: {r}")
        runs.append(r)
    result = {
        "idle_connections": args.idle,
        "reopened_when_closed": not args.no_reopen,
        "samples_per_run": args.samples,
        "runs": runs,
        "base_median_ms": statistics.median(r["base_median_ms"] for r in runs),
        "idle_median_ms": statistics.median(r["idle_median_ms"] for r in runs),
        "idle_max_ms": max(r["idle_max_ms"] for r in runs),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
