#pragma once
// The dot-product path of the attention kernels, for blocks of few query rows (decode):
// scores and values read K and V in place, in kKeyStreams runs of keys side by side; and
// the per-block choice between it and the packed GEMM (block_scores, block_values).

#include <algorithm>

#include "../detail/simd.hpp"
#include "convert.hpp"
#include "gemm.hpp"
#include "plan.hpp"

namespace ssmax::kernels::detail {

/// Four dot products of a[0, d) with the rows b0..b3, written to out[0..3]. The rows may
/// be stored in 16 bits: widened to T in registers (exact), never copied.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class B>     // storage type of the rows b (storage.hpp) whose compute type is T
inline void dot4(const T* a, const B* b0, const B* b1, const B* b2, const B* b3, index_t d,
                 T* out) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  V s0 = S::splat(T(0)), s1 = s0, s2 = s0, s3 = s0;
  index_t c = 0;
  for (; c + W <= d; c += W) {
    const V av = S::load(a + c);
    s0 = S::fma(av, load_compute<Arch>(b0 + c), s0);
    s1 = S::fma(av, load_compute<Arch>(b1 + c), s1);
    s2 = S::fma(av, load_compute<Arch>(b2 + c), s2);
    s3 = S::fma(av, load_compute<Arch>(b3 + c), s3);
  }
  T r0 = S::reduce_add(s0), r1 = S::reduce_add(s1), r2 = S::reduce_add(s2), r3 = S::reduce_add(s3);
  for (; c < d; ++c) {  // tail: fewer than W elements, never read past d
    r0 += a[c] * to_compute(b0[c]);
    r1 += a[c] * to_compute(b1[c]);
    r2 += a[c] * to_compute(b2[c]);
    r3 += a[c] * to_compute(b3[c]);
  }
  out[0] = r0, out[1] = r1, out[2] = r2, out[3] = r3;
}

/// The dot product of a[0, d) and b[0, d), summed as dot4 sums each of its four.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class B>     // storage type of b whose compute type is T
inline T dot(const T* a, const B* b, index_t d) {
  T out[4];
  dot4<Arch>(a, b, b, b, b, d, out);
  return out[0];
}

/// y[0, d) += alpha * x[0, d), x widened to T in registers when stored in 16 bits.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class X>     // storage type of x whose compute type is T
inline void axpy(T* y, T alpha, const X* x, index_t d) {
  using S = ssmax::detail::simd<Arch, T>;
  constexpr index_t W = S::width;
  const auto va = S::splat(alpha);
  index_t c = 0;
  for (; c + W <= d; c += W) S::store(y + c, S::fma(va, load_compute<Arch>(x + c), S::load(y + c)));
  for (; c < d; ++c) y[c] += alpha * to_compute(x[c]);
}

/// y[0, d) += w[0] x0 + w[1] x1 + w[2] x2 + w[3] x3, one fma chain per element in that
/// order; the rows x widened to T in registers when stored in 16 bits.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class X>     // storage type of the rows x whose compute type is T
inline void axpy4(T* y, const T* w, const X* x0, const X* x1, const X* x2, const X* x3, index_t d) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  const V w0 = S::splat(w[0]), w1 = S::splat(w[1]), w2 = S::splat(w[2]), w3 = S::splat(w[3]);
  index_t c = 0;
  for (; c + W <= d; c += W) {
    V acc = S::fma(w0, load_compute<Arch>(x0 + c), S::load(y + c));
    acc = S::fma(w1, load_compute<Arch>(x1 + c), acc);
    acc = S::fma(w2, load_compute<Arch>(x2 + c), acc);
    S::store(y + c, S::fma(w3, load_compute<Arch>(x3 + c), acc));
  }
  for (; c < d; ++c)
    y[c] = y[c] + w[0] * to_compute(x0[c]) + w[1] * to_compute(x1[c]) + w[2] * to_compute(x2[c]) +
           w[3] * to_compute(x3[c]);
}

/// Key runs the dot-product path walks side by side: a key block of nk keys is read as
/// kKeyStreams contiguous runs of nk / kKeyStreams keys, one step of each per iteration,
/// so that several memory streams are in flight. Measured on one core of the development
/// machine (AMD EPYC, AVX2), reading 256 MiB of [S, H, d] keys and values for 8 heads: 16
/// to 19 GB/s with 4 runs, 13 to 15 GB/s with one, 15 to 18 with 8, 13 with 16; software
/// prefetching on top of 4 runs gained nothing.
inline constexpr index_t kKeyStreams = 4;

/// Query rows of a dot-product block that share one kv head: scratch rows [first, first +
/// count) read the keys (or values) rows base + j * stride, j < nk, of that head.
template <class T>  // storage type of the keys or values (storage.hpp)
struct head_rows {
  index_t first = 0;        ///< first scratch row
  index_t count = 0;        ///< scratch rows reading this head
  const T* base = nullptr;  ///< the head's row for key 0 of the block
};

/// Visits every (scratch row, key) pair of a block of nk keys in kKeyStreams runs. For
/// each row r of each group, step(r, t, run, x) for t < run = nk / kKeyStreams covers the
/// keys t + u * run, whose rows are x[u] = group.base + rows(t + u * run) (u <
/// kKeyStreams; rows: a stride, or a paged cache's row offsets, gemm.hpp row_map);
/// tail(r, j, x) covers each leftover key j >= kKeyStreams * run, row x. With
/// keys_outer the groups are the inner loop (use it when the heads of one key are adjacent
/// in memory, as in [S, H, d]: each step then reads kKeyStreams contiguous runs across
/// heads); otherwise each group's keys are walked in turn. Rows and keys are visited in the
/// same order within each row either way.
template <class T,     // storage type of the keys or values (storage.hpp)
          class Step,  // callable (index r, index t, index run, const T* const* x)
          class Tail>  // callable (index r, index j, const T* x)
