#!/usr/bin/env python3
"""Memory per connection: the server's user space and the kernel's sockets at
several connection counts, a straight line through them, and what 1M costs.

Owns: starting a release `hongbao server` (one worker pinned to core 0, HTTP
control on loopback) and `hongbao flood` processes (pinned to core 1, each
holding at most --users-per-flooder logged-in users from its own loopback
source addresses), reading memory before the first connect and after the
last login has settled, and fitting bytes = a + b x connections by least
squares. Must not: leave a process behind (every process it starts is stopped
by its own pid: SIGTERM, then SIGKILL after a timeout), wait without a
deadline, change a host setting, or talk to anything but 127.0.0.0/8.

Each run: a fresh server on a fresh port of --port-first..--port-last (with
`--envelopes-per-sec 0`, so nothing but connections grows), a baseline
reading once it accepts and its probe connection is gone, then the flooders,
then, when the server's /status counts every connection open and logged in
and --settle seconds passed, the same reading again. The difference is what
the connections cost. Two modes:

  idle     the flooders log in and hold (`--qps 0`): what a million mostly
           idle connections cost, the case the seed's 1M host is sized for.
  traffic  the flooders shake at --traffic-per-user requests a second per
           user (default 1: the original client's rate, every connection
           active), read after --traffic-secs of shaking: buffers in use.

Each reading:
  server   /proc/PID/smaps_rollup: Rss, Pss, Anonymous (the malloc arenas,
           i.e. the heap, and thread stacks); VmRSS from /proc/PID/status.
  kernel   /proc/slabinfo (readable by root; else /proc/meminfo's Slab and
           SUnreclaim, and the JSON says which source was used): every
           cache's slabs x pages per slab x page size, summed, and per
           cache; /proc/net/sockstat: TCP inuse, orphan, tw, mem (pages of
           socket buffers, x page size).
  flooder  the flooders' VmRSS summed (for sizing the 1M run's load side).

Both ends of each connection are on this host, so the kernel figures count
two sockets per connection. The server's part is separated by the objects
each end holds (printed per cache, objects per connection, so the reasoning
can be checked): each end has one TCP sock, one socket inode, one file, one
dentry, one epoll item, one epoll wait entry, one ep_head and the LSM blobs
of its file and inode; only the connecting end has bind buckets (the
kernel's record of its local port, 128 B objects, shared by the source
addresses that use one port: measured as what their slab row gains beyond
the epoll items merged into it). So the server's kernel bytes per
connection = (socket caches - the bind buckets) / 2. Socket caches are
given two ways: what their slabs grew by, and their objects at slot size
(the steady cost, once the slabs left partly free at the baseline are
full). A host agent listing /proc/PID/fd adds a proc inode, dentry and LSM
blob per descriptor: measured (proc_inode_cache) and kept out of the socket
figures. Socket buffer pages (sockstat mem) are host-wide, both ends.

Other workloads on a shared host open and close sockets too: a run during
which TCP inuse moved by more than max(50, 1 %) beyond our two sockets per
connection is run again once, what remains (up to 3 %) is corrected by the
socket caches' cost per socket, and a run beyond that stays out of the
kernel fits.

Fits use every run (not the medians), so their standard errors see the
rounds' spread; the 1M prediction's error is the fit's standard error of the
mean at 1M (s * sqrt(1/n + (x - mean)^2 / Sxx)) and its 95 % interval
(Student t, n - 2 degrees of freedom). An extrapolation 55x past the largest
count also assumes the line stays a line: docs/BENCHMARKS.md says where it
may not.

Usage:
  tools/bench_memory.py                          # 2k,5k,10k,18k x idle,traffic x 3 rounds (~8 min)
  tools/bench_memory.py --quick                  # 1 round of 2k, 5k and 10k, idle: smoke run
  tools/bench_memory.py --no-build --counts 2000,18000 --modes idle --rounds 5 --out /tmp/mem.json
"""

import argparse
import datetime
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bench_server as bs

REPO = bs.REPO
BINARY = bs.BINARY
PAGE = os.sysconf("SC_PAGE_SIZE")

SERVER_CORE = bs.SERVER_CORE
FLOODER_CORE = bs.FLOODER_CORE
MODES = ("idle", "traffic")

# A server process holds at most the hard open-file limit (20,000 here) less
# its reserve (~300 with the HTTP control): 18,000 leaves room to spare.
COUNT_MAX_DEFAULT = 18000
# Users one flooder process holds: under its open-file limit, and under half
# of one source address's ephemeral ports (past that Linux's connect() slows
# to a port search), spread over two addresses of its own.
USERS_PER_FLOODER = 9000
ADDRS_PER_FLOODER = 2
# Source addresses start at 127.1.0.2, away from the 127.0.0.x other tools
# and tests use: a port bound on an address by someone else is one our
# bind() cannot take.
SOURCE_FIRST = 1 * 65536 + 2

