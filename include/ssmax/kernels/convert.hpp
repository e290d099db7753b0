#pragma once
// Conversions between the storage types and their compute types (storage.hpp): 16-bit
// values widened to float (exact), floats narrowed to 16 bits (rounded to nearest, ties to
// even), one value at a time or a whole vector of simd<Arch, float> in registers.
//
// Contract, scalar and vector alike (tests/test_storage.cpp checks every 16-bit pattern
// against an independent formula, and vector against scalar on every architecture):
// - widening is exact: bfloat16 is the top half of a float, bit for bit (a NaN keeps its
//   bits); half denormals are exact floats, +-inf stay +-inf, a half NaN stays NaN, made
//   quiet (as F16C does), its payload kept;
// - narrowing rounds to nearest, ties to even, also into half's denormals; values past
//   the largest finite (by half an ULP or more) give +-inf; NaN gives a quiet NaN (sign
//   and top payload bits kept, as the CPUs' conversion instructions do).
// float and double convert to themselves (no instruction at all).
// The 8-bit K/V formats (storage.hpp) only widen, exactly, to float: an fp8 code to its
// value (the view's scale is applied by the kernels, outside the values: query_factor and
// the output's factor); a Q8_0 value c of a row of blocks to float(d) * q (value_at,
// load_values: exact, an 11-bit significand times a 7-bit integer). fp8 goes through half:
// e5m2 is the top byte of a half; e4m3's sign, exponent and mantissa shifted into a half's
// give its value times 2^-8 (denormals too), and its NaN code S.1111.111 would read 480,
// which no finite e4m3 is (the largest is 448), so that lane is made NaN.
//
// Vector paths, chosen at compile time from the Arch tag and the compiler's target macros:
//   half:     AVX-512F _mm512_cvtph_ps / _mm512_cvtps_ph, F16C _mm256_cvtph_ps /
//             _mm256_cvtps_ph (AVX, AVX2) and _mm_cvtph_ps / _mm_cvtps_ph (SSE);
//   bfloat16: a zero-extend and shift to load (AVX-512F, AVX2, SSE2), rounding bit
//             operations to store (AVX-512F, AVX2). AVX512-BF16's _mm512_cvtneps_pbh is
//             not used: it flushes float denormals to zero (measured on Zen 5: 0x007fffff
//             gives 0x0000, not 0x0080), which breaks round-to-nearest; the store runs once
//             per output element, so the bit operations cost nothing measurable;
//   AArch64 (neon64): FCVTL / FCVTN for half (vcvt_f32_f16 / vcvt_f16_f32, base ARMv8-A),
//   a widening shift to load bfloat16 and the same rounding bit operations to store it.
//   ARMv8.2-A's fp16 arithmetic is not used: 16 bits are storage, the compute type is float;
//   other architectures (32-bit NEON, scalar_arch, SSE without F16C): the scalar
//   conversion, lane by lane.

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../detail/simd.hpp"
#include "../storage.hpp"

