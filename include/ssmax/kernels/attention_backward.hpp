#pragma once
// Attention backward kernels (FlashAttention's backward, with the per-row multiplier m
// of a length policy and its gradient dL/dm). For a row i of head h that sees keys j:
//   z_j = scale q_i . k_j,  a = softmax(m z),  u_j = dout_i . v_j,  D = sum_j a_j u_j
//   dy_j = a_j (u_j - D);   dq_i += m scale sum_j dy_j k_j;   dk_j += m scale dy_j q_i;
//   dv_j += a_j dout_i;     dL/dm = sum_j z_j dy_j  (then ds_h, db_h: policy_gradient.hpp)
//
// Two paths, same work split: one task per (sequence, key/value head g), which owns the
// dk and dv rows of g in that sequence and the dq rows of every query head sharing g, so
// tasks never write the same memory and the results are bitwise identical for any thread
// count.
//   materialised  one query row at a time: the row's full score row over the keys it can
//                 see, a = softmax(m z) recomputed by the row kernel, then the row
//                 backward kernel (kernels/row_backward.hpp) gives m dy and dL/dm;
//                 memory O(n_k) per thread beyond the accumulators.
//   fused         blocks of query rows x blocks of keys: scores recomputed block by block
//                 from q, k and the saved log-sum-exp (a_j = exp(m z_j - lse)), D = dout_i
//                 . out_i, dS = a (u - D) per block, and dq, dk, dv accumulated by GEMMs;
//                 memory O((n_q + n_k) d), never n_q x n_k. dL/dm = sum_j (z_j - z_0) dy_j
//                 with z_0 = (lse - log n') / m (detail::logit_shift), n' = n plus one for
//                 a sink (one more term of the denominator): sum_j dy_j = 0 (the sink's
//                 included), so the shift changes nothing but the rounding, and z_0 lies
//                 between the row's mean and largest logit, which keeps the terms as small
//                 as the row's logit range (with log n alone, a sink put z_0 near
//                 log(1 + 1/n) / m: at m = 0.001 the error of D = dout . out came back
//                 multiplied by about 300). It is the same in every call that sees part of the
//                 row's keys (context parallelism: a slice's dy do not sum to 0, so a slice-local
//                 z_0, such as its first visible logit, would change each slice's dL/dm).
// With the logit's extras (logit.hpp) the scores are the raw x = scale q . k, turned into
// z = softcap(x) + bias by the score epilogue at m = 1; dS takes the factor softcap'(x)
// before the GEMMs; the sink is one more logit with a zero value (its dy_sink = -a_sink D
// adds sink dy_sink to dL/dm and m dy_sink to d_sinks, summed per head in row order).
// Rows whose scores hold +inf (kernels/online_softmax.hpp: overflowing products) have
// weights that do not depend on q or k: they add nothing to dq, dk or dL/dm, and
// dv_j += a_j dout_i with a_j = 1 / (their number of +inf keys) on those keys.
// Storage (backward_tasks.hpp, backward_storage_set): everything is computed in T; q and
// dout are widened into their float copies (setup_backward_rows), K^T and V while packing
// (block_scores, block_values, as the forward), out as D = dout . out is summed (in
// double); dq, dk and dv are accumulated in T and rounded once, on their store.
// Nothing here validates: attention_backward.hpp has checked every argument.

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "backward_tasks.hpp"
#include "gemm.hpp"
#include "key_streams.hpp"
#include "row_backward.hpp"

