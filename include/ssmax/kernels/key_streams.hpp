#pragma once
// The dot-product path of the attention kernels, for blocks of few query rows (decode):
// scores and values read K and V in place, in kKeyStreams runs of keys side by side; and
// the per-block choice between it and the packed GEMM (block_scores, block_values).

#include <algorithm>
#include <type_traits>

#include "../detail/simd.hpp"
#include "convert.hpp"
#include "gemm.hpp"
#include "plan.hpp"

namespace ssmax::kernels::detail {

/// Query rows per register block of dot4_rows and axpy4_rows. Beside the four key (or
/// value) vectors of one step, R rows hold 4 R accumulators (dot4_rows) or 4 R weights
/// (axpy4_rows): with 32 vector registers (AVX-512, AArch64) 4 rows (16 + 4 + a query
/// vector), with 16 (SSE to AVX2, 32-bit NEON) and for scalar_arch 2 rows.
template <class Arch>  // xsimd architecture tag or scalar_arch
inline constexpr index_t kRowBlock = ssmax::detail::vector_registers<Arch> >= 32 ? 4 : 2;

/// Dot products of R rows a[i][0, d) with four rows b[u][0, d): out[i * 4 + u] = a[i] .
/// b[u] for i < R, u < 4. Each vector of each b[u] is loaded, and widened to T in
/// registers when stored in 16 or 8 bits (exact), once for all R rows; never copied.
/// Numerical contract: every (i, u) is summed alone, in the same order whatever R and the
/// other rows: one W-lane fma chain over c < d - d % W in steps of W, reduce_add, then
/// a[i][c] * b[u][c] added for each tail c in increasing order; its error is that of a
/// recursive dot product of d terms, |error| <= d eps sum_c |a_c b_c| to first order.
/// With FMA instructions and d % W == 0 out[i * 4 + u] is bitwise the same for every R
/// (and as dot(a[i], b[u], d)). Scalar a * b + c (the tail; S::fma on scalar_arch and on
/// architectures without FMA) may be contracted into one FMA or not depending on the
/// loop around it (GCC's default -ffp-contract=fast): there results can differ with R,
/// and with any change of the surrounding code, by the rounding of a product.
template <class Arch,  // xsimd architecture tag or scalar_arch
          index_t R,   // rows of a: 1 to a few (kRowBlock<Arch> fills the register file)
          class T,     // compute type: float or double
          class B>     // storage type of the rows b (storage.hpp) whose compute type is T
inline void dot4_rows(const T* const* a, const B* const* b, index_t d, T* out) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  const B *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
  V s[R][4];
  for (index_t i = 0; i < R; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = S::splat(T(0));
  four_rows<Arch, B> keys(b);
  index_t c = 0;
  for (; c + W <= d; c += W) {
    V k[4];
    keys.load(c, k);
    for (index_t i = 0; i < R; ++i) {
      const V av = S::load(a[i] + c);
      s[i][0] = S::fma(av, k[0], s[i][0]);
      s[i][1] = S::fma(av, k[1], s[i][1]);
      s[i][2] = S::fma(av, k[2], s[i][2]);
      s[i][3] = S::fma(av, k[3], s[i][3]);
    }
  }
  for (index_t i = 0; i < R; ++i) {
    T r0 = S::reduce_add(s[i][0]), r1 = S::reduce_add(s[i][1]), r2 = S::reduce_add(s[i][2]),
      r3 = S::reduce_add(s[i][3]);
    const T* ai = a[i];
    for (index_t e = c; e < d; ++e) {  // tail: fewer than W elements, never read past d
      r0 += ai[e] * value_at(b0, e);
      r1 += ai[e] * value_at(b1, e);
      r2 += ai[e] * value_at(b2, e);
      r3 += ai[e] * value_at(b3, e);
    }
    out[i * 4] = r0, out[i * 4 + 1] = r1, out[i * 4 + 2] = r2, out[i * 4 + 3] = r3;
  }
}

/// The dot product of a[0, d) and b[0, d): dot4_rows for one row, so summed as each of
/// its products (numerical contract there).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class B>     // storage type of b whose compute type is T
inline T dot(const T* a, const B* b, index_t d) {
  const B* const bs[4] = {b, b, b, b};
  T out[4];
  dot4_rows<Arch, 1>(&a, bs, d, out);
  return out[0];
}

/// y[0, d) += alpha * x[0, d), x widened to T in registers when stored in 16 or 8 bits.
/// FoldScale (Q8_0 x, the opt-in int8 dot products): each block's scale multiplies alpha
/// (rounded once) instead of its values, y += (alpha * scale) * code.
template <class Arch,              // xsimd architecture tag or scalar_arch
          bool FoldScale = false,  // Q8_0 x: alpha * scale times the codes
          class T,                 // compute type: float or double
          class X>                 // storage type of x whose compute type is T
inline void axpy(T* y, T alpha, const X* x, index_t d) {
  using S = ssmax::detail::simd<Arch, T>;
  constexpr index_t W = S::width;
  if constexpr (FoldScale) {
    static_assert(std::is_same<X, block_q8_0>::value, "scales fold into Q8_0's weights");
    for (index_t b = 0; b < d / kQ8_0Block; ++b) {
      const auto va = S::splat(alpha * detail::q8_0_scale(x[b]));
      for (index_t c = b * kQ8_0Block; c < (b + 1) * kQ8_0Block; c += W)
        S::store(y + c,
                 S::fma(va, detail::int8_values<Arch>(x[b].qs + c % kQ8_0Block), S::load(y + c)));
    }
    return;
  }
  const auto va = S::splat(alpha);
  index_t c = 0;
  for (; c + W <= d; c += W) S::store(y + c, S::fma(va, load_values<Arch>(x, c), S::load(y + c)));
  for (; c < d; ++c) y[c] += alpha * value_at(x, c);
}

/// wb[i][u] = w[4 i + u] * (the scale of block b of Q8_0 row x[u]), rounded once, in every
/// lane, for i < R, u < 4.
template <class Arch, index_t R, class V>  // xsimd architecture tag or scalar_arch; rows; vector
inline void q8_0_scaled_weights(const float* w, const block_q8_0* const* x, index_t b,
                                V (&wb)[R][4]) {
  using S = ssmax::detail::simd<Arch, float>;
#if defined(__AVX512F__) && defined(__F16C__)
  if constexpr (std::is_base_of<xsimd::avx512f, Arch>::value) {
    // The four scales converted at once, each product broadcast by a permute.
    const __m128 dk = _mm_cvtph_ps(_mm_setr_epi16(
        static_cast<short>(bits_of(x[0][b].d)), static_cast<short>(bits_of(x[1][b].d)),
        static_cast<short>(bits_of(x[2][b].d)), static_cast<short>(bits_of(x[3][b].d)), 0, 0, 0,
        0));
    for (index_t i = 0; i < R; ++i) {
      const __m512 prod = _mm512_castps128_ps512(_mm_mul_ps(dk, _mm_loadu_ps(w + 4 * i)));
      for (int u = 0; u < 4; ++u) wb[i][u] = V(_mm512_permutexvar_ps(_mm512_set1_epi32(u), prod));
    }
    return;
  }
#endif
  for (int u = 0; u < 4; ++u) {
    const float scale = detail::q8_0_scale(x[u][b]);
    for (index_t i = 0; i < R; ++i) wb[i][u] = S::splat(w[i * 4 + u] * scale);
  }
}

/// For each of R rows y[i]: y[i][0, d) += w[4 i] x[0] + w[4 i + 1] x[1] + w[4 i + 2] x[2]
/// + w[4 i + 3] x[3]. Each vector of each x[u] is loaded, and widened to T in registers
/// when stored in 16 or 8 bits (exact), once for all R rows; never copied. Pre: the rows y[i]
/// do not overlap each other or the x[u].
/// Numerical contract: each element of each row is one fma chain in that order, y first
/// (vector part: fma(w3, x3, fma(w2, x2, fma(w1, x1, fma(w0, x0, y)))); tail elements: the
/// same sum left to right in scalar arithmetic), whatever R and the other rows: bitwise the
/// same as for R = 1 under the conditions of dot4_rows (FMA instructions, d % W == 0; the
/// scalar a * b + c may be contracted or not). Zero weights are multiplied like any other
/// (0 * inf is NaN): callers skip a row whose four weights are zero.
/// FoldScale (Q8_0 x, the opt-in int8 dot products): as axpy's, each weight times the
/// block's scale (rounded once) multiplies the codes.
template <class Arch,              // xsimd architecture tag or scalar_arch
          index_t R,               // rows of y: 1 to a few (kRowBlock<Arch> fills the registers)
          bool FoldScale = false,  // Q8_0 x: weight * scale times the codes
          class T,                 // compute type: float or double
          class X>                 // storage type of the rows x whose compute type is T
inline void axpy4_rows(T* const* y, const T* w, const X* const* x, index_t d) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  const X *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
  V wv[R][4];
  for (index_t i = 0; i < R; ++i)
    for (index_t u = 0; u < 4; ++u) wv[i][u] = S::splat(w[i * 4 + u]);
  if constexpr (FoldScale) {
    static_assert(std::is_same<X, block_q8_0>::value, "scales fold into Q8_0's weights");
    for (index_t b = 0; b < d / kQ8_0Block; ++b) {
      V wb[R][4];  // the weights times this block's scales
      q8_0_scaled_weights<Arch, R>(w, x, b, wb);
      for (index_t e = 0; e < kQ8_0Block; e += W) {
        V v[4];
        for (int u = 0; u < 4; ++u) v[u] = detail::int8_values<Arch>(x[u][b].qs + e);
        const index_t c = b * kQ8_0Block + e;
        for (index_t i = 0; i < R; ++i) {
          V acc = S::fma(wb[i][0], v[0], S::load(y[i] + c));
          acc = S::fma(wb[i][1], v[1], acc);
          acc = S::fma(wb[i][2], v[2], acc);
          S::store(y[i] + c, S::fma(wb[i][3], v[3], acc));
        }
      }
    }
    return;
  }
  four_rows<Arch, X> values(x);
  index_t c = 0;
  for (; c + W <= d; c += W) {
    V v[4];
    values.load(c, v);
    for (index_t i = 0; i < R; ++i) {
      V acc = S::fma(wv[i][0], v[0], S::load(y[i] + c));
      acc = S::fma(wv[i][1], v[1], acc);
      acc = S::fma(wv[i][2], v[2], acc);
      S::store(y[i] + c, S::fma(wv[i][3], v[3], acc));
    }
  }
  for (index_t i = 0; i < R; ++i) {
    T* yi = y[i];
    const T* wi = w + i * 4;
    for (index_t e = c; e < d; ++e)
      yi[e] = yi[e] + wi[0] * value_at(x0, e) + wi[1] * value_at(x1, e) + wi[2] * value_at(x2, e) +
              wi[3] * value_at(x3, e);
  }
}

