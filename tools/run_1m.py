#!/usr/bin/env python3
"""The 1M-connection experiment: one `hongbao server` holding a million
logged-in connections from flooder processes on the same host, its memory
(user space and kernel) read at 250k, 500k, 750k and 1M.

Owns: the preflight (every host limit the plan needs, checked before anything
starts: on a host that cannot hold it, it stops at once, names each limit
and the line that lifts it), then the run: a server on 127.0.0.1, flooder
processes of at most --users-per-flooder users each, each from its own
loopback source addresses (127.0.x.y from 127.0.0.2: each address gives the
ephemeral port range again per server port), started checkpoint by
checkpoint; at each checkpoint, once the server's /status counts every
connection open and logged in and --settle seconds passed, the readings of
tools/bench_memory.py (server smaps_rollup; /proc/slabinfo or /proc/meminfo;
/proc/net/sockstat). A report as JSON and text. Must not: change a host
setting (it says what to change), leave a process behind (each is stopped by
its own pid), wait without a deadline, or connect anywhere but 127.0.0.0/8.

`--target N` runs the same plan smaller (checkpoints at 1/4, 1/2, 3/4 and all
of N unless --checkpoints says otherwise): `--target 16000` fits a host with
20,000 open files per process. `--preflight-only` checks and exits.

Exit: 0 done (or preflight passed with --preflight-only); 1 the run failed;
2 usage; 3 the host's limits cannot hold the plan (nothing was started).

Usage:
  sudo sysctl/hongbao-tune.sh --apply      # then log in again (limits.d)
  tools/run_1m.py                          # 1,000,000 connections
  tools/run_1m.py --preflight-only         # only say whether this host can
  tools/run_1m.py --no-build --target 16000 --out /tmp/run-16k
"""

import argparse
import datetime
import json
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path

import bench_memory as bm
import bench_server as bs

REPO = bs.REPO
SYSCTL_CONF = REPO / "sysctl" / "99-hongbao.conf"
LIMITS_CONF = REPO / "sysctl" / "99-hongbao-limits.conf"
TUNE = "sysctl/hongbao-tune.sh"

EXIT_FAILED, EXIT_USAGE, EXIT_LIMITS = 1, 2, 3

# The server's descriptors beyond its connections (src/server/limits.rs:
# FDS_FIXED + FDS_PER_WORKER per worker + the HTTP control's FDS_MAX).
SERVER_FDS_FIXED = 32
SERVER_FDS_PER_WORKER = 4
SERVER_FDS_HTTP = 259
# The server's workers each accept up to their even share of --conns-max
# (and of the descriptors), while SO_REUSEPORT spreads connections by hash,
# unevenly: at exactly the target the last connections wait for a worker
# with room. 3 % more covers the spread over 64 workers at 1M (~2.5 standard
# deviations) and fits the limits.d line's 1,048,576.
SERVER_CONNS_HEADROOM = 1.03
# A flooder's descriptors beyond its users (src/flood/mod.rs FDS_SPARE).
FLOODER_FDS_SPARE = 64
# Handshakes one flooder thread keeps in flight at most (`hongbao flood
# --connect-rate`'s help): what the server's accept backlog must absorb.
FLOODER_HANDSHAKES_PER_THREAD = 512
# Memory per connection, for the RAM check, from tools/bench_memory.py on
# this repository's test machine (docs/BENCHMARKS.md, "Memory per connection
# and the 1M fit"), rounded up: the kernel's slab for both ends of a loopback
# connection (with the /proc fd inodes a host agent may add), the server's
# user space, the flooder's user space.
KERNEL_BYTES_PER_CONN_BOTH_ENDS = 10_000
SERVER_BYTES_PER_CONN = 300
FLOODER_BYTES_PER_CONN = 1_500
# RAM kept free beyond the estimate: the estimate's own error and the rest
# of the host.
RAM_MARGIN = 1.25
# Descriptors and epoll watches the rest of the host keeps beyond ours.
HOST_FILES_MARGIN = 65536
# Seconds to log in one checkpoint's new users: a floor plus a pace far
# slower than measured (~40,000 logins a second on one server core).
LOGIN_FLOOR_S = 60
LOGIN_S_PER_CONN = 1 / 2000
# The flooders hold their users this long at most; they are stopped by pid
# when the last reading is done.
HOLD_S = 4 * 3600
# A checkpoint whose logins are not all in by the deadline is still read when
# at least this share is (the rest keep retrying); its figures are per
# connection open.
LOGGED_IN_MIN_SHARE = 0.99
# Other workloads' TCP sockets beyond this share of ours make the kernel
# figures theirs too: flagged in the report (tools/bench_memory.py corrects
# up to its own share).
FOREIGN_FLAG_SHARE = 0.03


