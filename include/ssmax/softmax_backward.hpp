#pragma once
// Row-level backward API: the gradient of a loss through y = softmax(m x) over one
// contiguous row of n >= 1 values, for training with a learnable SSMax s (and b).
//
// With upstream g = dL/dy (../shared/PAPER.md section 5):
//   dL/dx_i = m y_i (g_i - sum_j y_j g_j)
//   dL/dm   = sum_i x_i y_i (g_i - sum_j y_j g_j)
//   SSMax (m = s log n + b): dL/ds = log(n) dL/dm, dL/db = dL/dm, n the policy's
//   effective length (policy_gradient.hpp); sum them over the rows of a head.
// Either the forward output y is given, or the forward's log-sum-exp (row_state::
// log_sum_exp()), from which y is recomputed (one exp per entry, no stored weights).
//
// Every function validates its arguments (throwing ssmax::argument_error before writing
// anything), then runs kernels/row_backward.hpp for the architecture Arch (default: the
// widest this translation unit targets).
//
// Numerical contract (kernels/row_backward.hpp states the bounds, tested on every
// architecture): masked entries (x_i = -inf, y_i = 0) get dL/dx_i = 0 and add nothing to
// dL/dm, never NaN; a row of only -inf gives zero gradients; finite inputs give finite
// outputs; dL/dm is computed in a form that does not cancel when the logits share a
// large offset.

#include <cmath>
#include <limits>

#include "detail/simd.hpp"
#include "error.hpp"
#include "kernels/row_backward.hpp"
#include "length_policy.hpp"
#include "policy_gradient.hpp"
#include "softmax.hpp"

