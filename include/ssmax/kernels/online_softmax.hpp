#pragma once
// The online softmax of the fused kernel, per query row: the streaming update of the row's
// (max, sum) state and output accumulator over blocks of logits (row_logits.hpp makes
// them), and writing the finished row. The recurrence keeps, after each block,
//   state.max = M = the largest logit seen so far (double),
//   state.sum = sum_j exp(s_j - M) over the keys seen so far,
//   o[c]      = sum_j exp(s_j - M) v_jc   (in T),
// so that out = o / state.sum and lse = M + log state.sum once every block is in: a block
// with a larger maximum M' rescales o by exp(M - M') before adding its own terms.
//
// Scores that are not finite (the contract of both forward paths, and of safe_score):
// - a score is the dot product in T; where it is +inf or NaN although q_i and k_j are
//   finite (the product, or a partial sum, overflowed), it is recomputed without overflow
//   and takes the exact product's value, or +-inf with the exact product's sign;
// - +inf scores share the row's weight equally, the other keys get 0; lse = +inf;
// - NaN in q_i or in a key the row sees, or an inf among them that makes a score +inf or
//   NaN, makes the row's output and lse NaN, for every row length (n = 1 included);
// - a score of -inf (a product that overflows negatively, or an inf input whose products
//   are all -inf) weighs 0, as a masked key does: the kernels never scan their inputs.
// The recomputation runs only for the rare blocks whose scores are +inf or NaN.
// Values near T's largest: the unnormalised output o = sum_j p_j v_j (p_j <= 1) can
// overflow where out, a weighted mean, does not; such a row is recomputed with its
// weights normalised first (output_overflowed, recompute_normalised).

#include <algorithm>
#include <cmath>
#include <limits>

#include "../row_state.hpp"
#include "convert.hpp"
#include "plan.hpp"
#include "row_logits.hpp"
#include "row_softmax.hpp"

