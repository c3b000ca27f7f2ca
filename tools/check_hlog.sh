#!/usr/bin/env bash
# Optional check that HdrHistogram's own Java tools read what src/hlog.rs
# writes. Not part of CI: it needs java and the HdrHistogram jar from Maven
# Central, and says "SKIPPED" (exit 0) when either is missing.
#
# What it does:
#   1. finds the jar: $HDRHISTOGRAM_JAR, else the cache dir, else ~/.m2, else
#      downloads org.hdrhistogram:HdrHistogram:$HDRHISTOGRAM_VERSION (curl from
#      repo1.maven.org, then `mvn dependency:get`) into the cache dir;
#   2. writes sample.hlog (ten 1 s intervals of nanosecond latencies) and
#      sample.hgrm (our distribution of their sum, in ms) with
#      `cargo test --test hlog -- sample_for_java`;
#   3. runs Java's HistogramLogProcessor on sample.hlog with
#      -outputValueUnitRatio 1e6 and requires its .hgrm to equal ours line for
#      line (after its two leading "#[...]" notes), and its interval output
#      to have one line per interval.
#
# Usage: tools/check_hlog.sh
# Env:   HDRHISTOGRAM_VERSION (default 2.2.2), HDRHISTOGRAM_JAR (a jar to use),
#        HONGBAO_HLOG_CACHE (default ~/.cache/hongbao/hdrhistogram),
#        KEEP=1 to keep the work dir.
set -euo pipefail

cd "$(dirname "$0")/.."

VERSION="${HDRHISTOGRAM_VERSION:-2.2.2}"
CACHE="${HONGBAO_HLOG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hongbao/hdrhistogram}"
JAR_NAME="HdrHistogram-$VERSION.jar"
CENTRAL="https://repo1.maven.org/maven2/org/hdrhistogram/HdrHistogram/$VERSION/$JAR_NAME"
M2_JAR="$HOME/.m2/repository/org/hdrhistogram/HdrHistogram/$VERSION/$JAR_NAME"

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
    skip "could not get $JAR_NAME: Maven Central looks unreachable from here ($why). Set HDRHISTOGRAM_JAR=/path/to/$JAR_NAME to use a copy."
}

find_jar
say "using $JAR"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check_hlog.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then
    say "keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi

say "writing the sample with cargo test --test hlog -- sample_for_java"
HONGBAO_HLOG_SAMPLE="$WORK" cargo test --quiet --test hlog -- --exact sample_for_java >"$WORK/cargo.log" 2>&1 ||
    {
        cat "$WORK/cargo.log"
        fail "cargo test could not write the sample"
    }
[ -s "$WORK/sample.hlog" ] && [ -s "$WORK/sample.hgrm" ] || fail "no sample written in $WORK"

say "running org.HdrHistogram.HistogramLogProcessor"
java -cp "$JAR" org.HdrHistogram.HistogramLogProcessor \
    -i "$WORK/sample.hlog" -o "$WORK/java" -outputValueUnitRatio 1e6 >"$WORK/java.log" 2>&1 ||
    {
        cat "$WORK/java.log"
        fail "HistogramLogProcessor failed on our log"
    }

# The processor's .hgrm opens with its own notes (time range, StartTime);
# the distribution after them is Java's outputPercentileDistribution.
grep -v -E '^#\[(Overall percentile distribution|StartTime:)' "$WORK/java.hgrm" >"$WORK/java.dist"
if ! diff -u "$WORK/sample.hgrm" "$WORK/java.dist" >"$WORK/hgrm.diff"; then
    head -n 60 "$WORK/hgrm.diff"
    fail "Java's distribution of our log differs from our .hgrm (diff above: ours ---, Java +++)"
fi

intervals_ours="$(grep -c -E '^[0-9]' "$WORK/sample.hlog")"
intervals_java="$(grep -c -E '^ *[0-9.]+: I:' "$WORK/java" || true)"
[ "$intervals_ours" = "$intervals_java" ] ||
    fail "Java read $intervals_java intervals, we wrote $intervals_ours"

say "PASS: Java read all $intervals_ours intervals; its .hgrm equals ours ($(wc -l <"$WORK/sample.hgrm") lines)"
sed -n '1,5p' "$WORK/java.dist"
tail -n 3 "$WORK/java.dist"
