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
//                 with z_0 = (lse - log n) / m (detail::logit_shift): sum_j dy_j = 0, so the
//                 shift changes nothing but the rounding, and z_0 lies between the row's
//                 mean and largest logit, which keeps the terms as small as the row's logit
//                 range. It is the same in every call that sees part of the row's keys
//                 (context parallelism: a slice's dy do not sum to 0, so a slice-local z_0,
//                 such as its first visible logit, would change each slice's dL/dm).
// With the logit's extras (logit.hpp) the scores are the raw x = scale q . k, turned into
// z = softcap(x) + bias by the score epilogue at m = 1; dS takes the factor softcap'(x)
// before the GEMMs; the sink is one more logit with a zero value (its dy_sink = -a_sink D
// adds sink dy_sink to dL/dm and m dy_sink to d_sinks, summed per head in row order).
// Rows whose scores hold +inf (kernels/online_softmax.hpp: overflowing products) have
// weights that do not depend on q or k: they add nothing to dq, dk or dL/dm, and
// dv_j += a_j dout_i with a_j = 1 / (their number of +inf keys) on those keys.
// Nothing here validates: attention_backward.hpp has checked every argument.

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../detail/parallel.hpp"
#include "../policy_gradient.hpp"
#include "gemm.hpp"
#include "key_streams.hpp"
#include "online_softmax.hpp"
#include "plan.hpp"
#include "row_backward.hpp"

namespace ssmax::kernels {

/// A validated attention backward call, as the kernels receive it.
template <class T,       // float or double
          class Policy>  // a length policy (length_policy.hpp)
struct attention_backward_problem {
  attention_problem<T, Policy> forward;  ///< q, k, v, policy, mask, scale, threads (out unused)
  tensor_view<const T> out;              ///< [B, n_q, H, d] the forward's output (fused: D)
  tensor_view<const T> dout;             ///< [B, n_q, H, d] dL/dout
  const T* lse = nullptr;                ///< [B, H, n_q] the forward's log-sum-exp (fused)
  tensor_view<T> dq;                     ///< [B, n_q, H, d]
  tensor_view<T> dk;                     ///< [B, n_k, H_kv, d]
  tensor_view<T> dv;                     ///< [B, n_k, H_kv, d]
  double* d_multiplier = nullptr;        ///< [B, H, n_q] dL/dm per row, or null
  double* d_sinks = nullptr;             ///< [H] dL/dsink_h, or null
};

namespace detail {

/// Buffers of one backward task's thread; pointers into the workspace. The materialised
/// path carves dk, dv, s and ds only; the others stay null.
template <class T>  // float or double
struct backward_scratch {
  T* dk = nullptr;           ///< [n_k, dp] accumulator of the task's keys
  T* dv = nullptr;           ///< [n_k, dp]
  T* s = nullptr;            ///< fused: [kFusedQueryBlock, lds] scores then weights;
                             ///< materialised: [2, lds] scores z, weights a of one row
  T* ds = nullptr;           ///< fused: [kFusedQueryBlock, lds] dP then m dS;
                             ///< materialised: [lds] u, then m dy, of one row
  T* t = nullptr;            ///< fused: [kKeyBlock, kFusedQueryBlock] a transposed block
  T* qs = nullptr;           ///< [kFusedQueryBlock, dp] scale * q, zero-padded
  T* dop = nullptr;          ///< [kFusedQueryBlock, dp] dout, zero-padded
  T* qc = nullptr;           ///< [kFusedQueryBlock, d] scale * q, compact
  T* doc = nullptr;          ///< [kFusedQueryBlock, d] dout, compact
  T* dq = nullptr;           ///< [kFusedQueryBlock, dp] accumulator
  T* kt = nullptr;           ///< [packed_kt_elements(d, W)] packed K^T or V^T of a block
  T* vp = nullptr;           ///< [padded_v_elements(d, W)] zero-padded key block
  double* dm = nullptr;      ///< [kFusedQueryBlock] dL/dm accumulators
  double* shift = nullptr;   ///< [kFusedQueryBlock] z_0 per row (logit_shift)
  row_keys* info = nullptr;  ///< [kFusedQueryBlock]
};

/// Tasks of a backward call: one per (sequence, kv head).
template <class T, class Policy>  // float or double; a length policy
inline index_t task_count(const attention_backward_problem<T, Policy>& p) {
  return p.forward.sequences() * p.forward.k.heads;
}

/// Workspace layout of a backward call: per-thread scratch, for the threads that can get
/// a task.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
struct backward_plan {
  index_t dp = 0, lds = 0;
  backward_scratch<T>* scratch = nullptr;

