#!/usr/bin/env python3
"""Hostile clients beside honest ones: what each attack costs the server and
what honest users see meanwhile (issue 14, points 1-3).

Owns: starting `hongbao server` on 127.0.0.1 per run, honest users (one
connection each, one shake every --honest-every seconds, each answer timed),
and one attack beside them:

  claims    10 logged-in clients write 64 KiB batches of claims (cmd 5) for
            packet ids of both parities (half owned by the other core) and
            read every answer; --threads 2, --conn-qps-max 0 (read at full
            speed, so the queues between cores are what is measured).
  claims-shared  the same with the default --conn-qps-max (each attacker
            read at its share).
  stalled   10 clients log in, write 2 MiB of shakes and never read; they go
            on writing a shake every 100 ms so the moment the server closes
            them is seen (the attack lasts until all are closed, 15 s at
            most); --conn-qps-max 0 (read at full speed).
  pipeline  200 clients log in and pipeline 2,048 shakes each without
            reading, beside honest users; --threads 1 --max-qps 10000 and the
            default --conn-qps-max.
  user-conns  the same 200 pipelining connections all logged in as ONE
            user, at the defaults (--conn-qps-max 10, --user-conns-max 4:
            each login past 4 closes that user's oldest connection), on the
            same --threads 1 --max-qps 10000.

Each attack runs twice per round: with the attack and without it (the honest
users alone), on the same settings. The honest users' answers are counted in
a window that opens once the attack is established (every attacker connected,
logged in and writing) and closes when the attack ends (--seconds later; for
`stalled`, when every stalled reader is closed or 15 s have passed); without
the attack the window is the same --seconds. So the comparison is the
attack's steady state against none, not the attackers' connects and logins.
It prints, per attack, the medians over rounds of: the server's RSS and the
kernel's TCP memory (/proc/net/sockstat `mem`, pages of 4 KiB, every socket
on the host: loopback counts both ends) before, at the peak and 2 s after
the attack; how long a stalled reader lives; the honest users' overload
share, errors and p99 in the window with and without the attack. Must not: leave a process behind (each is stopped by its pid),
talk to anything but loopback. Python 3 standard library only.

Usage:
  tools/attack_bench.py                  # 3 rounds of every attack but claims-shared
  tools/attack_bench.py --rounds 1 --attacks stalled
  tools/attack_bench.py --binary target/debug/hongbao --json out.json
"""

import argparse
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def frame(cmd, fields):
    body = b"".join(struct.pack(">I", f) for f in fields)
    return struct.pack(">HHQ", 12 + len(body), cmd, int(time.time())) + body


def login(user):
    return frame(0, [user])


def shake(user=0):
    return frame(2, [user])


def claim(packet):
    return frame(5, [0, packet])


def read_frame(sock):
    head = recv_exact(sock, 2)
    (length,) = struct.unpack(">H", head)
    rest = recv_exact(sock, length - 2)
    cmd = struct.unpack(">H", rest[:2])[0]
    fields = [struct.unpack(">I", rest[i:i + 4])[0] for i in range(10, len(rest), 4)]
    return cmd, fields


def recv_exact(sock, n):
    b = bytearray()
    while len(b) < n:
        chunk = sock.recv(n - len(b))
        if not chunk:
            raise ConnectionError("end of file")
        b += chunk
    return bytes(b)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tcp_mem_kib():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * 4
    return 0


def status(http):
    import urllib.request
    with urllib.request.urlopen(f"http://{http}/status", timeout=5) as r:
        return json.load(r)


class Server:
    """A `hongbao server` child, stopped by its pid."""

    def __init__(self, binary, args):
        self.proc = subprocess.Popen(
            [binary, "server", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--no-pin", "--quiet", "--envelopes-per-sec", "0"] + args,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        rest = line.split("listening on ", 1)[1]
        addr = rest.split(" ", 1)[0]
        http = rest.split("http ", 1)[1].split(",")[0].split(")")[0]
        host, port = addr.rsplit(":", 1)
        self.addr = (host, int(port))
        self.http = http
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()


class Honest:
    """Honest users: one connection each, a shake every `every` seconds."""

    def __init__(self, addr, users, every):
        self.latencies, self.results, self.errors = [], [], 0
        self.stop = threading.Event()
        # Answers count only while the window is open (see the module doc).
        self.window = threading.Event()
        self.window_s = [None, None]
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.user, args=(addr, 1 + u, every, u), daemon=True)
                        for u in range(users)]
        for t in self.threads:
            t.start()

    def user(self, addr, user, every, offset):
        try:
            s = socket.create_connection(addr, timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(login(user))
            read_frame(s)
            # Spread the users over the second.
            time.sleep((offset * 0.037) % every)
            while not self.stop.is_set():
                t0 = time.monotonic()
                counted = self.window.is_set()
                s.sendall(shake(user))
                cmd, f = read_frame(s)
                dt = time.monotonic() - t0
                if counted:
                    with self.lock:
                        self.latencies.append(dt)
                        self.results.append(f[1] if cmd == 3 else -1)
                time.sleep(max(0.0, every - dt))
            s.close()
        except Exception:  # noqa: BLE001 - any failure is an honest user's error
            with self.lock:
                self.errors += 1

    def open_window(self):
        self.window_s[0] = time.monotonic()
        self.window.set()

    def close_window(self):
        if self.window.is_set():
            self.window.clear()
            self.window_s[1] = time.monotonic()

    def finish(self):
        self.close_window()
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        lat = sorted(self.latencies)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else None
        n = len(self.results)
        over = sum(1 for r in self.results if r == 17)
        w = self.window_s
        return {"shakes": n, "overload_share": over / n if n else None,
                "errors": self.errors + sum(1 for r in self.results if r not in (15, 17)),
                "p99_ms": p99, "window_s": w[1] - w[0] if None not in w else None}


class Sampler:
    """RSS and TCP memory every 50 ms."""

    def __init__(self, pid):
        self.pid, self.peak_rss, self.peak_tcp = pid, 0, 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, rss_kib(self.pid))
            except OSError:
                return
            self.peak_tcp = max(self.peak_tcp, tcp_mem_kib())
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.t.join()


