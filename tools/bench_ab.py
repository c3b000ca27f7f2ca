#!/usr/bin/env python3
"""Two builds of one criterion bench, side by side: alternating rounds.

A comparison on a shared machine is a ratio measured side by side in one
run (docs/BENCHMARKS.md, "Method"), so this builds the bench binary of two
git revisions (each in a detached worktree of its own, with its own target
directory, so neither build disturbs the checkout) and then runs them in
turn, BEFORE, AFTER, BEFORE, AFTER ..., each pinned to the same core. It
prints, per bench, every round's time per iteration (criterion's middle
estimate), the ratio of the medians (after / before) and each round's
ratio, and writes the same as JSON.

    python3 tools/bench_ab.py --before 26f73a0 --after HEAD [--after REV ...] \
        --bench hot_path --rounds 5 --filter session/ --json target/bench-ab.json

A revision's binary is cached under target/bench-ab/<sha>/, so a second run
with the same revisions only measures. Stops by itself: every run of a
binary has a deadline (--deadline-s), and a round that times out fails the
script naming it.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# "group/name   time:   [low unit mid unit high unit]", the name possibly
# on the line before when it is long.
TIME = re.compile(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]")
UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def git(*args, cwd=ROOT):
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def build(rev, bench, cache):
    """The bench binary of `rev`, built once in its own worktree."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    home = cache / sha
    marker = home / "binary"
    if marker.exists() and Path(marker.read_text().strip()).exists():
        return sha, Path(marker.read_text().strip())
    tree = home / "tree"
    if not tree.exists():
        home.mkdir(parents=True, exist_ok=True)
        # A tree deleted by hand (say, by `cargo clean`) is still registered
        # until pruned, and `worktree add` refuses its path.
        git("worktree", "prune")
        git("worktree", "add", "--detach", str(tree), sha)
    print(f"building {bench} at {sha[:10]} in {tree}", file=sys.stderr)
    out = subprocess.run(
        ["cargo", "bench", "--bench", bench, "--no-run", "--locked",
         "--message-format=json"],
        cwd=tree, check=True, capture_output=True, text=True,
        env={**os.environ, "CARGO_TARGET_DIR": str(home / "target")},
    ).stdout
    binary = None
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == bench \
                and msg.get("executable"):
            binary = msg["executable"]
    if binary is None:
        sys.exit(f"cargo built no executable for bench {bench} at {sha[:10]}")
    marker.write_text(binary)
    return sha, Path(binary)


def run(binary, args, core, deadline):
    """One round: {bench: ns per iteration}."""
    cmd = ["taskset", "-c", str(core), str(binary), "--bench", "--noplot", *args]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             timeout=deadline, cwd=binary.parent).stdout
    except subprocess.TimeoutExpired:
        sys.exit(f"{binary} ran past its {deadline} s deadline: {' '.join(cmd)}")
    times, name = {}, None
    for line in out.splitlines():
        head = line.split("time:")[0].strip()
        if head:
            name = head
        m = TIME.search(line)
        if m and name:
            times[name] = float(m.group(1)) * UNITS[m.group(2)]
            name = None
    if not times:
        sys.exit(f"no criterion estimate in the output of {' '.join(cmd)}:\n{out}")
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision measured first")
    p.add_argument("--after", action="append",
                   help="git revision compared with it (repeat for several; default HEAD)")
    p.add_argument("--bench", default="hot_path", help="the [[bench]] target")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--filter", default="", help="criterion's name filter")
    p.add_argument("--core", type=int, default=1, help="the CPU both run on")
    p.add_argument("--warm-up-time", default="2")
    p.add_argument("--measurement-time", default="4")
    p.add_argument("--deadline-s", type=int, default=600)
    p.add_argument("--json", type=Path, help="write the rounds and ratios here")
    a = p.parse_args()

    afters = a.after or ["HEAD"]
    cache = ROOT / "target" / "bench-ab"
    sides = ["before"] + [f"after{i + 1}" if len(afters) > 1 else "after" for i in range(len(afters))]
    builds = {side: build(rev, a.bench, cache) for side, rev in zip(sides, [a.before, *afters])}
    args = ["--warm-up-time", a.warm_up_time, "--measurement-time", a.measurement_time]
    if a.filter:
        args.append(a.filter)
    if a.rounds == 0:
        print("built; --rounds 0 measures nothing")
        return
    rounds = {side: [] for side in sides}
    for r in range(a.rounds):
        for side in sides:
            print(f"round {r + 1}/{a.rounds}: {side}", file=sys.stderr)
            rounds[side].append(run(builds[side][1], args, a.core, a.deadline_s))

    names = [n for n in rounds["before"][0] if all(n in t for s in rounds.values() for t in s)]
    table = {}
    print(", ".join(f"{side} {builds[side][0][:10]}" for side in sides)
          + f"; {a.rounds} alternating rounds on core {a.core}")
    for side in sides[1:]:
        print(f"\n{side} / before")
        print(f"{'bench':45} {'before ns (median)':>18} {side + ' ns (median)':>18} {'ratio':>8}  per round")
        for n in names:
            b = [t[n] for t in rounds["before"]]
            f = [t[n] for t in rounds[side]]
            ratio = statistics.median(f) / statistics.median(b)
            per_round = [x / y for x, y in zip(f, b)]
            table.setdefault(n, {"before_ns": b})[side] = {
                "rev": builds[side][0], "ns": f, "ratio_of_medians": ratio,
                "ratio_per_round": per_round}
            print(f"{n:45} {statistics.median(b):18.2f} {statistics.median(f):18.2f} {ratio:8.3f}  "
                  + ", ".join(f"{x:.2f}" for x in per_round))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "before": builds["before"][0], "rounds": a.rounds, "core": a.core,
            "benches": table}, indent=1))


if __name__ == "__main__":
    main()