SERVER_READY_TIMEOUT_S = bs.SERVER_READY_TIMEOUT_S
# Connections in and logged in, as the server's /status counts them (it
# publishes once a second).
LOGIN_TIMEOUT_S = 60
# The flooders' own hold: far past a run's readings; they are stopped by pid
# once read, and stop themselves after this anyway.
HOLD_S = 300
STATUS_TIMEOUT_S = 2
# Between runs: TCP sockets in use back within this of the first run's
# baseline (others' connections come and go), waited for at most this long.
QUIET_SOCKETS_SLACK = 100
QUIET_TIMEOUT_S = 30
# A run during which more TCP sockets than this (or this share of ours) came
# or went besides ours (other workloads on a shared host) is run again, up to
# ATTEMPTS_MAX times; the last attempt stands, corrected (see corrected()).
FOREIGN_SOCKETS_MIN = 50
FOREIGN_SOCKETS_SHARE = 0.01
ATTEMPTS_MAX = 2
# Foreign sockets up to this share of ours are corrected for (corrected()):
# the correction is exact for objects but not for slab pages (sockets that go
# free objects, not always pages), so only small ones are corrected;
# a run with more stays out of the kernel fits.
FOREIGN_CORRECTABLE_SHARE = 0.03
# The metrics that sum host-wide kernel memory, which another workload's
# sockets would inflate.
KERNEL_METRICS = ("slab_both", "socket_slab_both", "slab_server", "socket_slab_server", "socket_obj_server",
                  "sockstat_mem_both", "meminfo_slab_both", "proc_fd_both")
# Slab caches whose objects a TCP connection's two ends hold (see the
# docstring); the rows of /proc/slabinfo they are merged into (SLUB merges
# caches of one size and flags) are the "socket rows".
SOCKET_CACHES = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq", "ep_head",
                 "lsm_file_cache", "lsm_inode_cache", "tcp_bind_bucket", "tcp_bind2_bucket")
CLIENT_ONLY_CACHES = ("tcp_bind_bucket", "tcp_bind2_bucket")
# Something that lists every process's /proc/PID/fd (a host agent here; a
# process collector counting open files elsewhere) makes the kernel keep a
# proc inode, its dentry and its LSM blob per descriptor listed: reclaimable
# memory that follows the descriptors, not the sockets. It is measured (the
# proc_inode_cache row) and taken out of the socket figures, whose dentry and
# lsm_inode_cache rows it would otherwise inflate.
PROC_FD_CACHE = "proc_inode_cache"
PROC_FD_COMPANIONS = ("dentry", "lsm_inode_cache")

# Two-sided 95 % quantiles of Student's t by degrees of freedom (1..30);
# beyond, the normal's 1.96 is within 2 %.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
       2.045, 2.042]

log = bs.log

ints = bs.ints


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="2000,5000,10000,18000",
                   help="connection counts, comma separated (default 2000,5000,10000,18000; at most 18,000 "
                   "here: one server process holds the hard open-file limit less its reserve)")
    p.add_argument("--modes", default=",".join(MODES), help="idle and/or traffic (default both)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; every count and mode once a round (default 3)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds between the last login and the reading (default 3)")
    p.add_argument("--traffic-per-user", type=float, default=1.0,
                   help="traffic mode: shakes a second per user (default 1, every connection active)")
    p.add_argument("--traffic-secs", type=float, default=5.0,
                   help="traffic mode: seconds of shaking before the reading (default 5)")
    p.add_argument("--users-per-flooder", type=int, default=USERS_PER_FLOODER,
                   help=f"users one flooder process holds (default {USERS_PER_FLOODER})")
    p.add_argument("--port-first", type=int, default=19400, help="first server port (default 19400)")
    p.add_argument("--port-last", type=int, default=19499, help="last server port (default 19499)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2000, 5000 and 10000, idle")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/hongbao")
    p.add_argument("--out", type=Path, help="results JSON (default target/bench/memory-<time>.json)")
    p.add_argument("--summarise", type=Path, metavar="JSON",
                   help="run nothing: summarise an earlier results JSON again with this script's fits and "
                   "corrections, print its tables (written to --out, default JSON with .resummarised.json)")
    args = p.parse_args()
    if args.quick:
        args.counts, args.modes, args.rounds = "2000,5000,10000", "idle", 1
    args.counts = sorted(set(ints(args.counts)))
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.counts or min(args.counts) <= 0 or args.rounds < 1 or args.users_per_flooder < 1:
        p.error("--counts must be positive numbers, --rounds and --users-per-flooder >= 1")
    if any(m not in MODES for m in args.modes) or not args.modes:
        p.error(f"--modes: choose from {','.join(MODES)}")
    if not 1024 <= args.port_first < args.port_last <= 65535:
        p.error("--port-first < --port-last, both in 1024..65535")
    if args.settle < 0 or args.traffic_secs < 0 or args.traffic_per_user <= 0:
        p.error("--settle and --traffic-secs must be >= 0, --traffic-per-user > 0")
    return args