namespace ssmax::kernels::detail {

/// Online-softmax update of one row with one block of (scaled, masked) logits s[0, nk):
/// turns s into P = exp(s - M') with M' the new running max, rescales the row's output
/// accumulator o[0, dp) by exp(M - M'), and merges the block into the state. A block
/// whose entries are all -inf leaves everything unchanged and zeroes s. Weights whose
/// exp argument is below flush_below (flush_threshold(n) of the row's visible count n)
/// are written as exact zeros, as the row kernel does.
///
/// Returns false, leaving state and o untouched (s clobbered), when the block holds +inf
/// or NaN scores: the caller then takes online_row_nonfinite. A row whose state is NaN
/// stays NaN (its weights are zeroed).
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline bool online_row(T* s, index_t nk, row_state<double>& state, T* o, index_t dp,
                       T flush_below) {
  const T inf = std::numeric_limits<T>::infinity();
  const T block_max = row_max<Arch>(s, nk);
  if (block_max == -inf || std::isnan(state.max)) {
    // All masked, or a NaN that row_max does not report (look for one), or a row that is
    // already NaN.
    const bool nan = std::isnan(state.max) || std::any_of(s, s + nk, [](T x) { return x != x; });
    std::fill(s, s + nk, T(0));
    return !nan || std::isnan(state.max);
  }
  if (!(block_max < inf)) return false;  // +inf or NaN
  const double new_max = std::max(state.max, static_cast<double>(block_max));
  const double block_sum = exp_and_sum<Arch>(s, s, nk, T(1), static_cast<T>(new_max), flush_below);
  if (std::isnan(block_sum)) return false;
  if (!state.empty() && state.max != new_max)
    scale_row<Arch>(o, dp, static_cast<T>(std::exp(state.max - new_max)));
  state = merge(state, row_state<double>{new_max, block_sum});
  return true;
}

/// The slow path of online_row, for a block whose scores held +inf or NaN, once the caller
/// has recomputed its logits without overflow (recompute_row_logits: masked, -inf where
/// the row cannot see the key):
/// - NaN (q or a visible key holds NaN or inf): the row becomes NaN (state and o);
/// - +inf (overflow with a positive exact product): the +inf keys share the weight
///   equally: o restarts from 0 unless the row is already at +inf, state {+inf, count},
///   s = 1 on the +inf keys and 0 elsewhere (the caller's P V adds their values);
/// - otherwise (a NaN that cancelling overflows made): online_row on the fixed scores.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // compute type: float or double
inline void online_row_nonfinite(T* s, index_t nk, row_state<double>& state, T* o, index_t dp,
                                 T flush_below) {
  const T inf = std::numeric_limits<T>::infinity();
  if (std::any_of(s, s + nk, [](T x) { return x != x; })) {
    state = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
    std::fill(o, o + dp, std::numeric_limits<T>::quiet_NaN());
    std::fill(s, s + nk, T(0));
    return;
  }
  const auto top = std::count(s, s + nk, inf);
  if (top == 0) {
    online_row<Arch>(s, nk, state, o, dp, flush_below);
    return;
  }
  if (state.max != double(inf)) {
    std::fill(o, o + dp, T(0));
    state = {double(inf), 0.0};
  }
  state.sum += static_cast<double>(top);
  for (index_t j = 0; j < nk; ++j) s[j] = s[j] == inf ? T(1) : T(0);
}

/// Writes one finished row, query row i of head h of batch entry b (row_index's order):
/// out = o / sum (zeros when the state is empty; o itself when `normalised`, as
/// recompute_normalised leaves it), and lse (in T). When v holds fp8 codes, out = o times
/// scale / sum, the factor and the product in double and the product rounded once to T
/// (so that a tiny scale over a large sum is not rounded into T's denormals). The one
/// rounding to a 16-bit out happens here, to nearest even.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline void finish_row(const attention_problem<T, Policy, S>& p, index_t b, index_t h, index_t i,
                       const T* o, const row_state<double>& state, bool normalised = false) {
  using O = typename S::out;
  O* dst = p.out.row(b, i, h);
  const index_t d = p.q.dim;
  if (state.empty()) {
    std::fill(dst, dst + d, from_compute<O>(T(0)));
  } else {
    if constexpr (is_fp8_v<typename S::v>) {
      const double v_scale = p.v_scale(p.kv_head(h));
      const double factor = normalised ? v_scale : v_scale / state.sum;
      for (index_t c = 0; c < d; ++c)
        dst[c] = from_compute<O>(static_cast<T>(static_cast<double>(o[c]) * factor));
    } else {
      const T inv = normalised ? T(1) : static_cast<T>(1.0 / state.sum);
      for (index_t c = 0; c < d; ++c) dst[c] = from_compute<O>(o[c] * inv);
    }
  }
  if (p.lse != nullptr) p.lse[p.row_index(b, h, i)] = static_cast<T>(state.log_sum_exp());
}

/// True when a finished row's unnormalised output o[0, d) needs recompute_normalised: some
/// element is not finite while the row's state is not NaN. With finite values that is an
/// overflow of o = sum_j p_j v_j (p_j <= 1) past T's range, n |v| near T's largest value,
/// where the exact output, a weighted mean of the values, is finite.
template <class T>  // compute type: float or double
inline bool output_overflowed(const T* o, index_t d, const row_state<double>& state) {
  if (state.empty() || std::isnan(state.max)) return false;
  return !std::all_of(o, o + d, [](T x) { return std::isfinite(x); });
}

/// True when element c of every value row of kv head g (batch entry b) over the keys
/// [begin, end) is finite.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline bool value_column_finite(const attention_problem<T, Policy, S>& p, index_t b, index_t g,
                                index_t begin, index_t end, index_t c) {
  index_t offsets[kKeyBlock];  // a paged cache's value rows of the current block
  for (index_t kb = begin; kb < end; kb += kKeyBlock) {
    const index_t nk = std::min(kKeyBlock, end - kb);
    const row_map vrows{p.v.stride_s, p.block_rows(b, kb, nk, offsets)};
    const auto* v0 = p.v_row(b, kb, g);
    for (index_t j = 0; j < nk; ++j)
      if (!std::isfinite(value_at(v0 + vrows(j), c))) return false;
  }
  return true;
}

