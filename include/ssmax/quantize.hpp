#pragma once
// 8-bit formats for K/V caches, and the helpers that put rows into them:
//
//   format       layout                                        value
//   fp8_e4m3     1 byte: sign, 4 exponent bits (bias 7),      scale * fp8
//                3 mantissa bits (OCP E4M3, "e4m3fn": no
//                infinities; S.1111.111 is NaN; largest
//                finite 448, smallest denormal 2^-9)
//   fp8_e5m2     1 byte: sign, 5 exponent bits (bias 15),     scale * fp8
//                2 mantissa bits (OCP E5M2: IEEE-style inf
//                and NaN; largest finite 57344, smallest
//                denormal 2^-16)
//   block_q8_0   ggml's Q8_0: 32 values along d as int8 q     d * q
//                in [-127, 127] and one scale d in f16
//                (34 bytes); the same layout, so a ggml
//                cache's blocks are read as they are
//
// The fp8 scale is the caller's (vLLM's k_scale / v_scale: per tensor or per kv head).
// Rounding is to nearest, ties to even. fp8 saturates: a value past the largest finite
// (+-inf included) becomes the largest finite of its sign; NaN stays NaN (sign kept).
// Q8_0 takes its scale from the block: d = half(amax / 127) (amax the block's largest
// magnitude), then q = round(x / d), so that the f16 rounding of d is inside the error.
// The f16 scale is ggml's choice, kept for its layout: an engine with a ggml cache passes
// its blocks as they are (ggml computes q from the float amax / 127, so its q may differ
// from these by one in a rare tie; both dequantize as d * q).
//
// Error of dequantize(quantize(x)) against x (tests/test_quantize.cpp checks each):
//   fp8_e4m3   |x| <= 448 scale:   2^-4 |x| (1 + 2^-18) + 2^-10 scale (1 + 2^-23)
//   fp8_e5m2   |x| <= 57344 scale: 2^-3 |x| (1 + 2^-18) + 2^-17 scale (1 + 2^-23)
//   block_q8_0 every x of a block: amax / 254 (1 + 2^-10) + 2^-18
// (half a step of the format, relative for normal values and absolute below them; the
// rest is the float division by the scale and the float product on the way back).
//
// Bad input is refused with argument_error naming it, and nothing is written: a scale that
// is not finite and positive ('scale'); for Q8_0, a count that is not a multiple of 32
// ('n'), and a block holding a NaN or inf or a magnitude of 65520 * 127 = 8,321,040 or
// more, past what an f16 scale holds ('x').

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "error.hpp"
#include "storage.hpp"
#include "tensor_view.hpp"

namespace ssmax {

// fp8_e4m3, fp8_e5m2, block_q8_0 and kQ8_0Block: storage.hpp.

namespace detail {

/// The bit layout of an fp8 format and its NaN and saturation codes.
template <class F>  // fp8_e4m3 or fp8_e5m2
struct fp8_format;
template <>
struct fp8_format<fp8_e4m3> {
  static constexpr int mantissa_bits = 3, bias = 7;
  static constexpr bool has_inf = false;
  static constexpr std::uint8_t largest = 0x7E, nan = 0x7F;  // 448 and S.1111.111
};
template <>
struct fp8_format<fp8_e5m2> {
  static constexpr int mantissa_bits = 2, bias = 15;
  static constexpr bool has_inf = true;
  static constexpr std::uint8_t largest = 0x7B, nan = 0x7E;  // 57344 and a quiet NaN
};

}  // namespace detail

/// The exact value of an fp8 code (every fp8 value is a float).
template <
    class F,
    std::enable_if_t<std::is_same<F, fp8_e4m3>::value || std::is_same<F, fp8_e5m2>::value, int> = 0>
inline float to_float(F x) {
  using format = detail::fp8_format<F>;
  constexpr int m = format::mantissa_bits;
  constexpr int exponent_mask = (0x7F >> m);
  const int exponent = (x.bits >> m) & exponent_mask, mantissa = x.bits & ((1 << m) - 1);
  const float sign = (x.bits & 0x80) ? -1.0f : 1.0f;
  if (!format::has_inf && exponent == exponent_mask && mantissa == (1 << m) - 1)
    return std::numeric_limits<float>::quiet_NaN();
  if (format::has_inf && exponent == exponent_mask)
    return mantissa == 0 ? sign * std::numeric_limits<float>::infinity()
                         : std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), 1 - format::bias - m);
  return sign * std::ldexp(static_cast<float>((1 << m) + mantissa), exponent - format::bias - m);
}

/// x rounded to the fp8 format F: to nearest, ties to even; past the largest finite
/// (infinities included) the largest finite of x's sign; NaN a NaN of x's sign.
template <class F>  // fp8_e4m3 or fp8_e5m2
inline F to_fp8(float x) {
  using format = detail::fp8_format<F>;
  constexpr int m = format::mantissa_bits, min_exponent = 1 - format::bias;
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return F{static_cast<std::uint8_t>(sign | format::nan)};
  const double a = std::abs(static_cast<double>(x));
  if (a >= static_cast<double>(to_float(F{format::largest})))
    return F{static_cast<std::uint8_t>(sign | format::largest)};
  // a in steps of F's spacing around it (its denormals' spacing below the smallest
  // normal), rounded: nearbyint rounds ties to even (the default rounding mode), and the
  // scaling by a power of 2 is exact.
  const int exponent = a > 0.0 ? std::max(std::ilogb(a), min_exponent) : min_exponent;
  const int steps = static_cast<int>(std::nearbyint(std::ldexp(a, m - exponent)));
  int e_field = exponent + format::bias, mantissa = steps - (1 << m);
  if (steps < (1 << m)) e_field = 0, mantissa = steps;  // a denormal, or zero
  if (steps == (2 << m)) ++e_field, mantissa = 0;       // rounded up to the next binade
  return F{static_cast<std::uint8_t>(sign | (e_field << m) | mantissa)};
}

