#pragma once
// Row kernels: softmax(m * x) over one contiguous row, written once for every
// architecture through ssmax::detail::simd<Arch, T>. Three passes over memory at most:
//   1. max of x,
//   2. y_i = exp(m (x_i - max)) stored while summing (fused),
//   3. y_i *= 1 / sum.
// Kernels do not validate; their preconditions are stated on each function.

#include <algorithm>
#include <cmath>
#include <limits>

#include "../detail/simd.hpp"
#include "../row_state.hpp"

namespace ssmax::kernels {

/// Vectors summed into each accumulator lane before the partial sum is added to a
/// compensated double total. Bounds the summation error to about
/// (kLanesPerBlock + log2(4 W) + 2) ulp of T whatever n is, at the cost of one horizontal
/// add and one compensated add per block of kLanesPerBlock * 4 * W elements.
inline constexpr index_t kLanesPerBlock = 32;

/// Largest element of x[0, n). Pre: n >= 1. When x holds a NaN the result is unspecified
/// (NaN, -inf or an element of x): scaled_softmax_row detects NaN rows itself.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
T row_max(const T* x, index_t n) {
  using S = ssmax::detail::simd<Arch, T>;
  constexpr index_t W = S::width;
  const auto lowest = S::splat(-std::numeric_limits<T>::infinity());
  auto m0 = lowest, m1 = lowest, m2 = lowest, m3 = lowest;
  const index_t n_unrolled = n - n % (4 * W), n_vec = n - n % W;
  index_t i = 0;
  for (; i < n_unrolled; i += 4 * W) {
    m0 = S::max(m0, S::load(x + i));
    m1 = S::max(m1, S::load(x + i + W));
    m2 = S::max(m2, S::load(x + i + 2 * W));
    m3 = S::max(m3, S::load(x + i + 3 * W));
  }
  for (; i < n_vec; i += W) m0 = S::max(m0, S::load(x + i));
  T best = S::reduce_max(S::max(S::max(m0, m1), S::max(m2, m3)));
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;  // tail: fewer than W elements
  return best;
}

/// The exp argument below which pass 2 writes an exact 0 for a row of n terms:
/// log(smallest normal T) + log(n). A weight flushed so was below n * min_normal / sum
/// <= n * min_normal (about 1e-32 at n = 10^6 in float) and would otherwise have been a
/// subnormal, which costs some CPUs a microcode assist per element: keeping every stored
/// weight 0 or normal keeps the kernels' speed independent of the logits' spread.
template <class T>  // float or double
inline T flush_threshold(index_t n) {
  return static_cast<T>(std::log(static_cast<double>(std::numeric_limits<T>::min())) +
                        std::log(static_cast<double>(n)));
}

/// The flushed exp of every softmax weight (forward, backward, fused and row kernels),
/// lane by lane: exp(t) where t >= flush_below, exactly 0 where t < flush_below (masked
/// logits, t = -inf, included), NaN where t is NaN. The argument is clamped before the exp,
/// so that exp never sees a NaN (xsimd 8.1 converts its argument to an integer, which is
/// undefined for NaN) or a value whose result would be subnormal (see flush_threshold).
template <class S>  // ssmax::detail::simd<Arch, T> (any architecture, scalar_arch included)
inline typename S::vec flushed_exp(const typename S::vec& t, const typename S::vec& flush_below) {
  const auto e =
      S::select(t < flush_below, S::splat(0), S::exp(S::select(t >= flush_below, t, flush_below)));
  return S::select(S::is_nan(t), t, e);
}

/// Pass 2: y_i = exp(m (x_i - pivot)) for i in [0, n), returning sum_i y_i.
/// Pre: m > 0 and finite, pivot finite and >= every x_i (HideNegInf: m < 0 and finite, pivot
/// finite and <= every x_i that is not -inf). x_i = -inf gives y_i = 0, and so
/// does every m (x_i - pivot) < flush_below (see flush_threshold).
/// y may equal x (in place) or be nullptr (sum only). NaN in x makes the sum NaN.
/// Error: each y_i carries the exp's error (simd<Arch,T>::exp) plus (1 + |m (x_i - pivot)|)
/// half-ulps from forming the argument; the sum adds at most about
/// (kLanesPerBlock + log2(4 W) + 1) ulp relative, independent of n.
/// With HideNegInf (the negative multipliers' pass, m < 0 and pivot the smallest entry
/// that is not -inf): x_i = -inf still gives y_i = 0, although m (x_i - pivot) is +inf.
template <class Arch,               // xsimd architecture tag or scalar_arch
          class T,                  // float or double
          bool HideNegInf = false>  // m < 0: weigh -inf entries 0 explicitly
double exp_and_sum(const T* x, T* y, index_t n, T m, T pivot, T flush_below) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  constexpr index_t kBlock = kLanesPerBlock * 4 * W;
  const V vm = S::splat(m), vp = S::splat(pivot);
  const V lowest = S::splat(flush_below);
  auto weight = [&](const V& xv) {
    const V e = flushed_exp<S>(vm * (xv - vp), lowest);
    if constexpr (HideNegInf)
      return S::select(xv == S::splat(-std::numeric_limits<T>::infinity()), S::splat(T(0)), e);
    else
      return e;
  };
  auto term = [&](index_t at) {
    const V e = weight(S::load(x + at));
    if (y != nullptr) S::store(y + at, e);
    return e;
  };

