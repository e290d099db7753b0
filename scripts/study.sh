#!/usr/bin/env bash
# The README's main command: installs what is missing, builds the bench preset
# (-march=native, Release) and runs the flattening study and the benchmarks.
# Results land in out/study/ (tables, CSV, plots).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake --workflow --preset bench
mkdir -p out/study
./build/bench/bench/bench_row --benchmark_filter='float/.*/(4096|65536)$' \
  --benchmark_out=out/study/bench_row.json --benchmark_out_format=json