def attack_claims(server, seconds, honest):
    stop = threading.Event()
    socks = []
    writing = threading.Barrier(11)

    def client(user):
        s = socket.create_connection(server.addr, timeout=30)
        socks.append(s)
        s.sendall(login(user))
        read_frame(s)
        batch = b"".join(claim(0x40000000 + user * 7919 + i) for i in range(64 * 1024 // 20))
        writing.wait(timeout=30)

        def drain():
            try:
                while True:
                    if not s.recv(1 << 16):
                        return
            except OSError:
                return
        threading.Thread(target=drain, daemon=True).start()
        try:
            while not stop.is_set():
                s.sendall(batch)
        except OSError:
            pass

    threads = [threading.Thread(target=client, args=(100 + u,), daemon=True) for u in range(10)]
    for t in threads:
        t.start()
    # Every attacker logged in and about to write its first batch.
    writing.wait(timeout=30)
    honest.open_window()
    time.sleep(seconds)
    honest.close_window()
    stop.set()
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    return {}


def attack_stalled(server, seconds, honest):
    """Runs until every stalled reader is closed, or 15 s at most."""
    lifetimes = []
    lock = threading.Lock()
    limit = max(seconds, 15.0)
    writing = threading.Barrier(11)

    def client(user):
        s = socket.create_connection(server.addr, timeout=30)
        start = time.monotonic()
        s.sendall(login(user))
        writing.wait(timeout=30)
        pipeline = shake() * (2 * 1024 * 1024 // 16)
        life = None
        s.settimeout(1.0)
        view = memoryview(pipeline)
        try:
            # The 2 MiB, then a shake every 100 ms: a write fails (reset,
            # broken pipe) once the server has closed the connection.
            while time.monotonic() - start < limit:
                if view:
                    try:
                        view = view[s.send(view):]
                    except socket.timeout:
                        pass
                else:
                    s.send(shake())
                    time.sleep(0.1)
        except socket.timeout:
            pass
        except OSError:
            life = time.monotonic() - start
        with lock:
            lifetimes.append(life)
        s.close()

    threads = [threading.Thread(target=client, args=(100 + u,), daemon=True) for u in range(10)]
    for t in threads:
        t.start()
    # Every attacker logged in and about to write its pipeline.
    writing.wait(timeout=30)
    honest.open_window()
    for t in threads:
        t.join(timeout=limit + 15)
    honest.close_window()
    closed = [x for x in lifetimes if x is not None]
    return {"stalled_closed": len(closed), "stalled_total": len(lifetimes),
            "stalled_life_max_s": max(closed) if closed else None,
            "stalled_life_median_s": statistics.median(closed) if closed else None}


def attack_pipeline(server, seconds, honest, one_user=False):
    """200 connections pipelining shakes, as 200 users or (`one_user`) one."""
    socks = []
    pipeline = shake() * 2048
    for u in range(200):
        s = socket.create_connection(server.addr, timeout=30)
        s.sendall(login(1000 if one_user else 1000 + u))
        s.setblocking(False)
        try:
            s.send(pipeline)
        except (BlockingIOError, ConnectionError):
            pass  # the kernel's buffer is full; or, one user's, closed already
        socks.append(s)
    # Every attacker connected, logged in and pipelining: let the server
    # take the logins (and close one user's extra connections) before the
    # honest window opens.
    time.sleep(0.5)
    honest.open_window()
    time.sleep(seconds)
    honest.close_window()
    open_at_end = 0
    for s in socks:
        # Read what the server sent until it would block (still open) or
        # says end of file or reset (closed).
        try:
            while s.recv(1 << 16) != b"":
                pass
        except BlockingIOError:
            open_at_end += 1
        except OSError:
            pass
        s.close()
    return {"attacker_conns_open_at_end": open_at_end}


def attack_user_conns(server, seconds, honest):
    return attack_pipeline(server, seconds, honest, one_user=True)


ATTACKS = {
    "claims": (attack_claims, ["--threads", "2", "--conn-qps-max", "0"]),
    "claims-shared": (attack_claims, ["--threads", "2"]),
    "stalled": (attack_stalled, ["--threads", "1", "--conn-qps-max", "0"]),
    "pipeline": (attack_pipeline, ["--threads", "1", "--max-qps", "10000"]),
    "user-conns": (attack_user_conns, ["--threads", "1", "--max-qps", "10000"]),
}


def one_run(binary, name, with_attack, args):
    fn, server_args = ATTACKS[name]
    server = Server(binary, server_args)
    try:
        honest = Honest(server.addr, args.honest, args.honest_every)
        time.sleep(1.5)
        before = {"rss_kib": rss_kib(server.pid), "tcp_kib": tcp_mem_kib()}
        sampler = Sampler(server.pid)
        if with_attack:
            extra = fn(server, args.seconds, honest)
        else:
            honest.open_window()
            time.sleep(args.seconds)
            honest.close_window()
            extra = {}
        time.sleep(2.0)
        sampler.finish()
        after = {"rss_kib": rss_kib(server.pid), "tcp_kib": tcp_mem_kib()}
        h = honest.finish()
        st = status(server.http)["total"]["server"]
        counters = {k: st.get(k) for k in ("evictions", "stalled", "throttled", "reads_paused",
                                           "overload", "claims", "shakes", "user_conns_kicked")}
        return {"attack": name, "with_attack": with_attack,
                "rss_kib": [before["rss_kib"], sampler.peak_rss, after["rss_kib"]],
                "tcp_kib": [before["tcp_kib"], sampler.peak_tcp, after["tcp_kib"]],
                "honest": h, "counters": counters, **extra}
    finally:
        server.stop()


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--attacks", default="claims,stalled,pipeline,user-conns")
    p.add_argument("--seconds", type=float, default=5.0, help="attack length (default 5)")
    p.add_argument("--honest", type=int, default=20, help="honest users (default 20)")
    p.add_argument("--honest-every", type=float, default=1.0, help="seconds between an honest user's shakes")
    p.add_argument("--binary", default=None, help="default: target/release/hongbao, else target/debug")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    binary = args.binary or next(
        (str(b) for b in (ROOT / "target/release/hongbao", ROOT / "target/debug/hongbao") if b.exists()), None)
    if binary is None:
        raise SystemExit("no hongbao binary: cargo build --release")
    print(f"binary {binary}; {args.rounds} round(s); {args.honest} honest users, a shake every "
          f"{args.honest_every} s; attacks of {args.seconds} s")
    runs = []
    for r in range(args.rounds):
        for name in args.attacks.split(","):
            for with_attack in (True, False):
                run = one_run(binary, name, with_attack, args)
                run["round"] = r
                runs.append(run)
                print(json.dumps(run), flush=True)
    print()
    print("| attack | | RSS MiB before / peak / after | TCP mem MiB before / peak / after "
          "| honest overload | honest errors | honest p99 ms | stalled readers closed, life s (median / max); "
          "attacker connections kicked, open at the end |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.attacks.split(","):
        for with_attack in (True, False):
            rs = [x for x in runs if x["attack"] == name and x["with_attack"] == with_attack]
            rss = [med([x["rss_kib"][i] for x in rs]) / 1024 for i in range(3)]
            tcp = [med([x["tcp_kib"][i] for x in rs]) / 1024 for i in range(3)]
            over = med([x["honest"]["overload_share"] for x in rs])
            errs = med([x["honest"]["errors"] for x in rs])
            p99 = med([x["honest"]["p99_ms"] for x in rs])
            life = ""
            if name == "stalled" and with_attack:
                life = (f"{med([x['stalled_closed'] for x in rs])}/{med([x['stalled_total'] for x in rs])}, "
                        f"{med([x['stalled_life_median_s'] for x in rs]) or 0:.2f} / "
                        f"{med([x['stalled_life_max_s'] for x in rs]) or 0:.2f}")
            if name in ("pipeline", "user-conns") and with_attack:
                life = (f"{med([x['counters']['user_conns_kicked'] for x in rs])} kicked, "
                        f"{med([x['attacker_conns_open_at_end'] for x in rs])} open")
            print(f"| {name} | {'attack' if with_attack else 'alone'} | "
                  f"{rss[0]:.1f} / {rss[1]:.1f} / {rss[2]:.1f} | {tcp[0]:.1f} / {tcp[1]:.1f} / {tcp[2]:.1f} | "
                  f"{100 * (over or 0):.2f}% | {errs} | {p99:.2f} | {life} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