  ssmax::detail::compensated_sum total;  // blocks add without error growth, in float and double
  index_t i = 0;
  const index_t n_vec = n - n % W;
  while (i < n_vec) {
    const index_t block_end = std::min(n_vec, i + kBlock);
    V a0 = S::splat(T(0)), a1 = a0, a2 = a0, a3 = a0;
    const index_t unrolled_end = i + (block_end - i) / (4 * W) * (4 * W);
    for (; i < unrolled_end; i += 4 * W) {
      a0 += term(i);
      a1 += term(i + W);
      a2 += term(i + 2 * W);
      a3 += term(i + 3 * W);
    }
    for (; i < block_end; i += W) a0 += term(i);
    total.add(static_cast<double>(S::reduce_add((a0 + a1) + (a2 + a3))));
  }
  if (i < n) {  // tail: pad to one vector with -inf, whose weight is exactly 0
    T in[W], out[W];
    const index_t rest = n - i;
    std::fill(in, in + W, -std::numeric_limits<T>::infinity());
    std::copy(x + i, x + n, in);
    const V e = weight(S::load(in));
    S::store(out, e);
    if (y != nullptr) std::copy(out, out + rest, y + i);
    total.add(static_cast<double>(S::reduce_add(e)));
  }
  return total.value();
}

/// Pass 3: y_i *= factor for i in [0, n).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
void scale_row(T* y, index_t n, T factor) {
  using S = ssmax::detail::simd<Arch, T>;
  constexpr index_t W = S::width;
  const auto f = S::splat(factor);
  const index_t n_vec = n - n % W;
  index_t i = 0;
  for (; i < n_vec; i += W) S::store(y + i, S::load(y + i) * f);
  for (; i < n; ++i) y[i] *= factor;
}

/// The rare rows that pass 2 cannot take: m = 0 (uniform over the entries that are not
/// -inf), rows holding +inf (uniform over the +inf entries, the limit of softmax) and rows
/// of only -inf (zeros, empty state). Any NaN makes every output NaN. Writes y when
/// y != nullptr; returns the state.
template <class T>  // float or double
row_state<T> uniform_row(const T* x, T* y, index_t n, bool over_infinite) {
  const T inf = std::numeric_limits<T>::infinity();
  auto chosen = [&](T v) { return over_infinite ? v == inf : v != -inf; };
  index_t count = 0;
  bool has_nan = false;
  for (index_t i = 0; i < n; ++i) {
    count += chosen(x[i]) ? 1 : 0;
    has_nan = has_nan || std::isnan(x[i]);
  }
  const T nan = std::numeric_limits<T>::quiet_NaN();
  if (count == 0 && !has_nan) {  // nothing visible
    if (y != nullptr) std::fill(y, y + n, T(0));
    return {};
  }
  if (y != nullptr) {
    const T w = T(1) / static_cast<T>(count);
    for (index_t i = 0; i < n; ++i) y[i] = has_nan ? nan : (chosen(x[i]) ? w : T(0));
  }
  if (has_nan) return {nan, nan};
  return {over_infinite ? inf : T(0), static_cast<T>(count)};
}

