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
// Nothing here validates: attention_backward.hpp has checked every argument.

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../detail/parallel.hpp"
#include "../policy_gradient.hpp"
#include "attention_blocks.hpp"
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
};

namespace detail {

/// Buffers of one backward task's thread; pointers into the workspace.
template <class T>  // float or double
struct backward_scratch {
  T* dk;           ///< [n_k, dp] accumulator of the task's keys
  T* dv;           ///< [n_k, dp]
  T* s;            ///< fused: [kFusedQueryBlock, lds] scores then weights; materialised: [n_k]
  T* ds;           ///< fused: [kFusedQueryBlock, lds] dP then m dS; materialised: [n_k]
  T* t;            ///< fused: [kKeyBlock, kFusedQueryBlock] a transposed block
  T* qs;           ///< [kFusedQueryBlock, dp] scale * q, zero-padded
  T* dop;          ///< [kFusedQueryBlock, dp] dout, zero-padded
  T* qc;           ///< [kFusedQueryBlock, d] scale * q, compact
  T* doc;          ///< [kFusedQueryBlock, d] dout, compact
  T* dq;           ///< [kFusedQueryBlock, dp] accumulator
  T* kt;           ///< [d, round_up(kKeyBlock, W)] packed K^T or V^T
  T* vp;           ///< [kKeyBlock, dp] padded key block
  double* dm;      ///< [kFusedQueryBlock] dL/dm accumulators
  double* shift;   ///< [kFusedQueryBlock] z_0 per row (logit_shift)
  row_keys* info;  ///< [kFusedQueryBlock]
};

/// Workspace layout of a backward call: per-thread scratch.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
struct backward_plan {
  index_t dp = 0, lds = 0;
  backward_scratch<T>* scratch = nullptr;

