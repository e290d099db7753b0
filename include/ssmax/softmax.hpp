#pragma once
// Row-level public API: softmax, softmax(m x), a length policy's softmax (SSMax and
// peers), log-sum-exp and the streaming state, over one contiguous row of n >= 1 values.
//
// Every function validates its arguments (throwing ssmax::argument_error before writing
// anything), then runs kernels::scaled_softmax_row for the architecture Arch, which
// defaults to the widest one this translation unit is compiled for. Pass
// ssmax::scalar_arch or any xsimd architecture tag to choose another.
//
// Rows may be float, double, Eigen::bfloat16 or Eigen::half (storage.hpp). A 16-bit row is
// computed in float: widened exactly into a float copy of n values (allocated per call),
// the state and multiplier are float, and y is stored rounded to nearest even, so each
// weight is within the float bound below plus half an ULP of the 16-bit type.
//
// Numerical contract (shared by every function here; see kernels/row_softmax.hpp):
// - no overflow for any finite input: the row maximum is subtracted before exp;
// - x_i = -inf gets weight exactly 0; a row of only -inf gives all zeros (never NaN),
//   log-sum-exp -inf;
// - +inf entries share the weight equally, the others get 0 (the limit of softmax);
// - any NaN in the row makes every output NaN (and the log-sum-exp NaN);
// - a multiplier of 0 gives equal weights over the entries that are not -inf (in a row
//   holding +inf the +inf rule wins: 0 * inf has no limit);
// - a negative multiplier m is softmax over m x_i of the entries that are not -inf: -inf
//   entries stay masked (weight 0) whatever the sign of m, the smallest entry weighs most,
//   +inf entries weigh 0 (m * inf = -inf), and a row whose visible entries are all +inf
//   gives zeros and the empty state, as a row of only -inf does;
// - each weight is within a few ulp of the exact one, relative to itself (the bound is
//   stated in kernels/row_softmax.hpp and tested on every architecture); weights that
//   would be below n * min_normal are flushed to exactly 0, so no output is subnormal;
// - outputs sum to 1 within an n-independent number of ulp.

#include <cmath>
#include <limits>
#include <vector>

#include "detail/simd.hpp"
#include "error.hpp"
#include "kernels/convert.hpp"
#include "kernels/row_softmax.hpp"
#include "length_policy.hpp"
#include "row_state.hpp"