/// Calls f(i, n) on [0, count) cut into register blocks: n = kRowBlock<Arch> rows at a
/// time, then once with the fewer rows left, n a std::integral_constant<index_t, N>.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class F>     // generic callable (index i, std::integral_constant<index_t, N>)
inline void for_row_blocks(index_t count, F&& f) {
  constexpr index_t N = kRowBlock<Arch>;
  index_t i = 0;
  for (; i + N <= count; i += N) f(i, std::integral_constant<index_t, N>{});
  const index_t left = count - i;
  if constexpr (N > 3)
    if (left == 3) return f(i, std::integral_constant<index_t, 3>{});
  if constexpr (N > 2)
    if (left == 2) return f(i, std::integral_constant<index_t, 2>{});
  if constexpr (N > 1)
    if (left == 1) return f(i, std::integral_constant<index_t, 1>{});
  static_assert(N <= 4, "the rest of a block takes 1 to 3 rows");
}

/// Key runs the dot-product path walks side by side: a key block of nk keys is read as
/// kKeyStreams contiguous runs of nk / kKeyStreams keys, one step of each per iteration,
/// so that several memory streams are in flight (the count is measured: docs/performance.md,
/// "Constants and the measurements behind them").
inline constexpr index_t kKeyStreams = 4;

/// Query rows of a dot-product block that share one kv head: scratch rows [first, first +
/// count) read that head's key (or value) rows base + offset_of(j), j < nk (row_map).
template <class T>  // storage type of the keys or values (storage.hpp)
struct kv_group {
  index_t first = 0;        ///< first scratch row
  index_t count = 0;        ///< scratch rows reading this head
  const T* base = nullptr;  ///< the head's row for key 0 of the block
};