namespace ssmax::kernels {

/// The raw bits of a 16-bit value.
template <class S>  // Eigen::bfloat16 or Eigen::half
inline std::uint16_t bits_of(S x) {
  static_assert(is_16bit_v<S>, "bits_of takes a 16-bit storage type");
  std::uint16_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

/// The 16-bit value with the given bits.
template <class S>  // Eigen::bfloat16 or Eigen::half
inline S from_bits(std::uint16_t b) {
  static_assert(is_16bit_v<S>, "from_bits makes a 16-bit storage type");
  S x;
  std::memcpy(static_cast<void*>(&x), &b, sizeof b);
  return x;
}

namespace detail {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// bfloat16 bits to float: the top half, bit for bit (a NaN keeps its bits).
inline float bf16_to_float(std::uint16_t b) {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}

/// float to bfloat16 bits, round to nearest even; NaN: quiet, top payload bits kept.
inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/// half bits to float, exact (denormals included; NaN made quiet).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13) | (m != 0 ? 0x00400000u : 0u));
  if (e == 0) {  // zero or denormal: m * 2^-24, exact in float
    const float mag = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign != 0 ? -mag : mag;
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

/// float to half bits, round to nearest even (denormals included); NaN: quiet, top
/// payload bits kept; |f| >= 65520 (the largest half plus half an ULP) gives inf.
inline std::uint16_t float_to_half(float f) {
  const std::uint32_t u = float_bits(f), a = u & 0x7fffffffu;
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  std::uint32_t q = 0, rem = 0, half = 0;
  if (a >= 0x38800000u) {  // normal half: rebias the exponent, keep 10 mantissa bits
    q = (a >> 13) - (112u << 10), rem = a & 0x1fffu, half = 0x1000u;
  } else {  // denormal half (or 0): the significand shifted to units of 2^-24
    const std::uint32_t e = a >> 23;
    if (e < 102) return sign;  // below 2^-25: rounds to 0
    const std::uint32_t mant = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
    q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  }
  if (rem > half || (rem == half && (q & 1u) != 0)) ++q;  // ties to even; carries are right
  return static_cast<std::uint16_t>(sign | q);
}

}  // namespace detail

namespace detail {

/// The half bits holding an fp8 e4m3 code's value times 2^-8 (NaN codes: see e4m3_to_float).
inline std::uint16_t e4m3_half_bits(std::uint8_t b) {
  return static_cast<std::uint16_t>(((b & 0x80u) << 8) | ((b & 0x7fu) << 7));
}
/// An fp8 e4m3 code's value (exact).
inline float e4m3_to_float(std::uint8_t b) {
  if ((b & 0x7fu) == 0x7fu)
    return (b & 0x80u) ? -std::numeric_limits<float>::quiet_NaN()
                       : std::numeric_limits<float>::quiet_NaN();
  return half_to_float(e4m3_half_bits(b)) * 256.0f;
}
/// A half's value from its bits, by F16C's instruction where the compiler targets it.
inline float half_bits_to_float(std::uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return half_to_float(h);
#endif
}

}  // namespace detail

/// A storage value in its compute type (exact; an fp8 code without its tensor's scale).
inline float to_compute(float x) { return x; }
inline double to_compute(double x) { return x; }
inline float to_compute(Eigen::bfloat16 x) { return detail::bf16_to_float(bits_of(x)); }
inline float to_compute(Eigen::half x) { return detail::half_to_float(bits_of(x)); }
inline float to_compute(fp8_e5m2 x) {
  return detail::half_to_float(static_cast<std::uint16_t>(x.bits << 8));
}
inline float to_compute(fp8_e4m3 x) { return detail::e4m3_to_float(x.bits); }

/// Value c of a row stored as S (its compute type; exact): row[c] for one value per
/// element, float(d) * q of value c % 32 of block c / 32 for block_q8_0.
template <class S>  // a K/V storage type (storage.hpp)
inline compute_t<S> value_at(const S* row, index_t c) {
  if constexpr (std::is_same<S, block_q8_0>::value) {
    const block_q8_0& block = row[c / kQ8_0Block];
    return detail::half_bits_to_float(bits_of(block.d)) *
           static_cast<float>(block.qs[c % kQ8_0Block]);
  } else {
    return to_compute(row[c]);
  }
}

/// A compute value stored as S, rounded to nearest even for the 16-bit types.
template <class S>  // a storage type (storage.hpp)
inline S from_compute(compute_t<S> x) {
  if constexpr (std::is_same<S, Eigen::bfloat16>::value)
    return from_bits<S>(detail::float_to_bf16(x));
  else if constexpr (std::is_same<S, Eigen::half>::value)
    return from_bits<S>(detail::float_to_half(x));
  else
    return x;
}

namespace detail {

template <class Arch, class S>
using compute_vec = typename ssmax::detail::simd<Arch, compute_t<S>>::vec;

/// The 16-bit vector load in registers where the architecture has one; `done` false
/// (and the result unspecified) where it has none.
template <class Arch, class S>  // xsimd architecture tag; a 16-bit storage type
inline compute_vec<Arch, S> load_16bit(const S* p, bool& done) {
  done = true;
  using V = compute_vec<Arch, S>;
  [[maybe_unused]] constexpr bool bf16 = std::is_same<S, Eigen::bfloat16>::value;
  [[maybe_unused]] const void* raw = p;
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m256i h = _mm256_loadu_si256(static_cast<const __m256i*>(raw));
    if constexpr (bf16)
      return V(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    else
      return V(_mm512_cvtph_ps(h));
  }
#endif
#if XSIMD_WITH_AVX
  if constexpr (std::is_base_of<xsimd::avx, Arch>::value &&
                !std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(raw));
#if XSIMD_WITH_AVX2
    if constexpr (bf16 && std::is_base_of<xsimd::avx2, Arch>::value)
      return V(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
#endif
#if defined(__F16C__)
    if constexpr (!bf16) return V(_mm256_cvtph_ps(h));
#endif
  }
#endif
#if XSIMD_WITH_SSE2
  if constexpr (std::is_base_of<xsimd::sse2, Arch>::value &&
                !std::is_base_of<xsimd::avx, Arch>::value) {
    const __m128i h = _mm_loadl_epi64(static_cast<const __m128i*>(raw));
    if constexpr (bf16) return V(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
#if defined(__F16C__)
    if constexpr (!bf16) return V(_mm_cvtph_ps(h));
#endif
  }
#endif
#if XSIMD_WITH_NEON64
  if constexpr (std::is_base_of<xsimd::neon64, Arch>::value) {
    const uint16x4_t h = vld1_u16(static_cast<const std::uint16_t*>(raw));
    if constexpr (bf16)
      return V(vreinterpretq_f32_u32(vshll_n_u16(h, 16)));
    else
      return V(vcvt_f32_f16(vreinterpret_f16_u16(h)));  // FCVTL: exact, NaN made quiet
  }
#endif
  done = false;
  return V();
}

/// The 16-bit vector store in registers where the architecture has one (see load_16bit).
template <class Arch, class S>  // xsimd architecture tag; a 16-bit storage type
inline bool store_16bit(S* p, const compute_vec<Arch, S>& v) {
  [[maybe_unused]] constexpr bool bf16 = std::is_same<S, Eigen::bfloat16>::value;
  [[maybe_unused]] void* raw = p;
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m512 f = v;
    if constexpr (bf16) {
      const __m512i u = _mm512_castps_si512(f);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_srli_epi32(
          _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
      const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
      const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
      _mm256_storeu_si256(static_cast<__m256i*>(raw),
                          _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet)));
    } else {
      _mm256_storeu_si256(static_cast<__m256i*>(raw),
                          _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    return true;
  }
#endif
#if XSIMD_WITH_AVX
  if constexpr (std::is_base_of<xsimd::avx, Arch>::value &&
                !std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m256 f = v;
#if XSIMD_WITH_AVX2
    if constexpr (bf16 && std::is_base_of<xsimd::avx2, Arch>::value) {
      const __m256i u = _mm256_castps_si256(f);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      const __m256i rounded = _mm256_srli_epi32(
          _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
      const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
      const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);  // lanes < 2^16: packs exactly
      _mm_storeu_si128(static_cast<__m128i*>(raw),
                       _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
      return true;
    }
#endif
#if defined(__F16C__)
    if constexpr (!bf16) {
      _mm_storeu_si128(static_cast<__m128i*>(raw), _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT));
      return true;
    }
#endif
  }
#endif
#if XSIMD_WITH_SSE2 && defined(__F16C__)
  if constexpr (!bf16 && std::is_base_of<xsimd::sse2, Arch>::value &&
                !std::is_base_of<xsimd::avx, Arch>::value) {
    _mm_storel_epi64(static_cast<__m128i*>(raw), _mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    return true;
  }
#endif
#if XSIMD_WITH_NEON64
  if constexpr (std::is_base_of<xsimd::neon64, Arch>::value) {
    const float32x4_t f = v;
    std::uint16_t* out = static_cast<std::uint16_t*>(raw);
    if constexpr (bf16) {
      const uint32x4_t u = vreinterpretq_u32_f32(f);
      const uint32x4_t odd = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
      const uint32x4_t rounded = vshrq_n_u32(vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7fff)), odd), 16);
      const uint32x4_t quiet = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
      const uint32x4_t ordered = vceqq_f32(f, f);  // all ones where f is not NaN
      vst1_u16(out, vmovn_u32(vbslq_u32(ordered, rounded, quiet)));
    } else {
      // FCVTN: nearest even (the FPCR default), half denormals kept (FZ16 clear by
      // default), overflow to inf, NaN made quiet with its top payload bits.
      vst1_u16(out, vreinterpret_u16_f16(vcvt_f16_f32(f)));
    }
    return true;
  }
#endif
  (void)v;
  return false;
}

/// W fp8 codes p[0, W) as their values, in registers where the architecture has a half
/// conversion (see load_16bit); `done` false (the result unspecified) where it has none.
template <class Arch, class F>  // xsimd architecture tag; fp8_e4m3 or fp8_e5m2
inline compute_vec<Arch, F> load_fp8(const F* p, bool& done) {
  done = true;
  using Simd = ssmax::detail::simd<Arch, float>;
  using V = typename Simd::vec;
  [[maybe_unused]] constexpr bool e4m3 = std::is_same<F, fp8_e4m3>::value;
  [[maybe_unused]] const void* raw = p;
  // e4m3: 480 marks the NaN code (see the top of this header).
  [[maybe_unused]] const auto e4m3_value = [](V half_value) {
    const V v = half_value * Simd::splat(256.0f);
    return xsimd::select(xsimd::abs(v) == Simd::splat(480.0f),
                         Simd::splat(std::numeric_limits<float>::quiet_NaN()), v);
  };
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128(static_cast<const __m128i*>(raw)));
    if constexpr (e4m3) {
      const __m256i h =
          _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8),
                          _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7));
      return e4m3_value(V(_mm512_cvtph_ps(h)));
    } else {
      return V(_mm512_cvtph_ps(_mm256_slli_epi16(w, 8)));
    }
  }
