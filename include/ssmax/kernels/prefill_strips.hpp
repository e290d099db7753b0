#pragma once
// One key block of a prefill task, strip by strip: the scores of kPrefillStrip query rows
// at a time (S = Q' K^T on the packed K^T), their online softmax, then their O += P V on
// the packed V, so that a strip's scores stay in L1 from the GEMM that writes them to the
// GEMM that reads them as P.
//
// Why strips: the whole 64-row block's scores (64 x 272 floats, 70 KB) do not fit a 48 KB
// L1, so the softmax and P V would read them back from L2; a strip of 32 rows keeps 35 KB.
// K^T and V of the block stream from L2 with the tile's own prefetch (gemm.hpp,
// kPrefetchRows). Each strip also computes only the keys some of its rows may see (hi
// below): on the causal diagonal a strip stops at its own last row instead of the block's
// end. The strip size is measured: docs/performance.md, "Constants and the measurements
// behind them".
//
// Arithmetic is that of the whole-block version: every score is one fma chain over the
// head dimension in order, every output element one fma chain over the keys in order; the
// keys left out weigh exactly 0 for every row of the strip. Results do not depend on the
// strip size's position in the task nor on the thread count.

#include <algorithm>

#include "../mask.hpp"
#include "gemm.hpp"

namespace ssmax::kernels {

/// Query rows per strip (docs/performance.md, "Constants and the measurements behind them").
inline constexpr index_t kPrefillStrip = 32;

namespace detail {

/// Keys [0, hi) of the block [kb, kb + nk) that some row of info[0, rows) may see (0: no
/// row sees the block). Ignores boolean masks (their rows mask the rest themselves).
inline index_t strip_keys(const row_keys* info, index_t rows, index_t kb, index_t nk) {
  index_t hi = 0;
  for (index_t r = 0; r < rows; ++r) {
    const row_keys& rk = info[r];
    if (rk.visible > 0 && rk.begin < kb + nk && rk.end > kb)
      hi = std::max(hi, std::min(rk.end, kb + nk) - kb);
  }
  return hi;
}

/// The score GEMM of the float path: s[r * lds + j] = qs[r, :] . kt[:, j] for r < rows,
/// j < cols (a multiple of the vector width), kt the packed K^T [d, ldk].
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
struct packed_scores {
  const T* qs;  ///< [rows of the task, d] scaled queries
  const T* kt;  ///< [d, ldk] packed K^T of the block
  index_t d, ldk;
  void operator()(index_t r0, index_t rows, index_t cols, T* s, index_t lds) const {
    gemm<Arch>(rows, cols, d, qs + r0 * d, d, kt, ldk, s, lds, false);
  }
};

/// The P V GEMM of the float path: O[rows x dp] += P[rows x keys] V on the packed V
/// [keys, dp] (pad_rows), every output element one fma chain over the keys in order.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
struct packed_values {
  const T* v;  ///< [kKeyBlock, dp] packed V of the block
  index_t dp;  ///< padded head dimension (a multiple of the vector width)
  void operator()(index_t rows, index_t keys, const T* s, index_t lds, T* o) const {
    gemm<Arch>(rows, dp, keys, s, lds, v, dp, o, dp, true);
  }
};

/// One key block [kb, kb + nk) of a task's rows [0, rows), strip by strip:
/// - scores(r0, strip_rows, cols, s, lds) writes the strip's scores (cols keys, a multiple
///   of W) into s: the per-block score GEMM (packed_scores, or a 16-bit dot-product GEMM);
/// - softmax(r0, r1, keys, s) masks and applies the online softmax to rows [r0, r1) over
///   keys [0, keys) of the block, leaving P in s (row r at s + (r - r0) * lds);
/// - values(strip_rows, keys, s, lds, o + r0 * dp) adds P V to the strip's output rows
///   (dp apart): packed_values, or the opt-in bf16 P V (gemm_bf16.hpp, bf16_values).
/// s holds kPrefillStrip rows of lds >= round_up(nk, W) elements.
template <class Arch,     // xsimd architecture tag or scalar_arch
          class T,        // float or double
          class Scores,   // callable (r0, rows, cols, s, lds): the strip's scores
          class Softmax,  // callable (r0, r1, keys, s): mask + online softmax of the rows
          class Values>   // callable (rows, keys, s, lds, o): O += P V of the strip
void prefill_strips(index_t rows, const row_keys* info, index_t kb, index_t nk, Scores&& scores,
                    Softmax&& softmax, Values&& values, index_t dp, T* s, index_t lds, T* o) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  for (index_t r0 = 0; r0 < rows; r0 += kPrefillStrip) {
    const index_t r1 = std::min(rows, r0 + kPrefillStrip);
    const index_t hi = strip_keys(info + r0, r1 - r0, kb, nk);
    if (hi == 0) continue;
    scores(r0, r1 - r0, round_up(hi, W), s, lds);
    softmax(r0, r1, hi, s);
    values(r1 - r0, hi, s, lds, o + r0 * dp);
  }
}

}  // namespace detail
}  // namespace ssmax::kernels