/// Visits every (scratch row, key) pair of a block of nk keys in kKeyStreams runs, each
/// group's rows together, so that a kernel loads (and widens) each key row once for all of
/// them. For each group, step(r0, r1, t, run, x) for t < run = nk / kKeyStreams covers its
/// rows [r0, r1) and the keys t + u * run, whose rows are x[u] = group.base + offset_of(t + u *
/// run) (u < kKeyStreams; rows: a stride, or a paged cache's row offsets, gemm.hpp
/// row_map); tail(r, j, x) covers each leftover key j >= kKeyStreams * run, row x, for
/// each row r.
/// With keys_outer the groups are the inner loop (use it when the heads of one key are
/// adjacent in memory, as in [S, H, d]: each step then reads kKeyStreams contiguous runs
/// across heads); otherwise each group's keys are walked in turn. Keys are visited in the
/// same order for every row either way: t increasing, then the leftover keys.
template <class T,     // storage type of the keys or values (storage.hpp)
          class Step,  // callable (index r0, index r1, index t, index run, const T* const* x)
          class Tail>  // callable (index r, index j, const T* x)
inline void walk_key_streams(const kv_group<T>* groups, index_t n_groups, row_map offset_of,
                             index_t nk, bool keys_outer, Step&& step, Tail&& tail) {
  const index_t run = nk / kKeyStreams;
  const auto visit = [&](index_t g, index_t t) {
    const kv_group<T>& group = groups[g];
    const T* x[kKeyStreams];
    for (index_t u = 0; u < kKeyStreams; ++u) x[u] = group.base + offset_of(t + u * run);
    step(group.first, group.first + group.count, t, run, x);
  };
  if (keys_outer) {
    for (index_t t = 0; t < run; ++t)
      for (index_t g = 0; g < n_groups; ++g) visit(g, t);
  } else {
    for (index_t g = 0; g < n_groups; ++g)
      for (index_t t = 0; t < run; ++t) visit(g, t);
  }
  for (index_t g = 0; g < n_groups; ++g)
    for (index_t j = kKeyStreams * run; j < nk; ++j)
      for (index_t r = groups[g].first; r < groups[g].first + groups[g].count; ++r)
        tail(r, j, groups[g].base + offset_of(j));
}

