#pragma once
// The GEMM micro-kernel of the attention kernels and the packing it reads: a register
// tile C (+)= A B sized to the architecture's vector registers, K^T packed per key
// block, and value rows copied zero-padded to whole vectors.

#include <algorithm>
#include <type_traits>

#include "../detail/simd.hpp"
#include "convert.hpp"

namespace ssmax::kernels::detail {

/// n rounded up to a multiple of w.
inline index_t round_up(index_t n, index_t w) { return (n + w - 1) / w * w; }

/// Row stride of the packed K^T for a block of nkp keys: nkp plus one vector.
inline index_t kt_stride(index_t nkp, index_t w) { return nkp + w; }

/// B rows gemm_tile prefetches ahead: its B panel streams from L2 (a key block's K^T or
/// V is 64 to 139 KB at d = 64 to 128, above L1), which the tile would otherwise wait on
/// (docs/performance.md, "Constants and the measurements behind them").
inline constexpr index_t kPrefetchRows = 8;

/// Register tile: C[MR x NV*W] (+)= A[MR x kc] B[kc x NV*W]. A element (r, p) is
/// a[r*lda + p] (broadcast), B rows are ldb apart, C rows ldc apart.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // float or double
          int MR,      // rows of the tile (accumulators MR x NV must fit the registers)
          int NV>      // vectors per tile row
inline void gemm_tile(index_t kc, const T* a, index_t lda, const T* b, index_t ldb, T* c,
                      index_t ldc, bool accumulate) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? S::load(c + r * ldc + v * W) : S::splat(T(0));
  for (index_t p = 0; p < kc; ++p) {
    ssmax::detail::prefetch_rows<NV * W * sizeof(T)>(b + (p + kPrefetchRows) * ldb);
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = S::load(b + p * ldb + v * W);
    for (int r = 0; r < MR; ++r) {
      const V av = S::splat(a[r * lda + p]);
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) S::store(c + r * ldc + v * W, acc[r][v]);
}

/// Calls tile(std::integral_constant<int, R>{}) with R = mr for mr in [First, MaxRows]
/// (MaxRows for a larger mr): a register tile's run-time row count made a template one.
template <int First,    // smallest row count
          int MaxRows,  // largest row count
          class Tile>   // callable (std::integral_constant<int, R>)
inline void with_rows(index_t mr, Tile&& tile) {
  if constexpr (First >= MaxRows) {
    tile(std::integral_constant<int, First>{});
  } else {
    if (mr <= First) return tile(std::integral_constant<int, First>{});
    with_rows<First + 1, MaxRows>(mr, tile);
  }
}

/// gemm_tile with a run-time row count mr in [1, 8].
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // float or double
          int NV>      // vectors per tile row
inline void gemm_rows(index_t mr, index_t kc, const T* a, index_t lda, const T* b, index_t ldb,
                      T* c, index_t ldc, bool accumulate) {
  with_rows<1, 8>(mr, [&](auto rows) {
    gemm_tile<Arch, T, decltype(rows)::value, NV>(kc, a, lda, b, ldb, c, ldc, accumulate);
  });
}

/// Tile shape per architecture: MR rows x NV vectors of accumulators, sized to the
/// register file (detail::vector_registers). With 32 registers (AVX-512, AArch64): 8 x 2,
/// measured fastest on AVX-512 (docs/performance.md, "Constants and the measurements behind
/// them"), and it divides the query blocks evenly; with 16 (SSE to AVX2): 6 x 2; scalar: 4 x 4.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
struct tile_shape {
  static constexpr int registers = ssmax::detail::vector_registers<Arch>;
  static constexpr int rows = registers == 0 ? 4 : (registers >= 32 ? 8 : 6);
  static constexpr int vectors = registers == 0 ? 4 : 2;
};

/// C[m x n] (+)= A[m x kc] B[kc x n], all row-major; n a multiple of the vector width.
/// Each C element is one fma chain over p = 0..kc-1 in order (deterministic).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
inline void gemm(index_t m, index_t n, index_t kc, const T* a, index_t lda, const T* b, index_t ldb,
                 T* c, index_t ldc, bool accumulate) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  constexpr int MR = tile_shape<Arch, T>::rows, NV = tile_shape<Arch, T>::vectors;
  index_t j = 0;
  for (; j + NV * W <= n; j += NV * W)
    for (index_t i = 0; i < m; i += MR)
      gemm_rows<Arch, T, NV>(std::min<index_t>(MR, m - i), kc, a + i * lda, lda, b + j, ldb,
                             c + i * ldc + j, ldc, accumulate);
  for (; j < n; j += W)
    for (index_t i = 0; i < m; i += MR)
      gemm_rows<Arch, T, 1>(std::min<index_t>(MR, m - i), kc, a + i * lda, lda, b + j, ldb,
                            c + i * ldc + j, ldc, accumulate);
}