/// softmax(m * x) of one row for m < 0 (scaled_softmax_row's branch): softmax over
/// m x_i of the entries that are not -inf, pivot M = m * min_i {x_i : x_i > -inf}. The -inf
/// entries (masked) weigh 0 whatever the sign of m; +inf entries weigh 0 (m * inf = -inf);
/// a row with no finite visible entry and no NaN gives zeros and the empty state; any NaN
/// makes the row NaN (pass 2's sum). Same error bound as the m > 0 rows with |m|.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
row_state<T> negative_softmax_row(const T* x, T* y, index_t n, T m, index_t visible) {
  const T inf = std::numeric_limits<T>::infinity();
  T x_min = inf;  // smallest entry that is not -inf (a scalar pass: m < 0 is rare)
  bool has_nan = false;
  for (index_t i = 0; i < n; ++i) {
    if (x[i] > -inf && x[i] < x_min) x_min = x[i];
    has_nan = has_nan || std::isnan(x[i]);
  }
  if (!(x_min < inf)) {  // every entry -inf, +inf or NaN: zeros or NaN
    const T fill = has_nan ? std::numeric_limits<T>::quiet_NaN() : T(0);
    if (y != nullptr) std::fill(y, y + n, fill);
    return has_nan ? row_state<T>{fill, fill} : row_state<T>{};
  }
  const double sum =
      exp_and_sum<Arch, T, true>(x, y, n, m, x_min, flush_threshold<T>(visible > 0 ? visible : n));
  if (y != nullptr) scale_row<Arch>(y, n, static_cast<T>(1.0 / sum));
  return {m * x_min, static_cast<T>(sum)};
}

/// softmax(m * x) of one row, written to y (or, with y == nullptr, only the state).
///   y_i = exp(m x_i - M) / sum_j exp(m x_j - M),  M = max_j m x_j.
/// Pre: n >= 1; m finite (m < 0: negative_softmax_row); y == x or y does not overlap x;
/// visible, when > 0, is
/// the number of entries that are not -inf (masked), and sets the flush threshold as the
/// row's n would (attention rows whose masked keys sit among the visible ones pass it).
/// Contract: no overflow for any finite x and m (the max is subtracted before exp);
/// x_i = -inf has weight 0; a row of only -inf gives zeros and the empty state;
/// m = 0 gives equal weights over the entries that are not -inf; +inf entries share the
/// weight equally (state max = +inf), also when m = 0 (0 * inf has no limit: the +inf
/// rule wins); any NaN makes the whole row NaN.
/// Error: |y_i - exact_i| <= eps exact_i (exp_ulp + 4 + sum_ulp + 2 E|t| + 2 |t_i|)
/// + 2 n min_normal, with t_i = m (x_i - max), E|t| = sum_i exact_i |t_i|, exp_ulp = 2
/// (tests/test_exp.cpp), sum_ulp = kLanesPerBlock + log2(4 W) + 2; the last term covers the
/// weights flushed to 0 (see flush_threshold). Derived in tests/support/row_check.hpp,
/// which the tests apply to every architecture.
/// The returned state has max = m * max_i x_i, which may overflow to +inf when m > 1
/// and x is near the largest finite T.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
row_state<T> scaled_softmax_row(const T* x, T* y, index_t n, T m, index_t visible = 0) {
  const T inf = std::numeric_limits<T>::infinity();
  if (m < T(0)) return negative_softmax_row<Arch>(x, y, n, m, visible);
  const T x_max = row_max<Arch>(x, n);
  // row_max may miss a NaN; one that it misses still reaches pass 2's sum, except in the
  // rows that uniform_row takes, and it scans for NaN itself.
  const bool common = x_max > -inf && x_max < inf && m != T(0);
  if (!common) return uniform_row(x, y, n, x_max == inf);
  const double sum =
      exp_and_sum<Arch>(x, y, n, m, x_max, flush_threshold<T>(visible > 0 ? visible : n));
  if (y != nullptr) scale_row<Arch>(y, n, static_cast<T>(1.0 / sum));
  return {m * x_max, static_cast<T>(sum)};
}

}  // namespace ssmax::kernels
