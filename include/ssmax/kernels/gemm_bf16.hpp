#pragma once
// The bf16 score GEMM for CPUs with AVX512-BF16 (Zen 4/5, Sapphire Rapids): S = f Q K^T
// with bf16 q and k, through vdpbf16ps (_mm512_dpbf16_ps: per float lane, two bf16
// products added to a float accumulator), twice the multiply-adds of a float FMA per
// instruction. The instruction path is compiled when the compiler targets AVX512-BF16
// (__AVX512BF16__, e.g. -march=native on such a CPU: kHaveAvx512Bf16). Every other build
// gets a portable definition of the same arithmetic, bit for bit (dpbf16_step,
// round_to_bf16_flushed; tests/test_gemm_bf16.cpp compares the two on the CPU's
// instructions), so the fused kernel's bf16 branches compile in every build; the kernel
// takes them only where the instruction is compiled (prefill_bf16.hpp), and elsewhere the
// scores come from the float GEMM (gemm.hpp).
//
// Operands:
// - K^T pair-interleaved (pack_kt_bf16): pair row c2 (dimensions 2 c2 and 2 c2 + 1) holds,
//   for each key j, the two bf16 k_j[2 c2], k_j[2 c2 + 1] side by side, so that 32 bf16 of
//   a pair row are one vector of 16 keys; an odd d is padded with a zero dimension;
// - q rows as bf16 pairs (pack_q_bf16), one 32-bit word per pair, broadcast per step;
// - the row factor f_r (m_r scale, or scale alone when the logit's epilogue transforms
//   the scores: query_factor) multiplies the float scores after the dot products:
//   q itself is never scaled nor rounded.
//
// Numerical contract (q, k bf16 values, so every product q_c k_c is exact in float):
//   |s_rj - f_r sum_c q_rc k_jc| <= |f_r| (gamma_{d+1} sum_c |q_rc k_jc|
//                                          + 2^-126 d (max_c |q_rc| + max_c |k_jc| + 2))
// with gamma_n = n u / (1 - n u), u = 2^-24: at most one rounding per addition of a product
// (vdpbf16ps rounds to nearest even whatever MXCSR says) and one for the factor; the second
// term is vdpbf16ps's denormal handling: bf16 inputs below 2^-126 in magnitude are read as
// zero (each loses |q_c k_c| < 2^-126 max(|q_c|, |k_c|)) and float results below 2^-126
// are flushed to zero (2^-126 per step). tests/test_gemm_bf16.cpp checks this bound
// against a double reference on bf16 values, denormal inputs included.
//
// The same GEMM serves the opt-in bf16 P V (attention_options::allow_bf16_weights,
// bf16_values): O += P V with the weights of a strip row rounded to bf16 pairs over keys
// (pack_p_bf16) and V pair-interleaved over keys (pack_v_bf16). Each weight is rounded
// once (relative error at most 2^-8, below 2^-126 flushed); the products p v are then
// exact in float and the accumulation is as above, so the output gains at most 2^-8 sum_j
// a_ij |v_jc| plus the flushes (attention.hpp states the bound;
// tests/test_attention_bf16_weights.cpp checks it).
//
// Deterministic: each score is one accumulation over the pairs in order.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include <Eigen/Core>

#include "gemm.hpp"

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define SSMAX_HAVE_AVX512BF16 1
#include <immintrin.h>
#endif