#endif
#if XSIMD_WITH_AVX && defined(__F16C__)
  if constexpr (std::is_base_of<xsimd::avx, Arch>::value &&
                !std::is_base_of<xsimd::avx512f, Arch>::value) {
    const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(static_cast<const __m128i*>(raw)));
    if constexpr (e4m3) {
      const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8),
                                     _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7f)), 7));
      return e4m3_value(V(_mm256_cvtph_ps(h)));
    } else {
      return V(_mm256_cvtph_ps(_mm_slli_epi16(w, 8)));
    }
  }
#endif
#if XSIMD_WITH_SSE2 && defined(__F16C__)
  if constexpr (std::is_base_of<xsimd::sse2, Arch>::value &&
                !std::is_base_of<xsimd::avx, Arch>::value) {
    std::int32_t four;
    std::memcpy(&four, raw, sizeof four);
    const __m128i w = _mm_unpacklo_epi8(_mm_cvtsi32_si128(four), _mm_setzero_si128());
    if constexpr (e4m3) {
      const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x80)), 8),
                                     _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x7f)), 7));
      return e4m3_value(V(_mm_cvtph_ps(h)));
    } else {
      return V(_mm_cvtph_ps(_mm_slli_epi16(w, 8)));
    }
  }
#endif
#if XSIMD_WITH_NEON64
  if constexpr (std::is_base_of<xsimd::neon64, Arch>::value) {
    std::uint32_t four;
    std::memcpy(&four, raw, sizeof four);
    const uint16x4_t w = vget_low_u16(vmovl_u8(vcreate_u8(four)));
    if constexpr (e4m3) {
      const uint16x4_t h = vorr_u16(vshl_n_u16(vand_u16(w, vdup_n_u16(0x80)), 8),
                                    vshl_n_u16(vand_u16(w, vdup_n_u16(0x7f)), 7));
      return e4m3_value(V(vcvt_f32_f16(vreinterpret_f16_u16(h))));
    } else {
      return V(vcvt_f32_f16(vreinterpret_f16_u16(vshl_n_u16(w, 8))));
    }
  }