namespace ssmax::kernels {

namespace detail {

/// Per-row constants of a block of query rows in the fused backward.
template <class T,  // compute type: float or double
          class Q>  // storage type of q
struct backward_rows {
  T m[kBackwardQueryBlock];      ///< the policy's multiplier
  T lse[kBackwardQueryBlock];    ///< the forward's log-sum-exp
  T D[kBackwardQueryBlock];      ///< dout . out
  T flush[kBackwardQueryBlock];  ///< flush_threshold of the row's visible count
  /// Rows whose forward lse is +inf (+inf scores): 1 / the number of +inf keys; else 0.
  T inv_top[kBackwardQueryBlock];
  const Q* q[kBackwardQueryBlock];       ///< the row's query (as stored)
  double factor[kBackwardQueryBlock];    ///< m * scale: the forward's score is factor q . k
  bool raw = false;                      ///< the scores go through the epilogue (logit.hpp)
  row_logit logit[kBackwardQueryBlock];  ///< the row's epilogue at m = 1 (when raw)
};

/// The number of keys of `row` (kv head g) whose score factor * q . k is +inf
/// (safe_score): the keys that share a +inf row's weight.
template <class T, class Policy, class S>  // compute type; a length policy; storage_set
index_t infinite_keys(const attention_problem<T, Policy, S>& f, const sequence_span& seq,
                      const row_keys& row, index_t g, const typename S::q* q, double factor) {
  index_t top = 0;
  for (index_t j = row.begin; j < row.end; ++j)
    if (row.allowed == nullptr || row.allowed[j])
      top += safe_score(q, f.k.row(seq.tensor_batch, j, g), f.q.dim, factor) ==
             std::numeric_limits<T>::infinity();
  return top;
}

/// Fused backward, step 1: the per-row setup of query rows q0..q0+rows-1 of head h: keys,
/// m, lse, D = dout . out, scale q and dout both compact ([rows, d]) and zero-padded
/// ([rows, dp]); zeroes the dq and dL/dm accumulators.
template <class T, class Policy, class S>  // compute type; a length policy; storage
void setup_backward_rows(const attention_backward_problem<T, Policy, S>& p,
                         const backward_scratch<T>& sc,
                         backward_rows<T, typename S::forward::q>& rw, const sequence_span& seq,
                         index_t h, index_t q0, index_t rows, index_t dp) {
  const auto& f = p.forward;
  const index_t b = seq.tensor_batch, d = f.q.dim;
  const T scale = static_cast<T>(f.scale);
  for (index_t r = 0; r < rows; ++r) {
    const index_t i = q0 + r;
    sc.info[r] = f.keys_of(seq, h, i);
    rw.m[r] = static_cast<T>(row_multiplier(f, sc.info[r], h));
    rw.raw = f.logit.transforms_scores();
    if (rw.raw) rw.logit[r] = row_logit_of(f, seq, h, i, sc.info[r]), rw.logit[r].m = 1.0;
    rw.lse[r] = p.lse[f.row_index(b, h, i)];
    rw.flush[r] = flush_threshold<T>(std::max<index_t>(1, sc.info[r].visible));
    const auto* qi = f.q.row(b, i, h);
    rw.q[r] = qi;
    rw.factor[r] = double(rw.m[r]) * f.scale;
    rw.inv_top[r] = T(0);
    if (rw.lse[r] == std::numeric_limits<T>::infinity() && !rw.raw) {
      const index_t top = infinite_keys(f, seq, sc.info[r], f.kv_head(h), qi, rw.factor[r]);
      if (top > 0) rw.inv_top[r] = T(1) / static_cast<T>(top);
    }
    const auto* go = p.dout.row(b, i, h);
    const auto* oi = p.out.row(b, i, h);
    double D = 0.0;  // with out as stored: attention_backward.hpp bounds its rounding
    for (index_t c = 0; c < d; ++c) {
      const T g = to_compute(go[c]);
      sc.qs[r * dp + c] = sc.qc[r * d + c] = scale * to_compute(qi[c]);
      sc.dop[r * dp + c] = sc.doc[r * d + c] = g;
      D += static_cast<double>(g) * static_cast<double>(to_compute(oi[c]));
    }
    std::fill(sc.qs + r * dp + d, sc.qs + (r + 1) * dp, T(0));
    std::fill(sc.dop + r * dp + d, sc.dop + (r + 1) * dp, T(0));
    rw.D[r] = static_cast<T>(D);
    sc.dm[r] = 0.0;
    sc.shift[r] = logit_shift<T>(rw.m[r], rw.lse[r], sc.info[r].n + has_sink(f.logit, h));
  }
  std::fill(sc.dq, sc.dq + rows * dp, T(0));
}

/// Fused backward, step 2, one row of one key block: turns the masked scores z (sr) into
/// the weights a_j = exp(m z_j - lse) (0 where hidden or flushed) and dP (dr) into
/// m dy_j = m a_j (u_j - D), and returns sum_j (z_j - shift) dy_j, this block's share of
/// dL/dm.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
double backward_row_block(T* sr, T* dr, index_t nk, T m, T lse, T D, T flush, T shift) {
  const T ninf = -std::numeric_limits<T>::infinity();
  return blocked_sums<Arch, T, 1>(nk, [&](auto tag, index_t at) {
    using V = decltype(tag);
    const auto zero = V::splat(T(0));
    const auto zv = V::load(sr + at);
    const auto t = V::fma(V::splat(m), zv, V::splat(-lse));
    const auto av = V::select(zv == V::splat(ninf), zero, flushed_exp<V>(t, V::splat(flush)));
    const auto dy = av * (V::load(dr + at) - V::splat(D));
    V::store(sr + at, av);
    V::store(dr + at, V::splat(m) * dy);
    return std::array<typename V::vec, 1>{V::select(av == zero, zero, dy * (zv - V::splat(shift)))};
  })[0];
}

/// Fused backward, step 2, every row of the key block [kb, kb + nk): masks each row's
/// scores (sc.s) and dP (sc.ds) and runs backward_row_block; rows that see no key of the block get
/// zeros.
template <class Arch, class T, class Q, class K>  // arch; compute type; q's, k's storage
void backward_block_weights(const backward_scratch<T>& sc, const backward_rows<T, Q>& rw,
                            index_t rows, index_t kb, index_t nk, index_t lds, const K* k0,
                            index_t kstride, index_t d) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (index_t r = 0; r < rows; ++r) {
    T* sr = sc.s + r * lds;
    T* dr = sc.ds + r * lds;
    const row_keys& rk = sc.info[r];
    T* x = sc.t;  // the raw scores of this row, while sc.t is free (logit.hpp)
    if (rw.raw) std::copy(sr, sr + nk, x);
    if (!row_logits<Arch>(sr, kb, nk, rk, rw.raw ? &rw.logit[r] : nullptr)) {
      std::fill(sr, sr + nk, T(0));
      std::fill(dr, dr + nk, T(0));
      continue;
    }
    if (rw.inv_top[r] != T(0)) {  // a +inf row: a = 1 / top on its +inf keys, dS = 0
      for (index_t j = 0; j < nk; ++j) {
        const bool top = sr[j] != ninf && safe_score(rw.q[r], k0 + j * kstride, d, rw.factor[r]) ==
                                              std::numeric_limits<T>::infinity();
        sr[j] = top ? rw.inv_top[r] : T(0);
      }
      std::fill(dr, dr + nk, T(0));
      continue;
    }
    sc.dm[r] += backward_row_block<Arch>(sr, dr, nk, rw.m[r], rw.lse[r], rw.D[r], rw.flush[r],
                                         static_cast<T>(sc.shift[r]));
    if (rw.raw && rw.logit[r].cap > 0.0)  // dL/dx = dL/dz softcap'(x)
      for (index_t j = 0; j < nk; ++j)
        dr[j] = static_cast<T>(dr[j] * softcap_slope(x[j], rw.logit[r].cap));
  }
}

/// Fused backward, step 3: accumulates the key block's gradients, dq += (m dS) K_block,
/// dk += (m dS)^T (scale q), dv += A^T dout, into the task's accumulators; dk_acc and
/// dv_acc point at the block's first key.
template <class Arch, class T, class K>  // arch; compute type; storage type of k
void backward_block_gradients(const backward_scratch<T>& sc, index_t rows, const K* k0,
                              index_t kstride, index_t nk, index_t d, index_t dp, index_t lds,
                              T* dk_acc, T* dv_acc) {
  block_values<Arch>(sc.ds, lds, rows, k0, kstride, nk, d, dp, sc.dq, sc.vp);
  for (auto [src, acc, rhs] :
       {std::tuple{sc.ds, dk_acc, sc.qs}, std::tuple{sc.s, dv_acc, sc.dop}}) {
    for (index_t j = 0; j < nk; ++j)
      for (index_t r = 0; r < rows; ++r) sc.t[j * rows + r] = src[r * lds + j];
    gemm<Arch>(nk, dp, rows, sc.t, rows, rhs, dp, acc, dp, true);
  }
}

}  // namespace detail