namespace ssmax::kernels::detail {

/// True when this build compiles vdpbf16ps (the compiler targets AVX512-BF16).
#ifdef SSMAX_HAVE_AVX512BF16
inline constexpr bool kHaveAvx512Bf16 = true;
#else
inline constexpr bool kHaveAvx512Bf16 = false;
#endif

/// Keys per vector of the bf16 GEMM (16 float lanes, each one key).
inline constexpr index_t kBf16Lanes = 16;

/// The raw bits of a bf16 value.
inline std::uint16_t bf16_bits(Eigen::bfloat16 x) {
  std::uint16_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

/// Pair rows of a head dimension d: ceil(d / 2).
inline index_t bf16_pairs(index_t d) { return (d + 1) / 2; }

/// Packs q[0, d) as bf16 pairs: qp[c2] holds q[2 c2] in its low half and q[2 c2 + 1] (0
/// past d) in its high half.
inline void pack_q_bf16(const Eigen::bfloat16* q, index_t d, std::uint32_t* qp) {
  for (index_t c2 = 0; c2 < bf16_pairs(d); ++c2) {
    const std::uint32_t lo = bf16_bits(q[2 * c2]);
    const std::uint32_t hi = 2 * c2 + 1 < d ? bf16_bits(q[2 * c2 + 1]) : 0u;
    qp[c2] = lo | (hi << 16);
  }
}

/// Packs the keys k0 + offset_of(j) (j < nk, d bf16 each) pair-interleaved into kt: pair row
/// c2 at kt + c2 * ldk holds (k_j[2 c2], k_j[2 c2 + 1]) at 2 j, 2 j + 1; keys nk..nkp-1 and
/// the padding dimension of an odd d are zero. Pre: ldk >= 2 nkp.
inline void pack_kt_bf16(const Eigen::bfloat16* k0, row_map offset_of, index_t nk, index_t d,
                         index_t nkp, index_t ldk, std::uint16_t* kt) {
  for (index_t c2 = 0; c2 < bf16_pairs(d); ++c2) {
    std::uint16_t* row = kt + c2 * ldk;
    for (index_t j = 0; j < nk; ++j) {
      const Eigen::bfloat16* k = k0 + offset_of(j);
      row[2 * j] = bf16_bits(k[2 * c2]);
      row[2 * j + 1] = 2 * c2 + 1 < d ? bf16_bits(k[2 * c2 + 1]) : std::uint16_t(0);
    }
    std::fill(row + 2 * nk, row + 2 * nkp, std::uint16_t(0));
  }
}

/// A bf16 as vdpbf16ps reads it: a denormal (exponent field 0) as a zero of its sign.
inline float bf16_read_flushed(std::uint16_t bits) {
  if ((bits & 0x7F80u) == 0) bits &= 0x8000u;
  const std::uint32_t word = std::uint32_t(bits) << 16;
  float x;
  std::memcpy(&x, &word, sizeof x);
  return x;
}

/// x, or a zero of its sign when x is a float denormal.
inline float flush_denormal(float x) {
  return std::abs(x) < std::numeric_limits<float>::min() ? std::copysign(0.0f, x) : x;
}

/// One float lane of vdpbf16ps, portably: acc + a_hi b_hi, then + a_lo b_lo (the high bf16
/// halves of the words a and b first), each a fused multiply-add rounded to nearest even,
/// with denormal inputs read as zero and denormal results flushed to zero. Bitwise equal to
/// the instruction on every input the tests draw, denormals, infinities and NaN included.
inline float dpbf16_step(float acc, std::uint32_t a, std::uint32_t b) {
  float x = flush_denormal(acc);
  x = flush_denormal(std::fma(bf16_read_flushed(static_cast<std::uint16_t>(a >> 16)),
                              bf16_read_flushed(static_cast<std::uint16_t>(b >> 16)), x));
  return flush_denormal(std::fma(bf16_read_flushed(static_cast<std::uint16_t>(a & 0xFFFFu)),
                                 bf16_read_flushed(static_cast<std::uint16_t>(b & 0xFFFFu)), x));
}

/// The bits of x rounded to bf16 as vcvtneps2bf16 rounds, portably: to nearest even, a
/// float denormal to a zero of its sign, a NaN to a quiet NaN of its sign and payload's
/// high bits. Bitwise equal to the instruction on all 2^32 inputs.
inline std::uint16_t round_to_bf16_flushed(float x) {
  std::uint32_t w;
  std::memcpy(&w, &x, sizeof w);
  if ((w & 0x7F800000u) == 0) return static_cast<std::uint16_t>((w >> 16) & 0x8000u);
  if ((w & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((w >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((w + 0x7FFFu + ((w >> 16) & 1u)) >> 16);
}

/// gemm_bf16's arithmetic in portable C++ (one dpbf16_step per pair and output, in pair
/// order): C[m x n] = diag(f) A B, or C += A B when f is null, operands as gemm_bf16's.
inline void gemm_bf16_portable(index_t m, index_t n, index_t kp, const std::uint32_t* a,
                               index_t lda, const std::uint16_t* b, index_t ldb, const float* f,
                               float* c, index_t ldc) {
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      float acc = f != nullptr ? 0.0f : c[i * ldc + j];
      for (index_t p = 0; p < kp; ++p) {
        const std::uint16_t* pair = b + p * ldb + 2 * j;
        acc = dpbf16_step(acc, a[i * lda + p], pair[0] | (std::uint32_t(pair[1]) << 16));
      }
      c[i * ldc + j] = f != nullptr ? acc * f[i] : acc;
    }
}

/// pack_p_bf16's rounding in portable C++ (round_to_bf16_flushed per weight).
inline void pack_p_bf16_portable(const float* p, index_t n, std::uint32_t* pp) {
  for (index_t j = 0; j < n; j += 2) {
    const std::uint32_t lo = round_to_bf16_flushed(p[j]);
    const std::uint32_t hi = j + 1 < n ? round_to_bf16_flushed(p[j + 1]) : 0u;
    pp[j / 2] = lo | (hi << 16);
  }
}

#ifdef SSMAX_HAVE_AVX512BF16

/// Register tile over kp pairs: C[MR x 16 NV] = diag(f) A B, or C += A B when f is null.
/// A row r: kp packed pairs at a + r * lda; B pair rows ldb bf16 apart; C rows ldc floats
/// apart; f[r] the row factors.
template <int MR,  // rows of the tile
          int NV>  // vectors of 16 columns per tile row (accumulators MR x NV <= 28)
inline void gemm_bf16_tile(index_t kp, const std::uint32_t* a, index_t lda, const std::uint16_t* b,
                           index_t ldb, const float* f, float* c, index_t ldc) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] =
          f != nullptr ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc + v * kBf16Lanes);
  for (index_t p = 0; p < kp; ++p) {
    ssmax::detail::prefetch_rows<NV * 64>(b + (p + kPrefetchRows) * ldb);
    __m512bh bv[NV];
    for (int v = 0; v < NV; ++v)
      bv[v] = (__m512bh)_mm512_loadu_si512(b + p * ldb + v * 2 * kBf16Lanes);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda + p]));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512 fr = _mm512_set1_ps(f != nullptr ? f[r] : 1.0f);
    for (int v = 0; v < NV; ++v)
      _mm512_storeu_ps(c + r * ldc + v * kBf16Lanes,
                       f != nullptr ? _mm512_mul_ps(acc[r][v], fr) : acc[r][v]);
  }
}

