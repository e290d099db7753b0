#!/usr/bin/env bash
# valgrind memcheck over a subset of the tests, on the baseline (SSE2) build that
# `cmake --workflow --preset baseline` leaves in build/baseline (valgrind cannot execute
# AVX-512, so the native build is out of its reach). Any invalid access, use of
# uninitialised memory or definite leak fails the script. The subset keeps the run to a
# minute or two: the row API, the extremes of rows and attention (without the 2^24 row),
# the attention operator's error contract, and concurrent calls (row and attention, OpenMP
# inside). SSMAX_VALGRIND_BUILD overrides the build directory.
set -euo pipefail
cd "$(dirname "$0")/.."

build=${SSMAX_VALGRIND_BUILD:-build/baseline}
memcheck() {
  local test=$1
  shift
  echo "valgrind: $test $*"
  valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
    --show-leak-kinds=definite --track-origins=yes -q "$build/tests/$test" --gtest_brief=1 "$@"
}

memcheck test_row_api
memcheck test_extremes --gtest_filter='-ExtremeLength.*'
memcheck test_attention_errors
memcheck test_concurrency
