#pragma once
// The opt-in integer scores of a Q8_0 key cache (attention_options::allow_int8_dot_products),
// for the dot-product path (decode): each scaled query row is rounded to blocks of 32 int8
// values with a float scale each (quantize_query_q8_0), and q . k is summed block by block
// in integers, as ggml does for a Q8_0 cache.
//
// Contract, the same bits on every architecture: for each block b of 32 values the integer
// sum I_b = sum_i qq_i kq_i is exact (|I_b| <= 32 * 127 * 128 < 2^24, so float(I_b) is
// exact too); the score is acc = fma(float(I_b), float(dk_b) * dq_b, acc) for b = 0, 1, ...
// in order from acc = 0, each product and fma rounded once. The integer sums run as
//   AVX512-VNNI (with VL) or AVX-VNNI: vpdpbusd on |k| and q with k's sign;
//   AVX2 without VNNI: vpmaddubsw then vpmaddwd (no saturation: |pair| <= 2 * 128 * 127);
//   AArch64 with the dot-product extension: sdot; other AArch64: smull and pairwise adds;
//   every other architecture: a scalar loop.
// The query's rounding error: |x - dq * qq| <= dq / 2 (1 + 2^-20) per value, dq = max|x| /
// 127 over the block (2^-149 at most where that underflows), so a score differs from the
// exact dot product of the scaled query with the dequantized key by at most
// sum_b (dq_b / 2) ||k_b||_1 plus the float accumulation's rounding (docs/numerics.md,
// "Opt-in int8 dot products").

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../detail/simd.hpp"
#include "../storage.hpp"
#include "convert.hpp"
#include "key_streams.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace ssmax::kernels::detail {

/// True when a fused problem of compute type T and storage S takes integer scores under
/// allow_int8_dot_products: a Q8_0 k and a float compute type.
template <class T, class S>  // compute type; storage_set (plan.hpp)
inline constexpr bool int8_scores_path =
    std::is_same<T, float>::value&& std::is_same<typename S::k, block_q8_0>::value;

/// True when its Q8_0 v's block scales fold into the weights under allow_int8_dot_products.
template <class T, class S>  // compute type; storage_set (plan.hpp)
inline constexpr bool fold_v_scales_path =
    std::is_same<T, float>::value&& std::is_same<typename S::v, block_q8_0>::value;

/// A query row rounded to Q8_0 blocks: qs[32 b + i] int8, d[b] its block's float scale.
struct q8_0_query {
  const std::int8_t* qs = nullptr;
  const float* d = nullptr;
};

/// Rounds x[0, d) (d a multiple of 32) to blocks: per block dq = max|x| / 127 (a float;
/// the smallest denormal where that underflows) and qs = x / dq rounded to nearest, ties
/// to even, in double (0 for a zero block). A block with a value that is not finite gets
/// dq = NaN, so that every score it takes part in is NaN and the kernel recomputes it from
/// the float query (row_logits.hpp).
inline void quantize_query_q8_0(const float* x, index_t d, std::int8_t* qs, float* scales) {
  for (index_t b = 0; b < d / kQ8_0Block; ++b) {
    const float* xb = x + b * kQ8_0Block;
    float amax = 0.0f;
    bool finite = true;
    for (index_t i = 0; i < kQ8_0Block; ++i) {
      finite = finite && std::isfinite(xb[i]);
      amax = std::max(amax, std::fabs(xb[i]));
    }
    float dq = amax / 127.0f;
    if (dq == 0.0f && amax > 0.0f) dq = std::numeric_limits<float>::denorm_min();
    scales[b] = finite ? dq : std::numeric_limits<float>::quiet_NaN();
    for (index_t i = 0; i < kQ8_0Block; ++i) {
      const double code =
          finite && dq > 0.0f ? std::nearbyint(static_cast<double>(xb[i]) / dq) : 0.0;
      qs[b * kQ8_0Block + i] = static_cast<std::int8_t>(std::clamp(code, -127.0, 127.0));
    }
  }
}