# --- readings ---------------------------------------------------------------


def kib_fields(path):
    """`Name:   123 kB` lines of a /proc file as bytes (other lines skipped)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^(\w+):\s+(\d+) kB$", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def process_memory(pid):
    """A process's memory: smaps_rollup's Rss/Pss/Anonymous, status VmRSS."""
    rollup = kib_fields(f"/proc/{pid}/smaps_rollup")
    status = kib_fields(f"/proc/{pid}/status")
    return {
        "rss": rollup.get("Rss"),
        "pss": rollup.get("Pss"),
        "anon": rollup.get("Anonymous"),
        "vm_rss": status.get("VmRSS"),
        "rss_anon": status.get("RssAnon"),
    }


def sockstat():
    """/proc/net/sockstat's TCP line; `mem` converted from pages to bytes."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            tcp = {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
            tcp["mem_bytes"] = tcp.pop("mem", 0) * PAGE
            return tcp
    return {}


def slab_aliases():
    """Row name in /proc/slabinfo -> every cache merged into it (SLUB merges
    caches of one size and flags; /sys/kernel/slab has a link per name)."""
    root = Path("/sys/kernel/slab")
    groups = {}
    try:
        for entry in root.iterdir():
            target = os.path.realpath(entry)
            groups.setdefault(target, []).append(entry.name)
    except OSError:
        return {}
    return {target: sorted(names) for target, names in groups.items()}


def slabinfo():
    """Every cache of /proc/slabinfo: objects and the bytes of its slabs.
    None when it is not readable (only root may read it)."""
    try:
        text = Path("/proc/slabinfo").read_text()
    except OSError:
        return None
    rows = {}
    for line in text.splitlines()[2:]:
        f = line.split()
        if len(f) < 16:
            continue
        name, active, num, objsize, per_slab, pages = f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5])
        num_slabs = int(f[14])
        rows[name] = {"active_objs": active, "num_objs": num, "objsize": objsize,
                      "slot_bytes": pages * PAGE / per_slab if per_slab else objsize,
                      "bytes": num_slabs * pages * PAGE}
    return rows


def meminfo():
    m = kib_fields("/proc/meminfo")
    keys = ("MemAvailable", "Slab", "SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "VmallocUsed",
            "Percpu")
    return {k: m.get(k) for k in keys}


def host_reading():
    slabs = slabinfo()
    return {
        "sockstat": sockstat(),
        "meminfo": meminfo(),
        "slab": slabs,
        "slab_total_bytes": sum(r["bytes"] for r in slabs.values()) if slabs is not None else None,
    }


def socket_rows(slabs, aliases):
    """The slabinfo rows the socket caches live in: {row: [caches]}."""
    out = {}
    by_name = {}
    for names in aliases.values():
        for n in names:
            by_name[n] = names
    for cache in SOCKET_CACHES:
        names = by_name.get(cache, [cache])
        row = cache if cache in slabs else next((n for n in names if n in slabs), None)
        if row is not None:
            out.setdefault(row, []).append(cache)
    return out


def kernel_figures(before, after, count, rows):
    """Kernel bytes the connections cost: both ends, and the server's end."""
    fig = {
        "tcp_inuse": after["sockstat"].get("inuse", 0) - before["sockstat"].get("inuse", 0),
        "sockstat_mem_bytes": after["sockstat"]["mem_bytes"] - before["sockstat"]["mem_bytes"],
        "meminfo_slab_bytes": (after["meminfo"]["Slab"] or 0) - (before["meminfo"]["Slab"] or 0),
        "meminfo_sunreclaim_bytes": (after["meminfo"]["SUnreclaim"] or 0) - (before["meminfo"]["SUnreclaim"] or 0),
    }
    if after["slab"] is None or before["slab"] is None:
        fig["slab_source"] = "meminfo"
        fig["slab_bytes"] = fig["meminfo_slab_bytes"]
        # Without per-cache figures the client's bind buckets cannot be
        # told apart: the server's end is taken as half.
        fig["server_slab_bytes"] = fig["slab_bytes"] / 2
        fig["rows"] = {}
        return fig
    fig["slab_source"] = "slabinfo"
    fig["slab_bytes"] = after["slab_total_bytes"] - before["slab_total_bytes"]
    per_row = {}
    for name, a in after["slab"].items():
        b = before["slab"].get(name, {"active_objs": 0, "bytes": 0})
        per_row[name] = {"objs": a["active_objs"] - b["active_objs"], "bytes": a["bytes"] - b["bytes"],
                         "slot_bytes": a["slot_bytes"]}
    # Rows that moved by more than one object per 20 connections, and the
    # socket rows always.
    fig["rows"] = {n: r for n, r in per_row.items()
                   if abs(r["objs"]) * 20 >= count or n in rows or n == PROC_FD_CACHE}
    return derive(fig, count, rows)