  /// full_rows: the materialised path, whose score buffers hold one whole row of n_k
  /// keys; the fused path's hold kFusedQueryBlock rows of one key block.
  template <class Policy>  // a length policy
  void carve(const attention_backward_problem<T, Policy>& p, bool full_rows, arena& a) {
    const bool fill = !a.counting();
    constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
    const index_t d = p.forward.q.dim, n_k = p.forward.k.seq;
    const int threads = ssmax::detail::threads_for(p.forward.threads, task_count(p));
    dp = round_up(d, W);
    const bool sinks = p.forward.logit.has_sinks(), raw = p.forward.logit.transforms_scores();
    lds = full_rows ? round_up(n_k + (sinks ? 1 : 0), W) : score_stride(W);  // + the sink
    scratch = a.take<backward_scratch<T>>(threads);
    for (int t = 0; t < threads; ++t) {
      backward_scratch<T> sc;
      sc.dk = a.take<T>(n_k * dp);
      sc.dv = a.take<T>(n_k * dp);
      if (full_rows) {
        sc.s = a.take<T>((raw ? 3 : 2) * lds);  // z, a (and the raw scores x)
        sc.ds = a.take<T>(lds);
      } else {
        sc.s = a.take<T>(kFusedQueryBlock * lds);
        sc.ds = a.take<T>(kFusedQueryBlock * lds);
        sc.t = a.take<T>(kKeyBlock * kFusedQueryBlock);
        sc.qs = a.take<T>(kFusedQueryBlock * dp);
        sc.dop = a.take<T>(kFusedQueryBlock * dp);
        sc.qc = a.take<T>(kFusedQueryBlock * d);
        sc.doc = a.take<T>(kFusedQueryBlock * d);
        sc.dq = a.take<T>(kFusedQueryBlock * dp);
        sc.kt = a.take<T>(packed_kt_elements(d, W));
        sc.vp = a.take<T>(padded_v_elements(d, W));
        sc.dm = a.take<double>(kFusedQueryBlock);
        sc.shift = a.take<double>(kFusedQueryBlock);
        sc.info = a.take<row_keys>(kFusedQueryBlock);
      }
      if (fill) scratch[t] = sc;
    }
  }
};

/// Two dot products at once: r0 = a0 . b0, r1 = a1 . b1 over [0, d).
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
inline void dot_pair(const T* a0, const T* b0, const T* a1, const T* b1, index_t d, T& r0, T& r1) {
  using S = ssmax::detail::simd<Arch, T>;
  constexpr index_t W = S::width;
  auto s0 = S::splat(T(0)), s1 = s0;
  index_t c = 0;
  for (; c + W <= d; c += W) {
    s0 = S::fma(S::load(a0 + c), S::load(b0 + c), s0);
    s1 = S::fma(S::load(a1 + c), S::load(b1 + c), s1);
  }
  r0 = S::reduce_add(s0);
  r1 = S::reduce_add(s1);
  for (; c < d; ++c) {  // tail: never read past d
    r0 += a0[c] * b0[c];
    r1 += a1[c] * b1[c];
  }
}

/// The shift z_0 of dL/dm = sum_j (z_j - z_0) dy_j for a row with multiplier m, log-sum-exp
/// lse and policy n: (lse - log n) / m, the log-mean-exp of m z over m, which lies between the
/// row's mean and largest logit (m > 0; smallest and mean for m < 0) when n is the visible
/// count; 0 when m = 0 or when lse's rounding (eps (|lse| + log n) / |m|) would exceed one
/// unit of logit.
template <class T>  // float or double: lse's type
inline double logit_shift(T m, T lse, index_t n) {
  const double md = static_cast<double>(m), ld = static_cast<double>(lse);
  const double log_n = std::log(static_cast<double>(std::max<index_t>(1, n)));
  const double eps = std::numeric_limits<T>::epsilon();
  if (md == 0.0 || eps * (std::abs(ld) + log_n) > std::abs(md)) return 0.0;
  return (ld - log_n) / md;
}

/// Adds one row's dL/dm to the outputs.
template <class T, class Policy>  // float or double; a length policy
inline void record_multiplier(const attention_backward_problem<T, Policy>& p, policy_gradient* grad,
                              index_t b, index_t h, index_t i, const row_keys& row, double dm) {
  if (p.d_multiplier != nullptr) p.d_multiplier[p.forward.row_index(b, h, i)] = dm;
  if (grad != nullptr && row.visible > 0)
    grad->add(h, gradient_of(*p.forward.policy, {row.n, row.position, h}, dm));
}

/// Per-row shares of d_sinks ([B, H, n_q], row_index order), summed per head in a fixed
/// order at the end (finish_sinks): bitwise the same for any thread count.
template <class T, class Policy>  // float or double; a length policy
inline std::vector<double> sink_rows(const attention_backward_problem<T, Policy>& p) {
  const auto& q = p.forward.q;
  return std::vector<double>(
      p.d_sinks != nullptr ? static_cast<size_t>(q.batch * q.heads * q.seq) : 0, 0.0);
}

/// d_sinks[h] = sum over (b, i) of the rows' shares m dy_sink. Nothing when not asked.
template <class T, class Policy>  // float or double; a length policy
inline void finish_sinks(const attention_backward_problem<T, Policy>& p,
                         const std::vector<double>& rows) {
  if (p.d_sinks == nullptr) return;
  const auto& f = p.forward;
  for (index_t h = 0; h < f.q.heads; ++h) {
    double sum = 0.0;
    for (index_t b = 0; b < f.q.batch; ++b)
      for (index_t i = 0; i < f.q.seq; ++i) sum += rows[static_cast<size_t>(f.row_index(b, h, i))];
    p.d_sinks[h] = sum;
  }
}

/// The sink's share of a row (head h, multiplier m, log-sum-exp lse with the sink, D =
/// dout . out): dy_sink = -exp(m sink_h - lse) D. Adds (sink - shift) dy_sink to dm and
/// returns m dy_sink (dL/dsink); 0 without a sink or for a row that saw no key.
template <class T, class Policy>  // float or double; a length policy
inline double sink_share(const attention_problem<T, Policy>& f, index_t h, const row_keys& row,
                         double m, double lse, double D, double shift, double& dm) {
  if (!f.logit.has_sinks() || row.visible == 0 || !std::isfinite(lse)) return 0.0;
  const double sink = static_cast<double>(f.logit.sinks[h]);
  if (sink == -std::numeric_limits<double>::infinity()) return 0.0;
  const double dy = -std::exp(m * sink - lse) * D;
  dm += (sink - shift) * dy;
  return m * dy;
}

/// Writes the task's accumulated dk, dv rows [k_begin, k_end) of kv head g.
template <class T, class Policy>  // float or double; a length policy
inline void write_key_gradients(const attention_backward_problem<T, Policy>& p,
                                const backward_scratch<T>& sc, const sequence_span& seq, index_t g,
                                index_t dp) {
  const index_t d = p.forward.q.dim, b = seq.tensor_batch;
  for (index_t j = seq.k_begin; j < seq.k_end; ++j) {
    const T* a = sc.dk + (j - seq.k_begin) * dp;
    const T* c = sc.dv + (j - seq.k_begin) * dp;
    std::copy(a, a + d, p.dk.row(b, j, g));
    std::copy(c, c + d, p.dv.row(b, j, g));
  }
}

/// Runs body(sc, seq, g, grad) for every task (sequence seq, kv head g) in parallel, with
/// sc the thread's scratch and grad the task's policy gradient (null when policy_grad is):
/// zeroes the task's dk and dv accumulators before the body, writes them after, and sums
/// the tasks' policy gradients into policy_grad in task order (bitwise reproducible).
template <class Arch, class T, class Policy, class Body>  // arch; float or double; policy;
                                                          // callable as above
void for_each_key_task(const attention_backward_problem<T, Policy>& p,
                       const backward_plan<Arch, T>& plan, policy_gradient* policy_grad,
                       Body&& body) {
  const auto& f = p.forward;
  const index_t H_kv = f.k.heads, n_tasks = task_count(p), dp = plan.dp;
  std::vector<policy_gradient> task_grads(policy_grad != nullptr ? static_cast<size_t>(n_tasks) : 0,
                                          policy_gradient(f.q.heads));
  ssmax::detail::parallel_for(n_tasks, f.threads, [&](index_t task, int thread) {
    const backward_scratch<T>& sc = plan.scratch[thread];
    const sequence_span seq = f.span(task / H_kv);
    const index_t g = task % H_kv, len_k = seq.k_end - seq.k_begin;
    std::fill(sc.dk, sc.dk + len_k * dp, T(0));
    std::fill(sc.dv, sc.dv + len_k * dp, T(0));
    body(sc, seq, g, policy_grad != nullptr ? &task_grads[static_cast<size_t>(task)] : nullptr);
    write_key_gradients(p, sc, seq, g, dp);
  });
  for (const auto& tg : task_grads)
    for (index_t h = 0; h < f.q.heads; ++h) policy_grad->add(h, {0.0, tg.s[h], tg.b[h]});
}

}  // namespace detail

/// Workspace bytes attention_backward_materialised (materialised = true) or
/// attention_backward_fused need: per thread, the key gradients' accumulators
/// (2 n_k round_up(d, W)), a few query blocks of d, and score buffers of
/// kFusedQueryBlock rows of one key block (fused) or of n_k keys (materialised).
template <class Arch, class T, class Policy>  // architecture tag; float or double; policy
std::size_t attention_backward_workspace_bytes(const attention_backward_problem<T, Policy>& p,
                                               bool materialised) {
  return detail::plan_bytes<detail::backward_plan<Arch, T>>(p, materialised);
}

namespace detail {

/// Per-row constants of a block of query rows in the fused backward.
template <class T>  // float or double
struct backward_rows {
  T m[kFusedQueryBlock];      ///< the policy's multiplier
  T lse[kFusedQueryBlock];    ///< the forward's log-sum-exp
  T D[kFusedQueryBlock];      ///< dout . out
  T flush[kFusedQueryBlock];  ///< flush_threshold of the row's visible count
  /// Rows whose forward lse is +inf (+inf scores): 1 / the number of +inf keys; else 0.
  T inv_top[kFusedQueryBlock];
  const T* q[kFusedQueryBlock];       ///< the row's query
  double factor[kFusedQueryBlock];    ///< m * scale: the forward's score is factor q . k
  bool raw = false;                   ///< the scores go through the epilogue (logit.hpp)
  row_logit logit[kFusedQueryBlock];  ///< the row's epilogue at m = 1 (when raw)
};

/// The number of keys of `row` (kv head g) whose score factor * q . k is +inf
/// (safe_score): the keys that share a +inf row's weight.
template <class T, class Policy>  // float or double; a length policy
index_t infinite_keys(const attention_problem<T, Policy>& f, const sequence_span& seq,
                      const row_keys& row, index_t g, const T* q, double factor) {
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
template <class T, class Policy>  // float or double; a length policy
void setup_backward_rows(const attention_backward_problem<T, Policy>& p,
                         const backward_scratch<T>& sc, backward_rows<T>& rw,
                         const sequence_span& seq, index_t h, index_t q0, index_t rows,
                         index_t dp) {
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
    const T* qi = f.q.row(b, i, h);
    rw.q[r] = qi;
    rw.factor[r] = double(rw.m[r]) * f.scale;
    rw.inv_top[r] = T(0);
    if (rw.lse[r] == std::numeric_limits<T>::infinity() && !rw.raw) {
      const index_t top = infinite_keys(f, seq, sc.info[r], f.kv_head(h), qi, rw.factor[r]);
      if (top > 0) rw.inv_top[r] = T(1) / static_cast<T>(top);
    }
    const T* go = p.dout.row(b, i, h);
    const T* oi = p.out.row(b, i, h);
    double D = 0.0;
    for (index_t c = 0; c < d; ++c) {
      sc.qs[r * dp + c] = sc.qc[r * d + c] = scale * qi[c];
      sc.dop[r * dp + c] = sc.doc[r * d + c] = go[c];
      D += static_cast<double>(go[c]) * static_cast<double>(oi[c]);
    }
    std::fill(sc.qs + r * dp + d, sc.qs + (r + 1) * dp, T(0));
    std::fill(sc.dop + r * dp + d, sc.dop + (r + 1) * dp, T(0));
    rw.D[r] = static_cast<T>(D);
    sc.dm[r] = 0.0;
    sc.shift[r] = logit_shift<T>(rw.m[r], rw.lse[r], sc.info[r].n);
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
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
void backward_block_weights(const backward_scratch<T>& sc, const backward_rows<T>& rw, index_t rows,
                            index_t kb, index_t nk, index_t lds, const T* k0, index_t kstride,
                            index_t d) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (index_t r = 0; r < rows; ++r) {
    T* sr = sc.s + r * lds;
    T* dr = sc.ds + r * lds;
    const row_keys& rk = sc.info[r];
    T* x = sc.t;  // the raw scores of this row, while sc.t is free (logit.hpp)
    if (rw.raw && rk.visible > 0) {
      std::copy(sr, sr + nk, x);
      score_epilogue(sr, kb, nk, rw.logit[r]);
    }
    if (rk.visible == 0 || !mask_row(sr, kb, nk, rk)) {
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
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
void backward_block_gradients(const backward_scratch<T>& sc, index_t rows, const T* k0,
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
          class T,       // float or double
          class Policy>  // a length policy (length_policy.hpp)
void attention_backward_fused(const attention_backward_problem<T, Policy>& p,
                              attention_workspace& ws, policy_gradient* policy_grad) {
  const auto& f = p.forward;
  const auto plan = detail::carve_plan<detail::backward_plan<Arch, T>>(ws, p, false);
  const index_t d = f.q.dim, dp = plan.dp, lds = plan.lds, group = f.q.heads / f.k.heads;
  std::vector<double> sinks = detail::sink_rows(p);

  const auto task = [&](const detail::backward_scratch<T>& sc, const sequence_span& seq, index_t g,
                        policy_gradient* grad) {
    const index_t b = seq.tensor_batch;
    const T scale = static_cast<T>(f.scale);
    detail::backward_rows<T> rw;
    for (index_t h = g * group; h < (g + 1) * group; ++h)
      for (index_t q0 = seq.q_begin; q0 < seq.q_end; q0 += kFusedQueryBlock) {
        const index_t rows = std::min(kFusedQueryBlock, seq.q_end - q0);
        detail::setup_backward_rows(p, sc, rw, seq, h, q0, rows, dp);
        index_t lo, hi;
        detail::block_key_range(f, seq, q0, rows, lo, hi);
        for (index_t kb = lo; kb < hi; kb += kKeyBlock) {
          const index_t nk = std::min(kKeyBlock, hi - kb), at = (kb - seq.k_begin) * dp;
          const T* k0 = f.k.row(b, kb, g);
          // Scores z = (scale q) K^T and dP = dout V^T of the block (over the compact
          // [rows, d] copies), then the weights and dS, then the gradients.
          detail::block_scores<Arch>(sc.qc, rows, d, k0, f.k.stride_s, nk, sc.s, lds, sc.kt);
          detail::block_scores<Arch>(sc.doc, rows, d, f.v.row(b, kb, g), f.v.stride_s, nk, sc.ds,
                                     lds, sc.kt);
          detail::backward_block_weights<Arch>(sc, rw, rows, kb, nk, lds, k0, f.k.stride_s, d);
          detail::backward_block_gradients<Arch>(sc, rows, k0, f.k.stride_s, nk, d, dp, lds,
                                                 sc.dk + at, sc.dv + at);
        }
        for (index_t r = 0; r < rows; ++r) {
          T* dq = p.dq.row(b, q0 + r, h);
          for (index_t c = 0; c < d; ++c) dq[c] = scale * sc.dq[r * dp + c];
          const double d_sink =
              detail::sink_share(f, h, sc.info[r], double(rw.m[r]), double(rw.lse[r]),
                                 double(rw.D[r]), double(static_cast<T>(sc.shift[r])), sc.dm[r]);
          if (!sinks.empty()) sinks[static_cast<size_t>(f.row_index(b, h, q0 + r))] = d_sink;
          detail::record_multiplier(p, grad, b, h, q0 + r, sc.info[r], sc.dm[r]);
        }
      }
  };
  detail::for_each_key_task(p, plan, policy_grad, task);
  detail::finish_sinks(p, sinks);
}

}  // namespace ssmax::kernels
