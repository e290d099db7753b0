#pragma once
// What both attention backward kernels share (kernels/attention_backward.hpp has the
// formulas and the fused path, kernels/attention_backward_materialised.hpp the other):
// the validated problem with its storage types, the per-thread scratch and its plan, the
// work split (one task per (sequence, kv head) owning its dk, dv rows and the dq rows of
// its query heads: bitwise the same results for any thread count; run_key_tasks), the
// per-row dL/dm, d_sinks and their sums, and the one rounding store of each gradient.
// Nothing here validates: attention_backward.hpp has checked every argument.

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../detail/parallel.hpp"
#include "../policy_gradient.hpp"
#include "convert.hpp"
#include "online_softmax.hpp"
#include "plan.hpp"
#include "row_logits.hpp"

namespace ssmax::kernels {

/// The storage types of one backward call (storage.hpp, attention_backward_storage): the
/// forward's q, k/v and out, then dout and the gradients dq, dk, dv (one type). The kernels
/// compute in the problem's T, widen every input as they read it and round each gradient
/// once, on its store (kernels/convert.hpp).
template <class Q,   // element type of q
          class KV,  // element type of k and v
          class O,   // element type of out (read)
          class D,   // element type of dout
          class G>   // element type of dq, dk and dv
struct backward_storage_set {
  using forward = storage_set<Q, KV, KV, O>;  ///< q, k, v, out as the forward problem holds them
  using dout = D;
  using grad = G;
};

/// A validated attention backward call, as the kernels receive it.
template <class T,       // compute type: float or double (compute_t)
          class Policy,  // a length policy (length_policy.hpp)
          class S = backward_storage_set<T, T, T, T, T>>  // storage types (above)
struct attention_backward_problem {
  using storage = S;
  using forward_problem = attention_problem<T, Policy, typename S::forward>;
  forward_problem forward;  ///< q, k, v, policy, mask, scale, threads (out unused)
  tensor_view<const typename S::forward::out> out;  ///< [B, n_q, H, d] the forward's output
  tensor_view<const typename S::dout> dout;         ///< [B, n_q, H, d] dL/dout
  const T* lse = nullptr;            ///< [B, H, n_q] the forward's log-sum-exp (fused)
  tensor_view<typename S::grad> dq;  ///< [B, n_q, H, d]
  tensor_view<typename S::grad> dk;  ///< [B, n_k, H_kv, d]
  tensor_view<typename S::grad> dv;  ///< [B, n_k, H_kv, d]
  double* d_multiplier = nullptr;    ///< [B, H, n_q] dL/dm per row, or null
  double* d_sinks = nullptr;         ///< [H] dL/dsink_h, or null
};

namespace detail {

/// Buffers of one backward task's thread; pointers into the workspace. The materialised
/// path carves dk, dv, s, ds and dq only; the others stay null.
template <class T>  // float or double
struct backward_scratch {
  T* dk = nullptr;           ///< [n_k, dp] accumulator of the task's keys
  T* dv = nullptr;           ///< [n_k, dp]
  T* s = nullptr;            ///< fused: [kBackwardQueryBlock, lds] scores then weights;
                             ///< materialised: [2, lds] scores z, weights a of one row
  T* ds = nullptr;           ///< fused: [kBackwardQueryBlock, lds] dP then m dS;
                             ///< materialised: [lds] u, then m dy, of one row
  T* t = nullptr;            ///< fused: [kKeyBlock, kBackwardQueryBlock] a transposed block
  T* qs = nullptr;           ///< [kBackwardQueryBlock, dp] scale * q, zero-padded
  T* dop = nullptr;          ///< [kBackwardQueryBlock, dp] dout, zero-padded
  T* qc = nullptr;           ///< [kBackwardQueryBlock, d] scale * q, compact
  T* doc = nullptr;          ///< [kBackwardQueryBlock, d] dout, compact
  T* dq = nullptr;           ///< [kBackwardQueryBlock, dp] accumulator (materialised: [dp])
  T* kt = nullptr;           ///< [packed_kt_elements(d, W)] packed K^T or V^T of a block
  T* vp = nullptr;           ///< [padded_v_elements(d, W)] zero-padded key block
  double* dm = nullptr;      ///< [kBackwardQueryBlock] dL/dm accumulators
  double* shift = nullptr;   ///< [kBackwardQueryBlock] z_0 per row (logit_shift)
  row_keys* info = nullptr;  ///< [kBackwardQueryBlock]
};

/// Tasks of a backward call: one per (sequence, kv head).
template <class T, class Policy, class S>  // compute type; a length policy; storage
inline index_t task_count(const attention_backward_problem<T, Policy, S>& p) {
  return p.forward.sequences() * p.forward.k.heads;
}

/// Workspace layout of a backward call: per-thread scratch, for the threads that can get
/// a task.
template <class Arch, class T>  // xsimd architecture tag or scalar_arch; float or double
struct backward_plan {
  index_t dp = 0, lds = 0;
  backward_scratch<T>* scratch = nullptr;

