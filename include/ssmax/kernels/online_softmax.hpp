#pragma once
// The online-softmax steps of the attention kernels, per query row: which keys a row
// sees and its multiplier (setup_rows), masking a block of scores, the streaming update
// of the row's (max, sum) state and output accumulator, and writing the finished row.
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
    // All masked (or row_max missed a NaN: rare enough to look) / already NaN.
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

/// A score recomputed so that it cannot overflow on the way: factor * (q . k) with q and k
/// scaled by powers of two into [-1, 1] (exact) and summed in double, then scaled back:
/// the value of the exact product rounded to T, +-inf (the exact sign) where it
/// overflows T, NaN where q or k holds NaN or inf. The rare path of rows whose dot
/// products overflow (the kernels' scores are the plain dot products otherwise). q and k
/// are read in their storage types (16-bit values widened exactly).
template <class Q,                 // storage type of q (storage.hpp)
          class K,                 // storage type of k
          class T = compute_t<K>>  // the compute type of the result
inline T safe_score(const Q* q, const K* k, index_t d, double factor) {
  double mq = 0.0, mk = 0.0;
  for (index_t c = 0; c < d; ++c) {
    const double qc = to_compute(q[c]), kc = to_compute(k[c]);
    if (!std::isfinite(qc) || !std::isfinite(kc)) return std::numeric_limits<T>::quiet_NaN();
    mq = std::max(mq, std::abs(qc)), mk = std::max(mk, std::abs(kc));
  }
  int eq = 0, ek = 0;
  std::frexp(mq, &eq);
  std::frexp(mk, &ek);
  double acc = 0.0;
  for (index_t c = 0; c < d; ++c)
    acc += std::ldexp(double(to_compute(q[c])), -eq) * std::ldexp(double(to_compute(k[c])), -ek);
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

/// The slow path of online_row, for a block whose scores held +inf or NaN, once the caller
/// has recomputed them (safe_scores) and, with the logit's extras, run the score epilogue
/// (logit.hpp) on them: masks s[0, nk) (keys kb..kb+nk-1), then
/// - NaN (q or a visible key holds NaN or inf): the row becomes NaN (state and o);
/// - +inf (overflow with a positive exact product): the +inf keys share the weight
///   equally: o restarts from 0 unless the row is already at +inf, state {+inf, count},
///   s = 1 on the +inf keys and 0 elsewhere (the caller's P V adds their values);
/// - otherwise (a NaN that cancelling overflows made): online_row on the fixed scores.
template <class Arch,  // xsimd architecture tag or scalar_arch
          class T>     // compute type: float or double
inline void online_row_nonfinite(T* s, index_t nk, index_t kb, const row_keys& row,
                                 row_state<double>& state, T* o, index_t dp, T flush_below) {
  const T inf = std::numeric_limits<T>::infinity();
  mask_row(s, kb, nk, row);
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

/// The policy's multiplier m of a row of head h (0 for a row that sees no key).
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline double row_multiplier(const attention_problem<T, Policy, S>& p, const row_keys& row,
                             index_t h) {
  return row.visible > 0 ? p.policy->multiplier({row.n, row.position, h}) : 0.0;
}

/// The factor the kernels fold into a row's query: m * scale, or scale alone when the
/// scores go through the score epilogue (logit.hpp), which applies m after the transform.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline double query_factor(const attention_problem<T, Policy, S>& p, const row_keys& row,
                           index_t h) {
  return p.logit.transforms_scores() ? p.scale : row_multiplier(p, row, h) * p.scale;
}

/// The score epilogue of row i of head h in seq (logit.hpp), row = p.keys_of(seq, h, i).
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline row_logit row_logit_of(const attention_problem<T, Policy, S>& p, const sequence_span& seq,
                              index_t h, index_t i, const row_keys& row) {
  return logit_of_row(p.logit, p.mask, seq, h, i, row, row_multiplier(p, row, h));
}

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

/// Writes one finished row: out = o / sum (zeros when the state is empty; o itself when
/// `normalised`, as recompute_normalised leaves it), lse (in T). The one rounding to a
/// 16-bit out happens here: o / sum in T, then to nearest even.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
inline void finish_row(const attention_problem<T, Policy, S>& p, index_t b, index_t i, index_t h,
                       const T* o, const row_state<double>& state, bool normalised = false) {
  using O = typename S::out;
  O* dst = p.out.row(b, i, h);
  const index_t d = p.q.dim;
  if (state.empty()) {
    std::fill(dst, dst + d, from_compute<O>(T(0)));
  } else {
    const T inv = normalised ? T(1) : static_cast<T>(1.0 / state.sum);
    for (index_t c = 0; c < d; ++c) dst[c] = from_compute<O>(o[c] * inv);
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

/// The rare path of output_overflowed: row i of head h in seq recomputed from q, k and v
/// over the keys it sees, with its weights normalised before they meet the values, so that
/// o[0, d) holds out itself and cannot overflow where out does not: w_j = exp(m z_j - max)
/// / sum from the row's final state (the sink's term included; the +inf keys sharing
/// equally when the row is at +inf), z_j recomputed without overflow (safe_scores, the
/// score epilogue, the mask), each w_j rounded once to T, then o = sum_j w_j v_j in T over
/// the keys of the row's span [begin, end) (hidden ones with weight 0, as in P V).
/// Within the operator's bound (docs/numerics.md, "Attention"); a value that is not
/// finite gives what the normal path gives (inf or NaN; 0 x NaN for a hidden key's).
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
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
    const row_map rows{p.k.stride_s, p.block_rows(b, kb, nk, offsets)};
    safe_scores(s, nk, p.q.row(b, i, h), p.k_row(b, kb, g), rows, d, factor);
    if (transforms) score_epilogue(s, kb, nk, logit);
    mask_row(s, kb, nk, row);
    const auto* v0 = p.v_row(b, kb, g);
    for (index_t j = 0; j < nk; ++j) {
      const double z = static_cast<double>(s[j]);  // -inf: weight 0 (0 v, as P V has it)
      const double e = state.max == inf ? (z == inf ? 1.0 : 0.0) : std::exp(z - state.max);
      const T w = static_cast<T>(e / state.sum);
      const auto* vj = v0 + rows(j);
      for (index_t c = 0; c < d; ++c) o[c] += w * to_compute(vj[c]);
    }
  }
}

}  // namespace ssmax::kernels::detail
