#pragma once
// The pieces of a prefill task's strips (attention_fused.hpp, prefill_block, runs them): a
// key block is processed kPrefillStrip query rows at a time, the strip's scores (S = Q' K^T
// on the packed K^T, packed_scores), their online softmax, then their O += P V on the
// packed V (packed_values), so that a strip's scores stay in L1 from the GEMM that writes
// them to the GEMM that reads them as P.
//
// Why strips: a whole task's scores for a block (kPrefillQueryBlock rows x 272 floats, the
// score row stride with 16-lane vectors: 139 KB) do not fit a 48 KB L1, so the softmax and P V
// would read them back from L2; a strip of 32 rows keeps 35 KB. K^T and V of the block stream from
// L2 with the tile's own prefetch (gemm.hpp, kPrefetchRows). Each strip also computes only the keys
// some of its rows may see (visible_block_keys): on the causal diagonal a strip stops at its own
// last row instead of the block's end. The strip size is measured: docs/performance.md, "Constants
// and the measurements behind them".
//
// Arithmetic is that of the whole-block version: every score is one fma chain over the
// head dimension in order, every output element one fma chain over the keys in order; the
// keys left out weigh exactly 0 for every row of the strip. Results depend neither on
// where a strip starts in the task nor on the thread count.

#include <algorithm>

#include "../mask.hpp"
#include "gemm.hpp"

namespace ssmax::kernels {

/// Query rows per strip (docs/performance.md, "Constants and the measurements behind them").
inline constexpr index_t kPrefillStrip = 32;

namespace detail {

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

}  // namespace detail
}  // namespace ssmax::kernels
