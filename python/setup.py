"""Builds ssmax_torch: the ssmax attention kernels as a PyTorch C++ extension.

Install (offline, Debian bookworm, see README.md):
    /usr/bin/python3 -m venv --system-site-packages build/pyenv
    build/pyenv/bin/pip install --no-build-isolation ./python

The headers come from ../include (this repository) or $SSMAX_INCLUDE_DIR; Eigen from
/usr/include/eigen3 or $EIGEN3_INCLUDE_DIR. The extension is built for the CPU that builds
it (-march=native): build it on the machine that runs it.
"""

import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

here = os.path.dirname(os.path.abspath(__file__))
ssmax_include = os.environ.get("SSMAX_INCLUDE_DIR", os.path.join(here, "..", "include"))
eigen_include = os.environ.get("EIGEN3_INCLUDE_DIR", "/usr/include/eigen3")
if not os.path.isfile(os.path.join(ssmax_include, "ssmax", "ssmax.hpp")):
    raise SystemExit(f"ssmax_torch: no ssmax headers in {ssmax_include}: set SSMAX_INCLUDE_DIR")

# Torch 1.13 compiles extensions as C++14 by default; ssmax needs C++17 (the later -std wins).
cxx_flags = ["-std=c++17", "-O3", "-march=native", "-fopenmp", "-DNDEBUG", "-g0"]
if os.environ.get("SSMAX_TORCH_MARCH"):
    cxx_flags[2] = "-march=" + os.environ["SSMAX_TORCH_MARCH"]

setup(
    name="ssmax_torch",
    version="0.1.0",
    description="Scalable-Softmax attention for PyTorch (CPU), with autograd",
    packages=["ssmax_torch"],
    ext_modules=[
        CppExtension(
            "ssmax_torch._C",
            sources=["csrc/bindings.cpp", "csrc/ops_float.cpp", "csrc/ops_double.cpp"],
            include_dirs=[os.path.abspath(ssmax_include), eigen_include],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
)
