#pragma once
// The one place that knows which xsimd release is installed, and the scalar stand-in
// that lets every kernel be written once for "a vector of Width lanes".
//
// Kernels are templates over an architecture tag: any xsimd architecture (avx512f,
// fma3<avx2>, sse2, neon64, ...) or ssmax::scalar_arch, and they reach the hardware
// only through simd<Arch, T> below.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "../error.hpp"
#include "compensated_sum.hpp"
#include "xsimd_include.hpp"  // <xsimd/xsimd.hpp> without GCC 12's intrinsic warnings

namespace ssmax {

/// Architecture tag of the portable path: one lane, std::exp. Always available; it is
/// the baseline that the benchmarks compare the SIMD paths against.
struct scalar_arch {
  static constexpr bool supported() noexcept { return true; }
  static constexpr bool available() noexcept { return true; }
  static constexpr std::size_t alignment() noexcept { return 0; }
  static constexpr unsigned version() noexcept { return 0; }
  static constexpr const char* name() noexcept { return "scalar"; }
};

/// The widest architecture this translation unit was compiled for (scalar_arch when the
/// compiler targets none that xsimd knows). Public functions use it unless told otherwise.
using default_arch =
    std::conditional_t<std::is_same<xsimd::default_arch, xsimd::unavailable>::value, scalar_arch,
                       xsimd::default_arch>;

namespace detail {

/// Vector operations on Width lanes of T, for an xsimd architecture.
template <class Arch,  // an xsimd architecture tag the compiler targets (Arch::supported())
          class T>     // float or double
struct simd {
  static_assert(std::is_floating_point<T>::value, "ssmax kernels take float or double");
  using vec = xsimd::batch<T, Arch>;
  using mask = xsimd::batch_bool<T, Arch>;
  static constexpr index_t width = static_cast<index_t>(vec::size);

  static vec load(const T* p) { return vec::load_unaligned(p); }
  static void store(T* p, const vec& v) { v.store_unaligned(p); }
  static vec splat(T x) { return vec(x); }
  static vec max(const vec& a, const vec& b) { return xsimd::max(a, b); }
  static vec fma(const vec& a, const vec& b, const vec& c) { return xsimd::fma(a, b, c); }
  static vec select(const mask& m, const vec& a, const vec& b) { return xsimd::select(m, a, b); }
  /// exp with xsimd's accuracy (measured in tests/test_exp.cpp; about 1.5 ULP for float).
  static vec exp(const vec& v) { return xsimd::exp(v); }
  static vec tanh(const vec& v) { return xsimd::tanh(v); }
  static bool any(const mask& m) { return xsimd::any(m); }
  /// Lanes holding NaN (v != v is ordered on AVX, false for NaN, so it cannot serve).
  static mask is_nan(const vec& v) { return xsimd::isnan(v); }

  static T reduce_add(const vec& v) {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::reduce_add(v);
#else
    return xsimd::hadd(v);
#endif
  }
  static T reduce_max(const vec& v) {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::reduce_max(v);
#else
    alignas(64) T lanes[vec::size];
    v.store_unaligned(lanes);
    T m = lanes[0];
    for (std::size_t i = 1; i < vec::size; ++i) m = lanes[i] > m ? lanes[i] : m;
    return m;
#endif
  }
};

/// The same operations on one lane, with the C library's exp: the scalar path.
template <class T>  // float or double
struct simd<scalar_arch, T> {
  static_assert(std::is_floating_point<T>::value, "ssmax kernels take float or double");
  using vec = T;
  using mask = bool;
  static constexpr index_t width = 1;

  static vec load(const T* p) { return *p; }
  static void store(T* p, vec v) { *p = v; }
  static vec splat(T x) { return x; }
  static vec max(vec a, vec b) { return a > b ? a : b; }
  static vec fma(vec a, vec b, vec c) { return a * b + c; }
  static vec select(mask m, vec a, vec b) { return m ? a : b; }
  static vec exp(vec v) { return std::exp(v); }
  static vec tanh(vec v) { return std::tanh(v); }
  static bool any(mask m) { return m; }
  static mask is_nan(vec v) { return std::isnan(v); }
  static T reduce_add(vec v) { return v; }
  static T reduce_max(vec v) { return v; }
};

/// Prefetches the cache lines of [p, p + Bytes) into L1 for reading (a hint: no effect
/// on results, none on compilers without __builtin_prefetch).
template <std::size_t Bytes>  // bytes to prefetch from p
inline void prefetch_rows(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  for (std::size_t at = 0; at < Bytes; at += 64)
    __builtin_prefetch(static_cast<const char*>(p) + at, 0, 3);
#else
  (void)p;
#endif
}

/// Vector registers of an architecture: 32 for AVX-512 and AArch64 (neon64), 16 for the
/// other x86 levels (SSE to AVX2) and 32-bit NEON, 0 for scalar_arch. Register-blocked
/// kernels size their tiles by it (kernels/gemm.hpp, tile_shape).
template <class Arch>  // xsimd architecture tag or scalar_arch
inline constexpr int vector_registers =
    std::is_same<Arch, scalar_arch>::value ? 0
    : std::is_base_of<xsimd::avx512f, Arch>::value || std::is_base_of<xsimd::neon64, Arch>::value
        ? 32
        : 16;

}  // namespace detail
}  // namespace ssmax

namespace ssmax {

/// True when the running CPU can execute code compiled for Arch (scalar_arch: always).
/// Compile-time support (Arch::supported()) says the compiler targets Arch; this says the
/// machine does, which matters for binaries built with wider flags than their host.
template <class Arch>  // xsimd architecture tag or scalar_arch
inline bool cpu_supports() {
  if constexpr (std::is_same<Arch, scalar_arch>::value) {
    return true;
  } else {
    return Arch::version() <= xsimd::available_architectures().best;
  }
}

}  // namespace ssmax
