#!/usr/bin/env bash
# Checks that HdrHistogram's own Java tools read what we write, line for
# line: a fixed sample and the interval logs of a real server and flooder
# run. Part of the gate: .ci/run installs Debian's libhdrhistogram-java (and
# a JRE) first. Says "SKIPPED" (exit 0) only when java or the jar cannot be
# had; any difference is "FAIL" (exit 1).
#
# What it does:
#   1. finds the jar: $HDRHISTOGRAM_JAR, else Debian's
#      /usr/share/java/hdrhistogram.jar (package libhdrhistogram-java), else
#      the cache dir, else ~/.m2, else downloads
#      org.hdrhistogram:HdrHistogram:$HDRHISTOGRAM_VERSION (curl from
#      repo1.maven.org, then `mvn dependency:get`) into the cache dir;
#   2. writes sample.hlog (ten 1 s intervals of nanosecond latencies) and
#      sample.hgrm (our distribution of their sum, in ms) with
#      `cargo test --test hlog -- sample_for_java`;
#   3. builds target/debug/hongbao and, on loopback ports that were free,
#      starts `hongbao server --threads 1 --hlog server.hlog`, runs
#      `hongbao flood --users 200 --qps 2000 --duration 3 --hlog flood.hlog`
#      against it, and stops the server by its pid (SIGINT; it writes
#      server.hgrm, its whole run's distribution, as it exits). Every step
#      has a time limit;
#   4. runs Java's HistogramLogProcessor (-outputValueUnitRatio 1e6) on each
#      log and requires its .hgrm (after its two leading "#[...]" notes) to
#      equal, line for line:
#        sample.hlog  our sample.hgrm;
#        server.hlog  the server's own server.hgrm, and our reading of the
#                     log (below);
#        flood.hlog   our reading of the log: `cargo test --test hlog --
#                     hgrm_of_a_log` with HONGBAO_HLOG_READ=flood.hlog adds
#                     its intervals up with the hdrhistogram crate and writes
#                     flood.read.hgrm. (The flooder's own flood.hgrm is the
#                     window's latency by intended send time, a different
#                     set from the per-second intervals, so it cannot match.)
#      and its interval output to have one line per interval of the log.
#
# Usage: tools/check_hlog.sh
# Env:   HDRHISTOGRAM_VERSION (default 2.2.2, for a download), HDRHISTOGRAM_JAR
#        (a jar to use), HONGBAO_HLOG_CACHE (default ~/.cache/hongbao/hdrhistogram),
#        KEEP=1 to keep the work dir.
set -euo pipefail

cd "$(dirname "$0")/.."

VERSION="${HDRHISTOGRAM_VERSION:-2.2.2}"
CACHE="${HONGBAO_HLOG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hongbao/hdrhistogram}"
JAR_NAME="HdrHistogram-$VERSION.jar"
CENTRAL="https://repo1.maven.org/maven2/org/hdrhistogram/HdrHistogram/$VERSION/$JAR_NAME"
M2_JAR="$HOME/.m2/repository/org/hdrhistogram/HdrHistogram/$VERSION/$JAR_NAME"
# Where libhdrhistogram-java puts it (`dpkg -L libhdrhistogram-java`).
DEBIAN_JARS="/usr/share/java/hdrhistogram.jar /usr/share/maven-repo/org/hdrhistogram/HdrHistogram/debian/HdrHistogram-debian.jar"

say() { echo "check_hlog: $*"; }
skip() {
    say "SKIPPED: $*"
    exit 0
}
fail() {
    say "FAIL: $*"
    exit 1
}

command -v java >/dev/null || skip "no java on PATH"

# A jar is usable if it is a zip that holds the log processor.
usable() {
    [ -s "$1" ] || return 1
    local listing
    if command -v unzip >/dev/null; then
        listing="$(unzip -l "$1" 2>/dev/null)" || return 1
    else
        listing="$(jar tf "$1" 2>/dev/null)" || return 1
    fi
    grep -q 'org/HdrHistogram/HistogramLogProcessor.class' <<<"$listing"
}

