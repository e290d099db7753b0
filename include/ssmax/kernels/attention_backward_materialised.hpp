#pragma once
// The materialised path of the attention backward (kernels/attention_backward.hpp has the
// formulas, the work split and the fused path): one query row at a time, its full score
// row over the keys it can see, a = softmax(m z) recomputed by the row kernel (the sink one
// more entry with u = 0), then the row backward kernel gives m dy and dL/dm; memory O(n_k)
// per thread beyond the accumulators. Storage as the fused path: q, k, v and dout widened
// as they are read (in registers), dq accumulated in a T row and each gradient rounded
// once, on its store; out is not read (D = sum_j a_j u_j comes from the recomputed row).

#include <algorithm>
#include <cmath>
#include <limits>

#include "attention_backward.hpp"

namespace ssmax::kernels {

namespace detail {

/// Two dot products at once: r0 = a0 . b0, r1 = a1 . b1 over [0, d), each operand widened
/// to T in registers when stored in 16 bits.
template <class Arch,                              // xsimd architecture tag or scalar_arch
          class T,                                 // compute type: float or double
          class A0, class B0, class A1, class B1>  // storage types whose compute type is T
inline void dot_pair(const A0* a0, const B0* b0, const A1* a1, const B1* b1, index_t d, T& r0,
                     T& r1) {
  using S = ssmax::detail::simd<Arch, T>;
  constexpr index_t W = S::width;
  auto s0 = S::splat(T(0)), s1 = s0;
  index_t c = 0;
  for (; c + W <= d; c += W) {
    s0 = S::fma(load_compute<Arch>(a0 + c), load_compute<Arch>(b0 + c), s0);
    s1 = S::fma(load_compute<Arch>(a1 + c), load_compute<Arch>(b1 + c), s1);
  }
  r0 = S::reduce_add(s0);
  r1 = S::reduce_add(s1);
  for (; c < d; ++c) {  // tail: never read past d
    r0 += to_compute(a0[c]) * to_compute(b0[c]);
    r1 += to_compute(a1[c]) * to_compute(b1[c]);
  }
}

/// One row's buffers in the materialised backward (slices of the thread's scratch).
template <class T>  // compute type: float or double
struct materialised_row_buffers {
  T* z;  ///< [n + 1] logits z_j (-inf where hidden), the sink last
  T* w;  ///< [n + 1] weights a_j
  T* u;  ///< [n + 1] u_j = dout_i . v_j (0 where hidden and for the sink), then m dy_j
  T* x;  ///< [n] raw scores scale q . k when the logit has extras (logit.hpp), else null
};

/// Scores of row (b, i, h) over keys [row.begin, row.end) of kv head g into rb (z, u, and x
/// when rb.x is set), then the logits z = softcap(x) + bias (the epilogue at m = 1; hidden
/// keys stay -inf) and the sink z[n]. recompute: the scores without overflow (safe_score).
/// Returns the entries of the row's softmax: n, or n + 1 with the sink.
template <class Arch, class T, class Policy, class S>  // arch; compute type; policy; storage
index_t materialised_logits(const attention_backward_problem<T, Policy, S>& p,
                            const sequence_span& seq, index_t h, index_t i, const row_keys& row,
                            const materialised_row_buffers<T>& rb, bool recompute) {
  const auto& f = p.forward;
  const index_t b = seq.tensor_batch, g = f.kv_head(h), d = f.q.dim, n = row.end - row.begin;
  const T ninf = -std::numeric_limits<T>::infinity();
  T* scores = rb.x != nullptr ? rb.x : rb.z;
  for (index_t j = 0; j < n; ++j) {
    const index_t key = row.begin + j;
    if (recompute) {
      if (scores[j] != ninf)
        scores[j] = safe_score(f.q.row(b, i, h), f.k.row(b, key, g), d, f.scale);
      continue;
    }
    T qk, dv;
    dot_pair<Arch, T>(f.q.row(b, i, h), f.k.row(b, key, g), p.dout.row(b, i, h), f.v.row(b, key, g),
                      d, qk, dv);
    const bool seen = row.allowed == nullptr || row.allowed[key];
    scores[j] = seen ? static_cast<T>(f.scale) * qk : ninf;
    rb.u[j] = seen ? dv : T(0);
  }
  if (rb.x != nullptr) {  // the row-logit step at m = 1 (the row kernel applies m)
    row_logit logit = row_logit_of(f, seq, h, i, row);
    logit.m = 1.0;
    std::copy(rb.x, rb.x + n, rb.z);
    row_logits<Arch>(rb.z, row.begin, n, row, &logit);
  }
  if (!f.logit.has_sinks() || !(f.logit.sinks[h] > -std::numeric_limits<float>::infinity()))
    return n;
  rb.z[n] = static_cast<T>(f.logit.sinks[h]), rb.u[n] = T(0);
  return n + 1;
}

/// One row of the materialised backward: its dq row into sc.dq, and dk, dv into the task's
/// accumulators sc.dk, sc.dv; returns dL/dm and, in d_sink, m dy_sink (0 without a sink).
template <class Arch, class T, class Policy, class S>  // arch; compute type; policy; storage
double materialised_row(const attention_backward_problem<T, Policy, S>& p,
                        const backward_scratch<T>& sc, const materialised_row_buffers<T>& rb,
                        const sequence_span& seq, index_t h, index_t i, const row_keys& row,
                        index_t dp, double& d_sink) {
  const auto& f = p.forward;
  const index_t b = seq.tensor_batch, g = f.kv_head(h), d = f.q.dim, n = row.end - row.begin;
  const T m = static_cast<T>(row_multiplier(f, row, h)), scale = static_cast<T>(f.scale);
  const T inf = std::numeric_limits<T>::infinity();
  const auto* go = p.dout.row(b, i, h);
  const index_t n_all = materialised_logits<Arch>(p, seq, h, i, row, rb, false);
  row_state<T> st = scaled_softmax_row<Arch>(rb.z, rb.w, n_all, m);
  if (!(st.max < inf) || std::isnan(st.sum)) {  // +inf or NaN: recompute without overflow
    materialised_logits<Arch>(p, seq, h, i, row, rb, true);
    st = scaled_softmax_row<Arch>(rb.z, rb.w, n_all, m);
  }
  d_sink = 0.0;
  if (st.max == inf) {  // +inf keys share the weight: only dv = a dout
    for (index_t j = 0; j < n; ++j)
      if (rb.w[j] != T(0)) axpy<Arch>(sc.dv + (row.begin + j - seq.k_begin) * dp, rb.w[j], go, d);
    return 0.0;
  }
  const double dm = scaled_softmax_row_backward<Arch>(rb.z, rb.w, rb.u, rb.u, n_all, m);
  if (n_all > n) d_sink = static_cast<double>(rb.u[n]);
  T* dq = sc.dq;
  const double cap = f.logit.softcap;
  for (index_t j = 0; j < n; ++j) {
    if (rb.w[j] == T(0)) continue;
    const index_t key = row.begin + j, at = (key - seq.k_begin) * dp;
    const T dx = rb.x != nullptr && cap > 0.0
                     ? static_cast<T>(rb.u[j] * softcap_slope(rb.x[j], cap))
                     : rb.u[j];
    axpy<Arch>(dq, scale * dx, f.k.row(b, key, g), d);
    axpy<Arch>(sc.dk + at, scale * dx, f.q.row(b, i, h), d);
    axpy<Arch>(sc.dv + at, rb.w[j], go, d);
  }
  return dm;
}

}  // namespace detail

/// Materialised backward. Pre: p validated; ws holds attention_backward_workspace_bytes.
/// policy_grad (per-thread copies summed in task order) may be null.
template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // compute type: float or double
          class Policy,  // a length policy (length_policy.hpp)
          class S>       // storage types (backward_storage_set)
void attention_backward_materialised(const attention_backward_problem<T, Policy, S>& p,
                                     attention_workspace& ws, policy_gradient* policy_grad) {
  const auto& f = p.forward;
  const index_t d = f.q.dim;
  const bool raw = f.logit.transforms_scores();
  const auto row_task = [&](const detail::backward_plan<Arch, T>& plan,
                            const detail::backward_scratch<T>& sc, const sequence_span& seq,
                            index_t h, const detail::row_records& records) {
    const index_t b = seq.tensor_batch;
    const detail::materialised_row_buffers<T> rb{sc.s, sc.s + plan.lds, sc.ds,
                                                 raw ? sc.s + 2 * plan.lds : nullptr};
    for (index_t i = seq.q_begin; i < seq.q_end; ++i) {
      const row_keys row = f.keys_of(seq, h, i);
      std::fill(sc.dq, sc.dq + d, T(0));
      double dm = 0.0, d_sink = 0.0;
      if (row.visible > 0)
        dm = detail::materialised_row<Arch>(p, sc, rb, seq, h, i, row, plan.dp, d_sink);
      detail::store_gradient(p.dq.row(b, i, h), sc.dq, d);
      detail::record_row(p, records, b, h, i, row, dm, d_sink);
    }
  };
  detail::run_key_tasks<Arch>(p, ws, true, policy_grad, row_task);
}

}  // namespace ssmax::kernels
