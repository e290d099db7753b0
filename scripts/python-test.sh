#!/usr/bin/env bash
# Builds and installs the PyTorch extension (python/, package ssmax_torch) the documented
# way, into a virtual environment that sees Debian's torch (build/pyenv), and runs its tests.
# Offline; needs what scripts/install-deps.sh installs. Extra arguments go to pytest.
#   bash scripts/python-test.sh            # build (incremental) + every test
#   bash scripts/python-test.sh -k grad    # build + the gradient tests
set -euo pipefail
cd "$(dirname "$0")/.."

venv=build/pyenv
# Debian's torch is for /usr/bin/python3 (a `python3` earlier on PATH may not have it), and
# the system Python is externally managed (PEP 668): a venv with the system site-packages.
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"

start=$(date +%s)
MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$venv/bin/pip" install --no-build-isolation --no-index \
  --no-deps --quiet ./python
echo "ssmax_torch: built and installed in $(($(date +%s) - start)) s"

# From the repository root, so that python/ssmax_torch (the sources) does not shadow the
# installed package.
"$venv/bin/python" -m pytest -q python/tests "$@"