#if defined(__AVX2__)
/// The four exact sums q . k[u] of a query block q and key blocks k[u] (|k[u]| in ak[u]).
inline __m128i int8_sums4(__m256i q, const __m256i (&k)[4], const __m256i (&ak)[4]) {
  __m256i s[4];
  for (int u = 0; u < 4; ++u) {
    const __m256i signed_q = _mm256_sign_epi8(q, k[u]);  // |q| <= 127: no overflow
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    s[u] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ak[u], signed_q);
#elif defined(__AVXVNNI__)
    s[u] = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ak[u], signed_q);
#else
    s[u] = _mm256_madd_epi16(_mm256_maddubs_epi16(ak[u], signed_q), _mm256_set1_epi16(1));
#endif
  }
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
#endif

/// sum[r][u] = sum_i a[r][i] k[u][i], i < 32, for R query blocks a[r] and four key blocks
/// k[u] (exact).
template <class Arch, index_t R>  // xsimd architecture tag or scalar_arch; query rows
inline void int8_block_sums(const std::int8_t* const* a, const std::int8_t* const* k,
                            std::int32_t (*sum)[4]) {
#if defined(__AVX2__)
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value ||
                std::is_base_of<xsimd::avx512f, Arch>::value) {
    __m256i kv[4], ak[4];
    for (int u = 0; u < 4; ++u) {
      kv[u] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k[u]));
      ak[u] = _mm256_abs_epi8(kv[u]);  // -128 reads 128 as an unsigned byte: exact
    }
    for (index_t r = 0; r < R; ++r)
      _mm_storeu_si128(
          reinterpret_cast<__m128i*>(sum[r]),
          int8_sums4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[r])), kv, ak));
    return;
  }
#endif
#if defined(__aarch64__)
  if constexpr (std::is_base_of<xsimd::neon64, Arch>::value) {
    for (index_t r = 0; r < R; ++r) {
      const int8x16_t q0 = vld1q_s8(a[r]), q1 = vld1q_s8(a[r] + 16);
      for (int u = 0; u < 4; ++u) {
        const int8x16_t k0 = vld1q_s8(k[u]), k1 = vld1q_s8(k[u] + 16);
#if defined(__ARM_FEATURE_DOTPROD)
        const int32x4_t s = vdotq_s32(vdotq_s32(vdupq_n_s32(0), q0, k0), q1, k1);
#else
        int16x8_t p = vmull_s8(vget_low_s8(q0), vget_low_s8(k0));
        int32x4_t s = vpaddlq_s16(p);
        p = vmull_s8(vget_high_s8(q0), vget_high_s8(k0));
        s = vpadalq_s16(s, p);
        p = vmull_s8(vget_low_s8(q1), vget_low_s8(k1));
        s = vpadalq_s16(s, p);
        p = vmull_s8(vget_high_s8(q1), vget_high_s8(k1));
        s = vpadalq_s16(s, p);
#endif
        sum[r][u] = vaddvq_s32(s);
      }
    }
    return;
  }
#endif
  for (index_t r = 0; r < R; ++r)
    for (int u = 0; u < 4; ++u) {
      std::int32_t s = 0;
      for (index_t i = 0; i < kQ8_0Block; ++i)
        s += static_cast<std::int32_t>(a[r][i]) * static_cast<std::int32_t>(k[u][i]);
      sum[r][u] = s;
    }
}

