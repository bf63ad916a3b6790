#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) from the committed seeds; new inputs go to a
# temporary corpus, crashes to fuzz/artifacts/<target>/ (and fail the run).
# Usage: fuzz/run.sh [SECONDS] [TARGET...]   (the test command runs a 10-second smoke of each)
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-60}; shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs nightly-only flags (sanitizers); this machine has one stable toolchain.
export RUSTC_BOOTSTRAP=1
TARGETS=("$@"); [ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
cargo fuzz build -O
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t"
  printf '%-16s ' "$t"
  if cargo fuzz run -O "$t" "$WORK/$t" "seeds/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
       > "$WORK/$t.log" 2>&1; then
    grep -Eo '#[0-9]+ +DONE +cov: [0-9]+' "$WORK/$t.log" | tail -1 | sed 's/^/ok /' || echo ok
  else
    echo "FAILED (see fuzz/artifacts/$t)"; tail -30 "$WORK/$t.log"; exit 1
  fi
done
