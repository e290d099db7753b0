#pragma once
// The per-row logic every attention path shares, once: which keys a row sees and its
// multiplier (setup_rows), the row-logit step that turns a block of one row's raw scores
// into the logits the softmax takes (row_logits: the score epilogue of logit.hpp, then
// the mask), the same step on scores recomputed without overflow for the rare rows whose
// dot products overflowed (recompute_row_logits), and a sink's terms in the forward and the
// backward (sink_logit, add_sink, sink_weights, sink_share).
//
// The fused and materialised forwards, the fused forward's normalised recompute
// (online_softmax.hpp) and both backward kernels call these; a feature that changes the
// logit changes logit.hpp and this file, not each kernel.

#include <algorithm>
#include <cmath>
#include <limits>

#include "../logit.hpp"
#include "../row_state.hpp"
#include "convert.hpp"
#include "plan.hpp"
#include "score_epilogue.hpp"

namespace ssmax::kernels::detail {

// ---- A row's keys, multiplier and epilogue ------------------------------------------

/// The policy's multiplier m of a row of head h (0 for a row that sees no key).
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline double row_multiplier(const attention_problem<T, Policy, S>& p, const row_keys& row,
                             index_t h) {
  return row.visible > 0 ? p.policy->multiplier({row.n, row.position, h}) : 0.0;
}

/// The factor the kernels fold into a row's query: m * scale, or scale alone when the
/// scores go through the score epilogue (logit.hpp), which applies m after the transform;
/// times the keys' fp8 scale (1 for the other types) when the keys are fp8 codes.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline double query_factor(const attention_problem<T, Policy, S>& p, const row_keys& row,
                           index_t h) {
  const double f = p.logit.transforms_scores() ? p.scale : row_multiplier(p, row, h) * p.scale;
  if constexpr (is_fp8_v<typename S::k>) return f * p.k_scale(p.kv_head(h));
  return f;
}

/// The score epilogue of row i of head h in seq (logit.hpp), row = p.keys_of(seq, h, i).
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline row_logit row_logit_of(const attention_problem<T, Policy, S>& p, const sequence_span& seq,
                              index_t h, index_t i, const row_keys& row) {
  return logit_of_row(p.logit, p.mask, seq, h, i, row, row_multiplier(p, row, h));
}

/// Per-row setup of a block of query rows q0..q0+rows-1 of head h: which keys each row
/// sees (info), and the scaled queries qs[r*d, +d) = query_factor * q_r, with m_r the
/// policy's multiplier computed once per row in double (0 for rows that see no key). q
/// stored in 16 bits is widened exactly; qs is never rounded back to 16 bits.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline void setup_rows(const attention_problem<T, Policy, S>& p, const sequence_span& seq,
                       index_t h, index_t q0, index_t rows, row_keys* info, T* qs) {
  const index_t d = p.q.dim;
  for (index_t r = 0; r < rows; ++r) {
    info[r] = p.keys_of(seq, h, q0 + r);
    const T f = static_cast<T>(query_factor(p, info[r], h));
    const auto* qr = p.q.row(seq.tensor_batch, q0 + r, h);
    for (index_t c = 0; c < d; ++c) qs[r * d + c] = f * to_compute(qr[c]);
  }
}

/// Key range [lo, hi) covering every row of a block, the same for every head: it ignores
/// the boolean mask (the only constraint that may differ between heads).
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline void block_key_range(const attention_problem<T, Policy, S>& p, const sequence_span& seq,
                            index_t q0, index_t rows, index_t& lo, index_t& hi) {
  lo = std::numeric_limits<index_t>::max();
  hi = std::numeric_limits<index_t>::min();
  for (index_t r = 0; r < rows; ++r) {
    const row_keys k = visible_keys(p.mask, seq, 0, q0 + r, false);
    if (k.end > k.begin) lo = std::min(lo, k.begin), hi = std::max(hi, k.end);
  }
  if (lo >= hi) lo = hi = seq.k_begin;
}