def row_of(cache, rows):
    return next((r for r, caches in rows.items() if cache in caches), cache)


def derive(fig, count, rows):
    """The socket figures from the per-row deltas (also for --summarise):
    the socket rows' bytes less the /proc fd listings' share in them, and
    the server's end."""
    per_row = fig["rows"]
    # The /proc/PID/fd listings' inodes, and the dentry and LSM blob of each
    # (in socket rows), at their slot sizes.
    proc = per_row.get(PROC_FD_CACHE, {"objs": 0, "slot_bytes": 0})
    companions = sum(per_row[row_of(c, rows)]["slot_bytes"] for c in PROC_FD_COMPANIONS
                     if row_of(c, rows) in per_row)
    fig["proc_fd_objs"] = proc["objs"]
    fig["proc_fd_bytes"] = proc["objs"] * (proc["slot_bytes"] + companions)
    socket = [per_row[r] for r in rows if r in per_row]
    # What the slabs grew by (partly filled slabs at the baseline take the
    # first objects for free), and the objects at their slot size.
    fig["socket_slab_bytes"] = sum(r["bytes"] for r in socket) - proc["objs"] * companions
    fig["socket_slab_obj_bytes"] = sum(r["objs"] * r["slot_bytes"] for r in socket) - proc["objs"] * companions
    # The connecting end's bind buckets: whatever its rows gained beyond the
    # one object per end of the other caches merged into them (the epoll
    # items). Measured, not assumed: a bind bucket is per local port, which
    # source addresses share.
    client_only = 0.0
    for r, caches in rows.items():
        n_client = sum(1 for c in caches if c in CLIENT_ONLY_CACHES)
        if n_client and r in per_row:
            extra = per_row[r]["objs"] - 2 * count * (len(caches) - n_client)
            client_only += max(0, extra) * per_row[r]["slot_bytes"]
    fig["client_only_bytes"] = client_only
    fig["server_slab_bytes"] = (fig["slab_bytes"] - client_only) / 2
    fig["server_socket_slab_bytes"] = (fig["socket_slab_bytes"] - client_only) / 2
    fig["server_socket_slab_obj_bytes"] = (fig["socket_slab_obj_bytes"] - client_only) / 2
    return fig


# --- the fit ----------------------------------------------------------------


def fit(points):
    """Least squares y = a + b x over (x, y) points, with standard errors."""
    n = len(points)
    if n < 3 or len({x for x, _ in points}) < 2:
        return None
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    b = sxy / sxx
    a = my - b * mx
    sse = sum((y - a - b * x) ** 2 for x, y in points)
    syy = sum((y - my) ** 2 for y in ys)
    s = math.sqrt(sse / (n - 2))
    return {"n": n, "a": a, "b": b, "se_b": s / math.sqrt(sxx), "se_a": s * math.sqrt(1 / n + mx * mx / sxx),
            "r2": 1 - sse / syy if syy else 1.0, "s": s, "x_mean": mx, "sxx": sxx,
            "t95": T95[n - 3] if n - 2 <= len(T95) else 1.96}


def predict(f, x):
    """The fit's value at x, its standard error (of the mean) and 95 % half-width."""
    se = f["s"] * math.sqrt(1 / f["n"] + (x - f["x_mean"]) ** 2 / f["sxx"])
    return {"x": x, "y": f["a"] + f["b"] * x, "se": se, "ci95": f["t95"] * se}


# --- processes ----------------------------------------------------------------


def port_pair_free(port):
    """Whether the server and its HTTP control can bind port and port + 1:
    with SO_REUSEADDR, as both do, so an earlier run's TIME_WAIT does not
    count as taken."""
    return bs.port_free(port) and bs.port_free(port + 1)


def next_ports(args, after):
    """The next free (data, http) pair after `after` in the range, wrapping."""
    span = args.port_last - args.port_first
    for i in range(span):
        port = args.port_first + (after - args.port_first + 2 + i) % span
        if port + 1 <= args.port_last and port_pair_free(port):
            return port, port + 1
    raise RuntimeError(f"no two free ports in {args.port_first}..{args.port_last}")


def status(http_port):
    """The server's /status `total` (the last closed second)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=STATUS_TIMEOUT_S) as r:
        return json.loads(r.read())["total"]


def wait_for(predicate, timeout_s, what, procs=()):
    """Polls predicate() until it is true; raises after timeout_s or when a
    process we started died."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        for name, proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} (pid {proc.pid}) exited with {proc.returncode} while waiting for {what}")
        try:
            ok, last = predicate()
        except OSError as e:
            ok, last = False, str(e)
        if ok:
            return last
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what} (last: {last})")


