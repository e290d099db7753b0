#pragma once
// Row backward kernels: the gradient of a loss L through p = softmax(m z) over one
// contiguous row, written once for every architecture through ssmax::detail::simd<Arch, T>.
//
// With upstream g = dL/dp, c = sum_j p_j g_j and zbar = sum_j p_j z_j:
//   dL/dz_i = m p_i (g_i - c)
//   dL/dm   = sum_i z_i p_i (g_i - c) = sum_i p_i (z_i - zbar) (g_i - c)
// The second form (a covariance under p) equals the first whenever sum_i p_i = 1, and
// does not cancel catastrophically when the logits share a large offset, so the kernels
// use it. Two passes over memory: (1) c and zbar, (2) dL/dz stored while dL/dm is summed.
// The _lse kernel recomputes p_i = exp(m z_i - lse) from the saved log-sum-exp in pass 1
// (normalising it by its sum), keeping it in dz until pass 2 overwrites it.
// Kernels do not validate; their preconditions are stated on each function.

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "../detail/simd.hpp"
#include "row_softmax.hpp"

namespace ssmax::kernels {

/// sum_i term_i for i in [0, n), K sums at once, in the blocked, compensated scheme of
/// exp_and_sum (kernels/row_softmax.hpp): lanes summed over blocks of kLanesPerBlock * 2 W
/// elements, each block's partial added to a compensated double total, so the error is
/// about (kLanesPerBlock + log2(2 W) + 2) ulp of T relative to sum_i |term_i|, whatever n.
/// term(s, at) is called with s = simd<Arch, T>{} for full vectors starting at `at` and
/// with s = simd<scalar_arch, T>{} for the tail elements, and returns std::array<vec, K>.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // float or double
          int K,       // number of sums
          class Term>  // callable (simd tag, index) -> std::array<vec, K>
std::array<double, K> blocked_sums(index_t n, Term&& term) {
  using S = ssmax::detail::simd<Arch, T>;
  using V = typename S::vec;
  constexpr index_t W = S::width;
  constexpr index_t kBlock = kLanesPerBlock * 2 * W;
  std::array<ssmax::detail::compensated_sum, K> total{};
  const index_t n_vec = n - n % W;
  index_t i = 0;
  while (i < n_vec) {
    const index_t block_end = std::min(n_vec, i + kBlock);
    std::array<V, K> a0, a1;
    a0.fill(S::splat(T(0)));
    a1.fill(S::splat(T(0)));
    const index_t unrolled_end = i + (block_end - i) / (2 * W) * (2 * W);
    for (; i < unrolled_end; i += 2 * W) {
      const auto t0 = term(S{}, i);
      const auto t1 = term(S{}, i + W);
      for (int k = 0; k < K; ++k) {
        a0[k] += t0[k];
        a1[k] += t1[k];
      }
    }
    for (; i < block_end; i += W) {
      const auto t0 = term(S{}, i);
      for (int k = 0; k < K; ++k) a0[k] += t0[k];
    }
    for (int k = 0; k < K; ++k) total[k].add(static_cast<double>(S::reduce_add(a0[k] + a1[k])));
  }
  for (; i < n; ++i) {  // tail: fewer than W elements, one lane at a time
    const auto t = term(ssmax::detail::simd<scalar_arch, T>{}, i);
    for (int k = 0; k < K; ++k) total[k].add(static_cast<double>(t[k]));
  }
  std::array<double, K> out{};
  for (int k = 0; k < K; ++k) out[k] = total[k].value();
  return out;
}

/// Pass 2, shared by both kernels: with q_i = scale p_i, dz_i = m q_i (g_i - c) for i in
/// [0, n), returning dL/dm = sum_i q_i (z_i - zbar) (g_i - c) when z != nullptr (else 0).
/// p may be dz itself (the _lse kernel keeps p there); dz may be g. Entries with p_i = 0
/// (masked -inf logits included) contribute exactly 0 to dL/dm, never -inf * 0 = NaN.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
double write_gradient(const T* z, const T* p, const T* g, T* dz, index_t n, T m, T c, T zbar,
                      T scale) {
  auto with_z = [&](auto s, index_t at) {
    using S = decltype(s);
    const auto pv = S::load(p + at) * S::splat(scale), gc = S::load(g + at) - S::splat(c);
    const auto dy = pv * gc;
    const auto centred = S::load(z + at) - S::splat(zbar);
    S::store(dz + at, S::splat(m) * dy);
    return std::array<typename S::vec, 1>{
        S::select(pv == S::splat(T(0)), S::splat(T(0)), dy * centred)};
  };
  auto without_z = [&](auto s, index_t at) {
    using S = decltype(s);
    const auto dy = S::load(p + at) * S::splat(scale) * (S::load(g + at) - S::splat(c));
    S::store(dz + at, S::splat(m) * dy);
    return std::array<typename S::vec, 1>{S::splat(T(0))};
  };
  if (z == nullptr) return blocked_sums<Arch, T, 1>(n, without_z)[0];
  return blocked_sums<Arch, T, 1>(n, with_z)[0];
}

/// Backward of p = softmax(m z) given the forward output p:
///   dz_i = m p_i (g_i - c),  c = sum_j p_j g_j;  returns dL/dm (0 when z == nullptr).
/// Pre: n >= 1; p, g, dz not null; z null or of length n; m finite; dz may be g or p (in
/// place) but must not otherwise overlap the inputs. Entries with p_i = 0 get dz_i = 0
/// (times g_i - c) and add nothing to dL/dm, whatever z_i is (-inf included).
/// Contract: finite inputs give finite outputs. Error (derived in
/// tests/support/backward_bound.hpp and tested on every architecture), with
/// A = sum |p_j g_j|, B = sum |p_j z_j|, s = kLanesPerBlock + log2(2 W) + 2:
///   |dz_i - exact| <= eps |m| p_i ((s + 1) A + 4 |g_i - c|) + min_normal
///   |dL/dm - exact| <= eps sum_i p_i ((s + 1) B |g_i - c| + (s + 1) A |z_i - zbar|
///                      + (s + 4) |z_i - zbar| |g_i - c|) + n min_normal
/// where exact is the same formula in exact arithmetic on the same p, g, z.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
double scaled_softmax_row_backward(const T* z, const T* p, const T* g, T* dz, index_t n, T m) {
  T c, zbar = T(0);
  if (z == nullptr) {
    c = static_cast<T>(blocked_sums<Arch, T, 1>(n, [&](auto s, index_t at) {
      using S = decltype(s);
      return std::array<typename S::vec, 1>{S::load(p + at) * S::load(g + at)};
    })[0]);
  } else {
    const auto sums = blocked_sums<Arch, T, 2>(n, [&](auto s, index_t at) {
      using S = decltype(s);
      const auto pv = S::load(p + at);
      const auto zero = S::splat(T(0));
      return std::array<typename S::vec, 2>{pv * S::load(g + at),
                                            S::select(pv == zero, zero, pv * S::load(z + at))};
    });
    c = static_cast<T>(sums[0]);
    zbar = static_cast<T>(sums[1]);
  }
  return write_gradient<Arch>(z, p, g, dz, n, m, c, zbar, T(1));
}

/// Backward of p = softmax(m z) from the saved log-sum-exp lse = log sum_j exp(m z_j)
/// (row_state::log_sum_exp()): u_i = exp(m z_i - lse) is recomputed (an exact 0 for
/// z_i = -inf and below the forward's flush_threshold, as the forward does) and
/// normalised, p_i = u_i / sum_j u_j, then as scaled_softmax_row_backward. The
/// normalisation costs one more sum in pass 1 and makes the result insensitive to an
/// error in lse (a common factor on every u_i), and keeps dL/dm free of the second-order
/// term (sum p - 1)^2 zbar c that unnormalised weights leave. Returns dL/dm.
/// Pre: n >= 1; z, g, dz not null; dz overlaps neither z nor g; m finite (any sign: -inf
/// entries weigh 0 whatever it is);
/// every z_i finite or -inf; lse finite, or -inf for a row of only -inf (then dz = 0 and
/// dL/dm = 0). With m = 0 the weights are uniform over the entries that are not -inf.
/// Error: as scaled_softmax_row_backward, with each p_i carrying in addition a relative
/// error of eps (exp_ulp + |m z_i| + |m z_i - lse| + |lse| + s + 3) (the argument, and the
/// normalisation) and an absolute error of 2 n min_normal (the flush).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // float or double
double scaled_softmax_row_backward_lse(const T* z, T lse, const T* g, T* dz, index_t n, T m) {
  const T inf = std::numeric_limits<T>::infinity();
  if (lse == -inf) {
    std::fill(dz, dz + n, T(0));
    return 0.0;
  }
  const T flush = flush_threshold<T>(n);
  const auto sums = blocked_sums<Arch, T, 3>(n, [&](auto s, index_t at) {
    using S = decltype(s);
    const auto zero = S::splat(T(0));
    const auto zv = S::load(z + at);
    const auto t = S::fma(S::splat(m), zv, S::splat(-lse));
    // -inf logits (t = -inf, or NaN when m = 0) and arguments below the flush weigh 0.
    const auto u = S::select(zv == S::splat(-inf), zero, flushed_exp<S>(t, S::splat(flush)));
    S::store(dz + at, u);
    return std::array<typename S::vec, 3>{u, u * S::load(g + at),
                                          S::select(u == zero, zero, u * zv)};
  });
  if (sums[0] == 0.0) {  // every weight flushed: lse was far above this row's logits
    std::fill(dz, dz + n, T(0));
    return 0.0;
  }
  const double inv = 1.0 / sums[0];
  return write_gradient<Arch>(z, dz, g, dz, n, m, static_cast<T>(sums[1] * inv),
                              static_cast<T>(sums[2] * inv), static_cast<T>(inv));
}

}  // namespace ssmax::kernels
