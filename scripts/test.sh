#!/usr/bin/env bash
# The README's test command: installs what is missing, checks the format, then builds and
# runs the C++ tests for this CPU (-march=native, every SIMD path it has) and for 64-bit
# ARM under emulation (neon64), and the consumer tests for baseline x86-64; then the
# Python bindings' tests, the sanitizers (every test for baseline x86-64: the portable
# SSE2 and scalar paths) and the fuzzers.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage prints its wall time, and the table of all of them closes the log (also on a
# failure), so CI's duration budget is readable from any run.
timings=""
stage() {
  local name=$1 start=$SECONDS
  shift
  echo "== stage $name"
  "$@"
  timings+=$(printf '%-10s %5ds' "$name" $((SECONDS - start)))$'\n'
}
trap 'printf "== stage times (wall):\n%s== total %ds\n" "$timings" "$SECONDS"' EXIT

stage deps bash scripts/install-deps.sh
stage format bash scripts/check-format.sh
stage docs bash scripts/docs.sh  # the API reference: any doxygen warning fails
stage native cmake --workflow --preset native
# Baseline x86-64 (SSE2 and scalar): the package as users consume it (install, find_package,
# pkg-config, add_subdirectory, each example with its own flags), and the tests valgrind runs
# below; every test for this target runs in the asan stage (the same flags, -O2, plus the
# sanitizers).
stage baseline cmake --workflow --preset baseline
# 64-bit ARM (neon64): cross-compiled, run under qemu-user; what it leaves out and why:
# CONTRIBUTING.md, the aarch64 preset.
stage aarch64 cmake --workflow --preset aarch64
# The PyTorch extension (python/, ssmax_torch): built and installed into build/pyenv, then
# its pytest suite (forward against torch's own math, gradcheck, the nn module).
stage python bash scripts/python-test.sh
# Sanitizers: every test under ASan + UBSan (g++, baseline x86-64 to keep the build short:
# the fuzzers below run every SIMD path of this CPU under ASan + UBSan); the threaded tests
# under TSan (clang++ with libomp and its Archer tool, which tells TSan about OpenMP's own
# synchronisation).
stage asan cmake --workflow --preset asan
stage tsan cmake --workflow --preset tsan
# valgrind memcheck on a subset of the baseline (SSE2) tests: valgrind cannot run AVX-512.
stage valgrind bash scripts/valgrind.sh
# libFuzzer targets (clang++, ASan + UBSan), each run for a bounded time from its corpus.
stage fuzz-build cmake --workflow --preset fuzz
stage fuzz bash scripts/fuzz.sh "${SSMAX_FUZZ_SECONDS:-30}"