find_jar() {
    if [ -n "${HDRHISTOGRAM_JAR:-}" ]; then
        usable "$HDRHISTOGRAM_JAR" || fail "HDRHISTOGRAM_JAR=$HDRHISTOGRAM_JAR is not an HdrHistogram jar"
        JAR="$HDRHISTOGRAM_JAR"
        return
    fi
    # Debian's libhdrhistogram-java (2.1.11 in bookworm), which CI installs.
    for JAR in $DEBIAN_JARS; do
        usable "$JAR" && return
    done
    JAR="$CACHE/$JAR_NAME"
    usable "$JAR" && return
    if usable "$M2_JAR"; then
        JAR="$M2_JAR"
        return
    fi
    mkdir -p "$CACHE"
    local tmp="$JAR.part.$$"
    local why=""
    if command -v curl >/dev/null; then
        say "fetching $CENTRAL"
        if curl -fsSL --connect-timeout 10 --max-time 120 -o "$tmp" "$CENTRAL" 2>"$tmp.err" && usable "$tmp"; then
            mv "$tmp" "$JAR"
            rm -f "$tmp.err"
            return
        fi
        why="curl: $(tr '\n' ' ' <"$tmp.err" 2>/dev/null)"
        rm -f "$tmp" "$tmp.err"
    fi
    if command -v mvn >/dev/null; then
        say "trying mvn dependency:get org.hdrhistogram:HdrHistogram:$VERSION"
        if timeout 180 mvn -q -B dependency:get -Dtransitive=false \
            -Dartifact="org.hdrhistogram:HdrHistogram:$VERSION" >"$CACHE/mvn.log" 2>&1 &&
            usable "$M2_JAR"; then
            cp "$M2_JAR" "$JAR"
            return
        fi
        why="$why; mvn: $(sed 's/\x1b\[[0-9;]*m//g' "$CACHE/mvn.log" | grep -m1 -E 'ERROR|Could not|Unknown host' || tail -n1 "$CACHE/mvn.log")"
    fi
    skip "could not get $JAR_NAME: no libhdrhistogram-java here (apt-get install libhdrhistogram-java) and Maven Central looks unreachable ($why). Set HDRHISTOGRAM_JAR=/path/to/$JAR_NAME to use a copy."
}