namespace ssmax {
namespace detail {

/// The output dx may be one of the named inputs (in place) but must not partly overlap
/// any input.
template <class T>
inline bool may_write(const T* dx, index_t n, const T* input) {
  return input == nullptr || dx == input || !overlaps(dx, n, input, n);
}

template <class T>
inline void check_backward_row(const char* function, const T* y, const T* g, T* dx, index_t n) {
  require(y != nullptr, function, "y", "must not be null");
  require(g != nullptr, function, "g", "must not be null");
  require(dx != nullptr, function, "dx", "must not be null");
  require(n >= 1, function, "n", "must be >= 1");
  require(may_write(dx, n, y) && may_write(dx, n, g), function, "dx",
          "must be y or g itself (in place) or overlap neither");
}

/// The checks of a backward that reads x, y and g: as check_backward_row, and x not null
/// nor overlapping dx.
template <class T>
inline void check_backward_row_with_x(const char* function, const T* x, const T* y, const T* g,
                                      T* dx, index_t n) {
  require(x != nullptr, function, "x", "must not be null");
  check_backward_row(function, y, g, dx, n);
  require(!overlaps(x, n, static_cast<const T*>(dx), n), function, "dx", "must not overlap x");
}

}  // namespace detail

/// dx = dL/dx for y = softmax(x), given y and g = dL/dy: dx_i = y_i (g_i - sum_j y_j g_j).
/// Pre (checked): y, g, dx not null; n >= 1; dx is y, g or overlaps neither.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float or double
void softmax_backward(const T* y, const T* g, T* dx, index_t n) {
  detail::check_backward_row("softmax_backward", y, g, dx, n);
  kernels::scaled_softmax_row_backward<Arch>(static_cast<const T*>(nullptr), y, g, dx, n, T(1));
}

/// dx = dL/dx for y = softmax(multiplier * x), given x, y and g = dL/dy; returns dL/dm.
/// Pre (checked): as softmax_backward; x not null and not overlapping dx; multiplier
/// finite and >= 0.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float or double
double scaled_softmax_backward(const T* x, const T* y, const T* g, T* dx, index_t n, T multiplier) {
  constexpr const char* fn = "scaled_softmax_backward";
  detail::check_backward_row_with_x(fn, x, y, g, dx, n);
  detail::check_multiplier(fn, static_cast<double>(multiplier));
  return kernels::scaled_softmax_row_backward<Arch>(x, y, g, dx, n, multiplier);
}

/// As scaled_softmax_backward, recomputing y = exp(multiplier * x - lse) from the saved
/// log-sum-exp of the forward (row_state::log_sum_exp()) instead of reading y.
/// Pre (checked): x, g, dx not null; n >= 1; dx overlaps neither x nor g; multiplier
/// finite and >= 0; lse finite, or -inf (a row of only -inf: zero gradients).
/// Pre (not checked, O(n)): every x_i finite or -inf, and lse the log-sum-exp of this row
/// at this multiplier.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float or double
double scaled_softmax_backward_lse(const T* x, T lse, const T* g, T* dx, index_t n, T multiplier) {
  constexpr const char* fn = "scaled_softmax_backward_lse";
  detail::require(x != nullptr, fn, "x", "must not be null");
  detail::require(g != nullptr, fn, "g", "must not be null");
  detail::require(dx != nullptr, fn, "dx", "must not be null");
  detail::require(n >= 1, fn, "n", "must be >= 1");
  detail::require(!detail::overlaps(x, n, static_cast<const T*>(dx), n) &&
                      !detail::overlaps(g, n, static_cast<const T*>(dx), n),
                  fn, "dx", "must overlap neither x nor g");
  detail::check_multiplier(fn, static_cast<double>(multiplier));
  detail::require(std::isfinite(lse) || lse == -std::numeric_limits<T>::infinity(), fn, "lse",
                  "must be finite or -inf");
  return kernels::scaled_softmax_row_backward_lse<Arch>(x, lse, g, dx, n, multiplier);
}

/// Backward of y = policy_softmax(policy, x, y, n, where): dx = dL/dx, and the row's
/// dL/dm with what it gives the policy's parameters of head where.head (for SSMax,
/// dL/ds = log(n) dL/dm and dL/db = dL/dm with n = policy.effective_length(where.visible)).
/// where takes the same defaults as policy_softmax ({visible = n, position = n - 1}).
/// Pre (checked): as scaled_softmax_backward and policy_softmax.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class Policy,               // a length policy (length_policy.hpp)
          class T>                    // float or double
row_gradient policy_softmax_backward(const Policy& policy, const T* x, const T* y, const T* g,
                                     T* dx, index_t n, row_position where = {-1, -1, 0}) {
  constexpr const char* fn = "policy_softmax_backward";
  detail::require_length_policy<Policy>();
  detail::check_backward_row_with_x(fn, x, y, g, dx, n);
  const T m = detail::policy_row_multiplier<T>(fn, policy, where, n);
  const double dm = kernels::scaled_softmax_row_backward<Arch>(x, y, g, dx, n, m);
  return gradient_of(policy, where, dm);
}

/// Backward of y = scalable_softmax(x, y, n, s, b) (a row that sees all n entries): dx = dL/dx and
/// {dL/dm, dL/ds = log(n) dL/dm, dL/db = dL/dm}.
/// Pre (checked, errors name 's' and 'b'): as scaled_softmax_backward; s and b as
/// scalable_softmax.
template <class Arch = default_arch,  // xsimd architecture tag or scalar_arch
          class T>                    // float or double
row_gradient scalable_softmax_backward(const T* x, const T* y, const T* g, T* dx, index_t n,
                                       double s, double b = 0.0) {
  constexpr const char* fn = "scalable_softmax_backward";
  detail::check_backward_row_with_x(fn, x, y, g, dx, n);
  const T m = detail::scalable_row_multiplier<T>(fn, s, b, n);
  const double dm = kernels::scaled_softmax_row_backward<Arch>(x, y, g, dx, n, m);
  return gradient_of(ssmax_policy(s, b), {n, n - 1, 0}, dm);
}

}  // namespace ssmax
