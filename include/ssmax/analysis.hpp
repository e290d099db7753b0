#pragma once
// Attention diagnostics: how focused one row of attention weights is. These read a row
// that a softmax, SSMax or the attention operator produced (weights w_i >= 0 summing to
// 1 up to rounding) and summarise it:
//
//   largest_weight(w, n)   max_i w_i and where it is (1 = all attention on one key)
//   weight_on(w, n, key)   w_key: what a chosen key (a "needle") receives
//   entropy(w, n)          H = -sum_i w_i log w_i in nats (0 = one key, log n = uniform)
//   effective_keys(w, n)   exp(H): how many keys the row spreads over (1 .. n)
//
// The paper's "attention fading" (../shared/PAPER.md section 4) is the largest weight
// falling and the entropy rising like log n as the context grows under Softmax; SSMax
// keeps both roughly constant.
//
// Every function validates its arguments (ssmax::argument_error naming the argument) and
// reads the row exactly as given: weights are not renormalised.

#include <cmath>
#include <limits>

#include "detail/compensated_sum.hpp"
#include "error.hpp"

namespace ssmax {

/// The largest weight of a row and the first key that holds it.
template <class T>  // float or double
struct largest {
  T weight = T(0);  ///< max_i w_i
  index_t key = 0;  ///< smallest i with w_i == weight
};

namespace detail {

template <class T>
inline void check_weights(const char* function, const T* w, index_t n) {
  require(w != nullptr, function, "w", "must not be null");
  require(n >= 1, function, "n", "must be >= 1");
}

}  // namespace detail

/// The largest weight of w[0, n) and the first key holding it. NaN entries are skipped
/// unless every entry is NaN (then the weight is NaN and the key 0).
/// Pre (checked): w not null; n >= 1. Exact (no arithmetic).
template <class T>  // float or double
largest<T> largest_weight(const T* w, index_t n) {
  detail::check_weights("largest_weight", w, n);
  largest<T> best{std::numeric_limits<T>::quiet_NaN(), 0};
  for (index_t i = 0; i < n; ++i)
    if (!std::isnan(w[i]) && (std::isnan(best.weight) || w[i] > best.weight)) best = {w[i], i};
  return best;
}

/// The weight w[key] of one key of the row w[0, n) (for example the needle).
/// Pre (checked): w not null; n >= 1; 0 <= key < n. Exact.
template <class T>  // float or double
T weight_on(const T* w, index_t n, index_t key) {
  detail::check_weights("weight_on", w, n);
  detail::require(key >= 0 && key < n, "weight_on", "key", "must be in [0, n)");
  return w[key];
}

/// Shannon entropy of the row in nats: H = -sum_i w_i log w_i, with 0 log 0 = 0.
/// For weights summing to 1, 0 <= H <= log n (log n exactly when uniform).
/// Computed in double (T widens exactly) with a compensated sum: a few ulp of double
/// relative to H whatever n is, far below the rounding already in float weights.
/// Pre (checked): w not null; n >= 1; no entry negative or +inf. A NaN entry gives NaN.
template <class T>  // float or double
double entropy(const T* w, index_t n) {
  constexpr const char* fn = "entropy";
  detail::check_weights(fn, w, n);
  detail::compensated_sum h;
  bool has_nan = false;
  for (index_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(w[i]);
    if (std::isnan(v)) {
      has_nan = true;
      continue;
    }
    detail::require(v >= 0.0 && v != std::numeric_limits<double>::infinity(), fn, "w",
                    "must hold weights that are finite and >= 0");
    if (v > 0.0) h.add(-v * std::log(v));
  }
  return has_nan ? std::numeric_limits<double>::quiet_NaN() : h.value();
}

/// exp(entropy(w, n)): the number of keys a row with this entropy would spread over
/// evenly (1 when all attention is on one key, n when uniform). Same preconditions.
template <class T>  // float or double
double effective_keys(const T* w, index_t n) {
  return std::exp(entropy(w, n));
}

}  // namespace ssmax