/// The number hi of leading keys [0, hi) of the block [kb, kb + nk) that some row of
/// info[0, rows) may see (0: no row sees the block). Ignores boolean masks (their rows
/// mask the rest themselves).
inline index_t visible_block_keys(const row_keys* info, index_t rows, index_t kb, index_t nk) {
  index_t hi = 0;
  for (index_t r = 0; r < rows; ++r) {
    const row_keys& rk = info[r];
    if (rk.visible > 0 && rk.begin < kb + nk && rk.end > kb)
      hi = std::max(hi, std::min(rk.end, kb + nk) - kb);
  }
  return hi;
}

// ---- The row-logit step -------------------------------------------------------------

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

/// A score recomputed so that it cannot overflow on the way: factor * (q . k) with q and k
/// scaled by powers of two into [-1, 1] (exact) and summed in double, then scaled back:
/// the value of the exact product rounded to T, +-inf (the exact sign) where it
/// overflows T, NaN where q or k holds NaN or inf. The rare path of rows whose dot
/// products overflow (the kernels' scores are the plain dot products otherwise). q and k
/// are read in their storage types (16- and 8-bit values widened exactly).
template <class Q,                 // storage type of q (storage.hpp)
          class K,                 // storage type of k
          class T = compute_t<K>>  // the compute type of the result
inline T safe_score(const Q* q, const K* k, index_t d, double factor) {
  double mq = 0.0, mk = 0.0;
  for (index_t c = 0; c < d; ++c) {
    const double qc = to_compute(q[c]), kc = value_at(k, c);
    if (!std::isfinite(qc) || !std::isfinite(kc)) return std::numeric_limits<T>::quiet_NaN();
    mq = std::max(mq, std::abs(qc)), mk = std::max(mk, std::abs(kc));
  }
  int eq = 0, ek = 0;
  std::frexp(mq, &eq);
  std::frexp(mk, &ek);
  double acc = 0.0;
  for (index_t c = 0; c < d; ++c)
    acc += std::ldexp(double(to_compute(q[c])), -eq) * std::ldexp(double(value_at(k, c)), -ek);
  return static_cast<T>(std::ldexp(acc * factor, eq + ek));
}

/// s[j] = safe_score(q, k0 + krows(j), d, factor) for j < nk: a block's scores recomputed
/// without overflow (q the row's unscaled query, factor m * scale, or the scale alone when
/// the score epilogue follows; key j at k0 + krows(j)).
template <class T,  // compute type: float or double
          class Q,  // storage type of q (storage.hpp) whose compute type is T
          class K>  // storage type of the keys whose compute type is T
inline void safe_scores(T* s, index_t nk, const Q* q, const K* k0, row_map krows, index_t d,
                        double factor) {
  for (index_t j = 0; j < nk; ++j) s[j] = safe_score(q, k0 + krows(j), d, factor);
}

/// The row-logit step on a block of one row's raw scores s[0, nk) (tensor keys kb..kb+nk-1;
/// s_j = factor q . k_j, factor = query_factor): with the logit's extras (logit non-null:
/// the row's epilogue, row_logit_of) the score epilogue turns them into m z_j (in double,
/// rounded once; the soft-cap's tanh a vector at a time, score_epilogue_simd), then the mask
/// sets the keys the row cannot see to -inf. Returns false, leaving s as it was, when the
/// row sees no key of the block.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // compute type: float or double
inline bool row_logits(T* s, index_t kb, index_t nk, const row_keys& row, const row_logit* logit) {
  if (row.visible == 0) return false;
  const index_t lo = std::max(row.begin, kb), hi = std::min(row.end, kb + nk);
  if (hi <= lo) return false;
  if (logit != nullptr) score_epilogue_simd<Arch>(s, kb, nk, *logit);  // -inf stays -inf
  return mask_row(s, kb, nk, row);
}

/// row_logits on scores recomputed without overflow: s[j] = safe_score(q, k0 + krows(j),
/// d, factor) for j < nk, then the epilogue and the mask. The rare path of blocks whose
/// scores held +inf or NaN (online_softmax.hpp states what the kernels then do).
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T,     // compute type: float or double
          class Q,     // storage type of q (storage.hpp) whose compute type is T
          class K>     // storage type of the keys whose compute type is T