def server_cmd(binary, port, http_port, threads=1, pin=SERVER_CORE, extra=()):
    cmd = [str(binary), "server", "--listen", f"127.0.0.1:{port}", "--threads", str(threads), "--quiet",
           "--http", f"127.0.0.1:{http_port}", "--envelopes-per-sec", "0"] + list(extra)
    return (["taskset", "-c", pin] if pin else []) + cmd


def flood_cmd(binary, port, first, users, total, qps, addrs, json_path, threads=1, pin=FLOODER_CORE,
              warmup=1, hold_s=HOLD_S):
    cmd = [str(binary), "flood", "--server", f"127.0.0.1:{port}", "--min", str(first), "--users", str(users),
           "--total", str(total), "--qps", str(qps), "--threads", str(threads), "--no-http",
           "--duration", str(hold_s), "--warmup", str(warmup), "--settle-secs", "1",
           "--login-timeout", str(LOGIN_TIMEOUT_S), "--bind", ",".join(addrs), "--quiet",
           "--json", str(json_path)]
    return (["taskset", "-c", pin] if pin else []) + cmd


def loopback_addr(n):
    """The n-th source address from SOURCE_FIRST (all of 127.0.0.0/8 is
    loopback on Linux)."""
    n += SOURCE_FIRST
    if not 0 < n < 2**24 - 1:
        raise ValueError(f"source address {n} is outside 127.0.0.0/8")
    return f"127.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def source_addrs(index, per=ADDRS_PER_FLOODER):
    """Flooder `index`'s own loopback source addresses."""
    return [loopback_addr(index * per + k) for k in range(per)]


class Fleet:
    """A server and its flooders, all stopped by pid when the block ends."""

    def __init__(self, workdir, run_id):
        self.workdir, self.run_id = workdir, run_id
        self.server = None
        self.flooders = []

    def __enter__(self):
        return self

    def start_server(self, cmd):
        with open(self.workdir / f"{self.run_id}.server.log", "wb") as out:
            self.server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        return self.server

    def start_flooder(self, cmd):
        i = len(self.flooders)
        env = dict(os.environ, RUST_BACKTRACE="0")
        with open(self.workdir / f"{self.run_id}.flood{i}.log", "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.flooders.append(proc)
        return proc

    def procs(self):
        return [("server", self.server)] + [(f"flooder {i}", f) for i, f in enumerate(self.flooders)]

    def stop_flooders(self):
        for i, f in enumerate(self.flooders):
            bs.stop(f, f"flooder {i}")

    def __exit__(self, *exc):
        self.stop_flooders()
        if self.server is not None:
            bs.stop(self.server)
        return False


def wait_server_ready(fleet, port, http_port):
    bs.wait_until_accepting(port, fleet.server, SERVER_READY_TIMEOUT_S)
    # The probe connection counts until the server notices it is gone.
    wait_for(lambda: ((lambda t: (t["conns_open"] == 0, t["conns_open"]))(status(http_port))),
             SERVER_READY_TIMEOUT_S, "the server's /status with no connection open", fleet.procs())


def wait_logged_in(fleet, http_port, count, timeout_s=LOGIN_TIMEOUT_S):
    def check():
        t = status(http_port)
        opened, logins = t["conns_open"], t["server"]["logins"]
        return opened >= count and logins >= count, {"conns_open": opened, "logins": logins}
    return wait_for(check, timeout_s, f"{count} connections open and logged in", fleet.procs())


def flooders_rss(fleet):
    total = 0
    for f in fleet.flooders:
        try:
            total += kib_fields(f"/proc/{f.pid}/status").get("VmRSS", 0)
        except OSError:
            pass
    return total


# --- one run ----------------------------------------------------------------


def one_run(args, workdir, run_id, ports, count, mode, rows):
    port, http_port = ports
    record = {"id": run_id, "count": count, "mode": mode, "port": port, "ok": False}
    started = time.monotonic()
    with Fleet(workdir, run_id) as fleet:
        try:
            cmd = server_cmd(BINARY, port, http_port)
            record["server_cmd"] = " ".join(cmd)
            fleet.start_server(cmd)
            wait_server_ready(fleet, port, http_port)
            time.sleep(0.5)
            before = {"server": process_memory(fleet.server.pid), **host_reading()}
            qps = 0 if mode == "idle" else max(1, round(count * args.traffic_per_user))
            first = 0
            index = 0
            while first < count:
                users = min(args.users_per_flooder, count - first)
                cmd = flood_cmd(BINARY, port, first, users, count, qps, source_addrs(index),
                                workdir / f"{run_id}.flood{index}.json")
                record.setdefault("flood_cmds", []).append(" ".join(cmd))
                fleet.start_flooder(cmd)
                first += users
                index += 1
            record["logged_in"] = wait_logged_in(fleet, http_port, count)
            record["login_s"] = round(time.monotonic() - started, 1)
            time.sleep(args.settle)
            if mode == "traffic":
                shakes_at = status(http_port)["server"]["shakes"]
                wait_for(lambda: ((lambda s: (s > shakes_at, s))(status(http_port)["server"]["shakes"])),
                         10, "the first shakes", fleet.procs())
                time.sleep(args.traffic_secs)
                record["shakes_before_reading"] = status(http_port)["server"]["shakes"]
            after = {"server": process_memory(fleet.server.pid), **host_reading()}
            record["flooders_rss"] = flooders_rss(fleet)
            record["flooders"] = len(fleet.flooders)
            for name, proc in fleet.procs():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} before the reading")
            record["server"] = {k: after["server"][k] - (before["server"][k] or 0)
                                for k in after["server"] if after["server"][k] is not None}
            record["server_before"] = before["server"]
            record["server_after"] = after["server"]
            record["kernel"] = kernel_figures(before, after, count, rows)
            record["sockstat_before"], record["sockstat_after"] = before["sockstat"], after["sockstat"]
            record["meminfo_before"], record["meminfo_after"] = before["meminfo"], after["meminfo"]
            record["ok"] = True
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            record["error"] = str(e)
            record["server_log_tail"] = bs.tail(workdir / f"{run_id}.server.log")
            record["flood_log_tail"] = bs.tail(workdir / f"{run_id}.flood0.log")
    record["wall_s"] = round(time.monotonic() - started, 1)
    return record


