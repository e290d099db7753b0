#pragma once
// The work this program runs on the widest SIMD architecture the CPU has: SSMax over a
// batch of rows. Declared here, defined in kernels_impl.hpp, and compiled once per
// architecture, each in its own translation unit with that architecture's flags:
//   kernels_sse2.cpp    xsimd::sse2           (baseline x86-64, no flags)
//   kernels_avx2.cpp    xsimd::fma3<avx2>     (-mavx2 -mfma)
//   kernels_avx512.cpp  xsimd::avx512bw       (-mavx512f -mavx512cd -mavx512dq -mavx512bw)
// main.cpp sees only this declaration, so it never compiles SIMD code itself.
//
// One caveat of every "same header, several -m flags" build: inline functions that do not
// depend on the architecture (argument checks, std:: helpers) are emitted by each
// translation unit, and the linker keeps one copy. GNU ld, gold and lld keep the first
// one in link order, so the baseline translation units are listed first in
// CMakeLists.txt: the copy kept is then one every x86-64 CPU can run.

#include <ssmax/softmax.hpp>
#include <xsimd/xsimd.hpp>

/// The architectures this program carries kernels for, widest first: xsimd::dispatch
/// runs the first one the CPU supports (sse2 is always there on x86-64).
using dispatch_archs = xsimd::arch_list<xsimd::avx512bw, xsimd::fma3<xsimd::avx2>, xsimd::sse2>;

/// y[r] = SSMax(x[r]) with scale s for each of `rows` contiguous rows of n floats.
/// Pre: the pointers hold rows * n floats, rows >= 1, n >= 1, s finite and >= 0 (main
/// checks them first: xsimd's dispatcher is noexcept, so nothing may throw inside it).
struct ssmax_rows {
  template <class Arch>  // the xsimd architecture tag the definition was compiled for
  void operator()(Arch, const float* x, float* y, ssmax::index_t rows, ssmax::index_t n,
                  double s) const;
};
