#pragma once
// Materialised attention: each block of kMaterialisedQueryBlock query rows forms its full
// score rows S = Q' K^T over the keys the block can see (Q' = m * scale * Q), masks them
// to -inf, normalises each row with the row kernel (kernels::scaled_softmax_row, m = 1
// since the multiplier is already in Q'), optionally copies the weights out, then
// computes out = A V. Keys and values are read in place: strided, or a paged cache's rows
// through its block table (key_rows, plan.hpp). Memory beyond inputs and outputs: per
// thread kMaterialisedQueryBlock x n_k scores plus one key block of packed K^T / V (and,
// for a paged cache, one row offset per key of the task).
//
// The weights output, when asked for, is [B, H, n_q, n_k] (tensor batch and rows: with
// packed sequences [1, H, total_q, total_k], zero outside each sequence's block); every
// entry a row cannot see is exactly 0. Same decomposition for any thread count, so the
// results are bitwise identical for any number of threads.
//
// Numerical contract: the operator's bounds for out, the log-sum-exp and each weight
// (docs/numerics.md, "Attention"; tests/test_attention.cpp).

#include "../detail/parallel.hpp"
#include "key_streams.hpp"
#include "online_softmax.hpp"
#include "plan.hpp"
#include "row_logits.hpp"

namespace ssmax::kernels {
namespace detail {

/// A materialised task: query rows [q0, q0 + rows) of head h, keys [k_lo, k_hi).
struct materialised_task {
  index_t sequence = 0, head = 0, q0 = 0, rows = 0, k_lo = 0, k_hi = 0;
};

/// Buffers of one thread.
template <class T>  // float or double
struct materialised_scratch {
  T* qs;             ///< [kMaterialisedQueryBlock, d]
  T* s;              ///< [kMaterialisedQueryBlock, width] scores, then weights
  T* kt;             ///< [packed_kt_elements(d, W)] one packed K^T block
  T* vp;             ///< [padded_v_elements(d, W)] one zero-padded V block
  T* o;              ///< [kMaterialisedQueryBlock, dp]
  row_keys* info;    ///< [kMaterialisedQueryBlock]
  index_t* rows_at;  ///< [width] a paged cache's key rows of the task (block_rows), or null
};

template <class Arch,                         // architecture tag
          class T,                            // compute type: float or double
          class Policy,                       // a length policy
          class S = storage_set<T, T, T, T>>  // storage types of q, k, v, out (plan.hpp)
struct materialised_plan {
  index_t n_tasks = 0, width = 0, dp = 0;
  int threads = 1;  ///< threads that run the tasks: p.threads, at most one per task
  materialised_task* tasks = nullptr;
  materialised_scratch<T>* scratch = nullptr;

  /// Counts or carves everything: the tasks and the score width counted in a first
  /// pass, the tasks filled in a second. Per-thread scratch only for the threads that
  /// can get a task.
  void carve(const attention_problem<T, Policy, S>& p, arena& a) {
    constexpr index_t W = ssmax::detail::simd<Arch, T>::width;
    const index_t d = p.q.dim;
    dp = round_up(d, W);
    n_tasks = 0;
    width = W;
    for_each_task(p, [&](const materialised_task& t) {
      ++n_tasks;  // the GEMM writes whole vectors; one more keeps rows from aliasing
      width = std::max(width, round_up(t.k_hi - t.k_lo, W) + W);
    });
    threads = ssmax::detail::threads_for(p.threads, n_tasks);
    tasks = a.take<materialised_task>(n_tasks);
    scratch = a.take<materialised_scratch<T>>(threads);
    for (int t = 0; t < threads; ++t) {
      materialised_scratch<T> sc;
      sc.qs = a.take<T>(kMaterialisedQueryBlock * d);
      sc.s = a.take<T>(kMaterialisedQueryBlock * width);
      sc.kt = a.take<T>(packed_kt_elements(d, W));
      sc.vp = a.take<T>(padded_v_elements(d, W));
      sc.o = a.take<T>(kMaterialisedQueryBlock * dp);
      sc.info = a.take<row_keys>(kMaterialisedQueryBlock);
      sc.rows_at = a.take<index_t>(p.pages.table != nullptr ? width : 0);
      if (!a.counting()) scratch[t] = sc;
    }
    if (a.counting()) return;
    index_t at = 0;
    for_each_task(p, [&](const materialised_task& t) { tasks[at++] = t; });
  }

