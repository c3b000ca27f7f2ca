#!/usr/bin/env python3
"""Cluster mode's figures: claims, pushes across nodes, shakes' CPU, packets.

Owns: building the release binary, starting on loopback a Redis Cluster
(`tools/cluster.sh up --primaries P --replicas 1`) and hongbao nodes on it
(`hongbao server --cluster ... --node-id N --data-dir ...`), driving them
with the load generator written here (python sockets, one thread, many
connections: logins, claims, pushes read with the kernel's receive stamps)
or with `hongbao flood`, and turning what it measured into medians, ratios
and markdown tables for docs/BENCHMARKS.md ("Cluster mode"). Must not:
leave a process behind (every process it starts is stopped by its own pid:
SIGTERM, then SIGKILL after a timeout; the Redis nodes by
`tools/cluster.sh down`, which stops exactly its pidfiles' pids), wait
without a deadline, change a host setting, or talk to anything but
127.0.0.1. Ports: Redis 17400.. (cluster bus +10000), hongbao nodes
17410..17499.

Pinning: the system under test (every hongbao node, every redis-server) on
core 0 (`taskset -c 0`), this script's load generator and `hongbao flood`
on core 1. On a 2-core machine the nodes and Redis share one core, so the
throughput figures say what one core does; the CPU per operation of each
process (from /proc/PID/task/*/schedstat at the window's edges) is what the
extrapolation scales.

A round runs, for each Redis topology (--primaries, default 1 and 3, each
primary with 1 replica), each fleet size (--nodes, default 1 and 3) side by
side, their order alternating between rounds:

  claims  Packets of --claimants (100) users each, made with /packet on
          the nodes in turn while their users are offline; then the users
          log in, spread over the nodes (user i on node i mod N), and claim
          them. (1) latency: open loop at --claim-rate claims/s over all
          users (each claim due at start + k / rate), latency from the
          claim's send to its answer (the kernel's receive stamp), and from
          its intended send. (2) capacity: closed loop, every user keeping
          --claim-window claims in flight, for --warmup + --duration s:
          claims answered per second in the window, their latency, and the
          CPU per claim of the nodes, the primaries and the replicas. Every
          claim is of a fresh packet of the user's: all are paid.
  push    (needs 2 nodes for "another node"; with 1 node it is the same
          node) --push-samples times: GET /packet?amount=300&users=a,b,c on
          node A (the first) for three users logged in on node B (the
          second), and the time from the request's send to each push frame
          (cmd 4) on B, one packet at a time with 10-30 ms between.
  flow    The seed's send-packet flow: every node runs /fahongbao at
          --flow-rate / N packets a second for 3 users drawn from the online
          users, who claim each push at once. Packets created per second,
          claims paid, claim latency under that load, and the CPU per
          packet (its creation, 3 routes, 3 pushes and 3 claims) of the
          nodes and of Redis.
  logins  --login-users users connect and log in at --login-rate a second,
          spread over the nodes: the CPU per login (the node's, and Redis's
          for the presence hb_login sets) until every login's presence is in
          the engine.
  shakes  (in the --primaries with the most primaries) `hongbao server
          --threads 1` with and without `--cluster`, 10,000 flooder users at
          --shake-rate (60,000) shakes/s: the server's CPU per shake (the
          flooder's --server-pid sampling, as tools/bench_server.py), side by
          side, ratio per round. Both with --data-dir and 200 envelopes/s
          (the cluster node leases them: /yaohongbao?qps=200).

Figures are medians over rounds with min..max beside them; a ratio is per
round (side by side), then the median. The machine may be shared: each
window's CPU used by anything but our processes is reported ("others").

Usage:
  tools/bench_cluster.py                      # 3 rounds, every part (~23 min)
  tools/bench_cluster.py --quick              # 1 round, short windows: smoke run (~7 min)
  tools/bench_cluster.py --parts claims,push --primaries 3 --nodes 3 --repeats 1
  tools/bench_cluster.py --binary target/bench/hongbao-OLD --parts push,flow
  tools/bench_cluster.py --summarise target/bench/cluster-....json
"""

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_server as bs  # noqa: E402  (build, stop, tail, the flooder's run)

REPO = bs.REPO
BINARY = bs.BINARY
CLUSTER_SH = REPO / "tools" / "cluster.sh"

SUT_CORE = "0"
LOAD_CORE = 1

REDIS_PORT = 17400
# hongbao nodes' wire and HTTP ports, taken in turn from this range (a
# fresh one per start, so no TIME_WAIT of an earlier run shares a 4-tuple).
NODE_PORT_FIRST = 17410
NODE_PORT_LAST = 17499

PARTS = ("claims", "push", "flow", "logins", "shakes")

# Wire v1 (docs/PROTOCOL.md).
LOGIN, LOGIN_ANSWER, SHAKE, SHAKE_ANSWER, PUSH, CLAIM, CLAIM_ANSWER = 0, 1, 2, 3, 4, 5, 6
FRAME_LEN = {0: 16, 1: 20, 2: 16, 3: 28, 4: 36, 5: 20, 6: 20}
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
ANC_SIZE = socket.CMSG_SPACE(16)

# Deadlines.
NODE_READY_TIMEOUT_S = 30
LOGIN_TIMEOUT_S = 30
SETTLE_TIMEOUT_S = 60
PUSH_TIMEOUT_S = 5
HTTP_TIMEOUT_S = 10
CLUSTER_SH_TIMEOUT_S = 120
# Pushes a user's mailbox keeps (the server's --mailbox-max default): a
# user logging in gets at most this many.
MAILBOX_MAX = 16
# After the last push a login brings, the engine removes each from its
# mailbox (one call each): the claims wait this long for that to end.
LOGIN_SETTLE_S = 2.0
# Other load above this share of a core marks a window as not quiet.
NOISY_PCT = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    bs.log(msg)


def ints(text):
    return [int(x) for x in str(text).split(",") if x.strip()]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="rounds; medians are over these (default 3)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma separated (default all: {','.join(PARTS)})")
    p.add_argument("--primaries", default="1,3", help="Redis primaries per topology, each with 1 replica (default 1,3)")
    p.add_argument("--nodes", default="1,3", help="hongbao nodes per fleet (default 1,3)")
    p.add_argument("--claimants", type=int, default=100, help="users per claims packet (default 100)")
    p.add_argument("--claim-users", type=int, default=300,
                   help="users in the claims part, a multiple of --claimants (default 300)")
    p.add_argument("--claim-rate", type=int, default=1000,
                   help="claims/s of the open-loop latency run (default 1000: below every configuration's capacity)")
    p.add_argument("--claim-latency-secs", type=float, default=5, help="open-loop run's length (default 5)")
    p.add_argument("--claim-window", type=int, default=2,
                   help="claims each user keeps in flight in the capacity run (default 2)")
    p.add_argument("--claim-packets", type=int, default=0,
                   help="packets per user group for the capacity run (default: enough for "
                   "--claim-expect claims/s over warmup + duration)")
    p.add_argument("--claim-expect", type=int, default=45000,
                   help="claims/s the capacity run is provisioned for (default 45000); a run that "
                   "uses them up early ends its window there and says so")
    p.add_argument("--claim-secs", type=float, default=4,
                   help="the capacity run's window, seconds (default 4: every claim needs a packet "
                   "made beforehand, ~0.5 ms per target on this machine)")
    p.add_argument("--claim-warmup", type=float, default=1, help="the capacity run's warmup (default 1)")
    p.add_argument("--push-samples", type=int, default=100, help="packets timed in the push part (default 100)")
    p.add_argument("--flow-rate", type=int, default=300, help="packets/s over the fleet in the flow part (default 300)")
    p.add_argument("--flow-users", type=int, default=600, help="users online in the flow part (default 600)")
    p.add_argument("--login-users", type=int, default=3000, help="users of the logins part (default 3000)")
    p.add_argument("--login-rate", type=int, default=1500, help="logins/s of the logins part (default 1500)")
    p.add_argument("--shake-rate", type=int, default=60000, help="shakes/s of the shakes part (default 60000)")
    p.add_argument("--shake-users", type=int, default=10000, help="flooder users of the shakes part (default 10000)")
    p.add_argument("--duration", type=int, default=10, help="measurement windows, seconds (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warmup before each window, seconds (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 4 s windows, 1 s warmup, 30 push samples")
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/hongbao")
    p.add_argument("--binary", type=Path,
                   help="run this hongbao binary instead of target/release/hongbao (implies --no-build; "
                   "e.g. a copy of an earlier build, to compare two builds)")
    p.add_argument("--keep-logs", action="store_true", help="keep the scratch directory (logs, ledgers)")
    p.add_argument("--out", type=Path, help="results JSON (default target/bench/cluster-<time>.json)")
    p.add_argument("--summarise", type=Path, metavar="JSON",
                   help="run nothing: print the tables of an earlier results JSON")
    a = p.parse_args()
    if a.quick:
        a.repeats, a.duration, a.warmup = 1, 4, 1
        a.push_samples = 30
        a.claim_latency_secs = 3
        a.claim_secs = 2
    a.primaries = ints(a.primaries)
    a.nodes = ints(a.nodes)
    a.parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    bad = [x for x in a.parts if x not in PARTS]
    if bad or not a.parts:
        p.error(f"--parts: unknown {bad}; choose from {','.join(PARTS)}")
    if not a.primaries or min(a.primaries) < 1 or not a.nodes or min(a.nodes) < 1 or max(a.nodes) > 8:
        p.error("--primaries and --nodes: lists of numbers >= 1 (nodes at most 8)")
    if a.claimants < 1 or a.claim_users % a.claimants or a.claim_users < a.claimants:
        p.error("--claim-users must be a positive multiple of --claimants")
    if a.repeats < 1 or a.duration < 1 or a.warmup < 0 or a.claim_window < 1:
        p.error("--repeats, --duration, --claim-window >= 1, --warmup >= 0")
    return a


