#!/usr/bin/env bash
# The README's test command: installs what is missing, checks the format, then builds and
# runs every test twice: for this CPU (-march=native, every SIMD path it has) and for
# baseline x86-64 (SSE2), so both the widest and the portable code paths are exercised.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/check-format.sh
cmake --workflow --preset native
cmake --workflow --preset baseline