namespace detail {

/// A storage value widened to float (exact for float, bfloat16 and half).
template <class S>  // float, Eigen::bfloat16 or Eigen::half
inline float widen_to_float(S x) {
  return static_cast<float>(x);
}

/// Requires a finite, positive fp8 scale.
inline void check_fp8_scale(const char* fn, float scale) {
  require(std::isfinite(scale) && scale > 0.0f, fn, "scale", "must be finite and > 0");
}

}  // namespace detail

/// Quantizes x[0, n) (float, Eigen::bfloat16 or Eigen::half) to the fp8 format F with
/// `scale`: out[i] = to_fp8<F>(x[i] / scale). Error: the top of the file.
template <class F, class S>  // fp8_e4m3 or fp8_e5m2; the source's element type
inline void quantize_fp8(const S* x, index_t n, float scale, F* out) {
  constexpr const char* fn = "quantize_fp8";
  detail::require(n >= 0, fn, "n", "must be >= 0");
  detail::require(n == 0 || (x != nullptr && out != nullptr), fn, x == nullptr ? "x" : "out",
                  "must not be null");
  detail::check_fp8_scale(fn, scale);
  for (index_t i = 0; i < n; ++i) out[i] = to_fp8<F>(detail::widen_to_float(x[i]) / scale);
}

/// x[i] = scale * to_float(q[i]) for i < n.
template <class F>  // fp8_e4m3 or fp8_e5m2
inline void dequantize_fp8(const F* q, index_t n, float scale, float* x) {
  constexpr const char* fn = "dequantize_fp8";
  detail::require(n >= 0, fn, "n", "must be >= 0");
  detail::require(n == 0 || (q != nullptr && x != nullptr), fn, q == nullptr ? "q" : "x",
                  "must not be null");
  detail::check_fp8_scale(fn, scale);
  for (index_t i = 0; i < n; ++i) x[i] = scale * to_float(q[i]);
}

/// Quantizes x[0, n) (float, Eigen::bfloat16 or Eigen::half; n a multiple of 32) into
/// n / 32 Q8_0 blocks. Checks every block before writing any.
template <class S>  // the source's element type
inline void quantize_q8_0(const S* x, index_t n, block_q8_0* blocks) {
  constexpr const char* fn = "quantize_q8_0";
  constexpr double limit = 65520.0 * 127.0;  // amax / 127 must round to a finite half
  detail::require(n >= 0 && n % kQ8_0Block == 0, fn, "n", "must be a multiple of 32 (>= 0)");
  detail::require(n == 0 || (x != nullptr && blocks != nullptr), fn, x == nullptr ? "x" : "blocks",
                  "must not be null");
  for (index_t i = 0; i < n; ++i) {
    const float v = detail::widen_to_float(x[i]);
    detail::require_lazy(std::isfinite(v) && std::abs(static_cast<double>(v)) < limit, fn, "x",
                         [&] {
                           return "must be finite and below 65520 * 127 = 8321040 in magnitude "
                                  "(an f16 scale's range): x[" +
                                  std::to_string(i) + "] = " + detail::real_to_string(v);
                         });
  }
  for (index_t b = 0; b < n / kQ8_0Block; ++b) {
    const S* in = x + b * kQ8_0Block;
    float amax = 0.0f;
    for (index_t c = 0; c < kQ8_0Block; ++c)
      amax = std::max(amax, std::abs(detail::widen_to_float(in[c])));
    const Eigen::half d(amax / 127.0f);  // rounded to nearest even
    const float step = static_cast<float>(d);
    blocks[b].d = d;
    for (index_t c = 0; c < kQ8_0Block; ++c) {
      const float q = step > 0.0f ? std::nearbyint(detail::widen_to_float(in[c]) / step) : 0.0f;
      blocks[b].qs[c] = static_cast<std::int8_t>(std::min(127.0f, std::max(-127.0f, q)));
    }
  }
}

/// x[c] = float(d) * q[c] for the n / 32 blocks (n a multiple of 32).
inline void dequantize_q8_0(const block_q8_0* blocks, index_t n, float* x) {
  constexpr const char* fn = "dequantize_q8_0";
  detail::require(n >= 0 && n % kQ8_0Block == 0, fn, "n", "must be a multiple of 32 (>= 0)");
  detail::require(n == 0 || (blocks != nullptr && x != nullptr), fn,
                  blocks == nullptr ? "blocks" : "x", "must not be null");
  for (index_t b = 0; b < n / kQ8_0Block; ++b) {
    const float d = static_cast<float>(blocks[b].d);
    for (index_t c = 0; c < kQ8_0Block; ++c)
      x[b * kQ8_0Block + c] = d * static_cast<float>(blocks[b].qs[c]);
  }
}

}  // namespace ssmax