/// Scores by dot products: s[r*lds + j] = qs[r*d, +d) . key(j) for every scratch row r of
/// every group, j < nk, key(j) = group.base + krows(j) (read in place, any storage type,
/// each key vector loaded and widened once per register block of a group's rows:
/// dot4_rows, whose numerical contract holds for each score).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class K>     // storage type of the keys whose compute type is T
inline void dot_scores(const T* qs, index_t d, const kv_group<K>* groups, index_t n_groups,
                       row_map krows, index_t nk, bool keys_outer, T* s, index_t lds) {
  static_assert(kKeyStreams == 4, "dot4_rows reads one key of each run");
  walk_key_streams(
      groups, n_groups, krows, nk, keys_outer,
      [&](index_t r0, index_t r1, index_t t, index_t run, const K* const* k) {
        for_row_blocks<Arch>(r1 - r0, [&](index_t i, auto rows) {
          constexpr index_t R = decltype(rows)::value;
          const T* a[R];
          for (index_t e = 0; e < R; ++e) a[e] = qs + (r0 + i + e) * d;
          T out[R * kKeyStreams];
          dot4_rows<Arch, R>(a, k, d, out);
          for (index_t e = 0; e < R; ++e)
            for (index_t u = 0; u < kKeyStreams; ++u)
              s[(r0 + i + e) * lds + t + u * run] = out[e * kKeyStreams + u];
        });
      },
      [&](index_t r, index_t j, const K* k) { s[r * lds + j] = dot<Arch>(qs + r * d, k, d); });
}

/// Values by scaled sums: o[r*dp, +d) += sum_j p[r*ldp + j] * value(j) for every scratch
/// row r of every group, j < nk, value(j) = group.base + vrows(j), each row's sum in key
/// order (walk_key_streams; axpy4_rows' numerical contract per step). A row skips a step
/// whose four weights are all zero (masked or flushed keys cost no reads); a zero weight
/// in a step with a nonzero one is multiplied like any other, so a non-finite value behind
/// it reaches o (0 x NaN, as docs/numerics.md says). Values read in place, each vector
/// loaded and widened once per register block of the rows that use it.
/// FoldScale: Q8_0 values with each block's scale folded into the weight (axpy4_rows).
template <class Arch,              // xsimd architecture tag or scalar_arch
          bool FoldScale = false,  // Q8_0 values: weight * scale times the codes
          class T,                 // compute type: float or double
          class Vs>                // storage type of the values whose compute type is T