/// Tile shape of the bf16 GEMM: the float GEMM's AVX-512 shape, 8 rows x 2 vectors (16
/// accumulators of the 32 registers), measured (docs/performance.md, "Constants and the
/// measurements behind them").
inline constexpr int kBf16TileRows = 8, kBf16TileVectors = 2;

/// C[m x n] = diag(f) A B, or C += A B when f is null: A [m x kp] packed pairs (rows lda
/// words apart), B [kp x n] pair-interleaved (pair rows ldb bf16 apart), n a multiple of
/// 16, C rows ldc apart.
inline void gemm_bf16(index_t m, index_t n, index_t kp, const std::uint32_t* a, index_t lda,
                      const std::uint16_t* b, index_t ldb, const float* f, float* c, index_t ldc) {
  constexpr int MR = kBf16TileRows, NV = kBf16TileVectors;
  constexpr index_t L = kBf16Lanes;
  index_t j = 0;
  for (; j + NV * L <= n; j += NV * L)
    for (index_t i = 0; i < m; i += MR)
      with_rows<1, MR>(std::min<index_t>(MR, m - i), [&](auto rows) {
        gemm_bf16_tile<decltype(rows)::value, NV>(kp, a + i * lda, lda, b + 2 * j, ldb,
                                                  f != nullptr ? f + i : nullptr, c + i * ldc + j,
                                                  ldc);
      });
  for (; j < n; j += L)
    for (index_t i = 0; i < m; i += MR)
      with_rows<1, MR>(std::min<index_t>(MR, m - i), [&](auto rows) {
        gemm_bf16_tile<decltype(rows)::value, 1>(kp, a + i * lda, lda, b + 2 * j, ldb,
                                                 f != nullptr ? f + i : nullptr, c + i * ldc + j,
                                                 ldc);
      });
}

/// Rounds the weights p[0, n) to bf16 pairs (vcvtneps2bf16: to nearest even, inputs and
/// results below 2^-126 flushed to zero): pp[j2] holds p[2 j2] in its low half and p[2 j2
/// + 1] (0 past n) in its high half; ceil(n / 2) words. Reads nothing past p[n - 1].
inline void pack_p_bf16(const float* p, index_t n, std::uint32_t* pp) {
  index_t j = 0;
  for (; j + kBf16Lanes <= n; j += kBf16Lanes)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pp + j / 2),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(p + j)));
  if (j == n) return;
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - j)) - 1);
  const __m256i packed = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail, p + j));
  _mm256_mask_storeu_epi32(pp + j / 2, static_cast<__mmask8>((1u << ((n - j + 1) / 2)) - 1),
                           packed);
}