#endif
  done = false;
  return V();
}

/// W int8 values q[0, W) as floats, in registers where the architecture has a widening
/// load; `done` false (the result unspecified) where it has none.
template <class Arch>  // xsimd architecture tag
inline compute_vec<Arch, float> load_int8(const std::int8_t* q, bool& done) {
  done = true;
  using V = compute_vec<Arch, float>;
  [[maybe_unused]] const void* raw = q;
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value)
    return V(_mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(static_cast<const __m128i*>(raw)))));
#endif
#if XSIMD_WITH_AVX2
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value &&
                !std::is_base_of<xsimd::avx512f, Arch>::value)
    return V(_mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(static_cast<const __m128i*>(raw)))));
#endif
#if XSIMD_WITH_SSE2
  if constexpr (std::is_base_of<xsimd::sse2, Arch>::value &&
                !std::is_base_of<xsimd::avx, Arch>::value) {
    std::int32_t four;
    std::memcpy(&four, raw, sizeof four);
    const __m128i x = _mm_cvtsi32_si128(four);
    const __m128i bytes = _mm_unpacklo_epi16(_mm_unpacklo_epi8(x, x), _mm_unpacklo_epi8(x, x));
    return V(_mm_cvtepi32_ps(_mm_srai_epi32(bytes, 24)));  // each byte at the top, sign-extended
  }