/// out[r * 4 + u] = the integer score of query row a[r] and key row k[u] (blocks of the
/// row, `blocks` of them), for r < R, u < 4: the contract at the top of this file.
template <class Arch, index_t R>  // xsimd architecture tag or scalar_arch; query rows
inline void dot4_rows_q8_0(const q8_0_query* a, const block_q8_0* const* k, index_t blocks,
                           float* out) {
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value ||
                std::is_base_of<xsimd::avx512f, Arch>::value) {
    // The same operations as below, four keys to a register.
    __m128 acc4[R];
    for (index_t r = 0; r < R; ++r) acc4[r] = _mm_setzero_ps();
    for (index_t b = 0; b < blocks; ++b) {
      __m256i kv[4], ak[4];
      for (int u = 0; u < 4; ++u) {
        kv[u] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k[u][b].qs));
        ak[u] = _mm256_abs_epi8(kv[u]);
      }
      const __m128 dk = _mm_cvtph_ps(_mm_setr_epi16(
          static_cast<short>(bits_of(k[0][b].d)), static_cast<short>(bits_of(k[1][b].d)),
          static_cast<short>(bits_of(k[2][b].d)), static_cast<short>(bits_of(k[3][b].d)), 0, 0, 0,
          0));
      for (index_t r = 0; r < R; ++r) {
        const __m256i q =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[r].qs + b * kQ8_0Block));
        acc4[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(int8_sums4(q, kv, ak)),
                               _mm_mul_ps(dk, _mm_set1_ps(a[r].d[b])), acc4[r]);
      }
    }
    for (index_t r = 0; r < R; ++r) _mm_storeu_ps(out + r * 4, acc4[r]);
    return;
  }
#endif
  float acc[R][4] = {};
  for (index_t b = 0; b < blocks; ++b) {
    const std::int8_t* qb[R];
    for (index_t r = 0; r < R; ++r) qb[r] = a[r].qs + b * kQ8_0Block;
    const std::int8_t* kb[4] = {k[0][b].qs, k[1][b].qs, k[2][b].qs, k[3][b].qs};
    std::int32_t sum[R][4];
    int8_block_sums<Arch, R>(qb, kb, sum);
    float dk[4];
    for (int u = 0; u < 4; ++u) dk[u] = q8_0_scale(k[u][b]);
    for (index_t r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u)
        acc[r][u] = std::fma(static_cast<float>(sum[r][u]), dk[u] * a[r].d[b], acc[r][u]);
  }
  for (index_t r = 0; r < R; ++r)
    for (int u = 0; u < 4; ++u) out[r * 4 + u] = acc[r][u];
}

/// Integer scores of a Q8_0 key cache: s[r*lds + j] = the score of query row qs[r] and
/// key(j) for every scratch row r of every group, j < nk, key(j) = group.base + krows(j),
/// each by dot4_rows_q8_0 (the contract at the top of this file), key rows read in place
/// once per register block of a group's rows, as dot_scores.
template <class Arch>  // xsimd architecture tag or scalar_arch
inline void dot_scores_q8_0(const q8_0_query* qs, index_t d, const kv_group<block_q8_0>* groups,
                            index_t n_groups, row_map krows, index_t nk, bool keys_outer, float* s,
                            index_t lds) {
  static_assert(kKeyStreams == 4, "dot4_rows_q8_0 reads one key of each run");
  const index_t blocks = d / kQ8_0Block;
  walk_key_streams(
      groups, n_groups, krows, nk, keys_outer,
      [&](index_t r0, index_t r1, index_t t, index_t run, const block_q8_0* const* k) {
        for_row_blocks<Arch>(r1 - r0, [&](index_t i, auto rows) {
          constexpr index_t R = decltype(rows)::value;
          float out[R * kKeyStreams];
          dot4_rows_q8_0<Arch, R>(qs + r0 + i, k, blocks, out);
          for (index_t e = 0; e < R; ++e)
            for (index_t u = 0; u < kKeyStreams; ++u)
              s[(r0 + i + e) * lds + t + u * run] = out[e * kKeyStreams + u];
        });
      },
      [&](index_t r, index_t j, const block_q8_0* k) {
        const block_q8_0* const four[4] = {k, k, k, k};
        float out[4];
        dot4_rows_q8_0<Arch, 1>(qs + r, four, blocks, out);
        s[r * lds + j] = out[0];
      });
}

}  // namespace ssmax::kernels::detail
