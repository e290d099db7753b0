#!/usr/bin/env bash
# Installs, on Debian bookworm, whatever ssmax's build, tests, bench and study need and the
# machine lacks. Safe to run again: it installs nothing when everything is present.
set -euo pipefail

packages=(
  g++ cmake make pkg-config git      # toolchain
  libeigen3-dev libxsimd-dev         # the library's dependencies
  libgtest-dev libbenchmark-dev      # tests and benchmarks
  clang-format                       # the format check
  clang libclang-rt-14-dev libomp-14-dev valgrind  # sanitizers, libFuzzer, TSan + OpenMP, memcheck
  doxygen                            # the API reference (scripts/docs.sh)
  gnuplot-nox                        # the study's plots
  python3-dev python3-venv python3-pip python3-setuptools python3-wheel ninja-build  # python/
  python3-torch libtorch-dev pybind11-dev python3-pytest  # python/: the torch extension, tests
  libopenblas0-openmp                # an optimised BLAS for torch (else the reference BLAS)
  libopenmpi-dev openmpi-bin         # ssmax::mpi: context-parallel attention, its tests
  g++-aarch64-linux-gnu qemu-user googletest  # the aarch64 preset: cross-built tests under qemu
  fortunes                           # English text: the language-model experiment's corpus
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "ssmax: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