#endif
#if XSIMD_WITH_NEON64
  if constexpr (std::is_base_of<xsimd::neon64, Arch>::value) {
    std::uint32_t four;
    std::memcpy(&four, raw, sizeof four);
    const int32x4_t w = vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u8(vcreate_u8(four)))));
    return V(vcvtq_f32_s32(w));
  }
#endif
  done = false;
  return V();
}

}  // namespace detail

/// W = simd<Arch, compute_t<S>>::width storage values from p[0, W) as one compute vector
/// (exact; see the top of this header). S is one value per element (not block_q8_0:
/// load_values).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class S>     // a storage type (storage.hpp)
inline detail::compute_vec<Arch, S> load_compute(const S* p) {
  using Simd = ssmax::detail::simd<Arch, compute_t<S>>;
  if constexpr (!is_16bit_v<S> && !is_fp8_v<S>) {
    return Simd::load(p);
  } else if constexpr (std::is_same<Arch, scalar_arch>::value) {
    return to_compute(*p);
  } else {
    bool done = false;
    detail::compute_vec<Arch, S> v;
    if constexpr (is_fp8_v<S>)
      v = detail::load_fp8<Arch>(p, done);
    else
      v = detail::load_16bit<Arch>(p, done);
    if (done) return v;
    float lanes[Simd::width];
    for (index_t i = 0; i < Simd::width; ++i) lanes[i] = to_compute(p[i]);
    return Simd::load(lanes);
  }
}

namespace detail {

/// A Q8_0 block's scale d as a float (exact).
inline float q8_0_scale(const block_q8_0& block) { return half_bits_to_float(bits_of(block.d)); }

/// W int8 values q[0, W) as a float vector (exact).
template <class Arch>  // xsimd architecture tag or scalar_arch
inline compute_vec<Arch, float> int8_values(const std::int8_t* q) {
  using Simd = ssmax::detail::simd<Arch, float>;
  if constexpr (!std::is_same<Arch, scalar_arch>::value) {
    bool done = false;
    const auto v = load_int8<Arch>(q, done);
    if (done) return v;
  }
  float lanes[Simd::width];
  for (index_t i = 0; i < Simd::width; ++i) lanes[i] = static_cast<float>(q[i]);
  return Simd::load(lanes);
}

}  // namespace detail