  /// full_rows: the materialised path, whose score buffers hold one whole row of n_k
  /// keys; the fused path's hold kBackwardQueryBlock rows of one key block.
  template <class Policy, class S>  // a length policy; backward_storage_set
  void carve(const attention_backward_problem<T, Policy, S>& p, bool full_rows, arena& a) {
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
        sc.dq = a.take<T>(dp);  // the row's dq, stored once (in the gradients' type)
      } else {
        sc.s = a.take<T>(kBackwardQueryBlock * lds);
        sc.ds = a.take<T>(kBackwardQueryBlock * lds);
        sc.t = a.take<T>(kKeyBlock * kBackwardQueryBlock);
        sc.qs = a.take<T>(kBackwardQueryBlock * dp);
        sc.dop = a.take<T>(kBackwardQueryBlock * dp);
        sc.qc = a.take<T>(kBackwardQueryBlock * d);
        sc.doc = a.take<T>(kBackwardQueryBlock * d);
        sc.dq = a.take<T>(kBackwardQueryBlock * dp);
        sc.kt = a.take<T>(packed_kt_elements(d, W));
        sc.vp = a.take<T>(padded_v_elements(d, W));
        sc.dm = a.take<double>(kBackwardQueryBlock);
        sc.shift = a.take<double>(kBackwardQueryBlock);
        sc.info = a.take<row_keys>(kBackwardQueryBlock);
      }
      if (fill) scratch[t] = sc;
    }
  }
};

/// The shift z_0 of dL/dm = sum_j (z_j - z_0) dy_j for a row with multiplier m, log-sum-exp
/// lse and n terms in its denominator (the policy n, plus one for a sink): (lse - log n) / m,
/// the log-mean-exp of m z over m, which lies between the row's mean and largest logit (m >
/// 0; smallest and mean for m < 0) when n is the visible count; 0 when m = 0 or when lse's rounding
/// (eps (|lse| + log n) / |m|) would exceed one unit of logit.
template <class T>  // float or double: lse's type
inline double logit_shift(T m, T lse, index_t n) {
  const double md = static_cast<double>(m), ld = static_cast<double>(lse);
  const double log_n = std::log(static_cast<double>(std::max<index_t>(1, n)));
  const double eps = std::numeric_limits<T>::epsilon();
  if (md == 0.0 || eps * (std::abs(ld) + log_n) > std::abs(md)) return 0.0;
  return (ld - log_n) / md;
}

/// Where a task puts its rows' dL/dm shares (record_row): the task's policy gradient and
/// the per-row shares of d_sinks ([B, H, n_q], row_index order), each null when not asked.
struct row_records {
  policy_gradient* grad = nullptr;
  double* sinks = nullptr;
};

/// Records one row's dL/dm (d_multiplier, the task's policy gradient) and its share of
/// d_sinks, m dy_sink.
template <class T, class Policy, class S>  // compute type; a length policy; storage
inline void record_row(const attention_backward_problem<T, Policy, S>& p, const row_records& to,
                       index_t b, index_t h, index_t i, const row_keys& row, double dm,
                       double d_sink) {
  const index_t at = p.forward.row_index(b, h, i);
  if (p.d_multiplier != nullptr) p.d_multiplier[at] = dm;
  if (to.grad != nullptr && row.visible > 0)
    to.grad->add(h, gradient_of(*p.forward.policy, {row.n, row.position, h}, dm));
  if (to.sinks != nullptr) to.sinks[at] = d_sink;
}

/// d_sinks[h] = sum over (b, i) of the rows' shares m dy_sink, in a fixed order: bitwise
/// the same for any thread count.
template <class T, class Policy, class S>  // compute type; a length policy; storage
inline void finish_sinks(const attention_backward_problem<T, Policy, S>& p,
                         const std::vector<double>& rows) {
  const auto& f = p.forward;
  for (index_t h = 0; h < f.q.heads; ++h) {
    double sum = 0.0;
    for (index_t b = 0; b < f.q.batch; ++b)
      for (index_t i = 0; i < f.q.seq; ++i) sum += rows[static_cast<size_t>(f.row_index(b, h, i))];
    p.d_sinks[h] = sum;
  }
}

/// dst[0, d) = alpha src[0, d) in dst's storage type: the one rounding of a 16-bit gradient
/// (to nearest even), none for float or double.
template <class T,  // compute type: float or double
          class G>  // storage type of the gradient whose compute type is T
