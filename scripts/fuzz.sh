#!/usr/bin/env bash
# Runs every libFuzzer target built by the `fuzz` preset for SECONDS each (default 45),
# starting from its committed corpus in fuzz/corpus/<target>/, which stays untouched: new
# inputs go to a temporary directory. A finding (crash, sanitizer report, or a result
# outside the reference bound) fails the script and leaves the input in build/fuzz/findings/.
# Usage: bash scripts/fuzz.sh [SECONDS]   (SSMAX_FUZZ_BUILD overrides the build directory)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-45}
build=${SSMAX_FUZZ_BUILD:-build/fuzz}
findings="$build/findings"
mkdir -p "$findings"

for binary in "$build"/fuzz/fuzz_*; do
  [ -x "$binary" ] || continue
  target=$(basename "$binary")
  work=$(mktemp -d)
  log="$work/log"
  if "$binary" -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
    -artifact_prefix="$findings/$target-" "$work" "fuzz/corpus/$target" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $target clean, $runs executions in ${seconds}s"
    rm -rf "$work"
  else
    tail -n 40 "$log"
    echo "fuzz: $target FAILED; input saved under $findings/" >&2
    exit 1
  fi
done