inline void recompute_row_logits(T* s, index_t kb, index_t nk, const row_keys& row,
                                 const row_logit* logit, const Q* q, const K* k0, row_map krows,
                                 index_t d, double factor) {
  safe_scores(s, nk, q, k0, krows, d, factor);
  if (logit != nullptr) score_epilogue_simd<Arch>(s, kb, nk, *logit);
  mask_row(s, kb, nk, row);
}

// ---- Sinks ------------------------------------------------------------------------

/// The sink logit m sink_h (logit.hpp) of a row of head h (row: its keys, p.keys_of), or
/// -inf when the row takes no sink: no sinks, a -inf sink, a row that saw no key, or m
/// sink_h = -inf.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline double sink_logit(const attention_problem<T, Policy, S>& p, index_t h, const row_keys& row) {
  const double ninf = -std::numeric_limits<double>::infinity();
  if (!p.logit.has_sinks() || row.visible == 0) return ninf;
  const double sink = static_cast<double>(p.logit.sinks[h]);
  return sink == ninf ? ninf : row_multiplier(p, row, h) * sink;
}

/// Adds a row's sink, the logit z = sink_logit (-inf: nothing to add) with a zero value,
/// to its finished state and rescales its unnormalised output o[0, d) to the merged
/// maximum; a row whose keys all weighed 0 (empty state, o = 0) gets state {z, 1} (out 0,
/// lse z).
template <class T>  // compute type: float or double
inline void add_sink(double z, T* o, index_t d, row_state<double>& state) {
  if (z == -std::numeric_limits<double>::infinity()) return;
  const row_state<double> merged = merge(state, row_state<double>{z, 1.0});
  if (merged.max != state.max) {
    const T shrink = static_cast<T>(std::exp(state.max - merged.max));
    for (index_t c = 0; c < d; ++c) o[c] *= shrink;
  }
  state = merged;
}

/// The materialised rows' sink: rescales the normalised weights w[0, n) of a row whose
/// softmax state is `state` by S e^M / (S e^M + e^z), z = sink_logit (-inf: no sink), and
/// returns the row's log-sum-exp with the sink. No sink, or one too small to change the
/// state's maximum or sum, leaves the plain row's bits (a NaN row's hidden keys keep weight
/// 0); a sink on a NaN row makes all its weights NaN.
template <class T>  // compute type: float or double
inline T sink_weights(double z, T* w, index_t n, const row_state<T>& state) {
  if (z == -std::numeric_limits<double>::infinity()) return state.log_sum_exp();
  const row_state<double> plain{static_cast<double>(state.max), static_cast<double>(state.sum)};
  const row_state<double> merged = merge(plain, row_state<double>{z, 1.0});
  if (merged.max == plain.max && merged.sum == plain.sum) return state.log_sum_exp();
  const T shrink =
      merged.max != plain.max ? static_cast<T>(std::exp(plain.max - merged.max)) : T(1);
  const T factor = static_cast<T>(static_cast<double>(shrink) * state.sum / merged.sum);
  for (index_t j = 0; j < n; ++j) w[j] *= factor;
  return static_cast<T>(merged.log_sum_exp());
}

/// 1 when head h has a sink (a finite or +inf logit: one more term in the row's
/// denominator), else 0.
inline index_t has_sink(const logit_options& logit, index_t h) {
  return logit.has_sinks() && logit.sinks[h] != -std::numeric_limits<float>::infinity() ? 1 : 0;
}

/// The sink's share of a row (head h, multiplier m, log-sum-exp lse with the sink, D =
/// dout . out): dy_sink = -exp(m sink_h - lse) D. Adds (sink - shift) dy_sink to dm and
/// returns m dy_sink (dL/dsink); 0 without a sink or for a row that saw no key.
template <class T, class Policy, class FS>  // compute type; a length policy; storage_set
inline double sink_share(const attention_problem<T, Policy, FS>& f, index_t h, const row_keys& row,
                         double m, double lse, double D, double shift, double& dm) {
  if (!f.logit.has_sinks() || row.visible == 0 || !std::isfinite(lse)) return 0.0;
  const double sink = static_cast<double>(f.logit.sinks[h]);
  if (sink == -std::numeric_limits<double>::infinity()) return 0.0;
  const double dy = -std::exp(m * sink - lse) * D;
  dm += (sink - shift) * dy;
  return m * dy;
}

}  // namespace ssmax::kernels::detail