# ---------------------------------------------------------------- processes

def task_cpu_ns(pid):
    """A process's run time so far, every thread (schedstat, ns); None when gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return total


def machine_busy_ns():
    """Every CPU's busy time so far (/proc/stat: all but idle, iowait and
    steal), and the time the hypervisor stole from this guest, ns."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in fields]
    busy = sum(v[:7]) - v[3] - v[4]  # user nice system idle iowait irq softirq
    return busy * 1_000_000_000 // CLK_TCK, v[7] * 1_000_000_000 // CLK_TCK


def cpu_busy_ns(cpu):
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (sum(v[:7]) - v[3] - v[4]) * 1_000_000_000 // CLK_TCK
    return 0


class CpuMeter:
    """CPU of named groups of pids between two samples, with the machine's."""

    def __init__(self, groups):
        self.groups = groups  # name -> [pid]

    def sample(self):
        return {
            "t": time.monotonic_ns(),
            "groups": {g: sum(task_cpu_ns(p) or 0 for p in pids) for g, pids in self.groups.items()},
            "self": task_cpu_ns(os.getpid()),
            "machine": machine_busy_ns()[0],
            "steal": machine_busy_ns()[1],
            "cpu0": cpu_busy_ns(0),
            "cpu1": cpu_busy_ns(1),
        }

    @staticmethod
    def delta(a, b):
        secs = (b["t"] - a["t"]) / 1e9
        groups = {g: (b["groups"][g] - a["groups"][g]) / 1e3 for g in a["groups"]}  # µs
        own = sum(groups.values()) + (b["self"] - a["self"]) / 1e3
        machine = (b["machine"] - a["machine"]) / 1e3
        return {
            "secs": secs,
            "cpu_us": groups,
            "load_us": (b["self"] - a["self"]) / 1e3,
            # Anything but our processes, in % of one core (tick-sampled
            # against exact run times: a few % either way is noise).
            "others_pct": (machine - own) / 1e4 / secs if secs > 0 else None,
            "core0_pct": (b["cpu0"] - a["cpu0"]) / 1e7 / secs if secs > 0 else None,
            "core1_pct": (b["cpu1"] - a["cpu1"]) / 1e7 / secs if secs > 0 else None,
            # Time the hypervisor ran something else on our vCPUs, in % of
            # one: a host busy with other guests (our run times then
            # stretch too).
            "steal_pct": (b["steal"] - a["steal"]) / 1e7 / secs if secs > 0 else None,
        }


class Ports:
    """Fresh node ports, in turn, from this script's range."""

    def __init__(self):
        self.next = NODE_PORT_FIRST

    def take(self):
        span = NODE_PORT_LAST - NODE_PORT_FIRST + 1
        for _ in range(span):
            port = self.next
            self.next = NODE_PORT_FIRST + (self.next - NODE_PORT_FIRST + 1) % span
            if bs.port_free(port):
                return port
        raise RuntimeError(f"no free port in {NODE_PORT_FIRST}..{NODE_PORT_LAST}")


def http_get(port, target, timeout=HTTP_TIMEOUT_S):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"GET :{port}{target[:80]} -> {e.code}: {e.read()[:300]!r}") from None


class Redis:
    """A Redis Cluster from tools/cluster.sh, in our own directory."""

    def __init__(self, workdir, primaries):
        self.dir = workdir / f"redis-{primaries}p"
        self.primaries = primaries
        self.count = primaries * 2
        self.ports = list(range(REDIS_PORT, REDIS_PORT + self.count))

    def sh(self, *argv):
        return subprocess.run(["taskset", "-c", SUT_CORE, "bash", str(CLUSTER_SH), *argv, "--dir", str(self.dir)],
                              capture_output=True, text=True, timeout=CLUSTER_SH_TIMEOUT_S, cwd=REPO)

    def up(self):
        r = self.sh("up", "--port", str(REDIS_PORT), "--primaries", str(self.primaries), "--replicas", "1")
        if r.returncode != 0:
            self.down()
            raise RuntimeError(f"tools/cluster.sh up --primaries {self.primaries} failed: {r.stderr[-1500:]}")
        self.roles = {}
        for p in self.ports:
            out = subprocess.run(["redis-cli", "-p", str(p), "role"], capture_output=True, text=True,
                                 timeout=5).stdout.split()
            self.roles[p] = "primary" if out[:1] == ["master"] else "replica"
        if sum(1 for r in self.roles.values() if r == "primary") != self.primaries:
            raise RuntimeError(f"expected {self.primaries} primaries, roles {self.roles}")

    def pids(self, role):
        out = []
        for p in self.ports:
            if self.roles.get(p) != role:
                continue
            f = self.dir / f"node-{p}" / "redis.pid"
            try:
                out.append(int(f.read_text().strip()))
            except (OSError, ValueError):
                pass
        return out

    def urls(self):
        return ",".join(f"redis://127.0.0.1:{p}" for p in self.ports)

    def cli(self, port, *argv):
        return subprocess.run(["redis-cli", "-p", str(port), *argv], capture_output=True, text=True,
                              timeout=10).stdout

    def reset_stats(self):
        for p in self.ports:
            self.cli(p, "config", "resetstat")

    def used_memory(self):
        """The primaries' used_memory (INFO memory), summed, bytes."""
        total = 0
        for p in self.ports:
            if self.roles.get(p) != "primary":
                continue
            for line in self.cli(p, "info", "memory").splitlines():
                if line.startswith("used_memory:"):
                    total += int(line.split(":", 1)[1])
        return total

    def command_stats(self):
        """The primaries' INFO commandstats since the last reset, summed:
        command -> calls, µs inside the command (the rest of a primary's
        CPU is the event loop, the sockets and the AOF's write + fsync)."""
        out = {}
        for p in self.ports:
            if self.roles.get(p) != "primary":
                continue
            for line in self.cli(p, "info", "commandstats").splitlines():
                if not line.startswith("cmdstat_"):
                    continue
                name, _, rest = line.partition(":")
                f = dict(kv.split("=", 1) for kv in rest.strip().split(",") if "=" in kv)
                c = out.setdefault(name[len("cmdstat_"):], {"calls": 0, "usec": 0})
                c["calls"] += int(f.get("calls", 0))
                c["usec"] += int(f.get("usec", 0))
        return out

    def down(self):
        try:
            r = self.sh("down")
            if r.returncode != 0:
                log(f"  tools/cluster.sh down: {r.stderr[-500:]}")
        except subprocess.TimeoutExpired:
            log("  tools/cluster.sh down timed out")


