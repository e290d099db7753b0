#!/usr/bin/env bash
# The README's main command: installs what is missing, builds the bench preset
# (-march=native, Release), runs the performance sweep and the flattening study, and
# renders the plots. Everything lands in out/study/: the tables (study.txt), CSV, the
# benchmark's JSON report and PNG plots.
#
#   bash scripts/study.sh             # a few minutes
#   bash scripts/study.sh --long      # the long sweep: n to 10^7, n_k to 2^20 with d = 128,
#                                     # longer benchmark runs
#   bash scripts/study.sh --figures   # also copy the plots to docs/figures/ (README.md and docs/study.md show them)
set -euo pipefail
cd "$(dirname "$0")/.."

long=()
figures=0
for arg in "$@"; do
  case "$arg" in
    --long) long=(--long) ;;
    --figures) figures=1 ;;
    *)
      echo "usage: bash scripts/study.sh [--long] [--figures]" >&2
      exit 2
      ;;
  esac
done
started=$(date +%s)

bash scripts/install-deps.sh
cmake --workflow --preset bench

out=out/study
bin=build/bench/bench
mkdir -p "$out"
rm -f "$out"/*.csv "$out"/*.png "$out"/bench.json

# 4. The performance sweep: the fused operator across context lengths, Softmax vs SSMax,
# as Google Benchmark JSON (read back by the study). The attention benchmark when it has
# the sweep, else the row kernels.
# Default: prefill (n_q = n_k, causal) to n = 4096 and decode (n_q = 1) to n = 131072, at
# d = 64 on one thread; --long: every length (prefill to 16384), d = 64 and 128, one and two
# threads, longer runs.
min_time=0.2
filter='^(prefill/fused/(softmax|ssmax)/d:64/n:(128|512|1024|4096)|decode/fused/(softmax|ssmax)/d:64/n:[0-9]+)/threads:1/'
if ((${#long[@]})); then
  min_time=1
  filter='^(prefill|decode)/fused/(softmax|ssmax)/'
fi
sweep=()
if [ -x "$bin/bench_attention" ] &&
  "$bin/bench_attention" --benchmark_list_tests --benchmark_filter="$filter" 2>/dev/null | grep -q .; then
  sweep=("$bin/bench_attention" --benchmark_filter="$filter")
elif [ -x "$bin/bench_row" ]; then
  sweep=("$bin/bench_row" --benchmark_filter='^row/(softmax|ssmax)/float/')
fi
bench_json=()
if ((${#sweep[@]})); then
  echo "== performance sweep: ${sweep[*]}"
  # Three repetitions, of which the study keeps the median: the machine may be shared.
  "${sweep[@]}" --benchmark_min_time="$min_time" --benchmark_repetitions=3 \
    --benchmark_report_aggregates_only=true \
    --benchmark_out="$out/bench.json" --benchmark_out_format=json
  bench_json=(--bench-json "$out/bench.json")
else
  echo "== performance sweep: skipped (no benchmark binary with a sweep)"
fi

# 1-4. The study: tables on stdout (kept in study.txt), CSV in out/study, progress on stderr.
echo "== flattening study"
"$bin/ssmax_study" --out "$out" "${bench_json[@]}" "${long[@]}" | tee "$out/study.txt"

gnuplot -e "dir='$out'" bench/study/plots.gp
if ((figures)); then
  mkdir -p docs/figures
  cp "$out"/*.png docs/figures/
  echo "== plots copied to docs/figures/"
fi

echo
echo "== done in $(($(date +%s) - started)) s. Outputs in $out/:"
echo "   tables   $out/study.txt"
echo "   CSV      $(cd "$out" && ls *.csv | tr '\n' ' ')"
echo "   plots    $(cd "$out" && ls *.png | tr '\n' ' ')"
[ -f "$out/bench.json" ] && echo "   bench    $out/bench.json (Google Benchmark JSON)"
exit 0