inline void store_gradient(G* dst, const T* src, index_t d, T alpha = T(1)) {
  for (index_t c = 0; c < d; ++c) dst[c] = from_compute<G>(alpha * src[c]);
}

/// Writes the task's accumulated dk, dv rows [k_begin, k_end) of kv head g, and zeros to
/// the sequence's padding rows past its key length ([k_end, the tensor's end)).
template <class T, class Policy, class S>  // compute type; a length policy; storage
inline void write_key_gradients(const attention_backward_problem<T, Policy, S>& p,
                                const backward_scratch<T>& sc, const sequence_span& seq, index_t g,
                                index_t dp) {
  const index_t d = p.forward.q.dim, b = seq.tensor_batch;
  for (index_t j = seq.k_begin; j < seq.k_end; ++j) {
    const T* a = sc.dk + (j - seq.k_begin) * dp;
    const T* c = sc.dv + (j - seq.k_begin) * dp;
    store_gradient(p.dk.row(b, j, g), a, d);
    store_gradient(p.dv.row(b, j, g), c, d);
  }
  const index_t padded_end = p.forward.full_span(seq.sequence).k_end;
  const auto zero = from_compute<typename S::grad>(T(0));
  for (index_t j = seq.k_end; j < padded_end; ++j) {
    std::fill(p.dk.row(b, j, g), p.dk.row(b, j, g) + d, zero);
    std::fill(p.dv.row(b, j, g), p.dv.row(b, j, g) + d, zero);
  }
}

/// Runs a backward kernel: carves its plan from ws (full_rows: the materialised path's
/// score rows), then for every task (sequence seq, kv head g) in parallel zeroes the task's
/// dk and dv accumulators, calls body(plan, sc, seq, h, records) for each query head h
/// sharing g in order (sc the thread's scratch, records the task's row_records), and writes
/// dk and dv; then sums the tasks' policy gradients into policy_grad (may be null) in task
/// order and the rows' sink shares into d_sinks: bitwise the same for any thread count.
template <class Arch, class T, class Policy, class S,  // arch; compute type; policy; storage
          class Body>                                  // callable as above
void run_key_tasks(const attention_backward_problem<T, Policy, S>& p, attention_workspace& ws,
                   bool full_rows, policy_gradient* policy_grad, Body&& body) {
  const auto& f = p.forward;
  const auto plan = carve_plan<backward_plan<Arch, T>>(ws, p, full_rows);
  const index_t H_kv = f.k.heads, group = f.q.heads / H_kv, n_tasks = task_count(p);
  const index_t dp = plan.dp;
  std::vector<policy_gradient> task_grads(policy_grad != nullptr ? static_cast<size_t>(n_tasks) : 0,
                                          policy_gradient(f.q.heads));
  std::vector<double> sinks(
      p.d_sinks != nullptr ? static_cast<size_t>(f.q.batch * f.q.heads * f.q.seq) : 0, 0.0);
  ssmax::detail::parallel_for(n_tasks, f.threads, [&](index_t task, int thread) {
    const backward_scratch<T>& sc = plan.scratch[thread];
    const sequence_span seq = f.span(task / H_kv);
    const index_t g = task % H_kv, len_k = seq.k_end - seq.k_begin;
    std::fill(sc.dk, sc.dk + len_k * dp, T(0));
    std::fill(sc.dv, sc.dv + len_k * dp, T(0));
    const row_records records{
        policy_grad != nullptr ? &task_grads[static_cast<size_t>(task)] : nullptr,
        p.d_sinks != nullptr ? sinks.data() : nullptr};
    for (index_t h = g * group; h < (g + 1) * group; ++h) body(plan, sc, seq, h, records);
    write_key_gradients(p, sc, seq, g, dp);
  });
  for (const auto& tg : task_grads)
    for (index_t h = 0; h < f.q.heads; ++h) policy_grad->add(h, {0.0, tg.s[h], tg.b[h]});
  if (p.d_sinks != nullptr) finish_sinks(p, sinks);
}

}  // namespace detail

/// Workspace bytes attention_backward_materialised (materialised = true) or
/// attention_backward_fused need: per thread, the key gradients' accumulators
/// (2 n_k round_up(d, W)), a few query blocks of d, and score buffers of
/// kBackwardQueryBlock rows of one key block (fused) or of n_k keys (materialised).
template <class Arch, class T, class Policy, class S>  // arch; compute type; policy; storage
std::size_t attention_backward_workspace_bytes(const attention_backward_problem<T, Policy, S>& p,
                                               bool materialised) {
  return detail::plan_bytes<detail::backward_plan<Arch, T>>(p, materialised);
}

}  // namespace ssmax::kernels