namespace ssmax {
namespace detail {

template <class T>
inline void check_row(const char* function, const T* x, const T* y, index_t n) {
  require(x != nullptr, function, "x", "must not be null");
  require(y != nullptr, function, "y", "must not be null");
  require(n >= 1, function, "n", "must be >= 1");
  require(x == y || !overlaps(x, n, y, n), function, "y",
          "must be x itself (in place) or not overlap x");
}

inline void check_multiplier(const char* function, double m) {
  require(std::isfinite(m), function, "multiplier", "must be finite");
}

/// The row of a policy function (policy_softmax and its backward): fills where's defaults
/// (visible = n and position = n - 1 where they are -1), checks the policy and where, and
/// returns the row's multiplier policy.multiplier(where), checked finite in T (any sign).
/// Pre: n >= 1 (checked by the caller).
template <class T,       // float or double: the element type the multiplier must fit
          class Policy>  // a length policy (length_policy.hpp)
T policy_row_multiplier(const char* function, const Policy& policy, row_position& where,
                        index_t n) {
  if (where.visible == -1) where.visible = n;
  if (where.position == -1) where.position = n - 1;
  policy.validate(function);
  require(where.visible >= 1, function, "where.visible", "must be >= 1 (or -1: n)");
  require(where.position >= 0, function, "where.position", "must be >= 0 (or -1: n - 1)");
  require(where.head >= 0 && (policy.heads() == 0 || where.head < policy.heads()), function,
          "where.head", "must be a head the policy has parameters for");
  const double m = policy.multiplier(where);
  require_multiplier_fits<T>(function, m, 1.0, where);
  return static_cast<T>(m);
}

/// The multiplier s log n + b of scalable_softmax and its backward (a row that sees all n
/// entries), checked with the caller's names: 's' and 'b' finite (any sign), and the
/// multiplier finite in T ('b' when b alone is not, else 's'). Pre: n >= 1 (checked).
template <class T>  // float or double: the element type the multiplier must fit
T scalable_row_multiplier(const char* function, double s, double b, index_t n) {
  require(std::isfinite(s), function, "s", "must be finite");
  require(std::isfinite(b), function, "b", "must be finite");
  const double largest = static_cast<double>(std::numeric_limits<T>::max());
  require(std::abs(b) <= largest, function, "b", "must be finite in T");
  const double m = ssmax_policy(s, b).multiplier({n, n - 1, 0});
  require(std::abs(m) <= largest, function, "s",
          "gives a multiplier s log n + b beyond the largest value of T");
  return static_cast<T>(m);
}

/// softmax(m * x) of one row stored as S (kernels::scaled_softmax_row): float and double
/// rows run in place; 16-bit rows are widened (exactly) into a float copy, computed in
/// float, and y (when not null) stored rounded to nearest even. Pre: as the kernel's.
template <class Arch, class S>  // architecture tag; a storage type (storage.hpp)
row_state<compute_t<S>> row_kernel(const S* x, S* y, index_t n, compute_t<S> m) {
  if constexpr (!is_16bit_v<S>) {
    return kernels::scaled_softmax_row<Arch>(x, y, n, m);
  } else {
    std::vector<float> row(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) row[static_cast<std::size_t>(i)] = kernels::to_compute(x[i]);
    const row_state<float> state =
        kernels::scaled_softmax_row<Arch>(row.data(), y != nullptr ? row.data() : nullptr, n, m);
    if (y != nullptr)
      for (index_t i = 0; i < n; ++i)
        y[i] = kernels::from_compute<S>(row[static_cast<std::size_t>(i)]);
    return state;
  }
}

}  // namespace detail

/// y = softmax(multiplier * x) over x[0, n); returns the row's streaming state.
/// Pre (checked): x, y not null; n >= 1; y == x or no overlap; multiplier finite (a
/// negative one weighs the smallest entries most; -inf entries still weigh 0).
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float, double, Eigen::bfloat16 or Eigen::half
row_state<compute_t<T>> scaled_softmax(const T* x, T* y, index_t n, compute_t<T> multiplier) {
  detail::check_row("scaled_softmax", x, y, n);
  detail::check_multiplier("scaled_softmax", static_cast<double>(multiplier));
  return detail::row_kernel<Arch>(x, y, n, multiplier);
}

/// y = softmax(x) over x[0, n); y may be x (in place). Returns the streaming state.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float, double, Eigen::bfloat16 or Eigen::half
row_state<compute_t<T>> softmax(const T* x, T* y, index_t n) {
  detail::check_row("softmax", x, y, n);
  return detail::row_kernel<Arch>(x, y, n, compute_t<T>(1));
}

/// In-place softmax of x[0, n).
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float, double, Eigen::bfloat16 or Eigen::half
row_state<compute_t<T>> softmax(T* x, index_t n) {
  return softmax<Arch>(static_cast<const T*>(x), x, n);
}

/// y = softmax(m * x) with m = policy.multiplier(where): SSMax and its peers on one row.
/// By default the row is the last query of an unmasked sequence of length n:
/// where = {visible = n, position = n - 1, head = 0}; a where.visible or where.position of
/// -1 takes that default.
/// Pre (checked): as scaled_softmax; policy valid; where.visible >= 1;
/// where.position >= 0; 0 <= where.head < policy.heads() when the policy is per head;
/// the row's multiplier finite in T, any sign (argument 'policy' otherwise: s log n + b
/// can exceed the largest float, or even double, for huge s or b).
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class Policy,               // a length policy (length_policy.hpp)
          class T>                    // float, double, Eigen::bfloat16 or Eigen::half
row_state<compute_t<T>> policy_softmax(const Policy& policy, const T* x, T* y, index_t n,
                                       row_position where = {-1, -1, 0}) {
  constexpr const char* fn = "policy_softmax";
  detail::require_length_policy<Policy>();
  detail::check_row(fn, x, y, n);
  const auto m = detail::policy_row_multiplier<compute_t<T>>(fn, policy, where, n);
  return detail::row_kernel<Arch>(x, y, n, m);
}

/// Scalable-Softmax of one row that sees all of its n entries:
/// y_i = n^(s x_i) / sum_j n^(s x_j) = softmax((s log n + b) x)_i.
/// Pre (checked, errors name 's' and 'b'): as scaled_softmax; s and b finite (any sign:
/// m < 0 on rows where s log n + b < 0); s log n + b finite in T.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float, double, Eigen::bfloat16 or Eigen::half
row_state<compute_t<T>> scalable_softmax(const T* x, T* y, index_t n, double s, double b = 0.0) {
  constexpr const char* fn = "scalable_softmax";
  detail::check_row(fn, x, y, n);
  const auto m = detail::scalable_row_multiplier<compute_t<T>>(fn, s, b, n);
  return detail::row_kernel<Arch>(x, y, n, m);
}

/// The streaming state of softmax(multiplier * x) without writing any output.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float, double, Eigen::bfloat16 or Eigen::half
row_state<compute_t<T>> row_state_of(const T* x, index_t n,
                                     compute_t<T> multiplier = compute_t<T>(1)) {
  detail::require(x != nullptr, "row_state_of", "x", "must not be null");
  detail::require(n >= 1, "row_state_of", "n", "must be >= 1");
  detail::check_multiplier("row_state_of", static_cast<double>(multiplier));
  return detail::row_kernel<Arch>(x, static_cast<T*>(nullptr), n, multiplier);
}

/// log(sum_i exp(multiplier * x_i)) without overflow: -inf for a row of only -inf,
/// +inf when an entry is +inf, NaN when one is NaN.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float, double, Eigen::bfloat16 or Eigen::half
compute_t<T> log_sum_exp(const T* x, index_t n, compute_t<T> multiplier = compute_t<T>(1)) {
  return row_state_of<Arch>(x, n, multiplier).log_sum_exp();
}

}  // namespace ssmax