inline void dot_values(const T* p, index_t ldp, const kv_group<Vs>* groups, index_t n_groups,
                       row_map vrows, index_t nk, index_t d, bool keys_outer, T* o, index_t dp) {
  static_assert(kKeyStreams == 4, "axpy4_rows reads one value of each run");
  constexpr index_t N = kRowBlock<Arch>;
  walk_key_streams(
      groups, n_groups, vrows, nk, keys_outer,
      [&](index_t r0, index_t r1, index_t t, index_t run, const Vs* const* v) {
        // The rows with a nonzero weight, gathered N at a time.
        T* y[N];
        T w[N * kKeyStreams];
        index_t n = 0;
        for (index_t r = r0; r < r1; ++r) {
          const T* pr = p + r * ldp + t;
          T* wr = w + n * kKeyStreams;
          wr[0] = pr[0], wr[1] = pr[run], wr[2] = pr[2 * run], wr[3] = pr[3 * run];
          if (wr[0] == T(0) && wr[1] == T(0) && wr[2] == T(0) && wr[3] == T(0)) continue;
          y[n++] = o + r * dp;
          if (n == N) {
            axpy4_rows<Arch, N, FoldScale>(y, w, v, d);
            n = 0;
          }
        }
        for_row_blocks<Arch>(n, [&](index_t, auto rows) {  // n < N: one call
          axpy4_rows<Arch, decltype(rows)::value, FoldScale>(y, w, v, d);
        });
      },
      [&](index_t r, index_t j, const Vs* v) {
        const T w = p[r * ldp + j];
        if (w != T(0)) axpy<Arch, FoldScale>(o + r * dp, w, v, d);
      });
}

/// Scores of one key block: s[r*lds + j] = qs[r*d, +d) . key(j) for r < rows, j < nk,
/// where key(j) = k0 + krows(j) (strided, or a paged cache's rows). Uses dot products for rows <=
/// kDotMaxRows, else packs the block's K^T into kt (packed_kt_elements(d, W) elements) and runs the
/// GEMM, which also writes the padding columns [nk, round_up(nk, W)) of s: lds must leave room for
/// them.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class K>     // storage type of the keys whose compute type is T
inline void block_scores(const T* qs, index_t rows, index_t d, const K* k0, row_map krows,
                         index_t nk, T* s, index_t lds, T* kt) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  if (rows <= kDotMaxRows) {
    const kv_group<K> all{0, rows, k0};
    dot_scores<Arch>(qs, d, &all, 1, krows, nk, false, s, lds);
    return;
  }
  const index_t nkp = round_up(nk, W), ldk = kt_stride(nkp, W);
  pack_kt<Arch>(k0, krows, nk, d, nkp, ldk, kt);
  gemm<Arch>(rows, nkp, d, qs, d, kt, ldk, s, lds, false);
}

/// o[r*dp, +d) += sum_j p[r*ldp + j] * value(j) for r < rows, j < nk, value(j) =
/// v0 + vrows(j) (strided, or a paged cache's rows). For rows > kDotMaxRows the GEMM runs
/// over dp columns: when d < dp, or the rows are not strided, the block is first copied,
/// zero-padded, into vp (padded_v_elements(d, W) elements), and o's padding stays 0;
/// values stored in 16 or 8 bits are always copied so, widened to T.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class Vs>    // storage type of the values whose compute type is T
inline void block_values(const T* p, index_t ldp, index_t rows, const Vs* v0, row_map vrows,
                         index_t nk, index_t d, index_t dp, T* o, T* vp) {
  if (rows <= kDotMaxRows) {
    const kv_group<Vs> all{0, rows, v0};
    dot_values<Arch>(p, ldp, &all, 1, vrows, nk, d, false, o, dp);
    return;
  }
  const T* b = vp;
  index_t ldb = dp;
  if constexpr (std::is_same<T, Vs>::value) {
    if (vrows.offsets == nullptr) {  // strided rows of T: read in place
      b = v0;
      ldb = vrows.stride;
    }
  }
  if (b == vp || d != dp) {
    pad_rows<Arch>(v0, vrows, nk, d, dp, vp);
    b = vp;
    ldb = dp;
  }
  gemm<Arch>(rows, dp, nk, p, ldp, b, ldb, o, dp, true);
}

}  // namespace ssmax::kernels::detail