/// out[0, d) of one row (kv head g, batch entry b, keys [begin, end)) as a weighted mean
/// of finite values must be: an element that the rounding of the weights (which sum to 1
/// within n eps) took past T's largest finite value, while every value it averages is
/// finite, becomes the largest finite value of its sign. The exact mean is at most the
/// largest |v|, so this is within the operator's bound; an infinite value keeps its inf.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline void saturate_rounded_overflow(const attention_problem<T, Policy, S>& p, index_t b,
                                      index_t g, index_t begin, index_t end, T* o) {
  for (index_t c = 0; c < p.q.dim; ++c)
    if (std::isinf(o[c]) && value_column_finite(p, b, g, begin, end, c))
      o[c] = std::copysign(std::numeric_limits<T>::max(), o[c]);
}

/// The rare path of output_overflowed: row i of head h in seq recomputed from q, k and v
/// over the keys it sees, with its weights normalised before they meet the values, so that
/// o[0, d) holds out itself and cannot overflow where out does not: w_j = exp(m z_j - max)
/// / sum from the row's final state (the sink's term included; the +inf keys sharing
/// equally when the row is at +inf), z_j recomputed without overflow (recompute_row_logits),
/// each w_j rounded once to T, then o = sum_j w_j v_j in T over
/// the keys of the row's span [begin, end) (hidden ones with weight 0, as in P V).
/// Within the operator's bound (docs/numerics.md, "Attention"), with a rounding past T's
/// largest finite value saturated (saturate_rounded_overflow); a value that is not finite
/// gives what the normal path gives (inf or NaN; 0 x NaN for a hidden key's).
template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // compute type: float or double
          class Policy,  // a length policy (length_policy.hpp)
          class S>       // storage_set
inline void recompute_normalised(const attention_problem<T, Policy, S>& p, const sequence_span& seq,
                                 index_t h, index_t i, const row_state<double>& state, T* o) {
  const index_t b = seq.tensor_batch, d = p.q.dim, g = p.kv_head(h);
  const row_keys row = p.keys_of(seq, h, i);
  const bool transforms = p.logit.transforms_scores();
  const row_logit logit = transforms ? row_logit_of(p, seq, h, i, row) : row_logit{};
  const double factor = query_factor(p, row, h), inf = std::numeric_limits<double>::infinity();
  std::fill(o, o + d, T(0));
  T s[kKeyBlock];
  index_t offsets[kKeyBlock];  // a paged cache's key rows of the current block
  for (index_t kb = row.begin; kb < row.end; kb += kKeyBlock) {
    const index_t nk = std::min(kKeyBlock, row.end - kb);
    const index_t* at = p.block_rows(b, kb, nk, offsets);
    const row_map krows{p.k.stride_s, at}, vrows{p.v.stride_s, at};
    recompute_row_logits<Arch>(s, kb, nk, row, transforms ? &logit : nullptr, p.q.row(b, i, h),
                               p.k_row(b, kb, g), krows, d, factor);
    const auto* v0 = p.v_row(b, kb, g);
    for (index_t j = 0; j < nk; ++j) {
      const double z = static_cast<double>(s[j]);  // -inf: weight 0 (0 v, as P V has it)
      const double e = state.max == inf ? (z == inf ? 1.0 : 0.0) : std::exp(z - state.max);
      const T w = static_cast<T>(e / state.sum);
      const auto* vj = v0 + vrows(j);
      for (index_t c = 0; c < d; ++c) o[c] += w * value_at(vj, c);
    }
  }
  saturate_rounded_overflow(p, b, g, row.begin, row.end, o);
}

}  // namespace ssmax::kernels::detail