def quiet_sockets(inuse_ref, slack=QUIET_SOCKETS_SLACK, timeout_s=QUIET_TIMEOUT_S):
    """Waits until the previous run's sockets are gone (TCP inuse back near
    where it was before the first run), so they are not in the baseline."""
    deadline = time.monotonic() + timeout_s
    while True:
        inuse = sockstat().get("inuse", 0)
        if inuse <= inuse_ref + slack:
            return inuse
        if time.monotonic() >= deadline:
            log(f"    warning: {inuse} TCP sockets in use, {inuse_ref} before the first run; going on")
            return inuse
        time.sleep(0.25)


def foreign_sockets(r):
    """TCP sockets that came (+) or went (-) during a run beyond our two per
    connection: another workload on the host, whose slab is in our figures."""
    if not r["ok"]:
        return 0
    return r["kernel"]["tcp_inuse"] - 2 * r["count"]


def foreign_slack(count):
    return max(FOREIGN_SOCKETS_MIN, FOREIGN_SOCKETS_SHARE * 2 * count)


def kernel_clean(r):
    """Few enough foreign sockets for the correction (corrected()) to be
    a small one; runs beyond stay out of the kernel fits."""
    return abs(r.get("foreign_sockets", 0)) <= FOREIGN_CORRECTABLE_SHARE * 2 * r["count"]


def describe(r):
    if not r["ok"]:
        return f"FAILED: {r.get('error')}"
    n = r["count"]
    k = r["kernel"]
    text = (f"server RSS {r['server']['rss'] / n:.0f} B/conn (anon {r['server']['anon'] / n:.0f}), "
            f"slab {k['slab_bytes'] / n:.0f} B/conn both ends ({k['slab_source']}), "
            f"socket caches {k.get('socket_slab_bytes', 0) / n:.0f} (server's end "
            f"{k.get('server_socket_slab_bytes', 0) / n:.0f}), /proc fd {k.get('proc_fd_bytes', 0) / n:.0f}, "
            f"TCP inuse +{k['tcp_inuse']}, "
            f"sockstat mem {k['sockstat_mem_bytes'] / 1024:.0f} KiB, login {r['login_s']} s [{r['wall_s']} s]")
    return text


# --- summary ----------------------------------------------------------------

# What is fitted, each from every ok run of one mode: name -> (label, value).
def ours(r):
    """Our share of the TCP sockets that came during the run (1 when no
    other workload's came or went)."""
    came = r["kernel"]["tcp_inuse"]
    return 2 * r["count"] / came if came > 0 else 1.0


def corrected(r):
    """The run's kernel figures less what other workloads' sockets added:
    each foreign socket is charged the socket caches' cost per socket of
    this run (ours and theirs alike are loopback TCP sockets with a file and
    an epoll registration). Retrying first keeps this correction small."""
    k = r["kernel"]
    share = ours(r)
    out = dict(k)
    if "socket_slab_bytes" in k:
        raw = k["socket_slab_bytes"]
        out["socket_slab_bytes"] = raw * share
        out["slab_bytes"] = k["slab_bytes"] - raw * (1 - share)
        out["meminfo_slab_bytes"] = k["meminfo_slab_bytes"] - raw * (1 - share)
        out["server_socket_slab_bytes"] = (out["socket_slab_bytes"] - k["client_only_bytes"]) / 2
        out["socket_slab_obj_bytes"] = k["socket_slab_obj_bytes"] * share
        out["server_socket_slab_obj_bytes"] = (out["socket_slab_obj_bytes"] - k["client_only_bytes"]) / 2
        out["server_slab_bytes"] = (out["slab_bytes"] - k["client_only_bytes"]) / 2
        out["proc_fd_bytes"] = k["proc_fd_bytes"] * share
    return out