class Node:
    """One hongbao node of the fleet, pinned to the system's core."""

    def __init__(self, workdir, redis, node_id, ports, extra=()):
        self.id = node_id
        self.port = ports.take()
        self.http = ports.take()
        self.data = workdir / f"node-{node_id}.data"
        self.log_path = workdir / f"node-{node_id}.log"
        self.cmd = [
            "taskset", "-c", SUT_CORE, str(BINARY), "server",
            "--listen", f"127.0.0.1:{self.port}", "--http", f"127.0.0.1:{self.http}",
            "--threads", "1", "--quiet", "--conn-qps-max", "0", "--envelopes-per-sec", "0",
            "--data-dir", str(self.data), "--cluster", redis.urls(), "--node-id", str(node_id), *extra,
        ]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.pid = self.proc.pid

    def wait_ready(self):
        deadline = time.monotonic() + NODE_READY_TIMEOUT_S
        bs.wait_until_accepting(self.port, self.proc, NODE_READY_TIMEOUT_S)
        while time.monotonic() < deadline:
            try:
                if self.cluster()["available"]:
                    return
            except (OSError, RuntimeError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node {self.id} did not reach the engine within {NODE_READY_TIMEOUT_S} s: "
                           f"{bs.tail(self.log_path)}")

    def get(self, target):
        return http_get(self.http, target)

    def cluster(self):
        return self.get("/status")["cluster"]

    def stop(self):
        code = bs.stop(self.proc, f"node {self.id}")
        shutil.rmtree(self.data, ignore_errors=True)
        return code


def start_fleet(workdir, redis, count, ids, ports):
    nodes = []
    try:
        for _ in range(count):
            nodes.append(Node(workdir, redis, next(ids), ports))
        for n in nodes:
            n.wait_ready()
    except BaseException:
        for n in nodes:
            n.stop()
        raise
    return nodes


def stop_fleet(nodes):
    for n in nodes:
        n.stop()


def sum_status(nodes, key):
    return sum(n.cluster()[key] for n in nodes)


# ---------------------------------------------------------------- the wire client

class Conn:
    __slots__ = ("sock", "user", "node", "buf", "out", "logged_in", "sent_at", "todo", "in_flight")

    def __init__(self, sock, user, node):
        self.sock, self.user, self.node = sock, user, node
        self.buf = b""
        self.out = bytearray()
        self.logged_in = False
        self.sent_at = {}  # packet -> (intended ns, sent ns)
        self.todo = None
        self.in_flight = 0


def frame(cmd, *fields):
    return struct.pack(f">HHQ{len(fields)}I", 12 + 4 * len(fields), cmd, int(time.time()), *fields)


class Client:
    """Many connections on one thread; frames read with the kernel's
    receive stamp (SO_TIMESTAMPNS, CLOCK_REALTIME, ns)."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.bad = 0

    def connect(self, users, nodes):
        """Logs in users[i] on nodes[i % len(nodes)]; waits for every answer."""
        start = len(self.conns)
        for i, u in enumerate(users):
            node = nodes[i % len(nodes)]
            s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setblocking(False)
            c = Conn(s, u, node)
            self.conns.append(c)
            self.sel.register(s, selectors.EVENT_READ, c)
            s.send(frame(LOGIN, u))
        new = self.conns[start:]
        deadline = time.monotonic() + LOGIN_TIMEOUT_S
        while not all(c.logged_in for c in new):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(not c.logged_in for c in new)} of {len(new)} logins unanswered "
                                   f"after {LOGIN_TIMEOUT_S} s")
            self.pump(0.05, lambda *a: None)
        return new

    def pump(self, timeout, on_frame):
        """Reads what is there (waiting up to `timeout` s); on_frame(conn,
        cmd, fields, stamp_ns) for each frame but login answers."""
        for key, _ in self.sel.select(timeout):
            c = key.data
            try:
                data, anc, _, _ = c.sock.recvmsg(65536, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            if not data:
                raise RuntimeError(f"node {c.node.id} closed user {c.user}'s connection")
            stamp = time.time_ns()
            for level, kind, d in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(d) >= 16:
                    sec, ns = struct.unpack("qq", d[:16])
                    stamp = sec * 1_000_000_000 + ns
            buf = c.buf + data if c.buf else data
            at, n = 0, len(buf)
            while n - at >= 4:
                length, cmd = struct.unpack_from(">HH", buf, at)
                if FRAME_LEN.get(cmd) != length:
                    raise RuntimeError(f"bad frame from node {c.node.id}: cmd {cmd} length {length}")
                if n - at < length:
                    break
                fields = struct.unpack_from(f">{(length - 12) // 4}I", buf, at + 12)
                at += length
                if cmd == LOGIN_ANSWER:
                    if fields[1] != 0:
                        raise RuntimeError(f"login of {c.user} refused: result {fields[1]}")
                    c.logged_in = True
                else:
                    on_frame(c, cmd, fields, stamp)
            c.buf = buf[at:]

    def flush(self, conns):
        """Sends every listed connection's queued frames; returns the send time."""
        now = time.time_ns()
        for c in conns:
            if c.out:
                # Loopback, a few KiB at most: the socket's buffer takes it whole.
                sent = c.sock.send(c.out)
                if sent != len(c.out):
                    raise RuntimeError(f"short send to node {c.node.id} ({sent} of {len(c.out)})")
                c.out.clear()
        return now

    def close(self):
        for c in self.conns:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
        self.conns = []
        self.sel.close()


def percentiles(values_us):
    if not values_us:
        return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None}
    v = sorted(values_us)

    def at(q):
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    return {"n": len(v), "p50_us": at(0.50), "p99_us": at(0.99), "max_us": v[-1]}


# ---------------------------------------------------------------- parts

class Users:
    """Fresh user ids, so no part meets another's presence or mailbox."""

    def __init__(self, start):
        self.next = start

    def take(self, n):
        first = self.next
        self.next += n
        return list(range(first, first + n))


def make_packets(nodes, groups, per_group, amount):
    """per_group packets for each group of users, made with /packet on the
    nodes in turn (one thread per node); returns the ids per group."""
    jobs = {n.id: [] for n in nodes}
    k = 0
    for g, users in enumerate(groups):
        for _ in range(per_group):
            jobs[nodes[k % len(nodes)].id].append((g, ",".join(map(str, users))))
            k += 1
    by_id = {n.id: n for n in nodes}
    ids = [[] for _ in groups]

    def run(node_id):
        out = []
        node = by_id[node_id]
        for g, users in jobs[node_id]:
            out.append((g, node.get(f"/packet?amount={amount}&users={users}")["packet"]))
        return out

    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        for made in pool.map(run, list(jobs)):
            for g, pid in made:
                ids[g].append(pid)
    return ids