#else  // without the instruction: the portable definitions, the same bits

/// gemm_bf16 of a build without vdpbf16ps (gemm_bf16_portable).
inline void gemm_bf16(index_t m, index_t n, index_t kp, const std::uint32_t* a, index_t lda,
                      const std::uint16_t* b, index_t ldb, const float* f, float* c, index_t ldc) {
  gemm_bf16_portable(m, n, kp, a, lda, b, ldb, f, c, ldc);
}

/// pack_p_bf16 of a build without vcvtneps2bf16 (pack_p_bf16_portable).
inline void pack_p_bf16(const float* p, index_t n, std::uint32_t* pp) {
  pack_p_bf16_portable(p, n, pp);
}

#endif  // SSMAX_HAVE_AVX512BF16

/// The score GEMM of the bf16 path for prefill_block (attention_fused.hpp): the scores of
/// rows r0.. of a task from its packed q pairs and row factors and a block's packed K^T.
struct bf16_scores {
  const std::uint32_t* qp;  ///< [rows of the task, lda] q pairs
  const float* f;           ///< [rows of the task] row factors (query_factor)
  const std::uint16_t* kt;  ///< pair-interleaved K^T of the block, pair rows ldk apart
  index_t kp, lda, ldk;     ///< pairs, q row stride (words), K^T pair-row stride (bf16)
  void operator()(index_t r0, index_t rows, index_t cols, float* s, index_t lds) const {
    gemm_bf16(rows, cols, kp, qp + r0 * lda, lda, kt, ldk, f + r0, s, lds);
  }
};

/// Packs the values of keys k0 + offset_of(j) (j < nk, d bf16 each) pair-interleaved over keys
/// into vb for the opt-in bf16 P V: pair row j2 at vb + j2 * 2 dp holds (v_{2 j2}[c],
/// v_{2 j2 + 1}[c]) at 2 c, 2 c + 1 for c < d; columns d..dp-1 and the partner of an odd
/// nk's last key are zero. ceil(nk / 2) pair rows.
inline void pack_v_bf16(const Eigen::bfloat16* v0, row_map offset_of, index_t nk, index_t d,
                        index_t dp, std::uint16_t* vb) {
  for (index_t j2 = 0; 2 * j2 < nk; ++j2) {
    std::uint16_t* row = vb + j2 * 2 * dp;
    const Eigen::bfloat16* even = v0 + offset_of(2 * j2);
    const Eigen::bfloat16* odd = 2 * j2 + 1 < nk ? v0 + offset_of(2 * j2 + 1) : nullptr;
    for (index_t c = 0; c < d; ++c) {
      row[2 * c] = bf16_bits(even[c]);
      row[2 * c + 1] = odd != nullptr ? bf16_bits(odd[c]) : std::uint16_t(0);
    }
    std::fill(row + 2 * d, row + 2 * dp, std::uint16_t(0));
  }
}

/// The opt-in bf16 P V for prefill_block (attention_fused.hpp, attention_options::
/// allow_bf16_weights): each strip row's weights rounded to bf16 pairs (pack_p_bf16, into
/// pp) and O += P V through vdpbf16ps on the pair-packed values (pack_v_bf16).
struct bf16_values {
  const std::uint16_t* vb;  ///< pair-packed V of the block, pair rows 2 dp apart
  std::uint32_t* pp;        ///< [strip rows, ldp] weight pairs (scratch)
  index_t ldp;              ///< words per row of pp: at least ceil(keys / 2)
  index_t dp;               ///< padded head dimension (a multiple of 16)
  /// O[rows x dp] (rows dp apart) += P[rows x keys] (rows lds apart) V.
  void operator()(index_t rows, index_t keys, const float* s, index_t lds, float* o) const {
    const index_t kp = (keys + 1) / 2;
    for (index_t r = 0; r < rows; ++r) pack_p_bf16(s + r * lds, keys, pp + r * ldp);
    gemm_bf16(rows, dp, kp, pp, ldp, vb, 2 * dp, nullptr, o, dp);
  }
};

}  // namespace ssmax::kernels::detail