# What is fitted, each from every ok run of one mode: name -> (label, value).
METRICS = {
    "server_rss": ("server RSS", lambda r: r["server"]["rss"]),
    "server_anon": ("server anonymous (heap)", lambda r: r["server"]["anon"]),
    "server_pss": ("server PSS", lambda r: r["server"]["pss"]),
    "slab_both": ("kernel slab, both ends", lambda r: corrected(r)["slab_bytes"]),
    "socket_slab_both": ("kernel socket caches, both ends", lambda r: corrected(r).get("socket_slab_bytes")),
    "slab_server": ("kernel slab, the server's end", lambda r: corrected(r)["server_slab_bytes"]),
    "socket_slab_server": ("kernel socket caches, the server's end",
                           lambda r: corrected(r).get("server_socket_slab_bytes")),
    "socket_obj_server": ("kernel socket objects x slot size, the server's end",
                          lambda r: corrected(r).get("server_socket_slab_obj_bytes")),
    "proc_fd_both": ("/proc/PID/fd listings' inodes and dentries (not sockets), both ends",
                     lambda r: corrected(r).get("proc_fd_bytes")),
    "sockstat_mem_both": ("TCP buffer pages (sockstat mem), both ends", lambda r: r["kernel"]["sockstat_mem_bytes"]),
    "meminfo_slab_both": ("/proc/meminfo Slab, both ends", lambda r: corrected(r)["meminfo_slab_bytes"]),
    "flooders_rss": ("flooders' RSS (all processes)", lambda r: r["flooders_rss"]),
}

ONE_M = 1_000_000


def summarise(args, runs, rows):
    out = {"modes": {}}
    for mode in args.modes:
        ok = [r for r in runs if r["ok"] and r["mode"] == mode and not r.get("retried")]
        table = []
        for count in args.counts:
            rs = [r for r in ok if r["count"] == count]
            row = {"count": count, "runs": len(rs)}
            row["kernel_runs"] = sum(1 for r in rs if kernel_clean(r))
            for key, (_, value) in METRICS.items():
                vals = [value(r) for r in rs if value(r) is not None and (key not in KERNEL_METRICS or kernel_clean(r))]
                row[key] = bs.spread([v / count for v in vals])
            row["tcp_inuse_per_conn"] = bs.spread([r["kernel"]["tcp_inuse"] / count for r in rs])
            objs = {}
            for r in rs:
                for name, x in r["kernel"]["rows"].items():
                    objs.setdefault(name, []).append(x["objs"] / count)
            row["slab_objs_per_conn"] = {n: statistics.median(v) for n, v in sorted(objs.items())}
            table.append(row)
        fits = {}
        for key, (label, value) in METRICS.items():
            f = fit([(r["count"], value(r)) for r in ok
                     if value(r) is not None and (key not in KERNEL_METRICS or kernel_clean(r))])
            if f:
                f["label"] = label
                f["at_1m"] = predict(f, ONE_M)
                fits[key] = f
        out["modes"][mode] = {"table": table, "fits": fits}
    out["socket_rows"] = rows
    return out


def mib(x):
    return x / 2**20


def gb(x):
    return x / 1e9


def fmt_spread(s, digits=0):
    if s is None:
        return "–"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}..{s['max']:,.{digits}f})"


