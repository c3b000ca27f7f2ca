#!/usr/bin/env bash
# The main job on a fresh machine: install what the report needs, build,
# and run `hongbao demo` (the seed experiment scaled to this machine, about
# two minutes), passing any arguments on (`--users`, `--phases`,
# `--duration`, `--threads`, `--out`; `--help` lists them).
#
# Needs: cargo (rustup's toolchain). Installs, when missing and apt-get is
# there (as root, or with passwordless sudo): a TrueType font for the
# report's charts (fonts-dejavu-core). Without one the monitor cannot draw
# and writes no report (its log says why); the demo still runs, audits and
# writes its summary.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && [ -z "${HONGBAO_FONT:-}" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1; then
    echo "demo.sh: installing fonts-dejavu-core for the report's charts"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null ||
      echo "demo.sh: could not install a font, so there will be no report.html (set HONGBAO_FONT=/path/to/font.ttf)"
  fi
fi

cargo build --release --locked --quiet
exec ./target/release/hongbao demo "$@"
