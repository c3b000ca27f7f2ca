#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz + libFuzzer) for a bounded time
# and fails on the first crash, timeout or memory blow-up.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s, every target)
#
# Each target starts from its committed seeds (fuzz/corpus/TARGET, read
# only) plus what earlier runs here found (fuzz/target/corpus/TARGET, kept
# between runs, never committed). A crashing input is left in
# fuzz/artifacts/TARGET/ and named in the output with the command that
# replays it. Logs: fuzz/target/logs/TARGET.log.
#
# cargo-fuzz passes nightly flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1
# lets this stable toolchain take them, so no nightly is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
case "$secs" in
  '' | *[!0-9]*) echo "usage: tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac
command -v cargo-fuzz >/dev/null 2>&1 || {
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 1
}
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets (the first takes minutes: the whole crate with
# coverage and AddressSanitizer).
cargo fuzz build

mkdir -p fuzz/target/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/target/corpus/$t"
  corpora=("fuzz/target/corpus/$t")
  [ -d "fuzz/corpus/$t" ] && corpora+=("fuzz/corpus/$t")
  log="fuzz/target/logs/$t.log"
  printf '\n== fuzz %s for %s s\n' "$t" "$secs"
  # -timeout: one input taking 10 s is a hang; -malloc_limit_mb: one
  # allocation past 64 MiB is a length field trusted (none is legitimate
  # for inputs of at most 4 KiB); -rss_limit_mb: the process as a whole,
  # AddressSanitizer's shadow included.
  if ! cargo fuzz run "$t" "${corpora[@]}" -- \
    -max_total_time="$secs" -timeout=10 -malloc_limit_mb=64 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1; then
    grep -v -E '^#[0-9]+.*(NEW|REDUCE|pulse)' "$log" | tail -60 || true
    echo "!!! fuzz target $t FAILED: the input is in fuzz/artifacts/$t/ (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/artifacts/$t/<file>); full log: $log" >&2
    exit 1
  fi
  # The run's closing figures: executions, speed, coverage, corpus, memory.
  grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | tr '\n' ' ' || true
  echo
done
echo "fuzz: ${#targets[@]} targets, ${secs} s each, no crash"