def markdown(meta, summary):
    out = []
    for mode, m in summary["modes"].items():
        out.append(f"### {mode}: bytes per connection at each count (median, min..max over rounds)\n")
        out.append("| connections | runs (kernel) | server RSS | server anon (heap) | kernel slab, both ends | "
                   "the server's end | socket caches, server's end | TCP buffers (sockstat mem), both ends | "
                   "TCP sockets per conn |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in m["table"]:
            out.append(f"| {row['count']:,} | {row['runs']} ({row['kernel_runs']}) | {fmt_spread(row['server_rss'])} | "
                       f"{fmt_spread(row['server_anon'])} | {fmt_spread(row['slab_both'])} | "
                       f"{fmt_spread(row['slab_server'])} | {fmt_spread(row['socket_slab_server'])} | "
                       f"{fmt_spread(row['sockstat_mem_both'])} | {fmt_spread(row['tcp_inuse_per_conn'], 2)} |")
        if m["table"]:
            last = m["table"][-1]
            objs = ", ".join(f"{n} {v:+.2f}" for n, v in last["slab_objs_per_conn"].items() if abs(v) >= 0.05)
            out.append(f"\nSlab objects per connection at {last['count']:,} (rows of /proc/slabinfo, both ends): "
                       f"{objs or '–'}\n")
        out.append(f"### {mode}: the fit bytes = a + b x connections, and 1M\n")
        out.append("| what | b, bytes/conn (± SE) | a, bytes | R² | runs | at 1M (± SE; 95 %) |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for key, f in m["fits"].items():
            p = f["at_1m"]
            out.append(f"| {f['label']} | {f['b']:,.0f} ± {f['b'] and f['se_b']:,.0f} | {mib(f['a']):,.1f} MiB | "
                       f"{f['r2']:.4f} | {f['n']} | {gb(p['y']):.3f} GB ± {gb(p['se']):.3f}; "
                       f"± {gb(p['ci95']):.3f} |")
        out.append("")
    return "\n".join(out)


def machine(args):
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "page_bytes": PAGE,
        "commit": bs.git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(bs.git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_before": bs.loadavg(),
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "tcp_rmem": Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split(),
        "tcp_wmem": Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split(),
        "counts": args.counts,
        "modes": args.modes,
        "rounds": args.rounds,
        "settle": args.settle,
        "traffic_per_user": args.traffic_per_user,
        "traffic_secs": args.traffic_secs,
        "users_per_flooder": args.users_per_flooder,
        "argv": sys.argv[1:],
    }


interrupt = bs.interrupt


def resummarise(path, out_path):
    data = json.loads(path.read_text())
    meta, runs = data["meta"], data["runs"]
    rows = {r: v["caches"] for r, v in meta.get("socket_rows", {}).items()}
    for r in runs:
        r.setdefault("foreign_sockets", foreign_sockets(r))
        if r["ok"] and r["kernel"].get("slab_source") == "slabinfo":
            derive(r["kernel"], r["count"], rows)
    args = argparse.Namespace(modes=meta["modes"], counts=meta["counts"])
    summary = summarise(args, runs, rows)
    meta["resummarised"] = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                            "commit": bs.git("rev-parse", "HEAD") or "unknown", "from": str(path)}
    out_path = out_path or path.with_suffix(".resummarised.json")
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    log(f"wrote {out_path}")
    print(markdown(meta, summary))
    return 0


def main():
    args = parse_args()
    if args.summarise:
        return resummarise(args.summarise, args.out)
    signal.signal(signal.SIGTERM, interrupt)
    bs.preflight(args.no_build)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and max(args.counts) + 400 > hard:
        raise SystemExit(f"--counts up to {max(args.counts):,}: one server process holds at most the hard "
                         f"open-file limit ({hard:,}) less ~300 of its own; use counts up to {hard - 400:,}")
    slabs = slabinfo()
    aliases = slab_aliases()
    rows = socket_rows(slabs, aliases) if slabs is not None else {}
    meta = machine(args)
    meta["slab_source"] = "slabinfo" if slabs is not None else "meminfo (no /proc/slabinfo: not root)"
    meta["socket_rows"] = {r: {"caches": c, "merged_with": next((n for n in aliases.values() if r in n), [r])}
                           for r, c in rows.items()}
    out_path = args.out or REPO / "target" / "bench" / time.strftime("memory-%Y%m%d-%H%M%S.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hongbao-memory-"))
    total = args.rounds * len(args.counts) * len(args.modes)
    log(f"{total} runs ({args.rounds} rounds x counts {args.counts} x {args.modes}); slab from "
        f"{meta['slab_source']}; logs in {workdir}, results to {out_path}")
    runs = []
    port = args.port_first - 2
    inuse_ref = sockstat().get("inuse", 0)
    done = 0
    interrupted = False
    try:
        for round_no in range(1, args.rounds + 1):
            # Alternate the order so that drift hits small and large counts alike.
            order = args.counts if round_no % 2 else args.counts[::-1]
            for count in order:
                for mode in args.modes:
                    for attempt in range(1, ATTEMPTS_MAX + 1):
                        quiet_sockets(inuse_ref)
                        ports = next_ports(args, port)
                        port = ports[0]
                        run_id = f"r{round_no}-{mode}-{count}-a{attempt}"
                        log(f"[round {round_no}/{args.rounds} {done + 1}/{total}] {count:,} {mode} on port {port}"
                            f"{'' if attempt == 1 else f' (attempt {attempt})'} ...")
                        record = one_run(args, workdir, run_id, ports, count, mode, rows)
                        record.update(round=round_no, attempt=attempt)
                        record["foreign_sockets"] = foreign_sockets(record)
                        runs.append(record)
                        log(f"    {describe(record)}")
                        out_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
                        if not record["ok"] or abs(record["foreign_sockets"]) <= foreign_slack(count):
                            break
                        if attempt < ATTEMPTS_MAX:
                            record["retried"] = True
                            log(f"    {record['foreign_sockets']:+,} TCP sockets not ours came or went during the "
                                f"run: its kernel figures are someone else's too; again")
                    done += 1
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: summarising what was measured")
    summary = summarise(args, runs, rows)
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    log(f"wrote {out_path}")
    print(markdown(meta, summary))
    failed = sum(1 for r in runs if not r["ok"])
    if failed:
        log(f"{failed} run(s) failed")
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
