#pragma once
// The online-softmax steps of the attention kernels, per query row: which keys a row
// sees and its multiplier (setup_rows), masking a block of scores, the streaming update
// of the row's (max, sum) state and output accumulator, and writing the finished row.

#include <algorithm>
#include <cmath>
#include <limits>

#include "../row_state.hpp"
#include "plan.hpp"
#include "row_softmax.hpp"

namespace ssmax::kernels::detail {

/// Masks one row of scores for keys kb..kb+nk-1 (tensor indices): entries outside the
/// row's [begin, end) or hidden by its boolean row become -inf. Returns false (and leaves
/// s untouched) when no key of the block can be visible.
template <class T>  // float or double
inline bool mask_row(T* s, index_t kb, index_t nk, const row_keys& row) {
  const index_t lo = std::max(row.begin, kb) - kb, hi = std::min(row.end, kb + nk) - kb;
  if (hi <= lo) return false;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::fill(s, s + lo, ninf);
  std::fill(s + hi, s + nk, ninf);
  if (row.allowed != nullptr)
    for (index_t j = lo; j < hi; ++j)
      if (!row.allowed[kb + j]) s[j] = ninf;
  return true;
}

/// Online-softmax update of one row with one block of (scaled, masked) logits s[0, nk):
/// turns s into P = exp(s - M') with M' the new running max, rescales the row's output
/// accumulator o[0, dp) by exp(M - M'), and merges the block into the state. A block
/// whose entries are all -inf leaves everything unchanged and zeroes s. Weights whose
/// exp argument is below flush_below (flush_threshold(n) of the row's visible count n)
/// are written as exact zeros, as the row kernel does.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void online_row(T* s, index_t nk, row_state<double>& state, T* o, index_t dp,
                       T flush_below) {
  const T block_max = row_max<Arch>(s, nk);
  if (block_max == -std::numeric_limits<T>::infinity()) {
    std::fill(s, s + nk, T(0));
    return;
  }
  const double new_max = std::max(state.max, static_cast<double>(block_max));
  const double block_sum = exp_and_sum<Arch>(s, s, nk, T(1), static_cast<T>(new_max), flush_below);
  if (!state.empty() && state.max != new_max)
    scale_row<Arch>(o, dp, static_cast<T>(std::exp(state.max - new_max)));
  state = merge(state, row_state<double>{new_max, block_sum});
}

/// The policy's multiplier m of a row of head h (0 for a row that sees no key).
template <class T, class Policy>  // float or double; a length policy
inline double row_multiplier(const attention_problem<T, Policy>& p, const row_keys& row,
                             index_t h) {
  return row.visible > 0 ? p.policy->multiplier({row.n, row.position, h}) : 0.0;
}

/// Per-row setup of a block of query rows q0..q0+rows-1 of head h: which keys each row
/// sees (info), and the scaled queries qs[r*d, +d) = (m_r * scale) * q_r, with m_r the
/// policy's multiplier computed once per row in double (0 for rows that see no key).
template <class T, class Policy>  // float or double; a length policy
inline void setup_rows(const attention_problem<T, Policy>& p, const sequence_span& seq, index_t h,
                       index_t q0, index_t rows, row_keys* info, T* qs) {
  const index_t d = p.q.dim;
  for (index_t r = 0; r < rows; ++r) {
    info[r] = visible_keys(p.mask, seq, h, q0 + r);
    const T f = static_cast<T>(row_multiplier(p, info[r], h) * p.scale);
    const T* qr = p.q.row(seq.tensor_batch, q0 + r, h);
    for (index_t c = 0; c < d; ++c) qs[r * d + c] = f * qr[c];
  }
}

/// Key range [lo, hi) covering every row of a block, the same for every head: it ignores
/// the boolean mask (the only constraint that may differ between heads).
template <class T, class Policy>  // float or double; a length policy
inline void block_key_range(const attention_problem<T, Policy>& p, const sequence_span& seq,
                            index_t q0, index_t rows, index_t& lo, index_t& hi) {
  lo = std::numeric_limits<index_t>::max();
  hi = std::numeric_limits<index_t>::min();
  for (index_t r = 0; r < rows; ++r) {
    const row_keys k = visible_keys(p.mask, seq, 0, q0 + r, false);
    if (k.end > k.begin) lo = std::min(lo, k.begin), hi = std::max(hi, k.end);
  }
  if (lo >= hi) lo = hi = seq.k_begin;
}

/// Writes one finished row: out = o / sum (zeros when the state is empty), lse.
template <class T, class Policy>  // float or double; a length policy
inline void finish_row(const attention_problem<T, Policy>& p, index_t b, index_t i, index_t h,
                       const T* o, const row_state<double>& state) {
  T* dst = p.out.row(b, i, h);
  const index_t d = p.q.dim;
  if (state.empty()) {
    std::fill(dst, dst + d, T(0));
  } else {
    const T inv = static_cast<T>(1.0 / state.sum);
    for (index_t c = 0; c < d; ++c) dst[c] = o[c] * inv;
  }
  if (p.lse != nullptr) p.lse[p.row_index(b, h, i)] = static_cast<T>(state.log_sum_exp());
}

}  // namespace ssmax::kernels::detail