 private:
  /// Calls on_task(task) for every task in order.
  template <class OnTask>  // callable (const materialised_task&)
  static void for_each_task(const attention_problem<T, Policy, S>& p, OnTask&& on_task) {
    for (index_t s = 0; s < p.sequences(); ++s) {
      const sequence_span seq = p.span(s);
      for (index_t h = 0; h < p.q.heads; ++h)
        for (index_t q0 = seq.q_begin; q0 < seq.q_end; q0 += kMaterialisedQueryBlock) {
          materialised_task t;
          t.sequence = s, t.head = h, t.q0 = q0;
          t.rows = std::min(kMaterialisedQueryBlock, seq.q_end - q0);
          block_key_range(p, seq, q0, t.rows, t.k_lo, t.k_hi);
          on_task(t);
        }
    }
  }
};

}  // namespace detail

/// Runs the materialised kernel. Pre: p validated (attention.hpp) and `ws` reserved with
/// at least materialised_workspace_bytes<Arch>(p) bytes.
template <class Arch,    // xsimd architecture tag or scalar_arch
          class T,       // compute type: float or double
          class Policy,  // a length policy (length_policy.hpp)
          class S>       // storage types of q, k, v and out (plan.hpp, storage_set)
void attention_materialised(const attention_problem<T, Policy, S>& p, attention_workspace& ws) {
  using O = typename S::out;
  const auto plan = detail::carve_plan<detail::materialised_plan<Arch, T, Policy, S>>(ws, p);
  const index_t d = p.q.dim, dp = plan.dp, lds = plan.width;

  ssmax::detail::parallel_for(plan.n_tasks, plan.threads, [&](index_t ti, int thread) {
    const detail::materialised_task& t = plan.tasks[ti];
    const detail::materialised_scratch<T>& sc = plan.scratch[thread];
    const sequence_span seq = p.span(t.sequence);
    const index_t b = seq.tensor_batch, g = p.kv_head(t.head), L = t.k_hi - t.k_lo;
    detail::setup_rows(p, seq, t.head, t.q0, t.rows, sc.info, sc.qs);
    // The task's key and value rows [k_lo, k_hi): strided, or through a paged cache's table
    // (nothing read, not even the table, when the task sees no key).
    key_rows<typename S::k> keys;
    key_rows<typename S::v> values;
    if (L > 0) {
      const index_t* at = p.block_rows(b, t.k_lo, L, sc.rows_at);
      keys = {p.k_row(b, t.k_lo, g), detail::row_map{p.k.stride_s, at}};
      values = {p.v_row(b, t.k_lo, g), detail::row_map{p.v.stride_s, at}};
    }

    // Scores of every key the block can see, block by block.
    for (index_t kb = t.k_lo; kb < t.k_hi; kb += kKeyBlock) {
      const auto block = keys.from(kb - t.k_lo);
      detail::block_scores<Arch>(sc.qs, t.rows, d, block.base, block.offset_of,
                                 std::min(kKeyBlock, t.k_hi - kb), sc.s + (kb - t.k_lo), lds,
                                 sc.kt);
    }

    // Mask and normalise each row; write the weights and the log-sum-exp.
    for (index_t r = 0; r < t.rows; ++r) {
      T* sr = sc.s + r * lds;
      const row_keys& rk = sc.info[r];
      const row_logit logit = p.logit.transforms_scores() && rk.visible > 0
                                  ? detail::row_logit_of(p, seq, t.head, t.q0 + r, rk)
                                  : row_logit{};
      const row_logit* extras = p.logit.transforms_scores() ? &logit : nullptr;
      row_state<T> state;
      if (detail::row_logits<Arch>(sr, t.k_lo, L, rk, extras)) {
        const index_t lo = rk.begin - t.k_lo, hi = rk.end - t.k_lo;
        state = scaled_softmax_row<Arch>(sr + lo, sr + lo, hi - lo, T(1), rk.visible);
        if (!(state.max < std::numeric_limits<T>::infinity()) || std::isnan(state.sum)) {
          // +inf or NaN scores: the row's logits again, from scores that cannot overflow;
          // then the row kernel's contract for +inf and NaN applies.
          detail::recompute_row_logits<Arch>(
              sr + lo, t.k_lo + lo, hi - lo, rk, extras, p.q.row(b, t.q0 + r, t.head),
              keys.from(lo).base, keys.from(lo).offset_of, d, detail::query_factor(p, rk, t.head));
          state = scaled_softmax_row<Arch>(sr + lo, sr + lo, hi - lo, T(1), rk.visible);
        }
        std::fill(sr, sr + lo, T(0));
        std::fill(sr + hi, sr + L, T(0));
      } else {
        std::fill(sr, sr + L, T(0));
      }
      const index_t i = t.q0 + r;
      const T lse = detail::sink_weights(detail::sink_logit(p, t.head, rk), sr, L, state);
      if (p.lse != nullptr) p.lse[p.row_index(b, t.head, i)] = lse;
      if (p.weights != nullptr) {
        T* w = p.weights + p.row_index(b, t.head, i) * p.k.seq;
        std::fill(w, w + p.k.seq, T(0));
        std::copy(sr, sr + L, w + t.k_lo);
      }
    }

    // out = A V.
    std::fill(sc.o, sc.o + t.rows * dp, T(0));
    for (index_t kb = t.k_lo; kb < t.k_hi; kb += kKeyBlock) {
      const auto block = values.from(kb - t.k_lo);
      detail::block_values<Arch>(sc.s + (kb - t.k_lo), lds, t.rows, block.base, block.offset_of,
                                 std::min(kKeyBlock, t.k_hi - kb), d, dp, sc.o, sc.vp);
    }
    for (index_t r = 0; r < t.rows; ++r) {
      T* o = sc.o + r * dp;
      detail::saturate_rounded_overflow(p, b, g, sc.info[r].begin, sc.info[r].end, o);
      O* dst = p.out.row(b, t.q0 + r, t.head);  // rounded to nearest even when 16-bit
      if constexpr (is_fp8_v<typename S::v>) {  // the values' scale: a double product, rounded once
        const double v_scale = p.v_scale(g);
        std::transform(o, o + d, dst, [&](T x) {
          return from_compute<O>(static_cast<T>(static_cast<double>(x) * v_scale));
        });
      } else {
        std::transform(o, o + d, dst, [](T x) { return from_compute<O>(x); });
      }
    }
  });
}

/// Workspace bytes attention_materialised<Arch>(p, ...) needs.
template <class Arch, class T, class Policy, class S>  // tag; compute type; policy; storage_set
std::size_t materialised_workspace_bytes(const attention_problem<T, Policy, S>& p) {
  return detail::plan_bytes<detail::materialised_plan<Arch, T, Policy, S>>(p);
}

}  // namespace ssmax::kernels