find_jar
say "using $JAR"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check_hlog.XXXXXX")"
SERVER_PID=""
cleanup() {
    # Only the server this script started, by its pid.
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
[ "${KEEP:-0}" = 1 ] && say "keeping $WORK"

# Java's distribution of LOG into $WORK/NAME.java.dist, and its interval
# count into $JAVA_INTERVALS; fails when it cannot read the log or reads a
# different number of intervals than the log holds.
java_reads() {
    local name="$1" log="$2"
    java -cp "$JAR" org.HdrHistogram.HistogramLogProcessor \
        -i "$log" -o "$WORK/$name.java" -outputValueUnitRatio 1e6 >"$WORK/$name.java.log" 2>&1 ||
        {
            cat "$WORK/$name.java.log"
            fail "HistogramLogProcessor failed on $name.hlog"
        }
    # The processor's .hgrm opens with its own notes (time range, StartTime);
    # the distribution after them is Java's outputPercentileDistribution.
    grep -v -E '^#\[(Overall percentile distribution|StartTime:)' "$WORK/$name.java.hgrm" >"$WORK/$name.java.dist"
    local ours
    ours="$(grep -c -E '^[0-9]' "$log" || true)"
    JAVA_INTERVALS="$(grep -c -E '^ *[0-9.]+: I:' "$WORK/$name.java" || true)"
    [ "$ours" = "$JAVA_INTERVALS" ] ||
        fail "Java read $JAVA_INTERVALS intervals of $name.hlog, which holds $ours"
    [ "$ours" -gt 0 ] || fail "$name.hlog holds no interval"
}

# Fails unless Java's distribution of NAME equals the .hgrm WANT (what
# WANT is is said in WHAT).
same_as() {
    local name="$1" want="$2" what="$3"
    [ -s "$want" ] || fail "no $want ($what)"
    if ! diff -u "$want" "$WORK/$name.java.dist" >"$WORK/$name.diff"; then
        head -n 60 "$WORK/$name.diff"
        fail "Java's distribution of $name.hlog differs from $what (diff above: ours ---, Java +++)"
    fi
}

# The total count in a .hgrm footer.
total_count() {
    sed -n 's/.*Total count *= *\([0-9]*\)\]/\1/p' "$1"
}

# A loopback TCP port nothing listens on now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. the fixed sample ----------------------------------------------------
say "writing the sample with cargo test --test hlog -- sample_for_java"
HONGBAO_HLOG_SAMPLE="$WORK" cargo test --quiet --locked --test hlog -- --exact sample_for_java >"$WORK/cargo.log" 2>&1 ||
    {
        cat "$WORK/cargo.log"
        fail "cargo test could not write the sample"
    }
if [ ! -s "$WORK/sample.hlog" ] || [ ! -s "$WORK/sample.hgrm" ]; then
    fail "no sample written in $WORK"
fi
say "running org.HdrHistogram.HistogramLogProcessor on sample.hlog"
java_reads sample "$WORK/sample.hlog"
same_as sample "$WORK/sample.hgrm" "our sample.hgrm"
say "sample: PASS: Java read all $JAVA_INTERVALS intervals; its .hgrm equals ours ($(wc -l <"$WORK/sample.hgrm") lines)"
sed -n '1,5p' "$WORK/sample.java.dist"
tail -n 3 "$WORK/sample.java.dist"

# --- 2. a real server and flooder on loopback --------------------------------
say "building target/debug/hongbao"
cargo build --quiet --locked --bin hongbao >"$WORK/build.log" 2>&1 ||
    {
        cat "$WORK/build.log"
        fail "cargo build failed"
    }
BIN="$PWD/target/debug/hongbao"
command -v python3 >/dev/null || fail "python3 is needed to pick free loopback ports"
PORT="$(free_port)"
HTTP_PORT="$(free_port)"
say "starting hongbao server on 127.0.0.1:$PORT (http 127.0.0.1:$HTTP_PORT), --threads 1 --hlog server.hlog"
"$BIN" server --listen "127.0.0.1:$PORT" --http "127.0.0.1:$HTTP_PORT" --threads 1 --quiet --conn-qps-max 0 \
    --hlog "$WORK/server.hlog" >"$WORK/server.out" 2>&1 &
SERVER_PID=$!
up=0
for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        up=1
        break
    fi
    sleep 0.1
done
if [ "$up" != 1 ]; then
    cat "$WORK/server.out"
    fail "the server did not listen on 127.0.0.1:$PORT within 30 s"
fi

say "flooding it: 200 users, 2000 shakes/s, 3 s (after the 2 s warmup), --hlog flood.hlog"
if ! timeout 120 "$BIN" flood --server "127.0.0.1:$PORT" --users 200 --qps 2000 --duration 3 \
    --no-http --quiet --hlog "$WORK/flood.hlog" --json "$WORK/flood.json" >"$WORK/flood.out" 2>&1; then
    cat "$WORK/flood.out"
    fail "the flooder failed (or ran past 120 s)"
fi

say "stopping the server (pid $SERVER_PID, SIGINT)"
kill -INT "$SERVER_PID"
for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$WORK/server.out"
    fail "the server did not stop within 30 s of SIGINT"
fi
server_rc=0
wait "$SERVER_PID" || server_rc=$?
SERVER_PID=""
[ "$server_rc" = 0 ] || {
    cat "$WORK/server.out"
    fail "the server exited with status $server_rc"
}

say "reading both logs with the hdrhistogram crate (cargo test --test hlog -- hgrm_of_a_log)"
for name in server flood; do
    HONGBAO_HLOG_READ="$WORK/$name.hlog" cargo test --quiet --locked --test hlog -- --exact hgrm_of_a_log \
        >"$WORK/$name.read.log" 2>&1 ||
        {
            cat "$WORK/$name.read.log"
            fail "cargo test could not read $name.hlog"
        }
done

say "running org.HdrHistogram.HistogramLogProcessor on server.hlog"
java_reads server "$WORK/server.hlog"
same_as server "$WORK/server.hgrm" "the server's own server.hgrm"
same_as server "$WORK/server.read.hgrm" "our reading of the log"
count="$(total_count "$WORK/server.java.dist")"
[ "${count:-0}" -gt 0 ] || fail "server.hlog holds no service time at all"
say "server: PASS: Java read all $JAVA_INTERVALS intervals ($count service times); its .hgrm equals the server's and ours"
tail -n 3 "$WORK/server.java.dist"

say "running org.HdrHistogram.HistogramLogProcessor on flood.hlog"
java_reads flood "$WORK/flood.hlog"
same_as flood "$WORK/flood.read.hgrm" "our reading of the log"
count="$(total_count "$WORK/flood.java.dist")"
[ "${count:-0}" -gt 0 ] || fail "flood.hlog holds no latency at all"
say "flood: PASS: Java read all $JAVA_INTERVALS intervals ($count latencies); its .hgrm equals ours"
tail -n 3 "$WORK/flood.java.dist"

say "PASS: sample, server and flooder logs all read by Java as we read them"
