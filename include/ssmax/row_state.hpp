#pragma once
// The streaming state of a softmax row: what FlashAttention-style code carries from one
// block of keys to the next, and what the backward pass saves per row.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "error.hpp"

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
/// Exact up to two roundings per term; either side may be empty; a NaN state (a NaN
/// logit) wins over any other, whichever side it is on. Commutative; associative up to
/// rounding, so callers wanting bitwise reproducibility merge in a fixed order.
template <class T>  // float or double
inline row_state<T> merge(const row_state<T>& a, const row_state<T>& b) {
  if (std::isnan(a.max)) return a;
  if (std::isnan(b.max)) return b;
  if (b.empty()) return a;
  if (a.empty()) return b;
  if (a.max == b.max) return {a.max, a.sum + b.sum};  // also covers +inf == +inf
  const T m = a.max > b.max ? a.max : b.max;
  if (m == std::numeric_limits<T>::infinity()) return a.max == m ? a : b;  // finite side: 0
  return {m, a.sum * std::exp(a.max - m) + b.sum * std::exp(b.max - m)};
}

/// Folds one partial result into an accumulator: o [d] and acc hold the unnormalised
/// output sum_j exp(y_j - acc.max) v_j and the state of the keys merged so far (o all
/// zeros when acc is empty), part_o [d] and part the same for a disjoint set of keys.
/// Afterwards o and acc cover both: with M the merged max,
///   o_c = o_c exp(acc.max - M) + exp(part.max - M) part_o_c   (one fma per element),
/// the first product skipped when acc is empty or acc.max = M. An empty part changes
/// nothing. Merging partials in a fixed order gives bitwise reproducible results.
template <class T,      // float or double: the accumulator's element type
          class P = T>  // float or double: the partial's element type
inline void merge_partial(T* o, row_state<double>& acc, const P* part_o,
                          const row_state<double>& part, index_t d) {
  if (part.empty()) return;
  const row_state<double> merged = merge(acc, part);
  if (!acc.empty() && acc.max != merged.max) {
    const T shrink = static_cast<T>(std::exp(acc.max - merged.max));
    for (index_t c = 0; c < d; ++c) o[c] *= shrink;
  }
  // exp(0) = 1 exactly; spelled out for +inf maxima, where exp(inf - inf) would be NaN.
  const T grow = part.max == merged.max ? T(1) : static_cast<T>(std::exp(part.max - merged.max));
  for (index_t c = 0; c < d; ++c) o[c] = std::fma(grow, static_cast<T>(part_o[c]), o[c]);
  acc = merged;
}

/// Merges two partial attention results of one query row over disjoint sets of keys
/// (split-KV decoding, context parallelism, a KV cache split across devices):
/// out_a, out_b [d] are normalised outputs (each the softmax-weighted mean of its keys'
/// values), lse_a, lse_b their log-sum-exps (attention_extras::lse). Writes
///   out = w_a out_a + w_b out_b,  w_x = exp(lse_x - L),  L = log(exp(lse_a) + exp(lse_b))
/// to out [d] and returns L: the row's output and log-sum-exp over both key sets, as one
/// call over all of them would give, up to rounding (a few ulp of T: the weights are formed
/// in double). An empty partial (lse = -inf, no visible key) contributes nothing: the other
/// is copied exactly, and two empty partials give zeros and -inf. out may be out_a or
/// (when U is T) out_b. A running result may be kept in a wider type than the partials
/// (T = double, U = float: context parallelism merges float partials into a double
/// accumulator). Pre: lse_a, lse_b finite or +-inf. Merging many partials in a fixed order
/// is bitwise reproducible; the fused kernel merges its key chunks with the same steps
/// (merge_partial).
template <class T,      // float or double: out_a's and out's element type
          class U = T>  // float or double: out_b's element type
inline T merge_partial_outputs(const T* out_a, T lse_a, const U* out_b, U lse_b, index_t d,
                               T* out) {
  if constexpr (std::is_same<T, U>::value) {
    if (out == out_b && out != out_a)  // fold a into b's storage: the merge is symmetric
      return merge_partial_outputs(out_b, lse_b, out_a, lse_a, d, out);
  }
  const auto state = [](double lse) {
    return lse == -std::numeric_limits<double>::infinity() ? row_state<double>{}
                                                           : row_state<double>{lse, 1.0};
  };
  row_state<double> acc = state(static_cast<double>(lse_a));
  if (acc.empty())
    std::fill(out, out + d, T(0));
  else if (out != out_a)
    std::copy(out_a, out_a + d, out);
  merge_partial(out, acc, out_b, state(static_cast<double>(lse_b)), d);
  if (!acc.empty() && acc.sum != 1.0) {
    const T inv = static_cast<T>(1.0 / acc.sum);
    for (index_t c = 0; c < d; ++c) out[c] *= inv;
  }
  return static_cast<T>(acc.log_sum_exp());
}

}  // namespace ssmax
