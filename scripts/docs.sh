#!/usr/bin/env bash
# Builds the API reference from the headers with doxygen (docs/Doxyfile) into
# build/docs/html/. Fails on any doxygen warning, so CI (scripts/test.sh) keeps the doc
# comments correct.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v doxygen >/dev/null || { echo "docs: doxygen is missing (bash scripts/install-deps.sh)"; exit 1; }
SSMAX_VERSION=$(sed -n 's/^inline constexpr const char\* version = "\(.*\)";/\1/p' include/ssmax/version.hpp)
export SSMAX_VERSION
rm -rf build/docs
mkdir -p build/docs
doxygen docs/Doxyfile
echo "docs: build/docs/html/index.html (doxygen $(doxygen --version), no warnings)"