/// Where row j of a block of rows lives, counted in elements from the block's first row
/// pointer: j * stride, or rows[j] * stride when the rows are scattered (rows[j] the row's
/// index from the first one: the pages of a paged KV cache, paged.hpp, whose K and V pools
/// share the indices but not, when their types differ, the strides). Implicit from a
/// stride, so that strided callers pass an index.
struct row_map {
  index_t stride = 0;                ///< elements between consecutive rows
  const index_t* offsets = nullptr;  ///< [rows] each row's index from the first, or null (j)
  row_map(index_t s = 0, const index_t* o = nullptr) : stride(s), offsets(o) {}  // NOLINT
  /// Offset of row j.
  index_t operator()(index_t j) const { return (offsets != nullptr ? offsets[j] : j) * stride; }
};

/// Widens n storage values src[0, n) (values of one row, from value 0) to dst (exact): W at
/// a time in registers for the 16- and 8-bit types (convert.hpp's vector loads), a copy
/// for float and double.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class Src>   // K/V storage type (storage.hpp) whose compute type is T
inline void widen(const Src* src, index_t n, T* dst) {
  using Simd = ssmax::detail::simd<Arch, T>;
  index_t c = 0;
  if constexpr (!std::is_same<Src, T>::value)
    for (; c + Simd::width <= n; c += Simd::width) Simd::store(dst + c, load_values<Arch>(src, c));
  for (; c < n; ++c) dst[c] = value_at(src, c);
}

/// Packs K^T of keys k0 + offset_of(j) (j < nk) into kt [d, ldk], zero-padded to nkp
/// columns. Tiles of 16 keys (one cache line of floats per write) and a row stride padded
/// past a multiple of 1 KiB (kt_stride) keep the columns from aliasing in the cache (a
/// transpose at a stride of 256 floats maps every column to one cache set). Keys stored in 16 or
/// 8 bits are widened to T here (exact: kernels/convert.hpp), once per call: a tile's 16 rows
/// kChunk dimensions at a time, in registers (widen), then transposed from that float copy.
template <class Arch,  // xsimd architecture tag or scalar_arch (the 16-bit widening)
          class T,     // compute type: float or double
          class Src>   // storage type of the keys (storage.hpp) whose compute type is T
inline void pack_kt(const Src* k0, row_map offset_of, index_t nk, index_t d, index_t nkp,
                    index_t ldk, T* kt) {
  constexpr index_t kTile = 16, kChunk = 64;
  index_t j0 = 0;
  for (; j0 + kTile <= nk; j0 += kTile) {
    const Src* key[kTile];
    for (index_t jj = 0; jj < kTile; ++jj) key[jj] = k0 + offset_of(j0 + jj);
    if constexpr (!std::is_same<Src, T>::value) {
      static_assert(kChunk % kQ8_0Block == 0, "a chunk is whole Q8_0 blocks");
      T wide[kTile][kChunk];
      for (index_t c0 = 0; c0 < d; c0 += kChunk) {
        const index_t cw = std::min(kChunk, d - c0);
        for (index_t jj = 0; jj < kTile; ++jj)
          widen<Arch>(key[jj] + c0 / values_per_element_v<Src>, cw, wide[jj]);
        for (index_t c = 0; c < cw; ++c)
          for (index_t jj = 0; jj < kTile; ++jj) kt[(c0 + c) * ldk + j0 + jj] = wide[jj][c];
      }
    } else {
      for (index_t c = 0; c < d; ++c)
        for (index_t jj = 0; jj < kTile; ++jj) kt[c * ldk + j0 + jj] = key[jj][c];
    }
  }
  for (index_t c = 0; c < d; ++c) {
    for (index_t j = j0; j < nk; ++j) kt[c * ldk + j] = value_at(k0 + offset_of(j), c);
    for (index_t j = nk; j < nkp; ++j) kt[c * ldk + j] = T(0);
  }
}

/// Copies nk rows of d elements, src + offset_of(j) (j < nk), into dst [nk, dp] with each
/// row zero-padded from d to dp: the GEMM's value operand. Contiguous rows also keep a
/// head's rows of a [B, S, H, d] tensor (H * d apart: 4 KiB at H = 8, d = 128) from all
/// sharing one L1 set. Rows stored in 16 or 8 bits are widened to T (exact, in registers).
template <class Arch,  // xsimd architecture tag or scalar_arch (the 16-bit widening)
          class T,     // compute type: float or double
          class Src>   // storage type of the rows (storage.hpp) whose compute type is T
inline void pad_rows(const Src* src, row_map offset_of, index_t nk, index_t d, index_t dp, T* dst) {
  for (index_t j = 0; j < nk; ++j) {
    widen<Arch>(src + offset_of(j), d, dst + j * dp);
    std::fill(dst + j * dp + d, dst + (j + 1) * dp, T(0));
  }
}

}  // namespace ssmax::kernels::detail