/// Values [c, c + W) of a row stored as S (W = simd<Arch, compute_t<S>>::width, c a
/// multiple of W) as one compute vector, exact: load_compute(row + c) for one value per
/// element; for block_q8_0 (W divides 32, so the vector lies in one block) the block's q
/// widened and multiplied by its scale d (an exact product).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class S>     // a K/V storage type (storage.hpp)
inline detail::compute_vec<Arch, S> load_values(const S* row, index_t c) {
  if constexpr (std::is_same<S, block_q8_0>::value) {
    using Simd = ssmax::detail::simd<Arch, float>;
    static_assert(kQ8_0Block % Simd::width == 0, "a vector lies in one Q8_0 block");
    const block_q8_0& block = row[c / kQ8_0Block];
    return detail::int8_values<Arch>(block.qs + c % kQ8_0Block) *
           Simd::splat(detail::q8_0_scale(block));
  } else {
    return load_compute<Arch>(row + c);
  }
}

/// load_values of four rows at once, for c = 0, W, 2W, ... in that order: the same vectors,
/// with each row's Q8_0 block scale converted once per block (at c % 32 == 0) and kept in a
/// register for the block's other vectors.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class S>     // a K/V storage type (storage.hpp)
class four_rows {
 public:
  using vec = detail::compute_vec<Arch, S>;
  explicit four_rows(const S* const* rows) : rows_{rows[0], rows[1], rows[2], rows[3]} {}
  /// Values [c, c + W) of row u, u < 4, into out[u].
  void load(index_t c, vec (&out)[4]) {
    if constexpr (std::is_same<S, block_q8_0>::value) {
      load_codes(c, out);
      for (int u = 0; u < 4; ++u) out[u] = out[u] * scale_[u];
    } else {
      for (int u = 0; u < 4; ++u) out[u] = load_compute<Arch>(rows_[u] + c);
    }
  }
  /// Q8_0 rows: the codes of values [c, c + W) of row u as floats into out[u], without
  /// their block's scale (scale(u), set at c % 32 == 0).
  void load_codes(index_t c, vec (&out)[4]) {
    static_assert(std::is_same<S, block_q8_0>::value, "codes and scales are Q8_0's");
    using Simd = ssmax::detail::simd<Arch, float>;
    const index_t at = c / kQ8_0Block, lane = c % kQ8_0Block;
    if (lane == 0)
      for (int u = 0; u < 4; ++u) scale_[u] = Simd::splat(detail::q8_0_scale(rows_[u][at]));
    for (int u = 0; u < 4; ++u) out[u] = detail::int8_values<Arch>(rows_[u][at].qs + lane);
  }
  /// Q8_0 rows: the scale of row u's block of the last load_codes, in every lane.
  const vec& scale(int u) const { return scale_[u]; }

 private:
  const S* rows_[4];
  vec scale_[4];
};

/// Stores a compute vector to p[0, W) as S, rounded to nearest even for 16 bits.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class S>     // a storage type (storage.hpp)
inline void store_storage(S* p, const detail::compute_vec<Arch, S>& v) {
  using Simd = ssmax::detail::simd<Arch, compute_t<S>>;
  if constexpr (!is_16bit_v<S>) {
    Simd::store(p, v);
  } else if constexpr (std::is_same<Arch, scalar_arch>::value) {
    *p = from_compute<S>(v);
  } else {
    if (detail::store_16bit<Arch>(p, v)) return;
    float lanes[Simd::width];
    Simd::store(lanes, v);
    for (index_t i = 0; i < Simd::width; ++i) p[i] = from_compute<S>(lanes[i]);
  }
}

}  // namespace ssmax::kernels