  /// full_rows: the materialised path, whose score buffers hold whole rows of n_k keys;
  /// the fused path's hold one key block.
  template <class Policy>  // a length policy
  void carve(const attention_backward_problem<T, Policy>& p, bool full_rows, arena& a) {
    const bool fill = !a.counting();
    constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
    const index_t d = p.forward.q.dim, n_k = p.forward.k.seq;
    const int threads = p.forward.threads;
    dp = round_up(d, W);
    lds = full_rows ? std::max(round_up(kKeyBlock, W), round_up(n_k, W)) : round_up(kKeyBlock, W);
    scratch = a.take<backward_scratch<T>>(threads);
    for (int t = 0; t < threads; ++t) {
      backward_scratch<T> sc;
      sc.dk = a.take<T>(n_k * dp);
      sc.dv = a.take<T>(n_k * dp);
      sc.s = a.take<T>(kFusedQueryBlock * lds);
      sc.ds = a.take<T>(kFusedQueryBlock * lds);
      sc.t = a.take<T>(kKeyBlock * kFusedQueryBlock);
      sc.qs = a.take<T>(kFusedQueryBlock * dp);
      sc.dop = a.take<T>(kFusedQueryBlock * dp);
      sc.qc = a.take<T>(kFusedQueryBlock * d);
      sc.doc = a.take<T>(kFusedQueryBlock * d);
      sc.dq = a.take<T>(kFusedQueryBlock * dp);
      sc.kt = a.take<T>(d * round_up(kKeyBlock, W));
      sc.vp = a.take<T>(kKeyBlock * dp);
      sc.dm = a.take<double>(kFusedQueryBlock);
      sc.shift = a.take<double>(kFusedQueryBlock);
      sc.info = a.take<row_keys>(kFusedQueryBlock);
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
  if (p.d_multiplier != nullptr) p.d_multiplier[p.forward.lse_at(b, h, i)] = dm;
  if (grad != nullptr && row.visible > 0)
    grad->add(h, gradient_of(*p.forward.policy, {row.n, row.position, h}, dm));
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
  const index_t H_kv = f.k.heads, n_tasks = f.sequences() * H_kv, dp = plan.dp;
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

/// Materialised backward. Pre: p validated; ws holds attention_backward_workspace_bytes.
/// policy_grad (per-thread copies summed in task order) may be null.
template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // float or double
          class Policy>  // a length policy (length_policy.hpp)
void attention_backward_materialised(const attention_backward_problem<T, Policy>& p,
                                     attention_workspace& ws, policy_gradient* policy_grad) {
  const auto& f = p.forward;
  const auto plan = detail::carve_plan<detail::backward_plan<Arch, T>>(ws, p, true);
  const index_t d = f.q.dim, dp = plan.dp, group = f.q.heads / f.k.heads;

  const auto task = [&](const detail::backward_scratch<T>& sc, const sequence_span& seq, index_t g,
                        policy_gradient* grad) {
    const index_t b = seq.tensor_batch;
    const T ninf = -std::numeric_limits<T>::infinity();
    const T scale = static_cast<T>(f.scale);
    for (index_t h = g * group; h < (g + 1) * group; ++h)
      for (index_t i = seq.q_begin; i < seq.q_end; ++i) {
        const row_keys row = visible_keys(f.mask, seq, h, i);
        T* dq = p.dq.row(b, i, h);
        std::fill(dq, dq + d, T(0));
        if (row.visible == 0) {
          detail::record_multiplier(p, grad, b, h, i, row, 0.0);
          continue;
        }
        const T m = static_cast<T>(detail::row_multiplier(f, row, h));
        const index_t n = row.end - row.begin;
        const T* qi = f.q.row(b, i, h);
        const T* go = p.dout.row(b, i, h);
        T* z = sc.s;             // scores z_j, then (below) the weights' gradient m dy_j in sc.ds
        T* u = sc.ds;            // u_j = dout_i . v_j, overwritten in place by m dy_j
        T* w = sc.s + plan.lds;  // weights a_j
        for (index_t j = 0; j < n; ++j) {
          const index_t key = row.begin + j;
          T qk, dv;
          detail::dot_pair<Arch>(qi, f.k.row(b, key, g), go, f.v.row(b, key, g), d, qk, dv);
          const bool seen = row.allowed == nullptr || row.allowed[key];
          z[j] = seen ? scale * qk : ninf;
          u[j] = seen ? dv : T(0);
        }
        scaled_softmax_row<Arch>(z, w, n, m);
        const double dm = scaled_softmax_row_backward<Arch>(z, w, u, u, n, m);
        detail::record_multiplier(p, grad, b, h, i, row, dm);
        for (index_t j = 0; j < n; ++j) {
          if (w[j] == T(0)) continue;
          const index_t key = row.begin + j, at = (key - seq.k_begin) * dp;
          detail::axpy<Arch>(dq, scale * u[j], f.k.row(b, key, g), d);
          detail::axpy<Arch>(sc.dk + at, scale * u[j], qi, d);
          detail::axpy<Arch>(sc.dv + at, w[j], go, d);
        }
      }
  };
  detail::for_each_key_task(p, plan, policy_grad, task);
}

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
  const T ninf = -std::numeric_limits<T>::infinity();

  const auto task = [&](const detail::backward_scratch<T>& sc, const sequence_span& seq, index_t g,
                        policy_gradient* grad) {
    const index_t b = seq.tensor_batch;
    const T scale = static_cast<T>(f.scale);
    T ms[kFusedQueryBlock], lses[kFusedQueryBlock], Ds[kFusedQueryBlock], flush[kFusedQueryBlock];

    for (index_t h = g * group; h < (g + 1) * group; ++h)
      for (index_t q0 = seq.q_begin; q0 < seq.q_end; q0 += kFusedQueryBlock) {
        const index_t rows = std::min(kFusedQueryBlock, seq.q_end - q0);
        // Per-row setup: keys, m, lse, D = dout . out, scaled and padded q and dout.
        for (index_t r = 0; r < rows; ++r) {
          const index_t i = q0 + r;
          sc.info[r] = visible_keys(f.mask, seq, h, i);
          ms[r] = static_cast<T>(detail::row_multiplier(f, sc.info[r], h));
          lses[r] = p.lse[f.lse_at(b, h, i)];
          flush[r] = flush_threshold<T>(std::max<index_t>(1, sc.info[r].visible));
          const T* qi = f.q.row(b, i, h);
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
          Ds[r] = static_cast<T>(D);
          sc.dm[r] = 0.0;
          sc.shift[r] = detail::logit_shift<T>(ms[r], lses[r], sc.info[r].n);
        }
        std::fill(sc.dq, sc.dq + rows * dp, T(0));
        index_t lo, hi;
        detail::block_key_range(f, seq, q0, rows, lo, hi);

        for (index_t kb = lo; kb < hi; kb += kKeyBlock) {
          const index_t nk = std::min(kKeyBlock, hi - kb);
          const T* k0 = f.k.row(b, kb, g);
          const T* v0 = f.v.row(b, kb, g);
          // Scores z = (scale q) K^T and dP = dout V^T of the block (GEMMs over the
          // compact [rows, d] copies).
          detail::block_scores<Arch>(sc.qc, rows, d, k0, f.k.stride_s, nk, sc.s, lds, sc.kt);
          detail::block_scores<Arch>(sc.doc, rows, d, v0, f.v.stride_s, nk, sc.ds, lds, sc.kt);
          for (index_t r = 0; r < rows; ++r) {
            T* sr = sc.s + r * lds;
            T* dr = sc.ds + r * lds;
            const row_keys& rk = sc.info[r];
            if (rk.visible == 0 || !detail::mask_row(sr, kb, nk, rk)) {
              std::fill(sr, sr + nk, T(0));
              std::fill(dr, dr + nk, T(0));
              continue;
            }
            // a_j = exp(m z_j - lse) (0 where hidden or flushed), m dy_j = m a_j (u_j - D),
            // dL/dm += sum_j (z_j - z_0) dy_j.
            const T m = ms[r], shift = static_cast<T>(sc.shift[r]);
            const double part = blocked_sums<Arch, T, 1>(nk, [&](auto tag, index_t at) {
              using V = decltype(tag);
              const auto zero = V::splat(T(0));
              const auto zv = V::load(sr + at);
              const auto t = V::fma(V::splat(m), zv, V::splat(-lses[r]));
              const auto hidden = (zv == V::splat(ninf)) || (t < V::splat(flush[r]));
              const auto av = V::select(hidden, zero, V::exp(V::max(t, V::splat(flush[r]))));
              const auto dy = av * (V::load(dr + at) - V::splat(Ds[r]));
              V::store(sr + at, av);
              V::store(dr + at, V::splat(m) * dy);
              return std::array<typename V::vec, 1>{
                  V::select(av == zero, zero, dy * (zv - V::splat(shift)))};
            })[0];
            sc.dm[r] += part;
          }
          // dq += (m dS) K_block;  dk += (m dS)^T (scale q);  dv += A^T dout.
          detail::block_values<Arch>(sc.ds, lds, rows, k0, f.k.stride_s, nk, d, dp, sc.dq, sc.vp);
          for (auto [src, acc, rhs] :
               {std::tuple{sc.ds, sc.dk, sc.qs}, std::tuple{sc.s, sc.dv, sc.dop}}) {
            for (index_t j = 0; j < nk; ++j)
              for (index_t r = 0; r < rows; ++r) sc.t[j * rows + r] = src[r * lds + j];
            detail::gemm<Arch>(nk, dp, rows, sc.t, rows, rhs, dp, acc + (kb - seq.k_begin) * dp, dp,
                               true);
          }
        }
        for (index_t r = 0; r < rows; ++r) {
          T* dq = p.dq.row(b, q0 + r, h);
          for (index_t c = 0; c < d; ++c) dq[c] = scale * sc.dq[r * dp + c];
          detail::record_multiplier(p, grad, b, h, q0 + r, sc.info[r], sc.dm[r]);
        }
      }
  };
  detail::for_each_key_task(p, plan, policy_grad, task);
}

}  // namespace ssmax::kernels