/// Fused backward. Pre: p validated (p.lse and p.out set); ws holds
/// attention_backward_workspace_bytes. policy_grad may be null.
template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // compute type: float or double
          class Policy,  // a length policy (length_policy.hpp)
          class S>       // storage types (backward_storage_set)
void attention_backward_fused(const attention_backward_problem<T, Policy, S>& p,
                              attention_workspace& ws, policy_gradient* policy_grad) {
  const auto& f = p.forward;
  const index_t d = f.q.dim;
  const T scale = static_cast<T>(f.scale);
  const auto head_task = [&](const detail::backward_plan<Arch, T>& plan,
                             const detail::backward_scratch<T>& sc, const sequence_span& seq,
                             index_t h, const detail::row_records& records) {
    const index_t b = seq.tensor_batch, g = f.kv_head(h), dp = plan.dp, lds = plan.lds;
    detail::backward_rows<T, typename S::forward::q> rw;
    for (index_t q0 = seq.q_begin; q0 < seq.q_end; q0 += kBackwardQueryBlock) {
      const index_t rows = std::min(kBackwardQueryBlock, seq.q_end - q0);
      detail::setup_backward_rows(p, sc, rw, seq, h, q0, rows, dp);
      index_t lo, hi;
      detail::block_key_range(f, seq, q0, rows, lo, hi);
      for (index_t kb = lo; kb < hi; kb += kKeyBlock) {
        const index_t nk = std::min(kKeyBlock, hi - kb), at = (kb - seq.k_begin) * dp;
        const auto* k0 = f.k.row(b, kb, g);
        // Scores z = (scale q) K^T and dP = dout V^T of the block (over the compact
        // [rows, d] copies), then the weights and dS, then the gradients.
        detail::block_scores<Arch>(sc.qc, rows, d, k0, f.k.stride_s, nk, sc.s, lds, sc.kt);
        detail::block_scores<Arch>(sc.doc, rows, d, f.v.row(b, kb, g), f.v.stride_s, nk, sc.ds, lds,
                                   sc.kt);
        detail::backward_block_weights<Arch>(sc, rw, rows, kb, nk, lds, k0, f.k.stride_s, d);
        detail::backward_block_gradients<Arch>(sc, rows, k0, f.k.stride_s, nk, d, dp, lds,
                                               sc.dk + at, sc.dv + at);
      }
      for (index_t r = 0; r < rows; ++r) {
        detail::store_gradient(p.dq.row(b, q0 + r, h), sc.dq + r * dp, d, scale);
        const double d_sink =
            detail::sink_share(f, h, sc.info[r], double(rw.m[r]), double(rw.lse[r]),
                               double(rw.D[r]), double(static_cast<T>(sc.shift[r])), sc.dm[r]);
        detail::record_row(p, records, b, h, q0 + r, sc.info[r], sc.dm[r], d_sink);
      }
    }
  };
  detail::run_key_tasks<Arch>(p, ws, false, policy_grad, head_task);
}

}  // namespace ssmax::kernels
