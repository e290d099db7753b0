#!/usr/bin/env bash
# The README's test command: installs what is missing, checks the format, then builds and
# runs every C++ test twice: for this CPU (-march=native, every SIMD path it has) and for
# baseline x86-64 (SSE2), so both the widest and the portable code paths are exercised;
# then the Python bindings' tests, the sanitizers and the fuzzers.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/check-format.sh
bash scripts/docs.sh  # the API reference: any doxygen warning fails
cmake --workflow --preset native
cmake --workflow --preset baseline
# The PyTorch extension (python/, ssmax_torch): built and installed into build/pyenv, then
# its pytest suite (forward against torch's own math, gradcheck, the nn module).
bash scripts/python-test.sh
# Sanitizers: every test under ASan + UBSan (g++, baseline x86-64 to keep the build short:
# the fuzzers below run every SIMD path of this CPU under ASan + UBSan); the threaded tests
# under TSan (clang++ with libomp and its Archer tool, which tells TSan about OpenMP's own
# synchronisation).
cmake --workflow --preset asan
cmake --workflow --preset tsan
# valgrind memcheck on a subset of the baseline (SSE2) tests: valgrind cannot run AVX-512.
bash scripts/valgrind.sh
# libFuzzer targets (clang++, ASan + UBSan), each run for a bounded time from its corpus.
cmake --workflow --preset fuzz
bash scripts/fuzz.sh "${SSMAX_FUZZ_SECONDS:-45}"