inline void walk_key_streams(const head_rows<T>* groups, index_t n_groups, row_map rows, index_t nk,
                             bool keys_outer, Step&& step, Tail&& tail) {
  const index_t run = nk / kKeyStreams;
  const auto visit = [&](index_t g, index_t t) {
    const head_rows<T>& hr = groups[g];
    const T* x[kKeyStreams];
    for (index_t u = 0; u < kKeyStreams; ++u) x[u] = hr.base + rows(t + u * run);
    for (index_t r = hr.first; r < hr.first + hr.count; ++r) step(r, t, run, x);
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
        tail(r, j, groups[g].base + rows(j));
}

/// Scores by dot products: s[r*lds + j] = qs[r*d, +d) . key(j) for every scratch row r of
/// every group, j < nk, key(j) = group.base + krows(j) (read in place, any storage type).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class K>     // storage type of the keys whose compute type is T
inline void dot_scores(const T* qs, index_t d, const head_rows<K>* groups, index_t n_groups,
                       row_map krows, index_t nk, bool keys_outer, T* s, index_t lds) {
  static_assert(kKeyStreams == 4, "dot4 reads one key of each run");
  walk_key_streams(
      groups, n_groups, krows, nk, keys_outer,
      [&](index_t r, index_t t, index_t run, const K* const* k) {
        T out[kKeyStreams];
        dot4<Arch>(qs + r * d, k[0], k[1], k[2], k[3], d, out);
        for (index_t u = 0; u < kKeyStreams; ++u) s[r * lds + t + u * run] = out[u];
      },
      [&](index_t r, index_t j, const K* k) { s[r * lds + j] = dot<Arch>(qs + r * d, k, d); });
}

/// Values by scaled sums: o[r*dp, +d) += sum_j p[r*ldp + j] * value(j) for every scratch
/// row r of every group, j < nk, value(j) = group.base + vrows(j). Keys whose weights
/// are all zero are skipped (masked or flushed keys cost no reads). Values read in place.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class Vs>    // storage type of the values whose compute type is T
inline void dot_values(const T* p, index_t ldp, const head_rows<Vs>* groups, index_t n_groups,
                       row_map vrows, index_t nk, index_t d, bool keys_outer, T* o, index_t dp) {
  static_assert(kKeyStreams == 4, "axpy4 reads one value of each run");
  walk_key_streams(
      groups, n_groups, vrows, nk, keys_outer,
      [&](index_t r, index_t t, index_t run, const Vs* const* v) {
        const T* pr = p + r * ldp + t;
        const T w[kKeyStreams] = {pr[0], pr[run], pr[2 * run], pr[3 * run]};
        if (w[0] != T(0) || w[1] != T(0) || w[2] != T(0) || w[3] != T(0))
          axpy4<Arch>(o + r * dp, w, v[0], v[1], v[2], v[3], d);
      },
      [&](index_t r, index_t j, const Vs* v) {
        const T w = p[r * ldp + j];
        if (w != T(0)) axpy<Arch>(o + r * dp, w, v, d);
      });
}

/// Scores of one key block: s[r*lds + j] = qs[r*d, +d) . key(j) for r < rows, j < nk,
/// where key(j) = k0 + j*kstride. Uses dot products for rows <= kDotMaxRows, else packs
/// the block's K^T into kt (packed_kt_elements(d, W) elements) and runs the GEMM, which also
/// writes the padding columns [nk, round_up(nk, W)) of s: lds must leave room for them.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class K>     // storage type of the keys whose compute type is T
inline void block_scores(const T* qs, index_t rows, index_t d, const K* k0, index_t kstride,
                         index_t nk, T* s, index_t lds, T* kt) {
  constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
  if (rows <= kDotMaxRows) {
    const head_rows<K> all{0, rows, k0};
    dot_scores<Arch>(qs, d, &all, 1, kstride, nk, false, s, lds);
    return;
  }
  const index_t nkp = round_up(nk, W), ldk = kt_stride(nkp, W);
  pack_kt<Arch>(k0, kstride, nk, d, nkp, ldk, kt);
  gemm<Arch>(rows, nkp, d, qs, d, kt, ldk, s, lds, false);
}

/// o[r*dp, +d) += sum_j p[r*ldp + j] * value(j) for r < rows, j < nk, value(j) =
/// v0 + j*vstride. For rows > kDotMaxRows the GEMM runs over dp columns: when d < dp the
/// block is first copied, zero-padded, into vp (padded_v_elements(d, W) elements), and o's
/// padding stays 0; values stored in 16 bits are always copied so, widened to T.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class Vs>    // storage type of the values whose compute type is T
inline void block_values(const T* p, index_t ldp, index_t rows, const Vs* v0, index_t vstride,
                         index_t nk, index_t d, index_t dp, T* o, T* vp) {
  if (rows <= kDotMaxRows) {
    const head_rows<Vs> all{0, rows, v0};
    dot_values<Arch>(p, ldp, &all, 1, vstride, nk, d, false, o, dp);
    return;
  }
  const T* b = vp;
  index_t ldb = dp;
  if constexpr (std::is_same<T, Vs>::value) {
    b = v0;
    ldb = vstride;
  }
  if (b == vp || d != dp) {
    pad_rows<Arch>(v0, vstride, nk, d, dp, vp);
    b = vp;
    ldb = dp;
  }
  gemm<Arch>(rows, dp, nk, p, ldp, b, ldb, o, dp, true);
}

}  // namespace ssmax::kernels::detail