def wait_routed(nodes):
    """Until every node's engine thread has routed what it created."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while any(n.cluster()["packets_pending"] for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"packets still pending after {SETTLE_TIMEOUT_S} s")
        time.sleep(0.1)


def part_claims(args, nodes, users_pool, meter):
    k = args.claimants
    users = users_pool.take(args.claim_users)
    groups = [users[i:i + k] for i in range(0, len(users), k)]
    g_count = len(groups)
    lat_total = int(args.claim_rate * args.claim_latency_secs)
    lat_per_group = max(1, math.ceil(lat_total / len(users)))
    cap_per_group = args.claim_packets or max(
        4, math.ceil(args.claim_expect * (args.claim_warmup + args.claim_secs) * 1.1 / len(users)))
    t0 = time.monotonic()
    ids = make_packets(nodes, groups, lat_per_group + cap_per_group, amount=100 * k)
    wait_routed(nodes)
    made_s = time.monotonic() - t0
    log(f"    made {g_count} x {lat_per_group + cap_per_group} packets of {k} in {made_s:.1f} s")

    client = Client()
    try:
        conns = client.connect(users, nodes)
        # The pushes each login brings (its mailbox), then their removal.
        expected = len(users) * min(MAILBOX_MAX, lat_per_group + cap_per_group)
        got = [0]

        def count_push(c, cmd, f, stamp):
            if cmd == PUSH:
                got[0] += 1

        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while got[0] < expected and time.monotonic() < deadline:
            client.pump(0.05, count_push)
        settle_until = time.monotonic() + LOGIN_SETTLE_S
        while time.monotonic() < settle_until:
            client.pump(0.05, count_push)

        user_index = {c.user: i for i, c in enumerate(conns)}
        group_of = {u: gi for gi, g in enumerate(groups) for u in g}

        def packets_of(c, first, count):
            own = ids[group_of[c.user]][first:first + count]
            r = user_index[c.user] % max(1, len(own))
            return own[r:] + own[:r]

        # (1) Latency: open loop at a fixed rate.
        order = []
        lists = [packets_of(c, 0, lat_per_group) for c in conns]
        for j in range(lat_per_group):
            for c, lst in zip(conns, lists):
                order.append((c, lst[j]))
        order = order[:lat_total]
        lat = run_open_loop(client, order, args.claim_rate)

        # (2) Capacity: closed loop.
        for c in conns:
            c.todo = packets_of(c, lat_per_group, cap_per_group)
            c.todo.reverse()  # pop() from the end
        cap = run_closed_loop(client, conns, args, meter)
    finally:
        client.close()
    return {"made_secs": made_s, "packets_per_group": lat_per_group + cap_per_group,
            "login_pushes": got[0], "latency": lat, "capacity": cap}


def run_open_loop(client, order, rate):
    total = len(order)
    service, corrected = [], []
    zero = [0]
    answered = [0]

    def on(c, cmd, f, stamp):
        if cmd != CLAIM_ANSWER:
            return
        at = c.sent_at.pop(f[0], None)
        if at is None:
            return
        answered[0] += 1
        if f[1] == 0:
            zero[0] += 1
        intended, sent = at
        service.append((stamp - sent) / 1e3)
        corrected.append((stamp - intended) / 1e3)

    start = time.time_ns() + 20_000_000
    k = 0
    deadline = time.monotonic() + total / rate + 30
    while answered[0] < total:
        if time.monotonic() > deadline:
            break
        now = time.time_ns()
        touched = []
        while k < total and start + k * 1_000_000_000 // rate <= now:
            c, packet = order[k]
            c.out += frame(CLAIM, c.user, packet)
            c.sent_at[packet] = [start + k * 1_000_000_000 // rate, 0]
            touched.append((c, packet))
            k += 1
        if touched:
            sent = client.flush({c for c, _ in touched})
            for c, packet in touched:
                c.sent_at[packet][1] = sent
        wait = 0.005
        if k < total:
            wait = max(0.0, min(wait, (start + k * 1_000_000_000 // rate - time.time_ns()) / 1e9))
        client.pump(wait, on)
    return {"rate": rate, "claims": total, "answered": answered[0], "zero": zero[0],
            "service": percentiles(service), "corrected": percentiles(corrected)}


def run_closed_loop(client, conns, args, meter):
    """Every connection keeps --claim-window claims in flight. The window
    ends at its length, or when the first connection has no packet left
    (the load would fall from there): answers stamped in it count."""
    window = args.claim_window
    t_start = time.time_ns()
    w_from = t_start + int(args.claim_warmup * 1e9)
    w_to = w_from + int(args.claim_secs * 1e9)
    answers = []  # (stamp, µs from its send, paid)
    sampled = {}
    in_flight = [0]
    exhausted = [None]
    pending = []

    def send_next(c):
        if c.todo:
            packet = c.todo.pop()
            c.out += frame(CLAIM, c.user, packet)
            c.sent_at[packet] = [0, 0]
            in_flight[0] += 1
            pending.append((c, packet))
        elif exhausted[0] is None:
            exhausted[0] = time.time_ns()
            sampled.setdefault("to", meter.sample())

    def flush():
        if pending:
            sent = client.flush({c for c, _ in pending})
            for c, p in pending:
                c.sent_at[p][1] = sent
            pending.clear()

    for c in conns:
        for _ in range(window):
            send_next(c)
    flush()

    def on(c, cmd, f, stamp):
        if cmd != CLAIM_ANSWER:
            return
        at = c.sent_at.pop(f[0], None)
        if at is None:
            return
        in_flight[0] -= 1
        answers.append((stamp, (stamp - at[1]) / 1e3, f[1] > 0))
        if stamp < w_to:
            send_next(c)

    deadline = time.monotonic() + args.claim_warmup + args.claim_secs + 60
    while in_flight[0] and time.monotonic() < deadline:
        now = time.time_ns()
        if "from" not in sampled and now >= w_from:
            sampled["from"] = meter.sample()
        if "to" not in sampled and now >= w_to:
            sampled["to"] = meter.sample()
        client.pump(0.005, on)
        flush()
    sampled.setdefault("from", meter.sample())
    sampled.setdefault("to", meter.sample())
    end = min(w_to, exhausted[0] or w_to)
    short = end < w_to
    secs = max(1e-3, (end - w_from) / 1e9)
    # CPU over the same span: from the window's start to its end (the
    # sample taken when the first connection ran out, if it did).
    cpu = CpuMeter.delta(sampled["from"], sampled["to"])
    inside = [a for a in answers if w_from <= a[0] < end]
    n = len(inside)
    return {"window_secs": secs, "cut_short": short, "answered": n, "zero": sum(1 for a in inside if not a[2]),
            "unanswered": in_flight[0], "claims_per_sec": n / secs, "in_flight": window * len(conns),
            "service": percentiles([a[1] for a in inside]), "cpu": cpu,
            "cpu_us_per_claim": {g: us * (secs / cpu["secs"]) / n for g, us in cpu["cpu_us"].items()}
            if n and cpu["secs"] > 0 else None,
            "load_us_per_claim": cpu["load_us"] * (secs / cpu["secs"]) / n if n and cpu["secs"] > 0 else None}


def part_push(args, nodes, users_pool):
    a = nodes[0]
    b = nodes[1 % len(nodes)]
    pool = users_pool.take(30)
    client = Client()
    try:
        conns = client.connect(pool, [b])
        time.sleep(0.5)
        # Presence reaches the engine after the login's answer.
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while b.cluster()["presence"] < len(pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = {}

        def on(c, cmd, f, stamp):
            if cmd == PUSH:
                seen.setdefault(f[0], []).append(stamp)

        pushes, https, missing = [], [], 0
        for i in range(args.push_samples):
            trio = [conns[(3 * i + j) % len(conns)] for j in range(3)]
            users = ",".join(str(c.user) for c in trio)
            t0 = time.time_ns()
            packet = a.get(f"/packet?amount=300&users={users}")["packet"]
            https.append((time.time_ns() - t0) / 1e3)
            until = time.monotonic() + PUSH_TIMEOUT_S
            while len(seen.get(packet, ())) < 3 and time.monotonic() < until:
                client.pump(0.01, on)
            got = seen.pop(packet, [])
            missing += 3 - min(3, len(got))
            pushes.extend((s - t0) / 1e3 for s in got[:3])
            pause = time.monotonic() + random.uniform(0.01, 0.03)
            while time.monotonic() < pause:
                client.pump(max(0.0, pause - time.monotonic()), on)
    finally:
        client.close()
    return {"from_node": a.id, "to_node": b.id, "other_node": a is not b, "samples": args.push_samples,
            "missing": missing, "push": percentiles(pushes), "http": percentiles(https)}


def part_flow(args, nodes, users_pool, meter):
    users = users_pool.take(args.flow_users)
    client = Client()
    try:
        conns = client.connect(users, nodes)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while sum_status(nodes, "presence") < len(users) and time.monotonic() < deadline:
            time.sleep(0.05)
        lat, zero, pushes, answered = [], [0], [0], [0]
        t_start = time.time_ns()
        w_from = t_start + args.warmup * 1_000_000_000
        w_to = w_from + args.duration * 1_000_000_000
        pending = []

        def on(c, cmd, f, stamp):
            if cmd == PUSH:
                pushes[0] += 1
                # A push can come twice (live and from the mailbox): one claim.
                if f[0] not in c.sent_at:
                    c.out += frame(CLAIM, c.user, f[0])
                    c.sent_at[f[0]] = [0, 0]
                    pending.append((c, f[0]))
            elif cmd == CLAIM_ANSWER:
                at = c.sent_at.get(f[0])
                if at is None or at[1] <= 0:
                    return
                if w_from <= stamp < w_to:
                    answered[0] += 1
                    lat.append((stamp - at[1]) / 1e3)
                    if f[1] == 0:
                        zero[0] += 1
                at[1] = -1  # answered

        per_node = max(1, round(args.flow_rate / len(nodes)))
        total = per_node * (args.warmup + args.duration + 30)
        for n in nodes:
            n.get(f"/fahongbao?qps={per_node}&sum={total}&claimants=3&min={users[0]}&max={users[-1]}"
                  f"&cents_min=3&cents_max=309")
        sampled = {}
        while time.time_ns() < w_to:
            now = time.time_ns()
            if "from" not in sampled and now >= w_from:
                sampled["from"] = (meter.sample(), {n.id: n.cluster() for n in nodes})
            pending.clear()
            client.pump(0.005, on)
            if pending:
                sent = client.flush({c for c, _ in pending})
                for c, p in pending:
                    c.sent_at[p][1] = sent
        sampled["to"] = (meter.sample(), {n.id: n.cluster() for n in nodes})
        for n in nodes:
            n.get(f"/fahongbao?qps=1&sum=0&claimants=3&min={users[0]}&max={users[-1]}")
        # Drain the claims in flight.
        until = time.monotonic() + 5
        while time.monotonic() < until:
            pending.clear()
            client.pump(0.05, on)
            if pending:
                client.flush({c for c, _ in pending})
    finally:
        client.close()
    a, sa = sampled["from"]
    b, sb = sampled["to"]
    cpu = CpuMeter.delta(a, b)
    secs = cpu["secs"]
    created = sum(sb[i]["packets_created"] - sa[i]["packets_created"] for i in sb)
    paid = sum(sb[i]["claims_paid"] - sa[i]["claims_paid"] for i in sb)
    backlog = sum(sb[i]["packets_pending"] for i in sb)
    return {"rate": per_node * len(nodes), "window_secs": secs, "packets_per_sec": created / secs,
            "claims_paid_per_sec": paid / secs, "backlog_end": backlog, "answered": answered[0],
            "zero": zero[0], "pushes": pushes[0], "claim_service": percentiles(lat), "cpu": cpu,
            "cpu_us_per_packet": {g: us / created for g, us in cpu["cpu_us"].items()} if created else None}


def part_logins(args, nodes, users_pool, meter, redis):
    """CPU per login, node and Redis (presence), at a steady login rate."""
    users = users_pool.take(args.login_users)
    client = Client()
    try:
        before = sum_status(nodes, "presence")
        a = meter.sample()
        t0 = time.monotonic()
        chunk = 50
        for i in range(0, len(users), chunk):
            due = t0 + i / args.login_rate
            while time.monotonic() < due:
                client.pump(max(0.0, min(0.01, due - time.monotonic())), lambda *x: None)
            client.connect(users[i:i + chunk], nodes)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while sum_status(nodes, "presence") - before < len(users):
            if time.monotonic() > deadline:
                raise RuntimeError(f"presence of {len(users)} logins not in the engine after {SETTLE_TIMEOUT_S} s")
            time.sleep(0.02)
        b = meter.sample()
        # An online user's presence in the primaries' memory.
        memory_online = redis.used_memory()
    finally:
        client.close()
    cpu = CpuMeter.delta(a, b)
    return {"memory_online": memory_online, "logins": len(users), "secs": cpu["secs"], "logins_per_sec": len(users) / cpu["secs"], "cpu": cpu,
            "cpu_us_per_login": {g: us / len(users) for g, us in cpu["cpu_us"].items()}}


def part_shakes(args, workdir, redis, ids, ports, round_no):
    """Server CPU per shake, with and without --cluster, side by side."""
    out = {}
    order = ["plain", "cluster"] if round_no % 2 else ["cluster", "plain"]
    for kind in order:
        port, http = ports.take(), ports.take()
        data = workdir / f"shakes-{kind}-{round_no}.data"
        cmd = ["taskset", "-c", SUT_CORE, str(BINARY), "server", "--listen", f"127.0.0.1:{port}",
               "--http", f"127.0.0.1:{http}", "--threads", "1", "--quiet", "--conn-qps-max", "0",
               "--data-dir", str(data)]
        if kind == "cluster":
            cmd += ["--cluster", redis.urls(), "--node-id", str(next(ids)), "--envelopes-per-sec", "0"]
        else:
            cmd += ["--envelopes-per-sec", "200"]
        # Users 0..N-1, as tools/bench_server.py (the flooder's slot rule
        # needs ids below --total); the other parts' users start at 1,000,000.
        json_path = workdir / f"shakes-{kind}-{round_no}.flood.json"
        log_path = workdir / f"shakes-{kind}-{round_no}.server.log"
        flood = ["taskset", "-c", str(LOAD_CORE), str(BINARY), "flood", "--server", f"127.0.0.1:{port}",
                 "--server-pid", "PID", "--users", str(args.shake_users),
                 "--qps", str(args.shake_rate), "--threads", "1", "--no-http", "--send-interval-us", "50",
                 "--duration", str(args.duration), "--warmup", str(args.warmup),
                 "--login-timeout", str(bs.LOGIN_TIMEOUT_S), "--json", str(json_path), "--quiet"]
        rec = {"server_cmd": " ".join(cmd), "ok": False}
        with open(log_path, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            bs.wait_until_accepting(port, proc, NODE_READY_TIMEOUT_S)
            if kind == "cluster":
                deadline = time.monotonic() + NODE_READY_TIMEOUT_S
                while not http_get(http, "/status")["cluster"]["available"]:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the cluster node did not reach the engine")
                    time.sleep(0.1)
                http_get(http, "/yaohongbao?qps=200&sum=100000000")
            flood[flood.index("PID")] = str(proc.pid)
            rec["flood_cmd"] = " ".join(flood)
            timeout = bs.LOGIN_TIMEOUT_S + args.warmup + args.duration + bs.FLOODER_SLACK_S + 5
            r = subprocess.run(flood, capture_output=True, text=True, timeout=timeout)
            if r.returncode != 0:
                rec["error"] = f"flooder exited {r.returncode}: {r.stderr[-800:]}"
            else:
                rep = json.loads(json_path.read_text())
                w = rep["window"]
                rec.update(ok=True, cpu_us_per_shake=(rep.get("server") or {}).get("cpu_us_per_answered"),
                           answered_per_sec=w["answered_per_sec"], got_per_sec=w["got"] / w["secs"],
                           p99_us=rep["latency_corrected"]["p99_us"], others_pct=bs.foreign_pct(rep),
                           lost=w["lost"])
                if kind == "cluster":
                    rec["cluster_status"] = http_get(http, "/status")["cluster"]
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
            rec["error"] = str(e)
        finally:
            rec["server_exit"] = bs.stop(proc)
            rec["server_log_tail"] = bs.tail(log_path)
            shutil.rmtree(data, ignore_errors=True)
        out[kind] = rec
        log(f"    shakes {kind}: {describe_shakes(rec)}")
    if out["plain"].get("ok") and out["cluster"].get("ok") and out["plain"]["cpu_us_per_shake"]:
        out["ratio"] = out["cluster"]["cpu_us_per_shake"] / out["plain"]["cpu_us_per_shake"]
    return out


def describe_shakes(r):
    if not r.get("ok"):
        return f"FAILED: {r.get('error')}"
    return (f"{r['answered_per_sec']:.0f}/s answered, {r['cpu_us_per_shake']:.2f} µs/shake, "
            f"{r['got_per_sec']:.0f} envelopes/s, p99 {r['p99_us']:.0f} µs, others {r['others_pct']:.0f} %")


# ---------------------------------------------------------------- the run

def run_config(args, workdir, redis, count, ids, ports, users_pool, round_no):
    rec = {"round": round_no, "primaries": redis.primaries, "nodes": count}
    nodes = start_fleet(workdir, redis, count, ids, ports)
    try:
        meter = CpuMeter({
            "nodes": [n.pid for n in nodes],
            "primaries": redis.pids("primary"),
            "replicas": redis.pids("replica"),
        })
        if "claims" in args.parts:
            redis.reset_stats()
            c = part_claims(args, nodes, users_pool, meter)
            c["redis_commands"] = redis.command_stats()
            rec["claims"] = c
            cap, lat = c["capacity"], c["latency"]
            per = cap["cpu_us_per_claim"] or {}
            log(f"    claims: latency at {lat['rate']}/s p50 {fmt(lat['service']['p50_us'])} p99 "
                f"{fmt(lat['service']['p99_us'])} µs ({lat['zero']} zero); capacity "
                f"{fmt(cap['claims_per_sec'])}/s p50 {fmt(cap['service']['p50_us'])} p99 "
                f"{fmt(cap['service']['p99_us'])} µs, µs/claim nodes {fmt(per.get('nodes'), 1)} primaries "
                f"{fmt(per.get('primaries'), 1)} replicas {fmt(per.get('replicas'), 1)} load "
                f"{fmt(cap['load_us_per_claim'], 1)}; core0 {fmt(cap['cpu']['core0_pct'])} % core1 "
                f"{fmt(cap['cpu']['core1_pct'])} % others {fmt(cap['cpu']['others_pct'])} % steal "
                f"{fmt(cap['cpu'].get('steal_pct'), 1)} %"
                f"{' CUT SHORT' if cap['cut_short'] else ''}; {cap['zero']} zero")
        if "push" in args.parts:
            p = part_push(args, nodes, users_pool)
            rec["push"] = p
            log(f"    push node {p['from_node']} -> {p['to_node']}: p50 {fmt(p['push']['p50_us'])} p99 "
                f"{fmt(p['push']['p99_us'])} µs (the /packet answer p50 {fmt(p['http']['p50_us'])}), "
                f"{p['missing']} missing")
        if "flow" in args.parts:
            redis.reset_stats()
            mem0, made0 = redis.used_memory(), sum_status(nodes, "packets_created")
            f = part_flow(args, nodes, users_pool, meter)
            f["redis_commands"] = redis.command_stats()
            made = sum_status(nodes, "packets_created") - made0
            # What a packet of 3 (claimed, pushed, its mailbox notes gone)
            # keeps in the primaries' memory until its keys expire.
            f["redis_bytes_per_packet"] = (redis.used_memory() - mem0) / made if made else None
            rec["flow"] = f
            per = f["cpu_us_per_packet"] or {}
            log(f"    flow at {f['rate']}/s: {f['packets_per_sec']:.0f} packets/s, {f['claims_paid_per_sec']:.0f} "
                f"claims paid/s, claim p50 {fmt(f['claim_service']['p50_us'])} p99 "
                f"{fmt(f['claim_service']['p99_us'])} µs, backlog {f['backlog_end']}, µs/packet nodes "
                f"{fmt(per.get('nodes'))} primaries {fmt(per.get('primaries'))} replicas "
                f"{fmt(per.get('replicas'))}; others {fmt(f['cpu']['others_pct'])} %")
        if "logins" in args.parts:
            mem0 = redis.used_memory()
            lg = part_logins(args, nodes, users_pool, meter, redis)
            lg["redis_bytes_per_login"] = (lg.pop("memory_online") - mem0) / lg["logins"]
            rec["logins"] = lg
            per = lg["cpu_us_per_login"]
            log(f"    logins: {lg['logins']} at {lg['logins_per_sec']:.0f}/s, µs/login nodes {fmt(per['nodes'], 1)} "
                f"primaries {fmt(per['primaries'], 1)} replicas {fmt(per['replicas'], 1)}; others "
                f"{fmt(lg['cpu']['others_pct'])} %")
        rec["status"] = {n.id: n.cluster() for n in nodes}
        rec["ok"] = True
    except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
        rec["ok"] = False
        rec["error"] = str(e)
        rec["node_logs"] = {n.id: bs.tail(n.log_path, 10) for n in nodes}
        log(f"    FAILED: {e}")
    finally:
        rec["node_exits"] = [n.stop() for n in nodes]
    return rec


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fs(s, digits=0):
    if not s:
        return "—"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}..{fmt(s['max'], digits)})"


def dig(rec, *path):
    for k in path:
        if rec is None:
            return None
        rec = rec.get(k) if isinstance(rec, dict) else None
    return rec


def summarise(runs, args_primaries, args_nodes):
    """Medians per (primaries, nodes), and per-round ratios."""
    configs = {}
    for r in runs:
        if r.get("kind") != "config" or not r.get("ok"):
            continue
        configs.setdefault((r["primaries"], r["nodes"]), []).append(r)
    keys = {
        "claims_per_sec": ("claims", "capacity", "claims_per_sec"),
        "cap_p50_us": ("claims", "capacity", "service", "p50_us"),
        "cap_p99_us": ("claims", "capacity", "service", "p99_us"),
        "lat_p50_us": ("claims", "latency", "service", "p50_us"),
        "lat_p99_us": ("claims", "latency", "service", "p99_us"),
        "lat_corr_p99_us": ("claims", "latency", "corrected", "p99_us"),
        "nodes_us_per_claim": ("claims", "capacity", "cpu_us_per_claim", "nodes"),
        "primaries_us_per_claim": ("claims", "capacity", "cpu_us_per_claim", "primaries"),
        "replicas_us_per_claim": ("claims", "capacity", "cpu_us_per_claim", "replicas"),
        "load_us_per_claim": ("claims", "capacity", "load_us_per_claim"),
        "cap_core0_pct": ("claims", "capacity", "cpu", "core0_pct"),
        "cap_core1_pct": ("claims", "capacity", "cpu", "core1_pct"),
        "cap_others_pct": ("claims", "capacity", "cpu", "others_pct"),
        "cap_steal_pct": ("claims", "capacity", "cpu", "steal_pct"),
        "push_p50_us": ("push", "push", "p50_us"),
        "push_p99_us": ("push", "push", "p99_us"),
        "push_http_p50_us": ("push", "http", "p50_us"),
        "flow_packets_per_sec": ("flow", "packets_per_sec"),
        "flow_claims_per_sec": ("flow", "claims_paid_per_sec"),
        "flow_backlog": ("flow", "backlog_end"),
        "flow_claim_p50_us": ("flow", "claim_service", "p50_us"),
        "flow_claim_p99_us": ("flow", "claim_service", "p99_us"),
        "flow_nodes_us_per_packet": ("flow", "cpu_us_per_packet", "nodes"),
        "flow_primaries_us_per_packet": ("flow", "cpu_us_per_packet", "primaries"),
        "flow_replicas_us_per_packet": ("flow", "cpu_us_per_packet", "replicas"),
        "flow_others_pct": ("flow", "cpu", "others_pct"),
        "login_nodes_us": ("logins", "cpu_us_per_login", "nodes"),
        "login_primaries_us": ("logins", "cpu_us_per_login", "primaries"),
        "login_replicas_us": ("logins", "cpu_us_per_login", "replicas"),
        "login_others_pct": ("logins", "cpu", "others_pct"),
        "logins_per_sec": ("logins", "logins_per_sec"),
        "login_redis_bytes": ("logins", "redis_bytes_per_login"),
        "flow_redis_bytes": ("flow", "redis_bytes_per_packet"),
    }
    out = {"configs": [], "ratios": {}, "shakes": None}
    for (p, n), recs in sorted(configs.items()):
        row = {"primaries": p, "nodes": n, "rounds": len(recs),
               "cut_short": sum(1 for r in recs if dig(r, "claims", "capacity", "cut_short")),
               "zero": sum((dig(r, "claims", "capacity", "zero") or 0) + (dig(r, "claims", "latency", "zero") or 0)
                           for r in recs),
               "push_missing": sum(dig(r, "push", "missing") or 0 for r in recs),
               "push_other_node": all(dig(r, "push", "other_node") for r in recs if r.get("push"))}
        for name, path in keys.items():
            row[name] = spread([dig(r, *path) for r in recs])
        out["configs"].append(row)

    def ratio(a_key, b_key, path):
        by_round = {}
        for key, recs in configs.items():
            for r in recs:
                by_round.setdefault(r["round"], {})[key] = dig(r, *path)
        vals = [v[a_key] / v[b_key] for v in by_round.values()
                if v.get(a_key) and v.get(b_key)]
        return spread(vals)

    cps = ("claims", "capacity", "claims_per_sec")
    for p in args_primaries:
        if 1 in args_nodes and 3 in args_nodes:
            out["ratios"][f"claims/s {p}p: 3 nodes / 1 node"] = ratio((p, 3), (p, 1), cps)
    for n in args_nodes:
        if 1 in args_primaries and 3 in args_primaries:
            out["ratios"][f"claims/s {n}n: 3 primaries / 1 primary"] = ratio((3, n), (1, n), cps)
    shakes = [r for r in runs if r.get("kind") == "shakes"]
    if shakes:
        out["shakes"] = {
            "plain_cpu_us": spread([dig(r, "plain", "cpu_us_per_shake") for r in shakes]),
            "cluster_cpu_us": spread([dig(r, "cluster", "cpu_us_per_shake") for r in shakes]),
            "ratio": spread([r.get("ratio") for r in shakes]),
            "plain_p99_us": spread([dig(r, "plain", "p99_us") for r in shakes]),
            "cluster_p99_us": spread([dig(r, "cluster", "p99_us") for r in shakes]),
            "plain_got_per_sec": spread([dig(r, "plain", "got_per_sec") for r in shakes]),
            "cluster_got_per_sec": spread([dig(r, "cluster", "got_per_sec") for r in shakes]),
            "plain_others_pct": spread([dig(r, "plain", "others_pct") for r in shakes]),
            "cluster_others_pct": spread([dig(r, "cluster", "others_pct") for r in shakes]),
            "rounds": sum(1 for r in shakes if r.get("ratio")),
        }
    out["failed"] = sum(1 for r in runs if not r.get("ok", True) or r.get("error"))
    return out


def markdown(meta, s):
    o = []
    o.append(f"Run {meta['date']} at commit {meta['commit'][:7]}{' (dirty)' if meta.get('dirty') else ''}, "
             f"`python3 tools/bench_cluster.py {' '.join(meta['argv'])}`, {meta['repeats']} round(s); "
             f"load average {meta['loadavg_before']} before, {meta.get('loadavg_after', '?')} after.")
    o.append("")
    o.append("| primaries | nodes | claims/s (capacity) | p50 µs | p99 µs | latency at "
             f"{meta['claim_rate']:,}/s: p50 µs | p99 µs | µs/claim: nodes | primaries | replicas | "
             "load gen | core 0 % | others % | steal % |")
    o.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in s["configs"]:
        o.append(f"| {r['primaries']} | {r['nodes']} | {fs(r['claims_per_sec'])} | {fs(r['cap_p50_us'])} | "
                 f"{fs(r['cap_p99_us'])} | {fs(r['lat_p50_us'])} | {fs(r['lat_p99_us'])} | "
                 f"{fs(r['nodes_us_per_claim'], 1)} | {fs(r['primaries_us_per_claim'], 1)} | "
                 f"{fs(r['replicas_us_per_claim'], 1)} | {fs(r['load_us_per_claim'], 1)} | {fs(r['cap_core0_pct'])} | "
                 f"{fs(r['cap_others_pct'])} | "
                 f"{fs(r['cap_steal_pct'], 1)} |")
    o.append("")
    for k, v in s["ratios"].items():
        o.append(f"- {k}: {fs(v, 2)}")
    o.append("")
    o.append("| primaries | nodes | push p50 µs | push p99 µs | /packet answer p50 µs | across nodes | missing |")
    o.append("|---:|---:|---:|---:|---:|---|---:|")
    for r in s["configs"]:
        if r["push_p50_us"]:
            o.append(f"| {r['primaries']} | {r['nodes']} | {fs(r['push_p50_us'])} | {fs(r['push_p99_us'])} | "
                     f"{fs(r['push_http_p50_us'])} | {'yes' if r['push_other_node'] else 'no (1 node)'} | "
                     f"{r['push_missing']} |")
    o.append("")
    o.append(f"| primaries | nodes | packets/s asked | made/s | claims paid/s | backlog at end | claim p50 µs | "
             "claim p99 µs | µs/packet: nodes | primaries | replicas | others % | Redis bytes per packet |")
    o.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in s["configs"]:
        if r["flow_packets_per_sec"]:
            o.append(f"| {r['primaries']} | {r['nodes']} | {meta['flow_rate']:,} | {fs(r['flow_packets_per_sec'])} | "
                     f"{fs(r['flow_claims_per_sec'])} | {fs(r['flow_backlog'])} | {fs(r['flow_claim_p50_us'])} | "
                     f"{fs(r['flow_claim_p99_us'])} | {fs(r['flow_nodes_us_per_packet'])} | "
                     f"{fs(r['flow_primaries_us_per_packet'])} | {fs(r['flow_replicas_us_per_packet'])} | "
                     f"{fs(r['flow_others_pct'])} | {fs(r['flow_redis_bytes'])} |")
    if any(r["login_nodes_us"] for r in s["configs"]):
        o.append("")
        o.append("| primaries | nodes | logins/s | µs/login: nodes | primaries | replicas | others % | "
                 "Redis bytes per online user |")
        o.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in s["configs"]:
            if r["login_nodes_us"]:
                o.append(f"| {r['primaries']} | {r['nodes']} | {fs(r['logins_per_sec'])} | "
                         f"{fs(r['login_nodes_us'], 1)} | {fs(r['login_primaries_us'], 1)} | "
                         f"{fs(r['login_replicas_us'], 1)} | {fs(r['login_others_pct'])} | "
                         f"{fs(r['login_redis_bytes'])} |")
    if s["shakes"]:
        sh = s["shakes"]
        o.append("")
        o.append(f"| server at {meta['shake_rate']:,} shakes/s | CPU µs/shake | p99 µs | envelopes/s | others % |")
        o.append("|---|---:|---:|---:|---:|")
        o.append(f"| without --cluster | {fs(sh['plain_cpu_us'], 2)} | {fs(sh['plain_p99_us'])} | "
                 f"{fs(sh['plain_got_per_sec'])} | {fs(sh['plain_others_pct'])} |")
        o.append(f"| with --cluster | {fs(sh['cluster_cpu_us'], 2)} | {fs(sh['cluster_p99_us'])} | "
                 f"{fs(sh['cluster_got_per_sec'])} | {fs(sh['cluster_others_pct'])} |")
        o.append(f"| ratio (per round) | **{fs(sh['ratio'], 3)}** | | | |")
    o.extend(extrapolation(s))
    if s["failed"]:
        o.append("")
        o.append(f"{s['failed']} run(s) failed; see `runs[].error` in the JSON.")
    return "\n".join(o)


# The seed's fleet (../shared/seeds/): 1.43 billion users, at most 540
# million online at once, 14 million shakes/s at the peak, 50,000 packets
# issued a second, each for a few users (the Go prototype's 3), 10^11
# requests in all, 600 access servers.
SEED_USERS = 1.43e9
SEED_ONLINE = 5.4e8
SEED_SHAKES = 14e6
SEED_PACKETS = 50_000
SEED_CLAIMANTS = 3
SEED_REQUESTS = 1e11
SEED_SERVERS = 600
# Busy share a capacity plan allows a core (a primary's one thread, a
# node's cores): headroom for peaks, failovers and a node's loss.
PLAN_BUSY = 0.5


def extrapolation(s):
    """The seed's fleet from this run's figures: the CPU each part costs,
    in cores at 100 % and at PLAN_BUSY. Connections per node are not
    measured here (20,000 open files); see the markdown."""
    configs = {(r["primaries"], r["nodes"]): r for r in s["configs"]}
    if not configs:
        return []
    key = max(configs, key=lambda k: (k[0], k[1]))
    r = configs[key]
    med = lambda x: x["median"] if x else None  # noqa: E731
    o = ["", f"Extrapolation from the {key[0]}-primary, {key[1]}-node row"
         + (" and the shakes" if s.get("shakes") else "") + " (medians):", "",
         "| load of the seed's fleet | per unit | CPU, cores at 100 % | "
         f"at {PLAN_BUSY:.0%} busy |", "|---|---:|---:|---:|"]

    def row(what, per_us, rate, unit):
        if per_us is None:
            return
        cores = rate * per_us / 1e6
        o.append(f"| {what} | {per_us:,.1f} µs {unit} | {cores:,.1f} | {cores / PLAN_BUSY:,.0f} |")

    if s.get("shakes"):
        row(f"{SEED_SHAKES / 1e6:.0f} M shakes/s, nodes (`--cluster`)", med(s["shakes"]["cluster_cpu_us"]),
            SEED_SHAKES, "a shake")
    row(f"{SEED_PACKETS:,} packets/s × {SEED_CLAIMANTS} claims, Redis primaries",
        med(r["flow_primaries_us_per_packet"]), SEED_PACKETS, "a packet")
    row(f"{SEED_PACKETS:,} packets/s × {SEED_CLAIMANTS} claims, Redis replicas",
        med(r["flow_replicas_us_per_packet"]), SEED_PACKETS, "a packet")
    row(f"{SEED_PACKETS:,} packets/s × {SEED_CLAIMANTS} claims, nodes", med(r["flow_nodes_us_per_packet"]),
        SEED_PACKETS, "a packet")
    row(f"{SEED_ONLINE / 3600 / 1e3:,.0f}k logins/s ({SEED_ONLINE / 1e6:,.0f} M in an hour), Redis primaries",
        med(r["login_primaries_us"]), SEED_ONLINE / 3600, "a login")
    row(f"{SEED_ONLINE / 3600 / 1e3:,.0f}k logins/s, nodes", med(r["login_nodes_us"]), SEED_ONLINE / 3600, "a login")
    row(f"{SEED_PACKETS * SEED_CLAIMANTS:,} claims/s batched as at capacity, Redis primaries",
        med(r["primaries_us_per_claim"]), SEED_PACKETS * SEED_CLAIMANTS, "a claim")
    login_b, packet_b = med(r.get("login_redis_bytes")), med(r.get("flow_redis_bytes"))
    if login_b or packet_b:
        o.append("")
        o.append("| Redis memory (primaries; each replica holds as much again) | per unit | total |")
        o.append("|---|---:|---:|")
        if login_b:
            o.append(f"| {SEED_ONLINE / 1e6:,.0f} M users online (presence) | {login_b:,.0f} B a user | "
                     f"{SEED_ONLINE * login_b / 1e9:,.0f} GB |")
        if packet_b:
            hour = SEED_PACKETS * 3600
            o.append(f"| an hour of {SEED_PACKETS:,} packets/s ({hour / 1e6:,.0f} M packets, kept until their "
                     f"expiry and a day) | {packet_b:,.0f} B a packet | {hour * packet_b / 1e9:,.0f} GB |")
    o.append("")
    o.append(f"10^11 requests at {SEED_SHAKES / 1e6:.0f} M/s: {SEED_REQUESTS / SEED_SHAKES / 60:,.0f} min; "
             f"at {SEED_SERVERS} nodes × 60,000/s: {SEED_REQUESTS / (SEED_SERVERS * 60_000) / 60:,.0f} min.")
    return o


def interrupt(signum, frame_):
    raise KeyboardInterrupt


def main():
    args = parse_args()
    if args.summarise:
        data = json.loads(args.summarise.read_text())
        s = summarise(data["runs"], data["meta"]["primaries"], data["meta"]["nodes"])
        print(markdown(data["meta"], s))
        return 0
    signal.signal(signal.SIGTERM, interrupt)
    global BINARY
    if args.binary:
        BINARY = args.binary.resolve()
        if not BINARY.exists():
            raise SystemExit(f"--binary {BINARY} does not exist")
    bs.preflight(args.no_build or bool(args.binary))
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise SystemExit("redis-server and redis-cli are needed (tools/cluster.sh up installs them as root)")
    for p in range(REDIS_PORT, REDIS_PORT + 2 * max(args.primaries)):
        if not bs.port_free(p) or not bs.port_free(p + 10000):
            raise SystemExit(f"port {p} or {p + 10000} is taken: another Redis of ours still running?")
    # The load generator (this process) on its own core.
    os.sched_setaffinity(0, {LOAD_CORE})
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": bs.git("rev-parse", "HEAD") or "unknown", "binary": str(BINARY),
        "dirty": bool(bs.git("status", "--porcelain", "--untracked-files=no")),
        "kernel": os.uname().release, "cpus": os.cpu_count(), "loadavg_before": bs.loadavg(),
        "argv": sys.argv[1:], "repeats": args.repeats, "parts": args.parts,
        "primaries": args.primaries, "nodes": args.nodes, "claimants": args.claimants,
        "claim_users": args.claim_users, "claim_rate": args.claim_rate, "claim_window": args.claim_window,
        "flow_rate": args.flow_rate, "flow_users": args.flow_users, "shake_rate": args.shake_rate,
        "duration": args.duration, "warmup": args.warmup, "redis": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    out_path = args.out or REPO / "target" / "bench" / time.strftime("cluster-%Y%m%d-%H%M%S.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hongbao-bench-cluster-"))
    log(f"logs in {workdir}, results to {out_path}")
    runs = []
    ports = Ports()
    users_pool = Users(1_000_000)
    started = time.monotonic()
    interrupted = False

    def save():
        out_path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))

    config_parts = [p for p in args.parts if p != "shakes"]
    try:
        for round_no in range(1, args.repeats + 1):
            prims = args.primaries if round_no % 2 else args.primaries[::-1]
            for primaries in prims:
                redis = Redis(workdir, primaries)
                log(f"[round {round_no}/{args.repeats}, {(time.monotonic() - started) / 60:.1f} min] "
                    f"Redis Cluster: {primaries} primaries x 1 replica")
                redis.up()
                node_ids = iter(range(1, 10_000))
                try:
                    if config_parts:
                        counts = args.nodes if round_no % 2 else args.nodes[::-1]
                        for count in counts:
                            log(f"  {count} node(s) on {primaries} primaries")
                            rec = run_config(args, workdir, redis, count, node_ids, ports, users_pool, round_no)
                            rec["kind"] = "config"
                            runs.append(rec)
                            save()
                    if "shakes" in args.parts and primaries == max(args.primaries):
                        log(f"  shakes at {args.shake_rate}/s, with and without --cluster")
                        rec = part_shakes(args, workdir, redis, node_ids, ports, round_no)
                        rec["kind"] = "shakes"
                        rec["round"] = round_no
                        if "ratio" in rec:
                            log(f"    cluster / plain CPU per shake: {rec['ratio']:.3f}")
                        runs.append(rec)
                        save()
                finally:
                    redis.down()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: summarising what was measured")
    meta["loadavg_after"] = bs.loadavg()
    meta["wall_s"] = round(time.monotonic() - started)
    summary = summarise(runs, args.primaries, args.nodes)
    out_path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1, default=str))
    log(f"wrote {out_path}; {meta['wall_s'] / 60:.1f} min")
    print(markdown(meta, summary))
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"kept {workdir}")
    if interrupted:
        return 130
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