log = bs.log


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=int, default=1_000_000, help="connections at the end (default 1,000,000)")
    p.add_argument("--checkpoints", default="",
                   help="connection counts to read memory at, comma separated, the last = --target "
                   "(default: 1/4, 1/2, 3/4 and all of --target: 250k, 500k, 750k, 1M)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="server worker threads (default: the cores here)")
    p.add_argument("--users-per-flooder", type=int, default=50_000,
                   help="users one flooder process holds (default 50,000; at most the hard open-file "
                   "limit less its spare)")
    p.add_argument("--flooder-threads", type=int, default=2, help="threads per flooder process (default 2)")
    p.add_argument("--port", type=int, default=19450,
                   help="server port on 127.0.0.1; its HTTP control takes the next one (default 19450)")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds between a checkpoint's last login and its reading (default 10)")
    p.add_argument("--preflight-only", action="store_true", help="check the host's limits and exit")
    p.add_argument("--binary", type=Path, default=bm.BINARY, help="hongbao binary (default target/release/hongbao)")
    p.add_argument("--no-build", action="store_true", help="use the existing binary")
    p.add_argument("--out", type=Path, help="report directory (default target/bench/run-1m-<time>/)")
    args = p.parse_args()
    if args.checkpoints:
        args.checkpoints = sorted(set(bs.ints(args.checkpoints)))
    else:
        args.checkpoints = sorted({max(1, args.target * k // 4) for k in (1, 2, 3, 4)})
    if (args.target < 1 or args.threads < 1 or args.users_per_flooder < 1 or args.flooder_threads < 1
            or not args.checkpoints or args.checkpoints[0] < 1 or args.checkpoints[-1] != args.target):
        p.error("--target, --threads, --users-per-flooder, --flooder-threads must be >= 1, and the last "
                "checkpoint must be --target")
    if not 1024 <= args.port < 65535 or args.settle < 0:
        p.error("--port in 1024..65534, --settle >= 0")
    return args


# --- preflight ------------------------------------------------------------------


def sysctl(key):
    try:
        return Path("/proc/sys/" + key.replace(".", "/")).read_text().split()
    except OSError:
        return None


def wanted(key):
    """The value sysctl/99-hongbao.conf wants for key (the one source of truth)."""
    try:
        for line in SYSCTL_CONF.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep and not line.lstrip().startswith("#") and k.strip().lstrip("-") == key:
                return v.split()
    except OSError:
        pass
    return None


def limits_nofile():
    """The hard nofile sysctl/99-hongbao-limits.conf sets."""
    try:
        for line in LIMITS_CONF.read_text().splitlines():
            f = line.split()
            if len(f) == 4 and not f[0].startswith("#") and f[1] == "hard" and f[2] == "nofile":
                return int(f[3])
    except (OSError, ValueError):
        pass
    return None


class Plan:
    """What the run will start, and what it needs of the host."""

    def __init__(self, args):
        self.target = args.target
        self.conns_max = math.ceil(args.target * SERVER_CONNS_HEADROOM)
        self.server_fds = (self.conns_max + SERVER_FDS_FIXED + SERVER_FDS_PER_WORKER * args.threads
                           + SERVER_FDS_HTTP)
        port_range = sysctl("net.ipv4.ip_local_port_range") or ["32768", "60999"]
        self.ports_per_addr = int(port_range[1]) - int(port_range[0]) + 1
        # Half the range per address: past it Linux's connect() searches the
        # other parity and slows to ~1k/s (src/flood/mod.rs warn_if_ports_scarce).
        self.users_per_addr = max(1, self.ports_per_addr // 2)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # A flooder holds no more than its own open-file limit allows.
        fit = args.users_per_flooder if hard == resource.RLIM_INFINITY else hard - FLOODER_FDS_SPARE
        self.users_per_flooder = max(1, min(args.users_per_flooder, fit))
        self.flooder_threads = args.flooder_threads
        self.checkpoints = args.checkpoints
        # Flooders started for one checkpoint's step, all at once.
        steps = [b - a for a, b in zip([0] + self.checkpoints[:-1], self.checkpoints)]
        self.flooders = sum(math.ceil(s / self.users_per_flooder) for s in steps)
        self.flooders_at_once = max(math.ceil(s / self.users_per_flooder) for s in steps)
        self.addrs = sum(math.ceil(min(self.users_per_flooder, s) / self.users_per_addr)
                         * math.ceil(s / self.users_per_flooder) for s in steps)
        self.flooder_fds = min(self.users_per_flooder, max(steps)) + FLOODER_FDS_SPARE
        self.backlog = self.flooders_at_once * self.flooder_threads * FLOODER_HANDSHAKES_PER_THREAD
        self.ram_bytes = args.target * (KERNEL_BYTES_PER_CONN_BOTH_ENDS + SERVER_BYTES_PER_CONN
                                        + FLOODER_BYTES_PER_CONN)


def preflight(args, plan):
    """Every limit the plan needs: [(name, ok, have, need, fix)]."""
    checks = []

    def check(name, ok, have, need, fix):
        checks.append({"limit": name, "ok": bool(ok), "have": have, "need": need, "fix": fix})

    tune = f"or run `sudo {TUNE} --apply` (sets every value of sysctl/99-hongbao.conf)"
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    unlimited = hard == resource.RLIM_INFINITY
    need_fds = max(plan.server_fds, plan.flooder_fds)
    limit_line = max(need_fds, limits_nofile() or 0)
    check("nofile (ulimit -Hn, open files per process)", unlimited or hard >= need_fds,
          "unlimited" if unlimited else hard, need_fds,
          f"the server holds {args.target:,} connections (+3 % for its workers' uneven shares) and "
          f"{need_fds - plan.conns_max} descriptors of its own in one process: "
          f"`* hard nofile {limit_line}` and `root hard nofile {limit_line}` in "
          f"/etc/security/limits.d/99-hongbao-limits.conf (sysctl/99-hongbao-limits.conf), then log in again; "
          f"or as root `ulimit -Hn {limit_line}` in the shell that starts this script "
          f"(LimitNOFILE={limit_line} for a systemd unit); fs.nr_open must be at least as high; {tune}")
    nr_open = sysctl("fs.nr_open")
    want = max(need_fds, int((wanted("fs.nr_open") or ["0"])[0]))
    check("fs.nr_open (caps any process's nofile)", nr_open and int(nr_open[0]) >= need_fds,
          nr_open and int(nr_open[0]), need_fds, f"`sysctl -w fs.nr_open={want}` {tune}")
    file_max = sysctl("fs.file-max")
    file_nr = sysctl("fs.file-nr")
    in_use = int(file_nr[0]) if file_nr else 0
    need = 2 * args.target + plan.flooders * FLOODER_FDS_SPARE + in_use + HOST_FILES_MARGIN
    want = max(need, int((wanted("fs.file-max") or ["0"])[0]))
    check("fs.file-max (open files on the whole host: both ends of every connection)",
          file_max and int(file_max[0]) >= need, file_max and int(file_max[0]), need,
          f"`sysctl -w fs.file-max={want}` {tune}")
    watches = sysctl("fs.epoll.max_user_watches")
    need = 2 * args.target + HOST_FILES_MARGIN
    want = max(need, int((wanted("fs.epoll.max_user_watches") or ["0"])[0]))
    check("fs.epoll.max_user_watches (one per socket, server and flooders run by one user)",
          watches and int(watches[0]) >= need, watches and int(watches[0]), need,
          f"`sysctl -w fs.epoll.max_user_watches={want}` {tune}")
    port_range = sysctl("net.ipv4.ip_local_port_range")
    want = " ".join(wanted("net.ipv4.ip_local_port_range") or ["10240", "65535"])
    # 127.0.0.2 .. 127.0.255.254: addresses enough for any plan; the range
    # must leave each address a useful share.
    check("net.ipv4.ip_local_port_range (the flooders' source ports, per source address)",
          port_range is not None and plan.users_per_addr >= 1000 and plan.addrs <= 65000,
          port_range and " ".join(port_range), f"{plan.addrs} source addresses at {plan.users_per_addr:,} users each",
          f"`sysctl -w net.ipv4.ip_local_port_range=\"{want}\"` {tune}")
    somaxconn = sysctl("net.core.somaxconn")
    want = max(plan.backlog, int((wanted("net.core.somaxconn") or ["0"])[0]))
    check("net.core.somaxconn (the server's accept backlog: the flooders' handshakes in flight)",
          somaxconn and int(somaxconn[0]) >= plan.backlog, somaxconn and int(somaxconn[0]), plan.backlog,
          f"`sysctl -w net.core.somaxconn={want}` {tune}")
    tcp_mem = sysctl("net.ipv4.tcp_mem")
    # One page per server socket: a frame queued to every user at once (a
    # push) fits under the cap (sysctl/99-hongbao.conf's arithmetic).
    need_pages = math.ceil(args.target * 4096 / bm.PAGE)
    want = " ".join(wanted("net.ipv4.tcp_mem") or [])
    check("net.ipv4.tcp_mem (pages of TCP buffers: its third field, high, must hold a page per connection)",
          tcp_mem and int(tcp_mem[2]) >= need_pages, tcp_mem and " ".join(tcp_mem), f"high >= {need_pages:,}",
          f"`sysctl -w net.ipv4.tcp_mem=\"{want}\"` (for up to 1M connections; scale the three fields "
          f"with the connections beyond) {tune}")
    mem = bm.kib_fields("/proc/meminfo")
    avail = mem.get("MemAvailable", 0)
    need = int(plan.ram_bytes * RAM_MARGIN)
    check("RAM (MemAvailable: kernel sockets of both ends, the server, the flooders)", avail >= need,
          f"{avail / 1e9:.1f} GB", f"{need / 1e9:.1f} GB",
          f"a host with more memory, or a smaller --target (each connection here costs ~"
          f"{(KERNEL_BYTES_PER_CONN_BOTH_ENDS + SERVER_BYTES_PER_CONN + FLOODER_BYTES_PER_CONN) / 1000:.1f} KB "
          f"on this host with both ends, x {RAM_MARGIN} margin)")
    return checks


def print_preflight(args, plan, checks):
    bad = [c for c in checks if not c["ok"]]
    out = [f"preflight for {args.target:,} connections: one server ({args.threads} workers), "
           f"{plan.flooders} flooder processes of at most {plan.users_per_flooder:,} users "
           f"({plan.flooders_at_once} at once), {plan.addrs} source addresses"]
    for c in checks:
        out.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['limit']}: have {c['have']}, need {c['need']}")
    if bad:
        out.append(f"this host cannot hold {args.target:,} connections; nothing was started. To lift "
                   f"{'it' if len(bad) == 1 else 'them'}:")
        for c in bad:
            out.append(f"  - {c['limit'].split(' (')[0]}: {c['fix']}")
        out.append(f"or size the run to this host: --target N (e.g. --target {suggest(args)})")
    return "\n".join(out)


def suggest(args):
    """A --target the nofile limit allows, the one most hosts hit first."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return args.target // 10 or 1
    room = hard - SERVER_FDS_FIXED - SERVER_FDS_PER_WORKER * args.threads - SERVER_FDS_HTTP
    return max(1, min(args.target // 10 or 1, room // 1000 * 1000 * 8 // 10))


# --- the run --------------------------------------------------------------------


def reading(fleet, http_port, rows, count, before, started):
    after = {"server": bm.process_memory(fleet.server.pid), **bm.host_reading()}
    t = bm.status(http_port)
    r = {
        "count": count,
        "at_s": round(time.monotonic() - started, 1),
        "conns_open": t["conns_open"],
        "logins": t["server"]["logins"],
        "server": {k: after["server"][k] - (before["server"][k] or 0)
                   for k in after["server"] if after["server"][k] is not None},
        "server_after": after["server"],
        "kernel": bm.kernel_figures(before, after, count, rows),
        "sockstat": after["sockstat"],
        "meminfo": after["meminfo"],
        "flooders_rss": bm.flooders_rss(fleet),
        "flooders": len(fleet.flooders),
    }
    r["foreign_sockets"] = bm.foreign_sockets({"ok": True, **r})
    # Less other workloads' sockets, as tools/bench_memory.py does.
    r["kernel_raw"] = r["kernel"]
    r["kernel"] = bm.corrected(r)
    r["foreign_flag"] = abs(r["foreign_sockets"]) > FOREIGN_FLAG_SHARE * 2 * count
    return r


def run(args, plan, out_dir):
    rows_slab = bm.slabinfo()
    rows = bm.socket_rows(rows_slab, bm.slab_aliases()) if rows_slab is not None else {}
    port, http_port = args.port, args.port + 1
    if not bm.port_pair_free(port):
        raise RuntimeError(f"127.0.0.1:{port} or :{http_port} is taken; choose another --port")
    result = {"readings": [], "ok": False}
    started = time.monotonic()
    with bm.Fleet(out_dir, "run") as fleet:
        try:
            cmd = bm.server_cmd(args.binary, port, http_port, threads=args.threads, pin=None,
                                extra=["--conns-max", str(plan.conns_max)])
            result["server_cmd"] = " ".join(cmd)
            fleet.start_server(cmd)
            bm.wait_server_ready(fleet, port, http_port)
            time.sleep(1)
            before = {"server": bm.process_memory(fleet.server.pid), **bm.host_reading()}
            result["baseline"] = {"server": before["server"], "sockstat": before["sockstat"],
                                  "meminfo": before["meminfo"], "slab_total_bytes": before["slab_total_bytes"]}
            first, next_addr = 0, 0
            for checkpoint in plan.checkpoints:
                step_started = time.monotonic()
                while first < checkpoint:
                    users = min(plan.users_per_flooder, checkpoint - first)
                    n_addrs = math.ceil(users / plan.users_per_addr)
                    addrs = [bm.loopback_addr(next_addr + k) for k in range(n_addrs)]
                    next_addr += n_addrs
                    i = len(fleet.flooders)
                    cmd = bm.flood_cmd(args.binary, port, first, users, args.target, 0, addrs,
                                       out_dir / f"flood{i}.json", threads=plan.flooder_threads, pin=None,
                                       hold_s=HOLD_S)
                    result.setdefault("flood_cmds", []).append(" ".join(cmd))
                    fleet.start_flooder(cmd)
                    first += users
                timeout = LOGIN_FLOOR_S + (checkpoint - (result["readings"][-1]["count"]
                                                         if result["readings"] else 0)) * LOGIN_S_PER_CONN
                log(f"  {checkpoint:,}: {len(fleet.flooders)} flooders started, waiting for the logins "
                    f"(at most {timeout:.0f} s) ...")
                try:
                    bm.wait_logged_in(fleet, http_port, checkpoint, timeout_s=timeout)
                except RuntimeError:
                    # Read anyway when nearly all are in (the rest keep
                    # retrying); the figures are per connection actually open.
                    opened = bm.status(http_port)["conns_open"]
                    if opened < LOGGED_IN_MIN_SHARE * checkpoint:
                        raise
                    log(f"  {opened:,} of {checkpoint:,} in after {timeout:.0f} s: reading at {opened:,}")
                login_s = time.monotonic() - step_started
                time.sleep(args.settle)
                opened = bm.status(http_port)["conns_open"]
                r = reading(fleet, http_port, rows, min(opened, checkpoint), before, started)
                r["checkpoint"] = checkpoint
                r["login_s"] = round(login_s, 1)
                result["readings"].append(r)
                log(f"  {describe(r)}")
                (out_dir / "report.json").write_text(json.dumps(result, indent=1))
            result["ok"] = True
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            result["error"] = str(e)
            result["server_log_tail"] = bs.tail(out_dir / "run.server.log")
            log(f"run failed: {e}")
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def describe(r):
    n = r["count"]
    k = r["kernel"]
    return (f"{n:,} connections: server RSS {r['server']['rss'] / 2**20:,.1f} MiB ({r['server']['rss'] / n:.0f} B/conn), "
            f"kernel slab {k['slab_bytes'] / 2**20:,.1f} MiB both ends ({k['slab_bytes'] / n:,.0f} B/conn), socket "
            f"caches of the server's end {k.get('server_socket_slab_bytes', k['server_slab_bytes']) / n:,.0f} B/conn "
            f"({k.get('server_socket_slab_obj_bytes', 0) / n:,.0f} as objects x slot), "
            f"TCP buffers {k['sockstat_mem_bytes'] / 2**20:.1f} MiB, flooders {r['flooders_rss'] / 2**20:,.0f} MiB, "
            f"MemAvailable {r['meminfo']['MemAvailable'] / 1e9:.1f} GB, logins in {r['login_s']} s")


def report_text(args, plan, checks, result):
    out = [f"hongbao {args.target:,}-connection run, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
           f"kernel {os.uname().release}, {os.cpu_count()} CPUs, commit {bs.git('rev-parse', '--short', 'HEAD')}",
           print_preflight(args, plan, checks), ""]
    if result.get("error"):
        out.append(f"FAILED: {result['error']}")
    out.append("| connections | logins in s | server RSS MiB | B/conn | server anon MiB | kernel slab MiB (both ends) "
               "| socket caches, server's end B/conn (objects x slot) | TCP buffers MiB | flooders' RSS MiB | foreign sockets |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["readings"]:
        n, k = r["count"], r["kernel"]
        out.append(f"| {n:,} | {r['login_s']} | {r['server']['rss'] / 2**20:,.1f} | {r['server']['rss'] / n:,.0f} | "
                   f"{r['server']['anon'] / 2**20:,.1f} | {k['slab_bytes'] / 2**20:,.1f} | "
                   f"{k.get('server_socket_slab_bytes', k['server_slab_bytes']) / n:,.0f} "
                   f"({k.get('server_socket_slab_obj_bytes', 0) / n:,.0f}) | "
                   f"{k['sockstat_mem_bytes'] / 2**20:.1f} | {r['flooders_rss'] / 2**20:,.0f} | {r['foreign_sockets']:+,}"
                   f"{' (!)' if r['foreign_flag'] else ''} |")
    if any(r["foreign_flag"] for r in result["readings"]):
        out.append(f"(!) other workloads' TCP sockets came or went beside ours (more than "
                   f"{FOREIGN_FLAG_SHARE:.0%} of ours): the kernel figures are corrected by the socket caches' cost "
                   f"per socket, an estimate; run again on a quiet host")
    fits = {}
    for key, value in (("server_rss", lambda r: r["server"]["rss"]),
                       ("slab_both", lambda r: r["kernel"]["slab_bytes"]),
                       ("socket_slab_server", lambda r: r["kernel"].get("server_socket_slab_bytes")),
                       ("socket_obj_server", lambda r: r["kernel"].get("server_socket_slab_obj_bytes"))):
        f = bm.fit([(r["count"], value(r)) for r in result["readings"] if value(r) is not None])
        if f:
            f["at_1m"] = bm.predict(f, bm.ONE_M)
            fits[key] = f
            out.append(f"fit {key}: {f['b']:,.0f} ± {f['se_b']:,.0f} B/conn (R² {f['r2']:.4f}), "
                       f"at 1M {f['at_1m']['y'] / 1e9:.3f} GB ± {f['at_1m']['se'] / 1e9:.3f}")
    result["fits"] = fits
    return "\n".join(out) + "\n"


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, bs.interrupt)
    plan = Plan(args)
    checks = preflight(args, plan)
    text = print_preflight(args, plan, checks)
    print(text, flush=True)
    if not all(c["ok"] for c in checks):
        return EXIT_LIMITS
    if args.preflight_only:
        return 0
    if not args.no_build:
        bs.build()
    if not args.binary.exists():
        log(f"{args.binary} does not exist; run without --no-build")
        return EXIT_FAILED
    out_dir = args.out or REPO / "target" / "bench" / time.strftime("run-1m-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"running; logs and the report in {out_dir}")
    try:
        result = run(args, plan, out_dir)
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_FAILED
    result["preflight"] = checks
    result["plan"] = vars(plan)
    result["argv"] = sys.argv[1:]
    text = report_text(args, plan, checks, result)
    (out_dir / "report.json").write_text(json.dumps(result, indent=1))
    (out_dir / "report.txt").write_text(text)
    print(text)
    log(f"wrote {out_dir / 'report.json'} and {out_dir / 'report.txt'}")
    return 0 if result["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
