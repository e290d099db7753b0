#pragma once
// The streaming state of a softmax row: what FlashAttention-style code carries from one
// block of keys to the next, and what the backward pass saves per row.

#include <cmath>
#include <limits>

namespace ssmax {

/// State of a softmax over the scaled logits y = m * x seen so far:
///   max = max_i y_i,   sum = sum_i exp(y_i - max),   log_sum_exp() = max + log(sum).
/// The empty state (no key seen, or only masked ones) is {-inf, 0}; its log_sum_exp()
/// is -inf. A state whose max is +inf came from +inf logits; NaN logits give NaN.
template <class T>  // float or double
struct row_state {
  T max = -std::numeric_limits<T>::infinity();  ///< largest scaled logit seen
  T sum = T(0);                                 ///< sum of exp(y_i - max); 0 when empty

  bool empty() const { return sum == T(0); }
  /// log(sum_i exp(y_i)) without overflow; -inf when empty.
  T log_sum_exp() const {
    return empty() ? -std::numeric_limits<T>::infinity() : max + std::log(sum);
  }
};

/// State of the union of the two rows' logits (the FlashAttention merge):
///   M = max(a.max, b.max),  sum = a.sum exp(a.max - M) + b.sum exp(b.max - M).
/// Exact up to two roundings per term; either side may be empty. Commutative; associative
/// up to rounding, so callers wanting bitwise reproducibility merge in a fixed order.
template <class T>  // float or double
inline row_state<T> merge(const row_state<T>& a, const row_state<T>& b) {
  if (b.empty()) return a;
  if (a.empty()) return b;
  if (a.max == b.max) return {a.max, a.sum + b.sum};  // also covers +inf == +inf
  const T m = a.max > b.max ? a.max : b.max;
  return {m, a.sum * std::exp(a.max - m) + b.sum * std::exp(b.max - m)};
}

}  // namespace ssmax
